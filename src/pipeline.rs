//! The request's stages, in order. This is the one place that knows the order:
//!
//! route match -> CORS (preflight answered here) -> extAuthz -> backend
//!
//! `conn.rs` calls [`handle`] once per request after the body is read, and
//! writes the response it returns; the access log line follows the write.

use std::rc::Rc;

use crate::auth::{self, Decision, Source};
use crate::config::{Backend, Listener, Route};
use crate::http::parse::Head;
use crate::http::response::{Body, Response};
use crate::mcp::endpoint::{self, McpLog};
use crate::policy::cel::Vars;
use crate::policy::cors;
use crate::worker::{BindCtx, PeerAddr};

/// A parsed request, borrowed from the connection's buffers.
pub struct Request<'a> {
    pub buf: &'a [u8],
    pub head: &'a Head,
    pub body: &'a [u8],
    pub peer: PeerAddr,
    /// The peer's IP as text, formatted once per connection.
    pub peer_ip: &'a str,
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
    /// Headers with names as text (httparse admits only token bytes in names).
    pub fn headers(&self) -> Vec<(&'a str, &'a [u8])> {
        self.head
            .headers
            .iter()
            .map(|(n, v)| (self.text(n), &self.buf[v.clone()]))
            .collect()
    }
    /// CEL variables for this request, `headers` filled only when asked for.
    pub fn vars<'h>(&self, headers: &'h [(&'a str, &'a [u8])]) -> Vars<'h>
    where
        'a: 'h,
    {
        Vars {
            source_address: self.peer_ip,
            source_port: self.peer.port(),
            method: self.method(),
            path: self.path(),
            headers,
            response: None,
            extauthz: None,
        }
    }
}

/// What the pipeline did, for the connection and the access log.
pub struct Handled<'c> {
    pub resp: Response,
    pub route: Option<&'c Route>,
    pub authz: Option<Rc<Decision>>,
    pub authz_source: Option<Source>,
    pub mcp: Option<McpLog>,
}

/// The listener for this request's Host among the bind's listeners.
fn listener<'c>(ctx: &'c BindCtx, req: &Request) -> Option<&'c Listener> {
    let host = req.host();
    ctx.bind().listeners.iter().find(|l| l.matches_host(host))
}

pub async fn handle<'c>(ctx: &'c BindCtx, req: &Request<'_>) -> Handled<'c> {
    let mut out = Handled {
        resp: Response::text(404, "no route matches this request"),
        route: None,
        authz: None,
        authz_source: None,
        mcp: None,
    };
    let Some(route) = listener(ctx, req).and_then(|l| l.route(req.path())) else {
        return out;
    };
    out.route = Some(route);
    let mcp = matches!(route.backend, Some(Backend::Mcp(_)));

    let cors_headers = match cors::check(
        route.policies.cors.as_ref(),
        mcp,
        req.method(),
        req.header("origin"),
        req.header("access-control-request-method"),
        req.header("access-control-request-headers"),
    ) {
        cors::Verdict::Respond(r) => {
            out.resp = r;
            return out;
        }
        cors::Verdict::Continue(h) => h,
    };

    out.resp = match &route.policies.ext_authz {
        Some(cfg) => {
            let headers = if cfg.needs_headers {
                req.headers()
            } else {
                Vec::new()
            };
            let state = &ctx.gen.authz[cfg.id];
            match auth::check(state, cfg, &req.vars(&headers), &ctx.worker.stats).await {
                auth::Verdict::Allow(d, source) => {
                    out.authz = d;
                    out.authz_source = Some(source);
                    backend(ctx, route, req, &mut out).await
                }
                auth::Verdict::Deny(r, source) => {
                    out.authz_source = Some(source);
                    r
                }
            }
        }
        None => backend(ctx, route, req, &mut out).await,
    };
    for (n, v) in cors_headers {
        out.resp.headers.push((n.into(), v.into()));
    }
    out
}

async fn backend(
    ctx: &BindCtx,
    route: &Route,
    req: &Request<'_>,
    out: &mut Handled<'_>,
) -> Response {
    if let Some(d) = &route.policies.direct_response {
        return Response::new(d.status)
            .header("content-type", "text/plain")
            .body(Body::Bytes(d.body.as_bytes().to_vec()));
    }
    match &route.backend {
        Some(Backend::Mcp(m)) => {
            let (resp, log) = endpoint::handle(&ctx.worker.mcp, m, req, identity(req, out)).await;
            out.mcp = Some(log);
            resp
        }
        None => Response::text(503, "no backend configured for this route"),
    }
}

/// Who a session belongs to: the authorization metadata when the route has
/// extAuthz (node and login for the seed config), else the source IP.
fn identity(req: &Request, out: &Handled) -> String {
    match &out.authz {
        Some(d) if !d.metadata.is_empty() => {
            let mut id = String::new();
            for (k, v) in &d.metadata {
                id.push_str(k);
                id.push('=');
                id.push_str(&v.to_string());
                id.push('\n');
            }
            id
        }
        _ => format!("ip={}", req.peer_ip),
    }
}
