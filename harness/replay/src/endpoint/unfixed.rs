//! `unfixed`: the production endpoint as the seed's audit found it.
//!
//! The race: the connection is registered with the manager at upgrade, before `accept()`
//! completes, so the notifier and the heartbeat can send on a socket that is not accepted; the
//! reader starts with setup rather than after it, so first messages are routed to a router with
//! no handler yet and dropped; and the user context is read from shared state across an await,
//! so two users whose setups interleave can be crossed. A failed setup closes the socket but
//! runs none of its rollback. There is no fix here: this is the baseline the gate must fail.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use super::{
    Endpoint, ReaderEnd, legacy_fail, legacy_heartbeat, legacy_route, lock, send_or_drop, state,
    transport_error,
};
use crate::backend::{Backend, Pusher, pause};
use crate::scenario::Phase;
use crate::trace::EventKind;
use crate::transport::{ErrorKind, Inbound, ServerSocket};

/// The production endpoint.
pub struct Unfixed;

/// Receive errors the reader retries (the seed's reactive "race condition handling") before it
/// gives up, and how long it backs off between them.
const READER_RETRIES: u32 = 3;
const READER_BACKOFF_MS: u64 = 50;

impl Endpoint for Unfixed {
    async fn serve<S: ServerSocket>(backend: Arc<Backend>, socket: Arc<S>, user: String) {
        let b = &*backend;
        state(b, &user, "connecting");
        let live = Arc::new(AtomicBool::new(true));
        // RACE: reachable by the notifier and the heartbeat before the handshake completes.
        b.register(
            &user,
            raw_pusher(backend.clone(), socket.clone(), user.clone()),
        );
        if b.config.heartbeat_ms > 0 {
            let hb = legacy_heartbeat(
                backend.clone(),
                socket.clone(),
                user.clone(),
                live.clone(),
                false,
            );
            tokio::spawn(hb);
        }
        // RACE: the reader runs concurrently with setup, from the upgrade on.
        let context: Arc<Mutex<Option<String>>> = Arc::default();
        let reader = tokio::spawn(read_loop(
            backend.clone(),
            socket.clone(),
            user.clone(),
            context.clone(),
        ));

        if let Err(e) = socket.accept().await {
            transport_error(b, &user, "accept", &e);
            legacy_fail(b, &*socket, &user, 1011, &live).await;
            return;
        }
        state(b, &user, "accepted");

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
        // RACE: read across the await above; another user's auth may have replaced it.
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
            // Nobody reads this socket any more; the connection is neither open nor ended.
            ReaderEnd::GaveUp => {}
        }
    }
}

/// The manager's way to this connection: straight onto the socket, whatever its state.
fn raw_pusher<S: ServerSocket>(backend: Arc<Backend>, socket: Arc<S>, user: String) -> Pusher {
    Arc::new(move |frame| {
        let (backend, socket, user) = (backend.clone(), socket.clone(), user.clone());
        Box::pin(async move {
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
    let mut errors = 0;
    loop {
        match socket.receive().await {
            Ok(Inbound::Chat { id, .. }) => {
                let ctx = lock(&context).clone();
                legacy_route(&backend, &*socket, &user, ctx, id).await;
            }
            Ok(Inbound::Disconnect(_)) => break,
            Err(e) if matches!(e.kind, ErrorKind::Disconnected(_)) => break,
            Err(e) => {
                transport_error(&backend, &user, "receive", &e);
                errors += 1;
                if errors >= READER_RETRIES {
                    return ReaderEnd::GaveUp;
                }
                pause(READER_BACKOFF_MS).await;
            }
        }
    }
    backend.unregister(&user);
    ReaderEnd::Disconnected
}
