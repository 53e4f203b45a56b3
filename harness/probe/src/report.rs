//! A probe's results for people and for CI: a table, JSON, JUnit XML.

use std::fmt::Write as _;

use quick_junit::{NonSuccessKind, Report, TestCase, TestCaseStatus, TestSuite};
use racegate_replay::Verdict;
use serde::Serialize;

use crate::probe::ProbeOutcome;

/// One line per scenario (verdict, wall time against its own time), then each violation
/// indented under it; with `trace`, every record too. Ends with a summary line.
pub fn table(url: &str, outcomes: &[ProbeOutcome], trace: bool) -> String {
    let mut out = format!("probe {url}\n");
    let width = outcomes
        .iter()
        .map(|o| o.scenario.chars().count())
        .max()
        .unwrap_or(0)
        .max("scenario".len());
    let _ = writeln!(out, "{:<width$}  verdict  took (own)", "scenario");
    for o in outcomes {
        let _ = writeln!(
            out,
            "{:<width$}  {:<7}  {:.0} ms ({} ms)",
            o.scenario,
            o.verdict.name(),
            o.elapsed_ms,
            o.own_ms
        );
        for v in &o.violations {
            let _ = writeln!(out, "    ✗ {v}");
        }
        if trace {
            for r in &o.records {
                let seen = serde_json::to_string(&r.seen).unwrap_or_default();
                let _ = writeln!(out, "    {:>9.1} ms  {}  {seen}", r.at_ms, r.user);
            }
        }
    }
    let failed = outcomes
        .iter()
        .filter(|o| o.verdict == Verdict::Fail)
        .count();
    let _ = writeln!(
        out,
        "{} scenarios, {} pass, {failed} fail: {}",
        outcomes.len(),
        outcomes.len() - failed,
        if failed == 0 {
            "probe passes"
        } else {
            "probe fails"
        }
    );
    out
}

#[derive(Serialize)]
struct Json<'a> {
    url: &'a str,
    scenarios: Vec<JsonScenario<'a>>,
    summary: Summary,
}

#[derive(Serialize)]
struct JsonScenario<'a> {
    name: &'a str,
    file: String,
    verdict: Verdict,
    violations: &'a [racegate_replay::Violation],
    elapsed_ms: f64,
    own_ms: u64,
    timeout_ms: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    records: Option<&'a [crate::Record]>,
}

#[derive(Serialize)]
struct Summary {
    scenarios: usize,
    passed: usize,
    failed: usize,
}

/// `{"url","scenarios":[{"name","file","verdict","violations":[{"invariant","user","at_ms",
/// "detail"}],"elapsed_ms","own_ms","timeout_ms"(,"records")}],"summary":{"scenarios","passed",
/// "failed"}}`.
pub fn json(
    url: &str,
    outcomes: &[ProbeOutcome],
    trace: bool,
) -> Result<String, serde_json::Error> {
    let failed = outcomes
        .iter()
        .filter(|o| o.verdict == Verdict::Fail)
        .count();
    let doc = Json {
        url,
        scenarios: outcomes
            .iter()
            .map(|o| JsonScenario {
                name: &o.scenario,
                file: o.file.display().to_string(),
                verdict: o.verdict,
                violations: &o.violations,
                elapsed_ms: (o.elapsed_ms * 10.0).round() / 10.0,
                own_ms: o.own_ms,
                timeout_ms: o.timeout_ms,
                records: trace.then_some(o.records.as_slice()),
            })
            .collect(),
        summary: Summary {
            scenarios: outcomes.len(),
            passed: outcomes.len() - failed,
            failed,
        },
    };
    let mut text = serde_json::to_string_pretty(&doc)?;
    text.push('\n');
    Ok(text)
}

/// JUnit XML: one suite `racegate probe <url>`, one test case per scenario, failing with the
/// violated invariants.
pub fn junit(url: &str, outcomes: &[ProbeOutcome]) -> Result<String, quick_junit::SerializeError> {
    let mut report = Report::new("racegate probe");
    let mut suite = TestSuite::new(format!("racegate probe {url}"));
    for o in outcomes {
        let status = if o.violations.is_empty() {
            TestCaseStatus::success()
        } else {
            let mut status = TestCaseStatus::non_success(NonSuccessKind::Failure);
            let mut names: Vec<&str> = o.violations.iter().map(|v| v.invariant.name()).collect();
            names.dedup();
            names.sort_unstable();
            names.dedup();
            status.set_message(format!("violated: {}", names.join(", ")));
            status.set_type("invariant-violated");
            let detail: Vec<String> = o.violations.iter().map(|v| v.to_string()).collect();
            status.set_description(detail.join("\n"));
            status
        };
        let mut case = TestCase::new(o.scenario.clone(), status);
        case.set_classname(o.file.display().to_string());
        case.set_time(std::time::Duration::from_secs_f64(o.elapsed_ms / 1000.0));
        suite.add_test_case(case);
    }
    report.add_test_suite(suite);
    report.to_string()
}
