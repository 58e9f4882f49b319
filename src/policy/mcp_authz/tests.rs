//! The decision order, combinations and failing expressions, as a table;
//! and the grant rule of the README over real whois answers.

use super::*;
use crate::policy::cel::{McpResource, McpVars, Value};

/// What a rule may read, as the config compiles it.
const VARS: &[&str] = &["source", "request", "extauthz", "mcp"];

fn rules(list: &[(RuleKind, &str)]) -> McpAuthorization {
    McpAuthorization {
        rules: list
            .iter()
            .map(|&(kind, src)| Rule {
                kind,
                expr: Expr::compile(src, VARS).unwrap_or_else(|e| panic!("{src}: {e}")),
            })
            .collect(),
    }
}

fn tool<'a>(name: &'a str, metadata: &'a [(String, Value)]) -> Vars<'a> {
    Vars {
        source_address: "100.84.21.7",
        method: "POST",
        path: "/mcp",
        extauthz: Some(metadata),
        mcp: Some(McpVars {
            method: "tools/call",
            resource: Some(McpResource {
                kind: McpKind::Tool,
                name,
                target: "everything",
            }),
        }),
        ..Vars::default()
    }
}

use RuleKind::{Allow as A, Deny as D, Require as R};

/// Expressions for the table, on the tool `echo`.
const T: &str = "true";
const F: &str = "false";
/// Fails: a key the metadata does not have.
const FAILS: &str = "extauthz.missing == 1";
/// Fails: not a boolean.
const NOT_BOOL: &str = "mcp.tool.name";
const IS_ECHO: &str = "mcp.tool.name == \"echo\"";
const IS_OTHER: &str = "mcp.tool.name == \"other\"";

#[test]
fn decision_order_table() {
    let table: &[(&[(RuleKind, &str)], Reason)] = &[
        // No rules, or only rules of one kind.
        (&[], Reason::NoAllowRules),
        (&[(A, T)], Reason::Allow(0)),
        (&[(A, F)], Reason::NoAllowMatched { failed: 0 }),
        (&[(A, F), (A, IS_ECHO)], Reason::Allow(1)),
        (&[(D, F)], Reason::NoAllowRules),
        (&[(D, T)], Reason::Deny(0)),
        (&[(R, T)], Reason::NoAllowRules),
        (&[(R, F)], Reason::Require(0)),
        // Deny beats allow, wherever it is written.
        (&[(A, T), (D, IS_ECHO)], Reason::Deny(1)),
        (&[(D, IS_OTHER), (A, T)], Reason::Allow(1)),
        // Require beats allow; deny is looked at before require.
        (&[(A, T), (R, F)], Reason::Require(1)),
        (&[(R, F), (D, T)], Reason::Deny(1)),
        (
            &[(R, T), (A, IS_OTHER)],
            Reason::NoAllowMatched { failed: 0 },
        ),
        (&[(R, T), (D, F), (A, IS_ECHO)], Reason::Allow(2)),
        // Failing expressions never grant.
        (&[(A, FAILS)], Reason::NoAllowMatched { failed: 1 }),
        (&[(A, NOT_BOOL)], Reason::NoAllowMatched { failed: 1 }),
        (&[(A, FAILS), (A, T)], Reason::Allow(1)),
        (&[(R, FAILS), (A, T)], Reason::RequireFailed(0)),
        (&[(R, NOT_BOOL)], Reason::RequireFailed(0)),
        (&[(A, T), (D, FAILS)], Reason::DenyFailed(1)),
        (&[(D, NOT_BOOL)], Reason::DenyFailed(0)),
        // A deny that holds is reported before a later failing one.
        (&[(D, T), (D, FAILS)], Reason::Deny(0)),
        // Reading another kind's fields fails: this request names a tool.
        (
            &[(A, "mcp.prompt.name == \"echo\"")],
            Reason::NoAllowMatched { failed: 1 },
        ),
        (&[(D, "mcp.resource.name == \"x\"")], Reason::DenyFailed(0)),
    ];
    for (list, want) in table {
        let authz = rules(list);
        let got = authz.decide(&tool("echo", &[]));
        assert_eq!(got, *want, "rules {list:?}");
        assert_eq!(authz.allows(&tool("echo", &[])), want.allowed(), "{list:?}");
    }
}

/// The metadata the README's extAuthz produces from a whois answer:
/// `tailscaleCaps: json(response.body).CapMap`.
fn caps(whois: &str) -> Vec<(String, Value)> {
    let expr = Expr::compile("json(response.body).CapMap", &["response"]).unwrap();
    let vars = Vars {
        response: Some(crate::policy::cel::ResponseVars {
            code: 200,
            body: whois.as_bytes(),
            headers: &[],
        }),
        ..Vars::default()
    };
    let v = expr.eval(&vars).expect("a null CapMap is a value too");
    vec![("tailscaleCaps".to_owned(), v)]
}

/// `reference/whois-alice.json`, its node trimmed: a user granted two tools
/// next to another capability.
const WHOIS_ALICE: &str = r#"{
	"Node": {"ID": 7100000000000002, "Name": "alice-laptop.tail1234.ts.net."},
	"UserProfile": {"ID": 6478194012345601, "LoginName": "alice@example.com"},
	"CapMap": {
		"example.com/cap/proxy": [{"role": "admin", "routes": ["/admin/*"]}],
		"example.com/cap/mcp": [{"tools": ["echo", "get-sum"]}]
	}
}"#;

const GRANT_RULE: &str = r#"extauthz.tailscaleCaps["example.com/cap/mcp"].exists(g, "*" in g.tools || mcp.tool.name in g.tools)"#;

#[test]
fn grants_from_whois_decide_per_tool() {
    let alice = caps(WHOIS_ALICE);
    let tagged = caps(r#"{"Node": {}, "CapMap": {"example.com/cap/mcp": [{"tools": ["*"]}]}}"#);
    let nobody = caps(r#"{"Node": {}, "CapMap": null}"#);
    assert_eq!(nobody[0].1, Value::Null);
    let other_cap = caps(r#"{"CapMap": {"example.com/cap/proxy": [{"role": "x"}]}}"#);
    let authz = rules(&[(A, GRANT_RULE)]);
    for (who, metadata, allowed) in [
        ("alice", &alice, &["echo", "get-sum"][..]),
        (
            "tagged",
            &tagged,
            &["echo", "get-sum", "anything", "printEnv"][..],
        ),
        ("nobody", &nobody, &[][..]),
        ("other cap", &other_cap, &[][..]),
    ] {
        for name in ["echo", "get-sum", "anything", "printEnv"] {
            let want = allowed.contains(&name);
            assert_eq!(
                authz.allows(&tool(name, metadata)),
                want,
                "{who} calling {name}"
            );
        }
    }
    // A null CapMap indexed fails: as a deny rule, that denies.
    let deny = rules(&[(
        D,
        r#"!extauthz.tailscaleCaps["example.com/cap/mcp"].exists(g, mcp.tool.name in g.tools)"#,
    )]);
    assert_eq!(deny.decide(&tool("echo", &nobody)), Reason::DenyFailed(0));
    assert_eq!(deny.decide(&tool("echo", &alice)), Reason::NoAllowRules);
    assert_eq!(deny.decide(&tool("printEnv", &alice)), Reason::Deny(0));
}

#[test]
fn grant_values_with_globs() {
    let metadata = caps(
        r#"{"CapMap": {"example.com/cap/mcp": [{"tools": ["github_read_*", "get-?um"]}, {"tools": ["echo"]}]}}"#,
    );
    let authz = rules(&[(
        A,
        r#"extauthz.tailscaleCaps["example.com/cap/mcp"].exists(g, g.tools.exists(t, globMatch(t, mcp.tool.name)))"#,
    )]);
    for (name, want) in [
        ("github_read_issue", true),
        ("github_read_", true),
        ("github_write_issue", false),
        ("get-sum", true),
        ("get-sums", false),
        ("echo", true),
        ("echo2", false),
    ] {
        assert_eq!(authz.allows(&tool(name, &metadata)), want, "{name}");
    }
}

#[test]
fn mcp_variables_read_as_documented() {
    let vars = Vars {
        mcp: Some(McpVars {
            method: "resources/read",
            resource: Some(McpResource {
                kind: McpKind::Resource,
                name: "test://static/resource/1",
                target: "everything",
            }),
        }),
        ..Vars::default()
    };
    let authz = rules(&[
        (R, r#"mcp.methodName == "resources/read""#),
        (R, r#"mcp.resource.target == "everything""#),
        (
            R,
            r#"mcp.resource == {"name": "test://static/resource/1", "target": "everything"}"#,
        ),
        (R, r#"mcp.resource.name.startsWith("test://static/")"#),
        (R, r#"!has(mcp.tool)"#),
        (R, r#"mcp.methodName == mcp["methodName"]"#),
    ]);
    assert_eq!(authz.decide(&vars), Reason::NoAllowRules);
}

#[test]
fn list_and_call_methods() {
    assert_eq!(governed_call("tools/call"), Some((McpKind::Tool, "name")));
    assert_eq!(
        governed_call("resources/read"),
        Some((McpKind::Resource, "uri"))
    );
    assert_eq!(governed_call("tools/list"), None);
    assert_eq!(governed_call("initialize"), None);
    let l = governed_list("resources/templates/list").unwrap();
    assert_eq!(
        (l.array, l.name_field),
        ("resourceTemplates", "uriTemplate")
    );
    assert_eq!(
        governed_list("tools/list").unwrap().use_method,
        "tools/call"
    );
    assert_eq!(governed_list("tools/call"), None);
}
