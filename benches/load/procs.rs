//! The processes under test: start, find their address, read their CPU time
//! and memory from /proc, and stop them with everything they started.
//!
//! Nothing may outlive the bench. Every process we start gets
//! `PR_SET_PDEATHSIG` (it dies with the bench, even one killed by a signal),
//! and the bench is a child subreaper, so the MCP children that ringgate
//! starts in their own process groups are handed to us, not to init, when
//! ringgate goes: [`Server::stop`] kills their groups and reaps them.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// How long a server may take to say where it listens.
const START_TIMEOUT: Duration = Duration::from_secs(20);
/// After SIGTERM, how long before SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(3);
/// Log lines kept for the error message of a failed run.
const KEPT_LOG_LINES: usize = 40;

/// The last 16 KiB of a file, as text.
fn tail(path: &std::path::Path) -> Option<String> {
    use std::io::{Read, Seek, SeekFrom};
    let mut f = std::fs::File::open(path).ok()?;
    let len = f.metadata().ok()?.len();
    f.seek(SeekFrom::Start(len.saturating_sub(16 * 1024)))
        .ok()?;
    let mut bytes = Vec::new();
    f.read_to_end(&mut bytes).ok()?;
    Some(String::from_utf8_lossy(&bytes).into_owned())
}

/// The repository's root.
pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// server-everything's entry point, as `tests/peers/setup.sh` installs it.
pub fn server_js() -> PathBuf {
    root().join("tests/peers/node_modules/@modelcontextprotocol/server-everything/dist/index.js")
}

/// Installs the MCP peers (`tests/peers/setup.sh`) when server-everything is
/// missing; `bench` names the caller in the message.
pub fn ensure_peers(bench: &str) {
    if server_js().is_file() {
        return;
    }
    eprintln!("{bench}: installing the MCP peers (tests/peers/setup.sh)");
    let ok = Command::new("bash")
        .arg(root().join("tests/peers/setup.sh"))
        .status()
        .is_ok_and(|s| s.success());
    assert!(ok && server_js().is_file(), "tests/peers/setup.sh failed");
}

/// The config the benchmarks run ringgate with: metrics and readiness on
/// ports of their own (several ringgates run at once here, and other work
/// on this host may hold the defaults), `head` at the top (the access-log
/// fields), and two routes under `policies`: `/hello` answering directly,
/// and `/mcp` bridged to `cmd args`.
pub fn ringgate_yaml(
    listener: &str,
    min_idle: usize,
    head: &str,
    policies: &str,
    cmd: &str,
    args: &[String],
) -> String {
    format!(
        r#"
config:
  mcp: {{minIdle: {min_idle}, stopGrace: 500ms}}
  statsAddr: 127.0.0.1:0
  readinessAddr: 127.0.0.1:0
{head}
binds:
- port: 0
  address: 127.0.0.1
  listeners:
  - name: {listener}
    protocol: HTTP
    routes:
    - name: hello
      matches: [{{path: {{exact: /hello}}}}]
      policies:{policies}
        directResponse: {{status: 200, body: "hello from ringgate\n"}}
    - name: mcp
      matches: [{{path: {{pathPrefix: /mcp}}}}]
      backends:
      - mcp:
          targets:
          - name: everything
            stdio: {{cmd: {cmd}, args: {args}}}
      policies:{policies}
"#,
        cmd = serde_json::to_string(cmd).unwrap(),
        args = serde_json::to_string(args).unwrap(),
    )
}

/// Makes orphaned descendants ours to reap (see the module doc).
pub fn become_subreaper() {
    // SAFETY: prctl with these arguments only sets a flag on this process.
    let rc = unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
    if rc != 0 {
        eprintln!(
            "load: PR_SET_CHILD_SUBREAPER failed ({}); orphans go to init",
            std::io::Error::last_os_error()
        );
    }
}

/// The child dies when the thread that started it (the bench's main
/// thread, which starts every process) exits.
pub fn die_with_parent(cmd: &mut Command) -> &mut Command {
    // SAFETY: the closure runs between fork and exec and only calls prctl,
    // which is async-signal-safe.
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        })
    }
}

/// A server process: ringgate or the baseline.
pub struct Server {
    pub name: &'static str,
    child: Option<Child>,
    pub addr: SocketAddr,
    /// Where ringgate serves `/metrics` (`config.statsAddr`), when on.
    pub stats_addr: Option<SocketAddr>,
    /// ringgate's log file.
    log: Option<PathBuf>,
    _dir: Option<tempfile::TempDir>,
}

impl Server {
    /// ringgate on `yaml` with `threads` workers; returns once every worker
    /// runs.
    pub fn ringgate(bin: &str, yaml: &str, threads: usize, rust_log: &str) -> Server {
        Self::ringgate_in_group(bin, yaml, threads, rust_log, false)
    }

    /// [`Server::ringgate`], optionally in a process group of its own, so
    /// that a Ctrl-C at the terminal reaches the bench (which then stops
    /// ringgate in order) and not ringgate directly.
    pub fn ringgate_in_group(
        bin: &str,
        yaml: &str,
        threads: usize,
        rust_log: &str,
        own_group: bool,
    ) -> Server {
        let dir = tempfile::tempdir().expect("temporary directory");
        let path = dir.path().join("ringgate.yaml");
        std::fs::write(&path, yaml).expect("write config");
        // The log goes to a file, as a deployed proxy's goes to a file or
        // journald: read through a pipe by this process, its lines would
        // cost the bench CPU on the cores ringgate is measured on.
        let log_path = dir.path().join("ringgate.log");
        let log_file = std::fs::File::create(&log_path).expect("create the log file");
        let mut cmd = Command::new(bin);
        cmd.arg("-f")
            .arg(&path)
            .arg("--threads")
            .arg(threads.to_string())
            .env("RUST_LOG", rust_log)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(log_file));
        if own_group {
            cmd.process_group(0);
        }
        die_with_parent(&mut cmd);
        let child = cmd.spawn().expect("start ringgate");
        let (tx, rx) = mpsc::channel();
        let reading = log_path.clone();
        // Reads the log only until every worker has started.
        std::thread::spawn(move || {
            let Ok(file) = std::fs::File::open(&reading) else {
                return;
            };
            let mut lines = BufReader::new(file);
            let (mut addr, mut stats, mut started) = (None, None, 0);
            let mut line = String::new();
            let until = Instant::now() + START_TIMEOUT;
            while Instant::now() < until {
                line.clear();
                match lines.read_line(&mut line) {
                    Ok(0) => {
                        std::thread::sleep(Duration::from_millis(10));
                        continue;
                    }
                    Ok(_) if !line.ends_with('\n') => {
                        // A line still being written: read it whole later.
                        let back = -(line.len() as i64);
                        let _ = lines.seek_relative(back);
                        std::thread::sleep(Duration::from_millis(10));
                        continue;
                    }
                    Ok(_) => {}
                    Err(_) => return,
                }
                let line = line.trim_end();
                if addr.is_none() && line.contains(" listening ") {
                    addr = field(line, "bind.addr").and_then(|a| a.parse::<SocketAddr>().ok());
                }
                if stats.is_none() && line.contains("stats listening") {
                    stats = field(line, "addr").and_then(|a| a.parse::<SocketAddr>().ok());
                }
                if line.contains("worker started") {
                    started += 1;
                    if started == threads {
                        let _ = tx.send((addr, stats));
                        return;
                    }
                }
            }
        });
        let mut s = Server {
            name: "ringgate",
            child: Some(child),
            addr: SocketAddr::from(([0, 0, 0, 0], 0)),
            stats_addr: None,
            log: Some(log_path),
            _dir: Some(dir),
        };
        match rx.recv_timeout(START_TIMEOUT) {
            Ok((Some(addr), stats)) => {
                s.addr = addr;
                s.stats_addr = stats;
            }
            _ => panic!("ringgate did not start:\n{}", s.log_tail()),
        }
        s
    }

    /// The fixed-response monoio server in this same executable.
    pub fn baseline(threads: usize) -> Server {
        let exe = std::env::current_exe().expect("current exe");
        let mut cmd = Command::new(exe);
        cmd.env(crate::ROLE_ENV, "baseline")
            .env(crate::baseline::WORKERS_ENV, threads.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        die_with_parent(&mut cmd);
        let mut child = cmd.spawn().expect("start baseline");
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            let first = lines.next().and_then(|l| l.ok());
            let _ = tx.send(first);
            for _ in lines {}
        });
        let line = rx.recv_timeout(START_TIMEOUT).ok().flatten();
        let addr = line
            .as_deref()
            .and_then(|l| l.strip_prefix("listening "))
            .and_then(|a| a.trim().parse().ok())
            .unwrap_or_else(|| panic!("baseline did not start: {line:?}"));
        Server {
            name: "baseline",
            child: Some(child),
            addr,
            stats_addr: None,
            log: None,
            _dir: None,
        }
    }

    /// nginx answering every request with the same fixed 403 ringgate sends
    /// a stranger: no auth, no log, `worker_processes` = `threads`, each
    /// with its own `reuseport` listener. `None` (with a note) when nginx is
    /// not installed (Debian: `apt-get install nginx-light`).
    pub fn nginx(threads: usize) -> Option<Server> {
        let bin = ["/usr/sbin/nginx", "/usr/local/sbin/nginx", "/usr/bin/nginx"]
            .into_iter()
            .find(|p| std::path::Path::new(p).exists())?;
        let dir = tempfile::tempdir().expect("temporary directory");
        // A free port: taken from the kernel, then released for nginx.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let conf = format!(
            "daemon off;\nmaster_process on;\nworker_processes {threads};\n\
             pid {dir}/nginx.pid;\nerror_log stderr error;\n\
             events {{ worker_connections 4096; }}\n\
             http {{\n  access_log off;\n  client_body_temp_path {dir};\n\
               keepalive_requests 1000000;\n  server_tokens off;\n\
               server {{\n    listen 127.0.0.1:{port} reuseport backlog=4096;\n\
                 location / {{ default_type text/plain; \
                 return 403 \"external authorization failed\"; }}\n  }}\n}}\n",
            dir = dir.path().display()
        );
        let path = dir.path().join("nginx.conf");
        std::fs::write(&path, conf).expect("write nginx.conf");
        let mut cmd = Command::new(bin);
        cmd.arg("-p")
            .arg(dir.path())
            .arg("-c")
            .arg(&path)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit());
        die_with_parent(&mut cmd);
        let child = cmd.spawn().expect("start nginx");
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let s = Server {
            name: "nginx",
            child: Some(child),
            addr,
            stats_addr: None,
            log: None,
            _dir: Some(dir),
        };
        let deadline = Instant::now() + START_TIMEOUT;
        while std::net::TcpStream::connect(addr).is_err() {
            assert!(Instant::now() < deadline, "nginx did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
        Some(s)
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, |c| c.id())
    }

    /// A counter or gauge from ringgate's `/metrics` (a line `NAME VALUE`).
    pub fn metric(&self, name: &str) -> Option<f64> {
        use std::io::{Read, Write};
        let wait = Duration::from_secs(2);
        let mut c = std::net::TcpStream::connect_timeout(&self.stats_addr?, wait).ok()?;
        c.set_read_timeout(Some(wait)).ok()?;
        c.write_all(b"GET /metrics HTTP/1.0\r\nHost: bench\r\n\r\n")
            .ok()?;
        let (mut bytes, mut chunk) = (Vec::new(), [0u8; 16 * 1024]);
        let find = |bytes: &[u8]| {
            String::from_utf8_lossy(bytes)
                .lines()
                .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
        };
        while let Ok(n @ 1..) = c.read(&mut chunk) {
            bytes.extend_from_slice(&chunk[..n]);
            if let Some(v) = find(&bytes) {
                return Some(v);
            }
        }
        find(&bytes)
    }

    /// The last lines of ringgate's log.
    pub fn log_tail(&self) -> String {
        let Some(text) = self.log.as_ref().and_then(|p| tail(p)) else {
            return String::new();
        };
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(KEPT_LOG_LINES)..].join("\n")
    }

    /// Panics (with the log) if the server died.
    pub fn assert_running(&mut self) {
        if let Some(c) = self.child.as_mut() {
            if let Ok(Some(status)) = c.try_wait() {
                panic!("{} exited ({status}):\n{}", self.name, self.log_tail());
            }
        }
    }

    /// SIGTERM, then SIGKILL after a grace period; then every descendant
    /// seen before the signal is killed (by process group: MCP children
    /// lead their own) and reaped.
    pub fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let pid = child.id();
        let descendants = descendants(pid);
        signal(pid as i32, libc::SIGTERM);
        let deadline = Instant::now() + STOP_GRACE;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
        for d in &descendants {
            signal(-(*d as i32), libc::SIGKILL);
            signal(*d as i32, libc::SIGKILL);
        }
        reap(&descendants);
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Waits (bounded) for killed descendants, which are ours once orphaned.
pub fn reap(pids: &[u32]) {
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut left: Vec<u32> = pids.to_vec();
    while !left.is_empty() && Instant::now() < deadline {
        left.retain(|&p| {
            let mut status = 0;
            // SAFETY: waitpid on a specific pid with WNOHANG; it only writes
            // the status we pass.
            let r = unsafe { libc::waitpid(p as i32, &mut status, libc::WNOHANG) };
            // 0: still running (or a zombie of another parent). -1 (ECHILD):
            // not ours; then it is gone once /proc no longer shows it.
            match r {
                0 => true,
                -1 => alive(p),
                _ => false,
            }
        });
        if !left.is_empty() {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    if !left.is_empty() {
        eprintln!("load: processes still alive after stop: {left:?}");
    }
}

fn signal(pid: i32, sig: i32) {
    // SAFETY: kill(2) with a pid (or -pgid) we started; ESRCH is ignored.
    unsafe {
        libc::kill(pid, sig);
    }
}

/// True while the process exists and is not a zombie.
pub fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(s) => !matches!(state(&s), Some('Z') | Some('X')),
        Err(_) => false,
    }
}

fn state(stat: &str) -> Option<char> {
    stat.rsplit_once(')')?.1.trim_start().chars().next()
}

/// Children of `pid`, from /proc/PID/task/TID/children.
pub fn children(pid: u32) -> Vec<u32> {
    let mut out = Vec::new();
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return out;
    };
    for t in tasks.flatten() {
        if let Ok(s) = std::fs::read_to_string(t.path().join("children")) {
            out.extend(s.split_whitespace().filter_map(|p| p.parse::<u32>().ok()));
        }
    }
    out
}

/// Every descendant of `pid`, parents before their children.
pub fn descendants(pid: u32) -> Vec<u32> {
    let mut out = Vec::new();
    let mut queue = vec![pid];
    while let Some(p) = queue.pop() {
        for c in children(p) {
            out.push(c);
            queue.push(c);
        }
    }
    out
}

fn clock_ticks() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as f64
    } else {
        100.0
    }
}

/// User plus system CPU seconds of one process (all its threads, live or
/// exited).
pub fn cpu_seconds(pid: u32) -> f64 {
    let Ok(s) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0.0;
    };
    let Some((_, rest)) = s.rsplit_once(')') else {
        return 0.0;
    };
    // After the command: state is field 3; utime and stime are 14 and 15.
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    (ticks(11) + ticks(12)) as f64 / clock_ticks()
}

/// CPU seconds of the processes given (a tree snapshot).
pub fn cpu_seconds_of(pids: &[u32]) -> f64 {
    pids.iter().map(|p| cpu_seconds(*p)).sum()
}

/// This process's own CPU seconds (the load generator, the fake whois).
pub fn self_cpu_seconds() -> f64 {
    // SAFETY: getrusage only writes the struct we pass.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

/// A `Vm*` line of /proc/PID/status, in KiB.
pub fn vm_kib(pid: u32, key: &str) -> u64 {
    let Ok(s) = std::fs::read_to_string(format!("/proc/{pid}/status")) else {
        return 0;
    };
    s.lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// Resets the peak RSS (`VmHWM`) to the current RSS, so each measurement
/// reports its own peak. False where the kernel does not allow it.
pub fn reset_peak_rss(pid: u32) -> bool {
    std::fs::write(format!("/proc/{pid}/clear_refs"), "5").is_ok()
}

/// Waits until `pid` and its descendants have used (almost) no CPU for
/// `quiet`: children spawned by a warm pool have loaded. Bounded by
/// `max`; returns whether it got quiet.
pub fn wait_quiet(pid: u32, quiet: Duration, max: Duration) -> bool {
    const STEP: Duration = Duration::from_millis(50);
    /// Less CPU than this over `quiet` counts as idle.
    const IDLE_CPU_SECONDS: f64 = 0.02;
    let deadline = Instant::now() + max;
    let tree = |pid| {
        let mut all = descendants(pid);
        all.push(pid);
        cpu_seconds_of(&all)
    };
    let mut since = Instant::now();
    let mut base = tree(pid);
    while Instant::now() < deadline {
        std::thread::sleep(STEP);
        let now = tree(pid);
        if now - base > IDLE_CPU_SECONDS {
            since = Instant::now();
            base = now;
        } else if since.elapsed() >= quiet {
            return true;
        }
    }
    false
}

/// `key=value` in a log line (the value ends at the next space).
fn field(line: &str, key: &str) -> Option<String> {
    let pat = format!("{key}=");
    let start = line.find(&pat)? + pat.len();
    let rest = &line[start..];
    let end = rest.find(' ').unwrap_or(rest.len());
    Some(rest[..end].trim_matches('"').to_string())
}
