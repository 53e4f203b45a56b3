//! The probe's records as the shared client [`History`], judged by the shared
//! [`checker`](racegate_replay::checker): the same rules as the replay's and `load`'s, written
//! once in `docs/invariants.md`. Text frames are read with the scenario's `[protocol]` (its ack,
//! event, push and error types; id, run and user fields; events by position in
//! `protocol.events`). A probe has no server trace, so a chat whose answer an error close (or
//! the client's own scheduled close) cut off is indeterminate, reported apart.
//!
//! | invariant | violated when |
//! | --- | --- |
//! | `message-lost` | a chat is neither acknowledged nor refused by an error frame naming it, and the connection did not end with an error (close other than 1000, drop) or the client's own early close (`close_ms`) after it (those make it indeterminate); or it was never sent because the connection never opened |
//! | `out-of-order` | an ack comes for a chat sent before one already acknowledged, or twice |
//! | `event-order` | an acknowledged chat's run events are missing or out of order, unless it was refused, or the connection's error end cut it short (indeterminate) |
//! | `cross-user` | a frame names another user, or another user's chat |
//! | `accept-first` | an error frame (or a close reason, or a non-JSON text frame) matches one of the error patterns |
//! | `abnormal-close` | the server closed with a code outside the expected set, dropped the connection without a close frame, or refused the upgrade |
//! | `stuck` | the timeout passed while the client still waited: for the handshake, the scheduled close, or the server's answer to the client's close |

use std::borrow::Cow;

use indexmap::IndexMap;
use racegate_replay::Violation;
use racegate_replay::checker::{self, Judgement};
use racegate_replay::history::{Act, Got, History, parse_frame};
use racegate_replay::scenario::Scenario;
use serde_json::Value;

use crate::session::{Record, Seen};

/// Checks the client-observable invariants over one scenario's `records` (all users, by time).
/// Violations come sorted by time, then invariant, then user.
pub fn check(scenario: &Scenario, records: &[Record]) -> Vec<Violation> {
    judge(scenario, records).violations
}

/// [`check`], keeping the chats whose fate is unknowable apart.
pub fn judge(scenario: &Scenario, records: &[Record]) -> Judgement {
    checker::check(&history(scenario, records))
}

/// The client history of `records`: each record one step of its user's connection, each text
/// frame parsed with the scenario's `[protocol]`.
pub fn history<'a>(scenario: &'a Scenario, records: &'a [Record]) -> History<'a> {
    let protocol = &scenario.protocol;
    let mut h = History::new(protocol);
    // Every user has a connection, in the scenario's order, even one that recorded nothing.
    for user in &scenario.users {
        h.conns.entry(Cow::Borrowed(user.id.as_str())).or_default();
    }
    for r in records {
        let user = r.user.as_str();
        let scheduled = scenario
            .users
            .iter()
            .any(|u| u.id == user && u.close_ms.is_some());
        let b = |s: &'a String| Cow::Borrowed(s.as_str());
        let act = match &r.seen {
            Seen::Connect => Act::Connect,
            Seen::Open => Act::Open,
            Seen::Refused { status, close_code } => Act::UpgradeRefused {
                status: *status,
                code: *close_code,
            },
            Seen::Send { id } => Act::Send { id: b(id) },
            Seen::Unsent { id, reason } => Act::Unsent {
                id: b(id),
                reason: b(reason),
            },
            Seen::Recv { text } => Act::Recv(parse_frame(protocol, text)),
            Seen::RecvBinary { .. } => Act::Recv(Got::Other),
            Seen::ServerClose { code, reason } => Act::ServerClose {
                code: *code,
                reason: b(reason),
            },
            Seen::Dropped { error } => Act::Dropped { error: b(error) },
            Seen::ClientClose => Act::ClientClose { scheduled },
            Seen::CloseAnswered { code } => Act::CloseAnswered { code: *code },
            Seen::Timeout { waiting_for } => Act::GaveUp {
                detail: Cow::Owned(format!(
                    "still waiting for {waiting_for} when the timeout ended the probe"
                )),
            },
        };
        h.push(user, millis(r.at_ms), act);
    }
    h
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
    racegate_replay::history::field(frame, path)
}
