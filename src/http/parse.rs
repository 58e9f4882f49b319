//! Request heads: find the end of the head, parse it with httparse, and apply
//! the RFC 9112 framing rules httparse alone does not enforce.
//!
//! The parser is sans-I/O and incremental: [`HeadParser::poll`] is called with
//! the whole buffered input after every read and remembers how far it scanned,
//! so a client dribbling a head byte by byte costs linear, not quadratic, work.
//! Headers are kept as offsets into the connection's buffer, not copies.

use std::ops::Range;

use crate::http::chunked::{is_tchar, ChunkedDecoder};
use crate::http::limits::{Limits, MAX_HEADERS_CAP};
use crate::http::HttpError;

/// How the request body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum BodyKind {
    #[default]
    Empty,
    Length(u64),
    Chunked,
}

/// A parsed request head; ranges index the buffer passed to [`HeadParser::poll`].
#[derive(Debug, Clone, Default)]
pub struct Head {
    /// Bytes from the start of the buffer to the end of the head's final CRLF,
    /// including any empty lines skipped before the request line.
    pub len: usize,
    pub method: Range<usize>,
    /// The request target as received.
    pub target: Range<usize>,
    /// Path and query (the target itself for origin-form; the part after the
    /// authority for absolute-form).
    pub path: Range<usize>,
    /// 0 for HTTP/1.0, 1 for HTTP/1.1.
    pub minor_version: u8,
    pub headers: Vec<(Range<usize>, Range<usize>)>,
    /// The authority of an absolute-form target, else the Host header.
    pub host: Option<Range<usize>>,
    pub body: BodyKind,
    pub keep_alive: bool,
    pub expect_continue: bool,
}

impl Head {
    pub fn header<'b>(&self, buf: &'b [u8], name: &str) -> Option<&'b [u8]> {
        self.headers
            .iter()
            .find(|(n, _)| buf[n.clone()].eq_ignore_ascii_case(name.as_bytes()))
            .map(|(_, v)| &buf[v.clone()])
    }
}

/// Incremental head scanner for one request; `reset` between requests.
#[derive(Debug, Default)]
pub struct HeadParser {
    /// Where the request line starts (after skipped empty lines).
    start: usize,
    /// How far the buffer was scanned for line ends.
    scanned: usize,
    /// End of the request line, once seen.
    first_line_end: Option<usize>,
}

impl HeadParser {
    pub fn reset(&mut self) {
        *self = HeadParser::default();
    }

    /// True once any byte of a request (not only skipped empty lines) arrived.
    pub fn started(&self, buf: &[u8]) -> bool {
        buf.len() > self.start
    }

    /// Looks for a complete head in `buf`. `Ok(false)`: need more bytes.
    /// `Ok(true)`: `head` is filled in. `Err`: answer with that status and close.
    pub fn poll(
        &mut self,
        buf: &[u8],
        limits: &Limits,
        head: &mut Head,
    ) -> Result<bool, HttpError> {
        // RFC 9112 section 2.2: ignore empty lines before the request line.
        while self.scanned == self.start {
            match &buf[self.start..] {
                [b'\r', b'\n', ..] => {
                    self.start += 2;
                    self.scanned = self.start;
                    // Bounded like the head itself, so CRLF floods are cut too.
                    if self.start > limits.max_head_bytes {
                        return Err(HttpError::HEAD_TOO_LARGE);
                    }
                }
                [] | [b'\r'] => return Ok(false),
                [b'\n', ..] | [b'\r', ..] => return Err(HttpError::BAD_LINE_ENDING),
                _ => break,
            }
        }
        let end = match self.scan(buf, limits)? {
            Some(end) => end,
            None => {
                self.check_pending(buf.len(), limits)?;
                return Ok(false);
            }
        };
        if end - self.start > limits.max_head_bytes {
            return Err(HttpError::HEAD_TOO_LARGE);
        }
        parse_complete(buf, self.start, end, limits, head)?;
        Ok(true)
    }

    /// Refuses a head that grew too long before `end` without being complete:
    /// a request line longer than any allowed target needs, or a header
    /// section over the limit.
    fn check_pending(&self, end: usize, limits: &Limits) -> Result<(), HttpError> {
        let pending = end - self.start;
        let max_uri = limits.max_uri_bytes.min(limits.max_head_bytes);
        match self.first_line_end {
            // Still in the request line: its target is what grows.
            None if pending > max_uri + MAX_REQUEST_LINE_OVERHEAD => Err(HttpError::URI_TOO_LONG),
            Some(_) if pending > limits.max_head_bytes => Err(HttpError::HEAD_TOO_LARGE),
            _ => Ok(()),
        }
    }

    /// Scans new bytes for line ends; returns the end of the head (just past
    /// the empty line's LF) once found. Every LF must follow a CR.
    fn scan(&mut self, buf: &[u8], limits: &Limits) -> Result<Option<usize>, HttpError> {
        let mut from = self.scanned;
        while let Some(i) = memchr::memchr(b'\n', &buf[from..]) {
            let lf = from + i;
            // A read that ended just before this LF would have been refused
            // by `check_pending`; so must the bytes with it, before anything
            // else is judged, or the answer would depend on how reads split.
            self.check_pending(lf, limits)?;
            if lf == 0 || buf[lf - 1] != b'\r' {
                return Err(HttpError::BAD_LINE_ENDING);
            }
            if self.first_line_end.is_none() {
                self.first_line_end = Some(lf + 1);
                if target_len(&buf[self.start..lf])
                    > limits.max_uri_bytes.min(limits.max_head_bytes)
                {
                    return Err(HttpError::URI_TOO_LONG);
                }
            } else if lf >= self.start + 3 && buf[lf - 3..lf - 1] == *b"\r\n" {
                self.scanned = lf + 1;
                return Ok(Some(lf + 1));
            }
            from = lf + 1;
        }
        self.scanned = buf.len();
        Ok(None)
    }
}

/// Room for the method, spaces and version around a maximal target.
const MAX_REQUEST_LINE_OVERHEAD: usize = 64;

/// Length of the target in a request line (between its first and last space).
fn target_len(line: &[u8]) -> usize {
    let first = line.iter().position(|b| *b == b' ');
    let last = line.iter().rposition(|b| *b == b' ');
    match (first, last) {
        (Some(f), Some(l)) if l > f => l - f - 1,
        _ => 0,
    }
}

fn parse_complete(
    buf: &[u8],
    start: usize,
    end: usize,
    limits: &Limits,
    head: &mut Head,
) -> Result<(), HttpError> {
    // Uninitialised slots: filling 256 empty headers (8 KiB) per request cost
    // more than parsing a typical head (load bench, micro `head/get_230B`).
    let mut slots = [std::mem::MaybeUninit::<httparse::Header<'_>>::uninit(); MAX_HEADERS_CAP];
    let slots = &mut slots[..limits.max_headers.min(MAX_HEADERS_CAP)];
    let mut req = httparse::Request::new(&mut []);
    match req.parse_with_uninit_headers(&buf[start..end], slots) {
        Ok(httparse::Status::Complete(n)) if n == end - start => {}
        Ok(_) => return Err(HttpError::BAD_REQUEST),
        Err(httparse::Error::Version) => return Err(HttpError::VERSION_NOT_SUPPORTED),
        Err(httparse::Error::TooManyHeaders) => return Err(HttpError::TOO_MANY_HEADERS),
        Err(_) => return Err(HttpError::BAD_REQUEST),
    }
    let base = buf.as_ptr() as usize;
    let range = |s: &[u8]| {
        let off = s.as_ptr() as usize - base;
        off..off + s.len()
    };
    let method = req.method.ok_or(HttpError::BAD_REQUEST)?;
    let target = req.path.ok_or(HttpError::BAD_REQUEST)?;
    head.len = end;
    head.method = range(method.as_bytes());
    head.target = range(target.as_bytes());
    head.minor_version = req.version.ok_or(HttpError::BAD_REQUEST)?;
    head.headers.clear();
    for h in req.headers.iter() {
        head.headers
            .push((range(h.name.as_bytes()), range(h.value)));
    }
    if target.len() > limits.max_uri_bytes {
        return Err(HttpError::URI_TOO_LONG);
    }
    if !target.bytes().all(|b| (0x21..=0x7e).contains(&b)) {
        return Err(HttpError::BAD_REQUEST);
    }
    let (path, authority) = split_target(method, target)?;
    head.path = match path {
        Some(path) => range(path.as_bytes()),
        // An absolute-form target with an empty path means "/", a byte the
        // target lacks: point at the "/" of the version after it instead
        // (httparse allows exactly one space before "HTTP/1.x").
        None => {
            let slash = head.target.end + " HTTP".len();
            if buf.get(slash) != Some(&b'/') {
                return Err(HttpError::BAD_REQUEST);
            }
            slash..slash + 1
        }
    };
    head.host = authority.map(|a| range(a.as_bytes()));
    framing(buf, head)
}

/// Returns (path-and-query, authority of an absolute-form target). The path
/// is a slice of `target`, or `None` for an absolute-form target whose path
/// is empty, which means "/".
fn split_target<'a>(
    method: &str,
    target: &'a str,
) -> Result<(Option<&'a str>, Option<&'a str>), HttpError> {
    if method == "CONNECT" {
        return Err(HttpError::NOT_IMPLEMENTED);
    }
    if target.starts_with('/') {
        return Ok((Some(target), None));
    }
    if target == "*" {
        return if method == "OPTIONS" {
            Ok((Some(target), None))
        } else {
            Err(HttpError::BAD_REQUEST)
        };
    }
    let lower = target.get(..8).unwrap_or(target).to_ascii_lowercase();
    let rest = if lower.starts_with("http://") {
        &target[7..]
    } else if lower.starts_with("https://") {
        &target[8..]
    } else {
        return Err(HttpError::BAD_REQUEST);
    };
    let split = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, path) = rest.split_at(split);
    if authority.is_empty() || authority.contains('@') || !valid_host(authority.as_bytes()) {
        return Err(HttpError::BAD_HOST);
    }
    // An empty path means "/"; a path starting with '?' is refused, since
    // the route needs a path.
    if path.is_empty() {
        return Ok((None, Some(authority)));
    }
    if !path.starts_with('/') {
        return Err(HttpError::BAD_REQUEST);
    }
    Ok((Some(path), Some(authority)))
}

fn framing(buf: &[u8], head: &mut Head) -> Result<(), HttpError> {
    let mut content_length: Option<u64> = None;
    let mut codings = 0usize;
    let mut chunked_last = false;
    let mut chunked_count = 0usize;
    let mut unknown_coding = false;
    let mut hosts = 0usize;
    let mut host_value = None;
    let mut close = false;
    let mut keep_alive = false;
    head.expect_continue = false;
    for (n, v) in &head.headers {
        let name = &buf[n.clone()];
        let value = trim_ows(&buf[v.clone()]);
        if name.eq_ignore_ascii_case(b"content-length") {
            let n = parse_content_length(value)?;
            if content_length.is_some_and(|prev| prev != n) {
                return Err(HttpError::CONFLICTING_LENGTH);
            }
            content_length = Some(n);
        } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
            for coding in value.split(|b| *b == b',') {
                let coding = trim_ows(coding);
                if coding.is_empty() || !coding.iter().all(|b| is_tchar(*b)) {
                    return Err(HttpError::BAD_TRANSFER_ENCODING);
                }
                codings += 1;
                chunked_last = coding.eq_ignore_ascii_case(b"chunked");
                if chunked_last {
                    chunked_count += 1;
                } else {
                    unknown_coding = true;
                }
            }
        } else if name.eq_ignore_ascii_case(b"host") {
            hosts += 1;
            host_value = Some(v.clone());
        } else if name.eq_ignore_ascii_case(b"connection") {
            for token in value.split(|b| *b == b',') {
                let token = trim_ows(token);
                close |= token.eq_ignore_ascii_case(b"close");
                keep_alive |= token.eq_ignore_ascii_case(b"keep-alive");
            }
        } else if name.eq_ignore_ascii_case(b"expect") {
            if value.eq_ignore_ascii_case(b"100-continue") {
                head.expect_continue = true;
            } else {
                return Err(HttpError::EXPECTATION_FAILED);
            }
        }
    }
    match hosts {
        0 if head.minor_version == 1 => return Err(HttpError::MISSING_HOST),
        0 => {}
        1 => {
            let v = host_value.expect("one host");
            let value = trim_ows(&buf[v.clone()]);
            if !value.is_empty() && !valid_host(value) {
                return Err(HttpError::BAD_HOST);
            }
            if head.host.is_none() {
                // Trimmed: the range must not include optional whitespace.
                let lead = buf[v.clone()].len() - trim_start(&buf[v.clone()]).len();
                head.host = Some(v.start + lead..v.start + lead + value.len());
            }
        }
        _ => return Err(HttpError::DUPLICATE_HOST),
    }
    head.body = if codings > 0 {
        if head.minor_version == 0 {
            return Err(HttpError::TE_IN_HTTP10);
        }
        if content_length.is_some() {
            return Err(HttpError::TE_AND_LENGTH);
        }
        if !chunked_last {
            return Err(HttpError::BAD_TRANSFER_ENCODING);
        }
        if unknown_coding {
            return Err(HttpError::UNSUPPORTED_TRANSFER_CODING);
        }
        if chunked_count > 1 {
            return Err(HttpError::BAD_TRANSFER_ENCODING);
        }
        BodyKind::Chunked
    } else {
        match content_length {
            Some(0) | None => BodyKind::Empty,
            Some(n) => BodyKind::Length(n),
        }
    };
    head.keep_alive = !close && (head.minor_version == 1 || keep_alive);
    Ok(())
}

/// One whole request as the connection loop frames it: the head, then the
/// body by `Content-Length` or through a [`ChunkedDecoder`]. Sans-I/O: the
/// connection loop (`conn.rs`) drives exactly this code with a socket, and the
/// fuzz targets and tests drive it without one.
///
/// [`RequestReader::poll`] is called with the bytes of the request received
/// so far (from its first byte, growing between calls) and resumes where it
/// stopped, so feeding a request in pieces costs no more than feeding it
/// whole, and gives the same answer. Between calls, [`compact`](Self::compact)
/// may drop the raw chunked-body bytes already decoded from the buffer.
#[derive(Debug, Default)]
pub struct RequestReader {
    parser: HeadParser,
    head: Head,
    head_done: bool,
    chunked: Option<ChunkedDecoder>,
    /// Raw chunked-body bytes the decoder has consumed and are still in the
    /// buffer (after the head).
    chunked_used: usize,
    /// Raw chunked-body bytes `compact` removed from the buffer.
    discarded: usize,
    /// The decoded payload of a chunked body.
    payload: Vec<u8>,
    consumed: Option<usize>,
}

impl RequestReader {
    /// Ready for the next request; keeps allocations.
    pub fn reset(&mut self) {
        self.parser.reset();
        self.head_done = false;
        self.chunked = None;
        self.chunked_used = 0;
        self.discarded = 0;
        self.payload.clear();
        self.consumed = None;
    }

    /// True once any byte of a request (not only empty lines) arrived.
    pub fn started(&self, buf: &[u8]) -> bool {
        self.head_done || self.parser.started(buf)
    }

    /// `Ok(None)`: need more bytes. `Ok(Some(n))`: the request is complete
    /// and is the first `n` bytes of `buf` (a pipelined next request starts
    /// at `n`). `Err`: answer with that status and close.
    pub fn poll(&mut self, buf: &[u8], limits: &Limits) -> Result<Option<usize>, HttpError> {
        if let Some(n) = self.consumed {
            return Ok(Some(n));
        }
        if !self.poll_head(buf, limits)? {
            return Ok(None);
        }
        let consumed = match self.head.body {
            BodyKind::Empty => self.head.len,
            BodyKind::Length(n) if n > limits.max_body_bytes => {
                return Err(HttpError::BODY_TOO_LARGE)
            }
            BodyKind::Length(n) => {
                let end = self.head.len + n as usize;
                if buf.len() < end {
                    return Ok(None);
                }
                end
            }
            BodyKind::Chunked => {
                let dec = self.chunked.get_or_insert_with(|| {
                    ChunkedDecoder::new(limits.max_body_bytes, limits.max_head_bytes)
                });
                let from = self.head.len + self.chunked_used;
                self.chunked_used += dec.decode(&buf[from..], &mut self.payload)?;
                if !dec.is_done() {
                    return Ok(None);
                }
                self.head.len + self.chunked_used
            }
        };
        self.consumed = Some(consumed);
        Ok(Some(consumed))
    }

    /// Reads only as far as the end of the head: `Ok(true)` once it is
    /// parsed (see [`head`](Self::head)). The connection stops here to run
    /// the policies before any body byte is read; [`poll`](Self::poll) then
    /// goes on from the same state, the body's size limit included.
    pub fn poll_head(&mut self, buf: &[u8], limits: &Limits) -> Result<bool, HttpError> {
        if !self.head_done {
            if !self.parser.poll(buf, limits, &mut self.head)? {
                return Ok(false);
            }
            self.head_done = true;
        }
        Ok(true)
    }

    /// Gives back a large decoded-body buffer after a request, so one big
    /// chunked upload does not pin its memory for the connection's life.
    pub fn shrink(&mut self, keep: usize) {
        if self.payload.capacity() > keep {
            self.payload = Vec::new();
        }
    }

    /// Removes the raw chunked-body bytes already decoded from `buf` (which
    /// must be the buffer given to the last [`poll`](Self::poll)), so a long
    /// chunked body is held once, decoded, rather than also raw. The head
    /// stays where it is. Does nothing before the body or once complete.
    pub fn compact(&mut self, buf: &mut Vec<u8>) {
        if self.consumed.is_none() && self.chunked_used > 0 {
            buf.drain(self.head.len..self.head.len + self.chunked_used);
            self.discarded += self.chunked_used;
            self.chunked_used = 0;
        }
    }

    /// Bytes [`compact`](Self::compact) removed from the buffer: the request
    /// took `n + discarded()` bytes of the stream when `poll` returned `n`.
    pub fn discarded(&self) -> usize {
        self.discarded
    }

    /// The parsed head, once [`poll`](Self::poll) got past it.
    pub fn head(&self) -> Option<&Head> {
        self.head_done.then_some(&self.head)
    }

    /// Whether the head is complete and the body is still being read.
    pub fn in_body(&self) -> bool {
        self.head_done && self.consumed.is_none()
    }

    /// The body of a complete request; `buf` is the buffer given to `poll`.
    pub fn body<'b>(&'b self, buf: &'b [u8]) -> &'b [u8] {
        match (self.consumed, self.head.body) {
            (Some(end), BodyKind::Length(_)) => &buf[self.head.len..end],
            (Some(_), BodyKind::Chunked) => &self.payload,
            _ => &[],
        }
    }
}

/// `1*DIGIT`, no sign, no list, no overflow.
fn parse_content_length(v: &[u8]) -> Result<u64, HttpError> {
    if v.is_empty() || v.len() > 19 || !v.iter().all(u8::is_ascii_digit) {
        return Err(HttpError::BAD_CONTENT_LENGTH);
    }
    Ok(v.iter().fold(0u64, |n, d| n * 10 + u64::from(d - b'0')))
}

/// `uri-host [ ":" port ]`: a reg-name, an IPv4 address, or an IP-literal.
pub fn valid_host(h: &[u8]) -> bool {
    let (host, port) = if h.first() == Some(&b'[') {
        let Some(close) = h.iter().position(|b| *b == b']') else {
            return false;
        };
        let inside = &h[1..close];
        if inside.is_empty()
            || !inside
                .iter()
                .all(|b| b.is_ascii_hexdigit() || matches!(b, b':' | b'.'))
        {
            return false;
        }
        match &h[close + 1..] {
            [] => (&h[..0], None),
            [b':', port @ ..] => (&h[..0], Some(port)),
            _ => return false,
        }
    } else {
        match h.iter().position(|b| *b == b':') {
            Some(i) => (&h[..i], Some(&h[i + 1..])),
            None => (h, None),
        }
    };
    let host_ok = host
        .iter()
        .all(|b| b.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=%".contains(b));
    let port_ok = port.is_none_or(|p| p.len() <= 5 && p.iter().all(u8::is_ascii_digit));
    host_ok && port_ok
}

fn trim_start(v: &[u8]) -> &[u8] {
    let n = v.iter().take_while(|b| **b == b' ' || **b == b'\t').count();
    &v[n..]
}

pub fn trim_ows(v: &[u8]) -> &[u8] {
    let v = trim_start(v);
    let n = v
        .iter()
        .rev()
        .take_while(|b| **b == b' ' || **b == b'\t')
        .count();
    &v[..v.len() - n]
}

#[cfg(test)]
#[path = "parse_tests.rs"]
mod tests;
