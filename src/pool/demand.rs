//! Recent demand on a pool: how many children were taken in the last
//! [`BURST_WINDOW`], and the peak of that count, held for `hold` after it was
//! reached. It counts only while takes outrun the idle stock: once a take
//! found no idle child, and for `hold` after. The pool keeps that many idle
//! children (within its cap), so such a burst finds them warm the next time.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// Takes this close together count as one burst.
pub const BURST_WINDOW: Duration = Duration::from_secs(1);

#[derive(Debug, Default)]
pub(super) struct Demand {
    /// Takes within the last `BURST_WINDOW`, oldest first.
    recent: VecDeque<Instant>,
    peak: usize,
    peak_at: Option<Instant>,
    last: Option<Instant>,
    /// The last take that found no idle child.
    missed_at: Option<Instant>,
}

impl Demand {
    fn prune(&mut self, now: Instant) {
        while self
            .recent
            .front()
            .is_some_and(|t| now.saturating_duration_since(*t) >= BURST_WINDOW)
        {
            self.recent.pop_front();
        }
    }

    /// Counts a take at `now`.
    pub fn took(&mut self, now: Instant) {
        self.prune(now);
        self.recent.push_back(now);
        self.last = Some(now);
        if self.recent.len() >= self.peak {
            self.peak = self.recent.len();
            self.peak_at = Some(now);
        }
    }

    /// A take at `now` found no idle child.
    pub fn missed(&mut self, now: Instant) {
        self.missed_at = Some(now);
    }

    /// The peak burst of the last `hold`: once the peak is older than that,
    /// it falls back to the takes of the last `BURST_WINDOW`. Zero unless a
    /// take found no idle child within `hold`.
    pub fn peak(&mut self, now: Instant, hold: Duration) -> usize {
        self.prune(now);
        if self
            .peak_at
            .is_some_and(|t| now.saturating_duration_since(t) >= hold)
        {
            self.peak = self.recent.len();
            self.peak_at = self.recent.back().copied();
        }
        let outran = self
            .missed_at
            .is_some_and(|t| now.saturating_duration_since(t) < hold);
        if outran {
            self.peak
        } else {
            0
        }
    }

    /// How long since the last take (forever if none).
    pub fn quiet_for(&self, now: Instant) -> Duration {
        self.last
            .map_or(Duration::MAX, |t| now.saturating_duration_since(t))
    }

    /// Forgets past bursts (their idle children were needed elsewhere).
    pub fn forget(&mut self) {
        self.recent.clear();
        self.peak = 0;
        self.peak_at = None;
        self.missed_at = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_is_held_then_decays() {
        let t0 = Instant::now();
        let hold = Duration::from_secs(30);
        let mut d = Demand::default();
        assert_eq!(d.peak(t0, hold), 0);
        for i in 0..16 {
            d.took(t0 + Duration::from_millis(i));
        }
        // Takes the idle stock kept up with are no burst.
        assert_eq!(d.peak(t0 + Duration::from_millis(20), hold), 0);
        d.missed(t0 + Duration::from_millis(2));
        assert_eq!(d.peak(t0 + Duration::from_millis(20), hold), 16);
        let quiet = d.quiet_for(t0 + Duration::from_millis(1515));
        assert_eq!(
            quiet,
            Duration::from_millis(1500),
            "past the burst window too"
        );
        // Takes spread out do not add up to a burst, nor lower the peak.
        for s in 2..6 {
            d.took(t0 + Duration::from_secs(s));
        }
        assert_eq!(d.peak(t0 + Duration::from_secs(6), hold), 16);
        // Quiet for `hold` after the peak: back to what the last second saw.
        assert_eq!(d.peak(t0 + Duration::from_secs(31), hold), 0);
        d.took(t0 + Duration::from_secs(32));
        d.missed(t0 + Duration::from_secs(32));
        assert_eq!(d.peak(t0 + Duration::from_secs(32), hold), 1);
        d.forget();
        assert_eq!(d.peak(t0 + Duration::from_secs(32), hold), 0);
    }
}
