//! Every bundled scenario is its own test: its `[expect]` verdicts must hold.
//!
//! `build.rs` reruns on changes to `scenarios/`, so a new file becomes a new case here.

use std::path::PathBuf;

use racegate_replay::{EndpointKind, Invariant, RunOutcome, Verdict, replay, report, scenario};
use rstest::rstest;

fn explain(o: &RunOutcome) -> String {
    format!(
        "{} [{}]: expected {:?}, got {}\n{}{}",
        o.scenario,
        o.endpoint,
        o.expected,
        o.verdict,
        report::timeline(&o.trace),
        o.violations
            .iter()
            .map(|v| format!("  ! {v}\n"))
            .collect::<String>()
    )
}

#[rstest]
fn bundled_scenario_meets_its_expectations(#[files("scenarios/*.toml")] path: PathBuf) {
    let s = scenario::load(&path).unwrap_or_else(|e| panic!("{e}"));
    assert!(
        s.expect.get(&EndpointKind::StateMachine) == Some(&Verdict::Pass),
        "{}: every bundled scenario must gate the fix to pass",
        path.display()
    );
    assert!(
        s.expect.contains_key(&EndpointKind::Unfixed),
        "{}: every bundled scenario must say what the bug does",
        path.display()
    );
    for (endpoint, expected) in &s.expect {
        let outcome = replay(&s, *endpoint).unwrap();
        assert_eq!(outcome.verdict, *expected, "{}", explain(&outcome));
        // Where [expect] names the invariants, the run must fail with exactly (or at least)
        // those: a legacy endpoint failing for a new reason is a change to look at.
        assert_eq!(outcome.mismatch(), None, "{}", explain(&outcome));
        // A failure must be explained by at least one named invariant, and a pass by none.
        assert_eq!(
            outcome.violations.is_empty(),
            *expected == Verdict::Pass,
            "{}",
            explain(&outcome)
        );
    }
}

#[rstest]
#[case::real_user("scenarios/staging-user-101463487227881885914.toml")]
#[case::pipeline("scenarios/staging-e2e-staging_pipeline.toml")]
fn staging_users_fail_unfixed_with_the_production_symptoms(#[case] path: &str) {
    let s = scenario::load(path.as_ref()).unwrap();
    let bug = replay(&s, EndpointKind::Unfixed).unwrap();
    let seen: Vec<Invariant> = bug.violations.iter().map(|v| v.invariant).collect();
    assert!(
        seen.contains(&Invariant::AcceptFirst),
        "the production log's 'Need to call accept first' must be reproduced: {seen:?}"
    );
    let text: Vec<&str> = bug.violations.iter().map(|v| v.detail.as_str()).collect();
    assert!(
        text.iter()
            .any(|d| d.contains(r#"WebSocket is not connected. Need to call "accept" first."#)),
        "{text:?}"
    );
    let fix = replay(&s, EndpointKind::StateMachine).unwrap();
    assert!(fix.violations.is_empty(), "{}", explain(&fix));
}

#[test]
fn the_same_scenario_replays_to_the_same_bytes() {
    let s = scenario::load("scenarios/five-users-within-100ms.toml".as_ref()).unwrap();
    for endpoint in EndpointKind::ALL {
        let a = replay(&s, endpoint).unwrap();
        let b = replay(&s, endpoint).unwrap();
        assert_eq!(
            report::json(std::slice::from_ref(&a), true),
            report::json(std::slice::from_ref(&b), true)
        );
    }
}

#[test]
fn the_fix_delivers_held_chats_in_order_before_later_ones() {
    let s = scenario::load("scenarios/fifo-across-flush.toml".as_ref()).unwrap();
    let o = replay(&s, EndpointKind::StateMachine).unwrap();
    let acks: Vec<String> = o
        .trace
        .iter()
        .filter_map(|e| match &e.kind {
            racegate_replay::trace::EventKind::ClientRecv {
                frame: racegate_replay::trace::Frame::Ack { id, .. },
            } => Some(id.clone()),
            _ => None,
        })
        .collect();
    let sent: Vec<String> = (1..=6).map(|n| format!("user-fifo/m{n}")).collect();
    assert_eq!(acks, sent);
}
