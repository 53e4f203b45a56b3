//! The probe against small scripted tokio-tungstenite servers on loopback: one behaviour per
//! invariant, a server that accepts and then says nothing, a port nobody listens on. Every
//! server binds port 0 and every wait is bounded by the probe's own timeout.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use racegate_probe::{Options, ProbeError, ProbeOutcome, ProbeVerdict, Target, probe_scenario};
use racegate_replay::Invariant;
use racegate_replay::scenario::{self, Scenario};
use serde_json::{Value, json};
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::handshake::server::{Request, Response};
use tokio_tungstenite::tungstenite::protocol::CloseFrame;

const EVENTS: [&str; 5] = [
    "agent_started",
    "agent_thinking",
    "tool_executing",
    "tool_completed",
    "agent_completed",
];

/// What a scripted server does.
#[derive(Clone, Copy, PartialEq)]
enum Behaviour {
    /// racegate's wire protocol, done right.
    Good,
    /// Completes the handshake, then never reads or writes.
    Silent,
    /// Acknowledges every chat twice.
    DuplicateAck,
    /// Names another user in its frames.
    WrongUser,
    /// Sends a run's second and third events swapped.
    SwappedEvents,
    /// Sends Starlette's error text first, then behaves.
    StarletteError,
    /// Closes with 4000 at the first chat, without an ack.
    Close4000,
    /// Drops the TCP connection at the first chat.
    Drop,
    /// Closes every connection with 1008 right after the handshake, before any chat (what a
    /// server does with credentials it does not accept).
    Refuse1008,
    /// racegate's wire protocol, done right, but each answer takes 2.5 s (a slow setup).
    Slow,
}

/// The user id the upgrade carried: `?token=` or the `x-user` header.
fn user_of(req: &Request) -> String {
    if let Some(h) = req.headers().get("x-user") {
        return h.to_str().unwrap_or_default().to_string();
    }
    req.uri()
        .query()
        .and_then(|q| q.split('&').find_map(|kv| kv.strip_prefix("token=")))
        .unwrap_or_default()
        .to_string()
}

async fn serve(behaviour: Behaviour) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(connection(stream, behaviour));
        }
    });
    addr
}

// The handshake callback's `Result<Response, ErrorResponse>` is tungstenite's signature.
#[allow(clippy::result_large_err)]
async fn connection(stream: TcpStream, behaviour: Behaviour) {
    let user = Arc::new(Mutex::new(String::new()));
    let seen = user.clone();
    let callback = move |req: &Request, resp: Response| {
        *seen.lock().unwrap() = user_of(req);
        Ok(resp)
    };
    let Ok(mut ws) = tokio_tungstenite::accept_hdr_async(stream, callback).await else {
        return;
    };
    let user = user.lock().unwrap().clone();
    match behaviour {
        Behaviour::Silent => {
            // Hold the connection open, unread, until the client gives up.
            tokio::time::sleep(Duration::from_secs(30)).await; // real-time: the probe times out first
            return;
        }
        Behaviour::Refuse1008 => {
            let frame = CloseFrame {
                code: 1008.into(),
                reason: "bad token".into(),
            };
            let _ = ws.close(Some(frame)).await;
            while let Some(Ok(_)) = ws.next().await {}
            return;
        }
        Behaviour::Slow => {
            // The slowness is the point: the probe must wait it out.
            tokio::time::sleep(Duration::from_millis(2500)).await; // real-time: a slow server
        }
        Behaviour::StarletteError => {
            let error = json!({"type": "error", "message":
                "WebSocket is not connected. Need to call \"accept\" first."});
            let _ = ws.send(Message::text(error.to_string())).await;
        }
        _ => {}
    }
    while let Some(Ok(msg)) = ws.next().await {
        let Message::Text(text) = msg else { continue };
        let chat: Value = serde_json::from_str(text.as_str()).unwrap();
        let id = chat["id"].as_str().unwrap().to_string();
        match behaviour {
            Behaviour::Close4000 => {
                let frame = CloseFrame {
                    code: 4000.into(),
                    reason: "go away".into(),
                };
                let _ = ws.close(Some(frame)).await;
                continue;
            }
            Behaviour::Drop => return,
            _ => {}
        }
        if send_run(&mut ws, behaviour, &id, &user).await.is_err() {
            return;
        }
    }
}

async fn send_run(
    ws: &mut WebSocketStream<TcpStream>,
    behaviour: Behaviour,
    id: &str,
    user: &str,
) -> Result<(), tokio_tungstenite::tungstenite::Error> {
    let user = if behaviour == Behaviour::WrongUser {
        "someone-else"
    } else {
        user
    };
    let ack = json!({"type": "ack", "id": id, "user": user}).to_string();
    ws.send(Message::text(ack.clone())).await?;
    if behaviour == Behaviour::DuplicateAck {
        ws.send(Message::text(ack)).await?;
    }
    let mut events = EVENTS;
    if behaviour == Behaviour::SwappedEvents {
        events.swap(1, 2);
    }
    for e in events {
        let frame = json!({"type": e, "run": id, "user": user});
        ws.send(Message::text(frame.to_string())).await?;
    }
    Ok(())
}

/// Two users, two chats each; a short settle time keeps each probe well under a second.
fn two_users(protocol: &str) -> Scenario {
    let text = format!(
        "name = \"two-users\"\nsettle_ms = 100\n{protocol}\n\
         [[user]]\nid = \"u1\"\nsend = [{{ at_ms = 0, text = \"hi\" }}, {{ at_ms = 5, text = \"again\" }}]\n\
         [[user]]\nid = \"u2\"\nconnect_ms = 10\nsend = [{{ at_ms = 0, text = \"yo\" }}]\n"
    );
    scenario::parse(&text, Path::new("two-users.toml")).unwrap()
}

async fn probe(addr: SocketAddr, scenario: &Scenario, timeout_ms: u64) -> ProbeOutcome {
    let target = Target::parse(&format!("ws://{addr}/ws")).unwrap();
    let options = Options {
        timeout_ms: Some(timeout_ms),
        ..Options::default()
    };
    probe_scenario(&target, scenario, &options).await.unwrap()
}

fn invariants(o: &ProbeOutcome) -> Vec<Invariant> {
    let mut names: Vec<Invariant> = o.violations.iter().map(|v| v.invariant).collect();
    names.sort();
    names.dedup();
    names
}

#[tokio::test]
async fn a_server_that_keeps_the_protocol_passes() {
    let addr = serve(Behaviour::Good).await;
    let o = probe(addr, &two_users(""), 3000).await;
    assert_eq!(o.verdict, ProbeVerdict::Pass, "{:#?}", o.violations);
    let frames = o
        .records
        .iter()
        .filter(|r| matches!(r.seen, racegate_probe::Seen::Recv { .. }))
        .count();
    assert_eq!(frames, 3 * 6, "an ack and five events per chat");
}

#[tokio::test]
async fn the_probe_takes_the_scenarios_own_time_plus_little() {
    let addr = serve(Behaviour::Good).await;
    let s = two_users("");
    let o = probe(addr, &s, 3000).await;
    // Own time: u2's connect at 10 ms (later than u1's last chat at 5), a 25 ms run, 100 ms
    // settle.
    assert_eq!(o.own_ms, 135);
    // Well under the 3 s timeout: it ends when its answers are in. The margin is for a loaded
    // 2-core machine, where a task can wait hundreds of milliseconds to run.
    let overhead = o.elapsed_ms - o.own_ms as f64;
    assert!(
        (0.0..1500.0).contains(&overhead),
        "took {} ms for {} ms of scenario",
        o.elapsed_ms,
        o.own_ms
    );
}

#[tokio::test]
async fn a_server_that_accepts_and_then_says_nothing_is_stuck_inside_the_timeout() {
    let addr = serve(Behaviour::Silent).await;
    let started = Instant::now();
    let o = probe(addr, &two_users(""), 600).await;
    let took = started.elapsed();
    assert!(
        took < Duration::from_millis(900),
        "the probe must end at its timeout, took {took:?}"
    );
    assert_eq!(
        invariants(&o),
        [Invariant::MessageLost, Invariant::Stuck],
        "{:#?}",
        o.violations
    );
    let stuck = o
        .violations
        .iter()
        .find(|v| v.invariant == Invariant::Stuck)
        .unwrap();
    assert!(
        stuck.detail.contains("answer the client's close"),
        "{}",
        stuck.detail
    );
}

#[tokio::test]
async fn a_closed_port_is_unreachable_not_a_violation() {
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let target = Target::parse(&format!("ws://127.0.0.1:{port}/")).unwrap();
    let err = probe_scenario(&target, &two_users(""), &Options::default())
        .await
        .unwrap_err();
    assert!(matches!(err, ProbeError::Unreachable { .. }), "{err:?}");
    assert!(err.to_string().contains("cannot reach 127.0.0.1:"), "{err}");
}

#[tokio::test]
async fn each_misbehaviour_is_named_by_its_invariant() {
    let cases = [
        // One definition of a duplicate for every driver: an ack twice is out of order.
        (Behaviour::DuplicateAck, vec![Invariant::OutOfOrder]),
        (Behaviour::WrongUser, vec![Invariant::CrossUser]),
        (Behaviour::SwappedEvents, vec![Invariant::EventOrder]),
        (Behaviour::StarletteError, vec![Invariant::AcceptFirst]),
        // The close cuts the chat off: indeterminate, not lost; but 4000 is not expected.
        (Behaviour::Close4000, vec![Invariant::AbnormalClose]),
        (Behaviour::Drop, vec![Invariant::AbnormalClose]),
    ];
    for (behaviour, expected) in cases {
        let addr = serve(behaviour).await;
        let o = probe(addr, &two_users(""), 3000).await;
        assert_eq!(invariants(&o), expected, "{:#?}", o.violations);
        // A chat whose answer the close or drop cut off is indeterminate: reported, not lost.
        let cut_off = matches!(behaviour, Behaviour::Close4000 | Behaviour::Drop);
        assert_eq!(
            !o.indeterminate.is_empty(),
            cut_off,
            "{:#?}",
            o.indeterminate
        );
    }
}

#[tokio::test]
async fn a_protocol_table_describes_another_servers_wire_format() {
    // The user id in a header; 4000 is this server's normal "go away".
    let s = two_users("[protocol]\nuser_header = \"X-User\"\nclose_codes = [1000, 4000]");
    let addr = serve(Behaviour::Good).await;
    let o = probe(addr, &s, 3000).await;
    assert_eq!(o.verdict, ProbeVerdict::Pass, "{:#?}", o.violations);
    let addr = serve(Behaviour::Close4000).await;
    let o = probe(addr, &s, 3000).await;
    // 4000 is expected, so nothing is violated; but no chat was ever answered, so nothing was
    // proven either.
    assert!(o.violations.is_empty(), "{:#?}", o.violations);
    assert_eq!(o.verdict, ProbeVerdict::Inconclusive);
    // Error patterns are the scenario's to choose.
    let s = two_users("[protocol]\nerror_patterns = [\"something else\"]");
    let addr = serve(Behaviour::StarletteError).await;
    assert_eq!(probe(addr, &s, 3000).await.verdict, ProbeVerdict::Pass);
}

#[tokio::test]
async fn a_server_that_refuses_everyone_before_the_first_chat_is_inconclusive() {
    let addr = serve(Behaviour::Refuse1008).await;
    let o = probe(addr, &two_users(""), 3000).await;
    assert_eq!(o.verdict, ProbeVerdict::Inconclusive, "{o:#?}");
    let why = o.inconclusive.as_deref().unwrap();
    assert!(why.contains("before its first chat"), "{why}");
    assert!(why.contains("close 1008 ×2"), "{why}");
    assert!(why.contains("[protocol] credentials"), "{why}");
}

#[tokio::test]
async fn a_correct_server_slower_than_the_scenarios_model_passes() {
    // The scenario models a 0.5 s setup; the server takes 2.5 s before it answers anything.
    let s = scenario::parse(
        "name = \"slow\"\nsettle_ms = 100\n[server]\nauth_ms = 500\n\
         [[user]]\nid = \"u1\"\nsend = [{ at_ms = 0, text = \"hi\" }]\n",
        Path::new("slow.toml"),
    )
    .unwrap();
    let addr = serve(Behaviour::Slow).await;
    let o = probe(addr, &s, 8000).await;
    assert_eq!(o.verdict, ProbeVerdict::Pass, "{o:#?}");
    assert!(o.elapsed_ms >= 2500.0, "{}", o.elapsed_ms);
    assert!(
        o.elapsed_ms < 8000.0,
        "it waited for answers, not for the timeout: {}",
        o.elapsed_ms
    );
}
