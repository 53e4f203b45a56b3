//! The application-level lifecycle of one connection, as a pure transition function.
//!
//! The production bug was conflating "the transport accepted" with "ready to process messages".
//! These states keep them apart. The transition function is total and exhaustive (no `_` arm),
//! so adding a state forces every rule to be reconsidered.

use std::fmt;

/// Where one connection is in its lifecycle.
///
/// The forward path is strictly one step at a time:
/// `Connecting → Accepted → Authenticated → ServicesReady → ProcessingReady`.
/// Any non-terminal state may end in `Closed` or `Failed`; nothing leaves a terminal state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(u8)]
pub enum ConnectionState {
    /// The upgrade arrived; `accept()` has not completed.
    Connecting = 0,
    /// The transport is open; the user is not yet known.
    Accepted = 1,
    /// The user is known; per-user services do not exist yet.
    Authenticated = 2,
    /// Services exist; message handlers are not registered yet.
    ServicesReady = 3,
    /// Handlers are registered: messages may be processed.
    ProcessingReady = 4,
    /// Ended normally (or by the client). Terminal.
    Closed = 5,
    /// Ended by a setup or runtime failure. Terminal.
    Failed = 6,
}

impl ConnectionState {
    /// Every state, in lifecycle order.
    pub const ALL: [ConnectionState; 7] = [
        ConnectionState::Connecting,
        ConnectionState::Accepted,
        ConnectionState::Authenticated,
        ConnectionState::ServicesReady,
        ConnectionState::ProcessingReady,
        ConnectionState::Closed,
        ConnectionState::Failed,
    ];

    /// The next state on the forward path, if any.
    pub const fn next(self) -> Option<ConnectionState> {
        match self {
            ConnectionState::Connecting => Some(ConnectionState::Accepted),
            ConnectionState::Accepted => Some(ConnectionState::Authenticated),
            ConnectionState::Authenticated => Some(ConnectionState::ServicesReady),
            ConnectionState::ServicesReady => Some(ConnectionState::ProcessingReady),
            ConnectionState::ProcessingReady
            | ConnectionState::Closed
            | ConnectionState::Failed => None,
        }
    }

    /// `Closed` or `Failed`.
    pub const fn is_terminal(self) -> bool {
        match self {
            ConnectionState::Closed | ConnectionState::Failed => true,
            ConnectionState::Connecting
            | ConnectionState::Accepted
            | ConnectionState::Authenticated
            | ConnectionState::ServicesReady
            | ConnectionState::ProcessingReady => false,
        }
    }

    /// The one state in which messages may be processed.
    pub const fn is_ready(self) -> bool {
        matches!(self, ConnectionState::ProcessingReady)
    }

    /// The stable lowercase name used in traces and reports (`processing_ready`).
    pub const fn name(self) -> &'static str {
        match self {
            ConnectionState::Connecting => "connecting",
            ConnectionState::Accepted => "accepted",
            ConnectionState::Authenticated => "authenticated",
            ConnectionState::ServicesReady => "services_ready",
            ConnectionState::ProcessingReady => "processing_ready",
            ConnectionState::Closed => "closed",
            ConnectionState::Failed => "failed",
        }
    }

    /// The pure transition function: `Ok(to)` when `self → to` is allowed.
    ///
    /// ```
    /// use racegate_core::ConnectionState::*;
    /// assert_eq!(Connecting.transition(Accepted), Ok(Accepted));
    /// assert!(Connecting.transition(ProcessingReady).is_err()); // no skipping
    /// assert!(Closed.transition(Accepted).is_err()); // terminal is terminal
    /// ```
    pub const fn transition(self, to: ConnectionState) -> Result<ConnectionState, TransitionError> {
        let allowed = match (self, to) {
            // Terminal states are absorbing.
            (ConnectionState::Closed | ConnectionState::Failed, _) => false,
            // Any live state may end.
            (
                ConnectionState::Connecting
                | ConnectionState::Accepted
                | ConnectionState::Authenticated
                | ConnectionState::ServicesReady
                | ConnectionState::ProcessingReady,
                ConnectionState::Closed | ConnectionState::Failed,
            ) => true,
            // Forward, one step at a time.
            (ConnectionState::Connecting, ConnectionState::Accepted)
            | (ConnectionState::Accepted, ConnectionState::Authenticated)
            | (ConnectionState::Authenticated, ConnectionState::ServicesReady)
            | (ConnectionState::ServicesReady, ConnectionState::ProcessingReady) => true,
            (
                ConnectionState::Connecting
                | ConnectionState::Accepted
                | ConnectionState::Authenticated
                | ConnectionState::ServicesReady
                | ConnectionState::ProcessingReady,
                ConnectionState::Connecting
                | ConnectionState::Accepted
                | ConnectionState::Authenticated
                | ConnectionState::ServicesReady
                | ConnectionState::ProcessingReady,
            ) => false,
        };
        if allowed {
            Ok(to)
        } else {
            Err(TransitionError { from: self, to })
        }
    }

    pub(crate) const fn from_u8(raw: u8) -> ConnectionState {
        match raw {
            0 => ConnectionState::Connecting,
            1 => ConnectionState::Accepted,
            2 => ConnectionState::Authenticated,
            3 => ConnectionState::ServicesReady,
            4 => ConnectionState::ProcessingReady,
            5 => ConnectionState::Closed,
            _ => ConnectionState::Failed,
        }
    }
}

impl fmt::Display for ConnectionState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A transition the lifecycle does not allow, naming both ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TransitionError {
    /// The state the connection was in.
    pub from: ConnectionState,
    /// The state that was asked for.
    pub to: ConnectionState,
}

impl fmt::Display for TransitionError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.from.is_terminal() {
            write!(
                f,
                "invalid transition {} -> {}: {} is terminal",
                self.from, self.to, self.from
            )
        } else {
            match self.from.next() {
                Some(next) => write!(
                    f,
                    "invalid transition {} -> {}: from {} the lifecycle goes to {}, closed or failed",
                    self.from, self.to, self.from, next
                ),
                None => write!(
                    f,
                    "invalid transition {} -> {}: from {} the lifecycle may only close or fail",
                    self.from, self.to, self.from
                ),
            }
        }
    }
}

impl std::error::Error for TransitionError {}
