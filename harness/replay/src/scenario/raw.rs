//! The scenario file's shape exactly, and its validation into a [`Scenario`].
//!
//! Every raw struct denies unknown keys. Values that need checks serde cannot express (times,
//! limits, names, ids, enum-like strings) are kept as [`Spanned`] so that an error points at the
//! offending value itself, not at the table that holds it.

use std::collections::BTreeSet;
use std::ops::Range;
use std::path::Path;

use indexmap::IndexMap;
use serde::Deserialize;
use toml::{Spanned, Value};

use super::{
    Connection, InvariantMatch, Phase, Protocol, Scenario, ScenarioError, ServerConfig, Symptom,
    Timed, User, Verdict, template,
};
use crate::endpoint_kind::EndpointKind;
use crate::invariant::Invariant;

/// Quiet time after the last scheduled activity when `settle_ms` is left out.
const DEFAULT_SETTLE_MS: u64 = 1000;

/// The whole file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawScenario {
    name: Spanned<String>,
    description: Option<String>,
    settle_ms: Option<Spanned<Value>>,
    server: Option<RawServer>,
    user: Option<Spanned<Vec<RawUser>>>,
    expect: Option<RawExpect>,
    protocol: Option<RawProtocol>,
    production: Option<Vec<RawProduction>>,
}

/// One `[[production]]`: a symptom a production log showed.
#[derive(Debug, Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "a [[production]] table with `invariant`, `user` and `at_ms`"
)]
struct RawProduction {
    invariant: Spanned<String>,
    user: Spanned<String>,
    at_ms: Spanned<Value>,
}

/// `[protocol]`: how `racegate probe` speaks to a live server. Every key is optional. Public so
/// another file can carry one (the project configuration's `[tool.racegate.protocol]`, read
/// into a [`ProtocolTable`]).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a [protocol] table")]
pub struct RawProtocol {
    user_query: Option<Spanned<String>>,
    user_header: Option<Spanned<String>>,
    user_value: Option<Spanned<String>>,
    subprotocol: Option<Spanned<String>>,
    cookie: Option<Spanned<String>>,
    token_env: Option<Spanned<String>>,
    chat: Option<Spanned<String>>,
    chat_id: Option<Spanned<String>>,
    type_field: Option<Spanned<String>>,
    ack_type: Option<Spanned<String>>,
    push_type: Option<Spanned<String>>,
    error_type: Option<Spanned<String>>,
    id_field: Option<Spanned<String>>,
    run_field: Option<Spanned<String>>,
    run_from_ack: Option<Spanned<String>>,
    user_field: Option<Spanned<String>>,
    ack_user_field: Option<Spanned<String>>,
    event_user_field: Option<Spanned<String>>,
    push_user_field: Option<Spanned<String>>,
    message_field: Option<Spanned<String>>,
    events: Option<Spanned<Vec<Spanned<String>>>>,
    error_patterns: Option<Vec<Spanned<String>>>,
    close_codes: Option<Spanned<Vec<Spanned<Value>>>>,
}

/// `[expect]`: endpoint name → verdict, in file order. (A `Vec` of pairs rather than a map:
/// `indexmap`'s serde support is not enabled, and validation wants the spans of both sides.)
#[derive(Debug)]
struct RawExpect(Vec<(Spanned<String>, Spanned<Value>)>);

impl<'de> Deserialize<'de> for RawExpect {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Entries;

        impl<'de> serde::de::Visitor<'de> for Entries {
            type Value = RawExpect;

            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a table of endpoint names to \"pass\" or \"fail\"")
            }

            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<RawExpect, A::Error> {
                let mut out = Vec::new();
                while let Some(entry) = map.next_entry()? {
                    out.push(entry);
                }
                Ok(RawExpect(out))
            }
        }

        deserializer.deserialize_map(Entries)
    }
}

/// `[server]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a [server] table")]
struct RawServer {
    accept_ms: Option<Spanned<Value>>,
    auth_ms: Option<Spanned<Value>>,
    services_ms: Option<Spanned<Value>>,
    register_ms: Option<Spanned<Value>>,
    heartbeat_ms: Option<Spanned<Value>>,
    event_gap_ms: Option<Spanned<Value>>,
    queue_capacity: Option<Spanned<Value>>,
    queue_bytes: Option<Spanned<Value>>,
}

/// One `[[user]]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a [[user]] table")]
struct RawUser {
    id: Spanned<String>,
    connect_ms: Option<Spanned<Value>>,
    fail_at: Option<Spanned<Value>>,
    close_ms: Option<Spanned<Value>>,
    drop_ms: Option<Spanned<Value>>,
    #[serde(default)]
    send: Vec<RawSend>,
    #[serde(default)]
    push: Vec<RawTimed>,
}

/// One `[[user.send]]`.
#[derive(Debug, Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "a table with `at_ms` and `text` (and maybe `pipelined`)"
)]
struct RawSend {
    at_ms: Spanned<Value>,
    text: String,
    pipelined: Option<Spanned<bool>>,
}

/// One `[[user.push]]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a table with `at_ms` and `text`")]
struct RawTimed {
    at_ms: Spanned<Value>,
    text: String,
}

/// Parses and validates scenario text; `path` is used only in errors and [`Scenario::file`].
pub(super) fn parse(text: &str, path: &Path) -> Result<Scenario, ScenarioError> {
    parse_with(text, path, None)
}

/// [`parse`], with the `[protocol]` a scenario without one of its own takes (the project
/// configuration's).
pub(super) fn parse_with(
    text: &str,
    path: &Path,
    fallback: Option<&ProtocolTable>,
) -> Result<Scenario, ScenarioError> {
    let at = Locator { text, path };
    let raw: RawScenario = toml::from_str(text).map_err(|e| at.toml_error(&e))?;
    validate(raw, &at, fallback)
}

/// A `[protocol]` table written outside a scenario (the project configuration's
/// `[tool.racegate.protocol]`), with the text and file its spans point into: checked against
/// each scenario that takes it, its errors naming its own file, line and column.
#[derive(Debug)]
pub struct ProtocolTable {
    raw: RawProtocol,
    text: String,
    path: std::path::PathBuf,
}

impl ProtocolTable {
    /// The table `raw`, read from `text` (the whole file its spans point into) at `path`.
    /// Checked at once for what needs no scenario (a bad template, an empty key).
    pub fn new(
        raw: RawProtocol,
        text: String,
        path: std::path::PathBuf,
    ) -> Result<ProtocolTable, ScenarioError> {
        let table = ProtocolTable { raw, text, path };
        table.for_users(&[])?;
        Ok(table)
    }

    /// The protocol for a scenario with `users`.
    pub fn for_users(&self, users: &[User]) -> Result<Protocol, ScenarioError> {
        let at = Locator {
            text: &self.text,
            path: &self.path,
        };
        protocol(&at, &self.raw, users)
    }

    /// The file it was read from.
    pub fn file(&self) -> &Path {
        &self.path
    }
}

/// Turns byte spans into [`ScenarioError::Invalid`]s.
struct Locator<'a> {
    text: &'a str,
    path: &'a Path,
}

impl Locator<'_> {
    /// 1-based line and column (in characters) of a byte offset.
    fn line_col(&self, offset: usize) -> (usize, usize) {
        line_col(self.text, offset)
    }

    /// An error at the start of `span`, or at line 1 column 1 without one.
    fn invalid(&self, span: Option<Range<usize>>, message: String) -> ScenarioError {
        let (line, column) = span.map_or((1, 1), |s| self.line_col(s.start));
        ScenarioError::Invalid {
            path: self.path.to_path_buf(),
            line,
            column,
            message,
        }
    }

    fn at<T>(&self, spanned: &Spanned<T>, message: String) -> ScenarioError {
        self.invalid(Some(spanned.span()), message)
    }

    /// A syntax, type, unknown-key or missing-key error found by `toml`/serde, in file terms.
    fn toml_error(&self, e: &toml::de::Error) -> ScenarioError {
        let (span, message) = toml_message(self.text, e);
        self.invalid(span, message)
    }
}

/// 1-based line and column (in characters) of a byte offset into `text`.
pub fn line_col(text: &str, offset: usize) -> (usize, usize) {
    // Back to the start of the character `offset` falls in. A bounded search, not a loop
    // stepping down: bad input must never hang the parser, whatever the arithmetic.
    let offset = offset.min(text.len());
    let offset = (0..=offset)
        .rev()
        .find(|&o| text.is_char_boundary(o))
        .unwrap_or(0);
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let column = before[line_start..].chars().count() + 1;
    (line, column)
}

/// Where in `text` a `toml`/serde error is, and its message in one line, in the words racegate's
/// TOML files use ("missing required key", "unknown key", "write [[user]]").
pub fn toml_message(text: &str, e: &toml::de::Error) -> (Option<Range<usize>>, String) {
    let span = e.span();
    // Syntax errors put their "expected ..." on a second line; keep the message one line.
    let message = e
        .message()
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join("; ");
    let message = if let Some(rest) = message.strip_prefix("missing field ") {
        format!("missing required key {rest}")
    } else if let Some(rest) = message.strip_prefix("unknown field ") {
        format!("unknown key {rest}")
    } else if message.starts_with("invalid type: map, expected a sequence")
        && let Some(header) = span
            .as_ref()
            .and_then(|s| single_table_header(text, s.start))
    {
        format!("[{header}] must be an array of tables: write [[{header}]], once per entry")
    } else {
        message
    };
    (span, message)
}

/// `user` when the text at `offset` is a `[user]` header (not `[[user]]`).
fn single_table_header(text: &str, offset: usize) -> Option<&str> {
    let rest = text.get(offset..)?.strip_prefix('[')?;
    if rest.starts_with('[') {
        return None;
    }
    let name = rest[..rest.find(']')?].trim();
    (!name.is_empty()).then_some(name)
}

fn validate(
    raw: RawScenario,
    at: &Locator<'_>,
    fallback: Option<&ProtocolTable>,
) -> Result<Scenario, ScenarioError> {
    let name = raw.name.get_ref();
    if name.trim().is_empty() {
        return Err(at.at(
            &raw.name,
            "`name` must not be empty; give the scenario a name that is unique in the run".into(),
        ));
    }
    let settle_ms =
        opt_millis(at, "settle_ms", raw.settle_ms.as_ref())?.unwrap_or(DEFAULT_SETTLE_MS);
    let server = match &raw.server {
        Some(s) => server(at, s)?,
        None => ServerConfig::default(),
    };
    let users = users(at, raw.user.as_ref())?;
    let (expect, expect_invariants) = match &raw.expect {
        Some(e) => expect(at, e)?,
        None => (IndexMap::new(), IndexMap::new()),
    };
    let protocol = match (&raw.protocol, fallback) {
        (Some(p), _) => protocol(at, p, &users)?,
        (None, Some(table)) => table.for_users(&users)?,
        (None, None) => Protocol::default(),
    };
    let production = production(at, raw.production.as_deref().unwrap_or_default(), &users)?;
    Ok(Scenario {
        name: name.clone(),
        description: raw.description,
        file: at.path.to_path_buf(),
        server,
        users,
        expect,
        expect_invariants,
        settle_ms,
        protocol,
        production,
    })
}

/// `[[production]]`: each symptom names a known invariant and one of the file's users, once.
fn production(
    at: &Locator<'_>,
    raw: &[RawProduction],
    users: &[User],
) -> Result<Vec<Symptom>, ScenarioError> {
    // (invariant, user) → byte offset of its first entry, for the duplicate's message.
    let mut seen: IndexMap<(Invariant, &str), usize> = IndexMap::new();
    let mut out = Vec::with_capacity(raw.len());
    for p in raw {
        let invariant = p
            .invariant
            .get_ref()
            .parse::<Invariant>()
            .map_err(|e| at.at(&p.invariant, format!("[[production]] {e}")))?;
        let user = p.user.get_ref();
        if !users.iter().any(|u| &u.id == user) {
            return Err(at.at(
                &p.user,
                format!(
                    "[[production]] names user `{user}`, which no [[user]] has; a symptom belongs \
                     to one of the scenario's users"
                ),
            ));
        }
        if let Some(&first) = seen.get(&(invariant, user.as_str())) {
            let first_line = at.line_col(first).0;
            return Err(at.at(
                &p.invariant,
                format!(
                    "`{invariant}` for user `{user}` is already listed by the [[production]] on \
                     line {first_line}; list each symptom once, at its first time"
                ),
            ));
        }
        seen.insert((invariant, user), p.invariant.span().start);
        out.push(Symptom {
            invariant,
            user: user.clone(),
            at_ms: millis(at, "at_ms", &p.at_ms)?,
        });
    }
    Ok(out)
}

fn protocol(
    at: &Locator<'_>,
    raw: &RawProtocol,
    users: &[User],
) -> Result<Protocol, ScenarioError> {
    let d = Protocol::default();
    let name = |key: &str, value: &Option<Spanned<String>>, default: String| match value {
        Some(v) if v.get_ref().trim().is_empty() => Err(at.at(
            v,
            format!("`{key}` in [protocol] must not be empty; leave it out for `{default}`"),
        )),
        Some(v) => Ok(v.get_ref().clone()),
        None => Ok(default),
    };
    let user_header = match &raw.user_header {
        Some(h) if !is_header_name(h.get_ref()) => {
            return Err(at.at(
                h,
                format!(
                    "`user_header` must be an HTTP header name (letters, digits, `-`), got {:?}",
                    h.get_ref()
                ),
            ));
        }
        Some(h) => Some(h.get_ref().clone()),
        None => None,
    };
    let user_value = match (&raw.user_value, &user_header) {
        (Some(v), None) => {
            return Err(at.at(
                v,
                "`user_value` is the value of `user_header`; set `user_header` too \
                 (e.g. \"Authorization\")"
                    .into(),
            ));
        }
        (Some(v), Some(_)) => credential(at, "user_value", v, Allowed::HeaderValue)?,
        (None, _) => d.user_value.clone(),
    };
    let subprotocol = raw
        .subprotocol
        .as_ref()
        .map(|v| credential(at, "subprotocol", v, Allowed::Subprotocol))
        .transpose()?;
    let cookie = raw
        .cookie
        .as_ref()
        .map(|v| credential(at, "cookie", v, Allowed::HeaderValue))
        .transpose()?;
    let token_env = raw
        .token_env
        .as_ref()
        .map(|v| credential(at, "token_env", v, Allowed::EnvName))
        .transpose()?;
    // An explicit `""` turns the query parameter off; any other credential alone turns it off
    // too.
    let other_credential = user_header.is_some() || cookie.is_some() || subprotocol.is_some();
    let user_query = match (&raw.user_query, other_credential) {
        (Some(q), _) if q.get_ref().is_empty() => None,
        (Some(q), _) => Some(query(at, q)?),
        (None, true) => None,
        (None, false) => d.user_query.clone(),
    };
    if user_query.is_none() && !other_credential {
        let span = raw.user_query.as_ref().map(|q| q.span());
        return Err(at.invalid(
            span,
            "[protocol] must pass the user id somehow: set `user_query` to a parameter name, \
             `user_header` to a header name, `cookie` or `subprotocol`"
                .into(),
        ));
    }
    let chat = match &raw.chat {
        Some(c) => chat_template(at, c)?,
        None => d.chat.clone(),
    };
    let chat_id = match &raw.chat_id {
        Some(c) => chat_id_template(at, c, users)?,
        None => d.chat_id.clone(),
    };
    let optional = |key: &str, value: &Option<Spanned<String>>, without: &str| match value {
        Some(v) if v.get_ref().trim().is_empty() => Err(at.at(
            v,
            format!("`{key}` in [protocol] must not be empty; leave it out {without}"),
        )),
        Some(v) => Ok(Some(v.get_ref().clone())),
        None => Ok(None),
    };
    let events = match &raw.events {
        // An empty list is a protocol whose chats are answered by their ack alone.
        Some(list) => {
            let mut out: Vec<String> = Vec::with_capacity(list.get_ref().len());
            for e in list.get_ref() {
                if e.get_ref().trim().is_empty() {
                    return Err(at.at(e, "an event type in `events` must not be empty".into()));
                }
                if out.contains(e.get_ref()) {
                    return Err(at.at(
                        e,
                        format!("event type {:?} appears twice in `events`", e.get_ref()),
                    ));
                }
                out.push(e.get_ref().clone());
            }
            out
        }
        None => d.events.clone(),
    };
    let error_patterns = match &raw.error_patterns {
        Some(list) => {
            let mut out = Vec::with_capacity(list.len());
            for p in list {
                if p.get_ref().is_empty() {
                    return Err(at.at(
                        p,
                        "an empty pattern in `error_patterns` would match every error frame".into(),
                    ));
                }
                out.push(p.get_ref().clone());
            }
            out
        }
        None => d.error_patterns.clone(),
    };
    let close_codes = match &raw.close_codes {
        Some(list) => {
            let mut out = Vec::with_capacity(list.get_ref().len());
            for c in list.get_ref() {
                match c.get_ref() {
                    Value::Integer(n) if (1000..=4999).contains(n) => {
                        out.push(u16::try_from(*n).unwrap_or(u16::MAX));
                    }
                    other => {
                        return Err(at.at(
                            c,
                            format!(
                                "a close code in `close_codes` must be an integer from 1000 to \
                                 4999, got {other}"
                            ),
                        ));
                    }
                }
            }
            out
        }
        None => d.close_codes.clone(),
    };
    Ok(Protocol {
        user_query,
        user_header,
        user_value,
        subprotocol,
        cookie,
        token_env,
        chat,
        chat_id,
        type_field: name("type_field", &raw.type_field, d.type_field)?,
        ack_type: name("ack_type", &raw.ack_type, d.ack_type)?,
        push_type: name("push_type", &raw.push_type, d.push_type)?,
        error_type: name("error_type", &raw.error_type, d.error_type)?,
        id_field: name("id_field", &raw.id_field, d.id_field)?,
        run_field: name("run_field", &raw.run_field, d.run_field)?,
        run_from_ack: optional(
            "run_from_ack",
            &raw.run_from_ack,
            "when events name the chat id itself",
        )?,
        ack_user_field: optional("ack_user_field", &raw.ack_user_field, "to use `user_field`")?,
        event_user_field: optional(
            "event_user_field",
            &raw.event_user_field,
            "to use `user_field`",
        )?,
        push_user_field: optional(
            "push_user_field",
            &raw.push_user_field,
            "to use `user_field`",
        )?,
        user_field: name("user_field", &raw.user_field, d.user_field)?,
        message_field: name("message_field", &raw.message_field, d.message_field)?,
        events,
        error_patterns,
        close_codes,
    })
}

/// RFC 9110 token characters, the ones a header name may use.
fn is_header_name(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// What the literal text of a credential template may contain.
#[derive(Clone, Copy, PartialEq)]
enum Allowed {
    /// Visible ASCII and spaces: an HTTP header value.
    HeaderValue,
    /// Header-name characters, `,` and spaces: a list of subprotocol tokens.
    Subprotocol,
    /// ASCII letters, digits and `_`, and only the `{user}` placeholder: a variable name.
    EnvName,
}

/// A credential template: known placeholders only, and literal text that fits where it goes.
fn credential(
    at: &Locator<'_>,
    key: &str,
    raw: &Spanned<String>,
    allowed: Allowed,
) -> Result<String, ScenarioError> {
    let t = raw.get_ref();
    if t.trim().is_empty() {
        return Err(at.at(
            raw,
            format!("`{key}` in [protocol] must not be empty; leave it out instead"),
        ));
    }
    let placeholders: &[&str] = match allowed {
        Allowed::EnvName => &["user"],
        Allowed::HeaderValue | Allowed::Subprotocol => &template::PLACEHOLDERS,
    };
    if let Some(name) = template::unknown(t, placeholders) {
        let expected = match allowed {
            Allowed::EnvName => "only `{user}` (the id made safe for a variable name)",
            Allowed::HeaderValue | Allowed::Subprotocol => "`{user}` or `{token}`",
        };
        return Err(at.at(
            raw,
            format!("unknown placeholder `{{{name}}}` in `{key}`; expected {expected}"),
        ));
    }
    let literal = template::fill(t, "", Some(""));
    let bad = literal.chars().find(|&c| match allowed {
        Allowed::HeaderValue => !(c == ' ' || c == '\t' || c.is_ascii_graphic()),
        Allowed::Subprotocol => !(c == ' ' || c == ',' || is_header_name(&c.to_string())),
        Allowed::EnvName => !(c.is_ascii_alphanumeric() || c == '_'),
    });
    if let Some(c) = bad {
        let fits = match allowed {
            Allowed::HeaderValue => "an HTTP header value (visible ASCII and spaces)",
            Allowed::Subprotocol => "a list of subprotocol names (letters, digits, `-`, `.`, `,`)",
            Allowed::EnvName => "an environment variable name (letters, digits, `_`)",
        };
        return Err(at.at(raw, format!("`{key}` must be {fits}; {c:?} is not allowed")));
    }
    if allowed == Allowed::EnvName && t.starts_with(|c: char| c.is_ascii_digit()) {
        return Err(at.at(
            raw,
            format!("`{key}` must be an environment variable name; it cannot start with a digit"),
        ));
    }
    Ok(t.clone())
}

/// A chat template: `{id}` is required (acks are matched by it), and every `{name}` must be one
/// of [`Protocol::PLACEHOLDERS`]. Braces not around a bare name (JSON's own) are text.
fn chat_template(at: &Locator<'_>, raw: &Spanned<String>) -> Result<String, ScenarioError> {
    let t = raw.get_ref();
    let mut has_id = false;
    // What follows each `{`, up to the next one (a name never contains one). Split, not
    // scanned by hand: bad input must never hang the parser.
    for after in t.split('{').skip(1) {
        let len = after
            .bytes()
            .take_while(|b| b.is_ascii_alphanumeric() || *b == b'_')
            .count();
        if len > 0 && after[len..].starts_with('}') {
            let name = &after[..len];
            if !Protocol::PLACEHOLDERS.contains(&name) {
                return Err(at.at(
                    raw,
                    format!(
                        "unknown placeholder `{{{name}}}` in `chat`; expected `{{id}}`, \
                         `{{text}}` or `{{user}}`"
                    ),
                ));
            }
            has_id |= name == "id";
        }
    }
    if !has_id {
        return Err(at.at(
            raw,
            "`chat` in [protocol] needs an `{id}` placeholder: acks and events are matched to \
             chats by it"
                .into(),
        ));
    }
    Ok(t.clone())
}

/// A chat id template: `{n}` is required and only `{user}` and `{n}` are placeholders. The ids
/// it gives this scenario's chats must all differ (acks and events are matched by them), which
/// a template without `{user}` breaks as soon as two users send, and a careless one
/// (`{user}{n}`: `u1`'s 11th chat and `u11`'s 1st) can break too: the ids themselves are
/// compared.
fn chat_id_template(
    at: &Locator<'_>,
    raw: &Spanned<String>,
    users: &[User],
) -> Result<String, ScenarioError> {
    let t = raw.get_ref();
    if t.trim().is_empty() {
        return Err(at.at(
            raw,
            "`chat_id` in [protocol] must not be empty; leave it out for `{user}/m{n}`".into(),
        ));
    }
    if let Some(name) = template::unknown(t, &Protocol::CHAT_ID_PLACEHOLDERS) {
        return Err(at.at(
            raw,
            format!(
                "unknown placeholder `{{{name}}}` in `chat_id`; expected `{{user}}` or `{{n}}`"
            ),
        ));
    }
    if !template::placeholders(t).any(|p| p == "n") {
        return Err(at.at(
            raw,
            "`chat_id` in [protocol] needs an `{n}` placeholder (the user's n-th chat): every \
             chat needs an id of its own, since acks and events are matched by it"
                .into(),
        ));
    }
    let probe = Protocol {
        chat_id: t.clone(),
        ..Protocol::default()
    };
    let mut seen: IndexMap<String, (&str, usize)> = IndexMap::new();
    // A user's chats are numbered across its connections.
    for (user, conn) in users.iter().zip(super::connections(users)) {
        for n in conn.chats_before + 1..=conn.chats_before + user.sends.len() {
            let id = probe.chat_id(&user.id, n);
            if let Some((first, m)) = seen.insert(id.clone(), (&user.id, n)) {
                return Err(at.at(
                    raw,
                    format!(
                        "`chat_id` gives two chats the same id {id:?} (user {first:?}'s chat {m} \
                         and user {:?}'s chat {n}); acks and events could not tell them apart, \
                         so put `{{user}}` and `{{n}}` apart, e.g. \"{{user}}-{{n}}\"",
                        user.id
                    ),
                ));
            }
        }
    }
    Ok(t.clone())
}

/// `user_query`: a bare parameter name (the user id is its value, as always), or `name=value`
/// pairs joined by `&` whose values are templates of `{user}` and `{token}` (servers that take
/// a token in the query string, as browsers' WebSocket clients must). Names are literal.
fn query(at: &Locator<'_>, raw: &Spanned<String>) -> Result<String, ScenarioError> {
    let q = raw.get_ref();
    if !q.contains('=') {
        if let Some(p) = template::placeholders(q).find(|p| template::PLACEHOLDERS.contains(p)) {
            return Err(at.at(
                raw,
                format!(
                    "`user_query` without `=` is a parameter name, whose value is the user id; \
                     to send `{{{p}}}` write `name={{{p}}}`, e.g. \"access_token={{token}}\""
                ),
            ));
        }
        return Ok(q.clone());
    }
    for pair in q.split('&').filter(|p| !p.is_empty()) {
        let Some((name, value)) = pair.split_once('=') else {
            return Err(at.at(
                raw,
                format!(
                    "`user_query` pair {pair:?} has no `=`; write `name=value` pairs joined by `&`"
                ),
            ));
        };
        if name.is_empty() || name.contains(['{', '}']) {
            return Err(at.at(
                raw,
                format!("`user_query` pair {pair:?} needs a literal parameter name before its `=`"),
            ));
        }
        if let Some(p) = template::unknown(value, &template::PLACEHOLDERS) {
            return Err(at.at(
                raw,
                format!("unknown placeholder `{{{p}}}` in `user_query`; expected `{{user}}` or `{{token}}`"),
            ));
        }
    }
    Ok(q.clone())
}

fn server(at: &Locator<'_>, raw: &RawServer) -> Result<ServerConfig, ScenarioError> {
    let d = ServerConfig::default();
    let ms = |key: &str, value: &Option<Spanned<Value>>, default: u64| {
        opt_millis(at, key, value.as_ref()).map(|v| v.unwrap_or(default))
    };
    Ok(ServerConfig {
        accept_ms: ms("accept_ms", &raw.accept_ms, d.accept_ms)?,
        auth_ms: ms("auth_ms", &raw.auth_ms, d.auth_ms)?,
        services_ms: ms("services_ms", &raw.services_ms, d.services_ms)?,
        register_ms: ms("register_ms", &raw.register_ms, d.register_ms)?,
        heartbeat_ms: ms("heartbeat_ms", &raw.heartbeat_ms, d.heartbeat_ms)?,
        event_gap_ms: ms("event_gap_ms", &raw.event_gap_ms, d.event_gap_ms)?,
        queue_capacity: limit(
            at,
            "queue_capacity",
            "messages",
            raw.queue_capacity.as_ref(),
        )?
        .unwrap_or(d.queue_capacity),
        queue_bytes: limit(at, "queue_bytes", "bytes", raw.queue_bytes.as_ref())?
            .unwrap_or(d.queue_bytes),
    })
}

fn users(
    at: &Locator<'_>,
    raw: Option<&Spanned<Vec<RawUser>>>,
) -> Result<Vec<User>, ScenarioError> {
    const NONE: &str = "a scenario needs at least one [[user]]; add a [[user]] table with an `id`";
    let Some(raw) = raw else {
        return Err(at.invalid(None, NONE.into()));
    };
    if raw.get_ref().is_empty() {
        return Err(at.at(raw, NONE.into()));
    }
    // Connection label → the byte offset of the id that gave it, that id, and which of its
    // connections it is; turned into a line only for the error, so thousands of users stay
    // linear.
    let mut labels: IndexMap<String, (usize, &str, usize)> = IndexMap::new();
    // User id → its connections so far.
    let mut nth: IndexMap<&str, usize> = IndexMap::new();
    let mut out = Vec::with_capacity(raw.get_ref().len());
    for user in raw.get_ref() {
        let id = user.id.get_ref();
        if id.trim().is_empty() {
            return Err(at.at(
                &user.id,
                "user `id` must not be empty; use the id the server would see for this user".into(),
            ));
        }
        let n = nth.entry(id.as_str()).or_default();
        *n += 1;
        let n = *n;
        let label = Connection::label_of(id, n);
        if let Some(&(first, other, other_n)) = labels.get(&label) {
            let first_line = at.line_col(first).0;
            const RULE: &str = "a repeated id is one more connection of that user, labelled \
                                `id#2`, `id#3`, …";
            let message = if n > 1 {
                format!(
                    "user `{id}`'s connection {n} would be labelled `{label}`, which the [[user]] \
                     on line {first_line} has as its id; {RULE}: rename the user `{other}`"
                )
            } else {
                format!(
                    "user id `{id}` is the label of user `{other}`'s connection {other_n} (the \
                     [[user]] on line {first_line}); {RULE}: rename this user"
                )
            };
            return Err(at.at(&user.id, message));
        }
        labels.insert(label, (user.id.span().start, id, n));
        let close_ms = opt_millis(at, "close_ms", user.close_ms.as_ref())?;
        let drop_ms = opt_millis(at, "drop_ms", user.drop_ms.as_ref())?;
        if let (Some(_), Some(drop)) = (close_ms, &user.drop_ms) {
            return Err(at.at(
                drop,
                "`drop_ms` and `close_ms` both end this connection (`close_ms` with a close \
                 frame, `drop_ms` without one); give only one"
                    .into(),
            ));
        }
        let (sends, pipelined) = sends(at, &user.send)?;
        out.push(User {
            id: id.clone(),
            connect_ms: opt_millis(at, "connect_ms", user.connect_ms.as_ref())?.unwrap_or(0),
            fail_at: user.fail_at.as_ref().map(|v| phase(at, v)).transpose()?,
            close_ms,
            drop_ms,
            sends,
            pipelined,
            pushes: timed(at, &user.push)?,
        });
    }
    Ok(out)
}

/// A user's `[[user.send]]`s, and how many of them, from the first, are pipelined. A pipelined
/// chat goes out in the same write as the upgrade request, so its time is the connect's
/// (`at_ms = 0`) and it comes before every chat sent after open.
fn sends(at: &Locator<'_>, raw: &[RawSend]) -> Result<(Vec<Timed>, usize), ScenarioError> {
    let mut out = Vec::with_capacity(raw.len());
    let mut pipelined = 0;
    for s in raw {
        let at_ms = millis(at, "at_ms", &s.at_ms)?;
        if let Some(p) = s.pipelined.as_ref().filter(|p| *p.get_ref()) {
            if out.len() > pipelined {
                return Err(at.at(
                    p,
                    "a pipelined chat goes out with the upgrade request, before any chat sent \
                     after open: list the user's pipelined chats first"
                        .into(),
                ));
            }
            if at_ms != 0 {
                return Err(at.at(
                    &s.at_ms,
                    format!(
                        "a pipelined chat goes out in the same write as the upgrade request, at \
                         `connect_ms`: its `at_ms` must be 0, got {at_ms}"
                    ),
                ));
            }
            pipelined += 1;
        }
        out.push(Timed {
            at_ms,
            text: s.text.clone(),
        });
    }
    Ok((out, pipelined))
}

fn timed(at: &Locator<'_>, raw: &[RawTimed]) -> Result<Vec<Timed>, ScenarioError> {
    raw.iter()
        .map(|t| {
            Ok(Timed {
                at_ms: millis(at, "at_ms", &t.at_ms)?,
                text: t.text.clone(),
            })
        })
        .collect()
}

fn phase(at: &Locator<'_>, raw: &Spanned<Value>) -> Result<Phase, ScenarioError> {
    const ALL: [Phase; 3] = [Phase::Auth, Phase::Services, Phase::Register];
    if let Value::String(s) = raw.get_ref()
        && let Some(p) = ALL.into_iter().find(|p| p.name() == s)
    {
        return Ok(p);
    }
    Err(at.at(
        raw,
        format!(
            "`fail_at` must be one of \"auth\", \"services\" or \"register\" (or left out), got {}",
            raw.get_ref()
        ),
    ))
}

/// Both halves of `[expect]`: each gated endpoint's verdict, and the invariants it must fail
/// with where the file names them.
type Expectations = (
    IndexMap<EndpointKind, Verdict>,
    IndexMap<EndpointKind, InvariantMatch>,
);

fn expect(at: &Locator<'_>, raw: &RawExpect) -> Result<Expectations, ScenarioError> {
    let mut verdicts = IndexMap::with_capacity(raw.0.len());
    let mut invariants = IndexMap::new();
    for (key, value) in &raw.0 {
        let Ok(kind) = key.get_ref().parse::<EndpointKind>() else {
            let valid: Vec<&str> = EndpointKind::ALL.iter().map(|k| k.name()).collect();
            return Err(at.at(
                key,
                format!(
                    "unknown endpoint `{}` in [expect]; expected one of {}",
                    key.get_ref(),
                    valid.join(", ")
                ),
            ));
        };
        let bad_verdict = |got: &dyn std::fmt::Display| {
            at.at(
                value,
                format!(
                    "the verdict for `{kind}` in [expect] must be \"pass\" or \"fail\", \
                     got {got} (or a table: {{ verdict = \"fail\", invariants = [...] }})"
                ),
            )
        };
        let verdict_of = |v: &Value| match v {
            Value::String(s) if s == "pass" => Some(Verdict::Pass),
            Value::String(s) if s == "fail" => Some(Verdict::Fail),
            _ => None,
        };
        let verdict = match value.get_ref() {
            Value::Table(table) => {
                let (verdict, named) = expect_table(at, value, kind, table)?;
                if let Some(named) = named {
                    invariants.insert(kind, named);
                }
                verdict
            }
            other => verdict_of(other).ok_or_else(|| bad_verdict(other))?,
        };
        verdicts.insert(kind, verdict);
    }
    Ok((verdicts, invariants))
}

/// `{ verdict = "fail", invariants = [...] }` or `{ verdict = "fail", at_least = [...] }`. Inline
/// tables carry no spans of their own keys, so errors point at the table.
fn expect_table(
    at: &Locator<'_>,
    value: &Spanned<Value>,
    kind: EndpointKind,
    table: &toml::Table,
) -> Result<(Verdict, Option<InvariantMatch>), ScenarioError> {
    let err = |message: String| at.at(value, format!("[expect] `{kind}`: {message}"));
    if let Some(key) = table
        .keys()
        .find(|k| !["verdict", "invariants", "at_least"].contains(&k.as_str()))
    {
        return Err(err(format!(
            "unknown key `{key}`, expected one of `verdict`, `invariants`, `at_least`"
        )));
    }
    let verdict = match table.get("verdict") {
        Some(Value::String(s)) if s == "pass" => Verdict::Pass,
        Some(Value::String(s)) if s == "fail" => Verdict::Fail,
        Some(other) => {
            return Err(err(format!(
                "`verdict` must be \"pass\" or \"fail\", got {other}"
            )));
        }
        None => return Err(err("missing `verdict` (\"pass\" or \"fail\")".into())),
    };
    let list = |key: &str| -> Result<Option<BTreeSet<Invariant>>, ScenarioError> {
        let Some(v) = table.get(key) else {
            return Ok(None);
        };
        let Value::Array(items) = v else {
            return Err(err(format!(
                "`{key}` must be a list of invariant names, got {v}"
            )));
        };
        let mut out = BTreeSet::new();
        for item in items {
            let Value::String(name) = item else {
                return Err(err(format!(
                    "`{key}` must be a list of invariant names, got {item}"
                )));
            };
            let invariant = name.parse::<Invariant>().map_err(|e| err(e.to_string()))?;
            if !out.insert(invariant) {
                return Err(err(format!("`{key}` names `{name}` twice")));
            }
        }
        Ok(Some(out))
    };
    let named = match (list("invariants")?, list("at_least")?) {
        (Some(_), Some(_)) => {
            return Err(err(
                "give `invariants` (exactly these) or `at_least` (these and maybe more), not both"
                    .into(),
            ));
        }
        (Some(set), None) => Some(InvariantMatch::Exactly(set)),
        (None, Some(set)) => Some(InvariantMatch::AtLeast(set)),
        (None, None) => None,
    };
    match (&named, verdict) {
        (Some(m), Verdict::Pass) if !m.invariants().is_empty() => Err(err(
            "a \"pass\" violates no invariant; name invariants only with verdict = \"fail\"".into(),
        )),
        (Some(m), Verdict::Fail) if m.invariants().is_empty() => Err(err(
            "a \"fail\" violates at least one invariant; name it, or leave the list out".into(),
        )),
        _ => Ok((verdict, named)),
    }
}

/// The longest time a scenario may name: a day of virtual time is far past any setup window,
/// and the bound keeps every sum of times far from overflow.
pub(crate) const MAX_MS: u64 = 86_400_000;

/// A time: a non-negative integer, at most [`MAX_MS`].
fn millis(at: &Locator<'_>, key: &str, raw: &Spanned<Value>) -> Result<u64, ScenarioError> {
    match raw.get_ref() {
        Value::Integer(n) if *n >= 0 && n.unsigned_abs() > MAX_MS => Err(at.at(
            raw,
            format!("`{key}` is {n} ms; times are limited to {MAX_MS} ms (one day)"),
        )),
        Value::Integer(n) if *n >= 0 => Ok(n.unsigned_abs()),
        other => Err(at.at(
            raw,
            format!("`{key}` must be a non-negative integer number of milliseconds, got {other}"),
        )),
    }
}

fn opt_millis(
    at: &Locator<'_>,
    key: &str,
    raw: Option<&Spanned<Value>>,
) -> Result<Option<u64>, ScenarioError> {
    raw.map(|v| millis(at, key, v)).transpose()
}

/// A queue limit: an integer of at least 1.
fn limit(
    at: &Locator<'_>,
    key: &str,
    unit: &str,
    raw: Option<&Spanned<Value>>,
) -> Result<Option<usize>, ScenarioError> {
    let Some(raw) = raw else { return Ok(None) };
    match raw.get_ref() {
        Value::Integer(n) if *n >= 1 => usize::try_from(*n).map(Some).map_err(|_| {
            at.at(
                raw,
                format!("`{key}` is too large for this platform, got {n}"),
            )
        }),
        other => Err(at.at(
            raw,
            format!("`{key}` must be an integer of at least 1 ({unit}), got {other}"),
        )),
    }
}

#[cfg(test)]
mod tests {
    use std::path::{Path, PathBuf};

    use indexmap::IndexMap;
    use rstest::rstest;

    use crate::endpoint_kind::EndpointKind;
    use crate::scenario::{Phase, Scenario, ScenarioError, ServerConfig, Timed, User, Verdict};

    /// Joins lines with `\n`, so a case's line numbers are its indices plus one.
    fn lines(ls: &[&str]) -> String {
        let mut s = ls.join("\n");
        s.push('\n');
        s
    }

    fn parse(ls: &[&str]) -> Result<Scenario, ScenarioError> {
        crate::scenario::parse(&lines(ls), Path::new("scenarios/s.toml"))
    }

    /// The line, column and message of an error that must be `Invalid` in `scenarios/s.toml`.
    fn invalid(ls: &[&str]) -> (usize, usize, String) {
        match parse(ls) {
            Err(ScenarioError::Invalid {
                path,
                line,
                column,
                message,
            }) => {
                assert_eq!(path, Path::new("scenarios/s.toml"));
                (line, column, message)
            }
            other => panic!("expected an Invalid error, got {other:?}"),
        }
    }

    const HEAD: &str = "name = \"s\"";

    #[test]
    fn the_edges_of_what_a_file_may_say_are_accepted() {
        // A time of exactly one day, and a pass that names its (empty) list of invariants.
        let scenario = parse(&[
            HEAD,
            "[[user]]",
            "id = \"a\"",
            "connect_ms = 86400000",
            "[expect]",
            "partial = { verdict = \"pass\", invariants = [] }",
        ])
        .expect("valid scenario");
        assert_eq!(scenario.users[0].connect_ms, super::MAX_MS);
        assert_eq!(
            scenario.expect.get(&EndpointKind::Partial),
            Some(&Verdict::Pass)
        );
    }

    #[test]
    fn a_full_file_round_trips_into_the_expected_scenario() {
        let scenario = parse(&[
            "name = \"staging-user-101463487227881885914\"",
            "description = \"first chat message lands during auth\"",
            "settle_ms = 250",
            "",
            "[server]",
            "accept_ms = 1",
            "auth_ms = 180",
            "services_ms = 240",
            "register_ms = 90",
            "heartbeat_ms = 30000",
            "event_gap_ms = 7",
            "queue_capacity = 8",
            "queue_bytes = 4096",
            "",
            "[[user]]",
            "id = \"101463487227881885914\"",
            "connect_ms = 10",
            "fail_at = \"auth\"",
            "close_ms = 150",
            "[[user.send]]",
            "at_ms = 5",
            "text = \"hello\"",
            "[[user.send]]",
            "at_ms = 2",
            "text = \"earlier, but second in the file\"",
            "[[user.push]]",
            "at_ms = 20",
            "text = \"report ready\"",
            "",
            "[[user]]",
            "id = \"second\"",
            "fail_at = \"register\"",
            "send = [{ at_ms = 0, text = \"hi\" }]",
            "",
            "[expect]",
            "state-machine = \"pass\"",
            "unfixed = \"fail\"",
            "partial = \"fail\"",
        ])
        .expect("valid scenario");

        let expected = Scenario {
            name: "staging-user-101463487227881885914".into(),
            description: Some("first chat message lands during auth".into()),
            file: PathBuf::from("scenarios/s.toml"),
            server: ServerConfig {
                accept_ms: 1,
                auth_ms: 180,
                services_ms: 240,
                register_ms: 90,
                heartbeat_ms: 30000,
                event_gap_ms: 7,
                queue_capacity: 8,
                queue_bytes: 4096,
            },
            users: vec![
                User {
                    id: "101463487227881885914".into(),
                    connect_ms: 10,
                    fail_at: Some(Phase::Auth),
                    close_ms: Some(150),
                    drop_ms: None,
                    sends: vec![
                        Timed {
                            at_ms: 5,
                            text: "hello".into(),
                        },
                        Timed {
                            at_ms: 2,
                            text: "earlier, but second in the file".into(),
                        },
                    ],
                    pipelined: 0,
                    pushes: vec![Timed {
                        at_ms: 20,
                        text: "report ready".into(),
                    }],
                },
                User {
                    id: "second".into(),
                    connect_ms: 0,
                    fail_at: Some(Phase::Register),
                    close_ms: None,
                    drop_ms: None,
                    sends: vec![Timed {
                        at_ms: 0,
                        text: "hi".into(),
                    }],
                    pipelined: 0,
                    pushes: vec![],
                },
            ],
            expect: IndexMap::from([
                (EndpointKind::StateMachine, Verdict::Pass),
                (EndpointKind::Unfixed, Verdict::Fail),
                (EndpointKind::Partial, Verdict::Fail),
            ]),
            expect_invariants: IndexMap::new(),
            settle_ms: 250,
            protocol: Default::default(),
            production: vec![],
        };
        assert_eq!(scenario, expected);
        // File order, not `EndpointKind` order.
        let order: Vec<_> = scenario.expect.keys().copied().collect();
        assert_eq!(
            order,
            [
                EndpointKind::StateMachine,
                EndpointKind::Unfixed,
                EndpointKind::Partial
            ]
        );
    }

    #[test]
    fn left_out_keys_take_their_defaults() {
        let scenario = parse(&[HEAD, "[[user]]", "id = \"a\""]).expect("valid scenario");
        assert_eq!(scenario.description, None);
        assert_eq!(scenario.settle_ms, 1000);
        assert_eq!(scenario.server, ServerConfig::default());
        assert_eq!(scenario.server.event_gap_ms, 5);
        assert_eq!(scenario.server.queue_capacity, 64);
        assert_eq!(scenario.server.queue_bytes, 1 << 20);
        assert!(scenario.expect.is_empty());
        assert_eq!(scenario.users, [User::new("a", 0)]);
    }

    #[test]
    fn a_repeated_id_is_one_more_connection_of_that_user_with_its_chats_numbered_on() {
        let scenario = parse(&[
            HEAD,
            "[protocol]",
            "chat_id = \"m{n}\"", // one user: its ids differ only by `n`
            "[[user]]",
            "id = \"tab\"",
            "drop_ms = 60",
            "send = [{ at_ms = 0, text = \"early\", pipelined = true },",
            "  { at_ms = 0, text = \"on open\", pipelined = false }]",
            "push = [{ at_ms = 1, text = \"p\" }]",
            "[[user]]",
            "id = \"tab\"",
            "connect_ms = 70",
            "send = [{ at_ms = 5, text = \"again\" }]",
            "push = [{ at_ms = 1, text = \"q\" }]",
            "[[user]]",
            "id = \"other\"",
            "[[user]]",
            "id = \"tab\"",
            "[[production]]",
            "invariant = \"message-lost\"",
            "user = \"tab\"",
            "at_ms = 3",
        ])
        .expect("valid scenario");
        let conns: Vec<(String, usize, usize, usize)> = scenario
            .connections()
            .into_iter()
            .map(|c| (c.label, c.nth, c.chats_before, c.pushes_before))
            .collect();
        assert_eq!(
            conns,
            [
                ("tab".to_string(), 1, 0, 0),
                ("tab#2".to_string(), 2, 2, 1),
                ("other".to_string(), 1, 0, 0),
                ("tab#3".to_string(), 3, 3, 2),
            ]
        );
        assert_eq!(
            scenario.relabelled(),
            [
                ("tab#2".to_string(), "tab".to_string()),
                ("tab#3".to_string(), "tab".to_string())
            ]
        );
        let first = &scenario.users[0];
        assert_eq!(
            (first.drop_ms, first.close_ms, first.pipelined),
            (Some(60), None, 1)
        );
        assert_eq!(first.leave_ms(), Some(60));
        assert_eq!(scenario.users[1].pipelined, 0);
        // `m{n}` gives one user's chats on different connections different ids.
        assert_eq!(scenario.protocol.chat_id("tab", 3), "m3");
        assert_eq!(scenario.production[0].user, "tab");
    }

    #[test]
    fn a_chat_id_template_is_checked_across_a_users_connections() {
        // Numbered per entry, `{user}` alone would give `tab`'s two chats one id; numbered per
        // user it cannot, and a template without `{user}` still clashes across two users.
        let ok = parse(&[
            HEAD,
            "[protocol]",
            "chat_id = \"c{n}\"",
            "[[user]]",
            "id = \"tab\"",
            "send = [{ at_ms = 0, text = \"x\" }]",
            "[[user]]",
            "id = \"tab\"",
            "send = [{ at_ms = 0, text = \"y\" }]",
        ]);
        assert!(ok.is_ok(), "{ok:?}");
        let (line, _, message) = invalid(&[
            HEAD,
            "[protocol]",
            "chat_id = \"c{n}\"",
            "[[user]]",
            "id = \"tab\"",
            "send = [{ at_ms = 0, text = \"x\" }]",
            "[[user]]",
            "id = \"tab\"",
            "send = [{ at_ms = 0, text = \"y\" }]",
            "[[user]]",
            "id = \"b\"",
            "send = [{ at_ms = 0, text = \"z\" }, { at_ms = 1, text = \"z\" }]",
        ]);
        assert_eq!(line, 3);
        assert!(
            message.contains("the same id \"c1\" (user \"tab\"'s chat 1 and user \"b\"'s chat 1)"),
            "{message}"
        );
    }

    #[test]
    fn a_protocol_table_overrides_only_the_keys_it_names() {
        let scenario = parse(&[
            HEAD,
            "[protocol]",
            "user_header = \"X-User-Id\"",
            "chat = '{\"action\":\"say\",\"msg_id\":\"{id}\",\"body\":\"{text}\"}'",
            "type_field = \"kind\"",
            "user_field = \"meta.user\"",
            "events = [\"start\", \"end\"]",
            "error_patterns = [\"boom\"]",
            "close_codes = [1000, 4001]",
            "[[user]]",
            "id = \"a\"",
        ])
        .expect("valid scenario");
        let p = scenario.protocol;
        assert_eq!(
            p.user_query, None,
            "a header alone turns the query parameter off"
        );
        assert_eq!(p.user_header.as_deref(), Some("X-User-Id"));
        assert_eq!(p.type_field, "kind");
        assert_eq!(p.user_field, "meta.user");
        assert_eq!(p.events, ["start", "end"]);
        assert_eq!(p.error_patterns, ["boom"]);
        assert_eq!(p.close_codes, [1000, 4001]);
        assert_eq!(p.ack_type, "ack", "left-out keys keep their defaults");
        assert_eq!(
            p.render_chat("a/m1", "say \"hi\"\n", "a"),
            r#"{"action":"say","msg_id":"a/m1","body":"say \"hi\"\n"}"#
        );
    }

    #[test]
    fn an_empty_event_list_is_a_protocol_answered_by_its_ack_alone() {
        let scenario = parse(&[HEAD, "[protocol]", "events = []", "[[user]]", "id = \"a\""]);
        assert_eq!(
            scenario.expect("valid scenario").protocol.events,
            [] as [String; 0]
        );
    }

    #[rstest]
    #[case::a_header("user_header = \"Authorization\"")]
    #[case::a_cookie("cookie = \"session={token}\"")]
    #[case::a_subprotocol("subprotocol = \"bearer.{token}\"")]
    fn any_other_credential_alone_turns_the_query_parameter_off(#[case] key: &str) {
        let scenario = parse(&[HEAD, "[protocol]", key, "[[user]]", "id = \"u\""]);
        let p = scenario.expect("valid scenario").protocol;
        assert_eq!(p.user_query, None, "{key}");
        assert_eq!(p.query_pairs("u", Some("t")), []);
    }

    #[test]
    fn a_byte_offset_inside_a_character_is_placed_at_that_character() {
        // Spans can land inside a multi-byte character (an error inside `é`): the column is the
        // character's own, counted in characters.
        assert_eq!(super::line_col("a\nxé = 1", 4), (2, 2));
        assert_eq!(super::line_col("a\nxé = 1", 5), (2, 3));
        assert_eq!(super::line_col("é", 99), (1, 2), "past the end: the end");
    }

    #[test]
    fn braces_around_nothing_in_a_chat_template_are_literal_text() {
        // An empty JSON object in the chat frame is not a placeholder.
        let chat = r#"{"id":"{id}","meta":{}}"#;
        let line = format!("chat = '{chat}'");
        let scenario =
            parse(&[HEAD, "[protocol]", &line, "[[user]]", "id = \"a\""]).expect("valid scenario");
        assert_eq!(scenario.protocol.chat, chat);
    }

    #[test]
    fn wire_format_keys_set_chat_ids_run_ids_per_kind_user_fields_and_query_credentials() {
        let scenario = parse(&[
            HEAD,
            "[protocol]",
            "user_query = \"uid={user}&access_token={token}\"",
            "chat_id = \"{user}-{n}\"",
            "run_from_ack = \"data.runId\"",
            "user_field = \"user\"",
            "ack_user_field = \"data.user\"",
            "push_user_field = \"to\"",
            "[[user]]",
            "id = \"a b\"",
        ])
        .expect("valid scenario");
        let p = scenario.protocol;
        assert_eq!(p.chat_id("a b", 3), "a b-3");
        assert_eq!(p.run_from_ack.as_deref(), Some("data.runId"));
        assert_eq!(
            (
                p.ack_user_field(),
                p.event_user_field(),
                p.push_user_field()
            ),
            ("data.user", "user", "to"),
            "a kind without a field of its own falls back to `user_field`"
        );
        assert!(p.uses_token(), "a token in the query needs a token");
        assert_eq!(
            p.query_pairs("a b", Some("t0k")),
            [
                ("uid".to_string(), "a b".to_string()),
                ("access_token".to_string(), "t0k".to_string())
            ]
        );
        let d = crate::scenario::Protocol::default();
        assert_eq!(d.chat_id("u", 2), "u/m2", "today's ids stay the default");
        assert_eq!(d.query_pairs("u", None), [("token".into(), "u".into())]);
        assert!(!d.uses_token());
    }

    #[test]
    fn the_default_chat_template_is_racegates_own_chat_frame() {
        let scenario = parse(&[HEAD, "[[user]]", "id = \"a\""]).expect("valid scenario");
        assert_eq!(scenario.protocol, crate::scenario::Protocol::default());
        assert_eq!(
            scenario.protocol.render_chat("u/m1", "héllo {id}", "u"),
            r#"{"type":"chat","id":"u/m1","text":"héllo {id}"}"#
        );
    }

    #[test]
    fn a_partial_server_table_keeps_the_other_defaults() {
        let scenario = parse(&[HEAD, "[server]", "auth_ms = 180", "[[user]]", "id = \"a\""])
            .expect("valid scenario");
        assert_eq!(
            scenario.server,
            ServerConfig {
                auth_ms: 180,
                ..ServerConfig::default()
            }
        );
    }

    #[test]
    fn expectations_may_name_invariants_exactly_or_at_least_and_round_trip() {
        use crate::invariant::Invariant::{AcceptFirst, MessageLost, Stuck};
        use crate::scenario::InvariantMatch;
        use std::collections::BTreeSet;
        let scenario = parse(&[
            HEAD,
            "[[user]]",
            "id = \"a\"",
            "[expect]",
            "unfixed = { verdict = \"fail\", invariants = [\"message-lost\", \"accept-first\"] }",
            "partial = { verdict = \"fail\", at_least = [\"stuck\"] }",
            "state-machine = \"pass\"",
        ])
        .expect("valid scenario");
        assert_eq!(
            scenario.expect,
            IndexMap::from([
                (EndpointKind::Unfixed, Verdict::Fail),
                (EndpointKind::Partial, Verdict::Fail),
                (EndpointKind::StateMachine, Verdict::Pass),
            ])
        );
        assert_eq!(
            scenario.expect_invariants,
            IndexMap::from([
                (
                    EndpointKind::Unfixed,
                    InvariantMatch::Exactly(BTreeSet::from([AcceptFirst, MessageLost]))
                ),
                (
                    EndpointKind::Partial,
                    InvariantMatch::AtLeast(BTreeSet::from([Stuck]))
                ),
            ])
        );
        let written = crate::scenario::to_toml(&scenario, "");
        let back = crate::scenario::parse(&written, Path::new("scenarios/s.toml")).unwrap();
        assert_eq!(
            back.expect_invariants, scenario.expect_invariants,
            "{written}"
        );
    }

    #[test]
    fn production_symptoms_are_read_in_file_order() {
        let scenario = parse(&[
            HEAD,
            "[[user]]",
            "id = \"a\"",
            "[[user]]",
            "id = \"b\"",
            "[[production]]",
            "invariant = \"message-lost\"",
            "user = \"b\"",
            "at_ms = 100",
            "[[production]]",
            "invariant = \"accept-first\"",
            "user = \"a\"",
            "at_ms = 0",
        ])
        .expect("valid scenario");
        let got: Vec<String> = scenario.production.iter().map(|p| p.to_string()).collect();
        assert_eq!(
            got,
            ["message-lost for b at 100 ms", "accept-first for a at 0 ms"]
        );
    }

    #[test]
    fn zero_is_a_valid_time() {
        let scenario = parse(&[
            "name = \"s\"",
            "settle_ms = 0",
            "[[user]]",
            "id = \"a\"",
            "close_ms = 0",
            "[[user.push]]",
            "at_ms = 0",
            "text = \"\"",
        ])
        .expect("valid scenario");
        assert_eq!(scenario.settle_ms, 0);
        assert_eq!(scenario.users[0].close_ms, Some(0));
        assert_eq!(scenario.users[0].pushes[0].at_ms, 0);
    }

    #[test]
    fn the_error_display_reads_file_line_column_message() {
        let err = parse(&[HEAD, "settle_ms = -1", "[[user]]", "id = \"a\""]).unwrap_err();
        assert_eq!(
            err.to_string(),
            "scenarios/s.toml:2:13: `settle_ms` must be a non-negative integer number of \
             milliseconds, got -1"
        );
    }

    #[rstest]
    // Syntax, unknown keys, missing keys and wrong types: found by toml/serde.
    #[case::a_syntax_error_points_at_the_bad_token(
        &["name = \"s\"", "settle_ms = = 3"], 2, 13, "invalid string; expected `\"`, `'`"
    )]
    #[case::an_unterminated_string_points_at_the_string(
        &["name = \"s", "[[user]]", "id = \"a\""], 1, 10, "invalid basic string"
    )]
    #[case::a_duplicate_key_is_a_syntax_error_at_the_second_key(
        &[HEAD, "[[user]]", "id = \"a\"", "id = \"b\""], 4, 1, "duplicate key `id`"
    )]
    #[case::an_unknown_top_level_key_lists_the_expected_keys(
        &[HEAD, "namee = \"t\"", "[[user]]", "id = \"a\""], 2, 1,
        "unknown key `namee`, expected one of `name`, `description`, `settle_ms`"
    )]
    #[case::a_misspelled_server_key_lists_the_server_keys(
        &[HEAD, "[server]", "acept_ms = 0", "[[user]]", "id = \"a\""], 3, 1,
        "unknown key `acept_ms`, expected one of `accept_ms`, `auth_ms`"
    )]
    #[case::an_unknown_user_key_lists_the_user_keys(
        &[HEAD, "[[user]]", "id = \"a\"", "fail = \"auth\""], 4, 1,
        "unknown key `fail`, expected one of `id`, `connect_ms`, `fail_at`"
    )]
    #[case::an_unknown_send_key_lists_the_send_keys(
        &[HEAD, "[[user]]", "id = \"a\"", "[[user.send]]", "at = 5", "text = \"x\""], 5, 1,
        "unknown key `at`, expected one of `at_ms`, `text`, `pipelined`"
    )]
    #[case::an_unknown_push_key_lists_the_push_keys(
        &[HEAD, "[[user]]", "id = \"a\"", "[[user.push]]", "at_ms = 0", "text = \"x\"",
          "pipelined = true"], 7, 1, "unknown key `pipelined`, expected `at_ms` or `text`"
    )]
    #[case::an_unknown_key_in_an_inline_table_points_at_the_key(
        &[HEAD, "[[user]]", "id = \"a\"", "push = [{ at_ms = 1, txt = \"x\" }]"], 4, 22,
        "unknown key `txt`"
    )]
    #[case::a_missing_name_is_reported_at_the_start_of_the_file(
        &["[[user]]", "id = \"a\""], 1, 1, "missing required key `name`"
    )]
    #[case::an_empty_file_asks_for_a_name(&[""], 1, 1, "missing required key `name`")]
    #[case::a_missing_user_id_points_at_its_user_header(
        &[HEAD, "[[user]]", "id = \"a\"", "[[user]]", "connect_ms = 3"], 4, 1,
        "missing required key `id`"
    )]
    #[case::a_missing_at_ms_points_at_its_push_header(
        &[HEAD, "[[user]]", "id = \"a\"", "[[user.push]]", "text = \"x\""], 4, 1,
        "missing required key `at_ms`"
    )]
    #[case::a_missing_text_points_at_its_inline_send(
        &[HEAD, "[[user]]", "id = \"a\"", "send = [{ at_ms = 1 }]"], 4, 9,
        "missing required key `text`"
    )]
    #[case::a_name_of_the_wrong_type_points_at_the_value(
        &["name = 3", "[[user]]", "id = \"a\""], 1, 8, "expected a string"
    )]
    #[case::a_text_of_the_wrong_type_points_at_the_value(
        &[HEAD, "[[user]]", "id = \"a\"", "[[user.send]]", "at_ms = 1", "text = 5"], 6, 8,
        "expected a string"
    )]
    #[case::a_server_that_is_not_a_table_says_what_it_should_be(
        &[HEAD, "server = 3", "[[user]]", "id = \"a\""], 2, 10, "expected a [server] table"
    )]
    #[case::a_single_user_table_asks_for_an_array_of_tables(
        &[HEAD, "[user]", "id = \"a\""], 2, 1, "write [[user]]"
    )]
    #[case::an_expect_that_is_not_a_table_says_what_it_should_be(
        &[HEAD, "expect = \"pass\"", "[[user]]", "id = \"a\""], 2, 10,
        "expected a table of endpoint names to \"pass\" or \"fail\""
    )]
    // Times.
    #[case::a_time_past_one_day_is_rejected_at_its_value(
        &[HEAD, "[[user]]", "id = \"a\"", "connect_ms = 9223372036854775807"], 4, 14,
        "limited to 86400000 ms"
    )]
    #[case::a_negative_time_is_rejected_at_its_value(
        &[HEAD, "[[user]]", "id = \"a\"", "[[user.send]]", "at_ms = -3", "text = \"x\""], 5, 9,
        "`at_ms` must be a non-negative integer number of milliseconds, got -3"
    )]
    #[case::a_fractional_time_is_rejected_at_its_value(
        &[HEAD, "[[user]]", "id = \"a\"", "connect_ms = 5.5"], 4, 14,
        "`connect_ms` must be a non-negative integer number of milliseconds, got 5.5"
    )]
    #[case::a_time_written_as_a_string_is_rejected_at_its_value(
        &[HEAD, "[[user]]", "id = \"a\"", "close_ms = \"150\""], 4, 12,
        "`close_ms` must be a non-negative integer number of milliseconds, got \"150\""
    )]
    #[case::a_negative_settle_time_is_rejected_at_its_value(
        &[HEAD, "settle_ms = -1000", "[[user]]", "id = \"a\""], 2, 13,
        "`settle_ms` must be a non-negative integer number of milliseconds, got -1000"
    )]
    #[case::a_negative_server_phase_is_rejected_at_its_value(
        &[HEAD, "[server]", "auth_ms = 180", "heartbeat_ms = -1", "[[user]]", "id = \"a\""], 4, 16,
        "`heartbeat_ms` must be a non-negative integer number of milliseconds, got -1"
    )]
    #[case::a_fractional_time_in_an_inline_table_is_rejected_at_its_value(
        &[HEAD, "[[user]]", "id = \"a\"", "push = [{ at_ms = 2.5, text = \"x\" }]"], 4, 19,
        "`at_ms` must be a non-negative integer number of milliseconds, got 2.5"
    )]
    #[case::columns_count_characters_not_bytes(
        &[HEAD, "[[user]]", "id = \"a\"", "push = [{ text = \"über\", at_ms = -1 }]"], 4, 34,
        "got -1"
    )]
    // Queue limits.
    #[case::a_zero_queue_capacity_is_rejected_at_its_value(
        &[HEAD, "[server]", "queue_capacity = 0", "[[user]]", "id = \"a\""], 3, 18,
        "`queue_capacity` must be an integer of at least 1 (messages), got 0"
    )]
    #[case::a_zero_queue_byte_limit_is_rejected_at_its_value(
        &[HEAD, "[server]", "queue_bytes = 0", "[[user]]", "id = \"a\""], 3, 15,
        "`queue_bytes` must be an integer of at least 1 (bytes), got 0"
    )]
    #[case::a_fractional_queue_capacity_is_rejected_at_its_value(
        &[HEAD, "[server]", "queue_capacity = 1.5", "[[user]]", "id = \"a\""], 3, 18,
        "got 1.5"
    )]
    // Names and ids.
    #[case::an_empty_name_is_rejected_at_its_value(
        &["name = \"\"", "[[user]]", "id = \"a\""], 1, 8, "`name` must not be empty"
    )]
    #[case::an_empty_user_id_is_rejected_at_its_value(
        &[HEAD, "[[user]]", "id = \"\""], 3, 6, "user `id` must not be empty"
    )]
    // Several connections per user, drops, pipelined chats.
    #[case::an_id_that_is_another_users_connection_label_names_that_connection(
        &[HEAD, "[[user]]", "id = \"a\"", "[[user]]", "id = \"a\"", "[[user]]", "id = \"a#2\""],
        7, 6, "user id `a#2` is the label of user `a`'s connection 2 (the [[user]] on line 5); \
               a repeated id is one more connection of that user"
    )]
    #[case::a_connection_label_that_is_an_earlier_users_id_names_that_user(
        &[HEAD, "[[user]]", "id = \"a#2\"", "[[user]]", "id = \"a\"", "[[user]]", "id = \"a\""],
        7, 6, "user `a`'s connection 2 would be labelled `a#2`, which the [[user]] on line 3 has \
               as its id"
    )]
    #[case::a_close_and_a_drop_on_one_connection_are_refused_at_the_drop(
        &[HEAD, "[[user]]", "id = \"a\"", "close_ms = 50", "drop_ms = 60"], 5, 11,
        "`drop_ms` and `close_ms` both end this connection"
    )]
    #[case::a_drop_before_its_close_in_the_file_is_refused_at_the_drop_too(
        &[HEAD, "[[user]]", "id = \"a\"", "drop_ms = 60", "close_ms = 50"], 4, 11,
        "give only one"
    )]
    #[case::a_negative_drop_time_is_rejected_at_its_value(
        &[HEAD, "[[user]]", "id = \"a\"", "drop_ms = -5"], 4, 11,
        "`drop_ms` must be a non-negative integer number of milliseconds, got -5"
    )]
    #[case::a_pipelined_chat_must_go_out_at_connect(
        &[HEAD, "[[user]]", "id = \"a\"", "[[user.send]]", "at_ms = 5", "text = \"x\"",
          "pipelined = true"], 5, 9,
        "its `at_ms` must be 0, got 5"
    )]
    #[case::a_pipelined_chat_after_one_sent_after_open_is_refused_at_its_key(
        &[HEAD, "[[user]]", "id = \"a\"", "send = [{ at_ms = 1, text = \"x\" },",
          "  { at_ms = 0, text = \"y\", pipelined = true }]"], 5, 40,
        "list the user's pipelined chats first"
    )]
    #[case::pipelined_must_be_a_boolean(
        &[HEAD, "[[user]]", "id = \"a\"", "[[user.send]]", "at_ms = 0", "text = \"x\"",
          "pipelined = \"yes\""], 7, 13, "expected a boolean"
    )]
    #[case::a_scenario_without_users_is_rejected_at_the_start_of_the_file(
        &[HEAD, "settle_ms = 5"], 1, 1, "a scenario needs at least one [[user]]"
    )]
    #[case::an_empty_user_array_is_rejected_at_its_value(
        &[HEAD, "user = []"], 2, 8, "a scenario needs at least one [[user]]"
    )]
    // Enum-like strings.
    #[case::an_unknown_fail_at_phase_lists_the_valid_phases(
        &[HEAD, "[[user]]", "id = \"a\"", "fail_at = \"login\""], 4, 11,
        "`fail_at` must be one of \"auth\", \"services\" or \"register\" (or left out), \
         got \"login\""
    )]
    #[case::an_unknown_endpoint_in_expect_lists_the_valid_endpoints(
        &[HEAD, "[[user]]", "id = \"a\"", "[expect]", "unfixed = \"fail\"", "fixed = \"pass\""],
        6, 1, "unknown endpoint `fixed` in [expect]; expected one of unfixed, partial, state-machine"
    )]
    #[case::a_bad_verdict_is_rejected_at_its_value(
        &[HEAD, "[[user]]", "id = \"a\"", "[expect]", "partial = \"passed\""], 5, 11,
        "the verdict for `partial` in [expect] must be \"pass\" or \"fail\", got \"passed\""
    )]
    #[case::a_verdict_of_the_wrong_type_is_rejected_at_its_value(
        &[HEAD, "[[user]]", "id = \"a\"", "[expect]", "state-machine = true"], 5, 17,
        "must be \"pass\" or \"fail\", got true"
    )]
    // [protocol].
    #[case::an_unknown_protocol_key_lists_the_protocol_keys(
        &[HEAD, "[protocol]", "user_param = \"t\"", "[[user]]", "id = \"a\""], 3, 1,
        "unknown key `user_param`, expected one of `user_query`, `user_header`"
    )]
    #[case::a_chat_template_without_id_is_rejected_at_its_value(
        &[HEAD, "[protocol]", "chat = '{\"text\":\"{text}\"}'", "[[user]]", "id = \"a\""], 3, 8,
        "needs an `{id}` placeholder"
    )]
    #[case::an_unknown_placeholder_is_rejected_at_its_value(
        &[HEAD, "[protocol]", "chat = '{\"id\":\"{id}\",\"t\":\"{body}\"}'", "[[user]]", "id = \"a\""],
        3, 8, "unknown placeholder `{body}`"
    )]
    #[case::a_chat_id_without_n_is_rejected_at_its_value(
        &[HEAD, "[protocol]", "chat_id = \"{user}\"", "[[user]]", "id = \"a\""], 3, 11,
        "`chat_id` in [protocol] needs an `{n}` placeholder"
    )]
    #[case::an_unknown_placeholder_in_a_chat_id_is_rejected_at_its_value(
        &[HEAD, "[protocol]", "chat_id = \"{user}-{seq}-{n}\"", "[[user]]", "id = \"a\""], 3, 11,
        "unknown placeholder `{seq}` in `chat_id`; expected `{user}` or `{n}`"
    )]
    #[case::a_chat_id_that_gives_two_users_chats_one_id_is_rejected_at_its_value(
        &[HEAD, "[protocol]", "chat_id = \"m{n}\"", "[[user]]", "id = \"a\"",
          "send = [{ at_ms = 0, text = \"x\" }]", "[[user]]", "id = \"b\"",
          "send = [{ at_ms = 0, text = \"y\" }]"], 3, 11,
        "`chat_id` gives two chats the same id \"m1\" (user \"a\"'s chat 1 and user \"b\"'s chat 1)"
    )]
    #[case::a_chat_id_whose_ids_run_into_each_other_is_rejected(
        &[HEAD, "[protocol]", "chat_id = \"{user}{n}\"", "[[user]]", "id = \"u1\"",
          "send = [{ at_ms = 0, text = \"x\" }, { at_ms = 1, text = \"x\" }, { at_ms = 2, text = \"x\" },",
          "  { at_ms = 3, text = \"x\" }, { at_ms = 4, text = \"x\" }, { at_ms = 5, text = \"x\" },",
          "  { at_ms = 6, text = \"x\" }, { at_ms = 7, text = \"x\" }, { at_ms = 8, text = \"x\" },",
          "  { at_ms = 9, text = \"x\" }, { at_ms = 10, text = \"x\" }]",
          "[[user]]", "id = \"u11\"", "send = [{ at_ms = 0, text = \"y\" }]"], 3, 11,
        "the same id \"u111\" (user \"u1\"'s chat 11 and user \"u11\"'s chat 1)"
    )]
    #[case::an_empty_run_from_ack_is_rejected_at_its_value(
        &[HEAD, "[protocol]", "run_from_ack = \"\"", "[[user]]", "id = \"a\""], 3, 16,
        "`run_from_ack` in [protocol] must not be empty"
    )]
    #[case::an_empty_per_kind_user_field_is_rejected_at_its_value(
        &[HEAD, "[protocol]", "push_user_field = \" \"", "[[user]]", "id = \"a\""], 3, 19,
        "`push_user_field` in [protocol] must not be empty; leave it out to use `user_field`"
    )]
    #[case::a_bare_query_name_that_is_a_placeholder_asks_for_a_name(
        &[HEAD, "[protocol]", "user_query = \"{token}\"", "[[user]]", "id = \"a\""], 3, 14,
        "to send `{token}` write `name={token}`"
    )]
    #[case::an_unknown_placeholder_in_a_query_is_rejected_at_its_value(
        &[HEAD, "[protocol]", "user_query = \"t={secret}\"", "[[user]]", "id = \"a\""], 3, 14,
        "unknown placeholder `{secret}` in `user_query`; expected `{user}` or `{token}`"
    )]
    #[case::a_query_pair_without_a_name_is_rejected_at_its_value(
        &[HEAD, "[protocol]", "user_query = \"={token}\"", "[[user]]", "id = \"a\""], 3, 14,
        "needs a literal parameter name"
    )]
    #[case::a_query_pair_without_an_equals_sign_is_rejected_at_its_value(
        &[HEAD, "[protocol]", "user_query = \"uid={user}&debug\"", "[[user]]", "id = \"a\""], 3, 14,
        "pair \"debug\" has no `=`"
    )]
    #[case::a_close_code_out_of_range_is_rejected_at_its_value(
        &[HEAD, "[protocol]", "close_codes = [1000, 99]", "[[user]]", "id = \"a\""], 3, 22,
        "must be an integer from 1000 to 4999, got 99"
    )]
    #[case::a_duplicate_event_is_rejected_at_the_second(
        &[HEAD, "[protocol]", "events = [\"a\", \"b\", \"a\"]", "[[user]]", "id = \"a\""], 3, 21,
        "appears twice"
    )]
    #[case::an_empty_error_pattern_is_rejected_at_its_value(
        &[HEAD, "[protocol]", "error_patterns = [\"x\", \"\"]", "[[user]]", "id = \"a\""], 3, 24,
        "would match every error frame"
    )]
    #[case::a_header_name_with_a_space_is_rejected_at_its_value(
        &[HEAD, "[protocol]", "user_header = \"X User\"", "[[user]]", "id = \"a\""], 3, 15,
        "must be an HTTP header name"
    )]
    #[case::an_unknown_placeholder_in_a_header_value_is_rejected_at_its_value(
        &[HEAD, "[protocol]", "user_header = \"Authorization\"", "user_value = \"Bearer {secret}\"",
          "[[user]]", "id = \"a\""], 4, 14,
        "unknown placeholder `{secret}` in `user_value`; expected `{user}` or `{token}`"
    )]
    #[case::a_user_value_without_a_header_asks_for_the_header(
        &[HEAD, "[protocol]", "user_value = \"Bearer {token}\"", "[[user]]", "id = \"a\""], 3, 14,
        "set `user_header` too"
    )]
    #[case::a_header_value_with_a_newline_is_rejected_at_its_value(
        &[HEAD, "[protocol]", "user_header = \"X-A\"", "user_value = \"a\\nb {user}\"",
          "[[user]]", "id = \"a\""], 4, 14,
        "`user_value` must be an HTTP header value"
    )]
    #[case::an_unknown_placeholder_in_a_cookie_is_rejected_at_its_value(
        &[HEAD, "[protocol]", "cookie = \"session={tok}\"", "[[user]]", "id = \"a\""], 3, 10,
        "unknown placeholder `{tok}` in `cookie`"
    )]
    #[case::an_empty_cookie_is_rejected_at_its_value(
        &[HEAD, "[protocol]", "cookie = \"\"", "[[user]]", "id = \"a\""], 3, 10,
        "`cookie` in [protocol] must not be empty"
    )]
    #[case::a_subprotocol_with_a_slash_is_rejected_at_its_value(
        &[HEAD, "[protocol]", "subprotocol = \"chat/v1, {token}\"", "[[user]]", "id = \"a\""],
        3, 15, "`subprotocol` must be a list of subprotocol names"
    )]
    #[case::a_token_env_may_not_use_the_token(
        &[HEAD, "[protocol]", "user_header = \"Authorization\"", "token_env = \"T_{token}\"",
          "[[user]]", "id = \"a\""], 4, 13,
        "unknown placeholder `{token}` in `token_env`; expected only `{user}`"
    )]
    #[case::a_token_env_that_is_no_variable_name_is_rejected_at_its_value(
        &[HEAD, "[protocol]", "cookie = \"s={token}\"", "token_env = \"TOKEN-{user}\"",
          "[[user]]", "id = \"a\""], 4, 13,
        "`token_env` must be an environment variable name"
    )]
    #[case::a_token_env_starting_with_a_digit_is_rejected_at_its_value(
        &[HEAD, "[protocol]", "cookie = \"s={token}\"", "token_env = \"1_{user}\"",
          "[[user]]", "id = \"a\""], 4, 13, "cannot start with a digit"
    )]
    #[case::turning_off_the_query_without_a_header_is_rejected(
        &[HEAD, "[protocol]", "user_query = \"\"", "[[user]]", "id = \"a\""], 3, 14,
        "must pass the user id somehow"
    )]
    #[case::an_empty_field_name_is_rejected_at_its_value(
        &[HEAD, "[protocol]", "type_field = \" \"", "[[user]]", "id = \"a\""], 3, 14,
        "`type_field` in [protocol] must not be empty"
    )]
    #[case::a_field_name_of_the_wrong_type_points_at_the_value(
        &[HEAD, "[protocol]", "ack_type = 3", "[[user]]", "id = \"a\""], 3, 12,
        "expected a string"
    )]
    #[case::an_expectation_table_without_a_verdict_asks_for_one(
        &[HEAD, "[[user]]", "id = \"a\"", "[expect]", "unfixed = { invariants = [\"stuck\"] }"],
        5, 11, "[expect] `unfixed`: missing `verdict`"
    )]
    #[case::an_unknown_invariant_lists_the_invariants(
        &[HEAD, "[[user]]", "id = \"a\"", "[expect]",
          "unfixed = { verdict = \"fail\", invariants = [\"lost\"] }"],
        5, 11, "unknown invariant `lost`; expected one of accept-first, message-lost"
    )]
    #[case::exactly_and_at_least_together_are_refused(
        &[HEAD, "[[user]]", "id = \"a\"", "[expect]",
          "unfixed = { verdict = \"fail\", invariants = [\"stuck\"], at_least = [\"leak\"] }"],
        5, 11, "not both"
    )]
    #[case::a_pass_that_names_invariants_is_a_contradiction(
        &[HEAD, "[[user]]", "id = \"a\"", "[expect]",
          "partial = { verdict = \"pass\", at_least = [\"leak\"] }"],
        5, 11, "name invariants only with verdict = \"fail\""
    )]
    #[case::a_verdict_other_than_pass_or_fail_is_refused(
        &[HEAD, "[[user]]", "id = \"a\"", "[expect]", "unfixed = { verdict = \"maybe\" }"],
        5, 11, "`verdict` must be \"pass\" or \"fail\", got \"maybe\""
    )]
    #[case::a_fail_that_names_no_invariant_asks_for_one(
        &[HEAD, "[[user]]", "id = \"a\"", "[expect]",
          "unfixed = { verdict = \"fail\", invariants = [] }"],
        5, 11, "a \"fail\" violates at least one invariant; name it, or leave the list out"
    )]
    #[case::an_unknown_key_in_an_expectation_table_lists_the_keys(
        &[HEAD, "[[user]]", "id = \"a\"", "[expect]",
          "partial = { verdict = \"fail\", invariant = [\"leak\"] }"],
        5, 11, "unknown key `invariant`, expected one of `verdict`, `invariants`, `at_least`"
    )]
    #[case::an_invariant_named_twice_is_refused(
        &[HEAD, "[[user]]", "id = \"a\"", "[expect]",
          "partial = { verdict = \"fail\", invariants = [\"leak\", \"leak\"] }"],
        5, 11, "names `leak` twice"
    )]
    // [[production]].
    #[case::an_unknown_production_invariant_lists_the_invariants(
        &[HEAD, "[[user]]", "id = \"a\"", "[[production]]", "invariant = \"lost\"",
          "user = \"a\"", "at_ms = 3"], 5, 13,
        "[[production]] unknown invariant `lost`; expected one of accept-first"
    )]
    #[case::a_production_symptom_of_an_unknown_user_is_rejected_at_the_user(
        &[HEAD, "[[user]]", "id = \"a\"", "[[production]]", "invariant = \"stuck\"",
          "user = \"b\"", "at_ms = 3"], 6, 8, "names user `b`, which no [[user]] has"
    )]
    #[case::a_production_symptom_listed_twice_names_the_first_line(
        &[HEAD, "[[user]]", "id = \"a\"",
          "[[production]]", "invariant = \"stuck\"", "user = \"a\"", "at_ms = 3",
          "[[production]]", "invariant = \"stuck\"", "user = \"a\"", "at_ms = 9"], 9, 13,
        "`stuck` for user `a` is already listed by the [[production]] on line 5"
    )]
    #[case::an_unknown_production_key_lists_the_keys(
        &[HEAD, "[[user]]", "id = \"a\"", "[[production]]", "invariant = \"stuck\"",
          "user = \"a\"", "at = 3"], 7, 1,
        "unknown key `at`, expected one of `invariant`, `user`, `at_ms`"
    )]
    #[case::a_production_symptom_without_a_time_points_at_its_header(
        &[HEAD, "[[user]]", "id = \"a\"", "[[production]]", "invariant = \"stuck\"",
          "user = \"a\""], 4, 1, "missing required key `at_ms`"
    )]
    #[case::a_negative_production_time_is_rejected_at_its_value(
        &[HEAD, "[[user]]", "id = \"a\"", "[[production]]", "invariant = \"stuck\"",
          "user = \"a\"", "at_ms = -1"], 7, 9,
        "`at_ms` must be a non-negative integer number of milliseconds, got -1"
    )]
    #[case::a_single_production_table_asks_for_an_array_of_tables(
        &[HEAD, "[[user]]", "id = \"a\"", "[production]", "invariant = \"stuck\""], 4, 1,
        "write [[production]]"
    )]
    fn an_invalid_scenario_is_reported_at_the_offending_place(
        #[case] text: &[&str],
        #[case] line: usize,
        #[case] column: usize,
        #[case] phrase: &str,
    ) {
        let (l, c, message) = invalid(text);
        assert_eq!(
            (l, c),
            (line, column),
            "wrong place for {message:?} in\n{}",
            lines(text)
        );
        assert!(
            message.contains(phrase),
            "{message:?} does not contain {phrase:?}"
        );
    }
}
