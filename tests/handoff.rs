//! Requests of one session handed between workers (or their connections
//! moved to the owner) while its child is slow to read its input: every
//! request is answered, whichever worker accepted its connection, and none
//! is refused because the owner was busy writing.

mod support;

use std::io::{BufReader, Write};
use std::time::Duration;

use serde_json::json;
use support::mcp::*;
use support::*;

const SRC: &str = "127.0.0.2";
/// How long the child reads nothing: longer than any fixed wait a hand-off
/// could have had, well under the request timeout (60 s by default).
const STALL_SECS: u64 = 6;
/// Each request is larger than a socket buffer, so while the child stalls
/// the lines queue up behind one another in the proxy.
const MESSAGE_BYTES: usize = 128 * 1024;
/// Parallel requests per round, each on its own connection (as the Python
/// SDK does), so the kernel spreads them over both workers.
const PER_ROUND: u64 = 8;

fn start() -> Proxy {
    let yaml = format!(
        r#"
config:
  mcp: {{minIdle: 1, stopGrace: 300ms}}
binds:
- port: 0
  address: 127.0.0.1
  listeners:
  - routes:
{fault}"#,
        fault = mcp_route("fault", "/fault", "python3", &[&fault_script(), "hang"]),
    );
    Proxy::start(&yaml, &["--threads", "2"])
}

/// A POST on its own connection, read with a deadline past the stall.
fn post_slow(p: &Proxy, sid: &str, id: u64, tool: &str, args: serde_json::Value) -> Resp {
    let mut s = connect_from(SRC, p.addr());
    s.set_read_timeout(Some(WAIT + Duration::from_secs(STALL_SECS)))
        .unwrap();
    s.write_all(post_bytes("/fault", Some(sid), &call_body(id, tool, args)).as_bytes())
        .unwrap();
    read_response(&mut BufReader::new(s)).expect("an answer")
}

#[test]
fn a_slow_child_delays_but_never_fails_requests_handed_between_workers() {
    let p = start();
    let sid = initialize(&p, SRC, "/fault");
    let owner = u64::from_str_radix(&sid[..4], 16).unwrap().to_string();
    let mut workers_hit = std::collections::HashSet::new();
    for round in 0..4u64 {
        let base = 100 * (round + 1);
        let late = {
            let (p_addr, sid) = (p.addr(), sid.clone());
            std::thread::spawn(move || {
                let mut s = connect_from(SRC, p_addr);
                s.set_read_timeout(Some(WAIT + Duration::from_secs(STALL_SECS)))
                    .unwrap();
                let body = call_body(base, "late", json!({ "delay": STALL_SECS }));
                s.write_all(post_bytes("/fault", Some(&sid), &body).as_bytes())
                    .unwrap();
                read_response(&mut BufReader::new(s)).expect("the late answer")
            })
        };
        p.wait_log_nth(round as usize, |l| l.contains("fault-server: late for"))
            .expect("the child stalls");
        std::thread::scope(|scope| {
            let calls: Vec<_> = (1..=PER_ROUND)
                .map(|i| {
                    let (p, sid) = (&p, &sid);
                    scope.spawn(move || {
                        let msg = format!("{i}:{}", "x".repeat(MESSAGE_BYTES));
                        let r = post_slow(p, sid, base + i, "ok", json!({ "message": msg }));
                        (i, msg, r)
                    })
                })
                .collect();
            for c in calls {
                let (i, msg, r) = c.join().unwrap();
                assert_eq!(r.status, 200, "request {i}: {}", r.text());
                let text = answer_text(&r, base + i).unwrap_or_else(|| {
                    panic!(
                        "request {i}: {:?}",
                        r.text().chars().take(300).collect::<String>()
                    )
                });
                assert!(text == format!("ok:{msg}"), "request {i}: wrong answer");
            }
        });
        let r = late.join().unwrap();
        assert_eq!(r.status, 200);
        assert_eq!(answer_text(&r, base).as_deref(), Some("late"));
        // Which workers accepted this round's calls (the access log).
        let lines = (round + 1) * (PER_ROUND + 1);
        p.wait_log_nth(lines as usize + 1, |l| {
            l.contains(" request ") && l.contains("mcp.method.name=")
        })
        .expect("access lines");
        workers_hit.extend(
            p.logs()
                .iter()
                .filter(|l| l.contains("mcp.method.name=tools/call"))
                .filter_map(|l| field(l, "worker")),
        );
        // A connection the other worker accepted is either answered there
        // (handed over) or moved to the owner (counted).
        let moved = metric(&p, "ringgate_connections_moved_total").unwrap_or(0.0);
        if workers_hit.len() == 2 || moved > 0.0 {
            break;
        }
    }
    let moved = metric(&p, "ringgate_connections_moved_total").unwrap_or(0.0);
    assert!(
        workers_hit.len() == 2 || moved > 0.0,
        "calls reached both workers (owner {owner}): {workers_hit:?}, {moved} moved"
    );
    assert!(
        !p.logs()
            .iter()
            .any(|l| l.contains(" request ") && l.contains("status=503")),
        "no request was refused"
    );
}
