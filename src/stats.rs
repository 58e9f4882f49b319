//! Counters and Prometheus text.
//!
//! Each worker counts in plain `Cell`s that only its own thread touches, so
//! the hot path has no atomics and no locks. A scrape asks every worker for a
//! [`Snapshot`] over its control channel and sums them.

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, HashMap};
use std::fmt::Write;
use std::time::Duration;

/// Upper bounds (seconds) of the request-duration buckets.
pub const REQUEST_BUCKETS: [f64; 10] =
    [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0];
/// Upper bounds (seconds) of the whois-latency buckets.
pub const WHOIS_BUCKETS: [f64; 8] = [0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.01, 0.1, 1.0];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthzOutcome {
    Allowed,
    Denied,
    Error,
}

/// An `mcpAuthorization` decision: a call allowed or denied, or a list
/// request whose answer is filtered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum McpAuthzResult {
    Allow,
    Deny,
    Filter,
}

impl McpAuthzResult {
    pub const ALL: [McpAuthzResult; 3] = [Self::Allow, Self::Deny, Self::Filter];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Allow => "allow",
            Self::Deny => "deny",
            Self::Filter => "filter",
        }
    }
}

/// A latency histogram (cumulative on output, plain counts inside).
#[derive(Debug, Clone, Default)]
pub struct Hist {
    pub counts: Vec<u64>,
    pub sum_secs: f64,
    pub count: u64,
}

impl Hist {
    fn new(n: usize) -> Self {
        Hist {
            counts: vec![0; n + 1],
            ..Hist::default()
        }
    }

    fn observe(&mut self, bounds: &[f64], d: Duration) {
        let s = d.as_secs_f64();
        let i = bounds.iter().position(|b| s <= *b).unwrap_or(bounds.len());
        self.counts[i] += 1;
        self.sum_secs += s;
        self.count += 1;
    }

    fn add(&mut self, other: &Hist) {
        if self.counts.len() < other.counts.len() {
            self.counts.resize(other.counts.len(), 0);
        }
        for (a, b) in self.counts.iter_mut().zip(&other.counts) {
            *a += b;
        }
        self.sum_secs += other.sum_secs;
        self.count += other.count;
    }
}

/// One worker's counters.
pub struct Stats {
    /// route -> status -> count.
    requests: RefCell<HashMap<String, HashMap<u16, u64>>>,
    durations: RefCell<Hist>,
    whois: RefCell<Hist>,
    authz: [Cell<u64>; 3],
    cache_hits: Cell<u64>,
    cache_lookups: Cell<u64>,
    /// Calls to the authorization service that waited for a connection /
    /// were refused by the per-worker bound (and failed closed).
    authz_waits: [Cell<u64>; 2],
    pub pool_waits: Cell<u64>,
    pub bytes_in: Cell<u64>,
    pub bytes_out: Cell<u64>,
    /// Connections over the per-worker limit: told 503, closed unanswered.
    refused: [Cell<u64>; 2],
    /// Connections moved here from another worker (to the owner of the MCP
    /// session they named) / declined (draining, full, another config).
    moves: [Cell<u64>; 2],
    /// route -> `mcpAuthorization` decisions, indexed by `McpAuthzResult`.
    mcp_authz: RefCell<HashMap<String, [u64; 3]>>,
}

impl Default for Stats {
    fn default() -> Self {
        Stats {
            requests: RefCell::new(HashMap::new()),
            durations: RefCell::new(Hist::new(REQUEST_BUCKETS.len())),
            whois: RefCell::new(Hist::new(WHOIS_BUCKETS.len())),
            authz: Default::default(),
            cache_hits: Cell::new(0),
            cache_lookups: Cell::new(0),
            authz_waits: Default::default(),
            pool_waits: Cell::new(0),
            bytes_in: Cell::new(0),
            bytes_out: Cell::new(0),
            refused: Default::default(),
            moves: Default::default(),
            mcp_authz: RefCell::new(HashMap::new()),
        }
    }
}

fn bump(c: &Cell<u64>, n: u64) {
    c.set(c.get() + n);
}

impl Stats {
    pub fn request(&self, route: &str, status: u16, took: Duration) {
        self.count(route, status);
        self.durations.borrow_mut().observe(&REQUEST_BUCKETS, took);
    }

    /// A request refused before routing (400, 408, 413, 414, 431, ...):
    /// counted under route `""`, outside the duration histogram, which
    /// starts at a complete head.
    pub fn refusal(&self, status: u16) {
        self.count("", status);
    }

    fn count(&self, route: &str, status: u16) {
        let mut map = self.requests.borrow_mut();
        // A route seen before allocates nothing.
        let by_status = match map.get_mut(route) {
            Some(m) => m,
            None => map.entry(route.to_string()).or_default(),
        };
        *by_status.entry(status).or_default() += 1;
    }

    pub fn mcp_authz(&self, route: &str, result: McpAuthzResult) {
        let mut map = self.mcp_authz.borrow_mut();
        let counts = match map.get_mut(route) {
            Some(c) => c,
            None => map.entry(route.to_string()).or_default(),
        };
        counts[result as usize] += 1;
    }

    pub fn authz(&self, outcome: AuthzOutcome, from_cache: bool) {
        bump(&self.authz[outcome as usize], 1);
        bump(&self.cache_lookups, 1);
        if from_cache {
            bump(&self.cache_hits, 1);
        }
    }

    /// A call that found every connection to the service busy; `refused`
    /// when it got none within its timeout or the queue was full.
    pub fn authz_wait(&self, refused: bool) {
        bump(&self.authz_waits[usize::from(refused)], 1);
    }

    pub fn whois(&self, took: Duration) {
        self.whois.borrow_mut().observe(&WHOIS_BUCKETS, took);
    }

    pub fn add_bytes(&self, received: usize, sent: usize) {
        bump(&self.bytes_in, received as u64);
        bump(&self.bytes_out, sent as u64);
    }

    /// A connection over the limit; `answered` when it was told 503.
    pub fn refused(&self, answered: bool) {
        bump(&self.refused[usize::from(!answered)], 1);
    }

    /// A connection another worker offered to this one, the owner of the
    /// session it named: `adopted`, or declined.
    pub fn moved(&self, adopted: bool) {
        bump(&self.moves[usize::from(!adopted)], 1);
    }

    /// Copies the counters; gauges are filled in by the worker.
    pub fn snapshot(&self, worker: usize) -> Snapshot {
        Snapshot {
            worker,
            requests: self
                .requests
                .borrow()
                .iter()
                .flat_map(|(r, m)| m.iter().map(move |(s, n)| (r.clone(), *s, *n)))
                .collect(),
            durations: self.durations.borrow().clone(),
            whois: self.whois.borrow().clone(),
            authz: [
                self.authz[0].get(),
                self.authz[1].get(),
                self.authz[2].get(),
            ],
            cache_hits: self.cache_hits.get(),
            cache_lookups: self.cache_lookups.get(),
            authz_waits: [self.authz_waits[0].get(), self.authz_waits[1].get()],
            pool_waits: self.pool_waits.get(),
            bytes_in: self.bytes_in.get(),
            bytes_out: self.bytes_out.get(),
            refused: [self.refused[0].get(), self.refused[1].get()],
            moves: [self.moves[0].get(), self.moves[1].get()],
            mcp_authz: self
                .mcp_authz
                .borrow()
                .iter()
                .map(|(r, c)| (r.clone(), *c))
                .collect(),
            ..Snapshot::default()
        }
    }
}

/// A pool's figures in a snapshot.
#[derive(Debug, Clone, Default)]
pub struct PoolFigures {
    pub target: String,
    pub idle: usize,
    pub min_idle: usize,
    pub max_live: usize,
    /// Spawns failing: `initialize` is refused until the backoff ends.
    pub backing_off: bool,
    pub spawned: u64,
    pub spawn_failures: u64,
    /// Exits by cause.
    pub exits: Vec<(&'static str, u64)>,
}

/// One worker's counters and gauges at one moment; `Send`, for the scrape.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    pub worker: usize,
    pub requests: Vec<(String, u16, u64)>,
    pub durations: Hist,
    pub whois: Hist,
    pub authz: [u64; 3],
    pub cache_hits: u64,
    pub cache_lookups: u64,
    pub cache_entries: u64,
    /// Calls to the authorization service that waited / were refused.
    pub authz_waits: [u64; 2],
    pub pool_waits: u64,
    pub bytes_in: u64,
    pub bytes_out: u64,
    /// Over-limit connections answered 503 / closed unanswered.
    pub refused: [u64; 2],
    /// Connections moved here / declined by this worker.
    pub moves: [u64; 2],
    /// `mcpAuthorization` decisions by route: allow, deny, filter.
    pub mcp_authz: Vec<(String, [u64; 3])>,
    pub connections: u64,
    pub sessions: u64,
    /// Sessions with no request in flight and no open GET stream.
    pub idle_sessions: u64,
    /// Idle sessions ended to make room at `maxLive`.
    pub sessions_evicted: u64,
    pub pools: Vec<PoolFigures>,
    pub draining: bool,
}

/// Sums worker snapshots into Prometheus text exposition format.
pub fn render(snaps: &[Snapshot], live_children: usize) -> String {
    let mut requests: BTreeMap<(String, u16), u64> = BTreeMap::new();
    let mut durations = Hist::new(REQUEST_BUCKETS.len());
    let mut whois = Hist::new(WHOIS_BUCKETS.len());
    let mut total = Snapshot::default();
    let mut exits: BTreeMap<&str, u64> = BTreeMap::new();
    let mut mcp_authz: BTreeMap<&str, [u64; 3]> = BTreeMap::new();
    for s in snaps {
        for (r, c) in &s.mcp_authz {
            let t = mcp_authz.entry(r).or_default();
            for i in 0..3 {
                t[i] += c[i];
            }
        }
        for (r, st, n) in &s.requests {
            *requests.entry((r.clone(), *st)).or_default() += n;
        }
        durations.add(&s.durations);
        whois.add(&s.whois);
        for i in 0..3 {
            total.authz[i] += s.authz[i];
        }
        total.cache_hits += s.cache_hits;
        total.cache_lookups += s.cache_lookups;
        total.cache_entries += s.cache_entries;
        total.authz_waits[0] += s.authz_waits[0];
        total.authz_waits[1] += s.authz_waits[1];
        total.pool_waits += s.pool_waits;
        total.bytes_in += s.bytes_in;
        total.bytes_out += s.bytes_out;
        total.refused[0] += s.refused[0];
        total.refused[1] += s.refused[1];
        total.moves[0] += s.moves[0];
        total.moves[1] += s.moves[1];
        total.connections += s.connections;
        total.sessions += s.sessions;
        total.sessions_evicted += s.sessions_evicted;
        for p in &s.pools {
            total.pools.push(p.clone());
            for (cause, n) in &p.exits {
                *exits.entry(cause).or_default() += n;
            }
        }
    }
    let mut o = String::with_capacity(4096);
    let head = |o: &mut String, name: &str, kind: &str, help: &str| {
        let _ = writeln!(o, "# HELP {name} {help}\n# TYPE {name} {kind}");
    };
    head(
        &mut o,
        "ringgate_requests_total",
        "counter",
        "Requests answered, by route and status; route \"\" for those matching no route and those refused before routing.",
    );
    for ((route, status), n) in &requests {
        let _ = writeln!(
            o,
            "ringgate_requests_total{{route=\"{}\",status=\"{status}\"}} {n}",
            escape(route)
        );
    }
    head(
        &mut o,
        "ringgate_log_lines_dropped_total",
        "counter",
        "Log lines dropped because the log writer fell behind.",
    );
    let _ = writeln!(
        o,
        "ringgate_log_lines_dropped_total {}",
        crate::logging::sink::dropped_lines()
    );
    head(
        &mut o,
        "ringgate_connections_refused_total",
        "counter",
        "Connections over maxConnectionsPerWorker: answered 503, or closed unanswered during a flood.",
    );
    for (i, answered) in ["true", "false"].iter().enumerate() {
        let _ = writeln!(
            o,
            "ringgate_connections_refused_total{{answered=\"{answered}\"}} {}",
            total.refused[i]
        );
    }
    head(
        &mut o,
        "ringgate_connections_moved_total",
        "counter",
        "Connections moved to the worker owning the MCP session a request named.",
    );
    let _ = writeln!(o, "ringgate_connections_moved_total {}", total.moves[0]);
    head(
        &mut o,
        "ringgate_connection_moves_declined_total",
        "counter",
        "Moves the owning worker declined (draining, at maxConnectionsPerWorker, or a reload in between): served through a hand-off instead.",
    );
    let _ = writeln!(
        o,
        "ringgate_connection_moves_declined_total {}",
        total.moves[1]
    );
    histogram(
        &mut o,
        "ringgate_request_duration_seconds",
        "Time from a complete request head to the end of its response.",
        &REQUEST_BUCKETS,
        &durations,
    );
    head(
        &mut o,
        "ringgate_authz_checks_total",
        "counter",
        "extAuthz checks by outcome; cached counts answers taken from the cache.",
    );
    for (i, name) in ["allowed", "denied", "error"].iter().enumerate() {
        let _ = writeln!(
            o,
            "ringgate_authz_checks_total{{outcome=\"{name}\"}} {}",
            total.authz[i]
        );
    }
    let _ = writeln!(
        o,
        "ringgate_authz_checks_total{{outcome=\"cached\"}} {}",
        total.cache_hits
    );
    head(
        &mut o,
        "ringgate_mcp_authz_decisions_total",
        "counter",
        "mcpAuthorization decisions by route: calls allowed or denied, list requests filtered.",
    );
    for (route, counts) in &mcp_authz {
        for r in McpAuthzResult::ALL {
            let _ = writeln!(
                o,
                "ringgate_mcp_authz_decisions_total{{route=\"{}\",result=\"{}\"}} {}",
                escape(route),
                r.as_str(),
                counts[r as usize]
            );
        }
    }
    head(
        &mut o,
        "ringgate_authz_waits_total",
        "counter",
        "Authorization calls that found every connection busy; refused: got none in time (failed closed).",
    );
    for (i, name) in ["waited", "refused"].iter().enumerate() {
        let _ = writeln!(
            o,
            "ringgate_authz_waits_total{{outcome=\"{name}\"}} {}",
            total.authz_waits[i]
        );
    }
    histogram(
        &mut o,
        "ringgate_whois_duration_seconds",
        "Latency of calls to the authorization service.",
        &WHOIS_BUCKETS,
        &whois,
    );
    head(
        &mut o,
        "ringgate_authz_cache_entries",
        "gauge",
        "Entries in the per-worker authorization caches.",
    );
    let _ = writeln!(o, "ringgate_authz_cache_entries {}", total.cache_entries);
    head(
        &mut o,
        "ringgate_authz_cache_hit_ratio",
        "gauge",
        "Cache hits over lookups since start.",
    );
    let ratio = if total.cache_lookups == 0 {
        0.0
    } else {
        total.cache_hits as f64 / total.cache_lookups as f64
    };
    let _ = writeln!(o, "ringgate_authz_cache_hit_ratio {ratio}");
    head(
        &mut o,
        "ringgate_mcp_sessions",
        "gauge",
        "Live MCP sessions.",
    );
    let _ = writeln!(o, "ringgate_mcp_sessions {}", total.sessions);
    head(
        &mut o,
        "ringgate_mcp_sessions_evicted_total",
        "counter",
        "Idle MCP sessions ended to make room for a new one at maxLive.",
    );
    let _ = writeln!(
        o,
        "ringgate_mcp_sessions_evicted_total {}",
        total.sessions_evicted
    );
    head(
        &mut o,
        "ringgate_children_live",
        "gauge",
        "Stdio children alive, idle or in a session.",
    );
    let _ = writeln!(o, "ringgate_children_live {live_children}");
    head(
        &mut o,
        "ringgate_children_idle",
        "gauge",
        "Children spawned ahead of demand, waiting for a session.",
    );
    let idle: usize = total.pools.iter().map(|p| p.idle).sum();
    let _ = writeln!(o, "ringgate_children_idle {idle}");
    head(
        &mut o,
        "ringgate_children_spawned_total",
        "counter",
        "Children spawned.",
    );
    let spawned: u64 = total.pools.iter().map(|p| p.spawned).sum();
    let _ = writeln!(o, "ringgate_children_spawned_total {spawned}");
    head(
        &mut o,
        "ringgate_child_spawn_failures_total",
        "counter",
        "Spawns that failed or died at once.",
    );
    let failed: u64 = total.pools.iter().map(|p| p.spawn_failures).sum();
    let _ = writeln!(o, "ringgate_child_spawn_failures_total {failed}");
    head(
        &mut o,
        "ringgate_child_exits_total",
        "counter",
        "Child exits by cause: exited (on its own, with a code), signaled (by a signal ringgate did not send), stdin_closed, terminated, killed (stopped by ringgate: stdin EOF, then SIGTERM, then SIGKILL to its group), dropped (killed when its handle was dropped).",
    );
    for (cause, n) in &exits {
        let _ = writeln!(o, "ringgate_child_exits_total{{cause=\"{cause}\"}} {n}");
    }
    head(
        &mut o,
        "ringgate_pool_waits_total",
        "counter",
        "initialize requests that found no idle child.",
    );
    let _ = writeln!(o, "ringgate_pool_waits_total {}", total.pool_waits);
    head(
        &mut o,
        "ringgate_received_bytes_total",
        "counter",
        "Bytes read from clients.",
    );
    let _ = writeln!(o, "ringgate_received_bytes_total {}", total.bytes_in);
    head(
        &mut o,
        "ringgate_sent_bytes_total",
        "counter",
        "Bytes written to clients.",
    );
    let _ = writeln!(o, "ringgate_sent_bytes_total {}", total.bytes_out);
    head(
        &mut o,
        "ringgate_connections_open",
        "gauge",
        "Client connections open.",
    );
    let _ = writeln!(o, "ringgate_connections_open {}", total.connections);
    head(
        &mut o,
        "ringgate_workers",
        "gauge",
        "Workers that answered this scrape.",
    );
    let _ = writeln!(o, "ringgate_workers {}", snaps.len());
    o
}

fn histogram(o: &mut String, name: &str, help: &str, bounds: &[f64], h: &Hist) {
    let _ = writeln!(o, "# HELP {name} {help}\n# TYPE {name} histogram");
    let mut cum = 0;
    for (i, b) in bounds.iter().enumerate() {
        cum += h.counts.get(i).copied().unwrap_or(0);
        let _ = writeln!(o, "{name}_bucket{{le=\"{b}\"}} {cum}");
    }
    let _ = writeln!(o, "{name}_bucket{{le=\"+Inf\"}} {}", h.count);
    let _ = writeln!(o, "{name}_sum {}", h.sum_secs);
    let _ = writeln!(o, "{name}_count {}", h.count);
}

fn escape(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sums_workers_into_prometheus_text() {
        let a = Stats::default();
        let b = Stats::default();
        a.request("app", 200, Duration::from_micros(300));
        a.request("app", 200, Duration::from_millis(20));
        b.request("app", 200, Duration::from_millis(2));
        b.request("app", 403, Duration::from_millis(2));
        a.authz(AuthzOutcome::Allowed, false);
        b.authz(AuthzOutcome::Allowed, true);
        b.authz(AuthzOutcome::Error, false);
        a.authz_wait(false);
        b.authz_wait(false);
        b.authz_wait(true);
        a.moved(true);
        b.moved(true);
        b.moved(false);
        a.mcp_authz("app", McpAuthzResult::Allow);
        b.mcp_authz("app", McpAuthzResult::Deny);
        b.mcp_authz("app", McpAuthzResult::Deny);
        let text = render(&[a.snapshot(0), b.snapshot(1)], 3);
        for line in [
            "ringgate_requests_total{route=\"app\",status=\"200\"} 3",
            "ringgate_requests_total{route=\"app\",status=\"403\"} 1",
            "ringgate_request_duration_seconds_bucket{le=\"0.0005\"} 1",
            "ringgate_request_duration_seconds_bucket{le=\"0.005\"} 3",
            "ringgate_request_duration_seconds_bucket{le=\"+Inf\"} 4",
            "ringgate_request_duration_seconds_count 4",
            "ringgate_authz_checks_total{outcome=\"allowed\"} 2",
            "ringgate_authz_checks_total{outcome=\"error\"} 1",
            "ringgate_authz_checks_total{outcome=\"cached\"} 1",
            "ringgate_authz_waits_total{outcome=\"waited\"} 2",
            "ringgate_authz_waits_total{outcome=\"refused\"} 1",
            "ringgate_mcp_authz_decisions_total{route=\"app\",result=\"allow\"} 1",
            "ringgate_mcp_authz_decisions_total{route=\"app\",result=\"deny\"} 2",
            "ringgate_mcp_authz_decisions_total{route=\"app\",result=\"filter\"} 0",
            "ringgate_connections_moved_total 2",
            "ringgate_connection_moves_declined_total 1",
            "ringgate_children_live 3",
            "ringgate_workers 2",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "missing {line:?} in\n{text}"
            );
        }
    }
}
