//! The core of racegate: an application-level connection lifecycle and the bounded queue that
//! holds a connection's traffic until it is ready to process it.
//!
//! This is the fix for the race the rest of racegate reproduces. A server that accepts a
//! WebSocket early and then spends hundreds of milliseconds on auth, services and handler
//! registration must not let anyone use the connection in that window. Here the connection's
//! state and its queue live under one lock, so readiness and enqueueing are one step, and entering
//! `ProcessingReady` flushes what was held, in order, before anything later.
//!
//! The crate is `std` only (no async runtime, no serde), so its synchronisation can be model
//! checked: build with `RUSTFLAGS="--cfg racegate_loom"` and the `sync` shim swaps in loom.
//!
//! ```
//! use racegate_core::{ConnectionState, ConnectionStateMachine, Delivery, QueueLimits};
//!
//! let conn = ConnectionStateMachine::new(QueueLimits::default(), |_msg: String| {});
//! assert_eq!(conn.deliver_or_enqueue("early".into()), Ok(Delivery::Queued { depth: 1 }));
//! let ended = conn.fail().unwrap(); // auth failed: nothing is lost, it comes back
//! assert_eq!(ended.undelivered, vec!["early".to_string()]);
//! assert_eq!(ended.state, ConnectionState::Failed);
//! ```
//!
//! Modules: [`state`] (the lifecycle as a pure function), [`queue`] (the bounded FIFO),
//! [`machine`] (both under one lock), `sync` (the std/loom switch).

pub mod machine;
pub mod queue;
pub mod state;
mod sync;

pub use machine::{
    Advanced, Cleanup, ConnectionStateMachine, Delivery, Ended, EnqueueError, Registration, Sink,
};
pub use queue::{Limit, MessageQueue, Payload, QueueLimits};
pub use state::{ConnectionState, TransitionError};
