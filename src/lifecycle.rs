//! Process lifecycle: signals, draining, reload, and the messages the signal
//! and admin threads send to workers.
//!
//! - SIGTERM / SIGINT: every worker drains (stops accepting, finishes what is
//!   in flight up to `config.drainTimeout`, stops its children) and the
//!   process exits 0. A second one exits at once.
//! - SIGHUP: the config file is loaded and compiled on the signal thread, off
//!   the hot path; a valid one is handed to every worker for new connections,
//!   an invalid one is logged, error by error, and the old one stays. The
//!   `prefixMode: never` probe (`mcp::probe`) runs here too, before the new
//!   config replaces the old one.

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::Instant;

use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
use tracing::{error, info, warn};

use crate::config::Config;
use crate::stats::Snapshot;

/// A message for one worker.
pub enum Control {
    Drain { deadline: Instant },
    Reload(Arc<Config>),
    Scrape(flume::Sender<Snapshot>),
}

/// The workers' control channels, and the process-wide draining flag.
pub struct Controls {
    pub workers: Vec<flume::Sender<Control>>,
    pub draining: AtomicBool,
}

impl Controls {
    pub fn new(n: usize) -> (Arc<Controls>, Vec<flume::Receiver<Control>>) {
        let (txs, rxs) = (0..n).map(|_| flume::unbounded()).unzip();
        (
            Arc::new(Controls {
                workers: txs,
                draining: AtomicBool::new(false),
            }),
            rxs,
        )
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
    }

    fn broadcast(&self, make: impl Fn() -> Control) {
        for w in &self.workers {
            let _ = w.send(make());
        }
    }

    /// Snapshots of every worker's counters; a worker that does not answer
    /// within a second is left out rather than stalling the scrape.
    pub fn scrape(&self) -> Vec<Snapshot> {
        let (tx, rx) = flume::unbounded();
        for w in &self.workers {
            let _ = w.send(Control::Scrape(tx.clone()));
        }
        drop(tx);
        let deadline = Instant::now() + std::time::Duration::from_secs(1);
        let mut out = Vec::new();
        while out.len() < self.workers.len() {
            match rx.recv_deadline(deadline) {
                Ok(s) => out.push(s),
                Err(_) => break,
            }
        }
        out.sort_by_key(|s| s.worker);
        out
    }
}

/// Runs the signal thread until the process ends.
pub fn spawn_signal_thread(
    controls: Arc<Controls>,
    config_path: PathBuf,
    current: Arc<Config>,
) -> std::io::Result<()> {
    let mut signals = signal_hook::iterator::Signals::new([SIGTERM, SIGINT, SIGHUP])?;
    std::thread::Builder::new()
        .name("ringgate-signals".into())
        .spawn(move || {
            let mut current = current;
            for sig in signals.forever() {
                match sig {
                    SIGHUP => {
                        let workers = controls.workers.len();
                        if let Some(new) = reload(&config_path, &current, workers) {
                            current = new.clone();
                            controls.broadcast(|| Control::Reload(new.clone()));
                        }
                    }
                    _ if controls.is_draining() => {
                        warn!("second signal: exiting now");
                        crate::logging::sink::flush();
                        std::process::exit(1);
                    }
                    _ => {
                        let deadline = Instant::now() + current.drain_timeout;
                        // Set before the log line, so whoever reads the line
                        // finds readiness already refusing.
                        controls.draining.store(true, Ordering::Relaxed);
                        info!(
                            timeout_ms = current.drain_timeout.as_millis() as u64,
                            "draining: no new connections; finishing in-flight requests"
                        );
                        controls.broadcast(|| Control::Drain { deadline });
                    }
                }
            }
        })?;
    Ok(())
}

/// Loads and compiles the config again; `None` keeps the running one.
fn reload(path: &Path, current: &Config, workers: usize) -> Option<Arc<Config>> {
    let new = match Config::from_file(path) {
        Ok(c) => c,
        Err(errs) => {
            for e in &errs.0 {
                error!(problem = %e, "reload refused: the config has problems; keeping the running one");
            }
            return None;
        }
    };
    let same_binds = new.binds.len() == current.binds.len()
        && new
            .binds
            .iter()
            .zip(&current.binds)
            .all(|(a, b)| a.port == b.port && a.address == b.address);
    if !same_binds {
        error!("reload refused: binds (ports, addresses) changed; restart to apply them");
        return None;
    }
    if let Err(e) = new.check_capacity(workers) {
        error!(problem = %e, "reload refused: keeping the running config");
        return None;
    }
    // Starts the targets of `prefixMode: never` backends once; signals wait
    // meanwhile (at most config.mcp.requestTimeout plus the children's stop).
    if let Err(errs) = crate::mcp::probe::check(&new) {
        for e in &errs.0 {
            error!(problem = %e, "reload refused: the config has problems; keeping the running one");
        }
        return None;
    }
    crate::logging::set_level(new.logging.level.as_deref());
    info!(routes = route_count(&new), "config reloaded");
    Some(Arc::new(new))
}

fn route_count(c: &Config) -> usize {
    c.binds
        .iter()
        .flat_map(|b| &b.listeners)
        .map(|l| l.routes.len())
        .sum()
}

/// A worker's draining flag, awaitable.
#[derive(Default)]
pub struct Drain {
    on: Cell<bool>,
    /// One slot per pending `DrainWait`; a dropped wait frees its slot, so
    /// this holds only live waiters (connections between requests, accept
    /// loops), however many requests were served.
    waiters: RefCell<Vec<Option<Waker>>>,
    free: RefCell<Vec<usize>>,
}

impl Drain {
    pub fn start(&self) {
        self.on.set(true);
        for w in self
            .waiters
            .borrow_mut()
            .iter_mut()
            .filter_map(Option::take)
        {
            w.wake();
        }
    }

    pub fn is_on(&self) -> bool {
        self.on.get()
    }

    /// Resolves once draining has started.
    pub fn wait(&self) -> DrainWait<'_> {
        DrainWait {
            drain: self,
            slot: None,
        }
    }
}

pub struct DrainWait<'a> {
    drain: &'a Drain,
    slot: Option<usize>,
}

impl Future for DrainWait<'_> {
    type Output = ();
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.drain.on.get() {
            return Poll::Ready(());
        }
        let mut w = self.drain.waiters.borrow_mut();
        match self.slot {
            Some(i) => match &mut w[i] {
                Some(x) if x.will_wake(cx.waker()) => {}
                x => *x = Some(cx.waker().clone()),
            },
            None => {
                let i = match self.drain.free.borrow_mut().pop() {
                    Some(i) => {
                        w[i] = Some(cx.waker().clone());
                        i
                    }
                    None => {
                        w.push(Some(cx.waker().clone()));
                        w.len() - 1
                    }
                };
                drop(w);
                self.slot = Some(i);
            }
        }
        Poll::Pending
    }
}

impl Drop for DrainWait<'_> {
    fn drop(&mut self) {
        if let Some(i) = self.slot {
            if let Some(slot) = self.drain.waiters.borrow_mut().get_mut(i) {
                *slot = None;
            }
            self.drain.free.borrow_mut().push(i);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every connection waits on the drain between requests; those waits
    /// must not accumulate (they once kept each finished task's memory).
    #[test]
    fn dropped_waits_free_their_slots() {
        let drain = Drain::default();
        let mut cx = Context::from_waker(Waker::noop());
        for _ in 0..1000 {
            let mut w = std::pin::pin!(drain.wait());
            assert!(w.as_mut().poll(&mut cx).is_pending());
        }
        assert_eq!(drain.waiters.borrow().len(), 1);
        let mut w = std::pin::pin!(drain.wait());
        assert!(w.as_mut().poll(&mut cx).is_pending());
        drain.start();
        assert!(w.as_mut().poll(&mut cx).is_ready());
    }
}
