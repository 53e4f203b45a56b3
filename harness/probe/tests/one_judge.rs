//! One judge: the same hand-built client histories, written in each driver's own record format,
//! get the same verdict, the same invariants and the same indeterminate chats from every
//! driver's path: the replay's trace through `runner::judge` (what virtual time and
//! `run --transport ws` use), the probe's records (text frames in racegate's default wire
//! protocol) through `check::judge`, and load's client logs through its counters
//! (`load::tally`). A history a driver cannot record (load never closes early, the replay's
//! clients never see a drop) is skipped for that driver, and says so.

use std::path::Path;

use racegate_net::load::{self, ClientLog, LoadEnd, Target};
use racegate_probe::{Record, Seen, check};
use racegate_replay::runner::{self, chat_id};
use racegate_replay::scenario::{self, Scenario};
use racegate_replay::trace::{AgentEvent, EventKind, Frame, TraceEvent};
use racegate_replay::{ConnectionState, EndpointKind, Invariant, Verdict};
use serde_json::json;

/// One step of a client's history, in no driver's format.
#[derive(Debug, Clone, Copy)]
enum Step {
    Connect,
    Open,
    /// The connection neither opened nor was refused: the client gave up waiting.
    NeverOpened,
    /// The client sends its `n`th chat.
    Send(usize),
    /// An ack for the client's `n`th chat, naming the client.
    Ack(usize),
    /// An ack for the client's `n`th chat that names another user.
    AckNaming(usize, &'static str),
    /// An ack, naming the client, for another user's `n`th chat.
    AckOf(&'static str, usize),
    /// Event `k` (0-based) of the run of the client's `n`th chat.
    Event(usize, usize),
    /// All five events of the `n`th chat's run, in order.
    Run(usize),
    /// An error frame refusing the `n`th chat, in racegate's words.
    Refuse(usize),
    /// An error frame with Starlette's text.
    StarletteError,
    /// The server closes with this code.
    ServerClose(u16),
    /// The connection ends without a close frame.
    Drop,
    /// The client closes (on schedule when the case's user has a `close_ms`).
    ClientClose,
}

use Step::*;

struct Case {
    name: &'static str,
    /// Users: id, whether the scenario schedules its own close, its steps.
    users: Vec<(&'static str, bool, Vec<Step>)>,
    /// The invariants violated (sorted) and the indeterminate chat ids.
    violated: Vec<Invariant>,
    indeterminate: Vec<&'static str>,
}

fn case(
    name: &'static str,
    steps: Vec<Step>,
    violated: Vec<Invariant>,
    indeterminate: Vec<&'static str>,
) -> Case {
    Case {
        name,
        users: vec![("a", false, steps)],
        violated,
        indeterminate,
    }
}

fn cases() -> Vec<Case> {
    use Invariant::*;
    vec![
        case(
            "answered chats pass",
            vec![Connect, Open, Send(1), Ack(1), Run(1), ClientClose],
            vec![],
            vec![],
        ),
        case(
            "a chat never answered is lost",
            vec![Connect, Open, Send(1), Send(2), Ack(1), Run(1), ClientClose],
            vec![MessageLost],
            vec![],
        ),
        case(
            "an ack twice is out of order",
            vec![Connect, Open, Send(1), Ack(1), Ack(1), Run(1), ClientClose],
            vec![OutOfOrder],
            vec![],
        ),
        case(
            "acks in the wrong order are out of order",
            vec![
                Connect,
                Open,
                Send(1),
                Send(2),
                Ack(2),
                Run(2),
                Ack(1),
                Run(1),
                ClientClose,
            ],
            vec![OutOfOrder],
            vec![],
        ),
        case(
            "swapped events break event order",
            vec![
                Connect,
                Open,
                Send(1),
                Ack(1),
                Event(1, 0),
                Event(1, 2),
                Event(1, 1),
                Event(1, 3),
                Event(1, 4),
                ClientClose,
            ],
            vec![EventOrder],
            vec![],
        ),
        case(
            "a frame naming another user is cross-user",
            vec![
                Connect,
                Open,
                Send(1),
                AckNaming(1, "b"),
                Run(1),
                ClientClose,
            ],
            vec![CrossUser],
            vec![],
        ),
        case(
            "a chat cut off by a 1011 close is indeterminate, not lost",
            vec![
                Connect,
                Open,
                Send(1),
                Send(2),
                Ack(1),
                Run(1),
                ServerClose(1011),
            ],
            vec![],
            vec!["a/m2"],
        ),
        case(
            "a run cut short by a 1011 close is indeterminate",
            vec![
                Connect,
                Open,
                Send(1),
                Ack(1),
                Event(1, 0),
                Event(1, 1),
                ServerClose(1011),
            ],
            vec![],
            vec!["a/m1"],
        ),
        case(
            "a normal close owing an answer loses the chat",
            vec![Connect, Open, Send(1), ServerClose(1000)],
            vec![MessageLost],
            vec![],
        ),
        case(
            "a close with an unexpected code is abnormal and leaves the chat indeterminate",
            vec![Connect, Open, Send(1), ServerClose(4000)],
            vec![AbnormalClose],
            vec!["a/m1"],
        ),
        case(
            "a dropped connection is abnormal and leaves the chat indeterminate",
            vec![Connect, Open, Send(1), Drop],
            vec![AbnormalClose],
            vec!["a/m1"],
        ),
        case(
            "a chat refused by an error frame naming it is not lost",
            vec![Connect, Open, Send(1), Refuse(1), ClientClose],
            vec![],
            vec![],
        ),
        case(
            "starlette's error text is accept-first",
            vec![
                Connect,
                Open,
                StarletteError,
                Send(1),
                Ack(1),
                Run(1),
                ClientClose,
            ],
            vec![AcceptFirst],
            vec![],
        ),
        case(
            "a connection that never opens loses its chats and is stuck",
            vec![Connect, NeverOpened],
            vec![MessageLost, Stuck],
            vec![],
        ),
        Case {
            name: "the client's own early close leaves its chat indeterminate",
            users: vec![("a", true, vec![Connect, Open, Send(1), ClientClose])],
            violated: vec![],
            indeterminate: vec!["a/m1"],
        },
        Case {
            name: "an ack for another user's chat is cross-user, and that chat is lost",
            users: vec![
                (
                    "a",
                    false,
                    vec![
                        Connect,
                        Open,
                        Send(1),
                        Ack(1),
                        AckOf("b", 1),
                        Run(1),
                        ClientClose,
                    ],
                ),
                ("b", false, vec![Connect, Open, Send(1), ClientClose]),
            ],
            violated: vec![MessageLost, CrossUser],
            indeterminate: vec![],
        },
    ]
}

/// The scenario the histories belong to: each user with two chats planned, and a `close_ms`
/// where the case schedules its close.
fn scenario_of(c: &Case) -> Scenario {
    let mut text = format!("name = {:?}\n", c.name);
    for (user, early, _) in &c.users {
        text.push_str(&format!("[[user]]\nid = \"{user}\"\n"));
        if *early {
            text.push_str("close_ms = 50\n");
        }
        text.push_str("send = [{ at_ms = 0, text = \"x\" }, { at_ms = 1, text = \"y\" }]\n");
    }
    scenario::parse(&text, Path::new("one-judge.toml")).unwrap()
}

fn text_of(user: &str, step: Step) -> Option<String> {
    let frame = match step {
        Ack(n) => json!({"type": "ack", "id": chat_id(user, n), "user": user}),
        AckNaming(n, other) => json!({"type": "ack", "id": chat_id(user, n), "user": other}),
        AckOf(other, n) => json!({"type": "ack", "id": chat_id(other, n), "user": user}),
        Event(n, k) => {
            json!({"type": AgentEvent::RUN[k].name(), "run": chat_id(user, n), "user": user})
        }
        Refuse(n) => {
            json!({"type": "error", "message": format!("message {} rejected: queue full", chat_id(user, n))})
        }
        StarletteError => json!({"type": "error", "message":
            "WebSocket is not connected. Need to call \"accept\" first."}),
        _ => return None,
    };
    Some(frame.to_string())
}

/// Expands `Run(n)` into its five events.
fn expand(steps: &[Step]) -> Vec<Step> {
    steps
        .iter()
        .flat_map(|s| match *s {
            Run(n) => (0..5).map(|k| Event(n, k)).collect(),
            other => vec![other],
        })
        .collect()
}

/// The replay's record of the case, or `None` where its clients cannot see it happen.
fn trace_of(c: &Case) -> Option<Vec<TraceEvent>> {
    let mut trace = Vec::new();
    for (user, _, steps) in &c.users {
        let mut push = |kind| {
            trace.push(TraceEvent {
                at_ms: trace.len() as u64,
                user: (*user).into(),
                kind,
            })
        };
        for step in expand(steps) {
            let recv = |frame| EventKind::ClientRecv { frame };
            let kind = match step {
                Connect => EventKind::ClientConnect,
                Open => EventKind::ClientOpen,
                NeverOpened => {
                    push(EventKind::ClientGaveUp);
                    for n in 1..=2 {
                        push(EventKind::ClientUnsent {
                            id: chat_id(user, n),
                            reason: "the connection never opened".into(),
                        });
                    }
                    continue;
                }
                Send(n) => EventKind::ClientSend {
                    id: chat_id(user, n),
                },
                Ack(n) => recv(Frame::Ack {
                    id: chat_id(user, n),
                    user: user.to_string(),
                }),
                AckNaming(n, other) => recv(Frame::Ack {
                    id: chat_id(user, n),
                    user: other.to_string(),
                }),
                AckOf(other, n) => recv(Frame::Ack {
                    id: chat_id(other, n),
                    user: user.to_string(),
                }),
                Event(n, k) => recv(Frame::Event {
                    kind: AgentEvent::RUN[k],
                    run: chat_id(user, n),
                    user: user.to_string(),
                }),
                Refuse(n) => recv(Frame::Error {
                    message: format!("message {} rejected: queue full", chat_id(user, n)),
                }),
                StarletteError => recv(Frame::Error {
                    message: "WebSocket is not connected. Need to call \"accept\" first.".into(),
                }),
                ServerClose(code) => EventKind::ClientClosed { code },
                // The replay's clients see a vanished connection as nothing at all.
                Drop => return None,
                ClientClose => EventKind::ClientClose,
                Run(_) => unreachable!("expanded"),
            };
            push(kind);
        }
    }
    Some(trace)
}

/// The probe's records of the case: frames as text in racegate's default wire protocol.
fn records_of(c: &Case) -> Vec<Record> {
    let mut records = Vec::new();
    for (user, _, steps) in &c.users {
        let mut push = |seen| {
            records.push(Record {
                at_ms: records.len() as f64,
                user: user.to_string(),
                seen,
            })
        };
        for step in expand(steps) {
            let seen = match step {
                Connect => Seen::Connect,
                Open => Seen::Open,
                NeverOpened => {
                    push(Seen::Timeout {
                        waiting_for: "the WebSocket handshake (101) to complete".into(),
                    });
                    for n in 1..=2 {
                        push(Seen::Unsent {
                            id: chat_id(user, n),
                            reason: "the connection never opened".into(),
                        });
                    }
                    continue;
                }
                Send(n) => Seen::Send {
                    id: chat_id(user, n),
                },
                ServerClose(code) => Seen::ServerClose {
                    code,
                    reason: String::new(),
                },
                Drop => Seen::Dropped {
                    error: "Connection reset without closing handshake".into(),
                },
                ClientClose => Seen::ClientClose,
                frame => Seen::Recv {
                    text: text_of(user, frame).unwrap(),
                },
            };
            push(seen);
        }
    }
    records
}

/// Load's client logs of the case, or `None` where a load client cannot do it (it sends every
/// chat at once, and never closes early).
fn logs_of(c: &Case) -> Option<Vec<ClientLog>> {
    let mut logs = Vec::new();
    for (user, early, steps) in &c.users {
        if *early {
            return None;
        }
        let mut log = ClientLog {
            user: user.to_string(),
            ids: (1..=2).map(|n| chat_id(user, n)).collect(),
            ..ClientLog::default()
        };
        let mut sent = Vec::new();
        for step in expand(steps) {
            match step {
                Connect | NeverOpened => {}
                Open => log.opened = true,
                Send(n) => sent.push(n),
                ServerClose(code) => log.end = LoadEnd::ServerClosed(code),
                Drop => log.end = LoadEnd::Dropped,
                ClientClose => log.end = LoadEnd::ClientClosed,
                frame => log.hear_endpoint(&text_of(user, frame).unwrap()),
            }
        }
        // Load sends its chats first, in order: a history sending a prefix of them is one.
        if sent != (1..=sent.len()).collect::<Vec<_>>() {
            return None;
        }
        log.sent = sent.len();
        if log.opened {
            // A load client plans only the chats it sends.
            log.ids.truncate(log.sent);
        }
        logs.push(log);
    }
    Some(logs)
}

fn invariants(violations: &[racegate_replay::Violation]) -> Vec<Invariant> {
    let mut names: Vec<Invariant> = violations.iter().map(|v| v.invariant).collect();
    names.sort();
    names.dedup();
    names
}

fn count(violations: &[racegate_replay::Violation], which: &[Invariant]) -> usize {
    violations
        .iter()
        .filter(|v| which.contains(&v.invariant))
        .count()
}

#[test]
fn every_driver_gives_every_history_the_same_verdict() {
    let mut judged = (0, 0, 0);
    for c in cases() {
        let s = scenario_of(&c);
        let expected_verdict = if c.violated.is_empty() {
            Verdict::Pass
        } else {
            Verdict::Fail
        };

        // The probe's path.
        let probe = check::judge(&s, &records_of(&c));
        let probe_indeterminate: Vec<&str> =
            probe.indeterminate.iter().map(|i| i.id.as_str()).collect();
        assert_eq!(
            invariants(&probe.violations),
            c.violated,
            "probe: {}\n{:#?}",
            c.name,
            probe.violations
        );
        assert_eq!(probe_indeterminate, c.indeterminate, "probe: {}", c.name);
        judged.0 += 1;

        // The replay's path (virtual time and `run --transport ws` both judge this way).
        if let Some(trace) = trace_of(&c) {
            let run = runner::judge(&s, EndpointKind::StateMachine, trace, 0);
            let ids: Vec<&str> = run.indeterminate.iter().map(|i| i.id.as_str()).collect();
            assert_eq!(run.verdict, expected_verdict, "replay: {}", c.name);
            assert_eq!(
                invariants(&run.violations),
                c.violated,
                "replay: {}\n{:#?}",
                c.name,
                run.violations
            );
            assert_eq!(ids, c.indeterminate, "replay: {}", c.name);
            let at = |v: &[racegate_replay::Violation]| -> Vec<(Invariant, String, u64)> {
                v.iter()
                    .map(|v| (v.invariant, v.user.clone(), v.at_ms))
                    .collect()
            };
            assert_eq!(
                at(&run.violations),
                at(&probe.violations),
                "replay and probe name the same violations at the same steps: {}",
                c.name
            );
            judged.1 += 1;
        }

        // Load's counters: the same rules, counted.
        if let Some(logs) = logs_of(&c) {
            let t = load::tally(&logs, Target::Endpoint);
            let v = &probe.violations;
            assert_eq!(
                t.lost,
                count(v, &[Invariant::MessageLost]),
                "load lost: {}",
                c.name
            );
            assert_eq!(
                t.duplicated + t.out_of_order,
                count(v, &[Invariant::OutOfOrder, Invariant::EventOrder]),
                "load order: {}",
                c.name
            );
            assert_eq!(
                t.cross_user,
                count(v, &[Invariant::CrossUser]),
                "load cross: {}",
                c.name
            );
            assert_eq!(
                t.indeterminate,
                c.indeterminate.len(),
                "load indeterminate: {}",
                c.name
            );
            judged.2 += 1;
        }
    }
    // Every history went through the probe; the replay and load skip only what they cannot
    // record (a drop; an early close).
    assert_eq!(
        judged,
        (16, 15, 15),
        "histories judged by probe, replay, load"
    );
}

#[test]
fn load_counts_a_duplicate_ack_as_duplicated_and_a_reorder_as_out_of_order() {
    let by_name = |name: &str| cases().into_iter().find(|c| c.name == name).unwrap();
    let dup = logs_of(&by_name("an ack twice is out of order")).unwrap();
    let t = load::tally(&dup, Target::Endpoint);
    assert_eq!((t.duplicated, t.out_of_order), (1, 0));
    let reordered = logs_of(&by_name("acks in the wrong order are out of order")).unwrap();
    let t = load::tally(&reordered, Target::Endpoint);
    assert_eq!((t.duplicated, t.out_of_order), (0, 1));
    assert_eq!(t.answered, 2);
}

#[test]
fn the_replays_server_trace_decides_what_the_client_alone_cannot() {
    // The client's view: a chat sent, then a 1011 close. Alone, indeterminate; with the
    // server's trace saying it never read the chat, refused by the close; saying it read and
    // dropped it, lost.
    let c = case(
        "cut off",
        vec![Connect, Open, Send(1), ServerClose(1011)],
        vec![],
        vec!["a/m1"],
    );
    let s = scenario_of(&c);
    let client = trace_of(&c).unwrap();
    let alone = runner::judge(&s, EndpointKind::StateMachine, client.clone(), 0);
    assert_eq!(alone.indeterminate.len(), 1);
    assert_eq!(alone.verdict, Verdict::Pass);

    let server = |kind| TraceEvent {
        at_ms: 1,
        user: "a".into(),
        kind,
    };
    let mut never_read = client.clone();
    never_read.insert(
        1,
        server(EventKind::State {
            state: ConnectionState::Accepted,
        }),
    );
    never_read.push(server(EventKind::Terminal {
        state: ConnectionState::Failed,
    }));
    let run = runner::judge(&s, EndpointKind::StateMachine, never_read.clone(), 0);
    assert!(run.indeterminate.is_empty(), "{:?}", run.indeterminate);
    assert_eq!(run.verdict, Verdict::Pass, "{:#?}", run.violations);

    let mut dropped = never_read;
    dropped.insert(
        3,
        server(EventKind::Dropped {
            id: "a/m1".into(),
            reason: "no handler registered for message type 'chat'".into(),
        }),
    );
    let run = runner::judge(&s, EndpointKind::StateMachine, dropped, 0);
    assert_eq!(invariants(&run.violations), [Invariant::MessageLost]);
}
