//! A client's POST body through `jsonrpc::parse_body`.
//!
//! Invariants: ringgate forwards what the client sent, only re-framed.
//! - Each accepted message's `line` (what the child's stdin gets) has no raw
//!   CR or LF, so it cannot split into two lines.
//! - With the whitespace outside strings ignored, the line is the client's
//!   bytes: the whole body for one message; for a batch, the element's text,
//!   checked as "the lines, joined by commas inside brackets, are the body".
//!   A re-serialising proxy fails this (key order, `1.10`, `-0`, big
//!   integers, escapes).
//! - Parsing `line` again gives the same message, alone and not as a batch.
//! - Ids and progress tokens are canonical JSON scalars, and where the line
//!   also parses as a serde_json `Value`, the routed members (method, id,
//!   progress token, tool) are that value's.
//! - The body is refused as a parse error exactly when it is not JSON text.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ringgate::mcp::jsonrpc::{parse_body, BodyError, Kind, Message};
use serde::de::IgnoredAny;
use serde_json::Value;

/// The bytes without the whitespace outside strings.
fn squeeze(text: &[u8]) -> Vec<u8> {
    let (mut out, mut in_str, mut esc) = (Vec::with_capacity(text.len()), false, false);
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

fn canonical_scalar(text: &str) {
    let v: Value = serde_json::from_str(text).expect("an id is JSON");
    assert!(v.is_string() || v.is_number(), "id {text}");
    assert_eq!(v.to_string(), text, "id is not canonical");
}

/// The routed members agree with serde_json's reading of the same line.
fn agrees_with_value(m: &Message) {
    let Ok(Value::Object(v)) = serde_json::from_str::<Value>(&m.line) else {
        // Out-of-range numbers or lone surrogates where routing does not
        // look: forwarded, but no `Value` to compare with.
        return;
    };
    assert_eq!(v.get("method").and_then(Value::as_str), m.method());
    let scalar = |x: Option<&Value>| {
        x.filter(|x| x.is_string() || x.is_number())
            .map(Value::to_string)
    };
    match &m.kind {
        Kind::Request {
            id,
            method,
            progress_token,
            tool,
        } => {
            assert_eq!(scalar(v.get("id")).as_ref(), Some(id));
            let params = v.get("params");
            let token = params
                .and_then(|p| p.get("_meta"))
                .and_then(|m| m.get("progressToken"));
            assert_eq!(&scalar(token), progress_token);
            let name = params.and_then(|p| p.get("name")).and_then(Value::as_str);
            let expected = if method == "tools/call" { name } else { None };
            assert_eq!(tool.as_deref(), expected);
        }
        Kind::Response { id } => assert_eq!(scalar(v.get("id")).as_ref(), Some(id)),
        Kind::Notification { .. } => {
            assert!(matches!(v.get("id"), None | Some(Value::Null)));
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let is_json =
        std::str::from_utf8(data).is_ok_and(|t| serde_json::from_str::<IgnoredAny>(t).is_ok());
    let (messages, batch) = match parse_body(data) {
        Ok(m) => m,
        Err(e) => {
            assert_eq!(e == BodyError::Parse, !is_json, "{e:?}");
            return;
        }
    };
    assert!(is_json);
    assert!(!messages.is_empty());
    assert!(batch || messages.len() == 1);
    let body = squeeze(data);
    let forwarded = if batch {
        let mut joined = b"[".to_vec();
        for (i, m) in messages.iter().enumerate() {
            if i > 0 {
                joined.push(b',');
            }
            joined.extend(squeeze(m.line.as_bytes()));
        }
        joined.push(b']');
        joined
    } else {
        squeeze(messages[0].line.as_bytes())
    };
    assert!(
        forwarded == body,
        "forwarded {:?}\n   body {:?}",
        String::from_utf8_lossy(&forwarded),
        String::from_utf8_lossy(&body)
    );
    for m in &messages {
        assert!(
            !m.line.bytes().any(|b| b == b'\n' || b == b'\r'),
            "raw line break in {:?}",
            m.line
        );
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
        agrees_with_value(m);
    }
});
