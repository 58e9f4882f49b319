//! One client connection: read a head, read its body, run the pipeline, write
//! the response, repeat while the connection is kept alive. Every wait has a
//! deadline from the config; every refusal closes the connection.

use std::os::fd::AsRawFd;
use std::rc::Rc;
use std::time::{Duration, Instant};

use monoio::buf::IoBufMut;
use monoio::io::{AsyncReadRent, AsyncWriteRent, AsyncWriteRentExt};
use monoio::net::TcpStream;

use crate::access_log;
use crate::context::{BindCtx, ConnGuard};
use crate::http::parse::RequestReader;
use crate::http::response::{serialize, stream_end, stream_piece, Body, Response};
use crate::http::HttpError;
use crate::pipeline;
use crate::request::{PeerAddr, Request};

/// Smallest free space offered to one read.
const MIN_READ_BYTES: usize = 4096;
/// After refusing a request, read and discard at most this much, for at most
/// `LINGER_TIMEOUT`, so the client sees our answer rather than a reset.
const LINGER_BYTES: usize = 64 * 1024;
const LINGER_TIMEOUT: Duration = Duration::from_millis(500);

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

/// Serves one connection until it closes.
pub async fn serve(mut stream: TcpStream, peer: PeerAddr, ctx: Rc<BindCtx>, _guard: ConnGuard) {
    let limits = &ctx.config().limits;
    let mut buf: Vec<u8> = Vec::with_capacity(MIN_READ_BYTES);
    let mut out: Vec<u8> = Vec::with_capacity(1024);
    let mut reader = RequestReader::default();
    let peer_ip = peer.ip().to_string();
    // The first request must arrive within the header timeout of the accept;
    // later ones may idle up to the idle timeout before their first byte.
    let mut idle_deadline = Instant::now() + limits.header_read_timeout;
    loop {
        reader.reset();
        // The head's deadline; the body gets its own once the head is read.
        let mut deadline = idle_deadline;
        let mut request_started = false;
        let mut head_read: Option<Instant> = None;
        let consumed = loop {
            match reader.poll(&buf, limits) {
                Ok(Some(n)) => break n,
                Ok(None) => {}
                Err(e) => return refuse(stream, out, e, peer, &ctx).await,
            }
            if !request_started && reader.started(&buf) {
                request_started = true;
                deadline = deadline.min(Instant::now() + limits.header_read_timeout);
            }
            if let (None, Some(head)) = (head_read, reader.head()) {
                let now = Instant::now();
                head_read = Some(now);
                deadline = now + limits.body_read_timeout;
                // RFC 9110 section 10.1.1: a client waiting for 100 Continue
                // gets it once we are about to read the body.
                if head.expect_continue && head.minor_version == 1 {
                    out.clear();
                    out.extend_from_slice(b"HTTP/1.1 100 Continue\r\n\r\n");
                    out = match write(&mut stream, out, limits.write_timeout).await {
                        Some(o) => o,
                        None => return,
                    };
                }
            }
            // Raw chunk bytes are dropped as they are decoded, so the buffer
            // holds at most one read's worth beyond the head.
            reader.compact(&mut buf);
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
        };
        let head = reader.head().expect("a complete request has a head");
        let started = head_read.unwrap_or_else(Instant::now);

        let req = Request {
            buf: &buf,
            head,
            body: reader.body(&buf),
            peer,
            peer_ip: &peer_ip,
        };
        let handled = pipeline::handle(&ctx, &req).await;
        let resp = &handled.resp;
        let http10 = head.minor_version == 0;
        // A stream to an HTTP/1.0 client ends with the connection.
        let stream_ends_conn = http10 && resp.body.is_stream();
        let keep_alive =
            head.keep_alive && !resp.close && !stream_ends_conn && !ctx.worker.drain.is_on();
        out.clear();
        let head_only = req.method() == "HEAD";
        serialize(
            &mut out,
            resp,
            keep_alive,
            head.minor_version == 0,
            head_only,
        );
        let (written, sent) = match (&resp.body, head_only) {
            // The head goes out with the stream's first piece.
            (Body::Stream(rx), false) => {
                write_stream(&mut stream, out, rx, http10, limits.write_timeout).await
            }
            _ => {
                let n = out.len();
                (write(&mut stream, out, limits.write_timeout).await, n)
            }
        };
        let took = started.elapsed();
        ctx.worker.stats.add_bytes(0, sent);
        let route = handled.route.map_or("", |r| r.name.as_str());
        ctx.worker.stats.request(route, resp.status, took);
        access_log::request(&ctx, &req, &handled, took);
        out = match written {
            Some(o) => o,
            None => return,
        };
        if !keep_alive {
            return linger(stream).await;
        }
        buf.drain(..consumed);
        idle_deadline = Instant::now() + limits.idle_timeout;
    }
}

/// How long a stream may stay silent before a keep-alive comment is sent;
/// the write also finds clients that went away.
const STREAM_KEEPALIVE: Duration = Duration::from_secs(15);
/// A write gathers queued pieces up to about this many bytes, so a slow
/// reader of many large events does not make one huge buffer.
const MAX_GATHER_BYTES: usize = 256 * 1024;
/// How long a stream's head waits for the first piece, so that a quick
/// answer (most MCP calls) leaves in one write: head, event and end.
const HEAD_HOLD: Duration = Duration::from_millis(5);

/// Writes a response head (in `out`) and its streamed body until the body's
/// senders are gone; returns the buffer (unless the connection failed) and
/// the bytes written.
async fn write_stream(
    stream: &mut TcpStream,
    mut out: Vec<u8>,
    rx: &flume::Receiver<Vec<u8>>,
    http10: bool,
    timeout: Duration,
) -> (Option<Vec<u8>>, usize) {
    let mut sent = 0;
    let mut wait = HEAD_HOLD;
    loop {
        let end = match monoio::time::timeout(wait, rx.recv_async()).await {
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
        wait = STREAM_KEEPALIVE;
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

async fn write(stream: &mut TcpStream, out: Vec<u8>, timeout: Duration) -> Option<Vec<u8>> {
    match monoio::time::timeout(timeout, stream.write_all(out)).await {
        Ok((Ok(_), out)) => Some(out),
        Ok((Err(_), _)) => None,
        Err(_) => {
            // A client that stopped reading: close with a reset, so the
            // kernel drops what is still queued for it instead of keeping
            // it (megabytes) until the client reads or goes away.
            reset_on_close(stream);
            None
        }
    }
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
    if write(&mut stream, out, ctx.config().limits.write_timeout)
        .await
        .is_some()
    {
        linger(stream).await;
    }
}

/// Half-closes, then discards what the client still sends for a moment, so
/// that unread request bytes do not turn our close into a reset that could
/// destroy the response before the client reads it.
async fn linger(mut stream: TcpStream) {
    let _ = stream.shutdown().await;
    let deadline = Instant::now() + LINGER_TIMEOUT;
    let mut buf = Vec::with_capacity(MIN_READ_BYTES);
    let mut total = 0;
    while total < LINGER_BYTES {
        match monoio::time::timeout_at(deadline.into(), stream.read(buf)).await {
            Ok((Ok(n), b)) if n > 0 => {
                total += n;
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
