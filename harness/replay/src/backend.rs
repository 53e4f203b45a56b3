//! The server around the endpoints: phases with injected delays and failures, the connection
//! manager the notifier uses, the global message router, and the shared "current user".
//!
//! These are the production server's components as the endpoints meet them. The harness owns
//! every delay here (turmoil's idea: race points are typed hooks, not sleeps sprinkled in the
//! code under test), so a scenario file decides when each phase ends and which one fails.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use indexmap::IndexMap;

use crate::setup::{Phase, ServerConfig};
use crate::trace::{AgentEvent, EventKind, Frame, Recorder};

/// A boxed, sendable future.
pub type BoxFuture = Pin<Box<dyn Future<Output = ()> + Send>>;

/// How the manager hands a frame to one registered connection. Each endpoint supplies its own:
/// straight to the socket, guarded by a readiness check, or through the state machine.
pub type Pusher = Arc<dyn Fn(Frame) -> BoxFuture + Send + Sync>;

/// Waits `ms` of (virtual) time; zero does not yield, so a zero-length phase adds no
/// interleaving of its own.
pub async fn pause(ms: u64) {
    if ms > 0 {
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }
}

/// One registered connection: its label (what the trace records it under) and how to reach it.
type Entry = (String, Pusher);

#[derive(Default)]
struct Shared {
    /// user → its registered connections, oldest first, each with how to reach it. Ordered:
    /// iteration order is determinism. The legacy endpoints keep one connection a user (the
    /// production manager's dict); the fixed one every connection of the user (two tabs).
    manager: IndexMap<String, Vec<Entry>>,
    /// Handlers registered in the global router (the production router is per message type,
    /// not per connection, so the first registration serves everyone).
    router_handlers: usize,
    /// The production server's module-level "current user context".
    current_user: Option<String>,
}

/// The simulated server one run's endpoints share.
pub struct Backend {
    /// Phase timings and limits.
    pub config: ServerConfig,
    /// The run's timeline.
    pub recorder: Recorder,
    failures: IndexMap<String, Phase>,
    shared: Mutex<Shared>,
}

impl Backend {
    /// A backend with these timings; `failures` says which connection (by label) fails at
    /// which phase.
    pub fn new(
        config: ServerConfig,
        failures: IndexMap<String, Phase>,
        recorder: Recorder,
    ) -> Self {
        Backend {
            config,
            recorder,
            failures,
            shared: Mutex::default(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Shared> {
        match self.shared.lock() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    /// Records `kind` for `user` now.
    pub fn record(&self, user: &str, kind: EventKind) {
        self.recorder.record(user, kind);
    }

    /// Runs one setup phase for connection `conn`: waits its duration, then succeeds or fails
    /// as injected.
    pub async fn phase(&self, conn: &str, phase: Phase) -> Result<(), Phase> {
        let ms = match phase {
            Phase::Auth => self.config.auth_ms,
            Phase::Services => self.config.services_ms,
            Phase::Register => self.config.register_ms,
        };
        pause(ms).await;
        match self.failures.get(conn) {
            Some(failing) if *failing == phase => Err(phase),
            Some(_) | None => Ok(()),
        }
    }

    /// Makes connection `conn` the one the notifier reaches `user` by (the production
    /// manager's `connections[user] = ws`): a connection of the user registered before is
    /// replaced, and no longer reachable.
    pub fn register(&self, user: &str, conn: &str, pusher: Pusher) {
        let replaced = self
            .lock()
            .manager
            .insert(user.to_string(), vec![(conn.to_string(), pusher)]);
        for (old, _) in replaced.unwrap_or_default() {
            self.record(&old, EventKind::Unregistered);
        }
        self.record(conn, EventKind::Registered);
    }

    /// Makes connection `conn` reachable by the notifier as one more of `user`'s connections
    /// (the fix: a user's tabs each get its pushes).
    pub fn register_also(&self, user: &str, conn: &str, pusher: Pusher) {
        self.lock()
            .manager
            .entry(user.to_string())
            .or_default()
            .push((conn.to_string(), pusher));
        self.record(conn, EventKind::Registered);
    }

    /// Removes whatever is registered for `user` (the production manager's
    /// `del connections[user]`): when that is a newer connection of the user, the one that
    /// asked removes it.
    pub fn unregister(&self, user: &str) {
        // Nothing iterates the manager, so the O(1) removal cannot change an order anyone sees
        // (`shift_remove` made a run of thousands of users quadratic).
        let removed = self.lock().manager.swap_remove(user);
        for (conn, _) in removed.unwrap_or_default() {
            self.record(&conn, EventKind::Unregistered);
        }
    }

    /// Removes connection `conn` of `user` from the manager, and only that one.
    pub fn unregister_own(&self, user: &str, conn: &str) {
        let removed = {
            let mut shared = self.lock();
            let Some(conns) = shared.manager.get_mut(user) else {
                return;
            };
            let found = conns.iter().position(|(c, _)| c == conn);
            let removed = found.map(|k| conns.remove(k));
            if conns.is_empty() {
                shared.manager.swap_remove(user);
            }
            removed
        };
        if removed.is_some() {
            self.record(conn, EventKind::Unregistered);
        }
    }

    /// Sends `frame` to every connection registered for `user`, oldest first. `Err` when none
    /// is.
    pub async fn send_to_user(&self, user: &str, frame: Frame) -> Result<(), Frame> {
        let pushers: Vec<Pusher> = match self.lock().manager.get(user) {
            Some(conns) => conns.iter().map(|(_, p)| p.clone()).collect(),
            None => Vec::new(),
        };
        let Some((last, others)) = pushers.split_last() else {
            return Err(frame);
        };
        for push in others {
            push(frame.clone()).await;
        }
        last(frame).await;
        Ok(())
    }

    /// The notifier: issues push `id` for `user` through the manager, recorded for connection
    /// `conn` (the `[[user]]` that declares it). A user with no registered connection gets an
    /// explicit rejection, the same in every endpoint.
    pub async fn notify(&self, user: &str, conn: &str, id: String, text: String) {
        self.record(conn, EventKind::PushIssued { id: id.clone() });
        let frame = Frame::Push {
            id: id.clone(),
            text,
            user: user.to_string(),
        };
        if self.send_to_user(user, frame).await.is_err() {
            self.record(
                conn,
                EventKind::Rejected {
                    id,
                    reason: "no connection registered for this user".into(),
                },
            );
        }
    }

    /// Registers a handler in the global router.
    pub fn add_router_handler(&self) {
        self.lock().router_handlers += 1;
    }

    /// True once any connection has registered a handler.
    pub fn router_has_handler(&self) -> bool {
        self.lock().router_handlers > 0
    }

    /// Sets the shared current-user context.
    pub fn set_current_user(&self, user: &str) {
        self.lock().current_user = Some(user.to_string());
    }

    /// Reads the shared current-user context.
    pub fn current_user(&self) -> Option<String> {
        self.lock().current_user.clone()
    }

    /// One agent run for chat `run`: five events `event_gap_ms` apart, each through `send`.
    pub async fn agent_run<F, Fut>(&self, run: &str, as_user: &str, mut send: F)
    where
        F: FnMut(Frame) -> Fut,
        Fut: Future<Output = ()>,
    {
        for kind in AgentEvent::RUN {
            pause(self.config.event_gap_ms).await;
            send(Frame::Event {
                kind,
                run: run.to_string(),
                user: as_user.to_string(),
            })
            .await;
        }
    }
}
