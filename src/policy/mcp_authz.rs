//! `mcpAuthorization`: which tools, prompts and resources a caller may use.
//!
//! A route's rules are CEL booleans of three kinds (agentgateway's shape):
//! `allow` (a plain string in the config), `deny` and `require`. The
//! decision, whatever the order the rules are written in:
//!
//! 1. any `deny` rule that holds: denied;
//! 2. any `require` rule that does not hold: denied;
//! 3. any `allow` rule that holds: allowed;
//! 4. no `allow` rules at all: allowed; else denied.
//!
//! An expression that fails (a missing key, a null `CapMap` indexed, a
//! result that is not a boolean) never grants: a failing `allow` does not
//! match, a failing `require` denies, and a failing `deny` denies. The last
//! is stricter than agentgateway, whose failing deny rules let the request
//! through: a deny rule that cannot be evaluated is no evidence that the
//! caller is allowed.

mod caller;
mod filter;

pub use caller::{Caller, ListFilter};
pub use filter::{filter_list, Filtered};

use crate::policy::cel::{Expr, McpKind, McpResource, McpVars, Vars};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RuleKind {
    Allow,
    Deny,
    Require,
}

impl RuleKind {
    pub fn as_str(self) -> &'static str {
        match self {
            RuleKind::Allow => "allow",
            RuleKind::Deny => "deny",
            RuleKind::Require => "require",
        }
    }
}

#[derive(Debug, Clone)]
pub struct Rule {
    pub kind: RuleKind,
    pub expr: Expr,
}

/// A route's compiled `mcpAuthorization.rules`, in config order.
#[derive(Debug, Clone, Default)]
pub struct McpAuthorization {
    pub rules: Vec<Rule>,
}

/// What decided, for logs and tests. Rule indexes are positions in the
/// config's `rules` list.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// This deny rule held.
    Deny(usize),
    /// This deny rule failed to evaluate.
    DenyFailed(usize),
    /// This require rule was false.
    Require(usize),
    /// This require rule failed to evaluate.
    RequireFailed(usize),
    /// This allow rule held.
    Allow(usize),
    /// There are no allow rules (and no deny or require rule objected).
    NoAllowRules,
    /// There are allow rules and none held (`failed` of them failed).
    NoAllowMatched { failed: usize },
}

impl Reason {
    pub fn allowed(self) -> bool {
        matches!(self, Reason::Allow(_) | Reason::NoAllowRules)
    }
}

impl McpAuthorization {
    /// Decides for the tool, prompt or resource in `vars.mcp`.
    pub fn decide(&self, vars: &Vars) -> Reason {
        let holds = |r: &Rule| r.expr.eval_bool(vars);
        for (i, r) in self.of(RuleKind::Deny) {
            match holds(r) {
                Ok(false) => {}
                Ok(true) => return Reason::Deny(i),
                Err(_) => return Reason::DenyFailed(i),
            }
        }
        for (i, r) in self.of(RuleKind::Require) {
            match holds(r) {
                Ok(true) => {}
                Ok(false) => return Reason::Require(i),
                Err(_) => return Reason::RequireFailed(i),
            }
        }
        let (mut allow_rules, mut failed) = (0, 0);
        for (i, r) in self.of(RuleKind::Allow) {
            allow_rules += 1;
            match holds(r) {
                Ok(true) => return Reason::Allow(i),
                Ok(false) => {}
                Err(_) => failed += 1,
            }
        }
        if allow_rules == 0 {
            Reason::NoAllowRules
        } else {
            Reason::NoAllowMatched { failed }
        }
    }

    pub fn allows(&self, vars: &Vars) -> bool {
        self.decide(vars).allowed()
    }

    /// Decides for using `name` (a tool, prompt or resource of `kind` on
    /// `target`) with `method`, for the caller of `base`.
    pub fn decide_for(
        &self,
        base: &Vars,
        method: &str,
        kind: McpKind,
        target: &str,
        name: &str,
    ) -> Reason {
        let vars = Vars {
            mcp: Some(McpVars {
                method,
                resource: Some(McpResource { kind, name, target }),
            }),
            ..*base
        };
        self.decide(&vars)
    }

    /// Filters a child's answer to a list request: an item is listed when
    /// using it (`list.use_method`) would be allowed for the caller of `base`.
    pub fn filter(&self, line: &[u8], list: ListKind, target: &str, base: &Vars) -> Filtered {
        filter_list(line, list, |name| {
            self.decide_for(base, list.use_method, list.kind, target, name)
                .allowed()
        })
    }

    fn of(&self, kind: RuleKind) -> impl Iterator<Item = (usize, &Rule)> {
        self.rules
            .iter()
            .enumerate()
            .filter(move |(_, r)| r.kind == kind)
    }
}

/// The MCP methods the rules govern: the method that uses one tool, prompt
/// or resource, the params field that names it, and its kind.
pub fn governed_call(method: &str) -> Option<(McpKind, &'static str)> {
    Some(match method {
        "tools/call" => (McpKind::Tool, "name"),
        "prompts/get" => (McpKind::Prompt, "name"),
        "resources/read" | "resources/subscribe" | "resources/unsubscribe" => {
            (McpKind::Resource, "uri")
        }
        _ => return None,
    })
}

/// A list method whose answer is filtered: the kind of its items, the
/// result field holding the array, the item field that names each one, and
/// the method whose rules decide whether an item is listed (an item is
/// listed exactly when using it would be allowed).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ListKind {
    pub kind: McpKind,
    pub array: &'static str,
    pub name_field: &'static str,
    pub use_method: &'static str,
}

pub fn governed_list(method: &str) -> Option<ListKind> {
    let (kind, array, name_field, use_method) = match method {
        "tools/list" => (McpKind::Tool, "tools", "name", "tools/call"),
        "prompts/list" => (McpKind::Prompt, "prompts", "name", "prompts/get"),
        "resources/list" => (McpKind::Resource, "resources", "uri", "resources/read"),
        "resources/templates/list" => (
            McpKind::Resource,
            "resourceTemplates",
            "uriTemplate",
            "resources/read",
        ),
        _ => return None,
    };
    Some(ListKind {
        kind,
        array,
        name_field,
        use_method,
    })
}

#[cfg(test)]
mod tests;
