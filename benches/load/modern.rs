//! Scenario 3's 2026-07-28 clients: `tools/call echo` as stateless POSTs
//! (no `initialize`, no session id; the version, capabilities and header
//! checks' `Mcp-Method` / `Mcp-Name` on every request), multiplexed by
//! ringgate over its shared children (`mcp.sharedChildren` per worker and
//! target). One keep-alive connection per client, as the load's other
//! clients have.

use std::net::{IpAddr, SocketAddr};
use std::time::Instant;

use super::{contains, echoed, Client, HttpConn, Recorder};

/// The revision the clients speak.
pub const VERSION: &str = "2026-07-28";

pub struct ModernClient {
    conn: HttpConn,
    name: String,
    next_id: u64,
    out: Vec<u8>,
}

/// The POST of one modern `tools/call echo`.
pub fn echo_request(out: &mut Vec<u8>, id: u64, message: &str) {
    use std::io::Write;
    let body = format!(
        r#"{{"jsonrpc":"2.0","id":{id},"method":"tools/call","params":{{"name":"echo","arguments":{{"message":"{message}"}},"_meta":{{"io.modelcontextprotocol/protocolVersion":"{VERSION}","io.modelcontextprotocol/clientCapabilities":{{}}}}}}}}"#
    );
    out.clear();
    let _ = write!(
        out,
        "POST /mcp HTTP/1.1\r\nHost: ringgate.bench\r\nAccept: application/json, text/event-stream\r\nContent-Type: application/json\r\nMCP-Protocol-Version: {VERSION}\r\nMcp-Method: tools/call\r\nMcp-Name: echo\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
}

impl ModernClient {
    /// Connects; the first call (made here, outside the measurement) also
    /// waits for the shared children to start.
    pub async fn open(addr: SocketAddr, src: IpAddr, name: String) -> Result<Client, String> {
        let conn = HttpConn::connect(src, addr)
            .and_then(HttpConn::new)
            .map_err(|e| format!("connect: {e}"))?;
        let mut c = ModernClient {
            conn,
            name,
            next_id: 1,
            out: Vec::with_capacity(512),
        };
        c.echo().await?;
        Ok(Client::Modern(c))
    }

    async fn echo(&mut self) -> Result<(), String> {
        let n = self.next_id;
        self.next_id += 1;
        let msg = format!("{}-{n}", self.name);
        echo_request(&mut self.out, n, &msg);
        let out = std::mem::take(&mut self.out);
        let (out, resp) = self.conn.roundtrip(out).await.map_err(|e| e.to_string())?;
        self.out = out;
        let want = echoed(&msg);
        if resp.status != 200 || !contains(&resp.body, want.as_bytes()) {
            return Err(format!(
                "modern tools/call {n}: {} {}",
                resp.status,
                String::from_utf8_lossy(&resp.body)
            ));
        }
        Ok(())
    }

    pub async fn run(mut self, rec: &Recorder) -> Option<ModernClient> {
        while !rec.stopped() {
            let t0 = Instant::now();
            if let Err(e) = self.echo().await {
                rec.error(e);
                return None;
            }
            rec.record(t0, Instant::now());
        }
        Some(self)
    }

    pub async fn close(self) {
        self.conn.close().await;
    }
}
