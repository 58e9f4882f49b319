//! Scenario 5: memory after large payloads. ringgate starts with its warm
//! pool, its idle RSS is noted, then one kept-alive connection posts a
//! 12 MiB body to the `directResponse` route and an MCP session echoes a
//! 9 MiB message through its child (server-everything takes lines up to
//! 10 MiB). Both connections stay open, as a client's would; RSS is then
//! sampled once a second until it is back within [`BACK_WITHIN_KIB`] of
//! idle, for at most [`WATCH`].

use std::io::Write as _;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use crate::client::{block_on, HttpConn, McpSession};
use crate::procs::{self, Server};

/// How far above idle RSS counts as back (the target: idle + 5 MiB).
pub const BACK_WITHIN_KIB: u64 = 5 * 1024;
/// How long RSS is watched after the payloads (the target: inside 60 s).
pub const WATCH: Duration = Duration::from_secs(60);
const BODY_BYTES: usize = 12 * 1024 * 1024;
const ECHO_BYTES: usize = 9 * 1024 * 1024;

pub struct Payload {
    pub workers: usize,
    pub idle_kib: u64,
    pub peak_kib: u64,
    /// RSS right after both answers came back.
    pub after_kib: u64,
    /// RSS at the last sample.
    pub last_kib: u64,
    /// When RSS was back within `BACK_WITHIN_KIB` of idle, after the answers.
    pub back_after: Option<Duration>,
}

/// The bench's config with bodies up to 16 MiB.
pub fn yaml(base: &str) -> String {
    base.replacen(
        "config:\n",
        "config:\n  http: {maxBodyBytes: 16777216}\n",
        1,
    )
}

/// Runs the scenario on a ringgate already started on [`yaml`]'s config.
pub fn after_payloads(rg: &Server, src: IpAddr, workers: usize) -> Result<Payload, String> {
    let pid = rg.pid();
    procs::wait_quiet(pid, Duration::from_millis(500), Duration::from_secs(20));
    let idle_kib = procs::vm_kib(pid, "VmRSS");
    procs::reset_peak_rss(pid);
    let addr: SocketAddr = rg.addr;
    block_on(async move {
        let mut conn = HttpConn::connect(src, addr)
            .and_then(HttpConn::new)
            .map_err(|e| format!("connect: {e}"))?;
        let mut req = Vec::with_capacity(BODY_BYTES + 256);
        let _ = write!(
            req,
            "POST /hello HTTP/1.1\r\nHost: ringgate.bench\r\nContent-Type: application/octet-stream\r\nContent-Length: {BODY_BYTES}\r\n\r\n"
        );
        req.resize(req.len() + BODY_BYTES, b'x');
        let (_, resp) = conn.roundtrip(req).await.map_err(|e| e.to_string())?;
        if resp.status != 200 {
            return Err(format!("12 MiB POST: {}", resp.status));
        }
        let (mut session, _) = McpSession::open(addr, src).await?;
        session.echo(2, &"y".repeat(ECHO_BYTES)).await?;
        let after_kib = procs::vm_kib(pid, "VmRSS");
        let peak_kib = procs::vm_kib(pid, "VmHWM");
        let t0 = Instant::now();
        let mut back_after = None;
        let mut last_kib = after_kib;
        while t0.elapsed() < WATCH {
            last_kib = procs::vm_kib(pid, "VmRSS");
            if last_kib <= idle_kib + BACK_WITHIN_KIB {
                back_after = Some(t0.elapsed());
                break;
            }
            monoio::time::sleep(Duration::from_secs(1)).await;
        }
        session.delete().await?;
        conn.close().await;
        Ok(Payload {
            workers,
            idle_kib,
            peak_kib,
            after_kib,
            last_kib,
            back_after,
        })
    })
}
