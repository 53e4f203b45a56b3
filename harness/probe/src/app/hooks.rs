//! The hooks file of `probe --app --hooks FILE.toml`: which of the app's own awaitables is which
//! setup phase of a scenario's `[server]`, so the scenario's timings reach the real app.
//!
//! ```toml
//! # Each phase: the awaitable (MODULE:ATTR, ATTR may be Class.method), and what fail_at raises.
//! auth = { call = "myapp.auth:verify_token", raise = "myapp.auth:AuthError" }
//! services = "myapp.services:create_services"     # no `raise`: no user may fail here
//! register = { call = "myapp.handlers:register" }
//! ```
//!
//! With `auth_ms = 180`, every call of `verify_token` made while serving a connection first
//! sleeps 180 virtual ms; for a user with `fail_at = "auth"` it then raises `AuthError`
//! instead of running. A phase with no hook keeps the app's own timing. Errors name the file,
//! line and column; a hook that names nothing importable is found when the app is loaded and
//! reported at its line too.

use std::ops::Range;
use std::path::{Path, PathBuf};

use racegate_replay::scenario::{Phase, line_col, toml_message};
use serde::Deserialize;
use toml::Spanned;

/// A hooks file that cannot be used, with where.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HooksError {
    /// The file could not be read.
    #[error("--hooks {}: {message}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS's words.
        message: String,
    },
    /// The file is not a hooks file; 1-based line and column.
    #[error("{}:{line}:{column}: {message}", path.display())]
    Invalid {
        /// The file.
        path: PathBuf,
        /// 1-based line.
        line: usize,
        /// 1-based column.
        column: usize,
        /// What is wrong and what would be right.
        message: String,
    },
}

/// One phase's hook.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hook {
    /// `MODULE:ATTR` of the awaitable.
    pub call: String,
    /// `MODULE:ATTR` of the exception a failing user's call raises.
    pub raise: Option<String>,
    call_at: (usize, usize),
    raise_at: Option<(usize, usize)>,
}

/// A parsed hooks file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hooks {
    /// Where it was read from.
    pub file: PathBuf,
    /// Per phase, in the file's order.
    pub phases: Vec<(Phase, Hook)>,
}

/// The phases' table as written: a hooks file's top level, or `[tool.racegate.hooks]`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawFile {
    auth: Option<Spanned<RawHook>>,
    services: Option<Spanned<RawHook>>,
    register: Option<Spanned<RawHook>>,
}

/// A phase's value: `"MODULE:ATTR"`, or a table with `call` and maybe `raise`. Read by hand
/// rather than as an untagged enum, which would lose the spans of the table's values.
struct RawHook {
    call: Option<Spanned<String>>,
    raise: Option<Spanned<String>>,
}

const HOOK_SHAPE: &str =
    "a hook is \"MODULE:ATTR\" or { call = \"MODULE:ATTR\", raise = \"MODULE:ATTR\" }";

impl<'de> Deserialize<'de> for RawHook {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = RawHook;

            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(HOOK_SHAPE)
            }

            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<RawHook, E> {
                Ok(RawHook {
                    call: None,
                    raise: None,
                })
                .map(|mut h| {
                    h.call = Some(Spanned::new(0..0, v.to_string()));
                    h
                })
            }

            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<RawHook, A::Error> {
                let mut hook = RawHook {
                    call: None,
                    raise: None,
                };
                while let Some(key) = map.next_key::<String>()? {
                    match key.as_str() {
                        "call" => hook.call = Some(map.next_value()?),
                        "raise" => hook.raise = Some(map.next_value()?),
                        other => {
                            return Err(serde::de::Error::custom(format!(
                                "unknown key `{other}` in a hook; expected `call` or `raise`"
                            )));
                        }
                    }
                }
                if hook.call.is_none() {
                    return Err(serde::de::Error::custom(
                        "a hook table needs `call = \"MODULE:ATTR\"`",
                    ));
                }
                Ok(hook)
            }
        }
        d.deserialize_any(Visitor)
    }
}

impl Hooks {
    /// Reads and checks `path`.
    pub fn load(path: &Path) -> Result<Hooks, HooksError> {
        let text = std::fs::read_to_string(path).map_err(|e| HooksError::Io {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
        Hooks::parse(&text, path)
    }

    /// Parses hooks text; `path` names it in errors.
    pub fn parse(text: &str, path: &Path) -> Result<Hooks, HooksError> {
        let invalid = |span: Option<Range<usize>>, message: String| {
            let (line, column) = span.map_or((1, 1), |s| line_col(text, s.start));
            HooksError::Invalid {
                path: path.to_path_buf(),
                line,
                column,
                message,
            }
        };
        let raw: RawFile = toml::from_str(text).map_err(|e| {
            let (span, message) = toml_message(text, &e);
            let message = if message.starts_with("invalid type") {
                format!("{message}; {HOOK_SHAPE}")
            } else if message.starts_with("unknown key") && !message.contains("in a hook") {
                format!("{message}; a hooks file names the phases auth, services and register")
            } else {
                message
            };
            invalid(span, message)
        })?;
        Hooks::from_raw(raw, text, path)
    }

    /// The hooks of `raw`, read from `text` (its spans are offsets into it), named `path` in
    /// errors: a hooks file, or the project configuration's `hooks` table.
    pub(crate) fn from_raw(raw: RawFile, text: &str, path: &Path) -> Result<Hooks, HooksError> {
        let invalid = |span: Option<Range<usize>>, message: String| {
            let (line, column) = span.map_or((1, 1), |s| line_col(text, s.start));
            HooksError::Invalid {
                path: path.to_path_buf(),
                line,
                column,
                message,
            }
        };
        let mut phases = Vec::new();
        for (phase, hook) in [
            (Phase::Auth, raw.auth),
            (Phase::Services, raw.services),
            (Phase::Register, raw.register),
        ] {
            let Some(hook) = hook else { continue };
            let span = hook.span();
            let RawHook { call, raise } = hook.into_inner();
            // A bare string's span is the phase's value itself.
            let call = match call {
                Some(c) if c.span() == (0..0) => Spanned::new(span, c.into_inner()),
                Some(c) => c,
                None => continue,
            };
            for (key, value) in
                std::iter::once(("call", &call)).chain(raise.iter().map(|r| ("raise", r)))
            {
                check_target(value.get_ref()).map_err(|why| {
                    invalid(
                        Some(value.span()),
                        format!("{}.{key} = {:?}: {why}", phase.name(), value.get_ref()),
                    )
                })?;
            }
            phases.push((
                phase,
                Hook {
                    call_at: line_col(text, call.span().start),
                    raise_at: raise.as_ref().map(|r| line_col(text, r.span().start)),
                    call: call.into_inner(),
                    raise: raise.map(Spanned::into_inner),
                },
            ));
        }
        // The file's order, so a message listing them reads as the file does.
        phases.sort_by_key(|(_, h)| h.call_at);
        Ok(Hooks {
            file: path.to_path_buf(),
            phases,
        })
    }

    /// The hook of `phase`, if the file names one.
    pub fn get(&self, phase: Phase) -> Option<&Hook> {
        self.phases
            .iter()
            .find(|(p, _)| *p == phase)
            .map(|(_, h)| h)
    }

    /// The file's position of `phase`'s `key` (`call` or `raise`), for an error the driver
    /// found when it imported what the file names.
    pub fn locate(&self, phase: &str, key: &str) -> Option<(usize, usize)> {
        let (_, hook) = self.phases.iter().find(|(p, _)| p.name() == phase)?;
        match key {
            "raise" => hook.raise_at,
            _ => Some(hook.call_at),
        }
    }

    /// The driver's view: `{"auth": {"call": ..., "raise": ...}, ...}`.
    pub fn to_json(&self) -> serde_json::Value {
        let mut map = serde_json::Map::new();
        for (phase, hook) in &self.phases {
            map.insert(
                phase.name().to_string(),
                serde_json::json!({"call": hook.call, "raise": hook.raise}),
            );
        }
        serde_json::Value::Object(map)
    }
}

/// `MODULE:ATTR`, each part a dotted Python name.
fn check_target(text: &str) -> Result<(), String> {
    let Some((module, attr)) = text.split_once(':') else {
        return Err("expected MODULE:ATTR, e.g. \"myapp.auth:verify_token\"".into());
    };
    let dotted = |s: &str| {
        !s.is_empty()
            && s.split('.').all(|part| {
                part.chars()
                    .next()
                    .is_some_and(|c| c.is_alphabetic() || c == '_')
                    && part.chars().all(|c| c.is_alphanumeric() || c == '_')
            })
    };
    if !dotted(module) {
        return Err(format!("`{module}` is not a module name"));
    }
    if !dotted(attr) {
        return Err(format!("`{attr}` is not an attribute name"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Hooks, HooksError> {
        Hooks::parse(text, Path::new("hooks.toml"))
    }

    #[test]
    fn a_phase_is_a_call_or_a_table_with_what_a_failing_user_raises() {
        let h = parse(
            "register = { call = \"app:reg\" }\nauth = { call = \"app.auth:verify\", raise = \"app.auth:AuthError\" }\nservices = \"app:Factory.create\"\n",
        )
        .unwrap();
        let auth = h.get(Phase::Auth).unwrap();
        assert_eq!(auth.call, "app.auth:verify");
        assert_eq!(auth.raise.as_deref(), Some("app.auth:AuthError"));
        assert_eq!(h.get(Phase::Services).unwrap().call, "app:Factory.create");
        assert_eq!(h.get(Phase::Services).unwrap().raise, None);
        // In the file's order.
        let order: Vec<Phase> = h.phases.iter().map(|(p, _)| *p).collect();
        assert_eq!(order, [Phase::Register, Phase::Auth, Phase::Services]);
        assert_eq!(h.locate("auth", "raise"), Some((2, 44)));
        assert_eq!(h.locate("auth", "call"), Some((2, 17)));
        assert_eq!(
            h.to_json()["auth"],
            serde_json::json!({"call": "app.auth:verify", "raise": "app.auth:AuthError"})
        );
    }

    #[test]
    fn bad_keys_and_targets_are_errors_at_their_line_and_column() {
        for (text, at, phrase) in [
            (
                "auth = \"app:f\"\nconnect = \"app:g\"\n",
                (2, 1),
                "unknown key `connect`",
            ),
            (
                "auth = { call = \"app:f\", rase = \"x:E\" }\n",
                (1, 8),
                "unknown key `rase`",
            ),
            ("services = \"app.f\"\n", (1, 12), "expected MODULE:ATTR"),
            (
                "register = \"app:1f\"\n",
                (1, 12),
                "`1f` is not an attribute name",
            ),
            (
                "auth = { call = \"my-app:f\" }\n",
                (1, 17),
                "`my-app` is not a module name",
            ),
            ("auth = 3\n", (1, 8), "MODULE:ATTR"),
            ("auth = \n", (1, 8), ""),
        ] {
            match parse(text) {
                Err(HooksError::Invalid {
                    line,
                    column,
                    message,
                    ..
                }) => {
                    assert_eq!((line, column), at, "{text:?}: {message}");
                    assert!(message.contains(phrase), "{text:?}: {message}");
                }
                other => panic!("{text:?}: {other:?}"),
            }
        }
    }
}
