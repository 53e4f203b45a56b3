//! The pictures of a race: the HTML report (parsed as HTML, and looked at by a real browser) and
//! the Mermaid sequence diagram.

use std::collections::BTreeSet;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use racegate_replay::{EndpointKind, RunOutcome, Verdict, replay, report, scenario};
use scraper::{Html, Selector};

fn scenarios_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scenarios")
}

fn bundled_outcomes() -> Vec<RunOutcome> {
    let scenarios = scenario::load_all(&[scenarios_dir()]).unwrap();
    assert!(scenarios.len() >= 14, "the bundled scenarios are missing");
    let mut out = Vec::new();
    for s in &scenarios {
        for k in EndpointKind::ALL {
            out.push(replay(s, k).unwrap());
        }
    }
    out
}

fn staging_outcomes() -> Vec<RunOutcome> {
    let s =
        scenario::load(&scenarios_dir().join("staging-user-101463487227881885914.toml")).unwrap();
    EndpointKind::ALL
        .into_iter()
        .map(|k| replay(&s, k).unwrap())
        .collect()
}

fn select<'a>(doc: &'a Html, css: &str) -> Vec<scraper::ElementRef<'a>> {
    let selector = Selector::parse(css).unwrap();
    doc.select(&selector).collect()
}

fn text_of(e: &scraper::ElementRef<'_>) -> String {
    e.text().collect::<Vec<_>>().join("")
}

#[test]
fn the_html_report_parses_with_one_svg_timeline_per_run() {
    let outcomes = bundled_outcomes();
    let html = report::html(&outcomes);
    let doc = Html::parse_document(&html);
    assert!(doc.errors.is_empty(), "HTML parse errors: {:?}", doc.errors);

    let runs = select(&doc, "div.run");
    assert_eq!(runs.len(), outcomes.len());
    assert_eq!(select(&doc, "div.run svg").len(), outcomes.len());
    let names: BTreeSet<&str> = outcomes.iter().map(|o| o.scenario.as_str()).collect();
    assert_eq!(select(&doc, "table.verdicts tbody tr").len(), names.len());

    // Every run's timeline has a lane per user and a labelled mark per violated invariant.
    for (div, o) in runs.iter().zip(&outcomes) {
        let svg = select(&doc, "svg")
            .into_iter()
            .find(|s| div.descendants().any(|d| d.id() == s.id()))
            .unwrap();
        let svg_text = text_of(&svg);
        for v in &o.violations {
            assert!(
                svg_text.contains(v.invariant.name()),
                "{} [{}]: the timeline does not label {}",
                o.scenario,
                o.endpoint,
                v.invariant
            );
        }
        let users: BTreeSet<&str> = o.trace.iter().map(|e| &*e.user).collect();
        for user in users {
            let shown: String = user.chars().take(23).collect();
            assert!(
                svg_text.contains(&shown),
                "{}: no lane for {user}",
                o.scenario
            );
        }
        assert_eq!(
            div.value().classes().any(|c| c == "fail"),
            o.verdict == Verdict::Fail
        );
    }
}

#[test]
fn the_report_for_every_bundled_scenario_is_small_deterministic_and_quick() {
    let outcomes = bundled_outcomes();
    let started = Instant::now();
    let html = report::html(&outcomes);
    let took = started.elapsed();
    eprintln!(
        "report: {} runs, {} bytes, rendered in {took:?}",
        outcomes.len(),
        html.len()
    );
    assert!(html.len() < 2 * 1024 * 1024, "{} bytes", html.len());
    // The budget is 200 ms in release; a debug build gets ten times that.
    assert!(took < Duration::from_secs(2), "{took:?}");
    assert_eq!(html, report::html(&outcomes), "same outcomes, same bytes");
    // Self-contained: nothing is fetched.
    for needle in ["<script", "<link", "src=", "url(", "@import"] {
        assert!(!html.contains(needle), "the report references `{needle}`");
    }
}

#[test]
fn text_from_scenario_files_is_escaped_in_the_report() {
    let text = r#"
name = "<script>alert('name')</script>"
[server]
auth_ms = 100
[[user]]
id = "a&b<img src=x onerror=alert(1)>"
[[user.send]]
at_ms = 5
text = "hi"
"#;
    let s = scenario::parse(text, Path::new("evil.toml")).unwrap();
    let outcomes = vec![replay(&s, EndpointKind::Unfixed).unwrap()];
    let html = report::html(&outcomes);
    let doc = Html::parse_document(&html);
    assert!(select(&doc, "script").is_empty());
    assert!(select(&doc, "img").is_empty());
    assert!(text_of(&select(&doc, "h2")[0]).contains("<script>alert('name')</script>"));
    let svg = text_of(&select(&doc, "div.run svg")[0]);
    assert!(svg.contains("a&b<img"), "{svg}");
}

/// Chromium, if this machine has it. CI installs it (`.ci/run`), so there it must be found.
fn chromium() -> Option<PathBuf> {
    let candidates = [
        std::env::var_os("RACEGATE_CHROMIUM").map(PathBuf::from),
        Some(PathBuf::from("/usr/bin/chromium")),
        Some(PathBuf::from("/usr/bin/chromium-browser")),
    ];
    let found = candidates.into_iter().flatten().find(|p| p.is_file());
    if found.is_none() {
        assert!(
            std::env::var_os("CI").is_none(),
            "chromium is not installed: .ci/run installs Debian's `chromium`"
        );
        // Straight to the stderr handle: libtest captures `eprintln!`, so a skip printed that way
        // would be seen by nobody and the test would look like it ran.
        let _ = writeln!(
            std::io::stderr(),
            "skipped: chromium not found (apt-get install chromium, or set RACEGATE_CHROMIUM)"
        );
    }
    found
}

/// Screenshots `page` with headless Chromium; stops it after a minute whatever happens.
fn screenshot(chromium: &Path, page: &Path, png: &Path, profile: &Path) -> Vec<u8> {
    let mut child = Command::new(chromium)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--hide-scrollbars",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .arg(format!("--screenshot={}", png.display()))
        .arg("--window-size=1400,2000")
        .arg(format!("file://{}", page.display()))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            assert!(status.success(), "chromium exited with {status}");
            break;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "chromium took more than 60 s to screenshot {}",
                page.display()
            );
        }
        std::thread::sleep(Duration::from_millis(100)); // real-time: polling a browser process
    }
    std::fs::read(png).unwrap()
}

/// Every distinct RGB colour in a PNG, and how many pixels there are.
fn colours(png_bytes: &[u8]) -> (BTreeSet<[u8; 3]>, usize, usize) {
    let mut decoder = png::Decoder::new(std::io::Cursor::new(png_bytes));
    decoder.set_transformations(png::Transformations::normalize_to_color8());
    let mut reader = decoder.read_info().unwrap();
    let mut buf = vec![0; reader.output_buffer_size().unwrap()];
    let info = reader.next_frame(&mut buf).unwrap();
    let channels = info.color_type.samples();
    assert!(
        channels >= 3,
        "expected a colour screenshot, got {:?}",
        info.color_type
    );
    let mut seen = BTreeSet::new();
    let mut not_white = 0;
    for px in buf[..info.buffer_size()].chunks_exact(channels) {
        let rgb = [px[0], px[1], px[2]];
        if rgb != [255, 255, 255] {
            not_white += 1;
        }
        seen.insert(rgb);
    }
    let total = (info.width * info.height) as usize;
    (seen, not_white, total)
}

#[test]
fn a_headless_browser_draws_the_staging_timelines_with_the_violations_marked() {
    let Some(chromium) = chromium() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let page = dir.path().join("report.html");
    std::fs::write(&page, report::html(&staging_outcomes())).unwrap();
    let png = dir.path().join("report.png");
    let bytes = screenshot(&chromium, &page, &png, &dir.path().join("profile"));

    let (seen, not_white, total) = colours(&bytes);
    assert!(
        seen.len() >= 8,
        "the screenshot has {} colours: blank?",
        seen.len()
    );
    assert!(
        not_white * 50 > total,
        "only {not_white} of {total} pixels are drawn"
    );
    // The violation pills and the processing-ready band are there, in their own colours.
    assert!(seen.contains(&[0xd6, 0x27, 0x28]), "no violation red");
    assert!(
        seen.contains(&[0x74, 0xc4, 0x76]),
        "no processing-ready band"
    );
}

/// The lines of a Mermaid diagram that are messages: `A->>B: text` and the other arrows.
fn arrows(diagram: &str) -> Vec<(&str, &str)> {
    const ARROWS: [&str; 6] = ["-->>", "->>", "--x", "-x", "-->", "->"];
    diagram
        .lines()
        .map(str::trim)
        .filter(|l| !l.starts_with("Note") && !l.starts_with("participant"))
        .filter_map(|l| {
            let (head, _) = l.split_once(": ")?;
            ARROWS.iter().find_map(|a| {
                let (from, to) = head.split_once(a)?;
                let simple =
                    |s: &str| !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric());
                (simple(from) && simple(to)).then_some((from, to))
            })
        })
        .collect()
}

#[test]
fn the_mermaid_diagram_has_a_header_participants_and_one_arrow_per_event() {
    let dir = scenarios_dir();
    for file in [
        "staging-user-101463487227881885914.toml",
        "five-users-within-100ms.toml",
        "rollback-auth-failure.toml",
    ] {
        let s = scenario::load(&dir.join(file)).unwrap();
        for k in EndpointKind::ALL {
            let o = replay(&s, k).unwrap();
            let diagram = report::mermaid(&o);
            let mut lines = diagram.lines();
            assert_eq!(lines.next(), Some("sequenceDiagram"), "{diagram}");
            let participants: BTreeSet<&str> = diagram
                .lines()
                .filter_map(|l| l.trim().strip_prefix("participant "))
                .map(|l| l.split(' ').next().unwrap_or_default())
                .collect();
            let users: BTreeSet<&str> = o.trace.iter().map(|e| &*e.user).collect();
            assert_eq!(participants.len(), 2 * users.len() + 1, "{diagram}");
            assert!(participants.contains("N"));
            let arrows = arrows(&diagram);
            assert_eq!(arrows.len(), o.trace.len(), "{diagram}");
            for (from, to) in &arrows {
                assert!(
                    participants.contains(from) && participants.contains(to),
                    "{diagram}"
                );
            }
            let notes = diagram
                .lines()
                .filter(|l| l.trim().starts_with("Note over"))
                .count();
            assert_eq!(notes, o.violations.len(), "{diagram}");
            assert_eq!(report::mermaid(&o), diagram, "same run, same diagram");
        }
    }
}

#[test]
fn mermaid_text_cannot_end_a_statement_or_open_an_entity() {
    let text = r#"
name = "a;b #c"
[[user]]
id = "u;1#x"
[[user.send]]
at_ms = 5
text = "hi"
"#;
    let s = scenario::parse(text, Path::new("odd.toml")).unwrap();
    let diagram = report::mermaid(&replay(&s, EndpointKind::Unfixed).unwrap());
    assert!(diagram.contains("client u#59;1#35;x"), "{diagram}");
    for line in diagram.lines() {
        let stripped = line.replace("#59;", "").replace("#35;", "");
        assert!(!stripped.contains(';') && !stripped.contains('#'), "{line}");
    }
}

/// A scenario of `users` users connecting over a second, two chats each, setup as in
/// `five-users-within-100ms`: the shape docs/report.md generates for its 5,000-user figure.
fn crowd(users: usize) -> scenario::Scenario {
    let mut text = format!(
        "name = \"users-{users}\"\n[server]\nauth_ms = 50\nservices_ms = 120\nregister_ms = 30\n"
    );
    for i in 1..=users {
        text.push_str(&format!(
            "[[user]]\nid = \"user-{i}\"\nconnect_ms = {}\n[[user.send]]\nat_ms = 100\n\
             text = \"first\"\n[[user.send]]\nat_ms = 400\ntext = \"second\"\n",
            i % 1000
        ));
    }
    scenario::parse(&text, Path::new("crowd.toml")).unwrap()
}

#[test]
fn a_large_runs_report_is_a_summary_and_a_few_lanes_with_the_rest_folded_into_a_count() {
    // Drawn whole, these two runs were about 22 MB of HTML (a lane is about 10 KB).
    let s = crowd(1000);
    let outcomes: Vec<RunOutcome> = [EndpointKind::Unfixed, EndpointKind::StateMachine]
        .into_iter()
        .map(|k| replay(&s, k).unwrap())
        .collect();
    assert!(
        outcomes[0].violations.len() > 1000,
        "unfixed must fail here"
    );
    assert!(outcomes[1].violations.is_empty(), "state-machine must pass");
    let started = Instant::now();
    let html = report::html(&outcomes);
    let took = started.elapsed();
    eprintln!(
        "report: 2 runs of 1,000 users, {} bytes, {took:?}",
        html.len()
    );
    assert!(
        html.len() < 600 * 1024,
        "{} bytes: folding is off?",
        html.len()
    );
    assert_eq!(html, report::html(&outcomes), "same outcomes, same bytes");

    let doc = Html::parse_document(&html);
    assert!(doc.errors.is_empty(), "HTML parse errors: {:?}", doc.errors);
    let runs = select(&doc, "div.run");
    assert_eq!(runs.len(), 2);
    let folded: Vec<String> = select(&doc, "div.run p.folded")
        .iter()
        .map(text_of)
        .collect();
    let all = folded.join("\n");
    // Every user without a violation but the sample is folded, and says so in numbers.
    assert!(
        all.contains("994 users without violations not drawn"),
        "{all}"
    );
    assert!(all.contains("976 users with violations not drawn"), "{all}");
    // The summary names each violated invariant with the users it hit.
    let summary = text_of(&select(&doc, "div.run table.fold")[0]);
    for v in &outcomes[0].violations {
        assert!(summary.contains(v.invariant.name()), "{summary}");
    }
    assert!(summary.contains("user-1000, "), "{summary}");
    // The time-to-ready histogram, and one lane per drawn user.
    assert_eq!(select(&doc, "div.run div.hist svg").len(), 2);
    for (div, drawn) in runs.iter().zip([24, 6]) {
        let lanes = div
            .descendants()
            .filter_map(scraper::ElementRef::wrap)
            .filter(|e| {
                // A lane's user label: bold, at the left edge.
                let a = |k| e.value().attr(k);
                e.value().name() == "text"
                    && a("font-weight") == Some("bold")
                    && a("x") == Some("8")
            })
            .count();
        assert_eq!(lanes, drawn);
    }
    // The drawn users' trace is one click away.
    let traces: Vec<String> = select(&doc, "div.run details pre")
        .iter()
        .map(text_of)
        .collect();
    assert_eq!(traces.len(), 2);
    assert!(traces[1].contains("state processing_ready"));
}
