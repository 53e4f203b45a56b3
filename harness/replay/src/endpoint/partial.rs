//! `partial`: the seed's sleep-based partial fix.
//!
//! What it changes from `unfixed`: sends from the notifier and the heartbeat are guarded by
//! `is_connected_and_ready()` (skipped, with a log line, when the socket is not open), and the
//! reader starts only after progressive post-accept delays. That narrows the window: when setup
//! finishes within the delays, early messages wait in the socket and find their handler. It does
//! not close it: when setup outlasts the delays the reader still meets a router with no handler,
//! a skipped send is still a lost message, the shared user context still crosses users, and a
//! failed setup still runs no rollback.

use std::num::NonZeroU64;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use racegate_core::ConnectionState;
use tokio::task::JoinHandle;

use super::lifecycle::{self, Lifecycle};
use super::{
    Endpoint, ReaderEnd, legacy_fail, legacy_heartbeat, legacy_route, lock, send_or_drop, state,
    tracked_id, transport_error,
};
use crate::backend::{Backend, Pusher, pause};
use crate::setup::Phase;
use crate::trace::EventKind;
use crate::transport::{ErrorKind, Inbound, ServerSocket, TransportError};

/// The sleep-based partial fix.
pub struct Partial;

impl Endpoint for Partial {
    async fn serve<S: ServerSocket>(
        backend: Arc<Backend>,
        socket: Arc<S>,
        user: String,
        label: String,
    ) {
        lifecycle::serve(Conn::new(backend, socket, user, label)).await;
    }
}

/// The staged delays after accept before the reader starts (300 ms in all), as staging ran them.
pub const PROGRESSIVE_DELAYS_MS: [u64; 3] = [50, 100, 150];

/// One connection: its socket, a liveness flag, and a copy of the shared user context.
struct Conn<S> {
    backend: Arc<Backend>,
    socket: Arc<S>,
    /// The user its upgrade named: the manager's key, the shared context's value.
    user: String,
    /// What the trace records it under (the user's id, or `id#k` for its `k`-th connection).
    label: String,
    /// Cleared when the connection ends; the heartbeat stops on it.
    live: Arc<AtomicBool>,
    /// The user context, copied from shared state during setup.
    context: Mutex<Option<String>>,
    reader: Mutex<Option<JoinHandle<ReaderEnd>>>,
}

impl<S: ServerSocket> Conn<S> {
    fn new(backend: Arc<Backend>, socket: Arc<S>, user: String, label: String) -> Arc<Self> {
        Arc::new(Conn {
            backend,
            socket,
            user,
            label,
            live: Arc::new(AtomicBool::new(true)),
            context: Mutex::default(),
            reader: Mutex::default(),
        })
    }
}

impl<S: ServerSocket> Lifecycle for Conn<S> {
    type Socket = S;

    fn backend(&self) -> &Backend {
        &self.backend
    }

    fn socket(&self) -> &S {
        &self.socket
    }

    fn label(&self) -> &str {
        &self.label
    }

    fn on_upgrade(self: &Arc<Self>) {
        // Still registered before the handshake completes, but every send is guarded.
        self.backend
            .register(&self.user, &self.label, pusher(self.clone()));
    }

    fn before_accept(self: &Arc<Self>) {
        if let Some(every) = NonZeroU64::new(self.backend.config.heartbeat_ms) {
            tokio::spawn(legacy_heartbeat(
                self.backend.clone(),
                self.socket.clone(),
                self.label.clone(),
                self.live.clone(),
                every,
                true,
            ));
        }
    }

    async fn on_accept_failed(self: &Arc<Self>, e: TransportError) {
        transport_error(&self.backend, &self.label, "accept", &e);
        legacy_fail(&self.backend, &*self.socket, &self.label, 1011, &self.live).await;
    }

    /// There is no machine: the state is a log line, and setup goes on whatever happened.
    fn advance(&self, to: ConnectionState) -> bool {
        state(&self.backend, &self.label, to);
        true
    }

    fn after_accept(self: &Arc<Self>) {
        // FIX (partial): the reader waits out the staged delays, then runs beside setup.
        self.start_reader();
    }

    async fn on_failure(self: &Arc<Self>, phase: Phase) {
        let code = phase.close_code();
        legacy_fail(&self.backend, &*self.socket, &self.label, code, &self.live).await;
    }

    fn on_phase_done(self: &Arc<Self>, phase: Phase) {
        let b = &self.backend;
        match phase {
            Phase::Auth => {
                b.set_current_user(&self.user);
                self.cleanup("auth_session");
            }
            Phase::Services => {
                self.cleanup("services");
                // RACE (kept): read across the await above; another user's auth may have replaced it.
                *lock(&self.context) = b.current_user();
            }
            Phase::Register => {
                self.cleanup("handlers");
                b.add_router_handler();
            }
        }
    }

    async fn process(self: &Arc<Self>) {
        let reader = lock(&self.reader).take();
        let end = match reader {
            Some(reader) => reader.await.unwrap_or(ReaderEnd::GaveUp),
            None => ReaderEnd::GaveUp,
        };
        self.live.store(false, Ordering::Release);
        match end {
            ReaderEnd::Disconnected => {
                state(&self.backend, &self.label, ConnectionState::Closed);
                self.backend.record(
                    &self.label,
                    EventKind::Terminal {
                        state: ConnectionState::Closed,
                    },
                );
            }
            // Nobody reads this socket any more; the connection is neither open nor ended.
            ReaderEnd::GaveUp => {}
        }
    }
}

impl<S: ServerSocket> Conn<S> {
    fn start_reader(self: &Arc<Self>) {
        *lock(&self.reader) = Some(tokio::spawn(read_loop(self.clone())));
    }

    /// Records a setup cleanup as registered. Nothing ever runs it: there is no rollback.
    fn cleanup(&self, name: &'static str) {
        self.backend
            .record(&self.label, EventKind::CleanupRegistered { name });
    }

    /// Routes a chat at once, through the global router, as whichever user the context names.
    async fn deliver(&self, id: String, _text: String) {
        let context = lock(&self.context).clone();
        legacy_route(&self.backend, &*self.socket, &self.label, context, id).await;
    }
}

/// The manager's way to this connection: onto the socket if `is_connected_and_ready()`,
/// otherwise skipped with a warning, which is to say lost.
fn pusher<S: ServerSocket>(conn: Arc<Conn<S>>) -> Pusher {
    Arc::new(move |frame| {
        let conn = conn.clone();
        Box::pin(async move {
            if !conn.socket.is_connected_and_ready() {
                if let Some(id) = tracked_id(&frame) {
                    conn.backend.record(
                        &conn.label,
                        EventKind::Dropped {
                            id: id.to_string(),
                            reason: "connection not ready; message skipped".into(),
                        },
                    );
                }
                return;
            }
            send_or_drop(&conn.backend, &*conn.socket, &conn.label, &frame).await;
        })
    })
}

async fn read_loop<S: ServerSocket>(conn: Arc<Conn<S>>) -> ReaderEnd {
    for delay in PROGRESSIVE_DELAYS_MS {
        pause(delay).await;
    }
    loop {
        // FIX (partial): read only while the socket is connected and ready.
        if !conn.socket.is_connected_and_ready() {
            break;
        }
        match conn.socket.receive().await {
            Ok(Inbound::Chat { id, text }) => conn.deliver(id, text).await,
            Ok(Inbound::Disconnect(_)) => break,
            Err(e) if matches!(e.kind, ErrorKind::Disconnected(_)) => break,
            Err(e) => {
                transport_error(&conn.backend, &conn.label, "receive", &e);
                return ReaderEnd::GaveUp;
            }
        }
    }
    conn.backend.unregister(&conn.user);
    ReaderEnd::Disconnected
}
