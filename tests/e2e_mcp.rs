//! End to end with real peers: the official Python MCP SDK client, ringgate
//! with the seed's policies (whois through the fake tailscaled), and the real
//! server-everything as the stdio child.

mod support;

use std::time::{Duration, Instant};

use serde_json::Value;
use support::fake_tailscaled::FakeTailscaled;
use support::*;

fn python_client(url: &str, src: &str, scenario: &str) -> Value {
    python_client_with(url, src, scenario, &[])
}

fn python_client_with(url: &str, src: &str, scenario: &str, extra: &[&str]) -> Value {
    let mut args = vec!["--url", url, "--source-ip", src, "--scenario", scenario];
    // The handshake era: `auto` now settles on 2026-07-28 (tests/modern.rs).
    args.extend(["--mode", "legacy"]);
    args.extend(extra);
    args.extend(["--steps", "4", "--duration", "0.4", "--timeout", "60"]);
    support::mcp::peer_client("mcp_client.py", &args)
}

/// The fake tailscaled knowing alice at 127.0.0.2, ringgate on the seed
/// config with two workers, and the MCP URL.
fn start_alice() -> (FakeTailscaled, Proxy, String) {
    start_alice_with(2, &[])
}

/// The same with `threads` workers and more command-line `args`.
fn start_alice_with(threads: usize, args: &[&str]) -> (FakeTailscaled, Proxy, String) {
    let fake = FakeTailscaled::builder()
        .user(
            "127.0.0.2",
            "alice-laptop.tail1234.ts.net.",
            "alice@example.com",
        )
        .start();
    let p = Proxy::start(
        &support::mcp::seed_config(&fake.target(), threads, ""),
        args,
    );
    let url = format!("http://{}/mcp", p.addr());
    (fake, p, url)
}

#[test]
fn python_sdk_through_ringgate_to_server_everything() {
    let (_fake, p, url) = start_alice();
    let v = python_client(&url, "127.0.0.2", "full");
    support::mcp::assert_full_scenario(&v);
    let tools: Vec<&str> = v["tools"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_str().unwrap_or_else(|| t["name"].as_str().unwrap()))
        .collect();
    for t in ["echo", "get-sum", "trigger-long-running-operation"] {
        assert!(tools.contains(&t), "{t} in {tools:?}");
    }
    let lr = &v["long_running"];
    assert_eq!(lr["is_error"], false, "{v:#}");
    assert!(
        lr["progress_notifications"].as_u64().unwrap() >= 1,
        "progress notifications must arrive: {v:#}"
    );

    // The access log names the caller, and the session's child is gone.
    let line = p
        .wait_log(|l| l.contains("gen_ai.tool.name=echo"))
        .expect("access line of the echo call");
    assert!(line.contains("tailscale.email=alice@example.com"), "{line}");
    assert!(line.contains("protocol=mcp"), "{line}");
    let sid = v["session_id"].as_str().expect("session id").to_string();
    let started = p
        .wait_log(|l| l.contains("session started") && l.contains(&sid))
        .expect("session start");
    let pid: i32 = field(&started, "pid").unwrap().parse().unwrap();
    let deadline = Instant::now() + WAIT;
    while std::path::Path::new(&format!("/proc/{pid}")).exists() {
        assert!(
            Instant::now() < deadline,
            "child {pid} outlived its session"
        );
        std::thread::sleep(Duration::from_millis(20));
    }

    // A stranger gets nowhere near a child.
    let v = python_client(&url, "127.0.0.9", "initialize-only");
    assert_eq!(v["ok"], false);
}

#[test]
fn server_requests_reach_the_client_and_its_answers_reach_the_child() {
    let (_fake, _proxy, url) = start_alice();
    // server-everything asks clients that declare roots for them (roots/list
    // on the GET stream); the answer is a POST that must reach the child,
    // which then logs "Roots updated" to the client.
    let v = python_client_with(&url, "127.0.0.2", "full", &["--roots", "--linger", "1.5"]);
    assert_eq!(v["ok"], true, "{v:#}");
    assert!(
        v["server_requests"]["roots/list"].as_u64().unwrap_or(0) >= 1,
        "roots/list reached the client: {v:#}"
    );
    assert_eq!(v["get_stream_opened"], true, "{v:#}");
}

/// A worker's children get a pipe each for stdin and stdout on io_uring and
/// one socket for both on epoll (`pool::stdio`), and the SDK's session works
/// over either.
#[test]
fn children_get_pipes_on_io_uring_and_a_socket_on_epoll() {
    for (driver, kind) in [("io_uring", "pipe:"), ("epoll", "socket:")] {
        let (_fake, p, url) = start_alice_with(1, &["--io-driver", driver]);
        let deadline = Instant::now() + WAIT;
        // Children that run node: one forked a moment ago may not have its
        // stdio in place yet.
        let is_node = |pid: u32| {
            std::fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.trim() == "node")
        };
        let children = loop {
            let c = children_of(p.pid());
            if !c.is_empty() && c.iter().all(|(pid, _)| is_node(*pid)) {
                break c;
            }
            assert!(
                Instant::now() < deadline,
                "{driver}: no warm child running node"
            );
            std::thread::sleep(Duration::from_millis(20));
        };
        for (pid, _) in children {
            let link = |fd: u32| {
                std::fs::read_link(format!("/proc/{pid}/fd/{fd}"))
                    .map(|l| l.display().to_string())
                    .unwrap_or_default()
            };
            let (stdin, stdout) = (link(0), link(1));
            assert!(stdin.starts_with(kind), "{driver}: child stdin {stdin}");
            assert!(stdout.starts_with(kind), "{driver}: child stdout {stdout}");
            assert_eq!(
                stdin == stdout,
                kind == "socket:",
                "{driver}: {stdin} {stdout}"
            );
        }
        let v = python_client(&url, "127.0.0.2", "full");
        support::mcp::assert_full_scenario(&v);
    }
}
