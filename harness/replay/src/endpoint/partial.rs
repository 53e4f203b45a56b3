//! `partial`: the seed's sleep-based partial fix.
//!
//! What it changes from `unfixed`: sends from the notifier and the heartbeat are guarded by
//! `is_connected_and_ready()` (skipped, with a log line, when the socket is not open), and the
//! reader starts only after progressive post-accept delays. That narrows the window: when setup
//! finishes within the delays, early messages wait in the socket and find their handler. It does
//! not close it: when setup outlasts the delays the reader still meets a router with no handler,
//! a skipped send is still a lost message, the shared user context still crosses users, and a
//! failed setup still runs no rollback.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use super::{
    Endpoint, ReaderEnd, legacy_fail, legacy_heartbeat, legacy_route, lock, send_or_drop, state,
    tracked_id, transport_error,
};
use crate::backend::{Backend, Pusher, pause};
use crate::scenario::Phase;
use crate::trace::EventKind;
use crate::transport::{ErrorKind, Inbound, ServerSocket};

/// The sleep-based partial fix.
pub struct Partial;

/// The staged delays after accept before the reader starts (300 ms in all), as staging ran them.
pub const PROGRESSIVE_DELAYS_MS: [u64; 3] = [50, 100, 150];

impl Endpoint for Partial {
    async fn serve<S: ServerSocket>(backend: Arc<Backend>, socket: Arc<S>, user: String) {
        let b = &*backend;
        state(b, &user, "connecting");
        let live = Arc::new(AtomicBool::new(true));
        // Still registered before the handshake completes, but every send is guarded.
        b.register(
            &user,
            guarded_pusher(backend.clone(), socket.clone(), user.clone()),
        );
        if b.config.heartbeat_ms > 0 {
            let hb = legacy_heartbeat(
                backend.clone(),
                socket.clone(),
                user.clone(),
                live.clone(),
                true,
            );
            tokio::spawn(hb);
        }
        let context: Arc<Mutex<Option<String>>> = Arc::default();

        if let Err(e) = socket.accept().await {
            transport_error(b, &user, "accept", &e);
            legacy_fail(b, &*socket, &user, 1011, &live).await;
            return;
        }
        state(b, &user, "accepted");
        // FIX (partial): the reader waits out the staged delays, then runs beside setup.
        let reader = tokio::spawn(read_loop(
            backend.clone(),
            socket.clone(),
            user.clone(),
            context.clone(),
        ));

        if b.phase(&user, Phase::Auth).await.is_err() {
            legacy_fail(b, &*socket, &user, Phase::Auth.close_code(), &live).await;
            return;
        }
        b.set_current_user(&user);
        b.record(
            &user,
            EventKind::CleanupRegistered {
                name: "auth_session",
            },
        );
        state(b, &user, "authenticated");

        if b.phase(&user, Phase::Services).await.is_err() {
            legacy_fail(b, &*socket, &user, Phase::Services.close_code(), &live).await;
            return;
        }
        b.record(&user, EventKind::CleanupRegistered { name: "services" });
        // RACE (kept): read across the await above; another user's auth may have replaced it.
        *lock(&context) = b.current_user();
        state(b, &user, "services_ready");

        if b.phase(&user, Phase::Register).await.is_err() {
            legacy_fail(b, &*socket, &user, Phase::Register.close_code(), &live).await;
            return;
        }
        b.record(&user, EventKind::CleanupRegistered { name: "handlers" });
        b.add_router_handler();
        state(b, &user, "processing_ready");

        let end = reader.await.unwrap_or(ReaderEnd::GaveUp);
        live.store(false, Ordering::Release);
        match end {
            ReaderEnd::Disconnected => {
                state(b, &user, "closed");
                b.record(&user, EventKind::Terminal { state: "closed" });
            }
            ReaderEnd::GaveUp => {}
        }
    }
}

/// The manager's way to this connection: onto the socket if `is_connected_and_ready()`,
/// otherwise skipped with a warning, which is to say lost.
fn guarded_pusher<S: ServerSocket>(backend: Arc<Backend>, socket: Arc<S>, user: String) -> Pusher {
    Arc::new(move |frame| {
        let (backend, socket, user) = (backend.clone(), socket.clone(), user.clone());
        Box::pin(async move {
            if !socket.is_connected_and_ready() {
                if let Some(id) = tracked_id(&frame) {
                    backend.record(
                        &user,
                        EventKind::Dropped {
                            id: id.to_string(),
                            reason: "connection not ready; message skipped".into(),
                        },
                    );
                }
                return;
            }
            send_or_drop(&backend, &*socket, &user, &frame).await;
        })
    })
}

async fn read_loop<S: ServerSocket>(
    backend: Arc<Backend>,
    socket: Arc<S>,
    user: String,
    context: Arc<Mutex<Option<String>>>,
) -> ReaderEnd {
    for delay in PROGRESSIVE_DELAYS_MS {
        pause(delay).await;
    }
    loop {
        // FIX (partial): read only while the socket is connected and ready.
        if !socket.is_connected_and_ready() {
            break;
        }
        match socket.receive().await {
            Ok(Inbound::Chat { id, .. }) => {
                let ctx = lock(&context).clone();
                legacy_route(&backend, &*socket, &user, ctx, id).await;
            }
            Ok(Inbound::Disconnect(_)) => break,
            Err(e) if matches!(e.kind, ErrorKind::Disconnected(_)) => break,
            Err(e) => {
                transport_error(&backend, &user, "receive", &e);
                return ReaderEnd::GaveUp;
            }
        }
    }
    backend.unregister(&user);
    ReaderEnd::Disconnected
}
