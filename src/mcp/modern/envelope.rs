//! The members of a 2026-07-28 request that ringgate reads: borrowed slices
//! of the message's own line (so ids and progress tokens can be spliced),
//! never a re-serialised value.

use std::borrow::Cow;
use std::ops::Range;

use serde::Deserialize;
use serde_json::value::RawValue;

pub const PROTOCOL_VERSION_KEY: &str = "io.modelcontextprotocol/protocolVersion";
pub const LOG_LEVEL_KEY: &str = "io.modelcontextprotocol/logLevel";

/// What routing and the header checks need of one message.
#[derive(Debug, Default)]
pub struct Envelope<'a> {
    /// The top-level `id`, as written (absent or `null`: a notification).
    pub id: Option<&'a RawValue>,
    pub method: Option<Cow<'a, str>>,
    pub name: Option<&'a RawValue>,
    pub uri: Option<&'a RawValue>,
    pub arguments: Option<&'a RawValue>,
    /// `_meta["io.modelcontextprotocol/protocolVersion"]`, when a string.
    pub version: Option<Cow<'a, str>>,
    /// `_meta` carries the version key at all (whatever its value).
    pub has_version_key: bool,
    pub progress_token: Option<&'a RawValue>,
    /// `params._meta`, when an object.
    pub meta: Option<&'a RawValue>,
    pub log_level: Option<&'a RawValue>,
    /// `_meta["io.modelcontextprotocol/clientCapabilities"]`.
    pub client_capabilities: Option<&'a RawValue>,
    /// MRTR retry members: `params.inputResponses`, `params.requestState`.
    pub input_responses: Option<&'a RawValue>,
    pub request_state: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct Top<'a> {
    #[serde(borrow)]
    id: Option<&'a RawValue>,
    #[serde(borrow)]
    method: Option<Cow<'a, str>>,
    #[serde(borrow)]
    params: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct Params<'a> {
    #[serde(borrow)]
    name: Option<&'a RawValue>,
    #[serde(borrow)]
    uri: Option<&'a RawValue>,
    #[serde(borrow)]
    arguments: Option<&'a RawValue>,
    #[serde(borrow, rename = "_meta")]
    meta: Option<&'a RawValue>,
    #[serde(borrow, rename = "inputResponses")]
    input_responses: Option<&'a RawValue>,
    #[serde(borrow, rename = "requestState")]
    request_state: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct Meta<'a> {
    #[serde(borrow, rename = "io.modelcontextprotocol/protocolVersion")]
    version: Option<&'a RawValue>,
    #[serde(borrow, rename = "progressToken")]
    progress_token: Option<&'a RawValue>,
    #[serde(borrow, rename = "io.modelcontextprotocol/logLevel")]
    log_level: Option<&'a RawValue>,
    #[serde(borrow, rename = "io.modelcontextprotocol/clientCapabilities")]
    client_capabilities: Option<&'a RawValue>,
}

/// A JSON string token's value (`None` for any other token).
pub fn string(raw: &RawValue) -> Option<Cow<'_, str>> {
    let t = raw.get();
    if !t.starts_with('"') {
        return None;
    }
    match t[1..t.len() - 1].contains('\\') {
        false => Some(Cow::Borrowed(&t[1..t.len() - 1])),
        true => serde_json::from_str::<String>(t).ok().map(Cow::Owned),
    }
}

/// Parses one message (already validated as JSON-RPC by `jsonrpc`).
/// `None` if its shape is not what a request needs (the checks then fail).
pub fn parse(line: &str) -> Option<Envelope<'_>> {
    let top: Top = serde_json::from_str(line).ok()?;
    let mut env = Envelope {
        id: top.id.filter(|r| r.get() != "null"),
        method: top.method,
        ..Envelope::default()
    };
    let Some(params) = top.params.filter(|p| p.get().starts_with('{')) else {
        return Some(env);
    };
    let p: Params = serde_json::from_str(params.get()).ok()?;
    env.name = p.name;
    env.uri = p.uri;
    env.arguments = p.arguments;
    env.input_responses = p.input_responses;
    env.request_state = p.request_state;
    if let Some(meta) = p.meta.filter(|m| m.get().starts_with('{')) {
        env.meta = Some(meta);
        let m: Meta = serde_json::from_str(meta.get()).ok()?;
        env.has_version_key = m.version.is_some();
        env.version = m.version.and_then(string);
        env.progress_token = m
            .progress_token
            .filter(|t| matches!(t.get().as_bytes()[0], b'"' | b'-' | b'0'..=b'9'));
        env.log_level = m.log_level;
        env.client_capabilities = m.client_capabilities;
    }
    Some(env)
}

/// The client declared capability `name` (a member of its
/// `clientCapabilities` object).
pub fn declares(env: &Envelope, name: &str) -> bool {
    #[derive(Deserialize)]
    struct Caps<'a>(#[serde(borrow)] std::collections::HashMap<Cow<'a, str>, &'a RawValue>);
    env.client_capabilities
        .and_then(|c| serde_json::from_str::<Caps>(c.get()).ok())
        .is_some_and(|c| c.0.get(name).is_some_and(|v| v.get() != "null"))
}

/// Where `part` (a slice of `whole`) sits in `whole`.
pub fn span(whole: &str, part: &RawValue) -> Range<usize> {
    let start = part.get().as_ptr() as usize - whole.as_ptr() as usize;
    start..start + part.get().len()
}

/// Cheap pre-check before a full parse: could this body carry the envelope?
/// The searcher is built once (building it was about 1% of ringgate's CPU
/// per forwarded call).
pub fn mentions_version_key(body: &[u8]) -> bool {
    static KEY: std::sync::LazyLock<memchr::memmem::Finder<'static>> =
        std::sync::LazyLock::new(|| memchr::memmem::Finder::new(PROTOCOL_VERSION_KEY));
    KEY.find(body).is_some()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_envelope_and_spans() {
        let line = r#"{"jsonrpc":"2.0","id":  7.0 ,"method":"tools/call","params":{"name":"echo","arguments":{"message":"hi"},"_meta":{"progressToken":"t\u0031","io.modelcontextprotocol/protocolVersion":"2026-07-28","io.modelcontextprotocol/logLevel":"info"}}}"#;
        let e = parse(line).unwrap();
        assert_eq!(&line[span(line, e.id.unwrap())], "7.0");
        assert_eq!(e.method.as_deref(), Some("tools/call"));
        assert_eq!(string(e.name.unwrap()).as_deref(), Some("echo"));
        assert_eq!(e.version.as_deref(), Some("2026-07-28"));
        assert_eq!(&line[span(line, e.progress_token.unwrap())], r#""t\u0031""#);
        assert!(e.log_level.is_some());
        assert!(e.has_version_key);
    }

    #[test]
    fn notifications_and_plain_requests() {
        let e = parse(r#"{"jsonrpc":"2.0","method":"notifications/x","id":null}"#).unwrap();
        assert!(e.id.is_none());
        let e = parse(r#"{"jsonrpc":"2.0","id":1,"method":"tools/list"}"#).unwrap();
        assert!(e.version.is_none() && !e.has_version_key);
        let e = parse(r#"{"jsonrpc":"2.0","id":1,"method":"m","params":{"_meta":{"io.modelcontextprotocol/protocolVersion":5}}}"#).unwrap();
        assert!(e.has_version_key && e.version.is_none());
    }
}
