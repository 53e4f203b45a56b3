//! The client of the real arms, at the byte level, so it can do what a well-behaved WebSocket
//! client cannot (frames in the same write as the upgrade request, a drop without a close frame)
//! and see exactly what came back (the HTTP status and whether a refusal had a body).
//!
//! Two halves, neither of which does I/O: [`Acts`] turns a client op into the bytes the client
//! writes, and [`Wire`] reads the server's bytes into what the client saw. [`RawClient`] runs
//! them over a TCP connection in real time (the ws and uvicorn arms); the app arm
//! (`conformance/app.rs`) runs the very same two over the in-process driver on a virtual clock,
//! so all three real arms write the same bytes and read the server the same way.
//!
//! The record, in order: `http <status>` (with ` body` when a refusal had one and ` code <n>`
//! when it carried racegate's close-code header), or `no response`; then `frame <text>` for each
//! text frame; then `close <code>` or `dropped` (the TCP connection ended without a close frame).
//! Once the client itself has closed or dropped, nothing more is recorded: what follows (the
//! server's echo, the end of the stream) is the protocol's, not the server's choice.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::{Mutex as AsyncMutex, watch};
use tokio::task::JoinHandle;

use super::cases::ClientOp;

/// The longest a client wait may take (a response, the end of the connection): real time on
/// the ws and uvicorn arms, virtual time on the app arm.
pub const WAIT: Duration = Duration::from_secs(10);

/// A chat frame's text as racegate's wire format carries it.
pub fn chat(n: usize, text: &str) -> String {
    racegate_net::wire::chat_text(&format!("c{n}"), text)
}

/// The text of a server frame: the `text` of a push, else the frame as it came.
pub fn frame_text(raw: &str) -> String {
    match serde_json::from_str::<serde_json::Value>(raw) {
        Ok(serde_json::Value::Object(map)) => match map.get("text") {
            Some(serde_json::Value::String(text)) => text.clone(),
            _ => raw.to_string(),
        },
        _ => raw.to_string(),
    }
}

fn masked(opcode: u8, payload: &[u8]) -> Vec<u8> {
    let mask = [0x37u8, 0xfa, 0x21, 0x3d];
    let mut frame = vec![0x80 | opcode];
    let len = payload.len();
    if len < 126 {
        frame.push(0x80 | len as u8);
    } else if len <= usize::from(u16::MAX) {
        frame.push(0x80 | 126);
        frame.extend_from_slice(&(len as u16).to_be_bytes());
    } else {
        frame.push(0x80 | 127);
        frame.extend_from_slice(&(len as u64).to_be_bytes());
    }
    frame.extend_from_slice(&mask);
    frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    frame
}

/// What one client op does to the connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Act {
    /// Write these bytes.
    Write(Vec<u8>),
    /// Stop recording (the client has closed), then write these bytes: the close frame.
    Close(Vec<u8>),
    /// Stop recording and end the TCP connection without a close frame.
    Drop,
    /// Wait this many milliseconds.
    Wait(u64),
    /// Nothing the connection sees: connecting and the server's shutdown are the runner's.
    Nothing,
}

/// The bytes one connection's client writes, op by op (it numbers its chats).
#[derive(Debug, Default)]
pub struct Acts {
    sent: usize,
}

impl Acts {
    /// The upgrade request for `target` on `addr`, with `pipelined` chats in the same write.
    pub fn upgrade(&mut self, addr: SocketAddr, target: &str, pipelined: &[&str]) -> Vec<u8> {
        let mut bytes = format!(
            "GET {target} HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
        )
        .into_bytes();
        for (n, text) in pipelined.iter().enumerate() {
            bytes.extend(masked(0x1, chat(n, text).as_bytes()));
        }
        self.sent = pipelined.len();
        bytes
    }

    fn chat(&mut self, text: &str) -> Vec<u8> {
        self.sent += 1;
        masked(0x1, chat(self.sent, text).as_bytes())
    }

    /// What `op` does (not the connecting ops, nor `Shutdown`).
    pub fn act(&mut self, op: ClientOp) -> Act {
        match op {
            ClientOp::Connect
            | ClientOp::Start
            | ClientOp::Pipelined(_)
            | ClientOp::Open
            | ClientOp::Shutdown => Act::Nothing,
            ClientOp::Send(text) => Act::Write(self.chat(text)),
            ClientOp::SendTogether(texts) => {
                Act::Write(texts.iter().flat_map(|text| self.chat(text)).collect())
            }
            ClientOp::SendBig(n) => Act::Write(self.chat(&"x".repeat(n))),
            ClientOp::Close(code) => Act::Close(masked(0x8, &code.to_be_bytes())),
            ClientOp::Drop => Act::Drop,
            ClientOp::Wait(ms) => Act::Wait(ms),
        }
    }
}

/// Where the reading of the server's bytes is.
#[derive(Debug, Default)]
enum Phase {
    /// Before the end of the response head.
    #[default]
    Head,
    /// A refusal: its record so far (`http <status>[ code <n>]`); the body follows, to the end.
    Refused(String, Option<String>),
    /// After `101`: WebSocket frames.
    Frames,
    /// The server ended the connection.
    Ended,
}

/// What the client saw of the server's bytes: fed what arrives, told when the connection ends.
#[derive(Debug, Default)]
pub struct Wire {
    buf: Vec<u8>,
    phase: Phase,
    seen: Vec<String>,
    /// The client closed or dropped: record nothing more.
    done: bool,
}

impl Wire {
    fn see(&mut self, what: String) {
        if !self.done {
            self.seen.push(what);
        }
    }

    /// The response is in (a 101, or a whole refusal), or the connection ended without one.
    pub fn responded(&self) -> bool {
        matches!(self.phase, Phase::Frames | Phase::Ended)
    }

    /// The server ended the connection.
    pub fn ended(&self) -> bool {
        matches!(self.phase, Phase::Ended)
    }

    /// The client closed or dropped: from now on nothing is recorded.
    pub fn stop(&mut self) {
        self.done = true;
    }

    /// The connection was still open when the client stopped waiting.
    pub fn still_open(&mut self) {
        self.see("open".into());
    }

    /// What the client saw.
    pub fn seen(&self) -> Vec<String> {
        self.seen.clone()
    }

    /// Bytes from the server; returns what the client writes back at once (its answer to a
    /// close the server started).
    pub fn feed(&mut self, bytes: &[u8]) -> Vec<u8> {
        self.buf.extend_from_slice(bytes);
        let mut reply = Vec::new();
        loop {
            match self.phase {
                Phase::Head => {
                    let Some(end) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") else {
                        return reply;
                    };
                    let head: Vec<u8> = self.buf.drain(..end + 4).collect();
                    let head = String::from_utf8_lossy(&head).into_owned();
                    let status = head.split(' ').nth(1).unwrap_or("?").to_string();
                    if status == "101" {
                        self.see("http 101".into());
                        self.phase = Phase::Frames;
                    } else {
                        let code = head.lines().find_map(|l| {
                            let (name, value) = l.split_once(':')?;
                            name.eq_ignore_ascii_case("x-websocket-close-code")
                                .then(|| value.trim().to_string())
                        });
                        self.phase = Phase::Refused(format!("http {status}"), code);
                    }
                }
                // The body runs to the end of the connection.
                Phase::Refused(..) => return reply,
                Phase::Frames => {
                    let Some((opcode, payload, used)) = parse_frame(&self.buf) else {
                        return reply;
                    };
                    self.buf.drain(..used);
                    match opcode {
                        0x1 => self.see(format!(
                            "frame {}",
                            frame_text(&String::from_utf8_lossy(&payload))
                        )),
                        0x8 => {
                            let code = if payload.len() >= 2 {
                                u16::from_be_bytes([payload[0], payload[1]]).to_string()
                            } else {
                                "none".into()
                            };
                            self.see(format!("close {code}"));
                            // Answer the server's close so it can end the connection at once
                            // (an echo of our own close needs no answer).
                            if !std::mem::replace(&mut self.done, true) {
                                reply.extend(masked(0x8, &payload));
                            }
                        }
                        // Pings (uvicorn's keepalive every 20 s) and anything else are not
                        // outcomes.
                        _ => {}
                    }
                }
                Phase::Ended => {
                    self.buf.clear();
                    return reply;
                }
            }
        }
    }

    /// The server ended the connection (or reading it failed).
    pub fn end(&mut self) {
        match std::mem::replace(&mut self.phase, Phase::Ended) {
            Phase::Head => self.see("no response".into()),
            Phase::Refused(mut seen, code) => {
                if !self.buf.is_empty() {
                    seen.push_str(" body");
                }
                if let Some(code) = code {
                    seen.push_str(&format!(" code {code}"));
                }
                self.see(seen);
            }
            // A frame cut off by the end is no frame.
            Phase::Frames => self.see("dropped".into()),
            Phase::Ended => {}
        }
        self.buf.clear();
    }
}

/// One server frame (unmasked, unfragmented) at the start of `buf`: (opcode, payload, bytes
/// used); `None` until it is all there.
fn parse_frame(buf: &[u8]) -> Option<(u8, Vec<u8>, usize)> {
    let head = buf.get(..2)?;
    let (len, start) = match head[1] & 0x7f {
        126 => (
            u64::from(u16::from_be_bytes([*buf.get(2)?, *buf.get(3)?])),
            4,
        ),
        127 => (u64::from_be_bytes(buf.get(2..10)?.try_into().ok()?), 10),
        n => (u64::from(n), 2),
    };
    let end = start + usize::try_from(len).ok()?;
    let payload = buf.get(start..end)?.to_vec();
    Some((head[0] & 0x0f, payload, end))
}

/// One raw client connection over TCP, in real time.
pub struct RawClient {
    write: Arc<AsyncMutex<Option<OwnedWriteHalf>>>,
    wire: Arc<Mutex<Wire>>,
    responded: watch::Receiver<bool>,
    reader: JoinHandle<()>,
    acts: Acts,
}

fn lock(wire: &Mutex<Wire>) -> MutexGuard<'_, Wire> {
    wire.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl RawClient {
    /// Connects to `addr` and writes the upgrade request for `target`, with `pipelined` chats in
    /// the same write.
    pub async fn start(
        addr: SocketAddr,
        target: &str,
        pipelined: &[&str],
    ) -> std::io::Result<RawClient> {
        let mut acts = Acts::default();
        let bytes = acts.upgrade(addr, target, pipelined);
        RawClient::connect(addr, &bytes, acts).await
    }

    /// Connects to `addr` and sends nothing: a connection that has not made its request yet.
    pub async fn open(addr: SocketAddr) -> std::io::Result<RawClient> {
        RawClient::connect(addr, &[], Acts::default()).await
    }

    async fn connect(addr: SocketAddr, bytes: &[u8], acts: Acts) -> std::io::Result<RawClient> {
        let stream = tokio::time::timeout(WAIT, TcpStream::connect(addr))
            .await
            .map_err(|_| std::io::Error::other("connect timed out"))??;
        stream.set_nodelay(true)?;
        let (read, mut write) = stream.into_split();
        if !bytes.is_empty() {
            write.write_all(bytes).await?;
        }
        let wire = Arc::new(Mutex::new(Wire::default()));
        let write = Arc::new(AsyncMutex::new(Some(write)));
        let (responded_tx, responded) = watch::channel(false);
        let reader = tokio::spawn(read_all(read, wire.clone(), write.clone(), responded_tx));
        Ok(RawClient {
            write,
            wire,
            responded,
            reader,
            acts,
        })
    }

    /// Waits for the HTTP response (or the end of the connection), within [`WAIT`].
    pub async fn wait_response(&mut self) {
        let _ = tokio::time::timeout(WAIT, self.responded.wait_for(|r| *r)).await;
    }

    async fn write(&self, bytes: &[u8]) {
        if let Some(w) = self.write.lock().await.as_mut() {
            // The server may have gone: a write into a closed connection is its business.
            let _ = w.write_all(bytes).await;
        }
    }

    /// Does one client step (not the connecting ones).
    pub async fn step(&mut self, op: ClientOp) {
        match self.acts.act(op) {
            Act::Write(bytes) => self.write(&bytes).await,
            Act::Close(bytes) => {
                lock(&self.wire).stop();
                self.write(&bytes).await;
            }
            Act::Drop => {
                lock(&self.wire).stop();
                // Dropping the write half sends FIN: the TCP connection ends, no close frame.
                self.write.lock().await.take();
            }
            Act::Wait(ms) => tokio::time::sleep(Duration::from_millis(ms)).await, // real-time: the case's own schedule
            Act::Nothing => {}
        }
    }

    /// Waits (within [`WAIT`]) for the connection to end; returns what the client saw, with
    /// `open` at the end if it never ended.
    pub async fn finish(self) -> Vec<String> {
        let mut reader = self.reader;
        let ended = tokio::time::timeout(WAIT, &mut reader).await.is_ok();
        if !ended {
            reader.abort();
            lock(&self.wire).still_open();
        }
        lock(&self.wire).seen()
    }
}

async fn read_all(
    mut read: OwnedReadHalf,
    wire: Arc<Mutex<Wire>>,
    write: Arc<AsyncMutex<Option<OwnedWriteHalf>>>,
    responded: watch::Sender<bool>,
) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = read.read(&mut buf).await.unwrap_or(0);
        // What the response was is recorded before the client is told there was one, so a
        // client step right after the connect cannot overtake it.
        let (reply, is_responded) = {
            let mut wire = lock(&wire);
            let reply = if n == 0 {
                wire.end();
                Vec::new()
            } else {
                wire.feed(&buf[..n])
            };
            (reply, wire.responded())
        };
        if is_responded {
            responded.send_if_modified(|r| !std::mem::replace(r, true));
        }
        if !reply.is_empty()
            && let Some(w) = write.lock().await.as_mut()
        {
            let _ = w.write_all(&reply).await;
        }
        if n == 0 {
            return;
        }
    }
}
