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
//! | `out-of-order` | an ack comes for a chat sent before one already acknowledged, or twice, or for a chat no client sent |
//! | `event-order` | an acknowledged chat's run events are missing or out of order, unless it was refused, or the connection's error end cut it short (indeterminate); run events match no chat (no such run, an unannounced run id, none) |
//! | `cross-user` | a frame names another user (each kind in its own user field), or another user's chat |
//! | `accept-first` | an error frame (or a close reason, or a non-JSON text frame) matches one of the error patterns |
//! | `abnormal-close` | the server closed with a code outside the expected set, dropped the connection without a close frame, or refused the upgrade |
//! | `stuck` | the timeout passed while the client still waited: for the handshake, the scheduled close, or the server's answer to the client's close |

use std::borrow::Cow;

use indexmap::IndexMap;
use racegate_replay::checker::{self, Judgement};
use racegate_replay::history::{Act, Got, History, read_frame};
use racegate_replay::scenario::{Scenario, User};
use racegate_replay::{Unmatched, Violation};

use crate::session::{Record, Seen};

/// Checks the client-observable invariants over one scenario's `records` (all users, by time).
/// Violations come sorted by time, then invariant, then user.
pub fn check(scenario: &Scenario, records: &[Record]) -> Vec<Violation> {
    judge(scenario, records).violations
}

/// [`check`], keeping the chats whose fate is unknowable apart.
pub fn judge(scenario: &Scenario, records: &[Record]) -> Judgement {
    Reading::new(scenario, records).judge()
}

/// The client history of `records` ([`Reading::history`]).
pub fn history<'a>(scenario: &'a Scenario, records: &'a [Record]) -> History<'a> {
    Reading::new(scenario, records).history()
}

/// How many of `records` are push frames ([`Reading::pushes`]).
pub fn pushes(scenario: &Scenario, records: &[Record]) -> usize {
    Reading::new(scenario, records).pushes()
}

/// Why `records` prove nothing about the server, if they do not ([`Reading::inconclusive`]).
pub fn inconclusive(scenario: &Scenario, records: &[Record]) -> Option<String> {
    Reading::new(scenario, records).inconclusive()
}

/// One text frame, read once: the type it claims, and what the checker makes of it.
struct Frame {
    kind: Option<String>,
    got: Got<'static>,
}

/// One scenario's records with every text frame read once with the scenario's `[protocol]`:
/// the history, the reasons a run is inconclusive and the push count all read the same frames.
pub struct Reading<'a> {
    scenario: &'a Scenario,
    records: &'a [Record],
    /// Per record: its frame, for a text frame.
    frames: Vec<Option<Frame>>,
    /// Each connection's label, with its `[[user]]`, in the scenario's order: records name
    /// connections.
    conns: Vec<(String, &'a User)>,
}

impl<'a> Reading<'a> {
    /// Reads `records` (all users, by time) with `scenario`'s `[protocol]`.
    pub fn new(scenario: &'a Scenario, records: &'a [Record]) -> Self {
        let frames = records
            .iter()
            .map(|r| match &r.seen {
                Seen::Recv { text } => {
                    let (kind, got) = read_frame(&scenario.protocol, text);
                    Some(Frame { kind, got })
                }
                _ => None,
            })
            .collect();
        let conns = scenario
            .connections()
            .into_iter()
            .map(|c| c.label)
            .zip(&scenario.users)
            .collect();
        Reading {
            scenario,
            records,
            frames,
            conns,
        }
    }

    /// The `[[user]]` of the connection labelled `conn`, if the scenario has one.
    fn user(&self, conn: &str) -> Option<&'a User> {
        self.conns.iter().find(|(c, _)| c == conn).map(|(_, u)| *u)
    }

    /// True when connection `conn` is one the scenario expects served (no `fail_at`).
    fn served(&self, conn: &str) -> bool {
        self.user(conn).is_some_and(|u| u.fail_at.is_none())
    }

    /// Every client-observable invariant over the history.
    pub fn judge(&self) -> Judgement {
        let history = self.history();
        let mut j = checker::check(&history);
        // An ack without the chat id field answers nothing; it is listed with the frames that
        // match no chat, so a wrong `id_field` shows as what it is.
        let protocol = &self.scenario.protocol;
        let mut steps: IndexMap<&str, usize> = IndexMap::new();
        for (r, frame) in self.records.iter().zip(&self.frames) {
            let step = steps.entry(r.user.as_str()).or_default();
            let pos = *step;
            *step += 1;
            if let Some(Frame {
                kind: Some(kind),
                got: Got::Other,
            }) = frame
                && *kind == protocol.ack_type
            {
                j.unmatched.push(Unmatched {
                    user: r.user.clone(),
                    at_ms: millis(r.at_ms),
                    op: pos,
                    frame: kind.clone(),
                    id: None,
                    reason: format!(
                        "an ack without the chat id field `{}`: check the [protocol]'s `id_field`",
                        protocol.id_field
                    ),
                });
            }
        }
        // By connection (in the history's order), then in history order.
        let order: Vec<&str> = history.conns.keys().map(|k| k.as_ref()).collect();
        j.unmatched.sort_by_key(|u| {
            (
                order
                    .iter()
                    .position(|c| *c == u.user)
                    .unwrap_or(usize::MAX),
                u.op,
            )
        });
        j
    }

    /// The client history: each record one step of its connection.
    pub fn history(&self) -> History<'a> {
        let scenario = self.scenario;
        let mut h = History::new(&scenario.protocol);
        // Every connection has a history, in the scenario's order, even one that recorded
        // nothing; a user's later connections are that user's.
        for (label, user) in &self.conns {
            if *label != user.id {
                h.set_user(Cow::Owned(label.clone()), Cow::Borrowed(user.id.as_str()));
            }
            h.conns.entry(Cow::Owned(label.clone())).or_default();
        }
        for (r, frame) in self.records.iter().zip(&self.frames) {
            let user = r.user.as_str();
            let scheduled = self.user(user).is_some_and(|u| u.close_ms.is_some());
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
                Seen::Recv { .. } => {
                    Act::Recv(frame.as_ref().map_or(Got::Other, |f| f.got.clone()))
                }
                Seen::RecvBinary { .. } => Act::Recv(Got::Other),
                Seen::ServerClose { code, reason } => Act::ServerClose {
                    code: *code,
                    reason: b(reason),
                },
                Seen::Dropped { error } => Act::Dropped { error: b(error) },
                Seen::ClientClose => Act::ClientClose { scheduled },
                Seen::ClientDrop => Act::ClientDrop,
                Seen::CloseAnswered { code } => Act::CloseAnswered { code: *code },
                Seen::Timeout { waiting_for } => Act::GaveUp {
                    detail: Cow::Owned(format!(
                        "still waiting for {waiting_for} when the timeout ended the probe"
                    )),
                },
                Seen::AppMisuse { op, error } => Act::Raised {
                    op: op.as_str(),
                    error: b(error),
                },
                Seen::AppRaised { error } => Act::AppRaised { error: b(error) },
                Seen::AppHandlerPending { name } => Act::HandlerPending { name: b(name) },
                Seen::AppTaskPending { name } => Act::TaskPending { name: b(name) },
            };
            h.push(user, millis(r.at_ms), act);
        }
        h
    }

    /// Why a run that broke no invariant still proves nothing: its served users sent chats and
    /// none was answered (each indeterminate, or refused). A server that answers nothing while
    /// its clients close on schedule must not pass; with a violation the run fails anyway.
    pub fn unanswered(&self, judgement: &Judgement) -> Option<String> {
        if !judgement.violations.is_empty() {
            return None;
        }
        let mut sent = 0;
        for (r, frame) in self.records.iter().zip(&self.frames) {
            if !self.served(&r.user) {
                continue;
            }
            match (&r.seen, frame) {
                (Seen::Send { .. }, _) => sent += 1,
                (
                    _,
                    Some(Frame {
                        got: Got::Ack { .. },
                        ..
                    }),
                ) => return None,
                _ => {}
            }
        }
        if sent == 0 {
            return None;
        }
        let indeterminate: Vec<&str> = judgement
            .indeterminate
            .iter()
            .map(|i| i.reason.as_str())
            .collect();
        let why = match indeterminate.first() {
            Some(first) => format!(
                "{} of them indeterminate ({first}): nothing says the server took any",
                indeterminate.len()
            ),
            None => "each refused".to_string(),
        };
        Some(format!("no chat was answered: {sent} sent, {why}"))
    }

    /// How many records are push frames (by the scenario's `push_type`).
    pub fn pushes(&self) -> usize {
        self.frames
            .iter()
            .flatten()
            .filter(|f| matches!(f.got, Got::Push { .. }))
            .count()
    }

    /// Why the records prove nothing about the server, if they do not: every user the scenario
    /// expects to be served (no `fail_at`) was refused, or closed before its first chat, or no chat
    /// was ever answered. A verdict over such a run would be vacuous: a wrong `[protocol]` (the
    /// credentials, the ack's fields) looks exactly like this, so the reason carries a hint.
    pub fn inconclusive(&self) -> Option<String> {
        let scenario = self.scenario;
        let records = self.records;
        let protocol = &scenario.protocol;
        let served: Vec<&str> = self
            .conns
            .iter()
            .filter(|(_, u)| u.fail_at.is_none())
            .map(|(c, _)| c.as_str())
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
        let mut acks_without_id = 0;
        let mut unrecognised = 0;
        let mut statuses: Vec<u16> = Vec::new();
        // Users whose client closed on its own schedule before it sent anything.
        let mut left_first: IndexMap<&str, bool> = IndexMap::new();
        let mut endings: IndexMap<String, usize> = IndexMap::new();
        // Per user that sent: whether the server ended the connection (not with 1000) after it did.
        let mut refused_after_send: IndexMap<&str, bool> = IndexMap::new();
        for (r, frame) in records.iter().zip(&self.frames) {
            if !mine(&r) {
                continue;
            }
            match &r.seen {
                Seen::Open => opened += 1,
                Seen::Send { .. } => {
                    sent += 1;
                    refused_after_send.insert(&r.user, false);
                    left_first.entry(&r.user).or_insert(false);
                }
                Seen::ClientClose | Seen::ClientDrop => {
                    left_first.entry(&r.user).or_insert(true);
                }
                Seen::Refused { status, close_code } => {
                    statuses.push(*status);
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
                Seen::Recv { .. } => {
                    let got = frame.as_ref().map(|f| &f.got);
                    match frame.as_ref().and_then(|f| f.kind.as_deref()) {
                        Some(k) if k == protocol.ack_type.as_str() => {
                            if matches!(got, Some(Got::Ack { .. })) {
                                acked += 1;
                            } else {
                                acks_without_id += 1;
                            }
                        }
                        Some(k)
                            if k == protocol.error_type.as_str()
                                || k == protocol.push_type.as_str()
                                || protocol.events.iter().any(|e| e == k) => {}
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
            // Every client left during its handshake on its own schedule, and the server had
            // answered none of them: the scenario asked for nothing to be exercised.
            if endings.is_empty() && served.iter().all(|c| left_first.get(c) == Some(&true)) {
                return Some(
                    "every client left during its handshake on its own schedule (`close_ms`, \
                     `drop_ms`) before the server opened its connection: nothing was exercised"
                        .into(),
                );
            }
            // Starlette answers an upgrade to a path no WebSocket route serves with 403 (a
            // route that closes before accept too), FastAPI's 404s likewise: the path first.
            if statuses.iter().any(|s| matches!(s, 403 | 404)) {
                return Some(format!(
                    "no connection opened{seen}; check the path (`--path`, or the URL's): a \
                     WebSocket route that is not there answers 403 or 404; then {auth_hint}"
                ));
            }
            return Some(format!("no connection opened{seen}; {auth_hint}"));
        }
        if scheduled > 0 && sent == 0 {
            if !left_first.is_empty() && left_first.values().all(|l| *l) {
                return Some(
                    "every client closed on its own schedule (`close_ms`) before its first chat \
                     was due: nothing was sent"
                        .into(),
                );
            }
            return Some(format!(
                "the server ended every connection before its first chat{seen}; {auth_hint}"
            ));
        }
        if sent > 0 && acked == 0 && acks_without_id > 0 {
            return Some(format!(
                "no chat was answered: {sent} sent, and {acks_without_id} frame(s) of type `{}` \
                 came without the chat id field `{}`; check the scenario's [protocol] `id_field`",
                protocol.ack_type, protocol.id_field
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
}

/// For each of `records`, the entry of `unmatched` that is its frame, if any: the history holds
/// one step per record, in record order per user, so a step's position names its record.
pub fn unmatched_marks<'u>(
    records: &[Record],
    unmatched: &'u [Unmatched],
) -> Vec<Option<&'u Unmatched>> {
    let mut steps: IndexMap<&str, usize> = IndexMap::new();
    records
        .iter()
        .map(|r| {
            let step = steps.entry(r.user.as_str()).or_default();
            let pos = *step;
            *step += 1;
            unmatched.iter().find(|u| u.op == pos && u.user == r.user)
        })
        .collect()
}

fn millis(at_ms: f64) -> u64 {
    // Records are non-negative and far below u64::MAX milliseconds.
    at_ms.max(0.0) as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scenario(toml: &str) -> Scenario {
        racegate_replay::scenario::parse(toml, "inline.toml".as_ref()).unwrap()
    }

    /// One user `u` with one chat; `v` with none, served too.
    fn one_chat() -> Scenario {
        scenario(
            r#"
            name = "one chat"
            [[user]]
            id = "u"
            [[user.send]]
            at_ms = 5
            text = "hi"
            "#,
        )
    }

    fn rec(at_ms: f64, user: &str, seen: Seen) -> Record {
        Record {
            at_ms,
            user: user.into(),
            seen,
        }
    }

    fn send(at: f64, user: &str) -> Record {
        rec(
            at,
            user,
            Seen::Send {
                id: format!("{user}/m1"),
            },
        )
    }

    fn close(at: f64, user: &str, code: u16) -> Record {
        rec(
            at,
            user,
            Seen::ServerClose {
                code,
                reason: String::new(),
            },
        )
    }

    fn recv(at: f64, user: &str, text: &str) -> Record {
        rec(at, user, Seen::Recv { text: text.into() })
    }

    #[test]
    fn a_scenario_whose_users_all_fail_setup_is_never_inconclusive() {
        let s = scenario(
            r#"
            name = "all fail"
            [[user]]
            id = "u"
            fail_at = "auth"
            "#,
        );
        assert_eq!(inconclusive(&s, &[]), None);
    }

    #[test]
    fn no_connection_opened_is_inconclusive_and_lists_what_the_server_answered() {
        let s = one_chat();
        let refused = |close_code| Seen::Refused {
            status: 403,
            close_code,
        };
        let records = [
            rec(0.0, "u", refused(None)),
            rec(1.0, "u", refused(None)),
            rec(2.0, "u", refused(Some(4001))),
        ];
        let why = inconclusive(&s, &records).unwrap();
        assert!(
            why.starts_with(
                "no connection opened (the server answered: HTTP 403 ×2, \
                 HTTP 403 (close code 4001) ×1); check the path (`--path`, or the URL's)"
            ),
            "{why}"
        );
        assert_eq!(
            inconclusive(&s, &[]).unwrap(),
            format!(
                "no connection opened; {}",
                "check the scenario's [protocol] credentials (`user_query`, `user_header`): \
                 a server that refuses them refuses everyone"
            )
        );
    }

    #[test]
    fn only_users_expected_to_be_served_count_towards_a_conclusive_run() {
        let s = scenario(
            r#"
            name = "one fails"
            [[user]]
            id = "bad"
            fail_at = "auth"
            [[user.send]]
            at_ms = 5
            text = "hi"
            [[user]]
            id = "u"
            "#,
        );
        // Only the user meant to fail opened: nothing about the served one is known.
        let records = [rec(0.0, "bad", Seen::Open)];
        assert!(
            inconclusive(&s, &records)
                .unwrap()
                .starts_with("no connection opened")
        );
        // The served user opened and had nothing to send: conclusive.
        assert_eq!(inconclusive(&s, &[rec(0.0, "u", Seen::Open)]), None);
    }

    #[test]
    fn a_server_that_ends_every_connection_before_its_first_chat_is_inconclusive() {
        let s = one_chat();
        let records = [rec(0.0, "u", Seen::Open), close(1.0, "u", 1008)];
        assert!(inconclusive(&s, &records).unwrap().starts_with(
            "the server ended every connection before its first chat \
                     (the server answered: close 1008 ×1)"
        ),);
    }

    #[test]
    fn chats_answered_only_in_frames_the_protocol_does_not_name_are_inconclusive() {
        let s = one_chat();
        let records = [
            rec(0.0, "u", Seen::Open),
            send(5.0, "u"),
            recv(6.0, "u", r#"{"type":"received","id":"u/m1"}"#),
            recv(7.0, "u", "plain text"),
        ];
        assert_eq!(
            inconclusive(&s, &records).unwrap(),
            "no chat was answered: 1 sent, 2 frame(s) of a type the scenario's [protocol] does \
             not name came instead; check its frame fields (`type_field`, `ack_type`, `id_field`)"
        );
    }

    #[test]
    fn a_served_user_with_nothing_to_send_is_conclusive_whatever_frames_it_gets() {
        let s = scenario(
            r#"
            name = "quiet"
            [[user]]
            id = "u"
            "#,
        );
        let records = [
            rec(0.0, "u", Seen::Open),
            recv(6.0, "u", r#"{"type":"welcome"}"#),
            // An ack without an id, with no chat sent: nothing was unanswered, so no
            // `id_field` hint either.
            recv(7.0, "u", r#"{"type":"ack","user":"u"}"#),
        ];
        assert_eq!(inconclusive(&s, &records), None);
    }

    #[test]
    fn error_push_and_event_frames_are_frames_the_protocol_names() {
        let s = one_chat();
        let records = [
            rec(0.0, "u", Seen::Open),
            send(5.0, "u"),
            recv(6.0, "u", r#"{"type":"error","message":"busy"}"#),
            recv(6.0, "u", r#"{"type":"push","id":"x"}"#),
            recv(6.0, "u", r#"{"type":"agent_started","run":"u/m1"}"#),
        ];
        // A server that took the chat and never acknowledged it: loss, for check to judge.
        assert_eq!(inconclusive(&s, &records), None);
    }

    #[test]
    fn a_server_that_closes_every_connection_after_its_chats_is_inconclusive() {
        let s = scenario(
            r#"
            name = "two users"
            [[user]]
            id = "u"
            [[user.send]]
            at_ms = 5
            text = "hi"
            [[user]]
            id = "v"
            [[user.send]]
            at_ms = 5
            text = "hi"
            "#,
        );
        let opened = |u| rec(0.0, u, Seen::Open);
        let dropped = rec(
            9.0,
            "v",
            Seen::Dropped {
                error: "reset".into(),
            },
        );
        let both = [
            opened("u"),
            opened("v"),
            send(5.0, "u"),
            send(5.0, "v"),
            close(8.0, "u", 1011),
            dropped.clone(),
        ];
        assert_eq!(
            inconclusive(&s, &both).unwrap(),
            "no chat was answered: 2 sent, the server closed each connection instead \
             (the server answered: close 1011 ×1, dropped ×1)"
        );
        // One connection the server left open (or closed normally): conclusive, a loss.
        let one = [
            opened("u"),
            opened("v"),
            send(5.0, "u"),
            send(5.0, "v"),
            close(8.0, "u", 1011),
        ];
        assert_eq!(inconclusive(&s, &one), None);
        let normal = [opened("u"), send(5.0, "u"), close(8.0, "u", 1000)];
        assert_eq!(inconclusive(&s, &normal), None);
        // A close before the chat refused nothing the client sent.
        let early = [opened("u"), close(1.0, "u", 1011), send(5.0, "u")];
        assert_eq!(inconclusive(&s, &early), None);
    }

    #[test]
    fn an_acknowledged_chat_makes_the_run_conclusive() {
        let s = one_chat();
        let records = [
            rec(0.0, "u", Seen::Open),
            send(5.0, "u"),
            recv(6.0, "u", r#"{"type":"ack","id":"u/m1","user":"u"}"#),
            close(8.0, "u", 1011),
        ];
        assert_eq!(inconclusive(&s, &records), None);
    }

    #[test]
    fn check_reports_the_violations_a_chat_never_answered_on_a_quiet_connection_shows() {
        let s = one_chat();
        let records = [
            rec(0.0, "u", Seen::Connect),
            rec(1.0, "u", Seen::Open),
            send(5.0, "u"),
            rec(9.0, "u", Seen::ClientClose),
            rec(9.5, "u", Seen::CloseAnswered { code: Some(1000) }),
        ];
        let violations = check(&s, &records);
        assert_eq!(violations.len(), 1, "{violations:?}");
        assert_eq!(
            violations[0].invariant,
            racegate_replay::Invariant::MessageLost
        );
        assert_eq!((violations[0].user.as_str(), violations[0].at_ms), ("u", 5));
        assert_eq!(violations, judge(&s, &records).violations);
    }

    #[test]
    fn records_become_the_shared_history_with_times_in_whole_milliseconds() {
        let s = scenario(
            r#"
            name = "closes"
            [[user]]
            id = "u"
            close_ms = 50
            [[user]]
            id = "v"
            "#,
        );
        let records = [
            rec(-0.5, "u", Seen::Connect),
            rec(1.9, "u", Seen::ClientClose),
            rec(
                2.0,
                "v",
                Seen::Timeout {
                    waiting_for: "the handshake".into(),
                },
            ),
            rec(3.0, "v", Seen::ClientClose),
        ];
        let h = history(&s, &records);
        let acts = |u: &str| -> Vec<(u64, Act<'_>)> {
            h.conns[u]
                .iter()
                .map(|o| (o.at_ms, o.act.clone()))
                .collect()
        };
        assert_eq!(
            acts("u"),
            [(0, Act::Connect), (1, Act::ClientClose { scheduled: true })]
        );
        assert_eq!(
            acts("v"),
            [
                (
                    2,
                    Act::GaveUp {
                        detail: Cow::Owned(
                            "still waiting for the handshake when the timeout ended the probe"
                                .into()
                        )
                    }
                ),
                (3, Act::ClientClose { scheduled: false }),
            ]
        );
    }

    /// Two served users with one chat each.
    fn two_chats() -> Scenario {
        scenario(
            r#"
            name = "two chats"
            [[user]]
            id = "u"
            [[user.send]]
            at_ms = 5
            text = "hi"
            [[user]]
            id = "v"
            [[user.send]]
            at_ms = 5
            text = "hi"
            "#,
        )
    }

    #[test]
    fn pushes_counts_the_push_frames_and_nothing_else() {
        let s = one_chat();
        let records = [
            rec(0.0, "u", Seen::Open),
            send(5.0, "u"),
            recv(6.0, "u", r#"{"type":"push","id":"p1"}"#),
            recv(6.5, "u", r#"{"type":"ack","id":"u/m1"}"#),
            recv(7.0, "u", r#"{"type":"push","id":"p2"}"#),
            recv(8.0, "u", r#"{"type":"error","message":"busy"}"#),
            recv(9.0, "u", r#"{"type":"push","id":"p3"}"#),
        ];
        assert_eq!(pushes(&s, &records), 3);
        assert_eq!(pushes(&s, &records[..2]), 0);
    }

    #[test]
    fn an_unmatched_frame_marks_exactly_its_own_record_whatever_the_other_users_did() {
        let s = two_chats();
        // v's stray ack is v's fourth step and u's stray ack u's fifth: the marks must count
        // each user's steps on their own, interleaved as they are here.
        let records = [
            rec(0.0, "u", Seen::Open),
            rec(0.5, "v", Seen::Open),
            send(5.0, "u"),
            send(5.0, "v"),
            recv(6.0, "u", r#"{"type":"ack","id":"u/m1"}"#),
            recv(6.0, "v", r#"{"type":"ack","id":"v/m1"}"#),
            recv(7.0, "v", r#"{"type":"ack","id":"nobody/m9"}"#),
            recv(8.0, "u", r#"{"type":"ack","id":"u/m1"}"#),
            recv(9.0, "u", r#"{"type":"ack","id":"ghost/m2"}"#),
        ];
        let unmatched = judge(&s, &records).unmatched;
        let stray: Vec<(&str, Option<&str>)> = unmatched
            .iter()
            .map(|u| (u.user.as_str(), u.id.as_deref()))
            .collect();
        assert_eq!(stray, [("u", Some("ghost/m2")), ("v", Some("nobody/m9"))]);
        let marks: Vec<Option<&str>> = unmatched_marks(&records, &unmatched)
            .into_iter()
            .map(|m| m.and_then(|u| u.id.as_deref()))
            .collect();
        let mut want = vec![None; records.len()];
        want[6] = Some("nobody/m9");
        want[8] = Some("ghost/m2");
        assert_eq!(marks, want);
    }

    /// `tab` twice (a reconnect), `v` once; each with one chat.
    fn reconnect() -> Scenario {
        scenario(
            r#"
            name = "reconnect"
            [[user]]
            id = "tab"
            close_ms = 100
            send = [{ at_ms = 5, text = "one" }]
            [[user]]
            id = "tab"
            connect_ms = 50
            drop_ms = 300
            send = [{ at_ms = 5, text = "two" }]
            [[user]]
            id = "v"
            "#,
        )
    }

    #[test]
    fn records_name_connections_and_a_users_later_connection_is_that_users() {
        let s = reconnect();
        let ack = |id: &str, user: &str| format!(r#"{{"type":"ack","id":"{id}","user":"{user}"}}"#);
        let records = [
            rec(0.0, "tab", Seen::Open),
            rec(
                5.0,
                "tab",
                Seen::Send {
                    id: "tab/m1".into(),
                },
            ),
            rec(50.0, "tab#2", Seen::Open),
            rec(
                55.0,
                "tab#2",
                Seen::Send {
                    id: "tab/m2".into(),
                },
            ),
            // The first chat's answer reaches the reconnect: the user's own.
            recv(60.0, "tab#2", &ack("tab/m1", "tab")),
            recv(61.0, "tab#2", &ack("tab/m2", "tab")),
            rec(100.0, "tab", Seen::ClientClose),
            rec(300.0, "tab#2", Seen::ClientDrop),
        ];
        let h = history(&s, &records);
        let labels: Vec<&str> = h.conns.keys().map(|k| k.as_ref()).collect();
        assert_eq!(labels, ["tab", "tab#2", "v"]);
        assert_eq!(h.user_of("tab#2"), "tab");
        assert_eq!(
            h.conns["tab#2"].last().map(|o| &o.act),
            Some(&Act::ClientDrop)
        );
        assert_eq!(
            h.conns["tab"].last().map(|o| &o.act),
            Some(&Act::ClientClose { scheduled: true }),
            "the first connection's close_ms is its own"
        );
        let j = judge(&s, &records);
        assert_eq!(j.violations, [], "{j:?}");
        // The same frame on `v`'s connection is another user's.
        let crossed = [
            rec(0.0, "tab", Seen::Open),
            rec(
                5.0,
                "tab",
                Seen::Send {
                    id: "tab/m1".into(),
                },
            ),
            rec(6.0, "v", Seen::Open),
            recv(7.0, "v", &ack("tab/m1", "tab")),
        ];
        let found: Vec<(racegate_replay::Invariant, String)> = check(&s, &crossed)
            .into_iter()
            .map(|v| (v.invariant, v.user))
            .collect();
        assert!(
            found.contains(&(racegate_replay::Invariant::CrossUser, "v".to_string())),
            "{found:?}"
        );
    }

    #[test]
    fn a_chat_cut_off_by_the_clients_own_drop_is_indeterminate_and_no_abnormal_close() {
        let s = reconnect();
        let records = [
            rec(50.0, "tab#2", Seen::Open),
            rec(
                55.0,
                "tab#2",
                Seen::Send {
                    id: "tab/m2".into(),
                },
            ),
            rec(300.0, "tab#2", Seen::ClientDrop),
        ];
        let j = judge(&s, &records);
        assert_eq!(j.violations, []);
        assert_eq!(j.indeterminate.len(), 1);
        assert_eq!(j.indeterminate[0].user, "tab#2");
    }

    #[test]
    fn clients_that_all_left_during_their_handshake_exercised_nothing() {
        let s = scenario(
            r#"
            name = "leavers"
            [[user]]
            id = "a"
            close_ms = 50
            [[user]]
            id = "a"
            drop_ms = 50
            "#,
        );
        let left = [
            rec(0.0, "a", Seen::Connect),
            rec(0.0, "a#2", Seen::Connect),
            rec(50.0, "a", Seen::ClientClose),
            rec(50.0, "a#2", Seen::ClientDrop),
        ];
        assert!(
            inconclusive(&s, &left)
                .unwrap()
                .starts_with("every client left during its handshake on its own schedule"),
        );
        // One of them never left: the server answered nothing to it.
        assert!(
            inconclusive(&s, &left[..3])
                .unwrap()
                .starts_with("no connection opened")
        );
        // The server refused one: that is an answer, and the usual hint follows.
        let refused = [
            left[0].clone(),
            left[2].clone(),
            rec(
                1.0,
                "a#2",
                Seen::Refused {
                    status: 403,
                    close_code: None,
                },
            ),
        ];
        assert!(
            inconclusive(&s, &refused)
                .unwrap()
                .starts_with("no connection opened (the server answered: HTTP 403")
        );
        assert_eq!(
            check(&s, &left),
            [],
            "leaving during the handshake is neither stuck nor a loss"
        );
    }

    /// `unanswered` over `records` of `s`, judged as probe judges them.
    fn unanswered_of(s: &Scenario, records: &[Record]) -> Option<String> {
        let reading = Reading::new(s, records);
        reading.unanswered(&reading.judge())
    }

    #[test]
    fn a_run_whose_chats_got_no_answer_proves_nothing_but_one_answer_or_one_violation_does() {
        let s = scenario(
            r#"
            name = "closes early"
            [[user]]
            id = "u"
            close_ms = 50
            [[user.send]]
            at_ms = 5
            text = "hi"
            [[user.send]]
            at_ms = 6
            text = "again"
            "#,
        );
        let base = vec![
            rec(0.0, "u", Seen::Open),
            send(5.0, "u"),
            rec(6.0, "u", Seen::Send { id: "u/m2".into() }),
            rec(50.0, "u", Seen::ClientClose),
        ];
        // Both chats indeterminate (the client's own close came first): nothing exercised.
        assert_eq!(
            unanswered_of(&s, &base).unwrap(),
            "no chat was answered: 2 sent, 2 of them indeterminate (the client closed on \
             schedule before the answer came): nothing says the server took any"
        );
        // One ack is an answer.
        let mut answered = base.clone();
        answered.insert(
            3,
            recv(7.0, "u", r#"{"type":"ack","id":"u/m1","user":"u"}"#),
        );
        assert_eq!(unanswered_of(&s, &answered), None);
        // A violation already fails the run.
        let mut stray = base.clone();
        stray.insert(
            3,
            recv(7.0, "u", r#"{"type":"ack","id":"nobody/m9","user":"u"}"#),
        );
        assert_eq!(unanswered_of(&s, &stray), None);
        // Nothing sent: nothing to prove here (inconclusive says the rest).
        assert_eq!(unanswered_of(&s, &base[..1]), None);
        // Every chat refused visibly.
        let refused = vec![
            rec(0.0, "u", Seen::Open),
            send(5.0, "u"),
            recv(6.0, "u", r#"{"type":"error","id":"u/m1","message":"no"}"#),
        ];
        assert_eq!(
            unanswered_of(&s, &refused).unwrap(),
            "no chat was answered: 1 sent, each refused"
        );
    }

    #[test]
    fn only_the_served_users_chats_count_towards_an_answered_run() {
        let s = scenario(
            r#"
            name = "one fails"
            [[user]]
            id = "bad"
            fail_at = "auth"
            close_ms = 50
            [[user.send]]
            at_ms = 5
            text = "hi"
            [[user]]
            id = "u"
            close_ms = 50
            "#,
        );
        // The failing user's chat, unanswered: not the served users' business.
        let records = [
            rec(0.0, "bad", Seen::Open),
            rec(
                5.0,
                "bad",
                Seen::Send {
                    id: "bad/m1".into(),
                },
            ),
            rec(50.0, "bad", Seen::ClientClose),
            rec(0.0, "u", Seen::Open),
        ];
        assert_eq!(unanswered_of(&s, &records), None);
    }

    #[test]
    fn inconclusive_runs_name_their_likely_cause() {
        let s = one_chat();
        let refused = [rec(
            0.0,
            "u",
            Seen::Refused {
                status: 404,
                close_code: None,
            },
        )];
        assert!(
            inconclusive(&s, &refused)
                .unwrap()
                .contains("check the path")
        );
        let forbidden = [rec(
            0.0,
            "u",
            Seen::Refused {
                status: 401,
                close_code: None,
            },
        )];
        assert!(
            !inconclusive(&s, &forbidden)
                .unwrap()
                .contains("check the path")
        );
        let left = [rec(0.0, "u", Seen::Open), rec(1.0, "u", Seen::ClientClose)];
        assert_eq!(
            inconclusive(&s, &left).unwrap(),
            "every client closed on its own schedule (`close_ms`) before its first chat was \
             due: nothing was sent"
        );
        let no_id = [
            rec(0.0, "u", Seen::Open),
            send(5.0, "u"),
            recv(6.0, "u", r#"{"type":"ack","msg":"u/m1"}"#),
        ];
        let why = inconclusive(&s, &no_id).unwrap();
        assert!(
            why.contains("1 frame(s) of type `ack` came without the chat id field `id`"),
            "{why}"
        );
        // And the frame is listed with those that match no chat, marked at its record.
        let unmatched = judge(&s, &no_id).unmatched;
        assert_eq!(unmatched.len(), 1, "{unmatched:?}");
        assert_eq!((unmatched[0].op, unmatched[0].id.as_deref()), (2, None));
        assert!(unmatched[0].reason.contains("`id_field`"));
    }
}
