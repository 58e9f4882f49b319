//! Merging the children's answers to a fanned-out request (`initialize`,
//! the lists) into one, by splicing their JSON.

use std::ops::Range;

use serde_json::value::RawValue;

use super::{decode_str, member, members, nested, splice, ListKind, Naming};
use crate::mcp::jsonrpc::{self, Outgoing};
use crate::mcp::sse;

/// Reads the streams a list request fanned out to, target by target: each
/// child's answer is kept for the merge, anything else it sends on the way
/// (progress, log messages) goes on to `tx` as it came.
pub async fn gather(
    streams: Vec<(usize, flume::Receiver<Vec<u8>>)>,
    tx: &flume::Sender<Vec<u8>>,
) -> Vec<(usize, String)> {
    let mut answers = Vec::new();
    for (t, rx) in streams {
        while let Ok(ev) = rx.recv_async().await {
            let Some(line) = sse::decode(&ev).into_iter().next() else {
                continue;
            };
            match jsonrpc::peek(&line) {
                Some(Outgoing::Response { .. }) => {
                    answers.push((t, String::from_utf8_lossy(&line).into_owned()));
                }
                _ => {
                    let _ = tx.send_async(ev).await;
                }
            }
        }
    }
    answers
}

/// A child's answer to a fanned-out request: its target and its line.
#[derive(Debug, Clone, Copy)]
pub struct Answer<'a> {
    pub target: usize,
    pub line: &'a str,
}

/// The children's answers, as [`gather`] collects them, for the merges.
pub fn answers(v: &[(usize, String)]) -> Vec<Answer<'_>> {
    v.iter()
        .map(|(t, l)| Answer {
            target: *t,
            line: l,
        })
        .collect()
}

impl<'a> Answer<'a> {
    fn result(&self) -> Option<&'a str> {
        member(self.line, "result").map(|r| &self.line[r])
    }

    fn error_code(&self) -> Option<i64> {
        let e = member(self.line, "error")?;
        let c = member(&self.line[e.clone()], "code")?;
        self.line[e.start + c.start..e.start + c.end].parse().ok()
    }
}

/// Which answers count: an error (or a malformed answer) from any child is
/// the answer under failClosed; under failOpen those children are left out,
/// unless none is left. A child that does not implement the method
/// (`-32601`, e.g. `prompts/list` of a server without prompts) counts as
/// an empty answer, as long as another child answered.
fn usable<'a>(answers: &[Answer<'a>], fail_open: bool) -> Result<Vec<Answer<'a>>, String> {
    let (ok, rest): (Vec<Answer>, Vec<Answer>) =
        answers.iter().partition(|a: &&Answer| a.result().is_some());
    let (absent, bad): (Vec<Answer>, Vec<Answer>) = rest
        .iter()
        .partition(|a: &&Answer| a.error_code() == Some(METHOD_NOT_FOUND));
    match bad.first() {
        Some(b) if !fail_open || ok.is_empty() => Err(b.line.to_string()),
        _ if ok.is_empty() => Err(absent
            .first()
            .map(|a| a.line.to_string())
            .unwrap_or_default()),
        _ => Ok(ok),
    }
}

/// JSON-RPC "Method not found".
pub const METHOD_NOT_FOUND: i64 = -32601;

/// The items of a list answer, each with the span of its routing member.
fn items(kind: ListKind, result: &str) -> Vec<(&str, Option<Range<usize>>)> {
    let Some(r) = member(result, kind.key()) else {
        return Vec::new();
    };
    let list: Vec<&RawValue> = serde_json::from_str(&result[r]).unwrap_or_default();
    list.into_iter()
        .map(|item| (item.get(), member(item.get(), kind.member())))
        .collect()
}

/// The names (or URIs) a child's list answer offers, decoded.
pub fn names(kind: ListKind, line: &str) -> Vec<String> {
    let Some(result) = member(line, "result").map(|r| &line[r]) else {
        return Vec::new();
    };
    items(kind, result)
        .into_iter()
        .filter_map(|(item, r)| decode_str(&item[r?]))
        .collect()
}

/// Names offered by more than one target, each with the targets offering it.
pub fn clashes(per_target: &[(usize, Vec<String>)]) -> Vec<(String, Vec<usize>)> {
    let mut seen: Vec<(String, Vec<usize>)> = Vec::new();
    for (t, names) in per_target {
        for n in names {
            match seen.iter_mut().find(|(s, _)| s == n) {
                Some((_, ts)) if !ts.contains(t) => ts.push(*t),
                Some(_) => {}
                None => seen.push((n.clone(), vec![*t])),
            }
        }
    }
    seen.retain(|(_, ts)| ts.len() > 1);
    seen
}

/// One answer to a fanned-out list request, `id` being the client's (raw):
/// every child's items in target order, each spliced as written, its name
/// or URI rewritten as exposed. When children answered with `nextCursor`,
/// the answer carries ringgate's own cursor naming, per target, the child's
/// cursor still to fetch ([`encode_cursor`]). `Err` carries the error line
/// to send instead.
pub fn merge_list(
    naming: &Naming,
    kind: ListKind,
    id: &str,
    answers: &[Answer],
    fail_open: bool,
) -> Result<String, String> {
    let ok = usable(answers, fail_open)?;
    let mut out = format!(
        r#"{{"jsonrpc":"2.0","id":{id},"result":{{"{}":["#,
        kind.key()
    );
    let mut first = true;
    let mut pending = Vec::new();
    for a in ok {
        let result = a.result().unwrap_or("{}");
        if let Some(c) = member(result, "nextCursor").map(|r| &result[r]) {
            if c.starts_with('"') {
                pending.push((a.target, c));
            }
        }
        for (item, span) in items(kind, result) {
            if !first {
                out.push(',');
            }
            first = false;
            match span {
                Some(r) => {
                    let raw = &item[r.clone()];
                    let exposed = match kind {
                        ListKind::Tools | ListKind::Prompts => naming.expose_name(a.target, raw),
                        _ => naming.expose_uri(a.target, raw),
                    };
                    out.push_str(&splice(item, r, &exposed));
                }
                None => out.push_str(item),
            }
        }
    }
    out.push(']');
    if !pending.is_empty() {
        out.push_str(&format!(
            r#","nextCursor":"{}""#,
            encode_cursor(naming, &pending)
        ));
    }
    out.push_str("}}");
    Ok(out)
}

/// ringgate's cursor of a merged list: base64url (unpadded) of a JSON
/// object naming each target that has pages left, with the cursor its child
/// gave (`raw`, the child's JSON string as written), e.g.
/// `{"everything":"after-10"}`. Opaque to the client; the child gets its
/// own cursor back byte for byte.
pub fn encode_cursor(naming: &Naming, pending: &[(usize, &str)]) -> String {
    use base64::Engine;
    let mut json = String::from("{");
    for (i, (t, raw)) in pending.iter().enumerate() {
        if i > 0 {
            json.push(',');
        }
        json.push_str(&format!("\"{}\":{raw}", naming.targets[*t]));
    }
    json.push('}');
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(json)
}

/// The targets a ringgate cursor names, each with its child's cursor (a
/// JSON string, raw). `None` when it is not one ringgate made: not
/// base64url, not an object of strings, a target this backend lacks, or
/// no target at all.
pub fn decode_cursor(naming: &Naming, cursor: &str) -> Option<Vec<(usize, String)>> {
    use base64::Engine;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(cursor)
        .ok()?;
    let json = String::from_utf8(bytes).ok()?;
    let mut out = Vec::new();
    for (k, span) in members(&json)? {
        let raw = &json[span];
        let t = naming.index(&k)?;
        if !raw.starts_with('"') || out.iter().any(|(u, _)| *u == t) {
            return None;
        }
        out.push((t, raw.to_string()));
    }
    (!out.is_empty()).then_some(out)
}

/// The line a fanned-out list request sends to each target (of `targets`,
/// those serving): without a cursor, the client's line to every one; with
/// ringgate's cursor, only to the targets it names, each with its child's
/// cursor spliced in. `None` when the cursor is not ringgate's (the caller
/// answers JSON-RPC -32602).
pub fn list_requests(
    naming: &Naming,
    line: &str,
    targets: &[usize],
) -> Option<Vec<(usize, String)>> {
    let span = nested(line, "params", "cursor").filter(|r| &line[r.clone()] != "null");
    let Some(span) = span else {
        return Some(targets.iter().map(|t| (*t, line.to_string())).collect());
    };
    let cursor = decode_str(&line[span.clone()])?;
    let pages = decode_cursor(naming, &cursor)?;
    Some(
        pages
            .into_iter()
            .filter(|(t, _)| targets.contains(t))
            .map(|(t, raw)| (t, splice(line, span.clone(), &raw)))
            .collect(),
    )
}

/// What answers a list request whose cursor is not ringgate's.
pub fn bad_cursor(id: &str) -> String {
    crate::mcp::jsonrpc::error_line(Some(id), INVALID_PARAMS, "Invalid params: unknown cursor")
}

/// JSON-RPC "Invalid params".
pub const INVALID_PARAMS: i64 = -32602;

/// A `resources/read` answer from `target` with each content's `uri` as
/// exposed (the contents are spliced; only the URIs change).
pub fn expose_read(naming: &Naming, target: usize, line: &str) -> Option<String> {
    let r = nested(line, "result", "contents")?;
    let list: Vec<&RawValue> = serde_json::from_str(&line[r.clone()]).ok()?;
    let mut out = String::from("[");
    for (i, item) in list.iter().map(|c| c.get()).enumerate() {
        out.push_str(if i > 0 { "," } else { "" });
        match member(item, "uri") {
            Some(u) => out.push_str(&splice(
                item,
                u.clone(),
                &naming.expose_uri(target, &item[u]),
            )),
            None => out.push_str(item),
        }
    }
    out.push(']');
    Some(splice(line, r, &out))
}

/// What ringgate calls itself in a merged `initialize` answer.
pub fn server_info() -> String {
    format!(
        r#"{{"name":"ringgate","version":"{}"}}"#,
        env!("CARGO_PKG_VERSION")
    )
}

/// The union of the children's capabilities, two levels deep: a capability
/// any child has is offered, with the members any child gives it (`true`
/// wins over `false`, else the first child's value as written).
pub fn merge_capabilities(results: &[&str]) -> String {
    /// A capability's name, its members (name, raw value), or its raw value
    /// when it is not an object.
    type Capability = (String, Vec<(String, String)>, Option<String>);
    let mut caps: Vec<Capability> = Vec::new();
    for result in results {
        let Some(r) = member(result, "capabilities") else {
            continue;
        };
        let obj = &result[r];
        for (k, span) in members(obj).unwrap_or_default() {
            let v = &obj[span];
            let inner = members(v);
            let slot = match caps.iter_mut().position(|(n, _, _)| *n == k) {
                Some(i) => &mut caps[i],
                None => {
                    caps.push((k.to_string(), Vec::new(), None));
                    caps.last_mut().expect("pushed")
                }
            };
            match inner {
                Some(ms) => {
                    for (mk, ms) in ms {
                        let mv = &v[ms];
                        match slot.1.iter_mut().find(|(n, _)| *n == mk) {
                            Some((_, old)) if mv == "true" => *old = mv.to_string(),
                            Some(_) => {}
                            None => slot.1.push((mk.to_string(), mv.to_string())),
                        }
                    }
                }
                None if slot.2.is_none() => slot.2 = Some(v.to_string()),
                None => {}
            }
        }
    }
    let mut out = String::from("{");
    for (i, (k, ms, scalar)) in caps.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(&serde_json::Value::String(k.clone()).to_string());
        out.push(':');
        match scalar {
            Some(v) if ms.is_empty() => out.push_str(v),
            _ => {
                out.push('{');
                for (j, (mk, mv)) in ms.iter().enumerate() {
                    if j > 0 {
                        out.push(',');
                    }
                    out.push_str(&serde_json::Value::String(mk.clone()).to_string());
                    out.push(':');
                    out.push_str(mv);
                }
                out.push('}');
            }
        }
    }
    out.push('}');
    out
}

/// The children's `instructions` (from each target's result object), each
/// under `[target]`, as the inside of one JSON string (the children's
/// escapes kept); empty when none gave any.
pub fn merge_instructions(naming: &Naming, results: &[(usize, &str)]) -> String {
    let mut instructions = String::new();
    for (t, r) in results {
        let Some(raw) = member(r, "instructions").map(|s| &r[s]) else {
            continue;
        };
        if !raw.starts_with('"') || raw == "\"\"" {
            continue;
        }
        if !instructions.is_empty() {
            instructions.push_str("\\n\\n");
        }
        // The child's string as written, under its target's name.
        instructions.push_str(&format!("[{}]\\n", naming.targets[*t]));
        instructions.push_str(&raw[1..raw.len() - 1]);
    }
    instructions
}

/// One answer to the client's `initialize` (`id` raw) from the children's.
pub fn merge_initialize(
    naming: &Naming,
    id: &str,
    answers: &[Answer],
    fail_open: bool,
) -> Result<String, String> {
    let ok = usable(answers, fail_open)?;
    let results: Vec<&str> = ok.iter().filter_map(|a| a.result()).collect();
    let version = results
        .iter()
        .filter_map(|r| member(r, "protocolVersion").map(|s| &r[s]))
        .min_by_key(|raw| decode_str(raw).unwrap_or_default())
        .unwrap_or("\"2025-03-26\"");
    let per: Vec<(usize, &str)> = ok
        .iter()
        .map(|a| (a.target, a.result().unwrap_or("{}")))
        .collect();
    let instructions = merge_instructions(naming, &per);
    let mut out = format!(
        r#"{{"jsonrpc":"2.0","id":{id},"result":{{"protocolVersion":{version},"capabilities":{},"serverInfo":{}"#,
        merge_capabilities(&results),
        server_info()
    );
    if !instructions.is_empty() {
        out.push_str(&format!(r#","instructions":"{instructions}""#));
    }
    out.push_str("}}");
    Ok(out)
}

#[cfg(test)]
mod cursor_tests {
    use super::*;

    fn naming() -> Naming {
        Naming {
            targets: vec!["a".into(), "b".into()],
            prefix_names: true,
            prefix_uris: true,
        }
    }

    fn answer(target: usize, line: &str) -> Answer<'_> {
        Answer { target, line }
    }

    #[test]
    fn a_merged_list_carries_the_pages_left_and_a_cursor_request_goes_only_there() {
        let n = naming();
        let a = r#"{"jsonrpc":"2.0","id":1,"result":{"nextCursor":"after\u002d10","resources":[{"uri":"x://1"}]}}"#;
        let b = r#"{"jsonrpc":"2.0","id":1,"result":{"resources":[{"uri":"y://1"}]}}"#;
        let merged = merge_list(
            &n,
            ListKind::Resources,
            "7",
            &[answer(0, a), answer(1, b)],
            false,
        )
        .unwrap();
        let v: serde_json::Value = serde_json::from_str(&merged).unwrap();
        assert_eq!(v["result"]["resources"][0]["uri"], "a+x://1");
        assert_eq!(v["result"]["resources"][1]["uri"], "b+y://1");
        let cursor = v["result"]["nextCursor"].as_str().unwrap();
        assert_eq!(
            decode_cursor(&n, cursor).unwrap(),
            vec![(0, r#""after\u002d10""#.to_string())]
        );
        let req = format!(
            r#"{{"jsonrpc":"2.0","id":8,"method":"resources/list","params":{{"cursor":"{cursor}"}}}}"#
        );
        // Only target a has pages left; its child gets its cursor as written.
        assert_eq!(
            list_requests(&n, &req, &[0, 1]).unwrap(),
            vec![(
                0,
                r#"{"jsonrpc":"2.0","id":8,"method":"resources/list","params":{"cursor":"after\u002d10"}}"#
                    .to_string()
            )]
        );
        // The last pages: no cursor left.
        let last = merge_list(&n, ListKind::Resources, "8", &[answer(1, b)], false).unwrap();
        assert!(!last.contains("nextCursor"), "{last}");
    }

    #[test]
    fn without_a_cursor_every_target_is_asked() {
        let n = naming();
        for req in [
            r#"{"jsonrpc":"2.0","id":1,"method":"tools/list"}"#,
            r#"{"jsonrpc":"2.0","id":1,"method":"tools/list","params":{"cursor":null}}"#,
        ] {
            let lines = list_requests(&n, req, &[0, 1]).unwrap();
            assert_eq!(lines, vec![(0, req.to_string()), (1, req.to_string())]);
        }
    }

    #[test]
    fn cursors_ringgate_did_not_make_are_refused() {
        use base64::Engine;
        let n = naming();
        let enc = |s: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s);
        for bad in [
            "not base64!".to_string(),
            enc("{}"),
            enc(r#"{"c":"x"}"#),
            enc(r#"{"a":1}"#),
            enc(r#"{"a":"x","a":"y"}"#),
            enc("[]"),
        ] {
            assert!(decode_cursor(&n, &bad).is_none(), "{bad}");
            let req = format!(
                r#"{{"jsonrpc":"2.0","id":1,"method":"tools/list","params":{{"cursor":"{bad}"}}}}"#
            );
            assert!(list_requests(&n, &req, &[0, 1]).is_none(), "{bad}");
        }
        let line = bad_cursor("3");
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["error"]["code"], -32602);
    }
}
