//! One MCP session: its child, the streams waiting for the child's answers,
//! and the reader task that routes every line the child writes.
//!
//! Routing of a child's line:
//! - a response goes on the stream of the POST that carried its request;
//! - a notification with the `progressToken` of an in-flight request goes on
//!   that request's stream;
//! - anything else (other notifications, server-to-client requests) goes on
//!   the GET stream, or waits in a bounded backlog while none is open.
//!
//! A child that exits, or writes a line that is not JSON-RPC, ends the
//! session: every in-flight request gets a JSON-RPC error at once.
//!
//! Writing to the child: [`Session::post`] registers the requests and queues
//! their lines at once, so the caller answers its client with the stream
//! without waiting on the child; one writer task per session drains the
//! queue in order (bounded, [`OUTBOUND_DEPTH`] lines: a full queue is a 503).
//!
//! Deadlines: a request the child leaves unanswered for `requestTimeout`
//! (counted from when it was posted, or from its last progress notification)
//! gets a JSON-RPC error on its stream, and the child gets
//! `notifications/cancelled` for it; a late answer is dropped. The worker's
//! sweeper calls [`Session::expire_overdue`]. A child that does not take a
//! line on its stdin within the same timeout ends the session: its pending
//! requests get their JSON-RPC error on their streams.

use std::cell::RefCell;
use std::collections::{HashMap, VecDeque};
use std::rc::Rc;
use std::time::{Duration, Instant};

use tracing::{info, warn};

use std::sync::Arc;

use crate::mcp::authz::PostAuthz;
use crate::mcp::get_stream::GetStream;
use crate::mcp::jsonrpc::{self, Kind, Message, Outgoing};
use crate::mcp::sse;
use crate::policy::mcp_authz::{Filtered, ListFilter, ListKind};
use crate::pool::{ChildHandle, ChildReader, ChildWriter};

/// Pieces a POST's stream may hold before the child's reader waits for the
/// client to read (backpressure onto that session's own child only).
pub const POST_STREAM_DEPTH: usize = 256;
/// Ids of timed-out requests remembered per session, so that the child's
/// late answers are dropped rather than sent to the GET stream.
const CANCELLED_IDS_KEPT: usize = 64;
/// Lines queued for a session's child and not yet written. A POST that
/// does not fit is refused with 503 (the child is not keeping up); this
/// bounds what a client can park in memory behind a child that does not read.
pub const OUTBOUND_DEPTH: usize = 256;
/// JSON-RPC error code of a request that timed out (the code the MCP SDKs use).
pub const REQUEST_TIMEOUT: i64 = -32001;

/// A POST's SSE stream, shared by the requests it carried; it closes when
/// the last of them is answered (the last `Rc` drops the sender).
pub struct PostStream {
    tx: flume::Sender<Vec<u8>>,
}

struct Pending {
    stream: Rc<PostStream>,
    progress: Option<String>,
    /// When it times out; pushed back by each of its progress notifications.
    deadline: Instant,
    initialize: bool,
    /// A list request whose answer is filtered for its caller.
    list: Option<(ListKind, Arc<ListFilter>)>,
}

struct State {
    pending: HashMap<String, Pending>,
    /// progressToken -> request id.
    progress: HashMap<String, String>,
    get: GetStream,
    last_active: Instant,
    protocol: Option<String>,
    ended: bool,
    /// Timed-out request ids whose late answers are to be dropped.
    cancelled: VecDeque<String>,
    /// Lines for the writer task; `None` once the session ended (the task
    /// then stops).
    outbound: Option<flume::Sender<String>>,
}

pub struct Session {
    pub id: Rc<str>,
    /// Who created it; anyone else presenting the id gets 404.
    pub identity: String,
    /// `McpBackend::key` of the target it runs.
    pub backend: String,
    handle: ChildHandle,
    state: RefCell<State>,
    request_timeout: Duration,
}

/// Why a POST could not be delivered to the session.
pub enum PostError {
    /// The session ended (child gone): the client must re-initialize.
    Ended,
    /// A request id already in flight in this session.
    DuplicateId,
    /// The child's input queue is full (it is not reading): retry later.
    Busy,
}

impl Session {
    pub fn new(
        id: Rc<str>,
        identity: String,
        backend: String,
        writer: ChildWriter,
        handle: ChildHandle,
        max_backlog: usize,
        request_timeout: Duration,
    ) -> Rc<Session> {
        let (tx, rx) = flume::bounded(OUTBOUND_DEPTH);
        let session = Rc::new(Session {
            id,
            identity,
            backend,
            handle,
            state: RefCell::new(State {
                pending: HashMap::new(),
                progress: HashMap::new(),
                get: GetStream::new(max_backlog),
                last_active: Instant::now(),
                protocol: None,
                ended: false,
                cancelled: VecDeque::new(),
                outbound: Some(tx),
            }),
            request_timeout,
        });
        monoio::spawn(write_child(
            Rc::downgrade(&session),
            rx,
            writer,
            request_timeout,
        ));
        session
    }

    pub fn request_timeout(&self) -> Duration {
        self.request_timeout
    }

    pub fn handle(&self) -> &ChildHandle {
        &self.handle
    }

    pub fn protocol(&self) -> Option<String> {
        self.state.borrow().protocol.clone()
    }

    pub fn is_ended(&self) -> bool {
        self.state.borrow().ended
    }

    /// Idle since, or `None` while a request is in flight or a GET stream
    /// is open (a connected client).
    pub fn idle_since(&self) -> Option<Instant> {
        let st = self.state.borrow();
        let get_open = st.get.is_open();
        (st.pending.is_empty() && !get_open).then_some(st.last_active)
    }

    /// Registers the requests among `messages` and queues every line for
    /// the child; returns at once. The SSE stream for their answers when
    /// they include requests, `None` when they do not (202). Requests
    /// `authz` refused are answered on the stream with their error and
    /// never reach the child.
    pub fn post(
        &self,
        messages: Vec<Message>,
        authz: Option<&PostAuthz>,
    ) -> Result<Option<flume::Receiver<Vec<u8>>>, PostError> {
        let refusal = |i: usize| authz.and_then(|a| a.refusal(i));
        let mut st = self.state.borrow_mut();
        if st.ended {
            return Err(PostError::Ended);
        }
        let Some(out) = st.outbound.clone() else {
            return Err(PostError::Ended);
        };
        for m in &messages {
            if let Kind::Request { id, .. } = &m.kind {
                if st.pending.contains_key(id) {
                    return Err(PostError::DuplicateId);
                }
            }
        }
        // All of a POST's lines go, or none (one thread: nothing fills the
        // queue between this check and the sends below).
        let forwarded = (0..messages.len())
            .filter(|&i| refusal(i).is_none())
            .count();
        if OUTBOUND_DEPTH - out.len() < forwarded {
            return Err(PostError::Busy);
        }
        let depth = POST_STREAM_DEPTH.max(messages.len());
        let now = Instant::now();
        st.last_active = now;
        let mut stream = None;
        let mut rx = None;
        for (i, m) in messages.into_iter().enumerate() {
            if let Kind::Request {
                id,
                progress_token,
                method,
                ..
            } = &m.kind
            {
                let s = stream.get_or_insert_with(|| {
                    // Room for every refusal: they are queued before the
                    // client has the receiving end.
                    let (tx, r) = flume::bounded(depth);
                    rx = Some(r);
                    Rc::new(PostStream { tx })
                });
                if let Some(error) = refusal(i) {
                    let _ = s.tx.try_send(sse::event(error.as_bytes()));
                    continue;
                }
                if let Some(t) = progress_token {
                    st.progress.insert(t.clone(), id.clone());
                }
                st.pending.insert(
                    id.clone(),
                    Pending {
                        stream: s.clone(),
                        progress: progress_token.clone(),
                        deadline: now + self.request_timeout,
                        initialize: method == "initialize",
                        list: authz.and_then(|a| a.list(i)),
                    },
                );
            }
            out.try_send(m.line).expect("room checked above");
        }
        Ok(rx)
    }

    /// Opens (or replaces) the GET stream and hands it the backlog.
    pub fn open_get(&self) -> Option<flume::Receiver<Vec<u8>>> {
        let mut st = self.state.borrow_mut();
        if st.ended {
            return None;
        }
        st.last_active = Instant::now();
        Some(st.get.open())
    }

    pub fn in_flight(&self) -> usize {
        self.state.borrow().pending.len()
    }

    /// Ends the GET stream, if one is open (drain).
    pub fn close_get(&self) {
        self.state.borrow_mut().get.close();
    }

    pub fn touch(&self) {
        self.state.borrow_mut().last_active = Instant::now();
    }

    /// Routes one line from the child. Returns false when the line is not
    /// JSON-RPC (the session must end).
    pub async fn route(&self, line: &[u8]) -> bool {
        let Some(out) = jsonrpc::peek(line) else {
            return false;
        };
        let mut list = None;
        let target = {
            let mut st = self.state.borrow_mut();
            match out {
                Outgoing::Response { id } if !st.pending.contains_key(&id) => {
                    if let Some(i) = st.cancelled.iter().position(|c| *c == id) {
                        // The answer to a request that timed out: its client
                        // already has an error, and the child was told.
                        st.cancelled.remove(i);
                        return true;
                    }
                    None
                }
                Outgoing::Response { id } => match st.pending.remove(&id) {
                    Some(p) => {
                        st.last_active = Instant::now();
                        if let Some(t) = &p.progress {
                            st.progress.remove(t);
                        }
                        // The first answer is the initialize one; an empty
                        // version means "not negotiated" (a failed initialize).
                        if st.protocol.is_none() {
                            st.protocol = Some(jsonrpc::protocol_version(line).unwrap_or_default());
                        }
                        list = p.list;
                        Some(p.stream)
                    }
                    None => None,
                },
                Outgoing::Notification {
                    progress: Some(t), ..
                } => {
                    let deadline = Instant::now() + self.request_timeout;
                    let State {
                        progress, pending, ..
                    } = &mut *st;
                    progress
                        .get(&t)
                        .and_then(|id| pending.get_mut(id))
                        .map(|p| {
                            // Progress shows the child is working on it.
                            p.deadline = deadline;
                            p.stream.clone()
                        })
                }
                _ => None,
            }
        };
        // A list answer keeps what its caller may use, spliced from the
        // child's own bytes; anything else goes as the child wrote it.
        let event = match list.map(|(kind, f)| f.filter(line, kind)) {
            Some(Filtered::Spliced { line, .. }) => sse::event(&line),
            _ => sse::event(line),
        };
        match target {
            // Waits if the client reads slowly; a gone client fails at once.
            Some(stream) => {
                let _ = stream.tx.send_async(event).await;
            }
            None => self.to_get_stream(event),
        }
        true
    }

    fn to_get_stream(&self, event: Vec<u8>) {
        self.state.borrow_mut().get.send(event);
    }

    /// Fails every request whose deadline has passed: a JSON-RPC error on its
    /// stream, `notifications/cancelled` to the child (in the background,
    /// bounded by the request timeout). An `initialize` that timed out ends
    /// the session, since nothing can follow it. Returns true when the
    /// session has ended (the caller removes it and stops the child).
    pub fn expire_overdue(&self, now: Instant) -> bool {
        let (expired, initialize) = {
            let mut st = self.state.borrow_mut();
            if st.ended {
                return true;
            }
            if !st.pending.values().any(|p| p.deadline <= now) {
                return false;
            }
            let ids: Vec<String> = st
                .pending
                .iter()
                .filter(|(_, p)| p.deadline <= now)
                .map(|(id, _)| id.clone())
                .collect();
            let mut expired = Vec::with_capacity(ids.len());
            let mut initialize = false;
            for id in ids {
                let p = st.pending.remove(&id).expect("listed above");
                if let Some(t) = &p.progress {
                    st.progress.remove(t);
                }
                initialize |= p.initialize;
                if st.cancelled.len() >= CANCELLED_IDS_KEPT {
                    st.cancelled.pop_front();
                }
                st.cancelled.push_back(id.clone());
                expired.push((id, p));
            }
            (expired, initialize)
        };
        let timeout_ms = self.request_timeout.as_millis() as u64;
        let mut cancels = Vec::with_capacity(expired.len());
        for (id, p) in expired {
            warn!(
                session = &*self.id,
                request.id = %id,
                timeout_ms,
                "MCP request timed out; cancelling it"
            );
            let line = jsonrpc::error_line(Some(&id), REQUEST_TIMEOUT, "Request timed out");
            let _ = p.stream.tx.try_send(sse::event(line.as_bytes()));
            cancels.push(cancelled_line(&id));
        }
        if initialize {
            self.end("MCP server did not answer initialize in time");
            return true;
        }
        // Behind whatever is queued, in order; dropped if the queue is full
        // (the child is then not reading, and its session ends soon).
        let st = self.state.borrow();
        if let Some(out) = &st.outbound {
            for line in cancels {
                let _ = out.try_send(line);
            }
        }
        false
    }

    /// Ends the session: every pending request gets a JSON-RPC error, every
    /// stream closes. The caller stops the child.
    pub fn end(&self, reason: &str) {
        let pending = {
            let mut st = self.state.borrow_mut();
            if st.ended {
                return;
            }
            st.ended = true;
            st.progress.clear();
            st.get.clear();
            st.outbound = None;
            std::mem::take(&mut st.pending)
        };
        info!(
            session = &*self.id,
            reason,
            failed = pending.len(),
            "session ended"
        );
        for (id, p) in pending {
            let line = jsonrpc::error_line(Some(&id), jsonrpc::INTERNAL_ERROR, reason);
            let _ = p.stream.tx.try_send(sse::event(line.as_bytes()));
        }
    }
}

/// The `notifications/cancelled` line for the request `id` (canonical JSON).
fn cancelled_line(id: &str) -> String {
    format!(
        r#"{{"jsonrpc":"2.0","method":"notifications/cancelled","params":{{"requestId":{id},"reason":"request timed out at the proxy"}}}}"#
    )
}

/// Writes the session's queued lines to the child, in order, until the
/// session ends. A child that does not take a line within `limit` ends the
/// session (its pending requests get their JSON-RPC error).
async fn write_child(
    session: std::rc::Weak<Session>,
    lines: flume::Receiver<String>,
    writer: ChildWriter,
    limit: Duration,
) {
    while let Ok(line) = lines.recv_async().await {
        let sent = monoio::time::timeout(limit, writer.send(line.as_bytes())).await;
        let Some(s) = session.upgrade() else {
            return;
        };
        match sent {
            Ok(Ok(())) => {}
            // The child is gone: the reader sees its end, fails what is
            // pending and removes the session.
            Ok(Err(_)) if s.handle.try_exit().is_some() => return,
            // Its stdin is closed or half a line is on it: nothing more can
            // be framed; the worker's sweeper removes the session.
            Ok(Err(_)) => return s.end("MCP server input failed"),
            Err(_) => {
                warn!(
                    session = &*s.id,
                    timeout_ms = limit.as_millis() as u64,
                    "MCP server did not read its input in time"
                );
                return s.end("MCP server stopped reading its input");
            }
        }
    }
}

/// Reads the child's stdout until it ends, routing each line; then ends the
/// session and calls `on_end` (which removes it and stops the child).
pub async fn read_child(session: Rc<Session>, mut reader: ChildReader, on_end: impl FnOnce()) {
    let reason = loop {
        match reader.next_line().await {
            Some(Ok(line)) => {
                if !session.route(&line).await {
                    warn!(
                        session = &*session.id,
                        line = %String::from_utf8_lossy(&line[..line.len().min(200)]),
                        "MCP server wrote a line that is not JSON-RPC"
                    );
                    break "MCP server wrote an invalid message";
                }
            }
            Some(Err(e)) => {
                warn!(session = &*session.id, error = %e, "MCP server output refused");
                break "MCP server output refused";
            }
            None => break "MCP server exited",
        }
    };
    session.end(reason);
    on_end();
}
