//! The listener: one endpoint served on every URL path, and the plain echo server that load
//! measures it against.
//!
//! Each TCP connection gets its upgrade request read and checked ([`handshake`]); a request
//! without `?token=` is accepted and closed with 1008 before any message is handled; any other
//! is handed, as a [`WsSocket`] still waiting for its `101`, to the same `EndpointKind::serve`
//! the virtual-time runner uses. Phase delays come from the [`Backend`], whose `pause` is a tokio
//! sleep: real time here.
//!
//! Shutdown is uvicorn's (`Server.shutdown`, then each connection's `shutdown()`): the listener
//! closes; a connection that has not sent its whole upgrade request is closed without a
//! response; one whose application has not accepted gets HTTP 500; an accepted one is closed
//! with 1012 at once, its application receiving disconnect 1012. An opt-in grace period
//! ([`ServeOptions::grace`], racegate's, not uvicorn's) can let accepted connections finish
//! in-flight work first.
//!
//! A server keeps one [`Backend`] per busy period: when the last connection ends, or after
//! [`EPOCH_CONNECTIONS`] connections, the next one starts a fresh backend (trace, manager,
//! router). The backend records a trace nobody reads in serve mode, so this is what bounds a
//! long-running server's memory; within a period the endpoints share state exactly as in a
//! replay. (So the unfixed endpoint's global router starts empty again in each period: its
//! "no handler yet" window reopens, as it would after a restart.)

use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt;
use indexmap::IndexMap;
use racegate_replay::EndpointKind;
use racegate_replay::backend::Backend;
use racegate_replay::scenario::{Phase, ServerConfig};
use racegate_replay::trace::Recorder;
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::watch;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role};

use crate::NetError;
use crate::handshake::{self, Upgrade};
use crate::socket::{Counters, Lifecycle, Limits, OpenGuard, SessionGuard, SocketCtx, WsSocket};

/// What a server serves and how.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    /// The endpoint behind every path.
    pub endpoint: EndpointKind,
    /// Phase timings and limits (a scenario's `[server]`, or all zero).
    pub server: ServerConfig,
    /// Users whose setup fails, and where (a scenario's `fail_at`s).
    pub failures: IndexMap<String, Phase>,
    /// Per-connection bounds.
    pub limits: Limits,
    /// On shutdown, how long accepted connections get to finish in-flight work (reading no new
    /// client frames) before they close with 1012. Zero, the default, is uvicorn's behaviour:
    /// 1012 at once. The grace is racegate's own addition, off unless asked for.
    pub grace: Duration,
}

impl ServeOptions {
    /// `endpoint` with all-zero phases, no failures, default limits and no grace (uvicorn's
    /// shutdown).
    pub fn new(endpoint: EndpointKind) -> Self {
        ServeOptions {
            endpoint,
            server: ServerConfig::default(),
            failures: IndexMap::new(),
            limits: Limits::default(),
            grace: Duration::ZERO,
        }
    }
}

/// What a shutdown did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ShutdownReport {
    /// Connections open when the shutdown began.
    pub open_at_signal: usize,
    /// Connections still open when the server gave up waiting (0 unless a peer stalled).
    pub open_at_exit: usize,
}

/// Binds a listener on `addr` with a backlog that fits a thousand connects in a burst.
pub async fn bind(addr: SocketAddr) -> Result<TcpListener, NetError> {
    let bind = || -> std::io::Result<TcpListener> {
        let socket = if addr.is_ipv4() {
            TcpSocket::new_v4()?
        } else {
            TcpSocket::new_v6()?
        };
        socket.set_reuseaddr(true)?;
        socket.bind(addr)?;
        socket.listen(4096)
    };
    bind().map_err(|source| NetError::Bind { addr, source })
}

/// Connections one backend serves before the next connection starts a fresh one.
pub const EPOCH_CONNECTIONS: usize = 4096;

/// The backend of the current busy period, how many connections hold it, how many it served.
struct Epochs {
    server: ServerConfig,
    failures: IndexMap<String, Phase>,
    current: Mutex<(Option<Arc<Backend>>, usize, usize)>,
}

impl Epochs {
    fn enter(self: &Arc<Self>) -> EpochGuard {
        let mut cur = match self.current.lock() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        };
        if cur.1 == 0 || cur.2 >= EPOCH_CONNECTIONS {
            cur.0 = None;
            cur.2 = 0;
        }
        cur.2 += 1;
        let backend = cur
            .0
            .get_or_insert_with(|| {
                Arc::new(Backend::new(
                    self.server,
                    self.failures.clone(),
                    // Nobody judges a live server's trace: it goes to the log only.
                    Recorder::log_only(),
                ))
            })
            .clone();
        cur.1 += 1;
        EpochGuard {
            epochs: self.clone(),
            backend,
        }
    }
}

struct EpochGuard {
    epochs: Arc<Epochs>,
    backend: Arc<Backend>,
}

impl Drop for EpochGuard {
    fn drop(&mut self) {
        let mut cur = match self.epochs.current.lock() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        };
        cur.1 = cur.1.saturating_sub(1);
        if cur.1 == 0 {
            cur.0 = None;
        }
    }
}

/// A bound server, not yet running.
pub struct Server {
    listener: TcpListener,
    opts: ServeOptions,
    counters: Arc<Counters>,
}

impl Server {
    /// Binds `addr` (port 0 picks a free one).
    pub async fn bind(addr: SocketAddr, opts: ServeOptions) -> Result<Server, NetError> {
        Ok(Server {
            listener: bind(addr).await?,
            opts,
            counters: Arc::default(),
        })
    }

    /// The address it listens on.
    pub fn local_addr(&self) -> Result<SocketAddr, NetError> {
        self.listener.local_addr().map_err(NetError::Io)
    }

    /// Its live counts.
    pub fn counters(&self) -> Arc<Counters> {
        self.counters.clone()
    }

    /// Serves until `shutdown` completes, then shuts down as uvicorn does: stops accepting, drops
    /// connections still sending their upgrade request, answers HTTP 500 to those not accepted,
    /// closes accepted ones with 1012 (after the grace, if one is set) and waits (within twice
    /// the close timeout) for them to go.
    pub async fn run(self, shutdown: impl Future<Output = ()>) -> ShutdownReport {
        let epochs = Arc::new(Epochs {
            server: self.opts.server,
            failures: self.opts.failures.clone(),
            current: Mutex::new((None, 0, 0)),
        });
        let endpoint = self.opts.endpoint;
        let accept_delay = Duration::from_millis(self.opts.server.accept_ms);
        let serve = move |stream, ctx| {
            let epochs = epochs.clone();
            async move {
                serve_stream(stream, ctx, endpoint, accept_delay, || epochs.enter()).await;
            }
        };
        run_loop(
            self.listener,
            self.opts.limits,
            self.opts.grace,
            self.counters,
            shutdown,
            serve,
        )
        .await
    }
}

/// Serves every upgrade on `listener` to `app`, a [`WsSocket`] still waiting for its `101`,
/// and shuts down as [`Server::run`] does (with no grace): for a caller with its own application
/// code, such as the conformance suite's scripts. No token is needed and no endpoint runs.
pub async fn serve_with<A, F>(
    listener: TcpListener,
    limits: Limits,
    shutdown: impl Future<Output = ()>,
    app: A,
) -> ShutdownReport
where
    A: Fn(Arc<WsSocket>) -> F + Send + Sync + 'static,
    F: Future<Output = ()> + Send + 'static,
{
    let app = Arc::new(app);
    let serve = move |mut stream: TcpStream, ctx: SocketCtx| {
        let app = app.clone();
        async move {
            let guard = OpenGuard::new(ctx.counters.clone());
            ctx.counters.count_accepted();
            let Some(upgrade) = read_upgrade(&mut stream, &ctx).await else {
                return;
            };
            let socket = WsSocket::new(stream, upgrade, Duration::ZERO, ctx, guard);
            app(Arc::new(socket)).await;
        }
    };
    run_loop(
        listener,
        limits,
        Duration::ZERO,
        Arc::default(),
        shutdown,
        serve,
    )
    .await
}

/// Accepts until `shutdown`, each connection served by `serve` on its own task; then the
/// shutdown sequence.
async fn run_loop<S, F>(
    listener: TcpListener,
    limits: Limits,
    grace: Duration,
    counters: Arc<Counters>,
    shutdown: impl Future<Output = ()>,
    serve: S,
) -> ShutdownReport
where
    S: Fn(TcpStream, SocketCtx) -> F,
    F: Future<Output = ()> + Send + 'static,
{
    let (lifecycle_tx, lifecycle) = watch::channel(Lifecycle::Serving);
    let ctx = SocketCtx {
        limits,
        lifecycle,
        counters: counters.clone(),
    };
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    tokio::spawn(serve(stream, ctx.clone()));
                }
                // Out of descriptors or a reset before accept: keep serving the others.
                Err(e) => {
                    tracing::warn!("accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            },
        }
    }
    drop(listener);
    let open_at_signal = counters.open();
    if !grace.is_zero() {
        let _ = lifecycle_tx.send(Lifecycle::Draining);
        wait_until_closed(&counters, grace).await;
    }
    let _ = lifecycle_tx.send(Lifecycle::ShuttingDown);
    wait_until_closed(&counters, limits.close_timeout * 2).await;
    ShutdownReport {
        open_at_signal,
        open_at_exit: counters.open(),
    }
}

async fn wait_until_closed(counters: &Counters, within: Duration) {
    let deadline = tokio::time::Instant::now() + within;
    while counters.open() > 0 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Something that lends a connection its backend for as long as it is held.
pub(crate) trait BackendLease: Send + 'static {
    fn backend(&self) -> Arc<Backend>;
}

impl BackendLease for EpochGuard {
    fn backend(&self) -> Arc<Backend> {
        self.backend.clone()
    }
}

impl BackendLease for Arc<Backend> {
    fn backend(&self) -> Arc<Backend> {
        self.clone()
    }
}

/// Serves one TCP connection: read the upgrade, refuse or close what is not a user's upgrade,
/// hand the rest to `endpoint`.
pub(crate) async fn serve_stream<L: BackendLease>(
    mut stream: TcpStream,
    ctx: SocketCtx,
    endpoint: EndpointKind,
    accept_delay: Duration,
    lease: impl FnOnce() -> L,
) {
    let guard = OpenGuard::new(ctx.counters.clone());
    ctx.counters.count_accepted();
    let Some(upgrade) = read_upgrade(&mut stream, &ctx).await else {
        return;
    };
    let Some(user) = upgrade.token.clone() else {
        close_without_token(stream, upgrade, &ctx.limits).await;
        return;
    };
    let session = SessionGuard::new(ctx.counters.clone());
    let lease = lease();
    // `?conn=` names a user's later connection in the trace (`run --transport ws`).
    let label = upgrade.conn.clone().unwrap_or_else(|| user.clone());
    let socket = Arc::new(WsSocket::new(stream, upgrade, accept_delay, ctx, guard));
    endpoint
        .serve_as(lease.backend(), socket.clone(), user, label)
        .await;
    // The endpoint function returned: uvicorn ends the connection, whoever still holds it.
    socket.app_finished();
    drop(lease);
    drop(session);
}

/// Reads the upgrade request; answers and ends what is not one. A shutdown while the request is
/// still coming drops the connection without a response: uvicorn's HTTP protocol closes a
/// connection with no request in flight (h11 `shutdown()`), and it is not a WebSocket yet.
async fn read_upgrade(stream: &mut TcpStream, ctx: &SocketCtx) -> Option<Upgrade> {
    let _ = stream.set_nodelay(true);
    let limits = ctx.limits;
    let mut lifecycle = ctx.lifecycle.clone();
    let stopping = async {
        lifecycle
            .wait_for(|l| *l != Lifecycle::Serving)
            .await
            .is_ok()
    };
    let read = handshake::read_upgrade(stream, limits.max_head_bytes, limits.handshake_timeout);
    let upgrade = tokio::select! {
        read = read => read,
        true = stopping => {
            ctx.counters.count_refused();
            return None;
        }
    };
    let upgrade = match upgrade {
        Ok(upgrade) => upgrade,
        Err(e) => {
            ctx.counters.count_refused();
            if let Some((status, reason)) = e.status() {
                handshake::write_refusal(stream, status, reason, &e.to_string()).await;
            }
            return None;
        }
    };
    if *ctx.lifecycle.borrow() != Lifecycle::Serving {
        // Complete at the very moment the shutdown began: uvicorn would have handed it to its
        // WebSocket protocol, whose shutdown answers 500 before accept.
        ctx.counters.count_refused();
        let why = "Internal Server Error";
        handshake::write_refusal(stream, 500, why, why).await;
        return None;
    }
    Some(upgrade)
}

/// No token: the upgrade completes and closes at once with 1008; no endpoint runs.
async fn close_without_token(mut stream: TcpStream, upgrade: Upgrade, limits: &Limits) {
    if handshake::write_accept(&mut stream, &upgrade.key)
        .await
        .is_err()
    {
        return;
    }
    let mut ws = WebSocketStream::from_partially_read(
        stream,
        upgrade.leftover,
        Role::Server,
        Some(limits.ws_config()),
    )
    .await;
    let frame = CloseFrame {
        code: CloseCode::Policy,
        reason: "missing token: connect with ?token=<user id>".into(),
    };
    let closing = async {
        if ws.close(Some(frame)).await.is_ok() {
            while let Some(Ok(_)) = ws.next().await {}
        }
    };
    let _ = tokio::time::timeout(limits.close_timeout, closing).await;
}

/// The baseline: a plain tokio-tungstenite echo server, same limits, same runtime shape.
pub async fn run_echo(
    listener: TcpListener,
    limits: Limits,
    shutdown: impl Future<Output = ()>,
) -> Result<(), NetError> {
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            () = &mut shutdown => return Ok(()),
            accepted = listener.accept() => {
                let Ok((stream, _)) = accepted else { continue };
                tokio::spawn(echo_one(stream, limits));
            }
        }
    }
}

async fn echo_one(stream: TcpStream, limits: Limits) {
    use futures_util::TryStreamExt;
    let _ = stream.set_nodelay(true);
    let accept = tokio_tungstenite::accept_async_with_config(stream, Some(limits.ws_config()));
    let Ok(Ok(ws)) = tokio::time::timeout(limits.handshake_timeout, accept).await else {
        return;
    };
    // tokio-tungstenite's own echo example: forward feeds, and flushes when the reader waits.
    let (write, read) = ws.split();
    let _ = read
        .try_filter(|msg| std::future::ready(msg.is_text() || msg.is_binary()))
        .forward(write)
        .await;
}
