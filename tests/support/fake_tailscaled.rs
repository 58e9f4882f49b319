//! A fake tailscaled local API for integration tests: whois over HTTP/1.1 on
//! a temporary Unix socket, with the observed behaviour of tailscaled 1.96
//! (DESIGN.md section 3) and fault switches a test can flip while it runs.
//!
//! Std only (a thread per connection, blocking sockets), so it runs next to
//! the real `ringgate` binary or inside a monoio test alike. Answers copy Go's
//! net/http: `Content-Length` for small bodies, `chunked` past 2048 bytes, and
//! `http.Error`'s text bodies. Dropping it stops every thread it started (open
//! sockets are shut down, so no thread stays blocked) and removes the socket
//! and its temporary directory.
//!
//! ```ignore
//! let fake = FakeTailscaled::builder()
//!     .user("100.84.21.7", "alice-laptop.tail1234.ts.net.", "alice@example.com")
//!     .tagged("100.88.7.6", "ci-runner.tail1234.ts.net.", &["tag:ci"])
//!     .start();
//! fake.set_fault(Fault::Slow(Duration::from_millis(300)));
//! // Only the whois of this one address fails; the others are unaffected.
//! fake.set_fault_for("100.88.7.6", Some(Fault::Status500));
//! assert_eq!(fake.whois_calls_for("100.84.21.7"), 0);
//! ```

// Each test crate uses a different part of this file.
#![allow(dead_code)]

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::net::{IpAddr, Shutdown, SocketAddr};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// The only non-empty `Host` tailscaled accepts.
pub const LOCALAPI_HOST: &str = "local-tailscaled.sock";
pub const WHOIS_PATH: &str = "/localapi/v0/whois";
/// The seed config's `extAuthz` policy (`config/tailscale.yaml`) against the
/// daemon at `host` (`FakeTailscaled::target`), as lines for a route's
/// `policies:` map (indented 8 spaces, starting with a newline). `extra`
/// holds further keys of the policy, one per line, unindented
/// (`timeout: 300ms`, `cache: {ttl: 1s}`).
pub fn seed_ext_authz(host: &str, extra: &[&str]) -> String {
    let mut out = format!("\n        extAuthz:\n          host: {host}");
    for line in extra.iter().filter(|l| !l.is_empty()) {
        out.push_str("\n          ");
        out.push_str(line);
    }
    out.push_str(
        r#"
          protocol:
            http:
              path: |
                "/localapi/v0/whois?addr=" + source.address
              addRequestHeaders:
                :authority: '"local-tailscaled.sock"'
              metadata:
                tailscaleNode: json(response.body).Node.Name
                tailscaleEmail: json(response.body).UserProfile.LoginName"#,
    );
    out
}

/// A loopback bind with one route, `name`, that answers `body` directly to
/// whoever the seed's extAuthz (with `extra` lines) lets in.
pub fn direct_route_behind_whois(
    fake: &FakeTailscaled,
    name: &str,
    body: &str,
    extra: &[&str],
) -> String {
    format!(
        r#"
binds:
- port: 0
  address: 127.0.0.1
  listeners:
  - routes:
    - name: {name}
      policies:
        directResponse: {{body: "{body}"}}{}
"#,
        seed_ext_authz(&fake.target(), extra)
    )
}

/// The seed config's access-log fields, as a top-level YAML block.
pub const SEED_ACCESS_LOG: &str = "frontendPolicies:
  accessLog:
    add:
      tailscale.node: extauthz.tailscaleNode
      tailscale.email: extauthz.tailscaleEmail";

/// Go's net/http buffers this much of a body before switching to chunked.
pub const GO_CHUNKING_THRESHOLD: usize = 2048;
/// A whois miss given `IP:port` makes tailscaled retry for ~200-400 ms.
pub const DEFAULT_PORT_MISS_DELAY: Duration = Duration::from_millis(200);
/// Go's default `MaxHeaderBytes`.
const MAX_REQUEST_HEAD_BYTES: usize = 1 << 20;
const CHUNK_BYTES: usize = 8192;
/// IDs above 2^53 (and odd) do not survive a round trip through `f64`.
const FIRST_NODE_ID: u64 = (1 << 53) + 1;
const FIRST_USER_ID: u64 = (1 << 53) + 1_000_001;
const TAGGED_USER_ID: u64 = 31_234_567_890_123_457;
/// How often a hung connection looks at the stop flag.
const HANG_POLL: Duration = Duration::from_millis(50);

/// What the fake does wrong, switchable at run time with
/// [`FakeTailscaled::set_fault`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    None,
    /// Every request is answered correctly after this delay.
    Slow(Duration),
    /// Requests are read and never answered; the connection stays open.
    Hang,
    /// Every request gets `500` with a text body.
    Status500,
    /// Whois requests get `200 application/json` with truncated JSON.
    MalformedJson,
    /// Whois requests get `200 application/json` with a valid JSON body of
    /// this many bytes (chunked, as Go sends large bodies).
    Oversized(usize),
    /// The first half of the answer's bytes, then the connection is closed.
    CloseMidAnswer,
    /// Daemon stopped: open connections closed, socket file removed (ENOENT).
    Missing,
    /// Open connections closed, nobody listening, file left (ECONNREFUSED).
    Refused,
}

impl Fault {
    fn listening(self) -> bool {
        !matches!(self, Fault::Missing | Fault::Refused)
    }
}

/// One tailnet node the fake knows.
#[derive(Debug, Clone)]
pub struct Node {
    pub addrs: Vec<IpAddr>,
    /// MagicDNS name, ending with a dot.
    pub name: String,
    pub login: String,
    pub display_name: String,
    pub tags: Vec<String>,
    /// Raw JSON for `CapMap`; `None` serves `null`.
    pub cap_map: Option<String>,
    pub os: String,
    pub hostname: String,
    /// 0 = assigned by the builder (above 2^53).
    pub id: u64,
    /// 0 = assigned by the builder, one per login.
    pub user_id: u64,
}

impl Node {
    pub fn user(ip: &str, name: &str, login: &str) -> Node {
        let local = login.split('@').next().unwrap_or(login);
        let mut display = local.to_string();
        if let Some(first) = display.get_mut(..1) {
            first.make_ascii_uppercase();
        }
        Node::new(ip, name, login, &display, &[], "macOS")
    }

    /// A tagged node: owned by the `tagged-devices` pseudo-user.
    pub fn tagged(ip: &str, name: &str, tags: &[&str]) -> Node {
        assert!(!tags.is_empty(), "a tagged node needs at least one tag");
        let mut node = Node::new(ip, name, "tagged-devices", "Tagged Devices", tags, "linux");
        node.user_id = TAGGED_USER_ID;
        node
    }

    fn new(ip: &str, name: &str, login: &str, display: &str, tags: &[&str], os: &str) -> Node {
        assert!(
            name.ends_with('.'),
            "tailscaled node names end with a dot: {name:?}"
        );
        let short = name.split('.').next().unwrap_or(name);
        Node {
            addrs: vec![parse_ip(ip)],
            name: name.to_string(),
            login: login.to_string(),
            display_name: display.to_string(),
            tags: tags.iter().map(|t| t.to_string()).collect(),
            cap_map: None,
            os: os.to_string(),
            hostname: format!("{short}-host"),
            id: 0,
            user_id: 0,
        }
    }

    pub fn with_addr(mut self, ip: &str) -> Node {
        self.addrs.push(parse_ip(ip));
        self
    }

    /// `json` is served verbatim as `CapMap`.
    pub fn with_cap_map(mut self, json: &str) -> Node {
        self.cap_map = Some(json.to_string());
        self
    }

    pub fn with_ids(mut self, node_id: u64, user_id: u64) -> Node {
        self.id = node_id;
        self.user_id = user_id;
        self
    }
}

fn parse_ip(ip: &str) -> IpAddr {
    ip.parse()
        .unwrap_or_else(|_| panic!("not an IP address: {ip:?}"))
}

pub struct FakeBuilder {
    nodes: Vec<Node>,
    port_miss_delay: Duration,
    fault: Fault,
}

impl FakeBuilder {
    pub fn user(self, ip: &str, name: &str, login: &str) -> Self {
        self.node(Node::user(ip, name, login))
    }

    pub fn tagged(self, ip: &str, name: &str, tags: &[&str]) -> Self {
        self.node(Node::tagged(ip, name, tags))
    }

    pub fn node(mut self, node: Node) -> Self {
        for ip in &node.addrs {
            let taken = self.nodes.iter().any(|n| n.addrs.contains(ip));
            assert!(!taken, "{ip} belongs to two nodes");
        }
        self.nodes.push(node);
        self
    }

    /// Delay of a whois miss asked with `IP:port` (default 200 ms, as observed).
    pub fn port_miss_delay(mut self, delay: Duration) -> Self {
        self.port_miss_delay = delay;
        self
    }

    pub fn fault(mut self, fault: Fault) -> Self {
        self.fault = fault;
        self
    }

    pub fn start(self) -> FakeTailscaled {
        let dir = make_temp_dir();
        let path = dir.join("tailscaled.sock");
        self.launch(dir, path)
    }

    /// Starts on a chosen socket path, as a daemon restarting in place of
    /// another: creates the path's directory if it is missing (the old
    /// fake removes its own when dropped) and removes it when dropped.
    pub fn start_at(self, path: &Path) -> FakeTailscaled {
        let dir = path
            .parent()
            .expect("a socket path in a directory")
            .to_path_buf();
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("create {}: {e}", dir.display()));
        self.launch(dir, path.to_path_buf())
    }

    fn launch(mut self, dir: PathBuf, path: PathBuf) -> FakeTailscaled {
        let mut user_ids: HashMap<String, u64> = HashMap::new();
        for (i, node) in self.nodes.iter_mut().enumerate() {
            if node.id == 0 {
                node.id = FIRST_NODE_ID + 2 * i as u64;
            }
            if node.user_id == 0 {
                let next = FIRST_USER_ID + 2 * user_ids.len() as u64;
                node.user_id = *user_ids.entry(node.login.clone()).or_insert(next);
            }
        }
        let nodes = self
            .nodes
            .iter()
            .map(|n| (n.addrs.clone(), whois_json(n)))
            .collect();
        let fake = FakeTailscaled {
            shared: Arc::new(Shared {
                nodes,
                port_miss_delay: self.port_miss_delay,
                state: Mutex::new(State {
                    fault: Fault::None,
                    stopping: false,
                }),
                ip_faults: Mutex::new(HashMap::new()),
                wake: Condvar::new(),
                counters: Mutex::new(Counters::default()),
                conns: Mutex::new(HashMap::new()),
                handles: Mutex::new(Vec::new()),
                next_conn: AtomicU64::new(0),
                peak_conns: AtomicUsize::new(0),
            }),
            acceptor: Mutex::new(None),
            dir,
            path,
        };
        fake.set_fault(Fault::None);
        fake.set_fault(self.fault);
        fake
    }
}

#[derive(Debug, Default)]
struct Counters {
    requests: usize,
    whois: usize,
    whois_by_ip: HashMap<IpAddr, usize>,
    connections: usize,
}

struct State {
    fault: Fault,
    stopping: bool,
}

struct Shared {
    /// Addresses and the pretty JSON answer of each node.
    nodes: Vec<(Vec<IpAddr>, String)>,
    port_miss_delay: Duration,
    state: Mutex<State>,
    /// Faults of single addresses (whois requests for them), over `fault`.
    ip_faults: Mutex<HashMap<IpAddr, Fault>>,
    /// Signalled on fault changes and on stop, for sleeping connections.
    wake: Condvar,
    counters: Mutex<Counters>,
    /// Clones of open connections, to shut them down from outside.
    conns: Mutex<HashMap<u64, UnixStream>>,
    handles: Mutex<Vec<JoinHandle<()>>>,
    next_conn: AtomicU64,
    /// Most connections open at once since the start.
    peak_conns: AtomicUsize,
}

impl Shared {
    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn counters(&self) -> MutexGuard<'_, Counters> {
        self.counters.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn stopping(&self) -> bool {
        self.state().stopping
    }

    /// Sleeps unless the fake stops first; false when it stopped.
    fn sleep(&self, d: Duration) -> bool {
        let deadline = Instant::now() + d;
        let mut st = self.state();
        loop {
            let now = Instant::now();
            if st.stopping {
                return false;
            }
            if now >= deadline {
                return true;
            }
            st = self
                .wake
                .wait_timeout(st, deadline - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    fn shutdown_conns(&self) {
        for s in self
            .conns
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
        {
            let _ = s.shutdown(Shutdown::Both);
        }
    }
}

struct Acceptor {
    stop: Arc<AtomicBool>,
    handle: JoinHandle<()>,
}

pub struct FakeTailscaled {
    shared: Arc<Shared>,
    acceptor: Mutex<Option<Acceptor>>,
    dir: PathBuf,
    path: PathBuf,
}

impl FakeTailscaled {
    pub fn builder() -> FakeBuilder {
        FakeBuilder {
            nodes: Vec::new(),
            port_miss_delay: DEFAULT_PORT_MISS_DELAY,
            fault: Fault::None,
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// `unix:<path>`, as an extAuthz `host` value.
    pub fn target(&self) -> String {
        format!("unix:{}", self.path.display())
    }

    pub fn fault(&self) -> Fault {
        self.shared.state().fault
    }

    /// Takes effect for every request read after it returns; `Missing` and
    /// `Refused` have fully happened when it returns, and so has the listener
    /// coming back on the same path after them.
    pub fn set_fault(&self, fault: Fault) {
        let mut acceptor = self.acceptor.lock().unwrap_or_else(|e| e.into_inner());
        {
            let mut st = self.shared.state();
            st.fault = fault;
        }
        self.shared.wake.notify_all();
        if !fault.listening() {
            if let Some(a) = acceptor.take() {
                stop_acceptor(a, &self.path);
                self.shared.shutdown_conns();
            }
            if fault == Fault::Missing {
                let _ = std::fs::remove_file(&self.path);
            } else if !self.path.exists() {
                // A socket bound and closed leaves its file, which refuses
                // connections: what a crashed daemon leaves behind.
                drop(UnixListener::bind(&self.path));
            }
        } else if acceptor.is_none() {
            // A file left by `Refused` would make bind fail with EADDRINUSE.
            let _ = std::fs::remove_file(&self.path);
            let listener = UnixListener::bind(&self.path)
                .unwrap_or_else(|e| panic!("bind {}: {e}", self.path.display()));
            let stop = Arc::new(AtomicBool::new(false));
            let (shared, flag) = (self.shared.clone(), stop.clone());
            let handle = thread::Builder::new()
                .name("fake-tailscaled-accept".into())
                .spawn(move || accept_loop(listener, flag, shared))
                .expect("spawn acceptor");
            *acceptor = Some(Acceptor { stop, handle });
        }
    }

    /// A fault for the whois requests of one address only (`None` clears
    /// it); it takes the place of the global [`FakeTailscaled::set_fault`]
    /// for them. `Missing` and `Refused` concern the listener, not an
    /// address, and are ignored here. Takes effect for every request read
    /// after it returns.
    pub fn set_fault_for(&self, ip: &str, fault: Option<Fault>) {
        let ip = parse_ip(ip);
        let mut faults = self
            .shared
            .ip_faults
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        match fault {
            Some(f) if f.listening() => faults.insert(ip, f),
            _ => faults.remove(&ip),
        };
    }

    /// Whois requests that passed the Host/Origin checks, any outcome.
    pub fn whois_calls(&self) -> usize {
        self.shared.counters().whois
    }

    /// Whois requests for this IP (with or without a port).
    pub fn whois_calls_for(&self, ip: &str) -> usize {
        let ip = parse_ip(ip);
        *self.shared.counters().whois_by_ip.get(&ip).unwrap_or(&0)
    }

    /// Every request read, whatever its path or fate.
    pub fn requests(&self) -> usize {
        self.shared.counters().requests
    }

    /// Connections accepted since the start.
    pub fn connections(&self) -> usize {
        self.shared.counters().connections
    }

    pub fn open_connections(&self) -> usize {
        self.shared
            .conns
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .len()
    }

    /// The most connections that were open at the same time since the
    /// start (a connection counts from its accept until the fake sees it
    /// closed).
    pub fn peak_open_connections(&self) -> usize {
        self.shared.peak_conns.load(Ordering::SeqCst)
    }

    pub fn reset_counters(&self) {
        *self.shared.counters() = Counters::default();
    }

    /// Closes every open connection, as a daemon restart or an idle timeout
    /// would; clients then hold stale kept-alive connections.
    pub fn close_connections(&self) {
        self.shared.shutdown_conns();
    }

    /// The JSON body served for this IP, if it belongs to a node.
    pub fn whois_body(&self, ip: &str) -> Option<String> {
        let ip = parse_ip(ip);
        lookup(&self.shared, ip).map(str::to_string)
    }
}

impl Drop for FakeTailscaled {
    fn drop(&mut self) {
        self.shared.state().stopping = true;
        self.shared.wake.notify_all();
        if let Some(a) = self
            .acceptor
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
        {
            stop_acceptor(a, &self.path);
        }
        self.shared.shutdown_conns();
        let handles = std::mem::take(
            &mut *self
                .shared
                .handles
                .lock()
                .unwrap_or_else(|e| e.into_inner()),
        );
        for h in handles {
            let _ = h.join();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn make_temp_dir() -> PathBuf {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    loop {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!(
            "fake-tailscaled-{}-{n}-{nanos:x}",
            std::process::id()
        ));
        match std::fs::create_dir(&dir) {
            Ok(()) => return dir,
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
            Err(e) => panic!("create {}: {e}", dir.display()),
        }
    }
}

/// std has no way to interrupt `accept`, so the acceptor is woken by a
/// connection of our own after the stop flag is set.
fn stop_acceptor(a: Acceptor, path: &Path) {
    a.stop.store(true, Ordering::SeqCst);
    if UnixStream::connect(path).is_ok() {
        let _ = a.handle.join();
    }
    // Otherwise the thread stays parked in accept on a dead listener; it
    // holds nothing and does not keep the process alive.
}

fn accept_loop(listener: UnixListener, stop: Arc<AtomicBool>, shared: Arc<Shared>) {
    for conn in listener.incoming() {
        if stop.load(Ordering::SeqCst) {
            return;
        }
        let stream = match conn {
            Ok(s) => s,
            Err(_) => {
                // EMFILE and friends: back off instead of spinning.
                thread::sleep(Duration::from_millis(10));
                continue;
            }
        };
        let Ok(clone) = stream.try_clone() else {
            continue;
        };
        shared.counters().connections += 1;
        let id = shared.next_conn.fetch_add(1, Ordering::Relaxed);
        {
            let mut conns = shared.conns.lock().unwrap_or_else(|e| e.into_inner());
            conns.insert(id, clone);
            shared.peak_conns.fetch_max(conns.len(), Ordering::SeqCst);
        }
        let s = shared.clone();
        let handle = thread::Builder::new()
            .name("fake-tailscaled-conn".into())
            .spawn(move || serve(stream, id, s))
            .expect("spawn connection thread");
        let mut handles = shared.handles.lock().unwrap_or_else(|e| e.into_inner());
        handles.retain(|h| !h.is_finished());
        handles.push(handle);
    }
}

struct Request {
    method: String,
    target: String,
    http10: bool,
    headers: Vec<(String, String)>,
}

impl Request {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn count(&self, name: &str) -> usize {
        self.headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .count()
    }

    fn wants_close(&self) -> bool {
        let close = self
            .header("connection")
            .is_some_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case("close")));
        close || self.http10
    }
}

enum ReadError {
    /// Clean EOF, or the connection failed: just close.
    Gone,
    /// Go answers these with a bare 4xx and closes.
    Bad(&'static str),
}

fn serve(mut stream: UnixStream, id: u64, shared: Arc<Shared>) {
    let mut buf = Vec::new();
    while !shared.stopping() {
        match read_request(&mut stream, &mut buf) {
            Ok(req) => {
                if !handle(&mut stream, &req, &shared) {
                    break;
                }
            }
            Err(ReadError::Gone) => break,
            Err(ReadError::Bad(status_and_reason)) => {
                let msg = format!(
                    "HTTP/1.1 {status_and_reason}\r\nContent-Type: text/plain; charset=utf-8\r\nConnection: close\r\n\r\n{status_and_reason}"
                );
                let _ = stream.write_all(msg.as_bytes());
                break;
            }
        }
    }
    // The clone in `conns` would keep the socket open: shut it down so the
    // client sees EOF now, then forget it.
    let _ = stream.shutdown(Shutdown::Both);
    shared
        .conns
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .remove(&id);
}

/// Reads one request head (and skips a `Content-Length` body), leaving any
/// pipelined bytes in `buf`.
fn read_request(stream: &mut UnixStream, buf: &mut Vec<u8>) -> Result<Request, ReadError> {
    let end = loop {
        // Go's textproto accepts LF as well as CRLF line ends.
        let found = buf
            .windows(2)
            .position(|w| w == b"\n\n")
            .map(|i| i + 2)
            .into_iter()
            .chain(buf.windows(3).position(|w| w == b"\n\r\n").map(|i| i + 3))
            .min();
        if let Some(end) = found {
            break end;
        }
        if buf.len() > MAX_REQUEST_HEAD_BYTES {
            return Err(ReadError::Bad("431 Request Header Fields Too Large"));
        }
        read_more(stream, buf)?;
    };
    let head: Vec<u8> = buf.drain(..end).collect();
    let req = parse_request(&head)?;
    if req.header("transfer-encoding").is_some() {
        return Err(ReadError::Bad("501 Not Implemented"));
    }
    let length = match req.header("content-length") {
        None => 0,
        Some(v) => v
            .parse::<usize>()
            .map_err(|_| ReadError::Bad("400 Bad Request: bad Content-Length"))?,
    };
    while buf.len() < length {
        read_more(stream, buf)?;
    }
    buf.drain(..length);
    Ok(req)
}

fn read_more(stream: &mut UnixStream, buf: &mut Vec<u8>) -> Result<(), ReadError> {
    let mut chunk = [0u8; 4096];
    match stream.read(&mut chunk) {
        Ok(0) | Err(_) => Err(ReadError::Gone),
        Ok(n) => {
            buf.extend_from_slice(&chunk[..n]);
            Ok(())
        }
    }
}

fn parse_request(head: &[u8]) -> Result<Request, ReadError> {
    const BAD: ReadError = ReadError::Bad("400 Bad Request");
    let text = std::str::from_utf8(head).map_err(|_| BAD)?;
    let mut lines = text.split('\n').map(|l| l.strip_suffix('\r').unwrap_or(l));
    let mut parts = lines.next().ok_or(BAD)?.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(BAD);
    };
    let http10 = match version {
        "HTTP/1.1" => false,
        "HTTP/1.0" => true,
        _ => return Err(ReadError::Bad("505 HTTP Version Not Supported")),
    };
    let is_token = |s: &str| {
        !s.is_empty()
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
    };
    if !is_token(method) || target.is_empty() {
        return Err(BAD);
    }
    let mut headers = Vec::new();
    for line in lines.filter(|l| !l.is_empty()) {
        let (name, value) = line.split_once(':').ok_or(BAD)?;
        if !is_token(name) {
            return Err(BAD);
        }
        headers.push((name.to_string(), value.trim().to_string()));
    }
    let req = Request {
        method: method.to_string(),
        target: target.to_string(),
        http10,
        headers,
    };
    match req.count("host") {
        0 if !http10 => Err(ReadError::Bad(
            "400 Bad Request: missing required Host header",
        )),
        0 | 1 => Ok(req),
        _ => Err(ReadError::Bad("400 Bad Request: too many Host headers")),
    }
}

enum Body {
    Bytes(Vec<u8>),
    /// A valid JSON document of exactly this many bytes, made while writing.
    Padding(usize),
}

impl Body {
    fn len(&self) -> usize {
        match self {
            Body::Bytes(b) => b.len(),
            Body::Padding(n) => *n,
        }
    }
}

struct Answer {
    status: u16,
    content_type: &'static str,
    body: Body,
}

impl Answer {
    /// Go's `http.Error`: the message plus a newline, as plain text.
    fn text(status: u16, msg: &str) -> Answer {
        Answer {
            status,
            content_type: "text/plain; charset=utf-8",
            body: Body::Bytes(format!("{msg}\n").into_bytes()),
        }
    }

    fn json(body: Body) -> Answer {
        Answer {
            status: 200,
            content_type: "application/json",
            body,
        }
    }
}

/// Routes one request; returns whether the connection stays open.
fn handle(stream: &mut UnixStream, req: &Request, shared: &Shared) -> bool {
    shared.counters().requests += 1;
    let host = req.header("host").unwrap_or("");
    let origin = req.header("origin").unwrap_or("");
    let referer = req.header("referer").unwrap_or("");
    let (path, query) = req.target.split_once('?').unwrap_or((&req.target, ""));
    let mut whois_addr_ok = false;
    let mut whois_ip = None;
    let mut delay = Duration::ZERO;
    // tailscaled refuses browsers (DNS rebinding, CSRF) before routing; like
    // Go's `r.Referer() != ""`, an empty header does not count.
    let answer =
        if !(host.is_empty() || host == LOCALAPI_HOST) || !origin.is_empty() || !referer.is_empty()
        {
            Answer::text(403, "invalid localapi request")
        } else if path != WHOIS_PATH {
            Answer::text(404, "404 page not found")
        } else {
            let addr = query_value(query, "addr");
            let parsed = match addr.as_deref() {
                None | Some("") => Err("missing 'addr' parameter"),
                Some(a) => parse_whois_addr(a).ok_or("invalid 'addr' parameter"),
            };
            let mut counters = shared.counters();
            counters.whois += 1;
            match parsed {
                Err(msg) => Answer::text(400, msg),
                Ok((ip, with_port)) => {
                    *counters.whois_by_ip.entry(ip).or_insert(0) += 1;
                    whois_addr_ok = true;
                    whois_ip = Some(ip);
                    match lookup(shared, ip) {
                        Some(json) => Answer::json(Body::Bytes(json.as_bytes().to_vec())),
                        None => {
                            if with_port {
                                delay = shared.port_miss_delay;
                            }
                            Answer::text(404, "no match for IP:port")
                        }
                    }
                }
            }
        };
    let ip_fault = whois_ip.and_then(|ip| {
        shared
            .ip_faults
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&ip)
            .copied()
    });
    let fault = ip_fault.unwrap_or_else(|| shared.state().fault);
    match fault {
        Fault::Hang => {
            hang(stream, shared);
            return false;
        }
        Fault::Slow(d) => delay += d,
        _ => {}
    }
    if !delay.is_zero() && !shared.sleep(delay) {
        return false;
    }
    let answer = match fault {
        Fault::Status500 => Answer::text(500, "internal error"),
        Fault::MalformedJson if whois_addr_ok => {
            Answer::json(Body::Bytes(b"{\n\t\"Node\": {\n\t\t\"ID\": 71000".to_vec()))
        }
        Fault::Oversized(n) if whois_addr_ok => Answer::json(Body::Padding(n)),
        _ => answer,
    };
    let close = req.wants_close();
    let head_only = req.method == "HEAD";
    if fault == Fault::CloseMidAnswer {
        let mut all = Vec::new();
        let _ = write_answer(&mut all, &answer, close, head_only);
        let _ = stream.write_all(&all[..all.len() / 2]);
        return false;
    }
    write_answer(stream, &answer, close, head_only).is_ok() && !close
}

/// Reads and drops whatever arrives until the peer leaves or the fake stops.
fn hang(stream: &mut UnixStream, shared: &Shared) {
    let _ = stream.set_read_timeout(Some(HANG_POLL));
    let mut sink = [0u8; 4096];
    while !shared.stopping() {
        match stream.read(&mut sink) {
            Ok(0) => return,
            Ok(_) => {}
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) => {}
            Err(_) => return,
        }
    }
}

fn lookup(shared: &Shared, ip: IpAddr) -> Option<&str> {
    shared
        .nodes
        .iter()
        .find(|(addrs, _)| addrs.contains(&ip))
        .map(|(_, json)| json.as_str())
}

/// `IP` or `IP:port` (`[v6]:port`), like Go's netip parsers.
fn parse_whois_addr(a: &str) -> Option<(IpAddr, bool)> {
    if let Ok(ip) = a.parse::<IpAddr>() {
        return Some((ip, false));
    }
    a.parse::<SocketAddr>().ok().map(|sa| (sa.ip(), true))
}

/// First value of `key` in a query string, percent- and `+`-decoded.
fn query_value(query: &str, key: &str) -> Option<String> {
    query.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        (percent_decode(k)? == key)
            .then(|| percent_decode(v))
            .flatten()
    })
}

fn percent_decode(s: &str) -> Option<String> {
    let mut out = Vec::with_capacity(s.len());
    let mut bytes = s.bytes();
    while let Some(b) = bytes.next() {
        match b {
            b'+' => out.push(b' '),
            b'%' => {
                let hex = [bytes.next()?, bytes.next()?];
                let hex = std::str::from_utf8(&hex).ok()?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
            }
            _ => out.push(b),
        }
    }
    String::from_utf8(out).ok()
}

fn write_answer(
    w: &mut impl Write,
    answer: &Answer,
    close: bool,
    head_only: bool,
) -> io::Result<()> {
    let len = answer.body.len();
    let chunked = len > GO_CHUNKING_THRESHOLD;
    let mut head = format!(
        "HTTP/1.1 {} {}\r\nContent-Type: {}\r\n",
        answer.status,
        reason(answer.status),
        answer.content_type
    );
    if answer.content_type.starts_with("text/plain") {
        head.push_str("X-Content-Type-Options: nosniff\r\n");
    }
    head.push_str(&format!("Date: {}\r\n", http_date(SystemTime::now())));
    if chunked {
        head.push_str("Transfer-Encoding: chunked\r\n");
    } else {
        head.push_str(&format!("Content-Length: {len}\r\n"));
    }
    if close {
        head.push_str("Connection: close\r\n");
    }
    head.push_str("\r\n");
    w.write_all(head.as_bytes())?;
    if head_only {
        return w.flush();
    }
    let mut emit = |piece: &[u8]| -> io::Result<()> {
        if chunked {
            w.write_all(format!("{:x}\r\n", piece.len()).as_bytes())?;
            w.write_all(piece)?;
            w.write_all(b"\r\n")
        } else {
            w.write_all(piece)
        }
    };
    match &answer.body {
        Body::Bytes(b) => {
            for piece in b.chunks(CHUNK_BYTES) {
                emit(piece)?;
            }
        }
        Body::Padding(n) => {
            const OPEN: &[u8] = b"{\"Pad\":\"";
            const CLOSE: &[u8] = b"\"}\n";
            let fill = [b'x'; CHUNK_BYTES];
            let framed = *n >= OPEN.len() + CLOSE.len();
            let mut left = if framed {
                n - OPEN.len() - CLOSE.len()
            } else {
                *n
            };
            if framed {
                emit(OPEN)?;
            }
            while left > 0 {
                let k = left.min(CHUNK_BYTES);
                emit(&fill[..k])?;
                left -= k;
            }
            if framed {
                emit(CLOSE)?;
            }
        }
    }
    if chunked {
        w.write_all(b"0\r\n\r\n")?;
    }
    w.flush()
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        403 => "Forbidden",
        404 => "Not Found",
        500 => "Internal Server Error",
        _ => "Unknown",
    }
}

/// IMF-fixdate, e.g. `Sun, 06 Nov 1994 08:49:37 GMT`.
fn http_date(t: SystemTime) -> String {
    const DAYS: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let secs = t
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let days = secs / 86_400;
    let rem = secs % 86_400;
    // Civil-from-days (Howard Hinnant), for days since 1970-01-01.
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{}, {:02} {} {} {:02}:{:02}:{:02} GMT",
        DAYS[(days % 7) as usize],
        day,
        MONTHS[(month - 1) as usize],
        year,
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// JSON value with fields in the order tailscaled's structs declare them.
enum J {
    Obj(Vec<(&'static str, J)>),
    Arr(Vec<J>),
    Str(String),
    Num(u64),
    Bool(bool),
    Null,
    Raw(String),
}

fn s(v: impl Into<String>) -> J {
    J::Str(v.into())
}

/// The whois answer for a node, shaped like `reference/whois-*.json`.
fn whois_json(n: &Node) -> String {
    let prefixes = || {
        n.addrs
            .iter()
            .map(|ip| s(format!("{ip}/{}", if ip.is_ipv4() { 32 } else { 128 })))
            .collect()
    };
    let short = n.name.split('.').next().unwrap_or(&n.name).to_string();
    let mut node = vec![
        ("ID", J::Num(n.id)),
        ("StableID", s(format!("n{}CNTRL", fake_hex(&n.name, 12)))),
        ("Name", s(&n.name)),
        ("User", J::Num(n.user_id)),
        (
            "Key",
            s(format!("nodekey:{}", fake_hex(&format!("k{}", n.name), 64))),
        ),
    ];
    if n.tags.is_empty() {
        node.push(("KeyExpiry", s("2027-05-27T09:00:00Z")));
    }
    node.extend([
        (
            "Machine",
            s(format!("mkey:{}", fake_hex(&format!("m{}", n.name), 64))),
        ),
        (
            "DiscoKey",
            s(format!(
                "discokey:{}",
                fake_hex(&format!("d{}", n.name), 64)
            )),
        ),
        ("Addresses", J::Arr(prefixes())),
        ("AllowedIPs", J::Arr(prefixes())),
        ("HomeDERP", J::Num(1)),
        (
            "Hostinfo",
            J::Obj(vec![("OS", s(&n.os)), ("Hostname", s(&n.hostname))]),
        ),
        ("Created", s("2026-05-27T09:00:00Z")),
        ("Cap", J::Num(133)),
    ]);
    if !n.tags.is_empty() {
        node.push(("Tags", J::Arr(n.tags.iter().map(s).collect())));
    }
    node.extend([
        ("Online", J::Bool(true)),
        ("MachineAuthorized", J::Bool(true)),
        ("ComputedName", s(&short)),
        (
            "ComputedNameWithHost",
            s(format!("{short} ({})", n.hostname.to_ascii_lowercase())),
        ),
    ]);
    let mut profile = vec![
        ("ID", J::Num(n.user_id)),
        ("LoginName", s(&n.login)),
        ("DisplayName", s(&n.display_name)),
    ];
    if n.tags.is_empty() {
        let local = n.login.split('@').next().unwrap_or(&n.login);
        profile.push((
            "ProfilePicURL",
            s(format!("https://avatars.example.com/u/{local}.png")),
        ));
    }
    let cap_map = n.cap_map.clone().map_or(J::Null, J::Raw);
    let doc = J::Obj(vec![
        ("Node", J::Obj(node)),
        ("UserProfile", J::Obj(profile)),
        ("CapMap", cap_map),
    ]);
    // Go's json.Encoder with SetIndent("", "\t") ends the document with LF.
    let mut out = String::new();
    write_json(&mut out, &doc, 0);
    out.push('\n');
    out
}

fn write_json(out: &mut String, v: &J, depth: usize) {
    let indent = |out: &mut String, d: usize| {
        out.push('\n');
        out.extend(std::iter::repeat_n('\t', d));
    };
    match v {
        J::Obj(fields) if fields.is_empty() => out.push_str("{}"),
        J::Arr(items) if items.is_empty() => out.push_str("[]"),
        J::Obj(fields) => {
            out.push('{');
            for (i, (k, v)) in fields.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                indent(out, depth + 1);
                write_json_str(out, k);
                out.push_str(": ");
                write_json(out, v, depth + 1);
            }
            indent(out, depth);
            out.push('}');
        }
        J::Arr(items) => {
            out.push('[');
            for (i, v) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                indent(out, depth + 1);
                write_json(out, v, depth + 1);
            }
            indent(out, depth);
            out.push(']');
        }
        J::Str(v) => write_json_str(out, v),
        J::Num(n) => out.push_str(&n.to_string()),
        J::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        J::Null => out.push_str("null"),
        J::Raw(raw) => out.push_str(raw),
    }
}

fn write_json_str(out: &mut String, v: &str) {
    out.push('"');
    for c in v.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            // Go escapes these too, so the JSON is safe inside HTML.
            '<' | '>' | '&' => out.push_str(&format!("\\u{:04x}", c as u32)),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
}

/// Deterministic hex for keys and IDs that only need to look real.
fn fake_hex(seed: &str, len: usize) -> String {
    // FNV-1a, then xorshift to stretch it.
    let mut x = seed.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    });
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            char::from_digit((x & 0xf) as u32, 16).unwrap_or('0')
        })
        .collect()
}
