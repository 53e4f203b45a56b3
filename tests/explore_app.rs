//! `racegate explore --app`: the search against a Python app on the virtual clock. From a
//! scenario the example backend's production route passes as written, it finds the race, writes
//! a file `probe --app` reproduces, and gives the same file with one worker or two; the fixed
//! route holds.
//!
//! Needs the project's Python (`make py`, or RACEGATE_PYTHON).

use util::{Run, python, racegate_env};

mod util;

const RACE_FREE: &str = "examples/chat_backend/scenarios/race-free.toml";
const APP: [&str; 6] = [
    "--app",
    "examples.chat_backend.app:create_test_app",
    "--factory",
    "--hooks",
    "examples/chat_backend/hooks.toml",
    "--path",
];

fn racegate(args: &[&str]) -> Run {
    racegate_env(args, &[("RACEGATE_PYTHON", python().as_os_str())])
}

fn explore(path: &str, cases: &str, jobs: &str, out: Option<&str>) -> Run {
    let mut args = vec!["explore"];
    args.extend_from_slice(&APP);
    args.extend([
        path,
        "--scenario",
        RACE_FREE,
        "--cases",
        cases,
        "--seed",
        "1",
        "--jobs",
        jobs,
    ]);
    if let Some(out) = out {
        args.extend(["--out", out]);
    }
    racegate(&args)
}

#[test]
fn from_a_race_free_start_explore_finds_the_race_and_writes_a_file_probe_reproduces() {
    let dir = tempfile::tempdir().unwrap();
    let one = dir.path().join("one.toml").display().to_string();
    let two = dir.path().join("two.toml").display().to_string();
    // As written, the production route passes it: the chat comes long after setup.
    let mut probe = vec!["probe"];
    probe.extend_from_slice(&APP);
    probe.extend(["/ws", "--scenario", RACE_FREE]);
    racegate(&probe).expect_code(0);
    let found = explore("/ws", "200", "1", Some(&one));
    found.expect_code(1);
    let file = std::fs::read_to_string(&one).unwrap();
    assert!(
        file.contains("violates message-lost"),
        "{file}\n{}",
        found.context()
    );
    assert!(file.contains("Reproduce: racegate probe --app examples.chat_backend.app:create_test_app --factory --path /ws --hooks examples/chat_backend/hooks.toml"), "{file}");
    // Two workers, the same answer byte for byte.
    explore("/ws", "200", "2", Some(&two)).expect_code(1);
    assert_eq!(std::fs::read_to_string(&two).unwrap(), file);
    // The file fails the production route and passes the fix.
    let probe_file = |path: &str| {
        let mut args = vec!["probe"];
        args.extend_from_slice(&APP);
        args.extend([path, "--scenario", &one, "--format", "json"]);
        racegate(&args)
    };
    let run = probe_file("/ws");
    run.expect_code(1);
    assert!(
        run.stdout().contains("\"invariant\": \"message-lost\""),
        "{}",
        run.context()
    );
    probe_file("/ws/fixed").expect_code(0);
}

#[test]
fn the_fixed_route_holds_every_case_of_the_search() {
    let held = explore("/ws/fixed", "100", "1", None);
    held.expect_code(0);
    assert!(
        held.stdout().contains("no violation in 100 cases"),
        "{}",
        held.context()
    );
}
