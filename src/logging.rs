//! Log output: `tracing-subscriber`'s text format, or one JSON object per line.
//!
//! The JSON format is our own so that access-log lines, which carry their
//! fields as a pre-built JSON object (field names such as `tailscale.node`
//! come from the config and cannot be static `tracing` fields), are merged
//! into the line's object instead of being nested as a string.

use std::fmt;
use std::io::IsTerminal;

use serde_json::{Map, Value};
use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::EnvFilter;

use crate::access_log;
use crate::config::{Config, LogFormat};

/// `RUST_LOG` wins over `config.logging.level`; the default is `info`.
pub fn init(config: &Config) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        EnvFilter::try_new(config.logging.level.as_deref().unwrap_or("info"))
            .unwrap_or_else(|_| EnvFilter::new("info"))
    });
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_target(false);
    match config.logging.format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.event_format(JsonLines).init(),
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
        if meta.target() == access_log::TARGET {
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
