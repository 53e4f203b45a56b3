//! The `racegate` binary: argument parsing and exit-code policy over the library crates.
//!
//! Exit codes: 0 every gated verdict matched; 1 a verdict differs (or a race was found);
//! 2 bad input (a scenario file, a flag) or an internal error.

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};

mod run;

#[derive(Parser)]
#[command(name = "racegate", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Replay scenarios against endpoints in virtual time: the regression gate.
    Run(run::RunArgs),
}

/// What a command concluded, for the exit code.
pub(crate) enum Outcome {
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
        Command::Run(args) => run::run(args),
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

/// Writes `text` to `out`, or to standard output.
pub(crate) fn emit(out: Option<&PathBuf>, text: &str) -> anyhow::Result<()> {
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
