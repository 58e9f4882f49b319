//! HTTP/1.1 on the wire: head parsing with strict framing, chunked bodies,
//! and response serialisation. Everything here is sans-I/O; `conn.rs` drives it.

pub mod chunked;
pub mod date;
pub mod limits;
pub mod parse;
pub mod response;

/// A request the connection refuses before any route sees it. Always answered
/// with `text/plain` and the reason, and the connection is closed afterwards:
/// after a framing error nothing later on the connection can be trusted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HttpError {
    pub status: u16,
    pub reason: &'static str,
}

impl HttpError {
    const fn new(status: u16, reason: &'static str) -> Self {
        HttpError { status, reason }
    }
    pub const BAD_REQUEST: Self = Self::new(400, "malformed request");
    pub const BAD_LINE_ENDING: Self = Self::new(400, "line endings must be CRLF");
    pub const MISSING_HOST: Self = Self::new(400, "missing Host header");
    pub const DUPLICATE_HOST: Self = Self::new(400, "more than one Host header");
    pub const BAD_HOST: Self = Self::new(400, "invalid Host");
    pub const BAD_CONTENT_LENGTH: Self = Self::new(400, "invalid Content-Length");
    pub const CONFLICTING_LENGTH: Self = Self::new(400, "conflicting Content-Length headers");
    pub const TE_AND_LENGTH: Self = Self::new(400, "Content-Length and Transfer-Encoding together");
    pub const TE_IN_HTTP10: Self = Self::new(400, "Transfer-Encoding in an HTTP/1.0 request");
    pub const BAD_TRANSFER_ENCODING: Self = Self::new(400, "invalid Transfer-Encoding");
    pub const BAD_CHUNK: Self = Self::new(400, "malformed chunked body");
    pub const REQUEST_TIMEOUT: Self = Self::new(408, "request timeout");
    pub const BODY_TOO_LARGE: Self = Self::new(413, "request body too large");
    pub const URI_TOO_LONG: Self = Self::new(414, "request target too long");
    pub const EXPECTATION_FAILED: Self = Self::new(417, "unsupported Expect");
    pub const HEAD_TOO_LARGE: Self = Self::new(431, "request header section too large");
    pub const TOO_MANY_HEADERS: Self = Self::new(431, "too many header fields");
    pub const NOT_IMPLEMENTED: Self = Self::new(501, "method not implemented");
    pub const UNSUPPORTED_TRANSFER_CODING: Self = Self::new(501, "unsupported transfer coding");
    pub const OVERLOADED: Self = Self::new(503, "too many connections");
    pub const VERSION_NOT_SUPPORTED: Self = Self::new(505, "HTTP version not supported");
}

impl From<chunked::ChunkError> for HttpError {
    fn from(e: chunked::ChunkError) -> Self {
        match e {
            chunked::ChunkError::TooLarge => HttpError::BODY_TOO_LARGE,
            chunked::ChunkError::TrailersTooLarge => HttpError::HEAD_TOO_LARGE,
            _ => HttpError::BAD_CHUNK,
        }
    }
}

/// The standard reason phrase for the status codes ringgate sends.
pub fn reason_phrase(status: u16) -> &'static str {
    match status {
        100 => "Continue",
        200 => "OK",
        201 => "Created",
        202 => "Accepted",
        204 => "No Content",
        301 => "Moved Permanently",
        302 => "Found",
        304 => "Not Modified",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        406 => "Not Acceptable",
        408 => "Request Timeout",
        409 => "Conflict",
        411 => "Length Required",
        413 => "Content Too Large",
        414 => "URI Too Long",
        415 => "Unsupported Media Type",
        417 => "Expectation Failed",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        505 => "HTTP Version Not Supported",
        _ => "",
    }
}
