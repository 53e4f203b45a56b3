//! `racegate import`: JSON log lines (Cloud Logging export shape) into a scenario file.

use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;
use racegate_replay::EndpointKind;
use racegate_replay::import::{self, Options};
use racegate_replay::scenario;

use crate::{Outcome, emit};

#[derive(Parser)]
pub(crate) struct ImportArgs {
    /// A file of JSON log lines, one entry per line (`-` reads standard input).
    logfile: PathBuf,
    /// Write the scenario here instead of standard output.
    #[arg(long)]
    out: Option<PathBuf>,
    /// With several runs in the log, import the first one of this scenario.
    #[arg(long)]
    scenario: Option<String>,
    /// With several runs in the log, import the first one against this endpoint.
    #[arg(long)]
    endpoint: Option<EndpointKind>,
    /// The scenario's name (default: the run's scenario label, else the log file's name).
    #[arg(long)]
    name: Option<String>,
}

pub(crate) fn import(args: ImportArgs) -> anyhow::Result<Outcome> {
    let shown = args.logfile.display().to_string();
    let text = if shown == "-" {
        std::io::read_to_string(std::io::stdin()).context("reading standard input")?
    } else {
        std::fs::read_to_string(&args.logfile).with_context(|| format!("reading {shown}"))?
    };
    let fallback_name = args
        .logfile
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .filter(|s| s != "-")
        .unwrap_or_else(|| "imported".to_string());
    let options = Options {
        scenario: args.scenario,
        endpoint: args.endpoint,
        name: args.name,
        fallback_name,
    };
    let imported = import::import(&text, &options).with_context(|| format!("importing {shown}"))?;

    let mut notes = vec![format!(
        "Imported by `racegate import` from {shown}: {}, {} users from {} lifecycle events in \
         {} lines.",
        imported.run,
        imported.scenario.users.len(),
        imported.events,
        imported.lines
    )];
    if imported.runs.len() > 1 {
        notes.push(format!(
            "The log holds {} runs; pick another with --scenario and --endpoint.",
            imported.runs.len()
        ));
    }
    if let Some(line) = imported.first_malformed {
        notes.push(format!(
            "Skipped {} malformed lines, the first at line {line}.",
            imported.malformed
        ));
    }
    if !imported.defaulted.is_empty() {
        notes.push(format!(
            "Not in the log, so defaulted: {}.",
            imported.defaulted.join(", ")
        ));
    }
    notes.push("Add an [expect] table to gate it.".to_string());
    for note in &notes {
        eprintln!("racegate import: {note}");
    }
    emit(
        args.out.as_ref(),
        &scenario::to_toml(&imported.scenario, &notes.join("\n")),
    )?;
    Ok(Outcome::Pass)
}
