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

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};

use racegate_replay::runner::{self, RunOutcome};
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
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(NetError::Runtime)?;
    let (trace, elapsed_ms) = runtime.block_on(async {
        let listener = server::bind(SocketAddr::from((Ipv4Addr::LOCALHOST, 0))).await?;
        let connector = WsConnector::new(listener, limits).map_err(NetError::Io)?;
        Ok::<_, NetError>(runner::drive(scenario, endpoint, Arc::new(connector)).await)
    })?;
    // Dropping the runtime ends whatever is still running and closes its sockets.
    drop(runtime);
    let mut outcome = runner::judge(scenario, endpoint, trace, elapsed_ms);
    outcome.real_time = true;
    if on_timing_tie(scenario, endpoint, TIE_MS) {
        outcome.expected = None;
    }
    Ok(outcome)
}

/// Replays every `(scenario, endpoint)` pair, `jobs` at a time, each on its own thread; results
/// come back in input order.
pub fn replay_ws_all(
    runs: &[(&Scenario, EndpointKind)],
    jobs: usize,
    limits: Limits,
) -> Vec<Result<RunOutcome, NetError>> {
    let next = Mutex::new(0usize);
    let results: Vec<Mutex<Option<Result<RunOutcome, NetError>>>> =
        runs.iter().map(|_| Mutex::new(None)).collect();
    let take = || -> Option<usize> {
        let mut n = match next.lock() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        };
        let i = *n;
        *n += 1;
        (i < runs.len()).then_some(i)
    };
    std::thread::scope(|scope| {
        for _ in 0..jobs.clamp(1, runs.len().max(1)) {
            scope.spawn(|| {
                while let Some(i) = take() {
                    let (scenario, endpoint) = runs[i];
                    let outcome = replay_ws(scenario, endpoint, limits);
                    if let Ok(mut slot) = results[i].lock() {
                        *slot = Some(outcome);
                    }
                }
            });
        }
    });
    results
        .into_iter()
        .map(|slot| {
            let taken = match slot.into_inner() {
                Ok(v) => v,
                Err(poisoned) => poisoned.into_inner(),
            };
            taken.unwrap_or(Err(NetError::Lost))
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
