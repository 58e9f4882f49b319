//! Per-tool authorization from tailnet grants, end to end: the fake
//! tailscaled answers a different `CapMap` for each caller, ringgate runs
//! `config/mcp-grants.yaml` (the worked example), the official Python SDK
//! calls from each caller's loopback address, and the real server-everything
//! runs behind `tests/peers/stdio_tap.py`, which records every line it is sent.

mod support;

use std::collections::BTreeSet;
use std::path::Path;

use serde_json::Value;
use support::fake_tailscaled::{FakeTailscaled, Node};
use support::mcp::server_js;
use support::*;

const PEERS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/peers");
const TRY: &str = "echo,get-sum,get-env";

/// `config/mcp-grants.yaml` on loopback, against the fake daemon, with every
/// child wrapped in the stdio tap (its log: `<tap_dir>/child.in`).
fn grants_config(fake: &FakeTailscaled, tap_dir: &Path) -> String {
    let example = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/config/mcp-grants.yaml"
    ))
    .unwrap();
    let args = format!(
        "[\"{PEERS}/stdio_tap.py\", \"{}\", \"node\", \"{}\"]",
        tap_dir.join("child").display(),
        server_js()
    );
    let out = example
        .replace("- port: 3000", "- port: 0\n  address: 127.0.0.1")
        .replace("unix:/run/tailscale/tailscaled.sock", &fake.target())
        .replace("cmd: npx", "cmd: python3")
        .replace("[\"@modelcontextprotocol/server-everything\"]", &args);
    assert!(
        out.contains("- port: 0") && out.contains("stdio_tap.py"),
        "the example changed shape"
    );
    format!("config:\n  workerThreads: 2\n  mcp: {{stopGrace: 500ms}}\n{out}")
}

/// The SDK from `src`; `message` and `a` mark its echo and get-sum calls.
fn python_client(url: &str, src: &str, message: &str, a: u32) -> Value {
    let a = a.to_string();
    support::mcp::peer_client(
        "mcp_client.py",
        &[
            "--url",
            url,
            "--source-ip",
            src,
            "--scenario",
            "authz",
            "--try-tools",
            TRY,
            "--message",
            message,
            "--timeout",
            "60",
            "--a",
            &a,
        ],
    )
}

/// Alice, on 127.0.0.2, granted `echo` and `get-sum`.
fn alice() -> Node {
    Node::user(
        "127.0.0.2",
        "alice-laptop.tail1234.ts.net.",
        "alice@example.com",
    )
    .with_cap_map(r#"{"example.com/cap/mcp": [{"tools": ["echo", "get-sum"]}]}"#)
}

fn names(v: &Value) -> BTreeSet<String> {
    v.as_array()
        .unwrap_or_else(|| panic!("a list: {v}"))
        .iter()
        .map(|s| s.as_str().unwrap().to_string())
        .collect()
}

/// Every line the children were sent (all sessions share the tap's log).
fn children_received(tap_dir: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(tap_dir.join("child.in")).unwrap_or_default();
    text.lines()
        .map(|l| serde_json::from_str(l).expect("one JSON message per line"))
        .collect()
}

/// The `tools/call`s among `lines`: the tool, and what marks its caller
/// (echo's message, get-sum's `a`).
fn tool_calls(lines: &[Value]) -> BTreeSet<String> {
    lines
        .iter()
        .filter(|v| v["method"] == "tools/call")
        .map(|v| {
            let args = &v["params"]["arguments"];
            let mark = match (&args["message"], &args["a"]) {
                (Value::String(m), _) => m.clone(),
                (_, Value::Number(a)) => a.to_string(),
                _ => String::new(),
            };
            format!("{} {mark}", v["params"]["name"].as_str().unwrap_or("?"))
                .trim_end()
                .to_string()
        })
        .collect()
}

fn count(lines: &[Value], method: &str) -> usize {
    lines.iter().filter(|v| v["method"] == method).count()
}

fn set(items: &[&str]) -> BTreeSet<String> {
    items.iter().map(|s| s.to_string()).collect()
}

#[test]
fn each_caller_sees_and_calls_exactly_its_grant() {
    let fake = FakeTailscaled::builder()
        .node(alice())
        .node(
            Node::tagged("127.0.0.3", "ci-runner.tail1234.ts.net.", &["tag:ci"])
                .with_cap_map(r#"{"example.com/cap/mcp": [{"tools": ["*"]}]}"#),
        )
        // No grant at all: CapMap is null.
        .user(
            "127.0.0.4",
            "bob-laptop.tail1234.ts.net.",
            "bob@example.com",
        )
        .start();
    let tap = tempfile::tempdir().unwrap();
    let p = Proxy::start(&grants_config(&fake, tap.path()), &[]);
    let url = format!("http://{}/mcp", p.addr());

    let alice = python_client(&url, "127.0.0.2", "from alice", 2);
    let ci = python_client(&url, "127.0.0.3", "from ci", 20);
    let bob = python_client(&url, "127.0.0.4", "from bob", 200);
    for v in [&alice, &ci, &bob] {
        assert_eq!(v["ok"], true, "{v:#}");
        // The example's rule names only tools.
        assert_eq!(v["prompts"], Value::Array(vec![]), "{v:#}");
        assert_eq!(v["resources"], Value::Array(vec![]), "{v:#}");
    }

    // Each sees exactly its tools.
    assert_eq!(
        names(&alice["tools"]),
        set(&["echo", "get-sum"]),
        "{alice:#}"
    );
    assert_eq!(names(&bob["tools"]), BTreeSet::new(), "{bob:#}");
    let all = names(&ci["tools"]);
    for t in [
        "echo",
        "get-sum",
        "get-env",
        "trigger-long-running-operation",
    ] {
        assert!(all.contains(t), "{t} in the tagged node's {all:?}");
    }
    assert!(all.len() > 10, "\"*\" lists every tool: {all:?}");

    // Calls inside a grant work; the others are refused with -32602.
    let refused = |v: &Value, tool: &str| {
        let c = &v["calls"][tool];
        assert_eq!(c["ok"], false, "{tool}: {v:#}");
        assert_eq!(c["code"], -32602, "{tool}: {v:#}");
    };
    assert!(
        alice["calls"]["echo"]["text"]
            .as_str()
            .unwrap()
            .contains("from alice"),
        "{alice:#}"
    );
    assert!(
        alice["calls"]["get-sum"]["text"]
            .as_str()
            .unwrap()
            .contains('5'),
        "{alice:#}"
    );
    refused(&alice, "get-env");
    for tool in ["echo", "get-sum", "get-env"] {
        assert_eq!(ci["calls"][tool]["ok"], true, "{tool}: {ci:#}");
        refused(&bob, tool);
    }

    // The children saw every allowed call and none of the refused ones; list
    // requests reached them (their answers were filtered on the way back).
    let lines = children_received(tap.path());
    assert_eq!(
        tool_calls(&lines),
        set(&[
            "echo from alice",
            "get-sum 2",
            "echo from ci",
            "get-sum 20",
            "get-env"
        ]),
        "{lines:#?}"
    );
    for list in ["tools/list", "prompts/list", "resources/list"] {
        assert!(count(&lines, list) >= 3, "{list}: {lines:#?}");
    }

    // The audit: the decision with the caller, the method and the tool.
    let denied = p
        .wait_log(|l| l.contains("mcp.authz=deny") && l.contains("bob@example.com"))
        .expect("access line of a refused call");
    assert!(denied.contains("mcp.method.name=tools/call"), "{denied}");
    assert!(denied.contains("gen_ai.tool.name="), "{denied}");
    let allowed = p
        .wait_log(|l| {
            l.contains("mcp.authz=allow")
                && l.contains("gen_ai.tool.name=get-env")
                && l.contains("tailscale.node=ci-runner.tail1234.ts.net.")
        })
        .expect("access line of an allowed call");
    assert!(allowed.contains("http.status=200"), "{allowed}");
    assert!(p
        .wait_log(|l| l.contains("mcp.authz=filter") && l.contains("mcp.method.name=tools/list"))
        .is_some());

    // Metrics count decisions by route and result: 5 calls allowed
    // (alice 2, ci 3), 4 refused (alice 1, bob 3), 9 list requests.
    let stats = p.stats.expect("metrics listener");
    let text = request_from(
        "127.0.0.1",
        stats,
        "GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .text();
    for line in [
        "ringgate_mcp_authz_decisions_total{route=\"application\",result=\"allow\"} 5",
        "ringgate_mcp_authz_decisions_total{route=\"application\",result=\"deny\"} 4",
        "ringgate_mcp_authz_decisions_total{route=\"application\",result=\"filter\"} 9",
    ] {
        assert!(
            text.lines().any(|l| l == line),
            "missing {line:?} in\n{text}"
        );
    }
}

/// In a batch, refused requests are answered by ringgate and the rest go to
/// the child; a list answer in the same batch is filtered.
#[test]
fn a_batch_holds_back_only_what_is_refused() {
    use serde_json::json;
    use support::mcp::{init_body, post};

    let fake = FakeTailscaled::builder().node(alice()).start();
    let tap = tempfile::tempdir().unwrap();
    let p = Proxy::start(&grants_config(&fake, tap.path()), &[]);
    // 2025-03-26 is the last revision with batches.
    let r = post(&p, "127.0.0.2", "/mcp", None, &init_body("2025-03-26"));
    assert_eq!(r.status, 200, "{}", r.text());
    let sid = r.header("mcp-session-id").expect("session id").to_string();
    let n = json!({"jsonrpc":"2.0","method":"notifications/initialized"});
    assert_eq!(post(&p, "127.0.0.2", "/mcp", Some(&sid), &n).status, 202);

    let batch = json!([
        {"jsonrpc":"2.0","id":2,"method":"tools/call","params":{"name":"echo","arguments":{"message":"batched"}}},
        {"jsonrpc":"2.0","id":3,"method":"tools/call","params":{"name":"get-env","arguments":{}}},
        {"jsonrpc":"2.0","id":4,"method":"tools/list"},
        {"jsonrpc":"2.0","id":5,"method":"resources/read","params":{"uri":"demo://resource/static/document/architecture.md"}},
    ]);
    let r = post(&p, "127.0.0.2", "/mcp", Some(&sid), &batch);
    assert_eq!(r.status, 200, "{}", r.text());
    let events = r.events();
    let answer = |id: u64| {
        events
            .iter()
            .find(|e| e["id"] == id)
            .unwrap_or_else(|| panic!("no answer {id} in {events:#?}"))
    };
    assert!(
        answer(2)["result"]["content"][0]["text"]
            .as_str()
            .unwrap()
            .contains("batched"),
        "{events:#?}"
    );
    assert_eq!(answer(3)["error"]["code"], -32602, "{events:#?}");
    assert_eq!(answer(3)["error"]["message"], "Unknown tool: get-env");
    assert_eq!(answer(5)["error"]["code"], -32602, "{events:#?}");
    let listed: BTreeSet<String> = answer(4)["result"]["tools"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(listed, set(&["echo", "get-sum"]));

    let lines = children_received(tap.path());
    assert_eq!(tool_calls(&lines), set(&["echo batched"]), "{lines:#?}");
    assert_eq!(count(&lines, "tools/list"), 1, "{lines:#?}");
    assert_eq!(count(&lines, "resources/read"), 0, "{lines:#?}");
}

/// A 2026-07-28 request (no session) from `src`, as raw HTTP; the answer's
/// JSON-RPC message, from an SSE stream or a JSON body.
fn modern_request(
    p: &Proxy,
    src: &str,
    id: u64,
    method: &str,
    name: Option<&str>,
    params: &str,
) -> Value {
    let meta = r#""_meta":{"io.modelcontextprotocol/protocolVersion":"2026-07-28","io.modelcontextprotocol/clientCapabilities":{}}"#;
    let params = if params.is_empty() {
        format!("{{{meta}}}")
    } else {
        format!("{{{params},{meta}}}")
    };
    let body = format!(r#"{{"jsonrpc":"2.0","id":{id},"method":"{method}","params":{params}}}"#);
    let mut head = format!(
        "POST /mcp HTTP/1.1\r\nHost: gw\r\nAccept: application/json, text/event-stream\r\n\
         Content-Type: application/json\r\nMCP-Protocol-Version: 2026-07-28\r\nMcp-Method: {method}\r\n\
         Connection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    if let Some(n) = name {
        head.push_str(&format!("Mcp-Name: {n}\r\n"));
    }
    let r = request_from(src, p.addr(), &format!("{head}\r\n{body}"));
    assert_eq!(r.status, 200, "{method}: {}", r.text());
    if r.header("content-type") == Some("text/event-stream") {
        r.events()
            .into_iter()
            .find(|e| e["id"] == id)
            .unwrap_or_else(|| panic!("no answer to {id}: {}", r.text()))
    } else {
        serde_json::from_slice(&r.body).expect("a JSON-RPC answer")
    }
}

#[test]
fn modern_requests_are_authorized_like_session_ones() {
    let fake = FakeTailscaled::builder()
        .node(alice())
        .user(
            "127.0.0.4",
            "bob-laptop.tail1234.ts.net.",
            "bob@example.com",
        )
        .start();
    let tap = tempfile::tempdir().unwrap();
    let p = Proxy::start(&grants_config(&fake, tap.path()), &[]);

    let list = modern_request(&p, "127.0.0.2", 1, "tools/list", None, "");
    let listed: BTreeSet<String> = list["result"]["tools"]
        .as_array()
        .unwrap_or_else(|| panic!("{list:#}"))
        .iter()
        .map(|t| t["name"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(listed, set(&["echo", "get-sum"]), "{list:#}");
    let bob_list = modern_request(&p, "127.0.0.4", 2, "tools/list", None, "");
    assert_eq!(
        bob_list["result"]["tools"],
        Value::Array(vec![]),
        "{bob_list:#}"
    );

    let echo = r#""name":"echo","arguments":{"message":"modern alice"}"#;
    let ok = modern_request(&p, "127.0.0.2", 3, "tools/call", Some("echo"), echo);
    assert!(
        ok["result"]["content"][0]["text"]
            .as_str()
            .unwrap()
            .contains("modern alice"),
        "{ok:#}"
    );
    let env = r#""name":"get-env","arguments":{}"#;
    let no = modern_request(&p, "127.0.0.2", 4, "tools/call", Some("get-env"), env);
    assert_eq!(no["id"], 4, "{no:#}");
    assert_eq!(no["error"]["code"], -32602, "{no:#}");
    let bob_echo = r#""name":"echo","arguments":{"message":"modern bob"}"#;
    let no = modern_request(&p, "127.0.0.4", 5, "tools/call", Some("echo"), bob_echo);
    assert_eq!(no["error"]["code"], -32602, "{no:#}");

    // No refused call reached a child.
    let lines = children_received(tap.path());
    assert_eq!(
        tool_calls(&lines),
        set(&["echo modern alice"]),
        "{lines:#?}"
    );
}
