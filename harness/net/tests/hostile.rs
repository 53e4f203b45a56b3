//! Hostile input against the fixed endpoint over real sockets: each case is answered with its
//! documented error frame or close code, every other client keeps being served, nothing panics,
//! and the connection's resources are released.

mod support;

use racegate_replay::EndpointKind;
use racegate_replay::trace::Frame;
use support::{
    Seen, TestServer, chat_round_trip, connect, next, panics, raw_close_code, raw_upgrade,
    read_head, send_chat, test_options, write_raw_frame,
};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

/// A bystander connected before the hostile client, checked after it.
async fn bystander(server: &TestServer) -> support::Ws {
    let mut ws = connect(&server.url("bystander")).await;
    chat_round_trip(&mut ws, "bystander", "bystander/m1").await;
    ws
}

async fn bystander_still_served(ws: &mut support::Ws, n: usize) {
    chat_round_trip(ws, "bystander", &format!("bystander/m{n}")).await;
}

fn error_message(seen: &Seen) -> String {
    match seen {
        Seen::Frame(Frame::Error { message }) => message.clone(),
        other => panic!("expected an error frame, got {other:?}"),
    }
}

#[tokio::test]
async fn invalid_utf8_in_a_text_frame_closes_with_1007() {
    let server = TestServer::fix().await;
    let mut by = bystander(&server).await;
    let (mut raw, head) = raw_upgrade(server.addr, "/x?token=mallory").await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    write_raw_frame(&mut raw, 0x1, b"{\"type\":\"chat\",\"id\":\"\xff\xfe\"}").await;
    assert_eq!(raw_close_code(&mut raw).await, Some(1007));
    bystander_still_served(&mut by, 2).await;
    drop(by);
    server.settles_to(0).await;
    assert!(server.counters.protocol_closes() >= 1);
    assert_eq!(panics(), 0);
    server.stop().await;
}

#[tokio::test]
async fn a_binary_frame_gets_an_error_frame_and_the_connection_stays_up() {
    let server = TestServer::fix().await;
    let mut by = bystander(&server).await;
    let mut ws = connect(&server.url("mallory")).await;
    futures_util::SinkExt::send(
        &mut ws,
        tokio_tungstenite::tungstenite::Message::binary(vec![0u8, 1, 2]),
    )
    .await
    .unwrap();
    let message = error_message(&next(&mut ws).await);
    assert!(
        message.contains("binary frames are not supported"),
        "{message}"
    );
    chat_round_trip(&mut ws, "mallory", "mallory/m1").await;
    bystander_still_served(&mut by, 2).await;
    drop((ws, by));
    server.settles_to(0).await;
    assert_eq!(panics(), 0);
    server.stop().await;
}

#[tokio::test]
async fn a_frame_over_the_size_limit_closes_with_1009() {
    let server = TestServer::fix().await;
    let mut by = bystander(&server).await;
    let (mut raw, head) = raw_upgrade(server.addr, "/?token=mallory").await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    let big = format!(
        r#"{{"type":"chat","id":"big","text":"{}"}}"#,
        "x".repeat(64 * 1024)
    );
    write_raw_frame(&mut raw, 0x1, big.as_bytes()).await;
    assert_eq!(raw_close_code(&mut raw).await, Some(1009));
    bystander_still_served(&mut by, 2).await;
    drop(by);
    server.settles_to(0).await;
    assert_eq!(panics(), 0);
    server.stop().await;
}

#[tokio::test]
async fn non_json_text_gets_an_error_frame() {
    let server = TestServer::fix().await;
    let mut by = bystander(&server).await;
    let mut ws = connect(&server.url("mallory")).await;
    futures_util::SinkExt::send(
        &mut ws,
        tokio_tungstenite::tungstenite::Message::text("hello, is this JSON?"),
    )
    .await
    .unwrap();
    let message = error_message(&next(&mut ws).await);
    assert!(message.starts_with("frame is not valid JSON"), "{message}");
    chat_round_trip(&mut ws, "mallory", "mallory/m1").await;
    bystander_still_served(&mut by, 2).await;
    drop((ws, by));
    server.settles_to(0).await;
    assert_eq!(panics(), 0);
    server.stop().await;
}

#[tokio::test]
async fn an_unknown_type_gets_an_error_frame() {
    let server = TestServer::fix().await;
    let mut ws = connect(&server.url("mallory")).await;
    futures_util::SinkExt::send(
        &mut ws,
        tokio_tungstenite::tungstenite::Message::text(r#"{"type":"subscribe","id":"s1"}"#),
    )
    .await
    .unwrap();
    let message = error_message(&next(&mut ws).await);
    assert_eq!(
        message,
        r#"unknown frame type "subscribe": expected "chat""#
    );
    chat_round_trip(&mut ws, "mallory", "mallory/m1").await;
    drop(ws);
    server.settles_to(0).await;
    assert_eq!(panics(), 0);
    server.stop().await;
}

#[tokio::test]
async fn a_chat_without_id_gets_an_error_frame() {
    let server = TestServer::fix().await;
    let mut ws = connect(&server.url("mallory")).await;
    futures_util::SinkExt::send(
        &mut ws,
        tokio_tungstenite::tungstenite::Message::text(r#"{"type":"chat","text":"no id"}"#),
    )
    .await
    .unwrap();
    let message = error_message(&next(&mut ws).await);
    assert_eq!(message, r#"chat frame needs a non-empty string "id""#);
    chat_round_trip(&mut ws, "mallory", "mallory/m1").await;
    drop(ws);
    server.settles_to(0).await;
    assert_eq!(panics(), 0);
    server.stop().await;
}

#[tokio::test]
async fn a_client_that_closes_mid_setup_is_cleaned_up() {
    let mut opts = test_options(EndpointKind::StateMachine);
    opts.server.auth_ms = 100;
    opts.server.services_ms = 100;
    let server = TestServer::start(opts).await;
    let mut by = connect(&server.url("bystander")).await;
    let mut ws = connect(&server.url("impatient")).await;
    send_chat(&mut ws, "impatient/m1", "anyone?").await;
    ws.close(None).await.unwrap();
    // The bystander's chat is held until its own setup ends, then answered.
    chat_round_trip(&mut by, "bystander", "bystander/m1").await;
    drop(by);
    server.settles_to(0).await;
    assert_eq!(panics(), 0);
    server.stop().await;
}

#[tokio::test]
async fn an_upgrade_without_token_closes_with_1008() {
    let server = TestServer::fix().await;
    let mut by = bystander(&server).await;
    for target in ["/chat", "/chat?token=", "/chat?user=x"] {
        let mut ws = connect(&format!("ws://{}{target}", server.addr)).await;
        assert_eq!(next(&mut ws).await, Seen::Close(Some(1008)), "{target}");
    }
    bystander_still_served(&mut by, 2).await;
    drop(by);
    server.settles_to(0).await;
    assert_eq!(panics(), 0);
    server.stop().await;
}

#[tokio::test]
async fn a_handshake_that_never_completes_times_out() {
    let server = TestServer::fix().await;
    let mut by = bystander(&server).await;
    // One sends half a request, one sends nothing: both are answered 408 and dropped.
    let mut half = TcpStream::connect(server.addr).await.unwrap();
    half.write_all(b"GET /chat?token=slow HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let mut silent = TcpStream::connect(server.addr).await.unwrap();
    for stream in [&mut half, &mut silent] {
        let head = read_head(stream).await;
        assert!(head.starts_with("HTTP/1.1 408"), "{head:?}");
    }
    bystander_still_served(&mut by, 2).await;
    drop(by);
    server.settles_to(0).await;
    assert!(server.counters.refused() >= 2);
    assert_eq!(panics(), 0);
    server.stop().await;
}

#[tokio::test]
async fn a_plain_http_request_is_refused_with_400() {
    let server = TestServer::fix().await;
    let mut s = TcpStream::connect(server.addr).await.unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let head = read_head(&mut s).await;
    assert!(head.starts_with("HTTP/1.1 400"), "{head:?}");
    drop(s);
    server.settles_to(0).await;
    server.stop().await;
}
