//! One client connection: read a head, read its body, run the pipeline, write
//! the response, repeat while the connection is kept alive. Every wait has a
//! deadline from the config; every refusal closes the connection.

use std::rc::Rc;
use std::time::{Duration, Instant};

use monoio::buf::IoBufMut;
use monoio::io::{AsyncReadRent, AsyncWriteRent, AsyncWriteRentExt};
use monoio::net::TcpStream;

use crate::access_log;
use crate::http::chunked::ChunkedDecoder;
use crate::http::parse::{BodyKind, Head, HeadParser};
use crate::http::response::{serialize, stream_end, stream_piece, Body, Response};
use crate::http::HttpError;
use crate::pipeline::{self, Request};
use crate::worker::{BindCtx, ConnGuard, PeerAddr};

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
    let mut parser = HeadParser::default();
    let mut head = Head::default();
    let mut chunked_body = Vec::new();
    let peer_ip = peer.ip().to_string();
    // The first request must arrive within the header timeout of the accept;
    // later ones may idle up to the idle timeout before their first byte.
    let mut idle_deadline = Instant::now() + limits.header_read_timeout;
    loop {
        parser.reset();
        let mut deadline = idle_deadline;
        let mut request_started = false;
        let started = loop {
            match parser.poll(&buf, limits, &mut head) {
                Ok(true) => break Instant::now(),
                Ok(false) => {}
                Err(e) => return refuse(stream, out, e, peer, &ctx).await,
            }
            if !request_started && parser.started(&buf) {
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
        };

        // The body, read whole before the pipeline runs so that a pipelined
        // request behind it is found whatever the route answers.
        let body_deadline = Instant::now() + limits.body_read_timeout;
        let (body_range, consumed) = match head.body {
            BodyKind::Empty => (head.len..head.len, head.len),
            BodyKind::Length(n) => {
                let end = head.len + n as usize;
                if buf.len() < end {
                    if head.expect_continue && head.minor_version == 1 {
                        out.clear();
                        out.extend_from_slice(b"HTTP/1.1 100 Continue\r\n\r\n");
                        out = match write(&mut stream, out, limits.write_timeout).await {
                            Some(o) => o,
                            None => return,
                        };
                    }
                    buf.reserve(end - buf.len());
                }
                while buf.len() < end {
                    buf = match read_more(&mut stream, buf, body_deadline).await {
                        Read::More(b) => b,
                        Read::Timeout => {
                            return refuse(stream, out, HttpError::REQUEST_TIMEOUT, peer, &ctx)
                                .await
                        }
                        Read::Eof | Read::Failed => return,
                    };
                }
                (head.len..end, end)
            }
            BodyKind::Chunked => {
                chunked_body.clear();
                let mut dec = ChunkedDecoder::new(limits.max_body_bytes, limits.max_head_bytes);
                let mut continued = false;
                loop {
                    match dec.decode(&buf[head.len..], &mut chunked_body) {
                        // Raw chunk bytes are dropped as they are decoded, so the
                        // buffer holds at most one read's worth beyond the head.
                        Ok(used) => drop(buf.drain(head.len..head.len + used)),
                        Err(e) => return refuse(stream, out, e.into(), peer, &ctx).await,
                    }
                    if dec.is_done() {
                        break;
                    }
                    if head.expect_continue && head.minor_version == 1 && !continued {
                        continued = true;
                        out.clear();
                        out.extend_from_slice(b"HTTP/1.1 100 Continue\r\n\r\n");
                        out = match write(&mut stream, out, limits.write_timeout).await {
                            Some(o) => o,
                            None => return,
                        };
                    }
                    buf = match read_more(&mut stream, buf, body_deadline).await {
                        Read::More(b) => b,
                        Read::Timeout => {
                            return refuse(stream, out, HttpError::REQUEST_TIMEOUT, peer, &ctx)
                                .await
                        }
                        Read::Eof | Read::Failed => return,
                    };
                }
                (0..0, head.len)
            }
        };
        let body: &[u8] = match head.body {
            BodyKind::Chunked => &chunked_body,
            _ => &buf[body_range],
        };

        let req = Request {
            buf: &buf,
            head: &head,
            body,
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
        let mut sent = out.len();
        let mut written = write(&mut stream, out, limits.write_timeout).await;
        if let (Body::Stream(rx), false) = (&resp.body, head_only) {
            if let Some(o) = written {
                let (w, n) = write_stream(&mut stream, o, rx, http10, limits.write_timeout).await;
                written = w;
                sent += n;
            }
        }
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

/// Writes a streamed body until its senders are gone; returns the buffer
/// (unless the connection failed) and the bytes written.
async fn write_stream(
    stream: &mut TcpStream,
    mut out: Vec<u8>,
    rx: &flume::Receiver<Vec<u8>>,
    http10: bool,
    timeout: Duration,
) -> (Option<Vec<u8>>, usize) {
    let mut sent = 0;
    loop {
        out.clear();
        let end = match monoio::time::timeout(STREAM_KEEPALIVE, rx.recv_async()).await {
            Ok(Ok(piece)) => {
                stream_piece(&mut out, &piece, http10);
                // Send whatever else is already waiting in the same write.
                while let Ok(piece) = rx.try_recv() {
                    stream_piece(&mut out, &piece, http10);
                }
                false
            }
            Ok(Err(_)) => {
                stream_end(&mut out, http10);
                true
            }
            Err(_) => {
                stream_piece(&mut out, crate::mcp::sse::KEEPALIVE, http10);
                false
            }
        };
        sent += out.len();
        match write(stream, out, timeout).await {
            Some(o) if !end => out = o,
            other => return (other, sent),
        }
    }
}

async fn write(stream: &mut TcpStream, out: Vec<u8>, timeout: Duration) -> Option<Vec<u8>> {
    match monoio::time::timeout(timeout, stream.write_all(out)).await {
        Ok((Ok(_), out)) => Some(out),
        _ => None,
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
