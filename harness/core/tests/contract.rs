//! The core's contract, one behaviour per test: the queue's bounds and byte accounting, the
//! lifecycle's forward path, waking waiters, timeouts, and what a panicking sink leaves behind.
//!
//! Written to close what `make mutants` showed `lifecycle.rs` left unpinned; each test states a
//! behaviour a caller relies on, not a mutant.
#![cfg(not(racegate_loom))]

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use racegate_core::ConnectionState::{self, *};
use racegate_core::{
    ConnectionStateMachine, Delivery, EnqueueError, Limit, MessageQueue, Payload, QueueLimits,
    Registration,
};

type Log = Arc<Mutex<Vec<String>>>;

fn machine(limits: QueueLimits) -> (ConnectionStateMachine<String, impl FnMut(String)>, Log) {
    let log: Log = Arc::default();
    let sink = {
        let log = log.clone();
        move |m: String| log.lock().unwrap().push(m)
    };
    (ConnectionStateMachine::new(limits, sink), log)
}

fn limits(max_messages: usize, max_bytes: usize) -> QueueLimits {
    QueueLimits {
        max_messages,
        max_bytes,
    }
}

/// How long a test gives a spawned thread to block in `wait_ready` before it changes the state.
/// Too short only weakens the test (the waiter finds the state already changed); it cannot make
/// it fail.
const LET_IT_BLOCK: Duration = Duration::from_millis(100);

/// How long a woken waiter may take to report back before the test calls the wake-up lost. A
/// runnable thread left unscheduled for 10 s is beyond any load a 2-core CI machine sees, and a
/// lost wake-up must fail well inside `.cargo/mutants.toml`'s test timeout, not hang into it.
const WAKE_UP_MARGIN: Duration = Duration::from_secs(10);

// ---- MessageQueue ----

#[test]
fn push_at_the_message_bound_is_refused_and_handed_back() {
    let mut q = MessageQueue::new(limits(2, 1024));
    assert_eq!(q.push("a"), Ok(()));
    assert_eq!(q.push("b"), Ok(()));
    assert_eq!(q.push("c"), Err(("c", Limit::Messages(2))));
    assert_eq!(q.len(), 2);
}

#[test]
fn a_message_that_fills_the_byte_bound_exactly_is_accepted_one_byte_more_is_refused() {
    let mut q = MessageQueue::new(limits(64, 5));
    assert_eq!(q.push("abc"), Ok(()));
    assert_eq!(q.push("de"), Ok(()), "3 + 2 bytes is exactly the bound");
    assert_eq!(q.bytes(), 5);
    assert_eq!(q.push("f"), Err(("f", Limit::Bytes(5))));
    let mut q = MessageQueue::new(limits(64, 5));
    assert_eq!(q.push("abcdef"), Err(("abcdef", Limit::Bytes(5))));
    assert!(q.is_empty());
}

#[test]
fn popping_releases_the_bytes_the_message_held_so_the_space_can_be_reused() {
    let mut q = MessageQueue::new(limits(64, 6));
    q.push("abcd").unwrap();
    q.push("ef").unwrap();
    assert_eq!(q.bytes(), 6);
    assert_eq!(q.pop(), Some("abcd"));
    assert_eq!(q.bytes(), 2);
    assert_eq!(
        q.push("ghij"),
        Ok(()),
        "the popped message's 4 bytes are free again"
    );
    assert_eq!(q.pop(), Some("ef"));
    assert_eq!(q.pop(), Some("ghij"));
    assert_eq!(q.bytes(), 0);
    assert_eq!(q.pop(), None);
}

#[test]
fn drain_all_returns_everything_oldest_first_and_frees_every_byte() {
    let mut q = MessageQueue::new(limits(3, 6));
    for m in ["ab", "cd", "ef"] {
        q.push(m).unwrap();
    }
    assert_eq!(q.drain_all(), ["ab", "cd", "ef"]);
    assert_eq!((q.len(), q.bytes(), q.is_empty()), (0, 0, true));
    for m in ["gh", "ij", "kl"] {
        assert_eq!(q.push(m), Ok(()), "the bounds start over after a drain");
    }
}

#[test]
fn a_queue_reports_what_it_holds_and_the_limits_it_was_given() {
    let l = limits(7, 99);
    let mut q = MessageQueue::new(l);
    assert!(q.is_empty());
    q.push(vec![1u8, 2, 3]).unwrap();
    assert_eq!((q.len(), q.bytes(), q.is_empty()), (1, 3, false));
    assert_eq!(q.limits(), l);
}

#[test]
fn payloads_weigh_their_length_or_their_size() {
    assert_eq!("héllo".byte_len(), 6);
    assert_eq!(String::from("abc").byte_len(), 3);
    assert_eq!(vec![0u8; 9].byte_len(), 9);
    assert_eq!(
        [
            1u8.byte_len(),
            1u16.byte_len(),
            1u32.byte_len(),
            1u64.byte_len()
        ],
        [1, 2, 4, 8]
    );
    assert_eq!(1usize.byte_len(), std::mem::size_of::<usize>());
}

#[test]
fn the_default_limits_are_64_messages_or_one_mebibyte() {
    assert_eq!(QueueLimits::default(), limits(64, 1 << 20));
}

#[test]
fn a_limit_names_its_bound_and_its_unit() {
    assert_eq!(Limit::Messages(64).to_string(), "64 messages");
    assert_eq!(Limit::Bytes(5).to_string(), "5 bytes");
}

// ---- ConnectionState ----

#[test]
fn next_steps_forward_one_state_at_a_time_and_stops_at_processing_ready() {
    let next: Vec<Option<ConnectionState>> =
        ConnectionState::ALL.iter().map(|s| s.next()).collect();
    assert_eq!(
        next,
        [
            Some(Accepted),
            Some(Authenticated),
            Some(ServicesReady),
            Some(ProcessingReady),
            None,
            None,
            None
        ]
    );
}

#[test]
fn only_closed_and_failed_are_terminal_and_only_processing_ready_is_ready() {
    for s in ConnectionState::ALL {
        assert_eq!(s.is_terminal(), matches!(s, Closed | Failed), "{s}");
        assert_eq!(s.is_ready(), s == ProcessingReady, "{s}");
    }
}

#[test]
fn states_have_stable_snake_case_names() {
    let names: Vec<String> = ConnectionState::ALL.iter().map(|s| s.to_string()).collect();
    assert_eq!(
        names,
        [
            "connecting",
            "accepted",
            "authenticated",
            "services_ready",
            "processing_ready",
            "closed",
            "failed"
        ]
    );
}

#[test]
fn a_refused_transition_says_where_the_lifecycle_could_go_instead() {
    let skip = Connecting.transition(Authenticated).unwrap_err();
    assert_eq!(
        skip.to_string(),
        "invalid transition connecting -> authenticated: \
         from connecting the lifecycle goes to accepted, closed or failed"
    );
    let again = ProcessingReady.transition(ProcessingReady).unwrap_err();
    assert_eq!(
        again.to_string(),
        "invalid transition processing_ready -> processing_ready: \
         from processing_ready the lifecycle may only close or fail"
    );
    let after_end = Failed.transition(Closed).unwrap_err();
    assert_eq!(
        after_end.to_string(),
        "invalid transition failed -> closed: failed is terminal"
    );
}

// ---- ConnectionStateMachine ----

#[test]
fn the_state_snapshot_follows_every_transition_including_the_end() {
    for end in [Closed, Failed] {
        let (conn, _) = machine(QueueLimits::default());
        for s in [Accepted, Authenticated, ServicesReady, ProcessingReady] {
            conn.advance(s).unwrap();
            assert_eq!(conn.state(), s);
        }
        drop(conn.end(end).unwrap());
        assert_eq!((conn.state(), conn.is_ready()), (end, false));
        assert!(format!("{conn:?}").contains(&format!("{end:?}")));
    }
}

#[test]
fn advance_refuses_to_end_the_connection_and_end_refuses_to_advance_it() {
    let (conn, _) = machine(QueueLimits::default());
    conn.deliver_or_enqueue("held".into()).unwrap();
    let e = conn.advance(Closed).unwrap_err();
    assert_eq!((e.from, e.to), (Connecting, Closed));
    let e = conn.end(Accepted).unwrap_err();
    assert_eq!((e.from, e.to), (Connecting, Accepted));
    assert_eq!(conn.state(), Connecting);
    assert_eq!(conn.queued(), 1, "nothing was dropped by either refusal");
}

#[test]
fn only_entering_processing_ready_flushes_and_the_flush_is_counted() {
    let (conn, handled) = machine(QueueLimits::default());
    conn.deliver_or_enqueue("a".into()).unwrap();
    conn.deliver_or_enqueue("b".into()).unwrap();
    for s in [Accepted, Authenticated, ServicesReady] {
        assert_eq!(conn.advance(s).unwrap().flushed, 0);
        assert_eq!(conn.queued(), 2);
    }
    assert!(handled.lock().unwrap().is_empty());
    assert_eq!(conn.advance(ProcessingReady).unwrap().flushed, 2);
    assert_eq!(*handled.lock().unwrap(), ["a", "b"]);
}

#[test]
fn a_message_refused_as_full_names_the_bound_and_comes_back_intact() {
    let (conn, _) = machine(limits(1, 1024));
    conn.deliver_or_enqueue("a".into()).unwrap();
    let err = conn.deliver_or_enqueue("b".into()).unwrap_err();
    assert_eq!(
        err.to_string(),
        "message rejected: the pre-ready queue is full (1 messages); \
         close with 1013 and let the client retry"
    );
    assert_eq!(format!("{err:?}"), err.to_string());
    assert_eq!(err.into_message(), "b");
}

#[test]
fn a_message_refused_as_closed_names_the_state_and_comes_back_intact() {
    let (conn, _) = machine(QueueLimits::default());
    drop(conn.close().unwrap());
    let err = conn.deliver_or_enqueue("late".into()).unwrap_err();
    assert_eq!(
        err.to_string(),
        "message rejected: the connection is closed"
    );
    assert_eq!(
        err,
        EnqueueError::Closed {
            message: "late".into(),
            state: Closed
        }
    );
}

#[test]
fn ending_a_ready_connection_runs_no_cleanup_and_a_late_one_is_committed_unrun() {
    let (conn, _) = machine(QueueLimits::default());
    for s in [Accepted, Authenticated, ServicesReady, ProcessingReady] {
        conn.advance(s).unwrap();
    }
    drop(conn.fail().unwrap());
    let ran = Arc::new(AtomicUsize::new(0));
    let r = ran.clone();
    let reg = conn.register_cleanup(move || {
        r.fetch_add(1, Ordering::SeqCst);
    });
    assert_eq!(reg, Registration::Committed);
    assert_eq!(ran.load(Ordering::SeqCst), 0);
}

#[test]
fn cleanups_run_newest_first_and_are_counted() {
    let (conn, _) = machine(QueueLimits::default());
    let order = Arc::new(Mutex::new(Vec::new()));
    for i in 0..3 {
        let order = order.clone();
        conn.register_cleanup(move || order.lock().unwrap().push(i));
    }
    let ended = conn.close().unwrap();
    assert_eq!(ended.cleanups_run, 3);
    assert_eq!(*order.lock().unwrap(), [2, 1, 0]);
}

/// Spawns a thread blocked in `wait_ready`, and returns where its answer will arrive.
fn blocked_waiter<M, S>(
    conn: &Arc<ConnectionStateMachine<M, S>>,
) -> mpsc::Receiver<Result<(), ConnectionState>>
where
    M: Payload + Send + 'static,
    S: racegate_core::Sink<M> + 'static,
{
    let (tx, rx) = mpsc::channel();
    let conn = conn.clone();
    thread::spawn(move || {
        let _ = tx.send(conn.wait_ready());
    });
    thread::sleep(LET_IT_BLOCK);
    rx
}

#[test]
fn a_thread_blocked_in_wait_ready_is_woken_when_the_connection_becomes_ready() {
    let (conn, _) = machine(QueueLimits::default());
    let conn = Arc::new(conn);
    for s in [Accepted, Authenticated, ServicesReady] {
        conn.advance(s).unwrap();
    }
    let waiter = blocked_waiter(&conn);
    conn.advance(ProcessingReady).unwrap();
    assert_eq!(
        waiter.recv_timeout(WAKE_UP_MARGIN),
        Ok(Ok(())),
        "the waiter was never woken"
    );
}

#[test]
fn a_thread_blocked_in_wait_ready_is_woken_when_the_connection_fails() {
    let (conn, _) = machine(QueueLimits::default());
    let conn = Arc::new(conn);
    conn.advance(Accepted).unwrap();
    let waiter = blocked_waiter(&conn);
    drop(conn.fail().unwrap());
    assert_eq!(
        waiter.recv_timeout(WAKE_UP_MARGIN),
        Ok(Err(Failed)),
        "the waiter was never woken"
    );
}

#[test]
fn wait_ready_timeout_returns_as_soon_as_readiness_comes_within_the_timeout() {
    let (conn, _) = machine(QueueLimits::default());
    let conn = Arc::new(conn);
    let setup = {
        let conn = conn.clone();
        thread::spawn(move || {
            thread::sleep(LET_IT_BLOCK);
            for s in [Accepted, Authenticated, ServicesReady, ProcessingReady] {
                conn.advance(s).unwrap();
            }
        })
    };
    assert_eq!(conn.wait_ready_timeout(WAKE_UP_MARGIN), Ok(()));
    setup.join().unwrap();
}

#[test]
fn wait_ready_timeout_reports_the_end_when_the_connection_ends_within_the_timeout() {
    let (conn, _) = machine(QueueLimits::default());
    let conn = Arc::new(conn);
    let ender = {
        let conn = conn.clone();
        thread::spawn(move || {
            thread::sleep(LET_IT_BLOCK);
            drop(conn.close().unwrap());
        })
    };
    assert_eq!(conn.wait_ready_timeout(WAKE_UP_MARGIN), Err(Closed));
    ender.join().unwrap();
}

#[test]
fn wait_ready_timeout_gives_up_no_earlier_than_the_timeout_with_the_state_then() {
    let (conn, _) = machine(QueueLimits::default());
    conn.advance(Accepted).unwrap();
    let timeout = Duration::from_millis(50);
    let start = Instant::now();
    assert_eq!(conn.wait_ready_timeout(timeout), Err(Accepted));
    let waited = start.elapsed();
    assert!(
        waited >= timeout,
        "gave up after {waited:?}, before {timeout:?}"
    );
    assert!(waited < WAKE_UP_MARGIN, "overslept: {waited:?}");
}

// ---- A panicking sink ----

/// A machine whose sink panics on the message "boom" and logs the rest.
fn fragile() -> (ConnectionStateMachine<String, impl FnMut(String)>, Log) {
    let log: Log = Arc::default();
    let sink = {
        let log = log.clone();
        move |m: String| {
            assert_ne!(m, "boom", "the sink's handler crashed");
            log.lock().unwrap().push(m);
        }
    };
    (
        ConnectionStateMachine::new(QueueLimits::default(), sink),
        log,
    )
}

#[test]
fn a_sink_panic_mid_flush_leaves_the_machine_ready_with_the_rest_still_queued_in_order() {
    let (conn, handled) = fragile();
    let rolled_back = Arc::new(AtomicUsize::new(0));
    let ran = rolled_back.clone();
    conn.register_cleanup(move || {
        ran.fetch_add(1, Ordering::SeqCst);
    });
    for m in ["a", "boom", "c", "d"] {
        conn.deliver_or_enqueue(m.into()).unwrap();
    }
    for s in [Accepted, Authenticated, ServicesReady] {
        conn.advance(s).unwrap();
    }
    let panicked = catch_unwind(AssertUnwindSafe(|| conn.advance(ProcessingReady)));
    assert!(panicked.is_err(), "the sink's panic reaches the caller");

    // The state says what happened: something was delivered, so the connection is ready.
    assert_eq!(conn.state(), ProcessingReady);
    assert_eq!(conn.wait_ready(), Ok(()));
    assert_eq!(*handled.lock().unwrap(), ["a"], "`boom` went to the sink");
    assert_eq!(
        conn.queued(),
        2,
        "nothing popped and lost: c and d are still held"
    );

    // A later message queues behind them rather than overtaking them.
    assert_eq!(
        conn.deliver_or_enqueue("e".into()),
        Ok(Delivery::Queued { depth: 3 })
    );
    assert_eq!(*handled.lock().unwrap(), ["a"]);

    // Ending hands them back in order; setup was committed, so no rollback runs.
    let ended = conn.close().unwrap();
    assert_eq!(ended.undelivered, ["c", "d", "e"]);
    assert_eq!((ended.from, ended.cleanups_run), (ProcessingReady, 0));
    assert_eq!(rolled_back.load(Ordering::SeqCst), 0);
}

#[test]
fn a_sink_panic_mid_flush_still_wakes_threads_waiting_for_readiness() {
    let (conn, _) = fragile();
    let conn = Arc::new(conn);
    conn.deliver_or_enqueue("boom".into()).unwrap();
    for s in [Accepted, Authenticated, ServicesReady] {
        conn.advance(s).unwrap();
    }
    let waiter = blocked_waiter(&conn);
    assert!(catch_unwind(AssertUnwindSafe(|| conn.advance(ProcessingReady))).is_err());
    assert_eq!(
        waiter.recv_timeout(WAKE_UP_MARGIN),
        Ok(Ok(())),
        "the waiter was never woken"
    );
}

#[test]
fn a_sink_panic_on_direct_delivery_leaves_the_machine_ready_and_usable() {
    let (conn, handled) = fragile();
    for s in [Accepted, Authenticated, ServicesReady, ProcessingReady] {
        conn.advance(s).unwrap();
    }
    assert!(catch_unwind(AssertUnwindSafe(|| conn.deliver_or_enqueue("boom".into()))).is_err());
    assert_eq!(conn.state(), ProcessingReady);
    assert_eq!(conn.queued(), 0);
    assert_eq!(
        conn.deliver_or_enqueue("next".into()),
        Ok(Delivery::Delivered)
    );
    assert_eq!(*handled.lock().unwrap(), ["next"]);
}

#[test]
fn a_cleanup_panic_reaches_the_caller_after_the_end_and_the_older_cleanups_do_not_run() {
    let (conn, _) = machine(QueueLimits::default());
    let ran = Arc::new(Mutex::new(Vec::new()));
    for i in 0..3 {
        let ran = ran.clone();
        conn.register_cleanup(move || {
            assert_ne!(i, 1, "rollback step 1 crashed");
            ran.lock().unwrap().push(i);
        });
    }
    conn.deliver_or_enqueue("held".into()).unwrap();
    assert!(catch_unwind(AssertUnwindSafe(|| conn.fail())).is_err());
    assert_eq!(
        *ran.lock().unwrap(),
        [2],
        "newest first, stopped by the panic"
    );
    assert_eq!(
        conn.state(),
        Failed,
        "the end happened before the cleanups ran"
    );
    assert_eq!(conn.queued(), 0);
    assert_eq!(conn.register_cleanup(|| {}), Registration::RanImmediately);
}
