//! A shared child's resource subscriptions: the URIs the target's
//! `subscriptions/listen` streams want ([`Listeners::wanted`]), subscribed
//! once per child however many streams name them, with ringgate's own
//! requests, and unsubscribed when the last stream of a URI is gone.
//!
//! [`Listeners::wanted`]: crate::mcp::shared::listen::Listeners::wanted

use std::rc::Rc;

use serde::Deserialize;
use serde_json::value::RawValue;
use tracing::{info, warn};

use super::SharedChild;

impl SharedChild {
    /// Initialized: subscribes to the URIs the target's listen streams want
    /// (a replacement child picks up the live streams' subscriptions).
    pub async fn set_ready(&self) {
        self.ready.set(true);
        for uri in self.listeners.wanted() {
            self.subscribe(&uri).await;
        }
    }

    /// Subscribes to `uri` unless already subscribed; false when the child
    /// refused (it is then not asked for it again).
    pub async fn subscribe(&self, uri: &str) -> bool {
        if self.refused.borrow().contains(uri) {
            return false;
        }
        if !self.subscribed.borrow_mut().insert(uri.to_string()) {
            return true;
        }
        let params = format!(r#"{{"uri":{}}}"#, json_string(uri));
        let answer = self.own_request("resources/subscribe", &params).await;
        if answer.as_deref().is_some_and(is_result) {
            info!(
                slot = self.slot,
                pid = self.pid(),
                uri,
                "shared MCP child subscribed to a resource"
            );
            return true;
        }
        warn!(
            slot = self.slot,
            pid = self.pid(),
            uri,
            "shared MCP child refused a resource subscription"
        );
        self.subscribed.borrow_mut().remove(uri);
        if !self.dead.get() {
            self.refused.borrow_mut().insert(uri.to_string());
        }
        false
    }

    /// Unsubscribes from `uri` (no listen stream wants it any longer).
    pub(super) async fn unsubscribe(&self, uri: &str) {
        if !self.subscribed.borrow_mut().remove(uri) {
            return;
        }
        let params = format!(r#"{{"uri":{}}}"#, json_string(uri));
        if self
            .own_request("resources/unsubscribe", &params)
            .await
            .is_some()
        {
            info!(
                slot = self.slot,
                pid = self.pid(),
                uri,
                "shared MCP child unsubscribed from a resource"
            );
        }
    }

    /// Brings this child's subscriptions in line with what the live listen
    /// streams want: subscribes the missing URIs, unsubscribes those no
    /// stream wants any longer (each in its own task).
    pub(super) fn reconcile(self: &Rc<Self>) {
        if !self.ready.get() {
            return;
        }
        let wanted = self.listeners.wanted();
        let (gone, missing): (Vec<String>, Vec<String>) = {
            let subscribed = self.subscribed.borrow();
            let refused = self.refused.borrow();
            (
                subscribed.difference(&wanted).cloned().collect(),
                wanted
                    .iter()
                    .filter(|u| !subscribed.contains(*u) && !refused.contains(*u))
                    .cloned()
                    .collect(),
            )
        };
        for uri in gone {
            let me = self.clone();
            monoio::spawn(async move { me.unsubscribe(&uri).await });
        }
        for uri in missing {
            let me = self.clone();
            monoio::spawn(async move { me.subscribe(&uri).await });
        }
    }
}

fn json_string(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_else(|_| "\"\"".into())
}

/// A JSON-RPC answer with a `result` (not an `error`).
fn is_result(line: &[u8]) -> bool {
    #[derive(Deserialize)]
    struct A<'a> {
        #[serde(borrow)]
        result: Option<&'a RawValue>,
    }
    serde_json::from_slice::<A>(line).is_ok_and(|a| a.result.is_some())
}
