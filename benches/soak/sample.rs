//! ringgate's resources from /proc, and its `/metrics`.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use crate::procs;

/// One look at the ringgate process.
#[derive(Debug, Clone, Copy, Default)]
pub struct Resources {
    pub rss_kib: u64,
    /// Peak RSS since the last reset (`VmHWM`).
    pub hwm_kib: u64,
    pub fds: usize,
    pub threads: usize,
    /// Live descendants (the MCP children and anything they started).
    pub children: usize,
}

impl Resources {
    pub fn of(pid: u32) -> Resources {
        Resources {
            rss_kib: procs::vm_kib(pid, "VmRSS"),
            hwm_kib: procs::vm_kib(pid, "VmHWM"),
            fds: std::fs::read_dir(format!("/proc/{pid}/fd"))
                .map(|d| d.count())
                .unwrap_or(0),
            threads: status_field(pid, "Threads") as usize,
            children: procs::descendants(pid)
                .into_iter()
                .filter(|p| procs::alive(*p))
                .count(),
        }
    }

    /// The larger of each figure.
    pub fn max(self, o: Resources) -> Resources {
        Resources {
            rss_kib: self.rss_kib.max(o.rss_kib),
            hwm_kib: self.hwm_kib.max(o.hwm_kib),
            fds: self.fds.max(o.fds),
            threads: self.threads.max(o.threads),
            children: self.children.max(o.children),
        }
    }

    pub fn line(&self) -> String {
        format!(
            "RSS {:.1} MiB (HWM {:.1}), fds {}, threads {}, children {}",
            mib(self.rss_kib),
            mib(self.hwm_kib),
            self.fds,
            self.threads,
            self.children
        )
    }
}

/// ringgate's open fds by kind (`socket`, `pipe`, `anon_inode:[eventfd]`,
/// a file path...), to say what a changed count is made of.
pub fn fd_kinds(pid: u32) -> BTreeMap<String, usize> {
    let mut out = BTreeMap::new();
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return out;
    };
    for e in dir.flatten() {
        let Ok(t) = std::fs::read_link(e.path()) else {
            continue;
        };
        let t = t.display().to_string();
        let kind = match t.split_once(":[") {
            Some((k, _)) if k == "socket" || k == "pipe" => k.to_string(),
            _ => t,
        };
        *out.entry(kind).or_default() += 1;
    }
    out
}

pub fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

fn status_field(pid: u32, key: &str) -> u64 {
    let Ok(s) = std::fs::read_to_string(format!("/proc/{pid}/status")) else {
        return 0;
    };
    s.lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// A parsed `/metrics` page: `name{labels}` -> value.
#[derive(Debug, Clone, Default)]
pub struct Metrics(pub BTreeMap<String, f64>);

impl Metrics {
    /// GET /metrics on the stats address (a plain blocking request: the
    /// stats listener answers one connection at a time and closes it).
    pub fn scrape(addr: SocketAddr) -> Result<Metrics, String> {
        let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
            .map_err(|e| format!("connect {addr}: {e}"))?;
        s.set_read_timeout(Some(Duration::from_secs(10)))
            .map_err(|e| e.to_string())?;
        s.write_all(b"GET /metrics HTTP/1.1\r\nHost: soak\r\nConnection: close\r\n\r\n")
            .map_err(|e| e.to_string())?;
        let mut raw = Vec::new();
        s.read_to_end(&mut raw).map_err(|e| e.to_string())?;
        let text = String::from_utf8_lossy(&raw);
        let (head, body) = text.split_once("\r\n\r\n").ok_or("no head in /metrics")?;
        if !head.starts_with("HTTP/1.1 200") {
            return Err(format!("/metrics: {}", head.lines().next().unwrap_or("")));
        }
        let mut m = BTreeMap::new();
        for line in body.lines().filter(|l| !l.starts_with('#')) {
            if let Some((k, v)) = line.rsplit_once(' ') {
                if let Ok(v) = v.trim().parse::<f64>() {
                    m.insert(k.to_string(), v);
                }
            }
        }
        Ok(Metrics(m))
    }

    pub fn get(&self, key: &str) -> f64 {
        self.0.get(key).copied().unwrap_or(0.0)
    }

    /// `ringgate_requests_total` by (route, status).
    pub fn requests(&self) -> BTreeMap<(String, u16), u64> {
        let mut out = BTreeMap::new();
        for (k, v) in &self.0 {
            let Some(labels) = k
                .strip_prefix("ringgate_requests_total{")
                .and_then(|l| l.strip_suffix('}'))
            else {
                continue;
            };
            let label = |name: &str| {
                labels.split(',').find_map(|kv| {
                    let (k, v) = kv.split_once('=')?;
                    (k == name).then(|| v.trim_matches('"').to_string())
                })
            };
            if let (Some(route), Some(status)) = (label("route"), label("status")) {
                if let Ok(status) = status.parse() {
                    out.insert((route, status), *v as u64);
                }
            }
        }
        out
    }

    /// Counters whose name starts with `prefix`, by full key.
    pub fn with_prefix(&self, prefix: &str) -> BTreeMap<String, f64> {
        self.0
            .iter()
            .filter(|(k, _)| k.starts_with(prefix))
            .map(|(k, v)| (k.clone(), *v))
            .collect()
    }
}

/// `after - before` for each key of either.
pub fn delta<K: Ord + Clone>(
    before: &BTreeMap<K, u64>,
    after: &BTreeMap<K, u64>,
) -> BTreeMap<K, i64> {
    let mut out = BTreeMap::new();
    for k in before.keys().chain(after.keys()) {
        let b = before.get(k).copied().unwrap_or(0) as i64;
        let a = after.get(k).copied().unwrap_or(0) as i64;
        out.insert(k.clone(), a - b);
    }
    out
}
