//! extAuthz through the real binary against the fake tailscaled: who gets in,
//! what the access log says, every fault denied within the timeout and never
//! cached, the cache itself, and CORS before authorization.

mod support;

use std::time::{Duration, Instant};

use support::fake_tailscaled::{seed_ext_authz, FakeTailscaled, Fault, SEED_ACCESS_LOG};
use support::*;

const ALICE: &str = "127.0.0.2";
const CI: &str = "127.0.0.3";
const STRANGER: &str = "127.0.0.9";
const GET: &str = "GET /app HTTP/1.1\r\nHost: gw\r\n\r\n";

fn fake() -> FakeTailscaled {
    let mut b = FakeTailscaled::builder();
    for i in 20..30 {
        b = b.user(
            &format!("127.0.0.{i}"),
            &format!("n{i}.tail1234.ts.net."),
            &format!("u{i}@example.com"),
        );
    }
    b.user(ALICE, "alice-laptop.tail1234.ts.net.", "alice@example.com")
        .tagged(CI, "ci-runner.tail1234.ts.net.", &["tag:ci"])
        .user(
            "127.0.0.4",
            "bob-desktop.tail1234.ts.net.",
            "bob@example.com",
        )
        .user(
            "127.0.0.5",
            "carol-phone.tail1234.ts.net.",
            "carol@example.com",
        )
        .start()
}

/// The seed's policies on a cheap route and on an MCP route, with test-sized
/// timeouts.
fn config(fake: &FakeTailscaled, authz_extra: &str) -> String {
    let policies = format!(
        r#"
        cors:
          allowOrigins: ["https://app.example.com"]
          allowHeaders: ["*"]
          exposeHeaders: ["Mcp-Session-Id"]{}"#,
        seed_ext_authz(&fake.target(), &["timeout: 300ms", authz_extra])
    );
    format!(
        r#"
{SEED_ACCESS_LOG}
binds:
- port: 0
  address: 127.0.0.1
  listeners:
  - name: default
    protocol: HTTP
    routes:
    - name: mcp
      matches: [{{path: {{pathPrefix: /mcp}}}}]
      backends:
      - mcp: {{targets: [{{name: t, stdio: {{cmd: "true"}}}}]}}
      policies:{policies}
    - name: application
      policies:
        directResponse: {{body: "welcome"}}{policies}
"#
    )
}

fn start(fake: &FakeTailscaled, authz_extra: &str) -> Proxy {
    Proxy::start(&config(fake, authz_extra), &["--threads", "1"])
}

fn assert_denied(r: &Resp, status: u16) {
    assert_eq!(r.status, status, "{}", r.text());
    assert_eq!(r.header("content-type"), Some("text/plain"));
    assert_eq!(r.text(), "external authorization failed");
}

#[test]
fn a_known_peer_gets_in_and_is_named_in_the_log() {
    let fake = fake();
    let p = start(&fake, "");
    let r = request_from(ALICE, p.addr(), GET);
    assert_eq!((r.status, r.text().as_str()), (200, "welcome"));
    let line = p
        .wait_log(|l| l.contains(" request ") && l.contains("src.addr=127.0.0.2:"))
        .expect("access log line");
    assert!(
        line.ends_with(
            " tailscale.node=alice-laptop.tail1234.ts.net. tailscale.email=alice@example.com"
        ),
        "{line}"
    );
    assert!(line.contains("http.status=200"), "{line}");

    let r = request_from(CI, p.addr(), GET);
    assert_eq!(r.status, 200);
    let line = p
        .wait_log(|l| l.contains(" request ") && l.contains("src.addr=127.0.0.3:"))
        .unwrap();
    assert!(line.contains("tailscale.email=tagged-devices"), "{line}");
}

#[test]
fn an_unknown_peer_is_refused_and_proxy_headers_change_nothing() {
    let fake = fake();
    let p = start(&fake, "");
    assert_denied(&request_from(STRANGER, p.addr(), GET), 403);
    // Claims of identity in headers are ignored: only the socket's peer counts.
    let spoof = "GET /app HTTP/1.1\r\nHost: gw\r\nX-Forwarded-For: 127.0.0.2\r\n\
Forwarded: for=127.0.0.2\r\nTailscale-User-Login: alice@example.com\r\n\r\n";
    assert_denied(&request_from(STRANGER, p.addr(), spoof), 403);
    assert_eq!(fake.whois_calls_for(ALICE), 0);
    let line = p.wait_log(|l| l.contains("http.status=403")).unwrap();
    assert!(
        !line.contains("tailscale."),
        "a denied line names nobody: {line}"
    );
}

#[test]
fn every_fault_is_denied_within_the_timeout_and_never_cached() {
    let fake = fake();
    let p = start(&fake, "");
    let faults = [
        (
            "slow past the timeout",
            Fault::Slow(Duration::from_millis(800)),
        ),
        ("hang", Fault::Hang),
        ("500", Fault::Status500),
        ("malformed JSON", Fault::MalformedJson),
        ("oversized answer", Fault::Oversized(4 << 20)),
        ("closed mid-answer", Fault::CloseMidAnswer),
        ("socket missing", Fault::Missing),
        ("connection refused", Fault::Refused),
    ];
    for (i, (name, fault)) in faults.into_iter().enumerate() {
        // A peer of its own per fault, so no earlier good answer is cached.
        let peer = format!("127.0.0.{}", 20 + i);
        fake.set_fault(fault);
        let start = Instant::now();
        let r = request_from(&peer, p.addr(), GET);
        let took = start.elapsed();
        assert_denied(&r, 403);
        // The check's timeout is 300 ms; allow scheduling slack, not a hang.
        assert!(took < Duration::from_secs(3), "{name}: took {took:?}");
        fake.set_fault(Fault::None);
        let r = request_from(&peer, p.addr(), GET);
        assert_eq!(r.status, 200, "{name}: the failure must not be cached");
    }
}

#[test]
fn failure_mode_allow_and_deny_with_status() {
    let fake = fake();
    fake.set_fault(Fault::Status500);
    let p = start(&fake, "failureMode: allow");
    let r = request_from(ALICE, p.addr(), GET);
    assert_eq!(
        r.status, 200,
        "failureMode allow lets a failed check through"
    );
    // A definite "no" is still a no.
    fake.set_fault(Fault::None);
    assert_denied(&request_from(STRANGER, p.addr(), GET), 403);
    drop(p);

    fake.set_fault(Fault::Status500);
    let p = start(&fake, "failureMode: {denyWithStatus: 503}");
    assert_denied(&request_from(ALICE, p.addr(), GET), 503);
}

#[test]
fn the_cache_answers_repeat_callers_and_expires() {
    let fake = fake();
    let p = start(&fake, "cache: {ttl: 1s, negativeTtl: 1s}");
    for _ in 0..20 {
        assert_eq!(request_from(ALICE, p.addr(), GET).status, 200);
    }
    assert_eq!(
        fake.whois_calls_for(ALICE),
        1,
        "20 requests, one whois call"
    );
    for _ in 0..5 {
        assert_denied(&request_from(STRANGER, p.addr(), GET), 403);
    }
    assert_eq!(fake.whois_calls_for(STRANGER), 1, "denials are cached too");

    std::thread::sleep(Duration::from_millis(1100));
    assert_eq!(request_from(ALICE, p.addr(), GET).status, 200);
    assert_eq!(fake.whois_calls_for(ALICE), 2, "a new call after the TTL");
}

#[test]
fn concurrent_first_requests_share_one_lookup() {
    let fake = fake();
    // Slow answers (within the timeout) make the first requests overlap.
    fake.set_fault(Fault::Slow(Duration::from_millis(150)));
    let p = start(&fake, "");
    let addr = p.addr();
    let threads: Vec<_> = (0..8)
        .map(|_| std::thread::spawn(move || request_from("127.0.0.4", addr, GET).status))
        .collect();
    for t in threads {
        assert_eq!(t.join().unwrap(), 200);
    }
    assert_eq!(fake.whois_calls_for("127.0.0.4"), 1);
    // The log is written by a thread of its own: wait for all 8 lines.
    p.wait_log_nth(7, |l| l.contains(" request ") && l.contains("authz="))
        .expect("8 access-log lines");
    let shared = p
        .logs()
        .iter()
        .filter(|l| l.contains(" request ") && l.contains("authz=shared"))
        .count();
    assert!(shared >= 1, "some requests waited for the shared lookup");
}

#[test]
fn ipv4_mapped_peers_are_unmapped_for_whois() {
    let fake = fake();
    // A v6 socket on the v4-mapped loopback address sees ::ffff:127.0.0.x peers.
    let yaml = config(&fake, "").replace("address: 127.0.0.1", "address: \"::ffff:127.0.0.1\"");
    let p = Proxy::start(&yaml, &["--threads", "1"]);
    assert!(p.addr().is_ipv6(), "{}", p.addr());
    let v4 = std::net::SocketAddr::from(([127, 0, 0, 1], p.addr().port()));
    let r = request_from("127.0.0.5", v4, GET);
    assert_eq!(r.status, 200);
    assert_eq!(fake.whois_calls_for("127.0.0.5"), 1);
    let line = p.wait_log(|l| l.contains(" request ")).unwrap();
    assert!(line.contains("src.addr=127.0.0.5:"), "{line}");
    assert!(line.contains("tailscale.email=carol@example.com"), "{line}");
}

#[test]
fn cors_preflight_is_answered_before_authorization() {
    let fake = fake();
    let p = start(&fake, "");
    let preflight = "OPTIONS /app HTTP/1.1\r\nHost: gw\r\nOrigin: https://app.example.com\r\n\
Access-Control-Request-Method: POST\r\nAccess-Control-Request-Headers: content-type, mcp-session-id\r\n\r\n";
    // From a stranger: the preflight needs no identity.
    let r = request_from(STRANGER, p.addr(), preflight);
    assert_eq!(r.status, 200);
    assert_eq!(
        r.header("access-control-allow-origin"),
        Some("https://app.example.com")
    );
    assert_eq!(r.header("vary"), Some("Origin"));
    assert_eq!(
        r.header("access-control-allow-headers"),
        Some("content-type, mcp-session-id")
    );
    assert_eq!(fake.whois_calls(), 0);

    let with_origin = |o: &str| format!("GET /app HTTP/1.1\r\nHost: gw\r\nOrigin: {o}\r\n\r\n");
    let r = request_from(ALICE, p.addr(), &with_origin("https://app.example.com"));
    assert_eq!(r.status, 200);
    assert_eq!(
        r.header("access-control-expose-headers"),
        Some("Mcp-Session-Id")
    );
    assert_eq!(
        r.header("access-control-allow-origin"),
        Some("https://app.example.com")
    );
    // Denials carry the CORS headers too, so a browser client can read them.
    let r = request_from(STRANGER, p.addr(), &with_origin("https://app.example.com"));
    assert_eq!(r.status, 403);
    assert_eq!(
        r.header("access-control-allow-origin"),
        Some("https://app.example.com")
    );

    // An MCP request from an origin that is not allowed never reaches
    // authorization (DNS rebinding defence); a plain route just gets no
    // CORS headers.
    let calls = fake.whois_calls();
    let mcp = "POST /mcp HTTP/1.1\r\nHost: gw\r\nOrigin: https://evil.example\r\n\
Content-Type: application/json\r\nAccept: application/json, text/event-stream\r\nContent-Length: 2\r\n\r\n{}";
    let r = request_from(ALICE, p.addr(), mcp);
    assert_eq!((r.status, r.text().as_str()), (403, "origin not allowed"));
    assert_eq!(fake.whois_calls(), calls, "refused before any whois call");
    let r = request_from(ALICE, p.addr(), &with_origin("https://evil.example"));
    assert_eq!(r.status, 200);
    assert_eq!(r.header("access-control-allow-origin"), None);
}

#[test]
fn json_access_log_with_filter_and_remove() {
    let fake = fake();
    let yaml = config(&fake, "")
        .replace(
            "frontendPolicies:",
            "config:\n  logging: {format: json}\nfrontendPolicies:",
        )
        .replace(
            "      tailscale.email: extauthz.tailscaleEmail\n",
            "      tailscale.email: extauthz.tailscaleEmail\n    filter: request.path != \"/quiet\"\n    remove: [worker]\n",
        );
    let p = Proxy::start(&yaml, &["--threads", "1"]);
    assert_eq!(
        request_from(ALICE, p.addr(), "GET /quiet HTTP/1.1\r\nHost: gw\r\n\r\n").status,
        200
    );
    assert_eq!(request_from(ALICE, p.addr(), GET).status, 200);
    let line = p
        .wait_log(|l| l.contains("\"message\":\"request\""))
        .expect("a JSON access line");
    let v = json_of(&line);
    assert_eq!(
        v["http.path"], "/app",
        "the /quiet request was filtered out: {line}"
    );
    assert_eq!(v["tailscale.node"], "alice-laptop.tail1234.ts.net.");
    assert_eq!(v["tailscale.email"], "alice@example.com");
    assert_eq!(v["http.status"], "200");
    assert!(v.get("worker").is_none(), "removed: {line}");
    assert_eq!(v["level"], "info");
}

#[test]
fn a_wildcard_origin_on_an_authenticated_route_is_warned_about() {
    let fake = fake();
    let yaml = config(&fake, "").replace("[\"https://app.example.com\"]", "[\"*\"]");
    let p = start_yaml(&yaml);
    assert!(p
        .wait_log(|l| l.contains("WARN") && l.contains("allowOrigins contains"))
        .is_some());
}

fn start_yaml(yaml: &str) -> Proxy {
    Proxy::start(yaml, &["--threads", "1"])
}
