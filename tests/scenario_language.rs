//! The scenario language's connection features, end to end through the binary and every driver:
//! several connections per user (a repeated `[[user]]` id, labelled `id`, `id#2`, …), a chat
//! pipelined with the upgrade request (`pipelined = true`), a drop without a close frame
//! (`drop_ms`), and a client whose close falls during its handshake. Each feature is shown by an
//! outcome it changes: the replay's verdicts against a twin file without it (`[expect]` gates
//! both), `probe --url` against `racegate serve`, and `probe --app` against the fixture app
//! `tests/fixtures/scenario_language/tabs.py`.
//!
//! The `--app` tests need the project's Python (`make py`, or RACEGATE_PYTHON).

use std::process::{Child, Stdio};

use rstest::rstest;
use serde_json::Value;
use util::{Run, python, racegate, racegate_env, spawn_serve};

mod util;

const DIR: &str = "tests/fixtures/scenario_language";
const REPLAY: &str = "tests/fixtures/scenario_language/replay";
const APP: &str = "tests.fixtures.scenario_language.tabs:app";

fn json(run: &Run) -> Value {
    serde_json::from_str(&run.stdout()).unwrap_or_else(|e| panic!("{e}\n{}", run.context()))
}

fn file(name: &str) -> String {
    format!("{DIR}/{name}")
}

// ---------------------------------------------------------------------------------------------
// The parser, through the binary: bad input is exit 2 at the offending place.

#[rstest]
#[case::a_close_and_a_drop_on_one_connection(
    "name = \"x\"\n[[user]]\nid = \"a\"\nclose_ms = 5\ndrop_ms = 9\n",
    "5:11: `drop_ms` and `close_ms` both end this connection"
)]
#[case::a_pipelined_chat_due_after_connect(
    "name = \"x\"\n[[user]]\nid = \"a\"\n[[user.send]]\nat_ms = 3\ntext = \"t\"\npipelined = true\n",
    "5:9: a pipelined chat goes out in the same write as the upgrade request"
)]
#[case::an_id_that_is_another_users_connection_label(
    "name = \"x\"\n[[user]]\nid = \"a\"\n[[user]]\nid = \"a\"\n[[user]]\nid = \"a#2\"\n",
    "7:6: user id `a#2` is the label of user `a`'s connection 2"
)]
fn a_misused_connection_feature_is_bad_input_at_its_line_and_column(
    #[case] text: &str,
    #[case] at_and_message: &str,
) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    std::fs::write(&path, text).unwrap();
    let shown = path.display().to_string();
    let run = racegate(&["run", &shown]);
    run.expect_code(2);
    assert!(
        run.stderr().contains(&format!("{shown}:{at_and_message}")),
        "{}",
        run.context()
    );
}

// ---------------------------------------------------------------------------------------------
// The replay: each file's `[expect]` names exactly the invariants each endpoint breaks, so a
// gate that passes is the assertion; the twins show what the feature changes.

/// `racegate run FILES --format json`, which must pass its gate; its results by
/// (scenario, endpoint).
fn replay(files: &[&str]) -> Vec<(String, String, Value)> {
    let mut args = vec!["run", "--format", "json"];
    args.extend_from_slice(files);
    let run = racegate(&args);
    run.expect_code(0);
    let doc = json(&run);
    let mut out = Vec::new();
    for s in doc["scenarios"].as_array().unwrap() {
        for r in s["results"].as_array().unwrap() {
            out.push((
                s["name"].as_str().unwrap().to_string(),
                r["endpoint"].as_str().unwrap().to_string(),
                r.clone(),
            ));
        }
    }
    out
}

/// (invariant, connection, detail) of a run's violations.
fn violations(result: &Value) -> Vec<(String, String, String)> {
    result["violations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| {
            (
                v["invariant"].as_str().unwrap().to_string(),
                v["user"].as_str().unwrap().to_string(),
                v["detail"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

fn result<'r>(results: &'r [(String, String, Value)], scenario: &str, endpoint: &str) -> &'r Value {
    &results
        .iter()
        .find(|(s, e, _)| s == scenario && e == endpoint)
        .unwrap_or_else(|| panic!("no {scenario} × {endpoint}"))
        .2
}

#[test]
fn a_users_second_connection_is_its_own_and_the_legacy_cleanup_unregisters_it() {
    let results = replay(&[
        &format!("{REPLAY}/reconnect.toml"),
        &format!("{REPLAY}/reconnect-other-user.toml"),
    ]);
    // The same user: the old connection's cleanup removed `tab#2`'s registration, so the push
    // for the user is refused while `tab#2` is open; no frame of the user's is cross-user.
    let same = violations(result(&results, "replay-reconnect", "unfixed"));
    assert!(
        same.iter().any(|(i, c, d)| i == "message-lost"
            && c == "tab#2"
            && d.starts_with("tab/p2 refused")),
        "{same:?}"
    );
    assert!(!same.iter().any(|(i, _, _)| i == "cross-user"), "{same:?}");
    // Another user on the same timeline: the shared context crosses them, and nothing is lost.
    let other = violations(result(&results, "replay-reconnect-other-user", "unfixed"));
    assert!(
        other
            .iter()
            .any(|(i, c, _)| i == "cross-user" && c == "tab"),
        "{other:?}"
    );
    assert!(
        !other.iter().any(|(i, _, _)| i == "message-lost"),
        "{other:?}"
    );
}

#[test]
fn a_pipelined_chat_is_lost_by_every_endpoint_and_the_same_chat_sent_on_open_is_not() {
    let results = replay(&[
        &format!("{REPLAY}/pipelined.toml"),
        &format!("{REPLAY}/pipelined-control.toml"),
    ]);
    assert_eq!(
        violations(result(&results, "replay-pipelined", "state-machine")),
        [(
            "message-lost".to_string(),
            "p".to_string(),
            "p/m1 was never delivered and never rejected".to_string()
        )]
    );
    assert_eq!(
        result(&results, "replay-pipelined-control", "state-machine")["verdict"],
        "pass"
    );
}

#[test]
fn a_drop_ends_the_connection_without_a_close_frame_at_its_time_and_before_open_like_a_close() {
    // `[expect]` gates both files.
    replay(&[
        &format!("{REPLAY}/drop.toml"),
        &format!("{REPLAY}/drop-during-handshake.toml"),
    ]);
    let trace = |file: &str| {
        let run = racegate(&[
            "run",
            &format!("{REPLAY}/{file}"),
            "--endpoint",
            "state-machine",
            "--trace",
        ]);
        run.expect_code(0);
        run.stdout()
    };
    let lines = trace("drop.toml");
    let of = |user: &str, what: &str| -> Vec<String> {
        lines
            .lines()
            .filter(|l| l.split_whitespace().nth(2) == Some(user) && l.contains(what))
            .map(|l| l.split_whitespace().next().unwrap().to_string())
            .collect()
    };
    // `d` drops at 160 ms, mid-run: the server sees its client gone then, and no close.
    assert_eq!(of("d", "client drop: no close frame"), ["160"], "{lines}");
    assert_eq!(of("d", "terminal closed"), ["160"], "{lines}");
    assert_eq!(of("d", "client close"), Vec::<String>::new(), "{lines}");
    let lines = trace("drop-during-handshake.toml");
    assert!(
        lines.contains("50 ms  gone                     client drop: no close frame"),
        "{lines}"
    );
    assert!(!lines.contains("gave up"), "{lines}");
}

#[test]
fn the_features_replay_the_same_over_real_sockets() {
    let run = racegate(&["run", "--transport", "ws", REPLAY]);
    run.expect_code(0);
    assert!(
        run.stdout().contains("18 runs") && run.stdout().contains("0 mismatches"),
        "{}",
        run.context()
    );
}

// ---------------------------------------------------------------------------------------------
// `probe --url`, against `racegate serve`.

/// `racegate serve`, killed when dropped.
struct Serve {
    child: Child,
    url: String,
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn serve(extra: &[&str]) -> Serve {
    let mut args = vec!["--endpoint", "state-machine", "--addr", "127.0.0.1:0"];
    args.extend_from_slice(extra);
    let (child, addr) = spawn_serve(&args, Stdio::null());
    Serve {
        child,
        url: format!("ws://{addr}/ws"),
    }
}

/// `racegate probe ARGS --format json` (with the project's Python, for `--app`); the run and
/// its first scenario.
fn probe(args: &[&str]) -> (Run, Value) {
    let mut all = vec!["probe", "--format", "json", "--trace"];
    all.extend_from_slice(args);
    let run = racegate_env(&all, &[("RACEGATE_PYTHON", python().as_os_str())]);
    let doc = json(&run);
    let first = doc["scenarios"][0].clone();
    (run, first)
}

/// (event, at_ms) of connection `conn`'s records.
fn records_of(scenario: &Value, conn: &str) -> Vec<(String, f64)> {
    scenario["records"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["user"] == conn)
        .map(|r| {
            (
                r["event"].as_str().unwrap().to_string(),
                r["at_ms"].as_f64().unwrap(),
            )
        })
        .collect()
}

fn events(records: &[(String, f64)]) -> Vec<&str> {
    records.iter().map(|(e, _)| e.as_str()).collect()
}

#[test]
fn probe_url_leaves_at_close_ms_during_the_handshake_as_the_replay_does() {
    // The server spends 200 ms before accept(); the client gives up at 50 ms.
    let s = serve(&["--accept-ms", "200"]);
    let (run, scenario) = probe(&[
        "--url",
        &s.url,
        "--scenario",
        &file("leave-during-handshake.toml"),
    ]);
    run.expect_code(0);
    let gone = records_of(&scenario, "gone-user");
    assert_eq!(
        events(&gone),
        ["connect", "client_close"],
        "{}",
        run.context()
    );
    let left = gone[1].1;
    assert!((50.0..200.0).contains(&left), "left at {left} ms");
    assert_eq!(scenario["verdict"], "pass", "{}", run.context());
}

#[test]
fn probe_url_writes_a_pipelined_chat_with_the_upgrade_request_where_it_is_lost() {
    let s = serve(&[]);
    let pipelined = file("pipelined.toml");
    let (run, scenario) = probe(&[
        "--url",
        &s.url,
        "--scenario",
        &pipelined,
        "--timeout-ms",
        "1500",
    ]);
    run.expect_code(1);
    let lost: Vec<(String, String, String)> = violations(&scenario);
    assert_eq!(
        lost,
        [(
            "message-lost".to_string(),
            "eager".to_string(),
            "eager/m1 was never delivered and never rejected".to_string()
        )],
        "{}",
        run.context()
    );
    // Sent before the handshake completed, in the connect's write.
    assert_eq!(
        events(&records_of(&scenario, "eager"))[..3],
        ["connect", "send", "open"]
    );
    // The same chats, the first one sent on open: both answered.
    let dir = tempfile::tempdir().unwrap();
    let control = dir.path().join("control.toml");
    let text = std::fs::read_to_string(&pipelined).unwrap();
    std::fs::write(&control, text.replace("pipelined = true\n", "")).unwrap();
    let (run, scenario) = probe(&[
        "--url",
        &s.url,
        "--scenario",
        control.to_str().unwrap(),
        "--timeout-ms",
        "1500",
    ]);
    run.expect_code(0);
    assert_eq!(scenario["verdict"], "pass");
}

#[test]
fn probe_url_labels_a_users_second_connection_and_numbers_its_chats_on() {
    let s = serve(&[]);
    let (run, scenario) = probe(&["--url", &s.url, "--scenario", &file("reconnect.toml")]);
    run.expect_code(0);
    let second: Vec<&Value> = scenario["records"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["user"] == "tab#2")
        .collect();
    assert!(
        second
            .iter()
            .any(|r| r["event"] == "send" && r["id"] == "tab/m2"),
        "{}",
        run.context()
    );
    assert!(
        second.iter().any(|r| r["event"] == "recv"
            && r["text"]
                .as_str()
                .unwrap()
                .contains("\"ack\",\"id\":\"tab/m2\"")),
        "{}",
        run.context()
    );
}

#[test]
fn probe_url_drops_without_a_close_frame_leaving_its_cut_off_chat_indeterminate() {
    // racegate's own five-event runs, 30 ms apart: the run of `gone`'s chat is still streaming
    // at its drop.
    let s = serve(&["--event-gap-ms", "30"]);
    let dir = tempfile::tempdir().unwrap();
    let own = dir.path().join("drop.toml");
    let text = std::fs::read_to_string(file("drop.toml")).unwrap();
    std::fs::write(&own, text.replace("[protocol]\nevents = []\n", "")).unwrap();
    let (run, scenario) = probe(&["--url", &s.url, "--scenario", own.to_str().unwrap()]);
    run.expect_code(0);
    let gone = records_of(&scenario, "gone");
    assert_eq!(
        gone.last().map(|(e, _)| e.as_str()),
        Some("client_drop"),
        "{}",
        run.context()
    );
    let indeterminate = scenario["indeterminate"].as_array().unwrap();
    assert_eq!(indeterminate.len(), 1, "{}", run.context());
    assert_eq!(indeterminate[0]["user"], "gone");
    assert!(
        indeterminate[0]["reason"]
            .as_str()
            .unwrap()
            .starts_with("its run was cut short"),
        "{}",
        run.context()
    );
    assert!(
        !violations(&scenario)
            .iter()
            .any(|(i, _, _)| i == "abnormal-close"),
        "the client's own drop is no abnormal close: {}",
        run.context()
    );
}

// ---------------------------------------------------------------------------------------------
// `probe --app`, against the fixture app on the virtual clock.

fn probe_app(path: &str, scenario: &str) -> (Run, Value) {
    probe(&["--app", APP, "--path", path, "--scenario", &file(scenario)])
}

#[test]
fn probe_app_a_stale_cleanup_of_a_users_old_connection_loses_the_new_ones_chat() {
    let (run, scenario) = probe_app("/ws/buggy", "reconnect.toml");
    run.expect_code(1);
    assert_eq!(
        violations(&scenario),
        [(
            "message-lost".to_string(),
            "tab#2".to_string(),
            "tab/m2 was never delivered and never rejected".to_string()
        )],
        "{}",
        run.context()
    );
    let (run, scenario) = probe_app("/ws/fixed", "reconnect.toml");
    run.expect_code(0);
    assert_eq!(scenario["verdict"], "pass");
}

#[test]
fn probe_app_an_answer_on_the_users_other_connection_is_its_own() {
    // The buggy route answers on the user's newest connection: `tab`'s chat is answered on
    // `tab#2`. Neither cross-user nor lost.
    let (run, scenario) = probe_app("/ws/buggy", "answer-on-other-tab.toml");
    run.expect_code(0);
    let acks: Vec<&Value> = scenario["records"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["event"] == "recv")
        .collect();
    assert_eq!(acks.len(), 1, "{}", run.context());
    assert_eq!(acks[0]["user"], "tab#2");
    assert!(acks[0]["text"].as_str().unwrap().contains("tab/m1"));
    assert_eq!(scenario["violations"], Value::Array(vec![]));
}

#[test]
fn probe_app_hands_a_pipelined_chat_to_uvicorn_with_the_request_where_it_is_lost() {
    let (run, scenario) = probe_app("/ws/fixed", "pipelined.toml");
    run.expect_code(1);
    assert_eq!(
        violations(&scenario),
        [(
            "message-lost".to_string(),
            "eager".to_string(),
            "eager/m1 was never delivered and never rejected".to_string()
        )],
        "{}",
        run.context()
    );
    assert_eq!(
        events(&records_of(&scenario, "eager"))[..5],
        ["connect", "send", "open", "send", "recv"]
    );
}

#[test]
fn probe_app_drops_without_a_close_frame_at_drop_ms() {
    // `/ws/late` answers 100 ms after each chat; `gone` drops at 50 ms.
    let (run, scenario) = probe_app("/ws/late", "drop.toml");
    run.expect_code(0);
    let gone = records_of(&scenario, "gone");
    assert_eq!(
        gone.last(),
        Some(&("client_drop".to_string(), 50.0)),
        "{}",
        run.context()
    );
    let indeterminate = scenario["indeterminate"].as_array().unwrap();
    assert_eq!(indeterminate.len(), 1, "{}", run.context());
    assert_eq!(
        indeterminate[0]["reason"],
        "the client dropped its connection on schedule before the answer came"
    );
}

#[test]
fn probe_app_leaves_at_close_ms_during_the_handshake() {
    // accept() takes 200 ms (`accept_ms`); `gone-user` leaves at 50 ms, `late-user` is served.
    let (run, scenario) = probe_app("/ws/fixed", "leave-during-handshake.toml");
    run.expect_code(0);
    assert_eq!(
        records_of(&scenario, "gone-user"),
        [
            ("connect".to_string(), 0.0),
            ("client_close".to_string(), 50.0)
        ],
        "{}",
        run.context()
    );
    assert_eq!(scenario["verdict"], "pass");
}
