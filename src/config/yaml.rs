//! A path-tracking walk over a parsed YAML document.
//!
//! serde's `deny_unknown_fields` stops at the first problem; an operator fixing
//! a config wants every problem at once, each named by its YAML path. So the
//! compile step walks a `serde_yaml_ng::Value` with these helpers, which push
//! errors into a shared list and return `None` where a value is unusable.

use std::fmt;
use std::time::Duration;

use serde_yaml_ng::{Mapping, Value};

/// One problem in a config file, named by its YAML path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub path: String,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() {
            write!(f, "{}", self.message)
        } else {
            write!(f, "{}: {}", self.path, self.message)
        }
    }
}

/// Every problem found in one config file.
#[derive(Debug, Clone, Default)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

impl ConfigErrors {
    pub fn push(&mut self, path: &str, message: impl Into<String>) {
        self.0.push(ConfigError {
            path: path.to_string(),
            message: message.into(),
        });
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// A value and where it sits in the document.
#[derive(Clone, Copy)]
pub struct Node<'a> {
    pub value: &'a Value,
    pub path: &'a str,
}

/// A mapping whose keys were checked against the allowed set.
pub struct Map<'a> {
    map: &'a Mapping,
    path: &'a str,
}

/// Formats the path of a child key. Keys that are not plain identifiers are
/// bracketed so `add[tailscale.node]` reads unambiguously.
pub fn child_path(parent: &str, key: &str) -> String {
    let plain = !key.is_empty()
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    match (parent.is_empty(), plain) {
        (true, true) => key.to_string(),
        (false, true) => format!("{parent}.{key}"),
        (_, false) => format!("{parent}[{key}]"),
    }
}

pub fn index_path(parent: &str, i: usize) -> String {
    format!("{parent}[{i}]")
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Sequence(_) => "a list",
        Value::Mapping(_) => "a mapping",
        Value::Tagged(_) => "a tagged value",
    }
}

impl<'a> Node<'a> {
    pub fn new(value: &'a Value, path: &'a str) -> Self {
        Node { value, path }
    }

    fn wrong(&self, errs: &mut ConfigErrors, want: &str) {
        errs.push(
            self.path,
            format!("expected {want}, found {}", type_name(self.value)),
        );
    }

    /// A mapping; every key must be a string in `allowed`, or an error names it.
    pub fn map(&self, errs: &mut ConfigErrors, allowed: &[&str]) -> Option<Map<'a>> {
        let map = match self.value {
            Value::Mapping(m) => m,
            _ => {
                self.wrong(errs, "a mapping");
                return None;
            }
        };
        for k in map.keys() {
            match k.as_str() {
                Some(k) if allowed.contains(&k) => {}
                Some(k) => errs.push(
                    &child_path(self.path, k),
                    format!("unknown key (supported here: {})", allowed.join(", ")),
                ),
                None => errs.push(self.path, "mapping keys must be strings"),
            }
        }
        Some(Map {
            map,
            path: self.path,
        })
    }

    /// A mapping with arbitrary string keys, in document order.
    pub fn entries(&self, errs: &mut ConfigErrors) -> Vec<(&'a str, &'a Value)> {
        match self.value {
            Value::Mapping(m) => m
                .iter()
                .filter_map(|(k, v)| match k.as_str() {
                    Some(k) => Some((k, v)),
                    None => {
                        errs.push(self.path, "mapping keys must be strings");
                        None
                    }
                })
                .collect(),
            _ => {
                self.wrong(errs, "a mapping");
                Vec::new()
            }
        }
    }

    pub fn seq(&self, errs: &mut ConfigErrors) -> &'a [Value] {
        match self.value {
            Value::Sequence(s) => s,
            _ => {
                self.wrong(errs, "a list");
                &[]
            }
        }
    }

    pub fn str(&self, errs: &mut ConfigErrors) -> Option<&'a str> {
        match self.value {
            Value::String(s) => Some(s),
            _ => {
                self.wrong(errs, "a string");
                None
            }
        }
    }

    pub fn bool(&self, errs: &mut ConfigErrors) -> Option<bool> {
        match self.value {
            Value::Bool(b) => Some(*b),
            _ => {
                self.wrong(errs, "a boolean");
                None
            }
        }
    }

    /// An unsigned integer within `min..=max`.
    pub fn uint(&self, errs: &mut ConfigErrors, min: u64, max: u64) -> Option<u64> {
        let n = match self.value {
            Value::Number(n) => n.as_u64(),
            _ => None,
        };
        match n {
            Some(n) if (min..=max).contains(&n) => Some(n),
            Some(n) => {
                errs.push(self.path, format!("{n} is out of range ({min} to {max})"));
                None
            }
            None => {
                self.wrong(errs, "a non-negative integer");
                None
            }
        }
    }

    /// A duration written as `500ms`, `10s`, `5m`, `1h`, or an integer number of
    /// milliseconds. Zero is refused: every wait in ringgate has a deadline.
    pub fn duration(&self, errs: &mut ConfigErrors) -> Option<Duration> {
        let parsed = match self.value {
            Value::Number(n) => n.as_u64().map(Duration::from_millis),
            Value::String(s) => parse_duration(s),
            _ => None,
        };
        match parsed {
            Some(d) if !d.is_zero() => Some(d),
            Some(_) => {
                errs.push(self.path, "duration must be greater than zero");
                None
            }
            None => {
                errs.push(
                    self.path,
                    "expected a duration such as \"500ms\", \"10s\" or \"5m\"",
                );
                None
            }
        }
    }
}

impl<'a> Map<'a> {
    /// The child under `key` and its path.
    pub fn get(&self, key: &str) -> Option<(&'a Value, String)> {
        self.map.get(key).map(|v| (v, child_path(self.path, key)))
    }

    pub fn has(&self, key: &str) -> bool {
        self.map.contains_key(key)
    }

    /// Reports a missing required key.
    pub fn require(&self, errs: &mut ConfigErrors, key: &str) -> Option<(&'a Value, String)> {
        let got = self.get(key);
        if got.is_none() {
            errs.push(&child_path(self.path, key), "required key is missing");
        }
        got
    }

    pub fn path(&self) -> &'a str {
        self.path
    }
}

pub fn parse_duration(s: &str) -> Option<Duration> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit())?;
    let (num, unit) = s.split_at(split);
    let n: u64 = num.parse().ok()?;
    let ms = match unit {
        "ms" => n,
        "s" => n.checked_mul(1000)?,
        "m" => n.checked_mul(60_000)?,
        "h" => n.checked_mul(3_600_000)?,
        _ => return None,
    };
    Some(Duration::from_millis(ms))
}

// Helpers the compile steps share: typed reads of common shapes.

/// Compiles a CEL expression, reporting a failure at `path`.
pub fn expr(
    src: &str,
    path: &str,
    allowed: &[&str],
    errs: &mut ConfigErrors,
) -> Option<crate::policy::cel::Expr> {
    match crate::policy::cel::Expr::compile(src, allowed) {
        Ok(e) => Some(e),
        Err(msg) => {
            errs.push(path, format!("invalid CEL expression: {msg}"));
            None
        }
    }
}

pub fn opt_str(m: &Map, key: &str, errs: &mut ConfigErrors) -> Option<String> {
    m.get(key)
        .and_then(|(v, p)| Node::new(v, &p).str(errs).map(str::to_string))
}

pub fn string_list(node: Node, errs: &mut ConfigErrors) -> Vec<String> {
    let mut out = Vec::new();
    for (i, v) in node.seq(errs).iter().enumerate() {
        let p = index_path(node.path, i);
        if let Some(s) = Node::new(v, &p).str(errs) {
            out.push(s.to_string());
        }
    }
    out
}

/// A mapping of names to strings, in document order.
pub fn string_map(node: Node, errs: &mut ConfigErrors) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for (k, v) in node.entries(errs) {
        let p = child_path(node.path, k);
        if let Some(s) = Node::new(v, &p).str(errs) {
            out.push((k.to_string(), s.to_string()));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("500ms"), Some(Duration::from_millis(500)));
        assert_eq!(parse_duration("10s"), Some(Duration::from_secs(10)));
        assert_eq!(parse_duration("2m"), Some(Duration::from_secs(120)));
        assert_eq!(parse_duration("1h"), Some(Duration::from_secs(3600)));
        assert_eq!(parse_duration("10"), None);
        assert_eq!(parse_duration("s"), None);
        assert_eq!(parse_duration("1d"), None);
    }

    #[test]
    fn paths() {
        assert_eq!(child_path("", "binds"), "binds");
        assert_eq!(child_path("a", "b"), "a.b");
        assert_eq!(child_path("add", "tailscale.node"), "add[tailscale.node]");
        assert_eq!(index_path("binds", 0), "binds[0]");
    }
}
