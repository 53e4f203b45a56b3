//! The HTTP half of the WebSocket handshake, split the way Starlette splits it.
//!
//! The server reads and checks the upgrade request as soon as the TCP connection arrives (it
//! needs `?token=` to know the user), but the `101 Switching Protocols` response is written only
//! when the endpoint calls `accept()`. Until then the client is waiting on its handshake, which is
//! exactly the window the races live in. Reading is bounded in bytes and time, so a client that
//! never finishes its request costs one timer, not a task forever.

use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;

/// Headers an upgrade request may carry.
const MAX_HEADERS: usize = 64;

/// A checked upgrade request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Upgrade {
    /// The request target's path (any path is served).
    pub path: String,
    /// `?token=`, percent-decoded; `None` when absent or empty.
    pub token: Option<String>,
    /// `?conn=`, percent-decoded: the label the trace records this connection under (a user's
    /// second connection and later, `id#k`, in `run --transport ws`); `None` when absent or
    /// empty, and then the label is the token.
    pub conn: Option<String>,
    /// `Sec-WebSocket-Key`, for the accept hash.
    pub key: String,
    /// Bytes the client sent after the request (a pipelining client's first frames).
    pub leftover: Vec<u8>,
}

/// Why an upgrade request was refused before any endpoint saw it.
#[derive(Debug, thiserror::Error)]
pub enum HandshakeError {
    /// The request did not complete in time.
    #[error("the upgrade request did not complete within {0:?}")]
    Timeout(Duration),
    /// The request head is larger than the limit.
    #[error("the upgrade request head is over {0} bytes")]
    TooLarge(usize),
    /// The client closed before finishing its request.
    #[error("the client closed before finishing its upgrade request")]
    Closed,
    /// Reading failed.
    #[error("reading the upgrade request: {0}")]
    Io(#[from] std::io::Error),
    /// Not a valid WebSocket upgrade.
    #[error("not a WebSocket upgrade: {0}")]
    BadRequest(String),
}

impl HandshakeError {
    /// The HTTP status to answer with, if the client is still there to read one.
    pub fn status(&self) -> Option<(u16, &'static str)> {
        match self {
            HandshakeError::Timeout(_) => Some((408, "Request Timeout")),
            HandshakeError::TooLarge(_) => Some((431, "Request Header Fields Too Large")),
            HandshakeError::BadRequest(_) => Some((400, "Bad Request")),
            HandshakeError::Closed | HandshakeError::Io(_) => None,
        }
    }
}

/// Reads the upgrade request from `stream`: at most `max_bytes` of head, within `timeout`.
pub async fn read_upgrade<S: AsyncRead + Unpin>(
    stream: &mut S,
    max_bytes: usize,
    timeout: Duration,
) -> Result<Upgrade, HandshakeError> {
    match tokio::time::timeout(timeout, read_head(stream, max_bytes)).await {
        Ok(result) => result,
        Err(_) => Err(HandshakeError::Timeout(timeout)),
    }
}

async fn read_head<S: AsyncRead + Unpin>(
    stream: &mut S,
    max_bytes: usize,
) -> Result<Upgrade, HandshakeError> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    loop {
        let room = max_bytes.saturating_sub(buf.len()).min(chunk.len());
        if room == 0 {
            return Err(HandshakeError::TooLarge(max_bytes));
        }
        let n = stream.read(&mut chunk[..room]).await?;
        if n == 0 {
            return Err(HandshakeError::Closed);
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(upgrade) = parse(&buf)? {
            return Ok(upgrade);
        }
    }
}

/// `Ok(None)` while the head is incomplete.
fn parse(buf: &[u8]) -> Result<Option<Upgrade>, HandshakeError> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let len = match req.parse(buf) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(e) => return Err(HandshakeError::BadRequest(e.to_string())),
    };
    let bad = |why: &str| HandshakeError::BadRequest(why.to_string());
    if req.method != Some("GET") {
        return Err(bad("the method must be GET"));
    }
    if req.version != Some(1) {
        return Err(bad("the HTTP version must be 1.1"));
    }
    let header = |name: &str| {
        req.headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(name))
            .and_then(|h| std::str::from_utf8(h.value).ok())
            .map(str::trim)
    };
    let has_token = |name: &str, token: &str| {
        header(name).is_some_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
    };
    if !has_token("upgrade", "websocket") {
        return Err(bad("missing `Upgrade: websocket`"));
    }
    if !has_token("connection", "upgrade") {
        return Err(bad("missing `Connection: Upgrade`"));
    }
    if header("sec-websocket-version") != Some("13") {
        return Err(bad("`Sec-WebSocket-Version` must be 13"));
    }
    let key = match header("sec-websocket-key") {
        Some(key) if !key.is_empty() => key.to_string(),
        Some(_) | None => return Err(bad("missing `Sec-WebSocket-Key`")),
    };
    let target = req.path.unwrap_or("/");
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let mut token = None;
    let mut conn = None;
    for pair in query.split('&') {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        let slot = match name {
            "token" if token.is_none() => &mut token,
            "conn" if conn.is_none() => &mut conn,
            _ => continue,
        };
        let value = percent_decode(value)
            .ok_or_else(|| bad(&format!("`{name}` is not valid percent-encoded UTF-8")))?;
        *slot = Some(Some(value).filter(|t| !t.is_empty()));
    }
    Ok(Some(Upgrade {
        path: path.to_string(),
        token: token.flatten(),
        conn: conn.flatten(),
        key,
        leftover: buf[len..].to_vec(),
    }))
}

/// Decodes `%XX` escapes; `None` for a broken escape or bytes that are not UTF-8.
fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes.get(i + 1..i + 3)?;
            let hex = std::str::from_utf8(hex).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// Writes the `101 Switching Protocols` response: the moment the client sees the socket open.
pub async fn write_accept<S: AsyncWrite + Unpin>(stream: &mut S, key: &str) -> std::io::Result<()> {
    let response = format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {}\r\n\r\n",
        derive_accept_key(key.as_bytes())
    );
    stream.write_all(response.as_bytes()).await?;
    stream.flush().await
}

/// Answers a refused upgrade with a plain HTTP error, best effort.
pub async fn write_refusal<S: AsyncWrite + Unpin>(
    stream: &mut S,
    status: u16,
    reason: &str,
    body: &str,
) {
    write_refusal_with(stream, status, reason, "", body).await;
}

/// [`write_refusal`] with extra header lines (each ending in CRLF).
pub async fn write_refusal_with<S: AsyncWrite + Unpin>(
    stream: &mut S,
    status: u16,
    reason: &str,
    extra_headers: &str,
    body: &str,
) {
    let response = format!(
        "HTTP/1.1 {status} {reason}\r\nConnection: close\r\n{extra_headers}Content-Type: text/plain; charset=utf-8\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    // The client may already be gone; there is nobody to tell then.
    let _ = stream.write_all(response.as_bytes()).await;
    let _ = stream.shutdown().await;
}

#[cfg(test)]
mod tests {
    use super::*;

    const REQ: &str = "GET /ws?x=1&token=user%2D1 HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\nConnection: keep-alive, Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n";

    #[test]
    fn a_complete_request_gives_path_token_and_key() {
        let mut bytes = REQ.as_bytes().to_vec();
        bytes.extend_from_slice(b"\x81");
        let up = parse(&bytes).unwrap().unwrap();
        assert_eq!(up.path, "/ws");
        assert_eq!(up.token.as_deref(), Some("user-1"));
        assert_eq!(up.key, "dGhlIHNhbXBsZSBub25jZQ==");
        assert_eq!(up.leftover, b"\x81");
    }

    #[test]
    fn a_conn_parameter_names_the_connection_and_the_first_token_wins() {
        assert_eq!(parse(REQ.as_bytes()).unwrap().unwrap().conn, None);
        let second = REQ.replace("token=user%2D1", "token=u&conn=u%232&token=v&conn=x");
        let up = parse(second.as_bytes()).unwrap().unwrap();
        assert_eq!(
            (up.token.as_deref(), up.conn.as_deref()),
            (Some("u"), Some("u#2"))
        );
        let broken = REQ.replace("token=user%2D1", "token=u&conn=%zz");
        assert!(matches!(
            parse(broken.as_bytes()),
            Err(HandshakeError::BadRequest(m)) if m.contains("`conn`")
        ));
    }

    #[test]
    fn a_partial_request_waits_for_more() {
        assert!(parse(&REQ.as_bytes()[..40]).unwrap().is_none());
    }

    #[test]
    fn an_empty_or_missing_token_is_none() {
        let empty = REQ.replace("token=user%2D1", "token=");
        assert_eq!(parse(empty.as_bytes()).unwrap().unwrap().token, None);
        let none = REQ.replace("&token=user%2D1", "");
        assert_eq!(parse(none.as_bytes()).unwrap().unwrap().token, None);
    }

    #[test]
    fn a_plain_http_request_is_refused() {
        let plain = "GET / HTTP/1.1\r\nHost: h\r\n\r\n";
        assert!(matches!(
            parse(plain.as_bytes()),
            Err(HandshakeError::BadRequest(_))
        ));
        let broken = REQ.replace("user%2D1", "%zz");
        assert!(matches!(
            parse(broken.as_bytes()),
            Err(HandshakeError::BadRequest(_))
        ));
    }

    #[test]
    fn the_accept_key_is_rfc_6455s_example() {
        assert_eq!(
            derive_accept_key(b"dGhlIHNhbXBsZSBub25jZQ=="),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
    }
}
