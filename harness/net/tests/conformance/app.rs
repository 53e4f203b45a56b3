//! The app arm: the reference app (`conformance.app:app`) run in-process by `racegate probe
//! --app`'s driver (`racegate_probe::app::driver`), on the driver's virtual clock.
//!
//! The driver serves each connection with uvicorn's own HTTP and WebSocket protocol code over
//! in-memory transports; this arm plays the case's client script into it as raw bytes, written
//! and read by the same [`Acts`] and [`Wire`] as the real arms' TCP client. So where this arm
//! and uvicorn disagree, the driver is not doing what uvicorn does: it is the check that
//! `probe --app` judges an app as a real uvicorn would run it.
//!
//! Each case runs in a process the driver forks from the started app. The script's results come
//! from `GET /results/<id>` on a second connection, sent when the case begins: the app answers
//! it once the script is done (on the virtual clock, so the wait is free), and a request in
//! flight is still answered when the server shuts down (uvicorn's `H11Protocol.shutdown` lets it
//! complete), so the shutdown cases need no results file. Waits that are margins in real time
//! are exact virtual waits here, and cost nothing.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;

use racegate_probe::app::AppError;
use racegate_probe::app::driver::{CaseConn, CaseTimes, Driver, Input, Load, Output};

use super::cases::{Case, ClientOp};
use super::client::{Act, Acts, WAIT, Wire};
use super::{NO_APP, Outcome, failed, steps_of, uvicorn, uvicorn_target};

/// The address the driver's in-memory server answers to (`driver.py`'s `SERVER_ADDR`).
const ADDR: SocketAddr = SocketAddr::new(std::net::IpAddr::V4(Ipv4Addr::LOCALHOST), 8000);

/// How long, in virtual seconds, the results request waits for the script (uvicorn's arm waits
/// 20 s of real time; virtual seconds are free, so more).
const RESULTS_WAIT_S: u64 = 60;

/// One step of the driver must move on: a case that needs more steps than this is looping.
const MAX_STEPS: usize = 100_000;

const WAIT_US: u64 = WAIT.as_micros() as u64;

/// The driver with the reference app loaded and started, restarted after a failure.
pub struct AppArm {
    driver: Option<Driver>,
    log: PathBuf,
    /// What the driver says it runs: its WebSocket and HTTP protocol classes, Python, uvicorn.
    pub loaded: String,
}

fn load() -> Load {
    Load {
        app: "conformance.app:app".into(),
        factory: false,
        app_dir: uvicorn::workspace(),
        // uvicorn's defaults, as the uvicorn arm runs it.
        ws: "auto".into(),
        lifespan: "auto".into(),
        path: "/ws".into(),
        hooks: None,
    }
}

impl AppArm {
    /// Starts the driver with the suite's Python.
    pub fn start() -> Result<AppArm, String> {
        let mut arm = AppArm {
            driver: None,
            log: PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("conformance-app-driver.log"),
            loaded: String::new(),
        };
        arm.driver()?;
        Ok(arm)
    }

    fn driver(&mut self) -> Result<&mut Driver, String> {
        if self.driver.is_none() {
            let python = uvicorn::python()?;
            let driver = Driver::start(&python, &load(), Some(&self.log))
                .map_err(|e| format!("cannot start the app driver: {e}"))?;
            let l = &driver.loaded;
            self.loaded = format!(
                "ws {}, http {}, Python {}, uvicorn {}",
                l.ws, l.http, l.python, l.uvicorn
            );
            self.driver = Some(driver);
        }
        self.driver
            .as_mut()
            .ok_or_else(|| "no app driver".to_string())
    }

    /// Runs `case` under the results id `id`.
    pub fn run(&mut self, case: &Case, id: &str) -> Outcome {
        let driver = match self.driver() {
            Ok(driver) => driver,
            Err(e) => return failed(e),
        };
        match play(driver, case, id) {
            Ok(outcome) => outcome,
            Err(e) => {
                // Whatever state it is in, the next case gets a fresh one.
                self.driver = None;
                failed(format!("app driver: {e}"))
            }
        }
    }

    /// What the driver and the app wrote to stderr.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Runs the app's lifespan shutdown and ends the driver.
    pub fn quit(mut self) -> Result<(), String> {
        match self.driver.take() {
            Some(driver) => driver.quit().map_err(|e| e.to_string()),
            None => Ok(()),
        }
    }
}

/// One connection, as its client sees it.
#[derive(Default)]
struct Conn {
    wire: Wire,
    /// The client's TCP connection is gone (dropped, or done with).
    gone: bool,
    /// The results connection: its raw response, and whether the server closed it.
    raw: Vec<u8>,
    closed: bool,
}

/// A case in progress on the driver.
struct Play<'d> {
    driver: &'d mut Driver,
    now: u64,
    inputs: Vec<Input>,
    conns: Vec<Conn>,
    results: usize,
}

impl Play<'_> {
    /// Runs the server until `until` (virtual µs) or until `done` holds, handing it what the
    /// clients wrote and the clients what it wrote.
    fn run_until(&mut self, until: u64, done: impl Fn(&Play<'_>) -> bool) -> Result<(), String> {
        let mut steps = 0;
        while self.now < until && !done(self) {
            let inputs = std::mem::take(&mut self.inputs);
            let step = self.driver.advance(&inputs, until).map_err(err)?;
            self.now = step.now_us;
            for (conn, output) in step.out {
                self.output(conn, output);
            }
            steps += 1;
            if steps > MAX_STEPS {
                return Err(format!("no progress after {MAX_STEPS} steps"));
            }
        }
        Ok(())
    }

    fn wait(&mut self, ms: u64) -> Result<(), String> {
        self.run_until(self.now + ms * 1000, |_| false)
    }

    fn output(&mut self, conn: usize, output: Output) {
        let Some(c) = self.conns.get_mut(conn) else {
            return;
        };
        match output {
            Output::Data(bytes) if conn == self.results => c.raw.extend(bytes),
            Output::Data(bytes) => {
                let reply = c.wire.feed(&bytes);
                if !reply.is_empty() && !c.gone {
                    self.inputs.push(Input::Data(conn, reply));
                }
            }
            Output::Closed => {
                c.closed = true;
                c.wire.end();
            }
        }
    }

    fn write(&mut self, conn: usize, bytes: Vec<u8>) {
        if !self.conns[conn].gone {
            self.inputs.push(Input::Data(conn, bytes));
        }
    }

    fn gone(&mut self, conn: usize) {
        if !std::mem::replace(&mut self.conns[conn].gone, true) {
            self.inputs.push(Input::Gone(conn));
        }
    }
}

fn err(e: AppError) -> String {
    e.to_string()
}

fn connects(op: &ClientOp) -> bool {
    matches!(
        op,
        ClientOp::Connect | ClientOp::Start | ClientOp::Pipelined(_) | ClientOp::Open
    )
}

/// The case's client script played into the driver, then the results read: the uvicorn arm's
/// `drive_client` and `RawClient`, op for op, on the virtual clock.
fn play(driver: &mut Driver, case: &Case, id: &str) -> Result<Outcome, String> {
    let results = case.client.iter().filter(|op| connects(op)).count();
    let conns: Vec<CaseConn> = (0..=results)
        .map(|i| CaseConn {
            user: if i == results { "results" } else { "conf" }.into(),
            fail_at: None,
        })
        .collect();
    driver.begin(0, CaseTimes::default(), &conns).map_err(err)?;
    let mut play = Play {
        driver,
        now: 0,
        inputs: Vec::new(),
        conns: (0..=results).map(|_| Conn::default()).collect(),
        results,
    };
    let get = format!(
        "GET /results/{id}?wait={RESULTS_WAIT_S} HTTP/1.1\r\nHost: {ADDR}\r\nConnection: close\r\n\r\n"
    );
    play.inputs.push(Input::Connect(results));
    play.inputs.push(Input::Data(results, get.into_bytes()));

    let target = uvicorn_target(case, id);
    let mut current: Option<(usize, Acts)> = None;
    let mut next = 0;
    for op in case.client {
        if connects(op) {
            // A new connection replaces the last one, whose socket is dropped (as the real arms'
            // client is).
            if let Some((old, _)) = current.take() {
                play.gone(old);
            }
            let k = next;
            next += 1;
            let mut acts = Acts::default();
            play.inputs.push(Input::Connect(k));
            if *op != ClientOp::Open {
                let pipelined = match *op {
                    ClientOp::Pipelined(texts) => texts,
                    _ => &[],
                };
                let bytes = acts.upgrade(ADDR, &target, pipelined);
                play.write(k, bytes);
            }
            if matches!(*op, ClientOp::Connect | ClientOp::Pipelined(_)) {
                play.run_until(play.now + WAIT_US, |p| p.conns[k].wire.responded())?;
            }
            current = Some((k, acts));
            continue;
        }
        if *op == ClientOp::Shutdown {
            play.inputs.push(Input::Shutdown);
            continue;
        }
        let Some((k, acts)) = current.as_mut() else {
            if let ClientOp::Wait(ms) = *op {
                play.wait(ms)?;
            }
            continue;
        };
        let k = *k;
        match acts.act(*op) {
            Act::Write(bytes) => play.write(k, bytes),
            Act::Close(bytes) => {
                play.conns[k].wire.stop();
                play.write(k, bytes);
            }
            Act::Drop => {
                play.conns[k].wire.stop();
                play.gone(k);
            }
            Act::Wait(ms) => play.wait(ms)?,
            Act::Nothing => {}
        }
    }

    let client = match current {
        Some((k, _)) => {
            play.run_until(play.now + WAIT_US, |p| p.conns[k].wire.ended())?;
            if !play.conns[k].wire.ended() {
                play.conns[k].wire.still_open();
            }
            // The client is done with its socket.
            play.gone(k);
            play.conns[k].wire.seen()
        }
        None => vec!["never connected".into()],
    };

    play.run_until(play.now + (RESULTS_WAIT_S + 10) * 1_000_000, |p| {
        p.conns[p.results].closed
    })?;
    let app = results_of(&play.conns[results].raw, case.shuts_down());
    let inputs = std::mem::take(&mut play.inputs);
    play.driver
        .finish(&inputs, play.now + 1_000_000)
        .map_err(err)?;
    Ok(Outcome { app, client })
}

/// The script's steps from the results response, as the uvicorn arm reads them: the answer's
/// steps, or (no script finished) what the uvicorn arm records then: for a shutdown case, which
/// reads a file the script writes when it ends, that no app ran; else the HTTP answer.
fn results_of(raw: &[u8], shuts_down: bool) -> Vec<String> {
    let text = String::from_utf8_lossy(raw);
    let Some((head, body)) = text.split_once("\r\n\r\n") else {
        return vec![format!("results: no HTTP answer: {text}")];
    };
    let status = head.split(' ').nth(1).unwrap_or("?");
    match status {
        "200" => steps_of(body),
        _ if shuts_down => vec![NO_APP.into()],
        _ => vec![format!("results: HTTP {status}: {body}")],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn results_are_read_from_the_answer_and_a_missing_script_is_said_as_the_uvicorn_arm_says_it() {
        let ok = b"HTTP/1.1 200 OK\r\ncontent-length: 36\r\n\r\n{\"done\":true,\"steps\":[\"accept: ok\"]}";
        assert_eq!(results_of(ok, false), vec!["accept: ok".to_string()]);
        let late = b"HTTP/1.1 504 Gateway Timeout\r\n\r\n{\"done\":false,\"steps\":[]}";
        assert_eq!(results_of(late, true), vec![NO_APP.to_string()]);
        assert_eq!(
            results_of(late, false),
            vec!["results: HTTP 504: {\"done\":false,\"steps\":[]}".to_string()]
        );
    }
}
