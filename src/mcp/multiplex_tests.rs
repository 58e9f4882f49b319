use super::*;

fn naming(prefix_names: bool) -> Naming {
    Naming {
        targets: vec!["a".into(), "mem-1".into()],
        prefix_names,
        prefix_uris: true,
    }
}

#[test]
fn spans_are_slices_of_the_text() {
    let obj = r#"{ "id" : 1.10, "params": {"name":"x\u0041", "n": [1, 2]} }"#;
    let r = member(obj, "id").unwrap();
    assert_eq!(&obj[r], "1.10");
    let r = nested(obj, "params", "name").unwrap();
    assert_eq!(&obj[r.clone()], r#""x\u0041""#);
    assert_eq!(
        splice(obj, r, r#""y""#),
        r#"{ "id" : 1.10, "params": {"name":"y", "n": [1, 2]} }"#
    );
    assert!(members("[1]").is_none());
    assert!(member(r#"{"a":1} x"#, "a").is_none());
}

#[test]
fn names_are_prefixed_and_routed_back() {
    let n = naming(true);
    assert_eq!(n.expose_name(0, r#""echo""#), r#""a_echo""#);
    assert_eq!(n.expose_name(1, r#""get_sum\n""#), r#""mem-1_get_sum\n""#);
    // Split at the first `_`: the child's own underscores stay.
    assert_eq!(n.route_name("mem-1_read_graph"), Some((1, "read_graph")));
    assert_eq!(n.route_name("a_echo"), Some((0, "echo")));
    assert_eq!(n.route_name("b_echo"), None);
    assert_eq!(n.route_name("echo"), None);
    let line = r#"{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"name":"a_echo","arguments":{"message":"hi"}}}"#;
    let r = nested(line, "params", "name").unwrap();
    let (t, out) = n.unexpose(line, r, false).unwrap();
    assert_eq!(t, 0);
    assert_eq!(
        out,
        r#"{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"name":"echo","arguments":{"message":"hi"}}}"#
    );
    // An escaped prefix is decoded; the rest of the name is re-encoded.
    let line = r#"{"params":{"name":"\u0061_e\u00e9"}}"#;
    let r = nested(line, "params", "name").unwrap();
    assert_eq!(
        n.unexpose(line, r, false).unwrap().1,
        r#"{"params":{"name":"eé"}}"#
    );
    // `never`: no prefix, nothing routed by prefix.
    let n = naming(false);
    assert_eq!(n.expose_name(0, r#""echo""#), r#""echo""#);
    assert_eq!(n.route_name("a_echo"), None);
}

#[test]
fn uris_with_a_scheme_carry_the_target() {
    let n = naming(false);
    assert_eq!(
        n.expose_uri(1, r#""memo:insights""#),
        r#""mem-1+memo:insights""#
    );
    assert_eq!(
        n.expose_uri(0, r#""demo://resource/static/document/architecture.md""#),
        r#""a+demo://resource/static/document/architecture.md""#
    );
    // No scheme: unchanged (agentgateway leaves relative references alone).
    assert_eq!(n.expose_uri(0, r#""relative/path""#), r#""relative/path""#);
    assert_eq!(n.route_uri("a+demo://x/y+z"), Some((0, "demo://x/y+z")));
    assert_eq!(n.route_uri("zz+demo://x"), None);
    assert!(has_scheme("urn:uuid:1") && has_scheme("a.b-c+d:x"));
    assert!(!has_scheme("1abc:x") && !has_scheme("no scheme") && !has_scheme(":x"));
    let single = Naming {
        targets: vec!["a".into()],
        prefix_names: false,
        prefix_uris: false,
    };
    assert_eq!(single.expose_uri(0, r#""memo:x""#), r#""memo:x""#);
    assert_eq!(single.route_uri("a+memo:x"), None);
}

#[test]
fn lists_are_merged_by_splicing_items() {
    let n = naming(true);
    let a = r#"{"result":{"tools":[{"name":"echo","description":"Echo \"it\"","inputSchema":{"type":"object","x":1.10}},{"inputSchema":{},"name":"add"}],"nextCursor":"c"},"jsonrpc":"2.0","id":3}"#;
    let b = r#"{"jsonrpc":"2.0","id":3,"result":{"tools":[{"name":"read_graph","inputSchema":{ "type" : "object" }}]}}"#;
    let answers = [Answer { target: 0, line: a }, Answer { target: 1, line: b }];
    let merged = merge_list(&n, ListKind::Tools, "3", &answers, false).unwrap();
    assert_eq!(
        merged,
        r#"{"jsonrpc":"2.0","id":3,"result":{"tools":[{"name":"a_echo","description":"Echo \"it\"","inputSchema":{"type":"object","x":1.10}},{"inputSchema":{},"name":"a_add"},{"name":"mem-1_read_graph","inputSchema":{ "type" : "object" }}],"nextCursor":"eyJhIjoiYyJ9"}}"#
    );
    // The cursor is ringgate's: target a still has pages, from "c".
    assert_eq!(
        decode_cursor(&n, "eyJhIjoiYyJ9").unwrap(),
        vec![(0, r#""c""#.to_string())]
    );
    assert_eq!(names(ListKind::Tools, a), ["echo", "add"]);

    let r =
        r#"{"jsonrpc":"2.0","id":"x","result":{"resources":[{"uri":"demo://r/1","name":"r1"}]}}"#;
    let merged = merge_list(
        &n,
        ListKind::Resources,
        r#""x""#,
        &[Answer { target: 0, line: r }],
        false,
    )
    .unwrap();
    assert_eq!(
        merged,
        r#"{"jsonrpc":"2.0","id":"x","result":{"resources":[{"uri":"a+demo://r/1","name":"r1"}]}}"#
    );
}

#[test]
fn read_answers_expose_their_uris() {
    let n = naming(true);
    let line = r#"{"jsonrpc":"2.0","id":4,"result":{"contents":[{"uri":"demo://r/1","mimeType":"text/plain","text":"x\n"}, {"blob":"AA=="}]}}"#;
    assert_eq!(
        expose_read(&n, 0, line).unwrap(),
        r#"{"jsonrpc":"2.0","id":4,"result":{"contents":[{"uri":"a+demo://r/1","mimeType":"text/plain","text":"x\n"},{"blob":"AA=="}]}}"#
    );
    assert_eq!(
        expose_read(&n, 0, r#"{"jsonrpc":"2.0","id":4,"error":{}}"#),
        None
    );
}

#[test]
fn a_failing_child_fails_the_list_or_is_left_out() {
    let n = naming(true);
    let ok = r#"{"jsonrpc":"2.0","id":1,"result":{"prompts":[{"name":"p"}]}}"#;
    let err = r#"{"jsonrpc":"2.0","id":1,"error":{"code":-32603,"message":"MCP server exited"}}"#;
    let answers = [
        Answer {
            target: 0,
            line: ok,
        },
        Answer {
            target: 1,
            line: err,
        },
    ];
    assert_eq!(
        merge_list(&n, ListKind::Prompts, "1", &answers, false),
        Err(err.to_string())
    );
    assert_eq!(
        merge_list(&n, ListKind::Prompts, "1", &answers, true).unwrap(),
        r#"{"jsonrpc":"2.0","id":1,"result":{"prompts":[{"name":"a_p"}]}}"#
    );
    let both_bad = [
        Answer {
            target: 0,
            line: err,
        },
        Answer {
            target: 1,
            line: err,
        },
    ];
    assert_eq!(
        merge_list(&n, ListKind::Prompts, "1", &both_bad, true),
        Err(err.to_string())
    );
}

#[test]
fn clashes_name_every_target() {
    let per = vec![
        (0, vec!["echo".to_string(), "add".to_string()]),
        (1, vec!["echo".to_string(), "read_graph".to_string()]),
    ];
    assert_eq!(clashes(&per), vec![("echo".to_string(), vec![0, 1])]);
    assert!(clashes(&per[..1]).is_empty());
}

#[test]
fn initialize_answers_are_merged() {
    let n = naming(true);
    let a = r#"{"result":{"protocolVersion":"2025-06-18","capabilities":{"tools":{"listChanged":true},"logging":{},"completions":{}},"serverInfo":{"name":"everything","version":"1"},"instructions":"Use \"echo\".\n"},"jsonrpc":"2.0","id":0}"#;
    let b = r#"{"result":{"protocolVersion":"2025-03-26","capabilities":{"tools":{"listChanged":false,"x":1},"resources":{"subscribe":true}},"serverInfo":{"name":"memory","version":"2"}},"jsonrpc":"2.0","id":0}"#;
    let answers = [Answer { target: 0, line: a }, Answer { target: 1, line: b }];
    let m = merge_initialize(&n, "0", &answers, false).unwrap();
    assert_eq!(
        m,
        format!(
            r#"{{"jsonrpc":"2.0","id":0,"result":{{"protocolVersion":"2025-03-26","capabilities":{{"tools":{{"listChanged":true,"x":1}},"logging":{{}},"completions":{{}},"resources":{{"subscribe":true}}}},"serverInfo":{},"instructions":"[a]\nUse \"echo\".\n"}}}}"#,
            server_info()
        )
    );
    let v: serde_json::Value = serde_json::from_str(&m).unwrap();
    assert_eq!(v["result"]["serverInfo"]["name"], "ringgate");
    assert_eq!(v["result"]["instructions"], "[a]\nUse \"echo\".\n");
    let err = r#"{"jsonrpc":"2.0","id":0,"error":{"code":-32603,"message":"gone"}}"#;
    let with_err = [
        Answer { target: 0, line: a },
        Answer {
            target: 1,
            line: err,
        },
    ];
    assert_eq!(
        merge_initialize(&n, "0", &with_err, false),
        Err(err.to_string())
    );
    let open = merge_initialize(&n, "0", &with_err, true).unwrap();
    assert!(open.contains(r#""protocolVersion":"2025-06-18""#), "{open}");
}

#[test]
fn server_request_ids_round_trip_byte_exactly() {
    let n = naming(true);
    for raw in [
        "5",
        "-0",
        "1.10",
        r#""req\u0031""#,
        "123456789012345678901234567890",
    ] {
        let exposed = expose_request_id("mem-1", raw);
        assert_eq!(
            route_response_id(&n, &exposed),
            Some((1, raw.to_string())),
            "{raw}"
        );
    }
    assert_eq!(route_response_id(&n, r#""zz:5""#), None);
    assert_eq!(route_response_id(&n, r#""a:not json""#), None);
    assert_eq!(route_response_id(&n, "5"), None);
}
