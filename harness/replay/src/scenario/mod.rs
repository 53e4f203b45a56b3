//! Scenario files: the users, timings and expected verdicts of one replay.
//!
//! Parsing is two steps, as a user would want the errors: [`raw`] is the file's shape exactly
//! (serde, `deny_unknown_fields`, spans kept), then [`validate`](raw::validate) turns it into a
//! [`Scenario`] or a [`ScenarioError`] naming the file, line and column of the offending value.

mod raw;
pub mod template;
mod write;

use std::collections::BTreeSet;
use std::fmt;
use std::path::{Path, PathBuf};

use indexmap::IndexMap;
use serde::{Deserialize, Serialize};

use crate::endpoint_kind::EndpointKind;
use crate::invariant::Invariant;

pub use crate::setup::{Phase, ServerConfig};
pub use write::to_toml;

// Every TOML file racegate reads (the mapping of `import --map`, probe's hooks file) reports its
// errors as scenario files do: `file:line:column: message`.
pub use raw::{ProtocolTable, RawProtocol, line_col, toml_message};

/// One validated scenario.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scenario {
    /// Unique within a run.
    pub name: String,
    /// What it reproduces.
    pub description: Option<String>,
    /// Where it was read from (empty for scenarios built in code).
    pub file: PathBuf,
    /// Server phase timings and limits.
    pub server: ServerConfig,
    /// Clients, in file order.
    pub users: Vec<User>,
    /// The verdict each gated endpoint must get; endpoints left out are not gated.
    pub expect: IndexMap<EndpointKind, Verdict>,
    /// The invariants a gated endpoint must fail with, where `[expect]` names them
    /// (`{ verdict = "fail", invariants = [...] }`); endpoints left out are gated on the verdict
    /// alone.
    pub expect_invariants: IndexMap<EndpointKind, InvariantMatch>,
    /// Quiet time after the last scheduled activity before clients close (default 1000).
    pub settle_ms: u64,
    /// How `racegate probe` talks to a live server (`[protocol]`); the replay ignores it.
    pub protocol: Protocol,
    /// What production showed (`[[production]]`, written by `racegate import --map`): each
    /// symptom must be reproduced by the replay of [`PRODUCTION`], or the run is a mismatch.
    pub production: Vec<Symptom>,
}

/// The endpoint that models the production server, against which `[[production]]` symptoms are
/// checked: the seed's backend is what `unfixed` reproduces.
pub const PRODUCTION: EndpointKind = EndpointKind::Unfixed;

/// One `[[production]]`: an invariant a production log showed broken, for whom and when.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Symptom {
    /// The invariant the log's error line stands for.
    pub invariant: Invariant,
    /// The user whose connection showed it: one of the scenario's `[[user]]` ids.
    pub user: String,
    /// When it was first logged, in milliseconds on the scenario's clock.
    pub at_ms: u64,
}

impl fmt::Display for Symptom {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} for {} at {} ms",
            self.invariant, self.user, self.at_ms
        )
    }
}

/// The `[protocol]` table: how a live server under `racegate probe` speaks, so one scenario file
/// gates servers that are not racegate's. Defaults are racegate's own wire protocol.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Protocol {
    /// The query string carrying the user's credential: a bare parameter name (the user id is
    /// its value, as in `token`) or `name=template` pairs joined by `&` (`access_token={token}`);
    /// `None` when the credential travels only in headers. See [`Protocol::query_pairs`].
    pub user_query: Option<String>,
    /// The request header carrying the user's credential, if any.
    pub user_header: Option<String>,
    /// The value of `user_header`: a [`template`] (`{user}`, `{token}`); default `{user}`.
    pub user_value: String,
    /// A `Sec-WebSocket-Protocol` to request, as a [`template`] (a token in a subprotocol).
    pub subprotocol: Option<String>,
    /// A `Cookie` header, as a [`template`] (`session={token}`).
    pub cookie: Option<String>,
    /// The environment variable holding each user's token, as a template of `{user}` only,
    /// filled with [`template::env_safe`] of the id (`RACEGATE_TOKEN_{user}`).
    pub token_env: Option<String>,
    /// A chat frame; `{id}`, `{text}` and `{user}` are replaced by JSON-escaped values.
    pub chat: String,
    /// A chat's id: a template of `{user}` and `{n}` (the user's n-th chat, from 1). Validated
    /// to give every chat of the scenario its own id, since acks and events are matched by it.
    pub chat_id: String,
    /// The field naming a frame's type (a dotted path reaches into nested objects).
    pub type_field: String,
    /// The type of an acknowledgement.
    pub ack_type: String,
    /// The type of a server push.
    pub push_type: String,
    /// The type of an error frame.
    pub error_type: String,
    /// The field of an ack naming the chat it acknowledges.
    pub id_field: String,
    /// The field of an event naming the chat whose run it belongs to, or (with
    /// [`run_from_ack`](Protocol::run_from_ack)) the run id its chat's ack announced.
    pub run_field: String,
    /// The field of an ack holding the run id the server assigned to the chat, for servers
    /// whose events name their own run id rather than the chat's. When set, events are matched
    /// to chats only through the ids acks announced.
    pub run_from_ack: Option<String>,
    /// The field naming the user a frame is for (every kind without a field of its own).
    pub user_field: String,
    /// The user field of an ack, when it differs from `user_field`.
    pub ack_user_field: Option<String>,
    /// The user field of a run event, when it differs from `user_field`.
    pub event_user_field: Option<String>,
    /// The user field of a push, when it differs from `user_field`.
    pub push_user_field: Option<String>,
    /// The field of an error frame holding its text.
    pub message_field: String,
    /// The types of one chat's run events, in the order they must arrive.
    pub events: Vec<String>,
    /// Error texts (substrings, case-insensitive) that mean the transport was used before accept
    /// or after close.
    pub error_patterns: Vec<String>,
    /// Close codes a server may end a connection with.
    pub close_codes: Vec<u16>,
}

impl Default for Protocol {
    fn default() -> Self {
        let s = |v: &str| v.to_string();
        Protocol {
            user_query: Some(s("token")),
            user_header: None,
            user_value: s("{user}"),
            subprotocol: None,
            cookie: None,
            token_env: None,
            chat: s(r#"{"type":"chat","id":"{id}","text":"{text}"}"#),
            chat_id: s("{user}/m{n}"),
            type_field: s("type"),
            ack_type: s("ack"),
            push_type: s("push"),
            error_type: s("error"),
            id_field: s("id"),
            run_field: s("run"),
            run_from_ack: None,
            user_field: s("user"),
            ack_user_field: None,
            event_user_field: None,
            push_user_field: None,
            message_field: s("message"),
            events: crate::trace::AgentEvent::RUN
                .iter()
                .map(|e| s(e.name()))
                .collect(),
            error_patterns: vec![
                s(r#"Need to call "accept" first"#),
                s("not connected"),
                s(r#"Expected ASGI message "websocket.accept""#),
                s(r#"Cannot call "send" once a close message has been sent"#),
            ],
            close_codes: vec![1000, 1001, 1008, 1011, 1012, 1013],
        }
    }
}

impl Protocol {
    /// The placeholders a chat template may use.
    pub const PLACEHOLDERS: [&'static str; 3] = ["id", "text", "user"];

    /// The placeholders a chat id template may use.
    pub const CHAT_ID_PLACEHOLDERS: [&'static str; 2] = ["user", "n"];

    /// The id of `user`'s `n`-th chat (1-based), from [`chat_id`](Protocol::chat_id).
    pub fn chat_id(&self, user: &str, n: usize) -> String {
        template::fill_with(&self.chat_id, &[("user", user), ("n", &n.to_string())])
    }

    /// The user field of an ack.
    pub fn ack_user_field(&self) -> &str {
        self.ack_user_field.as_deref().unwrap_or(&self.user_field)
    }

    /// The user field of a run event.
    pub fn event_user_field(&self) -> &str {
        self.event_user_field.as_deref().unwrap_or(&self.user_field)
    }

    /// The user field of a push.
    pub fn push_user_field(&self) -> &str {
        self.push_user_field.as_deref().unwrap_or(&self.user_field)
    }

    /// The query parameters `user_query` puts on `user`'s upgrade URL, filled and not yet
    /// percent-encoded: a bare name carries the user id; `name=template` pairs their templates.
    /// `{token}` without a token is left as written (callers resolve tokens first).
    pub fn query_pairs(&self, user: &str, token: Option<&str>) -> Vec<(String, String)> {
        let Some(query) = &self.user_query else {
            return Vec::new();
        };
        if !query.contains('=') {
            return vec![(query.clone(), user.to_string())];
        }
        query
            .split('&')
            .filter(|pair| !pair.is_empty())
            .map(|pair| {
                let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
                (name.to_string(), template::fill(value, user, token))
            })
            .collect()
    }

    /// The credential templates this protocol fills per user (header value, cookie,
    /// subprotocol), with the header each one goes into.
    pub fn credential_templates(&self) -> Vec<(&str, &str)> {
        let mut out = Vec::new();
        if let Some(h) = &self.user_header {
            out.push((h.as_str(), self.user_value.as_str()));
        }
        if let Some(c) = &self.cookie {
            out.push(("Cookie", c.as_str()));
        }
        if let Some(p) = &self.subprotocol {
            out.push(("Sec-WebSocket-Protocol", p.as_str()));
        }
        out
    }

    /// True when a user's connection needs a token.
    pub fn uses_token(&self) -> bool {
        self.credential_templates()
            .iter()
            .any(|(_, t)| template::uses_token(t))
            || self.user_query.as_deref().is_some_and(template::uses_token)
    }

    /// The chat frame for chat `id` with `text` from `user`: each placeholder replaced by the
    /// value, JSON-escaped without its quotes (the template supplies them).
    pub fn render_chat(&self, id: &str, text: &str, user: &str) -> String {
        let mut out = String::with_capacity(self.chat.len() + text.len() + 32);
        let mut rest = self.chat.as_str();
        while let Some(start) = rest.find('{') {
            out.push_str(&rest[..start]);
            let after = &rest[start..];
            let value = Self::PLACEHOLDERS
                .iter()
                .find(|p| after[1..].starts_with(*p) && after[1 + p.len()..].starts_with('}'))
                .map(|p| match *p {
                    "id" => id,
                    "text" => text,
                    _ => user,
                });
            match value {
                Some(v) => {
                    let quoted = serde_json::Value::String(v.to_string()).to_string();
                    out.push_str(&quoted[1..quoted.len() - 1]);
                    rest = &after[after.find('}').map_or(after.len(), |i| i + 1)..];
                }
                None => {
                    out.push('{');
                    rest = &after[1..];
                }
            }
        }
        out.push_str(rest);
        out
    }
}

/// One `[[user]]`: one client connection of a user, and the server-side pushes addressed to
/// the user from its connect on. A user id may repeat: each `[[user]]` with it is one more
/// connection of that user (a reconnect, a second tab), labelled as [`Scenario::connections`]
/// says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    /// Non-empty; the same id on several `[[user]]`s is one user's several connections.
    pub id: String,
    /// When the client opens its connection.
    pub connect_ms: u64,
    /// The setup phase that fails for this connection, if any.
    pub fail_at: Option<Phase>,
    /// If set, the client closes its side this long after `connect_ms` (e.g. mid-setup): with a
    /// close frame once open; before open it gives up on the handshake and ends its TCP
    /// connection.
    pub close_ms: Option<u64>,
    /// If set, the client's TCP connection ends this long after `connect_ms` without a close
    /// frame (a killed tab, a lost network). Never set together with `close_ms`.
    pub drop_ms: Option<u64>,
    /// Chats, each `at_ms` after the client sees the connection open; the first
    /// [`pipelined`](Self::pipelined) of them go out with the upgrade request instead.
    pub sends: Vec<Timed>,
    /// How many of `sends`, from the first, are written in the same write as the upgrade
    /// request (`pipelined = true`, `at_ms = 0`), before the handshake completes.
    pub pipelined: usize,
    /// Server notifications for this user, each `at_ms` after `connect_ms`.
    pub pushes: Vec<Timed>,
}

impl User {
    /// A connection of `id` at `connect_ms` with nothing else scheduled.
    pub fn new(id: impl Into<String>, connect_ms: u64) -> User {
        User {
            id: id.into(),
            connect_ms,
            fail_at: None,
            close_ms: None,
            drop_ms: None,
            sends: Vec::new(),
            pipelined: 0,
            pushes: Vec::new(),
        }
    }

    /// When the client ends the connection of its own accord, after `connect_ms`: its
    /// `close_ms` or its `drop_ms`.
    pub fn leave_ms(&self) -> Option<u64> {
        self.close_ms.or(self.drop_ms)
    }
}

/// One `[[user]]` as one connection of its user: how histories, traces, records and violations
/// name it, and where its chat and push numbers start.
///
/// A user's first connection is labelled with its id, so a file whose ids are all different
/// reads exactly as before; the `k`-th (`k` ≥ 2) is `id#k`. Chats and pushes are numbered per
/// user across its connections in file order (`u/m1` on the first, `u/m2` on the second), so
/// every id stays unique.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Connection {
    /// `id` for the user's first connection, `id#k` for its `k`-th.
    pub label: String,
    /// Which of its user's connections this is, from 1.
    pub nth: usize,
    /// Chats the user's earlier connections send: this one's first chat is number
    /// `chats_before + 1`.
    pub chats_before: usize,
    /// Pushes the user's earlier connections declare, likewise.
    pub pushes_before: usize,
}

impl Connection {
    /// The label of `user`'s `nth` connection (1-based).
    pub fn label_of(user: &str, nth: usize) -> String {
        if nth <= 1 {
            user.to_string()
        } else {
            format!("{user}#{nth}")
        }
    }
}

/// Each of `users` as a connection of its user, in file order ([`Connection`]).
pub fn connections(users: &[User]) -> Vec<Connection> {
    // Per user id: connections, chats and pushes so far.
    let mut seen: IndexMap<&str, (usize, usize, usize)> = IndexMap::new();
    users
        .iter()
        .map(|u| {
            let (n, chats, pushes) = seen.entry(u.id.as_str()).or_default();
            *n += 1;
            let c = Connection {
                label: Connection::label_of(&u.id, *n),
                nth: *n,
                chats_before: *chats,
                pushes_before: *pushes,
            };
            *chats += u.sends.len();
            *pushes += u.pushes.len();
            c
        })
        .collect()
}

impl Scenario {
    /// Each `[[user]]` as a connection ([`connections`]).
    pub fn connections(&self) -> Vec<Connection> {
        connections(&self.users)
    }

    /// Connection label → user id, for the connections whose label is not their user's id
    /// (a user's second connection and later): what a [`History`](crate::history::History)
    /// needs to compare users rather than connections.
    pub fn relabelled(&self) -> Vec<(String, String)> {
        self.connections()
            .into_iter()
            .zip(&self.users)
            .filter(|(c, _)| c.nth > 1)
            .map(|(c, u)| (c.label, u.id.clone()))
            .collect()
    }
}

/// A text at a time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Timed {
    /// Milliseconds, relative as documented where it is used.
    pub at_ms: u64,
    /// The payload.
    pub text: String,
}

/// Which invariants a failing run must have violated, as `[expect]` names them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum InvariantMatch {
    /// `invariants = [...]`: exactly these, no more and no fewer.
    Exactly(BTreeSet<Invariant>),
    /// `at_least = [...]`: these, and maybe others.
    AtLeast(BTreeSet<Invariant>),
}

impl InvariantMatch {
    /// True when the set of invariants violated (`got`, with repeats) satisfies this.
    pub fn matches<'a>(&self, got: impl IntoIterator<Item = &'a Invariant>) -> bool {
        let got: BTreeSet<Invariant> = got.into_iter().copied().collect();
        match self {
            InvariantMatch::Exactly(want) => *want == got,
            InvariantMatch::AtLeast(want) => want.is_subset(&got),
        }
    }

    /// The invariants named.
    pub fn invariants(&self) -> &BTreeSet<Invariant> {
        match self {
            InvariantMatch::Exactly(s) | InvariantMatch::AtLeast(s) => s,
        }
    }
}

impl fmt::Display for InvariantMatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<&str> = self.invariants().iter().map(|i| i.name()).collect();
        match self {
            InvariantMatch::Exactly(_) => write!(f, "exactly [{}]", names.join(", ")),
            InvariantMatch::AtLeast(_) => write!(f, "at least [{}]", names.join(", ")),
        }
    }
}

/// What an endpoint must get on a scenario.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    /// No invariant violated.
    Pass,
    /// At least one invariant violated.
    Fail,
}

impl Verdict {
    /// `pass` or `fail`.
    pub const fn name(self) -> &'static str {
        match self {
            Verdict::Pass => "pass",
            Verdict::Fail => "fail",
        }
    }
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A scenario that could not be read, with where.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScenarioError {
    /// The file could not be read.
    #[error("{}: {message}", path.display())]
    Io {
        /// The file or folder.
        path: PathBuf,
        /// The OS's words.
        message: String,
    },
    /// The file is not a valid scenario; `line` and `column` are 1-based.
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
    /// Two scenarios in one run share a name.
    #[error("{}: scenario name `{name}` is already used by {}", path.display(), first.display())]
    DuplicateName {
        /// The second file.
        path: PathBuf,
        /// The name.
        name: String,
        /// The first file.
        first: PathBuf,
    },
}

/// Parses scenario text; `path` is used only in errors and [`Scenario::file`].
pub fn parse(text: &str, path: &Path) -> Result<Scenario, ScenarioError> {
    raw::parse(text, path)
}

/// [`parse`], where a scenario without a `[protocol]` of its own takes `fallback` (the project
/// configuration's).
pub fn parse_with(
    text: &str,
    path: &Path,
    fallback: Option<&ProtocolTable>,
) -> Result<Scenario, ScenarioError> {
    raw::parse_with(text, path, fallback)
}

/// Reads and parses one scenario file.
pub fn load(path: &Path) -> Result<Scenario, ScenarioError> {
    load_with(path, None)
}

/// [`load`] with [`parse_with`]'s fallback `[protocol]`.
pub fn load_with(path: &Path, fallback: Option<&ProtocolTable>) -> Result<Scenario, ScenarioError> {
    let text = std::fs::read_to_string(path).map_err(|e| ScenarioError::Io {
        path: path.to_path_buf(),
        message: e.to_string(),
    })?;
    parse_with(&text, path, fallback)
}

/// Expands files and folders into scenario files: a folder contributes its `*.toml` files
/// (not recursive), sorted by name, so a run's order never depends on the filesystem.
pub fn discover(paths: &[PathBuf]) -> Result<Vec<PathBuf>, ScenarioError> {
    let mut out = Vec::new();
    for path in paths {
        let meta = std::fs::metadata(path).map_err(|e| ScenarioError::Io {
            path: path.clone(),
            message: e.to_string(),
        })?;
        if meta.is_dir() {
            let mut files = Vec::new();
            walk(path, &mut files)?;
            files.sort();
            out.extend(files);
        } else {
            out.push(path.clone());
        }
    }
    Ok(out)
}

/// Every `*.toml` file under `dir`, subfolders included (a repository may group its scenarios
/// by area). Symlinked folders are not followed, so a link cycle cannot loop.
fn walk(dir: &Path, out: &mut Vec<PathBuf>) -> Result<(), ScenarioError> {
    let entries = std::fs::read_dir(dir).map_err(|e| ScenarioError::Io {
        path: dir.to_path_buf(),
        message: e.to_string(),
    })?;
    for entry in entries.filter_map(Result::ok) {
        let path = entry.path();
        let is_real_dir = entry.file_type().is_ok_and(|t| t.is_dir());
        if is_real_dir {
            walk(&path, out)?;
        } else if path.extension().is_some_and(|x| x == "toml") && path.is_file() {
            out.push(path);
        }
    }
    Ok(())
}

/// Loads every scenario under `paths`, refusing duplicate names.
pub fn load_all(paths: &[PathBuf]) -> Result<Vec<Scenario>, ScenarioError> {
    load_all_with(paths, None)
}

/// [`load_all`] with [`parse_with`]'s fallback `[protocol]`.
pub fn load_all_with(
    paths: &[PathBuf],
    fallback: Option<&ProtocolTable>,
) -> Result<Vec<Scenario>, ScenarioError> {
    let mut seen: IndexMap<String, PathBuf> = IndexMap::new();
    let mut out = Vec::new();
    for file in discover(paths)? {
        let scenario = load_with(&file, fallback)?;
        if let Some(first) = seen.get(&scenario.name) {
            return Err(ScenarioError::DuplicateName {
                path: file,
                name: scenario.name,
                first: first.clone(),
            });
        }
        seen.insert(scenario.name.clone(), file);
        out.push(scenario);
    }
    Ok(out)
}
