//! ringgate is a transparent bridge: the bytes a client POSTs are the bytes
//! the stdio child reads (only re-framed as one line), and the bytes the
//! child writes are the `data:` the client gets. A tap between ringgate and
//! the real server-everything (tests/peers/stdio_tap.py) logs both
//! directions; the test compares them with what went over HTTP.

mod support;

use std::path::{Path, PathBuf};

use serde_json::Value;
use support::mcp::*;
use support::*;

const SRC: &str = "127.0.0.2";

fn tap_script() -> String {
    concat!(env!("CARGO_MANIFEST_DIR"), "/tests/peers/stdio_tap.py").to_string()
}

/// A proxy whose `/mcp` child is server-everything behind the tap, which
/// logs to `<dir>/tap.in` and `<dir>/tap.out`.
fn start(dir: &Path) -> (Proxy, PathBuf) {
    let prefix = dir.join("tap");
    let yaml = format!(
        r#"
config:
  mcp: {{minIdle: 1, stopGrace: 500ms}}
binds:
- port: 0
  address: 127.0.0.1
  listeners:
  - routes:
{route}"#,
        route = mcp_route(
            "tapped",
            "/mcp",
            "python3",
            &[
                &tap_script(),
                prefix.to_str().unwrap(),
                "node",
                &server_js()
            ]
        ),
    );
    (Proxy::start(&yaml, &["--threads", "1"]), prefix)
}

/// A POST of exactly these body bytes.
fn post_raw(p: &Proxy, session: &str, body: &str) -> Resp {
    request_from(
        SRC,
        p.addr(),
        &format!(
            "POST /mcp HTTP/1.1\r\nHost: gw\r\nAccept: {ACCEPT}\r\nContent-Type: application/json\r\nMcp-Session-Id: {session}\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        ),
    )
}

/// The lines the tap logged in one direction (`in`: what the child read).
fn tapped(prefix: &Path, dir: &str) -> Vec<Vec<u8>> {
    let bytes = std::fs::read(prefix.with_extension(dir)).unwrap_or_default();
    bytes
        .split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .map(<[u8]>::to_vec)
        .collect()
}

/// The bytes without the whitespace outside strings: the same message in
/// another framing compares equal, a re-serialised one does not.
fn squeeze(text: &[u8]) -> Vec<u8> {
    let (mut out, mut in_str, mut esc) = (Vec::new(), false, false);
    for &b in text {
        if in_str {
            in_str = esc || b != b'"';
            esc = !esc && b == b'\\';
        } else if matches!(b, b' ' | b'\t' | b'\n' | b'\r') {
            continue;
        } else {
            in_str = b == b'"';
        }
        out.push(b);
    }
    out
}

/// The line the child read for `sent`: the same bytes but for whitespace
/// outside strings, on one line.
fn assert_child_read(prefix: &Path, sent: &str) -> Vec<u8> {
    let lines = tapped(prefix, "in");
    let line = lines
        .iter()
        .find(|l| squeeze(l) == squeeze(sent.as_bytes()))
        .unwrap_or_else(|| {
            panic!(
                "the child never read\n  {sent}\nit read:\n{}",
                lines
                    .iter()
                    .map(|l| format!("  {}\n", String::from_utf8_lossy(l)))
                    .collect::<String>()
            )
        });
    assert!(!line.contains(&b'\r'), "{}", String::from_utf8_lossy(line));
    line.clone()
}

/// The SSE events of `r` (their `data`, as bytes) and, for each, checks it
/// is a line the child wrote, byte for byte.
fn assert_from_child(prefix: &Path, r: &Resp) -> Vec<Vec<u8>> {
    assert_eq!(r.status, 200, "{}", r.text());
    let events = ringgate::mcp::sse::decode(&r.body);
    assert!(!events.is_empty(), "{}", r.text());
    let written = tapped(prefix, "out");
    for e in &events {
        assert!(
            written.contains(e),
            "the client got\n  {}\nwhich the child never wrote",
            String::from_utf8_lossy(e)
        );
    }
    events
}

/// The event answering `id`, as JSON.
fn answer(events: &[Vec<u8>], id: &Value) -> Value {
    events
        .iter()
        .map(|e| serde_json::from_slice::<Value>(e).unwrap())
        .find(|v| v["id"] == *id)
        .unwrap_or_else(|| panic!("no answer to {id}"))
}

/// Stops the proxy with SIGTERM and checks that every tap and every
/// server-everything behind one is gone.
fn stop(p: Proxy) {
    let (taps, all) = stop_proxy_with_taps(p);
    assert!(all > taps, "each tap runs a child");
}

/// Big integers, `-0`, `1.10`, keys out of order and escapes, in a
/// pretty-printed body: the child reads the client's bytes, on one line.
#[test]
fn a_pretty_printed_call_reaches_the_child_byte_for_byte() {
    let dir = tempfile::tempdir().unwrap();
    let (p, prefix) = start(dir.path());
    let sid = initialize(&p, SRC, "/mcp");

    let body = "{\r\n  \"params\": {\n    \"name\": \"echo\",\n    \"arguments\": {\n      \"message\": \"caf\\u00e9 \\\"q\\\" \\/ two\\nlines\",\n      \"zz\": 123456789012345678901234567890,\n      \"neg\": -0,\n      \"dec\": 1.10,\n      \"exp\": 1E+2,\n      \"aa\": [ -0.0 ,\t0e0 ]\n    }\n  },\n  \"method\": \"tools/call\",\n  \"id\": 7,\n  \"jsonrpc\": \"2.0\"\n}\n";
    let r = post_raw(&p, &sid, body);
    let line = assert_child_read(&prefix, body);
    // Only the line breaks between tokens changed.
    assert_eq!(line, body.trim().replace(['\r', '\n'], " ").as_bytes());
    let events = assert_from_child(&prefix, &r);
    let text = answer(&events, &7.into())["result"]["content"][0]["text"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(text.contains("café \"q\" / two\nlines"), "{text}");

    // A number serde_json cannot hold is forwarded too; the child decides.
    let body = r#"{"jsonrpc":"2.0","id":8,"method":"tools/call","params":{"name":"echo","arguments":{"message":"huge","n":1e400}}}"#;
    let r = post_raw(&p, &sid, body);
    assert_eq!(assert_child_read(&prefix, body), body.as_bytes());
    let events = assert_from_child(&prefix, &r);
    assert!(answer(&events, &8.into())["result"].is_object());

    assert_eq!(delete(&p, SRC, "/mcp", &sid).status, 200);
    stop(p);
}

/// A batch (protocol 2025-03-26) is split into its elements' own bytes.
#[test]
fn a_batch_is_split_into_the_elements_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let (p, prefix) = start(dir.path());
    let r = post(&p, SRC, "/mcp", None, &init_body("2025-03-26"));
    assert_eq!(r.status, 200, "{}", r.text());
    let sid = r.header("mcp-session-id").unwrap().to_string();
    assert_eq!(r.events()[0]["result"]["protocolVersion"], "2025-03-26");

    let elements = [
        r#"{ "method" : "notifications/initialized" , "jsonrpc":"2.0" }"#,
        r#"{"id":"a","jsonrpc":"2.0","method":"tools/call","params":{"name":"echo","arguments":{"message":"\u00e9t\u00e9","z":1.10,"a":-0,"big":123456789012345678901234567890}}}"#,
        "{\"jsonrpc\":\"2.0\",\n\"id\":  \"b\",\"method\":\"tools/call\",\"params\":{\"arguments\":{\"b\":3,\"a\":2},\"name\":\"get-sum\"}}",
    ];
    let body = format!(
        "\n[ {} ,\t{}\r\n,{}\n]\n",
        elements[0], elements[1], elements[2]
    );
    let r = post_raw(&p, &sid, &body);
    for e in elements {
        let line = assert_child_read(&prefix, e);
        assert_eq!(line, e.replace('\n', " ").as_bytes());
    }
    let events = assert_from_child(&prefix, &r);
    let text = |id: &str| {
        answer(&events, &id.into())["result"]["content"][0]["text"]
            .as_str()
            .unwrap()
            .to_string()
    };
    assert!(text("a").contains("été"), "{}", text("a"));
    assert!(text("b").contains('5'), "{}", text("b"));

    assert_eq!(delete(&p, SRC, "/mcp", &sid).status, 200);
    stop(p);
}
