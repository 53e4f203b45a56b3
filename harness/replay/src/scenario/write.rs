//! Scenarios back to TOML, for files that exploration and log import write.
//!
//! The output is the same format [`parse`](super::parse) reads, with every `[server]` key
//! spelled out (so a file keeps its meaning if a default changes) and the given comment lines at
//! the top. Parsing the output gives back an equal [`Scenario`] (bar `file`).

use std::fmt::Write as _;

use super::{InvariantMatch, Protocol, Scenario};

fn quote(s: &str) -> String {
    toml::Value::String(s.to_string()).to_string()
}

/// Renders `scenario` as a scenario file; each line of `comment` becomes a `# ` line on top.
pub fn to_toml(scenario: &Scenario, comment: &str) -> String {
    let mut out = String::new();
    for line in comment.lines() {
        if line.is_empty() {
            out.push_str("#\n");
        } else {
            let _ = writeln!(out, "# {line}");
        }
    }
    let _ = writeln!(out, "name = {}", quote(&scenario.name));
    if let Some(d) = &scenario.description {
        let _ = writeln!(out, "description = {}", quote(d));
    }
    let _ = writeln!(out, "settle_ms = {}", scenario.settle_ms);
    let s = &scenario.server;
    let _ = write!(
        out,
        "\n[server]\naccept_ms = {}\nauth_ms = {}\nservices_ms = {}\nregister_ms = {}\n\
         heartbeat_ms = {}\nevent_gap_ms = {}\nqueue_capacity = {}\nqueue_bytes = {}\n",
        s.accept_ms,
        s.auth_ms,
        s.services_ms,
        s.register_ms,
        s.heartbeat_ms,
        s.event_gap_ms,
        s.queue_capacity,
        s.queue_bytes
    );
    for user in &scenario.users {
        let _ = write!(
            out,
            "\n[[user]]\nid = {}\nconnect_ms = {}\n",
            quote(&user.id),
            user.connect_ms
        );
        if let Some(phase) = user.fail_at {
            let _ = writeln!(out, "fail_at = {}", quote(phase.name()));
        }
        if let Some(ms) = user.close_ms {
            let _ = writeln!(out, "close_ms = {ms}");
        }
        if let Some(ms) = user.drop_ms {
            let _ = writeln!(out, "drop_ms = {ms}");
        }
        for (table, items) in [("send", &user.sends), ("push", &user.pushes)] {
            for (i, t) in items.iter().enumerate() {
                let _ = write!(
                    out,
                    "[[user.{table}]]\nat_ms = {}\ntext = {}\n",
                    t.at_ms,
                    quote(&t.text)
                );
                if table == "send" && i < user.pipelined {
                    out.push_str("pipelined = true\n");
                }
            }
        }
    }
    if scenario.protocol != Protocol::default() {
        write_protocol(&mut out, &scenario.protocol);
    }
    for p in &scenario.production {
        let _ = write!(
            out,
            "\n[[production]]\ninvariant = {}\nuser = {}\nat_ms = {}\n",
            quote(p.invariant.name()),
            quote(&p.user),
            p.at_ms
        );
    }
    if !scenario.expect.is_empty() {
        out.push_str("\n[expect]\n");
        for (endpoint, verdict) in &scenario.expect {
            match scenario.expect_invariants.get(endpoint) {
                None => {
                    let _ = writeln!(out, "{endpoint} = {}", quote(verdict.name()));
                }
                Some(named) => {
                    let key = match named {
                        InvariantMatch::Exactly(_) => "invariants",
                        InvariantMatch::AtLeast(_) => "at_least",
                    };
                    let names: Vec<String> =
                        named.invariants().iter().map(|i| quote(i.name())).collect();
                    let _ = writeln!(
                        out,
                        "{endpoint} = {{ verdict = {}, {key} = [{}] }}",
                        quote(verdict.name()),
                        names.join(", ")
                    );
                }
            }
        }
    }
    out
}

/// `[protocol]` with every key spelled out, as `[server]` is.
fn write_protocol(out: &mut String, p: &Protocol) {
    let list = |items: &[String]| {
        let quoted: Vec<String> = items.iter().map(|s| quote(s)).collect();
        format!("[{}]", quoted.join(", "))
    };
    out.push_str("\n[protocol]\n");
    let _ = writeln!(
        out,
        "user_query = {}",
        quote(p.user_query.as_deref().unwrap_or(""))
    );
    if let Some(h) = &p.user_header {
        let _ = writeln!(out, "user_header = {}", quote(h));
        let _ = writeln!(out, "user_value = {}", quote(&p.user_value));
    }
    for (key, value) in [
        ("subprotocol", &p.subprotocol),
        ("cookie", &p.cookie),
        ("token_env", &p.token_env),
        ("run_from_ack", &p.run_from_ack),
        ("ack_user_field", &p.ack_user_field),
        ("event_user_field", &p.event_user_field),
        ("push_user_field", &p.push_user_field),
    ] {
        if let Some(v) = value {
            let _ = writeln!(out, "{key} = {}", quote(v));
        }
    }
    for (key, value) in [
        ("chat", &p.chat),
        ("chat_id", &p.chat_id),
        ("type_field", &p.type_field),
        ("ack_type", &p.ack_type),
        ("push_type", &p.push_type),
        ("error_type", &p.error_type),
        ("id_field", &p.id_field),
        ("run_field", &p.run_field),
        ("user_field", &p.user_field),
        ("message_field", &p.message_field),
    ] {
        let _ = writeln!(out, "{key} = {}", quote(value));
    }
    let _ = writeln!(out, "events = {}", list(&p.events));
    let _ = writeln!(out, "error_patterns = {}", list(&p.error_patterns));
    let codes: Vec<String> = p.close_codes.iter().map(u16::to_string).collect();
    let _ = writeln!(out, "close_codes = [{}]", codes.join(", "));
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::endpoint_kind::EndpointKind;
    use crate::scenario::{Phase, ServerConfig, Symptom, Timed, User, Verdict, parse};

    #[test]
    fn written_scenarios_parse_back_to_the_same_scenario() {
        let mut expect = indexmap::IndexMap::new();
        expect.insert(EndpointKind::Unfixed, Verdict::Fail);
        expect.insert(EndpointKind::StateMachine, Verdict::Pass);
        let original = Scenario {
            name: "found \"by\" explore".into(),
            description: Some("line one\nline two".into()),
            file: Path::new("x.toml").into(),
            server: ServerConfig {
                accept_ms: 3,
                heartbeat_ms: 7,
                queue_capacity: 2,
                ..ServerConfig::default()
            },
            users: vec![User {
                id: "u-1".into(),
                connect_ms: 12,
                fail_at: Some(Phase::Services),
                close_ms: Some(400),
                drop_ms: None,
                sends: vec![Timed {
                    at_ms: 0,
                    text: "héllo # not a comment".into(),
                }],
                pipelined: 0,
                pushes: vec![Timed {
                    at_ms: 9,
                    text: String::new(),
                }],
            }],
            expect,
            expect_invariants: indexmap::IndexMap::new(),
            settle_ms: 250,
            protocol: Default::default(),
            production: vec![],
        };
        let text = to_toml(&original, "found by a test\n\nsecond line");
        assert!(
            text.starts_with("# found by a test\n#\n# second line\n"),
            "{text}"
        );
        let back = parse(&text, Path::new("x.toml")).unwrap();
        assert_eq!(back, original);
        assert!(
            !text.contains("[protocol]"),
            "the default protocol is not written"
        );
    }

    #[test]
    fn repeated_ids_drops_and_pipelined_chats_are_written_and_parse_back() {
        let scenario = parse(
            "name = \"z\"\n[[user]]\nid = \"a\"\ndrop_ms = 60\n\
             send = [{ at_ms = 0, text = \"early\", pipelined = true }, { at_ms = 0, text = \"x\" }]\n\
             [[user]]\nid = \"a\"\nconnect_ms = 70\nclose_ms = 5\n",
            Path::new("z.toml"),
        )
        .unwrap();
        assert_eq!(
            (scenario.users[0].drop_ms, scenario.users[0].pipelined),
            (Some(60), 1)
        );
        let text = to_toml(&scenario, "");
        assert!(
            text.contains("drop_ms = 60\n[[user.send]]\nat_ms = 0\ntext = \"early\"\npipelined = true\n[[user.send]]\nat_ms = 0\ntext = \"x\"\n\n[[user]]"),
            "{text}"
        );
        assert_eq!(parse(&text, Path::new("z.toml")).unwrap(), scenario);
    }

    #[test]
    fn production_symptoms_are_written_and_parse_back() {
        let mut scenario = parse(
            "name = \"p\"\n[[user]]\nid = \"a\"\n[[user]]\nid = \"b\"\n",
            Path::new("p.toml"),
        )
        .unwrap();
        scenario.production = vec![
            Symptom {
                invariant: crate::Invariant::AcceptFirst,
                user: "a".into(),
                at_ms: 0,
            },
            Symptom {
                invariant: crate::Invariant::CrossUser,
                user: "b".into(),
                at_ms: 2700,
            },
        ];
        scenario
            .expect
            .insert(EndpointKind::StateMachine, Verdict::Pass);
        let text = to_toml(&scenario, "");
        assert!(
            text.contains(
                "\n[[production]]\ninvariant = \"cross-user\"\nuser = \"b\"\nat_ms = 2700\n"
            ),
            "{text}"
        );
        assert_eq!(parse(&text, Path::new("p.toml")).unwrap(), scenario);
    }

    #[test]
    fn a_changed_protocol_is_written_and_parses_back() {
        let mut scenario =
            parse("name = \"p\"\n[[user]]\nid = \"a\"\n", Path::new("p.toml")).unwrap();
        scenario.protocol.user_query = None;
        scenario.protocol.user_header = Some("X-User".into());
        scenario.protocol.chat =
            r#"{"op":"chat","ref":"{id}","body":"{text}","from":"{user}"}"#.into();
        scenario.protocol.events = vec!["begin".into(), "end".into()];
        scenario.protocol.close_codes = vec![1000, 4000];
        scenario.protocol.chat_id = "{user}-{n}".into();
        scenario.protocol.run_from_ack = Some("data.runId".into());
        scenario.protocol.ack_user_field = Some("data.user".into());
        scenario.protocol.event_user_field = Some("owner".into());
        scenario.protocol.push_user_field = Some("to".into());
        let text = to_toml(&scenario, "");
        assert!(text.contains("\n[protocol]\n"), "{text}");
        assert_eq!(parse(&text, Path::new("p.toml")).unwrap(), scenario);
    }

    #[test]
    fn credential_templates_are_written_and_parse_back() {
        let mut scenario =
            parse("name = \"c\"\n[[user]]\nid = \"a\"\n", Path::new("c.toml")).unwrap();
        scenario.protocol.user_query = None;
        scenario.protocol.user_header = Some("Authorization".into());
        scenario.protocol.user_value = "Bearer {token}".into();
        scenario.protocol.subprotocol = Some("chat.v1, {token}".into());
        scenario.protocol.cookie = Some("session={token}; who={user}".into());
        scenario.protocol.token_env = Some("RACEGATE_TOKEN_{user}".into());
        scenario.protocol.user_query = Some("uid={user}&access_token={token}".into());
        let text = to_toml(&scenario, "");
        assert!(text.contains("user_value = \"Bearer {token}\"\n"), "{text}");
        assert_eq!(parse(&text, Path::new("c.toml")).unwrap(), scenario);
        // A cookie alone carries the credential: no query parameter comes back.
        scenario.protocol.user_header = None;
        scenario.protocol.user_value = "{user}".into();
        scenario.protocol.subprotocol = None;
        let text = to_toml(&scenario, "");
        assert_eq!(parse(&text, Path::new("c.toml")).unwrap(), scenario);
    }
}
