//! Request smuggling through the real binary: raw bytes drawn from RFC 9112
//! sections 2-7 and the known desync families (CL.TE, TE.CL, TE.TE
//! obfuscations, malformed lengths, chunk-size tricks, line-ending and
//! header-syntax tricks, limits, pipelining).
//!
//! Two routes answer differently, `/a` with "route a" and `/smuggled` with
//! "SMUGGLED". Every smuggled request in the table targets `/smuggled`, so a
//! desync would show up as that body on the wire; no row may ever produce
//! it. A row's well-formed pipelined follow-up request always targets `/a`,
//! and only rows that say so (more than one response) have one.

mod support;

use std::io::{BufReader, Read, Write};
use std::net::SocketAddr;
use std::time::Duration;

use support::*;

const CONFIG: &str = r#"
config:
  http:
    headerReadTimeout: 1s
    bodyReadTimeout: 1s
    idleTimeout: 1s
    maxHeadBytes: 2048
    maxUriBytes: 512
    maxHeaders: 16
    maxBodyBytes: 1024
binds:
- port: 0
  address: 127.0.0.1
  listeners:
  - name: smuggling
    routes:
    - name: a
      matches: [{path: {exact: /a}}]
      policies: {directResponse: {body: "route a"}}
    - name: smuggled
      matches: [{path: {pathPrefix: /smuggled}}]
      policies: {directResponse: {body: "SMUGGLED"}}
"#;

/// The request a desync would let through.
const SMUGGLE: &str = "GET /smuggled HTTP/1.1\r\nHost: t\r\n\r\n";
/// A well-formed follow-up that ends the connection.
const NEXT: &str = "GET /a HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n";

/// The connection must close right after the first response.
const CLOSE: bool = true;
/// The connection stays open after the first response.
const OPEN: bool = false;

struct Row {
    name: &'static str,
    bytes: Vec<u8>,
    /// Status of the first response.
    status: u16,
    close: bool,
    /// How many responses in all; more than one only where a well-formed
    /// request (to `/a`) legitimately follows the first.
    responses: usize,
}

fn row(
    name: &'static str,
    bytes: impl AsRef<[u8]>,
    status: u16,
    close: bool,
    responses: usize,
) -> Row {
    Row {
        name,
        bytes: bytes.as_ref().to_vec(),
        status,
        close,
        responses,
    }
}

fn cat(parts: &[&[u8]]) -> Vec<u8> {
    parts.concat()
}

/// `POST /a` with the given extra header lines (each ending in CRLF) and body.
fn post(headers: &str, body: &[u8]) -> Vec<u8> {
    cat(&[
        b"POST /a HTTP/1.1\r\nHost: t\r\n",
        headers.as_bytes(),
        b"\r\n",
        body,
    ])
}

/// `POST /a` with a chunked body given raw.
fn chunked(body: &str) -> Vec<u8> {
    post("Transfer-Encoding: chunked\r\n", body.as_bytes())
}

fn rows() -> Vec<Row> {
    let s = SMUGGLE.as_bytes();
    let n = NEXT.as_bytes();
    let slen = SMUGGLE.len();
    // A chunk carrying the smuggled request as data.
    let chunk_of_smuggle = format!("{slen:x}\r\n{SMUGGLE}\r\n0\r\n\r\n");
    vec![
        // RFC 9112 section 6.1 and 6.3: Content-Length with Transfer-Encoding.
        row("CL.TE", cat(&[&post("Content-Length: 5\r\nTransfer-Encoding: chunked\r\n", b"0\r\n\r\n"), s]), 400, CLOSE, 1),
        row("TE.CL", post("Transfer-Encoding: chunked\r\nContent-Length: 4\r\n", format!("{slen:x}\r\n{SMUGGLE}\r\n0\r\n\r\n").as_bytes()), 400, CLOSE, 1),
        row("CL.TE with CL 0", cat(&[&post("Content-Length: 0\r\nTransfer-Encoding: chunked\r\n", b""), s]), 400, CLOSE, 1),
        // TE.TE: obfuscated Transfer-Encoding that one parser might ignore.
        row("TE xchunked", cat(&[&post("Transfer-Encoding: xchunked\r\n", b"0\r\n\r\n"), s]), 400, CLOSE, 1),
        row("TE chunked with trailing vertical tab", cat(&[&post("Transfer-Encoding: chunked\x0b\r\n", b"0\r\n\r\n"), s]), 400, CLOSE, 1),
        row("TE quoted", cat(&[&post("Transfer-Encoding: \"chunked\"\r\n", b"0\r\n\r\n"), s]), 400, CLOSE, 1),
        row("TE duplicated header", cat(&[&post("Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n", b"0\r\n\r\n"), s]), 400, CLOSE, 1),
        row("TE chunked, chunked", cat(&[&post("Transfer-Encoding: chunked, chunked\r\n", b"0\r\n\r\n"), s]), 400, CLOSE, 1),
        row("TE chunked then identity header", cat(&[&post("Transfer-Encoding: chunked\r\nTransfer-Encoding: identity\r\n", b"0\r\n\r\n"), s]), 400, CLOSE, 1),
        row("TE identity", cat(&[&post("Transfer-Encoding: identity\r\n", b"0\r\n\r\n"), s]), 400, CLOSE, 1),
        row("TE empty list element", cat(&[&post("Transfer-Encoding: chunked,\r\n", b"0\r\n\r\n"), s]), 400, CLOSE, 1),
        row("TE unknown coding before chunked", cat(&[&post("Transfer-Encoding: gzip, chunked\r\n", b"0\r\n\r\n"), s]), 501, CLOSE, 1),
        row("TE split over two headers, unknown first", cat(&[&post("Transfer-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n", b"0\r\n\r\n"), s]), 501, CLOSE, 1),
        row("TE obs-fold", cat(&[&post("Transfer-Encoding:\r\n chunked\r\n", b"0\r\n\r\n"), s]), 400, CLOSE, 1),
        row("TE space before colon", cat(&[&post("Transfer-Encoding : chunked\r\n", b"0\r\n\r\n"), s]), 400, CLOSE, 1),
        row("TE in HTTP/1.0", cat(&[b"POST /a HTTP/1.0\r\nTransfer-Encoding: chunked\r\nConnection: keep-alive\r\n\r\n0\r\n\r\n", s]), 400, CLOSE, 1),
        // Obfuscations RFC 9110 allows: optional whitespace, any case.
        row("TE leading space and tab (legal OWS)", cat(&[&post("Transfer-Encoding: \t chunked \r\n", b"5\r\nhello\r\n0\r\n\r\n"), n]), 200, OPEN, 2),
        row("TE mixed case (legal)", cat(&[&post("transfer-ENCODING: ChUnKeD\r\n", b"5\r\nhello\r\n0\r\n\r\n"), n]), 200, OPEN, 2),
        // Content-Length variants (RFC 9110 section 8.6).
        row("CL two different values", cat(&[&post("Content-Length: 5\r\nContent-Length: 40\r\n", b"hello"), s]), 400, CLOSE, 1),
        row("CL two values, different case", cat(&[&post("content-length: 0\r\nContent-Length: 34\r\n", b""), s]), 400, CLOSE, 1),
        row("CL list", cat(&[&post("Content-Length: 5, 5\r\n", b"hello"), s]), 400, CLOSE, 1),
        row("CL negative", cat(&[&post("Content-Length: -5\r\n", b"hello"), s]), 400, CLOSE, 1),
        row("CL plus sign", cat(&[&post("Content-Length: +5\r\n", b"hello"), s]), 400, CLOSE, 1),
        row("CL hex", cat(&[&post("Content-Length: 0x5\r\n", b"hello"), s]), 400, CLOSE, 1),
        row("CL empty", cat(&[&post("Content-Length: \r\n", b""), s]), 400, CLOSE, 1),
        row("CL space inside", cat(&[&post("Content-Length: 1 0\r\n", b"hello"), s]), 400, CLOSE, 1),
        row("CL 20 digits", cat(&[&post("Content-Length: 18446744073709551621\r\n", b"hello"), s]), 400, CLOSE, 1),
        row("CL over maxBodyBytes", cat(&[&post("Content-Length: 1025\r\n", b"hello"), s]), 413, CLOSE, 1),
        row("CL 19 digits", cat(&[&post("Content-Length: 9999999999999999999\r\n", b"hello"), s]), 413, CLOSE, 1),
        row("CL duplicated, same value (allowed)", cat(&[&post("Content-Length: 5\r\nContent-Length: 5\r\n", b"hello"), n]), 200, OPEN, 2),
        row("CL leading zeros (1*DIGIT)", cat(&[&post("Content-Length: 0005\r\n", b"hello"), n]), 200, OPEN, 2),
        row("CL longer than the bytes sent", post(&format!("Content-Length: {}\r\n", slen + 10), s), 408, CLOSE, 1),
        row("GET with a body carrying a request", cat(&[format!("GET /a HTTP/1.1\r\nHost: t\r\nContent-Length: {slen}\r\n\r\n").as_bytes(), s]), 200, OPEN, 1),
        row("POST body carrying a request, then a real one", cat(&[&post(&format!("Content-Length: {slen}\r\n"), s), n]), 200, OPEN, 2),
        row("chunk carrying a request, then a real one", cat(&[&chunked(&chunk_of_smuggle), n]), 200, OPEN, 2),
        // Chunk-size tricks (RFC 9112 section 7.1).
        row("chunk size 0x", cat(&[&chunked("0x5\r\nhello\r\n0\r\n\r\n"), s]), 400, CLOSE, 1),
        row("chunk size negative", cat(&[&chunked("-5\r\nhello\r\n0\r\n\r\n"), s]), 400, CLOSE, 1),
        row("chunk size plus", cat(&[&chunked("+5\r\nhello\r\n0\r\n\r\n"), s]), 400, CLOSE, 1),
        row("chunk size leading space", cat(&[&chunked(" 5\r\nhello\r\n0\r\n\r\n"), s]), 400, CLOSE, 1),
        row("chunk size trailing space", cat(&[&chunked("5 \r\nhello\r\n0\r\n\r\n"), s]), 400, CLOSE, 1),
        row("chunk size overflowing u64", cat(&[&chunked("10000000000000005\r\nhello\r\n0\r\n\r\n"), s]), 400, CLOSE, 1),
        row("chunk size over maxBodyBytes", cat(&[&chunked("ffffffffffffffff\r\nhello\r\n0\r\n\r\n"), s]), 413, CLOSE, 1),
        row("chunk size with leading zeros (legal)", cat(&[&chunked("0005\r\nhello\r\n0000\r\n\r\n"), n]), 200, OPEN, 2),
        row("chunk extension with bare LF", cat(&[&chunked("5;a\nhello\r\n0\r\n\r\n"), s]), 400, CLOSE, 1),
        row("chunk extension with bare CR", cat(&[&chunked("5;a\rX\r\nhello\r\n0\r\n\r\n"), s]), 400, CLOSE, 1),
        row("chunk extension quoted CRLF", cat(&[&chunked("5;a=\"x\r\ny\"\r\nhello\r\n0\r\n\r\n"), s]), 400, CLOSE, 1),
        row("chunk extension too long", cat(&[&chunked(&format!("5;{}\r\nhello\r\n0\r\n\r\n", "e".repeat(300))), s]), 400, CLOSE, 1),
        row("chunk extension (legal)", cat(&[&chunked("5 ; name=\"v;\\\"\" ;x=y\r\nhello\r\n0;last\r\n\r\n"), n]), 200, OPEN, 2),
        row("chunk data longer than its size", cat(&[&chunked(&format!("3\r\nabc{SMUGGLE}\r\n0\r\n\r\n")), n]), 400, CLOSE, 1),
        row("chunk data missing its CRLF", cat(&[&chunked("5\r\nhello0\r\n\r\n"), s]), 400, CLOSE, 1),
        row("chunked with LF-only lines", cat(&[&chunked("5\nhello\n0\n\n"), s]), 400, CLOSE, 1),
        row("last chunk then a request as trailer", cat(&[&chunked("0\r\n"), s]), 400, CLOSE, 1),
        row("trailer with Content-Length (ignored)", cat(&[&chunked("5\r\nhello\r\n0\r\nContent-Length: 34\r\n\r\n"), n]), 200, OPEN, 2),
        row("trailer with obs-fold", cat(&[&chunked("0\r\nX: a\r\n b\r\n\r\n"), s]), 400, CLOSE, 1),
        row("chunked body over maxBodyBytes", cat(&[&chunked(&format!("400\r\n{}\r\n1\r\nx\r\n0\r\n\r\n", "x".repeat(1024))), s]), 413, CLOSE, 1),
        row("chunked body never ends", chunked("5\r\nhello\r\n"), 408, CLOSE, 1),
        // Line endings (RFC 9112 section 2.2).
        row("bare LF ending the request line", cat(&[b"GET /a HTTP/1.1\nHost: t\r\n\r\n", s]), 400, CLOSE, 1),
        row("bare LF ending a header", cat(&[b"GET /a HTTP/1.1\r\nHost: t\nX: y\r\n\r\n", s]), 400, CLOSE, 1),
        row("bare LF ending the head", cat(&[b"GET /a HTTP/1.1\r\nHost: t\r\n\n", s]), 400, CLOSE, 1),
        row("bare CR inside a header", b"GET /a HTTP/1.1\r\nHost: t\r\nX: a\rGET /smuggled HTTP/1.1\r\n\r\n", 400, CLOSE, 1),
        row("bare CR in the request line", cat(&[b"GET /a\rHTTP/1.1\r\nHost: t\r\n\r\n", s]), 400, CLOSE, 1),
        row("empty lines before the request line (legal)", cat(&[b"\r\n\r\nGET /a HTTP/1.1\r\nHost: t\r\n\r\n", n]), 200, OPEN, 2),
        // Header syntax (RFC 9112 section 5).
        row("obs-fold", cat(&[b"GET /a HTTP/1.1\r\nHost: t\r\nX: a\r\n  b\r\n\r\n", s]), 400, CLOSE, 1),
        row("whitespace before the first header", cat(&[b"GET /a HTTP/1.1\r\n Host: t\r\n\r\n", s]), 400, CLOSE, 1),
        row("NUL in a header name", cat(&[b"GET /a HTTP/1.1\r\nHost: t\r\nX\0Y: z\r\n\r\n", s]), 400, CLOSE, 1),
        row("NUL in a header value", cat(&[b"GET /a HTTP/1.1\r\nHost: t\r\nX: a\0b\r\n\r\n", s]), 400, CLOSE, 1),
        row("NUL in the target", cat(&[b"GET /a\0 HTTP/1.1\r\nHost: t\r\n\r\n", s]), 400, CLOSE, 1),
        row("non-ASCII in the target", cat(&[b"GET /a\xff HTTP/1.1\r\nHost: t\r\n\r\n", s]), 400, CLOSE, 1),
        row("space in a header name", cat(&[b"GET /a HTTP/1.1\r\nHost: t\r\nX Y: z\r\n\r\n", s]), 400, CLOSE, 1),
        row("empty header name", cat(&[b"GET /a HTTP/1.1\r\nHost: t\r\n: z\r\n\r\n", s]), 400, CLOSE, 1),
        row("header line without a colon", b"GET /a HTTP/1.1\r\nHost: t\r\nGET /smuggled HTTP/1.1\r\n\r\n", 400, CLOSE, 1),
        row("two spaces in the request line", cat(&[b"GET  /a HTTP/1.1\r\nHost: t\r\n\r\n", s]), 400, CLOSE, 1),
        // Host (RFC 9112 section 3.2).
        row("missing Host", cat(&[b"GET /a HTTP/1.1\r\n\r\n", s]), 400, CLOSE, 1),
        row("duplicate Host", cat(&[b"GET /a HTTP/1.1\r\nHost: t\r\nHost: u\r\n\r\n", s]), 400, CLOSE, 1),
        row("Host with a path", cat(&[b"GET /a HTTP/1.1\r\nHost: t/smuggled\r\n\r\n", s]), 400, CLOSE, 1),
        row("absolute-form with a mismatched Host", cat(&[b"GET http://other.example/a HTTP/1.1\r\nHost: t\r\n\r\n", n]), 200, OPEN, 2),
        row("absolute-form with an empty path", cat(&[b"GET http://t HTTP/1.1\r\nHost: t\r\n\r\n", n]), 404, OPEN, 2),
        row("absolute-form with userinfo", cat(&[b"GET http://u@t/a HTTP/1.1\r\nHost: t\r\n\r\n", s]), 400, CLOSE, 1),
        row("authority-form (CONNECT)", cat(&[b"CONNECT t:443 HTTP/1.1\r\nHost: t:443\r\n\r\n", s]), 501, CLOSE, 1),
        // Limits.
        row("target over maxUriBytes", cat(&[format!("GET /a?{} HTTP/1.1\r\nHost: t\r\n\r\n", "q".repeat(600)).as_bytes(), s]), 414, CLOSE, 1),
        row("head over maxHeadBytes", cat(&[format!("GET /a HTTP/1.1\r\nHost: t\r\nX: {}\r\n\r\n", "v".repeat(2100)).as_bytes(), s]), 431, CLOSE, 1),
        row("more than maxHeaders", cat(&[format!("GET /a HTTP/1.1\r\nHost: t\r\n{}\r\n", "X: y\r\n".repeat(16)).as_bytes(), s]), 431, CLOSE, 1),
        row("head never ends", b"GET /a HTTP/1.1\r\nHost: t\r\n", 408, CLOSE, 1),
        // Versions and other protocols.
        row("HTTP/0.9 request line", cat(&[b"GET /smuggled\r\n\r\n", s]), 400, CLOSE, 1),
        row("HTTP/2 preface", cat(&[b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", s]), 505, CLOSE, 1),
        row("HTTP/1.2", cat(&[b"GET /a HTTP/1.2\r\nHost: t\r\n\r\n", s]), 505, CLOSE, 1),
        // HTTP-name is case-sensitive; httparse calls it a version error.
        row("lowercase version", cat(&[b"GET /a http/1.1\r\nHost: t\r\n\r\n", s]), 505, CLOSE, 1),
        // Pipelining (RFC 9112 section 9.3).
        row("rejected request, then a pipelined one", cat(&[b"GET /a HTTP/1.1\r\nHost: t\r\nHost: u\r\n\r\n", n]), 400, CLOSE, 1),
        row("Connection: close, then a pipelined request", cat(&[b"GET /a HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n", s]), 200, CLOSE, 1),
        row("HTTP/1.0 without keep-alive, then a pipelined request", cat(&[b"GET /a HTTP/1.0\r\n\r\n", s]), 200, CLOSE, 1),
        row("unsupported Expect, then a pipelined request", cat(&[b"GET /a HTTP/1.1\r\nHost: t\r\nExpect: 200-ok\r\n\r\n", s]), 417, CLOSE, 1),
    ]
}

/// What one connection gave back.
struct Outcome {
    resps: Vec<Resp>,
    raw: Vec<u8>,
    /// ringgate closed the connection (rather than the read timing out).
    closed: bool,
}

/// Sends `bytes` in pieces ending at `cuts` (then the rest), pausing between
/// pieces so that they arrive in separate reads, and reads until ringgate
/// closes. The write side stays open, so only ringgate decides the end.
fn send(addr: SocketAddr, bytes: &[u8], cuts: &[usize]) -> Outcome {
    let mut s = connect(addr);
    let mut from = 0;
    for &cut in cuts.iter().chain([&bytes.len()]) {
        if cut > from {
            // A refusal may close the connection before the rest is sent.
            if s.write_all(&bytes[from..cut]).is_err() {
                break;
            }
            from = cut;
            std::thread::sleep(Duration::from_millis(5));
        }
    }
    let mut raw = Vec::new();
    let closed = match s.read_to_end(&mut raw) {
        Ok(_) => true,
        Err(e) => e.kind() == std::io::ErrorKind::ConnectionReset,
    };
    let mut r = BufReader::new(&raw[..]);
    let resps = std::iter::from_fn(|| read_response(&mut r)).collect();
    Outcome { resps, raw, closed }
}

/// Every way `row` can be wrong, as messages.
fn check(row: &Row, how: &str, out: &Outcome) -> Vec<String> {
    let mut errs = Vec::new();
    let mut fail = |msg: String| errs.push(format!("{} ({how}): {msg}", row.name));
    if out.raw.windows(8).any(|w| w == b"SMUGGLED") {
        fail("a smuggled request was answered".into());
    }
    if !out.closed {
        fail("ringgate never closed the connection".into());
    }
    let statuses: Vec<u16> = out.resps.iter().map(|r| r.status).collect();
    if out.resps.len() != row.responses {
        fail(format!(
            "{} responses {statuses:?}, want {}",
            out.resps.len(),
            row.responses
        ));
    }
    let Some(first) = out.resps.first() else {
        fail(format!(
            "no response; raw {:?}",
            String::from_utf8_lossy(&out.raw)
        ));
        return errs;
    };
    if first.status != row.status {
        fail(format!(
            "status {} ({:?}), want {}",
            first.status,
            first.text(),
            row.status
        ));
    }
    let says_close = first.header("connection") == Some("close");
    if says_close != row.close {
        fail(format!(
            "first response Connection: close is {says_close}, want {}",
            row.close
        ));
    }
    // Every later response answers a well-formed request to /a.
    for r in &out.resps[1..] {
        if r.status != 200 || r.text() != "route a" {
            fail(format!("follow-up answered {} {:?}", r.status, r.text()));
        }
    }
    errs
}

#[test]
fn no_smuggled_request_is_ever_answered() {
    let mut p = Proxy::start(CONFIG, &["--threads", "1"]);
    let addr = p.addr();
    let rows = rows();
    assert!(rows.len() >= 40);
    // Each row whole and split in two reads at a third and at two thirds;
    // all connections at once, since timeouts bound the slow rows.
    let errs: Vec<String> = std::thread::scope(|scope| {
        let handles: Vec<_> = rows
            .iter()
            .flat_map(|row| {
                let len = row.bytes.len();
                [
                    ("whole", 0),
                    ("split at 1/3", len / 3),
                    ("split at 2/3", 2 * len / 3),
                ]
                .map(|(how, cut)| {
                    scope.spawn(move || check(row, how, &send(addr, &row.bytes, &[cut])))
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().expect("row thread"))
            .collect()
    });
    assert!(
        errs.is_empty(),
        "{} failures:\n{}",
        errs.len(),
        errs.join("\n")
    );
    assert!(p.is_running(), "ringgate exited");
}
