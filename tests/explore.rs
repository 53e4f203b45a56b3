//! `racegate explore` end to end: a found race becomes a file that `racegate run` gates, the
//! exit codes, and errors for bad flags.
//!
//! Each test gets its own temp dir; a failing assertion prints the command, stdout and stderr.

use std::path::Path;

use rstest::rstest;
use util::{Run, racegate_in};

mod util;

fn racegate(dir: &Path, args: &[&str]) -> Run {
    racegate_in(dir, args)
}

#[rstest]
#[case::unfixed("unfixed")]
#[case::partial("partial")]
fn a_found_race_replays_with_run_failing_the_endpoint_and_passing_the_fix(#[case] endpoint: &str) {
    let dir = tempfile::tempdir().unwrap();
    let found = racegate(
        dir.path(),
        &[
            "explore",
            "--endpoint",
            endpoint,
            "--cases",
            "300",
            "--seed",
            "1",
            "--out",
            "found.toml",
        ],
    );
    found.expect_code(1);
    assert!(
        found
            .stderr()
            .contains("replay it with: racegate run found.toml"),
        "{}",
        found.context()
    );
    let text = std::fs::read_to_string(dir.path().join("found.toml")).unwrap();
    assert!(text.starts_with("# Found by `racegate explore`"), "{text}");

    let gate = racegate(dir.path(), &["run", "found.toml", "--format", "json"]);
    gate.expect_code(0);
    let report: serde_json::Value = serde_json::from_str(&gate.stdout()).unwrap();
    let verdict = |name: &str| {
        report["scenarios"][0]["results"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["endpoint"] == name)
            .map(|r| (r["verdict"].clone(), r["expected"].clone()))
            .unwrap()
    };
    assert_eq!(
        verdict(endpoint),
        ("fail".into(), "fail".into()),
        "{}",
        gate.context()
    );
    assert_eq!(
        verdict("state-machine"),
        ("pass".into(), "pass".into()),
        "{}",
        gate.context()
    );
}

#[test]
fn without_out_the_scenario_goes_to_stdout_and_is_the_same_every_time() {
    let dir = tempfile::tempdir().unwrap();
    let args = [
        "explore",
        "--endpoint",
        "unfixed",
        "--cases",
        "50",
        "--seed",
        "9",
    ];
    let first = racegate(dir.path(), &args);
    first.expect_code(1);
    assert!(
        first.stdout().contains("[expect]\nunfixed = \"fail\""),
        "{}",
        first.context()
    );
    let second = racegate(dir.path(), &args);
    assert_eq!(first.stdout(), second.stdout());
}

#[test]
fn a_search_that_finds_nothing_exits_0_with_its_rate() {
    let dir = tempfile::tempdir().unwrap();
    let r = racegate(
        dir.path(),
        &[
            "explore",
            "--endpoint",
            "state-machine",
            "--cases",
            "10",
            "--seed",
            "1",
        ],
    );
    r.expect_code(0);
    let out = r.stdout();
    assert!(out.contains("no violation in 10 cases"), "{}", r.context());
    assert!(
        out.contains("cases/s") && out.contains("distinct interleavings"),
        "{}",
        r.context()
    );
    // Not a terminal and well under a second: no progress output at all.
    assert!(r.stderr().is_empty(), "{}", r.context());
}

#[test]
fn a_shard_runs_only_its_slice_of_the_cases() {
    let dir = tempfile::tempdir().unwrap();
    let r = racegate(
        dir.path(),
        &[
            "explore",
            "--endpoint",
            "state-machine",
            "--cases",
            "10",
            "--seed",
            "1",
            "--shard",
            "2/3",
        ],
    );
    r.expect_code(0);
    // Cases 1, 4 and 7 of 0..10.
    assert!(
        r.stdout().contains("no violation in 3 cases"),
        "{}",
        r.context()
    );
}

#[rstest]
#[case::shard_past_its_count(&["--shard", "3/2"], "invalid shard `3/2`: K must be between 1 and N")]
#[case::shard_zero(&["--shard", "0/2"], "K must be between 1 and N")]
#[case::shard_of_nothing(&["--shard", "1/0"], "N must be at least 1")]
#[case::shard_without_slash(&["--shard", "2"], "write K/N")]
#[case::users_reversed(&["--users", "5..2"], "MIN (5) is greater than MAX (2)")]
#[case::users_zero(&["--users", "0..2"], "at least one user")]
#[case::users_too_many(&["--users", "1..99"], "at most 16 users")]
#[case::no_cases(&["--cases", "0"], "0 is not in 1..")]
#[case::unknown_endpoint(&["--endpoint", "fixed"], "invalid value 'fixed'")]
fn bad_flags_exit_2_with_a_clear_message(#[case] flags: &[&str], #[case] phrase: &str) {
    let dir = tempfile::tempdir().unwrap();
    let mut args = vec!["explore"];
    if !flags.contains(&"--endpoint") {
        args.extend(["--endpoint", "unfixed"]);
    }
    args.extend(flags);
    let r = racegate(dir.path(), &args);
    r.expect_code(2);
    assert!(
        r.stderr().contains(phrase),
        "{phrase:?} missing\n{}",
        r.context()
    );
    assert!(r.stdout().is_empty(), "{}", r.context());
}
