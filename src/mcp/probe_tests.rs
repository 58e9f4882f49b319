use super::*;

const A_PAGE_1: &str = r#"{"jsonrpc":"2.0","id":"ringgate-probe-1","result":{"tools":[{"name":"echo","inputSchema":{}},{"name":"get-sum"}],"nextCursor":"p\u00322"}}"#;
const A_PAGE_2: &str = r#"{"result":{"nextCursor":null,"tools":[{"description":"x","name":"add"}]},"jsonrpc":"2.0","id":"ringgate-probe-2"}"#;
const B_PAGE: &str = r#"{"jsonrpc":"2.0","id":"ringgate-probe-1","result":{"tools":[{"name":"read_graph"},{"name":"add"}]}}"#;
const NO_PROMPTS: &str = r#"{"jsonrpc":"2.0","id":"ringgate-probe-3","error":{"code":-32601,"message":"Method not found"}}"#;
const PROMPTS: &str =
    r#"{"jsonrpc":"2.0","id":"ringgate-probe-2","result":{"prompts":[{"name":"simple_prompt"}]}}"#;

fn names(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

#[test]
fn pages_give_names_and_the_raw_cursor() {
    assert_eq!(
        page(ListKind::Tools, A_PAGE_1).unwrap(),
        Some(Page {
            names: names(&["echo", "get-sum"]),
            next: Some(r#""p\u00322""#.to_string())
        })
    );
    assert_eq!(
        page(ListKind::Tools, A_PAGE_2).unwrap(),
        Some(Page {
            names: names(&["add"]),
            next: None
        })
    );
    assert_eq!(
        page(ListKind::Prompts, PROMPTS).unwrap(),
        Some(Page {
            names: names(&["simple_prompt"]),
            next: None
        })
    );
    assert_eq!(page(ListKind::Prompts, NO_PROMPTS).unwrap(), None);
    for (kind, bad, why) in [
        (
            ListKind::Tools,
            r#"{"jsonrpc":"2.0","id":"x","error":{"code":-32603,"message":"boom"}}"#,
            "tools/list failed",
        ),
        (
            ListKind::Tools,
            r#"{"jsonrpc":"2.0","id":"x"}"#,
            "malformed",
        ),
        (ListKind::Tools, "not json", "malformed"),
        (
            ListKind::Tools,
            r#"{"id":"x","result":{"prompts":[]}}"#,
            "no \"tools\"",
        ),
        (
            ListKind::Prompts,
            r#"{"id":"x","result":{"prompts":{}}}"#,
            "not a list",
        ),
        (
            ListKind::Tools,
            r#"{"id":"x","result":{"tools":[],"nextCursor":3}}"#,
            "not a string",
        ),
    ] {
        let e = page(kind, bad).unwrap_err();
        assert!(e.contains(why), "{bad}: {e}");
    }
}

/// The names of the answers' pages, as the probe gathers them.
fn offered(tools: &[&str], prompts: &[&str]) -> Offered {
    let mut o = Offered::default();
    for line in tools {
        o.tools
            .extend(page(ListKind::Tools, line).unwrap().unwrap().names);
    }
    for line in prompts {
        if let Some(p) = page(ListKind::Prompts, line).unwrap() {
            o.prompts.extend(p.names);
        }
    }
    o
}

#[test]
fn a_name_on_a_later_page_of_one_target_clashes_with_another() {
    let a = offered(&[A_PAGE_1, A_PAGE_2], &[PROMPTS]);
    let b = offered(&[B_PAGE], &[NO_PROMPTS]);
    let found = clashes(&["a", "b"], &[a.clone(), b.clone()]);
    let one = [(r#"tool "add""#.to_string(), r#""a" and "b""#.to_string())];
    assert_eq!(found, one);
    let problem = clash_problem(&found).unwrap();
    assert!(
        problem.starts_with(r#"tool "add" is offered by targets "a" and "b": prefixMode never"#),
        "{problem}"
    );
    // Without the second page there is no clash.
    let a1 = offered(&[A_PAGE_1], &[PROMPTS]);
    assert!(clashes(&["a", "b"], &[a1, b.clone()]).is_empty());
    assert_eq!(clash_problem(&[]), None);
    // Prompts clash on their own, and three targets are all named.
    let c = offered(&[B_PAGE], &[PROMPTS]);
    let found = clashes(&["a", "b", "c"], &[a, b, c]);
    let pairs: Vec<(&str, &str)> = found
        .iter()
        .map(|(n, w)| (n.as_str(), w.as_str()))
        .collect();
    assert_eq!(
        pairs,
        [
            (r#"tool "add""#, r#""a", "b" and "c""#),
            (r#"tool "read_graph""#, r#""b" and "c""#),
            (r#"prompt "simple_prompt""#, r#""a" and "c""#),
        ]
    );
    let problem = clash_problem(&found).unwrap();
    assert!(
        problem.starts_with(
            r#"tool "add" is offered by targets "a", "b" and "c" (and 2 more names clash: tool "read_graph", prompt "simple_prompt"): "#
        ),
        "{problem}"
    );
}

/// A shell script speaking MCP on stdio, written to `dir/<name>.sh`: it
/// answers `initialize`, skips the notification, then answers each line
/// read with the next of `answers` (its id set to the probe's), and exits at
/// stdin EOF.
fn fake_server(dir: &std::path::Path, name: &str, answers: &[&str]) {
    let mut s = String::from(
        "read -r l\nprintf '%s\\n' '{\"jsonrpc\":\"2.0\",\"id\":\"ringgate-probe-0\",\"result\":{\"protocolVersion\":\"2025-03-26\",\"capabilities\":{}}}'\nread -r l\n",
    );
    for (i, a) in answers.iter().enumerate() {
        let at = a.find("ringgate-probe-").expect("an answer to the probe") + 15;
        let a = format!("{}{}{}", &a[..at], i + 1, &a[at + 1..]);
        s.push_str(&format!("read -r l\nprintf '%s\\n' '{a}'\n"));
    }
    s.push_str("while read -r l; do :; done\n");
    std::fs::write(dir.join(format!("{name}.sh")), s).unwrap();
}

fn run<T>(f: impl std::future::Future<Output = T>) -> T {
    monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
        .enable_timer()
        .build()
        .unwrap()
        .block_on(f)
}

fn limits() -> Limits {
    Limits {
        max_line_bytes: 1 << 20,
        stop_grace: Duration::from_millis(200),
        deadline: Instant::now() + Duration::from_secs(30),
        timeout: Duration::from_secs(30),
    }
}

fn sh_target(name: &str, script: &str) -> McpTarget {
    McpTarget {
        name: name.into(),
        cmd: "sh".into(),
        args: vec!["-c".into(), script.into()],
        env: Vec::new(),
        key: Default::default(),
    }
}

/// The exchange with a real child: pages followed with the cursor sent back
/// byte for byte, a server request meanwhile refused, a notification
/// skipped, prompts absent (-32601).
#[test]
fn a_child_is_asked_for_every_page_and_stopped() {
    let script = [
        "read -r l; echo '{\"jsonrpc\":\"2.0\",\"id\":\"ringgate-probe-0\",\"result\":{\"protocolVersion\":\"2025-03-26\",\"capabilities\":{}}}'",
        "read -r l; case \"$l\" in *notifications/initialized*) ;; *) exit 7;; esac",
        "read -r l; echo '{\"jsonrpc\":\"2.0\",\"method\":\"notifications/message\",\"params\":{}}'",
        "echo '{\"jsonrpc\":\"2.0\",\"id\":7,\"method\":\"roots/list\"}'",
        "read -r r; case \"$r\" in *'\"id\":7,'*-32601*) ;; *) exit 8;; esac",
        &format!("printf '%s\\n' '{A_PAGE_1}'"),
        &format!("read -r l; case \"$l\" in *'\"cursor\":\"p\\u00322\"'*) printf '%s\\n' '{A_PAGE_2}';; *) exit 9;; esac"),
        &format!("read -r l; printf '%s\\n' '{NO_PROMPTS}'"),
        "while read -r l; do :; done",
    ]
    .join("\n");
    let got = run(probe_target(&sh_target("a", &script), limits()));
    assert_eq!(
        got,
        Ok(Offered {
            tools: names(&["echo", "get-sum", "add"]),
            prompts: Vec::new(),
        })
    );

    let e = run(probe_target(&sh_target("b", "read -r l; exit 3"), limits())).unwrap_err();
    assert!(e.contains("closed its stdout"), "{e}");
    let e = run(probe_target(
        &McpTarget {
            cmd: "/nonexistent/server".into(),
            ..sh_target("c", "")
        },
        limits(),
    ))
    .unwrap_err();
    assert!(e.contains("cannot start \"/nonexistent/server\""), "{e}");
}

/// A config whose route serves `dir/a.sh` and `dir/b.sh` under `mode`.
fn config_yaml(dir: &std::path::Path, mode: &str, extra: &str) -> String {
    let (a, b) = (dir.join("a.sh"), dir.join("b.sh"));
    format!(
        "config: {{mcp: {{stopGrace: 200ms{extra}}}}}\nbinds:\n- port: 0\n  listeners:\n  - routes:\n    - backends: [{{mcp: {{prefixMode: {mode}, targets: [{{name: a, stdio: {{cmd: sh, args: [{:?}]}}}}, {{name: b, stdio: {{cmd: sh, args: [{:?}]}}}}]}}}}]\n",
        a.display().to_string(),
        b.display().to_string()
    )
}

fn config(dir: &std::path::Path, mode: &str) -> Config {
    Config::from_yaml(&config_yaml(dir, mode, "")).unwrap()
}

#[test]
fn check_refuses_a_clash_or_a_failing_target_at_the_targets_path() {
    let dir = tempfile::tempdir().unwrap();
    let at = "binds[0].listeners[0].routes[0].backends[0].mcp.targets";
    // a: echo, get-sum; b: read_graph, add: no clash.
    let a_tools = A_PAGE_1.replace(r#""p\u00322""#, "null");
    fake_server(dir.path(), "a", &[&a_tools, PROMPTS]);
    fake_server(dir.path(), "b", &[B_PAGE, NO_PROMPTS]);
    check(&config(dir.path(), "never")).unwrap();

    // b now also offers get-sum.
    let b = B_PAGE.replace("add", "get-sum");
    fake_server(dir.path(), "b", &[&b, NO_PROMPTS]);
    let errs = check(&config(dir.path(), "never")).unwrap_err();
    assert_eq!(errs.0.len(), 1, "{errs}");
    assert_eq!(errs.0[0].path, at);
    assert!(
        errs.0[0]
            .message
            .starts_with(r#"tool "get-sum" is offered by targets "a" and "b""#),
        "{errs}"
    );
    // Other prefix modes are not probed: the clash is theirs to prefix.
    assert!(check(&config(dir.path(), "conditional")).is_ok());

    // A target that does not answer: refused, naming it.
    std::fs::write(dir.path().join("b.sh"), "exit 3\n").unwrap();
    let errs = check(&config(dir.path(), "never")).unwrap_err();
    assert_eq!(errs.0.len(), 1, "{errs}");
    assert_eq!(errs.0[0].path, format!("{at}[1]"));
    assert!(errs.0[0].message.contains("MCP target \"b\""), "{errs}");
    // ... nor within the deadline.
    std::fs::write(dir.path().join("b.sh"), "exec sleep 1000\n").unwrap();
    let y = config_yaml(dir.path(), "never", ", requestTimeout: 300ms");
    let errs = check(&Config::from_yaml(&y).unwrap()).unwrap_err();
    assert!(
        errs.0[0]
            .message
            .contains("no complete answer within 300 ms"),
        "{errs}"
    );
}

/// The agentgateway `mcp:` shorthand's backend is named by its own path.
#[test]
fn the_shorthand_is_named_mcp_targets() {
    let dir = tempfile::tempdir().unwrap();
    fake_server(dir.path(), "a", &[B_PAGE, NO_PROMPTS]);
    let a = dir.path().join("a.sh").display().to_string();
    let yaml = format!(
        "config: {{mcp: {{stopGrace: 200ms}}}}\nmcp:\n  port: 0\n  prefixMode: never\n  targets: [{{name: a, stdio: {{cmd: sh, args: [{a:?}]}}}}, {{name: b, stdio: {{cmd: sh, args: [{a:?}]}}}}]\n"
    );
    let errs = check(&Config::from_yaml(&yaml).unwrap()).unwrap_err();
    assert_eq!(errs.0.len(), 1, "{errs}");
    assert_eq!(errs.0[0].path, "mcp.targets");
    assert!(
        errs.0[0].message.contains("and 1 more names clash"),
        "{errs}"
    );
}
