//! The server under test: a `ws://` or `wss://` URL, checked once, and each user's upgrade
//! request built from it and the scenario's `[protocol]` (the user id as a query parameter or a
//! header). The `Host` header comes from the URL, as the TLS server name does.

use racegate_replay::scenario::{Protocol, template};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::handshake::client::Request;
use tokio_tungstenite::tungstenite::http::header::{HeaderName, HeaderValue};

use crate::ProbeError;
use crate::credentials::ExtraHeader;

/// A checked `ws://HOST:PORT/PATH` or `wss://HOST:PORT/PATH` URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    url: String,
    host: String,
    port: u16,
    tls: bool,
}

impl Target {
    /// Checks `url`: `ws://` or `wss://`, a host, an optional port (80 or 443), any path and
    /// query.
    pub fn parse(url: &str) -> Result<Target, ProbeError> {
        let bad = |reason: &str| ProbeError::BadUrl {
            url: url.to_string(),
            reason: reason.to_string(),
        };
        // The URL standard skips the slashes of `ws:///path` and reads `path` as the host; a
        // server's address with three slashes has lost its host.
        if url
            .split_once("://")
            .is_some_and(|(_, rest)| rest.starts_with('/'))
        {
            return Err(bad("no host; expected ws://HOST:PORT/PATH"));
        }
        let parsed = match url::Url::parse(url) {
            Ok(parsed) => parsed,
            Err(url::ParseError::RelativeUrlWithoutBase) => {
                return Err(bad("no scheme; expected ws://HOST:PORT/PATH"));
            }
            Err(url::ParseError::InvalidPort) => {
                return Err(bad(&format!(
                    "invalid port `{}`; expected a number from 1 to 65535",
                    written_port(url).unwrap_or_default()
                )));
            }
            Err(e) => return Err(bad(&format!("{e}; expected ws://HOST:PORT/PATH"))),
        };
        let tls = match parsed.scheme() {
            "ws" => false,
            "wss" => true,
            other => return Err(bad(&format!("scheme {other}:// is not ws:// or wss://"))),
        };
        if parsed.fragment().is_some() {
            return Err(bad("a WebSocket URL has no #fragment"));
        }
        let host = parsed
            .host_str()
            .filter(|h| !h.is_empty())
            .ok_or_else(|| bad("no host; expected ws://HOST:PORT/PATH"))?;
        let host = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string();
        // The URL standard reads a bare `:` as the default port; a server's address written with
        // a colon and no number is a typo, not port 80.
        if written_port(url).is_some_and(str::is_empty) {
            return Err(bad("invalid port ``; expected a number from 1 to 65535"));
        }
        let port = parsed
            .port_or_known_default()
            .unwrap_or(if tls { 443 } else { 80 });
        if port == 0 {
            return Err(bad("port 0 is not a server's port"));
        }
        Ok(Target {
            url: url.to_string(),
            host,
            port,
            tls,
        })
    }

    /// True for `wss://`.
    pub fn is_tls(&self) -> bool {
        self.tls
    }

    /// The host (brackets off an IPv6 literal): the TLS server name.
    pub fn host(&self) -> &str {
        &self.host
    }

    /// The URL as given.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// `host:port` for the TCP connect.
    pub fn addr(&self) -> (&str, u16) {
        (&self.host, self.port)
    }

    /// `host:port` in words.
    pub fn addr_text(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }

    /// `user`'s upgrade request: the query `user_query` gives (the id in a bare parameter, or
    /// its `name=template` pairs, percent-encoded), its credential templates (header, cookie,
    /// subprotocol) and `extra` headers, filled with the id and `token`. Errors name headers, never values: a value may hold the token.
    pub fn request(
        &self,
        user: &str,
        token: Option<&str>,
        protocol: &Protocol,
        extra: &[ExtraHeader],
    ) -> Result<Request, String> {
        let mut url = self.url.clone();
        for (name, value) in protocol.query_pairs(user, token) {
            url.push(if url.contains('?') { '&' } else { '?' });
            url.push_str(&percent_encode(&name));
            url.push('=');
            url.push_str(&percent_encode(&value));
        }
        let mut request = url.into_client_request().map_err(|e| e.to_string())?;
        let value = |header: &str, template: &str| {
            let filled = template::fill(template, user, token);
            HeaderValue::from_str(&filled).map_err(|_| {
                format!(
                    "the id cannot travel in header {header}: it has characters a header cannot \
                     carry"
                )
            })
        };
        for (header, template) in protocol.credential_templates() {
            let name = HeaderName::from_bytes(header.as_bytes()).map_err(|e| e.to_string())?;
            request.headers_mut().insert(name, value(header, template)?);
        }
        for h in extra {
            let name = HeaderName::from_bytes(h.name.as_bytes()).map_err(|e| e.to_string())?;
            request
                .headers_mut()
                .append(name, value(&h.name, &h.value)?);
        }
        Ok(request)
    }
}

/// What the URL writes after its host's last `:`, if it writes a port at all (an IPv6
/// literal's colons are inside its brackets).
fn written_port(url: &str) -> Option<&str> {
    let rest = url.split_once("://")?.1;
    let authority = rest.split(['/', '?', '#']).next()?;
    let host_port = authority.rsplit('@').next()?;
    let (_, port) = host_port.rsplit_once(':')?;
    (!port.ends_with(']')).then_some(port)
}

/// Every byte but RFC 3986's unreserved characters is `%XX`-encoded.
const NOT_UNRESERVED: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~');

/// RFC 3986 unreserved characters kept, every other byte `%XX` (a query value, a credential).
pub(crate) fn percent_encode(s: &str) -> String {
    percent_encoding::utf8_percent_encode(s, NOT_UNRESERVED).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ws_url_gives_its_host_and_port_with_80_by_default() {
        let t = Target::parse("ws://127.0.0.1:9000/ws").unwrap();
        assert_eq!(t.addr(), ("127.0.0.1", 9000));
        assert_eq!(Target::parse("ws://example.test/").unwrap().addr().1, 80);
        assert_eq!(
            Target::parse("ws://u:p@example.test/").unwrap().addr().1,
            80
        );
        assert_eq!(Target::parse("ws://[::1]/").unwrap().addr().1, 80);
        let wss = Target::parse("wss://staging.example.test/ws").unwrap();
        assert_eq!(
            (wss.addr(), wss.is_tls()),
            (("staging.example.test", 443), true)
        );
        assert_eq!(Target::parse("wss://[::1]:8443/").unwrap().host(), "::1");
        assert_eq!(
            Target::parse("ws://[::1]:81/x").unwrap().addr_text(),
            "[::1]:81"
        );
    }

    #[test]
    fn urls_probe_cannot_use_are_refused_with_the_reason() {
        for (url, reason) in [
            ("http://127.0.0.1:1/", "is not ws:// or wss://"),
            ("127.0.0.1:9000", "scheme"),
            ("ws://", "expected ws://HOST:PORT/PATH"),
            ("ws:///path", "no host"),
            ("ws://host:0/", "port 0"),
            ("ws://exa mple/", "expected ws://HOST:PORT/PATH"),
            ("ws://127.0.0.1:99999/ws", "invalid port `99999`"),
            ("ws://127.0.0.1:abc/ws", "invalid port"),
            ("ws://127.0.0.1:/ws", "invalid port"),
        ] {
            match Target::parse(url) {
                Err(e @ ProbeError::BadUrl { .. }) => {
                    assert!(e.to_string().contains(reason), "{url}: {e}")
                }
                other => panic!("{url}: expected BadUrl, got {other:?}"),
            }
        }
    }

    #[test]
    fn the_user_id_is_percent_encoded_into_the_query() {
        let t = Target::parse("ws://127.0.0.1:9/chat?v=2").unwrap();
        let r = t.request("a b/ü", None, &Protocol::default(), &[]).unwrap();
        assert_eq!(
            r.uri().to_string(),
            "ws://127.0.0.1:9/chat?v=2&token=a%20b%2F%C3%BC"
        );
    }

    #[test]
    fn query_pairs_carry_the_user_and_the_token_percent_encoded() {
        let t = Target::parse("wss://staging.example.test/ws?v=2").unwrap();
        let p = Protocol {
            user_query: Some("uid={user}&access_token={token}".into()),
            ..Protocol::default()
        };
        let r = t.request("a b", Some("tk/1+=="), &p, &[]).unwrap();
        assert_eq!(
            r.uri().to_string(),
            "wss://staging.example.test/ws?v=2&uid=a%20b&access_token=tk%2F1%2B%3D%3D"
        );
    }

    #[test]
    fn a_header_protocol_puts_the_user_id_in_that_header_only() {
        let t = Target::parse("ws://127.0.0.1:9/").unwrap();
        let p = Protocol {
            user_query: None,
            user_header: Some("X-User-Id".into()),
            ..Protocol::default()
        };
        let r = t.request("u1", None, &p, &[]).unwrap();
        assert_eq!(r.uri().to_string(), "ws://127.0.0.1:9/");
        assert_eq!(r.headers()["x-user-id"], "u1");
    }

    #[test]
    fn credential_templates_and_extra_headers_are_filled_per_user() {
        let t = Target::parse("wss://staging.example.test/ws").unwrap();
        let p = Protocol {
            user_query: None,
            user_header: Some("Authorization".into()),
            user_value: "Bearer {token}".into(),
            cookie: Some("session={token}; who={user}".into()),
            subprotocol: Some("chat.v1, {token}".into()),
            ..Protocol::default()
        };
        let extra = [
            ExtraHeader::parse("X-Trace: probe-{user}").unwrap(),
            ExtraHeader::origin("https://app.example.test").unwrap(),
        ];
        let r = t.request("u1", Some("tk.1"), &p, &extra).unwrap();
        let h = r.headers();
        assert_eq!(r.uri().to_string(), "wss://staging.example.test/ws");
        assert_eq!(h["host"], "staging.example.test");
        assert_eq!(h["authorization"], "Bearer tk.1");
        assert_eq!(h["cookie"], "session=tk.1; who=u1");
        assert_eq!(h["sec-websocket-protocol"], "chat.v1, tk.1");
        assert_eq!(h["x-trace"], "probe-u1");
        assert_eq!(h["origin"], "https://app.example.test");
    }
}
