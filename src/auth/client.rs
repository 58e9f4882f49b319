//! HTTP/1.1 client for the external authorization service, one per worker.
//!
//! In the seed configuration the service is tailscaled's local API on a Unix
//! socket: a whois hit takes ~0.25 ms on a kept-alive connection, much less than
//! a connect, so the client keeps a small pool of idle connections. It lives on
//! one monoio worker (`Rc`, not `Send`) and works on both the io_uring and the
//! legacy (epoll) drivers; the runtime must have its timer enabled.
//!
//! One call = connect or reuse, write an empty-bodied request, read one whole
//! answer, all under a single deadline. Answers of any status are `Ok`: the
//! caller decides allow or deny. The answer parser is
//! sans-I/O, so the same bytes split anywhere give the same result, and it is
//! strict about framing, because a lenient reader of a confused or hostile
//! peer would take the tail of one answer for the head of the next.
//!
//! The parts: [`target`] (where the service listens), [`encode`] (the check
//! request's bytes), [`answer`] (the answer parser), [`pool`] (connections,
//! the idle pool and one exchange). This file is the client's API.

mod answer;
mod encode;
mod pool;
mod target;

use std::cell::{Cell, RefCell};
use std::io;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use thiserror::Error;

pub use answer::{parse_answer, CheckResponse};
pub use encode::CheckRequest;
pub use target::{Target, TargetError};

use encode::encode_request;
use pool::IdleConn;

pub const DEFAULT_TIMEOUT_MS: u64 = 1_000;
pub const DEFAULT_MAX_HEAD_BYTES: usize = 64 * 1024;
pub const DEFAULT_MAX_BODY_BYTES: usize = 1024 * 1024;
pub const DEFAULT_MAX_IDLE_CONNECTIONS: usize = 8;
pub const DEFAULT_IDLE_TIMEOUT_MS: u64 = 30_000;

#[derive(Debug, Clone)]
pub struct ClientConfig {
    pub target: Target,
    /// Covers connect, write and reading the whole answer, retry included.
    pub timeout: Duration,
    pub max_head_bytes: usize,
    pub max_body_bytes: usize,
    pub max_idle_connections: usize,
    /// Pooled connections idle longer than this are closed rather than reused.
    pub idle_timeout: Duration,
}

impl ClientConfig {
    pub fn new(target: Target) -> Self {
        ClientConfig {
            target,
            timeout: Duration::from_millis(DEFAULT_TIMEOUT_MS),
            max_head_bytes: DEFAULT_MAX_HEAD_BYTES,
            max_body_bytes: DEFAULT_MAX_BODY_BYTES,
            max_idle_connections: DEFAULT_MAX_IDLE_CONNECTIONS,
            idle_timeout: Duration::from_millis(DEFAULT_IDLE_TIMEOUT_MS),
        }
    }
}

/// Why a call produced no answer. None of these is an authorization answer,
/// so none may be cached as one.
#[derive(Debug, Error)]
pub enum ClientError {
    /// The service is not there (ENOENT, ECONNREFUSED, unresolvable host...).
    #[error("connect to {target}: {source}")]
    Connect { target: String, source: io::Error },
    #[error("no complete answer within {0:?}")]
    Timeout(Duration),
    #[error("i/o error: {0}")]
    Io(io::Error),
    #[error("malformed answer: {0}")]
    Malformed(String),
    #[error("answer exceeds the {0} limit")]
    TooLarge(&'static str),
    /// The service closed the connection before the answer was complete.
    #[error("connection closed before a complete answer")]
    Closed,
    /// The check request itself cannot be sent (bad method, path or header).
    #[error("invalid check request: {0}")]
    InvalidRequest(&'static str),
}

impl ClientError {
    /// Short stable label for logs and metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            ClientError::Connect { .. } => "connect",
            ClientError::Timeout(_) => "timeout",
            ClientError::Io(_) => "io",
            ClientError::Malformed(_) => "malformed",
            ClientError::TooLarge(_) => "too_large",
            ClientError::Closed => "closed",
            ClientError::InvalidRequest(_) => "invalid_request",
        }
    }
}

/// Counters since the client was created.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ClientStats {
    /// Connections opened (attempts, failed ones included).
    pub connects: u64,
    /// Calls that started on a pooled connection.
    pub reuses: u64,
    /// Pooled connections found closed, whose call was retried once.
    pub stale_retries: u64,
    /// Pooled connections dropped at checkout because the server had closed
    /// them or sent bytes nobody asked for (an answer to no request must
    /// never be read as the answer to the next one).
    pub unclean_idle: u64,
}

/// Why one exchange failed: `Stale` is the only failure worth a retry.
enum Failure {
    Stale,
    Fatal(ClientError),
}

pub struct AuthzClient {
    cfg: ClientConfig,
    idle: RefCell<Vec<IdleConn>>,
    resolved: RefCell<Option<(Instant, Vec<SocketAddr>)>>,
    stats: Cell<ClientStats>,
}

impl AuthzClient {
    pub fn new(cfg: ClientConfig) -> Self {
        AuthzClient {
            idle: RefCell::new(Vec::with_capacity(cfg.max_idle_connections)),
            cfg,
            resolved: RefCell::new(None),
            stats: Cell::new(ClientStats::default()),
        }
    }

    pub fn config(&self) -> &ClientConfig {
        &self.cfg
    }

    pub fn stats(&self) -> ClientStats {
        self.stats.get()
    }

    pub fn idle_connections(&self) -> usize {
        self.idle.borrow().len()
    }

    /// Sends one check and reads its whole answer, within `cfg.timeout`.
    pub async fn send(&self, req: &CheckRequest) -> Result<CheckResponse, ClientError> {
        let wire = encode_request(req)?;
        let head_only = req.method.eq_ignore_ascii_case("HEAD");
        // Dropping the inner future on timeout drops the connection it holds,
        // so a connection with an answer still in flight is never pooled.
        match monoio::time::timeout(self.cfg.timeout, self.send_inner(wire, head_only)).await {
            Ok(result) => result,
            Err(_) => Err(ClientError::Timeout(self.cfg.timeout)),
        }
    }

    async fn send_inner(
        &self,
        mut wire: Vec<u8>,
        head_only: bool,
    ) -> Result<CheckResponse, ClientError> {
        if let Some(conn) = self.checkout() {
            self.bump(|s| s.reuses += 1);
            match self.exchange(conn, wire, true, head_only).await {
                (Ok(resp), _) => return Ok(resp),
                (Err(Failure::Fatal(e)), _) => return Err(e),
                // The server closed the connection while it sat idle. Check
                // requests have no body and change no state, so one retry on
                // a fresh connection is safe even if this one was read.
                (Err(Failure::Stale), w) => {
                    self.bump(|s| s.stale_retries += 1);
                    tracing::debug!(target = %self.cfg.target, "authz: stale pooled connection, retrying once");
                    wire = w;
                }
            }
        }
        let conn = self.connect().await?;
        match self.exchange(conn, wire, false, head_only).await.0 {
            Ok(resp) => Ok(resp),
            Err(Failure::Fatal(e)) => Err(e),
            Err(Failure::Stale) => Err(ClientError::Closed),
        }
    }

    fn bump(&self, f: impl FnOnce(&mut ClientStats)) {
        let mut s = self.stats.get();
        f(&mut s);
        self.stats.set(s);
    }
}
