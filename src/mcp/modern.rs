//! MCP 2026-07-28 (stateless) on the same endpoint as the handshake era,
//! decided per request.
//!
//! A request is modern when its `MCP-Protocol-Version` header is
//! 2026-07-28, or its body carries the `_meta`
//! `io.modelcontextprotocol/protocolVersion` envelope; everything else is
//! handshake-era and goes to `endpoint`'s sessions unchanged. Modern rules
//! (`basic/transports/streamable-http` of the revision):
//! - POST only: GET and DELETE with the modern version header get 405;
//! - one message per POST (a batch is 400 / -32600); notifications 202;
//!   `Mcp-Session-Id` and `Last-Event-ID` are ignored, no session minted;
//! - the header checks of [`checks`], each with the spec's status and code;
//! - `server/discover` is answered by ringgate from what the target's child
//!   said in ringgate's own `initialize` ([`shared`](crate::mcp::shared));
//! - methods the revision removed (`initialize`, `ping`,
//!   `logging/setLevel`, `resources/subscribe`...) are 404 / -32601;
//! - `subscriptions/listen` opens a stream of the target's children's
//!   `list_changed` notifications on this worker, and of their
//!   `notifications/resources/updated` for the `resourceSubscriptions` the
//!   caller may read (`resources/read` under `mcpAuthorization`), which
//!   ringgate subscribes the children to ([`shared::listen`]);
//! - MRTR: a retry with `requestState` ([`state`]) resumes the call that
//!   waits on a shared child for the client's input;
//! - any other request goes to a shared child of this worker; its answer
//!   (and its progress notifications) come on an SSE stream with
//!   `X-Accel-Buffering: no`; closing that stream cancels the request.
//!
//! - [`envelope`]: the members of a request ringgate reads
//! - [`checks`]: header and version checks
//! - [`splice`]: id, progress token and result field splicing
//! - [`multi`]: a route with several targets (names, merged lists and
//!   `server/discover`, one listen stream over every target)

pub mod checks;
pub mod envelope;
pub mod multi;
pub mod splice;
pub mod state;
pub mod strip;

use crate::config::McpBackend;
use crate::http::response::{Body, Response};
use crate::mcp::authz::{self, RouteAuthz};
use crate::mcp::jsonrpc::{self, Kind, Message};
use crate::mcp::shared;
use crate::mcp::shared::listen::Filter;
use crate::mcp::shared::{Mrtr, Opts, Shared, SubmitError, Unavailable};
use crate::request::{McpLog, Request};
use checks::MODERN_VERSION;

/// Methods the 2026-07-28 revision removed.
const NOT_SERVED: &[&str] = &[
    "initialize",
    "ping",
    "logging/setLevel",
    "resources/subscribe",
    "resources/unsubscribe",
];

/// The requests a server may answer with an `InputRequiredResult`.
pub(crate) const MRTR: &[&str] = &["tools/call", "prompts/get", "resources/read"];

/// Results clients may cache: they get `ttlMs` and `cacheScope`. The scope
/// is `private`: what a caller may see can depend on who calls.
pub(crate) const CACHEABLE: &[&str] = &[
    "tools/list",
    "prompts/list",
    "resources/list",
    "resources/templates/list",
    "resources/read",
];

/// The request's `MCP-Protocol-Version` header names 2026-07-28.
pub fn is_modern_header(req: &Request) -> bool {
    req.header("mcp-protocol-version")
        .is_some_and(|v| crate::http::parse::trim_ows(v) == MODERN_VERSION.as_bytes())
}

/// A POST is modern by its header or by the body's envelope.
pub fn is_modern(req: &Request, messages: &[Message]) -> bool {
    is_modern_header(req)
        || messages.iter().any(|m| {
            envelope::mentions_version_key(m.line.as_bytes())
                && envelope::parse(&m.line).is_some_and(|e| e.has_version_key)
        })
}

/// GET or DELETE of a modern client.
pub fn not_allowed() -> Response {
    Response::text(405, "Method Not Allowed: 2026-07-28 clients use POST only")
        .header("allow", "POST")
}

/// A JSON-RPC error answer with an HTTP status.
pub(crate) fn error(
    status: u16,
    id: Option<&str>,
    code: i64,
    message: &str,
    data: Option<&str>,
) -> Response {
    let mut line = jsonrpc::error_line(id, code, message);
    if let Some(d) = data {
        // Before the two closing braces of `error` and the message.
        line.truncate(line.len() - 2);
        line.push_str(",\"data\":");
        line.push_str(d);
        line.push_str("}}");
    }
    Response::new(status)
        .header("content-type", "application/json")
        .body(Body::Bytes(line.into_bytes()))
}

pub(crate) fn sse(rx: flume::Receiver<Vec<u8>>) -> Response {
    Response::new(200)
        .header("content-type", "text/event-stream")
        .header("cache-control", "no-cache")
        .header("x-accel-buffering", "no")
        .body(Body::Stream(rx))
}

pub(crate) fn unavailable(u: Unavailable) -> Response {
    let text = match u {
        Unavailable::NotReady => "MCP server not available",
        Unavailable::Busy => "MCP servers busy",
    };
    Response::text(503, text).header("retry-after", "1")
}

/// Serves a modern POST (already past the Accept, Content-Type and JSON
/// checks). `identity` is the caller's, as sessions are bound to it.
#[allow(clippy::too_many_arguments)]
pub async fn post(
    shared: &Shared,
    backend: &McpBackend,
    req: &Request<'_>,
    messages: Vec<Message>,
    batch: bool,
    identity: &str,
    authz: Option<RouteAuthz<'_>>,
    log: &mut McpLog,
) -> Response {
    log.session = None;
    if !backend.is_multiplexing() {
        log.target = Some(backend.targets[0].name.clone());
    }
    if batch {
        return error(
            400,
            None,
            jsonrpc::INVALID_REQUEST,
            "a 2026-07-28 POST carries one JSON-RPC message",
            None,
        );
    }
    let m = &messages[0];
    log.method = m.method().map(str::to_string);
    match &m.kind {
        Kind::Notification { .. } => return Response::new(202),
        Kind::Response { .. } => {
            return error(
                400,
                None,
                jsonrpc::INVALID_REQUEST,
                "2026-07-28 clients send no JSON-RPC responses",
                None,
            )
        }
        Kind::Request { tool, .. } => log.tool = tool.clone(),
    }
    let Some(env) = envelope::parse(&m.line) else {
        return error(400, None, jsonrpc::INVALID_REQUEST, "Invalid Request", None);
    };
    let id = env.id.map(|i| i.get());
    let headers = req.headers();
    if let Err(r) = checks::check(&headers, &env, &[]) {
        return error(r.status, id, r.code, &r.message, r.data.as_deref());
    }
    let method = env.method.as_deref().unwrap_or("");
    if NOT_SERVED.contains(&method) || method.starts_with("tasks/") {
        return error(404, id, checks::METHOD_NOT_FOUND, "Method not found", None);
    }
    if backend.is_multiplexing() {
        let call = multi::Call {
            shared,
            backend,
            line: &m.line,
            env: &env,
            method,
            headers: &headers,
            identity,
        };
        return multi::post(call, &messages, authz, log).await;
    }
    let backend = &backend.targets[0];
    let target = shared.target(backend);
    if method == "subscriptions/listen" {
        let mut filter = listen_filter(&m.line);
        if !filter.uris.is_empty() {
            // Only what the child can subscribe to, and the caller may read.
            match target.info().await {
                Ok(info) if subscribable(&info.capabilities) => {}
                Ok(_) => filter.uris.clear(),
                Err(u) => return unavailable(u),
            }
            if let Some(a) = &authz {
                filter.uris.retain(|uri| {
                    let kind = crate::policy::cel::McpKind::Resource;
                    let d = a
                        .rules
                        .decide_for(&a.vars, "resources/read", kind, a.target, uri);
                    d.allowed()
                });
            }
        }
        return sse(target.listen(id.unwrap_or("null"), filter).await);
    }
    if method == "server/discover" {
        return match target.info().await {
            Ok(info) => discover(
                id.unwrap_or("null"),
                &info.capabilities,
                info.instructions.as_deref(),
                info.server_info.as_deref(),
                shared.settings().cache_ttl.as_millis() as u64,
            ),
            Err(u) => unavailable(u),
        };
    }
    if method == "tools/call" {
        let info = match target.info().await {
            Ok(i) => i,
            Err(u) => return unavailable(u),
        };
        let name = env.name.and_then(envelope::string);
        if let Some(p) = name.and_then(|n| info.tool_params.get(n.as_ref())) {
            if let Err(r) = checks::check_params(&headers, &env, p) {
                return error(r.status, id, r.code, &r.message, None);
            }
        }
    }
    // Per-tool authorization, as for a session's requests: the header
    // checks above made `Mcp-Name` agree with the body, which decides.
    let mut list = None;
    if let Some(a) = authz {
        let (decided, logged) = authz::decide(&a, &messages);
        log.authz = logged.decision;
        log.authz_name = logged.name;
        if let Some(line) = decided.refusal(0) {
            return Response::new(200)
                .header("content-type", "application/json")
                .body(Body::Bytes(line.as_bytes().to_vec()));
        }
        list = decided.list(0);
    }
    let cache = CACHEABLE
        .contains(&method)
        .then(|| (shared.settings().cache_ttl.as_millis() as u64, "private"));
    let mut opts = Opts {
        cache,
        list,
        log_level: log_level(&env),
        ..Opts::default()
    };
    if MRTR.contains(&method) {
        let name = env.name.or(env.uri).and_then(envelope::string);
        let m = Mrtr {
            elicitation: envelope::declares(&env, "elicitation"),
            sampling: envelope::declares(&env, "sampling"),
            identity: state::digest(&[identity.as_bytes()]),
            binding: state::binding(method, name.as_deref().unwrap_or(""), backend.key()),
        };
        if let Some(token) = env.request_state {
            return retry(&env, token, &m);
        }
        opts.mrtr = Some(m);
    }
    let child = match target.pick().await {
        Ok(c) => c,
        Err(u) => return unavailable(u),
    };
    match child.submit(&m.line, &env, opts) {
        Ok(rx) => sse(rx),
        Err(SubmitError::Busy) => unavailable(Unavailable::Busy),
        Err(SubmitError::Dead) => unavailable(Unavailable::NotReady),
    }
}

/// An MRTR retry: its `requestState` checked, the client's input sent to
/// the call that waits for it (on whichever worker's child holds it), whose
/// answer then comes on this request's stream.
pub(crate) fn retry(
    env: &envelope::Envelope,
    token: &serde_json::value::RawValue,
    m: &Mrtr,
) -> Response {
    let id = env.id.map_or("null", |i| i.get());
    let refuse = |why: &str| error(400, Some(id), INVALID_PARAMS, why, None);
    let Some(token) = envelope::string(token) else {
        return refuse(state::Refused::Malformed.message());
    };
    let park = match state::verify(&token, &m.identity, &m.binding) {
        Ok(p) => p,
        Err(r) => return refuse(r.message()),
    };
    let Some(parked) = state::take(park) else {
        return refuse(state::Refused::Gone.message());
    };
    #[derive(serde::Deserialize)]
    struct Responses<'a>(
        #[serde(borrow)]
        std::collections::HashMap<std::borrow::Cow<'a, str>, &'a serde_json::value::RawValue>,
    );
    let response = env
        .input_responses
        .and_then(|r| serde_json::from_str::<Responses>(r.get()).ok())
        .and_then(|r| {
            r.0.get(shared::child::INPUT_KEY)
                .map(|v| v.get().to_string())
        });
    let (tx, rx) = flume::bounded(shared::listen::STREAM_DEPTH);
    let resume = state::Resume {
        call: parked.call,
        client_id: id.to_string(),
        token: env.progress_token.map(|t| t.get().to_string()),
        response,
        tx,
    };
    if let Err(flume::SendError(r)) = parked.inbox.send(resume) {
        let e = jsonrpc::error_line(
            Some(&r.client_id),
            INVALID_PARAMS,
            state::Refused::Gone.message(),
        );
        return Response::new(200)
            .header("content-type", "application/json")
            .body(Body::Bytes(e.into_bytes()));
    }
    sse(rx)
}

const INVALID_PARAMS: i64 = -32602;

/// The child's capabilities (raw JSON) have `resources.subscribe: true`.
pub(crate) fn subscribable(capabilities: &str) -> bool {
    serde_json::from_str::<serde_json::Value>(capabilities)
        .is_ok_and(|c| c["resources"]["subscribe"] == true)
}

/// The `_meta` log level a request asks for (0 = debug).
pub(crate) fn log_level(env: &envelope::Envelope) -> Option<u8> {
    env.log_level
        .and_then(envelope::string)
        .and_then(|l| shared::child::LOG_LEVELS.iter().position(|x| *x == l))
        .map(|l| l as u8)
}

/// What a `subscriptions/listen` request asks for (`params.notifications`).
pub(crate) fn listen_filter(line: &str) -> Filter {
    #[derive(serde::Deserialize)]
    struct P<'a> {
        #[serde(borrow)]
        params: Option<Q<'a>>,
    }
    #[derive(serde::Deserialize)]
    struct Q<'a> {
        #[serde(borrow)]
        notifications: Option<&'a serde_json::value::RawValue>,
    }
    let n = serde_json::from_str::<P>(line)
        .ok()
        .and_then(|p| p.params?.notifications);
    Filter::parse(n)
}

/// ringgate's `server/discover` answer (ringgate's own JSON, with the
/// capabilities, instructions and serverInfo, raw JSON, as the child wrote
/// them or as ringgate merged them).
pub(crate) fn discover(
    id: &str,
    capabilities: &str,
    instructions: Option<&str>,
    server_info: Option<&str>,
    ttl_ms: u64,
) -> Response {
    let mut r = format!(
        r#"{{"jsonrpc":"2.0","id":{id},"result":{{"supportedVersions":{},"capabilities":{capabilities}"#,
        checks::supported_json(),
    );
    if let Some(i) = instructions {
        r.push_str(",\"instructions\":");
        r.push_str(i);
    }
    r.push_str(&format!(
        r#","ttlMs":{ttl_ms},"cacheScope":"private","resultType":"complete""#
    ));
    if let Some(s) = server_info {
        r.push_str(",\"_meta\":{\"io.modelcontextprotocol/serverInfo\":");
        r.push_str(s);
        r.push('}');
    }
    r.push_str("}}");
    Response::new(200)
        .header("content-type", "application/json")
        .body(Body::Bytes(r.into_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_with_data_is_json_rpc() {
        let r = error(
            400,
            Some("7"),
            -32022,
            "Unsupported",
            Some(r#"{"supported":["2026-07-28"],"requested":"x"}"#),
        );
        let Body::Bytes(b) = &r.body else { panic!() };
        let v: serde_json::Value = serde_json::from_slice(b).unwrap();
        assert_eq!(v["id"], 7);
        assert_eq!(v["error"]["code"], -32022);
        assert_eq!(v["error"]["data"]["supported"][0], "2026-07-28");
        assert_eq!(r.status, 400);
    }
}
