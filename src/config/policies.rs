//! The route policies' YAML: `cors`, `extAuthz` and `mcpAuthorization`.

use serde_yaml_ng::Value;

use super::yaml::{expr, index_path, opt_str, string_list, string_map, ConfigErrors, Node};
use super::*;

/// A route's `policies`.
pub fn route_policies(node: Node, errs: &mut ConfigErrors) -> Policies {
    let mut out = Policies::default();
    let keys = ["cors", "extAuthz", "directResponse", "mcpAuthorization"];
    let Some(m) = node.map(errs, &keys) else {
        return out;
    };
    if let Some((v, p)) = m.get("cors") {
        out.cors = cors(Node::new(v, &p), errs);
    }
    if let Some((v, p)) = m.get("extAuthz") {
        out.ext_authz = ext_authz(Node::new(v, &p), errs);
    }
    if let Some((v, p)) = m.get("directResponse") {
        let node = Node::new(v, &p);
        if let Some(d) = node.map(errs, &["body", "status"]) {
            let status = d
                .get("status")
                .and_then(|(v, p)| Node::new(v, &p).uint(errs, 200, 599))
                .unwrap_or(200) as u16;
            let body = opt_str(&d, "body", errs).unwrap_or_default();
            out.direct_response = Some(DirectResponse { status, body });
        }
    }
    if let Some((v, p)) = m.get("mcpAuthorization") {
        // The metadata keys rules may read; unknown when extAuthz is broken
        // (its own errors are reported), so its keys are not checked then.
        let keys = match (&out.ext_authz, m.has("extAuthz")) {
            (Some(a), _) => Some(a.metadata.iter().map(|(k, _)| k.as_str()).collect()),
            (None, false) => Some(Vec::new()),
            (None, true) => None,
        };
        out.mcp_authorization = mcp_authorization(Node::new(v, &p), keys.as_deref(), errs);
    }
    out
}

pub fn cors(node: Node, errs: &mut ConfigErrors) -> Option<Cors> {
    let m = node.map(
        errs,
        &[
            "allowOrigins",
            "allowHeaders",
            "allowMethods",
            "exposeHeaders",
            "allowCredentials",
            "maxAge",
        ],
    )?;
    let list = |key: &str, errs: &mut ConfigErrors| {
        m.get(key)
            .map(|(v, p)| string_list(Node::new(v, &p), errs))
            .unwrap_or_default()
    };
    let mut out = Cors {
        allow_origins: list("allowOrigins", errs),
        allow_headers: list("allowHeaders", errs),
        allow_methods: list("allowMethods", errs),
        expose_headers: list("exposeHeaders", errs),
        ..Cors::default()
    };
    if let Some((v, p)) = m.get("allowCredentials") {
        out.allow_credentials = Node::new(v, &p).bool(errs).unwrap_or(false);
    }
    if let Some((v, p)) = m.get("maxAge") {
        // agentgateway writes maxAge as a duration; a bare number is seconds.
        out.max_age = match v {
            Value::Number(n) => n.as_u64().map(std::time::Duration::from_secs),
            _ => Node::new(v, &p).duration(errs),
        };
    }
    for (i, o) in out.allow_origins.iter().enumerate() {
        if o != "*" && !o.contains("://") {
            errs.push(
                &format!("{}.allowOrigins[{i}]", node.path),
                format!("{o:?} is not an origin (scheme://host[:port]) or \"*\""),
            );
        }
    }
    Some(out)
}

/// Variables a check-request expression may read.
const REQUEST_VARS: &[&str] = &["source", "request"];
/// `metadata` also sees the authorization answer.
const METADATA_VARS: &[&str] = &["source", "request", "response"];

pub fn ext_authz(node: Node, errs: &mut ConfigErrors) -> Option<ExtAuthz> {
    let m = node.map(
        errs,
        &[
            "host",
            "protocol",
            "failureMode",
            "timeout",
            "cache",
            "connections",
        ],
    )?;
    let before = errs.0.len();
    let host = match m.require(errs, "host") {
        Some((v, p)) => Node::new(v, &p).str(errs).and_then(|h| {
            let ok = match h.strip_prefix("unix:") {
                Some(path) => path.starts_with('/'),
                None => h.rsplit_once(':').is_some_and(|(host, port)| {
                    !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p != 0)
                }),
            };
            if !ok {
                errs.push(
                    &p,
                    format!("{h:?} is neither unix:/absolute/path nor host:port"),
                );
            }
            ok.then(|| h.to_string())
        }),
        None => None,
    };
    let mut http = None;
    if let Some((v, p)) = m.require(errs, "protocol") {
        if let Some(proto) = Node::new(v, &p).map(errs, &["http"]) {
            if let Some((v, p)) = proto.require(errs, "http") {
                http = http_protocol(Node::new(v, &p), errs);
            }
        }
    }
    let mut failure_mode = FailureMode::Deny;
    if let Some((v, p)) = m.get("failureMode") {
        match v {
            Value::String(s) if s == "deny" => failure_mode = FailureMode::Deny,
            Value::String(s) if s == "allow" => failure_mode = FailureMode::Allow,
            Value::Mapping(_) => {
                if let Some(f) = Node::new(v, &p).map(errs, &["denyWithStatus"]) {
                    if let Some((v, p)) = f.require(errs, "denyWithStatus") {
                        if let Some(n) = Node::new(v, &p).uint(errs, 400, 599) {
                            failure_mode = FailureMode::DenyWithStatus(n as u16);
                        }
                    }
                }
            }
            _ => errs.push(
                &p,
                "expected deny, allow or {denyWithStatus: <4xx/5xx status>}",
            ),
        }
    }
    let mut timeout = std::time::Duration::from_millis(DEFAULT_AUTHZ_TIMEOUT_MS);
    if let Some((v, p)) = m.get("timeout") {
        if let Some(d) = Node::new(v, &p).duration(errs) {
            timeout = d;
        }
    }
    let mut cache_cfg = AuthzCache::default();
    if let Some((v, p)) = m.get("cache") {
        cache(Node::new(v, &p), &mut cache_cfg, errs);
    }
    let mut connections = AuthzConnections::default();
    if let Some((v, p)) = m.get("connections") {
        authz_connections(Node::new(v, &p), &mut connections, errs);
    }
    let (path, add_request_headers, metadata) = http?;
    if errs.0.len() > before {
        return None;
    }
    let needs_headers = std::iter::once(&path)
        .chain(add_request_headers.iter().map(|(_, e)| e))
        .chain(metadata.iter().map(|(_, e)| e))
        .chain(cache_cfg.key.iter())
        .any(|e| e.source().contains("headers"));
    let per_connection = match &cache_cfg.key {
        Some(k) => k.reads_only(&["source"]),
        None => std::iter::once(&path)
            .chain(add_request_headers.iter().map(|(_, e)| e))
            .all(|e| e.reads_only(&["source"])),
    };
    Some(ExtAuthz {
        id: 0,
        host: host?,
        path,
        add_request_headers,
        metadata,
        needs_headers,
        per_connection,
        failure_mode,
        timeout,
        cache: cache_cfg,
        connections,
    })
}

type HttpProtocol = (Expr, Vec<(String, Expr)>, Vec<(String, Expr)>);

fn http_protocol(node: Node, errs: &mut ConfigErrors) -> Option<HttpProtocol> {
    let m = node.map(errs, &["path", "addRequestHeaders", "metadata"])?;
    let path = match m.get("path") {
        Some((v, p)) => Node::new(v, &p)
            .str(errs)
            .and_then(|src| expr(src, &p, REQUEST_VARS, errs)),
        None => expr("request.path", m.path(), REQUEST_VARS, errs),
    };
    let mut headers = Vec::new();
    if let Some((v, p)) = m.get("addRequestHeaders") {
        for (name, src) in string_map(Node::new(v, &p), errs) {
            let hp = super::yaml::child_path(&p, &name);
            let pseudo_ok = matches!(name.as_str(), ":authority" | ":method");
            let valid =
                pseudo_ok || (!name.is_empty() && name.bytes().all(crate::http::chunked::is_tchar));
            if !valid {
                errs.push(
                    &hp,
                    "not a valid header name (pseudo-headers: :authority, :method)",
                );
                continue;
            }
            if let Some(e) = expr(&src, &hp, REQUEST_VARS, errs) {
                headers.push((name.to_ascii_lowercase(), e));
            }
        }
    }
    let mut metadata = Vec::new();
    if let Some((v, p)) = m.get("metadata") {
        for (key, src) in string_map(Node::new(v, &p), errs) {
            let mp = super::yaml::child_path(&p, &key);
            if let Some(e) = expr(&src, &mp, METADATA_VARS, errs) {
                metadata.push((key, e));
            }
        }
    }
    Some((path?, headers, metadata))
}

fn cache(node: Node, c: &mut AuthzCache, errs: &mut ConfigErrors) {
    let Some(m) = node.map(errs, &["key", "ttl", "negativeTtl", "maxEntries"]) else {
        return;
    };
    if let Some((v, p)) = m.get("key") {
        c.key = Node::new(v, &p)
            .str(errs)
            .and_then(|src| expr(src, &p, REQUEST_VARS, errs));
    }
    if let Some((v, p)) = m.get("ttl") {
        if let Some(d) = Node::new(v, &p).duration(errs) {
            c.ttl = d;
        }
    }
    if let Some((v, p)) = m.get("negativeTtl") {
        if let Some(d) = Node::new(v, &p).duration(errs) {
            c.negative_ttl = d;
        }
    }
    if let Some((v, p)) = m.get("maxEntries") {
        if let Some(n) = Node::new(v, &p).uint(errs, 0, 10_000_000) {
            c.max_entries = n as usize;
        }
    }
}

/// ringgate extension: `connections: {max, maxWaiting}`.
fn authz_connections(node: Node, c: &mut AuthzConnections, errs: &mut ConfigErrors) {
    let Some(m) = node.map(errs, &["max", "maxWaiting"]) else {
        return;
    };
    if let Some((v, p)) = m.get("max") {
        if let Some(n) = Node::new(v, &p).uint(errs, 1, 100_000) {
            c.max = n as usize;
        }
    }
    if let Some((v, p)) = m.get("maxWaiting") {
        if let Some(n) = Node::new(v, &p).uint(errs, 0, 10_000_000) {
            c.max_waiting = n as usize;
        }
    }
}

/// Variables an `mcpAuthorization` rule may read.
const RULE_VARS: &[&str] = &["source", "request", "extauthz", "mcp"];

/// `mcpAuthorization: {rules: [...]}`. A rule is a string (an allow rule) or
/// a mapping with exactly one of `allow`, `deny`, `require`. `metadata_keys`
/// are the route's extAuthz metadata keys (`None`: not known, not checked);
/// a rule reading `extauthz.K` for any other `K` is an error, as a typo there
/// would fail on every request.
pub fn mcp_authorization(
    node: Node,
    metadata_keys: Option<&[&str]>,
    errs: &mut ConfigErrors,
) -> Option<McpAuthorization> {
    let m = node.map(errs, &["rules"])?;
    let (v, p) = m.require(errs, "rules")?;
    let before = errs.0.len();
    let mut rules = Vec::new();
    for (i, rv) in Node::new(v, &p).seq(errs).iter().enumerate() {
        let rp = index_path(&p, i);
        let (kind, src, ep) = match rv {
            Value::String(s) => (RuleKind::Allow, s.as_str(), rp),
            Value::Mapping(_) => {
                let Some(r) = Node::new(rv, &rp).map(errs, &["allow", "deny", "require"]) else {
                    continue;
                };
                let mut given = [RuleKind::Allow, RuleKind::Deny, RuleKind::Require]
                    .into_iter()
                    .filter_map(|k| r.get(k.as_str()).map(|(v, ep)| (k, v, ep)));
                let (Some((kind, v, ep)), None) = (given.next(), given.next()) else {
                    errs.push(&rp, "a rule has exactly one of allow, deny, require");
                    continue;
                };
                let Some(src) = v.as_str() else {
                    Node::new(v, &ep).str(errs);
                    continue;
                };
                (kind, src, ep)
            }
            _ => {
                errs.push(
                    &rp,
                    "expected a CEL string (an allow rule) or {allow|deny|require: CEL}",
                );
                continue;
            }
        };
        let Some(e) = expr(src, &ep, RULE_VARS, errs) else {
            continue;
        };
        if let Some(keys) = metadata_keys {
            for k in e.extauthz_reads() {
                if !keys.contains(&k.as_str()) {
                    let known = if keys.is_empty() {
                        "the route's extAuthz has no metadata".to_owned()
                    } else {
                        format!("metadata keys: {}", keys.join(", "))
                    };
                    errs.push(&ep, format!("unknown variable `extauthz.{k}` ({known})"));
                }
            }
        }
        rules.push(Rule { kind, expr: e });
    }
    (errs.0.len() == before).then_some(McpAuthorization { rules })
}
