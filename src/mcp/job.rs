//! What travels between workers for a session (a [`Job`] and its [`Reply`]),
//! the protocol revisions sessions negotiate, and how a session's answer to
//! a job becomes a reply. Below `mcp.rs` and the multiplexed sessions, which
//! both answer jobs.

use std::time::Instant;

use super::authz;
use super::jsonrpc::Message;
use super::session::PostError;

/// Protocol revisions ringgate bridges.
pub const KNOWN_VERSIONS: &[&str] = &["2024-11-05", "2025-03-26", "2025-06-18", "2025-11-25"];
/// What a client that sends no `MCP-Protocol-Version` is assumed to speak.
pub const DEFAULT_VERSION: &str = "2025-03-26";
/// Batches were removed after this revision.
pub const LAST_BATCH_VERSION: &str = "2025-03-26";

/// A request for a session's owner.
pub struct Job {
    pub session: String,
    pub identity: String,
    /// `McpBackend::key` of the route the request came in on.
    pub backend: String,
    pub version_header: Option<String>,
    pub op: Op,
    pub reply: flume::Sender<Reply>,
}

pub enum Op {
    Post {
        messages: Vec<Message>,
        batch: bool,
        /// `mcpAuthorization`, decided where the request came in.
        authz: Option<authz::PostAuthz>,
    },
    Get,
    Delete,
    /// Create a session here (this worker has an idle child); `session` is
    /// empty.
    Initialize {
        messages: Vec<Message>,
    },
    /// When this worker's least recently used idle session was last active.
    OldestIdle,
    /// End this worker's least recently used idle session, and stop its child.
    Evict,
    /// Stop an idle child that a burst left above its pool's `minIdle` share.
    ReleaseSurplus,
}

pub enum Reply {
    /// A plain-text refusal (404 unknown session, 400 version...).
    Status(u16, &'static str),
    /// Notifications and responses only: 202.
    Accepted,
    /// SSE events until the stream ends.
    Stream(flume::Receiver<Vec<u8>>),
    Deleted,
    /// A session created for [`Op::Initialize`]: its id, its first stream.
    Created(String, flume::Receiver<Vec<u8>>),
    OldestIdle(Option<Instant>),
    Evicted(bool),
}

/// The protocol revision a session negotiated; a request whose
/// `MCP-Protocol-Version` names another (or an unknown one) is refused.
fn negotiated(protocol: Option<String>, job: &Job) -> Result<String, Reply> {
    let negotiated = protocol
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| DEFAULT_VERSION.to_string());
    match &job.version_header {
        Some(v) if !KNOWN_VERSIONS.contains(&v.as_str()) || *v != negotiated => Err(Reply::Status(
            400,
            "Bad Request: unsupported MCP-Protocol-Version",
        )),
        _ => Ok(negotiated),
    }
}

/// Batches were removed after [`LAST_BATCH_VERSION`].
fn batch_refused(batch: bool, negotiated: &str) -> Option<Reply> {
    (batch && negotiated > LAST_BATCH_VERSION).then_some(Reply::Status(
        400,
        "Bad Request: batches are not supported by this protocol version",
    ))
}

/// What a session (one child or several) does for the jobs that name it.
pub(crate) trait SessionJobs {
    fn protocol(&self) -> Option<String>;
    fn post(
        &self,
        messages: Vec<Message>,
        authz: Option<&authz::PostAuthz>,
    ) -> Result<Option<flume::Receiver<Vec<u8>>>, PostError>;
    fn open_get(&self) -> Option<flume::Receiver<Vec<u8>>>;
}

/// Serves a POST, GET or DELETE job on `session` (its owner and caller
/// already checked): the version and batch checks, then the operation;
/// `delete` ends the session.
pub(crate) fn serve(session: &impl SessionJobs, job: Job, delete: impl FnOnce()) -> Reply {
    let negotiated = match negotiated(session.protocol(), &job) {
        Ok(v) => v,
        Err(r) => return r,
    };
    match job.op {
        Op::Post {
            messages,
            batch,
            authz,
        } => {
            if let Some(r) = batch_refused(batch, &negotiated) {
                return r;
            }
            post_reply(session.post(messages, authz.as_ref()))
        }
        Op::Get => match session.open_get() {
            Some(rx) => Reply::Stream(rx),
            None => Reply::Status(404, "session not found"),
        },
        Op::Delete => {
            delete();
            Reply::Deleted
        }
        Op::Initialize { .. } | Op::OldestIdle | Op::Evict | Op::ReleaseSurplus => {
            Reply::Status(500, "misrouted job")
        }
    }
}

/// What a session's `post` outcome tells the client.
fn post_reply(r: Result<Option<flume::Receiver<Vec<u8>>>, PostError>) -> Reply {
    match r {
        Ok(Some(rx)) => Reply::Stream(rx),
        Ok(None) => Reply::Accepted,
        Err(PostError::Ended) => Reply::Status(404, "session not found"),
        Err(PostError::DuplicateId) => {
            Reply::Status(400, "Bad Request: request id already in flight")
        }
        Err(PostError::Busy) => Reply::Status(503, "MCP server is not reading its input"),
    }
}
