//! `racegate import`: racegate's own JSON log lines (Cloud Logging export shape), or with
//! `--map` an application's logs (text lines or a Cloud Logging export), into a scenario file.

use std::io::Read;
use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::Parser;
use racegate_replay::EndpointKind;
use racegate_replay::import::{self, Log, Mapping, Options};
use racegate_replay::scenario;

use crate::{Outcome, emit};

#[derive(Parser)]
pub(crate) struct ImportArgs {
    /// Log files (`-` reads standard input). Without --map: one file of racegate's own JSON log
    /// lines. With --map: the application's logs, text lines or Cloud Logging exports (a JSON
    /// array or one entry per line), read in order as one log.
    #[arg(value_name = "LOG", required = true)]
    logs: Vec<PathBuf>,
    /// A mapping file (TOML) saying which of the application's log lines are which lifecycle
    /// event, and which are production symptoms (docs/import.md).
    #[arg(long, value_name = "MAP.toml")]
    map: Option<PathBuf>,
    /// Write the scenario here instead of standard output.
    #[arg(long)]
    out: Option<PathBuf>,
    /// With several runs in the log, import the first one of this scenario.
    #[arg(long, conflicts_with = "map")]
    scenario: Option<String>,
    /// With several runs in the log, import the first one against this endpoint.
    #[arg(long, conflicts_with = "map")]
    endpoint: Option<EndpointKind>,
    /// The scenario's name (default: the run's scenario label, else the (first) log file's name).
    #[arg(long)]
    name: Option<String>,
}

/// The name a scenario takes from its log file: the file's stem, or `imported` for stdin.
fn fallback_name(log: &Path) -> String {
    log.file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .filter(|s| s != "-")
        .unwrap_or_else(|| "imported".to_string())
}

pub(crate) fn import(args: ImportArgs) -> anyhow::Result<Outcome> {
    if let Some(map) = &args.map {
        return import_mapped(&args, map);
    }
    let [logfile] = args.logs.as_slice() else {
        anyhow::bail!(
            "racegate's own log is one file, and {} were given: pass one, or read an \
             application's logs with --map MAP.toml",
            args.logs.len()
        );
    };
    let shown = logfile.display().to_string();
    let text = if shown == "-" {
        std::io::read_to_string(std::io::stdin()).context("reading standard input")?
    } else {
        std::fs::read_to_string(logfile).with_context(|| format!("reading {shown}"))?
    };
    let fallback_name = fallback_name(logfile);
    let options = Options {
        scenario: args.scenario.clone(),
        endpoint: args.endpoint,
        name: args.name.clone(),
        fallback_name,
    };
    let mut imported =
        import::import(&text, &options).with_context(|| format!("importing {shown}"))?;

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
    notes.extend(project_protocol(&mut imported.scenario)?);
    for note in &notes {
        eprintln!("racegate import: {note}");
    }
    emit(
        args.out.as_ref(),
        &scenario::to_toml(&imported.scenario, &notes.join("\n")),
    )?;
    Ok(Outcome::Pass)
}

/// The project's `[tool.racegate.protocol]` (pyproject.toml or racegate.toml, from here upward)
/// as the imported scenario's `[protocol]`, so the file probes the project's server as it is;
/// the note saying so, if there is one.
fn project_protocol(s: &mut scenario::Scenario) -> anyhow::Result<Option<String>> {
    let config = racegate_probe::config::Config::find(&std::env::current_dir()?)?;
    let Some(table) = config.protocol else {
        return Ok(None);
    };
    s.protocol = table.value.for_users(&s.users)?;
    Ok(Some(format!(
        "Its [protocol] is the project's ({}).",
        table.at
    )))
}

/// `import --map`: the application's logs through the mapping. A log is read as bytes and
/// decoded leniently: a stray invalid byte in a production log is no reason to refuse it.
fn import_mapped(args: &ImportArgs, map: &Path) -> anyhow::Result<Outcome> {
    let mapping = Mapping::load(map)?;
    let mut texts = Vec::with_capacity(args.logs.len());
    for log in &args.logs {
        let shown = log.display().to_string();
        let bytes = if shown == "-" {
            let mut bytes = Vec::new();
            std::io::stdin()
                .read_to_end(&mut bytes)
                .context("reading standard input")?;
            bytes
        } else {
            std::fs::read(log).with_context(|| format!("reading {shown}"))?
        };
        // Valid UTF-8 (the usual case) is taken as it is, without a copy.
        let text = String::from_utf8(bytes)
            .unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned());
        texts.push((shown, text));
    }
    let logs: Vec<Log<'_>> = texts
        .iter()
        .map(|(name, text)| Log { name, text })
        .collect();
    let options = Options {
        name: args.name.clone(),
        fallback_name: fallback_name(&args.logs[0]),
        ..Options::default()
    };
    let mut imported = import::import_mapped(&logs, &mapping, &options)?;
    let protocol = project_protocol(&mut imported.scenario)?;
    imported.notes.extend(protocol);
    for note in &imported.notes {
        eprintln!("racegate import: {note}");
    }
    let mut header = imported.notes.clone();
    header.push(String::new());
    header.push("Assumptions (edit the scenario where one does not hold):".to_string());
    header.extend(imported.assumptions.iter().map(|a| format!("- {a}")));
    emit(
        args.out.as_ref(),
        &scenario::to_toml(&imported.scenario, &header.join("\n")),
    )?;
    Ok(Outcome::Pass)
}
