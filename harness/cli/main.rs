//! The `racegate` binary: argument parsing and exit-code policy over the library crates.
//!
//! Exit codes: 0 every gated verdict matched; 1 a verdict differs (or a race was found);
//! 2 bad input (a scenario file, a flag) or an internal error.

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};
use racegate_replay::{EndpointKind, replay, report, scenario};

#[derive(Parser)]
#[command(name = "racegate", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Replay scenarios against endpoints in virtual time: the regression gate.
    Run(RunArgs),
}

#[derive(Parser)]
struct RunArgs {
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

#[derive(Clone, Copy, ValueEnum)]
enum EndpointArg {
    Unfixed,
    Partial,
    StateMachine,
    All,
}

impl EndpointArg {
    fn kinds(self) -> Vec<EndpointKind> {
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

/// What a command concluded, for the exit code.
enum Outcome {
    /// Everything held.
    Pass,
    /// A verdict differs, or a race was found.
    Fail,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    let result = match cli.command {
        Command::Run(args) => run(args),
    };
    match result {
        Ok(Outcome::Pass) => ExitCode::SUCCESS,
        Ok(Outcome::Fail) => ExitCode::from(1),
        Err(e) => {
            eprintln!("racegate: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn run(args: RunArgs) -> anyhow::Result<Outcome> {
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

fn emit(out: Option<&PathBuf>, text: &str) -> anyhow::Result<()> {
    match out {
        Some(path) => {
            std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))?
        }
        None => {
            let mut stdout = std::io::stdout().lock();
            // A closed pipe (`| head`) is not an error worth a message.
            let written = stdout
                .write_all(text.as_bytes())
                .and_then(|()| stdout.flush());
            match written {
                Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => {
                    return Err(e).context("writing to standard output");
                }
                Ok(()) | Err(_) => {}
            }
        }
    }
    Ok(())
}
