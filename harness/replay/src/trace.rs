//! The recorded timeline of one run: what every client and connection did, and when.
//!
//! Everything the oracle judges is here, stamped with virtual milliseconds since the run began
//! and appended in execution order. A current-thread runtime on a paused clock executes the same
//! way every time, so the same scenario gives the same trace, byte for byte.

use std::collections::HashSet;
use std::fmt;
use std::sync::{Arc, Mutex};

use racegate_core::ConnectionState;
use serde::{Serialize, Serializer};
use tokio::time::Instant;

use crate::fnv::BuildFnv1a;

/// A frame the server sends to a client.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Frame {
    /// A chat was handled.
    Ack {
        /// The chat's id.
        id: String,
        /// The user the server believes it served.
        user: String,
    },
    /// One of the five events of an agent run.
    Event {
        /// `agent_started` … `agent_completed`.
        kind: AgentEvent,
        /// The chat id that started the run.
        run: String,
        /// The user the server believes it served.
        user: String,
    },
    /// A server-side notification.
    Push {
        /// The push's id.
        id: String,
        /// Its text.
        text: String,
        /// The user it is for.
        user: String,
    },
    /// A heartbeat.
    Ping,
    /// A rejected frame.
    Error {
        /// Why.
        message: String,
    },
}

impl Frame {
    /// The user the frame claims to be for, if it names one.
    pub fn user(&self) -> Option<&str> {
        match self {
            Frame::Ack { user, .. } | Frame::Event { user, .. } | Frame::Push { user, .. } => {
                Some(user)
            }
            Frame::Ping | Frame::Error { .. } => None,
        }
    }
}

impl fmt::Display for Frame {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Frame::Ack { id, user } => write!(f, "ack {id} user={user}"),
            Frame::Event { kind, run, user } => write!(f, "{kind} run={run} user={user}"),
            Frame::Push { id, user, .. } => write!(f, "push {id} user={user}"),
            Frame::Ping => f.write_str("ping"),
            Frame::Error { message } => write!(f, "error {message:?}"),
        }
    }
}

/// The five events of one agent run, in the order they must arrive.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum AgentEvent {
    /// First.
    AgentStarted,
    /// Second.
    AgentThinking,
    /// Third.
    ToolExecuting,
    /// Fourth.
    ToolCompleted,
    /// Last.
    AgentCompleted,
}

impl AgentEvent {
    /// All five, in order.
    pub const RUN: [AgentEvent; 5] = [
        AgentEvent::AgentStarted,
        AgentEvent::AgentThinking,
        AgentEvent::ToolExecuting,
        AgentEvent::ToolCompleted,
        AgentEvent::AgentCompleted,
    ];

    /// The wire name.
    pub const fn name(self) -> &'static str {
        match self {
            AgentEvent::AgentStarted => "agent_started",
            AgentEvent::AgentThinking => "agent_thinking",
            AgentEvent::ToolExecuting => "tool_executing",
            AgentEvent::ToolCompleted => "tool_completed",
            AgentEvent::AgentCompleted => "agent_completed",
        }
    }
}

impl fmt::Display for AgentEvent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// What happened.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum EventKind {
    /// The client sent the upgrade.
    ClientConnect,
    /// The client saw the handshake complete.
    ClientOpen,
    /// The client sent a chat.
    ClientSend {
        /// The chat id.
        id: String,
    },
    /// A chat the client never got to send (its connection never opened): not a rejection.
    ClientUnsent {
        /// The chat id.
        id: String,
        /// Why.
        reason: String,
    },
    /// The client received a frame.
    ClientRecv {
        /// The frame.
        frame: Frame,
    },
    /// The client saw the server close.
    ClientClosed {
        /// The close code.
        code: u16,
    },
    /// The server answered the client's upgrade with an HTTP status instead of a WebSocket.
    ClientRefused {
        /// The HTTP status (403: closed before accept; 500: the app ended before accept).
        status: u16,
    },
    /// The client closed its side.
    ClientClose,
    /// The client ended its TCP connection without a close frame, as its scenario asked
    /// (`drop_ms`).
    ClientDrop,
    /// The client waited until the end of the run and its connection neither opened nor was
    /// refused: the server never served it.
    ClientGaveUp,
    /// The notifier issued a push for this user.
    PushIssued {
        /// The push id.
        id: String,
    },
    /// The connection entered a lifecycle state (as the endpoint understands it).
    State {
        /// The state, written by its name (`processing_ready`).
        #[serde(serialize_with = "state_name")]
        state: ConnectionState,
    },
    /// A handler processed a chat from this connection.
    Handled {
        /// The chat id.
        id: String,
        /// The user the handler acted for.
        as_user: String,
    },
    /// A chat or push was refused, visibly, to its sender.
    Rejected {
        /// The chat or push id.
        id: String,
        /// Why.
        reason: String,
    },
    /// The server logged a chat or push and dropped it (invisible to its sender).
    Dropped {
        /// The chat or push id.
        id: String,
        /// The log line.
        reason: String,
    },
    /// The transport raised an error (Starlette's text).
    TransportError {
        /// What was attempted: `accept`, `receive`, `send`, `close`.
        op: &'static str,
        /// The error text.
        error: String,
    },
    /// The connection was registered with the connection manager.
    Registered,
    /// The connection was removed from the connection manager.
    Unregistered,
    /// A setup rollback action was registered.
    CleanupRegistered {
        /// What it undoes.
        name: &'static str,
    },
    /// A setup rollback action ran.
    CleanupRan {
        /// What it undid.
        name: &'static str,
    },
    /// The server closed the connection.
    ServerClose {
        /// The close code.
        code: u16,
    },
    /// The server finished with the connection.
    Terminal {
        /// `Closed` or `Failed`, written by its name.
        #[serde(serialize_with = "state_name")]
        state: ConnectionState,
    },
}

impl fmt::Display for EventKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EventKind::ClientConnect => f.write_str("client connect"),
            EventKind::ClientOpen => f.write_str("client open"),
            EventKind::ClientSend { id } => write!(f, "client send {id}"),
            EventKind::ClientUnsent { id, reason } => write!(f, "client unsent {id}: {reason}"),
            EventKind::ClientRecv { frame } => write!(f, "client recv {frame}"),
            EventKind::ClientClosed { code } => write!(f, "client sees close {code}"),
            EventKind::ClientRefused { status } => write!(f, "client sees HTTP {status}"),
            EventKind::ClientClose => f.write_str("client close"),
            EventKind::ClientDrop => f.write_str("client drop: no close frame"),
            EventKind::ClientGaveUp => f.write_str("client gave up: the connection never opened"),
            EventKind::PushIssued { id } => write!(f, "push issued {id}"),
            EventKind::State { state } => write!(f, "state {state}"),
            EventKind::Handled { id, as_user } => write!(f, "handled {id} as user={as_user}"),
            EventKind::Rejected { id, reason } => write!(f, "rejected {id}: {reason}"),
            EventKind::Dropped { id, reason } => write!(f, "dropped {id}: {reason}"),
            EventKind::TransportError { op, error } => {
                write!(f, "transport error on {op}: {error}")
            }
            EventKind::Registered => f.write_str("registered"),
            EventKind::Unregistered => f.write_str("unregistered"),
            EventKind::CleanupRegistered { name } => write!(f, "cleanup registered {name}"),
            EventKind::CleanupRan { name } => write!(f, "cleanup ran {name}"),
            EventKind::ServerClose { code } => write!(f, "server close {code}"),
            EventKind::Terminal { state } => write!(f, "terminal {state}"),
        }
    }
}

/// One line of the timeline.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TraceEvent {
    /// Milliseconds since the run began.
    pub at_ms: u64,
    /// Whose connection or client this is: one shared string per user and run, not a copy per
    /// event (a 5,000-user run records about 160,000 events).
    pub user: Arc<str>,
    /// What happened.
    #[serde(flatten)]
    pub kind: EventKind,
}

impl fmt::Display for TraceEvent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:>7} ms  {:<24} {}", self.at_ms, self.user, self.kind)
    }
}

/// Appends events with their time. Cheap to clone; shared by every task of one run.
#[derive(Debug, Clone)]
pub struct Recorder {
    origin: Instant,
    /// `None` for a recorder that only logs.
    log: Option<Arc<Mutex<Log>>>,
}

/// What a keeping recorder holds.
#[derive(Debug, Default)]
struct Log {
    events: Vec<TraceEvent>,
    /// Every user recorded so far, each once: what the events' `user` fields share.
    users: HashSet<Arc<str>, BuildFnv1a>,
}

impl Log {
    fn intern(&mut self, user: &str) -> Arc<str> {
        if let Some(u) = self.users.get(user) {
            return u.clone();
        }
        let u: Arc<str> = Arc::from(user);
        self.users.insert(u.clone());
        u
    }
}

impl Recorder {
    /// A recorder whose time zero is now.
    pub fn new() -> Self {
        Recorder {
            origin: Instant::now(),
            log: Some(Arc::default()),
        }
    }

    /// A recorder that keeps nothing: every event still goes to the `racegate::trace` log
    /// target, but [`snapshot`](Self::snapshot) is empty. For a long-running server, where
    /// nobody judges the trace and keeping it would grow without bound.
    pub fn log_only() -> Self {
        Recorder {
            origin: Instant::now(),
            log: None,
        }
    }

    /// Milliseconds since time zero.
    pub fn now_ms(&self) -> u64 {
        u64::try_from(self.origin.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// Records `kind` for `user` at the current time.
    pub fn record(&self, user: &str, kind: EventKind) {
        let at_ms = self.now_ms();
        // The structured fields are what `--log-format json` puts in `jsonPayload` and what
        // `racegate import` reads back; the message is the same line `--trace` prints.
        tracing::debug!(
            target: "racegate::trace",
            at_ms,
            user,
            event = event_name(&kind),
            state = event_state(&kind),
            id = event_id(&kind),
            code = event_code(&kind),
            frame = event_frame(&kind),
            severity = event_severity(&kind),
            "{}",
            kind
        );
        if let Some(log) = &self.log {
            let mut log = lock(log);
            let user = log.intern(user);
            log.events.push(TraceEvent { at_ms, user, kind });
        }
    }

    /// Everything recorded so far (nothing for a [`log_only`](Self::log_only) recorder).
    pub fn snapshot(&self) -> Vec<TraceEvent> {
        self.log
            .as_ref()
            .map(|log| lock(log).events.clone())
            .unwrap_or_default()
    }

    /// Everything recorded so far, leaving the recorder empty: the end of a run, without
    /// copying a trace nobody else will read.
    pub fn take(&self) -> Vec<TraceEvent> {
        self.log
            .as_ref()
            .map(|log| std::mem::take(&mut lock(log).events))
            .unwrap_or_default()
    }
}

/// The `event` field of the tracing line: the same snake_case tag as the JSON trace.
fn event_name(kind: &EventKind) -> &'static str {
    match kind {
        EventKind::ClientConnect => "client_connect",
        EventKind::ClientOpen => "client_open",
        EventKind::ClientSend { .. } => "client_send",
        EventKind::ClientUnsent { .. } => "client_unsent",
        EventKind::ClientRecv { .. } => "client_recv",
        EventKind::ClientClosed { .. } => "client_closed",
        EventKind::ClientRefused { .. } => "client_refused",
        EventKind::ClientClose => "client_close",
        EventKind::ClientDrop => "client_drop",
        EventKind::ClientGaveUp => "client_gave_up",
        EventKind::PushIssued { .. } => "push_issued",
        EventKind::State { .. } => "state",
        EventKind::Handled { .. } => "handled",
        EventKind::Rejected { .. } => "rejected",
        EventKind::Dropped { .. } => "dropped",
        EventKind::TransportError { .. } => "transport_error",
        EventKind::Registered => "registered",
        EventKind::Unregistered => "unregistered",
        EventKind::CleanupRegistered { .. } => "cleanup_registered",
        EventKind::CleanupRan { .. } => "cleanup_ran",
        EventKind::ServerClose { .. } => "server_close",
        EventKind::Terminal { .. } => "terminal",
    }
}

/// A state as the JSON trace has always written it: its stable name, not a variant tag.
fn state_name<S: Serializer>(state: &ConnectionState, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(state.name())
}

/// The lifecycle state an event names, if any.
fn event_state(kind: &EventKind) -> Option<&'static str> {
    match kind {
        EventKind::State { state } | EventKind::Terminal { state } => Some(state.name()),
        _ => None,
    }
}

/// The chat, push or run id an event is about, if any.
fn event_id(kind: &EventKind) -> Option<&str> {
    match kind {
        EventKind::ClientSend { id }
        | EventKind::ClientUnsent { id, .. }
        | EventKind::PushIssued { id }
        | EventKind::Handled { id, .. }
        | EventKind::Rejected { id, .. }
        | EventKind::Dropped { id, .. } => Some(id),
        EventKind::ClientRecv { frame } => match frame {
            Frame::Ack { id, .. } | Frame::Push { id, .. } => Some(id),
            Frame::Event { run, .. } => Some(run),
            Frame::Ping | Frame::Error { .. } => None,
        },
        _ => None,
    }
}

/// The close code an event carries, if any.
fn event_code(kind: &EventKind) -> Option<u64> {
    match kind {
        EventKind::ClientClosed { code } | EventKind::ServerClose { code } => {
            Some(u64::from(*code))
        }
        _ => None,
    }
}

/// The type of a frame the client received: `ack`, `push`, `error`, or the agent event's name.
fn event_frame(kind: &EventKind) -> Option<&'static str> {
    match kind {
        EventKind::ClientRecv { frame } => Some(match frame {
            Frame::Ack { .. } => "ack",
            Frame::Event { kind, .. } => kind.name(),
            Frame::Push { .. } => "push",
            Frame::Ping => "ping",
            Frame::Error { .. } => "error",
        }),
        _ => None,
    }
}

/// How a staging log would rate the event: Starlette's raise is an error, a silent drop a
/// warning. Everything else takes the line's level.
fn event_severity(kind: &EventKind) -> Option<&'static str> {
    match kind {
        EventKind::TransportError { .. } => Some("ERROR"),
        EventKind::Dropped { .. } | EventKind::Rejected { .. } => Some("WARNING"),
        _ => None,
    }
}

fn lock(log: &Mutex<Log>) -> std::sync::MutexGuard<'_, Log> {
    // A panic elsewhere must not hide the trace that explains it.
    match log.lock() {
        Ok(guard) => guard,
        Err(poisoned) => poisoned.into_inner(),
    }
}

impl Default for Recorder {
    fn default() -> Self {
        Self::new()
    }
}
