//! The messages a [`StreamActor`] answers, and its handlers. Requests are imperatives
//! (`Emit`, `Decide`, `Deliver`); replies say what happened.

use super::{encode_payload, StreamActor, StreamError};
use crate::clock::VectorClock;
use crate::event::{Dependencies, Event, OrderKey};
use crate::id::{EventId, Seq};
use crate::limits;
use crate::stream::Check;
use crate::view::Stream;
use actix::prelude::*;
use std::marker::PhantomData;
use std::ops::Bound;
use tokio::sync::mpsc;

/// A local write. Replies once the event is durable.
pub struct Emit<S: Stream> {
    /// The application's event.
    pub event: S::Event,
    /// What the event depends on besides its own stream.
    pub dependencies: Dependencies,
}

impl<S: Stream> Emit<S> {
    /// A write of `event` depending on everything its stream has delivered.
    pub fn new(event: S::Event) -> Self {
        Self { event, dependencies: Dependencies::none() }
    }

    /// Adds dependencies on other streams, for example from another stream's [`Emitted`].
    pub fn depending_on(mut self, dependencies: &Dependencies) -> Self {
        self.dependencies.merge(dependencies);
        self
    }
}

impl<S: Stream> Message for Emit<S> {
    type Result = Result<Emitted, StreamError>;
}

/// A durable local write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Emitted {
    /// The new event's id.
    pub id: EventId,
    /// Its seq in this site's lane.
    pub seq: Seq,
    /// Its clock: its lane at its seq and what it depends on beyond its lane's previous
    /// event (see [`Event::clock`]). Naming it names the event and its whole past.
    pub clock: VectorClock,
    /// Its Lamport counter.
    pub lamport: u64,
}

impl Emitted {
    /// What a later write that depends on this one must name.
    pub fn dependencies(&self) -> Dependencies {
        Dependencies { clock: self.clock.clone(), lamport: self.lamport }
    }

    pub(crate) fn of(event: &Event) -> Self {
        Self { id: event.id, seq: event.seq, clock: event.clock.clone(), lamport: event.lamport }
    }
}

type Decision<S, E> = Box<dyn FnOnce(&<S as Stream>::View) -> Result<Vec<<S as Stream>::Event>, E> + Send>;

/// Reads the current view and writes the events a closure returns, with no other message
/// in between; replies once they are durable. This is how business rules hold: an event is
/// only written if it is valid against the state its writer could see.
pub struct Decide<S: Stream, E> {
    decide: Decision<S, E>,
    dependencies: Dependencies,
}

impl<S: Stream, E> Decide<S, E> {
    /// A decision: `decide` returns the events to write, or the reason not to.
    pub fn new(decide: impl FnOnce(&S::View) -> Result<Vec<S::Event>, E> + Send + 'static) -> Self {
        Self { decide: Box::new(decide), dependencies: Dependencies::none() }
    }

    /// Adds dependencies on other streams to every event written.
    pub fn depending_on(mut self, dependencies: &Dependencies) -> Self {
        self.dependencies.merge(dependencies);
        self
    }
}

/// Why a [`Decide`] wrote nothing (or, for a storage error, an unknown part).
#[derive(Debug, thiserror::Error)]
pub enum DecideError<E> {
    /// The closure said no.
    #[error("decision rejected: {0}")]
    Rejected(E),
    /// The stream refused the write.
    #[error(transparent)]
    Stream(#[from] StreamError),
}

impl<S: Stream, E: 'static> Message for Decide<S, E> {
    type Result = Result<Vec<Emitted>, DecideError<E>>;
}

/// Reads the view, once every write it reflects is durable.
pub struct GetView<S: Stream>(PhantomData<fn() -> S>);

impl<S: Stream> GetView<S> {
    /// The request.
    pub fn new() -> Self {
        Self(PhantomData)
    }
}

impl<S: Stream> Default for GetView<S> {
    fn default() -> Self {
        Self::new()
    }
}

impl<S: Stream> Message for GetView<S> {
    type Result = Result<ViewReply<S::View>, StreamError>;
}

/// A view and the position it reflects.
#[derive(Debug, Clone)]
pub struct ViewReply<V> {
    /// The view.
    pub view: V,
    /// The stream's frontier: every lane's delivered seq.
    pub frontier: VectorClock,
    /// The stream's heads: delivered events that, with everything they depend on, are the
    /// whole frontier. Usually one event, however many sites wrote the stream.
    pub heads: VectorClock,
    /// The largest Lamport counter delivered.
    pub lamport: u64,
    /// Events of the stream the view skipped because their payload does not decode into
    /// this site's event type (see [`Delivered::Unfolded`]).
    pub unfolded: u64,
}

impl<V> ViewReply<V> {
    /// What a write that depends on this view must name: the heads, which imply the rest.
    pub fn dependencies(&self) -> Dependencies {
        Dependencies { clock: self.heads.clone(), lamport: self.lamport }
    }
}

/// Reads the log back (unflattening): events in canonical order after a cursor.
#[derive(Debug, Clone, Copy, Default)]
pub struct History {
    /// Start after this event's key; from the beginning when `None`.
    pub after: Option<OrderKey>,
    /// Events at most (at least 1, capped at [`limits::HISTORY_LIMIT_MAX`]).
    pub limit: u32,
}

impl Message for History {
    type Result = Result<HistoryPage, StreamError>;
}

/// One page of a stream's history: durable events in canonical order.
#[derive(Debug, Clone, Default)]
pub struct HistoryPage {
    /// Events in canonical order, all durable.
    pub events: Vec<Event>,
    /// True when more events may follow: the page is full, or it stopped before a write
    /// still in flight. Ask again from [`HistoryPage::next_after`].
    pub more: bool,
}

impl HistoryPage {
    /// The `after` cursor for the next page, given the one this page was asked with.
    pub fn next_after(&self, after: Option<OrderKey>) -> Option<OrderKey> {
        self.events.last().map(Event::order_key).or(after)
    }
}

/// Sends the subscriber every event it lacks (catch-up), then each new event once durable
/// (live), in an order that respects causality, through a bounded channel. A full channel
/// pauses the subscription until there is room; a closed one ends it.
pub struct Subscribe {
    /// What the subscriber already has: nothing for the whole stream.
    pub seen: VectorClock,
    /// Where events go.
    pub sender: mpsc::Sender<Event>,
}

impl Message for Subscribe {
    type Result = Result<(), StreamError>;
}

/// A remote event whose dependencies are already delivered at this site. Replies once it
/// is durable.
#[derive(Debug, Clone)]
pub struct Deliver(pub Event);

impl Message for Deliver {
    type Result = Result<Delivered, StreamError>;
}

/// Remote events of this stream, in an order that respects causality, each with its
/// dependencies delivered: what the router sends. Replies once they are durable, with what
/// happened to each, in order.
#[derive(Debug, Clone)]
pub struct DeliverBatch(pub Vec<Event>);

impl Message for DeliverBatch {
    type Result = Vec<Result<Delivered, StreamError>>;
}

/// A [`DeliverBatch`] from the router, which matched each event's id against its content
/// before holding it: the stream does not hash them again.
pub(crate) struct DeliverIdsMatched(pub Vec<Event>);

impl Message for DeliverIdsMatched {
    type Result = Vec<Result<Delivered, StreamError>>;
}

/// What a [`Deliver`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivered {
    /// Stored and folded into the view.
    Applied,
    /// Stored (and relayed), but its payload does not decode into this site's event type
    /// (a newer version of the application wrote it, or a broken writer): the view skipped
    /// it and counts it in [`ViewReply::unfolded`]. A build whose type decodes it folds it.
    Unfolded,
    /// A copy of an event already delivered: nothing changed.
    Duplicate,
}

impl<S: Stream> Handler<Emit<S>> for StreamActor<S> {
    type Result = ResponseActFuture<Self, Result<Emitted, StreamError>>;

    fn handle(&mut self, msg: Emit<S>, ctx: &mut Context<Self>) -> Self::Result {
        let written = encode_payload(&msg.event).and_then(|payload| {
            self.write_local(std::slice::from_ref(&msg.event), vec![payload], &msg.dependencies, ctx)
        });
        match written {
            Ok(events) => self.when_durable(Emitted::of(&events[0])),
            Err(error) => Box::pin(fut::ready(Err(error))),
        }
    }
}

impl<S: Stream, E: 'static> Handler<Decide<S, E>> for StreamActor<S> {
    type Result = ResponseActFuture<Self, Result<Vec<Emitted>, DecideError<E>>>;

    fn handle(&mut self, msg: Decide<S, E>, ctx: &mut Context<Self>) -> Self::Result {
        if let Err(error) = self.refusal() {
            return Box::pin(fut::ready(Err(error.into())));
        }
        let events = match (msg.decide)(self.ledger.view()) {
            Ok(events) => events,
            // The view it saw may hold writes in flight: answer once they are durable, so
            // nobody acts on a state a crash could take back.
            Err(reason) => {
                return Box::pin(self.durable().map(|result, _, _| match result {
                    Ok(()) => Err(DecideError::Rejected(reason)),
                    Err(error) => Err(DecideError::Stream(error)),
                }))
            }
        };
        if events.len() > limits::DECIDE_EVENTS_MAX {
            let error = StreamError::TooManyEvents { count: events.len(), max: limits::DECIDE_EVENTS_MAX };
            return Box::pin(fut::ready(Err(error.into())));
        }
        // All or nothing: every payload is encoded and every event stamped before one
        // atomic append.
        let written = events
            .iter()
            .map(encode_payload)
            .collect::<Result<Vec<_>, _>>()
            .and_then(|payloads| self.write_local(&events, payloads, &msg.dependencies, ctx));
        match written {
            Ok(written) => {
                let emitted = written.iter().map(Emitted::of).collect();
                Box::pin(self.when_durable(emitted).map(|result, _, _| result.map_err(DecideError::from)))
            }
            Err(error) => Box::pin(fut::ready(Err(error.into()))),
        }
    }
}

impl<S: Stream> Handler<GetView<S>> for StreamActor<S> {
    type Result = ResponseActFuture<Self, Result<ViewReply<S::View>, StreamError>>;

    fn handle(&mut self, _msg: GetView<S>, _ctx: &mut Context<Self>) -> Self::Result {
        // First: a stream that failed is rebuilt here, before its view is read.
        if let Err(error) = self.refusal() {
            return Box::pin(fut::ready(Err(error)));
        }
        let reply = ViewReply {
            view: self.ledger.view().clone(),
            frontier: self.ledger.frontier().clone(),
            heads: self.ledger.heads().clone(),
            lamport: self.ledger.lamport(),
            unfolded: self.ledger.unfolded().count,
        };
        self.when_durable(reply)
    }
}

impl<S: Stream> Handler<History> for StreamActor<S> {
    type Result = ResponseActFuture<Self, Result<HistoryPage, StreamError>>;

    fn handle(&mut self, msg: History, _ctx: &mut Context<Self>) -> Self::Result {
        let limit = msg.limit.clamp(1, limits::HISTORY_LIMIT_MAX) as usize;
        // Read once every write made before the request is durable, so the page holds them.
        Box::pin(self.durable().map(move |result, actor, _| {
            result?;
            actor.durable_history(msg.after, limit)
        }))
    }
}

impl<S: Stream> StreamActor<S> {
    /// Up to `limit` events after `after`, stopping before the first event in flight.
    fn durable_history(&self, after: Option<OrderKey>, limit: usize) -> Result<HistoryPage, StreamError> {
        let from = after.map_or(Bound::Unbounded, Bound::Excluded);
        // Nothing at or after the first write in flight: everything before it is durable.
        let barrier = self.inflight.keys().next().copied();
        let events = self.storage.events_from(self.stream, from, barrier, limit)?;
        let more = events.len() == limit || barrier.is_some();
        Ok(HistoryPage { events, more })
    }
}

impl<S: Stream> Handler<Subscribe> for StreamActor<S> {
    type Result = Result<(), StreamError>;

    fn handle(&mut self, msg: Subscribe, ctx: &mut Context<Self>) -> Self::Result {
        self.refusal()?;
        if self.subscribers.len() >= limits::SUBSCRIBERS_MAX {
            return Err(StreamError::TooManySubscribers { max: limits::SUBSCRIBERS_MAX });
        }
        self.subscribe(msg.seen, msg.sender, ctx);
        Ok(())
    }
}

impl<S: Stream> StreamActor<S> {
    /// Checks remote `events` one by one, each seeing those before it (`ids_matched` when
    /// their ids were matched against their content already), and commits the new ones as
    /// one append, folded with at most one rollback however many of them are late. One
    /// outcome per event, in order; durability is the caller's to wait for.
    fn deliver(
        &mut self,
        events: Vec<Event>,
        ids_matched: bool,
        ctx: &mut Context<Self>,
    ) -> Vec<Result<Delivered, StreamError>> {
        if let Err(error) = self.refusal() {
            return vec![Err(error); events.len()];
        }
        let mark = self.ledger.mark(&events);
        let mut outcomes = Vec::with_capacity(events.len());
        // The events to write, their payloads, and where their outcomes are.
        let (mut new, mut payloads, mut at) = (Vec::new(), Vec::new(), Vec::new());
        for event in events {
            let key_at = |lane, seq| self.key_at(lane, seq);
            let check = if ids_matched {
                self.ledger.check_id_matched(&event, key_at)
            } else {
                self.ledger.check(&event, key_at)
            };
            outcomes.push(match check {
                Ok(Check::New(payload)) => {
                    self.note(&event);
                    let folded = if payload.is_some() { Delivered::Applied } else { Delivered::Unfolded };
                    new.push(event);
                    payloads.push(payload);
                    at.push(outcomes.len());
                    Ok(folded)
                }
                Ok(Check::Duplicate) => Ok(Delivered::Duplicate),
                Err(error) => Err(error),
            });
        }
        if let Err(error) = self.commit(&new, payloads.iter().map(Option::as_ref), mark, ctx) {
            // Nothing of the batch was stored. Only the event whose fold failed is refused
            // as such; the others were interrupted by it, and are sent again.
            let culprit = match &error {
                StreamError::ApplyPanicked { event, .. } => Some(*event),
                _ => None,
            };
            for (&index, event) in at.iter().zip(&new) {
                outcomes[index] = Err(match culprit {
                    Some(culprit) if culprit != event.id => StreamError::Interrupted { culprit },
                    _ => error.clone(),
                });
            }
        }
        outcomes
    }
}

impl<S: Stream> Handler<Deliver> for StreamActor<S> {
    type Result = ResponseActFuture<Self, Result<Delivered, StreamError>>;

    fn handle(&mut self, Deliver(event): Deliver, ctx: &mut Context<Self>) -> Self::Result {
        let outcome = self.deliver(vec![event], false, ctx).pop().expect("one outcome per event");
        // Even a refusal may concern an event in flight (the original of a copy, the one
        // kept against an equivocation): answer once what was written is durable. Bad
        // input that touched nothing is answered at once.
        match outcome {
            Ok(_) | Err(StreamError::Equivocation { .. }) => {
                Box::pin(self.durable().map(move |durable, _, _| durable.and(outcome)))
            }
            Err(error) => Box::pin(fut::ready(Err(error))),
        }
    }
}

impl<S: Stream> Handler<DeliverBatch> for StreamActor<S> {
    type Result = ResponseActFuture<Self, Vec<Result<Delivered, StreamError>>>;

    fn handle(&mut self, DeliverBatch(events): DeliverBatch, ctx: &mut Context<Self>) -> Self::Result {
        self.deliver_batch(events, false, ctx)
    }
}

impl<S: Stream> Handler<DeliverIdsMatched> for StreamActor<S> {
    type Result = ResponseActFuture<Self, Vec<Result<Delivered, StreamError>>>;

    fn handle(&mut self, DeliverIdsMatched(events): DeliverIdsMatched, ctx: &mut Context<Self>) -> Self::Result {
        self.deliver_batch(events, true, ctx)
    }
}

impl<S: Stream> StreamActor<S> {
    /// Delivers `events` ([`StreamActor::deliver`]) and answers with each outcome once they are durable.
    fn deliver_batch(
        &mut self,
        events: Vec<Event>,
        ids_matched: bool,
        ctx: &mut Context<Self>,
    ) -> ResponseActFuture<Self, Vec<Result<Delivered, StreamError>>> {
        let outcomes = self.deliver(events, ids_matched, ctx);
        Box::pin(self.durable().map(move |durable, _, _| match durable {
            Ok(()) => outcomes,
            Err(error) => outcomes.into_iter().map(|_| Err(error.clone())).collect(),
        }))
    }
}
