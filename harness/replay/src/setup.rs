//! The server's setup as scenario files and endpoints both name it: its phases, their
//! timings and limits. A leaf module, so `scenario` (which reads them from files) and
//! `endpoint`/`backend` (which run them) depend on it and not on each other.

use serde::{Deserialize, Serialize};

/// The `[server]` table: each phase's duration, in milliseconds of virtual time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServerConfig {
    /// Upgrade received → the application calls `accept()`: time it spends before accepting
    /// (a slow handshake path, a pre-accept `await`), state CONNECTING. `accept()` itself does
    /// not wait, as in Starlette: it sets CONNECTED and sends the response at once.
    pub accept_ms: u64,
    /// Accept → authenticated.
    pub auth_ms: u64,
    /// Authenticated → services ready.
    pub services_ms: u64,
    /// Services ready → handlers registered (`ProcessingReady`).
    pub register_ms: u64,
    /// Heartbeat interval; 0 = off.
    pub heartbeat_ms: u64,
    /// Gap between the five events of one agent run.
    pub event_gap_ms: u64,
    /// Messages a connection may hold before it is ready.
    pub queue_capacity: usize,
    /// Bytes a connection may hold before it is ready.
    pub queue_bytes: usize,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            accept_ms: 0,
            auth_ms: 0,
            services_ms: 0,
            register_ms: 0,
            heartbeat_ms: 0,
            event_gap_ms: 5,
            queue_capacity: 64,
            queue_bytes: 1 << 20,
        }
    }
}

impl ServerConfig {
    /// Upgrade → `ProcessingReady` when nothing fails.
    pub fn setup_ms(&self) -> u64 {
        self.accept_ms + self.auth_ms + self.services_ms + self.register_ms
    }
}

/// The setup phase at which a user's connection fails.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Phase {
    /// Authentication is refused: close 1008.
    Auth,
    /// Service creation fails: close 1011.
    Services,
    /// Handler registration fails: close 1011.
    Register,
}

impl Phase {
    /// The close code a well-behaved server sends when setup fails here.
    pub const fn close_code(self) -> u16 {
        match self {
            Phase::Auth => 1008,
            Phase::Services | Phase::Register => 1011,
        }
    }

    /// The lowercase name used in files.
    pub const fn name(self) -> &'static str {
        match self {
            Phase::Auth => "auth",
            Phase::Services => "services",
            Phase::Register => "register",
        }
    }
}
