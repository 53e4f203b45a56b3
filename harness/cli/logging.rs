//! Log lines on standard error: text for people, or JSON shaped like Google Cloud Logging
//! entries, so the harness's logs read like the staging logs they reproduce and
//! `racegate import` can turn them back into a scenario.
//!
//! A JSON line is `{"timestamp","severity","message","labels","jsonPayload"}`: `labels` names
//! the run (`scenario`, `endpoint`) from the enclosing `replay` span; `jsonPayload` holds the
//! event's fields, with `user` as `user_id` and a `connection_id` (`<endpoint>/<user>`: a run
//! has one connection per user). Inside a virtual-time run the timestamp is the Unix epoch
//! plus the virtual milliseconds (`1970-01-01T00:00:00.120Z` is 120 ms into the run), so the
//! same run logs the same bytes; elsewhere it is the wall clock.

use std::io::{IsTerminal, Write};
use std::time::{SystemTime, UNIX_EPOCH};

use chrono::{DateTime, SecondsFormat};
use clap::ValueEnum;
use serde::Serialize;
use serde_json::{Map, Value};
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::layer::{Context, Layer};
use tracing_subscriber::prelude::*;
use tracing_subscriber::registry::LookupSpan;

/// How log lines look.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
pub(crate) enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One Cloud Logging entry per line.
    Json,
}

/// What `RUST_LOG` defaults to: warnings only for text; for JSON, every lifecycle event too
/// (asking for JSON logs is asking for them).
fn default_filter(format: LogFormat) -> &'static str {
    match format {
        LogFormat::Text => "warn",
        LogFormat::Json => "warn,racegate=debug",
    }
}

/// Installs the global subscriber. `RUST_LOG` overrides the default filter.
/// The format `init` chose, for [`notice`].
static FORMAT: std::sync::OnceLock<LogFormat> = std::sync::OnceLock::new();

/// A line for the person running racegate (a server starting or stopping): plain text on
/// standard error, or, with `--log-format json`, a log entry like every other line there, so
/// standard error stays one format.
pub(crate) fn notice(message: &str) {
    match FORMAT.get().copied().unwrap_or_default() {
        LogFormat::Text => eprintln!("racegate: {message}"),
        LogFormat::Json => tracing::warn!(target: "racegate", "{message}"),
    }
}

/// A line of a command's own output on standard error, in the format the rest of standard error
/// has: `note: …` (or `warning: …`, or the bare line) as text, or a log entry like every other
/// line with `--log-format json`, so a tool reading standard error reads one format.
pub(crate) fn stderr_line(kind: Line, message: &str) {
    match (FORMAT.get().copied().unwrap_or_default(), kind) {
        (LogFormat::Text, Line::Note) => eprintln!("note: {message}"),
        (LogFormat::Text, Line::Warning) => eprintln!("warning: {message}"),
        (LogFormat::Text, Line::Plain) => eprintln!("{message}"),
        (LogFormat::Json, Line::Warning) => tracing::warn!(target: "racegate", "{message}"),
        (LogFormat::Json, Line::Note | Line::Plain) => {
            tracing::info!(target: "racegate", "{message}")
        }
    }
}

/// The error that ends a command: `racegate: …`, or a log entry with `--log-format json`.
pub(crate) fn error(message: &str) {
    match FORMAT.get().copied().unwrap_or_default() {
        LogFormat::Text => eprintln!("racegate: {message}"),
        LogFormat::Json => tracing::error!(target: "racegate", "{message}"),
    }
}

/// What kind of line [`stderr_line`] writes.
#[derive(Clone, Copy)]
pub(crate) enum Line {
    /// Something worth knowing.
    Note,
    /// Something that may be wrong.
    Warning,
    /// A result line (a verdict, a summary).
    Plain,
}

pub(crate) fn init(format: LogFormat) {
    let _ = FORMAT.set(format);
    let mut filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new(default_filter(format)));
    // tungstenite logs each client upgrade request whole (trace), every frame received (trace)
    // and close reasons (debug): credentials `racegate probe` sends, and whatever a server
    // echoes of them. Its logs stay at info whatever RUST_LOG asks for; racegate's own events
    // say what happened on a connection.
    for cap in ["tungstenite=info", "tokio_tungstenite=info"] {
        if let Ok(cap) = cap.parse() {
            filter = filter.add_directive(cap);
        }
    }
    match format {
        LogFormat::Text => tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_writer(std::io::stderr)
            .with_ansi(std::io::stderr().is_terminal())
            .init(),
        LogFormat::Json => tracing_subscriber::registry()
            .with(filter)
            .with(CloudLogging::new(std::io::stderr))
            .init(),
    }
}

/// The JSON layer: one Cloud Logging entry per event.
pub(crate) struct CloudLogging<W> {
    make_writer: W,
}

impl<W> CloudLogging<W> {
    pub(crate) fn new(make_writer: W) -> Self {
        CloudLogging { make_writer }
    }
}

/// A span's fields, kept for the `labels` of every event inside it.
struct SpanLabels(Vec<(&'static str, String)>);

/// The virtual clock of a `replay` span: the last `at_ms` seen in it, for events that carry
/// none.
struct VirtualClock(u64);

/// The span that marks a virtual-time run.
const REPLAY_SPAN: &str = "replay";

#[derive(Default)]
struct Fields {
    message: Option<String>,
    severity: Option<String>,
    at_ms: Option<u64>,
    fields: Vec<(&'static str, Value)>,
}

impl Fields {
    fn put(&mut self, field: &Field, value: Value) {
        match (field.name(), value) {
            ("message", Value::String(s)) => self.message = Some(s),
            ("severity", Value::String(s)) => self.severity = Some(s),
            ("at_ms", Value::Number(n)) => {
                self.at_ms = n.as_u64();
                self.fields.push(("at_ms", Value::Number(n)));
            }
            ("user", v) => self.fields.push(("user_id", v)),
            (name, v) => self.fields.push((name, v)),
        }
    }
}

impl Visit for Fields {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.put(field, Value::String(format!("{value:?}")));
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        self.put(field, Value::String(value.to_string()));
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.put(field, Value::from(value));
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.put(field, Value::from(value));
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.put(field, Value::from(value));
    }
    fn record_f64(&mut self, field: &Field, value: f64) {
        self.put(field, Value::from(value));
    }
}

/// Span fields as label strings.
#[derive(Default)]
struct LabelVisitor(Vec<(&'static str, String)>);

impl Visit for LabelVisitor {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.0.push((field.name(), format!("{value:?}")));
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.push((field.name(), value.to_string()));
    }
}

/// Cloud Logging's severity names.
fn severity(level: &Level) -> &'static str {
    match *level {
        Level::ERROR => "ERROR",
        Level::WARN => "WARNING",
        Level::INFO => "INFO",
        Level::DEBUG | Level::TRACE => "DEBUG",
    }
}

/// RFC 3339 in UTC with milliseconds, as Cloud Logging writes it.
pub(crate) fn rfc3339_ms(ms_since_epoch: u64) -> String {
    i64::try_from(ms_since_epoch)
        .ok()
        .and_then(DateTime::from_timestamp_millis)
        .map(|t| t.to_rfc3339_opts(SecondsFormat::Millis, true))
        .unwrap_or_default()
}

#[derive(Serialize)]
struct Entry<'a> {
    timestamp: String,
    severity: &'a str,
    message: &'a str,
    #[serde(skip_serializing_if = "Map::is_empty")]
    labels: Map<String, Value>,
    #[serde(rename = "jsonPayload")]
    json_payload: Map<String, Value>,
}

impl<S, W> Layer<S> for CloudLogging<W>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    W: for<'w> MakeWriter<'w> + 'static,
{
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        let Some(span) = ctx.span(id) else {
            return;
        };
        let mut labels = LabelVisitor::default();
        attrs.record(&mut labels);
        let mut ext = span.extensions_mut();
        ext.insert(SpanLabels(labels.0));
        if attrs.metadata().name() == REPLAY_SPAN {
            ext.insert(VirtualClock(0));
        }
    }

    fn on_event(&self, event: &Event<'_>, ctx: Context<'_, S>) {
        let mut fields = Fields::default();
        event.record(&mut fields);
        let meta = event.metadata();

        let mut labels = Map::new();
        let mut virtual_ms = None;
        if let Some(scope) = ctx.event_scope(event) {
            for span in scope.from_root() {
                let mut ext = span.extensions_mut();
                if let Some(SpanLabels(l)) = ext.get_mut::<SpanLabels>() {
                    for (k, v) in l.iter() {
                        labels.insert((*k).to_string(), Value::String(v.clone()));
                    }
                }
                if let Some(clock) = ext.get_mut::<VirtualClock>() {
                    if let Some(at) = fields.at_ms {
                        clock.0 = at;
                    }
                    virtual_ms = Some(clock.0);
                }
            }
        }
        let timestamp = match virtual_ms {
            Some(ms) => rfc3339_ms(ms),
            None => {
                let now = SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
                    .unwrap_or(0);
                rfc3339_ms(now)
            }
        };

        let mut payload = Map::new();
        let user = fields.fields.iter().find_map(|(k, v)| match (k, v) {
            (&"user_id", Value::String(u)) => Some(u.clone()),
            _ => None,
        });
        if let Some(user) = user {
            let connection = match labels.get("endpoint") {
                Some(Value::String(e)) => format!("{e}/{user}"),
                _ => user,
            };
            payload.insert("connection_id".into(), Value::String(connection));
        }
        for (k, v) in fields.fields {
            payload.insert(k.to_string(), v);
        }
        payload.insert("target".into(), Value::String(meta.target().to_string()));

        let entry = Entry {
            timestamp,
            severity: fields
                .severity
                .as_deref()
                .unwrap_or_else(|| severity(meta.level())),
            message: fields.message.as_deref().unwrap_or_default(),
            labels,
            json_payload: payload,
        };
        let Ok(mut line) = serde_json::to_vec(&entry) else {
            return;
        };
        line.push(b'\n');
        // A log line that cannot be written (a closed pipe) is not worth failing the run for.
        let _ = self.make_writer.make_writer().write_all(&line);
    }
}

/// `note: …` on standard error, or a log entry with `--log-format json` ([`stderr_line`]).
macro_rules! note {
    ($($arg:tt)*) => {
        $crate::logging::stderr_line($crate::logging::Line::Note, &format!($($arg)*))
    };
}

/// `warning: …` on standard error, or a log entry with `--log-format json`.
macro_rules! warning {
    ($($arg:tt)*) => {
        $crate::logging::stderr_line($crate::logging::Line::Warning, &format!($($arg)*))
    };
}

/// A result line on standard error (a verdict, a summary), or a log entry with
/// `--log-format json`.
macro_rules! say {
    ($($arg:tt)*) => {
        $crate::logging::stderr_line($crate::logging::Line::Plain, &format!($($arg)*))
    };
}

pub(crate) use {note, say, warning};

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;

    #[derive(Clone, Default)]
    struct Buffer(Arc<Mutex<Vec<u8>>>);

    impl Write for Buffer {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            match self.0.lock() {
                Ok(mut b) => b.extend_from_slice(buf),
                Err(p) => p.into_inner().extend_from_slice(buf),
            }
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl<'a> MakeWriter<'a> for Buffer {
        type Writer = Buffer;
        fn make_writer(&'a self) -> Buffer {
            self.clone()
        }
    }

    fn lines(buffer: &Buffer) -> Vec<serde_json::Value> {
        let bytes = buffer.0.lock().map(|b| b.clone()).unwrap_or_default();
        String::from_utf8(bytes)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    #[test]
    fn virtual_time_becomes_the_epoch_plus_milliseconds() {
        assert_eq!(rfc3339_ms(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339_ms(1_675), "1970-01-01T00:00:01.675Z");
        assert_eq!(rfc3339_ms(86_400_000 + 61_001), "1970-01-02T00:01:01.001Z");
    }

    #[test]
    fn a_trace_event_in_a_replay_span_is_a_cloud_logging_entry() {
        let buffer = Buffer::default();
        let subscriber = tracing_subscriber::registry().with(CloudLogging::new(buffer.clone()));
        tracing::subscriber::with_default(subscriber, || {
            let span = tracing::info_span!("replay", scenario = "s<1>", endpoint = "unfixed");
            let _entered = span.enter();
            tracing::debug!(
                target: "racegate::trace",
                at_ms = 120u64,
                user = "u-1",
                event = "state",
                state = "accepted",
                "state accepted"
            );
            tracing::warn!(severity = "ERROR", "no time of its own");
        });
        let lines = lines(&buffer);
        assert_eq!(lines.len(), 2);
        let first = &lines[0];
        assert_eq!(first["timestamp"], "1970-01-01T00:00:00.120Z");
        assert_eq!(first["severity"], "DEBUG");
        assert_eq!(first["message"], "state accepted");
        assert_eq!(first["labels"]["scenario"], "s<1>");
        assert_eq!(first["labels"]["endpoint"], "unfixed");
        let payload = &first["jsonPayload"];
        assert_eq!(payload["connection_id"], "unfixed/u-1");
        assert_eq!(payload["user_id"], "u-1");
        assert_eq!(payload["state"], "accepted");
        assert_eq!(payload["event"], "state");
        assert_eq!(payload["at_ms"], 120);
        // An event without a time of its own keeps the run's virtual clock; a severity field
        // overrides the level.
        assert_eq!(lines[1]["timestamp"], "1970-01-01T00:00:00.120Z");
        assert_eq!(lines[1]["severity"], "ERROR");
    }
}
