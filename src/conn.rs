//! One client connection: read a head, read its body, run the pipeline, write
//! the response, repeat while the connection is kept alive. Every wait has a
//! deadline from the config; every refusal closes the connection.

use std::os::fd::AsRawFd;
use std::rc::Rc;
use std::time::{Duration, Instant};

use monoio::buf::{IoBuf, IoBufMut};
use monoio::io::{AsyncReadRent, AsyncWriteRent, AsyncWriteRentExt};
use monoio::net::TcpStream;

use crate::access_log;
use crate::config::{Backend, Limits, Route};
use crate::context::{BindCtx, ConnGuard};
use crate::http::parse::{BodyKind, Head, RequestReader};
use crate::http::response::{serialize, stream_end, stream_piece, Body, Response};
use crate::http::HttpError;
use crate::mcp::jsonrpc;
use crate::pipeline::{self, Admission};
use crate::request::{Handled, PeerAddr, Request};

mod handover;
pub mod parcel;
pub use handover::adopt_loop;
use handover::{Carried, Offer};

/// Smallest free space offered to one read.
const MIN_READ_BYTES: usize = 4096;
/// While lingering, how long one read may wait for the client's next bytes
/// (nginx's `lingering_timeout`); `limits.lingerTimeout` bounds the whole.
const LINGER_IDLE: Duration = Duration::from_secs(2);

enum Read {
    More(Vec<u8>),
    Eof,
    Timeout,
    Failed,
}

/// Reads more bytes after `buf.len()`, growing `buf` as needed.
async fn read_more(stream: &mut TcpStream, mut buf: Vec<u8>, deadline: Instant) -> Read {
    if buf.capacity() - buf.len() < MIN_READ_BYTES {
        buf.reserve(MIN_READ_BYTES);
    }
    let len = buf.len();
    let read = stream.read(buf.slice_mut(len..));
    match monoio::time::timeout_at(deadline.into(), read).await {
        Ok((Ok(0), _)) => Read::Eof,
        Ok((Ok(_), slice)) => Read::More(slice.into_inner()),
        Ok((Err(_), _)) => Read::Failed,
        Err(_) => Read::Timeout,
    }
}

/// Serves one connection until it closes (or moves to another worker).
pub async fn serve(stream: TcpStream, peer: PeerAddr, ctx: Rc<BindCtx>, guard: ConnGuard) {
    serve_from(stream, peer, ctx, guard, Carried::default()).await
}

/// Serves a connection that brings `carried` (a moved one, see [`handover`]).
async fn serve_from(
    mut stream: TcpStream,
    peer: PeerAddr,
    ctx: Rc<BindCtx>,
    _guard: ConnGuard,
    carried: Carried,
) {
    let limits = &ctx.config().limits;
    let mut buf = carried.buf;
    if buf.capacity() == 0 {
        buf = Vec::with_capacity(MIN_READ_BYTES);
    }
    let mut handed_started = carried.started;
    let mut out: Vec<u8> = Vec::with_capacity(OUT_BYTES);
    let mut reader = RequestReader::default();
    let peer_ip = peer.ip().to_string();
    let mut memo = crate::auth::ConnMemo::default();
    // The first request must arrive within the header timeout of the accept;
    // later ones may idle up to the idle timeout before their first byte.
    let mut idle_deadline = Instant::now() + limits.header_read_timeout;
    loop {
        reader.reset();

        // 1. The head, and nothing more.
        let mut deadline = idle_deadline;
        let mut request_started = false;
        loop {
            match reader.poll_head(&buf, limits) {
                Ok(true) => break,
                Ok(false) => {}
                Err(e) => return refuse(stream, out, e, peer, &ctx).await,
            }
            if !request_started && reader.started(&buf) {
                request_started = true;
                deadline = deadline.min(Instant::now() + limits.header_read_timeout);
            }
            let before = buf.len();
            let read = if request_started {
                read_more(&mut stream, buf, deadline).await
            } else {
                // Between requests a drain may close the connection.
                monoio::select! {
                    r = read_more(&mut stream, buf, deadline) => r,
                    _ = ctx.worker.drain.wait() => return,
                }
            };
            buf = match read {
                Read::More(b) => b,
                Read::Eof | Read::Failed => return,
                Read::Timeout if request_started => {
                    return refuse(stream, out, HttpError::REQUEST_TIMEOUT, peer, &ctx).await
                }
                Read::Timeout => return,
            };
            ctx.worker.stats.add_bytes(buf.len() - before, 0);
        }
        let started = handed_started.take().unwrap_or_else(Instant::now);
        let head = reader.head().expect("the head is parsed");
        let (head_len, body_kind) = (head.len, head.body);

        // A request naming another worker's session: the connection moves
        // there, before anything of it is authorized here.
        if let Some(owner) = handover::owner_elsewhere(&ctx, &buf, head) {
            match handover::offer(&stream, &ctx, owner, peer, buf, started).await {
                Offer::Moved | Offer::Lost => return,
                Offer::Stays(b) => buf = b,
            }
        }

        // 2. Route, CORS and extAuthz on the head alone.
        let admission = {
            let req = request(&buf, head, &[], peer, &peer_ip);
            pipeline::admit(&ctx, &req, &mut memo).await
        };
        let admitted = match admission {
            Admission::Admitted(a) => a,
            Admission::Answered(handled) => {
                // The body, if any, is never read: the connection cannot be
                // reused after it, so it closes (gracefully, see `linger`).
                let head = reader.head().expect("the head is parsed");
                let req = request(&buf, head, &[], peer, &peer_ip);
                let reusable = body_kind == BodyKind::Empty;
                match answer(&mut stream, out, &ctx, &req, &handled, reusable, started).await {
                    Some(o) => out = o,
                    None => return,
                }
                if !reusable || !keeps_alive(&ctx, head, &handled.resp) {
                    return linger(stream, limits).await;
                }
                buf.drain(..head_len);
                shrink(&mut buf, &mut out, &mut reader);
                idle_deadline = Instant::now() + limits.idle_timeout;
                continue;
            }
        };

        // 3. The body of an admitted request, within the worker's budget.
        let mut budget = BodyBudget::new(&ctx, buf.len() - head_len);
        let deadline = started + limits.body_read_timeout;
        let head = reader.head().expect("the head is parsed");
        // RFC 9110 section 10.1.1: a client waiting for 100 Continue gets it
        // once we are about to read the body, and only then.
        if head.expect_continue && head.minor_version == 1 && body_kind != BodyKind::Empty {
            out.clear();
            out.extend_from_slice(b"HTTP/1.1 100 Continue\r\n\r\n");
            out = match write(&mut stream, out, limits.write_timeout).await {
                Some(o) => o,
                None => return,
            };
        }
        let consumed = loop {
            let refusal = match reader.poll(&buf, limits) {
                Ok(Some(n)) => break n,
                Ok(None) if budget.over() => body_refusal(BodyRefusal::Budget, admitted.route()),
                Ok(None) => None,
                Err(e) => body_refusal(BodyRefusal::Http(e), admitted.route()),
            };
            if let Some(resp) = refusal {
                let handled = admitted.refuse(resp);
                let head = reader.head().expect("the head is parsed");
                let req = request(&buf, head, &[], peer, &peer_ip);
                let answered = answer(&mut stream, out, &ctx, &req, &handled, false, started)
                    .await
                    .is_some();
                // The partial body is given up before the lingering close,
                // which may last `lingerTimeout`: its bytes leave the budget.
                drop(budget);
                drop(buf);
                if answered {
                    linger(stream, limits).await;
                }
                return;
            }
            // Raw chunk bytes are dropped as they are decoded, so the buffer
            // holds at most one read's worth beyond the head.
            reader.compact(&mut buf);
            let before = buf.len();
            buf = match read_more(&mut stream, buf, deadline).await {
                Read::More(b) => b,
                Read::Eof | Read::Failed => return,
                // The buffer went with the timed-out read: refused as a
                // framing error, like a head that timed out.
                Read::Timeout => {
                    drop(budget);
                    return refuse(stream, out, HttpError::REQUEST_TIMEOUT, peer, &ctx).await;
                }
            };
            let n = buf.len() - before;
            budget.add(n);
            ctx.worker.stats.add_bytes(n, 0);
        };

        // 4. The backend, the response, the access log.
        let head = reader.head().expect("the head is parsed");
        let req = request(&buf, head, reader.body(&buf), peer, &peer_ip);
        let handled = pipeline::respond(&ctx, admitted, &req).await;
        // The body has been handed on (a child's line, a refusal).
        drop(budget);
        let keep_alive = keeps_alive(&ctx, head, &handled.resp);
        match answer(&mut stream, out, &ctx, &req, &handled, true, started).await {
            Some(o) => out = o,
            None => return,
        }
        if !keep_alive {
            return linger(stream, limits).await;
        }
        buf.drain(..consumed);
        shrink(&mut buf, &mut out, &mut reader);
        idle_deadline = Instant::now() + limits.idle_timeout;
    }
}

fn request<'a>(
    buf: &'a [u8],
    head: &'a Head,
    body: &'a [u8],
    peer: PeerAddr,
    peer_ip: &'a str,
) -> Request<'a> {
    Request {
        buf,
        head,
        body,
        peer,
        peer_ip,
    }
}

/// Whether the connection may carry another request after this response.
fn keeps_alive(ctx: &BindCtx, head: &Head, resp: &Response) -> bool {
    // A stream to an HTTP/1.0 client ends with the connection.
    let stream_ends_conn = head.minor_version == 0 && resp.body.is_stream();
    head.keep_alive && !resp.close && !stream_ends_conn && !ctx.worker.drain.is_on()
}

/// Writes the response to `req`, counts it and logs it. `reusable`: the
/// connection may stay open afterwards (else the response says close).
/// Returns the write buffer, or `None` when the connection failed.
async fn answer(
    stream: &mut TcpStream,
    mut out: Vec<u8>,
    ctx: &BindCtx,
    req: &Request<'_>,
    handled: &Handled<'_>,
    reusable: bool,
    started: Instant,
) -> Option<Vec<u8>> {
    let limits = &ctx.config().limits;
    let resp = &handled.resp;
    let http10 = req.head.minor_version == 0;
    let keep_alive = reusable && keeps_alive(ctx, req.head, resp);
    out.clear();
    let head_only = req.method() == "HEAD";
    serialize(&mut out, resp, keep_alive, http10, head_only);
    let (written, sent) = match (&resp.body, head_only) {
        // The head goes out with the stream's first piece.
        (Body::Stream(rx), false) => {
            write_stream(stream, out, rx, http10, limits.write_timeout).await
        }
        _ => {
            let n = out.len();
            (write(stream, out, limits.write_timeout).await, n)
        }
    };
    let took = started.elapsed();
    ctx.worker.stats.add_bytes(0, sent);
    let route = handled.route.map_or("", |r| r.name.as_str());
    ctx.worker.stats.request(route, resp.status, took);
    access_log::request(ctx, req, handled, started, took);
    written
}

/// Buffers above this many bytes are given back after a request, so one
/// large request or answer does not pin its memory on a kept-alive
/// connection.
const KEEP_BUFFER_BYTES: usize = 64 * 1024;
/// The write buffer a connection starts with.
const OUT_BYTES: usize = 1024;

fn shrink(buf: &mut Vec<u8>, out: &mut Vec<u8>, reader: &mut RequestReader) {
    if buf.capacity() > KEEP_BUFFER_BYTES && buf.len() <= KEEP_BUFFER_BYTES / 2 {
        let mut small = Vec::with_capacity(buf.len().max(MIN_READ_BYTES));
        small.extend_from_slice(buf);
        *buf = small;
    }
    if out.capacity() > KEEP_BUFFER_BYTES {
        *out = Vec::with_capacity(OUT_BYTES);
    }
    reader.shrink(KEEP_BUFFER_BYTES);
}

/// Why an admitted request's body is not read to its end.
enum BodyRefusal {
    Http(HttpError),
    /// The worker holds `maxBodyBytesInFlight` already.
    Budget,
}

/// The answer to a body that cannot be read: the framing error, or 503 when
/// the worker has no room for it. MCP clients get a JSON-RPC error body
/// they can show. Always closes the connection.
fn body_refusal(why: BodyRefusal, route: Option<&Route>) -> Option<Response> {
    let (status, text) = match why {
        BodyRefusal::Http(e) => (e.status, e.reason),
        BodyRefusal::Budget => (503, "too many request bytes in flight; retry later"),
    };
    let mut resp = if route.is_some_and(|r| matches!(r.backend, Some(Backend::Mcp(_)))) {
        let line = jsonrpc::error_line(None, jsonrpc::INVALID_REQUEST, text);
        Response::new(status)
            .header("content-type", "application/json")
            .body(Body::Bytes(line.into_bytes()))
    } else {
        Response::new(status)
            .header("content-type", "text/plain")
            .body(Body::Static(text.as_bytes()))
    };
    if status == 503 {
        resp = resp.header("retry-after", "1");
    }
    resp.close = true;
    Some(resp)
}

/// A request body's share of the worker's `maxBodyBytesInFlight`, given
/// back when dropped.
struct BodyBudget<'a> {
    ctx: &'a BindCtx,
    held: u64,
}

impl<'a> BodyBudget<'a> {
    fn new(ctx: &'a BindCtx, already: usize) -> Self {
        let mut b = BodyBudget { ctx, held: 0 };
        b.add(already);
        b
    }
    fn add(&mut self, n: usize) {
        let w = &self.ctx.worker;
        w.body_bytes.set(w.body_bytes.get() + n as u64);
        self.held += n as u64;
    }
    /// True when this worker's bodies together went past the budget.
    fn over(&self) -> bool {
        self.ctx.worker.body_bytes.get() > self.ctx.config().limits.max_body_bytes_in_flight
    }
}

impl Drop for BodyBudget<'_> {
    fn drop(&mut self) {
        let w = &self.ctx.worker;
        w.body_bytes.set(w.body_bytes.get() - self.held);
    }
}

/// How long a stream may stay silent before a keep-alive comment is sent;
/// the write also finds clients that went away.
const STREAM_KEEPALIVE: Duration = Duration::from_secs(15);
/// After a client's FIN and a probe, how long its reset may take to come
/// back (a round trip) before the client counts as still reading.
const PROBE_WAIT: Duration = Duration::from_secs(1);
/// A write gathers queued pieces up to about this many bytes, so a slow
/// reader of many large events does not make one huge buffer.
const MAX_GATHER_BYTES: usize = 256 * 1024;
/// How long a stream's head waits for the first piece, so that a quick
/// answer (most MCP calls) leaves in one write: head, event and end.
const HEAD_HOLD: Duration = Duration::from_millis(5);

/// Writes a response head (in `out`) and its streamed body until the body's
/// senders are gone; returns the buffer (unless the connection failed) and
/// the bytes written. A client that closes its end while the stream waits
/// for its next event is noticed at once (or, across a network, a round trip
/// after a probe): the stream's receiver is dropped, which its sender (an
/// MCP session) sees. A client that only shut its sending half after the
/// request is still served.
async fn write_stream(
    stream: &mut TcpStream,
    mut out: Vec<u8>,
    rx: &flume::Receiver<Vec<u8>>,
    http10: bool,
    timeout: Duration,
) -> (Option<Vec<u8>>, usize) {
    let mut sent = 0;
    let mut wait = HEAD_HOLD;
    // Watch the client only in long waits: a quick answer costs nothing.
    let mut watch = false;
    // When to look again for the reset a closed client answers a probe with.
    let mut probe_due: Option<Instant> = None;
    loop {
        let until = probe_due.map_or(wait, |t| {
            wait.min(t.saturating_duration_since(Instant::now()))
        });
        let next = if watch {
            monoio::select! {
                r = monoio::time::timeout(until, rx.recv_async()) => Some(r),
                _ = stream.readable(false) => None,
            }
        } else {
            Some(monoio::time::timeout(until, rx.recv_async()).await)
        };
        let Some(next) = next else {
            match peer_state(stream) {
                Peer::Gone => return (None, sent),
                // Bytes of a next request: they wait in the kernel.
                Peer::Sent => watch = false,
                Peer::Quiet => {}
                // The client closed its end, or only its sending half (it
                // may still read): a probe tells them apart, as a closed
                // socket answers it with a reset.
                Peer::Eof => {
                    watch = false;
                    out.clear();
                    stream_piece(&mut out, crate::mcp::sse::KEEPALIVE, http10);
                    sent += out.len();
                    out = match write(stream, out, timeout).await {
                        Some(mut o) => {
                            o.clear();
                            o
                        }
                        None => return (None, sent),
                    };
                    if reset_seen(stream) {
                        return (None, sent);
                    }
                    probe_due = Some(Instant::now() + PROBE_WAIT);
                }
            }
            continue;
        };
        if next.is_err() && probe_due.is_some_and(|t| Instant::now() >= t) {
            probe_due = None;
            if reset_seen(stream) {
                return (None, sent);
            }
            continue;
        }
        let end = match next {
            Ok(Ok(piece)) => {
                stream_piece(&mut out, &piece, http10);
                // Send whatever else is already waiting in the same write,
                // and the end too when the last sender is gone.
                loop {
                    if out.len() >= MAX_GATHER_BYTES {
                        break false;
                    }
                    match rx.try_recv() {
                        Ok(piece) => stream_piece(&mut out, &piece, http10),
                        Err(flume::TryRecvError::Empty) => break false,
                        Err(flume::TryRecvError::Disconnected) => {
                            stream_end(&mut out, http10);
                            break true;
                        }
                    }
                }
            }
            Ok(Err(_)) => {
                stream_end(&mut out, http10);
                true
            }
            // Silent past the hold: the head alone, so the client sees the
            // stream open; later silences get a keep-alive comment.
            Err(_) if wait == HEAD_HOLD => false,
            Err(_) => {
                stream_piece(&mut out, crate::mcp::sse::KEEPALIVE, http10);
                false
            }
        };
        if wait == HEAD_HOLD {
            wait = STREAM_KEEPALIVE;
            watch = true;
        }
        sent += out.len();
        match write(stream, out, timeout).await {
            Some(mut o) if !end => {
                o.clear();
                out = o;
            }
            other => return (other, sent),
        }
    }
}

enum Peer {
    /// Reset the connection.
    Gone,
    /// Sent its FIN: closed, or only shut its sending half.
    Eof,
    /// Sent bytes (a pipelined request), still there to read.
    Sent,
    /// Nothing to read after all.
    Quiet,
}

/// `TCP_CLOSE` of the kernel's TCP states (linux/tcp_states.h).
const TCP_CLOSE: u8 = 7;

/// Whether the client answered with a reset (a probe sent to a socket it
/// closed). After its FIN a read reports only the end of the stream, never
/// the reset, so this looks at the connection's state.
fn reset_seen(stream: &TcpStream) -> bool {
    // SAFETY: tcp_info is plain data; getsockopt writes at most `len` bytes
    // of it for a valid socket fd owned by `stream`.
    unsafe {
        let mut info: libc::tcp_info = std::mem::zeroed();
        let mut len = std::mem::size_of::<libc::tcp_info>() as libc::socklen_t;
        let rc = libc::getsockopt(
            stream.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            (&mut info as *mut libc::tcp_info).cast(),
            &mut len,
        );
        rc != 0 || info.tcpi_state == TCP_CLOSE
    }
}

/// Looks at what made the socket readable without taking any byte.
fn peer_state(stream: &TcpStream) -> Peer {
    let mut probe = [0u8; 1];
    // SAFETY: a valid socket fd owned by `stream`, and a one-byte buffer.
    let n = unsafe {
        libc::recv(
            stream.as_raw_fd(),
            probe.as_mut_ptr().cast(),
            1,
            libc::MSG_PEEK | libc::MSG_DONTWAIT,
        )
    };
    match n {
        0 => Peer::Eof,
        n if n > 0 => Peer::Sent,
        _ => match std::io::Error::last_os_error().kind() {
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::Interrupted => Peer::Quiet,
            _ => Peer::Gone,
        },
    }
}

/// Writes all of `out`. `timeout` bounds each wait for the kernel to take
/// more bytes, not the whole write (nginx's `send_timeout`): a client that
/// reads a large answer slowly but steadily is served to the end, one that
/// stops reading is cut.
async fn write(stream: &mut TcpStream, out: Vec<u8>, timeout: Duration) -> Option<Vec<u8>> {
    let mut done = 0;
    let mut out = out;
    while done < out.len() {
        let slice = out.slice(done..);
        match monoio::time::timeout(timeout, stream.write(slice)).await {
            Ok((Ok(0), _)) | Ok((Err(_), _)) => return None,
            Ok((Ok(n), slice)) => {
                done += n;
                out = slice.into_inner();
            }
            Err(_) => {
                // A client that stopped reading: close with a reset, so the
                // kernel drops what is still queued for it instead of keeping
                // it (megabytes) until the client reads or goes away.
                reset_on_close(stream);
                return None;
            }
        }
    }
    Some(out)
}
fn reset_on_close(stream: &TcpStream) {
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: a valid socket fd owned by `stream`, and a linger struct of
    // the size given.
    unsafe {
        libc::setsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&linger as *const libc::linger).cast(),
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        );
    }
}

/// Answers a request refused before routing, logs it, and closes.
async fn refuse(
    mut stream: TcpStream,
    mut out: Vec<u8>,
    e: HttpError,
    peer: PeerAddr,
    ctx: &BindCtx,
) {
    let resp = Response::error(e);
    out.clear();
    serialize(&mut out, &resp, false, false, false);
    ctx.worker.stats.refusal(resp.status);
    access_log::refused(ctx, peer, &resp);
    let limits = &ctx.config().limits;
    if write(&mut stream, out, limits.write_timeout)
        .await
        .is_some()
    {
        linger(stream, limits).await;
    }
}

/// Half-closes, then discards what the client still sends (an upload we
/// refused, say) for up to `lingerTimeout` and `lingerMaxBytes`, as nginx's
/// lingering close does: closing with unread bytes would send a reset that
/// can destroy our response before the client reads it.
async fn linger(mut stream: TcpStream, limits: &Limits) {
    let _ = stream.shutdown().await;
    let until = Instant::now() + limits.linger_timeout;
    let mut buf = Vec::with_capacity(16 * 1024);
    let mut total = 0u64;
    while total < limits.linger_max_bytes {
        let deadline = until.min(Instant::now() + LINGER_IDLE);
        match monoio::time::timeout_at(deadline.into(), stream.read(buf)).await {
            Ok((Ok(n), b)) if n > 0 => {
                total += n as u64;
                buf = b;
                buf.clear();
            }
            _ => break,
        }
    }
}

/// Tells a client over the per-worker connection limit to come back later.
pub async fn overloaded(mut stream: TcpStream) {
    let mut out = Vec::with_capacity(256);
    let resp = Response::error(HttpError::OVERLOADED).header("retry-after", "1");
    serialize(&mut out, &resp, false, false, false);
    let _ = monoio::time::timeout(Duration::from_secs(1), stream.write_all(out)).await;
    let _ = stream.shutdown().await;
}
