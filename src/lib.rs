//! ringgate: an edge proxy that puts stdio MCP servers on a tailnet.
//!
//! Modules in the order a request meets them:
//!
//! - [`config`]: agentgateway YAML -> immutable, compiled [`config::Config`]
//! - [`worker`]: one monoio runtime per core, SO_REUSEPORT listeners, accept
//! - [`context`]: what a connection runs with: worker state, config generation, bind
//! - [`conn`]: the keep-alive loop: head, admission, body, response; timeouts
//! - [`http`]: head parsing with strict RFC 9112 framing, chunked bodies, responses
//! - [`pipeline`]: the stages in order: route, CORS, extAuthz (on the head), backend
//! - [`request`]: the request's own types (peer, parsed request, outcome), below every stage
//! - [`policy`]: CORS, CEL (compiled once, evaluated per request), mcpAuthorization
//! - [`auth`]: extAuthz: whois client, per-worker cache, allow/deny
//! - [`mcp`]: streamable HTTP endpoint, sessions owned by one worker, bytes forwarded as sent
//! - [`pool`]: warm pool of stdio MCP server children, forked and reaped off the workers
//! - [`access_log`]: one line per request
//! - [`stats`], [`admin`]: per-worker counters, Prometheus text, readiness
//! - [`lifecycle`]: signals: drain on SIGTERM, reload on SIGHUP

pub mod access_log;
pub mod admin;
pub mod auth;
pub mod config;
pub mod conn;
pub mod context;
pub mod http;
pub mod lifecycle;
pub mod logging;
pub mod mcp;
pub mod pipeline;
pub mod policy;
pub mod pool;
pub mod request;
pub mod stats;
pub mod worker;
