//! `racegate load`: many users against one endpoint on loopback, with the echo baseline.
//!
//! Each measurement runs in a fresh child process (this binary with the hidden `--measure`), so
//! the echo baseline does not inherit the endpoint run's warmed-up heap, or the other way round,
//! and each peak RSS covers one measurement only.

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, ValueEnum};
use racegate_net::LoadOptions;
use racegate_net::load::{Figures, LoadReport, Target};
use racegate_replay::EndpointKind;

use crate::serve::ServerFlags;
use crate::{Outcome, emit};

#[derive(Args)]
pub(crate) struct LoadArgs {
    /// The endpoint under load: unfixed, partial or state-machine.
    #[arg(long)]
    endpoint: EndpointKind,
    /// How many clients.
    #[arg(long, default_value_t = 100)]
    users: usize,
    /// The clients connect evenly spread over this many ms.
    #[arg(long, default_value_t = 100)]
    window_ms: u64,
    /// Chats each client sends right after its socket opens.
    #[arg(long, default_value_t = 10)]
    messages: usize,
    /// Server timings. Without a scenario or flags: auth 50, services 120, register 30 ms (the
    /// five-users-within-100ms scenario's server) and no gap between a run's events (think time
    /// is not capacity; `--event-gap-ms` adds it).
    #[command(flatten)]
    server: ServerFlags,
    /// A client stops waiting for missing answers after this many quiet ms.
    #[arg(long, default_value_t = 2000)]
    quiet_ms: u64,
    /// Skip the echo baseline.
    #[arg(long)]
    no_baseline: bool,
    /// Output format.
    #[arg(long, value_enum, default_value_t = Format::Table)]
    format: Format,
    /// Write the output here instead of standard output.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Internal: run one measurement in this process and print its figures as JSON.
    #[arg(long, value_enum, hide = true)]
    measure: Option<MeasureArg>,
    /// Run every measurement in this process (no child processes).
    #[arg(long)]
    in_process: bool,
    /// Measure the endpoint and the baseline this many times, alternating, and report the run
    /// with the median ratio (msgs/s, latencies and memory from that run; every count, sent to cross, a total over all runs). One run's ratio moves by
    /// ±0.2 on a shared machine.
    #[arg(long, default_value_t = 3)]
    repeat: usize,
}

#[derive(Clone, Copy, ValueEnum)]
enum MeasureArg {
    Endpoint,
    Echo,
}

impl MeasureArg {
    fn target(self) -> Target {
        match self {
            MeasureArg::Endpoint => Target::Endpoint,
            MeasureArg::Echo => Target::Echo,
        }
    }

    fn name(self) -> &'static str {
        match self {
            MeasureArg::Endpoint => "endpoint",
            MeasureArg::Echo => "echo",
        }
    }
}

/// Runs this binary with the same arguments plus `--measure which`; reads its figures.
fn measure_in_child(which: MeasureArg) -> anyhow::Result<Figures> {
    let exe = std::env::current_exe().context("finding the racegate binary")?;
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    // The child prints JSON to stdout whatever the parent was asked for.
    args.retain(|a| a != "--in-process");
    args.extend(["--measure".into(), which.name().into()]);
    let out = Command::new(&exe)
        .args(&args)
        .output()
        .with_context(|| format!("running {}", exe.display()))?;
    anyhow::ensure!(
        out.status.success(),
        "the {} measurement failed ({}): {}",
        which.name(),
        out.status,
        String::from_utf8_lossy(&out.stderr).trim()
    );
    serde_json::from_slice(&out.stdout)
        .with_context(|| format!("reading the {} measurement's figures", which.name()))
}

#[derive(Clone, Copy, ValueEnum)]
enum Format {
    Table,
    Json,
}

pub(crate) fn load(args: LoadArgs) -> anyhow::Result<Outcome> {
    anyhow::ensure!(args.users > 0, "--users must be at least 1");
    anyhow::ensure!(args.users <= 10_000, "--users must be at most 10000");
    anyhow::ensure!(args.messages > 0, "--messages must be at least 1");
    anyhow::ensure!(
        (1..=100).contains(&args.repeat),
        "--repeat must be between 1 and 100"
    );
    let (server, _failures) = args.server.resolve(LoadOptions::default_server())?;
    let opts = LoadOptions {
        endpoint: args.endpoint,
        users: args.users,
        window: Duration::from_millis(args.window_ms),
        messages: args.messages,
        server,
        limits: args.server.limits()?,
        quiet: Duration::from_millis(args.quiet_ms.max(1)),
        baseline: !args.no_baseline,
    };
    if let Some(which) = args.measure {
        let figures = racegate_net::load::measure(&opts, which.target())?;
        emit(None, &format!("{}\n", serde_json::to_string(&figures)?))?;
        return Ok(Outcome::Pass);
    }
    // Checked here too, so the message comes straight from this process, not a child's.
    racegate_net::load::ensure_descriptors(opts.users)?;
    let mut runs = Vec::with_capacity(args.repeat);
    for _ in 0..args.repeat {
        runs.push(if args.in_process {
            racegate_net::load::run_load(&opts)?
        } else {
            let figures = measure_in_child(MeasureArg::Endpoint)?;
            let baseline = match opts.baseline {
                true => Some(measure_in_child(MeasureArg::Echo)?),
                false => None,
            };
            LoadReport::new(&opts, figures, baseline)
        });
    }
    let report = LoadReport::median_of(runs).context("--repeat must be at least 1")?;
    let text = match args.format {
        Format::Table => report.table(),
        Format::Json => format!("{}\n", report.to_json()),
    };
    emit(args.out.as_ref(), &text)?;
    Ok(if report.clean() {
        Outcome::Pass
    } else {
        Outcome::Fail
    })
}
