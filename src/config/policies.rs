//! The route policies' YAML: `cors` and `extAuthz`.

use serde_yaml_ng::Value;

use super::compile::{opt_str, string_list, string_map};
use super::yaml::{ConfigErrors, Node};
use super::*;

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

pub fn ext_authz(node: Node, errs: &mut ConfigErrors) -> Option<ExtAuthz> {
    let m = node.map(
        errs,
        &["host", "protocol", "failureMode", "timeout", "cache"],
    )?;
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
    let mut out = ExtAuthz {
        host: host.unwrap_or_default(),
        path: String::new(),
        add_request_headers: Vec::new(),
        metadata: Vec::new(),
        failure_mode: FailureMode::Deny,
        timeout: std::time::Duration::from_millis(DEFAULT_AUTHZ_TIMEOUT_MS),
        cache: AuthzCache::default(),
    };
    if let Some((v, p)) = m.require(errs, "protocol") {
        let proto = Node::new(v, &p).map(errs, &["http"]);
        if let Some(proto) = proto {
            match proto.require(errs, "http") {
                Some((v, p)) => http_protocol(Node::new(v, &p), &mut out, errs),
                None => {}
            }
        }
    }
    if let Some((v, p)) = m.get("failureMode") {
        match v {
            Value::String(s) if s == "deny" => out.failure_mode = FailureMode::Deny,
            Value::String(s) if s == "allow" => out.failure_mode = FailureMode::Allow,
            Value::Mapping(_) => {
                if let Some(f) = Node::new(v, &p).map(errs, &["denyWithStatus"]) {
                    if let Some((v, p)) = f.require(errs, "denyWithStatus") {
                        if let Some(n) = Node::new(v, &p).uint(errs, 400, 599) {
                            out.failure_mode = FailureMode::DenyWithStatus(n as u16);
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
    if let Some((v, p)) = m.get("timeout") {
        if let Some(d) = Node::new(v, &p).duration(errs) {
            out.timeout = d;
        }
    }
    if let Some((v, p)) = m.get("cache") {
        cache(Node::new(v, &p), &mut out.cache, errs);
    }
    Some(out)
}

fn http_protocol(node: Node, out: &mut ExtAuthz, errs: &mut ConfigErrors) {
    let Some(m) = node.map(errs, &["path", "addRequestHeaders", "metadata"]) else {
        return;
    };
    out.path = opt_str(&m, "path", errs).unwrap_or_else(|| "request.path".to_string());
    if let Some((v, p)) = m.get("addRequestHeaders") {
        out.add_request_headers = string_map(Node::new(v, &p), errs);
        for (name, _) in &out.add_request_headers {
            let pseudo_ok = matches!(name.as_str(), ":authority" | ":method");
            let valid =
                pseudo_ok || (!name.is_empty() && name.bytes().all(crate::http::chunked::is_tchar));
            if !valid {
                errs.push(
                    &super::yaml::child_path(&p, name),
                    "not a valid header name (pseudo-headers: :authority, :method)",
                );
            }
        }
    }
    if let Some((v, p)) = m.get("metadata") {
        out.metadata = string_map(Node::new(v, &p), errs);
    }
}

fn cache(node: Node, c: &mut AuthzCache, errs: &mut ConfigErrors) {
    let Some(m) = node.map(errs, &["key", "ttl", "negativeTtl", "maxEntries"]) else {
        return;
    };
    c.key = opt_str(&m, "key", errs);
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
