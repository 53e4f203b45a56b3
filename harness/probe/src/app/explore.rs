//! `racegate explore --app`: proptest searches timings against the app, on the virtual clock,
//! with racegate's search ([`racegate_replay::explore::search`]): the same case seeds, shards,
//! shrinking and `--jobs` rule (the answer does not depend on the number of workers). Each
//! worker is a driver of its own with the app started once; each case forks from it.
//!
//! Given a scenario, the search varies its client timings, the app's accept latency and the
//! phase times the hooks give the app, and keeps its users, chats and `[protocol]`; without
//! one it draws scenarios as `racegate explore` does. A failing case is shrunk to the smallest
//! scenario that still breaks the same invariant, checked once more from a fresh fork, and
//! written as a file `probe --app` reproduces.

use std::fmt::Write as _;
use std::hash::{Hash, Hasher};

use proptest::strategy::Strategy;
use racegate_replay::Invariant;
use racegate_replay::explore::{
    ExploreError, Plan, Ran, Searched, Shard, Subject, Summary, UserRange, scenarios, search,
    variations,
};
use racegate_replay::scenario::{self, Phase, Scenario};

use super::{AppTarget, Driver, run_case};
use crate::probe::{Clock, Options, ProbeVerdict, conclude, prepare};
use crate::session::{Record, Seen};
use crate::target::Target;

/// What to search.
#[derive(Debug, Clone)]
pub struct Search {
    /// Cases in the whole campaign (every shard together).
    pub cases: u64,
    /// Chooses the cases: the same seed and options give the same file.
    pub seed: u64,
    /// Which slice of the cases this run covers.
    pub shard: Shard,
    /// Varied when given; else scenarios are drawn with this many users.
    pub scenario: Option<Scenario>,
    /// Users per drawn scenario (without `scenario`).
    pub users: UserRange,
    /// The `[protocol]` drawn scenarios speak (the project's), racegate's own by default.
    pub protocol: Option<racegate_replay::scenario::Protocol>,
}

/// A failing scenario, shrunk and confirmed.
#[derive(Debug, Clone)]
pub struct AppFound {
    /// The case that failed first.
    pub case: u64,
    /// The invariant it broke (and the shrunk scenario still breaks).
    pub invariant: Invariant,
    /// The shrunk scenario, named for the search.
    pub scenario: Scenario,
    /// Its violations when run again from a fresh fork.
    pub violations: Vec<racegate_replay::Violation>,
    /// Users and chats before shrinking.
    pub original_size: (usize, usize),
    /// Runs spent shrinking.
    pub shrink_runs: u64,
    /// Counts up to the failing case.
    pub summary: Summary,
}

/// How a search against the app ended.
#[derive(Debug, Clone)]
pub enum AppOutcome {
    /// No case broke an invariant.
    Held(Summary),
    /// One did.
    Found(Box<AppFound>),
}

/// The app as a [`Subject`]: one driver, the app started once, a fork per case.
pub struct AppSubject {
    driver: Driver,
    url: Target,
    options: Options,
}

impl AppSubject {
    /// Starts a driver for `app`.
    pub fn start(app: &AppTarget, options: &Options) -> Result<AppSubject, crate::ProbeError> {
        Ok(AppSubject {
            driver: app.start()?,
            url: app.url()?,
            options: options.clone(),
        })
    }

    fn records(&mut self, s: &Scenario) -> Result<Vec<Record>, ExploreError> {
        let (requests, _secrets) = prepare(&self.url, s, &self.options)
            .map_err(|e| ExploreError::Subject(e.to_string()))?;
        let (records, _) = run_case(&mut self.driver, s, requests, &self.options, 0)
            .map_err(|e| ExploreError::Subject(e.to_string()))?;
        Ok(records)
    }
}

impl Subject for AppSubject {
    fn run(&mut self, s: &Scenario) -> Result<Ran, ExploreError> {
        let records = self.records(s)?;
        let signature = signature(&records);
        let outcome = conclude(s, records, &self.options, Clock::Virtual, 0.0);
        // A case that exercised nothing (inconclusive) found nothing either.
        let violations = match outcome.verdict {
            ProbeVerdict::Fail => outcome.violations,
            ProbeVerdict::Pass | ProbeVerdict::Inconclusive => Vec::new(),
        };
        Ok(Ran {
            violations,
            signature,
        })
    }
}

/// The interleaving of a case: per record, its user (numbered by first appearance) and what
/// kind of thing it was; times and texts left out.
fn signature(records: &[Record]) -> u64 {
    let mut users: Vec<&str> = Vec::new();
    let mut h = std::collections::hash_map::DefaultHasher::new();
    for r in records {
        let user = match users.iter().position(|u| *u == r.user) {
            Some(i) => i,
            None => {
                users.push(&r.user);
                users.len() - 1
            }
        };
        user.hash(&mut h);
        std::mem::discriminant(&r.seen).hash(&mut h);
        if let Seen::ServerClose { code, .. } = &r.seen {
            code.hash(&mut h);
        }
    }
    h.finish()
}

/// Searches `search` against `app` on `jobs` drivers, calling `progress` with the cases done.
pub fn explore_app(
    app: &AppTarget,
    search_options: &Search,
    options: &Options,
    jobs: usize,
    progress: &mut dyn FnMut(u64),
) -> Result<AppOutcome, crate::ProbeError> {
    let hooked: Vec<Phase> = app
        .load
        .hooks
        .as_ref()
        .map(|h| h.phases.iter().map(|(p, _)| *p).collect())
        .unwrap_or_default();
    let base = search_options.scenario.clone();
    let users = search_options.users;
    let protocol = search_options.protocol.clone();
    let strategy = move || match (&base, &protocol) {
        (Some(s), _) => variations(s.clone(), &hooked),
        (None, None) => scenarios(users),
        (None, Some(p)) => {
            let p = p.clone();
            scenarios(users)
                .prop_map(move |mut s| {
                    s.protocol = p.clone();
                    s
                })
                .boxed()
        }
    };
    let plan = Plan {
        cases: search_options.cases,
        seed: search_options.seed,
        shard: search_options.shard,
        strategy: &strategy,
    };
    let mut subjects = Vec::with_capacity(jobs.max(1));
    for _ in 0..jobs.max(1) {
        subjects.push(AppSubject::start(app, options)?);
    }
    let searched = search(&plan, &mut subjects, progress).map_err(explore_error)?;
    let failure = match searched {
        Searched::Held(summary) => {
            quit(subjects)?;
            return Ok(AppOutcome::Held(summary));
        }
        Searched::Failed(f) => f,
    };
    // Once more from a fresh fork: the file must reproduce what the search saw.
    let mut minimal = failure.minimal;
    minimal.name = format!(
        "explore-app-seed-{}-case-{}",
        search_options.seed, failure.case
    );
    minimal.description = Some(format!("{} (racegate explore --app)", failure.invariant));
    minimal.expect.clear();
    minimal.expect_invariants.clear();
    let subject = &mut subjects[0];
    let again = subject.run(&minimal).map_err(explore_error)?;
    if !again
        .violations
        .iter()
        .any(|v| v.invariant == failure.invariant)
    {
        return Err(crate::ProbeError::App(super::AppError::Driver(format!(
            "case {}: the shrunk scenario no longer violates {} when run again: the app is not \
             deterministic under the virtual clock (real I/O, threads, or uuid4-like randomness?)",
            failure.case, failure.invariant
        ))));
    }
    quit(subjects)?;
    Ok(AppOutcome::Found(Box::new(AppFound {
        case: failure.case,
        invariant: failure.invariant,
        scenario: minimal,
        violations: again.violations,
        original_size: failure.original_size,
        shrink_runs: failure.shrink_replays,
        summary: failure.summary,
    })))
}

fn quit(subjects: Vec<AppSubject>) -> Result<(), crate::ProbeError> {
    for s in subjects {
        s.driver.quit()?;
    }
    Ok(())
}

fn explore_error(e: ExploreError) -> crate::ProbeError {
    crate::ProbeError::App(super::AppError::Driver(e.to_string()))
}

impl AppFound {
    /// The scenario as a file, opening with how it was found and how to reproduce it.
    pub fn to_toml(&self, search: &Search, app: &AppTarget, command: &str) -> String {
        let mut comment = format!(
            "Found by `racegate explore --app`: {} violates {}.\n",
            app.describe(),
            self.invariant
        );
        if let Some(v) = self
            .violations
            .iter()
            .find(|v| v.invariant == self.invariant)
        {
            let _ = writeln!(comment, "  {v}");
        }
        let (users, chats) = self.original_size;
        let _ = write!(
            comment,
            "Case {} of seed {}, shrunk in {} runs from {users} user(s) and {chats} message(s).\n\
             Search: {command}\nReproduce: racegate probe {} --scenario THIS_FILE\n",
            self.case,
            search.seed,
            self.shrink_runs,
            app.flags()
        );
        scenario::to_toml(&self.scenario, &comment)
    }
}
