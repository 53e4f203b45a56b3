//! Runs too large to draw whole: a summary first, then the lanes that matter.
//!
//! A lane costs about 10 KB of SVG, so a run of 5,000 users drawn in full is tens of megabytes
//! that no browser opens comfortably, and nobody reads 5,000 lanes anyway. A run with more than
//! [`FOLD_ABOVE`] users therefore leads with what a reader wants from it at that size: the
//! violations by invariant with the users each hit, and a histogram of time-to-ready (client
//! connect to the server's `processing_ready`). Then it draws full lanes for some users with
//! violations (each invariant's first users in turn, so every invariant is seen), plus a few
//! without, evenly spaced, for comparison, and folds the rest into a count. The drawn users'
//! trace stays one click away. The choice depends only on the run, so the same outcomes still
//! give the same bytes.

use std::collections::HashSet;
use std::fmt::Write as _;

use html_escape::encode_text as text;
use indexmap::{IndexMap, IndexSet};
use racegate_core::ConnectionState;

use super::{SHOWN, timeline_svg, violation_item};
use crate::invariant::{Invariant, Violation};
use crate::runner::RunOutcome;
use crate::trace::{EventKind, TraceEvent};

/// A run with more user lanes than this is folded; the bundled scenarios have at most five.
pub(super) const FOLD_ABOVE: usize = 40;
/// At most this many users with violations are drawn.
const DRAWN_VIOLATING: usize = 24;
/// And this many without, evenly spaced over the run's users.
const DRAWN_SAMPLE: usize = 6;
/// Bars in the time-to-ready histogram, at most.
const BINS: u64 = 24;

/// The folded runs' styles, added to the page only when it has one.
pub(super) const CSS: &str = r#"
table.fold{border-collapse:collapse;margin:6px 0 10px;font-size:13px}
table.fold th,table.fold td{border:1px solid #d0d7de;padding:3px 8px;text-align:left;vertical-align:top}
table.fold th{background:#f6f8fa}table.fold td.n{text-align:right;font-variant-numeric:tabular-nums}
table.fold details{margin:0}table.fold details code{white-space:normal;word-break:break-all}
.folded{font-size:13px;color:#57606a;margin:4px 0 8px}
.hist svg{display:block;max-width:1280px;width:100%;height:auto}
"#;

/// True when `o` has more user lanes than [`FOLD_ABOVE`].
pub(super) fn is_large(o: &RunOutcome) -> bool {
    let mut users: HashSet<&str> = HashSet::new();
    for e in &o.trace {
        if users.insert(&*e.user) && users.len() > FOLD_ABOVE {
            return true;
        }
    }
    false
}

/// `n` with thousands separated by commas: 4873 → `4,873`.
pub(super) fn thousands(n: usize) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn plural(n: usize, one: &str, many: &str) -> String {
    format!("{} {}", thousands(n), if n == 1 { one } else { many })
}

/// What one user's connection did that the summary needs.
#[derive(Default)]
struct UserFacts {
    connect: Option<u64>,
    ready: Option<u64>,
}

/// One invariant's violations.
struct ByInvariant<'a> {
    count: usize,
    first_ms: u64,
    /// The users it hit, in the order it first hit them.
    users: IndexSet<&'a str>,
}

/// The body of a folded run, after its heading: summary, histogram, the drawn lanes, what was
/// folded, the first violations, the drawn users' trace.
pub(super) fn folded_run(out: &mut String, o: &RunOutcome) {
    let mut users: IndexMap<&str, UserFacts> = IndexMap::new();
    for e in &o.trace {
        let facts = users.entry(&*e.user).or_default();
        match e.kind {
            EventKind::ClientConnect if facts.connect.is_none() => facts.connect = Some(e.at_ms),
            EventKind::State {
                state: ConnectionState::ProcessingReady,
            } if facts.ready.is_none() => facts.ready = Some(e.at_ms),
            _ => {}
        }
    }
    let mut by_invariant: IndexMap<Invariant, ByInvariant<'_>> = IndexMap::new();
    for v in &o.violations {
        let entry = by_invariant.entry(v.invariant).or_insert(ByInvariant {
            count: 0,
            first_ms: v.at_ms,
            users: IndexSet::new(),
        });
        entry.count += 1;
        entry.first_ms = entry.first_ms.min(v.at_ms);
        entry.users.insert(v.user.as_str());
    }
    // Invariants in the fixed order every output names them in.
    by_invariant.sort_unstable_keys();
    let violating: HashSet<&str> = o.violations.iter().map(|v| v.user.as_str()).collect();

    summary(out, &users, &by_invariant, violating.len());
    histogram(out, &users);

    // Who is drawn: each invariant's next not-yet-drawn user in turn, then an even sample of the
    // users without violations. Lanes keep the run's own order.
    let mut chosen: HashSet<&str> = HashSet::new();
    let mut cursors = vec![0usize; by_invariant.len()];
    while chosen.len() < DRAWN_VIOLATING.min(violating.len()) {
        for (cursor, b) in cursors.iter_mut().zip(by_invariant.values()) {
            while let Some(user) = b.users.get_index(*cursor) {
                *cursor += 1;
                if chosen.insert(user) {
                    break;
                }
            }
            if chosen.len() == DRAWN_VIOLATING {
                break;
            }
        }
    }
    let drawn_violating = chosen.len();
    let clean: Vec<&str> = users
        .keys()
        .copied()
        .filter(|u| !violating.contains(u))
        .collect();
    let sample = DRAWN_SAMPLE.min(clean.len());
    for i in 0..sample {
        chosen.insert(clean[i * clean.len() / sample]);
    }
    let trace: Vec<TraceEvent> = o
        .trace
        .iter()
        .filter(|e| chosen.contains(&*e.user))
        .cloned()
        .collect();
    let violations: Vec<Violation> = o
        .violations
        .iter()
        .filter(|v| chosen.contains(v.user.as_str()))
        .cloned()
        .collect();

    let mut drawn = Vec::new();
    if !violating.is_empty() {
        drawn.push(format!(
            "{} of the {} with violations (each invariant's first users, in turn)",
            thousands(drawn_violating),
            plural(violating.len(), "user", "users"),
        ));
    }
    if !clean.is_empty() {
        drawn.push(format!(
            "{} of the {} without (evenly spaced)",
            thousands(sample),
            plural(clean.len(), "user", "users"),
        ));
    }
    let _ = writeln!(
        out,
        "<p class=\"folded\">Drawn below: {}.</p>",
        drawn.join(" and ")
    );
    let title = format!(
        "{} [{}]: {}, {} of {} users drawn",
        o.scenario,
        o.endpoint,
        o.verdict,
        thousands(chosen.len()),
        thousands(users.len())
    );
    timeline_svg(out, &title, &trace, &violations);
    let mut folded = Vec::new();
    if violating.len() > drawn_violating {
        folded.push(format!(
            "{} not drawn (listed in the summary above)",
            plural(
                violating.len() - drawn_violating,
                "user with violations",
                "users with violations"
            )
        ));
    }
    if clean.len() > sample {
        folded.push(format!(
            "{} not drawn",
            plural(
                clean.len() - sample,
                "user without violations",
                "users without violations"
            )
        ));
    }
    if !folded.is_empty() {
        let _ = writeln!(out, "<p class=\"folded\">{}.</p>", folded.join("; "));
    }

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
            "<p class=\"folded\">{} more {}: counted by invariant above; every one is in \
             <code>--format json</code>.</p>",
            thousands(o.violations.len() - SHOWN),
            if o.violations.len() - SHOWN == 1 {
                "violation"
            } else {
                "violations"
            }
        );
    }
    let _ = write!(
        out,
        "<details><summary>trace of the drawn users ({} of {} events)</summary><pre>",
        thousands(trace.len()),
        thousands(o.trace.len())
    );
    for e in &trace {
        out.push_str(&text(&e.to_string()));
        out.push('\n');
    }
    out.push_str("</pre></details>\n");
}

/// Violations by invariant: how many, whom they hit (the list folds away), and when first.
fn summary(
    out: &mut String,
    users: &IndexMap<&str, UserFacts>,
    by_invariant: &IndexMap<Invariant, ByInvariant<'_>>,
    violating: usize,
) {
    let _ = writeln!(
        out,
        "<p class=\"folded\">{}: {} with violations, {} without.</p>",
        plural(users.len(), "user", "users"),
        thousands(violating),
        thousands(users.len() - violating)
    );
    if by_invariant.is_empty() {
        return;
    }
    out.push_str(
        "<table class=\"fold\">\n<thead><tr><th>invariant</th><th>violations</th>\
         <th>users hit</th><th>first at</th></tr></thead>\n<tbody>\n",
    );
    for (invariant, b) in by_invariant {
        let _ = write!(
            out,
            "<tr><td class=\"inv\">{invariant}</td><td class=\"n\">{}</td><td><details>\
             <summary>{}</summary><code>",
            thousands(b.count),
            plural(b.users.len(), "user", "users")
        );
        for (i, user) in b.users.iter().enumerate() {
            if i > 0 {
                out.push_str(", ");
            }
            out.push_str(&text(user));
        }
        let _ = writeln!(
            out,
            "</code></details></td><td class=\"n\">{} ms</td></tr>",
            b.first_ms
        );
    }
    out.push_str("</tbody>\n</table>\n");
}

/// The smallest 1, 2 or 5 × 10ⁿ that is at least `raw`.
fn nice(raw: u64) -> u64 {
    let mut step = 1u64;
    loop {
        for m in [1, 2, 5] {
            if step * m >= raw {
                return step * m;
            }
        }
        step *= 10;
    }
}

/// A bar chart of time-to-ready: client connect to the server's `processing_ready`, per user.
fn histogram(out: &mut String, users: &IndexMap<&str, UserFacts>) {
    let times: Vec<u64> = users
        .values()
        .filter_map(|f| Some(f.ready?.saturating_sub(f.connect?)))
        .collect();
    let never = users.len() - times.len();
    let (Some(&lo), Some(&hi)) = (times.iter().min(), times.iter().max()) else {
        let _ = writeln!(
            out,
            "<p class=\"folded\">Time to ready: no connection reached processing ready.</p>"
        );
        return;
    };
    let width = nice((hi - lo + 1).div_ceil(BINS));
    let start = lo / width * width;
    let bins = ((hi - start) / width + 1) as usize;
    let mut counts = vec![0usize; bins];
    for t in &times {
        counts[((t - start) / width) as usize] += 1;
    }
    let mut sorted = times.clone();
    sorted.sort_unstable();
    let p = |q: usize| sorted[(sorted.len() - 1) * q / 100];
    let _ = writeln!(
        out,
        "<p class=\"folded\">Time to ready (client connect to <code>processing_ready</code>): \
         {} ready, p50 {} ms, p99 {} ms, max {hi} ms{}.</p>",
        thousands(times.len()),
        p(50),
        p(99),
        if never > 0 {
            format!("; {} never ready", thousands(never))
        } else {
            String::new()
        }
    );

    const W: f64 = 1280.0;
    const LEFT: f64 = 50.0;
    const PLOT_W: f64 = 1200.0;
    const PLOT_H: f64 = 90.0;
    const TOP: f64 = 14.0;
    let max = counts.iter().copied().max().unwrap_or(1).max(1) as f64;
    let bar_w = PLOT_W / bins as f64;
    let h = TOP + PLOT_H + 20.0;
    let _ = write!(
        out,
        "<div class=\"hist\"><svg xmlns=\"http://www.w3.org/2000/svg\" viewBox=\"0 0 {W} {h}\" \
         width=\"{W}\" height=\"{h}\" role=\"img\" font-size=\"10\" \
         font-family=\"ui-monospace,'DejaVu Sans Mono',Menlo,Consolas,monospace\">\
         <title>time to ready, {width} ms per bar</title>\
         <path d=\"M{LEFT} {:.1}H{:.1}\" stroke=\"#8c959f\"/>\
         <text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\" fill=\"#57606a\">{}</text>",
        TOP + PLOT_H,
        LEFT + PLOT_W,
        LEFT - 4.0,
        TOP + 8.0,
        thousands(max as usize)
    );
    // A label every few bars, so they never crowd.
    let every = (bins as f64 * 70.0 / PLOT_W).ceil().max(1.0) as usize;
    for (i, &n) in counts.iter().enumerate() {
        let x = LEFT + i as f64 * bar_w;
        let from = start + i as u64 * width;
        let bh = PLOT_H * n as f64 / max;
        let _ = write!(
            out,
            "<g><title>{from}–{} ms: {}</title><rect x=\"{:.1}\" y=\"{:.1}\" width=\"{:.1}\" \
             height=\"{bh:.1}\" fill=\"#74c476\"/></g>",
            from + width - 1,
            plural(n, "user", "users"),
            x + 1.0,
            TOP + PLOT_H - bh,
            (bar_w - 2.0).max(1.0)
        );
        if i.is_multiple_of(every) {
            let _ = write!(
                out,
                "<text x=\"{:.1}\" y=\"{:.1}\" fill=\"#57606a\">{from} ms</text>",
                x + 1.0,
                TOP + PLOT_H + 13.0
            );
        }
    }
    out.push_str("</svg></div>\n");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thousands_are_separated_by_commas() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(4873), "4,873");
        assert_eq!(thousands(1_000_000), "1,000,000");
    }

    #[test]
    fn histogram_bars_are_one_two_or_five_times_a_power_of_ten() {
        assert_eq!(nice(1), 1);
        assert_eq!(nice(3), 5);
        assert_eq!(nice(11), 20);
        assert_eq!(nice(60), 100);
    }
}
