//! The HTTP server's limits and their defaults. The config fills them in
//! (`config.http`); the parser and the connection loop read them.

use std::time::Duration;

/// Default limits; README documents each one next to its key under `config.http`.
pub const DEFAULT_MAX_HEAD_BYTES: usize = 16 * 1024;
pub const DEFAULT_MAX_URI_BYTES: usize = 8 * 1024;
pub const DEFAULT_MAX_HEADERS: usize = 64;
/// httparse needs a fixed array of header slots; this caps `maxHeaders`.
pub const MAX_HEADERS_CAP: usize = 256;
pub const DEFAULT_MAX_BODY_BYTES: u64 = 4 * 1024 * 1024;
pub const DEFAULT_HEADER_READ_TIMEOUT_MS: u64 = 10_000;
pub const DEFAULT_BODY_READ_TIMEOUT_MS: u64 = 30_000;
pub const DEFAULT_IDLE_TIMEOUT_MS: u64 = 60_000;
pub const DEFAULT_WRITE_TIMEOUT_MS: u64 = 30_000;
pub const DEFAULT_MAX_CONNECTIONS_PER_WORKER: usize = 4096;
pub const DEFAULT_MAX_BODY_BYTES_IN_FLIGHT: u64 = 64 * 1024 * 1024;
pub const DEFAULT_LINGER_TIMEOUT_MS: u64 = 10_000;
pub const DEFAULT_LINGER_MAX_BYTES: u64 = 32 * 1024 * 1024;

/// HTTP limits, per connection unless named otherwise.
#[derive(Debug, Clone)]
pub struct Limits {
    pub max_head_bytes: usize,
    pub max_uri_bytes: usize,
    pub max_headers: usize,
    pub max_body_bytes: u64,
    /// From the first byte of a request head (or the accept) to its end.
    pub header_read_timeout: Duration,
    /// For a whole request body.
    pub body_read_timeout: Duration,
    /// Between requests on a kept-alive connection.
    pub idle_timeout: Duration,
    /// How long a response write may make no progress (no byte accepted
    /// by the kernel) before the connection is reset.
    pub write_timeout: Duration,
    pub max_connections_per_worker: usize,
    /// Request body bytes one worker holds at once, over all its
    /// connections; a body that would go past it gets 503.
    pub max_body_bytes_in_flight: u64,
    /// After a response that closes the connection, how long (in all) and
    /// how many bytes the client may still send, discarded, so that it
    /// reads the response instead of a reset.
    pub linger_timeout: Duration,
    pub linger_max_bytes: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_head_bytes: DEFAULT_MAX_HEAD_BYTES,
            max_uri_bytes: DEFAULT_MAX_URI_BYTES,
            max_headers: DEFAULT_MAX_HEADERS,
            max_body_bytes: DEFAULT_MAX_BODY_BYTES,
            header_read_timeout: Duration::from_millis(DEFAULT_HEADER_READ_TIMEOUT_MS),
            body_read_timeout: Duration::from_millis(DEFAULT_BODY_READ_TIMEOUT_MS),
            idle_timeout: Duration::from_millis(DEFAULT_IDLE_TIMEOUT_MS),
            write_timeout: Duration::from_millis(DEFAULT_WRITE_TIMEOUT_MS),
            max_connections_per_worker: DEFAULT_MAX_CONNECTIONS_PER_WORKER,
            max_body_bytes_in_flight: DEFAULT_MAX_BODY_BYTES_IN_FLIGHT,
            linger_timeout: Duration::from_millis(DEFAULT_LINGER_TIMEOUT_MS),
            linger_max_bytes: DEFAULT_LINGER_MAX_BYTES,
        }
    }
}
