//! The load generator: closed-loop clients on one monoio thread.
//!
//! Why our own generator rather than wrk or oha: neither is on this machine
//! (oha is not a Debian package, wrk would have to be installed), and wrk
//! cannot choose the source address, which is what decides whether the fake
//! tailscaled knows the caller. Here every connection binds 127.0.0.x before
//! connecting (socket2), so scenario 1 comes from an address the fake does
//! not know and scenario 2 from one it does. It also speaks MCP (sessions,
//! SSE over chunked bodies) and JSON-RPC lines to a child's stdio, so one
//! tool drives every scenario and its ceiling with the same client code.
//!
//! It is built to cost less than the servers it drives: one thread, io_uring
//! with the ring set-up ringgate uses, no allocation per fixed-size request,
//! httparse for response heads. Its own CPU time is reported in the table
//! (`gen CPU`) next to the server's, so a reader can see it was not the
//! bottleneck.
//!
//! Every response is checked (status, body, the echoed text); a wrong answer
//! or an I/O error ends that client and fails the run.

// In this file's directory, also when another bench includes this file.
#[path = "modern.rs"]
pub mod modern;
use std::cell::{Cell, RefCell};
use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::rc::Rc;
use std::time::{Duration, Instant};

use monoio::buf::IoBufMut;
use monoio::io::{AsyncReadRent, AsyncWriteRent, AsyncWriteRentExt};
use monoio::net::TcpStream;
use ringgate::pool::stdio::{ChildIo, Ends, ReadSource, Stdin, Stdout};

/// No single request may take longer than this; then the client fails.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
const READ_BYTES: usize = 8192;

/// Runs `f` on a fresh single-thread runtime: io_uring with `COOP_TASKRUN`
/// like ringgate's workers, else epoll.
pub fn block_on<F: Future>(f: F) -> F::Output {
    let mut urb = io_uring::IoUring::builder();
    urb.setup_coop_taskrun();
    let uring = monoio::RuntimeBuilder::<monoio::IoUringDriver>::new()
        .with_entries(1024)
        .uring_builder(urb)
        .enable_timer()
        .build();
    match uring {
        Ok(mut rt) => rt.block_on(f),
        Err(_) => monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
            .enable_timer()
            .build()
            .expect("epoll runtime")
            .block_on(f),
    }
}

/// What the clients of one target saw, over all its windows. Only
/// requests that start and end inside a window count.
#[derive(Default)]
pub struct Recorder {
    from: Cell<Option<Instant>>,
    until: Cell<Option<Instant>>,
    stop: Cell<bool>,
    /// Seconds of all windows closed so far.
    secs: Cell<f64>,
    lat_ns: RefCell<Vec<u32>>,
    errors: Cell<u64>,
    first_error: RefCell<Option<String>>,
}

impl Recorder {
    pub fn stopped(&self) -> bool {
        self.stop.get()
    }

    pub fn record(&self, t0: Instant, t1: Instant) {
        if let (Some(from), Some(until)) = (self.from.get(), self.until.get()) {
            if t0 >= from && t1 <= until {
                let ns = (t1 - t0).as_nanos().min(u128::from(u32::MAX)) as u32;
                self.lat_ns.borrow_mut().push(ns);
            }
        }
    }

    pub fn error(&self, what: String) {
        self.errors.set(self.errors.get() + 1);
        self.first_error.borrow_mut().get_or_insert(what);
    }

    pub fn result(&self) -> Measured {
        let mut lat = self.lat_ns.borrow().clone();
        lat.sort_unstable();
        Measured {
            count: lat.len() as u64,
            secs: self.secs.get(),
            lat_ns: lat,
            errors: self.errors.get(),
            first_error: self.first_error.borrow().clone(),
        }
    }
}

/// What the windows of one target saw.
#[derive(Debug, Default, Clone)]
pub struct Measured {
    pub count: u64,
    pub secs: f64,
    /// Sorted.
    pub lat_ns: Vec<u32>,
    pub errors: u64,
    pub first_error: Option<String>,
}

impl Measured {
    pub fn rps(&self) -> f64 {
        self.count as f64 / self.secs
    }
    /// The `q` quantile in microseconds.
    pub fn quantile_us(&self, q: f64) -> f64 {
        if self.lat_ns.is_empty() {
            return f64::NAN;
        }
        let i = ((self.lat_ns.len() - 1) as f64 * q).round() as usize;
        self.lat_ns[i] as f64 / 1000.0
    }
}

/// A closed-loop client of any scenario. It runs until its recorder says
/// stop, then hands itself back for the next round (`None` after an error,
/// which is recorded).
pub enum Client {
    Http(HttpClient),
    Mcp(McpClient),
    Stdio(StdioClient),
    Modern(modern::ModernClient),
}

impl Client {
    async fn run(self, rec: Rc<Recorder>) -> Option<Client> {
        match self {
            Client::Http(c) => c.run(&rec).await.map(Client::Http),
            Client::Mcp(c) => c.run(&rec).await.map(Client::Mcp),
            Client::Stdio(c) => c.run(&rec).await.map(Client::Stdio),
            Client::Modern(c) => c.run(&rec).await.map(Client::Modern),
        }
    }

    async fn close(self) -> Result<(), String> {
        match self {
            Client::Http(c) => {
                if let Some(conn) = c.conn {
                    conn.close().await;
                }
                Ok(())
            }
            Client::Mcp(c) => c.session.delete().await,
            Client::Modern(c) => {
                c.close().await;
                Ok(())
            }
            Client::Stdio(c) => {
                c.conn.close().await;
                Ok(())
            }
        }
    }
}

/// One thing measured: its clients, its recorder, and a probe called with
/// `true` as each of its windows opens and `false` as it closes.
pub struct Target<'p> {
    pub clients: Vec<Client>,
    pub rec: Rc<Recorder>,
    pub probe: Box<dyn FnMut(bool) + 'p>,
}

impl<'p> Target<'p> {
    pub fn new(clients: Vec<Client>, probe: impl FnMut(bool) + 'p) -> Target<'p> {
        Target {
            clients,
            rec: Rc::new(Recorder::default()),
            probe: Box::new(probe),
        }
    }
}

/// Round-robin over `targets`: in each of `rounds` rounds, each target's
/// clients run alone for a short ramp and then one window of `window`.
/// Interleaving the targets exposes each to the same background noise of a
/// shared machine, so their ratios hold even while absolute numbers drift.
/// The first round ramps for `first_warmup`.
pub async fn rounds(
    targets: &mut [Target<'_>],
    rounds: usize,
    first_warmup: Duration,
    warmup: Duration,
    window: Duration,
) {
    for round in 0..rounds {
        for t in targets.iter_mut() {
            let rec = t.rec.clone();
            rec.stop.set(false);
            rec.from.set(None);
            rec.until.set(None);
            let tasks: Vec<_> = std::mem::take(&mut t.clients)
                .into_iter()
                .map(|c| monoio::spawn(c.run(rec.clone())))
                .collect();
            if tasks.is_empty() {
                continue;
            }
            monoio::time::sleep(if round == 0 { first_warmup } else { warmup }).await;
            (t.probe)(true);
            let from = Instant::now();
            rec.from.set(Some(from));
            rec.until.set(Some(from + window));
            monoio::time::sleep(window).await;
            (t.probe)(false);
            rec.stop.set(true);
            rec.secs.set(rec.secs.get() + window.as_secs_f64());
            for task in tasks {
                t.clients.extend(task.await);
            }
        }
    }
}

/// Closes every client (MCP sessions are deleted); failures are recorded.
pub async fn close_all(targets: &mut [Target<'_>]) {
    for t in targets.iter_mut() {
        for c in std::mem::take(&mut t.clients) {
            if let Err(e) = c.close().await {
                t.rec.error(e);
            }
        }
    }
}

// ------------------------------------------------------------------ HTTP

/// One kept-alive HTTP/1.1 client connection.
pub struct HttpConn {
    s: TcpStream,
    buf: Vec<u8>,
}

/// A response as the checks need it.
#[derive(Debug)]
pub struct Resp {
    pub status: u16,
    pub session: Option<String>,
    pub body: Vec<u8>,
}

impl HttpConn {
    /// Connects from `src` (bound before connecting), with TCP_NODELAY.
    /// Blocking (a loopback connect completes within the call);
    /// [`HttpConn::new`] then adopts the socket in the runtime.
    pub fn connect(src: IpAddr, addr: SocketAddr) -> io::Result<std::net::TcpStream> {
        let sock = socket2::Socket::new(
            socket2::Domain::for_address(addr),
            socket2::Type::STREAM,
            None,
        )?;
        sock.bind(&SocketAddr::new(src, 0).into())?;
        sock.connect_timeout(&addr.into(), REQUEST_TIMEOUT)?;
        sock.set_nodelay(true)?;
        sock.set_nonblocking(true)?;
        Ok(sock.into())
    }

    /// Like [`HttpConn::connect`], with `SO_LINGER` 0: closing resets the
    /// connection instead of leaving it in TIME_WAIT.
    pub fn connect_resetting(src: IpAddr, addr: SocketAddr) -> io::Result<std::net::TcpStream> {
        let s = Self::connect(src, addr)?;
        socket2::SockRef::from(&s).set_linger(Some(Duration::ZERO))?;
        Ok(s)
    }

    /// Must run inside the runtime.
    pub fn new(s: std::net::TcpStream) -> io::Result<HttpConn> {
        Ok(HttpConn {
            s: TcpStream::from_std(s)?,
            buf: Vec::with_capacity(READ_BYTES),
        })
    }

    /// Writes `req` and reads one response; `req` is handed back for reuse.
    pub async fn roundtrip(&mut self, req: Vec<u8>) -> io::Result<(Vec<u8>, Resp)> {
        let run = async {
            let (r, req) = self.s.write_all(req).await;
            r?;
            let resp = self.response().await?;
            Ok((req, resp))
        };
        match monoio::time::timeout(REQUEST_TIMEOUT, run).await {
            Ok(r) => r,
            Err(_) => Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "no response in time",
            )),
        }
    }

    async fn response(&mut self) -> io::Result<Resp> {
        loop {
            match parse_response(&self.buf).map_err(io::Error::other)? {
                Some((used, resp)) => {
                    if used != self.buf.len() {
                        return Err(io::Error::other("bytes after the response"));
                    }
                    self.buf.clear();
                    return Ok(resp);
                }
                None => self.fill().await?,
            }
        }
    }

    async fn fill(&mut self) -> io::Result<()> {
        if self.buf.capacity() - self.buf.len() < READ_BYTES / 4 {
            self.buf.reserve(READ_BYTES);
        }
        let len = self.buf.len();
        let buf = std::mem::take(&mut self.buf);
        let (r, slice) = self.s.read(buf.slice_mut(len..)).await;
        self.buf = slice.into_inner();
        match r? {
            0 => Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "server closed the connection",
            )),
            _ => Ok(()),
        }
    }

    /// Half-closes and lets the runtime submit the close (see MONOIO.md:
    /// an fd dropped without this may never be closed under io_uring).
    pub async fn close(mut self) {
        let _ = self.s.shutdown().await;
    }
}

/// One complete response at the start of `buf`: (bytes used, response).
pub fn parse_response(buf: &[u8]) -> Result<Option<(usize, Resp)>, String> {
    let mut slots = [httparse::EMPTY_HEADER; 32];
    let mut r = httparse::Response::new(&mut slots);
    let head = match r.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(e) => return Err(format!("bad response head: {e}")),
    };
    let status = r.code.unwrap_or(0);
    let mut length = 0usize;
    let mut chunked = false;
    let mut session = None;
    for h in r.headers.iter() {
        if h.name.eq_ignore_ascii_case("content-length") {
            length = std::str::from_utf8(h.value)
                .ok()
                .and_then(|v| v.trim().parse().ok())
                .ok_or("bad content-length")?;
        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
            chunked = h.value.eq_ignore_ascii_case(b"chunked");
        } else if h.name.eq_ignore_ascii_case("mcp-session-id") {
            session = Some(String::from_utf8_lossy(h.value).into_owned());
        }
    }
    if chunked {
        return Ok(decode_chunked(&buf[head..])?.map(|(used, body)| {
            (
                head + used,
                Resp {
                    status,
                    session,
                    body,
                },
            )
        }));
    }
    if buf.len() < head + length {
        return Ok(None);
    }
    Ok(Some((
        head + length,
        Resp {
            status,
            session,
            body: buf[head..head + length].to_vec(),
        },
    )))
}

/// A whole chunked body (no trailers) at the start of `data`.
fn decode_chunked(data: &[u8]) -> Result<Option<(usize, Vec<u8>)>, String> {
    let mut body = Vec::new();
    let mut pos = 0;
    loop {
        let Some(eol) = data[pos..].windows(2).position(|w| w == b"\r\n") else {
            return Ok(None);
        };
        let size = std::str::from_utf8(&data[pos..pos + eol])
            .ok()
            .and_then(|s| usize::from_str_radix(s, 16).ok())
            .ok_or("bad chunk size")?;
        pos += eol + 2;
        if data.len() < pos + size + 2 {
            return Ok(None);
        }
        if &data[pos + size..pos + size + 2] != b"\r\n" {
            return Err("chunk without CRLF".into());
        }
        body.extend_from_slice(&data[pos..pos + size]);
        pos += size + 2;
        if size == 0 {
            return Ok(Some((pos, body)));
        }
    }
}

/// What a fixed-response scenario must answer.
#[derive(Clone, Copy)]
pub struct Expect {
    pub status: u16,
    pub body: &'static [u8],
}

/// A client sending one fixed request in a closed loop: on one kept-alive
/// connection per round, or on a new connection for each request (as the
/// Python MCP SDK does after `initialize`, see tests/peers/FACTS.md).
///
/// Kept-alive clients connect as their round starts and close as it ends:
/// a connection left idle while other targets run would meet ringgate's
/// header and idle timeouts.
pub struct HttpClient {
    conn: Option<HttpConn>,
    src: IpAddr,
    addr: SocketAddr,
    per_request: bool,
    req: &'static [u8],
    expect: Expect,
    out: Vec<u8>,
}

impl HttpClient {
    pub fn kept_alive(src: IpAddr, addr: SocketAddr, req: &'static [u8], expect: Expect) -> Client {
        Self::client(src, addr, false, req, expect)
    }

    /// Opens a new connection for every request and resets it after the
    /// answer (`SO_LINGER` 0: no TIME_WAIT, so ports are not exhausted).
    pub fn reconnecting(
        src: IpAddr,
        addr: SocketAddr,
        req: &'static [u8],
        expect: Expect,
    ) -> Client {
        Self::client(src, addr, true, req, expect)
    }

    fn client(
        src: IpAddr,
        addr: SocketAddr,
        per_request: bool,
        req: &'static [u8],
        expect: Expect,
    ) -> Client {
        Client::Http(HttpClient {
            conn: None,
            src,
            addr,
            per_request,
            req,
            expect,
            out: Vec::with_capacity(req.len()),
        })
    }

    /// Loopback connects complete within the call, so they are made
    /// blocking, on the runtime thread.
    fn connect(&mut self) -> io::Result<()> {
        let s = if self.per_request {
            HttpConn::connect_resetting(self.src, self.addr)?
        } else {
            HttpConn::connect(self.src, self.addr)?
        };
        self.conn = Some(HttpConn::new(s)?);
        Ok(())
    }

    async fn run(mut self, rec: &Recorder) -> Option<HttpClient> {
        while !rec.stopped() {
            let mut out = std::mem::take(&mut self.out);
            out.clear();
            out.extend_from_slice(self.req);
            let t0 = Instant::now();
            if self.conn.is_none() {
                if let Err(e) = self.connect() {
                    rec.error(format!("connect failed: {e}"));
                    return None;
                }
            }
            let conn = self.conn.as_mut().expect("connected");
            let result = conn.roundtrip(out).await;
            if self.per_request {
                // Dropped: the close goes with the next submission.
                self.conn = None;
            }
            match result {
                Ok((o, resp)) => {
                    self.out = o;
                    if resp.status != self.expect.status || resp.body != self.expect.body {
                        rec.error(format!(
                            "expected {} {:?}, got {} {:?}",
                            self.expect.status,
                            String::from_utf8_lossy(self.expect.body),
                            resp.status,
                            String::from_utf8_lossy(&resp.body)
                        ));
                        return None;
                    }
                    rec.record(t0, Instant::now());
                }
                Err(e) => {
                    rec.error(format!("request failed: {e}"));
                    return None;
                }
            }
        }
        if let Some(c) = self.conn.take() {
            c.close().await;
        }
        Some(self)
    }
}

// ------------------------------------------------------------------ MCP

/// The protocol revision the bench asks for.
pub const PROTOCOL: &str = "2025-06-18";

pub fn initialize_body(id: u64) -> String {
    format!(
        r#"{{"jsonrpc":"2.0","id":{id},"method":"initialize","params":{{"protocolVersion":"{PROTOCOL}","capabilities":{{}},"clientInfo":{{"name":"ringgate-load","version":"1"}}}}}}"#
    )
}

pub const INITIALIZED: &str = r#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#;

pub fn echo_body(id: u64, message: &str) -> String {
    format!(
        r#"{{"jsonrpc":"2.0","id":{id},"method":"tools/call","params":{{"name":"echo","arguments":{{"message":"{message}"}}}}}}"#
    )
}

/// The text the echo tool must answer with.
pub fn echoed(message: &str) -> String {
    format!("Echo: {message}")
}

/// An MCP session through ringgate, on one kept-alive connection.
pub struct McpSession {
    conn: HttpConn,
    pub id: String,
    version: String,
    out: Vec<u8>,
}

pub fn post(out: &mut Vec<u8>, session: Option<(&str, &str)>, body: &str) {
    use std::io::Write;
    out.clear();
    let _ = write!(
        out,
        "POST /mcp HTTP/1.1\r\nHost: ringgate.bench\r\nAccept: application/json, text/event-stream\r\nContent-Type: application/json\r\n"
    );
    if let Some((id, version)) = session {
        let _ = write!(
            out,
            "Mcp-Session-Id: {id}\r\nMcp-Protocol-Version: {version}\r\n"
        );
    }
    let _ = write!(out, "Content-Length: {}\r\n\r\n{body}", body.len());
}

/// The JSON-RPC messages of an SSE body.
pub fn sse_messages(body: &[u8]) -> Vec<serde_json::Value> {
    ringgate::mcp::sse::decode(body)
        .iter()
        .filter_map(|d| serde_json::from_slice(d).ok())
        .collect()
}

impl McpSession {
    /// `initialize`, then `notifications/initialized`; returns the session
    /// and how long `initialize` took.
    pub async fn open(addr: SocketAddr, src: IpAddr) -> Result<(McpSession, Duration), String> {
        let conn = HttpConn::connect(src, addr)
            .and_then(HttpConn::new)
            .map_err(|e| format!("connect: {e}"))?;
        let mut s = McpSession {
            conn,
            id: String::new(),
            version: String::new(),
            out: Vec::with_capacity(512),
        };
        post(&mut s.out, None, &initialize_body(1));
        let t0 = Instant::now();
        let resp = s.send().await?;
        let took = t0.elapsed();
        if resp.status != 200 {
            return Err(format!(
                "initialize: {} {}",
                resp.status,
                String::from_utf8_lossy(&resp.body)
            ));
        }
        s.id = resp.session.ok_or("initialize: no Mcp-Session-Id")?;
        let msgs = sse_messages(&resp.body);
        let answer = msgs
            .iter()
            .find(|m| m["id"] == 1)
            .ok_or_else(|| format!("initialize: no answer in {:?}", resp.body))?;
        s.version = answer["result"]["protocolVersion"]
            .as_str()
            .ok_or_else(|| format!("initialize: no protocolVersion in {answer}"))?
            .to_string();
        post(&mut s.out, Some((&s.id, &s.version)), INITIALIZED);
        let resp = s.send().await?;
        if resp.status != 202 {
            return Err(format!("notifications/initialized: {}", resp.status));
        }
        Ok((s, took))
    }

    async fn send(&mut self) -> Result<Resp, String> {
        let out = std::mem::take(&mut self.out);
        let (out, resp) = self.conn.roundtrip(out).await.map_err(|e| e.to_string())?;
        self.out = out;
        Ok(resp)
    }

    /// `tools/call echo`, checking the echoed text.
    pub async fn echo(&mut self, id: u64, message: &str) -> Result<(), String> {
        post(
            &mut self.out,
            Some((&self.id, &self.version)),
            &echo_body(id, message),
        );
        let resp = self.send().await?;
        let want = echoed(message);
        if resp.status != 200 || !contains(&resp.body, want.as_bytes()) {
            return Err(format!(
                "tools/call {id}: {} {}",
                resp.status,
                String::from_utf8_lossy(&resp.body)
            ));
        }
        Ok(())
    }

    /// DELETE, which stops the session's child.
    pub async fn delete(mut self) -> Result<(), String> {
        use std::io::Write;
        self.out.clear();
        let _ = write!(
            self.out,
            "DELETE /mcp HTTP/1.1\r\nHost: ringgate.bench\r\nMcp-Session-Id: {}\r\nMcp-Protocol-Version: {}\r\n\r\n",
            self.id, self.version
        );
        let resp = self.send().await?;
        self.conn.close().await;
        match resp.status {
            200 | 204 => Ok(()),
            s => Err(format!("DELETE: {s}")),
        }
    }
}

pub fn contains(hay: &[u8], needle: &[u8]) -> bool {
    memchr::memmem::find(hay, needle).is_some()
}

/// An MCP session through ringgate calling `echo` in a closed loop.
pub struct McpClient {
    session: McpSession,
    name: String,
    next_id: u64,
}

impl McpClient {
    pub fn looping(session: McpSession, name: String) -> Client {
        Client::Mcp(McpClient {
            session,
            name,
            next_id: 2,
        })
    }

    async fn run(mut self, rec: &Recorder) -> Option<McpClient> {
        while !rec.stopped() {
            let n = self.next_id;
            self.next_id += 1;
            let msg = format!("{}-{n}", self.name);
            let t0 = Instant::now();
            if let Err(e) = self.session.echo(n, &msg).await {
                rec.error(e);
                return None;
            }
            rec.record(t0, Instant::now());
        }
        Some(self)
    }
}

// ------------------------------------------------------- direct to stdio

/// A server-everything child driven over its stdio, as ringgate drives it
/// (and as MCP clients' stdio transports do): a pipe each for its stdin and
/// stdout on io_uring, one end of a socketpair on epoll.
pub struct StdioChild {
    pub child: std::process::Child,
    ours: Option<Ends>,
    initialized: bool,
    /// JSON-RPC ids stay unique across the runtimes that drive the child.
    next_id: u64,
}

impl StdioChild {
    pub fn spawn(cmd: &str, args: &[&str]) -> io::Result<StdioChild> {
        use std::os::unix::process::CommandExt;
        let io = if monoio::utils::detect_uring() {
            ChildIo::Pipes
        } else {
            ChildIo::Socketpair
        };
        let (ours, theirs) = Ends::open(io)?;
        let mut c = std::process::Command::new(cmd);
        c.args(args)
            .stdin(std::process::Stdio::from(theirs.stdin))
            .stdout(std::process::Stdio::from(theirs.stdout))
            .stderr(std::process::Stdio::null())
            .process_group(0);
        crate::procs::die_with_parent(&mut c);
        // Our copies of the child's ends close with `c`.
        let child = c.spawn()?;
        drop(c);
        Ok(StdioChild {
            child,
            ours: Some(ours),
            initialized: false,
            next_id: 2,
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Kills the child's group and reaps it.
    pub fn stop(&mut self) {
        drop(self.ours.take());
        let pid = self.child.id();
        let all = crate::procs::descendants(pid);
        // SAFETY: kill(2) on the group we created; ESRCH is ignored.
        unsafe {
            libc::kill(-(pid as i32), libc::SIGKILL);
        }
        let _ = self.child.wait();
        crate::procs::reap(&all);
    }
}

impl Drop for StdioChild {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Newline-delimited JSON-RPC over a child's stdio.
struct LineConn {
    r: Stdout,
    w: Stdin,
    buf: Vec<u8>,
    out: Vec<u8>,
}

impl LineConn {
    /// Closes this runtime's descriptors (a dropped one under io_uring is
    /// closed only when the ring next submits). The child keeps its stdin:
    /// `StdioChild` holds another copy of our ends.
    async fn close(self) {
        if let Stdin::Pipe(f) = self.w {
            let _ = f.close().await;
        }
        if let Stdout::Pipe(f) = self.r {
            let _ = f.close().await;
        }
    }

    async fn send(&mut self, line: &str) -> io::Result<()> {
        let mut out = std::mem::take(&mut self.out);
        out.clear();
        out.extend_from_slice(line.as_bytes());
        out.push(b'\n');
        let (r, out) = self.w.write_all(out).await;
        self.out = out;
        r
    }

    /// Reads lines until one satisfies `done` (skipping notifications and
    /// log lines); returns that line.
    async fn until(&mut self, done: impl Fn(&[u8]) -> bool) -> io::Result<Vec<u8>> {
        let mut start = 0;
        loop {
            while let Some(i) = memchr::memchr(b'\n', &self.buf[start..]) {
                let line = &self.buf[start..start + i];
                if done(line) {
                    let l = line.to_vec();
                    self.buf.drain(..start + i + 1);
                    return Ok(l);
                }
                start += i + 1;
            }
            self.buf.drain(..start);
            start = 0;
            if self.buf.capacity() - self.buf.len() < READ_BYTES / 4 {
                self.buf.reserve(READ_BYTES);
            }
            let len = self.buf.len();
            let buf = std::mem::take(&mut self.buf);
            let (r, slice) = self.r.read_some(buf.slice_mut(len..)).await;
            self.buf = slice.into_inner();
            if r? == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "child closed stdout",
                ));
            }
        }
    }

    async fn call(&mut self, line: &str, answer: &[u8]) -> Result<(), String> {
        let run = async {
            self.send(line).await.map_err(|e| e.to_string())?;
            self.until(|l| contains(l, answer))
                .await
                .map_err(|e| e.to_string())
        };
        match monoio::time::timeout(REQUEST_TIMEOUT, run).await {
            Ok(r) => r.map(|_| ()),
            Err(_) => Err("child did not answer in time".into()),
        }
    }
}

/// A session straight to a child's stdio calling `echo` in a closed loop:
/// the ceiling for the MCP scenario.
pub struct StdioClient {
    conn: LineConn,
    name: String,
    next_id: u64,
}

impl StdioClient {
    /// Adopts the child's stdio in this runtime; initializes the session
    /// the first time.
    pub async fn adopt(child: &mut StdioChild, name: String) -> Result<Client, String> {
        let (r, w) = child
            .ours
            .as_ref()
            .ok_or("child stopped")?
            .try_clone()
            .and_then(Ends::into_monoio)
            .map_err(|e| e.to_string())?;
        let mut conn = LineConn {
            r,
            w,
            buf: Vec::with_capacity(READ_BYTES),
            out: Vec::with_capacity(512),
        };
        if !child.initialized {
            conn.call(&initialize_body(1), br#""protocolVersion""#)
                .await
                .map_err(|e| format!("initialize over stdio: {e}"))?;
            conn.send(INITIALIZED)
                .await
                .map_err(|e| format!("initialized over stdio: {e}"))?;
            child.initialized = true;
        }
        let next_id = child.next_id;
        child.next_id += 1_000_000;
        Ok(Client::Stdio(StdioClient {
            conn,
            name,
            next_id,
        }))
    }

    async fn run(mut self, rec: &Recorder) -> Option<StdioClient> {
        while !rec.stopped() {
            let n = self.next_id;
            self.next_id += 1;
            let msg = format!("{}-{n}", self.name);
            let want = echoed(&msg);
            let t0 = Instant::now();
            if let Err(e) = self.conn.call(&echo_body(n, &msg), want.as_bytes()).await {
                rec.error(format!("tools/call over stdio: {e}"));
                return None;
            }
            rec.record(t0, Instant::now());
        }
        Some(self)
    }
}
