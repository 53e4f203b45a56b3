//! A scenario's users against the server, on schedule, on a real clock: each user's client
//! connects at its `connect_ms`, sends its chats at their `at_ms` after open and closes at the
//! scenario's own horizon (or its `close_ms`); then [`check`](crate::check) judges the records.
//!
//! Pushes are server-side (the notifier inside racegate) and cannot be driven from outside, so a
//! scenario's `[[user.push]]` entries are skipped; the push frames a server sends anyway are
//! checked for their user and counted. `[expect]` does not apply either: the live server is what
//! is under test.

use std::path::PathBuf;
use std::time::Duration;

use racegate_replay::scenario::Scenario;
use racegate_replay::schedule::{self, Pushes};
use racegate_replay::{Indeterminate, Judgement, Unmatched, Violation};
use serde::Serialize;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::handshake::client::Request;

use crate::credentials::{ExtraHeader, Secrets, Tokens};
use crate::session::{self, Dial, Record, Schedule, Seen};
use crate::target::Target;
use crate::tls::{Tls, TlsOptions};
use crate::{ProbeError, check};

/// How long past its own timings a scenario may take before its connections are `stuck`, when
/// `--timeout-ms` is not given. Clients wait for their chats' answers up to then, so this is
/// what a correct but slow server (a cold CI runner, a staging deployment) gets: generous,
/// because a server that answers sooner ends the probe sooner.
pub const DEFAULT_GRACE_MS: u64 = 10_000;

/// What a probe concluded about one scenario.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ProbeVerdict {
    /// Exercised, and no invariant was violated.
    Pass,
    /// An invariant was violated.
    Fail,
    /// Nothing was exercised (every connection refused or closed before a chat, or no chat
    /// answered): no verdict either way. Fails the gate unless `--allow-inconclusive`.
    Inconclusive,
}

impl ProbeVerdict {
    /// `pass`, `fail` or `inconclusive`.
    pub const fn name(self) -> &'static str {
        match self {
            ProbeVerdict::Pass => "pass",
            ProbeVerdict::Fail => "fail",
            ProbeVerdict::Inconclusive => "inconclusive",
        }
    }
}

/// The clock a probe ran on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Clock {
    /// `--url`: a live server, wall-clock time.
    Real,
    /// `--app`: the app in-process, virtual time; the same scenario gives the same records.
    Virtual,
}

/// How a probe runs.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// The whole budget of one scenario, from its first connect; by default its own time plus
    /// [`DEFAULT_GRACE_MS`].
    pub timeout_ms: Option<u64>,
    /// TLS for a `wss://` target; by default the public and system roots, built per scenario.
    pub tls: Option<Tls>,
    /// Users' tokens for `{token}` (the environment is read too, where `token_env` says).
    pub tokens: Tokens,
    /// Headers added to every upgrade (`--header`, `--origin`).
    pub headers: Vec<ExtraHeader>,
}

impl Options {
    /// The budget for `scenario`.
    pub fn timeout_for(&self, scenario: &Scenario) -> u64 {
        self.timeout_ms
            .unwrap_or_else(|| own_ms(scenario) + DEFAULT_GRACE_MS)
    }
}

/// The result of probing one scenario.
#[derive(Debug, Clone, Serialize)]
pub struct ProbeOutcome {
    /// The scenario's name.
    pub scenario: String,
    /// Its file.
    pub file: PathBuf,
    /// `pass` when exercised and no invariant was violated; `inconclusive` when nothing was
    /// exercised, whatever the violations.
    pub verdict: ProbeVerdict,
    /// Why the run proves nothing, when it is inconclusive.
    pub inconclusive: Option<String>,
    /// Every violation, by time.
    pub violations: Vec<Violation>,
    /// Chats whose fate the probe cannot tell (an error close, a drop or the client's own
    /// scheduled close came before their answer): neither a pass nor a loss.
    pub indeterminate: Vec<Indeterminate>,
    /// Acks and events that matched no chat (each also among the violations, or, naming
    /// another user, `cross-user`'s), by user, then time.
    pub unmatched: Vec<Unmatched>,
    /// Push frames the clients received (each checked for its user).
    pub pushes: usize,
    /// What every client saw, by time.
    pub records: Vec<Record>,
    /// The scenario's own time: when its clients close unless the server is slower.
    pub own_ms: u64,
    /// Milliseconds the probe took, on its [`Clock`].
    pub elapsed_ms: f64,
    /// The budget it had.
    pub timeout_ms: u64,
    /// The clock `elapsed_ms` and every record's time are on.
    pub clock: Clock,
    /// Wall-clock milliseconds the probe took (the same as `elapsed_ms` on a real clock).
    #[serde(skip)]
    pub wall_ms: f64,
}

impl ProbeOutcome {
    /// Masks every text this outcome reports: what clients saw (a server may echo a
    /// credential in a frame or a close reason), the violations and the inconclusive reason.
    pub fn mask(&mut self, secrets: &Secrets) {
        if secrets.is_empty() {
            return;
        }
        let outcome = self;
        for r in &mut outcome.records {
            match &mut r.seen {
                Seen::Send { id } => secrets.mask_in(id),
                Seen::Unsent { id, reason } => {
                    secrets.mask_in(id);
                    secrets.mask_in(reason);
                }
                Seen::Recv { text } => secrets.mask_in(text),
                Seen::ServerClose { reason, .. } => secrets.mask_in(reason),
                Seen::Dropped { error } => secrets.mask_in(error),
                Seen::Timeout { waiting_for } => secrets.mask_in(waiting_for),
                Seen::AppMisuse { op, error } => {
                    secrets.mask_in(op);
                    secrets.mask_in(error);
                }
                Seen::AppRaised { error } => secrets.mask_in(error),
                Seen::AppHandlerPending { name } | Seen::AppTaskPending { name } => {
                    secrets.mask_in(name)
                }
                Seen::Connect
                | Seen::Open
                | Seen::Refused { .. }
                | Seen::RecvBinary { .. }
                | Seen::ClientClose
                | Seen::ClientDrop
                | Seen::CloseAnswered { .. } => {}
            }
        }
        for v in &mut outcome.violations {
            secrets.mask_in(&mut v.detail);
        }
        for u in &mut outcome.unmatched {
            secrets.mask_in(&mut u.reason);
            if let Some(id) = &mut u.id {
                secrets.mask_in(id);
            }
        }
        if let Some(why) = &mut outcome.inconclusive {
            secrets.mask_in(why);
        }
    }
}

/// When clients close, in milliseconds from the first connect: the replay's horizon
/// ([`schedule::horizon_ms`]) without pushes (a probe cannot issue them), with runs of the
/// protocol's own events.
pub fn own_ms(scenario: &Scenario) -> u64 {
    schedule::horizon_ms(scenario, Pushes::Ignored, scenario.protocol.events.len())
}

/// Each user's upgrade request, credentials filled in, and the secrets to mask: every token
/// resolved before anything is dialled, so a missing one is an error naming the user and where
/// it looked.
pub(crate) fn prepare(
    target: &Target,
    scenario: &Scenario,
    options: &Options,
) -> Result<(Vec<Request>, Secrets), ProbeError> {
    let needs_token =
        scenario.protocol.uses_token() || options.headers.iter().any(ExtraHeader::uses_token);
    let mut requests = Vec::with_capacity(scenario.users.len());
    let mut resolved = Vec::new();
    for user in &scenario.users {
        let bad = |reason: String| ProbeError::BadUser {
            file: scenario.file.display().to_string(),
            user: user.id.clone(),
            reason,
        };
        let token = if needs_token {
            Some(
                options
                    .tokens
                    .resolve(&user.id, &scenario.protocol)
                    .map_err(bad)?,
            )
        } else {
            None
        };
        let request = target
            .request(
                &user.id,
                token.as_deref(),
                &scenario.protocol,
                &options.headers,
            )
            .map_err(bad)?;
        requests.push(request);
        resolved.extend(token);
    }
    let secrets = Secrets::new(&options.tokens, resolved.iter().map(String::as_str));
    Ok((requests, secrets))
}

/// Probes `scenario` against `target` on the current runtime.
pub async fn probe_scenario(
    target: &Target,
    scenario: &Scenario,
    options: &Options,
) -> Result<ProbeOutcome, ProbeError> {
    let (requests, secrets) = prepare(target, scenario, options)?;
    let tls = match (&options.tls, target.is_tls()) {
        (_, false) => None,
        (Some(tls), true) => Some(tls.clone()),
        (None, true) => Some(Tls::new(&TlsOptions::default())?),
    };
    let own = own_ms(scenario);
    let timeout_ms = options.timeout_for(scenario);
    let origin = Instant::now();
    let deadline = origin + Duration::from_millis(timeout_ms);
    let after_last_send = Duration::from_millis(schedule::after_open_ms(
        scenario,
        scenario.protocol.events.len(),
    ));
    let mut tasks = tokio::task::JoinSet::new();
    let conns = scenario.connections();
    for (i, ((user, request), conn)) in scenario.users.iter().zip(requests).zip(conns).enumerate() {
        let close_at = origin
            + Duration::from_millis(match user.leave_ms() {
                Some(ms) => user.connect_ms + ms,
                None => own,
            });
        let schedule = Schedule {
            origin,
            close_at,
            deadline,
            after_last_send,
        };
        let (target, protocol, user) = (target.clone(), scenario.protocol.clone(), user.clone());
        let tls = tls.clone();
        tasks.spawn(async move {
            let dial = Dial {
                target: &target,
                tls: tls.as_ref(),
            };
            (
                i,
                session::run(dial, request, &protocol, &user, &conn, schedule).await,
            )
        });
    }
    let mut per_user: Vec<Vec<Record>> = vec![Vec::new(); scenario.users.len()];
    while let Some(joined) = tasks.join_next().await {
        // A session never panics on server input; a panic here is a bug worth seeing.
        let (i, result) = match joined {
            Ok(done) => done,
            Err(e) => std::panic::resume_unwind(e.into_panic()),
        };
        match result {
            Ok(records) => per_user[i] = records,
            Err(session::Failure::Unreachable(reason)) => {
                tasks.abort_all();
                return Err(ProbeError::Unreachable {
                    addr: target.addr_text(),
                    reason,
                });
            }
            Err(session::Failure::Tls(reason)) => {
                tasks.abort_all();
                return Err(ProbeError::Tls {
                    url: target.url().to_string(),
                    reason,
                });
            }
        }
    }
    let elapsed_ms = origin.elapsed().as_secs_f64() * 1000.0;
    let mut records: Vec<Record> = per_user.into_iter().flatten().collect();
    // Stable: one user's records keep their order on a tie.
    records.sort_by(|a, b| a.at_ms.total_cmp(&b.at_ms));
    let mut outcome = conclude(scenario, records, options, Clock::Real, elapsed_ms);
    // Judged on what the clients saw; reported with every token masked.
    outcome.mask(&secrets);
    Ok(outcome)
}

/// Judges one scenario's `records` (by time) into its outcome: the same for every transport.
pub(crate) fn conclude(
    scenario: &Scenario,
    records: Vec<Record>,
    options: &Options,
    clock: Clock,
    elapsed_ms: f64,
) -> ProbeOutcome {
    let reading = check::Reading::new(scenario, &records);
    let judgement = reading.judge();
    // What the app's own side showed (`--app`) is a finding however little the clients got to
    // do: an exception that escaped, a forbidden use of the socket, work left behind.
    let app_side = records.iter().any(|r| {
        matches!(
            r.seen,
            Seen::AppMisuse { .. }
                | Seen::AppRaised { .. }
                | Seen::AppHandlerPending { .. }
                | Seen::AppTaskPending { .. }
        )
    });
    let inconclusive = if app_side {
        None
    } else {
        reading
            .inconclusive()
            .or_else(|| reading.unanswered(&judgement))
    };
    let pushes = reading.pushes();
    let Judgement {
        violations,
        indeterminate,
        unmatched,
    } = judgement;
    ProbeOutcome {
        scenario: scenario.name.clone(),
        file: scenario.file.clone(),
        verdict: match (&inconclusive, violations.is_empty()) {
            (Some(_), _) => ProbeVerdict::Inconclusive,
            (None, true) => ProbeVerdict::Pass,
            (None, false) => ProbeVerdict::Fail,
        },
        inconclusive,
        violations,
        indeterminate,
        unmatched,
        pushes,
        records,
        own_ms: own_ms(scenario),
        elapsed_ms,
        timeout_ms: options.timeout_for(scenario),
        clock,
        wall_ms: elapsed_ms,
    }
}

/// Probes each scenario in turn (never two at once: they would share the server) on a runtime of
/// its own. Every scenario's credentials are checked first; then it stops at the first scenario
/// that cannot be probed at all.
pub fn probe_all(
    target: &Target,
    scenarios: &[Scenario],
    options: &Options,
) -> Result<Vec<ProbeOutcome>, ProbeError> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(ProbeError::Runtime)?;
    for s in scenarios {
        prepare(target, s, options)?;
    }
    runtime.block_on(async {
        let mut out = Vec::with_capacity(scenarios.len());
        for s in scenarios {
            out.push(probe_scenario(target, s, options).await?);
        }
        Ok(out)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_outcome_is_masked_in_its_frames_violations_and_unmatched_frames() {
        use racegate_replay::{Invariant, Unmatched, Violation};

        use crate::credentials::{MASK, Tokens};
        use crate::session::Record;
        let s = Secrets::new(&Tokens::from_pairs([("u", "tok-Zx81-secret")]), []);
        let leak = "run tok-Zx81-secret";
        let mut o = ProbeOutcome {
            scenario: "s".into(),
            file: "s.toml".into(),
            verdict: ProbeVerdict::Fail,
            inconclusive: None,
            violations: vec![Violation {
                invariant: Invariant::EventOrder,
                user: "u".into(),
                at_ms: 1,
                detail: leak.into(),
            }],
            indeterminate: vec![],
            unmatched: vec![Unmatched {
                user: "u".into(),
                at_ms: 1,
                op: 0,
                frame: "run.step".into(),
                id: Some("tok-Zx81-secret".into()),
                reason: leak.into(),
            }],
            pushes: 0,
            records: vec![Record {
                at_ms: 1.0,
                user: "u".into(),
                seen: Seen::Recv { text: leak.into() },
            }],
            own_ms: 1,
            elapsed_ms: 1.0,
            timeout_ms: 1,
            clock: Clock::Real,
            wall_ms: 1.0,
        };
        o.mask(&s);
        let text = format!("{o:?}");
        assert!(!text.contains("Zx81"), "{text}");
        assert_eq!(o.unmatched[0].id.as_deref(), Some(MASK));
        assert_eq!(o.unmatched[0].reason, "run ***");
    }
}
