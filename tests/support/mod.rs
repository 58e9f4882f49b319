//! Test harness: the real `ringgate` binary on port 0, raw HTTP clients, and
//! log capture. Each test module uses what it needs.
#![allow(dead_code)]

pub mod fake_tailscaled;
pub mod mcp;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

/// Generous bound for anything a test waits on; never a performance claim.
pub const WAIT: Duration = Duration::from_secs(10);

/// The binary under test: this build's, or `RINGGATE_TEST_BIN` (another
/// build, to check that a test fails on the code before a change).
pub fn binary() -> std::ffi::OsString {
    std::env::var_os("RINGGATE_TEST_BIN").unwrap_or_else(|| env!("CARGO_BIN_EXE_ringgate").into())
}

/// A running `ringgate` with its stderr captured line by line.
pub struct Proxy {
    child: Child,
    pub addrs: Vec<SocketAddr>,
    /// The metrics and readiness listeners (ephemeral ports in tests).
    pub stats: Option<SocketAddr>,
    pub readiness: Option<SocketAddr>,
    config_path: std::path::PathBuf,
    logs: Arc<(Mutex<Vec<String>>, Condvar)>,
    _dir: tempfile::TempDir,
}

impl Proxy {
    /// Starts ringgate on `yaml` (binds should use `port: 0`).
    pub fn start(yaml: &str, args: &[&str]) -> Proxy {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.yaml");
        std::fs::write(&path, yaml).unwrap();
        // Ephemeral admin ports, so parallel tests never collide on the defaults.
        let mut admin = Vec::new();
        for flag in ["--stats-addr", "--readiness-addr"] {
            if !args.contains(&flag) {
                admin.extend([flag, "127.0.0.1:0"]);
            }
        }
        let mut child = Command::new(binary())
            .arg("-f")
            .arg(&path)
            .args(&admin)
            .args(args)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start ringgate");
        let logs = Arc::new((Mutex::new(Vec::new()), Condvar::new()));
        let stderr = child.stderr.take().unwrap();
        let sink = logs.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if std::env::var_os("RINGGATE_TEST_LOGS").is_some() {
                    eprintln!("[ringgate] {line}");
                }
                sink.0.lock().unwrap().push(normalize(&line));
                sink.1.notify_all();
            }
        });
        let mut p = Proxy {
            child,
            addrs: Vec::new(),
            stats: None,
            readiness: None,
            config_path: path,
            logs,
            _dir: dir,
        };
        let binds = yaml.matches("- port:").count().max(1);
        for i in 0..binds {
            let line = p
                .wait_log_nth(i, |l| l.contains(" listening ") && l.contains("bind.addr="))
                .unwrap_or_else(|| panic!("ringgate did not start: {:#?}", p.logs()));
            let addr = field(&line, "bind.addr").unwrap();
            p.addrs.push(addr.parse().unwrap());
        }
        // Workers log when their runtime is up; wait for all of them.
        let workers: usize = p
            .wait_log(|l| l.contains(" listening "))
            .and_then(|l| field(&l, "workers").and_then(|w| w.parse().ok()))
            .unwrap_or(1);
        p.wait_log_nth(workers - 1, |l| l.contains("worker started"))
            .expect("workers started");
        let admin_addr = |p: &Proxy, what: &str| {
            p.logs()
                .iter()
                .find(|l| l.contains(&format!("{what} listening")))
                .and_then(|l| field(l, "addr"))
                .and_then(|a| a.parse().ok())
        };
        p.stats = admin_addr(&p, "stats");
        p.readiness = admin_addr(&p, "readiness");
        p
    }

    /// Sends a signal to the proxy process.
    pub fn signal(&self, sig: i32) {
        // SAFETY: kill only sends a signal to the child this harness started.
        unsafe { libc::kill(self.child.id() as i32, sig) };
    }

    /// Waits (bounded) for the proxy to exit; its status, or `None`.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                return Some(s);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Rewrites the config file (for reload tests).
    pub fn rewrite_config(&self, yaml: &str) {
        std::fs::write(&self.config_path, yaml).unwrap();
    }

    pub fn addr(&self) -> SocketAddr {
        self.addrs[0]
    }

    /// A snapshot of the log so far.
    pub fn logs(&self) -> Vec<String> {
        self.logs.0.lock().unwrap().clone()
    }

    pub fn wait_log(&self, pred: impl Fn(&str) -> bool) -> Option<String> {
        self.wait_log_nth(0, pred)
    }

    /// Waits for the `n`th (0-based) log line matching `pred`.
    pub fn wait_log_nth(&self, n: usize, pred: impl Fn(&str) -> bool) -> Option<String> {
        let deadline = Instant::now() + WAIT;
        let (lock, cv) = &*self.logs;
        let mut logs = lock.lock().unwrap();
        loop {
            if let Some(l) = logs.iter().filter(|l| pred(l)).nth(n) {
                return Some(l.clone());
            }
            let now = Instant::now();
            if now >= deadline {
                return None;
            }
            logs = cv.wait_timeout(logs, deadline - now).unwrap().0;
        }
    }

    pub fn is_running(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// JSON log lines are kept whole, and also rewritten as `level message k=v`
/// text (after the raw line) so that the same predicates find them.
fn normalize(line: &str) -> String {
    let Ok(serde_json::Value::Object(obj)) = serde_json::from_str(line) else {
        return line.to_string();
    };
    let text = |v: &serde_json::Value| match v {
        serde_json::Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    let mut out = format!(
        "{line}\t{} {}",
        obj.get("level")
            .map(text)
            .unwrap_or_default()
            .to_uppercase(),
        obj.get("message").map(text).unwrap_or_default()
    );
    for (k, v) in &obj {
        if !matches!(k.as_str(), "level" | "message" | "timestamp" | "target") {
            out.push_str(&format!(" {k}={}", text(v)));
        }
    }
    out
}

/// The raw JSON object of a line kept by [`normalize`].
pub fn json_of(line: &str) -> serde_json::Value {
    let raw = line.split('\t').next().unwrap();
    serde_json::from_str(raw).unwrap_or_else(|e| panic!("{e}: {raw}"))
}

/// `key=value` from a log line (value up to the next space, quotes stripped).
pub fn field(line: &str, key: &str) -> Option<String> {
    let pat = format!("{key}=");
    let start = line
        .match_indices(&pat)
        .find(|(i, _)| *i == 0 || line.as_bytes()[i - 1] == b' ')?
        .0
        + pat.len();
    let rest = &line[start..];
    let end = rest.find(' ').unwrap_or(rest.len());
    Some(rest[..end].trim_matches('"').to_string())
}

/// Connects with read and write timeouts so no test can hang.
pub fn connect(addr: SocketAddr) -> TcpStream {
    let s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(WAIT)).unwrap();
    s.set_write_timeout(Some(WAIT)).unwrap();
    s.set_nodelay(true).unwrap();
    s
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resp {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Resp {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
    /// The JSON messages of an SSE body.
    pub fn events(&self) -> Vec<serde_json::Value> {
        ringgate::mcp::sse::decode(&self.body)
            .iter()
            .map(|d| serde_json::from_slice(d).expect("SSE data is JSON"))
            .collect()
    }
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
    /// Status, headers and body without the Date header, for comparisons.
    pub fn without_date(&self) -> Resp {
        let mut r = self.clone();
        r.headers.retain(|(n, _)| n != "date");
        r
    }
}

/// A GET on an admin listener: (status, body).
pub fn admin_get(addr: SocketAddr, path: &str) -> (u16, String) {
    let mut s = connect(addr);
    write!(s, "GET {path} HTTP/1.1\r\nHost: admin\r\n\r\n").unwrap();
    let r = read_response(&mut BufReader::new(s)).expect("admin answer");
    (r.status, r.text())
}

/// Reads one response (Content-Length framed, as ringgate always answers);
/// `None` if the connection closed before a status line.
pub fn read_response<R: BufRead>(r: &mut R) -> Option<Resp> {
    read_response_to(r, false)
}

/// Reads one response; `head` says it answers a HEAD request (no body).
pub fn read_response_to<R: BufRead>(r: &mut R, head: bool) -> Option<Resp> {
    let mut line = String::new();
    if r.read_line(&mut line).ok()? == 0 {
        return None;
    }
    let status: u16 = line.split(' ').nth(1)?.parse().ok()?;
    let mut headers = Vec::new();
    loop {
        line.clear();
        r.read_line(&mut line).ok()?;
        let l = line.trim_end_matches("\r\n");
        if l.is_empty() {
            break;
        }
        let (n, v) = l.split_once(':')?;
        headers.push((n.to_ascii_lowercase(), v.trim().to_string()));
    }
    let mut resp = Resp {
        status,
        headers,
        body: Vec::new(),
    };
    if status == 100 || head {
        return Some(resp);
    }
    if resp.header("transfer-encoding") == Some("chunked") {
        loop {
            line.clear();
            r.read_line(&mut line).ok()?;
            let size = usize::from_str_radix(line.trim_end(), 16).ok()?;
            let start = resp.body.len();
            resp.body.resize(start + size, 0);
            r.read_exact(&mut resp.body[start..]).ok()?;
            line.clear();
            r.read_line(&mut line).ok()?;
            if size == 0 {
                break;
            }
        }
        return Some(resp);
    }
    let len: usize = resp
        .header("content-length")
        .map_or(0, |v| v.parse().unwrap());
    resp.body.resize(len, 0);
    r.read_exact(&mut resp.body).ok()?;
    Some(resp)
}

/// Reads until the peer closes (or the read timeout); true if it closed.
pub fn closed_after<R: Read>(r: &mut R) -> bool {
    let mut buf = [0u8; 1024];
    loop {
        match r.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return true,
            Err(_) => return false,
        }
    }
}

/// Connects from a chosen loopback source address (127.0.0.2, ...), so one
/// test machine can play several tailnet peers.
pub fn connect_from(src: &str, addr: SocketAddr) -> TcpStream {
    let src: std::net::IpAddr = src.parse().unwrap();
    let sock = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::STREAM,
        None,
    )
    .unwrap();
    sock.bind(&SocketAddr::new(src, 0).into()).unwrap();
    sock.connect_timeout(&addr.into(), WAIT).expect("connect");
    let s: TcpStream = sock.into();
    s.set_read_timeout(Some(WAIT)).unwrap();
    s.set_write_timeout(Some(WAIT)).unwrap();
    s.set_nodelay(true).unwrap();
    s
}

/// One request from `src` on a fresh connection; returns the response.
pub fn request_from(src: &str, addr: SocketAddr, req: &str) -> Resp {
    let mut s = connect_from(src, addr);
    s.write_all(req.as_bytes()).unwrap();
    s.shutdown(std::net::Shutdown::Write).unwrap();
    read_response(&mut BufReader::new(s)).expect("a response")
}

/// Sends raw bytes on a new connection, half-closes, and reads every response.
pub fn exchange(addr: SocketAddr, bytes: &[u8]) -> Vec<Resp> {
    let mut s = connect(addr);
    s.write_all(bytes).unwrap();
    s.shutdown(std::net::Shutdown::Write).unwrap();
    let mut r = BufReader::new(s);
    std::iter::from_fn(|| read_response(&mut r)).collect()
}

/// Sends raw bytes and keeps the connection open, so that only ringgate can
/// close it; returns the responses and whether ringgate closed it.
pub fn exchange_open(addr: SocketAddr, bytes: &[u8]) -> (Vec<Resp>, bool) {
    let mut s = connect(addr);
    s.write_all(bytes).unwrap();
    let mut r = BufReader::new(s);
    let mut out = Vec::new();
    while let Some(resp) = read_response(&mut r) {
        let close = resp.header("connection") == Some("close");
        out.push(resp);
        if close {
            break;
        }
    }
    let closed = closed_after(&mut r);
    (out, closed)
}

/// One sample of the proxy's `/metrics` (a name with its labels, as
/// written there); `None` if absent or the stats listener is off.
pub fn metric(p: &Proxy, name: &str) -> Option<f64> {
    let (status, text) = admin_get(p.stats?, "/metrics");
    if status != 200 {
        return None;
    }
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

// ---------------------------------------------------------------- /proc

/// A `kB` field of `/proc/PID/status` (`VmHWM`, `VmRSS`...), in KiB.
pub fn proc_status_kib(pid: u32, key: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// Open file descriptors of a process.
pub fn fd_count(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0)
}

/// The direct children of `pid` with their state letter (`S`, `R`, `Z`...).
pub fn children_of(pid: u32) -> Vec<(u32, char)> {
    let mut out = Vec::new();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return out;
    };
    for e in dir.flatten() {
        let Some(child) = e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{child}/stat")) else {
            continue;
        };
        // `pid (comm) state ppid ...`; comm may hold spaces and parens.
        let Some(rest) = stat.rfind(')').map(|i| &stat[i + 1..]) else {
            continue;
        };
        let mut f = rest.split_whitespace();
        let state = f.next().and_then(|s| s.chars().next()).unwrap_or('?');
        if f.next().and_then(|p| p.parse::<u32>().ok()) == Some(pid) {
            out.push((child, state));
        }
    }
    out
}

/// Stops a proxy whose MCP children are taps (each running the real child)
/// with SIGTERM: it must exit cleanly, and every tap and every process
/// behind one must be gone. Returns how many taps, and processes in all,
/// ran under it.
pub fn stop_proxy_with_taps(mut p: Proxy) -> (usize, usize) {
    let taps: Vec<u32> = children_of(p.pid()).iter().map(|(c, _)| *c).collect();
    let mut all = taps.clone();
    for t in &taps {
        all.extend(children_of(*t).iter().map(|(c, _)| *c));
    }
    p.signal(libc::SIGTERM);
    let status = p.wait_exit(Duration::from_secs(20)).expect("proxy exits");
    assert!(status.success(), "{status:?}");
    for pid in &all {
        assert!(
            wait_until(WAIT, || pid_gone(*pid)),
            "{pid} outlived the proxy"
        );
    }
    (taps.len(), all.len())
}

/// Children of `pid` that are zombies (exited, not reaped).
pub fn zombies_of(pid: u32) -> Vec<u32> {
    children_of(pid)
        .into_iter()
        .filter(|(_, s)| *s == 'Z')
        .map(|(c, _)| c)
        .collect()
}

/// Not in the process table at all: neither running nor a zombie.
pub fn pid_gone(pid: u32) -> bool {
    !std::path::Path::new(&format!("/proc/{pid}")).exists()
}

/// Polls `f` every 20 ms until it holds or `limit` passes; whether it held.
pub fn wait_until(limit: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        if f() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Raises this process's RLIMIT_NOFILE soft limit to its hard limit (the
/// proxy, started afterwards, inherits it); returns the new soft limit.
pub fn raise_nofile_limit() -> u64 {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read and write the struct we pass.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return 0;
        }
        if lim.rlim_cur < lim.rlim_max {
            let want = libc::rlimit {
                rlim_cur: lim.rlim_max,
                rlim_max: lim.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &want) == 0 {
                lim = want;
            }
        }
    }
    lim.rlim_cur
}

/// The descriptor count of `pid` once it stops changing for 300 ms
/// (connections still closing), polled for at most 5 s.
pub fn settled_fd_count(pid: u32) -> usize {
    let mut last = fd_count(pid);
    let mut stable = 0;
    for _ in 0..50 {
        std::thread::sleep(Duration::from_millis(100));
        let now = fd_count(pid);
        if now == last {
            stable += 1;
            if stable == 3 {
                break;
            }
        } else {
            stable = 0;
            last = now;
        }
    }
    last
}

/// Like [`request_from`], for a server that may answer and close before
/// the request is fully sent (503 at the connection limit): write and
/// half-close errors are ignored; `None` if no response could be read.
pub fn request_tolerant(src: &str, addr: SocketAddr, req: &str) -> Option<Resp> {
    let mut s = connect_from(src, addr);
    let _ = s.write_all(req.as_bytes());
    let _ = s.shutdown(std::net::Shutdown::Write);
    read_response(&mut BufReader::new(s))
}
