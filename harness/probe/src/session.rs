//! One user's connection on a real clock: connect at its time (writing its pipelined chats with
//! the upgrade request), send its chats on schedule after open, close or drop at its time (a
//! close or drop due while the handshake is still waiting ends the TCP connection there), and
//! record everything seen, with milliseconds since the scenario began, under the connection's
//! label. Judging is [`check`](crate::check)'s job; a session only records.
//!
//! Every wait is bounded by the scenario's deadline. What the deadline cut short is recorded as
//! [`Seen::Timeout`], which is `stuck`. A refused TCP connect is not a record but an error: the
//! server is not there, and nothing about the scenario can be judged.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use racegate_replay::history::{Got, parse_frame};
use racegate_replay::scenario::{Connection, Protocol, User};
use serde::Serialize;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::{Instant, sleep_until, timeout_at};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::handshake::client::Request;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::Frame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{CloseCode, Data, OpCode};
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
    /// The client closed its side with 1000 (before open: it gave up on the handshake and
    /// ended its TCP connection, as it had no WebSocket to close).
    ClientClose,
    /// The client ended its TCP connection without a close frame (`drop_ms`).
    ClientDrop,
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
    /// The connection: its user's id, or `id#k` for the user's `k`-th connection.
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
    /// When the client closes (or, with `drop_ms`, drops) unless the server closed first.
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

type Ws = WebSocketStream<Pipelined<Conn>>;

/// Where and how one user's client connects.
#[derive(Debug, Clone, Copy)]
pub struct Dial<'a> {
    /// The server.
    pub target: &'a Target,
    /// TLS for a `wss://` target (`None` for `ws://`).
    pub tls: Option<&'a Tls>,
}

/// Runs connection `conn` of `user` against `dial.target` with its upgrade `request` (built and
/// checked by the caller, credentials filled in) and returns what it saw.
pub async fn run(
    dial: Dial<'_>,
    request: Request,
    protocol: &Protocol,
    user: &User,
    conn: &Connection,
    schedule: Schedule,
) -> Result<Vec<Record>, Failure> {
    let mut log = Log {
        origin: schedule.origin,
        user: conn.label.clone(),
        records: Vec::new(),
    };
    // This connection's `n`-th chat (1-based): a user's chats are numbered across its
    // connections.
    let chat_id = |n: usize| protocol.chat_id(&user.id, conn.chats_before + n);
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
    // Pipelined chats go out in the upgrade request's write, before the `101` is read.
    let mut pending = Pending::default();
    let mut frames = Vec::new();
    let mut pipelined = Vec::new();
    for (k, send) in user.sends[..user.pipelined].iter().enumerate() {
        let id = chat_id(k + 1);
        let text = protocol.render_chat(&id, &send.text, &user.id);
        frames.extend(masked_text(&text, mask_for(k)));
        pipelined.push(id);
    }
    let stream = Pipelined::new(stream, frames);
    for id in pipelined {
        pending.sent(&id);
        log.push(Seen::Send { id });
    }
    let handshake = tokio_tungstenite::client_async(request, stream);
    // A close or drop due during the handshake ends it there: the client leaves (dropping the
    // handshake ends its TCP connection; there is no WebSocket to close), as the replay's client
    // does, and as a browser's `ws.close()` in CONNECTING does.
    let leave = sleep_until(
        user.leave_ms()
            .map_or(deadline, |_| schedule.close_at.min(deadline)),
    );
    let handshake = async {
        tokio::select! {
            biased;
            done = handshake => Some(done),
            () = leave, if user.leave_ms().is_some() && schedule.close_at < deadline => None,
        }
    };
    let mut ws = match timeout_at(deadline, handshake).await {
        Ok(None) => {
            log.push(if user.drop_ms.is_some() {
                Seen::ClientDrop
            } else {
                Seen::ClientClose
            });
            return Ok(log.records);
        }
        Ok(Some(Ok((ws, _response)))) => ws,
        Ok(Some(Err(WsError::Http(response)))) => {
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
        Ok(Some(Err(e))) => {
            log.push(Seen::Dropped {
                error: format!("during the handshake: {e}"),
            });
            return Ok(log.records);
        }
        Err(_) => {
            log.push(Seen::Timeout {
                waiting_for: "the WebSocket handshake (101) to complete".into(),
            });
            for n in user.pipelined + 1..=user.sends.len() {
                log.push(Seen::Unsent {
                    id: chat_id(n),
                    reason: "the connection never opened".into(),
                });
            }
            return Ok(log.records);
        }
    };
    log.push(Seen::Open);
    let opened = Instant::now();
    let last_send = user.sends.iter().map(|s| s.at_ms).max().unwrap_or(0);
    let close_at = match user.leave_ms() {
        Some(_) => schedule.close_at,
        None => schedule
            .close_at
            .max(opened + Duration::from_millis(last_send) + schedule.after_last_send),
    };
    let mut next = user.pipelined;
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
        let awaiting = user.leave_ms().is_none() && !pending.is_empty();
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
                    let id = chat_id(next + 1);
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
                } else if user.drop_ms.is_some() {
                    // The TCP connection ends with the stream: no close frame.
                    log.push(Seen::ClientDrop);
                    drop(ws);
                    return Ok(log.records);
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

/// One client text frame, masked with `mask` (RFC 6455 §5.3), as it goes on the wire: what a
/// pipelining client writes after its upgrade request.
pub fn masked_text(text: &str, mask: [u8; 4]) -> Vec<u8> {
    let mut frame = Frame::message(text.as_bytes().to_vec(), OpCode::Data(Data::Text), true);
    frame.header_mut().mask = Some(mask);
    let mut out = Vec::with_capacity(frame.len() + 4);
    // Writing into a Vec cannot fail.
    let _ = frame.format(&mut out);
    out
}

/// A mask for a connection's `k`-th pipelined frame: the protocol asks for one per frame, and
/// nothing here is a secret worth an unpredictable one.
pub fn mask_for(k: usize) -> [u8; 4] {
    let k = u32::try_from(k).unwrap_or(u32::MAX);
    (0x9e37_79b9_u32.wrapping_mul(k.wrapping_add(1))).to_be_bytes()
}

/// A stream whose first write carries `extra` bytes after what it was asked to write: the
/// upgrade request and a pipelining client's first frames go out in one write, before the
/// `101` is read (tokio-tungstenite's handshake writes its request alone). tungstenite hands
/// its whole request to one write, and after a `Pending` writes the same bytes again, which
/// this answers by finishing its own.
pub struct Pipelined<S> {
    inner: S,
    /// The frames, until the first write takes them.
    extra: Option<Vec<u8>>,
    /// The first write's bytes not yet written, and how many of them the caller gave.
    pending: Vec<u8>,
    claimed: usize,
}

impl<S> Pipelined<S> {
    /// `inner`, whose first write will carry `extra` after it (nothing when it is empty).
    pub fn new(inner: S, extra: Vec<u8>) -> Self {
        Pipelined {
            inner,
            extra: (!extra.is_empty()).then_some(extra),
            pending: Vec::new(),
            claimed: 0,
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Pipelined<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Pipelined<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        if let Some(extra) = this.extra.take() {
            this.pending = [buf, &extra].concat();
            this.claimed = buf.len();
        }
        if this.claimed == 0 {
            return Pin::new(&mut this.inner).poll_write(cx, buf);
        }
        while !this.pending.is_empty() {
            match Pin::new(&mut this.inner).poll_write(cx, &this.pending) {
                Poll::Ready(Ok(0)) => {
                    return Poll::Ready(Err(std::io::ErrorKind::WriteZero.into()));
                }
                Poll::Ready(Ok(n)) => {
                    this.pending.drain(..n);
                }
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return Poll::Pending,
            }
        }
        Poll::Ready(Ok(std::mem::take(&mut this.claimed)))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;

    /// `frame` unmasked: its text, if it is one masked text frame of under 126 bytes.
    pub(crate) fn unmasked(frame: &[u8]) -> Option<String> {
        let (&[op, len], rest) = frame.split_first_chunk::<2>()?;
        let (mask, payload) = rest.split_first_chunk::<4>()?;
        (op == 0x81 && len & 0x80 != 0 && usize::from(len & 0x7f) == payload.len()).then(|| {
            let bytes: Vec<u8> = payload
                .iter()
                .zip(mask.iter().cycle())
                .map(|(b, m)| b ^ m)
                .collect();
            String::from_utf8_lossy(&bytes).into_owned()
        })
    }

    #[test]
    fn a_masked_text_frame_reads_back_as_its_text() {
        let frame = masked_text(r#"{"id":"u/m1"}"#, mask_for(0));
        assert_eq!(unmasked(&frame).as_deref(), Some(r#"{"id":"u/m1"}"#));
        assert_ne!(mask_for(0), mask_for(1), "a mask per frame");
    }

    #[test]
    fn pipelined_frames_go_out_in_the_upgrade_requests_own_write() {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            let frame = masked_text("early", mask_for(0));
            let client = {
                let frame = frame.clone();
                tokio::spawn(async move {
                    let tcp = TcpStream::connect(addr).await.unwrap();
                    let request = format!("ws://{addr}/ws").into_client_request().unwrap();
                    // Never answered: the handshake waits until the test ends.
                    let _ =
                        tokio_tungstenite::client_async(request, Pipelined::new(tcp, frame)).await;
                })
            };
            let (mut server, _) = listener.accept().await.unwrap();
            // The first read holds the whole write: the request head, then the frame.
            let mut buf = vec![0u8; 4096];
            let n = server.read(&mut buf).await.unwrap();
            let got = &buf[..n];
            let head = got
                .windows(4)
                .position(|w| w == b"\r\n\r\n")
                .map(|i| i + 4)
                .expect("the request head");
            assert!(got.starts_with(b"GET /ws HTTP/1.1\r\n"));
            assert_eq!(&got[head..], &frame[..]);
            client.abort();
        });
    }
}
