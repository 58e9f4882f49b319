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
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tracing::info;

use crate::config::LogFormat;
use crate::context::BindCtx;
use crate::http::response::Response;
use crate::logging::ACCESS_LOG_TARGET as TARGET;
use crate::request::{Handled, PeerAddr, Request};

/// One line, written field by field into a single buffer.
struct Line<'c> {
    out: String,
    /// Where the message begins: after the timestamp and level when the
    /// line goes straight to the log writer, else 0.
    start: usize,
    json: bool,
    remove: &'c [String],
}

impl<'c> Line<'c> {
    /// A line for a request that ended at `now`.
    fn new(ctx: &'c BindCtx, now: Instant) -> Self {
        let cfg = ctx.config();
        let json = cfg.logging.format == LogFormat::Json;
        let mut out = String::with_capacity(320);
        if !json && crate::logging::access_direct() {
            crate::logging::access_prefix(&mut out, now);
        }
        Line::after(out, json, &cfg.access_log.remove)
    }

    #[cfg(test)]
    fn with(json: bool, remove: &'c [String]) -> Self {
        Line::after(String::with_capacity(256), json, remove)
    }

    /// A line whose message begins after what `out` holds.
    fn after(mut out: String, json: bool, remove: &'c [String]) -> Self {
        let start = out.len();
        out.push_str(if json { "{" } else { "request" });
        Line {
            out,
            start,
            json,
            remove,
        }
    }

    fn field(&mut self, name: &str, value: impl Display) {
        self.field_with(name, |out| {
            let _ = write!(out, "{value}");
        });
    }

    fn field_str(&mut self, name: &str, value: &str) {
        self.field_with(name, |out| out.push_str(value));
    }

    fn field_uint(&mut self, name: &str, value: u64) {
        self.field_with(name, |out| push_uint(out, value));
    }

    fn field_addr(&mut self, name: &str, addr: SocketAddr) {
        self.field_with(name, |out| match addr {
            SocketAddr::V4(a) => {
                for (i, o) in a.ip().octets().into_iter().enumerate() {
                    if i > 0 {
                        out.push('.');
                    }
                    push_uint(out, o.into());
                }
                out.push(':');
                push_uint(out, a.port().into());
            }
            SocketAddr::V6(_) => {
                let _ = write!(out, "{addr}");
            }
        });
    }

    /// Writes ` name=value` (or `"name":"value"`), the value by `write`,
    /// quoted and escaped when it must be.
    fn field_with(&mut self, name: &str, write: impl FnOnce(&mut String)) {
        if self.remove.iter().any(|r| r == name) {
            return;
        }
        if self.json {
            if self.out.len() > self.start + 1 {
                self.out.push(',');
            }
            push_json_str(&mut self.out, name);
            self.out.push_str(":\"");
            let at = self.out.len();
            write(&mut self.out);
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
            self.out.push(' ');
            self.out.push_str(name);
            self.out.push('=');
            let at = self.out.len();
            write(&mut self.out);
            if needs_text_quotes(&self.out[at..]) {
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
        let start = self.start;
        let line = self.finish();
        if start > 0 {
            crate::logging::access_line(line);
        } else {
            info!(target: TARGET, "{}", line);
        }
    }
}

/// A text value is quoted (as Rust's `{:?}` writes a string) when it is
/// empty or holds a space, a quote, an `=` or a control character.
fn needs_text_quotes(v: &str) -> bool {
    // One pass over the bytes; a non-ASCII byte sends the rest to the
    // check for (C1) control characters.
    const SPECIAL: [bool; 256] = {
        let mut t = [false; 256];
        let mut b = 0;
        while b < 256 {
            t[b] = b < 0x20 || b >= 0x7f || b == b' ' as usize || b == b'"' as usize;
            t[b] |= b == b'=' as usize;
            b += 1;
        }
        t
    };
    if v.is_empty() {
        return true;
    }
    match v.bytes().position(|b| SPECIAL[usize::from(b)]) {
        None => false,
        Some(i) if v.as_bytes()[i] < 0x80 => true,
        Some(i) => v[i..].contains(|c: char| c.is_control() || matches!(c, ' ' | '"' | '=')),
    }
}

/// Appends the decimal digits of `v`.
fn push_uint(out: &mut String, v: u64) {
    out.push_str(crate::http::response::digits(v, 10, &mut [0; 20]));
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
/// `started` is when its head was complete, `elapsed` how long it took.
pub fn request(
    ctx: &BindCtx,
    req: &Request,
    handled: &Handled,
    started: Instant,
    elapsed: Duration,
) {
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
    let mut line = Line::new(ctx, started + elapsed);
    line.field_addr("src.addr", req.peer.0);
    line.field_str("http.method", req.method());
    line.field_str("http.path", req.path());
    line.field_uint("http.status", handled.resp.status.into());
    if let Some(m) = &handled.mcp {
        line.field_str("protocol", "mcp");
        if let Some(v) = &m.method {
            line.field_str("mcp.method.name", v);
        }
        if let Some(v) = &m.tool {
            line.field_str("gen_ai.tool.name", v);
        }
        if let Some(v) = &m.target {
            line.field_str("mcp.target", v);
        }
        if let Some(v) = &m.session {
            line.field_str("mcp.session.id", v);
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
        line.field_str("route", &route.name);
    }
    if let Some(source) = handled.authz_source {
        line.field_str("authz", source.as_str());
    }
    line.field_with("duration", |out| push_duration(out, elapsed));
    line.field_uint("worker", ctx.worker.id.0 as u64);
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
    let mut line = Line::new(ctx, Instant::now());
    line.field_addr("src.addr", peer.0);
    line.field_uint("http.status", resp.status.into());
    line.field_uint("worker", ctx.worker.id.0 as u64);
    line.field("error", String::from_utf8_lossy(resp.body.as_slice()));
    line.emit();
}

/// `3ms`, `250us`, `1.2s`: short and readable.
fn push_duration(out: &mut String, d: Duration) {
    let us = d.as_micros() as u64;
    if us < 1000 {
        push_uint(out, us);
        out.push_str("us");
    } else if us < 10_000_000 {
        push_uint(out, us / 1000);
        out.push_str("ms");
    } else {
        let _ = write!(out, "{:.1}s", d.as_secs_f64());
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

    /// The number, address and duration writers write what `Display` does.
    #[test]
    fn fast_writers_match_display() {
        for v in [0u64, 7, 10, 403, 65_535, u64::MAX] {
            let mut out = String::new();
            push_uint(&mut out, v);
            assert_eq!(out, v.to_string());
        }
        for a in ["127.0.0.1:5", "10.200.0.255:65535", "[::1]:8080"] {
            let addr: SocketAddr = a.parse().unwrap();
            let mut l = Line::with(false, &[]);
            l.field_addr("src.addr", addr);
            assert_eq!(l.finish(), format!("request src.addr={a}"));
        }
        for (us, text) in [
            (0, "0us"),
            (999, "999us"),
            (1000, "1ms"),
            (9_999_999, "9999ms"),
        ] {
            let mut out = String::new();
            push_duration(&mut out, Duration::from_micros(us));
            assert_eq!(out, text);
        }
        let mut out = String::new();
        push_duration(&mut out, Duration::from_millis(12_345));
        assert_eq!(out, "12.3s");
        // The one-pass check says what the plain definition says.
        let plain =
            |v: &str| v.is_empty() || v.contains([' ', '"', '=']) || v.contains(char::is_control);
        for v in [
            "",
            "a",
            "a b",
            "a=b",
            "\"",
            "x\u{7f}",
            "\t",
            "a\u{85}b",
            "é",
            "é x",
            "é=",
            "ü\u{9f}",
            "node-1.tail.ts.net",
            "ada@example.com",
        ] {
            assert_eq!(needs_text_quotes(v), plain(v), "{v:?}");
        }
    }
}
