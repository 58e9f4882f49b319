//! `AuthzClient` against the fake tailscaled, on both monoio drivers.

#[path = "support/drivers.rs"]
mod drivers;
#[path = "support/fake_tailscaled.rs"]
mod fake_tailscaled;

use std::io::{Read, Write};
use std::rc::Rc;
use std::time::{Duration, Instant};

use drivers::on_both_drivers;
use fake_tailscaled::{FakeTailscaled, Fault, Node, LOCALAPI_HOST};
use ringgate::auth::client::{AuthzClient, CheckRequest, ClientConfig, ClientError, Target};

const ALICE: &str = "100.84.21.7";
const CI: &str = "100.88.7.6";

fn fake() -> FakeTailscaled {
    FakeTailscaled::builder()
        .user(ALICE, "alice-laptop.tail1234.ts.net.", "alice@example.com")
        .tagged(CI, "ci-runner.tail1234.ts.net.", &["tag:ci"])
        .start()
}

fn client(fake: &FakeTailscaled, timeout_ms: u64) -> AuthzClient {
    let mut cfg = ClientConfig::new(Target::parse(&fake.target()).unwrap());
    cfg.timeout = Duration::from_millis(timeout_ms);
    AuthzClient::new(cfg)
}

fn whois(ip: &str) -> CheckRequest {
    CheckRequest::get(format!("/localapi/v0/whois?addr={ip}"), LOCALAPI_HOST)
}

fn login(body: &[u8]) -> String {
    let j: serde_json::Value = serde_json::from_slice(body).expect("JSON");
    j["UserProfile"]["LoginName"].as_str().unwrap().to_string()
}

#[test]
fn kept_alive_connection_is_reused() {
    on_both_drivers(|driver| async move {
        let fake = fake();
        let c = client(&fake, 1000);
        for i in 0..10 {
            let ip = if i % 2 == 0 { ALICE } else { CI };
            let r = c.send(&whois(ip)).await.expect(driver);
            assert_eq!(r.status, 200);
            assert_eq!(r.header("content-type"), Some(&b"application/json"[..]));
            let want = if i % 2 == 0 {
                "alice@example.com"
            } else {
                "tagged-devices"
            };
            assert_eq!(login(&r.body), want);
        }
        assert_eq!(fake.connections(), 1, "{driver}");
        assert_eq!(fake.whois_calls(), 10);
        let s = c.stats();
        assert_eq!((s.connects, s.reuses, s.stale_retries), (1, 9, 0));
        assert_eq!(c.idle_connections(), 1);
    });
}

#[test]
fn error_statuses_are_answers_and_keep_the_connection() {
    on_both_drivers(|driver| async move {
        let fake = fake();
        let c = client(&fake, 1000);
        let miss = c.send(&whois("100.64.0.1")).await.expect(driver);
        assert_eq!(
            (miss.status, &miss.body[..]),
            (404, &b"no match for IP:port\n"[..])
        );
        let bad = c.send(&whois("nope")).await.unwrap();
        assert_eq!(
            (bad.status, &bad.body[..]),
            (400, &b"invalid 'addr' parameter\n"[..])
        );
        let mut req = whois(ALICE);
        req.authority = "evil.example".into();
        assert_eq!(c.send(&req).await.unwrap().status, 403);
        // Origin and Referer are never sent, so tailscaled does not refuse.
        let mut req = whois(ALICE);
        req.headers
            .push(("Origin".into(), "https://evil.example".into()));
        req.headers
            .push(("Referer".into(), "https://evil.example/".into()));
        assert_eq!(c.send(&req).await.unwrap().status, 200);
        fake.set_fault(Fault::Status500);
        assert_eq!(c.send(&whois(ALICE)).await.unwrap().status, 500);
        fake.set_fault(Fault::MalformedJson);
        let r = c.send(&whois(ALICE)).await.unwrap();
        assert_eq!(r.status, 200);
        assert!(serde_json::from_slice::<serde_json::Value>(&r.body).is_err());
        assert_eq!(fake.connections(), 1, "{driver}");
    });
}

#[test]
fn slow_and_hung_answers_time_out_and_are_not_pooled() {
    on_both_drivers(|driver| async move {
        let fake = fake();
        let c = client(&fake, 150);
        c.send(&whois(ALICE)).await.unwrap();
        for fault in [Fault::Slow(Duration::from_millis(400)), Fault::Hang] {
            fake.set_fault(fault);
            let t = Instant::now();
            let err = c.send(&whois(ALICE)).await.unwrap_err();
            let took = t.elapsed();
            assert!(
                matches!(err, ClientError::Timeout(_)),
                "{driver} {fault:?}: {err}"
            );
            assert!(took >= Duration::from_millis(150), "{took:?}");
            assert!(
                took < Duration::from_millis(400),
                "{driver} {fault:?}: {took:?}"
            );
            assert_eq!(c.idle_connections(), 0);
        }
        fake.set_fault(Fault::None);
        let before = c.stats().connects;
        assert_eq!(c.send(&whois(ALICE)).await.unwrap().status, 200);
        assert_eq!(c.stats().connects, before + 1, "a fresh connection");
    });
}

#[test]
fn oversized_and_cut_answers() {
    on_both_drivers(|driver| async move {
        let fake = fake();
        let c = client(&fake, 2000);
        fake.set_fault(Fault::Oversized(2 << 20));
        let err = c.send(&whois(ALICE)).await.unwrap_err();
        assert!(
            matches!(err, ClientError::TooLarge("body")),
            "{driver}: {err}"
        );
        assert_eq!(c.idle_connections(), 0);

        fake.set_fault(Fault::Oversized(900_000));
        let r = c.send(&whois(ALICE)).await.expect(driver);
        assert_eq!(r.header("transfer-encoding"), Some(&b"chunked"[..]));
        assert_eq!(r.body.len(), 900_000);
        assert_eq!(
            c.idle_connections(),
            1,
            "a complete chunked answer is reusable"
        );

        fake.set_fault(Fault::CloseMidAnswer);
        let err = c.send(&whois(ALICE)).await.unwrap_err();
        assert!(matches!(err, ClientError::Closed), "{driver}: {err}");
        assert_eq!(c.idle_connections(), 0);
    });
}

#[test]
fn big_chunked_whois_answer_is_decoded() {
    on_both_drivers(|driver| async move {
        let caps: Vec<String> = (0..5000)
            .map(|i| format!("\"example.com/cap/{i}\":[{{\"role\":\"r{i}\"}}]"))
            .collect();
        let cap_map = format!("{{{}}}", caps.join(","));
        let fake = FakeTailscaled::builder()
            .node(
                Node::user(ALICE, "alice.tail1234.ts.net.", "alice@example.com")
                    .with_cap_map(&cap_map),
            )
            .start();
        let c = client(&fake, 1000);
        for _ in 0..3 {
            let r = c.send(&whois(ALICE)).await.expect(driver);
            assert_eq!(r.header("transfer-encoding"), Some(&b"chunked"[..]));
            assert!(r.body.len() > 100_000);
            assert_eq!(r.body, fake.whois_body(ALICE).unwrap().as_bytes());
        }
        assert_eq!(fake.connections(), 1);
    });
}

#[test]
fn stale_pooled_connection_is_retried_once() {
    on_both_drivers(|driver| async move {
        let fake = fake();
        let c = client(&fake, 1000);
        c.send(&whois(ALICE)).await.unwrap();
        fake.close_connections();
        let r = c.send(&whois(ALICE)).await.expect(driver);
        assert_eq!(r.status, 200);
        let s = c.stats();
        // Usually seen closed at checkout; if the close lands after that,
        // the call is retried once.
        assert_eq!(s.connects, 2, "{driver}");
        assert_eq!(s.unclean_idle + s.stale_retries, 1, "{driver}: {s:?}");
        assert_eq!(fake.connections(), 2);
        // A failure on a fresh connection is not retried.
        fake.set_fault(Fault::CloseMidAnswer);
        fake.close_connections();
        let err = c.send(&whois(ALICE)).await.unwrap_err();
        assert!(matches!(err, ClientError::Closed), "{driver}: {err}");
        assert_eq!(
            fake.whois_calls(),
            3,
            "{driver}: one try on the fresh connection"
        );
    });
}

/// A daemon that answers the first request on each connection, then writes
/// a forged second answer nobody asked for and keeps the connection open.
fn stray_bytes_daemon(dir: &std::path::Path) -> (String, std::thread::JoinHandle<usize>) {
    let path = dir.join("stray.sock");
    let listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
    listener.set_nonblocking(true).unwrap();
    let handle = std::thread::spawn(move || {
        let mut held = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(10);
        while held.len() < 2 && Instant::now() < deadline {
            let Ok((mut s, _)) = listener.accept() else {
                std::thread::sleep(Duration::from_millis(5));
                continue;
            };
            s.set_nonblocking(false).unwrap();
            s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            let mut req = Vec::new();
            let mut b = [0u8; 1024];
            while !req.ends_with(b"\r\n\r\n") {
                match s.read(&mut b) {
                    Ok(n) if n > 0 => req.extend_from_slice(&b[..n]),
                    _ => break,
                }
            }
            let n = held.len();
            let body = format!("{{\"answer\":{n}}}");
            let answer = format!(
                "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            );
            s.write_all(answer.as_bytes()).unwrap();
            std::thread::sleep(Duration::from_millis(50));
            let forged = "HTTP/1.1 200 OK\r\nContent-Length: 14\r\n\r\n{\"forged\":true}";
            s.write_all(forged.as_bytes()).unwrap();
            held.push(s);
        }
        held.len()
    });
    (format!("unix:{}", path.display()), handle)
}

#[test]
fn pooled_connection_with_stray_bytes_is_dropped() {
    on_both_drivers(|driver| async move {
        let dir = tempfile::tempdir().unwrap();
        let (target, daemon) = stray_bytes_daemon(dir.path());
        let mut cfg = ClientConfig::new(Target::parse(&target).unwrap());
        cfg.timeout = Duration::from_millis(2000);
        let c = AuthzClient::new(cfg);
        let first = c.send(&whois(ALICE)).await.expect(driver);
        assert_eq!(first.body, br#"{"answer":0}"#);
        // Let the forged answer arrive on the pooled connection.
        monoio::time::sleep(Duration::from_millis(300)).await;
        let second = c.send(&whois(ALICE)).await.expect(driver);
        assert_eq!(
            second.body, br#"{"answer":1}"#,
            "{driver}: the forged bytes were read as an answer"
        );
        let s = c.stats();
        assert_eq!((s.connects, s.unclean_idle), (2, 1), "{driver}: {s:?}");
        assert_eq!(daemon.join().unwrap(), 2);
    });
}

#[test]
fn missing_daemon_is_a_connect_error() {
    on_both_drivers(|driver| async move {
        let fake = fake();
        let c = client(&fake, 1000);
        c.send(&whois(ALICE)).await.unwrap();
        fake.set_fault(Fault::Missing);
        let err = c.send(&whois(ALICE)).await.unwrap_err();
        match &err {
            ClientError::Connect { source, .. } => {
                assert_eq!(source.kind(), std::io::ErrorKind::NotFound, "{driver}")
            }
            other => panic!("{driver}: {other}"),
        }
        let s = c.stats();
        assert_eq!(
            s.stale_retries + s.unclean_idle,
            1,
            "the pooled connection died with the daemon: {s:?}"
        );
        fake.set_fault(Fault::Refused);
        let err = c.send(&whois(ALICE)).await.unwrap_err();
        match &err {
            ClientError::Connect { source, .. } => {
                assert_eq!(
                    source.kind(),
                    std::io::ErrorKind::ConnectionRefused,
                    "{driver}"
                )
            }
            other => panic!("{driver}: {other}"),
        }
        fake.set_fault(Fault::None);
        assert_eq!(c.send(&whois(ALICE)).await.unwrap().status, 200);
    });
}

#[test]
fn concurrent_calls_on_one_worker() {
    on_both_drivers(|driver| async move {
        let fake = fake();
        let c = Rc::new(client(&fake, 2000));
        for _round in 0..3 {
            let tasks: Vec<_> = (0..20)
                .map(|i| {
                    let c = c.clone();
                    monoio::spawn(async move {
                        let ip = if i % 2 == 0 { ALICE } else { CI };
                        c.send(&whois(ip)).await.map(|r| r.status)
                    })
                })
                .collect();
            for t in tasks {
                assert_eq!(t.await.expect(driver), 200);
            }
        }
        assert!(c.idle_connections() <= 8);
        assert!(
            fake.connections() <= 20 + 2 * 12,
            "{driver}: {}",
            fake.connections()
        );
    });
}

/// TCP targets with a one-shot std server: framing by EOF and refused ports.
#[test]
fn tcp_target() {
    on_both_drivers(|driver| async move {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let server = std::thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            let mut buf = [0u8; 1024];
            let n = s.read(&mut buf).unwrap();
            let req = String::from_utf8_lossy(&buf[..n]).to_string();
            s.write_all(b"HTTP/1.1 200 OK\r\nX-User: bob\r\n\r\nhello")
                .unwrap();
            req
        });
        let cfg = ClientConfig::new(Target::parse(&format!("localhost:{port}")).unwrap());
        let c = AuthzClient::new(cfg);
        let mut req = CheckRequest::get("/check?x=1", "authz.local");
        req.method = "POST".into();
        req.headers
            .push(("X-Forwarded-For".into(), "100.64.0.1".into()));
        let r = c.send(&req).await.expect(driver);
        assert_eq!((r.status, &r.body[..]), (200, &b"hello"[..]));
        assert_eq!(r.header("x-user"), Some(&b"bob"[..]));
        assert_eq!(c.idle_connections(), 0, "EOF-framed answers are not reused");
        let sent = server.join().unwrap();
        assert_eq!(
            sent,
            "POST /check?x=1 HTTP/1.1\r\nHost: authz.local\r\nX-Forwarded-For: 100.64.0.1\r\nContent-Length: 0\r\n\r\n"
        );
        let err = c.send(&req).await.unwrap_err();
        assert!(
            matches!(err, ClientError::Connect { .. }),
            "{driver}: {err}"
        );
    });
}
