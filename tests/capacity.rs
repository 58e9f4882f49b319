//! Capacity across workers: an `initialize` takes an idle child wherever it
//! is, an abandoned idle session makes room at `maxLive`, readiness says
//! whether a session can be taken, and a config whose idle children could
//! never fit in `maxLive` is refused at start-up.

mod support;

use std::collections::HashSet;
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
    // One idle child per worker, and no room for a third child: a worker
    // that gave out its own idle child must use the other worker's.
    let p = Proxy::start(&yaml("minIdle: 1, maxLive: 2"), &["--threads", "2"]);
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
    std::fs::write(&path, yaml("minIdle: 1, maxLive: 2")).unwrap();
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
