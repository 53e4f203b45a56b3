//! Shared by the binary's integration tests: run `racegate`, and on failure print the command,
//! its exit code, stdout and stderr (ripgrep's `tests/util.rs` habit).

#![allow(dead_code)] // each test binary uses its own subset

use std::path::Path;
use std::process::Output;

use assert_cmd::Command;

/// One finished invocation.
pub struct Run {
    pub cmd: String,
    pub out: Output,
}

impl Run {
    pub fn stdout(&self) -> String {
        String::from_utf8_lossy(&self.out.stdout).into_owned()
    }

    pub fn stderr(&self) -> String {
        String::from_utf8_lossy(&self.out.stderr).into_owned()
    }

    pub fn code(&self) -> Option<i32> {
        self.out.status.code()
    }

    /// The command, exit code, stdout and stderr, for assertion messages.
    pub fn context(&self) -> String {
        format!(
            "command: {}\nexit: {:?}\n--- stdout\n{}--- stderr\n{}",
            self.cmd,
            self.code(),
            self.stdout(),
            self.stderr()
        )
    }

    /// Asserts the exit code, printing the context if it differs.
    pub fn expect_code(&self, code: i32) -> &Self {
        assert_eq!(self.code(), Some(code), "{}", self.context());
        self
    }
}

/// Runs the binary in `dir` with the default log filter.
pub fn racegate_in(dir: &Path, args: &[&str]) -> Run {
    let out = Command::cargo_bin("racegate")
        .unwrap()
        .current_dir(dir)
        .env_remove("RUST_LOG")
        .args(args)
        .output()
        .unwrap();
    Run {
        cmd: format!("racegate {}", args.join(" ")),
        out,
    }
}

/// Runs the binary from the repository root.
pub fn racegate(args: &[&str]) -> Run {
    racegate_in(Path::new(env!("CARGO_MANIFEST_DIR")), args)
}

/// How long a spawned `racegate` may run before it is killed and the test fails.
pub const WAIT: std::time::Duration = std::time::Duration::from_secs(20);

/// A `racegate` command in the repository root, for tests that spawn and stream.
pub fn command() -> std::process::Command {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_racegate"));
    cmd.current_dir(env!("CARGO_MANIFEST_DIR"));
    cmd
}

/// The command, exit code, stdout and stderr of a finished run, for assertion messages.
pub fn context(args: &[&str], out: &Output) -> String {
    format!(
        "command: racegate {}\nexit: {:?}\n--- stdout\n{}--- stderr\n{}",
        args.join(" "),
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Runs to completion within [`WAIT`] (killed otherwise).
pub fn run_bounded(args: &[&str]) -> Output {
    let child = command()
        .args(args)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    wait_output(child)
}

/// Waits for `child` within [`WAIT`]; kills it and fails the test otherwise.
pub fn wait_output(child: std::process::Child) -> Output {
    let id = child.id();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(WAIT) {
        Ok(out) => out.unwrap(),
        Err(_) => {
            let _ = std::process::Command::new("kill")
                .args(["-KILL", &id.to_string()])
                .status();
            panic!("racegate (pid {id}) did not finish within {WAIT:?}");
        }
    }
}

/// Starts `racegate serve` with `args` and reads its `listening on ws://ADDR` line within
/// [`WAIT`]; returns the child and `ADDR`. The caller stops the child.
pub fn spawn_serve(args: &[&str], stderr: std::process::Stdio) -> (std::process::Child, String) {
    use std::io::BufRead;
    let mut child = command()
        .arg("serve")
        .args(args)
        .stdout(std::process::Stdio::piped())
        .stderr(stderr)
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = std::io::BufReader::new(stdout).read_line(&mut line);
        let _ = tx.send(line);
    });
    let Ok(line) = rx.recv_timeout(WAIT) else {
        let _ = child.kill();
        panic!("serve did not print its address within {WAIT:?}");
    };
    let addr = line
        .trim()
        .strip_prefix("listening on ws://")
        .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
        .to_string();
    (child, addr)
}

/// The project's Python: `$RACEGATE_PYTHON`, else `target/py/bin/python` (`make py`).
pub fn python() -> std::path::PathBuf {
    if let Some(path) = std::env::var_os("RACEGATE_PYTHON") {
        return std::path::PathBuf::from(path);
    }
    let venv = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/py/bin/python");
    assert!(
        venv.exists(),
        "no Python environment at {}: create it with `make py` (or point RACEGATE_PYTHON at an \
         interpreter with fastapi and uvicorn)",
        venv.display()
    );
    venv
}

/// An ASGI app under a real uvicorn on a free loopback port, started from the repository root;
/// dropping it kills the process by its PID and reaps it, however the test ends.
pub struct Uvicorn {
    child: std::process::Child,
    /// Where it listens.
    pub addr: std::net::SocketAddr,
    log: std::path::PathBuf,
    health: Option<String>,
}

impl Drop for Uvicorn {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// How long uvicorn may take to come up on a loaded machine.
pub const UVICORN_STARTUP: std::time::Duration = std::time::Duration::from_secs(20);

impl Uvicorn {
    /// Starts `python -m uvicorn APP` (`module:attr`, found from the repository root, or with
    /// `--app-dir` when `APP` is `dir=module:attr`), logging to a file in `dir`, and waits until
    /// it answers: `GET health` with 200 when given, else a TCP connect.
    pub fn start(app: &str, dir: &Path, health: Option<&str>) -> Uvicorn {
        use std::net::{Ipv4Addr, SocketAddr, TcpListener};
        let (app_dir, app) = match app.split_once('=') {
            Some((d, a)) => (d, a),
            None => (".", app),
        };
        let mut last = String::new();
        // A port free when probed may be taken before uvicorn binds it: then try another.
        for attempt in 0..3 {
            let port = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
                .and_then(|l| l.local_addr())
                .unwrap()
                .port();
            let log = dir.join(format!("uvicorn-{attempt}.log"));
            let out = std::fs::File::create(&log).unwrap();
            let child = std::process::Command::new(python())
                .args(["-m", "uvicorn", app, "--app-dir", app_dir])
                .args(["--host", "127.0.0.1", "--port", &port.to_string()])
                .env("PYTHONUNBUFFERED", "1")
                .current_dir(env!("CARGO_MANIFEST_DIR"))
                .stdin(std::process::Stdio::null())
                .stdout(out.try_clone().unwrap())
                .stderr(out)
                .spawn()
                .unwrap_or_else(|e| panic!("could not run {}: {e}", python().display()));
            let mut server = Uvicorn {
                child,
                addr: SocketAddr::from((Ipv4Addr::LOCALHOST, port)),
                log,
                health: health.map(str::to_string),
            };
            match server.wait_ready() {
                Ok(()) => return server,
                Err(e) => last = e,
            }
        }
        panic!("{last}");
    }

    fn wait_ready(&mut self) -> Result<(), String> {
        let deadline = std::time::Instant::now() + UVICORN_STARTUP;
        while std::time::Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(format!(
                    "uvicorn exited ({status}); its log:\n{}",
                    self.log()
                ));
            }
            if self.answers() {
                return Ok(());
            }
            std::thread::sleep(std::time::Duration::from_millis(100)); // real-time: polling a start
        }
        Err(format!(
            "uvicorn did not answer within {UVICORN_STARTUP:?}; its log:\n{}",
            self.log()
        ))
    }

    fn answers(&self) -> bool {
        use std::io::{Read, Write};
        let timeout = std::time::Duration::from_secs(1);
        let Ok(mut s) = std::net::TcpStream::connect_timeout(&self.addr, timeout) else {
            return false;
        };
        let Some(path) = &self.health else {
            return true;
        };
        let _ = s.set_read_timeout(Some(std::time::Duration::from_secs(2)));
        let request = format!(
            "GET {path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
            self.addr
        );
        let mut answer = String::new();
        s.write_all(request.as_bytes()).is_ok()
            && s.read_to_string(&mut answer).is_ok()
            && answer.starts_with("HTTP/1.1 200")
    }

    /// What uvicorn and the app wrote so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The log once it holds `line`, or after 10 s (the app may log after a client has gone).
    pub fn log_with(&self, line: &str) -> String {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            let log = self.log();
            if log.contains(line) || std::time::Instant::now() > deadline {
                return log;
            }
            std::thread::sleep(std::time::Duration::from_millis(50)); // real-time: polling a log
        }
    }

    /// `ws://ADDR/path`.
    pub fn url(&self, path: &str) -> String {
        format!("ws://{}{path}", self.addr)
    }
}

/// Runs the binary from the repository root with extra environment variables.
pub fn racegate_env(args: &[&str], env: &[(&str, &std::ffi::OsStr)]) -> Run {
    let mut cmd = Command::cargo_bin("racegate").unwrap();
    cmd.current_dir(env!("CARGO_MANIFEST_DIR"))
        .env_remove("RUST_LOG")
        .args(args);
    for (k, v) in env {
        cmd.env(k, v);
    }
    Run {
        cmd: format!("racegate {}", args.join(" ")),
        out: cmd.output().unwrap(),
    }
}
