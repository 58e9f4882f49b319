//! `backends[].mcp` (targets, `prefixMode`, `failureMode`) and agentgateway's
//! top-level `mcp:` shorthand, which is one bind, one listener and one route
//! serving that backend on every path.

use std::collections::HashSet;

use super::yaml::{index_path, string_list, string_map, ConfigErrors, Map, Node};
use super::*;

/// The shorthand's port when it names none (agentgateway's default).
pub const DEFAULT_SHORTHAND_PORT: u16 = 3000;

/// Keys of `backends[].mcp` ringgate implements.
const BACKEND_KEYS: &[&str] = &["targets", "prefixMode", "failureMode"];

/// `backends[]`: a mapping with one `mcp` member.
pub fn backend(node: Node, errs: &mut ConfigErrors) -> Option<Backend> {
    let m = node.map(errs, &["mcp"])?;
    let (v, p) = m.require(errs, "mcp")?;
    let mcp = Node::new(v, &p).map(errs, BACKEND_KEYS)?;
    mcp_backend(&mcp, errs).map(Backend::Mcp)
}

/// The members shared by `backends[].mcp` and the shorthand.
fn mcp_backend(m: &Map, errs: &mut ConfigErrors) -> Option<McpBackend> {
    let prefix_mode = match m.get("prefixMode") {
        Some((v, p)) => match Node::new(v, &p).str(errs) {
            Some("conditional") => PrefixMode::Conditional,
            Some("always") => PrefixMode::Always,
            Some("never") => PrefixMode::Never,
            Some(other) => {
                errs.push(
                    &p,
                    format!("unknown prefixMode {other:?} (expected conditional, always or never)"),
                );
                PrefixMode::default()
            }
            None => PrefixMode::default(),
        },
        None => PrefixMode::default(),
    };
    let failure_mode = match m.get("failureMode") {
        Some((v, p)) => match Node::new(v, &p).str(errs) {
            Some("failClosed") => TargetFailureMode::FailClosed,
            Some("failOpen") => TargetFailureMode::FailOpen,
            Some(other) => {
                errs.push(
                    &p,
                    format!("unknown failureMode {other:?} (expected failClosed or failOpen)"),
                );
                TargetFailureMode::default()
            }
            None => TargetFailureMode::default(),
        },
        None => TargetFailureMode::default(),
    };
    let (v, p) = m.require(errs, "targets")?;
    let list = Node::new(v, &p).seq(errs);
    if list.is_empty() && matches!(v, serde_yaml_ng::Value::Sequence(_)) {
        errs.push(&p, "at least one MCP target is required");
    }
    let before = errs.0.len();
    let mut targets = Vec::new();
    let mut names = HashSet::new();
    for (i, t) in list.iter().enumerate() {
        let tp = index_path(&p, i);
        if let Some(t) = target(Node::new(t, &tp), i, errs) {
            if !names.insert(t.name.clone()) {
                errs.push(
                    &super::yaml::child_path(&tp, "name"),
                    format!("duplicate MCP target name {:?}", t.name),
                );
            }
            targets.push(t);
        }
    }
    if targets.is_empty() || errs.0.len() > before {
        return None;
    }
    Some(McpBackend {
        targets,
        prefix_mode,
        failure_mode,
        targets_path: p,
        key: Default::default(),
    })
}

/// A target name becomes a prefix: `<name>_<tool>` is split at the first
/// `_`, and `<name>+<uri>` at the first `+`, so neither may appear in it.
pub fn valid_target_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
}

fn target(node: Node, index: usize, errs: &mut ConfigErrors) -> Option<McpTarget> {
    let t = node.map(errs, &["name", "stdio"])?;
    let name = match t.get("name") {
        Some((v, p)) => {
            let name = Node::new(v, &p).str(errs)?;
            if !valid_target_name(name) {
                errs.push(
                    &p,
                    format!(
                        "invalid MCP target name {name:?}: it prefixes tool names, so use \
                         1 to 64 letters, digits, '-' or '.' (no '_' or '+')"
                    ),
                );
                return None;
            }
            name.to_string()
        }
        None => format!("target{index}"),
    };
    let (v, p) = t.require(errs, "stdio")?;
    let stdio = Node::new(v, &p).map(errs, &["cmd", "args", "env"])?;
    let cmd = match stdio.require(errs, "cmd") {
        Some((v, p)) => match Node::new(v, &p).str(errs) {
            Some("") => {
                errs.push(&p, "cmd must not be empty");
                None
            }
            other => other.map(str::to_string),
        },
        None => None,
    };
    let args = stdio
        .get("args")
        .map(|(v, p)| string_list(Node::new(v, &p), errs))
        .unwrap_or_default();
    let env = stdio
        .get("env")
        .map(|(v, p)| string_map(Node::new(v, &p), errs))
        .unwrap_or_default();
    Some(McpTarget {
        name,
        cmd: cmd?,
        args,
        env,
        key: Default::default(),
    })
}

/// agentgateway's top-level `mcp:` (`port`, `targets`, `policies`,
/// `prefixMode`, `failureMode`): a bind on `port` (default 3000) with one
/// listener and one route, on every path, serving the targets.
pub fn shorthand(node: Node, errs: &mut ConfigErrors) -> Option<Bind> {
    let mut keys = vec!["port", "policies"];
    keys.extend_from_slice(BACKEND_KEYS);
    let m = node.map(errs, &keys)?;
    let port = match m.get("port") {
        Some((v, p)) => Node::new(v, &p).uint(errs, 0, 65535).map(|n| n as u16),
        None => Some(DEFAULT_SHORTHAND_PORT),
    };
    let policies = match m.get("policies") {
        Some((v, p)) => super::policies::route_policies(Node::new(v, &p), errs),
        None => Policies::default(),
    };
    if policies.direct_response.is_some() {
        errs.push(
            &super::yaml::child_path(m.path(), "policies"),
            "directResponse cannot go with MCP targets",
        );
    }
    let backend = mcp_backend(&m, errs)?;
    Some(Bind {
        port: port?,
        address: None,
        listeners: vec![Listener {
            name: "mcp".to_string(),
            hostname: None,
            routes: vec![Route {
                name: "mcp".to_string(),
                matches: Vec::new(),
                policies,
                backend: Some(Backend::Mcp(backend)),
            }],
        }],
    })
}
