//! HTTP/1.1 client for the external authorization service, one per worker.
//!
//! In the seed configuration the service is tailscaled's local API on a Unix
//! socket: a whois hit takes ~0.25 ms on a kept-alive connection, much less than
//! a connect, so the client keeps a small pool of idle connections. It lives on
//! one monoio worker (`Rc`, not `Send`) and works on both the io_uring and the
//! legacy (epoll) drivers; the runtime must have its timer enabled.
//!
//! One call = wait for a permit if `max_connections` calls are in flight,
//! connect or reuse, write an empty-bodied request, read one whole answer,
//! all under a single deadline. Answers of any status are `Ok`: the caller
//! decides allow or deny. The answer parser is sans-I/O, so the same bytes
//! split anywhere give the same result, and it is strict about framing,
//! because a lenient reader of a confused or hostile peer would take the tail
//! of one answer for the head of the next.
//!
//! The parts: `target` (where the service listens), `resolve` (host names,
//! off the worker), `encode` (the check request's bytes), `answer` (the
//! answer parser), `limit` (the bound on calls in flight), `pool`
//! (connections, the idle pool and one exchange). This file is the client's
//! API.

mod answer;
mod encode;
mod limit;
mod pool;
mod resolve;
mod target;

use std::cell::{Cell, RefCell};
use std::io;
use std::time::{Duration, Instant};

use thiserror::Error;

pub use answer::{parse_answer, CheckResponse};
pub use encode::CheckRequest;
pub use target::{Target, TargetError};

use encode::encode_request;
use limit::Limit;
use pool::IdleConn;
use resolve::Resolver;

pub use crate::config::{
    DEFAULT_AUTHZ_MAX_CONNECTIONS as DEFAULT_MAX_CONNECTIONS,
    DEFAULT_AUTHZ_MAX_WAITING as DEFAULT_MAX_WAITING,
    DEFAULT_AUTHZ_TIMEOUT_MS as DEFAULT_TIMEOUT_MS,
};
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
    /// Calls in flight at once, hence connections open (at least 1).
    pub max_connections: usize,
    /// Calls waiting for one in flight to end; beyond, refused at once.
    pub max_waiting: usize,
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
            max_connections: DEFAULT_MAX_CONNECTIONS,
            max_waiting: DEFAULT_MAX_WAITING,
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
    /// Every connection stayed busy for the whole timeout.
    #[error("no connection free within {0:?}")]
    Busy(Duration),
    /// Too many checks were already waiting for a connection.
    #[error("{0} checks already waiting for a connection")]
    QueueFull(usize),
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
            ClientError::Busy(_) => "busy",
            ClientError::QueueFull(_) => "queue_full",
        }
    }

    /// The call was never made: the bound on calls in flight refused it.
    pub fn is_refusal(&self) -> bool {
        matches!(self, ClientError::Busy(_) | ClientError::QueueFull(_))
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
    /// Calls that had to wait for another to end (all calls in flight).
    pub waits: u64,
    /// Calls refused by the bound: waited the whole timeout, or found the
    /// queue full.
    pub refused: u64,
}

/// One call's result, and whether it had to wait for a free connection.
#[derive(Debug)]
pub struct Call {
    pub result: Result<CheckResponse, ClientError>,
    pub waited: bool,
}

impl Call {
    fn now(result: Result<CheckResponse, ClientError>) -> Call {
        Call {
            result,
            waited: false,
        }
    }
}

/// Why one exchange failed: `Stale` is the only failure worth a retry.
enum Failure {
    Stale,
    Fatal(ClientError),
}

pub struct AuthzClient {
    cfg: ClientConfig,
    idle: RefCell<Vec<IdleConn>>,
    limit: Limit,
    /// For a `host:port` target.
    resolver: Option<Resolver>,
    stats: Cell<ClientStats>,
}

impl AuthzClient {
    pub fn new(cfg: ClientConfig) -> Self {
        let resolver = match &cfg.target {
            Target::Tcp { host, port } => Some(Resolver::new(host, *port)),
            Target::Unix(_) => None,
        };
        AuthzClient {
            idle: RefCell::new(Vec::with_capacity(cfg.max_idle_connections)),
            limit: Limit::new(cfg.max_connections, cfg.max_waiting),
            resolver,
            cfg,
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

    /// Calls in flight now (each holds at most one connection).
    pub fn in_flight(&self) -> usize {
        self.limit.in_use()
    }

    /// Calls waiting now for one in flight to end.
    pub fn waiting(&self) -> usize {
        self.limit.waiting()
    }

    /// Sends one check and reads its whole answer, within `cfg.timeout`.
    pub async fn send(&self, req: &CheckRequest) -> Result<CheckResponse, ClientError> {
        self.call(req).await.result
    }

    /// [`AuthzClient::send`], telling also whether the call waited for a
    /// free connection. Waiting counts against the same timeout.
    pub async fn call(&self, req: &CheckRequest) -> Call {
        let started = Instant::now();
        let wire = match encode_request(req) {
            Ok(w) => w,
            Err(e) => return Call::now(Err(e)),
        };
        let head_only = req.method.eq_ignore_ascii_case("HEAD");
        let (permit, waited) = match self.limit.try_acquire() {
            Some(p) => (p, false),
            None => {
                self.bump(|s| s.waits += 1);
                let refused = |e| {
                    self.bump(|s| s.refused += 1);
                    Call {
                        result: Err(e),
                        waited: true,
                    }
                };
                let Some(wait) = self.limit.wait() else {
                    return refused(ClientError::QueueFull(self.cfg.max_waiting));
                };
                match monoio::time::timeout(self.cfg.timeout, wait).await {
                    Ok(p) => (p, true),
                    Err(_) => return refused(ClientError::Busy(self.cfg.timeout)),
                }
            }
        };
        let left = self.cfg.timeout.saturating_sub(started.elapsed());
        // Dropping the inner future on timeout drops the connection it holds,
        // so a connection with an answer still in flight is never pooled.
        let result = match monoio::time::timeout(left, self.send_inner(wire, head_only)).await {
            Ok(result) => result,
            Err(_) => Err(ClientError::Timeout(self.cfg.timeout)),
        };
        // Given back after the connection went back to the pool, so the next
        // waiter reuses it rather than opening another.
        drop(permit);
        Call { result, waited }
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
