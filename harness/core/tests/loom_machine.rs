//! Exhaustive interleavings of the connection lifecycle, under loom.
//!
//! Run with `make loom` (release, its own target dir, `--cfg racegate_loom`). Each model prints
//! `loom model <name>: <N> interleavings, <holds|violated>`; N is counted here, one per execution
//! loom runs. `LOOM_MAX_PREEMPTIONS` overrides the bound; `LOOM_LOG=1` and
//! `LOOM_CHECKPOINT_FILE` work as in loom's own docs.
#![cfg(racegate_loom)]

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc as StdArc;
use std::sync::atomic::{AtomicUsize as StdAtomicUsize, Ordering as StdOrdering};

use loom::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use loom::sync::{Arc, Mutex};
use loom::thread;
use racegate_core::ConnectionState::*;
use racegate_core::{ConnectionStateMachine, EnqueueError, Payload, QueueLimits, Registration};

/// A message tagged with who sent it and its place in that sender's order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Msg {
    from: u8,
    seq: u8,
}

impl Payload for Msg {
    fn byte_len(&self) -> usize {
        2
    }
}

/// Default bound: 6 gives ready_handoff tens of thousands of executions in a few seconds (release,
/// two cores); the issue asks for at least 1,000 and a suite under two minutes.
const DEFAULT_PREEMPTIONS: usize = 6;

/// Runs `model` under loom, counts its executions, prints the summary line, and returns whether
/// every execution held.
fn explore(name: &str, model: impl Fn() + Sync + Send + 'static) -> (usize, bool) {
    let (n, held) = run(model);
    let verdict = if held { "holds" } else { "violated" };
    println!("loom model {name}: {n} interleavings, {verdict}");
    (n, held)
}

/// Runs `model` under loom and counts its executions; true if every execution held.
fn run(model: impl Fn() + Sync + Send + 'static) -> (usize, bool) {
    let count = StdArc::new(StdAtomicUsize::new(0));
    let mut builder = loom::model::Builder::new();
    if std::env::var_os("LOOM_MAX_PREEMPTIONS").is_none() {
        builder.preemption_bound = Some(DEFAULT_PREEMPTIONS);
    }
    let counter = count.clone();
    let held = catch_unwind(AssertUnwindSafe(|| {
        builder.check(move || {
            counter.fetch_add(1, StdOrdering::Relaxed);
            model();
        })
    }))
    .is_ok();
    (count.load(StdOrdering::Relaxed), held)
}

/// A setup thread walks to ready while a reader (3 messages) and a notifier (2 events) deliver: every message is
/// delivered exactly once, in each sender's order, and none before setup made it ready.
#[test]
fn ready_handoff_delivers_each_message_once_in_order_never_before_ready() {
    let (n, held) = explore("ready_handoff", || {
        let ready_called = Arc::new(AtomicBool::new(false));
        let log = Arc::new(Mutex::new(Vec::new()));
        let sink = {
            let (log, ready_called) = (log.clone(), ready_called.clone());
            move |m: Msg| {
                assert!(
                    ready_called.load(Ordering::Acquire),
                    "{m:?} delivered before setup reached ProcessingReady"
                );
                log.lock().unwrap().push(m);
            }
        };
        // Capacity shrunk to the model's size, so the queue's edge is inside what loom explores.
        let limits = QueueLimits {
            max_messages: 5,
            max_bytes: 64,
        };
        let conn = Arc::new(ConnectionStateMachine::new(limits, sink));

        let senders: Vec<_> = [(0u8, 3u8), (1, 2)]
            .into_iter()
            .map(|(from, count)| {
                let conn = conn.clone();
                thread::spawn(move || {
                    for seq in 0..count {
                        conn.deliver_or_enqueue(Msg { from, seq }).unwrap();
                    }
                })
            })
            .collect();

        for s in [Accepted, Authenticated, ServicesReady] {
            conn.advance(s).unwrap();
        }
        ready_called.store(true, Ordering::Release);
        conn.advance(ProcessingReady).unwrap();
        for t in senders {
            t.join().unwrap();
        }

        let log = log.lock().unwrap();
        assert_eq!(log.len(), 5, "every message exactly once: {log:?}");
        for from in 0..2 {
            let seqs: Vec<u8> = log
                .iter()
                .filter(|m| m.from == from)
                .map(|m| m.seq)
                .collect();
            let sent: Vec<u8> = (0..[3, 2][usize::from(from)]).collect();
            assert_eq!(seqs, sent, "sender {from} out of order: {log:?}");
        }
        assert_eq!(conn.queued(), 0);
    });
    assert!(held, "ready_handoff must hold");
    assert!(n >= 1_000, "ready_handoff explored only {n} interleavings");
}

/// Setup fails while a message arrives and a cleanup is being registered: the cleanup runs
/// exactly once, nothing is delivered, and the message is returned or rejected, never lost.
#[test]
fn rollback_race_runs_cleanups_once_and_loses_no_message() {
    let (_, held) = explore("rollback_race", || {
        let delivered = Arc::new(AtomicUsize::new(0));
        let sink = {
            let delivered = delivered.clone();
            move |_: Msg| {
                delivered.fetch_add(1, Ordering::Relaxed);
            }
        };
        let conn = Arc::new(ConnectionStateMachine::new(QueueLimits::default(), sink));
        let cleanups = Arc::new(AtomicUsize::new(0));

        let reader = {
            let conn = conn.clone();
            thread::spawn(
                move || match conn.deliver_or_enqueue(Msg { from: 0, seq: 0 }) {
                    Ok(_) => None,
                    Err(EnqueueError::Closed { message, .. }) => Some(message),
                    Err(e @ EnqueueError::Full { .. }) => panic!("unexpected {e}"),
                },
            )
        };
        let registrar = {
            let (conn, cleanups) = (conn.clone(), cleanups.clone());
            thread::spawn(move || {
                let reg = conn.register_cleanup(move || {
                    cleanups.fetch_add(1, Ordering::Relaxed);
                });
                assert_ne!(reg, Registration::Committed, "never ready, never committed");
            })
        };

        conn.advance(Accepted).unwrap();
        let ended = conn.fail().unwrap();
        let rejected = reader.join().unwrap();
        registrar.join().unwrap();

        assert_eq!(
            cleanups.load(Ordering::Relaxed),
            1,
            "cleanup ran exactly once"
        );
        assert_eq!(delivered.load(Ordering::Relaxed), 0, "nothing delivered");
        let accounted = ended.undelivered.len() + usize::from(rejected.is_some());
        assert_eq!(
            accounted, 1,
            "the message is returned or rejected, exactly once"
        );
    });
    assert!(held, "rollback_race must hold");
}

/// The bug, in miniature: read readiness, then decide, in two separate steps, with the flush
/// done separately by setup. Loom must find the interleaving that strands a message in the
/// queue after the flush. If this test fails, the checker stopped finding the bug.
#[test]
fn check_then_act_is_found_violating() {
    let (n, held) = explore("check_then_act", || {
        let log = Arc::new(Mutex::new(Vec::new()));
        let naive_queue = Arc::new(Mutex::new(Vec::new()));
        let conn = Arc::new(ConnectionStateMachine::new(
            QueueLimits::default(),
            |_: Msg| {},
        ));

        let reader = {
            let (conn, log, naive_queue) = (conn.clone(), log.clone(), naive_queue.clone());
            thread::spawn(move || {
                for seq in 0..2 {
                    let m = Msg { from: 0, seq };
                    if conn.is_ready() {
                        log.lock().unwrap().push(m);
                    } else {
                        naive_queue.lock().unwrap().push(m);
                    }
                }
            })
        };

        for s in [Accepted, Authenticated, ServicesReady, ProcessingReady] {
            conn.advance(s).unwrap();
        }
        let held: Vec<Msg> = naive_queue.lock().unwrap().drain(..).collect();
        log.lock().unwrap().extend(held);
        reader.join().unwrap();

        let log = log.lock().unwrap();
        let seqs: Vec<u8> = log.iter().map(|m| m.seq).collect();
        assert_eq!(seqs, [0, 1], "a message was stranded or reordered: {log:?}");
    });
    assert!(
        !held,
        "loom no longer finds the check-then-act race ({n} interleavings explored)"
    );
}

/// The same naive code as a litmus test (loom's `litmus.rs` style): instead of stopping at the
/// first failure, count the outcomes over every interleaving. Both must be reachable: the
/// checker explores the orders where the naive code happens to work and the ones where it
/// strands a message, so `check_then_act` is found by search, not by luck of the first schedule.
#[test]
fn check_then_act_strands_a_message_in_some_interleavings_not_all() {
    let stranded = StdArc::new(StdAtomicUsize::new(0));
    let clean = StdArc::new(StdAtomicUsize::new(0));
    let (s, c) = (stranded.clone(), clean.clone());
    let (n, held) = run(move || {
        let log = Arc::new(Mutex::new(Vec::new()));
        let naive_queue = Arc::new(Mutex::new(Vec::new()));
        let conn = Arc::new(ConnectionStateMachine::new(
            QueueLimits::default(),
            |_: Msg| {},
        ));
        let reader = {
            let (conn, log, naive_queue) = (conn.clone(), log.clone(), naive_queue.clone());
            thread::spawn(move || {
                let m = Msg { from: 0, seq: 0 };
                if conn.is_ready() {
                    log.lock().unwrap().push(m);
                } else {
                    naive_queue.lock().unwrap().push(m);
                }
            })
        };
        conn.advance(ServicesReady).unwrap_err(); // not yet: one step at a time
        for st in [Accepted, Authenticated, ServicesReady, ProcessingReady] {
            conn.advance(st).unwrap();
        }
        let held: Vec<Msg> = naive_queue.lock().unwrap().drain(..).collect();
        log.lock().unwrap().extend(held);
        reader.join().unwrap();
        let outcome = if log.lock().unwrap().len() == 1 {
            &c
        } else {
            &s
        };
        outcome.fetch_add(1, StdOrdering::Relaxed);
    });
    let (stranded, clean) = (
        stranded.load(StdOrdering::Relaxed),
        clean.load(StdOrdering::Relaxed),
    );
    println!("loom litmus check_then_act: {stranded} of {n} interleavings strand a message");
    assert!(
        held,
        "the litmus model records outcomes, it does not assert"
    );
    assert!(stranded > 0, "the race must be reachable");
    assert!(clean > 0, "the benign orders must be explored too");
    assert_eq!(stranded + clean, n);
}
