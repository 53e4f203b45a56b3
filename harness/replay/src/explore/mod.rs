//! Exploration: search the timing space for races and shrink each one to a scenario file.
//!
//! Hand-written scenarios cover the timings someone thought of. [`explore`] draws scenarios from
//! [`scenarios`], replays each against one endpoint, and at the first violation lets
//! proptest shrink it to the smallest scenario that still breaks the *same* invariant (so the
//! search cannot slide from one bug to an easier one while it shrinks). [`Found::to_toml`] writes
//! that scenario as a file `racegate run` replays, with a comment naming the invariant, the seed
//! and the command, and an `[expect]` that replays confirmed. A proptest-regressions seed is not
//! such an artifact: it stops reproducing when a strategy changes; a scenario file does not.
//!
//! Determinism: case `i` of seed `s` draws from its own ChaCha RNG keyed by `(s, i)` and shrinks
//! in its own [`TestRunner`] (no wall-clock limits, no persistence), so a case never depends on
//! which cases ran before it. That is what makes a [`Shard`] exact: shard `K/N` runs the cases
//! `i` with `i % N == K - 1`, the `N` shards are disjoint, and together they run exactly the cases
//! of the unsharded run, each drawn and shrunk the same way.
//!
//! ```
//! use racegate_replay::EndpointKind;
//! use racegate_replay::explore::{Options, Outcome, Shard, UserRange, explore};
//!
//! let options = Options {
//!     endpoint: EndpointKind::Unfixed,
//!     cases: 300,
//!     seed: 1,
//!     users: UserRange::default(),
//!     shard: Shard::WHOLE,
//! };
//! let Outcome::Found(found) = explore(&options, &mut |_| {}).unwrap() else {
//!     panic!("unfixed always breaks");
//! };
//! // Shrunk to one user whose handshake takes 1 ms: the reader reads before accept.
//! assert_eq!(found.invariant.name(), "accept-first");
//! assert_eq!(found.scenario.users.len(), 1);
//! assert!(found.to_toml().contains("state-machine = \"pass\""));
//! ```

mod space;

use std::cell::{Cell, RefCell};
use std::collections::BTreeSet;
use std::fmt;
use std::hash::{Hash, Hasher};
use std::panic::{self, AssertUnwindSafe};
use std::str::FromStr;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use indexmap::IndexMap;
use proptest::strategy::{BoxedStrategy, Strategy, ValueTree};
use proptest::test_runner::{
    Config, RngAlgorithm, TestCaseError, TestError, TestRng, TestRunner, noop_result_cache,
};

use crate::endpoint::EndpointKind;
use crate::fnv::Fnv1a;
use crate::invariant::{Invariant, Violation};
use crate::runner::{RunError, replay};
use crate::scenario::{self, Scenario, Verdict};
use crate::trace::{EventKind, TraceEvent};

pub use space::{LONG_MS, MAX_USERS, UserRange, UserRangeError, scenarios, variations};

/// The most replays spent shrinking one counterexample. Shrinking takes a few hundred in
/// practice; the bound only stops a pathological case from running for minutes.
pub const MAX_SHRINK_REPLAYS: u32 = 10_000;

/// What to search.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Options {
    /// The endpoint whose invariants are searched for a violation.
    pub endpoint: EndpointKind,
    /// Cases in the whole campaign (every shard together).
    pub cases: u64,
    /// Chooses the cases; the same seed and options give the same cases and the same file.
    pub seed: u64,
    /// How many users each scenario has.
    pub users: UserRange,
    /// Which slice of the cases this run covers.
    pub shard: Shard,
}

impl Options {
    /// The command line that runs this search, in canonical form (for the found file's comment).
    pub fn command(&self) -> String {
        let mut cmd = format!(
            "racegate explore --endpoint {} --cases {} --seed {} --users {}",
            self.endpoint, self.cases, self.seed, self.users
        );
        if self.shard != Shard::WHOLE {
            cmd.push_str(&format!(" --shard {}", self.shard));
        }
        cmd
    }
}

/// The `K`-th of `N` disjoint slices of a campaign's cases: those `i` with `i % N == K - 1`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shard {
    k: u64,
    n: u64,
}

/// A `--shard` value that is not `K/N` with `1 <= K <= N`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid shard `{given}`: {why}")]
pub struct ShardError {
    given: String,
    why: String,
}

impl Shard {
    /// The whole campaign: `1/1`.
    pub const WHOLE: Shard = Shard { k: 1, n: 1 };

    /// Shard `k` of `n`; `None` unless `1 <= k <= n`.
    pub fn new(k: u64, n: u64) -> Option<Self> {
        (1 <= k && k <= n).then_some(Shard { k, n })
    }

    /// The case indices of this shard among `total`, in increasing order.
    pub fn cases(self, total: u64) -> impl Iterator<Item = u64> {
        (self.k - 1..total).filter(move |i| i % self.n == self.k - 1)
    }

    /// How many of `total` cases fall in this shard.
    pub fn len(self, total: u64) -> u64 {
        total.saturating_sub(self.k - 1).div_ceil(self.n)
    }

    /// True when this shard has no case of `total`.
    pub fn is_empty(self, total: u64) -> bool {
        self.len(total) == 0
    }
}

impl fmt::Display for Shard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.k, self.n)
    }
}

impl FromStr for Shard {
    type Err = ShardError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let error = |why: &str| ShardError {
            given: s.to_string(),
            why: why.to_string(),
        };
        let (k, n) = s
            .split_once('/')
            .ok_or_else(|| error("write K/N, e.g. 2/4 for the second of four slices"))?;
        let number = |part: &str| {
            part.trim()
                .parse::<u64>()
                .map_err(|_| error("K and N must be whole numbers, e.g. 2/4"))
        };
        let (k, n) = (number(k)?, number(n)?);
        if n == 0 {
            return Err(error("N must be at least 1"));
        }
        Shard::new(k, n).ok_or_else(|| error("K must be between 1 and N"))
    }
}

/// Counts over the cases run so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Summary {
    /// Random cases replayed (not counting shrinking).
    pub cases: u64,
    /// Every replay, shrinking and confirmation included.
    pub replays: u64,
    /// Distinct interleavings among the cases: distinct sequences of (user, event kind) in their
    /// traces, times left out.
    pub interleavings: u64,
}

/// How a search ended.
#[derive(Debug, Clone)]
pub enum Outcome {
    /// No case violated an invariant.
    Held(Summary),
    /// A case did; here is its smallest form.
    Found(Box<Found>),
}

/// One endpoint's verdict on the found scenario, replayed as written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Replayed {
    /// The endpoint.
    pub endpoint: EndpointKind,
    /// Its verdict.
    pub verdict: Verdict,
    /// Its first violation's invariant, if any.
    pub first: Option<Invariant>,
}

/// A violation, shrunk.
#[derive(Debug, Clone)]
pub struct Found {
    /// The search that found it.
    pub options: Options,
    /// The index of the random case that first broke the invariant.
    pub case: u64,
    /// The invariant that case broke first, and that shrinking kept broken.
    pub invariant: Invariant,
    /// The smallest scenario found, named, with the `[expect]` its replays confirmed.
    pub scenario: Scenario,
    /// The explored endpoint's violations on [`Found::scenario`].
    pub violations: Vec<Violation>,
    /// Every endpoint's verdict on [`Found::scenario`].
    pub replayed: Vec<Replayed>,
    /// Users and messages (chats + pushes) of the random case before shrinking.
    pub original_size: (usize, usize),
    /// Replays spent shrinking.
    pub shrink_replays: u64,
    /// Counts up to and including this case.
    pub summary: Summary,
}

impl Found {
    /// The scenario file: a comment saying what broke, how it was found and how to find it
    /// again, then the scenario with its confirmed `[expect]`.
    pub fn to_toml(&self) -> String {
        let o = &self.options;
        let mut comment = format!(
            "Found by `racegate explore`: {} violates {}.\n",
            o.endpoint, self.invariant
        );
        if let Some(v) = self
            .violations
            .iter()
            .find(|v| v.invariant == self.invariant)
        {
            comment.push_str(&format!("  {v}\n"));
        }
        let (users, messages) = self.original_size;
        comment.push_str(&format!(
            "Case {} of seed {}, shrunk in {} replays from {users} user(s) and {messages} \
             message(s).\nSearch: {}\nReplayed as written: {}.\n",
            self.case,
            o.seed,
            self.shrink_replays,
            o.command(),
            self.replayed
                .iter()
                .map(|r| match r.first {
                    Some(i) => format!("{} {} ({i})", r.endpoint, r.verdict),
                    None => format!("{} {}", r.endpoint, r.verdict),
                })
                .collect::<Vec<_>>()
                .join(", ")
        ));
        if o.endpoint != EndpointKind::StateMachine
            && !self
                .scenario
                .expect
                .contains_key(&EndpointKind::StateMachine)
        {
            comment.push_str(
                "state-machine fails this scenario too: a bug in the fix, so [expect] does not \
                 gate it.\n",
            );
        }
        scenario::to_toml(&self.scenario, &comment)
    }

    /// True when `state-machine` fails the found scenario: a bug in the fix, whichever endpoint
    /// was explored.
    pub fn breaks_the_fix(&self) -> bool {
        self.replayed
            .iter()
            .any(|r| r.endpoint == EndpointKind::StateMachine && r.verdict == Verdict::Fail)
    }
}

/// Why a search could not run.
#[derive(Debug, thiserror::Error)]
pub enum ExploreError {
    /// A replay could not run.
    #[error(transparent)]
    Run(#[from] RunError),
    /// The subject the search runs against (an app) could not run a case.
    #[error("{0}")]
    Subject(String),
    /// The strategy could not produce a case (a bug in the search space).
    #[error("case {case}: the search space produced no scenario: {reason}")]
    Strategy {
        /// The case index.
        case: u64,
        /// proptest's words.
        reason: String,
    },
    /// A replay panicked: a bug in the harness or an endpoint, not a violation.
    #[error(
        "case {case}: a replay panicked: {message}\nthe smallest scenario that panics:\n{scenario}"
    )]
    Panicked {
        /// The case index.
        case: u64,
        /// The panic's message.
        message: String,
        /// The smallest scenario that panics, as a file.
        scenario: String,
    },
    /// The shrunk scenario did not fail again when replayed: replay is not deterministic.
    #[error(
        "case {case}: the shrunk scenario no longer violates {invariant} on {endpoint} when \
         replayed again; replay is not deterministic"
    )]
    NotReproducible {
        /// The case index.
        case: u64,
        /// The endpoint.
        endpoint: EndpointKind,
        /// The invariant.
        invariant: Invariant,
    },
}

/// The 32-byte ChaCha key of case `case` of seed `seed`. Keying the cipher with both numbers
/// gives every case its own stream, whatever ran before it.
pub fn case_seed(seed: u64, case: u64) -> [u8; 32] {
    let mut key = *b"racegate-explore/seed...case....";
    key[..8].copy_from_slice(&seed.to_le_bytes());
    key[16..24].copy_from_slice(&case.to_le_bytes());
    key
}

/// The scenario of case `case` of seed `seed`, as the search draws it (before any shrinking).
pub fn draw(seed: u64, case: u64, users: UserRange) -> Result<Scenario, ExploreError> {
    let strategy = scenarios(users);
    let mut runner = runner(&config(1), seed, case);
    strategy
        .new_tree(&mut runner)
        .map(|tree| tree.current())
        .map_err(|reason| ExploreError::Strategy {
            case,
            reason: reason.to_string(),
        })
}

/// Runs the cases of `options.shard`, calling `progress` with the number of cases done after
/// each; stops at the first violation and shrinks it.
pub fn explore(options: &Options, progress: &mut dyn FnMut(u64)) -> Result<Outcome, ExploreError> {
    explore_jobs(options, 1, progress)
}

/// How many cases the workers of [`explore_jobs`] share out before the results are folded in
/// case order: small enough that a found case stops the search soon, large enough that waiting
/// for the slowest case of a chunk costs little.
const CHUNK: u64 = 256;

/// [`explore`] on `jobs` threads. The answer is the single-threaded one, byte for byte: cases are
/// handed out in chunks, each chunk's results are folded in case order, and the lowest failing
/// case wins, with the counts of exactly the cases up to it. (Each case draws from its own RNG,
/// keyed by the seed and its index, so which thread runs it changes nothing.)
pub fn explore_jobs(
    options: &Options,
    jobs: usize,
    progress: &mut dyn FnMut(u64),
) -> Result<Outcome, ExploreError> {
    let plan = Plan {
        cases: options.cases,
        seed: options.seed,
        shard: options.shard,
        strategy: &|| scenarios(options.users),
    };
    let endpoint = options.endpoint;
    let mut subjects: Vec<EndpointSubject> = (0..jobs.max(1))
        .map(|_| EndpointSubject(endpoint))
        .collect();
    match search(&plan, &mut subjects, progress)? {
        Searched::Held(summary) => Ok(Outcome::Held(summary)),
        Searched::Failed(failure) => {
            let found = confirm(options, *failure)?;
            Ok(Outcome::Found(Box::new(found)))
        }
    }
}

/// What a search runs each case against: racegate's own endpoints in virtual-time replay, or
/// (`racegate explore --app`) a team's app. One per worker; each runs its cases one at a time.
pub trait Subject: Send {
    /// Runs `scenario`: its violations, sorted by time, and its interleaving's signature. An
    /// error ends the search (it is not a verdict).
    fn run(&mut self, scenario: &Scenario) -> Result<Ran, ExploreError>;
}

/// One case as a [`Subject`] ran it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ran {
    /// Every violation, sorted by time.
    pub violations: Vec<Violation>,
    /// The interleaving (see [`signature`]), for the count of distinct ones.
    pub signature: u64,
}

/// racegate's endpoint `0`, replayed in virtual time.
pub struct EndpointSubject(pub EndpointKind);

impl Subject for EndpointSubject {
    fn run(&mut self, scenario: &Scenario) -> Result<Ran, ExploreError> {
        let outcome = replay(scenario, self.0)?;
        Ok(Ran {
            signature: signature(&outcome.trace),
            violations: outcome.violations,
        })
    }
}

/// What to search, whatever the subject: the cases, their seed and shard, and where they are
/// drawn from (a strategy is made per worker: proptest's are not shared across threads).
pub struct Plan<'a> {
    /// Cases in the whole campaign (every shard together).
    pub cases: u64,
    /// Chooses the cases.
    pub seed: u64,
    /// Which slice of them this run covers.
    pub shard: Shard,
    /// Makes the strategy the cases are drawn from.
    pub strategy: &'a (dyn Fn() -> BoxedStrategy<Scenario> + Sync),
}

/// How a search ended.
#[derive(Debug, Clone)]
pub enum Searched {
    /// No case broke an invariant.
    Held(Summary),
    /// The lowest failing case, shrunk.
    Failed(Box<Failure>),
}

/// The lowest failing case of a search, shrunk to the smallest scenario that still breaks the
/// same invariant.
#[derive(Debug, Clone)]
pub struct Failure {
    /// Its index.
    pub case: u64,
    /// The invariant the random case broke first, which shrinking kept broken.
    pub invariant: Invariant,
    /// The shrunk scenario.
    pub minimal: Scenario,
    /// Users and messages before shrinking.
    pub original_size: (usize, usize),
    /// Runs spent shrinking.
    pub shrink_replays: u64,
    /// The counts of the cases up to and including this one.
    pub summary: Summary,
}

/// Runs `plan`'s cases on `subjects.len()` workers (one subject each); stops at the lowest
/// failing case and shrinks it. The answer does not depend on the number of workers.
pub fn search<S: Subject>(
    plan: &Plan<'_>,
    subjects: &mut [S],
    progress: &mut dyn FnMut(u64),
) -> Result<Searched, ExploreError> {
    let mut fold = Fold::default();
    let jobs = subjects.len();
    if jobs <= 1 {
        let Some(subject) = subjects.first_mut() else {
            return Ok(Searched::Held(fold.summary));
        };
        let strategy = (plan.strategy)();
        let config = config(plan.cases);
        for case in plan.shard.cases(plan.cases) {
            let result = run_case(plan.seed, &strategy, &config, case, subject);
            if let Some(end) = fold.add(case, result)? {
                return Ok(end);
            }
            progress(fold.summary.cases);
        }
        return Ok(Searched::Held(fold.summary));
    }
    let total = plan.shard.len(plan.cases);
    let nth = |position: u64| plan.shard.k - 1 + position * plan.shard.n;
    let mut from = 0;
    while from < total {
        let to = (from + CHUNK * jobs as u64).min(total);
        let next = AtomicU64::new(from);
        // The lowest position known to fail: no case after it can be the answer, so none is
        // started (a case costs microseconds in a replay but milliseconds against an app, and
        // every failing one is shrunk).
        let lowest_failure = AtomicU64::new(u64::MAX);
        let results: Vec<Mutex<Option<CaseResult>>> =
            (from..to).map(|_| Mutex::new(None)).collect();
        std::thread::scope(|scope| {
            for subject in subjects.iter_mut() {
                let (next, results, lowest_failure) = (&next, &results, &lowest_failure);
                scope.spawn(move || {
                    let strategy = (plan.strategy)();
                    let config = config(plan.cases);
                    loop {
                        let position = next.fetch_add(1, Ordering::Relaxed);
                        if position >= to || position > lowest_failure.load(Ordering::Relaxed) {
                            return;
                        }
                        let result =
                            run_case(plan.seed, &strategy, &config, nth(position), subject);
                        if result.failed() {
                            lowest_failure.fetch_min(position, Ordering::Relaxed);
                        }
                        let slot = &results[(position - from) as usize];
                        *slot.lock().unwrap_or_else(|p| p.into_inner()) = Some(result);
                    }
                });
            }
        });
        for (i, slot) in results.into_iter().enumerate() {
            let result = slot.into_inner().unwrap_or_else(|p| p.into_inner()).ok_or(
                ExploreError::Strategy {
                    case: nth(from + i as u64),
                    reason: "a worker thread stopped before running this case".into(),
                },
            )?;
            if let Some(end) = fold.add(nth(from + i as u64), result)? {
                return Ok(end);
            }
        }
        progress(fold.summary.cases);
        from = to;
    }
    Ok(Searched::Held(fold.summary))
}

impl CaseResult {
    /// True when the case broke an invariant (or could not run): the search ends at or before
    /// it.
    fn failed(&self) -> bool {
        match self {
            CaseResult::Done { probe, failure } => {
                failure.is_some() || probe.error.borrow().is_some()
            }
            CaseResult::Error(_) => true,
        }
    }
}

/// What one case did.
enum CaseResult {
    /// It held (or its replay failed, which `error` reports).
    Done {
        probe: Probe,
        failure: Option<Box<(String, Scenario)>>,
    },
    /// proptest could not run it.
    Error(ExploreError),
}

/// Runs one case: draw it from its own RNG, run it, shrink it if it breaks an invariant.
fn run_case<S: Subject>(
    seed: u64,
    strategy: &impl Strategy<Value = Scenario>,
    config: &Config,
    case: u64,
    subject: &mut S,
) -> CaseResult {
    let mut runner = runner(config, seed, case);
    let tree = match strategy.new_tree(&mut runner) {
        Ok(tree) => tree,
        Err(reason) => {
            return CaseResult::Error(ExploreError::Strategy {
                case,
                reason: reason.to_string(),
            });
        }
    };
    let probe = Probe::default();
    let subject = RefCell::new(subject);
    let result = runner.run_one(tree, |s| probe.test(&s, &mut **subject.borrow_mut()));
    let failure = match result {
        Ok(_) => None,
        Err(TestError::Fail(reason, minimal)) => Some(Box::new((reason.to_string(), minimal))),
        Err(TestError::Abort(reason)) => {
            // Only rejections abort, and no strategy here rejects.
            return CaseResult::Error(ExploreError::Strategy {
                case,
                reason: reason.to_string(),
            });
        }
    };
    CaseResult::Done { probe, failure }
}

/// The results so far, folded in case order.
#[derive(Default)]
struct Fold {
    summary: Summary,
    // Only counted, never iterated.
    seen: BTreeSet<u64>,
}

impl Fold {
    /// Adds case `case`'s result; `Some` when the search ends here.
    fn add(&mut self, case: u64, result: CaseResult) -> Result<Option<Searched>, ExploreError> {
        let (probe, failure) = match result {
            CaseResult::Done { probe, failure } => (probe, failure),
            CaseResult::Error(e) => return Err(e),
        };
        if let Some(e) = probe.error.take() {
            return Err(e);
        }
        self.summary.cases += 1;
        self.summary.replays += probe.replays.get();
        if let Some(signature) = probe.signature.get() {
            self.seen.insert(signature);
        }
        self.summary.interleavings = self.seen.len() as u64;
        let Some(failed) = failure else {
            return Ok(None);
        };
        let (reason, minimal) = *failed;
        let Some(invariant) = probe.target.get() else {
            return Err(ExploreError::Panicked {
                case,
                message: reason,
                scenario: scenario::to_toml(&minimal, ""),
            });
        };
        Ok(Some(Searched::Failed(Box::new(Failure {
            case,
            invariant,
            minimal,
            original_size: probe.original_size.get(),
            shrink_replays: probe.replays.get().saturating_sub(1),
            summary: self.summary,
        }))))
    }
}

/// A proptest config that depends on nothing but its arguments: no failure persistence, no
/// wall-clock shrink limit, no result cache, ChaCha.
fn config(cases: u64) -> Config {
    Config {
        cases: u32::try_from(cases).unwrap_or(u32::MAX),
        failure_persistence: None,
        rng_algorithm: RngAlgorithm::ChaCha,
        max_shrink_iters: MAX_SHRINK_REPLAYS,
        max_shrink_time: 0,
        result_cache: noop_result_cache,
        verbose: 0,
        source_file: None,
        test_name: None,
        ..Config::default()
    }
}

fn runner(config: &Config, seed: u64, case: u64) -> TestRunner {
    let rng = TestRng::from_seed(RngAlgorithm::ChaCha, &case_seed(seed, case));
    TestRunner::new_with_rng(config.clone(), rng)
}

/// The property one case checks, with what it saw. proptest calls it with the random case
/// first, then with each shrink candidate.
#[derive(Default)]
struct Probe {
    /// The invariant the random case broke first; shrinking must keep this one broken.
    target: Cell<Option<Invariant>>,
    replays: Cell<u64>,
    /// The random case's interleaving.
    signature: Cell<Option<u64>>,
    /// Users and messages of the random case.
    original_size: Cell<(usize, usize)>,
    error: RefCell<Option<ExploreError>>,
}

impl Probe {
    fn test(&self, s: &Scenario, subject: &mut dyn Subject) -> Result<(), TestCaseError> {
        let first = self.replays.get() == 0;
        self.replays.set(self.replays.get() + 1);
        let outcome = match panic::catch_unwind(AssertUnwindSafe(|| subject.run(s))) {
            Ok(Ok(outcome)) => outcome,
            Ok(Err(e)) => {
                // Counted as a pass so proptest stops here; explore() reports the error.
                self.error.borrow_mut().get_or_insert(e);
                return Ok(());
            }
            // A panic is a bug in the harness; shrink toward it only if the random case panicked.
            Err(panic) if first => {
                let message = panic
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "a replay panicked".into());
                return Err(TestCaseError::fail(message));
            }
            Err(_) => return Ok(()),
        };
        if first {
            self.signature.set(Some(outcome.signature));
            self.original_size.set(size(s));
        }
        let broken = match self.target.get() {
            None if first => outcome.violations.first(),
            // The random case panicked: only panics count while shrinking it.
            None => None,
            Some(target) => outcome.violations.iter().find(|v| v.invariant == target),
        };
        match broken {
            None => Ok(()),
            Some(v) => {
                if first {
                    self.target.set(Some(v.invariant));
                }
                Err(TestCaseError::fail(v.to_string()))
            }
        }
    }
}

/// Users, and chats plus pushes.
fn size(s: &Scenario) -> (usize, usize) {
    let messages = s.users.iter().map(|u| u.sends.len() + u.pushes.len()).sum();
    (s.users.len(), messages)
}

/// Replays the shrunk scenario on every endpoint and names it; its `[expect]` records the
/// explored endpoint's failure and, when its replay passes, `state-machine = "pass"`.
fn confirm(options: &Options, failure: Failure) -> Result<Found, ExploreError> {
    let Failure {
        case,
        invariant,
        mut minimal,
        original_size,
        shrink_replays,
        mut summary,
    } = failure;
    let endpoint = options.endpoint;
    minimal.name = format!("explore-{endpoint}-seed-{}-case-{case}", options.seed);
    minimal.description = Some(format!(
        "{endpoint} violates {invariant} (racegate explore)"
    ));
    let mut replayed = Vec::new();
    let mut violations = Vec::new();
    for kind in EndpointKind::ALL {
        let outcome = replay(&minimal, kind)?;
        summary.replays += 1;
        replayed.push(Replayed {
            endpoint: kind,
            verdict: outcome.verdict,
            first: outcome.violations.first().map(|v| v.invariant),
        });
        if kind == endpoint {
            violations = outcome.violations;
        }
    }
    if !violations.iter().any(|v| v.invariant == invariant) {
        return Err(ExploreError::NotReproducible {
            case,
            endpoint,
            invariant,
        });
    }
    let mut expect = IndexMap::new();
    expect.insert(endpoint, Verdict::Fail);
    let fix_passes = replayed
        .iter()
        .any(|r| r.endpoint == EndpointKind::StateMachine && r.verdict == Verdict::Pass);
    if endpoint != EndpointKind::StateMachine && fix_passes {
        expect.insert(EndpointKind::StateMachine, Verdict::Pass);
    }
    minimal.expect = expect;
    Ok(Found {
        options: *options,
        case,
        invariant,
        scenario: minimal,
        violations,
        replayed,
        original_size,
        shrink_replays,
        summary,
    })
}

/// The interleaving of a trace: its sequence of (user, event kind), times and texts left out.
/// Users are numbered by first appearance, so two runs that differ only in ids hash the same.
pub fn signature(trace: &[TraceEvent]) -> u64 {
    let mut users: Vec<&str> = Vec::new();
    let mut h = Fnv1a::default();
    for e in trace {
        let user = match users.iter().position(|u| *u == &*e.user) {
            Some(i) => i,
            None => {
                users.push(&e.user);
                users.len() - 1
            }
        };
        user.hash(&mut h);
        std::mem::discriminant(&e.kind).hash(&mut h);
        match &e.kind {
            EventKind::State { state } => state.hash(&mut h),
            EventKind::ClientRecv { frame } => std::mem::discriminant(frame).hash(&mut h),
            _ => {}
        }
    }
    h.finish()
}
