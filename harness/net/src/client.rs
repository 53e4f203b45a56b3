//! The replay's client over a real socket: [`WsClient`] does what `FakeClient` does, over
//! tokio-tungstenite, so the runner's schedule drives both; [`WsConnector`] opens one per user
//! against an in-process server on loopback.
//!
//! `connect` returns at once and the handshake runs in the client's own task, so the client sees
//! `Open` only when the endpoint accepts, as with the fake. Sends and the close are queued to that
//! task, which keeps them in order with no await in the runner's schedule.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use racegate_replay::EndpointKind;
use racegate_replay::backend::Backend;
use racegate_replay::runner::{Connector, ReplayClient};
use racegate_replay::scenario::User;
use racegate_replay::trace::Frame;
use racegate_replay::transport::fake::{ClientEvent, ClientSendError};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};

use crate::server::serve_stream;
use crate::socket::{Counters, Lifecycle, Limits, SocketCtx};
use crate::wire;

#[derive(Debug, Default)]
struct Flags {
    open: bool,
    closed_by_us: bool,
    closed_by_server: bool,
}

#[derive(Debug)]
enum Cmd {
    Chat(String),
    Close,
}

/// A replay client over a real WebSocket.
#[derive(Debug)]
pub struct WsClient {
    flags: Arc<Mutex<Flags>>,
    cmds: mpsc::UnboundedSender<Cmd>,
    events: mpsc::UnboundedReceiver<ClientEvent>,
}

fn lock(flags: &Mutex<Flags>) -> MutexGuard<'_, Flags> {
    match flags.lock() {
        Ok(guard) => guard,
        Err(poisoned) => poisoned.into_inner(),
    }
}

/// `?token=` with the user id percent-encoded.
pub fn token_query(user: &str) -> String {
    let mut out = String::from("?token=");
    for b in user.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

impl WsClient {
    /// Starts connecting to `ws://addr{target}`; returns at once.
    pub fn connect(addr: SocketAddr, target: String, limits: Limits) -> WsClient {
        let flags = Arc::new(Mutex::new(Flags::default()));
        let (cmds, cmd_rx) = mpsc::unbounded_channel();
        let (event_tx, events) = mpsc::unbounded_channel();
        tokio::spawn(run(addr, target, limits, flags.clone(), cmd_rx, event_tx));
        WsClient {
            flags,
            cmds,
            events,
        }
    }
}

impl ReplayClient for WsClient {
    fn send_chat(&self, id: &str, text: &str) -> Result<(), ClientSendError> {
        let flags = lock(&self.flags);
        if flags.closed_by_us || flags.closed_by_server {
            return Err(ClientSendError::Closed);
        }
        if !flags.open {
            return Err(ClientSendError::NotOpen);
        }
        self.cmds
            .send(Cmd::Chat(wire::chat_text(id, text)))
            .map_err(|_| ClientSendError::Closed)
    }

    fn close(&self) -> bool {
        let mut flags = lock(&self.flags);
        if flags.closed_by_us || flags.closed_by_server {
            return false;
        }
        flags.closed_by_us = true;
        self.cmds.send(Cmd::Close).is_ok()
    }

    async fn next_event(&mut self) -> Option<ClientEvent> {
        self.events.recv().await
    }
}

/// The HTTP status of a refused upgrade (uvicorn: 403 for a close before accept, 500 for an
/// application that ended before accepting; no close code either way).
fn refused_status(err: &WsError) -> Option<u16> {
    match err {
        WsError::Http(response) => Some(response.status().as_u16()),
        _ => None,
    }
}

async fn run(
    addr: SocketAddr,
    target: String,
    limits: Limits,
    flags: Arc<Mutex<Flags>>,
    mut cmds: mpsc::UnboundedReceiver<Cmd>,
    events: mpsc::UnboundedSender<ClientEvent>,
) {
    let Ok(stream) = TcpStream::connect(addr).await else {
        return;
    };
    let _ = stream.set_nodelay(true);
    let url = format!("ws://{addr}{target}");
    let handshake =
        tokio_tungstenite::client_async_with_config(url, stream, Some(limits.ws_config()));
    // A client that leaves before the handshake completes closes its TCP connection (dropping
    // the handshake drops the stream): the server's accept() must find it gone, as uvicorn's
    // raises ClientDisconnected.
    let handshake = tokio::select! {
        done = handshake => done,
        // Only a close can come now: `send_chat` refuses a connection that is not open.
        _ = cmds.recv() => return,
    };
    let mut ws = match handshake {
        Ok((ws, _)) => ws,
        Err(e) => {
            // Refused before accept: the client learns the HTTP status, not a close code.
            if let Some(status) = refused_status(&e) {
                lock(&flags).closed_by_server = true;
                let _ = events.send(ClientEvent::Refused(status));
            }
            return;
        }
    };
    lock(&flags).open = true;
    let _ = events.send(ClientEvent::Open);
    loop {
        tokio::select! {
            biased;
            msg = ws.next() => match msg {
                Some(Ok(Message::Text(text))) => match wire::decode_server(text.as_str()) {
                    Ok(frame) => {
                        let _ = events.send(ClientEvent::Frame(frame));
                    }
                    Err(e) => tracing::warn!("replay client: {e}"),
                },
                Some(Ok(Message::Ping(_))) => {
                    let _ = events.send(ClientEvent::Frame(Frame::Ping));
                }
                Some(Ok(Message::Close(frame))) => {
                    let code = frame.map_or(1005, |f| u16::from(f.code));
                    let ours = {
                        let mut f = lock(&flags);
                        let ours = f.closed_by_us;
                        f.closed_by_server = true;
                        ours
                    };
                    if !ours {
                        let _ = events.send(ClientEvent::Closed(code));
                    }
                    // Let tungstenite send the reply.
                    let drain = async { while let Some(Ok(_)) = ws.next().await {} };
                    let _ = tokio::time::timeout(limits.close_timeout, drain).await;
                    return;
                }
                Some(Ok(Message::Binary(_) | Message::Pong(_) | Message::Frame(_))) => {}
                // Ended without a close frame (uvicorn drops the TCP connection when the
                // application ends after accepting): the client sees that, unless it was
                // closing itself.
                Some(Err(_)) | None => {
                    let ours = {
                        let mut f = lock(&flags);
                        let ours = f.closed_by_us;
                        f.closed_by_server = true;
                        ours
                    };
                    if !ours {
                        let _ = events.send(ClientEvent::Dropped);
                    }
                    return;
                }
            },
            cmd = cmds.recv() => match cmd {
                Some(Cmd::Chat(text)) => {
                    if ws.send(Message::text(text)).await.is_err() {
                        return;
                    }
                }
                Some(Cmd::Close) => {
                    let frame = CloseFrame { code: CloseCode::Normal, reason: "".into() };
                    let closing = async {
                        if ws.close(Some(frame)).await.is_ok() {
                            while let Some(Ok(_)) = ws.next().await {}
                        }
                    };
                    let _ = tokio::time::timeout(limits.close_timeout, closing).await;
                    return;
                }
                // The client was dropped: the TCP connection goes with it.
                None => return,
            },
        }
    }
}

/// Opens each replayed user's connection over loopback to an in-process server.
///
/// Each `connect` starts a client and a server task that accepts one connection from the shared
/// listener and serves it with the run's backend, exactly as `racegate serve` would.
pub struct WsConnector {
    listener: Arc<TcpListener>,
    addr: SocketAddr,
    limits: Limits,
    lifecycle: watch::Receiver<Lifecycle>,
    _lifecycle_tx: watch::Sender<Lifecycle>,
    counters: Arc<Counters>,
}

impl WsConnector {
    /// A connector over `listener` (bound on loopback).
    pub fn new(listener: TcpListener, limits: Limits) -> std::io::Result<WsConnector> {
        let addr = listener.local_addr()?;
        let (tx, lifecycle) = watch::channel(Lifecycle::Serving);
        Ok(WsConnector {
            listener: Arc::new(listener),
            addr,
            limits,
            lifecycle,
            _lifecycle_tx: tx,
            counters: Arc::default(),
        })
    }
}

impl Connector for WsConnector {
    type Client = WsClient;

    /// A loopback handshake takes well under a millisecond, but on a loaded 2-core machine a
    /// task can wait tens of milliseconds to run: a quarter second covers that with room.
    fn open_slack(&self) -> Duration {
        Duration::from_millis(250)
    }

    fn connect(&self, backend: &Arc<Backend>, endpoint: EndpointKind, user: &User) -> WsClient {
        let listener = self.listener.clone();
        let ctx = SocketCtx {
            limits: self.limits,
            lifecycle: self.lifecycle.clone(),
            counters: self.counters.clone(),
        };
        let backend = backend.clone();
        let accept_delay = Duration::from_millis(backend.config.accept_ms);
        tokio::spawn(async move {
            if let Ok((stream, _)) = listener.accept().await {
                serve_stream(stream, ctx, endpoint, accept_delay, move || backend).await;
            }
        });
        WsClient::connect(
            self.addr,
            format!("/ws{}", token_query(&user.id)),
            self.limits,
        )
    }
}
