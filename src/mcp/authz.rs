//! `mcpAuthorization` on a POST, decided on the worker that received it:
//! calls of a tool, prompt or resource the caller may not use are answered
//! here with JSON-RPC `-32602` and never written to the child; list requests
//! are marked so that the session filters their answers.

use std::sync::Arc;

use serde::Deserialize;

use crate::mcp::jsonrpc::{self, Kind, Message};
use crate::policy::cel::{McpKind, Vars};
use crate::policy::mcp_authz::{
    governed_call, governed_list, Caller, ListFilter, ListKind, McpAuthorization,
};
use crate::stats::{McpAuthzResult, Stats};

/// JSON-RPC "Invalid params": what agentgateway answers a denied call with.
pub const INVALID_PARAMS: i64 = -32602;

/// A route's rules and the request they are decided for.
pub struct RouteAuthz<'a> {
    pub rules: &'a McpAuthorization,
    pub route: &'a str,
    /// The MCP target's name (`mcp.tool.target`).
    pub target: &'a str,
    /// Several targets: the target of a call is found from its name.
    pub naming: Option<&'a crate::mcp::multiplex::Naming>,
    pub vars: Vars<'a>,
    pub stats: &'a Stats,
}

/// What the session does differently for one POST's messages.
#[derive(Default)]
pub struct PostAuthz {
    /// Requests refused: their index in the POST and the error line that
    /// answers them.
    pub refused: Vec<(usize, String)>,
    /// List requests whose answers are filtered, by index.
    pub lists: Vec<(usize, ListKind)>,
    /// Set when `lists` is not empty.
    pub filter: Option<Arc<ListFilter>>,
}

impl PostAuthz {
    pub fn refusal(&self, i: usize) -> Option<&str> {
        self.refused
            .iter()
            .find(|(j, _)| *j == i)
            .map(|(_, l)| l.as_str())
    }

    pub fn list(&self, i: usize) -> Option<(ListKind, Arc<ListFilter>)> {
        let (_, kind) = self.lists.iter().find(|(j, _)| *j == i)?;
        Some((*kind, self.filter.clone()?))
    }
}

/// The access log's word on a POST: the decision of its first governed
/// request (`allow`, `deny`), `filter` for a list request, and what it named.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Logged {
    pub decision: Option<&'static str>,
    pub name: Option<String>,
}

#[derive(Deserialize)]
struct Call {
    params: Option<Params>,
}

#[derive(Deserialize)]
struct Params {
    name: Option<String>,
    uri: Option<String>,
}

/// The tool or prompt name, or the resource URI, a call names.
fn named(line: &str, field: &str) -> Option<String> {
    let p = serde_json::from_str::<Call>(line).ok()?.params?;
    if field == "uri" {
        p.uri
    } else {
        p.name
    }
}

/// Decides every request of a POST.
pub fn decide(authz: &RouteAuthz, messages: &[Message]) -> (PostAuthz, Logged) {
    let mut out = PostAuthz::default();
    let mut logged = Logged::default();
    for (i, m) in messages.iter().enumerate() {
        let Kind::Request { id, method, .. } = &m.kind else {
            continue;
        };
        if let Some((kind, field)) = governed_call(method) {
            // A call that names nothing cannot be decided: refused.
            let name = named(&m.line, field);
            let decide = |target: &str, n: &str| {
                let d = authz.rules.decide_for(&authz.vars, method, kind, target, n);
                d.allowed()
            };
            let allowed = name.as_deref().is_some_and(|n| match authz.naming {
                None => decide(authz.target, n),
                // Every target that may serve the name must allow it.
                Some(naming) => {
                    let c = naming.candidates(n, field == "uri");
                    !c.is_empty() && c.iter().all(|(t, n)| decide(&naming.targets[*t], n))
                }
            });
            let result = if allowed {
                McpAuthzResult::Allow
            } else {
                McpAuthzResult::Deny
            };
            authz.stats.mcp_authz(authz.route, result);
            if logged.decision.is_none() {
                logged.decision = Some(result.as_str());
                logged.name = name.clone();
            }
            if !allowed {
                let what = match kind {
                    McpKind::Tool => "tool",
                    McpKind::Prompt => "prompt",
                    McpKind::Resource => "resource",
                };
                let message = format!("Unknown {what}: {}", name.as_deref().unwrap_or(""));
                let line = jsonrpc::error_line(Some(id), INVALID_PARAMS, &message);
                out.refused.push((i, line));
            }
        } else if let Some(list) = governed_list(method) {
            authz.stats.mcp_authz(authz.route, McpAuthzResult::Filter);
            if logged.decision.is_none() {
                logged.decision = Some(McpAuthzResult::Filter.as_str());
            }
            out.lists.push((i, list));
        }
    }
    if !out.lists.is_empty() {
        out.filter = Some(Arc::new(ListFilter {
            rules: authz.rules.clone(),
            target: authz.target.to_owned(),
            caller: Caller::new(&authz.vars),
        }));
    }
    (out, logged)
}
