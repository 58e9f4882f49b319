//! Several MCP targets behind one endpoint, the pure part: how names and
//! URIs are exposed and routed back, and how the children's answers to a
//! fanned-out request become one answer. Everything works on the JSON text
//! of the messages: values are spliced as the children wrote them (borrowed
//! `RawValue` spans), and only the member that must change is rewritten.
//!
//! agentgateway's conventions: a tool or prompt `echo` of target `a` is
//! `a_echo` (the name is split at its first `_`; target names have none); a
//! resource URI with a scheme, `file:///x`, is `a+file:///x` (split at the
//! first `+`), a URI without a scheme is left alone. `initialize` is answered
//! with the lowest protocol version the children chose, the union of their
//! capabilities, their instructions each under `[target]`, and ringgate's
//! own `serverInfo`.

use std::borrow::Cow;
use std::fmt;
use std::ops::Range;

use serde::de::{Deserializer, MapAccess, Visitor};
use serde_json::value::RawValue;

/// The members of a JSON object, in order, with the span of each value in
/// the object's text. `None` when the text is not an object.
pub fn members(obj: &str) -> Option<Vec<(Cow<'_, str>, Range<usize>)>> {
    struct V;
    impl<'de> Visitor<'de> for V {
        type Value = Vec<(Cow<'de, str>, &'de RawValue)>;
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("an object")
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
            let mut out = Vec::new();
            while let Some(k) = map.next_key::<Cow<'de, str>>()? {
                out.push((k, map.next_value::<&'de RawValue>()?));
            }
            Ok(out)
        }
    }
    let mut de = serde_json::Deserializer::from_str(obj);
    let raw = (&mut de).deserialize_map(V).ok()?;
    de.end().ok()?;
    let base = obj.as_ptr() as usize;
    Some(
        raw.into_iter()
            .map(|(k, v)| {
                let start = v.get().as_ptr() as usize - base;
                (k, start..start + v.get().len())
            })
            .collect(),
    )
}

/// The span of member `key`'s value (the last one, if repeated).
pub fn member(obj: &str, key: &str) -> Option<Range<usize>> {
    members(obj)?
        .into_iter()
        .rev()
        .find(|(k, _)| k == key)
        .map(|(_, r)| r)
}

/// The methods whose requests name their target (see [`named`]).
pub const ROUTED: &[&str] = &[
    "tools/call",
    "prompts/get",
    "resources/read",
    "resources/subscribe",
    "resources/unsubscribe",
    "completion/complete",
];

/// Where a request names the target it goes to: what it names (for the
/// "Unknown ..." error), the span of the name or URI string in `line` (none
/// when the request lacks it), and whether it is a URI. `None`: the method
/// names no target (nor does a completion reference without one).
pub fn named(line: &str, method: &str) -> Option<(&'static str, Option<Range<usize>>, bool)> {
    Some(match method {
        "tools/call" => ("tool", nested(line, "params", "name"), false),
        "prompts/get" => ("prompt", nested(line, "params", "name"), false),
        "resources/read" | "resources/subscribe" | "resources/unsubscribe" => {
            ("resource", nested(line, "params", "uri"), true)
        }
        "completion/complete" => {
            let r = nested(line, "params", "ref")?;
            let obj = &line[r.clone()];
            let (k, uri) = match member(obj, "uri") {
                Some(s) => (s, true),
                None => (member(obj, "name")?, false),
            };
            ("reference", Some(r.start + k.start..r.start + k.end), uri)
        }
        _ => return None,
    })
}

/// The span of `outer.inner`'s value.
pub fn nested(obj: &str, outer: &str, inner: &str) -> Option<Range<usize>> {
    let o = member(obj, outer)?;
    let i = member(&obj[o.clone()], inner)?;
    Some(o.start + i.start..o.start + i.end)
}

/// `text` with `range` replaced by `with`.
pub fn splice(text: &str, range: Range<usize>, with: &str) -> String {
    let mut s = String::with_capacity(text.len() + with.len());
    s.push_str(&text[..range.start]);
    s.push_str(with);
    s.push_str(&text[range.end..]);
    s
}

/// The string a JSON string literal stands for.
pub fn decode_str(raw: &str) -> Option<String> {
    serde_json::from_str(raw).ok()
}

/// Prepends `prefix` inside a JSON string literal, keeping the rest of its
/// bytes (escapes included) as written. `prefix` needs no escaping (target
/// names are letters, digits, `-` and `.`).
fn prepend(prefix: &str, raw: &str) -> String {
    format!("\"{prefix}{}", &raw[1..])
}

/// Drops the first `n` characters of the string literal `raw` stands for:
/// byte-wise when they are written unescaped, else re-encoded.
fn drop_chars(raw: &str, decoded: &str, n: usize) -> String {
    if raw.len() > n && raw[1..].starts_with(&decoded[..n]) {
        format!("\"{}", &raw[1 + n..])
    } else {
        serde_json::Value::String(decoded[n..].to_string()).to_string()
    }
}

/// How one backend's names and URIs are exposed.
#[derive(Debug, Clone)]
pub struct Naming {
    pub targets: Vec<String>,
    pub prefix_names: bool,
    pub prefix_uris: bool,
}

impl Naming {
    pub fn from_backend(b: &crate::config::McpBackend) -> Naming {
        Naming {
            targets: b.targets.iter().map(|t| t.name.clone()).collect(),
            prefix_names: b.prefixes_names(),
            prefix_uris: b.prefixes_uris(),
        }
    }

    fn index(&self, name: &str) -> Option<usize> {
        self.targets.iter().position(|t| t == name)
    }

    /// A tool or prompt name (JSON string literal) as the client sees it.
    pub fn expose_name<'a>(&self, target: usize, raw: &'a str) -> Cow<'a, str> {
        if self.prefix_names && raw.starts_with('"') {
            Cow::Owned(prepend(&format!("{}_", self.targets[target]), raw))
        } else {
            Cow::Borrowed(raw)
        }
    }

    /// The target of a prefixed name and the name its child knows; `None`
    /// when no target has that prefix, or when names are not prefixed (then
    /// the caller looks the name up).
    pub fn route_name<'n>(&self, name: &'n str) -> Option<(usize, &'n str)> {
        if !self.prefix_names {
            return None;
        }
        let (t, rest) = name.split_once('_')?;
        Some((self.index(t)?, rest))
    }

    /// A resource URI (JSON string literal) as the client sees it.
    pub fn expose_uri<'a>(&self, target: usize, raw: &'a str) -> Cow<'a, str> {
        match decode_str(raw) {
            Some(uri) if self.prefix_uris && has_scheme(&uri) => {
                Cow::Owned(prepend(&format!("{}+", self.targets[target]), raw))
            }
            _ => Cow::Borrowed(raw),
        }
    }

    /// The target of an exposed URI and the URI its child knows.
    pub fn route_uri<'u>(&self, uri: &'u str) -> Option<(usize, &'u str)> {
        if !self.prefix_uris {
            return None;
        }
        let (t, rest) = uri.split_once('+')?;
        Some((self.index(t)?, rest))
    }

    /// The targets that may serve a called name (a URI when `uri`), each
    /// with the name its child knows: the prefixed one, or under `never`
    /// every target (the session finds the one that lists it).
    pub fn candidates<'n>(&self, name: &'n str, uri: bool) -> Vec<(usize, &'n str)> {
        let routed = if uri {
            self.route_uri(name)
        } else {
            self.route_name(name)
        };
        match routed {
            Some(r) => vec![r],
            None if !uri && !self.prefix_names => {
                (0..self.targets.len()).map(|t| (t, name)).collect()
            }
            None => Vec::new(),
        }
    }

    /// Rewrites the string member at `range` of `line` (a client's message)
    /// from its exposed form (a prefixed name, or a URI when `uri`) to the
    /// child's; the target and the new line.
    pub fn unexpose(&self, line: &str, range: Range<usize>, uri: bool) -> Option<(usize, String)> {
        let raw = &line[range.clone()];
        let decoded = decode_str(raw)?;
        let target = if uri {
            self.route_uri(&decoded)?.0
        } else {
            self.route_name(&decoded)?.0
        };
        let cut = self.targets[target].len() + 1;
        Some((target, splice(line, range, &drop_chars(raw, &decoded, cut))))
    }
}

/// RFC 3986: `ALPHA *( ALPHA / DIGIT / "+" / "-" / "." ) ":"`.
pub fn has_scheme(uri: &str) -> bool {
    let Some((scheme, _)) = uri.split_once(':') else {
        return false;
    };
    let mut b = scheme.bytes();
    b.next().is_some_and(|c| c.is_ascii_alphabetic())
        && b.all(|c| c.is_ascii_alphanumeric() || matches!(c, b'+' | b'-' | b'.'))
}

/// The list methods a multiplexed session fans out, and the member of each
/// item that carries its routing key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ListKind {
    Tools,
    Prompts,
    Resources,
    ResourceTemplates,
}

impl ListKind {
    pub fn of_method(method: &str) -> Option<ListKind> {
        Some(match method {
            "tools/list" => ListKind::Tools,
            "prompts/list" => ListKind::Prompts,
            "resources/list" => ListKind::Resources,
            "resources/templates/list" => ListKind::ResourceTemplates,
            _ => return None,
        })
    }
    pub fn key(self) -> &'static str {
        match self {
            ListKind::Tools => "tools",
            ListKind::Prompts => "prompts",
            ListKind::Resources => "resources",
            ListKind::ResourceTemplates => "resourceTemplates",
        }
    }
    fn member(self) -> &'static str {
        match self {
            ListKind::Tools | ListKind::Prompts => "name",
            ListKind::Resources => "uri",
            ListKind::ResourceTemplates => "uriTemplate",
        }
    }
}

/// The id a server-to-client request from `target` carries to the client:
/// a string naming the target and holding the child's id as written, so the
/// client's answer goes back to that child with its id byte for byte.
pub fn expose_request_id(target: &str, raw: &str) -> String {
    serde_json::Value::String(format!("{target}:{raw}")).to_string()
}

/// The target and the child's raw id of a client's answer whose id is `raw`.
pub fn route_response_id(naming: &Naming, raw: &str) -> Option<(usize, String)> {
    let s = decode_str(raw)?;
    let (t, orig) = s.split_once(':')?;
    let t = naming.index(t)?;
    // Only an id ringgate made: the child's id was valid JSON.
    serde_json::from_str::<&RawValue>(orig).ok()?;
    Some((t, orig.to_string()))
}

#[path = "multiplex_merge.rs"]
mod merge;
pub use merge::*;

#[cfg(test)]
#[path = "multiplex_tests.rs"]
mod tests;
