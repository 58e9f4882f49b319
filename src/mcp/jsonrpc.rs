//! JSON-RPC 2.0 messages as MCP uses them: classify what a client POSTs, and
//! peek at what a child writes, without building more than routing needs.
//!
//! ringgate is transparent: a client's message reaches the child as the
//! client wrote it, and a child's line reaches the client as the child wrote
//! it. Routing reads a borrowed parse (`RawValue` slices of the input, the
//! few members it needs, everything else only checked for syntax); no
//! message is ever re-serialised. Only the framing changes: a body (or a
//! batch element) becomes one stdin line, its line breaks between tokens
//! turned into spaces.

use std::borrow::Cow;
use std::fmt;

use serde::de::{self, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::Value;

/// JSON-RPC error codes.
pub const PARSE_ERROR: i64 = -32700;
pub const INVALID_REQUEST: i64 = -32600;
pub const INTERNAL_ERROR: i64 = -32603;

/// A client message and the line the child's stdin gets for it: the
/// message's own bytes, on one line.
#[derive(Debug, Clone, PartialEq)]
pub struct Message {
    pub line: String,
    pub kind: Kind,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Kind {
    /// `id` and `progress_token` are canonical JSON text, used as map keys.
    Request {
        id: String,
        method: String,
        progress_token: Option<String>,
        /// `params.name` of a `tools/call`, for the access log.
        tool: Option<String>,
    },
    Notification {
        method: String,
    },
    /// A client's answer to a request the server sent.
    Response {
        id: String,
    },
}

impl Message {
    pub fn is_request(&self) -> bool {
        matches!(self.kind, Kind::Request { .. })
    }
    pub fn method(&self) -> Option<&str> {
        match &self.kind {
            Kind::Request { method, .. } | Kind::Notification { method } => Some(method),
            Kind::Response { .. } => None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyError {
    /// Not JSON at all: -32700.
    Parse,
    /// JSON, but not JSON-RPC 2.0 message(s): -32600.
    Invalid,
}

impl BodyError {
    pub fn code(self) -> i64 {
        match self {
            BodyError::Parse => PARSE_ERROR,
            BodyError::Invalid => INVALID_REQUEST,
        }
    }
    pub fn message(self) -> &'static str {
        match self {
            BodyError::Parse => "Parse error",
            BodyError::Invalid => "Invalid Request",
        }
    }
}

/// Parses a POST body: one message, or a batch (a non-empty array).
/// Returns the messages and whether they came as a batch.
///
/// `Parse` exactly when the body is not JSON text (not UTF-8, or rejected
/// by serde_json's syntax check); anything else that is refused is
/// `Invalid`. Numbers and strings that routing does not read are checked
/// for syntax only and forwarded as written, so `1e400` or a lone
/// surrogate escape in a tool's arguments reach the child, which decides.
/// `params` must be structured (an object or an array) or `null`.
///
/// A member that routing reads (`jsonrpc`, `id`, `method`, `params`,
/// `result`, `error`; `params.name` and `params._meta`;
/// `params._meta.progressToken`) may appear once: a duplicate is `Invalid`,
/// since the child might read the other copy than ringgate did (another
/// tool, another id). Duplicates of other members are the child's business
/// and are forwarded.
pub fn parse_body(body: &[u8]) -> Result<(Vec<Message>, bool), BodyError> {
    let text = std::str::from_utf8(body).map_err(|_| BodyError::Parse)?;
    match text.bytes().find(|b| !is_ws(*b)) {
        Some(b'{') => Ok((vec![classify(text)?], false)),
        Some(b'[') => {
            // Each element is a slice of the body, never re-written.
            let items: Vec<&RawValue> = serde_json::from_str(text).map_err(|_| BodyError::Parse)?;
            if items.is_empty() {
                return Err(BodyError::Invalid);
            }
            let msgs = items
                .iter()
                .map(|raw| classify(raw.get()))
                .collect::<Result<Vec<_>, _>>()?;
            Ok((msgs, true))
        }
        _ => Err(refusal(text)),
    }
}

/// JSON whitespace, the only bytes allowed between tokens.
fn is_ws(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | b'\r')
}

/// Why `text` was refused: `Parse` if it is not even JSON.
#[cold]
fn refusal(text: &str) -> BodyError {
    match serde_json::from_str::<IgnoredAny>(text) {
        Ok(_) => BodyError::Invalid,
        Err(_) => BodyError::Parse,
    }
}

/// One message (`text` may have whitespace around it).
fn classify(text: &str) -> Result<Message, BodyError> {
    let f: Fields = serde_json::from_str(text).map_err(|_| refusal(text))?;
    let invalid = BodyError::Invalid;
    match f.jsonrpc.map(|r| string(r.get())) {
        Some(Some(v)) if v == "2.0" => {}
        _ => return Err(invalid),
    }
    let id = match f.id.map(RawValue::get) {
        None | Some("null") => None,
        Some(raw) => Some(canonical(raw).ok_or(invalid)?),
    };
    let method = match f.method {
        Some(raw) => Some(string(raw.get()).ok_or(invalid)?.into_owned()),
        None => None,
    };
    let is_response = f.result || f.error;
    let params = f.params.unwrap_or_default();
    let kind = match (method, id) {
        (Some(method), Some(id)) if !is_response => {
            let progress_token = match params.meta {
                Some(meta) if meta.get().starts_with('{') => {
                    let meta: Meta = serde_json::from_str(meta.get()).map_err(|_| invalid)?;
                    match meta.progress_token.map(RawValue::get) {
                        Some(raw) if matches!(raw.as_bytes()[0], b'"' | b'-' | b'0'..=b'9') => {
                            Some(canonical(raw).ok_or(invalid)?)
                        }
                        _ => None,
                    }
                }
                _ => None,
            };
            let tool = match params.name.map(RawValue::get) {
                Some(raw) if method == "tools/call" && raw.starts_with('"') => {
                    Some(string(raw).ok_or(invalid)?.into_owned())
                }
                _ => None,
            };
            Kind::Request {
                id,
                method,
                progress_token,
                tool,
            }
        }
        (Some(method), None) if !is_response => Kind::Notification { method },
        (None, Some(id)) if is_response => Kind::Response { id },
        _ => return Err(invalid),
    };
    Ok(Message {
        line: one_line(text),
        kind,
    })
}

/// The stdin line for a message's text: the same bytes, without the
/// whitespace around it, and each CR or LF turned into a space. JSON allows
/// no raw control character inside a string (serde_json refuses one even
/// when it only checks syntax), so in a message that parsed every CR and LF
/// is whitespace between tokens.
fn one_line(text: &str) -> String {
    let text = text.trim_matches(|c: char| c.is_ascii() && is_ws(c as u8));
    if memchr::memchr2(b'\n', b'\r', text.as_bytes()).is_none() {
        text.to_string()
    } else {
        text.replace(['\n', '\r'], " ")
    }
}

/// The value of a JSON string token, borrowed when it has no escape.
/// `None` if `raw` is not a string, or has an escape that is no character
/// (a lone surrogate).
fn string(raw: &str) -> Option<Cow<'_, str>> {
    let inner = raw.strip_prefix('"')?.strip_suffix('"')?;
    if !inner.contains('\\') {
        return Some(Cow::Borrowed(inner));
    }
    serde_json::from_str::<String>(raw).ok().map(Cow::Owned)
}

/// The canonical text of a JSON string or number (an id or a progress
/// token, as a map key): what serde_json writes for its value, so that one
/// value spelled two ways (`"\u0061"` and `"a"`; `1e2` and `100.0`, the way
/// a child may write back a client's id) is one key. `None` for other
/// values and for numbers out of range.
fn canonical(raw: &str) -> Option<String> {
    let b = raw.as_bytes();
    let digits = |d: &[u8]| !d.is_empty() && d.iter().all(u8::is_ascii_digit);
    // Fast paths: serde_json writes these exactly as JSON spells them.
    let as_is = match b.first()? {
        b'"' => !b.contains(&b'\\'),
        b'0'..=b'9' => digits(b) && raw.parse::<u64>().is_ok(),
        // `-0` is the float -0.0 to serde_json.
        b'-' => digits(&b[1..]) && raw.parse::<i64>().is_ok_and(|n| n != 0),
        _ => return None,
    };
    if as_is {
        return Some(raw.to_string());
    }
    serde_json::from_str::<Value>(raw)
        .ok()
        .filter(|v| v.is_string() || v.is_number())
        .map(|v| v.to_string())
}

/// The members of a message that routing reads, as slices of its text.
/// Every other member is only checked for syntax.
#[derive(Default)]
struct Fields<'a> {
    jsonrpc: Option<&'a RawValue>,
    id: Option<&'a RawValue>,
    method: Option<&'a RawValue>,
    params: Option<Params<'a>>,
    /// Present, whatever the value (even `null`).
    result: bool,
    error: bool,
}

/// `params`, by name or by position (or `null`). Only an object has
/// members routing reads.
#[derive(Default)]
struct Params<'a> {
    name: Option<&'a RawValue>,
    meta: Option<&'a RawValue>,
}

/// `params._meta`, read only for a request.
#[derive(Default)]
struct Meta<'a> {
    progress_token: Option<&'a RawValue>,
}

/// An object member's name, decoded (so `"n\u0061me"` is `name`, as the
/// child reads it), never allocated.
enum Key {
    Jsonrpc,
    Id,
    Method,
    Params,
    Result,
    Error,
    Name,
    Meta,
    ProgressToken,
    Other,
}

impl<'de> Deserialize<'de> for Key {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Key, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Key;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a member name")
            }
            fn visit_str<E: de::Error>(self, k: &str) -> Result<Key, E> {
                Ok(match k {
                    "jsonrpc" => Key::Jsonrpc,
                    "id" => Key::Id,
                    "method" => Key::Method,
                    "params" => Key::Params,
                    "result" => Key::Result,
                    "error" => Key::Error,
                    "name" => Key::Name,
                    "_meta" => Key::Meta,
                    "progressToken" => Key::ProgressToken,
                    _ => Key::Other,
                })
            }
        }
        d.deserialize_str(V)
    }
}

/// Fills `slot` with the next value, refusing a second one.
fn once<'de, A, T>(map: &mut A, slot: &mut Option<T>, name: &'static str) -> Result<(), A::Error>
where
    A: MapAccess<'de>,
    T: Deserialize<'de>,
{
    if slot.is_some() {
        return Err(de::Error::duplicate_field(name));
    }
    *slot = Some(map.next_value()?);
    Ok(())
}

fn present<'de, A: MapAccess<'de>>(
    map: &mut A,
    flag: &mut bool,
    name: &'static str,
) -> Result<(), A::Error> {
    if *flag {
        return Err(de::Error::duplicate_field(name));
    }
    map.next_value::<IgnoredAny>()?;
    *flag = true;
    Ok(())
}

impl<'de: 'a, 'a> Deserialize<'de> for Fields<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Fields<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a JSON-RPC message object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Fields<'de>, A::Error> {
                let mut f = Fields::default();
                while let Some(key) = map.next_key::<Key>()? {
                    match key {
                        Key::Jsonrpc => once(&mut map, &mut f.jsonrpc, "jsonrpc")?,
                        Key::Id => once(&mut map, &mut f.id, "id")?,
                        Key::Method => once(&mut map, &mut f.method, "method")?,
                        Key::Params => once(&mut map, &mut f.params, "params")?,
                        Key::Result => present(&mut map, &mut f.result, "result")?,
                        Key::Error => present(&mut map, &mut f.error, "error")?,
                        _ => {
                            map.next_value::<IgnoredAny>()?;
                        }
                    }
                }
                Ok(f)
            }
        }
        d.deserialize_map(V)
    }
}

impl<'de: 'a, 'a> Deserialize<'de> for Params<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Params<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("structured params")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Params<'de>, A::Error> {
                let mut p = Params::default();
                while let Some(key) = map.next_key::<Key>()? {
                    match key {
                        Key::Name => once(&mut map, &mut p.name, "name")?,
                        Key::Meta => once(&mut map, &mut p.meta, "_meta")?,
                        _ => {
                            map.next_value::<IgnoredAny>()?;
                        }
                    }
                }
                Ok(p)
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Params<'de>, A::Error> {
                while seq.next_element::<IgnoredAny>()?.is_some() {}
                Ok(Params::default())
            }
            // `"params": null`, which some clients write for "none".
            fn visit_unit<E: de::Error>(self) -> Result<Params<'de>, E> {
                Ok(Params::default())
            }
        }
        d.deserialize_any(V)
    }
}

impl<'de: 'a, 'a> Deserialize<'de> for Meta<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Meta<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("an object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Meta<'de>, A::Error> {
                let mut m = Meta::default();
                while let Some(key) = map.next_key::<Key>()? {
                    match key {
                        Key::ProgressToken => {
                            once(&mut map, &mut m.progress_token, "progressToken")?
                        }
                        _ => {
                            map.next_value::<IgnoredAny>()?;
                        }
                    }
                }
                Ok(m)
            }
        }
        d.deserialize_map(V)
    }
}

/// What a child's stdout line is, as far as routing cares.
#[derive(Debug, PartialEq)]
pub enum Outgoing {
    /// An answer to the client request with this (canonical) id.
    Response { id: String },
    /// A notification; `progress` is its `params.progressToken`, canonical.
    Notification {
        method: String,
        progress: Option<String>,
    },
    /// A request from the server to the client (`roots/list`, sampling...).
    Request { method: String },
}

/// A derived `Deserialize` also accepts a struct written as an array of its
/// fields in order; `peek` checks for an object first.
#[derive(Deserialize)]
struct Peek<'a> {
    #[serde(borrow)]
    id: Option<&'a RawValue>,
    #[serde(borrow)]
    method: Option<Cow<'a, str>>,
    #[serde(borrow)]
    params: Option<&'a RawValue>,
    result: Option<IgnoredAny>,
    error: Option<IgnoredAny>,
}

#[derive(Deserialize)]
struct PeekParams<'a> {
    #[serde(rename = "progressToken", borrow)]
    progress_token: Option<&'a RawValue>,
}

/// Classifies a line from a child; `None` for anything that is not a
/// JSON-RPC message (the child is then misbehaving).
pub fn peek(line: &[u8]) -> Option<Outgoing> {
    // A message is an object; `[7, null, null, {}]` would otherwise pass
    // for the answer to request 7.
    let first = line
        .iter()
        .find(|b| !matches!(b, b' ' | b'\t' | b'\n' | b'\r'));
    if first != Some(&b'{') {
        return None;
    }
    let p: Peek = serde_json::from_slice(line).ok()?;
    // Params are structured: by name (where a progress token may be) or by
    // position.
    let params = match p.params.map(|r| (r, r.get().as_bytes().first())) {
        None => None,
        Some((r, Some(b'{'))) => Some(serde_json::from_str::<PeekParams>(r.get()).ok()?),
        Some((_, Some(b'['))) => None,
        Some(_) => return None,
    };
    let canon = |raw: &RawValue| canonical(raw.get());
    match (p.method, p.id) {
        (Some(method), None) => Some(Outgoing::Notification {
            method: method.into_owned(),
            progress: params.and_then(|x| x.progress_token).and_then(canon),
        }),
        (Some(method), Some(_)) => Some(Outgoing::Request {
            method: method.into_owned(),
        }),
        (None, Some(id)) if p.result.is_some() || p.error.is_some() => {
            Some(Outgoing::Response { id: canon(id)? })
        }
        // An error about a request whose id the child could not read has
        // `"id": null` (JSON-RPC 2.0 section 5). It is still JSON-RPC, so it
        // must not end the session; it matches no request in flight.
        (None, None) if p.error.is_some() => Some(Outgoing::Response {
            id: "null".to_string(),
        }),
        _ => None,
    }
}

/// A JSON-RPC error response line.
pub fn error_line(id: Option<&str>, code: i64, message: &str) -> String {
    format!(
        r#"{{"jsonrpc":"2.0","id":{},"error":{{"code":{code},"message":{}}}}}"#,
        id.unwrap_or("null"),
        Value::String(message.to_string())
    )
}

/// `result.protocolVersion` of an initialize answer.
pub fn protocol_version(line: &[u8]) -> Option<String> {
    #[derive(Deserialize)]
    struct Init {
        result: InitResult,
    }
    #[derive(Deserialize)]
    struct InitResult {
        #[serde(rename = "protocolVersion")]
        protocol_version: String,
    }
    serde_json::from_slice::<Init>(line)
        .ok()
        .map(|i| i.result.protocol_version)
}

#[cfg(test)]
mod tests;
