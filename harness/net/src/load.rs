//! Load: many users on loopback, what they lost, and the same workload against a plain
//! tokio-tungstenite echo server as the baseline, measured in the same run.
//!
//! N clients connect spread evenly over the window; each sends M chats as soon as its socket
//! opens, then reads until every chat is answered (ack and five run events; for the echo
//! baseline, the echo) or nothing has arrived for the quiet period, and stays connected until
//! every client is done. Everything is counted on the client side, from what crossed the wire:
//!
//! - **lost**: chats neither fully answered nor visibly rejected (an error frame naming the
//!   chat, or a server close before its ack);
//! - **duplicated**: an ack or run event received twice;
//! - **out of order**: an ack before that of a chat sent earlier, or a run's events out of order;
//! - **cross user**: a frame naming another user, or a chat id that is not the client's own.
//!
//! Throughput is acknowledged chats per second over the span in which acks arrive (first to
//! last), so the fixed setup latency, reported as time-to-ready, does not count against it.
//! The server runs on the measuring thread with a current-thread runtime (one core, as
//! `racegate serve` runs it), the clients on another thread: the two-core machine split evenly.
//! Peak RSS is the process's high-water mark during one measurement (reset before it where the
//! kernel allows), both ends of every connection included; `racegate load` runs each measurement
//! in a fresh process so neither inherits the other's heap.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use racegate_replay::EndpointKind;
use racegate_replay::scenario::ServerConfig;
use racegate_replay::trace::AgentEvent;
use serde::{Deserialize, Serialize};
use tokio::net::TcpStream;
use tokio::sync::{oneshot, watch};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;

use crate::client::token_query;
use crate::server::{self, ServeOptions, Server};
use crate::socket::Limits;
use crate::wire::FrameRef;
use crate::{NetError, wire};

/// What to run.
#[derive(Debug, Clone)]
pub struct LoadOptions {
    /// The endpoint under load.
    pub endpoint: EndpointKind,
    /// How many clients.
    pub users: usize,
    /// They connect evenly spread over this window.
    pub window: Duration,
    /// Chats each client sends right after open.
    pub messages: usize,
    /// The server's phase timings.
    pub server: ServerConfig,
    /// Per-connection bounds, for both servers.
    pub limits: Limits,
    /// A client gives up on its missing answers after this long with nothing received.
    pub quiet: Duration,
    /// Also measure the echo baseline.
    pub baseline: bool,
}

impl LoadOptions {
    /// The server timings `load` uses unless told otherwise: the setup of
    /// `scenarios/five-users-within-100ms.toml` (auth 50, services 120, register 30 ms), long
    /// enough for the unfixed endpoint's races to show, and no gap between a run's events.
    ///
    /// The gap is the simulated agent's think time (5 ms in scenarios, where it spaces events
    /// in a trace). A load measures capacity against an echo server that never waits, so it
    /// leaves think time out: with it, each chat adds five timer waits and the figure measures
    /// the timer wheel. `--event-gap-ms` puts it back.
    pub fn default_server() -> ServerConfig {
        ServerConfig {
            auth_ms: 50,
            services_ms: 120,
            register_ms: 30,
            event_gap_ms: 0,
            ..ServerConfig::default()
        }
    }
}

/// The figures of one measurement.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Figures {
    /// Clients whose socket opened.
    pub opened: usize,
    /// Clients that never got an open socket.
    pub connect_failures: usize,
    /// Chats sent.
    pub sent: usize,
    /// Chats fully answered.
    pub answered: usize,
    /// Chats visibly rejected.
    pub rejected: usize,
    /// Chats neither answered nor rejected.
    pub lost: usize,
    /// Acks or events received twice.
    pub duplicated: usize,
    /// Acks or events out of order.
    pub out_of_order: usize,
    /// Frames naming another user or another user's chat.
    pub cross_user: usize,
    /// Acknowledged chats per second, over the span in which acks arrived.
    pub msgs_per_s: f64,
    /// Median time from starting to connect to the first answer.
    pub p50_ready_ms: f64,
    /// 99th percentile of the same.
    pub p99_ready_ms: f64,
    /// The process's peak resident set during the measurement, in KiB.
    pub peak_rss_kb: u64,
    /// Peak minus the resident set before it began, per client.
    pub rss_per_conn_kb: f64,
    /// Wall time of the whole measurement.
    pub elapsed_ms: u64,
    /// CPU time the server's thread used (user + system, 10 ms resolution).
    pub server_cpu_ms: u64,
    /// CPU time the clients' thread used, the same way: when it nears the elapsed time, the
    /// load generator, not the server, bounds the throughput.
    #[serde(default)]
    pub client_cpu_ms: u64,
}

/// One load run: the endpoint and, if asked, the baseline.
#[derive(Debug, Clone, Serialize)]
pub struct LoadReport {
    /// The endpoint under load.
    pub endpoint: EndpointKind,
    /// Clients.
    pub users: usize,
    /// Connect window.
    pub window_ms: u64,
    /// Chats per client.
    pub messages: usize,
    /// The endpoint's figures.
    pub figures: Figures,
    /// The echo server's figures.
    pub baseline: Option<Figures>,
    /// Each run's ratio (or the endpoint's msgs/s without a baseline), in run order, when the
    /// report is the median of several runs.
    pub runs: Vec<f64>,
}

impl LoadReport {
    /// Endpoint msgs/s over baseline msgs/s.
    pub fn ratio(&self) -> Option<f64> {
        let base = self.baseline.as_ref()?.msgs_per_s;
        (base > 0.0).then(|| self.figures.msgs_per_s / base)
    }

    /// True when nothing was lost, duplicated, reordered or crossed.
    pub fn clean(&self) -> bool {
        let f = &self.figures;
        f.lost == 0 && f.duplicated == 0 && f.out_of_order == 0 && f.cross_user == 0
    }

    /// One flat JSON object: the four counts, throughput, ratio, latencies, RSS, and the
    /// baseline's figures prefixed `baseline_`.
    pub fn to_json(&self) -> serde_json::Value {
        let f = &self.figures;
        let mut obj = serde_json::json!({
            "endpoint": self.endpoint.name(),
            "users": self.users,
            "window_ms": self.window_ms,
            "messages": self.messages,
            "opened": f.opened,
            "connect_failures": f.connect_failures,
            "sent": f.sent,
            "answered": f.answered,
            "rejected": f.rejected,
            "lost": f.lost,
            "duplicated": f.duplicated,
            "out_of_order": f.out_of_order,
            "cross_user": f.cross_user,
            "msgs_per_s": round(f.msgs_per_s),
            "p50_ready_ms": round(f.p50_ready_ms),
            "p99_ready_ms": round(f.p99_ready_ms),
            "peak_rss_kb": f.peak_rss_kb,
            "rss_per_conn_kb": round(f.rss_per_conn_kb),
            "elapsed_ms": f.elapsed_ms,
            "server_cpu_ms": f.server_cpu_ms,
            "client_cpu_ms": f.client_cpu_ms,
            "baseline_msgs_per_s": serde_json::Value::Null,
            "ratio": serde_json::Value::Null,
        });
        if let (false, Some(map)) = (self.runs.is_empty(), obj.as_object_mut()) {
            let runs: Vec<f64> = self
                .runs
                .iter()
                .map(|r| (r * 1000.0).round() / 1000.0)
                .collect();
            map.insert("runs".into(), runs.into());
        }
        if let (Some(b), Some(map)) = (&self.baseline, obj.as_object_mut()) {
            map.insert("baseline_msgs_per_s".into(), round(b.msgs_per_s).into());
            map.insert("baseline_p50_ready_ms".into(), round(b.p50_ready_ms).into());
            map.insert("baseline_p99_ready_ms".into(), round(b.p99_ready_ms).into());
            map.insert("baseline_peak_rss_kb".into(), b.peak_rss_kb.into());
            map.insert(
                "baseline_rss_per_conn_kb".into(),
                round(b.rss_per_conn_kb).into(),
            );
            map.insert("baseline_lost".into(), b.lost.into());
            map.insert("baseline_elapsed_ms".into(), b.elapsed_ms.into());
            map.insert("baseline_server_cpu_ms".into(), b.server_cpu_ms.into());
            map.insert("baseline_client_cpu_ms".into(), b.client_cpu_ms.into());
            if let Some(r) = self.ratio() {
                map.insert("ratio".into(), ((r * 1000.0).round() / 1000.0).into());
            }
        }
        obj
    }

    /// The human-readable report.
    pub fn table(&self) -> String {
        let mut out = format!(
            "load: {} users over {} ms, {} chats each, endpoint {}\n\n",
            self.users, self.window_ms, self.messages, self.endpoint
        );
        let row = |name: &str, f: &Figures| {
            format!(
                "{name:<15} {:>6} {:>6} {:>6} {:>6} {:>6} {:>6} {:>6} {:>10.0} {:>8.1} {:>8.1} {:>9} {:>8.1}\n",
                f.sent,
                f.answered,
                f.rejected,
                f.lost,
                f.duplicated,
                f.out_of_order,
                f.cross_user,
                f.msgs_per_s,
                f.p50_ready_ms,
                f.p99_ready_ms,
                f.peak_rss_kb,
                f.rss_per_conn_kb,
            )
        };
        out.push_str(&format!(
            "{:<15} {:>6} {:>6} {:>6} {:>6} {:>6} {:>6} {:>6} {:>10} {:>8} {:>8} {:>9} {:>8}\n",
            "server",
            "sent",
            "answd",
            "rejct",
            "lost",
            "dup",
            "order",
            "cross",
            "msgs/s",
            "p50 ms",
            "p99 ms",
            "peak KiB",
            "KiB/conn"
        ));
        out.push_str(&row(self.endpoint.name(), &self.figures));
        if let Some(b) = &self.baseline {
            out.push_str(&row("echo baseline", b));
        }
        out.push('\n');
        if let Some(r) = self.ratio() {
            out.push_str(&format!("throughput ratio (endpoint / echo): {r:.3}\n"));
        }
        if !self.runs.is_empty() {
            let each: Vec<String> = self.runs.iter().map(|r| format!("{r:.3}")).collect();
            out.push_str(&format!(
                "the median of {} runs ({}: {}); race counts are totals over all runs\n",
                self.runs.len(),
                if self.baseline.is_some() {
                    "ratios"
                } else {
                    "msgs/s"
                },
                each.join(" ")
            ));
        }
        out.push_str(if self.clean() {
            "nothing lost, duplicated, reordered or crossed\n"
        } else {
            "RACES: messages were lost, duplicated, reordered or crossed\n"
        });
        out
    }
}

fn round(x: f64) -> f64 {
    (x * 10.0).round() / 10.0
}

/// Runs the load against the endpoint, then (if asked) the same load against the echo baseline,
/// both in this process. (`racegate load` runs each in a fresh process instead, so neither
/// inherits the other's warmed-up heap or counts its memory.)
pub fn run_load(opts: &LoadOptions) -> Result<LoadReport, NetError> {
    let figures = measure(opts, Target::Endpoint)?;
    let baseline = if opts.baseline {
        Some(measure(opts, Target::Echo)?)
    } else {
        None
    };
    Ok(LoadReport::new(opts, figures, baseline))
}

impl LoadReport {
    /// A report from figures measured elsewhere.
    pub fn new(opts: &LoadOptions, figures: Figures, baseline: Option<Figures>) -> LoadReport {
        LoadReport {
            endpoint: opts.endpoint,
            users: opts.users,
            window_ms: u64::try_from(opts.window.as_millis()).unwrap_or(u64::MAX),
            messages: opts.messages,
            figures,
            baseline,
            runs: Vec::new(),
        }
    }

    /// The median of several runs of the same load: the run with the median ratio (the median
    /// endpoint msgs/s without a baseline) gives every figure, except the four race counts,
    /// which are the totals over all runs, so a race in any run still fails the gate. `None`
    /// for no runs.
    pub fn median_of(runs: Vec<LoadReport>) -> Option<LoadReport> {
        let key = |r: &LoadReport| r.ratio().unwrap_or(r.figures.msgs_per_s);
        let keys: Vec<f64> = runs.iter().map(key).collect();
        let total = |count: fn(&Figures) -> usize| runs.iter().map(|r| count(&r.figures)).sum();
        let (lost, duplicated, out_of_order, cross_user) = (
            total(|f| f.lost),
            total(|f| f.duplicated),
            total(|f| f.out_of_order),
            total(|f| f.cross_user),
        );
        let mut sorted = runs;
        sorted.sort_by(|a, b| key(a).total_cmp(&key(b)));
        let mut median = sorted.into_iter().nth(keys.len().checked_sub(1)? / 2)?;
        let f = &mut median.figures;
        (f.lost, f.duplicated, f.out_of_order, f.cross_user) =
            (lost, duplicated, out_of_order, cross_user);
        if keys.len() > 1 {
            median.runs = keys;
        }
        Some(median)
    }
}

/// Which server a measurement runs against.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Target {
    /// `opts.endpoint` behind [`Server`].
    Endpoint,
    /// The plain tokio-tungstenite echo server.
    Echo,
}

/// One measurement: the load against `target`, in this process.
pub fn measure(opts: &LoadOptions, target: Target) -> Result<Figures, NetError> {
    if opts.users == 0 || opts.messages == 0 {
        return Err(NetError::Invalid(
            "a load needs at least one user and one message".into(),
        ));
    }
    ensure_descriptors(opts.users)?;
    measure_once(opts, target)
}

/// Both ends of every connection live in this process, all open at once: raise the soft limit
/// on open files as far as the hard limit allows, or say plainly that the load cannot fit,
/// rather than count refused connects as lost chats.
pub fn ensure_descriptors(users: usize) -> Result<(), NetError> {
    let need = u64::try_from(users).unwrap_or(u64::MAX).saturating_mul(2) + 64;
    match rlimit::increase_nofile_limit(need) {
        Ok(have) if have < need => Err(NetError::Invalid(format!(
            "{users} users need {need} open files (two sockets each, in one process), but the \
             limit is {have}: raise it (`ulimit -n {need}`) or use fewer users"
        ))),
        // Where the limit cannot be read, try anyway: a refused connect still shows as lost.
        Ok(_) | Err(_) => Ok(()),
    }
}

/// CPU time this thread has used, in ms (Linux; 0 elsewhere).
fn thread_cpu_ms() -> u64 {
    let Ok(stat) = std::fs::read_to_string("/proc/thread-self/stat") else {
        return 0;
    };
    // The command name may hold spaces: the fields we want follow its closing parenthesis.
    let Some((_, rest)) = stat.rsplit_once(')') else {
        return 0;
    };
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the line, 12 and 13 after the state field.
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    (ticks(11) + ticks(12)) * 10
}

fn current_thread_runtime() -> Result<tokio::runtime::Runtime, NetError> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(NetError::Runtime)
}

/// Serves `target` on loopback until `stop`, telling the clients where it listens.
async fn serve_until(
    opts: &LoadOptions,
    target: Target,
    addr_tx: std::sync::mpsc::Sender<SocketAddr>,
    stop: oneshot::Receiver<()>,
) -> Result<(), NetError> {
    let any = SocketAddr::from((Ipv4Addr::LOCALHOST, 0));
    let shutdown = async {
        let _ = stop.await;
    };
    match target {
        Target::Endpoint => {
            let mut serve = ServeOptions::new(opts.endpoint);
            serve.server = opts.server;
            serve.limits = opts.limits;
            serve.grace = Duration::from_millis(100);
            let server = Server::bind(any, serve).await?;
            let _ = addr_tx.send(server.local_addr()?);
            server.run(shutdown).await;
            Ok(())
        }
        Target::Echo => {
            let listener = server::bind(any).await?;
            let _ = addr_tx.send(listener.local_addr().map_err(NetError::Io)?);
            server::run_echo(listener, opts.limits, shutdown).await
        }
    }
}

/// Reads a `/proc/self/status` field in KiB.
fn proc_status_kb(field: &str) -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    status.lines().find_map(|line| {
        let rest = line.strip_prefix(field)?.strip_prefix(':')?;
        rest.trim().trim_end_matches("kB").trim().parse().ok()
    })
}

/// The process's resident set now, in KiB (0 where /proc is missing).
pub fn rss_kb() -> u64 {
    proc_status_kb("VmRSS").unwrap_or(0)
}

/// Resets the peak-RSS mark so the next reading covers one measurement only.
fn reset_peak_rss() {
    // Linux ≥ 4.0; elsewhere the mark just keeps the whole process's peak.
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

/// What one client saw.
#[derive(Debug, Default)]
struct ConnStats {
    opened: bool,
    sent: usize,
    answered: usize,
    rejected: usize,
    lost: usize,
    duplicated: usize,
    out_of_order: usize,
    cross_user: usize,
    ready: Option<Duration>,
    acks: Vec<Instant>,
}

fn measure_once(opts: &LoadOptions, target: Target) -> Result<Figures, NetError> {
    reset_peak_rss();
    let rss_before = rss_kb();
    // The server runs on this thread (as `racegate serve` does), the clients on another.
    let (addr_tx, addr_rx) = std::sync::mpsc::channel::<SocketAddr>();
    let (stop_tx, stop_rx) = oneshot::channel::<()>();
    let client_opts = opts.clone();
    let clients = std::thread::Builder::new()
        .name("racegate-load-clients".into())
        .spawn(move || {
            let run = || -> Result<(Vec<ConnStats>, Duration, u64), NetError> {
                let addr = addr_rx.recv().map_err(|_| NetError::Lost)?;
                let runtime = current_thread_runtime()?;
                let started = std::time::Instant::now();
                let cpu_before = thread_cpu_ms();
                let stats = runtime.block_on(drive_clients(&client_opts, target, addr));
                let cpu_ms = thread_cpu_ms().saturating_sub(cpu_before);
                Ok((stats, started.elapsed(), cpu_ms))
            };
            let result = run();
            let _ = stop_tx.send(());
            result
        })
        .map_err(NetError::Runtime)?;
    let runtime = current_thread_runtime()?;
    let cpu_before = thread_cpu_ms();
    let served = runtime.block_on(serve_until(opts, target, addr_tx, stop_rx));
    let cpu_ms = thread_cpu_ms().saturating_sub(cpu_before);
    drop(runtime);
    let peak = proc_status_kb("VmHWM").unwrap_or(0);
    let clients = clients.join().map_err(|_| NetError::Lost)?;
    served?;
    let (stats, elapsed, client_cpu_ms) = clients?;
    let mut figures = summarize(&stats, opts.users, peak, rss_before, elapsed);
    figures.server_cpu_ms = cpu_ms;
    figures.client_cpu_ms = client_cpu_ms;
    Ok(figures)
}

async fn drive_clients(opts: &LoadOptions, target: Target, addr: SocketAddr) -> Vec<ConnStats> {
    let start = Instant::now();
    let users = opts.users;
    let (all_done, _) = watch::channel(false);
    let roster = Arc::new(Roster {
        measuring: AtomicUsize::new(users),
        all_done,
    });
    let mut tasks = Vec::with_capacity(users);
    for i in 0..users {
        let offset = opts.window.mul_f64(i as f64 / users as f64);
        let (messages, limits, quiet) = (opts.messages, opts.limits, opts.quiet);
        let roster = roster.clone();
        tasks.push(tokio::spawn(async move {
            let measuring = Measuring(roster);
            tokio::time::sleep_until(start + offset).await;
            let user = format!("load-{i}");
            one_client(addr, user, messages, limits, quiet, target, measuring).await
        }));
    }
    let mut out = Vec::with_capacity(users);
    for task in tasks {
        out.push(task.await.unwrap_or_default());
    }
    out
}

/// The clients still measuring. Chat users keep their socket open, so every client stays
/// connected until the last one has its answers (or gave up), and only then do they all close:
/// the close storm falls after the measured span, not inside it.
struct Roster {
    measuring: AtomicUsize,
    all_done: watch::Sender<bool>,
}

/// One client's place on the roster; dropping it (on every path, a panic included) says that
/// client is done.
struct Measuring(Arc<Roster>);

impl Measuring {
    /// Leaves the roster and waits for everyone else to be done.
    async fn done(self) {
        let mut all_done = self.0.all_done.subscribe();
        drop(self);
        let _ = all_done.wait_for(|done| *done).await;
    }
}

impl Drop for Measuring {
    fn drop(&mut self) {
        if self.0.measuring.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.all_done.send_replace(true);
        }
    }
}

/// What one client expects for one chat.
#[derive(Debug, Default)]
struct Expect {
    acked: u32,
    events: Vec<AgentEvent>,
    rejected: bool,
}

async fn one_client(
    addr: SocketAddr,
    user: String,
    messages: usize,
    limits: Limits,
    quiet: Duration,
    target: Target,
    measuring: Measuring,
) -> ConnStats {
    let mut stats = ConnStats::default();
    let t0 = Instant::now();
    let connect = async {
        let stream = TcpStream::connect(addr).await.ok()?;
        let _ = stream.set_nodelay(true);
        let url = format!("ws://{addr}/load{}", token_query(&user));
        tokio_tungstenite::client_async_with_config(url, stream, Some(limits.ws_config()))
            .await
            .ok()
    };
    let Ok(Some((mut ws, _))) = tokio::time::timeout(limits.handshake_timeout, connect).await
    else {
        // Never opened: every chat it meant to send is lost, as in a replay.
        stats.lost = messages;
        return stats;
    };
    stats.opened = true;
    let ids: Vec<String> = (1..=messages).map(|n| format!("{user}/m{n}")).collect();
    let index: BTreeMap<&str, usize> = ids
        .iter()
        .enumerate()
        .map(|(i, id)| (id.as_str(), i))
        .collect();
    for id in &ids {
        if ws
            .feed(Message::text(wire::chat_text(id, "load")))
            .await
            .is_err()
        {
            break;
        }
        stats.sent += 1;
    }
    if ws.flush().await.is_err() {
        stats.sent = 0;
    }
    let mut expect: Vec<Expect> = ids.iter().map(|_| Expect::default()).collect();
    let mut last_acked: Option<usize> = None;
    let per_chat_events = match target {
        Target::Endpoint => AgentEvent::RUN.len(),
        Target::Echo => 0,
    };
    let done = |expect: &[Expect]| {
        expect[..stats.sent]
            .iter()
            .all(|e| e.rejected || (e.acked > 0 && e.events.len() >= per_chat_events))
    };
    let mut server_closed = false;
    while !done(&expect) {
        let Ok(next) = tokio::time::timeout(quiet, ws.next()).await else {
            break;
        };
        let text = match next {
            Some(Ok(Message::Text(text))) => text,
            Some(Ok(Message::Close(_))) => {
                server_closed = true;
                break;
            }
            Some(Ok(_)) => continue,
            Some(Err(_)) | None => break,
        };
        let frame = match target {
            Target::Echo => match wire::parse_client(text.as_str()) {
                Ok(chat) => FrameRef::Ack {
                    id: Cow::Owned(chat.id),
                    user: Cow::Borrowed(user.as_str()),
                },
                Err(_) => continue,
            },
            // Read in place: the load generator must cost less than what it measures.
            Target::Endpoint => match wire::decode_server_ref(text.as_str()) {
                Ok(frame) => frame,
                Err(_) => continue,
            },
        };
        let (id, claimed) = match &frame {
            FrameRef::Ack { id, user } => (id, user),
            FrameRef::Event { run, user, .. } => (run, user),
            FrameRef::Error { message } => {
                // The fixed endpoint's rejection names the chat: "message <id> rejected: …".
                let named = message
                    .strip_prefix("message ")
                    .and_then(|rest| rest.split_once(" rejected"))
                    .and_then(|(id, _)| index.get(id));
                if let Some(&i) = named {
                    expect[i].rejected = true;
                }
                continue;
            }
            FrameRef::Push { .. } => continue,
        };
        let Some(&i) = index.get(&**id).filter(|_| *claimed == user) else {
            stats.cross_user += 1;
            continue;
        };
        match frame {
            FrameRef::Ack { .. } => {
                let now = Instant::now();
                if stats.ready.is_none() {
                    stats.ready = Some(now - t0);
                }
                expect[i].acked += 1;
                if expect[i].acked > 1 {
                    stats.duplicated += 1;
                    continue;
                }
                stats.acks.push(now);
                if last_acked.is_some_and(|last| i < last) {
                    stats.out_of_order += 1;
                }
                last_acked = Some(last_acked.map_or(i, |last| last.max(i)));
            }
            FrameRef::Event { kind, .. } => {
                let events = &mut expect[i].events;
                if events.contains(&kind) {
                    stats.duplicated += 1;
                } else {
                    if events.last().is_some_and(|last| *last > kind) {
                        stats.out_of_order += 1;
                    }
                    events.push(kind);
                }
            }
            FrameRef::Error { .. } | FrameRef::Push { .. } => {}
        }
    }
    for e in &mut expect[..stats.sent] {
        if e.acked > 0 && e.events.len() >= per_chat_events {
            stats.answered += 1;
        } else if e.rejected || (server_closed && e.acked == 0) {
            // An error frame, or a close before the ack: the client knows it was refused.
            stats.rejected += 1;
        } else {
            stats.lost += 1;
        }
    }
    measuring.done().await;
    if !server_closed {
        let _ = tokio::time::timeout(limits.close_timeout, ws.close(None)).await;
    }
    stats
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = (p / 100.0 * (sorted.len() - 1) as f64).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

fn summarize(
    stats: &[ConnStats],
    users: usize,
    peak_kb: u64,
    rss_before_kb: u64,
    elapsed: Duration,
) -> Figures {
    let mut f = Figures::default();
    let mut ready: Vec<f64> = Vec::new();
    let mut first_ack: Option<Instant> = None;
    let mut last_ack: Option<Instant> = None;
    let mut acked = 0usize;
    for s in stats {
        if s.opened {
            f.opened += 1;
        } else {
            f.connect_failures += 1;
        }
        f.sent += s.sent;
        f.answered += s.answered;
        f.rejected += s.rejected;
        f.lost += s.lost;
        f.duplicated += s.duplicated;
        f.out_of_order += s.out_of_order;
        f.cross_user += s.cross_user;
        if let Some(r) = s.ready {
            ready.push(r.as_secs_f64() * 1000.0);
        }
        acked += s.acks.len();
        for &t in &s.acks {
            first_ack = Some(first_ack.map_or(t, |x| x.min(t)));
            last_ack = Some(last_ack.map_or(t, |x| x.max(t)));
        }
    }
    if let (Some(a), Some(b)) = (first_ack, last_ack) {
        let span = (b - a).as_secs_f64().max(0.001);
        f.msgs_per_s = acked as f64 / span;
    }
    ready.sort_by(f64::total_cmp);
    f.p50_ready_ms = percentile(&ready, 50.0);
    f.p99_ready_ms = percentile(&ready, 99.0);
    f.peak_rss_kb = peak_kb;
    f.rss_per_conn_kb = peak_kb.saturating_sub(rss_before_kb) as f64 / users.max(1) as f64;
    f.elapsed_ms = u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX);
    f
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(msgs: f64, base: f64, lost: usize) -> LoadReport {
        let opts = LoadOptions {
            endpoint: EndpointKind::StateMachine,
            users: 1,
            window: Duration::ZERO,
            messages: 1,
            server: ServerConfig::default(),
            limits: Limits::default(),
            quiet: Duration::from_millis(1),
            baseline: true,
        };
        let figures = Figures {
            msgs_per_s: msgs,
            lost,
            sent: 10,
            ..Figures::default()
        };
        let baseline = Figures {
            msgs_per_s: base,
            ..Figures::default()
        };
        LoadReport::new(&opts, figures, Some(baseline))
    }

    #[test]
    fn the_median_run_reports_and_race_counts_add_up() {
        let runs = vec![
            report(90.0, 100.0, 0),
            report(50.0, 100.0, 2),
            report(120.0, 100.0, 1),
        ];
        let median = LoadReport::median_of(runs).unwrap();
        assert_eq!(median.figures.msgs_per_s, 90.0);
        assert_eq!(median.ratio(), Some(0.9));
        // A race in any run fails the gate, even when the median run had none.
        assert_eq!(median.figures.lost, 3);
        assert!(!median.clean());
        assert_eq!(median.runs, vec![0.9, 0.5, 1.2]);
        assert_eq!(median.to_json()["runs"], serde_json::json!([0.9, 0.5, 1.2]));
        assert!(median.table().contains("the median of 3 runs"));
    }

    #[test]
    fn one_run_is_its_own_median_and_none_is_none() {
        let one = LoadReport::median_of(vec![report(80.0, 100.0, 0)]).unwrap();
        assert_eq!(one.figures.msgs_per_s, 80.0);
        assert!(one.runs.is_empty());
        assert!(one.to_json().get("runs").is_none());
        assert!(LoadReport::median_of(Vec::new()).is_none());
    }
}
