//! A flood of first requests from many source addresses: the calls to the
//! authorization service stay within the per-worker bound
//! (`extAuthz.connections`), every request is answered, and a check the
//! bound refuses fails closed and is not remembered.

mod support;

use std::sync::Barrier;
use std::time::Duration;

use support::fake_tailscaled::{direct_route_behind_whois, FakeTailscaled, Fault};
use support::*;

const GET: &str = "GET /app HTTP/1.1\r\nHost: gw\r\n\r\n";
const WORKERS: usize = 2;
const MAX_CONNECTIONS: usize = 4;
/// Known and unknown peers, each from its own address.
const KNOWN: usize = 100;
const UNKNOWN: usize = 100;

fn known(i: usize) -> String {
    format!("127.0.1.{}", i + 1)
}

fn unknown(i: usize) -> String {
    format!("127.0.2.{}", i + 1)
}

fn config(fake: &FakeTailscaled, extra: &[&str]) -> String {
    direct_route_behind_whois(fake, "application", "welcome", extra)
}

fn metric(p: &Proxy, line_start: &str) -> u64 {
    let (status, text) = admin_get(p.stats.expect("stats listener"), "/metrics");
    assert_eq!(status, 200);
    text.lines()
        .find_map(|l| l.strip_prefix(line_start))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {line_start} in\n{text}"))
}

#[test]
fn a_flood_from_many_addresses_stays_within_the_connection_bound() {
    let mut b = FakeTailscaled::builder();
    for i in 0..KNOWN {
        b = b.user(
            &known(i),
            &format!("n{i}.tail1234.ts.net."),
            &format!("u{i}@example.com"),
        );
    }
    // Every answer is held a while, so the checks pile up.
    let fake = b.fault(Fault::Slow(Duration::from_millis(50))).start();
    let max = format!("connections: {{max: {MAX_CONNECTIONS}}}");
    // A timeout far above the time the flood needs through the bound: no
    // check may fail for want of a connection here.
    let p = Proxy::start(
        &config(&fake, &["timeout: 30s", &max]),
        &["--threads", &WORKERS.to_string()],
    );
    let sources: Vec<(String, bool)> = (0..KNOWN)
        .map(|i| (known(i), true))
        .chain((0..UNKNOWN).map(|i| (unknown(i), false)))
        .collect();
    let start = Barrier::new(sources.len());
    let statuses: Vec<(String, bool, u16, String)> = std::thread::scope(|s| {
        let handles: Vec<_> = sources
            .iter()
            .map(|(src, is_known)| {
                let (start, addr) = (&start, p.addr());
                s.spawn(move || {
                    let conn = connect_from(src, addr);
                    start.wait();
                    let r = send_on(conn, GET);
                    (src.clone(), *is_known, r.status, r.text())
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for (src, is_known, status, body) in &statuses {
        if *is_known {
            assert_eq!((*status, body.as_str()), (200, "welcome"), "{src}");
        } else {
            assert_eq!(
                (*status, body.as_str()),
                (403, "external authorization failed"),
                "a stranger ({src}) got in"
            );
        }
    }
    // One call per address: the flood was neither refused nor retried.
    assert_eq!(fake.whois_calls(), KNOWN + UNKNOWN);
    let peak = fake.peak_open_connections();
    assert!(
        peak <= WORKERS * MAX_CONNECTIONS,
        "{peak} connections open at once, bound {WORKERS} x {MAX_CONNECTIONS}"
    );
    // The bound was reached, and the stats say checks waited for it.
    assert!(metric(&p, "ringgate_authz_waits_total{outcome=\"waited\"}") > 0);
    assert_eq!(
        metric(&p, "ringgate_authz_waits_total{outcome=\"refused\"}"),
        0
    );
}

/// Sends `req` on an open connection, half-closes, reads the response.
fn send_on(mut conn: std::net::TcpStream, req: &str) -> Resp {
    use std::io::Write;
    conn.write_all(req.as_bytes()).unwrap();
    conn.shutdown(std::net::Shutdown::Write).unwrap();
    read_response(&mut std::io::BufReader::new(conn)).expect("a response")
}

const HOLDER: &str = "127.0.3.1";
const ALICE: &str = "127.0.3.2";

/// One connection, nobody may wait: while a check holds the connection, the
/// next one is refused at once. Even with `failureMode: allow` the refusal
/// denies (an overload must not open the door), and it is not cached: the
/// same peer gets in once the connection is free.
#[test]
fn a_refused_check_fails_closed_and_is_not_cached() {
    let fake = FakeTailscaled::builder()
        .user(HOLDER, "holder.tail1234.ts.net.", "holder@example.com")
        .user(ALICE, "alice-laptop.tail1234.ts.net.", "alice@example.com")
        .start();
    fake.set_fault_for(HOLDER, Some(Fault::Hang));
    let p = Proxy::start(
        &config(
            &fake,
            &[
                "timeout: 2s",
                "failureMode: allow",
                "connections: {max: 1, maxWaiting: 0}",
            ],
        ),
        &["--threads", "1"],
    );
    std::thread::scope(|s| {
        let holder = s.spawn(|| request_from(HOLDER, p.addr(), GET));
        assert!(
            wait_until(Duration::from_secs(10), || fake.whois_calls_for(HOLDER)
                == 1),
            "the holder's check reached the daemon"
        );
        let r = request_from(ALICE, p.addr(), GET);
        assert_eq!(
            (r.status, r.text().as_str()),
            (403, "external authorization failed")
        );
        assert_eq!(fake.whois_calls_for(ALICE), 0, "refused before any call");
        // The holder's check times out; failureMode allow lets it through.
        assert_eq!(holder.join().unwrap().status, 200);
    });
    assert_eq!(
        metric(&p, "ringgate_authz_waits_total{outcome=\"refused\"}"),
        1
    );
    let r = request_from(ALICE, p.addr(), GET);
    assert_eq!((r.status, r.text().as_str()), (200, "welcome"));
    assert_eq!(fake.whois_calls_for(ALICE), 1);
}
