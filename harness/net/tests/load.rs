//! A small load (the 1000-user figure is measured from the CLI in release): the fix loses
//! nothing, the unfixed endpoint shows its losses in the counts, and the report has its keys.

use std::time::Duration;

use racegate_net::load::{LoadOptions, run_load};
use racegate_net::{Limits, LoadReport};
use racegate_replay::EndpointKind;

fn small(endpoint: EndpointKind) -> LoadOptions {
    LoadOptions {
        endpoint,
        users: 50,
        window: Duration::from_millis(50),
        messages: 5,
        server: LoadOptions::default_server(),
        limits: Limits::default(),
        quiet: Duration::from_millis(1000),
        baseline: true,
    }
}

fn run(endpoint: EndpointKind) -> LoadReport {
    run_load(&small(endpoint)).unwrap()
}

#[test]
fn fixed_endpoint_under_load_loses_nothing_and_reports_every_key() {
    let report = run(EndpointKind::StateMachine);
    let f = &report.figures;
    assert!(report.clean(), "{}", report.table());
    assert_eq!(
        (f.opened, f.sent, f.answered),
        (50, 250, 250),
        "{}",
        report.table()
    );
    let base = report.baseline.as_ref().unwrap();
    assert_eq!((base.sent, base.answered, base.lost), (250, 250, 0));
    assert!(f.msgs_per_s > 0.0 && base.msgs_per_s > 0.0);
    // Time-to-ready includes the 200 ms setup the default server injects.
    assert!(f.p50_ready_ms >= 190.0, "{}", report.table());
    let json = report.to_json();
    for key in [
        "lost",
        "duplicated",
        "out_of_order",
        "cross_user",
        "msgs_per_s",
        "baseline_msgs_per_s",
        "ratio",
        "p50_ready_ms",
        "p99_ready_ms",
        "peak_rss_kb",
    ] {
        assert!(
            json.get(key).is_some_and(|v| !v.is_null()),
            "{key} in {json}"
        );
    }
}

#[test]
fn unfixed_endpoint_under_load_shows_its_losses() {
    let mut opts = small(EndpointKind::Unfixed);
    opts.baseline = false;
    let report = run_load(&opts).unwrap();
    assert!(!report.clean(), "{}", report.table());
    assert!(report.figures.lost > 0, "{}", report.table());
}
