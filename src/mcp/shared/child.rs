//! One shared child: requests of many modern clients multiplexed over its
//! stdio with ringgate-assigned ids, answers routed back by those ids.
//!
//! A client's request line is forwarded with two splices: its `id` becomes
//! a number ringgate assigns (unique on this child), and its
//! `_meta.progressToken`, if any, becomes `"rg<id>"`. On the way back the
//! child's answer gets the client's id bytes again (and `resultType` etc.,
//! see `modern::splice`), and a progress notification its client's token,
//! so that answers of different clients cannot cross. Everything else in
//! both directions is the peers' own bytes.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::Rc;
use std::time::{Duration, Instant};

use serde::Deserialize;
use serde_json::value::RawValue;
use tracing::{debug, info, warn};

use crate::mcp::jsonrpc::{self, Outgoing};
use crate::mcp::modern::envelope::{span, Envelope};
use crate::mcp::modern::splice;
use crate::mcp::sse;
use crate::policy::mcp_authz::{Filtered, ListFilter, ListKind};
use crate::pool::{ChildHandle, ChildReader, ChildWriter};
use std::sync::Arc;

use super::Signal;

/// Lines queued for the child and not yet written.
pub const OUTBOUND_DEPTH: usize = 1024;
/// Events a request's stream holds before progress is dropped for it.
pub const STREAM_DEPTH: usize = 64;
/// How often in-flight requests are checked for a gone client or a deadline.
pub const SWEEP_EVERY: Duration = Duration::from_millis(250);
/// The code ringgate answers a child's server-to-client request with.
pub const METHOD_NOT_FOUND: i64 = -32601;

enum Waiter {
    /// A client's request: its id and progress token bytes, its stream.
    Client {
        id: String,
        token: Option<String>,
        /// `ttlMs` and `cacheScope` to add to its result.
        cache: Option<(u64, &'static str)>,
        /// A list request on a route with `mcpAuthorization`: the answer
        /// keeps what the caller may use.
        list: Option<(ListKind, Arc<ListFilter>)>,
        tx: flume::Sender<Vec<u8>>,
    },
    /// ringgate's own request (initialize, tools/list): the raw line.
    Own(flume::Sender<Vec<u8>>),
}

struct Pending {
    waiter: Waiter,
    deadline: Instant,
}

pub struct SharedChild {
    pub slot: usize,
    handle: ChildHandle,
    out: RefCell<Option<flume::Sender<String>>>,
    pending: RefCell<HashMap<u64, Pending>>,
    next_id: Cell<u64>,
    dead: Cell<bool>,
    pub ended: Signal,
    timeout: Duration,
}

/// Why a request could not be handed to the child.
#[derive(Debug, PartialEq)]
pub enum SubmitError {
    Dead,
    Busy,
}

impl SharedChild {
    /// Starts the writer, reader and sweeper tasks of a spawned child.
    pub fn start(
        slot: usize,
        handle: ChildHandle,
        writer: ChildWriter,
        reader: ChildReader,
        timeout: Duration,
    ) -> Rc<SharedChild> {
        let (tx, rx) = flume::bounded(OUTBOUND_DEPTH);
        let me = Rc::new(SharedChild {
            slot,
            handle,
            out: RefCell::new(Some(tx)),
            pending: RefCell::new(HashMap::new()),
            next_id: Cell::new(1),
            dead: Cell::new(false),
            ended: Signal::default(),
            timeout,
        });
        monoio::spawn(write_loop(Rc::downgrade(&me), rx, writer, timeout));
        monoio::spawn(read_loop(me.clone(), reader));
        monoio::spawn(sweep_loop(Rc::downgrade(&me)));
        me
    }

    pub fn pid(&self) -> u32 {
        self.handle.pid()
    }
    pub fn handle(&self) -> &ChildHandle {
        &self.handle
    }
    pub fn is_dead(&self) -> bool {
        self.dead.get()
    }
    pub fn in_flight(&self) -> usize {
        self.pending.borrow().len()
    }

    fn next(&self) -> u64 {
        let n = self.next_id.get();
        self.next_id.set(n + 1);
        n
    }

    fn send_line(&self, line: String) -> Result<(), SubmitError> {
        let out = self.out.borrow();
        let Some(out) = out.as_ref().filter(|_| !self.dead.get()) else {
            return Err(SubmitError::Dead);
        };
        out.try_send(line).map_err(|e| match e {
            flume::TrySendError::Full(_) => SubmitError::Busy,
            flume::TrySendError::Disconnected(_) => SubmitError::Dead,
        })
    }

    /// Sends a client's request (`line`, whose members `env` borrows) with
    /// its id and progress token rewritten; the receiver gets SSE events.
    pub fn submit(
        &self,
        line: &str,
        env: &Envelope,
        cache: Option<(u64, &'static str)>,
        list: Option<(ListKind, Arc<ListFilter>)>,
    ) -> Result<flume::Receiver<Vec<u8>>, SubmitError> {
        let id_raw = env.id.ok_or(SubmitError::Dead)?;
        let n = self.next();
        let new_id = n.to_string();
        let new_token = format!("\"rg{n}\"");
        let mut edits = vec![(span(line, id_raw), new_id.as_str())];
        if let Some(t) = env.progress_token {
            edits.push((span(line, t), new_token.as_str()));
        }
        let rewritten = splice::splice(line, edits);
        let (tx, rx) = flume::bounded(STREAM_DEPTH);
        let waiter = Waiter::Client {
            id: id_raw.get().to_string(),
            token: env.progress_token.map(|t| t.get().to_string()),
            cache,
            list,
            tx,
        };
        self.send_line(rewritten)?;
        self.pending.borrow_mut().insert(
            n,
            Pending {
                waiter,
                deadline: Instant::now() + self.timeout,
            },
        );
        Ok(rx)
    }

    /// Sends ringgate's own request (`method`, `params` JSON) and waits for
    /// the child's answer line (bounded by the request timeout).
    pub async fn own_request(&self, method: &str, params: &str) -> Option<Vec<u8>> {
        let n = self.next();
        let line = format!(r#"{{"jsonrpc":"2.0","id":{n},"method":"{method}","params":{params}}}"#);
        let (tx, rx) = flume::bounded(1);
        self.send_line(line).ok()?;
        self.pending.borrow_mut().insert(
            n,
            Pending {
                waiter: Waiter::Own(tx),
                deadline: Instant::now() + self.timeout,
            },
        );
        rx.recv_async().await.ok()
    }

    /// Sends a notification of ringgate's own.
    pub fn notify(&self, line: String) {
        let _ = self.send_line(line);
    }

    /// Ends this child's service: every request in flight gets a JSON-RPC
    /// error on its own stream; the slot's keeper stops the process.
    pub fn end(&self, reason: &str) {
        if self.dead.replace(true) {
            return;
        }
        *self.out.borrow_mut() = None;
        let pending: Vec<Pending> = self.pending.borrow_mut().drain().map(|(_, p)| p).collect();
        info!(
            slot = self.slot,
            pid = self.pid(),
            reason,
            failed = pending.len(),
            "shared MCP child ended"
        );
        for p in pending {
            if let Waiter::Client { id, tx, .. } = p.waiter {
                let line = jsonrpc::error_line(Some(&id), jsonrpc::INTERNAL_ERROR, reason);
                let _ = tx.try_send(sse::event(line.as_bytes()));
            }
        }
        self.ended.fire();
    }

    /// Routes one line of the child's stdout. False: not JSON-RPC.
    fn route(&self, line: &[u8]) -> bool {
        let Some(kind) = jsonrpc::peek(line) else {
            return false;
        };
        let Ok(text) = std::str::from_utf8(line) else {
            return false;
        };
        match kind {
            Outgoing::Response { id } => {
                let Some(p) = id
                    .parse::<u64>()
                    .ok()
                    .and_then(|n| self.pending.borrow_mut().remove(&n))
                else {
                    debug!(slot = self.slot, %id, "answer to no request in flight dropped");
                    return true;
                };
                match p.waiter {
                    Waiter::Own(tx) => {
                        let _ = tx.try_send(line.to_vec());
                    }
                    Waiter::Client {
                        id,
                        cache,
                        tx,
                        list,
                        ..
                    } => {
                        let filtered = match list.map(|(kind, f)| f.filter(line, kind)) {
                            Some(Filtered::Spliced { line, .. }) => String::from_utf8(line).ok(),
                            _ => None,
                        };
                        let text = filtered.as_deref().unwrap_or(text);
                        match splice::answer(text, &id, cache) {
                            Some(out) => deliver(tx, sse::event(out.as_bytes())),
                            None => {
                                let e = jsonrpc::error_line(
                                    Some(&id),
                                    jsonrpc::INTERNAL_ERROR,
                                    "MCP server answered in a form ringgate cannot route",
                                );
                                deliver(tx, sse::event(e.as_bytes()));
                            }
                        }
                    }
                }
            }
            Outgoing::Notification {
                progress: Some(t), ..
            } => {
                let n = t
                    .strip_prefix("\"rg")
                    .and_then(|r| r.strip_suffix('"'))
                    .and_then(|r| r.parse::<u64>().ok());
                let mut pending = self.pending.borrow_mut();
                let Some(p) = n.and_then(|n| pending.get_mut(&n)) else {
                    return true;
                };
                p.deadline = Instant::now() + self.timeout;
                if let (
                    Waiter::Client {
                        token: Some(orig),
                        tx,
                        ..
                    },
                    Some(r),
                ) = (&p.waiter, splice::progress_token_span(text))
                {
                    let out = splice::splice(text, vec![(r, orig.as_str())]);
                    // Lossy under a slow reader rather than stalling the
                    // other clients of this child.
                    let _ = tx.try_send(sse::event(out.as_bytes()));
                }
            }
            Outgoing::Notification { method, .. } => {
                // A shared child's log and change notifications belong to
                // no single request: they are not sent to anyone.
                debug!(slot = self.slot, %method, "notification of a shared child dropped");
            }
            Outgoing::Request { method } => {
                #[derive(Deserialize)]
                struct Id<'a> {
                    #[serde(borrow)]
                    id: &'a RawValue,
                }
                if let Ok(r) = serde_json::from_str::<Id>(text) {
                    let e = jsonrpc::error_line(
                        Some(r.id.get()),
                        METHOD_NOT_FOUND,
                        "ringgate serves this server statelessly and has no client to ask",
                    );
                    let _ = self.send_line(e);
                }
                debug!(slot = self.slot, %method, "server-to-client request refused");
            }
        }
        true
    }

    /// Cancels requests whose client went away and fails overdue ones.
    fn sweep(&self, now: Instant) {
        let gone: Vec<(u64, bool)> = self
            .pending
            .borrow()
            .iter()
            .filter_map(|(n, p)| {
                let closed = matches!(&p.waiter, Waiter::Client { tx, .. } if tx.is_disconnected());
                (closed || p.deadline <= now).then_some((*n, closed))
            })
            .collect();
        for (n, closed) in gone {
            let Some(p) = self.pending.borrow_mut().remove(&n) else {
                continue;
            };
            let reason = if closed {
                "client closed the stream"
            } else {
                "request timed out at the proxy"
            };
            if let Waiter::Client { id, tx, .. } = &p.waiter {
                if closed {
                    info!(slot = self.slot, request.id = %id, "modern MCP request cancelled: its client closed the stream");
                } else {
                    warn!(slot = self.slot, request.id = %id, "modern MCP request timed out; cancelling it");
                    let e = jsonrpc::error_line(
                        Some(id),
                        crate::mcp::session::REQUEST_TIMEOUT,
                        "Request timed out",
                    );
                    let _ = tx.try_send(sse::event(e.as_bytes()));
                }
            }
            self.notify(format!(
                r#"{{"jsonrpc":"2.0","method":"notifications/cancelled","params":{{"requestId":{n},"reason":"{reason}"}}}}"#
            ));
        }
    }
}

/// The final answer must reach its stream: waits (in its own task) when a
/// slow client filled it, never stalling the child's reader.
fn deliver(tx: flume::Sender<Vec<u8>>, event: Vec<u8>) {
    if let Err(flume::TrySendError::Full(ev)) = tx.try_send(event) {
        monoio::spawn(async move {
            let _ = tx.send_async(ev).await;
        });
    }
}

async fn write_loop(
    me: std::rc::Weak<SharedChild>,
    lines: flume::Receiver<String>,
    writer: ChildWriter,
    limit: Duration,
) {
    while let Ok(line) = lines.recv_async().await {
        let sent = monoio::time::timeout(limit, writer.send(line.as_bytes())).await;
        let Some(me) = me.upgrade() else { return };
        if !matches!(sent, Ok(Ok(()))) {
            return me.end("MCP server input failed");
        }
    }
}

async fn read_loop(me: Rc<SharedChild>, mut reader: ChildReader) {
    let reason = loop {
        match reader.next_line().await {
            Some(Ok(line)) => {
                if !me.route(&line) {
                    break "MCP server wrote an invalid message";
                }
            }
            Some(Err(_)) => break "MCP server output refused",
            None => break "MCP server exited",
        }
    };
    me.end(reason);
}

async fn sweep_loop(me: std::rc::Weak<SharedChild>) {
    loop {
        monoio::time::sleep(SWEEP_EVERY).await;
        let Some(me) = me.upgrade() else { return };
        if me.is_dead() {
            return;
        }
        me.sweep(Instant::now());
    }
}
