//! ringgate: an edge proxy that puts stdio MCP servers on a tailnet.
//!
//! Modules in the order a request meets them:
//!
//! - [`config`]: agentgateway YAML -> immutable, compiled [`config::Config`]
//! - [`worker`]: one monoio runtime per core, SO_REUSEPORT listeners, accept
//! - [`conn`]: the keep-alive loop: read, parse, pipeline, write, timeouts
//! - [`http`]: head parsing with strict RFC 9112 framing, chunked bodies, responses
//! - [`pipeline`]: the stages in order: route, CORS, extAuthz, backend
//! - [`access_log`]: one line per request

pub mod access_log;
pub mod config;
pub mod conn;
pub mod http;
pub mod pipeline;
pub mod policy;
pub mod worker;
