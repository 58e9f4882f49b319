//! Hostile clients against one worker (`--threads 1`): readers that stall on
//! a large SSE answer, thousands of idle connections, and a flood beyond the
//! per-worker connection limit. Well-behaved clients must still be served,
//! stuck connections cut at their deadline, and memory and descriptors stay
//! bounded (the figures are printed for the record).

mod support;

use std::io::{BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use serde_json::json;
use support::mcp::*;
use support::*;

const ALICE: &str = "127.0.0.2";
const BOB: &str = "127.0.0.3";
const CAROL: &str = "127.0.0.4";
const PLAIN: &str = "GET /plain HTTP/1.1\r\nHost: gw\r\n\r\n";

fn assert_plain(p: &Proxy, src: &str, what: &str) -> Duration {
    let t = Instant::now();
    let r = request_from(src, p.addr(), PLAIN);
    assert_eq!((r.status, r.text().as_str()), (200, "plain"), "{what}");
    t.elapsed()
}

/// A connection from `src` whose receive buffer is as small as the kernel
/// allows, so that a large answer stalls in the proxy's send path instead of
/// disappearing into socket buffers.
fn connect_tiny_window(src: &str, addr: SocketAddr) -> TcpStream {
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    sock.set_recv_buffer_size(4096).unwrap();
    sock.bind(&SocketAddr::new(src.parse().unwrap(), 0).into())
        .unwrap();
    sock.connect_timeout(&addr.into(), WAIT).unwrap();
    let s: TcpStream = sock.into();
    s.set_write_timeout(Some(WAIT)).unwrap();
    s
}

/// Reads what is left until the peer closes; (bytes, closed).
fn drain(s: &mut TcpStream) -> (usize, bool) {
    s.set_read_timeout(Some(WAIT)).unwrap();
    let mut buf = vec![0u8; 64 * 1024];
    let mut total = 0;
    loop {
        match s.read(&mut buf) {
            Ok(0) => return (total, true),
            Ok(n) => total += n,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return (total, true),
            Err(_) => return (total, false),
        }
    }
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

const WRITE_TIMEOUT: Duration = Duration::from_secs(4);
const BIG: usize = 4 << 20;

/// A one-listener config with `config` (lines under `config:`), a `/plain`
/// route answering directly, and `routes` (more route entries) after it.
fn with_plain_route(config: &str, routes: &str) -> String {
    format!(
        r#"
config:
{config}
binds:
- port: 0
  address: 127.0.0.1
  listeners:
  - routes:
    - name: plain
      matches: [{{path: {{exact: /plain}}}}]
      policies: {{directResponse: {{body: "plain"}}}}
{routes}"#
    )
}

#[test]
fn slow_readers_of_a_large_sse_answer_are_cut_and_starve_nobody() {
    let yaml = with_plain_route(
        "  http: {writeTimeout: 4s, maxBodyBytes: 16777216}\n  mcp: {minIdle: 1, stopGrace: 300ms}",
        &mcp_route("everything", "/mcp", "node", &[&server_js()]),
    );
    let p = Proxy::start(&yaml, &["--threads", "1"]);
    let good = initialize(&p, ALICE, "/mcp");
    let slow = initialize(&p, BOB, "/mcp");
    let slow_pid = session_pid(&p, &slow);
    let rss_before = proc_status_kib(p.pid(), "VmRSS").unwrap();
    let base_fds = settled_fd_count(p.pid());

    // Two slow readers of the same session, each asking for a 4 MiB echo:
    // one never reads, one trickles 1 KiB every 100 ms.
    let message = "m".repeat(BIG);
    let asked = Instant::now();
    let mut stalled = connect_tiny_window(BOB, p.addr());
    let req = post_bytes(
        "/mcp",
        Some(&slow),
        &call_body(40, "echo", json!({"message": message})),
    );
    stalled.write_all(req.as_bytes()).unwrap();
    let mut trickler = connect_tiny_window(BOB, p.addr());
    let req = post_bytes(
        "/mcp",
        Some(&slow),
        &call_body(41, "echo", json!({"message": message})),
    );
    trickler.write_all(req.as_bytes()).unwrap();
    drop(message);
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stop2 = stop.clone();
    let trickle = std::thread::spawn(move || {
        trickler
            .set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        let mut buf = [0u8; 1024];
        let mut total = 0usize;
        while !stop2.load(std::sync::atomic::Ordering::Relaxed) {
            match trickler.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => total += n,
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => break,
                Err(_) => {}
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        total
    });

    // Meanwhile, on the same worker: a plain route, another session, a new
    // session. All of this normally takes milliseconds; it must be done
    // while the slow connections are still stuck (their access lines are
    // written when they end).
    let mut took = Vec::new();
    for i in 0..3u64 {
        took.push(assert_plain(&p, CAROL, "plain route beside slow readers"));
        let t = Instant::now();
        assert_echo(
            &p,
            ALICE,
            "/mcp",
            &good,
            10 + i,
            "session beside slow readers",
        );
        took.push(t.elapsed());
    }
    let t = Instant::now();
    let fresh = initialize(&p, CAROL, "/mcp");
    assert_echo(
        &p,
        CAROL,
        "/mcp",
        &fresh,
        2,
        "new session beside slow readers",
    );
    assert_eq!(delete(&p, CAROL, "/mcp", &fresh).status, 200);
    took.push(t.elapsed());
    let slowest = took.iter().max().unwrap();
    eprintln!("well-behaved requests beside 2 stalled 4 MiB readers: slowest {slowest:?}");
    let stuck_line = |l: &str| {
        l.contains(" request ")
            && l.contains("src.addr=127.0.0.3:")
            && l.contains("mcp.method.name=tools/call")
    };
    assert!(
        !p.logs().iter().any(|l| stuck_line(l)),
        "the good clients were served while the slow ones were stuck"
    );

    // Both slow connections are cut at the write timeout, not before.
    p.wait_log_nth(1, stuck_line)
        .expect("both stuck requests ended");
    let cut_after = asked.elapsed();
    assert!(cut_after >= WRITE_TIMEOUT, "cut after {cut_after:?}");
    let (got, closed) = drain(&mut stalled);
    assert!(closed, "the stalled connection was closed");
    assert!(
        got < BIG,
        "the stalled reader got a truncated answer: {got}"
    );
    // The proxy closed both (the kernel may still hold what was queued for
    // the trickler and hand it out at its pace, but the proxy let go):
    // back to the descriptors it had before the slow clients came.
    assert!(
        wait_until(WAIT, || fd_count(p.pid()) <= base_fds),
        "fds {} after the cut, {base_fds} before the slow clients",
        fd_count(p.pid())
    );
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let got = trickle.join().unwrap();
    assert!(got < BIG, "the trickler got a truncated answer: {got}");

    let hwm = proc_status_kib(p.pid(), "VmHWM").unwrap();
    let rss = proc_status_kib(p.pid(), "VmRSS").unwrap();
    eprintln!(
        "two stalled 4 MiB SSE answers: ringgate VmRSS before {:.1} MiB, VmHWM {:.1} MiB, VmRSS after {:.1} MiB",
        mib(rss_before),
        mib(hwm),
        mib(rss)
    );
    assert!(hwm < 256 * 1024, "peak RSS {hwm} KiB");

    // The session and its child outlive the cut: not blocked, still serving.
    assert!(!pid_gone(slow_pid));
    assert_echo(
        &p,
        BOB,
        "/mcp",
        &slow,
        50,
        "the slow client's session after the cut",
    );
    let r = call(
        &p,
        BOB,
        "/mcp",
        &slow,
        51,
        "echo",
        json!({"message": "m".repeat(1 << 20)}),
    );
    assert_eq!(
        answer_text(&r, 51).map(|t| t.len() > 1 << 20),
        Some(true),
        "a large answer read at normal speed still arrives whole"
    );
    assert_eq!(delete(&p, BOB, "/mcp", &slow).status, 200);
    assert!(wait_until(WAIT, || pid_gone(slow_pid)), "child stopped");
    assert!(wait_until(WAIT, || zombies_of(p.pid()).is_empty()));
    assert_plain(&p, CAROL, "after the cut");
}

/// Idle connections held open in this test: a few thousand.
const IDLE: usize = 3000;
const LIMIT: usize = 3100;

#[test]
fn thousands_of_idle_connections_and_a_flood_beyond_the_limit() {
    let nofile = raise_nofile_limit();
    if nofile < (LIMIT + 1000) as u64 {
        eprintln!("SKIPPED: RLIMIT_NOFILE is {nofile}, need {}", LIMIT + 1000);
        return;
    }
    let yaml = with_plain_route(
        &format!(
            "  http: {{headerReadTimeout: 60s, idleTimeout: 4s, maxConnectionsPerWorker: {LIMIT}}}"
        ),
        "",
    );
    let p = Proxy::start(&yaml, &["--threads", "1"]);
    assert_plain(&p, ALICE, "warm-up");
    let base_fds = settled_fd_count(p.pid());
    let base_rss = proc_status_kib(p.pid(), "VmRSS").unwrap();

    // Idle connections that never send a byte, from several source addresses.
    let t = Instant::now();
    let idle: Vec<TcpStream> = (0..IDLE)
        .map(|i| connect_from(&format!("127.0.1.{}", 1 + i % 50), p.addr()))
        .collect();
    assert!(
        wait_until(WAIT, || fd_count(p.pid()) >= base_fds + IDLE),
        "accepted: {} fds, base {base_fds}",
        fd_count(p.pid())
    );
    eprintln!("{IDLE} idle connections open in {:?}", t.elapsed());
    let took = assert_plain(&p, ALICE, "beside thousands of idle connections");
    eprintln!("plain request beside {IDLE} idle connections: {took:?}");

    // The flood: connections that each send a request and keep the
    // connection. Up to the limit they are served; beyond it, 503.
    let mut served = Vec::new();
    let mut first_refusal = None;
    for i in 0..(LIMIT - IDLE + 50) {
        let mut s = connect_from("127.0.0.5", p.addr());
        s.write_all(PLAIN.as_bytes()).unwrap();
        let r = read_response(&mut BufReader::new(s.try_clone().unwrap()))
            .expect("an answer for every flood connection");
        match r.status {
            200 => served.push(s),
            503 => {
                assert_eq!(r.header("retry-after"), Some("1"));
                first_refusal = Some(i);
                break;
            }
            other => panic!("flood connection {i}: {other}"),
        }
    }
    let first = first_refusal.expect("the flood reached the limit");
    // Exactly up to the limit, give or take the warm-up connection the proxy
    // may still be closing.
    let open = IDLE + served.len();
    assert!(
        (LIMIT - 2..=LIMIT).contains(&open),
        "served up to the limit: {open} open ({first} flood connections served before the first 503)"
    );
    // While the limit is reached, every newcomer, good or not, gets 503.
    for i in 0..50 {
        let src = if i % 2 == 0 { "127.0.0.5" } else { ALICE };
        let r = request_tolerant(src, p.addr(), PLAIN).expect("a 503, not a reset");
        assert_eq!(r.status, 503, "newcomer {i} at the limit");
        assert_eq!(r.header("retry-after"), Some("1"));
    }
    let hwm = proc_status_kib(p.pid(), "VmHWM").unwrap();
    eprintln!(
        "{} open connections ({IDLE} idle + {} kept alive) on one worker: ringgate VmRSS before {:.1} MiB, VmHWM {:.1} MiB ({:.1} KiB per connection above the start)",
        IDLE + served.len(),
        served.len(),
        mib(base_rss),
        mib(hwm),
        (hwm.saturating_sub(base_rss)) as f64 / LIMIT as f64
    );
    assert!(hwm < 128 * 1024, "peak RSS {hwm} KiB");

    // The kept-alive flood connections go idle and are closed at the idle
    // timeout; then the good client is served again.
    for (i, s) in served.iter_mut().enumerate() {
        assert!(
            closed_after(s),
            "kept-alive flood connection {i} closed when idle"
        );
    }
    drop(served);
    assert!(
        wait_until(WAIT, || request_tolerant(ALICE, p.addr(), PLAIN)
            .is_some_and(|r| r.status == 200)),
        "the good client is served again once the flood is gone"
    );
    assert_plain(&p, ALICE, "after the flood");

    // All idle ones closed by their clients: descriptors back to the start.
    drop(idle);
    assert!(
        wait_until(WAIT, || fd_count(p.pid()) == base_fds),
        "fds {} after every connection closed, {base_fds} at the start",
        fd_count(p.pid())
    );
    assert_plain(&p, ALICE, "at rest");
    let rss = proc_status_kib(p.pid(), "VmRSS").unwrap();
    eprintln!("after all closed: ringgate VmRSS {:.1} MiB", mib(rss));
}
