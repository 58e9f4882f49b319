//! A handshake-era session over several targets: one child per target, each
//! run by its own [`Session`] (its writer, its pending requests, its
//! deadlines), and this layer between them and the client.
//!
//! - A request goes to one child, found by the name or URI it names
//!   ([`Naming`]), or to every child (`initialize`, the lists,
//!   `logging/setLevel`), whose answers are merged into one. Each child sees
//!   only the requests it is sent, with the client's ids and progress
//!   tokens: within a child they are unique because they are within the
//!   client's session, so answers and progress never cross children.
//! - Client notifications go to every child; a client's answer to a
//!   server-to-client request goes to the child that asked, its id restored
//!   byte for byte (the client saw `"<target>:<id>"`).
//! - Every child's GET-stream messages reach the client's GET stream.
//! - A child that exits: under `failClosed` the session ends; under
//!   `failOpen` its names leave the lists, the client is told
//!   (`notifications/tools/list_changed`), and the others serve on.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tracing::{info, warn};

use crate::mcp::authz::PostAuthz;
use crate::mcp::get_stream::GetStream;
use crate::mcp::jsonrpc::{self, Kind, Message, Outgoing};
use crate::mcp::multiplex::{self as mx, Answer, ListKind, Naming};
use crate::mcp::session::{PostError, Session, POST_STREAM_DEPTH};
use crate::mcp::sse;

/// JSON-RPC "Invalid params": a name or URI no target serves.
const INVALID_PARAMS: i64 = -32602;

/// One target's child, run by its own session.
pub struct Child {
    pub name: String,
    pub session: Rc<Session>,
    alive: Cell<bool>,
}

struct State {
    get: GetStream,
    last_active: Instant,
    ended: bool,
    protocol: Option<String>,
    /// Under `prefixMode: never`: which target serves a tool or prompt name.
    index: HashMap<String, usize>,
}

pub struct MultiSession {
    pub id: Rc<str>,
    pub identity: String,
    pub backend: String,
    naming: Naming,
    fail_open: bool,
    children: Vec<Child>,
    state: RefCell<State>,
}

/// What a fanned-out request's answers become.
#[derive(Clone, Copy)]
enum Merge {
    Initialize,
    List(ListKind),
    /// Every child answers the same (`logging/setLevel`): the first good one.
    Any,
}

impl MultiSession {
    pub fn new(
        id: Rc<str>,
        identity: String,
        backend: &crate::config::McpBackend,
        key: String,
        children: Vec<(String, Rc<Session>)>,
        max_backlog: usize,
    ) -> Rc<MultiSession> {
        let me = Rc::new(MultiSession {
            id,
            identity,
            backend: key,
            naming: Naming::from_backend(backend),
            fail_open: backend.failure_mode == crate::config::TargetFailureMode::FailOpen,
            children: children
                .into_iter()
                .map(|(name, session)| Child {
                    name,
                    session,
                    alive: Cell::new(true),
                })
                .collect(),
            state: RefCell::new(State {
                get: GetStream::new(max_backlog),
                last_active: Instant::now(),
                ended: false,
                protocol: None,
                index: HashMap::new(),
            }),
        });
        // Each child's server-to-client messages, relayed for good.
        for (i, c) in me.children.iter().enumerate() {
            if let Some(rx) = c.session.open_get() {
                monoio::spawn(relay_get(Rc::downgrade(&me), i, rx));
            }
        }
        me
    }

    pub fn children(&self) -> &[Child] {
        &self.children
    }

    fn never(&self) -> bool {
        !self.naming.prefix_names
    }

    pub fn protocol(&self) -> Option<String> {
        self.state.borrow().protocol.clone()
    }

    pub fn is_ended(&self) -> bool {
        self.state.borrow().ended
    }

    pub fn in_flight(&self) -> usize {
        self.children.iter().map(|c| c.session.in_flight()).sum()
    }

    pub fn idle_since(&self) -> Option<Instant> {
        let st = self.state.borrow();
        let get_open = st.get.is_open();
        (self.in_flight() == 0 && !get_open).then_some(st.last_active)
    }

    pub fn close_get(&self) {
        self.state.borrow_mut().get.close();
    }

    pub fn open_get(&self) -> Option<flume::Receiver<Vec<u8>>> {
        let mut st = self.state.borrow_mut();
        if st.ended {
            return None;
        }
        st.last_active = Instant::now();
        Some(st.get.open())
    }

    fn to_get_stream(&self, event: Vec<u8>) {
        self.state.borrow_mut().get.send(event);
    }

    fn alive(&self) -> impl Iterator<Item = (usize, &Child)> {
        self.children
            .iter()
            .enumerate()
            .filter(|(_, c)| c.alive.get() && !c.session.is_ended())
    }

    /// The target a client's request goes to, and its line for that child.
    /// `Err` is the error line that answers it instead.
    fn route(&self, m: &Message, id: &str, method: &str) -> Result<(usize, String), String> {
        let line = m.line.as_str();
        let unknown =
            |what: &str| jsonrpc::error_line(Some(id), INVALID_PARAMS, &format!("Unknown {what}"));
        let Some((what, span, uri)) = mx::named(line, method) else {
            return self.first_alive(id, line);
        };
        let Some(span) = span else {
            return Err(unknown(what));
        };
        let routed = if !uri && self.never() {
            let name = mx::decode_str(&line[span]).unwrap_or_default();
            let t = self.state.borrow().index.get(&name).copied();
            t.map(|t| (t, line.to_string()))
        } else {
            self.naming.unexpose(line, span, uri)
        };
        match routed {
            Some((t, l)) if self.children[t].alive.get() => Ok((t, l)),
            _ => Err(unknown(what)),
        }
    }

    fn first_alive(&self, id: &str, line: &str) -> Result<(usize, String), String> {
        match self.alive().next() {
            Some((i, _)) => Ok((i, line.to_string())),
            None => Err(jsonrpc::error_line(
                Some(id),
                jsonrpc::INTERNAL_ERROR,
                "no MCP server available",
            )),
        }
    }

    /// Posts a client's messages: each to its child (or every child);
    /// returns the SSE stream of their answers, `None` when they hold no
    /// request (202).
    pub fn post(
        self: &Rc<Self>,
        messages: Vec<Message>,
        authz: Option<&PostAuthz>,
    ) -> Result<Option<flume::Receiver<Vec<u8>>>, PostError> {
        if self.is_ended() || self.alive().next().is_none() {
            return Err(PostError::Ended);
        }
        self.state.borrow_mut().last_active = Instant::now();
        let requests = messages.iter().filter(|m| m.is_request()).count();
        let (tx, rx) = flume::bounded(POST_STREAM_DEPTH.max(requests));
        for (i, m) in messages.into_iter().enumerate() {
            match &m.kind {
                Kind::Notification { .. } => {
                    for (_, c) in self.alive() {
                        let _ = c.session.post(vec![m.clone()], None);
                    }
                }
                Kind::Response { id } => self.client_answer(&m, id),
                Kind::Request { id, method, .. } => {
                    if let Some(refused) = authz.and_then(|a| a.refusal(i)) {
                        let _ = tx.try_send(sse::event(refused.as_bytes()));
                        continue;
                    }
                    let merge = match method.as_str() {
                        "initialize" => Some(Merge::Initialize),
                        "logging/setLevel" => Some(Merge::Any),
                        other => ListKind::of_method(other).map(Merge::List),
                    };
                    let list = authz.and_then(|a| a.list(i));
                    match merge {
                        Some(merge) => self.fan_out(m.clone(), id, merge, list, tx.clone()),
                        None => match self.route(&m, id, method) {
                            Ok((t, line)) => {
                                let m = Message { line, kind: m.kind };
                                self.to_child(t, m, None, tx.clone());
                            }
                            Err(error) => {
                                let _ = tx.try_send(sse::event(error.as_bytes()));
                            }
                        },
                    }
                }
            }
        }
        Ok((requests > 0).then_some(rx))
    }

    /// A client's answer to a server-to-client request: to the child that
    /// asked, with the child's own id.
    fn client_answer(&self, m: &Message, id: &str) {
        let Some((t, orig)) = mx::route_response_id(&self.naming, id) else {
            warn!(
                session = &*self.id,
                id, "client answered a request no target sent"
            );
            return;
        };
        let Some(span) = mx::member(&m.line, "id") else {
            return;
        };
        let line = mx::splice(&m.line, span, &orig);
        let kind = Kind::Response { id: orig };
        let _ = self.children[t]
            .session
            .post(vec![Message { line, kind }], None);
    }

    /// Sends one request to child `t`; its answers go to `tx`. An answer to
    /// `resources/read` gets its contents' URIs as exposed.
    fn to_child(
        self: &Rc<Self>,
        t: usize,
        m: Message,
        authz: Option<PostAuthz>,
        tx: flume::Sender<Vec<u8>>,
    ) {
        let (id, read) = match &m.kind {
            Kind::Request { id, method, .. } => (id.clone(), method == "resources/read"),
            _ => (String::new(), false),
        };
        match self.children[t].session.post(vec![m], authz.as_ref()) {
            Ok(Some(rx)) => {
                let me = self.clone();
                monoio::spawn(async move {
                    while let Ok(mut ev) = rx.recv_async().await {
                        if read {
                            let line = sse::decode(&ev).into_iter().next().unwrap_or_default();
                            let text = String::from_utf8_lossy(&line);
                            if let Some(l) = mx::expose_read(&me.naming, t, &text) {
                                ev = sse::event(l.as_bytes());
                            }
                        }
                        if tx.send_async(ev).await.is_err() {
                            break;
                        }
                    }
                });
            }
            Ok(None) => {}
            Err(e) => {
                let why = match e {
                    PostError::Ended => "MCP server exited",
                    PostError::DuplicateId => "request id already in flight",
                    PostError::Busy => "MCP server is not reading its input",
                };
                let line = jsonrpc::error_line(Some(&id), jsonrpc::INTERNAL_ERROR, why);
                let _ = tx.try_send(sse::event(line.as_bytes()));
            }
        }
    }

    /// Sends a request to every live child and answers it once with the
    /// merge of their answers; their other messages on the way (progress)
    /// pass through.
    fn fan_out(
        self: &Rc<Self>,
        m: Message,
        id: &str,
        merge: Merge,
        list: Option<(
            crate::policy::mcp_authz::ListKind,
            Arc<crate::policy::mcp_authz::ListFilter>,
        )>,
        tx: flume::Sender<Vec<u8>>,
    ) {
        let mut streams = Vec::new();
        // A list's cursor (ringgate's) says which targets have pages left.
        let alive: Vec<usize> = self.alive().map(|(t, _)| t).collect();
        let lines = match merge {
            Merge::List(_) => mx::list_requests(&self.naming, &m.line, &alive),
            _ => Some(alive.iter().map(|t| (*t, m.line.clone())).collect()),
        };
        let Some(lines) = lines else {
            let _ = tx.try_send(sse::event(mx::bad_cursor(id).as_bytes()));
            return;
        };
        for (t, line) in lines {
            let c = &self.children[t];
            // A list filtered for its caller is filtered with each target's
            // name as `mcp.tool.target`.
            let authz = list.as_ref().map(|(kind, f)| {
                let mut filter = (**f).clone();
                filter.target = c.name.clone();
                PostAuthz {
                    lists: vec![(0, *kind)],
                    filter: Some(Arc::new(filter)),
                    ..PostAuthz::default()
                }
            });
            let (own_tx, own_rx) = flume::bounded(POST_STREAM_DEPTH);
            let m = Message {
                line,
                kind: m.kind.clone(),
            };
            self.to_child(t, m, authz, own_tx);
            streams.push((t, own_rx));
        }
        let me = self.clone();
        let id = id.to_string();
        monoio::spawn(async move {
            let answers = mx::gather(streams, &tx).await;
            let line = me.merge(&id, merge, &answers).await;
            let _ = tx.send_async(sse::event(line.as_bytes())).await;
        });
    }

    async fn merge(self: &Rc<Self>, id: &str, merge: Merge, answers: &[(usize, String)]) -> String {
        let list = mx::answers(answers);
        let merged = match merge {
            Merge::Initialize => mx::merge_initialize(&self.naming, id, &list, self.fail_open),
            Merge::List(kind) => {
                if self.never() && matches!(kind, ListKind::Tools | ListKind::Prompts) {
                    self.learn(kind, &list);
                }
                mx::merge_list(&self.naming, kind, id, &list, self.fail_open)
            }
            Merge::Any => list
                .iter()
                .find(|a| mx::member(a.line, "result").is_some())
                .or(list.first())
                .map(|a| a.line.to_string())
                .ok_or_else(String::new),
        };
        let mut line = merged.unwrap_or_else(|e| e);
        if line.is_empty() {
            line = jsonrpc::error_line(Some(id), jsonrpc::INTERNAL_ERROR, "no MCP server answered");
        }
        if let Merge::Initialize = merge {
            let ok = mx::member(&line, "result").is_some();
            if ok && self.never() {
                if let Err(clash) = self.index_names().await {
                    warn!(session = &*self.id, clash, "prefixMode never: names clash");
                    line = jsonrpc::error_line(Some(id), jsonrpc::INTERNAL_ERROR, &clash);
                    self.end("tool or prompt names clash between targets (prefixMode: never)");
                }
            }
            let version = mx::member(&line, "result")
                .and_then(|r| mx::member(&line[r.clone()], "protocolVersion").map(|v| (r, v)))
                .and_then(|(r, v)| mx::decode_str(&line[r.start + v.start..r.start + v.end]));
            self.state.borrow_mut().protocol = Some(version.unwrap_or_default());
        }
        line
    }

    /// Under `prefixMode: never`, after `initialize`: lists every child's
    /// tools and prompts, so that calls can be routed by name. A name two
    /// targets serve is an error naming them.
    async fn index_names(self: &Rc<Self>) -> Result<(), String> {
        for kind in [ListKind::Tools, ListKind::Prompts] {
            let method = match kind {
                ListKind::Tools => "tools/list",
                _ => "prompts/list",
            };
            let id = format!("\"ringgate-index-{}\"", kind.key());
            let line = format!(r#"{{"jsonrpc":"2.0","id":{id},"method":"{method}"}}"#);
            let m = Message {
                line,
                kind: Kind::Request {
                    id: id.clone(),
                    method: method.to_string(),
                    progress_token: None,
                    tool: None,
                },
            };
            let mut answers = Vec::new();
            for (t, _) in self.alive() {
                let (tx, rx) = flume::bounded(POST_STREAM_DEPTH);
                self.to_child(t, m.clone(), None, tx);
                let mut last = None;
                while let Ok(ev) = rx.recv_async().await {
                    last = sse::decode(&ev).into_iter().next();
                }
                if let Some(l) = last {
                    answers.push((t, String::from_utf8_lossy(&l).into_owned()));
                }
            }
            let list = mx::answers(&answers);
            let per: Vec<(usize, Vec<String>)> = list
                .iter()
                .map(|a| (a.target, mx::names(kind, a.line)))
                .collect();
            if let Some((name, ts)) = mx::clashes(&per).into_iter().next() {
                let who: Vec<&str> = ts.iter().map(|t| self.children[*t].name.as_str()).collect();
                return Err(format!(
                    "{} {name:?} is served by targets {} (prefixMode never needs unique names)",
                    &kind.key()[..kind.key().len() - 1],
                    who.join(" and ")
                ));
            }
            self.learn(kind, &list);
        }
        Ok(())
    }

    /// Records which target serves each name of a list answer.
    fn learn(&self, kind: ListKind, answers: &[Answer]) {
        let mut st = self.state.borrow_mut();
        for a in answers {
            for n in mx::names(kind, a.line) {
                st.index.entry(n).or_insert(a.target);
            }
        }
    }

    /// A child ended. Returns true when the whole session must end.
    pub fn child_ended(&self, t: usize, reason: &str) -> bool {
        if !self.children[t].alive.replace(false) {
            return self.alive().next().is_none();
        }
        warn!(
            session = &*self.id,
            target = self.children[t].name,
            reason,
            "MCP target ended"
        );
        if !self.fail_open || self.alive().next().is_none() {
            return true;
        }
        self.state.borrow_mut().index.retain(|_, v| *v != t);
        for kind in ["tools", "prompts", "resources"] {
            let line =
                format!(r#"{{"jsonrpc":"2.0","method":"notifications/{kind}/list_changed"}}"#);
            self.to_get_stream(sse::event(line.as_bytes()));
        }
        false
    }

    /// Fails overdue requests of every child; true when the session must end.
    pub fn expire_overdue(&self, now: Instant) -> bool {
        if self.is_ended() {
            return true;
        }
        let mut end = false;
        for (t, c) in self.children.iter().enumerate() {
            if c.alive.get() && c.session.expire_overdue(now) {
                end |= self.child_ended(t, "timed out");
            }
        }
        end
    }

    pub fn end(&self, reason: &str) {
        {
            let mut st = self.state.borrow_mut();
            if st.ended {
                return;
            }
            st.ended = true;
            st.get.clear();
        }
        info!(session = &*self.id, reason, "session ended");
        for c in &self.children {
            c.session.end(reason);
        }
    }

    /// Stops every child (after [`MultiSession::end`]).
    pub async fn stop(&self, grace: Duration) {
        let stops: Vec<_> = self
            .children
            .iter()
            .map(|c| {
                let h = c.session.clone();
                monoio::spawn(async move { h.handle().stop(grace).await })
            })
            .collect();
        for s in stops {
            s.await;
        }
    }
}

/// Relays a child's GET-stream messages to the client's: a server-to-client
/// request gets an id naming its target, a resource URI its target prefix.
async fn relay_get(session: std::rc::Weak<MultiSession>, t: usize, rx: flume::Receiver<Vec<u8>>) {
    while let Ok(ev) = rx.recv_async().await {
        let Some(s) = session.upgrade() else {
            return;
        };
        let Some(line) = sse::decode(&ev).into_iter().next() else {
            continue;
        };
        let text = String::from_utf8_lossy(&line);
        let out = match jsonrpc::peek(&line) {
            Some(Outgoing::Request { .. }) => mx::member(&text, "id").map(|r| {
                let id = mx::expose_request_id(&s.children[t].name, &text[r.clone()]);
                mx::splice(&text, r, &id)
            }),
            Some(Outgoing::Notification { method, .. })
                if method == "notifications/resources/updated" =>
            {
                mx::nested(&text, "params", "uri").map(|r| {
                    let uri = s.naming.expose_uri(t, &text[r.clone()]).into_owned();
                    mx::splice(&text, r, &uri)
                })
            }
            _ => None,
        };
        match out {
            Some(l) => s.to_get_stream(sse::event(l.as_bytes())),
            None => s.to_get_stream(ev),
        }
    }
}
