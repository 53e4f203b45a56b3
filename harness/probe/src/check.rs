//! What a client can tell about a server, named like the oracle's invariants: a pure function
//! from a probe's records to the violations, so every rule is tested without a socket.
//!
//! | invariant | violated when |
//! | --- | --- |
//! | `message-lost` | a chat is not acknowledged exactly once, and no server close (other than 1000) or drop after it, nor the client's own early close (`close_ms`), excuses it; or it was never sent because the connection never opened |
//! | `event-order` | an acknowledged chat's run events are missing or out of order, unless the server ended the connection after the ones that came (cut short visibly) |
//! | `cross-user` | a frame names another user, or another user's chat |
//! | `accept-first` | an error frame (or a close reason, or a non-JSON text frame) matches one of the error patterns |
//! | `abnormal-close` | the server closed with a code outside the expected set, dropped the connection without a close frame, or refused the upgrade |
//! | `stuck` | the timeout passed while the client still waited: for the handshake, the scheduled close, or the server's answer to the client's close |

use std::collections::BTreeMap;

use indexmap::IndexMap;
use racegate_replay::runner::chat_id;
use racegate_replay::scenario::{Protocol, Scenario};
use racegate_replay::{Invariant, Violation};
use serde_json::Value;

use crate::session::{Record, Seen};

/// The longest frame text a violation quotes.
const QUOTE_CHARS: usize = 160;

#[derive(Default)]
struct Conn<'a> {
    sends: Vec<(&'a str, f64)>,
    acks: IndexMap<String, (usize, f64)>,
    runs: IndexMap<String, Vec<(usize, f64)>>,
    /// When the server ended the connection other than with a 1000 close.
    refused_from: Option<f64>,
    /// When the client gave up on its own, at the scenario's `close_ms`.
    abandoned_from: Option<f64>,
}

/// Checks the client-observable invariants over one scenario's `records` (all users, by time).
/// Violations come sorted by time, then invariant, then user.
pub fn check(scenario: &Scenario, records: &[Record]) -> Vec<Violation> {
    let protocol = &scenario.protocol;
    let mut owner: BTreeMap<String, &str> = BTreeMap::new();
    let early_close: Vec<&str> = scenario
        .users
        .iter()
        .filter(|u| u.close_ms.is_some())
        .map(|u| u.id.as_str())
        .collect();
    for user in &scenario.users {
        for n in 1..=user.sends.len() {
            owner.insert(chat_id(&user.id, n), &user.id);
        }
    }
    let mut out = Vec::new();
    let mut conns: IndexMap<&str, Conn<'_>> = IndexMap::new();
    for r in records {
        let user = r.user.as_str();
        let c = conns.entry(user).or_default();
        let mut violate = |invariant, detail: String| {
            out.push(Violation {
                invariant,
                user: user.to_string(),
                at_ms: millis(r.at_ms),
                detail,
            })
        };
        match &r.seen {
            Seen::ClientClose => {
                if early_close.contains(&user) {
                    c.abandoned_from.get_or_insert(r.at_ms);
                }
            }
            Seen::Connect | Seen::Open | Seen::RecvBinary { .. } => {}
            Seen::Send { id } => c.sends.push((id, r.at_ms)),
            Seen::Unsent { id, reason } => {
                violate(Invariant::MessageLost, format!("{id} never sent: {reason}"))
            }
            Seen::Timeout { waiting_for } => violate(
                Invariant::Stuck,
                format!("still waiting for {waiting_for} when the timeout ended the probe"),
            ),
            Seen::Refused { status, close_code } => {
                c.refused_from.get_or_insert(r.at_ms);
                match close_code {
                    Some(code) if protocol.close_codes.contains(code) => {}
                    Some(code) => violate(
                        Invariant::AbnormalClose,
                        format!(
                            "upgrade refused with HTTP {status}, close code {code}; expected one \
                             of {}",
                            codes(protocol)
                        ),
                    ),
                    None => violate(
                        Invariant::AbnormalClose,
                        format!("upgrade refused with HTTP {status} and no close code"),
                    ),
                }
            }
            Seen::ServerClose { code, reason } => {
                if *code != 1000 {
                    c.refused_from.get_or_insert(r.at_ms);
                }
                if !protocol.close_codes.contains(code) {
                    violate(
                        Invariant::AbnormalClose,
                        format!(
                            "server closed with {code}{}; expected one of {}",
                            if reason.is_empty() {
                                String::new()
                            } else {
                                format!(" ({})", quote(reason))
                            },
                            codes(protocol)
                        ),
                    );
                }
                if let Some(p) = matching(protocol, reason) {
                    violate(
                        Invariant::AcceptFirst,
                        format!("close reason {} matches {p:?}", quote(reason)),
                    );
                }
            }
            Seen::CloseAnswered { code } => {
                if let Some(code) = code
                    && !protocol.close_codes.contains(code)
                {
                    violate(
                        Invariant::AbnormalClose,
                        format!(
                            "server answered the client's close with {code}; expected one of {}",
                            codes(protocol)
                        ),
                    );
                }
            }
            Seen::Dropped { error } => {
                c.refused_from.get_or_insert(r.at_ms);
                violate(
                    Invariant::AbnormalClose,
                    format!("connection ended without a close frame: {error}"),
                );
            }
            Seen::Recv { text } => {
                let Ok(frame) = serde_json::from_str::<Value>(text) else {
                    if let Some(p) = matching(protocol, text) {
                        violate(
                            Invariant::AcceptFirst,
                            format!("text frame {} matches {p:?}", quote(text)),
                        );
                    }
                    continue;
                };
                if let Some(claimed) = field(&frame, &protocol.user_field)
                    && claimed != user
                {
                    violate(
                        Invariant::CrossUser,
                        format!("received {} addressed to user {claimed}", quote(text)),
                    );
                }
                let kind = field(&frame, &protocol.type_field).unwrap_or_default();
                let about = if kind == protocol.ack_type {
                    field(&frame, &protocol.id_field)
                } else if protocol.events.contains(&kind) {
                    field(&frame, &protocol.run_field)
                } else {
                    None
                };
                if let Some(id) = &about
                    && let Some(o) = owner.get(id.as_str())
                    && *o != user
                {
                    violate(
                        Invariant::CrossUser,
                        format!("received {} about {id}, a chat of user {o}", quote(text)),
                    );
                }
                if kind == protocol.error_type {
                    let message =
                        field(&frame, &protocol.message_field).unwrap_or_else(|| text.clone());
                    if let Some(p) = matching(protocol, &message) {
                        violate(
                            Invariant::AcceptFirst,
                            format!("error frame {} matches {p:?}", quote(&message)),
                        );
                    }
                } else if kind == protocol.ack_type
                    && let Some(id) = about
                {
                    c.acks.entry(id).or_insert((0, r.at_ms)).0 += 1;
                } else if let Some(i) = protocol.events.iter().position(|e| *e == kind)
                    && let Some(run) = about
                {
                    c.runs.entry(run).or_default().push((i, r.at_ms));
                }
            }
        }
    }

    for (user, c) in &conns {
        let mut violate = |invariant, at_ms: f64, detail: String| {
            out.push(Violation {
                invariant,
                user: user.to_string(),
                at_ms: millis(at_ms),
                detail,
            })
        };
        // Refused by the server, or abandoned by a client that closed early on purpose: either
        // way the client knows the chat was not answered, and why.
        let excused = |sent: f64| {
            [c.refused_from, c.abandoned_from]
                .into_iter()
                .flatten()
                .any(|at| at >= sent)
        };
        for (id, at) in &c.sends {
            match c.acks.get(*id) {
                Some((1, _)) => {}
                Some((n, first)) => violate(
                    Invariant::MessageLost,
                    *first,
                    format!("{id} acknowledged {n} times, expected exactly once"),
                ),
                None if excused(*at) => {}
                None => violate(
                    Invariant::MessageLost,
                    *at,
                    format!("{id} was never acknowledged, and the server did not refuse it"),
                ),
            }
        }
        // Every own chat that was acknowledged or produced events must have its whole run.
        let mut runs: IndexMap<&str, f64> = IndexMap::new();
        for (id, _) in &c.sends {
            if let Some((_, ack_at)) = c.acks.get(*id) {
                runs.insert(id, *ack_at);
            } else if let Some(events) = c.runs.get(*id) {
                runs.insert(id, events[0].1);
            }
        }
        let expected: Vec<usize> = (0..protocol.events.len()).collect();
        for (run, ack_at) in runs {
            let got: Vec<usize> = c
                .runs
                .get(run)
                .map(|e| e.iter().map(|(i, _)| *i).collect())
                .unwrap_or_default();
            if got == expected {
                continue;
            }
            let last = c
                .runs
                .get(run)
                .and_then(|e| e.last())
                .map_or(ack_at, |e| e.1);
            if expected.starts_with(&got) && excused(last) {
                continue;
            }
            let names: Vec<&str> = got.iter().map(|i| protocol.events[*i].as_str()).collect();
            violate(
                Invariant::EventOrder,
                last,
                format!(
                    "run {run} got [{}], expected [{}] in order",
                    names.join(", "),
                    protocol.events.join(", ")
                ),
            );
        }
    }
    out.sort_by(|a, b| {
        (a.at_ms, a.invariant, &a.user, &a.detail).cmp(&(b.at_ms, b.invariant, &b.user, &b.detail))
    });
    out
}

/// Why `records` prove nothing about the server, if they do not: every user the scenario
/// expects to be served (no `fail_at`) was refused, or closed before its first chat, or no chat
/// was ever answered. A verdict over such a run would be vacuous: a wrong `[protocol]` (the
/// credentials, the ack's fields) looks exactly like this, so the reason carries a hint.
pub fn inconclusive(scenario: &Scenario, records: &[Record]) -> Option<String> {
    let protocol = &scenario.protocol;
    let served: Vec<&str> = scenario
        .users
        .iter()
        .filter(|u| u.fail_at.is_none())
        .map(|u| u.id.as_str())
        .collect();
    if served.is_empty() {
        return None;
    }
    let scheduled: usize = scenario
        .users
        .iter()
        .filter(|u| u.fail_at.is_none())
        .map(|u| u.sends.len())
        .sum();
    let mine = |r: &&Record| served.contains(&r.user.as_str());
    let mut opened = 0;
    let mut sent = 0;
    let mut acked = 0;
    let mut unrecognised = 0;
    let mut endings: IndexMap<String, usize> = IndexMap::new();
    // Per user that sent: whether the server ended the connection (not with 1000) after it did.
    let mut refused_after_send: IndexMap<&str, bool> = IndexMap::new();
    for r in records.iter().filter(mine) {
        match &r.seen {
            Seen::Open => opened += 1,
            Seen::Send { .. } => {
                sent += 1;
                refused_after_send.insert(&r.user, false);
            }
            Seen::Refused { status, close_code } => {
                let code = close_code.map_or(String::new(), |c| format!(" (close code {c})"));
                *endings.entry(format!("HTTP {status}{code}")).or_default() += 1;
            }
            Seen::ServerClose { code, .. } => {
                *endings.entry(format!("close {code}")).or_default() += 1;
                if *code != 1000
                    && let Some(refused) = refused_after_send.get_mut(r.user.as_str())
                {
                    *refused = true;
                }
            }
            Seen::Dropped { .. } => {
                *endings.entry("dropped".into()).or_default() += 1;
                if let Some(refused) = refused_after_send.get_mut(r.user.as_str()) {
                    *refused = true;
                }
            }
            Seen::Recv { text } => {
                let kind = serde_json::from_str::<Value>(text)
                    .ok()
                    .and_then(|f| field(&f, &protocol.type_field));
                match kind {
                    Some(k) if k == protocol.ack_type => acked += 1,
                    Some(k)
                        if k == protocol.error_type
                            || k == protocol.push_type
                            || protocol.events.contains(&k) => {}
                    _ => unrecognised += 1,
                }
            }
            _ => {}
        }
    }
    let seen = if endings.is_empty() {
        String::new()
    } else {
        let list: Vec<String> = endings.iter().map(|(e, n)| format!("{e} ×{n}")).collect();
        format!(" (the server answered: {})", list.join(", "))
    };
    let auth_hint = "check the scenario's [protocol] credentials (`user_query`, `user_header`): \
                     a server that refuses them refuses everyone";
    if opened == 0 {
        return Some(format!("no connection opened{seen}; {auth_hint}"));
    }
    if scheduled > 0 && sent == 0 {
        return Some(format!(
            "the server ended every connection before its first chat{seen}; {auth_hint}"
        ));
    }
    // No chat answered proves nothing when the server spoke a language the scenario does not
    // describe (a wrong `[protocol]`), or refused every chat with a close. A server that took
    // the chats and stayed silent is different: that is loss, and `check` says so.
    let all_refused = !refused_after_send.is_empty() && refused_after_send.values().all(|r| *r);
    if sent > 0 && acked == 0 && (unrecognised > 0 || all_refused) {
        let why = if unrecognised > 0 {
            format!(
                "{unrecognised} frame(s) of a type the scenario's [protocol] does not name came \
                 instead; check its frame fields (`type_field`, `ack_type`, `id_field`)"
            )
        } else {
            format!("the server closed each connection instead{seen}")
        };
        return Some(format!("no chat was answered: {sent} sent, {why}"));
    }
    None
}

fn millis(at_ms: f64) -> u64 {
    // Records are non-negative and far below u64::MAX milliseconds.
    at_ms.max(0.0) as u64
}

/// A dotted path's value as text (strings as they are, numbers and booleans printed).
pub(crate) fn field(frame: &Value, path: &str) -> Option<String> {
    let mut v = frame;
    for key in path.split('.') {
        v = v.as_object()?.get(key)?;
    }
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        Value::Null | Value::Array(_) | Value::Object(_) => None,
    }
}

/// The first error pattern `text` contains, ignoring case.
fn matching<'p>(protocol: &'p Protocol, text: &str) -> Option<&'p str> {
    let text = text.to_lowercase();
    protocol
        .error_patterns
        .iter()
        .find(|p| text.contains(&p.to_lowercase()))
        .map(String::as_str)
}

fn codes(protocol: &Protocol) -> String {
    let codes: Vec<String> = protocol.close_codes.iter().map(u16::to_string).collect();
    codes.join(", ")
}

/// `text` in backquotes, cut to [`QUOTE_CHARS`] characters.
fn quote(text: &str) -> String {
    if text.chars().count() <= QUOTE_CHARS {
        format!("`{text}`")
    } else {
        let cut: String = text.chars().take(QUOTE_CHARS).collect();
        format!("`{cut}…`")
    }
}
