//! JSON-RPC 2.0 messages as MCP uses them: classify what a client POSTs, and
//! peek at what a child writes, without building more than routing needs.

use std::borrow::Cow;

use serde::de::IgnoredAny;
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::Value;

/// JSON-RPC error codes.
pub const PARSE_ERROR: i64 = -32700;
pub const INVALID_REQUEST: i64 = -32600;
pub const INTERNAL_ERROR: i64 = -32603;

/// A client message, re-serialised as one line for the child's stdin.
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
pub fn parse_body(body: &[u8]) -> Result<(Vec<Message>, bool), BodyError> {
    let v: Value = serde_json::from_slice(body).map_err(|_| BodyError::Parse)?;
    match v {
        Value::Array(items) if !items.is_empty() => {
            let msgs = items
                .into_iter()
                .map(classify)
                .collect::<Result<Vec<_>, _>>()?;
            Ok((msgs, true))
        }
        Value::Object(_) => Ok((vec![classify(v)?], false)),
        _ => Err(BodyError::Invalid),
    }
}

fn classify(v: Value) -> Result<Message, BodyError> {
    let obj = v.as_object().ok_or(BodyError::Invalid)?;
    if obj.get("jsonrpc").and_then(Value::as_str) != Some("2.0") {
        return Err(BodyError::Invalid);
    }
    let id = match obj.get("id") {
        Some(id @ (Value::String(_) | Value::Number(_))) => Some(id.to_string()),
        Some(Value::Null) | None => None,
        Some(_) => return Err(BodyError::Invalid),
    };
    let method = match obj.get("method") {
        Some(Value::String(m)) => Some(m.clone()),
        Some(_) => return Err(BodyError::Invalid),
        None => None,
    };
    let is_response = obj.contains_key("result") || obj.contains_key("error");
    let kind = match (method, id) {
        (Some(method), Some(id)) if !is_response => {
            let params = obj.get("params");
            let progress_token = params
                .and_then(|p| p.get("_meta"))
                .and_then(|m| m.get("progressToken"))
                .filter(|t| t.is_string() || t.is_number())
                .map(Value::to_string);
            let tool = (method == "tools/call")
                .then(|| params.and_then(|p| p.get("name")).and_then(Value::as_str))
                .flatten()
                .map(str::to_string);
            Kind::Request {
                id,
                method,
                progress_token,
                tool,
            }
        }
        (Some(method), None) if !is_response => Kind::Notification { method },
        (None, Some(id)) if is_response => Kind::Response { id },
        _ => return Err(BodyError::Invalid),
    };
    Ok(Message {
        line: v.to_string(),
        kind,
    })
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
    let canon = |raw: &RawValue| -> Option<String> {
        serde_json::from_str::<Value>(raw.get())
            .ok()
            .filter(|v| v.is_string() || v.is_number())
            .map(|v| v.to_string())
    };
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
mod tests {
    use super::*;

    #[test]
    fn classifies_client_messages() {
        let (m, batch) = parse_body(
            br#"{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"name":"echo","_meta":{"progressToken":"p1"}}}"#,
        )
        .unwrap();
        assert!(!batch);
        assert_eq!(
            m[0].kind,
            Kind::Request {
                id: "7".into(),
                method: "tools/call".into(),
                progress_token: Some("\"p1\"".into()),
                tool: Some("echo".into()),
            }
        );
        let (m, batch) = parse_body(
            b"[{\"jsonrpc\":\"2.0\",\"method\":\"notifications/initialized\"},\n {\"jsonrpc\":\"2.0\",\"id\":\"a\",\"result\":{}}]",
        )
        .unwrap();
        assert!(batch);
        assert_eq!(
            m[0].kind,
            Kind::Notification {
                method: "notifications/initialized".into()
            }
        );
        assert_eq!(m[1].kind, Kind::Response { id: "\"a\"".into() });
        assert!(!m[1].line.contains('\n'), "one line for the child");
    }

    #[test]
    fn rejects_bad_bodies() {
        assert_eq!(parse_body(b"{not json").unwrap_err(), BodyError::Parse);
        for bad in [
            &br#"[]"#[..],
            br#"42"#,
            br#"{"id":1,"method":"x"}"#,
            br#"{"jsonrpc":"1.0","id":1,"method":"x"}"#,
            br#"{"jsonrpc":"2.0","id":{},"method":"x"}"#,
            br#"{"jsonrpc":"2.0","id":1}"#,
            br#"{"jsonrpc":"2.0","method":1}"#,
        ] {
            assert_eq!(
                parse_body(bad).unwrap_err(),
                BodyError::Invalid,
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn peeks_child_lines() {
        assert_eq!(
            peek(br#"{"jsonrpc":"2.0","id":7,"result":{"content":[]}}"#),
            Some(Outgoing::Response { id: "7".into() })
        );
        assert_eq!(
            peek(br#"{"method":"notifications/progress","params":{"progressToken":"p1","progress":1},"jsonrpc":"2.0"}"#),
            Some(Outgoing::Notification { method: "notifications/progress".into(), progress: Some("\"p1\"".into()) })
        );
        assert_eq!(
            peek(br#"{"jsonrpc":"2.0","id":0,"method":"roots/list"}"#),
            Some(Outgoing::Request {
                method: "roots/list".into()
            })
        );
        assert_eq!(peek(b"hello"), None);
        assert_eq!(peek(br#"{"jsonrpc":"2.0"}"#), None);
        assert_eq!(peek(br#"{"jsonrpc":"2.0","id":null,"result":{}}"#), None);
    }

    /// Found by `fuzz/jsonrpc_child`: a line that was a JSON array was read
    /// as a struct written positionally, so `[7,null,null,{}]` passed for
    /// the answer to request 7.
    #[test]
    fn only_objects_are_messages() {
        for line in [
            &br#"[7,null,null,{}]"#[..],
            br#"[0,"",null,"",2]"#,
            br#"[{"jsonrpc":"2.0","id":1,"result":{}}]"#,
            br#""x""#,
            b"",
        ] {
            assert_eq!(peek(line), None, "{}", String::from_utf8_lossy(line));
        }
        // By-position params are valid JSON-RPC but carry no progress token.
        assert_eq!(
            peek(br#" {"jsonrpc":"2.0","method":"n","params":["p1"]}"#),
            Some(Outgoing::Notification {
                method: "n".into(),
                progress: None
            })
        );
        assert_eq!(peek(br#"{"jsonrpc":"2.0","method":"n","params":5}"#), None);
    }

    /// A child's answer to a message it could not parse has a null id; it
    /// used to count as "not JSON-RPC", which ended the session.
    #[test]
    fn null_id_errors_are_responses_to_no_request() {
        let line =
            br#"{"jsonrpc":"2.0","id":null,"error":{"code":-32700,"message":"Parse error"}}"#;
        assert_eq!(peek(line), Some(Outgoing::Response { id: "null".into() }));
    }

    #[test]
    fn error_lines_and_versions() {
        let l = error_line(Some("\"x\""), INTERNAL_ERROR, "MCP server \"exited\"");
        let v: Value = serde_json::from_str(&l).unwrap();
        assert_eq!(v["id"], "x");
        assert_eq!(v["error"]["code"], -32603);
        assert_eq!(
            protocol_version(br#"{"jsonrpc":"2.0","id":1,"result":{"protocolVersion":"2025-06-18","capabilities":{}}}"#),
            Some("2025-06-18".into())
        );
    }
}
