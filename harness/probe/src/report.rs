//! A probe's results for people and for CI: a table, JSON, JUnit XML.

use std::fmt::Write as _;

use quick_junit::{NonSuccessKind, Report, TestCase, TestCaseStatus, TestSuite};
use serde::Serialize;

use racegate_replay::scenario::Protocol;

use crate::probe::{Clock, ProbeOutcome, ProbeVerdict};

/// One line per scenario (verdict, wall time against its own time), then each violation
/// indented under it; with `trace`, every record too. Ends with a summary line.
pub fn table(
    url: &str,
    outcomes: &[ProbeOutcome],
    trace: bool,
    allow_inconclusive: bool,
) -> String {
    let mut out = format!("probe {url}\n");
    let width = outcomes
        .iter()
        .map(|o| o.scenario.chars().count())
        .max()
        .unwrap_or(0)
        .max("scenario".len());
    let verdict_width = outcomes
        .iter()
        .map(|o| o.verdict.name().len())
        .max()
        .unwrap_or(0)
        .max("verdict".len());
    let _ = writeln!(
        out,
        "{:<width$}  {:<verdict_width$}  took (own)",
        "scenario", "verdict"
    );
    for o in outcomes {
        out.push_str(&scenario_text(o, width, verdict_width, trace));
    }
    let _ = writeln!(out, "{}", Summary::of(outcomes).line(allow_inconclusive));
    out
}

/// One scenario's part of the table: its row (verdict, time against its own time), then each
/// violation, indeterminate chat and push count indented under it, and with `trace` every
/// record.
pub fn scenario_text(o: &ProbeOutcome, width: usize, verdict_width: usize, trace: bool) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<width$}  {:<verdict_width$}  {:.0} ms ({} ms)",
        o.scenario,
        o.verdict.name(),
        o.elapsed_ms,
        o.own_ms
    );
    if let Some(why) = &o.inconclusive {
        let _ = writeln!(out, "    ? inconclusive: {why}");
    }
    for v in &o.violations {
        let _ = writeln!(out, "    ✗ {v}");
    }
    for i in &o.indeterminate {
        let _ = writeln!(
            out,
            "    ~ indeterminate user={} {} at {} ms: {}",
            i.user, i.id, i.at_ms, i.reason
        );
    }
    if o.pushes > 0 {
        let _ = writeln!(
            out,
            "    · {} push{} received, each checked for its user",
            o.pushes,
            if o.pushes == 1 { "" } else { "es" }
        );
    }
    if trace {
        out.push_str(&timeline(o));
    }
    out
}

/// One record per line, in the shape `run --trace` prints a replay's timeline: the time, the
/// user, and what the client saw in words.
/// A frame that matched no chat is marked on its line, with why.
pub fn timeline(o: &ProbeOutcome) -> String {
    let mut out = String::new();
    for (r, what) in o.records.iter().zip(timeline_lines(o)) {
        let _ = writeln!(out, "{:>9.1} ms  {:<24} {what}", r.at_ms, r.user);
    }
    out
}

/// Each record in words, as the timeline prints it (a frame that matched no chat says so).
fn timeline_lines(o: &ProbeOutcome) -> Vec<String> {
    use crate::Seen;
    let marks = crate::check::unmatched_marks(&o.records, &o.unmatched);
    o.records
        .iter()
        .zip(marks)
        .map(|(r, unmatched)| {
            let what = match &r.seen {
                Seen::Connect => "client connect".to_string(),
                Seen::Open => "client open".to_string(),
                Seen::Refused { status, close_code } => match close_code {
                    Some(code) => format!("upgrade refused: HTTP {status}, close code {code}"),
                    None => format!("upgrade refused: HTTP {status}"),
                },
                Seen::Send { id } => format!("client send {id}"),
                Seen::Unsent { id, reason } => format!("client unsent {id}: {reason}"),
                Seen::Recv { text } => format!("client recv {text}"),
                Seen::RecvBinary { bytes } => format!("client recv binary ({bytes} bytes)"),
                Seen::ServerClose { code, reason } if reason.is_empty() => {
                    format!("client sees close {code}")
                }
                Seen::ServerClose { code, reason } => {
                    format!("client sees close {code} ({reason})")
                }
                Seen::Dropped { error } => format!("connection dropped: {error}"),
                Seen::ClientClose => "client close".to_string(),
                Seen::ClientDrop => "client drop: no close frame".to_string(),
                Seen::CloseAnswered { code: Some(code) } => format!("close answered {code}"),
                Seen::CloseAnswered { code: None } => "close answered".to_string(),
                Seen::Timeout { waiting_for } => format!("timeout waiting for {waiting_for}"),
                Seen::AppMisuse { op, error } => format!("app {op}: {error}"),
                Seen::AppRaised { error } => format!("app raised {error}"),
                Seen::AppHandlerPending { name } => format!("app handler {name} still running"),
                Seen::AppTaskPending { name } => format!("app task {name} still pending"),
            };
            let mark = unmatched.map_or(String::new(), |u| {
                format!("  <- matches no chat: {}", u.reason)
            });
            format!("{what}{mark}")
        })
        .collect()
}

#[derive(Serialize)]
struct Json<'a> {
    /// The live server (`--url`).
    #[serde(skip_serializing_if = "Option::is_none")]
    url: Option<&'a str>,
    /// The app run in-process (`--app`), as `app MODULE:ATTR PATH`.
    #[serde(skip_serializing_if = "Option::is_none")]
    app: Option<&'a str>,
    /// `real` (`--url`: times are wall-clock) or `virtual` (`--app`: the same scenario gives the
    /// same document, byte for byte).
    clock: Clock,
    scenarios: Vec<JsonScenario<'a>>,
    summary: Summary,
}

#[derive(Serialize)]
struct JsonScenario<'a> {
    name: &'a str,
    file: String,
    verdict: ProbeVerdict,
    #[serde(skip_serializing_if = "Option::is_none")]
    inconclusive: Option<&'a str>,
    violations: &'a [racegate_replay::Violation],
    indeterminate: &'a [racegate_replay::Indeterminate],
    unmatched: &'a [racegate_replay::Unmatched],
    pushes: usize,
    elapsed_ms: f64,
    own_ms: u64,
    timeout_ms: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    records: Option<&'a [crate::Record]>,
    /// The scenario's part of the table, as a person reads it (with `--trace`, its timeline):
    /// what a test runner shows for a failure.
    text: String,
}

/// Counts over a probe: `passed + failed + inconclusive == scenarios`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Summary {
    /// Scenarios probed.
    pub scenarios: usize,
    /// Exercised with no violation.
    pub passed: usize,
    /// With a violation.
    pub failed: usize,
    /// That exercised nothing.
    pub inconclusive: usize,
    /// Push frames received, over every scenario.
    pub pushes: usize,
    /// Acks and events that matched no chat, over every scenario.
    pub unmatched: usize,
}

impl Summary {
    /// Counts `outcomes`.
    pub fn of(outcomes: &[ProbeOutcome]) -> Summary {
        let count = |v| outcomes.iter().filter(|o| o.verdict == v).count();
        Summary {
            scenarios: outcomes.len(),
            passed: count(ProbeVerdict::Pass),
            failed: count(ProbeVerdict::Fail),
            inconclusive: count(ProbeVerdict::Inconclusive),
            pushes: outcomes.iter().map(|o| o.pushes).sum(),
            unmatched: outcomes.iter().map(|o| o.unmatched.len()).sum(),
        }
    }

    /// True when the probe passes the gate: nothing failed, and nothing was inconclusive
    /// unless that is allowed.
    pub fn passes(&self, allow_inconclusive: bool) -> bool {
        self.failed == 0 && (allow_inconclusive || self.inconclusive == 0)
    }

    /// The closing line, e.g. `3 scenarios, 2 pass, 0 fail, 1 inconclusive: probe fails`.
    pub fn line(&self, allow_inconclusive: bool) -> String {
        let inconclusive = match self.inconclusive {
            0 => String::new(),
            n => format!(", {n} inconclusive"),
        };
        format!(
            "{} {}, {} pass, {} fail{inconclusive}: {}",
            self.scenarios,
            if self.scenarios == 1 {
                "scenario"
            } else {
                "scenarios"
            },
            self.passed,
            self.failed,
            if self.passes(allow_inconclusive) {
                "probe passes"
            } else {
                "probe fails"
            }
        )
    }
}

/// `{"url" (or "app"),"clock","scenarios":[{"name","file","verdict","violations":[{"invariant","user","at_ms",
/// "detail"}],"indeterminate":[{"user","id","at_ms","reason"}],"unmatched":[{"user","at_ms",
/// "frame","id","reason"}],"pushes","elapsed_ms","own_ms","timeout_ms"(,"records")}],
/// "summary":{"scenarios","passed","failed","inconclusive","pushes","unmatched"}}`.
pub fn json(
    url: &str,
    outcomes: &[ProbeOutcome],
    trace: bool,
) -> Result<String, serde_json::Error> {
    let clock = outcomes.first().map_or(Clock::Real, |o| o.clock);
    let doc = Json {
        url: (clock == Clock::Real).then_some(url),
        app: (clock == Clock::Virtual).then_some(url),
        clock,
        scenarios: outcomes
            .iter()
            .map(|o| JsonScenario {
                name: &o.scenario,
                file: o.file.display().to_string(),
                verdict: o.verdict,
                inconclusive: o.inconclusive.as_deref(),
                violations: &o.violations,
                indeterminate: &o.indeterminate,
                unmatched: &o.unmatched,
                pushes: o.pushes,
                elapsed_ms: (o.elapsed_ms * 10.0).round() / 10.0,
                own_ms: o.own_ms,
                timeout_ms: o.timeout_ms,
                records: trace.then_some(o.records.as_slice()),
                text: scenario_text(o, o.scenario.chars().count(), o.verdict.name().len(), trace),
            })
            .collect(),
        summary: Summary::of(outcomes),
    };
    let mut text = serde_json::to_string_pretty(&doc)?;
    text.push('\n');
    Ok(text)
}

/// JUnit XML: one suite `racegate probe <url>`, one test case per scenario, failing with the
/// violated invariants.
pub fn junit(
    url: &str,
    outcomes: &[ProbeOutcome],
    allow_inconclusive: bool,
) -> Result<String, quick_junit::SerializeError> {
    let mut report = Report::new("racegate probe");
    let mut suite = TestSuite::new(format!("racegate probe {url}"));
    for o in outcomes {
        let status = if let Some(why) = &o.inconclusive {
            let mut status = if allow_inconclusive {
                TestCaseStatus::skipped()
            } else {
                TestCaseStatus::non_success(NonSuccessKind::Failure)
            };
            status.set_message(format!("inconclusive: {why}"));
            status.set_type("inconclusive");
            status
        } else if o.violations.is_empty() {
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
        // Neither a pass nor a failure: said, so nobody reads it as either.
        let mut lines: Vec<String> = o
            .indeterminate
            .iter()
            .map(|i| {
                format!(
                    "indeterminate user={} {} at {} ms: {}",
                    i.user, i.id, i.at_ms, i.reason
                )
            })
            .collect();
        if o.pushes > 0 {
            lines.push(format!("pushes received: {}", o.pushes));
        }
        if !lines.is_empty() {
            case.set_system_out(lines.join("\n"));
        }
        suite.add_test_case(case);
    }
    report.add_test_suite(suite);
    report.to_string()
}

/// The HTML report (`--report FILE`): the same timelines `run --report` draws, of what each
/// client of the probed server sent and saw, and what the app's side showed (`--app`).
pub fn html(name: &str, outcomes: &[ProbeOutcome], protocols: &[&Protocol]) -> String {
    use racegate_replay::history::{Got, parse_frame};
    use racegate_replay::report::{ClientAct, ClientMark, ClientRun, client_report};

    use crate::Seen;
    let default = Protocol::default();
    let runs: Vec<ClientRun> = outcomes
        .iter()
        .enumerate()
        .map(|(i, o)| {
            let protocol = protocols.get(i).copied().unwrap_or(&default);
            let lines = timeline_lines(o);
            let marks = o
                .records
                .iter()
                .zip(lines)
                .map(|(r, line)| {
                    let act = match &r.seen {
                        Seen::Connect => ClientAct::Connect,
                        Seen::Open => ClientAct::Open,
                        Seen::Refused { status, .. } => ClientAct::Refused(*status),
                        Seen::Send { id } => ClientAct::Send(id.clone()),
                        Seen::Unsent { id, .. } => ClientAct::Unsent(id.clone()),
                        Seen::Recv { text } => match parse_frame(protocol, text) {
                            Got::Ack { id, .. } => ClientAct::Ack(id.into_owned()),
                            Got::Event { .. } => ClientAct::Event,
                            Got::Push { .. } => ClientAct::Push,
                            Got::Error { .. } => ClientAct::Error,
                            Got::Text(_) | Got::Other => ClientAct::Other,
                        },
                        Seen::RecvBinary { .. } => ClientAct::Other,
                        Seen::ServerClose { code, .. } => ClientAct::ServerClose(*code),
                        Seen::Dropped { .. } => ClientAct::Dropped,
                        Seen::ClientClose | Seen::ClientDrop => ClientAct::ClientClose,
                        Seen::CloseAnswered { .. } => ClientAct::CloseAnswered,
                        Seen::Timeout { .. } => ClientAct::GaveUp,
                        Seen::AppMisuse { .. } => ClientAct::AppMisuse,
                        Seen::AppRaised { .. } => ClientAct::AppRaised,
                        Seen::AppHandlerPending { .. } | Seen::AppTaskPending { .. } => {
                            ClientAct::AppPending
                        }
                    };
                    ClientMark {
                        at_ms: r.at_ms.max(0.0) as u64,
                        user: r.user.clone(),
                        act,
                        line,
                    }
                })
                .collect();
            ClientRun {
                scenario: o.scenario.clone(),
                file: o.file.display().to_string(),
                verdict: o.verdict.name().to_string(),
                inconclusive: o.inconclusive.clone(),
                violations: o.violations.clone(),
                marks,
                took: match o.clock {
                    Clock::Virtual => format!("{:.0} ms virtual", o.elapsed_ms),
                    Clock::Real => format!("{:.0} ms", o.elapsed_ms),
                },
            }
        })
        .collect();
    client_report(&format!("probe {name}"), &runs)
}
