//! Per-worker warm pool of stdio children for one MCP target.
//!
//! Children are spawned ahead of demand (spawned, not initialized: the MCP
//! client's own `initialize` goes to the child), so a new session does not
//! wait for `npx` (~1 s cold). Each worker owns its pool (`Rc`, no locks);
//! only the count of live children is shared (`Arc<AtomicUsize>`), because
//! `max_live` bounds the whole process.
//!
//! Each pool publishes its idle count in a slot of an [`IdleBoard`] shared by
//! the pools of the same target on every worker, so a worker without an
//! idle child can find one that has (see `mcp::McpWorker::initialize`).
//!
//! A refill task keeps the pool's idle target ready, spawning the whole
//! deficit at once (at most [`MAX_PARALLEL_SPAWNS`] in flight). The target is
//! `min_idle` (this pool's share of the target's `config.mcp.minIdle`), or
//! more after a burst: the peak number of takes within a second
//! ([`demand::BURST_WINDOW`]), held for `demand_hold`, up to `burst_idle`,
//! once a take found no idle child after the start-up fill (takes the
//! stock keeps up with are no burst).
//! While takes keep coming, the refill keeps at most one idle child; the
//! rest of the deficit is spawned once no take came for `grow_after`, so
//! those start-ups do not take the CPU from the burst's own sessions.
//! Once the burst is older than that, idle children above the target that
//! have been idle for `demand_hold` are stopped. Every spawn holds a live
//! slot from the moment it starts, so `max_live` counts spawning children;
//! spawns above `min_idle` leave [`burst_reserve`] slots free.
//!
//! A `take` that finds no idle child waits for a spawn already in flight
//! that no other `take` is waiting for; only when there is none does it
//! spawn its own, so the takes of a burst start their spawns together.
//!
//! Spawn failures (command not
//! found, or children that die before [`HEALTHY_AFTER_MS`]) back off
//! exponentially and are logged once per step; while backing off after
//! repeated failures, `take` refuses with [`PoolError::Backoff`] instead of
//! forking on every request.
//!
//! - [`child`]: one child: spawn, line I/O, stop, reap
//! - `reader`, `writer`, `stderr`: stdout lines, stdin lines, stderr logging
//! - [`stdio`]: how stdin and stdout are connected (pipes on io_uring)
//! - `reaper`: the process thread that forks and reaps every child

pub mod child;
mod demand;
mod reader;
mod reaper;
mod stderr;
pub mod stdio;
mod writer;

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::future::poll_fn;
use std::io;
use std::rc::{Rc, Weak};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Poll, Waker};
use std::time::{Duration, Instant};

pub use child::{
    Child, ChildError, ChildHandle, ChildReader, ChildSpec, ChildWriter, ExitCause, ExitCounts,
    SpawnOptions,
};
pub use reader::READ_CHUNK_BYTES;
pub use reaper::{reap_orphans, LiveSlot};
pub use stderr::{
    StderrStats, STDERR_BURST_LINES, STDERR_LINES_PER_SEC, STDERR_MAX_LINE_BYTES,
    STDERR_REPORT_INTERVAL_MS,
};

/// A child that lives this long (idle) proves the command works: the
/// failure streak, and so the backoff, resets.
pub const HEALTHY_AFTER_MS: u64 = 1000;
/// Floor for the spawn backoff, whatever the configuration says.
pub const MIN_BACKOFF_MS: u64 = 10;
/// Consecutive spawn failures after which `take` stops spawning on demand
/// and answers [`PoolError::Backoff`] until the backoff expires.
pub const TAKE_REFUSES_AFTER_FAILURES: u32 = 2;
/// Refill tick: checks idle children for deaths and polls the orphan list.
pub const IDLE_CHECK_MS: u64 = 1000;
/// Faster tick while an idle child is younger than `HEALTHY_AFTER_MS`, so a
/// command that exits at once is noticed (and backed off) quickly.
pub const PROBATION_CHECK_MS: u64 = 100;
/// Refill spawns of one pool in flight at once.
pub const MAX_PARALLEL_SPAWNS: usize = 16;
/// Default of [`PoolConfig::burst_idle`]: the most idle children a burst can
/// make one target keep, all workers together (and never more than
/// `maxLive` divided among the targets).
pub const BURST_IDLE_PER_TARGET: usize = 32;
/// Default of [`PoolConfig::demand_hold`].
pub const DEMAND_HOLD: Duration = Duration::from_secs(30);
/// Default of [`PoolConfig::grow_after`].
pub const GROW_AFTER: Duration = Duration::from_secs(2);

pub use demand::BURST_WINDOW;

/// Live slots that idle children above `min_idle` never take: a quarter of
/// `max_live`, rounded up, so sessions keep room when a burst has passed.
pub fn burst_reserve(max_live: usize) -> usize {
    max_live.div_ceil(4)
}

/// This worker's share of `total` split over `workers`: the floor, plus one
/// for the first `total % workers` slots. `slot` is this worker's index,
/// rotated per target so the remainders of several targets spread out.
pub fn share(total: usize, workers: usize, slot: usize) -> usize {
    let workers = workers.max(1);
    total / workers + usize::from(slot % workers < total % workers)
}

/// Idle children of one target, one slot per worker; each worker's pool
/// writes only its own slot.
pub type IdleBoard = Arc<[AtomicUsize]>;

#[derive(Debug, Clone)]
pub struct PoolConfig {
    /// Children kept spawned and unused by this pool (its share of the
    /// process-wide `minIdle`).
    pub min_idle: usize,
    /// The most idle children recent demand can make this pool keep.
    pub burst_idle: usize,
    /// How long a burst keeps the idle target up, and how long an idle child
    /// above the target waits before it is stopped.
    pub demand_hold: Duration,
    /// Beyond one idle child, refills wait until no take came for this long
    /// (the burst is over).
    pub grow_after: Duration,
    /// Children alive at once, all workers together.
    pub max_live: usize,
    pub spawn_backoff_initial: Duration,
    pub spawn_backoff_max: Duration,
    /// Longest line accepted from a child's stdout.
    pub max_line_bytes: usize,
    /// Each stop phase (stdin EOF, then SIGTERM) waits this long.
    pub stop_grace: Duration,
}

impl PoolConfig {
    /// Spawn backoff is not configurable; the rest comes from `config.mcp`.
    pub const SPAWN_BACKOFF_INITIAL: Duration = Duration::from_millis(100);
    pub const SPAWN_BACKOFF_MAX: Duration = Duration::from_secs(10);
}

/// `config.mcp`'s defaults: they are defined once, in `config`.
impl Default for PoolConfig {
    fn default() -> Self {
        let mcp = crate::config::McpSettings::default();
        PoolConfig {
            min_idle: mcp.min_idle,
            burst_idle: BURST_IDLE_PER_TARGET,
            demand_hold: DEMAND_HOLD,
            grow_after: GROW_AFTER,
            max_live: mcp.max_live,
            spawn_backoff_initial: Self::SPAWN_BACKOFF_INITIAL,
            spawn_backoff_max: Self::SPAWN_BACKOFF_MAX,
            max_line_bytes: mcp.max_line_bytes,
            stop_grace: mcp.stop_grace,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum PoolError {
    /// `max_live` children are alive (all workers together).
    #[error("child pool exhausted ({max_live} live)")]
    Exhausted { max_live: usize },
    /// Recent spawns failed; the next attempt is allowed after `retry_after`.
    #[error("child spawn failing; retry in {retry_after:?}")]
    Backoff { retry_after: Duration },
    #[error("spawning child: {0}")]
    Spawn(#[source] io::Error),
    #[error("pool is shut down")]
    ShutDown,
}

/// Counters for tests and metrics (this worker's pool only).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PoolStats {
    pub spawned: u64,
    pub spawn_failures: u64,
    /// Idle children found dead (removed and reaped).
    pub died_idle: u64,
    pub taken: u64,
    /// Exits of this pool's children by cause, including taken ones.
    pub exited: u64,
    pub signaled: u64,
    pub stdin_closed: u64,
    pub terminated: u64,
    pub killed: u64,
    pub dropped: u64,
}

/// One worker's pool for one target. Call [`Pool::shutdown`] before dropping
/// it: a pool dropped with idle children kills their groups at once
/// (SIGKILL, no grace) and leaves them to [`reap_orphans`].
pub struct Pool {
    spec: ChildSpec,
    /// Replaced by a reload ([`Pool::reconfigure`]).
    cfg: RefCell<PoolConfig>,
    live: Arc<AtomicUsize>,
    label: Rc<str>,
    idle: RefCell<VecDeque<Child>>,
    exits: Rc<ExitCounts>,
    spawned: Cell<u64>,
    spawn_failures: Cell<u64>,
    died_idle: Cell<u64>,
    taken: Cell<u64>,
    /// Consecutive failures; the backoff doubles with each.
    streak: Cell<u32>,
    /// No spawn before this.
    next_attempt: Cell<Option<Instant>>,
    wake: Rc<Notify>,
    /// Refill spawns under way (spawning runs on the process thread), the
    /// tasks in `take` waiting for one of them to land, and how many wait.
    refilling: Cell<usize>,
    landed: RefCell<Vec<Waker>>,
    waiting: Cell<usize>,
    demand: RefCell<demand::Demand>,
    /// Stopped for being idle above the target.
    trimmed: Cell<u64>,
    /// The idle stock reached `min_idle` once (the start-up fill is over).
    warmed: Cell<bool>,
    started: Cell<bool>,
    shut: Cell<bool>,
    /// Where the idle count is published, and this pool's slot in it.
    board: RefCell<Option<(IdleBoard, usize)>>,
}

impl Pool {
    pub fn new(
        spec: ChildSpec,
        cfg: PoolConfig,
        live: Arc<AtomicUsize>,
        label: String,
    ) -> Rc<Pool> {
        Rc::new(Pool {
            spec,
            cfg: RefCell::new(cfg),
            live,
            label: Rc::from(label),
            idle: RefCell::new(VecDeque::new()),
            exits: Rc::new(ExitCounts::default()),
            spawned: Cell::new(0),
            spawn_failures: Cell::new(0),
            died_idle: Cell::new(0),
            taken: Cell::new(0),
            streak: Cell::new(0),
            next_attempt: Cell::new(None),
            wake: Rc::new(Notify::default()),
            refilling: Cell::new(0),
            landed: RefCell::new(Vec::new()),
            waiting: Cell::new(0),
            demand: RefCell::new(demand::Demand::default()),
            trimmed: Cell::new(0),
            warmed: Cell::new(false),
            started: Cell::new(false),
            shut: Cell::new(false),
            board: RefCell::new(None),
        })
    }

    /// Publishes this pool's idle count in `board[slot]` from now on.
    pub fn publish_idle(&self, board: IdleBoard, slot: usize) {
        *self.board.borrow_mut() = Some((board, slot));
        self.sync_board();
    }

    fn sync_board(&self) {
        if let Some((b, i)) = &*self.board.borrow() {
            b[*i].store(self.idle(), Ordering::Release);
        }
    }

    /// True while repeated spawn failures make `take` refuse to spawn.
    pub fn backing_off(&self) -> bool {
        self.next_attempt.get().is_some_and(|t| Instant::now() < t)
            && self.streak.get() >= TAKE_REFUSES_AFTER_FAILURES
    }

    /// Starts the refill task on the current monoio runtime. The task holds
    /// only a weak reference: dropping the pool ends it.
    pub fn start(self: &Rc<Self>) {
        if !self.started.replace(true) {
            monoio::spawn(refill_loop(Rc::downgrade(self), self.wake.clone()));
        }
    }

    /// An idle child if one is alive, else a new one if under `max_live`.
    pub async fn take(&self) -> Result<Child, PoolError> {
        let taken = self.take_inner().await;
        self.sync_board();
        taken
    }

    async fn take_inner(&self) -> Result<Child, PoolError> {
        if self.shut.get() {
            return Err(PoolError::ShutDown);
        }
        self.demand.borrow_mut().took(Instant::now());
        self.wake.notify();
        let mut first = true;
        loop {
            let Some(child) = self.idle.borrow_mut().pop_front() else {
                if std::mem::take(&mut first) && self.warmed.get() {
                    // Takes outran the idle stock (not just the first fill
                    // after start-up): a burst.
                    self.demand.borrow_mut().missed(Instant::now());
                }
                if self.refilling.get() > self.waiting.get() && !self.shut.get() {
                    // A refill spawn is under way that no other take waits
                    // for: its child is no colder than a new one, and another
                    // would count against max_live.
                    self.waiting.set(self.waiting.get() + 1);
                    self.refill_landed().await;
                    self.waiting.set(self.waiting.get() - 1);
                    continue;
                }
                break;
            };
            if child.try_exit().is_some() {
                self.died_while_idle(&child);
                continue;
            }
            self.taken.set(self.taken.get() + 1);
            return Ok(child);
        }
        // A single failure may be a fluke (a child killed from outside): the
        // request still gets a spawn. Repeated ones mean the command is
        // broken, and forking for every request would only add load.
        if let Some(t) = self.next_attempt.get() {
            let now = Instant::now();
            if now < t && self.streak.get() >= TAKE_REFUSES_AFTER_FAILURES {
                return Err(PoolError::Backoff {
                    retry_after: t - now,
                });
            }
        }
        let child = self.spawn_one().await?;
        self.taken.set(self.taken.get() + 1);
        Ok(child)
    }

    /// Live children of all workers together.
    pub fn live(&self) -> usize {
        self.live.load(Ordering::Acquire)
    }

    /// Whether a refill spawn is under way: [`take`](Self::take) waits for
    /// its child rather than failing.
    pub fn spawning(&self) -> bool {
        self.refilling.get() > 0 && !self.shut.get()
    }

    /// The name this pool logs under (target and worker).
    pub fn label(&self) -> &str {
        &self.label
    }

    pub fn idle(&self) -> usize {
        self.idle.borrow().len()
    }

    /// How many idle children the refill keeps now: `min_idle`, or the
    /// recent peak of takes up to `burst_idle`.
    pub fn idle_target(&self) -> usize {
        let (min, cap, hold) = {
            let c = self.cfg.borrow();
            (c.min_idle, c.burst_idle, c.demand_hold)
        };
        let peak = self.demand.borrow_mut().peak(Instant::now(), hold);
        min.max(peak.min(cap))
    }

    /// Idle children above `min_idle` that were stopped: for being idle for
    /// `demand_hold` after a burst, or to make room at `max_live`.
    pub fn trimmed(&self) -> u64 {
        self.trimmed.get()
    }

    /// At `max_live`: stops one idle child above `min_idle`, if there is one,
    /// so its slot can serve a session (of any target), and forgets the
    /// burst that made the pool keep it. Waits until it is gone.
    pub async fn release_surplus(&self) -> bool {
        let min = self.cfg.borrow().min_idle;
        if self.idle() <= min {
            return false;
        }
        let Some(c) = self.idle.borrow_mut().pop_back() else {
            return false;
        };
        self.demand.borrow_mut().forget();
        self.trimmed.set(self.trimmed.get() + 1);
        self.sync_board();
        let grace = self.cfg.borrow().stop_grace;
        c.stop(grace).await;
        true
    }

    pub fn config(&self) -> PoolConfig {
        self.cfg.borrow().clone()
    }

    /// Applies reloaded settings: the next refill keeps the new `min_idle`
    /// (extra idle children are stopped as after a burst), the next spawn obeys the
    /// new `max_live`, and new children get the new line limit.
    pub fn reconfigure(&self, cfg: PoolConfig) {
        *self.cfg.borrow_mut() = cfg;
        self.wake.notify();
    }

    pub fn stats(&self) -> PoolStats {
        let e = &self.exits;
        PoolStats {
            spawned: self.spawned.get(),
            spawn_failures: self.spawn_failures.get(),
            died_idle: self.died_idle.get(),
            taken: self.taken.get(),
            exited: e.get(ExitCause::Exited),
            signaled: e.get(ExitCause::Signaled),
            stdin_closed: e.get(ExitCause::StdinClosed),
            terminated: e.get(ExitCause::Terminated),
            killed: e.get(ExitCause::Killed),
            dropped: e.get(ExitCause::Dropped),
        }
    }

    /// Stops the refill task and every idle child (concurrently, each with
    /// `stop_grace`). Children already taken are their sessions' to stop.
    pub async fn shutdown(&self) {
        self.shut.set(true);
        self.wake.notify();
        let idle: Vec<Child> = self.idle.borrow_mut().drain(..).collect();
        self.sync_board();
        let grace = self.cfg.borrow().stop_grace;
        let stops: Vec<_> = idle
            .into_iter()
            .map(|c| monoio::spawn(async move { c.stop(grace).await }))
            .collect();
        for s in stops {
            s.await;
        }
    }

    async fn spawn_one(&self) -> Result<Child, PoolError> {
        let (max_live, max_line_bytes) = {
            let cfg = self.cfg.borrow();
            (cfg.max_live, cfg.max_line_bytes)
        };
        let slot =
            LiveSlot::try_acquire(&self.live, max_live).ok_or(PoolError::Exhausted { max_live })?;
        self.spawn_with(slot, max_line_bytes).await
    }

    async fn spawn_with(&self, slot: LiveSlot, max_line_bytes: usize) -> Result<Child, PoolError> {
        let opts = SpawnOptions {
            max_line_bytes,
            backend: self.label.clone(),
            live: Some(slot),
            exits: Some(self.exits.clone()),
        };
        match Child::spawn(&self.spec, opts).await {
            Ok(c) => {
                self.spawned.set(self.spawned.get() + 1);
                Ok(c)
            }
            Err(e) => {
                self.spawn_failures.set(self.spawn_failures.get() + 1);
                self.failed(&e.to_string());
                Err(PoolError::Spawn(e))
            }
        }
    }

    /// Waits until the refill spawn under way has finished.
    async fn refill_landed(&self) {
        let mut waiting = false;
        poll_fn(|cx| {
            // Woken once: the caller looks at the idle list again.
            if waiting || self.refilling.get() == 0 {
                return Poll::Ready(());
            }
            waiting = true;
            self.landed.borrow_mut().push(cx.waker().clone());
            Poll::Pending
        })
        .await
    }

    fn died_while_idle(&self, child: &Child) {
        self.died_idle.set(self.died_idle.get() + 1);
        let status = child.try_exit();
        let age = child.handle().age();
        if age < Duration::from_millis(HEALTHY_AFTER_MS) {
            self.failed(&format!(
                "child exited {} ms after spawn ({status:?})",
                age.as_millis()
            ));
        } else {
            tracing::warn!(target: "child", backend = %self.label, pid = child.pid(), ?status, "idle child exited");
        }
    }

    /// One backoff step, logged once.
    fn failed(&self, why: &str) {
        let streak = self.streak.get().saturating_add(1);
        self.streak.set(streak);
        let factor = 1u32.checked_shl(streak - 1).unwrap_or(u32::MAX);
        let delay = self
            .cfg
            .borrow()
            .spawn_backoff_initial
            .saturating_mul(factor)
            .min(self.cfg.borrow().spawn_backoff_max)
            // A zero backoff from config must not turn refill into a hot loop.
            .max(Duration::from_millis(MIN_BACKOFF_MS));
        self.next_attempt.set(Some(Instant::now() + delay));
        tracing::warn!(target: "child", backend = %self.label, cmd = %self.spec.cmd, failures = streak,
            retry_in_ms = delay.as_millis() as u64, "child spawn failed: {why}; backing off");
    }

    /// One refill pass; returns how long to sleep unless woken. Starts the
    /// spawns of the whole deficit at once; each lands on its own
    /// ([`land`]) and wakes the loop for another pass.
    fn refill(self: &Rc<Self>, now: Instant) -> Duration {
        let mut on_probation = false;
        let idle: Vec<Child> = self.idle.borrow_mut().drain(..).collect();
        for c in idle {
            if c.try_exit().is_some() {
                self.died_while_idle(&c);
                continue;
            }
            if c.handle().age() >= Duration::from_millis(HEALTHY_AFTER_MS) {
                // It stayed up: the command works, forget past failures.
                self.streak.set(0);
                self.next_attempt.set(None);
            } else {
                on_probation = true;
            }
            self.idle.borrow_mut().push_back(c);
        }
        if self.idle() >= self.cfg.borrow().min_idle {
            self.warmed.set(true);
        }
        let target = self.idle_target();
        self.trim_above(target);
        // While takes keep coming, the burst's own start-ups get the CPU: the
        // refill keeps one idle child at most (if min_idle asks for any), and
        // spawns the rest once takes pause for grow_after.
        let (min_idle, grow_after) = {
            let c = self.cfg.borrow();
            (c.min_idle, c.grow_after)
        };
        let quiet = self.demand.borrow().quiet_for(now) >= grow_after;
        let target = if quiet { target } else { min_idle.min(1) };
        if let Some(t) = self.next_attempt.get() {
            if now < t {
                return t - now;
            }
        }
        let (max_live, max_line_bytes) = {
            let cfg = self.cfg.borrow();
            (cfg.max_live, cfg.max_line_bytes)
        };
        let deficit = target.saturating_sub(self.idle() + self.refilling.get());
        let room = MAX_PARALLEL_SPAWNS.saturating_sub(self.refilling.get());
        for _ in 0..deficit.min(room) {
            // Children above min_idle leave the last quarter of max_live to
            // sessions (of any target).
            let surplus = self.idle() + self.refilling.get() >= min_idle;
            let cap = if surplus {
                max_live - burst_reserve(max_live)
            } else {
                max_live
            };
            // The slot first: a spawn that could not count against max_live
            // is not started (the next tick tries again).
            let Some(slot) = LiveSlot::try_acquire(&self.live, cap) else {
                break;
            };
            self.refilling.set(self.refilling.get() + 1);
            monoio::spawn(land(self.clone(), slot, max_line_bytes));
        }
        let growing = !quiet && self.idle_target() > self.idle();
        Duration::from_millis(if on_probation || growing || self.refilling.get() > 0 {
            PROBATION_CHECK_MS
        } else {
            IDLE_CHECK_MS
        })
    }

    /// Stops idle children above `target` that have been idle (unused since
    /// their spawn) for `demand_hold`: what a burst left behind.
    fn trim_above(&self, target: usize) {
        let (hold, grace) = {
            let c = self.cfg.borrow();
            (c.demand_hold, c.stop_grace)
        };
        while self.idle() > target {
            // The oldest idle child goes first.
            let old = self
                .idle
                .borrow()
                .front()
                .is_some_and(|c| c.handle().age() >= hold);
            if !old {
                break;
            }
            let Some(c) = self.idle.borrow_mut().pop_front() else {
                break;
            };
            self.trimmed.set(self.trimmed.get() + 1);
            tracing::debug!(target: "child", backend = %self.label, pid = c.pid(), "idle child above the pool's target stopped");
            monoio::spawn(async move { c.stop(grace).await });
        }
    }
}

/// One refill spawn: its child joins the idle list (or is stopped if the pool
/// shut down meanwhile); waiting takes and the refill loop are woken.
async fn land(pool: Rc<Pool>, slot: LiveSlot, max_line_bytes: usize) {
    let spawned = pool.spawn_with(slot, max_line_bytes).await;
    pool.refilling.set(pool.refilling.get() - 1);
    let again = match spawned {
        Ok(c) if pool.shut.get() => {
            let grace = pool.cfg.borrow().stop_grace;
            monoio::spawn(async move { c.stop(grace).await });
            false
        }
        Ok(c) => {
            pool.idle.borrow_mut().push_back(c);
            if pool.idle() >= pool.cfg.borrow().min_idle {
                pool.warmed.set(true);
            }
            pool.sync_board();
            true
        }
        // The failure set the backoff: the loop's next pass waits it out.
        Err(_) => true,
    };
    for w in pool.landed.borrow_mut().drain(..) {
        w.wake();
    }
    if again {
        pool.wake.notify();
    }
}

async fn refill_loop(pool: Weak<Pool>, wake: Rc<Notify>) {
    loop {
        reap_orphans();
        let pause = {
            let Some(pool) = pool.upgrade() else {
                return;
            };
            if pool.shut.get() {
                return;
            }
            let pause = pool.refill(Instant::now());
            pool.sync_board();
            pause
        };
        // Woken early by `take` or `shutdown`.
        let _ = monoio::time::timeout(pause, wake.notified()).await;
    }
}

/// A single-waiter wake-up flag (same thread only).
#[derive(Default)]
struct Notify {
    flag: Cell<bool>,
    waker: RefCell<Option<Waker>>,
}

impl Notify {
    fn notify(&self) {
        self.flag.set(true);
        if let Some(w) = self.waker.borrow_mut().take() {
            w.wake();
        }
    }

    async fn notified(&self) {
        poll_fn(|cx| {
            if self.flag.replace(false) {
                Poll::Ready(())
            } else {
                *self.waker.borrow_mut() = Some(cx.waker().clone());
                Poll::Pending
            }
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn min_idle_is_split_among_workers_and_reserve_rounds_up() {
        let shares = |total, workers, offset| -> Vec<usize> {
            (0..workers)
                .map(|w| share(total, workers, w + offset))
                .collect()
        };
        assert_eq!(shares(5, 2, 0), [3, 2]);
        assert_eq!(shares(1, 4, 0), [1, 0, 0, 0]);
        assert_eq!(shares(1, 4, 2), [0, 0, 1, 0], "rotated per target");
        assert_eq!(shares(8, 3, 1).iter().sum::<usize>(), 8);
        assert_eq!(shares(0, 2, 0), [0, 0]);
        assert_eq!((burst_reserve(2), burst_reserve(64)), (1, 16));
    }
}
