//! The extAuthz stage: render the check request from the route's CEL, answer
//! from the worker's cache or ask the authorization service (tailscaled's
//! whois), and turn the answer into allow, deny or failure.
//!
//! Outcomes:
//! - 2xx whose metadata all evaluates: allowed, cached for the positive TTL;
//! - 4xx: denied, cached for the negative TTL;
//! - anything else (5xx, transport error, timeout, a 2xx whose metadata cannot
//!   be read): a failure, never cached, handled by `failureMode`.
//!
//! The answer's body never reaches the client.

pub mod cache;
pub mod client;

use std::cell::Cell;
use std::rc::Rc;
use std::time::Instant;

use thiserror::Error;
use tracing::{debug, warn};

use crate::config::{ExtAuthz, FailureMode};
use crate::http::response::Response;
use crate::policy::cel::{EvalError, ResponseVars, Value, Vars};
use crate::stats::{AuthzOutcome, Stats};
use cache::{Cache, Lookup};
use client::{
    AuthzClient, CheckRequest, CheckResponse, ClientConfig, ClientError, Target, TargetError,
};

/// A cached authorization answer.
#[derive(Debug)]
pub struct Decision {
    pub allowed: bool,
    /// The authorization service's status code.
    pub status: u16,
    /// `extauthz.<key>` values, in config order.
    pub metadata: Vec<(String, Value)>,
    /// The metadata as `key=value` lines: who a session belongs to. Made
    /// once per answer, not per request.
    pub identity: String,
}

/// `key=value` lines of an answer's metadata.
fn identity_of(metadata: &[(String, Value)]) -> String {
    let mut id = String::new();
    for (k, v) in metadata {
        id.push_str(k);
        id.push('=');
        id.push_str(&v.to_string());
        id.push('\n');
    }
    id
}

/// Why no decision could be had; logged, never shown to the client. Cloned
/// to every request that shared the lookup, so it holds no owned I/O error.
#[derive(Debug, Clone, Error)]
pub enum Failure {
    /// The check request or the cache key could not be rendered.
    #[error("{what}: {reason}")]
    Render { what: String, reason: String },
    /// The request that led the shared lookup went away without an answer.
    #[error("the shared lookup was abandoned")]
    Abandoned,
    #[error("authorization service: {0}")]
    Service(Rc<ClientError>),
    /// Neither an allow (2xx) nor a deny (4xx).
    #[error("authorization service answered {0}")]
    Status(u16),
    /// A 2xx whose metadata cannot be read: no identity, so no allow.
    #[error("metadata {key}: {reason}")]
    Metadata { key: String, reason: String },
}

type Answer = Result<Rc<Decision>, Failure>;

/// How the lookup went, for the access log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    Cache,
    /// Waited for another request's lookup of the same key.
    Shared,
    Lookup,
}

impl Source {
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Cache => "cache",
            Source::Shared => "shared",
            Source::Lookup => "lookup",
        }
    }
}

/// What the stage tells the pipeline.
pub enum Verdict {
    /// Go on. `None` when `failureMode: allow` let a failed check through.
    Allow(Option<Rc<Decision>>, Source),
    Deny(Response, Source),
}

/// One extAuthz policy's per-worker state: its client and its cache.
pub struct AuthzState {
    client: AuthzClient,
    cache: Rc<Cache<Answer>>,
    /// Reused for each request's cache key.
    key_buf: Cell<String>,
}

impl AuthzState {
    pub fn new(cfg: &ExtAuthz) -> Result<AuthzState, TargetError> {
        let target = Target::parse(&cfg.host)?;
        let mut cc = ClientConfig::new(target);
        cc.timeout = cfg.timeout;
        cc.max_connections = cfg.connections.max;
        cc.max_waiting = cfg.connections.max_waiting;
        Ok(AuthzState {
            client: AuthzClient::new(cc),
            cache: Rc::new(Cache::new(cfg.cache.max_entries)),
            key_buf: Cell::new(String::with_capacity(128)),
        })
    }

    pub fn cache_len(&self) -> usize {
        self.cache.len()
    }
}

/// A connection's copy of the last cached answer of a policy whose cache
/// key reads only `source.*` ([`ExtAuthz::per_connection`]): every request
/// on the connection has the same key, so the same answer until the cache's
/// copy expires, without rendering the key or touching the LRU. Failures are
/// never cached, so never kept here either.
#[derive(Default)]
pub struct ConnMemo {
    /// The policy's id in its generation (a connection keeps its generation),
    /// when the answer expires, and the answer.
    slot: Option<(usize, Instant, Rc<Decision>)>,
}

impl ConnMemo {
    fn get(&self, cfg: &ExtAuthz, now: Instant) -> Option<Rc<Decision>> {
        match &self.slot {
            Some((id, expires, d)) if *id == cfg.id && now < *expires => Some(d.clone()),
            _ => None,
        }
    }
}

/// Runs the check for one request. `memo` is the connection's.
pub async fn check(
    state: &AuthzState,
    cfg: &ExtAuthz,
    vars: &Vars<'_>,
    stats: &Stats,
    memo: &mut ConnMemo,
) -> Verdict {
    let remembered = if cfg.per_connection {
        memo.get(cfg, Instant::now())
    } else {
        None
    };
    let (answer, source) = match remembered {
        Some(d) => (Ok(d), Source::Cache),
        None => {
            let (answer, source, expires) = lookup(state, cfg, vars, stats).await;
            if let (true, Ok(d), Some(e)) = (cfg.per_connection, &answer, expires) {
                memo.slot = Some((cfg.id, e, d.clone()));
            }
            (answer, source)
        }
    };
    let outcome = match &answer {
        Ok(d) if d.allowed => AuthzOutcome::Allowed,
        Ok(_) => AuthzOutcome::Denied,
        Err(_) => AuthzOutcome::Error,
    };
    stats.authz(outcome, source == Source::Cache);
    match answer {
        Ok(d) if d.allowed => Verdict::Allow(Some(d), source),
        Ok(_) => Verdict::Deny(denied(403), source),
        Err(failure) => {
            let reason = failure.to_string();
            warn!(reason = reason.as_str(), "external authorization failed");
            match cfg.failure_mode {
                // An overloaded service must not open the door: a flood of
                // strangers would otherwise let itself in.
                FailureMode::Allow if failure.is_refusal() => Verdict::Deny(denied(403), source),
                FailureMode::Allow => Verdict::Allow(None, source),
                FailureMode::Deny => Verdict::Deny(denied(403), source),
                FailureMode::DenyWithStatus(s) => Verdict::Deny(denied(s), source),
            }
        }
    }
}

impl Failure {
    /// No call was made: every connection stayed busy, or too many checks
    /// already waited for one.
    pub fn is_refusal(&self) -> bool {
        matches!(self, Failure::Service(e) if e.is_refusal())
    }
}

fn denied(status: u16) -> Response {
    Response::text(status, "external authorization failed")
}

fn fail(what: &str, e: EvalError) -> Failure {
    Failure::Render {
        what: what.to_string(),
        reason: e.to_string(),
    }
}

/// Builds the check request; done only when the cache has no answer.
fn render(cfg: &ExtAuthz, vars: &Vars) -> Result<CheckRequest, Failure> {
    let mut req = CheckRequest {
        path: cfg.path.eval_string(vars).map_err(|e| fail("path", e))?,
        ..CheckRequest::default()
    };
    for (name, expr) in &cfg.add_request_headers {
        let v = expr.eval_string(vars).map_err(|e| fail(name, e))?;
        match name.as_str() {
            ":authority" => req.authority = v,
            ":method" => req.method = v,
            _ => req.headers.push((name.clone(), v)),
        }
    }
    Ok(req)
}

/// Writes the cache key to `out`: `cache.key` when configured, else what
/// the check request would be made of (method, path, authority, headers).
/// Renders fast-path expressions without allocating.
fn render_key(cfg: &ExtAuthz, vars: &Vars, out: &mut String) -> Result<(), Failure> {
    if let Some(k) = &cfg.cache.key {
        return k
            .eval_string_into(vars, out)
            .map_err(|e| fail("cache key", e));
    }
    let pseudo = |name: &str| {
        cfg.add_request_headers
            .iter()
            .rev()
            .find(|(n, _)| n == name)
    };
    match pseudo(":method") {
        Some((n, e)) => e.eval_string_into(vars, out).map_err(|e| fail(n, e))?,
        None => out.push_str("GET"),
    }
    out.push(' ');
    cfg.path
        .eval_string_into(vars, out)
        .map_err(|e| fail("path", e))?;
    out.push(' ');
    if let Some((n, e)) = pseudo(":authority") {
        e.eval_string_into(vars, out).map_err(|e| fail(n, e))?;
    }
    for (name, expr) in &cfg.add_request_headers {
        if !name.starts_with(':') {
            out.push('\n');
            out.push_str(name);
            out.push_str(": ");
            expr.eval_string_into(vars, out)
                .map_err(|e| fail(name, e))?;
        }
    }
    Ok(())
}

async fn lookup(
    state: &AuthzState,
    cfg: &ExtAuthz,
    vars: &Vars<'_>,
    stats: &Stats,
) -> (Answer, Source, Option<Instant>) {
    // The key is rendered into a buffer the state keeps between requests.
    let mut key = state.key_buf.take();
    key.clear();
    let found = match render_key(cfg, vars, &mut key) {
        Ok(()) => state.cache.lookup(&key, Instant::now()),
        Err(e) => {
            state.key_buf.set(key);
            return (Err(e), Source::Lookup, None);
        }
    };
    let leader = match found {
        Lookup::Hit(a, expires) => {
            state.key_buf.set(key);
            return (a, Source::Cache, Some(expires));
        }
        Lookup::Wait(w) => {
            state.key_buf.set(key);
            let a = w.await.unwrap_or(Err(Failure::Abandoned));
            // When the leader's copy expires is not known here; the next
            // request's cache hit tells.
            return (a, Source::Shared, None);
        }
        Lookup::Lead(l) => l,
    };
    let req = match render(cfg, vars) {
        Ok(r) => r,
        Err(e) => {
            leader.finish(Err(e.clone()), None, Instant::now());
            return (Err(e), Source::Lookup, None);
        }
    };
    let started = Instant::now();
    let call = state.client.call(&req).await;
    let refused = call.result.as_ref().is_err_and(|e| e.is_refusal());
    if call.waited {
        stats.authz_wait(refused);
    }
    let answer = match call.result {
        Ok(resp) => decide(cfg, vars, &resp),
        // A refusal is a failure like any other: never cached, failureMode
        // decides, and a deny is a deny, never an allow.
        Err(e) => Err(Failure::Service(Rc::new(e))),
    };
    if !refused {
        stats.whois(started.elapsed());
    }
    debug!(
        path = req.path,
        elapsed_us = started.elapsed().as_micros() as u64,
        ok = answer.is_ok(),
        "authz lookup"
    );
    let ttl = match &answer {
        Ok(d) if d.allowed => Some(cfg.cache.ttl),
        Ok(_) => Some(cfg.cache.negative_ttl),
        Err(_) => None,
    };
    let now = Instant::now();
    leader.finish(answer.clone(), ttl, now);
    let expires = ttl.filter(|_| state.cache.enabled()).map(|t| now + t);
    (answer, Source::Lookup, expires)
}

fn decide(cfg: &ExtAuthz, vars: &Vars, resp: &CheckResponse) -> Answer {
    match resp.status {
        200..=299 => {}
        400..=499 => {
            return Ok(Rc::new(Decision {
                allowed: false,
                status: resp.status,
                metadata: Vec::new(),
                identity: String::new(),
            }))
        }
        s => return Err(Failure::Status(s)),
    }
    let headers: Vec<(&str, &[u8])> = resp
        .headers
        .iter()
        .map(|(n, v)| (n.as_str(), v.as_slice()))
        .collect();
    let vars = Vars {
        response: Some(ResponseVars {
            code: resp.status,
            body: &resp.body,
            headers: &headers,
        }),
        ..*vars
    };
    let mut metadata = Vec::with_capacity(cfg.metadata.len());
    for (key, expr) in &cfg.metadata {
        // An answer we cannot read is not an identity: fail, do not cache.
        let v = expr.eval(&vars).map_err(|e| Failure::Metadata {
            key: key.clone(),
            reason: e.to_string(),
        })?;
        metadata.push((key.clone(), v));
    }
    Ok(Rc::new(Decision {
        allowed: true,
        status: resp.status,
        identity: identity_of(&metadata),
        metadata,
    }))
}

#[cfg(test)]
mod memo_tests;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    fn ext_authz(yaml: &str) -> ExtAuthz {
        let cfg = Config::from_yaml(yaml).expect("valid config");
        let route = &cfg.binds[0].listeners[0].routes[0];
        route.policies.ext_authz.clone().expect("extAuthz")
    }

    /// An extAuthz policy with these keys (indented under `extAuthz:`).
    pub(super) fn policy(keys: &str) -> ExtAuthz {
        ext_authz(&format!(
            "binds:
- port: 0
  listeners:
  - routes:
    - policies:
        directResponse: {{body: ok, status: 200}}
        extAuthz:
          host: 127.0.0.1:1
{keys}"
        ))
    }

    fn vars(ip: &str) -> Vars<'_> {
        Vars {
            source_address: ip,
            method: "POST",
            path: "/mcp",
            ..Vars::default()
        }
    }

    fn key(cfg: &ExtAuthz, ip: &str) -> String {
        let mut out = String::from("left over from the last request");
        out.clear();
        render_key(cfg, &vars(ip), &mut out).expect("key renders");
        out
    }

    /// The key names everything the check request is made of, so two requests
    /// share an answer only when they would send the same check.
    #[test]
    fn default_key_is_the_check_request() {
        let seed = ext_authz(include_str!("../config/tailscale.yaml"));
        let k = key(&seed, "100.64.0.7");
        assert_eq!(
            k,
            "GET /localapi/v0/whois?addr=100.64.0.7 local-tailscaled.sock"
        );
        let req = render(&seed, &vars("100.64.0.7")).unwrap();
        assert_eq!(k, format!("{} {} {}", req.method, req.path, req.authority));
        assert_ne!(k, key(&seed, "100.64.0.8"));

        let cfg = policy(
            r#"          protocol:
            http:
              path: '"/check?m=" + request.method'
              addRequestHeaders:
                x-peer: source.address
                :method: '"HEAD"'
                x-path: request.path"#,
        );
        assert_eq!(
            key(&cfg, "127.0.0.2"),
            "HEAD /check?m=POST \nx-peer: 127.0.0.2\nx-path: /mcp"
        );
    }

    #[test]
    fn configured_key_replaces_the_default() {
        let cfg = policy(
            r#"          protocol:
            http:
              path: '"/whois?addr=" + source.address + "&p=" + request.path'
          cache: {key: source.address}"#,
        );
        assert_eq!(key(&cfg, "127.0.0.3"), "127.0.0.3");
    }

    /// What the log says about a failure is what it said when failures
    /// were strings.
    #[test]
    fn failure_texts() {
        let cfg = policy(
            r#"          protocol:
            http:
              path: '"/w?" + request.headers["x-none"]'"#,
        );
        let Err(Failure::Render { what, .. }) = render(&cfg, &vars("127.0.0.1")) else {
            panic!("a missing header does not render")
        };
        assert_eq!(what, "path");
        let closed = Failure::Service(Rc::new(ClientError::Closed));
        assert_eq!(
            closed.to_string(),
            "authorization service: connection closed before a complete answer"
        );
        assert_eq!(
            Failure::Status(502).to_string(),
            "authorization service answered 502"
        );
        assert_eq!(
            Failure::Abandoned.to_string(),
            "the shared lookup was abandoned"
        );
        let m = Failure::Metadata {
            key: "node".into(),
            reason: "no such key".into(),
        };
        assert_eq!(m.to_string(), "metadata node: no such key");
        let r = fail("x-peer", EvalError::Unconvertible("map".into()));
        assert_eq!(r.to_string(), "x-peer: cannot convert a value of type map");
    }
}
