//! Per-request variables, and how the interpreter reads them.

use std::borrow::Cow;
use std::collections::hash_map::Entry;
use std::collections::HashMap;

use ::cel::common::types::{CelBytes, CelInt, CelMap, CelMapKey, CelString};
use ::cel::common::value::{CowVal, Val};
use ::cel::context::VariableResolver;

use super::value::{value_to_val, Value};

/// Per-request inputs, borrowed from the request being served.
#[derive(Clone, Copy, Debug, Default)]
pub struct Vars<'a> {
    /// IP only, IPv4-mapped IPv6 already unmapped.
    pub source_address: &'a str,
    pub source_port: u16,
    pub method: &'a str,
    /// Request target (path and query) as received.
    pub path: &'a str,
    /// Request headers, names as received.
    pub headers: &'a [(&'a str, &'a [u8])],
    /// The authz answer, for `metadata` expressions only.
    pub response: Option<ResponseVars<'a>>,
    /// Metadata values of the authz answer, for access-log and
    /// `mcpAuthorization` expressions. Values may be structured (a whois
    /// `CapMap` is a map of lists of maps) or null.
    pub extauthz: Option<&'a [(String, Value)]>,
    /// What an MCP request asks for, for `mcpAuthorization` rules.
    pub mcp: Option<McpVars<'a>>,
}

/// `mcp.*`: the JSON-RPC method and the tool, prompt or resource it names.
#[derive(Clone, Copy, Debug, Default)]
pub struct McpVars<'a> {
    /// `mcp.methodName`.
    pub method: &'a str,
    /// `mcp.tool`, `mcp.prompt` or `mcp.resource`; absent for methods that
    /// name none (a rule reading `mcp.tool.name` then fails).
    pub resource: Option<McpResource<'a>>,
}

/// One tool, prompt or resource: `{name, target}` in CEL.
#[derive(Clone, Copy, Debug)]
pub struct McpResource<'a> {
    pub kind: McpKind,
    /// The tool or prompt name, or the resource URI.
    pub name: &'a str,
    /// The MCP target (backend) that serves it.
    pub target: &'a str,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum McpKind {
    Tool,
    Prompt,
    Resource,
}

impl McpKind {
    /// The field of `mcp` it appears under.
    pub fn field(self) -> &'static str {
        match self {
            McpKind::Tool => "tool",
            McpKind::Prompt => "prompt",
            McpKind::Resource => "resource",
        }
    }
}

#[derive(Clone, Copy, Debug)]
pub struct ResponseVars<'a> {
    pub code: u16,
    pub body: &'a [u8],
    pub headers: &'a [(&'a str, &'a [u8])],
}

/// Answers the interpreter's variable lookups from [`Vars`]. The interpreter
/// asks for the longest qualified name first (`source.address`, then
/// `source`), so a field read never builds the enclosing map.
pub(super) struct Resolver<'r, 'a> {
    pub(super) vars: &'r Vars<'a>,
}

impl VariableResolver for Resolver<'_, '_> {
    fn resolve<'b>(&'b self, name: &str) -> Option<CowVal<'b, 'b>> {
        let v = self.vars;
        let val: Box<dyn Val + 'b> = match name {
            "source.address" => Box::new(CelString::from(v.source_address)),
            "source.port" => Box::new(CelInt::from(i64::from(v.source_port))),
            "request.method" => Box::new(CelString::from(v.method)),
            "request.path" => Box::new(CelString::from(v.path)),
            "request.headers" => Box::new(headers_map(v.headers)),
            "response.code" => Box::new(CelInt::from(i64::from(v.response?.code))),
            "response.body" => Box::new(CelBytes::from(v.response?.body)),
            "response.headers" => Box::new(headers_map(v.response?.headers)),
            "source" => Box::new(map([
                ("address", str_val(v.source_address)),
                ("port", Box::new(CelInt::from(i64::from(v.source_port)))),
            ])),
            "request" => Box::new(map([
                ("method", str_val(v.method)),
                ("path", str_val(v.path)),
                ("headers", Box::new(headers_map(v.headers)) as Box<dyn Val>),
            ])),
            "response" => {
                let r = v.response?;
                Box::new(map([
                    (
                        "code",
                        Box::new(CelInt::from(i64::from(r.code))) as Box<dyn Val>,
                    ),
                    ("body", Box::new(CelBytes::from(r.body))),
                    ("headers", Box::new(headers_map(r.headers))),
                ]))
            }
            "mcp.methodName" => str_val(v.mcp?.method),
            "mcp" => {
                let m = v.mcp?;
                let mut entries: HashMap<CelMapKey<'b>, Box<dyn Val + 'b>> = HashMap::new();
                entries.insert(CelMapKey::from("methodName"), str_val(m.method));
                if let Some(r) = m.resource {
                    entries.insert(CelMapKey::from(r.kind.field()), Box::new(resource_map(r)));
                }
                Box::new(CelMap::from(entries))
            }
            // Without authz metadata, `extauthz` is an empty map: a read is a
            // missing key and `has()` is false, rather than an unknown name.
            "extauthz" => Box::new(CelMap::from(
                v.extauthz
                    .unwrap_or_default()
                    .iter()
                    .map(|(k, val)| (CelMapKey::from(k.as_str()), value_to_val(val)))
                    .collect::<HashMap<_, _>>(),
            )),
            _ => {
                if let Some(rest) = name.strip_prefix("mcp.") {
                    return mcp_field(v.mcp?, rest).map(CowVal::Owned);
                }
                let key = name.strip_prefix("extauthz.")?;
                let (_, val) = v.extauthz?.iter().find(|(k, _)| k == key)?;
                value_to_val(val)
            }
        };
        Some(CowVal::Owned(val))
    }
}

/// `mcp.tool`, `mcp.tool.name`, `mcp.tool.target` (and the same for prompt
/// and resource); `None` when the request names no such thing.
fn mcp_field<'b>(m: McpVars<'b>, rest: &str) -> Option<Box<dyn Val + 'b>> {
    let r = m.resource?;
    let (kind, field) = match rest.split_once('.') {
        Some((k, f)) => (k, Some(f)),
        None => (rest, None),
    };
    if kind != r.kind.field() {
        return None;
    }
    Some(match field {
        None => Box::new(resource_map(r)),
        Some("name") => str_val(r.name),
        Some("target") => str_val(r.target),
        Some(_) => return None,
    })
}

fn resource_map(r: McpResource<'_>) -> CelMap<'_> {
    map([("name", str_val(r.name)), ("target", str_val(r.target))])
}

fn str_val(s: &str) -> Box<dyn Val + '_> {
    Box::new(CelString::from(s))
}

fn map<'a, const N: usize>(entries: [(&'static str, Box<dyn Val + 'a>); N]) -> CelMap<'a> {
    CelMap::from(
        entries
            .into_iter()
            .map(|(k, v)| (CelMapKey::from(k), v))
            .collect::<HashMap<_, _>>(),
    )
}

/// Header names lower-cased; repeated headers joined with ", " as RFC 9110
/// allows; values that are not UTF-8 are decoded lossily.
fn headers_map<'a>(headers: &'a [(&'a str, &'a [u8])]) -> CelMap<'a> {
    let mut out: HashMap<CelMapKey<'a>, Box<dyn Val + 'a>> = HashMap::with_capacity(headers.len());
    for (name, value) in headers {
        let key = if name.bytes().any(|b| b.is_ascii_uppercase()) {
            CelMapKey::from(name.to_ascii_lowercase())
        } else {
            CelMapKey::from(*name)
        };
        let value = match std::str::from_utf8(value) {
            Ok(s) => Cow::Borrowed(s),
            Err(_) => String::from_utf8_lossy(value),
        };
        match out.entry(key) {
            Entry::Vacant(e) => {
                e.insert(Box::new(CelString::from(value)));
            }
            Entry::Occupied(mut e) => {
                let prev = e
                    .get()
                    .downcast_ref::<CelString>()
                    .map_or("", |s| s.inner());
                let joined = format!("{prev}, {value}");
                e.insert(Box::new(CelString::from(joined)));
            }
        }
    }
    CelMap::from(out)
}
