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
    let fmt = tracing_subscriber::fmt::layer()
        .with_writer(sink::MakeLine)
        .with_ansi(std::io::stderr().is_terminal())
        .with_target(false);
    let registry = tracing_subscriber::registry().with(filter);
    match config.logging.format {
        LogFormat::Text => registry.with(fmt).init(),
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
