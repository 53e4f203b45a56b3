//! The HTML report: the verdict table, then one SVG timeline per scenario × endpoint.
//!
//! A race is understood when it is seen: which connection did what, when, relative to the state
//! it was in. Each timeline has a lane per user connection: the client's frames above, the
//! server's lifecycle states as coloured bands, what the server sent (or dropped) below, and
//! every violation as a red line with its invariant's name. The file is self-contained (inline
//! CSS and SVG, no script, no fetch), so it opens from a CI artifact anywhere, and the same
//! outcomes give the same bytes.
//!
//! A run with more users than a page can hold ([`fold`]) leads with a summary and draws only some
//! of its lanes, folding the rest into a count.
//!
//! The time axis is virtual milliseconds, piecewise linear: distinct instants are kept a few
//! pixels apart, and idle stretches longer than [`LINEAR_MS`] are compressed (marked `≈` on the
//! axis), so a 5 ms gap during setup stays visible next to a second of settle time. Tick labels
//! carry the true times.

use std::collections::BTreeSet;
use std::fmt::Write as _;

pub(crate) mod client;
mod fold;

use html_escape::encode_text as text;
use indexmap::IndexMap;

use super::{by_scenario, summary};
use crate::endpoint::EndpointKind;
use crate::invariant::{Invariant, Violation};
use crate::runner::RunOutcome;
use crate::scenario::Verdict;
use crate::trace::{EventKind, Frame, TraceEvent};

/// Gaps up to this long are drawn to scale; longer ones are compressed logarithmically.
const LINEAR_MS: f64 = 200.0;
/// How much a compressed gap grows per e-fold of its length, in milliseconds of drawing.
const LOG_MS: f64 = 80.0;
/// The user-id column.
const LABEL_W: f64 = 190.0;
/// The time axis.
const PLOT_W: f64 = 1060.0;
/// Room after the last instant, where bands that never ended run on.
const TAIL_W: f64 = 28.0;
const RIGHT_W: f64 = 30.0;
const SVG_W: f64 = LABEL_W + PLOT_W + RIGHT_W;
const AXIS_H: f64 = 30.0;
const ROW_H: f64 = 16.0;
const BAND_H: f64 = 24.0;
const VROW_H: f64 = 17.0;
const LANE_GAP: f64 = 14.0;
/// Monospace glyph width at the label font size (11px), for packing labels without overlap.
const CHAR_W: f64 = 6.7;

const CSS: &str = r#"
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:24px;color:#1b1f24;background:#fff}
h1{font-size:22px;margin:0 0 4px}
h2{font-size:17px;margin:28px 0 4px;padding-top:8px;border-top:2px solid #d0d7de}
h3{font-size:14px;margin:14px 0 4px;font-weight:600}
code,pre,.mono{font-family:ui-monospace,"DejaVu Sans Mono",Menlo,Consolas,monospace}
.summary{font-size:15px;margin:0 0 12px}
.gate-pass{color:#116329}.gate-none{color:#9a6700;font-weight:700}.gate-fail{color:#b42318;font-weight:700}
table.verdicts{border-collapse:collapse;margin:8px 0 16px;font-size:13px}
table.verdicts th,table.verdicts td{border:1px solid #d0d7de;padding:3px 8px;text-align:left;vertical-align:top}
table.verdicts th{background:#f6f8fa}
td.pass{background:#e6f4ea}td.fail{background:#fde8e7}td.mismatch{outline:3px solid #b42318;outline-offset:-3px}
td a{color:inherit;text-decoration:none}td a:hover{text-decoration:underline}
.inv{font-family:ui-monospace,"DejaVu Sans Mono",monospace;color:#b42318}
.file{color:#57606a;font-size:12px;margin:0}
.run{margin:6px 0 18px;padding-left:10px;border-left:4px solid #d0d7de}
.run.fail{border-left-color:#d62728}.run.pass{border-left-color:#2da44e}
.run svg{display:block;width:100%;max-width:1280px;height:auto;border:1px solid #d0d7de;border-radius:4px}
ol.violations{margin:4px 0;padding-left:22px;font-size:13px}
ol.violations li{margin:1px 0}
details{font-size:12px;margin:4px 0}
details pre{background:#f6f8fa;padding:8px;overflow-x:auto;margin:4px 0}
.legend{margin:6px 0 10px}
.legend svg{display:block;max-width:1280px;width:100%;height:auto}
"#;

/// Lifecycle states in order, with their band colour and label.
const STATES: [(&str, &str, &str); 7] = [
    ("connecting", "#d9d9d9", "connecting"),
    ("accepted", "#fdd49e", "accepted"),
    ("authenticated", "#fdae6b", "authenticated"),
    ("services_ready", "#9ecae1", "services ready"),
    ("processing_ready", "#74c476", "processing ready"),
    ("closed", "#a3a3a3", "closed"),
    ("failed", "#c994c7", "failed"),
];

const RED: &str = "#d62728";
const CLIENT: &str = "#1f63b4";
const SERVER: &str = "#1a7f37";
const PUSH: &str = "#7b3fb5";
const DROP: &str = "#3b3b3b";
const REJECT: &str = "#d9730d";

fn state_style(state: &str) -> (&'static str, String) {
    STATES
        .iter()
        .find(|(name, _, _)| *name == state)
        .map(|(_, colour, label)| (*colour, (*label).to_string()))
        .unwrap_or(("#eeeeee", state.replace('_', " ")))
}

/// Renders the report for `outcomes`: a self-contained HTML document.
pub fn html(outcomes: &[RunOutcome]) -> String {
    let mut out = String::with_capacity(64 * 1024 + outcomes.len() * 16 * 1024);
    let s = summary(outcomes);
    let grouped = by_scenario(outcomes);
    let endpoints: Vec<EndpointKind> = EndpointKind::ALL
        .into_iter()
        .filter(|k| outcomes.iter().any(|o| o.endpoint == *k))
        .collect();

    out.push_str("<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n");
    out.push_str("<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n");
    out.push_str("<title>racegate report</title>\n<style>");
    out.push_str(CSS);
    // Only a report with a folded run carries its styles, so a small report's bytes are as they
    // were before folding existed.
    if outcomes.iter().any(fold::is_large) {
        out.push_str(fold::CSS);
    }
    out.push_str("</style>\n</head>\n<body>\n<h1>racegate report</h1>\n");
    // The same words as the table's summary line; only the verdict at its end is coloured.
    let line = s.line();
    let (class, split) = match (s.gated, s.mismatches) {
        (0, _) => ("gate-none", line.find("0 of ")),
        (_, 0) => ("gate-pass", line.rfind("gate passes")),
        _ => ("gate-fail", line.rfind("gate FAILS")),
    };
    let (head, tail) = line.split_at(split.unwrap_or(0));
    let _ = writeln!(
        out,
        "<p class=\"summary\">{}<span class=\"{class}\">{}</span></p>",
        text(head),
        text(tail)
    );

    // The verdict table: a row per scenario, a cell per endpoint linking to its timeline.
    out.push_str("<table class=\"verdicts\">\n<thead><tr><th>scenario</th>");
    for k in &endpoints {
        let _ = write!(out, "<th>{k}</th>");
    }
    out.push_str("</tr></thead>\n<tbody>\n");
    for (si, (name, runs)) in grouped.iter().enumerate() {
        let _ = write!(
            out,
            "<tr><td><a href=\"#scenario-{si}\">{}</a></td>",
            text(name)
        );
        for k in &endpoints {
            match runs.iter().find(|o| o.endpoint == *k) {
                Some(o) => {
                    let mut classes = vec![o.verdict.name()];
                    if !o.matches_expectation() {
                        classes.push("mismatch");
                    }
                    let mark = match (o.gated(), o.matches_expectation()) {
                        (false, _) => "not gated: ",
                        (true, true) => "✓ ",
                        (true, false) => "✗ ",
                    };
                    let first = o
                        .violations
                        .first()
                        .map(|v| format!(" <span class=\"inv\">{}</span>", v.invariant))
                        .unwrap_or_default();
                    let _ = write!(
                        out,
                        "<td class=\"{}\"><a href=\"#{}\">{mark}{}{first}</a></td>",
                        classes.join(" "),
                        run_anchor(si, *k),
                        o.verdict
                    );
                }
                None => out.push_str("<td>-</td>"),
            }
        }
        out.push_str("</tr>\n");
    }
    out.push_str("</tbody>\n</table>\n");
    out.push_str(
        "<p class=\"file\">✓ the verdict matches <code>[expect]</code>, ✗ it differs, no mark: \
         not gated. Each cell links to its timeline.</p>\n",
    );
    legend(&mut out);

    for (si, (name, runs)) in grouped.iter().enumerate() {
        let _ = writeln!(
            out,
            "<section id=\"scenario-{si}\">\n<h2>{}</h2>\n<p class=\"file\">{}</p>",
            text(name),
            text(&runs[0].file.display().to_string())
        );
        for o in runs {
            run_section(&mut out, si, o, fold::is_large(o));
        }
        out.push_str("</section>\n");
    }
    out.push_str("</body>\n</html>\n");
    out
}

fn run_anchor(scenario: usize, endpoint: EndpointKind) -> String {
    format!("run-{scenario}-{endpoint}")
}

/// How many violations a run lists before the rest fold away.
const SHOWN: usize = 8;

fn violation_item(out: &mut String, v: &Violation) {
    let _ = writeln!(
        out,
        "<li><span class=\"inv\">{}</span> user <code>{}</code> at {} ms: {}</li>",
        v.invariant,
        text(&v.user),
        v.at_ms,
        text(&v.detail)
    );
}

/// One run: its heading, then its timeline, violations and trace; a `large` run
/// ([`fold::is_large`]) is summarised and drawn in part.
fn run_section(out: &mut String, si: usize, o: &RunOutcome, large: bool) {
    let expected = match o.expected {
        None => "not gated".to_string(),
        Some(e) if e == o.verdict => format!("expected {e} ✓"),
        Some(e) => format!("expected {e} ✗ MISMATCH"),
    };
    let count = match o.violations.len() {
        0 => "no violations".to_string(),
        1 => "1 violation".to_string(),
        n => format!("{n} violations"),
    };
    let _ = writeln!(
        out,
        "<div class=\"run {}\" id=\"{}\">\n<h3>{} — <span class=\"{}\">{}</span> ({expected}; {count}; {} ms simulated)</h3>",
        o.verdict,
        run_anchor(si, o.endpoint),
        o.endpoint,
        if o.verdict == Verdict::Pass {
            "gate-pass"
        } else {
            "gate-fail"
        },
        o.verdict,
        o.simulated_ms
    );
    if !o.production.is_empty() {
        // What production showed, each held against this replay.
        out.push_str("<ul class=\"production\">\n");
        for check in &o.production {
            let _ = writeln!(
                out,
                "<li>{} {}</li>",
                if check.reproduced { "✓" } else { "✗" },
                text(&check.to_string())
            );
        }
        out.push_str("</ul>\n");
    }
    if large {
        fold::folded_run(out, o);
        out.push_str("</div>\n");
        return;
    }
    let title = format!("{} [{}]: {}", o.scenario, o.endpoint, o.verdict);
    timeline_svg(out, &title, &o.trace, &o.violations);
    // The first few violations are listed; a long tail folds away.
    if !o.violations.is_empty() {
        out.push_str("<ol class=\"violations\">\n");
        for v in o.violations.iter().take(SHOWN) {
            violation_item(out, v);
        }
        out.push_str("</ol>\n");
    }
    if o.violations.len() > SHOWN {
        let _ = writeln!(
            out,
            "<details><summary>{} more violations</summary><ol class=\"violations\" start=\"{}\">",
            o.violations.len() - SHOWN,
            SHOWN + 1
        );
        for v in &o.violations[SHOWN..] {
            violation_item(out, v);
        }
        out.push_str("</ol></details>\n");
    }
    out.push_str("<details><summary>trace</summary><pre>");
    for e in &o.trace {
        out.push_str(&text(&e.to_string()));
        out.push('\n');
    }
    out.push_str("</pre></details>\n</div>\n");
}

/// Maps virtual milliseconds to x within the plot: piecewise linear through every instant the
/// run recorded.
struct Scale {
    times: Vec<u64>,
    xs: Vec<f64>,
    /// Midpoints (x) of compressed gaps.
    breaks: Vec<f64>,
}

impl Scale {
    fn new(times: &BTreeSet<u64>, width: f64) -> Scale {
        let times: Vec<u64> = times.iter().copied().collect();
        let gaps: Vec<f64> = times.windows(2).map(|w| (w[1] - w[0]) as f64).collect();
        let drawn = |g: f64| {
            if g <= LINEAR_MS {
                g
            } else {
                LINEAR_MS + LOG_MS * (g / LINEAR_MS).ln()
            }
        };
        let total: f64 = gaps.iter().map(|g| drawn(*g)).sum();
        let n = gaps.len() as f64;
        // Every distinct instant gets a few pixels of its own, however close in time.
        let min_px = if n > 0.0 {
            (width * 0.35 / n).min(9.0)
        } else {
            0.0
        };
        let k = if total > 0.0 {
            (width - n * min_px) / total
        } else {
            0.0
        };
        let mut xs = Vec::with_capacity(times.len());
        let mut breaks = Vec::new();
        let mut x = 0.0;
        for (i, _) in times.iter().enumerate() {
            if i > 0 {
                let g = gaps[i - 1];
                let w = min_px + k * drawn(g);
                if g > 2.0 * LINEAR_MS {
                    breaks.push(x + w / 2.0);
                }
                x += w;
            }
            xs.push(x);
        }
        Scale { times, xs, breaks }
    }

    fn x(&self, t: u64) -> f64 {
        match self.times.binary_search(&t) {
            Ok(i) => self.xs[i],
            Err(0) => 0.0,
            Err(i) if i >= self.times.len() => self.xs.last().copied().unwrap_or(0.0),
            Err(i) => {
                let (t0, t1) = (self.times[i - 1] as f64, self.times[i] as f64);
                let (x0, x1) = (self.xs[i - 1], self.xs[i]);
                x0 + (x1 - x0) * (t as f64 - t0) / (t1 - t0)
            }
        }
    }
}

/// One mark on a lane.
struct Mark {
    at: u64,
    row: Row,
    glyph: Glyph,
    colour: &'static str,
    /// Shown next to the glyph (a chat or push number), if any.
    label: Option<String>,
    /// The tooltip: the trace line.
    title: String,
}

#[derive(Clone, Copy, PartialEq, Eq, Hash)]
enum Row {
    /// What the client did.
    Client,
    /// The server's lifecycle band.
    Band,
    /// What the server sent, issued, dropped or closed.
    Server,
}

#[derive(Clone, Copy)]
enum Glyph {
    Up,
    UpHollow,
    Down,
    Tick,
    Diamond,
    Cross,
    Ring,
    Square,
    Dot,
    Bar,
}

/// Everything drawn for one user's connection.
#[derive(Default)]
struct Lane {
    states: Vec<(u64, &'static str)>,
    terminal: Option<(u64, &'static str)>,
    marks: Vec<Mark>,
}

/// The short form of a chat or push id (`user/m1` → `m1`).
fn short_id(id: &str) -> &str {
    id.rsplit_once('/').map_or(id, |(_, tail)| tail)
}

fn lanes(trace: &[TraceEvent]) -> IndexMap<&str, Lane> {
    let mut lanes: IndexMap<&str, Lane> = IndexMap::new();
    for e in trace {
        let lane = lanes.entry(&*e.user).or_default();
        let title = format!("{} ms · {}", e.at_ms, e.kind);
        let mut mark = |row, glyph, colour, label: Option<String>| {
            lane.marks.push(Mark {
                at: e.at_ms,
                row,
                glyph,
                colour,
                label,
                title: title.clone(),
            })
        };
        match &e.kind {
            EventKind::ClientConnect => mark(Row::Client, Glyph::Ring, CLIENT, None),
            EventKind::ClientOpen => mark(Row::Client, Glyph::Dot, CLIENT, None),
            EventKind::ClientSend { id } => mark(
                Row::Client,
                Glyph::Up,
                CLIENT,
                Some(short_id(id).to_string()),
            ),
            EventKind::ClientUnsent { id, .. } => mark(
                Row::Client,
                Glyph::UpHollow,
                CLIENT,
                Some(short_id(id).to_string()),
            ),
            EventKind::ClientClose | EventKind::ClientDrop => {
                mark(Row::Client, Glyph::Square, CLIENT, None)
            }
            EventKind::ClientGaveUp => mark(Row::Client, Glyph::Cross, REJECT, None),
            EventKind::ClientClosed { .. } => mark(Row::Client, Glyph::Bar, CLIENT, None),
            EventKind::ClientRefused { .. } => mark(Row::Client, Glyph::Bar, REJECT, None),
            EventKind::ClientRecv { frame } => match frame {
                Frame::Ack { id, .. } => mark(
                    Row::Server,
                    Glyph::Down,
                    SERVER,
                    Some(short_id(id).to_string()),
                ),
                Frame::Event { .. } => mark(Row::Server, Glyph::Tick, SERVER, None),
                Frame::Push { id, .. } => mark(
                    Row::Server,
                    Glyph::Down,
                    PUSH,
                    Some(short_id(id).to_string()),
                ),
                Frame::Error { .. } => mark(Row::Server, Glyph::Down, REJECT, None),
                Frame::Ping => mark(Row::Server, Glyph::Tick, "#8c959f", None),
            },
            EventKind::PushIssued { id } => mark(
                Row::Server,
                Glyph::Diamond,
                PUSH,
                Some(short_id(id).to_string()),
            ),
            EventKind::State { state } => lane.states.push((e.at_ms, state.name())),
            EventKind::Terminal { state } => {
                if lane.terminal.is_none() {
                    lane.terminal = Some((e.at_ms, state.name()));
                }
            }
            EventKind::Handled { .. } => mark(Row::Band, Glyph::Dot, "#1b1f24", None),
            EventKind::Rejected { id, .. } => mark(
                Row::Server,
                Glyph::Ring,
                REJECT,
                Some(short_id(id).to_string()),
            ),
            EventKind::Dropped { id, .. } => mark(
                Row::Server,
                Glyph::Cross,
                DROP,
                Some(short_id(id).to_string()),
            ),
            EventKind::TransportError { .. } => mark(Row::Band, Glyph::Cross, RED, None),
            EventKind::ServerClose { code } => {
                mark(Row::Server, Glyph::Bar, DROP, Some(code.to_string()))
            }
            EventKind::Registered
            | EventKind::Unregistered
            | EventKind::CleanupRegistered { .. }
            | EventKind::CleanupRan { .. } => mark(Row::Band, Glyph::Tick, "#57606a", None),
        }
    }
    lanes
}

/// A violation label. The same invariant for the same user is one label with a count when its
/// instants are too close for a label each (a burst of cross-user frames reads as one).
struct Label<'a> {
    at: u64,
    invariant: Invariant,
    /// Every instant it covers, for the red lines.
    times: BTreeSet<u64>,
    details: Vec<&'a Violation>,
}

fn labels<'a>(violations: &'a [Violation], user: &str, x: impl Fn(u64) -> f64) -> Vec<Label<'a>> {
    let mut out: Vec<Label<'a>> = Vec::new();
    for v in violations.iter().filter(|v| v.user == user) {
        let joins = out
            .iter_mut()
            .rev()
            .find(|l| l.invariant == v.invariant && x(v.at_ms) <= x(l.at) + label_width(l) + 4.0);
        match joins {
            Some(l) => {
                l.times.insert(v.at_ms);
                l.details.push(v);
            }
            None => out.push(Label {
                at: v.at_ms,
                invariant: v.invariant,
                times: BTreeSet::from([v.at_ms]),
                details: vec![v],
            }),
        }
    }
    out
}

fn label_width(l: &Label<'_>) -> f64 {
    label_text(l).chars().count() as f64 * CHAR_W + 10.0
}

/// Places each label on the first row where it overlaps nothing; returns (row, x, width).
fn pack(items: &[(f64, f64)]) -> Vec<(usize, f64)> {
    let mut rows: Vec<f64> = Vec::new(); // right edge of the last label on each row
    let mut out = Vec::with_capacity(items.len());
    for &(x, w) in items {
        let row = match rows.iter().position(|&right| x >= right + 4.0) {
            Some(r) => r,
            None => {
                rows.push(f64::NEG_INFINITY);
                rows.len() - 1
            }
        };
        rows[row] = x + w;
        out.push((row, x));
    }
    out
}

fn glyph(out: &mut String, g: Glyph, x: f64, y: f64, colour: &str) {
    let _ = match g {
        Glyph::Up => write!(
            out,
            "<path d=\"M{:.1} {:.1}l5 8h-10z\" fill=\"{colour}\"/>",
            x,
            y - 4.0
        ),
        Glyph::UpHollow => write!(
            out,
            "<path d=\"M{:.1} {:.1}l5 8h-10z\" fill=\"#fff\" stroke=\"{colour}\" stroke-width=\"1.5\"/>",
            x,
            y - 4.0
        ),
        Glyph::Down => write!(
            out,
            "<path d=\"M{:.1} {:.1}l5 -8h-10z\" fill=\"{colour}\"/>",
            x,
            y + 4.0
        ),
        Glyph::Tick => write!(
            out,
            "<path d=\"M{:.1} {:.1}v10\" stroke=\"{colour}\" stroke-width=\"1.6\"/>",
            x,
            y - 5.0
        ),
        Glyph::Diamond => write!(
            out,
            "<path d=\"M{:.1} {:.1}l5 5l-5 5l-5 -5z\" fill=\"#fff\" stroke=\"{colour}\" stroke-width=\"1.6\"/>",
            x,
            y - 5.0
        ),
        Glyph::Cross => write!(
            out,
            "<path d=\"M{:.1} {:.1}l8 8m0 -8l-8 8\" stroke=\"{colour}\" stroke-width=\"2.2\"/>",
            x - 4.0,
            y - 4.0
        ),
        Glyph::Ring => write!(
            out,
            "<circle cx=\"{:.1}\" cy=\"{:.1}\" r=\"4\" fill=\"#fff\" stroke=\"{colour}\" stroke-width=\"1.6\"/>",
            x, y
        ),
        Glyph::Square => write!(
            out,
            "<rect x=\"{:.1}\" y=\"{:.1}\" width=\"8\" height=\"8\" fill=\"{colour}\"/>",
            x - 4.0,
            y - 4.0
        ),
        Glyph::Dot => write!(
            out,
            "<circle cx=\"{:.1}\" cy=\"{:.1}\" r=\"3.2\" fill=\"{colour}\"/>",
            x, y
        ),
        Glyph::Bar => write!(
            out,
            "<path d=\"M{:.1} {:.1}v12\" stroke=\"{colour}\" stroke-width=\"3\"/>",
            x,
            y - 6.0
        ),
    };
}

/// Wraps `inner` in a group with a tooltip.
fn titled(out: &mut String, title: &str, inner: impl FnOnce(&mut String)) {
    let _ = write!(out, "<g><title>{}</title>", text(title));
    inner(out);
    out.push_str("</g>");
}

fn timeline_svg(out: &mut String, title: &str, trace: &[TraceEvent], violations: &[Violation]) {
    let lanes = lanes(trace);
    let times: BTreeSet<u64> = trace.iter().map(|e| e.at_ms).collect();
    draw_timeline(out, title, &lanes, times, violations);
}

/// Draws `lanes` on a time axis through `times` (every instant something happened), with the
/// violations: a trace's lanes, or a probe's ([`client`]).
fn draw_timeline(
    out: &mut String,
    title: &str,
    lanes: &IndexMap<&str, Lane>,
    mut times: BTreeSet<u64>,
    violations: &[Violation],
) {
    times.extend(violations.iter().map(|v| v.at_ms));
    times.insert(0);
    let scale = Scale::new(&times, PLOT_W - TAIL_W);
    let x0 = LABEL_W;
    let px = |t: u64| x0 + scale.x(t);

    // Lay the lanes out first: each lane's height depends on how its violation labels pack.
    struct Placed<'a> {
        user: &'a str,
        top: f64,
        labels: Vec<(Label<'a>, usize, f64, f64)>,
    }
    let mut placed = Vec::with_capacity(lanes.len());
    let mut y = AXIS_H + 6.0;
    for user in lanes.keys() {
        let ls = labels(violations, user, px);
        let items: Vec<(f64, f64)> = ls
            .iter()
            .map(|l| {
                let w = label_width(l);
                let x = (px(l.at) - 3.0).min(SVG_W - w - 4.0);
                (x, w)
            })
            .collect();
        let rows = pack(&items);
        let nrows = rows.iter().map(|(r, _)| r + 1).max().unwrap_or(0);
        let height = ROW_H + BAND_H + ROW_H + 4.0 + nrows as f64 * VROW_H;
        let labels = ls
            .into_iter()
            .zip(rows)
            .zip(items)
            .map(|((l, (row, x)), (_, w))| (l, row, x, w))
            .collect();
        placed.push(Placed {
            user,
            top: y,
            labels,
        });
        y += height + LANE_GAP;
    }
    let svg_h = (y + 4.0).max(AXIS_H + 40.0);

    let _ = write!(
        out,
        "<svg xmlns=\"http://www.w3.org/2000/svg\" viewBox=\"0 0 {SVG_W} {svg_h:.0}\" \
         width=\"{SVG_W}\" height=\"{svg_h:.0}\" role=\"img\" font-size=\"11\" \
         font-family=\"ui-monospace,'DejaVu Sans Mono',Menlo,Consolas,monospace\">\
         <title>{}</title>",
        text(title)
    );
    out.push_str("<rect width=\"100%\" height=\"100%\" fill=\"#fff\"/>");

    // Axis: ticks at the run's ends, then where states change, then where violations happen;
    // a tick that would crowd one already placed is left out.
    let mut candidates: Vec<u64> = vec![0];
    candidates.extend(times.last());
    let mut changes: BTreeSet<u64> = BTreeSet::new();
    for lane in lanes.values() {
        changes.extend(lane.states.iter().map(|(t, _)| *t));
    }
    candidates.extend(changes);
    candidates.extend(violations.iter().map(|v| v.at_ms));
    let mut ticks: BTreeSet<u64> = BTreeSet::new();
    for t in candidates {
        let x = scale.x(t);
        if ticks.iter().all(|p| (scale.x(*p) - x).abs() >= 48.0) {
            ticks.insert(t);
        }
    }
    let grid_bottom = y - LANE_GAP;
    for t in &ticks {
        let x = px(*t);
        let _ = write!(
            out,
            "<path d=\"M{x:.1} {:.1}V{grid_bottom:.1}\" stroke=\"#eaeef2\"/>\
             <text x=\"{x:.1}\" y=\"{:.1}\" text-anchor=\"middle\" fill=\"#57606a\" font-size=\"10\">{t} ms</text>",
            AXIS_H - 6.0,
            AXIS_H - 10.0
        );
    }
    let _ = write!(
        out,
        "<path d=\"M{x0:.1} {:.1}H{:.1}\" stroke=\"#8c959f\"/>",
        AXIS_H - 6.0,
        x0 + PLOT_W
    );
    // Compressed idle time: a break in the axis.
    for b in &scale.breaks {
        let _ = write!(
            out,
            "<g><title>idle time, drawn shorter than to scale</title>\
             <rect x=\"{:.1}\" y=\"{:.1}\" width=\"12\" height=\"10\" fill=\"#fff\"/>\
             <text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\" fill=\"#57606a\" font-size=\"14\">≈</text></g>",
            x0 + b - 6.0,
            AXIS_H - 11.0,
            x0 + b,
            AXIS_H - 2.0
        );
    }
    let _ = write!(
        out,
        "<text x=\"8\" y=\"{:.1}\" fill=\"#57606a\" font-size=\"10\">virtual time</text>",
        AXIS_H - 10.0
    );

    for p in &placed {
        let Some(lane) = lanes.get(p.user) else {
            continue;
        };
        let top = p.top;
        let client_y = top + ROW_H / 2.0;
        let band_top = top + ROW_H;
        let band_y = band_top + BAND_H / 2.0;
        let server_y = band_top + BAND_H + ROW_H / 2.0;
        let vrows_top = band_top + BAND_H + ROW_H + 4.0;

        // The user label, with the rows named.
        let shown = ellipsis(p.user, 24);
        let _ = write!(
            out,
            "<text x=\"8\" y=\"{:.1}\" font-weight=\"bold\" fill=\"#1b1f24\"><title>{}</title>{}</text>",
            band_y + 4.0,
            text(p.user),
            text(&shown)
        );
        let _ = write!(
            out,
            "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\" fill=\"{CLIENT}\" font-size=\"9\">client ▲</text>\
             <text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\" fill=\"{SERVER}\" font-size=\"9\">server ▼</text>",
            x0 - 6.0,
            client_y + 3.0,
            x0 - 6.0,
            server_y + 3.0
        );
        let _ = write!(
            out,
            "<path d=\"M{x0:.1} {client_y:.1}H{:.1}M{x0:.1} {server_y:.1}H{:.1}\" stroke=\"#f0f2f4\"/>",
            x0 + PLOT_W,
            x0 + PLOT_W
        );

        // State bands: each state until the next, the last one to the axis end.
        let mut states = lane.states.clone();
        if let Some((t, s)) = lane.terminal
            && !states.iter().any(|(_, st)| *st == s)
        {
            states.push((t, s));
        }
        for (i, (t, state)) in states.iter().enumerate() {
            let start = px(*t);
            let end = states.get(i + 1).map_or(x0 + PLOT_W, |(next, _)| px(*next));
            let (colour, label) = state_style(state);
            let until = states.get(i + 1).map_or_else(
                || "end of run".to_string(),
                |(next, _)| format!("{next} ms"),
            );
            let w = (end - start).max(0.0);
            let _ = write!(
                out,
                "<rect x=\"{start:.1}\" y=\"{band_top:.1}\" width=\"{w:.1}\" height=\"{BAND_H}\" fill=\"{colour}\">\
                 <title>{} from {t} ms to {}</title></rect>",
                text(&label),
                text(&until)
            );
            let room = label.chars().count() as f64 * 6.1 + 8.0;
            if w >= room {
                let _ = write!(
                    out,
                    "<text x=\"{:.1}\" y=\"{:.1}\" font-size=\"10\" fill=\"#1b1f24\">{}</text>",
                    start + 4.0,
                    band_y + 3.5,
                    text(&label)
                );
            }
        }

        // Marks. Several at one instant on one row sit side by side.
        let mut taken: IndexMap<(Row, i64), u32> = IndexMap::new();
        let mut last_label_x: IndexMap<Row, f64> = IndexMap::new();
        for m in &lane.marks {
            let base = px(m.at);
            let slot = taken.entry((m.row, base.round() as i64)).or_insert(0);
            let x = base + f64::from(*slot) * 7.0;
            *slot += 1;
            let y = match m.row {
                Row::Client => client_y,
                Row::Band => band_y,
                Row::Server => server_y,
            };
            titled(out, &m.title, |out| {
                glyph(out, m.glyph, x, y, m.colour);
                if let Some(label) = &m.label {
                    let room = last_label_x.get(&m.row).is_none_or(|prev| x - prev >= 22.0);
                    if room && m.row != Row::Band {
                        let _ = write!(
                            out,
                            "<text x=\"{:.1}\" y=\"{:.1}\" font-size=\"9\" fill=\"{}\">{}</text>",
                            x + 6.0,
                            y + 3.0,
                            m.colour,
                            text(label)
                        );
                        last_label_x.insert(m.row, x);
                    }
                }
            });
        }

        // Violations: a red line through the lane to a labelled pill.
        for (l, row, lx, w) in &p.labels {
            let ly = vrows_top + *row as f64 * VROW_H;
            let tip: Vec<String> = l.details.iter().map(|v| v.to_string()).collect();
            titled(out, &tip.join("\n"), |out| {
                for t in &l.times {
                    let x = px(*t);
                    let _ = write!(
                        out,
                        "<path d=\"M{x:.1} {:.1}V{:.1}\" stroke=\"{RED}\" stroke-width=\"1.5\" stroke-dasharray=\"3 2\"/>\
                         <circle cx=\"{x:.1}\" cy=\"{band_y:.1}\" r=\"6.5\" fill=\"none\" stroke=\"{RED}\" stroke-width=\"2\"/>",
                        top + 1.0,
                        ly + 1.0,
                    );
                }
                let _ = write!(
                    out,
                    "<rect x=\"{lx:.1}\" y=\"{ly:.1}\" width=\"{w:.1}\" height=\"{:.1}\" rx=\"3\" fill=\"{RED}\"/>\
                     <text x=\"{:.1}\" y=\"{:.1}\" fill=\"#fff\" font-weight=\"bold\">{}</text>",
                    VROW_H - 3.0,
                    lx + 5.0,
                    ly + VROW_H - 6.0,
                    text(&label_text(l))
                );
            });
        }
    }
    out.push_str("</svg>\n");
}

fn label_text(l: &Label<'_>) -> String {
    match l.details.len() {
        1 => l.invariant.name().to_string(),
        n => format!("{} ×{n}", l.invariant),
    }
}

fn ellipsis(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        s.to_string()
    } else {
        let head: String = s.chars().take(max - 1).collect();
        format!("{head}…")
    }
}

/// The key to the glyphs and colours, drawn with the same shapes as the timelines.
fn legend(page: &mut String) {
    let mut out = String::new();
    let mut x = 8.0;
    for (_, colour, label) in STATES {
        let w = label.len() as f64 * 6.2 + 12.0;
        let _ = write!(
            out,
            "<rect x=\"{x:.1}\" y=\"4\" width=\"{w:.1}\" height=\"18\" fill=\"{colour}\"/>\
             <text x=\"{:.1}\" y=\"17\">{label}</text>",
            x + 6.0
        );
        x += w + 6.0;
    }
    let items: [(Glyph, &str, &str); 13] = [
        (Glyph::Ring, CLIENT, "client connects"),
        (Glyph::Dot, CLIENT, "client sees open"),
        (Glyph::Up, CLIENT, "client sends a chat"),
        (Glyph::Square, CLIENT, "client closes"),
        (Glyph::Diamond, PUSH, "push issued"),
        (Glyph::Down, SERVER, "ack received"),
        (Glyph::Tick, SERVER, "agent event"),
        (Glyph::Down, PUSH, "push received"),
        (Glyph::Cross, DROP, "dropped by server"),
        (Glyph::Ring, REJECT, "rejected visibly"),
        (Glyph::Bar, DROP, "server close"),
        (Glyph::Dot, "#1b1f24", "chat handled"),
        (Glyph::Cross, RED, "transport raised (Starlette)"),
    ];
    let mut x = 14.0;
    let mut y = 43.0;
    for (g, colour, label) in items {
        let w = label.len() as f64 * 6.6 + 30.0;
        if x + w > 1270.0 {
            x = 14.0;
            y += 22.0;
        }
        glyph(&mut out, g, x, y, colour);
        let _ = write!(
            out,
            "<text x=\"{:.1}\" y=\"{:.1}\">{label}</text>",
            x + 10.0,
            y + 4.0
        );
        x += w;
    }
    if x + 80.0 > 1270.0 {
        x = 14.0;
        y += 22.0;
    }
    let _ = write!(
        out,
        "<rect x=\"{x:.1}\" y=\"{:.1}\" width=\"70\" height=\"15\" rx=\"3\" fill=\"{RED}\"/>\
         <text x=\"{:.1}\" y=\"{:.1}\" fill=\"#fff\" font-weight=\"bold\">violation</text>",
        y - 8.0,
        x + 6.0,
        y + 4.0
    );
    let _ = write!(
        page,
        "<div class=\"legend\"><svg xmlns=\"http://www.w3.org/2000/svg\" viewBox=\"0 0 1280 {h:.0}\" \
         width=\"1280\" height=\"{h:.0}\" font-size=\"11\" font-family=\"system-ui,sans-serif\" \
         role=\"img\"><title>legend</title>{out}</svg></div>",
        h = y + 14.0
    );
    page.push('\n');
}
