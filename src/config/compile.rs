//! The walk from a YAML document to a [`Config`], collecting every error.

use std::collections::HashSet;
use std::net::IpAddr;
use std::time::Duration;

use serde_yaml_ng::Value;

use super::yaml::{expr, index_path, opt_str, string_list, string_map, ConfigErrors, Node};
use super::*;

pub fn compile(doc: &Value) -> Result<Config, ConfigErrors> {
    let mut errs = ConfigErrors::default();
    let mut cfg = Config {
        worker_threads: None,
        io_driver: IoDriver::Auto,
        logging: Logging::default(),
        limits: Limits::default(),
        access_log: AccessLog::default(),
        mcp: McpSettings::default(),
        stats_addr: DEFAULT_STATS_ADDR.parse().ok(),
        readiness_addr: DEFAULT_READINESS_ADDR.parse().ok(),
        drain_timeout: Duration::from_millis(DEFAULT_DRAIN_TIMEOUT_MS),
        binds: Vec::new(),
    };
    if doc.is_null() {
        errs.push("", "the config is empty");
        return Err(errs);
    }
    let Some(top) =
        Node::new(doc, "").map(&mut errs, &["config", "binds", "frontendPolicies", "mcp"])
    else {
        return Err(errs);
    };
    if let Some((v, p)) = top.get("config") {
        settings(Node::new(v, &p), &mut cfg, &mut errs);
    }
    if let Some((v, p)) = top.get("frontendPolicies") {
        if let Some(fp) = Node::new(v, &p).map(&mut errs, &["accessLog"]) {
            if let Some((v, p)) = fp.get("accessLog") {
                cfg.access_log = access_log(Node::new(v, &p), &mut errs);
            }
        }
    }
    // agentgateway's `mcp:` shorthand may stand alone, or go with binds.
    let binds = if top.has("mcp") {
        top.get("binds")
    } else {
        top.require(&mut errs, "binds")
    };
    if let Some((v, p)) = binds {
        let node = Node::new(v, &p);
        for (i, b) in node.seq(&mut errs).iter().enumerate() {
            let bp = index_path(&p, i);
            if let Some(b) = bind(Node::new(b, &bp), &mut errs) {
                cfg.binds.push(b);
            }
        }
        if cfg.binds.is_empty() && errs.is_empty() {
            errs.push(&p, "at least one bind is required");
        }
    }
    if let Some((v, p)) = top.get("mcp") {
        if let Some(b) = super::mcp::shorthand(Node::new(v, &p), &mut errs) {
            cfg.binds.push(b);
        }
    }
    check_unique(&cfg, &mut errs);
    number_policies(&mut cfg);
    if errs.is_empty() {
        Ok(cfg)
    } else {
        Err(errs)
    }
}

fn settings(node: Node, cfg: &mut Config, errs: &mut ConfigErrors) {
    let keys = [
        "workerThreads",
        "ioDriver",
        "logging",
        "http",
        "mcp",
        "statsAddr",
        "readinessAddr",
        "drainTimeout",
    ];
    let Some(m) = node.map(errs, &keys) else {
        return;
    };
    if let Some((v, p)) = m.get("workerThreads") {
        cfg.worker_threads = Node::new(v, &p).uint(errs, 1, 1024).map(|n| n as usize);
    }
    if let Some((v, p)) = m.get("ioDriver") {
        if let Some(s) = Node::new(v, &p).str(errs) {
            match s.parse() {
                Ok(d) => cfg.io_driver = d,
                Err(e) => errs.push(&p, e),
            }
        }
    }
    if let Some((v, p)) = m.get("logging") {
        if let Some(l) = Node::new(v, &p).map(errs, &["level", "format"]) {
            if let Some((v, p)) = l.get("level") {
                cfg.logging.level = Node::new(v, &p).str(errs).map(str::to_string);
            }
            if let Some((v, p)) = l.get("format") {
                match Node::new(v, &p).str(errs) {
                    Some("text") => cfg.logging.format = LogFormat::Text,
                    Some("json") => cfg.logging.format = LogFormat::Json,
                    Some(other) => {
                        errs.push(&p, format!("unknown format {other:?} (text or json)"))
                    }
                    None => {}
                }
            }
        }
    }
    if let Some((v, p)) = m.get("http") {
        limits(Node::new(v, &p), &mut cfg.limits, errs);
    }
    if let Some((v, p)) = m.get("mcp") {
        mcp_settings(Node::new(v, &p), &mut cfg.mcp, errs);
    }
    if let Some((v, p)) = m.get("statsAddr") {
        cfg.stats_addr = socket_addr(Node::new(v, &p), errs);
    }
    if let Some((v, p)) = m.get("readinessAddr") {
        cfg.readiness_addr = socket_addr(Node::new(v, &p), errs);
    }
    if let Some((v, p)) = m.get("drainTimeout") {
        if let Some(d) = Node::new(v, &p).duration(errs) {
            cfg.drain_timeout = d;
        }
    }
}

/// `IP:port`, `[v6]:port`, or `off`.
pub(super) fn socket_addr(node: Node, errs: &mut ConfigErrors) -> Option<std::net::SocketAddr> {
    let s = node.str(errs)?;
    if s == "off" {
        return None;
    }
    match s.parse() {
        Ok(a) => Some(a),
        Err(_) => {
            errs.push(node.path, format!("{s:?} is not IP:port (or off)"));
            None
        }
    }
}

fn mcp_settings(node: Node, s: &mut McpSettings, errs: &mut ConfigErrors) {
    let keys = [
        "sessionIdleTimeout",
        "minIdle",
        "maxLive",
        "maxBufferedMessages",
        "maxLineBytes",
        "stopGrace",
        "requestTimeout",
        "sharedChildren",
        "maxInFlightPerChild",
        "cacheTtl",
        "inputRequiredTimeout",
    ];
    let Some(m) = node.map(errs, &keys) else {
        return;
    };
    let num = |key: &str, min: u64, max: u64, errs: &mut ConfigErrors| {
        m.get(key)
            .and_then(|(v, p)| Node::new(v, &p).uint(errs, min, max))
    };
    if let Some(n) = num("minIdle", 0, 1024, errs) {
        s.min_idle = n as usize;
    }
    if let Some(n) = num("maxLive", 1, 1 << 20, errs) {
        s.max_live = n as usize;
    }
    if let Some(n) = num("maxBufferedMessages", 1, 1 << 20, errs) {
        s.max_buffered_messages = n as usize;
    }
    if let Some(n) = num("maxLineBytes", 1024, 1 << 30, errs) {
        s.max_line_bytes = n as usize;
    }
    if let Some(n) = num("sharedChildren", 1, 64, errs) {
        s.shared_children = n as usize;
    }
    if let Some(n) = num("maxInFlightPerChild", 1, 1 << 16, errs) {
        s.max_in_flight_per_child = n as usize;
    }
    if let Some((v, p)) = m.get("cacheTtl") {
        if let Some(d) = Node::new(v, &p).duration(errs) {
            s.cache_ttl = d;
        }
    }
    if let Some((v, p)) = m.get("inputRequiredTimeout") {
        if let Some(d) = Node::new(v, &p).duration(errs) {
            s.input_required_timeout = d;
        }
    }
    if let Some((v, p)) = m.get("sessionIdleTimeout") {
        if let Some(d) = Node::new(v, &p).duration(errs) {
            s.session_idle_timeout = d;
        }
    }
    if let Some((v, p)) = m.get("stopGrace") {
        if let Some(d) = Node::new(v, &p).duration(errs) {
            s.stop_grace = d;
        }
    }
    if let Some((v, p)) = m.get("requestTimeout") {
        if let Some(d) = Node::new(v, &p).duration(errs) {
            s.request_timeout = d;
        }
    }
}

fn limits(node: Node, l: &mut Limits, errs: &mut ConfigErrors) {
    let keys = [
        "maxHeadBytes",
        "maxUriBytes",
        "maxHeaders",
        "maxBodyBytes",
        "headerReadTimeout",
        "bodyReadTimeout",
        "idleTimeout",
        "writeTimeout",
        "maxConnectionsPerWorker",
        "maxBodyBytesInFlight",
        "lingerTimeout",
        "lingerMaxBytes",
    ];
    let Some(m) = node.map(errs, &keys) else {
        return;
    };
    let size = |key: &str, min: u64, max: u64, errs: &mut ConfigErrors| {
        m.get(key)
            .and_then(|(v, p)| Node::new(v, &p).uint(errs, min, max))
    };
    if let Some(n) = size("maxHeadBytes", 256, 1 << 20, errs) {
        l.max_head_bytes = n as usize;
    }
    if let Some(n) = size("maxUriBytes", 16, 1 << 20, errs) {
        l.max_uri_bytes = n as usize;
    }
    if let Some(n) = size("maxHeaders", 1, MAX_HEADERS_CAP as u64, errs) {
        l.max_headers = n as usize;
    }
    if let Some(n) = size("maxBodyBytes", 0, 1 << 34, errs) {
        l.max_body_bytes = n;
    }
    if let Some(n) = size("maxConnectionsPerWorker", 1, 1 << 24, errs) {
        l.max_connections_per_worker = n as usize;
    }
    if let Some(n) = size("maxBodyBytesInFlight", 0, 1 << 40, errs) {
        l.max_body_bytes_in_flight = n;
    }
    if let Some(n) = size("lingerMaxBytes", 0, 1 << 34, errs) {
        l.linger_max_bytes = n;
    }
    let dur = |key: &str, errs: &mut ConfigErrors| {
        m.get(key)
            .and_then(|(v, p)| Node::new(v, &p).duration(errs))
    };
    if let Some(d) = dur("headerReadTimeout", errs) {
        l.header_read_timeout = d;
    }
    if let Some(d) = dur("bodyReadTimeout", errs) {
        l.body_read_timeout = d;
    }
    if let Some(d) = dur("idleTimeout", errs) {
        l.idle_timeout = d;
    }
    if let Some(d) = dur("writeTimeout", errs) {
        l.write_timeout = d;
    }
    if let Some(d) = dur("lingerTimeout", errs) {
        l.linger_timeout = d;
    }
}

fn access_log(node: Node, errs: &mut ConfigErrors) -> AccessLog {
    let mut out = AccessLog::default();
    let Some(m) = node.map(errs, &["add", "filter", "remove"]) else {
        return out;
    };
    if let Some((v, p)) = m.get("add") {
        for (name, src) in string_map(Node::new(v, &p), errs) {
            let fp = super::yaml::child_path(&p, &name);
            if let Some(e) = expr(&src, &fp, LOG_VARS, errs) {
                out.add.push((name, e));
            }
        }
    }
    if let Some((v, p)) = m.get("filter") {
        if let Some(src) = Node::new(v, &p).str(errs) {
            out.filter = expr(src, &p, LOG_VARS, errs);
        }
    }
    if let Some((v, p)) = m.get("remove") {
        out.remove = string_list(Node::new(v, &p), errs);
    }
    out
}

fn bind(node: Node, errs: &mut ConfigErrors) -> Option<Bind> {
    let m = node.map(errs, &["port", "address", "listeners"])?;
    // Port 0 asks the kernel for a free port (tests, demos); the log names it.
    let port = m
        .require(errs, "port")
        .and_then(|(v, p)| Node::new(v, &p).uint(errs, 0, 65535))
        .map(|n| n as u16);
    let mut address = None;
    if let Some((v, p)) = m.get("address") {
        if let Some(s) = Node::new(v, &p).str(errs) {
            match s.trim_matches(|c| c == '[' || c == ']').parse::<IpAddr>() {
                Ok(ip) => address = Some(ip),
                Err(_) => errs.push(&p, format!("{s:?} is not an IP address")),
            }
        }
    }
    let mut listeners = Vec::new();
    if let Some((v, p)) = m.require(errs, "listeners") {
        for (i, l) in Node::new(v, &p).seq(errs).iter().enumerate() {
            let lp = index_path(&p, i);
            if let Some(l) = listener(Node::new(l, &lp), i, errs) {
                listeners.push(l);
            }
        }
    }
    Some(Bind {
        port: port?,
        address,
        listeners,
    })
}

fn listener(node: Node, index: usize, errs: &mut ConfigErrors) -> Option<Listener> {
    let m = node.map(errs, &["name", "protocol", "hostname", "routes"])?;
    let name = opt_str(&m, "name", errs).unwrap_or_else(|| format!("listener{index}"));
    if let Some((v, p)) = m.get("protocol") {
        match Node::new(v, &p).str(errs) {
            Some("HTTP") | None => {}
            Some(other) => errs.push(
                &p,
                format!("protocol {other:?} is not supported (only HTTP; terminate TLS in front, or rely on the tailnet's WireGuard)"),
            ),
        }
    }
    let hostname = opt_str(&m, "hostname", errs);
    let mut routes = Vec::new();
    if let Some((v, p)) = m.get("routes") {
        let mut names = HashSet::new();
        for (i, r) in Node::new(v, &p).seq(errs).iter().enumerate() {
            let rp = index_path(&p, i);
            if let Some(r) = route(Node::new(r, &rp), i, errs) {
                if !names.insert(r.name.clone()) {
                    errs.push(&rp, format!("duplicate route name {:?}", r.name));
                }
                routes.push(r);
            }
        }
    }
    Some(Listener {
        name,
        hostname,
        routes,
    })
}

fn route(node: Node, index: usize, errs: &mut ConfigErrors) -> Option<Route> {
    let m = node.map(errs, &["name", "matches", "policies", "backends"])?;
    let name = opt_str(&m, "name", errs).unwrap_or_else(|| format!("route{index}"));
    let mut matches = Vec::new();
    if let Some((v, p)) = m.get("matches") {
        for (i, mv) in Node::new(v, &p).seq(errs).iter().enumerate() {
            let mp = index_path(&p, i);
            let Some(mm) = Node::new(mv, &mp).map(errs, &["path"]) else {
                continue;
            };
            if let Some((v, p)) = mm.require(errs, "path") {
                if let Some(pm) = path_match(Node::new(v, &p), errs) {
                    matches.push(pm);
                }
            }
        }
    }
    let policies = match m.get("policies") {
        Some((v, p)) => super::policies::route_policies(Node::new(v, &p), errs),
        None => Policies::default(),
    };
    let mut backend = None;
    if let Some((v, p)) = m.get("backends") {
        let list = Node::new(v, &p).seq(errs);
        if list.len() > 1 {
            errs.push(&p, "only one backend per route is supported");
        }
        if let Some(b) = list.first() {
            backend = super::mcp::backend(Node::new(b, &index_path(&p, 0)), errs);
        }
    }
    if policies.mcp_authorization.is_some() && backend.is_none() {
        errs.push(
            &format!("{}.policies.mcpAuthorization", m.path()),
            "mcpAuthorization needs a route with an MCP backend",
        );
    }
    if backend.is_some() && policies.direct_response.is_some() {
        errs.push(
            m.path(),
            "a route has either backends or a directResponse policy, not both",
        );
    }
    Some(Route {
        name,
        matches,
        policies,
        backend,
    })
}

fn path_match(node: Node, errs: &mut ConfigErrors) -> Option<PathMatch> {
    let m = node.map(errs, &["exact", "pathPrefix"])?;
    let mut found = None;
    for key in ["exact", "pathPrefix"] {
        if let Some((v, p)) = m.get(key) {
            let Some(s) = Node::new(v, &p).str(errs) else {
                continue;
            };
            if !s.starts_with('/') {
                errs.push(&p, "a path must start with '/'");
                continue;
            }
            if found.is_some() {
                errs.push(&p, "give exactly one of exact or pathPrefix");
                continue;
            }
            found = Some(if key == "exact" {
                PathMatch::Exact(s.to_string())
            } else {
                PathMatch::Prefix(s.to_string())
            });
        }
    }
    if found.is_none() && !m.has("exact") && !m.has("pathPrefix") {
        errs.push(node.path, "give exactly one of exact or pathPrefix");
    }
    found
}

/// Gives each extAuthz policy its index, which workers use to find their
/// per-policy client and cache.
fn number_policies(cfg: &mut Config) {
    let mut authz = 0;
    for r in cfg
        .binds
        .iter_mut()
        .flat_map(|b| b.listeners.iter_mut())
        .flat_map(|l| l.routes.iter_mut())
    {
        if let Some(a) = r.policies.ext_authz.as_mut() {
            a.id = authz;
            authz += 1;
        }
    }
}

/// Listener names and bind addresses must be unique across the file.
fn check_unique(cfg: &Config, errs: &mut ConfigErrors) {
    let mut names = HashSet::new();
    let mut ports = HashSet::new();
    for (bi, b) in cfg.binds.iter().enumerate() {
        if b.port != 0 && !ports.insert((b.address, b.port)) {
            errs.push(
                &format!("binds[{bi}].port"),
                format!("port {} is bound twice", b.port),
            );
        }
        for (li, l) in b.listeners.iter().enumerate() {
            if !names.insert(l.name.clone()) {
                errs.push(
                    &format!("binds[{bi}].listeners[{li}].name"),
                    format!("duplicate listener name {:?}", l.name),
                );
            }
        }
    }
}

/// Variables an access-log expression may read.
const LOG_VARS: &[&str] = &["source", "request", "extauthz"];
