//! Moving a connection to the worker that owns its MCP session.
//!
//! A session lives on one worker (its id names it, see `mcp::owner_of`), but
//! the kernel puts a connection on a worker by a hash of its addresses. A
//! request naming another worker's session would be handed over as a `Job`
//! and every event of its answer would cross threads back; a kept-alive
//! client would pay that on every call. So once a request head names such a
//! session, before anything is authorized, the connection itself moves: a
//! duplicate of its socket and every byte read so far go to the owner, which
//! serves it with the same loop from that request on (re-parsing the head,
//! then routing, CORS and extAuthz under its own state).
//!
//! The owner decides, on its own thread, with its own state: it declines
//! while draining, at `maxConnectionsPerWorker`, or when its config is not
//! the one the connection was accepted under (a reload in between). Then the
//! bytes come back and the connection stays, served through the `Job` path.
//!
//! The accepting worker keeps its own descriptor until the owner answered,
//! and never touches the socket again once it adopted the duplicate: the
//! socket is never used by two workers at once, and nothing is in flight on
//! it when it leaves (the head loop has no read pending). A duplicate rather
//! than `into_raw_fd` because a readiness poll of an earlier stream answer
//! may still be being cancelled in the ring, holding the descriptor; closing
//! the original also takes it out of the accepting worker's epoll set.

use std::os::fd::{AsRawFd, FromRawFd};
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use monoio::net::TcpStream;

use crate::context::{BindCtx, ConnGuard, Worker};
use crate::http::parse::{trim_ows, Head};
use crate::request::PeerAddr;

use super::parcel::{Answer, Handover};

/// How long the accepting worker waits for the owner's answer: a safety net
/// for an owner that stopped running, never reached otherwise (it answers
/// as soon as its runtime reads the inbox).
const ANSWER_BOUND: Duration = Duration::from_secs(10);

/// What the offer of a connection came to, on the accepting worker.
pub(super) enum Offer {
    /// The owner serves it now: let go without a word.
    Moved,
    /// It stays here, with its bytes.
    Stays(Vec<u8>),
    /// The owner did not answer; its bytes are gone with it: close.
    Lost,
}

/// What a connection brings to the loop that serves it: bytes read and not
/// consumed, and, for a moved one, when its first head was complete.
#[derive(Default)]
pub(super) struct Carried {
    pub buf: Vec<u8>,
    pub started: Option<Instant>,
}

/// The worker owning the session the head names, when that is another live
/// worker of this process and this one is not draining.
pub(super) fn owner_elsewhere(ctx: &BindCtx, buf: &[u8], head: &Head) -> Option<usize> {
    let w = &ctx.worker;
    if w.drain.is_on() {
        return None;
    }
    let id = std::str::from_utf8(trim_ows(head.header(buf, "mcp-session-id")?)).ok()?;
    let owner = crate::mcp::owner_of(id)?;
    (owner != w.id.0 && owner < w.mcp.hub().workers()).then_some(owner)
}

/// Offers the connection to `owner` and waits for its answer. `stream`
/// stays untouched here whatever the answer; after `Moved` or `Lost` the
/// caller drops it (closing only this worker's descriptor).
pub(super) async fn offer(
    stream: &TcpStream,
    ctx: &BindCtx,
    owner: usize,
    peer: PeerAddr,
    buf: Vec<u8>,
    started: Instant,
) -> Offer {
    // SAFETY: duplicating a valid socket fd owned by `stream`; the new fd is
    // owned by the std stream made from it and closed when that drops.
    let dup = unsafe { libc::fcntl(stream.as_raw_fd(), libc::F_DUPFD_CLOEXEC, 0) };
    if dup < 0 {
        return Offer::Stays(buf);
    }
    // SAFETY: `dup` is a new fd that nothing else owns.
    let dup = unsafe { std::net::TcpStream::from_raw_fd(dup) };
    let (tx, rx) = flume::bounded(1);
    let h = Handover {
        stream: dup,
        buf,
        peer,
        started,
        config: ctx.gen.config.clone(),
        bind: ctx.bind,
        answer: tx,
    };
    if let Err(h) = ctx.worker.mcp.hub().hand_over(owner, h) {
        return Offer::Stays(h.buf);
    }
    match monoio::time::timeout(ANSWER_BOUND, rx.recv_async()).await {
        Ok(Ok(Answer::Adopted)) => Offer::Moved,
        Ok(Ok(Answer::Declined(buf))) => Offer::Stays(buf),
        _ => Offer::Lost,
    }
}

/// Takes the connections other workers hand to this one.
pub async fn adopt_loop(worker: Rc<Worker>, inbox: flume::Receiver<Handover>) {
    while let Ok(h) = inbox.recv_async().await {
        adopt(&worker, h);
    }
}

fn adopt(worker: &Rc<Worker>, h: Handover) {
    let gen = worker.generation.borrow().clone();
    let fits = !worker.drain.is_on()
        && worker.connections.get() < gen.config.limits.max_connections_per_worker
        && Arc::ptr_eq(&gen.config, &h.config);
    let stream = if fits {
        TcpStream::from_std(h.stream).ok()
    } else {
        None
    };
    let Some(stream) = stream else {
        worker.stats.moved(false);
        let _ = h.answer.send(Answer::Declined(h.buf));
        return;
    };
    worker.stats.moved(true);
    let guard = ConnGuard::new(worker.clone());
    let ctx = Rc::new(BindCtx {
        worker: worker.clone(),
        gen,
        bind: h.bind,
    });
    // Should the sender have given up waiting, it closed only its own
    // descriptor: the connection is served here all the same.
    let _ = h.answer.send(Answer::Adopted);
    let carried = Carried {
        buf: h.buf,
        started: Some(h.started),
    };
    monoio::spawn(super::serve_from(stream, h.peer, ctx, guard, carried));
}
