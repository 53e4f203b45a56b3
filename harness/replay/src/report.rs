//! The gate's outputs: a table for people, JSON for tools, JUnit XML for CI, and for seeing a
//! race, an HTML report with a timeline per run ([`html`]) and a Mermaid sequence diagram of one
//! run ([`mermaid`]).
//!
//! All of them render the same [`RunOutcome`]s, grouped by scenario in run order, and agree on
//! the one number that matters: mismatches between a gated verdict and its expectation.

mod html;
mod mermaid;

use std::fmt::Write as _;

use indexmap::IndexMap;
use serde::Serialize;

use crate::checker::Indeterminate;
use crate::endpoint::EndpointKind;
use crate::invariant::Violation;
use crate::runner::{ProductionCheck, RunOutcome};
use crate::scenario::{InvariantMatch, Verdict};
use crate::trace::TraceEvent;

pub use html::client::{ClientAct, ClientMark, ClientRun, client_report};
pub use html::html;
pub use mermaid::mermaid;

/// Counts over a whole run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Summary {
    /// Scenarios replayed.
    pub scenarios: usize,
    /// Scenario × endpoint runs.
    pub runs: usize,
    /// Gated runs whose verdict (or named invariants) differ from `[expect]`.
    pub mismatches: usize,
    /// Runs `[expect]` gates; the others were replayed and judged but checked against nothing.
    pub gated: usize,
}

impl Summary {
    /// The closing line of the table. It says "gate passes" only when something was gated and
    /// nothing mismatched.
    pub fn line(&self) -> String {
        let plural =
            |n: usize, one: &str, many: &str| format!("{n} {}", if n == 1 { one } else { many });
        let head = format!(
            "{}, {}",
            plural(self.scenarios, "scenario", "scenarios"),
            plural(self.runs, "run", "runs")
        );
        if self.gated == 0 {
            return format!(
                "{head}, 0 of {} gated: nothing was checked against an expectation",
                self.runs
            );
        }
        let ungated = match self.runs - self.gated {
            0 => String::new(),
            n => format!(" ({n} not gated)"),
        };
        format!(
            "{head}{ungated}, {}: {}",
            plural(self.mismatches, "mismatch", "mismatches"),
            if self.mismatches == 0 {
                "gate passes"
            } else {
                "gate FAILS"
            }
        )
    }
}

/// Counts `outcomes`.
pub fn summary(outcomes: &[RunOutcome]) -> Summary {
    let mut names: Vec<&str> = outcomes.iter().map(|o| o.scenario.as_str()).collect();
    names.dedup();
    Summary {
        scenarios: names.len(),
        runs: outcomes.len(),
        mismatches: outcomes.iter().filter(|o| !o.matches_expectation()).count(),
        gated: outcomes.iter().filter(|o| o.gated()).count(),
    }
}

fn by_scenario(outcomes: &[RunOutcome]) -> IndexMap<&str, Vec<&RunOutcome>> {
    let mut grouped: IndexMap<&str, Vec<&RunOutcome>> = IndexMap::new();
    for o in outcomes {
        grouped.entry(o.scenario.as_str()).or_default().push(o);
    }
    grouped
}

fn short(user: &str) -> String {
    const MAX: usize = 16;
    if user.chars().count() <= MAX {
        user.to_string()
    } else {
        let head: String = user.chars().take(MAX - 1).collect();
        format!("{head}…")
    }
}

fn cell(o: &RunOutcome) -> String {
    let mark = match (o.gated(), o.matches_expectation()) {
        (false, _) => " ",
        (true, true) => "✓",
        (true, false) => "✗",
    };
    let first = match o.violations.first() {
        Some(v) => format!(" {} {}@{}ms", v.invariant, short(&v.user), v.at_ms),
        None => String::new(),
    };
    let ungated = if o.gated() { "" } else { " (not gated)" };
    format!("{mark} {}{first}{ungated}", o.verdict)
}

/// The human table: a row per scenario, a column per endpoint (✓ matches `[expect]`, ✗ differs,
/// blank not gated), the first violation with its user and time, then a summary line. With
/// `with_trace`, each run's timeline follows.
pub fn table(outcomes: &[RunOutcome], with_trace: bool) -> String {
    let grouped = by_scenario(outcomes);
    let endpoints: Vec<EndpointKind> = EndpointKind::ALL
        .into_iter()
        .filter(|k| outcomes.iter().any(|o| o.endpoint == *k))
        .collect();
    let mut rows: Vec<Vec<String>> = vec![
        std::iter::once("scenario".to_string())
            .chain(endpoints.iter().map(|k| k.to_string()))
            .collect(),
    ];
    for (name, runs) in &grouped {
        let mut row = vec![name.to_string()];
        for k in &endpoints {
            row.push(
                runs.iter()
                    .find(|o| o.endpoint == *k)
                    .map_or_else(|| "-".to_string(), |o| cell(o)),
            );
        }
        rows.push(row);
    }
    let widths: Vec<usize> = (0..rows[0].len())
        .map(|i| rows.iter().map(|r| r[i].chars().count()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for row in &rows {
        let mut line = String::new();
        for (i, c) in row.iter().enumerate() {
            let pad = widths[i] - c.chars().count();
            line.push_str(c);
            if i + 1 < row.len() {
                line.push_str(&" ".repeat(pad + 2));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    let held: Vec<&RunOutcome> = outcomes
        .iter()
        .filter(|o| !o.production.is_empty())
        .collect();
    if !held.is_empty() {
        out.push_str("\nproduction symptoms, replayed:\n");
        for o in held {
            let _ = writeln!(out, "  {} [{}]:", o.scenario, o.endpoint);
            for check in &o.production {
                let _ = writeln!(out, "    {check}");
            }
        }
    }
    let mismatched: Vec<&RunOutcome> = outcomes
        .iter()
        .filter(|o| !o.matches_expectation())
        .collect();
    if !mismatched.is_empty() {
        out.push_str("\nmismatches:\n");
        for o in &mismatched {
            let why = o.mismatch().unwrap_or_default();
            let _ = writeln!(out, "  {} [{}]: {why}", o.scenario, o.endpoint);
            for v in &o.violations {
                let _ = writeln!(out, "    {v}");
            }
        }
    }
    let _ = writeln!(out, "\n{}", summary(outcomes).line());
    if with_trace {
        for o in outcomes {
            let _ = writeln!(out, "\n== {} [{}]: {}", o.scenario, o.endpoint, o.verdict);
            out.push_str(&timeline(&o.trace));
            for v in &o.violations {
                let _ = writeln!(out, "  ! {v}");
            }
            for i in &o.indeterminate {
                let _ = writeln!(
                    out,
                    "  ~ indeterminate user={} {} at {} ms: {}",
                    i.user, i.id, i.at_ms, i.reason
                );
            }
        }
    }
    out
}

/// One event per line with its virtual time.
pub fn timeline(trace: &[TraceEvent]) -> String {
    let mut out = String::new();
    for e in trace {
        let _ = writeln!(out, "{e}");
    }
    out
}

#[derive(Serialize)]
struct JsonReport<'a> {
    scenarios: Vec<JsonScenario<'a>>,
    summary: Summary,
}

#[derive(Serialize)]
struct JsonScenario<'a> {
    name: &'a str,
    file: String,
    results: Vec<JsonResult<'a>>,
}

#[derive(Serialize)]
struct JsonResult<'a> {
    endpoint: EndpointKind,
    verdict: Verdict,
    expected: Option<Verdict>,
    #[serde(skip_serializing_if = "Option::is_none")]
    expected_invariants: Option<&'a InvariantMatch>,
    gated: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    mismatch: Option<String>,
    violations: &'a [Violation],
    /// Chats whose fate the run cannot tell: neither a pass nor a loss.
    indeterminate: &'a [Indeterminate],
    /// Kept for scripts that read it; for a real-time run it is the wall clock's time, which
    /// `clock` and `elapsed_ms` say.
    simulated_ms: u64,
    /// `virtual` or `real`.
    clock: &'static str,
    /// A real-time run's wall-clock milliseconds.
    #[serde(skip_serializing_if = "Option::is_none")]
    elapsed_ms: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    trace: Option<&'a [TraceEvent]>,
    /// The scenario's `[[production]]` symptoms and whether this run reproduced each (the
    /// production endpoint's run only).
    #[serde(skip_serializing_if = "<[_]>::is_empty")]
    production: &'a [ProductionCheck],
}

/// The JSON document: `{"scenarios":[{"name","file","results":[…]}],"summary":{…}}`.
pub fn json(outcomes: &[RunOutcome], with_trace: bool) -> String {
    let report = JsonReport {
        scenarios: by_scenario(outcomes)
            .into_iter()
            .map(|(name, runs)| JsonScenario {
                name,
                file: runs[0].file.display().to_string(),
                results: runs
                    .iter()
                    .map(|o| JsonResult {
                        endpoint: o.endpoint,
                        verdict: o.verdict,
                        expected: o.expected,
                        expected_invariants: o.expected_invariants.as_ref(),
                        gated: o.gated(),
                        mismatch: o.mismatch(),
                        violations: &o.violations,
                        indeterminate: &o.indeterminate,
                        simulated_ms: o.simulated_ms,
                        clock: if o.real_time { "real" } else { "virtual" },
                        elapsed_ms: o.real_time.then_some(o.simulated_ms),
                        trace: with_trace.then_some(o.trace.as_slice()),
                        production: &o.production,
                    })
                    .collect(),
            })
            .collect(),
        summary: summary(outcomes),
    };
    // Serialising plain data with string keys cannot fail.
    let mut text = serde_json::to_string_pretty(&report).unwrap_or_default();
    text.push('\n');
    text
}

/// JUnit XML: one test case per scenario × endpoint, failing where the verdict differs from
/// `[expect]`.
pub fn junit(outcomes: &[RunOutcome]) -> Result<String, quick_junit::SerializeError> {
    use quick_junit::{NonSuccessKind, Report, TestCase, TestCaseStatus, TestSuite};
    let mut report = Report::new("racegate");
    for (name, runs) in by_scenario(outcomes) {
        let mut suite = TestSuite::new(name);
        for o in runs {
            let status = if !o.gated() {
                // Replayed and judged, but checked against nothing: not a pass.
                let mut status = TestCaseStatus::skipped();
                status.set_message(format!(
                    "not gated: [expect] names no verdict for {}; the run got {}",
                    o.endpoint, o.verdict
                ));
                status
            } else if let Some(why) = o.mismatch() {
                let mut status = TestCaseStatus::non_success(NonSuccessKind::Failure);
                status.set_message(why);
                status.set_type("verdict-mismatch");
                let detail: Vec<String> = o.violations.iter().map(|v| v.to_string()).collect();
                status.set_description(detail.join("\n"));
                status
            } else {
                TestCaseStatus::success()
            };
            let mut case = TestCase::new(format!("{name} [{}]", o.endpoint), status);
            case.set_classname(o.file.display().to_string());
            if !o.violations.is_empty() || !o.indeterminate.is_empty() || !o.production.is_empty() {
                let mut detail: Vec<String> = o.production.iter().map(|c| c.to_string()).collect();
                detail.extend(o.violations.iter().map(|v| v.to_string()));
                detail.extend(o.indeterminate.iter().map(|i| {
                    format!(
                        "indeterminate user={} {} at {} ms: {}",
                        i.user, i.id, i.at_ms, i.reason
                    )
                }));
                case.set_system_out(detail.join("\n"));
            }
            suite.add_test_case(case);
        }
        report.add_test_suite(suite);
    }
    report.to_string()
}
