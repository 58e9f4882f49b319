//! Byte splicing on JSON-RPC lines: ids and progress tokens swapped, and
//! fields added to a result object, without re-serialising anything else.

use std::ops::Range;

use serde::Deserialize;
use serde_json::value::RawValue;

use super::envelope::span;

/// `line` with each range replaced (ranges must not overlap).
pub fn splice(line: &str, mut edits: Vec<(Range<usize>, &str)>) -> String {
    edits.sort_by_key(|(r, _)| r.start);
    let extra: usize = edits.iter().map(|(_, s)| s.len()).sum();
    let mut out = String::with_capacity(line.len() + extra);
    let mut at = 0;
    for (r, s) in edits {
        out.push_str(&line[at..r.start]);
        out.push_str(s);
        at = r.end;
    }
    out.push_str(&line[at..]);
    out
}

#[derive(Deserialize)]
struct Answer<'a> {
    #[serde(borrow)]
    id: Option<&'a RawValue>,
    #[serde(borrow)]
    result: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct ResultKeys<'a> {
    #[serde(borrow, rename = "resultType")]
    result_type: Option<&'a RawValue>,
    #[serde(borrow, rename = "ttlMs")]
    ttl_ms: Option<&'a RawValue>,
    #[serde(borrow, rename = "cacheScope")]
    cache_scope: Option<&'a RawValue>,
}

/// A child's answer made the client's: its `id` replaced by the client's
/// id bytes, and, when it is a result object, `resultType: "complete"`
/// (and `ttlMs`/`cacheScope` when `cache` is given) added where the child
/// did not write them. `None` if the line is not an answer.
pub fn answer(line: &str, client_id: &str, cache: Option<(u64, &str)>) -> Option<String> {
    let a: Answer = serde_json::from_str(line).ok()?;
    let id = span(line, a.id?);
    let mut edits = vec![(id, client_id)];
    let mut fields = String::new();
    if let Some(result) = a.result.filter(|r| r.get().starts_with('{')) {
        let keys: ResultKeys = serde_json::from_str(result.get()).ok()?;
        if keys.result_type.is_none() {
            fields.push_str(r#""resultType":"complete","#);
        }
        if let Some((ttl, scope)) = cache {
            if keys.ttl_ms.is_none() {
                fields.push_str(&format!(r#""ttlMs":{ttl},"#));
            }
            if keys.cache_scope.is_none() {
                fields.push_str(&format!(r#""cacheScope":"{scope}","#));
            }
        }
        let r = span(line, result);
        let inner = result.get()[1..].trim_start();
        if inner.starts_with('}') {
            fields.pop();
        }
        let at = r.start + 1;
        edits.push((at..at, fields.as_str()));
        return Some(splice(line, edits));
    }
    Some(splice(line, edits))
}

#[derive(Deserialize)]
struct Note<'a> {
    #[serde(borrow)]
    params: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct NoteParams<'a> {
    #[serde(borrow, rename = "progressToken")]
    token: Option<&'a RawValue>,
}

/// The span of `params.progressToken` in a child's notification line.
pub fn progress_token_span(line: &str) -> Option<Range<usize>> {
    let n: Note = serde_json::from_str(line).ok()?;
    let p = n.params.filter(|p| p.get().starts_with('{'))?;
    let np: NoteParams = serde_json::from_str(p.get()).ok()?;
    Some(span(line, np.token?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_get_the_client_id_and_result_fields() {
        let line = r#"{"result":{"tools":[{"name":"echo"}]},"jsonrpc":"2.0","id":17}"#;
        assert_eq!(
            answer(line, r#""abc""#, Some((0, "private"))).unwrap(),
            r#"{"result":{"resultType":"complete","ttlMs":0,"cacheScope":"private","tools":[{"name":"echo"}]},"jsonrpc":"2.0","id":"abc"}"#
        );
        let empty = r#"{"jsonrpc":"2.0","id":3,"result":{ }}"#;
        assert_eq!(
            answer(empty, "1e0", None).unwrap(),
            r#"{"jsonrpc":"2.0","id":1e0,"result":{"resultType":"complete" }}"#
        );
        let has = r#"{"jsonrpc":"2.0","id":3,"result":{"resultType":"complete","x":1.10}}"#;
        assert_eq!(
            answer(has, "9", None).unwrap(),
            r#"{"jsonrpc":"2.0","id":9,"result":{"resultType":"complete","x":1.10}}"#
        );
        let err = r#"{"jsonrpc":"2.0","id":3,"error":{"code":-32601,"message":"no"}}"#;
        assert_eq!(
            answer(err, "-0", Some((5, "private"))).unwrap(),
            r#"{"jsonrpc":"2.0","id":-0,"error":{"code":-32601,"message":"no"}}"#
        );
    }

    #[test]
    fn progress_tokens_are_found() {
        let line = r#"{"method":"notifications/progress","params":{"progress":1,"progressToken":"rg5"},"jsonrpc":"2.0"}"#;
        let r = progress_token_span(line).unwrap();
        assert_eq!(&line[r.clone()], r#""rg5""#);
        assert_eq!(
            splice(line, vec![(r, "12")]),
            r#"{"method":"notifications/progress","params":{"progress":1,"progressToken":12},"jsonrpc":"2.0"}"#
        );
    }
}
