//! Filtering a child's list answer (`tools/list`, ...) without re-serialising
//! it: the answer's bytes are spliced, keeping the raw text of every kept
//! element and everything around the array (id, `nextCursor`, `_meta`, key
//! order, number spellings) as the child wrote them.

use std::borrow::Cow;
use std::collections::HashMap;

use serde::Deserialize;
use serde_json::value::RawValue;

use super::ListKind;

#[derive(Deserialize)]
struct Answer<'a> {
    #[serde(borrow)]
    result: Option<&'a RawValue>,
}

/// The fields that can name a listed item; which one counts depends on
/// the list (`name`, `uri` or `uriTemplate`).
#[derive(Deserialize)]
struct Item<'a> {
    #[serde(borrow, default)]
    name: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    uri: Option<Cow<'a, str>>,
    #[serde(borrow, default, rename = "uriTemplate")]
    uri_template: Option<Cow<'a, str>>,
}

/// What filtering did to one answer.
#[derive(Debug, PartialEq, Eq)]
pub enum Filtered {
    /// Nothing removed (or nothing to filter): forward the answer as it is.
    Unchanged { kept: usize },
    /// Items were removed: forward this line instead.
    Spliced {
        line: Vec<u8>,
        kept: usize,
        removed: usize,
    },
}

/// Filters the list in `line`, a child's answer to a list request of
/// `list`'s kind, keeping the items for which `allowed(name)` is true. An
/// item with no name of the list's kind is removed: it cannot be decided,
/// and what cannot be decided is not granted. An error answer, or a result
/// without the array, is forwarded unchanged.
pub fn filter_list(line: &[u8], list: ListKind, mut allowed: impl FnMut(&str) -> bool) -> Filtered {
    let unchanged = Filtered::Unchanged { kept: 0 };
    let Ok(text) = std::str::from_utf8(line) else {
        return unchanged;
    };
    let Ok(Answer {
        result: Some(result),
    }) = serde_json::from_str::<Answer>(text)
    else {
        return unchanged;
    };
    let Ok(fields) = serde_json::from_str::<HashMap<Cow<str>, &RawValue>>(result.get()) else {
        return unchanged;
    };
    let Some(array) = fields.get(list.array) else {
        return unchanged;
    };
    let Ok(items) = serde_json::from_str::<Vec<&RawValue>>(array.get()) else {
        return unchanged;
    };
    let mut kept = Vec::with_capacity(items.len());
    for item in &items {
        let name =
            serde_json::from_str::<Item>(item.get())
                .ok()
                .and_then(|i| match list.name_field {
                    "uri" => i.uri,
                    "uriTemplate" => i.uri_template,
                    _ => i.name,
                });
        if name.is_some_and(|n| allowed(&n)) {
            kept.push(item.get());
        }
    }
    if kept.len() == items.len() {
        return Filtered::Unchanged { kept: kept.len() };
    }
    // The array's span in `text`: `RawValue`s borrow from the input.
    let start = array.get().as_ptr() as usize - text.as_ptr() as usize;
    let end = start + array.get().len();
    let mut out = Vec::with_capacity(line.len());
    out.extend_from_slice(&line[..start]);
    out.push(b'[');
    for (i, item) in kept.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(item.as_bytes());
    }
    out.push(b']');
    out.extend_from_slice(&line[end..]);
    Filtered::Spliced {
        line: out,
        kept: kept.len(),
        removed: items.len() - kept.len(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::mcp_authz::governed_list;

    fn tools() -> ListKind {
        governed_list("tools/list").unwrap()
    }

    #[test]
    fn splices_without_touching_what_is_kept() {
        let line = br#"{"result":{"tools":[ {"name":"echo","x":1.10,"n":12345678901234567890} , {"name":"printEnv"},{"name":"get-sum","d":"\u00e9"} ],"nextCursor":"c"},"jsonrpc":"2.0","id":7}"#;
        let got = filter_list(line, tools(), |n| n != "printEnv");
        assert_eq!(
            got,
            Filtered::Spliced {
                line: br#"{"result":{"tools":[{"name":"echo","x":1.10,"n":12345678901234567890},{"name":"get-sum","d":"\u00e9"}],"nextCursor":"c"},"jsonrpc":"2.0","id":7}"#.to_vec(),
                kept: 2,
                removed: 1,
            }
        );
        let none = filter_list(line, tools(), |_| false);
        let Filtered::Spliced {
            line: out,
            kept: 0,
            removed: 3,
        } = none
        else {
            panic!("{none:?}")
        };
        assert_eq!(
            out,
            br#"{"result":{"tools":[],"nextCursor":"c"},"jsonrpc":"2.0","id":7}"#
        );
    }

    #[test]
    fn unchanged_when_everything_is_allowed_or_nothing_to_filter() {
        let line = br#"{"jsonrpc":"2.0","id":1,"result":{"tools":[{"name":"a"},{"name":"b"}]}}"#;
        assert_eq!(
            filter_list(line, tools(), |_| true),
            Filtered::Unchanged { kept: 2 }
        );
        for other in [
            &br#"{"jsonrpc":"2.0","id":1,"error":{"code":-1,"message":"x"}}"#[..],
            br#"{"jsonrpc":"2.0","id":1,"result":{}}"#,
            br#"{"jsonrpc":"2.0","id":1,"result":{"tools":{}}}"#,
            b"not json",
        ] {
            assert_eq!(
                filter_list(other, tools(), |_| false),
                Filtered::Unchanged { kept: 0 }
            );
        }
    }

    #[test]
    fn names_by_kind_and_escapes() {
        let line = br#"{"jsonrpc":"2.0","id":2,"result":{"resourceTemplates":[{"uriTemplate":"a://{x}","name":"A"},{"uriTemplate":"b://{x}","name":"B"},{"name":"no uri"}]}}"#;
        let list = governed_list("resources/templates/list").unwrap();
        let mut seen = Vec::new();
        let got = filter_list(line, list, |n| {
            seen.push(n.to_owned());
            n.starts_with("a:")
        });
        assert_eq!(seen, ["a://{x}", "b://{x}"]);
        assert!(matches!(
            got,
            Filtered::Spliced {
                kept: 1,
                removed: 2,
                ..
            }
        ));
        // An escaped name is decided on its decoded text.
        let line = br#"{"jsonrpc":"2.0","id":3,"result":{"tools":[{"name":"ech\u006f"}]}}"#;
        assert_eq!(
            filter_list(line, tools(), |n| n == "echo"),
            Filtered::Unchanged { kept: 1 }
        );
    }
}
