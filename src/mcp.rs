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
//! - [`endpoint`]: POST / GET / DELETE checks and statuses
//! - [`jsonrpc`]: classify client messages, peek at child lines
//! - [`session`]: one session's routing of child output
//! - [`sse`]: event encoding

pub mod authz;
pub mod endpoint;
pub mod jsonrpc;
pub mod session;
pub mod sse;

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tracing::{info, warn};

use crate::config::{Backend, Config, McpSettings};
use crate::pool::{Pool, PoolConfig, PoolError};
use jsonrpc::Message;
use session::{PostError, Session};

/// Protocol revisions ringgate bridges.
pub const KNOWN_VERSIONS: &[&str] = &["2024-11-05", "2025-03-26", "2025-06-18", "2025-11-25"];
/// What a client that sends no `MCP-Protocol-Version` is assumed to speak.
pub const DEFAULT_VERSION: &str = "2025-03-26";
/// Batches were removed after this revision.
pub const LAST_BATCH_VERSION: &str = "2025-03-26";

/// A new session id owned by `worker`: 4 hex digits, then 32 hex digits of
/// randomness from the kernel. Fails only if the kernel gives no randomness
/// (the request that wanted a session gets 503; the worker serves on).
pub fn new_session_id(worker: usize) -> std::io::Result<String> {
    let mut bytes = [0u8; 16];
    fill_random(&mut bytes)?;
    let mut id = format!("{:04x}", worker & 0xffff);
    for b in bytes {
        id.push_str(&format!("{b:02x}"));
    }
    Ok(id)
}

fn fill_random(buf: &mut [u8]) -> std::io::Result<()> {
    let mut filled = 0;
    while filled < buf.len() {
        // SAFETY: getrandom writes at most `len` bytes into the buffer we own.
        let n =
            unsafe { libc::getrandom(buf[filled..].as_mut_ptr().cast(), buf.len() - filled, 0) };
        if n > 0 {
            filled += n as usize;
        } else {
            let e = std::io::Error::last_os_error();
            if e.kind() != std::io::ErrorKind::Interrupted {
                return Err(e);
            }
        }
    }
    Ok(())
}

/// The worker that owns a session id, if the id is well formed.
pub fn owner_of(id: &str) -> Option<usize> {
    if id.len() != 36
        || !id
            .bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
    {
        return None;
    }
    usize::from_str_radix(&id[..4], 16).ok()
}

fn is_npx(cmd: &str) -> bool {
    std::path::Path::new(cmd)
        .file_name()
        .is_some_and(|n| n == "npx")
}

/// A request for a session's owner.
pub struct Job {
    pub session: String,
    pub identity: String,
    /// `McpBackend::key` of the route the request came in on.
    pub backend: String,
    pub version_header: Option<String>,
    pub op: Op,
    pub reply: flume::Sender<Reply>,
}

pub enum Op {
    Post {
        messages: Vec<Message>,
        batch: bool,
        /// `mcpAuthorization`, decided where the request came in.
        authz: Option<authz::PostAuthz>,
    },
    Get,
    Delete,
}

pub enum Reply {
    /// A plain-text refusal (404 unknown session, 400 version...).
    Status(u16, &'static str),
    /// Notifications and responses only: 202.
    Accepted,
    /// SSE events until the stream ends.
    Stream(flume::Receiver<Vec<u8>>),
    Deleted,
}

/// The inboxes of every worker, shared by all of them.
pub struct Hub {
    inboxes: Vec<flume::Sender<Job>>,
}

impl Hub {
    pub fn new(workers: usize) -> (Arc<Hub>, Vec<flume::Receiver<Job>>) {
        let (txs, rxs) = (0..workers).map(|_| flume::unbounded()).unzip();
        (Arc::new(Hub { inboxes: txs }), rxs)
    }
}

/// One worker's MCP state: its sessions and its child pools.
pub struct McpWorker {
    worker: usize,
    sessions: RefCell<HashMap<Rc<str>, Rc<Session>>>,
    /// By `McpBackend::key`.
    pools: RefCell<HashMap<String, Rc<Pool>>>,
    hub: Arc<Hub>,
    settings: McpSettings,
    live: Arc<std::sync::atomic::AtomicUsize>,
    /// initialize requests that found no idle child.
    pool_waits: std::cell::Cell<u64>,
}

fn backends(config: &Config) -> impl Iterator<Item = &crate::config::McpBackend> {
    config
        .binds
        .iter()
        .flat_map(|b| &b.listeners)
        .flat_map(|l| &l.routes)
        .filter_map(|r| r.backend.as_ref())
        .map(|Backend::Mcp(m)| m)
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
            hub,
            settings: config.mcp.clone(),
            live,
            pool_waits: std::cell::Cell::new(0),
        });
        for m in backends(config) {
            let pool = me.new_pool(m);
            me.pools.borrow_mut().insert(m.key(), pool);
        }
        me
    }

    fn new_pool(&self, m: &crate::config::McpBackend) -> Rc<Pool> {
        let s = &self.settings;
        let cfg = PoolConfig {
            min_idle: s.min_idle,
            max_live: s.max_live,
            max_line_bytes: s.max_line_bytes,
            stop_grace: s.stop_grace,
            ..PoolConfig::default()
        };
        let mut env = m.env.clone();
        // A child's stdin is a socket, not a terminal, and npx then refuses to
        // fetch a package it has not cached unless told yes; the seed config
        // relies on it fetching.
        if is_npx(&m.cmd)
            && !env
                .iter()
                .any(|(k, _)| k.eq_ignore_ascii_case("npm_config_yes"))
        {
            env.push(("npm_config_yes".into(), "true".into()));
        }
        let spec = crate::pool::ChildSpec {
            cmd: m.cmd.clone(),
            args: m.args.clone(),
            env,
        };
        Pool::new(
            spec,
            cfg,
            self.live.clone(),
            format!("{}/w{}", m.target, self.worker),
        )
    }

    /// Applies a reloaded config: pools of unchanged targets (and their
    /// sessions) stay; new targets get a pool; sessions and pools of targets
    /// that are gone end.
    pub fn reload(self: &Rc<Self>, config: &Config) {
        let wanted: HashMap<String, &crate::config::McpBackend> =
            backends(config).map(|m| (m.key(), m)).collect();
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

    pub fn session_count(&self) -> usize {
        self.sessions.borrow().len()
    }

    /// Runs `job` on the session's owner, here or on another worker, and
    /// waits for the owner's reply.
    pub async fn dispatch(self: &Rc<Self>, job: Job, reply: flume::Receiver<Reply>) -> Reply {
        match owner_of(&job.session) {
            Some(w) if w == self.worker => self.run_job(job).await,
            Some(w) if w < self.hub.inboxes.len() => {
                if self.hub.inboxes[w].send(job).is_err() {
                    return Reply::Status(503, "worker unavailable");
                }
            }
            _ => return Reply::Status(404, "session not found"),
        }
        // The owner always replies without waiting on the child.
        match monoio::time::timeout(Duration::from_secs(5), reply.recv_async()).await {
            Ok(Ok(r)) => r,
            _ => Reply::Status(503, "session owner did not answer"),
        }
    }

    async fn run_job(self: &Rc<Self>, job: Job) {
        let reply = self.answer(&job).await;
        let _ = job.reply.send(reply);
    }

    async fn answer(self: &Rc<Self>, job: &Job) -> Reply {
        let session = self.sessions.borrow().get(job.session.as_str()).cloned();
        let Some(session) = session
            .filter(|s| s.identity == job.identity && s.backend == job.backend && !s.is_ended())
        else {
            return Reply::Status(404, "session not found");
        };
        let negotiated = session
            .protocol()
            .filter(|v| !v.is_empty())
            .unwrap_or_else(|| DEFAULT_VERSION.to_string());
        if let Some(v) = &job.version_header {
            if !KNOWN_VERSIONS.contains(&v.as_str()) || *v != negotiated {
                return Reply::Status(400, "Bad Request: unsupported MCP-Protocol-Version");
            }
        }
        match &job.op {
            Op::Post {
                messages,
                batch,
                authz,
            } => {
                if *batch && negotiated.as_str() > LAST_BATCH_VERSION {
                    return Reply::Status(
                        400,
                        "Bad Request: batches are not supported by this protocol version",
                    );
                }
                match session.post(messages, authz.as_ref()).await {
                    Ok(Some(rx)) => Reply::Stream(rx),
                    Ok(None) => Reply::Accepted,
                    Err(PostError::Ended) => Reply::Status(404, "session not found"),
                    Err(PostError::DuplicateId) => {
                        Reply::Status(400, "Bad Request: request id already in flight")
                    }
                }
            }
            Op::Get => match session.open_get() {
                Some(rx) => Reply::Stream(rx),
                None => Reply::Status(404, "session not found"),
            },
            Op::Delete => {
                self.remove(&session, "deleted by client");
                Reply::Deleted
            }
        }
    }

    /// Creates a session on this worker for an `initialize` request.
    pub async fn initialize(
        self: &Rc<Self>,
        backend: String,
        identity: String,
        messages: &[Message],
    ) -> Result<(String, flume::Receiver<Vec<u8>>), Reply> {
        let Some(pool) = self.pools.borrow().get(&backend).cloned() else {
            return Err(Reply::Status(503, "MCP target not available"));
        };
        if pool.idle() == 0 {
            self.pool_waits.set(self.pool_waits.get() + 1);
        }
        // Before taking a child, so a failure leaves the pool as it was.
        let id = match new_session_id(self.worker) {
            Ok(id) => id,
            Err(e) => {
                warn!(error = %e, "no randomness for a session id (getrandom)");
                return Err(Reply::Status(503, "cannot create a session"));
            }
        };
        let child = match pool.take().await {
            Ok(c) => c,
            Err(PoolError::Exhausted { .. }) => {
                return Err(Reply::Status(503, "no MCP server available"))
            }
            Err(e) => {
                warn!(error = %e, "cannot start MCP server");
                return Err(Reply::Status(503, "MCP server failed to start"));
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
            self.settings.max_buffered_messages,
            self.settings.request_timeout,
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
        match session.post(messages, None).await {
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
            let grace = self.settings.stop_grace;
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
        let ttl = self.settings.session_idle_timeout;
        let every = (ttl / 4)
            .min(self.settings.request_timeout / 10)
            .clamp(Duration::from_millis(10), Duration::from_secs(1));
        loop {
            monoio::time::sleep(every).await;
            let now = Instant::now();
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
        let grace = self.settings.stop_grace;
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
        for s in stops {
            s.await;
        }
        for p in pool_stops {
            p.await;
        }
    }

    /// Requests of this worker's sessions waiting for their child's answer.
    pub fn in_flight(&self) -> usize {
        self.sessions.borrow().values().map(|s| s.in_flight()).sum()
    }

    /// Ends every GET stream (drain: those never finish by themselves).
    pub fn close_get_streams(&self) {
        for s in self.sessions.borrow().values() {
            s.close_get();
        }
    }

    /// Sessions and pool figures for a metrics snapshot.
    pub fn fill_snapshot(&self, snap: &mut crate::stats::Snapshot) {
        snap.sessions = self.sessions.borrow().len() as u64;
        snap.pool_waits = self.pool_waits.get();
        for p in self.pools.borrow().values() {
            let st = p.stats();
            snap.pools.push(crate::stats::PoolFigures {
                target: p.label().to_string(),
                idle: p.idle(),
                min_idle: p.config().min_idle,
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn session_ids_name_their_owner_and_are_random() {
        let a = new_session_id(3).unwrap();
        let b = new_session_id(3).unwrap();
        assert_eq!(a.len(), 36);
        assert_ne!(a, b);
        assert_eq!(owner_of(&a), Some(3));
        assert_eq!(owner_of("0003"), None);
        assert_eq!(owner_of(&a.to_uppercase()), None);
        assert!(a.bytes().all(|c| c.is_ascii_graphic()));
    }
}
