//! The flags that name an ASGI app and how to run it (`probe --app`, `explore --app`), shared by
//! both commands so they read the same.

use std::path::PathBuf;

use clap::{Args, ValueEnum};
use racegate_probe::app::{AppTarget, Hooks, Load, driver};
use racegate_replay::Scenario;

#[derive(Args)]
pub(crate) struct AppArgs {
    /// An ASGI app, run in-process on a virtual clock with uvicorn's own WebSocket code:
    /// MODULE:ATTR, as uvicorn takes it (docs/app.md).
    #[arg(long, value_name = "MODULE:ATTR")]
    app: Option<String>,
    /// With --app: ATTR is a callable that returns the app (uvicorn's --factory).
    #[arg(long, requires = "app")]
    factory: bool,
    /// With --app: put DIR first on the module search path (uvicorn's --app-dir).
    #[arg(long, value_name = "DIR", default_value = ".", requires = "app")]
    app_dir: PathBuf,
    /// With --app: the WebSocket route the clients connect to, optionally with a query.
    #[arg(long, value_name = "PATH", default_value = "/ws", requires = "app")]
    path: String,
    /// With --app: the Python that can import the app. Default: RACEGATE_PYTHON, else the
    /// active virtual environment's, else python3.
    #[arg(long, value_name = "PATH", requires = "app")]
    python: Option<PathBuf>,
    /// With --app: uvicorn's WebSocket implementation (its --ws); auto picks the one uvicorn
    /// would.
    #[arg(long, value_enum, default_value_t = Ws::Auto, requires = "app")]
    ws: Ws,
    /// With --app: run the app's lifespan (startup, shutdown) as uvicorn's --lifespan does.
    #[arg(long, value_enum, default_value_t = Lifespan::Auto, requires = "app")]
    lifespan: Lifespan,
    /// With --app: a TOML file naming the app's awaitable for each setup phase (auth, services,
    /// register), which then takes the scenario's `[server]` time and fails where `fail_at`
    /// says.
    #[arg(long, value_name = "FILE", requires = "app")]
    hooks: Option<PathBuf>,
    /// With --app: write what the app prints and logs here (by default it is discarded, but
    /// for the last lines, which explain a failure).
    #[arg(long, value_name = "FILE", requires = "app")]
    app_log: Option<PathBuf>,
}

impl AppArgs {
    /// The app, when `--app` is given; its hooks file read and checked.
    pub(crate) fn target(&self) -> anyhow::Result<Option<AppTarget>> {
        match &self.app {
            Some(app) => app_target(self, app).map(Some),
            None => Ok(None),
        }
    }
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

/// The app and how to run it, from the flags; the hooks file is read and checked here.
fn app_target(args: &AppArgs, app: &str) -> anyhow::Result<AppTarget> {
    if !app.contains(':') || app.starts_with(':') || app.ends_with(':') {
        anyhow::bail!(
            "--app {app}: expected MODULE:ATTR, as uvicorn takes it (e.g. myapp.main:app)"
        );
    }
    let hooks = match &args.hooks {
        Some(path) => Some(Hooks::load(path)?),
        None => None,
    };
    Ok(AppTarget {
        load: Load {
            app: app.to_string(),
            factory: args.factory,
            app_dir: args.app_dir.clone(),
            ws: args.ws.name().to_string(),
            lifespan: args.lifespan.name().to_string(),
            path: args.path.clone(),
            hooks,
        },
        python: driver::python(args.python.as_deref()),
        log: args.app_log.clone(),
    })
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
        eprintln!(
            "note: scenarios fail users at {}, but no hook names the app's awaitable for it \
             (--hooks): there the app's own code decides",
            unhooked.join(", ")
        );
    }
    Ok(())
}
