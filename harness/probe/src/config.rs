//! Project configuration, the Python way: `[tool.racegate]` in `pyproject.toml`, or a
//! `racegate.toml` for projects that are not Python, found from the working directory upward
//! as ruff and pytest find theirs (in each folder `racegate.toml` first, then a `pyproject.toml`
//! that has a `[tool.racegate]` table; the nearest wins).
//!
//! ```toml
//! [tool.racegate]
//! app = "myapp.main:app"          # or url = "wss://staging.example.test/ws"
//! path = "/ws"
//! scenarios = ["scenarios"]       # folders (or files), relative to this file
//! tokens = "tokens.toml"          # per-user tokens; token_env = "MYAPP_TOKEN_{user}"
//! timeout_ms = 15000
//!
//! [tool.racegate.protocol]        # for every scenario without a [protocol] of its own
//! user_query = "user_id"
//!
//! [tool.racegate.hooks]           # the app's awaitables per phase (docs/app.md)
//! auth = { call = "myapp.auth:verify_token", raise = "myapp.auth:AuthError" }
//! ```
//!
//! Paths are relative to the file that names them. Flags override the file; `racegate config`
//! prints what is in force and where each value came from. An unknown key or a wrong type is an
//! error naming the file, line and column.

use std::ops::Range;
use std::path::{Path, PathBuf};

use std::sync::Arc;

use racegate_replay::scenario::{
    ProtocolTable, RawProtocol, ScenarioError, line_col, toml_message,
};
use serde::Deserialize;
use toml::Spanned;

use crate::app::hooks::{Hooks, HooksError, RawFile as RawHooks};

/// The configuration file's name for projects that have no `pyproject.toml`.
pub const RACEGATE_TOML: &str = "racegate.toml";
/// Python's project file, read for its `[tool.racegate]` table.
pub const PYPROJECT_TOML: &str = "pyproject.toml";

/// A configuration that cannot be used, with where.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("{}: {message}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS's words.
        message: String,
    },
    /// The file is not a valid configuration; 1-based line and column.
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
    /// The `hooks` table is wrong.
    #[error(transparent)]
    Hooks(#[from] HooksError),
    /// The `protocol` table is wrong.
    #[error(transparent)]
    Protocol(#[from] ScenarioError),
}

/// Where a setting was written: the file and its 1-based line and column.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Place {
    /// The file.
    pub file: PathBuf,
    /// 1-based line.
    pub line: usize,
    /// 1-based column.
    pub column: usize,
}

impl std::fmt::Display for Place {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}:{}", self.file.display(), self.line, self.column)
    }
}

/// One setting's value and where it was written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Setting<T> {
    /// The value (paths already made relative to the working directory's view of the file).
    pub value: T,
    /// Where.
    pub at: Place,
}

/// A project's racegate settings, as its configuration file writes them.
#[derive(Debug, Clone, Default)]
pub struct Config {
    /// The file they came from.
    pub file: Option<PathBuf>,
    /// The ASGI app (`MODULE:ATTR`).
    pub app: Option<Setting<String>>,
    /// The app is a factory.
    pub factory: Option<Setting<bool>>,
    /// The folder put first on `sys.path`.
    pub app_dir: Option<Setting<PathBuf>>,
    /// The WebSocket route.
    pub path: Option<Setting<String>>,
    /// A live server instead of an app.
    pub url: Option<Setting<String>>,
    /// The Python to run the app with.
    pub python: Option<Setting<PathBuf>>,
    /// uvicorn's `--ws`.
    pub ws: Option<Setting<String>>,
    /// uvicorn's `--lifespan`.
    pub lifespan: Option<Setting<String>>,
    /// Scenario files or folders.
    pub scenarios: Option<Setting<Vec<PathBuf>>>,
    /// `[tool.racegate.protocol]`, for every scenario without a `[protocol]` of its own.
    pub protocol: Option<Setting<Arc<ProtocolTable>>>,
    /// The app's awaitables per phase.
    pub hooks: Option<Setting<Hooks>>,
    /// The per-user tokens file.
    pub tokens: Option<Setting<PathBuf>>,
    /// The environment variable template holding each user's token.
    pub token_env: Option<Setting<String>>,
    /// The budget per scenario.
    pub timeout_ms: Option<Setting<u64>>,
    /// Inconclusive scenarios do not fail the gate.
    pub allow_inconclusive: Option<Setting<bool>>,
}

#[derive(Deserialize)]
struct Pyproject {
    tool: Option<Tools>,
}

#[derive(Deserialize)]
struct Tools {
    racegate: Option<Spanned<toml::Value>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Raw {
    app: Option<Spanned<String>>,
    factory: Option<Spanned<bool>>,
    app_dir: Option<Spanned<String>>,
    path: Option<Spanned<String>>,
    url: Option<Spanned<String>>,
    python: Option<Spanned<String>>,
    ws: Option<Spanned<String>>,
    lifespan: Option<Spanned<String>>,
    scenarios: Option<Spanned<Vec<Spanned<String>>>>,
    protocol: Option<Spanned<RawProtocol>>,
    hooks: Option<RawHooks>,
    tokens: Option<Spanned<String>>,
    token_env: Option<Spanned<String>>,
    timeout_ms: Option<Spanned<u64>>,
    allow_inconclusive: Option<Spanned<bool>>,
}

/// A configuration file's `Raw` table, wrapped so `toml` reads a pyproject's nested one with
/// the spans of the whole file.
#[derive(Deserialize)]
struct PyprojectRaw {
    tool: Option<ToolsRaw>,
}

#[derive(Deserialize)]
struct ToolsRaw {
    racegate: Option<Raw>,
}

impl Config {
    /// The nearest configuration from `dir` upward, if any.
    pub fn find(dir: &Path) -> Result<Config, ConfigError> {
        for folder in dir.ancestors() {
            let own = folder.join(RACEGATE_TOML);
            if own.is_file() {
                return Config::load(&own);
            }
            let pyproject = folder.join(PYPROJECT_TOML);
            if pyproject.is_file() && has_racegate_table(&pyproject)? {
                return Config::load(&pyproject);
            }
        }
        Ok(Config::default())
    }

    /// Reads `path`: a `racegate.toml`, or a `pyproject.toml`'s `[tool.racegate]`.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError::Io {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
        Config::parse(&text, path)
    }

    /// Parses configuration text; a file named `pyproject.toml` is read for its
    /// `[tool.racegate]` table, any other as a `racegate.toml`.
    pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
        let invalid = |span: Option<Range<usize>>, message: String| {
            let (line, column) = span.map_or((1, 1), |s| line_col(text, s.start));
            ConfigError::Invalid {
                path: path.to_path_buf(),
                line,
                column,
                message,
            }
        };
        let toml_error = |e: toml::de::Error| {
            let (span, message) = toml_message(text, &e);
            let message = if message.starts_with("unknown key") {
                format!(
                    "{message}; racegate's settings are app, factory, app_dir, path, url, python, \
                     ws, lifespan, scenarios, protocol, hooks, tokens, token_env, timeout_ms, \
                     allow_inconclusive"
                )
            } else {
                message
            };
            invalid(span, message)
        };
        let pyproject = path.file_name().is_some_and(|n| n == PYPROJECT_TOML);
        let raw = if pyproject {
            let doc: PyprojectRaw = toml::from_str(text).map_err(toml_error)?;
            match doc.tool.and_then(|t| t.racegate) {
                Some(raw) => raw,
                None => return Ok(Config::default()),
            }
        } else {
            toml::from_str::<Raw>(text).map_err(toml_error)?
        };
        let base = path.parent().unwrap_or(Path::new(""));
        let at = |span: Range<usize>| {
            let (line, column) = line_col(text, span.start);
            Place {
                file: path.to_path_buf(),
                line,
                column,
            }
        };
        let plain = |v: Option<Spanned<String>>| {
            v.map(|v| Setting {
                at: at(v.span()),
                value: v.into_inner(),
            })
        };
        let flag = |v: Option<Spanned<bool>>| {
            v.map(|v| Setting {
                at: at(v.span()),
                value: v.into_inner(),
            })
        };
        let relative = |v: Option<Spanned<String>>| {
            v.map(|v| Setting {
                at: at(v.span()),
                value: base.join(v.into_inner()),
            })
        };
        if let (Some(app), Some(_)) = (&raw.app, &raw.url) {
            return Err(invalid(
                Some(app.span()),
                "set `app` (an ASGI app run in-process) or `url` (a live server), not both".into(),
            ));
        }
        for (key, value, allowed) in [
            (
                "ws",
                &raw.ws,
                &["auto", "websockets", "websockets-sansio", "wsproto"][..],
            ),
            ("lifespan", &raw.lifespan, &["auto", "on", "off"][..]),
        ] {
            if let Some(v) = value
                && !allowed.contains(&v.get_ref().as_str())
            {
                return Err(invalid(
                    Some(v.span()),
                    format!(
                        "`{key}` is {:?}; expected one of {}",
                        v.get_ref(),
                        allowed.join(", ")
                    ),
                ));
            }
        }
        if let Some(t) = &raw.timeout_ms
            && *t.get_ref() == 0
        {
            return Err(invalid(
                Some(t.span()),
                "`timeout_ms` must be at least 1".into(),
            ));
        }
        let hooks = match raw.hooks {
            Some(h) => {
                let hooks = Hooks::from_raw(h, text, path)?;
                let first = hooks.phases.first().map(|(_, h)| h.call.clone());
                let place = first
                    .and_then(|_| hooks.phases.first())
                    .and_then(|(p, _)| hooks.locate(p.name(), "call"))
                    .map_or_else(
                        || Place {
                            file: path.to_path_buf(),
                            line: 1,
                            column: 1,
                        },
                        |(line, column)| Place {
                            file: path.to_path_buf(),
                            line,
                            column,
                        },
                    );
                Some(Setting {
                    value: hooks,
                    at: place,
                })
            }
            None => None,
        };
        let protocol = match raw.protocol {
            Some(table) => {
                let place = at(table.span());
                let table =
                    ProtocolTable::new(table.into_inner(), text.to_string(), path.to_path_buf())?;
                Some(Setting {
                    value: Arc::new(table),
                    at: place,
                })
            }
            None => None,
        };
        Ok(Config {
            file: Some(path.to_path_buf()),
            app: plain(raw.app),
            factory: flag(raw.factory),
            app_dir: relative(raw.app_dir),
            path: plain(raw.path),
            url: plain(raw.url),
            python: raw.python.map(|v| {
                let written = v.get_ref().clone();
                // A bare command name is looked up on PATH; a path is the file's.
                let value = if written.contains('/') {
                    base.join(&written)
                } else {
                    PathBuf::from(&written)
                };
                Setting {
                    at: at(v.span()),
                    value,
                }
            }),
            ws: plain(raw.ws),
            lifespan: plain(raw.lifespan),
            scenarios: raw.scenarios.map(|list| Setting {
                at: at(list.span()),
                value: list
                    .into_inner()
                    .into_iter()
                    .map(|p| base.join(p.into_inner()))
                    .collect(),
            }),
            protocol,
            hooks,
            tokens: relative(raw.tokens),
            token_env: plain(raw.token_env),
            timeout_ms: raw.timeout_ms.map(|v| Setting {
                at: at(v.span()),
                value: v.into_inner(),
            }),
            allow_inconclusive: flag(raw.allow_inconclusive),
        })
    }
}

/// True when `pyproject` has a `[tool.racegate]` table (a file that does not parse is left for
/// `load` to report, so a broken pyproject never goes unnoticed).
fn has_racegate_table(pyproject: &Path) -> Result<bool, ConfigError> {
    let text = std::fs::read_to_string(pyproject).map_err(|e| ConfigError::Io {
        path: pyproject.to_path_buf(),
        message: e.to_string(),
    })?;
    match toml::from_str::<Pyproject>(&text) {
        Ok(doc) => Ok(doc.tool.and_then(|t| t.racegate).is_some()),
        Err(_) => Ok(text.contains("[tool.racegate")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str, name: &str) -> Result<Config, ConfigError> {
        Config::parse(text, &Path::new("/project").join(name))
    }

    #[test]
    fn a_pyprojects_tool_racegate_table_is_read_with_paths_relative_to_it() {
        let c = parse(
            "[project]\nname = \"x\"\n\n[tool.ruff]\nline-length = 100\n\n[tool.racegate]\napp = \"myapp.main:app\"\npath = \"/ws\"\nscenarios = [\"scenarios\", \"more/one.toml\"]\ntokens = \"tokens.toml\"\ntimeout_ms = 15000\n\n[tool.racegate.hooks]\nauth = \"myapp.auth:verify\"\n",
            PYPROJECT_TOML,
        )
        .unwrap();
        assert_eq!(c.app.as_ref().unwrap().value, "myapp.main:app");
        assert_eq!(
            (
                c.app.as_ref().unwrap().at.line,
                c.app.as_ref().unwrap().at.column
            ),
            (8, 7)
        );
        assert_eq!(
            c.scenarios.unwrap().value,
            [
                PathBuf::from("/project/scenarios"),
                PathBuf::from("/project/more/one.toml")
            ]
        );
        assert_eq!(
            c.tokens.unwrap().value,
            PathBuf::from("/project/tokens.toml")
        );
        assert_eq!(c.timeout_ms.unwrap().value, 15000);
        let hooks = c.hooks.unwrap();
        assert_eq!(hooks.value.phases.len(), 1);
        assert_eq!((hooks.at.line, hooks.at.column), (15, 8));
    }

    #[test]
    fn a_pyproject_without_the_table_configures_nothing() {
        let c = parse("[project]\nname = \"x\"\n", PYPROJECT_TOML).unwrap();
        assert!(c.file.is_none() && c.app.is_none() && c.scenarios.is_none());
    }

    #[test]
    fn unknown_keys_wrong_types_and_bad_values_are_errors_at_their_line_and_column() {
        for (text, name, at, phrase) in [
            (
                "[tool.racegate]\napp = \"a:b\"\nap = 1\n",
                PYPROJECT_TOML,
                (3, 1),
                "unknown key `ap`",
            ),
            (
                "timeout_ms = \"10\"\n",
                RACEGATE_TOML,
                (1, 14),
                "invalid type",
            ),
            (
                "app = \"a:b\"\nurl = \"ws://x/\"\n",
                RACEGATE_TOML,
                (1, 7),
                "not both",
            ),
            (
                "ws = \"uvloop\"\n",
                RACEGATE_TOML,
                (1, 6),
                "expected one of auto",
            ),
            ("timeout_ms = 0\n", RACEGATE_TOML, (1, 14), "at least 1"),
            (
                "[hooks]\nauth = \"nocolon\"\n",
                RACEGATE_TOML,
                (2, 8),
                "expected MODULE:ATTR",
            ),
        ] {
            let (line, column, message) = match parse(text, name) {
                Err(ConfigError::Invalid {
                    line,
                    column,
                    message,
                    ..
                }) => (line, column, message),
                Err(ConfigError::Hooks(HooksError::Invalid {
                    line,
                    column,
                    message,
                    ..
                })) => (line, column, message),
                other => panic!("{text:?}: {other:?}"),
            };
            assert_eq!((line, column), at, "{text:?}: {message}");
            assert!(message.contains(phrase), "{text:?}: {message}");
        }
    }

    #[test]
    fn the_protocol_table_applies_to_scenarios_without_one_and_its_errors_point_into_the_file() {
        let c = parse(
            "[tool.racegate]\napp = \"a:b\"\n\n[tool.racegate.protocol]\nuser_query = \"user_id\"\nevents = []\n",
            PYPROJECT_TOML,
        )
        .unwrap();
        let table = c.protocol.unwrap();
        assert_eq!((table.at.line, table.at.column), (4, 1));
        let scenario = "name = \"s\"\n[[user]]\nid = \"u\"\n";
        let s = racegate_replay::scenario::parse_with(
            scenario,
            Path::new("s.toml"),
            Some(&table.value),
        )
        .unwrap();
        assert_eq!(s.protocol.user_query.as_deref(), Some("user_id"));
        assert!(s.protocol.events.is_empty());
        // A scenario with a [protocol] of its own keeps it.
        let own = format!("{scenario}[protocol]\nuser_query = \"token\"\n");
        let s =
            racegate_replay::scenario::parse_with(&own, Path::new("s.toml"), Some(&table.value))
                .unwrap();
        assert_eq!(s.protocol.user_query.as_deref(), Some("token"));
        assert!(s.protocol.events.len() > 1);
        // A bad table is an error at its place in the configuration.
        match parse(
            "[tool.racegate.protocol]\nevents = [\"a\", \"a\"]\n",
            PYPROJECT_TOML,
        ) {
            Err(ConfigError::Protocol(ScenarioError::Invalid {
                path, line, column, ..
            })) => {
                assert_eq!(
                    (path, line, column),
                    (PathBuf::from("/project/pyproject.toml"), 2, 16)
                );
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn the_nearest_file_wins_and_racegate_toml_before_pyproject() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        let sub = root.join("a/b");
        std::fs::create_dir_all(&sub).unwrap();
        std::fs::write(
            root.join(PYPROJECT_TOML),
            "[tool.racegate]\napp = \"root:app\"\n",
        )
        .unwrap();
        assert_eq!(Config::find(&sub).unwrap().app.unwrap().value, "root:app");
        std::fs::write(
            root.join("a").join(PYPROJECT_TOML),
            "[project]\nname = \"a\"\n",
        )
        .unwrap();
        assert_eq!(
            Config::find(&sub).unwrap().app.unwrap().value,
            "root:app",
            "a pyproject without [tool.racegate] is passed over"
        );
        std::fs::write(root.join("a").join(RACEGATE_TOML), "app = \"a:app\"\n").unwrap();
        assert_eq!(Config::find(&sub).unwrap().app.unwrap().value, "a:app");
        assert!(Config::find(Path::new("/")).unwrap().file.is_none());
    }
}
