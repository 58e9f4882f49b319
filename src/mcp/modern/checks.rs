//! The header checks of the 2026-07-28 streamable HTTP transport, each with
//! the status and JSON-RPC code the spec gives it (`basic/transports/
//! streamable-http`, "Server Validation"): `MCP-Protocol-Version` against
//! the body's `_meta` (400 / -32020 HeaderMismatch), an unsupported version
//! (400 / -32022 with `data.supported` and `data.requested`), `Mcp-Method`,
//! `Mcp-Name` (base64 sentinel decoded before comparing) and the
//! `Mcp-Param-*` headers a tool's schema declares with `x-mcp-header`.

use base64::Engine;
use serde_json::Value;

use super::envelope::{string, Envelope};

/// The one stateless revision ringgate serves.
pub const MODERN_VERSION: &str = "2026-07-28";
pub const HEADER_MISMATCH: i64 = -32020;
pub const UNSUPPORTED_VERSION: i64 = -32022;
pub const METHOD_NOT_FOUND: i64 = -32601;

/// Why a modern request is refused before it reaches a child.
#[derive(Debug, PartialEq)]
pub struct Refusal {
    pub status: u16,
    pub code: i64,
    pub message: String,
    /// Raw JSON for `error.data`.
    pub data: Option<String>,
}

fn mismatch(message: impl Into<String>) -> Refusal {
    Refusal {
        status: 400,
        code: HEADER_MISMATCH,
        message: message.into(),
        data: None,
    }
}

/// `["2026-07-28", <handshake versions ringgate bridges>]` as JSON.
pub fn supported_json() -> String {
    let mut all = vec![MODERN_VERSION];
    all.extend(crate::mcp::KNOWN_VERSIONS.iter().rev());
    serde_json::to_string(&all).expect("strings")
}

/// An `x-mcp-header` annotation of a tool's input schema: the header's
/// name part and the chain of `properties` keys to the argument.
#[derive(Debug, Clone, PartialEq)]
pub struct ParamHeader {
    pub name: String,
    pub path: Vec<String>,
}

/// The header `name` (case-insensitive) among `headers`.
pub fn header<'h>(headers: &[(&str, &'h [u8])], name: &str) -> Option<&'h [u8]> {
    headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| *v)
}

/// A header value as the spec encodes it: visible ASCII, space and tab, or
/// the `=?base64?...?=` sentinel around base64 of UTF-8. `None` when it has
/// other bytes or a bad sentinel (never equal to a body value).
pub fn decode_value(raw: &[u8]) -> Option<String> {
    let raw = trim(raw);
    if raw
        .iter()
        .any(|b| !(b.is_ascii_graphic() || *b == b' ' || *b == b'\t'))
    {
        return None;
    }
    let text = std::str::from_utf8(raw).ok()?;
    match text
        .strip_prefix("=?base64?")
        .and_then(|t| t.strip_suffix("?="))
    {
        Some(b64) => {
            let bytes = base64::engine::general_purpose::STANDARD.decode(b64).ok()?;
            String::from_utf8(bytes).ok()
        }
        None => Some(text.to_string()),
    }
}

fn trim(v: &[u8]) -> &[u8] {
    crate::http::parse::trim_ows(v)
}

/// Runs every check on a request. `params` are the annotations of the
/// called tool, when the target's tool list is known.
pub fn check(
    headers: &[(&str, &[u8])],
    env: &Envelope,
    params: &[ParamHeader],
) -> Result<(), Refusal> {
    let Some(h) = header(headers, "mcp-protocol-version") else {
        return Err(mismatch("MCP-Protocol-Version header is required"));
    };
    let h = String::from_utf8_lossy(trim(h));
    let Some(body) = env.version.as_deref() else {
        return Err(mismatch(
            "request _meta lacks io.modelcontextprotocol/protocolVersion",
        ));
    };
    if h != body {
        return Err(mismatch(format!(
            "Header mismatch: MCP-Protocol-Version header value '{h}' does not match body value '{body}'"
        )));
    }
    if body != MODERN_VERSION {
        return Err(Refusal {
            status: 400,
            code: UNSUPPORTED_VERSION,
            message: format!("Unsupported protocol version: {body}"),
            data: Some(format!(
                r#"{{"supported":{},"requested":{}}}"#,
                supported_json(),
                Value::String(body.to_string())
            )),
        });
    }
    let method = env.method.as_deref().unwrap_or("");
    match header(headers, "mcp-method") {
        None => return Err(mismatch("Mcp-Method header is required")),
        Some(m) if trim(m) != method.as_bytes() => {
            return Err(mismatch(format!(
            "Header mismatch: Mcp-Method header value '{}' does not match body value '{method}'",
            String::from_utf8_lossy(m)
        )))
        }
        Some(_) => {}
    }
    let named = match method {
        "tools/call" | "prompts/get" => Some(("params.name", env.name)),
        "resources/read" => Some(("params.uri", env.uri)),
        _ => None,
    };
    if let Some((field, body)) = named {
        let body = body.and_then(string);
        match (header(headers, "mcp-name"), body) {
            (None, None) => {}
            (None, Some(_)) => return Err(mismatch("Mcp-Name header is required")),
            (Some(h), body) => {
                let decoded = decode_value(h);
                if decoded.is_none() || decoded.as_deref() != body.as_deref() {
                    return Err(mismatch(format!(
                        "Header mismatch: Mcp-Name header does not match {field}"
                    )));
                }
            }
        }
    }
    if method == "tools/call" && !params.is_empty() {
        check_params(headers, env, params)?;
    }
    Ok(())
}

pub fn check_params(
    headers: &[(&str, &[u8])],
    env: &Envelope,
    params: &[ParamHeader],
) -> Result<(), Refusal> {
    let args: Value = env
        .arguments
        .and_then(|a| serde_json::from_str(a.get()).ok())
        .unwrap_or(Value::Null);
    for p in params {
        let name = format!("mcp-param-{}", p.name);
        let mut v = &args;
        for k in &p.path {
            v = v.get(k).unwrap_or(&Value::Null);
        }
        let h = header(headers, &name);
        let ok = match (h, v) {
            (None, Value::Null) => true,
            (None, _) | (Some(_), Value::Null) => false,
            (Some(h), v) => match (decode_value(h), v) {
                (Some(h), Value::String(s)) => h == *s,
                (Some(h), Value::Bool(b)) => h == if *b { "true" } else { "false" },
                (Some(h), Value::Number(n)) => {
                    matches!((h.parse::<f64>(), n.as_f64()), (Ok(a), Some(b)) if a == b)
                }
                _ => false,
            },
        };
        if !ok {
            return Err(mismatch(format!(
                "Header mismatch: Mcp-Param-{} does not match the tool's arguments",
                p.name
            )));
        }
    }
    Ok(())
}

/// The `x-mcp-header` annotations of a tool's `inputSchema`, reached
/// through `properties` keys only (anything else is not an annotation the
/// spec admits, and is ignored).
pub fn param_headers(schema: &Value) -> Vec<ParamHeader> {
    let mut out = Vec::new();
    let mut stack = vec![(Vec::<String>::new(), schema)];
    while let Some((path, s)) = stack.pop() {
        let Some(props) = s.get("properties").and_then(Value::as_object) else {
            continue;
        };
        for (k, sub) in props {
            let mut p = path.clone();
            p.push(k.clone());
            if let Some(h) = sub.get("x-mcp-header").and_then(Value::as_str) {
                out.push(ParamHeader {
                    name: h.to_string(),
                    path: p.clone(),
                });
            }
            stack.push((p, sub));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::super::envelope::parse;
    use super::*;

    fn body(method: &str, params: &str) -> String {
        format!(r#"{{"jsonrpc":"2.0","id":1,"method":"{method}","params":{params}}}"#)
    }
    type Headers<'a> = Vec<(&'a str, &'a [u8])>;
    type Want = Option<(u16, i64)>;
    const META: &str = r#""_meta":{"io.modelcontextprotocol/protocolVersion":"2026-07-28"}"#;

    /// Each case: headers, body, expected (status, code) or None for pass.
    #[test]
    fn header_checks_table() {
        let call = body(
            "tools/call",
            &format!(r#"{{"name":"echo","arguments":{{"message":"hi"}},{META}}}"#),
        );
        let call_uni = body(
            "tools/call",
            &format!(r#"{{"name":"héllo","arguments":{{}},{META}}}"#),
        );
        let read = body(
            "resources/read",
            &format!(r#"{{"uri":"demo://resource/static/document/architecture.md",{META}}}"#),
        );
        let list = body("tools/list", &format!("{{{META}}}"));
        let old = body(
            "tools/list",
            r#"{"_meta":{"io.modelcontextprotocol/protocolVersion":"2027-01-01"}}"#,
        );
        let bare = body("tools/list", "{}");
        let v = ("mcp-protocol-version", &b"2026-07-28"[..]);
        let b64 = format!(
            "=?base64?{}?=",
            base64::engine::general_purpose::STANDARD.encode("héllo")
        );
        let cases: Vec<(&str, Headers, &str, Want)> = vec![
            (
                "list ok",
                vec![v, ("Mcp-Method", b"tools/list")],
                &list,
                None,
            ),
            (
                "no version header",
                vec![("mcp-method", b"tools/list")],
                &list,
                Some((400, -32020)),
            ),
            (
                "version header differs from body",
                vec![
                    ("mcp-protocol-version", b"2025-11-25"),
                    ("mcp-method", b"tools/list"),
                ],
                &list,
                Some((400, -32020)),
            ),
            (
                "body without envelope",
                vec![v, ("mcp-method", b"tools/list")],
                &bare,
                Some((400, -32020)),
            ),
            (
                "unsupported version",
                vec![
                    ("mcp-protocol-version", b"2027-01-01"),
                    ("mcp-method", b"tools/list"),
                ],
                &old,
                Some((400, -32022)),
            ),
            ("no Mcp-Method", vec![v], &list, Some((400, -32020))),
            (
                "Mcp-Method differs",
                vec![v, ("mcp-method", b"tools/call")],
                &list,
                Some((400, -32020)),
            ),
            (
                "Mcp-Method is case-sensitive",
                vec![v, ("mcp-method", b"Tools/List")],
                &list,
                Some((400, -32020)),
            ),
            (
                "call ok",
                vec![v, ("mcp-method", b"tools/call"), ("mcp-name", b"echo")],
                &call,
                None,
            ),
            (
                "call without Mcp-Name",
                vec![v, ("mcp-method", b"tools/call")],
                &call,
                Some((400, -32020)),
            ),
            (
                "call with other Mcp-Name",
                vec![v, ("mcp-method", b"tools/call"), ("mcp-name", b"get-sum")],
                &call,
                Some((400, -32020)),
            ),
            (
                "base64 Mcp-Name decoded",
                vec![
                    v,
                    ("mcp-method", b"tools/call"),
                    ("mcp-name", b64.as_bytes()),
                ],
                &call_uni,
                None,
            ),
            (
                "bad base64 Mcp-Name",
                vec![
                    v,
                    ("mcp-method", b"tools/call"),
                    ("mcp-name", b"=?base64?!!!?="),
                ],
                &call_uni,
                Some((400, -32020)),
            ),
            (
                "raw non-ASCII Mcp-Name",
                vec![
                    v,
                    ("mcp-method", b"tools/call"),
                    ("mcp-name", "héllo".as_bytes()),
                ],
                &call_uni,
                Some((400, -32020)),
            ),
            (
                "read ok",
                vec![
                    v,
                    ("mcp-method", b"resources/read"),
                    (
                        "mcp-name",
                        b"demo://resource/static/document/architecture.md",
                    ),
                ],
                &read,
                None,
            ),
            (
                "read other uri",
                vec![
                    v,
                    ("mcp-method", b"resources/read"),
                    ("mcp-name", b"demo://x"),
                ],
                &read,
                Some((400, -32020)),
            ),
        ];
        for (what, headers, body, want) in cases {
            let env = parse(body).unwrap();
            let got = check(&headers, &env, &[]).err().map(|r| (r.status, r.code));
            assert_eq!(got, want, "{what}");
        }
    }

    #[test]
    fn unsupported_version_names_supported_and_requested() {
        let b = body(
            "tools/list",
            r#"{"_meta":{"io.modelcontextprotocol/protocolVersion":"2027-01-01"}}"#,
        );
        let env = parse(&b).unwrap();
        let h: Vec<(&str, &[u8])> = vec![
            ("mcp-protocol-version", b"2027-01-01"),
            ("mcp-method", b"tools/list"),
        ];
        let r = check(&h, &env, &[]).unwrap_err();
        let data: Value = serde_json::from_str(r.data.as_deref().unwrap()).unwrap();
        assert_eq!(data["requested"], "2027-01-01");
        let sup: Vec<&str> = data["supported"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap())
            .collect();
        assert_eq!(sup[0], "2026-07-28");
        assert!(sup.contains(&"2025-11-25") && sup.contains(&"2024-11-05"));
    }

    #[test]
    fn param_headers_table() {
        let schema: Value = serde_json::from_str(
            r#"{"type":"object","properties":{"region":{"type":"string","x-mcp-header":"Region"},
               "n":{"type":"integer","x-mcp-header":"N"},
               "opt":{"type":"object","properties":{"flag":{"type":"boolean","x-mcp-header":"Flag"}}},
               "q":{"type":"string"}}}"#,
        )
        .unwrap();
        let mut ann = param_headers(&schema);
        ann.sort_by(|a, b| a.name.cmp(&b.name));
        assert_eq!(ann.len(), 3);
        assert_eq!(ann[0].path, vec!["opt", "flag"]);
        let call = |args: &str| {
            body(
                "tools/call",
                &format!(r#"{{"name":"sql","arguments":{args},{META}}}"#),
            )
        };
        let base: Vec<(&str, &[u8])> = vec![
            ("mcp-protocol-version", b"2026-07-28"),
            ("mcp-method", b"tools/call"),
            ("mcp-name", b"sql"),
        ];
        let with = |extra: &[(&'static str, &'static [u8])]| {
            let mut h = base.clone();
            h.extend_from_slice(extra);
            h
        };
        let cases: Vec<(&str, Headers, String, bool)> = vec![
            (
                "all present",
                with(&[
                    ("Mcp-Param-Region", b"us-west1"),
                    ("mcp-param-n", b"42.0"),
                    ("mcp-param-flag", b"true"),
                ]),
                call(r#"{"region":"us-west1","n":42,"opt":{"flag":true},"q":"x"}"#),
                true,
            ),
            (
                "absent value, absent header",
                with(&[]),
                call(r#"{"q":"x"}"#),
                true,
            ),
            (
                "null value, absent header",
                with(&[]),
                call(r#"{"region":null}"#),
                true,
            ),
            (
                "value without header",
                with(&[]),
                call(r#"{"region":"us-west1"}"#),
                false,
            ),
            (
                "header without value",
                with(&[("mcp-param-region", b"us-west1")]),
                call(r#"{}"#),
                false,
            ),
            (
                "different value",
                with(&[("mcp-param-region", b"eu")]),
                call(r#"{"region":"us-west1"}"#),
                false,
            ),
            (
                "number compared numerically",
                with(&[("mcp-param-n", b"7")]),
                call(r#"{"n":7.0}"#),
                true,
            ),
            (
                "base64 value",
                with(&[("mcp-param-region", b"=?base64?IHBhZGRlZCA=?=")]),
                call(r#"{"region":" padded "}"#),
                true,
            ),
            (
                "unannotated param header ignored",
                with(&[("mcp-param-other", b"x")]),
                call(r#"{}"#),
                true,
            ),
        ];
        for (what, headers, b, ok) in cases {
            let env = parse(&b).unwrap();
            let got = check(&headers, &env, &ann);
            assert_eq!(got.is_ok(), ok, "{what}: {got:?}");
            if let Err(r) = got {
                assert_eq!((r.status, r.code), (400, HEADER_MISMATCH), "{what}");
            }
        }
    }
}
