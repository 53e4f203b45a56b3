//! The client history: what every client did and saw, per connection, in the order it happened.
//! One shape for every driver, so [`checker`](crate::checker) judges them all the same way.
//!
//! The virtual-time replay and `run --transport ws` build it from their trace
//! ([`History::from_trace`]), `racegate probe` from its records (parsing text frames with the
//! scenario's `[protocol]`, [`parse_frame`]), `racegate load` from what its clients heard. The
//! second, optional part, the server's own word (what it handled, refused, dropped, raised), is
//! present only where racegate runs the server: the replay. Where it is missing, a chat whose
//! fate only the server could tell is indeterminate (Jepsen's `:info`), never a pass or a loss.

use std::borrow::Cow;
use std::sync::LazyLock;

use indexmap::IndexMap;
use serde_json::Value;

use crate::scenario::Protocol;
use crate::trace::{AgentEvent, EventKind, Frame, TraceEvent};

/// A frame a client received, as the checker needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Got<'a> {
    /// A chat's acknowledgement.
    Ack {
        /// The chat id.
        id: Cow<'a, str>,
        /// The user the frame names, if it names one.
        user: Option<Cow<'a, str>>,
        /// The run id the server assigned to the chat, where the protocol has acks announce
        /// one (`run_from_ack`) and this ack did.
        run: Option<Cow<'a, str>>,
    },
    /// One of a run's events.
    Event {
        /// Its position in the protocol's event list.
        index: usize,
        /// The chat id that started the run, or the run id its ack announced (`run_from_ack`);
        /// `None` when the frame names no run at all.
        run: Option<Cow<'a, str>>,
        /// The user the frame names, if it names one.
        user: Option<Cow<'a, str>>,
    },
    /// A server push.
    Push {
        /// The push id, if the frame has one (a probe checks a push's user without it).
        id: Option<Cow<'a, str>>,
        /// The user the frame names, if it names one.
        user: Option<Cow<'a, str>>,
    },
    /// An error frame.
    Error {
        /// Its text.
        message: Cow<'a, str>,
        /// The chat it refuses, if it names one.
        about: Option<Cow<'a, str>>,
    },
    /// A text frame that is not JSON.
    Text(Cow<'a, str>),
    /// Anything else: a heartbeat, a binary frame, a type the protocol does not name.
    Other,
}

/// What happened on one connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Act<'a> {
    /// The client sent the upgrade.
    Connect,
    /// The handshake completed.
    Open,
    /// The server answered the upgrade with an HTTP status (and maybe a close code).
    UpgradeRefused {
        /// The HTTP status.
        status: u16,
        /// The close code the server named, if any.
        code: Option<u16>,
    },
    /// The client sent a chat (the invocation whose answer is judged).
    Send {
        /// The chat id.
        id: Cow<'a, str>,
    },
    /// A chat the client meant to send and could not.
    Unsent {
        /// The chat id.
        id: Cow<'a, str>,
        /// Why.
        reason: Cow<'a, str>,
    },
    /// The notifier issued a push for this user (the replay only).
    PushIssued {
        /// The push id.
        id: Cow<'a, str>,
    },
    /// The client received a frame.
    Recv(Got<'a>),
    /// The server closed with a close frame.
    ServerClose {
        /// The code.
        code: u16,
        /// The reason.
        reason: Cow<'a, str>,
    },
    /// The connection ended without a close frame.
    Dropped {
        /// What the client library said.
        error: Cow<'a, str>,
    },
    /// The client closed its side.
    ClientClose {
        /// True when the scenario asked for this close (`close_ms`): the client chose to stop
        /// waiting for answers.
        scheduled: bool,
    },
    /// The client ended its TCP connection without a close frame, as the scenario asked
    /// (`drop_ms`): for a chat's fate, the client's own scheduled end, like its `close_ms`.
    ClientDrop,
    /// The server answered the client's close.
    CloseAnswered {
        /// The code it answered with, if a frame came.
        code: Option<u16>,
    },
    /// The client gave up waiting for something the server owed it.
    GaveUp {
        /// What, in words.
        detail: Cow<'a, str>,
    },
    /// Server trace: the server recorded something about this connection (first such record).
    Served,
    /// Server trace: the server finished with the connection (closed or failed).
    ServerEnded,
    /// Server trace: a handler processed this chat.
    Handled {
        /// The chat id.
        id: Cow<'a, str>,
    },
    /// The server (or the notifier, or the client seeing a refusal before it could send) said
    /// this chat or push was refused.
    Rejected {
        /// The chat or push id.
        id: Cow<'a, str>,
        /// Why.
        reason: Cow<'a, str>,
    },
    /// Server trace: the server read this chat or push and dropped it.
    ServerDropped {
        /// The chat or push id.
        id: Cow<'a, str>,
        /// The log line.
        reason: Cow<'a, str>,
    },
    /// The server's side: an exception escaped the application's handler for this connection
    /// (`probe --app`, whose driver runs the app).
    AppRaised {
        /// Its class and text.
        error: Cow<'a, str>,
    },
    /// The server's side: the application's handler for this connection had not returned by the
    /// end of the run, after its client left (`probe --app`).
    HandlerPending {
        /// Its coroutine.
        name: Cow<'a, str>,
    },
    /// The server's side: a task spawned while serving this connection was still pending at the
    /// end of the run, after the connection ended (`probe --app`).
    TaskPending {
        /// Its coroutine.
        name: Cow<'a, str>,
    },
    /// Server trace: the transport raised (used before accept or after close).
    Raised {
        /// What was attempted.
        op: &'a str,
        /// The error text.
        error: Cow<'a, str>,
    },
}

/// One step of a connection's history.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Op<'a> {
    /// Milliseconds since the run began.
    pub at_ms: u64,
    /// What happened.
    pub act: Act<'a>,
}

/// Every connection's history, and how to read its frames.
///
/// Connections are named by their label: a user's first connection by the user id, its later
/// ones `id#2`, `id#3`, … ([`Connection`](crate::scenario::Connection)). Rules about *whom* a
/// frame is for compare users, not connections: [`user_of`](History::user_of).
#[derive(Debug, Clone)]
pub struct History<'a> {
    /// Per connection, in order of first appearance; each connection's steps in the order they
    /// happened.
    pub conns: IndexMap<Cow<'a, str>, Vec<Op<'a>>>,
    /// The run's event list (names, for the messages), the error patterns and the close codes
    /// a server may use.
    pub protocol: &'a Protocol,
    /// Connection label → user id, for the connections whose label is not their user's id.
    users: IndexMap<Cow<'a, str>, Cow<'a, str>>,
}

/// racegate's own wire protocol: the replay's, and the default of every `[protocol]`.
pub static DEFAULT_PROTOCOL: LazyLock<Protocol> = LazyLock::new(Protocol::default);

impl<'a> History<'a> {
    /// An empty history read with `protocol`.
    pub fn new(protocol: &'a Protocol) -> Self {
        History {
            conns: IndexMap::new(),
            protocol,
            users: IndexMap::new(),
        }
    }

    /// Says that connection `conn` is one of `user`'s (a user's second connection and later;
    /// every other connection's label is its user's id).
    pub fn set_user(&mut self, conn: impl Into<Cow<'a, str>>, user: impl Into<Cow<'a, str>>) {
        self.users.insert(conn.into(), user.into());
    }

    /// The user whose connection `conn` is.
    pub fn user_of<'s>(&'s self, conn: &'s str) -> &'s str {
        self.users.get(conn).map_or(conn, |u| u.as_ref())
    }

    /// Appends `act` to `user`'s connection.
    pub fn push(&mut self, user: impl Into<Cow<'a, str>>, at_ms: u64, act: Act<'a>) {
        self.conns
            .entry(user.into())
            .or_default()
            .push(Op { at_ms, act });
    }

    /// The replay's history: its trace's client events, and the server's trace as the second
    /// part. The replay speaks racegate's own protocol (its five-event run); `scheduled` says
    /// which users' closes the scenario asked for (`close_ms`).
    pub fn from_trace(trace: &'a [TraceEvent], scheduled: &dyn Fn(&str) -> bool) -> Self {
        let mut h = History::new(&DEFAULT_PROTOCOL);
        // Which connections the server has recorded something about (by index in `conns`).
        let mut served: Vec<bool> = Vec::new();
        for ev in trace {
            let user = &*ev.user;
            let index = user_index(&mut h.conns, user, trace.len());
            if served.len() <= index {
                served.resize(index + 1, false);
            }
            let ops = &mut h.conns[index];
            let mut server = |ops: &mut Vec<Op<'a>>| {
                if !served[index] {
                    served[index] = true;
                    ops.push(Op {
                        at_ms: ev.at_ms,
                        act: Act::Served,
                    });
                }
            };
            let b = |s: &'a String| Cow::Borrowed(s.as_str());
            let act = match &ev.kind {
                EventKind::ClientConnect => Act::Connect,
                EventKind::ClientOpen => Act::Open,
                EventKind::ClientSend { id } => Act::Send { id: b(id) },
                EventKind::ClientUnsent { id, reason } => Act::Unsent {
                    id: b(id),
                    reason: b(reason),
                },
                EventKind::ClientRecv { frame } => Act::Recv(got_of(frame)),
                // 1006 is what the replay's client records for a connection lost without a
                // close frame (the runner's `ClientEvent::Dropped`).
                EventKind::ClientClosed { code: 1006 } => Act::Dropped {
                    error: Cow::Borrowed("no close frame (1006)"),
                },
                EventKind::ClientClosed { code } => Act::ServerClose {
                    code: *code,
                    reason: Cow::Borrowed(""),
                },
                EventKind::ClientRefused { status } => Act::UpgradeRefused {
                    status: *status,
                    code: None,
                },
                EventKind::ClientClose => Act::ClientClose {
                    scheduled: scheduled(user),
                },
                EventKind::ClientDrop => Act::ClientDrop,
                EventKind::ClientGaveUp => Act::GaveUp {
                    detail: Cow::Borrowed("the connection never opened and was never refused"),
                },
                EventKind::PushIssued { id } => Act::PushIssued { id: b(id) },
                EventKind::Rejected { id, reason } => Act::Rejected {
                    id: b(id),
                    reason: b(reason),
                },
                EventKind::State { state } => {
                    server(ops);
                    if state.is_terminal() {
                        Act::ServerEnded
                    } else {
                        continue;
                    }
                }
                EventKind::Terminal { .. } => {
                    server(ops);
                    Act::ServerEnded
                }
                EventKind::Handled { id, .. } => {
                    server(ops);
                    Act::Handled { id: b(id) }
                }
                EventKind::Dropped { id, reason } => {
                    server(ops);
                    Act::ServerDropped {
                        id: b(id),
                        reason: b(reason),
                    }
                }
                EventKind::TransportError { op, error } => {
                    server(ops);
                    Act::Raised {
                        op,
                        error: b(error),
                    }
                }
                EventKind::Registered
                | EventKind::Unregistered
                | EventKind::CleanupRegistered { .. }
                | EventKind::CleanupRan { .. }
                | EventKind::ServerClose { .. } => {
                    server(ops);
                    continue;
                }
            };
            ops.push(Op {
                at_ms: ev.at_ms,
                act,
            });
        }
        h
    }
}

/// The index of `user`'s connection in `conns`, added (with room for `room` steps) if new. A
/// replay has a handful of users: comparing names beats hashing every event's.
fn user_index<'a>(
    conns: &mut IndexMap<Cow<'a, str>, Vec<Op<'a>>>,
    user: &'a str,
    room: usize,
) -> usize {
    if conns.len() <= 8 {
        if let Some(i) = conns.keys().position(|k| k == user) {
            return i;
        }
    } else if let Some(i) = conns.get_index_of(user) {
        return i;
    }
    conns
        .insert_full(Cow::Borrowed(user), Vec::with_capacity(room.min(64)))
        .0
}

/// A replay frame as the checker reads it: its event's position in the five-event run.
fn got_of(frame: &Frame) -> Got<'_> {
    fn user(u: &str) -> Option<Cow<'_, str>> {
        Some(Cow::Borrowed(u))
    }
    match frame {
        Frame::Ack { id, user: u } => Got::Ack {
            id: Cow::Borrowed(id),
            user: user(u),
            run: None,
        },
        Frame::Event { kind, run, user: u } => Got::Event {
            index: AgentEvent::RUN
                .iter()
                .position(|k| k == kind)
                .unwrap_or(usize::MAX),
            run: Some(Cow::Borrowed(run)),
            user: user(u),
        },
        Frame::Push { id, user: u, .. } => Got::Push {
            id: Some(Cow::Borrowed(id)),
            user: user(u),
        },
        Frame::Error { message } => Got::Error {
            about: refused_chat(message).map(Cow::Borrowed),
            message: Cow::Borrowed(message),
        },
        Frame::Ping => Got::Other,
    }
}

/// The chat an error message refuses, in racegate's words: `message <id> rejected: …`.
pub fn refused_chat(message: &str) -> Option<&str> {
    message
        .strip_prefix("message ")
        .and_then(|rest| rest.split_once(" rejected"))
        .map(|(id, _)| id)
}

/// A text frame read with `protocol`: its type field says ack, push, error or which event; the
/// id, run and user fields (each kind's own user field) say what it is about. An error frame
/// refuses the chat its id field names, or the one its message names in racegate's words
/// ([`refused_chat`]). An event without a run id is still an event (the checker reports it as
/// matching no chat); an ack without a chat id answers nothing, so it is [`Got::Other`].
pub fn parse_frame(protocol: &Protocol, text: &str) -> Got<'static> {
    read_frame(protocol, text).1
}

/// [`parse_frame`], with the frame's type field as text (`None` when the frame is not JSON or
/// has none): one parse for a reader that also needs to know what a frame claimed to be (an
/// ack without its id field is [`Got::Other`], but still an ack by its type).
pub fn read_frame(protocol: &Protocol, text: &str) -> (Option<String>, Got<'static>) {
    let Ok(frame) = serde_json::from_str::<Value>(text) else {
        return (None, Got::Text(Cow::Owned(text.to_string())));
    };
    let get = |path: &str| field(&frame, path).map(Cow::Owned);
    let kind = field(&frame, &protocol.type_field);
    let got = match kind.as_deref().unwrap_or_default() {
        k if k == protocol.ack_type => match get(&protocol.id_field) {
            Some(id) => Got::Ack {
                id,
                user: get(protocol.ack_user_field()),
                run: protocol.run_from_ack.as_deref().and_then(get),
            },
            None => Got::Other,
        },
        k if k == protocol.push_type => Got::Push {
            id: get(&protocol.id_field),
            user: get(protocol.push_user_field()),
        },
        k if k == protocol.error_type => {
            let message =
                field(&frame, &protocol.message_field).unwrap_or_else(|| text.to_string());
            let about = get(&protocol.id_field)
                .or_else(|| refused_chat(&message).map(|id| Cow::Owned(id.to_string())));
            Got::Error {
                message: Cow::Owned(message),
                about,
            }
        }
        k => match protocol.events.iter().position(|e| e == k) {
            Some(index) => Got::Event {
                index,
                run: get(&protocol.run_field),
                user: get(protocol.event_user_field()),
            },
            None => Got::Other,
        },
    };
    (kind, got)
}

/// A dotted path's value as text (strings as they are, numbers and booleans printed).
pub fn field(frame: &Value, path: &str) -> Option<String> {
    let mut v = frame;
    for key in path.split('.') {
        v = v.as_object()?.get(key)?;
    }
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        Value::Null | Value::Array(_) | Value::Object(_) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use racegate_core::ConnectionState;

    fn owned(s: &str) -> Cow<'static, str> {
        Cow::Owned(s.to_string())
    }

    #[test]
    fn a_text_frame_is_read_by_its_type_field_into_ack_push_error_or_event() {
        let p = Protocol::default();
        assert_eq!(
            parse_frame(&p, r#"{"type":"ack","id":"u/m1","user":"u"}"#),
            Got::Ack {
                id: owned("u/m1"),
                user: Some(owned("u")),
                run: None
            }
        );
        assert_eq!(
            parse_frame(&p, r#"{"type":"push","id":"u/p1"}"#),
            Got::Push {
                id: Some(owned("u/p1")),
                user: None
            }
        );
        // The third of the five events.
        assert_eq!(
            parse_frame(&p, &format!(r#"{{"type":"{}","run":"u/m1"}}"#, p.events[2])),
            Got::Event {
                index: 2,
                run: Some(owned("u/m1")),
                user: None
            }
        );
        assert_eq!(parse_frame(&p, r#"{"type":"pong"}"#), Got::Other);
        assert_eq!(parse_frame(&p, "not json"), Got::Text(owned("not json")));
    }

    #[test]
    fn an_ack_without_its_chat_id_is_no_answer_but_a_push_or_event_without_an_id_is_kept() {
        let p = Protocol::default();
        assert_eq!(parse_frame(&p, r#"{"type":"ack","user":"u"}"#), Got::Other);
        // Still checked for its user, and counted.
        assert_eq!(
            parse_frame(&p, r#"{"type":"push","user":"u"}"#),
            Got::Push {
                id: None,
                user: Some(owned("u"))
            }
        );
        // Reported as matching no chat, not dropped.
        let event = format!(r#"{{"type":"{}","id":"u/m1"}}"#, p.events[0]);
        assert_eq!(
            parse_frame(&p, &event),
            Got::Event {
                index: 0,
                run: None,
                user: None
            }
        );
    }

    #[test]
    fn each_kind_reads_its_own_user_field_and_an_ack_the_run_id_it_announces() {
        let p = Protocol {
            run_from_ack: Some("data.runId".into()),
            ack_user_field: Some("data.user".into()),
            push_user_field: Some("to".into()),
            ..Protocol::default()
        };
        assert_eq!(
            parse_frame(
                &p,
                r#"{"type":"ack","id":"u-1","user":"x","data":{"runId":42,"user":"u"}}"#
            ),
            Got::Ack {
                id: owned("u-1"),
                user: Some(owned("u")),
                run: Some(owned("42"))
            }
        );
        assert_eq!(
            parse_frame(&p, r#"{"type":"ack","id":"u-1"}"#),
            Got::Ack {
                id: owned("u-1"),
                user: None,
                run: None
            },
            "an ack that announces no run id still answers its chat"
        );
        assert_eq!(
            parse_frame(&p, r#"{"type":"push","user":"x","to":"u"}"#),
            Got::Push {
                id: None,
                user: Some(owned("u"))
            }
        );
        // Events keep `user_field`: no field of their own here.
        let event = format!(r#"{{"type":"{}","run":"42","user":"u"}}"#, p.events[4]);
        assert_eq!(
            parse_frame(&p, &event),
            Got::Event {
                index: 4,
                run: Some(owned("42")),
                user: Some(owned("u"))
            }
        );
    }

    #[test]
    fn an_error_frame_refuses_the_chat_its_id_names_or_else_the_one_its_message_names() {
        let p = Protocol::default();
        assert_eq!(
            parse_frame(&p, r#"{"type":"error","id":"u/m2","message":"queue full"}"#),
            Got::Error {
                message: owned("queue full"),
                about: Some(owned("u/m2"))
            }
        );
        assert_eq!(
            parse_frame(
                &p,
                r#"{"type":"error","message":"message u/m3 rejected: closed"}"#
            ),
            Got::Error {
                message: owned("message u/m3 rejected: closed"),
                about: Some(owned("u/m3"))
            }
        );
        // No message field: the whole frame is the message, and it names no chat.
        let bare = r#"{"type":"error"}"#;
        assert_eq!(
            parse_frame(&p, bare),
            Got::Error {
                message: owned(bare),
                about: None
            }
        );
    }

    #[test]
    fn a_protocols_own_field_names_and_dotted_paths_are_followed() {
        let p = Protocol {
            type_field: "kind".into(),
            ack_type: "received".into(),
            id_field: "meta.msg".into(),
            user_field: "meta.who".into(),
            ..Protocol::default()
        };
        assert_eq!(
            parse_frame(&p, r#"{"kind":"received","meta":{"msg":7,"who":"u"}}"#),
            Got::Ack {
                id: owned("7"),
                user: Some(owned("u")),
                run: None
            }
        );
        let frame: Value = serde_json::from_str(r#"{"a":{"b":true,"n":null,"l":[1]}}"#).unwrap();
        assert_eq!(field(&frame, "a.b").as_deref(), Some("true"));
        assert_eq!(field(&frame, "a.n"), None);
        assert_eq!(field(&frame, "a.l"), None);
        assert_eq!(field(&frame, "a"), None);
        assert_eq!(field(&frame, "a.b.c"), None);
    }

    #[test]
    fn racegate_names_a_refused_chat_as_message_id_rejected() {
        assert_eq!(
            refused_chat("message u/m1 rejected: queue full"),
            Some("u/m1")
        );
        assert_eq!(refused_chat("message u/m1 was fine"), None);
        assert_eq!(refused_chat("error: message u/m1 rejected"), None);
    }

    #[test]
    fn the_replay_history_keeps_each_users_steps_apart_and_marks_what_the_server_recorded() {
        let ev = |at_ms, user: &str, kind| TraceEvent {
            at_ms,
            user: user.into(),
            kind,
        };
        let trace = vec![
            ev(0, "a", EventKind::ClientConnect),
            ev(0, "b", EventKind::ClientConnect),
            ev(
                1,
                "a",
                EventKind::State {
                    state: ConnectionState::Connecting,
                },
            ),
            ev(2, "b", EventKind::ClientClosed { code: 1006 }),
            ev(3, "a", EventKind::ClientClosed { code: 1011 }),
            ev(
                4,
                "a",
                EventKind::State {
                    state: ConnectionState::Failed,
                },
            ),
            ev(5, "a", EventKind::ClientClose),
            ev(6, "b", EventKind::ClientDrop),
        ];
        let h = History::from_trace(&trace, &|u| u == "a");
        let acts = |u: &str| -> Vec<(u64, Act<'_>)> {
            h.conns[u]
                .iter()
                .map(|o| (o.at_ms, o.act.clone()))
                .collect()
        };
        assert_eq!(
            acts("a"),
            [
                (0, Act::Connect),
                (1, Act::Served),
                (
                    3,
                    Act::ServerClose {
                        code: 1011,
                        reason: owned("")
                    }
                ),
                (4, Act::ServerEnded),
                (5, Act::ClientClose { scheduled: true }),
            ]
        );
        assert_eq!(
            acts("b"),
            [
                (0, Act::Connect),
                (
                    2,
                    Act::Dropped {
                        error: owned("no close frame (1006)")
                    }
                ),
                (6, Act::ClientDrop),
            ]
        );
    }

    #[test]
    fn many_users_each_keep_their_own_history() {
        // More users than the linear search covers: the index takes over and must agree.
        let users: Vec<String> = (0..12).map(|i| format!("u{i}")).collect();
        let mut trace = Vec::new();
        for round in 0..2 {
            for u in &users {
                trace.push(TraceEvent {
                    at_ms: round,
                    user: u.as_str().into(),
                    kind: EventKind::ClientConnect,
                });
            }
        }
        let h = History::from_trace(&trace, &|_| false);
        assert_eq!(h.conns.len(), 12);
        assert!(h.conns.values().all(|ops| ops.len() == 2));
    }
}
