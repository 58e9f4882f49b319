//! What list filtering needs from the request that asked for the list, owned
//! and `Send`: the answer comes back on the session's owner worker, maybe
//! another thread, and after the request itself has been answered.

use crate::policy::cel::{McpKind, Value, Vars};

use super::{Filtered, ListKind, McpAuthorization};

/// The caller's CEL variables, copied from one request.
#[derive(Debug, Clone, Default)]
pub struct Caller {
    pub source_address: String,
    pub source_port: u16,
    pub method: String,
    pub path: String,
    pub headers: Vec<(String, Vec<u8>)>,
    pub extauthz: Option<Vec<(String, Value)>>,
}

impl Caller {
    pub fn new(vars: &Vars) -> Caller {
        Caller {
            source_address: vars.source_address.to_owned(),
            source_port: vars.source_port,
            method: vars.method.to_owned(),
            path: vars.path.to_owned(),
            headers: vars
                .headers
                .iter()
                .map(|(n, v)| ((*n).to_owned(), v.to_vec()))
                .collect(),
            extauthz: vars.extauthz.map(<[_]>::to_vec),
        }
    }

    /// The variables again, reading `headers` (the caller's borrowed view
    /// of `self.headers`).
    pub fn vars<'a>(&'a self, headers: &'a [(&'a str, &'a [u8])]) -> Vars<'a> {
        Vars {
            source_address: &self.source_address,
            source_port: self.source_port,
            method: &self.method,
            path: &self.path,
            headers,
            response: None,
            extauthz: self.extauthz.as_deref(),
            mcp: None,
        }
    }
}

/// Everything a session needs to filter one list answer.
#[derive(Debug, Clone)]
pub struct ListFilter {
    pub rules: McpAuthorization,
    /// The MCP target's name (`mcp.tool.target`).
    pub target: String,
    pub caller: Caller,
}

impl ListFilter {
    pub fn filter(&self, line: &[u8], list: ListKind) -> Filtered {
        self.with_vars(|base| self.rules.filter(line, list, &self.target, base))
    }

    /// Whether the caller may use `name`.
    pub fn allows(&self, method: &str, kind: McpKind, name: &str) -> bool {
        self.with_vars(|base| {
            self.rules
                .decide_for(base, method, kind, &self.target, name)
                .allowed()
        })
    }

    fn with_vars<T>(&self, f: impl FnOnce(&Vars) -> T) -> T {
        let headers: Vec<(&str, &[u8])> = self
            .caller
            .headers
            .iter()
            .map(|(n, v)| (n.as_str(), v.as_slice()))
            .collect();
        f(&self.caller.vars(&headers))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// It crosses to the session's owner worker.
    #[test]
    fn list_filters_are_send() {
        fn send<T: Send + Sync>() {}
        send::<ListFilter>();
    }
}
