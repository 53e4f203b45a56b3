//! The conformance cases: plain data, one table driving all four arms.
//!
//! A case is an app script (what the server-side code does with its WebSocket, step by step) and
//! a client script (what the peer does over the wire). `docs/conformance.md` lists them.
//!
//! Real-time margins. The real arms run in wall time on a 2-core machine that other builds
//! share, so whenever one side must act before the other, the gap is [`LEAD_MS`] for the side
//! that goes first and [`MARGIN_MS`] for the one that waits: loopback delivery is well under a
//! millisecond, and the worst scheduling stalls seen on this machine under a parallel `cargo
//! build` are tens of milliseconds, so a 400 ms wait leaves a 350 ms margin, several times the
//! worst stall. The fake arm runs the same numbers on a paused clock and the app arm on the
//! driver's virtual clock, where they cost nothing.
//!
//! Margins only cover scheduling. Where the real stack leaves an order open whatever the
//! timing (how a client's writes fall into the server's reads), the case is written so that
//! nothing depends on it, and says so.

/// How long the side that acts first waits before it acts (lets the connection start).
pub const LEAD_MS: u64 = 50;
/// How long the side that acts second waits: LEAD_MS plus a margin for a loaded machine.
pub const MARGIN_MS: u64 = 400;
/// How long an app waits for a shutdown signalled at LEAD_MS to have happened: MARGIN_MS plus
/// uvicorn's reaction time (its main loop looks at the exit flag a signal sets every 100 ms).
pub const SHUTDOWN_MS: u64 = MARGIN_MS + 100;

/// One step of the server-side script. The names are the reference app's (`conformance/app.py`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AppStep {
    /// Await this long (before accept: the pre-accept window, state CONNECTING).
    Sleep(u64),
    /// `websocket.accept()`.
    Accept,
    /// `send_text` of a push frame carrying this text.
    Send(&'static str),
    /// `receive_text`: records the chat's text.
    Receive,
    /// `websocket.close(code)`.
    Close(u16),
    /// An exception escapes the application; the script ends.
    Raise,
    /// Records Starlette's `client_state`.
    ClientState,
    /// Records Starlette's `application_state`.
    AppState,
    /// Records `is_connected_and_ready()`: both states `CONNECTED`.
    Ready,
}

impl AppStep {
    /// The step as the reference app takes it: `[op]` or `[op, arg]` in JSON.
    pub fn json(&self) -> String {
        match self {
            AppStep::Sleep(ms) => format!("[\"sleep\",{ms}]"),
            AppStep::Accept => "[\"accept\"]".into(),
            AppStep::Send(text) => format!("[\"send\",{}]", serde_json::json!(text)),
            AppStep::Receive => "[\"receive\"]".into(),
            AppStep::Close(code) => format!("[\"close\",{code}]"),
            AppStep::Raise => "[\"raise\"]".into(),
            AppStep::ClientState => "[\"client_state\"]".into(),
            AppStep::AppState => "[\"app_state\"]".into(),
            AppStep::Ready => "[\"ready\"]".into(),
        }
    }

    /// The label the reference app records the step under.
    pub fn label(&self) -> String {
        match self {
            AppStep::Sleep(ms) => format!("sleep {ms}"),
            AppStep::Accept => "accept".into(),
            AppStep::Send(text) => format!("send {text}"),
            AppStep::Receive => "receive".into(),
            AppStep::Close(code) => format!("close {code}"),
            AppStep::Raise => "raise".into(),
            AppStep::ClientState => "client_state".into(),
            AppStep::AppState => "app_state".into(),
            AppStep::Ready => "ready".into(),
        }
    }
}

/// One step of the client script.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientOp {
    /// Send the upgrade request and wait for the response (101, or a refusal, or nothing).
    Connect,
    /// Send the upgrade request and go on at once (the response is read in the background).
    Start,
    /// The upgrade request and these chats in the same write; then wait for the response.
    Pipelined(&'static [&'static str]),
    /// A chat frame with this text.
    Send(&'static str),
    /// Chat frames with these texts, in one write: one TCP segment on loopback, which the
    /// server reads at once (separate writes may reach it in one read or in several).
    SendTogether(&'static [&'static str]),
    /// A chat frame whose text is this many bytes.
    SendBig(usize),
    /// A close frame with this code.
    Close(u16),
    /// Close the TCP connection without a close frame (before the 101: leave).
    Drop,
    /// Wait this long.
    Wait(u64),
    /// Open the TCP connection and send nothing (no upgrade request yet); go on at once.
    Open,
    /// Not the client's act: the server is told to shut down now (uvicorn gets SIGTERM, the ws
    /// arm's server its shutdown future, the app arm's driver `Input::Shutdown`). The fake has
    /// no server, so no fake arm runs the case.
    Shutdown,
}

/// One conformance case.
#[derive(Debug, Clone, Copy)]
pub struct Case {
    /// Its name, unique; also the reference app's case id.
    pub name: &'static str,
    /// What it checks.
    pub checks: &'static str,
    /// The server side.
    pub app: &'static [AppStep],
    /// The client side.
    pub client: &'static [ClientOp],
}

impl Case {
    /// True for a server-shutdown case: it has no fake arm (the fake has no server).
    pub fn shuts_down(&self) -> bool {
        self.client.contains(&ClientOp::Shutdown)
    }
}

use AppStep as A;
use ClientOp as C;

macro_rules! client_closes {
    ($name:literal, $code:literal) => {
        Case {
            name: $name,
            checks: concat!(
                "client closes with ",
                $code,
                ": the app receives that code, then receive-after-disconnect and a send to a gone peer"
            ),
            app: &[
                A::Accept,
                A::Receive,
                A::ClientState,
                A::Ready,
                A::Receive,
                A::Send("late"),
            ],
            client: &[C::Connect, C::Close($code)],
        }
    };
}

macro_rules! app_closes {
    ($name:literal, $code:literal) => {
        Case {
            name: $name,
            checks: concat!(
                "app closes with ",
                $code,
                ": the client gets that code; receive, send and close afterwards are state errors"
            ),
            app: &[
                A::Accept,
                A::Close($code),
                A::AppState,
                A::Receive,
                A::Send("late"),
                A::Close($code),
            ],
            client: &[C::Connect],
        }
    };
}

/// Every case, in the order the table prints them.
pub const CASES: &[Case] = &[
    Case {
        name: "send-receive-close",
        checks: "the ordinary path: accept, send, receive a chat, close 1000",
        app: &[A::Accept, A::Send("hello"), A::Receive, A::Close(1000)],
        client: &[C::Connect, C::Send("hi")],
    },
    client_closes!("client-close-1000", 1000),
    client_closes!("client-close-1008", 1008),
    client_closes!("client-close-1011", 1011),
    client_closes!("client-close-1013", 1013),
    client_closes!("client-close-4001", 4001),
    app_closes!("app-close-1000", 1000),
    app_closes!("app-close-1008", 1008),
    app_closes!("app-close-1011", 1011),
    app_closes!("app-close-1013", 1013),
    app_closes!("app-close-4003", 4003),
    Case {
        name: "accept-twice",
        checks: "a second accept is a state error naming websocket.accept",
        app: &[A::Accept, A::Accept, A::AppState, A::Close(1000)],
        client: &[C::Connect],
    },
    Case {
        name: "send-before-accept",
        checks: "a send before accept is a state error; the socket still accepts afterwards",
        app: &[
            A::Send("early"),
            A::AppState,
            A::Accept,
            A::Send("after"),
            A::Close(1000),
        ],
        client: &[C::Connect],
    },
    Case {
        name: "receive-before-accept",
        checks: "receive before accept says accept first",
        app: &[A::Receive, A::Accept, A::Close(1000)],
        client: &[C::Connect],
    },
    Case {
        name: "states-across-accept",
        checks: "client_state and application_state before and after accept, and readiness",
        app: &[
            A::ClientState,
            A::AppState,
            A::Ready,
            A::Accept,
            A::ClientState,
            A::AppState,
            A::Ready,
            A::Close(1000),
        ],
        client: &[C::Connect],
    },
    Case {
        name: "accept-after-pre-accept-wait",
        checks: "time spent before accept keeps CONNECTING; accept itself does not wait",
        app: &[
            A::Sleep(MARGIN_MS),
            A::AppState,
            A::Accept,
            A::AppState,
            A::Send("now"),
            A::Close(1000),
        ],
        client: &[C::Connect],
    },
    Case {
        name: "close-before-accept",
        checks: "close before accept: HTTP 403 with an empty body; later calls are state errors",
        app: &[A::Close(1008), A::AppState, A::Receive, A::Close(1000)],
        client: &[C::Connect],
    },
    Case {
        name: "client-leaves-before-accept",
        checks: "client leaves before accept: accept raises ClientDisconnected, then 1006 disconnects",
        app: &[
            A::Sleep(MARGIN_MS),
            A::Accept,
            A::Receive,
            A::Send("late"),
            A::ClientState,
            A::AppState,
            A::Close(1000),
        ],
        client: &[C::Start, C::Wait(LEAD_MS), C::Drop],
    },
    Case {
        name: "client-leaves-before-accept-readiness",
        checks: "readiness around an accept whose client already left",
        app: &[
            A::Sleep(MARGIN_MS),
            A::Ready,
            A::Accept,
            A::Ready,
            A::AppState,
        ],
        client: &[C::Start, C::Wait(LEAD_MS), C::Drop],
    },
    Case {
        name: "app-closes-after-client-left",
        checks: "a close after the client closed raises WebSocketDisconnect(1006)",
        app: &[
            A::Accept,
            A::Sleep(MARGIN_MS),
            A::Close(1000),
            A::Send("late"),
        ],
        client: &[C::Connect, C::Close(4001)],
    },
    Case {
        name: "ready-until-disconnect-received",
        checks: "client_state stays CONNECTED until the app has received the disconnect",
        app: &[
            A::Accept,
            A::Sleep(MARGIN_MS),
            A::Ready,
            A::ClientState,
            A::Receive,
            A::Ready,
        ],
        client: &[C::Connect, C::Close(1000)],
    },
    Case {
        name: "client-drop-after-accept",
        checks: "a TCP drop without a close frame: the app receives 1005",
        app: &[A::Accept, A::Receive, A::Ready, A::Send("late")],
        client: &[C::Connect, C::Wait(LEAD_MS), C::Drop],
    },
    Case {
        name: "send-after-client-drop",
        checks: "a send after a TCP drop raises WebSocketDisconnect(1006); receive is then a state error",
        app: &[A::Accept, A::Sleep(MARGIN_MS), A::Send("late"), A::Receive],
        client: &[C::Connect, C::Drop],
    },
    Case {
        name: "queued-frames-then-close",
        checks: "chats queued before a client close are all received, in order, then the close",
        app: &[
            A::Accept,
            A::Sleep(MARGIN_MS),
            A::Receive,
            A::Receive,
            A::Receive,
            A::Receive,
        ],
        client: &[C::Connect, C::Send("a"), C::Send("b"), C::Close(1000)],
    },
    Case {
        name: "pipelined-frames-lost",
        checks: "chats sent in the same write as the upgrade request are lost",
        app: &[A::Accept, A::Receive, A::Receive],
        client: &[
            C::Pipelined(&["early"]),
            C::Wait(LEAD_MS),
            C::Send("late"),
            C::Close(1000),
        ],
    },
    Case {
        name: "exception-before-accept",
        checks: "an exception before accept: HTTP 500",
        app: &[A::Raise],
        client: &[C::Connect],
    },
    Case {
        name: "exception-after-accept",
        checks: "an exception after accept: the TCP connection drops without a close frame",
        app: &[A::Accept, A::Send("hello"), A::Raise],
        client: &[C::Connect],
    },
    Case {
        name: "return-without-accept",
        checks: "an app that returns without accepting: HTTP 500",
        app: &[A::Sleep(LEAD_MS)],
        client: &[C::Connect],
    },
    Case {
        name: "return-after-accept",
        checks: "an app that returns after accept without closing: the TCP connection drops",
        app: &[A::Accept, A::Send("bye")],
        client: &[C::Connect],
    },
    Case {
        name: "large-message",
        checks: "a 70 000-byte chat (over racegate's 64 KiB, under uvicorn's 16 MiB)",
        app: &[A::Accept, A::Receive, A::Close(1000)],
        client: &[C::Connect, C::SendBig(70_000)],
    },
    // Server shutdown (uvicorn: `Server.shutdown` calls each connection's `shutdown()`; see
    // docs/conformance.md). The shutdown is signalled at LEAD_MS; the app acts after SHUTDOWN_MS.
    Case {
        name: "shutdown-before-accept",
        checks: "shutdown while the app waits before accept: HTTP 500 at once; accept then raises ClientDisconnected",
        app: &[
            A::Sleep(SHUTDOWN_MS),
            A::Accept,
            A::Receive,
            A::Send("late"),
            A::ClientState,
            A::AppState,
            A::Close(1000),
        ],
        client: &[C::Start, C::Wait(LEAD_MS), C::Shutdown],
    },
    Case {
        name: "shutdown-while-receiving",
        checks: "shutdown while the app waits in receive: it gets disconnect 1012, the client close 1012",
        app: &[
            A::Accept,
            A::Receive,
            A::Receive,
            A::Sleep(LEAD_MS),
            A::Close(1000),
            A::AppState,
            A::Send("late"),
        ],
        client: &[C::Connect, C::Wait(LEAD_MS), C::Shutdown],
    },
    Case {
        name: "shutdown-while-sending",
        checks: "shutdown while the app sends on a timer: the next send raises WebSocketDisconnect(1006); the app never sees 1012",
        app: &[
            A::Accept,
            A::Send("tick 1"),
            A::Sleep(SHUTDOWN_MS),
            A::Send("tick 2"),
            A::Send("tick 3"),
            A::Receive,
            A::AppState,
        ],
        client: &[C::Connect, C::Wait(LEAD_MS), C::Shutdown],
    },
    Case {
        name: "shutdown-with-chats-queued",
        checks: "chats read before a shutdown still reach the app, then disconnect 1012; its replies cannot go out",
        app: &[
            A::Accept,
            A::Sleep(SHUTDOWN_MS),
            A::Receive,
            A::Receive,
            A::Receive,
            A::Send("late"),
        ],
        // The two chats go in one write. uvicorn's websockets-sansio protocol stops reading
        // after a read that queued a message (`pause_reading` until the app receives it), and a
        // shutdown closes the connection with whatever is unread still in the socket: as two
        // writes, `b` reached the app only when both happened to arrive in the same read, which
        // no margin decides (1 run in 5 read only `a`).
        client: &[
            C::Connect,
            C::SendTogether(&["a", "b"]),
            C::Wait(LEAD_MS),
            C::Shutdown,
        ],
    },
    Case {
        name: "shutdown-before-upgrade-request",
        checks: "shutdown while a connection has sent no upgrade request: closed without a response; no app runs",
        app: &[A::Accept],
        client: &[C::Open, C::Wait(LEAD_MS), C::Shutdown],
    },
];
