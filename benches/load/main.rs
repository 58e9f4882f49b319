//! The load benchmark: `cargo bench --bench load` (options after `--`).
//!
//! cargo builds ringgate in the bench profile (`release`) before running
//! this. It installs the MCP peers if they are missing and starts everything
//! it measures on loopback: a fake tailscaled on a Unix socket
//! (`tests/support/fake_tailscaled.rs`), ringgate with the seed's extAuthz,
//! the real server-everything children, and a fixed-response monoio server
//! as the ceiling ([`baseline`]). Every process it starts is gone when it
//! returns (see [`procs`]).
//!
//! Scenarios, for 1 and then 2 workers (and one per core on a larger host):
//! 0. the ceiling: the fixed-response server;
//! 1. reject: an address the fake does not know; its 403 is cached;
//! 2. allow: an address the fake knows, on a `directResponse` route with
//!    the same extAuthz (and on a second ringgate with the access log on);
//! 3. MCP: `tools/call echo` over N concurrent sessions (and over 1), from
//!    N (and 1) stateless 2026-07-28 clients over the shared children
//!    ([`client::modern`]), against the same calls written straight to children's
//!    stdio;
//! 4. session set-up: `initialize` with a warm pool versus a cold `npx`,
//!    and bursts of `--burst N` (16) concurrent `initialize`s ([`burst`])
//!    with `minIdle: 2` and `minIdle: N`, 2 workers;
//! 5. memory: RSS after a 12 MiB body and a 9 MiB MCP echo ([`memory`]).
//!
//! The targets compared with each other (0, 1, 2; 3 and its ceiling) are
//! measured in alternating rounds (see [`client::rounds`]): on a machine
//! shared with other work, absolute numbers drift, but neighbours in time
//! see the same drift, so their ratios hold.
//!
//! Options: `--duration S` (measured seconds per target, default 5, split
//! over `--rounds N`, default 4), `--warmup S` (first ramp of HTTP targets,
//! 1), `--mcp-warmup S` (of MCP targets, 3), `--conns N` (64),
//! `--sessions N` (4), `--workers 1,2`, `--init-runs N` (8 warm, half as
//! many cold), `--only reject,allow,conn,log,mcp,init,burst,mem`, `--burst N` (16), `--quick` (2 s per
//! target, shorter ramps, 4 initialize runs), `--compare PATH` (another
//! ringgate build, e.g. a branch's, measured in the same rounds as this
//! one for scenarios 1 to 3, rows marked `[file name]`; repeatable).

mod baseline;
mod burst;
mod client;
#[path = "../../tests/support/fake_tailscaled.rs"]
mod fake_tailscaled;
mod memory;
mod procs;
mod report;

use std::cell::Cell;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use client::{Client, Expect, HttpClient, McpClient, McpSession, Measured};
use client::{StdioChild, StdioClient, Target};
use fake_tailscaled::{seed_ext_authz, SEED_ACCESS_LOG};
use procs::{ensure_peers, root, server_js, Server};

/// Set in the environment of a re-executed bench binary to pick its role.
pub const ROLE_ENV: &str = "RINGGATE_BENCH_ROLE";
const BIN: &str = env!("CARGO_BIN_EXE_ringgate");

/// The fake tailscaled knows this peer (scenarios 2, 3, 4).
const ALLOWED_IP: &str = "127.0.0.2";
/// And not this one (scenario 1).
const UNKNOWN_IP: &str = "127.0.0.66";
/// What a small client sends (curl-like).
const GET_HELLO: &[u8] =
    b"GET /hello HTTP/1.1\r\nHost: ringgate.bench\r\nUser-Agent: ringgate-load/1\r\nAccept: */*\r\n\r\n";
const OK: Expect = Expect {
    status: 200,
    body: b"hello from ringgate\n",
};
const DENIED: Expect = Expect {
    status: 403,
    body: b"external authorization failed",
};
/// The nginx baseline's row name.
const NGINX_ROW: &str = "0 nginx: fixed 403, no auth";
/// Ramp of every round after the first (connections are already open).
const ROUND_WARMUP: Duration = Duration::from_millis(250);

struct Opts {
    warmup: Duration,
    /// First ramp of MCP targets: node's JIT needs thousands of calls per
    /// child before its cost per call settles.
    mcp_warmup: Duration,
    duration: Duration,
    rounds: usize,
    conns: usize,
    sessions: usize,
    workers: Vec<usize>,
    init_runs: usize,
    /// Concurrent `initialize`s in a burst.
    burst: usize,
    /// Scenario groups to run (all when empty): reject, allow, conn, log,
    /// mcp, init.
    only: Vec<String>,
    /// Other ringgate binaries measured in the same rounds (scenarios 1-3).
    compare: Vec<String>,
}

impl Opts {
    fn parse() -> Opts {
        let mut o = Opts {
            warmup: Duration::from_secs(1),
            mcp_warmup: Duration::from_secs(3),
            duration: Duration::from_secs(5),
            rounds: 4,
            conns: 64,
            sessions: 4,
            workers: default_workers(),
            init_runs: 8,
            burst: 16,
            only: Vec::new(),
            compare: Vec::new(),
        };
        let mut args = std::env::args().skip(1);
        let secs = |v: Option<String>| {
            Duration::from_secs_f64(v.and_then(|v| v.parse().ok()).expect("seconds"))
        };
        let num = |v: Option<String>| -> usize { v.and_then(|v| v.parse().ok()).expect("number") };
        let list = |v: Option<String>| -> Vec<String> {
            v.expect("a comma-separated list")
                .split(',')
                .map(|x| x.trim().to_string())
                .collect()
        };
        while let Some(a) = args.next() {
            match a.as_str() {
                "--duration" => o.duration = secs(args.next()),
                "--warmup" => o.warmup = secs(args.next()),
                "--mcp-warmup" => o.mcp_warmup = secs(args.next()),
                "--rounds" => o.rounds = num(args.next()).max(1),
                "--conns" => o.conns = num(args.next()),
                "--sessions" => o.sessions = num(args.next()).max(1),
                "--init-runs" => o.init_runs = num(args.next()).max(1),
                "--burst" => o.burst = num(args.next()).max(1),
                "--workers" => {
                    o.workers = list(args.next())
                        .iter()
                        .map(|w| w.parse().expect("worker count"))
                        .collect()
                }
                "--only" => o.only = list(args.next()),
                "--compare" => o.compare.push(args.next().expect("--compare PATH")),
                "--quick" => {
                    o.duration = Duration::from_secs(2);
                    o.warmup = Duration::from_millis(500);
                    o.mcp_warmup = Duration::from_millis(1500);
                    o.init_runs = 4;
                }
                // cargo bench passes `--bench`; a filter means nothing here.
                _ => {}
            }
        }
        o
    }

    fn runs(&self, group: &str) -> bool {
        self.only.is_empty() || self.only.iter().any(|g| g == group)
    }

    /// Runs `targets` in alternating rounds; the first round ramps each
    /// target for `first_warmup`.
    async fn rounds(&self, targets: &mut [Target<'_>], first_warmup: Duration) {
        let window = self.duration / self.rounds as u32;
        client::rounds(targets, self.rounds, first_warmup, ROUND_WARMUP, window).await;
        client::close_all(targets).await;
    }
}

/// One line of the table.
struct Row {
    scenario: String,
    workers: usize,
    conc: usize,
    m: Measured,
    /// CPU seconds over the windows: the server (ringgate or baseline), the
    /// MCP children, this process (the generator).
    server_cpu: Option<f64>,
    peer_cpu: Option<f64>,
    gen_cpu: f64,
    peak_rss_kib: Option<u64>,
    /// The ceiling's req/s and p50 (us), and its name.
    ceiling: Option<(f64, f64, &'static str)>,
    /// nginx's fixed 403 req/s in the same rounds (reject rows).
    nginx: Option<f64>,
}

impl Row {
    fn ratio(&self) -> Option<f64> {
        self.ceiling.map(|(rps, _, _)| self.m.rps() / rps)
    }
    fn added_p50_us(&self) -> Option<f64> {
        self.ceiling
            .filter(|c| c.2 == "direct stdio")
            .map(|(_, p50, _)| self.m.quantile_us(0.5) - p50)
    }
}

/// CPU snapshots at the edges of a target's windows, summed.
struct Probe {
    server: Option<u32>,
    /// Count the server's descendants as the server (nginx's workers).
    server_tree: bool,
    /// Processes whose CPU is the children's: these and their descendants
    /// (`count_roots`), or only their descendants.
    peer_roots: Vec<u32>,
    count_roots: bool,
    at: Cell<(f64, f64, f64)>,
    /// Each peer's CPU seconds at the window's start: a peer that exits
    /// during the window (a child stopped or replaced) takes its past CPU
    /// away from a plain sum, so peers are counted by their own deltas.
    peers_at: std::cell::RefCell<std::collections::HashMap<u32, f64>>,
    sum: Cell<(f64, f64, f64)>,
}

impl Probe {
    fn new(server: Option<u32>, peer_roots: Vec<u32>, count_roots: bool) -> Probe {
        Probe {
            server,
            server_tree: false,
            peer_roots,
            count_roots,
            at: Cell::new((0.0, 0.0, 0.0)),
            peers_at: Default::default(),
            sum: Cell::new((0.0, 0.0, 0.0)),
        }
    }

    fn snap(&self, start: bool) {
        let mut peers: Vec<u32> = self
            .peer_roots
            .iter()
            .flat_map(|p| procs::descendants(*p))
            .collect();
        if self.count_roots {
            peers.extend(&self.peer_roots);
        }
        let server = |pid: u32| {
            let tree = if self.server_tree {
                procs::cpu_seconds_of(&procs::descendants(pid))
            } else {
                0.0
            };
            procs::cpu_seconds(pid) + tree
        };
        let peer_cpu: Vec<(u32, f64)> = peers.iter().map(|&p| (p, procs::cpu_seconds(p))).collect();
        let now = (
            self.server.map_or(0.0, server),
            0.0,
            procs::self_cpu_seconds(),
        );
        if start {
            self.at.set(now);
            *self.peers_at.borrow_mut() = peer_cpu.into_iter().collect();
        } else {
            let (a, s) = (self.at.get(), self.sum.get());
            // A peer started during the window counts from zero; one that
            // ended counts nothing (its last CPU cannot be read).
            let at = self.peers_at.borrow();
            let peers: f64 = peer_cpu
                .iter()
                .map(|(p, c)| (c - at.get(p).copied().unwrap_or(0.0)).max(0.0))
                .sum();
            self.sum
                .set((s.0 + now.0 - a.0, s.1 + peers, s.2 + now.2 - a.2));
        }
    }

    fn row(&self, scenario: String, workers: usize, conc: usize, m: Measured) -> Row {
        let s = self.sum.get();
        let r = Row {
            scenario,
            workers,
            conc,
            m,
            server_cpu: self.server.map(|_| s.0),
            peer_cpu: (!self.peer_roots.is_empty()).then_some(s.1),
            gen_cpu: s.2,
            peak_rss_kib: self.server.map(|p| procs::vm_kib(p, "VmHWM")),
            ceiling: None,
            nginx: None,
        };
        progress(&r);
        r
    }
}

/// The seed's CORS and extAuthz (cache TTLs of 10 minutes, so nothing
/// expires during a run) on both routes.
fn ringgate_yaml(whois: &str, min_idle: usize, cmd: &str, args: &[String]) -> String {
    let policies = format!(
        r#"
        cors:
          allowOrigins: ["*"]
          allowHeaders: ["*"]
          exposeHeaders: ["Mcp-Session-Id"]{}"#,
        seed_ext_authz(whois, &["cache: {ttl: 10m, negativeTtl: 10m}"])
    );
    procs::ringgate_yaml("bench", min_idle, SEED_ACCESS_LOG, &policies, cmd, args)
}

/// ringgate's log filter: the access log off, except where asked for.
fn rust_log(access_log: bool) -> &'static str {
    if access_log {
        "info"
    } else {
        "info,request=off"
    }
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// 1 and 2 workers, then one per core when the host has more than 2, so a
/// run on a bigger machine shows how throughput grows with cores.
fn default_workers() -> Vec<usize> {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut w = vec![1, 2];
    if cores > 2 {
        w.push(cores);
    }
    w
}

fn progress(r: &Row) {
    eprintln!(
        "load: {:<36} w={} {:>9.0} req/s  p50 {:>8.1} us  p99 {:>8.1} us{}",
        r.scenario,
        r.workers,
        r.m.rps(),
        r.m.quantile_us(0.5),
        r.m.quantile_us(0.99),
        if r.m.errors > 0 {
            format!("  ERRORS {}: {:?}", r.m.errors, r.m.first_error)
        } else {
            String::new()
        }
    );
}

fn main() {
    if std::env::var(ROLE_ENV).as_deref() == Ok("baseline") {
        baseline::main();
        return;
    }
    let o = Opts::parse();
    let started = Instant::now();
    procs::become_subreaper();
    ensure_peers("load");
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    eprintln!(
        "load: {:?} per target in {} rounds, {:?} first ramp; {} connections, {} MCP sessions; loadavg {}",
        o.duration,
        o.rounds,
        o.warmup,
        o.conns,
        o.sessions,
        load.split_whitespace().take(3).collect::<Vec<_>>().join(" ")
    );

    let fake = fake_tailscaled::FakeTailscaled::builder()
        .user(
            ALLOWED_IP,
            "alice-laptop.tail1234.ts.net.",
            "alice@example.com",
        )
        .start();
    let whois = fake.target();
    let mut rows: Vec<Row> = Vec::new();
    let mut idle_rss: Vec<(usize, u64)> = Vec::new();
    for &w in &o.workers {
        if ["reject", "allow", "conn", "log"].iter().any(|g| o.runs(g)) {
            rows.extend(http_scenarios(&o, &whois, w, &mut idle_rss));
        }
        if o.runs("mcp") {
            rows.extend(mcp_scenarios(&o, &whois, w, &mut idle_rss));
        }
    }
    let (mut warm, mut cold) = (Vec::new(), Vec::new());
    if o.runs("init") {
        let npx_args: Vec<String> = vec![
            "--offline".into(),
            "--prefix".into(),
            root().join("tests/peers").display().to_string(),
            "mcp-server-everything".into(),
        ];
        warm = measure_initialize(&whois, true, "npx", &npx_args, o.init_runs);
        cold = measure_initialize(&whois, false, "npx", &npx_args, o.init_runs.div_ceil(2));
    }
    let mut bursts = Vec::new();
    if o.runs("burst") {
        let js = server_js().display().to_string();
        let w = 2;
        for min_idle in [2, o.burst] {
            let yaml = ringgate_yaml(&whois, min_idle, "node", std::slice::from_ref(&js)).replacen(
                "minIdle: ",
                &format!("maxLive: {}, minIdle: ", 4 * o.burst),
                1,
            );
            let mut rg = Server::ringgate(BIN, &yaml, w, rust_log(false));
            bursts.push(burst::run(&rg, ip(ALLOWED_IP), min_idle, w, o.burst, 3));
            rg.assert_running();
            rg.stop();
        }
    }
    let mut payloads = Vec::new();
    if o.runs("mem") {
        for &w in &o.workers {
            let js = server_js().display().to_string();
            let yaml = memory::yaml(&ringgate_yaml(&whois, 1, "node", &[js]));
            let mut rg = Server::ringgate(BIN, &yaml, w, rust_log(false));
            let p = memory::after_payloads(&rg, ip(ALLOWED_IP), w)
                .unwrap_or_else(|e| panic!("memory scenario: {e}"));
            eprintln!(
                "load: memory w={w}: idle {} KiB, peak {} KiB, after {} KiB, back in {:?}",
                p.idle_kib, p.peak_kib, p.after_kib, p.back_after
            );
            payloads.push(p);
            rg.assert_running();
            rg.stop();
        }
    }
    drop(fake);

    let took = started.elapsed();
    println!(
        "{}",
        report::report(
            &o,
            &rows,
            &idle_rss,
            (&warm, &cold, &bursts),
            &payloads,
            took
        )
    );
    let errors: u64 = rows.iter().map(|r| r.m.errors).sum();
    if errors > 0 {
        eprintln!("load: {errors} request(s) failed; the numbers above are not valid");
        std::process::exit(1);
    }
}

/// Starts ringgate on the bench config, waits for its warm pool to load,
/// and notes its idle RSS (the first time for this worker count).
fn start_ringgate(
    bin: &str,
    whois: &str,
    w: usize,
    access_log: bool,
    idle_rss: &mut Vec<(usize, u64)>,
) -> Server {
    let js = server_js().display().to_string();
    let yaml = ringgate_yaml(whois, 1, "node", std::slice::from_ref(&js));
    let rg = Server::ringgate(bin, &yaml, w, rust_log(access_log));
    procs::wait_quiet(
        rg.pid(),
        Duration::from_millis(500),
        Duration::from_secs(20),
    );
    if !idle_rss.iter().any(|(x, _)| *x == w) {
        idle_rss.push((w, procs::vm_kib(rg.pid(), "VmRSS")));
    }
    procs::reset_peak_rss(rg.pid());
    rg
}

/// The ringgate builds measured: this tree's, then each `--compare`, with
/// the suffix that marks their rows.
fn builds(o: &Opts) -> Vec<(&str, String)> {
    let mut v = vec![(BIN, String::new())];
    for c in &o.compare {
        let name = std::path::Path::new(c)
            .file_name()
            .map_or(c.clone(), |n| n.to_string_lossy().into_owned());
        v.push((c.as_str(), format!(" [{name}]")));
    }
    v
}

/// One HTTP target: its row name, the index of its server, where its
/// clients connect from, what they must get, and whether each request
/// opens a new connection.
struct Planned {
    name: String,
    server: usize,
    src: &'static str,
    expect: Expect,
    reconnect: bool,
}

/// Scenarios 0, 1 and 2 with `w` workers, interleaved. Each scenario that
/// reports its own peak RSS gets its own ringgate.
fn http_scenarios(o: &Opts, whois: &str, w: usize, idle_rss: &mut Vec<(usize, u64)>) -> Vec<Row> {
    let mut servers = vec![Server::baseline(w)];
    let mut plan = vec![Planned {
        name: "0 ceiling: fixed-response monoio".into(),
        server: 0,
        src: ALLOWED_IP,
        expect: OK,
        reconnect: false,
    }];
    // nginx answering the same 403 with no auth at all: the reject path's
    // second baseline, as users measure it.
    if o.runs("reject") {
        match Server::nginx(w) {
            Some(n) => {
                servers.push(n);
                plan.push(Planned {
                    name: NGINX_ROW.into(),
                    server: servers.len() - 1,
                    src: UNKNOWN_IP,
                    expect: DENIED,
                    reconnect: false,
                });
            }
            None => eprintln!("nginx not found: no nginx baseline (apt-get install nginx-light)"),
        }
    }
    for (k, (bin, suffix)) in builds(o).into_iter().enumerate() {
        let mut rss = if k == 0 {
            std::mem::take(idle_rss)
        } else {
            Vec::new()
        };
        if o.runs("reject") || o.runs("allow") {
            servers.push(start_ringgate(bin, whois, w, false, &mut rss));
            if o.runs("reject") {
                plan.push(Planned {
                    name: format!("1 reject (403, cached){suffix}"),
                    server: servers.len() - 1,
                    src: UNKNOWN_IP,
                    expect: DENIED,
                    reconnect: false,
                });
            }
            if o.runs("allow") {
                plan.push(Planned {
                    name: format!("2 allow (directResponse){suffix}"),
                    server: servers.len() - 1,
                    src: ALLOWED_IP,
                    expect: OK,
                    reconnect: false,
                });
            }
        }
        if o.runs("conn") {
            servers.push(start_ringgate(bin, whois, w, false, &mut rss));
            plan.push(Planned {
                name: format!("2 allow, new connection per request{suffix}"),
                server: servers.len() - 1,
                src: ALLOWED_IP,
                expect: OK,
                reconnect: true,
            });
        }
        if o.runs("log") {
            servers.push(start_ringgate(bin, whois, w, true, &mut rss));
            plan.push(Planned {
                name: format!("2 allow, access log on{suffix}"),
                server: servers.len() - 1,
                src: ALLOWED_IP,
                expect: OK,
                reconnect: false,
            });
        }
        if k == 0 {
            *idle_rss = rss;
        }
    }
    procs::reset_peak_rss(servers[0].pid());
    let probes: Vec<Probe> = plan
        .iter()
        .map(|p| {
            let mut probe = Probe::new(Some(servers[p.server].pid()), Vec::new(), false);
            probe.server_tree = servers[p.server].name == "nginx";
            probe
        })
        .collect();
    let results = client::block_on(async {
        let mut targets: Vec<Target> = plan
            .iter()
            .zip(&probes)
            .map(|(p, probe)| {
                let (src, addr) = (ip(p.src), servers[p.server].addr);
                let clients = (0..o.conns)
                    .map(|_| match p.reconnect {
                        true => HttpClient::reconnecting(src, addr, GET_HELLO, p.expect),
                        false => HttpClient::kept_alive(src, addr, GET_HELLO, p.expect),
                    })
                    .collect();
                Target::new(clients, |start| probe.snap(start))
            })
            .collect();
        o.rounds(&mut targets, o.warmup).await;
        targets.iter().map(|t| t.rec.result()).collect::<Vec<_>>()
    });
    let mut rows: Vec<Row> = plan
        .iter()
        .zip(&probes)
        .zip(results)
        .map(|((p, probe), m)| probe.row(p.name.clone(), w, o.conns, m))
        .collect();
    // The ceiling keeps its connections: it is no reference for a client
    // that opens one per request.
    let ceiling = (
        rows[0].m.rps(),
        rows[0].m.quantile_us(0.5),
        "fixed-response",
    );
    let nginx = rows
        .iter()
        .find(|r| r.scenario == NGINX_ROW)
        .map(|r| r.m.rps());
    for (r, p) in rows.iter_mut().zip(&plan).skip(1) {
        if r.scenario == NGINX_ROW {
            continue;
        }
        r.ceiling = (!p.reconnect).then_some(ceiling);
        if r.scenario.starts_with("1 ") {
            r.nginx = nginx;
        }
    }
    for s in servers.iter_mut().rev() {
        s.assert_running();
        s.stop();
    }
    rows
}

/// Scenario 3 with `w` workers: N sessions and 1 session through ringgate,
/// each interleaved with the same load straight to children's stdio.
fn mcp_scenarios(o: &Opts, whois: &str, w: usize, idle_rss: &mut Vec<(usize, u64)>) -> Vec<Row> {
    let mut servers: Vec<(String, Server)> = builds(o)
        .into_iter()
        .enumerate()
        .map(|(k, (bin, suffix))| {
            let mut rss = Vec::new();
            let s = start_ringgate(
                bin,
                whois,
                w,
                false,
                if k == 0 { idle_rss } else { &mut rss },
            );
            (suffix, s)
        })
        .collect();
    let proxies: Vec<(&str, &Server)> = servers.iter().map(|(n, s)| (n.as_str(), s)).collect();
    let js = server_js().display().to_string();
    let mut sizes = vec![o.sessions];
    if o.sessions > 1 {
        sizes.push(1);
    }
    let mut direct: Vec<Vec<StdioChild>> = sizes
        .iter()
        .map(|&n| {
            (0..n)
                .map(|_| StdioChild::spawn("node", &[&js]).expect("spawn node"))
                .collect()
        })
        .collect();
    for c in direct.iter().flatten() {
        procs::wait_quiet(c.pid(), Duration::from_millis(300), Duration::from_secs(20));
    }
    // Per size: one probe per proxy, then the direct one; targets follow
    // the same order.
    let probes: Vec<Vec<Probe>> = direct
        .iter()
        .map(|cs| {
            let mut v: Vec<Probe> = proxies
                .iter()
                .map(|(_, p)| Probe::new(Some(p.pid()), vec![p.pid()], false))
                .collect();
            v.push(Probe::new(None, cs.iter().map(|c| c.pid()).collect(), true));
            v
        })
        .collect();
    let mprobes: Vec<Vec<Probe>> = sizes
        .iter()
        .map(|_| {
            let p = proxies.iter();
            p.map(|(_, p)| Probe::new(Some(p.pid()), vec![p.pid()], false))
                .collect()
        })
        .collect();
    let addrs: Vec<SocketAddr> = proxies.iter().map(|(_, p)| p.addr).collect();
    let results = client::block_on(async {
        let mut targets = Vec::new();
        for (k, (&n, children)) in sizes.iter().zip(direct.iter_mut()).enumerate() {
            for (j, &addr) in addrs.iter().enumerate() {
                // Sessions past the warm pool wait for a spawn: open them
                // together.
                let opening: Vec<_> = (0..n)
                    .map(|_| monoio::spawn(McpSession::open(addr, ip(ALLOWED_IP))))
                    .collect();
                let mut proxied: Vec<Client> = Vec::new();
                for (i, f) in opening.into_iter().enumerate() {
                    let (s, _) = f.await.unwrap_or_else(|e| panic!("MCP session: {e}"));
                    proxied.push(McpClient::looping(s, format!("p{j}-{n}-{i}")));
                }
                let p = &probes[k][j];
                targets.push(Target::new(proxied, |s| p.snap(s)));
            }
            let mut stdio: Vec<Client> = Vec::new();
            for (i, c) in children.iter_mut().enumerate() {
                let client = StdioClient::adopt(c, format!("d{n}-{i}")).await;
                stdio.push(client.unwrap_or_else(|e| panic!("{e}")));
            }
            let d = &probes[k][addrs.len()];
            targets.push(Target::new(stdio, |s| d.snap(s)));
            for (j, &addr) in addrs.iter().enumerate() {
                let mut modern: Vec<Client> = Vec::new();
                for i in 0..n {
                    let c = client::modern::ModernClient::open(
                        addr,
                        ip(ALLOWED_IP),
                        format!("m{j}-{n}-{i}"),
                    );
                    modern.push(c.await.unwrap_or_else(|e| panic!("{e}")));
                }
                let p = &mprobes[k][j];
                targets.push(Target::new(modern, |s| p.snap(s)));
            }
        }
        o.rounds(&mut targets, o.mcp_warmup).await;
        targets.iter().map(|t| t.rec.result()).collect::<Vec<_>>()
    });
    let mut results = results.into_iter();
    let mut rows = Vec::new();
    for (k, &n) in sizes.iter().enumerate() {
        let mut proxied: Vec<Row> = proxies
            .iter()
            .enumerate()
            .map(|(j, (suffix, _))| {
                probes[k][j].row(
                    format!("3 MCP tools/call echo, {n} sess{suffix}"),
                    w,
                    n,
                    results.next().unwrap(),
                )
            })
            .collect();
        let direct = probes[k][proxies.len()].row(
            format!("3 ceiling: direct stdio, {n} sess"),
            w,
            n,
            results.next().unwrap(),
        );
        for r in &mut proxied {
            r.ceiling = Some((direct.m.rps(), direct.m.quantile_us(0.5), "direct stdio"));
        }
        let shared = w * ringgate::config::DEFAULT_SHARED_CHILDREN;
        let mut mrows = Vec::new();
        for (j, (suffix, _)) in proxies.iter().enumerate() {
            let name = format!("3 MCP modern echo, {n} clients, {shared} shared children{suffix}");
            let mut r = mprobes[k][j].row(name, w, n, results.next().unwrap());
            r.ceiling = Some((direct.m.rps(), direct.m.quantile_us(0.5), "direct stdio"));
            mrows.push(r);
        }
        rows.extend(proxied);
        rows.extend(mrows);
        rows.push(direct);
    }
    drop(proxies);
    for (suffix, s) in servers.iter_mut().rev() {
        s.assert_running();
        // Sessions whose connection the kernel put on another worker than
        // the session's move there once (README, "A session lives on").
        if w > 1 {
            if let Some(moved) = s.metric("ringgate_connections_moved_total") {
                eprintln!("load: ringgate{suffix} w={w}: {moved} connections moved to their session's worker");
            }
        }
        s.stop();
    }
    drop(direct);
    rows
}

/// `initialize` latencies (ms) through ringgate with `cmd`, one session at
/// a time. With a warm pool each run waits for the replacement child to
/// load; cold, for the previous child to be gone.
fn measure_initialize(
    whois: &str,
    warm: bool,
    cmd: &str,
    args: &[String],
    runs: usize,
) -> Vec<f64> {
    let yaml = ringgate_yaml(whois, usize::from(warm), cmd, args);
    let mut rg = Server::ringgate(BIN, &yaml, 1, rust_log(false));
    let pid = rg.pid();
    let mut times = Vec::new();
    for _ in 0..runs {
        let deadline = Instant::now() + Duration::from_secs(20);
        let want = usize::from(warm);
        while procs::children(pid).len() != want && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        procs::wait_quiet(pid, Duration::from_millis(300), Duration::from_secs(20));
        let addr = rg.addr;
        let took = client::block_on(async move {
            let (s, took) = McpSession::open(addr, ip(ALLOWED_IP))
                .await
                .unwrap_or_else(|e| panic!("initialize: {e}"));
            s.delete().await.unwrap_or_else(|e| panic!("{e}"));
            took
        });
        times.push(took.as_secs_f64() * 1000.0);
    }
    rg.assert_running();
    rg.stop();
    eprintln!(
        "load: initialize, {} {cmd}: {:?} ms",
        if warm { "warm pool" } else { "cold" },
        times
            .iter()
            .map(|t| (t * 10.0).round() / 10.0)
            .collect::<Vec<_>>()
    );
    times
}
