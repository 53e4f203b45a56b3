//! One run as a Mermaid `sequenceDiagram`, to paste into a pull request or an issue.
//!
//! Each user has two participants, its client and its server-side connection, and the notifier
//! is one more. Every trace event becomes exactly one arrow, in trace order, its text prefixed
//! with the virtual time; each violation follows the event it happened at as a note over that
//! user's pair. GitHub renders the block inline, so a reviewer sees the race without running
//! anything.

use std::fmt::Write as _;

use indexmap::IndexMap;

use crate::runner::RunOutcome;
use crate::trace::{EventKind, Frame};

/// Makes `s` safe as Mermaid message or note text: `#` starts an entity and `;` ends a
/// statement, so both become entity codes, as do `<` and `>` (Mermaid renders labels as HTML);
/// line breaks become spaces.
fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '#' => out.push_str("#35;"),
            ';' => out.push_str("#59;"),
            '<' => out.push_str("#lt;"),
            '>' => out.push_str("#gt;"),
            '\n' | '\r' => out.push(' '),
            c => out.push(c),
        }
    }
    out
}

/// Renders `outcome` as a Mermaid sequence diagram (a fenced block's content, no fence).
pub fn mermaid(outcome: &RunOutcome) -> String {
    let mut users: IndexMap<&str, usize> = IndexMap::new();
    for e in &outcome.trace {
        let n = users.len();
        users.entry(&*e.user).or_insert(n + 1);
    }
    for v in &outcome.violations {
        let n = users.len();
        users.entry(v.user.as_str()).or_insert(n + 1);
    }
    let mut out = String::from("sequenceDiagram\n");
    let _ = writeln!(
        out,
        "    title {} [{}]: {}",
        escape(&outcome.scenario),
        outcome.endpoint,
        outcome.verdict
    );
    for (user, n) in &users {
        let _ = writeln!(out, "    participant C{n} as client {}", escape(user));
        let _ = writeln!(out, "    participant S{n} as server {}", escape(user));
    }
    out.push_str("    participant N as notifier\n");

    let notifier_id = "N".to_string();
    let mut pending = outcome.violations.iter().peekable();
    for (i, e) in outcome.trace.iter().enumerate() {
        let n = users.get(&*e.user).copied().unwrap_or(0);
        let (c, s) = (format!("C{n}"), format!("S{n}"));
        let (from, arrow, to, what) = match &e.kind {
            EventKind::ClientConnect => (&c, "->>", &s, "upgrade".to_string()),
            EventKind::ClientOpen => (&s, "-->>", &c, "open (accept completed)".to_string()),
            EventKind::ClientSend { id } => (&c, "->>", &s, format!("chat {id}")),
            EventKind::ClientUnsent { id, reason } => {
                (&c, "-x", &c, format!("never sent {id}: {reason}"))
            }
            EventKind::ClientRecv { frame } => {
                let arrow = match frame {
                    Frame::Error { .. } => "--x",
                    Frame::Ack { .. } | Frame::Event { .. } | Frame::Push { .. } | Frame::Ping => {
                        "-->>"
                    }
                };
                (&s, arrow, &c, frame.to_string())
            }
            EventKind::ClientClosed { code } => {
                (&s, "--x", &c, format!("client sees close {code}"))
            }
            EventKind::ClientRefused { status } => (&s, "--x", &c, format!("HTTP {status}")),
            EventKind::ClientClose => (&c, "-x", &s, "close".to_string()),
            EventKind::ClientDrop => (&c, "-x", &s, "drop (no close frame)".to_string()),
            EventKind::ClientGaveUp => (&c, "-x", &c, e.kind.to_string()),
            EventKind::PushIssued { id } => (&notifier_id, "->>", &s, format!("push {id}")),
            EventKind::Rejected { .. } => (&s, "--x", &c, e.kind.to_string()),
            EventKind::Dropped { .. } | EventKind::TransportError { .. } => {
                (&s, "-x", &s, e.kind.to_string())
            }
            EventKind::ServerClose { code } => (&s, "-x", &c, format!("server close {code}")),
            EventKind::State { .. }
            | EventKind::Handled { .. }
            | EventKind::Registered
            | EventKind::Unregistered
            | EventKind::CleanupRegistered { .. }
            | EventKind::CleanupRan { .. }
            | EventKind::Terminal { .. } => (&s, "->>", &s, e.kind.to_string()),
        };
        let _ = writeln!(
            out,
            "    {from}{arrow}{to}: {} ms {}",
            e.at_ms,
            escape(&what)
        );
        notes(&mut out, &mut pending, &outcome.trace, i, &users);
    }
    // Violations judged after the last event (a connection stuck at the end).
    for v in pending {
        let n = users.get(v.user.as_str()).copied().unwrap_or(0);
        let _ = writeln!(
            out,
            "    Note over C{n},S{n}: ✗ {} at {} ms: {}",
            v.invariant,
            v.at_ms,
            escape(&v.detail)
        );
    }
    out
}

/// Writes the notes of violations whose time has come: each goes after the last event at or
/// before its time (violations are sorted by time).
fn notes<'a>(
    out: &mut String,
    pending: &mut std::iter::Peekable<std::slice::Iter<'a, crate::invariant::Violation>>,
    trace: &[crate::trace::TraceEvent],
    i: usize,
    users: &IndexMap<&str, usize>,
) {
    let next_at = trace.get(i + 1).map(|e| e.at_ms);
    while let Some(v) = pending.peek() {
        let due = match next_at {
            Some(next) => v.at_ms < next,
            None => false,
        };
        if !due {
            break;
        }
        let n = users.get(v.user.as_str()).copied().unwrap_or(0);
        let _ = writeln!(
            out,
            "    Note over C{n},S{n}: ✗ {} at {} ms: {}",
            v.invariant,
            v.at_ms,
            escape(&v.detail)
        );
        pending.next();
    }
}
