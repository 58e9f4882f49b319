//! 2026-07-28 requests to a route with several targets, served by each
//! target's shared children (per worker, as for one target), under the
//! names a handshake-era session over those targets uses
//! ([`Naming`](crate::mcp::multiplex::Naming): `<target>_<name>`,
//! `<target>+<uri>`, or lookup under `prefixMode: never`).
//!
//! - A call (`tools/call`, `prompts/get`, `resources/read`,
//!   `completion/complete`) goes to the target its name or URI names; only
//!   that string is rewritten in the line the child gets. Under `never`
//!   ringgate asks each target's child for its list (every page) and routes
//!   to the one that serves the name. MRTR works per target: the
//!   `requestState` is bound to the target and the child's name.
//! - A list goes to every target (or, with ringgate's cursor, to the
//!   targets with pages left) and is answered once, merged as sessions
//!   merge it ([`merge_list`](crate::mcp::multiplex::merge_list)), with
//!   `resultType`, `ttlMs` and `cacheScope`; under `mcpAuthorization` each
//!   child's items are filtered with its own target as `mcp.tool.target`.
//! - `server/discover`: the union of the targets' capabilities, their
//!   instructions each under `[target]`, ringgate's own `serverInfo`.
//! - `subscriptions/listen`: one stream of every target's `list_changed`,
//!   and resource updates for `<target>+<uri>` subscriptions, their URIs
//!   renamed back.
//! - `failClosed`: a target without a working child fails the request (503,
//!   or the child's JSON-RPC error for a list); `failOpen`: it is left out.

use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use super::{checks, envelope, splice, state, CACHEABLE, MRTR};
use super::{discover as discover_answer, error, retry, sse as sse_response, unavailable};
use crate::config::{McpBackend, TargetFailureMode};
use crate::http::response::{Body, Response};
use crate::mcp::authz::{self, RouteAuthz};
use crate::mcp::jsonrpc::{self, Message, Outgoing};
use crate::mcp::multiplex::{self as mx, ListKind, Naming};
use crate::mcp::shared::listen::{Filter, STREAM_DEPTH};
use crate::mcp::shared::{Mrtr, Opts, Shared, SharedChild, SubmitError, Target, Unavailable};
use crate::mcp::sse;
use crate::policy::mcp_authz::ListFilter;
use crate::request::McpLog;

/// JSON-RPC "Invalid params": an unknown name or URI, as sessions answer.
const INVALID_PARAMS: i64 = -32602;
/// Bounds the pages read to find a name under `prefixMode: never`.
const MAX_LOOKUP_PAGES: usize = 64;
/// How often a listen relay checks that its client is still there.
const RELAY_CHECK: Duration = Duration::from_millis(250);

/// One modern request (already past the header checks) to a route with
/// several targets.
pub struct Call<'a> {
    pub shared: &'a Shared,
    pub backend: &'a McpBackend,
    pub line: &'a str,
    pub env: &'a envelope::Envelope<'a>,
    pub method: &'a str,
    pub headers: &'a [(&'a str, &'a [u8])],
    pub identity: &'a str,
}

impl Call<'_> {
    fn target(&self, t: usize) -> Rc<Target> {
        self.shared.target(&self.backend.targets[t])
    }
    fn fail_open(&self) -> bool {
        self.backend.failure_mode == TargetFailureMode::FailOpen
    }
    fn id(&self) -> &str {
        self.env.id.map_or("null", |i| i.get())
    }
    fn ttl_ms(&self) -> u64 {
        self.shared.settings().cache_ttl.as_millis() as u64
    }
    /// A ready child of target `t`; `Ok(None)`: the target is down and
    /// left out (failOpen); `Err`: the answer (failClosed).
    async fn child(&self, t: usize) -> Result<Option<Rc<SharedChild>>, Response> {
        match self.target(t).pick_unless_failing().await {
            Ok(c) => Ok(Some(c)),
            Err(_) if self.fail_open() => Ok(None),
            Err(u) => Err(unavailable(u)),
        }
    }
}

fn json(line: &str) -> Response {
    Response::new(200)
        .header("content-type", "application/json")
        .body(Body::Bytes(line.as_bytes().to_vec()))
}

/// Serves the request; `messages` is the POST's one message (for the
/// authorization decision).
pub async fn post(
    c: Call<'_>,
    messages: &[Message],
    authz: Option<RouteAuthz<'_>>,
    log: &mut McpLog,
) -> Response {
    let naming = Naming::from_backend(c.backend);
    let mut list = None;
    if let Some(a) = &authz {
        // Calls: every target that may serve the name must allow it (under
        // `never`), as for sessions; lists: filtered per target below.
        let (decided, logged) = authz::decide(a, messages);
        log.authz = logged.decision;
        log.authz_name = logged.name;
        if let Some(line) = decided.refusal(0) {
            return json(line);
        }
        list = decided.list(0);
    }
    match c.method {
        "server/discover" => discover(&c, &naming).await,
        "subscriptions/listen" => listen(&c, &naming, authz.as_ref()).await,
        m => match ListKind::of_method(m) {
            Some(kind) => fan_out(&c, &naming, kind, list).await,
            None => routed(&c, &naming, log).await,
        },
    }
}

/// The target of a call and the line its child gets.
async fn route(c: &Call<'_>, naming: &Naming) -> Result<(usize, String), Response> {
    let line = c.line;
    let id = c.id();
    let unknown = |what: &str| {
        let message = format!("Unknown {what}");
        json(&jsonrpc::error_line(Some(id), INVALID_PARAMS, &message))
    };
    // Anything else names no target: the first one serves it.
    let Some((what, span, uri)) = mx::named(line, c.method) else {
        return Ok((0, line.to_string()));
    };
    let Some(span) = span else {
        return Err(unknown(what));
    };
    if !uri && !naming.prefix_names {
        let name = mx::decode_str(&line[span]).unwrap_or_default();
        let kind = match what {
            "tool" => ListKind::Tools,
            _ => ListKind::Prompts,
        };
        return match lookup(c, naming, kind, &name).await? {
            Some(t) => Ok((t, line.to_string())),
            None => Err(unknown(what)),
        };
    }
    naming
        .unexpose(line, span, uri)
        .ok_or_else(|| unknown(what))
}

/// Under `prefixMode: never`: the one target whose child lists `name`.
async fn lookup(
    c: &Call<'_>,
    naming: &Naming,
    kind: ListKind,
    name: &str,
) -> Result<Option<usize>, Response> {
    let method = match kind {
        ListKind::Tools => "tools/list",
        _ => "prompts/list",
    };
    let mut owners = Vec::new();
    for t in 0..naming.targets.len() {
        let Some(child) = c.child(t).await? else {
            continue;
        };
        let mut cursor: Option<String> = None;
        for _ in 0..MAX_LOOKUP_PAGES {
            let params = match &cursor {
                Some(raw) => format!(r#"{{"cursor":{raw}}}"#),
                None => "{}".to_string(),
            };
            let Some(answer) = child.own_request(method, &params).await else {
                break;
            };
            let text = String::from_utf8_lossy(&answer);
            if mx::names(kind, &text).iter().any(|n| n == name) {
                owners.push(t);
                break;
            }
            cursor = mx::nested(&text, "result", "nextCursor")
                .map(|r| text[r].to_string())
                .filter(|raw| raw.starts_with('"'));
            if cursor.is_none() {
                break;
            }
        }
    }
    match owners.as_slice() {
        [] => Ok(None),
        [t] => Ok(Some(*t)),
        _ => {
            let who: Vec<&str> = owners.iter().map(|t| naming.targets[*t].as_str()).collect();
            let message = format!(
                "{} {name:?} is served by targets {} (prefixMode never needs unique names)",
                &kind.key()[..kind.key().len() - 1],
                who.join(" and ")
            );
            Err(json(&jsonrpc::error_line(
                Some(c.id()),
                INVALID_PARAMS,
                &message,
            )))
        }
    }
}

/// A call: to its target's shared child, its answer (and progress) on the
/// request's stream; a `resources/read` answer with its URIs as exposed.
async fn routed(c: &Call<'_>, naming: &Naming, log: &mut McpLog) -> Response {
    let (t, line) = match route(c, naming).await {
        Ok(r) => r,
        Err(answer) => return answer,
    };
    let cfg = &c.backend.targets[t];
    log.target = Some(cfg.name.clone());
    let id = c.id();
    let Some(env) = envelope::parse(&line) else {
        return error(
            400,
            Some(id),
            jsonrpc::INVALID_REQUEST,
            "Invalid Request",
            None,
        );
    };
    let target = c.target(t);
    if target.is_failing() {
        return unavailable(Unavailable::NotReady);
    }
    let child_name = env.name.or(env.uri).and_then(envelope::string);
    if c.method == "tools/call" {
        let info = match target.info().await {
            Ok(i) => i,
            Err(u) => return unavailable(u),
        };
        if let Some(p) = child_name.as_deref().and_then(|n| info.tool_params.get(n)) {
            if let Err(r) = checks::check_params(c.headers, &env, p) {
                return error(r.status, Some(id), r.code, &r.message, None);
            }
        }
    }
    let cache = CACHEABLE
        .contains(&c.method)
        .then(|| (c.ttl_ms(), "private"));
    let mut opts = Opts {
        cache,
        log_level: super::log_level(&env),
        ..Opts::default()
    };
    if MRTR.contains(&c.method) {
        let m = Mrtr {
            elicitation: envelope::declares(&env, "elicitation"),
            sampling: envelope::declares(&env, "sampling"),
            identity: state::digest(&[c.identity.as_bytes()]),
            binding: state::binding(c.method, child_name.as_deref().unwrap_or(""), cfg.key()),
        };
        if let Some(token) = env.request_state {
            let mut r = retry(&env, token, &m);
            r.body = match std::mem::replace(&mut r.body, Body::Bytes(Vec::new())) {
                Body::Stream(rx) => Body::Stream(expose_reads(rx, naming, t, c.method)),
                other => other,
            };
            return r;
        }
        opts.mrtr = Some(m);
    }
    let child = match target.pick_unless_failing().await {
        Ok(c) => c,
        Err(u) => return unavailable(u),
    };
    match child.submit(&line, &env, opts) {
        Ok(rx) => sse_response(expose_reads(rx, naming, t, c.method)),
        Err(SubmitError::Busy) => unavailable(Unavailable::Busy),
        Err(SubmitError::Dead) => unavailable(Unavailable::NotReady),
    }
}

/// The answer of a `resources/read` from target `t` with its contents'
/// URIs as the client knows them; other streams unchanged.
fn expose_reads(
    rx: flume::Receiver<Vec<u8>>,
    naming: &Naming,
    t: usize,
    method: &str,
) -> flume::Receiver<Vec<u8>> {
    if method != "resources/read" || !naming.prefix_uris {
        return rx;
    }
    let (tx, out) = flume::bounded(STREAM_DEPTH);
    let naming = naming.clone();
    monoio::spawn(async move {
        while let Ok(mut ev) = rx.recv_async().await {
            let line = sse::decode(&ev).into_iter().next().unwrap_or_default();
            if let Some(Outgoing::Response { .. }) = jsonrpc::peek(&line) {
                let text = String::from_utf8_lossy(&line);
                if let Some(l) = mx::expose_read(&naming, t, &text) {
                    ev = sse::event(l.as_bytes());
                }
            }
            if tx.send_async(ev).await.is_err() {
                break;
            }
        }
    });
    out
}

/// A list: to every target's child (or those ringgate's cursor names),
/// answered once with the merge of their answers.
async fn fan_out(
    c: &Call<'_>,
    naming: &Naming,
    kind: ListKind,
    list: Option<(crate::policy::mcp_authz::ListKind, Arc<ListFilter>)>,
) -> Response {
    let id = c.id().to_string();
    let all: Vec<usize> = (0..naming.targets.len()).collect();
    let Some(lines) = mx::list_requests(naming, c.line, &all) else {
        return json(&mx::bad_cursor(&id));
    };
    let mut streams = Vec::new();
    for (t, line) in lines {
        let child = match c.child(t).await {
            Ok(Some(child)) => child,
            Ok(None) => continue,
            Err(answer) => return answer,
        };
        let Some(env) = envelope::parse(&line) else {
            continue;
        };
        let name = &c.backend.targets[t].name;
        let opts = Opts {
            list: list.as_ref().map(|(k, f)| {
                let mut filter = (**f).clone();
                filter.target = name.clone();
                (*k, Arc::new(filter))
            }),
            ..Opts::default()
        };
        match child.submit(&line, &env, opts) {
            Ok(rx) => streams.push((t, rx)),
            Err(_) if c.fail_open() => continue,
            Err(SubmitError::Busy) => return unavailable(Unavailable::Busy),
            Err(SubmitError::Dead) => return unavailable(Unavailable::NotReady),
        }
    }
    if streams.is_empty() {
        return unavailable(Unavailable::NotReady);
    }
    let (tx, rx) = flume::bounded(STREAM_DEPTH);
    let (naming, fail_open, ttl) = (naming.clone(), c.fail_open(), c.ttl_ms());
    monoio::spawn(async move {
        let answers = mx::gather(streams, &tx).await;
        let list = mx::answers(&answers);
        let line = match mx::merge_list(&naming, kind, &id, &list, fail_open) {
            Ok(l) => splice::answer(&l, &id, Some((ttl, "private"))).unwrap_or(l),
            Err(e) if e.is_empty() => {
                jsonrpc::error_line(Some(&id), jsonrpc::INTERNAL_ERROR, "no MCP server answered")
            }
            Err(e) => e,
        };
        let _ = tx.send_async(sse::event(line.as_bytes())).await;
    });
    sse_response(rx)
}

/// `server/discover`: what the targets' children said in ringgate's own
/// `initialize`, merged as a session's `initialize` answer is.
async fn discover(c: &Call<'_>, naming: &Naming) -> Response {
    let mut results = Vec::new();
    for t in 0..naming.targets.len() {
        match c.child(t).await {
            Ok(Some(_)) => {}
            Ok(None) => continue,
            Err(answer) => return answer,
        }
        let info = match c.target(t).info().await {
            Ok(i) => i,
            Err(_) if c.fail_open() => continue,
            Err(u) => return unavailable(u),
        };
        let mut r = format!(r#"{{"capabilities":{}"#, info.capabilities);
        if let Some(i) = &info.instructions {
            r.push_str(&format!(r#","instructions":{i}"#));
        }
        r.push('}');
        results.push((t, r));
    }
    if results.is_empty() {
        return unavailable(Unavailable::NotReady);
    }
    let caps: Vec<&str> = results.iter().map(|(_, r)| r.as_str()).collect();
    let per: Vec<(usize, &str)> = results.iter().map(|(t, r)| (*t, r.as_str())).collect();
    let instructions = mx::merge_instructions(naming, &per);
    let instructions = (!instructions.is_empty()).then(|| format!("\"{instructions}\""));
    discover_answer(
        c.id(),
        &mx::merge_capabilities(&caps),
        instructions.as_deref(),
        Some(&mx::server_info()),
        c.ttl_ms(),
    )
}

/// `subscriptions/listen`: a listen stream on every target, each with the
/// `<target>+<uri>` subscriptions that name it (as its child knows them,
/// kept to what it can subscribe to and the caller may read); one
/// acknowledgement naming what all of them honour, then every target's
/// notifications, resource URIs renamed back.
async fn listen(c: &Call<'_>, naming: &Naming, authz: Option<&RouteAuthz<'_>>) -> Response {
    let asked = super::listen_filter(c.line);
    let mut per: Vec<Vec<String>> = vec![Vec::new(); naming.targets.len()];
    for uri in &asked.uris {
        if let Some((t, child_uri)) = naming.route_uri(uri) {
            per[t].push(child_uri.to_string());
        }
    }
    let id = c.id();
    let mut streams = Vec::new();
    for (t, uris) in per.into_iter().enumerate() {
        match c.child(t).await {
            Ok(Some(_)) => {}
            Ok(None) => continue,
            Err(answer) => return answer,
        }
        let target = c.target(t);
        let name = &c.backend.targets[t].name;
        let mut filter = Filter {
            uris,
            ..asked.clone()
        };
        if !filter.uris.is_empty() {
            match target.info().await {
                Ok(info) if super::subscribable(&info.capabilities) => {}
                Ok(_) => filter.uris.clear(),
                Err(_) if c.fail_open() => continue,
                Err(u) => return unavailable(u),
            }
            if let Some(a) = authz {
                filter.uris.retain(|uri| {
                    let kind = crate::policy::cel::McpKind::Resource;
                    let d = a
                        .rules
                        .decide_for(&a.vars, "resources/read", kind, name, uri);
                    d.allowed()
                });
            }
        }
        streams.push((t, target.listen(id, filter).await));
    }
    if streams.is_empty() {
        return unavailable(Unavailable::NotReady);
    }
    // Each target's acknowledgement comes first on its stream: what it
    // honoured of its URIs.
    let mut honoured = Vec::new();
    for (t, rx) in &streams {
        let Ok(ev) = rx.recv_async().await else {
            continue;
        };
        let line = sse::decode(&ev).into_iter().next().unwrap_or_default();
        let text = String::from_utf8_lossy(&line);
        let uris = mx::nested(&text, "params", "notifications")
            .and_then(|r| mx::member(&text[r.clone()], "resourceSubscriptions").map(|u| (r, u)))
            .and_then(|(r, u)| {
                serde_json::from_str::<Vec<String>>(&text[r.start + u.start..r.start + u.end]).ok()
            })
            .unwrap_or_default();
        for u in uris {
            honoured.push(format!("{}+{u}", naming.targets[*t]));
        }
    }
    let merged = Filter {
        uris: honoured,
        ..asked
    };
    let (tx, rx) = flume::bounded(STREAM_DEPTH);
    let _ = tx.try_send(sse::event(merged.ack(id).as_bytes()));
    for (t, from) in streams {
        monoio::spawn(relay(from, tx.clone(), naming.clone(), t));
    }
    sse_response(rx)
}

/// Relays one target's listen stream to the client's, a resource update's
/// URI as exposed; ends when either side does (checked every
/// [`RELAY_CHECK`], so the target's listener goes with its client).
async fn relay(
    from: flume::Receiver<Vec<u8>>,
    to: flume::Sender<Vec<u8>>,
    naming: Naming,
    t: usize,
) {
    loop {
        match monoio::time::timeout(RELAY_CHECK, from.recv_async()).await {
            Ok(Ok(ev)) => {
                let line = sse::decode(&ev).into_iter().next().unwrap_or_default();
                let text = String::from_utf8_lossy(&line);
                let renamed = match jsonrpc::peek(&line) {
                    Some(Outgoing::Notification { method, .. })
                        if method == "notifications/resources/updated" =>
                    {
                        mx::nested(&text, "params", "uri").map(|r| {
                            let uri = naming.expose_uri(t, &text[r.clone()]).into_owned();
                            mx::splice(&text, r, &uri)
                        })
                    }
                    _ => None,
                };
                let ev = renamed.map_or(ev, |l| sse::event(l.as_bytes()));
                // Lossy under a slow reader, as for one target.
                if let Err(flume::TrySendError::Disconnected(_)) = to.try_send(ev) {
                    return;
                }
            }
            Ok(Err(_)) => return,
            Err(_) if to.is_disconnected() => return,
            Err(_) => {}
        }
    }
}
