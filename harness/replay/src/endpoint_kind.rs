//! The names of the three endpoints, shared by scenario files, the CLI and every report.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Which endpoint implementation to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum EndpointKind {
    /// The production endpoint as it was: accepts early, registers early, reads concurrently
    /// with setup, shares one "current user" across connections.
    Unfixed,
    /// The sleep-based partial fix: progressive post-accept delays plus a connected-and-ready
    /// check. Narrows the window; does not close it.
    Partial,
    /// The fix: every use of the connection goes through its state machine.
    StateMachine,
}

impl EndpointKind {
    /// All endpoints, in report column order.
    pub const ALL: [EndpointKind; 3] = [
        EndpointKind::Unfixed,
        EndpointKind::Partial,
        EndpointKind::StateMachine,
    ];

    /// The kebab-case name used in files, flags and reports.
    pub const fn name(self) -> &'static str {
        match self {
            EndpointKind::Unfixed => "unfixed",
            EndpointKind::Partial => "partial",
            EndpointKind::StateMachine => "state-machine",
        }
    }
}

impl fmt::Display for EndpointKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// An endpoint name that is not one of [`EndpointKind::ALL`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown endpoint `{0}`: expected unfixed, partial or state-machine")]
pub struct UnknownEndpoint(pub String);

impl FromStr for EndpointKind {
    type Err = UnknownEndpoint;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        EndpointKind::ALL
            .into_iter()
            .find(|k| k.name() == s)
            .ok_or_else(|| UnknownEndpoint(s.to_string()))
    }
}
