//! The router's messages and their handlers.

use super::{opener, Equivocation, HeldBack, Open, Opener, Router, RouterError, RouterMetrics, Waiter};
use crate::attest::Attestation;
use crate::clock::VectorClock;
use crate::error::Cause;
use crate::event::Event;
use crate::id::{Lane, Seq, StreamId};
use crate::limits;
use crate::storage::{Storage, StorageError};
use crate::stream::{Durable, Emit, Emitted, Entry, StreamActor, StreamError};
use crate::view::Stream;
use actix::prelude::*;
use std::marker::PhantomData;
use std::sync::Arc;
use tokio::sync::oneshot;

/// Registers a stream type, so that events of it are folded into views.
pub struct Register {
    stream_type: &'static str,
    opener: Opener,
}

impl Register {
    /// Registers `S`.
    pub fn of<S: Stream>() -> Self {
        Self { stream_type: S::TYPE_NAME, opener: opener::<S>() }
    }
}

impl Message for Register {
    type Result = ();
}

impl Handler<Register> for Router {
    type Result = ();

    fn handle(&mut self, msg: Register, _ctx: &mut Context<Self>) {
        // Streams of this type stored while it was unknown are folded when next used: their
        // actors open on demand like any other's.
        self.registry.entry(msg.stream_type).or_insert(msg.opener);
    }
}

/// Asks for the actor of a stream of type `S`, started on first use.
pub struct OpenStream<S: Stream>(pub StreamId, PhantomData<fn() -> S>);

impl<S: Stream> OpenStream<S> {
    /// The request for `stream`.
    pub fn new(stream: StreamId) -> Self {
        Self(stream, PhantomData)
    }
}

/// A stream actor's address with one message let in through its gate: the actor cannot
/// passivate before the requester has sent that message (or dropped the entry).
pub type LiveStream<S> = (Addr<StreamActor<S>>, Entry);

impl<S: Stream> Message for OpenStream<S> {
    type Result = Result<LiveStream<S>, RouterError>;
}

impl<S: Stream> Handler<OpenStream<S>> for Router {
    type Result = ResponseFuture<Result<LiveStream<S>, RouterError>>;

    fn handle(&mut self, OpenStream(stream, _): OpenStream<S>, ctx: &mut Context<Self>) -> Self::Result {
        self.registry.entry(S::TYPE_NAME).or_insert_with(opener::<S>);
        let (waiter, ready) = oneshot::channel();
        if self.relaying.contains_key(&stream) && !self.streams.contains_key(&stream) {
            // Open once the events stored for it unfolded are durable, so that it loads them.
            self.open_waiters.entry(stream).or_default().push(waiter);
        } else {
            match self.open(stream, S::TYPE_NAME, ctx) {
                Ok(Open::Ready(_)) => {
                    let live = self.live::<S>(stream);
                    return Box::pin(async move { live });
                }
                // Its actor is stopping, or another must stop first: ask again after.
                Ok(Open::Later(_)) => self.wait_for_room(waiter),
                Ok(Open::Unregistered) => unreachable!("the type was registered above and the stream is not relaying"),
                Err(source) => return Box::pin(async move { Err(RouterError::Stream { stream, source }) }),
            }
        }
        let router = ctx.address();
        Box::pin(async move {
            let _ = ready.await;
            router.send(OpenStream::<S>::new(stream)).await.map_err(|_| RouterError::Closed)?
        })
    }
}

/// A handle's first write to a stream that held no event when the handle was made. The
/// router stores it itself, starting no actor, when the stream still holds none here and
/// none is on its way; otherwise it gives the write back (`Err`), for the stream's actor.
pub(crate) struct WriteNew<S: Stream>(pub StreamId, pub Emit<S>);

impl<S: Stream> Message for WriteNew<S> {
    type Result = Result<Result<Emitted, StreamError>, Emit<S>>;
}

impl<S: Stream> Handler<WriteNew<S>> for Router {
    type Result = ResponseFuture<Result<Result<Emitted, StreamError>, Emit<S>>>;

    fn handle(&mut self, WriteNew(stream, emit): WriteNew<S>, ctx: &mut Context<Self>) -> Self::Result {
        self.registry.entry(S::TYPE_NAME).or_insert_with(opener::<S>);
        // A failed read goes to the actor too, which reports it.
        if !matches!(self.holds_nothing_of(stream), Ok(true)) {
            return Box::pin(async move { Err(emit) });
        }
        let written = self.write_first(stream, &emit, ctx);
        Box::pin(async move {
            Ok(match written {
                Ok(answered) => answered.await.unwrap_or(Err(StreamError::Storage(StorageError::Closed))),
                Err(error) => Err(error),
            })
        })
    }
}

impl Router {
    /// The live actor of `stream` as type `S`, with one message let in through its gate.
    fn live<S: Stream>(&self, stream: StreamId) -> Result<LiveStream<S>, RouterError> {
        let Some(opened) = self.streams.get(&stream) else { return Err(RouterError::Closed) };
        // The gates of live actors are open: passivation closes a gate and takes its actor
        // out of `streams` in one step, and opens it again before putting one back.
        let Some(entry) = opened.gate.entry() else { return Err(RouterError::Closed) };
        match opened.typed.downcast_ref::<Addr<StreamActor<S>>>() {
            Some(addr) => Ok((addr.clone(), entry)),
            None => Err(RouterError::TypeMismatch {
                stream,
                stored: opened.stream_type.to_owned(),
                requested: S::TYPE_NAME,
            }),
        }
    }
}

/// Events from another site (a sink node's delivery), with the attestations that cover
/// them. Answered once the router's backlog (events held, or queued for their streams) is
/// back within its bound: a sink that waits for the answer before reading its next frame
/// passes the backpressure to the peer.
pub struct Receive {
    /// The events.
    pub events: Vec<Event>,
    /// Their sites' attestations.
    pub attestations: Vec<Attestation>,
    /// Which ids and attestations the sender checked already, off the router's thread (a
    /// sink node does, after keeping only the attestations the events name): the router
    /// then only checks the rest.
    pub(crate) verified: Option<Verified>,
}

/// A frame's events and attestations checked before they reach the router
/// ([`Receive::verified`]).
#[derive(Default)]
pub(crate) struct Verified {
    /// Whether each attestation's signature verified, in order.
    pub valid: Vec<bool>,
    /// Whether each event's id is its content's ([`Event::content_id`]), in order.
    pub ids: Vec<bool>,
    /// Nanoseconds the signature checks took.
    pub spent_ns: u64,
}

impl Verified {
    /// Checks `events`' ids and verifies `attestations` on the calling thread: a sink
    /// node runs this on a blocking thread, so the router's thread pays for neither the
    /// hashes nor the signatures.
    pub fn of(events: &[Event], attestations: &[Attestation]) -> Self {
        let ids = events.iter().map(|event| event.id == event.content_id()).collect();
        let started = std::time::Instant::now();
        let valid = attestations.iter().map(|attestation| attestation.verify().is_ok()).collect();
        Self { valid, ids, spent_ns: u64::try_from(started.elapsed().as_nanos()).unwrap_or(u64::MAX) }
    }
}

impl Message for Receive {
    type Result = ();
}

impl Handler<Receive> for Router {
    type Result = ResponseFuture<()>;

    fn handle(
        &mut self,
        Receive { events, mut attestations, verified }: Receive,
        ctx: &mut Context<Self>,
    ) -> Self::Result {
        self.metrics.batches_received += 1;
        // A sink node filtered the attestations as it verified them.
        let Verified { valid, ids, spent_ns } = verified.unwrap_or_else(|| {
            super::retain_named(&events, &mut attestations);
            Verified::default()
        });
        self.check_attestations(attestations, &valid, spent_ns);
        for (index, event) in events.into_iter().enumerate() {
            self.receive(event, ids.get(index).copied());
            // Delivered one by one, so that the next event of a lane finds its predecessor
            // delivered, rather than waiting in the buffer for the end of the batch.
            self.deliver_ready(ctx);
        }
        self.release(ctx);
        if self.backlog() <= self.backlog_max {
            return Box::pin(async {});
        }
        let (waiter, room) = oneshot::channel();
        self.receive_waiters.push(waiter);
        Box::pin(async move {
            let _ = room.await;
        })
    }
}

/// A stream made its lanes durable up to these seqs (its local writes included).
impl Handler<Durable> for Router {
    type Result = ();

    fn handle(&mut self, Durable { lanes, written_here }: Durable, ctx: &mut Context<Self>) {
        self.metrics.emitted += written_here;
        for (lane, seq) in lanes.iter() {
            self.pending.observe(lane, seq);
        }
        self.advanced = true;
        self.release(ctx);
    }
}

/// Asks for the site's frontier: everything stored here, every stream's lanes together,
/// read from storage off the router's thread (O(lanes): a tool for tests, inspection and
/// small sites, not for a replication round). Lanes with deliveries in flight count as far
/// as they are durable; local writes count once written, a moment before they are durable.
pub struct GetFrontier;

impl Message for GetFrontier {
    type Result = Result<VectorClock, StorageError>;
}

impl Handler<GetFrontier> for Router {
    type Result = ResponseFuture<Result<VectorClock, StorageError>>;

    fn handle(&mut self, _msg: GetFrontier, _ctx: &mut Context<Self>) -> Self::Result {
        let in_flight: Vec<(Lane, Seq)> = self.pending.in_flight().collect();
        let storage = Arc::clone(&self.storage);
        Box::pin(async move {
            let read = tokio::task::spawn_blocking(move || stored_frontier(storage.as_ref())).await;
            let interrupted = |e| StorageError::Interrupted { what: "reading the frontier", cause: Cause::new(e) };
            let mut frontier = read.map_err(interrupted)??;
            for (lane, durable) in in_flight {
                frontier.set(lane, frontier.get(lane).min(durable));
            }
            Ok(frontier)
        })
    }
}

/// Every stream's lanes as storage holds them, a page of streams at a time.
fn stored_frontier(storage: &dyn Storage) -> Result<VectorClock, StorageError> {
    let mut frontier = VectorClock::new();
    let mut after = None;
    loop {
        let page = storage.streams_page(after, limits::FRONTIER_PAGE_STREAMS)?;
        for (stream, _) in &page {
            frontier.merge(&storage.frontier(*stream)?);
        }
        match page.last() {
            Some((last, _)) if page.len() == limits::FRONTIER_PAGE_STREAMS => after = Some(*last),
            _ => return Ok(frontier),
        }
    }
}

/// Resolves once everything in the clock is durable at this site (or refused for good
/// here: a poisoned lane is never waited for): for example the frontier of another site,
/// to read one's writes there, or the events of a frame a sink node received.
pub struct WaitFor(pub VectorClock);

impl Message for WaitFor {
    type Result = Result<(), RouterError>;
}

impl Handler<WaitFor> for Router {
    type Result = ResponseFuture<Result<(), RouterError>>;

    fn handle(&mut self, WaitFor(target): WaitFor, _ctx: &mut Context<Self>) -> Self::Result {
        let (waiter, done) = oneshot::channel();
        self.waiters.push(Waiter { lanes: target.iter().collect(), covered: 0, done: Some(waiter) });
        self.wake_waiters();
        // A dropped waiter means the router stopped before the clock was durable.
        Box::pin(async move { done.await.map_err(|_| RouterError::Closed) })
    }
}

/// Told to listeners when the site's durable frontier has moved.
#[derive(Debug, Clone, Copy)]
pub struct FrontierAdvanced {
    /// A stream refused an event: tell peers our frontier again so they resend it.
    pub hello: bool,
}

impl Message for FrontierAdvanced {
    type Result = ();
}

/// Adds a listener for [`FrontierAdvanced`] (a source node).
pub struct Listen(pub Recipient<FrontierAdvanced>);

impl Message for Listen {
    type Result = ();
}

impl Handler<Listen> for Router {
    type Result = ();

    fn handle(&mut self, Listen(listener): Listen, _ctx: &mut Context<Self>) {
        self.listeners.push(listener);
    }
}

/// A source node sent a batch of events to its peer (counted in the site's metrics).
pub struct BatchSent;

impl Message for BatchSent {
    type Result = ();
}

impl Handler<BatchSent> for Router {
    type Result = ();

    fn handle(&mut self, _msg: BatchSent, _ctx: &mut Context<Self>) {
        self.metrics.batches_sent += 1;
    }
}

/// Asks for the latest events the router held back (at most [`crate::limits::JOURNAL_MAX`]).
pub struct GetHeldBack;

impl Message for GetHeldBack {
    type Result = Vec<HeldBack>;
}

impl Handler<GetHeldBack> for Router {
    type Result = MessageResult<GetHeldBack>;

    fn handle(&mut self, _msg: GetHeldBack, _ctx: &mut Context<Self>) -> Self::Result {
        MessageResult(self.journal.iter().copied().collect())
    }
}

/// Asks for the proofs of equivocation found: the first against each site (at most
/// [`crate::limits::JOURNAL_MAX`] of them), each with the event kept, the event refused
/// and the attestations that cover them.
pub struct GetEquivocations;

impl Message for GetEquivocations {
    type Result = Vec<Equivocation>;
}

impl Handler<GetEquivocations> for Router {
    type Result = MessageResult<GetEquivocations>;

    fn handle(&mut self, _msg: GetEquivocations, _ctx: &mut Context<Self>) -> Self::Result {
        MessageResult(self.equivocations.proofs().to_vec())
    }
}

/// Asks for the router's counters.
pub struct GetMetrics;

impl Message for GetMetrics {
    type Result = RouterMetrics;
}

impl Handler<GetMetrics> for Router {
    type Result = MessageResult<GetMetrics>;

    fn handle(&mut self, _msg: GetMetrics, _ctx: &mut Context<Self>) -> Self::Result {
        MessageResult(self.metrics)
    }
}
