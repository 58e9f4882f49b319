//! The MCP endpoint in raw HTTP against the real server-everything child:
//! every status code of the transport, sessions bound to identities and
//! served across workers, and a child killed mid-request.

mod support;

use std::io::{BufReader, Write};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use support::*;

fn server_js() -> String {
    let p = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/peers/node_modules/@modelcontextprotocol/server-everything/dist/index.js"
    );
    assert!(
        std::path::Path::new(p).exists(),
        "run tests/peers/setup.sh first (scripts/test does)"
    );
    p.to_string()
}

fn config(mcp: &str) -> String {
    format!(
        r#"
config:
  mcp: {{minIdle: 1, stopGrace: 500ms {mcp}}}
binds:
- port: 0
  address: 127.0.0.1
  listeners:
  - routes:
    - name: everything
      matches: [{{path: {{pathPrefix: /mcp}}}}]
      backends:
      - mcp:
          targets:
          - name: everything
            stdio: {{cmd: node, args: ["{js}"]}}
"#,
        js = server_js()
    )
}

const ACCEPT: &str = "application/json, text/event-stream";

/// A POST of `body` from `src`, on its own connection.
fn post(p: &Proxy, src: &str, session: Option<&str>, body: &Value) -> Resp {
    let body = body.to_string();
    let sid = session.map_or(String::new(), |s| format!("Mcp-Session-Id: {s}\r\n"));
    let req = format!(
        "POST /mcp HTTP/1.1\r\nHost: gw\r\nAccept: {ACCEPT}\r\nContent-Type: application/json\r\n{sid}Content-Length: {}\r\n\r\n{body}",
        body.len()
    );
    request_from(src, p.addr(), &req)
}

fn initialize(p: &Proxy, src: &str) -> String {
    let r = post(
        p,
        src,
        None,
        &json!({"jsonrpc":"2.0","id":1,"method":"initialize","params":{
            "protocolVersion":"2025-06-18","capabilities":{},
            "clientInfo":{"name":"raw-test","version":"1"}}}),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("content-type"), Some("text/event-stream"));
    let events = r.events();
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0]["id"], 1);
    assert!(
        events[0]["result"]["serverInfo"]["name"].is_string(),
        "{events:?}"
    );
    let sid = r.header("mcp-session-id").expect("session id").to_string();
    let n = post(
        p,
        src,
        Some(&sid),
        &json!({"jsonrpc":"2.0","method":"notifications/initialized"}),
    );
    assert_eq!(n.status, 202);
    assert!(n.body.is_empty());
    sid
}

fn call(p: &Proxy, src: &str, sid: &str, id: u64, tool: &str, args: Value) -> Resp {
    post(
        p,
        src,
        Some(sid),
        &json!({"jsonrpc":"2.0","id":id,"method":"tools/call","params":{"name":tool,"arguments":args}}),
    )
}

#[test]
fn transport_status_codes() {
    let p = Proxy::start(&config(""), &["--threads", "1"]);
    let a = p.addr();
    // The seed's plain curl: no event-stream in Accept.
    let r = request_from(
        "127.0.0.2",
        a,
        "GET /mcp HTTP/1.1\r\nHost: gw\r\nAccept: */*\r\n\r\n",
    );
    assert_eq!(
        (r.status, r.text().as_str()),
        (406, "Not Acceptable: Client must accept text/event-stream")
    );
    let r = request_from("127.0.0.2", a, "POST /mcp HTTP/1.1\r\nHost: gw\r\nAccept: text/event-stream\r\nContent-Type: text/plain\r\nContent-Length: 2\r\n\r\n{}");
    assert_eq!(r.status, 415);
    let r = request_from("127.0.0.2", a, &format!("POST /mcp HTTP/1.1\r\nHost: gw\r\nAccept: {ACCEPT}\r\nContent-Type: application/json\r\nContent-Length: 5\r\n\r\n{{oops"));
    assert_eq!(r.status, 400);
    let err: Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(err["error"]["code"], -32700);
    let r = post(
        &p,
        "127.0.0.2",
        None,
        &json!({"jsonrpc":"2.0","id":1,"method":"tools/list"}),
    );
    assert_eq!(r.status, 400, "non-initialize without a session");
    let r = post(
        &p,
        "127.0.0.2",
        Some("0000ffffffffffffffffffffffffffffffff"),
        &json!({"jsonrpc":"2.0","id":1,"method":"tools/list"}),
    );
    assert_eq!(r.status, 404, "unknown session");
    let r = request_from(
        "127.0.0.2",
        a,
        "PUT /mcp HTTP/1.1\r\nHost: gw\r\nContent-Length: 0\r\n\r\n",
    );
    assert_eq!(r.status, 405);

    let sid = initialize(&p, "127.0.0.2");
    let r = post(
        &p,
        "127.0.0.2",
        Some(&sid),
        &json!({"jsonrpc":"2.0","id":2,"method":"tools/list"}),
    );
    assert_eq!(r.status, 200);
    let tools: Vec<String> = r.events()[0]["result"]["tools"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap().to_string())
        .collect();
    for t in ["echo", "get-sum", "trigger-long-running-operation"] {
        assert!(tools.iter().any(|x| x == t), "{t} in {tools:?}");
    }
    // A protocol version other than the negotiated one is refused.
    let body = json!({"jsonrpc":"2.0","id":3,"method":"tools/list"}).to_string();
    let r = request_from("127.0.0.2", a, &format!("POST /mcp HTTP/1.1\r\nHost: gw\r\nAccept: {ACCEPT}\r\nContent-Type: application/json\r\nMcp-Session-Id: {sid}\r\nMCP-Protocol-Version: 1999-01-01\r\nContent-Length: {}\r\n\r\n{body}", body.len()));
    assert_eq!(r.status, 400);
    // Batches were removed after 2025-03-26; this session negotiated later.
    let r = post(
        &p,
        "127.0.0.2",
        Some(&sid),
        &json!([{"jsonrpc":"2.0","id":4,"method":"tools/list"}]),
    );
    assert_eq!(r.status, 400);
    // DELETE ends it; afterwards the id is unknown.
    let r = request_from(
        "127.0.0.2",
        a,
        &format!("DELETE /mcp HTTP/1.1\r\nHost: gw\r\nMcp-Session-Id: {sid}\r\n\r\n"),
    );
    assert_eq!(r.status, 200);
    let r = post(
        &p,
        "127.0.0.2",
        Some(&sid),
        &json!({"jsonrpc":"2.0","id":5,"method":"tools/list"}),
    );
    assert_eq!(r.status, 404);
}

#[test]
fn batches_are_split_for_the_child_when_the_protocol_allows_them() {
    let p = Proxy::start(&config(""), &["--threads", "1"]);
    let r = post(
        &p,
        "127.0.0.2",
        None,
        &json!({"jsonrpc":"2.0","id":1,"method":"initialize","params":{
            "protocolVersion":"2025-03-26","capabilities":{},"clientInfo":{"name":"t","version":"1"}}}),
    );
    let sid = r.header("mcp-session-id").unwrap().to_string();
    assert_eq!(r.events()[0]["result"]["protocolVersion"], "2025-03-26");
    let r = post(
        &p,
        "127.0.0.2",
        Some(&sid),
        &json!([
            {"jsonrpc":"2.0","method":"notifications/initialized"},
            {"jsonrpc":"2.0","id":"a","method":"tools/call","params":{"name":"echo","arguments":{"message":"one"}}},
            {"jsonrpc":"2.0","id":"b","method":"tools/call","params":{"name":"get-sum","arguments":{"a":2,"b":3}}}
        ]),
    );
    assert_eq!(r.status, 200);
    let events = r.events();
    let answer = |id: &str| {
        events
            .iter()
            .find(|e| e["id"] == id)
            .unwrap_or_else(|| panic!("answer {id} in {events:?}"))["result"]["content"][0]["text"]
            .as_str()
            .unwrap()
            .to_string()
    };
    assert!(answer("a").contains("one"));
    assert!(answer("b").contains('5'));
}

#[test]
fn a_session_belongs_to_its_creator() {
    let p = Proxy::start(&config(""), &["--threads", "1"]);
    let alice = initialize(&p, "127.0.0.2");
    let bob = initialize(&p, "127.0.0.3");
    assert_ne!(alice, bob);
    let r = call(&p, "127.0.0.3", &alice, 2, "echo", json!({"message":"hi"}));
    assert_eq!(r.status, 404, "bob presenting alice's session");
    let r = call(&p, "127.0.0.2", &alice, 2, "echo", json!({"message":"hi"}));
    assert_eq!(r.status, 200);
    assert!(r.events()[0]["result"]["content"][0]["text"]
        .as_str()
        .unwrap()
        .contains("hi"));
}

#[test]
fn a_sessions_requests_reach_its_child_from_any_worker() {
    let p = Proxy::start(&config(""), &["--threads", "2"]);
    let sid = initialize(&p, "127.0.0.2");
    for i in 0..24u64 {
        let r = call(
            &p,
            "127.0.0.2",
            &sid,
            10 + i,
            "get-sum",
            json!({"a": i, "b": 1}),
        );
        assert_eq!(r.status, 200);
        let text = r.events()[0]["result"]["content"][0]["text"]
            .as_str()
            .unwrap()
            .to_string();
        assert!(text.contains(&(i + 1).to_string()), "{text}");
    }
    p.wait_log_nth(23, |l| {
        l.contains(" request ") && l.contains("mcp.method.name=tools/call")
    })
    .expect("access lines");
    let workers: std::collections::HashSet<String> = p
        .logs()
        .iter()
        .filter(|l| l.contains("mcp.method.name=tools/call"))
        .filter_map(|l| field(l, "worker"))
        .collect();
    // A connection the other worker accepted moved to the owner (counted),
    // or its call was handed over (answered there).
    let moved = metric(&p, "ringgate_connections_moved_total").unwrap_or(0.0);
    assert!(
        workers.len() == 2 || moved > 0.0,
        "calls arrived on both workers: {workers:?}, {moved} moved"
    );
}

fn pid_of_session(p: &Proxy, sid: &str) -> i32 {
    let line = p
        .wait_log(|l| l.contains("session started") && l.contains(sid))
        .expect("session start logged");
    field(&line, "pid").unwrap().parse().unwrap()
}

fn gone(pid: i32) -> bool {
    // Not in the process table at all: neither running nor a zombie.
    !std::path::Path::new(&format!("/proc/{pid}")).exists()
}

#[test]
fn a_child_killed_mid_request_fails_it_and_ends_the_session() {
    let p = Proxy::start(&config(""), &["--threads", "1"]);
    let sid = initialize(&p, "127.0.0.2");
    let pid = pid_of_session(&p, &sid);
    let addr = p.addr();
    let sid2 = sid.clone();
    let (in_flight, started) = std::sync::mpsc::channel();
    let pending = std::thread::spawn(move || {
        let body = json!({"jsonrpc":"2.0","id":9,"method":"tools/call","params":{
            "name":"trigger-long-running-operation","arguments":{"duration":30,"steps":3}}})
        .to_string();
        let mut s = connect_from("127.0.0.2", addr);
        write!(s, "POST /mcp HTTP/1.1\r\nHost: gw\r\nAccept: {ACCEPT}\r\nContent-Type: application/json\r\nMcp-Session-Id: {sid2}\r\nContent-Length: {}\r\n\r\n{body}", body.len()).unwrap();
        let start = Instant::now();
        let mut r = BufReader::new(s);
        // The stream's head: the call is in flight in the session.
        std::io::BufRead::fill_buf(&mut r).expect("the stream opens");
        in_flight.send(()).unwrap();
        let r = read_response(&mut r).expect("an answer");
        (r, start.elapsed())
    });
    started.recv().expect("the call is in flight");
    // SAFETY: kill only sends a signal to the process this test's proxy started.
    unsafe { libc::kill(pid, libc::SIGKILL) };
    let (r, took) = pending.join().unwrap();
    assert_eq!(r.status, 200);
    let events = r.events();
    let last = events.last().expect("an event");
    assert_eq!(last["id"], 9);
    assert_eq!(last["error"]["code"], -32603, "{events:?}");
    assert!(
        took < Duration::from_secs(10),
        "prompt, not after the 30 s call: {took:?}"
    );
    let r = call(&p, "127.0.0.2", &sid, 10, "echo", json!({"message":"x"}));
    assert_eq!(r.status, 404, "the session ended with its child");
    let fresh = initialize(&p, "127.0.0.2");
    assert_eq!(
        call(&p, "127.0.0.2", &fresh, 2, "echo", json!({"message":"y"})).status,
        200
    );
    let deadline = Instant::now() + WAIT;
    while !gone(pid) {
        assert!(
            Instant::now() < deadline,
            "child {pid} left behind (zombie?)"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn idle_sessions_expire_and_their_children_are_stopped() {
    let p = Proxy::start(&config(", sessionIdleTimeout: 400ms"), &["--threads", "1"]);
    let sid = initialize(&p, "127.0.0.2");
    let pid = pid_of_session(&p, &sid);
    p.wait_log(|l| l.contains("session ended") && l.contains("idle timeout"))
        .expect("the idle session ends");
    let r = call(&p, "127.0.0.2", &sid, 2, "echo", json!({"message":"late"}));
    assert_eq!(r.status, 404);
    let deadline = Instant::now() + WAIT;
    while !gone(pid) {
        assert!(
            Instant::now() < deadline,
            "child {pid} outlived its session"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}
