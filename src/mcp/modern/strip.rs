//! The 2026-07-28 envelope members taken out of a request's `params._meta`
//! before it goes to a handshake-era child, by splicing bytes.
//!
//! ringgate initializes every child with `initialize`, so the child serves
//! the handshake era; some servers (the Python SDK 2.x) refuse a request
//! that carries the modern envelope on such a connection. The envelope is
//! ringgate's to read (the checks, MRTR, the log level), not the child's.
//! Every other `_meta` member (`progressToken`, user keys) and the rest of
//! the line keep their bytes; an `_meta` left with no member becomes `{}`.

use std::borrow::Cow;
use std::fmt;
use std::ops::Range;

use serde::de::{Deserializer, MapAccess, Visitor};
use serde::Deserialize;
use serde_json::value::RawValue;

use super::envelope::{span, Envelope, LOG_LEVEL_KEY, PROTOCOL_VERSION_KEY};
use super::splice::splice;

pub const CLIENT_CAPABILITIES_KEY: &str = "io.modelcontextprotocol/clientCapabilities";
pub const CLIENT_INFO_KEY: &str = "io.modelcontextprotocol/clientInfo";

/// The `_meta` members of the 2026-07-28 envelope.
pub const ENVELOPE_KEYS: &[&str] = &[
    PROTOCOL_VERSION_KEY,
    CLIENT_CAPABILITIES_KEY,
    CLIENT_INFO_KEY,
    LOG_LEVEL_KEY,
];

/// A member name, decoded (escapes resolved) only when it has any.
struct Key<'a>(Cow<'a, str>);

impl<'de> Deserialize<'de> for Key<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Key<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a member name")
            }
            fn visit_borrowed_str<E>(self, s: &'de str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Borrowed(s)))
            }
            fn visit_str<E>(self, s: &str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Owned(s.to_string())))
            }
        }
        d.deserialize_str(V)
    }
}

/// The members of an object in their order (duplicates kept).
struct Members<'a>(Vec<(Key<'a>, &'a RawValue)>);

impl<'de> Deserialize<'de> for Members<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Members<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("an object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut m: A) -> Result<Members<'de>, A::Error> {
                let mut v = Vec::new();
                while let Some(kv) = m.next_entry::<Key<'de>, &'de RawValue>()? {
                    v.push(kv);
                }
                Ok(Members(v))
            }
        }
        d.deserialize_map(V)
    }
}

/// The edit that replaces `meta` (a `_meta` object, a slice of `line`)
/// with itself less its envelope members, `inner` (edits in `line`'s
/// offsets, e.g. the progress token) applied to the members it keeps.
/// `None` when `meta` holds no envelope member (nothing to change: the
/// caller applies `inner` itself), or is not an object.
pub fn meta_edit(
    line: &str,
    meta: &RawValue,
    inner: &[(Range<usize>, &str)],
) -> Option<(Range<usize>, String)> {
    let whole = span(line, meta);
    let members: Members = serde_json::from_str(meta.get()).ok()?;
    let drop = |k: &Key| ENVELOPE_KEYS.contains(&k.0.as_ref());
    if !members.0.iter().any(|(k, _)| drop(k)) {
        return None;
    }
    let mut out = String::with_capacity(meta.get().len());
    out.push('{');
    let mut from = whole.start + 1;
    let mut first = true;
    for (k, v) in &members.0 {
        let end = span(line, v).end;
        let mut piece = from..end;
        from = end;
        if drop(k) {
            continue;
        }
        // After the previous value: whitespace, the comma, then the member.
        let text = &line[piece.clone()];
        let lead = text.len() - text.trim_start().len();
        if text[lead..].starts_with(',') {
            piece.start += lead + 1;
        }
        if !first {
            out.push(',');
        }
        first = false;
        let mut edits: Vec<_> = inner
            .iter()
            .filter(|(r, _)| r.start >= piece.start && r.end <= piece.end)
            .map(|(r, s)| (r.start - piece.start..r.end - piece.start, *s))
            .collect();
        edits.sort_by_key(|(r, _)| r.start);
        let mut at = 0;
        let text = &line[piece.clone()];
        for (r, s) in edits {
            out.push_str(&text[at..r.start]);
            out.push_str(s);
            at = r.end;
        }
        out.push_str(&text[at..]);
    }
    match first {
        // Whatever followed the last value (whitespace and the brace).
        false => out.push_str(&line[from..whole.end]),
        true => out.push('}'),
    }
    Some((whole, out))
}

/// A client's request `line` (which `env` borrows) as a child gets it:
/// its id replaced by `id`, its progress token (if any) by `token`, its
/// envelope members gone; every other byte its own.
pub fn forward(line: &str, env: &Envelope, id: &str, token: &str) -> String {
    let mut edits = Vec::new();
    if let Some(i) = env.id {
        edits.push((span(line, i), id));
    }
    let token: Vec<_> = env
        .progress_token
        .map(|t| (span(line, t), token))
        .into_iter()
        .collect();
    let meta = env.meta.and_then(|m| meta_edit(line, m, &token));
    match &meta {
        Some((r, text)) => edits.push((r.clone(), text.as_str())),
        None => edits.extend(token),
    }
    splice(line, edits)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mcp::modern::envelope::parse;

    fn forward(line: &str) -> String {
        super::forward(line, &parse(line).unwrap(), "41", r#""rg41""#)
    }

    #[test]
    fn envelope_members_go_the_rest_stays() {
        let line = r#"{"jsonrpc":"2.0","id":"a","method":"tools/call","params":{"name":"echo","_meta":{"io.modelcontextprotocol/protocolVersion":"2026-07-28","progressToken":"p\u00e9", "user/k\u00e9y" : {"x":[1,2]},"io.modelcontextprotocol/clientCapabilities":{},"io.modelcontextprotocol/clientInfo":{"name":"c","version":"1"},"z":"\u00e9"},"arguments":{"message":"h\u00e9"}}}"#;
        assert_eq!(
            forward(line),
            r#"{"jsonrpc":"2.0","id":41,"method":"tools/call","params":{"name":"echo","_meta":{"progressToken":"rg41", "user/k\u00e9y" : {"x":[1,2]},"z":"\u00e9"},"arguments":{"message":"h\u00e9"}}}"#
        );
    }

    #[test]
    fn whitespace_and_order_are_kept() {
        let line = "{\"id\":1,\"method\":\"m\",\"params\":{\"_meta\": { \"a\" : 1 ,\n \"io.modelcontextprotocol/logLevel\" : \"info\" ,\n \"progressToken\" : 7 } ,\"x\":null}}";
        assert_eq!(
            forward(line),
            "{\"id\":41,\"method\":\"m\",\"params\":{\"_meta\": { \"a\" : 1,\n \"progressToken\" : \"rg41\" } ,\"x\":null}}"
        );
        // The first member dropped: the next one keeps its own spacing.
        let line = r#"{"id":1,"method":"m","params":{"_meta":{ "io.modelcontextprotocol/protocolVersion":"2026-07-28",  "b":[] }}}"#;
        assert_eq!(
            forward(line),
            r#"{"id":41,"method":"m","params":{"_meta":{  "b":[] }}}"#
        );
    }

    #[test]
    fn escaped_envelope_names_are_recognised() {
        let line = r#"{"id":1,"method":"m","params":{"_meta":{"io.modelcontextprotocol\/protocolVersion":"2026-07-28","io.modelcontextprotocol\u002fclientCapabilities":{"a":"\""},"k":"v"}}}"#;
        assert_eq!(
            forward(line),
            r#"{"id":41,"method":"m","params":{"_meta":{"k":"v"}}}"#
        );
    }

    #[test]
    fn only_envelope_members_leave_an_empty_meta() {
        let line = r#"{"jsonrpc":"2.0","id":2,"method":"tools/list","params":{"_meta":{"io.modelcontextprotocol/protocolVersion":"2026-07-28","io.modelcontextprotocol/clientCapabilities":{"sampling":{}}}}}"#;
        assert_eq!(
            forward(line),
            r#"{"jsonrpc":"2.0","id":41,"method":"tools/list","params":{"_meta":{}}}"#
        );
    }

    #[test]
    fn without_envelope_members_only_the_id_and_token_change() {
        let line = r#"{"id":1,"method":"m","params":{"_meta":{"progressToken":5,"io.modelcontextprotocol/ui":{}}}}"#;
        let env = parse(line).unwrap();
        assert!(meta_edit(line, env.meta.unwrap(), &[]).is_none());
        assert_eq!(
            forward(line),
            r#"{"id":41,"method":"m","params":{"_meta":{"progressToken":"rg41","io.modelcontextprotocol/ui":{}}}}"#
        );
        let line = r#"{"id":1,"method":"m","params":{"a":1}}"#;
        assert_eq!(forward(line), r#"{"id":41,"method":"m","params":{"a":1}}"#);
        let line = r#"{"id":1,"method":"m"}"#;
        assert_eq!(forward(line), r#"{"id":41,"method":"m"}"#);
    }
}
