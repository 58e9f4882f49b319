//! MCP 2026-07-28 requests served by a stdio child built on the official
//! Python SDK 2.x (tests/peers/py_server.py). ringgate initializes its
//! shared children with `initialize`, so the child serves the handshake era
//! and refuses requests carrying the 2026-07-28 `_meta` envelope: ringgate
//! takes the envelope members out, splicing bytes, and forwards every other
//! byte of the client's line (checked behind tests/peers/stdio_tap.py).

mod modern_common;
mod support;

use std::path::{Path, PathBuf};
use std::process::Command;

use modern_common::*;
use serde_json::Value;
use support::fake_tailscaled::FakeTailscaled;
use support::mcp::server_js;
use support::*;

fn python() -> String {
    format!("{PEERS}/.venv/bin/python")
}

/// The seed config (one worker) whose target runs py_server.py behind the
/// tap, which logs to `<dir>/tap.in` and `<dir>/tap.out`.
fn start_py(dir: &Path) -> (FakeTailscaled, Proxy, String, PathBuf) {
    let prefix = dir.join("tap");
    let args = [
        format!("{PEERS}/stdio_tap.py"),
        prefix.to_str().unwrap().to_string(),
        python(),
        format!("{PEERS}/py_server.py"),
    ];
    let (fake, p, url) = start_with(|fake| {
        let seed = seed_config(fake, 1, "");
        let from = format!("cmd: node\n              args: [\"{}\"]", server_js());
        assert!(seed.contains(&from), "seed changed shape");
        seed.replace(
            &from,
            &format!("cmd: {}\n              args: {args:?}", python()),
        )
    });
    (fake, p, url, prefix)
}

/// The lines the child read (through the tap).
fn child_read(prefix: &Path) -> Vec<String> {
    let bytes = std::fs::read(prefix.with_extension("in")).unwrap_or_default();
    String::from_utf8(bytes)
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect()
}

#[test]
fn python_sdk_client_lists_and_calls_through_a_python_sdk_child() {
    let dir = tempfile::tempdir().unwrap();
    let (_fake, p, url, prefix) = start_py(dir.path());
    let out = Command::new(python())
        .arg(format!("{PEERS}/py_server.py"))
        .args(["client", "--url", &url, "--source-ip", ALICE])
        .output()
        .expect("run the Python MCP client (tests/peers/setup.sh installs it)");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let v: Value = serde_json::from_str(stdout.trim()).unwrap_or_else(|e| {
        panic!(
            "client printed no JSON ({e}): {stdout}\nstderr: {}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    assert_eq!(v["ok"], true, "{v:#}");
    assert_eq!(v["protocol_version"], V, "{v:#}");
    assert_eq!(v["tools"], serde_json::json!(["echo"]), "{v:#}");
    assert_eq!(v["echo"]["text"], "Echo: h\u{e9}llo child", "{v:#}");
    assert_eq!(v["echo"]["is_error"], false, "{v:#}");
    // The child was initialized by ringgate (handshake era) and read the
    // client's requests without the envelope.
    let lines = child_read(&prefix);
    assert!(lines[0].contains("\"initialize\""), "{lines:#?}");
    let calls: Vec<&String> = lines.iter().filter(|l| l.contains("\"tools/")).collect();
    assert!(calls.len() >= 2, "{lines:#?}");
    for l in calls {
        assert!(!l.contains("io.modelcontextprotocol/"), "{l}");
    }
    stop_proxy_with_taps(p);
}

#[test]
fn the_child_reads_the_clients_line_less_the_envelope() {
    let dir = tempfile::tempdir().unwrap();
    let (_fake, p, _url, prefix) = start_py(dir.path());
    let body = |id: &str, token: &str, envelope: bool| {
        let env = if envelope {
            format!(
                r#""io.modelcontextprotocol/protocolVersion":"{V}", "io.modelcontextprotocol/clientCapabilities":{{"x\u00e9":{{}}}},"#
            )
        } else {
            String::new()
        };
        let info = if envelope {
            r#","io.modelcontextprotocol/clientInfo":{"name":"c\"1","version":"1"}"#
        } else {
            ""
        };
        format!(
            r#"{{"jsonrpc":"2.0","method":"tools/call","id":{id},"params":{{"_meta":{{{env}"progressToken":{token}, "user/k\u00e9y" : [1.10,-0]{info}}},"name":"echo","arguments":{{"message":"tap \u00e9 check"}}}}}}"#
        )
    };
    let sent = body(r#""c-1""#, "\"t\\u0031\"", true);
    let mut r = raw_post(&p, &hdrs("tools/call", Some("echo")), &sent);
    let (status, _) = head(&mut r);
    assert_eq!(status, 200);
    let answer = std::iter::from_fn(|| next_event(&mut r))
        .find(|e| e.get("id").is_some())
        .expect("the call's answer");
    assert_eq!(answer["id"], "c-1", "{answer}");
    assert_eq!(
        answer["result"]["content"][0]["text"], "Echo: tap \u{e9} check",
        "{answer}"
    );
    let lines = child_read(&prefix);
    let read = lines
        .iter()
        .find(|l| l.contains("tap \\u00e9 check"))
        .unwrap_or_else(|| panic!("the child never read the call: {lines:#?}"));
    let id = serde_json::from_str::<Value>(read).unwrap()["id"].clone();
    let n = id.as_u64().expect("a ringgate id");
    assert_eq!(
        read,
        &body(&n.to_string(), &format!("\"rg{n}\""), false),
        "only the id, the progress token and the envelope change"
    );
    stop_proxy_with_taps(p);
}
