//! A child's stdout line through `jsonrpc::peek`, which routes it.
//!
//! Invariants: no panic; a classified line that parses as JSON is an object
//! with the fields its class needs; a response's id (but for the `null` of an
//! error about an unreadable request) and a notification's progress token
//! are canonical JSON scalars, the line's own value re-serialised, and the
//! same key the client side derives from that value, so answers find their
//! requests.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ringgate::mcp::jsonrpc::{parse_body, peek, protocol_version, Kind, Outgoing};
use serde_json::Value;

fn canonical(field: &Value, key: &str) {
    let v: Value = serde_json::from_str(key).expect("a routing key is JSON");
    assert!(v.is_string() || v.is_number(), "key {key}");
    assert_eq!(v.to_string(), key, "key is not canonical");
    assert_eq!(field.to_string(), key, "key differs from the line's value");
    // The client's request with this id is filed under the same key.
    let req = format!(r#"{{"jsonrpc":"2.0","id":{key},"method":"m"}}"#);
    let (msgs, _) = parse_body(req.as_bytes()).expect("a request with this id");
    match &msgs[0].kind {
        Kind::Request { id, .. } => assert_eq!(id, key, "client and child keys differ"),
        other => panic!("{other:?}"),
    }
}

fuzz_target!(|data: &[u8]| {
    let _ = protocol_version(data);
    let Some(out) = peek(data) else {
        return;
    };
    // `peek` checks only the fields it routes by; the others may hold what a
    // full parse refuses (invalid UTF-8, a number out of range), and the
    // client gets such a line as it is. Judge the lines a full parse takes.
    let Ok(v) = serde_json::from_slice::<Value>(data) else {
        return;
    };
    let obj = v.as_object().expect("a classified line is an object");
    match &out {
        Outgoing::Response { id } => {
            assert!(obj.contains_key("result") || obj.contains_key("error"));
            assert!(obj.get("method").is_none_or(Value::is_null));
            if id == "null" {
                assert!(obj.get("id").is_none_or(Value::is_null));
                assert!(obj.contains_key("error"));
            } else {
                canonical(&obj["id"], id);
            }
        }
        Outgoing::Notification { method, progress } => {
            assert_eq!(obj["method"].as_str(), Some(method.as_str()));
            assert!(obj.get("id").is_none_or(Value::is_null));
            if let Some(t) = progress {
                canonical(&obj["params"]["progressToken"], t);
            }
        }
        Outgoing::Request { method } => {
            assert_eq!(obj["method"].as_str(), Some(method.as_str()));
        }
    }
});
