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

use std::fmt::Write;
use std::rc::Rc;
use std::time::Instant;

use tracing::{debug, warn};

use crate::config::{ExtAuthz, FailureMode};
use crate::http::response::Response;
use crate::policy::cel::{ResponseVars, Value, Vars};
use crate::stats::{AuthzOutcome, Stats};
use cache::{Cache, Lookup};
use client::{AuthzClient, CheckRequest, CheckResponse, ClientConfig, Target};

/// A cached authorization answer.
#[derive(Debug)]
pub struct Decision {
    pub allowed: bool,
    /// The authorization service's status code.
    pub status: u16,
    /// `extauthz.<key>` values, in config order.
    pub metadata: Vec<(String, Value)>,
}

/// Why no decision could be had; logged, never shown to the client.
pub type Failure = Rc<str>;

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
}

impl AuthzState {
    pub fn new(cfg: &ExtAuthz) -> Result<AuthzState, String> {
        let target = Target::parse(&cfg.host)?;
        let mut cc = ClientConfig::new(target);
        cc.timeout = cfg.timeout;
        Ok(AuthzState {
            client: AuthzClient::new(cc),
            cache: Rc::new(Cache::new(cfg.cache.max_entries)),
        })
    }

    pub fn cache_len(&self) -> usize {
        self.cache.len()
    }
}

/// Runs the check for one request.
pub async fn check(state: &AuthzState, cfg: &ExtAuthz, vars: &Vars<'_>, stats: &Stats) -> Verdict {
    let (answer, source) = match render(cfg, vars) {
        Ok((req, key)) => lookup(state, cfg, vars, &req, &key, stats).await,
        Err(e) => (Err(e), Source::Lookup),
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
        Err(reason) => {
            warn!(reason = &*reason, "external authorization failed");
            match cfg.failure_mode {
                FailureMode::Allow => Verdict::Allow(None, source),
                FailureMode::Deny => Verdict::Deny(denied(403), source),
                FailureMode::DenyWithStatus(s) => Verdict::Deny(denied(s), source),
            }
        }
    }
}

fn denied(status: u16) -> Response {
    Response::text(status, "external authorization failed")
}

/// Builds the check request and its cache key.
fn render(cfg: &ExtAuthz, vars: &Vars) -> Result<(CheckRequest, String), Failure> {
    let fail = |what: &str, e: String| -> Failure { format!("{what}: {e}").into() };
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
    let key = match &cfg.cache.key {
        Some(k) => k.eval_string(vars).map_err(|e| fail("cache key", e))?,
        None => {
            let mut k = String::with_capacity(req.path.len() + req.authority.len() + 16);
            let _ = write!(k, "{} {} {}", req.method, req.path, req.authority);
            for (n, v) in &req.headers {
                let _ = write!(k, "\n{n}: {v}");
            }
            k
        }
    };
    Ok((req, key))
}

async fn lookup(
    state: &AuthzState,
    cfg: &ExtAuthz,
    vars: &Vars<'_>,
    req: &CheckRequest,
    key: &str,
    stats: &Stats,
) -> (Answer, Source) {
    let leader = match state.cache.lookup(key, Instant::now()) {
        Lookup::Hit(a) => return (a, Source::Cache),
        Lookup::Wait(w) => {
            let a = w
                .await
                .unwrap_or_else(|| Err("the shared lookup was abandoned".into()));
            return (a, Source::Shared);
        }
        Lookup::Lead(l) => l,
    };
    let started = Instant::now();
    let answer = match state.client.send(req).await {
        Ok(resp) => decide(cfg, vars, &resp),
        Err(e) => Err(format!("authorization service: {e}").into()),
    };
    stats.whois(started.elapsed());
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
    leader.finish(answer.clone(), ttl, Instant::now());
    (answer, Source::Lookup)
}

fn decide(cfg: &ExtAuthz, vars: &Vars, resp: &CheckResponse) -> Answer {
    match resp.status {
        200..=299 => {}
        400..=499 => {
            return Ok(Rc::new(Decision {
                allowed: false,
                status: resp.status,
                metadata: Vec::new(),
            }))
        }
        s => return Err(format!("authorization service answered {s}").into()),
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
        let v = expr
            .eval(&vars)
            .map_err(|e| Failure::from(format!("metadata {key}: {e}")))?;
        metadata.push((key.clone(), v));
    }
    Ok(Rc::new(Decision {
        allowed: true,
        status: resp.status,
        metadata,
    }))
}
