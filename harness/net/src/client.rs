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
use racegate_probe::session::{Pipelined, mask_for, masked_text};
use racegate_replay::EndpointKind;
use racegate_replay::backend::Backend;
use racegate_replay::runner::{Connector, Opening, ReplayClient};
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
    /// End the TCP connection without a close frame.
    Drop,
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
    format!("?token={}", percent_encode(user))
}

/// `?token=USER&conn=LABEL`: a user's second connection and later tell racegate's server the
/// label its trace records them under (a first connection's label is its user id).
pub fn conn_query(user: &str, label: &str) -> String {
    let mut out = token_query(user);
    if label != user {
        out.push_str("&conn=");
        out.push_str(&percent_encode(label));
    }
    out
}

fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
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
        Self::connect_pipelined(addr, target, limits, Vec::new())
    }

    /// Starts connecting to `ws://addr{target}` with `pipelined` (already framed) written in
    /// the same write as the upgrade request; returns at once.
    pub fn connect_pipelined(
        addr: SocketAddr,
        target: String,
        limits: Limits,
        pipelined: Vec<u8>,
    ) -> WsClient {
        let flags = Arc::new(Mutex::new(Flags::default()));
        let (cmds, cmd_rx) = mpsc::unbounded_channel();
        let (event_tx, events) = mpsc::unbounded_channel();
        let run = run(
            addr,
            target,
            limits,
            pipelined,
            flags.clone(),
            cmd_rx,
            event_tx,
        );
        tokio::spawn(run);
        WsClient {
            flags,
            cmds,
            events,
        }
    }
}

impl WsClient {
    fn leave(&self, how: Cmd) -> bool {
        let mut flags = lock(&self.flags);
        if flags.closed_by_us || flags.closed_by_server {
            return false;
        }
        flags.closed_by_us = true;
        self.cmds.send(how).is_ok()
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
        self.leave(Cmd::Close)
    }

    fn drop_connection(&self) -> bool {
        self.leave(Cmd::Drop)
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
    pipelined: Vec<u8>,
    flags: Arc<Mutex<Flags>>,
    mut cmds: mpsc::UnboundedReceiver<Cmd>,
    events: mpsc::UnboundedSender<ClientEvent>,
) {
    let Ok(stream) = TcpStream::connect(addr).await else {
        return;
    };
    let _ = stream.set_nodelay(true);
    let url = format!("ws://{addr}{target}");
    let stream = Pipelined::new(stream, pipelined);
    let handshake =
        tokio_tungstenite::client_async_with_config(url, stream, Some(limits.ws_config()));
    // A client that leaves before the handshake completes closes its TCP connection (dropping
    // the handshake drops the stream): the server's accept() must find it gone, as uvicorn's
    // raises ClientDisconnected.
    let handshake = tokio::select! {
        done = handshake => done,
        // Only a close or a drop can come now (`send_chat` refuses a connection that is not
        // open): either way the TCP connection ends.
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
                // `drop_ms`, or the client was dropped: the TCP connection goes, no close frame.
                Some(Cmd::Drop) | None => return,
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
        let opening = Opening {
            label: &user.id,
            pipelined: &[],
        };
        self.connect_as(backend, endpoint, user, opening)
    }

    fn connect_as(
        &self,
        backend: &Arc<Backend>,
        endpoint: EndpointKind,
        user: &User,
        opening: Opening<'_>,
    ) -> WsClient {
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
        let pipelined: Vec<u8> = opening
            .pipelined
            .iter()
            .enumerate()
            .flat_map(|(n, (id, text))| masked_text(&wire::chat_text(id, text), mask_for(n)))
            .collect();
        WsClient::connect_pipelined(
            self.addr,
            format!("/ws{}", conn_query(&user.id, opening.label)),
            self.limits,
            pipelined,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    #[test]
    fn a_later_connection_names_its_label_and_a_first_one_only_its_token() {
        assert_eq!(conn_query("u 1", "u 1"), "?token=u%201");
        assert_eq!(conn_query("u 1", "u 1#2"), "?token=u%201&conn=u%201%232");
    }

    #[test]
    fn pipelined_chats_go_out_in_the_upgrade_requests_own_write() {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async {
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            let frames: Vec<u8> =
                [masked_text("a", mask_for(0)), masked_text("b", mask_for(1))].concat();
            let client = WsClient::connect_pipelined(
                addr,
                format!("/ws{}", conn_query("u", "u#2")),
                Limits::default(),
                frames.clone(),
            );
            let (mut server, _) = listener.accept().await.unwrap();
            // The first read holds the whole write: the request head, then both frames.
            let mut buf = vec![0u8; 4096];
            let n = server.read(&mut buf).await.unwrap();
            let got = &buf[..n];
            let head = got
                .windows(4)
                .position(|w| w == b"\r\n\r\n")
                .map(|i| i + 4)
                .expect("the request head");
            assert!(
                got.starts_with(b"GET /ws?token=u&conn=u%232 HTTP/1.1\r\n"),
                "{}",
                String::from_utf8_lossy(got)
            );
            assert_eq!(&got[head..], &frames[..]);
            drop(client);
        });
    }
}
