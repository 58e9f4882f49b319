//! Stdio children and the warm pool, with real programs (`cat`, `sh`), on
//! both monoio drivers. Tests hold one lock: they count the process's fds and
//! children, which parallel tests would disturb.

use std::future::Future;
use std::io::Write;
use std::os::unix::process::ExitStatusExt;
use std::rc::Rc;
use std::sync::atomic::AtomicUsize;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

#[path = "support/drivers.rs"]
mod drivers;

use ringgate::pool::{
    reap_orphans, Child, ChildError, ChildSpec, ExitCause, ExitCounts, LiveSlot, Pool, PoolConfig,
    PoolError, SpawnOptions, STDERR_BURST_LINES, STDERR_LINES_PER_SEC,
};

static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// Runs the test body on the io_uring driver, then on the epoll driver,
/// holding the lock.
fn both<F, Fut>(f: F)
where
    F: Fn(&'static str) -> Fut,
    Fut: Future<Output = ()>,
{
    let _g = serial();
    drivers::on_both_drivers(f);
}

fn sh(script: &str) -> ChildSpec {
    ChildSpec {
        cmd: "sh".into(),
        args: vec!["-c".into(), script.into()],
        env: vec![],
    }
}

fn cat() -> ChildSpec {
    ChildSpec {
        cmd: "cat".into(),
        args: vec![],
        env: vec![],
    }
}

fn opts(max_line_bytes: usize) -> SpawnOptions {
    SpawnOptions {
        max_line_bytes,
        backend: Rc::from("test"),
        live: None,
        exits: None,
    }
}

/// Awaits `cond` with a deadline, checking every few ms.
async fn eventually(what: &str, limit: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        monoio::time::sleep(Duration::from_millis(5)).await;
    }
}

async fn line(c: &mut Child) -> String {
    match c.next_line().await {
        Some(Ok(l)) => String::from_utf8(l).expect("utf-8"),
        other => panic!("expected a line, got {other:?}"),
    }
}

/// State letter and parent pid from /proc, `None` if the pid is gone.
fn proc_state(pid: u32) -> Option<(char, u32)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = &stat[stat.rfind(')')? + 2..];
    let mut it = after.split(' ');
    let state = it.next()?.chars().next()?;
    let ppid = it.next()?.parse().ok()?;
    Some((state, ppid))
}

/// Dead: gone, or a zombie that is not ours to reap (orphans go to pid 1,
/// which on some hosts, like this test VM's init, never reaps them).
fn is_dead(pid: u32) -> bool {
    match proc_state(pid) {
        None => true,
        Some((s, ppid)) => (s == 'Z' || s == 'X') && ppid != std::process::id(),
    }
}

/// Our child `pid` was reaped: no /proc entry that is our zombie, and
/// waitpid says it is not our child any more.
fn assert_reaped(pid: u32) {
    if let Some((s, ppid)) = proc_state(pid) {
        assert!(
            ppid != std::process::id(),
            "pid {pid} still ours in state {s}"
        );
    }
    let rc = unsafe { libc::waitpid(pid as libc::pid_t, std::ptr::null_mut(), libc::WNOHANG) };
    let err = std::io::Error::last_os_error();
    assert_eq!(rc, -1, "waitpid({pid}) found a child");
    assert_eq!(err.raw_os_error(), Some(libc::ECHILD));
}

fn fd_count() -> usize {
    std::fs::read_dir("/proc/self/fd").unwrap().count()
}

const GRACE: Duration = Duration::from_millis(200);

#[test]
fn cat_round_trip() {
    both(|_| async {
        let mut c = Child::spawn(&cat(), opts(1 << 20)).await.unwrap();
        let pid = c.pid();
        let lines: Vec<String> = (0..1000)
            .map(|i| match i % 3 {
                0 => String::new(),
                1 => format!("{{\"jsonrpc\":\"2.0\",\"id\":{i}}}"),
                _ => "x".repeat(i * 10),
            })
            .collect();
        for l in &lines {
            c.send(l.as_bytes()).await.unwrap();
            assert_eq!(&line(&mut c).await, l);
        }
        let status = c.stop(GRACE).await;
        assert!(status.success(), "{status:?}");
        assert_eq!(c.handle().exit_cause(), Some(ExitCause::StdinClosed));
        assert!(c.next_line().await.is_none(), "EOF after exit");
        assert_reaped(pid);
    });
}

/// What a worker's children get: a pipe each for stdin and stdout on
/// io_uring, one socket for both on epoll (`pool::stdio`). Lines far larger
/// than a pipe (64 KiB) go through whole both ways, with writes that the
/// pipe takes in parts.
#[test]
fn stdio_is_pipes_on_io_uring_and_a_socket_on_epoll() {
    both(|driver| async move {
        let c = Child::spawn(&cat(), opts(4 << 20)).await.unwrap();
        let pid = c.pid();
        let link = |fd: u32| {
            std::fs::read_link(format!("/proc/{pid}/fd/{fd}"))
                .unwrap()
                .display()
                .to_string()
        };
        let (stdin, stdout) = (link(0), link(1));
        if driver == "io_uring" {
            assert!(stdin.starts_with("pipe:"), "{driver}: {stdin}");
            assert!(stdout.starts_with("pipe:"), "{driver}: {stdout}");
            assert_ne!(stdin, stdout, "{driver}: two pipes");
        } else {
            assert!(stdin.starts_with("socket:"), "{driver}: {stdin}");
            assert_eq!(stdin, stdout, "{driver}: one socket");
        }
        let (handle, writer, mut reader) = c.into_parts();
        let lines: Vec<Vec<u8>> = (0..4u8)
            .map(|i| vec![b'a' + i; (1 << 20) + 4097 * i as usize])
            .collect();
        let sent = lines.clone();
        let sender = monoio::spawn(async move {
            for l in &sent {
                writer.send(l).await.unwrap();
            }
            writer
        });
        for want in &lines {
            let got = reader.next_line().await.unwrap().unwrap();
            assert!(
                got == *want,
                "{driver}: a {} byte line came back as {} bytes",
                want.len(),
                got.len()
            );
        }
        let _writer = sender.await;
        assert!(handle.stop(GRACE).await.success());
        assert_eq!(
            handle.exit_cause(),
            Some(ExitCause::StdinClosed),
            "{driver}"
        );
        assert!(
            reader.next_line().await.is_none(),
            "{driver}: EOF after exit"
        );
        assert_reaped(pid);
    });
}

#[test]
fn concurrent_sends_do_not_interleave() {
    both(|_| async {
        let c = Child::spawn(&cat(), opts(1 << 20)).await.unwrap();
        let (handle, writer, mut reader) = c.into_parts();
        const SENDERS: u8 = 8;
        const LINES: usize = 40;
        // Lines far bigger than a socket buffer, so each takes many writes.
        const LEN: usize = 256 * 1024;
        let collect = monoio::spawn(async move {
            let mut counts = [0usize; SENDERS as usize];
            for _ in 0..SENDERS as usize * LINES {
                let l = reader.next_line().await.unwrap().unwrap();
                assert_eq!(l.len(), LEN);
                let tag = l[0];
                assert!(l.iter().all(|&b| b == tag), "interleaved line");
                counts[(tag - b'a') as usize] += 1;
            }
            counts
        });
        let senders: Vec<_> = (0..SENDERS)
            .map(|s| {
                let w = writer.clone();
                monoio::spawn(async move {
                    let l = vec![b'a' + s; LEN];
                    for _ in 0..LINES {
                        w.send(&l).await.unwrap();
                    }
                })
            })
            .collect();
        for s in senders {
            s.await;
        }
        assert_eq!(collect.await, [LINES; SENDERS as usize]);
        assert!(handle.stop(GRACE).await.success());
    });
}

#[test]
fn newline_refused_and_send_after_exit_fails() {
    both(|_| async {
        let mut c = Child::spawn(&sh("read x; echo got $x"), opts(1024))
            .await
            .unwrap();
        let e = c.send(b"a\nb").await.unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::InvalidInput);
        c.send(b"one").await.unwrap();
        assert_eq!(line(&mut c).await, "got one");
        let status = c.handle().wait_exit().await;
        assert!(status.success());
        assert!(c.next_line().await.is_none());
        // The peer is gone: EPIPE (no SIGPIPE), or BrokenPipe.
        assert!(c.send(b"late").await.is_err());
        assert_eq!(c.handle().exit_cause(), Some(ExitCause::Exited));
    });
}

#[test]
fn over_long_line_refused_at_the_limit() {
    both(|_| async {
        // 1000 bytes pass, 1001 do not, and the reader ends there.
        let script = r#"printf '%01000d\n%01000d\r\n%01001d\nafter\n' 0 0 0"#;
        let mut c = Child::spawn(&sh(script), opts(1000)).await.unwrap();
        assert_eq!(line(&mut c).await.len(), 1000);
        assert_eq!(line(&mut c).await.len(), 1000);
        assert!(matches!(
            c.next_line().await,
            Some(Err(ChildError::LineTooLong { limit: 1000 }))
        ));
        assert!(c.next_line().await.is_none());
        c.stop(GRACE).await;

        // An endless line: refused after about the limit, not buffered forever.
        let mut c = Child::spawn(&sh("yes | tr -d '\\n'"), opts(1 << 20))
            .await
            .unwrap();
        assert!(matches!(
            c.next_line().await,
            Some(Err(ChildError::LineTooLong { .. }))
        ));
        let pid = c.pid();
        c.stop(GRACE).await;
        assert_reaped(pid);
    });
}

#[test]
fn garbage_lines_pass_through_as_bytes() {
    both(|_| async {
        let mut c = Child::spawn(&sh(r"printf 'not json\r\n\000\377\n\n'"), opts(1024))
            .await
            .unwrap();
        assert_eq!(c.next_line().await.unwrap().unwrap(), b"not json");
        assert_eq!(c.next_line().await.unwrap().unwrap(), b"\x00\xff");
        assert_eq!(c.next_line().await.unwrap().unwrap(), b"");
        assert!(c.next_line().await.is_none());
        c.stop(GRACE).await;
    });
}

/// Collects formatted log output.
#[derive(Clone, Default)]
struct Capture(Arc<Mutex<Vec<u8>>>);

impl Write for Capture {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Capture {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

fn with_capture(cap: &Capture, f: impl FnOnce()) {
    let w = cap.clone();
    let sub = tracing_subscriber::fmt()
        .with_ansi(false)
        .with_max_level(tracing::Level::INFO)
        .with_writer(move || w.clone())
        .finish();
    tracing::subscriber::with_default(sub, f);
}

#[test]
fn stderr_is_logged_with_session_and_pid() {
    let cap = Capture::default();
    with_capture(&cap, || {
        both(|_| async {
            let mut c = Child::spawn(&sh("read x; echo \"err $x\" >&2; echo ok"), opts(1024))
                .await
                .unwrap();
            c.handle().set_session("sess-42");
            c.send(b"go").await.unwrap();
            assert_eq!(line(&mut c).await, "ok");
            c.stop(GRACE).await;
            let h = c.handle().clone();
            eventually("stderr EOF", Duration::from_secs(2), || {
                h.stderr_stats().closed
            })
            .await;
            let s = h.stderr_stats();
            assert_eq!((s.lines, s.logged, s.dropped), (1, 1, 0));
            let text = cap.text();
            let pid = format!("pid={}", h.pid());
            let hit = text
                .lines()
                .find(|l| l.contains("err go") && l.contains(&pid))
                .unwrap_or_else(|| panic!("no stderr line in log:\n{text}"));
            assert!(hit.contains("session=sess-42"), "{hit}");
            assert!(hit.contains(" child:"), "target child: {hit}");
        });
    });
}

#[test]
fn stderr_flood_is_rate_limited_and_counted() {
    let cap = Capture::default();
    with_capture(&cap, || {
        both(|_| async {
            const N: u64 = 5000;
            let script =
                format!("i=0; while [ $i -lt {N} ]; do echo \"flood $i\" >&2; i=$((i+1)); done");
            let start = Instant::now();
            let c = Child::spawn(&sh(&script), opts(1024)).await.unwrap();
            let h = c.handle().clone();
            eventually("stderr EOF", Duration::from_secs(20), || {
                h.stderr_stats().closed
            })
            .await;
            let secs = start.elapsed().as_secs_f64();
            let s = h.stderr_stats();
            assert_eq!(s.lines, N);
            assert_eq!(s.logged + s.dropped, N);
            let cap_lines =
                f64::from(STDERR_BURST_LINES) + f64::from(STDERR_LINES_PER_SEC) * secs + 1.0;
            assert!(
                s.logged as f64 <= cap_lines,
                "logged {} in {secs:.2}s",
                s.logged
            );
            assert!(s.logged >= u64::from(STDERR_BURST_LINES));
            assert_eq!(s.reported, s.dropped, "every drop reported");
            c.stop(GRACE).await;
            println!(
                "flood: {N} lines in {secs:.3}s, logged {}, dropped {}",
                s.logged, s.dropped
            );
        });
    });
    let text = cap.text();
    let logged = text.lines().filter(|l| l.contains("flood ")).count();
    assert!(logged <= 2 * 100, "{logged} flood lines reached the log");
    let reports: u64 = text
        .lines()
        .filter(|l| l.contains("stderr lines dropped"))
        .map(|l| {
            let n = l
                .split("dropped=")
                .nth(1)
                .unwrap()
                .split(' ')
                .next()
                .unwrap();
            n.parse::<u64>().unwrap()
        })
        .sum();
    assert_eq!(
        reports + logged as u64,
        2 * 5000,
        "logged + reported = all lines, both drivers"
    );
}

/// Exits are counted by what ended the child, whatever order the exit and
/// `stop` come in.
#[test]
fn exits_are_counted_by_their_real_cause() {
    both(|_| async {
        let counts = Rc::new(ExitCounts::default());
        let counted = |o: SpawnOptions| SpawnOptions {
            exits: Some(counts.clone()),
            ..o
        };
        // Closes its stdio and exits by itself a moment later. A session
        // calls stop on EOF, before the exit: closing stdin did not end it.
        let script = "exec <&- >&-; sleep 0.2; exit 3";
        let mut c = Child::spawn(&sh(script), counted(opts(1024)))
            .await
            .unwrap();
        assert!(c.next_line().await.is_none());
        let status = c.stop(Duration::from_secs(5)).await;
        assert_eq!(status.code(), Some(3));
        assert_eq!(c.handle().exit_cause(), Some(ExitCause::Exited));
        // A signal ringgate did not send.
        let c = Child::spawn(&sh("kill -USR1 $$"), counted(opts(1024)))
            .await
            .unwrap();
        assert_eq!(c.handle().wait_exit().await.signal(), Some(libc::SIGUSR1));
        assert_eq!(c.handle().exit_cause(), Some(ExitCause::Signaled));
        // Ends because its stdin closed.
        let c = Child::spawn(&cat(), counted(opts(1024))).await.unwrap();
        assert!(c.stop(GRACE).await.success());
        assert_eq!(c.handle().exit_cause(), Some(ExitCause::StdinClosed));
        let got: Vec<u64> = [
            ExitCause::Exited,
            ExitCause::Signaled,
            ExitCause::StdinClosed,
            ExitCause::Terminated,
            ExitCause::Killed,
            ExitCause::Dropped,
        ]
        .iter()
        .map(|c| counts.get(*c))
        .collect();
        assert_eq!(got, [1, 1, 1, 0, 0, 0]);
    });
}

#[test]
fn stop_kills_a_term_ignoring_child_within_two_graces() {
    both(|_| async {
        let script = "trap '' TERM; echo ready; while :; do sleep 1; done";
        let mut c = Child::spawn(&sh(script), opts(1024)).await.unwrap();
        assert_eq!(line(&mut c).await, "ready");
        let pid = c.pid();
        let start = Instant::now();
        let status = c.stop(GRACE).await;
        let took = start.elapsed();
        assert_eq!(status.signal(), Some(libc::SIGKILL), "{status:?}");
        assert_eq!(c.handle().exit_cause(), Some(ExitCause::Killed));
        assert!(took >= 2 * GRACE, "{took:?}");
        assert!(took < 2 * GRACE + Duration::from_millis(300), "{took:?}");
        assert_reaped(pid);
    });
}

#[test]
fn stop_ends_a_send_blocked_on_a_child_that_does_not_read() {
    both(|_| async {
        let mut c = Child::spawn(&sh("echo ready; exec sleep 1000"), opts(1024))
            .await
            .unwrap();
        assert_eq!(line(&mut c).await, "ready");
        let w = c.writer().clone();
        // Far more than the socket buffers hold: the send waits for a reader.
        let send = monoio::spawn(async move { w.send(&vec![b'x'; 8 << 20]).await });
        // Let it block (not needed for the outcome: a send that has not
        // started yet fails the same way once stdin is closed).
        monoio::time::sleep(Duration::from_millis(20)).await;
        let status = c.stop(GRACE).await;
        assert_eq!(status.signal(), Some(libc::SIGTERM), "{status:?}");
        let res = monoio::time::timeout(Duration::from_secs(2), send).await;
        assert!(matches!(res, Ok(Err(_))), "{res:?}");
        // The stream may hold half a line now: later sends are refused.
        let e = c.send(b"more").await.unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::BrokenPipe);
    });
}

#[test]
fn grandchild_is_gone_after_stop() {
    both(|_| async {
        let mut c = Child::spawn(&sh("sleep 1000 & echo $!; wait"), opts(1024))
            .await
            .unwrap();
        let grandchild: u32 = line(&mut c).await.parse().unwrap();
        let pid = c.pid();
        assert!(!is_dead(grandchild));
        let status = c.stop(GRACE).await;
        assert_eq!(status.signal(), Some(libc::SIGTERM), "{status:?}");
        eventually("grandchild dead", Duration::from_secs(2), || {
            is_dead(grandchild)
        })
        .await;
        assert_reaped(pid);
    });
}

#[test]
fn leader_exit_takes_the_group_down() {
    both(|_| async {
        // The leader exits at once; its background sleep holds stdout open.
        let mut c = Child::spawn(&sh("sleep 1000 & echo $!"), opts(1024))
            .await
            .unwrap();
        let grandchild: u32 = line(&mut c).await.parse().unwrap();
        let status = c.handle().wait_exit().await;
        assert!(status.success());
        eventually("grandchild dead", Duration::from_secs(2), || {
            is_dead(grandchild)
        })
        .await;
        // With the group gone, stdout reaches EOF.
        assert!(c.next_line().await.is_none());
        assert_reaped(c.pid());
    });
}

#[test]
fn no_fds_leak_over_many_children() {
    both(|driver| async move {
        let before = fd_count();
        for _ in 0..20 {
            let mut c = Child::spawn(&cat(), opts(1024)).await.unwrap();
            c.send(b"ping").await.unwrap();
            assert_eq!(line(&mut c).await, "ping");
            let pid = c.pid();
            c.stop(GRACE).await;
            drop(c);
            assert_reaped(pid);
        }
        // io_uring closes asynchronously and stderr tasks end at EOF.
        eventually("fds back to start", Duration::from_secs(2), || {
            fd_count() <= before
        })
        .await;
        println!("{driver}: fds {before} -> {}", fd_count());
    });
}

#[test]
fn dropped_child_is_killed_and_reaped() {
    both(|_| async {
        let live = Arc::new(AtomicUsize::new(0));
        let mut o = opts(1024);
        o.live = LiveSlot::try_acquire(&live, 1);
        let c = Child::spawn(&sh("echo up; sleep 1000 & wait"), o)
            .await
            .unwrap();
        let pid = c.pid();
        assert_eq!(live.load(std::sync::atomic::Ordering::SeqCst), 1);
        drop(c);
        eventually("orphan reaped", Duration::from_secs(2), || {
            reap_orphans() == 0
        })
        .await;
        assert_reaped(pid);
        assert_eq!(live.load(std::sync::atomic::Ordering::SeqCst), 0);
    });
}

fn pool_cfg(min_idle: usize, max_live: usize) -> PoolConfig {
    PoolConfig {
        min_idle,
        max_live,
        spawn_backoff_initial: Duration::from_millis(20),
        spawn_backoff_max: Duration::from_millis(160),
        stop_grace: GRACE,
        ..PoolConfig::default()
    }
}

#[test]
fn pool_keeps_min_idle_and_gives_live_count_back() {
    both(|_| async {
        let live = Arc::new(AtomicUsize::new(0));
        let pool = Pool::new(cat(), pool_cfg(2, 5), live.clone(), "cat".into());
        pool.start();
        eventually("2 idle", Duration::from_secs(2), || pool.idle() == 2).await;
        assert_eq!(pool.live(), 2);
        let mut c = pool.take().await.unwrap();
        // Beyond one idle child, the refill waits for takes to pause
        // (grow_after, 2 s by default).
        eventually("refilled", Duration::from_secs(6), || pool.idle() == 2).await;
        assert_eq!(pool.live(), 3);
        c.send(b"hello").await.unwrap();
        assert_eq!(line(&mut c).await, "hello");
        c.stop(GRACE).await;
        assert_eq!(pool.live(), 2);
        pool.shutdown().await;
        assert_eq!(pool.live(), 0);
        assert_eq!(pool.idle(), 0);
        let s = pool.stats();
        assert_eq!(
            (s.spawned, s.taken, s.stdin_closed, s.spawn_failures),
            (3, 1, 3, 0),
            "{s:?}"
        );
        assert!(matches!(pool.take().await, Err(PoolError::ShutDown)));
    });
}

#[test]
fn a_burst_grows_the_idle_stock_within_max_live_and_it_decays() {
    both(|_| async {
        let live = Arc::new(AtomicUsize::new(0));
        let cfg = PoolConfig {
            burst_idle: 4,
            demand_hold: Duration::from_millis(300),
            grow_after: Duration::from_millis(50),
            ..pool_cfg(1, 10)
        };
        let pool = Pool::new(cat(), cfg, live.clone(), "burst".into());
        pool.start();
        eventually("1 idle", Duration::from_secs(2), || pool.idle() == 1).await;
        assert_eq!(pool.idle_target(), 1);
        // Four takes at once: one idle child, three spawned on demand.
        let takes: Vec<_> = (0..4)
            .map(|_| {
                let p = pool.clone();
                monoio::spawn(async move { p.take().await })
            })
            .collect();
        let mut taken = Vec::new();
        for t in takes {
            taken.push(t.await.unwrap());
        }
        assert_eq!(pool.idle_target(), 4, "the burst sets the idle target");
        // The refill wants four idle children, but those above min_idle
        // leave a quarter of max_live (3 of 10) free: with four taken, only
        // three are spawned. Spawning children count.
        eventually("refilled up to the reserve", Duration::from_secs(2), || {
            assert!(pool.live() <= 7, "{} live", pool.live());
            pool.idle() == 3
        })
        .await;
        assert_eq!(pool.live(), 7);
        for c in taken {
            c.stop(GRACE).await;
        }
        // Room again: the fourth idle child; then, once the burst is older
        // than demand_hold, the surplus is stopped down to min_idle.
        eventually("back to min_idle", Duration::from_secs(3), || {
            assert!(pool.live() <= 4, "{} live", pool.live());
            pool.idle() == 1 && pool.live() == 1
        })
        .await;
        assert!(pool.trimmed() >= 3, "{}", pool.trimmed());
        assert_eq!(pool.idle_target(), 1);
        pool.shutdown().await;
        assert_eq!(pool.live(), 0);
    });
}

#[test]
fn release_surplus_stops_only_children_above_min_idle() {
    both(|_| async {
        let live = Arc::new(AtomicUsize::new(0));
        let cfg = PoolConfig {
            burst_idle: 3,
            grow_after: Duration::from_millis(50),
            ..pool_cfg(1, 8)
        };
        let pool = Pool::new(cat(), cfg, live.clone(), "surplus".into());
        pool.start();
        eventually("1 idle", Duration::from_secs(2), || pool.idle() == 1).await;
        let (a, b) = (pool.take().await.unwrap(), pool.take().await.unwrap());
        let c = pool.take().await.unwrap();
        eventually("3 idle", Duration::from_secs(2), || pool.idle() == 3).await;
        assert!(pool.release_surplus().await);
        // The burst is forgotten: the refill does not spawn it back.
        assert_eq!(pool.idle_target(), 1);
        assert!(pool.release_surplus().await);
        assert_eq!(pool.idle(), 1);
        assert!(!pool.release_surplus().await, "min_idle is kept");
        assert_eq!(pool.live(), 4);
        for x in [a, b, c] {
            x.stop(GRACE).await;
        }
        pool.shutdown().await;
        assert_eq!(pool.live(), 0);
    });
}

#[test]
fn take_beyond_max_live_is_exhausted_across_pools() {
    both(|_| async {
        // Two workers' pools share one live count: max_live is global.
        let live = Arc::new(AtomicUsize::new(0));
        let a = Pool::new(cat(), pool_cfg(0, 2), live.clone(), "a".into());
        let b = Pool::new(cat(), pool_cfg(0, 2), live.clone(), "b".into());
        let c1 = a.take().await.unwrap();
        let c2 = b.take().await.unwrap();
        assert!(matches!(
            a.take().await,
            Err(PoolError::Exhausted { max_live: 2 })
        ));
        assert!(matches!(b.take().await, Err(PoolError::Exhausted { .. })));
        c1.stop(GRACE).await;
        let c3 = b.take().await.unwrap();
        c2.stop(GRACE).await;
        c3.stop(GRACE).await;
        assert_eq!(a.live(), 0);
    });
}

#[test]
fn missing_command_backs_off() {
    both(|_| async {
        let live = Arc::new(AtomicUsize::new(0));
        let spec = ChildSpec {
            cmd: "/nonexistent/ringgate-no-such-server".into(),
            args: vec![],
            env: vec![],
        };
        let pool = Pool::new(spec, pool_cfg(1, 4), live.clone(), "missing".into());
        pool.start();
        // Measurement window: backoff 20, 40, 80, 160, 160 ms... so about
        // 6 attempts in 700 ms, where a hot loop would make thousands.
        monoio::time::sleep(Duration::from_millis(700)).await;
        let n = pool.stats().spawn_failures;
        assert!((4..=8).contains(&n), "{n} attempts");
        assert!(matches!(
            pool.take().await,
            Err(PoolError::Backoff { .. } | PoolError::Spawn(_))
        ));
        assert_eq!(pool.live(), 0);
        pool.shutdown().await;
    });
}

#[test]
fn immediately_exiting_child_backs_off() {
    both(|_| async {
        let live = Arc::new(AtomicUsize::new(0));
        let pool = Pool::new(sh("exit 3"), pool_cfg(1, 4), live.clone(), "exit3".into());
        pool.start();
        monoio::time::sleep(Duration::from_millis(1000)).await;
        let s = pool.stats();
        // Each death is seen within a probation tick (100 ms), then backoff.
        assert!(s.spawned <= 10, "{s:?}");
        assert!(s.died_idle >= 3, "{s:?}");
        assert_eq!(s.exited, s.died_idle, "{s:?}");
        pool.shutdown().await;
        eventually("live 0", Duration::from_secs(2), || pool.live() == 0).await;
    });
}

#[test]
fn take_skips_an_idle_child_that_died() {
    both(|_| async {
        let dir = std::env::temp_dir().join(format!("ringgate-pool-{}", std::process::id()));
        let _ = std::fs::remove_file(&dir);
        let script = format!("echo $$ > {}; exec cat", dir.display());
        let live = Arc::new(AtomicUsize::new(0));
        let pool = Pool::new(sh(&script), pool_cfg(1, 4), live.clone(), "victim".into());
        pool.start();
        eventually("pid file", Duration::from_secs(2), || {
            std::fs::read_to_string(&dir).is_ok_and(|s| s.ends_with('\n'))
        })
        .await;
        let victim: i32 = std::fs::read_to_string(&dir)
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        std::fs::remove_file(&dir).unwrap();
        unsafe { libc::kill(victim, libc::SIGKILL) };
        // Reaped by the process thread as soon as it exits, before anyone
        // asks about it: the pidfd woke it.
        eventually("victim reaped", Duration::from_secs(2), || {
            proc_state(victim as u32).is_none()
        })
        .await;
        let mut c = pool.take().await.unwrap();
        assert_ne!(c.pid() as i32, victim);
        c.send(b"alive").await.unwrap();
        assert_eq!(line(&mut c).await, "alive");
        assert_eq!(pool.stats().died_idle, 1);
        assert_reaped(victim as u32);
        c.stop(GRACE).await;
        pool.shutdown().await;
        assert_eq!(pool.live(), 0);
    });
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

/// `cargo test --test pool -- --ignored --nocapture warm_vs_cold`
#[test]
#[ignore = "timing report; needs node"]
fn warm_vs_cold_node() {
    both(|driver| async move {
        let spec = ChildSpec {
            cmd: "node".into(),
            args: vec!["-e".into(), "process.stdin.pipe(process.stdout)".into()],
            env: vec![],
        };
        let live = Arc::new(AtomicUsize::new(0));
        let cfg = PoolConfig {
            min_idle: 1,
            ..pool_cfg(1, 8)
        };
        let pool = Pool::new(spec.clone(), cfg, live, "node".into());
        pool.start();
        let (mut warm_take, mut warm_first, mut cold) = (vec![], vec![], vec![]);
        for _ in 0..10 {
            // Warm: wait until the refill is idle and past start-up.
            eventually("idle node", Duration::from_secs(10), || pool.idle() == 1).await;
            monoio::time::sleep(Duration::from_millis(400)).await;
            let t = Instant::now();
            let mut c = pool.take().await.unwrap();
            warm_take.push(t.elapsed());
            c.send(b"{}").await.unwrap();
            assert_eq!(line(&mut c).await, "{}");
            warm_first.push(t.elapsed());
            c.stop(GRACE).await;

            // Cold, with the pool's refill finished so both run on quiet cores.
            eventually("idle node", Duration::from_secs(10), || pool.idle() == 1).await;
            monoio::time::sleep(Duration::from_millis(400)).await;
            let t = Instant::now();
            let mut c = Child::spawn(&spec, opts(1 << 20)).await.unwrap();
            c.send(b"{}").await.unwrap();
            assert_eq!(line(&mut c).await, "{}");
            cold.push(t.elapsed());
            c.stop(GRACE).await;
        }
        pool.shutdown().await;
        println!(
            "{driver}: take() warm median {:?}; take+first echo warm {:?}; cold spawn+first echo {:?}",
            median(warm_take),
            median(warm_first),
            median(cold)
        );
    });
}
