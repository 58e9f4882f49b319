//! The MCP endpoint: POST / GET / DELETE, with the checks of the streamable
//! HTTP transport in the order clients meet them:
//!
//! 1. `Accept` must include `text/event-stream` (POST, GET): else 406, with
//!    the text agentgateway's users know;
//! 2. `Content-Type` must be JSON (POST): else 415;
//! 3. the body must be JSON-RPC: else 400 with a JSON-RPC error;
//! 4. `initialize` without a session creates one; anything else needs
//!    `Mcp-Session-Id` (400 without, 404 if unknown, ended, or someone else's);
//! 5. `MCP-Protocol-Version`, when sent, must be the negotiated one (400).

use std::rc::Rc;

use crate::config::McpBackend;
use crate::http::response::{Body, Response};
use crate::mcp::authz::{self, RouteAuthz};
use crate::mcp::jsonrpc::{self, Kind};
use crate::mcp::modern;
use crate::mcp::{Job, McpWorker, Op, Reply};
use crate::request::{McpLog, Request};

pub const NOT_ACCEPTABLE: &str = "Not Acceptable: Client must accept text/event-stream";

pub async fn handle(
    mcp: &Rc<McpWorker>,
    backend: &McpBackend,
    req: &Request<'_>,
    identity: String,
    authz: Option<RouteAuthz<'_>>,
) -> (Response, McpLog) {
    let backend_cfg = backend;
    let backend = backend.key();
    let mut log = McpLog {
        session: session_header(req),
        ..McpLog::default()
    };
    let resp = match req.method() {
        "GET" | "DELETE" if modern::is_modern_header(req) => modern::not_allowed(),
        "POST" => post(mcp, backend_cfg, backend, req, identity, authz, &mut log).await,
        "GET" => {
            if !accepts_sse(req) {
                return (Response::text(406, NOT_ACCEPTABLE), log);
            }
            match &log.session {
                None => Response::text(400, "Bad Request: Mcp-Session-Id header is required"),
                Some(s) => to_owner(mcp, job(req, s, identity, backend, Op::Get)).await,
            }
        }
        "DELETE" => match &log.session {
            None => Response::text(400, "Bad Request: Mcp-Session-Id header is required"),
            Some(s) => to_owner(mcp, job(req, s, identity, backend, Op::Delete)).await,
        },
        _ => Response::text(405, "Method Not Allowed").header("allow", "GET, POST, DELETE"),
    };
    (resp, log)
}

async fn post(
    mcp: &Rc<McpWorker>,
    backend_cfg: &McpBackend,
    backend: &str,
    req: &Request<'_>,
    identity: String,
    authz: Option<RouteAuthz<'_>>,
    log: &mut McpLog,
) -> Response {
    if !accepts_sse(req) {
        return Response::text(406, NOT_ACCEPTABLE);
    }
    if !is_json(req.header("content-type")) {
        return Response::text(
            415,
            "Unsupported Media Type: Content-Type must be application/json",
        );
    }
    let (messages, batch) = match jsonrpc::parse_body(req.body) {
        Ok(m) => m,
        Err(e) => {
            let body = jsonrpc::error_line(None, e.code(), e.message());
            return Response::new(400)
                .header("content-type", "application/json")
                .body(Body::Bytes(body.into_bytes()));
        }
    };
    if modern::is_modern(req, &messages) {
        let (shared, id) = (&mcp.shared, &identity);
        return modern::post(shared, backend_cfg, req, messages, batch, id, authz, log).await;
    }
    if let Some(first) = messages.first() {
        log.method = first.method().map(str::to_string);
        if let Kind::Request { tool, .. } = &first.kind {
            log.tool = tool.clone();
        }
        log.target = call_target(backend_cfg, first);
    }
    let initialize = messages.iter().any(|m| m.method() == Some("initialize"));
    match &log.session {
        None if initialize && !batch && messages[0].is_request() => {
            match mcp
                .initialize(backend.to_string(), identity, messages)
                .await
            {
                Ok((id, rx)) => {
                    log.session = Some(id.clone());
                    sse(rx).header("mcp-session-id", id)
                }
                Err(reply) => from_reply(reply),
            }
        }
        None => Response::text(400, "Bad Request: Mcp-Session-Id header is required"),
        Some(_) if initialize => Response::text(
            400,
            "Bad Request: initialize must not carry an Mcp-Session-Id",
        ),
        Some(s) => {
            let authz = authz.map(|a| {
                let (decided, logged) = authz::decide(&a, &messages);
                log.authz = logged.decision;
                log.authz_name = logged.name;
                decided
            });
            let op = Op::Post {
                messages,
                batch,
                authz,
            };
            to_owner(mcp, job(req, s, identity, backend, op)).await
        }
    }
}

fn job(
    req: &Request,
    session: &str,
    identity: String,
    backend: &str,
    op: Op,
) -> (Job, flume::Receiver<Reply>) {
    let (tx, rx) = flume::bounded(1);
    let version_header = req
        .header("mcp-protocol-version")
        .map(|v| String::from_utf8_lossy(v).trim().to_string());
    (
        Job {
            session: session.to_string(),
            identity,
            backend: backend.to_string(),
            version_header,
            op,
            reply: tx,
        },
        rx,
    )
}

async fn to_owner(mcp: &Rc<McpWorker>, (job, rx): (Job, flume::Receiver<Reply>)) -> Response {
    from_reply(mcp.dispatch(job, rx).await)
}

fn from_reply(reply: Reply) -> Response {
    match reply {
        Reply::Status(503, text) => Response::text(503, text).header("retry-after", "1"),
        Reply::Status(status, text) => Response::text(status, text),
        Reply::Accepted => Response::new(202),
        Reply::Stream(rx) => sse(rx),
        Reply::Deleted => Response::new(200),
        Reply::Created(id, rx) => sse(rx).header("mcp-session-id", id),
        Reply::OldestIdle(_) | Reply::Evicted(_) => Response::text(500, "Internal Server Error"),
    }
}

fn sse(rx: flume::Receiver<Vec<u8>>) -> Response {
    Response::new(200)
        .header("content-type", "text/event-stream")
        .header("cache-control", "no-cache")
        .body(Body::Stream(rx))
}

fn session_header(req: &Request) -> Option<String> {
    req.header("mcp-session-id")
        .map(|v| String::from_utf8_lossy(v).trim().to_string())
}

fn accepts_sse(req: &Request) -> bool {
    req.header("accept").is_some_and(|a| {
        a.split(|b| *b == b',').any(|range| {
            let range = crate::http::parse::trim_ows(range);
            let media = range.split(|b| *b == b';').next().unwrap_or(range);
            crate::http::parse::trim_ows(media).eq_ignore_ascii_case(b"text/event-stream")
        })
    })
}

fn is_json(ct: Option<&[u8]>) -> bool {
    ct.is_some_and(|ct| {
        let media = ct.split(|b| *b == b';').next().unwrap_or(ct);
        crate::http::parse::trim_ows(media).eq_ignore_ascii_case(b"application/json")
    })
}

/// The target a call goes to, for the access log: the only one, or the one
/// its prefixed name or URI names. Under `prefixMode: never` the owner of
/// the session knows it, not this worker: not logged.
fn call_target(backend: &McpBackend, m: &jsonrpc::Message) -> Option<String> {
    let Kind::Request { method, .. } = &m.kind else {
        return None;
    };
    if !backend.is_multiplexing() {
        let routed = crate::mcp::multiplex::ROUTED.contains(&method.as_str());
        return routed.then(|| backend.targets[0].name.clone());
    }
    let (_, span, uri) = crate::mcp::multiplex::named(&m.line, method)?;
    let naming = crate::mcp::multiplex::Naming::from_backend(backend);
    let value = crate::mcp::multiplex::decode_str(&m.line[span?])?;
    let candidates = naming.candidates(&value, uri);
    match candidates.as_slice() {
        [(t, _)] => Some(naming.targets[*t].clone()),
        _ => None,
    }
}
