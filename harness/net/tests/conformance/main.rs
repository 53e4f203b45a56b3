//! The conformance suite: every case of `conformance/cases.rs` runs against four arms, and the
//! two models and the in-process driver must agree with the real thing.
//!
//! - **fake**: `racegate_replay::transport::fake`, on a paused clock (virtual time);
//! - **ws**: `racegate_net::WsSocket`, served by `racegate_net::serve_with` on loopback (the
//!   listener, upgrade and shutdown code of `racegate serve`), in real time;
//! - **uvicorn**: the reference app (`conformance/app.py`, real Starlette under uvicorn); a
//!   process of its own, stopped by SIGTERM, for each server-shutdown case;
//! - **app**: the same reference app run in-process by `probe --app`'s driver, on its virtual
//!   clock (`conformance/app.rs`).
//!
//! A shutdown case (`Case::shuts_down`) has no fake arm: the fake has no server to shut down.
//!
//! Each arm yields one [`Outcome`]: each app step's result (`ok`, `ok <value>`, or the exception
//! Starlette raises, as `<class>: <text>` or `WebSocketDisconnect(<code>)`) and what the client
//! saw (see `conformance/client.rs`). fake, ws and app are compared with uvicorn; a disagreement
//! is allowed only where the deviations table of `docs/conformance.md` lists it. The last line
//! printed (and `target/conformance-summary.txt`) is the summary `make conformance` ends with.

mod app;
mod cases;
mod client;
mod uvicorn;

use std::fmt::Write as _;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use racegate_net::{Limits, WsSocket, serve_with};
use racegate_replay::trace::Frame;
use racegate_replay::transport::fake::{self, ClientEvent, FakeClient, FakeSocket, WsState};
use racegate_replay::transport::{ErrorKind, Inbound, ServerSocket, TransportError};
use tokio::net::TcpListener;
use tokio::sync::oneshot;

use app::AppArm;
use cases::{AppStep, CASES, Case, ClientOp};
use client::RawClient;
use uvicorn::Uvicorn;

/// What one arm observed for one case.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Outcome {
    app: Vec<String>,
    client: Vec<String>,
}

impl Outcome {
    fn lines(&self) -> Vec<String> {
        let app = self.app.iter().map(|s| format!("app    {s}"));
        let client = self.client.iter().map(|s| format!("client {s}"));
        app.chain(client).map(|s| shorten(&s)).collect()
    }
}

/// Long values (the large message) print as their length.
fn shorten(s: &str) -> String {
    if s.len() <= 120 {
        return s.to_string();
    }
    match s.split_once(" ok ") {
        Some((head, value)) => format!("{head} ok <{} bytes>", value.len()),
        None => format!("{}… <{} bytes>", &s[..100], s.len()),
    }
}

/// Starlette's exception for a transport error: its class, and its text.
fn describe(e: &TransportError) -> String {
    match e.kind {
        // Starlette 1.10 raises its `WebSocketDisconnected` (a RuntimeError) for these.
        ErrorKind::NotConnected | ErrorKind::SendAfterClose | ErrorKind::ReceiveAfterDisconnect => {
            format!("WebSocketDisconnected: {}", e.message)
        }
        ErrorKind::UnexpectedMessage => format!("RuntimeError: {}", e.message),
        ErrorKind::Disconnected(code) => format!("WebSocketDisconnect({code})"),
        // uvicorn's `ClientDisconnected` has no text.
        ErrorKind::ClientDisconnected => "ClientDisconnected".into(),
    }
}

fn state_name(s: WsState) -> &'static str {
    match s {
        WsState::Connecting => "CONNECTING",
        WsState::Connected => "CONNECTED",
        WsState::Disconnected => "DISCONNECTED",
    }
}

/// The two Starlette states, which the `ServerSocket` trait does not expose.
trait Inspect: ServerSocket {
    fn app_state(&self) -> WsState;
    fn client_state(&self) -> WsState;
}

impl Inspect for FakeSocket {
    fn app_state(&self) -> WsState {
        self.application_state()
    }
    fn client_state(&self) -> WsState {
        FakeSocket::client_state(self)
    }
}

impl Inspect for WsSocket {
    fn app_state(&self) -> WsState {
        self.application_state()
    }
    fn client_state(&self) -> WsState {
        WsSocket::client_state(self)
    }
}

fn push(text: &str) -> Frame {
    Frame::Push {
        id: "s".into(),
        text: text.into(),
        user: "conf".into(),
    }
}

/// Runs the app script on `socket`, recording each step as the reference app does.
async fn run_app<S: Inspect>(socket: Arc<S>, steps: &[AppStep]) -> Vec<String> {
    let ok = |r: Result<(), TransportError>| match r {
        Ok(()) => "ok".to_string(),
        Err(e) => describe(&e),
    };
    let mut out = Vec::new();
    for step in steps {
        let result = match *step {
            AppStep::Sleep(ms) => {
                tokio::time::sleep(Duration::from_millis(ms)).await; // real-time: on ws (paused for the fake)
                "ok".into()
            }
            AppStep::Accept => ok(socket.accept().await),
            AppStep::Send(text) => ok(socket.send(&push(text))),
            AppStep::Receive => match socket.receive().await {
                Ok(Inbound::Chat { text, .. }) => format!("ok {text}"),
                Ok(Inbound::Disconnect(code)) => format!("WebSocketDisconnect({code})"),
                Err(e) => describe(&e),
            },
            AppStep::Close(code) => ok(socket.close(code).await),
            AppStep::Raise => {
                out.push("raise: raised".into());
                break;
            }
            AppStep::ClientState => format!("ok {}", state_name(socket.client_state())),
            AppStep::AppState => format!("ok {}", state_name(socket.app_state())),
            AppStep::Ready => format!("ok {}", socket.is_connected_and_ready()),
        };
        out.push(format!("{}: {result}", step.label()));
    }
    out
}

// ---------------------------------------------------------------------------------------------
// The fake arm.

/// What the fake client has seen, normalized as the raw client normalizes the wire.
#[derive(Default)]
struct FakeSeen {
    seen: Vec<String>,
    responded: bool,
    ended: bool,
    /// The client closed or dropped: nothing more is recorded (as in the raw client).
    done: bool,
}

impl FakeSeen {
    fn see(&mut self, event: Option<ClientEvent>) {
        let what = match event {
            Some(ClientEvent::Open) => {
                self.responded = true;
                "http 101".to_string()
            }
            // The fake models a refusal's status, not its bytes: uvicorn's 500 carries its
            // "Internal Server Error" text and its 403 (Starlette's close before accept) nothing,
            // and that is all a body can be here.
            Some(ClientEvent::Refused(status)) => {
                self.responded = true;
                self.ended = true;
                let body = if status == 500 { " body" } else { "" };
                format!("http {status}{body}")
            }
            Some(ClientEvent::Dropped) => {
                self.ended = true;
                "dropped".into()
            }
            Some(ClientEvent::Closed(code)) => {
                self.ended = true;
                format!("close {code}")
            }
            Some(ClientEvent::Frame(Frame::Ping)) => return,
            Some(ClientEvent::Frame(Frame::Push { text, .. })) => format!("frame {text}"),
            Some(ClientEvent::Frame(other)) => format!("frame {other:?}"),
            None => {
                self.ended = true;
                if self.responded {
                    "dropped".into()
                } else {
                    self.responded = true;
                    "no response".into()
                }
            }
        };
        if !self.done {
            self.seen.push(what);
        }
    }
}

/// Virtual time the fake client waits for a response or the end (free on a paused clock).
const FAKE_WAIT: Duration = Duration::from_secs(60);

fn run_fake(case: &Case) -> Outcome {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .unwrap();
    rt.block_on(async {
        let mut seen = FakeSeen::default();
        let mut client: Option<FakeClient> = None;
        let mut app = None;
        let mut sent = 0;
        for op in case.client {
            match *op {
                ClientOp::Connect | ClientOp::Start | ClientOp::Pipelined(_) => {
                    let (socket, c) = fake::pair(Duration::ZERO);
                    if let ClientOp::Pipelined(texts) = *op {
                        for text in texts {
                            sent += 1;
                            // Refused before open (the fake has no pipelining): lost.
                            let _ = c.send_chat(&format!("c{sent}"), text);
                        }
                    }
                    let script = case.app;
                    app = Some(tokio::spawn(async move {
                        let steps = run_app(socket.clone(), script).await;
                        // The script is the ASGI callable: its end is the app's end.
                        socket.app_finished();
                        steps
                    }));
                    client = Some(c);
                    if *op != ClientOp::Start {
                        let c = client.as_mut().unwrap();
                        while !seen.responded {
                            match tokio::time::timeout(FAKE_WAIT, c.next_event()).await {
                                Ok(event) => seen.see(event),
                                Err(_) => break,
                            }
                        }
                    }
                }
                ClientOp::Send(text) => {
                    sent += 1;
                    if let Some(c) = &client {
                        let _ = c.send_chat(&format!("c{sent}"), text);
                    }
                }
                ClientOp::SendTogether(texts) => {
                    for text in texts {
                        sent += 1;
                        if let Some(c) = &client {
                            let _ = c.send_chat(&format!("c{sent}"), text);
                        }
                    }
                }
                ClientOp::SendBig(n) => {
                    sent += 1;
                    if let Some(c) = &client {
                        let _ = c.send_chat(&format!("c{sent}"), &"x".repeat(n));
                    }
                }
                ClientOp::Close(code) => {
                    seen.done = true;
                    if let Some(c) = &client {
                        c.close_with(code);
                    }
                }
                ClientOp::Drop => {
                    seen.done = true;
                    if let Some(c) = &client {
                        c.drop_connection();
                    }
                }
                // The fake arm's clock is paused: this wait costs no wall time there.
                ClientOp::Wait(ms) => tokio::time::sleep(Duration::from_millis(ms)).await, // paused
                // Shutdown cases never reach the fake (`Case::shuts_down`): it has no server.
                ClientOp::Open | ClientOp::Shutdown => {}
            }
        }
        let steps = match app {
            Some(app) => match tokio::time::timeout(FAKE_WAIT, app).await {
                Ok(Ok(steps)) => steps,
                Ok(Err(e)) => vec![format!("app task failed: {e}")],
                Err(_) => vec!["app script did not finish".into()],
            },
            None => vec!["never connected".into()],
        };
        if let Some(mut c) = client {
            while !seen.ended {
                match tokio::time::timeout(FAKE_WAIT, c.next_event()).await {
                    Ok(event) => seen.see(event),
                    Err(_) => break,
                }
            }
        }
        if !seen.ended && !seen.done {
            seen.seen.push(
                if seen.responded {
                    "open"
                } else {
                    "no response"
                }
                .into(),
            );
        }
        Outcome {
            app: steps,
            client: seen.seen,
        }
    })
}

// ---------------------------------------------------------------------------------------------
// The real arms: one raw client, against WsSocket or the reference app (the app arm plays the
// same client's bytes through the driver: `conformance/app.rs`).

/// What tells the server under test to shut down (a case's `ClientOp::Shutdown`).
type Stop<'a> = Option<&'a (dyn Fn() + Sync)>;

async fn drive_client(addr: SocketAddr, target: &str, case: &Case, stop: Stop<'_>) -> Vec<String> {
    let mut client: Option<RawClient> = None;
    for op in case.client {
        match *op {
            ClientOp::Connect | ClientOp::Start | ClientOp::Pipelined(_) | ClientOp::Open => {
                let pipelined = match *op {
                    ClientOp::Pipelined(texts) => texts,
                    _ => &[],
                };
                let started = if *op == ClientOp::Open {
                    RawClient::open(addr).await
                } else {
                    RawClient::start(addr, target, pipelined).await
                };
                let mut c = match started {
                    Ok(c) => c,
                    Err(e) => return vec![format!("could not connect: {e}")],
                };
                if matches!(*op, ClientOp::Connect | ClientOp::Pipelined(_)) {
                    c.wait_response().await;
                }
                client = Some(c);
            }
            ClientOp::Shutdown => {
                if let Some(stop) = stop {
                    stop();
                }
            }
            other => {
                if let Some(c) = client.as_mut() {
                    c.step(other).await;
                } else if let ClientOp::Wait(ms) = other {
                    tokio::time::sleep(Duration::from_millis(ms)).await; // real-time: the case's schedule
                }
            }
        }
    }
    match client {
        Some(c) => c.finish().await,
        None => vec!["never connected".into()],
    }
}

/// What an arm records when no application ever got the connection.
const NO_APP: &str = "no results: the app never ran";

/// The ws arm: the case's app script served by `racegate_net::serve_with` (the listener,
/// upgrade and shutdown code of `racegate serve`, with the script in place of an endpoint).
async fn run_ws(case: &Case) -> Outcome {
    let listener = match TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await {
        Ok(l) => l,
        Err(e) => return failed(format!("bind: {e}")),
    };
    let addr = listener.local_addr().unwrap();
    let script = case.app;
    let (steps_tx, steps_rx) = oneshot::channel::<Vec<String>>();
    let steps_tx = Mutex::new(Some(steps_tx));
    let (stop_tx, stop_rx) = oneshot::channel::<()>();
    let server = tokio::spawn(serve_with(
        listener,
        Limits::default(),
        async move {
            let _ = stop_rx.await;
        },
        move |socket| {
            // One connection per case: the first is the case's.
            let tx = steps_tx.lock().ok().and_then(|mut tx| tx.take());
            async move {
                let steps = run_app(socket, script).await;
                if let Some(tx) = tx {
                    let _ = tx.send(steps);
                }
            }
        },
    ));
    let stop_tx = Mutex::new(Some(stop_tx));
    let stop = || {
        if let Some(tx) = stop_tx.lock().ok().and_then(|mut tx| tx.take()) {
            let _ = tx.send(());
        }
    };
    let client = drive_client(addr, &format!("/ws?case={}", case.name), case, Some(&stop)).await;
    let app = if case.shuts_down() {
        // The script may outlive the server (as under uvicorn, which waits for it).
        match tokio::time::timeout(client::WAIT * 3, steps_rx).await {
            Ok(Ok(steps)) => steps,
            Ok(Err(_)) => vec![NO_APP.into()],
            Err(_) => vec!["app script did not finish".into()],
        }
    } else {
        // Any other case stops the server only once its script is done.
        let steps = tokio::time::timeout(client::WAIT * 3, steps_rx).await;
        stop();
        match steps {
            Ok(Ok(steps)) => steps,
            Ok(Err(_)) => vec![NO_APP.into()],
            Err(_) => vec!["app script did not finish".into()],
        }
    };
    if tokio::time::timeout(client::WAIT, server).await.is_err() {
        return failed("the server did not stop".into());
    }
    Outcome { app, client }
}

fn failed(why: String) -> Outcome {
    Outcome {
        app: vec![why],
        client: vec![],
    }
}

/// A query value: RFC 3986's unreserved characters kept, every other byte `%XX`.
fn percent_encode(s: &str) -> String {
    const NOT_UNRESERVED: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
        .remove(b'-')
        .remove(b'_')
        .remove(b'.')
        .remove(b'~');
    percent_encoding::utf8_percent_encode(s, NOT_UNRESERVED).to_string()
}

/// The reference app's target for `case`, under the run's unique id.
fn uvicorn_target(case: &Case, id: &str) -> String {
    let script = format!(
        "[{}]",
        case.app
            .iter()
            .map(AppStep::json)
            .collect::<Vec<_>>()
            .join(",")
    );
    format!("/ws?case={id}&script={}", percent_encode(&script))
}

/// The steps of a `/results` answer (or a results file).
fn steps_of(body: &str) -> Vec<String> {
    match serde_json::from_str::<serde_json::Value>(body) {
        Ok(v) => v["steps"]
            .as_array()
            .map(|steps| {
                steps
                    .iter()
                    .map(|s| s.as_str().unwrap_or("?").to_string())
                    .collect()
            })
            .unwrap_or_default(),
        Err(e) => vec![format!("results not JSON: {e}: {body}")],
    }
}

async fn run_uvicorn(case: &Case, server: &Uvicorn, run: &str) -> Outcome {
    let id = format!("{run}-{}", case.name);
    let client = drive_client(server.addr, &uvicorn_target(case, &id), case, None).await;
    let app = match server.get(&format!("/results/{id}?wait=20")).await {
        Ok((200, body)) => steps_of(&body),
        Ok((status, body)) => vec![format!("results: HTTP {status}: {body}")],
        Err(e) => vec![format!("results: {e}")],
    };
    Outcome { app, client }
}

/// A shutdown case: a reference app of its own, told to stop by SIGTERM at the case's
/// `Shutdown`; the script's results come from the file it writes (the server answers nothing
/// once it is shutting down), read after the process exits. The process is killed by its PID
/// when `server` drops, whatever happened.
async fn run_uvicorn_shutdown(case: &Case, run: &str) -> Outcome {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("conformance-results-{run}"));
    if let Err(e) = std::fs::create_dir_all(&dir) {
        return failed(format!("results folder {}: {e}", dir.display()));
    }
    let id = format!("{run}-{}", case.name);
    let file = dir.join(format!("{id}.json"));
    let _ = std::fs::remove_file(&file);
    let mut server = match Uvicorn::start_with_results(case.name, &dir).await {
        Ok(server) => server,
        Err(e) => return failed(format!("cannot start the reference app: {e}")),
    };
    let stop = || server.terminate();
    let client = drive_client(server.addr, &uvicorn_target(case, &id), case, Some(&stop)).await;
    if !server.wait_exit(client::WAIT * 2).await {
        return Outcome {
            app: vec![format!(
                "uvicorn did not exit after SIGTERM; its log:\n{}",
                server.log()
            )],
            client,
        };
    }
    let app = match std::fs::read_to_string(&file) {
        Ok(body) => steps_of(&body),
        Err(_) => vec![NO_APP.into()],
    };
    Outcome { app, client }
}

// ---------------------------------------------------------------------------------------------
// The deviations table and the verdict.

/// One listed deviation: (case, arm, reason).
type Deviation = (String, String, String);

/// The rows between the deviation markers of `docs/conformance.md`.
fn deviations() -> Vec<Deviation> {
    let path = uvicorn::workspace().join("docs/conformance.md");
    let doc = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{} must list the deviations: {e}", path.display()));
    let start = doc
        .find("<!-- deviations:start -->")
        .expect("docs/conformance.md has a `<!-- deviations:start -->` marker");
    let end = doc
        .find("<!-- deviations:end -->")
        .expect("docs/conformance.md has a `<!-- deviations:end -->` marker");
    doc[start..end]
        .lines()
        .filter(|l| l.trim_start().starts_with('|'))
        .map(|l| {
            l.trim()
                .trim_matches('|')
                .split('|')
                .map(|c| c.trim().trim_matches('`').to_string())
                .collect::<Vec<_>>()
        })
        .filter(|cells| cells.len() >= 3 && cells[0] != "case" && !cells[0].starts_with("--"))
        .map(|cells| (cells[0].clone(), cells[1].clone(), cells[2].clone()))
        .collect()
}

fn diff(model: &[String], real: &[String]) -> String {
    let mut out = String::new();
    for i in 0..model.len().max(real.len()) {
        match (model.get(i), real.get(i)) {
            (Some(m), Some(r)) if m == r => {
                let _ = writeln!(out, "        {m}");
            }
            (m, r) => {
                if let Some(m) = m {
                    let _ = writeln!(out, "      - {m}");
                }
                if let Some(r) = r {
                    let _ = writeln!(out, "      + {r}");
                }
            }
        }
    }
    out
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Agreement {
    Same,
    Listed,
    Differs,
}

#[test]
fn the_models_and_the_in_process_driver_behave_like_starlette_under_uvicorn() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let server = match rt.block_on(Uvicorn::start()) {
        Ok(server) => server,
        Err(e) => panic!("conformance: cannot start the reference app: {e}"),
    };
    let versions = rt
        .block_on(server.get("/versions"))
        .map(|(_, body)| body)
        .unwrap_or_else(|e| e);
    println!("reference app: {versions}");
    let mut app_arm = match AppArm::start() {
        Ok(arm) => arm,
        Err(e) => panic!("conformance: {e}"),
    };
    println!("app driver: {}", app_arm.loaded);
    // Like with like: the driver must serve with the WebSocket implementation uvicorn picked.
    let reference_ws = serde_json::from_str::<serde_json::Value>(&versions)
        .ok()
        .and_then(|v| v["ws_impl"].as_str().map(str::to_string))
        .unwrap_or_default();
    assert!(
        !reference_ws.is_empty() && app_arm.loaded.contains(&format!(".{reference_ws},")),
        "conformance: the app driver serves with {} but the reference uvicorn with {versions}",
        app_arm.loaded
    );
    let listed = deviations();
    assert!(
        listed.len() <= 3,
        "at most three deliberate deviations; docs/conformance.md lists {}",
        listed.len()
    );
    let run = format!("{}", std::process::id());
    let is_listed = |case: &str, arm: &str| {
        listed
            .iter()
            .find(|(c, a, _)| c == case && a == arm)
            .map(|(_, _, why)| why.clone())
    };

    let mut report = String::new();
    let mut failures = Vec::new();
    let mut stale = Vec::new();
    let (mut fake_ok, mut ws_ok, mut app_ok, mut deviating) = (0, 0, 0, 0);
    for case in CASES {
        // The fake has no server to shut down: a shutdown case has no fake arm.
        let fake = (!case.shuts_down()).then(|| run_fake(case));
        // On its own, before the real-time arms: it adds no load while they run.
        let app = app_arm.run(case, &format!("{run}-{}", case.name));
        let (ws, uv) = rt.block_on(async {
            if case.shuts_down() {
                tokio::join!(run_ws(case), run_uvicorn_shutdown(case, &run))
            } else {
                tokio::join!(run_ws(case), run_uvicorn(case, &server, &run))
            }
        });
        let real = uv.lines();
        let mut row = format!("{:<40}", case.name);
        if fake.is_none() {
            let _ = write!(row, " fake {:<10}", "n/a");
        }
        let arms = fake
            .iter()
            .map(|f| ("fake", f))
            .chain([("ws", &ws), ("app", &app)]);
        for (arm, model) in arms {
            let why = is_listed(case.name, arm);
            let agreement = match (model.lines() == real, &why) {
                (true, None) => Agreement::Same,
                (true, Some(_)) => {
                    stale.push(format!("{} [{arm}]", case.name));
                    Agreement::Same
                }
                (false, Some(_)) => Agreement::Listed,
                (false, None) => Agreement::Differs,
            };
            let mark = match agreement {
                Agreement::Same => "=",
                Agreement::Listed => "deviation",
                Agreement::Differs => "DIFFERS",
            };
            let _ = write!(row, " {arm} {mark:<10}");
            if agreement != Agreement::Differs {
                match arm {
                    "fake" => fake_ok += 1,
                    "ws" => ws_ok += 1,
                    _ => app_ok += 1,
                }
            }
            if agreement == Agreement::Listed {
                deviating += 1;
                let _ = writeln!(
                    report,
                    "deviation (listed): {} [{arm}]: {}",
                    case.name,
                    why.unwrap_or_default()
                );
            }
            if agreement == Agreement::Differs {
                let mut f = format!("\n{} [{arm} vs uvicorn]: {}\n", case.name, case.checks);
                let all = fake.iter().map(|f| ("fake", f));
                for (name, o) in all.chain([("ws", &ws), ("app", &app), ("uvicorn", &uv)]) {
                    let _ = writeln!(f, "  {name}:");
                    for l in o.lines() {
                        let _ = writeln!(f, "      {l}");
                    }
                }
                let _ = write!(
                    f,
                    "  diff ({arm} -, uvicorn +):\n{}",
                    diff(&model.lines(), &real)
                );
                failures.push(f);
            }
        }
        println!("{row}");
    }
    print!("{report}");
    for f in &failures {
        print!("{f}");
    }
    for s in &stale {
        println!("listed as a deviation but agrees (remove it from the table): {s}");
    }
    let n = CASES.len();
    let shutdown = CASES.iter().filter(|c| c.shuts_down()).count();
    let with_fake = n - shutdown;
    let summary = format!(
        "conformance: {n} cases, fake = uvicorn {fake_ok}/{with_fake} (the {shutdown} shutdown cases have no fake arm), ws = uvicorn {ws_ok}/{n}, app = uvicorn {app_ok}/{n}, deliberate deviations {deviating}"
    );
    let _ = std::fs::write(
        uvicorn::workspace().join("target/conformance-summary.txt"),
        format!("{summary}\n"),
    );
    if !failures.is_empty() || !stale.is_empty() {
        println!("reference app log:\n{}", server.log());
        println!("app driver log:\n{}", app_arm.log());
    }
    drop(server);
    if let Err(e) = app_arm.quit() {
        println!("the app driver did not end cleanly: {e}");
    }
    println!("{summary}");
    assert!(
        failures.is_empty() && stale.is_empty(),
        "{} unlisted disagreement(s), {} stale deviation(s); {summary}",
        failures.len(),
        stale.len()
    );
}
