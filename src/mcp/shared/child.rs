//! One shared child: requests of many modern clients multiplexed over its
//! stdio with ringgate-assigned ids, answers routed back by those ids.
//!
//! A client's request line is forwarded with splices: its `id` becomes
//! a number ringgate assigns (unique on this child), its
//! `_meta.progressToken`, if any, becomes `"rg<id>"`, and the 2026-07-28
//! envelope members leave its `_meta` (see `modern::strip`). On the way back the
//! child's answer gets the client's id bytes again (and `resultType` etc.,
//! see `modern::splice`), and a progress notification its client's token,
//! so that answers of different clients cannot cross. Everything else in
//! both directions is the peers' own bytes.

use std::cell::{Cell, RefCell};
use std::collections::{BTreeSet, HashMap};
use std::rc::Rc;
use std::time::{Duration, Instant};

use serde::Deserialize;
use serde_json::value::RawValue;
use tracing::{debug, info, warn};

use crate::mcp::jsonrpc::{self, Outgoing};
use crate::mcp::modern::envelope::Envelope;
use crate::mcp::modern::{splice, strip};
use crate::mcp::sse;
use crate::policy::mcp_authz::{Filtered, ListFilter, ListKind};
use crate::pool::{ChildHandle, ChildReader, ChildWriter};
use std::sync::Arc;

use super::listen::{Listeners, STREAM_DEPTH};

mod subscribe;
use super::Signal;
use crate::mcp::modern::state::{self, Parked, Resume};

/// Lines queued for the child and not yet written.
pub const OUTBOUND_DEPTH: usize = 1024;
/// How often in-flight requests are checked for a gone client or a deadline.
pub const SWEEP_EVERY: Duration = Duration::from_millis(250);
/// The code ringgate answers a child's server-to-client request with.
pub const METHOD_NOT_FOUND: i64 = -32601;
pub const INVALID_PARAMS: i64 = -32602;

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
        /// A `tools/call`, `prompts/get` or `resources/read`: may be
        /// answered with an `InputRequiredResult`.
        mrtr: Option<Box<Mrtr>>,
        /// Waiting for the client's input: the child's request id and the
        /// parked call's id in `state`.
        parked: Option<(String, u64)>,
        /// The `_meta` log level the request asked for (0 = debug).
        log_level: Option<u8>,
    },
    /// ringgate's own request (initialize, tools/list): the raw line.
    Own(flume::Sender<Vec<u8>>),
}

/// What MRTR needs of a request: the capabilities its client declared,
/// and what its `requestState` is bound to.
#[derive(Debug, Clone)]
pub struct Mrtr {
    pub elicitation: bool,
    pub sampling: bool,
    pub identity: [u8; 32],
    pub binding: [u8; 32],
}

/// Per-request options of [`SharedChild::submit`].
#[derive(Default)]
pub struct Opts {
    /// `ttlMs` and `cacheScope` to add to its result.
    pub cache: Option<(u64, &'static str)>,
    pub list: Option<(ListKind, Arc<ListFilter>)>,
    pub mrtr: Option<Mrtr>,
    pub log_level: Option<u8>,
}

/// RFC 5424 levels as MCP names them, lowest first.
pub const LOG_LEVELS: &[&str] = &[
    "debug",
    "info",
    "notice",
    "warning",
    "error",
    "critical",
    "alert",
    "emergency",
];

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
    input_timeout: Duration,
    inbox: flume::Sender<Resume>,
    listeners: Rc<Listeners>,
    /// Initialized: ringgate's own requests other than `initialize` may go.
    ready: Cell<bool>,
    /// Resource URIs this child is subscribed to (or being subscribed to).
    subscribed: RefCell<BTreeSet<String>>,
    /// URIs it refused to subscribe to: not asked again.
    refused: RefCell<BTreeSet<String>>,
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
        input_timeout: Duration,
        listeners: Rc<Listeners>,
    ) -> Rc<SharedChild> {
        let (tx, rx) = flume::bounded(OUTBOUND_DEPTH);
        let (inbox, resumes) = flume::unbounded();
        let me = Rc::new(SharedChild {
            slot,
            handle,
            out: RefCell::new(Some(tx)),
            pending: RefCell::new(HashMap::new()),
            next_id: Cell::new(1),
            dead: Cell::new(false),
            ended: Signal::default(),
            timeout,
            input_timeout,
            inbox,
            listeners,
            ready: Cell::new(false),
            subscribed: RefCell::default(),
            refused: RefCell::default(),
        });
        monoio::spawn(resume_loop(Rc::downgrade(&me), resumes));
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
        opts: Opts,
    ) -> Result<flume::Receiver<Vec<u8>>, SubmitError> {
        let id_raw = env.id.ok_or(SubmitError::Dead)?;
        let n = self.next();
        let new_id = n.to_string();
        let new_token = format!("\"rg{n}\"");
        let rewritten = strip::forward(line, env, &new_id, &new_token);
        let (tx, rx) = flume::bounded(STREAM_DEPTH);
        let waiter = Waiter::Client {
            id: id_raw.get().to_string(),
            token: env.progress_token.map(|t| t.get().to_string()),
            cache: opts.cache,
            list: opts.list,
            tx,
            mrtr: opts.mrtr.map(Box::new),
            parked: None,
            log_level: opts.log_level,
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
            if let Waiter::Client {
                parked: Some((_, park)),
                ..
            } = &p.waiter
            {
                state::take(*park);
            }
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
                        parked: Some((_, park)),
                        ..
                    } => {
                        // Answered while waiting for input: no client
                        // stream to take it; the retry finds it gone.
                        state::take(park);
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
            Outgoing::Notification { method, .. } if method.ends_with("/list_changed") => {
                self.listeners.broadcast(&method, text);
            }
            Outgoing::Notification { method, .. }
                if method == "notifications/resources/updated" =>
            {
                self.listeners.updated(text);
            }
            Outgoing::Notification { method, .. } if method == "notifications/message" => {
                self.log_message(text);
            }
            Outgoing::Notification { method, .. } => {
                // Belongs to no single request: not sent to anyone.
                debug!(slot = self.slot, %method, "notification of a shared child dropped");
            }
            Outgoing::Request { method }
                if method == "elicitation/create" || method == "sampling/createMessage" =>
            {
                self.input_required(&method, text);
            }
            Outgoing::Request { method } => {
                if let Ok(r) = serde_json::from_str::<ChildRequest>(text) {
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

    /// Answers a request of the child's with a JSON-RPC error.
    fn refuse(&self, child_req: &str, message: &str) {
        let _ = self.send_line(jsonrpc::error_line(
            Some(child_req),
            METHOD_NOT_FOUND,
            message,
        ));
    }

    /// The only client request in flight that could be waiting on the
    /// child's server-to-client request (a stdio server does not say which
    /// request it asks for; with several candidates ringgate cannot tell).
    fn sole(&self, eligible: impl Fn(&Waiter) -> bool) -> Option<u64> {
        let pending = self.pending.borrow();
        let mut it = pending
            .iter()
            .filter(|(_, p)| eligible(&p.waiter))
            .map(|(n, _)| *n);
        match (it.next(), it.next()) {
            (Some(n), None) => Some(n),
            _ => None,
        }
    }

    /// MRTR: the child asks for elicitation or sampling. The one request it
    /// can belong to is answered with an `InputRequiredResult`; the child's
    /// call stays pending until the client retries (or the state expires).
    fn input_required(&self, method: &str, text: &str) {
        let Ok(r) = serde_json::from_str::<ChildRequest>(text) else {
            return;
        };
        let child_req = r.id.get();
        let n = self.sole(|w| {
            matches!(
                w,
                Waiter::Client {
                    mrtr: Some(_),
                    parked: None,
                    ..
                }
            )
        });
        let Some(n) = n else {
            debug!(slot = self.slot, %method, "server-to-client request with no single request to ask for");
            return self.refuse(
                child_req,
                "ringgate cannot tell which client request this belongs to",
            );
        };
        let mut pending = self.pending.borrow_mut();
        let Some(p) = pending.get_mut(&n) else { return };
        let Waiter::Client {
            id,
            tx,
            mrtr: Some(m),
            parked,
            ..
        } = &mut p.waiter
        else {
            return;
        };
        let (declared, cap) = match method {
            "elicitation/create" => (m.elicitation, "elicitation"),
            _ => (m.sampling, "sampling"),
        };
        if !declared {
            let msg = format!(
                "the MCP server needs {method} to complete this request, and the request's _meta io.modelcontextprotocol/clientCapabilities does not declare {cap}"
            );
            let e = jsonrpc::error_line(Some(id), jsonrpc::INVALID_REQUEST, &msg);
            deliver(tx.clone(), sse::event(e.as_bytes()));
            drop(pending.remove(&n));
            drop(pending);
            self.refuse(child_req, &format!("the client did not declare {cap}"));
            self.notify(format!(
                r#"{{"jsonrpc":"2.0","method":"notifications/cancelled","params":{{"requestId":{n},"reason":"client lacks {cap}"}}}}"#
            ));
            return;
        }
        let park = state::next_id();
        let token = state::issue(park, self.input_timeout, &m.identity, &m.binding);
        let params = r.params.map_or("{}", |p| p.get());
        let line = format!(
            r#"{{"jsonrpc":"2.0","id":{id},"result":{{"resultType":"input_required","inputRequests":{{"{INPUT_KEY}":{{"method":"{method}","params":{params}}}}},"requestState":"{token}"}}}}"#
        );
        // The stream ends with this answer: the waiter keeps a sender no
        // one reads until the retry brings a new one.
        let (dead, _) = flume::bounded(1);
        deliver(std::mem::replace(tx, dead), sse::event(line.as_bytes()));
        *parked = Some((child_req.to_string(), park));
        p.deadline = Instant::now() + self.input_timeout;
        state::park(
            park,
            Parked {
                inbox: self.inbox.clone(),
                call: n,
            },
        );
        info!(slot = self.slot, %method, "modern MCP call waits for the client's input");
    }

    /// A retry with the client's input reached this child's worker.
    fn resume(&self, r: Resume) {
        let mut pending = self.pending.borrow_mut();
        let Some(p) = pending.get_mut(&r.call) else {
            let e = jsonrpc::error_line(
                Some(&r.client_id),
                INVALID_PARAMS,
                state::Refused::Gone.message(),
            );
            return deliver(r.tx, sse::event(e.as_bytes()));
        };
        let Waiter::Client {
            id,
            token,
            tx,
            parked,
            ..
        } = &mut p.waiter
        else {
            return;
        };
        let Some((child_req, _)) = parked.take() else {
            return;
        };
        *id = r.client_id;
        *token = r.token;
        *tx = r.tx;
        p.deadline = Instant::now() + self.timeout;
        drop(pending);
        let line = match r.response {
            Some(result) => format!(r#"{{"jsonrpc":"2.0","id":{child_req},"result":{result}}}"#),
            None => jsonrpc::error_line(
                Some(&child_req),
                INVALID_PARAMS,
                "the client gave no response to this request",
            ),
        };
        let _ = self.send_line(line);
    }

    /// A child's `notifications/message`: sent only to a request that asked
    /// for a log level (`_meta` `io.modelcontextprotocol/logLevel`) at or
    /// below the message's, and only when it is the one request in flight
    /// on this child (a stdio server's log line names no request).
    fn log_message(&self, text: &str) {
        #[derive(Deserialize)]
        struct Note<'a> {
            #[serde(borrow)]
            params: Option<Level<'a>>,
        }
        #[derive(Deserialize)]
        struct Level<'a> {
            #[serde(borrow)]
            level: Option<std::borrow::Cow<'a, str>>,
        }
        let level = serde_json::from_str::<Note>(text)
            .ok()
            .and_then(|n| n.params?.level)
            .and_then(|l| LOG_LEVELS.iter().position(|x| *x == l));
        let Some(level) = level else { return };
        let pending = self.pending.borrow();
        let mut clients = pending.values().filter_map(|p| match &p.waiter {
            Waiter::Client {
                log_level,
                tx,
                parked: None,
                ..
            } => Some((*log_level, tx)),
            _ => None,
        });
        if let (Some((Some(min), tx)), None) = (clients.next(), clients.next()) {
            if level >= min as usize {
                let _ = tx.try_send(sse::event(text.as_bytes()));
            }
        }
    }

    /// Cancels requests whose client went away and fails overdue ones.
    fn sweep(&self, now: Instant) {
        let gone: Vec<(u64, bool)> = self
            .pending
            .borrow()
            .iter()
            .filter_map(|(n, p)| {
                let closed = matches!(&p.waiter, Waiter::Client { tx, parked: None, .. } if tx.is_disconnected());
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
            if let Waiter::Client {
                parked: Some((child_req, park)),
                ..
            } = &p.waiter
            {
                // Its client never came back with the input.
                state::take(*park);
                self.refuse(child_req, "the client did not answer in time");
                info!(
                    slot = self.slot,
                    "modern MCP call waiting for input expired; cancelling it"
                );
            } else if let Waiter::Client { id, tx, .. } = &p.waiter {
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

/// The key of the one entry of ringgate's `inputRequests`.
pub const INPUT_KEY: &str = "input";

#[derive(Deserialize)]
struct ChildRequest<'a> {
    #[serde(borrow)]
    id: &'a RawValue,
    #[serde(borrow)]
    params: Option<&'a RawValue>,
}

async fn resume_loop(me: std::rc::Weak<SharedChild>, resumes: flume::Receiver<Resume>) {
    while let Ok(r) = resumes.recv_async().await {
        match me.upgrade() {
            Some(me) if !me.is_dead() => me.resume(r),
            _ => {
                let e = jsonrpc::error_line(
                    Some(&r.client_id),
                    INVALID_PARAMS,
                    state::Refused::Gone.message(),
                );
                let _ = r.tx.try_send(sse::event(e.as_bytes()));
            }
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
        me.reconcile();
    }
}
