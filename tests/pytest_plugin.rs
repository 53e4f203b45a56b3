//! racegate's pytest plugin (`python/racegate/pytest_plugin.py`), run by the project's pytest
//! against a project whose `[tool.racegate]` names the example backend and two staging
//! scenarios: each scenario is a test item, the production route fails them with the table row
//! and the timeline, `-k` selects one, and the fixed route passes. (The plugin as installed from
//! the wheel, in a fresh virtual environment, is `make wheel`'s: tests/wheel.sh.)
//!
//! Needs the project's Python with pytest (`make py`, or RACEGATE_PYTHON).

use std::path::Path;
use std::process::{Command, Output};

use util::python;

mod util;

const STAGING: [&str; 2] = [
    "staging-user-101463487227881885914.toml",
    "staging-e2e-staging_pipeline.toml",
];

/// A project in a temporary folder: its pyproject names the example app (from this checkout)
/// and its own copies of the staging scenarios.
fn project() -> tempfile::TempDir {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("scenarios")).unwrap();
    for name in STAGING {
        std::fs::copy(
            root.join("scenarios").join(name),
            dir.path().join("scenarios").join(name),
        )
        .unwrap();
    }
    std::fs::write(
        dir.path().join("pyproject.toml"),
        format!(
            "[tool.racegate]\napp = \"examples.chat_backend.app:app\"\napp_dir = \"{}\"\n\
             path = \"/ws\"\nscenarios = [\"scenarios\"]\n",
            root.display()
        ),
    )
    .unwrap();
    dir
}

fn pytest(dir: &Path, args: &[&str]) -> Output {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    Command::new(python())
        .args([
            "-m",
            "pytest",
            "-p",
            "racegate.pytest_plugin",
            "-p",
            "no:cacheprovider",
        ])
        .args(args)
        .current_dir(dir)
        .env("PYTHONPATH", root.join("python"))
        .env("RACEGATE_BIN", env!("CARGO_BIN_EXE_racegate"))
        .env("RACEGATE_PYTHON", python())
        .output()
        .unwrap()
}

fn text(out: &Output) -> String {
    format!(
        "exit {:?}\n--- stdout\n{}--- stderr\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[test]
fn pytest_runs_the_configured_scenarios_as_items_and_fails_the_production_route_with_its_timeline()
{
    let dir = project();
    let junit = dir.path().join("junit.xml");
    let out = pytest(dir.path(), &[&format!("--junitxml={}", junit.display())]);
    let shown = text(&out);
    assert_eq!(out.status.code(), Some(1), "{shown}");
    assert!(shown.contains("2 failed"), "{shown}");
    assert!(
        shown.contains("✗ accept-first user=101463487227881885914 at 0 ms"),
        "{shown}"
    );
    assert!(
        shown.contains("client send 101463487227881885914/m1"),
        "{shown}"
    );
    let xml = std::fs::read_to_string(&junit).unwrap();
    assert!(
        xml.contains("name=\"staging-e2e-staging_pipeline\""),
        "{xml}"
    );
}

#[test]
fn pytest_k_selects_a_scenario_and_the_fixed_route_passes() {
    let dir = project();
    let out = pytest(
        dir.path(),
        &[
            "-k",
            "staging-user",
            "--racegate-arg=--path",
            "--racegate-arg=/ws/fixed",
        ],
    );
    let shown = text(&out);
    assert_eq!(out.status.code(), Some(0), "{shown}");
    assert!(shown.contains("1 passed, 1 deselected"), "{shown}");
}
