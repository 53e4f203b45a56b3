//! Liveness: a server that never serves must fail, never pass for want of evidence.
//!
//! The connector here hands each client a connection whose server half is held but never served
//! (no accept, no close): what `replace StateMachine::serve with ()` gives. Before the liveness
//! rule, such a run passed: no chat was ever sent, so none was judged, and pushes counted as
//! rejected. These tests pin that it now fails every bundled scenario and almost every drawn one.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use racegate_replay::backend::Backend;
use racegate_replay::explore::{UserRange, draw};
use racegate_replay::runner::{Connector, drive, judge};
use racegate_replay::scenario::{Scenario, User};
use racegate_replay::transport::fake::{self, FakeClient, FakeSocket};
use racegate_replay::{EndpointKind, Invariant, RunOutcome, Verdict, replay, scenario};

/// Opens every connection and never serves it: the server half is kept alive so the client sees
/// neither an open nor a close.
#[derive(Default)]
struct NeverServes {
    held: Mutex<Vec<Arc<FakeSocket>>>,
}

impl Connector for NeverServes {
    type Client = FakeClient;

    fn connect(&self, _: &Arc<Backend>, _: EndpointKind, _: &User) -> FakeClient {
        let (socket, client) = fake::pair(Duration::ZERO);
        self.held.lock().unwrap().push(socket);
        client
    }
}

fn replay_never_serving(s: &Scenario) -> RunOutcome {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .unwrap();
    let (trace, ms) = runtime.block_on(drive(
        s,
        EndpointKind::StateMachine,
        Arc::new(NeverServes::default()),
    ));
    judge(s, EndpointKind::StateMachine, trace, ms)
}

fn bundled() -> Vec<Scenario> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../scenarios");
    scenario::load_all(&[dir]).unwrap()
}

#[test]
fn a_never_serving_server_fails_every_bundled_scenario() {
    let all = bundled();
    assert!(all.len() >= 20, "found only {} scenarios", all.len());
    for s in &all {
        let o = replay_never_serving(s);
        assert_eq!(o.verdict, Verdict::Fail, "{} passed with no server", s.name);
        assert!(
            o.violations
                .iter()
                .any(|v| v.invariant == Invariant::Stuck && v.detail.contains("never opened")),
            "{}: {:?}",
            s.name,
            o.violations
        );
    }
}

#[test]
fn chats_a_client_could_not_send_because_it_never_opened_are_lost() {
    let s = scenario::parse(
        r#"
        name = "one chat"
        [[user]]
        id = "u"
        [[user.send]]
        at_ms = 5
        text = "hello"
        "#,
        "inline.toml".as_ref(),
    )
    .unwrap();
    let o = replay_never_serving(&s);
    let lost: Vec<_> = o
        .violations
        .iter()
        .filter(|v| v.invariant == Invariant::MessageLost)
        .collect();
    assert_eq!(lost.len(), 1, "{:?}", o.violations);
    assert!(lost[0].detail.contains("u/m1 never sent"), "{}", lost[0]);
}

#[test]
fn a_push_refused_while_the_connection_is_still_opening_is_lost() {
    let s = scenario::parse(
        r#"
        name = "one push"
        [[user]]
        id = "u"
        [[user.push]]
        at_ms = 20
        text = "report ready"
        "#,
        "inline.toml".as_ref(),
    )
    .unwrap();
    let o = replay_never_serving(&s);
    assert!(
        o.violations
            .iter()
            .any(|v| v.invariant == Invariant::MessageLost
                && v.detail
                    .contains("refused while the connection was still opening")),
        "{:?}",
        o.violations
    );
}

#[test]
fn a_client_that_closes_on_its_own_before_accept_is_not_stuck() {
    // The scenario asks for the early close: the client leaves at 50 ms, before a 200 ms
    // handshake could complete. That is no failure of the server's.
    let s = scenario::parse(
        r#"
        name = "leaves early"
        [server]
        accept_ms = 200
        [[user]]
        id = "u"
        close_ms = 50
        "#,
        "inline.toml".as_ref(),
    )
    .unwrap();
    let o = replay_never_serving(&s);
    assert!(
        o.violations
            .iter()
            .all(|v| v.invariant != Invariant::Stuck || !v.detail.contains("never opened")),
        "{:?}",
        o.violations
    );
    let fix = replay(&s, EndpointKind::StateMachine).unwrap();
    assert_eq!(fix.verdict, Verdict::Pass, "{:?}", fix.violations);
}

#[test]
fn exploration_finds_a_never_serving_server_within_300_cases() {
    // `explore` judges each drawn case the same way; the first failing case is what it reports.
    let users = UserRange::new(1, 3).unwrap();
    let first = (0..300).find(|&case| {
        replay_never_serving(&draw(1, case, users).unwrap()).verdict == Verdict::Fail
    });
    assert_eq!(
        first,
        Some(0),
        "a never-serving server survived the first drawn cases"
    );
}

#[test]
fn a_client_leaving_before_accept_charges_no_endpoint_with_accept_first() {
    // Starlette under uvicorn: accept() after the client left raises ClientDisconnected, and
    // later calls WebSocketDisconnect(1006); neither is a state error. Only an endpoint that
    // itself reads before accept (unfixed, at 0 ms, before the client left) is charged.
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../scenarios");
    let s = scenario::load(&dir.join("client-leaves-before-accept.toml")).unwrap();
    for endpoint in EndpointKind::ALL {
        let o = replay(&s, endpoint).unwrap();
        let charged: Vec<_> = o
            .violations
            .iter()
            .filter(|v| v.invariant == Invariant::AcceptFirst && v.user == "user-gone")
            .filter(|v| v.at_ms >= 50)
            .collect();
        let before_leaving = o
            .violations
            .iter()
            .filter(|v| v.invariant == Invariant::AcceptFirst && v.user == "user-gone")
            .count()
            - charged.len();
        match endpoint {
            // Its reader keeps calling receive_text before accept, every 50 ms.
            EndpointKind::Unfixed => assert!(before_leaving >= 1, "{:?}", o.violations),
            _ => assert!(
                charged.is_empty() && before_leaving == 0,
                "{endpoint}: {charged:?}"
            ),
        }
    }
}
