//! One user's connection on a real clock: connect at its time, send its chats on schedule after
//! open, close at its time, and record everything seen, with milliseconds since the scenario
//! began. Judging is [`check`](crate::check)'s job; a session only records.
//!
//! Every wait is bounded by the scenario's deadline. What the deadline cut short is recorded as
//! [`Seen::Timeout`], which is `stuck`. A refused TCP connect is not a record but an error: the
//! server is not there, and nothing about the scenario can be judged.

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use racegate_replay::history::{Got, parse_frame};
use racegate_replay::scenario::{Protocol, User};
use serde::Serialize;
use tokio::net::TcpStream;
use tokio::time::{Instant, sleep_until, timeout_at};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::handshake::client::Request;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};

use crate::target::Target;
use crate::tls::{Conn, Tls};

/// What a client saw or did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Seen {
    /// The client opened its TCP connection and sent the upgrade.
    Connect,
    /// The handshake completed (`101`).
    Open,
    /// The server answered the upgrade with an HTTP status instead of `101`.
    Refused {
        /// The HTTP status.
        status: u16,
        /// The close code in `X-WebSocket-Close-Code`, if the server said one.
        close_code: Option<u16>,
    },
    /// The client sent a chat.
    Send {
        /// The chat id.
        id: String,
    },
    /// A chat the client never sent, and why.
    Unsent {
        /// The chat id.
        id: String,
        /// Why.
        reason: String,
    },
    /// A text frame.
    Recv {
        /// Its text.
        text: String,
    },
    /// A binary frame.
    RecvBinary {
        /// Its length.
        bytes: usize,
    },
    /// The server closed first (a close frame).
    ServerClose {
        /// Its code (1005 when the frame had none).
        code: u16,
        /// Its reason.
        reason: String,
    },
    /// The connection ended without a close frame.
    Dropped {
        /// What the client library said.
        error: String,
    },
    /// The client closed its side with 1000.
    ClientClose,
    /// The server answered the client's close.
    CloseAnswered {
        /// The code it answered with, if a frame came.
        code: Option<u16>,
    },
    /// The deadline passed while the client was still waiting.
    Timeout {
        /// For what.
        waiting_for: String,
    },
    /// `--app` only, the app's side: it used its socket where the socket's state forbids it
    /// (before accept, after its own close, after the client's disconnect reached it).
    AppMisuse {
        /// The call.
        op: String,
        /// The error it raised, or the rule it broke.
        error: String,
    },
    /// `--app` only: an exception escaped the app's handler for this connection.
    AppRaised {
        /// Its class and text.
        error: String,
    },
    /// `--app` only: the app's handler for this connection had not returned by the scenario's
    /// end, after its client left.
    AppHandlerPending {
        /// Its coroutine.
        name: String,
    },
    /// `--app` only: a task spawned while serving this connection was still pending at the
    /// scenario's end, after the connection ended.
    AppTaskPending {
        /// Its coroutine.
        name: String,
    },
}

/// One record: when (milliseconds since the scenario began), whose connection, what.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Record {
    /// Wall-clock milliseconds since the scenario began.
    pub at_ms: f64,
    /// The user.
    pub user: String,
    /// What happened.
    #[serde(flatten)]
    pub seen: Seen,
}

/// When one user's client acts.
#[derive(Debug, Clone, Copy)]
pub struct Schedule {
    /// The scenario's start.
    pub origin: Instant,
    /// When the client closes unless the server closed first.
    pub close_at: Instant,
    /// Past this, nothing is waited for.
    pub deadline: Instant,
    /// Added to the open time for the latest close: a slow handshake delays the chats, and the
    /// client must still wait this long after its last one.
    pub after_last_send: Duration,
}

/// Why a session could not start at all: nothing about the scenario can be judged.
#[derive(Debug)]
pub enum Failure {
    /// A refused or timed-out TCP connect: the server is not there.
    Unreachable(String),
    /// The TLS handshake failed or did not finish before the deadline.
    Tls(String),
}

/// How long the client keeps driving a connection the server closed, so its answer goes out.
const CLOSE_REPLY_GRACE: Duration = Duration::from_millis(500);

type Ws = WebSocketStream<Conn>;

/// Where and how one user's client connects.
#[derive(Debug, Clone, Copy)]
pub struct Dial<'a> {
    /// The server.
    pub target: &'a Target,
    /// TLS for a `wss://` target (`None` for `ws://`).
    pub tls: Option<&'a Tls>,
}

/// Runs `user`'s client against `dial.target` with its upgrade `request` (built and checked by
/// the caller, credentials filled in) and returns what it saw.
pub async fn run(
    dial: Dial<'_>,
    request: Request,
    protocol: &Protocol,
    user: &User,
    schedule: Schedule,
) -> Result<Vec<Record>, Failure> {
    let mut log = Log {
        origin: schedule.origin,
        user: user.id.clone(),
        records: Vec::new(),
    };
    let deadline = schedule.deadline;
    sleep_until(schedule.origin + Duration::from_millis(user.connect_ms)).await;
    log.push(Seen::Connect);
    let target = dial.target;
    let stream = match timeout_at(deadline, TcpStream::connect(target.addr())).await {
        Ok(Ok(stream)) => stream,
        Ok(Err(e)) => return Err(Failure::Unreachable(e.to_string())),
        Err(_) => {
            return Err(Failure::Unreachable(
                "no answer to the TCP connect before the timeout".into(),
            ));
        }
    };
    let _ = stream.set_nodelay(true);
    let stream = match (target.is_tls(), dial.tls) {
        (false, _) => Conn::Plain(stream),
        (true, None) => {
            return Err(Failure::Tls(
                "no TLS configuration for a wss:// target".into(),
            ));
        }
        (true, Some(tls)) => match timeout_at(deadline, tls.connect(target.host(), stream)).await {
            Ok(Ok(conn)) => conn,
            Ok(Err(reason)) => return Err(Failure::Tls(reason)),
            Err(_) => {
                return Err(Failure::Tls(
                    "the TLS handshake did not finish before the timeout".into(),
                ));
            }
        },
    };
    let handshake = tokio_tungstenite::client_async(request, stream);
    let mut ws = match timeout_at(deadline, handshake).await {
        Ok(Ok((ws, _response))) => ws,
        Ok(Err(WsError::Http(response))) => {
            let close_code = response
                .headers()
                .get("x-websocket-close-code")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse().ok());
            log.push(Seen::Refused {
                status: response.status().as_u16(),
                close_code,
            });
            return Ok(log.records);
        }
        Ok(Err(e)) => {
            log.push(Seen::Dropped {
                error: format!("during the handshake: {e}"),
            });
            return Ok(log.records);
        }
        Err(_) => {
            log.push(Seen::Timeout {
                waiting_for: "the WebSocket handshake (101) to complete".into(),
            });
            for n in 1..=user.sends.len() {
                log.push(Seen::Unsent {
                    id: protocol.chat_id(&user.id, n),
                    reason: "the connection never opened".into(),
                });
            }
            return Ok(log.records);
        }
    };
    log.push(Seen::Open);
    let opened = Instant::now();
    let last_send = user.sends.iter().map(|s| s.at_ms).max().unwrap_or(0);
    let close_at = match user.close_ms {
        Some(_) => schedule.close_at,
        None => schedule
            .close_at
            .max(opened + Duration::from_millis(last_send) + schedule.after_last_send),
    };
    let mut next = 0;
    let mut pending = Pending::default();
    loop {
        let send_at = user
            .sends
            .get(next)
            .map(|s| opened + Duration::from_millis(s.at_ms));
        // A client without a `close_ms` of its own keeps its connection until every chat it sent
        // is answered (or the deadline): a correct but slow server must not fail for being slow.
        // Missing answers are judged only after that.
        // It stops waiting a little before the deadline, so the server's answer to its close
        // still fits.
        let awaiting = user.close_ms.is_none() && !pending.is_empty();
        let answers_until = deadline
            .checked_sub(CLOSE_REPLY_GRACE)
            .unwrap_or(deadline)
            .max(close_at);
        let close_when = if awaiting { answers_until } else { close_at };
        let wake = send_at
            .map_or(close_when, |s| s.min(close_when))
            .min(deadline);
        tokio::select! {
            biased;
            msg = ws.next() => {
                if !log.frame(msg) {
                    // Drive the stream so tungstenite sends its answer to a server's close.
                    let grace = deadline.min(Instant::now() + CLOSE_REPLY_GRACE);
                    let _ = timeout_at(grace, async { while let Some(Ok(_)) = ws.next().await {} })
                        .await;
                    return Ok(log.records);
                }
                if let Some(Record { seen: Seen::Recv { text }, .. }) = log.records.last() {
                    pending.answered_by(protocol, text);
                }
            }
            () = sleep_until(wake) => {
                if wake == deadline && Some(wake) != send_at && wake != close_when {
                    log.push(Seen::Timeout { waiting_for: "the scheduled close".into() });
                    return Ok(log.records);
                }
                if Some(wake) == send_at && wake < close_at {
                    let id = protocol.chat_id(&user.id, next + 1);
                    let text = protocol.render_chat(&id, &user.sends[next].text, &user.id);
                    next += 1;
                    match ws.send(Message::text(text)).await {
                        Ok(()) => {
                            pending.sent(&id);
                            log.push(Seen::Send { id });
                        }
                        Err(e) => {
                            log.push(Seen::Dropped { error: format!("sending {id}: {e}") });
                            return Ok(log.records);
                        }
                    }
                } else {
                    close(&mut ws, &mut log, deadline).await;
                    return Ok(log.records);
                }
            }
        }
    }
}

/// Closes with 1000 and waits (until `deadline`) for the server's answer, recording whatever
/// frames still arrive.
async fn close(ws: &mut Ws, log: &mut Log, deadline: Instant) {
    let frame = CloseFrame {
        code: CloseCode::Normal,
        reason: "".into(),
    };
    log.push(Seen::ClientClose);
    let answered = async {
        if let Err(e) = ws.close(Some(frame)).await {
            return Some(Seen::Dropped {
                error: format!("sending the close: {e}"),
            });
        }
        loop {
            match ws.next().await {
                Some(Ok(Message::Text(text))) => log.push(Seen::Recv {
                    text: text.as_str().to_string(),
                }),
                Some(Ok(Message::Binary(b))) => log.push(Seen::RecvBinary { bytes: b.len() }),
                Some(Ok(Message::Close(frame))) => {
                    return Some(Seen::CloseAnswered {
                        code: frame.map(|f| u16::from(f.code)),
                    });
                }
                Some(Ok(_)) => {}
                Some(Err(WsError::ConnectionClosed | WsError::AlreadyClosed)) | None => {
                    return Some(Seen::CloseAnswered { code: None });
                }
                Some(Err(e)) => {
                    return Some(Seen::Dropped {
                        error: format!("waiting for the close answer: {e}"),
                    });
                }
            }
        }
    };
    let outcome = timeout_at(deadline, answered).await;
    match outcome {
        Ok(Some(seen)) => log.push(seen),
        Ok(None) => {}
        Err(_) => log.push(Seen::Timeout {
            waiting_for: "the server to answer the client's close".into(),
        }),
    }
}

/// The chats a client sent and still expects an answer to: its ack and the last event of its
/// run, or an error frame (a visible refusal, taken as answering the oldest chat still open).
/// Frames are read as the checker reads them ([`parse_frame`]), so a run is followed through
/// the id its ack announced where the protocol says so (`run_from_ack`).
#[derive(Default)]
pub(crate) struct Pending {
    /// Chat id → (ack seen, run complete).
    open: indexmap::IndexMap<String, (bool, bool)>,
    /// Run id → chat id, from acks that announced one.
    runs: indexmap::IndexMap<String, String>,
    /// Run ids whose last event came before any ack announced them.
    finished_early: Vec<String>,
}

impl Pending {
    pub(crate) fn is_empty(&self) -> bool {
        self.open.is_empty()
    }

    pub(crate) fn sent(&mut self, id: &str) {
        self.open.insert(id.to_string(), (false, false));
    }

    pub(crate) fn answered_by(&mut self, protocol: &Protocol, text: &str) {
        // A protocol without run events is answered by its ack alone.
        let Some(last_event) = protocol.events.len().checked_sub(1) else {
            if let Got::Ack { id, .. } = parse_frame(protocol, text) {
                self.open.shift_remove(id.as_ref());
            }
            return;
        };
        match parse_frame(protocol, text) {
            Got::Error { .. } => {
                self.open.shift_remove_index(0);
            }
            Got::Ack { id, run, .. } => {
                self.mark(&id, true);
                if let Some(run) = run {
                    // The run may have finished before its ack announced it.
                    if let Some(k) = self.finished_early.iter().position(|r| *r == run) {
                        self.finished_early.swap_remove(k);
                        self.mark(&id, false);
                    }
                    self.runs.entry(run.into_owned()).or_insert(id.into_owned());
                }
            }
            Got::Event {
                index,
                run: Some(run),
                ..
            } if index == last_event => {
                if protocol.run_from_ack.is_none() {
                    self.mark(&run, false);
                } else if let Some(chat) = self.runs.get(run.as_ref()).cloned() {
                    self.mark(&chat, false);
                } else {
                    self.finished_early.push(run.into_owned());
                }
            }
            _ => {}
        }
    }

    /// Notes `chat`'s ack (or its run's last event), and forgets the chat once it has both.
    fn mark(&mut self, chat: &str, is_ack: bool) {
        if let Some((ack, done)) = self.open.get_mut(chat) {
            if is_ack {
                *ack = true;
            } else {
                *done = true;
            }
            if *ack && *done {
                self.open.shift_remove(chat);
            }
        }
    }
}

struct Log {
    origin: Instant,
    user: String,
    records: Vec<Record>,
}

impl Log {
    fn push(&mut self, seen: Seen) {
        self.records.push(Record {
            at_ms: self.origin.elapsed().as_secs_f64() * 1000.0,
            user: self.user.clone(),
            seen,
        });
    }

    /// Records what the stream yielded; false once the connection is over.
    fn frame(&mut self, msg: Option<Result<Message, WsError>>) -> bool {
        match msg {
            Some(Ok(Message::Text(text))) => self.push(Seen::Recv {
                text: text.as_str().to_string(),
            }),
            Some(Ok(Message::Binary(b))) => self.push(Seen::RecvBinary { bytes: b.len() }),
            Some(Ok(Message::Close(frame))) => {
                let (code, reason) = frame.map_or((1005, String::new()), |f| {
                    (u16::from(f.code), f.reason.to_string())
                });
                self.push(Seen::ServerClose { code, reason });
                return false;
            }
            Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => {}
            Some(Err(e)) => {
                self.push(Seen::Dropped {
                    error: e.to_string(),
                });
                return false;
            }
            None => {
                self.push(Seen::Dropped {
                    error: "the connection ended without a close frame".into(),
                });
                return false;
            }
        }
        true
    }
}
