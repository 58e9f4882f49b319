//! `subscriptions/listen` streams of one target on one worker: the
//! `list_changed` notifications of that worker's shared children of the
//! target, each with `_meta["io.modelcontextprotocol/subscriptionId"]`
//! spliced in (the listen request's id), to the streams that asked for
//! that kind.

use std::cell::RefCell;

use serde::Deserialize;
use serde_json::value::RawValue;

use crate::mcp::modern::envelope::span;
use crate::mcp::modern::splice::splice;
use crate::mcp::sse;

/// Events a request's stream holds before progress is dropped for it.
pub const STREAM_DEPTH: usize = 64;

pub const SUBSCRIPTION_ID_KEY: &str = "io.modelcontextprotocol/subscriptionId";

/// The kinds a listen stream asked for (and ringgate honours).
#[derive(Debug, Default, Clone, Copy, PartialEq)]
pub struct Filter {
    pub tools: bool,
    pub prompts: bool,
    pub resources: bool,
}

impl Filter {
    /// The honoured subset of a `params.notifications` object.
    pub fn parse(notifications: Option<&RawValue>) -> Filter {
        #[derive(Deserialize, Default)]
        #[serde(rename_all = "camelCase")]
        struct F {
            tools_list_changed: Option<bool>,
            prompts_list_changed: Option<bool>,
            resources_list_changed: Option<bool>,
        }
        let f: F = notifications
            .and_then(|n| serde_json::from_str(n.get()).ok())
            .unwrap_or_default();
        Filter {
            tools: f.tools_list_changed == Some(true),
            prompts: f.prompts_list_changed == Some(true),
            resources: f.resources_list_changed == Some(true),
        }
    }

    fn wants(&self, method: &str) -> bool {
        match method {
            "notifications/tools/list_changed" => self.tools,
            "notifications/prompts/list_changed" => self.prompts,
            "notifications/resources/list_changed" => self.resources,
            _ => false,
        }
    }

    /// `notifications/subscriptions/acknowledged` for listen request `id`.
    pub fn ack(&self, id: &str) -> String {
        let mut honoured = Vec::new();
        for (on, key) in [
            (self.tools, "toolsListChanged"),
            (self.prompts, "promptsListChanged"),
            (self.resources, "resourcesListChanged"),
        ] {
            if on {
                honoured.push(format!("\"{key}\":true"));
            }
        }
        format!(
            r#"{{"jsonrpc":"2.0","method":"notifications/subscriptions/acknowledged","params":{{"notifications":{{{}}},"_meta":{{"{SUBSCRIPTION_ID_KEY}":{id}}}}}}}"#,
            honoured.join(",")
        )
    }
}

struct Listener {
    id: String,
    filter: Filter,
    tx: flume::Sender<Vec<u8>>,
}

/// The listen streams of one target on this worker.
#[derive(Default)]
pub struct Listeners(RefCell<Vec<Listener>>);

impl Listeners {
    /// Opens a stream for listen request `id` (raw id bytes); its first
    /// event is the acknowledgement.
    pub fn open(&self, id: &str, filter: Filter) -> flume::Receiver<Vec<u8>> {
        let (tx, rx) = flume::bounded(STREAM_DEPTH);
        let _ = tx.try_send(sse::event(filter.ack(id).as_bytes()));
        let mut all = self.0.borrow_mut();
        all.retain(|l| !l.tx.is_disconnected());
        all.push(Listener {
            id: id.to_string(),
            filter,
            tx,
        });
        rx
    }

    /// Sends a child's notification line to the streams that asked for its
    /// kind; forgets streams whose client went away.
    pub fn broadcast(&self, method: &str, line: &str) {
        let mut all = self.0.borrow_mut();
        all.retain(|l| !l.tx.is_disconnected());
        for l in all.iter().filter(|l| l.filter.wants(method)) {
            if let Some(out) = with_subscription_id(line, &l.id) {
                // Lossy under a slow reader: a list_changed is a level
                // trigger, the next one says the same.
                let _ = l.tx.try_send(sse::event(out.as_bytes()));
            }
        }
    }

    pub fn len(&self) -> usize {
        self.0.borrow().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[derive(Deserialize)]
struct Note<'a> {
    #[serde(borrow)]
    params: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct NoteParams<'a> {
    #[serde(borrow, rename = "_meta")]
    meta: Option<&'a RawValue>,
}

/// A notification line with the subscription id added to its
/// `params._meta` (created where missing); the rest byte for byte.
pub fn with_subscription_id(line: &str, id: &str) -> Option<String> {
    let member = format!("\"{SUBSCRIPTION_ID_KEY}\":{id}");
    let n: Note = serde_json::from_str(line).ok()?;
    let Some(params) = n.params.filter(|p| p.get().starts_with('{')) else {
        // No params object: add one before the line's closing brace.
        let end = line.rfind('}')?;
        let sep = if line[..end].trim_end().ends_with('{') {
            ""
        } else {
            ","
        };
        let add = format!("{sep}\"params\":{{\"_meta\":{{{member}}}}}");
        return Some(splice(line, vec![(end..end, add.as_str())]));
    };
    let np: NoteParams = serde_json::from_str(params.get()).ok()?;
    let (at, add) = match np.meta.filter(|m| m.get().starts_with('{')) {
        Some(meta) => {
            let r = span(line, meta);
            let empty = meta.get()[1..].trim_start().starts_with('}');
            (
                r.start + 1,
                format!("{member}{}", if empty { "" } else { "," }),
            )
        }
        None => {
            let r = span(line, params);
            let empty = params.get()[1..].trim_start().starts_with('}');
            (
                r.start + 1,
                format!("\"_meta\":{{{member}}}{}", if empty { "" } else { "," }),
            )
        }
    };
    Some(splice(line, vec![(at..at, add.as_str())]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subscription_ids_are_spliced_in() {
        let cases = [
            (
                r#"{"method":"notifications/tools/list_changed","jsonrpc":"2.0"}"#,
                r#"{"method":"notifications/tools/list_changed","jsonrpc":"2.0","params":{"_meta":{"io.modelcontextprotocol/subscriptionId":7}}}"#,
            ),
            (
                r#"{"jsonrpc":"2.0","method":"m","params":{}}"#,
                r#"{"jsonrpc":"2.0","method":"m","params":{"_meta":{"io.modelcontextprotocol/subscriptionId":7}}}"#,
            ),
            (
                r#"{"jsonrpc":"2.0","method":"m","params":{"x":1}}"#,
                r#"{"jsonrpc":"2.0","method":"m","params":{"_meta":{"io.modelcontextprotocol/subscriptionId":7},"x":1}}"#,
            ),
            (
                r#"{"jsonrpc":"2.0","method":"m","params":{"_meta":{"a":2}}}"#,
                r#"{"jsonrpc":"2.0","method":"m","params":{"_meta":{"io.modelcontextprotocol/subscriptionId":7,"a":2}}}"#,
            ),
        ];
        for (line, want) in cases {
            let got = with_subscription_id(line, "7").unwrap();
            assert_eq!(got, want);
            serde_json::from_str::<serde_json::Value>(&got).unwrap();
        }
    }

    #[test]
    fn the_ack_names_what_is_honoured() {
        let raw = serde_json::value::RawValue::from_string(
            r#"{"toolsListChanged":true,"resourceSubscriptions":["a"]}"#.into(),
        )
        .unwrap();
        let f = Filter::parse(Some(&raw));
        let v: serde_json::Value = serde_json::from_str(&f.ack("\"s1\"")).unwrap();
        assert_eq!(
            v["params"]["notifications"],
            serde_json::json!({"toolsListChanged": true})
        );
        assert_eq!(v["params"]["_meta"][SUBSCRIPTION_ID_KEY], "s1");
    }
}
