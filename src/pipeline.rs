//! The request's stages, in order. This is the one place that knows the order:
//!
//! route match -> CORS (preflight answered here) -> extAuthz -> backend
//!
//! `conn.rs` calls [`admit`] as soon as a request's head is parsed: route,
//! CORS and extAuthz need no body, so a caller who is not let in never gets
//! `100 Continue` and never makes ringgate buffer a body. Only an admitted
//! request's body is read; then [`respond`] runs the backend. The access log
//! line follows the response's write.

use crate::auth;
use crate::config::{Backend, Listener, Route};
use crate::context::BindCtx;
use crate::http::response::{Body, Response};
use crate::mcp::authz::RouteAuthz;
use crate::mcp::endpoint;
use crate::policy::cors;
use crate::request::{Handled, Request};

/// The listener for this request's Host among the bind's listeners.
fn listener<'c>(ctx: &'c BindCtx, req: &Request) -> Option<&'c Listener> {
    let host = req.host();
    ctx.bind().listeners.iter().find(|l| l.matches_host(host))
}

/// What the stages decided on a request's head, before any body byte is read.
pub enum Admission<'c> {
    /// Answered on the head: no route, a CORS preflight or refusal, an
    /// extAuthz denial, a direct response. The body, if any, is never read.
    Answered(Handled<'c>),
    /// Let in: read the body, then [`respond`].
    Admitted(Admitted<'c>),
}

/// A request let in on its head; carries what the stages found out. A
/// request no route matches is let in too (it is answered 404 after its
/// body, so the connection stays usable): no policy refused it.
pub struct Admitted<'c> {
    out: Handled<'c>,
    route: Option<&'c Route>,
    cors_headers: Vec<(&'static str, Vec<u8>)>,
}

impl<'c> Admitted<'c> {
    pub fn route(&self) -> Option<&'c Route> {
        self.route
    }

    /// Answers without the backend (the body could not be read: too large,
    /// no room for it), keeping the route, authz and CORS headers for the
    /// response and the access log.
    pub fn refuse(self, resp: Response) -> Handled<'c> {
        self.finish(resp)
    }

    fn finish(self, resp: Response) -> Handled<'c> {
        let mut out = self.out;
        out.resp = resp;
        for (n, v) in self.cors_headers {
            out.resp.headers.push((n.into(), v.into()));
        }
        out
    }
}

/// Runs the stages that need only the head: route, CORS, extAuthz. `req`
/// has no body yet; `memo` is its connection's (see [`auth::ConnMemo`]).
pub async fn admit<'c>(
    ctx: &'c BindCtx,
    req: &Request<'_>,
    memo: &mut auth::ConnMemo,
) -> Admission<'c> {
    // Every way out replaces this answer (`finish`, a CORS answer, a
    // denial), so it is left without headers: nothing is allocated for it.
    let mut out = Handled {
        resp: Response::new(404),
        route: None,
        authz: None,
        authz_source: None,
        mcp: None,
    };
    let Some(route) = listener(ctx, req).and_then(|l| l.route(req.path())) else {
        return Admission::Admitted(Admitted {
            out,
            route: None,
            cors_headers: Vec::new(),
        });
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
            return Admission::Answered(out);
        }
        cors::Verdict::Continue(h) => h,
    };
    let mut admitted = Admitted {
        out,
        route: Some(route),
        cors_headers,
    };

    let Some(cfg) = &route.policies.ext_authz else {
        return Admission::Admitted(admitted);
    };
    let headers = if cfg.needs_headers {
        req.headers()
    } else {
        Vec::new()
    };
    let state = &ctx.gen.authz[cfg.id];
    match auth::check(state, cfg, &req.vars(&headers), &ctx.worker.stats, memo).await {
        auth::Verdict::Allow(d, source) => {
            admitted.out.authz = d;
            admitted.out.authz_source = Some(source);
            Admission::Admitted(admitted)
        }
        auth::Verdict::Deny(r, source) => {
            admitted.out.authz_source = Some(source);
            Admission::Answered(admitted.finish(r))
        }
    }
}

/// Runs the backend for an admitted request whose body has been read.
pub async fn respond<'c>(
    ctx: &'c BindCtx,
    mut admitted: Admitted<'c>,
    req: &Request<'_>,
) -> Handled<'c> {
    let Some(route) = admitted.route else {
        return admitted.finish(Response::text(404, "no route matches this request"));
    };
    if let Some(d) = &route.policies.direct_response {
        let resp = Response::new(d.status)
            .header("content-type", "text/plain")
            .body(Body::Bytes(d.body.as_bytes().to_vec()));
        return admitted.finish(resp);
    }
    let resp = match &route.backend {
        Some(Backend::Mcp(m)) => {
            let identity = identity(req, &admitted.out);
            let naming = m
                .is_multiplexing()
                .then(|| crate::mcp::multiplex::Naming::from_backend(m));
            let headers;
            let authz = match &route.policies.mcp_authorization {
                Some(rules) => {
                    headers = req.headers();
                    let mut vars = req.vars(&headers);
                    vars.extauthz = admitted.out.authz.as_ref().map(|d| d.metadata.as_slice());
                    Some(RouteAuthz {
                        rules,
                        route: &route.name,
                        target: &m.targets[0].name,
                        naming: naming.as_ref(),
                        vars,
                        stats: &ctx.worker.stats,
                    })
                }
                None => None,
            };
            let (resp, log) = endpoint::handle(&ctx.worker.mcp, m, req, identity, authz).await;
            admitted.out.mcp = Some(Box::new(log));
            resp
        }
        None => Response::text(503, "no backend configured for this route"),
    };
    admitted.finish(resp)
}

/// Who a session belongs to: the authorization metadata when the route has
/// extAuthz (node and login for the seed config), else the source IP.
fn identity(req: &Request, out: &Handled) -> String {
    match &out.authz {
        Some(d) if !d.metadata.is_empty() => d.identity.clone(),
        _ => format!("ip={}", req.peer_ip),
    }
}
