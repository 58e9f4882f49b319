//! Child faults end to end, over HTTP through the real binary: stdio MCP
//! servers that crash mid-call, hang, write garbage, write a line that never
//! ends, flood stderr, or ignore SIGTERM (tests/peers/fault_server.py).
//!
//! For each: the client gets a prompt, defined answer; a real
//! server-everything session on another route keeps being served; no child
//! is left a zombie; the fault child is gone once its session ends; and the
//! proxy's descriptor count comes back to where it was.

mod support;

use std::io::{Read, Write};
use std::time::{Duration, Instant};

use serde_json::json;
use support::mcp::*;
use support::*;

const ALICE: &str = "127.0.0.2";
const BOB: &str = "127.0.0.3";
const CAROL: &str = "127.0.0.4";
const STOP_GRACE: Duration = Duration::from_millis(300);
/// `config.mcp.requestTimeout` in the hanging-child test (the others keep
/// the default, 60 s): long enough for server-everything to start on a
/// loaded machine, since an `initialize` has the same deadline.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(8);

/// A proxy with server-everything on /mcp and the fault server in `mode` on
/// /fault; `mcp` adds `config.mcp` keys.
fn start(mode: &str, mcp: &str) -> Proxy {
    let yaml = format!(
        r#"
config:
  mcp: {{minIdle: 1, stopGrace: 300ms, maxLineBytes: 65536 {mcp}}}
binds:
- port: 0
  address: 127.0.0.1
  listeners:
  - routes:
{everything}{fault}"#,
        everything = mcp_route("everything", "/mcp", "node", &[&server_js()]),
        fault = mcp_route("fault", "/fault", "python3", &[&fault_script(), mode]),
    );
    Proxy::start(&yaml, &["--threads", "1"])
}

/// What the proxy looks like at rest with a server-everything session open:
/// its children (one per pool idle, plus the session's) and descriptors.
struct Baseline {
    everything: String,
    children: usize,
    fds: usize,
}

fn live_children(p: &Proxy) -> usize {
    children_of(p.pid())
        .iter()
        .filter(|(_, s)| *s != 'Z')
        .count()
}

fn baseline(p: &Proxy) -> Baseline {
    let everything = initialize(p, ALICE, "/mcp");
    assert_echo(p, ALICE, "/mcp", &everything, 2, "before the fault");
    // Two idle children (one per pool) and the session's.
    assert!(
        wait_until(WAIT, || live_children(p) == 3),
        "pools refilled: {:?}",
        children_of(p.pid())
    );
    let fds = settled_fd_count(p.pid());
    Baseline {
        everything,
        children: 3,
        fds,
    }
}

/// After a fault: the fault child is gone (not even a zombie), the other
/// session still works, nothing is left unreaped, children and descriptors
/// return to the baseline.
fn assert_recovered(p: &mut Proxy, base: &Baseline, fault_pid: u32, what: &str) {
    assert!(
        wait_until(WAIT, || pid_gone(fault_pid)),
        "{what}: fault child {fault_pid} still in the process table: {:?}",
        children_of(p.pid())
    );
    fresh_session_served(p, 7, what);
    assert_echo(p, ALICE, "/mcp", &base.everything, 8, what);
    assert!(
        wait_until(WAIT, || zombies_of(p.pid()).is_empty()),
        "{what}: zombies {:?}",
        zombies_of(p.pid())
    );
    // The extra session opened above is ended, so the count is comparable.
    assert!(
        wait_until(WAIT, || live_children(p) == base.children
            && fd_count(p.pid()) == base.fds),
        "{what}: children {:?} (want {}), fds {} (want {})",
        children_of(p.pid()),
        base.children,
        fd_count(p.pid()),
        base.fds
    );
    assert!(p.is_running(), "{what}: the proxy survived");
}

/// A new server-everything session for BOB: one echo, then DELETE.
fn fresh_session_served(p: &Proxy, id: u64, what: &str) {
    let sid = initialize(p, BOB, "/mcp");
    assert_echo(p, BOB, "/mcp", &sid, id, what);
    assert_eq!(delete(p, BOB, "/mcp", &sid).status, 200, "{what}");
}

/// Stops the proxy with SIGTERM (children stopped, exit 0) and checks that
/// every child it had is gone.
fn stop(mut p: Proxy) {
    let kids: Vec<u32> = children_of(p.pid()).iter().map(|(c, _)| *c).collect();
    p.signal(libc::SIGTERM);
    let status = p.wait_exit(Duration::from_secs(20)).expect("proxy exits");
    assert!(status.success(), "{status:?}");
    for k in kids {
        assert!(
            wait_until(WAIT, || pid_gone(k)),
            "child {k} outlived the proxy"
        );
    }
}

/// The last event of an SSE answer, which must be a JSON-RPC error for `id`.
fn error_of(r: &Resp, id: u64) -> (i64, String) {
    assert_eq!(r.status, 200, "{}", r.text());
    let events = r.events();
    let last = events.last().expect("an event");
    assert_eq!(last["id"], id, "{events:?}");
    (
        last["error"]["code"]
            .as_i64()
            .unwrap_or_else(|| panic!("{events:?}")),
        last["error"]["message"].as_str().unwrap_or("").to_string(),
    )
}

fn timed<T>(f: impl FnOnce() -> T) -> (T, Duration) {
    let t = Instant::now();
    let out = f();
    (out, t.elapsed())
}

#[test]
fn a_child_crashing_mid_call_fails_the_call_and_ends_its_session() {
    let mut p = start("crash", "");
    let base = baseline(&p);
    let sid = initialize(&p, ALICE, "/fault");
    let pid = session_pid(&p, &sid);
    let (r, took) = timed(|| call(&p, ALICE, "/fault", &sid, 5, "boom", json!({})));
    let (code, msg) = error_of(&r, 5);
    // -32603 from the exit, not -32001 from the request deadline.
    assert_eq!((code, msg.as_str()), (-32603, "MCP server exited"));
    assert!(took < WAIT, "{took:?}");
    let r = call(&p, ALICE, "/fault", &sid, 6, "ok", json!({}));
    assert_eq!(r.status, 404, "the session ended with its child");
    assert_recovered(&mut p, &base, pid, "crash");
    // Counted as an exit of its own, with its code (os._exit(3)); the other
    // exits so far are server-everything sessions ringgate stopped.
    assert!(
        wait_until(WAIT, || exits(&p, "exited") == 1),
        "{}",
        admin_get(p.stats.unwrap(), "/metrics").1
    );
    assert_eq!(exits(&p, "signaled"), 0);
    stop(p);
}

/// `ringgate_child_exits_total` for `cause`, from `/metrics`.
fn exits(p: &Proxy, cause: &str) -> u64 {
    let (_, text) = admin_get(p.stats.expect("stats listener"), "/metrics");
    let key = format!("ringgate_child_exits_total{{cause=\"{cause}\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&key))
        .map_or(0, |n| n.parse().unwrap())
}

/// A call on its own connection that may wait past `WAIT` (up to the
/// request deadline plus `WAIT`).
fn patient_call(p: &Proxy, sid: &str, id: u64, tool: &str, args: serde_json::Value) -> Resp {
    let s = send_from(
        ALICE,
        p,
        post_bytes("/fault", Some(sid), &call_body(id, tool, args)).as_bytes(),
    );
    s.set_read_timeout(Some(REQUEST_TIMEOUT + WAIT)).unwrap();
    s.shutdown(std::net::Shutdown::Write).unwrap();
    read_response(&mut std::io::BufReader::new(s)).expect("an answer")
}

#[test]
fn a_hanging_child_gets_its_request_timed_out_and_cancelled() {
    let mut p = start(
        "hang",
        &format!(", requestTimeout: {}s", REQUEST_TIMEOUT.as_secs()),
    );
    let base = baseline(&p);
    let sid = initialize(&p, ALICE, "/fault");
    let pid = session_pid(&p, &sid);
    // Two calls at once: one the child ignores, one it answers only after
    // the deadline (the child is busy sleeping meanwhile).
    let late_delay = REQUEST_TIMEOUT.as_secs() + 2;
    let (r5, r7) = std::thread::scope(|scope| {
        let wait = scope.spawn(|| timed(|| patient_call(&p, &sid, 5, "wait", json!({}))));
        let late = scope
            .spawn(|| timed(|| patient_call(&p, &sid, 7, "late", json!({"delay": late_delay}))));
        (wait.join().unwrap(), late.join().unwrap())
    });
    for ((r, took), id) in [(r5, 5), (r7, 7)] {
        let (code, msg) = error_of(&r, id);
        assert_eq!((code, msg.as_str()), (-32001, "Request timed out"), "{id}");
        assert!(
            took >= REQUEST_TIMEOUT && took < REQUEST_TIMEOUT + WAIT,
            "{id} answered at the deadline, not before nor never: {took:?}"
        );
    }
    let line = p
        .wait_log(|l| l.contains("fault-server: cancelled 5"))
        .expect("the child was sent notifications/cancelled for request 5");
    assert_eq!(field(&line, "pid"), Some(pid.to_string()), "{line}");
    // The session outlives timed-out requests, and the late answer to 7
    // (written when the child wakes up, before it reads this call) is
    // dropped, not taken for another answer.
    let r = patient_call(&p, &sid, 8, "ok", json!({"message":"after"}));
    assert_eq!(
        answer_text(&r, 8).as_deref(),
        Some("ok:after"),
        "{:?}",
        r.events()
    );
    p.wait_log(|l| l.contains("fault-server: cancelled 7"))
        .expect("cancelled 7");
    // The late answer was not parked for the GET stream either: opening it
    // hands over the backlog at once, and there is nothing for id 7.
    let mut get = send_from(
        ALICE,
        &p,
        format!("GET /fault HTTP/1.1\r\nHost: gw\r\nAccept: text/event-stream\r\nMcp-Session-Id: {sid}\r\n\r\n")
            .as_bytes(),
    );
    get.set_read_timeout(Some(Duration::from_millis(1500)))
        .unwrap();
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    while let Ok(n) = get.read(&mut buf) {
        if n == 0 {
            break;
        }
        seen.extend_from_slice(&buf[..n]);
    }
    let seen = String::from_utf8_lossy(&seen);
    assert!(seen.starts_with("HTTP/1.1 200"), "{seen}");
    assert!(!seen.contains("\"late\""), "late answer leaked: {seen}");
    drop(get);
    assert_eq!(delete(&p, ALICE, "/fault", &sid).status, 200);
    assert_recovered(&mut p, &base, pid, "hang");
    stop(p);
}

#[test]
fn a_child_writing_garbage_fails_the_call_and_ends_its_session() {
    let mut p = start("garbage", "");
    let base = baseline(&p);
    let sid = initialize(&p, ALICE, "/fault");
    let pid = session_pid(&p, &sid);
    let (r, took) = timed(|| call(&p, ALICE, "/fault", &sid, 5, "junk", json!({})));
    assert_eq!(
        error_of(&r, 5),
        (-32603, "MCP server wrote an invalid message".to_string())
    );
    assert!(took < WAIT, "{took:?}");
    p.wait_log(|l| l.contains("not JSON-RPC") && l.contains("this is not JSON-RPC at all"))
        .expect("the bad line is logged");
    assert_eq!(
        call(&p, ALICE, "/fault", &sid, 6, "ok", json!({})).status,
        404
    );
    assert_recovered(&mut p, &base, pid, "garbage");
    stop(p);
}

#[test]
fn a_child_writing_an_endless_line_is_cut_off_and_memory_stays_bounded() {
    let mut p = start("endless", "");
    let base = baseline(&p);
    let sid = initialize(&p, ALICE, "/fault");
    let pid = session_pid(&p, &sid);
    let (r, took) = timed(|| call(&p, ALICE, "/fault", &sid, 5, "spew", json!({})));
    assert_eq!(
        error_of(&r, 5),
        (-32603, "MCP server output refused".to_string())
    );
    assert!(took < WAIT, "{took:?}");
    p.wait_log(|l| l.contains("exceeds 65536 bytes"))
        .expect("the reason is logged");
    assert_eq!(
        call(&p, ALICE, "/fault", &sid, 6, "ok", json!({})).status,
        404
    );
    assert_recovered(&mut p, &base, pid, "endless line");
    let hwm = proc_status_kib(p.pid(), "VmHWM").unwrap();
    eprintln!("endless line: ringgate VmHWM {hwm} KiB");
    assert!(hwm < 128 * 1024, "peak RSS {hwm} KiB");
    stop(p);
}

#[test]
fn a_child_flooding_stderr_is_rate_limited_and_still_served() {
    let started = Instant::now();
    let mut p = start("stderr-flood", "");
    let base = baseline(&p);
    let sid = initialize(&p, ALICE, "/fault");
    let pid = session_pid(&p, &sid);
    for i in 0..5u64 {
        let (r, took) = timed(|| {
            call(
                &p,
                ALICE,
                "/fault",
                &sid,
                10 + i,
                "ok",
                json!({"message": i}),
            )
        });
        assert_eq!(answer_text(&r, 10 + i), Some(format!("ok:{i}")));
        assert!(took < WAIT, "{took:?}");
        assert_echo(&p, ALICE, "/mcp", &base.everything, 20 + i, "flood");
    }
    // Reported under the session once the child serves one (before that,
    // while idle in the pool, under `session=-`).
    p.wait_log(|l| {
        l.contains("stderr lines dropped")
            && l.contains(&format!("pid={pid}"))
            && l.contains(&format!("session={sid}"))
    })
    .expect("drops reported under the session");
    let logged = p
        .logs()
        .iter()
        .filter(|l| l.contains("stderr flood line") && l.contains(&format!("pid={pid}")))
        .count() as u64;
    // Burst 20, then 20 lines a second, over the whole life of the child.
    let bound = 20 + 20 * (started.elapsed().as_secs() + 2);
    assert!(
        logged <= bound,
        "{logged} flood lines logged (bound {bound})"
    );
    assert_eq!(delete(&p, ALICE, "/fault", &sid).status, 200);
    assert_recovered(&mut p, &base, pid, "stderr flood");
    stop(p);
}

#[test]
fn a_child_ignoring_sigterm_is_killed_after_the_grace_periods() {
    let mut p = start("ignore-term", ", sessionIdleTimeout: 1500ms");
    // Stopped on DELETE.
    let sid = initialize(&p, ALICE, "/fault");
    let pid = session_pid(&p, &sid);
    let r = call(&p, ALICE, "/fault", &sid, 5, "ok", json!({"message":"x"}));
    assert_eq!(answer_text(&r, 5).as_deref(), Some("ok:x"));
    let deleted = Instant::now();
    let (r, took) = timed(|| delete(&p, ALICE, "/fault", &sid));
    assert_eq!(r.status, 200);
    assert!(took < WAIT, "DELETE does not wait for the child: {took:?}");
    let line = p
        .wait_log(|l| {
            l.contains("ignored stdin EOF and SIGTERM") && l.contains(&format!("pid={pid}"))
        })
        .expect("escalation to SIGKILL logged");
    assert!(wait_until(WAIT, || pid_gone(pid)), "{line}");
    assert!(
        deleted.elapsed() >= STOP_GRACE * 2,
        "SIGKILL only after stdin EOF and SIGTERM each had their grace"
    );
    // Stopped on idle timeout: the same escalation.
    let sid2 = initialize(&p, ALICE, "/fault");
    let pid2 = session_pid(&p, &sid2);
    p.wait_log(|l| {
        l.contains("ignored stdin EOF and SIGTERM") && l.contains(&format!("pid={pid2}"))
    })
    .expect("idle session's child killed too");
    assert!(wait_until(WAIT, || pid_gone(pid2)));
    assert_eq!(
        call(&p, ALICE, "/fault", &sid2, 6, "ok", json!({})).status,
        404
    );
    // Sessions idle out quickly with this config, so check the other route
    // with a session of its own.
    fresh_session_served(&p, 7, "ignore-term");
    assert!(wait_until(WAIT, || zombies_of(p.pid()).is_empty()));
    assert!(p.is_running());
    stop(p);
}

/// Client connections open while a child is spawned (the pool refills as a
/// session takes its child, during the `initialize` request) must not leak
/// into the child: it would hold them open after the proxy closes them, and
/// it could read and write other clients' traffic.
#[test]
fn children_inherit_no_descriptor_but_their_stdio() {
    let p = start("hang", "");
    // Several connections open at once while sessions take children.
    let mut held: Vec<_> = (0..3)
        .map(|_| send_from(CAROL, &p, b"GET /nowhere HTTP/1.1\r\nHost: gw\r\n"))
        .collect();
    let s = send_from(
        ALICE,
        &p,
        post_bytes("/fault", None, &init_body("2025-06-18")).as_bytes(),
    );
    s.shutdown(std::net::Shutdown::Write).unwrap();
    let mut r = std::io::BufReader::new(s);
    let resp = read_response(&mut r).expect("initialize answered");
    assert_eq!(resp.status, 200);
    assert!(
        closed_after(&mut r),
        "the initialize connection is closed once the client is done"
    );
    let sid = resp.header("mcp-session-id").unwrap().to_string();
    let _ = initialize(&p, BOB, "/mcp");
    assert!(wait_until(WAIT, || live_children(&p) == 4));
    for (child, _) in children_of(p.pid()) {
        let fds: Vec<String> = std::fs::read_dir(format!("/proc/{child}/fd"))
            .map(|d| {
                d.flatten()
                    .filter(|e| {
                        std::fs::read_link(e.path())
                            .is_ok_and(|t| t.to_string_lossy().starts_with("socket:"))
                    })
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        let extra: Vec<&String> = fds
            .iter()
            .filter(|f| !["0", "1", "2"].contains(&f.as_str()))
            .collect();
        assert!(
            extra.is_empty(),
            "child {child} holds sockets besides its stdio: fds {extra:?}"
        );
    }
    for h in &mut held {
        h.write_all(b"\r\n").unwrap();
    }
    drop(held);
    assert_eq!(delete(&p, ALICE, "/fault", &sid).status, 200);
    stop(p);
}

/// Running or stopped, as opposed to gone or a zombie (killed, waiting for
/// whoever adopted it to reap it).
fn alive(pid: u32) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    let state = stat
        .rfind(')')
        .and_then(|i| stat[i + 1..].split_whitespace().next())
        .unwrap_or("?");
    !matches!(state, "Z" | "X")
}

/// A SIGKILLed ringgate cannot stop its children, so the kernel does: no
/// child outlives it, not even one that ignores stdin EOF and SIGTERM.
#[test]
fn no_child_outlives_a_killed_ringgate() {
    let mut p = start("ignore-term", "");
    let sid = initialize(&p, ALICE, "/fault");
    let pid = session_pid(&p, &sid);
    let r = call(&p, ALICE, "/fault", &sid, 5, "ok", json!({"message":"x"}));
    assert_eq!(answer_text(&r, 5).as_deref(), Some("ok:x"));
    // The session's child and the idle ones of both pools.
    assert!(wait_until(WAIT, || live_children(&p) == 3));
    let kids: Vec<u32> = children_of(p.pid()).iter().map(|(c, _)| *c).collect();
    assert!(kids.contains(&pid), "{kids:?}");
    p.signal(libc::SIGKILL);
    p.wait_exit(WAIT).expect("ringgate killed");
    for k in kids {
        assert!(
            wait_until(WAIT, || !alive(k)),
            "child {k} outlived the killed ringgate"
        );
    }
}
