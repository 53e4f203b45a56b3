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
