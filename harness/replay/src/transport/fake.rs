//! An in-memory WebSocket with Starlette's states and errors, driven by the harness.
//!
//! The server half implements [`ServerSocket`]; the [`FakeClient`] half is what a scenario's
//! user does. The only delay in here is the time before the handshake (`accept_ms`: what the
//! application spends before it calls `accept()`, e.g. Cloud Run latency; accept itself is instant);
//! every other delay belongs to the server's phases or the client's schedule. All waiting is on
//! tokio's clock, so under a paused runtime it costs no wall time.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::{Notify, mpsc};

use super::{Inbound, ServerSocket, TransportError};
use crate::trace::Frame;

/// Starlette's `WebSocketState`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WsState {
    /// Before the handshake.
    Connecting,
    /// Open.
    Connected,
    /// Closed.
    Disconnected,
}

/// What the client sees.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientEvent {
    /// The handshake completed.
    Open,
    /// A frame arrived.
    Frame(Frame),
    /// The server closed with this code.
    Closed(u16),
    /// The server answered the upgrade with this HTTP status instead of a WebSocket: Starlette
    /// under uvicorn answers a close before accept with 403 (no body, no close code) and an
    /// application that ended before accepting with 500.
    Refused(u16),
    /// The connection ended without a close frame: the application ended (returned or raised)
    /// after accepting without closing, and uvicorn dropped the TCP connection.
    Dropped,
}

#[derive(Debug)]
struct State {
    /// What the application has received from the client (Starlette's `client_state`).
    client: WsState,
    /// What the application has sent (Starlette's `application_state`).
    application: WsState,
    /// The client closed its side; the disconnect may still be queued in `inbound`.
    peer_closed: bool,
    /// The server closed; a receive already waiting is answered with this code.
    server_closed: Option<u16>,
    inbound: VecDeque<Inbound>,
}

/// The server half.
#[derive(Debug)]
pub struct FakeSocket {
    state: Mutex<State>,
    inbound_ready: Notify,
    to_client: mpsc::UnboundedSender<ClientEvent>,
    accept_delay: Duration,
}

/// The client half.
#[derive(Debug)]
pub struct FakeClient {
    socket: Arc<FakeSocket>,
    events: mpsc::UnboundedReceiver<ClientEvent>,
}

/// Why the client could not send.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClientSendError {
    /// The handshake has not completed.
    #[error("the connection is not open yet")]
    NotOpen,
    /// Either side closed.
    #[error("the connection is closed")]
    Closed,
}

/// A connected pair: the server's socket (application state `CONNECTING`) and its client.
pub fn pair(accept_delay: Duration) -> (Arc<FakeSocket>, FakeClient) {
    let (to_client, events) = mpsc::unbounded_channel();
    let socket = Arc::new(FakeSocket {
        state: Mutex::new(State {
            // Starlette reads the client's `websocket.connect` inside `accept()`: until then the
            // client state is CONNECTING, whatever the client does.
            client: WsState::Connecting,
            application: WsState::Connecting,
            peer_closed: false,
            server_closed: None,
            inbound: VecDeque::new(),
        }),
        inbound_ready: Notify::new(),
        to_client,
        accept_delay,
    });
    let client = FakeClient {
        socket: socket.clone(),
        events,
    };
    (socket, client)
}

impl FakeSocket {
    /// The application (the ASGI callable) has returned or raised: what uvicorn does with the
    /// connection then. Before accept the client gets HTTP 500; after accept, without a close,
    /// the TCP connection drops (no close frame) and later sends from tasks the application left
    /// behind raise `WebSocketDisconnect(1006)`, as Starlette turns uvicorn's
    /// `ClientDisconnected` into it. A connection the application closed is already over.
    pub fn app_finished(&self) {
        let mut state = self.lock();
        if state.peer_closed || state.application == WsState::Disconnected {
            return;
        }
        let connecting = state.application == WsState::Connecting;
        state.peer_closed = true;
        state.inbound.push_back(Inbound::Disconnect(1006));
        drop(state);
        self.inbound_ready.notify_one();
        self.tell_client(if connecting {
            ClientEvent::Refused(500)
        } else {
            ClientEvent::Dropped
        });
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        match self.state.lock() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    fn tell_client(&self, event: ClientEvent) {
        // The client may have stopped listening at the end of a run; nothing to report then.
        let _ = self.to_client.send(event);
    }

    /// Starlette's `application_state`.
    pub fn application_state(&self) -> WsState {
        self.lock().application
    }

    /// Starlette's `client_state`.
    pub fn client_state(&self) -> WsState {
        self.lock().client
    }
}

impl ServerSocket for FakeSocket {
    async fn accept(&self) -> Result<(), TransportError> {
        match self.lock().application {
            WsState::Connecting => {}
            WsState::Connected => return Err(TransportError::expected_send("websocket.accept")),
            WsState::Disconnected => return Err(TransportError::send_after_close()),
        }
        // `accept_ms`: the application's own time before it calls accept (state CONNECTING);
        // Starlette's accept then completes without waiting for the client.
        if !self.accept_delay.is_zero() {
            tokio::time::sleep(self.accept_delay).await;
        }
        let mut state = self.lock();
        match state.application {
            WsState::Connecting => {}
            // Another task closed (or accepted) during the pre-accept time.
            WsState::Connected => return Err(TransportError::expected_send("websocket.accept")),
            WsState::Disconnected => return Err(TransportError::send_after_close()),
        }
        // Starlette takes the client's `websocket.connect` and sets CONNECTED before it sends the
        // accept; uvicorn then raises `ClientDisconnected` if the client is gone, and the state
        // stays CONNECTED: the disconnect (1006) waits for the next receive.
        state.client = WsState::Connected;
        state.application = WsState::Connected;
        if state.peer_closed {
            return Err(TransportError::client_disconnected());
        }
        drop(state);
        self.tell_client(ClientEvent::Open);
        Ok(())
    }

    async fn receive(&self) -> Result<Inbound, TransportError> {
        {
            let state = self.lock();
            if state.application != WsState::Connected {
                return Err(TransportError::not_connected());
            }
            if state.client == WsState::Disconnected {
                return Err(TransportError::receive_after_disconnect());
            }
        }
        loop {
            let notified = self.inbound_ready.notified();
            {
                let mut state = self.lock();
                if let Some(item) = state.inbound.pop_front() {
                    if let Inbound::Disconnect(_) = item {
                        state.client = WsState::Disconnected;
                    }
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
        let mut state = self.lock();
        match state.application {
            WsState::Connecting => Err(TransportError::expected_accept("websocket.send")),
            WsState::Disconnected => Err(TransportError::send_after_close()),
            WsState::Connected if state.peer_closed => {
                state.application = WsState::Disconnected;
                Err(TransportError::disconnected(1006))
            }
            WsState::Connected => {
                drop(state);
                self.tell_client(ClientEvent::Frame(frame.clone()));
                Ok(())
            }
        }
    }

    async fn close(&self, code: u16) -> Result<(), TransportError> {
        let mut state = self.lock();
        match state.application {
            WsState::Disconnected => Err(TransportError::send_after_close()),
            was @ (WsState::Connecting | WsState::Connected) => {
                state.application = WsState::Disconnected;
                state.server_closed = Some(code);
                let gone = state.peer_closed;
                drop(state);
                self.inbound_ready.notify_one();
                if !gone {
                    self.tell_client(match was {
                        // No WebSocket yet: Starlette sends `websocket.close` as an HTTP 403,
                        // and the client never learns the code.
                        WsState::Connecting => ClientEvent::Refused(403),
                        WsState::Connected | WsState::Disconnected => ClientEvent::Closed(code),
                    });
                    return Ok(());
                }
                // The client already left: uvicorn's send raises ClientDisconnected, which
                // Starlette turns into WebSocketDisconnect(1006) once accepted and lets through
                // before. Code after the close does not run.
                Err(match was {
                    WsState::Connecting => TransportError::client_disconnected(),
                    WsState::Connected | WsState::Disconnected => {
                        TransportError::disconnected(1006)
                    }
                })
            }
        }
    }

    fn is_connected(&self) -> bool {
        self.lock().application == WsState::Connected
    }

    fn is_connected_and_ready(&self) -> bool {
        let state = self.lock();
        state.application == WsState::Connected && state.client == WsState::Connected
    }
}

impl FakeClient {
    /// Sends a chat; refused if the connection is not open.
    pub fn send_chat(&self, id: &str, text: &str) -> Result<(), ClientSendError> {
        let mut state = self.socket.lock();
        if state.peer_closed || state.server_closed.is_some() {
            return Err(ClientSendError::Closed);
        }
        if state.application == WsState::Connecting {
            return Err(ClientSendError::NotOpen);
        }
        state.inbound.push_back(Inbound::Chat {
            id: id.to_string(),
            text: text.to_string(),
        });
        drop(state);
        self.socket.inbound_ready.notify_one();
        Ok(())
    }

    /// Writes a chat in the same write as the upgrade request (a pipelining client), and
    /// returns true; false when the handshake is already over or either side closed, since a
    /// pipelined frame goes out with the request or not at all.
    ///
    /// The server never receives it. uvicorn's HTTP protocol reads the request and hands its
    /// WebSocket protocol only what the client sends after it: frames that came in the same
    /// read as the request are lost (the conformance case `pipelined-frames-lost`, which
    /// Starlette under uvicorn, racegate's real socket and `probe --app`'s driver all agree
    /// on). So this records nothing on the server's side.
    pub fn send_pipelined(&self, _id: &str, _text: &str) -> bool {
        let state = self.socket.lock();
        !state.peer_closed
            && state.server_closed.is_none()
            && state.application == WsState::Connecting
    }

    /// Closes the client's side with 1000. Returns false if it was already closed.
    ///
    /// Before the handshake completes a client has no WebSocket to close: it leaves by closing
    /// its TCP connection, and the application sees 1006 (uvicorn's code for a connection lost
    /// before the handshake).
    pub fn close(&self) -> bool {
        self.close_with(1000)
    }

    /// Closes the client's side with a close frame carrying `code` (before the handshake: a
    /// TCP leave, see [`FakeClient::close`]). Returns false if it was already closed.
    pub fn close_with(&self, code: u16) -> bool {
        self.leave(code, 1006)
    }

    /// Ends the TCP connection without a close frame: the application sees 1005 (uvicorn's
    /// code for a connection lost after the handshake), or 1006 before it.
    pub fn drop_connection(&self) -> bool {
        self.leave(1005, 1006)
    }

    fn leave(&self, open_code: u16, connecting_code: u16) -> bool {
        let mut state = self.socket.lock();
        if state.peer_closed || state.server_closed.is_some() {
            return false;
        }
        let code = match state.application {
            WsState::Connecting => connecting_code,
            WsState::Connected | WsState::Disconnected => open_code,
        };
        state.peer_closed = true;
        state.inbound.push_back(Inbound::Disconnect(code));
        drop(state);
        self.socket.inbound_ready.notify_one();
        true
    }

    /// The next thing the client sees; `None` once the server side is gone.
    pub async fn next_event(&mut self) -> Option<ClientEvent> {
        self.events.recv().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::transport::ErrorKind;

    fn run<F: std::future::Future>(f: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .start_paused(true)
            .build()
            .unwrap()
            .block_on(f)
    }

    #[test]
    fn receive_before_accept_says_accept_first() {
        run(async {
            let (socket, _client) = pair(Duration::ZERO);
            let err = socket.receive().await.unwrap_err();
            assert_eq!(
                err.to_string(),
                r#"WebSocket is not connected. Need to call "accept" first."#
            );
        });
    }

    #[test]
    fn send_before_accept_names_the_expected_message() {
        run(async {
            let (socket, _client) = pair(Duration::ZERO);
            let err = socket.send(&Frame::Ping).unwrap_err();
            assert_eq!(err.kind, ErrorKind::UnexpectedMessage);
            assert!(
                err.to_string().ends_with("but got 'websocket.send'"),
                "{err}"
            );
        });
    }

    #[test]
    fn reading_after_another_task_closed_says_accept_first() {
        run(async {
            let (socket, _client) = pair(Duration::ZERO);
            socket.accept().await.unwrap();
            socket.close(1011).await.unwrap();
            assert_eq!(
                socket.receive().await.unwrap_err(),
                TransportError::not_connected()
            );
            assert_eq!(
                socket.send(&Frame::Ping).unwrap_err(),
                TransportError::send_after_close()
            );
            assert_eq!(
                socket.close(1000).await.unwrap_err(),
                TransportError::send_after_close()
            );
        });
    }

    #[test]
    fn a_waiting_receive_gets_the_disconnect_when_the_server_closes() {
        run(async {
            let (socket, _client) = pair(Duration::ZERO);
            socket.accept().await.unwrap();
            let reader = {
                let socket = socket.clone();
                tokio::spawn(async move { socket.receive().await })
            };
            tokio::task::yield_now().await;
            socket.close(1008).await.unwrap();
            assert_eq!(reader.await.unwrap(), Ok(Inbound::Disconnect(1008)));
            assert_eq!(
                socket.receive().await.unwrap_err(),
                TransportError::not_connected()
            );
        });
    }

    #[test]
    fn accept_takes_the_handshake_delay_in_virtual_time() {
        run(async {
            let (socket, mut client) = pair(Duration::from_millis(300));
            let t0 = tokio::time::Instant::now();
            socket.accept().await.unwrap();
            assert_eq!(t0.elapsed(), Duration::from_millis(300));
            assert_eq!(client.next_event().await, Some(ClientEvent::Open));
            assert_eq!(
                socket.accept().await.unwrap_err().kind,
                ErrorKind::UnexpectedMessage
            );
        });
    }

    #[test]
    fn frames_arrive_in_order_and_client_close_is_a_disconnect() {
        run(async {
            let (socket, client) = pair(Duration::ZERO);
            assert_eq!(client.send_chat("a", "x"), Err(ClientSendError::NotOpen));
            socket.accept().await.unwrap();
            client.send_chat("a", "x").unwrap();
            client.send_chat("b", "y").unwrap();
            assert!(client.close());
            let mut got = Vec::new();
            for _ in 0..3 {
                got.push(socket.receive().await.unwrap());
            }
            assert!(matches!(&got[0], Inbound::Chat { id, .. } if id == "a"));
            assert!(matches!(&got[1], Inbound::Chat { id, .. } if id == "b"));
            assert_eq!(got[2], Inbound::Disconnect(1000));
            assert_eq!(
                socket.receive().await.unwrap_err(),
                TransportError::receive_after_disconnect()
            );
            // A send to a gone peer fails like Starlette's OSError path: 1006, then closed.
            assert_eq!(
                socket.send(&Frame::Ping).unwrap_err(),
                TransportError::disconnected(1006)
            );
            assert!(!socket.is_connected());
        });
    }

    #[test]
    fn ready_for_frames_means_both_the_application_and_the_client_side_are_connected() {
        run(async {
            // Before the handshake neither side is connected.
            let (socket, _client) = pair(Duration::ZERO);
            assert!(!socket.is_connected_and_ready());
            socket.accept().await.unwrap();
            assert!(socket.is_connected_and_ready());
            // The server closed: the application side is DISCONNECTED, the client side still
            // CONNECTED until a receive takes the disconnect.
            socket.close(1011).await.unwrap();
            assert_eq!(socket.client_state(), WsState::Connected);
            assert!(!socket.is_connected_and_ready());

            // The client left and the application read it: the client side is DISCONNECTED, the
            // application side still CONNECTED.
            let (socket, client) = pair(Duration::ZERO);
            socket.accept().await.unwrap();
            assert!(client.close());
            assert_eq!(socket.receive().await, Ok(Inbound::Disconnect(1000)));
            assert_eq!(socket.application_state(), WsState::Connected);
            assert!(socket.is_connected());
            assert!(!socket.is_connected_and_ready());
        });
    }

    #[test]
    fn a_client_cannot_send_once_either_side_has_closed() {
        run(async {
            let (socket, client) = pair(Duration::ZERO);
            socket.accept().await.unwrap();
            assert!(client.close());
            assert_eq!(client.send_chat("a", "x"), Err(ClientSendError::Closed));

            let (socket, client) = pair(Duration::ZERO);
            socket.accept().await.unwrap();
            socket.close(1011).await.unwrap();
            assert_eq!(client.send_chat("a", "x"), Err(ClientSendError::Closed));
            assert_eq!(
                socket.receive().await.unwrap_err(),
                TransportError::not_connected()
            );
        });
    }

    #[test]
    fn a_client_leaves_once_with_1006_before_the_handshake_and_its_own_code_after() {
        run(async {
            let (socket, client) = pair(Duration::ZERO);
            assert!(client.close());
            assert!(!client.close(), "a second close is refused");
            assert!(!client.drop_connection());
            // Starlette's accept takes the connect, then finds the client gone.
            assert_eq!(
                socket.accept().await.unwrap_err(),
                TransportError::client_disconnected()
            );
            assert_eq!(socket.receive().await, Ok(Inbound::Disconnect(1006)));

            let (socket, client) = pair(Duration::ZERO);
            socket.accept().await.unwrap();
            assert!(client.close_with(4001));
            assert_eq!(socket.receive().await, Ok(Inbound::Disconnect(4001)));

            let (socket, client) = pair(Duration::ZERO);
            socket.accept().await.unwrap();
            assert!(client.drop_connection());
            assert_eq!(socket.receive().await, Ok(Inbound::Disconnect(1005)));

            // Nothing to leave once the server closed.
            let (socket, client) = pair(Duration::ZERO);
            socket.accept().await.unwrap();
            socket.close(1000).await.unwrap();
            assert!(!client.close());
        });
    }

    /// The events the client has been told so far, without waiting for more.
    async fn told(client: &mut FakeClient) -> Vec<ClientEvent> {
        let mut got = Vec::new();
        while let Ok(Some(e)) =
            tokio::time::timeout(Duration::from_millis(1), client.next_event()).await
        {
            got.push(e);
        }
        got
    }

    #[test]
    fn an_application_that_ends_is_a_500_before_accept_a_drop_after_and_nothing_once_closed() {
        run(async {
            let (socket, mut client) = pair(Duration::ZERO);
            socket.app_finished();
            assert_eq!(told(&mut client).await, [ClientEvent::Refused(500)]);

            let (socket, mut client) = pair(Duration::ZERO);
            socket.accept().await.unwrap();
            socket.app_finished();
            assert_eq!(
                told(&mut client).await,
                [ClientEvent::Open, ClientEvent::Dropped]
            );
            // A task the application left behind finds the connection gone.
            assert_eq!(
                socket.send(&Frame::Ping).unwrap_err(),
                TransportError::disconnected(1006)
            );

            // Closed by the server, or left by the client: already over.
            let (socket, mut client) = pair(Duration::ZERO);
            socket.accept().await.unwrap();
            socket.close(1000).await.unwrap();
            socket.app_finished();
            assert_eq!(
                told(&mut client).await,
                [ClientEvent::Open, ClientEvent::Closed(1000)]
            );
            let (socket, mut client) = pair(Duration::ZERO);
            socket.accept().await.unwrap();
            assert!(client.close());
            socket.app_finished();
            assert_eq!(told(&mut client).await, [ClientEvent::Open]);
        });
    }

    #[test]
    fn a_chat_pipelined_with_the_upgrade_request_never_reaches_the_server() {
        run(async {
            let (socket, client) = pair(Duration::ZERO);
            assert!(client.send_pipelined("early", "x"));
            socket.accept().await.unwrap();
            client.send_chat("late", "y").unwrap();
            assert!(client.close());
            assert!(
                matches!(socket.receive().await, Ok(Inbound::Chat { id, .. }) if id == "late"),
                "only what came after the request is read"
            );
            assert_eq!(socket.receive().await, Ok(Inbound::Disconnect(1000)));
            // Too late once open, or once either side has closed.
            let (socket, client) = pair(Duration::ZERO);
            socket.accept().await.unwrap();
            assert!(!client.send_pipelined("a", "x"));
            let (_socket, client) = pair(Duration::ZERO);
            assert!(client.close());
            assert!(!client.send_pipelined("a", "x"));
            let (socket, client) = pair(Duration::ZERO);
            socket.close(1000).await.unwrap();
            assert!(!client.send_pipelined("a", "x"));
        });
    }
}
