//! The search space: proptest strategies over everything a scenario file can say.
//!
//! Every key of a scenario file has a strategy here, bounded to where races live: phases from
//! zero to a few seconds, users that connect inside 100 ms of each other or seconds apart,
//! chats and pushes during setup and after it, failures at each phase, clients that give up
//! mid-setup, heartbeats, and queues small enough to overflow. Each strategy shrinks toward the
//! plainest file: fewer users and messages first (they come first in the tuple, and proptest
//! shrinks a tuple in order), then zero times, no failure, no early close, and the format's
//! defaults. That is what makes a shrunk counterexample read like a hand-written scenario.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

use indexmap::IndexMap;
use proptest::collection::vec;
use proptest::option;
use proptest::prelude::*;

use crate::scenario::{Phase, Scenario, ServerConfig, Timed, User};

/// The most users one explored scenario may have (`--users`).
pub const MAX_USERS: usize = 16;

/// The longest phase, connect spread or client close the search tries: "a few seconds".
pub const LONG_MS: u64 = 3_000;

/// How many users each explored scenario has: `MIN..MAX`, both inclusive, or one number.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UserRange {
    min: usize,
    max: usize,
}

/// A `--users` value that is not `MIN..MAX` with `1 <= MIN <= MAX <= 16`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid user range `{given}`: {why}")]
pub struct UserRangeError {
    given: String,
    why: String,
}

impl UserRange {
    /// `min..=max` users; `None` unless `1 <= min <= max <= MAX_USERS`.
    pub fn new(min: usize, max: usize) -> Option<Self> {
        (1 <= min && min <= max && max <= MAX_USERS).then_some(UserRange { min, max })
    }

    /// The fewest users.
    pub fn min(self) -> usize {
        self.min
    }

    /// The most users.
    pub fn max(self) -> usize {
        self.max
    }
}

impl Default for UserRange {
    /// One to three users: enough for two users to cross, cheap enough for many cases a second.
    fn default() -> Self {
        UserRange { min: 1, max: 3 }
    }
}

impl fmt::Display for UserRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}..{}", self.min, self.max)
    }
}

impl FromStr for UserRange {
    type Err = UserRangeError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let error = |why: String| UserRangeError {
            given: s.to_string(),
            why,
        };
        let number = |part: &str| {
            part.trim().parse::<usize>().map_err(|_| {
                error(format!(
                    "`{}` is not a whole number; write MIN..MAX (both inclusive), e.g. 1..3",
                    part.trim()
                ))
            })
        };
        let (min, max) = match s.split_once("..") {
            Some((lo, hi)) => (number(lo)?, number(hi.strip_prefix('=').unwrap_or(hi))?),
            None => {
                let n = number(s)?;
                (n, n)
            }
        };
        if min == 0 {
            return Err(error("a scenario needs at least one user".into()));
        }
        if min > max {
            return Err(error(format!(
                "MIN ({min}) is greater than MAX ({max}); write MIN..MAX, e.g. {max}..{min}"
            )));
        }
        UserRange::new(min, max).ok_or_else(|| {
            error(format!(
                "at most {MAX_USERS} users; replays grow with every user"
            ))
        })
    }
}

/// Every scenario the search may try, with between `users.min()` and `users.max()` users named
/// `user-1`, `user-2`, …. The scenario is named `explore`; the finder renames what it keeps.
pub fn scenarios(users: UserRange) -> BoxedStrategy<Scenario> {
    (
        // Boxed parts: proptest moves value trees by value as it builds a tuple, and the
        // server's eight unions make a tree of kilobytes. A box moves a pointer instead; it
        // draws the same numbers and shrinks the same way (profiled: a quarter of a case's
        // instructions were these copies).
        vec(user().boxed(), users.min..=users.max),
        connect_spread().boxed(),
        server().boxed(),
        settle().boxed(),
    )
        .prop_map(|(drafts, spread, server, settle_ms)| Scenario {
            name: "explore".into(),
            description: None,
            file: PathBuf::new(),
            server,
            users: drafts
                .into_iter()
                .enumerate()
                .map(|(i, d)| d.into_user(i + 1, spread))
                .collect(),
            expect: IndexMap::new(),
            expect_invariants: IndexMap::new(),
            settle_ms,
            protocol: Default::default(),
            production: vec![],
        })
        .boxed()
}

/// One user's varied timings: its connect, the gaps between its chats, its own close.
type UserTimes = (u64, Vec<u64>, Option<u64>);

/// Every variation of `base`'s timings the search may try, keeping its users, chats, failures
/// and `[protocol]`: each user's connect time, its chats' times (in their order: each a gap
/// after the one before), its own close (where it has one), the server's accept latency, and
/// the phase times of `phases` (those an app's hooks can give it; the rest stay as written).
/// Every time shrinks toward 0, so a failure shrinks to the fewest, shortest waits that still
/// break the same invariant.
pub fn variations(base: Scenario, phases: &[Phase]) -> BoxedStrategy<Scenario> {
    let timing = |written: u64| 0..=written.max(500).saturating_mul(2);
    let users: Vec<BoxedStrategy<UserTimes>> = base
        .users
        .iter()
        .map(|u| {
            let mut previous = 0;
            let gaps: Vec<_> = u
                .sends
                .iter()
                .map(|s| {
                    let gap = s.at_ms.saturating_sub(previous);
                    previous = s.at_ms;
                    timing(gap).boxed()
                })
                .collect();
            let close = match u.close_ms {
                Some(ms) => timing(ms).prop_map(Some).boxed(),
                None => Just(None).boxed(),
            };
            (timing(u.connect_ms), gaps, close).boxed()
        })
        .collect();
    let vary = |phase: Phase, written: u64| {
        if phases.contains(&phase) {
            timing(written).boxed()
        } else {
            Just(written).boxed()
        }
    };
    let server = base.server;
    (
        users,
        timing(server.accept_ms),
        vary(Phase::Auth, server.auth_ms),
        vary(Phase::Services, server.services_ms),
        vary(Phase::Register, server.register_ms),
    )
        .prop_map(
            move |(users, accept_ms, auth_ms, services_ms, register_ms)| {
                let mut s = base.clone();
                s.server.accept_ms = accept_ms;
                s.server.auth_ms = auth_ms;
                s.server.services_ms = services_ms;
                s.server.register_ms = register_ms;
                for (user, (connect_ms, gaps, close_ms)) in s.users.iter_mut().zip(users) {
                    user.connect_ms = connect_ms;
                    user.close_ms = close_ms;
                    let mut at = 0;
                    for (send, gap) in user.sends.iter_mut().zip(gaps) {
                        at += gap;
                        send.at_ms = at;
                    }
                }
                s
            },
        )
        .boxed()
}

/// One `[[user]]` before it has an id: its connect time is a share of the scenario's spread.
#[derive(Debug, Clone)]
struct Draft {
    connect_percent: u64,
    fail_at: Option<Phase>,
    close_ms: Option<u64>,
    sends: Vec<Timed>,
    pushes: Vec<Timed>,
}

impl Draft {
    fn into_user(self, n: usize, spread_ms: u64) -> User {
        User {
            id: format!("user-{n}"),
            connect_ms: spread_ms * self.connect_percent / 100,
            fail_at: self.fail_at,
            close_ms: self.close_ms,
            drop_ms: None,
            sends: self.sends,
            pipelined: 0,
            pushes: self.pushes,
        }
    }
}

fn user() -> impl Strategy<Value = Draft> {
    (
        // Messages first: shrinking deletes them before it touches anything else.
        vec(timed().boxed(), 0..=3),
        vec(timed().boxed(), 0..=2),
        0..=100u64,
        option::weighted(0.15, phase()).boxed(),
        option::weighted(0.15, prop_oneof![0..=500u64, 0..=LONG_MS]).boxed(),
    )
        .prop_map(
            |(sends, pushes, connect_percent, fail_at, close_ms)| Draft {
                connect_percent,
                fail_at,
                close_ms,
                sends,
                pushes,
            },
        )
}

/// A chat or push: mostly inside a setup window, sometimes well after it.
fn timed() -> impl Strategy<Value = Timed> {
    (prop_oneof![3 => 0..=100u64, 2 => 0..=2_000u64], text())
        .prop_map(|(at_ms, text)| Timed { at_ms, text })
}

/// Short lowercase text; its length matters to `queue_bytes`, its letters to nobody.
fn text() -> impl Strategy<Value = String> {
    vec(0..26u8, 0..=12)
        .prop_map(|letters| letters.into_iter().map(|l| char::from(b'a' + l)).collect())
}

fn phase() -> impl Strategy<Value = Phase> {
    prop_oneof![
        Just(Phase::Auth),
        Just(Phase::Services),
        Just(Phase::Register)
    ]
}

/// How far apart users connect: all at once, several inside 100 ms, or seconds apart.
fn connect_spread() -> impl Strategy<Value = u64> {
    prop_oneof![1 => Just(0u64), 3 => 0..=100u64, 2 => 0..=LONG_MS]
}

/// A setup phase: instant, inside the partial fix's 300 ms of delays or just past them, or long.
fn phase_ms() -> impl Strategy<Value = u64> {
    prop_oneof![1 => Just(0u64), 3 => 0..=400u64, 2 => 0..=LONG_MS]
}

fn server() -> impl Strategy<Value = ServerConfig> {
    let d = ServerConfig::default();
    (
        phase_ms().boxed(),
        phase_ms().boxed(),
        phase_ms().boxed(),
        phase_ms().boxed(),
        // Off, or a beat short enough to land inside a setup (not so short it dominates a run).
        prop_oneof![3 => Just(0u64), 1 => 50..=1_000u64].boxed(),
        prop_oneof![Just(d.event_gap_ms), 0..=50u64].boxed(),
        prop_oneof![2 => Just(d.queue_capacity), 1 => 1..=8usize].boxed(),
        prop_oneof![3 => Just(d.queue_bytes), 1 => 1..=256usize].boxed(),
    )
        .prop_map(
            |(
                accept_ms,
                auth_ms,
                services_ms,
                register_ms,
                heartbeat_ms,
                event_gap_ms,
                queue_capacity,
                queue_bytes,
            )| ServerConfig {
                accept_ms,
                auth_ms,
                services_ms,
                register_ms,
                heartbeat_ms,
                event_gap_ms,
                queue_capacity,
                queue_bytes,
            },
        )
}

fn settle() -> impl Strategy<Value = u64> {
    prop_oneof![3 => Just(1_000u64), 1 => 0..=2_000u64]
}

#[cfg(test)]
mod tests {
    use rstest::rstest;

    use super::*;

    #[rstest]
    #[case::one_number("2", 2, 2)]
    #[case::a_range("1..3", 1, 3)]
    #[case::an_inclusive_range("2..=4", 2, 4)]
    #[case::spaces_around_numbers(" 1 .. 2 ", 1, 2)]
    fn a_user_range_parses_both_bounds_inclusive(
        #[case] text: &str,
        #[case] min: usize,
        #[case] max: usize,
    ) {
        assert_eq!(text.parse::<UserRange>(), Ok(UserRange { min, max }));
    }

    #[rstest]
    #[case::reversed("5..2", "MIN (5) is greater than MAX (2)")]
    #[case::zero_users("0..2", "at least one user")]
    #[case::too_many("1..17", "at most 16 users")]
    #[case::not_a_number("a..b", "`a` is not a whole number")]
    #[case::negative("-1..2", "`-1` is not a whole number")]
    fn a_bad_user_range_says_what_is_wrong(#[case] text: &str, #[case] phrase: &str) {
        let e = text.parse::<UserRange>().unwrap_err().to_string();
        assert!(e.contains(phrase), "{e:?} does not contain {phrase:?}");
        assert!(e.contains(text), "{e:?} does not quote {text:?}");
    }
}
