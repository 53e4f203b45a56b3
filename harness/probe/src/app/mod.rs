//! `probe --app`: a scenario's clients against a Python ASGI application run in-process, on a
//! virtual clock. The second transport under probe's one record stream: the clients are the
//! same client (tungstenite) with the same schedule, the records the same [`Record`]s, and the
//! one checker judges them. What differs is the server and the clock.
//!
//! - [`driver`]: the Python process (`driver.py`, inside the binary), which imports the app as
//!   uvicorn does and serves each connection with uvicorn's own WebSocket protocol code over
//!   an in-memory transport, on an asyncio loop whose clock jumps to the next timer when
//!   nothing is ready. Each scenario runs in a process forked from the started app, so no
//!   module-level state of one reaches the next.
//! - [`client`]: each user's client, driven step by step on that clock.
//! - [`hooks`]: the hooks file, which gives the scenario's `[server]` phase times (and
//!   `fail_at`) to the app's own awaitables.
//!
//! Because the driver sits on the app's side of the ASGI connection, it also reports what no
//! client can see: a use of the socket its state forbids (`accept-first`), an exception that
//! escapes the app (`abnormal-close`), a handler that never returns after its client left
//! (`stuck`), and a task spawned for a connection still pending after it ended (`leak`). They
//! reach the checker as records like any other ([`Seen::AppMisuse`] and its siblings).

pub mod client;
pub mod driver;
pub mod explore;
pub mod hooks;

use std::path::PathBuf;
use std::time::Instant;

use racegate_replay::scenario::Scenario;
use tokio_tungstenite::tungstenite::handshake::client::Request;

use crate::ProbeError;
use crate::probe::{Clock, Options, ProbeOutcome, conclude, own_ms, prepare};
use crate::session::{Record, Seen};
use crate::target::Target;
pub use driver::{Driver, Load, Loaded};
pub use hooks::{Hooks, HooksError};

use client::{Client, Times};
use driver::{CaseConn, CaseTimes, FactKind};

/// Why the app could not be driven: bad input, exit 2. A misbehaving app is not an error; it
/// is a violation.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    /// The Python could not be started, or cannot run the driver.
    #[error(
        "no usable Python at {}: {reason}; give one with --python, RACEGATE_PYTHON or an active \
         virtual environment (the one the app is installed in)",
        python.display()
    )]
    NoPython {
        /// The Python tried.
        python: PathBuf,
        /// What went wrong.
        reason: String,
    },
    /// The Python cannot import what the driver needs (uvicorn and its WebSocket library).
    #[error("{0}")]
    Environment(String),
    /// `--app` names nothing importable, or importing it raised.
    #[error("{0}")]
    App(String),
    /// The app's lifespan startup failed.
    #[error("{0}")]
    Startup(String),
    /// `--path` is no WebSocket route of the app.
    #[error("{0}")]
    Path(String),
    /// The hooks file is wrong, or names something that cannot be hooked.
    #[error(transparent)]
    Hooks(#[from] HooksError),
    /// A hook named something the driver could not import or use; reported at its line by
    /// [`AppError::at_hook`].
    #[error("--hooks: {message}")]
    Hook {
        /// `auth`, `services` or `register`.
        phase: String,
        /// `call` or `raise`.
        key: String,
        /// What is wrong.
        message: String,
    },
    /// The app held the event loop (or a thread-pool job) for longer than the guard.
    #[error(
        "the app did not yield to its event loop for {seconds} s of real time (a CPU-bound \
         loop, or blocking I/O outside a thread?); racegate stopped it{stderr}"
    )]
    Blocked {
        /// The guard.
        seconds: u64,
        /// The end of the app's stderr.
        stderr: String,
    },
    /// The driver failed in a way that is racegate's bug or the app ending the process.
    #[error("the app driver failed: {0}")]
    Driver(String),
}

impl AppError {
    fn from_driver(kind: &str, message: String, stderr: String) -> AppError {
        match kind {
            "python" => AppError::Environment(message),
            "app" => AppError::App(message),
            "startup" => AppError::Startup(message),
            "path" => AppError::Path(message),
            "thread" => AppError::Blocked {
                seconds: 60,
                stderr: format!(": {message}{stderr}"),
            },
            _ if kind.starts_with("hooks") => {
                let mut parts = kind.splitn(3, ':');
                let _ = parts.next();
                AppError::Hook {
                    phase: parts.next().unwrap_or_default().to_string(),
                    key: parts.next().unwrap_or_default().to_string(),
                    message,
                }
            }
            _ => AppError::Driver(format!("{message}{stderr}")),
        }
    }

    /// A hook error placed at its line in `hooks`' file.
    fn at_hook(self, hooks: Option<&Hooks>) -> AppError {
        match (&self, hooks) {
            (
                AppError::Hook {
                    phase,
                    key,
                    message,
                },
                Some(h),
            ) => match h.locate(phase, key) {
                Some((line, column)) => AppError::Hooks(HooksError::Invalid {
                    path: h.file.clone(),
                    line,
                    column,
                    message: message.clone(),
                }),
                None => self,
            },
            _ => self,
        }
    }
}

/// The app under test and how to run it.
#[derive(Debug, Clone)]
pub struct AppTarget {
    /// How the driver loads it.
    pub load: Load,
    /// The Python to run it with ([`driver::python`]).
    pub python: PathBuf,
    /// Where the app's stdout and stderr go (discarded when `None`, but for the last lines,
    /// which explain a failure).
    pub log: Option<PathBuf>,
}

impl AppTarget {
    /// `app MODULE:ATTR PATH`, for reports.
    pub fn describe(&self) -> String {
        let factory = if self.load.factory { " (factory)" } else { "" };
        format!("app {}{factory} {}", self.load.app, self.load.path)
    }

    /// The flags that run this app again (`racegate probe FLAGS`), for a found scenario's
    /// comment.
    pub fn flags(&self) -> String {
        let l = &self.load;
        let mut out = format!("--app {}", l.app);
        if l.factory {
            out.push_str(" --factory");
        }
        if l.app_dir != std::path::Path::new(".") {
            out.push_str(&format!(" --app-dir {}", l.app_dir.display()));
        }
        out.push_str(&format!(" --path {}", l.path));
        if let Some(h) = &l.hooks {
            out.push_str(&format!(" --hooks {}", h.file.display()));
        }
        if l.ws != "auto" {
            out.push_str(&format!(" --ws {}", l.ws));
        }
        if l.lifespan != "auto" {
            out.push_str(&format!(" --lifespan {}", l.lifespan));
        }
        out
    }

    /// The URL each upgrade request is built from: the path on an address the in-memory
    /// server answers to.
    pub(crate) fn url(&self) -> Result<Target, ProbeError> {
        let path = if self.load.path.starts_with('/') {
            self.load.path.clone()
        } else {
            format!("/{}", self.load.path)
        };
        Target::parse(&format!("ws://127.0.0.1:8000{path}")).map_err(|e| match e {
            ProbeError::BadUrl { reason, .. } => ProbeError::BadUrl {
                url: format!("--path {}", self.load.path),
                reason,
            },
            other => other,
        })
    }

    /// Starts the driver: the app imported, hooked and started.
    pub fn start(&self) -> Result<Driver, ProbeError> {
        Driver::start(&self.python, &self.load, self.log.as_deref())
            .map_err(|e| e.at_hook(self.load.hooks.as_ref()).into())
    }
}

/// Probes each scenario against the app in turn, each in its own process forked from the one
/// started app. Every scenario's credentials are checked before the app is started.
pub fn probe_app(
    app: &AppTarget,
    scenarios: &[Scenario],
    options: &Options,
) -> Result<Vec<ProbeOutcome>, ProbeError> {
    let target = app.url()?;
    let mut prepared = Vec::with_capacity(scenarios.len());
    for s in scenarios {
        prepared.push(prepare(&target, s, options)?);
    }
    let mut driver = app.start()?;
    let mut out = Vec::with_capacity(scenarios.len());
    for (s, (requests, secrets)) in scenarios.iter().zip(prepared) {
        let started = Instant::now();
        let (records, virtual_ms) = run_case(&mut driver, s, requests, options, 0)
            .map_err(|e| e.at_hook(app.load.hooks.as_ref()))?;
        let mut outcome = conclude(s, records, options, Clock::Virtual, virtual_ms);
        outcome.wall_ms = started.elapsed().as_secs_f64() * 1000.0;
        outcome.mask(&secrets);
        out.push(outcome);
    }
    driver.quit()?;
    Ok(out)
}

/// Runs one scenario's clients against the app in a forked case, with `seed` for the app's
/// `random`; returns the records, by time, and the virtual milliseconds the case took.
pub fn run_case(
    driver: &mut Driver,
    scenario: &Scenario,
    requests: Vec<Request>,
    options: &Options,
    seed: u64,
) -> Result<(Vec<Record>, f64), AppError> {
    let own = own_ms(scenario) * 1000;
    let deadline = options.timeout_for(scenario) * 1000;
    let after_last_send =
        racegate_replay::schedule::after_open_ms(scenario, scenario.protocol.events.len()) * 1000;
    // One per `[[user]]`, named by its label (a user's later connections are `id#k`).
    let connections = scenario.connections();
    let conns: Vec<CaseConn> = scenario
        .users
        .iter()
        .zip(&connections)
        .map(|(u, c)| CaseConn {
            user: c.label.clone(),
            fail_at: u.fail_at.map(|p| p.name()),
        })
        .collect();
    let server = &scenario.server;
    let times = CaseTimes {
        accept_ms: server.accept_ms,
        auth_ms: server.auth_ms,
        services_ms: server.services_ms,
        register_ms: server.register_ms,
    };
    driver.begin(seed, times, &conns)?;
    let mut clients: Vec<Client<'_>> = scenario
        .users
        .iter()
        .zip(requests)
        .zip(connections.iter().cloned())
        .enumerate()
        .map(|(i, ((user, request), connection))| {
            let connect = user.connect_ms * 1000;
            let close = match user.leave_ms() {
                Some(ms) => connect + ms * 1000,
                None => own,
            };
            Client::new(
                i,
                user,
                connection,
                &scenario.protocol,
                request,
                Times {
                    connect,
                    close,
                    deadline,
                    after_last_send,
                },
            )
        })
        .collect();
    let mut facts: Vec<(usize, u64, FactKind)> = Vec::new();
    let mut inputs = Vec::new();
    let mut now = 0;
    loop {
        for c in clients.iter_mut() {
            c.act(now, &mut inputs);
        }
        let Some(wake) = clients.iter().filter_map(Client::wake).min() else {
            break;
        };
        let step = driver.advance(&inputs, wake.max(now))?;
        inputs.clear();
        now = step.now_us;
        for (conn, output) in step.out {
            if let Some(c) = clients.get_mut(conn) {
                c.receive(now, output, &mut inputs);
            }
        }
        facts.extend(step.facts.into_iter().map(|f| (f.conn, f.at_us, f.kind)));
    }
    // The scenario ends at its deadline, or a second after the last client left if that is
    // later: whatever of the app is still running then is left behind.
    let end = deadline.max(now + 1_000_000);
    let step = driver.finish(&inputs, end)?;
    facts.extend(step.facts.into_iter().map(|f| (f.conn, f.at_us, f.kind)));
    let mut records: Vec<Record> = clients.into_iter().flat_map(|c| c.records).collect();
    for (conn, at_us, kind) in facts {
        let Some(connection) = connections.get(conn) else {
            continue;
        };
        let seen = match kind {
            FactKind::Misuse { op, error } => Seen::AppMisuse { op, error },
            FactKind::Raised { class, message } => Seen::AppRaised {
                error: if message.is_empty() {
                    class
                } else {
                    format!("{class}: {message}")
                },
            },
            FactKind::HandlerPending { name } => Seen::AppHandlerPending { name },
            FactKind::TaskPending { name } => Seen::AppTaskPending { name },
        };
        records.push(Record {
            at_ms: at_us as f64 / 1000.0,
            user: connection.label.clone(),
            seen,
        });
    }
    // Stable: one user's records keep their order on a tie.
    records.sort_by(|a, b| a.at_ms.total_cmp(&b.at_ms));
    Ok((records, now.max(step.now_us) as f64 / 1000.0))
}
