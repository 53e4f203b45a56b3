//! The `state-machine` endpoint's own behaviour, beyond pass/fail on the bundled scenarios:
//! what its heartbeat sends and when, how its pre-ready queue counts bytes, how it reads a
//! receive that fails.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use racegate_replay::backend::Backend;
use racegate_replay::runner::{Connector, FakeConnector, ReplayClient, drive, judge};
use racegate_replay::scenario::User;
use racegate_replay::trace::{EventKind, Frame, TraceEvent};
use racegate_replay::transport::fake::{
    self, ClientEvent, ClientSendError, FakeClient, FakeSocket,
};
use racegate_replay::transport::{Inbound, ServerSocket, TransportError};
use racegate_replay::{EndpointKind, Invariant, RunOutcome, Verdict, replay, scenario};
use tokio::time::Instant;

/// The replay's own connector, with a client that also notes when each ping arrived (the replay
/// itself does not record pings: they carry no verdict).
#[derive(Default)]
struct NotingPings {
    pings: Arc<Mutex<Vec<Instant>>>,
}

struct PingNotingClient {
    inner: FakeClient,
    pings: Arc<Mutex<Vec<Instant>>>,
}

impl ReplayClient for PingNotingClient {
    fn send_chat(&self, id: &str, text: &str) -> Result<(), ClientSendError> {
        self.inner.send_chat(id, text)
    }

    fn close(&self) -> bool {
        self.inner.close()
    }

    async fn next_event(&mut self) -> Option<ClientEvent> {
        let event = self.inner.next_event().await;
        if event == Some(ClientEvent::Frame(Frame::Ping)) {
            self.pings.lock().unwrap().push(Instant::now());
        }
        event
    }
}

impl Connector for NotingPings {
    type Client = PingNotingClient;

    fn connect(&self, backend: &Arc<Backend>, endpoint: EndpointKind, user: &User) -> Self::Client {
        PingNotingClient {
            inner: FakeConnector.connect(backend, endpoint, user),
            pings: self.pings.clone(),
        }
    }
}

/// Replays `toml` against the fixed endpoint; also returns when each ping arrived, in
/// milliseconds since the run began.
fn run(toml: &str) -> (RunOutcome, Vec<u64>) {
    let s = scenario::parse(toml, "inline.toml".as_ref()).unwrap();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .unwrap();
    let connector = Arc::new(NotingPings::default());
    let pings = connector.pings.clone();
    let (start, (trace, ms)) = runtime.block_on(async {
        (
            Instant::now(),
            drive(&s, EndpointKind::StateMachine, connector).await,
        )
    });
    drop(runtime);
    let pings = pings
        .lock()
        .unwrap()
        .iter()
        .map(|t| (*t - start).as_millis() as u64)
        .collect();
    (judge(&s, EndpointKind::StateMachine, trace, ms), pings)
}

fn at(trace: &[TraceEvent], what: impl Fn(&EventKind) -> bool) -> Vec<u64> {
    trace
        .iter()
        .filter(|e| what(&e.kind))
        .map(|e| e.at_ms)
        .collect()
}

#[test]
fn the_fixed_endpoint_pings_every_heartbeat_once_ready_and_stops_when_the_client_leaves() {
    let (o, pings) = run(r#"
        name = "heartbeat"
        [server]
        accept_ms = 80
        auth_ms = 50
        services_ms = 50
        register_ms = 20
        heartbeat_ms = 50
        [[user]]
        id = "u"
        close_ms = 480
        [[user.send]]
        at_ms = 100
        text = "hi"
        "#);
    assert_eq!(o.verdict, Verdict::Pass, "{:?}", o.violations);
    let ready = at(
        &o.trace,
        |k| matches!(k, EventKind::State { state } if state.is_ready()),
    );
    assert_eq!(ready, [200]);
    // The first beat a heartbeat after ready, then one every 50 ms until the client left.
    assert_eq!(pings, [250, 300, 350, 400, 450]);
}

#[test]
fn without_a_heartbeat_the_fixed_endpoint_never_pings_and_the_replay_finishes() {
    // heartbeat_ms = 0 means no heartbeat task at all: one that beat every 0 ms would never let
    // virtual time move, so the replay runs on its own thread, watched by the wall clock.
    let (done, finished) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = done.send(run(r#"
        name = "no heartbeat"
        [server]
        auth_ms = 50
        [[user]]
        id = "u"
        close_ms = 480
        [[user.send]]
        at_ms = 100
        text = "hi"
        "#));
    });
    let (o, pings) = finished
        .recv_timeout(Duration::from_secs(20))
        .expect("the replay did not finish within 20 s of wall time");
    assert_eq!(o.verdict, Verdict::Pass, "{:?}", o.violations);
    assert_eq!(pings, [] as [u64; 0]);
}

/// A scenario whose user sends two chats (or is issued two pushes) during a 100 ms setup,
/// against a pre-ready queue of `bytes` bytes.
fn held_during_setup(bytes: u64, kind: &str, text: &str) -> RunOutcome {
    let s = scenario::parse(
        &format!(
            r#"
            name = "held"
            [server]
            auth_ms = 100
            queue_bytes = {bytes}
            [[user]]
            id = "u"
            [[user.{kind}]]
            at_ms = 1
            text = "{text}"
            [[user.{kind}]]
            at_ms = 2
            text = "{text}"
            "#
        ),
        "inline.toml".as_ref(),
    )
    .unwrap();
    replay(&s, EndpointKind::StateMachine).unwrap()
}

fn closed_with(o: &RunOutcome, code: u16) -> bool {
    o.trace
        .iter()
        .any(|e| e.kind == EventKind::ClientClosed { code })
}

#[test]
fn a_held_chat_counts_its_id_and_text_bytes_against_the_queue_byte_limit() {
    // Each chat is `u/m1` (4 bytes) and `abcdef` (6): two fill 20 bytes exactly, and fit.
    let fits = held_during_setup(20, "send", "abcdef");
    assert_eq!(fits.verdict, Verdict::Pass, "{:?}", fits.violations);
    assert!(!closed_with(&fits, 1013), "{:#?}", fits.trace);
    // One byte less and the second overflows: the connection closes with 1013.
    let over = held_during_setup(19, "send", "abcdef");
    assert!(closed_with(&over, 1013), "{:#?}", over.trace);
    // A byte count of 16 a chat (id times text) would overflow 20 already.
    let long = held_during_setup(40, "send", "abcdefghijklmnop");
    assert!(!closed_with(&long, 1013), "{:#?}", long.trace);
}

#[test]
fn a_held_push_counts_its_id_and_text_bytes_against_the_queue_byte_limit() {
    // Each push is `u/p1` (4 bytes) and `abcdef` (6).
    let fits = held_during_setup(20, "push", "abcdef");
    assert_eq!(fits.verdict, Verdict::Pass, "{:?}", fits.violations);
    assert!(!closed_with(&fits, 1013), "{:#?}", fits.trace);
    let over = held_during_setup(19, "push", "abcdef");
    assert!(closed_with(&over, 1013), "{:#?}", over.trace);
    let long = held_during_setup(40, "push", "abcdefghijklmnop");
    assert!(!closed_with(&long, 1013), "{:#?}", long.trace);
}

/// The fake socket, except that its first receive raises `error`.
struct FirstReceiveRaises {
    inner: Arc<FakeSocket>,
    error: TransportError,
    raised: AtomicBool,
}

impl ServerSocket for FirstReceiveRaises {
    async fn accept(&self) -> Result<(), TransportError> {
        self.inner.accept().await
    }

    async fn receive(&self) -> Result<Inbound, TransportError> {
        if !self.raised.swap(true, Ordering::SeqCst) {
            return Err(self.error.clone());
        }
        self.inner.receive().await
    }

    fn send(&self, frame: &Frame) -> Result<(), TransportError> {
        self.inner.send(frame)
    }

    async fn close(&self, code: u16) -> Result<(), TransportError> {
        self.inner.close(code).await
    }

    fn is_connected(&self) -> bool {
        self.inner.is_connected()
    }

    fn is_connected_and_ready(&self) -> bool {
        self.inner.is_connected_and_ready()
    }
}

struct RaisingConnector(TransportError);

impl Connector for RaisingConnector {
    type Client = FakeClient;

    fn connect(&self, backend: &Arc<Backend>, endpoint: EndpointKind, user: &User) -> FakeClient {
        let (socket, client) = fake::pair(Duration::ZERO);
        let raising = Arc::new(FirstReceiveRaises {
            inner: socket.clone(),
            error: self.0.clone(),
            raised: AtomicBool::new(false),
        });
        let (backend, user) = (backend.clone(), user.id.clone());
        tokio::spawn(async move {
            endpoint.serve(backend, raising, user).await;
            socket.app_finished();
        });
        client
    }
}

fn replay_raising(error: TransportError) -> RunOutcome {
    let s = scenario::parse(
        r#"
        name = "raises"
        [[user]]
        id = "u"
        "#,
        "inline.toml".as_ref(),
    )
    .unwrap();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .unwrap();
    let (trace, ms) = runtime.block_on(drive(
        &s,
        EndpointKind::StateMachine,
        Arc::new(RaisingConnector(error)),
    ));
    drop(runtime);
    judge(&s, EndpointKind::StateMachine, trace, ms)
}

#[test]
fn a_receive_that_raises_a_state_error_is_accept_first_not_the_client_leaving() {
    let o = replay_raising(TransportError::receive_after_disconnect());
    let raised: Vec<_> = o
        .violations
        .iter()
        .filter(|v| v.invariant == Invariant::AcceptFirst)
        .collect();
    assert_eq!(raised.len(), 1, "{:?}", o.violations);
    assert!(raised[0].detail.starts_with("receive: "), "{}", raised[0]);
}

#[test]
fn a_receive_that_finds_the_client_gone_ends_the_connection_quietly() {
    let o = replay_raising(TransportError::disconnected(1006));
    assert!(
        o.violations
            .iter()
            .all(|v| v.invariant != Invariant::AcceptFirst),
        "{:?}",
        o.violations
    );
    assert!(
        o.trace.iter().any(|e| e.kind
            == EventKind::Terminal {
                state: racegate_replay::ConnectionState::Closed
            }),
        "{:#?}",
        o.trace
    );
}
