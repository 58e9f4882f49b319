use super::*;

const SEED: &str = include_str!("../../config/tailscale.yaml");

fn errors(yaml: &str) -> Vec<String> {
    match Config::from_yaml(yaml) {
        Ok(_) => panic!("config unexpectedly valid:\n{yaml}"),
        Err(e) => e.0.iter().map(|e| e.to_string()).collect(),
    }
}

#[test]
fn seed_config_loads_unchanged() {
    let cfg = Config::from_yaml(SEED).expect("seed config is valid");
    assert_eq!(cfg.binds.len(), 1);
    assert_eq!(cfg.binds[0].port, 3000);
    let l = &cfg.binds[0].listeners[0];
    assert_eq!(l.name, "default");
    let r = &l.routes[0];
    assert_eq!(r.name, "application");
    let Some(Backend::Mcp(mcp)) = &r.backend else {
        panic!("mcp backend expected")
    };
    assert_eq!(mcp.targets.len(), 1);
    assert_eq!(mcp.targets[0].name, "everything");
    assert_eq!(mcp.targets[0].cmd, "npx");
    assert_eq!(
        mcp.targets[0].args,
        ["@modelcontextprotocol/server-everything"]
    );
    assert!(!mcp.is_multiplexing() && !mcp.prefixes_names());
    // One target with the default modes: the backend is its target, so
    // sessions and pools keep today's keys.
    assert_eq!(mcp.key(), mcp.targets[0].key());
    let authz = r.policies.ext_authz.as_ref().unwrap();
    assert_eq!(authz.host, "unix:/run/tailscale/tailscaled.sock");
    assert_eq!(
        authz.path.source().trim(),
        "\"/localapi/v0/whois?addr=\" + source.address"
    );
    assert_eq!(authz.add_request_headers.len(), 1);
    assert_eq!(authz.add_request_headers[0].0, ":authority");
    assert_eq!(
        authz.add_request_headers[0].1.source(),
        "\"local-tailscaled.sock\""
    );
    assert!(authz.path.is_fast_path() && authz.add_request_headers[0].1.is_fast_path());
    assert!(!authz.needs_headers);
    assert_eq!(authz.metadata[0].0, "tailscaleNode");
    assert_eq!(authz.metadata[1].0, "tailscaleEmail");
    let cors = r.policies.cors.as_ref().unwrap();
    assert_eq!(cors.allow_origins, ["*"]);
    assert_eq!(cors.expose_headers, ["Mcp-Session-Id"]);
    assert_eq!(cfg.access_log.add[0].0, "tailscale.node");
    assert_eq!(cfg.access_log.add[1].1.source(), "extauthz.tailscaleEmail");
}

#[test]
fn unknown_policy_is_named_by_path() {
    let yaml = SEED.replace("        cors:", "        jwtAuth: {}\n        cors:");
    let errs = errors(&yaml);
    assert!(
        errs.iter().any(|e| e
            .starts_with("binds[0].listeners[0].routes[0].policies.jwtAuth: unknown key")),
        "{errs:?}"
    );
}

#[test]
fn every_error_is_reported_at_once() {
    let yaml = r#"
config:
  workerThreads: "two"
  http:
    maxBodyBytes: -1
    idleTimeout: 10parsecs
binds:
- port: 70000
  listeners:
  - name: a
    protocol: HTTPS
    routes:
    - matches:
      - path: {pathPrefix: mcp}
      policies:
        extAuthz:
          host: nowhere
          protocol: {grpc: {}}
  - name: a
bogus: 1
"#;
    let errs = errors(yaml);
    let want = [
        "config.workerThreads: expected a non-negative integer",
        "config.http.maxBodyBytes: expected a non-negative integer",
        "config.http.idleTimeout: expected a duration",
        "binds[0].port: 70000 is out of range",
        "binds[0].listeners[0].protocol: protocol \"HTTPS\" is not supported",
        "binds[0].listeners[0].routes[0].matches[0].path.pathPrefix: a path must start with '/'",
        "binds[0].listeners[0].routes[0].policies.extAuthz.host: \"nowhere\" is neither",
        "binds[0].listeners[0].routes[0].policies.extAuthz.protocol.grpc: unknown key",
        "bogus: unknown key",
    ];
    for w in want {
        assert!(
            errs.iter().any(|e| e.starts_with(w)),
            "missing {w:?} in {errs:#?}"
        );
    }
}

#[test]
fn duplicate_listener_names_and_ports() {
    let yaml = r#"
binds:
- port: 8080
  listeners: [{name: a}]
- port: 8080
  listeners: [{name: a}]
"#;
    let errs = errors(yaml);
    assert!(
        errs.iter()
            .any(|e| e.starts_with("binds[1].port: port 8080 is bound twice")),
        "{errs:?}"
    );
    assert!(
        errs.iter()
            .any(|e| e.starts_with("binds[1].listeners[0].name: duplicate listener name")),
        "{errs:?}"
    );
}

#[test]
fn wrong_types_and_missing_keys() {
    let errs = errors("binds:\n- listeners: {}\n");
    assert!(
        errs.iter()
            .any(|e| e == "binds[0].port: required key is missing"),
        "{errs:?}"
    );
    assert!(
        errs.iter()
            .any(|e| e.starts_with("binds[0].listeners: expected a list, found a mapping")),
        "{errs:?}"
    );
    assert!(errors("").iter().any(|e| e.contains("empty")));
    assert!(errors("binds: [")
        .iter()
        .any(|e| e.starts_with("invalid YAML")));
}

#[test]
fn route_matching_prefers_specific_routes() {
    let yaml = r#"
binds:
- port: 0
  listeners:
  - routes:
    - name: all
      policies: {directResponse: {body: all}}
    - name: mcp
      matches: [{path: {pathPrefix: /mcp}}]
      policies: {directResponse: {body: mcp}}
    - name: exact
      matches: [{path: {exact: /mcp/x}}]
      policies: {directResponse: {body: exact}}
"#;
    let cfg = Config::from_yaml(yaml).unwrap();
    let l = &cfg.binds[0].listeners[0];
    let name = |p: &str| l.route(p).map(|r| r.name.as_str());
    assert_eq!(name("/"), Some("all"));
    assert_eq!(name("/mcpx"), Some("all"));
    assert_eq!(name("/mcp"), Some("mcp"));
    assert_eq!(name("/mcp?x=1"), Some("mcp"));
    assert_eq!(name("/mcp/y"), Some("mcp"));
    assert_eq!(name("/mcp/x"), Some("exact"));
}

#[test]
fn limits_and_extensions_parse() {
    let yaml = r#"
config:
  workerThreads: 2
  ioDriver: epoll
  logging: {level: debug, format: json}
  http:
    maxHeadBytes: 4096
    headerReadTimeout: 500ms
    idleTimeout: 2m
binds:
- port: 0
  address: 127.0.0.1
  listeners: [{name: x}]
"#;
    let cfg = Config::from_yaml(yaml).unwrap();
    assert_eq!(cfg.worker_threads, Some(2));
    assert_eq!(cfg.io_driver, IoDriver::Epoll);
    assert_eq!(cfg.logging.format, LogFormat::Json);
    assert_eq!(cfg.limits.max_head_bytes, 4096);
    assert_eq!(cfg.limits.header_read_timeout, Duration::from_millis(500));
    assert_eq!(cfg.limits.idle_timeout, Duration::from_secs(120));
    assert_eq!(cfg.binds[0].address, Some("127.0.0.1".parse().unwrap()));
}

#[test]
fn mcp_request_timeout_parses_and_defaults() {
    let base = "binds:\n- port: 0\n  listeners: [{name: x}]\n";
    let cfg = Config::from_yaml(base).unwrap();
    assert_eq!(
        cfg.mcp.request_timeout,
        Duration::from_millis(DEFAULT_REQUEST_TIMEOUT_MS)
    );
    let cfg = Config::from_yaml(&format!(
        "config:\n  mcp: {{requestTimeout: 1500ms}}\n{base}"
    ))
    .unwrap();
    assert_eq!(cfg.mcp.request_timeout, Duration::from_millis(1500));
    for bad in ["0s", "soon", "-1"] {
        let errs = errors(&format!(
            "config:\n  mcp: {{requestTimeout: {bad}}}\n{base}"
        ));
        assert!(
            errs.iter()
                .any(|e| e.starts_with("config.mcp.requestTimeout: ")),
            "{bad}: {errs:?}"
        );
    }
}

#[test]
fn listener_hostnames() {
    let l = Listener {
        name: "x".into(),
        hostname: Some("*.example.com".into()),
        routes: vec![],
    };
    assert!(l.matches_host("a.example.com:8080"));
    assert!(!l.matches_host("example.com"));
    assert!(!l.matches_host("aexample.com"));
    assert_eq!(strip_port("[::1]:80"), "[::1]");
}

#[test]
fn bad_cel_is_a_load_error_naming_its_path() {
    let yaml = SEED
        .replace(
            "json(response.body).Node.Name",
            "json(response.body).Node.Name +",
        )
        .replace("+ source.address", "+ sauce.address")
        .replace("extauthz.tailscaleEmail", "extauthz.tailscaleEmail ==");
    let errs = errors(&yaml);
    for want in [
        "binds[0].listeners[0].routes[0].policies.extAuthz.protocol.http.metadata.tailscaleNode: invalid CEL expression: syntax error",
        "binds[0].listeners[0].routes[0].policies.extAuthz.protocol.http.path: invalid CEL expression: unknown variable `sauce`",
        "frontendPolicies.accessLog.add[tailscale.email]: invalid CEL expression",
    ] {
        assert!(errs.iter().any(|e| e.starts_with(want)), "missing {want:?} in {errs:#?}");
    }
}

#[test]
fn ext_authz_options() {
    let yaml = SEED.replace(
        "          protocol:",
        "          failureMode: {denyWithStatus: 503}\n          timeout: 250ms\n          cache: {ttl: 1m, negativeTtl: 2s, maxEntries: 7, key: source.address}\n          protocol:",
    );
    let cfg = Config::from_yaml(&yaml).unwrap();
    let a = cfg.binds[0].listeners[0].routes[0]
        .policies
        .ext_authz
        .as_ref()
        .unwrap();
    assert_eq!(a.failure_mode, FailureMode::DenyWithStatus(503));
    assert_eq!(a.timeout, Duration::from_millis(250));
    assert_eq!(a.cache.ttl, Duration::from_secs(60));
    assert_eq!(a.cache.negative_ttl, Duration::from_secs(2));
    assert_eq!(a.cache.max_entries, 7);
    assert_eq!(a.cache.key.as_ref().unwrap().source(), "source.address");
    assert_eq!(a.connections, AuthzConnections::default());
    let limited = SEED.replace(
        "          protocol:",
        "          connections: {max: 4, maxWaiting: 0}\n          protocol:",
    );
    let cfg = Config::from_yaml(&limited).unwrap();
    let a = cfg.binds[0].listeners[0].routes[0]
        .policies
        .ext_authz
        .as_ref()
        .unwrap();
    assert_eq!(
        a.connections,
        AuthzConnections {
            max: 4,
            max_waiting: 0
        }
    );
    let none = SEED.replace(
        "          protocol:",
        "          connections: {max: 0, maxIdle: 1}\n          protocol:",
    );
    let errs = errors(&none);
    assert!(
        errs.iter()
            .any(|e| e.contains("extAuthz.connections.max: ")),
        "{errs:#?}"
    );
    assert!(
        errs.iter()
            .any(|e| e.contains("extAuthz.connections.maxIdle: unknown key")),
        "{errs:#?}"
    );
    let bad = SEED.replace(
        "          protocol:",
        "          failureMode: maybe\n          protocol:",
    );
    assert!(errors(&bad)
        .iter()
        .any(|e| e.contains("extAuthz.failureMode: expected deny, allow")));
}

const TWO_TARGETS: &str = r#"
binds:
- port: 3000
  listeners:
  - routes:
    - backends:
      - mcp:
          targets:
          - name: everything
            stdio: {cmd: node, args: [a.js]}
          - name: memory
            stdio: {cmd: node, args: [b.js], env: {MEMORY_FILE_PATH: /tmp/m.json}}
"#;

fn only_backend(cfg: &Config) -> &McpBackend {
    let Some(Backend::Mcp(m)) = &cfg.binds[0].listeners[0].routes[0].backend else {
        panic!("mcp backend expected")
    };
    m
}

#[test]
fn several_targets_load_with_agentgateway_defaults() {
    let cfg = Config::from_yaml(TWO_TARGETS).expect("valid");
    let m = only_backend(&cfg);
    let names: Vec<&str> = m.targets.iter().map(|t| t.name.as_str()).collect();
    assert_eq!(names, ["everything", "memory"]);
    assert_eq!(m.prefix_mode, PrefixMode::Conditional);
    assert_eq!(m.failure_mode, TargetFailureMode::FailClosed);
    assert!(m.is_multiplexing() && m.prefixes_names() && m.prefixes_uris());
    assert_eq!(
        m.targets[1].env,
        [("MEMORY_FILE_PATH".into(), "/tmp/m.json".into())]
    );

    let y = TWO_TARGETS.replace(
        "          targets:",
        "          prefixMode: never\n          failureMode: failOpen\n          targets:",
    );
    let cfg = Config::from_yaml(&y).expect("valid");
    let m = only_backend(&cfg);
    assert_eq!(m.prefix_mode, PrefixMode::Never);
    assert_eq!(m.failure_mode, TargetFailureMode::FailOpen);
    assert!(!m.prefixes_names() && m.prefixes_uris());
    assert_ne!(
        m.key(),
        only_backend(&Config::from_yaml(TWO_TARGETS).unwrap()).key()
    );
}

#[test]
fn prefix_mode_always_with_one_target_prefixes() {
    let y = SEED.replace(
        "          targets:",
        "          prefixMode: always\n          targets:",
    );
    let cfg = Config::from_yaml(&y).expect("valid");
    let m = only_backend(&cfg);
    assert!(m.prefixes_names() && m.prefixes_uris() && m.is_multiplexing());
}

#[test]
fn target_errors_name_their_path() {
    let at = "binds[0].listeners[0].routes[0].backends[0].mcp";
    let dup = TWO_TARGETS.replace("name: memory", "name: everything");
    let errs = errors(&dup);
    assert!(
        errs.iter().any(|e| e.starts_with(&format!(
            "{at}.targets[1].name: duplicate MCP target name \"everything\""
        ))),
        "{errs:?}"
    );
    for bad in ["my_server", "a+b", "", "sp ace"] {
        let y = TWO_TARGETS.replace("name: memory", &format!("name: {bad:?}"));
        let errs = errors(&y);
        assert!(
            errs.iter()
                .any(|e| e.starts_with(&format!("{at}.targets[1].name: invalid MCP target name"))),
            "{bad}: {errs:?}"
        );
    }
    let y = TWO_TARGETS.replace("          targets:", "          prefixMode: sometimes\n          failureMode: failSoft\n          statefulMode: stateless\n          targets:");
    let errs = errors(&y);
    for w in [
        format!("{at}.prefixMode: unknown prefixMode \"sometimes\""),
        format!("{at}.failureMode: unknown failureMode \"failSoft\""),
        format!("{at}.statefulMode: unknown key"),
    ] {
        assert!(
            errs.iter().any(|e| e.starts_with(&w)),
            "missing {w:?} in {errs:?}"
        );
    }
    let errs = errors("binds:\n- port: 1\n  listeners:\n  - routes:\n    - backends:\n      - mcp: {targets: []}\n");
    assert!(
        errs.iter()
            .any(|e| e.starts_with(&format!("{at}.targets: at least one MCP target"))),
        "{errs:?}"
    );
}

#[test]
fn top_level_mcp_shorthand_loads_as_one_route() {
    let y = r#"
mcp:
  port: 3001
  prefixMode: always
  targets:
  - name: a
    stdio: {cmd: node, args: [a.js]}
  - name: b
    stdio: {cmd: node, args: [b.js]}
  policies:
    cors: {allowOrigins: ["*"]}
"#;
    let cfg = Config::from_yaml(y).expect("valid");
    assert_eq!(cfg.binds.len(), 1);
    assert_eq!(cfg.binds[0].port, 3001);
    let r = &cfg.binds[0].listeners[0].routes[0];
    assert!(r.matches.is_empty(), "every path");
    assert!(r.policies.cors.is_some());
    let m = only_backend(&cfg);
    assert_eq!(m.targets.len(), 2);
    assert_eq!(m.prefix_mode, PrefixMode::Always);

    // The default port is agentgateway's.
    let cfg = Config::from_yaml("mcp:\n  targets: [{name: a, stdio: {cmd: node}}]\n").unwrap();
    assert_eq!(cfg.binds[0].port, 3000);

    // Keys ringgate does not implement are refused by name and path.
    let errs = errors("mcp:\n  gateways: [default]\n  statefulMode: stateless\n  targets: [{name: a, stdio: {cmd: node}}]\n  policies: {jwtAuth: {}}\n");
    for w in [
        "mcp.gateways: unknown key",
        "mcp.statefulMode: unknown key",
        "mcp.policies.jwtAuth: unknown key",
    ] {
        assert!(
            errs.iter().any(|e| e.starts_with(w)),
            "missing {w:?} in {errs:?}"
        );
    }
    // With binds too: a second bind, and ports must differ.
    let both = format!(
        "{}\nmcp:\n  port: 3000\n  targets: [{{name: a, stdio: {{cmd: node}}}}]\n",
        TWO_TARGETS.trim()
    );
    let errs = errors(&both);
    assert!(
        errs.iter().any(|e| e.contains("port 3000 is bound twice")),
        "{errs:?}"
    );
}
mod mcp_authz;
