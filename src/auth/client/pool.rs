//! Connections to the service: connect, the idle pool, and one exchange
//! (write the request, read one answer) on a connection.

use std::io;
use std::os::fd::AsRawFd;
use std::rc::Rc;
use std::time::Instant;

use monoio::io::{AsyncReadRent, AsyncWriteRentExt};
use monoio::net::{TcpStream, UnixStream};

use super::answer::{AnswerParser, Progress};
use super::{AuthzClient, CheckResponse, ClientError, Failure, Target};

const READ_BUF_BYTES: usize = 16 * 1024;

enum Stream {
    Unix(UnixStream),
    Tcp(TcpStream),
}

impl Stream {
    /// True when nothing is readable and the peer has not hung up: the state
    /// a connection must be in between an answer and the next request.
    fn is_quiet(&self) -> bool {
        let fd = match self {
            Stream::Unix(s) => s.as_raw_fd(),
            Stream::Tcp(s) => s.as_raw_fd(),
        };
        let mut p = libc::pollfd {
            fd,
            events: libc::POLLIN | libc::POLLRDHUP,
            revents: 0,
        };
        // SAFETY: one valid pollfd, zero timeout; the fd is owned by `self`.
        let n = unsafe { libc::poll(&mut p, 1, 0) };
        n == 0
    }

    async fn read(&mut self, buf: Vec<u8>) -> (io::Result<usize>, Vec<u8>) {
        match self {
            Stream::Unix(s) => s.read(buf).await,
            Stream::Tcp(s) => s.read(buf).await,
        }
    }

    async fn write_all(&mut self, buf: Vec<u8>) -> (io::Result<usize>, Vec<u8>) {
        match self {
            Stream::Unix(s) => s.write_all(buf).await,
            Stream::Tcp(s) => s.write_all(buf).await,
        }
    }
}

pub(super) struct Conn {
    stream: Stream,
    rbuf: Vec<u8>,
}

pub(super) struct IdleConn {
    conn: Conn,
    since: Instant,
}

impl AuthzClient {
    pub(super) fn checkout(&self) -> Option<Conn> {
        let mut idle = self.idle.borrow_mut();
        // Most recently used first: the least likely to have been closed.
        while let Some(c) = idle.pop() {
            if c.since.elapsed() >= self.cfg.idle_timeout {
                continue;
            }
            if c.conn.stream.is_quiet() {
                return Some(c.conn);
            }
            self.bump(|s| s.unclean_idle += 1);
        }
        None
    }

    fn checkin(&self, conn: Conn) {
        let mut idle = self.idle.borrow_mut();
        if idle.len() < self.cfg.max_idle_connections {
            idle.push(IdleConn {
                conn,
                since: Instant::now(),
            });
        }
    }

    pub(super) async fn connect(&self) -> Result<Conn, ClientError> {
        self.bump(|s| s.connects += 1);
        let stream = match &self.cfg.target {
            Target::Unix(path) => UnixStream::connect(path).await.map(Stream::Unix),
            Target::Tcp { .. } => self.connect_tcp().await.map(Stream::Tcp),
        };
        match stream {
            Ok(stream) => Ok(Conn {
                stream,
                rbuf: Vec::with_capacity(READ_BUF_BYTES),
            }),
            Err(source) => Err(ClientError::Connect {
                target: self.cfg.target.to_string(),
                source,
            }),
        }
    }

    /// The addresses come from the resolver, which never blocks the worker.
    async fn connect_tcp(&self) -> io::Result<TcpStream> {
        let addrs = match &self.resolver {
            Some(r) => r.addrs().await?,
            None => Rc::from([]),
        };
        let mut last = io::Error::new(io::ErrorKind::NotFound, "host resolved to no address");
        for &addr in addrs.iter() {
            match TcpStream::connect_addr(addr).await {
                Ok(s) => {
                    // One write per request, so Nagle would only add delay.
                    let _ = s.set_nodelay(true);
                    return Ok(s);
                }
                Err(e) => last = e,
            }
        }
        Err(last)
    }

    /// Writes `wire` and reads one answer. Gives `wire` back for a retry.
    pub(super) async fn exchange(
        &self,
        mut conn: Conn,
        wire: Vec<u8>,
        reused: bool,
        head_only: bool,
    ) -> (Result<CheckResponse, Failure>, Vec<u8>) {
        let (res, wire) = conn.stream.write_all(wire).await;
        if let Err(e) = res {
            let failure = if !is_disconnect(&e) {
                Failure::Fatal(ClientError::Io(e))
            } else if reused {
                Failure::Stale
            } else {
                Failure::Fatal(ClientError::Closed)
            };
            return (Err(failure), wire);
        }
        let mut parser =
            AnswerParser::new(self.cfg.max_head_bytes, self.cfg.max_body_bytes, head_only);
        let mut rbuf = std::mem::take(&mut conn.rbuf);
        let mut received = 0usize;
        let outcome = loop {
            rbuf.clear();
            let (res, buf) = conn.stream.read(rbuf).await;
            rbuf = buf;
            match res {
                Ok(0) if received == 0 && reused => break Err(Failure::Stale),
                Ok(0) => break parser.finish_eof().map(|()| false),
                Ok(n) => {
                    received += n;
                    match parser.feed(&rbuf[..n]) {
                        Ok(Progress::NeedMore) => continue,
                        Ok(Progress::Done { reusable }) => break Ok(reusable),
                        Err(e) => break Err(Failure::Fatal(e)),
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if received == 0 && reused && is_disconnect(&e) => {
                    break Err(Failure::Stale)
                }
                Err(e) if is_disconnect(&e) => break Err(Failure::Fatal(ClientError::Closed)),
                Err(e) => break Err(Failure::Fatal(ClientError::Io(e))),
            }
        };
        match outcome {
            Ok(reusable) => {
                if reusable {
                    conn.rbuf = rbuf;
                    self.checkin(conn);
                }
                (Ok(parser.into_response()), wire)
            }
            Err(f) => (Err(f), wire),
        }
    }
}

fn is_disconnect(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::BrokenPipe
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::NotConnected
    )
}
