//! `subscriptions/listen` streams of one target on one worker: the
//! `list_changed` notifications of that worker's shared children of the
//! target, and their `notifications/resources/updated` for the URIs a
//! stream named in `resourceSubscriptions`, each with
//! `_meta["io.modelcontextprotocol/subscriptionId"]` spliced in (the listen
//! request's id), to the streams that asked for them.
//!
//! The URIs the live streams name are what every child of the target is
//! subscribed to ([`Listeners::wanted`]); each child keeps its own
//! subscriptions in line with it (`child::SharedChild::reconcile`), so two
//! streams of one URI subscribe a child once, and the last one to go
//! unsubscribes it.

use std::cell::{Cell, RefCell};
use std::collections::BTreeSet;

use serde::Deserialize;
use serde_json::value::RawValue;

use crate::mcp::modern::envelope::span;
use crate::mcp::modern::splice::splice;
use crate::mcp::sse;

/// Events a request's stream holds before progress is dropped for it.
pub const STREAM_DEPTH: usize = 64;

pub const SUBSCRIPTION_ID_KEY: &str = "io.modelcontextprotocol/subscriptionId";

/// The kinds a listen stream asked for (and ringgate honours).
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Filter {
    pub tools: bool,
    pub prompts: bool,
    pub resources: bool,
    /// `resourceSubscriptions`: the URIs whose updates it gets (what the
    /// caller asked for, narrowed by the caller of `Listeners::open`).
    pub uris: Vec<String>,
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
            resource_subscriptions: Option<Vec<String>>,
        }
        let f: F = notifications
            .and_then(|n| serde_json::from_str(n.get()).ok())
            .unwrap_or_default();
        let mut uris = f.resource_subscriptions.unwrap_or_default();
        uris.sort();
        uris.dedup();
        Filter {
            tools: f.tools_list_changed == Some(true),
            prompts: f.prompts_list_changed == Some(true),
            resources: f.resources_list_changed == Some(true),
            uris,
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
        if !self.uris.is_empty() {
            let uris = serde_json::to_string(&self.uris).unwrap_or_else(|_| "[]".into());
            honoured.push(format!("\"resourceSubscriptions\":{uris}"));
        }
        format!(
            r#"{{"jsonrpc":"2.0","method":"notifications/subscriptions/acknowledged","params":{{"notifications":{{{}}},"_meta":{{"{SUBSCRIPTION_ID_KEY}":{id}}}}}}}"#,
            honoured.join(",")
        )
    }
}

struct Listener {
    key: u64,
    id: String,
    filter: Filter,
    tx: flume::Sender<Vec<u8>>,
    /// Its acknowledgement is sent: notifications may follow.
    acked: bool,
}

/// The listen streams of one target on this worker.
#[derive(Default)]
pub struct Listeners {
    all: RefCell<Vec<Listener>>,
    next: Cell<u64>,
}

impl Listeners {
    /// Registers a stream for listen request `id` (raw id bytes): its URIs
    /// count as wanted from now on, and nothing is sent to it before
    /// [`Listeners::acknowledge`].
    pub fn open(&self, id: &str, filter: Filter) -> (u64, flume::Receiver<Vec<u8>>) {
        let (tx, rx) = flume::bounded(STREAM_DEPTH);
        let key = self.next.get();
        self.next.set(key + 1);
        let mut all = self.all.borrow_mut();
        all.retain(|l| !l.tx.is_disconnected());
        all.push(Listener {
            key,
            id: id.to_string(),
            filter,
            tx,
            acked: false,
        });
        (key, rx)
    }

    /// The stream's first event: the acknowledgement, naming the URIs it
    /// asked for except `refused` (no child would subscribe to them).
    pub fn acknowledge(&self, key: u64, refused: &BTreeSet<String>) {
        let mut all = self.all.borrow_mut();
        let Some(l) = all.iter_mut().find(|l| l.key == key) else {
            return;
        };
        l.filter.uris.retain(|u| !refused.contains(u));
        let _ = l.tx.try_send(sse::event(l.filter.ack(&l.id).as_bytes()));
        l.acked = true;
    }

    /// The URIs the live streams asked for; forgets streams whose client
    /// went away.
    pub fn wanted(&self) -> BTreeSet<String> {
        let mut all = self.all.borrow_mut();
        all.retain(|l| !l.tx.is_disconnected());
        all.iter()
            .flat_map(|l| l.filter.uris.iter().cloned())
            .collect()
    }

    /// Sends a child's `notifications/resources/updated` line to the
    /// streams that asked for its URI (exactly that URI: a sub-resource the
    /// caller never named may be one it may not read).
    pub fn updated(&self, line: &str) {
        #[derive(Deserialize)]
        struct N<'a> {
            #[serde(borrow)]
            params: Option<U<'a>>,
        }
        #[derive(Deserialize)]
        struct U<'a> {
            #[serde(borrow)]
            uri: Option<std::borrow::Cow<'a, str>>,
        }
        let Some(uri) = serde_json::from_str::<N>(line)
            .ok()
            .and_then(|n| n.params?.uri)
        else {
            return;
        };
        let all = self.all.borrow();
        for l in all.iter().filter(|l| l.acked) {
            if l.filter.uris.iter().any(|u| *u == uri) {
                if let Some(out) = with_subscription_id(line, &l.id) {
                    // Lossy under a slow reader, as list_changed: the
                    // client reads the resource again anyway.
                    let _ = l.tx.try_send(sse::event(out.as_bytes()));
                }
            }
        }
    }

    /// Sends a child's notification line to the streams that asked for its
    /// kind; forgets streams whose client went away.
    pub fn broadcast(&self, method: &str, line: &str) {
        let mut all = self.all.borrow_mut();
        all.retain(|l| !l.tx.is_disconnected());
        for l in all.iter().filter(|l| l.acked && l.filter.wants(method)) {
            if let Some(out) = with_subscription_id(line, &l.id) {
                // Lossy under a slow reader: a list_changed is a level
                // trigger, the next one says the same.
                let _ = l.tx.try_send(sse::event(out.as_bytes()));
            }
        }
    }

    pub fn len(&self) -> usize {
        self.all.borrow().len()
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
        let mut f = Filter::parse(Some(&raw));
        let v: serde_json::Value = serde_json::from_str(&f.ack("\"s1\"")).unwrap();
        assert_eq!(
            v["params"]["notifications"],
            serde_json::json!({"toolsListChanged": true, "resourceSubscriptions": ["a"]})
        );
        assert_eq!(v["params"]["_meta"][SUBSCRIPTION_ID_KEY], "s1");
        f.uris.clear();
        let v: serde_json::Value = serde_json::from_str(&f.ack("7")).unwrap();
        assert_eq!(
            v["params"]["notifications"],
            serde_json::json!({"toolsListChanged": true})
        );
    }
}

#[cfg(test)]
mod updates {
    use super::*;

    fn events(rx: &flume::Receiver<Vec<u8>>) -> Vec<String> {
        rx.try_iter()
            .map(|e| String::from_utf8(e).unwrap())
            .collect()
    }

    #[test]
    fn an_update_reaches_only_the_acknowledged_streams_of_its_uri() {
        let ls = Listeners::default();
        let f = |uris: &[&str]| Filter {
            uris: uris.iter().map(|u| u.to_string()).collect(),
            ..Filter::default()
        };
        let (a, ra) = ls.open("\"a\"", f(&["x://1", "x://2"]));
        let (b, rb) = ls.open("\"b\"", f(&["x://2"]));
        let (_c, rc) = ls.open("\"c\"", f(&["x://1"]));
        let refused: BTreeSet<String> = ["x://2".to_string()].into();
        ls.acknowledge(a, &BTreeSet::new());
        ls.acknowledge(b, &refused);
        assert_eq!(
            ls.wanted().into_iter().collect::<Vec<_>>(),
            ["x://1", "x://2"]
        );
        let ack_b = events(&rb);
        assert!(!ack_b[0].contains("resourceSubscriptions"), "{ack_b:?}");
        assert_eq!(events(&ra).len(), 1);
        ls.updated(r#"{"jsonrpc":"2.0","method":"notifications/resources/updated","params":{"uri":"x://1"}}"#);
        let got = events(&ra);
        assert_eq!(got.len(), 1);
        assert!(
            got[0].contains(
                r#""_meta":{"io.modelcontextprotocol/subscriptionId":"a"},"uri":"x://1""#
            ),
            "{got:?}"
        );
        // b was refused x://2 and never named x://1; c is not acknowledged.
        ls.updated(r#"{"jsonrpc":"2.0","method":"notifications/resources/updated","params":{"uri":"x://2"}}"#);
        assert_eq!(events(&ra).len(), 1);
        assert!(events(&rb).is_empty());
        assert!(events(&rc).is_empty());
        drop((ra, rc));
        assert!(ls.wanted().is_empty());
    }
}
