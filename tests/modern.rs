//! MCP 2026-07-28 through ringgate with real peers: the official Python SDK
//! 2.x (`tests/peers/modern_client.py`) in `mode="2026-07-28"` and `auto`,
//! the seed config with the fake tailscaled, server-everything as the
//! shared children; and the transport's header and version rules over raw
//! HTTP, each with the spec's status and JSON-RPC code.

#[path = "modern_common/mod.rs"]
mod common;
mod support;

use common::*;
use serde_json::{json, Value};
use support::mcp::ACCEPT;
use support::*;

fn assert_full_run(v: &Value) {
    assert_eq!(v["ok"], true, "{v:#}");
    assert_eq!(v["protocol_version"], V, "{v:#}");
    let tools: Vec<&str> = support::mcp::strings(&v["tools"]);
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
