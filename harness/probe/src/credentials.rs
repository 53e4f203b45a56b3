//! Credentials: each user's token, from a `--tokens` file or the environment variable the
//! scenario's `token_env` names; extra `--header`s and `--origin`; and [`Secrets`], which masks
//! every token out of what a probe reports. A token goes on the wire and nowhere else: not in a
//! record, a violation, an error or a `Debug` print.

use std::borrow::Cow;
use std::fmt;
use std::path::{Path, PathBuf};

use indexmap::IndexMap;
use racegate_replay::scenario::{Protocol, template};

use crate::ProbeError;

/// What a token is shown as.
pub const MASK: &str = "***";

/// Users' tokens from a `--tokens` file; the environment is read per user, when needed.
#[derive(Clone, Default)]
pub struct Tokens {
    map: IndexMap<String, String>,
    file: Option<PathBuf>,
}

impl fmt::Debug for Tokens {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let users: Vec<&str> = self.map.keys().map(String::as_str).collect();
        f.debug_struct("Tokens")
            .field("users", &users)
            .field("file", &self.file)
            .finish()
    }
}

impl Tokens {
    /// Reads a `user -> token` object: JSON when the file is `*.json` or starts with `{`, TOML
    /// otherwise. Surrounding whitespace of a token is dropped. Errors never quote a value.
    pub fn load(path: &Path) -> Result<Tokens, ProbeError> {
        let bad = |reason: String| ProbeError::Tokens {
            file: path.display().to_string(),
            reason,
        };
        let text = std::fs::read_to_string(path).map_err(|e| bad(e.to_string()))?;
        let json =
            path.extension().is_some_and(|x| x == "json") || text.trim_start().starts_with('{');
        let entries: Vec<(String, Option<String>)> = if json {
            // serde_json's syntax errors name a line and column, never the text there.
            let value: serde_json::Value = serde_json::from_str(&text)
                .map_err(|e| bad(format!("not a JSON object of user -> token: {e}")))?;
            let serde_json::Value::Object(object) = value else {
                return Err(bad("expected a JSON object of user -> token".into()));
            };
            object
                .into_iter()
                .map(|(user, v)| (user, v.as_str().map(str::to_string)))
                .collect()
        } else {
            // toml's `Display` quotes the offending line, which may hold a token: only its
            // message and position are used.
            let table: toml::Table = toml::from_str(&text).map_err(|e| {
                let at = e.span().map_or(String::new(), |s| {
                    let before = &text[..s.start.min(text.len())];
                    format!(" at line {}", before.matches('\n').count() + 1)
                });
                bad(format!(
                    "not a TOML table of user = \"token\"{at}: {}",
                    e.message().lines().next().unwrap_or_default()
                ))
            })?;
            table
                .into_iter()
                .map(|(user, v)| (user, v.as_str().map(str::to_string)))
                .collect()
        };
        let mut map = IndexMap::with_capacity(entries.len());
        for (user, token) in entries {
            let Some(token) = token else {
                return Err(bad(format!("the token for user {user:?} is not a string")));
            };
            let token = checked(token.trim())
                .map_err(|why| bad(format!("the token for user {user:?} {why}")))?;
            map.insert(user, token);
        }
        Ok(Tokens {
            map,
            file: Some(path.to_path_buf()),
        })
    }

    /// Tokens given in code (tests, embedding); `user -> token`.
    pub fn from_pairs<I, U, T>(pairs: I) -> Tokens
    where
        I: IntoIterator<Item = (U, T)>,
        U: Into<String>,
        T: Into<String>,
    {
        Tokens {
            map: pairs
                .into_iter()
                .map(|(u, t)| (u.into(), t.into()))
                .collect(),
            file: None,
        }
    }

    /// `user`'s token: the file's entry, else the variable `protocol.token_env` names. The
    /// error says where it looked, never what it found.
    pub fn resolve(&self, user: &str, protocol: &Protocol) -> Result<String, String> {
        if let Some(token) = self.map.get(user) {
            return Ok(token.clone());
        }
        let mut looked = Vec::new();
        match &self.file {
            Some(file) => looked.push(format!("not in --tokens {}", file.display())),
            None if !self.map.is_empty() => looked.push("not among the tokens given".into()),
            None => looked.push("no --tokens file given".into()),
        }
        match &protocol.token_env {
            Some(env) => {
                let name = template::env_name(env, user);
                match std::env::var(&name) {
                    Ok(value) => {
                        return checked(value.trim())
                            .map_err(|why| format!("the token in ${name} {why}"));
                    }
                    Err(std::env::VarError::NotPresent) => {
                        looked.push(format!("${name} is not set"));
                    }
                    Err(std::env::VarError::NotUnicode(_)) => {
                        looked.push(format!("${name} is not valid UTF-8"));
                    }
                }
            }
            None => looked.push("the scenario's [protocol] sets no `token_env`".into()),
        }
        Err(format!("no token: {}", looked.join(", and ")))
    }

    /// Every token in the file.
    fn values(&self) -> impl Iterator<Item = &str> {
        self.map.values().map(String::as_str)
    }
}

/// A token that can travel in a header: not empty, no control characters, ASCII.
fn checked(token: &str) -> Result<String, String> {
    if token.is_empty() {
        return Err("is empty".into());
    }
    if !token.chars().all(|c| c == ' ' || c.is_ascii_graphic()) {
        return Err("has characters a header cannot carry (control or non-ASCII)".into());
    }
    Ok(token.to_string())
}

/// A request header added to every user's upgrade (`--header`, `--origin`); the value is a
/// [`template`] of `{user}` and `{token}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExtraHeader {
    /// The header name.
    pub name: String,
    /// The value template.
    pub value: String,
}

/// Headers the WebSocket handshake sets itself.
const OWNED: [&str; 6] = [
    "host",
    "upgrade",
    "connection",
    "sec-websocket-key",
    "sec-websocket-version",
    "sec-websocket-extensions",
];

impl ExtraHeader {
    /// `Name: value`. Errors name the header, never its value (it may hold a secret).
    pub fn parse(text: &str) -> Result<ExtraHeader, String> {
        let Some((name, value)) = text.split_once(':') else {
            return Err("expected 'Name: value', found no `:`".into());
        };
        let name = name.trim();
        let valid_name = !name.is_empty()
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b));
        if !valid_name {
            return Err(format!(
                "expected 'Name: value'; {name:?} is not a header name (letters, digits, `-`)"
            ));
        }
        if OWNED.contains(&name.to_ascii_lowercase().as_str()) {
            return Err(format!(
                "{name} is set by the WebSocket handshake (and Host by the URL)"
            ));
        }
        let value = value.trim();
        if value.is_empty() {
            return Err(format!("{name} has no value"));
        }
        if let Some(p) = template::unknown(value, &template::PLACEHOLDERS) {
            return Err(format!(
                "{name}: unknown placeholder `{{{p}}}`; expected `{{user}}` or `{{token}}`"
            ));
        }
        if !value
            .chars()
            .all(|c| c == ' ' || c == '\t' || c.is_ascii_graphic())
        {
            return Err(format!(
                "the value of {name} has characters a header cannot carry"
            ));
        }
        Ok(ExtraHeader {
            name: name.to_string(),
            value: value.to_string(),
        })
    }

    /// `Origin: <url>` for `--origin`: a scheme and a host, as browsers send it.
    pub fn origin(url: &str) -> Result<ExtraHeader, String> {
        let uri: tokio_tungstenite::tungstenite::http::Uri = url
            .parse()
            .map_err(|e| format!("{url:?} is not a URL: {e}"))?;
        if uri.scheme().is_none() || uri.host().is_none_or(str::is_empty) {
            return Err(format!(
                "{url:?} is not an origin; expected SCHEME://HOST[:PORT], e.g. https://app.example.com"
            ));
        }
        let value = url.trim_end_matches('/');
        if !value.chars().all(|c| c.is_ascii_graphic()) {
            return Err(format!("{url:?} has characters a header cannot carry"));
        }
        Ok(ExtraHeader {
            name: "Origin".into(),
            value: value.to_string(),
        })
    }

    /// True when the value needs a token.
    pub fn uses_token(&self) -> bool {
        template::uses_token(&self.value)
    }
}

/// The tokens of one probe, to mask in everything it reports.
#[derive(Clone, Default)]
pub struct Secrets {
    /// Each token and the forms a server may echo it in (JSON-escaped, percent-encoded),
    /// longest first.
    forms: Vec<String>,
}

impl fmt::Debug for Secrets {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Secrets({} forms)", self.forms.len())
    }
}

/// A token cut short (a close reason holds at most 123 bytes; a violation quotes a frame cut
/// to a length, ending `…`) is masked when at least this much of it is there.
const MIN_CUT: usize = 6;

impl Secrets {
    /// The secrets `tokens` and `extra` hold.
    pub fn new<'a>(tokens: &'a Tokens, extra: impl IntoIterator<Item = &'a str>) -> Secrets {
        let mut forms: Vec<String> = Vec::new();
        for token in tokens.values().chain(extra) {
            let json = serde_json::Value::String(token.to_string()).to_string();
            let json = json[1..json.len() - 1].to_string();
            let slashed = json.replace('/', "\\/");
            // As a query string carries it (`user_query = "access_token={token}"`), should a
            // server echo its request URL.
            let encoded = crate::target::percent_encode(token);
            for form in [token.to_string(), json, slashed, encoded] {
                if !form.is_empty() && !forms.contains(&form) {
                    forms.push(form);
                }
            }
        }
        forms.sort_by_key(|f| std::cmp::Reverse(f.len()));
        Secrets { forms }
    }

    /// True when there is nothing to mask.
    pub fn is_empty(&self) -> bool {
        self.forms.is_empty()
    }

    /// `text` with every token replaced by [`MASK`], and a token cut short (at the end of the
    /// text, or before a `…`) too.
    pub fn mask<'t>(&self, text: &'t str) -> Cow<'t, str> {
        let mut out = Cow::Borrowed(text);
        for form in &self.forms {
            if out.contains(form.as_str()) {
                out = Cow::Owned(out.replace(form.as_str(), MASK));
            }
        }
        for form in &self.forms {
            if let Some(cut) = mask_cut(&out, form) {
                out = Cow::Owned(cut);
            }
        }
        out
    }

    /// Masks `text` in place.
    pub fn mask_in(&self, text: &mut String) {
        if let Cow::Owned(masked) = self.mask(text) {
            *text = masked;
        }
    }
}

/// `text` with each start of `form` that is cut short masked; `None` when there is none.
fn mask_cut(text: &str, form: &str) -> Option<String> {
    let head_len = (MIN_CUT..=form.len()).find(|&n| form.is_char_boundary(n))?;
    if head_len >= form.len() {
        return None;
    }
    let head = &form[..head_len];
    let mut out = String::new();
    let mut rest = text;
    let mut changed = false;
    while let Some(i) = rest.find(head) {
        let after = &rest[i..];
        let mut common = after
            .bytes()
            .zip(form.bytes())
            .take_while(|(a, b)| a == b)
            .count();
        while !after.is_char_boundary(common) {
            common -= 1;
        }
        let tail = &after[common..];
        if tail.is_empty() || tail.starts_with('…') {
            out.push_str(&rest[..i]);
            out.push_str(MASK);
            rest = tail;
            changed = true;
        } else {
            out.push_str(&rest[..i + head.len()]);
            rest = &rest[i + head.len()..];
        }
    }
    out.push_str(rest);
    changed.then_some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_is_masked_whole_json_escaped_and_cut_short_at_the_end() {
        let tokens = Tokens::from_pairs([("u", "abc/def\"ghi-123456")]);
        let s = Secrets::new(&tokens, []);
        assert_eq!(s.mask("Bearer abc/def\"ghi-123456!"), "Bearer ***!");
        assert_eq!(s.mask(r#"{"a":"abc\/def\"ghi-123456"}"#), r#"{"a":"***"}"#);
        assert_eq!(s.mask("auth: Bearer abc/def\"g"), "auth: Bearer ***");
        assert_eq!(
            s.mask("frame `x abc/def\"gh…` matches"),
            "frame `x ***…` matches"
        );
        assert_eq!(
            s.mask("abc/de is not cut, abc/d neither"),
            "abc/de is not cut, abc/d neither"
        );
        assert_eq!(s.mask("nothing here"), "nothing here");
        assert_eq!(
            s.mask("GET /ws?access_token=abc%2Fdef%22ghi-123456 HTTP/1.1"),
            "GET /ws?access_token=*** HTTP/1.1",
            "as a query string carries it"
        );
    }

    #[test]
    fn extra_headers_parse_name_and_template_and_never_echo_a_value() {
        let h = ExtraHeader::parse("X-Api-Key:  {token} ").unwrap();
        assert_eq!(
            (h.name.as_str(), h.value.as_str()),
            ("X-Api-Key", "{token}")
        );
        assert!(h.uses_token());
        for (bad, phrase) in [
            ("Authorization Bearer s3cret", "no `:`"),
            ("X Key: s3cret", "not a header name"),
            ("X-Key: s3cret {tok}", "unknown placeholder `{tok}`"),
            ("Host: s3cret", "set by the WebSocket handshake"),
            ("X-Key:", "has no value"),
        ] {
            let e = ExtraHeader::parse(bad).unwrap_err();
            assert!(e.contains(phrase), "{bad}: {e}");
            assert!(!e.contains("s3cret"), "{bad}: {e}");
        }
        assert_eq!(
            ExtraHeader::origin("https://app.example.com/")
                .unwrap()
                .value,
            "https://app.example.com"
        );
        assert!(ExtraHeader::origin("app.example.com").is_err());
    }

    #[test]
    fn a_missing_token_names_where_it_looked() {
        let p = Protocol {
            token_env: Some("RACEGATE_TEST_NO_SUCH_{user}".into()),
            ..Protocol::default()
        };
        let e = Tokens::default().resolve("a.b", &p).unwrap_err();
        assert_eq!(
            e,
            "no token: no --tokens file given, and $RACEGATE_TEST_NO_SUCH_A_B is not set"
        );
        let e = Tokens::from_pairs([("x", "t")])
            .resolve("a", &Protocol::default())
            .unwrap_err();
        assert!(e.contains("sets no `token_env`"), "{e}");
    }
}
