//! One line per request, through `tracing`, after the response is written:
//!
//! `request src.addr=IP:PORT http.method=POST http.path=/mcp http.status=200
//! duration=3ms worker=0 tailscale.node=... tailscale.email=...`
//!
//! On a route with `mcpAuthorization`, an MCP call's line carries
//! `mcp.authz=allow|deny` (`filter` for a list request) next to the method
//! and the tool (`gen_ai.tool.name`), prompt or resource it named.
//!
//! Built-in fields first, then `frontendPolicies.accessLog.add` fields in
//! config order (a field whose expression fails is left out); `remove` drops
//! fields by name and `filter` (CEL) keeps or drops the whole line. With
//! `config.logging.format: json` the line is one JSON object instead.

use std::fmt::{Display, Write};
use std::time::Duration;

use tracing::info;

use crate::config::LogFormat;
use crate::context::BindCtx;
use crate::http::response::Response;
use crate::logging::ACCESS_LOG_TARGET as TARGET;
use crate::request::{Handled, PeerAddr, Request};

/// One line, written field by field into a single buffer.
struct Line<'c> {
    out: String,
    json: bool,
    remove: &'c [String],
}

impl<'c> Line<'c> {
    fn new(ctx: &'c BindCtx) -> Self {
        let cfg = ctx.config();
        Line::with(
            cfg.logging.format == LogFormat::Json,
            &cfg.access_log.remove,
        )
    }

    fn with(json: bool, remove: &'c [String]) -> Self {
        let mut out = String::with_capacity(256);
        out.push_str(if json { "{" } else { "request" });
        Line { out, json, remove }
    }

    fn field(&mut self, name: &str, value: impl Display) {
        if self.remove.iter().any(|r| r == name) {
            return;
        }
        if self.json {
            if self.out.len() > 1 {
                self.out.push(',');
            }
            push_json_str(&mut self.out, name);
            self.out.push_str(":\"");
            let at = self.out.len();
            let _ = write!(self.out, "{value}");
            // Written in place between quotes; the rare value that needs
            // escaping is taken out and written again as a JSON string.
            if needs_json_escape(&self.out[at..]) {
                let v = self.out.split_off(at);
                self.out.pop();
                push_json_str(&mut self.out, &v);
            } else {
                self.out.push('"');
            }
        } else {
            let _ = write!(self.out, " {name}=");
            let at = self.out.len();
            let _ = write!(self.out, "{value}");
            let v = &self.out[at..];
            if v.is_empty() || v.contains([' ', '"', '=']) || v.contains(char::is_control) {
                let v = self.out.split_off(at);
                let _ = write!(self.out, "{v:?}");
            }
        }
    }

    fn finish(mut self) -> String {
        if self.json {
            // A JSON object of its own; the JSON log formatter embeds it whole.
            self.out.push('}');
        }
        self.out
    }

    fn emit(self) {
        let line = self.finish();
        if !crate::logging::access_line(&line) {
            info!(target: TARGET, "{}", line);
        }
    }
}

fn needs_json_escape(s: &str) -> bool {
    s.bytes()
        .any(|b| b == b'"' || b == b'\\' || b < 0x20 || b == 0x7f)
}

/// Appends `s` as a JSON string.
fn push_json_str(out: &mut String, s: &str) {
    if needs_json_escape(s) {
        out.push_str(&serde_json::Value::from(s).to_string());
    } else {
        out.push('"');
        out.push_str(s);
        out.push('"');
    }
}

/// Logs a request that reached the pipeline.
pub fn request(ctx: &BindCtx, req: &Request, handled: &Handled, elapsed: Duration) {
    if !tracing::enabled!(target: TARGET, tracing::Level::INFO) {
        return;
    }
    let cfg = &ctx.config().access_log;
    // Request headers are gathered only for expressions that may read them.
    let needs_headers =
        cfg.filter.is_some() || cfg.add.iter().any(|(_, e)| e.extauthz_key().is_none());
    let headers = if needs_headers {
        req.headers()
    } else {
        Vec::new()
    };
    let mut vars = req.vars(&headers);
    vars.extauthz = handled.authz.as_ref().map(|d| d.metadata.as_slice());
    if let Some(filter) = &cfg.filter {
        if !filter.eval_bool(&vars).unwrap_or(false) {
            return;
        }
    }
    let mut line = Line::new(ctx);
    line.field("src.addr", req.peer.0);
    line.field("http.method", req.method());
    line.field("http.path", req.path());
    line.field("http.status", handled.resp.status);
    if let Some(m) = &handled.mcp {
        line.field("protocol", "mcp");
        if let Some(v) = &m.method {
            line.field("mcp.method.name", v);
        }
        if let Some(v) = &m.tool {
            line.field("gen_ai.tool.name", v);
        }
        if let Some(v) = &m.target {
            line.field("mcp.target", v);
        }
        if let Some(v) = &m.session {
            line.field("mcp.session.id", v);
        }
        if let Some(d) = m.authz {
            line.field("mcp.authz", d);
            // The tool is logged above; prompts and resources here.
            match (m.method.as_deref(), &m.authz_name) {
                (Some("prompts/get"), Some(n)) => line.field("gen_ai.prompt.name", n),
                (Some(method), Some(n)) if method.starts_with("resources/") => {
                    line.field("mcp.resource.uri", n)
                }
                _ => {}
            }
        }
    }
    if let Some(route) = handled.route {
        line.field("route", &route.name);
    }
    if let Some(source) = handled.authz_source {
        line.field("authz", source.as_str());
    }
    line.field("duration", DurationText(elapsed));
    line.field("worker", ctx.worker.id.0);
    for (name, expr) in &cfg.add {
        // A field whose expression fails (no such metadata) is left out.
        match expr.extauthz_key() {
            Some(key) => {
                let found = vars.extauthz.and_then(|m| m.iter().find(|(k, _)| k == key));
                if let Some((_, v)) = found {
                    line.field(name, v);
                }
            }
            None => {
                if let Ok(v) = expr.eval(&vars) {
                    line.field(name, v);
                }
            }
        }
    }
    line.emit();
}

/// Logs a request refused before routing (framing error, timeout).
pub fn refused(ctx: &BindCtx, peer: PeerAddr, resp: &Response) {
    if !tracing::enabled!(target: TARGET, tracing::Level::INFO) {
        return;
    }
    let mut line = Line::new(ctx);
    line.field("src.addr", peer.0);
    line.field("http.status", resp.status);
    line.field("worker", ctx.worker.id.0);
    line.field("error", String::from_utf8_lossy(resp.body.as_slice()));
    line.emit();
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

#[cfg(test)]
mod tests {
    use super::*;

    fn line(json: bool, remove: &[String]) -> String {
        let mut l = Line::with(json, remove);
        l.field("http.path", "/mcp?a=b");
        l.field("http.status", 403);
        l.field("who", "Ada \"L\"\nx");
        l.field("empty", "");
        l.field("route", "application");
        l.finish()
    }

    #[test]
    fn text_lines_quote_what_would_be_ambiguous() {
        assert_eq!(
            line(false, &[]),
            r#"request http.path="/mcp?a=b" http.status=403 who="Ada \"L\"\nx" empty="" route=application"#
        );
        assert_eq!(
            line(false, &["who".into(), "http.path".into()]),
            r#"request http.status=403 empty="" route=application"#
        );
    }

    #[test]
    fn json_lines_are_objects_in_field_order() {
        let s = line(true, &["route".into()]);
        assert_eq!(
            s,
            r#"{"http.path":"/mcp?a=b","http.status":"403","who":"Ada \"L\"\nx","empty":""}"#
        );
        let v: serde_json::Value = serde_json::from_str(&s).unwrap();
        assert_eq!(v["who"], "Ada \"L\"\nx");
    }

    /// A structured extAuthz value (a whois `CapMap`) is written as compact
    /// JSON; a null one as `null`.
    #[test]
    fn structured_values_are_compact_json() {
        use crate::policy::cel::Value;
        let caps = Value::Map(vec![(
            Value::String("example.com/cap/mcp".into()),
            Value::List(vec![Value::Map(vec![(
                Value::String("tools".into()),
                Value::List(vec![Value::String("echo".into())]),
            )])]),
        )]);
        let mut l = Line::with(false, &[]);
        l.field("caps", &caps);
        l.field("none", &Value::Null);
        assert_eq!(
            l.finish(),
            r#"request caps="{\"example.com/cap/mcp\":[{\"tools\":[\"echo\"]}]}" none=null"#
        );
        let mut l = Line::with(true, &[]);
        l.field("caps", &caps);
        let v: serde_json::Value = serde_json::from_str(&l.finish()).unwrap();
        assert_eq!(v["caps"], r#"{"example.com/cap/mcp":[{"tools":["echo"]}]}"#);
    }
}
