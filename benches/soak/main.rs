//! The soak: `cargo bench --bench soak -- [--minutes N | --seconds N]`.
//!
//! Bounded (10 minutes by default), loopback only, and it stops by itself.
//! It starts what it drives, as the load benchmark does (and with its
//! code: `benches/load/procs.rs` and `client.rs`): a fake tailscaled on a
//! Unix socket (`tests/support/fake_tailscaled.rs`), ringgate with 2
//! workers, and the real server-everything children through ringgate's
//! warm pool. Then it runs a mixed load at a moderate rate (see
//! `traffic.rs`): GET /hello from known peers (200) and unknown ones (403),
//! MCP sessions (initialize, notifications/initialized, tools/call echo,
//! DELETE), and about 1% injected faults: clients gone mid-head, mid-body
//! and mid-SSE, malformed requests (400), whois answering 500, slowly, or
//! never (the authz timeout), and MCP children SIGKILLed under a session.
//!
//! Every request is accounted for (an expected answer, an expected fault
//! outcome, or a failure with its reason), and the requests ringgate saw
//! are compared with its `ringgate_requests_total`. ringgate's RSS, fds,
//! threads and children are sampled after a warm-up and a quiet period,
//! every second while the load runs (a line every 30 s), and at the end
//! after the same quiet period; they must come back to where they started.
//! Exits non-zero if anything is unaccounted or unexpected, if a request
//! that should be denied was allowed, or if a resource did not come back.
//!
//! Options: `--minutes N` (10), `--seconds N`, `--warmup S` (15),
//! `--workers N` (2), `--rate R` (GET /hello per second, 300),
//! `--sessions N` (MCP sessions at once, 4), `--faults PCT` (1.0),
//! `--seed N`.
//!
//! Every process it starts dies with it (`PR_SET_PDEATHSIG`), and it reaps
//! ringgate's children as a subreaper. Ctrl-C stops the load early and
//! still settles, reports and cleans up; a second Ctrl-C exits at once.

#[allow(dead_code)]
#[path = "../load/baseline.rs"]
mod baseline;
#[allow(dead_code)]
#[path = "../load/client.rs"]
mod client;
#[path = "../../tests/support/fake_tailscaled.rs"]
mod fake_tailscaled;
mod ledger;
#[allow(dead_code)]
#[path = "../load/procs.rs"]
mod procs;
mod sample;
mod traffic;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use fake_tailscaled::{seed_ext_authz, FakeTailscaled, Fault, Node, SEED_ACCESS_LOG};
use ledger::{Ledger, Progress, Summary};
use procs::{ensure_peers, server_js, Server};
use sample::{mib, Metrics, Resources};

/// `procs.rs` re-executes the bench binary in this role for the load
/// benchmark's baseline server; the soak has no such role.
pub const ROLE_ENV: &str = "RINGGATE_BENCH_ROLE";
const BIN: &str = env!("CARGO_BIN_EXE_ringgate");
/// Idle children per worker.
const MIN_IDLE: usize = 1;
/// Longest wait for ringgate to settle (sessions gone, pool back to
/// minIdle, no connections, no CPU).
const SETTLE_MAX: Duration = Duration::from_secs(60);
/// A progress line this often.
const REPORT_EVERY: Duration = Duration::from_secs(30);
/// RSS may end this much above its start (allocator caches, lazily grown
/// tables) before it counts as not coming back.
const RSS_SLACK_KIB: u64 = 4096;
const RSS_SLACK_SHARE: f64 = 0.10;

struct Opts {
    duration: Duration,
    warmup: Duration,
    workers: usize,
    rate: f64,
    sessions: usize,
    fault_pct: f64,
    seed: u64,
}

impl Opts {
    fn parse() -> Opts {
        let mut o = Opts {
            duration: Duration::from_secs(600),
            warmup: Duration::from_secs(15),
            workers: 2,
            rate: 300.0,
            sessions: 4,
            fault_pct: 1.0,
            seed: 0x50a4,
        };
        let mut args = std::env::args().skip(1);
        let num = |v: Option<String>, what: &str| -> f64 {
            v.and_then(|v| v.parse().ok())
                .unwrap_or_else(|| panic!("{what} needs a number"))
        };
        while let Some(a) = args.next() {
            match a.as_str() {
                "--minutes" => {
                    o.duration = Duration::from_secs_f64(num(args.next(), "--minutes") * 60.0)
                }
                "--seconds" => o.duration = Duration::from_secs_f64(num(args.next(), "--seconds")),
                "--warmup" => o.warmup = Duration::from_secs_f64(num(args.next(), "--warmup")),
                "--workers" => o.workers = (num(args.next(), "--workers") as usize).max(1),
                "--rate" => o.rate = num(args.next(), "--rate").max(1.0),
                "--sessions" => o.sessions = num(args.next(), "--sessions") as usize,
                "--faults" => o.fault_pct = num(args.next(), "--faults").clamp(0.0, 50.0),
                "--seed" => o.seed = num(args.next(), "--seed") as u64,
                // cargo bench passes `--bench`; a filter means nothing here.
                _ => {}
            }
        }
        o
    }
}

/// The fake knows the soak's nodes; the fault addresses fail in their own
/// ways from the start.
fn start_fake() -> FakeTailscaled {
    let mut b = FakeTailscaled::builder();
    for (name, login, addrs) in traffic::NODES {
        let mut n = Node::user(addrs[0], name, login);
        for a in &addrs[1..] {
            n = n.with_addr(a);
        }
        b = b.node(n);
    }
    let slow = traffic::slow_ips();
    let mut n = Node::user(&slow[0], traffic::SLOW_NODE.0, traffic::SLOW_NODE.1);
    for a in &slow[1..] {
        n = n.with_addr(a);
    }
    let fake = b.node(n).start();
    for ip in traffic::failing_ips() {
        fake.set_fault_for(&ip, Some(Fault::Status500));
    }
    for ip in &slow {
        fake.set_fault_for(ip, Some(Fault::Slow(traffic::SLOW_WHOIS)));
    }
    for ip in traffic::hanging_ips() {
        fake.set_fault_for(&ip, Some(Fault::Hang));
    }
    fake
}

/// The MCP child is node on server-everything, started through `sh` so
/// that it knows its own pid (`exec` keeps it) and `get-env` tells it.
fn soak_yaml(whois: &str) -> String {
    let script = format!(
        "export SOAK_CHILD_PID=$$; exec node '{}'",
        server_js().display()
    );
    // A short cache, so that whois is asked all along the soak.
    let policies = seed_ext_authz(whois, &["timeout: 1s", "cache: {ttl: 5s, negativeTtl: 2s}"]);
    procs::ringgate_yaml(
        "soak",
        MIN_IDLE,
        SEED_ACCESS_LOG,
        &policies,
        "sh",
        &["-c".to_string(), script],
    )
}

/// What settling found.
struct Settled {
    ok: bool,
    took: Duration,
    why: String,
    metrics: Metrics,
}

/// Waits until ringgate is at rest: no sessions, no client connections,
/// exactly `idle` children (all idle), and no CPU for a second.
fn settle(rg: &Server, stats: std::net::SocketAddr, idle: usize) -> Settled {
    let t0 = Instant::now();
    let pid = rg.pid();
    let mut why = String::new();
    while t0.elapsed() < SETTLE_MAX {
        match Metrics::scrape(stats) {
            Ok(m) => {
                let (sessions, conns) = (
                    m.get("ringgate_mcp_sessions"),
                    m.get("ringgate_connections_open"),
                );
                let (live, idle_now) = (
                    m.get("ringgate_children_live"),
                    m.get("ringgate_children_idle"),
                );
                let procs = Resources::of(pid).children;
                let at_rest = sessions == 0.0
                    && conns == 0.0
                    && live as usize == idle
                    && idle_now as usize == idle
                    && procs == idle;
                why = format!(
                    "sessions {sessions}, connections {conns}, children live {live} idle {idle_now} (processes {procs}), want {idle} idle"
                );
                if at_rest
                    && procs::wait_quiet(pid, Duration::from_secs(1), Duration::from_secs(20))
                {
                    return Settled {
                        ok: true,
                        took: t0.elapsed(),
                        why,
                        metrics: Metrics::scrape(stats).unwrap_or(m),
                    };
                }
            }
            Err(e) => why = e,
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    Settled {
        ok: false,
        took: t0.elapsed(),
        why,
        metrics: Metrics::scrape(stats).unwrap_or_default(),
    }
}

/// User+system CPU seconds of ringgate's reaped children (`cutime` and
/// `cstime`): the MCP children that ended.
fn reaped_children_cpu(pid: u32) -> f64 {
    let Ok(s) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0.0;
    };
    let Some((_, rest)) = s.rsplit_once(')') else {
        return 0.0;
    };
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    (ticks(13) + ticks(14)) as f64 / hz
}

fn main() {
    let o = Opts::parse();
    procs::become_subreaper();
    ensure_peers("soak");
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        // The first signal stops the load; a second one exits at once.
        signal_hook::flag::register_conditional_shutdown(sig, 130, stop.clone())
            .expect("signal handler");
        signal_hook::flag::register(sig, stop.clone()).expect("signal handler");
    }
    let loadavg = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    eprintln!(
        "soak: {:.0} s after a {:.0} s warm-up; {} workers; {:.0} GET/s, {} MCP sessions at once, {:.1}% faults; loadavg {}",
        o.duration.as_secs_f64(),
        o.warmup.as_secs_f64(),
        o.workers,
        o.rate,
        o.sessions,
        o.fault_pct,
        loadavg.split_whitespace().take(3).collect::<Vec<_>>().join(" ")
    );

    let fake = start_fake();
    let mut rg =
        Server::ringgate_in_group(BIN, &soak_yaml(&fake.target()), o.workers, "info", true);
    let pid = rg.pid();
    let stats = rg.stats_addr.expect("ringgate logged no stats address");
    let idle = o.workers * MIN_IDLE;
    let first = settle(&rg, stats, idle);
    assert!(first.ok, "ringgate did not come up: {}", first.why);
    eprintln!(
        "soak: ringgate pid {pid} on {}, metrics on {stats}; {}",
        rg.addr,
        Resources::of(pid).line()
    );

    let progress = Arc::new(Progress::default());
    let plan = |d: Duration, seed: u64| traffic::Plan {
        addr: rg.addr,
        rg_pid: pid,
        http_rate: o.rate,
        sessions: o.sessions,
        fault_pct: o.fault_pct,
        until: Instant::now() + d,
        stop: stop.clone(),
        seed,
    };

    // Warm-up: the same mix, so that lazily built state exists before the
    // baseline is taken.
    let warm = traffic::run(
        plan(o.warmup, o.seed ^ 0xfeed),
        Ledger::new(progress.clone()),
    )
    .summary();
    let base_settle = settle(&rg, stats, idle);
    let start = Resources::of(pid);
    let start_fds = (sample::fd_kinds(pid), fake.open_connections());
    let cpu0 = (
        procs::cpu_seconds(pid),
        reaped_children_cpu(pid),
        procs::self_cpu_seconds(),
    );
    procs::reset_peak_rss(pid);
    eprintln!(
        "soak: warm-up done: {} requests ({} unexpected); settled in {:.1} s; start: {}",
        warm.sent,
        warm.unexpected + warm.breaches,
        base_settle.took.as_secs_f64(),
        start.line()
    );

    // The soak.
    let progress = Arc::new(Progress::default());
    let t0 = Instant::now();
    let sampler_stop = Arc::new(AtomicBool::new(false));
    let sampler = {
        let (progress, stop) = (progress.clone(), sampler_stop.clone());
        std::thread::spawn(move || sampler(pid, stats, progress, stop, t0, start))
    };
    let main = traffic::run(plan(o.duration, o.seed), Ledger::new(progress)).summary();
    let ran = t0.elapsed();
    sampler_stop.store(true, Ordering::Relaxed);
    let mut peak = sampler.join().unwrap_or(start);
    let end_settle = settle(&rg, stats, idle);
    let end = Resources::of(pid);
    let end_fds = (sample::fd_kinds(pid), fake.open_connections());
    peak = peak.max(end);
    let cpu1 = (
        procs::cpu_seconds(pid),
        reaped_children_cpu(pid),
        procs::self_cpu_seconds(),
    );
    rg.assert_running();
    let interrupted = stop.load(Ordering::Relaxed);

    let (text, ok) = report(&Report {
        o: &o,
        ran,
        interrupted,
        warm: &warm,
        main: &main,
        start,
        peak,
        end,
        base_settle: &base_settle,
        end_settle: &end_settle,
        cpu: (cpu1.0 - cpu0.0, cpu1.1 - cpu0.1, cpu1.2 - cpu0.2),
        fds: (start_fds, end_fds),
    });
    println!("{text}");
    rg.stop();
    drop(fake);
    if interrupted {
        eprintln!("soak: interrupted");
        std::process::exit(130);
    }
    if !ok {
        eprintln!("soak: FAILED (see the checks above)");
        std::process::exit(1);
    }
}

/// Samples ringgate every second while the load runs, prints a line every
/// [`REPORT_EVERY`], and returns the peaks.
fn sampler(
    pid: u32,
    stats: std::net::SocketAddr,
    progress: Arc<Progress>,
    stop: Arc<AtomicBool>,
    t0: Instant,
    start: Resources,
) -> Resources {
    let mut peak = start;
    let mut next_line = t0 + REPORT_EVERY;
    while !stop.load(Ordering::Relaxed) {
        std::thread::sleep(Duration::from_millis(1000));
        let r = Resources::of(pid);
        peak = peak.max(r);
        if Instant::now() >= next_line {
            next_line += REPORT_EVERY;
            let m = Metrics::scrape(stats).unwrap_or_default();
            eprintln!(
                "soak: {:>4.0} s: sent {} (bad {}), faults {}; ringgate {}; sessions {}, connections {}, children live {} idle {}",
                t0.elapsed().as_secs_f64(),
                progress.sent.load(Ordering::Relaxed),
                progress.bad.load(Ordering::Relaxed),
                progress.faults.load(Ordering::Relaxed),
                r.line(),
                m.get("ringgate_mcp_sessions"),
                m.get("ringgate_connections_open"),
                m.get("ringgate_children_live"),
                m.get("ringgate_children_idle"),
            );
        }
    }
    peak
}

/// ringgate's fds by kind, and the whois connections open at the fake.
type FdView = (BTreeMap<String, usize>, usize);

struct Report<'a> {
    o: &'a Opts,
    ran: Duration,
    interrupted: bool,
    warm: &'a Summary,
    main: &'a Summary,
    start: Resources,
    peak: Resources,
    end: Resources,
    base_settle: &'a Settled,
    end_settle: &'a Settled,
    /// CPU seconds during the soak: ringgate, its reaped children, the
    /// generator (this process, with the fake tailscaled).
    cpu: (f64, f64, f64),
    /// ringgate's fds by kind, and the whois connections open at the fake
    /// tailscaled (ringgate's pooled authz connections), at start and end.
    fds: (FdView, FdView),
}

fn report(r: &Report) -> (String, bool) {
    let (o, m) = (r.o, r.main);
    let mut s = String::new();
    let _ = writeln!(
        s,
        "\nringgate soak on loopback: {:.0} s{}, {} workers, {:.0} GET /hello per s (70% known peers, 30% unknown), \
         {} MCP sessions at once, faults {:.1}% of requests; warm-up {:.0} s ({} requests, {} unexpected)\n",
        r.ran.as_secs_f64(),
        if r.interrupted { " (INTERRUPTED)" } else { "" },
        o.workers,
        o.rate,
        o.sessions,
        o.fault_pct,
        o.warmup.as_secs_f64(),
        r.warm.sent,
        r.warm.unexpected + r.warm.breaches,
    );
    let _ = writeln!(
        s,
        "| class | outcome | kind | requests |\n|---|---|---|---|"
    );
    for (class, kind, outcome, n) in &m.rows {
        let _ = writeln!(s, "| {class} | {outcome} | {} | {n} |", kind.label());
    }
    let secs = r.ran.as_secs_f64().max(0.001);
    let _ = writeln!(
        s,
        "\nRequests: sent {}, accounted {} ({:.0}/s): expected {}, injected-fault outcomes {}, unexpected {}, breaches (allowed where denied was due) {}",
        m.sent,
        m.recorded,
        m.recorded as f64 / secs,
        m.expected,
        m.fault,
        m.unexpected,
        m.breaches
    );
    let _ = writeln!(
        s,
        "Faults injected: {} ({:.2}% of requests sent): {}",
        m.faults_total(),
        m.faults_total() as f64 * 100.0 / m.sent.max(1) as f64,
        m.faults
            .iter()
            .map(|(k, n)| format!("{k} {n}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    if !m.problems.is_empty() {
        let _ = writeln!(s, "First unexpected outcomes:");
        for p in &m.problems {
            let _ = writeln!(s, "  - {p}");
        }
    }

    let _ = writeln!(
        s,
        "\nringgate resources (start: after warm-up and settling {:.1} s; end: after settling {:.1} s):\n\
         | | start | peak | end |\n|---|---|---|---|",
        r.base_settle.took.as_secs_f64(),
        r.end_settle.took.as_secs_f64()
    );
    let _ = writeln!(
        s,
        "| RSS MiB | {:.1} | {:.1} (VmHWM {:.1}) | {:.1} |",
        mib(r.start.rss_kib),
        mib(r.peak.rss_kib),
        mib(r.peak.hwm_kib),
        mib(r.end.rss_kib)
    );
    for (name, a, b, c) in [
        ("fds", r.start.fds, r.peak.fds, r.end.fds),
        ("threads", r.start.threads, r.peak.threads, r.end.threads),
        (
            "children",
            r.start.children,
            r.peak.children,
            r.end.children,
        ),
    ] {
        let _ = writeln!(s, "| {name} | {a} | {b} | {c} |");
    }
    let _ = writeln!(
        s,
        "CPU during the soak: ringgate {:.1} s, its ended children {:.1} s, generator + fake tailscaled {:.1} s ({:.0}% of one core in all)",
        r.cpu.0,
        r.cpu.1,
        r.cpu.2,
        (r.cpu.0 + r.cpu.1 + r.cpu.2) * 100.0 / secs
    );

    // The client's view against ringgate's counters.
    let (b, e) = (&r.base_settle.metrics, &r.end_settle.metrics);
    let rg_delta = sample::delta(&b.requests(), &e.requests());
    let mut keys: Vec<(String, u16)> = rg_delta.keys().cloned().collect();
    keys.extend(m.counted.keys().cloned());
    keys.sort();
    keys.dedup();
    let _ = writeln!(
        s,
        "\nringgate_requests_total during the soak against the client's count of requests ringgate answered \
         (malformed ones are refused under route \"\"; abandoned partial ones are not counted; {} transport errors may go either way):\n\
         | route | status | client | ringgate | diff |\n|---|---|---|---|---|",
        m.uncertain
    );
    let mut off = 0u64;
    for k in &keys {
        let c = m.counted.get(k).copied().unwrap_or(0) as i64;
        let g = rg_delta.get(k).copied().unwrap_or(0);
        off += (g - c).unsigned_abs();
        let _ = writeln!(s, "| {} | {} | {c} | {g} | {:+} |", k.0, k.1, g - c);
    }
    let counters = |prefix: &str| -> BTreeMap<String, i64> {
        let f = |mm: &Metrics| -> BTreeMap<String, u64> {
            mm.with_prefix(prefix)
                .into_iter()
                .map(|(k, v)| (k, v as u64))
                .collect()
        };
        sample::delta(&f(b), &f(e))
    };
    let exits = counters("ringgate_child_exits_total");
    let exited_alone = exits
        .get("ringgate_child_exits_total{cause=\"exited\"}")
        .copied()
        .unwrap_or(0);
    let exits_all: i64 = exits.values().sum();
    let spawned = counters("ringgate_children_spawned_total")
        .values()
        .sum::<i64>();
    let ((fds0, whois0), (fds1, whois1)) = (&r.fds.0, &r.fds.1);
    let _ = writeln!(
        s,
        "\nringgate fds by kind, start -> end: {}; whois connections open at the fake tailscaled: {whois0} -> {whois1}",
        fds0.keys()
            .chain(fds1.keys())
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .map(|k| format!(
                "{k} {} -> {}",
                fds0.get(k).unwrap_or(&0),
                fds1.get(k).unwrap_or(&0)
            ))
            .collect::<Vec<_>>()
            .join(", ")
    );
    let _ = writeln!(
        s,
        "Other counters during the soak: {}",
        [
            counters("ringgate_authz_checks_total"),
            exits.clone(),
            counters("ringgate_children_spawned_total"),
            counters("ringgate_child_spawn_failures_total"),
            counters("ringgate_pool_waits_total"),
        ]
        .iter()
        .flatten()
        .map(|(k, v)| format!("{} {v}", k.trim_start_matches("ringgate_")))
        .collect::<Vec<_>>()
        .join(", ")
    );

    // Checks.
    let _ = writeln!(s, "\nChecks:");
    let mut ok = true;
    let mut check = |name: String, pass: bool| {
        ok &= pass;
        let _ = writeln!(s, "- {} {name}", if pass { "PASS" } else { "FAIL" });
    };
    check(
        format!(
            "every request accounted for: sent {} = classified {} (warm-up {} = {})",
            m.sent, m.recorded, r.warm.sent, r.warm.recorded
        ),
        m.sent == m.recorded && r.warm.sent == r.warm.recorded,
    );
    check(
        format!(
            "no unexpected outcome: {} (warm-up {})",
            m.unexpected, r.warm.unexpected
        ),
        m.unexpected == 0 && r.warm.unexpected == 0,
    );
    check(
        format!(
            "no request allowed that should be denied: {} (warm-up {})",
            m.breaches, r.warm.breaches
        ),
        m.breaches == 0 && r.warm.breaches == 0,
    );
    check(
        format!(
            "ringgate_requests_total agrees with the client: off by {off}, {} uncertain",
            m.uncertain
        ),
        off <= m.uncertain,
    );
    check(
        format!(
            "every child spawned during the soak was reaped: spawned {spawned}, exits {exits_all}"
        ),
        spawned == exits_all,
    );
    check(
        format!(
            "no child exited by itself unless SIGKILLed by the soak: exits with cause \"exited\" {exited_alone} <= SIGKILLs {}",
            m.kills
        ),
        exited_alone <= m.kills as i64,
    );
    check(
        format!("ringgate settled at the end: {}", r.end_settle.why),
        r.end_settle.ok,
    );
    let rss_limit =
        r.start.rss_kib + RSS_SLACK_KIB.max((r.start.rss_kib as f64 * RSS_SLACK_SHARE) as u64);
    check(
        format!(
            "RSS back to its start: {:.1} MiB, start {:.1} MiB, limit {:.1} MiB",
            mib(r.end.rss_kib),
            mib(r.start.rss_kib),
            mib(rss_limit)
        ),
        r.end.rss_kib <= rss_limit,
    );
    // The authz client keeps up to 8 idle whois connections per worker;
    // how many are pooled at a given moment is no leak.
    let max_pooled = 8 * o.workers;
    check(
        format!(
            "fds back to their start, pooled whois connections aside: {} - {whois1} (start {} - {whois0})",
            r.end.fds, r.start.fds
        ),
        r.end.fds as i64 - *whois1 as i64 <= r.start.fds as i64 - *whois0 as i64,
    );
    check(
        format!("pooled whois connections within the pool's bound: {whois1} <= {max_pooled}"),
        *whois1 <= max_pooled,
    );
    check(
        format!(
            "threads back to their start: {} (start {})",
            r.end.threads, r.start.threads
        ),
        r.end.threads == r.start.threads,
    );
    check(
        format!(
            "children back to their start: {} (start {})",
            r.end.children, r.start.children
        ),
        r.end.children == r.start.children,
    );
    (s, ok)
}
