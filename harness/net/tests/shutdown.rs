//! Server shutdown, as uvicorn does it (websockets-sansio `shutdown()`; docs/conformance.md): an
//! accepted connection closes with 1012 at once, an upgrade not yet accepted gets HTTP 500, a
//! connection that has not sent its request is closed without a response. The grace period is
//! racegate's own, off by default: with one, in-flight messages are delivered first, and the
//! close is still 1012.

mod support;

use std::time::{Duration, Instant};

use racegate_replay::EndpointKind;
use racegate_replay::trace::Frame;
use support::{Seen, TestServer, connect, next, panics, raw_upgrade, send_chat, test_options};
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

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
async fn shutdown_closes_an_accepted_connection_with_1012_at_once() {
    let mut opts = test_options(EndpointKind::StateMachine);
    opts.server.auth_ms = 2000;
    let server = TestServer::start(opts).await;
    let addr = server.addr;
    let mut ws = connect(&server.url("restarted")).await;
    send_chat(&mut ws, "restarted/m1", "held by setup").await;
    tokio::time::sleep(Duration::from_millis(50)).await; // real-time: let the server read it
    let signalled = Instant::now();
    let stopping = tokio::spawn(server.stop());
    let (acks, code) = acks_then_close(&mut ws).await;
    assert_eq!(code, Some(1012), "uvicorn's close code for a shutdown");
    assert!(
        acks.is_empty(),
        "nothing is delivered after the close: {acks:?}"
    );
    // At once: well before the 2 s setup could have ended (no grace by default).
    assert!(signalled.elapsed() < Duration::from_millis(1500));
    let report = tokio::time::timeout(support::WAIT, stopping)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(report.open_at_signal, 1);
    assert_eq!(report.open_at_exit, 0);
    // Nothing listens any more.
    assert!(TcpStream::connect(addr).await.is_err());
    assert_eq!(panics(), 0);
}

#[tokio::test]
async fn shutdown_answers_500_to_an_upgrade_the_endpoint_has_not_accepted() {
    let mut opts = test_options(EndpointKind::StateMachine);
    // The endpoint's time before it calls accept(): the upgrade waits, CONNECTING.
    opts.server.accept_ms = 2000;
    let server = TestServer::start(opts).await;
    let addr = server.addr;
    let upgrading = tokio::spawn(async move { raw_upgrade(addr, "/ws?token=early").await });
    tokio::time::sleep(Duration::from_millis(50)).await; // real-time: let the server read it
    let stopping = tokio::spawn(server.stop());
    let (_, head) = tokio::time::timeout(support::WAIT, upgrading)
        .await
        .unwrap()
        .unwrap();
    assert!(head.starts_with("HTTP/1.1 500 "), "{head}");
    let report = tokio::time::timeout(support::WAIT, stopping)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(report.open_at_exit, 0);
    assert_eq!(panics(), 0);
}

#[tokio::test]
async fn shutdown_closes_a_connection_that_has_not_sent_its_request_without_a_response() {
    let server = TestServer::start(test_options(EndpointKind::StateMachine)).await;
    let mut stream = TcpStream::connect(server.addr).await.unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await; // real-time: let the server accept it
    let stopping = tokio::spawn(server.stop());
    let mut got = Vec::new();
    let read = tokio::time::timeout(support::WAIT, stream.read_to_end(&mut got)).await;
    assert!(matches!(read, Ok(Ok(0))), "{read:?}");
    assert!(
        got.is_empty(),
        "no response: {}",
        String::from_utf8_lossy(&got)
    );
    tokio::time::timeout(support::WAIT, stopping)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(panics(), 0);
}

#[tokio::test]
async fn an_opt_in_grace_delivers_what_setup_was_holding_then_closes_with_1012() {
    let mut opts = test_options(EndpointKind::StateMachine);
    opts.server.auth_ms = 150;
    opts.grace = Duration::from_millis(1000);
    let server = TestServer::start(opts).await;
    let mut ws = connect(&server.url("leaving")).await;
    for n in 1..=3 {
        send_chat(&mut ws, &format!("leaving/m{n}"), "held").await;
    }
    // real-time: let the server read the chats (held by setup) before the signal.
    tokio::time::sleep(Duration::from_millis(50)).await; // real-time: see above
    let stopping = tokio::spawn(server.stop());
    let (acks, code) = acks_then_close(&mut ws).await;
    assert_eq!(acks, ["leaving/m1", "leaving/m2", "leaving/m3"]);
    assert_eq!(code, Some(1012));
    let report = tokio::time::timeout(support::WAIT, stopping)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(report.open_at_signal, 1);
    assert_eq!(report.open_at_exit, 0);
    assert_eq!(panics(), 0);
}

#[tokio::test]
async fn a_grace_shorter_than_setup_still_ends_visibly_with_1012() {
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
    assert_eq!(code, Some(1012), "the client is told, by the close code");
    let report = tokio::time::timeout(support::WAIT, stopping)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(report.open_at_exit, 0);
    assert_eq!(panics(), 0);
}
