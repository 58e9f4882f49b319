//! `policies.mcpAuthorization`: rule shapes, and errors named by YAML path.

use super::*;

const GRANTS: &str = include_str!("../../../config/mcp-grants.yaml");
const RULES: &str = "binds[0].listeners[0].routes[0].policies.mcpAuthorization.rules";

/// The worked example with its rules replaced by `rules` (YAML list items,
/// indented under `rules:`).
fn with_rules(rules: &str) -> String {
    let start = GRANTS
        .find("          rules:\n")
        .expect("the example has rules");
    format!("{}          rules:\n{rules}", &GRANTS[..start])
}

#[test]
fn worked_example_loads() {
    let cfg = Config::from_yaml(GRANTS).expect("config/mcp-grants.yaml is valid");
    let route = &cfg.binds[0].listeners[0].routes[0];
    let authz = route.policies.mcp_authorization.as_ref().unwrap();
    assert_eq!(authz.rules.len(), 1);
    assert_eq!(authz.rules[0].kind, RuleKind::Allow);
    let meta = &route.policies.ext_authz.as_ref().unwrap().metadata;
    assert_eq!(meta[2].0, "tailscaleCaps");
}

#[test]
fn rule_shapes() {
    let cfg = Config::from_yaml(&with_rules(
        r#"          - 'mcp.tool.name == "echo"'
          - deny: 'mcp.tool.name == "printEnv"'
          - require: 'extauthz.tailscaleEmail != "tagged-devices"'
          - allow: 'has(mcp.prompt)'
"#,
    ))
    .expect("valid rules");
    let authz = cfg.binds[0].listeners[0].routes[0]
        .policies
        .mcp_authorization
        .clone()
        .unwrap();
    let kinds: Vec<_> = authz.rules.iter().map(|r| r.kind).collect();
    assert_eq!(
        kinds,
        [
            RuleKind::Allow,
            RuleKind::Deny,
            RuleKind::Require,
            RuleKind::Allow
        ]
    );
    assert_eq!(
        authz.rules[1].expr.source(),
        "mcp.tool.name == \"printEnv\""
    );
    // An empty list is valid: no rules, everything allowed.
    let cfg = Config::from_yaml(
        &with_rules("          []\n").replace("rules:\n          []", "rules: []"),
    )
    .expect("empty rules");
    let authz = cfg.binds[0].listeners[0].routes[0]
        .policies
        .mcp_authorization
        .clone()
        .unwrap();
    assert!(authz.rules.is_empty());
}

#[test]
fn bad_rules_are_named_by_path() {
    let errs = errors(&with_rules(
        r#"          - 'mcp.tool.name == "echo"'
          - deny: 'mcp.tool.name =='
          - require: 'tool.name == "x"'
          - {allow: 'true', deny: 'false'}
          - block: 'true'
          - 42
          - deny: 'extauthz.tailscaleCapz["x"].size() > 0'
          - 'mcp.tool.nme == "x" || mcp.tools.name == "y"'
          - allow: ['true']
"#,
    ));
    let want = [
        (
            format!("{RULES}[1].deny: invalid CEL expression: syntax error"),
            "",
        ),
        (
            format!("{RULES}[2].require: invalid CEL expression: unknown variable `tool`"),
            "variables here: source, request, extauthz, mcp",
        ),
        (
            format!("{RULES}[3]: a rule has exactly one of allow, deny, require"),
            "",
        ),
        (
            format!("{RULES}[4].block: unknown key"),
            "allow, deny, require",
        ),
        (format!("{RULES}[4]: a rule has exactly one"), ""),
        (format!("{RULES}[5]: expected a CEL string"), ""),
        (
            format!("{RULES}[6].deny: unknown variable `extauthz.tailscaleCapz`"),
            "tailscaleNode, tailscaleEmail, tailscaleCaps",
        ),
        (
            format!("{RULES}[7]: invalid CEL expression: unknown field `mcp.tools`"),
            "methodName, tool, prompt, resource",
        ),
        (
            format!("{RULES}[8].allow: expected a string, found a list"),
            "",
        ),
    ];
    for (prefix, also) in &want {
        assert!(
            errs.iter()
                .any(|e| e.starts_with(prefix) && e.contains(also)),
            "no error {prefix:?} ... {also:?} in {errs:#?}"
        );
    }
    // `mcp.tool.nme` is a typo below the checked level: it fails at run
    // time (and fails closed), so it is not reported.
    assert_eq!(errs.len(), want.len(), "{errs:#?}");
}

#[test]
fn rules_need_an_mcp_route() {
    let yaml = r#"
binds:
- port: 0
  listeners:
  - routes:
    - policies:
        directResponse: {body: ok, status: 200}
        mcpAuthorization:
          rules: ['true']
"#;
    assert_eq!(
        errors(yaml),
        ["binds[0].listeners[0].routes[0].policies.mcpAuthorization: mcpAuthorization needs a route with an MCP backend"]
    );
}

#[test]
fn extauthz_keys_are_checked_against_the_route() {
    // Without extAuthz on the route, no `extauthz.K` exists.
    let yaml = r#"
binds:
- port: 0
  listeners:
  - routes:
    - backends:
      - mcp: {targets: [{name: t, stdio: {cmd: node}}]}
      policies:
        mcpAuthorization:
          rules:
          - require: 'extauthz.tailscaleEmail.endsWith("@example.com")'
          - rules
"#;
    assert_eq!(
        errors(yaml),
        [
            "binds[0].listeners[0].routes[0].policies.mcpAuthorization.rules[0].require: unknown variable `extauthz.tailscaleEmail` (the route's extAuthz has no metadata)",
            "binds[0].listeners[0].routes[0].policies.mcpAuthorization.rules[1]: invalid CEL expression: unknown variable `rules` at line 1, column 1 (variables here: source, request, extauthz, mcp)",
        ]
    );
    // A broken extAuthz reports its own errors, not the rules'.
    let broken = GRANTS.replace("host: unix:/run", "host: run");
    let errs = errors(&broken);
    assert_eq!(errs.len(), 1, "{errs:#?}");
    assert!(errs[0].contains("extAuthz.host"), "{errs:#?}");
}
