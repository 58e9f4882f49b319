//! `sse::event` (what a client's stream carries) against `sse::decode`.
//!
//! Invariants: any bytes make exactly one event, with no CR and no blank
//! line inside it, so nothing a child writes can end an event early or
//! inject a field; bytes without CR come back exactly; events concatenate.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ringgate::mcp::sse::{decode, event, KEEPALIVE};

fuzz_target!(|data: &[u8]| {
    let e = event(data);
    assert!(!e.contains(&b'\r'), "raw CR in an event");
    assert!(e.ends_with(b"\n\n"));
    assert!(
        !e[..e.len() - 2].windows(2).any(|w| w == b"\n\n"),
        "blank line inside an event"
    );
    for line in e[..e.len() - 2].split(|b| *b == b'\n') {
        assert!(
            line == b"event: message" || line.starts_with(b"data: "),
            "stray field line {line:?}"
        );
    }
    let events = decode(&e);
    assert_eq!(events.len(), 1, "one message, one event");
    if !data.contains(&b'\r') {
        assert_eq!(events[0], data, "round trip");
    }
    let mut two = e.clone();
    two.extend_from_slice(KEEPALIVE);
    two.extend_from_slice(&e);
    assert_eq!(decode(&two), [events[0].clone(), events[0].clone()]);
});
