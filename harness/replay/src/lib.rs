//! Scenario replay for racegate: the fake transport, the three endpoints, the oracle, and the
//! runner that replays a scenario file in tokio virtual time.
//!
//! ```
//! use std::path::Path;
//! use racegate_replay::{EndpointKind, Verdict, replay, scenario};
//!
//! let text = r#"
//! name = "first chat lands during auth"
//! [server]
//! auth_ms = 180
//! services_ms = 240
//! register_ms = 90
//! [[user]]
//! id = "101463487227881885914"
//! [[user.send]]
//! at_ms = 5
//! text = "hello"
//! "#;
//! let s = scenario::parse(text, Path::new("inline.toml")).unwrap();
//! let bug = replay(&s, EndpointKind::Unfixed).unwrap();
//! assert_eq!(bug.verdict, Verdict::Fail);
//! assert_eq!(bug.violations[0].invariant.name(), "message-lost");
//! let fix = replay(&s, EndpointKind::StateMachine).unwrap();
//! assert_eq!(fix.verdict, Verdict::Pass);
//! ```
//!
//! Modules, in the order a run uses them:
//! [`setup`], [`endpoint_kind`] and [`invariant`] (the server's phases, the endpoints' names and
//! the invariants' names: leaves that scenarios, endpoints, the checker and the oracle all name), [`scenario`] (files → validated scenarios), [`transport`] (Starlette-like sockets; the fake
//! one here), [`backend`] (the server's phases, manager, router), [`endpoint`] (`unfixed`,
//! `partial`, `state-machine`), [`trace`] (the timeline), [`history`] (the client history every driver
//! records), [`checker`] (the client-observable invariants over a history, one function each),
//! [`oracle`] (a trace's history through the checker, plus the server-side invariants),
//! [`schedule`] (when clients close, for every driver), [`runner`] (virtual-time replay), [`report`] (table, JSON, JUnit, the HTML report with a
//! timeline per run, Mermaid), [`explore`] (proptest searches timings for violations and shrinks
//! each to a scenario file), and [`import`] (racegate's own JSON logs, or an application's logs
//! through a mapping, back into a scenario).

pub mod backend;
pub mod checker;
pub mod endpoint;
pub mod endpoint_kind;
pub mod explore;
mod fnv;
pub mod history;
pub mod import;
pub mod invariant;
pub mod oracle;
pub mod report;
pub mod runner;
pub mod scenario;
pub mod schedule;
pub mod setup;
pub mod trace;
pub mod transport;

pub use checker::{Indeterminate, Judgement, Unmatched};
pub use endpoint::EndpointKind;
pub use invariant::{Invariant, Violation};
/// The lifecycle states a trace records (`EventKind::State`), from the loom-checked core.
pub use racegate_core::ConnectionState;
pub use runner::{ProductionCheck, RunOutcome, replay};
pub use scenario::{InvariantMatch, Scenario, ScenarioError, Symptom, Verdict};
