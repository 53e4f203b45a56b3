//! Scenario replay over real sockets: the runner's schedule, a real clock, loopback TCP.
//!
//! Each run gets its own current-thread runtime, not paused, with the server and the clients on
//! it. One thread keeps the order in which a connection's tasks record what they did the same as
//! in virtual time (an endpoint records `processing_ready` before its handler can run), so the
//! oracle reads the trace the same way; what changes is that every delay is real and the bytes go
//! through the kernel.
//!
//! A real clock runs every sleep a little late, so a run whose verdict sits on a timing tie (two
//! equal-length chains of sleeps racing, as `fifo-across-flush` has for `partial`) is decided by
//! jitter. [`on_timing_tie`] finds those in virtual time, by nudging each server phase
//! [`TIE_MS`] either way; [`replay_ws`] reports them ungated rather than pretending either verdict
//! is the real one.
//!
//! Most of a suite's time is sleeping, so [`replay_ws_suite`] runs many at once; the price is a
//! busier machine and later timers. [`timing_margin`] measures, again in virtual time, how far
//! each run's timings (server phases and every user's connect, close, chats and pushes) can
//! move before its outcome does; runs that nothing up to [`WIDE_MARGIN_MS`] changes go many at
//! once, the others a few at a time alongside, and all start [`START_PACE_MS`] apart.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use racegate_replay::runner::{self, RunOutcome};
use racegate_replay::trace::TraceEvent;
use racegate_replay::{EndpointKind, Scenario};

use crate::client::WsConnector;
use crate::socket::Limits;
use crate::{NetError, server};

/// How far a real clock's jitter is assumed to move a phase (timer granularity plus loopback).
pub const TIE_MS: u64 = 2;

/// Replays `scenario` against `endpoint` over loopback and judges the trace. A run on a timing
/// tie ([`on_timing_tie`]) comes back with no expectation: reported, not gated.
pub fn replay_ws(
    scenario: &Scenario,
    endpoint: EndpointKind,
    limits: Limits,
) -> Result<RunOutcome, NetError> {
    let (trace, elapsed_ms) = record_ws(scenario, endpoint, limits)?;
    let tie = on_timing_tie(scenario, endpoint, TIE_MS);
    Ok(judged(scenario, endpoint, trace, elapsed_ms, tie))
}

/// A run's trace and its wall-clock milliseconds.
type Recorded = (Vec<TraceEvent>, u64);

/// The real part of a run: its own runtime, server and clients.
fn record_ws(
    scenario: &Scenario,
    endpoint: EndpointKind,
    limits: Limits,
) -> Result<Recorded, NetError> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(NetError::Runtime)?;
    let recorded = runtime.block_on(async {
        let listener = server::bind(SocketAddr::from((Ipv4Addr::LOCALHOST, 0))).await?;
        let connector = WsConnector::new(listener, limits).map_err(NetError::Io)?;
        Ok::<_, NetError>(runner::drive(scenario, endpoint, Arc::new(connector)).await)
    })?;
    // Dropping the runtime ends whatever is still running and closes its sockets.
    drop(runtime);
    Ok(recorded)
}

/// A recorded run judged; a run on a timing tie comes back with no expectation.
fn judged(
    scenario: &Scenario,
    endpoint: EndpointKind,
    trace: Vec<TraceEvent>,
    elapsed_ms: u64,
    tie: bool,
) -> RunOutcome {
    let mut outcome = runner::judge(scenario, endpoint, trace, elapsed_ms);
    outcome.real_time = true;
    if tie {
        outcome.expected = None;
    }
    outcome
}

/// Replays every `(scenario, endpoint)` pair, `jobs` at a time, each on its own thread; results
/// come back in input order.
pub fn replay_ws_all(
    runs: &[(&Scenario, EndpointKind)],
    jobs: usize,
    limits: Limits,
) -> Vec<Result<RunOutcome, NetError>> {
    let all: Vec<usize> = (0..runs.len()).collect();
    pool(&all, jobs, None, |i| {
        let (scenario, endpoint) = runs[i];
        replay_ws(scenario, endpoint, limits)
    })
}

/// Runs whose outcome no timing nudge up to this many milliseconds changes ([`timing_margin`])
/// are the ones [`replay_ws_suite`] replays all together.
pub const WIDE_MARGIN_MS: u64 = 50;

/// How many runs with a wide timing margin [`replay_ws_suite`] replays at once, at most.
pub const WIDE_JOBS: usize = 32;

/// [`replay_ws_suite`] starts one run at a time, this far apart.
pub const START_PACE_MS: u64 = 25;

/// Replays every `(scenario, endpoint)` pair like [`replay_ws_all`], in a fraction of the time.
///
/// Most of a run is sleeping, so many can share two cores; what they cost each other is
/// lateness on a real clock. Before any socket opens, each run's [`timing_margin`] and timing
/// tie are measured in virtual time (`jobs` at a time, at least two). A run whose outcome no
/// nudge up to [`WIDE_MARGIN_MS`] changes goes in the wide pool, up to [`WIDE_JOBS`] at once,
/// with the runs on a tie, which are reported ungated whatever jitter decides; the rest go
/// `jobs` at a time alongside, as [`replay_ws_all`] runs everything.
///
/// Lateness comes mostly from runs starting together: each start (a runtime, a listener, the
/// first connects) is a burst of work, and a few dozen at once stalled every run's first timers
/// by up to ~180 ms on a loaded 2-core machine. So runs start one at a time, [`START_PACE_MS`]
/// apart (the sensitive pool first), which kept the first connect within ~20 ms of its schedule
/// there. Nothing else runs while runs record: they are judged once all have finished. Results
/// come back in input order.
pub fn replay_ws_suite(
    runs: &[(&Scenario, EndpointKind)],
    jobs: usize,
    limits: Limits,
) -> Vec<Result<RunOutcome, NetError>> {
    let all: Vec<usize> = (0..runs.len()).collect();
    let plans = pool(&all, jobs.max(2), None, |i| {
        let (scenario, endpoint) = runs[i];
        let tie = on_timing_tie(scenario, endpoint, TIE_MS);
        let wide = tie || timing_margin(scenario, endpoint).is_none();
        (tie, wide)
    });
    let (wide, close): (Vec<usize>, Vec<usize>) = all.iter().partition(|&&i| plans[i].1);
    let record = |i: usize| {
        let (scenario, endpoint) = runs[i];
        record_ws(scenario, endpoint, limits)
    };
    let pacer = Pacer::new(Duration::from_millis(START_PACE_MS));
    let (close_traces, wide_traces) = std::thread::scope(|scope| {
        let close_pool = scope.spawn(|| pool(&close, jobs, Some(&pacer), record));
        // The sensitive runs take the first start slots.
        if !close.is_empty() {
            pacer.wait_for_first();
        }
        let wide = pool(&wide, WIDE_JOBS, Some(&pacer), record);
        match close_pool.join() {
            Ok(close) => (close, wide),
            Err(panic) => std::panic::resume_unwind(panic),
        }
    });
    let mut recorded: Vec<Option<Result<Recorded, NetError>>> =
        (0..runs.len()).map(|_| None).collect();
    for (i, r) in close
        .iter()
        .zip(close_traces)
        .chain(wide.iter().zip(wide_traces))
    {
        recorded[*i] = Some(r);
    }
    recorded
        .into_iter()
        .enumerate()
        .map(|(i, r)| {
            let (scenario, endpoint) = runs[i];
            let (trace, elapsed_ms) = r.unwrap_or(Err(NetError::Lost))?;
            Ok(judged(scenario, endpoint, trace, elapsed_ms, plans[i].0))
        })
        .collect()
}

/// Hands out start times at least `pace` apart, across threads.
struct Pacer {
    pace: Duration,
    /// The earliest the next start may be, and how many starts were handed out.
    next: Mutex<(std::time::Instant, usize)>,
    first: std::sync::Condvar,
}

impl Pacer {
    fn new(pace: Duration) -> Pacer {
        Pacer {
            pace,
            next: Mutex::new((std::time::Instant::now(), 0)),
            first: std::sync::Condvar::new(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, (std::time::Instant, usize)> {
        match self.next.lock() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    /// Blocks (real time: this paces real runs) until this caller's start slot.
    fn wait(&self) {
        let slot = {
            let mut next = self.lock();
            let slot = next.0.max(std::time::Instant::now());
            *next = (slot + self.pace, next.1 + 1);
            self.first.notify_all();
            slot
        };
        let now = std::time::Instant::now();
        if slot > now {
            std::thread::sleep(slot - now); // real-time: spacing out real runs' starts
        }
    }

    /// Blocks until some caller has taken a start slot.
    fn wait_for_first(&self) {
        let mut next = self.lock();
        while next.1 == 0 {
            next = match self.first.wait(next) {
                Ok(guard) => guard,
                Err(poisoned) => poisoned.into_inner(),
            };
        }
    }
}

/// `f(i)` for each `i` in `which`, `jobs` at a time, each worker on its own thread, each call
/// started when `pacer` says; the results in `which`'s order. A panic in `f` propagates (the
/// scope re-raises it).
fn pool<T: Send>(
    which: &[usize],
    jobs: usize,
    pacer: Option<&Pacer>,
    f: impl Fn(usize) -> T + Sync,
) -> Vec<T> {
    let next = Mutex::new(0usize);
    let results: Vec<Mutex<Option<T>>> = which.iter().map(|_| Mutex::new(None)).collect();
    let take = || -> Option<usize> {
        let mut n = match next.lock() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        };
        let k = *n;
        *n += 1;
        (k < which.len()).then_some(k)
    };
    std::thread::scope(|scope| {
        for _ in 0..jobs.clamp(1, which.len().max(1)) {
            scope.spawn(|| {
                while let Some(k) = take() {
                    if let Some(pacer) = pacer {
                        pacer.wait();
                    }
                    let value = f(which[k]);
                    if let Ok(mut slot) = results[k].lock() {
                        *slot = Some(value);
                    }
                }
            });
        }
    });
    results
        .into_iter()
        .map(|slot| {
            match slot.into_inner() {
                Ok(v) => v,
                Err(poisoned) => poisoned.into_inner(),
            }
            .unwrap_or_else(|| unreachable!("every item is taken, and a panic propagates"))
        })
        .collect()
}

/// The verdict this run gets in virtual time with one server phase, or one client's close,
/// `by_ms` earlier or later, each in turn: the verdicts a real clock's jitter can reach.
fn nudged_verdicts(
    scenario: &Scenario,
    endpoint: EndpointKind,
    by_ms: u64,
) -> Vec<racegate_replay::Verdict> {
    type Slot = fn(&mut racegate_replay::scenario::ServerConfig) -> &mut u64;
    let slots: [Slot; 4] = [
        |c| &mut c.accept_ms,
        |c| &mut c.auth_ms,
        |c| &mut c.services_ms,
        |c| &mut c.register_ms,
    ];
    let mut out = Vec::new();
    for slot in slots {
        // A zero phase is no sleep at all, so a real clock cannot make it late.
        if *slot(&mut scenario.server.clone()) == 0 {
            continue;
        }
        for up in [false, true] {
            let mut nudged = scenario.clone();
            let ms = slot(&mut nudged.server);
            *ms = if up {
                ms.saturating_add(by_ms)
            } else {
                ms.saturating_sub(by_ms)
            };
            if let Ok(o) = racegate_replay::replay(&nudged, endpoint) {
                out.push(o.verdict);
            }
        }
    }
    // A client's close is timed from its connect, its chats from the open a real handshake
    // delivers a little later: a close that ties with a chat is decided by that lag.
    for (i, user) in scenario.users.iter().enumerate() {
        let Some(close_ms) = user.close_ms else {
            continue;
        };
        for nudged_ms in [
            close_ms.saturating_sub(by_ms),
            close_ms.saturating_add(by_ms),
        ] {
            let mut nudged = scenario.clone();
            nudged.users[i].close_ms = Some(nudged_ms);
            if let Ok(o) = racegate_replay::replay(&nudged, endpoint) {
                out.push(o.verdict);
            }
        }
    }
    out
}

/// True when this run's virtual-time verdict sits on a timing tie: nudging one server phase by
/// `by_ms` either way flips it. Over real sockets, where every sleep runs a little late, such a
/// run's verdict is decided by jitter, so it cannot be gated.
pub fn on_timing_tie(scenario: &Scenario, endpoint: EndpointKind, by_ms: u64) -> bool {
    let Ok(base) = racegate_replay::replay(scenario, endpoint) else {
        return false;
    };
    nudged_verdicts(scenario, endpoint, by_ms)
        .into_iter()
        .any(|v| v != base.verdict)
}

/// The nudges [`timing_margin`] tries, smallest first.
pub const MARGIN_LADDER_MS: [u64; 5] = [TIE_MS, 5, 10, 20, WIDE_MARGIN_MS];

/// What a run concluded, as the gate compares it: the verdict and the invariants violated.
fn signature(o: &RunOutcome) -> (racegate_replay::Verdict, Vec<racegate_replay::Invariant>) {
    let mut invariants: Vec<_> = o.violations.iter().map(|v| v.invariant).collect();
    invariants.sort_unstable();
    invariants.dedup();
    (o.verdict, invariants)
}

/// Every scenario the run would be with one timing moved `by_ms` earlier or later: each
/// non-zero server phase, and each user's connect, close, chats and pushes.
fn nudged_scenarios(scenario: &Scenario, by_ms: u64) -> Vec<Scenario> {
    type Slot = fn(&mut racegate_replay::scenario::ServerConfig) -> &mut u64;
    let slots: [Slot; 4] = [
        |c| &mut c.accept_ms,
        |c| &mut c.auth_ms,
        |c| &mut c.services_ms,
        |c| &mut c.register_ms,
    ];
    let shift = |ms: u64, up: bool| {
        if up {
            ms.saturating_add(by_ms)
        } else {
            ms.saturating_sub(by_ms)
        }
    };
    let mut out = Vec::new();
    for up in [false, true] {
        for slot in slots {
            if *slot(&mut scenario.server.clone()) == 0 {
                continue;
            }
            let mut nudged = scenario.clone();
            let ms = slot(&mut nudged.server);
            *ms = shift(*ms, up);
            out.push(nudged);
        }
        for (i, user) in scenario.users.iter().enumerate() {
            let mut nudged = scenario.clone();
            nudged.users[i].connect_ms = shift(user.connect_ms, up);
            out.push(nudged);
            if let Some(close_ms) = user.close_ms {
                let mut nudged = scenario.clone();
                nudged.users[i].close_ms = Some(shift(close_ms, up));
                out.push(nudged);
            }
            for j in 0..user.sends.len() {
                let mut nudged = scenario.clone();
                nudged.users[i].sends[j].at_ms = shift(user.sends[j].at_ms, up);
                out.push(nudged);
            }
            for j in 0..user.pushes.len() {
                let mut nudged = scenario.clone();
                nudged.users[i].pushes[j].at_ms = shift(user.pushes[j].at_ms, up);
                out.push(nudged);
            }
        }
    }
    out
}

/// How far this run's timings can move before its outcome (verdict and invariants) does, in
/// virtual time: the smallest nudge in [`MARGIN_LADDER_MS`] that changes it, or `None` when
/// none does.
pub fn timing_margin(scenario: &Scenario, endpoint: EndpointKind) -> Option<u64> {
    let base = signature(&racegate_replay::replay(scenario, endpoint).ok()?);
    MARGIN_LADDER_MS.into_iter().find(|by| {
        nudged_scenarios(scenario, *by)
            .iter()
            .any(|s| racegate_replay::replay(s, endpoint).is_ok_and(|o| signature(&o) != base))
    })
}

#[cfg(test)]
mod tests {
    // Here rather than beside the real-socket suite in tests/ws_replay.rs: these replays are
    // CPU work, and that suite's timers should not share the machine with them.
    use super::*;
    use racegate_replay::scenario;
    #[test]
    fn timing_margins_are_measured_in_virtual_time_and_find_the_ties_and_the_close_calls() {
        let scenarios = scenario::load_all(&[
            std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../scenarios")
        ])
        .unwrap();
        let margin = |name: &str, endpoint| {
            let s = scenarios.iter().find(|s| s.name == name).unwrap();
            timing_margin(s, endpoint)
        };
        // A tie flips at the smallest nudge.
        assert_eq!(
            margin("fifo-across-flush", EndpointKind::Partial),
            Some(TIE_MS)
        );
        // The staging race on the unfixed endpoint: moving one of its timings by 20 ms changes
        // which invariants it breaks, so it is replayed with the few, not the many.
        assert_eq!(
            margin("staging-user-101463487227881885914", EndpointKind::Unfixed),
            Some(20)
        );
        // The fix holds however its timings move.
        for s in &scenarios {
            assert_eq!(
                timing_margin(s, EndpointKind::StateMachine),
                None,
                "{}",
                s.name
            );
        }
    }
}
