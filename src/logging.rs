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
        LogFormat::Text => registry.with(fmt).init(),
        LogFormat::Json => registry.with(fmt.event_format(JsonLines)).init(),
    }
    ACCESS_DIRECT.store(
        config.logging.format == LogFormat::Text && !ansi && guard.is_some(),
        std::sync::atomic::Ordering::Relaxed,
    );
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

/// Set by [`init`] when access lines may skip `tracing`'s dispatch and
/// formatter: the text format without colours, with the writer thread on.
static ACCESS_DIRECT: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Whether access lines go straight to the log writer ([`access_line`]).
pub fn access_direct() -> bool {
    ACCESS_DIRECT.load(std::sync::atomic::Ordering::Relaxed)
}

/// Queues an access-log line (already filtered with `tracing::enabled!`)
/// straight to the log writer, as the text format would write it: the
/// caller began it with [`access_prefix`] (the same timestamp and level)
/// and wrote the message in one piece, already quoted and escaped field by
/// field (`access_log`). It skips `tracing`'s dispatch, its formatter, and
/// the escaping writer that copies a message one character at a time
/// (together about a tenth of a worker's CPU with the log on). Only when
/// [`access_direct`]: otherwise (JSON, colours) the line goes through
/// `tracing`.
pub fn access_line(mut line: String) {
    line.push('\n');
    sink::queue(line.as_bytes());
}

/// What the text format (no target, no colours) writes before an INFO
/// event's message: the timestamp and the level. `now` is the time the
/// caller already read (the end of its request).
pub fn access_prefix(out: &mut String, now: std::time::Instant) {
    timestamp(out, now);
    out.push_str("  INFO ");
}

/// A thread's clock anchor, and the text of the second last written.
struct Clock {
    /// When, on the monotonic clock, the wall clock read `wall`.
    at: std::time::Instant,
    wall: std::time::Duration,
    /// The second of `text`, since the Unix epoch.
    second: u64,
    /// `YYYY-MM-DDTHH:MM:SS`.
    text: String,
}

/// How long a thread's wall clock is derived from the monotonic reading
/// the caller brings before it is read again (so a stepped clock shows
/// within this time).
const CLOCK_ANCHOR: std::time::Duration = std::time::Duration::from_secs(1);

thread_local! {
    static CLOCK: std::cell::RefCell<Option<Clock>> = const { std::cell::RefCell::new(None) };
}

/// The time as `tracing-subscriber`'s `SystemTime` writes it,
/// `2026-12-06T09:54:06.123456Z`. The wall clock is read once a second per
/// thread and carried forward by `now`, and the date and time of day are
/// formatted once a second.
fn timestamp(out: &mut String, now: std::time::Instant) {
    let wall_now = || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
    };
    let micros = CLOCK.with(|c| {
        let mut c = c.borrow_mut();
        let k = c.get_or_insert_with(|| Clock {
            at: now,
            wall: wall_now(),
            second: u64::MAX,
            text: String::new(),
        });
        let wall = match now.checked_duration_since(k.at) {
            Some(since) if since < CLOCK_ANCHOR => k.wall + since,
            _ => {
                (k.at, k.wall) = (now, wall_now());
                k.wall
            }
        };
        let secs = wall.as_secs();
        if k.second != secs {
            k.text.clear();
            crate::http::date::rfc3339_second(secs, &mut k.text);
            k.second = secs;
        }
        out.push_str(&k.text);
        wall.subsec_micros()
    });
    let mut buf = [0; 20];
    let micros = crate::http::response::digits(micros.into(), 10, &mut buf);
    out.push('.');
    out.extend(std::iter::repeat_n(
        '0',
        6usize.saturating_sub(micros.len()),
    ));
    out.push_str(micros);
    out.push('Z');
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

    /// The lines `tracing-subscriber`'s text format writes for `emit`,
    /// without their timestamps (the first word).
    fn full_format(emit: impl Fn()) -> String {
        let buf = Buf::default();
        let layer = tracing_subscriber::fmt::layer()
            .with_writer(buf.clone())
            .with_ansi(false)
            .with_target(false);
        tracing::subscriber::with_default(tracing_subscriber::registry().with(layer), emit);
        let out = String::from_utf8(buf.0.lock().unwrap().clone()).unwrap();
        strip_timestamps(&out)
    }

    fn strip_timestamps(text: &str) -> String {
        text.lines()
            .map(|l| l.split_once(' ').map_or("", |(_, rest)| rest).to_string() + "\n")
            .collect()
    }

    /// The direct way writes what the full format writes, byte for byte
    /// (quoted values included), and its timestamp has the same shape.
    #[test]
    fn access_lines_read_as_the_full_format_writes_them() {
        let messages = [
            r#"request src.addr=127.0.0.1:5 http.path="/a b" who="x\"y" duration=3us"#,
            "request http.status=403",
        ];
        let full = full_format(|| {
            for m in messages {
                tracing::info!(target: ACCESS_LOG_TARGET, "{}", m);
            }
        });
        let ours: String = messages
            .iter()
            .map(|m| {
                let mut l = String::new();
                access_prefix(&mut l, std::time::Instant::now());
                l.push_str(m);
                l + "\n"
            })
            .collect();
        assert_eq!(strip_timestamps(&ours), full);
        assert!(full.starts_with(" INFO request src.addr=127.0.0.1:5 http.path=\"/a b\""));
        // 2026-12-06T09:54:06.123456Z
        let ts = ours.split(' ').next().unwrap();
        assert_eq!(ts.len(), 27, "{ts}");
        assert!(ts.ends_with('Z') && ts.as_bytes()[10] == b'T' && ts.as_bytes()[19] == b'.');
    }

    /// The cached date and time of day agree with `tracing-subscriber`'s
    /// own clock format (taken within the same second).
    #[test]
    fn timestamps_agree_with_the_text_formats() {
        use tracing_subscriber::fmt::time::FormatTime;
        for _ in 0..5 {
            let mut theirs = String::new();
            let _ = tracing_subscriber::fmt::time::SystemTime
                .format_time(&mut Writer::new(&mut theirs));
            let mut ours = String::new();
            timestamp(&mut ours, std::time::Instant::now());
            if theirs[..19] == ours[..19] {
                assert_eq!(ours.len(), theirs.len(), "{ours} {theirs}");
                assert!(ours.ends_with('Z') && ours.as_bytes()[19] == b'.', "{ours}");
                return;
            }
        }
        panic!("five tries crossed a second boundary or disagree");
    }
}
