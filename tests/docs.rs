//! The counts the README and docs state are the code's: scenarios, runs, endpoints, invariants.
//! A figure that drifts from the code is a lie in the front page; this makes it a failing test.

use std::path::Path;

use racegate_replay::{EndpointKind, Invariant, scenario};

fn read(path: &str) -> String {
    let full = Path::new(env!("CARGO_MANIFEST_DIR")).join(path);
    std::fs::read_to_string(&full).unwrap_or_else(|e| panic!("{}: {e}", full.display()))
}

/// The rows of the Markdown table that follows `heading` (the lines starting with `` | ` ``).
fn table_rows<'a>(text: &'a str, heading: &str) -> Vec<&'a str> {
    let start = text
        .find(heading)
        .unwrap_or_else(|| panic!("no {heading:?}"));
    text[start..]
        .lines()
        .skip_while(|l| !l.starts_with('|'))
        .take_while(|l| l.starts_with('|'))
        .filter(|l| l.starts_with("| `"))
        .collect()
}

#[test]
fn the_readme_states_the_bundled_suites_true_size() {
    let scenarios = scenario::load_all(&[Path::new(env!("CARGO_MANIFEST_DIR")).join("scenarios")])
        .unwrap()
        .len();
    let endpoints = EndpointKind::ALL.len();
    let readme = read("README.md");
    let runs = scenarios * endpoints;
    assert!(
        readme.contains(&format!("{scenarios} scenarios × {endpoints}\nendpoints"))
            || readme.contains(&format!("{scenarios} scenarios × {endpoints} endpoints")),
        "README must state the suite as {scenarios} scenarios × {endpoints} endpoints"
    );
    assert!(
        readme.contains(&format!("{scenarios} scenarios, {runs} runs")),
        "README's sample summary must read {scenarios} scenarios, {runs} runs"
    );
    let report = read("docs/report.md");
    assert!(
        report.contains(&format!("({scenarios} scenarios, {runs} runs)")),
        "docs/report.md must measure the report of {scenarios} scenarios, {runs} runs"
    );
}

#[test]
fn the_readme_lists_every_endpoint_and_every_invariant_once() {
    let readme = read("README.md");
    let endpoints = table_rows(&readme, "### The endpoints");
    assert_eq!(endpoints.len(), EndpointKind::ALL.len(), "{endpoints:#?}");
    for k in EndpointKind::ALL {
        assert!(
            endpoints
                .iter()
                .any(|r| r.starts_with(&format!("| `{k}` |"))),
            "README's endpoint table lacks {k}"
        );
    }
    let invariants = table_rows(&readme, "### The invariants");
    assert_eq!(invariants.len(), Invariant::ALL.len(), "{invariants:#?}");
    for i in Invariant::ALL {
        assert!(
            invariants
                .iter()
                .any(|r| r.starts_with(&format!("| `{i}` |"))),
            "README's invariant table lacks {i}"
        );
    }
}

#[test]
fn docs_invariants_has_one_section_per_invariant() {
    let doc = read("docs/invariants.md");
    for i in Invariant::ALL {
        let heading = format!("## `{i}`");
        assert_eq!(
            doc.lines().filter(|l| l.starts_with(&heading)).count(),
            1,
            "docs/invariants.md needs exactly one section {heading}"
        );
    }
}

#[test]
fn the_readme_stays_a_front_page() {
    let lines = read("README.md").lines().count();
    assert!(
        lines <= 250,
        "README.md has {lines} lines; move detail to docs/"
    );
}

#[test]
fn every_doc_the_readme_links_exists() {
    let readme = read("README.md");
    for part in readme.split("](docs/").skip(1) {
        let target = part.split(')').next().unwrap();
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("docs")
            .join(target);
        assert!(
            path.is_file(),
            "README links docs/{target}, which is missing"
        );
    }
}
