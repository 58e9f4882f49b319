//! What travels when a connection moves to the worker owning its MCP
//! session ([`super::handover`]): apart from the code that moves it, so
//! that the workers' hub, which carries it, needs nothing of the
//! connection loop.

use std::sync::Arc;
use std::time::Instant;

use crate::config::Config;
use crate::request::PeerAddr;

/// Hand-overs a worker's inbox holds; a full one keeps connections where
/// they are.
pub const DEPTH: usize = 1024;

/// A connection on its way to another worker.
pub struct Handover {
    /// A duplicate of the connection's socket.
    pub(super) stream: std::net::TcpStream,
    /// Every byte read and not yet consumed: the head, any of its body,
    /// pipelined requests.
    pub(super) buf: Vec<u8>,
    pub(super) peer: PeerAddr,
    /// When the head was complete (the body's deadline, the duration).
    pub(super) started: Instant,
    /// The config the connection was accepted under, and its bind there.
    pub(super) config: Arc<Config>,
    pub(super) bind: usize,
    pub(super) answer: flume::Sender<Answer>,
}

/// The owner's answer to a [`Handover`].
pub(super) enum Answer {
    Adopted,
    /// The bytes, back.
    Declined(Vec<u8>),
}
