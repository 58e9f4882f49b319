//! One line per request, through `tracing`, after the response is written:
//!
//! `request src.addr=IP:PORT http.method=POST http.path=/mcp http.status=200
//! duration=3ms worker=0 tailscale.node=... tailscale.email=...`
//!
//! Built-in fields first, then `frontendPolicies.accessLog.add` fields in
//! config order (a field whose expression fails is left out); `remove` drops
//! fields by name and `filter` (CEL) keeps or drops the whole line. With
//! `config.logging.format: json` the line is one JSON object instead.

use std::fmt::Write;
use std::time::Duration;

use tracing::info;

use crate::config::LogFormat;
use crate::http::response::Response;
use crate::pipeline::{Handled, Request};
use crate::worker::{BindCtx, PeerAddr};

/// The `tracing` target of access-log events (filter it with `RUST_LOG`).
pub const TARGET: &str = "request";

/// Field names and values of one line, in order.
struct Line {
    fields: Vec<(&'static str, String)>,
    extra: Vec<(String, String)>,
}

/// Logs a request that reached the pipeline.
pub fn request(ctx: &BindCtx, req: &Request, handled: &Handled, elapsed: Duration) {
    if !tracing::enabled!(target: TARGET, tracing::Level::INFO) {
        return;
    }
    let cfg = &ctx.config().access_log;
    let headers = if cfg.add.is_empty() && cfg.filter.is_none() {
        Vec::new()
    } else {
        req.headers()
    };
    let mut vars = req.vars(&headers);
    vars.extauthz = handled.authz.as_ref().map(|d| d.metadata.as_slice());
    if let Some(filter) = &cfg.filter {
        if !filter.eval_bool(&vars).unwrap_or(false) {
            return;
        }
    }
    let mut line = Line {
        fields: vec![
            ("src.addr", req.peer.0.to_string()),
            ("http.method", req.method().to_string()),
            ("http.path", req.path().to_string()),
            ("http.status", handled.resp.status.to_string()),
        ],
        extra: Vec::new(),
    };
    if let Some(m) = &handled.mcp {
        line.fields.push(("protocol", "mcp".to_string()));
        if let Some(v) = &m.method {
            line.fields.push(("mcp.method.name", v.clone()));
        }
        if let Some(v) = &m.tool {
            line.fields.push(("gen_ai.tool.name", v.clone()));
        }
        if let Some(v) = &m.session {
            line.fields.push(("mcp.session.id", v.clone()));
        }
    }
    if let Some(route) = handled.route {
        line.fields.push(("route", route.name.clone()));
    }
    if let Some(source) = handled.authz_source {
        line.fields.push(("authz", source.as_str().to_string()));
    }
    line.fields
        .push(("duration", DurationText(elapsed).to_string()));
    line.fields.push(("worker", ctx.worker.id.0.to_string()));
    for (name, expr) in &cfg.add {
        if let Ok(v) = expr.eval(&vars) {
            line.extra.push((name.clone(), v.to_string()));
        }
    }
    if !cfg.remove.is_empty() {
        line.fields
            .retain(|(n, _)| !cfg.remove.iter().any(|r| r == n));
        line.extra.retain(|(n, _)| !cfg.remove.contains(n));
    }
    emit(ctx, &line);
}

/// Logs a request refused before routing (framing error, timeout).
pub fn refused(ctx: &BindCtx, peer: PeerAddr, resp: &Response) {
    if !tracing::enabled!(target: TARGET, tracing::Level::INFO) {
        return;
    }
    let line = Line {
        fields: vec![
            ("src.addr", peer.0.to_string()),
            ("http.status", resp.status.to_string()),
            ("worker", ctx.worker.id.0.to_string()),
            (
                "error",
                String::from_utf8_lossy(resp.body.as_slice()).into_owned(),
            ),
        ],
        extra: Vec::new(),
    };
    emit(ctx, &line);
}

fn emit(ctx: &BindCtx, line: &Line) {
    let all = line
        .fields
        .iter()
        .map(|(n, v)| (*n, v.as_str()))
        .chain(line.extra.iter().map(|(n, v)| (n.as_str(), v.as_str())));
    let mut out = String::with_capacity(256);
    match ctx.config().logging.format {
        LogFormat::Text => {
            out.push_str("request");
            for (n, v) in all {
                let _ = write!(out, " {n}=");
                if v.is_empty() || v.contains([' ', '"', '=']) {
                    let _ = write!(out, "{v:?}");
                } else {
                    out.push_str(v);
                }
            }
        }
        LogFormat::Json => {
            // A JSON object of its own; the JSON log formatter embeds it whole.
            let mut map = serde_json::Map::new();
            for (n, v) in all {
                map.insert(n.to_string(), serde_json::Value::String(v.to_string()));
            }
            out = serde_json::Value::Object(map).to_string();
        }
    }
    info!(target: TARGET, "{out}");
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
