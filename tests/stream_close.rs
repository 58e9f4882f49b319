//! A client that closes a session's GET stream is noticed at once, not at
//! the next keep-alive comment (15 s later): the stream stops counting as a
//! connected client, so the session's idle clock runs.

mod support;

use std::io::{BufReader, Write};
use std::time::Duration;

use serde_json::json;
use support::mcp::*;
use support::*;

const ALICE: &str = "127.0.0.2";
/// Long enough that an open GET stream visibly keeps the session alive.
const HELD: Duration = Duration::from_millis(2500);

#[test]
fn a_closed_get_stream_lets_the_idle_session_end() {
    let yaml = format!(
        "config:\n  mcp: {{minIdle: 1, stopGrace: 300ms, sessionIdleTimeout: 1s}}\nbinds:\n- port: 0\n  address: 127.0.0.1\n  listeners:\n  - routes:\n{}",
        mcp_route("everything", "/mcp", "node", &[&server_js()])
    );
    let p = Proxy::start(&yaml, &["--threads", "1"]);
    let sid = initialize(&p, ALICE, "/mcp");
    let pid = session_pid(&p, &sid);
    let ended = |l: &str| l.contains("session ended") && l.contains(&sid);

    let mut get = connect_from(ALICE, p.addr());
    write!(
        get,
        "GET /mcp HTTP/1.1\r\nHost: gw\r\nAccept: text/event-stream\r\nMcp-Session-Id: {sid}\r\n\r\n"
    )
    .unwrap();
    let mut r = BufReader::new(get.try_clone().unwrap());
    let head = read_response_to(&mut r, true).expect("the GET stream's head");
    assert_eq!(head.status, 200);
    assert_eq!(head.header("content-type"), Some("text/event-stream"));

    // While the stream is open the session is not idle, well past its
    // idle timeout.
    assert!(
        !wait_until(HELD, || p.logs().iter().any(|l| ended(l))),
        "the session ended while its GET stream was open"
    );

    // The client goes away. It read all it was sent, so its close is a FIN
    // (as a half-close would be), not a reset: the proxy tells them apart.
    drop(r);
    get.set_nonblocking(true).unwrap();
    let mut sink = [0u8; 4096];
    while std::io::Read::read(&mut get, &mut sink).is_ok_and(|n| n > 0) {}
    drop(get);
    let line = p
        .wait_log(ended)
        .expect("the session ends within a few seconds of the stream closing");
    assert!(line.contains("idle timeout"), "{line}");
    let r = call(
        &p,
        ALICE,
        "/mcp",
        &sid,
        2,
        "echo",
        json!({"message": "late"}),
    );
    assert_eq!(r.status, 404, "{}", r.text());
    assert!(wait_until(WAIT, || pid_gone(pid)), "child stopped");
}
