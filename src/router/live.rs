//! Which stream actors are alive: the router's least-recently-used order of them, and
//! passivation, which stops actors when more than [`Passivation::live_max`] are alive
//! (least recently used first) or when one has been idle for [`Passivation::idle_after`].
//!
//! An actor is passivated in two steps. The router closes its [`Gate`] if no message of the
//! application is inside (one atomic step, so none can be on its way), takes it out of the
//! live set and sends it [`Passivate`]; the actor stops if it holds nothing that would be
//! lost, and says so. Meanwhile events for that stream wait in its outbox and `OpenStream`
//! requests wait here. If the actor stopped, the next use opens a fresh one from storage;
//! if it was busy, its gate opens again and it goes back to the live set as just used.

use super::{Opened, Router};
use crate::id::StreamId;
use crate::limits;
use crate::stream::{clock_ms, Passivate};
use actix::prelude::*;
use std::time::Duration;
use tokio::sync::oneshot;

/// When a site stops idle stream actors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Passivation {
    /// Stream actors alive at most; past it the least recently used idle ones stop.
    pub live_max: usize,
    /// An actor unused for this long stops (`None`: only `live_max` stops actors).
    pub idle_after: Option<Duration>,
}

impl Default for Passivation {
    fn default() -> Self {
        Self { live_max: limits::STREAMS_LIVE_MAX, idle_after: Some(limits::STREAM_IDLE_AFTER) }
    }
}

/// What [`Router::open`] found for a stream.
pub(super) enum Open {
    /// Its actor is alive, of this type.
    Ready(&'static str),
    /// Its actor, of this type, is stopping, or there is no room for it before one stops:
    /// ask again once an actor has answered [`Passivate`].
    Later(&'static str),
    /// Its type is not registered here (or its relayed appends are not durable yet): its
    /// events are stored without folding.
    Unregistered,
}

/// An actor asked to stop.
pub(super) struct Passivating {
    pub(super) opened: Opened,
}

impl Router {
    /// Marks `stream`'s actor as used now.
    pub(super) fn touch(&mut self, stream: StreamId) {
        let Some(opened) = self.streams.get_mut(&stream) else { return };
        self.lru.remove(&(opened.used_ms, stream));
        opened.used_ms = clock_ms().max(opened.gate.used_ms());
        self.lru.insert((opened.used_ms, stream));
    }

    /// True while `stream`'s actor is asked to stop: its events wait in its outbox.
    pub(super) fn is_passivating(&self, stream: StreamId) -> bool {
        self.passivating.contains_key(&stream)
    }

    /// The type of `stream` while its actor is asked to stop.
    pub(super) fn passivating_type(&self, stream: StreamId) -> Option<&'static str> {
        self.passivating.get(&stream).map(|p| p.opened.stream_type)
    }

    /// Queues `waiter` until some actor has answered whether it stopped.
    pub(super) fn wait_for_room(&mut self, waiter: oneshot::Sender<()>) {
        self.room_waiters.push(waiter);
    }

    /// Notes that `stream` has events queued for an actor that is not alive yet.
    pub(super) fn await_actor(&mut self, stream: StreamId, stream_type: &'static str) {
        let waiting = self.outboxes.has_queued(stream);
        if !self.streams.contains_key(&stream) && !waiting {
            self.awaiting.push_back((stream, stream_type));
        }
    }

    /// True when one more actor may start: fewer than `live_max` are alive (stopping ones
    /// included). Otherwise asks the least recently used ones to stop, and answers false
    /// while any is stopping. When every actor is busy and none can stop, the site serves
    /// over the bound (logged) rather than stop serving.
    pub(super) fn room_for_one(&mut self, ctx: &mut Context<Self>) -> bool {
        if self.streams.len() + self.passivating.len() < self.passivation.live_max {
            return true;
        }
        self.make_room(ctx);
        if !self.passivating.is_empty() {
            return false;
        }
        tracing::warn!(
            live = self.streams.len(),
            live_max = self.passivation.live_max,
            "every live stream actor is busy: starting one more than the bound"
        );
        true
    }

    /// Asks least recently used actors to stop until a sixteenth of `live_max` is free
    /// (so that the next actors to start need not wait for answers one by one). Looks at a
    /// bounded number per call: a busy one goes to the back. The order is the router's
    /// view of use, close enough for making room; idle passivation looks closer.
    fn make_room(&mut self, ctx: &mut Context<Self>) {
        let target = self.passivation.live_max - (self.passivation.live_max / 16).max(1).min(self.passivation.live_max);
        for _ in 0..limits::PASSIVATION_LOOKS_MAX {
            if self.streams.len() <= target {
                break;
            }
            let Some(&(used_ms, stream)) = self.lru.first() else { break };
            if !self.try_passivate(stream, used_ms, ctx) {
                self.touch(stream);
            }
        }
    }

    /// Stops actors unused for `idle_after`, oldest first, a bounded number per call.
    pub(super) fn passivate_idle(&mut self, ctx: &mut Context<Self>) {
        let Some(idle_after) = self.passivation.idle_after else { return };
        let idle_ms = u64::try_from(idle_after.as_millis()).unwrap_or(u64::MAX);
        let cutoff = clock_ms().saturating_sub(idle_ms);
        for _ in 0..limits::PASSIVATION_LOOKS_MAX {
            let Some(&(used_ms, stream)) = self.lru.first() else { break };
            if used_ms >= cutoff {
                break; // everything after it was used more recently still
            }
            // The application used it since the router last did: not idle, only out of place.
            let used_since = self.streams.get(&stream).is_some_and(|o| o.gate.used_ms() >= cutoff);
            if used_since || !self.try_passivate(stream, used_ms, ctx) {
                self.touch(stream);
            }
        }
    }

    /// Asks `stream`'s actor to stop if nothing is on its way to it: no event queued or
    /// in flight from the router, no message of the application inside its gate. True
    /// when asked.
    fn try_passivate(&mut self, stream: StreamId, used_ms: u64, ctx: &mut Context<Self>) -> bool {
        let Some(opened) = self.streams.get(&stream) else { return false };
        let outbox_idle = self.outboxes.is_idle(stream);
        if !outbox_idle || !opened.gate.close_if_idle() {
            return false;
        }
        let Some(opened) = self.streams.remove(&stream) else { return false };
        self.lru.remove(&(used_ms, stream));
        let ask = opened.passivate.send(Passivate);
        self.passivating.insert(stream, Passivating { opened });
        self.then(ctx, ask, move |stopped, router, ctx| {
            // A mailbox error means the actor is gone already: stopped all the same.
            router.passivated(stream, stopped.unwrap_or(true), ctx);
        });
        true
    }

    /// `stream`'s actor answered [`Passivate`]: room for another, or it stays.
    fn passivated(&mut self, stream: StreamId, stopped: bool, ctx: &mut Context<Self>) {
        let Some(Passivating { opened }) = self.passivating.remove(&stream) else { return };
        if stopped {
            self.metrics.passivated += 1;
            if self.outboxes.has_queued(stream) {
                // Events arrived meanwhile: the stream's next actor takes them.
                self.awaiting.push_back((stream, opened.stream_type));
            }
        } else {
            opened.gate.reopen();
            self.streams.insert(stream, opened);
            self.touch(stream);
        }
        self.note_live();
        self.open_awaiting(ctx);
        for waiter in self.room_waiters.drain(..) {
            let _ = waiter.send(()); // a requester that went away needs no answer
        }
        self.release(ctx);
    }

    /// Opens the actors that events wait for, while there is room.
    fn open_awaiting(&mut self, ctx: &mut Context<Self>) {
        while let Some(&(stream, stream_type)) = self.awaiting.front() {
            match self.open(stream, stream_type, ctx) {
                Ok(Open::Later(_)) => break,
                Ok(Open::Ready(_) | Open::Unregistered) => drop(self.awaiting.pop_front()),
                Err(error) => {
                    self.awaiting.pop_front();
                    tracing::warn!(%stream, %error, "opening a stream failed; its events are fetched again later");
                    let queued = self.outboxes.remove(stream);
                    for event in queued {
                        self.refuse_for_now(event.lane, event.seq);
                    }
                }
            }
        }
    }

    /// Updates the live actor counts.
    pub(super) fn note_live(&mut self) {
        let live = u64::try_from(self.streams.len() + self.passivating.len()).unwrap_or(u64::MAX);
        self.metrics.streams_live = live;
        self.metrics.streams_live_max = self.metrics.streams_live_max.max(live);
    }
}
