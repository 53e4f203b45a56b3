//! The `racegate` binary end to end: output shapes, exit codes, and errors that name the place.
//!
//! Each test gets its own temp dir; a failing assertion prints the command, stdout and stderr.

use std::path::{Path, PathBuf};

use rstest::rstest;
use util::racegate;

mod util;

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

const GOOD: &str = r#"
name = "good"
[server]
auth_ms = 100
[[user]]
id = "u"
[[user.send]]
at_ms = 5
text = "hi"
[expect]
unfixed = "fail"
state-machine = "pass"
"#;

#[test]
fn run_on_the_bundled_scenarios_passes_the_gate_with_a_table() {
    let r = racegate(&["run"]);
    r.expect_code(0);
    let out = r.stdout();
    assert!(out.starts_with("scenario"), "{}", r.context());
    assert!(out.contains("unfixed") && out.contains("state-machine"));
    assert!(out.contains("0 mismatches: gate passes"), "{}", r.context());
    let row = out
        .lines()
        .find(|l| l.starts_with("staging-user-101463487227881885914"))
        .unwrap_or_else(|| panic!("{}", r.context()));
    assert!(row.contains("fail accept-first"), "{row}");
}

#[test]
fn json_output_has_the_documented_shape() {
    let r = racegate(&["run", "--format", "json"]);
    r.expect_code(0);
    let doc: serde_json::Value = serde_json::from_str(&r.stdout()).unwrap();
    let scenarios = doc["scenarios"].as_array().unwrap();
    assert!(scenarios.len() >= 14);
    for s in scenarios {
        assert!(s["name"].is_string() && s["file"].is_string(), "{s}");
        let results = s["results"].as_array().unwrap();
        assert_eq!(results.len(), 3);
        for r in results {
            assert!(
                ["unfixed", "partial", "state-machine"].contains(&r["endpoint"].as_str().unwrap())
            );
            assert!(["pass", "fail"].contains(&r["verdict"].as_str().unwrap()));
            assert!(r["expected"].is_null() || r["expected"].is_string());
            for v in r["violations"].as_array().unwrap() {
                assert!(v["invariant"].is_string() && v["user"].is_string());
                assert!(v["at_ms"].is_u64() && v["detail"].is_string());
            }
        }
    }
    let summary = &doc["summary"];
    assert_eq!(summary["scenarios"].as_u64(), Some(scenarios.len() as u64));
    assert_eq!(summary["runs"].as_u64(), Some(3 * scenarios.len() as u64));
    assert_eq!(summary["mismatches"].as_u64(), Some(0));
}

#[test]
fn junit_output_is_xml_with_a_case_per_scenario_and_endpoint() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("report.xml");
    racegate(&["run", "--format", "junit", "--out", file.to_str().unwrap()]).expect_code(0);
    let xml = std::fs::read_to_string(&file).unwrap();
    let doc = roxmltree::Document::parse(&xml).unwrap();
    let cases: Vec<_> = doc
        .descendants()
        .filter(|n| n.has_tag_name("testcase"))
        .collect();
    let suites = doc
        .descendants()
        .filter(|n| n.has_tag_name("testsuite"))
        .count();
    assert_eq!(cases.len(), 3 * suites);
    assert!(doc.descendants().all(|n| !n.has_tag_name("failure")));
}

#[test]
fn a_verdict_that_differs_from_expect_exits_1_and_says_which() {
    let dir = tempfile::tempdir().unwrap();
    let text = GOOD.replace("unfixed = \"fail\"", "unfixed = \"pass\"");
    let path = write(dir.path(), "wrong.toml", &text);
    let r = racegate(&["run", path.to_str().unwrap()]);
    r.expect_code(1);
    assert!(
        r.stdout()
            .contains("good [unfixed]: expected pass, got fail"),
        "{}",
        r.context()
    );
    assert!(r.stdout().contains("message-lost"), "{}", r.context());

    let junit = racegate(&["run", "--format", "junit", path.to_str().unwrap()]);
    junit.expect_code(1);
    let xml = junit.stdout();
    let doc = roxmltree::Document::parse(&xml).unwrap();
    assert_eq!(
        doc.descendants()
            .filter(|n| n.has_tag_name("failure"))
            .count(),
        1
    );
}

#[test]
fn an_ungated_endpoint_is_reported_but_does_not_fail_the_gate() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(dir.path(), "good.toml", GOOD);
    let r = racegate(&["run", "--format", "json", path.to_str().unwrap()]);
    r.expect_code(0);
    let doc: serde_json::Value = serde_json::from_str(&r.stdout()).unwrap();
    let partial = &doc["scenarios"][0]["results"][1];
    assert_eq!(partial["endpoint"], "partial");
    assert!(partial["expected"].is_null());
}

#[rstest]
#[case::unknown_key("[server]\nacept_ms = 5\n", 2, 1, "acept_ms")]
#[case::negative_time(
    "[[user]]\nid = \"u\"\nconnect_ms = -3\n",
    3,
    14,
    "non-negative integer"
)]
#[case::fractional_time(
    "[[user]]\nid = \"u\"\n[[user.send]]\nat_ms = 5.5\ntext = \"x\"\n",
    4,
    9,
    "non-negative integer"
)]
#[case::wrong_type(
    "[server]\nauth_ms = \"slow\"\n[[user]]\nid = \"u\"\n",
    2,
    11,
    "auth_ms"
)]
#[case::empty_user_id("[[user]]\nid = \"\"\n", 2, 6, "empty")]
#[case::an_id_that_is_another_users_connection_label(
    "[[user]]\nid = \"u\"\n[[user]]\nid = \"u\"\n[[user]]\nid = \"u#2\"\n",
    6,
    6,
    "is the label of user `u`'s connection 2 (the [[user]] on line 5)"
)]
#[case::no_users("", 0, 1, "at least one [[user]]")]
#[case::bad_expectation("[[user]]\nid = \"u\"\n[expect]\nunfixed = \"maybe\"\n", 4, 11, "pass")]
fn a_bad_scenario_exits_2_naming_file_line_and_column(
    #[case] body: &str,
    #[case] line: usize,
    #[case] column: usize,
    #[case] phrase: &str,
) {
    let dir = tempfile::tempdir().unwrap();
    let text = format!("name = \"bad\"\n{body}");
    let path = write(dir.path(), "bad.toml", &text);
    let r = racegate(&["run", path.to_str().unwrap()]);
    r.expect_code(2);
    // The name line shifts every case by one.
    let place = format!("{}:{}:{}:", path.display(), line + 1, column);
    assert!(r.stderr().contains(&place), "want {place}\n{}", r.context());
    assert!(
        r.stderr().contains(phrase),
        "want {phrase:?}\n{}",
        r.context()
    );
    assert!(!r.stderr().contains("panicked"), "{}", r.context());
    assert!(r.stdout().is_empty(), "{}", r.context());
}

#[test]
fn a_missing_name_is_an_error_at_the_top_of_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(dir.path(), "noname.toml", "[[user]]\nid = \"u\"\n");
    let r = racegate(&["run", path.to_str().unwrap()]);
    r.expect_code(2);
    assert!(r.stderr().contains("noname.toml:1:1:"), "{}", r.context());
    assert!(r.stderr().contains("name"), "{}", r.context());
}

#[test]
fn two_files_with_one_name_exit_2() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "a.toml", GOOD);
    write(dir.path(), "b.toml", GOOD);
    let r = racegate(&["run", dir.path().to_str().unwrap()]);
    r.expect_code(2);
    assert!(r.stderr().contains("already used"), "{}", r.context());
}

#[rstest]
#[case::missing_path(&["run", "does/not/exist"], "does/not/exist")]
#[case::empty_folder(&["run", "__EMPTY__"], "no scenario files")]
#[case::unknown_endpoint(&["run", "--endpoint", "fixed"], "fixed")]
#[case::unknown_format(&["run", "--format", "xml"], "xml")]
#[case::zero_jobs(&["run", "--transport", "ws", "--jobs", "0"], "must be at least 1")]
#[case::unresolvable_addr(&["serve", "--endpoint", "unfixed", "--addr", "no-such-host.invalid:80"], "cannot resolve")]
fn bad_invocations_exit_2_with_a_message(#[case] args: &[&str], #[case] phrase: &str) {
    let dir = tempfile::tempdir().unwrap();
    let empty = dir.path().to_str().unwrap().to_string();
    let args: Vec<&str> = args
        .iter()
        .map(|a| if *a == "__EMPTY__" { empty.as_str() } else { a })
        .collect();
    let r = racegate(&args);
    r.expect_code(2);
    assert!(r.stderr().contains(phrase), "{}", r.context());
}

#[test]
fn one_endpoint_runs_alone_and_trace_prints_the_timeline() {
    let r = racegate(&[
        "run",
        "scenarios/rollback-auth-failure.toml",
        "--endpoint",
        "state-machine",
        "--trace",
    ]);
    r.expect_code(0);
    let out = r.stdout();
    assert!(!out.contains("unfixed"), "{}", r.context());
    assert!(out.contains("== rollback-auth-failure [state-machine]: pass"));
    assert!(out.contains("server close 1008"), "{}", r.context());
    assert!(
        out.contains("rejected user-bad-token/m1"),
        "{}",
        r.context()
    );
}

#[test]
fn the_same_run_prints_the_same_bytes_twice() {
    let args = ["run", "--format", "json", "--trace"];
    let a = racegate(&args);
    let b = racegate(&args);
    a.expect_code(0);
    assert_eq!(a.stdout(), b.stdout());
}

/// `GOOD`'s timing: `unfixed` drops the first chat (no handler yet): message-lost, nothing else.
fn with_expect(expect: &str) -> String {
    let head = GOOD.split("[expect]").next().unwrap();
    format!("{head}[expect]\n{expect}\n")
}

#[test]
fn an_expectation_naming_the_right_invariants_passes_the_gate() {
    let dir = tempfile::tempdir().unwrap();
    let text = with_expect(
        "unfixed = { verdict = \"fail\", invariants = [\"message-lost\"] }\nstate-machine = \"pass\"",
    );
    let path = write(dir.path(), "s.toml", &text);
    let r = racegate(&["run", path.to_str().unwrap()]);
    r.expect_code(0);
    assert!(
        r.stdout().contains("0 mismatches: gate passes"),
        "{}",
        r.context()
    );
}

#[test]
fn a_run_failing_for_another_invariant_than_expected_fails_the_gate() {
    let dir = tempfile::tempdir().unwrap();
    let text = with_expect(
        "unfixed = { verdict = \"fail\", invariants = [\"accept-first\"] }\nstate-machine = \"pass\"",
    );
    let path = write(dir.path(), "s.toml", &text);
    let r = racegate(&["run", path.to_str().unwrap()]);
    r.expect_code(1);
    let out = r.stdout();
    assert!(
        out.contains(
            "good [unfixed]: expected fail with exactly [accept-first], got fail with [message-lost]"
        ),
        "{}",
        r.context()
    );
    assert!(out.contains("1 mismatch: gate FAILS"), "{}", r.context());
    let json = racegate(&["run", path.to_str().unwrap(), "--format", "json"]);
    let doc: serde_json::Value = serde_json::from_str(&json.stdout()).unwrap();
    let unfixed = &doc["scenarios"][0]["results"][0];
    assert_eq!(unfixed["expected"], "fail");
    assert_eq!(
        unfixed["expected_invariants"],
        serde_json::json!({"exactly": ["accept-first"]})
    );
    assert!(
        unfixed["mismatch"]
            .as_str()
            .unwrap()
            .contains("exactly [accept-first]")
    );
}

#[test]
fn at_least_accepts_more_invariants_but_not_fewer() {
    let dir = tempfile::tempdir().unwrap();
    let ok = write(
        dir.path(),
        "ok.toml",
        &with_expect("unfixed = { verdict = \"fail\", at_least = [\"message-lost\"] }"),
    );
    racegate(&["run", ok.to_str().unwrap()]).expect_code(0);
    let more = write(
        dir.path(),
        "more.toml",
        &with_expect("unfixed = { verdict = \"fail\", at_least = [\"message-lost\", \"leak\"] }"),
    );
    racegate(&["run", more.to_str().unwrap()]).expect_code(1);
}

#[test]
fn a_run_with_no_expectation_never_says_the_gate_passes() {
    let dir = tempfile::tempdir().unwrap();
    let head = GOOD.split("[expect]").next().unwrap();
    let path = write(dir.path(), "s.toml", head);
    let r = racegate(&["run", path.to_str().unwrap()]);
    let out = r.stdout();
    assert!(!out.contains("gate passes"), "{}", r.context());
    assert!(
        out.contains(
            "1 scenario, 3 runs, 0 of 3 gated: nothing was checked against an expectation"
        ),
        "{}",
        r.context()
    );
    assert!(out.contains("(not gated)"), "{}", r.context());
    let junit = racegate(&["run", path.to_str().unwrap(), "--format", "junit"]);
    let xml = junit.stdout();
    let doc = roxmltree::Document::parse(&xml).unwrap();
    let cases: Vec<_> = doc
        .descendants()
        .filter(|n| n.has_tag_name("testcase"))
        .collect();
    assert_eq!(cases.len(), 3);
    assert!(
        cases
            .iter()
            .all(|c| c.children().any(|n| n.has_tag_name("skipped"))),
        "{xml}"
    );
}

#[test]
fn a_partly_gated_run_says_how_many_runs_were_not_gated() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(dir.path(), "s.toml", GOOD);
    let r = racegate(&["run", path.to_str().unwrap()]);
    r.expect_code(0);
    assert!(
        r.stdout()
            .contains("1 scenario, 3 runs (1 not gated), 0 mismatches: gate passes"),
        "{}",
        r.context()
    );
}

#[test]
fn outside_a_checkout_run_uses_the_bundled_scenarios_and_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let r = util::racegate_in(dir.path(), &["run"]);
    r.expect_code(0);
    assert!(
        r.stderr()
            .contains("using the 24 scenarios built into racegate"),
        "{}",
        r.context()
    );
    assert!(
        r.stdout().contains("24 scenarios, 72 runs"),
        "{}",
        r.context()
    );
    // Inside a checkout, scenarios/ wins: a folder with one scenario is what runs.
    std::fs::create_dir(dir.path().join("scenarios")).unwrap();
    write(&dir.path().join("scenarios"), "good.toml", GOOD);
    let r = util::racegate_in(dir.path(), &["run"]);
    r.expect_code(0);
    assert!(r.stdout().contains("1 scenario, 3 runs"), "{}", r.context());
    assert!(
        !r.stderr().contains("built into racegate"),
        "{}",
        r.context()
    );
}

#[test]
fn scenarios_list_and_export_give_the_bundled_files_byte_for_byte() {
    let r = racegate(&["scenarios", "list"]);
    r.expect_code(0);
    assert!(
        r.stdout()
            .contains("staging-user-101463487227881885914     push during the accept window"),
        "{}",
        r.context()
    );
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("mine");
    racegate(&["scenarios", "export", out.to_str().unwrap()]).expect_code(0);
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("scenarios");
    let mut names: Vec<_> = std::fs::read_dir(&repo)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    names.sort();
    assert_eq!(names.len(), 24);
    for name in &names {
        assert_eq!(
            std::fs::read(out.join(name)).unwrap(),
            std::fs::read(repo.join(name)).unwrap(),
            "{name:?}"
        );
    }
    // A file the user changed is left alone, and said so, with exit 2.
    std::fs::write(out.join(&names[0]), "name = \"mine\"\n").unwrap();
    let r = racegate(&["scenarios", "export", out.to_str().unwrap()]);
    r.expect_code(2);
    assert!(
        r.stderr().contains("left 1 file(s) alone"),
        "{}",
        r.context()
    );
    assert_eq!(
        std::fs::read_to_string(out.join(&names[0])).unwrap(),
        "name = \"mine\"\n"
    );
}

#[test]
fn scenario_folders_are_searched_with_their_subfolders() {
    let dir = tempfile::tempdir().unwrap();
    let sub = dir.path().join("auth");
    std::fs::create_dir(&sub).unwrap();
    write(&sub, "good.toml", GOOD);
    let r = racegate(&["run", dir.path().to_str().unwrap()]);
    r.expect_code(0);
    assert!(r.stdout().contains("1 scenario, 3 runs"), "{}", r.context());
    let empty = tempfile::tempdir().unwrap();
    let r = racegate(&["run", empty.path().to_str().unwrap()]);
    r.expect_code(2);
    assert!(
        r.stderr().contains("searched with their subfolders"),
        "{}",
        r.context()
    );
}
