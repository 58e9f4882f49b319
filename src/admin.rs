//! The admin listeners: Prometheus metrics (`config.statsAddr`) and readiness
//! (`config.readinessAddr`), each on its own thread with blocking std I/O,
//! away from the workers. They answer one request per connection.

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tracing::{info, warn};

use crate::lifecycle::Controls;
use crate::stats;

/// What the admin endpoints read.
#[derive(Clone)]
pub struct AdminState {
    pub controls: Arc<Controls>,
    pub live_children: Arc<AtomicUsize>,
}

/// A time limit for reading a request and writing an answer.
const IO_TIMEOUT: Duration = Duration::from_secs(2);

pub fn serve_stats(addr: SocketAddr, state: AdminState) -> std::io::Result<SocketAddr> {
    serve(addr, "stats", move |path| match path {
        "/metrics" | "/stats/prometheus" => {
            let snaps = state.controls.scrape();
            let body = stats::render(&snaps, state.live_children.load(Ordering::Relaxed));
            (200, "text/plain; version=0.0.4", body)
        }
        _ => (404, "text/plain", "not found\n".into()),
    })
}

pub fn serve_readiness(addr: SocketAddr, state: AdminState) -> std::io::Result<SocketAddr> {
    serve(addr, "readiness", move |path| match path {
        "/healthz/ready" => {
            let (ready, why) = readiness(&state);
            (
                if ready { 200 } else { 503 },
                "text/plain",
                format!("{why}\n"),
            )
        }
        _ => (404, "text/plain", "not found\n".into()),
    })
}

/// Ready when a new MCP session can be taken now: every worker runs (so
/// every listener is bound) and, for every MCP target, some worker holds an
/// idle child, or fewer than `maxLive` children live (one can be spawned,
/// unless spawns are failing), or an idle session can be evicted to make
/// room. Not ready while draining. Whether the taking worker itself holds an
/// idle child does not matter: an `initialize` goes where one is.
fn readiness(state: &AdminState) -> (bool, String) {
    if state.controls.is_draining() {
        return (false, "draining".into());
    }
    let snaps = state.controls.scrape();
    if snaps.len() < state.controls.workers.len() {
        return (
            false,
            format!(
                "{} of {} workers up",
                snaps.len(),
                state.controls.workers.len()
            ),
        );
    }
    let live = state.live_children.load(Ordering::Relaxed);
    let evictable: u64 = snaps.iter().map(|s| s.idle_sessions).sum();
    // Pools are labelled `target/wN`: one entry per worker and target.
    let mut targets: std::collections::BTreeMap<&str, (usize, usize, bool)> =
        std::collections::BTreeMap::new();
    for p in snaps.iter().flat_map(|s| &s.pools) {
        let target = p
            .target
            .rsplit_once("/w")
            .map_or(p.target.as_str(), |(t, _)| t);
        let e = targets.entry(target).or_insert((0, p.max_live, true));
        e.0 += p.idle;
        e.2 &= p.backing_off;
    }
    for (target, (idle, max_live, failing)) in targets {
        // Eviction frees a slot only for a spawn, so it helps only then.
        if idle == 0 && (failing || (live >= max_live && evictable == 0)) {
            let why = if failing {
                "spawns failing"
            } else {
                "no idle session to evict"
            };
            return (
                false,
                format!("{target}: no idle child, {live} of {max_live} children live, {why}"),
            );
        }
    }
    (true, "ready".into())
}

fn serve(
    addr: SocketAddr,
    name: &'static str,
    handler: impl Fn(&str) -> (u16, &'static str, String) + Send + 'static,
) -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind(addr)?;
    let bound = listener.local_addr()?;
    info!(addr = %bound, "{name} listening");
    std::thread::Builder::new()
        .name(format!("ringgate-{name}"))
        .spawn(move || {
            for conn in listener.incoming() {
                match conn {
                    Ok(s) => {
                        if let Err(e) = answer(s, &handler) {
                            warn!(error = %e, "{name}: request failed");
                        }
                    }
                    Err(e) => {
                        warn!(error = %e, "{name}: accept failed");
                        std::thread::sleep(Duration::from_millis(50));
                    }
                }
            }
        })?;
    Ok(bound)
}

fn answer(
    stream: TcpStream,
    handler: &impl Fn(&str) -> (u16, &'static str, String),
) -> std::io::Result<()> {
    stream.set_read_timeout(Some(IO_TIMEOUT))?;
    stream.set_write_timeout(Some(IO_TIMEOUT))?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut line = String::new();
    reader.read_line(&mut line)?;
    // Skip the headers; the answer does not depend on them.
    let mut header = String::new();
    while reader.read_line(&mut header)? > 2 {
        header.clear();
    }
    let mut parts = line.split(' ');
    let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let path = path.split('?').next().unwrap_or(path);
    let (status, ctype, body) = if method == "GET" {
        handler(path)
    } else {
        (405, "text/plain", "method not allowed\n".into())
    };
    let mut out = stream;
    write!(
        out,
        "HTTP/1.1 {status} {}\r\ncontent-type: {ctype}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        crate::http::reason_phrase(status),
        body.len()
    )?;
    out.flush()
}
