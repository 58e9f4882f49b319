//! One line per request, through `tracing`, after the response is written.

use std::fmt::Write;
use std::time::Duration;

use tracing::info;

use crate::http::response::Response;
use crate::pipeline::Request;
use crate::worker::{BindCtx, PeerAddr};

/// Logs a request that reached the pipeline.
pub fn request(ctx: &BindCtx, req: &Request, resp: &Response, elapsed: Duration) {
    if !tracing::enabled!(target: "request", tracing::Level::INFO) {
        return;
    }
    let mut line = String::with_capacity(160);
    let _ = write!(
        line,
        "src.addr={} http.method={} http.path={} http.status={} worker={} duration={}",
        req.peer.0,
        req.method(),
        req.path(),
        resp.status,
        ctx.worker.id.0,
        DurationText(elapsed),
    );
    info!(target: "request", "request {line}");
}

/// Logs a request refused before routing (framing error, timeout).
pub fn refused(ctx: &BindCtx, peer: PeerAddr, resp: &Response) {
    info!(
        target: "request",
        "request src.addr={} http.status={} worker={} error=\"{}\"",
        peer.0,
        resp.status,
        ctx.worker.id.0,
        String::from_utf8_lossy(resp.body.as_slice()),
    );
}

/// `3ms`, `250us`, `1.2s`: short and readable.
struct DurationText(Duration);

impl std::fmt::Display for DurationText {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let us = self.0.as_micros();
        if us < 1000 {
            write!(f, "{us}us")
        } else if us < 10_000_000 {
            write!(f, "{}ms", us / 1000)
        } else {
            write!(f, "{:.1}s", self.0.as_secs_f64())
        }
    }
}
