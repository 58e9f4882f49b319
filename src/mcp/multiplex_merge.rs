//! Merging the children's answers to a fanned-out request (`initialize`,
//! the lists) into one, by splicing their JSON.

use std::ops::Range;

use serde_json::value::RawValue;

use super::{decode_str, member, members, nested, splice, ListKind, Naming};

/// A child's answer to a fanned-out request: its target and its line.
#[derive(Debug, Clone, Copy)]
pub struct Answer<'a> {
    pub target: usize,
    pub line: &'a str,
}

impl Answer<'_> {
    fn result(&self) -> Option<&str> {
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
/// or URI rewritten as exposed. Pagination is not merged: each child's
/// first page is served. `Err` carries the error line to send instead.
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
    for a in ok {
        let result = a.result().unwrap_or("{}");
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
    out.push_str("]}}");
    Ok(out)
}

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
fn merge_capabilities(results: &[&str]) -> String {
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
    let mut instructions = String::new();
    for a in &ok {
        let r = a.result().unwrap_or("{}");
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
        instructions.push_str(&format!("[{}]\\n", naming.targets[a.target]));
        instructions.push_str(&raw[1..raw.len() - 1]);
    }
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
