//! The reference app under uvicorn: finding the Python environment, starting the server on a
//! free loopback port, and stopping it by its PID whatever happens to the test.

use std::net::{Ipv4Addr, SocketAddr, TcpListener as StdListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The workspace root (two levels above the net crate).
pub fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The interpreter of the project's Python environment: `$RACEGATE_PYTHON`, else
/// `<workspace>/target/py/bin/python`. (To be replaced by the shared helper in
/// `tests/support` once the environment's Makefile target lands.)
pub fn python() -> Result<PathBuf, String> {
    if let Some(path) = std::env::var_os("RACEGATE_PYTHON") {
        let path = PathBuf::from(path);
        return if path.exists() {
            Ok(path)
        } else {
            Err(format!(
                "RACEGATE_PYTHON={} does not exist; unset it, or create the environment with `make py`",
                path.display()
            ))
        };
    }
    let venv = workspace().join("target/py/bin/python");
    if venv.exists() {
        Ok(venv)
    } else {
        Err(format!(
            "no Python environment at {}: create it with `make py` (or point RACEGATE_PYTHON at an \
             interpreter with starlette, uvicorn and websockets)",
            venv.display()
        ))
    }
}

/// How long uvicorn may take to answer `/health` (a cold interpreter on a loaded machine takes
/// one or two seconds; this is ten times that).
const STARTUP: Duration = Duration::from_secs(20);

/// A running reference app. Dropping it kills the process and reaps it.
pub struct Uvicorn {
    child: Child,
    /// Where it listens.
    pub addr: SocketAddr,
    log: PathBuf,
}

impl Drop for Uvicorn {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> std::io::Result<u16> {
    // The port is free when we let go of it; another process could take it before uvicorn
    // binds, in which case uvicorn exits and `start` tries again with another.
    let listener = StdListener::bind((Ipv4Addr::LOCALHOST, 0))?;
    Ok(listener.local_addr()?.port())
}

impl Uvicorn {
    /// Starts `conformance.app:app` on 127.0.0.1 and waits until it answers.
    pub async fn start() -> Result<Uvicorn, String> {
        Uvicorn::start_as("main", None).await
    }

    /// Starts another one, named `label` in its log's name, that also writes each finished
    /// script to `results` (a server shutting down answers no more requests).
    pub async fn start_with_results(label: &str, results: &Path) -> Result<Uvicorn, String> {
        Uvicorn::start_as(label, Some(results)).await
    }

    async fn start_as(label: &str, results: Option<&Path>) -> Result<Uvicorn, String> {
        let python = python()?;
        let mut last = String::new();
        for attempt in 0..3 {
            let port = free_port().map_err(|e| format!("no free loopback port: {e}"))?;
            let log = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
                .join(format!("conformance-uvicorn-{label}-{attempt}.log"));
            let out = std::fs::File::create(&log).map_err(|e| e.to_string())?;
            let err = out.try_clone().map_err(|e| e.to_string())?;
            let mut command = Command::new(&python);
            if let Some(dir) = results {
                command.env("CONFORMANCE_RESULTS", dir);
            }
            let child = command
                .args([
                    "-m",
                    "uvicorn",
                    "conformance.app:app",
                    "--host",
                    "127.0.0.1",
                ])
                .args(["--port", &port.to_string(), "--log-level", "warning"])
                .current_dir(workspace())
                .stdin(Stdio::null())
                .stdout(out)
                .stderr(err)
                .spawn()
                .map_err(|e| format!("could not run {}: {e}", python.display()))?;
            let mut server = Uvicorn {
                child,
                addr: SocketAddr::from((Ipv4Addr::LOCALHOST, port)),
                log,
            };
            match server.wait_ready().await {
                Ok(()) => return Ok(server),
                Err(e) => last = e,
            }
        }
        Err(last)
    }

    async fn wait_ready(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + STARTUP;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(format!(
                    "uvicorn exited ({status}) before answering; its log:\n{}",
                    self.log()
                ));
            }
            if let Ok((200, _)) = self.get("/health").await {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(100)).await; // real-time: polling a start
        }
        Err(format!(
            "uvicorn did not answer within {STARTUP:?}; its log:\n{}",
            self.log()
        ))
    }

    /// Asks it to shut down, as SIGTERM from a process manager does (uvicorn's `handle_exit`).
    pub fn terminate(&self) {
        // `kill` rather than a libc binding: one short-lived process, bounded by its own exit.
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }

    /// Waits, within `limit`, for the process to exit (after `terminate`, uvicorn closes every
    /// connection and then waits for the application's tasks to finish). True if it did.
    pub async fn wait_exit(&mut self, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(20)).await; // real-time: polling an exit
        }
        false
    }

    /// What it has logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// A plain HTTP GET; (status, body). Bounded by the results wait plus a margin.
    pub async fn get(&self, target: &str) -> Result<(u16, String), String> {
        let get = async {
            let mut stream = TcpStream::connect(self.addr)
                .await
                .map_err(|e| e.to_string())?;
            let req = format!(
                "GET {target} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
                self.addr
            );
            stream
                .write_all(req.as_bytes())
                .await
                .map_err(|e| e.to_string())?;
            let mut raw = Vec::new();
            stream
                .read_to_end(&mut raw)
                .await
                .map_err(|e| e.to_string())?;
            let text = String::from_utf8_lossy(&raw).into_owned();
            let (head, body) = text.split_once("\r\n\r\n").ok_or("no HTTP head")?;
            let status = head
                .split(' ')
                .nth(1)
                .and_then(|s| s.parse().ok())
                .ok_or("no HTTP status")?;
            Ok::<_, String>((status, body.to_string()))
        };
        tokio::time::timeout(Duration::from_secs(30), get)
            .await
            .map_err(|_| format!("GET {target} took over 30 s"))?
    }
}
