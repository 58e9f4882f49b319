//! Operating ringgate: drain on SIGTERM, metrics, readiness, reload on SIGHUP.

mod support;

use std::io::Write;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use support::*;

fn server_js() -> String {
    concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/peers/node_modules/@modelcontextprotocol/server-everything/dist/index.js"
    )
    .to_string()
}

fn config(extra_routes: &str) -> String {
    format!(
        r#"
config:
  drainTimeout: 10s
  mcp: {{minIdle: 1, stopGrace: 500ms}}
binds:
- port: 0
  address: 127.0.0.1
  listeners:
  - routes:
    - name: hello
      matches: [{{path: {{exact: /hello}}}}]
      policies: {{directResponse: {{body: "hello"}}}}
    - name: everything
      matches: [{{path: {{pathPrefix: /mcp}}}}]
      backends:
      - mcp: {{targets: [{{name: everything, stdio: {{cmd: node, args: ["{js}"]}}}}]}}
{extra_routes}
"#,
        js = server_js()
    )
}

const ACCEPT: &str = "application/json, text/event-stream";

fn post(p: &Proxy, session: Option<&str>, body: &Value) -> Resp {
    let body = body.to_string();
    let sid = session.map_or(String::new(), |s| format!("Mcp-Session-Id: {s}\r\n"));
    request_from(
        "127.0.0.2",
        p.addr(),
        &format!(
            "POST /mcp HTTP/1.1\r\nHost: gw\r\nAccept: {ACCEPT}\r\nContent-Type: application/json\r\n{sid}Content-Length: {}\r\n\r\n{body}",
            body.len()
        ),
    )
}

fn initialize(p: &Proxy) -> String {
    let r = post(
        p,
        None,
        &json!({"jsonrpc":"2.0","id":1,"method":"initialize","params":{
            "protocolVersion":"2025-06-18","capabilities":{},"clientInfo":{"name":"ops","version":"1"}}}),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    r.header("mcp-session-id").unwrap().to_string()
}

fn hello(p: &Proxy, path: &str) -> Resp {
    request_from(
        "127.0.0.2",
        p.addr(),
        &format!("GET {path} HTTP/1.1\r\nHost: gw\r\n\r\n"),
    )
}

/// Polls (bounded) until `f` holds.
fn eventually(what: &str, f: impl Fn() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !f() {
        assert!(Instant::now() < deadline, "never: {what}");
        std::thread::sleep(Duration::from_millis(25));
    }
}

#[test]
fn sigterm_lets_a_long_call_finish_then_exits_0_leaving_no_child() {
    let mut p = Proxy::start(&config(""), &["--threads", "2"]);
    let ready = p.readiness.expect("readiness listener");
    eventually("ready", || admin_get(ready, "/healthz/ready").0 == 200);
    let sid = initialize(&p);
    let pid: i32 = p
        .wait_log(|l| l.contains("session started") && l.contains(&sid))
        .and_then(|l| field(&l, "pid"))
        .unwrap()
        .parse()
        .unwrap();
    let addr = p.addr();
    let (in_flight, started) = std::sync::mpsc::channel();
    let call = std::thread::spawn(move || {
        let body = json!({"jsonrpc":"2.0","id":7,"method":"tools/call","params":{
            "name":"trigger-long-running-operation","arguments":{"duration":2,"steps":2},
            "_meta":{"progressToken":"t7"}}})
        .to_string();
        let mut s = connect_from("127.0.0.2", addr);
        write!(s, "POST /mcp HTTP/1.1\r\nHost: gw\r\nAccept: {ACCEPT}\r\nContent-Type: application/json\r\nMcp-Session-Id: {sid}\r\nContent-Length: {}\r\n\r\n{body}", body.len()).unwrap();
        let mut r = std::io::BufReader::new(s);
        // The stream's head: the call is in flight.
        std::io::BufRead::fill_buf(&mut r).expect("the stream opens");
        in_flight.send(()).unwrap();
        read_response(&mut r).expect("the call's answer")
    });
    started.recv().expect("the call is in flight");
    p.signal(libc::SIGTERM);
    p.wait_log(|l| l.contains("draining"))
        .expect("drain logged");
    assert_eq!(
        admin_get(ready, "/healthz/ready").0,
        503,
        "not ready while draining"
    );

    let r = call.join().unwrap();
    let events = r.events();
    let last = events.last().expect("events");
    assert_eq!(last["id"], 7);
    let text = last["result"]["content"][0]["text"]
        .as_str()
        .unwrap_or_default();
    assert!(text.contains("completed"), "{events:?}");
    assert!(
        events
            .iter()
            .any(|e| e["method"] == "notifications/progress"),
        "{events:?}"
    );

    let status = p
        .wait_exit(Duration::from_secs(15))
        .expect("ringgate exits after draining");
    assert!(status.success(), "{status:?}");
    eventually("the child is gone", || {
        !std::path::Path::new(&format!("/proc/{pid}")).exists()
    });
}

#[test]
fn a_second_signal_exits_at_once() {
    let mut p = Proxy::start(&config(""), &["--threads", "1"]);
    // A GET stream would hold the drain open until its deadline (10 s) if
    // it were not closed; an idle keep-alive connection holds nothing.
    let _idle = connect(p.addr());
    p.signal(libc::SIGTERM);
    p.wait_log(|l| l.contains("draining")).unwrap();
    p.signal(libc::SIGTERM);
    let status = p.wait_exit(Duration::from_secs(5)).expect("exits at once");
    assert!(status.code().is_some());
}

#[test]
fn metrics_count_the_requests_made() {
    let p = Proxy::start(&config(""), &["--threads", "2"]);
    for _ in 0..5 {
        assert_eq!(hello(&p, "/hello").status, 200);
    }
    for _ in 0..2 {
        assert_eq!(hello(&p, "/nowhere").status, 404);
    }
    let sid = initialize(&p);
    let (status, text) = admin_get(p.stats.expect("stats listener"), "/metrics");
    assert_eq!(status, 200);
    let value = |name: &str| -> f64 {
        text.lines()
            .find(|l| l.starts_with(name) && l[name.len()..].starts_with(' '))
            .unwrap_or_else(|| panic!("{name} missing:\n{text}"))[name.len() + 1..]
            .parse()
            .unwrap()
    };
    assert_eq!(
        value("ringgate_requests_total{route=\"hello\",status=\"200\"}"),
        5.0
    );
    assert_eq!(
        value("ringgate_requests_total{route=\"\",status=\"404\"}"),
        2.0
    );
    assert_eq!(
        value("ringgate_requests_total{route=\"everything\",status=\"200\"}"),
        1.0
    );
    assert!(value("ringgate_request_duration_seconds_count") >= 8.0);
    assert_eq!(value("ringgate_mcp_sessions"), 1.0);
    assert!(value("ringgate_children_live") >= 1.0);
    assert!(value("ringgate_received_bytes_total") > 0.0);
    assert!(value("ringgate_sent_bytes_total") > 0.0);
    assert_eq!(value("ringgate_workers"), 2.0);
    drop(sid);
}

#[test]
fn sighup_reload_keeps_serving_on_a_bad_config_and_serves_a_new_route() {
    let p = Proxy::start(&config(""), &["--threads", "2"]);
    let sid = initialize(&p);
    assert_eq!(hello(&p, "/new").status, 404);

    p.rewrite_config("binds: [{port: 0, listeners: [{routes: [{policies: {jwtAuth: {}}}]}]}]\n");
    p.signal(libc::SIGHUP);
    p.wait_log(|l| l.contains("reload refused") && l.contains("jwtAuth"))
        .expect("every error of the bad config is logged");
    assert_eq!(
        hello(&p, "/hello").status,
        200,
        "the old config still serves"
    );

    let new_route = r#"
    - name: new
      matches: [{path: {exact: /new}}]
      policies: {directResponse: {body: "new route"}}"#;
    p.rewrite_config(&config(new_route));
    p.signal(libc::SIGHUP);
    p.wait_log(|l| l.contains("config reloaded"))
        .expect("reloaded");
    // Each worker applies the reload on its own; the log line comes when it
    // was handed to them. Wait until 8 requests in a row (new connections,
    // spread over both workers by the kernel) get the new route.
    eventually("the new route serves on every worker", || {
        (0..8).all(|_| {
            let r = hello(&p, "/new");
            r.status == 200 && r.text() == "new route"
        })
    });
    // The MCP target did not change, so its session (and child) survived.
    let r = post(
        &p,
        Some(&sid),
        &json!({"jsonrpc":"2.0","id":2,"method":"tools/call","params":{"name":"echo","arguments":{"message":"still here"}}}),
    );
    assert_eq!(r.status, 200);
    assert!(r.events()[0]["result"]["content"][0]["text"]
        .as_str()
        .unwrap()
        .contains("still here"));
}

#[test]
fn sighup_applies_a_new_request_timeout_to_new_sessions() {
    use support::mcp as m;
    let yaml = |timeout: &str| {
        format!(
            "config:\n  mcp: {{minIdle: 2, stopGrace: 300ms, requestTimeout: {timeout}}}\nbinds:\n- port: 0\n  address: 127.0.0.1\n  listeners:\n  - routes:\n{}",
            m::mcp_route("fault", "/fault", "python3", &[&m::fault_script(), "hang"])
        )
    };
    // 30 s: a call that hangs would outlast the client's read timeout.
    let p = Proxy::start(&yaml("30s"), &["--threads", "2"]);
    // The new timeout also bounds the new session's initialize: let both
    // workers' idle children finish starting first.
    p.wait_log_nth(1, |l| l.contains("fault-server: mode hang"))
        .expect("idle children up");
    // 3 s: short of the client's read timeout, long enough for initialize.
    p.rewrite_config(&yaml("3s"));
    p.signal(libc::SIGHUP);
    p.wait_log(|l| l.contains("config reloaded"))
        .expect("reloaded");
    p.wait_log_nth(1, |l| l.contains("config applied"))
        .expect("both workers applied it");

    let sid = m::initialize(&p, "127.0.0.2", "/fault");
    let r = m::call(&p, "127.0.0.2", "/fault", &sid, 5, "stall", json!({}));
    assert_eq!(r.status, 200);
    let events = r.events();
    assert_eq!(
        events.last().unwrap()["error"]["code"],
        -32001,
        "{events:?}"
    );
    let line = p
        .wait_log(|l| l.contains("MCP request timed out") && l.contains(&sid))
        .expect("the timeout is logged");
    assert_eq!(
        field(&line, "timeout_ms").as_deref(),
        Some("3000"),
        "{line}"
    );
}
