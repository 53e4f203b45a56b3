//! The three endpoints, one lifecycle.
//!
//! Each endpoint serves one connection over any [`ServerSocket`]: accept, authenticate, create
//! services, register handlers, then process messages, with the [`Backend`] supplying every
//! delay and failure. That order is written once, in `lifecycle::serve`; `unfixed`, `partial`
//! and `state_machine` implement its hooks in parallel files with the same structure, so a diff
//! between two of them shows the fix and nothing else (docs/endpoints.md walks through it). Each
//! opens by naming the race it has or the fix it makes.

mod lifecycle;
mod partial;
mod state_machine;
mod unfixed;

use std::future::Future;
use std::num::NonZeroU64;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

// A leaf of its own: scenario files name endpoints without depending on how they serve.
pub use crate::endpoint_kind::{EndpointKind, UnknownEndpoint};

use racegate_core::ConnectionState;

use crate::backend::{Backend, pause};
use crate::trace::{EventKind, Frame};
use crate::transport::{ServerSocket, TransportError};

/// One endpoint implementation: serves a connection from upgrade to end.
pub trait Endpoint {
    /// Serves `socket`, whose upgrade carried `user` as its token, recording what it does
    /// under `label` (the user's id for its first connection, `id#k` for its `k`-th).
    fn serve<S: ServerSocket>(
        backend: Arc<Backend>,
        socket: Arc<S>,
        user: String,
        label: String,
    ) -> impl Future<Output = ()> + Send;
}

impl EndpointKind {
    /// Serves one connection of `user` with this endpoint, recorded under the user's id.
    pub async fn serve<S: ServerSocket>(self, backend: Arc<Backend>, socket: Arc<S>, user: String) {
        let label = user.clone();
        self.serve_as(backend, socket, user, label).await;
    }

    /// Serves one connection of `user` with this endpoint, recorded under `label`: one of
    /// several connections of the user.
    pub async fn serve_as<S: ServerSocket>(
        self,
        backend: Arc<Backend>,
        socket: Arc<S>,
        user: String,
        label: String,
    ) {
        match self {
            EndpointKind::Unfixed => unfixed::Unfixed::serve(backend, socket, user, label).await,
            EndpointKind::Partial => partial::Partial::serve(backend, socket, user, label).await,
            EndpointKind::StateMachine => {
                state_machine::StateMachine::serve(backend, socket, user, label).await
            }
        }
    }
}

/// Records a transport error on connection `conn` if it is a lifecycle violation (a plain
/// disconnect is not). Every helper here records under the connection's label.
fn transport_error(backend: &Backend, conn: &str, op: &'static str, err: &TransportError) {
    if err.is_lifecycle_violation() {
        backend.record(
            conn,
            EventKind::TransportError {
                op,
                error: err.message.clone(),
            },
        );
    }
}

/// Records that the endpoint considers the connection to be in `state`.
fn state(backend: &Backend, user: &str, state: ConnectionState) {
    backend.record(user, EventKind::State { state });
}

/// The id a chat or push frame is tracked by, if any.
fn tracked_id(frame: &Frame) -> Option<&str> {
    match frame {
        Frame::Ack { id, .. } | Frame::Push { id, .. } => Some(id),
        Frame::Event { run, .. } => Some(run),
        Frame::Ping | Frame::Error { .. } => None,
    }
}

/// The heartbeat both legacy endpoints run: a ping every `every` ms while `live`. `guarded`
/// is the partial fix's `is_connected_and_ready()` check before each ping.
async fn legacy_heartbeat<S: ServerSocket>(
    backend: Arc<Backend>,
    socket: Arc<S>,
    user: String,
    live: Arc<AtomicBool>,
    every: NonZeroU64,
    guarded: bool,
) {
    while live.load(Ordering::Acquire) {
        pause(every.get()).await;
        if !live.load(Ordering::Acquire) {
            return;
        }
        if guarded && !socket.is_connected_and_ready() {
            continue;
        }
        match socket.send(&Frame::Ping) {
            Ok(()) => {}
            Err(e) if !e.is_lifecycle_violation() => return,
            Err(e) => {
                transport_error(&backend, &user, "send", &e);
                // The heartbeat's failure handler treats the socket as dead and closes it, under
                // the feet of whatever else is using it.
                match socket.close(1011).await {
                    Ok(()) => backend.record(&user, EventKind::ServerClose { code: 1011 }),
                    Err(e) => transport_error(&backend, &user, "close", &e),
                }
                return;
            }
        }
    }
}

/// The legacy routing path both `unfixed` and `partial` share: the global router, the shared
/// user context, and events sent through the manager to whichever connection that context names.
async fn legacy_route<S: ServerSocket>(
    backend: &Arc<Backend>,
    socket: &S,
    user: &str,
    context: Option<String>,
    id: String,
) {
    if !backend.router_has_handler() {
        // The production log line, and the message is gone: nobody tells the client.
        backend.record(
            user,
            EventKind::Dropped {
                id,
                reason: "no handler registered for message type 'chat'".into(),
            },
        );
        return;
    }
    // A connection still in setup has no context of its own yet: the shared one stands in.
    let as_user = context
        .or_else(|| backend.current_user())
        .unwrap_or_default();
    backend.record(
        user,
        EventKind::Handled {
            id: id.clone(),
            as_user: as_user.clone(),
        },
    );
    let ack = Frame::Ack {
        id: id.clone(),
        user: as_user.clone(),
    };
    if let Err(e) = socket.send(&ack) {
        transport_error(backend, user, "send", &e);
        return;
    }
    let backend = backend.clone();
    tokio::spawn(async move {
        let b = backend.clone();
        backend
            .agent_run(&id, &as_user, |frame| {
                let b = b.clone();
                let target = as_user.clone();
                async move {
                    if let Err(frame) = b.send_to_user(&target, frame).await {
                        let run = tracked_id(&frame).unwrap_or_default().to_string();
                        b.record(
                            &target,
                            EventKind::Dropped {
                                id: run,
                                reason: "agent event for a user with no connection".into(),
                            },
                        );
                    }
                }
            })
            .await;
    });
}

/// How a legacy endpoint's reader ended.
enum ReaderEnd {
    /// The client (or a server-side close) ended the connection.
    Disconnected,
    /// The reader stopped reading; the connection lingers with nobody listening.
    GaveUp,
}

/// Locks a std mutex, ignoring poison (a panicked task must not hide the run's trace).
fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    match m.lock() {
        Ok(guard) => guard,
        Err(poisoned) => poisoned.into_inner(),
    }
}

/// The legacy endpoints' failure path: close with `code` and stop. No rollback runs and nothing
/// held is rejected: that is part of the bug.
async fn legacy_fail<S: ServerSocket>(
    b: &Backend,
    socket: &S,
    user: &str,
    code: u16,
    live: &AtomicBool,
) {
    live.store(false, Ordering::Release);
    match socket.close(code).await {
        Ok(()) => b.record(user, EventKind::ServerClose { code }),
        Err(e) => transport_error(b, user, "close", &e),
    }
    state(b, user, ConnectionState::Failed);
    b.record(
        user,
        EventKind::Terminal {
            state: ConnectionState::Failed,
        },
    );
}

/// Sends `frame` straight onto the socket; a failure is logged and the frame dropped.
async fn send_or_drop<S: ServerSocket>(backend: &Backend, socket: &S, user: &str, frame: &Frame) {
    if let Err(e) = socket.send(frame) {
        transport_error(backend, user, "send", &e);
        if let Some(id) = tracked_id(frame) {
            backend.record(
                user,
                EventKind::Dropped {
                    id: id.to_string(),
                    reason: format!("send failed: {e}"),
                },
            );
        }
    }
}
