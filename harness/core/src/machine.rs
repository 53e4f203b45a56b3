//! One connection's lifecycle and its pre-ready queue, under one lock.
//!
//! The production fix in one type. The state, the queue and the delivery sink live behind a
//! single mutex, so "is it ready?" and "deliver or hold" are one atomic step: there is no window
//! in which a message sees "not ready", the connection becomes ready and flushes, and the message
//! then lands in a queue nobody will drain (the `check_then_act` loom model shows that window).
//! Entering `ProcessingReady` flushes the queue into the sink under the same lock, so a message
//! that arrives during the flush waits for the lock and is delivered after every queued one.

use std::fmt;

use crate::queue::{Limit, MessageQueue, Payload, QueueLimits};
use crate::state::{ConnectionState, TransitionError};
use crate::sync::{AtomicU8, Condvar, Mutex, Ordering};

/// Where delivered messages go.
///
/// Called with the machine's lock held, so delivery order is the order of the calls that
/// delivered. It must be quick and must not call back into the same machine (that would
/// deadlock): push into a channel or a buffer, do the work elsewhere.
pub trait Sink<M>: Send {
    /// Takes one message, in order.
    fn deliver(&mut self, msg: M);
}

impl<M, F: FnMut(M) + Send> Sink<M> for F {
    fn deliver(&mut self, msg: M) {
        self(msg)
    }
}

/// A setup rollback action.
pub type Cleanup = Box<dyn FnOnce() + Send>;

/// What [`ConnectionStateMachine::deliver_or_enqueue`] did with a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivery {
    /// Handed to the sink now.
    Delivered,
    /// Held until `ProcessingReady`; `depth` is the queue length including it.
    Queued {
        /// Messages now held, this one included.
        depth: usize,
    },
}

/// A message the machine would not take, handed back so it can be reported.
#[derive(PartialEq, Eq)]
pub enum EnqueueError<M> {
    /// The pre-ready queue is at a bound. The caller closes with [`EnqueueError::close_code`]
    /// (1013, "try again later").
    Full {
        /// The rejected message.
        message: M,
        /// The bound it hit.
        limit: Limit,
    },
    /// The connection already ended.
    Closed {
        /// The rejected message.
        message: M,
        /// `Closed` or `Failed`.
        state: ConnectionState,
    },
}

impl<M> EnqueueError<M> {
    /// The rejected message.
    pub fn into_message(self) -> M {
        match self {
            EnqueueError::Full { message, .. } | EnqueueError::Closed { message, .. } => message,
        }
    }

    /// The WebSocket close code this rejection calls for: 1013 for overflow, none when the
    /// connection is already closed.
    pub fn close_code(&self) -> Option<u16> {
        match self {
            EnqueueError::Full { .. } => Some(1013),
            EnqueueError::Closed { .. } => None,
        }
    }
}

impl<M> fmt::Debug for EnqueueError<M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl<M> fmt::Display for EnqueueError<M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EnqueueError::Full { limit, .. } => write!(
                f,
                "message rejected: the pre-ready queue is full ({limit}); close with 1013 and let the client retry"
            ),
            EnqueueError::Closed { state, .. } => {
                write!(f, "message rejected: the connection is {state}")
            }
        }
    }
}

impl<M> std::error::Error for EnqueueError<M> {}

/// What a forward transition did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Advanced {
    /// The new state.
    pub to: ConnectionState,
    /// Messages flushed to the sink by entering `ProcessingReady` (0 for other states).
    pub flushed: usize,
}

/// What ending a connection left behind.
#[derive(Debug, PartialEq, Eq)]
#[must_use = "undelivered messages must be reported, not dropped"]
pub struct Ended<M> {
    /// The state it ended in.
    pub state: ConnectionState,
    /// The state it ended from.
    pub from: ConnectionState,
    /// Messages that were queued and never delivered, oldest first.
    pub undelivered: Vec<M>,
    /// Rollback actions that ran (0 when it had reached `ProcessingReady`).
    pub cleanups_run: usize,
}

/// What [`ConnectionStateMachine::register_cleanup`] did with an action.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Registration {
    /// Held; runs if the connection ends before it is ready.
    Registered,
    /// The connection had already ended before it was ready: the action ran now, once.
    RanImmediately,
    /// The connection is already ready: setup is committed and the action was dropped unrun.
    Committed,
}

struct Inner<M, S> {
    state: ConnectionState,
    queue: MessageQueue<M>,
    sink: S,
    cleanups: Vec<Cleanup>,
    /// Set on entering `ProcessingReady`; decides whether a late cleanup is a rollback.
    was_ready: bool,
}

/// A thread-safe connection lifecycle that owns the connection's pre-ready queue.
///
/// ```
/// use std::sync::{Arc, Mutex};
/// use racegate_core::{ConnectionState::*, ConnectionStateMachine, Delivery, QueueLimits};
///
/// let handled = Arc::new(Mutex::new(Vec::new()));
/// let sink = { let h = handled.clone(); move |m: String| h.lock().unwrap().push(m) };
/// let conn = ConnectionStateMachine::new(QueueLimits::default(), sink);
///
/// // A first message arrives during setup: held, not routed to a missing handler.
/// assert_eq!(conn.deliver_or_enqueue("hello".to_string()), Ok(Delivery::Queued { depth: 1 }));
/// for s in [Accepted, Authenticated, ServicesReady, ProcessingReady] {
///     conn.advance(s).unwrap();
/// }
/// // Ready: the queue was flushed in order, and later messages go straight through.
/// conn.deliver_or_enqueue("second".to_string()).unwrap();
/// assert_eq!(*handled.lock().unwrap(), ["hello", "second"]);
/// ```
///
/// # Panics
///
/// A panicking [`Sink`] or cleanup propagates to the caller; the machine stays usable and
/// consistent, never poisoned:
/// - The message the sink was given counts as delivered (the sink owned it).
/// - A panic mid-flush leaves the state `ProcessingReady` (something was delivered, so setup is
///   committed and the cleanups dropped), and every message not yet flushed still queued, in
///   order. Later messages queue behind them, never overtaking, and [`close`](Self::close) or
///   [`fail`](Self::fail) hands them back in [`Ended::undelivered`]. Waiters were already woken.
/// - A cleanup panicking inside [`end`](Self::end) does so after the connection ended: the
///   state is terminal, the later cleanups are dropped unrun, and the unwinding drops the
///   [`Ended`] value, undelivered messages included.
pub struct ConnectionStateMachine<M, S> {
    inner: Mutex<Inner<M, S>>,
    /// A mirror of `inner.state`, written only under the lock, for lock-free readiness queries.
    /// Advisory: by the time a caller acts on it, it may be stale. Decisions go through the lock.
    snapshot: AtomicU8,
    changed: Condvar,
}

impl<M: Payload, S: Sink<M>> ConnectionStateMachine<M, S> {
    /// A connection in `Connecting` with an empty queue bounded by `limits`.
    pub fn new(limits: QueueLimits, sink: S) -> Self {
        ConnectionStateMachine {
            inner: Mutex::new(Inner {
                state: ConnectionState::Connecting,
                queue: MessageQueue::new(limits),
                sink,
                cleanups: Vec::new(),
                was_ready: false,
            }),
            snapshot: AtomicU8::new(ConnectionState::Connecting as u8),
            changed: Condvar::new(),
        }
    }

    /// The current state (a snapshot; cheap, lock-free).
    pub fn state(&self) -> ConnectionState {
        ConnectionState::from_u8(self.snapshot.load(Ordering::Acquire))
    }

    /// True in `ProcessingReady` (a snapshot: never use it to decide whether to queue).
    pub fn is_ready(&self) -> bool {
        self.state().is_ready()
    }

    /// Messages held now.
    pub fn queued(&self) -> usize {
        self.inner.lock().queue.len()
    }

    /// Delivers `msg` now if the connection is ready and nothing is queued ahead of it, otherwise
    /// holds it until `ProcessingReady`. One atomic step: no check-then-act window.
    pub fn deliver_or_enqueue(&self, msg: M) -> Result<Delivery, EnqueueError<M>> {
        #[cfg_attr(racegate_loom_broken, allow(unused_mut))] // the broken arm locks again
        let mut inner = self.inner.lock();
        let (state, nothing_held) = (inner.state, inner.queue.is_empty());
        // The regression the loom models must catch: production once read readiness under one
        // acquisition and enqueued under another. Compiled only for `loom_machine`'s
        // `broken` test, which must find `ready_handoff` violated.
        #[cfg(racegate_loom_broken)]
        let mut inner = {
            drop(inner);
            self.inner.lock()
        };
        let inner = &mut *inner;
        match state {
            ConnectionState::ProcessingReady if nothing_held => {
                inner.sink.deliver(msg);
                Ok(Delivery::Delivered)
            }
            ConnectionState::Closed | ConnectionState::Failed => Err(EnqueueError::Closed {
                message: msg,
                state,
            }),
            ConnectionState::Connecting
            | ConnectionState::Accepted
            | ConnectionState::Authenticated
            | ConnectionState::ServicesReady
            | ConnectionState::ProcessingReady => match inner.queue.push(msg) {
                Ok(()) => Ok(Delivery::Queued {
                    depth: inner.queue.len(),
                }),
                Err((message, limit)) => Err(EnqueueError::Full { message, limit }),
            },
        }
    }

    /// Moves one step forward. Entering `ProcessingReady` flushes the queue to the sink, in
    /// order, before the lock is released. Ending goes through [`close`](Self::close) or
    /// [`fail`](Self::fail), which return what was left undelivered.
    ///
    /// The new state is recorded, and waiters woken, before the sink runs, so a sink that panics
    /// mid-flush leaves a machine that says what happened (see the type's "Panics" section).
    pub fn advance(&self, to: ConnectionState) -> Result<Advanced, TransitionError> {
        // Declared before the guard so it is dropped after it, outside the lock, even on unwind:
        // dropping a closure runs its captures' destructors, which may call back in.
        let _committed: Vec<Cleanup>;
        let mut inner = self.inner.lock();
        let from = inner.state;
        if to.is_terminal() {
            // Ending here would have to drop the undelivered messages; refuse and name it.
            return Err(TransitionError { from, to });
        }
        let to = from.transition(to)?;
        inner.state = to;
        self.snapshot.store(to as u8, Ordering::Release);
        // Woken under the lock, a waiter runs once the flush below has released it.
        self.changed.notify_all();
        if !to.is_ready() {
            return Ok(Advanced { to, flushed: 0 });
        }
        // Setup is committed: the rollback actions no longer apply.
        let inner = &mut *inner;
        inner.was_ready = true;
        _committed = std::mem::take(&mut inner.cleanups);
        let mut flushed = 0;
        while let Some(msg) = inner.queue.pop() {
            inner.sink.deliver(msg);
            flushed += 1;
        }
        Ok(Advanced { to, flushed })
    }

    /// Ends the connection normally. See [`end`](Self::end).
    pub fn close(&self) -> Result<Ended<M>, TransitionError> {
        self.end(ConnectionState::Closed)
    }

    /// Ends the connection by failure. See [`end`](Self::end).
    pub fn fail(&self) -> Result<Ended<M>, TransitionError> {
        self.end(ConnectionState::Failed)
    }

    /// Ends the connection in `Closed` or `Failed`. Returns the messages still queued, and, if the
    /// connection never became ready, runs the registered cleanups once each, newest first,
    /// after releasing the lock (a cleanup may call back into this machine).
    pub fn end(&self, to: ConnectionState) -> Result<Ended<M>, TransitionError> {
        let mut inner = self.inner.lock();
        let from = inner.state;
        if !to.is_terminal() {
            return Err(TransitionError { from, to });
        }
        inner.state = from.transition(to)?;
        self.snapshot.store(to as u8, Ordering::Release);
        let undelivered = inner.queue.drain_all();
        let cleanups = std::mem::take(&mut inner.cleanups);
        drop(inner);
        self.changed.notify_all();
        let cleanups_run = cleanups.len();
        for cleanup in cleanups.into_iter().rev() {
            cleanup();
        }
        Ok(Ended {
            state: to,
            from,
            undelivered,
            cleanups_run,
        })
    }

    /// Registers a setup rollback action: it runs exactly once if the connection ends before it
    /// is ready, and never once it is ready. If the connection already ended before ready, it
    /// runs now, so a registration racing a failure is never lost.
    pub fn register_cleanup(&self, cleanup: impl FnOnce() + Send + 'static) -> Registration {
        let mut inner = self.inner.lock();
        match inner.state {
            ConnectionState::Connecting
            | ConnectionState::Accepted
            | ConnectionState::Authenticated
            | ConnectionState::ServicesReady => {
                inner.cleanups.push(Box::new(cleanup));
                Registration::Registered
            }
            ConnectionState::ProcessingReady => Registration::Committed,
            ConnectionState::Closed | ConnectionState::Failed => {
                // Rollback applies only to connections that never became ready.
                let never_ready = !inner.was_ready;
                drop(inner);
                if never_ready {
                    cleanup();
                    Registration::RanImmediately
                } else {
                    Registration::Committed
                }
            }
        }
    }

    /// Blocks until the connection is ready (`Ok`) or ended (`Err` with the terminal state).
    pub fn wait_ready(&self) -> Result<(), ConnectionState> {
        let mut inner = self.inner.lock();
        loop {
            match inner.state {
                ConnectionState::ProcessingReady => return Ok(()),
                ConnectionState::Closed | ConnectionState::Failed => return Err(inner.state),
                ConnectionState::Connecting
                | ConnectionState::Accepted
                | ConnectionState::Authenticated
                | ConnectionState::ServicesReady => inner = self.changed.wait(inner),
            }
        }
    }

    /// Like [`wait_ready`](Self::wait_ready), giving up after `timeout` with the state then.
    #[cfg(not(racegate_loom))]
    pub fn wait_ready_timeout(&self, timeout: std::time::Duration) -> Result<(), ConnectionState> {
        let deadline = std::time::Instant::now() + timeout;
        let mut inner = self.inner.lock();
        loop {
            match inner.state {
                ConnectionState::ProcessingReady => return Ok(()),
                ConnectionState::Closed | ConnectionState::Failed => return Err(inner.state),
                ConnectionState::Connecting
                | ConnectionState::Accepted
                | ConnectionState::Authenticated
                | ConnectionState::ServicesReady => {
                    let now = std::time::Instant::now();
                    if now >= deadline {
                        return Err(inner.state);
                    }
                    inner = self.changed.wait_timeout(inner, deadline - now);
                }
            }
        }
    }
}

impl<M, S> fmt::Debug for ConnectionStateMachine<M, S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConnectionStateMachine")
            .field(
                "state",
                &ConnectionState::from_u8(self.snapshot.load(Ordering::Acquire)),
            )
            .finish_non_exhaustive()
    }
}
