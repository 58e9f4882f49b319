//! Large requests and answers through the real server-everything: an
//! over-limit upload is told 413 in a form the official SDKs surface (not a
//! broken pipe), memory goes back near idle after a 9 MiB echo, and a slow
//! but steady reader of a large answer is served to the end.

mod support;

use std::io::{BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use support::mcp::*;
use support::*;

const ALICE: &str = "127.0.0.2";
const PEERS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/peers");

/// One MCP route to server-everything, with `config` lines under `config:`.
fn config(config: &str) -> String {
    format!(
        "config:\n{config}\n  mcp: {{minIdle: 1, stopGrace: 300ms}}\nbinds:\n- port: 0\n  address: 127.0.0.1\n  listeners:\n  - routes:\n{}",
        mcp_route("everything", "/mcp", "node", &[&server_js()])
    )
}

/// Runs a peer script that prints one JSON object; that object.
fn run_peer(mut cmd: Command, what: &str) -> Value {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("run the {what} (tests/peers/setup.sh installs it): {e}"));
    let stdout = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str(stdout.trim()).unwrap_or_else(|e| {
        panic!(
            "the {what} printed no JSON ({e}): {stdout}\nstderr: {}",
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

/// Twice the default `maxBodyBytes` (4 MiB).
const OVER_LIMIT: usize = 8 << 20;

#[test]
fn official_sdks_see_413_for_an_oversized_call_and_keep_their_session() {
    let p = Proxy::start(&config("  http: {}"), &["--threads", "1"]);
    let url = format!("http://{}/mcp", p.addr());
    let size = OVER_LIMIT.to_string();

    // The TypeScript SDK (the copy server-everything itself depends on).
    let mut node = Command::new("node");
    node.arg(format!("{PEERS}/big_echo.mjs"))
        .args(["--url", &url, "--size", &size]);
    let ts = run_peer(node, "TypeScript SDK client");
    eprintln!("TypeScript SDK: {ts}");
    assert_eq!(ts["initialized"], true, "{ts}");
    let big = &ts["big"];
    assert_eq!(big["ok"], false, "{ts}");
    assert_eq!(
        big["code"], 413,
        "a StreamableHTTPError with the status: {ts}"
    );
    let msg = big["message"].as_str().unwrap_or_default();
    assert!(
        msg.contains("Error POSTing to endpoint")
            && msg.contains(r#""error":{"code":-32600,"message":"request body too large"}"#),
        "the SDK's HTTP error, with our JSON-RPC body: {ts}"
    );
    assert_eq!(ts["small"]["ok"], true, "{ts}");
    assert_eq!(ts["small"]["text"], "Echo: small after big", "{ts}");
    assert_eq!(ts["sessionAfter"], ts["sessionBefore"], "same session");
    assert_eq!(ts["errors"], json!([]), "{ts}");

    // The Python SDK: a JSON-RPC error body at an HTTP error status is
    // surfaced as that error (MCPError), so the caller reads our reason.
    let mut py = Command::new(format!("{PEERS}/.venv/bin/python"));
    py.arg(format!("{PEERS}/big_echo.py"))
        .args(["--url", &url, "--size", &size]);
    let pyo = run_peer(py, "Python SDK client");
    eprintln!("Python SDK: {pyo}");
    assert_eq!(pyo["initialized"], true, "{pyo}");
    let big = &pyo["big"];
    assert_eq!(big["ok"], false, "{pyo}");
    assert_eq!(big["type"], "MCPError", "{pyo}");
    assert_eq!(big["code"], -32600, "{pyo}");
    assert!(
        big["message"]
            .as_str()
            .unwrap_or_default()
            .contains("request body too large"),
        "{pyo}"
    );
    assert_eq!(pyo["small"]["ok"], true, "{pyo}");
    assert_eq!(pyo["small"]["text"], "Echo: small after big", "{pyo}");
    assert_eq!(pyo["errors"], json!([]), "{pyo}");

    // Both were HTTP 413 answers, logged as such.
    p.wait_log_nth(1, |l| {
        l.contains(" request ") && l.contains("http.status=413")
    })
    .expect("two 413 answers logged");
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

/// One request and its answer on a kept-alive connection.
fn exchange_on(s: &mut TcpStream, r: &mut BufReader<TcpStream>, bytes: &[u8]) -> Resp {
    s.write_all(bytes).unwrap();
    let resp = read_response(r).expect("an answer");
    assert_ne!(
        resp.header("connection"),
        Some("close"),
        "the connection stays open"
    );
    resp
}

/// As large as server-everything takes: its stdio transport (TS SDK) drops
/// a line over 10 MiB and exits.
const LARGE: usize = 9 << 20;
/// How far above idle the resident set may stay once a large echo is done.
const SLACK_KIB: u64 = 5 * 1024;
/// At least one period of the trim thread (30 s), plus margin.
const RSS_WAIT: Duration = Duration::from_secs(45);

#[test]
fn memory_returns_near_idle_after_a_9_mib_echo_on_a_kept_alive_connection() {
    let p = Proxy::start(
        &config("  http: {maxBodyBytes: 16777216}"),
        &["--threads", "1"],
    );
    let sid = initialize(&p, ALICE, "/mcp");
    // The client keeps its connection open throughout, as an SDK's pool does.
    let mut s = connect_from(ALICE, p.addr());
    let mut r = BufReader::new(s.try_clone().unwrap());
    let warm = exchange_on(
        &mut s,
        &mut r,
        post_bytes(
            "/mcp",
            Some(&sid),
            &call_body(2, "echo", json!({"message": "warm"})),
        )
        .as_bytes(),
    );
    assert_eq!(answer_text(&warm, 2).as_deref(), Some("Echo: warm"));
    let idle = proc_status_kib(p.pid(), "VmRSS").unwrap();

    let message = "L".repeat(LARGE);
    let req = post_bytes(
        "/mcp",
        Some(&sid),
        &call_body(3, "echo", json!({ "message": message })),
    );
    drop(message);
    let big = exchange_on(&mut s, &mut r, req.as_bytes());
    drop(req);
    assert_eq!(big.status, 200);
    let text = answer_text(&big, 3).expect("the echo's answer");
    assert_eq!(text.len(), "Echo: ".len() + LARGE);
    drop((text, big));
    let peak = proc_status_kib(p.pid(), "VmHWM").unwrap();

    let t = Instant::now();
    let mut rss = 0;
    let back = wait_until(RSS_WAIT, || {
        rss = proc_status_kib(p.pid(), "VmRSS").unwrap();
        rss <= idle + SLACK_KIB
    });
    eprintln!(
        "9 MiB echo on a kept-alive connection: ringgate VmRSS idle {:.1} MiB, peak {:.1} MiB, then {:.1} MiB after {:?}",
        mib(idle),
        mib(peak),
        mib(rss),
        t.elapsed()
    );
    assert!(
        back,
        "VmRSS {rss} KiB did not come back within {SLACK_KIB} KiB of idle {idle} KiB"
    );
    // The connection and the session are still good.
    let again = exchange_on(
        &mut s,
        &mut r,
        post_bytes(
            "/mcp",
            Some(&sid),
            &call_body(4, "echo", json!({"message": "after"})),
        )
        .as_bytes(),
    );
    assert_eq!(answer_text(&again, 4).as_deref(), Some("Echo: after"));
    assert_eq!(delete(&p, ALICE, "/mcp", &sid).status, 200);
}

/// A connection whose receive buffer is small, so the proxy's writes can
/// only go as fast as the client reads.
fn connect_small_window(src: &str, addr: SocketAddr) -> TcpStream {
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    sock.set_recv_buffer_size(64 * 1024).unwrap();
    sock.bind(&SocketAddr::new(src.parse().unwrap(), 0).into())
        .unwrap();
    sock.connect_timeout(&addr.into(), WAIT).unwrap();
    let s: TcpStream = sock.into();
    s.set_read_timeout(Some(WAIT)).unwrap();
    s.set_write_timeout(Some(WAIT)).unwrap();
    s
}

/// The kernel takes more of an answer only once a third of its send buffer
/// (autotuned up to `tcp_wmem`, 4 MiB) has drained: at this reader's pace,
/// a step every second or two. The write timeout bounds each step, so it
/// must be above that, and well below the time the whole answer takes.
const WRITE_TIMEOUT: Duration = Duration::from_secs(4);
const READ_PIECE: usize = 64 * 1024;
const READ_EVERY: Duration = Duration::from_millis(50);

/// The most the kernel lets one socket queue for sending (the autotuning
/// ceiling, `tcp_wmem`'s third field).
fn send_buffer_max() -> usize {
    std::fs::read_to_string("/proc/sys/net/ipv4/tcp_wmem")
        .ok()
        .and_then(|s| s.split_whitespace().nth(2)?.parse().ok())
        .unwrap_or(4 << 20)
}

#[test]
fn a_slow_but_steady_reader_gets_a_large_answer_whole() {
    // Much larger than what the kernel can queue, so that most of the
    // answer is written only as fast as the client reads it: several times
    // the write timeout.
    let answer = LARGE;
    if send_buffer_max() + (4 << 20) > answer {
        eprintln!(
            "SKIPPED: tcp_wmem lets {} bytes be queued, too close to what server-everything echoes",
            send_buffer_max()
        );
        return;
    }
    let p = Proxy::start(
        &config("  http: {writeTimeout: 4s, maxBodyBytes: 16777216}"),
        &["--threads", "1"],
    );
    let sid = initialize(&p, ALICE, "/mcp");
    let message = "s".repeat(answer);
    let mut s = connect_small_window(ALICE, p.addr());
    let req = post_bytes(
        "/mcp",
        Some(&sid),
        &call_body(9, "echo", json!({ "message": message })),
    );
    s.write_all(req.as_bytes()).unwrap();

    // Read at most 64 KiB every 50 ms (about 1 MiB/s) until the chunked
    // answer's last chunk, or until the proxy cuts the connection.
    let t = Instant::now();
    let mut got = Vec::new();
    let mut piece = vec![0u8; READ_PIECE];
    let ended = loop {
        match s.read(&mut piece) {
            Ok(0) => break "closed by the proxy".to_string(),
            Ok(n) => got.extend_from_slice(&piece[..n]),
            Err(e) => break format!("{e}"),
        }
        if got.ends_with(b"\r\n0\r\n\r\n") {
            break "complete".to_string();
        }
        std::thread::sleep(READ_EVERY);
    };
    let took = t.elapsed();
    eprintln!(
        "slow reader: {} bytes in {took:?} ({:.1}x the write timeout), {ended}",
        got.len(),
        took.as_secs_f64() / WRITE_TIMEOUT.as_secs_f64()
    );
    assert_eq!(ended, "complete", "after {} bytes", got.len());
    let resp = read_response(&mut std::io::Cursor::new(got)).expect("a whole response");
    assert_eq!(resp.status, 200);
    assert_eq!(
        answer_text(&resp, 9),
        Some(format!("Echo: {message}")),
        "the whole SSE answer, parsed"
    );
    // The connection is still usable afterwards.
    let mut r = BufReader::new(s.try_clone().unwrap());
    let small = exchange_on(
        &mut s,
        &mut r,
        post_bytes(
            "/mcp",
            Some(&sid),
            &call_body(10, "echo", json!({"message": "next"})),
        )
        .as_bytes(),
    );
    assert_eq!(answer_text(&small, 10).as_deref(), Some("Echo: next"));
}
