//! A child's stderr: read by its own task, logged line by line through
//! `tracing` (target `child`, fields `session`, `pid`, `backend`), rate
//! limited so a chatty or broken server cannot flood the log. Nothing is lost
//! silently: every line is either logged or counted, and the counts of
//! dropped lines are logged at most once per [`STDERR_REPORT_INTERVAL_MS`] and
//! at EOF.

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::time::{Duration, Instant};

use monoio::net::UnixStream;

use super::reader::read_owned;

/// Lines logged at once before the rate limit applies.
pub const STDERR_BURST_LINES: u32 = 20;
/// Sustained lines per second per child after the burst.
pub const STDERR_LINES_PER_SEC: u32 = 20;
/// At most one "N stderr lines dropped" line per interval.
pub const STDERR_REPORT_INTERVAL_MS: u64 = 1000;
/// Longer lines are cut (the rest of the line is skipped, not logged as more lines).
pub const STDERR_MAX_LINE_BYTES: usize = 4096;

const READ_BYTES: usize = 16 * 1024;

/// What happened to a child's stderr so far (for tests and metrics).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StderrStats {
    /// Lines seen (a cut line counts once).
    pub lines: u64,
    pub logged: u64,
    pub dropped: u64,
    /// Drops that were reported in a "lines dropped" log line.
    pub reported: u64,
    /// EOF or a read error: every process holding the stderr end is gone.
    pub closed: bool,
}

/// Who the log lines are about. The session is set when the pool hands the
/// child to a session, after the task started.
pub(crate) struct StderrCtx {
    pub pid: u32,
    pub backend: Rc<str>,
    pub session: Rc<RefCell<Rc<str>>>,
    pub stats: Rc<Cell<StderrStats>>,
}

/// Token bucket over whole lines. Time is passed in, so tests drive it.
#[derive(Debug)]
pub(crate) struct RateLimit {
    burst: f64,
    per_sec: f64,
    tokens: f64,
    last: Instant,
    /// Dropped and not yet reported.
    pending: u64,
    last_report: Instant,
}

impl RateLimit {
    pub fn new(burst: u32, per_sec: u32, now: Instant) -> Self {
        RateLimit {
            burst: f64::from(burst),
            per_sec: f64::from(per_sec),
            tokens: f64::from(burst),
            last: now,
            pending: 0,
            last_report: now,
        }
    }

    /// Whether a line arriving at `now` may be logged; counts it if not.
    pub fn admit(&mut self, now: Instant) -> bool {
        let dt = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + dt * self.per_sec).min(self.burst);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            self.pending += 1;
            false
        }
    }

    /// The count to report now, if any: once per interval, or always when
    /// `force` (EOF).
    pub fn report(&mut self, now: Instant, force: bool) -> Option<u64> {
        let due = now.saturating_duration_since(self.last_report)
            >= Duration::from_millis(STDERR_REPORT_INTERVAL_MS);
        if self.pending == 0 || !(due || force) {
            return None;
        }
        self.last_report = now;
        Some(std::mem::take(&mut self.pending))
    }

    pub fn pending(&self) -> u64 {
        self.pending
    }
}

/// Reads and logs `stream` until EOF. Runs as a detached task per child.
pub(crate) async fn log_task(stream: UnixStream, ctx: StderrCtx) {
    let mut limit = RateLimit::new(STDERR_BURST_LINES, STDERR_LINES_PER_SEC, Instant::now());
    let mut carry: Vec<u8> = Vec::new();
    // Inside an over-long line that was already cut and logged.
    let mut skipping = false;
    let mut read = Box::pin(read_owned(stream, Vec::with_capacity(READ_BYTES)));
    loop {
        // With drops waiting to be reported, also wake up on a timer, so a
        // flood that stops is still reported while the child stays quiet.
        // The read future is kept across the timer: no bytes are lost.
        let done = if limit.pending() > 0 {
            let tick = Duration::from_millis(STDERR_REPORT_INTERVAL_MS);
            monoio::select! {
                r = &mut read => Some(r),
                _ = monoio::time::sleep(tick) => None,
            }
        } else {
            Some((&mut read).await)
        };
        let Some((stream, (res, mut chunk))) = done else {
            report(&ctx, &mut limit, false);
            continue;
        };
        let n = match res {
            Ok(n) => n,
            Err(e) => {
                tracing::warn!(target: "child", pid = ctx.pid, error = %e, "reading child stderr failed");
                0
            }
        };
        if n == 0 {
            if !carry.is_empty() && !skipping {
                line(&ctx, &mut limit, &carry);
            }
            report(&ctx, &mut limit, true);
            update(&ctx, |s| s.closed = true);
            return;
        }
        let mut rest = &chunk[..];
        while let Some(i) = memchr::memchr(b'\n', rest) {
            let (head, tail) = (&rest[..i], &rest[i + 1..]);
            if !skipping {
                if carry.is_empty() {
                    line(&ctx, &mut limit, head);
                } else {
                    carry.extend_from_slice(head);
                    line(&ctx, &mut limit, &carry);
                }
            }
            carry.clear();
            skipping = false;
            rest = tail;
        }
        if !skipping {
            carry.extend_from_slice(rest);
            if carry.len() > STDERR_MAX_LINE_BYTES {
                line(&ctx, &mut limit, &carry);
                carry.clear();
                skipping = true;
            }
        }
        chunk.clear();
        read = Box::pin(read_owned(stream, chunk));
    }
}

fn update(ctx: &StderrCtx, f: impl FnOnce(&mut StderrStats)) {
    let mut s = ctx.stats.get();
    f(&mut s);
    ctx.stats.set(s);
}

fn line(ctx: &StderrCtx, limit: &mut RateLimit, raw: &[u8]) {
    let now = Instant::now();
    let admitted = limit.admit(now);
    update(ctx, |s| {
        s.lines += 1;
        if admitted {
            s.logged += 1;
        } else {
            s.dropped += 1;
        }
    });
    report(ctx, limit, false);
    if !admitted {
        return;
    }
    let mut raw = raw.strip_suffix(b"\r").unwrap_or(raw);
    let cut = raw.len() > STDERR_MAX_LINE_BYTES;
    if cut {
        raw = &raw[..STDERR_MAX_LINE_BYTES];
    }
    let text = String::from_utf8_lossy(raw);
    let session = ctx.session.borrow().clone();
    tracing::info!(target: "child", session = %session, pid = ctx.pid, backend = %ctx.backend, cut, "{text}");
}

fn report(ctx: &StderrCtx, limit: &mut RateLimit, force: bool) {
    if let Some(n) = limit.report(Instant::now(), force) {
        update(ctx, |s| s.reported += n);
        let session = ctx.session.borrow().clone();
        tracing::warn!(target: "child", session = %session, pid = ctx.pid, backend = %ctx.backend,
            dropped = n, "{n} stderr lines dropped (rate limit)");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn burst_then_rate_then_report() {
        let t0 = Instant::now();
        let mut rl = RateLimit::new(20, 20, t0);
        let admitted = (0..100).filter(|_| rl.admit(t0)).count();
        assert_eq!(admitted, 20);
        assert_eq!(rl.pending(), 80);
        // Not due yet, unless forced.
        assert_eq!(rl.report(t0 + Duration::from_millis(500), false), None);
        // 500 ms later: 10 tokens back.
        let t1 = t0 + Duration::from_millis(500);
        let admitted = (0..100).filter(|_| rl.admit(t1)).count();
        assert_eq!(admitted, 10);
        let t2 = t0 + Duration::from_millis(1000);
        assert_eq!(rl.report(t2, false), Some(170));
        assert_eq!(rl.report(t2, true), None);
        // A long pause refills to the burst, not beyond.
        let t3 = t2 + Duration::from_secs(60);
        assert_eq!((0..100).filter(|_| rl.admit(t3)).count(), 20);
        assert_eq!(rl.report(t3, true), Some(80));
    }
}
