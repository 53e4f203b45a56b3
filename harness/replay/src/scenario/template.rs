//! Credential templates: the `[protocol]` values (`user_value`, `cookie`, `subprotocol`,
//! `token_env`) and `racegate probe --header` values that are filled per user. `{user}` is the
//! scenario's user id and `{token}` that user's secret token. A `{` not around a bare name is
//! text, as in chat templates.
//!
//! Kept apart from the chat template: chat values are JSON-escaped into a frame, these go into
//! HTTP headers verbatim, and `{token}` must never reach a chat.

/// The placeholders a credential template may use.
pub const PLACEHOLDERS: [&str; 2] = ["user", "token"];

/// Each `{name}` in `template`, in order (`name` made of ASCII letters, digits and `_`).
pub fn placeholders(template: &str) -> impl Iterator<Item = &str> {
    let mut rest = template;
    std::iter::from_fn(move || {
        while let Some(start) = rest.find('{') {
            let after = &rest[start + 1..];
            let len = after
                .bytes()
                .take_while(|b| b.is_ascii_alphanumeric() || *b == b'_')
                .count();
            rest = after;
            if len > 0 && after[len..].starts_with('}') {
                rest = &after[len + 1..];
                return Some(&after[..len]);
            }
        }
        None
    })
}

/// The first placeholder of `template` that is not in `allowed`.
pub fn unknown<'a>(template: &'a str, allowed: &[&str]) -> Option<&'a str> {
    placeholders(template).find(|p| !allowed.contains(p))
}

/// True when `template` needs a token.
pub fn uses_token(template: &str) -> bool {
    placeholders(template).any(|p| p == "token")
}

/// `template` with `{user}` and `{token}` replaced (verbatim: the caller checks the result fits
/// where it goes). `{token}` without a token is left as written; callers resolve tokens first.
pub fn fill(template: &str, user: &str, token: Option<&str>) -> String {
    match token {
        Some(token) => fill_with(template, &[("user", user), ("token", token)]),
        None => fill_with(template, &[("user", user)]),
    }
}

/// `template` with each `{name}` of `values` replaced verbatim, in one pass: a value that
/// itself reads like a placeholder (a user id `a{n}`) is never filled again.
pub fn fill_with(template: &str, values: &[(&str, &str)]) -> String {
    let mut out = String::with_capacity(template.len() + 32);
    let mut rest = template;
    while let Some(start) = rest.find('{') {
        out.push_str(&rest[..start]);
        let after = &rest[start + 1..];
        let value = values
            .iter()
            .find(|(name, _)| after.starts_with(name) && after[name.len()..].starts_with('}'));
        match value {
            Some((name, v)) => {
                out.push_str(v);
                rest = &after[name.len() + 1..];
            }
            None => {
                out.push('{');
                rest = after;
            }
        }
    }
    out.push_str(rest);
    out
}

/// `user` made safe for an environment variable name: every character that is not an ASCII
/// letter or digit becomes `_`, and letters are uppercased (`alice.smith@x` → `ALICE_SMITH_X`).
pub fn env_safe(user: &str) -> String {
    user.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_uppercase()
            } else {
                '_'
            }
        })
        .collect()
}

/// The environment variable `token_env` names for `user`: `{user}` replaced by
/// [`env_safe`]`(user)`.
pub fn env_name(token_env: &str, user: &str) -> String {
    fill(token_env, &env_safe(user), None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_are_bare_names_in_braces_and_other_braces_are_text() {
        let found: Vec<&str> = placeholders("{\"a\": \"{user}\"} {token}{x-y} {}{n_1}").collect();
        assert_eq!(found, ["user", "token", "n_1"]);
        assert_eq!(unknown("Bearer {token}", &PLACEHOLDERS), None);
        assert_eq!(unknown("{user}:{secret}", &PLACEHOLDERS), Some("secret"));
    }

    #[test]
    fn fill_replaces_user_and_token_verbatim() {
        assert_eq!(
            fill("Bearer {token} for {user} {x}", "a\"b", Some("t.k-n")),
            "Bearer t.k-n for a\"b {x}"
        );
        assert_eq!(fill("{token}", "u", None), "{token}");
        assert!(uses_token("session={token}") && !uses_token("{user}"));
        assert_eq!(
            fill_with("{user}-{n}", &[("user", "a{n}"), ("n", "7")]),
            "a{n}-7",
            "a filled value is never filled again"
        );
    }

    #[test]
    fn an_env_name_uppercases_the_user_and_replaces_the_rest_with_underscores() {
        assert_eq!(
            env_name("RACEGATE_TOKEN_{user}", "alice.smith@x-1"),
            "RACEGATE_TOKEN_ALICE_SMITH_X_1"
        );
        assert_eq!(env_safe("ü b"), "__B");
    }
}
