//! racegate's own log lines: the vocabulary `racegate --log-format json` writes (and `--trace`
//! prints), read back into one [`Run`] per scenario × endpoint.
//!
//! Each line is a Cloud Logging entry. `jsonPayload.event` names the lifecycle event, else the
//! text of `message`, `jsonPayload.message` or `textPayload` is read as `--trace` prints it. The
//! `run_start` line carries the settings no event shows; `run_end` the run's end. Lines that are
//! not JSON objects, or lifecycle events without a user or a time, are malformed: skipped and
//! counted by the caller.

use std::borrow::Cow;

use indexmap::IndexMap;
use serde::{Deserialize, Deserializer};

use super::infer::{Ev, Event, Header, Run};
// ---------------------------------------------------------------------------------------------
// The line shape: a Cloud Logging entry. Unknown fields are ignored; strings borrow the line.

#[derive(Deserialize)]
struct Line<'a> {
    #[serde(borrow, default)]
    timestamp: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    message: Option<Cow<'a, str>>,
    #[serde(borrow, default, rename = "textPayload")]
    text_payload: Option<Cow<'a, str>>,
    #[serde(borrow, default, rename = "jsonPayload")]
    json_payload: Option<Payload<'a>>,
    #[serde(borrow, default)]
    labels: Option<Labels<'a>>,
}

#[derive(Deserialize, Default)]
struct Labels<'a> {
    #[serde(borrow, default)]
    scenario: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    endpoint: Option<Cow<'a, str>>,
}

#[derive(Deserialize, Default)]
struct Payload<'a> {
    #[serde(borrow, default)]
    message: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    event: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    state: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    user_id: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    user: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    id: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    frame: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    scenario: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    endpoint: Option<Cow<'a, str>>,
    #[serde(default, deserialize_with = "lenient_u64")]
    at_ms: Option<u64>,
    #[serde(default, deserialize_with = "lenient_u64")]
    code: Option<u64>,
    #[serde(default, deserialize_with = "lenient_u64")]
    accept_ms: Option<u64>,
    #[serde(default, deserialize_with = "lenient_u64")]
    auth_ms: Option<u64>,
    #[serde(default, deserialize_with = "lenient_u64")]
    services_ms: Option<u64>,
    #[serde(default, deserialize_with = "lenient_u64")]
    register_ms: Option<u64>,
    #[serde(default, deserialize_with = "lenient_u64")]
    heartbeat_ms: Option<u64>,
    #[serde(default, deserialize_with = "lenient_u64")]
    event_gap_ms: Option<u64>,
    #[serde(default, deserialize_with = "lenient_u64")]
    queue_capacity: Option<u64>,
    #[serde(default, deserialize_with = "lenient_u64")]
    queue_bytes: Option<u64>,
    #[serde(default, deserialize_with = "lenient_u64")]
    settle_ms: Option<u64>,
}

/// A non-negative integer as a JSON integer, an integral float (Cloud Logging stores
/// `jsonPayload` numbers as doubles) or a decimal string.
fn lenient_u64<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    struct V;
    impl serde::de::Visitor<'_> for V {
        type Value = Option<u64>;
        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("a non-negative integer")
        }
        fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Self::Value, E> {
            Ok(Some(v))
        }
        fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Self::Value, E> {
            u64::try_from(v)
                .map(Some)
                .map_err(|_| E::custom("a negative number"))
        }
        fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<Self::Value, E> {
            if v >= 0.0 && v.fract() == 0.0 && v < 1e15 {
                Ok(Some(v as u64))
            } else {
                Err(E::custom("not a whole non-negative number"))
            }
        }
        fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Self::Value, E> {
            v.parse().map(Some).map_err(E::custom)
        }
        fn visit_unit<E: serde::de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
    }
    d.deserialize_any(V)
}

// ---------------------------------------------------------------------------------------------
// What a line says happened.

/// What one line contributed.
enum Parsed {
    /// A lifecycle event of a connection.
    Event {
        run: RunKey,
        user: String,
        at_ms: Option<u64>,
        ts_ms: Option<i64>,
        ev: Ev,
    },
    /// racegate's `run_start`: the server settings.
    Start { run: RunKey, header: Header },
    /// racegate's `run_end`: when the run stopped.
    End { run: RunKey, at_ms: u64 },
    /// Valid, but not about a lifecycle.
    Ignored,
    /// Not a log entry, or a lifecycle event without a user or a time.
    Malformed,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(super) struct RunKey {
    pub scenario: Option<String>,
    pub endpoint: Option<String>,
}

impl RunKey {
    /// `scenario [endpoint]`, as notes and errors name a run.
    pub fn describe(&self) -> String {
        match (&self.scenario, &self.endpoint) {
            (Some(s), Some(e)) => format!("{s} [{e}]"),
            (Some(s), None) => s.clone(),
            (None, Some(e)) => format!("[{e}]"),
            (None, None) => "the unlabelled run".to_string(),
        }
    }
}
/// Classifies an event by its `jsonPayload.event` name.
fn from_field(event: &str, p: &Payload<'_>) -> Option<Ev> {
    let id = || p.id.as_deref().map(str::to_string);
    Some(match event {
        "client_connect" => Ev::Connect,
        "client_open" => Ev::Open,
        "client_send" => Ev::Send(id()?),
        "client_unsent" => Ev::Unsent(id()?),
        "client_close" => Ev::Close,
        "client_closed" => Ev::ClientClosed,
        "push_issued" => Ev::PushIssued(id()?),
        "state" => Ev::State(p.state.as_deref()?.to_string()),
        "terminal" => Ev::Terminal(p.state.as_deref()?.to_string()),
        "server_close" => Ev::ServerClose(u16::try_from(p.code?).ok()?),
        "rejected" => Ev::Rejected(id()?),
        "client_recv" => match p.frame.as_deref()? {
            "ack" | "push" | "error" | "ping" => return None,
            _ => Ev::Agent(id()?),
        },
        _ => return None,
    })
}

/// Classifies an event by its text, as `--trace` prints it (`state accepted`, `client send
/// u/m1`, ...).
fn from_text(text: &str) -> Option<Ev> {
    let word = |s: &str| s.split_whitespace().next().map(str::to_string);
    if text == "client connect" {
        Some(Ev::Connect)
    } else if text == "client open" {
        Some(Ev::Open)
    } else if text == "client close" {
        Some(Ev::Close)
    } else if text.starts_with("client sees close") {
        Some(Ev::ClientClosed)
    } else if let Some(rest) = text.strip_prefix("client send ") {
        word(rest).map(Ev::Send)
    } else if let Some(rest) = text.strip_prefix("client unsent ") {
        rest.split_once(':')
            .map(|(id, _)| Ev::Unsent(id.trim().to_string()))
    } else if let Some(rest) = text.strip_prefix("push issued ") {
        word(rest).map(Ev::PushIssued)
    } else if let Some(rest) = text.strip_prefix("state ") {
        word(rest).map(Ev::State)
    } else if let Some(rest) = text.strip_prefix("terminal ") {
        word(rest).map(Ev::Terminal)
    } else if let Some(rest) = text.strip_prefix("server close ") {
        word(rest)?.parse().ok().map(Ev::ServerClose)
    } else if let Some(rest) = text.strip_prefix("rejected ") {
        rest.split_once(':')
            .map(|(id, _)| Ev::Rejected(id.trim().to_string()))
    } else if let Some(rest) = text.strip_prefix("client recv ") {
        let mut parts = rest.split_whitespace();
        let kind = parts.next()?;
        if !kind.starts_with("agent_") && !kind.starts_with("tool_") {
            return None;
        }
        let run = parts.next()?.strip_prefix("run=")?;
        Some(Ev::Agent(run.to_string()))
    } else {
        None
    }
}

/// Splits a `--trace` line (`    120 ms  user-1    state accepted`) into time, user and event.
fn trace_line(text: &str) -> Option<(u64, &str, &str)> {
    let text = text.trim_start();
    let (ms, rest) = text.split_once(' ')?;
    let ms: u64 = ms.parse().ok()?;
    let rest = rest.trim_start().strip_prefix("ms")?.trim_start();
    let (user, event) = rest.split_once(' ')?;
    Some((ms, user, event.trim()))
}

/// Milliseconds since the Unix epoch of an RFC 3339 timestamp.
pub(super) fn timestamp_ms(ts: &str) -> Option<i64> {
    chrono::DateTime::parse_from_rfc3339(ts)
        .ok()
        .map(|t| t.timestamp_millis())
}

fn parse_line(line: &str) -> Parsed {
    let Ok(entry) = serde_json::from_str::<Line<'_>>(line) else {
        return Parsed::Malformed;
    };
    let payload = entry.json_payload.unwrap_or_default();
    let labels = entry.labels.unwrap_or_default();
    let run = RunKey {
        scenario: labels
            .scenario
            .or_else(|| payload.scenario.clone())
            .map(Cow::into_owned),
        endpoint: labels
            .endpoint
            .or_else(|| payload.endpoint.clone())
            .map(Cow::into_owned),
    };
    match payload.event.as_deref() {
        Some("run_start") => {
            return Parsed::Start {
                run,
                header: Header {
                    accept_ms: payload.accept_ms,
                    auth_ms: payload.auth_ms,
                    services_ms: payload.services_ms,
                    register_ms: payload.register_ms,
                    heartbeat_ms: payload.heartbeat_ms,
                    event_gap_ms: payload.event_gap_ms,
                    queue_capacity: payload.queue_capacity,
                    queue_bytes: payload.queue_bytes,
                    settle_ms: payload.settle_ms,
                },
            };
        }
        Some("run_end") => {
            return match payload.at_ms {
                Some(at_ms) => Parsed::End { run, at_ms },
                None => Parsed::Ignored,
            };
        }
        _ => {}
    }
    let text = entry
        .message
        .as_deref()
        .or(payload.message.as_deref())
        .or(entry.text_payload.as_deref());
    let traced = text.and_then(trace_line);
    let ev = match payload.event.as_deref() {
        Some(name) => from_field(name, &payload),
        None => match traced {
            Some((_, _, event)) => from_text(event),
            None => text.and_then(from_text),
        },
    };
    let Some(ev) = ev else {
        return Parsed::Ignored;
    };
    let user = payload
        .user_id
        .as_deref()
        .or(payload.user.as_deref())
        .or(traced.map(|(_, user, _)| user));
    let at_ms = payload.at_ms.or(traced.map(|(ms, _, _)| ms));
    let ts_ms = entry.timestamp.as_deref().and_then(timestamp_ms);
    match user {
        Some(user) if !user.is_empty() && (at_ms.is_some() || ts_ms.is_some()) => Parsed::Event {
            run,
            user: user.to_string(),
            at_ms,
            ts_ms,
            ev,
        },
        _ => Parsed::Malformed,
    }
}

/// What a whole log of racegate's lines held.
pub(super) struct OwnLog {
    /// The runs, in order of first appearance.
    pub runs: IndexMap<RunKey, Run>,
    /// Lines read (blank lines included).
    pub lines: usize,
    /// Lines skipped as malformed.
    pub malformed: usize,
    /// The first malformed line, 1-based.
    pub first_malformed: Option<usize>,
}

/// Reads `text`, one entry per line, into runs; runs without lifecycle events are dropped.
pub(super) fn read(text: &str) -> OwnLog {
    let mut runs: IndexMap<RunKey, Run> = IndexMap::new();
    let mut lines = 0;
    let mut malformed = 0;
    let mut first_malformed = None;
    for (i, line) in text.lines().enumerate() {
        lines += 1;
        if line.trim().is_empty() {
            continue;
        }
        match parse_line(line) {
            Parsed::Event {
                run,
                user,
                at_ms,
                ts_ms,
                ev,
            } => runs.entry(run).or_default().events.push(Event {
                at_ms,
                ts_ms,
                user,
                ev,
            }),
            Parsed::Start { run, header } => {
                runs.entry(run).or_default().header.get_or_insert(header);
            }
            Parsed::End { run, at_ms } => {
                runs.entry(run).or_default().end_ms.get_or_insert(at_ms);
            }
            Parsed::Ignored => {}
            Parsed::Malformed => {
                malformed += 1;
                first_malformed.get_or_insert(i + 1);
            }
        }
    }
    runs.retain(|_, r| !r.events.is_empty());
    OwnLog {
        runs,
        lines,
        malformed,
        first_malformed,
    }
}
