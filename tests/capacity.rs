//! Capacity across workers: an `initialize` takes an idle child wherever it
//! is, an abandoned idle session (single-target or multiplexed) makes room at
//! `maxLive`, a burst of initializes is served without ever passing
//! `maxLive`, readiness says whether a session can be taken, and a config
//! whose idle children could never fit in `maxLive` is refused at start-up.

mod support;

use std::collections::HashSet;
use std::io::BufReader;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use serde_json::json;
use support::mcp::*;
use support::*;

const ALICE: &str = "127.0.0.2";

fn yaml(mcp: &str) -> String {
    format!(
        r#"
config:
  mcp: {{stopGrace: 300ms, {mcp}}}
binds:
- port: 0
  address: 127.0.0.1
  listeners:
  - routes:
{fault}"#,
        fault = mcp_route("fault", "/fault", "python3", &[&fault_script(), "hang"]),
    )
}

/// A gauge or counter from the metrics listener.
fn metric(p: &Proxy, name: &str) -> f64 {
    let (_, text) = admin_get(p.stats.expect("stats listener"), "/metrics");
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .unwrap_or_else(|| panic!("{name} missing:\n{text}"))
        .parse()
        .unwrap()
}

fn eventually(what: &str, f: impl Fn() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !f() {
        assert!(Instant::now() < deadline, "never: {what}");
        std::thread::sleep(Duration::from_millis(25));
    }
}

/// The worker whose access-log line answered the `initialize` creating `sid`.
fn accepted_by(p: &Proxy, sid: &str) -> String {
    let line = p
        .wait_log(|l| l.contains("mcp.method.name=initialize") && l.contains(sid))
        .expect("access line of the initialize");
    field(&line, "worker").unwrap()
}

fn owner(sid: &str) -> String {
    u64::from_str_radix(&sid[..4], 16).unwrap().to_string()
}

#[test]
fn an_initialize_takes_the_idle_child_of_another_worker() {
    // Two idle children for the process, one per worker, and no room for a
    // third child: a worker that gave out its own idle child must use the
    // other worker's.
    let p = Proxy::start(&yaml("minIdle: 2, maxLive: 2"), &["--threads", "2"]);
    let ready = p.readiness.expect("readiness listener");
    for round in 0..12 {
        eventually("both workers hold an idle child", || {
            metric(&p, "ringgate_children_idle") == 2.0
        });
        assert_eq!(admin_get(ready, "/healthz/ready").0, 200);
        let a = initialize(&p, ALICE, "/fault");
        assert_eq!(
            admin_get(ready, "/healthz/ready").0,
            200,
            "one idle child left"
        );
        let b = initialize(&p, ALICE, "/fault");
        let (wa, wb) = (accepted_by(&p, &a), accepted_by(&p, &b));
        if wa == wb {
            // Both arrived on one worker: the second session lives on the
            // other one, whose idle child it took.
            assert_eq!(owner(&a), wa);
            assert_ne!(owner(&b), wb, "round {round}");
            for (i, sid) in [&a, &b].into_iter().enumerate() {
                let r = call(&p, ALICE, "/fault", sid, 10, "ok", json!({"message": i}));
                assert_eq!(answer_text(&r, 10), Some(format!("ok:{i}")));
            }
            assert_eq!(metric(&p, "ringgate_mcp_sessions_evicted_total"), 0.0);
            return;
        }
        for sid in [&a, &b] {
            assert_eq!(delete(&p, ALICE, "/fault", sid).status, 200);
        }
    }
    panic!("two initializes never arrived on the same worker");
}

#[test]
fn at_max_live_the_least_recently_used_idle_session_makes_room() {
    let p = Proxy::start(&yaml("minIdle: 1, maxLive: 2"), &["--threads", "2"]);
    let ready = p.readiness.expect("readiness listener");
    let first = initialize(&p, ALICE, "/fault");
    let second = initialize(&p, ALICE, "/fault");
    assert_eq!(
        call(
            &p,
            ALICE,
            "/fault",
            &second,
            2,
            "ok",
            json!({"message": "b"})
        )
        .status,
        200
    );
    // Both abandoned: no DELETE, no GET stream. Room is made by ending the
    // one used least recently.
    assert_eq!(admin_get(ready, "/healthz/ready").0, 200, "evictable");
    let third = initialize(&p, ALICE, "/fault");
    let evicted = p
        .wait_log(|l| l.contains("session evicted"))
        .expect("eviction logged");
    assert!(evicted.contains(&first), "{evicted}");
    let r = call(
        &p,
        ALICE,
        "/fault",
        &first,
        3,
        "ok",
        json!({"message": "a"}),
    );
    assert_eq!(r.status, 404, "the evicted session is gone");
    let r = call(
        &p,
        ALICE,
        "/fault",
        &second,
        3,
        "ok",
        json!({"message": "b"}),
    );
    assert_eq!(answer_text(&r, 3).as_deref(), Some("ok:b"));
    assert_eq!(metric(&p, "ringgate_mcp_sessions_evicted_total"), 1.0);

    // With a request in flight in both live sessions, nothing can be
    // evicted: the next initialize is refused, and readiness says so.
    let mut held = Vec::new();
    for (n, sid) in [&second, &third].into_iter().enumerate() {
        let body = call_body(40 + n as u64, "stall", json!({}));
        held.push(send_from(
            ALICE,
            &p,
            post_bytes("/fault", Some(sid), &body).as_bytes(),
        ));
        p.wait_log(|l| l.contains(&format!("fault-server: hanging on request {}", 40 + n)))
            .expect("the call reached the child");
    }
    let r = post(&p, ALICE, "/fault", None, &init_body("2025-06-18"));
    assert_eq!(r.status, 503, "{}", r.text());
    assert_eq!(r.header("retry-after"), Some("1"));
    let (status, why) = admin_get(ready, "/healthz/ready");
    assert_eq!(status, 503, "{why}");
    assert_eq!(metric(&p, "ringgate_mcp_sessions_evicted_total"), 1.0);
    drop(held);
}

#[test]
fn idle_children_that_cannot_fit_in_max_live_are_refused_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.yaml");
    // minIdle is per target for the whole process: 3 idle children cannot
    // fit in 2, whatever the number of workers.
    std::fs::write(&path, yaml("minIdle: 3, maxLive: 2")).unwrap();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_ringgate"))
        .arg("-f")
        .arg(&path)
        .args([
            "--threads",
            "3",
            "--stats-addr",
            "off",
            "--readiness-addr",
            "off",
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run ringgate");
    let deadline = Instant::now() + WAIT;
    while child.try_wait().unwrap().is_none() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    // One that started anyway is stopped, so the test fails rather than hangs.
    let _ = child.kill();
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("config.mcp.minIdle") && err.contains("config.mcp.maxLive"),
        "{err}"
    );
    let workers: HashSet<&str> = err
        .lines()
        .filter(|l| l.contains("worker started"))
        .collect();
    assert!(workers.is_empty(), "no worker ran: {err}");
}

/// server-everything (node) as targets `a` and `b` of a multiplexed route on
/// /multi, and as the single target `a` of /one (the same target, so the
/// same pools).
fn everything_yaml(mcp: &str) -> String {
    let js = server_js();
    let t = |name: &str| format!("{{name: {name}, stdio: {{cmd: node, args: [{js:?}]}}}}");
    format!(
        "config:\n  mcp: {{stopGrace: 300ms, {mcp}}}\nbinds:\n- port: 0\n  address: 127.0.0.1\n  listeners:\n  - routes:\n    - name: multi\n      matches: [{{path: {{exact: /multi}}}}]\n      backends: [{{mcp: {{targets: [{}, {}]}}}}]\n    - name: one\n      matches: [{{path: {{exact: /one}}}}]\n      backends: [{{mcp: {{targets: [{}]}}}}]\n",
        t("a"),
        t("b"),
        t("a")
    )
}

fn echo(p: &Proxy, path: &str, sid: &str, id: u64, tool: &str, msg: &str) -> Resp {
    call(p, ALICE, path, sid, id, tool, json!({ "message": msg }))
}

#[test]
fn at_max_live_an_idle_multiplexed_session_is_evicted() {
    let p = Proxy::start(
        &everything_yaml("minIdle: 0, maxLive: 2"),
        &["--threads", "2"],
    );
    let first = initialize(&p, ALICE, "/multi");
    let r = echo(&p, "/multi", &first, 2, "a_echo", "one");
    assert_eq!(
        answer_text(&r, 2).as_deref(),
        Some("Echo: one"),
        "{}",
        r.text()
    );
    // Both children of the idle multiplexed session are needed for the next.
    let second = initialize(&p, ALICE, "/multi");
    let evicted = p
        .wait_log(|l| l.contains("session evicted"))
        .expect("eviction logged");
    assert!(evicted.contains(&first), "{evicted}");
    assert_eq!(echo(&p, "/multi", &first, 3, "a_echo", "x").status, 404);
    let r = echo(&p, "/multi", &second, 3, "b_echo", "two");
    assert_eq!(
        answer_text(&r, 3).as_deref(),
        Some("Echo: two"),
        "{}",
        r.text()
    );
    assert_eq!(metric(&p, "ringgate_mcp_sessions_evicted_total"), 1.0);

    // A single-target session of target `a` makes room the same way.
    let third = initialize(&p, ALICE, "/one");
    assert!(
        p.wait_log_nth(1, |l| l.contains("session evicted"))
            .is_some_and(|l| l.contains(&second)),
        "the idle multiplexed session made room"
    );
    assert_eq!(echo(&p, "/multi", &second, 4, "b_echo", "x").status, 404);
    let r = echo(&p, "/one", &third, 4, "echo", "three");
    assert_eq!(
        answer_text(&r, 4).as_deref(),
        Some("Echo: three"),
        "{}",
        r.text()
    );
    assert_eq!(metric(&p, "ringgate_mcp_sessions_evicted_total"), 2.0);
    assert!(metric(&p, "ringgate_children_live") <= 2.0);
}

#[test]
fn a_burst_of_initializes_all_succeed_within_max_live() {
    const BURST: usize = 16;
    // The sixteen sessions, and the idle children of both targets (two
    // each) that are kept while the burst runs: no room to spare, and
    // nothing idle to evict for a session still initializing.
    const MAX_LIVE: usize = 20;
    let p = Proxy::start(
        &everything_yaml(&format!("minIdle: 2, maxLive: {MAX_LIVE}")),
        &["--threads", "2"],
    );
    // Two idle children for each of the targets `a` and `b`.
    eventually("the idle children are up", || {
        metric(&p, "ringgate_children_idle") == 4.0
    });
    let stats = p.stats.expect("stats listener");
    let pid = p.pid();
    let done = AtomicBool::new(false);
    let (peak_metric, peak_procs, samples) = (
        AtomicUsize::new(0),
        AtomicUsize::new(0),
        AtomicUsize::new(0),
    );
    let sids: Vec<String> = std::thread::scope(|scope| {
        scope.spawn(|| {
            // Until every initialize answered, and at least once.
            loop {
                let finished = done.load(Ordering::Acquire);
                let (_, text) = admin_get(stats, "/metrics");
                let live = text
                    .lines()
                    .find_map(|l| l.strip_prefix("ringgate_children_live "))
                    .and_then(|v| v.parse::<f64>().ok())
                    .expect("ringgate_children_live") as usize;
                peak_metric.fetch_max(live, Ordering::AcqRel);
                peak_procs.fetch_max(children_of(pid).len(), Ordering::AcqRel);
                samples.fetch_add(1, Ordering::AcqRel);
                if finished {
                    return;
                }
                std::thread::sleep(Duration::from_millis(5));
            }
        });
        let clients: Vec<_> = (0..BURST)
            .map(|_| {
                scope.spawn(|| {
                    let bytes = post_bytes("/one", None, &init_body("2025-06-18"));
                    let s = send_from(ALICE, &p, bytes.as_bytes());
                    // Sixteen cold node start-ups on a shared machine: more
                    // than the harness's usual bound, never a timing claim.
                    s.set_read_timeout(Some(6 * WAIT)).unwrap();
                    s.shutdown(std::net::Shutdown::Write).unwrap();
                    let r = read_response(&mut BufReader::new(s)).expect("a response");
                    assert_eq!(r.status, 200, "{}", r.text());
                    let events = r.events();
                    assert!(
                        events[0]["result"]["serverInfo"]["name"].is_string(),
                        "{events:?}"
                    );
                    r.header("mcp-session-id").expect("session id").to_string()
                })
            })
            .collect();
        let joined: Vec<_> = clients.into_iter().map(|c| c.join()).collect();
        // The sampler stops whatever the clients got.
        done.store(true, Ordering::Release);
        joined.into_iter().map(|j| j.unwrap()).collect()
    });
    assert_eq!(sids.iter().collect::<HashSet<_>>().len(), BURST);
    assert!(samples.load(Ordering::Acquire) > 1);
    let (m, procs) = (peak_metric.into_inner(), peak_procs.into_inner());
    assert!(m <= MAX_LIVE, "ringgate_children_live reached {m}");
    assert!(procs <= MAX_LIVE, "{procs} child processes");
    // Every session is served by its own child.
    for (i, sid) in sids.iter().enumerate() {
        let id = 10 + i as u64;
        let r = echo(&p, "/one", sid, id, "echo", &format!("s{i}"));
        assert_eq!(
            answer_text(&r, id),
            Some(format!("Echo: s{i}")),
            "{}",
            r.text()
        );
    }
    for sid in &sids {
        assert_eq!(delete(&p, ALICE, "/one", sid).status, 200);
    }
}

#[test]
fn a_multiplexed_initialize_takes_the_idle_children_of_another_worker() {
    // One idle child of each target per worker, and no room for more: a
    // worker that gave out its own must hand the session to the other.
    let p = Proxy::start(
        &everything_yaml("minIdle: 2, maxLive: 4"),
        &["--threads", "2"],
    );
    for round in 0..12 {
        eventually("both workers hold idle children of a and b", || {
            metric(&p, "ringgate_children_idle") == 4.0
        });
        let a = initialize(&p, ALICE, "/multi");
        let b = initialize(&p, ALICE, "/multi");
        let (wa, wb) = (accepted_by(&p, &a), accepted_by(&p, &b));
        if wa == wb {
            assert_eq!(owner(&a), wa);
            assert_ne!(owner(&b), wb, "round {round}");
            for (i, sid) in [&a, &b].into_iter().enumerate() {
                let id = 10 + i as u64;
                let r = echo(&p, "/multi", sid, id, "b_echo", &format!("m{i}"));
                assert_eq!(answer_text(&r, id), Some(format!("Echo: m{i}")));
            }
            assert_eq!(metric(&p, "ringgate_mcp_sessions_evicted_total"), 0.0);
            return;
        }
        for sid in [&a, &b] {
            assert_eq!(delete(&p, ALICE, "/multi", sid).status, 200);
        }
    }
    panic!("two initializes never arrived on the same worker");
}
