//! An application's logs read through a [`Mapping`]: every line (a text line, or a Cloud Logging
//! entry) that a rule matches becomes a lifecycle event or a production symptom at the line's
//! time; every other line is counted and passed over.
//!
//! The hot path is one [`RegexSet`](regex::RegexSet) test per line: most lines of a real log
//! match no rule, and they cost that one pass. Only a matched line has its groups captured and
//! its time parsed, so a malformed timestamp on a line nobody asked about is not an error.

use std::borrow::Cow;

use chrono::format::{Item, Parsed};
use indexmap::IndexMap;
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{Map, Value};

use super::ImportError;
use super::infer::{Ev, Event, Run, Sighting};
use super::mapping::{Format, Mapping, Rule, RuleEvent, Source};
use super::own::timestamp_ms;
use crate::invariant::Invariant;
use crate::scenario::Scenario;

/// One log to read: its name in messages, and its text.
#[derive(Debug, Clone, Copy)]
pub struct Log<'a> {
    /// The file name (or `-`), as errors and notes name it.
    pub name: &'a str,
    /// Its text.
    pub text: &'a str,
}

/// What reading the logs found.
#[derive(Debug, Default)]
pub(super) struct Reading {
    /// Events by connection, symptoms, as [`infer`](super::infer) takes them.
    pub run: Run,
    /// Lines read, over all logs (for a JSON array: entries).
    pub lines: usize,
    /// Lines some rule matched.
    pub matched: usize,
    /// Lines no rule matched.
    pub unmatched: usize,
    /// JSON lines that are not a log entry, and where the first one is.
    pub not_entries: usize,
    pub first_not_entry: Option<(String, usize)>,
    /// Matched lines whose rule found no user (a jsonPayload field missing from the entry).
    pub unattributed: usize,
    /// Chats and pushes numbered because their rule had no `id`.
    pub numbered: usize,
    /// Connections whose user id another connection already had: later connections of that
    /// user (a repeated `[[user]]` id; labelled `id#2`, `id#3`, ... on the way to the scenario).
    pub renamed: usize,
    /// How each log was read: its name and `text` or `json`.
    pub formats: Vec<(String, &'static str)>,
    /// The earliest matched line's time, ms since the Unix epoch.
    pub earliest_ms: Option<i64>,
}

/// A matched line's contribution before connections get their final user ids.
struct Raw {
    conn: usize,
    ts: i64,
    /// Where it was written, for lines of the same millisecond: (log, line in writing order,
    /// rule).
    order: (usize, usize, usize),
    what: What,
}

enum What {
    Event(Ev),
    /// A chat or a push without an id, numbered once the connection's lines are in time order.
    Unnamed {
        push: bool,
    },
    Symptom(Invariant),
}

/// Reads every log through `mapping`.
pub(super) fn read(logs: &[Log<'_>], mapping: &Mapping) -> Result<Reading, ImportError> {
    let mut r = Reader {
        mapping,
        reading: Reading::default(),
        conns: IndexMap::new(),
        raws: Vec::new(),
        log_index: 0,
    };
    for (index, log) in logs.iter().enumerate() {
        let first = r.raws.len();
        r.log(index, log)?;
        // Exports list the newest entry first: such a log was written bottom up, and lines of
        // one millisecond were written in the reverse of their order in it.
        let this = &mut r.raws[first..];
        if let (Some(a), Some(b)) = (this.first(), this.last())
            && a.ts > b.ts
        {
            for raw in this {
                raw.order.1 = usize::MAX - raw.order.1;
            }
        }
    }
    Ok(r.finish())
}

struct Reader<'m> {
    mapping: &'m Mapping,
    reading: Reading,
    /// Connection key → the first user id a line gave it.
    conns: IndexMap<String, Option<String>>,
    raws: Vec<Raw>,
    /// The log being read.
    log_index: usize,
}

/// A Cloud Logging entry, as much of it as import reads; unknown fields are ignored.
#[derive(Deserialize)]
struct Entry<'a> {
    #[serde(borrow, default)]
    timestamp: Option<Cow<'a, str>>,
    #[serde(borrow, default, rename = "textPayload")]
    text_payload: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    message: Option<Cow<'a, str>>,
    #[serde(default, rename = "jsonPayload")]
    json_payload: Option<Map<String, Value>>,
}

impl Entry<'_> {
    /// The text rules match: `textPayload`, else `jsonPayload.message`, else `message`.
    fn text(&self) -> &str {
        if let Some(t) = &self.text_payload {
            return t;
        }
        if let Some(Value::String(t)) = self.json_payload.as_ref().and_then(|p| p.get("message")) {
            return t;
        }
        self.message.as_deref().unwrap_or("")
    }
}

/// 1-based line of a byte offset.
fn line_of(text: &str, offset: usize) -> usize {
    text.as_bytes()[..offset.min(text.len())]
        .iter()
        .filter(|&&b| b == b'\n')
        .count()
        + 1
}

/// A line as an error shows it: one line, at most 200 characters.
fn shown(text: &str) -> String {
    const MAX: usize = 200;
    let one: String = text
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if one.chars().count() > MAX {
        let head: String = one.chars().take(MAX).collect();
        format!("{head}…")
    } else {
        one
    }
}

impl Reader<'_> {
    fn log(&mut self, index: usize, log: &Log<'_>) -> Result<(), ImportError> {
        self.log_index = index;
        let first = log.text.trim_start().as_bytes().first().copied();
        let json = match self.mapping.format {
            Format::Text => false,
            Format::Json => true,
            Format::Auto => matches!(first, Some(b'[' | b'{')),
        };
        self.reading
            .formats
            .push((log.name.to_string(), if json { "json" } else { "text" }));
        if !json {
            for (i, line) in log.text.lines().enumerate() {
                self.reading.lines += 1;
                self.line(log, i + 1, line, None, None)?;
            }
        } else if first == Some(b'[') {
            let entries: Vec<&RawValue> =
                serde_json::from_str(log.text).map_err(|e| ImportError::NotJson {
                    log: log.name.to_string(),
                    line: e.line(),
                    column: e.column(),
                    // The position is in the message too; it is said once, up front.
                    message: e
                        .to_string()
                        .trim_end_matches(&format!(" at line {} column {}", e.line(), e.column()))
                        .to_string(),
                })?;
            let base = log.text.as_ptr() as usize;
            for raw in entries {
                self.reading.lines += 1;
                let offset = (raw.get().as_ptr() as usize).saturating_sub(base);
                let line = line_of(log.text, offset);
                match serde_json::from_str::<Entry<'_>>(raw.get()) {
                    Ok(entry) => self.entry(log, line, &entry)?,
                    Err(_) => self.not_entry(log, line),
                }
            }
        } else {
            for (i, line) in log.text.lines().enumerate() {
                self.reading.lines += 1;
                if line.trim().is_empty() {
                    continue;
                }
                match serde_json::from_str::<Entry<'_>>(line) {
                    Ok(entry) => self.entry(log, i + 1, &entry)?,
                    Err(_) => self.not_entry(log, i + 1),
                }
            }
        }
        Ok(())
    }

    fn not_entry(&mut self, log: &Log<'_>, line: usize) {
        self.reading.not_entries += 1;
        self.reading
            .first_not_entry
            .get_or_insert_with(|| (log.name.to_string(), line));
    }

    fn entry(&mut self, log: &Log<'_>, line: usize, entry: &Entry<'_>) -> Result<(), ImportError> {
        let ts = entry.timestamp.as_deref();
        self.line(
            log,
            line,
            entry.text(),
            entry.json_payload.as_ref(),
            Some(ts),
        )
    }

    /// One line: `fields` is a JSON entry's `jsonPayload`, `entry_time` its `timestamp` (the
    /// outer `None` for a text line).
    fn line(
        &mut self,
        log: &Log<'_>,
        number: usize,
        text: &str,
        fields: Option<&Map<String, Value>>,
        entry_time: Option<Option<&str>>,
    ) -> Result<(), ImportError> {
        let mapping = self.mapping;
        if !mapping.set.is_match(text) {
            self.reading.unmatched += 1;
            return Ok(());
        }
        self.reading.matched += 1;
        let mut ts: Option<i64> = None;
        for index in mapping.set.matches(text).iter() {
            let rule = &mapping.rules[index];
            let caps = rule.pattern.captures(text);
            let value = |source: &Source| -> Option<String> {
                match source {
                    Source::None => None,
                    Source::Group(name) => caps
                        .as_ref()
                        .and_then(|c| c.name(name))
                        .map(|m| m.as_str().to_string()),
                    Source::Field(path) => field(fields, path),
                }
                .filter(|v| !v.is_empty())
            };
            let user = value(&rule.user);
            let Some(conn) = value(&rule.conn).or_else(|| user.clone()) else {
                self.reading.unattributed += 1;
                continue;
            };
            let state = |name: &str| What::Event(Ev::State(name.to_string()));
            let what = match rule.event {
                RuleEvent::Connect => What::Event(Ev::Connect),
                RuleEvent::Accepted => state("accepted"),
                RuleEvent::Authenticated => state("authenticated"),
                RuleEvent::ServicesReady => state("services_ready"),
                RuleEvent::ProcessingReady => state("processing_ready"),
                RuleEvent::Failed(phase) => What::Event(Ev::Failed(phase)),
                // The client closed its side: its `close_ms`.
                RuleEvent::ClientClosed => What::Event(Ev::Close),
                RuleEvent::Symptom(invariant) => What::Symptom(invariant),
                RuleEvent::Chat | RuleEvent::Push => {
                    let push = rule.event == RuleEvent::Push;
                    match value(&rule.id) {
                        Some(id) if push => What::Event(Ev::PushIssued(id)),
                        Some(id) => What::Event(Ev::Send(id)),
                        None => What::Unnamed { push },
                    }
                }
                RuleEvent::ServerClosed => {
                    let code = value(&rule.code).unwrap_or_default();
                    match code.parse::<u16>() {
                        Ok(c) if (1000..=4999).contains(&c) => What::Event(Ev::ServerClose(c)),
                        _ => {
                            return Err(ImportError::BadCode {
                                log: log.name.to_string(),
                                line: number,
                                rule: rule.describe(),
                                value: code,
                                text: shown(text),
                            });
                        }
                    }
                }
            };
            let at = self.time(log, number, text, rule, entry_time, &mut ts)?;
            self.add(conn, user, at, (self.log_index, number, index), what);
        }
        Ok(())
    }

    /// The line's time, parsed once however many rules matched it.
    fn time(
        &mut self,
        log: &Log<'_>,
        number: usize,
        text: &str,
        rule: &Rule,
        entry_time: Option<Option<&str>>,
        cache: &mut Option<i64>,
    ) -> Result<i64, ImportError> {
        if let Some(t) = *cache {
            return Ok(t);
        }
        let t = match entry_time {
            Some(Some(ts)) => timestamp_ms(ts)
                .ok_or_else(|| format!("its timestamp {ts:?} is not an RFC 3339 time")),
            // An entry without a timestamp still has the text's, if the mapping can read it.
            Some(None) if self.mapping.timestamp.is_none() => {
                Err("the entry has no `timestamp`".to_string())
            }
            Some(None) | None => text_time(self.mapping, text),
        }
        .map_err(|why| ImportError::LineTime {
            log: log.name.to_string(),
            line: number,
            rule: rule.describe(),
            why,
            text: shown(text),
        })?;
        self.reading.earliest_ms = Some(self.reading.earliest_ms.map_or(t, |e| e.min(t)));
        *cache = Some(t);
        Ok(t)
    }

    fn add(
        &mut self,
        conn: String,
        user: Option<String>,
        ts: i64,
        order: (usize, usize, usize),
        what: What,
    ) {
        let entry = self.conns.entry(conn);
        let index = entry.index();
        let first = entry.or_insert(None);
        if first.is_none() {
            *first = user;
        }
        self.raws.push(Raw {
            conn: index,
            ts,
            order,
            what,
        });
    }

    /// Final user ids, chats and pushes deduplicated by id and numbered where they had none.
    fn finish(mut self) -> Reading {
        // Time order (ties in the order they were written), so the first of two lines about one
        // chat is kept and unnamed chats are numbered as they happened.
        self.raws.sort_by_key(|r| (r.ts, r.order));
        // A user id appears once in a scenario: of two connections of one user, the later one
        // becomes `id#2`, in time order whichever order the log lists them in. Connections
        // with lifecycle lines come first: one with symptoms only never becomes a user.
        let mut order: Vec<usize> = Vec::with_capacity(self.conns.len());
        let mut placed = vec![false; self.conns.len()];
        for symptoms in [false, true] {
            for raw in &self.raws {
                if matches!(raw.what, What::Symptom(_)) == symptoms && !placed[raw.conn] {
                    placed[raw.conn] = true;
                    order.push(raw.conn);
                }
            }
        }
        let mut taken: std::collections::HashSet<String> = std::collections::HashSet::new();
        let mut ids: Vec<String> = vec![String::new(); self.conns.len()];
        for index in order {
            let Some((conn, user)) = self.conns.get_index(index) else {
                continue;
            };
            let base = user.clone().unwrap_or_else(|| conn.clone());
            let mut id = base.clone();
            let mut n = 1;
            while taken.contains(&id) {
                n += 1;
                id = format!("{base}#{n}");
            }
            if n > 1 {
                self.reading.renamed += 1;
            }
            taken.insert(id.clone());
            ids[index] = id;
        }
        let mut seen: IndexMap<(usize, bool, String), ()> = IndexMap::new();
        let mut counts: IndexMap<(usize, bool), usize> = IndexMap::new();
        for raw in self.raws {
            let user = ids[raw.conn].clone();
            let ev = match raw.what {
                What::Symptom(invariant) => {
                    self.reading.run.symptoms.push(Sighting {
                        ts_ms: raw.ts,
                        user,
                        invariant,
                    });
                    continue;
                }
                What::Unnamed { push } => {
                    let n = counts.entry((raw.conn, push)).or_insert(0);
                    *n += 1;
                    self.reading.numbered += 1;
                    let id = format!("{} {n}", if push { "push" } else { "chat" });
                    if push {
                        Ev::PushIssued(id)
                    } else {
                        Ev::Send(id)
                    }
                }
                What::Event(ev) => {
                    let key = match &ev {
                        Ev::Send(id) => Some((raw.conn, false, id.clone())),
                        Ev::PushIssued(id) => Some((raw.conn, true, id.clone())),
                        _ => None,
                    };
                    if let Some(key) = key
                        && seen.insert(key, ()).is_some()
                    {
                        continue;
                    }
                    ev
                }
            };
            self.reading.run.events.push(Event {
                at_ms: None,
                ts_ms: Some(raw.ts),
                user,
                ev,
            });
        }
        self.reading
    }
}

/// A text line's time: the `[line]` timestamp regex's group `ts`, parsed with `time_format`.
fn text_time(mapping: &Mapping, text: &str) -> Result<i64, String> {
    let (Some(regex), Some((format, items))) = (&mapping.timestamp, &mapping.time_format) else {
        return Err(
            "the mapping's [line] has no `timestamp` and `time_format` to read a text line's \
             time with"
                .into(),
        );
    };
    let Some(ts) = regex.captures(text).and_then(|c| c.name("ts")) else {
        return Err(format!(
            "the [line] timestamp regex {:?} does not match it",
            regex.as_str()
        ));
    };
    parse_time(ts.as_str(), items).map_err(|e| {
        format!(
            "time_format {format:?} does not parse its timestamp {:?}: {e}",
            ts.as_str()
        )
    })
}

/// Milliseconds since the Unix epoch of `ts` read with `items`: UTC unless the format has an
/// offset; a format with a time of day but no date puts the time on 1970-01-01.
fn parse_time(ts: &str, items: &[Item<'static>]) -> Result<i64, String> {
    let mut parsed = Parsed::new();
    chrono::format::parse(&mut parsed, ts, items.iter()).map_err(|e| e.to_string())?;
    if let Ok(t) = parsed.to_datetime() {
        return Ok(t.timestamp_millis());
    }
    if let Ok(t) = parsed.to_naive_datetime_with_offset(0) {
        return Ok(t.and_utc().timestamp_millis());
    }
    match parsed.to_naive_time() {
        Ok(time) => Ok(chrono::DateTime::UNIX_EPOCH
            .date_naive()
            .and_time(time)
            .and_utc()
            .timestamp_millis()),
        Err(e) => Err(format!("it gives no time of day ({e})")),
    }
}

/// A `jsonPayload` field by path, as text: strings as they are, numbers in decimal (integral
/// doubles, as Cloud Logging stores numbers, without their `.0`), booleans as words.
fn field(fields: Option<&Map<String, Value>>, path: &[String]) -> Option<String> {
    let (first, rest) = path.split_first()?;
    let mut v = fields?.get(first)?;
    for key in rest {
        v = v.as_object()?.get(key)?;
    }
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => match n.as_f64() {
            Some(f) if n.is_f64() && f.fract() == 0.0 && f.abs() < 1e15 => {
                Some(format!("{}", f as i64))
            }
            _ => Some(n.to_string()),
        },
        Value::Bool(b) => Some(b.to_string()),
        Value::Null | Value::Array(_) | Value::Object(_) => None,
    }
}

/// What a mapped import found (`notes`: standard error and the header) and every assumption it
/// made (`assumptions`: the header), one sentence each.
pub(super) fn describe(
    r: &Reading,
    m: &Mapping,
    names: &str,
    s: &Scenario,
    defaulted: &[&str],
    orphaned: usize,
) -> (Vec<String>, Vec<String>) {
    let map = m.file.display();
    let mut notes = vec![format!(
        "Imported by `racegate import` from {names} with {map}: {} users from {} lifecycle \
         events and {} symptom lines, in {} lines ({} matched no rule).",
        s.users.len(),
        r.run.events.len(),
        r.run.symptoms.len(),
        r.lines,
        r.unmatched
    )];
    if let Some((log, line)) = &r.first_not_entry {
        notes.push(format!(
            "Skipped {} lines that are not Cloud Logging entries, the first at {log}:{line}.",
            r.not_entries
        ));
    }
    if r.unattributed > 0 {
        notes.push(format!(
            "Skipped {} matched lines whose rule found no user in them (a jsonPayload field \
             the entry lacks).",
            r.unattributed
        ));
    }
    if orphaned > 0 {
        notes.push(format!(
            "Skipped {orphaned} symptom lines of connections with no lifecycle line."
        ));
    }
    if !defaulted.is_empty() {
        notes.push(format!(
            "Not in the log, so defaulted: {}.",
            defaulted.join(", ")
        ));
    }
    let seen: Vec<&str> = s
        .expect_invariants
        .values()
        .flat_map(|m| m.invariants().iter().map(|i| i.name()))
        .collect();
    notes.push(if seen.is_empty() {
        "No symptom line matched: only state-machine is gated (pass). If production showed \
         errors, add a symptom rule for their lines."
            .to_string()
    } else {
        format!(
            "The production symptoms are the expectation: {} (the production endpoint's model) \
             fails with exactly [{}], state-machine passes; `racegate run` says whether the \
             replay reproduces each one.",
            crate::scenario::PRODUCTION,
            seen.join(", ")
        )
    });

    let mut a = Vec::new();
    let formats: Vec<String> = r
        .formats
        .iter()
        .map(|(log, f)| match *f {
            "json" => format!("{log} as Cloud Logging entries"),
            _ => format!("{log} as text lines"),
        })
        .collect();
    a.push(format!(
        "Lines: {} ([line] format {:?}{}).",
        formats.join(", "),
        m.format.name(),
        if m.format_defaulted {
            ", the default"
        } else {
            ""
        }
    ));
    let mut time = Vec::new();
    if r.formats.iter().any(|(_, f)| *f == "text")
        && let (Some(re), Some((format, _))) = (&m.timestamp, &m.time_format)
    {
        time.push(format!(
            "a text line's time is the group `ts` of `{}` read with {format:?}, in UTC unless \
             the format has an offset",
            re.as_str()
        ));
    }
    if r.formats.iter().any(|(_, f)| *f == "json") {
        time.push("an entry's time is its `timestamp` (RFC 3339)".to_string());
    }
    let origin = r
        .earliest_ms
        .and_then(chrono::DateTime::from_timestamp_millis)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
        .unwrap_or_default();
    a.push(format!(
        "Time: {}; times count from the earliest matched line ({origin} is 0 ms), and lines \
         may come in any order.",
        time.join("; ")
    ));
    a.push(if m.has_conn() {
        format!(
            "Connections: a rule's `conn` tells them apart; a user's later connections are more \
             [[user]] entries with the same id ({} later connections).",
            r.renamed
        )
    } else {
        format!(
            "Connections: one per user (no rule reads a `conn`){}.",
            if r.renamed > 0 {
                format!(
                    ", {} later connections of a user by their conn key",
                    r.renamed
                )
            } else {
                String::new()
            }
        )
    });
    a.push(
        "A user connects at its `connect` line, else at its first matched line; its client sees \
         the socket open at its `accepted` line."
            .to_string(),
    );
    a.push(format!(
        "A chat line is the server seeing the chat arrive: it is sent at that time after the \
         open; a push at its time after the connect. Texts are not logged, so ids stand in \
         (mind queue_bytes){}.",
        if r.numbered > 0 {
            format!(
                "; {} without an id are numbered per user (chat 1, chat 2, ...)",
                r.numbered
            )
        } else {
            String::new()
        }
    ));
    a.push(
        "Phases (accept_ms, auth_ms, services_ms, register_ms): the median over connections of \
         the gaps between `connect`, `accepted`, `authenticated`, `services_ready` and \
         `processing_ready`; a `failed` line sets its user's fail_at and the failing phase's \
         duration."
            .to_string(),
    );
    a.push(
        "A `client_closed` line is the client's own close, its close_ms (the end of a session \
         too: the replay then closes at the same time)."
            .to_string(),
    );
    a.push(
        "Symptoms: the first line of each invariant for each user is a [[production]] entry, at \
         its time on the same clock."
            .to_string(),
    );
    (notes, a)
}
