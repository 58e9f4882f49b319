//! The check request and its bytes on the wire.

use super::ClientError;

/// One check request; the body is always empty.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckRequest {
    pub method: String,
    /// Origin-form: starts with `/`, may carry a query.
    pub path: String,
    /// Value of `Host`; may be empty (tailscaled accepts only empty or
    /// `local-tailscaled.sock`).
    pub authority: String,
    /// Extra headers. `Host`, `Origin`, `Referer` and framing or hop-by-hop
    /// headers are dropped: the client owns framing, and tailscaled refuses
    /// any request with `Origin` or `Referer` (its browser-CSRF guard).
    pub headers: Vec<(String, String)>,
}

impl Default for CheckRequest {
    fn default() -> Self {
        CheckRequest {
            method: "GET".into(),
            path: "/".into(),
            authority: String::new(),
            headers: Vec::new(),
        }
    }
}

impl CheckRequest {
    pub fn get(path: impl Into<String>, authority: impl Into<String>) -> Self {
        CheckRequest {
            path: path.into(),
            authority: authority.into(),
            ..CheckRequest::default()
        }
    }
}

/// Headers the caller may not set: `Host` comes from `authority`, framing and
/// hop-by-hop headers belong to this client, and `Origin`/`Referer` make
/// tailscaled answer 403.
const DROPPED_HEADERS: &[&str] = &[
    "host",
    "origin",
    "referer",
    "content-length",
    "transfer-encoding",
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "upgrade",
    "expect",
];

pub(super) fn encode_request(req: &CheckRequest) -> Result<Vec<u8>, ClientError> {
    let method = if req.method.is_empty() {
        "GET"
    } else {
        &req.method
    };
    if !method.bytes().all(is_tchar) {
        return Err(ClientError::InvalidRequest("method is not a token"));
    }
    if !req.path.starts_with('/') || !req.path.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(ClientError::InvalidRequest(
            "path must start with '/' and be visible ASCII",
        ));
    }
    if !req.authority.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(ClientError::InvalidRequest(
            "authority must be visible ASCII",
        ));
    }
    let mut out = Vec::with_capacity(64 + req.path.len() + req.authority.len());
    out.extend_from_slice(method.as_bytes());
    out.push(b' ');
    out.extend_from_slice(req.path.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\nHost: ");
    out.extend_from_slice(req.authority.as_bytes());
    out.extend_from_slice(b"\r\n");
    for (name, value) in &req.headers {
        if name.is_empty() || !name.bytes().all(is_tchar) {
            return Err(ClientError::InvalidRequest("header name is not a token"));
        }
        if value.bytes().any(|b| (b < b' ' && b != b'\t') || b == 0x7f) {
            return Err(ClientError::InvalidRequest(
                "header value has a control character",
            ));
        }
        if DROPPED_HEADERS.iter().any(|d| name.eq_ignore_ascii_case(d)) {
            continue;
        }
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    // A body-less GET or HEAD carries no length; for other methods an absent
    // length may make a server wait for a body.
    if !method.eq_ignore_ascii_case("GET") && !method.eq_ignore_ascii_case("HEAD") {
        out.extend_from_slice(b"Content-Length: 0\r\n");
    }
    out.extend_from_slice(b"\r\n");
    Ok(out)
}

fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

#[cfg(test)]
mod tests;
