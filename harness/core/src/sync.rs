//! The one place the core names its synchronisation primitives.
//!
//! Under `--cfg racegate_loom` these are loom's model-checked types; otherwise `std`'s. Both arms
//! expose the same poison-free API (`lock()` returns the guard), so the rest of the crate is
//! written once and checked by loom as it ships. The cfg is crate-specific, not `loom`, so tokio
//! elsewhere in the workspace never sees it.

#[cfg(racegate_loom)]
mod imp {
    pub(crate) use loom::sync::atomic::{AtomicU8, Ordering};
    pub(crate) use loom::sync::{Condvar as RawCondvar, Mutex as RawMutex, MutexGuard};
}

#[cfg(not(racegate_loom))]
mod imp {
    pub(crate) use std::sync::atomic::{AtomicU8, Ordering};
    pub(crate) use std::sync::{Condvar as RawCondvar, Mutex as RawMutex, MutexGuard};
}

pub(crate) use imp::{AtomicU8, MutexGuard, Ordering};

/// A mutex whose `lock()` ignores poisoning.
///
/// A panic inside a delivery sink must not turn every later call into a second panic, and it
/// need not: the only user code run under the lock is the sink, and the machine calls it only
/// once its own state is consistent (the state is set and waiters woken before a flush starts; a
/// message is popped, byte count included, before it is handed over). A sink that panics leaves
/// the message it was given as delivered and everything not yet flushed still queued, in order.
/// Cleanups run outside the lock. `ConnectionStateMachine`'s "Panics" section is the contract.
#[derive(Debug)]
pub(crate) struct Mutex<T>(imp::RawMutex<T>);

impl<T> Mutex<T> {
    pub(crate) fn new(value: T) -> Self {
        Self(imp::RawMutex::new(value))
    }

    pub(crate) fn lock(&self) -> MutexGuard<'_, T> {
        match self.0.lock() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        }
    }
}

/// A condition variable paired with [`Mutex`], poison-free in the same way.
#[derive(Debug)]
pub(crate) struct Condvar(imp::RawCondvar);

impl Condvar {
    pub(crate) fn new() -> Self {
        Self(imp::RawCondvar::new())
    }

    pub(crate) fn wait<'a, T>(&self, guard: MutexGuard<'a, T>) -> MutexGuard<'a, T> {
        match self.0.wait(guard) {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    #[cfg(not(racegate_loom))]
    pub(crate) fn wait_timeout<'a, T>(
        &self,
        guard: MutexGuard<'a, T>,
        timeout: std::time::Duration,
    ) -> MutexGuard<'a, T> {
        match self.0.wait_timeout(guard, timeout) {
            Ok((guard, _)) => guard,
            Err(poisoned) => poisoned.into_inner().0,
        }
    }

    pub(crate) fn notify_all(&self) {
        self.0.notify_all();
    }
}
