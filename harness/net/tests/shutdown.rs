//! Graceful shutdown: in-flight messages are delivered within the grace period, or the client
//! sees the connection closed with 1001, never silence.

mod support;

use std::time::Duration;

use racegate_replay::EndpointKind;
use racegate_replay::trace::Frame;
use support::{Seen, TestServer, connect, next, panics, send_chat, test_options};

/// Reads until the close; returns the acks seen and the close code.
async fn acks_then_close(ws: &mut support::Ws) -> (Vec<String>, Option<u16>) {
    let mut acks = Vec::new();
    loop {
        match next(ws).await {
            Seen::Frame(Frame::Ack { id, .. }) => acks.push(id),
            Seen::Frame(_) | Seen::Text(_) => {}
            Seen::Close(code) => return (acks, code),
            Seen::End => return (acks, None),
        }
    }
}

#[tokio::test]
async fn shutdown_delivers_what_setup_was_holding_then_closes_with_1001() {
    let mut opts = test_options(EndpointKind::StateMachine);
    opts.server.auth_ms = 150;
    opts.grace = Duration::from_millis(1000);
    let server = TestServer::start(opts).await;
    let addr = server.addr;
    let mut ws = connect(&server.url("leaving")).await;
    for n in 1..=3 {
        send_chat(&mut ws, &format!("leaving/m{n}"), "held").await;
    }
    // real-time: let the server read the chats (held by setup) before the signal.
    tokio::time::sleep(Duration::from_millis(50)).await; // real-time: see above
    let stopping = tokio::spawn(server.stop());
    let (acks, code) = acks_then_close(&mut ws).await;
    assert_eq!(acks, ["leaving/m1", "leaving/m2", "leaving/m3"]);
    assert_eq!(code, Some(1001));
    let report = tokio::time::timeout(support::WAIT, stopping)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(report.open_at_signal, 1);
    assert_eq!(report.open_at_exit, 0);
    // Nothing listens any more.
    assert!(tokio::net::TcpStream::connect(addr).await.is_err());
    assert_eq!(panics(), 0);
}

#[tokio::test]
async fn a_grace_shorter_than_setup_rejects_visibly_with_1001() {
    let mut opts = test_options(EndpointKind::StateMachine);
    opts.server.auth_ms = 2000;
    opts.grace = Duration::from_millis(50);
    let server = TestServer::start(opts).await;
    let mut ws = connect(&server.url("cut-short")).await;
    send_chat(&mut ws, "cut-short/m1", "never answered").await;
    tokio::time::sleep(Duration::from_millis(50)).await; // real-time: let the server read it
    let stopping = tokio::spawn(server.stop());
    let (acks, code) = acks_then_close(&mut ws).await;
    assert!(acks.is_empty(), "{acks:?}");
    assert_eq!(code, Some(1001), "the client is told, by the close code");
    let report = tokio::time::timeout(support::WAIT, stopping)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(report.open_at_exit, 0);
    assert_eq!(panics(), 0);
}
