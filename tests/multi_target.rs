//! Several MCP targets behind one route (issue #14), with real peers:
//! server-everything and server-memory as stdio children, the official
//! Python SDK (tests/peers/multi_client.py) and raw HTTP as clients.

mod support;

use std::process::Command;

use serde_json::{json, Value};
use support::mcp::*;
use support::*;

const PEERS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/peers");
const SRC: &str = "127.0.0.1";
const PATH: &str = "/mcp";

fn memory_js() -> String {
    let p = format!("{PEERS}/node_modules/@modelcontextprotocol/server-memory/dist/index.js");
    assert!(
        std::path::Path::new(&p).exists(),
        "run tests/peers/setup.sh first"
    );
    p
}

/// A YAML target (flow style) running `js` with node.
fn target(name: &str, js: &str, env: &str) -> String {
    format!("{{name: {name}, stdio: {{cmd: node, args: [{js:?}]{env}}}}}")
}

/// A config with one route on /mcp serving `targets`, with `extra` members
/// in its `mcp:` (prefixMode, failureMode).
fn config(targets: &[String], extra: &str) -> String {
    format!(
        "config:\n  mcp: {{stopGrace: 500ms}}\nbinds:\n- port: 0\n  address: 127.0.0.1\n  listeners:\n  - routes:\n    - name: multi\n      matches: [{{path: {{exact: {PATH}}}}}]\n      backends: [{{mcp: {{{extra}targets: [{}]}}}}]\n",
        targets.join(", ")
    )
}

/// server-everything as `everything` and server-memory (its store in a
/// temporary file) as `memory`.
fn everything_and_memory(dir: &std::path::Path) -> Vec<String> {
    let store = dir.join("memory.jsonl");
    let env = format!(
        ", env: {{MEMORY_FILE_PATH: {:?}}}",
        store.display().to_string()
    );
    vec![
        target("everything", &server_js(), ""),
        target("memory", &memory_js(), &env),
    ]
}

fn temp_dir(tag: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("ringgate-multi-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn sdk(url: &str, scenario: &str) -> Value {
    sdk_mode(url, scenario, "legacy")
}

fn sdk_mode(url: &str, scenario: &str, mode: &str) -> Value {
    let args = ["--url", url, "--scenario", scenario, "--mode", mode];
    support::mcp::peer_client("multi_client.py", &args)
}

/// The pid of target `name`'s child in session `sid`, from the log.
fn target_pid(p: &Proxy, sid: &str, name: &str) -> u32 {
    let line = p
        .wait_log(|l| {
            l.contains("session target started")
                && l.contains(sid)
                && field(l, "target").as_deref() == Some(name)
        })
        .expect("target start logged");
    field(&line, "pid").unwrap().parse().unwrap()
}

fn list(p: &Proxy, sid: &str, id: u64, method: &str) -> Value {
    let r = post(
        p,
        SRC,
        PATH,
        Some(sid),
        &json!({"jsonrpc":"2.0","id":id,"method":method}),
    );
    assert_eq!(r.status, 200, "{method}: {}", r.text());
    r.events()
        .into_iter()
        .find(|e| e["id"] == id)
        .expect("answered")
}

fn tool_names(answer: &Value) -> Vec<String> {
    answer["result"]["tools"]
        .as_array()
        .unwrap_or_else(|| panic!("{answer}"))
        .iter()
        .map(|t| t["name"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn two_real_servers_behind_one_route_with_the_python_sdk() {
    let dir = temp_dir("two");
    let p = Proxy::start(&config(&everything_and_memory(&dir), ""), &[]);
    let out = sdk(&format!("http://{}{PATH}", p.addr()), "two-servers");
    assert_eq!(out["ok"], true, "{out:#}");
    assert_eq!(
        out["server"], "ringgate",
        "ringgate's own serverInfo: {out:#}"
    );
    let tools: Vec<&str> = strings(&out["tools"]);
    for t in [
        "everything_echo",
        "everything_get-sum",
        "memory_create_entities",
        "memory_read_graph",
    ] {
        assert!(tools.contains(&t), "{t} missing from {tools:?}");
    }
    assert!(
        tools
            .iter()
            .all(|t| t.starts_with("everything_") || t.starts_with("memory_")),
        "every tool carries its target: {tools:?}"
    );
    assert!(out["prompts"]
        .as_array()
        .unwrap()
        .iter()
        .all(|p| p.as_str().unwrap().starts_with("everything_")));
    let resources: Vec<&str> = strings(&out["resources"]);
    assert!(
        resources
            .iter()
            .all(|r| r.starts_with("everything+demo://") || r.starts_with("memory+")),
        "URIs carry their target: {resources:?}"
    );
    assert!(
        resources.contains(&"memory+memory://knowledge-graph"),
        "{resources:?}"
    );
    assert_eq!(
        out["resource_read"], 1,
        "a resource read by its exposed URI: {out:#}"
    );
    // Read by its exposed URI, and answered with that URI.
    assert_eq!(out["resource_read_uri"], resources[0], "{out:#}");
    assert_eq!(out["echo"], "Echo: hi everything");
    assert_eq!(out["created"]["is_error"], false, "{out:#}");
    let back = out["read_back"]["text"].as_str().unwrap();
    assert!(
        back.contains("ringgate") && back.contains("multiplexes"),
        "{back}"
    );
    // The entity went to server-memory's store, nowhere else.
    let store = std::fs::read_to_string(dir.join("memory.jsonl")).unwrap();
    assert!(store.contains("\"ringgate\""), "{store}");
    // The access log names the target of each call.
    assert!(p
        .wait_log(|l| l.contains("gen_ai.tool.name=memory_create_entities")
            && l.contains("mcp.target=memory"))
        .is_some());
    assert!(p
        .wait_log(|l| l.contains("gen_ai.tool.name=everything_echo")
            && l.contains("mcp.target=everything"))
        .is_some());
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn twins_never_cross_ids_progress_or_server_requests() {
    let js = server_js();
    let p = Proxy::start(
        &config(&[target("a", &js, ""), target("b", &js, "")], ""),
        &[],
    );
    let out = sdk(&format!("http://{}{PATH}", p.addr()), "twins");
    assert_eq!(out["ok"], true, "{out:#}");
    let tools: Vec<&str> = strings(&out["tools"]);
    assert!(
        tools.contains(&"a_echo") && tools.contains(&"b_echo"),
        "{tools:?}"
    );
    assert_eq!(out["texts"]["a_echo"], "Echo: from a");
    assert_eq!(out["texts"]["b_echo"], "Echo: from b");
    // Each call's progress came from its own child: 3 steps for a, 5 for b.
    assert_eq!(out["progress"]["a"], json!([1.0, 2.0, 3.0]), "{out:#}");
    assert_eq!(
        out["progress"]["b"],
        json!([1.0, 2.0, 3.0, 4.0, 5.0]),
        "{out:#}"
    );
    assert!(
        out["texts"]["a_long"]
            .as_str()
            .unwrap()
            .contains("Steps: 3."),
        "{out:#}"
    );
    assert!(
        out["texts"]["b_long"]
            .as_str()
            .unwrap()
            .contains("Steps: 5."),
        "{out:#}"
    );
    // Both children asked for roots, each its own request.
    assert_eq!(out["roots_asked"], 2, "{out:#}");
}

#[test]
fn server_requests_get_ids_naming_their_target_and_answers_go_back() {
    let js = server_js();
    let p = Proxy::start(
        &config(&[target("a", &js, ""), target("b", &js, "")], ""),
        &[],
    );
    let init = json!({"jsonrpc":"2.0","id":1,"method":"initialize","params":{
        "protocolVersion":"2025-06-18","capabilities":{"roots":{"listChanged":true}},
        "clientInfo":{"name":"raw","version":"1"}}});
    let r = post(&p, SRC, PATH, None, &init);
    assert_eq!(r.status, 200, "{}", r.text());
    let ev = &r.events()[0];
    assert_eq!(ev["result"]["serverInfo"]["name"], "ringgate", "{ev}");
    let sid = r.header("mcp-session-id").unwrap().to_string();
    let n = post(
        &p,
        SRC,
        PATH,
        Some(&sid),
        &json!({"jsonrpc":"2.0","method":"notifications/initialized"}),
    );
    assert_eq!(n.status, 202);
    // Same request id in a batch-free sequence: each child sees only its own.
    let tools = tool_names(&list(&p, &sid, 2, "tools/list"));
    assert!(tools.contains(&"a_echo".to_string()) && tools.contains(&"b_echo".to_string()));
    for (id, who) in [(3, "a"), (4, "b")] {
        let r = call(
            &p,
            SRC,
            PATH,
            &sid,
            id,
            &format!("{who}_echo"),
            json!({"message": who}),
        );
        assert_eq!(
            answer_text(&r, id).as_deref(),
            Some(&*format!("Echo: {who}"))
        );
    }
    // Both children ask roots/list on the GET stream; their ids are told apart.
    let (ok, seen) = read_get_stream_until(&p, &sid, |s| s.matches("roots/list").count() >= 2);
    assert!(ok, "two roots/list requests expected: {seen}");
    let ids: Vec<String> = sse_json(&seen)
        .into_iter()
        .filter(|m| m["method"] == "roots/list")
        .map(|m| m["id"].as_str().expect("a string id").to_string())
        .collect();
    assert!(
        ids.iter().any(|i| i.starts_with("a:")) && ids.iter().any(|i| i.starts_with("b:")),
        "{ids:?}"
    );
    // Answers go back to each child (an id nobody sent is dropped, not sent).
    for id in &ids {
        let ans = json!({"jsonrpc":"2.0","id":id,"result":{"roots":[]}});
        assert_eq!(post(&p, SRC, PATH, Some(&sid), &ans).status, 202);
    }
    let stray = json!({"jsonrpc":"2.0","id":"zz:1","result":{}});
    assert_eq!(post(&p, SRC, PATH, Some(&sid), &stray).status, 202);
    assert!(p
        .wait_log(|l| l.contains("client answered a request no target sent"))
        .is_some());
    // Both children still serve.
    for (id, who) in [(5, "a"), (6, "b")] {
        let r = call(
            &p,
            SRC,
            PATH,
            &sid,
            id,
            &format!("{who}_echo"),
            json!({"message": "again"}),
        );
        assert_eq!(answer_text(&r, id).as_deref(), Some("Echo: again"));
    }
    assert_eq!(delete(&p, SRC, PATH, &sid).status, 200);
}

/// JSON messages of an SSE text.
fn sse_json(text: &str) -> Vec<Value> {
    text.lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .filter_map(|d| serde_json::from_str(d).ok())
        .collect()
}

fn kill(pid: u32) {
    // SAFETY: kill(2) on a pid this test read from ringgate's log.
    unsafe { libc::kill(pid as i32, libc::SIGKILL) };
}

#[test]
fn a_killed_child_ends_the_session_under_fail_closed() {
    let dir = temp_dir("closed");
    let p = Proxy::start(&config(&everything_and_memory(&dir), ""), &[]);
    let sid = initialize(&p, SRC, PATH);
    assert!(tool_names(&list(&p, &sid, 2, "tools/list")).contains(&"memory_read_graph".to_string()));
    let pid = target_pid(&p, &sid, "memory");
    kill(pid);
    assert!(p
        .wait_log(|l| l.contains("session ended") && l.contains(&sid))
        .is_some());
    let r = call(
        &p,
        SRC,
        PATH,
        &sid,
        3,
        "everything_echo",
        json!({"message": "x"}),
    );
    assert_eq!(r.status, 404, "{}", r.text());
    // Its other child is stopped too.
    let other = target_pid(&p, &sid, "everything");
    assert!(
        wait_until(WAIT, || pid_gone(other)),
        "everything child left running"
    );
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn a_killed_child_leaves_the_lists_under_fail_open() {
    let dir = temp_dir("open");
    let p = Proxy::start(
        &config(&everything_and_memory(&dir), "failureMode: failOpen, "),
        &[],
    );
    let sid = initialize(&p, SRC, PATH);
    let before = tool_names(&list(&p, &sid, 2, "tools/list"));
    assert!(
        before.iter().any(|t| t.starts_with("memory_")),
        "{before:?}"
    );
    kill(target_pid(&p, &sid, "memory"));
    let ended = p.wait_log(|l| {
        l.contains("MCP target ended") && field(l, "target").as_deref() == Some("memory")
    });
    assert!(ended.is_some(), "{:#?}", p.logs());
    let after = tool_names(&list(&p, &sid, 3, "tools/list"));
    assert!(
        !after.is_empty() && after.iter().all(|t| t.starts_with("everything_")),
        "{after:?}"
    );
    let r = call(&p, SRC, PATH, &sid, 4, "memory_read_graph", json!({}));
    let e = r
        .events()
        .into_iter()
        .find(|e| e["id"] == 4)
        .expect("answered");
    assert_eq!(e["error"]["code"], -32602, "{e}");
    let r = call(
        &p,
        SRC,
        PATH,
        &sid,
        5,
        "everything_echo",
        json!({"message": "on"}),
    );
    assert_eq!(
        answer_text(&r, 5).as_deref(),
        Some("Echo: on"),
        "the healthy target serves on"
    );
    // The client is told its lists changed (kept for its GET stream).
    let (told, seen) =
        read_get_stream_until(&p, &sid, |s| s.contains("notifications/tools/list_changed"));
    assert!(told, "{seen}");
    assert_eq!(delete(&p, SRC, PATH, &sid).status, 200);
    let _ = std::fs::remove_dir_all(dir);
}

/// `prefixMode: never` routes by plain name, so the targets' names must not
/// clash; ringgate starts each target once before a config is used and
/// refuses a clash like any bad config: at start-up (exit 2, naming the key
/// and the name), and on reload (the running config stays).
#[test]
fn prefix_mode_never_refuses_a_clash_at_load_and_routes_by_name() {
    let js = server_js();
    let clash = config(
        &[target("a", &js, ""), target("b", &js, "")],
        "prefixMode: never, ",
    );
    let at = "binds[0].listeners[0].routes[0].backends[0].mcp.targets: ";
    let named = format!(r#"{at}tool "echo" is offered by targets "a" and "b""#);
    let (code, stderr) = run_to_exit(&clash);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains(&named), "{stderr}");

    // server-everything and server-memory share no name: served, by name.
    let dir = temp_dir("never");
    let p = Proxy::start(
        &config(&everything_and_memory(&dir), "prefixMode: never, "),
        &[],
    );
    p.wait_log(|l| l.contains("prefixMode never: starting each target once"))
        .expect("the targets were probed at start-up");
    let never_scenario = |p: &Proxy| {
        let out = sdk(&format!("http://{}{PATH}", p.addr()), "never");
        assert_eq!(out["ok"], true, "{out:#}");
        let tools: Vec<&str> = strings(&out["tools"]);
        assert!(
            tools.contains(&"echo") && tools.contains(&"read_graph"),
            "{tools:?}"
        );
        assert_eq!(out["echo"], "Echo: unprefixed");
        assert_eq!(out["read_graph"]["is_error"], false, "{out:#}");
    };
    never_scenario(&p);

    // A reload to the clashing config is refused; the running one serves on.
    p.rewrite_config(&clash);
    p.signal(libc::SIGHUP);
    let refused = p
        .wait_log(|l| l.contains("reload refused") && l.contains("offered by targets"))
        .unwrap_or_else(|| panic!("reload not refused: {:#?}", p.logs()));
    assert!(refused.contains(&named), "{refused}");
    assert!(!p.logs().iter().any(|l| l.contains("config reloaded")));
    never_scenario(&p);
    drop(p);
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn example_config_with_two_targets_validates() {
    let out = Command::new(binary())
        .args([
            "--validate-only",
            "-f",
            concat!(env!("CARGO_MANIFEST_DIR"), "/config/multi-target.yaml"),
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn authorization_rules_see_the_target() {
    let js = server_js();
    let rules = "policies: {mcpAuthorization: {rules: ['mcp.tool.target == \"a\"', {deny: 'mcp.tool.name == \"get-sum\"'}]}}";
    let y = config(&[target("a", &js, ""), target("b", &js, "")], "").replace(
        "      backends:",
        &format!("      {rules}\n      backends:"),
    );
    let p = Proxy::start(&y, &[]);
    let sid = initialize(&p, SRC, PATH);
    // The list keeps what the caller may call: a's tools but get-sum.
    let tools = tool_names(&list(&p, &sid, 2, "tools/list"));
    assert!(tools.contains(&"a_echo".to_string()), "{tools:?}");
    assert!(!tools.iter().any(|t| t.starts_with("b_")), "{tools:?}");
    assert!(!tools.contains(&"a_get-sum".to_string()), "{tools:?}");
    let r = call(&p, SRC, PATH, &sid, 3, "a_echo", json!({"message": "ok"}));
    assert_eq!(answer_text(&r, 3).as_deref(), Some("Echo: ok"));
    for (id, tool) in [(4, "b_echo"), (5, "a_get-sum")] {
        let r = call(
            &p,
            SRC,
            PATH,
            &sid,
            id,
            tool,
            json!({"a": 1, "b": 2, "message": "no"}),
        );
        let e = r
            .events()
            .into_iter()
            .find(|e| e["id"] == id)
            .expect("answered");
        assert_eq!(e["error"]["code"], -32602, "{tool}: {e}");
    }
    let denied = p
        .wait_log(|l| l.contains("gen_ai.tool.name=b_echo"))
        .unwrap();
    assert!(
        denied.contains("mcp.authz=deny") && denied.contains("mcp.target=b"),
        "{denied}"
    );
}

#[test]
fn prefix_mode_always_prefixes_a_single_target() {
    let p = Proxy::start(
        &config(&[target("only", &server_js(), "")], "prefixMode: always, "),
        &[],
    );
    let sid = initialize(&p, SRC, PATH);
    let tools = tool_names(&list(&p, &sid, 2, "tools/list"));
    assert!(
        !tools.is_empty() && tools.iter().all(|t| t.starts_with("only_")),
        "{tools:?}"
    );
    let r = call(
        &p,
        SRC,
        PATH,
        &sid,
        3,
        "only_echo",
        json!({"message": "one"}),
    );
    assert_eq!(answer_text(&r, 3).as_deref(), Some("Echo: one"));
}

#[test]
fn sdk_auto_mode_stays_modern_for_several_targets() {
    let dir = temp_dir("auto");
    let p = Proxy::start(&config(&everything_and_memory(&dir), ""), &[]);
    let url = format!("http://{}{PATH}", p.addr());
    // The SDK's server/discover probe is answered: the targets, merged.
    let body = json!({"jsonrpc":"2.0","id":1,"method":"server/discover","params":{"_meta":{
        "io.modelcontextprotocol/protocolVersion":"2026-07-28",
        "io.modelcontextprotocol/clientCapabilities":{}}}});
    let raw = post_bytes(PATH, None, &body).replace(
        "Content-Type: application/json\r\n",
        "Content-Type: application/json\r\nMCP-Protocol-Version: 2026-07-28\r\nMcp-Method: server/discover\r\n",
    );
    let r = request_from(SRC, p.addr(), &raw);
    assert_eq!(r.status, 200, "{}", r.text());
    let d: Value = serde_json::from_str(&r.text()).unwrap();
    assert_eq!(
        d["result"]["_meta"]["io.modelcontextprotocol/serverInfo"]["name"], "ringgate",
        "{d}"
    );
    // So auto mode settles on 2026-07-28, and every step is served.
    let out = sdk_mode(&url, "two-servers", "auto");
    assert_eq!(out["ok"], true, "{out:#}");
    assert_eq!(out["protocol_version"], "2026-07-28", "{out:#}");
    assert_eq!(out["echo"], "Echo: hi everything");
    assert!(
        out["read_back"]["text"]
            .as_str()
            .unwrap()
            .contains("multiplexes"),
        "{out:#}"
    );
    // No session was initialized.
    assert!(!p
        .logs()
        .iter()
        .any(|l| l.contains("session target started")));
    let _ = std::fs::remove_dir_all(dir);
}

/// Opens the session's GET stream and reads it until `done` holds for what
/// arrived (bounded by `WAIT`); returns whether it did, and the text.
fn read_get_stream_until(p: &Proxy, sid: &str, done: impl Fn(&str) -> bool) -> (bool, String) {
    use std::io::Read;
    let mut get = send_from(
        SRC,
        p,
        format!(
            "GET {PATH} HTTP/1.1\r\nHost: gw\r\nAccept: {ACCEPT}\r\nMcp-Session-Id: {sid}\r\n\r\n"
        )
        .as_bytes(),
    );
    let mut seen = String::new();
    let mut buf = [0u8; 4096];
    let ok = wait_until(WAIT, || {
        if let Ok(n) = get.read(&mut buf) {
            seen.push_str(&String::from_utf8_lossy(&buf[..n]));
        }
        done(&seen)
    });
    (ok, seen)
}

/// Runs ringgate on `yaml` until it exits by itself (bounded: a hang fails
/// the test); its exit code and stderr.
fn run_to_exit(yaml: &str) -> (Option<i32>, String) {
    let dir = tempfile::tempdir().unwrap();
    let (path, err) = (dir.path().join("config.yaml"), dir.path().join("stderr"));
    std::fs::write(&path, yaml).unwrap();
    let mut child = Command::new(binary())
        .arg("-f")
        .arg(&path)
        .args(["--stats-addr", "off", "--readiness-addr", "off"])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&err).unwrap())
        .spawn()
        .expect("start ringgate");
    let mut status = None;
    let exited = wait_until(WAIT * 6, || {
        status = child.try_wait().unwrap();
        status.is_some()
    });
    if !exited {
        let _ = child.kill();
        let _ = child.wait();
    }
    let stderr = std::fs::read_to_string(&err).unwrap_or_default();
    assert!(exited, "ringgate did not exit: {stderr}");
    (status.and_then(|s| s.code()), stderr)
}
