//! The mixed load, on one monoio thread: paced HTTP clients from addresses
//! the fake tailscaled knows (200) and does not know (403), MCP sessions
//! against the real server-everything children, and an injector that adds
//! faults until they are [`Plan::fault_pct`] of the requests sent.
//!
//! Every request goes through the [`Ledger`]: counted when it goes out,
//! classified once when its fate is known.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use monoio::io::{AsyncReadRent, AsyncWriteRent, AsyncWriteRentExt};
use monoio::net::TcpStream;

use crate::client::{self, HttpConn, Resp};
use crate::ledger::{Counted, Kind, Ledger};
use crate::procs;

/// Tailnet nodes the fake knows: (MagicDNS name, login, addresses). A
/// session opened from one address of a node may go on from another.
pub const NODES: &[(&str, &str, &[&str])] = &[
    (
        "alice-laptop.tail1234.ts.net.",
        "alice@example.com",
        &["127.0.0.2", "127.0.0.3", "127.0.0.4"],
    ),
    (
        "bob-desktop.tail1234.ts.net.",
        "bob@example.com",
        &["127.0.0.5", "127.0.0.6"],
    ),
    (
        "carol-phone.tail1234.ts.net.",
        "carol@example.com",
        &["127.0.0.7", "127.0.0.8"],
    ),
];
/// Addresses the fake does not know: 403.
pub const UNKNOWN: &[&str] = &["127.0.0.66", "127.0.0.67", "127.0.0.68", "127.0.0.69"];
/// A node whose whois answers are slow ([`SLOW_WHOIS`]), then allowed.
pub const SLOW_NODE: (&str, &str) = ("slow-sam.tail1234.ts.net.", "sam@example.com");
pub const SLOW_WHOIS: Duration = Duration::from_millis(300);

/// Addresses whose whois gets 500 (a failure, never cached: 403 each time).
pub fn failing_ips() -> Vec<String> {
    (1..=8).map(|i| format!("127.0.1.{i}")).collect()
}

/// Addresses of [`SLOW_NODE`], used in turn so that each use meets an
/// expired cache entry and waits for a slow whois.
pub fn slow_ips() -> Vec<String> {
    (1..=64).map(|i| format!("127.0.2.{i}")).collect()
}

/// Addresses whose whois never answers: ringgate's authz timeout (1 s).
pub fn hanging_ips() -> Vec<String> {
    (1..=8).map(|i| format!("127.0.3.{i}")).collect()
}

const GET_HELLO: &[u8] =
    b"GET /hello HTTP/1.1\r\nHost: ringgate.soak\r\nUser-Agent: ringgate-soak/1\r\nAccept: */*\r\n\r\n";
const HELLO_BODY: &[u8] = b"hello from ringgate\n";
const DENIED_BODY: &[u8] = b"external authorization failed";
/// Pause between the calls of one MCP session.
const CALL_GAP: Duration = Duration::from_millis(125);
/// Calls per session: at least this many, up to twice as many.
const CALLS_PER_SESSION: u64 = 16;
/// Share of a session's calls made on a new connection (as the Python SDK
/// does), from another address of the same node: another worker, often.
const FRESH_CONN_SHARE: f64 = 0.2;
const READ_TIMEOUT: Duration = Duration::from_secs(10);

/// What to run.
pub struct Plan {
    pub addr: SocketAddr,
    pub rg_pid: u32,
    /// GET /hello per second, allowed and denied together.
    pub http_rate: f64,
    /// MCP sessions open at once.
    pub sessions: usize,
    /// Faults as a share of all requests sent, in percent.
    pub fault_pct: f64,
    pub until: Instant,
    pub stop: Arc<AtomicBool>,
    pub seed: u64,
}

/// The injected faults and their weights (out of 100).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fault {
    AbortHead,
    AbortBody,
    Malformed,
    Whois500,
    WhoisSlow,
    WhoisHang,
    SseDrop,
    GetDrop,
    ChildKill,
}

const FAULTS: &[(Fault, u64)] = &[
    (Fault::AbortHead, 14),
    (Fault::AbortBody, 10),
    (Fault::Malformed, 18),
    (Fault::Whois500, 12),
    (Fault::WhoisSlow, 12),
    (Fault::WhoisHang, 8),
    (Fault::SseDrop, 10),
    (Fault::GetDrop, 6),
    (Fault::ChildKill, 10),
];

impl Fault {
    fn name(self) -> &'static str {
        match self {
            Fault::AbortHead => "client gone mid-head",
            Fault::AbortBody => "client gone mid-body",
            Fault::Malformed => "malformed request",
            Fault::Whois500 => "whois answers 500",
            Fault::WhoisSlow => "whois slow (300 ms)",
            Fault::WhoisHang => "whois hangs",
            Fault::SseDrop => "client gone mid-SSE (POST)",
            Fault::GetDrop => "client gone from GET stream",
            Fault::ChildKill => "MCP child SIGKILLed",
        }
    }

    /// Faults that need a live MCP session: the session workers run them.
    fn in_session(self) -> bool {
        matches!(self, Fault::SseDrop | Fault::GetDrop | Fault::ChildKill)
    }
}

/// xorshift64*: deterministic per seed, good enough to vary the mix.
pub struct Rng(Cell<u64>);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(Cell::new(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1))
    }
    fn next(&self) -> u64 {
        let mut x = self.0.get();
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0.set(x);
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
    fn chance(&self, p: f64) -> bool {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64 <= p
    }
    fn pick<'a, T>(&self, v: &'a [T]) -> &'a T {
        &v[self.below(v.len() as u64) as usize]
    }
}

fn ip(s: impl AsRef<str>) -> IpAddr {
    s.as_ref().parse().expect("an IP address")
}

/// Requests at a steady rate: sleeps to the next slot; a task that fell
/// far behind starts afresh instead of bursting.
struct Pacer {
    next: Instant,
    period: Duration,
}

impl Pacer {
    fn new(rate: f64, rng: &Rng) -> Pacer {
        let period = Duration::from_secs_f64(1.0 / rate.max(0.001));
        // Spread the tasks' slots over one period.
        let offset = period.mul_f64(rng.below(1000) as f64 / 1000.0);
        Pacer {
            next: Instant::now() + offset,
            period,
        }
    }
    async fn tick(&mut self) {
        let now = Instant::now();
        if self.next > now {
            monoio::time::sleep(self.next - now).await;
        } else if now - self.next > self.period * 10 {
            self.next = now;
        }
        self.next += self.period;
    }
}

struct Soak {
    plan: Plan,
    ledger: Ledger,
    /// Faults waiting for a session worker.
    session_faults: RefCell<VecDeque<Fault>>,
    slow_ips: Vec<String>,
    failing_ips: Vec<String>,
    hanging_ips: Vec<String>,
    next_slow: Cell<usize>,
}

impl Soak {
    fn running(&self) -> bool {
        Instant::now() < self.plan.until && !self.plan.stop.load(Ordering::Relaxed)
    }
}

/// Runs the plan to its end; every request it sent is in the returned
/// ledger.
pub fn run(plan: Plan, ledger: Ledger) -> Ledger {
    client::block_on(async move {
        let seed = plan.seed;
        let s = Rc::new(Soak {
            plan,
            ledger,
            session_faults: RefCell::new(VecDeque::new()),
            slow_ips: slow_ips(),
            failing_ips: failing_ips(),
            hanging_ips: hanging_ips(),
            next_slow: Cell::new(0),
        });
        let mut tasks = Vec::new();
        let rate = s.plan.http_rate;
        // 70% allowed over 3 clients, 30% denied over 2.
        for i in 0..3u64 {
            let rng = Rng::new(seed ^ (100 + i));
            tasks.push(monoio::spawn(http_worker(
                s.clone(),
                true,
                rate * 0.7 / 3.0,
                rng,
            )));
        }
        for i in 0..2u64 {
            let rng = Rng::new(seed ^ (200 + i));
            tasks.push(monoio::spawn(http_worker(
                s.clone(),
                false,
                rate * 0.3 / 2.0,
                rng,
            )));
        }
        for i in 0..s.plan.sessions {
            let rng = Rng::new(seed ^ (300 + i as u64));
            tasks.push(monoio::spawn(mcp_worker(s.clone(), i, rng)));
        }
        let injected = monoio::spawn(injector(s.clone(), Rng::new(seed ^ 400)));
        for t in tasks {
            t.await;
        }
        for t in injected.await {
            t.await;
        }
        match Rc::try_unwrap(s) {
            Ok(s) => s.ledger,
            Err(_) => panic!("a soak task outlived the run"),
        }
    })
}

// ------------------------------------------------------------------ HTTP

/// Records a GET /hello answer: `want` is the status the case expects;
/// `kind` is how a match is filed (expected, or an expected fault outcome).
fn hello(l: &Ledger, class: &'static str, kind: Kind, want: u16, r: io::Result<Resp>, note: &str) {
    match r {
        Ok(resp) => {
            let counted = Counted::Yes("hello", resp.status);
            let body_ok = match resp.status {
                200 => resp.body == HELLO_BODY,
                403 => resp.body.starts_with(DENIED_BODY),
                _ => false,
            };
            if resp.status == want && body_ok {
                l.record(class, kind, format!("{}{note}", resp.status), counted);
            } else if want == 403 && resp.status == 200 {
                l.record(class, Kind::Breach, "200 where 403 was due", counted);
            } else {
                l.record(
                    class,
                    Kind::Unexpected,
                    format!(
                        "{} {:?} (wanted {want})",
                        resp.status,
                        String::from_utf8_lossy(&resp.body)
                    ),
                    counted,
                );
            }
        }
        Err(e) => l.record(
            class,
            Kind::Unexpected,
            format!("transport error: {e}"),
            Counted::Unknown,
        ),
    }
}

fn connect(src: IpAddr, addr: SocketAddr) -> io::Result<HttpConn> {
    HttpConn::connect(src, addr).and_then(HttpConn::new)
}

/// GET /hello at a steady rate on kept-alive connections, each used for a
/// random number of requests and then closed (new address, new port).
async fn http_worker(s: Rc<Soak>, allowed: bool, rate: f64, rng: Rng) {
    let class = if allowed {
        "allow: GET /hello (known peer)"
    } else {
        "deny: GET /hello (unknown peer)"
    };
    let want = if allowed { 200 } else { 403 };
    let mut pacer = Pacer::new(rate, &rng);
    let mut conn: Option<HttpConn> = None;
    let mut left = 0u64;
    let mut req = Vec::with_capacity(GET_HELLO.len());
    loop {
        pacer.tick().await;
        if !s.running() {
            break;
        }
        if conn.is_none() || left == 0 {
            if let Some(c) = conn.take() {
                c.close().await;
            }
            let src = if allowed {
                ip(rng.pick(rng.pick(NODES).2))
            } else {
                ip(rng.pick(UNKNOWN))
            };
            match connect(src, s.plan.addr) {
                Ok(c) => conn = Some(c),
                Err(e) => {
                    s.ledger.sent();
                    s.ledger.record(
                        class,
                        Kind::Unexpected,
                        format!("connect failed: {e}"),
                        Counted::No,
                    );
                    continue;
                }
            }
            left = 20 + rng.below(180);
        }
        left -= 1;
        req.clear();
        req.extend_from_slice(GET_HELLO);
        s.ledger.sent();
        let c = conn.as_mut().expect("connected");
        let r = c.roundtrip(std::mem::take(&mut req)).await;
        let r = match r {
            Ok((b, resp)) => {
                req = b;
                Ok(resp)
            }
            Err(e) => {
                if let Some(c) = conn.take() {
                    c.close().await;
                }
                Err(e)
            }
        };
        hello(&s.ledger, class, Kind::Expected, want, r, "");
    }
    if let Some(c) = conn.take() {
        c.close().await;
    }
}

/// One GET /hello on a connection of its own.
async fn hello_once(src: IpAddr, addr: SocketAddr) -> io::Result<Resp> {
    let mut c = connect(src, addr)?;
    let r = c.roundtrip(GET_HELLO.to_vec()).await;
    c.close().await;
    r.map(|(_, resp)| resp)
}

// ------------------------------------------------------------------- MCP

struct Session {
    node: usize,
    id: String,
    version: String,
    conn: Option<HttpConn>,
    next_id: u64,
    out: Vec<u8>,
}

impl Session {
    fn src(&self, rng: &Rng) -> IpAddr {
        ip(rng.pick(NODES[self.node].2))
    }

    /// POSTs `body` on the session's connection, or on a new one.
    async fn post(
        &mut self,
        addr: SocketAddr,
        body: &str,
        fresh: bool,
        rng: &Rng,
    ) -> io::Result<Resp> {
        client::post(&mut self.out, Some((&self.id, &self.version)), body);
        let out = std::mem::take(&mut self.out);
        self.send(addr, out, fresh, rng).await
    }

    async fn send(
        &mut self,
        addr: SocketAddr,
        out: Vec<u8>,
        fresh: bool,
        rng: &Rng,
    ) -> io::Result<Resp> {
        if fresh {
            let mut c = connect(self.src(rng), addr)?;
            let r = c.roundtrip(out).await;
            c.close().await;
            return r.map(|(o, resp)| {
                self.out = o;
                resp
            });
        }
        if self.conn.is_none() {
            self.conn = Some(connect(self.src(rng), addr)?);
        }
        let r = self.conn.as_mut().expect("connected").roundtrip(out).await;
        match r {
            Ok((o, resp)) => {
                self.out = o;
                Ok(resp)
            }
            Err(e) => {
                if let Some(c) = self.conn.take() {
                    c.close().await;
                }
                Err(e)
            }
        }
    }

    async fn close(&mut self) {
        if let Some(c) = self.conn.take() {
            c.close().await;
        }
    }
}

fn mcp_unexpected(l: &Ledger, class: &'static str, r: &io::Result<Resp>, what: &str) {
    match r {
        Ok(resp) => l.record(
            class,
            Kind::Unexpected,
            format!(
                "{} {what}: {}",
                resp.status,
                String::from_utf8_lossy(&resp.body)
                    .chars()
                    .take(200)
                    .collect::<String>()
            ),
            Counted::Yes("mcp", resp.status),
        ),
        Err(e) => l.record(
            class,
            Kind::Unexpected,
            format!("transport error: {e}"),
            Counted::Unknown,
        ),
    }
}

/// `initialize` and `notifications/initialized`; `None` (recorded) if
/// either fails.
async fn open(s: &Soak, node: usize, rng: &Rng) -> Option<Session> {
    let mut sess = Session {
        node,
        id: String::new(),
        version: String::new(),
        conn: None,
        next_id: 2,
        out: Vec::with_capacity(512),
    };
    let l = &s.ledger;
    const INIT: &str = "mcp: initialize";
    client::post(&mut sess.out, None, &client::initialize_body(1));
    let out = std::mem::take(&mut sess.out);
    l.sent();
    let r = sess.send(s.plan.addr, out, false, rng).await;
    let ok = r.as_ref().ok().and_then(|resp| {
        let id = resp.session.clone()?;
        let msgs = client::sse_messages(&resp.body);
        let v = msgs.iter().find(|m| m["id"] == 1)?["result"]["protocolVersion"]
            .as_str()?
            .to_string();
        (resp.status == 200).then_some((id, v))
    });
    match ok {
        Some((id, v)) => {
            sess.id = id;
            sess.version = v;
            l.record(INIT, Kind::Expected, "200", Counted::Yes("mcp", 200));
        }
        None => {
            mcp_unexpected(l, INIT, &r, "no session");
            sess.close().await;
            return None;
        }
    }
    const INITIALIZED: &str = "mcp: notifications/initialized";
    l.sent();
    let r = sess
        .post(s.plan.addr, client::INITIALIZED, false, rng)
        .await;
    match &r {
        Ok(resp) if resp.status == 202 => {
            l.record(INITIALIZED, Kind::Expected, "202", Counted::Yes("mcp", 202))
        }
        _ => {
            mcp_unexpected(l, INITIALIZED, &r, "");
            delete(
                s,
                sess,
                rng,
                "mcp: DELETE after a failure",
                &[200, 204, 404],
            )
            .await;
            return None;
        }
    }
    Some(sess)
}

/// `tools/call echo`, checked; false (recorded) if it failed.
async fn echo(s: &Soak, sess: &mut Session, rng: &Rng) -> bool {
    const CLASS: &str = "mcp: tools/call echo";
    let id = sess.next_id;
    sess.next_id += 1;
    let msg = format!("soak-{}-{id}", &sess.id[..sess.id.len().min(8)]);
    let fresh = rng.chance(FRESH_CONN_SHARE);
    s.ledger.sent();
    let r = sess
        .post(s.plan.addr, &client::echo_body(id, &msg), fresh, rng)
        .await;
    match &r {
        Ok(resp)
            if resp.status == 200
                && client::contains(&resp.body, client::echoed(&msg).as_bytes()) =>
        {
            let how = if fresh { "200 (new connection)" } else { "200" };
            s.ledger
                .record(CLASS, Kind::Expected, how, Counted::Yes("mcp", 200));
            true
        }
        _ => {
            mcp_unexpected(&s.ledger, CLASS, &r, "echo");
            false
        }
    }
}

/// DELETE; `want` lists the statuses that are expected here.
async fn delete(s: &Soak, mut sess: Session, rng: &Rng, class: &'static str, want: &[u16]) {
    use std::io::Write;
    let mut out = std::mem::take(&mut sess.out);
    out.clear();
    let _ = write!(
        out,
        "DELETE /mcp HTTP/1.1\r\nHost: ringgate.soak\r\nMcp-Session-Id: {}\r\nMcp-Protocol-Version: {}\r\n\r\n",
        sess.id, sess.version
    );
    s.ledger.sent();
    let r = sess.send(s.plan.addr, out, false, rng).await;
    sess.close().await;
    match &r {
        Ok(resp) if want.contains(&resp.status) => s.ledger.record(
            class,
            if class.starts_with("fault") {
                Kind::Fault
            } else {
                Kind::Expected
            },
            resp.status.to_string(),
            Counted::Yes("mcp", resp.status),
        ),
        _ => mcp_unexpected(&s.ledger, class, &r, "DELETE"),
    }
}

/// How a session's run of calls ended.
enum End {
    Normal,
    /// Something unexpected (recorded): DELETE whatever is left.
    Failed,
    /// Its child was killed: DELETE must find no session.
    Killed,
}

/// Sessions one after another: open, a run of echo calls (some of them on
/// new connections), DELETE. Between calls it runs the session faults the
/// injector queued.
async fn mcp_worker(s: Rc<Soak>, idx: usize, rng: Rng) {
    let node = idx % NODES.len();
    // Stagger the first sessions.
    monoio::time::sleep(CALL_GAP.mul_f64(rng.below(8) as f64)).await;
    while s.running() {
        let Some(mut sess) = open(&s, node, &rng).await else {
            monoio::time::sleep(Duration::from_millis(200)).await;
            continue;
        };
        let calls = CALLS_PER_SESSION + rng.below(CALLS_PER_SESSION + 1);
        let mut end = End::Normal;
        for _ in 0..calls {
            monoio::time::sleep(CALL_GAP).await;
            if !s.running() {
                break;
            }
            let fault = s.session_faults.borrow_mut().pop_front();
            let ok = match fault {
                Some(Fault::SseDrop) => sse_drop(&s, &mut sess, &rng).await,
                Some(Fault::GetDrop) => get_drop(&s, &mut sess, &rng).await,
                Some(Fault::ChildKill) => {
                    end = child_kill(&s, &mut sess, &rng).await;
                    break;
                }
                _ => echo(&s, &mut sess, &rng).await,
            };
            if !ok {
                end = End::Failed;
                break;
            }
        }
        match end {
            End::Normal => delete(&s, sess, &rng, "mcp: DELETE", &[200, 204]).await,
            End::Failed => {
                delete(
                    &s,
                    sess,
                    &rng,
                    "mcp: DELETE after a failure",
                    &[200, 204, 404],
                )
                .await
            }
            End::Killed => delete(&s, sess, &rng, "fault: DELETE after SIGKILL", &[404]).await,
        }
    }
}

/// A raw connection for the faults that cut it: `SO_LINGER` 0, so that
/// dropping it resets it, as a killed client would.
fn raw_conn(src: IpAddr, addr: SocketAddr) -> io::Result<TcpStream> {
    TcpStream::from_std(HttpConn::connect_resetting(src, addr)?)
}

/// One read appended to `buf`; 0 at EOF.
async fn read_some(s: &mut TcpStream, buf: &mut Vec<u8>) -> io::Result<usize> {
    let mut b = std::mem::take(buf);
    if b.capacity() - b.len() < 4096 {
        b.reserve(8192);
    }
    let len = b.len();
    let (r, slice) = s.read(monoio::buf::IoBufMut::slice_mut(b, len..)).await;
    *buf = slice.into_inner();
    r
}

/// Reads into `buf` until `done` holds, EOF, or the timeout; true if done.
async fn read_until(s: &mut TcpStream, buf: &mut Vec<u8>, done: impl Fn(&[u8]) -> bool) -> bool {
    let run = async {
        loop {
            if done(buf) {
                return true;
            }
            match read_some(s, buf).await {
                Ok(0) | Err(_) => return done(buf),
                Ok(_) => {}
            }
        }
    };
    monoio::time::timeout(READ_TIMEOUT, run)
        .await
        .unwrap_or(false)
}

/// Reads into `buf` until the peer closes (true; a reset counts) or the
/// timeout (false).
async fn read_to_eof(s: &mut TcpStream, buf: &mut Vec<u8>) -> bool {
    let run = async {
        loop {
            match read_some(s, buf).await {
                Ok(0) | Err(_) => return true,
                Ok(_) => {}
            }
        }
    };
    monoio::time::timeout(READ_TIMEOUT, run)
        .await
        .unwrap_or(false)
}

fn status_of(buf: &[u8]) -> Option<u16> {
    let line = buf.split(|b| *b == b'\n').next()?;
    let s = std::str::from_utf8(line).ok()?;
    s.split(' ').nth(1)?.parse().ok()
}

/// A long tool call with progress, cut by the client after the first
/// progress event; the session must go on working.
async fn sse_drop(s: &Soak, sess: &mut Session, rng: &Rng) -> bool {
    s.ledger.fault(Fault::SseDrop.name());
    let id = sess.next_id;
    sess.next_id += 1;
    let body = format!(
        r#"{{"jsonrpc":"2.0","id":{id},"method":"tools/call","params":{{"name":"trigger-long-running-operation","arguments":{{"duration":2,"steps":4}},"_meta":{{"progressToken":"soak-{id}"}}}}}}"#
    );
    let mut out = Vec::new();
    client::post(&mut out, Some((&sess.id, &sess.version)), &body);
    cut_stream(
        s,
        sess,
        rng,
        Cut {
            class: "fault: POST cut mid-SSE",
            request: out,
            until: |b| client::contains(b, b"notifications/progress"),
            sound: |_| true,
            outcome: "200, cut after the first progress event",
        },
    )
    .await
}

/// Opens the session's GET stream and walks away from it; the session must
/// go on working.
async fn get_drop(s: &Soak, sess: &mut Session, rng: &Rng) -> bool {
    s.ledger.fault(Fault::GetDrop.name());
    let out = format!(
        "GET /mcp HTTP/1.1\r\nHost: ringgate.soak\r\nAccept: text/event-stream\r\nMcp-Session-Id: {}\r\nMcp-Protocol-Version: {}\r\n\r\n",
        sess.id, sess.version
    );
    cut_stream(
        s,
        sess,
        rng,
        Cut {
            class: "fault: GET stream abandoned",
            request: out.into_bytes(),
            until: |b| memchr::memmem::find(b, b"\r\n\r\n").is_some(),
            sound: |b| client::contains(&b.to_ascii_lowercase(), b"text/event-stream"),
            outcome: "200 text/event-stream, then reset",
        },
    )
    .await
}

/// A stream the client walks away from.
struct Cut {
    class: &'static str,
    request: Vec<u8>,
    /// What must have arrived before the cut.
    until: fn(&[u8]) -> bool,
    /// A further check of what arrived.
    sound: fn(&[u8]) -> bool,
    /// The outcome recorded when all went as it should.
    outcome: &'static str,
}

/// Sends the cut's request on a raw connection, reads until its `until`
/// holds, resets the connection, and records the outcome: the expected one
/// for a 200 that passed both checks, else an unexpected one.
async fn cut_stream(s: &Soak, sess: &Session, rng: &Rng, cut: Cut) -> bool {
    s.ledger.sent();
    let mut conn = match raw_conn(sess.src(rng), s.plan.addr) {
        Ok(c) => c,
        Err(e) => {
            s.ledger.record(
                cut.class,
                Kind::Unexpected,
                format!("connect: {e}"),
                Counted::No,
            );
            return false;
        }
    };
    let (r, _) = conn.write_all(cut.request).await;
    let mut buf = Vec::new();
    let seen = r.is_ok() && read_until(&mut conn, &mut buf, cut.until).await;
    // Dropped with SO_LINGER 0: a reset, mid-stream.
    drop(conn);
    match status_of(&buf) {
        Some(200) if seen && (cut.sound)(&buf) => {
            s.ledger.record(
                cut.class,
                Kind::Fault,
                cut.outcome,
                Counted::Yes("mcp", 200),
            );
            true
        }
        st => {
            s.ledger.record(
                cut.class,
                Kind::Unexpected,
                format!(
                    "status {st:?}, awaited bytes seen {seen}: {}",
                    String::from_utf8_lossy(&buf)
                        .chars()
                        .take(200)
                        .collect::<String>()
                ),
                st.map_or(Counted::Unknown, |st| Counted::Yes("mcp", st)),
            );
            false
        }
    }
}

/// Asks the session's child for its pid (`get-env`: the child is started
/// by `sh -c 'export SOAK_CHILD_PID=$$; exec node ...'`), SIGKILLs it, and
/// checks that the session ends: its next call gets a JSON-RPC error or
/// 404, and DELETE gets 404.
async fn child_kill(s: &Soak, sess: &mut Session, rng: &Rng) -> End {
    const ENV: &str = "mcp: tools/call get-env";
    const AFTER: &str = "fault: tools/call after SIGKILL";
    s.ledger.fault(Fault::ChildKill.name());
    let id = sess.next_id;
    sess.next_id += 1;
    let body = format!(
        r#"{{"jsonrpc":"2.0","id":{id},"method":"tools/call","params":{{"name":"get-env","arguments":{{}}}}}}"#
    );
    s.ledger.sent();
    let r = sess.post(s.plan.addr, &body, false, rng).await;
    let pid = r
        .as_ref()
        .ok()
        .filter(|r| r.status == 200)
        .and_then(|resp| {
            let msgs = client::sse_messages(&resp.body);
            let text = msgs.iter().find(|m| m["id"] == id)?["result"]["content"][0]["text"]
                .as_str()?
                .to_string();
            let env: serde_json::Value = serde_json::from_str(&text).ok()?;
            env["SOAK_CHILD_PID"].as_str()?.parse::<u32>().ok()
        });
    let Some(pid) = pid else {
        mcp_unexpected(&s.ledger, ENV, &r, "no SOAK_CHILD_PID");
        return End::Failed;
    };
    s.ledger
        .record(ENV, Kind::Expected, "200", Counted::Yes("mcp", 200));
    if !procs::descendants(s.plan.rg_pid).contains(&pid) {
        // Not ringgate's: leave it alone. Filed under the get-env call's
        // class as a second record would count it twice: note it instead.
        s.ledger.sent();
        s.ledger.record(
            AFTER,
            Kind::Unexpected,
            format!("pid {pid} is not a descendant of ringgate"),
            Counted::No,
        );
        return End::Failed;
    }
    // SAFETY: kill(2) on a child of the ringgate we started.
    unsafe {
        libc::kill(pid as i32, libc::SIGKILL);
    }
    s.ledger.kills.set(s.ledger.kills.get() + 1);
    let deadline = Instant::now() + Duration::from_secs(2);
    while procs::alive(pid) && Instant::now() < deadline {
        monoio::time::sleep(Duration::from_millis(5)).await;
    }
    let id = sess.next_id;
    sess.next_id += 1;
    let msg = format!("after-kill-{id}");
    s.ledger.sent();
    let r = sess
        .post(s.plan.addr, &client::echo_body(id, &msg), false, rng)
        .await;
    match &r {
        Ok(resp) if resp.status == 404 => s.ledger.record(
            AFTER,
            Kind::Fault,
            "404 (session ended)",
            Counted::Yes("mcp", 404),
        ),
        Ok(resp)
            if resp.status == 200
                && client::sse_messages(&resp.body)
                    .iter()
                    .any(|m| m["id"] == id && m["error"]["code"] == -32603) =>
        {
            s.ledger.record(
                AFTER,
                Kind::Fault,
                "200 with JSON-RPC error -32603",
                Counted::Yes("mcp", 200),
            )
        }
        _ => {
            mcp_unexpected(&s.ledger, AFTER, &r, "after the child was killed");
            return End::Failed;
        }
    }
    End::Killed
}

// ---------------------------------------------------------------- faults

/// Adds faults until they are `fault_pct` of the requests sent. Faults
/// that need a session are queued for the session workers; the others run
/// as tasks of their own. Returns those tasks.
async fn injector(s: Rc<Soak>, rng: Rng) -> Vec<monoio::task::JoinHandle<()>> {
    let total: u64 = FAULTS.iter().map(|f| f.1).sum();
    let mut tasks = Vec::new();
    let mut scheduled = 0u64;
    let mut n = 0u64;
    while s.running() {
        monoio::time::sleep(Duration::from_millis(50)).await;
        let sent = s.ledger.progress.sent.load(Ordering::Relaxed);
        let want = (sent as f64 * s.plan.fault_pct / 100.0) as u64;
        while scheduled < want && s.running() {
            scheduled += 1;
            let mut r = rng.below(total);
            let mut fault = FAULTS[0].0;
            for (f, w) in FAULTS {
                if r < *w {
                    fault = *f;
                    break;
                }
                r -= w;
            }
            if fault.in_session() {
                let mut q = s.session_faults.borrow_mut();
                if s.plan.sessions > 0 && q.len() < s.plan.sessions {
                    q.push_back(fault);
                    continue;
                }
                fault = Fault::Malformed;
            }
            n += 1;
            tasks.push(monoio::spawn(run_fault(
                s.clone(),
                fault,
                Rng::new(s.plan.seed ^ (1000 + n)),
            )));
        }
    }
    tasks
}

async fn run_fault(s: Rc<Soak>, fault: Fault, rng: Rng) {
    let l = &s.ledger;
    l.fault(fault.name());
    let addr = s.plan.addr;
    match fault {
        Fault::AbortHead | Fault::AbortBody => {
            let class = if fault == Fault::AbortHead {
                "fault: client gone mid-head"
            } else {
                "fault: client gone mid-body"
            };
            let part: &[u8] = if fault == Fault::AbortHead {
                b"GET /hello HTTP/1.1\r\nHost: ringgate.soak\r\nUser-Agent: ringg"
            } else {
                b"POST /mcp HTTP/1.1\r\nHost: ringgate.soak\r\nAccept: application/json, text/event-stream\r\nContent-Type: application/json\r\nContent-Length: 400\r\n\r\n{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"initialize\""
            };
            l.sent();
            let src = ip(rng.pick(rng.pick(NODES).2));
            let reset = rng.chance(0.5);
            let conn = if reset {
                raw_conn(src, addr)
            } else {
                HttpConn::connect(src, addr).and_then(TcpStream::from_std)
            };
            let mut conn = match conn {
                Ok(c) => c,
                Err(e) => {
                    l.record(
                        class,
                        Kind::Unexpected,
                        format!("connect: {e}"),
                        Counted::No,
                    );
                    return;
                }
            };
            let (r, _) = conn.write_all(part.to_vec()).await;
            monoio::time::sleep(Duration::from_millis(rng.below(50))).await;
            if reset {
                drop(conn);
            } else {
                let _ = conn.shutdown().await;
                // Whatever ringgate does now (nothing, or close), it must
                // not answer a request it never got whole.
                let mut buf = Vec::new();
                let closed = read_to_eof(&mut conn, &mut buf).await;
                if !buf.is_empty() || !closed {
                    l.record(
                        class,
                        Kind::Unexpected,
                        format!(
                            "closed {closed}, answered a partial request: {:?}",
                            String::from_utf8_lossy(&buf).lines().next().unwrap_or("")
                        ),
                        Counted::No,
                    );
                    return;
                }
            }
            let how = match (r.is_ok(), reset) {
                (false, _) => "write failed before the cut".to_string(),
                (true, true) => "partial request, then reset".to_string(),
                (true, false) => "partial request, then FIN; closed without answer".to_string(),
            };
            l.record(class, Kind::Fault, how, Counted::No);
        }
        Fault::Malformed => malformed(&s, &rng).await,
        Fault::Whois500 => {
            let src = ip(rng.pick(&s.failing_ips));
            l.sent();
            let r = hello_once(src, addr).await;
            hello(l, "fault: whois answers 500", Kind::Fault, 403, r, "");
        }
        Fault::WhoisSlow => {
            let i = s.next_slow.get();
            s.next_slow.set(i + 1);
            let src = ip(&s.slow_ips[i % s.slow_ips.len()]);
            l.sent();
            let t0 = Instant::now();
            let r = hello_once(src, addr).await;
            let note = if t0.elapsed() >= SLOW_WHOIS {
                " after the slow whois"
            } else {
                " (from the cache)"
            };
            hello(l, "fault: whois slow (300 ms)", Kind::Fault, 200, r, note);
        }
        Fault::WhoisHang => {
            let src = ip(rng.pick(&s.hanging_ips));
            l.sent();
            let t0 = Instant::now();
            let r = hello_once(src, addr).await;
            let note = if t0.elapsed() >= Duration::from_millis(900) {
                " after the authz timeout"
            } else {
                " before the authz timeout"
            };
            hello(l, "fault: whois hangs", Kind::Fault, 403, r, note);
        }
        Fault::SseDrop | Fault::GetDrop | Fault::ChildKill => {
            unreachable!("session faults run in sessions")
        }
    }
}

/// Requests ringgate's framing layer must refuse with 400 and a close.
const MALFORMED: &[(&str, &[u8])] = &[
    (
        "Content-Length with Transfer-Encoding",
        b"POST /hello HTTP/1.1\r\nHost: ringgate.soak\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    ),
    ("bare LF", b"GET /hello HTTP/1.1\nHost: ringgate.soak\n\n"),
    (
        "two Host headers",
        b"GET /hello HTTP/1.1\r\nHost: a.soak\r\nHost: b.soak\r\n\r\n",
    ),
    (
        "bad chunk size",
        b"POST /mcp HTTP/1.1\r\nHost: ringgate.soak\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n",
    ),
    (
        "differing Content-Lengths",
        b"POST /hello HTTP/1.1\r\nHost: ringgate.soak\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd",
    ),
];

async fn malformed(s: &Soak, rng: &Rng) {
    const CLASS: &str = "fault: malformed request";
    let (name, bytes) = *rng.pick(MALFORMED);
    let l = &s.ledger;
    l.sent();
    let src = ip(rng.pick(rng.pick(NODES).2));
    let mut conn = match HttpConn::connect(src, s.plan.addr).and_then(TcpStream::from_std) {
        Ok(c) => c,
        Err(e) => {
            l.record(
                CLASS,
                Kind::Unexpected,
                format!("connect: {e}"),
                Counted::No,
            );
            return;
        }
    };
    let (r, _) = conn.write_all(bytes.to_vec()).await;
    let mut buf = Vec::new();
    // Until ringgate closes: EOF ends the read.
    let eof = r.is_ok() && read_to_eof(&mut conn, &mut buf).await;
    let _ = conn.shutdown().await;
    match status_of(&buf) {
        Some(400) if eof => l.record(
            CLASS,
            Kind::Fault,
            format!("400 and closed ({name})"),
            // Refusals are counted under route "".
            Counted::Yes("", 400),
        ),
        st => l.record(
            CLASS,
            Kind::Unexpected,
            format!(
                "{name}: status {st:?}: {}",
                String::from_utf8_lossy(&buf).lines().next().unwrap_or("")
            ),
            Counted::No,
        ),
    }
}
