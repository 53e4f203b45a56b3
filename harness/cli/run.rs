//! `racegate run`: replay scenarios against endpoints in virtual time, the regression gate.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, ValueEnum};
use racegate_replay::{EndpointKind, replay, report, scenario};

use crate::{Outcome, emit};

#[derive(Parser)]
pub(crate) struct RunArgs {
    /// Scenario files or folders of `*.toml` files.
    #[arg(default_value = "scenarios")]
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
}

pub(crate) fn run(args: RunArgs) -> anyhow::Result<Outcome> {
    let scenarios = scenario::load_all(&args.paths)?;
    if scenarios.is_empty() {
        let shown: Vec<String> = args.paths.iter().map(|p| p.display().to_string()).collect();
        anyhow::bail!("no scenario files (*.toml) found in {}", shown.join(", "));
    }
    let mut outcomes = Vec::new();
    for s in &scenarios {
        for kind in args.endpoint.kinds() {
            outcomes.push(replay(s, kind)?);
        }
    }
    let text = match args.format {
        Format::Table => report::table(&outcomes, args.trace),
        Format::Json => report::json(&outcomes, args.trace),
        Format::Junit => report::junit(&outcomes).context("rendering JUnit XML")?,
    };
    emit(args.out.as_ref(), &text)?;
    Ok(if report::summary(&outcomes).mismatches == 0 {
        Outcome::Pass
    } else {
        Outcome::Fail
    })
}
