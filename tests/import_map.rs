//! `racegate import --map` from the command line, on checked-in logs of the example backend
//! (tests/fixtures/import: its text log as `tests/example_backend.rs` captured it, and the Cloud
//! Logging export of the same lines, made by `to_cloud_logging.py`): the scenario it gives, that
//! the export gives the same one, what `racegate run` says of it, and every bad input's exit 2
//! with the file and line.
//!
//! Each test gets its own temp dir; a failing assertion prints the command, stdout and stderr.

use std::path::Path;

use racegate_replay::scenario::{self, Scenario};
use util::{Run, racegate};

mod util;

const LOG: &str = "tests/fixtures/import/chat_backend.log";
const EXPORT: &str = "tests/fixtures/import/chat_backend.cloud.json";
const EXPECTED: &str = "tests/fixtures/import/chat_backend.toml";
const MAP: &str = "examples/chat_backend/map.toml";

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// The scenario a file holds, bar where it came from (its description names the log).
fn scenario_of(text: &str) -> Scenario {
    let mut s = scenario::parse(text, Path::new("imported.toml")).unwrap();
    s.description = None;
    s
}

fn import(args: &[&str]) -> Run {
    let mut all = vec!["import"];
    all.extend_from_slice(args);
    racegate(&all)
}

#[test]
fn the_example_backends_log_imports_to_the_checked_in_scenario_byte_for_byte() {
    let run = import(&[LOG, "--map", MAP, "--name", "chat-backend-staging"]);
    run.expect_code(0);
    let expected =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join(EXPECTED)).unwrap();
    assert_eq!(
        run.stdout(),
        expected,
        "regenerate with: racegate import {LOG} --map {MAP} --name chat-backend-staging --out \
         {EXPECTED}"
    );
    assert!(
        run.stderr().contains(
            "2 users from 16 lifecycle events and 26 symptom lines, in 51 lines (9 matched no rule)"
        ),
        "unmatched lines are counted, not errors: {}",
        run.context()
    );
}

#[test]
fn the_cloud_logging_export_of_the_same_log_imports_to_the_same_scenario() {
    let text = import(&[LOG, "--map", MAP, "--name", "n"]);
    let export = import(&[EXPORT, "--map", MAP, "--name", "n"]);
    export.expect_code(0);
    assert_eq!(
        scenario_of(&export.stdout()),
        scenario_of(&text.stdout()),
        "{}",
        export.context()
    );
    assert!(
        export
            .stdout()
            .contains(&format!("{EXPORT} as Cloud Logging entries")),
        "{}",
        export.stdout()
    );
}

#[test]
fn the_imported_scenario_fails_on_unfixed_with_the_production_symptoms_and_passes_on_the_fix() {
    let run = racegate(&["run", EXPECTED]);
    run.expect_code(0);
    let out = run.stdout();
    for line in [
        "production: accept-first for 101463487227881885914 at 1 ms — replay: accept-first at 0 ms",
        "production: message-lost for 101463487227881885914 at 102 ms — replay: message-lost at \
         102 ms",
        "production: cross-user for e2e-staging_pipeline at 3601 ms — replay: cross-user at 3600 \
         ms",
    ] {
        assert!(out.contains(line), "no {line:?} in\n{}", run.context());
    }
    assert!(out.contains("✓ fail accept-first"), "{}", run.context());
    assert!(out.contains("✓ pass"), "{}", run.context());
}

#[test]
fn a_production_symptom_the_replay_does_not_reproduce_fails_the_gate_and_says_what_it_found() {
    let dir = tempfile::tempdir().unwrap();
    let mut text = std::fs::read_to_string(EXPECTED).unwrap();
    // Production did not show this, and the replay of the production model does not do it.
    text = text.replace(
        "\n[expect]",
        "\n[[production]]\ninvariant = \"leak\"\nuser = \"101463487227881885914\"\nat_ms = 700\n\n\
         [expect]",
    );
    let file = dir.path().join("s.toml");
    std::fs::write(&file, text).unwrap();
    let run = racegate(&["run", s(&file)]);
    run.expect_code(1);
    let out = run.stdout();
    assert!(
        out.contains(
            "production: leak for 101463487227881885914 at 700 ms — replay: not reproduced: for \
             101463487227881885914 it found accept-first at 0 ms, message-lost at 102 ms"
        ),
        "{}",
        run.context()
    );
    assert!(out.contains("gate FAILS"), "{}", run.context());
}

#[test]
fn standard_input_and_several_logs_are_read_with_a_map() {
    let log = std::fs::read(LOG).unwrap();
    let out = assert_cmd::Command::cargo_bin("racegate")
        .unwrap()
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .args(["import", "-", "--map", MAP, "--name", "n"])
        .write_stdin(log)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
    let from_stdin = scenario_of(&String::from_utf8_lossy(&out.stdout));
    assert_eq!(
        from_stdin,
        scenario_of(&import(&[LOG, "--map", MAP, "--name", "n"]).stdout())
    );
    // The text log and its export together: every line twice, the same scenario (a chat logged
    // twice is one chat, a state's first line counts).
    let both = import(&[LOG, EXPORT, "--map", MAP, "--name", "n"]);
    both.expect_code(0);
    assert_eq!(
        scenario_of(&both.stdout()),
        from_stdin,
        "{}",
        both.context()
    );
}

#[test]
fn own_log_flags_and_several_logs_without_a_map_are_refused() {
    let run = import(&[LOG, EXPORT]);
    run.expect_code(2);
    assert!(
        run.stderr()
            .contains("racegate's own log is one file, and 2 were given"),
        "{}",
        run.context()
    );
    let run = import(&[LOG, "--map", MAP, "--endpoint", "unfixed"]);
    run.expect_code(2);
    assert!(
        run.stderr().contains("cannot be used with"),
        "{}",
        run.context()
    );
}

/// A temp dir with `map.toml` and `app.log`, and `import app.log --map map.toml` run there.
fn import_in(map: &str, log: &str) -> Run {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("map.toml"), map).unwrap();
    std::fs::write(dir.path().join("app.log"), log).unwrap();
    util::racegate_in(dir.path(), &["import", "app.log", "--map", "map.toml"])
}

const LINE: &str =
    "[line]\ntimestamp = '^(?P<ts>\\S+ \\S+) '\ntime_format = \"%Y-%m-%d %H:%M:%S,%3f\"\n";
const ACCEPTED: &str = "[[rule]]\npattern = 'accepted (?P<user>\\S+)'\nevent = \"accepted\"\n";
const GOOD_LINE: &str = "2025-09-08 23:29:14,123 INFO app: accepted u1\n";

#[rstest::rstest]
#[case::a_bad_regex_names_the_rule_and_the_regex_error(
    &format!("{LINE}[[rule]]\npattern = 'accepted (?P<user>\\S+'\nevent = \"accepted\"\n"),
    GOOD_LINE,
    "map.toml:5:11: rule 1's `pattern` is not a valid regex: unclosed group"
)]
#[case::a_rule_without_an_event_says_which_events_there_are(
    &format!("{LINE}[[rule]]\npattern = 'accepted (?P<user>\\S+)'\n"),
    GOOD_LINE,
    "map.toml:4:1: rule 1: no `event`: say which event its lines are, one of connect"
)]
#[case::an_unknown_event_lists_the_events(
    &format!("{LINE}[[rule]]\npattern = 'accepted (?P<user>\\S+)'\nevent = \"open\"\n"),
    GOOD_LINE,
    "map.toml:6:9: rule 1: unknown event \"open\"; expected one of connect, accepted"
)]
#[case::a_time_format_that_does_not_parse_a_line_names_and_shows_the_line(
    &format!("{LINE}{ACCEPTED}"),
    "2025-09-08 23:29:14,123 INFO app: accepted u1\n2025/09/08 23:29:15,000 INFO app: accepted u2\n",
    "app.log:2: rule 1 (accepted) matched this line, but time_format \"%Y-%m-%d %H:%M:%S,%3f\" \
     does not parse its timestamp \"2025/09/08 23:29:15,000\": input contains invalid \
     characters:\n    2025/09/08 23:29:15,000 INFO app: accepted u2"
)]
#[case::a_line_without_a_timestamp_is_named_and_shown(
    &format!("{LINE}{ACCEPTED}"),
    "accepted u1\n",
    "app.log:1: rule 1 (accepted) matched this line, but the [line] timestamp regex"
)]
#[case::a_log_no_rule_matched_says_so_with_the_count_of_lines(
    &format!("{LINE}{ACCEPTED}"),
    "INFO: started\nINFO: nothing here\n\n",
    "no rule of map.toml matched any of the 3 lines read from app.log"
)]
#[case::a_broken_export_is_named_with_its_line_and_column(
    &format!("{LINE}{ACCEPTED}"),
    "[\n  {\"textPayload\": \"x\"},\n  {\"textPayload\": }\n]\n",
    "app.log:3:19: not a JSON array of Cloud Logging entries: expected value\n"
)]
#[case::a_close_code_that_is_not_one_is_named(
    &format!("{LINE}[[rule]]\npattern = 'closed (?P<user>\\S+) (?P<code>\\S+)'\nevent = \"server_closed\"\n"),
    "2025-09-08 23:29:14,123 INFO app: closed u1 normally\n",
    "app.log:1: rule 1 (server_closed) read the close code \"normally\", which is not a number"
)]
#[case::symptoms_alone_are_no_scenario(
    &format!("{LINE}[[rule]]\npattern = 'error for (?P<user>\\S+)'\nevent = \"symptom\"\ninvariant = \"stuck\"\n"),
    "2025-09-08 23:29:14,123 ERROR app: error for u1\n",
    "1 of the 1 lines read from app.log matched a rule of map.toml, but none is a lifecycle event"
)]
fn bad_input_is_exit_2_with_the_file_and_line(
    #[case] map: &str,
    #[case] log: &str,
    #[case] message: &str,
) {
    let run = import_in(map, log);
    run.expect_code(2);
    assert!(
        run.stderr().contains(message),
        "{message:?} not in\n{}",
        run.context()
    );
    assert!(run.stdout().is_empty(), "{}", run.context());
}

#[test]
fn lines_out_of_order_and_unmatched_lines_are_fine() {
    let map = format!(
        "{LINE}[[rule]]\npattern = 'connect (?P<user>\\S+)'\nevent = \"connect\"\n{ACCEPTED}\
         [[rule]]\npattern = 'got (?P<id>\\S+) from (?P<user>\\S+)'\nevent = \"chat\"\n"
    );
    let log = "2025-09-08 23:29:14,300 INFO app: got m1 from u1\n\
               some traceback line without a time\n\
               2025-09-08 23:29:14,200 INFO app: accepted u1\n\
               2025-09-08 23:29:14,000 INFO app: connect u1\n";
    let run = import_in(&map, log);
    run.expect_code(0);
    let s = scenario_of(&run.stdout());
    assert_eq!(s.server.accept_ms, 200);
    assert_eq!(s.users[0].sends[0].at_ms, 100);
    assert!(
        run.stderr().contains("in 4 lines (1 matched no rule)"),
        "{}",
        run.context()
    );
    assert!(
        run.stderr()
            .contains("No symptom line matched: only state-machine is gated"),
        "{}",
        run.context()
    );
}

/// A user who connects, chats, leaves at 827 ms and comes back at 36,960 ms to chat again: two
/// connections of one user, each with its own chats and close, as the log shows them.
const RECONNECT_LOG: &str = "\
2026-11-29 23:08:16,000 INFO chat_backend.websocket: WebSocket connection request from user u
2026-11-29 23:08:16,060 INFO chat_backend.websocket: WebSocket accepted for user u, setup starts
2026-11-29 23:08:16,100 INFO chat_backend.websocket: Received message u/m1 from user u
2026-11-29 23:08:16,827 INFO chat_backend.websocket: WebSocket disconnected for user u (code 1000)
2026-11-29 23:08:52,960 INFO chat_backend.websocket: WebSocket connection request from user u
2026-11-29 23:08:53,020 INFO chat_backend.websocket: WebSocket accepted for user u, setup starts
2026-11-29 23:08:53,030 INFO chat_backend.websocket: Received message u/m2 from user u
2026-11-29 23:08:53,040 INFO chat_backend.websocket: Received message u/m3 from user u
";

#[test]
fn a_reconnecting_user_imports_as_two_connections_each_with_its_own_chats_and_close() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("reconnect.log");
    std::fs::write(&log, RECONNECT_LOG).unwrap();
    let run = import(&[s(&log), "--map", MAP, "--name", "reconnect"]);
    run.expect_code(0);
    // Whatever import writes passes the scenario checker.
    let imported = scenario_of(&run.stdout());
    let users: Vec<(&str, u64, usize, Option<u64>)> = imported
        .users
        .iter()
        .map(|u| (u.id.as_str(), u.connect_ms, u.sends.len(), u.close_ms))
        .collect();
    assert_eq!(
        users,
        [("u", 0, 1, Some(827)), ("u", 36_960, 2, None)],
        "{}",
        run.context()
    );
    // No connection closes before its own chats.
    for u in &imported.users {
        if let (Some(close), Some(last)) = (u.close_ms, u.sends.last()) {
            assert!(close >= last.at_ms, "{u:?}");
        }
    }
}
