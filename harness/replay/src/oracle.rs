//! The oracle: a pure function from a recorded trace to the invariants it violates.
//!
//! It knows nothing about endpoints. The client-observable invariants are the
//! [`checker`](crate::checker)'s, over the trace's client [`History`] (the same rules `probe`
//! and `load` use); the server-side ones (`before-ready`, `leak`, the server's half of `stuck`)
//! need what the server recorded about its lifecycle, and are here. Each broken rule is named
//! with the user and the virtual time where it broke. An empty list is a pass. The rules are
//! written once, in `docs/invariants.md`.

use indexmap::IndexMap;
use racegate_core::ConnectionState;

use crate::checker::{self, Judgement};
use crate::history::History;
use crate::invariant::{Invariant, Violation};
use crate::trace::{EventKind, TraceEvent};

/// What the oracle tracks about the server's side of one connection.
#[derive(Default)]
struct ServerConn {
    server_seen: bool,
    /// The last state the server recorded (`None`: none yet).
    state: Option<ConnectionState>,
    ready_reached: bool,
    terminal: Option<ConnectionState>,
    registered: bool,
    cleanups: IndexMap<&'static str, (u64, usize)>,
}

/// Checks every invariant over `trace`: the client-observable ones with the
/// [`checker`](crate::checker) over the trace's [`History`], the server-side ones here.
/// Violations come sorted by time, then invariant, then user.
pub fn check(trace: &[TraceEvent]) -> Vec<Violation> {
    judge(trace, &|_| false, &[]).violations
}

/// [`check`], keeping the chats whose fate is unknowable apart; `scheduled` says which
/// connections' closes the scenario asked for (`close_ms`), `relabelled` which user each
/// connection whose label is not a user id belongs to
/// ([`Scenario::relabelled`](crate::scenario::Scenario::relabelled)).
pub fn judge(
    trace: &[TraceEvent],
    scheduled: &dyn Fn(&str) -> bool,
    relabelled: &[(String, String)],
) -> Judgement {
    let mut history = History::from_trace(trace, scheduled);
    for (conn, user) in relabelled {
        history.set_user(conn.as_str(), user.as_str());
    }
    let mut j = checker::check(&history);
    server_side(trace, &mut j.violations);
    checker::sort(&mut j.violations);
    j
}

/// The invariants only the server's trace can show: `before-ready`, `leak`, and `stuck` for a
/// connection that reached no terminal state by the end of the run.
fn server_side(trace: &[TraceEvent], out: &mut Vec<Violation>) {
    let mut conns: IndexMap<&str, ServerConn> = IndexMap::new();
    let end_ms = trace.last().map_or(0, |e| e.at_ms);
    for ev in trace {
        // Only what the server recorded about its lifecycle matters here.
        if !matches!(
            ev.kind,
            EventKind::State { .. }
                | EventKind::Handled { .. }
                | EventKind::Registered
                | EventKind::Unregistered
                | EventKind::CleanupRegistered { .. }
                | EventKind::CleanupRan { .. }
                | EventKind::Terminal { .. }
        ) {
            continue;
        }
        let user = &*ev.user;
        let at = ev.at_ms;
        // A handful of users: comparing names beats hashing every event's.
        let found = if conns.len() <= 8 {
            conns.keys().position(|k| *k == user)
        } else {
            conns.get_index_of(user)
        };
        let i = match found {
            Some(i) => i,
            None => conns.insert_full(user, ServerConn::default()).0,
        };
        let c = &mut conns[i];
        match &ev.kind {
            EventKind::State { state } => {
                c.server_seen = true;
                c.state = Some(*state);
                if state.is_ready() {
                    c.ready_reached = true;
                }
            }
            EventKind::Handled { id, .. } if !c.state.is_some_and(ConnectionState::is_ready) => {
                let state = c.state.map_or("unknown", ConnectionState::name);
                out.push(Violation {
                    invariant: Invariant::BeforeReady,
                    user: user.to_string(),
                    at_ms: at,
                    detail: format!("{id} handled while the connection was {state}"),
                });
            }
            EventKind::Registered => c.registered = true,
            EventKind::Unregistered => c.registered = false,
            EventKind::CleanupRegistered { name } => {
                c.cleanups.entry(name).or_insert((at, 0));
            }
            EventKind::CleanupRan { name } => {
                c.cleanups.entry(name).or_insert((at, 0)).1 += 1;
            }
            EventKind::Terminal { state } if c.terminal.is_none() => c.terminal = Some(*state),
            _ => {}
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
        if !c.server_seen {
            continue;
        }
        match c.terminal {
            None => violate(
                Invariant::Stuck,
                end_ms,
                format!(
                    "connection still {} when the run ended",
                    c.state.map_or("unknown", ConnectionState::name)
                ),
            ),
            Some(_) if !c.ready_reached => {
                if c.registered {
                    // When the user's part of the run ended: its last event of any kind.
                    let last_ms = trace
                        .iter()
                        .rev()
                        .find(|e| &*e.user == *user)
                        .map_or(0, |e| e.at_ms);
                    violate(
                        Invariant::Leak,
                        last_ms,
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
}
