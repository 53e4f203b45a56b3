//! `racegate run`: replay scenarios against endpoints in virtual time, the regression gate.
//! `--transport ws` replays the same schedules over loopback WebSockets in real time.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, ValueEnum};
use racegate_replay::{EndpointKind, replay, report, scenario};

use crate::{Outcome, emit};

#[derive(Parser)]
pub(crate) struct RunArgs {
    /// Scenario files or folders of `*.toml` files. Default: `scenarios/` if it is here, else
    /// the scenarios built into racegate.
    paths: Vec<PathBuf>,
    /// Which endpoint to replay.
    #[arg(long, value_enum, default_value_t = EndpointArg::All)]
    endpoint: EndpointArg,
    /// Output format.
    #[arg(long, value_enum, default_value_t = Format::Table)]
    format: Format,
    /// Write the output here instead of standard output.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Include each run's timeline, one event per line with its virtual time.
    #[arg(long)]
    trace: bool,
    /// Also write a self-contained HTML report here: the verdict table and a timeline per run.
    #[arg(long, value_name = "FILE")]
    report: Option<PathBuf>,
    /// `fake`: in memory, virtual time. `ws`: real WebSockets on loopback, real time.
    #[arg(long, value_enum, default_value_t = Transport::Fake)]
    transport: Transport,
    /// With `--transport ws`, how many runs go at once (each on its own thread and port) among
    /// those whose outcome a timing nudge of 5 to 20 ms changes. Runs no ±20 ms nudge changes,
    /// and runs on a timing tie, all go at once first (up to 64).
    #[arg(long, default_value_t = 4, value_parser = at_least_one)]
    jobs: usize,
}

/// Where a replay's bytes go.
#[derive(Clone, Copy, ValueEnum)]
enum Transport {
    Fake,
    Ws,
}

/// An endpoint, or all of them.
#[derive(Clone, Copy, ValueEnum)]
pub(crate) enum EndpointArg {
    Unfixed,
    Partial,
    StateMachine,
    All,
}

impl EndpointArg {
    pub(crate) fn kinds(self) -> Vec<EndpointKind> {
        match self {
            EndpointArg::Unfixed => vec![EndpointKind::Unfixed],
            EndpointArg::Partial => vec![EndpointKind::Partial],
            EndpointArg::StateMachine => vec![EndpointKind::StateMachine],
            EndpointArg::All => EndpointKind::ALL.to_vec(),
        }
    }
}

#[derive(Clone, Copy, ValueEnum)]
enum Format {
    Table,
    Json,
    Junit,
    /// A Mermaid sequence diagram of one run: one scenario file and one `--endpoint`.
    Mermaid,
}

pub(crate) fn run(args: RunArgs) -> anyhow::Result<Outcome> {
    let scenarios = crate::scenarios::resolve(&args.paths)?;
    let runs = scenarios.len() * args.endpoint.kinds().len();
    if matches!(args.format, Format::Mermaid) && runs != 1 {
        anyhow::bail!(
            "--format mermaid draws one run, but this selects {runs}: pass one scenario file \
             and --endpoint unfixed, partial or state-machine"
        );
    }
    let mut outcomes = Vec::new();
    match args.transport {
        Transport::Fake => {
            for s in &scenarios {
                for kind in args.endpoint.kinds() {
                    outcomes.push(replay_logged(s, kind)?);
                }
            }
        }
        Transport::Ws => {
            let runs: Vec<_> = scenarios
                .iter()
                .flat_map(|s| args.endpoint.kinds().into_iter().map(move |k| (s, k)))
                .collect();
            for outcome in racegate_net::replay_ws_suite(&runs, args.jobs, Default::default()) {
                let outcome = outcome?;
                if outcome.expected.is_none() && gated_by_file(&scenarios, &outcome) {
                    eprintln!(
                        "note: {} [{}] sits on a timing tie (±{} ms flips its virtual-time verdict): reported, not gated, over real sockets",
                        outcome.scenario,
                        outcome.endpoint,
                        racegate_net::replay::TIE_MS
                    );
                }
                outcomes.push(outcome);
            }
        }
    }
    let text = match args.format {
        Format::Table => report::table(&outcomes, args.trace),
        Format::Json => report::json(&outcomes, args.trace),
        Format::Junit => report::junit(&outcomes).context("rendering JUnit XML")?,
        Format::Mermaid => outcomes.first().map(report::mermaid).unwrap_or_default(),
    };
    emit(args.out.as_ref(), &text)?;
    if let Some(path) = &args.report {
        std::fs::write(path, report::html(&outcomes))
            .with_context(|| format!("writing the report to {}", path.display()))?;
    }
    Ok(if report::summary(&outcomes).mismatches == 0 {
        Outcome::Pass
    } else {
        Outcome::Fail
    })
}

/// Replays one run inside a `replay` span naming it, so every log line of the run carries the
/// scenario and endpoint (`--log-format json` puts them in `labels`). The first line gives the
/// server settings no lifecycle event shows, the last ones the violations: `racegate import`
/// reads the former back.
fn replay_logged(
    s: &scenario::Scenario,
    kind: EndpointKind,
) -> anyhow::Result<racegate_replay::RunOutcome> {
    let span = tracing::info_span!("replay", scenario = %s.name, endpoint = %kind);
    let _entered = span.enter();
    let c = &s.server;
    tracing::info!(
        event = "run_start",
        at_ms = 0u64,
        accept_ms = c.accept_ms,
        auth_ms = c.auth_ms,
        services_ms = c.services_ms,
        register_ms = c.register_ms,
        heartbeat_ms = c.heartbeat_ms,
        event_gap_ms = c.event_gap_ms,
        queue_capacity = c.queue_capacity as u64,
        queue_bytes = c.queue_bytes as u64,
        settle_ms = s.settle_ms,
        users = s.users.len() as u64,
        "replaying {} against {kind}",
        s.name
    );
    let outcome = replay(s, kind)?;
    for v in &outcome.violations {
        tracing::info!(
            event = "violation",
            at_ms = v.at_ms,
            user = v.user.as_str(),
            invariant = v.invariant.name(),
            severity = "ERROR",
            "{v}"
        );
    }
    tracing::info!(
        event = "run_end",
        at_ms = outcome.simulated_ms,
        verdict = outcome.verdict.name(),
        violations = outcome.violations.len() as u64,
        "{} [{kind}]: {}",
        s.name,
        outcome.verdict
    );
    Ok(outcome)
}

/// True when the scenario's `[expect]` gates this outcome's endpoint.
fn gated_by_file(scenarios: &[scenario::Scenario], outcome: &racegate_replay::RunOutcome) -> bool {
    scenarios
        .iter()
        .find(|s| s.name == outcome.scenario)
        .is_some_and(|s| s.expect.contains_key(&outcome.endpoint))
}

/// `--jobs`: a count of at least one.
pub(crate) fn at_least_one(text: &str) -> Result<usize, String> {
    match text.parse::<usize>() {
        Ok(0) => Err("must be at least 1".into()),
        Ok(n) => Ok(n),
        Err(e) => Err(e.to_string()),
    }
}
