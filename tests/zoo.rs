//! The zoo (examples/zoo): every scenario file's `# probe (route): ARGS -> VERDICT: invariants`
//! header lines, run once each through `probe --app`, give exactly that verdict and that set of
//! broken invariants: each reported bug's buggy route fails with its named invariants, its fixed
//! route passes, and both routes of its race-free twin pass. `probe --app` runs on a virtual
//! clock, so once is enough (docs/zoo.md counts 10 of 10 runs for each). The lines that share
//! their arguments (an app and a route) go through one `probe` with all their files, since
//! `--scenario` repeats.
//!
//! Needs the project's Python (`make py`, or RACEGATE_PYTHON).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

mod util;

const ZOO: &str = "examples/zoo/scenarios";

/// Probes running at once.
const PARALLEL: usize = 2;

/// One header line: the run it names and what it must give.
#[derive(Debug)]
struct Expected {
    file: String,
    route: String,
    verdict: String,
    invariants: BTreeSet<String>,
}

/// The zoo's scenario files, relative to the repository root, in name order.
fn scenario_files() -> Vec<String> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join(ZOO);
    let mut files: Vec<String> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|entry| entry.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .map(|p| format!("{ZOO}/{}", p.file_name().unwrap().to_str().unwrap()))
        .collect();
    files.sort();
    files
}

/// `# probe (route): ARGS -> VERDICT[: a, b]` lines of `file`, as (ARGS, expectation).
fn header_runs(file: &str) -> Vec<(Vec<String>, Expected)> {
    let text = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join(file)).unwrap();
    text.lines()
        .filter_map(|line| line.strip_prefix("# probe ("))
        .map(|rest| {
            let (route, rest) = rest
                .split_once("):")
                .unwrap_or_else(|| panic!("{file}: {rest}"));
            let (args, expect) = rest
                .split_once("->")
                .unwrap_or_else(|| panic!("{file}: no `->` in {rest:?}"));
            // The zoo's arguments are plain words; a quote would need a shell's splitting.
            assert!(!args.contains(['"', '\'']), "{file}: quoted arguments");
            let (verdict, invariants) = expect.split_once(':').unwrap_or((expect, ""));
            let expected = Expected {
                file: file.to_string(),
                route: route.trim().to_string(),
                verdict: verdict.trim().to_string(),
                invariants: invariants
                    .split(',')
                    .map(str::trim)
                    .filter(|i| !i.is_empty())
                    .map(str::to_string)
                    .collect(),
            };
            (
                args.split_whitespace().map(str::to_string).collect(),
                expected,
            )
        })
        .collect()
}

/// `racegate probe ARGS --scenario F... --format json` with the project's Python, bounded by
/// [`util::WAIT`]; the parsed report and the command's context for messages.
fn probe(args: &[String], files: &[&str]) -> (serde_json::Value, String) {
    let mut all: Vec<&str> = vec!["probe"];
    all.extend(args.iter().map(String::as_str));
    for file in files {
        all.extend(["--scenario", file]);
    }
    all.extend(["--format", "json"]);
    let child = util::command()
        .args(&all)
        .env("RACEGATE_PYTHON", util::python())
        .env_remove("RUST_LOG")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let out = util::wait_output(child);
    let context = util::context(&all, &out);
    assert!(matches!(out.status.code(), Some(0 | 1)), "{context}");
    let doc = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}\n{context}"));
    (doc, context)
}

#[test]
fn every_zoo_scenario_gives_its_headers_verdicts_and_exact_invariants_under_probe_app() {
    // ARGS -> the lines that name them, so that each app and route is one `probe`.
    let mut groups: BTreeMap<Vec<String>, Vec<Expected>> = BTreeMap::new();
    let files = scenario_files();
    for file in &files {
        let runs = header_runs(file);
        let routes: BTreeSet<&str> = runs.iter().map(|(_, e)| e.route.as_str()).collect();
        assert_eq!(
            routes,
            BTreeSet::from(["buggy", "fixed"]),
            "{file}: probe lines"
        );
        for (args, expected) in runs {
            // What the zoo claims: only a reproducing scenario's buggy route fails.
            let reproduces = !file.ends_with("-race-free.toml") && expected.route == "buggy";
            assert_eq!(
                (expected.verdict == "fail", expected.invariants.is_empty()),
                (reproduces, !reproduces),
                "{file}: {expected:?}"
            );
            groups.entry(args).or_default().push(expected);
        }
    }
    // Two probes at a time (each a Python process of its own, the machine has two cores), the
    // checks on this thread so that a failure names its file.
    let groups: Vec<(Vec<String>, Vec<Expected>)> = groups.into_iter().collect();
    let next = std::sync::atomic::AtomicUsize::new(0);
    let reports = std::sync::Mutex::new(Vec::new());
    std::thread::scope(|s| {
        for _ in 0..PARALLEL {
            s.spawn(|| {
                loop {
                    let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    let Some((args, expected)) = groups.get(i) else {
                        break;
                    };
                    let files: Vec<&str> = expected.iter().map(|e| e.file.as_str()).collect();
                    let report = probe(args, &files);
                    reports.lock().unwrap().push((report, expected));
                }
            });
        }
    });
    let mut checked = 0;
    for ((doc, context), expected) in reports.into_inner().unwrap() {
        let results = doc["scenarios"].as_array().unwrap();
        assert_eq!(results.len(), expected.len(), "{context}");
        for want in expected {
            let got = results
                .iter()
                .find(|r| r["file"] == want.file.as_str())
                .unwrap_or_else(|| panic!("no result for {}\n{context}", want.file));
            let invariants: BTreeSet<String> = got["violations"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v["invariant"].as_str().unwrap().to_string())
                .collect();
            assert_eq!(
                (got["verdict"].as_str().unwrap(), &invariants),
                (want.verdict.as_str(), &want.invariants),
                "{} ({} route)\n{context}",
                want.file,
                want.route
            );
            checked += 1;
        }
    }
    assert_eq!(checked, 2 * files.len(), "every file's two routes");
}

#[test]
fn every_zoo_bug_has_a_race_free_twin_with_the_same_runs() {
    let files: BTreeSet<PathBuf> = scenario_files().into_iter().map(PathBuf::from).collect();
    let bugs: Vec<&PathBuf> = files
        .iter()
        .filter(|f| !f.to_str().unwrap().ends_with("-race-free.toml"))
        .collect();
    assert!(bugs.len() >= 11, "the zoo's eleven bugs: {bugs:?}");
    for bug in bugs {
        let twin = PathBuf::from(bug.to_str().unwrap().replace(".toml", "-race-free.toml"));
        assert!(
            files.contains(&twin),
            "{} has no race-free twin",
            bug.display()
        );
        let args = |f: &Path| -> Vec<Vec<String>> {
            header_runs(f.to_str().unwrap())
                .into_iter()
                .map(|(a, _)| a)
                .collect()
        };
        assert_eq!(
            args(bug),
            args(&twin),
            "{}: the same apps and routes",
            bug.display()
        );
    }
    assert_eq!(
        files.len() % 2,
        0,
        "every race-free file is some bug's twin: {files:?}"
    );
}
