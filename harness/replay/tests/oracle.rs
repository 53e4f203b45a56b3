//! The oracle on hand-built traces: each invariant is caught by itself, and a clean run is clean.

use racegate_replay::ConnectionState::{self, *};
use racegate_replay::Invariant;
use racegate_replay::oracle::check;
use racegate_replay::trace::{AgentEvent, EventKind, Frame, TraceEvent};
use rstest::rstest;

fn ev(at_ms: u64, user: &str, kind: EventKind) -> TraceEvent {
    TraceEvent {
        at_ms,
        user: user.into(),
        kind,
    }
}

fn state(at: u64, user: &str, state: ConnectionState) -> TraceEvent {
    ev(at, user, EventKind::State { state })
}

fn recv(at: u64, user: &str, frame: Frame) -> TraceEvent {
    ev(at, user, EventKind::ClientRecv { frame })
}

fn ack(id: &str, user: &str) -> Frame {
    Frame::Ack {
        id: id.into(),
        user: user.into(),
    }
}

fn event(kind: AgentEvent, run: &str, user: &str) -> Frame {
    Frame::Event {
        kind,
        run: run.into(),
        user: user.into(),
    }
}

/// One user, one chat, one push, everything right.
fn clean(user: &str) -> Vec<TraceEvent> {
    let m1 = format!("{user}/m1");
    let p1 = format!("{user}/p1");
    let mut t = vec![
        ev(0, user, EventKind::ClientConnect),
        state(0, user, Connecting),
        ev(0, user, EventKind::Registered),
        ev(0, user, EventKind::CleanupRegistered { name: "unregister" }),
        state(0, user, Accepted),
        ev(0, user, EventKind::ClientOpen),
        ev(5, user, EventKind::ClientSend { id: m1.clone() }),
        ev(20, user, EventKind::PushIssued { id: p1.clone() }),
        state(100, user, Authenticated),
        state(200, user, ServicesReady),
        state(300, user, ProcessingReady),
        ev(
            300,
            user,
            EventKind::Handled {
                id: m1.clone(),
                as_user: user.into(),
            },
        ),
        recv(
            300,
            user,
            Frame::Push {
                id: p1,
                text: "x".into(),
                user: user.into(),
            },
        ),
        recv(300, user, ack(&m1, user)),
    ];
    for (i, kind) in AgentEvent::RUN.into_iter().enumerate() {
        t.push(recv(305 + 5 * i as u64, user, event(kind, &m1, user)));
    }
    t.extend([
        ev(1000, user, EventKind::ClientClose),
        state(1000, user, Closed),
        ev(1000, user, EventKind::Unregistered),
        ev(1000, user, EventKind::Terminal { state: Closed }),
    ]);
    t
}

fn invariants(trace: &[TraceEvent]) -> Vec<Invariant> {
    let mut seen: Vec<Invariant> = check(trace).into_iter().map(|v| v.invariant).collect();
    seen.dedup();
    seen
}

/// Inserts `e` after every event at or before its time (keeps the trace time-ordered).
fn insert(t: &mut Vec<TraceEvent>, e: TraceEvent) {
    let at = t.iter().position(|x| x.at_ms > e.at_ms).unwrap_or(t.len());
    t.insert(at, e);
}

fn is_ack(e: &TraceEvent) -> bool {
    matches!(
        &e.kind,
        EventKind::ClientRecv {
            frame: Frame::Ack { .. }
        }
    )
}

fn is_event(e: &TraceEvent) -> bool {
    matches!(
        &e.kind,
        EventKind::ClientRecv {
            frame: Frame::Event { .. }
        }
    )
}

#[test]
fn a_clean_run_violates_nothing() {
    let mut t = clean("a");
    t.extend(clean("b"));
    t.sort_by_key(|e| e.at_ms);
    assert_eq!(check(&t), vec![]);
}

#[test]
fn a_transport_error_is_accept_first() {
    let mut t = clean("a");
    insert(
        &mut t,
        ev(
            2,
            "a",
            EventKind::TransportError {
                op: "receive",
                error: r#"WebSocket is not connected. Need to call "accept" first."#.into(),
            },
        ),
    );
    let v = check(&t);
    assert_eq!(invariants(&t), [Invariant::AcceptFirst]);
    assert_eq!((v[0].user.as_str(), v[0].at_ms), ("a", 2));
    assert!(v[0].detail.contains("accept"), "{}", v[0].detail);
}

#[test]
fn a_chat_never_acknowledged_nor_rejected_is_lost_with_its_drop_reason() {
    let mut t = clean("a");
    t.retain(|e| !is_ack(e) && !is_event(e));
    insert(
        &mut t,
        ev(
            5,
            "a",
            EventKind::Dropped {
                id: "a/m1".into(),
                reason: "no handler registered".into(),
            },
        ),
    );
    let v = check(&t);
    assert_eq!(invariants(&t), [Invariant::MessageLost]);
    assert!(
        v[0].detail.contains("no handler registered"),
        "{}",
        v[0].detail
    );
}

#[test]
fn an_explicit_rejection_is_not_a_loss() {
    let mut t = clean("a");
    t.retain(|e| !is_ack(e) && !is_event(e));
    insert(
        &mut t,
        ev(
            300,
            "a",
            EventKind::Rejected {
                id: "a/m1".into(),
                reason: "queue full".into(),
            },
        ),
    );
    assert_eq!(check(&t), vec![]);
}

#[test]
fn an_unread_chat_in_flight_at_an_error_close_is_refused_but_a_dropped_one_is_lost() {
    let mut t = clean("a");
    t.retain(|e| !is_ack(e) && !is_event(e) && !matches!(e.kind, EventKind::Terminal { .. }));
    insert(&mut t, ev(301, "a", EventKind::ClientClosed { code: 1013 }));
    insert(&mut t, ev(301, "a", EventKind::Terminal { state: Failed }));
    assert_eq!(
        check(&t),
        vec![],
        "unread, then the server closed with 1013"
    );
    insert(
        &mut t,
        ev(
            5,
            "a",
            EventKind::Dropped {
                id: "a/m1".into(),
                reason: "no handler".into(),
            },
        ),
    );
    assert_eq!(invariants(&t), [Invariant::MessageLost], "read and dropped");
}

#[test]
fn a_push_never_received_is_lost_and_an_unsent_chat_is_lost() {
    let mut t = clean("a");
    t.retain(|e| {
        !matches!(
            &e.kind,
            EventKind::ClientRecv {
                frame: Frame::Push { .. }
            }
        )
    });
    insert(
        &mut t,
        ev(
            900,
            "a",
            EventKind::ClientUnsent {
                id: "a/m2".into(),
                reason: "never opened".into(),
            },
        ),
    );
    let v = check(&t);
    assert_eq!(v.len(), 2, "{v:?}");
    assert!(v.iter().all(|v| v.invariant == Invariant::MessageLost));
    assert!(v.iter().any(|v| v.detail.contains("a/p1")));
    assert!(v.iter().any(|v| v.detail.contains("a/m2")));
}

#[test]
fn acks_in_another_order_than_sent_are_out_of_order() {
    let mut t = clean("a");
    insert(
        &mut t,
        ev(6, "a", EventKind::ClientSend { id: "a/m2".into() }),
    );
    // m2 acknowledged (with its whole run) before m1.
    let at = t.iter().position(is_ack).unwrap();
    t.insert(at, recv(300, "a", ack("a/m2", "a")));
    for (i, kind) in AgentEvent::RUN.into_iter().enumerate() {
        insert(&mut t, recv(400 + i as u64, "a", event(kind, "a/m2", "a")));
    }
    let v = check(&t);
    assert_eq!(invariants(&t), [Invariant::OutOfOrder], "{v:?}");
    assert!(
        v[0].detail.contains("a/m1 received after a/m2"),
        "{}",
        v[0].detail
    );
}

#[test]
fn an_ack_received_twice_is_out_of_order() {
    let mut t = clean("a");
    insert(&mut t, recv(500, "a", ack("a/m1", "a")));
    assert_eq!(invariants(&t), [Invariant::OutOfOrder]);
}

#[test]
fn a_chat_handled_before_processing_ready_is_before_ready() {
    let mut t = clean("a");
    insert(
        &mut t,
        ev(
            150,
            "a",
            EventKind::Handled {
                id: "a/m1".into(),
                as_user: "a".into(),
            },
        ),
    );
    let v = check(&t);
    assert_eq!(invariants(&t), [Invariant::BeforeReady]);
    assert!(v[0].detail.contains("authenticated"), "{}", v[0].detail);
}

#[test]
fn a_frame_for_another_user_is_cross_user() {
    let mut t = clean("a");
    t.extend(clean("b"));
    t.sort_by_key(|e| e.at_ms);
    // b's client gets an event of a's run, labelled as b's: produced for a.
    insert(
        &mut t,
        recv(320, "b", event(AgentEvent::AgentStarted, "a/m1", "b")),
    );
    // a's client gets an ack addressed to b.
    insert(&mut t, recv(330, "a", ack("a/m1", "b")));
    let v = check(&t);
    let cross: Vec<_> = v
        .iter()
        .filter(|v| v.invariant == Invariant::CrossUser)
        .collect();
    assert_eq!(cross.len(), 2, "{v:?}");
    assert!(
        cross
            .iter()
            .any(|v| v.user == "b" && v.detail.contains("produced for user a"))
    );
    assert!(
        cross
            .iter()
            .any(|v| v.user == "a" && v.detail.contains("addressed to user b"))
    );
}

#[rstest]
#[case::missing_one(|run: &mut Vec<AgentEvent>| { run.remove(2); })]
#[case::swapped(|run: &mut Vec<AgentEvent>| run.swap(1, 2))]
#[case::none(|run: &mut Vec<AgentEvent>| run.clear())]
fn an_incomplete_or_reordered_run_is_event_order(#[case] spoil: fn(&mut Vec<AgentEvent>)) {
    let mut t = clean("a");
    t.retain(|e| !is_event(e));
    let mut run = AgentEvent::RUN.to_vec();
    spoil(&mut run);
    for (i, kind) in run.into_iter().enumerate() {
        insert(&mut t, recv(305 + i as u64, "a", event(kind, "a/m1", "a")));
    }
    assert_eq!(invariants(&t), [Invariant::EventOrder]);
}

#[test]
fn a_run_cut_short_by_a_close_is_fine_when_the_rest_was_rejected() {
    let mut t = clean("a");
    t.retain(|e| !is_event(e));
    for (i, kind) in AgentEvent::RUN[..2].iter().enumerate() {
        insert(&mut t, recv(305 + i as u64, "a", event(*kind, "a/m1", "a")));
    }
    assert_eq!(
        invariants(&t),
        [Invariant::EventOrder],
        "silently cut short"
    );
    insert(
        &mut t,
        ev(
            320,
            "a",
            EventKind::Rejected {
                id: "a/m1".into(),
                reason: "connection closed".into(),
            },
        ),
    );
    assert_eq!(check(&t), vec![], "visibly cut short");
}

fn failed_in_setup(user: &str) -> Vec<TraceEvent> {
    vec![
        ev(0, user, EventKind::ClientConnect),
        state(0, user, Connecting),
        ev(0, user, EventKind::Registered),
        state(0, user, Accepted),
        ev(
            100,
            user,
            EventKind::CleanupRegistered {
                name: "auth_session",
            },
        ),
        state(100, user, Authenticated),
        ev(200, user, EventKind::ServerClose { code: 1011 }),
        state(200, user, Failed),
        ev(200, user, EventKind::Terminal { state: Failed }),
    ]
}

#[test]
fn a_failed_connection_left_registered_with_unrun_cleanups_leaks() {
    let t = failed_in_setup("a");
    let v = check(&t);
    assert_eq!(invariants(&t), [Invariant::Leak]);
    assert_eq!(v.len(), 2, "registration and the cleanup: {v:?}");
}

#[test]
fn a_failed_connection_rolled_back_once_does_not_leak() {
    let mut t = failed_in_setup("a");
    insert(&mut t, ev(200, "a", EventKind::Unregistered));
    insert(
        &mut t,
        ev(
            200,
            "a",
            EventKind::CleanupRan {
                name: "auth_session",
            },
        ),
    );
    assert_eq!(check(&t), vec![]);
    // Twice is a bug of its own.
    insert(
        &mut t,
        ev(
            200,
            "a",
            EventKind::CleanupRan {
                name: "auth_session",
            },
        ),
    );
    let v = check(&t);
    assert_eq!(invariants(&t), [Invariant::Leak]);
    assert!(v[0].detail.contains("2 times"), "{}", v[0].detail);
}

#[test]
fn a_connection_with_no_terminal_state_is_stuck() {
    let mut t = clean("a");
    t.retain(|e| !matches!(&e.kind, EventKind::Terminal { .. }));
    let v = check(&t);
    assert_eq!(invariants(&t), [Invariant::Stuck]);
    assert_eq!(v[0].at_ms, 1000, "reported at the end of the run");
}

#[test]
fn violations_are_sorted_by_time_then_invariant() {
    let mut t = clean("a");
    t.retain(|e| !matches!(&e.kind, EventKind::Terminal { .. }));
    insert(
        &mut t,
        ev(
            1,
            "a",
            EventKind::TransportError {
                op: "send",
                error: "x".into(),
            },
        ),
    );
    let v = check(&t);
    let times: Vec<u64> = v.iter().map(|v| v.at_ms).collect();
    let mut sorted = times.clone();
    sorted.sort();
    assert_eq!(times, sorted);
    assert_eq!(v[0].invariant, Invariant::AcceptFirst);
}

#[test]
fn a_violation_reads_as_its_invariant_user_time_and_detail() {
    let v = racegate_replay::Violation {
        invariant: Invariant::MessageLost,
        user: "u".into(),
        at_ms: 5,
        detail: "u/m1 was never delivered and never rejected".into(),
    };
    assert_eq!(
        v.to_string(),
        "message-lost user=u at 5 ms: u/m1 was never delivered and never rejected"
    );
}

#[test]
fn a_leaked_registration_is_reported_when_its_users_part_of_the_run_ended_and_each_cleanup_when_registered()
 {
    // User a fails at 200 ms, still registered; user b goes on until 1000 ms.
    let mut t = failed_in_setup("a");
    for e in clean("b") {
        insert(&mut t, e);
    }
    let leaks: Vec<(u64, String)> = check(&t)
        .into_iter()
        .filter(|v| v.invariant == Invariant::Leak)
        .map(|v| (v.at_ms, v.detail))
        .collect();
    assert_eq!(
        leaks,
        [
            (
                100,
                "ended before ready but its `auth_session` cleanup never ran".to_string()
            ),
            (
                200,
                "ended before ready but is still registered with the connection manager"
                    .to_string()
            ),
        ]
    );
}
