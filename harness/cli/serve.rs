//! `racegate serve`: one endpoint behind real WebSockets until SIGINT or SIGTERM, then uvicorn's
//! shutdown (docs/conformance.md): close 1012 at once, HTTP 500 before accept.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use indexmap::IndexMap;
use racegate_net::{Limits, ServeOptions, Server};
use racegate_replay::EndpointKind;
use racegate_replay::scenario::{self, Phase, ServerConfig};

use crate::Outcome;

/// Where the server's phase timings come from; shared by `serve` and `load`.
#[derive(Args)]
pub(crate) struct ServerFlags {
    /// Take phase timings, limits and `fail_at`s from this scenario's `[server]` and users.
    #[arg(long)]
    scenario: Option<PathBuf>,
    /// Upgrade → accept (the handshake's own latency), ms.
    #[arg(long)]
    accept_ms: Option<u64>,
    /// Accept → authenticated, ms.
    #[arg(long)]
    auth_ms: Option<u64>,
    /// Authenticated → services ready, ms.
    #[arg(long)]
    services_ms: Option<u64>,
    /// Services ready → handlers registered, ms.
    #[arg(long)]
    register_ms: Option<u64>,
    /// Heartbeat interval, ms (0 = off).
    #[arg(long)]
    heartbeat_ms: Option<u64>,
    /// Gap between the five events of an agent run, ms.
    #[arg(long)]
    event_gap_ms: Option<u64>,
    /// Messages a connection may hold before it is ready.
    #[arg(long)]
    queue_capacity: Option<usize>,
    /// Largest client message, bytes (close 1009 above it).
    #[arg(long, default_value_t = 64 * 1024)]
    max_message_bytes: usize,
    /// How long a client may take to send its upgrade request, ms.
    #[arg(long, default_value_t = 10_000)]
    handshake_timeout_ms: u64,
}

impl ServerFlags {
    /// The timings (flags over the scenario over `base`) and the scenario's failures.
    pub(crate) fn resolve(
        &self,
        base: ServerConfig,
    ) -> anyhow::Result<(ServerConfig, IndexMap<String, Phase>)> {
        let (mut config, failures) = match &self.scenario {
            Some(path) => {
                let s = scenario::load(path)?;
                let failures = s
                    .users
                    .iter()
                    .filter_map(|u| u.fail_at.map(|p| (u.id.clone(), p)))
                    .collect();
                (s.server, failures)
            }
            None => (base, IndexMap::new()),
        };
        let set = |slot: &mut u64, flag: Option<u64>| {
            if let Some(v) = flag {
                *slot = v;
            }
        };
        set(&mut config.accept_ms, self.accept_ms);
        set(&mut config.auth_ms, self.auth_ms);
        set(&mut config.services_ms, self.services_ms);
        set(&mut config.register_ms, self.register_ms);
        set(&mut config.heartbeat_ms, self.heartbeat_ms);
        set(&mut config.event_gap_ms, self.event_gap_ms);
        if let Some(n) = self.queue_capacity {
            anyhow::ensure!(n > 0, "--queue-capacity must be at least 1");
            config.queue_capacity = n;
        }
        Ok((config, failures))
    }

    pub(crate) fn limits(&self) -> anyhow::Result<Limits> {
        anyhow::ensure!(
            self.max_message_bytes >= 256,
            "--max-message-bytes must be at least 256"
        );
        Ok(Limits {
            max_message_bytes: self.max_message_bytes,
            handshake_timeout: Duration::from_millis(self.handshake_timeout_ms.max(1)),
            ..Limits::default()
        })
    }
}

#[derive(Args)]
pub(crate) struct ServeArgs {
    /// The endpoint to serve: unfixed, partial or state-machine.
    #[arg(long)]
    endpoint: EndpointKind,
    /// Where to listen: HOST:PORT, a name (`localhost:8000`) or an address; port 0 picks a
    /// free one.
    #[arg(long, default_value = "127.0.0.1:0", value_parser = resolve_addr)]
    addr: SocketAddr,
    #[command(flatten)]
    server: ServerFlags,
    /// On shutdown, how long accepted connections get to finish in-flight messages before they
    /// close with 1012, ms. 0 (the default) is uvicorn's shutdown: 1012 at once. A grace is
    /// racegate's own, not uvicorn's.
    #[arg(long, default_value_t = 0)]
    grace_ms: u64,
}

pub(crate) fn serve(args: ServeArgs) -> anyhow::Result<Outcome> {
    let (server, failures) = args.server.resolve(ServerConfig::default())?;
    let opts = ServeOptions {
        endpoint: args.endpoint,
        server,
        failures,
        limits: args.server.limits()?,
        grace: Duration::from_millis(args.grace_ms),
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?;
    runtime.block_on(async {
        let server = Server::bind(args.addr, opts).await?;
        let addr = server.local_addr()?;
        crate::emit(None, &format!("listening on ws://{addr}\n"))?;
        let counters = server.counters();
        let signal = shutdown_signal()?;
        let grace = args.grace_ms;
        let report = server
            .run(async move {
                let name = signal.await;
                let open = counters.open();
                if grace == 0 {
                    crate::logging::notice(&format!(
                        "{name}: shutting down with {open} connections open: accepted ones close with 1012, the others get HTTP 500"
                    ));
                } else {
                    crate::logging::notice(&format!(
                        "{name}: shutting down with {open} connections open: not yet accepted ones get HTTP 500; in-flight messages get {grace} ms, then accepted ones close with 1012"
                    ));
                }
            })
            .await;
        crate::logging::notice(&format!(
            "stopped ({} connections open at the signal, {} left at exit)",
            report.open_at_signal, report.open_at_exit
        ));
        Ok(Outcome::Pass)
    })
}

/// Resolves with the signal's name on SIGINT or SIGTERM.
fn shutdown_signal() -> anyhow::Result<impl Future<Output = &'static str>> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut int = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    Ok(async move {
        tokio::select! {
            _ = int.recv() => "SIGINT",
            _ = term.recv() => "SIGTERM",
        }
    })
}

/// `--addr`: an address, or a host name with a port, resolved to its first address.
fn resolve_addr(text: &str) -> Result<SocketAddr, String> {
    use std::net::ToSocketAddrs;
    if let Ok(addr) = text.parse() {
        return Ok(addr);
    }
    let mut found = text
        .to_socket_addrs()
        .map_err(|e| format!("cannot resolve `{text}` (expected HOST:PORT): {e}"))?;
    found
        .next()
        .ok_or_else(|| format!("`{text}` resolves to no address"))
}
