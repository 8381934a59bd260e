//! [`Gate`]: who may still send to one stream actor, so that the site can stop (passivate)
//! an idle actor without losing a message sent to it.
//!
//! Every message an application sends through a [`crate::StreamHandle`] passes the gate:
//! it enters before the message is queued and leaves once the reply is back. The router
//! passivates an actor only by closing its gate while nobody is inside, in one atomic step;
//! from then on handles go back to the router for the stream's next actor. So no message
//! is ever queued to an actor that is stopping, and none is answered twice.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Instant;

/// Set in `state` once the gate is closed; the bits below count the messages inside.
const CLOSED: u64 = 1 << 63;

/// The gate of one stream actor.
#[derive(Debug, Default)]
pub struct Gate {
    state: AtomicU64,
    /// When a message last entered, in [`clock_ms`] time.
    used_ms: AtomicU64,
}

impl Gate {
    /// Lets one message in, unless the gate is closed (the actor is passivating or gone).
    fn enter(&self) -> bool {
        let entered = self
            .state
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |state| (state & CLOSED == 0).then(|| state + 1))
            .is_ok();
        if entered {
            self.used_ms.fetch_max(clock_ms(), Ordering::Relaxed);
        }
        entered
    }

    /// Lets one message in like [`Gate::enter`], as an [`Entry`] that leaves when dropped.
    pub(crate) fn entry(self: &Arc<Self>) -> Option<Entry> {
        self.enter().then(|| Entry(Arc::clone(self)))
    }

    /// One message that entered has its reply.
    fn leave(&self) {
        let before = self.state.fetch_sub(1, Ordering::AcqRel);
        debug_assert!(before & !CLOSED > 0, "left a gate nobody was inside");
    }

    /// Closes the gate if nobody is inside: true when it closed.
    pub(crate) fn close_if_idle(&self) -> bool {
        self.state.compare_exchange(0, CLOSED, Ordering::AcqRel, Ordering::Acquire).is_ok()
    }

    /// Opens a gate closed by [`Gate::close_if_idle`] again: the actor would not stop.
    pub(crate) fn reopen(&self) {
        let before = self.state.fetch_and(!CLOSED, Ordering::AcqRel);
        debug_assert_eq!(before, CLOSED, "a closed gate has nobody inside");
    }

    /// When a message last entered (0 if none ever did), in [`clock_ms`] time.
    pub(crate) fn used_ms(&self) -> u64 {
        self.used_ms.load(Ordering::Relaxed)
    }
}

/// One message inside a [`Gate`]: the actor cannot passivate until it is dropped. It
/// leaves when dropped, also when its holder drops a send before the reply.
#[derive(Debug)]
pub struct Entry(Arc<Gate>);

impl Entry {
    /// The gate this entry is inside.
    pub(crate) fn gate(&self) -> &Arc<Gate> {
        &self.0
    }
}

impl Drop for Entry {
    fn drop(&mut self) {
        self.0.leave();
    }
}

/// Milliseconds since this process first asked: a monotonic clock for idle times.
pub(crate) fn clock_ms() -> u64 {
    static START: OnceLock<Instant> = OnceLock::new();
    u64::try_from(START.get_or_init(Instant::now).elapsed().as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_gate_closes_only_when_nobody_is_inside_and_then_lets_nobody_in() {
        let gate = Arc::new(Gate::default());
        let entry = gate.entry().expect("open");
        assert!(!gate.close_if_idle(), "a message is inside");
        drop(entry);
        assert!(gate.close_if_idle());
        assert!(gate.entry().is_none(), "closed");
        gate.reopen();
        assert!(gate.entry().is_some(), "reopened");
    }
}
