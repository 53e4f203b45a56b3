//! Scenarios from logs: JSON log lines in Google Cloud Logging's export shape, back into the
//! users, connect times, phase durations and message times of a [`Scenario`].
//!
//! A race is first noticed in staging logs; retyping its timings into a scenario file loses
//! them. [`import`] reads the lifecycle events the lines carry (the vocabulary `racegate
//! --log-format json` writes, which is also the text `--trace` prints) and infers the rest:
//!
//! - a user per connection, connecting when its first `client_connect` (or `state connecting`)
//!   was logged;
//! - each phase's duration (`accept_ms`, `auth_ms`, `services_ms`, `register_ms`) from the gaps
//!   between a connection's `state` events, the median over all connections; a setup that ended
//!   in a failure close (1008 after `accepted`, 1011 after `authenticated` or `services_ready`)
//!   gives that user's `fail_at` and the failing phase's duration;
//! - chats at their `client_send` time after the client's `client_open`, chats that never left at
//!   their `client_unsent` or `rejected` time, pushes at their `push_issued` time after connect,
//!   and a client's own `client_close` as its `close_ms`;
//! - the agent events' spacing as `event_gap_ms`.
//!
//! What no lifecycle event shows (heartbeat interval, queue limits, settle time, a phase nobody
//! completed) comes from racegate's `run_start` line when the log has one, else the defaults.
//! A log holding several runs (each labelled with its scenario and endpoint) yields one of them.
//! Lines that are not JSON objects, or lifecycle events without a user or a time, are skipped
//! and counted; other entries are ignored.

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet};

use indexmap::IndexMap;
use serde::{Deserialize, Deserializer};

use crate::endpoint::EndpointKind;
use crate::scenario::{Phase, Scenario, ServerConfig, Timed, User};

/// Which run to import, and what to call the result.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// Import the first run labelled with this scenario name.
    pub scenario: Option<String>,
    /// Import the first run labelled with this endpoint.
    pub endpoint: Option<EndpointKind>,
    /// The scenario's name; by default the run's scenario label, else `fallback_name`.
    pub name: Option<String>,
    /// The name used when neither `name` nor a label gives one (the CLI passes the file stem).
    pub fallback_name: String,
}

/// A scenario read from a log, with what the reading found.
#[derive(Debug, Clone)]
pub struct Imported {
    /// The scenario, ready for [`to_toml`](crate::scenario::to_toml).
    pub scenario: Scenario,
    /// Lines read (blank lines included).
    pub lines: usize,
    /// Lifecycle events of the imported run that were used.
    pub events: usize,
    /// Lines skipped as malformed.
    pub malformed: usize,
    /// The first malformed line, 1-based.
    pub first_malformed: Option<usize>,
    /// Runs found in the log (labelled by scenario and endpoint; an unlabelled log is one run).
    pub runs: Vec<String>,
    /// The run imported.
    pub run: String,
    /// Settings that came from no event and no `run_start` line: defaults.
    pub defaulted: Vec<&'static str>,
}

/// Why a log gave no scenario.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ImportError {
    /// Nothing in the log describes a connection's lifecycle.
    #[error(
        "no usable lifecycle events in {lines} lines ({malformed} malformed{}): expected JSON \
         lines with jsonPayload.event (client_connect, state, client_send, push_issued, ...) \
         and jsonPayload.user_id, or racegate trace lines as message/textPayload",
        first_malformed.map(|l| format!(", the first at line {l}")).unwrap_or_default()
    )]
    NoLifecycleEvents {
        /// Lines read.
        lines: usize,
        /// Lines skipped as malformed.
        malformed: usize,
        /// The first malformed line, 1-based.
        first_malformed: Option<usize>,
    },
    /// The log has runs, but none matches the selection.
    #[error("no run matches {wanted}; the log holds: {}", available.join(", "))]
    NoSuchRun {
        /// What was asked for.
        wanted: String,
        /// The runs there are.
        available: Vec<String>,
    },
    /// A time in the inferred scenario is past the format's one-day limit.
    #[error(
        "{what} would be {ms} ms, but scenario times are limited to one day: import a shorter \
         stretch of the log"
    )]
    TooLong {
        /// Which time.
        what: String,
        /// Its value.
        ms: u64,
    },
}

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
// Events: what a line says happened.

/// The lifecycle events import uses.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Ev {
    Connect,
    Open,
    Send(String),
    Unsent(String),
    Close,
    ClientClosed,
    PushIssued(String),
    State(String),
    Terminal(String),
    ServerClose(u16),
    Rejected(String),
    /// An agent event frame the client received, by run id.
    Agent(String),
}

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
struct RunKey {
    scenario: Option<String>,
    endpoint: Option<String>,
}

impl RunKey {
    fn describe(&self) -> String {
        match (&self.scenario, &self.endpoint) {
            (Some(s), Some(e)) => format!("{s} [{e}]"),
            (Some(s), None) => s.clone(),
            (None, Some(e)) => format!("[{e}]"),
            (None, None) => "the unlabelled run".to_string(),
        }
    }
}

#[derive(Debug, Clone, Copy, Default)]
struct Header {
    accept_ms: Option<u64>,
    auth_ms: Option<u64>,
    services_ms: Option<u64>,
    register_ms: Option<u64>,
    heartbeat_ms: Option<u64>,
    event_gap_ms: Option<u64>,
    queue_capacity: Option<u64>,
    queue_bytes: Option<u64>,
    settle_ms: Option<u64>,
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
fn timestamp_ms(ts: &str) -> Option<i64> {
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

// ---------------------------------------------------------------------------------------------
// Inference.

#[derive(Default)]
struct Run {
    events: Vec<(Option<u64>, Option<i64>, String, Ev)>,
    header: Option<Header>,
    end_ms: Option<u64>,
}

#[derive(Default)]
struct Conn {
    connect: Option<u64>,
    first_seen: u64,
    open: Option<u64>,
    states: Vec<(u64, String)>,
    sends: Vec<(u64, String)>,
    unsent: Vec<(u64, String)>,
    rejected: Vec<(u64, String)>,
    pushes: Vec<(u64, String)>,
    closes: Vec<u64>,
    client_saw_close: Option<u64>,
    server_close: Option<(u64, u16)>,
    failed: Option<u64>,
    agent: BTreeMap<String, Vec<u64>>,
}

const SETUP: [&str; 5] = [
    "connecting",
    "accepted",
    "authenticated",
    "services_ready",
    "processing_ready",
];

/// The lower median: deterministic, and one of the observed values.
fn median(mut v: Vec<u64>) -> Option<u64> {
    v.sort_unstable();
    v.get(v.len().saturating_sub(1) / 2).copied()
}

/// Reads `text` (one log entry per line) into a scenario.
pub fn import(text: &str, options: &Options) -> Result<Imported, ImportError> {
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
            } => runs
                .entry(run)
                .or_default()
                .events
                .push((at_ms, ts_ms, user, ev)),
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
    if runs.is_empty() {
        return Err(ImportError::NoLifecycleEvents {
            lines,
            malformed,
            first_malformed,
        });
    }
    let available: Vec<String> = runs.keys().map(RunKey::describe).collect();
    let endpoint = options.endpoint.map(|e| e.name().to_string());
    let chosen = runs.iter().position(|(k, _)| {
        options
            .scenario
            .as_ref()
            .is_none_or(|s| k.scenario.as_ref() == Some(s))
            && endpoint
                .as_ref()
                .is_none_or(|e| k.endpoint.as_ref() == Some(e))
    });
    let Some(chosen) = chosen else {
        let mut wanted = Vec::new();
        if let Some(s) = &options.scenario {
            wanted.push(format!("scenario `{s}`"));
        }
        if let Some(e) = &endpoint {
            wanted.push(format!("endpoint `{e}`"));
        }
        return Err(ImportError::NoSuchRun {
            wanted: wanted.join(" and "),
            available,
        });
    };
    let Some((key, run)) = runs.swap_remove_index(chosen) else {
        // `position` found it a moment ago.
        return Err(ImportError::NoLifecycleEvents {
            lines,
            malformed,
            first_malformed,
        });
    };
    let name = options
        .name
        .clone()
        .or_else(|| key.scenario.clone())
        .unwrap_or_else(|| options.fallback_name.clone());
    let events = run.events.len();
    let (scenario, defaulted) = infer(&run, name, &key)?;
    Ok(Imported {
        scenario,
        lines,
        events,
        malformed,
        first_malformed,
        runs: available,
        run: key.describe(),
        defaulted,
    })
}

fn infer(
    run: &Run,
    name: String,
    key: &RunKey,
) -> Result<(Scenario, Vec<&'static str>), ImportError> {
    // Times: racegate's own `at_ms` (ms since the run began) when every event has it, else the
    // timestamps, relative to the earliest.
    let relative = run.events.iter().all(|e| e.0.is_some());
    let origin = if relative {
        0
    } else {
        run.events.iter().filter_map(|e| e.1).min().unwrap_or(0)
    };
    let mut events: Vec<(u64, &str, &Ev)> = run
        .events
        .iter()
        .filter_map(|(at, ts, user, ev)| {
            let t = if relative {
                (*at)?
            } else {
                u64::try_from((*ts)? - origin).ok()?
            };
            Some((t, user.as_str(), ev))
        })
        .collect();
    // Exports are often newest first; a stable sort keeps same-time events in log order.
    events.sort_by_key(|e| e.0);

    let mut conns: IndexMap<&str, Conn> = IndexMap::new();
    for &(t, user, ev) in &events {
        let c = conns.entry(user).or_insert_with(|| Conn {
            first_seen: t,
            ..Conn::default()
        });
        match ev {
            Ev::Connect => {
                c.connect.get_or_insert(t);
            }
            Ev::Open => {
                c.open.get_or_insert(t);
            }
            Ev::Send(id) => c.sends.push((t, id.clone())),
            Ev::Unsent(id) => c.unsent.push((t, id.clone())),
            Ev::Rejected(id) => c.rejected.push((t, id.clone())),
            Ev::PushIssued(id) => c.pushes.push((t, id.clone())),
            Ev::Close => c.closes.push(t),
            Ev::ClientClosed => {
                c.client_saw_close.get_or_insert(t);
            }
            Ev::State(s) => {
                if s == "failed" {
                    c.failed.get_or_insert(t);
                }
                c.states.push((t, s.clone()));
            }
            Ev::Terminal(s) => {
                if s == "failed" {
                    c.failed.get_or_insert(t);
                }
            }
            Ev::ServerClose(code) => {
                c.server_close.get_or_insert((t, *code));
            }
            Ev::Agent(run) => c.agent.entry(run.clone()).or_default().push(t),
        }
    }
    for c in conns.values_mut() {
        let connecting = c
            .states
            .iter()
            .find(|(_, s)| s == "connecting")
            .map(|(t, _)| *t);
        c.connect = Some(c.connect.or(connecting).unwrap_or(c.first_seen));
        if c.open.is_none() {
            c.open = c
                .states
                .iter()
                .find(|(_, s)| s == "accepted")
                .map(|(t, _)| *t);
        }
    }

    // Phase durations, observed: [accept, auth, services, register].
    let mut observed: [Vec<u64>; 4] = Default::default();
    let mut fail_at: BTreeMap<&str, Phase> = BTreeMap::new();
    for (user, c) in &conns {
        let at = |name: &str| c.states.iter().find(|(_, s)| s == name).map(|(t, _)| *t);
        let mut prev = c.connect;
        for (i, state) in SETUP.iter().enumerate().skip(1) {
            match (prev, at(state)) {
                (Some(p), Some(t)) if t >= p => {
                    observed[i - 1].push(t - p);
                    prev = Some(t);
                }
                _ => break,
            }
        }
        if let Some((phase, started, failed)) = setup_failure(c) {
            let slot = match phase {
                Phase::Auth => 1,
                Phase::Services => 2,
                Phase::Register => 3,
            };
            observed[slot].push(failed - started);
            fail_at.insert(user, phase);
        }
    }
    let header = run.header.unwrap_or_default();
    let mut defaulted = Vec::new();
    let mut pick = |observed: Vec<u64>, header: Option<u64>, default: u64, name: &'static str| {
        median(observed).or(header).unwrap_or_else(|| {
            defaulted.push(name);
            default
        })
    };
    let d = ServerConfig::default();
    let [accept, auth, services, register] = observed;
    let mut gaps = Vec::new();
    for c in conns.values() {
        for times in c.agent.values() {
            gaps.extend(times.windows(2).map(|w| w[1] - w[0]));
        }
    }
    let server = ServerConfig {
        accept_ms: pick(accept, header.accept_ms, 0, "accept_ms"),
        auth_ms: pick(auth, header.auth_ms, 0, "auth_ms"),
        services_ms: pick(services, header.services_ms, 0, "services_ms"),
        register_ms: pick(register, header.register_ms, 0, "register_ms"),
        heartbeat_ms: pick(
            Vec::new(),
            header.heartbeat_ms,
            d.heartbeat_ms,
            "heartbeat_ms",
        ),
        event_gap_ms: pick(gaps, header.event_gap_ms, d.event_gap_ms, "event_gap_ms"),
        queue_capacity: pick(
            Vec::new(),
            header.queue_capacity,
            d.queue_capacity as u64,
            "queue_capacity",
        ) as usize,
        queue_bytes: pick(
            Vec::new(),
            header.queue_bytes,
            d.queue_bytes as u64,
            "queue_bytes",
        ) as usize,
    };
    let settle_ms = pick(Vec::new(), header.settle_ms, 1000, "settle_ms");

    let mut users: Vec<(&str, &Conn, User)> =
        conns
            .iter()
            .map(|(user, c)| {
                let connect = c.connect.unwrap_or(c.first_seen);
                let sent: BTreeSet<&str> = c.sends.iter().map(|(_, id)| id.as_str()).collect();
                let pushed: BTreeSet<&str> = c.pushes.iter().map(|(_, id)| id.as_str()).collect();
                let mut sends: Vec<Timed> = c
                    .sends
                    .iter()
                    .map(|(t, id)| Timed {
                        at_ms: t.saturating_sub(c.open.unwrap_or(connect)),
                        text: id.clone(),
                    })
                    .collect();
                // Chats that never left: their time is only bounded below (after the moment the
                // client gave up), so they go just past it.
                let mut never: Vec<&(u64, String)> = c.unsent.iter().collect();
                never.extend(c.rejected.iter().filter(|(_, id)| {
                    !sent.contains(id.as_str()) && !pushed.contains(id.as_str())
                }));
                let mut seen = BTreeSet::new();
                for (t, id) in never {
                    if seen.insert(id.as_str()) {
                        let at_ms = match c.open {
                            Some(open) => t.saturating_sub(open) + 1,
                            None => t.saturating_sub(connect),
                        };
                        sends.push(Timed {
                            at_ms,
                            text: id.clone(),
                        });
                    }
                }
                let pushes = c
                    .pushes
                    .iter()
                    .map(|(t, id)| Timed {
                        at_ms: t.saturating_sub(connect),
                        text: id.clone(),
                    })
                    .collect();
                let imported = User {
                    id: user.to_string(),
                    connect_ms: connect,
                    fail_at: fail_at.get(user).copied(),
                    close_ms: None,
                    sends,
                    pushes,
                };
                (*user, c, imported)
            })
            .collect();
    users.sort_by_key(|(_, _, u)| u.connect_ms);

    let mut scenario = Scenario {
        name,
        description: Some(format!("imported from the log of {}", key.describe())),
        file: Default::default(),
        server,
        users: users.iter().map(|(_, _, u)| u.clone()).collect(),
        expect: IndexMap::new(),
        expect_invariants: IndexMap::new(),
        settle_ms,
        protocol: Default::default(),
        production: vec![],
    };

    // A client's own close is its `close_ms`, unless it is the replay's end-of-run close: with
    // the run's end and settle time known, that one happens at the horizon.
    let horizon = match (run.end_ms, header.settle_ms) {
        (Some(end), Some(settle)) => end.checked_sub(settle),
        _ => None,
    };
    for (i, (_, c, _)) in users.iter().enumerate() {
        let Some(&close) = c.closes.first() else {
            continue;
        };
        if horizon.is_none_or(|h| close < h) {
            let u = &mut scenario.users[i];
            u.close_ms = Some(close.saturating_sub(u.connect_ms));
        }
    }
    // Chats that never left bound their time from below only; if the run's horizon says the
    // latest scheduled activity was later, one of them was it.
    if let Some(h) = horizon
        && crate::runner::horizon_ms(&scenario) < h
    {
        let events = crate::trace::AgentEvent::RUN.len();
        let fixed = scenario.server.setup_ms() + crate::schedule::tail_ms(&scenario, events);
        let never_sent = users.iter().map(|(_, c, _)| c.sends.len());
        for (u, sent) in scenario.users.iter_mut().zip(never_sent) {
            if u.sends.len() > sent
                && let Some(last) = u.sends.last_mut()
            {
                last.at_ms = last.at_ms.max(h.saturating_sub(fixed + u.connect_ms));
                break;
            }
        }
    }

    check_limits(&scenario)?;
    Ok((scenario, defaulted))
}

/// The scenario format's limit on any one time: a day.
const MAX_MS: u64 = 86_400_000;

/// Refuses a scenario the format cannot hold (a log spanning more than a day, say), naming the
/// first time past the limit. Ids are unique and non-empty by construction.
fn check_limits(s: &Scenario) -> Result<(), ImportError> {
    let c = &s.server;
    let server = [
        ("accept_ms", c.accept_ms),
        ("auth_ms", c.auth_ms),
        ("services_ms", c.services_ms),
        ("register_ms", c.register_ms),
        ("heartbeat_ms", c.heartbeat_ms),
        ("event_gap_ms", c.event_gap_ms),
        ("settle_ms", s.settle_ms),
    ];
    let mut times: Vec<(String, u64)> = server
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
    for u in &s.users {
        times.push((format!("user {} connect_ms", u.id), u.connect_ms));
        times.extend(u.close_ms.map(|ms| (format!("user {} close_ms", u.id), ms)));
        for (table, items) in [("send", &u.sends), ("push", &u.pushes)] {
            for t in items {
                times.push((format!("user {} {table} {}", u.id, t.text), t.at_ms));
            }
        }
    }
    match times.into_iter().find(|(_, ms)| *ms > MAX_MS) {
        Some((what, ms)) => Err(ImportError::TooLong { what, ms }),
        None => Ok(()),
    }
}

/// The setup phase a connection failed in, when it was started and when it failed: a failure
/// close (1008 after `accepted`, 1011 after `authenticated` or `services_ready`), or a `failed`
/// state, that the client did not cause by closing first.
fn setup_failure(c: &Conn) -> Option<(Phase, u64, u64)> {
    let failed_at = match (c.server_close, c.failed) {
        (Some((t, _)), _) => t,
        (None, Some(t)) => t,
        (None, None) => return None,
    };
    if c.closes.first().is_some_and(|&t| t <= failed_at) {
        return None;
    }
    let (since, last) = c
        .states
        .iter()
        .rev()
        .find(|(t, s)| *t <= failed_at && SETUP.contains(&s.as_str()))?;
    let phase = match (last.as_str(), c.server_close.map(|(_, code)| code)) {
        ("accepted", Some(1008) | None) => Phase::Auth,
        ("authenticated", Some(1011) | None) => Phase::Services,
        ("services_ready", Some(1011) | None) => Phase::Register,
        _ => return None,
    };
    Some((phase, *since, failed_at))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options() -> Options {
        Options {
            fallback_name: "from-test".into(),
            ..Options::default()
        }
    }

    /// A racegate-shaped lifecycle line.
    fn line(at: u64, user: &str, event: &str, extra: &str) -> String {
        format!(
            r#"{{"timestamp":"1970-01-01T00:00:00Z","severity":"DEBUG","message":"","jsonPayload":{{"at_ms":{at},"user_id":"{user}","event":"{event}"{extra}}}}}"#
        )
    }

    fn state(at: u64, user: &str, s: &str) -> String {
        line(at, user, "state", &format!(r#","state":"{s}""#))
    }

    #[test]
    fn phases_come_from_the_gaps_between_states_and_chats_from_the_open() {
        let log = [
            line(0, "u", "client_connect", ""),
            state(0, "u", "connecting"),
            state(120, "u", "accepted"),
            line(120, "u", "client_open", ""),
            line(125, "u", "client_send", r#","id":"u/m1""#),
            line(20, "u", "push_issued", r#","id":"u/p1""#),
            state(300, "u", "authenticated"),
            state(540, "u", "services_ready"),
            state(630, "u", "processing_ready"),
        ]
        .join("\n");
        let got = import(&log, &options()).unwrap();
        let s = &got.scenario;
        assert_eq!(s.name, "from-test");
        assert_eq!(
            (
                s.server.accept_ms,
                s.server.auth_ms,
                s.server.services_ms,
                s.server.register_ms
            ),
            (120, 180, 240, 90)
        );
        let u = &s.users[0];
        assert_eq!((u.id.as_str(), u.connect_ms, u.fail_at), ("u", 0, None));
        assert_eq!(u.sends[0].at_ms, 5);
        assert_eq!(u.pushes[0].at_ms, 20);
        assert_eq!(got.events, 9);
        assert!(got.defaulted.contains(&"heartbeat_ms"));
    }

    #[test]
    fn malformed_lines_are_skipped_counted_and_the_first_is_named() {
        let log = [
            line(0, "u", "client_connect", ""),
            "not json at all".to_string(),
            String::new(),
            r#"{"jsonPayload":{"event":"state","state":"accepted"}}"#.to_string(),
            "[1, 2]".to_string(),
            r#"{"severity":"INFO","message":"an unrelated line"}"#.to_string(),
            state(5, "u", "accepted"),
        ]
        .join("\n");
        let got = import(&log, &options()).unwrap();
        assert_eq!(got.lines, 7);
        assert_eq!(
            got.malformed, 3,
            "bad JSON, no user and no time, not an object"
        );
        assert_eq!(got.first_malformed, Some(2));
        assert_eq!(got.scenario.server.accept_ms, 5);
    }

    #[test]
    fn a_log_without_lifecycle_events_is_an_error_that_says_what_was_expected() {
        let log = "garbage\n{\"severity\":\"INFO\",\"message\":\"hello\"}\n";
        let err = import(log, &options()).unwrap_err();
        assert_eq!(
            err,
            ImportError::NoLifecycleEvents {
                lines: 2,
                malformed: 1,
                first_malformed: Some(1)
            }
        );
        let text = err.to_string();
        assert!(
            text.contains("no usable lifecycle events in 2 lines"),
            "{text}"
        );
        assert!(text.contains("the first at line 1"), "{text}");
    }

    #[test]
    fn trace_lines_in_text_payloads_import_like_json_payloads() {
        let log = [
            r#"{"timestamp":"2025-03-01T10:00:00Z","textPayload":"      0 ms  user-1    client connect"}"#,
            r#"{"timestamp":"2025-03-01T10:00:00Z","textPayload":"      0 ms  user-1    state connecting"}"#,
            r#"{"timestamp":"2025-03-01T10:00:00Z","textPayload":"     80 ms  user-1    state accepted"}"#,
            r#"{"timestamp":"2025-03-01T10:00:00Z","textPayload":"     80 ms  user-1    client open"}"#,
            r#"{"timestamp":"2025-03-01T10:00:00Z","textPayload":"     90 ms  user-1    client send user-1/m1"}"#,
            r#"{"timestamp":"2025-03-01T10:00:00Z","textPayload":"    280 ms  user-1    server close 1008"}"#,
            r#"{"timestamp":"2025-03-01T10:00:00Z","textPayload":"    280 ms  user-1    state failed"}"#,
        ]
        .join("\n");
        let s = import(&log, &options()).unwrap().scenario;
        assert_eq!(s.server.accept_ms, 80);
        assert_eq!(s.server.auth_ms, 200, "the failing phase's duration");
        assert_eq!(s.users[0].fail_at, Some(Phase::Auth));
        assert_eq!(s.users[0].sends[0].at_ms, 10);
    }

    #[test]
    fn timestamps_alone_give_times_from_the_earliest_even_newest_first() {
        // A Cloud Logging export: newest first, numbers as doubles, the message in jsonPayload.
        let entry = |ts: &str, event: &str, extra: &str| {
            format!(
                r#"{{"timestamp":"{ts}","severity":"DEBUG","jsonPayload":{{"message":"m","user_id":"101","event":"{event}"{extra}}}}}"#
            )
        };
        let log = [
            entry("2025-03-01T10:00:01.250Z", "client_close", ""),
            entry(
                "2025-03-01T10:00:00.650Z",
                "state",
                r#","state":"authenticated""#,
            ),
            entry(
                "2025-03-01T10:00:00.530Z",
                "client_send",
                r#","id":"101/m1""#,
            ),
            entry(
                "2025-03-01T10:00:00.500Z",
                "state",
                r#","state":"accepted""#,
            ),
            entry(
                "2025-03-01T11:00:00.400+01:00",
                "state",
                r#","state":"connecting","code":1.0"#,
            ),
        ]
        .join("\n");
        let s = import(&log, &options()).unwrap().scenario;
        assert_eq!((s.server.accept_ms, s.server.auth_ms), (100, 150));
        let u = &s.users[0];
        assert_eq!(u.connect_ms, 0);
        assert_eq!(u.sends[0].at_ms, 30);
        assert_eq!(u.close_ms, Some(850), "a real client's close is its own");
    }

    #[test]
    fn a_log_of_several_runs_yields_the_one_asked_for() {
        let labelled = |scenario: &str, endpoint: &str, at: u64| {
            format!(
                r#"{{"labels":{{"scenario":"{scenario}","endpoint":"{endpoint}"}},"jsonPayload":{{"at_ms":{at},"user_id":"u","event":"client_connect"}}}}"#
            )
        };
        let log = [
            labelled("a", "unfixed", 1),
            labelled("b", "unfixed", 2),
            labelled("b", "state-machine", 3),
        ]
        .join("\n");
        let first = import(&log, &options()).unwrap();
        assert_eq!(first.runs.len(), 3);
        assert_eq!(
            (
                first.scenario.name.as_str(),
                first.scenario.users[0].connect_ms
            ),
            ("a", 1)
        );
        let picked = Options {
            scenario: Some("b".into()),
            endpoint: Some(EndpointKind::StateMachine),
            ..options()
        };
        let got = import(&log, &picked).unwrap();
        assert_eq!(got.run, "b [state-machine]");
        assert_eq!(got.scenario.users[0].connect_ms, 3);
        let missing = Options {
            scenario: Some("c".into()),
            ..options()
        };
        let err = import(&log, &missing).unwrap_err().to_string();
        assert!(err.contains("no run matches scenario `c`"), "{err}");
        assert!(err.contains("b [state-machine]"), "{err}");
    }

    #[test]
    fn a_log_longer_than_a_day_is_refused_with_the_time_named() {
        let log = [
            line(0, "u", "client_connect", ""),
            line(90_000_000, "v", "client_connect", ""),
        ]
        .join("\n");
        let err = import(&log, &options()).unwrap_err().to_string();
        assert!(
            err.contains("user v connect_ms would be 90000000 ms"),
            "{err}"
        );
    }
}
