//! `state-machine`: the fix.
//!
//! What it changes from `unfixed`: every use of the connection, inbound or outbound, goes through
//! its [`ConnectionStateMachine`], whose readiness check and enqueue are one step. The notifier can
//! still find the connection from its upgrade on, but what it sends is held, with early chats,
//! until `ProcessingReady`, then flushed in order before anything later. The user context belongs
//! to the connection. A failed setup rolls back (unregister, drop services and handlers: once
//! each, newest first), rejects what was held, visibly, and closes with the phase's code (1008
//! auth, 1011 services or registration); an overflowing queue closes with 1013.

use std::num::NonZeroU64;
use std::sync::{Arc, Mutex};

use racegate_core::{ConnectionState, ConnectionStateMachine, EnqueueError, Payload, QueueLimits};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::lifecycle::{self, Lifecycle};
use super::{Endpoint, lock, state, tracked_id, transport_error};
use crate::backend::{Backend, Pusher, pause};
use crate::setup::Phase;
use crate::trace::{EventKind, Frame};
use crate::transport::{ErrorKind, Inbound, ServerSocket, TransportError};

/// The fixed endpoint.
pub struct StateMachine;

impl Endpoint for StateMachine {
    async fn serve<S: ServerSocket>(
        backend: Arc<Backend>,
        socket: Arc<S>,
        user: String,
        label: String,
    ) {
        lifecycle::serve(Conn::new(backend, socket, user, label)).await;
    }
}

/// What one connection's machine carries: chats in, frames out, in one FIFO.
#[derive(Debug)]
enum Item {
    Chat { id: String, text: String },
    Out(Frame),
}

impl Payload for Item {
    fn byte_len(&self) -> usize {
        match self {
            Item::Chat { id, text } => id.len() + text.len(),
            Item::Out(Frame::Push { id, text, .. }) => id.len() + text.len(),
            Item::Out(_) => 16,
        }
    }
}

/// The sink runs under the machine's lock: it sends frames (the socket's send never waits) and
/// moves chats onto the handler's channel. Delivery order is therefore the lock's order.
type Sink = Box<dyn FnMut(Item) + Send>;
type Machine = ConnectionStateMachine<Item, Sink>;

/// One connection: its machine, its socket, its own user.
struct Conn<S> {
    backend: Arc<Backend>,
    socket: Arc<S>,
    /// The user its upgrade named: whom it serves, and its key in the manager.
    user: String,
    /// What the trace records it under (the user's id, or `id#k` for its `k`-th connection).
    label: String,
    machine: Machine,
    /// The handler's channel. Dropped when the connection ends, so the handler drains what was
    /// delivered and stops, and the connection can be freed.
    chats: Chats,
    /// The handler's end of it, until registration starts the handler.
    handler: Mutex<Option<mpsc::UnboundedReceiver<(String, String)>>>,
    reader: Mutex<Option<JoinHandle<()>>>,
}

/// The way to the handler: a chat's id and text. `None` once the connection ended.
type Chats = Arc<Mutex<Option<mpsc::UnboundedSender<(String, String)>>>>;

impl<S: ServerSocket> Conn<S> {
    fn new(backend: Arc<Backend>, socket: Arc<S>, user: String, label: String) -> Arc<Self> {
        let (chat_tx, chat_rx) = mpsc::unbounded_channel();
        let chats = Arc::new(Mutex::new(Some(chat_tx)));
        let sink = sink(
            backend.clone(),
            socket.clone(),
            label.clone(),
            chats.clone(),
        );
        let limits = QueueLimits {
            max_messages: backend.config.queue_capacity,
            max_bytes: backend.config.queue_bytes,
        };
        Arc::new(Conn {
            backend,
            socket,
            user,
            label,
            machine: ConnectionStateMachine::new(limits, sink),
            chats,
            handler: Mutex::new(Some(chat_rx)),
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
        // FIX: reachable from the upgrade on, but only through the machine; one of its user's
        // connections, never in another's place, and it removes only itself.
        self.backend
            .register_also(&self.user, &self.label, pusher(self.clone()));
        self.cleanup("unregister", {
            let (b, u, c) = (self.backend.clone(), self.user.clone(), self.label.clone());
            move || b.unregister_own(&u, &c)
        });
    }

    fn before_accept(self: &Arc<Self>) {}

    async fn on_accept_failed(self: &Arc<Self>, e: TransportError) {
        // Ended while the handshake was in flight (an overflow, the client leaving): whoever
        // ended it closed the socket and accounted for everything. Terminal is absorbing, so
        // this read cannot go stale.
        if self.machine.state().is_terminal() {
            return;
        }
        transport_error(&self.backend, &self.label, "accept", &e);
        // A handshake that failed leaves nothing to close.
        self.fail(None, "handshake failed").await;
    }

    /// Moves forward; false if the connection already ended (a reader saw a close or overflow).
    fn advance(&self, to: ConnectionState) -> bool {
        match self.machine.advance(to) {
            Ok(_) => {
                state(&self.backend, &self.label, to);
                true
            }
            Err(_) => false,
        }
    }

    fn after_accept(self: &Arc<Self>) {
        // FIX: the reader starts once accepted; what it reads is held until ready.
        self.start_reader();
    }

    async fn on_failure(self: &Arc<Self>, phase: Phase) {
        let reason = match phase {
            Phase::Auth => "authentication failed",
            Phase::Services => "service creation failed",
            Phase::Register => "handler registration failed",
        };
        self.fail(Some(phase.close_code()), reason).await;
    }

    fn on_phase_done(self: &Arc<Self>, phase: Phase) {
        match phase {
            Phase::Auth => {
                // FIX: no shared user context; the connection's own user is used throughout.
                self.cleanup("auth_session", || {});
            }
            Phase::Services => {
                self.cleanup("services", || {});
            }
            Phase::Register => {
                self.cleanup("handlers", || {});
                // The handler exists before the flush that feeds it.
                if let Some(chats) = lock(&self.handler).take() {
                    tokio::spawn(handle_loop(self.clone(), chats));
                }
            }
        }
    }

    async fn process(self: &Arc<Self>) {
        // 0 ms is no heartbeat. The period is a NonZeroU64 because a zero-period loop has nothing
        // to wait on: it would never yield, and the virtual clock would never move again.
        if let Some(every) = NonZeroU64::new(self.backend.config.heartbeat_ms) {
            tokio::spawn(heartbeat(self.clone(), every));
        }
        let reader = lock(&self.reader).take();
        if let Some(reader) = reader {
            let _ = reader.await;
        }
    }
}

impl<S: ServerSocket> Conn<S> {
    fn start_reader(self: &Arc<Self>) {
        *lock(&self.reader) = Some(tokio::spawn(read_loop(self.clone())));
    }

    /// Registers a setup rollback action, recording it and, when it runs, that it ran.
    fn cleanup(&self, name: &'static str, undo: impl FnOnce() + Send + 'static) {
        let (b, u) = (self.backend.clone(), self.label.clone());
        self.backend
            .record(&self.label, EventKind::CleanupRegistered { name });
        let _ = self.machine.register_cleanup(move || {
            undo();
            b.record(&u, EventKind::CleanupRan { name });
        });
    }

    /// Offers a chat to the machine: held until ready, then handled as this connection's user.
    async fn deliver(&self, id: String, text: String) {
        self.offer(Item::Chat { id, text }).await;
    }

    /// Ends the connection in `Failed`, closing with `code` if there is a socket to close. The
    /// machine runs the rollback; everything it held is rejected visibly. Later callers find it
    /// already ended.
    async fn fail(&self, code: Option<u16>, reason: &str) {
        self.fail_with(code, reason, None).await;
    }

    /// [`fail`](Self::fail), also rejecting `newest`, the item that caused it (after the held
    /// ones, which are older).
    async fn fail_with(&self, code: Option<u16>, reason: &str, newest: Option<Item>) {
        let Ok(ended) = self.machine.fail() else {
            if let Some(item) = newest {
                self.reject(item, reason).await;
            }
            return;
        };
        state(&self.backend, &self.label, ConnectionState::Failed);
        lock(&self.chats).take();
        self.reject_all(ended.undelivered, reason).await;
        if let Some(item) = newest {
            self.reject(item, reason).await;
        }
        // A send that found the client gone already ended the socket (Starlette's application
        // state is DISCONNECTED): a close now would raise "Cannot call send once a close
        // message has been sent". Before accept the socket is CONNECTING and the close is the
        // 403 refusal. (Found by explore, seed 1, with a one-message queue.)
        let accepted = ended.from != ConnectionState::Connecting;
        if let Some(code) = code
            && (!accepted || self.socket.is_connected())
        {
            match self.socket.close(code).await {
                Ok(()) => self
                    .backend
                    .record(&self.label, EventKind::ServerClose { code }),
                Err(e) => transport_error(&self.backend, &self.label, "close", &e),
            }
        }
        self.backend.record(
            &self.label,
            EventKind::Terminal {
                state: ConnectionState::Failed,
            },
        );
    }

    /// The client went away: end in `Closed`; rollback if it never became ready.
    async fn closed_by_client(&self) {
        let Ok(ended) = self.machine.close() else {
            return;
        };
        state(&self.backend, &self.label, ConnectionState::Closed);
        lock(&self.chats).take();
        if ended.from.is_ready() {
            self.backend.unregister_own(&self.user, &self.label);
        }
        self.reject_all(ended.undelivered, "client closed during setup")
            .await;
        self.backend.record(
            &self.label,
            EventKind::Terminal {
                state: ConnectionState::Closed,
            },
        );
    }

    async fn reject_all(&self, items: Vec<Item>, reason: &str) {
        for item in items {
            self.reject(item, reason).await;
        }
    }

    /// Rejects one item visibly: recorded, and for a chat an error frame to its client.
    async fn reject(&self, item: Item, reason: &str) {
        let id = match &item {
            Item::Chat { id, .. } => id.clone(),
            Item::Out(frame) => match tracked_id(frame) {
                Some(id) => id.to_string(),
                None => return,
            },
        };
        self.backend.record(
            &self.label,
            EventKind::Rejected {
                id: id.clone(),
                reason: reason.to_string(),
            },
        );
        if matches!(item, Item::Chat { .. }) && self.socket.is_connected_and_ready() {
            let frame = Frame::Error {
                message: format!("message {id} rejected: {reason}"),
            };
            if let Err(e) = self.socket.send(&frame) {
                transport_error(&self.backend, &self.label, "send", &e);
            }
        }
    }

    /// Offers `item` to the machine; overflow fails the connection with 1013.
    async fn offer(&self, item: Item) {
        match self.machine.deliver_or_enqueue(item) {
            Ok(_) => {}
            Err(EnqueueError::Full { message, .. }) => {
                self.fail_with(Some(1013), "pre-ready queue full", Some(message))
                    .await;
            }
            Err(EnqueueError::Closed { message, state }) => {
                self.reject(message, &format!("connection {state}")).await;
            }
        }
    }
}

/// The manager's way to this connection: through the machine, held until ready.
fn pusher<S: ServerSocket>(conn: Arc<Conn<S>>) -> Pusher {
    Arc::new(move |frame| {
        let conn = conn.clone();
        Box::pin(async move { conn.offer(Item::Out(frame)).await })
    })
}

async fn read_loop<S: ServerSocket>(conn: Arc<Conn<S>>) {
    loop {
        if conn.machine.state().is_terminal() {
            return;
        }
        // A send that found the client gone leaves Starlette's application state DISCONNECTED,
        // and `receive_text` then raises "Need to call accept first": the connection is over,
        // and the way to end it is to stop reading, not to read once more. (Found by explore,
        // seed 1, once the fake transport followed Starlette: a client closing at the instant
        // of readiness made the flush's ack fail.)
        if !conn.socket.is_connected() {
            break;
        }
        match conn.socket.receive().await {
            Ok(Inbound::Chat { id, text }) => conn.deliver(id, text).await,
            Ok(Inbound::Disconnect(_)) => break,
            Err(e) if matches!(e.kind, ErrorKind::Disconnected(_)) => break,
            Err(e) => {
                transport_error(&conn.backend, &conn.label, "receive", &e);
                break;
            }
        }
    }
    conn.closed_by_client().await;
}

/// Chats, in order, once ready: ack, then one agent run through the machine.
async fn handle_loop<S: ServerSocket>(
    conn: Arc<Conn<S>>,
    mut chats: mpsc::UnboundedReceiver<(String, String)>,
) {
    while let Some((id, text)) = chats.recv().await {
        if conn.machine.state().is_terminal() {
            // Delivered, then the client left before the handler got to it: refuse it visibly
            // rather than handle it on a closed connection.
            conn.reject(
                Item::Chat { id, text },
                "connection closed before it was handled",
            )
            .await;
            continue;
        }
        let b = &conn.backend;
        b.record(
            &conn.label,
            EventKind::Handled {
                id: id.clone(),
                as_user: conn.user.clone(),
            },
        );
        conn.offer(Item::Out(Frame::Ack {
            id: id.clone(),
            user: conn.user.clone(),
        }))
        .await;
        let run_conn = conn.clone();
        tokio::spawn(async move {
            let c = run_conn.clone();
            run_conn
                .backend
                .agent_run(&id, &run_conn.user, |frame| {
                    let c = c.clone();
                    async move { c.offer(Item::Out(frame)).await }
                })
                .await;
        });
    }
}

async fn heartbeat<S: ServerSocket>(conn: Arc<Conn<S>>, every: NonZeroU64) {
    loop {
        pause(every.get()).await;
        if conn.machine.state().is_terminal() {
            return;
        }
        conn.offer(Item::Out(Frame::Ping)).await;
    }
}

/// The sink: chats to the handler, frames onto the socket.
fn sink<S: ServerSocket>(
    backend: Arc<Backend>,
    socket: Arc<S>,
    label: String,
    chats: Chats,
) -> Sink {
    // Once a send fails the socket is gone (Starlette marks it closed): every later frame is
    // rejected, never sent into it.
    let mut broken = false;
    Box::new(move |item| match item {
        Item::Chat { id, text } => {
            // No channel means the connection is over; end() accounts for the rest.
            if let Some(tx) = &*lock(&chats) {
                let _ = tx.send((id, text));
            }
        }
        Item::Out(frame) => {
            let failed = if broken {
                "connection ended"
            } else {
                match socket.send(&frame) {
                    Ok(()) => return,
                    Err(e) => {
                        transport_error(&backend, &label, "send", &e);
                        broken = true;
                        "send failed"
                    }
                }
            };
            if let Some(id) = tracked_id(&frame) {
                backend.record(
                    &label,
                    EventKind::Rejected {
                        id: id.to_string(),
                        reason: failed.to_string(),
                    },
                );
            }
        }
    })
}
