//! The seed's unit test plan (1.1 state machine, 1.2 queuing), by name and intent.
#![cfg(not(racegate_loom))]

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Barrier, Mutex};
use std::thread;

use racegate_core::ConnectionState::{self, *};
use racegate_core::{
    ConnectionStateMachine, Delivery, EnqueueError, Limit, QueueLimits, Registration,
    TransitionError,
};
use rstest::rstest;

type Log = Arc<Mutex<Vec<String>>>;

fn machine(limits: QueueLimits) -> (ConnectionStateMachine<String, impl FnMut(String)>, Log) {
    let log: Log = Arc::default();
    let sink = {
        let log = log.clone();
        move |m: String| log.lock().unwrap().push(m)
    };
    (ConnectionStateMachine::new(limits, sink), log)
}

fn to_ready<M: racegate_core::Payload, S: racegate_core::Sink<M>>(
    conn: &ConnectionStateMachine<M, S>,
) {
    for s in [Accepted, Authenticated, ServicesReady, ProcessingReady] {
        conn.advance(s).unwrap();
    }
}

#[test]
fn connection_state_progression() {
    let (conn, _) = machine(QueueLimits::default());
    let mut seen = vec![conn.state()];
    for s in [Accepted, Authenticated, ServicesReady, ProcessingReady] {
        assert!(!conn.is_ready());
        let advanced = conn.advance(s).unwrap();
        assert_eq!(advanced.to, s);
        seen.push(conn.state());
    }
    assert_eq!(
        seen,
        [
            Connecting,
            Accepted,
            Authenticated,
            ServicesReady,
            ProcessingReady
        ]
    );
    assert!(conn.is_ready());
    assert_eq!(conn.wait_ready(), Ok(()));
    let ended = conn.close().unwrap();
    assert_eq!((ended.from, ended.state), (ProcessingReady, Closed));
}

/// The lifecycle written out by hand, independently of the `match` in `transition`.
const ALLOWED: &[(ConnectionState, ConnectionState)] = &[
    (Connecting, Accepted),
    (Accepted, Authenticated),
    (Authenticated, ServicesReady),
    (ServicesReady, ProcessingReady),
    (Connecting, Closed),
    (Connecting, Failed),
    (Accepted, Closed),
    (Accepted, Failed),
    (Authenticated, Closed),
    (Authenticated, Failed),
    (ServicesReady, Closed),
    (ServicesReady, Failed),
    (ProcessingReady, Closed),
    (ProcessingReady, Failed),
];

#[rstest]
fn invalid_state_transitions(
    #[values(
        Connecting,
        Accepted,
        Authenticated,
        ServicesReady,
        ProcessingReady,
        Closed,
        Failed
    )]
    from: ConnectionState,
    #[values(
        Connecting,
        Accepted,
        Authenticated,
        ServicesReady,
        ProcessingReady,
        Closed,
        Failed
    )]
    to: ConnectionState,
) {
    let expected = if ALLOWED.contains(&(from, to)) {
        Ok(to)
    } else {
        Err(TransitionError { from, to })
    };
    assert_eq!(from.transition(to), expected, "{from} -> {to}");
    if let Err(e) = expected {
        let text = e.to_string();
        assert!(
            text.contains(from.name()) && text.contains(to.name()),
            "error must name both states: {text}"
        );
    }

    // The shared machine agrees with the pure function, and a refused transition changes nothing.
    let (conn, _) = machine(QueueLimits::default());
    let path = [Accepted, Authenticated, ServicesReady, ProcessingReady];
    match from {
        Closed | Failed => drop(conn.end(from).unwrap()),
        live => {
            for s in path.iter().take_while(|s| **s <= live) {
                conn.advance(*s).unwrap();
            }
        }
    }
    assert_eq!(conn.state(), from);
    let result = if to.is_terminal() {
        conn.end(to).map(|e| e.state)
    } else {
        conn.advance(to).map(|a| a.to)
    };
    assert_eq!(result, expected);
    if expected.is_err() {
        assert_eq!(conn.state(), from, "a refused transition must not move");
    }
}

#[rstest]
#[case::fails_during_auth(Accepted, Failed)]
#[case::fails_during_services(Authenticated, Failed)]
#[case::fails_during_registration(ServicesReady, Failed)]
#[case::client_closes_mid_setup(Authenticated, Closed)]
fn state_rollback_on_failure(#[case] reached: ConnectionState, #[case] end: ConnectionState) {
    let (conn, handled) = machine(QueueLimits::default());
    let order = Arc::new(Mutex::new(Vec::new()));
    let mut registered = 0;
    for s in [Accepted, Authenticated, ServicesReady] {
        if s > reached {
            break;
        }
        conn.advance(s).unwrap();
        let order = order.clone();
        assert_eq!(
            conn.register_cleanup(move || order.lock().unwrap().push(s)),
            Registration::Registered
        );
        registered += 1;
    }
    conn.deliver_or_enqueue("in flight".into()).unwrap();
    let ended = conn.end(end).unwrap();
    assert_eq!(ended.state, end);
    assert_eq!(ended.cleanups_run, registered);
    assert_eq!(ended.undelivered, ["in flight"], "returned, not dropped");
    assert!(handled.lock().unwrap().is_empty());
    // Reverse order of registration.
    let mut expected: Vec<_> = [Accepted, Authenticated, ServicesReady]
        .into_iter()
        .filter(|s| *s <= reached)
        .collect();
    expected.reverse();
    assert_eq!(*order.lock().unwrap(), expected);

    // Exactly once: ending again is refused and runs nothing.
    assert!(conn.close().is_err());
    assert_eq!(order.lock().unwrap().len(), registered);
    // A cleanup registered after the failure runs at once, once.
    let late = Arc::new(AtomicUsize::new(0));
    let l = late.clone();
    let reg = conn.register_cleanup(move || {
        l.fetch_add(1, Ordering::SeqCst);
    });
    assert_eq!(reg, Registration::RanImmediately);
    assert_eq!(late.load(Ordering::SeqCst), 1);
    assert_eq!(conn.wait_ready(), Err(end));
}

#[test]
fn cleanups_do_not_run_once_ready() {
    let (conn, _) = machine(QueueLimits::default());
    let ran = Arc::new(AtomicUsize::new(0));
    let r = ran.clone();
    conn.register_cleanup(move || {
        r.fetch_add(1, Ordering::SeqCst);
    });
    to_ready(&conn);
    let ended = conn.close().unwrap();
    assert_eq!(ended.cleanups_run, 0);
    assert_eq!(ran.load(Ordering::SeqCst), 0);
    assert_eq!(conn.register_cleanup(|| {}), Registration::Committed);
}

#[test]
fn concurrent_state_checks() {
    // One setup thread and four checkers that each send while polling readiness. Every message
    // is delivered exactly once; nothing is handled before ready; readiness, once seen, stays.
    const SENDERS: usize = 4;
    const PER_SENDER: usize = 500;
    let (conn, handled) = machine(QueueLimits {
        max_messages: SENDERS * PER_SENDER,
        max_bytes: usize::MAX,
    });
    let conn = Arc::new(conn);
    let start = Arc::new(Barrier::new(SENDERS + 1));
    let mut threads = Vec::new();
    for t in 0..SENDERS {
        let (conn, start) = (conn.clone(), start.clone());
        threads.push(thread::spawn(move || {
            start.wait();
            let mut seen_ready = false;
            for i in 0..PER_SENDER {
                let ready = conn.is_ready();
                assert!(ready || !seen_ready, "readiness went backwards");
                seen_ready |= ready;
                conn.deliver_or_enqueue(format!("{t}:{i}")).unwrap();
            }
        }));
    }
    start.wait();
    to_ready(&conn);
    for t in threads {
        t.join().unwrap();
    }
    let handled = handled.lock().unwrap();
    assert_eq!(handled.len(), SENDERS * PER_SENDER);
    // Per sender FIFO, which also proves no duplicates.
    for t in 0..SENDERS {
        let mine: Vec<usize> = handled
            .iter()
            .filter_map(|m| m.strip_prefix(&format!("{t}:")))
            .map(|i| i.parse().unwrap())
            .collect();
        assert_eq!(mine, (0..PER_SENDER).collect::<Vec<_>>());
    }
}

#[rstest]
#[case::connecting(Connecting)]
#[case::accepted(Accepted)]
#[case::authenticated(Authenticated)]
#[case::services_ready(ServicesReady)]
fn queue_messages_during_setup(#[case] at: ConnectionState) {
    let (conn, handled) = machine(QueueLimits::default());
    for s in [Accepted, Authenticated, ServicesReady] {
        if s <= at {
            conn.advance(s).unwrap();
        }
    }
    assert_eq!(
        conn.deliver_or_enqueue("m".into()),
        Ok(Delivery::Queued { depth: 1 })
    );
    assert!(handled.lock().unwrap().is_empty(), "nothing before ready");
    assert_eq!(conn.queued(), 1);
}

#[test]
fn flush_queue_after_ready() {
    let (conn, handled) = machine(QueueLimits::default());
    conn.deliver_or_enqueue("a".into()).unwrap();
    conn.advance(Accepted).unwrap();
    conn.deliver_or_enqueue("b".into()).unwrap();
    conn.advance(Authenticated).unwrap();
    conn.advance(ServicesReady).unwrap();
    assert!(handled.lock().unwrap().is_empty());
    let advanced = conn.advance(ProcessingReady).unwrap();
    assert_eq!(advanced.flushed, 2);
    assert_eq!(*handled.lock().unwrap(), ["a", "b"]);
    assert_eq!(conn.queued(), 0);
    assert_eq!(conn.deliver_or_enqueue("c".into()), Ok(Delivery::Delivered));
    assert_eq!(*handled.lock().unwrap(), ["a", "b", "c"]);
}

#[rstest]
#[case::by_count(QueueLimits { max_messages: 2, max_bytes: 1024 }, Limit::Messages(2))]
#[case::by_bytes(QueueLimits { max_messages: 64, max_bytes: 5 }, Limit::Bytes(5))]
fn queue_overflow_protection(#[case] limits: QueueLimits, #[case] limit: Limit) {
    let (conn, handled) = machine(limits);
    conn.deliver_or_enqueue("ab".into()).unwrap();
    conn.deliver_or_enqueue("cd".into()).unwrap();
    let err = conn.deliver_or_enqueue("efg".into()).unwrap_err();
    assert_eq!(err.close_code(), Some(1013));
    assert!(err.to_string().contains("1013"), "{err}");
    assert_eq!(
        err,
        EnqueueError::Full {
            message: "efg".into(),
            limit
        },
        "the rejected message comes back"
    );
    // The caller turns overflow into a close: everything held comes back too.
    let ended = conn.fail().unwrap();
    assert_eq!(ended.undelivered, ["ab", "cd"]);
    assert!(handled.lock().unwrap().is_empty());
    // After the end, further messages are rejected as closed, still handed back.
    let err = conn.deliver_or_enqueue("late".into()).unwrap_err();
    assert_eq!(err.close_code(), None);
    assert_eq!(err.into_message(), "late");
}

#[test]
fn queue_message_ordering() {
    let (conn, handled) = machine(QueueLimits::default());
    let mut expected = Vec::new();
    for (i, s) in [Accepted, Authenticated, ServicesReady, ProcessingReady]
        .into_iter()
        .enumerate()
    {
        for j in 0..5 {
            let m = format!("{i}.{j}");
            conn.deliver_or_enqueue(m.clone()).unwrap();
            expected.push(m);
        }
        conn.advance(s).unwrap();
    }
    for j in 0..5 {
        let m = format!("after.{j}");
        conn.deliver_or_enqueue(m.clone()).unwrap();
        expected.push(m);
    }
    assert_eq!(*handled.lock().unwrap(), expected);
}

#[test]
fn wait_ready_wakes_on_ready_and_on_failure() {
    for outcome in [Ok(()), Err(Failed)] {
        let (conn, _) = machine(QueueLimits::default());
        let conn = Arc::new(conn);
        // A channel, not `join`: a lost wake-up must fail the test, not hang it.
        let (tx, waiter) = std::sync::mpsc::channel();
        {
            let conn = conn.clone();
            thread::spawn(move || tx.send(conn.wait_ready()));
        }
        match outcome {
            Ok(()) => to_ready(&conn),
            Err(_) => drop(conn.fail().unwrap()),
        }
        assert_eq!(
            waiter.recv_timeout(std::time::Duration::from_secs(10)),
            Ok(outcome)
        );
    }
    let (conn, _) = machine(QueueLimits::default());
    assert_eq!(
        conn.wait_ready_timeout(std::time::Duration::from_millis(1)),
        Err(Connecting)
    );
}
