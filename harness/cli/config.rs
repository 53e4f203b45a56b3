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
    /// `table` for people; `json` for tools (racegate's pytest plugin reads it), with every
    /// scenario file the settings name, by its name.
    #[arg(long, value_enum, default_value_t = Format::Table)]
    format: Format,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum Format {
    Table,
    Json,
}

pub(crate) fn config(args: ConfigArgs) -> anyhow::Result<Outcome> {
    let settings = args.app.settings(&Flags {
        url: args.url.as_deref(),
        scenarios: &args.scenarios,
        tokens: args.tokens.as_deref(),
        timeout_ms: args.timeout_ms,
        allow_inconclusive: args.allow_inconclusive,
    })?;
    let text = match args.format {
        Format::Table => settings.describe(),
        Format::Json => {
            let scenarios: Vec<serde_json::Value> = if settings.scenarios.value.is_empty() {
                Vec::new()
            } else {
                settings
                    .load_scenarios()?
                    .iter()
                    .map(|s| {
                        let file = std::path::absolute(&s.file).unwrap_or_else(|_| s.file.clone());
                        serde_json::json!({"name": s.name, "file": file})
                    })
                    .collect()
            };
            let mut doc = serde_json::json!({
                "file": settings.file,
                "url": settings.url.as_ref().map(|u| &u.value),
                "app": settings.app.as_ref().map(|a| &a.value),
                "path": settings.path.value,
                "scenarios": scenarios,
                "allow_inconclusive": settings.allow_inconclusive.value,
            });
            if settings.url.is_some() {
                doc["path"] = serde_json::Value::Null;
            }
            let mut text = serde_json::to_string_pretty(&doc)?;
            text.push('\n');
            text
        }
    };
    emit(None, &text)?;
    Ok(Outcome::Pass)
}
