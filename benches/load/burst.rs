//! Scenario 4b: bursts of concurrent `initialize`s. `n` sessions open at
//! once (each on its own connection, from one generator thread), then all
//! are deleted; `rounds` bursts, each after the pool has settled (its
//! refills spawned and loaded: [`SETTLE`], then no CPU for 1 s). Sessions live on whichever worker had the
//! idle child, as a user's would.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use crate::client::{block_on, McpSession};
use crate::procs::{self, Server};

/// Wait after a burst's sessions ended, before the pool's refill can be
/// seen loading.
const SETTLE: Duration = Duration::from_secs(3);

pub struct Burst {
    pub workers: usize,
    pub min_idle: usize,
    pub n: usize,
    /// `initialize` round trips (ms), burst by burst.
    pub bursts: Vec<Vec<f64>>,
    /// Children alive right after each burst (before its sessions end).
    pub live: Vec<usize>,
}

impl Burst {
    pub fn all(&self, skip_first: bool) -> Vec<f64> {
        let skip = usize::from(skip_first);
        self.bursts.iter().skip(skip).flatten().copied().collect()
    }
}

/// Runs `rounds` bursts of `n` on a started ringgate.
pub fn run(
    rg: &Server,
    src: IpAddr,
    min_idle: usize,
    workers: usize,
    n: usize,
    rounds: usize,
) -> Burst {
    let pid = rg.pid();
    let addr: SocketAddr = rg.addr;
    let mut out = Burst {
        workers,
        min_idle,
        n,
        bursts: Vec::new(),
        live: Vec::new(),
    };
    for round in 0..rounds {
        if round > 0 {
            // The pool starts its refill once `initialize`s pause for 2 s
            // (README, the pool sized to demand): let it start, then load.
            std::thread::sleep(SETTLE);
        }
        procs::wait_quiet(pid, Duration::from_secs(1), Duration::from_secs(40));
        let (times, live) = block_on(async move {
            let handles: Vec<_> = (0..n)
                .map(|_| monoio::spawn(McpSession::open(addr, src)))
                .collect();
            let mut sessions = Vec::new();
            let mut times = Vec::new();
            for h in handles {
                let (s, took) = h
                    .await
                    .unwrap_or_else(|e| panic!("initialize in a burst: {e}"));
                times.push(took.as_secs_f64() * 1000.0);
                sessions.push(s);
            }
            let live = procs::children(pid).len();
            for s in sessions {
                s.delete().await.unwrap_or_else(|e| panic!("{e}"));
            }
            (times, live)
        });
        eprintln!(
            "load: burst of {n} initialize (minIdle {min_idle}, w={workers}): p50 {:.1} ms, max {:.1} ms, {live} children live",
            quantile(&times, 0.5),
            times.iter().cloned().fold(0.0, f64::max)
        );
        out.bursts.push(times);
        out.live.push(live);
    }
    out
}

/// The `q` quantile (0..1) of `v`, nearest rank.
pub fn quantile(v: &[f64], q: f64) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    if s.is_empty() {
        return f64::NAN;
    }
    let i = ((s.len() as f64 * q).ceil() as usize).clamp(1, s.len()) - 1;
    s[i]
}
