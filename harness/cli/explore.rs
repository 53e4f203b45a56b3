//! `racegate explore`: search timings for a violation and write the smallest one as a scenario.
//!
//! Exit 1 with the scenario file (to `--out` or standard output) when a case breaks an
//! invariant; exit 0 with a summary when none of the cases did. The file's bytes depend only on
//! the options; the rates on standard error and in the summary are wall-clock measurements.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use clap::{Parser, ValueEnum};
use indicatif::{ProgressBar, ProgressStyle};
use racegate_replay::EndpointKind;
use racegate_replay::explore::{self, Options, Outcome as Search, Shard, UserRange};

use crate::{Outcome, emit};

#[derive(Parser)]
pub(crate) struct ExploreArgs {
    /// The endpoint to search for a violation.
    #[arg(long, value_enum)]
    endpoint: Endpoint,
    /// Random cases in the whole campaign (every shard together).
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u64).range(1..))]
    cases: u64,
    /// Chooses the cases: the same seed and options give the same cases and the same file.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Users per scenario, MIN..MAX (both inclusive, at most 16), or one number.
    #[arg(long, default_value_t = UserRange::default())]
    users: UserRange,
    /// Write the found scenario here instead of standard output (nothing is written if none).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Run only the K-th of N disjoint slices of the cases (case i where i % N == K-1); the N
    /// shards together run exactly the cases of one unsharded run.
    #[arg(long, default_value_t = Shard::WHOLE)]
    shard: Shard,
    /// Worker threads (default: the available cores). The answer is the one thread's, byte for
    /// byte: the lowest failing case wins, with the counts of the cases up to it.
    #[arg(long, value_parser = crate::run::at_least_one)]
    jobs: Option<usize>,
}

/// One endpoint (exploring all three at once would mix their counterexamples).
#[derive(Clone, Copy, ValueEnum)]
enum Endpoint {
    Unfixed,
    Partial,
    StateMachine,
}

impl From<Endpoint> for EndpointKind {
    fn from(e: Endpoint) -> Self {
        match e {
            Endpoint::Unfixed => EndpointKind::Unfixed,
            Endpoint::Partial => EndpointKind::Partial,
            Endpoint::StateMachine => EndpointKind::StateMachine,
        }
    }
}

pub(crate) fn explore(args: ExploreArgs) -> anyhow::Result<Outcome> {
    let options = Options {
        endpoint: args.endpoint.into(),
        cases: args.cases,
        seed: args.seed,
        users: args.users,
        shard: args.shard,
    };
    let total = options.shard.len(options.cases);
    let mut progress = Progress::new(total);
    let start = Instant::now();
    let jobs = args.jobs.unwrap_or_else(|| {
        std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get)
    });
    let result = explore::explore_jobs(&options, jobs, &mut |done| progress.update(done));
    let elapsed = start.elapsed();
    progress.finish();
    let what = format!(
        "{} (seed {}, users {}, shard {})",
        options.endpoint, options.seed, options.users, options.shard
    );
    match result? {
        Search::Held(s) => {
            let text = format!(
                "{what}: no violation in {} cases; {:.0} cases/s, {} replays, {} distinct \
                 interleavings, {:.2} s\n",
                s.cases,
                rate(s.cases, elapsed),
                s.replays,
                s.interleavings,
                elapsed.as_secs_f64()
            );
            emit(None, &text)?;
            Ok(Outcome::Pass)
        }
        Search::Found(found) => {
            let users = found.scenario.users.len();
            let messages: usize = found
                .scenario
                .users
                .iter()
                .map(|u| u.sends.len() + u.pushes.len())
                .sum();
            eprintln!(
                "{what}: case {} violates {}; shrunk in {} replays to {users} user(s) and \
                 {messages} message(s)",
                found.case, found.invariant, found.shrink_replays
            );
            if let Some(v) = found
                .violations
                .iter()
                .find(|v| v.invariant == found.invariant)
            {
                eprintln!("  {v}");
            }
            eprintln!(
                "first counterexample after {:.3} s ({} cases, {} replays, {:.0} replays/s)",
                elapsed.as_secs_f64(),
                found.summary.cases,
                found.summary.replays,
                rate(found.summary.replays, elapsed)
            );
            if found.breaks_the_fix() {
                eprintln!("state-machine fails this scenario: that is a bug in the fix");
            }
            emit(args.out.as_ref(), &found.to_toml())?;
            if let Some(path) = &args.out {
                eprintln!(
                    "wrote {0}; replay it with: racegate run {0}",
                    path.display()
                );
            }
            Ok(Outcome::Fail)
        }
    }
}

fn rate(n: u64, elapsed: Duration) -> f64 {
    n as f64 / elapsed.as_secs_f64().max(1e-9)
}

/// Progress on standard error, once a run has taken a second: a bar on a terminal, a plain line
/// every ten seconds otherwise (a CI log wants lines, not redraws).
struct Progress {
    total: u64,
    start: Instant,
    terminal: bool,
    bar: Option<ProgressBar>,
    last_line: Option<Instant>,
}

impl Progress {
    const QUIET: Duration = Duration::from_secs(1);
    const LINE_EVERY: Duration = Duration::from_secs(10);

    fn new(total: u64) -> Self {
        Progress {
            total,
            start: Instant::now(),
            terminal: std::io::stderr().is_terminal(),
            bar: None,
            last_line: None,
        }
    }

    fn update(&mut self, done: u64) {
        // Reading the clock for every case costs nothing next to a replay, but skip it anyway.
        if !done.is_multiple_of(64) {
            return;
        }
        let now = Instant::now();
        let elapsed = now - self.start;
        if elapsed < Self::QUIET {
            return;
        }
        if self.terminal {
            let total = self.total;
            let bar = self.bar.get_or_insert_with(|| {
                let bar = ProgressBar::new(total);
                if let Ok(style) = ProgressStyle::with_template(
                    "{elapsed_precise} [{bar:40}] {pos}/{len} cases ({percent}%), eta {eta}",
                ) {
                    bar.set_style(style.progress_chars("=> "));
                }
                bar
            });
            bar.set_position(done);
        } else if self
            .last_line
            .is_none_or(|last| now - last >= Self::LINE_EVERY)
        {
            self.last_line = Some(now);
            eprintln!(
                "explore: {done}/{} cases, {:.0} cases/s",
                self.total,
                rate(done, elapsed)
            );
        }
    }

    fn finish(&mut self) {
        if let Some(bar) = self.bar.take() {
            bar.finish_and_clear();
        }
    }
}
