//! Where a new session gets its children, and how room is made at `maxLive`.
//!
//! `config.mcp.minIdle` is per target, for the whole process: each worker's
//! pool keeps its share ([`crate::pool::share`]), and an `initialize` on a
//! worker without an idle child goes to one that has (for a multiplexed
//! session: one with an idle child of every target, or of most). At
//! `maxLive`, room is made first by stopping an idle child that a burst left
//! above its pool's share (here, then on the other workers), then by evicting
//! the least recently used idle session of any worker, single-target or
//! multiplexed.

use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use tracing::info;

use crate::config::McpBackend;
use crate::mcp::multiplex_session::MultiSession;
use crate::mcp::session::Session;
use crate::mcp::{session_id, McpWorker, Op, Reply};
use crate::pool::PoolConfig;

/// Where an `initialize` can get a child.
pub(super) enum Place {
    /// An idle child here, or room to spawn one.
    Here,
    /// An idle child on that worker.
    Worker(usize),
    /// `maxLive` children live and none idle.
    Full,
}

/// An idle session that can be evicted.
pub(super) enum Victim {
    One(Rc<Session>),
    Multi(Rc<MultiSession>),
}

/// Spreads the remainders of `minIdle / workers` of several targets over
/// different workers.
fn target_offset(key: &str) -> usize {
    key.bytes()
        .fold(0usize, |h, b| h.wrapping_mul(31).wrapping_add(b as usize))
}

impl McpWorker {
    /// The pool settings of target `key` on this worker: its share of
    /// `minIdle`, and of the idle children a burst may make it keep
    /// (`pool::BURST_IDLE_PER_TARGET`, at most `maxLive` / targets, never
    /// below `minIdle`).
    pub(super) fn pool_config(&self, key: &str) -> PoolConfig {
        let s = self.settings.borrow();
        let workers = self.hub.inboxes.len().max(1);
        let targets = self.target_count.get().max(1);
        let burst = crate::pool::BURST_IDLE_PER_TARGET
            .min(s.max_live / targets)
            .max(s.min_idle);
        let slot = self.worker.wrapping_add(target_offset(key));
        PoolConfig {
            min_idle: crate::pool::share(s.min_idle, workers, slot),
            burst_idle: burst.div_ceil(workers),
            max_live: s.max_live,
            max_line_bytes: s.max_line_bytes,
            stop_grace: s.stop_grace,
            ..PoolConfig::default()
        }
    }

    /// Idle children of target `key` on worker `w`, as its pool published.
    fn idle_on(&self, key: &str, w: usize) -> usize {
        self.boards
            .borrow()
            .get(key)
            .and_then(|b| b.get(w).map(|n| n.load(Ordering::Acquire)))
            .unwrap_or(0)
    }

    /// The other workers, starting after this one so hand-offs spread.
    fn others(&self) -> impl Iterator<Item = usize> + '_ {
        let n = self.hub.inboxes.len();
        (1..n).map(move |i| (self.worker + i) % n)
    }

    /// Where an `initialize` for `backend` can get a child now.
    pub(super) fn place(&self, backend: &str) -> Place {
        let Some(pool) = self.pools.borrow().get(backend).cloned() else {
            return Place::Here;
        };
        if pool.idle() > 0 {
            return Place::Here;
        }
        if let Some(w) = self.others().find(|w| self.idle_on(backend, *w) > 0) {
            return Place::Worker(w);
        }
        self.pool_waits.set(self.pool_waits.get() + 1);
        // A child being spawned here (at start-up, after an eviction) counts
        // as live already: take it when it lands.
        if pool.spawning() || pool.live() < pool.config().max_live {
            Place::Here
        } else {
            Place::Full
        }
    }

    /// Where a multiplexed session's `initialize` goes: here if this worker
    /// has an idle child of every target, else the worker with idle children
    /// of the most targets, if that is more than here.
    pub(super) fn place_multi(&self, backend: &McpBackend) -> Place {
        let keys: Vec<String> = backend
            .targets
            .iter()
            .map(|t| t.key().to_string())
            .collect();
        let count = |w: usize| keys.iter().filter(|k| self.idle_on(k, w) > 0).count();
        let here = count(self.worker);
        if here == keys.len() {
            return Place::Here;
        }
        self.pool_waits.set(self.pool_waits.get() + 1);
        let best = self.others().fold(None, |best: Option<(usize, usize)>, w| {
            let n = count(w);
            match best {
                Some((b, _)) if b >= n => best,
                _ => Some((n, w)),
            }
        });
        match best {
            Some((n, w)) if n > here => Place::Worker(w),
            _ => Place::Here,
        }
    }

    /// This worker's least recently used idle session (single-target or
    /// multiplexed), and when it was last active.
    pub(super) fn lru_idle(&self) -> Option<(Instant, Victim)> {
        let one = self
            .sessions
            .borrow()
            .values()
            .filter(|s| !s.is_ended())
            .filter_map(|s| s.idle_since().map(|t| (t, Victim::One(s.clone()))))
            .min_by_key(|(t, _)| *t);
        let multi = self
            .multi
            .borrow()
            .values()
            .filter(|s| !s.is_ended())
            .filter_map(|s| s.idle_since().map(|t| (t, Victim::Multi(s.clone()))))
            .min_by_key(|(t, _)| *t);
        match (one, multi) {
            (Some(a), Some(b)) => Some(if b.0 < a.0 { b } else { a }),
            (a, b) => a.or(b),
        }
    }

    /// Ends this worker's least recently used idle session and waits until
    /// its children are gone (their live slots are then free). False if none
    /// is idle.
    pub(super) async fn evict_lru(&self) -> bool {
        let Some((since, victim)) = self.lru_idle() else {
            return false;
        };
        let reason = "evicted to make room for a new session";
        let grace = self.settings.borrow().stop_grace;
        let idle_ms = since.elapsed().as_millis() as u64;
        self.evicted.set(self.evicted.get() + 1);
        match victim {
            Victim::One(s) => {
                self.sessions.borrow_mut().remove(&s.id);
                info!(session = &*s.id, idle_ms, "session evicted");
                s.end(reason);
                let status = s.handle().stop(grace).await;
                info!(session = &*s.id, ?status, "MCP server stopped");
            }
            Victim::Multi(s) => {
                self.multi.borrow_mut().remove(&s.id);
                let targets = s.children().len();
                info!(session = &*s.id, idle_ms, targets, "session evicted");
                s.end(reason);
                s.stop(grace).await;
                info!(session = &*s.id, "MCP servers stopped");
            }
        }
        true
    }

    /// Stops one idle child above its pool's `minIdle` share on this worker
    /// (the pool with the most above it first); whether there was one.
    pub(super) async fn release_surplus(&self) -> bool {
        let mut pools: Vec<_> = self.pools.borrow().values().cloned().collect();
        pools.sort_by_key(|p| std::cmp::Reverse(p.idle().saturating_sub(p.config().min_idle)));
        for p in pools {
            if p.release_surplus().await {
                info!(
                    pool = p.label(),
                    "idle child above minIdle stopped to make room"
                );
                return true;
            }
        }
        false
    }

    /// At `maxLive`: stops an idle child left by a burst (this worker's, then
    /// another's), else evicts the least recently used idle session of all
    /// workers. Each worker names its own oldest; the oldest of those is
    /// evicted (or, if it became busy meanwhile, the next).
    pub(super) async fn make_room(self: &Rc<Self>) -> bool {
        let mut done = self.release_surplus().await;
        for w in self.others().collect::<Vec<_>>() {
            if done {
                break;
            }
            done = matches!(
                self.ask(w, Op::ReleaseSurplus, "", "").await,
                Some(Reply::Evicted(true))
            );
        }
        if !done {
            done = self.evict_oldest().await;
        }
        if done {
            // The stopped child frees its slot once it has exited.
            let s = self.settings.borrow().clone();
            let limit = 2 * s.stop_grace + Duration::from_secs(1);
            session_id::wait_below(&self.live, s.max_live, limit).await;
        }
        done
    }

    async fn evict_oldest(self: &Rc<Self>) -> bool {
        let mut oldest: Vec<(Instant, usize)> = Vec::new();
        if let Some((t, _)) = self.lru_idle() {
            oldest.push((t, self.worker));
        }
        for w in self.others().collect::<Vec<_>>() {
            if let Some(Reply::OldestIdle(Some(t))) = self.ask(w, Op::OldestIdle, "", "").await {
                oldest.push((t, w));
            }
        }
        oldest.sort();
        for (_, w) in oldest {
            let done = if w == self.worker {
                self.evict_lru().await
            } else {
                matches!(
                    self.ask(w, Op::Evict, "", "").await,
                    Some(Reply::Evicted(true))
                )
            };
            if done {
                return true;
            }
        }
        false
    }
}
