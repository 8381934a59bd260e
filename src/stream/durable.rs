//! Durability notices: after each commit, a stream actor tells its watcher (the site's
//! router) how far each lane is durable, so that the router's durable frontier moves
//! without reading anything back from storage.
//!
//! Appends become durable in queue order and a lane's events are appended in seq order,
//! so "(lane, seq) is durable" vouches for every earlier seq of the lane: a clock says it
//! all. Notices are coalesced, one in flight at a time, so the watcher's mailbox bound
//! holds and nothing is lost: what becomes durable meanwhile goes in the next notice.

use super::StreamActor;
use crate::clock::VectorClock;
use crate::event::Event;
use crate::id::Seq;
use crate::view::Stream;
use actix::prelude::*;

/// Every lane of a stream at a seq now durable.
#[derive(Debug, Clone)]
pub struct Durable {
    /// Each lane at its seq now durable.
    pub lanes: VectorClock,
    /// Local writes made durable since the last notice (the site's own lane).
    pub written_here: u64,
}

impl Message for Durable {
    type Result = ();
}

/// Makes `recipient` the stream's watcher: it gets a [`Durable`] with everything durable
/// now, then one after every commit.
pub struct WatchDurable(pub Recipient<Durable>);

impl Message for WatchDurable {
    type Result = ();
}

/// A stream actor's watcher and what it has not been told yet.
#[derive(Default)]
pub(super) struct Watch {
    recipient: Option<Recipient<Durable>>,
    unreported: VectorClock,
    written_here: u64,
    /// A notice is on its way.
    sending: bool,
}

impl<S: Stream> Handler<WatchDurable> for StreamActor<S> {
    type Result = ();

    fn handle(&mut self, WatchDurable(recipient): WatchDurable, ctx: &mut Context<Self>) {
        // Durable now: everything written, less what is still in flight in each lane.
        let mut durable = self.ledger.frontier().clone();
        for event in self.inflight.values() {
            if event.seq <= durable.get(event.lane) {
                durable.set(event.lane, Seq(event.seq.0.saturating_sub(1)));
            }
        }
        self.watch.recipient = Some(recipient);
        self.watch.unreported.merge(&durable);
        self.report_durable(ctx);
    }
}

impl Watch {
    /// True when everything durable is in a notice sent (or there is no watcher).
    pub(super) fn is_told_everything(&self) -> bool {
        self.unreported.is_empty()
    }
}

impl<S: Stream> StreamActor<S> {
    /// Notes that `event` is durable, for the next notice.
    pub(super) fn note_durable(&mut self, event: &Event) {
        if self.watch.recipient.is_some() && self.watch.unreported.get(event.lane) < event.seq {
            self.watch.unreported.set(event.lane, event.seq);
            if event.lane == self.ledger.own_lane() {
                self.watch.written_here += 1;
            }
        }
    }

    /// Sends what the watcher has not been told, unless a notice is on its way already
    /// (then this goes once it has arrived).
    pub(super) fn report_durable(&mut self, ctx: &mut Context<Self>) {
        if self.watch.sending || self.watch.unreported.is_empty() {
            return;
        }
        let Some(recipient) = self.watch.recipient.clone() else { return };
        let notice = Durable {
            lanes: std::mem::take(&mut self.watch.unreported),
            written_here: std::mem::take(&mut self.watch.written_here),
        };
        self.watch.sending = true;
        ctx.spawn(fut::wrap_future::<_, Self>(recipient.send(notice)).map(|sent, actor, ctx| {
            actor.watch.sending = false;
            if sent.is_err() {
                actor.watch.recipient = None; // the watcher is gone
            } else {
                actor.report_durable(ctx);
            }
        }));
    }
}
