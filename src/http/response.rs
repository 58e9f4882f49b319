//! Responses and their serialisation into a connection's write buffer.

use std::borrow::Cow;

use crate::http::{date, reason_phrase, HttpError};

#[derive(Debug)]
pub enum Body {
    Empty,
    Static(&'static [u8]),
    Bytes(Vec<u8>),
    /// Pieces written as they arrive (chunked on HTTP/1.1), until every
    /// sender is gone. Used for SSE.
    Stream(flume::Receiver<Vec<u8>>),
}

impl Body {
    /// The bytes of a fixed body; empty for a stream.
    pub fn as_slice(&self) -> &[u8] {
        match self {
            Body::Empty | Body::Stream(_) => b"",
            Body::Static(b) => b,
            Body::Bytes(b) => b,
        }
    }
    pub fn is_stream(&self) -> bool {
        matches!(self, Body::Stream(_))
    }
}

#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(Cow<'static, str>, Cow<'static, [u8]>)>,
    pub body: Body,
    /// Close the connection after this response whatever the client asked.
    pub close: bool,
}

impl Response {
    pub fn new(status: u16) -> Self {
        Response {
            status,
            headers: Vec::new(),
            body: Body::Empty,
            close: false,
        }
    }

    /// A `text/plain` answer with a fixed body.
    pub fn text(status: u16, body: &'static str) -> Self {
        Response::new(status)
            .header("content-type", "text/plain")
            .body(Body::Static(body.as_bytes()))
    }

    /// The answer to a request refused before routing; always closes.
    pub fn error(e: HttpError) -> Self {
        let mut r = Response::text(e.status, e.reason);
        r.close = true;
        r
    }

    pub fn header(
        mut self,
        name: impl Into<Cow<'static, str>>,
        value: impl Into<HeaderValue>,
    ) -> Self {
        self.headers.push((name.into(), value.into().0));
        self
    }

    pub fn body(mut self, body: Body) -> Self {
        self.body = body;
        self
    }
}

/// Header values are bytes; strings convert for convenience.
pub struct HeaderValue(pub Cow<'static, [u8]>);

impl From<&'static str> for HeaderValue {
    fn from(s: &'static str) -> Self {
        HeaderValue(Cow::Borrowed(s.as_bytes()))
    }
}
impl From<String> for HeaderValue {
    fn from(s: String) -> Self {
        HeaderValue(Cow::Owned(s.into_bytes()))
    }
}
impl From<Vec<u8>> for HeaderValue {
    fn from(v: Vec<u8>) -> Self {
        HeaderValue(Cow::Owned(v))
    }
}

/// Appends the status line, headers and (unless `head_only`) body to `out`.
/// `keep_alive` is the connection's decision (never true for a stream to an
/// HTTP/1.0 client); HTTP/1.0 clients are told explicitly when it stays open.
pub fn serialize(
    out: &mut Vec<u8>,
    resp: &Response,
    keep_alive: bool,
    http10: bool,
    head_only: bool,
) {
    let body = resp.body.as_slice();
    out.extend_from_slice(b"HTTP/1.1 ");
    push_decimal(out, resp.status.into());
    out.push(b' ');
    out.extend_from_slice(reason_phrase(resp.status).as_bytes());
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(b"date: ");
    date::with_now(|d| out.extend_from_slice(d));
    out.extend_from_slice(b"\r\n");
    for (name, value) in &resp.headers {
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value);
        out.extend_from_slice(b"\r\n");
    }
    let bodyless = resp.status < 200 || resp.status == 204 || resp.status == 304;
    if resp.body.is_stream() {
        // HTTP/1.0 has no chunking: the stream ends with the connection.
        if !http10 {
            out.extend_from_slice(b"transfer-encoding: chunked\r\n");
        }
    } else if !bodyless {
        out.extend_from_slice(b"content-length: ");
        push_decimal(out, body.len() as u64);
        out.extend_from_slice(b"\r\n");
    }
    if !keep_alive {
        out.extend_from_slice(b"connection: close\r\n");
    } else if http10 {
        out.extend_from_slice(b"connection: keep-alive\r\n");
    }
    out.extend_from_slice(b"\r\n");
    if !head_only && !bodyless {
        out.extend_from_slice(body);
    }
}

/// The digits of `v` in `radix` (10, or 16 in lower case), written at the
/// end of `buf`: numbers on the path of every response and access line are
/// written without `fmt`.
pub fn digits(mut v: u64, radix: u64, buf: &mut [u8; 20]) -> &str {
    let mut at = buf.len();
    loop {
        at -= 1;
        buf[at] = b"0123456789abcdef"[(v % radix) as usize];
        v /= radix;
        if v == 0 {
            break;
        }
    }
    std::str::from_utf8(&buf[at..]).unwrap_or("0")
}

/// Appends the decimal digits of `v` (a status, a length).
pub fn push_decimal(out: &mut Vec<u8>, v: u64) {
    out.extend_from_slice(digits(v, 10, &mut [0; 20]).as_bytes());
}

/// Appends `v` in lower-case hexadecimal (a chunk size).
fn push_hex(out: &mut Vec<u8>, v: usize) {
    out.extend_from_slice(digits(v as u64, 16, &mut [0; 20]).as_bytes());
}

/// Appends one piece of a streamed body: a chunk, or the raw bytes on HTTP/1.0.
pub fn stream_piece(out: &mut Vec<u8>, piece: &[u8], http10: bool) {
    if http10 {
        out.extend_from_slice(piece);
    } else if !piece.is_empty() {
        push_hex(out, piece.len());
        out.extend_from_slice(b"\r\n");
        out.extend_from_slice(piece);
        out.extend_from_slice(b"\r\n");
    }
}

/// The end of a chunked body (nothing on HTTP/1.0).
pub fn stream_end(out: &mut Vec<u8>, http10: bool) {
    if !http10 {
        out.extend_from_slice(b"0\r\n\r\n");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serializes_text_response() {
        let mut out = Vec::new();
        let r = Response::text(403, "external authorization failed");
        serialize(&mut out, &r, true, false, false);
        let s = String::from_utf8(out).unwrap();
        assert!(s.starts_with("HTTP/1.1 403 Forbidden\r\ndate: "), "{s}");
        assert!(s.contains("\r\ncontent-type: text/plain\r\ncontent-length: 29\r\n\r\n"));
        assert!(s.ends_with("\r\n\r\nexternal authorization failed"));
        assert!(!s.contains("connection:"));
    }

    #[test]
    fn head_and_close() {
        let mut out = Vec::new();
        let r = Response::text(200, "hello");
        serialize(&mut out, &r, false, true, true);
        let s = String::from_utf8(out).unwrap();
        assert!(s.contains("content-length: 5\r\nconnection: close\r\n\r\n"));
        assert!(s.ends_with("\r\n\r\n"));
    }

    /// The number writers write what `fmt` writes.
    #[test]
    fn decimal_and_hex_as_fmt_writes_them() {
        for v in [0u64, 9, 10, 200, 403, 65_535, 1 << 40, u64::MAX] {
            let mut out = Vec::new();
            push_decimal(&mut out, v);
            assert_eq!(out, v.to_string().into_bytes());
        }
        for v in [0usize, 9, 10, 15, 16, 255, 4096, 0xdead_beef, usize::MAX] {
            let mut out = Vec::new();
            push_hex(&mut out, v);
            assert_eq!(out, format!("{v:x}").into_bytes());
        }
    }
}
