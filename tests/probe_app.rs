//! `racegate probe --app`: the app in-process on a virtual clock, end to end through the
//! binary. The example backend's production route fails the seed's staging scenarios with the
//! seed's invariants, byte for byte the same every run, and its fixed route passes; the
//! scenario's phase times reach the app through hooks; two bugs no client can see are caught
//! and their fixed twins pass; a server that answers nothing never passes, under `--app` and
//! under `--url` against the same app on a real uvicorn; bad input is exit 2 in one line.
//!
//! Needs the project's Python (`make py`, or RACEGATE_PYTHON). The `--url` tests start uvicorn
//! on a free loopback port and kill it by its PID when they end.

use std::collections::BTreeSet;

use rstest::rstest;
use util::{Run, Uvicorn, python, racegate_env};

mod util;

const STAGING_USER: &str = "scenarios/staging-user-101463487227881885914.toml";
const STAGING_E2E: &str = "scenarios/staging-e2e-staging_pipeline.toml";
const APPS: &str = "tests/fixtures/apps";
const ACKS: &str = "tests/fixtures/apps/acks.toml";
const HOOKS: &str = "examples/chat_backend/hooks.toml";

/// `racegate probe ARGS` with the project's Python.
fn probe(args: &[&str]) -> Run {
    let mut all = vec!["probe"];
    all.extend_from_slice(args);
    racegate_env(&all, &[("RACEGATE_PYTHON", python().as_os_str())])
}

fn json(run: &Run) -> serde_json::Value {
    serde_json::from_str(&run.stdout()).unwrap_or_else(|e| panic!("{e}\n{}", run.context()))
}

/// Per scenario: its verdict and the set of invariants it violated.
fn verdicts(doc: &serde_json::Value) -> Vec<(String, String, BTreeSet<String>)> {
    doc["scenarios"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            let names = s["violations"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v["invariant"].as_str().unwrap().to_string())
                .collect();
            (
                s["name"].as_str().unwrap().to_string(),
                s["verdict"].as_str().unwrap().to_string(),
                names,
            )
        })
        .collect()
}

fn set(names: &[&str]) -> BTreeSet<String> {
    names.iter().map(|s| s.to_string()).collect()
}

#[test]
fn the_production_route_fails_the_staging_scenarios_with_the_seeds_invariants_byte_for_byte_every_run()
 {
    let args = [
        "--app",
        "examples.chat_backend.app:app",
        "--path",
        "/ws",
        "--scenario",
        STAGING_USER,
        "--scenario",
        STAGING_E2E,
        "--format",
        "json",
        "--trace",
    ];
    let first = probe(&args);
    first.expect_code(1);
    let doc = json(&first);
    assert_eq!(doc["clock"], "virtual", "{}", first.context());
    for (name, verdict, invariants) in verdicts(&doc) {
        // The seed's: the reader used the socket before accept, and the first chats reached
        // no handler.
        assert_eq!(verdict, "fail", "{name}");
        assert_eq!(invariants, set(&["accept-first", "message-lost"]), "{name}");
    }
    for _ in 1..10 {
        let again = probe(&args);
        assert_eq!(again.stdout(), first.stdout(), "{}", again.context());
    }
}

#[test]
fn the_fixed_route_passes_the_staging_scenarios() {
    let run = probe(&[
        "--app",
        "examples.chat_backend.app:app",
        "--path",
        "/ws/fixed",
        "--scenario",
        STAGING_USER,
        "--scenario",
        STAGING_E2E,
        "--format",
        "json",
    ]);
    run.expect_code(0);
    for (name, verdict, invariants) in verdicts(&json(&run)) {
        assert_eq!((verdict.as_str(), invariants.len()), ("pass", 0), "{name}");
    }
}

/// The first time a client of `doc`'s first scenario received a frame whose text contains
/// `needle`.
fn first_recv(doc: &serde_json::Value, needle: &str) -> f64 {
    doc["scenarios"][0]["records"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["event"] == "recv" && r["text"].as_str().unwrap().contains(needle))
        .and_then(|r| r["at_ms"].as_f64())
        .unwrap_or_else(|| panic!("no frame with {needle}"))
}

#[test]
fn hooks_give_the_scenarios_phase_times_to_the_apps_own_awaitables() {
    // The test factory stubs the app's own delays out: every millisecond comes from the
    // scenario. staging-user: accept() takes 120 ms, then auth 180, services 240, register 90:
    // the held chat is answered at 630 ms.
    let hooked = |path: &str| {
        probe(&[
            "--app",
            "examples.chat_backend.app:create_test_app",
            "--factory",
            "--hooks",
            HOOKS,
            "--path",
            path,
            "--scenario",
            STAGING_USER,
            "--format",
            "json",
            "--trace",
        ])
    };
    let fixed = hooked("/ws/fixed");
    fixed.expect_code(0);
    assert_eq!(first_recv(&json(&fixed), "\"ack\""), 630.0);
    let buggy = hooked("/ws");
    buggy.expect_code(1);
    let (_, _, invariants) = verdicts(&json(&buggy)).remove(0);
    assert!(invariants.contains("message-lost"), "{}", buggy.context());
}

#[test]
fn fail_at_makes_the_hooked_awaitable_raise_the_exception_the_hooks_file_names() {
    let run = probe(&[
        "--app",
        "examples.chat_backend.app:create_test_app",
        "--factory",
        "--hooks",
        HOOKS,
        "--path",
        "/ws/fixed",
        "--scenario",
        "scenarios/rollback-auth-failure.toml",
        "--format",
        "json",
        "--trace",
    ]);
    run.expect_code(0);
    let doc = json(&run);
    let closes: Vec<(String, u64)> = doc["scenarios"][0]["records"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["event"] == "server_close")
        .map(|r| {
            (
                r["user"].as_str().unwrap().to_string(),
                r["code"].as_u64().unwrap(),
            )
        })
        .collect();
    // The fixed route closes a connection whose auth failed with 1008; the other user is served.
    assert_eq!(
        closes,
        [("user-bad-token".to_string(), 1008)],
        "{}",
        run.context()
    );
}

#[rstest]
#[case::a_timer_that_closes_after_the_client_left(
    "late_close:app",
    "accept-first",
    "the app closed after the client's disconnect reached it"
)]
#[case::a_per_connection_task_that_outlives_its_connection(
    "task_leak:app",
    "leak",
    "task presence_heartbeat (task_leak.py)"
)]
#[case::a_task_whose_exception_no_one_retrieves(
    "task_raise:app",
    "abnormal-close",
    "(in task read_receipt (task_raise.py), never retrieved)"
)]
fn a_bug_no_client_sees_fails_under_app_and_its_fixed_twin_passes(
    #[case] app: &str,
    #[case] invariant: &str,
    #[case] detail: &str,
) {
    let buggy = probe(&[
        "--app-dir",
        APPS,
        "--app",
        app,
        "--scenario",
        ACKS,
        "--format",
        "json",
    ]);
    buggy.expect_code(1);
    let doc = json(&buggy);
    let violations = doc["scenarios"][0]["violations"].as_array().unwrap();
    // Each user's connection shows the bug (other findings may come with it: the late close's
    // exception, say, is never retrieved from its task either).
    let users: BTreeSet<&str> = violations
        .iter()
        .filter(|v| v["invariant"] == invariant && v["detail"].as_str().unwrap().contains(detail))
        .map(|v| v["user"].as_str().unwrap())
        .collect();
    assert_eq!(
        users,
        BTreeSet::from(["alice", "bob"]),
        "{}",
        buggy.context()
    );
    let path = ["--path", "/ws/fixed"];
    let fixed = probe(
        &[
            &["--app-dir", APPS, "--app", app, "--scenario", ACKS][..],
            &path,
        ]
        .concat(),
    );
    fixed.expect_code(0);
}

#[rstest]
#[case::a_timer_that_closes_after_the_client_left("late_close:app")]
#[case::a_per_connection_task_that_outlives_its_connection("task_leak:app")]
#[case::a_task_whose_exception_no_one_retrieves("task_raise:app")]
fn the_same_bugs_pass_probe_url_against_a_real_uvicorn(#[case] app: &str) {
    let dir = tempfile::tempdir().unwrap();
    let server = Uvicorn::start(&format!("{APPS}={app}"), dir.path(), None);
    let url = server.url("/ws");
    let run = probe(&["--url", &url, "--scenario", ACKS]);
    // What the clients saw is all fine: the bug happens after they left.
    run.expect_code(0);
}

#[test]
fn a_server_that_answers_nothing_while_its_clients_close_on_schedule_never_passes() {
    let scenario = "tests/fixtures/apps/silent.toml";
    let app = probe(&[
        "--app-dir",
        APPS,
        "--app",
        "silent:app",
        "--scenario",
        scenario,
    ]);
    app.expect_code(1);
    assert!(
        app.stdout()
            .contains("inconclusive: no chat was answered: 4 sent"),
        "{}",
        app.context()
    );
    let dir = tempfile::tempdir().unwrap();
    let server = Uvicorn::start(&format!("{APPS}=silent:app"), dir.path(), None);
    let url = probe(&["--url", &server.url("/ws"), "--scenario", scenario]);
    url.expect_code(1);
    assert!(
        url.stdout()
            .contains("inconclusive: no chat was answered: 4 sent"),
        "{}",
        url.context()
    );
    // Allowed, the gate passes, but the scenario is still not called a pass.
    let allowed = probe(&[
        "--app-dir",
        APPS,
        "--app",
        "silent:app",
        "--scenario",
        scenario,
        "--allow-inconclusive",
    ]);
    allowed.expect_code(0);
    assert!(allowed.stdout().contains("0 pass, 0 fail, 1 inconclusive"));
}

#[test]
fn the_apps_lifespan_runs_before_its_connections_and_a_failed_startup_is_exit_2() {
    let up = probe(&[
        "--app-dir",
        APPS,
        "--app",
        "lifespan:app",
        "--scenario",
        ACKS,
    ]);
    up.expect_code(0);
    let down = probe(&[
        "--app-dir",
        APPS,
        "--app",
        "lifespan:failing",
        "--scenario",
        ACKS,
    ]);
    down.expect_code(2);
    assert!(
        down.stderr()
            .contains("lifespan startup failed: ConnectionError: the database is not reachable"),
        "{}",
        down.context()
    );
    assert!(!down.stderr().contains("Traceback"), "{}", down.context());
}

#[rstest]
#[case::no_such_module(&["--app", "nosuch:app"], "--app nosuch:app: Could not import module \"nosuch\"")]
#[case::no_such_attribute(&["--app", "examples.chat_backend.app:missing"], "Attribute \"missing\" not found")]
#[case::a_module_that_raises_on_import(&["--app-dir", APPS, "--app", "broken:app"], "importing it raised RuntimeError: the settings file is missing (")]
#[case::a_path_that_is_no_websocket_route(&["--app", "examples.chat_backend.app:app", "--path", "/nope"], "no WebSocket route of the app matches it (its WebSocket routes: /ws, /ws/fixed)")]
#[case::no_usable_python(&["--app", "examples.chat_backend.app:app", "--python", "/nonexistent/python"], "no usable Python at /nonexistent/python")]
#[case::not_module_colon_attr(&["--app", "examples.chat_backend.app"], "expected MODULE:ATTR")]
#[case::a_hook_that_names_a_missing_function(&["--app", "examples.chat_backend.app:app", "--hooks", "tests/fixtures/apps/hooks-missing.toml"], "tests/fixtures/apps/hooks-missing.toml:2:17: auth.call = 'examples.chat_backend.app:verify_tokn': examples.chat_backend.app has no attribute 'verify_tokn'")]
#[case::a_hooks_file_with_a_bad_key(&["--app", "examples.chat_backend.app:app", "--hooks", "tests/fixtures/apps/hooks-bad-key.toml"], "tests/fixtures/apps/hooks-bad-key.toml:3:1: unknown key `accept`")]
fn bad_input_is_exit_2_with_one_clear_line(#[case] args: &[&str], #[case] phrase: &str) {
    let started = std::time::Instant::now();
    let run = probe(&[args, &["--scenario", ACKS]].concat());
    run.expect_code(2);
    let err = run.stderr();
    assert!(err.contains(phrase), "{}", run.context());
    assert!(!err.contains("Traceback"), "{}", run.context());
    assert!(started.elapsed().as_secs() < 10, "{}", run.context());
}

#[test]
fn under_log_format_json_every_line_on_standard_error_is_json() {
    for args in [
        &[
            "--app",
            "examples.chat_backend.app:app",
            "--path",
            "/ws",
            "--scenario",
            STAGING_USER,
        ][..],
        &["--app", "nosuch:app", "--scenario", STAGING_USER][..],
    ] {
        let mut all = vec!["--log-format", "json", "probe"];
        all.extend_from_slice(args);
        let run = racegate_env(&all, &[("RACEGATE_PYTHON", python().as_os_str())]);
        let err = run.stderr();
        assert!(!err.trim().is_empty(), "{}", run.context());
        for line in err.lines() {
            let entry: serde_json::Value = serde_json::from_str(line)
                .unwrap_or_else(|e| panic!("{e}: {line:?}\n{}", run.context()));
            assert!(entry["severity"].is_string(), "{line}");
        }
    }
}

#[test]
fn probe_report_draws_a_timeline_per_scenario_the_same_bytes_every_run() {
    let dir = tempfile::tempdir().unwrap();
    let report = |name: &str| {
        let path = dir.path().join(name);
        let file = path.display().to_string();
        let run = probe(&[
            "--app",
            "examples.chat_backend.app:app",
            "--path",
            "/ws",
            "--scenario",
            STAGING_USER,
            "--scenario",
            STAGING_E2E,
            "--report",
            &file,
        ]);
        run.expect_code(1);
        std::fs::read_to_string(&path).unwrap()
    };
    let html = report("one.html");
    assert_eq!(
        html.matches("<svg").count(),
        3,
        "a legend and two timelines"
    );
    for needle in [
        "staging-user-101463487227881885914",
        "staging-e2e-staging_pipeline",
        "<span class=\"inv\">accept-first</span>",
        "app receive_text: WebSocket is not connected",
        "client send e2e-staging_pipeline/m1",
    ] {
        assert!(html.contains(needle), "{needle} missing from the report");
    }
    assert_eq!(report("two.html"), html);
}

/// A project whose app speaks a wire format of its own (tests/fixtures/apps/foreign.py), its
/// `[protocol]` and hooks in `[tool.racegate]`, no scenarios of its own.
fn foreign_project() -> tempfile::TempDir {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let apps = root.join(APPS);
    let dir = tempfile::tempdir().unwrap();
    let protocol = std::fs::read_to_string(apps.join("foreign-protocol.toml")).unwrap();
    let protocol = protocol.replace("[protocol]", "[tool.racegate.protocol]");
    std::fs::write(
        dir.path().join("pyproject.toml"),
        format!(
            "[project]\nname = \"foreign\"\n\n[tool.racegate]\napp = \"foreign:app\"\n\
             app_dir = \"{}\"\npython = \"{}\"\n\n[tool.racegate.hooks]\n\
             auth = {{ call = \"foreign:auth\", raise = \"foreign:AuthError\" }}\n\
             services = {{ call = \"foreign:services\", raise = \"foreign:SetupError\" }}\n\
             register = {{ call = \"foreign:register\", raise = \"foreign:SetupError\" }}\n\n{protocol}",
            apps.display(),
            python().display()
        ),
    )
    .unwrap();
    dir
}

#[test]
fn the_bundled_scenarios_in_a_foreign_protocol_from_the_project_give_no_false_failure() {
    let dir = foreign_project();
    // No flags: the project's app, hooks and protocol; the bundled scenarios (no scenarios/).
    let run = util::racegate_in(dir.path(), &["probe", "--format", "json"]);
    let doc: serde_json::Value =
        serde_json::from_str(&run.stdout()).unwrap_or_else(|e| panic!("{e}\n{}", run.context()));
    let summary = &doc["summary"];
    assert_eq!(summary["scenarios"], 24, "{}", run.context());
    assert_eq!(summary["failed"], 0, "{}", run.context());
    // Each inconclusive one is a scenario whose clients leave before any answer can come.
    assert!(
        summary["inconclusive"].as_u64().unwrap() <= 3,
        "{}",
        run.context()
    );
    assert!(
        summary["passed"].as_u64().unwrap() >= 21,
        "{}",
        run.context()
    );
    // racegate config says where the protocol came from.
    let config = util::racegate_in(dir.path(), &["config"]);
    config.expect_code(0);
    assert!(
        config.stdout().contains("protocol") && config.stdout().contains("pyproject.toml:"),
        "{}",
        config.context()
    );
}

#[test]
fn an_import_writes_the_projects_protocol_and_the_file_probes_the_app() {
    let dir = foreign_project();
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let log = root.join("tests/fixtures/import/chat_backend.log");
    let map = root.join("examples/chat_backend/map.toml");
    let out = dir.path().join("imported.toml");
    let run = util::racegate_in(
        dir.path(),
        &[
            "import",
            &log.display().to_string(),
            "--map",
            &map.display().to_string(),
            "--out",
            &out.display().to_string(),
        ],
    );
    run.expect_code(0);
    let text = std::fs::read_to_string(&out).unwrap();
    assert!(text.contains("[protocol]"), "{text}");
    assert!(text.contains("ack_type = \"reply\""), "{text}");
    assert!(text.contains("Its [protocol] is the project's"), "{text}");
}

#[test]
fn an_import_of_the_buggy_apps_log_probed_against_that_app_fails_and_the_fix_passes() {
    let dir = tempfile::tempdir().unwrap();
    let imported = dir.path().join("imported.toml").display().to_string();
    let run = util::racegate(&[
        "import",
        "tests/fixtures/import/chat_backend.log",
        "--map",
        "examples/chat_backend/map.toml",
        "--out",
        &imported,
    ]);
    run.expect_code(0);
    let app = [
        "--app",
        "examples.chat_backend.app:app",
        "--scenario",
        &imported,
        "--path",
    ];
    let buggy = probe(&[&app[..], &["/ws"]].concat());
    buggy.expect_code(1);
    assert!(
        buggy.stdout().contains("✗ accept-first"),
        "{}",
        buggy.context()
    );
    probe(&[&app[..], &["/ws/fixed"]].concat()).expect_code(0);
}
