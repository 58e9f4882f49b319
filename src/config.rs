//! Configuration: the agentgateway YAML subset ringgate implements, compiled
//! into an immutable [`Config`] that worker threads share through an `Arc`.
//!
//! Loading is two steps: YAML text -> `serde_yaml_ng::Value`, then a walk
//! (`compile`) that checks every key, reports every problem with its YAML path,
//! and builds typed values. A key ringgate does not implement is an error, never
//! ignored: a security proxy that skips a policy it did not understand lets
//! people in.

mod capacity;
mod compile;
mod mcp;
mod policies;
pub mod yaml;

use std::net::IpAddr;
use std::path::Path;
use std::time::Duration;

pub use yaml::{ConfigError, ConfigErrors};

use crate::policy::cel::Expr;
pub use crate::policy::mcp_authz::{McpAuthorization, Rule, RuleKind};

pub use crate::http::limits::*;
pub use crate::policy::cors::Cors;

#[derive(Debug, Clone)]
pub struct Config {
    /// `config.workerThreads`; `None` means one worker per core.
    pub worker_threads: Option<usize>,
    pub io_driver: IoDriver,
    pub logging: Logging,
    pub limits: Limits,
    pub access_log: AccessLog,
    pub mcp: McpSettings,
    /// `config.statsAddr`: Prometheus metrics; `None` when set to `off`.
    pub stats_addr: Option<std::net::SocketAddr>,
    /// `config.readinessAddr`: `GET /healthz/ready`; `None` when `off`.
    pub readiness_addr: Option<std::net::SocketAddr>,
    /// `config.drainTimeout` (ringgate extension): how long a SIGTERM lets
    /// in-flight requests and streams run before they are closed.
    pub drain_timeout: Duration,
    pub binds: Vec<Bind>,
}

pub const DEFAULT_STATS_ADDR: &str = "127.0.0.1:15020";
pub const DEFAULT_READINESS_ADDR: &str = "127.0.0.1:15021";
pub const DEFAULT_DRAIN_TIMEOUT_MS: u64 = 30_000;

pub const DEFAULT_SESSION_IDLE_TIMEOUT_MS: u64 = 30 * 60 * 1000;
pub const DEFAULT_POOL_MIN_IDLE: usize = 1;
pub const DEFAULT_POOL_MAX_LIVE: usize = 64;
pub const DEFAULT_MAX_BUFFERED_MESSAGES: usize = 256;
pub const DEFAULT_MAX_LINE_BYTES: usize = 16 * 1024 * 1024;
pub const DEFAULT_STOP_GRACE_MS: u64 = 2_000;
pub const DEFAULT_REQUEST_TIMEOUT_MS: u64 = 60_000;
pub const DEFAULT_SHARED_CHILDREN: usize = 2;
pub const DEFAULT_MAX_IN_FLIGHT_PER_CHILD: usize = 32;

/// `config.mcp` (ringgate extension): sessions and the child pool.
#[derive(Debug, Clone)]
pub struct McpSettings {
    /// A session with no request (and no open GET stream) for this long ends.
    pub session_idle_timeout: Duration,
    /// Children spawned ahead of demand, per MCP target for the whole process
    /// (the workers split them).
    pub min_idle: usize,
    /// Children alive at once, across all workers.
    pub max_live: usize,
    /// Server-to-client messages kept while no GET stream is open.
    pub max_buffered_messages: usize,
    /// Longest stdout line accepted from a child.
    pub max_line_bytes: usize,
    /// Each step of a child's shutdown (stdin closed, SIGTERM) waits this long.
    pub stop_grace: Duration,
    /// A request the child has not answered this long after it was sent (or
    /// after its last progress notification) gets a JSON-RPC error, and the
    /// child gets `notifications/cancelled` for it.
    pub request_timeout: Duration,
    /// Shared, pre-initialized children per worker and target for
    /// 2026-07-28 requests (started by a target's first such request).
    pub shared_children: usize,
    /// Requests in flight on one shared child; beyond, 503.
    pub max_in_flight_per_child: usize,
    /// `ttlMs` of cacheable 2026-07-28 results and of `server/discover`.
    pub cache_ttl: Duration,
    /// How long a 2026-07-28 call that is waiting for the client's input
    /// (MRTR: its `requestState`) stays parked on its shared child.
    pub input_required_timeout: Duration,
}

impl Default for McpSettings {
    fn default() -> Self {
        McpSettings {
            session_idle_timeout: Duration::from_millis(DEFAULT_SESSION_IDLE_TIMEOUT_MS),
            min_idle: DEFAULT_POOL_MIN_IDLE,
            max_live: DEFAULT_POOL_MAX_LIVE,
            max_buffered_messages: DEFAULT_MAX_BUFFERED_MESSAGES,
            max_line_bytes: DEFAULT_MAX_LINE_BYTES,
            stop_grace: Duration::from_millis(DEFAULT_STOP_GRACE_MS),
            request_timeout: Duration::from_millis(DEFAULT_REQUEST_TIMEOUT_MS),
            shared_children: DEFAULT_SHARED_CHILDREN,
            max_in_flight_per_child: DEFAULT_MAX_IN_FLIGHT_PER_CHILD,
            cache_ttl: Duration::ZERO,
            input_required_timeout: Duration::from_secs(300),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IoDriver {
    /// io_uring when the kernel allows it, epoll otherwise.
    Auto,
    IoUring,
    Epoll,
}

impl std::str::FromStr for IoDriver {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(IoDriver::Auto),
            "io_uring" | "io-uring" | "iouring" => Ok(IoDriver::IoUring),
            "epoll" | "legacy" => Ok(IoDriver::Epoll),
            _ => Err(format!(
                "unknown io driver {s:?} (expected auto, io_uring or epoll)"
            )),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

#[derive(Debug, Clone, Default)]
pub struct Logging {
    /// A `tracing` filter such as `info` or `ringgate=debug`.
    pub level: Option<String>,
    pub format: LogFormat,
}

/// `frontendPolicies.accessLog`.
#[derive(Debug, Clone, Default)]
pub struct AccessLog {
    /// Extra fields, in config order.
    pub add: Vec<(String, Expr)>,
    /// A boolean; a line is written only when it is true.
    pub filter: Option<Expr>,
    /// Built-in fields to leave out.
    pub remove: Vec<String>,
}

#[derive(Debug, Clone)]
pub struct Bind {
    pub port: u16,
    /// ringgate extension `binds[].address`; `None` binds `[::]` dual-stack,
    /// or `0.0.0.0` when the host has no IPv6.
    pub address: Option<IpAddr>,
    pub listeners: Vec<Listener>,
}

#[derive(Debug, Clone)]
pub struct Listener {
    pub name: String,
    /// Serve only requests whose Host matches (`*.example.com` allowed).
    pub hostname: Option<String>,
    pub routes: Vec<Route>,
}

#[derive(Debug, Clone)]
pub struct Route {
    pub name: String,
    /// Empty means every path.
    pub matches: Vec<PathMatch>,
    pub policies: Policies,
    pub backend: Option<Backend>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PathMatch {
    Exact(String),
    /// Matches whole path segments: `/mcp` matches `/mcp` and `/mcp/x`, not `/mcpx`.
    Prefix(String),
}

#[derive(Debug, Clone, Default)]
pub struct Policies {
    pub cors: Option<Cors>,
    pub ext_authz: Option<ExtAuthz>,
    pub direct_response: Option<DirectResponse>,
    /// Per tool, prompt and resource; only on routes with an MCP backend.
    pub mcp_authorization: Option<McpAuthorization>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureMode {
    Deny,
    Allow,
    DenyWithStatus(u16),
}

#[derive(Debug, Clone)]
pub struct ExtAuthz {
    /// Numbers the extAuthz policies of a config, so that each worker keeps
    /// one client and one cache per policy.
    pub id: usize,
    /// `unix:/path` or `host:port`.
    pub host: String,
    /// The check request's path.
    pub path: Expr,
    /// `:authority` and `:method` are pseudo-headers.
    pub add_request_headers: Vec<(String, Expr)>,
    /// Evaluated once per authz answer.
    pub metadata: Vec<(String, Expr)>,
    /// Some expression reads `request.headers`, so they must be gathered.
    pub needs_headers: bool,
    /// The cache key reads only `source.*`, which a connection cannot change:
    /// a connection may keep its cached answer until that answer expires.
    pub per_connection: bool,
    pub failure_mode: FailureMode,
    pub timeout: Duration,
    pub cache: AuthzCache,
    /// ringgate extension: per-worker bound on the calls to `host`.
    pub connections: AuthzConnections,
}

pub const DEFAULT_AUTHZ_TIMEOUT_MS: u64 = 1_000;
pub const DEFAULT_AUTHZ_CACHE_TTL_MS: u64 = 30_000;
pub const DEFAULT_AUTHZ_CACHE_NEGATIVE_TTL_MS: u64 = 5_000;
pub const DEFAULT_AUTHZ_CACHE_MAX_ENTRIES: usize = 10_000;

pub const DEFAULT_AUTHZ_MAX_CONNECTIONS: usize = 32;
pub const DEFAULT_AUTHZ_MAX_WAITING: usize = 1024;

/// How many calls one worker makes to the authorization service at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AuthzConnections {
    /// Calls in flight, hence connections open (each call holds one).
    pub max: usize,
    /// Checks waiting, in arrival order, for a call to end; beyond this a
    /// check fails at once (failureMode applies).
    pub max_waiting: usize,
}

impl Default for AuthzConnections {
    fn default() -> Self {
        AuthzConnections {
            max: DEFAULT_AUTHZ_MAX_CONNECTIONS,
            max_waiting: DEFAULT_AUTHZ_MAX_WAITING,
        }
    }
}

#[derive(Debug, Clone)]
pub struct AuthzCache {
    /// The cache key; `None` keys by the rendered check request.
    pub key: Option<Expr>,
    pub ttl: Duration,
    pub negative_ttl: Duration,
    /// Zero disables the cache.
    pub max_entries: usize,
}

impl Default for AuthzCache {
    fn default() -> Self {
        AuthzCache {
            key: None,
            ttl: Duration::from_millis(DEFAULT_AUTHZ_CACHE_TTL_MS),
            negative_ttl: Duration::from_millis(DEFAULT_AUTHZ_CACHE_NEGATIVE_TTL_MS),
            max_entries: DEFAULT_AUTHZ_CACHE_MAX_ENTRIES,
        }
    }
}

#[derive(Debug, Clone)]
pub struct DirectResponse {
    pub status: u16,
    pub body: String,
}

#[derive(Debug, Clone)]
pub enum Backend {
    Mcp(McpBackend),
}

/// `backends[].mcp`: the stdio targets one route serves as one MCP server.
#[derive(Debug, Clone)]
pub struct McpBackend {
    /// At least one; names are unique and valid prefixes.
    pub targets: Vec<McpTarget>,
    pub prefix_mode: PrefixMode,
    pub failure_mode: TargetFailureMode,
    /// YAML path of its `targets` list, for errors found after compiling
    /// (the `prefixMode: never` probe, `mcp::probe`).
    pub targets_path: String,
    /// [`McpBackend::key`], made once: requests look sessions up by it.
    pub key: std::sync::OnceLock<String>,
}

/// `mcp.targets[]`: one stdio MCP server.
#[derive(Debug, Clone)]
pub struct McpTarget {
    /// Prefixes its tools and prompts (`<name>_<tool>`) and resource URIs
    /// (`<name>+<uri>`) when several targets are served.
    pub name: String,
    pub cmd: String,
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
    /// [`McpTarget::key`], made once: modern requests find their shared
    /// children by it. A compiled config is not changed afterwards.
    pub key: std::sync::OnceLock<String>,
}

/// `mcp.prefixMode` (agentgateway's spelling).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PrefixMode {
    /// Prefix only when there are several targets.
    #[default]
    Conditional,
    Always,
    /// Never prefix: a call is routed by looking its name up in the targets'
    /// lists, so names must be unique across targets.
    Never,
}

/// `mcp.failureMode` (agentgateway's spelling).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TargetFailureMode {
    /// A failing target fails the session.
    #[default]
    FailClosed,
    /// A failing target leaves the session; the healthy ones serve on.
    FailOpen,
}

impl McpTarget {
    /// Identifies what a pool spawns: a reload that keeps it keeps the pool.
    pub fn key(&self) -> &str {
        self.key.get_or_init(|| {
            let mut k = format!("{}\0{}", self.name, self.cmd);
            for a in &self.args {
                k.push('\0');
                k.push_str(a);
            }
            for (n, v) in &self.env {
                k.push_str(&format!("\0{n}={v}"));
            }
            k
        })
    }
}

impl McpBackend {
    /// Identifies a backend: a reload that keeps it keeps its sessions. With
    /// one target and the default modes, the target's own key.
    pub fn key(&self) -> &str {
        self.key.get_or_init(|| {
            let mut k = self
                .targets
                .iter()
                .map(McpTarget::key)
                .collect::<Vec<_>>()
                .join("\x01");
            if self.prefix_mode != PrefixMode::default()
                || self.failure_mode != TargetFailureMode::default()
            {
                k.push_str(&format!(
                    "\x01{:?}/{:?}",
                    self.prefix_mode, self.failure_mode
                ));
            }
            k
        })
    }

    /// Whether tool and prompt names carry the target's prefix.
    pub fn prefixes_names(&self) -> bool {
        match self.prefix_mode {
            PrefixMode::Always => true,
            PrefixMode::Never => false,
            PrefixMode::Conditional => self.targets.len() > 1,
        }
    }

    /// Whether resource URIs carry the target (`<target>+<uri>`): with
    /// several targets whatever the prefix mode, or under `always`.
    pub fn prefixes_uris(&self) -> bool {
        self.targets.len() > 1 || self.prefix_mode == PrefixMode::Always
    }

    /// Whether sessions go through the multiplexer (several targets, or
    /// names rewritten); otherwise a session is the plain byte-exact bridge.
    pub fn is_multiplexing(&self) -> bool {
        self.prefixes_uris()
    }
}

impl Config {
    /// Parses and compiles a config from YAML text, reporting every problem.
    pub fn from_yaml(text: &str) -> Result<Config, ConfigErrors> {
        let value: serde_yaml_ng::Value = serde_yaml_ng::from_str(text).map_err(|e| {
            let mut errs = ConfigErrors::default();
            let at = e
                .location()
                .map(|l| format!(" (line {}, column {})", l.line(), l.column()))
                .unwrap_or_default();
            errs.push("", format!("invalid YAML{at}: {e}"));
            errs
        })?;
        compile::compile(&value)
    }

    pub fn from_file(path: &Path) -> Result<Config, ConfigErrors> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            let mut errs = ConfigErrors::default();
            errs.push("", format!("cannot read {}: {e}", path.display()));
            errs
        })?;
        Config::from_yaml(&text)
    }
}

impl Route {
    /// How well this route matches `path`: `None` for no match, else a rank
    /// where higher is more specific (exact beats prefix, longer prefix wins).
    pub fn match_rank(&self, path: &str) -> Option<usize> {
        let path = path.split('?').next().unwrap_or(path);
        if self.matches.is_empty() {
            return Some(0);
        }
        self.matches
            .iter()
            .filter_map(|m| match m {
                PathMatch::Exact(p) => (p == path).then_some(usize::MAX),
                PathMatch::Prefix(p) => prefix_matches(p, path).then_some(p.len() + 1),
            })
            .max()
    }
}

fn prefix_matches(prefix: &str, path: &str) -> bool {
    let prefix = prefix.trim_end_matches('/');
    if prefix.is_empty() {
        return true;
    }
    match path.strip_prefix(prefix) {
        Some(rest) => rest.is_empty() || rest.starts_with('/'),
        None => false,
    }
}

impl Listener {
    /// The most specific route for `path`; ties go to the first in config order.
    pub fn route(&self, path: &str) -> Option<&Route> {
        let mut best: Option<(usize, &Route)> = None;
        for r in &self.routes {
            if let Some(rank) = r.match_rank(path) {
                if best.is_none_or(|(b, _)| rank > b) {
                    best = Some((rank, r));
                }
            }
        }
        best.map(|(_, r)| r)
    }

    pub fn matches_host(&self, host: &str) -> bool {
        let Some(want) = &self.hostname else {
            return true;
        };
        let host = strip_port(host);
        match want.strip_prefix("*.") {
            Some(suffix) => {
                host.len() > suffix.len() + 1 && {
                    let (head, tail) = host.split_at(host.len() - suffix.len());
                    tail.eq_ignore_ascii_case(suffix) && head.ends_with('.')
                }
            }
            None => host.eq_ignore_ascii_case(want),
        }
    }
}

/// `example.com:80` -> `example.com`, `[::1]:80` -> `[::1]`.
pub fn strip_port(host: &str) -> &str {
    if host.starts_with('[') {
        return match host.find(']') {
            Some(i) => &host[..=i],
            None => host,
        };
    }
    match host.rfind(':') {
        Some(i) => &host[..i],
        None => host,
    }
}

#[cfg(test)]
mod tests;
