//! MCP streamable HTTP bridged to stdio children.
//!
//! A session lives on the worker that created it: its child, its streams and
//! its state are that worker's, so nothing about a session is ever locked.
//! The session id names the owner (four hex digits, then 128 random bits);
//! a request that arrives on another worker (SO_REUSEPORT spreads
//! connections, and the Python SDK opens one per request) is handed to the
//! owner as a [`Job`] over a channel, and the answer, an SSE stream included,
//! comes back over channels the connection reads from.
//!
//! The owner answers a job at once: it registers the request and queues its
//! lines for the session's writer task, never waiting on the child, so a
//! request's fate does not depend on the worker that accepted it. Inboxes
//! are bounded ([`INBOX_DEPTH`] jobs): a full one is a 503 with Retry-After.
//!
//! Capacity is the process's, not a worker's: `minIdle` is split among the
//! workers, each pool publishes its idle count on the [`Hub`], and an
//! `initialize` on a worker with no idle child goes to a worker that has one
//! (the session then lives there, as its id says). At `maxLive`, an idle
//! child left by a burst is stopped, or else the least recently used idle
//! session (no request in flight, no open GET stream) of any worker is
//! evicted to make room; the workers are asked over their inboxes. See
//! [`room`].
//!
//! - [`endpoint`]: POST / GET / DELETE checks and statuses
//! - [`jsonrpc`]: classify client messages, peek at child lines
//! - [`session`]: one session's routing of child output
//! - [`modern`], [`shared`]: 2026-07-28 requests over shared children
//! - [`sse`]: event encoding
//! - [`probe`]: the `prefixMode: never` name check before a config is used

pub mod authz;
pub mod endpoint;
mod get_stream;
mod job;
pub mod jsonrpc;
pub mod modern;
pub mod multiplex;
pub mod multiplex_session;
mod multiplex_worker;
pub mod probe;
mod room;
pub mod session;
mod session_id;
pub mod shared;
pub mod sse;

pub use session_id::{new_session_id, owner_of};

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tracing::{info, warn};

use crate::config::{Backend, Config, McpSettings};
use crate::pool::{IdleBoard, Pool, PoolError};
use jsonrpc::Message;
use room::Place;
use session::Session;

pub(crate) use job::SessionJobs;
pub use job::{Job, Op, Reply, DEFAULT_VERSION, KNOWN_VERSIONS, LAST_BATCH_VERSION};

/// Jobs a worker's inbox holds before hand-offs to it are refused (503).
/// The owner answers each at once, so a full inbox means a stalled worker.
pub const INBOX_DEPTH: usize = 1024;

/// The refusal of an `initialize` at `maxLive` with nothing to evict.
const NO_SERVER: &str = "no MCP server available";

/// The inboxes of every worker, and the idle children of every pool, shared
/// by all of them.
pub struct Hub {
    inboxes: Vec<flume::Sender<Job>>,
    /// Connections moving to the worker that owns their session.
    conns: Vec<flume::Sender<crate::conn::parcel::Handover>>,
    /// By `McpBackend::key`; taken when a pool is made (start, reload).
    boards: std::sync::Mutex<HashMap<String, IdleBoard>>,
}

impl Hub {
    pub fn new(workers: usize) -> (Arc<Hub>, Inboxes) {
        let (txs, jobs) = (0..workers).map(|_| flume::bounded(INBOX_DEPTH)).unzip();
        let depth = crate::conn::parcel::DEPTH;
        let (conns, moves) = (0..workers).map(|_| flume::bounded(depth)).unzip();
        let hub = Hub {
            inboxes: txs,
            conns,
            boards: std::sync::Mutex::new(HashMap::new()),
        };
        (Arc::new(hub), Inboxes { jobs, moves })
    }

    /// Workers of this process.
    pub fn workers(&self) -> usize {
        self.inboxes.len()
    }

    /// Queues a connection for worker `w`; gives it back when `w`'s inbox
    /// is full or gone.
    pub fn hand_over(
        &self,
        w: usize,
        h: crate::conn::parcel::Handover,
    ) -> Result<(), crate::conn::parcel::Handover> {
        match self.conns.get(w) {
            Some(tx) => tx.try_send(h).map_err(|e| e.into_inner()),
            None => Err(h),
        }
    }

    /// The idle board of a target, one slot per worker.
    pub fn board(&self, key: &str) -> IdleBoard {
        let mut boards = self.boards.lock().unwrap_or_else(|e| e.into_inner());
        boards
            .entry(key.to_string())
            .or_insert_with(|| {
                (0..self.inboxes.len())
                    .map(|_| std::sync::atomic::AtomicUsize::new(0))
                    .collect()
            })
            .clone()
    }
}

/// The receiving ends of the hub, one per worker.
pub struct Inboxes {
    pub jobs: Vec<flume::Receiver<Job>>,
    pub moves: Vec<flume::Receiver<crate::conn::parcel::Handover>>,
}

/// One worker's MCP state: its sessions and its child pools.
pub struct McpWorker {
    worker: usize,
    sessions: RefCell<HashMap<Rc<str>, Rc<Session>>>,
    /// By `McpBackend::key`.
    pools: RefCell<HashMap<String, Rc<Pool>>>,
    /// The idle boards of those pools, by the same key.
    boards: RefCell<HashMap<String, IdleBoard>>,
    hub: Arc<Hub>,
    /// `config.mcp`; replaced by a reload, for new sessions and children.
    settings: RefCell<McpSettings>,
    live: Arc<std::sync::atomic::AtomicUsize>,
    /// initialize requests that found no idle child.
    pool_waits: std::cell::Cell<u64>,
    /// Idle sessions ended to make room at `maxLive`.
    evicted: std::cell::Cell<u64>,
    /// Sessions over several targets ([`multiplex_worker`]).
    multi: RefCell<HashMap<Rc<str>, Rc<multiplex_session::MultiSession>>>,
    /// Every MCP backend of the config, by `McpBackend::key`.
    backends: RefCell<HashMap<String, crate::config::McpBackend>>,
    /// Distinct targets of the config (they share `maxLive`).
    target_count: std::cell::Cell<usize>,
    /// 2026-07-28 requests' shared children.
    pub shared: shared::Shared,
}

/// Every MCP backend of the config.
pub(crate) fn backends(config: &Config) -> impl Iterator<Item = &crate::config::McpBackend> {
    config
        .binds
        .iter()
        .flat_map(|b| &b.listeners)
        .flat_map(|l| &l.routes)
        .filter_map(|r| r.backend.as_ref())
        .map(|Backend::Mcp(m)| m)
}

/// Every stdio target of the config (each gets a pool, by its key).
pub(crate) fn targets(config: &Config) -> impl Iterator<Item = &crate::config::McpTarget> {
    backends(config).flat_map(|m| &m.targets)
}

impl McpWorker {
    pub fn new(
        worker: usize,
        config: &Config,
        hub: Arc<Hub>,
        live: Arc<std::sync::atomic::AtomicUsize>,
    ) -> Rc<McpWorker> {
        let me = Rc::new(McpWorker {
            worker,
            sessions: RefCell::new(HashMap::new()),
            pools: RefCell::new(HashMap::new()),
            boards: RefCell::new(HashMap::new()),
            hub,
            settings: RefCell::new(config.mcp.clone()),
            shared: shared::Shared::new(worker, config, live.clone()),
            live,
            pool_waits: std::cell::Cell::new(0),
            evicted: std::cell::Cell::new(0),
            multi: RefCell::new(HashMap::new()),
            backends: RefCell::new(multiplex_worker::backend_map(config)),
            target_count: std::cell::Cell::new(config.mcp_target_count()),
        });
        for m in targets(config) {
            let pool = me.new_pool(m);
            me.pools.borrow_mut().insert(m.key().to_string(), pool);
        }
        me
    }

    fn new_pool(&self, m: &crate::config::McpTarget) -> Rc<Pool> {
        let cfg = self.pool_config(m.key());
        let spec = crate::pool::ChildSpec::of_target(m);
        let pool = Pool::new(
            spec,
            cfg,
            self.live.clone(),
            format!("{}/w{}", m.name, self.worker),
        );
        let board = self.hub.board(m.key());
        pool.publish_idle(board.clone(), self.worker);
        self.boards.borrow_mut().insert(m.key().to_string(), board);
        pool
    }

    /// Applies a reloaded config: pools of unchanged targets (and their
    /// sessions) stay; new targets get a pool; sessions and pools of targets
    /// that are gone end. `config.mcp` applies to sessions created from now
    /// on (request timeout, buffered messages), to every pool (minIdle,
    /// maxLive, line limit, stop grace) and to the idle sweep (TTL).
    pub fn reload(self: &Rc<Self>, config: &Config) {
        *self.settings.borrow_mut() = config.mcp.clone();
        self.target_count.set(config.mcp_target_count());
        *self.backends.borrow_mut() = multiplex_worker::backend_map(config);
        let me = self.clone();
        monoio::spawn(async move {
            let gone = |k: &str| !me.backends.borrow().contains_key(k);
            me.end_multi(gone, "MCP target removed by reload").await
        });
        self.shared.reload(config);
        for (k, p) in self.pools.borrow().iter() {
            p.reconfigure(self.pool_config(k));
        }
        let wanted: HashMap<String, &crate::config::McpTarget> =
            targets(config).map(|m| (m.key().to_string(), m)).collect();
        let mut pools = self.pools.borrow_mut();
        let gone: Vec<String> = pools
            .keys()
            .filter(|k| !wanted.contains_key(*k))
            .cloned()
            .collect();
        for k in gone {
            if let Some(p) = pools.remove(&k) {
                monoio::spawn(async move { p.shutdown().await });
            }
            self.boards.borrow_mut().remove(&k);
            let ended: Vec<Rc<Session>> = self
                .sessions
                .borrow()
                .values()
                .filter(|s| s.backend == k)
                .cloned()
                .collect();
            for s in ended {
                self.remove(&s, "MCP target removed by reload");
            }
        }
        for (k, m) in wanted {
            if let std::collections::hash_map::Entry::Vacant(slot) = pools.entry(k) {
                let p = self.new_pool(m);
                p.start();
                slot.insert(p);
            }
        }
    }

    /// Starts the pools, the inbox and the idle-session sweeper.
    pub fn start(self: &Rc<Self>, inbox: flume::Receiver<Job>) {
        for p in self.pools.borrow().values() {
            p.start();
        }
        let me = self.clone();
        monoio::spawn(async move {
            while let Ok(job) = inbox.recv_async().await {
                let me = me.clone();
                monoio::spawn(async move { me.run_job(job).await });
            }
        });
        let me = self.clone();
        monoio::spawn(async move { me.sweep_idle().await });
    }

    /// The hub this worker shares with the others.
    pub fn hub(&self) -> &Hub {
        &self.hub
    }

    pub fn session_count(&self) -> usize {
        self.sessions.borrow().len() + self.multi.borrow().len()
    }

    /// Runs `job` on the session's owner, here or on another worker, and
    /// waits for the owner's reply.
    pub async fn dispatch(self: &Rc<Self>, job: Job, reply: flume::Receiver<Reply>) -> Reply {
        match owner_of(&job.session) {
            Some(w) if w == self.worker => self.run_job(job).await,
            Some(w) if w < self.hub.inboxes.len() => match self.hub.inboxes[w].try_send(job) {
                Ok(()) => {}
                Err(flume::TrySendError::Full(_)) => {
                    return Reply::Status(503, "session owner busy")
                }
                Err(flume::TrySendError::Disconnected(_)) => {
                    return Reply::Status(503, "worker unavailable")
                }
            },
            _ => return Reply::Status(404, "session not found"),
        }
        // The owner replies without waiting on the child; the bound only
        // covers a worker that stopped running altogether.
        match monoio::time::timeout(self.reply_bound(), reply.recv_async()).await {
            Ok(Ok(r)) => r,
            _ => Reply::Status(503, "session owner did not answer"),
        }
    }

    /// How long a hand-off waits for the owner's reply: a safety net, never
    /// reached while the owner runs (it answers without waiting on children).
    fn reply_bound(&self) -> Duration {
        let s = self.settings.borrow();
        s.request_timeout + 2 * s.stop_grace
    }

    async fn run_job(self: &Rc<Self>, job: Job) {
        let reply_to = job.reply.clone();
        let reply = match job.op {
            Op::Initialize { messages } => {
                match self.create(job.backend, job.identity, messages).await {
                    Ok((id, rx)) => Reply::Created(id, rx),
                    Err(r) => r,
                }
            }
            Op::OldestIdle => Reply::OldestIdle(self.lru_idle().map(|(t, _)| t)),
            Op::Evict => Reply::Evicted(self.evict_lru().await),
            Op::ReleaseSurplus => Reply::Evicted(self.release_surplus().await),
            _ => self.answer(job).await,
        };
        let _ = reply_to.send(reply);
    }

    /// Sends a job of `op` to worker `w` and waits for its reply.
    async fn ask(&self, w: usize, op: Op, backend: &str, identity: &str) -> Option<Reply> {
        let (tx, rx) = flume::bounded(1);
        let job = Job {
            session: String::new(),
            identity: identity.to_string(),
            backend: backend.to_string(),
            version_header: None,
            op,
            reply: tx,
        };
        self.hub.inboxes.get(w)?.try_send(job).ok()?;
        monoio::time::timeout(self.reply_bound(), rx.recv_async())
            .await
            .ok()?
            .ok()
    }

    async fn answer(self: &Rc<Self>, job: Job) -> Reply {
        if let Some(m) = self.multi_session(&job.session) {
            return self.answer_multi(m, job).await;
        }
        let session = self.sessions.borrow().get(job.session.as_str()).cloned();
        let Some(session) = session
            .filter(|s| s.identity == job.identity && s.backend == job.backend && !s.is_ended())
        else {
            return Reply::Status(404, "session not found");
        };
        job::serve(&*session, job, || {
            self.remove(&session, "deleted by client")
        })
    }

    /// Creates a session for an `initialize` request: with an idle child of
    /// this worker, else of another worker (the session then lives there),
    /// else a new child; at `maxLive`, after evicting the least recently
    /// used idle session of any worker.
    pub async fn initialize(
        self: &Rc<Self>,
        backend: String,
        identity: String,
        messages: Vec<Message>,
    ) -> Result<(String, flume::Receiver<Vec<u8>>), Reply> {
        if let Some(b) = self.multiplexed(&backend) {
            return self.initialize_multi(b, backend, identity, messages).await;
        }
        let mut evicted = false;
        // A slot freed by an eviction may go to another worker's refill
        // first: then that worker has an idle child, found on the next pass.
        let mut passes = 0;
        loop {
            passes += 1;
            match self.place(&backend) {
                Place::Here => match self.take_child(&backend).await {
                    Ok(c) => return self.start_session(c, backend, identity, messages),
                    Err(None) if passes < 4 => continue,
                    Err(r) => return Err(r.unwrap_or(Reply::Status(503, NO_SERVER))),
                },
                Place::Worker(w) => {
                    return self.initialize_at(w, messages, &backend, &identity).await
                }
                Place::Full if !evicted && self.make_room().await => evicted = true,
                Place::Full => return Err(Reply::Status(503, NO_SERVER)),
            }
        }
    }

    /// Has worker `w` create the session (it has the idle children).
    async fn initialize_at(
        &self,
        w: usize,
        messages: Vec<Message>,
        backend: &str,
        identity: &str,
    ) -> Result<(String, flume::Receiver<Vec<u8>>), Reply> {
        match self
            .ask(w, Op::Initialize { messages }, backend, identity)
            .await
        {
            Some(Reply::Created(id, rx)) => Ok((id, rx)),
            Some(r) => Err(r),
            None => Err(Reply::Status(503, NO_SERVER)),
        }
    }

    /// Creates a session on this worker, with an idle child or a new one.
    async fn create(
        self: &Rc<Self>,
        backend: String,
        identity: String,
        messages: Vec<Message>,
    ) -> Result<(String, flume::Receiver<Vec<u8>>), Reply> {
        if let Some(b) = self.multiplexed(&backend) {
            return self.create_multi(b, backend, identity, messages).await;
        }
        match self.take_child(&backend).await {
            Ok(child) => self.start_session(child, backend, identity, messages),
            Err(_) => Err(Reply::Status(503, NO_SERVER)),
        }
    }

    /// A child of this worker's pool for `backend`. `Err(None)`: `maxLive`
    /// reached; `Err(Some(reply))`: the refusal to give.
    async fn take_child(&self, backend: &str) -> Result<crate::pool::Child, Option<Reply>> {
        let Some(pool) = self.pools.borrow().get(backend).cloned() else {
            return Err(Some(Reply::Status(503, "MCP target not available")));
        };
        match pool.take().await {
            Ok(c) => Ok(c),
            Err(PoolError::Exhausted { .. }) => Err(None),
            Err(e) => {
                warn!(error = %e, "cannot start MCP server");
                Err(Some(Reply::Status(503, "MCP server failed to start")))
            }
        }
    }

    fn start_session(
        self: &Rc<Self>,
        child: crate::pool::Child,
        backend: String,
        identity: String,
        messages: Vec<Message>,
    ) -> Result<(String, flume::Receiver<Vec<u8>>), Reply> {
        let id = match new_session_id(self.worker) {
            Ok(id) => id,
            Err(e) => {
                warn!(error = %e, "no randomness for a session id (getrandom)");
                return Err(Reply::Status(503, "cannot create a session"));
            }
        };
        let (handle, writer, reader) = child.into_parts();
        handle.set_session(&id);
        let session = Session::new(
            id.clone().into(),
            identity,
            backend,
            writer,
            handle,
            self.settings.borrow().max_buffered_messages,
            self.settings.borrow().request_timeout,
        );
        self.sessions
            .borrow_mut()
            .insert(session.id.clone(), session.clone());
        info!(
            session = id,
            pid = session.handle().pid(),
            "session started"
        );
        let me = self.clone();
        let s2 = session.clone();
        monoio::spawn(session::read_child(session.clone(), reader, move || {
            me.remove(&s2, "MCP server ended")
        }));
        match session.post(messages, None) {
            Ok(Some(rx)) => Ok((id, rx)),
            _ => {
                self.remove(&session, "MCP server did not take initialize");
                Err(Reply::Status(503, "MCP server failed to start"))
            }
        }
    }

    /// Forgets a session and stops its child in the background.
    fn remove(&self, session: &Rc<Session>, reason: &str) {
        let removed = self.sessions.borrow_mut().remove(&session.id).is_some();
        session.end(reason);
        if removed {
            let s = session.clone();
            let grace = self.settings.borrow().stop_grace;
            monoio::spawn(async move {
                let status = s.handle().stop(grace).await;
                info!(session = &*s.id, ?status, "MCP server stopped");
            });
        }
    }

    /// Ends idle sessions, fails requests past their deadline, and removes
    /// sessions that ended without their child exiting (a child that stopped
    /// reading its input, an initialize that timed out).
    async fn sweep_idle(self: Rc<Self>) {
        loop {
            // Read each pass: a reload may change them.
            let (ttl, every) = {
                let s = self.settings.borrow();
                let every = (s.session_idle_timeout / 4)
                    .min(s.request_timeout / 10)
                    .clamp(Duration::from_millis(10), Duration::from_secs(1));
                (s.session_idle_timeout, every)
            };
            monoio::time::sleep(every).await;
            let now = Instant::now();
            self.sweep_multi(now, ttl);
            let all: Vec<Rc<Session>> = self.sessions.borrow().values().cloned().collect();
            for s in all {
                if s.idle_since().is_some_and(|t| now.duration_since(t) >= ttl) {
                    self.remove(&s, "idle timeout");
                } else if s.expire_overdue(now) {
                    self.remove(&s, "ended");
                }
            }
        }
    }

    /// Ends every session and stops every child, all at once (shutdown).
    pub async fn shutdown(&self) {
        let all: Vec<Rc<Session>> = self.sessions.borrow_mut().drain().map(|(_, s)| s).collect();
        let grace = self.settings.borrow().stop_grace;
        let stops: Vec<_> = all
            .into_iter()
            .map(|s| {
                s.end("shutting down");
                monoio::spawn(async move { s.handle().stop(grace).await })
            })
            .collect();
        let pools: Vec<Rc<Pool>> = self.pools.borrow_mut().drain().map(|(_, p)| p).collect();
        let pool_stops: Vec<_> = pools
            .into_iter()
            .map(|p| monoio::spawn(async move { p.shutdown().await }))
            .collect();
        self.end_multi(|_| true, "shutting down").await;
        for s in stops {
            s.await;
        }
        for p in pool_stops {
            p.await;
        }
        self.shared.shutdown().await;
    }

    /// Requests of this worker's sessions waiting for their child's answer.
    pub fn in_flight(&self) -> usize {
        self.sessions
            .borrow()
            .values()
            .map(|s| s.in_flight())
            .sum::<usize>()
            + self.multi_in_flight()
            + self.shared.in_flight()
    }

    /// Ends every GET stream (drain: those never finish by themselves).
    pub fn close_get_streams(&self) {
        for s in self.sessions.borrow().values() {
            s.close_get();
        }
        self.multi_close_get();
    }

    /// Sessions and pool figures for a metrics snapshot.
    pub fn fill_snapshot(&self, snap: &mut crate::stats::Snapshot) {
        let (multi, multi_idle) = self.multi_counts();
        snap.sessions = self.sessions.borrow().len() as u64 + multi;
        snap.pool_waits = self.pool_waits.get();
        snap.sessions_evicted = self.evicted.get();
        snap.idle_sessions = self
            .sessions
            .borrow()
            .values()
            .filter(|s| s.idle_since().is_some())
            .count() as u64
            + multi_idle;
        for p in self.pools.borrow().values() {
            let st = p.stats();
            snap.pools.push(crate::stats::PoolFigures {
                target: p.label().to_string(),
                idle: p.idle(),
                min_idle: p.config().min_idle,
                max_live: p.config().max_live,
                backing_off: p.backing_off(),
                spawned: st.spawned,
                spawn_failures: st.spawn_failures,
                exits: vec![
                    ("exited", st.exited),
                    ("signaled", st.signaled),
                    ("stdin_closed", st.stdin_closed),
                    ("terminated", st.terminated),
                    ("killed", st.killed),
                    ("dropped", st.dropped),
                ],
            });
        }
    }
}

impl SessionJobs for Session {
    fn protocol(&self) -> Option<String> {
        Session::protocol(self)
    }
    fn post(
        &self,
        messages: Vec<Message>,
        authz: Option<&authz::PostAuthz>,
    ) -> Result<Option<flume::Receiver<Vec<u8>>>, session::PostError> {
        Session::post(self, messages, authz)
    }
    fn open_get(&self) -> Option<flume::Receiver<Vec<u8>>> {
        Session::open_get(self)
    }
}
