//! Replays per second, which bound how many cases `racegate explore` tries, and the time
//! `explore` takes to its first counterexample.
//!
//! Targets: at least 20,000 replays per second on one core for two-user scenarios on
//! `state-machine`; under a second to the first counterexample for `unfixed`. `thrpt` is in
//! replays (elements) per second. Run with `make bench`, or
//! `cargo bench -p racegate-replay --bench replay`.

use std::hint::black_box;
use std::path::Path;

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use racegate_replay::explore::{self, Options, Shard, UserRange};
use racegate_replay::{EndpointKind, Scenario, replay, scenario};

/// The allocator the `racegate` binary runs with, so the figures are `explore`'s.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Two users 60 ms apart, each chatting during setup; one also chats after it and gets a push
/// during setup, the other a push after it.
const TWO_USERS: &str = r#"
name = "bench-two-users"
[server]
auth_ms = 120
services_ms = 80
register_ms = 40
[[user]]
id = "user-1"
connect_ms = 0
[[user.send]]
at_ms = 5
text = "hello"
[[user.send]]
at_ms = 400
text = "again"
[[user.push]]
at_ms = 20
text = "report ready"
[[user]]
id = "user-2"
connect_ms = 60
[[user.send]]
at_ms = 10
text = "hi"
[[user.push]]
at_ms = 300
text = "done"
"#;

/// How many two-user scenarios the search draws for the "drawn" benchmarks.
const DRAWN: u64 = 512;

fn drawn(users: usize) -> Vec<Scenario> {
    let users = UserRange::new(users, users).unwrap();
    (0..DRAWN)
        .map(|case| explore::draw(7, case, users).unwrap())
        .collect()
}

fn replays(c: &mut Criterion) {
    let fixed = scenario::parse(TWO_USERS, Path::new("bench.toml")).unwrap();
    let two = drawn(2);
    let mut group = c.benchmark_group("replay");
    for endpoint in EndpointKind::ALL {
        group.throughput(Throughput::Elements(1));
        group.bench_function(format!("{endpoint}/two-users-fixed"), |b| {
            b.iter(|| replay(black_box(&fixed), endpoint).unwrap())
        });
        // The search's own two-user scenarios, round robin: what `explore --users 2` replays.
        group.throughput(Throughput::Elements(DRAWN));
        group.bench_function(format!("{endpoint}/two-users-drawn"), |b| {
            b.iter(|| {
                for s in &two {
                    black_box(replay(s, endpoint).unwrap());
                }
            })
        });
    }
    group.finish();
}

fn first_counterexample(c: &mut Criterion) {
    let mut group = c.benchmark_group("explore");
    for endpoint in [EndpointKind::Unfixed, EndpointKind::Partial] {
        let options = Options {
            endpoint,
            cases: 300,
            seed: 1,
            users: UserRange::default(),
            shard: Shard::WHOLE,
        };
        group.bench_function(format!("{endpoint}/first-counterexample"), |b| {
            b.iter_batched(
                || options,
                |o| explore::explore(&o, &mut |_| {}).unwrap(),
                BatchSize::SmallInput,
            )
        });
    }
    group.finish();
}

criterion_group!(benches, replays, first_counterexample);
criterion_main!(benches);
