//! One user's client on the virtual clock: the same schedule and the same records as
//! [`session`](crate::session)'s client on a real clock, and the same WebSocket library
//! (tungstenite), run without I/O over in-memory buffers. Bytes leave through
//! [`Input`]s at the next step and arrive as the driver's [`Output`]s.
//!
//! Times are virtual microseconds since the case began, exact integers, so a schedule means the
//! same thing at every step. The rules are session's, step for step: pipelined chats in the
//! upgrade request's write; chats at `at_ms` after open while before the close; a close or drop
//! due during the handshake leaves there; a client without `close_ms` or `drop_ms` waits for its
//! chats' answers until [`CLOSE_REPLY_GRACE_US`] before the deadline; frames first, then
//! whatever is due.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::rc::Rc;

use racegate_replay::scenario::{Connection, Protocol, User};
use tokio_tungstenite::tungstenite::handshake::client::{ClientHandshake, Request};
use tokio_tungstenite::tungstenite::handshake::{HandshakeError, MidHandshake};
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{Error as WsError, Message, WebSocket};

use super::driver::{Input, Output};
use crate::session::{Pending, Record, Seen, mask_for, masked_text};

/// session's `CLOSE_REPLY_GRACE`, in microseconds: a waiting client stops this long before the
/// deadline so the answer to its close still fits.
pub const CLOSE_REPLY_GRACE_US: u64 = 500_000;

/// The bytes between one client and the driver.
#[derive(Default)]
struct Buffers {
    inbox: VecDeque<u8>,
    outbox: Vec<u8>,
    eof: bool,
}

/// The client's end of the connection, shared with the client that drains it.
#[derive(Clone, Default)]
struct Pipe(Rc<RefCell<Buffers>>);

impl Read for Pipe {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let mut b = self.0.borrow_mut();
        if b.inbox.is_empty() {
            return if b.eof {
                Ok(0)
            } else {
                Err(io::ErrorKind::WouldBlock.into())
            };
        }
        let n = buf.len().min(b.inbox.len());
        for (slot, byte) in buf.iter_mut().zip(b.inbox.drain(..n)) {
            *slot = byte;
        }
        Ok(n)
    }
}

impl Write for Pipe {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.borrow_mut().outbox.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

enum State {
    /// Before `connect_ms`.
    Idle,
    /// The upgrade request is out; waiting for the response.
    Handshake(MidHandshake<ClientHandshake<Pipe>>),
    /// Open: sending on schedule, reading what comes.
    Open(Box<WebSocket<Pipe>>),
    /// The client closed; waiting for the server's answer.
    Closing(Box<WebSocket<Pipe>>),
    /// The server closed first; its answer went out, the rest is not recorded.
    Draining { until: u64 },
    /// Nothing more to do or record.
    Done,
}

/// When one client acts, in virtual microseconds since the case began.
#[derive(Debug, Clone, Copy)]
pub struct Times {
    /// When it connects.
    pub connect: u64,
    /// When it closes (or drops) unless the server closed first (its `close_ms` or `drop_ms`,
    /// or the scenario's own time).
    pub close: u64,
    /// Past this nothing is waited for.
    pub deadline: u64,
    /// Added to the open time for the latest close (see session's `Schedule`).
    pub after_last_send: u64,
}

/// One user's client.
pub struct Client<'s> {
    conn: usize,
    user: &'s User,
    /// Its label and where its chat numbers start.
    connection: Connection,
    protocol: &'s Protocol,
    request: Option<Request>,
    times: Times,
    pipe: Pipe,
    state: State,
    /// Set when the connection opens.
    opened: u64,
    close_at: u64,
    next: usize,
    pending: Pending,
    /// The connection is over: the server closed its end, or the client left.
    ended: bool,
    /// What it saw and did.
    pub records: Vec<Record>,
}

impl<'s> Client<'s> {
    /// A client for connection `conn` (the scenario's `conn`-th `[[user]]`, `connection`),
    /// which sends `request` as its upgrade.
    pub fn new(
        conn: usize,
        user: &'s User,
        connection: Connection,
        protocol: &'s Protocol,
        request: Request,
        times: Times,
    ) -> Self {
        Client {
            conn,
            user,
            connection,
            protocol,
            request: Some(request),
            times,
            pipe: Pipe::default(),
            state: State::Idle,
            opened: 0,
            close_at: times.close,
            next: user.pipelined,
            pending: Pending::default(),
            ended: false,
            records: Vec::new(),
        }
    }

    /// The user.
    pub fn user(&self) -> &'s User {
        self.user
    }

    /// This connection's `n`-th chat id (1-based): a user's chats are numbered across its
    /// connections.
    fn chat_id(&self, n: usize) -> String {
        self.protocol
            .chat_id(&self.user.id, self.connection.chats_before + n)
    }

    /// When the client leaves of its own accord (`close_ms`, `drop_ms`), if before the deadline.
    fn leave_at(&self) -> Option<u64> {
        self.user
            .leave_ms()
            .map(|_| self.times.close)
            .filter(|at| *at < self.times.deadline)
    }

    /// True once the client has nothing left to do.
    pub fn is_done(&self) -> bool {
        matches!(self.state, State::Done)
    }

    fn log(&mut self, now: u64, seen: Seen) {
        self.records.push(Record {
            at_ms: now as f64 / 1000.0,
            user: self.connection.label.clone(),
            seen,
        });
    }

    /// When it next acts of its own accord, if it will.
    pub fn wake(&self) -> Option<u64> {
        match &self.state {
            State::Idle => Some(self.times.connect),
            State::Handshake(_) => Some(self.leave_at().unwrap_or(self.times.deadline)),
            State::Closing(_) => Some(self.times.deadline),
            State::Draining { until } => Some(*until),
            State::Open(_) => Some(self.open_wake().0),
            State::Done => None,
        }
    }

    /// session's choice of the next wake-up while open: the next chat, the close (later while
    /// chats await answers) and the deadline, with the first two.
    fn open_wake(&self) -> (u64, Option<u64>, u64) {
        let send_at = self
            .user
            .sends
            .get(self.next)
            .map(|s| self.opened + s.at_ms * 1000);
        let awaiting = self.user.leave_ms().is_none() && !self.pending.is_empty();
        let answers_until = self
            .times
            .deadline
            .saturating_sub(CLOSE_REPLY_GRACE_US)
            .max(self.close_at);
        let close_when = if awaiting {
            answers_until
        } else {
            self.close_at
        };
        let wake = send_at
            .map_or(close_when, |s| s.min(close_when))
            .min(self.times.deadline);
        (wake, send_at, close_when)
    }

    /// Does what is due at `now`, handing its bytes to `inputs`.
    pub fn act(&mut self, now: u64, inputs: &mut Vec<Input>) {
        loop {
            let due = self.wake().is_some_and(|w| w <= now);
            if !due {
                break;
            }
            match std::mem::replace(&mut self.state, State::Done) {
                State::Idle => self.connect(now, inputs),
                // Its close or drop came during the handshake: it leaves (session's rule).
                State::Handshake(_) if self.leave_at().is_some_and(|at| at <= now) => {
                    let seen = if self.user.drop_ms.is_some() {
                        Seen::ClientDrop
                    } else {
                        Seen::ClientClose
                    };
                    self.log(now, seen);
                    self.leave(inputs);
                }
                State::Handshake(_) => {
                    self.log(
                        now,
                        Seen::Timeout {
                            waiting_for: "the WebSocket handshake (101) to complete".into(),
                        },
                    );
                    for n in self.user.pipelined + 1..=self.user.sends.len() {
                        let id = self.chat_id(n);
                        self.log(
                            now,
                            Seen::Unsent {
                                id,
                                reason: "the connection never opened".into(),
                            },
                        );
                    }
                    self.leave(inputs);
                }
                State::Open(ws) => self.open_due(now, ws, inputs),
                State::Closing(_) => {
                    self.log(
                        now,
                        Seen::Timeout {
                            waiting_for: "the server to answer the client's close".into(),
                        },
                    );
                    self.leave(inputs);
                }
                State::Draining { .. } => self.leave(inputs),
                State::Done => {}
            }
        }
        self.flush(inputs);
    }

    fn connect(&mut self, now: u64, inputs: &mut Vec<Input>) {
        self.log(now, Seen::Connect);
        inputs.push(Input::Connect(self.conn));
        let Some(request) = self.request.take() else {
            return;
        };
        match ClientHandshake::start(self.pipe.clone(), request, None) {
            Ok(mid) => {
                self.handshake(now, mid, inputs);
                self.pipeline(now);
            }
            Err(e) => {
                self.log(
                    now,
                    Seen::Dropped {
                        error: format!("during the handshake: {e}"),
                    },
                );
                self.leave(inputs);
            }
        }
    }

    /// Writes the pipelined chats after the upgrade request, in the same bytes the driver gets
    /// as one `Input::Data` (one write, one read on the app's side).
    fn pipeline(&mut self, now: u64) {
        if !matches!(self.state, State::Handshake(_)) {
            return;
        }
        for k in 0..self.user.pipelined {
            let id = self.chat_id(k + 1);
            let text = self
                .protocol
                .render_chat(&id, &self.user.sends[k].text, &self.user.id);
            let frame = masked_text(&text, mask_for(k));
            self.pipe.0.borrow_mut().outbox.extend(frame);
            self.pending.sent(&id);
            self.log(now, Seen::Send { id });
        }
    }

    fn handshake(
        &mut self,
        now: u64,
        mid: MidHandshake<ClientHandshake<Pipe>>,
        inputs: &mut Vec<Input>,
    ) {
        match mid.handshake() {
            Err(HandshakeError::Interrupted(mid)) => self.state = State::Handshake(mid),
            Ok((ws, _response)) => {
                self.log(now, Seen::Open);
                self.opened = now;
                let last_send = self.user.sends.iter().map(|s| s.at_ms).max().unwrap_or(0);
                self.close_at = match self.user.leave_ms() {
                    Some(_) => self.times.close,
                    None => self
                        .times
                        .close
                        .max(now + last_send * 1000 + self.times.after_last_send),
                };
                self.read(now, Box::new(ws), inputs);
            }
            Err(HandshakeError::Failure(WsError::Http(response))) => {
                let close_code = response
                    .headers()
                    .get("x-websocket-close-code")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.trim().parse().ok());
                self.log(
                    now,
                    Seen::Refused {
                        status: response.status().as_u16(),
                        close_code,
                    },
                );
                self.leave(inputs);
            }
            Err(HandshakeError::Failure(e)) => {
                self.log(
                    now,
                    Seen::Dropped {
                        error: format!("during the handshake: {e}"),
                    },
                );
                self.leave(inputs);
            }
        }
    }

    /// What the server wrote or closed on this connection.
    pub fn receive(&mut self, now: u64, output: Output, inputs: &mut Vec<Input>) {
        match output {
            Output::Data(bytes) => self.pipe.0.borrow_mut().inbox.extend(bytes),
            Output::Closed => {
                self.ended = true;
                self.pipe.0.borrow_mut().eof = true;
            }
        }
        match std::mem::replace(&mut self.state, State::Done) {
            State::Handshake(mid) => self.handshake(now, mid, inputs),
            State::Open(ws) => self.read(now, ws, inputs),
            State::Closing(ws) => self.read_closing(now, ws, inputs),
            State::Draining { until } => {
                if self.ended {
                    self.leave(inputs);
                } else {
                    self.state = State::Draining { until };
                }
            }
            other => self.state = other,
        }
        self.flush(inputs);
    }

    /// Reads every frame that arrived, as session's `Log::frame` records them.
    fn read(&mut self, now: u64, mut ws: Box<WebSocket<Pipe>>, inputs: &mut Vec<Input>) {
        loop {
            match ws.read() {
                Ok(Message::Text(text)) => {
                    let text = text.as_str().to_string();
                    self.pending.answered_by(self.protocol, &text);
                    self.log(now, Seen::Recv { text });
                }
                Ok(Message::Binary(b)) => self.log(now, Seen::RecvBinary { bytes: b.len() }),
                Ok(Message::Close(frame)) => {
                    let (code, reason) = frame.map_or((1005, String::new()), |f| {
                        (u16::from(f.code), f.reason.to_string())
                    });
                    self.log(now, Seen::ServerClose { code, reason });
                    // tungstenite queued the answer to the close; it goes out now.
                    let _ = ws.flush();
                    self.state = if self.ended {
                        State::Done
                    } else {
                        State::Draining {
                            until: (now + CLOSE_REPLY_GRACE_US).min(self.times.deadline),
                        }
                    };
                    if self.ended {
                        self.leave(inputs);
                    }
                    return;
                }
                Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_)) => {}
                Err(WsError::Io(e)) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => {
                    self.log(
                        now,
                        Seen::Dropped {
                            error: e.to_string(),
                        },
                    );
                    self.leave(inputs);
                    return;
                }
            }
        }
        // Pongs tungstenite queued while reading.
        let _ = ws.flush();
        self.state = State::Open(ws);
    }

    /// What is due while open: the next chat, the close, or the deadline.
    fn open_due(&mut self, now: u64, mut ws: Box<WebSocket<Pipe>>, inputs: &mut Vec<Input>) {
        let (wake, send_at, close_when) = self.open_wake();
        let deadline = self.times.deadline;
        if wake == deadline && Some(wake) != send_at && wake != close_when {
            self.log(
                now,
                Seen::Timeout {
                    waiting_for: "the scheduled close".into(),
                },
            );
            self.leave(inputs);
            return;
        }
        if Some(wake) == send_at && wake < self.close_at {
            let id = self.chat_id(self.next + 1);
            let text =
                self.protocol
                    .render_chat(&id, &self.user.sends[self.next].text, &self.user.id);
            self.next += 1;
            match ws.send(Message::text(text)) {
                Ok(()) => {
                    self.pending.sent(&id);
                    self.log(now, Seen::Send { id });
                    self.state = State::Open(ws);
                }
                Err(e) => {
                    self.log(
                        now,
                        Seen::Dropped {
                            error: format!("sending {id}: {e}"),
                        },
                    );
                    self.leave(inputs);
                }
            }
            return;
        }
        if self.user.drop_ms.is_some() {
            // The TCP connection ends without a close frame.
            self.log(now, Seen::ClientDrop);
            self.leave(inputs);
            return;
        }
        self.log(now, Seen::ClientClose);
        let frame = CloseFrame {
            code: CloseCode::Normal,
            reason: "".into(),
        };
        match ws.close(Some(frame)).and_then(|()| ws.flush()) {
            Ok(()) => self.read_closing(now, ws, inputs),
            Err(WsError::Io(e)) if e.kind() == io::ErrorKind::WouldBlock => {
                self.read_closing(now, ws, inputs)
            }
            Err(e) => {
                self.log(
                    now,
                    Seen::Dropped {
                        error: format!("sending the close: {e}"),
                    },
                );
                self.leave(inputs);
            }
        }
    }

    /// After the client's close: frames still arriving, then the server's answer.
    fn read_closing(&mut self, now: u64, mut ws: Box<WebSocket<Pipe>>, inputs: &mut Vec<Input>) {
        loop {
            let answered = match ws.read() {
                Ok(Message::Text(text)) => {
                    self.log(
                        now,
                        Seen::Recv {
                            text: text.as_str().to_string(),
                        },
                    );
                    continue;
                }
                Ok(Message::Binary(b)) => {
                    self.log(now, Seen::RecvBinary { bytes: b.len() });
                    continue;
                }
                Ok(Message::Close(frame)) => Seen::CloseAnswered {
                    code: frame.map(|f| u16::from(f.code)),
                },
                Ok(_) => continue,
                Err(WsError::Io(e)) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.state = State::Closing(ws);
                    return;
                }
                Err(WsError::ConnectionClosed | WsError::AlreadyClosed) => {
                    Seen::CloseAnswered { code: None }
                }
                Err(WsError::Protocol(_)) if self.ended => Seen::CloseAnswered { code: None },
                Err(e) => Seen::Dropped {
                    error: format!("waiting for the close answer: {e}"),
                },
            };
            self.log(now, answered);
            self.leave(inputs);
            return;
        }
    }

    /// Done: the client's TCP connection ends, unless the server ended it already.
    fn leave(&mut self, inputs: &mut Vec<Input>) {
        self.state = State::Done;
        self.flush(inputs);
        if !self.ended {
            inputs.push(Input::Gone(self.conn));
            self.ended = true;
        }
    }

    /// Hands what the client wrote to the driver.
    fn flush(&mut self, inputs: &mut Vec<Input>) {
        let bytes = std::mem::take(&mut self.pipe.0.borrow_mut().outbox);
        if !bytes.is_empty() {
            inputs.push(Input::Data(self.conn, bytes));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use racegate_replay::scenario;
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;

    #[test]
    fn pipelined_chats_are_handed_over_with_the_upgrade_request_in_one_input() {
        let s = scenario::parse(
            r#"
            name = "p"
            [[user]]
            id = "u"
            send = [{ at_ms = 0, text = "early", pipelined = true }, { at_ms = 0, text = "x" }]
            "#,
            "p.toml".as_ref(),
        )
        .unwrap();
        let connection = s.connections().remove(0);
        let request = "ws://127.0.0.1:8000/ws".into_client_request().unwrap();
        let times = Times {
            connect: 0,
            close: 1_000_000,
            deadline: 2_000_000,
            after_last_send: 0,
        };
        let mut client = Client::new(3, &s.users[0], connection, &s.protocol, request, times);
        let mut inputs = Vec::new();
        client.act(0, &mut inputs);
        let [Input::Connect(3), Input::Data(3, bytes)] = inputs.as_slice() else {
            panic!("expected a connect and one write, got {inputs:?}");
        };
        let head = bytes
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .map(|i| i + 4)
            .expect("the request head");
        assert_eq!(
            crate::session::tests::unmasked(&bytes[head..]).as_deref(),
            Some(r#"{"type":"chat","id":"u/m1","text":"early"}"#)
        );
        let seen: Vec<&Seen> = client.records.iter().map(|r| &r.seen).collect();
        assert_eq!(seen, [&Seen::Connect, &Seen::Send { id: "u/m1".into() }]);
    }
}
