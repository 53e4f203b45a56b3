//! The one skeleton every endpoint runs: upgrade → accept → auth → services → register → process.
//!
//! The order of setup is not where the endpoints differ, so it is written once, here. What they
//! do at each step is a hook of [`Lifecycle`], and each endpoint file implements the hooks in
//! the order this function calls them, with the same names, so `diff -u unfixed.rs
//! state_machine.rs` lines up hook by hook and shows the fix and nothing else.

use std::future::Future;
use std::sync::Arc;

use racegate_core::ConnectionState;

use super::state;
use crate::backend::Backend;
use crate::setup::Phase;
use crate::transport::{ServerSocket, TransportError};

/// The setup phases in order, each with the state reaching its end moves to.
const SETUP: [(Phase, ConnectionState); 3] = [
    (Phase::Auth, ConnectionState::Authenticated),
    (Phase::Services, ConnectionState::ServicesReady),
    (Phase::Register, ConnectionState::ProcessingReady),
];

/// One connection as an endpoint serves it: the hooks [`serve`] calls, in the order it calls them.
pub(super) trait Lifecycle: Send + Sync + Sized + 'static {
    type Socket: ServerSocket;

    fn backend(&self) -> &Backend;
    fn socket(&self) -> &Self::Socket;
    /// What the trace records the connection under.
    fn label(&self) -> &str;

    /// At the upgrade, before `accept()`: make the connection reachable by the manager.
    fn on_upgrade(self: &Arc<Self>);

    /// Still before `accept()`: start whatever runs from the upgrade on.
    fn before_accept(self: &Arc<Self>);

    /// `accept()` failed with `err`.
    fn on_accept_failed(self: &Arc<Self>, err: TransportError) -> impl Future<Output = ()> + Send;

    /// A step of setup completed: move to `to`. False if the connection already ended.
    fn advance(&self, to: ConnectionState) -> bool;

    /// Accepted: start whatever waits for the handshake.
    fn after_accept(self: &Arc<Self>);

    /// Setup failed in `phase`.
    fn on_failure(self: &Arc<Self>, phase: Phase) -> impl Future<Output = ()> + Send;

    /// Setup `phase` succeeded; called before [`advance`](Self::advance) to the state it reaches.
    fn on_phase_done(self: &Arc<Self>, phase: Phase);

    /// Ready: serve until the connection ends.
    fn process(self: &Arc<Self>) -> impl Future<Output = ()> + Send;
}

/// Serves one connection from upgrade to end.
pub(super) async fn serve<C: Lifecycle>(conn: Arc<C>) {
    state(conn.backend(), conn.label(), ConnectionState::Connecting);
    conn.on_upgrade();
    conn.before_accept();

    if let Err(e) = conn.socket().accept().await {
        conn.on_accept_failed(e).await;
        return;
    }
    if !conn.advance(ConnectionState::Accepted) {
        return;
    }
    conn.after_accept();

    for (phase, reached) in SETUP {
        if conn.backend().phase(conn.label(), phase).await.is_err() {
            conn.on_failure(phase).await;
            return;
        }
        conn.on_phase_done(phase);
        if !conn.advance(reached) {
            return;
        }
    }

    conn.process().await;
}
