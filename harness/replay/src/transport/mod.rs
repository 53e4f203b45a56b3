//! The server side of one WebSocket, as endpoints see it.
//!
//! Endpoints are written once against [`ServerSocket`] and run over the in-memory [`fake`]
//! transport (virtual time) or a real socket. The semantics, and the error texts, are
//! Starlette's `WebSocket`, because that is what the production server ran on: an application
//! state (`CONNECTING → CONNECTED → DISCONNECTED`) that decides which calls are legal.

pub mod fake;

use std::future::Future;

use crate::trace::Frame;

/// What a receive returned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Inbound {
    /// A chat frame from the client.
    Chat {
        /// Its id.
        id: String,
        /// Its text.
        text: String,
    },
    /// The client went away with this close code.
    Disconnect(u16),
}

/// Which rule a call broke.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// `receive` while the application state is not `CONNECTED` (before accept, or after close).
    NotConnected,
    /// A message not legal in the current state (e.g. a send before accept, a second accept).
    UnexpectedMessage,
    /// A send (or close) after the application already sent close.
    SendAfterClose,
    /// A receive after the disconnect message was already received.
    ReceiveAfterDisconnect,
    /// The peer is gone (Starlette's `WebSocketDisconnect`), with its code.
    Disconnected(u16),
    /// `accept()` found the client already gone: uvicorn's `ClientDisconnected` (an `OSError`
    /// that Starlette lets through from `accept`). Not a state error: the application state is
    /// CONNECTED afterwards, and the next receive gets the disconnect (1006).
    ClientDisconnected,
}

/// An error raised by the transport, with Starlette's exact text.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct TransportError {
    /// Which rule.
    pub kind: ErrorKind,
    /// The text the production logs show.
    pub message: String,
}

impl TransportError {
    /// `receive_text` before accept or after close.
    pub fn not_connected() -> Self {
        TransportError {
            kind: ErrorKind::NotConnected,
            message: "WebSocket is not connected. Need to call \"accept\" first.".into(),
        }
    }

    /// A send while `CONNECTING`: only accept, close or an HTTP response are legal.
    pub fn expected_accept(got: &str) -> Self {
        TransportError {
            kind: ErrorKind::UnexpectedMessage,
            message: format!(
                "Expected ASGI message \"websocket.accept\", \"websocket.close\" or \"websocket.http.response.start\", but got '{got}'"
            ),
        }
    }

    /// An accept while `CONNECTED`.
    pub fn expected_send(got: &str) -> Self {
        TransportError {
            kind: ErrorKind::UnexpectedMessage,
            message: format!(
                "Expected ASGI message \"websocket.send\" or \"websocket.close\", but got '{got}'"
            ),
        }
    }

    /// Anything sent once the application closed.
    pub fn send_after_close() -> Self {
        TransportError {
            kind: ErrorKind::SendAfterClose,
            message: "Cannot call \"send\" once a close message has been sent.".into(),
        }
    }

    /// A receive once the disconnect was received.
    pub fn receive_after_disconnect() -> Self {
        TransportError {
            kind: ErrorKind::ReceiveAfterDisconnect,
            message: "Cannot call \"receive\" once a disconnect message has been received.".into(),
        }
    }

    /// The peer is gone.
    pub fn disconnected(code: u16) -> Self {
        TransportError {
            kind: ErrorKind::Disconnected(code),
            message: format!("WebSocketDisconnect(code={code})"),
        }
    }

    /// `accept()` with the client already gone.
    pub fn client_disconnected() -> Self {
        TransportError {
            kind: ErrorKind::ClientDisconnected,
            message: "ClientDisconnected".into(),
        }
    }

    /// True for the errors that mean "used before accept or after close": the race.
    pub fn is_lifecycle_violation(&self) -> bool {
        match self.kind {
            ErrorKind::NotConnected
            | ErrorKind::UnexpectedMessage
            | ErrorKind::SendAfterClose
            | ErrorKind::ReceiveAfterDisconnect => true,
            ErrorKind::Disconnected(_) | ErrorKind::ClientDisconnected => false,
        }
    }
}

/// The server's handle on one WebSocket. Shared (`Arc`) between the tasks of one connection.
pub trait ServerSocket: Send + Sync + 'static {
    /// Completes the handshake (`websocket.accept`).
    fn accept(&self) -> impl Future<Output = Result<(), TransportError>> + Send;
    /// Waits for the next client frame (`receive_text`).
    fn receive(&self) -> impl Future<Output = Result<Inbound, TransportError>> + Send;
    /// Sends one frame (`send_text`). It never waits: the frame is handed to the connection's
    /// writer, in order, as Starlette's `send` returns once the server has taken the message.
    /// Synchronous so a caller can send while holding a lock (the fixed endpoint sends under its
    /// state machine's lock, which is what makes delivery order the lock order).
    fn send(&self, frame: &Frame) -> Result<(), TransportError>;
    /// Closes with `code` (`websocket.close`).
    fn close(&self, code: u16) -> impl Future<Output = Result<(), TransportError>> + Send;
    /// The seed's basic check: the application state is `CONNECTED`.
    fn is_connected(&self) -> bool;
    /// The partial fix's check: application and client both `CONNECTED`. As in Starlette, the
    /// client state stays `CONNECTED` until the application has *received* the disconnect: a
    /// peer that closed is still "ready" while its close waits in the queue.
    fn is_connected_and_ready(&self) -> bool;
}
