//! The Python side of `probe --app`: the driver process (`driver.py`, compiled into racegate),
//! started with the user's Python, and its line protocol.
//!
//! One JSON object a line each way. racegate asks, the driver answers; nothing arrives
//! unasked, so every read has a question it answers and a real-time bound. A driver that does
//! not answer within [`STEP_GUARD`] (the app blocked its event loop: a CPU loop, blocking I/O
//! outside a thread) is killed and reported, never waited for forever.

use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{Receiver, RecvTimeoutError, channel};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use serde::{Deserialize, Serialize};

use super::AppError;
use super::hooks::Hooks;

/// The driver's source, run with `python -c`: it ships inside the binary (and so inside the
/// wheel), and needs nothing but the standard library and what the app needs.
pub const DRIVER_PY: &str = include_str!("driver.py");

/// The longest one step may take in real time before the driver is called stuck.
pub const STEP_GUARD: Duration = Duration::from_secs(30);

/// How much of the driver's standard error is kept to explain a failure.
const STDERR_KEPT: usize = 16 * 1024;

/// How the app is loaded: uvicorn's flags of the same names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Load {
    /// `MODULE:ATTR`.
    pub app: String,
    /// ATTR is a callable returning the app.
    pub factory: bool,
    /// Put on `sys.path` first.
    pub app_dir: PathBuf,
    /// uvicorn's `--ws`: `auto`, `websockets`, `websockets-sansio` or `wsproto`.
    pub ws: String,
    /// uvicorn's `--lifespan`: `auto`, `on` or `off`.
    pub lifespan: String,
    /// The WebSocket path the scenarios connect to (checked against the app's routes).
    pub path: String,
    /// The app's awaitables per phase.
    pub hooks: Option<Hooks>,
}

/// What the driver says it runs.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
pub struct Loaded {
    /// The WebSocket protocol class uvicorn chose (`--ws`).
    pub ws: String,
    /// The HTTP protocol class that reads the upgrade request (uvicorn's `--http auto`).
    pub http: String,
    /// The Python version.
    pub python: String,
    /// uvicorn's version.
    pub uvicorn: String,
}

/// One thing the clients did, handed to the server at the next step.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Input {
    /// Connection `conn` was opened (its bytes follow as `Data`).
    Connect(usize),
    /// Bytes the client sent.
    Data(usize, Vec<u8>),
    /// The client's TCP connection ended.
    Gone(usize),
    /// The server shuts down (uvicorn's `Server.shutdown`, for the connections).
    Shutdown,
}

/// What the server did on one connection, as its client sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output {
    /// Bytes written.
    Data(Vec<u8>),
    /// The transport was closed.
    Closed,
}

/// Something only the app's side of the connection shows.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Fact {
    /// The connection.
    pub conn: usize,
    /// When, in virtual microseconds since the case began.
    pub at_us: u64,
    /// What.
    #[serde(flatten)]
    pub kind: FactKind,
}

/// The kinds of [`Fact`].
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum FactKind {
    /// The app used its socket where its state forbids it (Starlette's state errors, uvicorn's
    /// "Unexpected ASGI message", a send before accept, after its own close, or after the
    /// client's disconnect reached it).
    Misuse {
        /// The call.
        op: String,
        /// The error, or the rule it broke.
        error: String,
    },
    /// An exception escaped the app's handler.
    Raised {
        /// Its class.
        #[serde(rename = "type")]
        class: String,
        /// Its text.
        message: String,
    },
    /// The handler had not returned when the case ended.
    HandlerPending {
        /// Its coroutine.
        name: String,
    },
    /// A task spawned while serving the connection was still pending when the case ended.
    TaskPending {
        /// Its coroutine.
        name: String,
    },
}

/// One step's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Step {
    /// Virtual microseconds since the case began.
    pub now_us: u64,
    /// What the server wrote or closed, per connection, in order.
    pub out: Vec<(usize, Output)>,
    /// What the app's side showed.
    pub facts: Vec<Fact>,
}

#[derive(Serialize)]
#[serde(tag = "op", rename_all = "snake_case")]
enum Ask<'a> {
    Load {
        app: &'a str,
        factory: bool,
        app_dir: String,
        ws: &'a str,
        lifespan: &'a str,
        path: &'a str,
        hooks: serde_json::Value,
    },
    Case {
        seed: u64,
        accept_ms: u64,
        auth_ms: u64,
        services_ms: u64,
        register_ms: u64,
        conns: &'a [CaseConn],
    },
    Advance {
        until_us: u64,
        inputs: Vec<serde_json::Value>,
    },
    Finish {
        until_us: u64,
        inputs: Vec<serde_json::Value>,
    },
    Quit,
}

/// One connection of a case, as the app's hooks need it.
#[derive(Debug, Clone, Serialize)]
pub struct CaseConn {
    /// The user.
    pub user: String,
    /// The phase its setup fails at (`[[user]] fail_at`), if any.
    pub fail_at: Option<&'static str>,
}

/// A case's timings, as the hooks and the accept latency need them.
#[derive(Debug, Clone, Copy, Default)]
pub struct CaseTimes {
    /// `[server] accept_ms`: how long the app's `accept()` takes.
    pub accept_ms: u64,
    /// `[server] auth_ms`.
    pub auth_ms: u64,
    /// `[server] services_ms`.
    pub services_ms: u64,
    /// `[server] register_ms`.
    pub register_ms: u64,
}

#[derive(Deserialize)]
#[serde(tag = "ev", rename_all = "snake_case")]
enum Answer {
    Loaded(Loaded),
    Ready,
    Step {
        now_us: u64,
        out: Vec<(usize, Option<String>)>,
        facts: Vec<Fact>,
    },
    Finished {
        now_us: u64,
        facts: Vec<Fact>,
    },
    Reaped {
        status: i32,
    },
    Error {
        kind: String,
        message: String,
    },
    Bye,
}

/// A running driver with the app loaded and started.
pub struct Driver {
    child: Child,
    stdin: Option<ChildStdin>,
    lines: Receiver<std::io::Result<String>>,
    stderr: Arc<Mutex<VecDeque<u8>>>,
    python: PathBuf,
    /// What it runs.
    pub loaded: Loaded,
    in_case: bool,
}

/// The Python to run the driver with: `--python`, else `RACEGATE_PYTHON`, else the active virtual
/// environment's, else `python3` from `PATH`.
pub fn python(given: Option<&Path>) -> PathBuf {
    if let Some(p) = given {
        return p.to_path_buf();
    }
    if let Some(p) = std::env::var_os("RACEGATE_PYTHON").filter(|p| !p.is_empty()) {
        return PathBuf::from(p);
    }
    if let Some(venv) = std::env::var_os("VIRTUAL_ENV").filter(|p| !p.is_empty()) {
        let bin = if cfg!(windows) { "Scripts" } else { "bin" };
        let candidate = Path::new(&venv).join(bin).join("python");
        if candidate.exists() {
            return candidate;
        }
    }
    PathBuf::from("python3")
}

impl Driver {
    /// Starts the driver with `python`, loads the app and runs its startup. `log`, if given,
    /// receives everything the app writes to stdout and stderr.
    pub fn start(
        python: &Path,
        load: &Load,
        log: Option<std::fs::File>,
    ) -> Result<Driver, AppError> {
        let mut child = Command::new(python)
            .arg("-c")
            .arg(DRIVER_PY)
            // The same scenario gives the same history: str and bytes hash the same every run.
            .env("PYTHONHASHSEED", "0")
            .env("PYTHONUNBUFFERED", "1")
            .env("PYTHONDONTWRITEBYTECODE", "1")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| AppError::NoPython {
                python: python.to_path_buf(),
                reason: e.to_string(),
            })?;
        let stdin = child.stdin.take();
        let stdout = child
            .stdout
            .take()
            .ok_or_else(|| AppError::Driver("no stdout".into()))?;
        let stderr = child
            .stderr
            .take()
            .ok_or_else(|| AppError::Driver("no stderr".into()))?;
        let (tx, lines) = channel();
        thread::spawn(move || {
            let mut reader = BufReader::new(stdout);
            loop {
                let mut line = String::new();
                match reader.read_line(&mut line) {
                    Ok(0) => return,
                    Ok(_) => {
                        if tx.send(Ok(line)).is_err() {
                            return;
                        }
                    }
                    Err(e) => {
                        let _ = tx.send(Err(e));
                        return;
                    }
                }
            }
        });
        let kept = Arc::new(Mutex::new(VecDeque::new()));
        let sink = Arc::clone(&kept);
        // Drained always: an app that logs a lot must never block on a full pipe.
        thread::spawn(move || {
            let mut stderr = stderr;
            let mut log = log;
            let mut buf = [0u8; 8192];
            while let Ok(n) = stderr.read(&mut buf) {
                if n == 0 {
                    return;
                }
                if let Some(file) = log.as_mut() {
                    let _ = file.write_all(&buf[..n]);
                }
                let mut kept = sink.lock().unwrap_or_else(|p| p.into_inner());
                kept.extend(&buf[..n]);
                let excess = kept.len().saturating_sub(STDERR_KEPT);
                kept.drain(..excess);
            }
        });
        let mut driver = Driver {
            child,
            stdin,
            lines,
            stderr: kept,
            python: python.to_path_buf(),
            loaded: Loaded {
                ws: String::new(),
                http: String::new(),
                python: String::new(),
                uvicorn: String::new(),
            },
            in_case: false,
        };
        let hooks = match &load.hooks {
            Some(h) => h.to_json(),
            None => serde_json::Value::Null,
        };
        driver.ask(&Ask::Load {
            app: &load.app,
            factory: load.factory,
            app_dir: load.app_dir.display().to_string(),
            ws: &load.ws,
            lifespan: &load.lifespan,
            path: &load.path,
            hooks,
        })?;
        match driver.answer()? {
            Answer::Loaded(loaded) => driver.loaded = loaded,
            other => return Err(driver.unexpected(other, "the app to load")),
        }
        Ok(driver)
    }

    /// Forks a case from the started app: `conns` are its connections, in the order the
    /// clients number them.
    pub fn begin(
        &mut self,
        seed: u64,
        times: CaseTimes,
        conns: &[CaseConn],
    ) -> Result<(), AppError> {
        self.ask(&Ask::Case {
            seed,
            accept_ms: times.accept_ms,
            auth_ms: times.auth_ms,
            services_ms: times.services_ms,
            register_ms: times.register_ms,
            conns,
        })?;
        match self.answer()? {
            Answer::Ready => {
                self.in_case = true;
                Ok(())
            }
            other => Err(self.unexpected(other, "the case to start")),
        }
    }

    /// Hands `inputs` to the server and runs it until `until_us` or its first output.
    pub fn advance(&mut self, inputs: &[Input], until_us: u64) -> Result<Step, AppError> {
        self.ask(&Ask::Advance {
            until_us,
            inputs: inputs.iter().map(input_json).collect(),
        })?;
        match self.answer()? {
            Answer::Step { now_us, out, facts } => {
                let mut decoded = Vec::with_capacity(out.len());
                for (conn, data) in out {
                    let output =
                        match data {
                            None => Output::Closed,
                            Some(text) => Output::Data(B64.decode(text).map_err(|e| {
                                AppError::Driver(format!("undecodable output: {e}"))
                            })?),
                        };
                    decoded.push((conn, output));
                }
                Ok(Step {
                    now_us,
                    out: decoded,
                    facts,
                })
            }
            other => Err(self.unexpected(other, "a step")),
        }
    }

    /// Ends the case: hands over `inputs`, lets the app finish (until `until_us` at the latest)
    /// and returns what was still pending, once the forked case has exited.
    pub fn finish(&mut self, inputs: &[Input], until_us: u64) -> Result<Step, AppError> {
        self.ask(&Ask::Finish {
            until_us,
            inputs: inputs.iter().map(input_json).collect(),
        })?;
        let step = match self.answer()? {
            Answer::Finished { now_us, facts } => Step {
                now_us,
                out: Vec::new(),
                facts,
            },
            other => return Err(self.unexpected(other, "the case to finish")),
        };
        self.reap()?;
        Ok(step)
    }

    fn reap(&mut self) -> Result<(), AppError> {
        self.in_case = false;
        match self.answer()? {
            Answer::Reaped { status: 0 } => Ok(()),
            Answer::Reaped { status } => Err(AppError::Driver(format!(
                "the case's process ended with status {status}{}",
                self.stderr_tail()
            ))),
            other => Err(self.unexpected(other, "the case's process to end")),
        }
    }

    /// Runs the app's lifespan shutdown and ends the driver.
    pub fn quit(mut self) -> Result<(), AppError> {
        self.ask(&Ask::Quit)?;
        let result = match self.answer() {
            Ok(Answer::Bye) => Ok(()),
            Ok(other) => Err(self.unexpected(other, "the app to shut down")),
            Err(e) => Err(e),
        };
        drop(self.stdin.take());
        let _ = self.child.wait();
        result
    }

    fn ask(&mut self, ask: &Ask<'_>) -> Result<(), AppError> {
        let mut line = serde_json::to_vec(ask).map_err(|e| AppError::Driver(e.to_string()))?;
        line.push(b'\n');
        let written = match self.stdin.as_mut() {
            Some(stdin) => stdin.write_all(&line).and_then(|()| stdin.flush()),
            None => Err(std::io::Error::other("the driver's stdin is closed")),
        };
        written.map_err(|_| self.died("while racegate was writing to it"))
    }

    fn answer(&mut self) -> Result<Answer, AppError> {
        let line = match self.lines.recv_timeout(STEP_GUARD) {
            Ok(Ok(line)) => line,
            Ok(Err(e)) => return Err(AppError::Driver(format!("reading the driver: {e}"))),
            Err(RecvTimeoutError::Timeout) => {
                let _ = self.child.kill();
                return Err(AppError::Blocked {
                    seconds: STEP_GUARD.as_secs(),
                    stderr: self.stderr_tail(),
                });
            }
            Err(RecvTimeoutError::Disconnected) => return Err(self.died("")),
        };
        let answer: Answer = serde_json::from_str(&line).map_err(|e| {
            AppError::Driver(format!(
                "an answer racegate cannot read ({e}): {}",
                line.trim()
            ))
        })?;
        if let Answer::Error { kind, message } = answer {
            if self.in_case {
                // The forked case reported and exited; its parent says so next.
                let _ = self.reap();
            }
            return Err(AppError::from_driver(&kind, message, self.stderr_tail()));
        }
        Ok(answer)
    }

    fn unexpected(&self, answer: Answer, waiting_for: &str) -> AppError {
        let what = match answer {
            Answer::Loaded(_) => "loaded",
            Answer::Ready => "ready",
            Answer::Step { .. } => "step",
            Answer::Finished { .. } => "finished",
            Answer::Reaped { .. } => "reaped",
            Answer::Error { .. } => "error",
            Answer::Bye => "bye",
        };
        AppError::Driver(format!(
            "the driver answered `{what}` while racegate waited for {waiting_for}{}",
            self.stderr_tail()
        ))
    }

    fn died(&mut self, when: &str) -> AppError {
        let status = self
            .child
            .wait()
            .map(|s| s.to_string())
            .unwrap_or_else(|e| e.to_string());
        let tail = self.stderr_tail();
        if tail.contains("SyntaxError") || tail.contains("invalid syntax") {
            return AppError::NoPython {
                python: self.python.clone(),
                reason: format!(
                    "it could not run the driver (Python 3.9 or newer is needed){tail}"
                ),
            };
        }
        AppError::Driver(format!("the driver process ended ({status}) {when}{tail}"))
    }

    /// The end of what the driver and the app wrote to stderr, for an error message.
    fn stderr_tail(&self) -> String {
        // Give the drain thread a moment to catch the last lines of a process that just ended.
        thread::sleep(Duration::from_millis(20));
        let kept = self.stderr.lock().unwrap_or_else(|p| p.into_inner());
        if kept.is_empty() {
            return String::new();
        }
        let text = String::from_utf8_lossy(kept.make_contiguous_copy().as_slice()).into_owned();
        let lines: Vec<&str> = text.lines().collect();
        let tail = &lines[lines.len().saturating_sub(12)..];
        format!(
            "\n  the app's stderr ended with:\n    {}",
            tail.join("\n    ")
        )
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        // Normally gone by now (`quit`); after an error it is stopped here, never left behind.
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

trait ContiguousCopy {
    fn make_contiguous_copy(&self) -> Vec<u8>;
}

impl ContiguousCopy for VecDeque<u8> {
    fn make_contiguous_copy(&self) -> Vec<u8> {
        self.iter().copied().collect()
    }
}

fn input_json(input: &Input) -> serde_json::Value {
    use serde_json::json;
    match input {
        Input::Connect(conn) => json!({"op": "connect", "conn": conn}),
        Input::Data(conn, bytes) => json!({"op": "data", "conn": conn, "b64": B64.encode(bytes)}),
        Input::Gone(conn) => json!({"op": "gone", "conn": conn}),
        Input::Shutdown => json!({"op": "shutdown", "conn": 0}),
    }
}
