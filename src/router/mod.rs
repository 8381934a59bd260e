//! The router: one per site. It holds incoming events until everything in their clock is
//! delivered here, then hands each to the stream actor of its stream (starting it on first
//! use from the site's registry of stream types). Events of a type the site has not
//! registered are still stored (and so counted in the frontier and forwarded), just not
//! folded into a view. The first event of a stream the site holds none of, received or
//! written here (a handle's first `Emit`), it stores itself too, starting no actor: the stream's first
//! actor, if one is ever needed, loads it from storage.
//!
//! [`Pending`] is its pure core, the causal buffer; the [`Router`] actor is a thin shell
//! that feeds it and routes what it releases.

mod attested;
mod equivocations;
mod lanes;
mod live;
mod messages;
mod outbox;
mod pending;

pub(crate) use self::attested::retain_named;
use self::attested::{Attested, Refused};
use self::equivocations::Equivocations;
use self::outbox::Outboxes;

pub use self::live::Passivation;
use self::live::{Open, Passivating};
pub use self::messages::{
    BatchSent, FrontierAdvanced, GetEquivocations, GetFrontier, GetHeldBack, GetMetrics, Listen, LiveStream,
    OpenStream, Receive, Register, WaitFor,
};
pub(crate) use self::messages::{Verified, WriteNew};
pub use self::pending::{Contested, Insert, Pending, PendingLimits, PendingStats, Stored};
pub use crate::attest::Equivocation;

use crate::attest::Attestation;
use crate::codec;
use crate::event::{Event, OrderKey};
use crate::id::{EventId, Lane, Seq, StreamId};
use crate::limits;
use crate::storage::{Append, Storage, StorageError};
use crate::stream::{
    check_lamport, first_event, DeliverIdsMatched, Delivered, Emit, Emitted, Gate, Passivate, StreamActor,
    StreamConfig, StreamError, WatchDurable,
};
use crate::view::Stream;
use actix::dev::SendError;
use actix::prelude::*;
use std::any::Any;
use std::collections::{BTreeSet, HashMap, HashSet, VecDeque};
use std::sync::Arc;
use tokio::sync::oneshot;

/// Why the router refused a request.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RouterError {
    /// The stream could not be opened.
    #[error("stream {stream}: {source}")]
    Stream {
        /// The stream.
        stream: StreamId,
        /// Why.
        source: StreamError,
    },
    /// The router stopped while the request waited.
    #[error("the router stopped")]
    Closed,
    /// The stream exists with another type than the one asked for.
    #[error("stream {stream} has type {stored:?}, not {requested:?}")]
    TypeMismatch {
        /// The stream.
        stream: StreamId,
        /// Its type.
        stored: String,
        /// The type asked for.
        requested: &'static str,
    },
}

/// Counters of a site's router.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RouterMetrics {
    /// Events written at this site (local writes made durable).
    pub emitted: u64,
    /// Batches of events sent to peers by this site's source nodes.
    pub batches_sent: u64,
    /// Batches of events received from peers.
    pub batches_received: u64,
    /// Events received from other sites (copies included).
    pub received: u64,
    /// Events delivered to a stream (or stored, for unregistered types).
    pub delivered: u64,
    /// Copies of events already held or delivered, dropped.
    pub duplicates: u64,
    /// Events delivered (also in `delivered`) whose payload does not decode into this
    /// site's type for their stream: stored and relayed, skipped by the view.
    pub unfolded: u64,
    /// Different events on one (lane, seq), refused.
    pub equivocations: u64,
    /// Malformed events refused (a clock without its own lane, a counter out of range, a
    /// claim on this site's own lane, an id that is not its content's).
    pub malformed: u64,
    /// Events held now, waiting for a dependency.
    pub pending: u64,
    /// Events held back at some point because a dependency had not arrived yet.
    pub held_back: u64,
    /// Events dropped because the buffer was full (catch-up fetches them again).
    pub dropped_on_overflow: u64,
    /// Events dropped because storage could not say how far a lane they need is stored,
    /// or could not read or store their attestation (logged; catch-up fetches them again).
    pub dropped_unread: u64,
    /// Events refused because they claim this site's own lane (also in `malformed`).
    pub own_lane_claims: u64,
    /// Events refused because their id is not their content's ([`Event::content_id`]):
    /// altered on the way, or forged to collide with another event's order key (also in
    /// `malformed`).
    pub altered: u64,
    /// Events refused because no attestation of their lane's site covers them: a lane
    /// written by a site other than its own, or an event its site never signed (also in
    /// `malformed`).
    pub unattested: u64,
    /// Attestations refused: their signature does not verify, or their site signed
    /// another under the same number (logged with both).
    pub attestations_refused: u64,
    /// Nanoseconds spent verifying attestations' signatures.
    pub verify_ns: u64,
    /// Deliveries a stream refused for now (catch-up fetches them again).
    pub refused: u64,
    /// Stream actors alive now (passivating ones included).
    pub streams_live: u64,
    /// The most stream actors alive at once since the site opened.
    pub streams_live_max: u64,
    /// Stream actors stopped because they were idle or too many were alive.
    pub passivated: u64,
}

/// What the router knows of one registered stream type: how to open an actor of it, and
/// whether a payload decodes into its events (for events stored without an actor).
struct Opener {
    open: Box<OpenFn>,
    decodes: fn(&[u8]) -> bool,
}

/// Opens a stream actor of one registered type.
type OpenFn = dyn Fn(Arc<dyn Storage>, StreamId, StreamConfig) -> Result<Opened, StreamError> + Send;

/// An open stream actor: how to deliver to it, its gate, and its typed address for the site.
struct Opened {
    stream_type: &'static str,
    deliver: Recipient<DeliverIdsMatched>,
    watch: Recipient<WatchDurable>,
    passivate: Recipient<Passivate>,
    gate: Arc<Gate>,
    /// When the router last used it or saw it used: its place in the router's LRU order.
    used_ms: u64,
    typed: Box<dyn Any>,
}

fn opener<S: Stream>() -> Opener {
    let open = Box::new(|storage, stream, config| {
        let addr = StreamActor::<S>::open_with(storage, stream, config)?.start();
        Ok(Opened {
            stream_type: S::TYPE_NAME,
            deliver: addr.clone().recipient(),
            watch: addr.clone().recipient(),
            passivate: addr.clone().recipient(),
            gate: Arc::default(),
            used_ms: 0,
            typed: Box::new(addr),
        })
    });
    Opener { open, decodes: |payload| codec::decode::<S::Event>(payload).is_ok() }
}

/// The router actor of one site.
pub struct Router {
    storage: Arc<dyn Storage>,
    pending: Pending,
    registry: HashMap<&'static str, Opener>,
    streams: HashMap<StreamId, Opened>,
    outboxes: Outboxes,
    stream_config: StreamConfig,
    metrics: RouterMetrics,
    /// Requests waiting for the durable frontier to cover a clock.
    waiters: Vec<Waiter>,
    /// Source nodes to tell when the durable frontier moves.
    listeners: Vec<Recipient<FrontierAdvanced>>,
    /// The durable frontier moved since listeners were last told.
    advanced: bool,
    /// A stream refused an event since listeners were last told: peers must hear our
    /// real frontier again, or they would never resend it.
    rewound: bool,
    /// Appends the router made itself (events of unregistered types, first events of new
    /// streams) not yet durable, per stream. A stream actor may only open on a stream once
    /// they are: it loads what storage holds.
    relaying: HashMap<StreamId, u32>,
    /// The order keys of events stored without an actor, not durable yet: what later events
    /// of their streams depend on and storage may not show yet.
    relayed_keys: HashMap<(Lane, Seq), OrderKey>,
    /// `OpenStream` requests waiting for a stream's relayed appends.
    open_waiters: HashMap<StreamId, Vec<oneshot::Sender<()>>>,
    /// The latest events held back, with the dependency each waited for.
    journal: VecDeque<HeldBack>,
    /// The proofs of equivocation found, and copies streams are judging.
    equivocations: Equivocations,
    /// Lanes on which a stream refused an event for good: nothing after it is retried.
    poisoned: HashSet<Lane>,
    /// Sink nodes whose last `Receive` waits for the backlog to shrink (backpressure).
    receive_waiters: Vec<oneshot::Sender<()>>,
    /// Events held or queued for streams past which `Receive` waits.
    backlog_max: usize,
    /// Live stream actors by when they were last used, oldest first.
    lru: BTreeSet<(u64, StreamId)>,
    /// Stream actors asked to stop, not answered yet.
    passivating: HashMap<StreamId, Passivating>,
    /// Streams with events in their outbox and no actor yet, waiting for room.
    awaiting: VecDeque<(StreamId, &'static str)>,
    /// `OpenStream` requests waiting for room (or for their stream's actor to stop).
    room_waiters: Vec<oneshot::Sender<()>>,
    passivation: Passivation,
    /// The attestations checked lately.
    attested: Attested,
    /// Attestations of the batch being received that verified but could not be stored:
    /// their events are dropped (and fetched again), not refused.
    unstored: HashSet<(crate::id::SiteId, u64)>,
    /// Events dropped because their attestation could not be read or stored (part of
    /// `RouterMetrics::dropped_unread`).
    attestations_unread: u64,
}

/// An event the router held back because a dependency had not arrived.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HeldBack {
    /// The event.
    pub event: crate::id::EventId,
    /// Its lane.
    pub lane: Lane,
    /// Its seq.
    pub seq: Seq,
    /// The lane of the dependency it waited for.
    pub missing: Lane,
    /// How far that lane had to be delivered.
    pub needed: Seq,
}

impl Router {
    /// A router over `storage`. It reads how far a lane is stored when an event needs it,
    /// so it starts at once and its memory does not grow with the lanes stored.
    pub fn new(
        storage: Arc<dyn Storage>,
        limits: PendingLimits,
        stream_config: StreamConfig,
        passivation: Passivation,
    ) -> Self {
        Self {
            pending: Pending::new(limits, stored(Arc::clone(&storage))),
            storage,
            registry: HashMap::new(),
            streams: HashMap::new(),
            outboxes: Outboxes::default(),
            stream_config,
            metrics: RouterMetrics::default(),
            waiters: Vec::new(),
            listeners: Vec::new(),
            advanced: false,
            rewound: false,
            relaying: HashMap::new(),
            relayed_keys: HashMap::new(),
            open_waiters: HashMap::new(),
            journal: VecDeque::new(),
            equivocations: Equivocations::default(),
            poisoned: HashSet::new(),
            receive_waiters: Vec::new(),
            backlog_max: limits.events_max,
            lru: BTreeSet::new(),
            passivating: HashMap::new(),
            awaiting: VecDeque::new(),
            room_waiters: Vec::new(),
            passivation,
            attested: Attested::default(),
            unstored: HashSet::new(),
            attestations_unread: 0,
        }
    }

    /// Checks the attestations a batch of events came with, only those its events name
    /// ([`retain_named`]); `valid` says which verified already. Those refused are counted
    /// and logged (at the 1st, 2nd, 4th… refusal), and their events then find no
    /// attestation.
    fn check_attestations(&mut self, attestations: Vec<Attestation>, valid: &[bool], spent_ns: u64) {
        self.unstored.clear();
        self.attested.verify_ns += spent_ns;
        for (index, attestation) in attestations.into_iter().enumerate() {
            let (site, number) = (attestation.site(), attestation.number);
            let verified = valid.get(index).copied().unwrap_or(false);
            match self.attested.check(attestation, verified, self.storage.as_ref()) {
                Ok(Ok(())) => {}
                Ok(Err(refused)) => {
                    self.metrics.attestations_refused += 1;
                    match refused {
                        Refused::Conflict { stored, received } => tracing::error!(
                            %site, number, stored_ids = stored.ids.len(), received_ids = received.ids.len(),
                            "site {site} signed two different attestations numbered {number}: it equivocates \
                             (the stored one is kept); stored {stored:?}, received {received:?}"
                        ),
                        Refused::Invalid(error) if self.metrics.attestations_refused.is_power_of_two() => {
                            tracing::warn!(%error, refused = self.metrics.attestations_refused, "refused an attestation");
                        }
                        Refused::Invalid(_) => {}
                    }
                }
                Err(error) => {
                    // Not kept: its events are dropped, not refused, and asked for again.
                    tracing::error!(%site, number, %error, "storing an attestation failed; its events are fetched again");
                    self.unstored.insert((site, number));
                }
            }
        }
        self.metrics.verify_ns = self.attested.verify_ns;
    }

    /// The actor of `stream`, opening it when its type is registered and there is room
    /// (see [`Open`]).
    fn open(&mut self, stream: StreamId, stream_type: &str, ctx: &mut Context<Self>) -> Result<Open, StreamError> {
        if let Some(stream_type) = self.passivating_type(stream) {
            return Ok(Open::Later(stream_type));
        }
        if let Some(opened) = self.streams.get(&stream) {
            let stream_type = opened.stream_type;
            self.touch(stream);
            return Ok(Open::Ready(stream_type));
        }
        if self.relaying.contains_key(&stream) {
            return Ok(Open::Unregistered); // go on storing it unfolded until those appends are durable
        }
        let Some((&name, _)) = self.registry.get_key_value(stream_type) else { return Ok(Open::Unregistered) };
        if !self.room_for_one(ctx) {
            return Ok(Open::Later(name));
        }
        let Some(opener) = self.registry.get(stream_type) else { return Ok(Open::Unregistered) };
        let opened = (opener.open)(Arc::clone(&self.storage), stream, self.stream_config.clone())?;
        self.follow(&opened, ctx);
        self.streams.insert(stream, opened);
        self.touch(stream);
        self.note_live();
        Ok(Open::Ready(name))
    }

    /// Watches a stream actor, so that what it makes durable (its local writes included)
    /// moves the site's frontier.
    fn follow(&self, opened: &Opened, ctx: &mut Context<Self>) {
        let watch = WatchDurable(ctx.address().recipient());
        // A full mailbox waits; a stopped stream needs no watching.
        let send = opened.watch.send(watch);
        actix::spawn(async move { send.await.ok() });
    }

    /// Takes an event from another site; `id_matches` says whether its id is its
    /// content's when that was checked before (`None`: check it here).
    fn receive(&mut self, event: Event, id_matches: Option<bool>) {
        self.metrics.received += 1;
        if !well_formed(&event) {
            self.metrics.malformed += 1;
            return;
        }
        if !id_matches.unwrap_or_else(|| event.id == event.content_id()) {
            self.metrics.malformed += 1;
            self.metrics.altered += 1;
            return log_refusal(self.metrics.altered, &event, "its id does not match its content (altered or forged)");
        }
        if event.lane.site == self.storage.site_id() {
            // Only this site writes its lane, and peers never send a site its own events.
            self.metrics.malformed += 1;
            self.metrics.own_lane_claims += 1;
            return log_refusal(self.metrics.own_lane_claims, &event, "it claims this site's own lane");
        }
        if self.unstored.contains(&(event.lane.site, event.attestation)) {
            // Its attestation could not be stored (storage busy or failing): the peer
            // sends it again once told we do not hold it.
            self.attestations_unread += 1;
            self.rewound = true;
            return;
        }
        match self.attested.covers(&event, self.storage.as_ref()) {
            Ok(true) => {}
            Ok(false) => {
                self.metrics.malformed += 1;
                self.metrics.unattested += 1;
                return log_refusal(self.metrics.unattested, &event, "no attestation of its lane's site covers it");
            }
            Err(error) => {
                self.attestations_unread += 1;
                self.rewound = true;
                tracing::error!(event = %event.id, %error, "reading an attestation failed; the event is fetched again");
                return;
            }
        }
        let (lane, seq, id) = (event.lane, event.seq, event.id);
        if self.poisoned.contains(&lane) {
            // An event of its lane was refused for good here: it could never be delivered,
            // so it is not held (where it would wait for ever) but refused too.
            self.metrics.refused += 1;
            return;
        }
        if seq <= self.pending.delivered_seq(lane) {
            return self.receive_delivered(event);
        }
        match self.pending.insert(event) {
            Ok(Insert::Ready) => {}
            Ok(Insert::Buffered { lane: missing, seq: needed }) => {
                if self.journal.len() == limits::JOURNAL_MAX {
                    self.journal.pop_front();
                }
                self.journal.push_back(HeldBack { event: id, lane, seq, missing, needed });
            }
            Ok(Insert::Duplicate) => self.metrics.duplicates += 1,
            Ok(Insert::Overflow) => {
                // The peer thinks we have it now: a fresh hello makes it send it again.
                self.metrics.dropped_on_overflow += 1;
                self.rewound = true;
            }
            Ok(Insert::Unread) => self.rewound = true, // logged by `stored`
            Ok(Insert::Delivered) => unreachable!("delivered slots are handled above"),
            Err(Contested { kept, rejected }) => self.equivocation(lane, seq, kept, true, Ok(*rejected)),
        }
    }

    /// An event whose slot is delivered here: a copy, or an equivocation if another id
    /// holds it. When the one delivered is not stored yet: if the router is storing it
    /// without an actor, another event there is judged once that one is durable (the
    /// proof reads it back); if it is in flight to its stream, the stream, which knows what
    /// it has in flight, tells which.
    fn receive_delivered(&mut self, event: Event) {
        let (lane, seq) = (event.lane, event.seq);
        if let Some(&kept) = self.relayed_keys.get(&(lane, seq)) {
            if kept == event.order_key() {
                self.metrics.duplicates += 1;
            } else if self.equivocations.needs_no_proof(lane.site) {
                self.equivocation(lane, seq, kept.id, false, Ok(event));
            } else {
                self.equivocations.judging(&event);
            }
            return;
        }
        match self.storage.key_at(lane.stream, lane, seq) {
            // The same id with another counter or time is a forgery of the event kept.
            Ok(Some(kept)) if kept != event.order_key() => self.equivocation(lane, seq, kept.id, false, Ok(event)),
            Ok(None) if self.streams.contains_key(&lane.stream) || self.is_passivating(lane.stream) => {
                self.equivocations.judging(&event);
                self.outboxes.push(event);
            }
            _ => self.metrics.duplicates += 1,
        }
    }

    /// Moves every ready event to its stream's outbox and sends what can be sent.
    fn release(&mut self, ctx: &mut Context<Self>) {
        self.deliver_ready(ctx);
        for stream in self.outboxes.sendable() {
            self.send_batch(stream, ctx);
        }
        if self.pending.take_dropped() {
            self.rewound = true; // events that waited were dropped: peers send them again
        }
        self.metrics.pending = u64::try_from(self.pending.len()).unwrap_or(u64::MAX);
        self.metrics.held_back = self.pending.stats().buffered;
        self.metrics.dropped_unread = self.pending.stats().unread + self.attestations_unread;
        if self.backlog() <= self.backlog_max {
            for waiter in self.receive_waiters.drain(..) {
                let _ = waiter.send(()); // a sink that went away needs no answer
            }
        }
        let hello = std::mem::take(&mut self.rewound);
        if std::mem::take(&mut self.advanced) || hello {
            self.wake_waiters();
            // A notification already queued says much the same, so a full mailbox loses
            // little; but a request to resend must reach every source: it is kept and
            // tried again at the next release.
            let notice = FrontierAdvanced { hello };
            let mut undelivered = false;
            self.listeners.retain(|listener| match listener.try_send(notice) {
                Ok(()) => true,
                Err(SendError::Full(_)) => {
                    undelivered = true;
                    true
                }
                Err(SendError::Closed(_)) => false,
            });
            self.rewound = hello && undelivered;
        }
    }

    /// Moves every ready event to its stream's outbox (or stores it, if its type is not
    /// registered here or it starts a new stream), marking it delivered so that its
    /// successors are ready at once.
    pub(super) fn deliver_ready(&mut self, ctx: &mut Context<Self>) {
        while let Some(event) = self.pending.take_ready() {
            let (lane, seq) = (event.lane, event.seq);
            match self.starts_new_stream(&event) {
                Ok(false) => {}
                Ok(true) => {
                    self.store_without_actor(event, &[], ctx); // a new stream has no snapshot
                    continue;
                }
                Err(StorageError::TypeMismatch { .. }) => {
                    self.refuse_for_good(lane, seq, "its stream has another type here");
                    continue;
                }
                Err(_) => {
                    self.refuse_for_now(lane, seq);
                    continue;
                }
            }
            match self.open(lane.stream, &event.stream_type, ctx) {
                Ok(Open::Ready(stream_type) | Open::Later(stream_type)) if stream_type == event.stream_type => {
                    // An actor not open yet takes it from the outbox once it is.
                    self.await_actor(lane.stream, stream_type);
                    self.outboxes.push(event);
                    // Its stream applies in mailbox order, so its own successors may follow.
                    self.pending.mark_delivered(lane, seq);
                }
                Ok(Open::Ready(_) | Open::Later(_)) => {
                    self.refuse_for_good(lane, seq, "its stream has another type here");
                }
                Ok(Open::Unregistered) => self.store_unregistered(event, ctx),
                Err(_) => self.refuse_for_now(lane, seq),
            }
        }
    }

    /// Events held in the buffer or queued for their streams.
    fn backlog(&self) -> usize {
        self.pending.len() + self.outboxes.queued()
    }

    /// Answers the [`WaitFor`] requests whose clock the durable frontier now covers (or
    /// whose lanes were refused for good here). Each waiter remembers how far it has
    /// looked, so a frontier move costs one probe per waiter, not one per lane it names.
    fn wake_waiters(&mut self) {
        let (pending, poisoned) = (&self.pending, &self.poisoned);
        self.waiters.retain_mut(|waiter| {
            while let Some(&(lane, seq)) = waiter.lanes.get(waiter.covered) {
                if pending.durable_seq(lane) < seq && !poisoned.contains(&lane) {
                    break;
                }
                waiter.covered += 1;
            }
            if waiter.covered < waiter.lanes.len() {
                // A requester that went away waits no more.
                return waiter.done.as_ref().is_some_and(|done| !done.is_closed());
            }
            if let Some(done) = waiter.done.take() {
                let _ = done.send(());
            }
            false
        });
    }

    /// Sends the next batch of `stream`'s outbox and handles the answer once durable.
    fn send_batch(&mut self, stream: StreamId, ctx: &mut Context<Self>) {
        let Some(deliver) = self.streams.get(&stream).map(|o| o.deliver.clone()) else { return };
        let batch = self.outboxes.take_batch(stream, limits::DELIVER_BATCH_MAX);
        let slots: Vec<(Lane, Seq)> = batch.iter().map(|e| (e.lane, e.seq)).collect();
        self.then(ctx, deliver.send(DeliverIdsMatched(batch)), move |reply, router, ctx| {
            let outcomes = reply.unwrap_or_else(|_| vec![Err(StreamError::Storage(StorageError::Closed)); slots.len()]);
            for ((lane, seq), outcome) in slots.into_iter().zip(outcomes) {
                router.settle(lane, seq, outcome);
            }
            router.outboxes.batch_done(stream);
            router.release(ctx);
        });
    }

    /// What a stream said about one delivered event, once durable.
    fn settle(&mut self, lane: Lane, seq: Seq, outcome: Result<Delivered, StreamError>) {
        match outcome {
            Ok(delivered @ (Delivered::Applied | Delivered::Unfolded)) => {
                self.metrics.delivered += 1;
                if delivered == Delivered::Unfolded {
                    self.metrics.unfolded += 1;
                    if self.metrics.unfolded.is_power_of_two() {
                        tracing::warn!(%lane, seq = seq.0, unfolded = self.metrics.unfolded,
                            "stored an event whose payload does not decode into this site's type for its stream \
                             (a newer version of the application, or a broken writer): its view skips it");
                    }
                }
                self.pending.mark_durable(lane, seq);
                self.advanced = true;
            }
            Ok(Delivered::Duplicate) => {
                self.equivocations.judged(lane, seq);
                self.metrics.duplicates += 1;
                self.pending.mark_durable(lane, seq);
                self.advanced = true;
            }
            // The stream keeps the event it has on that slot: durable all the same.
            Err(StreamError::Equivocation { kept, rejected, .. }) => {
                let judged = self.equivocations.judged(lane, seq).filter(|event| event.id == rejected);
                self.equivocation(lane, seq, kept, false, judged.ok_or(rejected));
                self.pending.mark_durable(lane, seq);
                self.advanced = true;
            }
            Err(error) => {
                self.metrics.refused += 1;
                if self.retry(&error) {
                    // Not taken for now: forget it and what followed it in its lane, and ask
                    // peers to send it again.
                    self.pending.rewind(lane, Seq(seq.0 - 1));
                    self.outboxes.drop_lane_from(lane, seq);
                    self.rewound = true;
                } else {
                    // Refused for good (a forged counter, another type than the stream's here, a
                    // stream whose storage failed): asking again would bring the same bytes
                    // back for ever, so the lane stops here at this site.
                    self.poisoned.insert(lane);
                }
            }
        }
    }

    /// Whether a refusal is worth a retry: storage was busy or failed (it heals), another
    /// event of the batch stopped the write, or the stream is behind the router (after an
    /// earlier retry) on a lane that no event was refused for good on.
    fn retry(&self, error: &StreamError) -> bool {
        match error {
            // A storage failure passes: the site reopens it, and the stream rebuilds itself.
            StreamError::Storage(StorageError::TypeMismatch { .. }) => false,
            StreamError::Storage(_) | StreamError::Interrupted { .. } => true,
            StreamError::SeqGap { lane, .. } => !self.poisoned.contains(lane),
            StreamError::DependencyMissing { lane, .. } => !self.poisoned.contains(lane),
            _ => false,
        }
    }

    /// Whether `event` is the first of a new stream of a registered type that no actor
    /// holds. Then it is stored without one: there is no view
    /// yet to fold it into, and the stream's first actor loads it from storage, so a site
    /// catching up on many streams of one event each starts no actor at all (an actor's
    /// start was most of the cost of each). Not while an actor holds the stream, stops, or
    /// has events queued, nor while events stored without an actor are not durable yet:
    /// those keep their paths.
    fn starts_new_stream(&self, event: &Event) -> Result<bool, StorageError> {
        if !self.registry.contains_key(event.stream_type.as_str()) {
            return Ok(false);
        }
        self.holds_nothing_of(event.lane.stream)
    }

    /// Whether this site holds no event of `stream` and none is on its way to storage: no
    /// actor holds the stream or is stopping, nothing is queued for one, nothing stored
    /// without one awaits durability, and storage has no type for it (a stream's type is
    /// stored with its first event).
    fn holds_nothing_of(&self, stream: StreamId) -> Result<bool, StorageError> {
        if self.streams.contains_key(&stream)
            || self.is_passivating(stream)
            || self.relaying.contains_key(&stream)
            || self.outboxes.has_queued(stream)
        {
            return Ok(false);
        }
        Ok(self.storage.stream_type(stream)?.is_none())
    }

    /// Writes the first event of `stream`, which holds none here ([`Router::holds_nothing_of`]),
    /// from `emit`, without starting the stream's actor: a stream written once starts no
    /// actor, and its first actor, when one is needed, loads the event from storage. The
    /// answer comes once the event is durable and noted here.
    fn write_first<S: Stream>(
        &mut self,
        stream: StreamId,
        emit: &Emit<S>,
        ctx: &mut Context<Self>,
    ) -> Result<oneshot::Receiver<Result<Emitted, StreamError>>, StreamError> {
        let storage = self.storage.as_ref();
        let key_at = |lane: Lane, seq| storage.key_at(lane.stream, lane, seq);
        let event = first_event(storage.site_id(), stream, emit, self.stream_config.snapshot_every, key_at)?;
        storage.declare_stream(stream, S::TYPE_NAME)?;
        let commit = storage.append(stream, Append { events: std::slice::from_ref(&event), stale_snapshots: &[] })?;
        let (lane, seq, emitted) = (event.lane, event.seq, Emitted::of(&event));
        *self.relaying.entry(stream).or_default() += 1;
        let (answer, answered) = oneshot::channel();
        self.then(ctx, commit, move |result, router, ctx| {
            if result.is_ok() {
                router.metrics.emitted += 1;
                router.pending.observe(lane, seq);
                router.advanced = true;
            }
            router.relayed_durable(stream);
            router.release(ctx);
            // A writer that went away needs no answer.
            let _ = answer.send(result.map(|()| emitted).map_err(StreamError::Storage));
        });
        Ok(answered)
    }

    /// Stores an event of a type this site has not registered, without folding it.
    fn store_unregistered(&mut self, event: Event, ctx: &mut Context<Self>) {
        let (lane, seq) = (event.lane, event.seq);
        // Snapshots of an earlier run (the type was registered then) that the event sorts
        // before lack it: once the type registers, the stream must not resume from them.
        let Ok(stale) = self.storage.snapshots_from(lane.stream, event.order_key()) else {
            return self.refuse_for_now(lane, seq);
        };
        self.store_without_actor(event, &stale, ctx);
    }

    /// Appends `event` (dropping the `stale` snapshots) with no actor to fold it, marks it
    /// delivered, and settles it once durable. Its stream's actor opens only after that
    /// (see `relaying`), and then loads it. First it makes the checks an actor would make
    /// that the buffer has not: the Lamport counter, whatever the type (every site must
    /// take or refuse an event alike, whether it folds its type or not), the stream's type,
    /// and, for a registered type, whether the payload decodes (counted unfolded if not).
    /// The stream is declared only once the event is taken, so refused events leave
    /// nothing behind.
    fn store_without_actor(&mut self, event: Event, stale: &[OrderKey], ctx: &mut Context<Self>) {
        let (lane, seq, key) = (event.lane, event.seq, event.order_key());
        let (storage, in_flight) = (self.storage.as_ref(), &self.relayed_keys);
        let checked = check_lamport(
            &event,
            // The buffer released it only once its own stream's dependencies were delivered.
            |_| Seq(u64::MAX),
            |lane, seq| match in_flight.get(&(lane, seq)) {
                Some(key) => Ok(Some(*key)),
                None => storage.key_at(lane.stream, lane, seq),
            },
        );
        if let Err(error) = checked {
            if self.retry(&error) {
                return self.refuse_for_now(lane, seq);
            }
            return self.refuse_for_good(lane, seq, &error.to_string());
        }
        match self.storage.declare_stream(lane.stream, &event.stream_type) {
            Ok(()) => {}
            Err(StorageError::TypeMismatch { .. }) => {
                return self.refuse_for_good(lane, seq, "its stream has another type here");
            }
            Err(_) => return self.refuse_for_now(lane, seq),
        }
        let delivered = match self.registry.get(event.stream_type.as_str()) {
            Some(opener) if !(opener.decodes)(&event.payload) => Delivered::Unfolded,
            _ => Delivered::Applied,
        };
        let append = Append { events: std::slice::from_ref(&event), stale_snapshots: stale };
        match self.storage.append(lane.stream, append) {
            Ok(commit) => {
                self.pending.mark_delivered(lane, seq);
                *self.relaying.entry(lane.stream).or_default() += 1;
                self.relayed_keys.insert((lane, seq), key);
                self.then(ctx, commit, move |result, router, ctx| {
                    router.relayed_keys.remove(&(lane, seq));
                    router.settle(lane, seq, result.map(|()| delivered).map_err(StreamError::Storage));
                    if let Some(other) = router.equivocations.judged(lane, seq) {
                        router.receive_delivered(other); // another event at its slot, kept to judge now
                    }
                    router.relayed_durable(lane.stream);
                    router.release(ctx);
                });
            }
            Err(_) => self.refuse_for_now(lane, seq),
        }
    }

    /// Counts, logs and (the first against its site) proves an equivocation: the event
    /// at (`lane`, `seq`) here is `kept`, held (`held`) or stored; `rejected` is the other,
    /// or only its id when that event is not at hand.
    fn equivocation(&mut self, lane: Lane, seq: Seq, kept: EventId, held: bool, rejected: Result<Event, EventId>) {
        self.metrics.equivocations += 1;
        let (site, count) = (lane.site, self.metrics.equivocations);
        let rejected_id = rejected.as_ref().map_or_else(|id| *id, |event| event.id);
        if self.equivocations.needs_no_proof(site) {
            if count.is_power_of_two() {
                tracing::warn!(%site, %lane, seq = seq.0, %kept, rejected = %rejected_id, count, "refused an equivocation");
            }
            return;
        }
        let proof = match rejected {
            Ok(rejected) => {
                let held = if held { self.pending.held(lane, seq).cloned() } else { None };
                match self.equivocations.prove(held, rejected, &mut self.attested, self.storage.as_ref()) {
                    Ok(()) => "both, with their attestations, are kept as proof (`Site::equivocations`)".to_owned(),
                    Err(why) => format!("no proof is kept: {why}"),
                }
            }
            Err(_) => "no proof is kept: the refused event is no longer at hand".to_owned(),
        };
        tracing::error!(
            %site, %lane, seq = seq.0, %kept, rejected = %rejected_id,
            "site {site} signed two events for seq {} of lane {lane}: it equivocates. The first here is kept, the \
             other refused; {proof}",
            seq.0
        );
    }

    /// One relayed append of `stream` is durable (or failed): when none is left, streams
    /// waiting to open may.
    fn relayed_durable(&mut self, stream: StreamId) {
        let Some(count) = self.relaying.get_mut(&stream) else { return };
        *count -= 1;
        if *count == 0 {
            self.relaying.remove(&stream);
            for waiter in self.open_waiters.remove(&stream).unwrap_or_default() {
                let _ = waiter.send(());
            }
        }
    }

    /// Gives up on a taken event for now (its stream could not open, storage failed or
    /// was busy): its slot is freed and the peers are asked for it again, later each time
    /// it keeps failing (the sinks back off, `Intake::reset`).
    fn refuse_for_now(&mut self, lane: Lane, seq: Seq) {
        self.pending.abandon(lane, seq);
        self.metrics.refused += 1;
        self.rewound = true;
    }

    /// Refuses a taken event for good (for example another type than its stream's here):
    /// asking again would bring the same bytes back for ever, so its lane stops here at
    /// this site, and whoever waits for it is answered.
    fn refuse_for_good(&mut self, lane: Lane, seq: Seq, why: &str) {
        self.pending.abandon(lane, seq);
        self.metrics.refused += 1;
        self.metrics.malformed += 1;
        if self.poisoned.insert(lane) {
            tracing::warn!(%lane, seq = seq.0, "refused an event for good: {why}; the lane stops here at this site");
        }
        self.advanced = true;
    }
}

/// What the router does once something it waited for has come (see [`Router::then`]).
struct Then(Box<dyn ThenFn>);

/// The work of a [`Then`].
trait ThenFn: FnOnce(&mut Router, &mut Context<Router>) + Send {}

impl<F: FnOnce(&mut Router, &mut Context<Router>) + Send> ThenFn for F {}

impl Message for Then {
    type Result = ();
}

impl Handler<Then> for Router {
    type Result = ();

    fn handle(&mut self, Then(then): Then, ctx: &mut Context<Self>) {
        then(self, ctx);
    }
}

impl Router {
    /// Runs `then` on the router with `future`'s output once it resolves. The future waits
    /// in a task of its own, not in the router's context: actix polls every future spawned
    /// in a context whenever the actor wakes, so a batch in flight to each of thousands of
    /// streams made every wake cost thousands of polls (a fresh site catching up on 10⁵
    /// streams ran at 1.8k events/s).
    pub(super) fn then<F, T>(&self, ctx: &Context<Self>, future: F, then: T)
    where
        F: std::future::Future + 'static,
        F::Output: Send + 'static,
        T: FnOnce(F::Output, &mut Router, &mut Context<Router>) + Send + 'static,
    {
        let router = ctx.address();
        actix::spawn(async move {
            let output = future.await;
            // A router that stopped needs no answer.
            let _ = router.send(Then(Box::new(move |router, ctx| then(output, router, ctx)))).await;
        });
    }
}

/// A [`WaitFor`] request: the lanes and seqs it waits for, how many of them are durable.
struct Waiter {
    lanes: Vec<(Lane, Seq)>,
    covered: usize,
    done: Option<oneshot::Sender<()>>,
}

/// How far a lane is stored, read from `storage` for the buffer; a failed read is logged
/// and the events that needed it are dropped, to be fetched again.
fn stored(storage: Arc<dyn Storage>) -> Stored {
    Box::new(move |lane| match storage.lane_end(lane) {
        Ok(seq) => Some(seq),
        Err(error) => {
            tracing::error!(%lane, %error, "reading how far a lane is stored failed; its events are fetched again");
            None
        }
    })
}

/// Logs an event refused for `why`, at the 1st, 2nd, 4th, 8th… refusal of its kind
/// (`refused` of them so far, this one counted), so that a peer repeating it cannot flood
/// the log.
fn log_refusal(refused: u64, event: &Event, why: &str) {
    if refused.is_power_of_two() {
        tracing::warn!(event = %event.id, lane = %event.lane, seq = event.seq.0, refused, "refused an event: {why}");
    }
}

/// The checks the router makes before buffering: the rest is the stream's job.
pub(crate) fn well_formed(event: &Event) -> bool {
    event.clock_names_own_lane()
        && event.clock.is_canonical()
        && event.clock.len() <= limits::CLOCK_LANES_MAX
        && event.lamport <= limits::LAMPORT_MAX
}

impl Actor for Router {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.set_mailbox_capacity(limits::STREAM_MAILBOX_MAX);
        if let Some(idle_after) = self.passivation.idle_after {
            // Looked at four times per idle time, so an actor stops at most 1.25 of it idle.
            ctx.run_interval(idle_after / 4, |router, ctx| router.passivate_idle(ctx));
        }
    }
}
