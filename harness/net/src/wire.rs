//! The wire protocol: JSON text frames, both ways, and how they map to the harness's [`Frame`].
//!
//! The trace keeps its own serde shape (`{"type":"event","kind":...}`) so virtual-time output
//! never changes; this module is the only place that knows what goes over a socket:
//!
//! - client → server: `{"type":"chat","id":"<msg id>","text":"..."}`;
//! - server → client: `{"type":"ack","id","user"}`, the five run events
//!   `{"type":"agent_started"|...,"run","user"}`, `{"type":"push","id","text","user"}` and
//!   `{"type":"error","message"}`; the heartbeat is a WebSocket ping, not a text frame.
//!
//! Parsing is for untrusted input: every way a frame can be wrong is a [`FrameError`] whose text
//! is what the server sends back in its error frame.

use std::borrow::Cow;

use racegate_replay::trace::{AgentEvent, Frame};
use serde::{Deserialize, Serialize};

/// What a client frame asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chat {
    /// The client's id for it, echoed in the ack and the run's events.
    pub id: String,
    /// Its text.
    pub text: String,
}

/// Why a client frame was rejected. The text is the error frame's `message`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// A binary frame: the protocol is JSON text.
    #[error("binary frames are not supported: send JSON text frames")]
    Binary,
    /// Not JSON at all.
    #[error("frame is not valid JSON: {0}")]
    NotJson(String),
    /// JSON, but not an object with a string `type`.
    #[error("frame must be a JSON object with a string \"type\"")]
    NoType,
    /// A `type` this server does not take.
    #[error("unknown frame type {0:?}: expected \"chat\"")]
    UnknownType(String),
    /// A chat without a non-empty string `id`.
    #[error("chat frame needs a non-empty string \"id\"")]
    ChatWithoutId,
    /// A chat without a string `text`.
    #[error("chat frame {0:?} needs a string \"text\"")]
    ChatWithoutText(String),
}

/// Longest piece of client input quoted back in an error message.
const QUOTE_MAX: usize = 64;

fn quote(s: &str) -> String {
    match s.char_indices().nth(QUOTE_MAX) {
        Some((cut, _)) => format!("{}…", &s[..cut]),
        None => s.to_string(),
    }
}

#[derive(Deserialize)]
struct RawClientFrame {
    #[serde(rename = "type", default)]
    kind: Option<serde_json::Value>,
    #[serde(default)]
    id: Option<serde_json::Value>,
    #[serde(default)]
    text: Option<serde_json::Value>,
}

/// Parses one client text frame. Unknown extra fields are ignored.
pub fn parse_client(text: &str) -> Result<Chat, FrameError> {
    if !text.trim_start().starts_with('{') {
        // Serde would take an array as a struct, field by field: only objects are frames.
        return match serde_json::from_str::<serde::de::IgnoredAny>(text) {
            Ok(_) => Err(FrameError::NoType),
            Err(e) => Err(FrameError::NotJson(e.to_string())),
        };
    }
    let raw: RawClientFrame = serde_json::from_str(text).map_err(|e| match e.classify() {
        // Well-formed JSON of the wrong shape (an array, a string, a number).
        serde_json::error::Category::Data => FrameError::NoType,
        serde_json::error::Category::Io
        | serde_json::error::Category::Syntax
        | serde_json::error::Category::Eof => FrameError::NotJson(e.to_string()),
    })?;
    let kind = match raw.kind {
        Some(serde_json::Value::String(kind)) => kind,
        Some(_) | None => return Err(FrameError::NoType),
    };
    if kind != "chat" {
        return Err(FrameError::UnknownType(quote(&kind)));
    }
    let id = match raw.id {
        Some(serde_json::Value::String(id)) if !id.is_empty() => id,
        Some(_) | None => return Err(FrameError::ChatWithoutId),
    };
    let text = match raw.text {
        Some(serde_json::Value::String(text)) => text,
        Some(_) | None => return Err(FrameError::ChatWithoutText(quote(&id))),
    };
    Ok(Chat { id, text })
}

#[derive(Serialize)]
struct ChatOut<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    id: &'a str,
    text: &'a str,
}

/// The client's chat frame.
pub fn chat_text(id: &str, text: &str) -> String {
    to_json(&ChatOut {
        kind: "chat",
        id,
        text,
    })
}

/// A server frame as it goes out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outgoing {
    /// A JSON text frame.
    Text(String),
    /// A WebSocket ping (the heartbeat).
    Ping,
}

#[derive(Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum ServerOut<'a> {
    Ack {
        id: &'a str,
        user: &'a str,
    },
    Push {
        id: &'a str,
        text: &'a str,
        user: &'a str,
    },
    Error {
        message: &'a str,
    },
}

#[derive(Serialize)]
struct EventOut<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    run: &'a str,
    user: &'a str,
}

fn to_json<T: Serialize>(value: &T) -> String {
    // These types hold only strings: serialising them cannot fail.
    serde_json::to_string(value).unwrap_or_default()
}

/// How `frame` goes over the wire.
pub fn encode(frame: &Frame) -> Outgoing {
    match frame {
        Frame::Ack { id, user } => Outgoing::Text(to_json(&ServerOut::Ack { id, user })),
        Frame::Event { kind, run, user } => Outgoing::Text(to_json(&EventOut {
            kind: kind.name(),
            run,
            user,
        })),
        Frame::Push { id, text, user } => {
            Outgoing::Text(to_json(&ServerOut::Push { id, text, user }))
        }
        Frame::Ping => Outgoing::Ping,
        Frame::Error { message } => Outgoing::Text(error_text(message)),
    }
}

/// The error frame for a rejected client frame.
pub fn error_text(message: &str) -> String {
    to_json(&ServerOut::Error { message })
}

/// Why a server frame could not be read (client side: a broken or foreign server).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unexpected server frame: {0}")]
pub struct ServerFrameError(String);

#[derive(Deserialize)]
struct RawServerFrame<'a> {
    #[serde(rename = "type", borrow)]
    kind: Cow<'a, str>,
    #[serde(borrow, default)]
    id: Option<Text<'a>>,
    #[serde(borrow, default)]
    run: Option<Text<'a>>,
    #[serde(borrow, default)]
    user: Option<Text<'a>>,
    #[serde(borrow, default)]
    text: Option<Text<'a>>,
    #[serde(borrow, default)]
    message: Option<Text<'a>>,
}

/// A string field that borrows when it can: serde borrows a `Cow` only as a field of its own,
/// never inside an `Option`.
#[derive(Deserialize)]
struct Text<'a>(#[serde(borrow)] Cow<'a, str>);

/// A server frame read in place: its strings borrow from the text unless JSON escapes forced a
/// copy. The load client reads hundreds of thousands of these; [`decode_server`] owns them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FrameRef<'a> {
    /// `ack`.
    Ack {
        /// The chat id.
        id: Cow<'a, str>,
        /// The user the server believes it served.
        user: Cow<'a, str>,
    },
    /// One of the five run events.
    Event {
        /// Which.
        kind: AgentEvent,
        /// The chat id that started the run.
        run: Cow<'a, str>,
        /// The user the server believes it served.
        user: Cow<'a, str>,
    },
    /// `push`.
    Push {
        /// The push's id.
        id: Cow<'a, str>,
        /// Its text.
        text: Cow<'a, str>,
        /// The user it is for.
        user: Cow<'a, str>,
    },
    /// `error`.
    Error {
        /// Why.
        message: Cow<'a, str>,
    },
}

impl FrameRef<'_> {
    /// The harness's owned [`Frame`].
    pub fn into_owned(self) -> Frame {
        match self {
            FrameRef::Ack { id, user } => Frame::Ack {
                id: id.into_owned(),
                user: user.into_owned(),
            },
            FrameRef::Event { kind, run, user } => Frame::Event {
                kind,
                run: run.into_owned(),
                user: user.into_owned(),
            },
            FrameRef::Push { id, text, user } => Frame::Push {
                id: id.into_owned(),
                text: text.into_owned(),
                user: user.into_owned(),
            },
            FrameRef::Error { message } => Frame::Error {
                message: message.into_owned(),
            },
        }
    }
}

/// Reads a server text frame in place.
pub fn decode_server_ref(text: &str) -> Result<FrameRef<'_>, ServerFrameError> {
    let raw: RawServerFrame<'_> =
        serde_json::from_str(text).map_err(|e| ServerFrameError(e.to_string()))?;
    let kind = raw.kind;
    let missing = |field: &str| ServerFrameError(format!("{kind} frame without {field}"));
    if let Some(event) = AgentEvent::RUN.into_iter().find(|e| e.name() == kind) {
        return Ok(FrameRef::Event {
            kind: event,
            run: raw.run.map(|t| t.0).ok_or_else(|| missing("run"))?,
            user: raw.user.map(|t| t.0).ok_or_else(|| missing("user"))?,
        });
    }
    match &*kind {
        "ack" => Ok(FrameRef::Ack {
            id: raw.id.map(|t| t.0).ok_or_else(|| missing("id"))?,
            user: raw.user.map(|t| t.0).ok_or_else(|| missing("user"))?,
        }),
        "push" => Ok(FrameRef::Push {
            id: raw.id.map(|t| t.0).ok_or_else(|| missing("id"))?,
            text: raw.text.map(|t| t.0).ok_or_else(|| missing("text"))?,
            user: raw.user.map(|t| t.0).ok_or_else(|| missing("user"))?,
        }),
        "error" => Ok(FrameRef::Error {
            message: raw.message.map(|t| t.0).ok_or_else(|| missing("message"))?,
        }),
        other => Err(ServerFrameError(format!("unknown type {:?}", quote(other)))),
    }
}

/// Reads a server text frame back into a [`Frame`] (what the replay and probe clients see).
pub fn decode_server(text: &str) -> Result<Frame, ServerFrameError> {
    decode_server_ref(text).map(FrameRef::into_owned)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_chat_parses_and_extra_fields_are_ignored() {
        let chat = parse_client(r#"{"type":"chat","id":"m1","text":"hi","v":2}"#);
        assert_eq!(
            chat,
            Ok(Chat {
                id: "m1".into(),
                text: "hi".into()
            })
        );
    }

    #[test]
    fn every_malformed_frame_has_its_own_error() {
        assert!(matches!(parse_client("hello"), Err(FrameError::NotJson(_))));
        assert_eq!(parse_client("[1,2]"), Err(FrameError::NoType));
        assert_eq!(
            parse_client(r#"["chat","m1","hi"]"#),
            Err(FrameError::NoType)
        );
        assert_eq!(parse_client(r#""chat""#), Err(FrameError::NoType));
        assert!(matches!(parse_client(""), Err(FrameError::NotJson(_))));
        assert_eq!(parse_client(r#"{"id":"x"}"#), Err(FrameError::NoType));
        assert_eq!(parse_client(r#"{"type":7}"#), Err(FrameError::NoType));
        assert_eq!(
            parse_client(r#"{"type":"subscribe"}"#),
            Err(FrameError::UnknownType("subscribe".into()))
        );
        assert_eq!(
            parse_client(r#"{"type":"chat","text":"x"}"#),
            Err(FrameError::ChatWithoutId)
        );
        assert_eq!(
            parse_client(r#"{"type":"chat","id":"","text":"x"}"#),
            Err(FrameError::ChatWithoutId)
        );
        assert_eq!(
            parse_client(r#"{"type":"chat","id":"m"}"#),
            Err(FrameError::ChatWithoutText("m".into()))
        );
    }

    #[test]
    fn a_long_unknown_type_is_quoted_short() {
        let long = "x".repeat(10_000);
        let err = parse_client(&format!(r#"{{"type":"{long}"}}"#)).unwrap_err();
        assert!(err.to_string().len() < 200, "{err}");
    }

    #[test]
    fn server_frames_use_the_wire_names_and_read_back() {
        let frames = [
            Frame::Ack {
                id: "m1".into(),
                user: "u".into(),
            },
            Frame::Event {
                kind: AgentEvent::ToolExecuting,
                run: "m1".into(),
                user: "u".into(),
            },
            Frame::Push {
                id: "p1".into(),
                text: "t".into(),
                user: "u".into(),
            },
            Frame::Error {
                message: "no".into(),
            },
        ];
        let texts: Vec<String> = frames
            .iter()
            .map(|f| match encode(f) {
                Outgoing::Text(t) => t,
                Outgoing::Ping => String::new(),
            })
            .collect();
        assert_eq!(texts[0], r#"{"type":"ack","id":"m1","user":"u"}"#);
        assert_eq!(
            texts[1],
            r#"{"type":"tool_executing","run":"m1","user":"u"}"#
        );
        assert_eq!(
            texts[2],
            r#"{"type":"push","id":"p1","text":"t","user":"u"}"#
        );
        assert_eq!(texts[3], r#"{"type":"error","message":"no"}"#);
        for (frame, text) in frames.iter().zip(&texts) {
            assert_eq!(&decode_server(text).unwrap(), frame);
        }
        // Escapes force a copy; the frame reads the same.
        let escaped = r#"{"type":"ack","id":"m\"1","user":"\u0075"}"#;
        assert_eq!(
            decode_server(escaped).unwrap(),
            Frame::Ack {
                id: "m\"1".into(),
                user: "u".into()
            }
        );
        assert!(matches!(
            decode_server_ref(r#"{"type":"ack","id":"m1","user":"u"}"#),
            Ok(FrameRef::Ack {
                id: Cow::Borrowed("m1"),
                ..
            })
        ));
        assert_eq!(encode(&Frame::Ping), Outgoing::Ping);
    }
}
