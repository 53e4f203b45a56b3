//! The oracle: a pure function from a recorded trace to the invariants it violates.
//!
//! It knows nothing about endpoints. It reads what clients sent and saw, what the notifier
//! issued, and what the server recorded about its lifecycle, and names each broken rule with the
//! user and the virtual time where it broke. An empty list is a pass.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use indexmap::IndexMap;
use serde::Serialize;

use crate::trace::{AgentEvent, EventKind, Frame, TraceEvent};

/// A rule a connection lifecycle must keep. The names are the ones every output uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Invariant {
    /// The transport was used before accept or after close (Starlette raised).
    AcceptFirst,
    /// A chat or push was neither delivered nor explicitly rejected. A chat still in flight,
    /// unread, when the server closed with an error code counts as refused by that close.
    MessageLost,
    /// Chats were acknowledged, or pushes delivered, out of the order they were sent (or twice).
    OutOfOrder,
    /// A chat was handled before its connection reached `ProcessingReady`.
    BeforeReady,
    /// A client received a frame meant for, or produced for, another user.
    CrossUser,
    /// An acknowledged chat's five agent events were out of order, or missing without the
    /// server rejecting the rest.
    EventOrder,
    /// A connection that ended before ready left a registration or an unrun cleanup behind.
    Leak,
    /// A connection reached no terminal state by the end of the run, or a client's connection
    /// never opened and was never refused (the server never served it).
    Stuck,
    /// The server closed with a code outside the expected set. Only `racegate probe` reports it
    /// (a live server's close codes are all a client sees of its failures); [`check`] never does.
    AbnormalClose,
}

impl Invariant {
    /// Every invariant.
    pub const ALL: [Invariant; 9] = [
        Invariant::AcceptFirst,
        Invariant::MessageLost,
        Invariant::OutOfOrder,
        Invariant::BeforeReady,
        Invariant::CrossUser,
        Invariant::EventOrder,
        Invariant::Leak,
        Invariant::Stuck,
        Invariant::AbnormalClose,
    ];

    /// The kebab-case name.
    pub const fn name(self) -> &'static str {
        match self {
            Invariant::AcceptFirst => "accept-first",
            Invariant::MessageLost => "message-lost",
            Invariant::OutOfOrder => "out-of-order",
            Invariant::BeforeReady => "before-ready",
            Invariant::CrossUser => "cross-user",
            Invariant::EventOrder => "event-order",
            Invariant::Leak => "leak",
            Invariant::Stuck => "stuck",
            Invariant::AbnormalClose => "abnormal-close",
        }
    }
}

/// A name that is no invariant's.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown invariant `{0}`; expected one of {names}", names = Invariant::ALL.map(Invariant::name).join(", "))]
pub struct UnknownInvariant(pub String);

impl std::str::FromStr for Invariant {
    type Err = UnknownInvariant;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Invariant::ALL
            .into_iter()
            .find(|i| i.name() == s)
            .ok_or_else(|| UnknownInvariant(s.to_string()))
    }
}

impl fmt::Display for Invariant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// One broken rule, where and when.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Violation {
    /// Which rule.
    pub invariant: Invariant,
    /// Whose connection.
    pub user: String,
    /// Virtual milliseconds since the run began.
    pub at_ms: u64,
    /// What happened, in words.
    pub detail: String,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} user={} at {} ms: {}",
            self.invariant, self.user, self.at_ms, self.detail
        )
    }
}

/// What the oracle tracks for one user's connection and client.
#[derive(Default)]
struct Conn {
    server_seen: bool,
    state: &'static str,
    ready_reached: bool,
    terminal: Option<&'static str>,
    registered: bool,
    cleanups: IndexMap<&'static str, (u64, usize)>,
    sends: Vec<(String, u64)>,
    unsent: Vec<(String, u64, String)>,
    pushes: Vec<(String, u64)>,
    acks: Vec<(String, u64)>,
    pushes_received: Vec<(String, u64)>,
    runs: IndexMap<String, Vec<(AgentEvent, u64)>>,
    rejected: BTreeSet<String>,
    /// Pushes "rejected" while the connection was still on its way: not a real rejection.
    rejected_early: BTreeMap<String, String>,
    /// The connection had ended (either side closed, or the server reached closed or failed).
    ended: bool,
    /// When the client sent the upgrade.
    connect_ms: Option<u64>,
    dropped: BTreeMap<String, String>,
    /// When the client saw the server close, and the code.
    server_close: Option<(u64, u16)>,
    last_ms: u64,
}

/// Checks every invariant over `trace`. Violations come sorted by time, then invariant, then user.
pub fn check(trace: &[TraceEvent]) -> Vec<Violation> {
    let mut out = Vec::new();
    let mut conns: IndexMap<&str, Conn> = IndexMap::new();
    // Which user sent each chat or was issued each push: "for another user" means this.
    let mut owner: BTreeMap<&str, &str> = BTreeMap::new();
    let end_ms = trace.last().map_or(0, |e| e.at_ms);

    for ev in trace {
        let user = ev.user.as_str();
        let at = ev.at_ms;
        let c = conns.entry(user).or_default();
        c.last_ms = at;
        let mut violate = |invariant, detail: String| {
            out.push(Violation {
                invariant,
                user: user.to_string(),
                at_ms: at,
                detail,
            })
        };
        match &ev.kind {
            EventKind::ClientConnect => c.connect_ms = Some(at),
            EventKind::ClientOpen | EventKind::ServerClose { .. } => {}
            EventKind::ClientClose => c.ended = true,
            EventKind::ClientGaveUp => violate(
                Invariant::Stuck,
                "the connection never opened and was never refused".into(),
            ),
            EventKind::ClientClosed { code } => {
                c.ended = true;
                if c.server_close.is_none() {
                    c.server_close = Some((at, *code));
                }
            }
            // A refused upgrade: nothing was sent on it, and the runner records the chats it
            // refused as rejected.
            EventKind::ClientRefused { .. } => c.ended = true,
            EventKind::ClientSend { id } => {
                owner.insert(id, user);
                c.sends.push((id.clone(), at));
            }
            EventKind::ClientUnsent { id, reason } => {
                owner.insert(id, user);
                c.unsent.push((id.clone(), at, reason.clone()));
            }
            EventKind::PushIssued { id } => {
                owner.insert(id, user);
                c.pushes.push((id.clone(), at));
            }
            EventKind::ClientRecv { frame } => {
                if let Some(claimed) = frame.user()
                    && claimed != user
                {
                    violate(
                        Invariant::CrossUser,
                        format!("client received `{frame}` addressed to user {claimed}"),
                    );
                }
                let about = match frame {
                    Frame::Ack { id, .. } | Frame::Push { id, .. } => Some(id.as_str()),
                    Frame::Event { run, .. } => Some(run.as_str()),
                    Frame::Ping | Frame::Error { .. } => None,
                };
                if let Some(id) = about {
                    match owner.get(id) {
                        Some(o) if *o != user => violate(
                            Invariant::CrossUser,
                            format!("client received `{frame}` produced for user {o}'s {id}"),
                        ),
                        _ => {}
                    }
                }
                match frame {
                    Frame::Ack { id, .. } => c.acks.push((id.clone(), at)),
                    Frame::Push { id, .. } => c.pushes_received.push((id.clone(), at)),
                    Frame::Event { kind, run, .. } => {
                        c.runs.entry(run.clone()).or_default().push((*kind, at))
                    }
                    Frame::Ping | Frame::Error { .. } => {}
                }
            }
            EventKind::State { state } => {
                c.server_seen = true;
                c.state = state;
                if matches!(*state, "closed" | "failed") {
                    c.ended = true;
                }
                if *state == "processing_ready" {
                    c.ready_reached = true;
                }
            }
            EventKind::Handled { id, .. } => {
                if c.state != "processing_ready" {
                    let state = if c.state.is_empty() {
                        "unknown"
                    } else {
                        c.state
                    };
                    violate(
                        Invariant::BeforeReady,
                        format!("{id} handled while the connection was {state}"),
                    );
                }
            }
            EventKind::Rejected { id, reason } => {
                // A push can only be refused by a connection that is over, or one the server
                // cannot know of yet (the push crossed the upgrade: no later than the connect's
                // instant, before the server recorded anything). One refused while its user's
                // connection is still opening was never given a chance to arrive.
                let push = c.pushes.iter().any(|(p, _)| p == id);
                let crossed_upgrade = !c.server_seen && c.connect_ms.is_none_or(|t| at <= t);
                if push && !c.ended && !crossed_upgrade {
                    c.rejected_early.insert(id.clone(), reason.clone());
                } else {
                    c.rejected.insert(id.clone());
                }
            }
            EventKind::Dropped { id, reason } => {
                c.dropped
                    .entry(id.clone())
                    .or_insert_with(|| reason.clone());
            }
            EventKind::TransportError { op, error } => {
                violate(Invariant::AcceptFirst, format!("{op}: {error}"));
            }
            EventKind::Registered => c.registered = true,
            EventKind::Unregistered => c.registered = false,
            EventKind::CleanupRegistered { name } => {
                c.cleanups.entry(name).or_insert((at, 0));
            }
            EventKind::CleanupRan { name } => {
                c.cleanups.entry(name).or_insert((at, 0)).1 += 1;
            }
            EventKind::Terminal { state } => {
                c.ended = true;
                if c.terminal.is_none() {
                    c.terminal = Some(state);
                }
            }
        }
    }

    for (user, c) in &conns {
        let mut violate = |invariant, at_ms, detail: String| {
            out.push(Violation {
                invariant,
                user: user.to_string(),
                at_ms,
                detail,
            })
        };
        let lost_detail = |id: &str| match (c.dropped.get(id), c.rejected_early.get(id)) {
            (Some(reason), _) => format!("{id} dropped: {reason}"),
            (None, Some(reason)) => {
                format!("{id} refused while the connection was still opening: {reason}")
            }
            (None, None) => format!("{id} was never delivered and never rejected"),
        };

        // message-lost
        let acked: BTreeSet<&str> = c.acks.iter().map(|(id, _)| id.as_str()).collect();
        for (id, at) in &c.sends {
            // A chat still in flight when the server closed with an error code, and never read
            // by it, was refused by that close: the client knows it was not acknowledged. One
            // the server read and then dropped is lost whatever came after.
            // A dropped connection (1006: no close frame; the application ended or crashed)
            // refuses nothing: only a close the server chose says "not this one".
            let refused_by_close = c
                .server_close
                .is_some_and(|(closed, code)| !matches!(code, 1000 | 1005 | 1006) && closed >= *at)
                && !c.dropped.contains_key(id);
            if !acked.contains(id.as_str()) && !c.rejected.contains(id) && !refused_by_close {
                violate(Invariant::MessageLost, *at, lost_detail(id));
            }
        }
        for (id, at, reason) in &c.unsent {
            violate(
                Invariant::MessageLost,
                *at,
                format!("{id} never sent: {reason}"),
            );
        }
        let pushed: BTreeSet<&str> = c
            .pushes_received
            .iter()
            .map(|(id, _)| id.as_str())
            .collect();
        for (id, at) in &c.pushes {
            if !pushed.contains(id.as_str()) && !c.rejected.contains(id) {
                violate(Invariant::MessageLost, *at, lost_detail(id));
            }
        }

        // out-of-order (and duplicates)
        for (what, sent, got) in [
            ("ack", &c.sends, &c.acks),
            ("push", &c.pushes, &c.pushes_received),
        ] {
            let index: BTreeMap<&str, usize> = sent
                .iter()
                .enumerate()
                .map(|(i, (id, _))| (id.as_str(), i))
                .collect();
            let mut last: Option<(usize, &str)> = None;
            let mut seen = BTreeSet::new();
            for (id, at) in got.iter() {
                let Some(&i) = index.get(id.as_str()) else {
                    continue; // another user's: cross-user already said so
                };
                if !seen.insert(i) {
                    violate(
                        Invariant::OutOfOrder,
                        *at,
                        format!("{what} {id} received twice"),
                    );
                    continue;
                }
                if let Some((prev, prev_id)) = last
                    && i < prev
                {
                    violate(
                        Invariant::OutOfOrder,
                        *at,
                        format!("{what} {id} received after {prev_id}, but was sent before it"),
                    );
                }
                if last.is_none_or(|(p, _)| i > p) {
                    last = Some((i, id.as_str()));
                }
            }
        }

        // event-order: every own run that was acknowledged or produced events
        let own: BTreeSet<&str> = c.sends.iter().map(|(id, _)| id.as_str()).collect();
        let mut runs: IndexMap<&str, u64> = IndexMap::new();
        for (id, at) in &c.acks {
            if own.contains(id.as_str()) {
                runs.entry(id.as_str()).or_insert(*at);
            }
        }
        for (run, events) in &c.runs {
            if own.contains(run.as_str()) {
                runs.entry(run.as_str()).or_insert(events[0].1);
            }
        }
        for (run, at) in runs {
            let got: Vec<AgentEvent> = c
                .runs
                .get(run)
                .map(|events| events.iter().map(|(k, _)| *k).collect())
                .unwrap_or_default();
            // A run cut short is fine only when the server said so: the events it got are the
            // run's first ones, in order, and the rest were rejected (the connection ended).
            let cut_short_visibly = AgentEvent::RUN.starts_with(&got) && c.rejected.contains(run);
            if got != AgentEvent::RUN && !cut_short_visibly {
                let at = c.runs.get(run).and_then(|e| e.last()).map_or(at, |e| e.1);
                let names: Vec<&str> = got.iter().map(|k| k.name()).collect();
                violate(
                    Invariant::EventOrder,
                    at,
                    format!(
                        "run {run} got [{}], expected the five events in order",
                        names.join(", ")
                    ),
                );
            }
        }

        // leak and stuck: about the server side of the connection
        if !c.server_seen {
            continue;
        }
        match c.terminal {
            None => violate(
                Invariant::Stuck,
                end_ms,
                format!(
                    "connection still {} when the run ended",
                    if c.state.is_empty() {
                        "unknown"
                    } else {
                        c.state
                    }
                ),
            ),
            Some(_) if !c.ready_reached => {
                if c.registered {
                    violate(
                        Invariant::Leak,
                        c.last_ms,
                        "ended before ready but is still registered with the connection manager"
                            .into(),
                    );
                }
                for (name, (at, ran)) in &c.cleanups {
                    match ran {
                        0 => violate(
                            Invariant::Leak,
                            *at,
                            format!("ended before ready but its `{name}` cleanup never ran"),
                        ),
                        1 => {}
                        n => violate(
                            Invariant::Leak,
                            *at,
                            format!("cleanup `{name}` ran {n} times, expected once"),
                        ),
                    }
                }
            }
            Some(_) => {}
        }
    }

    out.sort_by(|a, b| {
        (a.at_ms, a.invariant, &a.user, &a.detail).cmp(&(b.at_ms, b.invariant, &b.user, &b.detail))
    });
    out
}
