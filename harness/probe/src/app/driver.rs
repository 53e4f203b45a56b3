//! The Python side of `probe --app`: the driver process (`driver.py`, compiled into racegate),
//! started with the user's Python, and its line protocol.
//!
//! One JSON object a line each way. racegate asks, the driver answers; nothing arrives
//! unasked, so every read has a question it answers and a real-time bound. A driver that does
//! not answer within [`STEP_GUARD`] (the app blocked its event loop: a CPU loop, blocking I/O
//! outside a thread) is killed and reported, never waited for forever.

use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{RecvTimeoutError, Sender, channel};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

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

/// How much of the end of the app's output an error message looks at.
const STDERR_KEPT: u64 = 16 * 1024;

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
        /// Each case starts the log afresh (no `--app-log`: only the last case explains).
        scratch_log: bool,
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
    /// The case's process ended before it said it was done: the app exited or crashed.
    Crashed {
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
    lines: BufReader<ChildStdout>,
    watchdog: Watchdog,
    /// Where the driver's and the app's stdout and stderr go: a file, not a pipe, so an app
    /// that logs a lot costs no wake-ups here and can never block on a full pipe.
    log: AppLog,
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
    pub fn start(python: &Path, load: &Load, log: Option<&Path>) -> Result<Driver, AppError> {
        let log = AppLog::open(log)?;
        let mut command = Command::new(python);
        // Its own process group: the driver and every case it forked go together, whatever
        // state they are in (std::process::Child::kill would leave a forked case behind).
        #[cfg(unix)]
        std::os::unix::process::CommandExt::process_group(&mut command, 0);
        let mut child = command
            .arg("-c")
            .arg(DRIVER_PY)
            // The same scenario gives the same history: str and bytes hash the same every run.
            .env("PYTHONHASHSEED", "0")
            .env("PYTHONUNBUFFERED", "1")
            .env("PYTHONDONTWRITEBYTECODE", "1")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log.file.try_clone().map_err(|e| {
                AppError::Driver(format!("the app's log {}: {e}", log.path.display()))
            })?))
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
        let lines = BufReader::new(stdout);
        let watchdog = Watchdog::start(child.id());
        let mut driver = Driver {
            child,
            stdin,
            lines,
            watchdog,
            log,
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
        let scratch = driver.log.scratch;
        driver.ask(&Ask::Load {
            scratch_log: scratch,
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
        // The case's process exits on its own; the driver reports it only if it crashed.
        self.in_case = false;
        match self.answer()? {
            Answer::Finished { now_us, facts } => Ok(Step {
                now_us,
                out: Vec::new(),
                facts,
            }),
            other => Err(self.unexpected(other, "the case to finish")),
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
        let mut line = String::new();
        self.watchdog.arm(STEP_GUARD);
        let read = self.lines.read_line(&mut line);
        self.watchdog.disarm();
        if self.watchdog.fired() {
            return Err(AppError::Blocked {
                seconds: STEP_GUARD.as_secs(),
                stderr: self.stderr_tail(),
            });
        }
        match read {
            Ok(0) => return Err(self.died("")),
            Ok(_) => {}
            Err(e) => return Err(AppError::Driver(format!("reading the driver: {e}"))),
        }
        let answer: Answer = serde_json::from_str(&line).map_err(|e| {
            AppError::Driver(format!(
                "an answer racegate cannot read ({e}): {}",
                line.trim()
            ))
        })?;
        match answer {
            Answer::Error { kind, message } => {
                self.in_case = false;
                return Err(AppError::from_driver(&kind, message, self.stderr_tail()));
            }
            Answer::Crashed { status } => {
                self.in_case = false;
                return Err(AppError::Driver(format!(
                    "the app's process for this scenario ended (status {status}) before the \
                     scenario did: did the app exit (os._exit) or crash?{}",
                    self.stderr_tail()
                )));
            }
            _ => {}
        }
        Ok(answer)
    }

    fn unexpected(&self, answer: Answer, waiting_for: &str) -> AppError {
        let what = match answer {
            Answer::Loaded(_) => "loaded",
            Answer::Ready => "ready",
            Answer::Step { .. } => "step",
            Answer::Finished { .. } => "finished",
            Answer::Crashed { .. } => "crashed",
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

    /// The end of what the driver and the app wrote, for an error message.
    fn stderr_tail(&self) -> String {
        let text = self.log.tail();
        if text.trim().is_empty() {
            return String::new();
        }
        let lines: Vec<&str> = text.lines().collect();
        let tail = &lines[lines.len().saturating_sub(12)..];
        format!(
            "\n  the app's output ended with:\n    {}",
            tail.join("\n    ")
        )
    }
}

/// The file the driver's and the app's output go to: `--app-log`'s, kept whole, or a scratch
/// file of racegate's, started afresh for each case and removed at the end.
struct AppLog {
    file: std::fs::File,
    path: PathBuf,
    scratch: bool,
}

impl AppLog {
    fn open(given: Option<&Path>) -> Result<AppLog, AppError> {
        use std::sync::atomic::AtomicUsize;
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let (path, scratch) = match given {
            Some(p) => (p.to_path_buf(), false),
            None => (
                std::env::temp_dir().join(format!(
                    "racegate-app-{}-{}.log",
                    std::process::id(),
                    NEXT.fetch_add(1, Ordering::Relaxed)
                )),
                true,
            ),
        };
        // Appending: the driver and each case it forks share the file, and a case's start
        // truncates a scratch log to nothing.
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .read(true)
            .open(&path)
            .map_err(|e| AppError::App(format!("--app-log {}: {e}", path.display())))?;
        if !scratch {
            file.set_len(0)
                .map_err(|e| AppError::App(format!("--app-log {}: {e}", path.display())))?;
        }
        Ok(AppLog {
            file,
            path,
            scratch,
        })
    }

    /// The last [`STDERR_KEPT`] bytes, from a line start.
    fn tail(&self) -> String {
        use std::io::{Seek, SeekFrom};
        let Ok(mut file) = std::fs::File::open(&self.path) else {
            return String::new();
        };
        let len = file.metadata().map(|m| m.len()).unwrap_or(0);
        let _ = file.seek(SeekFrom::Start(len.saturating_sub(STDERR_KEPT)));
        let mut bytes = Vec::new();
        let _ = file.read_to_end(&mut bytes);
        let text = String::from_utf8_lossy(&bytes).into_owned();
        match (len > STDERR_KEPT, text.split_once('\n')) {
            (true, Some((_, rest))) => rest.to_string(),
            _ => text,
        }
    }
}

impl Drop for AppLog {
    fn drop(&mut self) {
        if self.scratch {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        // Normally gone by now (`quit`); after an error it is stopped here with any case it
        // forked, never left behind.
        if matches!(self.child.try_wait(), Ok(None)) {
            kill_group(self.child.id());
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Kills the driver's process group: the driver and every case it forked.
fn kill_group(pid: u32) {
    #[cfg(unix)]
    if let Ok(pid) = libc::pid_t::try_from(pid) {
        // SAFETY: kill(2) with a negative pid signals that process group; it touches no memory.
        unsafe {
            libc::kill(-pid, libc::SIGKILL);
        }
    }
}

/// Stops a driver that does not answer within its bound: a thread that kills the driver's
/// process group once an armed deadline passes, which ends the blocked read with EOF.
struct Watchdog {
    deadline: Arc<Mutex<Option<Instant>>>,
    fired: Arc<AtomicBool>,
    stop: Option<Sender<()>>,
}

impl Watchdog {
    fn start(pid: u32) -> Watchdog {
        let deadline: Arc<Mutex<Option<Instant>>> = Arc::new(Mutex::new(None));
        let fired = Arc::new(AtomicBool::new(false));
        let (stop, stopped) = channel::<()>();
        let (d, f) = (Arc::clone(&deadline), Arc::clone(&fired));
        thread::spawn(move || {
            // Real time on purpose: the guard is against an app that stopped the virtual clock.
            while let Err(RecvTimeoutError::Timeout) = stopped.recv_timeout(WATCH_EVERY) {
                let due = *d.lock().unwrap_or_else(|p| p.into_inner());
                if due.is_some_and(|t| Instant::now() >= t) {
                    f.store(true, Ordering::SeqCst);
                    kill_group(pid);
                    return;
                }
            }
        });
        Watchdog {
            deadline,
            fired,
            stop: Some(stop),
        }
    }

    fn arm(&self, within: Duration) {
        *self.deadline.lock().unwrap_or_else(|p| p.into_inner()) = Some(Instant::now() + within);
    }

    fn disarm(&self) {
        *self.deadline.lock().unwrap_or_else(|p| p.into_inner()) = None;
    }

    fn fired(&self) -> bool {
        self.fired.load(Ordering::SeqCst)
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        // Dropping the sender ends the thread's wait at once.
        self.stop.take();
    }
}

/// How often the watchdog looks at its deadline.
const WATCH_EVERY: Duration = Duration::from_millis(100);

fn input_json(input: &Input) -> serde_json::Value {
    use serde_json::json;
    match input {
        Input::Connect(conn) => json!({"op": "connect", "conn": conn}),
        Input::Data(conn, bytes) => json!({"op": "data", "conn": conn, "b64": B64.encode(bytes)}),
        Input::Gone(conn) => json!({"op": "gone", "conn": conn}),
        Input::Shutdown => json!({"op": "shutdown", "conn": 0}),
    }
}
