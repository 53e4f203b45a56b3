//! Seeing the race from the command line: `--log-format json` lines shaped like Cloud Logging
//! entries, `racegate import` turning them back into a scenario with the same verdicts, and the
//! `--report` and `--format mermaid` outputs of `racegate run`.
//!
//! Each test gets its own temp dir; a failing assertion prints the command, stdout and stderr.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use rstest::rstest;
use util::racegate;

mod util;

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// `(endpoint, verdict, violated invariants)` per run of a `--format json` document.
fn verdicts(json: &str) -> Vec<(String, String, BTreeSet<String>)> {
    let doc: serde_json::Value = serde_json::from_str(json).unwrap();
    let mut out = Vec::new();
    for scenario in doc["scenarios"].as_array().unwrap() {
        for r in scenario["results"].as_array().unwrap() {
            let invariants = r["violations"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v["invariant"].as_str().unwrap().to_string())
                .collect();
            out.push((
                r["endpoint"].as_str().unwrap().to_string(),
                r["verdict"].as_str().unwrap().to_string(),
                invariants,
            ));
        }
    }
    out
}

#[rstest]
fn a_runs_json_log_imports_to_a_scenario_with_the_same_verdicts(
    #[files("scenarios/*.toml")] path: PathBuf,
) {
    let dir = tempfile::tempdir().unwrap();
    let run = racegate(&["--log-format", "json", "run", s(&path), "--format", "json"]);
    run.expect_code(0);
    let original = verdicts(&run.stdout());
    let log = dir.path().join("run.log");
    std::fs::write(&log, run.stderr()).unwrap();

    // The log holds a run per endpoint; each one alone gives the scenario back.
    for endpoint in ["unfixed", "partial", "state-machine"] {
        let imported = dir.path().join(format!("{endpoint}.toml"));
        racegate(&[
            "import",
            s(&log),
            "--endpoint",
            endpoint,
            "--out",
            s(&imported),
        ])
        .expect_code(0);
        let replayed = racegate(&["run", s(&imported), "--format", "json"]);
        replayed.expect_code(0);
        assert_eq!(
            verdicts(&replayed.stdout()),
            original,
            "{} imported from the {endpoint} run:\n{}",
            path.display(),
            std::fs::read_to_string(&imported).unwrap()
        );
    }
}

#[test]
fn json_log_lines_are_cloud_logging_entries_and_the_same_every_time() {
    let args = [
        "--log-format",
        "json",
        "run",
        "scenarios/staging-user-101463487227881885914.toml",
        "--endpoint",
        "unfixed",
    ];
    let first = racegate(&args);
    first.expect_code(0);
    assert_eq!(
        first.stderr(),
        racegate(&args).stderr(),
        "virtual time logs the same bytes"
    );
    let mut states = BTreeSet::new();
    let mut lifecycle = 0;
    for line in first.stderr().lines() {
        let entry: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
        for key in ["timestamp", "severity", "message", "jsonPayload"] {
            assert!(!entry[key].is_null(), "no {key}: {line}");
        }
        assert!(
            entry["timestamp"]
                .as_str()
                .unwrap()
                .starts_with("1970-01-01T00:00:")
        );
        assert_eq!(entry["labels"]["endpoint"], "unfixed", "{line}");
        let payload = &entry["jsonPayload"];
        if payload["target"] == "racegate::trace" {
            lifecycle += 1;
            assert!(
                payload["user_id"].is_string() && payload["event"].is_string(),
                "{line}"
            );
            assert_eq!(
                payload["connection_id"],
                format!("unfixed/{}", payload["user_id"].as_str().unwrap()),
            );
            if payload["event"] == "state" {
                states.insert(payload["state"].as_str().unwrap().to_string());
            }
            if payload["event"] == "transport_error" {
                assert_eq!(entry["severity"], "ERROR", "{line}");
            }
        }
    }
    assert!(lifecycle > 10, "{}", first.context());
    for state in [
        "connecting",
        "accepted",
        "authenticated",
        "services_ready",
        "processing_ready",
    ] {
        assert!(
            states.contains(state),
            "no `{state}` line: {}",
            first.context()
        );
    }
}

#[test]
fn import_skips_malformed_lines_and_names_the_first() {
    let dir = tempfile::tempdir().unwrap();
    let run = racegate(&[
        "--log-format",
        "json",
        "run",
        "scenarios/staging-user-101463487227881885914.toml",
        "--endpoint",
        "state-machine",
    ]);
    let mut lines: Vec<String> = run.stderr().lines().map(str::to_string).collect();
    lines.insert(3, "{ truncated by the export".to_string());
    lines.insert(
        7,
        "{\"jsonPayload\":{\"event\":\"client_open\"}}".to_string(),
    );
    let log = dir.path().join("staging.log");
    std::fs::write(&log, lines.join("\n")).unwrap();
    let out = dir.path().join("staging.toml");
    let import = racegate(&["import", s(&log), "--out", s(&out)]);
    import.expect_code(0);
    assert!(
        import
            .stderr()
            .contains("Skipped 2 malformed lines, the first at line 4."),
        "{}",
        import.context()
    );
    let text = std::fs::read_to_string(&out).unwrap();
    assert!(text.contains("# Skipped 2 malformed lines"), "{text}");
    racegate(&["run", s(&out)]).expect_code(0);
}

#[test]
fn import_of_a_log_without_lifecycle_events_exits_2_and_says_why() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("app.log");
    std::fs::write(
        &log,
        "{\"severity\":\"INFO\",\"message\":\"server started\"}\nnot json\n",
    )
    .unwrap();
    let r = racegate(&["import", s(&log)]);
    r.expect_code(2);
    assert!(
        r.stderr()
            .contains("no usable lifecycle events in 2 lines (1 malformed, the first at line 2)"),
        "{}",
        r.context()
    );
    assert!(r.stdout().is_empty());

    let missing = racegate(&["import", s(&dir.path().join("nope.log"))]);
    missing.expect_code(2);
    assert!(
        missing.stderr().contains("nope.log"),
        "{}",
        missing.context()
    );
}

#[test]
fn run_with_report_writes_one_html_file_and_keeps_the_exit_code() {
    let dir = tempfile::tempdir().unwrap();
    let report = dir.path().join("report.html");
    let r = racegate(&["run", "--report", s(&report)]);
    r.expect_code(0);
    assert!(
        r.stdout().contains("gate passes"),
        "the table still goes to stdout"
    );
    let html = std::fs::read_to_string(&report).unwrap();
    assert!(html.starts_with("<!DOCTYPE html>"));
    let runs = html.matches("<div class=\"run ").count();
    assert_eq!(
        runs,
        html.matches("<svg xmlns").count() - 1,
        "one SVG per run plus the legend"
    );
    let scenarios = std::fs::read_dir("scenarios")
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .is_ok_and(|e| e.path().extension().is_some_and(|x| x == "toml"))
        })
        .count();
    assert_eq!(runs, 3 * scenarios);
}

#[test]
fn mermaid_draws_one_run_and_refuses_more() {
    let r = racegate(&[
        "run",
        "scenarios/staging-user-101463487227881885914.toml",
        "--endpoint",
        "unfixed",
        "--format",
        "mermaid",
    ]);
    r.expect_code(0);
    let out = r.stdout();
    assert!(out.starts_with("sequenceDiagram\n"), "{}", r.context());
    assert!(
        out.contains("Note over C1,S1: ✗ accept-first"),
        "{}",
        r.context()
    );

    let many = racegate(&["run", "--format", "mermaid"]);
    many.expect_code(2);
    assert!(
        many.stderr()
            .contains("--format mermaid draws one run, but this selects"),
        "{}",
        many.context()
    );
}
