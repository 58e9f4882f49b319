//! MCP over raw HTTP for the hostile-input tests: requests to any route path,
//! the real server-everything peer and the fault server script.

use std::io::Write;
use std::net::TcpStream;

use serde_json::{json, Value};

use super::{connect_from, request_from, Proxy, Resp};

/// What `mcp_client.py --scenario full` reports for server-everything:
/// it ran, its echo and get-sum calls answered, and its session ended with
/// a DELETE.
pub fn assert_full_scenario(v: &Value) {
    assert_eq!(v["ok"], true, "{v:#}");
    assert!(
        v["echo"]["text"]
            .as_str()
            .unwrap()
            .contains("hello from ringgate e2e"),
        "{v:#}"
    );
    assert!(
        v["get_sum"]["text"].as_str().unwrap().contains('5'),
        "{v:#}"
    );
    assert_eq!(v["delete_sent"], true, "{v:#}");
}

/// Runs one of the Python MCP clients in tests/peers (with the venv that
/// tests/peers/setup.sh installs) and reads the one JSON object it prints.
pub fn peer_client(script: &str, args: &[&str]) -> Value {
    let peers = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/peers");
    let out = std::process::Command::new(format!("{peers}/.venv/bin/python"))
        .arg(format!("{peers}/{script}"))
        .args(args)
        .output()
        .expect("run the Python MCP client (tests/peers/setup.sh installs it)");
    let stdout = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str(stdout.trim()).unwrap_or_else(|e| {
        panic!(
            "client printed no JSON ({e}): {stdout}\nstderr: {}",
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

/// The strings of a JSON array (a client's list of tool names...).
pub fn strings(v: &Value) -> Vec<&str> {
    let items = v.as_array().unwrap_or_else(|| panic!("not an array: {v}"));
    items.iter().map(|t| t.as_str().unwrap()).collect()
}

pub const ACCEPT: &str = "application/json, text/event-stream";

/// server-everything's entry point (installed by tests/peers/setup.sh).
pub fn server_js() -> String {
    let p = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/peers/node_modules/@modelcontextprotocol/server-everything/dist/index.js"
    );
    assert!(
        std::path::Path::new(p).exists(),
        "run tests/peers/setup.sh first (scripts/test does)"
    );
    p.to_string()
}

/// The deliberately broken MCP server (see its doc string for the modes).
pub fn fault_script() -> String {
    concat!(env!("CARGO_MANIFEST_DIR"), "/tests/peers/fault_server.py").to_string()
}

/// A YAML route (in flow style, for a `routes:` list at 4 spaces) serving
/// `path` exactly with a stdio MCP target.
pub fn mcp_route(name: &str, path: &str, cmd: &str, args: &[&str]) -> String {
    let args: Vec<String> = args.iter().map(|a| format!("{a:?}")).collect();
    format!(
        "    - name: {name}\n      matches: [{{path: {{exact: {path}}}}}]\n      backends: [{{mcp: {{targets: [{{name: {name}, stdio: {{cmd: {cmd}, args: [{}]}}}}]}}}}]\n",
        args.join(", ")
    )
}

/// The raw bytes of a POST of `body` to `path`.
pub fn post_bytes(path: &str, session: Option<&str>, body: &Value) -> String {
    let body = body.to_string();
    let sid = session.map_or(String::new(), |s| format!("Mcp-Session-Id: {s}\r\n"));
    format!(
        "POST {path} HTTP/1.1\r\nHost: gw\r\nAccept: {ACCEPT}\r\nContent-Type: application/json\r\n{sid}Content-Length: {}\r\n\r\n{body}",
        body.len()
    )
}

/// A POST of `body` from `src` to `path`, on its own connection.
pub fn post(p: &Proxy, src: &str, path: &str, session: Option<&str>, body: &Value) -> Resp {
    request_from(src, p.addr(), &post_bytes(path, session, body))
}

pub fn init_body(version: &str) -> Value {
    json!({"jsonrpc":"2.0","id":1,"method":"initialize","params":{
        "protocolVersion":version,"capabilities":{},
        "clientInfo":{"name":"hostile-test","version":"1"}}})
}

/// initialize + notifications/initialized; the session id.
pub fn initialize(p: &Proxy, src: &str, path: &str) -> String {
    let r = post(p, src, path, None, &init_body("2025-06-18"));
    assert_eq!(r.status, 200, "initialize on {path}: {}", r.text());
    let events = r.events();
    assert_eq!(events.len(), 1, "{events:?}");
    assert!(
        events[0]["result"]["serverInfo"]["name"].is_string(),
        "{events:?}"
    );
    let sid = r.header("mcp-session-id").expect("session id").to_string();
    let n = post(
        p,
        src,
        path,
        Some(&sid),
        &json!({"jsonrpc":"2.0","method":"notifications/initialized"}),
    );
    assert_eq!(n.status, 202, "{}", n.text());
    sid
}

pub fn call_body(id: u64, tool: &str, args: Value) -> Value {
    json!({"jsonrpc":"2.0","id":id,"method":"tools/call","params":{"name":tool,"arguments":args}})
}

pub fn call(p: &Proxy, src: &str, path: &str, sid: &str, id: u64, tool: &str, args: Value) -> Resp {
    post(p, src, path, Some(sid), &call_body(id, tool, args))
}

/// The text of the first content item of the answer with `id` in an SSE body.
pub fn answer_text(r: &Resp, id: u64) -> Option<String> {
    r.events()
        .iter()
        .find(|e| e["id"] == id)
        .and_then(|e| e["result"]["content"][0]["text"].as_str())
        .map(str::to_string)
}

/// An echo through server-everything that must succeed: the health check of
/// "other sessions keep being served".
pub fn assert_echo(p: &Proxy, src: &str, path: &str, sid: &str, id: u64, what: &str) {
    let msg = format!("still served {id}");
    let r = call(p, src, path, sid, id, "echo", json!({ "message": msg }));
    assert_eq!(r.status, 200, "{what}: {}", r.text());
    let text = answer_text(&r, id).unwrap_or_else(|| panic!("{what}: {:?}", r.events()));
    assert!(text.contains(&msg), "{what}: {text}");
}

pub fn delete(p: &Proxy, src: &str, path: &str, sid: &str) -> Resp {
    request_from(
        src,
        p.addr(),
        &format!("DELETE {path} HTTP/1.1\r\nHost: gw\r\nMcp-Session-Id: {sid}\r\n\r\n"),
    )
}

/// Opens a connection from `src` and writes `bytes` on it, without reading.
pub fn send_from(src: &str, p: &Proxy, bytes: &[u8]) -> TcpStream {
    let mut s = connect_from(src, p.addr());
    s.write_all(bytes).unwrap();
    s
}

/// The pid of a session's child, from the "session started" log line.
pub fn session_pid(p: &Proxy, sid: &str) -> u32 {
    let line = p
        .wait_log(|l| l.contains("session started") && l.contains(sid))
        .expect("session start logged");
    super::field(&line, "pid").unwrap().parse().unwrap()
}

/// The seed config (`config/tailscale.yaml`) with test-sized settings: node
/// directly (not npx), the fake tailscaled at `whois` (its target), an
/// ephemeral loopback port, `threads` workers, and `mcp` settings added to
/// a 500 ms `stopGrace`.
pub fn seed_config(whois: &str, threads: usize, mcp: &str) -> String {
    let seed = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/config/tailscale.yaml"
    ))
    .unwrap();
    let out = seed
        .replace("- port: 3000", "- port: 0\n  address: 127.0.0.1")
        .replace("unix:/run/tailscale/tailscaled.sock", whois)
        .replace("cmd: npx", "cmd: node")
        .replace(
            "[\"@modelcontextprotocol/server-everything\"]",
            &format!("[\"{}\"]", server_js()),
        )
        .replace(
            "allowOrigins: [\"*\"]",
            "allowOrigins: [\"https://app.example.com\"]",
        );
    assert!(
        out.contains("- port: 0") && out.contains("cmd: node"),
        "seed changed shape"
    );
    let mcp = if mcp.is_empty() {
        String::new()
    } else {
        format!(", {mcp}")
    };
    format!("config:\n  workerThreads: {threads}\n  mcp: {{stopGrace: 500ms{mcp}}}\n{out}")
}
