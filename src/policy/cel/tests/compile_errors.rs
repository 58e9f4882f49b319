//! Compile errors and the texts of compile and evaluation errors.

use super::*;

#[test]
fn syntax_error_is_a_compile_error() {
    let err = Expr::compile(" \n", REQUEST).unwrap_err();
    assert_eq!(err, CompileError::Empty);
    assert_eq!(err.to_string(), "empty expression");
    for src in [
        "\"/a\" +",
        "source.address +* 1",
        "json(response.body",
        "a b",
    ] {
        let err = Expr::compile(src, METADATA).unwrap_err();
        assert!(matches!(&err, CompileError::Syntax { errors, .. } if !errors.is_empty()));
        let err = err.to_string();
        assert!(err.contains("syntax error"), "{src}: {err}");
    }
}

#[test]
fn unknown_variable_is_a_compile_error() {
    let compile = |src: &str, allowed: &[&str]| Expr::compile(src, allowed).unwrap_err();
    let err = compile("\"/w?addr=\" + sauce.address", REQUEST);
    assert_eq!(
        err,
        CompileError::References(vec![ReferenceError::UnknownVariable {
            name: "sauce".into(),
            at: Some(Position {
                line: 1,
                column: 14
            }),
            allowed: vec!["source".into(), "request".into()],
        }])
    );
    let err = err.to_string();
    assert!(err.contains("`sauce`"), "{err}");
    assert!(err.contains("line 1, column 14"), "{err}");
    // `response` exists only for metadata, `extauthz` only for access logs.
    let err = compile("json(response.body).Node.Name", REQUEST).to_string();
    assert!(err.contains("`response`"), "{err}");
    let err = compile("extauthz.tailscaleNode", METADATA).to_string();
    assert!(err.contains("`extauthz`"), "{err}");
    let err = compile("source.adress", REQUEST);
    assert!(matches!(&err, CompileError::References(r)
        if matches!(&r[..], [ReferenceError::UnknownField { root, field, .. }]
            if root == "source" && field == "adress")));
    let err = err.to_string();
    assert!(err.contains("`source.adress`"), "{err}");
    let err = compile("a + b", &[]).to_string();
    assert!(err.contains("`a`") && err.contains("`b`"), "{err}");
}

/// The standard functions the `cel` crate gives only with its `regex` and
/// `chrono` features, which ringgate leaves off: a load error, where they
/// would otherwise fail on every request.
#[test]
fn functions_left_out_are_a_compile_error() {
    for (src, name, column) in [
        // The position is the call's opening parenthesis.
        ("request.path.matches('^/mcp')", "matches", 21),
        ("matches(request.path, '^/mcp')", "matches", 8),
        ("timestamp('2026-05-27T09:00:00Z')", "timestamp", 10),
        ("[1].exists(x, duration('1s') == x)", "duration", 23),
    ] {
        let err = Expr::compile(src, REQUEST).unwrap_err();
        assert!(matches!(&err, CompileError::References(r)
            if matches!(&r[..], [ReferenceError::UnsupportedFunction { name: n, .. }] if n == &name)));
        let err = err.to_string();
        assert!(err.contains(&format!("`{name}`")), "{src}: {err}");
        assert!(err.contains("not supported"), "{src}: {err}");
        assert!(
            err.contains(&format!("line 1, column {column}")),
            "{src}: {err}"
        );
    }
    // A variable or field of that name is not a call.
    let vars = request("100.84.21.7");
    assert_eq!(
        eval("[1].map(matches, matches + 1)", REQUEST, &vars).unwrap(),
        Value::List(vec![Value::Int(2)])
    );
    assert_eq!(
        eval("has(request.headers.timestamp)", REQUEST, &vars).unwrap(),
        Value::Bool(false)
    );
}

/// The messages config errors and logs show, word for word.
#[test]
fn error_messages() {
    let compile =
        |src: &str, allowed: &[&str]| Expr::compile(src, allowed).unwrap_err().to_string();
    for (got, want) in [
        (compile(" \n", REQUEST), "empty expression"),
        (compile("a + b", &[]), "unknown variable `a` at line 1, column 1 (variables here: none); unknown variable `b` at line 1, column 5 (variables here: none)"),
        (compile("source.adress", REQUEST), "unknown field `source.adress` at line 1, column 1 (fields of `source`: address, port)"),
        (compile("\"/w?addr=\" + sauce.address", REQUEST), "unknown variable `sauce` at line 1, column 14 (variables here: source, request)"),
        (compile("request.path.matches('x')", REQUEST), "function `matches` is not supported at line 1, column 21 (ringgate's CEL has no regular expressions)"),
        (compile(" a b\n", METADATA), "syntax error at line 1, column 4: extraneous input 'b' expecting <EOF> (in `a b`)"),
        (compile("\"/a\" +", REQUEST), r#"syntax error at line 1, column 7: mismatched input '<EOF>' expecting {'[', '{', '(', '.', '-', '!', 'true', 'false', 'null', NUM_FLOAT, NUM_INT, NUM_UINT, STRING, BYTES, IDENTIFIER} (in `"/a" +`)"#),
        (compile("[a b, c d]", REQUEST), "syntax error at line 1, column 4: extraneous input 'b' expecting {']', ','}; syntax error at line 1, column 7: mismatched input 'c' expecting {'==', '!=', 'in', '<', '<=', '>=', '>', '&&', '||', '[', ']', '.', ',', '-', '?', '+', '*', '/', '%'} (in `[a b, c d]`)"),
    ] {
        assert_eq!(got, want);
    }
    let tagged = answer(WHOIS_TAGGED);
    let expr = |src: &str| Expr::compile(src, METADATA).unwrap();
    for (got, want) in [
        (
            expr("json(response.body).CapMap")
                .eval_string(&tagged)
                .unwrap_err()
                .to_string(),
            "expected a string, got null",
        ),
        (
            expr(SEED_PATH).eval_bool(&tagged).unwrap_err().to_string(),
            "expected a bool, got string",
        ),
        (
            expr("source.port")
                .eval_bool(&tagged)
                .unwrap_err()
                .to_string(),
            "expected a bool, got int",
        ),
        (
            expr("request.headers['Host']")
                .eval(&tagged)
                .unwrap_err()
                .to_string(),
            "No such key: Host",
        ),
        (
            expr("json(1)").eval(&tagged).unwrap_err().to_string(),
            "found no matching overload for 'json' applied to '(int)'",
        ),
    ] {
        assert_eq!(got, want);
    }
}
