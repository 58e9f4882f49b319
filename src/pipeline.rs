//! The request's stages, in order. This is the one place that knows the order:
//!
//! route match -> CORS (preflight answered here) -> extAuthz -> backend
//!
//! `conn.rs` calls [`handle`] once per request after the body is read, and
//! writes whatever it returns; the access log line follows the write.

use crate::config::{Backend, Listener, Route};
use crate::http::parse::Head;
use crate::http::response::{Body, Response};
use crate::worker::{BindCtx, PeerAddr};

/// A parsed request, borrowed from the connection's buffers.
pub struct Request<'a> {
    pub buf: &'a [u8],
    pub head: &'a Head,
    pub body: &'a [u8],
    pub peer: PeerAddr,
}

impl<'a> Request<'a> {
    fn text(&self, r: &std::ops::Range<usize>) -> &'a str {
        // httparse only accepts visible ASCII in the method and target.
        std::str::from_utf8(&self.buf[r.clone()]).unwrap_or("")
    }
    pub fn method(&self) -> &'a str {
        self.text(&self.head.method)
    }
    /// Path and query.
    pub fn path(&self) -> &'a str {
        self.text(&self.head.path)
    }
    pub fn host(&self) -> &'a str {
        self.head
            .host
            .as_ref()
            .and_then(|r| std::str::from_utf8(&self.buf[r.clone()]).ok())
            .unwrap_or("")
    }
    pub fn header(&self, name: &str) -> Option<&'a [u8]> {
        self.head.header(self.buf, name)
    }
    pub fn headers(&self) -> impl Iterator<Item = (&'a [u8], &'a [u8])> + '_ {
        self.head
            .headers
            .iter()
            .map(|(n, v)| (&self.buf[n.clone()], &self.buf[v.clone()]))
    }
}

/// The listener for this request's Host among the bind's listeners.
fn listener<'c>(ctx: &'c BindCtx, req: &Request) -> Option<&'c Listener> {
    let host = req.host();
    ctx.bind().listeners.iter().find(|l| l.matches_host(host))
}

pub async fn handle(ctx: &BindCtx, req: &Request<'_>) -> Response {
    let Some(route) = listener(ctx, req).and_then(|l| l.route(req.path())) else {
        return Response::text(404, "no route matches this request");
    };
    route_request(route, req).await
}

async fn route_request(route: &Route, _req: &Request<'_>) -> Response {
    if route.policies.ext_authz.is_some() {
        // Fail closed until the authorization stage exists: a route that asks
        // for authorization never serves anyone without it.
        return Response::text(403, "external authorization failed");
    }
    if let Some(d) = &route.policies.direct_response {
        return Response::new(d.status)
            .header("content-type", "text/plain")
            .body(Body::Bytes(d.body.as_bytes().to_vec()));
    }
    match &route.backend {
        Some(Backend::Mcp(_)) => Response::text(501, "MCP backend not implemented yet"),
        None => Response::text(503, "no backend configured for this route"),
    }
}
