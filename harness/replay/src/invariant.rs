//! The invariants a connection lifecycle must keep, and a broken one where and when: the names
//! every output uses. A leaf module (it names nothing else of the crate), so scenario files
//! (which name invariants in `[expect]`), the [`checker`](crate::checker) and the
//! [`oracle`](crate::oracle) all depend on it and not on each other. Each rule is written once,
//! in `docs/invariants.md`.

use std::fmt;

use serde::Serialize;

/// A rule a connection lifecycle must keep. The names are the ones every output uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Invariant {
    /// The transport was used before accept or after close (Starlette raised).
    AcceptFirst,
    /// A chat or push was neither delivered nor explicitly rejected. A chat whose answer an
    /// error close cut off is refused by it when the server's trace shows it was not dropped,
    /// and indeterminate (reported apart, not a violation) where there is no server trace.
    /// The rule: [`checker`](crate::checker) and `docs/invariants.md`.
    MessageLost,
    /// Chats were acknowledged, or pushes delivered, out of the order they were sent (or twice).
    OutOfOrder,
    /// A chat was handled before its connection reached `ProcessingReady`.
    BeforeReady,
    /// A client received a frame meant for, or produced for, another user.
    CrossUser,
    /// An acknowledged chat's run events (the protocol's list; the replay's five agent events)
    /// were out of order, repeated, or missing without the rest being refused.
    EventOrder,
    /// A connection that ended before ready left a registration or an unrun cleanup behind.
    Leak,
    /// A connection reached no terminal state by the end of the run, or a client's connection
    /// never opened and was never refused (the server never served it).
    Stuck,
    /// The server closed with a code outside the protocol's expected set, dropped the connection
    /// without a close frame, or refused the upgrade without an expected code. The replay's
    /// endpoints close only with expected codes, so in practice only `racegate probe` reports it.
    AbnormalClose,
}

impl Invariant {
    /// Every invariant.
    pub const ALL: [Invariant; 9] = [
        Invariant::AcceptFirst,
        Invariant::MessageLost,
        Invariant::OutOfOrder,
        Invariant::BeforeReady,
        Invariant::CrossUser,
        Invariant::EventOrder,
        Invariant::Leak,
        Invariant::Stuck,
        Invariant::AbnormalClose,
    ];

    /// The kebab-case name.
    pub const fn name(self) -> &'static str {
        match self {
            Invariant::AcceptFirst => "accept-first",
            Invariant::MessageLost => "message-lost",
            Invariant::OutOfOrder => "out-of-order",
            Invariant::BeforeReady => "before-ready",
            Invariant::CrossUser => "cross-user",
            Invariant::EventOrder => "event-order",
            Invariant::Leak => "leak",
            Invariant::Stuck => "stuck",
            Invariant::AbnormalClose => "abnormal-close",
        }
    }
}

/// A name that is no invariant's.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown invariant `{0}`; expected one of {names}", names = Invariant::ALL.map(Invariant::name).join(", "))]
pub struct UnknownInvariant(pub String);

impl std::str::FromStr for Invariant {
    type Err = UnknownInvariant;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Invariant::ALL
            .into_iter()
            .find(|i| i.name() == s)
            .ok_or_else(|| UnknownInvariant(s.to_string()))
    }
}

impl fmt::Display for Invariant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// One broken rule, where and when.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Violation {
    /// Which rule.
    pub invariant: Invariant,
    /// Whose connection.
    pub user: String,
    /// Virtual milliseconds since the run began.
    pub at_ms: u64,
    /// What happened, in words.
    pub detail: String,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} user={} at {} ms: {}",
            self.invariant, self.user, self.at_ms, self.detail
        )
    }
}
