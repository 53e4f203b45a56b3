//! Exploration end to end in the library: it finds the known races within a bounded number of
//! cases, shrinks them to scenarios a person would write, and the files it writes replay to the
//! same verdicts. Every search here has a fixed seed, so these tests are deterministic.

use std::path::Path;

use racegate_replay::explore::{self, Found, Options, Outcome, Shard, UserRange};
use racegate_replay::{EndpointKind, Invariant, Verdict, replay, report, scenario};
use rstest::rstest;

fn options(endpoint: EndpointKind, cases: u64, seed: u64) -> Options {
    Options {
        endpoint,
        cases,
        seed,
        users: UserRange::default(),
        shard: Shard::WHOLE,
    }
}

fn search(o: &Options) -> Outcome {
    explore::explore(o, &mut |_| {}).unwrap()
}

fn found(o: &Options) -> Found {
    match search(o) {
        Outcome::Found(f) => *f,
        Outcome::Held(s) => panic!("{}: no violation in {} cases", o.command(), s.cases),
    }
}

fn messages(s: &racegate_replay::Scenario) -> usize {
    s.users.iter().map(|u| u.sends.len() + u.pushes.len()).sum()
}

#[rstest]
#[case::unfixed(EndpointKind::Unfixed)]
#[case::partial(EndpointKind::Partial)]
fn explore_finds_a_race_within_300_cases_and_its_file_reproduces_it(
    #[case] endpoint: EndpointKind,
) {
    let f = found(&options(endpoint, 300, 1));
    assert!(f.case < 300);
    let text = f.to_toml();
    for needle in [
        format!("{endpoint} violates {}", f.invariant),
        "seed 1".to_string(),
        format!("Search: racegate explore --endpoint {endpoint} --cases 300 --seed 1"),
    ] {
        assert!(text.contains(&needle), "{needle:?} missing from\n{text}");
    }

    // The file parses back to the scenario and gates what its replays showed.
    let back = scenario::parse(&text, Path::new("found.toml")).unwrap();
    assert_eq!(back.users, f.scenario.users);
    assert_eq!(back.expect.get(&endpoint), Some(&Verdict::Fail));
    assert_eq!(
        back.expect.get(&EndpointKind::StateMachine),
        Some(&Verdict::Pass),
        "{text}"
    );
    for (kind, expected) in &back.expect {
        let outcome = replay(&back, *kind).unwrap();
        assert_eq!(
            outcome.verdict,
            *expected,
            "{kind} on\n{text}\n{}",
            report::timeline(&outcome.trace)
        );
    }
    let again = replay(&back, endpoint).unwrap();
    assert!(
        again.violations.iter().any(|v| v.invariant == f.invariant),
        "replaying the file must break {} again: {:?}",
        f.invariant,
        again.violations
    );
}

/// Two users only when the invariant is about users crossing or sharing (the global router and
/// the shared context), two messages only when it is about their order.
fn needed(invariant: Invariant) -> (usize, usize) {
    match invariant {
        Invariant::CrossUser | Invariant::BeforeReady => (2, 1),
        Invariant::OutOfOrder => (1, 2),
        _ => (1, 1),
    }
}

#[rstest]
fn shrinking_leaves_unfixed_one_user_and_at_most_one_message(
    #[values(1, 2, 3, 4, 5, 6, 7, 8)] seed: u64,
) {
    let f = found(&options(EndpointKind::Unfixed, 300, seed));
    let (users, most) = needed(f.invariant);
    let s = &f.scenario;
    assert!(
        s.users.len() <= users && messages(s) <= most,
        "seed {seed}: {} needs at most {users} user(s) and {most} message(s), got\n{}",
        f.invariant,
        f.to_toml()
    );
    let (before_users, before_messages) = f.original_size;
    assert!(before_users >= s.users.len() && before_messages >= messages(s));
}

#[test]
fn the_minimal_unfixed_race_for_seed_1_is_one_user_and_a_slow_handshake() {
    // The reader starts at the upgrade and reads before accept: the production log's
    // "Need to call accept first". It needs no message at all, so the shrunk file has none.
    let f = found(&options(EndpointKind::Unfixed, 300, 1));
    assert_eq!(f.invariant, Invariant::AcceptFirst);
    let s = &f.scenario;
    assert_eq!((s.users.len(), messages(s)), (1, 0), "{}", f.to_toml());
    assert_eq!(s.server.accept_ms, 1, "{}", f.to_toml());
    assert_eq!(
        (s.server.auth_ms, s.server.services_ms, s.server.register_ms),
        (0, 0, 0)
    );
}

#[test]
fn no_single_user_or_message_can_be_removed_from_a_found_scenario() {
    for endpoint in [EndpointKind::Unfixed, EndpointKind::Partial] {
        for seed in 1..=4 {
            let f = found(&options(endpoint, 300, seed));
            let breaks = |s: &racegate_replay::Scenario| {
                replay(s, endpoint)
                    .unwrap()
                    .violations
                    .iter()
                    .any(|v| v.invariant == f.invariant)
            };
            let s = &f.scenario;
            for u in 0..s.users.len() {
                if s.users.len() > 1 {
                    let mut fewer = s.clone();
                    fewer.users.remove(u);
                    assert!(
                        !breaks(&fewer),
                        "user {u} is not needed in\n{}",
                        f.to_toml()
                    );
                }
                for m in 0..s.users[u].sends.len() {
                    let mut fewer = s.clone();
                    fewer.users[u].sends.remove(m);
                    assert!(
                        !breaks(&fewer),
                        "send {m} is not needed in\n{}",
                        f.to_toml()
                    );
                }
                for m in 0..s.users[u].pushes.len() {
                    let mut fewer = s.clone();
                    fewer.users[u].pushes.remove(m);
                    assert!(
                        !breaks(&fewer),
                        "push {m} is not needed in\n{}",
                        f.to_toml()
                    );
                }
            }
        }
    }
}

#[test]
fn the_same_seed_and_options_write_the_same_file() {
    for endpoint in [EndpointKind::Unfixed, EndpointKind::Partial] {
        let o = options(endpoint, 300, 42);
        assert_eq!(found(&o).to_toml(), found(&o).to_toml());
    }
}

#[test]
fn different_seeds_draw_different_cases() {
    let users = UserRange::default();
    let a: Vec<_> = (0..8)
        .map(|i| explore::draw(1, i, users).unwrap())
        .collect();
    let b: Vec<_> = (0..8)
        .map(|i| explore::draw(2, i, users).unwrap())
        .collect();
    assert_ne!(a, b);
    assert_ne!(a[0], a[1], "cases of one seed differ from each other");
}

#[test]
fn shards_are_disjoint_and_together_cover_every_case() {
    let total = 103;
    let mut seen = vec![0; total as usize];
    for k in 1..=4 {
        let shard = Shard::new(k, 4).unwrap();
        let cases: Vec<u64> = shard.cases(total).collect();
        assert_eq!(cases.len() as u64, shard.len(total));
        for i in cases {
            assert_eq!(i % 4, k - 1);
            seen[i as usize] += 1;
        }
    }
    assert!(seen.iter().all(|&n| n == 1), "{seen:?}");
    assert!(Shard::new(3, 4).unwrap().is_empty(2));
}

#[test]
fn a_shard_finds_the_same_case_as_the_unsharded_run_when_it_owns_it() {
    // Every case draws from its own RNG, so the shard that owns the first failing case of the
    // whole run finds exactly it, shrunk to exactly the same scenario.
    let whole = found(&options(EndpointKind::Partial, 300, 3));
    let n = 3;
    let owner = Shard::new(whole.case % n + 1, n).unwrap();
    let sharded = found(&Options {
        shard: owner,
        ..options(EndpointKind::Partial, 300, 3)
    });
    assert_eq!(sharded.case, whole.case);
    assert_eq!(sharded.scenario, whole.scenario);
    assert!(sharded.to_toml().contains(&format!("--shard {owner}")));
    // The other shards never run that case.
    for k in 1..=n {
        let shard = Shard::new(k, n).unwrap();
        if shard == owner {
            continue;
        }
        let other = Options {
            shard,
            ..options(EndpointKind::Partial, 300, 3)
        };
        if let Outcome::Found(f) = search(&other) {
            assert_ne!(f.case, whole.case);
            assert_eq!(f.case % n, k - 1);
        }
    }
}

#[test]
fn a_search_that_finds_nothing_counts_its_cases_and_interleavings() {
    // Case 0 of seed 1 on partial fails; the first cases of seed 1 on state-machine do not.
    let o = options(EndpointKind::StateMachine, 10, 1);
    match search(&o) {
        Outcome::Held(s) => {
            assert_eq!(s.cases, 10);
            assert!(s.replays >= 10);
            assert!((1..=10).contains(&s.interleavings), "{s:?}");
        }
        Outcome::Found(f) => panic!("unexpected violation:\n{}", f.to_toml()),
    }
}

#[test]
fn an_interleaving_ignores_times_and_ids_but_not_order() {
    let s = scenario::parse(
        "name = \"s\"\n[server]\nauth_ms = 50\n[[user]]\nid = \"a\"\n[[user.send]]\nat_ms = 5\ntext = \"x\"\n",
        Path::new("s.toml"),
    )
    .unwrap();
    let base = replay(&s, EndpointKind::StateMachine).unwrap().trace;
    let mut renamed = s.clone();
    renamed.users[0].id = "b".into();
    renamed.server.auth_ms = 70;
    let other = replay(&renamed, EndpointKind::StateMachine).unwrap().trace;
    assert_eq!(explore::signature(&base), explore::signature(&other));
    let mut swapped = base.clone();
    swapped.swap(0, 1);
    assert_ne!(explore::signature(&base), explore::signature(&swapped));
}

/// What a search concluded, as bytes: the found file and its counts, or the held counts.
fn answer(o: &Options, jobs: usize) -> String {
    match explore::explore_jobs(o, jobs, &mut |_| {}).unwrap() {
        Outcome::Held(s) => format!("held {s:?}"),
        Outcome::Found(f) => format!("found case {} {:?}\n{}", f.case, f.summary, f.to_toml()),
    }
}

#[rstest]
#[case::unfixed_finds_its_race(EndpointKind::Unfixed, 300, 1)]
#[case::partial_finds_its_race(EndpointKind::Partial, 300, 2)]
#[case::the_fix_holds(EndpointKind::StateMachine, 150, 3)]
fn more_jobs_never_change_the_answer(
    #[case] endpoint: EndpointKind,
    #[case] cases: u64,
    #[case] seed: u64,
) {
    let o = options(endpoint, cases, seed);
    let one = answer(&o, 1);
    assert_eq!(one, answer(&o, 2), "jobs 2");
    assert_eq!(one, answer(&o, 3), "jobs 3");
    let sharded = Options {
        shard: Shard::new(2, 3).unwrap(),
        ..o
    };
    assert_eq!(answer(&sharded, 1), answer(&sharded, 2), "shard 2/3");
}
