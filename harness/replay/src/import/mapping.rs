//! The mapping file of `racegate import --map`: how an application's own log lines become the
//! lifecycle events import infers a scenario from.
//!
//! An application does not log racegate's vocabulary. A mapping says where a line's text and
//! time are (`[line]`) and which lines are which event (`[[rule]]`: a regex over the text, its
//! named groups supplying the user, connection, message id and close code). It is checked the
//! way scenario files are: raw serde structs that deny unknown keys, then validation that points
//! at the offending value with `file:line:column`, so a typo in a mapping is found before a
//! million-line log is read.

use std::ops::Range;
use std::path::{Path, PathBuf};

use chrono::format::{Item, StrftimeItems};
use regex::{Regex, RegexSet};
use serde::Deserialize;
use toml::Spanned;

use crate::invariant::Invariant;
use crate::scenario::{Phase, line_col, toml_message};

/// A validated mapping.
#[derive(Debug)]
pub struct Mapping {
    /// Where it was read from, for notes.
    pub(super) file: PathBuf,
    pub(super) format: Format,
    /// `format` was left out.
    pub(super) format_defaulted: bool,
    /// Text lines: a regex whose group `ts` is the line's time ...
    pub(super) timestamp: Option<Regex>,
    /// ... and that time's strftime format (as written, and parsed once).
    pub(super) time_format: Option<(String, Vec<Item<'static>>)>,
    pub(super) rules: Vec<Rule>,
    /// Every rule's pattern, in rule order: one pass over a line finds the rules that match.
    pub(super) set: RegexSet,
}

/// How a log's lines are read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Format {
    /// Each line as it is.
    Text,
    /// Cloud Logging entries: a JSON array, or one entry per line.
    Json,
    /// A log starting with `[` or `{` is JSON, any other text.
    Auto,
}

impl Format {
    pub(super) const fn name(self) -> &'static str {
        match self {
            Format::Text => "text",
            Format::Json => "json",
            Format::Auto => "auto",
        }
    }
}

/// One `[[rule]]`.
#[derive(Debug)]
pub(super) struct Rule {
    /// 1-based, in file order.
    pub number: usize,
    pub pattern: Regex,
    pub event: RuleEvent,
    /// Whose connection: `conn`, else `user`.
    pub conn: Source,
    pub user: Source,
    pub id: Source,
    pub code: Source,
}

impl Rule {
    /// `rule 3 (accepted)`, as errors and notes name a rule.
    pub(super) fn describe(&self) -> String {
        format!("rule {} ({})", self.number, self.event.name())
    }
}

/// The event a rule's lines are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum RuleEvent {
    Connect,
    Accepted,
    Authenticated,
    ServicesReady,
    ProcessingReady,
    Chat,
    Push,
    Failed(Phase),
    ClientClosed,
    ServerClosed,
    Symptom(Invariant),
}

/// The names a rule's `event` may take.
pub(super) const EVENTS: [&str; 11] = [
    "connect",
    "accepted",
    "authenticated",
    "services_ready",
    "processing_ready",
    "chat",
    "push",
    "failed",
    "client_closed",
    "server_closed",
    "symptom",
];

impl RuleEvent {
    pub(super) const fn name(self) -> &'static str {
        match self {
            RuleEvent::Connect => "connect",
            RuleEvent::Accepted => "accepted",
            RuleEvent::Authenticated => "authenticated",
            RuleEvent::ServicesReady => "services_ready",
            RuleEvent::ProcessingReady => "processing_ready",
            RuleEvent::Chat => "chat",
            RuleEvent::Push => "push",
            RuleEvent::Failed(_) => "failed",
            RuleEvent::ClientClosed => "client_closed",
            RuleEvent::ServerClosed => "server_closed",
            RuleEvent::Symptom(_) => "symptom",
        }
    }
}

/// Where a rule takes a value from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Source {
    /// Nowhere.
    None,
    /// A named group of the pattern.
    Group(&'static str),
    /// A field of a Cloud Logging entry's `jsonPayload`, by path (`["user_id"]`).
    Field(Vec<String>),
}

/// The named groups a pattern may have.
const GROUPS: [&str; 4] = ["user", "conn", "id", "code"];

/// A mapping that could not be read, with where.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MappingError {
    /// The file could not be read.
    #[error("{}: {message}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS's words.
        message: String,
    },
    /// The file is not a valid mapping; `line` and `column` are 1-based.
    #[error("{}:{line}:{column}: {message}", path.display())]
    Invalid {
        /// The file.
        path: PathBuf,
        /// 1-based line of the offending value.
        line: usize,
        /// 1-based column of the offending value.
        column: usize,
        /// What is wrong and what would be right.
        message: String,
    },
}

// ---------------------------------------------------------------------------------------------
// The file's shape.

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMapping {
    line: Option<RawLine>,
    rule: Option<Spanned<Vec<Spanned<RawRule>>>>,
}

/// `[line]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a [line] table")]
struct RawLine {
    format: Option<Spanned<String>>,
    timestamp: Option<Spanned<String>>,
    time_format: Option<Spanned<String>>,
}

/// One `[[rule]]`. Every key is optional here so that a missing one is reported in words.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a [[rule]] table")]
struct RawRule {
    pattern: Option<Spanned<String>>,
    event: Option<Spanned<String>>,
    phase: Option<Spanned<String>>,
    invariant: Option<Spanned<String>>,
    user: Option<Spanned<String>>,
    conn: Option<Spanned<String>>,
    id: Option<Spanned<String>>,
    code: Option<Spanned<String>>,
}

struct Locator<'a> {
    text: &'a str,
    path: &'a Path,
}

impl Locator<'_> {
    fn invalid(&self, span: Option<Range<usize>>, message: String) -> MappingError {
        let (line, column) = span.map_or((1, 1), |s| line_col(self.text, s.start));
        MappingError::Invalid {
            path: self.path.to_path_buf(),
            line,
            column,
            message,
        }
    }

    fn at<T>(&self, spanned: &Spanned<T>, message: String) -> MappingError {
        self.invalid(Some(spanned.span()), message)
    }
}

impl Mapping {
    /// Reads and validates a mapping file.
    pub fn load(path: &Path) -> Result<Mapping, MappingError> {
        let text = std::fs::read_to_string(path).map_err(|e| MappingError::Io {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
        Mapping::parse(&text, path)
    }

    /// Parses and validates mapping text; `path` is used in errors and notes.
    pub fn parse(text: &str, path: &Path) -> Result<Mapping, MappingError> {
        let at = Locator { text, path };
        let raw: RawMapping = toml::from_str(text).map_err(|e| {
            let (span, message) = toml_message(text, &e);
            at.invalid(span, message)
        })?;
        let (format, format_defaulted) = match raw.line.as_ref().and_then(|l| l.format.as_ref()) {
            None => (Format::Auto, true),
            Some(f) => (
                match f.get_ref().as_str() {
                    "text" => Format::Text,
                    "json" => Format::Json,
                    "auto" => Format::Auto,
                    other => {
                        return Err(at.at(
                            f,
                            format!(
                                "`format` must be \"text\" (each line as it is), \"json\" (Cloud \
                                 Logging entries) or \"auto\" (JSON if the log starts with `[` or \
                                 `{{`), got {other:?}"
                            ),
                        ));
                    }
                },
                false,
            ),
        };
        let (timestamp, time_format) = time_of_line(&at, raw.line.as_ref(), format)?;
        let Some(raw_rules) = raw.rule else {
            return Err(at.invalid(
                None,
                "a mapping needs at least one [[rule]]: a `pattern` over a line's text and the \
                 `event` its lines are"
                    .into(),
            ));
        };
        if raw_rules.get_ref().is_empty() {
            return Err(at.at(&raw_rules, "a mapping needs at least one [[rule]]".into()));
        }
        let mut rules = Vec::with_capacity(raw_rules.get_ref().len());
        for (i, r) in raw_rules.get_ref().iter().enumerate() {
            rules.push(rule(&at, i + 1, r, format)?);
        }
        let set = RegexSet::new(rules.iter().map(|r| r.pattern.as_str())).map_err(|e| {
            // Each pattern compiled alone; together they can still exceed the size limit.
            at.at(
                &raw_rules,
                format!(
                    "the rules' patterns together are too large: {}",
                    regex_reason(&e)
                ),
            )
        })?;
        Ok(Mapping {
            file: path.to_path_buf(),
            format,
            format_defaulted,
            timestamp,
            time_format,
            rules,
            set,
        })
    }

    /// True when some rule takes a `conn` (a connection key apart from the user).
    pub(super) fn has_conn(&self) -> bool {
        self.rules.iter().any(|r| r.conn != Source::None)
    }
}

/// `[line]`'s `timestamp` and `time_format`: both or neither, required for text lines.
type LineTime = (Option<Regex>, Option<(String, Vec<Item<'static>>)>);

fn time_of_line(
    at: &Locator<'_>,
    raw: Option<&RawLine>,
    format: Format,
) -> Result<LineTime, MappingError> {
    let timestamp = raw.and_then(|l| l.timestamp.as_ref());
    let time_format = raw.and_then(|l| l.time_format.as_ref());
    let (timestamp, time_format) = match (timestamp, time_format) {
        (None, None) if format == Format::Text => {
            return Err(at.invalid(
                None,
                "text lines need their time: set `timestamp` (a regex with a group `ts`) and \
                 `time_format` (its strftime format) in [line]"
                    .into(),
            ));
        }
        (None, None) => return Ok((None, None)),
        (Some(t), None) => {
            return Err(at.at(
                t,
                "`timestamp` needs `time_format` too: the strftime format of the group `ts` \
                 (e.g. \"%Y-%m-%d %H:%M:%S,%3f\")"
                    .into(),
            ));
        }
        (None, Some(f)) => {
            return Err(at.at(
                f,
                "`time_format` needs `timestamp` too: a regex whose group `ts` is the time \
                 (e.g. '^(?P<ts>\\S+ \\S+)')"
                    .into(),
            ));
        }
        (Some(t), Some(f)) => (t, f),
    };
    let regex = Regex::new(timestamp.get_ref()).map_err(|e| {
        at.at(
            timestamp,
            format!("`timestamp` is not a valid regex: {}", regex_reason(&e)),
        )
    })?;
    if !regex.capture_names().any(|n| n == Some("ts")) {
        return Err(at.at(
            timestamp,
            "`timestamp` needs a group named `ts` around the time, e.g. '^(?P<ts>\\S+ \\S+)'"
                .into(),
        ));
    }
    let items = StrftimeItems::new(time_format.get_ref())
        .parse_to_owned()
        .map_err(|_| {
            at.at(
                time_format,
                format!(
                    "`time_format` {:?} is not a valid strftime format (a `%` not followed by a \
                     known specifier); e.g. \"%Y-%m-%d %H:%M:%S,%3f\"",
                    time_format.get_ref()
                ),
            )
        })?;
    Ok((Some(regex), Some((time_format.get_ref().clone(), items))))
}

/// One regex error in one line: the crate's syntax errors draw a caret diagram over several
/// lines, whose last line says what is wrong.
fn regex_reason(e: &regex::Error) -> String {
    match e {
        regex::Error::Syntax(text) => text
            .lines()
            .rev()
            .find(|l| !l.trim().is_empty())
            .map(|l| l.trim().trim_start_matches("error: ").to_string())
            .unwrap_or_else(|| text.clone()),
        other => other.to_string(),
    }
}

fn rule(
    at: &Locator<'_>,
    number: usize,
    raw: &Spanned<RawRule>,
    format: Format,
) -> Result<Rule, MappingError> {
    let r = raw.get_ref();
    let here = |message: String| at.at(raw, format!("rule {number}: {message}"));
    let Some(event) = &r.event else {
        return Err(here(format!(
            "no `event`: say which event its lines are, one of {}",
            EVENTS.join(", ")
        )));
    };
    let Some(pattern) = &r.pattern else {
        return Err(here(
            "no `pattern`: a regex over a line's text, its named groups giving user, conn, id \
             or code"
                .into(),
        ));
    };
    let regex = Regex::new(pattern.get_ref()).map_err(|e| {
        at.at(
            pattern,
            format!(
                "rule {number}'s `pattern` is not a valid regex: {}",
                regex_reason(&e)
            ),
        )
    })?;
    let groups: Vec<&str> = regex.capture_names().flatten().collect();
    if let Some(bad) = groups.iter().find(|g| !GROUPS.contains(g)) {
        return Err(at.at(
            pattern,
            format!(
                "rule {number}'s `pattern` has a group `{bad}`; the groups a rule reads are \
                 user, conn, id and code"
            ),
        ));
    }
    let kind = match event.get_ref().as_str() {
        "connect" => RuleEvent::Connect,
        "accepted" => RuleEvent::Accepted,
        "authenticated" => RuleEvent::Authenticated,
        "services_ready" => RuleEvent::ServicesReady,
        "processing_ready" => RuleEvent::ProcessingReady,
        "chat" => RuleEvent::Chat,
        "push" => RuleEvent::Push,
        "client_closed" => RuleEvent::ClientClosed,
        "server_closed" => RuleEvent::ServerClosed,
        "failed" => {
            let Some(phase) = &r.phase else {
                return Err(at.at(
                    event,
                    format!(
                        "rule {number}: a `failed` rule needs `phase = \"auth\"`, \"services\" or \
                         \"register\": the setup phase its lines say failed"
                    ),
                ));
            };
            RuleEvent::Failed(match phase.get_ref().as_str() {
                "auth" => Phase::Auth,
                "services" => Phase::Services,
                "register" => Phase::Register,
                other => {
                    return Err(at.at(
                        phase,
                        format!(
                            "`phase` must be \"auth\", \"services\" or \"register\", got {other:?}"
                        ),
                    ));
                }
            })
        }
        "symptom" => {
            let Some(invariant) = &r.invariant else {
                return Err(at.at(
                    event,
                    format!(
                        "rule {number}: a `symptom` rule needs `invariant`: the invariant its \
                         lines show broken, one of {}",
                        Invariant::ALL.map(Invariant::name).join(", ")
                    ),
                ));
            };
            RuleEvent::Symptom(
                invariant
                    .get_ref()
                    .parse()
                    .map_err(|e| at.at(invariant, format!("rule {number}: {e}")))?,
            )
        }
        other => {
            return Err(at.at(
                event,
                format!(
                    "rule {number}: unknown event {other:?}; expected one of {}",
                    EVENTS.join(", ")
                ),
            ));
        }
    };
    if let (Some(p), false) = (&r.phase, matches!(kind, RuleEvent::Failed(_))) {
        return Err(at.at(
            p,
            format!(
                "rule {number}: `phase` belongs to `failed` rules, and this one is `{}`",
                kind.name()
            ),
        ));
    }
    if let (Some(i), false) = (&r.invariant, matches!(kind, RuleEvent::Symptom(_))) {
        return Err(at.at(
            i,
            format!(
                "rule {number}: `invariant` belongs to `symptom` rules, and this one is `{}`",
                kind.name()
            ),
        ));
    }
    let source =
        |key: &'static str, raw: &Option<Spanned<String>>| -> Result<Source, MappingError> {
            let group = groups.contains(&key);
            match raw {
            None if group => Ok(Source::Group(key)),
            None => Ok(Source::None),
            Some(v) if group => Err(at.at(
                v,
                format!(
                    "rule {number} takes `{key}` both from its pattern's group `{key}` and from \
                     {:?}: keep one",
                    v.get_ref()
                ),
            )),
            Some(v) if format == Format::Text => Err(at.at(
                v,
                format!(
                    "rule {number}: `{key}` = {:?} reads a Cloud Logging entry's jsonPayload, \
                     but [line] format is \"text\"; use a group (?P<{key}>...) in the pattern",
                    v.get_ref()
                ),
            )),
            Some(v) => {
                let path = v.get_ref().strip_prefix("jsonPayload.").map(|p| {
                    p.split('.').map(str::to_string).collect::<Vec<_>>()
                });
                match path {
                    Some(p) if p.iter().all(|s| !s.is_empty()) => Ok(Source::Field(p)),
                    _ => Err(at.at(
                        v,
                        format!(
                            "rule {number}: `{key}` names a field of the entry's jsonPayload, as \
                             \"jsonPayload.{key}_id\", got {:?}",
                            v.get_ref()
                        ),
                    )),
                }
            }
        }
        };
    let rule = Rule {
        number,
        event: kind,
        conn: source("conn", &r.conn)?,
        user: source("user", &r.user)?,
        id: source("id", &r.id)?,
        code: source("code", &r.code)?,
        pattern: regex,
    };
    if rule.conn == Source::None && rule.user == Source::None {
        return Err(at.at(
            pattern,
            format!(
                "rule {number} cannot tell whose connection a line is about: add a group \
                 (?P<user>...) (or (?P<conn>...)) to its pattern, or user = \"jsonPayload.<field>\""
            ),
        ));
    }
    if rule.event == RuleEvent::ServerClosed && rule.code == Source::None {
        return Err(at.at(
            pattern,
            format!(
                "rule {number}: a `server_closed` rule needs the close code: a group \
                 (?P<code>\\d+) in its pattern, or code = \"jsonPayload.<field>\""
            ),
        ));
    }
    Ok(rule)
}

#[cfg(test)]
mod tests {
    use rstest::rstest;

    use super::*;

    fn lines(ls: &[&str]) -> String {
        let mut s = ls.join("\n");
        s.push('\n');
        s
    }

    const LINE: [&str; 3] = [
        "[line]",
        "timestamp = '^(?P<ts>\\S+ \\S+)'",
        "time_format = \"%Y-%m-%d %H:%M:%S,%3f\"",
    ];

    fn with_line(rest: &[&str]) -> String {
        let mut all: Vec<&str> = LINE.to_vec();
        all.extend_from_slice(rest);
        lines(&all)
    }

    #[test]
    fn a_mapping_reads_its_rules_in_file_order() {
        let m = Mapping::parse(
            &with_line(&[
                "[[rule]]",
                "pattern = 'accepted (?P<user>\\S+), setup starts'",
                "event = \"accepted\"",
                "[[rule]]",
                "pattern = 'dropping message (?P<id>\\S+) from (?P<user>\\S+)'",
                "event = \"chat\"",
                "[[rule]]",
                "pattern = 'dropping message \\S+ from (?P<user>\\S+)'",
                "event = \"symptom\"",
                "invariant = \"message-lost\"",
                "[[rule]]",
                "pattern = 'auth failed for (?P<conn>\\S+)'",
                "event = \"failed\"",
                "phase = \"auth\"",
            ]),
            Path::new("map.toml"),
        )
        .unwrap();
        assert_eq!(m.format, Format::Auto);
        assert!(m.format_defaulted);
        let events: Vec<RuleEvent> = m.rules.iter().map(|r| r.event).collect();
        assert_eq!(
            events,
            [
                RuleEvent::Accepted,
                RuleEvent::Chat,
                RuleEvent::Symptom(Invariant::MessageLost),
                RuleEvent::Failed(Phase::Auth)
            ]
        );
        assert_eq!(m.rules[1].id, Source::Group("id"));
        assert_eq!(m.rules[3].conn, Source::Group("conn"));
        assert_eq!(m.rules[3].user, Source::None);
        assert!(m.has_conn());
    }

    #[test]
    fn a_rule_may_take_its_user_from_a_json_payload_field() {
        let m = Mapping::parse(
            &lines(&[
                "[line]",
                "format = \"json\"",
                "[[rule]]",
                "pattern = '^accepted'",
                "event = \"accepted\"",
                "user = \"jsonPayload.user.id\"",
            ]),
            Path::new("map.toml"),
        )
        .unwrap();
        assert_eq!(
            m.rules[0].user,
            Source::Field(vec!["user".into(), "id".into()])
        );
        assert!(m.timestamp.is_none(), "json lines carry their own time");
    }

    /// The line, column and message of a mapping that must be `Invalid`.
    fn invalid(text: &str) -> (usize, usize, String) {
        match Mapping::parse(text, Path::new("map.toml")) {
            Err(MappingError::Invalid {
                line,
                column,
                message,
                ..
            }) => (line, column, message),
            other => panic!("expected an Invalid error, got {other:?}"),
        }
    }

    #[rstest]
    #[case::a_bad_regex_names_the_rule_and_the_regex_error(
        &["[[rule]]", "pattern = 'accepted (?P<user>\\S+'", "event = \"accepted\""],
        5, 11, "rule 1's `pattern` is not a valid regex: unclosed group"
    )]
    #[case::a_rule_without_an_event_lists_the_events(
        &["[[rule]]", "pattern = 'x (?P<user>\\S+)'"],
        4, 1, "rule 1: no `event`: say which event its lines are, one of connect, accepted"
    )]
    #[case::an_unknown_event_lists_the_events(
        &["[[rule]]", "pattern = 'x (?P<user>\\S+)'", "event = \"acepted\""],
        6, 9, "rule 1: unknown event \"acepted\"; expected one of connect, accepted"
    )]
    #[case::a_rule_without_a_pattern_says_what_one_is(
        &["[[rule]]", "event = \"accepted\""], 4, 1, "rule 1: no `pattern`"
    )]
    #[case::an_unknown_group_is_named(
        &["[[rule]]", "pattern = 'x (?P<usr>\\S+)'", "event = \"accepted\""],
        5, 11, "has a group `usr`; the groups a rule reads are user, conn, id and code"
    )]
    #[case::a_rule_that_names_no_user_says_how_to(
        &["[[rule]]", "pattern = 'accepted'", "event = \"accepted\""],
        5, 11, "rule 1 cannot tell whose connection a line is about"
    )]
    #[case::a_failed_rule_needs_its_phase(
        &["[[rule]]", "pattern = 'x (?P<user>\\S+)'", "event = \"failed\""],
        6, 9, "a `failed` rule needs `phase"
    )]
    #[case::an_unknown_phase_is_rejected_at_its_value(
        &["[[rule]]", "pattern = 'x (?P<user>\\S+)'", "event = \"failed\"", "phase = \"login\""],
        7, 9, "`phase` must be \"auth\", \"services\" or \"register\", got \"login\""
    )]
    #[case::a_symptom_rule_needs_its_invariant(
        &["[[rule]]", "pattern = 'x (?P<user>\\S+)'", "event = \"symptom\""],
        6, 9, "a `symptom` rule needs `invariant`"
    )]
    #[case::an_unknown_invariant_lists_the_invariants(
        &["[[rule]]", "pattern = 'x (?P<user>\\S+)'", "event = \"symptom\"",
          "invariant = \"lost\""],
        7, 13, "rule 1: unknown invariant `lost`; expected one of accept-first"
    )]
    #[case::a_phase_on_another_event_is_refused(
        &["[[rule]]", "pattern = 'x (?P<user>\\S+)'", "event = \"chat\"", "phase = \"auth\""],
        7, 9, "`phase` belongs to `failed` rules, and this one is `chat`"
    )]
    #[case::a_server_close_needs_its_code(
        &["[[rule]]", "pattern = 'closed (?P<user>\\S+)'", "event = \"server_closed\""],
        5, 11, "a `server_closed` rule needs the close code"
    )]
    #[case::a_value_from_both_a_group_and_a_field_is_refused(
        &["[[rule]]", "pattern = 'x (?P<user>\\S+)'", "event = \"chat\"",
          "user = \"jsonPayload.user_id\""],
        7, 8, "takes `user` both from its pattern's group `user` and from"
    )]
    #[case::a_field_must_be_in_the_json_payload(
        &["[[rule]]", "pattern = 'x'", "event = \"chat\"", "user = \"labels.user\""],
        7, 8, "names a field of the entry's jsonPayload"
    )]
    #[case::an_unknown_rule_key_lists_the_keys(
        &["[[rule]]", "pattern = 'x (?P<user>\\S+)'", "event = \"chat\"", "evnt = \"chat\""],
        7, 1, "unknown key `evnt`, expected one of `pattern`, `event`"
    )]
    #[case::a_single_rule_table_asks_for_an_array_of_tables(
        &["[rule]", "pattern = 'x (?P<user>\\S+)'", "event = \"chat\""],
        4, 1, "write [[rule]]"
    )]
    #[case::no_rules_at_all_asks_for_one(&[], 1, 1, "a mapping needs at least one [[rule]]")]
    fn an_invalid_rule_is_reported_at_the_offending_place(
        #[case] rest: &[&str],
        #[case] line: usize,
        #[case] column: usize,
        #[case] phrase: &str,
    ) {
        let text = with_line(rest);
        let (l, c, message) = invalid(&text);
        assert!(
            message.contains(phrase),
            "{message:?} does not contain {phrase:?}"
        );
        assert_eq!(
            (l, c),
            (line, column),
            "wrong place for {message:?} in\n{text}"
        );
    }

    #[rstest]
    #[case::an_unknown_format_lists_the_formats(
        &["[line]", "format = \"csv\""], 2, 10, "`format` must be \"text\""
    )]
    #[case::text_lines_need_a_time(
        &["[line]", "format = \"text\"", "[[rule]]", "pattern = '(?P<user>x)'", "event = \"chat\""],
        1, 1, "text lines need their time"
    )]
    #[case::a_timestamp_needs_its_group(
        &["[line]", "timestamp = '^\\S+'", "time_format = \"%H\""], 2, 13,
        "`timestamp` needs a group named `ts`"
    )]
    #[case::a_bad_timestamp_regex_says_why(
        &["[line]", "timestamp = '^(?P<ts>['", "time_format = \"%H\""], 2, 13,
        "`timestamp` is not a valid regex: unclosed character class"
    )]
    #[case::a_bad_time_format_is_rejected_at_its_value(
        &["[line]", "timestamp = '^(?P<ts>\\S+)'", "time_format = \"%Y-%Q\""], 3, 15,
        "is not a valid strftime format"
    )]
    #[case::a_timestamp_without_a_format_asks_for_one(
        &["[line]", "timestamp = '^(?P<ts>\\S+)'"], 2, 13, "`timestamp` needs `time_format` too"
    )]
    #[case::a_text_mapping_cannot_read_json_fields(
        &["[line]", "format = \"text\"", "timestamp = '^(?P<ts>\\S+)'", "time_format = \"%s\"",
          "[[rule]]", "pattern = 'x'", "event = \"chat\"", "user = \"jsonPayload.u\""],
        8, 8, "but [line] format is \"text\""
    )]
    #[case::an_unknown_line_key_lists_the_keys(
        &["[line]", "timezone = \"UTC\""], 2, 1,
        "unknown key `timezone`, expected one of `format`, `timestamp`, `time_format`"
    )]
    fn an_invalid_line_table_is_reported_at_the_offending_place(
        #[case] text: &[&str],
        #[case] line: usize,
        #[case] column: usize,
        #[case] phrase: &str,
    ) {
        let text = lines(text);
        let (l, c, message) = invalid(&text);
        assert!(
            message.contains(phrase),
            "{message:?} does not contain {phrase:?}"
        );
        assert_eq!(
            (l, c),
            (line, column),
            "wrong place for {message:?} in\n{text}"
        );
    }

    #[test]
    fn the_error_display_reads_file_line_column_message() {
        let err = Mapping::parse(
            &with_line(&[
                "[[rule]]",
                "pattern = 'x (?P<user>\\S+)'",
                "event = \"acepted\"",
            ]),
            Path::new("examples/map.toml"),
        )
        .unwrap_err();
        assert!(
            err.to_string()
                .starts_with("examples/map.toml:6:9: rule 1: unknown event \"acepted\""),
            "{err}"
        );
    }
}
