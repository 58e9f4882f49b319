//! Log output: `tracing-subscriber`'s text format, or one JSON object per line.
//!
//! The JSON format is our own so that access-log lines, which carry their
//! fields as a pre-built JSON object (field names such as `tailscale.node`
//! come from the config and cannot be static `tracing` fields), are merged
//! into the line's object instead of being nested as a string.

use std::fmt;
use std::io::IsTerminal;

use serde_json::{Map, Value};
use std::sync::OnceLock;
use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;

use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{reload, EnvFilter, Registry};

pub mod sink;

use crate::config::{Config, LogFormat};

/// The `tracing` target of access-log events (filter it with `RUST_LOG`).
pub const ACCESS_LOG_TARGET: &str = "request";

/// Set when the filter came from `RUST_LOG`, which a reload must not override.
static FROM_ENV: OnceLock<bool> = OnceLock::new();
static RELOAD: OnceLock<reload::Handle<EnvFilter, Registry>> = OnceLock::new();

/// `RUST_LOG` wins over `config.logging.level`; the default is `info`.
/// Lines go to stderr through [`sink`]'s writer thread; hold the returned
/// guard until exit, so that the last lines are written.
pub fn init(config: &Config) -> sink::FlushGuard {
    let (filter, from_env) = match EnvFilter::try_from_default_env() {
        Ok(f) => (f, true),
        Err(_) => (level_filter(config.logging.level.as_deref()), false),
    };
    let (filter, handle) = reload::Layer::new(filter);
    let _ = RELOAD.set(handle);
    let _ = FROM_ENV.set(from_env);
    let guard = match sink::start() {
        Ok(g) => Some(g),
        Err(e) => {
            eprintln!("ringgate: no log writer thread ({e}); logging directly to stderr");
            None
        }
    };
    let ansi = std::io::stderr().is_terminal();
    let fmt = tracing_subscriber::fmt::layer()
        .with_writer(sink::MakeLine)
        .with_ansi(ansi)
        .with_target(false);
    let registry = tracing_subscriber::registry().with(filter);
    match config.logging.format {
        LogFormat::Text => {
            let full = tracing_subscriber::fmt::format().with_target(false);
            registry.with(fmt.event_format(TextLines { full })).init()
        }
        LogFormat::Json => registry.with(fmt.event_format(JsonLines)).init(),
    }
    guard.unwrap_or(sink::FlushGuard)
}

fn level_filter(level: Option<&str>) -> EnvFilter {
    EnvFilter::try_new(level.unwrap_or("info")).unwrap_or_else(|_| EnvFilter::new("info"))
}

/// Applies `config.logging.level` without a restart (on reload), unless
/// `RUST_LOG` set the filter.
pub fn set_level(level: Option<&str>) {
    if FROM_ENV.get().copied().unwrap_or(true) {
        return;
    }
    if let Some(h) = RELOAD.get() {
        let _ = h.reload(level_filter(level));
    }
}

/// `tracing-subscriber`'s text format, with a shorter way for access-log
/// lines: their message, already built with every value quoted and escaped
/// where needed (`access_log`), is written in one piece after the same
/// timestamp and level, instead of through the escaping writer that copies
/// it a character at a time (about a tenth of a worker's CPU with the log
/// on). With ANSI colours on (a terminal), every line takes the full path.
pub struct TextLines {
    full: tracing_subscriber::fmt::format::Format,
}

impl<S, N> FormatEvent<S, N> for TextLines
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let meta = event.metadata();
        if meta.target() != ACCESS_LOG_TARGET
            || writer.has_ansi_escapes()
            || ctx.lookup_current().is_some()
        {
            return self.full.format_event(ctx, writer, event);
        }
        use tracing_subscriber::fmt::time::FormatTime;
        tracing_subscriber::fmt::time::SystemTime.format_time(&mut writer)?;
        write!(writer, " {:>5} ", meta.level().as_str())?;
        let mut message = Message(&mut writer, Ok(()));
        event.record(&mut message);
        message.1?;
        writer.write_char('\n')
    }
}

/// Writes an event's `message` as it is.
struct Message<'a, 'w>(&'a mut Writer<'w>, fmt::Result);

impl Visit for Message<'_, '_> {
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        if field.name() == "message" {
            // A message's `fmt::Arguments` print the same with `{:?}`.
            self.1 = write!(self.0, "{value:?}");
        }
    }
}

/// One JSON object per event: `timestamp`, `level`, `target`, `message`, and
/// the event's fields; access-log events contribute their fields directly.
pub struct JsonLines;

impl<S, N> FormatEvent<S, N> for JsonLines
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        _ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let meta = event.metadata();
        let mut obj = Map::new();
        obj.insert(
            "timestamp".into(),
            Value::String(crate::http::date::rfc3339_now()),
        );
        obj.insert(
            "level".into(),
            Value::String(meta.level().as_str().to_ascii_lowercase()),
        );
        obj.insert("target".into(), Value::String(meta.target().into()));
        let mut fields = Fields(Map::new());
        event.record(&mut fields);
        let mut fields = fields.0;
        if meta.target() == ACCESS_LOG_TARGET {
            if let Some(Value::String(msg)) = fields.remove("message") {
                match serde_json::from_str::<Map<String, Value>>(&msg) {
                    Ok(inner) => {
                        obj.insert("message".into(), Value::String("request".into()));
                        obj.extend(inner);
                    }
                    Err(_) => {
                        obj.insert("message".into(), Value::String(msg));
                    }
                }
            }
        }
        obj.extend(fields);
        writeln!(writer, "{}", Value::Object(obj))
    }
}

struct Fields(Map<String, Value>);

impl Visit for Fields {
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.0
            .insert(field.name().into(), Value::String(format!("{value:?}")));
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0
            .insert(field.name().into(), Value::String(value.into()));
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.0.insert(field.name().into(), value.into());
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.0.insert(field.name().into(), value.into());
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.0.insert(field.name().into(), value.into());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};
    use tracing_subscriber::fmt::MakeWriter;

    #[derive(Clone, Default)]
    struct Buf(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Buf {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl<'a> MakeWriter<'a> for Buf {
        type Writer = Buf;
        fn make_writer(&'a self) -> Buf {
            self.clone()
        }
    }

    /// Lines as `tracing-subscriber`'s own text format writes them, and as
    /// `TextLines` does, without their timestamps.
    fn both(emit: impl Fn()) -> (String, String) {
        let run = |text_lines: bool| {
            let buf = Buf::default();
            let layer = tracing_subscriber::fmt::layer()
                .with_writer(buf.clone())
                .with_ansi(false)
                .with_target(false);
            let registry = tracing_subscriber::registry();
            if text_lines {
                let full = tracing_subscriber::fmt::format().with_target(false);
                let s = registry.with(layer.event_format(TextLines { full }));
                tracing::subscriber::with_default(s, &emit);
            } else {
                tracing::subscriber::with_default(registry.with(layer), &emit);
            }
            let out = String::from_utf8(buf.0.lock().unwrap().clone()).unwrap();
            // The timestamp is the first word of each line.
            out.lines()
                .map(|l| l.split_once(' ').map_or("", |(_, rest)| rest).to_string() + "\n")
                .collect::<String>()
        };
        (run(false), run(true))
    }

    /// The short way writes what the full format writes, byte for byte,
    /// for access lines (quoted values included) and for other events.
    #[test]
    fn access_lines_read_as_the_full_format_writes_them() {
        let (full, ours) = both(|| {
            let line = r#"request src.addr=127.0.0.1:5 http.path="/a b" who="x\"y" duration=3us"#;
            tracing::info!(target: ACCESS_LOG_TARGET, "{}", line);
            tracing::warn!(reason = "r", "external authorization failed");
            tracing::info!(target: ACCESS_LOG_TARGET, "{}", "request http.status=403");
        });
        assert_eq!(ours, full);
        assert!(ours.starts_with(" INFO request src.addr=127.0.0.1:5 http.path=\"/a b\""));
        assert_eq!(ours.lines().count(), 3, "{ours}");
    }
}
