//! `racegate probe`: a scenario's client side against any live WebSocket server, judged by what
//! a client can observe. The endpoints inside racegate are models; the server a team deploys is
//! theirs, so the same scenario files gate it from the outside.
//!
//! ```no_run
//! use std::path::Path;
//! use racegate_probe::{Options, Target, probe_all};
//! use racegate_replay::scenario;
//!
//! let target = Target::parse("ws://127.0.0.1:8000/ws").unwrap();
//! let s = scenario::load(Path::new("scenarios/staging-e2e-staging_pipeline.toml")).unwrap();
//! let outcomes = probe_all(&target, &[s], &Options::default()).unwrap();
//! for v in &outcomes[0].violations {
//!     println!("{v}");
//! }
//! ```
//!
//! Modules, in the order a probe uses them: [`target`] (the URL and each user's upgrade
//! request), [`credentials`] (tokens, extra headers, masking), [`tls`] (`wss://`), [`session`]
//! (one user's connection on a real clock, every frame recorded), [`check`] (the records as the
//! shared client history, judged by racegate-replay's checker: the same rules as `run` and
//! `load`), [`probe`]
//! (a scenario's users on schedule, the timeout) and [`report`] (table, JSON, JUnit).

pub mod app;
pub mod check;
pub mod config;
pub mod credentials;
pub mod probe;
pub mod report;
pub mod session;
pub mod target;
pub mod tls;

pub use app::{AppError, AppTarget, probe_app};
pub use credentials::{ExtraHeader, Secrets, Tokens};
pub use probe::{Clock, Options, ProbeOutcome, ProbeVerdict, probe_all, probe_scenario};
pub use session::{Record, Seen};
pub use target::Target;
pub use tls::{Tls, TlsOptions};

/// Why a probe could not be judged at all: bad input or a server that is not there. A server
/// that misbehaves is not an error; it is a violation.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    /// The URL is not one probe can use.
    #[error("bad --url {url:?}: {reason}")]
    BadUrl {
        /// What was given.
        url: String,
        /// What is wrong and what would be right.
        reason: String,
    },
    /// A scenario's user cannot be put on the wire with its `[protocol]`.
    #[error("{file}: user {user:?}: {reason}")]
    BadUser {
        /// The scenario file.
        file: String,
        /// The user id.
        user: String,
        /// Why.
        reason: String,
    },
    /// Nothing accepted a TCP connection at the URL's address.
    #[error("cannot reach {addr}: {reason}; is the server running?")]
    Unreachable {
        /// `host:port`.
        addr: String,
        /// The OS's words, or the timeout.
        reason: String,
    },
    /// The TLS handshake with a `wss://` server failed: an untrusted or mismatched
    /// certificate, or no TLS at all.
    #[error("TLS with {url} failed: {reason}")]
    Tls {
        /// The URL.
        url: String,
        /// What failed, and what to do about it.
        reason: String,
    },
    /// The `--tokens` file cannot be used. The reason never quotes a token.
    #[error("--tokens {file}: {reason}")]
    Tokens {
        /// The file.
        file: String,
        /// What is wrong.
        reason: String,
    },
    /// The TLS configuration could not be built (`--ca-cert`).
    #[error("{0}")]
    TlsSetup(String),
    /// The async runtime could not be built.
    #[error("could not start the probe runtime: {0}")]
    Runtime(std::io::Error),
    /// `--app`: the app could not be loaded, started or driven.
    #[error(transparent)]
    App(#[from] AppError),
}
