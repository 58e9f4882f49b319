//! The command line: validation, driver choice, workers, start-up errors.

mod support;

use std::collections::HashSet;
use std::io::Write;
use std::process::Command;

use support::*;

fn ringgate(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_ringgate"))
        .args(args)
        .output()
        .expect("run ringgate")
}

fn write_config(dir: &tempfile::TempDir, yaml: &str) -> String {
    let path = dir.path().join("c.yaml");
    std::fs::File::create(&path)
        .unwrap()
        .write_all(yaml.as_bytes())
        .unwrap();
    path.to_str().unwrap().to_string()
}

const HELLO: &str = r#"
binds:
- port: 0
  address: 127.0.0.1
  listeners:
  - routes:
    - policies: {directResponse: {body: hi}}
"#;

#[test]
fn validate_only_accepts_the_seed_and_demo_configs() {
    for file in [
        "config/tailscale.yaml",
        "config/demo.yaml",
        "config/mcp-grants.yaml",
    ] {
        let out = ringgate(&["--validate-only", "-f", file]);
        assert!(
            out.status.success(),
            "{file}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(String::from_utf8_lossy(&out.stdout).contains("configuration is valid"));
    }
}

#[test]
fn validate_only_names_an_unknown_policy() {
    let dir = tempfile::tempdir().unwrap();
    let seed = std::fs::read_to_string("config/tailscale.yaml").unwrap();
    let bad = seed.replace(
        "        cors:",
        "        jwtAuth:\n          issuer: x\n        cors:",
    );
    let path = write_config(&dir, &bad);
    let out = ringgate(&["--validate-only", "-f", &path]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("binds[0].listeners[0].routes[0].policies.jwtAuth: unknown key"),
        "{err}"
    );
}

#[test]
fn a_bad_config_binds_nothing_and_lists_every_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_config(
        &dir,
        "binds:\n- port: 99999\n  listeners: [{name: a, protocol: TCP}]\n- port: x\n  listeners: []\n",
    );
    let out = ringgate(&["-f", &path]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    for want in [
        "binds[0].port: 99999 is out of range",
        "binds[0].listeners[0].protocol",
        "binds[1].port: expected a non-negative integer",
    ] {
        assert!(err.contains(want), "missing {want:?} in {err}");
    }
}

/// Runs ringgate and waits (bounded) for it to exit: one that starts
/// serving instead of failing is killed and reported.
fn ringgate_must_fail(args: &[&str]) -> (std::process::ExitStatus, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_ringgate"))
        .args(args)
        .args(["--stats-addr", "off", "--readiness-addr", "off"])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run ringgate");
    let exited = wait_until(WAIT, || child.try_wait().unwrap().is_some());
    if !exited {
        let _ = child.kill();
    }
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(exited, "ringgate started instead of failing: {err}");
    (out.status, err)
}

/// A port another program listens on: the error names the bind's YAML
/// path, and the default `[::]` bind does not mistake it for a host
/// without IPv6.
#[test]
fn a_port_in_use_is_a_clear_start_up_error() {
    let taken = std::net::TcpListener::bind("0.0.0.0:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let dir = tempfile::tempdir().unwrap();
    for (yaml, shown) in [
        (HELLO.to_string(), format!("127.0.0.1:{port}")),
        (
            HELLO.replace("  address: 127.0.0.1\n", ""),
            format!("[::]:{port}"),
        ),
    ] {
        let path = write_config(&dir, &yaml.replace("port: 0", &format!("port: {port}")));
        let (status, err) = ringgate_must_fail(&["-f", &path]);
        assert!(!status.success());
        assert!(
            err.contains(&format!(
                "binds[0].port: {shown} is already in use by another process"
            )),
            "{err}"
        );
        assert!(!err.contains("IPv6 unavailable"), "{err}");
    }
}

/// Two ringgates never share a port (SO_REUSEPORT would let the kernel
/// split connections between them): the second one fails to start.
#[test]
fn a_second_ringgate_on_the_same_port_fails_to_start() {
    let first = Proxy::start(HELLO, &["--threads", "2"]);
    let port = first.addr().port();
    let dir = tempfile::tempdir().unwrap();
    let path = write_config(&dir, &HELLO.replace("port: 0", &format!("port: {port}")));
    let (status, err) = ringgate_must_fail(&["-f", &path, "--threads", "2"]);
    assert!(!status.success());
    assert!(
        err.contains(&format!(
            "binds[0].port: 127.0.0.1:{port} is already in use by another process"
        )),
        "{err}"
    );
    // The first one still serves every connection.
    let seen = workers_seen(&first, 8);
    assert!(!seen.is_empty());
}

#[test]
fn help_and_version() {
    let out = ringgate(&["--help"]);
    let text = String::from_utf8_lossy(&out.stdout);
    for flag in ["--file", "--validate-only", "--threads", "--io-driver"] {
        assert!(text.contains(flag), "{flag} in {text}");
    }
    let out = ringgate(&["--version"]);
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("ringgate "));
}

/// Serves `n` requests on separate connections; returns the workers that
/// logged them.
fn workers_seen(p: &Proxy, n: usize) -> HashSet<String> {
    for _ in 0..n {
        let resps = exchange(p.addr(), b"GET / HTTP/1.1\r\nHost: t\r\n\r\n");
        assert_eq!(resps[0].status, 200);
    }
    p.wait_log_nth(n - 1, |l| {
        l.contains(" request ") && l.contains("http.status=200")
    })
    .expect("access log lines");
    p.logs()
        .iter()
        .filter(|l| l.contains(" request "))
        .filter_map(|l| field(l, "worker"))
        .collect()
}

#[test]
fn connections_spread_over_two_workers() {
    let p = Proxy::start(HELLO, &["--threads", "2"]);
    // The kernel hashes each connection's 4-tuple over the two listeners;
    // 64 connections all landing on one is a 2^-63 event.
    let seen = workers_seen(&p, 64);
    assert_eq!(seen, HashSet::from(["0".to_string(), "1".to_string()]));
}

#[test]
fn forced_epoll_driver_serves_requests() {
    let p = Proxy::start(HELLO, &["--threads", "2", "--io-driver", "epoll"]);
    let started: Vec<String> = p
        .logs()
        .into_iter()
        .filter(|l| l.contains("worker started"))
        .collect();
    assert_eq!(started.len(), 2);
    assert!(
        started.iter().all(|l| l.contains("driver=\"epoll\"")),
        "{started:?}"
    );
    let seen = workers_seen(&p, 32);
    assert!(!seen.is_empty());
}

#[test]
fn auto_driver_says_which_it_chose() {
    let p = Proxy::start(HELLO, &["--threads", "1"]);
    let line = p.wait_log(|l| l.contains("worker started")).unwrap();
    let driver = field(&line, "driver").unwrap();
    assert!(driver == "io_uring" || driver == "epoll", "{line}");
}

/// A worker that panics ends the process at once (exit 70) with the panic in
/// the log, instead of leaving it serving with one worker fewer. The panic
/// is triggered by a test-only variable that debug builds alone read.
#[test]
fn a_panicking_worker_ends_the_process() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_config(&dir, HELLO);
    let mut child = Command::new(env!("CARGO_BIN_EXE_ringgate"))
        .args(["-f", &path, "--threads", "2"])
        .args(["--stats-addr", "off", "--readiness-addr", "off"])
        .env("RUST_LOG", "info")
        .env("RINGGATE_TEST_PANIC_WORKER", "1")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run ringgate");
    let exited = wait_until(WAIT, || child.try_wait().unwrap().is_some());
    if !exited {
        let _ = child.kill();
    }
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(exited, "ringgate served on after a worker panicked: {err}");
    assert_eq!(out.status.code(), Some(70), "{err}");
    let line = err
        .lines()
        .find(|l| l.contains("thread panicked; exiting"))
        .unwrap_or_else(|| panic!("panic not logged: {err}"));
    assert_eq!(
        field(line, "thread").as_deref(),
        Some("ringgate-w1"),
        "{line}"
    );
    assert!(line.contains("worker 1 panics on purpose"), "{line}");
}
