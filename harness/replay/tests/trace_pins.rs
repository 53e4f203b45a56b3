//! Pins: the exact bytes of a few runs, so speed work cannot change what a replay does unseen.
//!
//! Each run (virtual time, every endpoint) is reduced to two 64-bit FNV-1a hashes: `trace`, of
//! the text timeline (`run --trace`) followed by the trace as JSON (every field, including the
//! ones the text leaves out), and `judged`, of the verdict, the violations, the indeterminate
//! chats and the simulated time as JSON. Interned ids, fewer tasks or timers, a checker that does
//! not allocate: none of these may change one byte of either.
//!
//! **Updating the pins.** When a change is meant to change what a replay records (a new event, a
//! reworded detail, a scheduling fix), run
//! `cargo test -p racegate-replay --test trace_pins`; the failure prints every run's current
//! pins as Rust source. Check with `racegate run FILE --endpoint E --trace` that each changed run
//! changed as intended, replace [`PINS`] with the printed table, and say in the commit message
//! which runs changed and why.

use std::path::{Path, PathBuf};

use racegate_replay::explore::{self, UserRange};
use racegate_replay::{EndpointKind, RunOutcome, Scenario, replay, report, scenario};

/// FNV-1a, 64 bits: a few lines instead of a dependency, and stable across Rust releases (unlike
/// `DefaultHasher`).
fn fnv1a(bytes: &[u8]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        hash ^= u64::from(*b);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    hash
}

/// The bundled scenarios pinned: the staging races, many users, overflow, a tie, rollbacks,
/// heartbeats and closes.
const BUNDLED: [&str; 7] = [
    "staging-user-101463487227881885914",
    "five-users-within-100ms",
    "queue-overflow",
    "fifo-across-flush",
    "rollback-register-failure",
    "heartbeat-during-setup",
    "client-closes-mid-setup",
];

/// Scenarios as `explore` draws them (seed 7, its default one to three users), cases 0..DRAWN.
const DRAWN: u64 = 6;

/// `users` users connecting over 200 ms, two chats each: many connections on one clock.
fn crowd(users: usize) -> Scenario {
    let mut text = format!(
        "name = \"crowd-{users}\"\n[server]\nauth_ms = 50\nservices_ms = 120\nregister_ms = 30\n"
    );
    for i in 1..=users {
        text.push_str(&format!(
            "[[user]]\nid = \"user-{i}\"\nconnect_ms = {}\n[[user.send]]\nat_ms = 100\n\
             text = \"first\"\n[[user.send]]\nat_ms = 400\ntext = \"second\"\n[[user.push]]\n\
             at_ms = {}\ntext = \"note\"\n",
            i % 200,
            (i * 7) % 300
        ));
    }
    scenario::parse(&text, Path::new("crowd.toml")).unwrap()
}

fn scenarios() -> Vec<Scenario> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../scenarios");
    let mut out: Vec<Scenario> = BUNDLED
        .iter()
        .map(|name| scenario::load(&dir.join(format!("{name}.toml"))).unwrap())
        .collect();
    for case in 0..DRAWN {
        let mut s = explore::draw(7, case, UserRange::default()).unwrap();
        s.name = format!("drawn-7-{case}");
        out.push(s);
    }
    out.push(crowd(120));
    out
}

/// A run's `(trace, judged)` hashes.
fn pins_of(o: &RunOutcome) -> (u64, u64) {
    let mut trace = report::timeline(&o.trace);
    trace.push_str(&serde_json::to_string(&o.trace).unwrap());
    let judged =
        serde_json::to_string(&(o.verdict, &o.violations, &o.indeterminate, o.simulated_ms))
            .unwrap();
    (fnv1a(trace.as_bytes()), fnv1a(judged.as_bytes()))
}

/// The pins, `(scenario, endpoint, trace, judged)`; see the module doc for how to update them.
#[rustfmt::skip]
const PINS: &[(&str, &str, u64, u64)] = &[
    ("staging-user-101463487227881885914", "unfixed", 0x6c2e2b5d1db5a18a, 0xba3cc15565d7a9dd),
    ("staging-user-101463487227881885914", "partial", 0xf8405a60f8ea0eb4, 0x9a8ece3dbe4bc551),
    ("staging-user-101463487227881885914", "state-machine", 0x119d59fcb241da22, 0xecc5e0a6aaccec9e),
    ("five-users-within-100ms", "unfixed", 0xe11ec6636deafc07, 0x9361e569580df5bd),
    ("five-users-within-100ms", "partial", 0xe11ec6636deafc07, 0x9361e569580df5bd),
    ("five-users-within-100ms", "state-machine", 0x88d1d81f3c33e54e, 0xc80709a04d1ed0ea),
    ("queue-overflow", "unfixed", 0x0fcfa7afa1bbc7ea, 0x6dc8d08a5071b913),
    ("queue-overflow", "partial", 0x8a1c7713fcdbba32, 0x6dc8d08a5071b913),
    ("queue-overflow", "state-machine", 0xea61f07969436759, 0x0db999af49c9e5c4),
    ("fifo-across-flush", "unfixed", 0x000ec30b20355c5c, 0x3de885ab6da0b8b4),
    ("fifo-across-flush", "partial", 0x80245c23e1eff9e4, 0x3de885ab6da0b8b4),
    ("fifo-across-flush", "state-machine", 0xaa44e6b392fc66c9, 0x17ef6da6c334574a),
    ("rollback-register-failure", "unfixed", 0x95026a08218e30a0, 0x625a146132a11260),
    ("rollback-register-failure", "partial", 0x435ea664c0664304, 0xda30b9c96f0b22bf),
    ("rollback-register-failure", "state-machine", 0xd44fe40e9edd1760, 0xc2a01e85824c7fa8),
    ("heartbeat-during-setup", "unfixed", 0xcb323e41c95eb457, 0x68e824f573ffddfc),
    ("heartbeat-during-setup", "partial", 0x635c8c2ab7223f79, 0x596ebf7efe16e74c),
    ("heartbeat-during-setup", "state-machine", 0x365b103e2ca6695a, 0x596ebf7efe16e74c),
    ("client-closes-mid-setup", "unfixed", 0x17bf2113be89f48d, 0x4f81b29ed3fef553),
    ("client-closes-mid-setup", "partial", 0x5230be39d212f703, 0x4f81b29ed3fef553),
    ("client-closes-mid-setup", "state-machine", 0x8bd264b99b653da0, 0xecc5e0a6aaccec9e),
    ("drawn-7-0", "unfixed", 0xecf1fda9060e8099, 0x8c7bdea96330b899),
    ("drawn-7-0", "partial", 0x42b7d4f0e8d9f275, 0xa716d1d0b0fd79e3),
    ("drawn-7-0", "state-machine", 0xfed5afed85eb759f, 0x68506a1e2d2fb686),
    ("drawn-7-1", "unfixed", 0x2511aeddf24b9680, 0xef72df0fcd4ad11a),
    ("drawn-7-1", "partial", 0x2511aeddf24b9680, 0xef72df0fcd4ad11a),
    ("drawn-7-1", "state-machine", 0xa19a19f6d64fe295, 0x72d824f5086ffce8),
    ("drawn-7-2", "unfixed", 0x1e4f2bf72181fb20, 0x4d3781676c5e585e),
    ("drawn-7-2", "partial", 0x0ee5391bb318a582, 0x4d3781676c5e585e),
    ("drawn-7-2", "state-machine", 0x23c175d514de30b4, 0xf322e8b5b2f8ab28),
    ("drawn-7-3", "unfixed", 0x7f0b3685bd35981f, 0x09ba2c37af8c0046),
    ("drawn-7-3", "partial", 0xf4fab31e6e15e107, 0x26103bbf56c51aa7),
    ("drawn-7-3", "state-machine", 0xdf96966a8e14ee44, 0x154d9ea8e2ff8a3d),
    ("drawn-7-4", "unfixed", 0xe254c927dafc6e90, 0x757d2fb903923e47),
    ("drawn-7-4", "partial", 0x3ca88ea20634596e, 0x167aff5b65c5bc82),
    ("drawn-7-4", "state-machine", 0x4d263b144232eaa7, 0x16ed278d3bc562a5),
    ("drawn-7-5", "unfixed", 0x5ff1a7020ebdf2a3, 0x71f37e84adc1a8fd),
    ("drawn-7-5", "partial", 0x9b01148a471a9545, 0x71f37e84adc1a8fd),
    ("drawn-7-5", "state-machine", 0x5d23c32cf5b5e163, 0x89f4a0d829e0a36a),
    ("crowd-120", "unfixed", 0xab3bbd1dd468ec95, 0x854ce820a5d85dbc),
    ("crowd-120", "partial", 0xe637191f52df15e3, 0x1b4864d614db1e03),
    ("crowd-120", "state-machine", 0xbed6979f64233015, 0xa5e925a039f27d6e),
];

#[test]
fn fnv1a_matches_its_published_test_vectors() {
    assert_eq!(fnv1a(b""), 0xcbf2_9ce4_8422_2325);
    assert_eq!(fnv1a(b"a"), 0xaf63_dc4c_8601_ec8c);
    assert_eq!(fnv1a(b"foobar"), 0x8594_4171_f739_67e8);
}

#[test]
fn pinned_runs_record_and_judge_exactly_the_same_bytes() {
    let mut actual = Vec::new();
    for s in scenarios() {
        for k in EndpointKind::ALL {
            let o = replay(&s, k).unwrap();
            let (trace, judged) = pins_of(&o);
            actual.push((s.name.clone(), k.to_string(), trace, judged));
        }
    }
    let changed: Vec<String> = actual
        .iter()
        .zip(PINS.iter().map(Some).chain(std::iter::repeat(None)))
        .filter(|((name, k, t, j), pin)| *pin != Some(&(name.as_str(), k.as_str(), *t, *j)))
        .map(|((name, k, _, _), _)| format!("{name} [{k}]"))
        .collect();
    if !changed.is_empty() || actual.len() != PINS.len() {
        let table: String = actual
            .iter()
            .map(|(name, k, t, j)| format!("    ({name:?}, {k:?}, {t:#018x}, {j:#018x}),\n"))
            .collect();
        panic!(
            "{} of {} pinned runs differ: {}\n\nIf the change is intended (see this file's \
             module doc), the pins are now:\n\nconst PINS: &[(&str, &str, u64, u64)] = &[\n{table}];\n",
            changed.len(),
            actual.len(),
            changed.join(", ")
        );
    }
}
