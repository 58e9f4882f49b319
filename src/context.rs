//! What a connection runs with: its worker's state ([`Worker`]), the config
//! generation it was accepted under ([`Generation`]), and its bind
//! ([`BindCtx`]). Sits below `worker.rs` (which builds them) and above the
//! stages (which read them); imports nothing of the connection or pipeline.

use std::cell::{Cell, RefCell};
use std::io;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Instant;

use crate::auth::AuthzState;
use crate::config::{Bind, Config};
use crate::lifecycle::Drain;
use crate::mcp::McpWorker;
use crate::stats::Stats;

/// Index of a worker thread, 0-based; it appears in the access log.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct WorkerId(pub usize);

/// State owned by one worker thread.
pub struct Worker {
    pub id: WorkerId,
    pub driver: &'static str,
    pub connections: Cell<usize>,
    /// Request body bytes held by this worker's connections right now
    /// (bounded by `limits.maxBodyBytesInFlight`).
    pub body_bytes: Cell<u64>,
    /// Connections over the limit still being told 503.
    pub(crate) refusing: Rc<Cell<usize>>,
    /// The config new connections get; replaced on reload.
    pub generation: RefCell<Rc<Generation>>,
    pub mcp: Rc<McpWorker>,
    pub drain: Drain,
    pub(crate) deadline: Cell<Option<Instant>>,
    pub stats: Stats,
}

/// A config and the per-worker state compiled from it. A connection keeps the
/// generation it was accepted under, so a reload never changes the rules in
/// the middle of a connection.
pub struct Generation {
    pub config: Arc<Config>,
    /// One per extAuthz policy, indexed by `ExtAuthz::id`.
    pub authz: Vec<AuthzState>,
}

impl Generation {
    pub(crate) fn new(config: Arc<Config>) -> io::Result<Rc<Generation>> {
        let authz = config
            .binds
            .iter()
            .flat_map(|b| &b.listeners)
            .flat_map(|l| &l.routes)
            .filter_map(|r| r.policies.ext_authz.as_ref())
            .map(|a| AuthzState::new(a).map_err(io::Error::other))
            .collect::<io::Result<Vec<_>>>()?;
        Ok(Rc::new(Generation { config, authz }))
    }
}

/// What a connection needs: its worker, its generation, and its bind.
pub struct BindCtx {
    pub worker: Rc<Worker>,
    pub gen: Rc<Generation>,
    pub bind: usize,
}

impl BindCtx {
    pub fn config(&self) -> &Config {
        &self.gen.config
    }
    pub fn bind(&self) -> &Bind {
        &self.gen.config.binds[self.bind]
    }
}

/// Counts a connection for the per-worker limit while it lives.
pub struct ConnGuard(Rc<Worker>);

impl ConnGuard {
    pub(crate) fn new(w: Rc<Worker>) -> Self {
        w.connections.set(w.connections.get() + 1);
        ConnGuard(w)
    }
}

impl Drop for ConnGuard {
    fn drop(&mut self) {
        self.0.connections.set(self.0.connections.get() - 1);
    }
}
