//! Unit tests of `jsonrpc`: classification, and transparency (what the
//! child gets is what the client sent).

use super::*;

#[test]
fn classifies_client_messages() {
    let (m, batch) = parse_body(
        br#"{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"name":"echo","_meta":{"progressToken":"p1"}}}"#,
    )
    .unwrap();
    assert!(!batch);
    assert_eq!(
        m[0].kind,
        Kind::Request {
            id: "7".into(),
            method: "tools/call".into(),
            progress_token: Some("\"p1\"".into()),
            tool: Some("echo".into()),
        }
    );
    let (m, batch) = parse_body(
        b"[{\"jsonrpc\":\"2.0\",\"method\":\"notifications/initialized\"},\n {\"jsonrpc\":\"2.0\",\"id\":\"a\",\"result\":{}}]",
    )
    .unwrap();
    assert!(batch);
    assert_eq!(
        m[0].kind,
        Kind::Notification {
            method: "notifications/initialized".into()
        }
    );
    assert_eq!(m[1].kind, Kind::Response { id: "\"a\"".into() });
    assert!(!m[1].line.contains('\n'), "one line for the child");
}

#[test]
fn rejects_bad_bodies() {
    assert_eq!(parse_body(b"{not json").unwrap_err(), BodyError::Parse);
    for bad in [
        &br#"[]"#[..],
        br#"42"#,
        br#"{"id":1,"method":"x"}"#,
        br#"{"jsonrpc":"1.0","id":1,"method":"x"}"#,
        br#"{"jsonrpc":"2.0","id":{},"method":"x"}"#,
        br#"{"jsonrpc":"2.0","id":1}"#,
        br#"{"jsonrpc":"2.0","method":1}"#,
    ] {
        assert_eq!(
            parse_body(bad).unwrap_err(),
            BodyError::Invalid,
            "{:?}",
            String::from_utf8_lossy(bad)
        );
    }
}

#[test]
fn peeks_child_lines() {
    assert_eq!(
        peek(br#"{"jsonrpc":"2.0","id":7,"result":{"content":[]}}"#),
        Some(Outgoing::Response { id: "7".into() })
    );
    assert_eq!(
        peek(br#"{"method":"notifications/progress","params":{"progressToken":"p1","progress":1},"jsonrpc":"2.0"}"#),
        Some(Outgoing::Notification { method: "notifications/progress".into(), progress: Some("\"p1\"".into()) })
    );
    assert_eq!(
        peek(br#"{"jsonrpc":"2.0","id":0,"method":"roots/list"}"#),
        Some(Outgoing::Request {
            method: "roots/list".into()
        })
    );
    assert_eq!(peek(b"hello"), None);
    assert_eq!(peek(br#"{"jsonrpc":"2.0"}"#), None);
    assert_eq!(peek(br#"{"jsonrpc":"2.0","id":null,"result":{}}"#), None);
}

/// Found by `fuzz/jsonrpc_child`: a line that was a JSON array was read
/// as a struct written positionally, so `[7,null,null,{}]` passed for
/// the answer to request 7.
#[test]
fn only_objects_are_messages() {
    for line in [
        &br#"[7,null,null,{}]"#[..],
        br#"[0,"",null,"",2]"#,
        br#"[{"jsonrpc":"2.0","id":1,"result":{}}]"#,
        br#""x""#,
        b"",
    ] {
        assert_eq!(peek(line), None, "{}", String::from_utf8_lossy(line));
    }
    // By-position params are valid JSON-RPC but carry no progress token.
    assert_eq!(
        peek(br#" {"jsonrpc":"2.0","method":"n","params":["p1"]}"#),
        Some(Outgoing::Notification {
            method: "n".into(),
            progress: None
        })
    );
    assert_eq!(peek(br#"{"jsonrpc":"2.0","method":"n","params":5}"#), None);
}

/// A child's answer to a message it could not parse has a null id; it
/// used to count as "not JSON-RPC", which ended the session.
#[test]
fn null_id_errors_are_responses_to_no_request() {
    let line = br#"{"jsonrpc":"2.0","id":null,"error":{"code":-32700,"message":"Parse error"}}"#;
    assert_eq!(peek(line), Some(Outgoing::Response { id: "null".into() }));
}

#[test]
fn error_lines_and_versions() {
    let l = error_line(Some("\"x\""), INTERNAL_ERROR, "MCP server \"exited\"");
    let v: Value = serde_json::from_str(&l).unwrap();
    assert_eq!(v["id"], "x");
    assert_eq!(v["error"]["code"], -32603);
    assert_eq!(
        protocol_version(br#"{"jsonrpc":"2.0","id":1,"result":{"protocolVersion":"2025-06-18","capabilities":{}}}"#),
        Some("2025-06-18".into())
    );
}

/// Drops the whitespace outside strings: what "the same message, framed
/// differently" compares.
fn squeeze(text: &str) -> String {
    let (mut out, mut in_str, mut esc) = (String::new(), false, false);
    for c in text.chars() {
        if in_str {
            in_str = esc || c != '"';
            esc = !esc && c == '\\';
        } else if matches!(c, ' ' | '\t' | '\n' | '\r') {
            continue;
        } else {
            in_str = c == '"';
        }
        out.push(c);
    }
    out
}

fn one(body: &str) -> Message {
    let (mut m, batch) = parse_body(body.as_bytes()).unwrap_or_else(|e| panic!("{e:?}: {body}"));
    assert!(!batch && m.len() == 1);
    m.pop().unwrap()
}

/// Values keep their spelling: serde_json's `Value` would write the big
/// integer as `1.2345678901234568e+29`, `-0` as `-0.0`, `1.10` as `1.1`,
/// sort the keys and decode the escapes.
#[test]
fn values_reach_the_child_as_written() {
    let body = r#"{"method":"tools/call","params":{"name":"echo","arguments":{"zz":123456789012345678901234567890,"neg":-0,"dec":1.10,"exp":1E+2,"huge":1e400,"s":"caf\u00e9 \"q\" \/ \n\t\ud83d\ude00","m":"\ud800","aa":[-0.0,0e0]}},"jsonrpc":"2.0","id":9}"#;
    let m = one(body);
    assert_eq!(m.line, body);
    assert_eq!(
        m.kind,
        Kind::Request {
            id: "9".into(),
            method: "tools/call".into(),
            progress_token: None,
            tool: Some("echo".into()),
        }
    );
    // A big integer id keeps its spelling too; only the map key is
    // canonical (how the child's answer is matched).
    let body = r#"{"jsonrpc":"2.0","id":123456789012345678901234567890,"method":"ping"}"#;
    let m = one(body);
    assert_eq!(m.line, body);
    assert!(matches!(&m.kind, Kind::Request { id, .. } if id == "1.2345678901234568e+29"));
    let body = r#"{"jsonrpc":"2.0","id":-0,"result":{"v":-0}}"#;
    let m = one(body);
    assert_eq!(m.line, body);
    assert_eq!(m.kind, Kind::Response { id: "-0.0".into() });
}

#[test]
fn escaped_member_names_and_values_route_like_the_child_reads_them() {
    let body = r#"{"jsonrp\u0063":"2\u002e0","\u0069d":"\u0061","method":"tools\/call","params":{"n\u0061me":"\u00e9cho","_meta":{"progress\u0054oken":"t\u0031"}}}"#;
    let m = one(body);
    assert_eq!(m.line, body);
    assert_eq!(
        m.kind,
        Kind::Request {
            id: r#""a""#.into(),
            method: "tools/call".into(),
            progress_token: Some(r#""t1""#.into()),
            tool: Some("écho".into()),
        }
    );
}

#[test]
fn a_pretty_printed_body_becomes_one_line_of_the_same_tokens() {
    let body = "\r\n  {\n\t\"jsonrpc\" : \"2.0\",\r\n  \"id\":\t1 ,\n  \"method\": \"tools/call\",\n  \"params\": {\n    \"name\": \"echo\",\n    \"arguments\": { \"message\": \"two\\nlines\\r\\n\", \"n\" : 1.10 }\n  }\n}\n\n";
    let m = one(body);
    assert!(!m.line.contains(['\n', '\r']), "{:?}", m.line);
    assert_eq!(squeeze(&m.line), squeeze(body));
    // Only the line breaks changed, into spaces; the ends are trimmed.
    assert_eq!(m.line, body.trim().replace(['\n', '\r'], " "));
    assert!(m.line.contains(r#""two\nlines\r\n""#));
    // A raw line break inside a string is not JSON.
    assert_eq!(
        parse_body(b"{\"jsonrpc\":\"2.0\",\"method\":\"a\nb\"}").unwrap_err(),
        BodyError::Parse
    );
}

#[test]
fn batch_elements_are_slices_of_the_body() {
    let a = r#"{ "method" : "notifications/initialized","jsonrpc":"2.0" }"#;
    let b = "{\"id\":\"b\",\n\"jsonrpc\":\"2.0\",\"method\":\"tools/call\",\"params\":{\"arguments\":{\"z\":1.10,\"a\":-0},\"name\":\"echo\"}}";
    let c = r#"{"jsonrpc":"2.0","id":123456789012345678901234567890,"result":{"x":"\u00e9"}}"#;
    let body = format!("\n[ {a} ,\t{b}\r\n,{c}]  ");
    let (m, batch) = parse_body(body.as_bytes()).unwrap();
    assert!(batch);
    assert_eq!(m.len(), 3);
    assert_eq!(m[0].line, a);
    assert_eq!(m[1].line, b.replace('\n', " "));
    assert_eq!(m[2].line, c);
    assert_eq!(
        m[1].kind,
        Kind::Request {
            id: r#""b""#.into(),
            method: "tools/call".into(),
            progress_token: None,
            tool: Some("echo".into()),
        }
    );
    assert_eq!(
        parse_body(b"[{\"jsonrpc\":\"2.0\",\"method\":\"x\"}, 7]").unwrap_err(),
        BodyError::Invalid
    );
    assert_eq!(
        parse_body(b"[{\"jsonrpc\":\"2.0\",\"method\":\"x\"},]").unwrap_err(),
        BodyError::Parse
    );
}

/// A member routing reads, twice: ringgate and the child could read
/// different copies (serde_json keeps the last, others the first).
#[test]
fn duplicate_routed_members_are_refused() {
    for bad in [
        r#"{"jsonrpc":"2.0","id":1,"id":2,"method":"x"}"#,
        r#"{"jsonrpc":"2.0","id":1,"method":"x","method":"y"}"#,
        r#"{"jsonrpc":"2.0","jsonrpc":"2.0","method":"x"}"#,
        r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"echo","n\u0061me":"rm"}}"#,
        r#"{"jsonrpc":"2.0","id":1,"method":"x","params":{},"params":{}}"#,
        r#"{"jsonrpc":"2.0","id":1,"method":"x","params":{"_meta":{},"_meta":{}}}"#,
        r#"{"jsonrpc":"2.0","id":1,"method":"x","params":{"_meta":{"progressToken":1,"progressToken":2}}}"#,
        r#"{"jsonrpc":"2.0","id":1,"result":{},"result":{}}"#,
    ] {
        assert_eq!(
            parse_body(bad.as_bytes()).unwrap_err(),
            BodyError::Invalid,
            "{bad}"
        );
    }
    // Not JSON after the duplicate: still a parse error.
    assert_eq!(
        parse_body(br#"{"jsonrpc":"2.0","id":1,"id":2,"method":"x" oops"#).unwrap_err(),
        BodyError::Parse
    );
    // Members routing does not read are forwarded, duplicates and all.
    let body = r#"{"jsonrpc":"2.0","id":1,"method":"x","params":{"a":1,"a":2,"arguments":{"k":1,"k":2}},"extra":0,"extra":1}"#;
    assert_eq!(one(body).line, body);
}

#[test]
fn routed_members_are_as_strict_as_before() {
    for bad in [
        r#"{"jsonrpc":"2.0","id":1,"method":null}"#,
        r#"{"jsonrpc":"2.0","id":true,"method":"x"}"#,
        r#"{"jsonrpc":"2.0","id":[1],"method":"x"}"#,
        r#"{"jsonrpc":"2.0","id":1e400,"method":"x"}"#,
        r#"{"jsonrpc":"2.0","id":"\ud800","method":"x"}"#,
        r#"{"jsonrpc":"2.0","method":"\udc00"}"#,
        r#"{"jsonrpc":2.0,"method":"x"}"#,
        r#"{"jsonrpc":"2.0","method":"x","params":5}"#,
        r#"{"jsonrpc":"2.0","id":1,"method":"x","result":null}"#,
        r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"\ud800"}}"#,
        r#"{"jsonrpc":"2.0","id":1,"method":"x","params":{"_meta":{"progressToken":1e999}}}"#,
    ] {
        assert_eq!(
            parse_body(bad.as_bytes()).unwrap_err(),
            BodyError::Invalid,
            "{bad}"
        );
    }
    for bad in [
        &b""[..],
        b"  ",
        b"{",
        b"\xef\xbb\xbf{}",
        b"{\"a\":\"\xff\"}",
        b"[1,]",
    ] {
        assert_eq!(
            parse_body(bad).unwrap_err(),
            BodyError::Parse,
            "{:?}",
            String::from_utf8_lossy(bad)
        );
    }
    // Lenient where it always was: `params` null or by position, `_meta`
    // or `name` of another type, a token that is not a scalar.
    for (body, token, tool) in [
        (
            r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":null}"#,
            None,
            None,
        ),
        (
            r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":["echo"]}"#,
            None,
            None,
        ),
        (
            r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":1,"_meta":[]}}"#,
            None,
            None,
        ),
        (
            r#"{"jsonrpc":"2.0","id":1,"method":"ping","params":{"name":"x","_meta":{"progressToken":{}}}}"#,
            None,
            None,
        ),
        (
            r#"{"jsonrpc":"2.0","id":1,"method":"ping","params":{"_meta":{"progressToken":-7}}}"#,
            Some("-7"),
            None,
        ),
    ] {
        let m = one(body);
        assert_eq!(m.line, body);
        match m.kind {
            Kind::Request {
                progress_token: t,
                tool: n,
                ..
            } => {
                assert_eq!(t.as_deref(), token, "{body}");
                assert_eq!(n.as_deref(), tool, "{body}");
            }
            k => panic!("{k:?}"),
        }
    }
}

#[test]
fn canonical_keys_match_serde_json() {
    for raw in [
        "0",
        "7",
        "-7",
        "-0",
        "1.10",
        "1e2",
        "-1.5E-3",
        "18446744073709551615",
        "18446744073709551616",
        "-9223372036854775808",
        "-9223372036854775809",
        r#""a""#,
        r#""\u0061""#,
        r#""\/é\n""#,
        r#""""#,
    ] {
        let v: Value = serde_json::from_str(raw).unwrap();
        assert_eq!(canonical(raw), Some(v.to_string()), "{raw}");
    }
    for raw in ["null", "true", "{}", "[]", "1e400", r#""\ud800""#] {
        assert_eq!(canonical(raw), None, "{raw}");
    }
}
