//! The runner: replays a scenario's clients and notifier against one endpoint, in virtual time.
//!
//! It owns the time policy. Each run gets a fresh current-thread runtime with a paused clock, so
//! every delay in the scenario costs no wall time and, with nothing else to schedule, execution
//! order is a function of the scenario alone: the same scenario gives the same trace.
//! [`drive`] is generic over a [`Connector`], so `racegate-net` replays the same schedule over
//! real sockets on a real clock, with the same oracle ([`judge`]).

use std::collections::HashSet;
use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use indexmap::IndexMap;
use serde::Serialize;
use tokio::time::{Instant, sleep_until};

use crate::backend::Backend;
use crate::checker::{Indeterminate, Judgement};
use crate::endpoint::EndpointKind;
use crate::invariant::{Invariant, Violation};
use crate::oracle;
use crate::scenario::{Connection, InvariantMatch, PRODUCTION, Scenario, Symptom, User, Verdict};
use crate::schedule::{self, Pushes};
use crate::trace::{AgentEvent, EventKind, Frame, Recorder, TraceEvent};
use crate::transport::fake::{self, ClientEvent, ClientSendError, FakeClient};

/// The result of one scenario × endpoint.
#[derive(Debug, Clone, Serialize)]
pub struct RunOutcome {
    /// The scenario's name.
    pub scenario: String,
    /// The scenario's file.
    pub file: PathBuf,
    /// The endpoint replayed.
    pub endpoint: EndpointKind,
    /// `pass` when no invariant was violated.
    pub verdict: Verdict,
    /// What `[expect]` says, if it gates this endpoint.
    pub expected: Option<Verdict>,
    /// The invariants `[expect]` says a failing run must show, if it names them.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expected_invariants: Option<InvariantMatch>,
    /// Every violation, by time.
    pub violations: Vec<Violation>,
    /// Chats whose fate the run cannot tell (the connection ended with an error before the
    /// answer, and nothing says whether the server took them): neither a pass nor a loss.
    pub indeterminate: Vec<Indeterminate>,
    /// The timeline.
    pub trace: Vec<TraceEvent>,
    /// Milliseconds the run covered: virtual ones, or, when `real_time`, the wall clock's.
    pub simulated_ms: u64,
    /// True when the run went over real sockets on a real clock (`run --transport ws`).
    pub real_time: bool,
    /// For the endpoint that models production ([`PRODUCTION`]), each `[[production]]` symptom
    /// of the scenario and whether this run reproduced it; empty for the other endpoints.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub production: Vec<ProductionCheck>,
}

/// A production symptom held against the replay: reproduced when the replay violated the same
/// invariant for the same user, on any of its connections (at any time: the replay's clock is a
/// model of production's).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ProductionCheck {
    /// What production showed.
    #[serde(flatten)]
    pub symptom: Symptom,
    /// True when the replay violated the same invariant for the same user.
    pub reproduced: bool,
    /// When the replay first did.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub replay_at_ms: Option<u64>,
    /// Not reproduced: what the replay found for that user instead, the first of each invariant.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub instead: Vec<Seen>,
}

/// An invariant a replay violated, and when it first did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Seen {
    /// The invariant.
    pub invariant: Invariant,
    /// Its first time, in virtual milliseconds.
    pub at_ms: u64,
}

impl ProductionCheck {
    /// Holds `symptom` against a run's violations, each user having one connection.
    pub fn new(symptom: &Symptom, violations: &[Violation]) -> ProductionCheck {
        Self::across(symptom, violations, &[])
    }

    /// Holds `symptom` against a run's violations, which name connections: `relabelled` says
    /// whose each connection is whose label is not a user id
    /// ([`Scenario::relabelled`](crate::scenario::Scenario::relabelled)).
    pub fn across(
        symptom: &Symptom,
        violations: &[Violation],
        relabelled: &[(String, String)],
    ) -> ProductionCheck {
        let user_of = |conn: &str| {
            relabelled
                .iter()
                .find(|(c, _)| c == conn)
                .map_or(conn.to_string(), |(_, u)| u.clone())
        };
        let mine = violations
            .iter()
            .filter(|v| user_of(&v.user) == symptom.user);
        let replay_at_ms = mine
            .clone()
            .filter(|v| v.invariant == symptom.invariant)
            .map(|v| v.at_ms)
            .min();
        let mut instead: Vec<Seen> = Vec::new();
        if replay_at_ms.is_none() {
            for v in mine {
                match instead.iter_mut().find(|s| s.invariant == v.invariant) {
                    Some(s) => s.at_ms = s.at_ms.min(v.at_ms),
                    None => instead.push(Seen {
                        invariant: v.invariant,
                        at_ms: v.at_ms,
                    }),
                }
            }
            instead.sort_by_key(|s| (s.at_ms, s.invariant));
        }
        ProductionCheck {
            symptom: symptom.clone(),
            reproduced: replay_at_ms.is_some(),
            replay_at_ms,
            instead,
        }
    }

    /// What the replay did, after `replay: `: the reproduced invariant and its time, or that it
    /// was not reproduced and what the replay found for the user instead.
    pub fn replay(&self) -> String {
        match self.replay_at_ms {
            Some(at) => format!("{} at {at} ms", self.symptom.invariant),
            None if self.instead.is_empty() => {
                format!("not reproduced: no violation for {}", self.symptom.user)
            }
            None => {
                let found: Vec<String> = self
                    .instead
                    .iter()
                    .map(|s| format!("{} at {} ms", s.invariant, s.at_ms))
                    .collect();
                format!(
                    "not reproduced: for {} it found {}",
                    self.symptom.user,
                    found.join(", ")
                )
            }
        }
    }
}

impl std::fmt::Display for ProductionCheck {
    /// `production: accept-first for u at 120 ms — replay: accept-first at 120 ms`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "production: {} — replay: {}",
            self.symptom,
            self.replay()
        )
    }
}

impl RunOutcome {
    /// False when the scenario gates this endpoint and the verdict differs, or the invariants
    /// violated are not the ones `[expect]` names. An ungated run matches trivially: see
    /// [`gated`](Self::gated).
    pub fn matches_expectation(&self) -> bool {
        self.mismatch().is_none()
    }

    /// True when `[expect]` gates this run, or production symptoms are held against it.
    pub fn gated(&self) -> bool {
        self.expected.is_some() || !self.production.is_empty()
    }

    /// How the run differs from `[expect]` and from what production showed, in words; `None`
    /// when it does not (or is ungated).
    pub fn mismatch(&self) -> Option<String> {
        let missed: Vec<String> = self
            .production
            .iter()
            .filter(|c| !c.reproduced)
            .map(|c| format!("{} ({})", c.symptom, c.replay()))
            .collect();
        let production = (!missed.is_empty()).then(|| {
            format!(
                "production symptom{} not reproduced: {}",
                if missed.len() == 1 { "" } else { "s" },
                missed.join("; ")
            )
        });
        match (self.expectation_mismatch(), production) {
            (Some(e), Some(p)) => Some(format!("{e}; {p}")),
            (e, p) => e.or(p),
        }
    }

    /// How the run differs from `[expect]` alone.
    fn expectation_mismatch(&self) -> Option<String> {
        let expected = self.expected?;
        let got: Vec<&str> = {
            let mut names: Vec<&str> = self.violations.iter().map(|v| v.invariant.name()).collect();
            names.sort_unstable();
            names.dedup();
            names
        };
        let got_text = if got.is_empty() {
            String::new()
        } else {
            format!(" with [{}]", got.join(", "))
        };
        if expected != self.verdict {
            return Some(format!(
                "expected {expected}, got {}{got_text}",
                self.verdict
            ));
        }
        match &self.expected_invariants {
            Some(named) if !named.matches(self.violations.iter().map(|v| &v.invariant)) => {
                Some(format!(
                    "expected {expected} with {named}, got {}{got_text}",
                    self.verdict
                ))
            }
            _ => None,
        }
    }
}

/// Why a run could not happen at all.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The async runtime could not be built.
    #[error("could not start the replay runtime: {0}")]
    Runtime(#[from] std::io::Error),
}

/// Replays `scenario` against `endpoint` and judges the trace.
pub fn replay(scenario: &Scenario, endpoint: EndpointKind) -> Result<RunOutcome, RunError> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()?;
    let (trace, simulated_ms) =
        runtime.block_on(drive(scenario, endpoint, Arc::new(FakeConnector)));
    // Dropping the runtime cancels whatever is still running (a stuck connection, a heartbeat).
    drop(runtime);
    Ok(judge(scenario, endpoint, trace, simulated_ms))
}

/// Runs the oracle over a recorded run of `scenario` against `endpoint`.
pub fn judge(
    scenario: &Scenario,
    endpoint: EndpointKind,
    trace: Vec<TraceEvent>,
    simulated_ms: u64,
) -> RunOutcome {
    let conns = scenario.connections();
    // A set, not a scan of the users per question: a run of thousands asks thousands of times.
    let closing: HashSet<&str> = scenario
        .users
        .iter()
        .zip(&conns)
        .filter(|(u, _)| u.close_ms.is_some())
        .map(|(_, c)| c.label.as_str())
        .collect();
    let scheduled = |conn: &str| closing.contains(conn);
    let relabelled = scenario.relabelled();
    // The replay's own endpoints answer only the chats its clients sent: anything unmatched is
    // among the violations too.
    let Judgement {
        violations,
        indeterminate,
        ..
    } = oracle::judge(&trace, &scheduled, &relabelled);
    let verdict = if violations.is_empty() {
        Verdict::Pass
    } else {
        Verdict::Fail
    };
    let production = if endpoint == PRODUCTION {
        scenario
            .production
            .iter()
            .map(|s| ProductionCheck::across(s, &violations, &relabelled))
            .collect()
    } else {
        Vec::new()
    };
    RunOutcome {
        scenario: scenario.name.clone(),
        file: scenario.file.clone(),
        endpoint,
        verdict,
        expected: scenario.expect.get(&endpoint).copied(),
        expected_invariants: scenario.expect_invariants.get(&endpoint).cloned(),
        violations,
        indeterminate,
        trace,
        simulated_ms,
        real_time: false,
        production,
    }
}

/// What a replayed user does with its connection: the in-memory [`FakeClient`] or a client over
/// a real socket, so one schedule drives both.
pub trait ReplayClient: Send + 'static {
    /// Sends a chat; refused if the connection is not open, or closed.
    fn send_chat(&self, id: &str, text: &str) -> Result<(), ClientSendError>;
    /// Closes the client's side with 1000. Returns false if it was already closed.
    fn close(&self) -> bool;
    /// Ends the client's TCP connection without a close frame (`drop_ms`). Returns false if it
    /// was already over. A client that cannot drop closes instead (the default).
    fn drop_connection(&self) -> bool {
        self.close()
    }
    /// The next thing the client sees; `None` once the server side is gone.
    fn next_event(&mut self) -> impl Future<Output = Option<ClientEvent>> + Send;
}

impl ReplayClient for FakeClient {
    fn send_chat(&self, id: &str, text: &str) -> Result<(), ClientSendError> {
        FakeClient::send_chat(self, id, text)
    }

    fn close(&self) -> bool {
        FakeClient::close(self)
    }

    fn drop_connection(&self) -> bool {
        FakeClient::drop_connection(self)
    }

    fn next_event(&mut self) -> impl Future<Output = Option<ClientEvent>> + Send {
        FakeClient::next_event(self)
    }
}

/// One connection as a replay opens it: the label its events are recorded under, and the chats
/// written in the same write as its upgrade request.
#[derive(Debug, Clone, Copy)]
pub struct Opening<'a> {
    /// The user's id for its first connection, `id#k` for its `k`-th.
    pub label: &'a str,
    /// `(chat id, text)` of each chat pipelined with the upgrade request, in order.
    pub pipelined: &'a [(String, String)],
}

/// How a replay opens one user's connection to the endpoint. `connect` starts the upgrade and
/// returns at once; the client sees [`ClientEvent::Open`] when the endpoint accepts.
pub trait Connector: Send + Sync + 'static {
    /// The client half it hands back.
    type Client: ReplayClient;
    /// Opens `user`'s connection to `endpoint`, served with `backend`, recorded under the
    /// user's id.
    fn connect(&self, backend: &Arc<Backend>, endpoint: EndpointKind, user: &User) -> Self::Client;
    /// Opens one connection of `user` as `opening` says: recorded under its label, with its
    /// pipelined chats in the upgrade's write. By default [`connect`](Self::connect), for a
    /// connector whose scenarios give each user one connection and pipeline nothing.
    fn connect_as(
        &self,
        backend: &Arc<Backend>,
        endpoint: EndpointKind,
        user: &User,
        opening: Opening<'_>,
    ) -> Self::Client {
        let _ = opening;
        self.connect(backend, endpoint, user)
    }
    /// How long past `accept_ms` an open may take before a client that closes on schedule is
    /// judged to have waited for it in vain: nothing in virtual time, a loaded machine's
    /// scheduling and loopback handshake over real sockets.
    fn open_slack(&self) -> Duration {
        Duration::ZERO
    }
}

/// The in-memory connector: a [`fake::pair`], its server half served by the endpoint.
pub struct FakeConnector;

impl Connector for FakeConnector {
    type Client = FakeClient;

    fn connect(&self, backend: &Arc<Backend>, endpoint: EndpointKind, user: &User) -> FakeClient {
        let opening = Opening {
            label: &user.id,
            pipelined: &[],
        };
        self.connect_as(backend, endpoint, user, opening)
    }

    fn connect_as(
        &self,
        backend: &Arc<Backend>,
        endpoint: EndpointKind,
        user: &User,
        opening: Opening<'_>,
    ) -> FakeClient {
        let (socket, client) = fake::pair(Duration::from_millis(backend.config.accept_ms));
        for (id, text) in opening.pipelined {
            // Lost, as under uvicorn: see `FakeClient::send_pipelined`.
            client.send_pipelined(id, text);
        }
        let (backend, user, label) = (backend.clone(), user.id.clone(), opening.label.to_string());
        tokio::spawn(async move {
            endpoint
                .serve_as(backend, socket.clone(), user, label)
                .await;
            // The endpoint function returned: uvicorn ends the connection (docs/conformance.md).
            socket.app_finished();
        });
        client
    }
}

/// When clients close in a replay: [`schedule::horizon_ms`] with pushes and racegate's own
/// five-event runs.
pub fn horizon_ms(scenario: &Scenario) -> u64 {
    schedule::horizon_ms(scenario, Pushes::Included, AgentEvent::RUN.len())
}

/// How long servers get, after clients close at the horizon, to reach a terminal state before
/// the run is cut and the oracle looks for `stuck` connections. Fixed, not `settle_ms`: a
/// scenario with no settle time must still give its servers time to see the close.
pub const SERVER_GRACE_MS: u64 = 1000;

/// The id of a user's `n`th chat (1-based, counted across its connections).
pub fn chat_id(user: &str, n: usize) -> String {
    format!("{user}/m{n}")
}

/// The id of a user's `n`th push (1-based, counted across its connections).
pub fn push_id(user: &str, n: usize) -> String {
    format!("{user}/p{n}")
}

/// Replays `scenario`'s clients and notifier against `endpoint`, connecting through `connector`,
/// on the current runtime's clock. Returns the trace and the milliseconds it covered.
pub async fn drive<K: Connector>(
    scenario: &Scenario,
    endpoint: EndpointKind,
    connector: Arc<K>,
) -> (Vec<TraceEvent>, u64) {
    let recorder = Recorder::new();
    let origin = Instant::now();
    let conns = scenario.connections();
    // Each connection fails as its own `[[user]]` says.
    let failures: IndexMap<String, _> = scenario
        .users
        .iter()
        .zip(&conns)
        .filter_map(|(u, c)| u.fail_at.map(|p| (c.label.clone(), p)))
        .collect();
    let backend = Arc::new(Backend::new(scenario.server, failures, recorder.clone()));
    let horizon = origin + Duration::from_millis(horizon_ms(scenario));
    // Servers get a fixed grace to reach a terminal state after clients close.
    let deadline = horizon + Duration::from_millis(SERVER_GRACE_MS);

    let mut tasks = Vec::new();
    for (user, conn) in scenario.users.iter().zip(conns) {
        let pushes: Vec<(String, String, String, u64)> = user
            .pushes
            .iter()
            .enumerate()
            .map(|(n, push)| {
                let id = push_id(&user.id, conn.pushes_before + n + 1);
                (id, push.text.clone(), conn.label.clone(), push.at_ms)
            })
            .collect();
        tasks.push(tokio::spawn(client(
            connector.clone(),
            backend.clone(),
            endpoint,
            user.clone(),
            conn,
            origin,
            horizon,
        )));
        for (id, text, label, at_ms) in pushes {
            let backend = backend.clone();
            let (user_id, at) = (user.id.clone(), user.connect_ms + at_ms);
            tasks.push(tokio::spawn(async move {
                sleep_until(origin + Duration::from_millis(at)).await;
                backend.notify(&user_id, &label, id, text).await;
            }));
        }
    }
    let all = async {
        for t in tasks {
            let _ = t.await;
        }
    };
    let _ = tokio::time::timeout_at(deadline, all).await;
    // Let servers that are finishing up (not stuck) record their end before the cut.
    sleep_until(deadline).await;
    (recorder.take(), recorder.now_ms())
}

/// One user's connection: connect (writing its pipelined chats with the upgrade request), wait
/// for open, send on schedule, record what arrives, close or drop. Everything is recorded under
/// the connection's label; chat ids count on from the user's earlier connections.
async fn client<K: Connector>(
    connector: Arc<K>,
    backend: Arc<Backend>,
    endpoint: EndpointKind,
    user: User,
    conn: Connection,
    origin: Instant,
    horizon: Instant,
) {
    let at = |ms: u64| origin + Duration::from_millis(ms);
    sleep_until(at(user.connect_ms)).await;
    let rec = backend.recorder.clone();
    let id = conn.label.as_str();
    // This connection's `n`-th chat (1-based).
    let chat_n = |n: usize| chat_id(&user.id, conn.chats_before + n);
    rec.record(id, EventKind::ClientConnect);
    let pipelined: Vec<(String, String)> = user.sends[..user.pipelined]
        .iter()
        .enumerate()
        .map(|(k, s)| (chat_n(k + 1), s.text.clone()))
        .collect();
    let opening = Opening {
        label: id,
        pipelined: &pipelined,
    };
    let mut client = connector.connect_as(&backend, endpoint, &user, opening);
    for (chat, _) in pipelined {
        rec.record(id, EventKind::ClientSend { id: chat });
    }

    // The client's own end: a close (with a close frame once open) or a drop (without one).
    let leave_at = user.leave_ms().map(|ms| at(user.connect_ms + ms));
    let drops = user.drop_ms.is_some();
    // Measured from when the connect really happened: on a real clock a late wake-up must not
    // make the open look overdue.
    let open_due =
        Instant::now() + Duration::from_millis(backend.config.accept_ms) + connector.open_slack();
    let mut next_send = user.pipelined;
    let mut opened: Option<Instant> = None;
    let end = loop {
        let next_send_at = opened.and_then(|o| {
            user.sends
                .get(next_send)
                .map(|s| o + Duration::from_millis(s.at_ms))
        });
        let wake = [next_send_at, leave_at, Some(horizon)]
            .into_iter()
            .flatten()
            .min()
            .unwrap_or(horizon);
        tokio::select! {
            biased;
            event = client.next_event() => match event {
                Some(ClientEvent::Open) => {
                    rec.record(id, EventKind::ClientOpen);
                    opened = Some(Instant::now());
                }
                Some(ClientEvent::Frame(Frame::Ping)) => {}
                Some(ClientEvent::Frame(frame)) => rec.record(id, EventKind::ClientRecv { frame }),
                Some(ClientEvent::Closed(code)) => {
                    rec.record(id, EventKind::ClientClosed { code });
                    break ClientEnd::Refused(code);
                }
                Some(ClientEvent::Refused(status)) => {
                    rec.record(id, EventKind::ClientRefused { status });
                    break ClientEnd::HttpRefused(status);
                }
                // What a WebSocket client API reports for a connection lost without a close.
                Some(ClientEvent::Dropped) => {
                    rec.record(id, EventKind::ClientClosed { code: 1006 });
                    break ClientEnd::Refused(1006);
                }
                None => break ClientEnd::Gone,
            },
            () = sleep_until(wake) => {
                if Some(wake) == next_send_at {
                    let chat = chat_n(next_send + 1);
                    match client.send_chat(&chat, &user.sends[next_send].text) {
                        Ok(()) => rec.record(id, EventKind::ClientSend { id: chat }),
                        Err(ClientSendError::NotOpen | ClientSendError::Closed) => {
                            break ClientEnd::Gone;
                        }
                    }
                    next_send += 1;
                } else {
                    // The scenario's own close or drop, or the end of the run. A client whose
                    // connection was due to open (the handshake takes `accept_ms`) and neither
                    // opened nor was refused gave up waiting: that is the server's failure to
                    // serve, not the client's choice. Only a close before the handshake could
                    // complete is one the scenario asked for. Before open, a close or a drop
                    // both end the TCP connection: there is no WebSocket to close.
                    let own = Some(wake) == leave_at;
                    if opened.is_none() && (!own || wake > open_due) {
                        rec.record(id, EventKind::ClientGaveUp);
                    }
                    if own && drops {
                        if client.drop_connection() {
                            rec.record(id, EventKind::ClientDrop);
                        }
                    } else if client.close() {
                        rec.record(id, EventKind::ClientClose);
                    }
                    break if own { ClientEnd::OwnClose } else { ClientEnd::Horizon };
                }
            }
        }
    };
    // Chats the schedule never reached. A client that was refused knows it (the server closed
    // with a code): that is a visible rejection. One that closed on its own schedule chose not
    // to send. Any other chat the client meant to send but could not is judged as unsent.
    let unsent_reason = match (end, opened) {
        (ClientEnd::Refused(_) | ClientEnd::HttpRefused(_), _) => None,
        (ClientEnd::OwnClose, None) if Instant::now() > open_due => {
            Some("the connection never opened")
        }
        (ClientEnd::OwnClose, _) => None,
        (_, None) => Some("the connection never opened"),
        (ClientEnd::Horizon, Some(_)) => Some("the run ended before it was due"),
        (_, Some(_)) => Some("the connection ended without a close frame"),
    };
    for n in next_send..user.sends.len() {
        let chat = chat_n(n + 1);
        match (end, unsent_reason) {
            (ClientEnd::Refused(code), _) => rec.record(
                id,
                EventKind::Rejected {
                    id: chat,
                    reason: format!("server closed the connection with {code} before it was sent"),
                },
            ),
            (ClientEnd::HttpRefused(status), _) => rec.record(
                id,
                EventKind::Rejected {
                    id: chat,
                    reason: format!("server refused the upgrade with HTTP {status}"),
                },
            ),
            (_, Some(reason)) => rec.record(
                id,
                EventKind::ClientUnsent {
                    id: chat,
                    reason: reason.into(),
                },
            ),
            (_, None) => {}
        }
    }
}

/// How one client's part of a run ended.
#[derive(Debug, Clone, Copy)]
enum ClientEnd {
    /// The server closed the connection with this code (1006: it dropped it).
    Refused(u16),
    /// The server answered the upgrade with this HTTP status.
    HttpRefused(u16),
    /// The client closed (or dropped its connection) at its scenario's `close_ms` (`drop_ms`).
    OwnClose,
    /// The run's horizon came first.
    Horizon,
    /// The connection vanished without a close the client could see.
    Gone,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scenario;

    fn run(text: &str, endpoint: EndpointKind) -> RunOutcome {
        let s = scenario::parse(text, "inline.toml".as_ref()).unwrap();
        replay(&s, endpoint).unwrap()
    }

    /// `tab` and its reconnect (or, with `second` another id, another user's connection) on one
    /// timeline: the first closes at 300 ms, the second connects at 200 ms.
    fn reconnect(second: &str) -> String {
        format!(
            r#"
            name = "reconnect"
            [server]
            auth_ms = 50
            services_ms = 50
            register_ms = 20
            [[user]]
            id = "tab"
            close_ms = 300
            send = [{{ at_ms = 150, text = "first" }}]
            [[user]]
            id = "{second}"
            connect_ms = 200
            send = [{{ at_ms = 5, text = "again" }}]
            push = [{{ at_ms = 300, text = "p" }}]
            [[production]]
            invariant = "message-lost"
            user = "tab"
            at_ms = 500
            "#
        )
    }

    fn found(o: &RunOutcome) -> Vec<(Invariant, &str)> {
        o.violations
            .iter()
            .map(|v| (v.invariant, v.user.as_str()))
            .collect()
    }

    #[test]
    fn a_users_second_connection_is_recorded_under_its_label_with_its_ids_counted_on() {
        let o = run(&reconnect("tab"), EndpointKind::StateMachine);
        assert_eq!(o.verdict, Verdict::Pass, "{:?}", o.violations);
        let of = |label: &str, kind: &EventKind| {
            o.trace.iter().any(|e| &*e.user == label && &e.kind == kind)
        };
        assert!(of(
            "tab#2",
            &EventKind::ClientSend {
                id: "tab/m2".into()
            }
        ));
        assert!(of(
            "tab#2",
            &EventKind::PushIssued {
                id: "tab/p1".into()
            }
        ));
        assert!(of(
            "tab#2",
            &EventKind::Terminal {
                state: racegate_core::ConnectionState::Closed
            }
        ));
    }

    #[test]
    fn the_legacy_managers_stale_unregister_is_the_users_loss_not_a_cross_user_frame() {
        // The same user: the first connection's cleanup unregisters the second, whose push is
        // then refused while it is open; its crossed context is the same user.
        let same = run(&reconnect("tab"), EndpointKind::Unfixed);
        assert!(
            found(&same).contains(&(Invariant::MessageLost, "tab#2")),
            "{:?}",
            same.violations
        );
        assert!(!found(&same).iter().any(|(i, _)| *i == Invariant::CrossUser));
        // The symptom for `tab` is reproduced on its second connection.
        assert_eq!(same.production.len(), 1);
        assert!(same.production[0].reproduced, "{:?}", same.production);
        // Another user on the same timeline: crossed, and nothing of it lost.
        let other = run(&reconnect("other"), EndpointKind::Unfixed);
        assert!(
            found(&other).contains(&(Invariant::CrossUser, "tab")),
            "{:?}",
            other.violations
        );
        assert!(
            !found(&other)
                .iter()
                .any(|(i, _)| *i == Invariant::MessageLost)
        );
        assert!(!other.production[0].reproduced);
    }

    #[test]
    fn a_pipelined_chat_is_sent_at_connect_and_never_reaches_the_endpoint() {
        let o = run(
            r#"
            name = "p"
            [[user]]
            id = "p"
            connect_ms = 7
            send = [{ at_ms = 0, text = "early", pipelined = true }, { at_ms = 0, text = "late" }]
            "#,
            EndpointKind::StateMachine,
        );
        let sent: Vec<(u64, &EventKind)> = o
            .trace
            .iter()
            .filter(|e| {
                matches!(
                    e.kind,
                    EventKind::ClientSend { .. } | EventKind::Handled { .. }
                )
            })
            .map(|e| (e.at_ms, &e.kind))
            .collect();
        assert_eq!(
            sent,
            [
                (7, &EventKind::ClientSend { id: "p/m1".into() }),
                (7, &EventKind::ClientSend { id: "p/m2".into() }),
                (
                    7,
                    &EventKind::Handled {
                        id: "p/m2".into(),
                        as_user: "p".into()
                    }
                ),
            ]
        );
        assert_eq!(found(&o), [(Invariant::MessageLost, "p")]);
    }

    #[test]
    fn a_drop_ends_the_connection_without_a_close_and_before_open_like_a_close() {
        let text = |leave: &str| {
            format!(
                "name = \"d\"\n[server]\naccept_ms = 100\n[[user]]\nid = \"d\"\n{leave}\n\
                 send = [{{ at_ms = 5, text = \"x\" }}]\n"
            )
        };
        for (leave, at, kind) in [
            ("drop_ms = 150", 150, EventKind::ClientDrop),
            ("drop_ms = 50", 50, EventKind::ClientDrop),
            ("close_ms = 50", 50, EventKind::ClientClose),
        ] {
            let o = run(&text(leave), EndpointKind::StateMachine);
            let client_end: Vec<(u64, &EventKind)> = o
                .trace
                .iter()
                .filter(|e| {
                    matches!(
                        e.kind,
                        EventKind::ClientDrop | EventKind::ClientClose | EventKind::ClientGaveUp
                    )
                })
                .map(|e| (e.at_ms, &e.kind))
                .collect();
            assert_eq!(client_end, [(at, &kind)], "{leave}");
            assert_eq!(o.verdict, Verdict::Pass, "{leave}: {:?}", o.violations);
        }
    }
}
