//! `[[production]]`: the symptoms a production log showed, held against the replay of the
//! endpoint that models production (`unfixed`). A symptom the replay reproduces matches; one it
//! does not is a mismatch that says what the replay found instead.

use std::path::Path;

use racegate_replay::{
    EndpointKind, Invariant, ProductionCheck, Symptom, Verdict, replay, report, scenario,
};

/// The staging user's timings: a 60 ms accept window (the reader's first receive raises), then
/// the first chat dropped by a router with no handler.
fn staging(production: &str) -> scenario::Scenario {
    let text = format!(
        r#"
        name = "imported"
        [server]
        accept_ms = 60
        auth_ms = 180
        services_ms = 240
        register_ms = 90
        [[user]]
        id = "101463487227881885914"
        [[user.send]]
        at_ms = 40
        text = "m1"
        [[user]]
        id = "bystander"
        connect_ms = 5000
        {production}
        "#
    );
    scenario::parse(&text, Path::new("imported.toml")).unwrap()
}

const REPRODUCED: &str = r#"
    [[production]]
    invariant = "accept-first"
    user = "101463487227881885914"
    at_ms = 1
    [[production]]
    invariant = "message-lost"
    user = "101463487227881885914"
    at_ms = 101
"#;

#[test]
fn symptoms_the_replay_reproduces_match_and_say_when() {
    let s = staging(REPRODUCED);
    let o = replay(&s, EndpointKind::Unfixed).unwrap();
    assert_eq!(o.verdict, Verdict::Fail);
    assert!(o.gated(), "production symptoms gate the run");
    assert_eq!(o.mismatch(), None, "{:#?}", o.production);
    let lines: Vec<String> = o.production.iter().map(|c| c.to_string()).collect();
    assert_eq!(
        lines,
        [
            "production: accept-first for 101463487227881885914 at 1 ms — replay: accept-first \
             at 0 ms",
            "production: message-lost for 101463487227881885914 at 101 ms — replay: \
             message-lost at 100 ms",
        ]
    );
    let table = report::table(std::slice::from_ref(&o), false);
    assert!(
        table.contains("production symptoms, replayed:\n"),
        "{table}"
    );
    assert!(table.contains(&format!("    {}\n", lines[0])), "{table}");
    assert!(table.contains("gate passes"), "{table}");
    let html = report::html(std::slice::from_ref(&o));
    assert!(
        html.contains("<li>✓ production: accept-first for 101463487227881885914 at 1 ms"),
        "the HTML report lists the symptoms too"
    );
}

#[test]
fn a_symptom_the_replay_does_not_reproduce_is_a_mismatch_naming_what_it_found_instead() {
    let s = staging(&format!(
        "{REPRODUCED}
        [[production]]
        invariant = \"cross-user\"
        user = \"101463487227881885914\"
        at_ms = 300
        [[production]]
        invariant = \"leak\"
        user = \"bystander\"
        at_ms = 5000
        "
    ));
    let o = replay(&s, EndpointKind::Unfixed).unwrap();
    assert!(!o.matches_expectation());
    let why = o.mismatch().unwrap();
    assert_eq!(
        why,
        "production symptoms not reproduced: cross-user for 101463487227881885914 at 300 ms \
         (not reproduced: for 101463487227881885914 it found accept-first at 0 ms, message-lost \
         at 100 ms); leak for bystander at 5000 ms (not reproduced: for bystander it found \
         accept-first at 5000 ms)"
    );
    let table = report::table(std::slice::from_ref(&o), false);
    assert!(table.contains("gate FAILS"), "{table}");
    let json: serde_json::Value =
        serde_json::from_str(&report::json(std::slice::from_ref(&o), false)).unwrap();
    let checks = &json["scenarios"][0]["results"][0]["production"];
    assert_eq!(checks[2]["invariant"], "cross-user");
    assert_eq!(checks[2]["reproduced"], false);
    assert_eq!(checks[2]["instead"][1]["invariant"], "message-lost");
    assert_eq!(checks[0]["reproduced"], true);
    assert_eq!(checks[0]["replay_at_ms"], 0);
}

#[test]
fn a_user_the_replay_found_nothing_wrong_with_is_named() {
    let symptom = Symptom {
        invariant: Invariant::Stuck,
        user: "u".into(),
        at_ms: 7,
    };
    let check = ProductionCheck::new(&symptom, &[]);
    assert!(!check.reproduced);
    assert_eq!(
        check.to_string(),
        "production: stuck for u at 7 ms — replay: not reproduced: no violation for u"
    );
}

#[test]
fn only_the_production_endpoint_is_held_to_the_symptoms() {
    let s = staging(REPRODUCED);
    let o = replay(&s, EndpointKind::StateMachine).unwrap();
    assert_eq!(o.verdict, Verdict::Pass);
    assert!(o.production.is_empty());
    assert!(!o.gated(), "no [expect] for state-machine: not gated");
    let json = report::json(std::slice::from_ref(&o), false);
    assert!(
        !json.contains("\"production\""),
        "fields are added only where there is something to say: {json}"
    );
}
