//! From a real application's log to a regression scenario, end to end: the FastAPI example
//! backend (examples/chat_backend) under uvicorn on a free loopback port, `racegate probe`
//! against its production route with the staging scenarios while its log is captured, `racegate
//! import --map` of that log, `racegate run` of the result (it fails on `unfixed` with exactly
//! the symptoms the app logged, and passes on `state-machine`), and `racegate probe` of the
//! app's fixed route with the imported scenario (it passes).
//!
//! Needs the project's Python (`make py`, or RACEGATE_PYTHON). Every wait is bounded; uvicorn is
//! killed by its PID when the test ends, however it ends. With RACEGATE_CHAT_LOG=FILE the
//! captured log is also written there (how tests/fixtures/import/chat_backend.log was made).

use std::collections::BTreeSet;
use std::path::Path;

use util::{Uvicorn, context, run_bounded};

mod util;

const STAGING_USER: &str = "scenarios/staging-user-101463487227881885914.toml";
const STAGING_E2E: &str = "scenarios/staging-e2e-staging_pipeline.toml";
const MAP: &str = "examples/chat_backend/map.toml";

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// `(endpoint, verdict, invariants, production symptoms not reproduced)` per result of `run
/// --format json`.
fn results(json: &[u8]) -> Vec<(String, String, BTreeSet<String>, usize)> {
    let doc: serde_json::Value = serde_json::from_slice(json).unwrap();
    doc["scenarios"][0]["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            let invariants = r["violations"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v["invariant"].as_str().unwrap().to_string())
                .collect();
            let missed = r["production"]
                .as_array()
                .map_or(0, |p| p.iter().filter(|c| c["reproduced"] != true).count());
            (
                r["endpoint"].as_str().unwrap().to_string(),
                r["verdict"].as_str().unwrap().to_string(),
                invariants,
                missed,
            )
        })
        .collect()
}

#[test]
fn the_example_backends_log_becomes_a_scenario_that_fails_like_production_and_passes_fixed() {
    let dir = tempfile::tempdir().unwrap();
    let app = Uvicorn::start("examples.chat_backend.app:app", dir.path(), Some("/health"));

    // 1. The staging scenarios' clients against the production route, the app logging.
    let buggy = app.url("/ws");
    let args = [
        "probe",
        "--url",
        &buggy,
        "--scenario",
        STAGING_USER,
        STAGING_E2E,
        "--timeout-ms",
        "4000",
    ];
    let out = run_bounded(&args);
    assert_eq!(out.status.code(), Some(1), "{}", context(&args, &out));

    let log = app.log_with("WebSocket disconnected for user e2e-staging_pipeline");
    let log_file = dir.path().join("chat_backend.log");
    std::fs::write(&log_file, &log).unwrap();
    if let Some(keep) = std::env::var_os("RACEGATE_CHAT_LOG") {
        std::fs::write(keep, &log).unwrap();
    }

    // 2. Its log, through the mapping, into a scenario.
    let imported = dir.path().join("imported.toml");
    let args = ["import", s(&log_file), "--map", MAP, "--out", s(&imported)];
    let out = run_bounded(&args);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}\n--- the app's log\n{log}",
        context(&args, &out)
    );
    let scenario = racegate_replay::scenario::load(&imported).unwrap();
    let text = std::fs::read_to_string(&imported).unwrap();
    let seen: BTreeSet<&str> = scenario
        .production
        .iter()
        .map(|p| p.invariant.name())
        .collect();
    assert_eq!(
        seen,
        BTreeSet::from([
            "accept-first",
            "message-lost",
            "before-ready",
            "cross-user",
            "event-order"
        ]),
        "the symptoms the app logged\n{text}\n--- the app's log\n{log}"
    );
    assert_eq!(scenario.users.len(), 2, "{text}");
    assert_eq!(scenario.users[0].sends.len(), 1, "{text}");
    assert_eq!(scenario.users[1].sends.len(), 3, "{text}");

    // 3. The replay: unfixed fails with exactly those symptoms, each reproduced; the fix passes.
    let args = ["run", s(&imported), "--format", "json"];
    let out = run_bounded(&args);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}\n--- the imported scenario\n{text}",
        context(&args, &out)
    );
    let got = results(&out.stdout);
    let unfixed = got.iter().find(|r| r.0 == "unfixed").unwrap();
    assert_eq!(unfixed.1, "fail");
    assert_eq!(
        unfixed.2,
        seen.iter().map(|s| s.to_string()).collect::<BTreeSet<_>>()
    );
    assert_eq!(unfixed.3, 0, "every symptom reproduced");
    let fixed = got.iter().find(|r| r.0 == "state-machine").unwrap();
    assert_eq!((fixed.1.as_str(), fixed.2.len()), ("pass", 0));

    // 4. The same scenario's clients against the app's fixed route: it holds.
    let fixed_url = app.url("/ws/fixed");
    let args = ["probe", "--url", &fixed_url, "--scenario", s(&imported)];
    let out = run_bounded(&args);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}\n--- the app's log\n{}",
        context(&args, &out),
        app.log()
    );
}
