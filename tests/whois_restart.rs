//! The whois daemon restarting while requests flow: tailscaled is stopped
//! (socket gone, connections closed) and a new one starts on the same
//! socket path, knowing a different set of peers. No request may be let in
//! that should be denied, none may hang, and service recovers.

mod support;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use support::fake_tailscaled::{direct_route_behind_whois, FakeTailscaled};
use support::*;

const ALICE: &str = "127.0.0.2";
/// Known to the first daemon only (removed from the tailnet meanwhile).
const BOB: &str = "127.0.0.3";
/// Known to the second daemon only (joined meanwhile).
const CAROL: &str = "127.0.0.4";
const STRANGER: &str = "127.0.0.9";
const GET: &str = "GET /app HTTP/1.1\r\nHost: gw\r\n\r\n";
/// The whois cache TTL (positive and negative) in the config below.
const TTL: Duration = Duration::from_millis(300);

fn config(fake: &FakeTailscaled) -> String {
    direct_route_behind_whois(
        fake,
        "application",
        "welcome",
        &["timeout: 300ms", "cache: {ttl: 300ms, negativeTtl: 300ms}"],
    )
}

/// One request: who, when it started, its status, how long it took.
#[derive(Debug, Clone)]
struct Sample {
    who: &'static str,
    at: Instant,
    status: u16,
    took: Duration,
}

#[test]
fn a_whois_daemon_restarting_mid_load_lets_nobody_in_wrongly() {
    let first = FakeTailscaled::builder()
        .user(ALICE, "alice-laptop.tail1234.ts.net.", "alice@example.com")
        .user(BOB, "bob-desktop.tail1234.ts.net.", "bob@example.com")
        .start();
    let path = first.path().to_path_buf();
    let p = Proxy::start(&config(&first), &["--threads", "2"]);
    let addr = p.addr();
    assert_eq!(request_from(ALICE, addr, GET).status, 200);
    assert_eq!(request_from(BOB, addr, GET).status, 200);

    let samples = Arc::new(Mutex::new(Vec::<Sample>::new()));
    let running = Arc::new(AtomicBool::new(true));
    let clients: Vec<_> = [ALICE, BOB, CAROL, STRANGER]
        .into_iter()
        .flat_map(|who| [who, who])
        .map(|who| {
            let (samples, running) = (samples.clone(), running.clone());
            std::thread::spawn(move || {
                while running.load(Ordering::Relaxed) {
                    let at = Instant::now();
                    let status = request_tolerant(who, addr, GET).map_or(0, |r| r.status);
                    let took = at.elapsed();
                    samples.lock().unwrap().push(Sample {
                        who,
                        at,
                        status,
                        took,
                    });
                    std::thread::sleep(Duration::from_millis(5));
                }
            })
        })
        .collect();

    // Whether some request from `who`, started after `since`, got `status`.
    let seen = |who: &str, since: Instant, status: u16| {
        samples
            .lock()
            .unwrap()
            .iter()
            .any(|x| x.who == who && x.at > since && x.status == status)
    };
    let began = Instant::now();
    assert!(
        wait_until(WAIT, || seen(ALICE, began, 200)
            && seen(STRANGER, began, 403)),
        "the load flows"
    );
    // The daemon stops: connections closed, socket file removed.
    let stopped = Instant::now();
    drop(first);
    // The outage is seen: requests started once every cached answer had
    // expired have been answered (refused: nobody can vouch for them).
    assert!(
        wait_until(WAIT, || [ALICE, BOB].iter().all(|who| seen(
            who,
            stopped + 2 * TTL,
            403
        ))),
        "requests answered while no daemon runs"
    );
    // A new daemon on the same path; Bob left the tailnet, Carol joined.
    let restarting = Instant::now();
    let second = FakeTailscaled::builder()
        .user(ALICE, "alice-laptop.tail1234.ts.net.", "alice@example.com")
        .user(CAROL, "carol-phone.tail1234.ts.net.", "carol@example.com")
        .start_at(&path);
    let restarted = Instant::now();
    let recovered = wait_until(WAIT, || {
        let s = samples.lock().unwrap();
        let ok_since = |who| {
            s.iter()
                .any(|x| x.who == who && x.at > restarted && x.status == 200)
        };
        ok_since(ALICE) && ok_since(CAROL)
    });
    // The load goes on until the new daemon's refusals are seen too.
    let refusals_seen = wait_until(WAIT, || {
        seen(BOB, restarted, 403) && seen(STRANGER, restarted, 403)
    });
    running.store(false, Ordering::Relaxed);
    for c in clients {
        c.join().unwrap();
    }
    let samples = samples.lock().unwrap().clone();
    let count = |who, status| {
        samples
            .iter()
            .filter(|x| x.who == who && x.status == status)
            .count()
    };
    eprintln!(
        "{} requests during the restart; alice 200/403: {}/{}, bob {}/{}, carol {}/{}, stranger {}/{}; whois calls to the new daemon: {}",
        samples.len(),
        count(ALICE, 200),
        count(ALICE, 403),
        count(BOB, 200),
        count(BOB, 403),
        count(CAROL, 200),
        count(CAROL, 403),
        count(STRANGER, 200),
        count(STRANGER, 403),
        second.whois_calls()
    );
    assert!(recovered, "alice and carol are let in by the new daemon");
    assert!(
        refusals_seen,
        "bob and the stranger are refused by the new daemon"
    );

    for s in &samples {
        // Every request answered, with a decision, well within the bounds.
        assert!(matches!(s.status, 200 | 403), "{s:?}: only allow or deny");
        assert!(s.took < Duration::from_secs(5), "{s:?}: no hang");
        assert!(
            !(s.who == STRANGER && s.status == 200),
            "{s:?}: a stranger got in"
        );
        // Nobody the daemons do not know gets in while one is down (beyond
        // what the cache legitimately held from before the stop).
        let done = s.at + s.took;
        if s.status == 200 && s.at > stopped + 2 * TTL && done < restarting {
            panic!("{s:?}: let in while no daemon could vouch for anyone");
        }
        // Carol is let in only by the new daemon.
        assert!(
            !(s.who == CAROL && s.status == 200 && done < restarting),
            "{s:?}: carol before the daemon that knows her"
        );
        // Bob's cached allow expires: once the TTL has passed since the
        // first daemon stopped, he is denied.
        assert!(
            !(s.who == BOB && s.status == 200 && s.at > stopped + 2 * TTL),
            "{s:?}: bob after he left the tailnet (stopped {:?} before)",
            s.at.saturating_duration_since(stopped)
        );
    }
    assert!(count(ALICE, 200) > 0 && count(STRANGER, 403) > 0);
    // After the load: the service is back, decisions as the new daemon says.
    assert_eq!(request_from(ALICE, addr, GET).status, 200);
    assert_eq!(request_from(CAROL, addr, GET).status, 200);
    assert_eq!(request_from(BOB, addr, GET).status, 403);
    assert_eq!(request_from(STRANGER, addr, GET).status, 403);
}
