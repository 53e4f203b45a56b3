//! The `state-machine` endpoint's own behaviour, beyond pass/fail on the bundled scenarios:
//! what its heartbeat sends and when, what it records about its lifecycle.

use std::sync::{Arc, Mutex};

use racegate_replay::backend::Backend;
use racegate_replay::runner::{Connector, FakeConnector, ReplayClient, drive, judge};
use racegate_replay::scenario::User;
use racegate_replay::trace::{EventKind, Frame, TraceEvent};
use racegate_replay::transport::fake::{ClientEvent, ClientSendError, FakeClient};
use racegate_replay::{EndpointKind, RunOutcome, Verdict, scenario};
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
        |k| matches!(k, EventKind::State { state } if *state == "processing_ready"),
    );
    assert_eq!(ready, [200]);
    // The first beat a heartbeat after ready, then one every 50 ms until the client left.
    assert_eq!(pings, [250, 300, 350, 400, 450]);
}

#[test]
fn without_a_heartbeat_the_fixed_endpoint_never_pings() {
    let (o, pings) = run(r#"
        name = "no heartbeat"
        [server]
        auth_ms = 50
        [[user]]
        id = "u"
        close_ms = 480
        [[user.send]]
        at_ms = 100
        text = "hi"
        "#);
    assert_eq!(o.verdict, Verdict::Pass, "{:?}", o.violations);
    assert_eq!(pings, [] as [u64; 0]);
}
