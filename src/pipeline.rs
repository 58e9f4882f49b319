//! The request's stages, in order. This is the one place that knows the order:
//!
//! route match -> CORS (preflight answered here) -> extAuthz -> backend
//!
//! `conn.rs` calls [`handle`] once per request after the body is read, and
//! writes the response it returns; the access log line follows the write.

use crate::auth;
use crate::config::{Backend, Listener, Route};
use crate::context::BindCtx;
use crate::http::response::{Body, Response};
use crate::mcp::endpoint;
use crate::policy::cors;
use crate::request::{Handled, Request};

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
