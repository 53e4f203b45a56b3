//! The checker: one function per client-observable invariant, over one [`History`], for every
//! driver (virtual-time replay, `run --transport ws`, `probe`, `load`). Each rule is written
//! once, in its function's doc comment and in `docs/invariants.md`.
//!
//! A chat's fate ([`Fate`]) is answered, refused, lost, or **indeterminate**: the connection
//! ended with an error before the answer could come, and nothing (no refusal, no server trace)
//! says whether the server took it. Indeterminate chats are reported apart ([`Indeterminate`]);
//! they are neither a pass nor a loss. The server-side invariants (`before-ready`, `leak`, the
//! server half of `stuck`) need the server's trace and live in [`oracle`](crate::oracle).

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;

use crate::history::{Act, Got, History, Op};
use crate::invariant::{Invariant, Violation};

/// A chat whose fate the history cannot tell (Jepsen's `:info`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Indeterminate {
    /// The connection that sent it (its user's id, or `id#k` for its `k`-th connection).
    pub user: String,
    /// The chat id.
    pub id: String,
    /// When it was sent (milliseconds since the run began).
    pub at_ms: u64,
    /// Why it cannot be told, in words.
    pub reason: String,
}

/// An ack or run event that matches no chat of the run: for a chat no client sent, of a run no
/// ack announced, or naming no run at all. Each is also a violation (`out-of-order` for an ack,
/// `event-order` for an event's run), unless its user field names another user, which makes it
/// `cross-user`'s instead. (`probe` also lists here an ack that lacks the chat id field: it
/// answers no chat and breaks no rule by itself, but a wrong `id_field` looks exactly like it.)
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Unmatched {
    /// The connection that received it.
    pub user: String,
    /// When (milliseconds since the run began).
    pub at_ms: u64,
    /// Its position in the connection's history (the probe marks its record with it).
    #[serde(skip)]
    pub op: usize,
    /// `ack`, or the event's type.
    pub frame: String,
    /// The chat id (an ack) or run id (an event) it named, if any.
    pub id: Option<String>,
    /// Why it matches nothing, in words.
    pub reason: String,
}

/// Everything the checker found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Judgement {
    /// Every violation, sorted by time, then invariant, then user.
    pub violations: Vec<Violation>,
    /// Chats whose fate is unknowable, in history order.
    pub indeterminate: Vec<Indeterminate>,
    /// Acks and events that match no chat, by connection, then in history order.
    pub unmatched: Vec<Unmatched>,
}

/// Checks every client-observable invariant over `history`.
pub fn check(history: &History<'_>) -> Judgement {
    let ctx = Context::of(history);
    let facts = all_facts(history, &ctx);
    let reached = Reached::of(&facts);
    let mut j = Judgement::default();
    for f in &facts {
        message_lost(f, &reached, &mut j);
        j.violations
            .extend(out_of_order(f).into_iter().map(|(v, _)| v));
        event_order(f, &ctx, history, &mut j);
        unmatched(f, history, &mut j);
        cross_user(f, &ctx, &mut j.violations);
        accept_first(f, history, &mut j.violations);
        abnormal_close(f, history, &mut j.violations);
        stuck(f, &mut j.violations);
        leak(f, &mut j.violations);
    }
    sort(&mut j.violations);
    j
}

/// Every connection's [`Facts`], in history order.
fn all_facts<'h>(history: &'h History<'_>, ctx: &Context<'h>) -> Vec<Facts<'h>> {
    history
        .conns
        .iter()
        .map(|(conn, ops)| Facts::of(conn, history.user_of(conn), ops, ctx))
        .collect()
}

/// What reached each user, on whichever of its connections: a chat is answered by its ack and
/// a push delivered on any connection of its user (a reconnect, a second tab), and refused or
/// dropped likewise. With one connection per user this is each connection's own.
#[derive(Default)]
struct Reached<'h> {
    /// (user, chat id) of every ack received.
    acked: BTreeSet<(&'h str, &'h str)>,
    /// (user, push id) of every push received.
    delivered: BTreeSet<(&'h str, &'h str)>,
    /// (user, id) of every visible refusal.
    refused: BTreeSet<(&'h str, &'h str)>,
    /// (user, id) → the server's log line, for every chat or push it read and dropped.
    dropped: BTreeMap<(&'h str, &'h str), &'h str>,
}

impl<'h> Reached<'h> {
    fn of(facts: &[Facts<'h>]) -> Self {
        let mut r = Reached::default();
        for f in facts {
            let u = f.user;
            r.acked.extend(f.acks.iter().map(|(id, _, _)| (u, *id)));
            r.delivered
                .extend(f.pushes_got.iter().map(|(id, _)| (u, *id)));
            r.refused.extend(f.refused.iter().map(|id| (u, *id)));
            for (id, reason) in &f.dropped {
                r.dropped.entry((u, id)).or_insert(reason);
            }
        }
        r
    }
}

/// Sorts violations by time, then invariant, then user, then detail.
pub fn sort(violations: &mut [Violation]) {
    violations.sort_by(|a, b| {
        (a.at_ms, a.invariant, &a.user, &a.detail).cmp(&(b.at_ms, b.invariant, &b.user, &b.detail))
    });
}

/// The race counts `racegate load` reports, computed by the same rules.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Tally {
    /// Chats acknowledged whose run came whole and in order.
    pub answered: usize,
    /// Chats visibly refused (or, with a server trace, refused by an error close).
    pub refused: usize,
    /// `message-lost` violations.
    pub lost: usize,
    /// Chats whose fate is unknowable.
    pub indeterminate: usize,
    /// `out-of-order` violations that are an ack or push received twice.
    pub duplicated: usize,
    /// The other `out-of-order` violations, plus `event-order` ones.
    pub out_of_order: usize,
    /// `cross-user` violations (one per frame).
    pub cross_user: usize,
}

/// Counts `history` with the same rule functions [`check`] uses.
pub fn tally(history: &History<'_>) -> Tally {
    let ctx = Context::of(history);
    let facts = all_facts(history, &ctx);
    let reached = Reached::of(&facts);
    // (user, chat) of every run that came whole and in order on another connection of its user.
    let complete: BTreeSet<(&str, &str)> = facts
        .iter()
        .flat_map(|f| {
            f.runs
                .iter()
                .filter(|(run, _)| run_complete(f, history, run))
                .map(|(run, _)| (f.user, *run))
        })
        .collect();
    let mut t = Tally::default();
    for f in &facts {
        let mut j = Judgement::default();
        for (id, _, fate) in fates(f, &reached) {
            match fate {
                Fate::Answered
                    if run_complete(f, history, id) || complete.contains(&(f.user, id)) =>
                {
                    t.answered += 1
                }
                Fate::Answered => {}
                Fate::Refused => t.refused += 1,
                Fate::Lost(_) => {}
                Fate::Indeterminate(_) => {}
            }
        }
        message_lost(f, &reached, &mut j);
        for (_, twice) in out_of_order(f) {
            if twice {
                t.duplicated += 1;
            } else {
                t.out_of_order += 1;
            }
        }
        event_order(f, &ctx, history, &mut j);
        unmatched(f, history, &mut j);
        cross_user(f, &ctx, &mut j.violations);
        for v in &j.violations {
            match v.invariant {
                Invariant::MessageLost => t.lost += 1,
                // Here only `unmatched`'s: an ack for a chat nobody sent.
                Invariant::OutOfOrder => t.out_of_order += 1,
                Invariant::EventOrder => t.out_of_order += 1,
                Invariant::CrossUser => t.cross_user += 1,
                _ => {}
            }
        }
        t.indeterminate += j.indeterminate.len();
    }
    t
}

/// How a connection ended, as the client saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ending {
    /// The server closed with a code other than 1000, or refused the upgrade: a close it chose.
    ServerError,
    /// The connection ended without a close frame (the application ended or crashed): nothing
    /// was refused, whatever the server knew.
    Dropped,
    /// The server closed with 1000.
    ServerNormal,
    /// The client closed, as the scenario asked (`close_ms`).
    OwnScheduled,
    /// The client ended its TCP connection without a close frame, as the scenario asked
    /// (`drop_ms`): for a chat's fate, the same as [`OwnScheduled`](Ending::OwnScheduled).
    OwnDrop,
    /// The client closed at the end of the run, after waiting for its answers.
    OwnAfterWaiting,
}

/// One run's events as received: (index in the protocol's list, time, position in `ops`).
type RunEvents = Vec<(usize, u64, usize)>;

/// An event that matches no chat.
#[derive(Clone, Copy)]
struct StrayEvent<'h> {
    /// The run id it names, if any.
    run: Option<&'h str>,
    /// Its position in the protocol's event list.
    index: usize,
    at: u64,
    /// Its position in the connection's history.
    pos: usize,
    /// The user it names, if any.
    claimed: Option<&'h str>,
}

/// What the rules read about one connection, gathered in one pass.
struct Facts<'h> {
    /// The connection's label: what its violations and indeterminate chats name.
    conn: &'h str,
    /// Its user: what frames' user fields and other connections' owners are compared with.
    user: &'h str,
    ops: &'h [Op<'h>],
    /// The server's trace covers this connection (the replay).
    served: bool,
    /// Chats sent: id, time, position in `ops`.
    sends: Vec<(&'h str, u64, usize)>,
    unsent: Vec<(&'h str, u64, &'h str)>,
    pushes: Vec<(&'h str, u64)>,
    acks: Vec<(&'h str, u64, usize)>,
    pushes_got: Vec<(&'h str, u64)>,
    /// Chat id → its run's events (index, time, position), each matched to its chat through
    /// [`Context::chat_of`].
    runs: Vec<(&'h str, RunEvents)>,
    /// Own chats whose ack announced a run id (`run_from_ack`): chat id, run id.
    announced: Vec<(&'h str, &'h str)>,
    /// Acks for a chat no client invoked: id, time, position, the user they name.
    stray_acks: Vec<(&'h str, u64, usize, Option<&'h str>)>,
    /// Events that match no chat.
    stray_events: Vec<StrayEvent<'h>>,
    /// Refused visibly: an error frame naming it, or a refusal the server or notifier recorded
    /// when the connection was over (or not yet known to the server).
    refused: BTreeSet<&'h str>,
    /// Pushes "refused" while their connection was still opening: not a refusal.
    refused_early: BTreeMap<&'h str, &'h str>,
    /// Server trace: read and dropped.
    dropped: BTreeMap<&'h str, &'h str>,
    /// Position and kind of each ending.
    endings: Vec<(usize, Ending)>,
}

impl<'h> Facts<'h> {
    fn of(conn: &'h str, user: &'h str, ops: &'h [Op<'h>], ctx: &Context<'h>) -> Self {
        let mut f = Facts {
            conn,
            user,
            ops,
            served: false,
            sends: Vec::new(),
            unsent: Vec::new(),
            pushes: Vec::new(),
            acks: Vec::new(),
            pushes_got: Vec::new(),
            runs: Vec::new(),
            announced: Vec::new(),
            stray_acks: Vec::new(),
            stray_events: Vec::new(),
            refused: BTreeSet::new(),
            refused_early: BTreeMap::new(),
            dropped: BTreeMap::new(),
            endings: Vec::new(),
        };
        // Whether the server ever recorded this connection: a push it refused before that
        // crossed the upgrade on its way (see `Act::Rejected` below).
        let served_eventually = ops.iter().any(|op| matches!(op.act, Act::Served));
        let mut ended = false;
        for (pos, op) in ops.iter().enumerate() {
            let at = op.at_ms;
            match &op.act {
                Act::Connect
                | Act::Open
                | Act::CloseAnswered { .. }
                | Act::GaveUp { .. }
                | Act::Raised { .. }
                | Act::AppRaised { .. }
                | Act::HandlerPending { .. }
                | Act::TaskPending { .. } => {}
                Act::Handled { .. } => {}
                Act::Served => f.served = true,
                Act::ServerEnded => ended = true,
                Act::UpgradeRefused { .. } => {
                    ended = true;
                    f.endings.push((pos, Ending::ServerError));
                }
                Act::Send { id } => f.sends.push((id, at, pos)),
                Act::Unsent { id, reason } => f.unsent.push((id, at, reason)),
                Act::PushIssued { id } => f.pushes.push((id, at)),
                Act::Recv(got) => match got {
                    Got::Ack { id, user, run } => {
                        f.acks.push((id, at, pos));
                        if ctx.owners.get(id).is_none() {
                            f.stray_acks.push((id, at, pos, user.as_deref()));
                        } else if let Some(run) = run {
                            f.announced.push((id, run));
                        }
                    }
                    Got::Push { id, .. } => {
                        if let Some(id) = id {
                            f.pushes_got.push((id, at));
                        }
                    }
                    Got::Event { index, run, user } => match ctx.chat_of(f.conn, run.as_deref()) {
                        // Runs come one after another: look at the latest first.
                        Some(chat) => match f.runs.iter_mut().rev().find(|(r, _)| *r == chat) {
                            Some((_, events)) => events.push((*index, at, pos)),
                            None => f.runs.push((chat, vec![(*index, at, pos)])),
                        },
                        None => f.stray_events.push(StrayEvent {
                            run: run.as_deref(),
                            index: *index,
                            at,
                            pos,
                            claimed: user.as_deref(),
                        }),
                    },
                    Got::Error {
                        about: Some(id), ..
                    } => {
                        f.refused.insert(id);
                    }
                    Got::Error { about: None, .. } | Got::Text(_) | Got::Other => {}
                },
                Act::ServerClose { code, .. } => {
                    ended = true;
                    let e = if *code == 1000 {
                        Ending::ServerNormal
                    } else {
                        Ending::ServerError
                    };
                    f.endings.push((pos, e));
                }
                Act::Dropped { .. } => {
                    ended = true;
                    f.endings.push((pos, Ending::Dropped));
                }
                Act::ClientClose { scheduled } => {
                    ended = true;
                    let e = if *scheduled {
                        Ending::OwnScheduled
                    } else {
                        Ending::OwnAfterWaiting
                    };
                    f.endings.push((pos, e));
                }
                Act::ClientDrop => {
                    ended = true;
                    f.endings.push((pos, Ending::OwnDrop));
                }
                Act::Rejected { id, reason } => {
                    // A push can only be refused by a connection that is over, or one the
                    // server cannot know of yet: the push crossed the upgrade on its way (the
                    // refusal came before the server recorded anything of a connection it did
                    // go on to serve). Causal, not by the clock: over real sockets the two
                    // are a jitter apart. One refused while its user's connection is still
                    // opening, or from a server that never serves it, never had a chance.
                    let push = f.pushes.iter().any(|(p, _)| p == id);
                    let crossed_upgrade = !f.served && served_eventually;
                    if push && !ended && !crossed_upgrade {
                        f.refused_early.insert(id, reason);
                    } else {
                        f.refused.insert(id);
                    }
                }
                Act::ServerDropped { id, reason } => {
                    f.dropped.entry(id).or_insert(reason);
                }
            }
        }
        f
    }

    /// True when this connection invoked `id`: sent it, or was issued it. Not a chat it only
    /// meant to send: one never sent produced no frame, so a frame about it belongs to whoever
    /// did send that id.
    fn invoked(&self, id: &str) -> bool {
        self.sends.iter().any(|(s, _, _)| *s == id) || self.pushes.iter().any(|(p, _)| *p == id)
    }

    /// How the connection ended first after position `pos`, if it did.
    fn run(&self, id: &str) -> Option<&[(usize, u64, usize)]> {
        self.runs
            .iter()
            .find(|(r, _)| *r == id)
            .map(|(_, e)| e.as_slice())
    }

    /// The run id an ack on this connection announced for own chat `chat`, if one did.
    fn announced_run(&self, chat: &str) -> Option<&'h str> {
        self.announced
            .iter()
            .find(|(c, _)| *c == chat)
            .map(|(_, r)| *r)
    }

    fn ending_after(&self, pos: usize) -> Option<Ending> {
        self.endings.iter().find(|(p, _)| *p > pos).map(|(_, e)| *e)
    }

    fn violation(&self, invariant: Invariant, at_ms: u64, detail: String) -> Violation {
        Violation {
            invariant,
            user: self.conn.to_string(),
            at_ms,
            detail,
        }
    }
}

/// What became of one chat.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fate {
    /// Acknowledged.
    Answered,
    /// Refused, and the client was told (or, with the server's trace, never taken).
    Refused,
    /// Neither answered nor refused: `message-lost`, with why.
    Lost(String),
    /// Unknowable from what was recorded, with why.
    Indeterminate(String),
}

/// Each sent chat's fate, in send order. The rule:
///
/// 1. acknowledged (on any connection of its user) → answered;
/// 2. refused visibly (an error frame naming it; in the replay, a refusal the server recorded)
///    → refused;
/// 3. the server's trace says it read the chat and dropped it → lost;
/// 4. the connection ended after the send, before an answer, by a server close other than
///    1000, a drop without a close frame, or the client's own scheduled end (`close_ms`, or
///    `drop_ms`):
///    - with the server's trace (the replay), a server-ended connection refused what it had not
///      answered (the client saw the error close); a client that closed on its own leaves the
///      server owing an account (handled-and-answered or refused), so it is lost;
///    - without it (probe, load), indeterminate: only the server knows;
/// 5. otherwise (no ending, a 1000 close, or the client's close after waiting) → lost.
fn fates<'h>(f: &Facts<'h>, reached: &Reached<'h>) -> Vec<(&'h str, u64, Fate)> {
    f.sends
        .iter()
        .map(|&(id, at, pos)| {
            let key = (f.user, id);
            let fate = if reached.acked.contains(&key) {
                Fate::Answered
            } else if reached.refused.contains(&key) {
                Fate::Refused
            } else if let Some(reason) = reached.dropped.get(&key) {
                Fate::Lost(format!("{id} dropped: {reason}"))
            } else {
                match (f.ending_after(pos), f.served) {
                    (Some(Ending::ServerError), true) => Fate::Refused,
                    // A drop refuses nothing: the server's trace says it neither answered nor
                    // refused the chat, and then let the connection go.
                    (Some(Ending::Dropped), true) => Fate::Lost(format!(
                        "{id} was never answered: the connection dropped without a close frame"
                    )),
                    (Some(Ending::Dropped), false) => Fate::Indeterminate(
                        "the connection dropped without a close frame before the answer".into(),
                    ),
                    (Some(Ending::ServerError), false) => Fate::Indeterminate(
                        "the server ended the connection with an error before answering".into(),
                    ),
                    (Some(Ending::OwnScheduled), false) => Fate::Indeterminate(
                        "the client closed on schedule before the answer came".into(),
                    ),
                    (Some(Ending::OwnDrop), false) => Fate::Indeterminate(
                        "the client dropped its connection on schedule before the answer came"
                            .into(),
                    ),
                    _ => Fate::Lost(format!("{id} was never delivered and never rejected")),
                }
            };
            (id, at, fate)
        })
        .collect()
}

/// `message-lost`: a chat the client sent whose [fate](fates) is lost; a chat the client meant
/// to send and could not (its connection never opened); a push issued for the user that was
/// neither delivered nor refused (a refusal while the user's connection was still opening does
/// not count). Indeterminate chats are recorded in `j.indeterminate`, not here.
fn message_lost<'h>(f: &Facts<'h>, reached: &Reached<'h>, j: &mut Judgement) {
    for (id, at, fate) in fates(f, reached) {
        match fate {
            Fate::Answered | Fate::Refused => {}
            Fate::Lost(detail) => {
                j.violations
                    .push(f.violation(Invariant::MessageLost, at, detail))
            }
            Fate::Indeterminate(reason) => j.indeterminate.push(Indeterminate {
                user: f.conn.to_string(),
                id: id.to_string(),
                at_ms: at,
                reason,
            }),
        }
    }
    for (id, at, reason) in &f.unsent {
        j.violations.push(f.violation(
            Invariant::MessageLost,
            *at,
            format!("{id} never sent: {reason}"),
        ));
    }
    for &(id, at) in &f.pushes {
        let key = (f.user, id);
        if reached.delivered.contains(&key) || reached.refused.contains(&key) {
            continue;
        }
        let detail = match (reached.dropped.get(&key), f.refused_early.get(id)) {
            (Some(reason), _) => format!("{id} dropped: {reason}"),
            (None, Some(reason)) => {
                format!("{id} refused while the connection was still opening: {reason}")
            }
            (None, None) => format!("{id} was never delivered and never rejected"),
        };
        j.violations
            .push(f.violation(Invariant::MessageLost, at, detail));
    }
}

/// `out-of-order`: an ack (or push) received for an own chat (push) sent (issued) before one
/// already acknowledged (delivered), or received twice. One definition of a duplicate for every
/// driver: a second ack or push for the same id is `out-of-order`. The flag says which kind.
fn out_of_order(f: &Facts<'_>) -> Vec<(Violation, bool)> {
    let mut out = Vec::new();
    let sends = f.sends.iter().map(|(id, _, _)| *id);
    let acks = f.acks.iter().map(|(id, at, _)| (*id, *at));
    order(f, "ack", sends, acks, &mut out);
    let pushes = f.pushes.iter().map(|(id, _)| *id);
    order(f, "push", pushes, f.pushes_got.iter().copied(), &mut out);
    out
}

/// [`out_of_order`] for one kind: `got` against the order of `sent`.
fn order<'h>(
    f: &Facts<'h>,
    what: &str,
    sent: impl Iterator<Item = &'h str>,
    got: impl Iterator<Item = (&'h str, u64)>,
    out: &mut Vec<(Violation, bool)>,
) {
    let mut index: Vec<(&str, usize)> = sent.enumerate().map(|(i, id)| (id, i)).collect();
    if index.is_empty() {
        return;
    }
    index.sort_unstable();
    let mut seen = vec![false; index.len()];
    let mut last: Option<(usize, &str)> = None;
    for (id, at) in got {
        let Ok(k) = index.binary_search_by(|(i, _)| (*i).cmp(id)) else {
            continue; // not this connection's: cross-user's business
        };
        let i = index[k].1;
        if std::mem::replace(&mut seen[i], true) {
            let detail = format!("{what} {id} received twice");
            out.push((f.violation(Invariant::OutOfOrder, at, detail), true));
            continue;
        }
        if let Some((prev, prev_id)) = last
            && i < prev
        {
            let detail = format!("{what} {id} received after {prev_id}, but was sent before it");
            out.push((f.violation(Invariant::OutOfOrder, at, detail), false));
        }
        if last.is_none_or(|(p, _)| i > p) {
            last = Some((i, id));
        }
    }
}

/// The event indexes received for run `run`, in order.
fn run_events(f: &Facts<'_>, run: &str) -> Vec<usize> {
    f.run(run)
        .map(|e| e.iter().map(|(i, _, _)| *i).collect())
        .unwrap_or_default()
}

fn run_complete(f: &Facts<'_>, history: &History<'_>, run: &str) -> bool {
    run_events(f, run)
        .into_iter()
        .eq(0..history.protocol.events.len())
}

/// `event-order`: every own chat (one this connection's user sent, on this connection or
/// another of the user's) that was acknowledged or produced events on this connection must get
/// the protocol's whole event list there, each once, in order. A run cut short (the events that
/// came are the list's first ones, in order) is excused when the chat was refused visibly; when
/// the connection ended after its last event by a server error close, a drop or the client's
/// own scheduled end, it is excused as indeterminate without a server trace, and a violation
/// with one (the server must say it refused the rest).
fn event_order(f: &Facts<'_>, ctx: &Context<'_>, history: &History<'_>, j: &mut Judgement) {
    let names = &history.protocol.events;
    let own = |id: &str| {
        f.sends.iter().any(|(s, _, _)| *s == id)
            || ctx
                .owners
                .chat(id)
                .is_some_and(|c| ctx.user_of(c) == f.user)
    };
    // Each own run, from its first ack or event: time and position.
    let mut runs: Vec<(&str, u64, usize)> = Vec::new();
    for (id, at, pos) in &f.acks {
        if own(id) && !runs.iter().any(|(r, _, _)| r == id) {
            runs.push((id, *at, *pos));
        }
    }
    for (run, events) in &f.runs {
        if own(run) && !runs.iter().any(|(r, _, _)| r == run) {
            runs.push((run, events[0].1, events[0].2));
        }
    }
    for (run, at, pos) in runs {
        let events = f.run(run).unwrap_or_default();
        if events.iter().map(|(i, _, _)| *i).eq(0..names.len()) {
            continue;
        }
        let got = run_events(f, run);
        let (last_at, last_pos) = f
            .run(run)
            .and_then(|e| e.last())
            .map_or((at, pos), |e| (e.1, e.2));
        let prefix = got.iter().enumerate().all(|(k, i)| *i == k) && got.len() < names.len();
        if prefix {
            if f.refused.contains(run) {
                continue;
            }
            // Cut short by the connection's first end after the chat was sent: events that
            // arrive while the client's own close is under way are still cut short by it.
            let sent_at = f
                .sends
                .iter()
                .find(|(s, _, _)| *s == run)
                .map_or(last_pos, |(_, _, p)| *p);
            let cut = matches!(
                f.ending_after(sent_at),
                Some(
                    Ending::ServerError | Ending::Dropped | Ending::OwnScheduled | Ending::OwnDrop
                )
            );
            if cut && !f.served {
                j.indeterminate.push(Indeterminate {
                    user: f.conn.to_string(),
                    id: run.to_string(),
                    at_ms: last_at,
                    reason: format!(
                        "its run was cut short after {} of {} events by the connection's end",
                        got.len(),
                        names.len()
                    ),
                });
                continue;
            }
        }
        let got: Vec<&str> = got
            .iter()
            .map(|i| names.get(*i).map_or("?", String::as_str))
            .collect();
        // Where runs are matched through the ack's run id, say which id that was, or that
        // there was none to follow.
        let via = match (&history.protocol.run_from_ack, f.announced_run(run)) {
            (None, _) => String::new(),
            (Some(_), Some(id)) => format!(" (run id {id})"),
            (Some(path), None) => format!(" (its ack announced no run id at `{path}`)"),
        };
        j.violations.push(f.violation(
            Invariant::EventOrder,
            last_at,
            format!(
                "run {run}{via} got [{}], expected [{}] in order",
                got.join(", "),
                names.join(", ")
            ),
        ));
    }
}

/// Acks and events that match no chat (never silently dropped): an ack for a chat no client
/// sent breaks `out-of-order` (acks answer sent chats one to one, like a second ack for one);
/// an event of a run no chat of this run started, or naming no run, breaks `event-order` (run
/// events come for started chats only, each once), one violation per run id. The probe's
/// clients are the only ones its users have, and every type in `events` belongs to a chat's
/// run, so such a frame is another client's run leaking in, a run outliving an earlier
/// connection, a mislabelled run (whose own chat then misses events too), or a `[protocol]`
/// that reads the wrong field. A frame whose user field names another user is `cross-user`'s,
/// not counted twice.
fn unmatched(f: &Facts<'_>, history: &History<'_>, j: &mut Judgement) {
    let p = history.protocol;
    let foreign = |claimed: Option<&str>| claimed.is_some_and(|c| c != f.user);
    for &(id, at, pos, claimed) in &f.stray_acks {
        if foreign(claimed) {
            continue;
        }
        let reason = format!("ack {id} is for a chat no client sent");
        j.violations
            .push(f.violation(Invariant::OutOfOrder, at, reason.clone()));
        j.unmatched.push(Unmatched {
            user: f.conn.to_string(),
            at_ms: at,
            op: pos,
            frame: p.ack_type.clone(),
            id: Some(id.to_string()),
            reason,
        });
    }
    // One violation per run id, at its first event, listing every event of it.
    let mut runs: Vec<(Option<&str>, u64, Vec<&str>)> = Vec::new();
    for &StrayEvent {
        run,
        index,
        at,
        pos,
        claimed,
    } in &f.stray_events
    {
        if foreign(claimed) {
            continue;
        }
        let name = p.events.get(index).map_or("?", String::as_str);
        let reason = match (run, &p.run_from_ack) {
            (None, _) => format!("{name} names no run (`{}`)", p.run_field),
            (Some(r), Some(path)) => {
                format!("{name} of run {r}, which no ack announced (`{path}`)")
            }
            (Some(r), None) => format!("{name} of run {r}, a chat no client sent"),
        };
        j.unmatched.push(Unmatched {
            user: f.conn.to_string(),
            at_ms: at,
            op: pos,
            frame: name.to_string(),
            id: run.map(str::to_string),
            reason,
        });
        match runs.iter_mut().find(|(r, _, _)| *r == run) {
            Some((_, _, names)) => names.push(name),
            None => runs.push((run, at, vec![name])),
        }
    }
    for (run, at, names) in runs {
        let what = match (run, &p.run_from_ack) {
            (None, _) => format!("naming no run (`{}`)", p.run_field),
            (Some(r), Some(path)) => format!("of run {r}, which no ack announced (`{path}`)"),
            (Some(r), None) => format!("of run {r}, which is no chat any client sent"),
        };
        j.violations.push(f.violation(
            Invariant::EventOrder,
            at,
            format!(
                "received [{}] {what}: events that match no chat",
                names.join(", ")
            ),
        ));
    }
}

/// What the rules need to know across connections: who invoked each id, and which chat each
/// run id an ack announced belongs to.
struct Context<'h> {
    /// The history: whose connection each label is.
    history: &'h History<'h>,
    owners: Owners<'h>,
    /// The protocol's `run_from_ack` is set: events are matched to chats only through the run
    /// ids acks announced, never by taking their run id for a chat id.
    by_announced_run: bool,
    /// (run id, connection, chat id) of every ack for an invoked chat that announced a run id,
    /// sorted by run id; history order within one.
    announced: Vec<(&'h str, &'h str, &'h str)>,
}

impl<'h> Context<'h> {
    fn of(history: &'h History<'h>) -> Self {
        let owners = owners(history);
        let by_announced_run = history.protocol.run_from_ack.is_some();
        let mut announced = Vec::new();
        if by_announced_run {
            for (user, ops) in &history.conns {
                for op in ops {
                    if let Act::Recv(Got::Ack {
                        id, run: Some(run), ..
                    }) = &op.act
                        && owners.get(id).is_some()
                    {
                        announced.push((run.as_ref(), user.as_ref(), id.as_ref()));
                    }
                }
            }
            announced.sort_by(|a, b| a.0.cmp(b.0));
        }
        Context {
            history,
            owners,
            by_announced_run,
            announced,
        }
    }

    /// The user whose connection `conn` is.
    fn user_of(&self, conn: &'h str) -> &'h str {
        self.history.user_of(conn)
    }

    /// The chat an event naming `run` belongs to, on connection `conn`, if any: the invoked
    /// chat of that id; or, with `run_from_ack`, the chat an ack announced `run` for, on this
    /// connection first (servers may count run ids per connection), else on another (a leak
    /// `cross-user` names, unless it is the same user's). The first announcement wins.
    fn chat_of(&self, conn: &str, run: Option<&'h str>) -> Option<&'h str> {
        let run = run?;
        if !self.by_announced_run {
            return self.owners.get(run).map(|_| run);
        }
        let start = self.announced.partition_point(|(r, _, _)| *r < run);
        let same = self.announced[start..]
            .iter()
            .take_while(|(r, _, _)| *r == run);
        let mine = same.clone().find(|(_, c, _)| *c == conn);
        mine.or_else(|| same.clone().next())
            .map(|(_, _, chat)| *chat)
    }
}

/// Which connection sent or was issued each chat or push id (a chat never sent owns none), by
/// id, and whether that was a chat.
struct Owners<'h>(Vec<(&'h str, &'h str, bool)>);

impl<'h> Owners<'h> {
    fn get(&self, id: &str) -> Option<&'h str> {
        self.find(id).map(|(conn, _)| conn)
    }

    /// The connection that sent chat `id`, if a connection sent a chat of that id.
    fn chat(&self, id: &str) -> Option<&'h str> {
        self.find(id)
            .filter(|(_, chat)| *chat)
            .map(|(conn, _)| conn)
    }

    fn find(&self, id: &str) -> Option<(&'h str, bool)> {
        self.0
            .binary_search_by(|(i, _, _)| (*i).cmp(id))
            .ok()
            .map(|k| (self.0[k].1, self.0[k].2))
    }
}

fn owners<'h>(history: &'h History<'_>) -> Owners<'h> {
    let mut owner = Vec::new();
    for (conn, ops) in &history.conns {
        for op in ops {
            match &op.act {
                Act::Send { id } => owner.push((id.as_ref(), conn.as_ref(), true)),
                Act::PushIssued { id } => owner.push((id.as_ref(), conn.as_ref(), false)),
                _ => {}
            }
        }
    }
    // The last invocation of an id names its owner, as a map's last insert would.
    owner.reverse();
    owner.sort_by(|a, b| a.0.cmp(b.0));
    owner.dedup_by(|a, b| a.0 == b.0);
    Owners(owner)
}

/// `cross-user`: a client received an ack, event or push that names another user, or is about
/// a chat or push another user invoked (an event through the chat its run belongs to). Users are
/// compared, not connections: a frame about a chat its user sent on another connection is its
/// own. One violation per frame.
fn cross_user(f: &Facts<'_>, ctx: &Context<'_>, out: &mut Vec<Violation>) {
    for op in f.ops {
        let Act::Recv(got) = &op.act else { continue };
        let (what, named, id, claimed) = match got {
            Got::Ack { id, user, .. } => ("ack", Some(id.as_ref()), Some(id.as_ref()), user),
            Got::Event { run, user, .. } => {
                let run = run.as_deref();
                ("event", run, ctx.chat_of(f.conn, run), user)
            }
            Got::Push { id, user } => ("push", id.as_deref(), id.as_deref(), user),
            Got::Error { .. } | Got::Text(_) | Got::Other => continue,
        };
        if claimed.as_deref().is_none_or(|c| c == f.user) && id.is_some_and(|i| f.invoked(i)) {
            continue; // the common case: its own frame
        }
        let frame = match (named, id) {
            (Some(n), Some(chat)) if n != chat => format!("{what} {n} (of {chat})"),
            (Some(n), _) => format!("{what} {n}"),
            (None, _) => what.to_string(),
        };
        let detail = match (claimed.as_deref(), id.and_then(|i| ctx.owners.get(i))) {
            (Some(c), _) if c != f.user => {
                format!("client received {frame} addressed to user {c}")
            }
            (_, Some(o)) if ctx.user_of(o) != f.user => {
                format!(
                    "client received {frame}, produced for user {}",
                    ctx.user_of(o)
                )
            }
            _ => continue,
        };
        out.push(f.violation(Invariant::CrossUser, op.at_ms, detail));
    }
}

/// The first error pattern `text` contains, ignoring case.
fn matching<'p>(patterns: &'p [String], text: &str) -> Option<&'p str> {
    let text = text.to_lowercase();
    patterns
        .iter()
        .find(|p| text.contains(&p.to_lowercase()))
        .map(String::as_str)
}

/// `accept-first`: the transport was used before accept or after close. The client sees it as
/// an error frame, a close reason or a non-JSON text frame containing one of the protocol's
/// error patterns; the server's trace (the replay) records the raise itself.
fn accept_first(f: &Facts<'_>, history: &History<'_>, out: &mut Vec<Violation>) {
    let patterns = &history.protocol.error_patterns;
    for op in f.ops {
        let detail = match &op.act {
            Act::Raised { op, error } => format!("{op}: {error}"),
            Act::Recv(Got::Error { message, .. }) => match matching(patterns, message) {
                Some(p) => format!("error frame {} matches {p:?}", quote(message)),
                None => continue,
            },
            Act::Recv(Got::Text(text)) => match matching(patterns, text) {
                Some(p) => format!("text frame {} matches {p:?}", quote(text)),
                None => continue,
            },
            Act::ServerClose { reason, .. } if !reason.is_empty() => {
                match matching(patterns, reason) {
                    Some(p) => format!("close reason {} matches {p:?}", quote(reason)),
                    None => continue,
                }
            }
            _ => continue,
        };
        out.push(f.violation(Invariant::AcceptFirst, op.at_ms, detail));
    }
}

/// `abnormal-close`: the server closed with a code outside the protocol's `close_codes`
/// (answering the client's close included), dropped the connection without a close frame,
/// refused the upgrade without an expected close code, or (where the app's side is seen, `probe
/// --app`) let an exception escape its handler.
fn abnormal_close(f: &Facts<'_>, history: &History<'_>, out: &mut Vec<Violation>) {
    let codes = &history.protocol.close_codes;
    let expected = || {
        let c: Vec<String> = codes.iter().map(u16::to_string).collect();
        c.join(", ")
    };
    for op in f.ops {
        let detail = match &op.act {
            Act::ServerClose { code, reason } if !codes.contains(code) => format!(
                "server closed with {code}{}; expected one of {}",
                if reason.is_empty() {
                    String::new()
                } else {
                    format!(" ({})", quote(reason))
                },
                expected()
            ),
            Act::CloseAnswered { code: Some(code) } if !codes.contains(code) => format!(
                "server answered the client's close with {code}; expected one of {}",
                expected()
            ),
            Act::Dropped { error } => format!("connection ended without a close frame: {error}"),
            Act::UpgradeRefused {
                status,
                code: Some(code),
            } if !codes.contains(code) => format!(
                "upgrade refused with HTTP {status}, close code {code}; expected one of {}",
                expected()
            ),
            // A 4xx is a refusal the server chose (Starlette answers a close before accept
            // with a bare 403); a 5xx is the application failing (uvicorn's 500 when it ends
            // before accepting).
            Act::UpgradeRefused { status, code: None } if *status >= 500 => {
                format!("upgrade refused with HTTP {status} and no close code")
            }
            Act::AppRaised { error } => format!("an exception escaped the app: {error}"),
            _ => continue,
        };
        out.push(f.violation(Invariant::AbnormalClose, op.at_ms, detail));
    }
}

/// `stuck`, the client's half: the client gave up waiting for something the server owed it
/// (its connection to open or be refused, an answer, the answer to its close); and, where the
/// app's side is seen (`probe --app`), its handler had not returned at the end of the run after
/// its client left. The replay's server half (no terminal state by the end of the run) needs
/// its server trace: see [`oracle`](crate::oracle).
fn stuck(f: &Facts<'_>, out: &mut Vec<Violation>) {
    for op in f.ops {
        let detail = match &op.act {
            Act::GaveUp { detail } => detail.to_string(),
            Act::HandlerPending { name } => format!(
                "the app's handler {name} had not returned at the end of the run, after its \
                 client left"
            ),
            _ => continue,
        };
        out.push(f.violation(Invariant::Stuck, op.at_ms, detail));
    }
}

/// `leak`, the application's half (`probe --app`): a task spawned while serving the connection
/// was still pending at the end of the run, after the connection ended. The replay's half (a
/// registration or cleanup left behind) needs its server trace: see [`oracle`](crate::oracle).
fn leak(f: &Facts<'_>, out: &mut Vec<Violation>) {
    for op in f.ops {
        if let Act::TaskPending { name } = &op.act {
            out.push(f.violation(
                Invariant::Leak,
                op.at_ms,
                format!(
                    "task {name}, spawned while serving this connection, was still pending at \
                     the end of the run, after the connection ended"
                ),
            ));
        }
    }
}

/// The longest frame text a violation quotes.
const QUOTE_CHARS: usize = 160;

/// `text` in backquotes, cut to [`QUOTE_CHARS`] characters.
fn quote(text: &str) -> String {
    if text.chars().count() <= QUOTE_CHARS {
        format!("`{text}`")
    } else {
        let cut: String = text.chars().take(QUOTE_CHARS).collect();
        format!("`{cut}…`")
    }
}

#[cfg(test)]
mod tests {
    use std::borrow::Cow;

    use super::*;
    use crate::history::DEFAULT_PROTOCOL;

    /// One user's history, read with racegate's own protocol.
    fn one(acts: Vec<Act<'static>>) -> History<'static> {
        let mut h = History::new(&DEFAULT_PROTOCOL);
        for (at, act) in acts.into_iter().enumerate() {
            h.push("u", at as u64 * 10, act);
        }
        h
    }

    fn details(h: &History<'_>, invariant: Invariant) -> Vec<(u64, String)> {
        check(h)
            .violations
            .into_iter()
            .filter(|v| v.invariant == invariant)
            .map(|v| (v.at_ms, v.detail))
            .collect()
    }

    fn close(code: u16, reason: &'static str) -> Act<'static> {
        Act::ServerClose {
            code,
            reason: Cow::Borrowed(reason),
        }
    }

    fn b(s: &'static str) -> Cow<'static, str> {
        Cow::Borrowed(s)
    }

    fn send(id: &'static str) -> Act<'static> {
        Act::Send { id: b(id) }
    }

    fn ack(id: &'static str, run: Option<&'static str>) -> Act<'static> {
        Act::Recv(Got::Ack {
            id: b(id),
            user: None,
            run: run.map(b),
        })
    }

    fn event(index: usize, run: Option<&'static str>, user: Option<&'static str>) -> Act<'static> {
        Act::Recv(Got::Event {
            index,
            run: run.map(b),
            user: user.map(b),
        })
    }

    /// A whole run of `run`, in order.
    fn run_of(run: &'static str) -> Vec<Act<'static>> {
        (0..5).map(|i| event(i, Some(run), None)).collect()
    }

    /// Connections (user, acts) read with `protocol`, 10 ms apart within each.
    fn conns<'p>(
        protocol: &'p Protocol,
        users: Vec<(&'static str, Vec<Act<'static>>)>,
    ) -> History<'p> {
        let mut h = History::new(protocol);
        for (user, acts) in users {
            for (at, act) in acts.into_iter().enumerate() {
                h.push(user, at as u64 * 10, act);
            }
        }
        h
    }

    fn run_from_ack() -> Protocol {
        Protocol {
            run_from_ack: Some("data.runId".into()),
            ..Protocol::default()
        }
    }

    fn names(j: &Judgement) -> Vec<(Invariant, String)> {
        j.violations
            .iter()
            .map(|v| (v.invariant, v.detail.clone()))
            .collect()
    }

    use crate::scenario::Protocol;

    #[test]
    fn events_are_matched_to_chats_through_the_run_id_the_ack_announced() {
        let p = run_from_ack();
        let mut acts = vec![Act::Open, send("u-1"), ack("u-1", Some("r-7"))];
        acts.extend(run_of("r-7"));
        let j = check(&conns(&p, vec![("u", acts.clone())]));
        assert_eq!(names(&j), [], "a whole run through its announced id passes");
        // The same run with two events swapped fails, naming the chat and its run id.
        acts.swap(4, 5);
        let j = check(&conns(&p, vec![("u", acts)]));
        assert_eq!(
            names(&j),
            [(
                Invariant::EventOrder,
                "run u-1 (run id r-7) got [agent_started, tool_executing, agent_thinking, \
                 tool_completed, agent_completed], expected [agent_started, agent_thinking, \
                 tool_executing, tool_completed, agent_completed] in order"
                    .to_string()
            )]
        );
    }

    #[test]
    fn each_chat_gets_the_events_of_the_run_its_ack_announced_among_several() {
        // Two chats, two announced runs: the events of either run find their chat, whichever
        // run id sorts first.
        let p = run_from_ack();
        for (first, second) in [("r-1", "r-2"), ("r-2", "r-1")] {
            let mut acts = vec![
                Act::Open,
                send("u-1"),
                send("u-2"),
                ack("u-1", Some(first)),
                ack("u-2", Some(second)),
            ];
            acts.extend(run_of(first));
            acts.extend(run_of(second));
            let j = check(&conns(&p, vec![("u", acts)]));
            assert_eq!(names(&j), [], "runs {first} then {second}");
            assert_eq!(j.unmatched, [], "runs {first} then {second}");
        }
    }

    #[test]
    fn an_event_before_the_ack_that_announces_its_run_still_counts_for_that_chat() {
        let p = run_from_ack();
        let mut acts = vec![Act::Open, send("u-1")];
        acts.extend(run_of("r-7"));
        acts.push(ack("u-1", Some("r-7")));
        assert_eq!(names(&check(&conns(&p, vec![("u", acts)]))), []);
    }

    #[test]
    fn with_run_ids_from_acks_an_event_naming_the_chat_id_itself_matches_nothing() {
        let p = run_from_ack();
        let mut acts = vec![Act::Open, send("u-1"), ack("u-1", None)];
        acts.extend(run_of("u-1"));
        let j = check(&conns(&p, vec![("u", acts)]));
        let v = names(&j);
        assert_eq!(v.len(), 2, "{v:#?}");
        assert!(
            v[0].1
                .starts_with("run u-1 (its ack announced no run id at `data.runId`) got []"),
            "{v:#?}"
        );
        assert_eq!(
            v[1].1,
            "received [agent_started, agent_thinking, tool_executing, tool_completed, \
             agent_completed] of run u-1, which no ack announced (`data.runId`): events that \
             match no chat"
        );
        assert_eq!(j.unmatched.len(), 5);
        assert_eq!(
            (
                j.unmatched[0].op,
                j.unmatched[0].frame.as_str(),
                j.unmatched[0].id.as_deref()
            ),
            (3, "agent_started", Some("u-1"))
        );
    }

    #[test]
    fn run_ids_counted_per_connection_match_each_connections_own_chat() {
        let p = run_from_ack();
        let user = |chat| {
            let mut acts = vec![Act::Open, send(chat), ack(chat, Some("1"))];
            acts.extend(run_of("1"));
            acts
        };
        let h = conns(&p, vec![("u", user("u-1")), ("v", user("v-1"))]);
        assert_eq!(names(&check(&h)), []);
    }

    #[test]
    fn an_event_of_a_run_announced_to_another_user_is_cross_user() {
        let p = run_from_ack();
        let mut v = vec![Act::Open, send("v-1"), ack("v-1", Some("r-9"))];
        v.extend(run_of("r-9"));
        let u = vec![Act::Open, event(0, Some("r-9"), None)];
        let j = check(&conns(&p, vec![("u", u), ("v", v)]));
        assert_eq!(
            names(&j),
            [(
                Invariant::CrossUser,
                "client received event r-9 (of v-1), produced for user v".to_string()
            )]
        );
        assert_eq!(j.unmatched, []);
    }

    #[test]
    fn a_frame_about_an_id_the_connection_itself_sent_is_its_own_whoever_else_sent_it() {
        // Ids numbered per connection (`m1` on each): the ack each client gets for its own `m1`
        // is its own frame, not one produced for whichever user sent `m1` last.
        let p = Protocol::default();
        let mut u = vec![Act::Open, send("m1"), ack("m1", None)];
        u.extend(run_of("m1"));
        let mut v = vec![Act::Open, send("m1"), ack("m1", None)];
        v.extend(run_of("m1"));
        let j = check(&conns(&p, vec![("u", u), ("v", v)]));
        assert!(
            !names(&j).iter().any(|(i, _)| *i == Invariant::CrossUser),
            "{:?}",
            names(&j)
        );
    }

    #[test]
    fn an_event_of_a_run_nobody_started_is_event_order_and_listed_as_unmatched() {
        // racegate's own protocol: the run id is the chat id, and `zz/m9` was never sent.
        let p = Protocol::default();
        let mut acts = vec![Act::Open, send("u/m1"), ack("u/m1", None)];
        acts.extend(run_of("u/m1"));
        acts.push(event(0, Some("zz/m9"), Some("u")));
        acts.push(event(1, Some("zz/m9"), None));
        acts.push(event(2, None, None));
        let h = conns(&p, vec![("u", acts)]);
        let j = check(&h);
        assert_eq!(
            names(&j),
            [
                (
                    Invariant::EventOrder,
                    "received [agent_started, agent_thinking] of run zz/m9, which is no chat any \
                     client sent: events that match no chat"
                        .to_string()
                ),
                (
                    Invariant::EventOrder,
                    "received [tool_executing] naming no run (`run`): events that match no chat"
                        .to_string()
                ),
            ]
        );
        let reasons: Vec<&str> = j.unmatched.iter().map(|u| u.reason.as_str()).collect();
        assert_eq!(
            reasons,
            [
                "agent_started of run zz/m9, a chat no client sent",
                "agent_thinking of run zz/m9, a chat no client sent",
                "tool_executing names no run (`run`)",
            ]
        );
        assert_eq!(
            tally(&h).out_of_order,
            2,
            "load counts them as out of order"
        );
    }

    #[test]
    fn an_unmatched_event_addressed_to_another_user_is_cross_user_alone() {
        let p = Protocol::default();
        let acts = vec![Act::Open, event(0, Some("zz/m9"), Some("w"))];
        let j = check(&conns(&p, vec![("u", acts)]));
        assert_eq!(
            names(&j),
            [(
                Invariant::CrossUser,
                "client received event zz/m9 addressed to user w".to_string()
            )]
        );
        assert_eq!(j.unmatched, []);
    }

    #[test]
    fn an_ack_for_a_chat_nobody_sent_is_out_of_order_and_counted_by_load() {
        let p = Protocol::default();
        let mut acts = vec![Act::Open, send("u/m1"), ack("u/m1", None)];
        acts.extend(run_of("u/m1"));
        acts.push(ack("ghost/m1", None));
        let h = conns(&p, vec![("u", acts)]);
        let j = check(&h);
        assert_eq!(
            names(&j),
            [(
                Invariant::OutOfOrder,
                "ack ghost/m1 is for a chat no client sent".to_string()
            )]
        );
        assert_eq!(j.unmatched.len(), 1);
        assert_eq!(tally(&h).out_of_order, 1);
    }

    #[test]
    fn a_push_is_checked_for_its_user_with_or_without_an_id() {
        let p = Protocol::default();
        let push = |id: Option<&'static str>, user| {
            Act::Recv(Got::Push {
                id: id.map(b),
                user: Some(b(user)),
            })
        };
        let acts = vec![
            Act::Open,
            push(Some("n1"), "u"),
            push(None, "u"),
            push(None, "w"),
            push(Some("n2"), "w"),
        ];
        let j = check(&conns(&p, vec![("u", acts)]));
        assert_eq!(
            names(&j),
            [
                (
                    Invariant::CrossUser,
                    "client received push addressed to user w".to_string()
                ),
                (
                    Invariant::CrossUser,
                    "client received push n2 addressed to user w".to_string()
                ),
            ]
        );
    }

    #[test]
    fn a_close_code_outside_the_protocols_set_is_abnormal_and_says_which_were_expected() {
        let h = one(vec![
            Act::Connect,
            Act::Open,
            close(4000, "bye"),
            close(1011, ""),
            Act::CloseAnswered { code: Some(1006) },
            Act::CloseAnswered { code: Some(1000) },
            Act::CloseAnswered { code: None },
        ]);
        assert_eq!(
            details(&h, Invariant::AbnormalClose),
            [
                (
                    20,
                    "server closed with 4000 (`bye`); expected one of 1000, 1001, 1008, 1011, 1012, 1013"
                        .to_string()
                ),
                (
                    40,
                    "server answered the client's close with 1006; expected one of 1000, 1001, \
                     1008, 1011, 1012, 1013"
                        .to_string()
                ),
            ]
        );
        let h = one(vec![Act::Connect, Act::Open, close(4000, "")]);
        assert_eq!(
            details(&h, Invariant::AbnormalClose)[0].1,
            "server closed with 4000; expected one of 1000, 1001, 1008, 1011, 1012, 1013"
        );
    }

    #[test]
    fn a_refused_upgrade_is_abnormal_for_an_unexpected_code_or_a_5xx_and_a_drop_always() {
        let refused = |status, code| Act::UpgradeRefused { status, code };
        let h = one(vec![
            Act::Connect,
            refused(403, None),
            refused(499, None),
            refused(500, None),
            refused(403, Some(1008)),
            refused(403, Some(4003)),
            Act::Dropped {
                error: Cow::Borrowed("reset"),
            },
        ]);
        assert_eq!(
            details(&h, Invariant::AbnormalClose),
            [
                (
                    30,
                    "upgrade refused with HTTP 500 and no close code".to_string()
                ),
                (
                    50,
                    "upgrade refused with HTTP 403, close code 4003; expected one of 1000, 1001, \
                     1008, 1011, 1012, 1013"
                        .to_string()
                ),
                (
                    60,
                    "connection ended without a close frame: reset".to_string()
                ),
            ]
        );
    }

    #[test]
    fn an_error_pattern_anywhere_in_an_error_frame_text_frame_or_close_reason_is_accept_first() {
        let error = |message: &'static str| {
            Act::Recv(Got::Error {
                message: Cow::Borrowed(message),
                about: None,
            })
        };
        let h = one(vec![
            Act::Connect,
            Act::Open,
            error("RuntimeError: NOT CONNECTED yet"),
            error("queue full"),
            Act::Recv(Got::Text(Cow::Borrowed("oops: not connected"))),
            Act::Recv(Got::Text(Cow::Borrowed("hello"))),
            close(1011, "WebSocket is not connected"),
            close(1011, "internal error"),
            Act::Raised {
                op: "send",
                error: Cow::Borrowed("Cannot call send"),
            },
        ]);
        assert_eq!(
            details(&h, Invariant::AcceptFirst),
            [
                (
                    20,
                    "error frame `RuntimeError: NOT CONNECTED yet` matches \"not connected\""
                        .to_string()
                ),
                (
                    40,
                    "text frame `oops: not connected` matches \"not connected\"".to_string()
                ),
                (
                    60,
                    "close reason `WebSocket is not connected` matches \"not connected\""
                        .to_string()
                ),
                (80, "send: Cannot call send".to_string()),
            ]
        );
    }

    #[test]
    fn a_quoted_frame_is_cut_after_160_characters() {
        let exact = "é".repeat(QUOTE_CHARS);
        assert_eq!(quote(&exact), format!("`{exact}`"));
        let long = format!("{exact}xyz");
        assert_eq!(quote(&long), format!("`{exact}…`"));
    }

    #[test]
    fn giving_up_on_the_server_is_stuck_with_what_the_client_waited_for() {
        let h = one(vec![
            Act::Connect,
            Act::GaveUp {
                detail: Cow::Borrowed("still waiting for the handshake"),
            },
        ]);
        assert_eq!(
            details(&h, Invariant::Stuck),
            [(10, "still waiting for the handshake".to_string())]
        );
    }

    #[test]
    fn every_chat_received_after_a_later_sent_one_is_out_of_order_not_only_the_first() {
        // Sent m1, m2, m3; acknowledged m3, m1, m2: m1 and m2 each come after m3, which was
        // sent after both. Both are reported, against the latest-sent chat seen so far.
        let h = one(vec![
            Act::Open,
            send("u/m1"),
            send("u/m2"),
            send("u/m3"),
            ack("u/m3", None),
            ack("u/m1", None),
            ack("u/m2", None),
        ]);
        let got: Vec<String> = details(&h, Invariant::OutOfOrder)
            .into_iter()
            .map(|(_, d)| d)
            .collect();
        assert_eq!(
            got,
            [
                "ack u/m1 received after u/m3, but was sent before it",
                "ack u/m2 received after u/m3, but was sent before it",
            ]
        );
    }

    #[test]
    fn a_chat_received_after_a_later_sent_one_is_out_of_order_after_an_in_order_start() {
        // Sent m1, m2, m3; acknowledged m1, m3, m2: the start is in order, then m2 comes after
        // m3, which was sent after it.
        let h = one(vec![
            Act::Open,
            send("u/m1"),
            send("u/m2"),
            send("u/m3"),
            ack("u/m1", None),
            ack("u/m3", None),
            ack("u/m2", None),
        ]);
        assert_eq!(
            details(&h, Invariant::OutOfOrder),
            [(
                60,
                "ack u/m2 received after u/m3, but was sent before it".to_string()
            )]
        );
    }

    #[test]
    fn an_answered_chat_counts_as_answered_only_once_its_run_is_complete() {
        let mut acts = vec![Act::Open, send("u/m1"), ack("u/m1", None)];
        acts.extend((0..3).map(|i| event(i, Some("u/m1"), None)));
        let cut_short = one(acts.clone());
        assert_eq!(tally(&cut_short).answered, 0);
        acts.extend((3..5).map(|i| event(i, Some("u/m1"), None)));
        assert_eq!(tally(&one(acts)).answered, 1);
    }

    #[test]
    fn a_refusal_excuses_a_run_cut_short_but_not_one_whose_events_came_out_of_order() {
        let refusal = || {
            Act::Recv(Got::Error {
                message: b("chat u/m1 refused"),
                about: Some(b("u/m1")),
            })
        };
        // The first two events, in order, then the refusal: excused.
        let cut = one(vec![
            Act::Open,
            send("u/m1"),
            ack("u/m1", None),
            event(0, Some("u/m1"), None),
            event(1, Some("u/m1"), None),
            refusal(),
        ]);
        assert_eq!(details(&cut, Invariant::EventOrder), []);
        // The same two events the other way round: a refusal does not make that order right.
        let swapped = one(vec![
            Act::Open,
            send("u/m1"),
            ack("u/m1", None),
            event(1, Some("u/m1"), None),
            event(0, Some("u/m1"), None),
            refusal(),
        ]);
        assert_eq!(details(&swapped, Invariant::EventOrder).len(), 1);
    }

    #[test]
    fn events_arriving_while_the_clients_scheduled_close_is_under_way_are_cut_short_by_it() {
        // The ack and the first event, then the client closes on schedule, then one more event
        // the server had sent before it saw the close: the run was cut by the close.
        let during_close = one(vec![
            Act::Open,
            send("u/m1"),
            ack("u/m1", None),
            event(0, Some("u/m1"), None),
            Act::ClientClose { scheduled: true },
            event(1, Some("u/m1"), None),
            Act::CloseAnswered { code: Some(1000) },
        ]);
        let j = check(&during_close);
        assert_eq!(details(&during_close, Invariant::EventOrder), []);
        assert_eq!(j.indeterminate.len(), 1, "{j:?}");
        assert!(j.indeterminate[0].reason.contains("cut short after 2 of 5"));
        // A close after waiting for answers excuses nothing: the run stopped on its own.
        let waited = one(vec![
            Act::Open,
            send("u/m1"),
            ack("u/m1", None),
            event(0, Some("u/m1"), None),
            Act::ClientClose { scheduled: false },
            event(1, Some("u/m1"), None),
        ]);
        assert_eq!(details(&waited, Invariant::EventOrder).len(), 1);
        // An ending before the chat was sent cuts nothing of its run.
        let before = one(vec![
            Act::Open,
            Act::ClientClose { scheduled: true },
            send("u/m1"),
            ack("u/m1", None),
            event(0, Some("u/m1"), None),
        ]);
        assert_eq!(details(&before, Invariant::EventOrder).len(), 1);
    }

    #[test]
    fn what_only_the_apps_side_shows_breaks_its_own_invariant_and_settles_no_chat() {
        let h = one(vec![
            Act::Open,
            send("u/m1"),
            Act::Raised {
                op: "close",
                error: b("the app closed after the client's disconnect reached it"),
            },
            Act::AppRaised {
                error: b("ValueError: boom"),
            },
            Act::HandlerPending {
                name: b("chat (app.py)"),
            },
            Act::TaskPending {
                name: b("heartbeat (app.py)"),
            },
        ]);
        assert_eq!(
            details(&h, Invariant::AcceptFirst),
            [(
                20,
                "close: the app closed after the client's disconnect reached it".into()
            )]
        );
        assert_eq!(
            details(&h, Invariant::AbnormalClose),
            [(30, "an exception escaped the app: ValueError: boom".into())]
        );
        assert_eq!(
            details(&h, Invariant::Stuck),
            [(
                40,
                "the app's handler chat (app.py) had not returned at the end of the run, after \
                 its client left"
                    .into()
            )]
        );
        assert_eq!(
            details(&h, Invariant::Leak),
            [(
                50,
                "task heartbeat (app.py), spawned while serving this connection, was still \
                 pending at the end of the run, after the connection ended"
                    .into()
            )]
        );
        // The chat's fate is the client's business: unanswered and not cut off, it is lost.
        assert_eq!(details(&h, Invariant::MessageLost).len(), 1);
        // Without them, only the loss.
        let plain = one(vec![Act::Open, send("u/m1")]);
        let j = check(&plain);
        assert_eq!(j.violations.len(), 1, "{j:?}");
    }

    #[test]
    fn a_chat_refused_by_an_error_frame_is_counted_as_refused() {
        let h = one(vec![
            Act::Open,
            send("u/m1"),
            send("u/m2"),
            Act::Recv(Got::Error {
                message: b("chat u/m1 refused"),
                about: Some(b("u/m1")),
            }),
            Act::Recv(Got::Error {
                message: b("chat u/m2 refused"),
                about: Some(b("u/m2")),
            }),
        ]);
        assert_eq!(tally(&h).refused, 2);
    }

    #[test]
    fn a_frame_about_a_chat_the_connection_never_sent_is_not_its_own() {
        // Ids numbered per connection (`m1` on each): v sent m1; u's m1 was never sent, its run
        // ended first. The ack for m1 that reached u before that can only be v's.
        let protocol = Protocol::default();
        let h = conns(
            &protocol,
            vec![
                ("v", vec![Act::Open, send("m1")]),
                (
                    "u",
                    vec![
                        Act::Open,
                        ack("m1", None),
                        Act::Unsent {
                            id: b("m1"),
                            reason: b("the run ended before it was due"),
                        },
                    ],
                ),
            ],
        );
        assert_eq!(
            details(&h, Invariant::CrossUser),
            [(
                10,
                "client received ack m1, produced for user v".to_string()
            )]
        );
    }

    #[test]
    fn a_chat_the_connection_meant_to_send_does_not_make_another_users_ack_its_own() {
        // u never got to send u/m1; the ack it receives is for v's chat: cross-user, however
        // many chats of its own u left unsent.
        let protocol = Protocol::default();
        let h = conns(
            &protocol,
            vec![
                ("v", vec![Act::Open, send("v/m1")]),
                (
                    "u",
                    vec![
                        Act::Open,
                        Act::Unsent {
                            id: b("u/m1"),
                            reason: b("the run ended before it was due"),
                        },
                        ack("v/m1", None),
                    ],
                ),
            ],
        );
        let got = details(&h, Invariant::CrossUser);
        assert_eq!(
            got,
            [(
                20,
                "client received ack v/m1, produced for user v".to_string()
            )]
        );
    }

    /// Connection `u` and `u#2`, both the user `u`'s (unless `same_user` is false: then `u#2`
    /// is a user of its own), 10 ms apart within each.
    fn tabs(
        same_user: bool,
        first: Vec<Act<'static>>,
        second: Vec<Act<'static>>,
    ) -> History<'static> {
        let mut h = conns(&DEFAULT_PROTOCOL, vec![("u", first), ("u#2", second)]);
        if same_user {
            h.set_user("u#2", "u");
        }
        h
    }

    fn ack_for(id: &'static str, user: &'static str) -> Act<'static> {
        Act::Recv(Got::Ack {
            id: b(id),
            user: Some(b(user)),
            run: None,
        })
    }

    fn violations_of(h: &History<'_>) -> Vec<(Invariant, String, String)> {
        check(h)
            .violations
            .into_iter()
            .map(|v| (v.invariant, v.user, v.detail))
            .collect()
    }

    #[test]
    fn a_users_answer_on_its_other_connection_is_its_own_not_cross_user_and_answers_the_chat() {
        // u sends u/m1 and leaves on schedule; its reconnect u#2 gets the ack and the whole run.
        let mut second = vec![Act::Open, ack_for("u/m1", "u")];
        second.extend((0..5).map(|i| event(i, Some("u/m1"), Some("u"))));
        let first = vec![
            Act::Open,
            send("u/m1"),
            Act::ClientClose { scheduled: true },
        ];
        let same = tabs(true, first.clone(), second.clone());
        let j = check(&same);
        assert_eq!(violations_of(&same), [], "{j:?}");
        assert_eq!(
            j.indeterminate,
            [],
            "answered on the reconnect: not indeterminate"
        );
        assert_eq!(tally(&same).answered, 1);
        // The same frames on another user's connection: each one is cross-user, and u's chat
        // is left indeterminate by its own close.
        let other = tabs(false, first, second);
        let j = check(&other);
        let crossed: Vec<(String, String)> = j
            .violations
            .iter()
            .map(|v| (v.user.clone(), v.detail.clone()))
            .collect();
        assert_eq!(crossed.len(), 6, "{crossed:?}");
        assert_eq!(
            crossed[0],
            (
                "u#2".to_string(),
                "client received ack u/m1 addressed to user u".to_string()
            )
        );
        assert_eq!(j.indeterminate.len(), 1);
        assert_eq!(j.indeterminate[0].user, "u");
    }

    #[test]
    fn a_frame_about_another_users_chat_is_cross_user_on_any_connection_of_the_receiver() {
        // v sent v/m1; the ack (naming no user) reaches u's second connection.
        let mut h = conns(
            &DEFAULT_PROTOCOL,
            vec![
                ("v", vec![Act::Open, send("v/m1")]),
                ("u", vec![Act::Open]),
                ("u#2", vec![Act::Open, ack("v/m1", None)]),
            ],
        );
        h.set_user("u#2", "u");
        assert_eq!(
            details(&h, Invariant::CrossUser),
            [(
                10,
                "client received ack v/m1, produced for user v".to_string()
            )]
        );
        // Produced for the user of a relabelled connection: named by its user, not its label.
        let mut h = conns(
            &DEFAULT_PROTOCOL,
            vec![
                ("v", vec![Act::Open]),
                ("v#2", vec![Act::Open, send("v/m2")]),
                ("u", vec![Act::Open, ack("v/m2", None)]),
            ],
        );
        h.set_user("v#2", "v");
        assert_eq!(
            details(&h, Invariant::CrossUser),
            [(
                10,
                "client received ack v/m2, produced for user v".to_string()
            )]
        );
        assert_eq!(h.user_of("v#2"), "v");
        assert_eq!(
            h.user_of("u"),
            "u",
            "a first connection's label is its user"
        );
    }

    #[test]
    fn a_run_is_judged_for_event_order_on_the_connection_its_ack_reached() {
        // The ack and two events reach the reconnect, which then closes after waiting.
        let second = vec![
            Act::Open,
            ack_for("u/m1", "u"),
            event(0, Some("u/m1"), Some("u")),
            event(1, Some("u/m1"), Some("u")),
            Act::ClientClose { scheduled: false },
        ];
        let h = tabs(true, vec![Act::Open, send("u/m1")], second);
        let j = check(&h);
        let found: Vec<(Invariant, String)> = j
            .violations
            .iter()
            .map(|v| (v.invariant, v.user.clone()))
            .collect();
        assert_eq!(found, [(Invariant::EventOrder, "u#2".to_string())], "{j:?}");
        assert!(
            j.violations[0]
                .detail
                .starts_with("run u/m1 got [agent_started, agent_thinking]")
        );
    }

    #[test]
    fn an_ack_for_a_push_id_on_another_connection_of_its_user_starts_no_run() {
        // u#2 gets an ack naming the push u/p1 issued for u: a push is no chat, so no run of it
        // is expected (as on the push's own connection).
        let h = tabs(
            true,
            vec![
                Act::Open,
                Act::PushIssued { id: b("u/p1") },
                Act::Recv(Got::Push {
                    id: Some(b("u/p1")),
                    user: Some(b("u")),
                }),
            ],
            vec![Act::Open, ack_for("u/p1", "u")],
        );
        assert_eq!(violations_of(&h), []);
    }

    #[test]
    fn a_push_delivered_to_another_connection_of_its_user_is_delivered() {
        let issued = vec![Act::Open, Act::PushIssued { id: b("u/p1") }];
        let got = vec![
            Act::Open,
            Act::Recv(Got::Push {
                id: Some(b("u/p1")),
                user: Some(b("u")),
            }),
        ];
        assert_eq!(violations_of(&tabs(true, issued.clone(), got)), []);
        // Delivered nowhere: lost.
        assert_eq!(
            violations_of(&tabs(true, issued, vec![Act::Open])),
            [(
                Invariant::MessageLost,
                "u".to_string(),
                "u/p1 was never delivered and never rejected".to_string()
            )]
        );
    }

    #[test]
    fn a_refusal_or_a_drop_on_another_connection_of_its_user_is_its_fate() {
        let sent = vec![Act::Open, send("u/m1")];
        let refused = tabs(
            true,
            sent.clone(),
            vec![Act::Recv(Got::Error {
                message: b("message u/m1 rejected: closed"),
                about: Some(b("u/m1")),
            })],
        );
        assert_eq!(violations_of(&refused), []);
        assert_eq!(tally(&refused).refused, 1);
        let dropped = tabs(
            true,
            sent,
            vec![Act::ServerDropped {
                id: b("u/m1"),
                reason: b("no handler"),
            }],
        );
        assert_eq!(
            violations_of(&dropped),
            [(
                Invariant::MessageLost,
                "u".to_string(),
                "u/m1 dropped: no handler".to_string()
            )]
        );
    }

    #[test]
    fn the_clients_own_drop_cuts_a_chat_off_as_its_scheduled_close_does_and_is_not_abnormal() {
        // Without a server trace: indeterminate, and a drop of the client's own is no
        // abnormal close.
        let h = one(vec![Act::Open, send("u/m1"), Act::ClientDrop]);
        let j = check(&h);
        assert_eq!(j.violations, []);
        assert_eq!(
            j.indeterminate[0].reason,
            "the client dropped its connection on schedule before the answer came"
        );
        // With one (the replay): the server owes an account of it, as after a close.
        let h = one(vec![Act::Served, Act::Open, send("u/m1"), Act::ClientDrop]);
        assert_eq!(
            details(&h, Invariant::MessageLost),
            [(
                20,
                "u/m1 was never delivered and never rejected".to_string()
            )]
        );
        // Its run's events cut short by it: indeterminate too.
        let h = one(vec![
            Act::Open,
            send("u/m1"),
            ack("u/m1", None),
            event(0, Some("u/m1"), None),
            Act::ClientDrop,
        ]);
        let j = check(&h);
        assert_eq!(j.violations, []);
        assert!(j.indeterminate[0].reason.contains("cut short after 1 of 5"));
    }

    #[test]
    fn with_no_run_events_an_acknowledged_chat_counts_as_answered() {
        let p = Protocol {
            events: vec![],
            ..Protocol::default()
        };
        let h = conns(
            &p,
            vec![("u", vec![Act::Open, send("u/m1"), ack("u/m1", None)])],
        );
        assert_eq!(tally(&h).answered, 1);
    }
}
