//! The chunked decoder on arbitrary bytes, and on well-formed encodings of
//! arbitrary payloads.
//!
//! Invariants: the same bytes whole, in two pieces or byte by byte give the
//! same payload, consumed count and end (or the same error); the payload
//! never exceeds the limit; nothing past the final CRLF is consumed; a
//! decoder that has not finished consumed all it was given; an encoding made
//! here decodes to exactly its payload.
#![no_main]

mod common;

use libfuzzer_sys::fuzz_target;
use ringgate::http::chunked::{ChunkError, ChunkedDecoder};

type Outcome = Result<(Vec<u8>, usize, bool), ChunkError>;

/// Feeds `input` as pieces ending at `arrivals`.
fn decode(input: &[u8], arrivals: &[usize], max_body: u64, max_trailer: usize) -> Outcome {
    let mut d = ChunkedDecoder::new(max_body, max_trailer);
    let mut out = Vec::new();
    let mut used = 0;
    let mut from = 0;
    for &to in arrivals {
        let piece = &input[from..to];
        let n = d.decode(piece, &mut out)?;
        assert!(n <= piece.len());
        assert!(
            d.is_done() || n == piece.len(),
            "stopped early without finishing"
        );
        assert!(out.len() as u64 <= max_body, "payload over the limit");
        assert_eq!(out.len() as u64, d.body_len());
        used += n;
        from = to;
    }
    Ok((out, used, d.is_done()))
}

/// A well-formed encoding of `payload` in chunks whose sizes, extensions and
/// trailers come from `seed`.
fn encode(payload: &[u8], mut seed: u32) -> Vec<u8> {
    let mut next = || {
        seed ^= seed << 13;
        seed ^= seed >> 17;
        seed ^= seed << 5;
        seed
    };
    let mut out = Vec::new();
    let mut rest = payload;
    while !rest.is_empty() {
        let n = (next() as usize % 40 + 1).min(rest.len());
        match next() % 4 {
            0 => out.extend_from_slice(format!("{n:X}").as_bytes()),
            1 => out.extend_from_slice(format!("000{n:x};a=b").as_bytes()),
            2 => out.extend_from_slice(format!("{n:x} ; q=\"x;\\\"y\" ;z").as_bytes()),
            _ => out.extend_from_slice(format!("{n:x}").as_bytes()),
        }
        out.extend_from_slice(b"\r\n");
        out.extend_from_slice(&rest[..n]);
        out.extend_from_slice(b"\r\n");
        rest = &rest[n..];
    }
    out.extend_from_slice(b"0\r\n");
    if next() % 2 == 0 {
        out.extend_from_slice(b"X-Trailer: v\t1\r\n");
    }
    out.extend_from_slice(b"\r\n");
    out
}

fuzz_target!(|data: &[u8]| {
    let Some(input) = common::input(data) else {
        return;
    };
    let max_trailer = if input.sel & 0x80 == 0 { 16 } else { 256 };
    if input.sel & 0x40 == 0 {
        // Arbitrary bytes.
        let max_body = match input.sel & 0x3f {
            0x3f => u64::MAX,
            n => u64::from(n) * 8,
        };
        let [whole, split, bytewise] = common::schedules(input.bytes.len(), input.cut);
        let want = decode(input.bytes, &whole, max_body, max_trailer);
        if let Ok((_, used, done)) = &want {
            assert!(*used <= input.bytes.len());
            assert!(*done || *used == input.bytes.len());
        }
        assert_eq!(
            decode(input.bytes, &split, max_body, max_trailer),
            want,
            "split at {}",
            input.cut
        );
        assert_eq!(
            decode(input.bytes, &bytewise, max_body, max_trailer),
            want,
            "byte by byte"
        );
    } else {
        // A valid encoding of the bytes, then a pipelined next request.
        let seed = u32::from(input.sel) << 16 | input.cut as u32 | 1;
        let mut wire = encode(input.bytes, seed);
        let end = wire.len();
        wire.extend_from_slice(b"GET / HTTP/1.1\r\n");
        let cut = input.cut % (wire.len() + 1);
        let [whole, split, _] = common::schedules(wire.len(), cut);
        let want = Ok((input.bytes.to_vec(), end, true));
        assert_eq!(decode(&wire, &whole, u64::MAX, max_trailer), want);
        assert_eq!(
            decode(&wire, &split, u64::MAX, max_trailer),
            want,
            "split at {cut}"
        );
        let limit = input.bytes.len() as u64;
        assert_eq!(
            decode(&wire, &whole, limit, max_trailer),
            want,
            "exactly at the limit"
        );
        if limit > 0 {
            assert_eq!(
                decode(&wire, &whole, limit - 1, max_trailer),
                Err(ChunkError::TooLarge),
                "one byte over the limit"
            );
        }
    }
});
