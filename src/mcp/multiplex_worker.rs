//! The worker's side of multiplexed sessions: creating one (a child from
//! each target's warm pool on this worker), answering its jobs, and ending
//! it. A multiplexed session lives on the worker that created it, as every
//! session does. Its `initialize` goes, like a single-target one, to a worker
//! with idle children (of every target, or of most: see `room`), and at
//! `maxLive` makes room the same way; an idle multiplexed session is evicted
//! like any other.

use std::collections::HashMap;
use std::rc::Rc;
use std::time::{Duration, Instant};

use tracing::{info, warn};

use crate::config::{McpBackend, TargetFailureMode};
use crate::mcp::jsonrpc::Message;
use crate::mcp::multiplex_session::MultiSession;
use crate::mcp::room::Place;
use crate::mcp::session::{self, Session};
use crate::mcp::{job, new_session_id, Job, McpWorker, Reply, SessionJobs, NO_SERVER};
use crate::pool::PoolError;

/// Every MCP backend of the config, by key.
pub(super) fn backend_map(
    config: &crate::config::Config,
) -> HashMap<String, crate::config::McpBackend> {
    let routes = config.binds.iter().flat_map(|b| &b.listeners);
    let routes = routes.flat_map(|l| &l.routes);
    let mcp = routes
        .filter_map(|r| r.backend.as_ref())
        .map(|crate::config::Backend::Mcp(m)| m);
    mcp.map(|m| (m.key().to_string(), m.clone())).collect()
}

impl McpWorker {
    /// The multiplexed session `id`, if there is one.
    pub(super) fn multi_session(&self, id: &str) -> Option<Rc<MultiSession>> {
        self.multi.borrow().get(id).cloned()
    }

    /// The backend a key names, when it multiplexes.
    pub(super) fn multiplexed(&self, key: &str) -> Option<McpBackend> {
        self.backends
            .borrow()
            .get(key)
            .filter(|b| b.is_multiplexing())
            .cloned()
    }

    /// Creates a multiplexed session, here or on the worker with idle
    /// children of the most targets (the session then lives there).
    pub(super) async fn initialize_multi(
        self: &Rc<Self>,
        backend: McpBackend,
        key: String,
        identity: String,
        messages: Vec<Message>,
    ) -> Result<(String, flume::Receiver<Vec<u8>>), Reply> {
        match self.place_multi(&backend) {
            Place::Worker(w) => self.initialize_at(w, messages, &key, &identity).await,
            Place::Here | Place::Full => self.create_multi(backend, key, identity, messages).await,
        }
    }

    /// Creates a multiplexed session on this worker: one child per target
    /// from its pools (at `maxLive`, after making room). A target that
    /// cannot give one fails the session under failClosed, and is left out
    /// under failOpen (unless all are).
    pub(super) async fn create_multi(
        self: &Rc<Self>,
        backend: McpBackend,
        key: String,
        identity: String,
        messages: Vec<Message>,
    ) -> Result<(String, flume::Receiver<Vec<u8>>), Reply> {
        let fail_open = backend.failure_mode == TargetFailureMode::FailOpen;
        let mut children = Vec::new();
        let mut refusal = None;
        // Room made about once per target (once more: a slot freed here may
        // go to another worker's refill first).
        let mut rooms = 0;
        for t in &backend.targets {
            let pool = self.pools.borrow().get(t.key()).cloned();
            let got = loop {
                let Some(p) = &pool else {
                    break Err(Reply::Status(503, "MCP target not available"));
                };
                break match p.take().await {
                    Ok(c) => Ok(c),
                    Err(PoolError::Exhausted { .. })
                        if rooms <= backend.targets.len() && self.make_room().await =>
                    {
                        rooms += 1;
                        continue;
                    }
                    Err(PoolError::Exhausted { .. }) => Err(Reply::Status(503, NO_SERVER)),
                    Err(e) => {
                        warn!(target = t.name, error = %e, "cannot start MCP server");
                        Err(Reply::Status(503, "MCP server failed to start"))
                    }
                };
            };
            match got {
                Ok(c) => children.push((t.name.clone(), c)),
                Err(r) if fail_open => refusal = Some(r),
                Err(r) => {
                    refusal = Some(r);
                    break;
                }
            }
        }
        if children.is_empty() || (!fail_open && refusal.is_some()) {
            let grace = self.settings.borrow().stop_grace;
            for (_, c) in children {
                monoio::spawn(async move { c.handle().stop(grace).await });
            }
            return Err(refusal.unwrap_or(Reply::Status(503, NO_SERVER)));
        }
        let id = match new_session_id(self.worker) {
            Ok(id) => id,
            Err(e) => {
                warn!(error = %e, "no randomness for a session id (getrandom)");
                return Err(Reply::Status(503, "cannot create a session"));
            }
        };
        let (max_backlog, timeout) = {
            let s = self.settings.borrow();
            (s.max_buffered_messages, s.request_timeout)
        };
        let mut inner = Vec::new();
        let mut readers = Vec::new();
        for (name, child) in children {
            let (handle, writer, reader) = child.into_parts();
            handle.set_session(&id);
            let s = Session::new(
                format!("{id}/{name}").into(),
                identity.clone(),
                key.clone(),
                writer,
                handle,
                max_backlog,
                timeout,
            );
            readers.push((s.clone(), reader));
            inner.push((name, s));
        }
        let ms = MultiSession::new(
            id.clone().into(),
            identity,
            &backend,
            key,
            inner,
            max_backlog,
        );
        self.multi.borrow_mut().insert(ms.id.clone(), ms.clone());
        for c in ms.children() {
            let pid = c.session.handle().pid();
            info!(session = id, target = c.name, pid, "session target started");
        }
        info!(
            session = id,
            targets = ms.children().len(),
            "multiplexed session started"
        );
        for (t, (s, reader)) in readers.into_iter().enumerate() {
            let me = self.clone();
            let ms2 = ms.clone();
            monoio::spawn(session::read_child(s, reader, move || {
                if ms2.child_ended(t, "MCP server ended") {
                    me.remove_multi(&ms2, "MCP server ended");
                }
            }));
        }
        match ms.post(messages, None) {
            Ok(Some(rx)) => Ok((id, rx)),
            _ => {
                self.remove_multi(&ms, "MCP servers did not take initialize");
                Err(Reply::Status(503, "MCP server failed to start"))
            }
        }
    }

    /// Answers a job for a multiplexed session (as `answer` does for one
    /// child).
    pub(super) async fn answer_multi(self: &Rc<Self>, s: Rc<MultiSession>, job: Job) -> Reply {
        if s.identity != job.identity || s.backend != job.backend || s.is_ended() {
            return Reply::Status(404, "session not found");
        }
        job::serve(&s, job, || self.remove_multi(&s, "deleted by client"))
    }

    /// Forgets a multiplexed session and stops its children.
    pub(super) fn remove_multi(&self, s: &Rc<MultiSession>, reason: &str) {
        let removed = self.multi.borrow_mut().remove(&s.id).is_some();
        s.end(reason);
        if removed {
            let s = s.clone();
            let grace = self.settings.borrow().stop_grace;
            monoio::spawn(async move {
                s.stop(grace).await;
                info!(session = &*s.id, "MCP servers stopped");
            });
        }
    }

    /// The sweeper's pass over multiplexed sessions.
    pub(super) fn sweep_multi(&self, now: Instant, ttl: Duration) {
        let all: Vec<Rc<MultiSession>> = self.multi.borrow().values().cloned().collect();
        for s in all {
            if s.idle_since().is_some_and(|t| now.duration_since(t) >= ttl) {
                self.remove_multi(&s, "idle timeout");
            } else if s.expire_overdue(now) {
                self.remove_multi(&s, "ended");
            }
        }
    }

    /// Ends every multiplexed session (shutdown, or its backend left with a
    /// reload when `gone` says so) and waits for their children.
    pub(super) async fn end_multi(&self, gone: impl Fn(&str) -> bool, reason: &str) {
        let ended: Vec<Rc<MultiSession>> = self
            .multi
            .borrow()
            .values()
            .filter(|s| gone(&s.backend))
            .cloned()
            .collect();
        let grace = self.settings.borrow().stop_grace;
        for s in &ended {
            self.multi.borrow_mut().remove(&s.id);
            s.end(reason);
        }
        for s in ended {
            s.stop(grace).await;
        }
    }

    /// Requests in flight, GET streams closed, sessions counted: the
    /// multiplexed sessions' share of the worker's figures.
    pub(super) fn multi_in_flight(&self) -> usize {
        self.multi.borrow().values().map(|s| s.in_flight()).sum()
    }

    pub(super) fn multi_close_get(&self) {
        for s in self.multi.borrow().values() {
            s.close_get();
        }
    }

    pub(super) fn multi_counts(&self) -> (u64, u64) {
        let m = self.multi.borrow();
        let idle = m.values().filter(|s| s.idle_since().is_some()).count();
        (m.len() as u64, idle as u64)
    }
}

impl SessionJobs for Rc<MultiSession> {
    fn protocol(&self) -> Option<String> {
        MultiSession::protocol(self)
    }
    fn post(
        &self,
        messages: Vec<Message>,
        authz: Option<&crate::mcp::authz::PostAuthz>,
    ) -> Result<Option<flume::Receiver<Vec<u8>>>, session::PostError> {
        MultiSession::post(self, messages, authz)
    }
    fn open_get(&self) -> Option<flume::Receiver<Vec<u8>>> {
        MultiSession::open_get(self)
    }
}
