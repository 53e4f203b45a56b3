//! What `probe` and `explore` run against, resolved from the flags and the project's
//! configuration (`[tool.racegate]` in pyproject.toml, or racegate.toml): a flag wins over the
//! file, the file over the default. `racegate config` prints the result with where each value
//! came from.

use std::fmt;
use std::path::{Path, PathBuf};

use crate::logging::note;
use clap::{Args, ValueEnum};
use racegate_probe::app::{AppTarget, Hooks, Load, driver};
use racegate_probe::config::{Config, Place, Setting};
use std::sync::Arc;

use racegate_replay::Scenario;
use racegate_replay::scenario::{ProtocolTable, RawProtocol};

/// The flags that name an ASGI app and how to run it, shared by `probe` and `explore` so they
/// read the same. Each overrides the project configuration's key of the same name.
#[derive(Args)]
pub(crate) struct AppArgs {
    /// An ASGI app, run in-process on a virtual clock with uvicorn's own WebSocket code:
    /// MODULE:ATTR, as uvicorn takes it (docs/app.md). Default: `app` in [tool.racegate].
    #[arg(long, value_name = "MODULE:ATTR")]
    app: Option<String>,
    /// ATTR is a callable that returns the app (uvicorn's --factory).
    #[arg(long)]
    factory: bool,
    /// Put DIR first on the module search path (uvicorn's --app-dir; default `.`).
    #[arg(long, value_name = "DIR")]
    app_dir: Option<PathBuf>,
    /// The app's WebSocket route the clients connect to, optionally with a query (default
    /// `/ws`).
    #[arg(long, value_name = "PATH")]
    path: Option<String>,
    /// The Python that can import the app. Default: RACEGATE_PYTHON, else the active virtual
    /// environment's, else python3.
    #[arg(long, value_name = "PATH")]
    python: Option<PathBuf>,
    /// uvicorn's WebSocket implementation (its --ws); auto picks the one uvicorn would.
    #[arg(long, value_enum)]
    ws: Option<Ws>,
    /// Run the app's lifespan (startup, shutdown) as uvicorn's --lifespan does (default auto).
    #[arg(long, value_enum)]
    lifespan: Option<Lifespan>,
    /// A TOML file naming the app's awaitable for each setup phase (auth, services,
    /// register), which then takes the scenario's `[server]` time and fails where `fail_at`
    /// says.
    #[arg(long, value_name = "FILE")]
    hooks: Option<PathBuf>,
    /// Write what the app prints and logs here (by default it is discarded, but for the last
    /// lines, which explain a failure).
    #[arg(long, value_name = "FILE")]
    app_log: Option<PathBuf>,
    /// Read the project configuration from this file instead of looking for pyproject.toml or
    /// racegate.toml from here upward.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// A TOML file whose `[protocol]` applies to every scenario without one of its own (for a
    /// one-off; `[tool.racegate.protocol]` in the configuration is the lasting way).
    #[arg(long, value_name = "FILE")]
    protocol: Option<PathBuf>,
}

#[derive(Clone, Copy, ValueEnum)]
enum Ws {
    Auto,
    Websockets,
    WebsocketsSansio,
    Wsproto,
}

impl Ws {
    fn name(self) -> &'static str {
        match self {
            Ws::Auto => "auto",
            Ws::Websockets => "websockets",
            Ws::WebsocketsSansio => "websockets-sansio",
            Ws::Wsproto => "wsproto",
        }
    }
}

#[derive(Clone, Copy, ValueEnum)]
enum Lifespan {
    Auto,
    On,
    Off,
}

impl Lifespan {
    fn name(self) -> &'static str {
        match self {
            Lifespan::Auto => "auto",
            Lifespan::On => "on",
            Lifespan::Off => "off",
        }
    }
}

/// Where a value in force came from.
#[derive(Debug, Clone)]
pub(crate) enum Source {
    /// A command-line flag.
    Flag(&'static str),
    /// The project configuration, at this place.
    File(Place),
    /// racegate's default.
    Default,
    /// The environment or the PATH.
    Environment(&'static str),
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::Flag(flag) => write!(f, "{flag}"),
            Source::File(place) => write!(f, "{place}"),
            Source::Default => f.write_str("default"),
            Source::Environment(what) => f.write_str(what),
        }
    }
}

/// One value in force and its source.
#[derive(Debug, Clone)]
pub(crate) struct Sourced<T> {
    pub(crate) value: T,
    pub(crate) source: Source,
}

/// `flag` if given, else the configuration's `setting`, else `default`.
fn pick<T: Clone>(
    flag: Option<T>,
    name: &'static str,
    setting: Option<&Setting<T>>,
    default: T,
) -> Sourced<T> {
    match (flag, setting) {
        (Some(value), _) => Sourced {
            value,
            source: Source::Flag(name),
        },
        (None, Some(s)) => Sourced {
            value: s.value.clone(),
            source: Source::File(s.at.clone()),
        },
        (None, None) => Sourced {
            value: default,
            source: Source::Default,
        },
    }
}

/// The settings in force for a command that runs scenarios against a server.
pub(crate) struct Settings {
    /// The configuration file, if one was found.
    pub(crate) file: Option<PathBuf>,
    /// The live server, if that is what runs.
    pub(crate) url: Option<Sourced<String>>,
    /// The app, if that is what runs.
    pub(crate) app: Option<Sourced<String>>,
    pub(crate) factory: Sourced<bool>,
    pub(crate) app_dir: Sourced<PathBuf>,
    pub(crate) path: Sourced<String>,
    pub(crate) python: Sourced<PathBuf>,
    pub(crate) ws: Sourced<String>,
    pub(crate) lifespan: Sourced<String>,
    pub(crate) hooks: Option<Sourced<Hooks>>,
    /// The `[protocol]` for scenarios without one of their own.
    pub(crate) protocol: Option<Sourced<Arc<ProtocolTable>>>,
    pub(crate) app_log: Option<PathBuf>,
    /// Scenario files or folders (empty: `scenarios/` here, else the bundled ones).
    pub(crate) scenarios: Sourced<Vec<PathBuf>>,
    /// The per-user tokens file.
    pub(crate) tokens: Option<Sourced<PathBuf>>,
    /// The environment variable template for tokens, for scenarios whose `[protocol]` names
    /// none.
    pub(crate) token_env: Option<Sourced<String>>,
    pub(crate) timeout_ms: Option<Sourced<u64>>,
    pub(crate) allow_inconclusive: Sourced<bool>,
}

/// The other flags that the configuration can set, as each command names them.
pub(crate) struct Flags<'a> {
    pub(crate) url: Option<&'a str>,
    pub(crate) scenarios: &'a [PathBuf],
    pub(crate) tokens: Option<&'a Path>,
    pub(crate) timeout_ms: Option<u64>,
    pub(crate) allow_inconclusive: bool,
}

impl AppArgs {
    /// The settings in force: these flags and `flags` over the project configuration.
    pub(crate) fn settings(&self, flags: &Flags<'_>) -> anyhow::Result<Settings> {
        let config = match &self.config {
            Some(path) => Config::load(path)?,
            None => Config::find(&std::env::current_dir()?)?,
        };
        let (url, app) = match (flags.url, &self.app) {
            (Some(url), _) => (
                Some(pick(Some(url.to_string()), "--url", None, String::new())),
                None,
            ),
            (None, Some(app)) => (
                None,
                Some(pick(Some(app.clone()), "--app", None, String::new())),
            ),
            (None, None) => match (&config.url, &config.app) {
                (Some(u), _) => (Some(pick(None, "", Some(u), String::new())), None),
                (None, Some(a)) => (None, Some(pick(None, "", Some(a), String::new()))),
                (None, None) => (None, None),
            },
        };
        let python_flag = self.python.clone();
        let python = match (&python_flag, &config.python) {
            (Some(p), _) => pick(Some(p.clone()), "--python", None, PathBuf::new()),
            (None, Some(s)) => pick(None, "", Some(s), PathBuf::new()),
            (None, None) => Sourced {
                value: driver::python(None),
                source: Source::Environment(
                    "RACEGATE_PYTHON, else the active virtual environment, else python3",
                ),
            },
        };
        let hooks = match (&self.hooks, &config.hooks) {
            (Some(path), _) => Some(Sourced {
                value: Hooks::load(path)?,
                source: Source::Flag("--hooks"),
            }),
            (None, Some(h)) => Some(Sourced {
                value: h.value.clone(),
                source: Source::File(h.at.clone()),
            }),
            (None, None) => None,
        };
        let protocol = match (&self.protocol, &config.protocol) {
            (Some(path), _) => Some(Sourced {
                value: Arc::new(protocol_file(path)?),
                source: Source::Flag("--protocol"),
            }),
            (None, Some(p)) => Some(Sourced {
                value: Arc::clone(&p.value),
                source: Source::File(p.at.clone()),
            }),
            (None, None) => None,
        };
        let optional = |flag: Option<PathBuf>, name, setting: Option<&Setting<PathBuf>>| {
            flag.map(|v| Sourced {
                value: v,
                source: Source::Flag(name),
            })
            .or_else(|| {
                setting.map(|s| Sourced {
                    value: s.value.clone(),
                    source: Source::File(s.at.clone()),
                })
            })
        };
        let settings = Settings {
            file: config.file.clone(),
            url,
            app,
            factory: pick(
                self.factory.then_some(true),
                "--factory",
                config.factory.as_ref(),
                false,
            ),
            app_dir: pick(
                self.app_dir.clone(),
                "--app-dir",
                config.app_dir.as_ref(),
                ".".into(),
            ),
            path: pick(
                self.path.clone(),
                "--path",
                config.path.as_ref(),
                "/ws".into(),
            ),
            python,
            ws: pick(
                self.ws.map(|w| w.name().to_string()),
                "--ws",
                config.ws.as_ref(),
                "auto".into(),
            ),
            lifespan: pick(
                self.lifespan.map(|l| l.name().to_string()),
                "--lifespan",
                config.lifespan.as_ref(),
                "auto".into(),
            ),
            hooks,
            protocol,
            app_log: self.app_log.clone(),
            scenarios: pick(
                (!flags.scenarios.is_empty()).then(|| flags.scenarios.to_vec()),
                "--scenario",
                config.scenarios.as_ref(),
                Vec::new(),
            ),
            tokens: optional(
                flags.tokens.map(Path::to_path_buf),
                "--tokens",
                config.tokens.as_ref(),
            ),
            token_env: config.token_env.as_ref().map(|s| Sourced {
                value: s.value.clone(),
                source: Source::File(s.at.clone()),
            }),
            timeout_ms: flags
                .timeout_ms
                .map(|v| Sourced {
                    value: v,
                    source: Source::Flag("--timeout-ms"),
                })
                .or_else(|| {
                    config.timeout_ms.as_ref().map(|s| Sourced {
                        value: s.value,
                        source: Source::File(s.at.clone()),
                    })
                }),
            allow_inconclusive: pick(
                flags.allow_inconclusive.then_some(true),
                "--allow-inconclusive",
                config.allow_inconclusive.as_ref(),
                false,
            ),
        };
        if settings.url.is_some() {
            let app_only = [
                ("--factory", self.factory),
                ("--app-dir", self.app_dir.is_some()),
                ("--path", self.path.is_some()),
                ("--python", self.python.is_some()),
                ("--ws", self.ws.is_some()),
                ("--lifespan", self.lifespan.is_some()),
                ("--hooks", self.hooks.is_some()),
                ("--app-log", self.app_log.is_some()),
            ];
            if let Some((flag, _)) = app_only.iter().find(|(_, given)| *given) {
                anyhow::bail!(
                    "{flag} applies to an app run in-process (--app, or `app` in [tool.racegate]), \
                     not to --url"
                );
            }
        }
        Ok(settings)
    }
}

impl Settings {
    /// The app to run, when the settings name one.
    pub(crate) fn app_target(&self) -> anyhow::Result<Option<AppTarget>> {
        let Some(app) = &self.app else {
            return Ok(None);
        };
        let name = &app.value;
        if !name.contains(':') || name.starts_with(':') || name.ends_with(':') {
            anyhow::bail!(
                "app {name} ({}): expected MODULE:ATTR, as uvicorn takes it (e.g. myapp.main:app)",
                app.source
            );
        }
        Ok(Some(AppTarget {
            load: Load {
                app: name.clone(),
                factory: self.factory.value,
                app_dir: self.app_dir.value.clone(),
                ws: self.ws.value.clone(),
                lifespan: self.lifespan.value.clone(),
                path: self.path.value.clone(),
                hooks: self.hooks.as_ref().map(|h| h.value.clone()),
            },
            python: self.python.value.clone(),
            log: self.app_log.clone(),
        }))
    }

    /// The scenarios to run, with the configuration's `token_env` for those whose `[protocol]`
    /// names none.
    pub(crate) fn load_scenarios(&self) -> anyhow::Result<Vec<Scenario>> {
        let fallback = self.protocol.as_ref().map(|p| &*p.value);
        let mut scenarios = crate::scenarios::resolve_with(&self.scenarios.value, fallback)?;
        if let Some(env) = &self.token_env {
            for s in &mut scenarios {
                if s.protocol.token_env.is_none() {
                    s.protocol.token_env = Some(env.value.clone());
                }
            }
        }
        Ok(scenarios)
    }

    /// Every setting in force, one a line, with where it came from: `racegate config`.
    pub(crate) fn describe(&self) -> String {
        let mut rows: Vec<(&str, String, String)> = Vec::new();
        let mut row = |key: &'static str, value: String, source: Option<&Source>| {
            rows.push((key, value, source.map_or(String::new(), Source::to_string)));
        };
        match (&self.url, &self.app) {
            (Some(url), _) => row("url", url.value.clone(), Some(&url.source)),
            (None, Some(app)) => row("app", app.value.clone(), Some(&app.source)),
            (None, None) => row("app", "(none: give --app or --url)".into(), None),
        }
        if self.url.is_none() {
            row(
                "factory",
                self.factory.value.to_string(),
                Some(&self.factory.source),
            );
            row(
                "app_dir",
                self.app_dir.value.display().to_string(),
                Some(&self.app_dir.source),
            );
            row("path", self.path.value.clone(), Some(&self.path.source));
            row(
                "python",
                self.python.value.display().to_string(),
                Some(&self.python.source),
            );
            row("ws", self.ws.value.clone(), Some(&self.ws.source));
            row(
                "lifespan",
                self.lifespan.value.clone(),
                Some(&self.lifespan.source),
            );
            match &self.hooks {
                Some(h) => {
                    let phases: Vec<String> = h
                        .value
                        .phases
                        .iter()
                        .map(|(p, hook)| format!("{} = {}", p.name(), hook.call))
                        .collect();
                    row("hooks", phases.join(", "), Some(&h.source));
                }
                None => row(
                    "hooks",
                    "(none: the app's own timings)".into(),
                    Some(&Source::Default),
                ),
            }
        }
        match &self.protocol {
            Some(p) => row(
                "protocol",
                format!(
                    "for scenarios without their own: {}",
                    p.value.file().display()
                ),
                Some(&p.source),
            ),
            None => row(
                "protocol",
                "each scenario's own, else racegate's wire protocol".into(),
                Some(&Source::Default),
            ),
        }
        let scenarios = if self.scenarios.value.is_empty() {
            "scenarios/ here, else the bundled ones".to_string()
        } else {
            let list: Vec<String> = self
                .scenarios
                .value
                .iter()
                .map(|p| p.display().to_string())
                .collect();
            list.join(", ")
        };
        row("scenarios", scenarios, Some(&self.scenarios.source));
        match &self.tokens {
            Some(t) => row("tokens", t.value.display().to_string(), Some(&t.source)),
            None => row("tokens", "(none)".into(), Some(&Source::Default)),
        }
        if let Some(e) = &self.token_env {
            row("token_env", e.value.clone(), Some(&e.source));
        }
        match &self.timeout_ms {
            Some(t) => row("timeout_ms", t.value.to_string(), Some(&t.source)),
            None => row(
                "timeout_ms",
                "each scenario's own time + 10000".into(),
                Some(&Source::Default),
            ),
        }
        row(
            "allow_inconclusive",
            self.allow_inconclusive.value.to_string(),
            Some(&self.allow_inconclusive.source),
        );
        let key_w = rows.iter().map(|r| r.0.len()).max().unwrap_or(0);
        let value_w = rows
            .iter()
            .map(|r| r.1.chars().count())
            .max()
            .unwrap_or(0)
            .min(60);
        let mut out = match &self.file {
            Some(f) => format!("racegate settings (configuration: {})\n", f.display()),
            None => "racegate settings (no pyproject.toml [tool.racegate] or racegate.toml here or above)\n"
                .to_string(),
        };
        for (key, value, source) in rows {
            let source = if source.is_empty() {
                String::new()
            } else {
                format!("  ({source})")
            };
            out.push_str(&format!("{key:<key_w$}  {value:<value_w$}{source}\n"));
        }
        out
    }
}

/// `--protocol FILE`: a TOML file with one `[protocol]` table.
fn protocol_file(path: &Path) -> anyhow::Result<ProtocolTable> {
    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct File {
        protocol: RawProtocol,
    }
    let text = std::fs::read_to_string(path)
        .map_err(|e| anyhow::anyhow!("--protocol {}: {e}", path.display()))?;
    let file: File = toml::from_str(&text).map_err(|e| {
        let (span, message) = racegate_replay::scenario::toml_message(&text, &e);
        let (line, column) = span.map_or((1, 1), |s| {
            racegate_replay::scenario::line_col(&text, s.start)
        });
        anyhow::anyhow!("{}:{line}:{column}: {message}", path.display())
    })?;
    Ok(ProtocolTable::new(file.protocol, text, path.to_path_buf())?)
}

/// A user's `fail_at` reaches the app through the hook of its phase: a hook without `raise` has
/// nothing to fail with (bad input), and a phase without a hook leaves it to the app (said once).
pub(crate) fn check_fail_at(app: &AppTarget, scenarios: &[Scenario]) -> anyhow::Result<()> {
    let mut unhooked = Vec::new();
    for s in scenarios {
        for user in &s.users {
            let Some(phase) = user.fail_at else { continue };
            match app.load.hooks.as_ref().and_then(|h| h.get(phase)) {
                Some(hook) if hook.raise.is_none() => anyhow::bail!(
                    "{}: user {:?} fails at {}, but the hooks file {} names no exception for \
                     it: write `{} = {{ call = \"{}\", raise = \"MODULE:Exception\" }}`",
                    s.file.display(),
                    user.id,
                    phase.name(),
                    app.load
                        .hooks
                        .as_ref()
                        .map_or(String::new(), |h| h.file.display().to_string()),
                    phase.name(),
                    hook.call
                ),
                Some(_) => {}
                None => {
                    if !unhooked.contains(&phase.name()) {
                        unhooked.push(phase.name());
                    }
                }
            }
        }
    }
    if !unhooked.is_empty() {
        note!(
            "scenarios fail users at {}, but no hook names the app's awaitable for it \
             (--hooks): there the app's own code decides",
            unhooked.join(", ")
        );
    }
    Ok(())
}
