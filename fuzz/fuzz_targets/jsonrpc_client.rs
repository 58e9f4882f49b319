//! A client's POST body through `jsonrpc::parse_body`.
//!
//! Invariants: every accepted message's `line` (what the child's stdin gets)
//! is JSON with no raw CR or LF, so it cannot split into two lines; parsing
//! `line` again gives the same message, alone and not as a batch; ids and
//! progress tokens are canonical JSON scalars.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ringgate::mcp::jsonrpc::{parse_body, Kind};
use serde_json::Value;

fn canonical_scalar(text: &str) {
    let v: Value = serde_json::from_str(text).expect("an id is JSON");
    assert!(v.is_string() || v.is_number(), "id {text}");
    assert_eq!(v.to_string(), text, "id is not canonical");
}

fuzz_target!(|data: &[u8]| {
    let Ok((messages, batch)) = parse_body(data) else {
        return;
    };
    assert!(!messages.is_empty());
    assert!(batch || messages.len() == 1);
    for m in &messages {
        assert!(
            !m.line.bytes().any(|b| b == b'\n' || b == b'\r'),
            "raw line break in {:?}",
            m.line
        );
        let v: Value = serde_json::from_str(&m.line).expect("line is JSON");
        assert!(v.is_object());
        let (again, again_batch) = parse_body(m.line.as_bytes()).expect("line re-parses");
        assert!(!again_batch);
        assert_eq!(again.len(), 1);
        assert_eq!(&again[0], m, "classification changed on re-parse");
        match &m.kind {
            Kind::Request {
                id, progress_token, ..
            } => {
                canonical_scalar(id);
                if let Some(t) = progress_token {
                    canonical_scalar(t);
                }
            }
            Kind::Response { id } => canonical_scalar(id),
            Kind::Notification { .. } => {}
        }
        assert_eq!(m.is_request(), matches!(m.kind, Kind::Request { .. }));
    }
});
