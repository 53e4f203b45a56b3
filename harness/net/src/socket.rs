//! [`WsSocket`]: the endpoints' [`ServerSocket`] over a real TCP connection and tokio-tungstenite.
//!
//! It keeps the fake transport's Starlette states and errors, so `EndpointKind::serve` runs on it
//! unchanged: until the endpoint calls `accept()` the client is still waiting for its `101`
//! (sends and receives fail as they would in Starlette), `accept()` writes the handshake
//! response, and from then on one actor task per connection owns the WebSocket: it reads client
//! frames into a bounded inbound queue (so a client close is seen as soon as it arrives, as in
//! the fake) and writes what the endpoint sends, in order, batching flushes.
//!
//! Hostile input never reaches the endpoint. A frame that is not a chat is answered with an
//! error frame and the connection stays up; a frame that breaks the protocol ends it with a
//! close code (1007 invalid UTF-8, 1009 too big, 1002 anything else), and the endpoint sees that
//! as the client going away. Every wait is bounded: a client that stops reading is dropped once
//! its outbound queue fills or a flush outlasts the write timeout.
//!
//! Server shutdown is uvicorn's (websockets-sansio, `shutdown()`): an accepted connection is
//! closed with 1012 at once, its application's receive getting disconnect 1012 after whatever it
//! had already read; one not yet accepted is answered HTTP 500 at once, and its application's
//! `accept()` then raises `ClientDisconnected`, as when a client leaves (docs/conformance.md).

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use racegate_replay::trace::Frame;
use racegate_replay::transport::fake::WsState;
use racegate_replay::transport::{Inbound, ServerSocket, TransportError};
use tokio::net::TcpStream;
use tokio::sync::{Notify, mpsc, watch};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role, WebSocketConfig};
use tokio_tungstenite::tungstenite::{Error as WsError, Message};

use crate::handshake::{self, Upgrade};
use crate::wire::{self, FrameError, Outgoing};

/// Bounds on what one connection may cost. The defaults are the documented ones.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest client message or frame, in bytes (close 1009 above it).
    pub max_message_bytes: usize,
    /// Largest upgrade request head, in bytes (HTTP 431 above it).
    pub max_head_bytes: usize,
    /// How long a client may take to send its upgrade request (HTTP 408, then dropped).
    pub handshake_timeout: Duration,
    /// How long to wait for the peer's half of a close handshake before dropping the TCP.
    pub close_timeout: Duration,
    /// How long one flush may take before the client counts as gone.
    pub write_timeout: Duration,
    /// Client frames read ahead of the endpoint before the connection stops reading.
    pub inbound_frames: usize,
    /// Frames queued for a client that does not read before it counts as gone.
    pub outbound_frames: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_message_bytes: 64 * 1024,
            max_head_bytes: 8 * 1024,
            handshake_timeout: Duration::from_secs(10),
            close_timeout: Duration::from_secs(1),
            write_timeout: Duration::from_secs(10),
            inbound_frames: 256,
            outbound_frames: 4096,
        }
    }
}

impl Limits {
    /// The tungstenite configuration these limits imply (used by the echo baseline too).
    pub fn ws_config(&self) -> WebSocketConfig {
        WebSocketConfig::default()
            .read_buffer_size(2 * 1024)
            .write_buffer_size(8 * 1024)
            .max_message_size(Some(self.max_message_bytes))
            .max_frame_size(Some(self.max_message_bytes))
    }
}

/// The server's phase, seen by every connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lifecycle {
    /// Normal operation.
    Serving,
    /// racegate's opt-in grace period (`ServeOptions::grace`), not uvicorn's: connections not
    /// yet accepted are already answered HTTP 500; accepted ones read no new client frames and
    /// their in-flight work goes on.
    Draining,
    /// uvicorn's shutdown: every accepted connection closes with 1012 at once (its application
    /// receives disconnect 1012); every one not yet accepted is answered HTTP 500.
    ShuttingDown,
}

/// Live counts, shared by a server and its sockets. Tests read them to prove nothing leaks.
#[derive(Debug, Default)]
pub struct Counters {
    open: AtomicUsize,
    sessions: AtomicUsize,
    accepted: AtomicU64,
    refused: AtomicU64,
    error_frames: AtomicU64,
    protocol_closes: AtomicU64,
}

impl Counters {
    /// TCP connections the server holds right now.
    pub fn open(&self) -> usize {
        self.open.load(Ordering::Acquire)
    }
    /// Endpoint sessions still running (an endpoint may outlive its TCP connection briefly).
    pub fn sessions(&self) -> usize {
        self.sessions.load(Ordering::Acquire)
    }
    /// TCP connections accepted since start.
    pub fn accepted(&self) -> u64 {
        self.accepted.load(Ordering::Relaxed)
    }
    /// Upgrades refused before any endpoint saw them (bad request, timeout, too large).
    pub fn refused(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
    }
    /// Error frames sent for rejected client frames.
    pub fn error_frames(&self) -> u64 {
        self.error_frames.load(Ordering::Relaxed)
    }
    /// Connections closed for breaking the protocol (1002, 1007, 1009).
    pub fn protocol_closes(&self) -> u64 {
        self.protocol_closes.load(Ordering::Relaxed)
    }
    pub(crate) fn count_accepted(&self) {
        self.accepted.fetch_add(1, Ordering::Relaxed);
    }
    pub(crate) fn count_refused(&self) {
        self.refused.fetch_add(1, Ordering::Relaxed);
    }
}

/// Holds one running endpoint session in [`Counters::sessions`].
#[derive(Debug)]
pub(crate) struct SessionGuard(Arc<Counters>);

impl SessionGuard {
    pub(crate) fn new(counters: Arc<Counters>) -> Self {
        counters.sessions.fetch_add(1, Ordering::AcqRel);
        SessionGuard(counters)
    }
}

impl Drop for SessionGuard {
    fn drop(&mut self) {
        self.0.sessions.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Holds one open TCP connection in [`Counters::open`] for as long as it lives.
#[derive(Debug)]
pub(crate) struct OpenGuard(Arc<Counters>);

impl OpenGuard {
    pub(crate) fn new(counters: Arc<Counters>) -> Self {
        counters.open.fetch_add(1, Ordering::AcqRel);
        OpenGuard(counters)
    }
}

impl Drop for OpenGuard {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::AcqRel);
    }
}

/// What a connection needs from its server.
#[derive(Debug, Clone)]
pub(crate) struct SocketCtx {
    pub(crate) limits: Limits,
    pub(crate) lifecycle: watch::Receiver<Lifecycle>,
    pub(crate) counters: Arc<Counters>,
}

#[derive(Debug)]
struct State {
    client: WsState,
    application: WsState,
    peer_closed: bool,
    server_closed: Option<u16>,
    inbound: VecDeque<Inbound>,
    queued_out: usize,
    /// The server's shutdown answered the upgrade with HTTP 500 before the app accepted.
    shut_out: bool,
}

/// The part the actor shares with the endpoint's handle.
#[derive(Debug)]
struct Shared {
    state: Mutex<State>,
    /// The TCP connection until `accept()` (or a refusal) takes it.
    pending: Mutex<Option<Pending>>,
    inbound_ready: Notify,
    space: Notify,
    kill: Notify,
    /// The connection was taken from `pending`: the shutdown watcher has nothing left to do.
    settled: Notify,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        match self.state.lock() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    fn lock_pending(&self) -> MutexGuard<'_, Option<Pending>> {
        match self.pending.lock() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    fn take_pending(&self) -> Option<Pending> {
        let taken = self.lock_pending().take();
        if taken.is_some() {
            self.settled.notify_one();
        }
        taken
    }

    /// The server is shutting down and the application has not accepted: uvicorn answers HTTP
    /// 500 and closes the connection at once (its `send_500_response`). `shut_out` is set under
    /// the `pending` lock, so an `accept()` that finds the connection gone also finds why.
    async fn shut_out(&self) {
        let taken = {
            let mut pending = self.lock_pending();
            let taken = pending.take();
            if taken.is_some() {
                self.lock().shut_out = true;
            }
            taken
        };
        if let Some(mut pending) = taken {
            refuse_500(&mut pending.stream).await;
        }
    }

    /// The client side ended (its close, an error, a protocol failure, shutdown): the endpoint's
    /// next receive gets the disconnect, as in the fake.
    fn peer_gone(&self, code: u16) {
        let mut state = self.lock();
        if state.peer_closed || state.server_closed.is_some() {
            return;
        }
        state.peer_closed = true;
        state.inbound.push_back(Inbound::Disconnect(code));
        drop(state);
        self.inbound_ready.notify_one();
    }
}

/// What the endpoint hands the actor.
#[derive(Debug)]
enum Out {
    Msg(Message),
    Close(u16),
    /// The application returned without closing: drop the TCP connection once what it sent
    /// before is written (uvicorn's ASGI sends were awaited, so they are on the wire).
    Drop,
}

/// The TCP connection before `accept()`.
#[derive(Debug)]
struct Pending {
    stream: TcpStream,
    key: String,
    leftover: Vec<u8>,
    guard: OpenGuard,
}

/// The server half of one real WebSocket.
#[derive(Debug)]
pub struct WsSocket {
    shared: Arc<Shared>,
    out: OnceLock<mpsc::UnboundedSender<Out>>,
    accept_delay: Duration,
    ctx: SocketCtx,
}

/// The code the application receives when the TCP connection ends after the handshake without a
/// close frame: uvicorn's `connection_lost` reports 1005 once the handshake is complete (1006
/// only before it).
const LOST: u16 = 1005;

impl WsSocket {
    pub(crate) fn new(
        stream: TcpStream,
        upgrade: Upgrade,
        accept_delay: Duration,
        ctx: SocketCtx,
        guard: OpenGuard,
    ) -> Self {
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                // Starlette reads the client's `websocket.connect` inside `accept()`.
                client: WsState::Connecting,
                application: WsState::Connecting,
                peer_closed: false,
                server_closed: None,
                inbound: VecDeque::new(),
                queued_out: 0,
                shut_out: false,
            }),
            pending: Mutex::new(Some(Pending {
                stream,
                key: upgrade.key,
                // Frames that came in the same read as the upgrade request are lost, as under
                // uvicorn (websockets-sansio): only what the client sends after it is kept.
                // (`upgrade.leftover` is dropped with `upgrade`.)
                leftover: Vec::new(),
                guard,
            })),
            inbound_ready: Notify::new(),
            space: Notify::new(),
            kill: Notify::new(),
            settled: Notify::new(),
        });
        watch_shutdown(shared.clone(), ctx.lifecycle.clone());
        WsSocket {
            shared,
            out: OnceLock::new(),
            accept_delay,
            ctx,
        }
    }

    fn take_pending(&self) -> Option<Pending> {
        self.shared.take_pending()
    }

    fn check_connecting(&self) -> Result<(), TransportError> {
        match self.shared.lock().application {
            WsState::Connecting => Ok(()),
            WsState::Connected => Err(TransportError::expected_send("websocket.accept")),
            WsState::Disconnected => Err(TransportError::send_after_close()),
        }
    }

    /// `accept()` found the client gone. Starlette took its `websocket.connect` and set
    /// CONNECTED before sending; uvicorn raises `ClientDisconnected` and queues the disconnect
    /// with 1006 (lost before the handshake), which the next receive gets.
    fn client_left_before_accept(&self) -> TransportError {
        {
            let mut state = self.shared.lock();
            if state.application == WsState::Connecting {
                state.client = WsState::Connected;
                state.application = WsState::Connected;
            }
        }
        self.shared.peer_gone(1006);
        TransportError::client_disconnected()
    }

    /// Reads `stream`'s upgrade request and returns the socket still waiting for its `101`, as
    /// the server hands it to an endpoint: for a caller that drives one socket itself (the
    /// conformance suite). Default limits, no pre-accept delay, never shutting down.
    pub async fn from_upgrade(
        mut stream: TcpStream,
        limits: Limits,
    ) -> Result<WsSocket, handshake::HandshakeError> {
        let upgrade =
            handshake::read_upgrade(&mut stream, limits.max_head_bytes, limits.handshake_timeout)
                .await?;
        // Its sender is dropped at once: the lifecycle stays `Serving` for good.
        let (_, lifecycle) = watch::channel(Lifecycle::Serving);
        let ctx = SocketCtx {
            limits,
            lifecycle,
            counters: Arc::default(),
        };
        let guard = OpenGuard::new(ctx.counters.clone());
        Ok(WsSocket::new(stream, upgrade, Duration::ZERO, ctx, guard))
    }

    /// Starlette's `application_state`.
    pub fn application_state(&self) -> WsState {
        self.shared.lock().application
    }

    /// Starlette's `client_state`.
    pub fn client_state(&self) -> WsState {
        self.shared.lock().client
    }
}

/// Until the connection is accepted (or refused, or dropped): the shutdown's HTTP 500 comes at
/// once, not when the application next calls `accept()`. Without a runtime (or with a lifecycle
/// whose server is gone) there is no shutdown to wait for.
fn watch_shutdown(shared: Arc<Shared>, mut lifecycle: watch::Receiver<Lifecycle>) {
    let Ok(runtime) = tokio::runtime::Handle::try_current() else {
        return;
    };
    runtime.spawn(async move {
        let stopping = async {
            lifecycle
                .wait_for(|l| *l != Lifecycle::Serving)
                .await
                .is_ok()
        };
        tokio::select! {
            true = stopping => shared.shut_out().await,
            () = shared.settled.notified() => {}
        }
    });
}

/// uvicorn's answer to an upgrade its application did not accept (an exception, a return, a
/// server shutdown): HTTP 500 with its reason as the body.
async fn refuse_500(stream: &mut TcpStream) {
    let why = "Internal Server Error";
    handshake::write_refusal(stream, 500, why, why).await;
}

/// True when the client closed or reset while waiting for its `101`. Frames it sent after its
/// request (in later reads) are kept for the WebSocket.
fn client_gone(pending: &mut Pending) -> bool {
    let mut buf = [0u8; 1024];
    loop {
        match pending.stream.try_read(&mut buf) {
            Ok(0) => return true,
            Ok(n) => pending.leftover.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return false,
            Err(_) => return true,
        }
    }
}

/// The application is done with the socket (its last handle is gone). One that never accepted
/// nor closed gets uvicorn's answer to an ASGI app that returned, or raised, before the
/// handshake: HTTP 500. (After accept, the actor drops the TCP connection: the client sees the
/// stream end without a close frame, as under uvicorn.)
impl Drop for WsSocket {
    fn drop(&mut self) {
        if let Some(mut pending) = self.take_pending()
            && let Ok(runtime) = tokio::runtime::Handle::try_current()
        {
            runtime.spawn(async move { refuse_500(&mut pending.stream).await });
        }
    }
}

/// Starlette under uvicorn answers a close before accept with a bare 403: no body, and the
/// close code goes nowhere (docs/conformance.md).
async fn refuse_pending(mut pending: Pending, status: u16, reason: &str) {
    handshake::write_refusal(&mut pending.stream, status, reason, "").await;
}

impl WsSocket {
    /// The application (the ASGI callable) has returned or raised, as
    /// [`FakeSocket::app_finished`](racegate_replay::transport::fake::FakeSocket::app_finished):
    /// before accept the client gets HTTP 500; after accept, without a close, the TCP
    /// connection drops once what was sent is written (no close frame), and later sends from
    /// tasks the application left behind raise `WebSocketDisconnect(1006)`. Needed beyond
    /// `Drop`: an endpoint that registered the socket with its connection manager keeps a
    /// handle after it returns, and uvicorn does not wait for that.
    pub fn app_finished(&self) {
        if let Some(mut pending) = self.take_pending() {
            self.shared.lock().application = WsState::Disconnected;
            tokio::spawn(async move { refuse_500(&mut pending.stream).await });
            return;
        }
        let mut state = self.shared.lock();
        if state.peer_closed || state.application != WsState::Connected {
            return;
        }
        state.peer_closed = true;
        state.inbound.push_back(Inbound::Disconnect(1006));
        drop(state);
        self.shared.inbound_ready.notify_one();
        if let Some(tx) = self.out.get() {
            let _ = tx.send(Out::Drop);
        }
    }
}

impl ServerSocket for WsSocket {
    async fn accept(&self) -> Result<(), TransportError> {
        self.check_connecting()?;
        if !self.accept_delay.is_zero() {
            tokio::time::sleep(self.accept_delay).await;
        }
        self.check_connecting()?;
        let Some(mut pending) = self.take_pending() else {
            if self.shared.lock().shut_out {
                // The shutdown answered 500: to the application the client is gone.
                return Err(self.client_left_before_accept());
            }
            // Another task's accept is writing the handshake.
            return Err(TransportError::expected_send("websocket.accept"));
        };
        if client_gone(&mut pending) {
            return Err(self.client_left_before_accept());
        }
        if *self.ctx.lifecycle.borrow() != Lifecycle::Serving {
            // The shutdown began and its watcher has not got here yet: answer as it would.
            self.shared.lock().shut_out = true;
            refuse_500(&mut pending.stream).await;
            return Err(self.client_left_before_accept());
        }
        if handshake::write_accept(&mut pending.stream, &pending.key)
            .await
            .is_err()
        {
            return Err(self.client_left_before_accept());
        }
        let ws = WebSocketStream::from_partially_read(
            pending.stream,
            pending.leftover,
            Role::Server,
            Some(self.ctx.limits.ws_config()),
        )
        .await;
        let (tx, rx) = mpsc::unbounded_channel();
        let closed_meanwhile = {
            let mut state = self.shared.lock();
            match state.application {
                WsState::Connecting => {
                    state.client = WsState::Connected;
                    state.application = WsState::Connected;
                    None
                }
                WsState::Connected | WsState::Disconnected => state.server_closed,
            }
        };
        let actor = Actor {
            ws,
            shared: self.shared.clone(),
            out: rx,
            ctx: self.ctx.clone(),
            _guard: pending.guard,
        };
        tokio::spawn(actor.run());
        match closed_meanwhile {
            None => {
                let _ = self.out.set(tx);
                Ok(())
            }
            Some(code) => {
                // Closed by another task while the handshake was being written: the client
                // saw the socket open, so it gets the close frame.
                let _ = tx.send(Out::Close(code));
                Err(TransportError::send_after_close())
            }
        }
    }

    async fn receive(&self) -> Result<Inbound, TransportError> {
        {
            let state = self.shared.lock();
            if state.application != WsState::Connected {
                return Err(TransportError::not_connected());
            }
            if state.client == WsState::Disconnected {
                return Err(TransportError::receive_after_disconnect());
            }
        }
        loop {
            let notified = self.shared.inbound_ready.notified();
            {
                let mut state = self.shared.lock();
                if let Some(item) = state.inbound.pop_front() {
                    if let Inbound::Disconnect(_) = item {
                        state.client = WsState::Disconnected;
                    }
                    drop(state);
                    self.shared.space.notify_one();
                    return Ok(item);
                }
                if let Some(code) = state.server_closed {
                    // A receive already waiting when the server closed gets the disconnect.
                    state.client = WsState::Disconnected;
                    return Ok(Inbound::Disconnect(code));
                }
            }
            notified.await;
        }
    }

    fn send(&self, frame: &Frame) -> Result<(), TransportError> {
        {
            let mut state = self.shared.lock();
            match state.application {
                WsState::Connecting => {
                    return Err(TransportError::expected_accept("websocket.send"));
                }
                WsState::Disconnected => return Err(TransportError::send_after_close()),
                WsState::Connected if state.peer_closed => {
                    state.application = WsState::Disconnected;
                    return Err(TransportError::disconnected(1006));
                }
                WsState::Connected if state.queued_out >= self.ctx.limits.outbound_frames => {
                    // The client stopped reading: it is gone as far as anyone can tell.
                    state.application = WsState::Disconnected;
                    state.peer_closed = true;
                    state.inbound.push_back(Inbound::Disconnect(1006));
                    drop(state);
                    self.shared.inbound_ready.notify_one();
                    self.shared.kill.notify_one();
                    return Err(TransportError::disconnected(1006));
                }
                WsState::Connected => state.queued_out += 1,
            }
        }
        let msg = match wire::encode(frame) {
            Outgoing::Text(text) => Message::text(text),
            Outgoing::Ping => Message::Ping(Default::default()),
        };
        match self.out.get() {
            Some(tx) if tx.send(Out::Msg(msg)).is_ok() => Ok(()),
            Some(_) | None => {
                let mut state = self.shared.lock();
                state.application = WsState::Disconnected;
                state.peer_closed = true;
                Err(TransportError::disconnected(1006))
            }
        }
    }

    async fn close(&self, code: u16) -> Result<(), TransportError> {
        let mut state = self.shared.lock();
        let was = state.application;
        match was {
            WsState::Disconnected => return Err(TransportError::send_after_close()),
            WsState::Connecting | WsState::Connected => {
                state.application = WsState::Disconnected;
                state.server_closed = Some(code);
            }
        }
        let gone = state.peer_closed;
        drop(state);
        self.shared.inbound_ready.notify_one();
        match was {
            WsState::Connecting => {
                // Starlette answers a close before accept with HTTP 403; the code is lost.
                // A client that already left gets nothing, and the app uvicorn's
                // ClientDisconnected.
                if let Some(mut pending) = self.take_pending() {
                    if client_gone(&mut pending) {
                        return Err(TransportError::client_disconnected());
                    }
                    tokio::spawn(refuse_pending(pending, 403, "Forbidden"));
                } else if self.shared.lock().shut_out {
                    // The shutdown already answered 500 and closed the connection.
                    return Err(TransportError::client_disconnected());
                }
                Ok(())
            }
            // The client already left: Starlette turns uvicorn's ClientDisconnected into
            // WebSocketDisconnect(1006), so code after the close does not run.
            WsState::Connected | WsState::Disconnected if gone => {
                Err(TransportError::disconnected(1006))
            }
            WsState::Connected | WsState::Disconnected => {
                if let Some(tx) = self.out.get() {
                    let _ = tx.send(Out::Close(code));
                }
                Ok(())
            }
        }
    }

    fn is_connected(&self) -> bool {
        self.shared.lock().application == WsState::Connected
    }

    fn is_connected_and_ready(&self) -> bool {
        let state = self.shared.lock();
        state.application == WsState::Connected && state.client == WsState::Connected
    }
}

/// How the actor's main loop ended.
enum End {
    /// The TCP connection is done (peer closed, reset, or the endpoint dropped the socket).
    Gone,
    /// Send a close frame with this code and reason, then wait for the peer's reply.
    Close(u16, &'static str),
    /// Protocol failure: close with this code and reason.
    Fail(u16, String),
    /// The server is shutting down: close with 1012 and drop the connection at once.
    Shutdown,
}

/// Owns the WebSocket after accept.
struct Actor {
    ws: WebSocketStream<TcpStream>,
    shared: Arc<Shared>,
    out: mpsc::UnboundedReceiver<Out>,
    ctx: SocketCtx,
    _guard: OpenGuard,
}

impl Actor {
    async fn run(mut self) {
        let end = self.main().await;
        match end {
            End::Gone => {}
            End::Shutdown => self.shut_down().await,
            End::Close(code, reason) => self.close_handshake(code, reason.to_string()).await,
            End::Fail(code, reason) => {
                self.ctx
                    .counters
                    .protocol_closes
                    .fetch_add(1, Ordering::Relaxed);
                self.shared.peer_gone(code);
                self.close_handshake(code, reason).await;
            }
        }
    }

    async fn main(&mut self) -> End {
        let mut lifecycle = self.ctx.lifecycle.clone();
        let mut watching = true;
        let mut draining = *lifecycle.borrow_and_update() != Lifecycle::Serving;
        loop {
            if *lifecycle.borrow() == Lifecycle::ShuttingDown {
                // After what it has already read, the application receives 1012; its sends
                // from now on raise WebSocketDisconnect(1006), as uvicorn's do.
                self.shared.peer_gone(1012);
                return End::Shutdown;
            }
            let has_space = self.shared.lock().inbound.len() < self.ctx.limits.inbound_frames;
            let reading = has_space && !draining;
            tokio::select! {
                biased;
                () = self.shared.kill.notified() => return End::Gone,
                cmd = self.out.recv() => match cmd {
                    // The endpoint is done with the socket without closing it: drop the TCP.
                    None | Some(Out::Drop) => return End::Gone,
                    Some(Out::Close(code)) => return End::Close(code, ""),
                    Some(Out::Msg(msg)) => {
                        if let Some(end) = self.write_batch(msg).await {
                            return end;
                        }
                    }
                },
                changed = lifecycle.changed(), if watching => match changed {
                    Ok(()) => draining = *lifecycle.borrow() != Lifecycle::Serving,
                    Err(_) => watching = false,
                },
                () = self.shared.space.notified(), if !has_space => {}
                msg = self.ws.next(), if reading => {
                    if let Some(end) = self.inbound(msg).await {
                        return end;
                    }
                }
            }
        }
    }

    /// Writes `first` and whatever else is queued behind it, then flushes once.
    async fn write_batch(&mut self, first: Message) -> Option<End> {
        let mut next = Some(first);
        let mut written = 0;
        let mut close = None;
        let mut dropped = false;
        let mut yielded = false;
        while let Some(msg) = next.take() {
            written += 1;
            if self.ws.feed(msg).await.is_err() {
                self.shared.peer_gone(1006);
                return Some(End::Gone);
            }
            let mut more = self.out.try_recv();
            if more.is_err() && !yielded {
                // Once per write, let the tasks already woken (a chat's run, right behind its
                // ack) add their frames: one syscall for them all instead of one each.
                yielded = true;
                tokio::task::yield_now().await;
                more = self.out.try_recv();
            }
            match more {
                Ok(Out::Msg(msg)) => next = Some(msg),
                Ok(Out::Close(code)) => close = Some(code),
                Ok(Out::Drop) => dropped = true,
                Err(_) => {}
            }
        }
        let flushed = tokio::time::timeout(self.ctx.limits.write_timeout, self.ws.flush()).await;
        {
            let mut state = self.shared.lock();
            state.queued_out = state.queued_out.saturating_sub(written);
        }
        match flushed {
            Ok(Ok(())) if dropped => Some(End::Gone),
            Ok(Ok(())) => close.map(|code| End::Close(code, "")),
            Ok(Err(_)) | Err(_) => {
                self.shared.peer_gone(1006);
                Some(End::Gone)
            }
        }
    }

    /// One thing read from the client.
    async fn inbound(&mut self, msg: Option<Result<Message, WsError>>) -> Option<End> {
        let rejected = match msg {
            Some(Ok(Message::Text(text))) => match wire::parse_client(text.as_str()) {
                Ok(chat) => {
                    self.shared.lock().inbound.push_back(Inbound::Chat {
                        id: chat.id,
                        text: chat.text,
                    });
                    self.shared.inbound_ready.notify_one();
                    return None;
                }
                Err(e) => e,
            },
            Some(Ok(Message::Binary(_))) => FrameError::Binary,
            // Pongs to pings are tungstenite's job; nothing for the endpoint.
            Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => return None,
            Some(Ok(Message::Close(frame))) => {
                let code = frame.map_or(1005, |f| u16::from(f.code));
                self.shared.peer_gone(code);
                self.finish_peer_close().await;
                return Some(End::Gone);
            }
            Some(Err(e)) => return Some(self.read_error(e)),
            None => {
                self.shared.peer_gone(LOST);
                return Some(End::Gone);
            }
        };
        self.ctx
            .counters
            .error_frames
            .fetch_add(1, Ordering::Relaxed);
        let reply = Message::text(wire::error_text(&rejected.to_string()));
        let sent = tokio::time::timeout(self.ctx.limits.write_timeout, self.ws.send(reply)).await;
        match sent {
            Ok(Ok(())) => None,
            Ok(Err(_)) | Err(_) => {
                self.shared.peer_gone(1006);
                Some(End::Gone)
            }
        }
    }

    fn read_error(&self, e: WsError) -> End {
        match e {
            WsError::Utf8(_) => End::Fail(1007, "invalid UTF-8 in a text frame".into()),
            WsError::Capacity(_) => End::Fail(
                1009,
                format!(
                    "message over the {} byte limit",
                    self.ctx.limits.max_message_bytes
                ),
            ),
            WsError::Protocol(p) => {
                use tokio_tungstenite::tungstenite::error::ProtocolError;
                match p {
                    ProtocolError::ResetWithoutClosingHandshake => {
                        self.shared.peer_gone(LOST);
                        End::Gone
                    }
                    other => End::Fail(1002, format!("protocol error: {other}")),
                }
            }
            WsError::ConnectionClosed
            | WsError::AlreadyClosed
            | WsError::Io(_)
            | WsError::Tls(_)
            | WsError::WriteBufferFull(_)
            | WsError::AttackAttempt
            | WsError::Url(_)
            | WsError::Http(_)
            | WsError::HttpFormat(_) => {
                self.shared.peer_gone(LOST);
                End::Gone
            }
        }
    }

    /// The peer closed first: keep reading so tungstenite sends its reply, within the timeout.
    async fn finish_peer_close(&mut self) {
        let drain = async {
            let _ = self.ws.flush().await;
            while let Some(Ok(_)) = self.ws.next().await {}
        };
        let _ = tokio::time::timeout(self.ctx.limits.close_timeout, drain).await;
    }

    /// uvicorn's `shutdown()` for an accepted connection: what the application sent before it
    /// (uvicorn writes each send at once) goes out, then the close frame with 1012, unless the
    /// application's own close was already on its way; then the TCP connection is closed without
    /// waiting for the client's reply.
    async fn shut_down(&mut self) {
        let closing = async {
            let mut code = 1012;
            loop {
                match self.out.try_recv() {
                    Ok(Out::Msg(msg)) => {
                        if self.ws.feed(msg).await.is_err() {
                            return;
                        }
                    }
                    Ok(Out::Close(app_code)) => {
                        code = app_code;
                        break;
                    }
                    // The shutdown's close frame is already due; the app's end adds nothing.
                    Ok(Out::Drop) | Err(_) => break,
                }
            }
            let frame = CloseFrame {
                code: CloseCode::from(code),
                reason: "".into(),
            };
            let _ = self.ws.close(Some(frame)).await;
        };
        let _ = tokio::time::timeout(self.ctx.limits.close_timeout, closing).await;
    }

    /// We close: flush what is queued, send the close frame, wait for the reply or the timeout.
    async fn close_handshake(&mut self, code: u16, reason: String) {
        let frame = CloseFrame {
            code: CloseCode::from(code),
            reason: reason.into(),
        };
        let limit = self.ctx.limits.close_timeout;
        let closing = async {
            if self.ws.close(Some(frame)).await.is_err() {
                return;
            }
            while let Some(Ok(_)) = self.ws.next().await {}
        };
        let _ = tokio::time::timeout(limit, closing).await;
    }
}
