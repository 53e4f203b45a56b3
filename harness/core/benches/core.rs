//! `cargo bench -p racegate-core`: the hot path and a contended handoff.

use std::hint::black_box;
use std::sync::{Arc, Barrier};
use std::thread;
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use racegate_core::ConnectionState::*;
use racegate_core::{ConnectionStateMachine, QueueLimits};

fn ready_uncontended(c: &mut Criterion) {
    let mut delivered = 0u64;
    let conn = ConnectionStateMachine::new(QueueLimits::default(), |m: u64| {
        delivered = delivered.wrapping_add(black_box(m));
    });
    for s in [Accepted, Authenticated, ServicesReady, ProcessingReady] {
        conn.advance(s).unwrap();
    }
    let mut group = c.benchmark_group("deliver_or_enqueue");
    group.throughput(Throughput::Elements(1));
    group.bench_function("ready_uncontended", |b| {
        b.iter(|| conn.deliver_or_enqueue(black_box(7u64)).unwrap())
    });
    group.finish();
}

/// One setup thread walks the lifecycle while three senders push; counts every delivery.
fn handoff_4_threads(c: &mut Criterion) {
    const PER_SENDER: u64 = 20_000;
    let mut group = c.benchmark_group("handoff");
    group.throughput(Throughput::Elements(3 * PER_SENDER));
    group.sample_size(20);
    group.bench_function("1_setup_3_senders", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let count = Arc::new(std::sync::atomic::AtomicU64::new(0));
                let sink = {
                    let count = count.clone();
                    move |_: u64| {
                        count.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    }
                };
                let limits = QueueLimits {
                    max_messages: usize::MAX,
                    max_bytes: usize::MAX,
                };
                let conn = Arc::new(ConnectionStateMachine::new(limits, sink));
                let start = Arc::new(Barrier::new(4));
                let senders: Vec<_> = (0..3)
                    .map(|_| {
                        let (conn, start) = (conn.clone(), start.clone());
                        thread::spawn(move || {
                            start.wait();
                            for i in 0..PER_SENDER {
                                conn.deliver_or_enqueue(i).unwrap();
                            }
                        })
                    })
                    .collect();
                start.wait();
                let t0 = Instant::now();
                for s in [Accepted, Authenticated, ServicesReady, ProcessingReady] {
                    conn.advance(s).unwrap();
                }
                for t in senders {
                    t.join().unwrap();
                }
                total += t0.elapsed();
                let n = count.load(std::sync::atomic::Ordering::Relaxed);
                assert_eq!(n, 3 * PER_SENDER, "a message was lost or duplicated");
            }
            total
        })
    });
    group.finish();
}

criterion_group!(benches, ready_uncontended, handoff_4_threads);
criterion_main!(benches);
