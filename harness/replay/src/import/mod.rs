//! Scenarios from logs: racegate's own JSON log lines, or an application's logs read through a
//! mapping, back into the users, connect times, phase durations and message times of a
//! [`Scenario`].
//!
//! A race is first noticed in staging logs; retyping its timings into a scenario file loses
//! them. [`import`] reads the lifecycle events racegate's own lines carry (the vocabulary
//! `racegate --log-format json` writes, which is also the text `--trace` prints);
//! [`import_mapped`] reads an application's text lines or Cloud Logging export through a
//! [`Mapping`] that says which lines are which event and which are production symptoms. Both
//! infer the rest the same way:
//!
//! - a user per connection, connecting when its first `client_connect` (or `state connecting`)
//!   was logged;
//! - each phase's duration (`accept_ms`, `auth_ms`, `services_ms`, `register_ms`) from the gaps
//!   between a connection's `state` events, the median over all connections; a setup that ended
//!   in a failure close (1008 after `accepted`, 1011 after `authenticated` or `services_ready`)
//!   gives that user's `fail_at` and the failing phase's duration;
//! - chats at their `client_send` time after the client's `client_open`, chats that never left at
//!   their `client_unsent` or `rejected` time, pushes at their `push_issued` time after connect,
//!   and a client's own `client_close` as its `close_ms`;
//! - the agent events' spacing as `event_gap_ms`;
//! - through a mapping, the first sighting of each production symptom per user as a
//!   `[[production]]` entry, which becomes the expectation: `unfixed` fails with exactly those
//!   invariants, `state-machine` passes.
//!
//! What no lifecycle event shows (heartbeat interval, queue limits, settle time, a phase nobody
//! completed) comes from racegate's `run_start` line when the log has one, else the defaults.
//! A log holding several runs (each labelled with its scenario and endpoint) yields one of them.
//! Lines that are not JSON objects, or lifecycle events without a user or a time, are skipped
//! and counted; other entries are ignored.
//!
//! Modules: `own` (racegate's lines), [`mapping`](Mapping) (the mapping file), `mapped` (logs
//! through a mapping), `infer` (events to a scenario, one function per inference, each naming
//! its assumption).

mod infer;
mod mapped;
mod mapping;
mod own;

pub use mapped::Log;
pub use mapping::{Mapping, MappingError};

use crate::endpoint::EndpointKind;
use crate::scenario::Scenario;

/// Which run to import, and what to call the result.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// Import the first run labelled with this scenario name.
    pub scenario: Option<String>,
    /// Import the first run labelled with this endpoint.
    pub endpoint: Option<EndpointKind>,
    /// The scenario's name; by default the run's scenario label, else `fallback_name`.
    pub name: Option<String>,
    /// The name used when neither `name` nor a label gives one (the CLI passes the file stem).
    pub fallback_name: String,
}

/// A scenario read from a log, with what the reading found.
#[derive(Debug, Clone)]
pub struct Imported {
    /// The scenario, ready for [`to_toml`](crate::scenario::to_toml).
    pub scenario: Scenario,
    /// Lines read (blank lines included).
    pub lines: usize,
    /// Lifecycle events of the imported run that were used.
    pub events: usize,
    /// Lines skipped as malformed.
    pub malformed: usize,
    /// The first malformed line, 1-based.
    pub first_malformed: Option<usize>,
    /// Runs found in the log (labelled by scenario and endpoint; an unlabelled log is one run).
    pub runs: Vec<String>,
    /// The run imported.
    pub run: String,
    /// Settings that came from no event and no `run_start` line: defaults.
    pub defaulted: Vec<&'static str>,
    /// With a mapping: what the reading found and decided, one sentence a line, for standard
    /// error and the file's header (empty for racegate's own logs, whose notes the CLI writes).
    pub notes: Vec<String>,
    /// With a mapping: every assumption the inference made, for the file's header.
    pub assumptions: Vec<String>,
}

/// Why a log gave no scenario.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ImportError {
    /// Nothing in the log describes a connection's lifecycle.
    #[error(
        "no usable lifecycle events in {lines} lines ({malformed} malformed{}): expected JSON \
         lines with jsonPayload.event (client_connect, state, client_send, push_issued, ...) \
         and jsonPayload.user_id, or racegate trace lines as message/textPayload",
        first_malformed.map(|l| format!(", the first at line {l}")).unwrap_or_default()
    )]
    NoLifecycleEvents {
        /// Lines read.
        lines: usize,
        /// Lines skipped as malformed.
        malformed: usize,
        /// The first malformed line, 1-based.
        first_malformed: Option<usize>,
    },
    /// The log has runs, but none matches the selection.
    #[error("no run matches {wanted}; the log holds: {}", available.join(", "))]
    NoSuchRun {
        /// What was asked for.
        wanted: String,
        /// The runs there are.
        available: Vec<String>,
    },
    /// A time in the inferred scenario is past the format's one-day limit.
    #[error(
        "{what} would be {ms} ms, but scenario times are limited to one day: import a shorter \
         stretch of the log"
    )]
    TooLong {
        /// Which time.
        what: String,
        /// Its value.
        ms: u64,
    },
    /// No line of the logs matched any rule of the mapping.
    #[error(
        "no rule of {mapping} matched any of the {lines} lines read from {logs}: compare a \
         rule's pattern with a line of the log (a pattern matches anywhere in the line's text \
         unless anchored with ^)"
    )]
    NoRuleMatched {
        /// The mapping file.
        mapping: String,
        /// The logs read.
        logs: String,
        /// Lines read.
        lines: usize,
    },
    /// Rules matched lines, but no line gave a connection's lifecycle event.
    #[error(
        "{matched} of the {lines} lines read from {logs} matched a rule of {mapping}, but none \
         is a lifecycle event of a user ({unattributed} named no user): a scenario needs at \
         least one `connect`, `accepted`, ... or `chat` line with its user"
    )]
    NoEvents {
        /// The mapping file.
        mapping: String,
        /// The logs read.
        logs: String,
        /// Lines read.
        lines: usize,
        /// Lines a rule matched.
        matched: usize,
        /// Matched lines without a user.
        unattributed: usize,
    },
    /// A line a rule matched has no time the mapping can read.
    #[error("{log}:{line}: {rule} matched this line, but {why}:\n    {text}")]
    LineTime {
        /// The log.
        log: String,
        /// 1-based line.
        line: usize,
        /// The rule, as `rule 3 (accepted)`.
        rule: String,
        /// What is wrong with its time.
        why: String,
        /// The line, as shown.
        text: String,
    },
    /// A Cloud Logging export that is not JSON.
    #[error("{log}:{line}:{column}: not a JSON array of Cloud Logging entries: {message}")]
    NotJson {
        /// The log.
        log: String,
        /// 1-based line.
        line: usize,
        /// 1-based column.
        column: usize,
        /// serde_json's words.
        message: String,
    },
    /// A `server_closed` rule read a close code that is not one.
    #[error(
        "{log}:{line}: {rule} read the close code {value:?}, which is not a number from 1000 \
         to 4999:\n    {text}"
    )]
    BadCode {
        /// The log.
        log: String,
        /// 1-based line.
        line: usize,
        /// The rule.
        rule: String,
        /// What it read.
        value: String,
        /// The line, as shown.
        text: String,
    },
}
/// Reads `text` (one log entry per line, racegate's own vocabulary) into a scenario.
pub fn import(text: &str, options: &Options) -> Result<Imported, ImportError> {
    let own::OwnLog {
        mut runs,
        lines,
        malformed,
        first_malformed,
    } = own::read(text);
    if runs.is_empty() {
        return Err(ImportError::NoLifecycleEvents {
            lines,
            malformed,
            first_malformed,
        });
    }
    let available: Vec<String> = runs.keys().map(own::RunKey::describe).collect();
    let endpoint = options.endpoint.map(|e| e.name().to_string());
    let chosen = runs.iter().position(|(k, _)| {
        options
            .scenario
            .as_ref()
            .is_none_or(|s| k.scenario.as_ref() == Some(s))
            && endpoint
                .as_ref()
                .is_none_or(|e| k.endpoint.as_ref() == Some(e))
    });
    let Some(chosen) = chosen else {
        let mut wanted = Vec::new();
        if let Some(s) = &options.scenario {
            wanted.push(format!("scenario `{s}`"));
        }
        if let Some(e) = &endpoint {
            wanted.push(format!("endpoint `{e}`"));
        }
        return Err(ImportError::NoSuchRun {
            wanted: wanted.join(" and "),
            available,
        });
    };
    let Some((key, run)) = runs.swap_remove_index(chosen) else {
        // `position` found it a moment ago.
        return Err(ImportError::NoLifecycleEvents {
            lines,
            malformed,
            first_malformed,
        });
    };
    let name = options
        .name
        .clone()
        .or_else(|| key.scenario.clone())
        .unwrap_or_else(|| options.fallback_name.clone());
    let events = run.events.len();
    let description = format!("imported from the log of {}", key.describe());
    let inferred = infer::infer(&run, name, description)?;
    Ok(Imported {
        scenario: inferred.scenario,
        lines,
        events,
        malformed,
        first_malformed,
        runs: available,
        run: key.describe(),
        defaulted: inferred.defaulted,
        notes: Vec::new(),
        assumptions: Vec::new(),
    })
}

/// Reads an application's `logs` through `mapping` into a scenario whose `[[production]]`
/// symptoms are its expectation: `unfixed` fails with exactly them, `state-machine` passes.
pub fn import_mapped(
    logs: &[Log<'_>],
    mapping: &Mapping,
    options: &Options,
) -> Result<Imported, ImportError> {
    let reading = mapped::read(logs, mapping)?;
    let names: Vec<&str> = logs.iter().map(|l| l.name).collect();
    let names = names.join(", ");
    let map_name = mapping.file.display().to_string();
    if reading.matched == 0 {
        return Err(ImportError::NoRuleMatched {
            mapping: map_name,
            logs: names,
            lines: reading.lines,
        });
    }
    if reading.run.events.is_empty() {
        return Err(ImportError::NoEvents {
            mapping: map_name,
            logs: names,
            lines: reading.lines,
            matched: reading.matched,
            unattributed: reading.unattributed,
        });
    }
    let name = options
        .name
        .clone()
        .unwrap_or_else(|| options.fallback_name.clone());
    let description = format!("imported from {names} with {map_name}");
    let inferred = infer::infer(&reading.run, name, description)?;
    let mut scenario = inferred.scenario;
    infer::expect_production(&mut scenario);
    let (notes, assumptions) = mapped::describe(
        &reading,
        mapping,
        &names,
        &scenario,
        &inferred.defaulted,
        inferred.orphaned,
    );
    Ok(Imported {
        lines: reading.lines,
        events: reading.run.events.len(),
        malformed: reading.not_entries,
        first_malformed: reading.first_not_entry.as_ref().map(|(_, l)| *l),
        runs: Vec::new(),
        run: scenario.description.clone().unwrap_or_default(),
        defaulted: inferred.defaulted,
        notes,
        assumptions,
        scenario,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scenario::Phase;

    fn options() -> Options {
        Options {
            fallback_name: "from-test".into(),
            ..Options::default()
        }
    }

    /// A racegate-shaped lifecycle line.
    fn line(at: u64, user: &str, event: &str, extra: &str) -> String {
        format!(
            r#"{{"timestamp":"1970-01-01T00:00:00Z","severity":"DEBUG","message":"","jsonPayload":{{"at_ms":{at},"user_id":"{user}","event":"{event}"{extra}}}}}"#
        )
    }

    fn state(at: u64, user: &str, s: &str) -> String {
        line(at, user, "state", &format!(r#","state":"{s}""#))
    }

    #[test]
    fn phases_come_from_the_gaps_between_states_and_chats_from_the_open() {
        let log = [
            line(0, "u", "client_connect", ""),
            state(0, "u", "connecting"),
            state(120, "u", "accepted"),
            line(120, "u", "client_open", ""),
            line(125, "u", "client_send", r#","id":"u/m1""#),
            line(20, "u", "push_issued", r#","id":"u/p1""#),
            state(300, "u", "authenticated"),
            state(540, "u", "services_ready"),
            state(630, "u", "processing_ready"),
        ]
        .join("\n");
        let got = import(&log, &options()).unwrap();
        let s = &got.scenario;
        assert_eq!(s.name, "from-test");
        assert_eq!(
            (
                s.server.accept_ms,
                s.server.auth_ms,
                s.server.services_ms,
                s.server.register_ms
            ),
            (120, 180, 240, 90)
        );
        let u = &s.users[0];
        assert_eq!((u.id.as_str(), u.connect_ms, u.fail_at), ("u", 0, None));
        assert_eq!(u.sends[0].at_ms, 5);
        assert_eq!(u.pushes[0].at_ms, 20);
        assert_eq!(got.events, 9);
        assert!(got.defaulted.contains(&"heartbeat_ms"));
    }

    #[test]
    fn malformed_lines_are_skipped_counted_and_the_first_is_named() {
        let log = [
            line(0, "u", "client_connect", ""),
            "not json at all".to_string(),
            String::new(),
            r#"{"jsonPayload":{"event":"state","state":"accepted"}}"#.to_string(),
            "[1, 2]".to_string(),
            r#"{"severity":"INFO","message":"an unrelated line"}"#.to_string(),
            state(5, "u", "accepted"),
        ]
        .join("\n");
        let got = import(&log, &options()).unwrap();
        assert_eq!(got.lines, 7);
        assert_eq!(
            got.malformed, 3,
            "bad JSON, no user and no time, not an object"
        );
        assert_eq!(got.first_malformed, Some(2));
        assert_eq!(got.scenario.server.accept_ms, 5);
    }

    #[test]
    fn a_log_without_lifecycle_events_is_an_error_that_says_what_was_expected() {
        let log = "garbage\n{\"severity\":\"INFO\",\"message\":\"hello\"}\n";
        let err = import(log, &options()).unwrap_err();
        assert_eq!(
            err,
            ImportError::NoLifecycleEvents {
                lines: 2,
                malformed: 1,
                first_malformed: Some(1)
            }
        );
        let text = err.to_string();
        assert!(
            text.contains("no usable lifecycle events in 2 lines"),
            "{text}"
        );
        assert!(text.contains("the first at line 1"), "{text}");
    }

    #[test]
    fn trace_lines_in_text_payloads_import_like_json_payloads() {
        let log = [
            r#"{"timestamp":"2025-03-01T10:00:00Z","textPayload":"      0 ms  user-1    client connect"}"#,
            r#"{"timestamp":"2025-03-01T10:00:00Z","textPayload":"      0 ms  user-1    state connecting"}"#,
            r#"{"timestamp":"2025-03-01T10:00:00Z","textPayload":"     80 ms  user-1    state accepted"}"#,
            r#"{"timestamp":"2025-03-01T10:00:00Z","textPayload":"     80 ms  user-1    client open"}"#,
            r#"{"timestamp":"2025-03-01T10:00:00Z","textPayload":"     90 ms  user-1    client send user-1/m1"}"#,
            r#"{"timestamp":"2025-03-01T10:00:00Z","textPayload":"    280 ms  user-1    server close 1008"}"#,
            r#"{"timestamp":"2025-03-01T10:00:00Z","textPayload":"    280 ms  user-1    state failed"}"#,
        ]
        .join("\n");
        let s = import(&log, &options()).unwrap().scenario;
        assert_eq!(s.server.accept_ms, 80);
        assert_eq!(s.server.auth_ms, 200, "the failing phase's duration");
        assert_eq!(s.users[0].fail_at, Some(Phase::Auth));
        assert_eq!(s.users[0].sends[0].at_ms, 10);
    }

    #[test]
    fn timestamps_alone_give_times_from_the_earliest_even_newest_first() {
        // A Cloud Logging export: newest first, numbers as doubles, the message in jsonPayload.
        let entry = |ts: &str, event: &str, extra: &str| {
            format!(
                r#"{{"timestamp":"{ts}","severity":"DEBUG","jsonPayload":{{"message":"m","user_id":"101","event":"{event}"{extra}}}}}"#
            )
        };
        let log = [
            entry("2025-03-01T10:00:01.250Z", "client_close", ""),
            entry(
                "2025-03-01T10:00:00.650Z",
                "state",
                r#","state":"authenticated""#,
            ),
            entry(
                "2025-03-01T10:00:00.530Z",
                "client_send",
                r#","id":"101/m1""#,
            ),
            entry(
                "2025-03-01T10:00:00.500Z",
                "state",
                r#","state":"accepted""#,
            ),
            entry(
                "2025-03-01T11:00:00.400+01:00",
                "state",
                r#","state":"connecting","code":1.0"#,
            ),
        ]
        .join("\n");
        let s = import(&log, &options()).unwrap().scenario;
        assert_eq!((s.server.accept_ms, s.server.auth_ms), (100, 150));
        let u = &s.users[0];
        assert_eq!(u.connect_ms, 0);
        assert_eq!(u.sends[0].at_ms, 30);
        assert_eq!(u.close_ms, Some(850), "a real client's close is its own");
    }

    #[test]
    fn a_log_of_several_runs_yields_the_one_asked_for() {
        let labelled = |scenario: &str, endpoint: &str, at: u64| {
            format!(
                r#"{{"labels":{{"scenario":"{scenario}","endpoint":"{endpoint}"}},"jsonPayload":{{"at_ms":{at},"user_id":"u","event":"client_connect"}}}}"#
            )
        };
        let log = [
            labelled("a", "unfixed", 1),
            labelled("b", "unfixed", 2),
            labelled("b", "state-machine", 3),
        ]
        .join("\n");
        let first = import(&log, &options()).unwrap();
        assert_eq!(first.runs.len(), 3);
        assert_eq!(
            (
                first.scenario.name.as_str(),
                first.scenario.users[0].connect_ms
            ),
            ("a", 1)
        );
        let picked = Options {
            scenario: Some("b".into()),
            endpoint: Some(EndpointKind::StateMachine),
            ..options()
        };
        let got = import(&log, &picked).unwrap();
        assert_eq!(got.run, "b [state-machine]");
        assert_eq!(got.scenario.users[0].connect_ms, 3);
        let missing = Options {
            scenario: Some("c".into()),
            ..options()
        };
        let err = import(&log, &missing).unwrap_err().to_string();
        assert!(err.contains("no run matches scenario `c`"), "{err}");
        assert!(err.contains("b [state-machine]"), "{err}");
    }

    #[test]
    fn a_log_longer_than_a_day_is_refused_with_the_time_named() {
        let log = [
            line(0, "u", "client_connect", ""),
            line(90_000_000, "v", "client_connect", ""),
        ]
        .join("\n");
        let err = import(&log, &options()).unwrap_err().to_string();
        assert!(
            err.contains("user v connect_ms would be 90000000 ms"),
            "{err}"
        );
    }

    // --- Through a mapping ---------------------------------------------------------------

    fn mapping(text: &str) -> Mapping {
        Mapping::parse(text, std::path::Path::new("map.toml")).unwrap()
    }

    fn mapped(map: &str, log: &str) -> Result<Imported, ImportError> {
        import_mapped(
            &[Log {
                name: "app.log",
                text: log,
            }],
            &mapping(map),
            &options(),
        )
    }

    const TEXT: &str =
        "[line]\ntimestamp = '^(?P<ts>\\S+ \\S+) '\ntime_format = \"%Y-%m-%d %H:%M:%S,%3f\"\n";

    #[test]
    fn json_lines_give_users_and_codes_from_payload_fields() {
        let map = "[line]\nformat = \"json\"\n\
            [[rule]]\npattern = '^accepted'\nevent = \"accepted\"\nuser = \"jsonPayload.ctx.user\"\n\
            [[rule]]\npattern = '^closing'\nevent = \"server_closed\"\nuser = \"jsonPayload.ctx.user\"\n\
            code = \"jsonPayload.code\"\n";
        let log = [
            r#"{"timestamp":"2025-03-01T10:00:00.500123Z","jsonPayload":{"message":"closing","code":1008.0,"ctx":{"user":"u"}}}"#,
            r#"not an entry"#,
            r#"{"timestamp":"2025-03-01T10:00:00.100Z","jsonPayload":{"message":"accepted","ctx":{"user":"u"}}}"#,
            r#"{"timestamp":"2025-03-01T10:00:00.200Z","jsonPayload":{"message":"accepted","ctx":{}}}"#,
        ]
        .join("\n");
        let got = mapped(map, &log).unwrap();
        let u = &got.scenario.users[0];
        assert_eq!(u.id, "u");
        assert_eq!(u.fail_at, Some(Phase::Auth), "1008 after accepted");
        assert_eq!(got.scenario.server.auth_ms, 400);
        assert_eq!((got.malformed, got.first_malformed), (1, Some(2)));
        assert!(
            got.notes
                .iter()
                .any(|n| n.contains("Skipped 1 matched lines whose rule found no user")),
            "{:?}",
            got.notes
        );
    }

    #[test]
    fn a_failed_line_names_the_phase_and_gives_its_duration() {
        let map = format!(
            "{TEXT}[[rule]]\npattern = 'accepted (?P<user>\\S+)'\nevent = \"accepted\"\n\
             [[rule]]\npattern = 'authenticated (?P<user>\\S+)'\nevent = \"authenticated\"\n\
             [[rule]]\npattern = 'no supervisor for (?P<user>\\S+)'\nevent = \"failed\"\nphase = \"services\"\n"
        );
        let log = "2025-01-01 00:00:00,000 accepted a\n\
                   2025-01-01 00:00:00,100 authenticated a\n\
                   2025-01-01 00:00:00,350 no supervisor for a\n";
        let s = mapped(&map, log).unwrap().scenario;
        assert_eq!(s.users[0].fail_at, Some(Phase::Services));
        assert_eq!((s.server.auth_ms, s.server.services_ms), (100, 250));
    }

    #[test]
    fn connections_of_one_user_are_told_apart_by_conn_and_chats_without_ids_are_numbered() {
        let map = format!(
            "{TEXT}[[rule]]\npattern = 'open (?P<conn>c\\d) for (?P<user>\\S+)'\nevent = \"accepted\"\n\
             [[rule]]\npattern = 'chat on (?P<conn>c\\d)'\nevent = \"chat\"\n"
        );
        let log = "2025-01-01 00:00:00,000 open c1 for ann\n\
                   2025-01-01 00:00:00,010 chat on c1\n\
                   2025-01-01 00:00:00,020 chat on c1\n\
                   2025-01-01 00:00:01,000 open c2 for ann\n\
                   2025-01-01 00:00:01,005 chat on c2\n";
        let got = mapped(&map, log).unwrap();
        let ids: Vec<&str> = got.scenario.users.iter().map(|u| u.id.as_str()).collect();
        assert_eq!(ids, ["ann", "ann"], "two connections of one user");
        let texts: Vec<&str> = got.scenario.users[0]
            .sends
            .iter()
            .map(|t| t.text.as_str())
            .collect();
        assert_eq!(texts, ["chat 1", "chat 2"]);
        assert_eq!(got.scenario.users[1].sends[0].at_ms, 5);
        assert!(
            got.assumptions
                .iter()
                .any(|a| a.contains("(1 later connections)")),
            "{:?}",
            got.assumptions
        );
    }

    #[test]
    fn a_newest_first_log_gives_the_same_users_and_chats_as_the_oldest_first_one() {
        let map = format!(
            "{TEXT}[[rule]]\npattern = 'open (?P<conn>c\\d) for (?P<user>\\S+)'\nevent = \"accepted\"\n\
             [[rule]]\npattern = 'chat (?P<id>\\S+) on (?P<conn>c\\d)'\nevent = \"chat\"\n\
             [[rule]]\npattern = 'lost on (?P<conn>c\\d)'\nevent = \"symptom\"\ninvariant = \"message-lost\"\n"
        );
        let lines = [
            "2025-01-01 00:00:00,000 open c1 for ann",
            "2025-01-01 00:00:00,010 chat x on c1",
            "2025-01-01 00:00:00,010 chat y on c1",
            "2025-01-01 00:00:00,010 lost on c1",
            "2025-01-01 00:00:01,000 open c2 for ann",
            "2025-01-01 00:00:01,005 chat z on c2",
        ];
        let oldest_first = mapped(&map, &lines.join("\n")).unwrap().scenario;
        let newest_first: Vec<&str> = lines.iter().rev().copied().collect();
        let newest_first = mapped(&map, &newest_first.join("\n")).unwrap().scenario;
        assert_eq!(newest_first, oldest_first);
        let ids: Vec<&str> = oldest_first.users.iter().map(|u| u.id.as_str()).collect();
        assert_eq!(ids, ["ann", "ann"], "the earlier connection comes first");
        let texts: Vec<&str> = oldest_first.users[0]
            .sends
            .iter()
            .map(|t| t.text.as_str())
            .collect();
        assert_eq!(
            texts,
            ["x", "y"],
            "same-millisecond lines in the order they were written"
        );
        assert_eq!(oldest_first.production[0].user, "ann");
    }

    #[test]
    fn a_time_of_day_without_a_date_is_enough() {
        let map = "[line]\ntimestamp = '^(?P<ts>\\S+)'\ntime_format = \"%H:%M:%S%.3f\"\n\
            [[rule]]\npattern = 'up (?P<user>\\S+)'\nevent = \"connect\"\n";
        let s = mapped(map, "10:00:00.250 up a\n10:00:01.000 up b\n")
            .unwrap()
            .scenario;
        assert_eq!(s.users[1].connect_ms, 750);
    }

    #[test]
    fn symptoms_become_the_expectation_once_per_invariant_and_user() {
        let map = format!(
            "{TEXT}[[rule]]\npattern = 'accepted (?P<user>\\S+)'\nevent = \"accepted\"\n\
             [[rule]]\npattern = 'not connected: (?P<user>\\S+)'\nevent = \"symptom\"\ninvariant = \"accept-first\"\n\
             [[rule]]\npattern = 'ghost (?P<user>\\S+)'\nevent = \"symptom\"\ninvariant = \"stuck\"\n"
        );
        let log = "2025-01-01 00:00:00,050 not connected: a\n\
                   2025-01-01 00:00:00,000 not connected: a\n\
                   2025-01-01 00:00:00,060 accepted a\n\
                   2025-01-01 00:00:00,070 ghost nobody\n";
        let got = mapped(&map, log).unwrap();
        let s = &got.scenario;
        assert_eq!(
            s.production,
            [crate::scenario::Symptom {
                invariant: crate::Invariant::AcceptFirst,
                user: "a".into(),
                at_ms: 0
            }]
        );
        assert_eq!(
            s.expect.get(&EndpointKind::Unfixed),
            Some(&crate::Verdict::Fail)
        );
        assert_eq!(
            s.expect.get(&EndpointKind::StateMachine),
            Some(&crate::Verdict::Pass)
        );
        assert!(
            got.notes.iter().any(
                |n| n.contains("Skipped 1 symptom lines of connections with no lifecycle line")
            ),
            "{:?}",
            got.notes
        );
    }
}
