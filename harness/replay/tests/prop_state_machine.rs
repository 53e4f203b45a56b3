//! The fix holds wherever the search looks: `state-machine` violates no invariant over 2,000
//! random scenarios drawn from the same space `racegate explore` searches (every key a scenario
//! file can say, one to three users).
//!
//! The seed is fixed so a failure reproduces; set `RACEGATE_PROP_SEED` to search elsewhere. A
//! failure prints the shrunk scenario as a file: commit it under `scenarios/` once the endpoint
//! is fixed, so the gate keeps it fixed.

use racegate_replay::EndpointKind;
use racegate_replay::explore::{self, Options, Outcome, Shard, UserRange};

/// Random cases per `make test`.
const CASES: u64 = 2_000;

#[test]
fn state_machine_violates_no_invariant_over_2000_random_scenarios() {
    let seed = std::env::var("RACEGATE_PROP_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let options = Options {
        endpoint: EndpointKind::StateMachine,
        cases: CASES,
        seed,
        users: UserRange::default(),
        shard: Shard::WHOLE,
    };
    match explore::explore(&options, &mut |_| {}).unwrap() {
        Outcome::Held(summary) => assert_eq!(summary.cases, CASES),
        Outcome::Found(found) => panic!(
            "state-machine broke {} at case {} of seed {seed}; the shrunk scenario:\n\n{}",
            found.invariant,
            found.case,
            found.to_toml()
        ),
    }
}
