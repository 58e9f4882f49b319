//! MCP 2026-07-28 requests to a route with several targets (issue #14),
//! and the pagination of merged lists (sessions and modern requests), with
//! real peers: server-everything and server-memory as stdio children,
//! tests/peers/paging_server.py (a stdlib server whose lists come in
//! pages) where pages are needed, the official Python SDK
//! (tests/peers/multi_client.py) and raw HTTP as clients.

mod modern_common;
mod support;

use std::collections::BTreeSet;
use std::io::{Read, Write};

use modern_common::{hdrs, head, next_event, raw_post, V};
use serde_json::{json, Value};
use support::mcp::*;
use support::*;

const PEERS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/peers");
const SRC: &str = "127.0.0.2";

fn memory_js() -> String {
    let p = format!("{PEERS}/node_modules/@modelcontextprotocol/server-memory/dist/index.js");
    assert!(
        std::path::Path::new(&p).exists(),
        "run tests/peers/setup.sh first"
    );
    p
}

/// A YAML target (flow style) running `cmd` with `args`.
fn target(name: &str, cmd: &str, args: &[&str], env: &str) -> String {
    let args: Vec<String> = args.iter().map(|a| format!("{a:?}")).collect();
    format!(
        "{{name: {name}, stdio: {{cmd: {cmd:?}, args: [{}]{env}}}}}",
        args.join(", ")
    )
}

fn everything() -> String {
    target("everything", "node", &[&server_js()], "")
}

/// server-memory, its store in `dir`.
fn memory(dir: &std::path::Path) -> String {
    let store = dir.join("memory.jsonl").display().to_string();
    let env = format!(", env: {{MEMORY_FILE_PATH: {store:?}}}");
    target("memory", "node", &[&memory_js()], &env)
}

/// A target whose process exits at once: it never serves.
fn broken() -> String {
    target("broken", "node", &["/nonexistent/ringgate-broken.js"], "")
}

/// 25 resources in pages of 10, 5 tools in pages of 2.
fn paging() -> String {
    let py = format!("{PEERS}/.venv/bin/python");
    let script = format!("{PEERS}/paging_server.py");
    target(
        "paging",
        &py,
        &[&script, "--resources", "25", "--page", "10"],
        "",
    )
}

/// A route on `path` with `targets`, `extra` members in its `mcp:`, and
/// optional `policies` (flow style).
fn route(name: &str, path: &str, extra: &str, targets: &[String], policies: &str) -> String {
    let policies = if policies.is_empty() {
        String::new()
    } else {
        format!("      policies: {policies}\n")
    };
    format!(
        "    - name: {name}\n      matches: [{{path: {{exact: {path}}}}}]\n{policies}      backends: [{{mcp: {{{extra}targets: [{}]}}}}]\n",
        targets.join(", ")
    )
}

/// One worker, so every request meets the same shared children.
/// server-everything and server-memory (its store in `dir`) on /mcp.
fn two_servers(dir: &std::path::Path) -> Proxy {
    let targets = [everything(), memory(dir)];
    Proxy::start(&config(&[route("multi", "/mcp", "", &targets, "")]), &[])
}

fn config(routes: &[String]) -> String {
    format!(
        "config:\n  workerThreads: 1\n  mcp: {{stopGrace: 500ms}}\nbinds:\n- port: 0\n  address: 127.0.0.1\n  listeners:\n  - routes:\n{}",
        routes.concat()
    )
}

fn temp_dir(tag: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!(
        "ringgate-modern-multi-{tag}-{}",
        std::process::id()
    ));
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn sdk(url: &str, scenario: &str, mode: &str) -> Value {
    let args = [
        "--url",
        url,
        "--scenario",
        scenario,
        "--mode",
        mode,
        "--source-ip",
        SRC,
    ];
    support::mcp::peer_client("multi_client.py", &args)
}

/// A modern POST of `method` to `path` (`members`: the params' members
/// besides `_meta`); the status and the JSON answer, or the SSE events.
fn modern(
    p: &Proxy,
    path: &str,
    method: &str,
    members: &str,
    name: Option<&str>,
) -> (u16, Vec<Value>) {
    let sep = if members.is_empty() { "" } else { "," };
    let body = format!(
        r#"{{"jsonrpc":"2.0","id":"m","method":"{method}","params":{{{members}{sep}"_meta":{{"io.modelcontextprotocol/protocolVersion":"{V}","io.modelcontextprotocol/clientCapabilities":{{}}}}}}}}"#
    );
    let mut req = format!(
        "POST {path} HTTP/1.0\r\nHost: gw\r\nAccept: {ACCEPT}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (n, v) in hdrs(method, name) {
        req.push_str(&format!("{n}: {v}\r\n"));
    }
    req.push_str("\r\n");
    req.push_str(&body);
    let mut s = connect_from(SRC, p.addr());
    s.write_all(req.as_bytes()).unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
    let values = if body.trim_start().starts_with('{') {
        vec![serde_json::from_str(body).unwrap()]
    } else {
        body.lines()
            .filter_map(|l| l.strip_prefix("data: "))
            .map(|d| serde_json::from_str(d).unwrap())
            .collect()
    };
    (status, values)
}

/// The final answer of a modern request.
fn answer(p: &Proxy, path: &str, method: &str, members: &str, name: Option<&str>) -> Value {
    let (status, values) = modern(p, path, method, members, name);
    assert_eq!(status, 200, "{method}: {values:?}");
    values
        .into_iter()
        .find(|v| v["id"] == "m")
        .unwrap_or_else(|| panic!("{method}: no answer"))
}

fn names(answer: &Value, key: &str, field: &str) -> Vec<String> {
    answer["result"][key]
        .as_array()
        .unwrap_or_else(|| panic!("{answer}"))
        .iter()
        .map(|t| t[field].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn a_modern_client_sees_both_servers_and_its_calls_reach_the_right_child() {
    let dir = temp_dir("two");
    let p = two_servers(&dir);
    let out = sdk(&format!("http://{}/mcp", p.addr()), "two-servers", V);
    assert_eq!(out["ok"], true, "{out:#}");
    assert_eq!(out["protocol_version"], V, "{out:#}");
    let tools: Vec<&str> = out["tools"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .collect();
    for t in [
        "everything_echo",
        "memory_create_entities",
        "memory_read_graph",
    ] {
        assert!(tools.contains(&t), "{t}: {tools:?}");
    }
    assert!(
        tools
            .iter()
            .all(|t| t.starts_with("everything_") || t.starts_with("memory_")),
        "{tools:?}"
    );
    let resources: Vec<&str> = out["resources"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert!(
        resources.contains(&"memory+memory://knowledge-graph"),
        "{resources:?}"
    );
    assert!(
        resources
            .iter()
            .any(|u| u.starts_with("everything+demo://")),
        "{resources:?}"
    );
    assert!(
        resources
            .iter()
            .all(|u| u.starts_with("everything+") || u.starts_with("memory+")),
        "{resources:?}"
    );
    assert!(
        out["resource_read_uri"]
            .as_str()
            .unwrap()
            .starts_with("everything+"),
        "{out:#}"
    );
    assert_eq!(out["echo"], "Echo: hi everything");
    // The entity went to server-memory (its store) and came back from it.
    assert_eq!(out["created"]["is_error"], false, "{out:#}");
    assert_eq!(out["read_back"]["is_error"], false, "{out:#}");
    assert!(
        out["read_back"]["text"]
            .as_str()
            .unwrap()
            .contains("multiplexes"),
        "{out:#}"
    );
    let store = std::fs::read_to_string(dir.join("memory.jsonl")).unwrap();
    assert!(store.contains("multiplexes"), "{store}");
    // The access log names each call's target.
    for (tool, t) in [
        ("memory_create_entities", "memory"),
        ("everything_echo", "everything"),
    ] {
        let line = p
            .wait_log(|l| l.contains(&format!("gen_ai.tool.name={tool}")))
            .expect("the call is logged");
        assert!(line.contains(&format!("mcp.target={t}")), "{line}");
    }
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn discover_merges_the_targets_and_names_ringgate() {
    let dir = temp_dir("discover");
    let p = two_servers(&dir);
    let d = answer(&p, "/mcp", "server/discover", "", None);
    let r = &d["result"];
    assert!(
        r["supportedVersions"]
            .as_array()
            .unwrap()
            .contains(&json!(V)),
        "{d}"
    );
    for cap in ["tools", "prompts", "resources"] {
        assert!(r["capabilities"][cap].is_object(), "{cap}: {d}");
    }
    // server-everything subscribes to resources; server-memory does not.
    assert_eq!(r["capabilities"]["resources"]["subscribe"], true, "{d}");
    assert!(
        r["instructions"]
            .as_str()
            .unwrap()
            .starts_with("[everything]\n"),
        "{d}"
    );
    assert_eq!(
        r["_meta"]["io.modelcontextprotocol/serverInfo"]["name"], "ringgate",
        "{d}"
    );
    assert_eq!(r["resultType"], "complete");
    assert_eq!(r["cacheScope"], "private");
    assert!(r["ttlMs"].is_u64(), "{d}");
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn unknown_names_targets_and_cursors_get_invalid_params() {
    let dir = temp_dir("unknown");
    let p = two_servers(&dir);
    let cases = [
        (
            "tools/call",
            r#""name":"nosuch_echo","arguments":{}"#,
            Some("nosuch_echo"),
        ),
        (
            "tools/call",
            r#""name":"echo","arguments":{}"#,
            Some("echo"),
        ),
        (
            "prompts/get",
            r#""name":"nosuch_simple-prompt""#,
            Some("nosuch_simple-prompt"),
        ),
        (
            "resources/read",
            r#""uri":"nosuch+demo://x""#,
            Some("nosuch+demo://x"),
        ),
        ("tools/list", r#""cursor":"not-a-ringgate-cursor""#, None),
    ];
    for (method, members, name) in cases {
        let a = answer(&p, "/mcp", method, members, name);
        assert_eq!(a["error"]["code"], -32602, "{method} {members}: {a}");
    }
    // A name the target does not have: its child's own answer.
    let a = answer(
        &p,
        "/mcp",
        "tools/call",
        r#""name":"memory_echo","arguments":{}"#,
        Some("memory_echo"),
    );
    assert!(
        a["error"].is_object() || a["result"]["isError"] == true,
        "{a}"
    );
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn a_target_that_cannot_start_fails_closed_or_is_left_out_when_open() {
    let targets = [everything(), broken()];
    let p = Proxy::start(
        &config(&[
            route("closed", "/closed", "", &targets, ""),
            route("open", "/open", "failureMode: failOpen, ", &targets, ""),
        ]),
        &[],
    );
    // failOpen: the healthy target serves, the broken one is left out.
    let tools = names(
        &answer(&p, "/open", "tools/list", "", None),
        "tools",
        "name",
    );
    assert!(tools.contains(&"everything_echo".to_string()), "{tools:?}");
    assert!(
        tools.iter().all(|t| t.starts_with("everything_")),
        "{tools:?}"
    );
    let echo = answer(
        &p,
        "/open",
        "tools/call",
        r#""name":"everything_echo","arguments":{"message":"open"}"#,
        Some("everything_echo"),
    );
    assert_eq!(echo["result"]["content"][0]["text"], "Echo: open", "{echo}");
    let d = answer(&p, "/open", "server/discover", "", None);
    assert!(
        !d["result"]["instructions"]
            .as_str()
            .unwrap_or("")
            .contains("[broken]"),
        "{d}"
    );
    // A call to the broken target is not served.
    let (status, _) = modern(
        &p,
        "/open",
        "tools/call",
        r#""name":"broken_echo","arguments":{}"#,
        Some("broken_echo"),
    );
    assert_eq!(status, 503);
    // failClosed: the broken target fails every fanned-out request.
    for method in ["tools/list", "server/discover", "resources/list"] {
        let (status, v) = modern(&p, "/closed", method, "", None);
        assert_eq!(status, 503, "{method}: {v:?}");
    }
    // ...while calls routed to the healthy target are served.
    let echo = answer(
        &p,
        "/closed",
        "tools/call",
        r#""name":"everything_echo","arguments":{"message":"closed"}"#,
        Some("everything_echo"),
    );
    assert_eq!(
        echo["result"]["content"][0]["text"], "Echo: closed",
        "{echo}"
    );
}

#[test]
fn authorization_filters_each_targets_items_with_its_target() {
    let dir = temp_dir("authz");
    let rules = r#"{mcpAuthorization: {rules: ['mcp.tool.target == "memory"', 'mcp.tool.target == "everything" && mcp.tool.name == "echo"', {deny: 'mcp.tool.name == "delete_entities"'}]}}"#;
    let p = Proxy::start(
        &config(&[route(
            "multi",
            "/mcp",
            "",
            &[everything(), memory(&dir)],
            rules,
        )]),
        &[],
    );
    let tools = names(&answer(&p, "/mcp", "tools/list", "", None), "tools", "name");
    assert!(tools.contains(&"everything_echo".to_string()), "{tools:?}");
    assert!(
        tools.contains(&"memory_read_graph".to_string()),
        "{tools:?}"
    );
    assert!(
        !tools.contains(&"memory_delete_entities".to_string()),
        "{tools:?}"
    );
    assert!(
        !tools
            .iter()
            .any(|t| t.starts_with("everything_") && t != "everything_echo"),
        "{tools:?}"
    );
    let ok = answer(
        &p,
        "/mcp",
        "tools/call",
        r#""name":"memory_read_graph","arguments":{}"#,
        Some("memory_read_graph"),
    );
    assert!(ok["result"].is_object(), "{ok}");
    for tool in ["everything_get-sum", "memory_delete_entities"] {
        let members = format!(r#""name":"{tool}","arguments":{{"a":1,"b":2,"entityNames":["x"]}}"#);
        let a = answer(&p, "/mcp", "tools/call", &members, Some(tool));
        assert_eq!(a["error"]["code"], -32602, "{tool}: {a}");
    }
    let denied = p
        .wait_log(|l| l.contains("gen_ai.tool.name=everything_get-sum"))
        .unwrap();
    assert!(denied.contains("mcp.authz=deny"), "{denied}");
    let _ = std::fs::remove_dir_all(dir);
}

/// Walks every page of the merged lists on /mcp and of each target alone.
fn walk_pages(mode: &str) {
    let p = Proxy::start(
        &config(&[
            route("multi", "/mcp", "", &[paging(), everything()], ""),
            route("paging", "/paging", "", &[paging()], ""),
            route("everything", "/everything", "", &[everything()], ""),
        ]),
        &[],
    );
    let base = format!("http://{}", p.addr());
    let merged = sdk(&format!("{base}/mcp"), "paginate", mode);
    assert_eq!(merged["ok"], true, "{merged:#}");
    for (what, key) in [("resources", "resources_all"), ("tools", "tools_all")] {
        let mut want = Vec::new();
        for t in ["paging", "everything"] {
            let direct = sdk(&format!("{base}/{t}"), "paginate", mode);
            assert_eq!(direct["ok"], true, "{direct:#}");
            let sep = if what == "tools" { "_" } else { "+" };
            want.extend(
                direct[key]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|i| format!("{t}{sep}{}", i.as_str().unwrap())),
            );
        }
        let got: Vec<String> = merged[key]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| i.as_str().unwrap().to_string())
            .collect();
        let unique: BTreeSet<&String> = got.iter().collect();
        assert_eq!(
            unique.len(),
            got.len(),
            "{mode} {what}: duplicates in {got:?}"
        );
        assert_eq!(got.len(), want.len(), "{mode} {what}: {got:?} vs {want:?}");
        assert_eq!(unique, want.iter().collect(), "{mode} {what}");
        let pages = merged[format!("{what}_pages")].as_u64().unwrap();
        assert!(pages > 1, "{mode} {what}: {pages} pages");
    }
    // 25 paged resources plus server-everything's.
    assert!(merged["resources_all"].as_array().unwrap().len() > 25);
}

#[test]
fn a_session_walks_every_page_of_a_merged_list() {
    walk_pages("legacy");
}

#[test]
fn modern_requests_walk_every_page_of_a_merged_list() {
    walk_pages(V);
}

/// The next `notifications/resources/updated` on a listen stream.
fn next_update(r: &mut std::io::BufReader<std::net::TcpStream>) -> Value {
    loop {
        let ev = next_event(r).expect("an update");
        if ev["method"] == "notifications/resources/updated" {
            return ev;
        }
    }
}

#[test]
fn listen_subscribes_each_target_and_renames_its_updates() {
    let dir = temp_dir("listen");
    let p = two_servers(&dir);
    let list = answer(&p, "/mcp", "resources/list", "", None);
    let uri = names(&list, "resources", "uri")
        .into_iter()
        .find(|u| u.starts_with("everything+"))
        .unwrap();
    let graph = "memory+memory://knowledge-graph";
    // A URI naming no target is not honoured.
    let uris = json!([uri, graph, "nosuch+x://y"]);
    let body = format!(
        r#"{{"jsonrpc":"2.0","id":"L","method":"subscriptions/listen","params":{{"notifications":{{"toolsListChanged":true,"resourceSubscriptions":{uris}}},"_meta":{{"io.modelcontextprotocol/protocolVersion":"{V}","io.modelcontextprotocol/clientCapabilities":{{}}}}}}}}"#
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
        json!({"toolsListChanged": true, "resourceSubscriptions": [uri, graph]}),
        "{ack}"
    );
    // server-memory tells its subscribers when a tool changes the graph.
    let members = r#""name":"memory_create_entities","arguments":{"entities":[{"name":"listen","entityType":"test","observations":["x"]}]}"#;
    let c = answer(
        &p,
        "/mcp",
        "tools/call",
        members,
        Some("memory_create_entities"),
    );
    assert!(c["result"].is_object(), "{c}");
    let ev = next_update(&mut r);
    assert_eq!(ev["params"]["uri"], graph, "{ev}");
    assert_eq!(
        ev["params"]["_meta"]["io.modelcontextprotocol/subscriptionId"], "L",
        "{ev}"
    );
    // server-everything's updates of what it is subscribed to.
    let toggle = "everything_toggle-subscriber-updates";
    let t = answer(
        &p,
        "/mcp",
        "tools/call",
        &format!(r#""name":"{toggle}","arguments":{{}}"#),
        Some(toggle),
    );
    assert!(t["result"].is_object(), "{t}");
    let ev = loop {
        let ev = next_update(&mut r);
        if ev["params"]["uri"] != graph {
            break ev;
        }
    };
    assert_eq!(ev["params"]["uri"], uri.as_str(), "{ev}");
    assert_eq!(
        ev["params"]["_meta"]["io.modelcontextprotocol/subscriptionId"], "L",
        "{ev}"
    );
    drop(r);
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn mrtr_request_state_is_bound_to_its_target() {
    let js = server_js();
    let twins = [
        target("a", "node", &[&js], ""),
        target("b", "node", &[&js], ""),
    ];
    let p = Proxy::start(&config(&[route("twins", "/mcp", "", &twins, "")]), &[]);
    let body = |id: &str, tool: &str, retry: Option<(&str, &str)>| {
        let extra = retry.map_or(String::new(), |(state, responses)| {
            format!(r#""requestState":"{state}","inputResponses":{responses},"#)
        });
        format!(
            r#"{{"jsonrpc":"2.0","id":{id},"method":"tools/call","params":{{"name":"{tool}","arguments":{{}},{extra}"_meta":{{"io.modelcontextprotocol/protocolVersion":"{V}","io.modelcontextprotocol/clientCapabilities":{{"elicitation":{{}}}}}}}}}}"#
        )
    };
    let (ta, tb) = (
        "a_trigger-elicitation-request",
        "b_trigger-elicitation-request",
    );
    let mut r = raw_post(&p, &hdrs("tools/call", Some(ta)), &body("1", ta, None));
    assert_eq!(head(&mut r).0, 200);
    let ev = next_event(&mut r).expect("an answer");
    assert_eq!(ev["result"]["resultType"], "input_required", "{ev}");
    assert_eq!(
        ev["result"]["inputRequests"]["input"]["method"],
        "elicitation/create"
    );
    let state = ev["result"]["requestState"].as_str().unwrap().to_string();
    let answer = r#"{"input":{"action":"accept","content":{"name":"Grace Hopper"}}}"#;
    // The same tool of the other target: another request.
    let mut r = raw_post(
        &p,
        &hdrs("tools/call", Some(tb)),
        &body("2", tb, Some((&state, answer))),
    );
    assert_eq!(head(&mut r).0, 400);
    let e = next_json(&mut r);
    assert_eq!(e["error"]["code"], -32602, "{e}");
    assert!(
        e["error"]["message"]
            .as_str()
            .unwrap()
            .contains("another request"),
        "{e}"
    );
    // The rightful retry reaches target a's waiting call.
    let mut r = raw_post(
        &p,
        &hdrs("tools/call", Some(ta)),
        &body("3", ta, Some((&state, answer))),
    );
    assert_eq!(head(&mut r).0, 200);
    let ev = next_event(&mut r).expect("the final answer");
    assert_eq!(ev["id"], 3, "{ev}");
    assert_eq!(ev["result"]["resultType"], "complete", "{ev}");
    assert!(ev.to_string().contains("Grace Hopper"), "{ev}");
    let line = p
        .wait_log(|l| l.contains("gen_ai.tool.name=a_trigger-elicitation-request"))
        .unwrap();
    assert!(line.contains("mcp.target=a"), "{line}");
}

/// The rest of a response as one JSON value.
fn next_json(r: &mut std::io::BufReader<std::net::TcpStream>) -> Value {
    let mut body = String::new();
    r.read_to_string(&mut body).unwrap();
    serde_json::from_str(&body).unwrap()
}

#[test]
fn prefix_mode_never_routes_modern_calls_by_looking_the_name_up() {
    let dir = temp_dir("never");
    let targets = [everything(), memory(&dir)];
    let p = Proxy::start(
        &config(&[route("never", "/mcp", "prefixMode: never, ", &targets, "")]),
        &[],
    );
    let tools = names(&answer(&p, "/mcp", "tools/list", "", None), "tools", "name");
    assert!(tools.contains(&"echo".to_string()) && tools.contains(&"read_graph".to_string()));
    let echo = answer(
        &p,
        "/mcp",
        "tools/call",
        r#""name":"echo","arguments":{"message":"plain"}"#,
        Some("echo"),
    );
    assert_eq!(
        echo["result"]["content"][0]["text"], "Echo: plain",
        "{echo}"
    );
    let graph = answer(
        &p,
        "/mcp",
        "tools/call",
        r#""name":"read_graph","arguments":{}"#,
        Some("read_graph"),
    );
    assert!(graph["result"]["content"][0]["text"].is_string(), "{graph}");
    for (tool, t) in [("echo", "everything"), ("read_graph", "memory")] {
        let line = p
            .wait_log(|l| l.contains(&format!("gen_ai.tool.name={tool} ")))
            .expect("logged");
        assert!(line.contains(&format!("mcp.target={t}")), "{line}");
    }
    let none = answer(
        &p,
        "/mcp",
        "tools/call",
        r#""name":"nosuch","arguments":{}"#,
        Some("nosuch"),
    );
    assert_eq!(none["error"]["code"], -32602, "{none}");
    let _ = std::fs::remove_dir_all(dir);
}
