//! Import never panics, whatever the bytes: a production log can hold anything (a binary
//! payload, a cut-off line, a hostile user id), and a mapping file is typed by hand. Arbitrary
//! bytes, and log-shaped lines assembled from the pieces the parsers look for, must end in a
//! scenario or an error, never a panic.

use std::path::Path;

use proptest::collection::vec;
use proptest::prelude::*;
use racegate_replay::import::{self, Log, Mapping, Options};

const MAP: &str = r#"
[line]
timestamp = '^(?P<ts>\S+ \S+) '
time_format = "%Y-%m-%d %H:%M:%S,%3f"

[[rule]]
pattern = 'connect (?P<user>\S+)'
event = "connect"
[[rule]]
pattern = 'accepted (?P<user>\S*)'
event = "accepted"
[[rule]]
pattern = 'auth (?P<user>\S+)'
event = "authenticated"
[[rule]]
pattern = 'ready (?P<conn>\S+) (?P<user>\S+)'
event = "processing_ready"
[[rule]]
pattern = 'chat (?P<id>\S*) (?P<user>\S+)'
event = "chat"
[[rule]]
pattern = 'push (?P<user>\S+)'
event = "push"
[[rule]]
pattern = 'closed (?P<user>\S+) (?P<code>\S+)'
event = "server_closed"
[[rule]]
pattern = 'bye (?P<user>\S+)'
event = "client_closed"
[[rule]]
pattern = 'fail (?P<user>\S+)'
event = "failed"
phase = "services"
[[rule]]
pattern = 'oops (?P<user>\S+)'
event = "symptom"
invariant = "cross-user"
[[rule]]
pattern = 'json'
event = "accepted"
user = "jsonPayload.user"
"#;

/// Compiled once: a debug build compiles a dozen regexes slowly.
fn mapping() -> &'static Mapping {
    static MAPPING: std::sync::OnceLock<Mapping> = std::sync::OnceLock::new();
    MAPPING.get_or_init(|| Mapping::parse(MAP, Path::new("map.toml")).unwrap())
}

fn options() -> Options {
    Options {
        fallback_name: "prop".into(),
        ..Options::default()
    }
}

/// Lines a log of this mapping could hold, and near misses of them.
fn line() -> impl Strategy<Value = String> {
    let time = prop_oneof![
        (0u32..3000, 0u32..60, 0u32..1000)
            .prop_map(|(y, s, ms)| format!("{y:04}-09-08 23:29:{s:02},{ms:03}")),
        Just("9999-99-99 99:99:99,999".to_string()),
        Just("2025-09-08 23:29:14".to_string()),
        Just("-262144-01-01 00:00:00,000".to_string()),
        "\\PC{0,12} \\PC{0,12}",
    ];
    let word = prop_oneof![
        Just("connect"),
        Just("accepted"),
        Just("auth"),
        Just("ready"),
        Just("chat"),
        Just("push"),
        Just("closed"),
        Just("bye"),
        Just("fail"),
        Just("oops"),
        Just("json"),
    ];
    let arg = prop_oneof![
        Just(String::new()),
        Just("u".to_string()),
        Just("1000".to_string()),
        Just("99999999999999999999".to_string()),
        "\\PC{0,8}",
    ];
    prop_oneof![
        (time, word, vec(arg, 0..4))
            .prop_map(|(t, w, args)| format!("{t} INFO app: {w} {}", args.join(" "))),
        "\\PC{0,80}",
        (any::<u32>(), "\\PC{0,10}").prop_map(|(n, u)| format!(
            r#"{{"timestamp":"2025-01-01T00:00:{:02}.{:09}Z","jsonPayload":{{"message":"json","user":"{u}"}}}}"#,
            n % 60,
            n
        )),
    ]
}

fn text_of(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_bytes_never_panic_a_mapped_import(bytes in vec(any::<u8>(), 0..2048)) {
        let text = text_of(&bytes);
        let _ = import::import_mapped(&[Log { name: "a.log", text: &text }], mapping(), &options());
    }

    #[test]
    fn log_shaped_lines_never_panic_a_mapped_import(lines in vec(line(), 0..40), array in any::<bool>()) {
        let text = if array {
            format!("[{}]", lines.join(","))
        } else {
            lines.join("\n")
        };
        let _ = import::import_mapped(&[Log { name: "a.log", text: &text }], mapping(), &options());
    }

    #[test]
    fn arbitrary_bytes_never_panic_an_import_of_racegates_own_log(bytes in vec(any::<u8>(), 0..2048)) {
        let _ = import::import(&text_of(&bytes), &options());
    }

    #[test]
    fn arbitrary_text_never_panics_the_mapping_parser(bytes in vec(any::<u8>(), 0..1024)) {
        let _ = Mapping::parse(&text_of(&bytes), Path::new("map.toml"));
    }

    #[test]
    fn mapping_shaped_text_never_panics_the_mapping_parser(
        cut in 0usize..MAP.len(),
        junk in "\\PC{0,20}",
    ) {
        let mut text = MAP.to_string();
        let at = (0..=cut).rev().find(|i| text.is_char_boundary(*i)).unwrap_or(0);
        text.insert_str(at, &junk);
        let _ = Mapping::parse(&text, Path::new("map.toml"));
    }
}
