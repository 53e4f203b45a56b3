//! From lifecycle events to a [`Scenario`]: one function per thing a scenario needs, whichever
//! log the events came from (racegate's own lines, or an application's through a mapping).
//!
//! Every inference is a stated assumption, listed in the module doc of [`super`] and in the
//! header comment of the file `racegate import` writes:
//!
//! - [`timeline`]: times are racegate's own `at_ms` when every event has one, else timestamps
//!   relative to the earliest; events are ordered by time, ties in log order.
//! - [`connections`]: a user's connection starts at its `Connect` (else its `connecting` state,
//!   else its first event), and a user's second `Connect` starts a second connection of that
//!   user (a reconnect: a repeated `[[user]]` id), to which its later events belong; its client
//!   sees the socket open at its `Open` (else its `accepted` state).
//! - [`phase_durations`]: each phase lasts the gap between consecutive setup states, the median
//!   over connections; a failed setup gives `fail_at` and the failing phase's duration.
//! - [`settings`]: what no event shows comes from racegate's `run_start` line, else a default.
//! - [`user`]: chats at their time after the open, pushes after the connect, chats that never
//!   left just past the moment the client gave up.
//! - [`client_closes`], [`place_never_sent`]: a client's own close is its `close_ms`, unless it
//!   is the replay's end-of-run close.
//! - [`production`]: the first sighting of each invariant per user, on the same clock.

use std::collections::{BTreeMap, BTreeSet};

use indexmap::IndexMap;

use super::ImportError;
use crate::endpoint::EndpointKind;
use crate::invariant::Invariant;
use crate::scenario::{
    InvariantMatch, PRODUCTION, Phase, Scenario, ServerConfig, Symptom, Timed, User, Verdict,
};

/// The lifecycle events import uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Ev {
    Connect,
    Open,
    Send(String),
    Unsent(String),
    Close,
    ClientClosed,
    PushIssued(String),
    State(String),
    Terminal(String),
    ServerClose(u16),
    Rejected(String),
    /// An agent event frame the client received, by run id.
    Agent(String),
    /// Setup failed in this phase, as the log says outright (a mapping's `failed` rule).
    Failed(Phase),
}

/// One event of one connection, with whichever clocks its line gave.
#[derive(Debug, Clone)]
pub(super) struct Event {
    /// Milliseconds since the run began (racegate's own `at_ms`).
    pub at_ms: Option<u64>,
    /// Milliseconds since the Unix epoch.
    pub ts_ms: Option<i64>,
    /// The connection, which is also the scenario's user id.
    pub user: String,
    pub ev: Ev,
}

/// A production symptom as the log showed it.
#[derive(Debug, Clone)]
pub(super) struct Sighting {
    /// Milliseconds since the Unix epoch.
    pub ts_ms: i64,
    /// The connection it was logged for (a scenario user id).
    pub user: String,
    pub invariant: Invariant,
}

/// Settings no lifecycle event shows: racegate's `run_start` line.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct Header {
    pub accept_ms: Option<u64>,
    pub auth_ms: Option<u64>,
    pub services_ms: Option<u64>,
    pub register_ms: Option<u64>,
    pub heartbeat_ms: Option<u64>,
    pub event_gap_ms: Option<u64>,
    pub queue_capacity: Option<u64>,
    pub queue_bytes: Option<u64>,
    pub settle_ms: Option<u64>,
}

/// Everything one run's lines said.
#[derive(Debug, Default)]
pub(super) struct Run {
    pub events: Vec<Event>,
    pub header: Option<Header>,
    /// racegate's `run_end`: when the replay stopped.
    pub end_ms: Option<u64>,
    pub symptoms: Vec<Sighting>,
}

/// A scenario, and what it took from defaults rather than the log.
#[derive(Debug)]
pub(super) struct Inferred {
    pub scenario: Scenario,
    /// Settings that came from no event and no `run_start` line.
    pub defaulted: Vec<&'static str>,
    /// Symptoms logged for a connection with no lifecycle event, which the scenario cannot hold.
    pub orphaned: usize,
}

/// Infers `run`'s scenario.
pub(super) fn infer(run: &Run, name: String, description: String) -> Result<Inferred, ImportError> {
    let (events, origin) = timeline(run);
    let conns = connections(&events);
    let (observed, fail_at) = phase_durations(&conns);
    let mut defaulted = Vec::new();
    let (server, settle_ms) = settings(
        observed,
        agent_gaps(&conns),
        run.header.unwrap_or_default(),
        &mut defaulted,
    );
    let mut users: Vec<(&Conn, User)> = conns
        .iter()
        .map(|(key, c)| (c, user(key.0, c, fail_at.get(key).copied())))
        .collect();
    users.sort_by_key(|(_, u)| u.connect_ms);
    let (production, orphaned) = production(&run.symptoms, origin, &users);

    let mut scenario = Scenario {
        name,
        description: Some(description),
        file: Default::default(),
        server,
        users: users.iter().map(|(_, u)| u.clone()).collect(),
        expect: IndexMap::new(),
        expect_invariants: IndexMap::new(),
        settle_ms,
        protocol: Default::default(),
        production,
    };
    // With the run's end and settle time known, the replay's own end-of-run close happens at
    // the horizon.
    let horizon = match (run.end_ms, run.header.and_then(|h| h.settle_ms)) {
        (Some(end), Some(settle)) => end.checked_sub(settle),
        _ => None,
    };
    let conns: Vec<&Conn> = users.iter().map(|(c, _)| *c).collect();
    client_closes(&mut scenario, &conns, horizon);
    place_never_sent(&mut scenario, &conns, horizon);
    check_limits(&scenario)?;
    Ok(Inferred {
        scenario,
        defaulted,
        orphaned,
    })
}

/// The events on one clock, in time order, and that clock's origin on the Unix epoch (0 for
/// racegate's own `at_ms`).
fn timeline(run: &Run) -> (Vec<(u64, &str, &Ev)>, i64) {
    // Times: racegate's own `at_ms` (ms since the run began) when every event has it, else the
    // timestamps, relative to the earliest (a symptom logged before any lifecycle event too).
    let relative = run.events.iter().all(|e| e.at_ms.is_some());
    let origin = if relative {
        0
    } else {
        run.events
            .iter()
            .filter_map(|e| e.ts_ms)
            .chain(run.symptoms.iter().map(|s| s.ts_ms))
            .min()
            .unwrap_or(0)
    };
    let mut events: Vec<(u64, &str, &Ev)> = run
        .events
        .iter()
        .filter_map(|e| {
            let t = if relative {
                e.at_ms?
            } else {
                u64::try_from(e.ts_ms?.checked_sub(origin)?).ok()?
            };
            Some((t, e.user.as_str(), &e.ev))
        })
        .collect();
    // Exports are often newest first; a stable sort keeps same-time events in log order.
    events.sort_by_key(|e| e.0);
    (events, origin)
}

/// One connection's events, by kind, on the run's clock.
#[derive(Default)]
struct Conn {
    connect: Option<u64>,
    first_seen: u64,
    open: Option<u64>,
    states: Vec<(u64, String)>,
    sends: Vec<(u64, String)>,
    unsent: Vec<(u64, String)>,
    rejected: Vec<(u64, String)>,
    pushes: Vec<(u64, String)>,
    closes: Vec<u64>,
    server_close: Option<(u64, u16)>,
    failed: Option<u64>,
    /// The phase a `failed` event named, and when.
    failed_in: Option<(u64, Phase)>,
    agent: BTreeMap<String, Vec<u64>>,
}

impl Conn {
    /// Notes one event of this connection at `t`.
    fn add(&mut self, t: u64, ev: &Ev) {
        match ev {
            Ev::Connect => {
                self.connect.get_or_insert(t);
            }
            Ev::Open => {
                self.open.get_or_insert(t);
            }
            Ev::Send(id) => self.sends.push((t, id.clone())),
            Ev::Unsent(id) => self.unsent.push((t, id.clone())),
            Ev::Rejected(id) => self.rejected.push((t, id.clone())),
            Ev::PushIssued(id) => self.pushes.push((t, id.clone())),
            Ev::Close => self.closes.push(t),
            // What the client saw of the end says nothing the scenario needs beyond the
            // connection being there.
            Ev::ClientClosed => {}
            Ev::State(s) => {
                if s == "failed" {
                    self.failed.get_or_insert(t);
                }
                self.states.push((t, s.clone()));
            }
            Ev::Terminal(s) => {
                if s == "failed" {
                    self.failed.get_or_insert(t);
                }
            }
            Ev::ServerClose(code) => {
                self.server_close.get_or_insert((t, *code));
            }
            Ev::Agent(run) => self.agent.entry(run.clone()).or_default().push(t),
            Ev::Failed(phase) => {
                self.failed.get_or_insert(t);
                self.failed_in.get_or_insert((t, *phase));
            }
        }
    }
}

const SETUP: [&str; 5] = [
    "connecting",
    "accepted",
    "authenticated",
    "services_ready",
    "processing_ready",
];

/// Folds the timeline into connections, in order of first appearance.
fn connections<'a>(events: &[(u64, &'a str, &Ev)]) -> IndexMap<ConnKey<'a>, Conn> {
    let mut conns: IndexMap<ConnKey<'a>, Conn> = IndexMap::new();
    // Each user's latest connection, by its number.
    let mut latest: IndexMap<&str, usize> = IndexMap::new();
    for &(t, label, ev) in events {
        // racegate's own logs label a user's later connections `id#2`, `id#3`…
        if let Some((user, k)) = label.rsplit_once('#')
            && let Ok(k) = k.parse::<usize>()
            && k >= 2
        {
            let c = conns.entry((user, k)).or_insert_with(|| Conn {
                first_seen: t,
                ..Conn::default()
            });
            c.add(t, ev);
            continue;
        }
        let user = label;
        let k = *latest.entry(user).or_insert(1);
        let k = match (ev, conns.get(&(user, k))) {
            // Another connect of a user whose connection connected earlier: a reconnect (the
            // same line twice, from two copies of one log, is the same connect).
            (Ev::Connect, Some(c)) if c.connect.is_some_and(|first| t > first) => {
                latest.insert(user, k + 1);
                k + 1
            }
            _ => k,
        };
        let c = conns.entry((user, k)).or_insert_with(|| Conn {
            first_seen: t,
            ..Conn::default()
        });
        c.add(t, ev);
    }
    for c in conns.values_mut() {
        let connecting = c
            .states
            .iter()
            .find(|(_, s)| s == "connecting")
            .map(|(t, _)| *t);
        c.connect = Some(c.connect.or(connecting).unwrap_or(c.first_seen));
        if c.open.is_none() {
            c.open = c
                .states
                .iter()
                .find(|(_, s)| s == "accepted")
                .map(|(t, _)| *t);
        }
    }
    conns
}

/// Each phase's observed durations, `[accept, auth, services, register]`, and the users whose
/// setup failed, with the phase.
type Phases<'a> = ([Vec<u64>; 4], BTreeMap<ConnKey<'a>, Phase>);

/// A connection: its user, and which of that user's connections it is (from 1).
type ConnKey<'a> = (&'a str, usize);

/// Phase durations from the gaps between consecutive setup states of each connection, plus the
/// failing phase of each failed setup.
fn phase_durations<'a>(conns: &IndexMap<ConnKey<'a>, Conn>) -> Phases<'a> {
    let mut observed: [Vec<u64>; 4] = Default::default();
    let mut fail_at: BTreeMap<ConnKey<'a>, Phase> = BTreeMap::new();
    for (user, c) in conns {
        let at = |name: &str| c.states.iter().find(|(_, s)| s == name).map(|(t, _)| *t);
        let mut prev = c.connect;
        for (i, state) in SETUP.iter().enumerate().skip(1) {
            match (prev, at(state)) {
                (Some(p), Some(t)) if t >= p => {
                    observed[i - 1].push(t - p);
                    prev = Some(t);
                }
                _ => break,
            }
        }
        if let Some((phase, started, failed)) = setup_failure(c) {
            let slot = match phase {
                Phase::Auth => 1,
                Phase::Services => 2,
                Phase::Register => 3,
            };
            if let Some(started) = started {
                observed[slot].push(failed.saturating_sub(started));
            }
            fail_at.insert(*user, phase);
        }
    }
    (observed, fail_at)
}

/// The setup phase a connection failed in, when that phase started (if the log shows it) and
/// when it failed. A `failed` event names its phase; otherwise a failure close (1008 after
/// `accepted`, 1011 after `authenticated` or `services_ready`), or a `failed` state, says which.
/// Either way the client must not have caused it by closing first.
fn setup_failure(c: &Conn) -> Option<(Phase, Option<u64>, u64)> {
    let failed_at = match (c.server_close, c.failed) {
        (Some((t, _)), _) => t,
        (None, Some(t)) => t,
        (None, None) => return None,
    };
    if let Some((t, phase)) = c.failed_in {
        if c.closes.first().is_some_and(|&close| close <= t) {
            return None;
        }
        let starts = match phase {
            Phase::Auth => "accepted",
            Phase::Services => "authenticated",
            Phase::Register => "services_ready",
        };
        let since = c
            .states
            .iter()
            .find(|(at, s)| *at <= t && s == starts)
            .map(|(at, _)| *at);
        return Some((phase, since, t));
    }
    if c.closes.first().is_some_and(|&t| t <= failed_at) {
        return None;
    }
    let (since, last) = c
        .states
        .iter()
        .rev()
        .find(|(t, s)| *t <= failed_at && SETUP.contains(&s.as_str()))?;
    let phase = match (last.as_str(), c.server_close.map(|(_, code)| code)) {
        ("accepted", Some(1008) | None) => Phase::Auth,
        ("authenticated", Some(1011) | None) => Phase::Services,
        ("services_ready", Some(1011) | None) => Phase::Register,
        _ => return None,
    };
    Some((phase, Some(*since), failed_at))
}

/// The agent events' spacing: every gap between consecutive events of one run.
fn agent_gaps(conns: &IndexMap<ConnKey<'_>, Conn>) -> Vec<u64> {
    let mut gaps = Vec::new();
    for c in conns.values() {
        for times in c.agent.values() {
            gaps.extend(times.windows(2).map(|w| w[1] - w[0]));
        }
    }
    gaps
}

/// The lower median: deterministic, and one of the observed values.
fn median(mut v: Vec<u64>) -> Option<u64> {
    v.sort_unstable();
    v.get(v.len().saturating_sub(1) / 2).copied()
}

/// The server's settings and the settle time: observed medians, else the `run_start` header,
/// else the defaults, each default named in `defaulted`.
fn settings(
    observed: [Vec<u64>; 4],
    gaps: Vec<u64>,
    header: Header,
    defaulted: &mut Vec<&'static str>,
) -> (ServerConfig, u64) {
    let mut pick = |observed: Vec<u64>, header: Option<u64>, default: u64, name: &'static str| {
        median(observed).or(header).unwrap_or_else(|| {
            defaulted.push(name);
            default
        })
    };
    let d = ServerConfig::default();
    let [accept, auth, services, register] = observed;
    let server = ServerConfig {
        accept_ms: pick(accept, header.accept_ms, 0, "accept_ms"),
        auth_ms: pick(auth, header.auth_ms, 0, "auth_ms"),
        services_ms: pick(services, header.services_ms, 0, "services_ms"),
        register_ms: pick(register, header.register_ms, 0, "register_ms"),
        heartbeat_ms: pick(
            Vec::new(),
            header.heartbeat_ms,
            d.heartbeat_ms,
            "heartbeat_ms",
        ),
        event_gap_ms: pick(gaps, header.event_gap_ms, d.event_gap_ms, "event_gap_ms"),
        queue_capacity: pick(
            Vec::new(),
            header.queue_capacity,
            d.queue_capacity as u64,
            "queue_capacity",
        ) as usize,
        queue_bytes: pick(
            Vec::new(),
            header.queue_bytes,
            d.queue_bytes as u64,
            "queue_bytes",
        ) as usize,
    };
    let settle_ms = pick(Vec::new(), header.settle_ms, 1000, "settle_ms");
    (server, settle_ms)
}

/// One connection as a `[[user]]`: chats after its open, pushes after its connect.
fn user(id: &str, c: &Conn, fail_at: Option<Phase>) -> User {
    let connect = c.connect.unwrap_or(c.first_seen);
    let sent: BTreeSet<&str> = c.sends.iter().map(|(_, id)| id.as_str()).collect();
    let pushed: BTreeSet<&str> = c.pushes.iter().map(|(_, id)| id.as_str()).collect();
    let mut sends: Vec<Timed> = c
        .sends
        .iter()
        .map(|(t, id)| Timed {
            at_ms: t.saturating_sub(c.open.unwrap_or(connect)),
            text: id.clone(),
        })
        .collect();
    // Chats that never left: their time is only bounded below (after the moment the client
    // gave up), so they go just past it.
    let mut never: Vec<&(u64, String)> = c.unsent.iter().collect();
    never.extend(
        c.rejected
            .iter()
            .filter(|(_, id)| !sent.contains(id.as_str()) && !pushed.contains(id.as_str())),
    );
    let mut seen = BTreeSet::new();
    for (t, id) in never {
        if seen.insert(id.as_str()) {
            let at_ms = match c.open {
                Some(open) => t.saturating_sub(open) + 1,
                None => t.saturating_sub(connect),
            };
            sends.push(Timed {
                at_ms,
                text: id.clone(),
            });
        }
    }
    let pushes = c
        .pushes
        .iter()
        .map(|(t, id)| Timed {
            at_ms: t.saturating_sub(connect),
            text: id.clone(),
        })
        .collect();
    User {
        id: id.to_string(),
        connect_ms: connect,
        fail_at,
        close_ms: None,
        drop_ms: None,
        sends,
        pipelined: 0,
        pushes,
    }
}

/// A client's own close is its `close_ms`, unless it is the replay's end-of-run close, which
/// happens at the `horizon`, or it comes before a chat the same connection sent (a close the
/// log cannot have meant for it: the client then waits for its answers, as it does with no
/// `close_ms`). `conns` are in the order of `scenario.users`.
fn client_closes(scenario: &mut Scenario, conns: &[&Conn], horizon: Option<u64>) {
    for (u, c) in scenario.users.iter_mut().zip(conns) {
        let Some(&close) = c.closes.first() else {
            continue;
        };
        let last_send = c.sends.iter().map(|(t, _)| *t).max();
        if horizon.is_none_or(|h| close < h) && last_send.is_none_or(|s| close >= s) {
            u.close_ms = Some(close.saturating_sub(u.connect_ms));
        }
    }
}

/// Chats that never left bound their time from below only; if the run's horizon says the
/// latest scheduled activity was later, one of them was it.
fn place_never_sent(scenario: &mut Scenario, conns: &[&Conn], horizon: Option<u64>) {
    let Some(h) = horizon else { return };
    if crate::runner::horizon_ms(scenario) >= h {
        return;
    }
    let events = crate::trace::AgentEvent::RUN.len();
    let fixed = scenario.server.setup_ms() + crate::schedule::tail_ms(scenario, events);
    let never_sent = conns.iter().map(|c| c.sends.len());
    for (u, sent) in scenario.users.iter_mut().zip(never_sent) {
        if u.sends.len() > sent
            && let Some(last) = u.sends.last_mut()
        {
            last.at_ms = last.at_ms.max(h.saturating_sub(fixed + u.connect_ms));
            break;
        }
    }
}

/// The first sighting of each invariant per user, on the scenario's clock, ordered by time; and
/// how many sightings belonged to no `[[user]]` (a connection with no lifecycle event).
fn production(
    sightings: &[Sighting],
    origin: i64,
    users: &[(&Conn, User)],
) -> (Vec<Symptom>, usize) {
    let ids: BTreeSet<&str> = users.iter().map(|(_, u)| u.id.as_str()).collect();
    let mut first: BTreeMap<(&str, Invariant), u64> = BTreeMap::new();
    let mut orphaned = 0;
    for s in sightings {
        if !ids.contains(s.user.as_str()) {
            orphaned += 1;
            continue;
        }
        let at = u64::try_from(s.ts_ms.saturating_sub(origin)).unwrap_or(0);
        let slot = first.entry((s.user.as_str(), s.invariant)).or_insert(at);
        *slot = (*slot).min(at);
    }
    let mut out: Vec<Symptom> = first
        .into_iter()
        .map(|((user, invariant), at_ms)| Symptom {
            invariant,
            user: user.to_string(),
            at_ms,
        })
        .collect();
    out.sort_by(|a, b| (a.at_ms, &a.user, a.invariant).cmp(&(b.at_ms, &b.user, b.invariant)));
    (out, orphaned)
}

/// The symptoms become the expectation: the production endpoint's model fails with exactly the
/// invariants production showed, and the fix passes. Without symptoms only the fix is gated.
pub(super) fn expect_production(scenario: &mut Scenario) {
    scenario.expect.clear();
    scenario.expect_invariants.clear();
    let seen: BTreeSet<Invariant> = scenario.production.iter().map(|s| s.invariant).collect();
    if !seen.is_empty() {
        scenario.expect.insert(PRODUCTION, Verdict::Fail);
        scenario
            .expect_invariants
            .insert(PRODUCTION, InvariantMatch::Exactly(seen));
    }
    scenario
        .expect
        .insert(EndpointKind::StateMachine, Verdict::Pass);
}

/// The scenario format's limit on any one time: a day.
const MAX_MS: u64 = 86_400_000;

/// Refuses a scenario the format cannot hold (a log spanning more than a day, say), naming the
/// first time past the limit. Ids are unique and non-empty by construction.
fn check_limits(s: &Scenario) -> Result<(), ImportError> {
    let too_long = |what: String, ms: u64| Err(ImportError::TooLong { what, ms });
    let c = &s.server;
    let server = [
        ("accept_ms", c.accept_ms),
        ("auth_ms", c.auth_ms),
        ("services_ms", c.services_ms),
        ("register_ms", c.register_ms),
        ("heartbeat_ms", c.heartbeat_ms),
        ("event_gap_ms", c.event_gap_ms),
        ("settle_ms", s.settle_ms),
    ];
    if let Some((k, v)) = server.into_iter().find(|(_, v)| *v > MAX_MS) {
        return too_long(k.to_string(), v);
    }
    // The message is formatted only for the time that is too long: a scenario of a million-line
    // log has hundreds of thousands of times.
    for u in &s.users {
        if u.connect_ms > MAX_MS {
            return too_long(format!("user {} connect_ms", u.id), u.connect_ms);
        }
        if let Some(ms) = u.close_ms.filter(|ms| *ms > MAX_MS) {
            return too_long(format!("user {} close_ms", u.id), ms);
        }
        for (table, items) in [("send", &u.sends), ("push", &u.pushes)] {
            if let Some(t) = items.iter().find(|t| t.at_ms > MAX_MS) {
                return too_long(format!("user {} {table} {}", u.id, t.text), t.at_ms);
            }
        }
    }
    match s.production.iter().find(|p| p.at_ms > MAX_MS) {
        Some(p) => too_long(format!("production {p}"), p.at_ms),
        None => Ok(()),
    }
}
