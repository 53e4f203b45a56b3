//! Load: many users on loopback, what they lost, and the same workload against a plain
//! tokio-tungstenite echo server as the baseline, measured in the same run.
//!
//! N clients connect spread evenly over the window; each sends M chats as soon as its socket
//! opens, then reads until every chat is answered (ack and five run events; for the echo
//! baseline, the echo) or nothing has arrived for the quiet period, and stays connected until
//! every client is done. Each client records what crossed the wire ([`ClientLog`]); once the
//! measurement is over, the logs become the shared client history and the shared checker counts
//! them ([`checker::tally`]: the replay's and the probe's rules, written in `docs/invariants.md`):
//!
//! - **lost**: `message-lost` (neither acknowledged nor refused by an error frame naming it, and
//!   no error end of the connection after it; or never sent because the socket never opened);
//! - **indeterminate**: a chat whose answer a server close other than 1000, or a drop, cut off;
//! - **duplicated**: an ack received twice (`out-of-order`, its duplicate kind);
//! - **out of order**: an ack before that of a chat sent earlier (`out-of-order`), or a run
//!   whose events came missing, twice or out of order (`event-order`);
//! - **cross user**: `cross-user`, a frame naming another user, or another user's chat.
//!
//! Throughput is acknowledged chats per second over the span in which acks arrive (first to
//! last), so the fixed setup latency, reported as time-to-ready, does not count against it.
//! The server runs on the measuring thread with a current-thread runtime (one core, as
//! `racegate serve` runs it), the clients on another thread: the two-core machine split evenly.
//! Peak RSS is the process's high-water mark during one measurement (reset before it where the
//! kernel allows), both ends of every connection included; `racegate load` runs each measurement
//! in a fresh process so neither inherits the other's heap.

use std::borrow::Cow;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use racegate_replay::EndpointKind;
use racegate_replay::checker::{self, Tally};
use racegate_replay::history::{Act, DEFAULT_PROTOCOL, Got, History, refused_chat};
use racegate_replay::scenario::{Protocol, ServerConfig};
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
    /// Chats neither answered nor rejected (`message-lost`).
    pub lost: usize,
    /// Chats whose fate the client cannot tell: the server closed with an error code, or the
    /// connection dropped, before their answer. Neither answered nor lost.
    #[serde(default)]
    pub indeterminate: usize,
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
            "indeterminate": f.indeterminate,
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
                "the median of {} runs ({}: {}); msgs/s, latencies and memory are the median \
                 run's, every count (sent to cross) is a total over all runs\n",
                self.runs.len(),
                if self.baseline.is_some() {
                    "ratios"
                } else {
                    "msgs/s"
                },
                each.join(" ")
            ));
        }
        if self.figures.indeterminate > 0 {
            out.push_str(&format!(
                "{} chats indeterminate: a non-1000 close or a drop cut off their answer \
                 (neither answered nor lost)\n",
                self.figures.indeterminate
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
    /// endpoint msgs/s without a baseline) gives the rates, latencies and memory; every count
    /// (sent, answered, rejected, the four race counts, indeterminate) is the total over all
    /// runs, so a race in any run still fails the gate and reads against what all runs sent.
    /// `None` for no runs.
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
        let indeterminate = total(|f| f.indeterminate);
        // Totals next to totals: the chats sent, answered and rejected over all runs, so that
        // "lost 3" reads against what was sent in the runs that lost them.
        let (sent, answered, rejected) = (
            total(|f| f.sent),
            total(|f| f.answered),
            total(|f| f.rejected),
        );
        let mut sorted = runs;
        sorted.sort_by(|a, b| key(a).total_cmp(&key(b)));
        let mut median = sorted.into_iter().nth(keys.len().checked_sub(1)? / 2)?;
        let f = &mut median.figures;
        (f.lost, f.duplicated, f.out_of_order, f.cross_user) =
            (lost, duplicated, out_of_order, cross_user);
        f.indeterminate = indeterminate;
        (f.sent, f.answered, f.rejected) = (sent, answered, rejected);
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

/// What one client saw: its history for the checker, and its timings.
#[derive(Debug, Default)]
struct ConnStats {
    log: ClientLog,
    ready: Option<Duration>,
    acks: Vec<Instant>,
}

/// What one load client did and heard, kept small on the hot path (indexes into its own chat
/// ids; a string only for what is not its own) and turned into the shared client
/// [`History`] once the measurement is over ([`tally`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClientLog {
    /// The user.
    pub user: String,
    /// Whether its socket opened.
    pub opened: bool,
    /// Its chat ids, in send order; the first `sent` went out.
    pub ids: Vec<String>,
    /// How many were sent.
    pub sent: usize,
    /// The frames it heard, in order.
    pub heard: Vec<Heard>,
    /// How the connection ended.
    pub end: LoadEnd,
}

/// A chat a frame is about: one of the client's own (by index), or another id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChatRef {
    /// The client's own `n`th chat (0-based).
    Own(usize),
    /// An id that is not one of the client's chats.
    Other(String),
}

/// One frame a load client heard.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Heard {
    /// An ack; `claimed` is the user it names when that is not the client's own.
    Ack {
        /// Which chat.
        chat: ChatRef,
        /// Another user the frame names, if it does.
        claimed: Option<String>,
    },
    /// A run event at `index` in the run.
    Event {
        /// Which run.
        chat: ChatRef,
        /// Its position in the five-event run.
        index: usize,
        /// Another user the frame names, if it does.
        claimed: Option<String>,
    },
    /// An error frame, refusing the chat it names, if any.
    Error {
        /// Its text.
        message: String,
        /// The own chat it refuses.
        refuses: Option<usize>,
    },
}

/// How a load client's connection ended.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum LoadEnd {
    /// The client closed it, once its answers came or the quiet period passed.
    #[default]
    ClientClosed,
    /// The server closed it with this code.
    ServerClosed(u16),
    /// It ended without a close frame.
    Dropped,
}

impl ClientLog {
    /// Reads one text frame the endpoint sent, in place, and records it.
    pub fn hear_endpoint(&mut self, text: &str) {
        if let Ok(frame) = wire::decode_server_ref(text) {
            self.hear(frame);
        }
    }

    /// Records one decoded frame.
    fn hear(&mut self, frame: FrameRef<'_>) {
        let own = |ids: &[String], id: &str| {
            // Own ids are `{user}/m{n}`: try the one the id's number names before searching.
            let guess = id
                .rsplit_once("/m")
                .and_then(|(_, n)| n.parse::<usize>().ok())
                .and_then(|n| n.checked_sub(1))
                .filter(|&i| ids.get(i).is_some_and(|x| x == id));
            match guess.or_else(|| ids.iter().position(|x| x == id)) {
                Some(i) => ChatRef::Own(i),
                None => ChatRef::Other(id.to_string()),
            }
        };
        let claim = |u: &str| (u != self.user).then(|| u.to_string());
        let heard = match frame {
            FrameRef::Ack { id, user } => Heard::Ack {
                chat: own(&self.ids, &id),
                claimed: claim(&user),
            },
            FrameRef::Event { kind, run, user } => Heard::Event {
                chat: own(&self.ids, &run),
                index: AgentEvent::RUN
                    .iter()
                    .position(|k| *k == kind)
                    .unwrap_or(usize::MAX),
                claimed: claim(&user),
            },
            FrameRef::Error { message } => Heard::Error {
                refuses: refused_chat(&message)
                    .and_then(|id| self.ids.iter().position(|x| x == id)),
                message: message.into_owned(),
            },
            FrameRef::Push { .. } => return,
        };
        self.heard.push(heard);
    }
}

/// The protocol an echo server speaks: an ack (the echo) and no run events.
static ECHO_PROTOCOL: LazyLock<Protocol> = LazyLock::new(|| Protocol {
    events: Vec::new(),
    ..Protocol::default()
});

/// The shared client history of `logs` (one connection per client), read with racegate's own
/// protocol, or the echo's (no run events).
pub fn history(logs: &[ClientLog], target: Target) -> History<'_> {
    let protocol: &Protocol = match target {
        Target::Endpoint => &DEFAULT_PROTOCOL,
        Target::Echo => &ECHO_PROTOCOL,
    };
    let mut h = History::new(protocol);
    for log in logs {
        let user = log.user.as_str();
        fn id<'a>(log: &'a ClientLog, c: &'a ChatRef) -> Cow<'a, str> {
            match c {
                ChatRef::Own(i) => Cow::Borrowed(log.ids.get(*i).map_or("", String::as_str)),
                ChatRef::Other(id) => Cow::Borrowed(id.as_str()),
            }
        }
        fn claimed<'a>(c: &'a Option<String>, user: &'a str) -> Option<Cow<'a, str>> {
            Some(Cow::Borrowed(c.as_deref().unwrap_or(user)))
        }
        h.push(user, 0, Act::Connect);
        if !log.opened {
            for chat in &log.ids {
                h.push(
                    user,
                    0,
                    Act::Unsent {
                        id: Cow::Borrowed(chat),
                        reason: Cow::Borrowed("the connection never opened"),
                    },
                );
            }
            continue;
        }
        h.push(user, 0, Act::Open);
        for chat in &log.ids[..log.sent.min(log.ids.len())] {
            h.push(
                user,
                0,
                Act::Send {
                    id: Cow::Borrowed(chat),
                },
            );
        }
        for heard in &log.heard {
            let got = match heard {
                Heard::Ack { chat, claimed: c } => Got::Ack {
                    id: id(log, chat),
                    user: claimed(c, user),
                    run: None,
                },
                Heard::Event {
                    chat,
                    index,
                    claimed: c,
                } => Got::Event {
                    index: *index,
                    run: Some(id(log, chat)),
                    user: claimed(c, user),
                },
                Heard::Error { message, refuses } => Got::Error {
                    message: Cow::Borrowed(message),
                    about: refuses
                        .and_then(|i| log.ids.get(i))
                        .map(|s| Cow::Borrowed(s.as_str())),
                },
            };
            h.push(user, 0, Act::Recv(got));
        }
        let end = match log.end {
            LoadEnd::ClientClosed => Act::ClientClose { scheduled: false },
            LoadEnd::ServerClosed(code) => Act::ServerClose {
                code,
                reason: Cow::Borrowed(""),
            },
            LoadEnd::Dropped => Act::Dropped {
                error: Cow::Borrowed("the connection ended without a close frame"),
            },
        };
        h.push(user, 0, end);
    }
    h
}

/// The race counts over `logs`, by the shared checker's rules ([`checker::tally`]).
pub fn tally(logs: &[ClientLog], target: Target) -> Tally {
    checker::tally(&history(logs, target))
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
    let mut figures = summarize(&stats, target, opts.users, peak, rss_before, elapsed);
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
    let ids: Vec<String> = (1..=messages).map(|n| format!("{user}/m{n}")).collect();
    stats.log = ClientLog {
        user: user.clone(),
        ids,
        ..ClientLog::default()
    };
    let Ok(Some((mut ws, _))) = tokio::time::timeout(limits.handshake_timeout, connect).await
    else {
        // Never opened: every chat it meant to send is unsent, hence lost, as in a replay.
        return stats;
    };
    let log = &mut stats.log;
    log.opened = true;
    for id in &log.ids {
        if ws
            .feed(Message::text(wire::chat_text(id, "load")))
            .await
            .is_err()
        {
            break;
        }
        log.sent += 1;
    }
    if ws.flush().await.is_err() {
        log.sent = 0;
    }
    // What is still owed: per chat, whether its ack came, how many events, a refusal.
    let mut owed: Vec<(bool, usize, bool)> = vec![(false, 0, false); log.sent];
    let per_chat_events = match target {
        Target::Endpoint => AgentEvent::RUN.len(),
        Target::Echo => 0,
    };
    let done = |owed: &[(bool, usize, bool)]| {
        owed.iter()
            .all(|(acked, events, refused)| *refused || (*acked && *events >= per_chat_events))
    };
    while !done(&owed) {
        let Ok(next) = tokio::time::timeout(quiet, ws.next()).await else {
            break;
        };
        let text = match next {
            Some(Ok(Message::Text(text))) => text,
            Some(Ok(Message::Close(frame))) => {
                log.end = LoadEnd::ServerClosed(frame.map_or(1005, |f| u16::from(f.code)));
                break;
            }
            Some(Ok(_)) => continue,
            Some(Err(_)) | None => {
                log.end = LoadEnd::Dropped;
                break;
            }
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
        let before = log.heard.len();
        log.hear(frame);
        // Only the wait needs counting here; the checker judges the log afterwards.
        match log.heard.get(before) {
            Some(Heard::Ack {
                chat: ChatRef::Own(i),
                ..
            }) => {
                let now = Instant::now();
                if stats.ready.is_none() {
                    stats.ready = Some(now - t0);
                }
                if let Some(o) = owed.get_mut(*i)
                    && !o.0
                {
                    o.0 = true;
                    stats.acks.push(now);
                }
            }
            Some(Heard::Event {
                chat: ChatRef::Own(i),
                ..
            }) => {
                if let Some(o) = owed.get_mut(*i) {
                    o.1 += 1;
                }
            }
            Some(Heard::Error {
                refuses: Some(i), ..
            }) => {
                if let Some(o) = owed.get_mut(*i) {
                    o.2 = true;
                }
            }
            _ => {}
        }
    }
    let server_ended = log.end != LoadEnd::ClientClosed;
    measuring.done().await;
    if !server_ended {
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
    target: Target,
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
    let logs: Vec<ClientLog> = stats.iter().map(|s| s.log.clone()).collect();
    let t = tally(&logs, target);
    (f.answered, f.rejected, f.lost, f.indeterminate) =
        (t.answered, t.refused, t.lost, t.indeterminate);
    (f.duplicated, f.out_of_order, f.cross_user) = (t.duplicated, t.out_of_order, t.cross_user);
    for s in stats {
        if s.log.opened {
            f.opened += 1;
        } else {
            f.connect_failures += 1;
        }
        f.sent += s.log.sent;
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
        // A race in any run fails the gate, even when the median run had none; and the chats
        // sent are counted over the same runs, so "lost 3" reads against "sent 30".
        assert_eq!(median.figures.lost, 3);
        assert_eq!(median.figures.sent, 30);
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
