//! Shared by the real-socket tests: a server on loopback port 0 in the test's runtime, a
//! well-behaved client, raw frames for what a well-behaved client cannot send, a panic counter,
//! and the Python interpreter for the independent clients. Every wait is under [`WAIT`].

#![allow(dead_code)]

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::Once;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use racegate_net::{Counters, ServeOptions, Server, ShutdownReport};
use racegate_replay::EndpointKind;
use racegate_replay::trace::Frame;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// The longest any single wait in these tests may take.
pub const WAIT: Duration = Duration::from_secs(10);

static PANICS: AtomicUsize = AtomicUsize::new(0);
static HOOK: Once = Once::new();

/// Counts panics on any thread from now on (the server's tasks swallow theirs).
pub fn count_panics() {
    HOOK.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            PANICS.fetch_add(1, Ordering::SeqCst);
            previous(info);
        }));
    });
}

/// Panics seen so far.
pub fn panics() -> usize {
    PANICS.load(Ordering::SeqCst)
}

/// The Python that has `python/requirements.txt` installed: `RACEGATE_PYTHON` when set (`make test`
/// sets it), else the workspace's `target/py` venv that `make py` creates. Never a global
/// `python3`: one without the packages would fail for a reason unrelated to racegate, and a test
/// that skipped instead would pass on a machine that checked nothing.
#[track_caller]
pub fn python() -> PathBuf {
    if let Some(python) = std::env::var_os("RACEGATE_PYTHON") {
        return PathBuf::from(python);
    }
    // This crate is harness/net; the venv belongs to the workspace, two levels up.
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    let root = manifest.ancestors().nth(2).unwrap_or(manifest);
    let venv = root.join("target/py/bin/python");
    assert!(
        venv.is_file(),
        "no Python for the tests: run `make py` (creates target/py from python/requirements.txt), \
         or set RACEGATE_PYTHON to a python with those packages; {} does not exist",
        venv.display()
    );
    venv
}

/// A server running in the test's runtime.
pub struct TestServer {
    pub addr: SocketAddr,
    pub counters: Arc<Counters>,
    stop: Option<oneshot::Sender<()>>,
    join: JoinHandle<ShutdownReport>,
}

impl TestServer {
    pub async fn start(opts: ServeOptions) -> TestServer {
        count_panics();
        let server = Server::bind(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)), opts)
            .await
            .unwrap();
        let addr = server.local_addr().unwrap();
        let counters = server.counters();
        let (stop, stop_rx) = oneshot::channel::<()>();
        let join = tokio::spawn(server.run(async {
            let _ = stop_rx.await;
        }));
        TestServer {
            addr,
            counters,
            stop: Some(stop),
            join,
        }
    }

    /// The state-machine endpoint, zero phases, test-sized timeouts.
    pub async fn fix() -> TestServer {
        TestServer::start(test_options(EndpointKind::StateMachine)).await
    }

    pub fn url(&self, token: &str) -> String {
        format!("ws://{}/chat?token={token}", self.addr)
    }

    /// Waits until the server holds at most `n` connections and endpoint sessions.
    pub async fn settles_to(&self, n: usize) {
        let c = &self.counters;
        let settled = tokio::time::timeout(WAIT, async {
            while c.open() > n || c.sessions() > n {
                tokio::time::sleep(Duration::from_millis(5)).await; // real-time: polling a counter
            }
        })
        .await;
        assert!(
            settled.is_ok(),
            "server still holds {} connections and {} sessions, expected at most {n}",
            c.open(),
            c.sessions()
        );
    }

    pub async fn stop(mut self) -> ShutdownReport {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        tokio::time::timeout(WAIT, self.join)
            .await
            .expect("server stops within the wait")
            .expect("server task ends cleanly")
    }
}

/// Options with timeouts short enough for tests.
pub fn test_options(endpoint: EndpointKind) -> ServeOptions {
    let mut opts = ServeOptions::new(endpoint);
    opts.limits.handshake_timeout = Duration::from_millis(300);
    opts.limits.close_timeout = Duration::from_millis(300);
    opts
}

pub type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// A well-behaved client.
pub async fn connect(url: &str) -> Ws {
    let (ws, _) = tokio::time::timeout(WAIT, tokio_tungstenite::connect_async(url))
        .await
        .expect("handshake within the wait")
        .expect("handshake succeeds");
    ws
}

pub async fn send_chat(ws: &mut Ws, id: &str, text: &str) {
    let frame = racegate_net::wire::chat_text(id, text);
    ws.send(Message::text(frame)).await.unwrap();
}

/// What the next thing from the server is, skipping pings.
#[derive(Debug, Clone, PartialEq)]
pub enum Seen {
    Frame(Frame),
    Text(String),
    Close(Option<u16>),
    End,
}

pub async fn next(ws: &mut Ws) -> Seen {
    loop {
        let msg = tokio::time::timeout(WAIT, ws.next())
            .await
            .expect("a server frame within the wait");
        return match msg {
            Some(Ok(Message::Text(t))) => match racegate_net::wire::decode_server(t.as_str()) {
                Ok(f) => Seen::Frame(f),
                Err(_) => Seen::Text(t.to_string()),
            },
            Some(Ok(Message::Close(f))) => Seen::Close(f.map(|f| u16::from(f.code))),
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
            Some(Ok(other)) => Seen::Text(format!("{other:?}")),
            Some(Err(_)) | None => Seen::End,
        };
    }
}

/// Sends a chat and checks its ack and five events arrive, in order, for `user`.
pub async fn chat_round_trip(ws: &mut Ws, user: &str, id: &str) {
    send_chat(ws, id, "hello").await;
    let ack = next(ws).await;
    assert_eq!(
        ack,
        Seen::Frame(Frame::Ack {
            id: id.into(),
            user: user.into()
        })
    );
    for kind in racegate_replay::trace::AgentEvent::RUN {
        assert_eq!(
            next(ws).await,
            Seen::Frame(Frame::Event {
                kind,
                run: id.into(),
                user: user.into()
            })
        );
    }
}

/// A WebSocket upgrade request on a raw TCP stream; returns the stream and the response head.
pub async fn raw_upgrade(addr: SocketAddr, target: &str) -> (TcpStream, String) {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let req = format!(
        "GET {target} HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
    );
    stream.write_all(req.as_bytes()).await.unwrap();
    let head = read_head(&mut stream).await;
    (stream, head)
}

/// Reads an HTTP response head byte by byte (so nothing after it is consumed).
pub async fn read_head(stream: &mut TcpStream) -> String {
    let mut head = Vec::new();
    let read = async {
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            match stream.read(&mut byte).await {
                Ok(1) => head.push(byte[0]),
                _ => break,
            }
        }
    };
    tokio::time::timeout(WAIT, read)
        .await
        .expect("a response head within the wait");
    String::from_utf8_lossy(&head).into_owned()
}

/// Writes one masked client frame with `opcode` (0x1 text, 0x2 binary) and `payload`.
pub async fn write_raw_frame(stream: &mut TcpStream, opcode: u8, payload: &[u8]) {
    let mask = [0x12u8, 0x34, 0x56, 0x78];
    let mut frame = vec![0x80 | opcode];
    let len = payload.len();
    if len < 126 {
        frame.push(0x80 | len as u8);
    } else if len <= u16::MAX as usize {
        frame.push(0x80 | 126);
        frame.extend_from_slice(&(len as u16).to_be_bytes());
    } else {
        frame.push(0x80 | 127);
        frame.extend_from_slice(&(len as u64).to_be_bytes());
    }
    frame.extend_from_slice(&mask);
    frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    // A server that closes early may reset the rest of a large frame: that is its right.
    let _ = stream.write_all(&frame).await;
}

/// Reads one unmasked server frame: (opcode, payload). `None` at end of stream.
pub async fn read_raw_frame(stream: &mut TcpStream) -> Option<(u8, Vec<u8>)> {
    let read = async {
        let mut head = [0u8; 2];
        stream.read_exact(&mut head).await.ok()?;
        let opcode = head[0] & 0x0f;
        let len = match head[1] & 0x7f {
            126 => {
                let mut b = [0u8; 2];
                stream.read_exact(&mut b).await.ok()?;
                u64::from(u16::from_be_bytes(b))
            }
            127 => {
                let mut b = [0u8; 8];
                stream.read_exact(&mut b).await.ok()?;
                u64::from_be_bytes(b)
            }
            n => u64::from(n),
        };
        let mut payload = vec![0u8; usize::try_from(len).ok()?];
        stream.read_exact(&mut payload).await.ok()?;
        Some((opcode, payload))
    };
    tokio::time::timeout(WAIT, read)
        .await
        .expect("a frame within the wait")
}

/// Reads raw frames until a close frame; returns its code.
pub async fn raw_close_code(stream: &mut TcpStream) -> Option<u16> {
    while let Some((opcode, payload)) = read_raw_frame(stream).await {
        if opcode == 0x8 {
            return (payload.len() >= 2).then(|| u16::from_be_bytes([payload[0], payload[1]]));
        }
    }
    None
}
