//! The bounded queue that holds a connection's traffic until it is ready.
//!
//! The queue is not shared on its own: [`ConnectionStateMachine`](crate::ConnectionStateMachine)
//! owns it under the same lock as the state, which is what makes "check readiness, then enqueue"
//! one atomic step. Rejected items are handed back inside the error, so a caller can always
//! account for every message: delivered once, or rejected visibly, never dropped.

use std::collections::VecDeque;
use std::fmt;

/// Anything that can be queued: it only has to say how many bytes it weighs.
pub trait Payload {
    /// The size this item counts against [`QueueLimits::max_bytes`].
    fn byte_len(&self) -> usize;
}

impl Payload for String {
    fn byte_len(&self) -> usize {
        self.len()
    }
}

impl Payload for &str {
    fn byte_len(&self) -> usize {
        self.len()
    }
}

impl Payload for Vec<u8> {
    fn byte_len(&self) -> usize {
        self.len()
    }
}

macro_rules! fixed_size_payload {
    ($($t:ty),*) => {$(
        impl Payload for $t {
            fn byte_len(&self) -> usize {
                std::mem::size_of::<$t>()
            }
        }
    )*};
}
fixed_size_payload!(u8, u16, u32, u64, usize);

/// How much a connection may hold before it is ready.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueLimits {
    /// Most messages held at once.
    pub max_messages: usize,
    /// Most bytes held at once (sum of [`Payload::byte_len`]).
    pub max_bytes: usize,
}

impl Default for QueueLimits {
    /// 64 messages or 1 MiB, whichever is reached first.
    fn default() -> Self {
        QueueLimits {
            max_messages: 64,
            max_bytes: 1 << 20,
        }
    }
}

/// Which bound an enqueue hit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limit {
    /// [`QueueLimits::max_messages`].
    Messages(usize),
    /// [`QueueLimits::max_bytes`].
    Bytes(usize),
}

impl fmt::Display for Limit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Limit::Messages(n) => write!(f, "{n} messages"),
            Limit::Bytes(n) => write!(f, "{n} bytes"),
        }
    }
}

/// A FIFO bounded by count and by bytes.
#[derive(Debug)]
pub struct MessageQueue<M> {
    items: VecDeque<M>,
    bytes: usize,
    limits: QueueLimits,
}

impl<M: Payload> MessageQueue<M> {
    /// An empty queue with these bounds.
    pub fn new(limits: QueueLimits) -> Self {
        MessageQueue {
            items: VecDeque::new(),
            bytes: 0,
            limits,
        }
    }

    /// Appends `msg`, or hands it back with the bound it would break.
    pub fn push(&mut self, msg: M) -> Result<(), (M, Limit)> {
        if self.items.len() >= self.limits.max_messages {
            return Err((msg, Limit::Messages(self.limits.max_messages)));
        }
        let size = msg.byte_len();
        if self.bytes.saturating_add(size) > self.limits.max_bytes {
            return Err((msg, Limit::Bytes(self.limits.max_bytes)));
        }
        self.bytes += size;
        self.items.push_back(msg);
        Ok(())
    }

    /// Removes the oldest item.
    pub fn pop(&mut self) -> Option<M> {
        let msg = self.items.pop_front()?;
        self.bytes -= msg.byte_len();
        Some(msg)
    }

    /// Empties the queue, oldest first.
    pub fn drain_all(&mut self) -> Vec<M> {
        self.bytes = 0;
        self.items.drain(..).collect()
    }

    /// Items held.
    pub fn len(&self) -> usize {
        self.items.len()
    }

    /// True when nothing is held.
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// Bytes held.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// The bounds.
    pub fn limits(&self) -> QueueLimits {
        self.limits
    }
}
