//! The `racegate` binary: argument parsing and exit-code policy over the library crates.
//!
//! Exit codes: 0 every gated verdict matched; 1 a verdict differs (or a race was found);
//! 2 bad input (a scenario file, a flag) or an internal error.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};

mod app;
mod config;
mod explore;
mod import;
mod load;
mod logging;
mod probe;
mod run;
mod scenarios;
mod serve;

#[derive(Parser)]
#[command(name = "racegate", version, about, long_about = None)]
struct Cli {
    /// Log lines on standard error: `text`, or `json` shaped like Google Cloud Logging entries
    /// (RUST_LOG then defaults to `warn,racegate=debug`: every lifecycle event).
    #[arg(long, global = true, value_enum, default_value_t = logging::LogFormat::Text)]
    log_format: logging::LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Replay scenarios against endpoints in virtual time: the regression gate.
    Run(run::RunArgs),
    /// Search timings for a violation; write the smallest one found as a scenario file.
    Explore(explore::ExploreArgs),
    /// Serve one endpoint over real WebSockets until SIGINT or SIGTERM.
    Serve(serve::ServeArgs),
    /// Many users against one endpoint on loopback, with a plain echo server as the baseline.
    Load(load::LoadArgs),
    /// Turn logs into a scenario file: racegate's own JSON lines, or with --map your app's
    /// (text lines or a Cloud Logging export).
    Import(import::ImportArgs),
    /// Replay scenarios' clients against a live WebSocket server; check what a client sees.
    Probe(probe::ProbeArgs),
    /// The scenario files built into racegate: list them, or export them to start your own set.
    Scenarios(scenarios::ScenariosArgs),
    /// The settings probe and explore run with here (flags, [tool.racegate] in pyproject.toml or
    /// racegate.toml, defaults), each with where it came from.
    Config(config::ConfigArgs),
}

/// What a command concluded, for the exit code.
pub(crate) enum Outcome {
    /// Everything held.
    Pass,
    /// A verdict differs, or a race was found.
    Fail,
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        // --help and --version are not errors; they print as clap prints them.
        Err(e) if !e.use_stderr() => {
            let _ = e.print();
            return ExitCode::SUCCESS;
        }
        Err(e) if e.kind() == clap::error::ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => {
            let _ = e.print();
            return ExitCode::from(2);
        }
        Err(e) => {
            // One prefix for every error racegate prints: clap's own "error: " becomes it.
            let text = e.render().to_string();
            let text = text.strip_prefix("error: ").unwrap_or(&text);
            eprint!("racegate: {text}");
            return ExitCode::from(2);
        }
    };
    logging::init(cli.log_format);
    let result = match cli.command {
        Command::Run(args) => run::run(args),
        Command::Explore(args) => explore::explore(args),
        Command::Serve(args) => serve::serve(args),
        Command::Load(args) => load::load(args),
        Command::Import(args) => import::import(args),
        Command::Probe(args) => probe::probe(args),
        Command::Scenarios(args) => scenarios::scenarios(args),
        Command::Config(args) => config::config(args),
    };
    match result {
        Ok(Outcome::Pass) => ExitCode::SUCCESS,
        Ok(Outcome::Fail) => ExitCode::from(1),
        Err(e) => {
            logging::error(&format!("{e:#}"));
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

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;
