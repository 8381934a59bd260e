//! [`Passivate`]: the site's router asks an idle stream actor to stop, so that memory does
//! not grow with the number of streams ever used. The actor comes back on its next message
//! from its snapshot and the tail of its log (see [`crate::StreamHandle`]).

use super::StreamActor;
use crate::view::Stream;
use actix::prelude::*;

/// Stops the actor if nothing it holds would be lost: no write waiting to be durable, no
/// reply or subscriber waiting, nothing durable its watcher has not been told. Answers
/// whether it stopped. The router sends it only after closing the actor's
/// [`super::Gate`], so no other message can follow it into the mailbox.
#[derive(Debug, Clone, Copy)]
pub struct Passivate;

impl Message for Passivate {
    type Result = bool;
}

impl<S: Stream> Handler<Passivate> for StreamActor<S> {
    type Result = bool;

    fn handle(&mut self, _msg: Passivate, ctx: &mut Context<Self>) -> bool {
        if !self.is_idle() {
            return false;
        }
        // Released now rather than when the actor is dropped, so the next actor of this
        // stream can claim it as soon as the router hears back.
        self.storage.release_stream(self.stream);
        self.released = true;
        ctx.stop();
        true
    }
}

impl<S: Stream> StreamActor<S> {
    /// Nothing in memory that is not on disk or already told to whom it concerns.
    fn is_idle(&self) -> bool {
        self.inflight.is_empty()
            && self.durable == self.appended
            && self.waiters.is_empty()
            && self.subscribers.is_empty()
            && !self.pump_scheduled
            && self.watch.is_told_everything()
    }
}
