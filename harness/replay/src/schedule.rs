//! One schedule: when a scenario's clients are done, for every driver that plays them.
//!
//! A client closes after its latest scheduled action, given the time the server needs to set up,
//! one agent run, and the scenario's `settle_ms`. The replay (virtual time and real sockets),
//! `probe` and `import` all read that rule from here, so "when does a client close" means the
//! same thing whichever of them ran the scenario, and `import` can invert it.

use crate::scenario::{Scenario, User};

/// Whether server-side pushes count as scheduled activity: they do in a replay (racegate's
/// notifier issues them), not in a probe (no client can trigger them).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pushes {
    /// The replay's schedule.
    Included,
    /// The probe's schedule.
    Ignored,
}

/// One agent run: `events` frames, `event_gap_ms` apart.
pub fn run_ms(scenario: &Scenario, events: usize) -> u64 {
    scenario.server.event_gap_ms * events as u64
}

/// A user's latest scheduled action (a chat, a push, its own close or drop), relative to its
/// connect and after the server's setup would have finished: chats are timed from open.
pub fn latest_action_ms(scenario: &Scenario, user: &User, pushes: Pushes) -> u64 {
    let pushed = match pushes {
        Pushes::Included => &user.pushes[..],
        Pushes::Ignored => &[],
    };
    let latest = user
        .sends
        .iter()
        .chain(pushed)
        .map(|t| t.at_ms)
        .chain(user.leave_ms())
        .max()
        .unwrap_or(0);
    user.connect_ms + scenario.server.setup_ms() + latest
}

/// What follows the latest action before clients close: one agent run and the settle time.
pub fn tail_ms(scenario: &Scenario, events: usize) -> u64 {
    run_ms(scenario, events) + scenario.settle_ms
}

/// When clients close, in milliseconds from the start: every user's latest scheduled action,
/// then one agent run of `events` events, then `settle_ms`.
pub fn horizon_ms(scenario: &Scenario, pushes: Pushes, events: usize) -> u64 {
    scenario
        .users
        .iter()
        .map(|u| latest_action_ms(scenario, u, pushes))
        .max()
        .unwrap_or(0)
        + tail_ms(scenario, events)
}

/// How long after its connection opened a client still waits past its last chat: the rest of
/// the setup (the handshake is behind it), one agent run and the settle time. A slow handshake
/// delays the chats, so the close is measured from open, not from the start.
pub fn after_open_ms(scenario: &Scenario, events: usize) -> u64 {
    let s = &scenario.server;
    s.auth_ms + s.services_ms + s.register_ms + tail_ms(scenario, events)
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    fn scenario() -> Scenario {
        crate::scenario::parse(
            r#"
            name = "s"
            settle_ms = 100
            [server]
            accept_ms = 10
            auth_ms = 20
            services_ms = 30
            register_ms = 40
            event_gap_ms = 5
            [[user]]
            id = "a"
            connect_ms = 7
            send = [{ at_ms = 3, text = "x" }]
            push = [{ at_ms = 50, text = "p" }]
            [[user]]
            id = "b"
            close_ms = 9
            "#,
            Path::new("s.toml"),
        )
        .unwrap()
    }

    #[test]
    fn the_horizon_is_the_latest_action_after_setup_then_a_run_and_the_settle_time() {
        let s = scenario();
        // a: 7 + 100 setup + 50 (its push) = 157; b: 0 + 100 + 9 = 109; then 25 + 100.
        assert_eq!(horizon_ms(&s, Pushes::Included, 5), 157 + 25 + 100);
        // Without pushes a's latest is its chat at 3: 110.
        assert_eq!(horizon_ms(&s, Pushes::Ignored, 5), 110 + 25 + 100);
        assert_eq!(horizon_ms(&s, Pushes::Ignored, 2), 110 + 10 + 100);
    }

    #[test]
    fn after_open_leaves_out_the_handshake() {
        assert_eq!(after_open_ms(&scenario(), 5), 20 + 30 + 40 + 25 + 100);
    }
}
