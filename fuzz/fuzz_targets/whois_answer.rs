//! The extAuthz client's answer parser on arbitrary bytes from the
//! authorization service (tailscaled, or anything configured as `host`).
//!
//! Invariants: the same bytes whole, in two reads or byte by byte give the
//! same answer or the same error; a connection reusable after the whole
//! bytes is reusable after any split; the body never exceeds its cap; a
//! final answer is 2xx-5xx; an answer framed both by Transfer-Encoding and
//! Content-Length is never accepted.
#![no_main]

mod common;

use libfuzzer_sys::fuzz_target;
use ringgate::auth::client::{parse_answer, CheckResponse};

type Outcome = Result<(CheckResponse, bool), (&'static str, String)>;

fn run(bytes: &[u8], arrivals: &[usize], head: usize, body: usize, head_only: bool) -> Outcome {
    let mut from = 0;
    let pieces = arrivals.iter().map(|&to| {
        let piece = &bytes[from..to];
        from = to;
        piece
    });
    parse_answer(pieces, head, body, head_only).map_err(|e| (e.kind(), e.to_string()))
}

fuzz_target!(|data: &[u8]| {
    let Some(input) = common::input(data) else {
        return;
    };
    let max_head = 64 + usize::from(input.sel & 0x3f) * 8;
    let max_body = if input.sel & 0x40 == 0 { 32 } else { 1024 };
    let head_only = input.sel & 0x80 != 0;
    let [whole, split, bytewise] = common::schedules(input.bytes.len(), input.cut);
    let want = run(input.bytes, &whole, max_head, max_body, head_only);
    for (how, arrivals) in [("split", &split), ("byte by byte", &bytewise)] {
        let got = run(input.bytes, arrivals, max_head, max_body, head_only);
        match (&got, &want) {
            (Ok((g, g_reuse)), Ok((w, w_reuse))) => {
                assert_eq!(g, w, "{how} (cut {})", input.cut);
                // A read that ends with the answer cannot see what follows.
                assert!(!w_reuse || *g_reuse, "{how} (cut {})", input.cut);
            }
            _ => assert_eq!(got, want, "{how} (cut {})", input.cut),
        }
    }
    let Ok((resp, _)) = want else {
        return;
    };
    assert!(resp.body.len() <= max_body, "body over the cap");
    assert!((200..=599).contains(&resp.status), "status {}", resp.status);
    if head_only || resp.status == 204 || resp.status == 304 {
        assert!(resp.body.is_empty());
    }
    let has = |name: &str| resp.headers.iter().any(|(n, _)| n == name);
    assert!(
        !(has("transfer-encoding") && has("content-length")),
        "both framings accepted"
    );
    for (n, _) in &resp.headers {
        assert_eq!(n, &n.to_ascii_lowercase());
    }
});
