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
use racegate_probe::app::AppTarget;
use racegate_probe::app::explore::{self as app_explore, AppOutcome, Search};
use racegate_replay::EndpointKind;
use racegate_replay::explore::{self, Options, Outcome as Searched, Shard, UserRange};
use racegate_replay::scenario;

use crate::app::{AppArgs, Flags};
use crate::{Outcome, emit};

#[derive(Parser)]
pub(crate) struct ExploreArgs {
    /// The endpoint to search for a violation (one of racegate's models). Without it, the app
    /// (--app, or `app` in the project's [tool.racegate]) is searched.
    #[arg(long, value_enum, conflicts_with = "app")]
    endpoint: Option<Endpoint>,
    #[command(flatten)]
    app: AppArgs,
    /// Against an app: vary this scenario's timings (client connects, chat times and closes,
    /// the app's accept latency, the hooked phase times), keeping its users, chats and
    /// [protocol]. Without it, scenarios are drawn as for --endpoint.
    #[arg(long, value_name = "FILE", conflicts_with = "endpoint")]
    scenario: Option<PathBuf>,
    /// Against an app: the budget of one case from its first connect, as probe's --timeout-ms.
    #[arg(long, value_name = "MS", conflicts_with = "endpoint")]
    timeout_ms: Option<u64>,
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
    let Some(endpoint) = args.endpoint else {
        let settings = args.app.settings(&Flags {
            url: None,
            scenarios: &[],
            tokens: None,
            timeout_ms: args.timeout_ms,
            allow_inconclusive: false,
        })?;
        return match settings.app_target()? {
            Some(app) => explore_app(&args, &app, &settings),
            None => anyhow::bail!(
                "give --endpoint (one of racegate's models) or --app (an ASGI app), or set `app` \
                 in [tool.racegate] of the project's pyproject.toml (or in racegate.toml)"
            ),
        };
    };
    let options = Options {
        endpoint: endpoint.into(),
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
        Searched::Held(s) => {
            let text = held(
                &what,
                s.cases,
                s.replays,
                "replays",
                s.interleavings,
                elapsed,
            );
            emit(None, &text)?;
            Ok(Outcome::Pass)
        }
        Searched::Found(found) => {
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

/// `explore --app`: the same search against the app, each worker a driver of its own.
fn explore_app(
    args: &ExploreArgs,
    app: &AppTarget,
    settings: &crate::app::Settings,
) -> anyhow::Result<Outcome> {
    let timeout_ms = settings.timeout_ms.as_ref().map(|t| t.value);
    let table = settings.protocol.as_ref().map(|p| &*p.value);
    let scenario = match &args.scenario {
        Some(path) => {
            let s = scenario::load_with(path, table)?;
            crate::app::check_fail_at(app, std::slice::from_ref(&s))?;
            Some(s)
        }
        None => None,
    };
    if timeout_ms == Some(0) {
        anyhow::bail!("--timeout-ms must be at least 1");
    }
    // Drawn scenarios speak the project's [protocol], when it has one.
    let protocol = match (&scenario, table) {
        (None, Some(t)) => {
            let users: Vec<_> = explore::draw(args.seed, 0, args.users)?.users;
            Some(t.for_users(&users)?)
        }
        _ => None,
    };
    let search = Search {
        cases: args.cases,
        seed: args.seed,
        shard: args.shard,
        scenario,
        users: args.users,
        protocol,
    };
    let options = racegate_probe::Options {
        timeout_ms,
        ..Default::default()
    };
    let jobs = args.jobs.unwrap_or_else(|| {
        std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get)
    });
    let total = search.shard.len(search.cases);
    let mut progress = Progress::new(total);
    let start = Instant::now();
    let result = app_explore::explore_app(app, &search, &options, jobs, &mut |done| {
        progress.update(done)
    });
    let elapsed = start.elapsed();
    progress.finish();
    let mut command = format!(
        "racegate explore {} --cases {} --seed {}",
        app.flags(),
        search.cases,
        search.seed
    );
    match &args.scenario {
        Some(path) => command.push_str(&format!(" --scenario {}", path.display())),
        None => command.push_str(&format!(" --users {}", search.users)),
    }
    if search.shard != Shard::WHOLE {
        command.push_str(&format!(" --shard {}", search.shard));
    }
    let what = format!(
        "{} (seed {}, shard {})",
        app.describe(),
        search.seed,
        search.shard
    );
    match result? {
        AppOutcome::Held(s) => {
            let text = held(&what, s.cases, s.replays, "runs", s.interleavings, elapsed);
            emit(None, &text)?;
            Ok(Outcome::Pass)
        }
        AppOutcome::Found(found) => {
            let chats: usize = found.scenario.users.iter().map(|u| u.sends.len()).sum();
            eprintln!(
                "{what}: case {} violates {}; shrunk in {} runs to {} user(s) and {chats} chat(s)",
                found.case,
                found.invariant,
                found.shrink_runs,
                found.scenario.users.len()
            );
            if let Some(v) = found
                .violations
                .iter()
                .find(|v| v.invariant == found.invariant)
            {
                eprintln!("  {v}");
            }
            eprintln!(
                "first counterexample after {:.3} s ({} cases, {} runs, {:.0} cases/s)",
                elapsed.as_secs_f64(),
                found.summary.cases,
                found.summary.replays,
                rate(found.summary.cases, elapsed)
            );
            emit(args.out.as_ref(), &found.to_toml(&search, app, &command))?;
            if let Some(path) = &args.out {
                eprintln!(
                    "wrote {0}; reproduce it with: racegate probe {1} --scenario {0}",
                    path.display(),
                    app.flags()
                );
            }
            Ok(Outcome::Fail)
        }
    }
}

/// The line a search that found nothing ends with: what was searched, and how fast.
fn held(
    what: &str,
    cases: u64,
    runs: u64,
    runs_are: &str,
    interleavings: u64,
    elapsed: Duration,
) -> String {
    format!(
        "{what}: no violation in {cases} cases; {:.0} cases/s, {runs} {runs_are}, {interleavings} \
         distinct interleavings, {:.2} s\n",
        rate(cases, elapsed),
        elapsed.as_secs_f64()
    )
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
