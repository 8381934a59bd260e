//! Subscriptions: sending each subscriber what it lacks, in canonical order, then each
//! new event once it is durable, through the subscriber's own bounded channel.
//!
//! One rule keeps this honest: nothing at or after the first event in flight (in
//! canonical order) is sent, since everything before it is durable and stored. A late
//! event moves a subscriber's cursor back to it; events the subscriber has (by its
//! `seen` clock) are skipped, so nothing is sent twice.

use super::StreamActor;
use crate::clock::VectorClock;
use crate::event::{Event, OrderKey};
use crate::limits;
use crate::storage::StorageError;
use crate::view::Stream;
use actix::prelude::*;
use std::ops::Bound;
use tokio::sync::mpsc;

/// One subscriber of a stream actor.
pub(super) struct Subscriber {
    pub(super) id: u64,
    pub(super) sender: mpsc::Sender<Event>,
    /// What the subscriber has: everything it was sent plus what it said it had.
    pub(super) seen: VectorClock,
    /// Events before this bound are sent or covered by `seen`.
    pub(super) cursor: Bound<OrderKey>,
    /// A wait for room in its channel is under way.
    pub(super) waiting: bool,
}

/// What one turn of sending to a subscriber ended with.
enum Pumped {
    /// Nothing more to send now.
    Done,
    /// A full page was sent: more may follow in the next turn.
    More,
    /// Its channel is full.
    Full,
    /// Its channel is closed: the subscription ends.
    Closed,
}

/// Asks the actor to run another pump turn (sent to itself).
pub(super) struct Pump;

impl Message for Pump {
    type Result = ();
}

impl<S: Stream> Handler<Pump> for StreamActor<S> {
    type Result = ();

    fn handle(&mut self, _msg: Pump, ctx: &mut Context<Self>) {
        self.pump_scheduled = false;
        self.pump(ctx);
    }
}

impl<S: Stream> StreamActor<S> {
    /// Adds a subscriber and starts sending to it.
    pub(super) fn subscribe(&mut self, seen: VectorClock, sender: mpsc::Sender<Event>, ctx: &mut Context<Self>) {
        self.next_subscriber += 1;
        let id = self.next_subscriber;
        self.subscribers.push(Subscriber { id, sender, seen, cursor: Bound::Unbounded, waiting: false });
        self.schedule_pump(ctx);
    }

    /// Moves cursors past `key` back to it: a late event was written there.
    pub(super) fn rewind_subscribers(&mut self, key: OrderKey) {
        for subscriber in &mut self.subscribers {
            let past = match subscriber.cursor {
                Bound::Excluded(cursor) | Bound::Included(cursor) => key < cursor,
                Bound::Unbounded => false,
            };
            if past {
                subscriber.cursor = Bound::Included(key);
            }
        }
    }

    /// Runs a pump turn soon, once, through the actor's own queue so that one turn's work
    /// stays bounded.
    pub(super) fn schedule_pump(&mut self, ctx: &mut Context<Self>) {
        if !self.pump_scheduled && !self.subscribers.is_empty() {
            self.pump_scheduled = true;
            ctx.notify(Pump);
        }
    }

    /// Sends every subscriber up to one page of what it lacks.
    fn pump(&mut self, ctx: &mut Context<Self>) {
        let barrier = self.inflight.keys().next().copied();
        let mut more = false;
        let mut index = 0;
        while index < self.subscribers.len() {
            match self.pump_one(index, barrier) {
                Ok(Pumped::Done) => index += 1,
                Ok(Pumped::More) => {
                    more = true;
                    index += 1;
                }
                Ok(Pumped::Full) => {
                    self.wait_for_room(index, ctx);
                    index += 1;
                }
                Ok(Pumped::Closed) => {
                    self.subscribers.swap_remove(index);
                }
                // Storage that cannot be read cannot be trusted: refuse everything (which
                // ends every subscription) rather than end one as if normally.
                Err(error) => return self.fail(error.into()),
            }
        }
        if more {
            self.schedule_pump(ctx);
        }
    }

    fn pump_one(&mut self, index: usize, barrier: Option<OrderKey>) -> Result<Pumped, StorageError> {
        let subscriber = &mut self.subscribers[index];
        if subscriber.waiting {
            return Ok(Pumped::Done);
        }
        // Reads no more than the channel has room for, so that nothing is read in vain,
        // and stop at the barrier: the rest follows once that write is durable.
        let room = subscriber.sender.capacity().min(limits::SUBSCRIBE_BATCH_MAX);
        if room == 0 {
            return Ok(Pumped::Full);
        }
        let page = self.storage.events_from(self.stream, subscriber.cursor, barrier, room)?;
        let full = page.len() == room;
        for event in page {
            let (key, lane, seq) = (event.order_key(), event.lane, event.seq);
            if !subscriber.seen.covers(lane, seq) {
                match subscriber.sender.try_send(event) {
                    Ok(()) => subscriber.seen.set(lane, seq),
                    Err(mpsc::error::TrySendError::Full(_)) => return Ok(Pumped::Full),
                    Err(mpsc::error::TrySendError::Closed(_)) => return Ok(Pumped::Closed),
                }
            }
            subscriber.cursor = Bound::Excluded(key);
        }
        Ok(if full { Pumped::More } else { Pumped::Done })
    }

    fn wait_for_room(&mut self, index: usize, ctx: &mut Context<Self>) {
        let subscriber = &mut self.subscribers[index];
        subscriber.waiting = true;
        let (id, sender) = (subscriber.id, subscriber.sender.clone());
        // The permit is dropped at once: it only tells us there is room again.
        let room = async move { sender.reserve_owned().await.is_ok() };
        ctx.spawn(fut::wrap_future::<_, Self>(room).map(move |open, actor, ctx| {
            if open {
                if let Some(subscriber) = actor.subscribers.iter_mut().find(|s| s.id == id) {
                    subscriber.waiting = false;
                }
            } else {
                actor.subscribers.retain(|s| s.id != id);
            }
            actor.schedule_pump(ctx);
        }));
    }
}
