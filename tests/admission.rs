//! Admission on the request head: extAuthz decides before any body byte is
//! read, so a refused caller never gets `100 Continue` and never makes the
//! proxy hold its body; and the per-worker budget of body bytes in flight
//! (`maxBodyBytesInFlight`) refuses an upload beyond it with 503.

mod support;

use std::io::{BufReader, Write};
use std::net::TcpStream;

use serde_json::json;
use support::fake_tailscaled::{direct_route_behind_whois, FakeTailscaled};
use support::mcp::*;
use support::*;

const ALICE: &str = "127.0.0.2";
const STRANGER: &str = "127.0.0.9";
/// Under the default `maxBodyBytes` (4 MiB), so only the policy can refuse.
const UPLOAD: usize = 4_000_000;

fn authz_config(fake: &FakeTailscaled) -> String {
    direct_route_behind_whois(fake, "upload", "stored", &[])
}

/// A head announcing a large body and waiting for `100 Continue`.
fn expect_continue_head() -> String {
    format!(
        "POST /upload HTTP/1.1\r\nHost: gw\r\nContent-Type: application/octet-stream\r\nExpect: 100-continue\r\nContent-Length: {UPLOAD}\r\n\r\n"
    )
}

#[test]
fn an_unknown_peer_is_refused_on_the_head_without_100_continue() {
    let fake = FakeTailscaled::builder()
        .user(ALICE, "alice-laptop.tail1234.ts.net.", "alice@example.com")
        .start();
    let p = Proxy::start(&authz_config(&fake), &["--threads", "1"]);

    // The stranger sends the head only and waits, as curl does.
    let mut s = connect_from(STRANGER, p.addr());
    s.write_all(expect_continue_head().as_bytes()).unwrap();
    let mut r = BufReader::new(s);
    let first = read_response(&mut r).expect("an answer to the head alone");
    assert_eq!(
        first.status, 403,
        "the first answer is the refusal, not 100 Continue: {first:?}"
    );
    assert_eq!(first.header("content-type"), Some("text/plain"));
    assert_eq!(first.text(), "external authorization failed");
    assert_eq!(first.header("connection"), Some("close"));
    assert!(
        closed_after(&mut r),
        "the connection closes without the body ever being sent"
    );
    assert_eq!(fake.whois_calls_for(STRANGER), 1);

    // A known peer with the same head is let in: 100 Continue first, then
    // the body is read and answered.
    let mut s = connect_from(ALICE, p.addr());
    s.write_all(expect_continue_head().as_bytes()).unwrap();
    let mut r = BufReader::new(s.try_clone().unwrap());
    let first = read_response(&mut r).expect("100 Continue");
    assert_eq!(first.status, 100, "{first:?}");
    s.write_all(&vec![b'x'; UPLOAD]).unwrap();
    let answer = read_response(&mut r).expect("the answer after the body");
    assert_eq!((answer.status, answer.text().as_str()), (200, "stored"));
    let line = p
        .wait_log(|l| l.contains(" request ") && l.contains("src.addr=127.0.0.2:"))
        .expect("alice's request logged");
    assert!(line.contains("http.status=200"), "{line}");
}

const BUDGET: usize = 100_000;
/// Each upload alone fits the budget; two of them do not.
const BODY: usize = 80_000;
const FIRST_PART: usize = 60_000;

/// A POST of an echo whose JSON body is exactly `BODY` bytes.
fn echo_of_body_size(sid: &str, id: u64) -> (String, Vec<u8>, String) {
    let empty = call_body(id, "echo", json!({"message": ""})).to_string();
    let message = "p".repeat(BODY - empty.len());
    let body = call_body(id, "echo", json!({ "message": message })).to_string();
    assert_eq!(body.len(), BODY);
    let head = format!(
        "POST /mcp HTTP/1.1\r\nHost: gw\r\nAccept: {ACCEPT}\r\nContent-Type: application/json\r\nMcp-Session-Id: {sid}\r\nContent-Length: {BODY}\r\n\r\n"
    );
    (head, body.into_bytes(), message)
}

fn received(p: &Proxy) -> f64 {
    metric(p, "ringgate_received_bytes_total").expect("received bytes metric")
}

/// Sends `head` and the first part of `body`, and waits until the proxy has
/// read them (its received-bytes counter says so).
fn start_upload(p: &Proxy, head: &str, body: &[u8]) -> TcpStream {
    let before = received(p);
    let s = send_from(ALICE, p, &[head.as_bytes(), &body[..FIRST_PART]].concat());
    let sent = (head.len() + FIRST_PART) as f64;
    assert!(
        wait_until(WAIT, || received(p) >= before + sent),
        "the proxy read the first part: {} of {sent} bytes",
        received(p) - before
    );
    s
}

#[test]
fn bodies_beyond_the_workers_budget_get_503_and_the_first_completes() {
    let yaml = format!(
        "config:\n  http: {{maxBodyBytesInFlight: {BUDGET}}}\n  mcp: {{minIdle: 1, stopGrace: 300ms}}\nbinds:\n- port: 0\n  address: 127.0.0.1\n  listeners:\n  - routes:\n{}",
        mcp_route("everything", "/mcp", "node", &[&server_js()])
    );
    let p = Proxy::start(&yaml, &["--threads", "1"]);
    let sid = initialize(&p, ALICE, "/mcp");

    // Two slow uploads on the one worker: the first holds 60 KB of its body
    // in the proxy while the second arrives.
    let (head, body, message) = echo_of_body_size(&sid, 5);
    let mut first = start_upload(&p, &head, &body);
    let (head2, body2, _) = echo_of_body_size(&sid, 6);
    let second = send_from(
        ALICE,
        &p,
        &[head2.as_bytes(), &body2[..FIRST_PART]].concat(),
    );
    let refused = read_response(&mut BufReader::new(second)).expect("an answer, not a hang");
    assert_eq!(refused.status, 503, "{}", refused.text());
    assert_eq!(refused.header("retry-after"), Some("1"));
    assert_eq!(refused.header("content-type"), Some("application/json"));
    let err: serde_json::Value = serde_json::from_slice(&refused.body).unwrap();
    assert_eq!(err["jsonrpc"], "2.0", "{err}");
    assert!(err["error"]["code"].is_i64(), "{err}");
    assert!(err["error"]["message"].is_string(), "{err}");

    // The first upload is still read to its end and answered.
    first.write_all(&body[FIRST_PART..]).unwrap();
    let r = read_response(&mut BufReader::new(first)).expect("the first upload's answer");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(answer_text(&r, 5), Some(format!("Echo: {message}")));

    // The refused body's bytes were given back: the same upload fits now.
    let (head3, body3, _) = echo_of_body_size(&sid, 7);
    let third = send_from(ALICE, &p, &[head3.as_bytes(), &body3[..]].concat());
    let r = read_response(&mut BufReader::new(third)).expect("an answer");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(delete(&p, ALICE, "/mcp", &sid).status, 200);
}
