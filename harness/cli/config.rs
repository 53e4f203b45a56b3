//! `racegate config`: the settings `probe` and `explore` would run with here, each with where
//! it came from (a flag, the project's `[tool.racegate]`, racegate's default).

use std::path::PathBuf;

use clap::Parser;

use crate::app::{AppArgs, Flags};
use crate::{Outcome, emit};

#[derive(Parser)]
pub(crate) struct ConfigArgs {
    /// A live server, as `probe --url` takes it.
    #[arg(long, conflicts_with = "app")]
    url: Option<String>,
    #[command(flatten)]
    app: AppArgs,
    /// Scenario files or folders, as `probe --scenario` takes them.
    #[arg(long = "scenario", value_name = "FILE|DIR", num_args = 1..)]
    scenarios: Vec<PathBuf>,
    /// A tokens file, as `probe --tokens` takes it.
    #[arg(long, value_name = "FILE")]
    tokens: Option<PathBuf>,
    /// As `probe --timeout-ms`.
    #[arg(long, value_name = "MS")]
    timeout_ms: Option<u64>,
    /// As `probe --allow-inconclusive`.
    #[arg(long)]
    allow_inconclusive: bool,
}

pub(crate) fn config(args: ConfigArgs) -> anyhow::Result<Outcome> {
    let settings = args.app.settings(&Flags {
        url: args.url.as_deref(),
        scenarios: &args.scenarios,
        tokens: args.tokens.as_deref(),
        timeout_ms: args.timeout_ms,
        allow_inconclusive: args.allow_inconclusive,
    })?;
    emit(None, &settings.describe())?;
    Ok(Outcome::Pass)
}
