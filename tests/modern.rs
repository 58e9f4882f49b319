//! MCP 2026-07-28 through ringgate with real peers: the official Python SDK
//! 2.x (`tests/peers/modern_client.py`) in `mode="2026-07-28"` and `auto`,
//! the seed config with the fake tailscaled, server-everything as the
//! shared children; and the transport's header and version rules over raw
//! HTTP, each with the spec's status and JSON-RPC code.

mod support;

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::process::Command;

use serde_json::{json, Value};
use support::fake_tailscaled::FakeTailscaled;
use support::mcp::{server_js, ACCEPT};
use support::*;

const PEERS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/peers");
const ALICE: &str = "127.0.0.2";
const BOB: &str = "127.0.0.3";
const V: &str = "2026-07-28";

/// The seed config (config/tailscale.yaml) with test-sized settings, as
/// `e2e_mcp.rs` makes it, plus `mcp` settings.
fn seed_config(fake: &FakeTailscaled, threads: usize, mcp: &str) -> String {
    let seed = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/config/tailscale.yaml"
    ))
    .unwrap();
    let out = seed
        .replace("- port: 3000", "- port: 0\n  address: 127.0.0.1")
        .replace("unix:/run/tailscale/tailscaled.sock", &fake.target())
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
    format!("config:\n  workerThreads: {threads}\n  mcp: {{stopGrace: 500ms, {mcp}}}\n{out}")
}

fn start(threads: usize, mcp: &str) -> (FakeTailscaled, Proxy, String) {
    start_with(|fake| seed_config(fake, threads, mcp))
}

fn start_with(config: impl Fn(&FakeTailscaled) -> String) -> (FakeTailscaled, Proxy, String) {
    let fake = FakeTailscaled::builder()
        .user(ALICE, "alice-laptop.tail1234.ts.net.", "alice@example.com")
        .user(BOB, "bob-laptop.tail1234.ts.net.", "bob@example.com")
        .start();
    let p = Proxy::start(&config(&fake), &[]);
    let url = format!("http://{}/mcp", p.addr());
    (fake, p, url)
}

fn modern_client(url: &str, src: &str, args: &[&str]) -> Value {
    let out = Command::new(format!("{PEERS}/.venv/bin/python"))
        .arg(format!("{PEERS}/modern_client.py"))
        .args(["--url", url, "--source-ip", src])
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

fn assert_full_run(v: &Value) {
    assert_eq!(v["ok"], true, "{v:#}");
    assert_eq!(v["protocol_version"], V, "{v:#}");
    let tools: Vec<&str> = v["tools"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_str().unwrap())
        .collect();
    for t in ["echo", "get-sum", "trigger-long-running-operation"] {
        assert!(tools.contains(&t), "{t} in {tools:?}");
    }
    assert_eq!(v["echo"]["text"], "Echo: hello modern", "{v:#}");
    assert!(
        v["get_sum"]["text"].as_str().unwrap().contains('5'),
        "{v:#}"
    );
    assert_eq!(v["long_running"]["is_error"], false, "{v:#}");
    assert!(
        !v["long_running"]["progress"].as_array().unwrap().is_empty(),
        "progress must arrive on the call's stream: {v:#}"
    );
    assert!(
        v["read"]["text"].as_str().unwrap().contains("Architecture"),
        "{v:#}"
    );
    // Stateless: no session id anywhere, and POST only.
    assert_eq!(v["session_ids"], json!([]), "{v:#}");
    for e in v["http"].as_array().unwrap() {
        assert_eq!(e["method"], "POST", "{v:#}");
        assert_eq!(e["headers"]["mcp-protocol-version"], V, "{v:#}");
    }
}

#[test]
fn python_sdk_modern_mode_through_the_seed_config() {
    let (_fake, p, url) = start(2, "");
    let v = modern_client(&url, ALICE, &["--scenario", "full", "--mode", V]);
    assert_full_run(&v);
    // Every request authorized on its own; its access line names the
    // caller, the method, the tool and the target.
    let line = p
        .wait_log(|l| l.contains("gen_ai.tool.name=echo"))
        .expect("access line of the echo call");
    for f in [
        "tailscale.email=alice@example.com",
        "mcp.method.name=tools/call",
        "mcp.target=everything",
        "http.status=200",
    ] {
        assert!(line.contains(f), "{f} in {line}");
    }
    // A stranger is refused by extAuthz before any child is involved.
    let v = modern_client(&url, "127.0.0.9", &["--scenario", "full", "--mode", V]);
    assert_eq!(v["ok"], false, "{v:#}");
}

#[test]
fn python_sdk_auto_mode_settles_on_2026_07_28() {
    let (_fake, _p, url) = start(1, "");
    let v = modern_client(&url, ALICE, &["--scenario", "full", "--mode", "auto"]);
    assert_full_run(&v);
    let first = &v["http"][0];
    assert_eq!(first["headers"]["mcp-method"], "server/discover", "{v:#}");
    assert_eq!(first["status"], 200, "{v:#}");
}

#[test]
fn sixteen_clients_over_two_shared_children_never_cross() {
    let (_fake, p, url) = start(1, "sharedChildren: 2");
    let v = modern_client(
        &url,
        ALICE,
        &["--scenario", "many", "--clients", "16", "--calls", "5"],
    );
    assert_eq!(v["ok"], true, "{v:#}");
    let results = v["results"].as_array().unwrap();
    assert_eq!(results.len(), 16 * 5, "every call accounted for: {v:#}");
    let mut seen = std::collections::HashSet::new();
    for r in results {
        let sent = r["sent"].as_str().unwrap_or_else(|| panic!("{r}"));
        assert_eq!(r["got"], format!("Echo: {sent}"), "{r}");
        assert!(
            seen.insert((r["client"].as_u64(), r["call"].as_u64())),
            "{r}"
        );
    }
    let ready = p
        .logs()
        .iter()
        .filter(|l| l.contains("shared MCP child ready"))
        .count();
    assert_eq!(ready, 2, "two shared children served all of them");
}

/// A raw modern POST over HTTP/1.0 (the stream then ends with the
/// connection, so events can be read line by line).
fn raw_post(p: &Proxy, headers: &[(&str, &str)], body: &str) -> BufReader<TcpStream> {
    raw_post_from(ALICE, p, headers, body)
}

fn raw_post_from(
    src: &str,
    p: &Proxy,
    headers: &[(&str, &str)],
    body: &str,
) -> BufReader<TcpStream> {
    let mut s = connect_from(src, p.addr());
    let mut req = format!(
        "POST /mcp HTTP/1.0\r\nHost: gw\r\nAccept: {ACCEPT}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (n, v) in headers {
        req.push_str(&format!("{n}: {v}\r\n"));
    }
    req.push_str("\r\n");
    req.push_str(body);
    s.write_all(req.as_bytes()).unwrap();
    BufReader::new(s)
}

/// Reads the status line and headers.
fn head(r: &mut BufReader<TcpStream>) -> (u16, Vec<String>) {
    let mut line = String::new();
    r.read_line(&mut line).unwrap();
    let status = line.split(' ').nth(1).unwrap().parse().unwrap();
    let mut headers = Vec::new();
    loop {
        line.clear();
        r.read_line(&mut line).unwrap();
        if line.trim().is_empty() {
            return (status, headers);
        }
        headers.push(line.trim().to_ascii_lowercase());
    }
}

/// The next SSE event's data, `None` at the end of the stream.
fn next_event(r: &mut BufReader<TcpStream>) -> Option<Value> {
    let mut data = String::new();
    let mut line = String::new();
    loop {
        line.clear();
        if r.read_line(&mut line).ok()? == 0 {
            return None;
        }
        let l = line.trim_end_matches(['\r', '\n']);
        if let Some(d) = l.strip_prefix("data: ") {
            data.push_str(d);
        } else if l.is_empty() && !data.is_empty() {
            return Some(serde_json::from_str(&data).unwrap());
        }
    }
}

fn call_body(id: &str, tool: &str, args: &str, token: Option<&str>) -> String {
    let token = token.map_or(String::new(), |t| format!(r#""progressToken":{t},"#));
    format!(
        r#"{{"jsonrpc":"2.0","id":{id},"method":"tools/call","params":{{"name":"{tool}","arguments":{args},"_meta":{{{token}"io.modelcontextprotocol/protocolVersion":"{V}","io.modelcontextprotocol/clientCapabilities":{{}}}}}}}}"#
    )
}

fn hdrs<'a>(method: &'a str, name: Option<&'a str>) -> Vec<(&'a str, &'a str)> {
    let mut h = vec![("MCP-Protocol-Version", V), ("Mcp-Method", method)];
    if let Some(n) = name {
        h.push(("Mcp-Name", n));
    }
    h
}

#[test]
fn transport_rules_with_the_spec_statuses_and_codes() {
    let (_fake, p, _url) = start(1, "");
    let a = p.addr();
    let meta = format!(r#""_meta":{{"io.modelcontextprotocol/protocolVersion":"{V}"}}"#);
    let list = format!(r#"{{"jsonrpc":"2.0","id":1,"method":"tools/list","params":{{{meta}}}}}"#);
    let req = |method: &str, extra: &str, body: &str| {
        let mut h = format!("MCP-Protocol-Version: {V}\r\n{extra}");
        if !body.is_empty() {
            h.push_str(&format!(
                "Content-Type: application/json\r\nContent-Length: {}\r\n",
                body.len()
            ));
        }
        request_from(
            ALICE,
            a,
            &format!("{method} /mcp HTTP/1.1\r\nHost: gw\r\nAccept: {ACCEPT}\r\n{h}\r\n{body}"),
        )
    };
    let code = |r: &Resp| {
        serde_json::from_slice::<Value>(&r.body)
            .ok()
            .map(|v| v["error"]["code"].clone())
    };

    // GET and DELETE of a modern client: 405, POST allowed.
    for m in ["GET", "DELETE"] {
        let r = req(m, "", "");
        assert_eq!(r.status, 405, "{m}");
        assert_eq!(r.header("allow"), Some("POST"), "{m}");
    }
    // Table: (what, extra headers, body, status, JSON-RPC code).
    let bad_version = list.replace(V, "2027-01-01");
    let mismatched = list.replace(V, "2025-11-25");
    let batch = format!("[{list},{list}]");
    let note =
        format!(r#"{{"jsonrpc":"2.0","method":"notifications/whatever","params":{{{meta}}}}}"#);
    let ping = format!(r#"{{"jsonrpc":"2.0","id":2,"method":"ping","params":{{{meta}}}}}"#);
    let echo = call_body("3", "echo", r#"{"message":"x"}"#, None);
    let cases: Vec<(&str, String, &str, u16, Option<i64>)> = vec![
        ("no Mcp-Method", String::new(), &list, 400, Some(-32020)),
        (
            "Mcp-Method differs",
            "Mcp-Method: tools/call\r\n".into(),
            &list,
            400,
            Some(-32020),
        ),
        (
            "header and body versions differ",
            "Mcp-Method: tools/list\r\n".into(),
            &mismatched,
            400,
            Some(-32020),
        ),
        (
            "batch",
            "Mcp-Method: tools/list\r\n".into(),
            &batch,
            400,
            Some(-32600),
        ),
        ("notification", String::new(), &note, 202, None),
        (
            "removed method",
            "Mcp-Method: ping\r\n".into(),
            &ping,
            404,
            Some(-32601),
        ),
        (
            "tools/call without Mcp-Name",
            "Mcp-Method: tools/call\r\n".into(),
            &echo,
            400,
            Some(-32020),
        ),
        (
            "tools/call with another Mcp-Name",
            "Mcp-Method: tools/call\r\nMcp-Name: get-sum\r\n".into(),
            &echo,
            400,
            Some(-32020),
        ),
        (
            "tools/call with base64 Mcp-Name",
            "Mcp-Method: tools/call\r\nMcp-Name: =?base64?ZWNobw==?=\r\n".into(),
            &echo,
            200,
            None,
        ),
        (
            "bad Origin",
            "Mcp-Method: tools/list\r\nOrigin: https://evil.example\r\n".into(),
            &list,
            403,
            None,
        ),
    ];
    for (what, extra, body, status, want) in cases {
        let r = req("POST", &extra, body);
        assert_eq!(r.status, status, "{what}: {}", r.text());
        if let Some(c) = want {
            assert_eq!(code(&r), Some(json!(c)), "{what}: {}", r.text());
        }
        assert_eq!(r.header("mcp-session-id"), None, "{what}");
    }
    // An unsupported version: 400 / -32022, naming supported and requested.
    let r = request_from(ALICE, a, &format!(
        "POST /mcp HTTP/1.1\r\nHost: gw\r\nAccept: {ACCEPT}\r\nMCP-Protocol-Version: 2027-01-01\r\nMcp-Method: tools/list\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{bad_version}",
        bad_version.len()
    ));
    assert_eq!(r.status, 400, "{}", r.text());
    let v: Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(v["error"]["code"], -32022);
    assert_eq!(v["error"]["data"]["requested"], "2027-01-01");
    let sup = v["error"]["data"]["supported"].as_array().unwrap();
    assert!(
        sup.contains(&json!(V)) && sup.contains(&json!("2025-11-25")),
        "{v}"
    );

    // server/discover: ringgate's answer, with the child's capabilities.
    let disc =
        format!(r#"{{"jsonrpc":"2.0","id":"d1","method":"server/discover","params":{{{meta}}}}}"#);
    let r = req("POST", "Mcp-Method: server/discover\r\n", &disc);
    assert_eq!(r.status, 200, "{}", r.text());
    let v: Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(v["id"], "d1");
    let res = &v["result"];
    assert_eq!(res["supportedVersions"][0], V, "{v}");
    assert!(res["capabilities"]["tools"].is_object(), "{v}");
    assert_eq!(res["resultType"], "complete", "{v}");
    assert!(
        res["ttlMs"].is_u64() && res["cacheScope"].is_string(),
        "{v}"
    );

    // A list result: the client's id byte for byte, resultType and cache fields.
    let odd_id = r#""\u0069d-1""#;
    let body = list.replace("\"id\":1", &format!("\"id\":{odd_id}"));
    let r = req("POST", "Mcp-Method: tools/list\r\n", &body);
    assert_eq!(r.status, 200);
    assert_eq!(r.header("x-accel-buffering"), Some("no"));
    let data = String::from_utf8(ringgate::mcp::sse::decode(&r.body).pop().unwrap()).unwrap();
    assert!(data.contains(&format!("\"id\":{odd_id}")), "{data}");
    assert!(
        data.contains(r#""result":{"resultType":"complete","ttlMs":0,"cacheScope":"private","#),
        "{data}"
    );
}

#[test]
fn a_killed_child_fails_only_its_calls_and_is_replaced() {
    let (_fake, mut p, _url) = start(1, "sharedChildren: 2");
    let disc = format!(
        r#"{{"jsonrpc":"2.0","id":0,"method":"server/discover","params":{{"_meta":{{"io.modelcontextprotocol/protocolVersion":"{V}"}}}}}}"#
    );
    let mut r = raw_post(&p, &hdrs("server/discover", None), &disc);
    assert_eq!(head(&mut r).0, 200);
    assert!(
        p.wait_log_nth(1, |l| l.contains("shared MCP child ready"))
            .is_some(),
        "{:#?}",
        p.logs()
            .iter()
            .filter(|l| l.contains("shared"))
            .collect::<Vec<_>>()
    );
    let slot0: u32 = p
        .logs()
        .iter()
        .find(|l| l.contains("shared MCP child ready") && l.contains("slot=0"))
        .and_then(|l| field(l, "pid"))
        .unwrap()
        .parse()
        .unwrap();

    // Four long calls; the least loaded child takes each, so slot 0 gets
    // the 1st and 3rd. Each has shown progress before the kill.
    let mut streams = Vec::new();
    for i in 1..=4 {
        let body = call_body(
            &format!("\"c{i}\""),
            "trigger-long-running-operation",
            r#"{"duration":60,"steps":60}"#,
            Some("1"),
        );
        let mut s = raw_post(
            &p,
            &hdrs("tools/call", Some("trigger-long-running-operation")),
            &body,
        );
        assert_eq!(head(&mut s).0, 200);
        let ev = next_event(&mut s).expect("progress");
        assert_eq!(ev["method"], "notifications/progress", "{ev}");
        assert_eq!(
            ev["params"]["progressToken"], 1,
            "the client's own token: {ev}"
        );
        streams.push(s);
    }
    unsafe { libc::kill(slot0 as i32, libc::SIGKILL) };
    for (i, s) in streams.iter_mut().enumerate() {
        let id = format!("c{}", i + 1);
        if i % 2 == 0 {
            // Progress sent before the kill may still be on the way.
            let ev = std::iter::from_fn(|| next_event(s))
                .find(|e| e["method"] != "notifications/progress")
                .expect("an answer after the kill");
            assert_eq!(ev["id"], id, "{ev}");
            assert_eq!(
                ev["error"]["code"], -32603,
                "the killed child's call fails: {ev}"
            );
            assert!(next_event(s).is_none(), "its stream ends");
        } else {
            let ev = next_event(s).expect("an event after the kill");
            assert_eq!(
                ev["method"], "notifications/progress",
                "the other child's call goes on: {ev}"
            );
        }
    }
    // Closing a stream cancels its call.
    drop(streams);
    assert!(p
        .wait_log(|l| l.contains("cancelled: its client closed the stream"))
        .is_some());
    // The slot is refilled, and calls succeed.
    assert!(p
        .wait_log_nth(2, |l| l.contains("shared MCP child ready"))
        .is_some());
    let mut s = raw_post(
        &p,
        &hdrs("tools/call", Some("echo")),
        &call_body("9", "echo", r#"{"message":"after"}"#, None),
    );
    assert_eq!(head(&mut s).0, 200);
    let ev = next_event(&mut s).unwrap();
    assert_eq!(ev["id"], 9);
    assert_eq!(ev["result"]["content"][0]["text"], "Echo: after");

    // A clean shutdown stops the shared children too.
    let pids: Vec<u32> = children_of(p.pid()).into_iter().map(|(c, _)| c).collect();
    p.signal(libc::SIGTERM);
    assert!(p.wait_exit(std::time::Duration::from_secs(20)).is_some());
    for pid in pids {
        assert!(
            wait_until(std::time::Duration::from_secs(5), || pid_gone(pid)),
            "child {pid} outlived ringgate"
        );
    }
}

#[test]
fn python_sdk_elicitation_round_trip_through_input_required() {
    let (_fake, _p, url) = start(1, "");
    let v = modern_client(&url, ALICE, &["--scenario", "elicit", "--mode", V]);
    assert_eq!(v["ok"], true, "{v:#}");
    assert_eq!(v["protocol_version"], V, "{v:#}");
    assert!(v.get("call_error").is_none(), "{v:#}");
    // The SDK's callback was asked the child's own question...
    assert_eq!(v["asked"].as_array().unwrap().len(), 1, "{v:#}");
    assert!(
        v["asked"][0]["message"]
            .as_str()
            .unwrap()
            .contains("Please provide inputs"),
        "{v:#}"
    );
    // ...and its answer reached the child's waiting call.
    let text = v["result"]["text"].as_str().unwrap();
    assert!(text.contains("Ada Lovelace"), "{v:#}");
    assert_eq!(v["result"]["is_error"], false, "{v:#}");
    // Two POSTs of tools/call: the first answered input_required, the
    // retry with the final result; no session anywhere.
    let calls = v["http"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["headers"]["mcp-method"] == "tools/call")
        .count();
    assert_eq!(calls, 2, "{v:#}");

    // A client that does not declare elicitation gets a JSON-RPC error
    // naming the capability, not a hang.
    let v = modern_client(
        &url,
        ALICE,
        &["--scenario", "elicit", "--mode", V, "--no-elicitation"],
    );
    let e = v["call_error"].as_str().expect("an error");
    assert!(e.contains("does not declare elicitation"), "{v:#}");
}

/// A raw tools/call of trigger-elicitation-request declaring elicitation.
fn elicit_body(id: &str, retry: Option<(&str, &str)>) -> String {
    let extra = retry.map_or(String::new(), |(state, responses)| {
        format!(r#""requestState":"{state}","inputResponses":{responses},"#)
    });
    format!(
        r#"{{"jsonrpc":"2.0","id":{id},"method":"tools/call","params":{{"name":"trigger-elicitation-request","arguments":{{}},{extra}"_meta":{{"io.modelcontextprotocol/protocolVersion":"{V}","io.modelcontextprotocol/clientCapabilities":{{"elicitation":{{}}}}}}}}}}"#
    )
}

#[test]
fn request_state_is_refused_when_tampered_or_presented_by_another_caller() {
    let (_fake, p, _url) = start(2, "");
    let h = hdrs("tools/call", Some("trigger-elicitation-request"));
    let mut r = raw_post(&p, &h, &elicit_body("1", None));
    assert_eq!(head(&mut r).0, 200);
    let ev = next_event(&mut r).expect("an answer");
    assert_eq!(ev["id"], 1, "{ev}");
    assert_eq!(ev["result"]["resultType"], "input_required", "{ev}");
    let req = &ev["result"]["inputRequests"]["input"];
    assert_eq!(req["method"], "elicitation/create", "{ev}");
    assert!(req["params"]["requestedSchema"].is_object(), "{ev}");
    let state = ev["result"]["requestState"].as_str().unwrap().to_string();
    assert!(next_event(&mut r).is_none(), "the first stream ends there");

    let answer = r#"{"input":{"action":"accept","content":{"name":"Grace Hopper"}}}"#;
    let refused = |src: &str, st: &str, why: &str| {
        let mut r = raw_post_from(src, &p, &h, &elicit_body("2", Some((st, answer))));
        let (status, _) = head(&mut r);
        let mut body = String::new();
        std::io::Read::read_to_string(&mut r, &mut body).unwrap();
        assert_eq!(status, 400, "{body}");
        let v: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["error"]["code"], -32602, "{v}");
        assert!(v["error"]["message"].as_str().unwrap().contains(why), "{v}");
    };
    // One character of the payload changed.
    let mut parts: Vec<String> = state.split('.').map(str::to_string).collect();
    let c = if parts[2].starts_with('A') { "B" } else { "A" };
    parts[2].replace_range(0..1, c);
    refused(ALICE, &parts.join("."), "integrity");
    refused(BOB, &state, "another caller");
    // Neither consumed it: the rightful retry completes the call, on a
    // connection that may land on the other worker.
    let mut r = raw_post(&p, &h, &elicit_body("3", Some((&state, answer))));
    assert_eq!(head(&mut r).0, 200);
    let ev = next_event(&mut r).expect("the final answer");
    assert_eq!(ev["id"], 3, "{ev}");
    assert_eq!(ev["result"]["resultType"], "complete", "{ev}");
    assert!(ev.to_string().contains("Grace Hopper"), "{ev}");
    // Good once.
    refused(ALICE, &state, "already used");
}

#[test]
fn listen_acknowledges_then_delivers_list_changed() {
    let (_fake, p, _url) = start(1, "sharedChildren: 1");
    // The target's first modern request: the listen stream exists before
    // its child starts, and the child says list_changed once initialized.
    let body = format!(
        r#"{{"jsonrpc":"2.0","id":"L1","method":"subscriptions/listen","params":{{"notifications":{{"toolsListChanged":true,"promptsListChanged":true}},"_meta":{{"io.modelcontextprotocol/protocolVersion":"{V}","io.modelcontextprotocol/clientCapabilities":{{}}}}}}}}"#
    );
    let mut r = raw_post(&p, &hdrs("subscriptions/listen", None), &body);
    assert_eq!(head(&mut r).0, 200);
    let ack = next_event(&mut r).expect("the acknowledgement");
    assert_eq!(
        ack["method"], "notifications/subscriptions/acknowledged",
        "{ack}"
    );
    assert_eq!(
        ack["params"]["notifications"],
        json!({"toolsListChanged": true, "promptsListChanged": true}),
        "{ack}"
    );
    assert_eq!(
        ack["params"]["_meta"]["io.modelcontextprotocol/subscriptionId"],
        "L1"
    );
    let ev = next_event(&mut r).expect("a list_changed");
    assert_eq!(ev["method"], "notifications/tools/list_changed", "{ev}");
    assert_eq!(
        ev["params"]["_meta"]["io.modelcontextprotocol/subscriptionId"], "L1",
        "{ev}"
    );

    // The Python SDK's listen() gets its acknowledgement too.
    let url = format!("http://{}/mcp", p.addr());
    let v = modern_client(
        &url,
        ALICE,
        &["--scenario", "listen", "--mode", V, "--timeout", "5"],
    );
    assert_eq!(v["ok"], true, "{v:#}");
    assert!(
        v["honored"]
            .as_str()
            .unwrap()
            .contains("tools_list_changed=True"),
        "{v:#}"
    );
}

#[test]
fn an_unanswered_input_request_expires_and_its_state_is_refused() {
    let (_fake, p, _url) = start(1, "inputRequiredTimeout: 1s");
    let h = hdrs("tools/call", Some("trigger-elicitation-request"));
    let mut r = raw_post(&p, &h, &elicit_body("1", None));
    assert_eq!(head(&mut r).0, 200);
    let ev = next_event(&mut r).expect("an answer");
    assert_eq!(ev["result"]["resultType"], "input_required", "{ev}");
    let state = ev["result"]["requestState"].as_str().unwrap().to_string();
    p.wait_log(|l| l.contains("waiting for input expired"))
        .expect("the waiting call expires");
    let answer = r#"{"input":{"action":"decline"}}"#;
    let mut r = raw_post(&p, &h, &elicit_body("2", Some((&state, answer))));
    let (status, _) = head(&mut r);
    let mut body = String::new();
    std::io::Read::read_to_string(&mut r, &mut body).unwrap();
    assert_eq!(status, 400, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["error"]["code"], -32602, "{v}");
    assert!(
        v["error"]["message"].as_str().unwrap().contains("expired"),
        "{v}"
    );
}

fn listen_body(id: &str, uris: &[&str]) -> String {
    let uris = serde_json::to_string(uris).unwrap();
    format!(
        r#"{{"jsonrpc":"2.0","id":"{id}","method":"subscriptions/listen","params":{{"notifications":{{"resourceSubscriptions":{uris}}},"_meta":{{"io.modelcontextprotocol/protocolVersion":"{V}","io.modelcontextprotocol/clientCapabilities":{{}}}}}}}}"#
    )
}

/// The lines the tapped child was sent with `method` for `uri`.
fn child_got(tap: &std::path::Path, method: &str, uri: &str) -> usize {
    let text = std::fs::read_to_string(tap.join("child.in")).unwrap_or_default();
    text.lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .filter(|v| v["method"] == method && v["params"]["uri"] == uri)
        .count()
}

#[test]
fn listen_delivers_updates_of_its_resources_and_unsubscribes_when_closed() {
    // One tapped child: what it is sent is in <tap>/child.in.
    let tap = tempfile::tempdir().unwrap();
    let (_fake, p, _url) = start_with(|fake| {
        let js = server_js();
        let tapped = format!(
            "[\"{PEERS}/stdio_tap.py\", \"{}\", \"node\", \"{js}\"]",
            tap.path().join("child").display()
        );
        seed_config(fake, 1, "sharedChildren: 1")
            .replace("cmd: node", "cmd: python3")
            .replace(&format!("[\"{js}\"]"), &tapped)
    });
    let (a, b) = (
        "demo://resource/dynamic/text/1",
        "demo://resource/dynamic/text/2",
    );
    let h = hdrs("subscriptions/listen", None);
    // Subscribed in this order, server-everything sends b's update before
    // a's in each round: an update of b leaked to a's streams would come
    // before the a they wait for.
    let listen = |id: &str, uri: &str| {
        let mut r = raw_post(&p, &h, &listen_body(id, &[uri]));
        assert_eq!(head(&mut r).0, 200);
        let ack = next_event(&mut r).expect("the acknowledgement");
        assert_eq!(
            ack["params"]["notifications"],
            json!({ "resourceSubscriptions": [uri] }),
            "{ack}"
        );
        r
    };
    let mut lb = listen("Lb", b);
    let mut la1 = listen("La1", a);
    let mut la2 = listen("La2", a);
    // Two streams of `a`: the child was asked once.
    assert_eq!(child_got(tap.path(), "resources/subscribe", a), 1);
    assert_eq!(child_got(tap.path(), "resources/subscribe", b), 1);

    // Starts the child's updates of what it is subscribed to (every 5 s).
    let th = hdrs("tools/call", Some("toggle-subscriber-updates"));
    let mut r = raw_post(
        &p,
        &th,
        &call_body("1", "toggle-subscriber-updates", "{}", None),
    );
    assert_eq!(head(&mut r).0, 200);
    let done = next_event(&mut r).expect("the toggle's answer");
    assert!(
        done["result"]["content"][0]["text"]
            .as_str()
            .unwrap()
            .contains("Started"),
        "{done}"
    );
    for (r, id, uri) in [
        (&mut lb, "Lb", b),
        (&mut la1, "La1", a),
        (&mut la2, "La2", a),
    ] {
        let ev = next_event(r).expect("an update");
        assert_eq!(ev["method"], "notifications/resources/updated", "{ev}");
        assert_eq!(ev["params"]["uri"], uri, "{id}: {ev}");
        assert_eq!(
            ev["params"]["_meta"]["io.modelcontextprotocol/subscriptionId"], id,
            "{ev}"
        );
    }

    // The last stream of `a` gone, the child is unsubscribed from `a` only.
    drop((la1, la2));
    p.wait_log(|l| l.contains("unsubscribed from a resource") && l.contains(a))
        .expect("the child is unsubscribed once no stream wants a");
    assert_eq!(child_got(tap.path(), "resources/unsubscribe", a), 1);
    assert_eq!(child_got(tap.path(), "resources/unsubscribe", b), 0);
    // b's stream still gets b's updates, and never a's.
    let ev = next_event(&mut lb).expect("the next update of b");
    assert_eq!(ev["params"]["uri"], b, "{ev}");
    drop(lb);
    p.wait_log(|l| l.contains("unsubscribed from a resource") && l.contains(b))
        .expect("the child is unsubscribed from b in turn");
}
