//! The HTML report of a probe (`racegate probe --report`): the same timelines as a replay's, of
//! what each client of the team's own server sent and saw, and, where the app ran in-process,
//! what its side showed. A probe has no lifecycle states to draw, so a lane is its two rows of
//! marks (the client's above, the server's below) and the violations.

use std::collections::BTreeSet;
use std::fmt::Write as _;

use html_escape::encode_text as text;
use indexmap::IndexMap;

use super::{
    CLIENT, CSS, DROP, Glyph, Lane, Mark, PUSH, RED, REJECT, Row, SERVER, SHOWN, draw_timeline,
    legend, short_id, violation_item,
};
use crate::invariant::Violation;

/// What one mark of a probe's lane shows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientAct {
    /// The client opened its TCP connection.
    Connect,
    /// The handshake completed.
    Open,
    /// The server refused the upgrade with this status.
    Refused(u16),
    /// The client sent this chat.
    Send(String),
    /// The client could not send this chat.
    Unsent(String),
    /// An acknowledgement of this chat.
    Ack(String),
    /// One of a run's events.
    Event,
    /// A push.
    Push,
    /// An error frame.
    Error,
    /// A frame the `[protocol]` does not name.
    Other,
    /// The server closed with this code.
    ServerClose(u16),
    /// The connection ended without a close frame.
    Dropped,
    /// The client closed (or dropped) its side.
    ClientClose,
    /// The server answered the client's close.
    CloseAnswered,
    /// The client gave up waiting.
    GaveUp,
    /// The app used its socket where its state forbids it (`--app`).
    AppMisuse,
    /// An exception escaped the app (`--app`).
    AppRaised,
    /// The app's handler or a task of the connection was still pending at the end (`--app`).
    AppPending,
}

/// One thing that happened on a connection, with its line of the probe's timeline.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientMark {
    /// Milliseconds since the scenario began.
    pub at_ms: u64,
    /// The connection's user.
    pub user: String,
    /// What happened.
    pub act: ClientAct,
    /// Its line in words (the mark's hover text).
    pub line: String,
}

/// One probed scenario.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientRun {
    /// The scenario's name.
    pub scenario: String,
    /// Its file.
    pub file: String,
    /// `pass`, `fail` or `inconclusive`.
    pub verdict: String,
    /// Why it proves nothing, when inconclusive.
    pub inconclusive: Option<String>,
    /// Every violation, by time.
    pub violations: Vec<Violation>,
    /// Every record, by time.
    pub marks: Vec<ClientMark>,
    /// The time it took, in words (`1340 ms virtual`).
    pub took: String,
}

fn lanes(marks: &[ClientMark]) -> IndexMap<&str, Lane> {
    let mut lanes: IndexMap<&str, Lane> = IndexMap::new();
    for m in marks {
        let lane = lanes.entry(m.user.as_str()).or_default();
        let (row, glyph, colour, label) = match &m.act {
            ClientAct::Connect => (Row::Client, Glyph::Ring, CLIENT, None),
            ClientAct::Open => (Row::Client, Glyph::Dot, CLIENT, None),
            ClientAct::Refused(status) => {
                (Row::Client, Glyph::Bar, REJECT, Some(status.to_string()))
            }
            ClientAct::Send(id) => (
                Row::Client,
                Glyph::Up,
                CLIENT,
                Some(short_id(id).to_string()),
            ),
            ClientAct::Unsent(id) => (
                Row::Client,
                Glyph::UpHollow,
                CLIENT,
                Some(short_id(id).to_string()),
            ),
            ClientAct::ClientClose => (Row::Client, Glyph::Square, CLIENT, None),
            ClientAct::CloseAnswered => (Row::Client, Glyph::Bar, CLIENT, None),
            ClientAct::GaveUp => (Row::Client, Glyph::Cross, REJECT, None),
            ClientAct::Ack(id) => (
                Row::Server,
                Glyph::Down,
                SERVER,
                Some(short_id(id).to_string()),
            ),
            ClientAct::Event => (Row::Server, Glyph::Tick, SERVER, None),
            ClientAct::Push => (Row::Server, Glyph::Down, PUSH, None),
            ClientAct::Error => (Row::Server, Glyph::Down, REJECT, None),
            ClientAct::Other => (Row::Server, Glyph::Tick, "#8c959f", None),
            ClientAct::ServerClose(code) => (Row::Server, Glyph::Bar, DROP, Some(code.to_string())),
            ClientAct::Dropped => (Row::Server, Glyph::Cross, DROP, None),
            ClientAct::AppMisuse | ClientAct::AppRaised | ClientAct::AppPending => {
                (Row::Band, Glyph::Cross, RED, None)
            }
        };
        lane.marks.push(Mark {
            at: m.at_ms,
            row,
            glyph,
            colour,
            label,
            title: format!("{} ms · {}", m.at_ms, m.line),
        });
    }
    lanes
}

/// A probe's report: the verdict of each scenario, then its timeline, violations and records.
/// `title` names what was probed (`probe ws://…`, `probe app myapp.main:app /ws`). The same runs
/// give the same bytes.
pub fn client_report(title: &str, runs: &[ClientRun]) -> String {
    let mut out = String::with_capacity(32 * 1024 + runs.len() * 16 * 1024);
    out.push_str("<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n");
    out.push_str("<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n");
    let _ = write!(out, "<title>racegate {}</title>\n<style>", text(title));
    out.push_str(CSS);
    let _ = writeln!(
        out,
        "</style>\n</head>\n<body>\n<h1>racegate {}</h1>",
        text(title)
    );
    let count = |v: &str| runs.iter().filter(|r| r.verdict == v).count();
    let failing = count("fail") + count("inconclusive");
    let _ = writeln!(
        out,
        "<p class=\"summary\">{} scenarios, {} pass, {} fail, {} inconclusive: <span class=\"{}\">{}</span></p>",
        runs.len(),
        count("pass"),
        count("fail"),
        count("inconclusive"),
        if failing == 0 {
            "gate-pass"
        } else {
            "gate-fail"
        },
        if failing == 0 {
            "probe passes"
        } else {
            "probe fails"
        }
    );
    out.push_str("<table class=\"verdicts\">\n<thead><tr><th>scenario</th><th>verdict</th></tr></thead>\n<tbody>\n");
    for (i, r) in runs.iter().enumerate() {
        let first = r
            .violations
            .first()
            .map(|v| format!(" <span class=\"inv\">{}</span>", v.invariant))
            .unwrap_or_default();
        let class = if r.verdict == "pass" { "pass" } else { "fail" };
        let _ = writeln!(
            out,
            "<tr><td><a href=\"#scenario-{i}\">{}</a></td><td class=\"{class}\"><a href=\"#scenario-{i}\">{}{first}</a></td></tr>",
            text(&r.scenario),
            text(&r.verdict)
        );
    }
    out.push_str("</tbody>\n</table>\n");
    out.push_str(
        "<p class=\"file\">Each timeline has a lane per connection: what its client sent and did \
         above, what reached it below, and in red what the app's own side showed (in-process \
         only).</p>\n",
    );
    legend(&mut out);
    for (i, r) in runs.iter().enumerate() {
        let _ = writeln!(
            out,
            "<section id=\"scenario-{i}\">\n<h2>{}</h2>\n<p class=\"file\">{}</p>",
            text(&r.scenario),
            text(&r.file)
        );
        let count = match r.violations.len() {
            0 => "no violations".to_string(),
            1 => "1 violation".to_string(),
            n => format!("{n} violations"),
        };
        let _ = writeln!(
            out,
            "<div class=\"run {}\">\n<h3><span class=\"{}\">{}</span> ({count}; {})</h3>",
            if r.verdict == "pass" { "pass" } else { "fail" },
            if r.verdict == "pass" {
                "gate-pass"
            } else {
                "gate-fail"
            },
            text(&r.verdict),
            text(&r.took)
        );
        if let Some(why) = &r.inconclusive {
            let _ = writeln!(out, "<p>inconclusive: {}</p>", text(why));
        }
        let lanes = lanes(&r.marks);
        let times: BTreeSet<u64> = r.marks.iter().map(|m| m.at_ms).collect();
        draw_timeline(
            &mut out,
            &format!("{}: {}", r.scenario, r.verdict),
            &lanes,
            times,
            &r.violations,
        );
        if !r.violations.is_empty() {
            out.push_str("<ol class=\"violations\">\n");
            for v in r.violations.iter().take(SHOWN) {
                violation_item(&mut out, v);
            }
            out.push_str("</ol>\n");
        }
        if r.violations.len() > SHOWN {
            let _ = writeln!(
                out,
                "<details><summary>{} more violations</summary><ol class=\"violations\" start=\"{}\">",
                r.violations.len() - SHOWN,
                SHOWN + 1
            );
            for v in &r.violations[SHOWN..] {
                violation_item(&mut out, v);
            }
            out.push_str("</ol></details>\n");
        }
        out.push_str("<details><summary>records</summary><pre>");
        for m in &r.marks {
            let _ = writeln!(
                out,
                "{:>7} ms  {:<24} {}",
                m.at_ms,
                text(&m.user),
                text(&m.line)
            );
        }
        out.push_str("</pre></details>\n</div>\n</section>\n");
    }
    out.push_str("</body>\n</html>\n");
    out
}
