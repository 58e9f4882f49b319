//! The report: the table of rows, the `initialize` and memory figures, and
//! the speed issue's targets, met or missed with the margin.

use std::fmt::Write as _;
use std::time::Duration;

use crate::burst::{quantile, Burst};
use crate::client;
use crate::memory::{self, Payload};
use crate::{Opts, Row};

pub fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    if s.is_empty() {
        f64::NAN
    } else {
        s[s.len() / 2]
    }
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

/// CPU seconds per 10k requests.
fn per_10k(cpu: Option<f64>, count: u64) -> String {
    match cpu {
        Some(c) if count > 0 => format!("{:.3}", c / count as f64 * 10_000.0),
        _ => "-".into(),
    }
}

pub fn report(
    o: &Opts,
    rows: &[Row],
    idle_rss: &[(usize, u64)],
    (warm, cold, bursts): (&[f64], &[f64], &[Burst]),
    payloads: &[Payload],
    took: Duration,
) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "\nringgate load benchmark on loopback: {:.1} s measured per target in {} alternating rounds \
         (first ramp {:.1} s, MCP {:.1} s); {} keep-alive connections for scenarios 0-2, \
         closed loop; generator: one monoio thread in the bench process; {:.0} s in all\n",
        o.duration.as_secs_f64(),
        o.rounds,
        o.warmup.as_secs_f64(),
        o.mcp_warmup.as_secs_f64(),
        o.conns,
        took.as_secs_f64()
    );
    let _ = writeln!(
        s,
        "| scenario | w | conc | req/s | vs ceiling | p50 us | p99 us | server CPU s/10k | children CPU s/10k | gen CPU s/10k | peak RSS MiB |"
    );
    let _ = writeln!(s, "|---|---|---|---|---|---|---|---|---|---|---|");
    for r in rows {
        let ratio = match (r.ratio(), r.added_p50_us()) {
            (Some(x), Some(add)) => format!("{x:.2} (p50 {add:+.0} us)"),
            (Some(x), None) => format!("{x:.2}"),
            _ => "-".into(),
        };
        let _ = writeln!(
            s,
            "| {} | {} | {} | {:.0} | {} | {:.1} | {:.1} | {} | {} | {} | {} |{}",
            r.scenario,
            r.workers,
            r.conc,
            r.m.rps(),
            ratio,
            r.m.quantile_us(0.5),
            r.m.quantile_us(0.99),
            per_10k(r.server_cpu, r.m.count),
            per_10k(r.peer_cpu, r.m.count),
            per_10k(Some(r.gen_cpu), r.m.count),
            r.peak_rss_kib
                .map_or("-".into(), |k| format!("{:.1}", mib(k))),
            if r.m.errors > 0 {
                format!(" ERRORS: {} ({:?})", r.m.errors, r.m.first_error)
            } else {
                String::new()
            }
        );
    }
    let (wm, cm) = (median(warm), median(cold));
    if !warm.is_empty() {
        let _ = writeln!(
            s,
            "\n| 4 initialize (npx, 1 worker) | runs | p50 ms | min ms | max ms |\n|---|---|---|---|---|"
        );
        for (name, v) in [
            ("warm pool (minIdle 1)", warm),
            ("cold spawn (minIdle 0)", cold),
        ] {
            let min = v.iter().cloned().fold(f64::INFINITY, f64::min);
            let max = v.iter().cloned().fold(0.0, f64::max);
            let _ = writeln!(
                s,
                "| {name} | {} | {:.1} | {:.1} | {:.1} |",
                v.len(),
                median(v),
                min,
                max
            );
        }
    }
    let idle: Vec<String> = idle_rss
        .iter()
        .map(|(w, k)| format!("{:.1} MiB with {w} worker(s)", mib(*k)))
        .collect();
    let _ = writeln!(
        s,
        "\nringgate idle RSS (warm pool filled, children not counted): {}",
        idle.join(", ")
    );

    if !bursts.is_empty() {
        let _ = writeln!(
            s,
            "\nBursts of concurrent `initialize` (server-everything by node, 3 bursts, each after the pool settled):\n\n\
             | w | minIdle | N | p50 ms | p99 ms | p50 of each burst ms | children live after each burst |\n|---|---|---|---|---|---|---|"
        );
        for b in bursts {
            let all = b.all(false);
            let each: Vec<String> = b
                .bursts
                .iter()
                .map(|v| format!("{:.0}", median(v)))
                .collect();
            let live: Vec<String> = b.live.iter().map(|n| n.to_string()).collect();
            let _ = writeln!(
                s,
                "| {} | {} | {} | {:.1} | {:.1} | {} | {} |",
                b.workers,
                b.min_idle,
                b.n,
                median(&all),
                quantile(&all, 0.99),
                each.join(", "),
                live.join(", ")
            );
        }
    }
    if !payloads.is_empty() {
        let _ = writeln!(
            s,
            "\nMemory after a 12 MiB body and a 9 MiB MCP echo (connections kept open):\n\n\
             | w | idle RSS MiB | peak MiB | right after MiB | back within idle + {:.0} MiB after |\n|---|---|---|---|---|",
            mib(memory::BACK_WITHIN_KIB)
        );
        for p in payloads {
            let _ = writeln!(
                s,
                "| {} | {:.1} | {:.1} | {:.1} | {} |",
                p.workers,
                mib(p.idle_kib),
                mib(p.peak_kib),
                mib(p.after_kib),
                p.back_after.map_or(
                    format!(
                        "not within {:?} ({:.1} MiB)",
                        memory::WATCH,
                        mib(p.last_kib)
                    ),
                    |d| format!("{:.1} s", d.as_secs_f64())
                )
            );
        }
    }

    // Targets.
    let mut t = Vec::new();
    let mut check = |name: String, ok: bool, detail: String| {
        t.push(format!(
            "- {} {name}: {detail}",
            if ok { "MET   " } else { "MISSED" }
        ));
    };
    for r in rows.iter().filter(|r| !r.scenario.contains(" [")) {
        let w = r.workers;
        if let Some(x) = r.ratio() {
            if r.scenario.starts_with("1 ") {
                check(
                    format!("reject >= 0.95 of ceiling (w={w})"),
                    x >= 0.95,
                    gap(x, 0.95),
                );
                if let Some(n) = r.nginx {
                    let y = r.m.rps() / n;
                    check(
                        format!("reject >= 1.0x nginx's fixed 403 (w={w})"),
                        y >= 1.0,
                        gap(y, 1.0),
                    );
                }
            } else if r.scenario == "2 allow (directResponse)" {
                check(
                    format!("allow >= 0.80 of ceiling (w={w})"),
                    x >= 0.80,
                    gap(x, 0.80),
                );
            } else if r.scenario.starts_with("3 ") {
                let add = r.added_p50_us().unwrap_or(f64::NAN);
                // Session rows and 2026-07-28 rows (shared children) apart.
                let sess = if r.scenario.contains("modern") {
                    "modern clients"
                } else {
                    "sess"
                };
                if r.conc == 1 {
                    check(
                        format!("MCP proxy-added p50 < 50 us (1 {sess}, w={w})"),
                        add < 50.0,
                        format!("{add:+.0} us"),
                    );
                }
                check(
                    format!(
                        "MCP throughput >= 0.80 of direct ({} {sess}, w={w})",
                        r.conc
                    ),
                    x >= 0.80,
                    gap(x, 0.80),
                );
                // CPU per forwarded call: ringgate's, and the children's
                // against the same children driven directly.
                let per_call_us = |cpu: Option<f64>, m: &client::Measured| {
                    cpu.map(|c| c / m.count.max(1) as f64 * 1e6)
                };
                if let Some(us) = per_call_us(r.server_cpu, &r.m) {
                    check(
                        format!("ringgate CPU per call <= 30 us ({} {sess}, w={w})", r.conc),
                        us <= 30.0,
                        format!("{us:.1} us"),
                    );
                }
                let direct = rows.iter().find(|d| {
                    d.workers == w && d.conc == r.conc && d.scenario.starts_with("3 ceiling")
                });
                if let (Some(mine), Some(theirs)) = (
                    per_call_us(r.peer_cpu, &r.m),
                    direct.and_then(|d| per_call_us(d.peer_cpu, &d.m)),
                ) {
                    let y = mine / theirs;
                    check(
                        format!(
                            "children CPU per call <= 1.2x direct ({} {sess}, w={w})",
                            r.conc
                        ),
                        y <= 1.2,
                        format!("{y:.2}x ({mine:.1} vs {theirs:.1} us)"),
                    );
                }
            }
        }
    }
    // The access log's cost: the allow path with it on against off.
    for w in rows
        .iter()
        .map(|r| r.workers)
        .collect::<std::collections::BTreeSet<_>>()
    {
        let find = |name: &str| {
            rows.iter()
                .find(|r| r.workers == w && r.scenario == name)
                .map(|r| r.m.rps())
        };
        if let (Some(on), Some(off)) = (
            find("2 allow, access log on"),
            find("2 allow (directResponse)"),
        ) {
            let y = on / off;
            check(
                format!("allow with the access log >= 0.90 of without (w={w})"),
                y >= 0.90,
                gap(y, 0.90),
            );
        }
    }
    if !warm.is_empty() {
        check(
            "initialize warm p50 >= 10x lower than cold npx".into(),
            cm / wm >= 10.0,
            format!("{wm:.1} ms vs {cm:.1} ms = {:.1}x", cm / wm),
        );
    }
    for b in bursts {
        // With minIdle at the burst's size every burst counts; below it the
        // first burst pays cold starts, and the pool sized to demand must
        // serve the later ones.
        let sized = b.min_idle >= b.n;
        let v = b.all(!sized);
        let (p50, p99) = (median(&v), quantile(&v, 0.99));
        let which = if sized {
            "every burst"
        } else {
            "bursts after the first"
        };
        check(
            format!(
                "{} concurrent initialize p50 < 100 ms, p99 < 500 ms (minIdle {}, {which}, w={})",
                b.n, b.min_idle, b.workers
            ),
            p50 < 100.0 && p99 < 500.0,
            format!("p50 {p50:.1} ms, p99 {p99:.1} ms"),
        );
    }
    for p in payloads {
        check(
            format!(
                "RSS back within idle + 5 MiB inside 60 s after a 12 MiB payload (w={})",
                p.workers
            ),
            p.back_after.is_some(),
            match p.back_after {
                Some(d) => format!(
                    "{:.1} s ({:.1} MiB against {:.1} idle)",
                    d.as_secs_f64(),
                    mib(p.last_kib),
                    mib(p.idle_kib)
                ),
                None => format!(
                    "{:.1} MiB after {:?}, idle {:.1}",
                    mib(p.last_kib),
                    memory::WATCH,
                    mib(p.idle_kib)
                ),
            },
        );
    }
    let ceiling = cpu_flat(rows, true)
        .into_iter()
        .find(|(n, _)| n.starts_with("0 ceiling: fixed"))
        .map(|(_, y)| y);
    for (name, y) in cpu_flat(rows, false) {
        // How the same machine treated the fixed-response server between
        // the same runs: context for the HTTP rows, not part of the target.
        let context = match ceiling {
            Some(c) if name.starts_with("1 ") || name.starts_with("2 ") => {
                format!(" (the fixed-response ceiling: {c:.2}x)")
            }
            _ => String::new(),
        };
        check(
            format!("CPU per request flat from 1 worker to more ({name})"),
            y <= 1.10,
            format!("{y:.2}x the 1-worker CPU per request{context}"),
        );
    }
    for (name, y, ok) in modern_vs_sessions(rows) {
        check(name, ok, format!("{y:.2}x"));
    }
    for (w, k) in idle_rss {
        check(
            format!("idle RSS < 20 MiB (w={w})"),
            mib(*k) < 20.0,
            format!("{:.1} MiB", mib(*k)),
        );
    }
    let _ = writeln!(s, "\nTargets:\n{}", t.join("\n"));
    s
}

fn gap(x: f64, target: f64) -> String {
    if x >= target {
        format!("{x:.2}")
    } else {
        format!(
            "{x:.2}, short by {:.2} ({:.0}% below target)",
            target - x,
            (1.0 - x / target) * 100.0
        )
    }
}

/// Server CPU per request with the most workers against 1 worker, per
/// scenario (this tree's rows; with `baselines`, the baselines' rows too):
/// within 10% counts as flat.
fn cpu_flat(rows: &[Row], baselines: bool) -> Vec<(String, f64)> {
    let mine = || {
        rows.iter()
            .filter(|r| !r.scenario.contains(" [") && r.server_cpu.is_some())
    };
    let per_req = |r: &Row| r.server_cpu.unwrap_or(0.0) / r.m.count.max(1) as f64;
    let mut out = Vec::new();
    for one in mine().filter(|r| r.workers == 1 && r.scenario.starts_with("0 ") == baselines) {
        let most = mine()
            .filter(|r| r.scenario == one.scenario && r.conc == one.conc && r.workers > 1)
            .max_by_key(|r| r.workers);
        if let Some(m) = most {
            let name = format!("{}, w=1 -> w={}", one.scenario, m.workers);
            out.push((name, per_req(m) / per_req(one).max(f64::MIN_POSITIVE)));
        }
    }
    out
}

/// 2026-07-28 clients over the shared children against as many handshake
/// sessions (one child each): the issue asks for 2x the calls/s at 16 with a
/// quarter of the children or fewer. Reported for every concurrency measured;
/// the target applies where the modern row used at most a quarter of the
/// sessions' children.
fn modern_vs_sessions(rows: &[Row]) -> Vec<(String, f64, bool)> {
    let mut out = Vec::new();
    for m in rows
        .iter()
        .filter(|r| !r.scenario.contains(" [") && r.scenario.starts_with("3 MCP modern"))
    {
        let shared: usize = m
            .scenario
            .split(", ")
            .find_map(|p| p.strip_suffix(" shared children")?.parse().ok())
            .unwrap_or(usize::MAX);
        let Some(sess) = rows.iter().find(|r| {
            r.workers == m.workers
                && r.conc == m.conc
                && r.scenario.starts_with("3 MCP tools/call echo")
                && !r.scenario.contains(" [")
        }) else {
            continue;
        };
        if m.conc < 4 {
            continue;
        }
        let y = m.m.rps() / sess.m.rps();
        let quarter = shared * 4 <= m.conc;
        let name = format!(
            "{} modern clients over {shared} shared children >= 2x {} sessions{} (w={})",
            m.conc,
            m.conc,
            if quarter {
                ""
            } else {
                " (more than a quarter of the children: reported only)"
            },
            m.workers
        );
        out.push((name, y, !quarter || y >= 2.0));
    }
    out
}
