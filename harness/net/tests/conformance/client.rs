//! The client of the two real arms: raw TCP, so it can do what a well-behaved WebSocket client
//! cannot (frames in the same write as the upgrade request, a drop without a close frame), and
//! see exactly what came back (the HTTP status and whether a refusal had a body).
//!
//! It records, in order: `http <status>` (with ` body` when a refusal had one and ` code <n>`
//! when it carried racegate's close-code header), or `no response`; then `frame <text>` for each
//! text frame; then `close <code>` or `dropped` (the TCP connection ended without a close frame).
//! Once the client itself has closed or dropped, nothing more is recorded: what follows (the
//! server's echo, the end of the stream) is the protocol's, not the server's choice.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::{Mutex as AsyncMutex, watch};
use tokio::task::JoinHandle;

use super::cases::ClientOp;

/// The longest a real-time client wait may take (a response, the end of the connection).
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

fn request(addr: SocketAddr, target: &str) -> Vec<u8> {
    format!(
        "GET {target} HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
    )
    .into_bytes()
}

struct Shared {
    seen: Mutex<Vec<String>>,
    /// The client closed or dropped: record nothing more.
    done: AtomicBool,
}

impl Shared {
    fn see(&self, what: String) {
        if !self.done.load(Ordering::SeqCst) {
            match self.seen.lock() {
                Ok(mut seen) => seen.push(what),
                Err(poisoned) => poisoned.into_inner().push(what),
            }
        }
    }
}

/// One raw client connection.
pub struct RawClient {
    write: Arc<AsyncMutex<Option<OwnedWriteHalf>>>,
    shared: Arc<Shared>,
    responded: watch::Receiver<bool>,
    reader: JoinHandle<()>,
    sent: usize,
}

impl RawClient {
    /// Connects to `addr` and writes the upgrade request for `target`, with `pipelined` chats in
    /// the same write.
    pub async fn start(
        addr: SocketAddr,
        target: &str,
        pipelined: &[&str],
    ) -> std::io::Result<RawClient> {
        let mut bytes = request(addr, target);
        for (n, text) in pipelined.iter().enumerate() {
            bytes.extend(masked(0x1, chat(n, text).as_bytes()));
        }
        let mut client = RawClient::connect(addr, &bytes).await?;
        client.sent = pipelined.len();
        Ok(client)
    }

    /// Connects to `addr` and sends nothing: a connection that has not made its request yet.
    pub async fn open(addr: SocketAddr) -> std::io::Result<RawClient> {
        RawClient::connect(addr, &[]).await
    }

    async fn connect(addr: SocketAddr, bytes: &[u8]) -> std::io::Result<RawClient> {
        let stream = tokio::time::timeout(WAIT, TcpStream::connect(addr))
            .await
            .map_err(|_| std::io::Error::other("connect timed out"))??;
        stream.set_nodelay(true)?;
        let (read, mut write) = stream.into_split();
        if !bytes.is_empty() {
            write.write_all(bytes).await?;
        }
        let shared = Arc::new(Shared {
            seen: Mutex::new(Vec::new()),
            done: AtomicBool::new(false),
        });
        let write = Arc::new(AsyncMutex::new(Some(write)));
        let (responded_tx, responded) = watch::channel(false);
        let reader = tokio::spawn(read_all(read, shared.clone(), write.clone(), responded_tx));
        Ok(RawClient {
            write,
            shared,
            responded,
            reader,
            sent: 0,
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
        match op {
            // Connecting and the server's shutdown are the driver's.
            ClientOp::Connect
            | ClientOp::Start
            | ClientOp::Pipelined(_)
            | ClientOp::Open
            | ClientOp::Shutdown => {}
            ClientOp::Send(text) => {
                self.sent += 1;
                self.write(&masked(0x1, chat(self.sent, text).as_bytes()))
                    .await;
            }
            ClientOp::SendBig(n) => {
                self.sent += 1;
                let text = "x".repeat(n);
                self.write(&masked(0x1, chat(self.sent, &text).as_bytes()))
                    .await;
            }
            ClientOp::Close(code) => {
                self.shared.done.store(true, Ordering::SeqCst);
                self.write(&masked(0x8, &code.to_be_bytes())).await;
            }
            ClientOp::Drop => {
                self.shared.done.store(true, Ordering::SeqCst);
                // Dropping the write half sends FIN: the TCP connection ends, no close frame.
                self.write.lock().await.take();
            }
            ClientOp::Wait(ms) => tokio::time::sleep(Duration::from_millis(ms)).await, // real-time: the case's own schedule
        }
    }

    /// Waits (within [`WAIT`]) for the connection to end; returns what the client saw, with
    /// `open` at the end if it never ended.
    pub async fn finish(self) -> Vec<String> {
        let mut reader = self.reader;
        let ended = tokio::time::timeout(WAIT, &mut reader).await.is_ok();
        if !ended {
            reader.abort();
            self.shared.see("open".into());
        }
        match self.shared.seen.lock() {
            Ok(seen) => seen.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }
}

async fn read_all(
    read: OwnedReadHalf,
    shared: Arc<Shared>,
    write: Arc<AsyncMutex<Option<OwnedWriteHalf>>>,
    responded: watch::Sender<bool>,
) {
    let mut read = BufReader::new(read);
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        match read.read(&mut byte).await {
            Ok(1) => head.push(byte[0]),
            _ => break,
        }
    }
    // What the response was is recorded before the client is told there was one, so a client
    // step right after the connect cannot overtake it.
    if !head.ends_with(b"\r\n\r\n") {
        shared.see("no response".into());
        let _ = responded.send(true);
        return;
    }
    let head = String::from_utf8_lossy(&head).into_owned();
    let status = head.split(' ').nth(1).unwrap_or("?").to_string();
    if status != "101" {
        let mut body = Vec::new();
        let _ = read.read_to_end(&mut body).await;
        let mut seen = format!("http {status}");
        if !body.is_empty() {
            seen.push_str(" body");
        }
        let code = head.lines().find_map(|l| {
            let (name, value) = l.split_once(':')?;
            name.eq_ignore_ascii_case("x-websocket-close-code")
                .then(|| value.trim().to_string())
        });
        if let Some(code) = code {
            seen.push_str(&format!(" code {code}"));
        }
        shared.see(seen);
        let _ = responded.send(true);
        return;
    }
    shared.see("http 101".into());
    let _ = responded.send(true);
    loop {
        let Some((opcode, payload)) = read_frame(&mut read).await else {
            shared.see("dropped".into());
            return;
        };
        match opcode {
            0x1 => shared.see(format!(
                "frame {}",
                frame_text(&String::from_utf8_lossy(&payload))
            )),
            0x8 => {
                let code = if payload.len() >= 2 {
                    u16::from_be_bytes([payload[0], payload[1]]).to_string()
                } else {
                    "none".into()
                };
                shared.see(format!("close {code}"));
                let ours = shared.done.swap(true, Ordering::SeqCst);
                // Answer the server's close so it can end the connection at once (an echo of
                // our own close needs no answer).
                if !ours && let Some(w) = write.lock().await.as_mut() {
                    let _ = w.write_all(&masked(0x8, &payload)).await;
                }
            }
            // Pings (uvicorn's keepalive every 20 s) and anything else are not outcomes.
            _ => {}
        }
    }
}

/// One server frame (unmasked, unfragmented): (opcode, payload); `None` at the end.
async fn read_frame(read: &mut BufReader<OwnedReadHalf>) -> Option<(u8, Vec<u8>)> {
    let mut head = [0u8; 2];
    read.read_exact(&mut head).await.ok()?;
    let len = match head[1] & 0x7f {
        126 => {
            let mut b = [0u8; 2];
            read.read_exact(&mut b).await.ok()?;
            u64::from(u16::from_be_bytes(b))
        }
        127 => {
            let mut b = [0u8; 8];
            read.read_exact(&mut b).await.ok()?;
            u64::from_be_bytes(b)
        }
        n => u64::from(n),
    };
    let mut payload = vec![0u8; usize::try_from(len).ok()?];
    read.read_exact(&mut payload).await.ok()?;
    Some((head[0] & 0x0f, payload))
}
