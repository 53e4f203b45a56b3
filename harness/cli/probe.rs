//! `racegate probe`: replay scenarios' clients against a live WebSocket server and check what a
//! client can observe. Exit 0 every scenario holds, 1 an invariant is violated, 2 bad input or a
//! server that cannot be reached.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, ValueEnum};
use racegate_probe::{Options, Target, probe_all, report};
use racegate_replay::{Verdict, scenario};

use crate::{Outcome, emit};

#[derive(Parser)]
pub(crate) struct ProbeArgs {
    /// The server: ws://HOST:PORT/PATH. Each user's id is added as `?token=<id>` unless the
    /// scenario's `[protocol]` says otherwise.
    #[arg(long)]
    url: String,
    /// Scenario files or folders of `*.toml` files (repeatable).
    #[arg(long = "scenario", value_name = "FILE|DIR", num_args = 1.., default_value = "scenarios")]
    scenarios: Vec<PathBuf>,
    /// Output format.
    #[arg(long, value_enum, default_value_t = Format::Table)]
    format: Format,
    /// Budget per scenario, from its first connect; connections still waiting then are `stuck`.
    /// Default: the scenario's own time plus 2000 ms.
    #[arg(long, value_name = "MS")]
    timeout_ms: Option<u64>,
    /// Include what every client saw (table and JSON).
    #[arg(long)]
    trace: bool,
    /// Write the output here instead of standard output.
    #[arg(long)]
    out: Option<PathBuf>,
}

#[derive(Clone, Copy, ValueEnum)]
enum Format {
    Table,
    Json,
    Junit,
}

pub(crate) fn probe(args: ProbeArgs) -> anyhow::Result<Outcome> {
    let target = Target::parse(&args.url)?;
    let scenarios = scenario::load_all(&args.scenarios)?;
    if scenarios.is_empty() {
        let shown: Vec<String> = args
            .scenarios
            .iter()
            .map(|p| p.display().to_string())
            .collect();
        anyhow::bail!("no scenario files (*.toml) found in {}", shown.join(", "));
    }
    if args.timeout_ms == Some(0) {
        anyhow::bail!("--timeout-ms must be at least 1");
    }
    let options = Options {
        timeout_ms: args.timeout_ms,
    };
    for s in &scenarios {
        let pushes: usize = s.users.iter().map(|u| u.pushes.len()).sum();
        if pushes > 0 {
            eprintln!(
                "note: {}: {pushes} push(es) ignored (pushes are server-side; probe drives clients)",
                s.name
            );
        }
        let own = racegate_probe::probe::own_ms(s);
        if options.timeout_for(s) <= own {
            eprintln!(
                "warning: {}: --timeout-ms {} is not longer than the scenario's own {own} ms; its \
                 connections will be reported stuck",
                s.name,
                options.timeout_for(s)
            );
        }
    }
    let outcomes = probe_all(&target, &scenarios, &options)?;
    let text = match args.format {
        Format::Table => report::table(target.url(), &outcomes, args.trace),
        Format::Json => report::json(target.url(), &outcomes, args.trace)?,
        Format::Junit => report::junit(target.url(), &outcomes).context("writing JUnit XML")?,
    };
    emit(args.out.as_ref(), &text)?;
    Ok(if outcomes.iter().all(|o| o.verdict == Verdict::Pass) {
        Outcome::Pass
    } else {
        Outcome::Fail
    })
}
