//! Real sockets for racegate: the same endpoints behind tokio-tungstenite, scenario replay over
//! loopback, a load generator with an echo baseline, and hostile-input handling.
//!
//! ```no_run
//! use std::path::Path;
//! use racegate_net::{Limits, replay_ws};
//! use racegate_replay::{EndpointKind, Verdict, scenario};
//!
//! let s = scenario::load(Path::new("scenarios/partial-fails-slow-setup.toml")).unwrap();
//! let outcome = replay_ws(&s, EndpointKind::StateMachine, Limits::default()).unwrap();
//! assert_eq!(outcome.verdict, Verdict::Pass);
//! ```
//!
//! Modules, from the bytes up: [`wire`] (the JSON frames), [`handshake`] (the upgrade request
//! and the deferred `101`), [`socket`] (the endpoints' `ServerSocket` over a WebSocket),
//! [`server`] (the listener, shutdown, the echo baseline), [`client`] (the replay's client and
//! connector), [`replay`] (scenarios over loopback), [`load`] (many users, the figures).

pub mod client;
pub mod handshake;
pub mod load;
pub mod replay;
pub mod server;
pub mod socket;
pub mod wire;

use std::net::SocketAddr;

pub use client::{WsClient, WsConnector};
pub use load::{LoadOptions, LoadReport};
pub use replay::{replay_ws, replay_ws_all, replay_ws_suite};
pub use server::{ServeOptions, Server, ShutdownReport, serve_with};
pub use socket::{Counters, Limits, WsSocket};

/// What can stop a server, a replay or a load run from happening at all.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    /// The address could not be bound.
    // The OS's reason is the source: the binary prints the chain, so it must not repeat here.
    #[error("could not listen on {addr}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The OS's reason.
        source: std::io::Error,
    },
    /// The async runtime could not be built.
    #[error("could not start the runtime: {0}")]
    Runtime(std::io::Error),
    /// A socket operation failed outside any one connection.
    #[error("{0}")]
    Io(std::io::Error),
    /// A worker thread ended without a result (it panicked).
    #[error("a replay worker ended without a result")]
    Lost,
    /// A load run's settings make no sense.
    #[error("{0}")]
    Invalid(String),
}
