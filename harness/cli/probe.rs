//! `racegate probe`: replay scenarios' clients against a live WebSocket server and check what a
//! client can observe. Exit 0 every scenario holds, 1 an invariant is violated, 2 bad input or a
//! server that cannot be reached.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, ValueEnum};
use racegate_probe::app::AppTarget;
use racegate_probe::{
    ExtraHeader, Options, ProbeVerdict, Target, Tls, TlsOptions, Tokens, probe_all, probe_app,
    report,
};

use crate::app::{AppArgs, Flags};
use crate::logging::{note, say, warning};
use crate::{Outcome, emit};

#[derive(Parser)]
pub(crate) struct ProbeArgs {
    /// A live server: ws://HOST:PORT/PATH or wss://HOST:PORT/PATH, on a real clock. Each user's
    /// id is added as `?token=<id>` unless the scenario's `[protocol]` says otherwise. Without
    /// --url or --app, `url` or `app` in the project's [tool.racegate] (pyproject.toml or
    /// racegate.toml, from here upward) says which.
    #[arg(long, conflicts_with = "app")]
    url: Option<String>,
    #[command(flatten)]
    app: AppArgs,
    /// For wss://: also trust the CA certificates in this PEM file (a private CA), on top of the
    /// public and system roots.
    #[arg(long, value_name = "FILE", conflicts_with = "app")]
    ca_cert: Option<PathBuf>,
    /// For wss://: accept any certificate, unverified (self-signed staging only; a warning is
    /// printed on every run).
    #[arg(long, conflicts_with_all = ["ca_cert", "app"])]
    insecure: bool,
    /// Users' tokens for `{token}` in `[protocol]` and --header values: a TOML or JSON object
    /// of user id -> token. Users not in it are looked up in the variable the scenario's
    /// `token_env` names. Tokens are masked as *** in every output.
    #[arg(long, value_name = "FILE")]
    tokens: Option<PathBuf>,
    /// A header for every user's upgrade request, `Name: value` (repeatable); the value may use
    /// `{user}` and `{token}`.
    #[arg(long = "header", value_name = "NAME: VALUE")]
    headers: Vec<String>,
    /// The `Origin` header, for servers that check it (e.g. https://app.example.com).
    #[arg(long, value_name = "URL")]
    origin: Option<String>,
    /// Scenario files or folders of `*.toml` files (repeatable). Default: `scenarios/` if it is
    /// here, else the scenarios built into racegate.
    #[arg(long = "scenario", value_name = "FILE|DIR", num_args = 1..)]
    scenarios: Vec<PathBuf>,
    /// Output format.
    #[arg(long, value_enum, default_value_t = Format::Table)]
    format: Format,
    /// Budget per scenario, from its first connect; clients wait for their chats' answers up to
    /// then, and whatever is still waiting is `stuck`. Default: the scenario's own time plus
    /// 10000 ms.
    #[arg(long, value_name = "MS")]
    timeout_ms: Option<u64>,
    /// Include what every client saw (table and JSON).
    #[arg(long)]
    trace: bool,
    /// Do not fail the gate for a scenario that exercised nothing (every connection refused or
    /// closed before a chat, or no chat answered).
    #[arg(long)]
    allow_inconclusive: bool,
    /// Write the output here instead of standard output.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Also write one self-contained HTML file with a timeline per scenario: what each client
    /// sent and saw, and (with an app) what the app's side showed.
    #[arg(long, value_name = "FILE")]
    report: Option<PathBuf>,
}

/// Where the scenarios' clients go.
enum Server {
    Url(Target),
    App(AppTarget),
}

#[derive(Clone, Copy, ValueEnum)]
enum Format {
    Table,
    Json,
    Junit,
}

pub(crate) fn probe(args: ProbeArgs) -> anyhow::Result<Outcome> {
    let settings = args.app.settings(&Flags {
        url: args.url.as_deref(),
        scenarios: &args.scenarios,
        tokens: args.tokens.as_deref(),
        timeout_ms: args.timeout_ms,
        allow_inconclusive: args.allow_inconclusive,
    })?;
    let server = match (&settings.url, settings.app_target()?) {
        (Some(url), _) => Server::Url(Target::parse(&url.value)?),
        (None, Some(app)) => Server::App(app),
        (None, None) => anyhow::bail!(
            "give --url (a live server) or --app (an ASGI app), or set `url` or `app` in \
             [tool.racegate] of the project's pyproject.toml (or in racegate.toml)"
        ),
    };
    if args.timeout_ms == Some(0) {
        anyhow::bail!("--timeout-ms must be at least 1");
    }
    let scenarios = settings.load_scenarios()?;
    if let (true, Server::Url(target)) = (args.insecure, &server) {
        warning!(
            "--insecure: TLS certificates are NOT verified; anyone between here and {} \
             can read and change this probe's traffic, credentials included",
            target.url()
        );
    }
    let tls = if let Server::Url(target) = &server
        && target.is_tls()
    {
        let tls_options = TlsOptions {
            ca_cert: args.ca_cert.clone(),
            insecure: args.insecure,
        };
        Some(Tls::new(&tls_options)?)
    } else {
        if args.ca_cert.is_some() {
            note!("--ca-cert has no effect on a ws:// URL");
        }
        None
    };
    let mut headers = Vec::with_capacity(args.headers.len() + 1);
    for (i, text) in args.headers.iter().enumerate() {
        // The value is never echoed: it may hold a secret.
        let header =
            ExtraHeader::parse(text).map_err(|e| anyhow::anyhow!("--header #{}: {e}", i + 1))?;
        headers.push(header);
    }
    if let Some(origin) = &args.origin {
        headers.push(ExtraHeader::origin(origin).map_err(|e| anyhow::anyhow!("--origin: {e}"))?);
    }
    let tokens = match &settings.tokens {
        Some(path) => Tokens::load(&path.value)?,
        None => Tokens::default(),
    };
    let options = Options {
        timeout_ms: settings.timeout_ms.as_ref().map(|t| t.value),
        tls,
        tokens,
        headers,
    };
    if let Server::App(app) = &server {
        crate::app::check_fail_at(app, &scenarios)?;
    }
    for s in &scenarios {
        let pushes: usize = s.users.iter().map(|u| u.pushes.len()).sum();
        if pushes > 0 {
            note!(
                "{}: {pushes} push(es) ignored (pushes are server-side; probe drives clients)",
                s.name
            );
        }
        let own = racegate_probe::probe::own_ms(s);
        if options.timeout_for(s) <= own {
            warning!(
                "{}: --timeout-ms {} is not longer than the scenario's own {own} ms; its \
                 connections will be reported stuck",
                s.name,
                options.timeout_for(s)
            );
        }
    }
    if options.timeout_ms.is_none()
        && matches!(server, Server::Url(_))
        && let Some(longest) = scenarios.iter().map(|s| options.timeout_for(s)).max()
    {
        note!(
            "waiting up to {longest} ms per scenario for answers (the scenario's own time \
             plus {} ms; --timeout-ms sets it)",
            racegate_probe::probe::DEFAULT_GRACE_MS
        );
    }
    let started = std::time::Instant::now();
    let (name, outcomes) = match &server {
        Server::Url(target) => (
            target.url().to_string(),
            probe_all(target, &scenarios, &options)?,
        ),
        Server::App(app) => (app.describe(), probe_app(app, &scenarios, &options)?),
    };
    if let Server::App(_) = server {
        let total = started.elapsed().as_secs_f64();
        let cases: f64 = outcomes.iter().map(|o| o.wall_ms).sum::<f64>() / 1000.0;
        note!(
            "{} scenario(s) against the app in {total:.2} s of real time: {:.2} s to start \
             Python and the app, then {:.1} ms a scenario on the virtual clock",
            outcomes.len(),
            (total - cases).max(0.0),
            cases * 1000.0 / outcomes.len().max(1) as f64
        );
    }
    let allow = settings.allow_inconclusive.value;
    let text = match args.format {
        Format::Table => report::table(&name, &outcomes, args.trace, allow),
        Format::Json => report::json(&name, &outcomes, args.trace)?,
        Format::Junit => report::junit(&name, &outcomes, allow).context("writing JUnit XML")?,
    };
    emit(args.out.as_ref(), &text)?;
    if let Some(path) = &args.report {
        let protocols: Vec<&racegate_replay::scenario::Protocol> =
            scenarios.iter().map(|s| &s.protocol).collect();
        std::fs::write(path, report::html(&name, &outcomes, &protocols))
            .with_context(|| format!("writing {}", path.display()))?;
    }
    let summary = report::Summary::of(&outcomes);
    // The table ends with this line already; any other output goes to a tool, so the person
    // watching the CI log still gets the verdict on standard error.
    if args.out.is_some() || !matches!(args.format, Format::Table) {
        for o in outcomes.iter().filter(|o| o.verdict != ProbeVerdict::Pass) {
            match &o.inconclusive {
                Some(why) => say!("{}: inconclusive: {why}", o.scenario),
                None => {
                    let mut names: Vec<&str> =
                        o.violations.iter().map(|v| v.invariant.name()).collect();
                    names.sort_unstable();
                    names.dedup();
                    say!("{}: fail: {}", o.scenario, names.join(", "));
                }
            }
        }
        say!("{}", summary.line(allow));
    }
    Ok(if summary.passes(allow) {
        Outcome::Pass
    } else {
        Outcome::Fail
    })
}
