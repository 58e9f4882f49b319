//! A client's bytes through request framing as the connection loop applies
//! it (head, then a Content-Length or chunked body, then the next pipelined
//! request while the connection is kept alive), with small limits.
//!
//! Invariants: the same bytes whole, in two reads or byte by byte give the
//! same requests and the same refusal; a refusal is one of the statuses
//! framing may send; an accepted request's ranges lie inside its head, its
//! body fits the limit, and its framing agrees with an independent reading
//! of its headers (no Content-Length next to Transfer-Encoding, one Host...).
#![no_main]

mod common;

use libfuzzer_sys::fuzz_target;
use ringgate::config::Limits;
use ringgate::http::chunked::is_tchar;
use ringgate::http::parse::{trim_ows, valid_host, BodyKind, RequestReader};

const REFUSALS: [u16; 8] = [400, 408, 413, 414, 417, 431, 501, 505];

#[derive(Debug, PartialEq)]
enum Event {
    Request {
        head_len: usize,
        consumed: usize,
        method: Vec<u8>,
        target: Vec<u8>,
        path: Vec<u8>,
        host: Option<Vec<u8>>,
        minor: u8,
        headers: Vec<(Vec<u8>, Vec<u8>)>,
        kind: BodyKind,
        keep_alive: bool,
        expect_continue: bool,
        body: Vec<u8>,
    },
    Refused(u16, &'static str),
    /// The client stopped sending mid-request.
    Incomplete,
}

/// Small limits, within what the config accepts, picked by `sel`.
fn limits(sel: u8) -> Limits {
    Limits {
        max_head_bytes: if sel & 1 == 0 { 256 } else { 512 },
        max_uri_bytes: 16 + usize::from(sel >> 1 & 0x7) * 24,
        max_headers: 1 + usize::from(sel >> 4 & 0x7),
        max_body_bytes: if sel & 0x80 == 0 { 64 } else { 0 },
        ..Limits::default()
    }
}

/// Serves `data` arriving as `arrivals` (bytes received after each read),
/// with a buffer that is compacted between reads as the connection does.
fn serve(data: &[u8], arrivals: &[usize], limits: &Limits) -> Vec<Event> {
    let mut events = Vec::new();
    let mut buf = Vec::new();
    let mut fed = 0;
    let mut read = 0;
    let mut reader = RequestReader::default();
    loop {
        reader.reset();
        loop {
            buf.extend_from_slice(&data[fed..arrivals[read]]);
            fed = arrivals[read];
            match reader.poll(&buf, limits) {
                Err(e) => {
                    assert!(REFUSALS.contains(&e.status), "status {}", e.status);
                    assert!(!e.reason.is_empty());
                    events.push(Event::Refused(e.status, e.reason));
                    return events;
                }
                Ok(Some(n)) => {
                    // Compaction only ever dropped decoded chunk bytes.
                    assert_eq!(&buf[n..], &data[fed - (buf.len() - n)..fed]);
                    let ev = check_request(&reader, &buf, n, reader.discarded(), limits);
                    let keep_alive = matches!(
                        ev,
                        Event::Request {
                            keep_alive: true,
                            ..
                        }
                    );
                    events.push(ev);
                    buf.drain(..n);
                    if !keep_alive {
                        return events;
                    }
                    break;
                }
                Ok(None) if read + 1 == arrivals.len() => {
                    events.push(Event::Incomplete);
                    return events;
                }
                Ok(None) => {
                    reader.compact(&mut buf);
                    read += 1;
                }
            }
        }
    }
}

fn check_request(
    reader: &RequestReader,
    buf: &[u8],
    consumed: usize,
    discarded: usize,
    limits: &Limits,
) -> Event {
    let head = reader.head().expect("a complete request has a head");
    assert!(head.len <= consumed && consumed <= buf.len());
    let head_bytes = &buf[..head.len];
    let get = |r: &std::ops::Range<usize>| {
        assert!(
            r.start <= r.end && r.end <= head.len,
            "range {r:?} outside the head"
        );
        head_bytes[r.clone()].to_vec()
    };
    let method = get(&head.method);
    let target = get(&head.target);
    let path = get(&head.path);
    let host = head.host.as_ref().map(get);
    assert!(!method.is_empty() && method.iter().all(|b| is_tchar(*b)));
    assert!(target.iter().all(|b| (0x21..=0x7e).contains(b)));
    assert!(path.first() == Some(&b'/') || path == b"*", "path {path:?}");
    assert!(head.minor_version <= 1);
    let headers: Vec<_> = head.headers.iter().map(|(n, v)| (get(n), get(v))).collect();
    for (n, v) in &headers {
        assert!(
            !n.is_empty() && n.iter().all(|b| is_tchar(*b)),
            "name {n:?}"
        );
        assert!(
            !v.iter().any(|b| matches!(b, b'\r' | b'\n' | 0)),
            "value {v:?}"
        );
    }
    if let Some(h) = &host {
        assert!(h.is_empty() || valid_host(h), "host {h:?}");
    }

    // Framing, read again from the headers by a simpler rule set.
    let named = |name: &str| -> Vec<&[u8]> {
        headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name.as_bytes()))
            .map(|(_, v)| trim_ows(v))
            .collect()
    };
    let te = named("transfer-encoding");
    let cl = named("content-length");
    let hosts = named("host");
    assert!(hosts.len() <= 1, "more than one Host accepted");
    assert!(
        head.minor_version == 0 || hosts.len() == 1,
        "HTTP/1.1 without Host"
    );
    if !te.is_empty() {
        assert!(
            cl.is_empty(),
            "Transfer-Encoding with Content-Length accepted"
        );
        assert_eq!(
            head.minor_version, 1,
            "Transfer-Encoding in HTTP/1.0 accepted"
        );
        assert_eq!(head.body, BodyKind::Chunked);
        let last = te.last().unwrap().rsplit(|b| *b == b',').next().unwrap();
        assert!(trim_ows(last).eq_ignore_ascii_case(b"chunked"));
    } else if let Some(first) = cl.first() {
        let number = |v: &[u8]| -> u64 {
            assert!(
                !v.is_empty() && v.iter().all(u8::is_ascii_digit),
                "Content-Length {v:?}"
            );
            std::str::from_utf8(v).unwrap().parse().unwrap()
        };
        let n = number(first);
        assert!(
            cl.iter().all(|v| number(v) == n),
            "differing Content-Length accepted"
        );
        let want = if n == 0 {
            BodyKind::Empty
        } else {
            BodyKind::Length(n)
        };
        assert_eq!(head.body, want);
    } else {
        assert_eq!(head.body, BodyKind::Empty);
    }

    let body = reader.body(buf).to_vec();
    assert!(
        body.len() as u64 <= limits.max_body_bytes,
        "body over the limit"
    );
    match head.body {
        BodyKind::Empty => assert!(body.is_empty() && consumed == head.len),
        BodyKind::Length(n) => assert!(body.len() as u64 == n && consumed == head.len + body.len()),
        BodyKind::Chunked => assert!(consumed + discarded > head.len),
    }
    if head.body != BodyKind::Chunked {
        assert_eq!(discarded, 0, "only chunked bodies are compacted");
    }
    Event::Request {
        head_len: head.len,
        // Bytes of the stream the request took, whatever was compacted.
        consumed: consumed + discarded,
        method,
        target,
        path,
        host,
        minor: head.minor_version,
        headers,
        kind: head.body,
        keep_alive: head.keep_alive,
        expect_continue: head.expect_continue,
        body,
    }
}

fuzz_target!(|data: &[u8]| {
    let Some(input) = common::input(data) else {
        return;
    };
    let limits = limits(input.sel);
    let [whole, split, bytewise] = common::schedules(input.bytes.len(), input.cut);
    let want = serve(input.bytes, &whole, &limits);
    assert_eq!(
        serve(input.bytes, &split, &limits),
        want,
        "split at {}",
        input.cut
    );
    assert_eq!(serve(input.bytes, &bytewise, &limits), want, "byte by byte");
});
