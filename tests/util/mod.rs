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
