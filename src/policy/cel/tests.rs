//! Unit tests of the CEL module.

use super::*;

mod compile_errors;
mod fast_path;

/// `reference/whois-alice.json`: tailscaled's answer for a user's node.
const WHOIS_ALICE: &str = r#"{
	"Node": {
		"ID": 7100000000000002,
		"StableID": "nAl1ceL4pt0p1CNTRL",
		"Name": "alice-laptop.tail1234.ts.net.",
		"User": 6478194012345601,
		"Key": "nodekey:ce8d3ad1ccb633ec7b70c17814a5c76ecd029685050d344745ba05870e587d59",
		"KeyExpiry": "2027-05-27T09:00:00Z",
		"Machine": "mkey:219e4d800da968d2a5fcb009c784f4746c7138edb9ee4844b739e830b05cf424",
		"DiscoKey": "discokey:fcfc49fc7f0aa4fb5dcea0e27d5814c989c73256443c60e5dee676e3e953850c",
		"Addresses": [
			"100.84.21.7/32",
			"fd7a:115c:a1e0::b901:2c4d/128"
		],
		"AllowedIPs": [
			"100.84.21.7/32",
			"fd7a:115c:a1e0::b901:2c4d/128"
		],
		"HomeDERP": 1,
		"Hostinfo": {
			"OS": "macOS",
			"Hostname": "Alices-MacBook-Pro"
		},
		"Created": "2026-05-27T09:00:00Z",
		"Cap": 133,
		"Online": true,
		"MachineAuthorized": true,
		"ComputedName": "alice-laptop",
		"ComputedNameWithHost": "alice-laptop (alices-macbook-pro)"
	},
	"UserProfile": {
		"ID": 6478194012345601,
		"LoginName": "alice@example.com",
		"DisplayName": "Alice Example",
		"ProfilePicURL": "https://avatars.example.com/u/alice.png"
	},
	"CapMap": {
		"example.com/cap/proxy": [
			{
				"role": "admin",
				"routes": [
					"/admin/*"
				]
			}
		]
	}
}"#;

/// `reference/whois-tagged.json`: a tagged node, `CapMap: null`.
const WHOIS_TAGGED: &str = r#"{
	"Node": {
		"ID": 7100000000000003,
		"StableID": "nC1Runn3r0001CNTRL",
		"Name": "ci-runner.tail1234.ts.net.",
		"User": 31234567890123456,
		"Key": "nodekey:5dfedd3b6bd47f6fa28ee15d969d5bb0ea53774d488bdaf9df1c6e0124b3ef22",
		"Machine": "mkey:6ca3bf39d976ab36a808531bd7ec2e4b4f8aae3a90134534d50f411d377a2c05",
		"DiscoKey": "discokey:5040b413b9dbc9cbd5ac0de04abb8877f09e4dcf57e415ea3f7f6bdacd5e7571",
		"Addresses": [
			"100.88.7.6/32",
			"fd7a:115c:a1e0::5801:706/128"
		],
		"AllowedIPs": [
			"100.88.7.6/32",
			"fd7a:115c:a1e0::5801:706/128"
		],
		"HomeDERP": 1,
		"Hostinfo": {
			"OS": "linux",
			"Hostname": "ci-runner-01"
		},
		"Created": "2026-05-27T09:00:00Z",
		"Cap": 133,
		"Tags": [
			"tag:ci",
			"tag:builder"
		],
		"Online": true,
		"MachineAuthorized": true,
		"ComputedName": "ci-runner",
		"ComputedNameWithHost": "ci-runner (ci-runner-01)"
	},
	"UserProfile": {
		"ID": 31234567890123456,
		"LoginName": "tagged-devices",
		"DisplayName": "Tagged Devices"
	},
	"CapMap": null
}"#;

/// The seed's `path`, as YAML's `|` block delivers it (trailing newline).
const SEED_PATH: &str = "\"/localapi/v0/whois?addr=\" + source.address\n";
/// The seed's `:authority`: YAML `'"local-tailscaled.sock"'`.
const SEED_AUTHORITY: &str = "\"local-tailscaled.sock\"";
const REQUEST: &[&str] = &["source", "request"];
const METADATA: &[&str] = &["source", "request", "response"];
const ACCESS_LOG: &[&str] = &["source", "request", "extauthz"];

const HEADERS: &[(&str, &[u8])] = &[
    ("Host", b"mcp.example"),
    ("Content-Type", b"application/json"),
    ("Accept", b"application/json"),
    ("accept", b"text/event-stream"),
    ("Mcp-Session-Id", b"abc123"),
];

fn request<'a>(addr: &'a str) -> Vars<'a> {
    Vars {
        source_address: addr,
        source_port: 51234,
        method: "POST",
        path: "/mcp?x=1",
        headers: HEADERS,
        response: None,
        extauthz: None,
        mcp: None,
    }
}

fn answer<'a>(body: &'a str) -> Vars<'a> {
    Vars {
        response: Some(ResponseVars {
            code: 200,
            body: body.as_bytes(),
            headers: &[("Content-Type", b"application/json")],
        }),
        ..request("100.84.21.7")
    }
}

/// Compiles (which must succeed) and evaluates.
fn eval(src: &str, allowed: &[&str], vars: &Vars) -> Result<Value, EvalError> {
    let expr = Expr::compile(src, allowed).unwrap_or_else(|e| panic!("{src}: {e}"));
    expr.eval(vars)
}

#[test]
fn expr_is_send_sync_and_clone() {
    fn check<T: Send + Sync + Clone + 'static>() {}
    check::<Expr>();
    check::<Value>();
}

#[test]
fn seed_path_and_authority() {
    let path = Expr::compile(SEED_PATH, REQUEST).unwrap();
    assert!(path.is_fast_path());
    assert_eq!(path.source(), SEED_PATH);
    assert_eq!(
        path.eval_string(&request("100.84.21.7")).unwrap(),
        "/localapi/v0/whois?addr=100.84.21.7"
    );
    let mut buf = String::from("key:");
    path.eval_string_into(&request("::1"), &mut buf).unwrap();
    assert_eq!(buf, "key:/localapi/v0/whois?addr=::1");
    let authority = Expr::compile(SEED_AUTHORITY, REQUEST).unwrap();
    assert!(authority.is_fast_path());
    assert_eq!(
        authority.eval_string(&request("100.84.21.7")).unwrap(),
        "local-tailscaled.sock"
    );
}

#[test]
fn ipv6_source_address() {
    let path = Expr::compile(SEED_PATH, REQUEST).unwrap();
    let vars = request("fd7a:115c:a1e0::b901:2c4d");
    let want = "/localapi/v0/whois?addr=fd7a:115c:a1e0::b901:2c4d";
    assert_eq!(path.eval_string(&vars).unwrap(), want);
    assert_eq!(
        path.eval_interpreted(&vars).unwrap(),
        Value::String(want.into())
    );
}

#[test]
fn seed_metadata_from_reference_answers() {
    let node = Expr::compile("json(response.body).Node.Name", METADATA).unwrap();
    let email = Expr::compile("json(response.body).UserProfile.LoginName", METADATA).unwrap();
    assert!(!node.is_fast_path());
    let alice = answer(WHOIS_ALICE);
    assert_eq!(
        node.eval_string(&alice).unwrap(),
        "alice-laptop.tail1234.ts.net."
    );
    assert_eq!(email.eval_string(&alice).unwrap(), "alice@example.com");
    let tagged = answer(WHOIS_TAGGED);
    assert_eq!(
        node.eval_string(&tagged).unwrap(),
        "ci-runner.tail1234.ts.net."
    );
    assert_eq!(email.eval_string(&tagged).unwrap(), "tagged-devices");
    let tags = eval("json(response.body).Node.Tags", METADATA, &tagged).unwrap();
    assert_eq!(
        tags,
        Value::List(vec![
            Value::String("tag:ci".into()),
            Value::String("tag:builder".into())
        ])
    );
}

#[test]
fn big_ids_stay_exact_integers() {
    let alice = answer(WHOIS_ALICE);
    let tagged = answer(WHOIS_TAGGED);
    let id = Expr::compile("json(response.body).Node.ID", METADATA).unwrap();
    assert_eq!(id.eval(&alice).unwrap(), Value::Int(7_100_000_000_000_002));
    assert_eq!(id.eval_string(&alice).unwrap(), "7100000000000002");
    let user = eval("json(response.body).UserProfile.ID", METADATA, &tagged).unwrap();
    assert_eq!(user, Value::Int(31_234_567_890_123_456));
    // 2^53 + 1 would round to 2^53 as a double.
    let cmp = Expr::compile(
        "json(response.body).Node.ID == 7100000000000002 && json('9007199254740993') == 9007199254740993",
        METADATA,
    )
    .unwrap();
    assert!(cmp.eval_bool(&alice).unwrap());
    assert_eq!(
        eval("json('18446744073709551615')", REQUEST, &alice).unwrap(),
        Value::UInt(u64::MAX)
    );
    assert_eq!(
        eval("json('[-3, 1.5, 2e3]')", REQUEST, &alice).unwrap(),
        Value::List(vec![
            Value::Int(-3),
            Value::Float(1.5),
            Value::Float(2000.0)
        ])
    );
}

#[test]
fn null_cap_map() {
    let tagged = answer(WHOIS_TAGGED);
    let cap = Expr::compile("json(response.body).CapMap", METADATA).unwrap();
    assert_eq!(cap.eval(&tagged).unwrap(), Value::Null);
    let is_null = Expr::compile("json(response.body).CapMap == null", METADATA).unwrap();
    assert!(is_null.eval_bool(&tagged).unwrap());
    assert!(!is_null.eval_bool(&answer(WHOIS_ALICE)).unwrap());
    let role = "json(response.body).CapMap['example.com/cap/proxy'][0].role";
    assert_eq!(
        eval(role, METADATA, &answer(WHOIS_ALICE)).unwrap(),
        Value::String("admin".into())
    );
    let err = cap.eval_string(&tagged).unwrap_err();
    assert!(err.to_string().contains("null"));
    assert_eq!(
        err,
        EvalError::WrongType {
            expected: "string",
            got: "null".into()
        }
    );
}

#[test]
fn bound_names_and_types_are_not_variables() {
    let vars = request("100.84.21.7");
    let cases: &[(&str, Value)] = &[
        (
            "request.headers.exists(k, k == 'accept')",
            Value::Bool(true),
        ),
        (
            "[1, 2].map(x, x * 2)",
            Value::List(vec![Value::Int(2), Value::Int(4)]),
        ),
        ("type(source.port) == int", Value::Bool(true)),
        (
            "optional.of(source.address).value()",
            Value::String("100.84.21.7".into()),
        ),
        ("has(request.headers.origin)", Value::Bool(false)),
        ("source.port", Value::Int(51234)),
    ];
    for (src, want) in cases {
        assert_eq!(&eval(src, REQUEST, &vars).unwrap(), want, "{src}");
    }
}

#[test]
fn json_of_garbage_is_an_eval_error() {
    let name = Expr::compile("json(response.body).Node.Name", METADATA).unwrap();
    for body in ["not json", "{\"Node\": ", "{} trailing", "", "\u{0}"] {
        let err = name.eval(&answer(body)).unwrap_err();
        assert!(matches!(err, EvalError::Execution(_)), "{body:?}: {err}");
        let err = err.to_string();
        assert!(err.contains("json"), "{body:?}: {err}");
    }
    let bytes = [b'"', 0xff, b'"'];
    let vars = Vars {
        response: Some(ResponseVars {
            code: 200,
            body: &bytes,
            headers: &[],
        }),
        ..request("100.84.21.7")
    };
    assert!(Expr::compile("json(response.body)", METADATA)
        .unwrap()
        .eval(&vars)
        .is_err());
    assert!(eval("json(1)", REQUEST, &vars).is_err());
}

#[test]
fn json_of_strings_copied_or_borrowed() {
    let vars = request("100.84.21.7");
    // A literal is not borrowed from the request, a concatenation is owned.
    assert_eq!(
        eval(r#"json('{"a": "x\\ty"}').a"#, REQUEST, &vars).unwrap(),
        Value::String("x\ty".into())
    );
    assert_eq!(
        eval(r#"json('{"a": ' + '"b"}').a"#, REQUEST, &vars).unwrap(),
        Value::String("b".into())
    );
    assert_eq!(
        eval(
            "json(request.headers['mcp-session-id'] + '')",
            REQUEST,
            &vars
        )
        .unwrap_err()
        .to_string(),
        "Error executing function 'json': expected value at line 1 column 1"
    );
}

#[test]
fn eval_bool_on_method() {
    let post = Expr::compile("request.method == \"POST\"", REQUEST).unwrap();
    assert!(post.eval_bool(&request("100.84.21.7")).unwrap());
    let get = Vars {
        method: "GET",
        ..request("100.84.21.7")
    };
    assert!(!post.eval_bool(&get).unwrap());
    let not_bool = Expr::compile("request.method", REQUEST).unwrap();
    assert!(not_bool.eval_bool(&get).is_err());
    let not_bool = Expr::compile("source.port", REQUEST).unwrap();
    assert!(not_bool.eval_bool(&get).is_err());
}

#[test]
fn request_headers_map() {
    let vars = request("100.84.21.7");
    let cases: &[(&str, &str)] = &[
        ("request.headers['content-type']", "application/json"),
        ("request.headers.host", "mcp.example"),
        // Repeated headers are joined in order.
        (
            "request.headers.accept",
            "application/json, text/event-stream",
        ),
        ("request.headers['mcp-session-id']", "abc123"),
        ("request['headers']['host']", "mcp.example"),
    ];
    for (src, want) in cases {
        assert_eq!(
            eval(src, REQUEST, &vars).unwrap().to_string(),
            *want,
            "{src}"
        );
    }
    assert!(eval("request.headers['Host']", REQUEST, &vars).is_err());
    assert_eq!(
        eval("size(request.headers)", REQUEST, &vars).unwrap(),
        Value::Int(4)
    );
    let answer = answer(WHOIS_ALICE);
    assert_eq!(
        eval("response.headers['content-type']", METADATA, &answer).unwrap(),
        Value::String("application/json".into())
    );
    assert_eq!(
        eval("response.code", METADATA, &answer).unwrap(),
        Value::Int(200)
    );
    assert_eq!(
        eval(
            "response.code == 200 && size(response.body) > 0",
            METADATA,
            &answer
        )
        .unwrap(),
        Value::Bool(true)
    );
}

#[test]
fn extauthz_values_for_access_log() {
    let meta = vec![
        (
            "tailscaleNode".to_owned(),
            Value::String("alice-laptop.tail1234.ts.net.".into()),
        ),
        ("id".to_owned(), Value::Int(7_100_000_000_000_002)),
    ];
    let vars = Vars {
        extauthz: Some(&meta),
        ..request("100.84.21.7")
    };
    let node = Expr::compile("extauthz.tailscaleNode", ACCESS_LOG).unwrap();
    assert_eq!(
        node.eval_string(&vars).unwrap(),
        "alice-laptop.tail1234.ts.net."
    );
    assert_eq!(
        eval("extauthz.id + 1", ACCESS_LOG, &vars).unwrap(),
        Value::Int(7_100_000_000_000_003)
    );
    assert_eq!(
        eval("extauthz", ACCESS_LOG, &vars).unwrap().get("id"),
        Some(&Value::Int(7_100_000_000_000_002))
    );
    // Denied or no authz: the access log leaves the field out.
    let denied = request("100.84.21.7");
    assert!(node.eval(&denied).is_err());
    let has = Expr::compile("has(extauthz.tailscaleNode)", ACCESS_LOG).unwrap();
    assert!(!has.eval_bool(&denied).unwrap());
    assert!(has.eval_bool(&vars).unwrap());
}

#[test]
fn value_display_and_json() {
    let v = eval(
        "{'b': [1, 2.5, true, null], 'a': b'\\x00\\xff', 'c': 'x'}",
        REQUEST,
        &request("100.84.21.7"),
    )
    .unwrap();
    assert_eq!(v.get("c").unwrap().to_string(), "x");
    assert_eq!(
        v.to_json().to_string(),
        r#"{"a":"AP8=","b":[1,2.5,true,null],"c":"x"}"#
    );
    assert_eq!(v.to_string(), v.to_json().to_string());
    assert_eq!(
        Value::UInt(u64::MAX).to_json().to_string(),
        "18446744073709551615"
    );
    assert_eq!(Value::Float(f64::NAN).to_json(), serde_json::json!("NaN"));
    // Bytes are standard base64 (`+` and `/`), padded.
    let b64 = |b: &[u8]| Value::Bytes(b.to_vec()).to_json();
    assert_eq!(b64(b"ab"), serde_json::json!("YWI="));
    assert_eq!(b64(b"abc"), serde_json::json!("YWJj"));
    assert_eq!(b64(b"a"), serde_json::json!("YQ=="));
    assert_eq!(b64(&[0xfb, 0xff]), serde_json::json!("+/8="));
    assert_eq!(b64(b""), serde_json::json!(""));
}

/// `extauthz.K` is read from the metadata directly; the interpreter
/// gives the same value, and an error where the key or metadata is absent.
#[test]
fn extauthz_key_agrees_with_interpreter() {
    let meta = vec![
        (
            "node".to_string(),
            Value::String("laptop.tail.ts.net.".into()),
        ),
        ("id".to_string(), Value::Int(7)),
    ];
    for (src, key) in [
        ("extauthz.node", Some("node")),
        ("extauthz.id", Some("id")),
        ("extauthz.missing", Some("missing")),
        ("extauthz.node + ''", None),
        ("extauthz['node']", None),
        ("has(extauthz.node)", None),
        ("source.address", None),
    ] {
        let e = Expr::compile(src, &["extauthz", "source"]).unwrap();
        assert_eq!(e.extauthz_key(), key, "{src}");
        let Some(key) = key else { continue };
        for extauthz in [Some(meta.as_slice()), None] {
            let vars = Vars {
                extauthz,
                ..Vars::default()
            };
            let direct = extauthz.and_then(|m| m.iter().find(|(k, _)| k == key));
            match (e.eval(&vars), direct) {
                (Ok(v), Some((_, want))) => assert_eq!(&v, want, "{src}"),
                (Err(_), None) => {}
                (got, want) => panic!("{src}: interpreter {got:?}, direct {want:?}"),
            }
        }
    }
}
