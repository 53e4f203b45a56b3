//! From a real application's log to a regression scenario, end to end: the FastAPI example
//! backend (examples/chat_backend) under uvicorn on a free loopback port, `racegate probe`
//! against its production route with the staging scenarios while its log is captured, `racegate
//! import --map` of that log, `racegate run` of the result (it fails on `unfixed` with exactly
//! the symptoms the app logged, and passes on `state-machine`), and `racegate probe` of the
//! app's fixed route with the imported scenario (it passes).
//!
//! Needs the project's Python (`make py`, or RACEGATE_PYTHON). Every wait is bounded; uvicorn is
//! killed by its PID when the test ends, however it ends. With RACEGATE_CHAT_LOG=FILE the
//! captured log is also written there (how tests/fixtures/import/chat_backend.log was made).

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use util::{context, run_bounded};

mod util;

const STAGING_USER: &str = "scenarios/staging-user-101463487227881885914.toml";
const STAGING_E2E: &str = "scenarios/staging-e2e-staging_pipeline.toml";
const MAP: &str = "examples/chat_backend/map.toml";

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// The project's Python: `$RACEGATE_PYTHON`, else `target/py/bin/python`.
fn python() -> PathBuf {
    if let Some(path) = std::env::var_os("RACEGATE_PYTHON") {
        return PathBuf::from(path);
    }
    let venv = root().join("target/py/bin/python");
    assert!(
        venv.exists(),
        "no Python environment at {}: create it with `make py` (or point RACEGATE_PYTHON at an \
         interpreter with fastapi and uvicorn)",
        venv.display()
    );
    venv
}

/// The example app under uvicorn; dropping it kills the process by its PID and reaps it.
struct App {
    child: Child,
    addr: SocketAddr,
    log: PathBuf,
}

impl Drop for App {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// How long uvicorn may take to answer `/health` on a loaded machine.
const STARTUP: Duration = Duration::from_secs(20);

impl App {
    fn start(dir: &Path) -> App {
        let mut last = String::new();
        // A port free when probed may be taken before uvicorn binds it: then try another.
        for attempt in 0..3 {
            let port = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
                .and_then(|l| l.local_addr())
                .unwrap()
                .port();
            let log = dir.join(format!("app-{attempt}.log"));
            let out = std::fs::File::create(&log).unwrap();
            let child = Command::new(python())
                .args(["-m", "uvicorn", "examples.chat_backend.app:app"])
                .args(["--host", "127.0.0.1", "--port", &port.to_string()])
                .env("PYTHONUNBUFFERED", "1")
                .current_dir(root())
                .stdin(Stdio::null())
                .stdout(out.try_clone().unwrap())
                .stderr(out)
                .spawn()
                .unwrap_or_else(|e| panic!("could not run {}: {e}", python().display()));
            let mut app = App {
                child,
                addr: SocketAddr::from((Ipv4Addr::LOCALHOST, port)),
                log,
            };
            match app.wait_ready() {
                Ok(()) => return app,
                Err(e) => last = e,
            }
        }
        panic!("{last}");
    }

    fn wait_ready(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + STARTUP;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(format!(
                    "uvicorn exited ({status}); its log:\n{}",
                    self.log()
                ));
            }
            if self.healthy() {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(100)); // real-time: polling a start
        }
        Err(format!(
            "uvicorn did not answer within {STARTUP:?}; its log:\n{}",
            self.log()
        ))
    }

    fn healthy(&self) -> bool {
        let Ok(mut s) = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1)) else {
            return false;
        };
        let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
        let request = format!(
            "GET /health HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
            self.addr
        );
        let mut answer = String::new();
        s.write_all(request.as_bytes()).is_ok()
            && s.read_to_string(&mut answer).is_ok()
            && answer.starts_with("HTTP/1.1 200")
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The log once it holds `line` (the app logs a client's close after the probe has gone).
    fn log_with(&self, line: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let log = self.log();
            if log.contains(line) || Instant::now() > deadline {
                return log;
            }
            std::thread::sleep(Duration::from_millis(50)); // real-time: polling the app's log
        }
    }

    fn url(&self, path: &str) -> String {
        format!("ws://{}{path}", self.addr)
    }
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// `(endpoint, verdict, invariants, production symptoms not reproduced)` per result of `run
/// --format json`.
fn results(json: &[u8]) -> Vec<(String, String, BTreeSet<String>, usize)> {
    let doc: serde_json::Value = serde_json::from_slice(json).unwrap();
    doc["scenarios"][0]["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            let invariants = r["violations"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v["invariant"].as_str().unwrap().to_string())
                .collect();
            let missed = r["production"]
                .as_array()
                .map_or(0, |p| p.iter().filter(|c| c["reproduced"] != true).count());
            (
                r["endpoint"].as_str().unwrap().to_string(),
                r["verdict"].as_str().unwrap().to_string(),
                invariants,
                missed,
            )
        })
        .collect()
}

#[test]
fn the_example_backends_log_becomes_a_scenario_that_fails_like_production_and_passes_fixed() {
    let dir = tempfile::tempdir().unwrap();
    let app = App::start(dir.path());

    // 1. The staging scenarios' clients against the production route, the app logging.
    let buggy = app.url("/ws");
    let args = [
        "probe",
        "--url",
        &buggy,
        "--scenario",
        STAGING_USER,
        STAGING_E2E,
        "--timeout-ms",
        "4000",
    ];
    let out = run_bounded(&args);
    assert_eq!(out.status.code(), Some(1), "{}", context(&args, &out));

    let log = app.log_with("WebSocket disconnected for user e2e-staging_pipeline");
    let log_file = dir.path().join("chat_backend.log");
    std::fs::write(&log_file, &log).unwrap();
    if let Some(keep) = std::env::var_os("RACEGATE_CHAT_LOG") {
        std::fs::write(keep, &log).unwrap();
    }

    // 2. Its log, through the mapping, into a scenario.
    let imported = dir.path().join("imported.toml");
    let args = ["import", s(&log_file), "--map", MAP, "--out", s(&imported)];
    let out = run_bounded(&args);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}\n--- the app's log\n{log}",
        context(&args, &out)
    );
    let scenario = racegate_replay::scenario::load(&imported).unwrap();
    let text = std::fs::read_to_string(&imported).unwrap();
    let seen: BTreeSet<&str> = scenario
        .production
        .iter()
        .map(|p| p.invariant.name())
        .collect();
    assert_eq!(
        seen,
        BTreeSet::from([
            "accept-first",
            "message-lost",
            "before-ready",
            "cross-user",
            "event-order"
        ]),
        "the symptoms the app logged\n{text}\n--- the app's log\n{log}"
    );
    assert_eq!(scenario.users.len(), 2, "{text}");
    assert_eq!(scenario.users[0].sends.len(), 1, "{text}");
    assert_eq!(scenario.users[1].sends.len(), 3, "{text}");

    // 3. The replay: unfixed fails with exactly those symptoms, each reproduced; the fix passes.
    let args = ["run", s(&imported), "--format", "json"];
    let out = run_bounded(&args);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}\n--- the imported scenario\n{text}",
        context(&args, &out)
    );
    let got = results(&out.stdout);
    let unfixed = got.iter().find(|r| r.0 == "unfixed").unwrap();
    assert_eq!(unfixed.1, "fail");
    assert_eq!(
        unfixed.2,
        seen.iter().map(|s| s.to_string()).collect::<BTreeSet<_>>()
    );
    assert_eq!(unfixed.3, 0, "every symptom reproduced");
    let fixed = got.iter().find(|r| r.0 == "state-machine").unwrap();
    assert_eq!((fixed.1.as_str(), fixed.2.len()), ("pass", 0));

    // 4. The same scenario's clients against the app's fixed route: it holds.
    let fixed_url = app.url("/ws/fixed");
    let args = ["probe", "--url", &fixed_url, "--scenario", s(&imported)];
    let out = run_bounded(&args);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}\n--- the app's log\n{}",
        context(&args, &out),
        app.log()
    );
}
