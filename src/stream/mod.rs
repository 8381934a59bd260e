//! [`StreamActor`]: one stream at one site. It owns the stream's log (in storage), its
//! view, frontier and snapshots, and its subscribers.
//!
//! A thin shell around the pure [`Ledger`]: it stamps ids and wall-clock time, queues
//! writes to [`Storage`], and answers only once what it answers about is durable. The
//! ledger and view change at once, so the next message already sees a write; the write is
//! acknowledged when the group commit that carries it returns, and many writes are in
//! flight together and share one flush. Until then the actor keeps the event in memory
//! ("in flight"), so its own reads (equivocation checks, rollback replays) see it even
//! before the storage writer has applied it, and nothing shows it to others yet.

mod ledger;
mod messages;

pub use self::ledger::{Check, Ledger};
pub use self::messages::{
    Decide, DecideError, Deliver, Delivered, Emit, Emitted, GetView, History, HistoryPage, Subscribe, ViewReply,
};

use crate::codec::{self, CodecError};
use crate::event::{Event, OrderKey};
use crate::id::{EventId, Lane, Seq, SiteId, StreamId};
use crate::limits;
use crate::storage::{Append, Storage, StorageError};
use crate::view::{Fold, Folded, Stream};
use actix::prelude::*;
use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::ops::Bound;
use std::sync::Arc;
use tokio::sync::mpsc;

/// Why a stream actor refused a message. The actor keeps serving after every variant
/// except [`StreamError::Storage`] from a failed commit, after which it stops.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StreamError {
    /// The event belongs to another stream: route it there.
    #[error("event of stream {got} delivered to stream {expected}")]
    WrongStream {
        /// This actor's stream.
        expected: StreamId,
        /// The event's stream.
        got: StreamId,
    },
    /// The event was written by another stream type.
    #[error("event of stream type {got:?} delivered to a stream of type {expected:?}")]
    WrongStreamType {
        /// This actor's type name.
        expected: &'static str,
        /// The event's type name.
        got: String,
    },
    /// The event's clock does not name its own lane at its seq (or holds zero entries, or
    /// too many lanes): it was not written by gundb.
    #[error("event {event} at seq {seq} has a malformed clock (its own lane at {in_clock})")]
    MalformedClock {
        /// The event.
        event: EventId,
        /// Its seq.
        seq: Seq,
        /// Its clock's entry for its own lane.
        in_clock: Seq,
    },
    /// The event skips ahead in its lane: deliver the events before it first.
    #[error("{lane} expects seq {expected}, got {got}")]
    SeqGap {
        /// The lane.
        lane: Lane,
        /// The next seq this stream can take.
        expected: Seq,
        /// The event's seq.
        got: Seq,
    },
    /// The event depends on a lane of this stream not yet delivered this far.
    #[error("event {event} depends on {lane} seq {needed}, delivered only to {delivered}")]
    DependencyMissing {
        /// The event.
        event: EventId,
        /// The lane it depends on.
        lane: Lane,
        /// How far it needs that lane.
        needed: Seq,
        /// How far that lane is delivered here.
        delivered: Seq,
    },
    /// A local write named a dependency this stream has not delivered.
    #[error("a write may only depend on what is delivered: {lane} seq {seq} (delivered: {delivered})")]
    DependencyNotDelivered {
        /// The lane named.
        lane: Lane,
        /// The seq named.
        seq: Seq,
        /// How far that lane is delivered here.
        delivered: Seq,
    },
    /// The event's Lamport counter is not above a dependency's: it would sort before
    /// what it depends on. Not written by gundb.
    #[error("event {event} has lamport {lamport}, not above its dependency {dependency} at {dependency_lamport}")]
    LamportNotAfterDependency {
        /// The event.
        event: EventId,
        /// Its Lamport counter.
        lamport: u64,
        /// The dependency.
        dependency: EventId,
        /// The dependency's counter.
        dependency_lamport: u64,
    },
    /// Two different events claim one (lane, seq): the one delivered first is kept, the
    /// other is never applied.
    #[error("equivocation on {lane} at seq {seq}: kept {kept}, rejected {rejected}")]
    Equivocation {
        /// The lane.
        lane: Lane,
        /// The seq claimed twice.
        seq: Seq,
        /// The event kept.
        kept: EventId,
        /// The event rejected.
        rejected: EventId,
    },
    /// The payload does not decode into the stream's event type (or is too large).
    #[error("payload: {0}")]
    Payload(CodecError),
    /// A `Decide` asked to write more events than [`limits::DECIDE_EVENTS_MAX`].
    #[error("a decision wrote {count} events, more than the limit of {max}")]
    TooManyEvents {
        /// Events returned.
        count: usize,
        /// The limit.
        max: usize,
    },
    /// The stream already has [`limits::SUBSCRIBERS_MAX`] subscribers.
    #[error("too many subscribers (at most {max})")]
    TooManySubscribers {
        /// The limit.
        max: usize,
    },
    /// Storage failed.
    #[error("storage: {0}")]
    Storage(#[from] StorageError),
}

/// Settings of a stream actor.
#[derive(Debug, Clone)]
pub struct StreamConfig {
    /// Events folded between view snapshots.
    pub snapshot_every: u32,
    /// The actor's mailbox capacity.
    pub mailbox_capacity: usize,
    /// Test-only planted bug: fold late events on top instead of rolling back, so tests can
    /// show that their convergence checks catch it.
    #[doc(hidden)]
    pub planted_bug_skip_rollback: bool,
}

impl Default for StreamConfig {
    fn default() -> Self {
        Self {
            snapshot_every: limits::SNAPSHOT_EVERY,
            mailbox_capacity: limits::STREAM_MAILBOX_MAX,
            planted_bug_skip_rollback: false,
        }
    }
}

struct Subscriber {
    id: u64,
    sender: mpsc::Sender<Event>,
    /// What the subscriber has: everything it was sent plus what it said it had.
    seen: crate::clock::VectorClock,
    /// Events before this bound are sent or covered by `seen`.
    cursor: Bound<OrderKey>,
    /// A wait for room in its channel is under way.
    waiting: bool,
}

/// The actor that owns one stream at one site.
///
/// # Examples
/// ```
/// use actix::Actor;
/// use gundb::{Emit, EventMeta, GetView, Stream, StreamActor, StreamId, View};
/// use gundb::storage::SledStorage;
/// use serde::{Deserialize, Serialize};
/// use std::sync::Arc;
///
/// #[derive(Clone, Default, Serialize, Deserialize)]
/// struct Total(i64);
/// impl View<i64> for Total {
///     fn apply_event(&mut self, add: &i64, _: &EventMeta<'_>) { self.0 += add }
/// }
/// struct Counter;
/// impl Stream for Counter {
///     const TYPE_NAME: &'static str = "doc.counter";
///     type Event = i64;
///     type View = Total;
///     const COMMUTATIVE: bool = true;
/// }
///
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// actix::System::new().block_on(async {
///     let storage = Arc::new(SledStorage::temporary()?);
///     let counter = StreamActor::<Counter>::open(storage, StreamId::random())?.start();
///     counter.send(Emit::new(5)).await??;
///     counter.send(Emit::new(-2)).await??;
///     assert_eq!(counter.send(GetView::new()).await??.view.0, 3);
///     Ok(())
/// })
/// # }
/// ```
pub struct StreamActor<S: Stream> {
    storage: Arc<dyn Storage>,
    stream: StreamId,
    ledger: Ledger<S>,
    config: StreamConfig,
    /// Events queued to storage whose commit has not returned yet.
    inflight: BTreeMap<OrderKey, Event>,
    /// The same events by (lane, seq).
    inflight_index: HashMap<(Lane, Seq), OrderKey>,
    /// The same events in write order, with their write number, so a returned commit
    /// releases exactly the writes it covers.
    inflight_order: VecDeque<(u64, OrderKey)>,
    /// Writes so far; a commit covers every write numbered up to its value at request time.
    written: u64,
    /// Snapshots stored on disk, oldest first.
    snapshots: BTreeSet<OrderKey>,
    subscribers: Vec<Subscriber>,
    next_subscriber: u64,
}

impl<S: Stream> StreamActor<S> {
    /// Opens `stream` in `storage` with the default [`StreamConfig`].
    ///
    /// # Errors
    /// As [`StreamActor::open_with`].
    pub fn open(storage: Arc<dyn Storage>, stream: StreamId) -> Result<Self, StreamError> {
        Self::open_with(storage, stream, StreamConfig::default())
    }

    /// Opens `stream`: loads its frontier and newest snapshot and replays the log after it.
    ///
    /// # Errors
    /// The stream exists with another type, or storage fails or holds damaged data.
    pub fn open_with(storage: Arc<dyn Storage>, stream: StreamId, config: StreamConfig) -> Result<Self, StreamError> {
        let record = storage.open_stream(stream, S::TYPE_NAME)?;
        let mut fold = match &record.snapshot {
            Some((key, bytes)) => {
                let view = codec::decode_view(bytes).map_err(StorageError::Codec)?;
                Fold::resume(config.snapshot_every, *key, view)
            }
            None => Fold::new(config.snapshot_every),
        };
        if config.planted_bug_skip_rollback {
            fold.plant_bug_skip_rollback();
        }
        let site = storage.site_id();
        let mut actor = Self {
            ledger: Ledger::new(site, stream, record.frontier, record.lamport, fold),
            snapshots: record.snapshot_keys.into_iter().collect(),
            storage,
            stream,
            config,
            inflight: BTreeMap::new(),
            inflight_index: HashMap::new(),
            inflight_order: VecDeque::new(),
            written: 0,
            subscribers: Vec::new(),
            next_subscriber: 0,
        };
        let from = record.snapshot.map(|(key, _)| key);
        actor.replay_from(from.map_or(Bound::Unbounded, Bound::Excluded))?;
        Ok(actor)
    }

    /// The site this actor runs at.
    pub fn site(&self) -> SiteId {
        self.ledger.own_lane().site
    }

    /// Folds the log from `from` on: stored events in pages, merged with the events in
    /// flight (which the storage writer may not have applied yet). Stores snapshots taken.
    fn replay_from(&mut self, mut from: Bound<OrderKey>) -> Result<(), StreamError> {
        let mut unstored: VecDeque<Event> =
            self.inflight.range((from, Bound::Unbounded)).map(|(_, e)| e.clone()).collect();
        loop {
            let page = self.storage.events_from(self.stream, from, limits::REPLAY_PAGE_MAX)?;
            let last_page = page.len() < limits::REPLAY_PAGE_MAX;
            let mut merged = Vec::with_capacity(page.len() + unstored.len());
            for stored in page {
                let key = stored.order_key();
                from = Bound::Excluded(key);
                while unstored.front().is_some_and(|e| e.order_key() < key) {
                    merged.extend(unstored.pop_front());
                }
                if unstored.front().is_some_and(|e| e.order_key() == key) {
                    unstored.pop_front(); // applied by the writer already
                }
                merged.push(stored);
            }
            if last_page {
                merged.extend(unstored.drain(..));
            }
            let taken = self.ledger.fold_mut().replay(&merged).map_err(StorageError::Codec)?;
            if let Some(&newest) = taken.last() {
                self.store_snapshot(newest)?;
            }
            if last_page {
                return Ok(());
            }
        }
    }

    /// The stored key of (lane, seq), looking at events in flight first.
    fn key_at(&self, lane: Lane, seq: Seq) -> Result<Option<OrderKey>, StorageError> {
        match self.inflight_index.get(&(lane, seq)) {
            Some(key) => Ok(Some(*key)),
            None => self.storage.key_at(self.stream, lane, seq),
        }
    }

    fn store_snapshot(&mut self, key: OrderKey) -> Result<(), StreamError> {
        let Some(view) = self.ledger.fold_mut().snapshot(&key) else { return Ok(()) };
        // A view too large to snapshot is still correct: recovery replays more of the log.
        let Ok(bytes) = codec::encode_view(view) else { return Ok(()) };
        self.snapshots.insert(key);
        let mut drop = Vec::new();
        while self.snapshots.len() > limits::SNAPSHOTS_KEPT {
            drop.extend(self.snapshots.pop_first());
        }
        self.storage.put_snapshot(self.stream, key, &bytes, &drop)?;
        Ok(())
    }

    /// Writes a checked or stamped event and folds it. Nothing changes when the write fails.
    fn write(&mut self, event: &Event, payload: &S::Event) -> Result<(), StreamError> {
        let key = event.order_key();
        let stale: Vec<OrderKey> = self.snapshots.range(key..).copied().collect();
        self.storage.append(self.stream, Append { event, stale_snapshots: &stale })?;
        for key in &stale {
            self.snapshots.remove(key);
        }
        self.written += 1;
        self.inflight.insert(key, event.clone());
        self.inflight_index.insert((event.lane, event.seq), key);
        self.inflight_order.push_back((self.written, key));
        for subscriber in &mut self.subscribers {
            if let Bound::Excluded(cursor) = subscriber.cursor {
                if key < cursor {
                    subscriber.cursor = Bound::Included(key);
                }
            }
        }
        match self.ledger.record(event, payload) {
            Folded::Applied { snapshot: Some(key) } => self.store_snapshot(key),
            Folded::Applied { snapshot: None } => Ok(()),
            Folded::Rewind { from, .. } => {
                self.ledger.fold_mut().rewind(from);
                self.replay_from(from.map_or(Bound::Unbounded, Bound::Excluded))
            }
        }
    }

    /// Stamps, writes and folds a local event whose encoding is `payload`.
    fn write_local(
        &mut self,
        event: &S::Event,
        payload: Vec<u8>,
        extra: &crate::event::Dependencies,
    ) -> Result<Event, StreamError> {
        let stamped = self.ledger.stamp(EventId::random(), now_ms(), extra, payload)?;
        self.write(&stamped, event)?;
        Ok(stamped)
    }

    /// Replies with `reply` once everything written so far is durable.
    fn when_durable<R: 'static>(&mut self, reply: R) -> ResponseActFuture<Self, Result<R, StreamError>> {
        self.after_commit(move |_| Ok(reply))
    }

    /// Runs `then` once everything written so far is durable (at once when nothing is in
    /// flight). A failed commit stops the actor: what it holds in memory may be ahead of
    /// the disk, and a restart recovers from what is durable.
    fn after_commit<R, F>(&mut self, then: F) -> ResponseActFuture<Self, Result<R, StreamError>>
    where
        R: 'static,
        F: FnOnce(&mut Self) -> Result<R, StreamError> + 'static,
    {
        if self.inflight.is_empty() {
            return Box::pin(fut::ready(then(self)));
        }
        let covered = self.written;
        let commit = self.storage.commit();
        Box::pin(fut::wrap_future::<_, Self>(commit).map(move |result, actor, ctx| match result {
            Ok(()) => {
                actor.release(covered);
                actor.pump(ctx);
                then(actor)
            }
            Err(error) => {
                ctx.stop();
                Err(StreamError::Storage(error))
            }
        }))
    }

    /// Forgets the in-flight copies of writes numbered up to `covered`: they are durable.
    fn release(&mut self, covered: u64) {
        while let Some(&(number, key)) = self.inflight_order.front() {
            if number > covered {
                break;
            }
            self.inflight_order.pop_front();
            if let Some(event) = self.inflight.remove(&key) {
                self.inflight_index.remove(&(event.lane, event.seq));
            }
        }
    }

    /// Up to `limit` durable events after `after`, stopping before the first in flight.
    fn durable_history(&self, after: Option<OrderKey>, limit: usize) -> Result<HistoryPage, StreamError> {
        let from = after.map_or(Bound::Unbounded, Bound::Excluded);
        let mut events = self.storage.events_from(self.stream, from, limit)?;
        let full = events.len() == limit;
        if let Some(cut) = events.iter().position(|e| self.inflight.contains_key(&e.order_key())) {
            events.truncate(cut);
            let next = events.last().map(Event::order_key).or(after);
            return Ok(HistoryPage { events, next });
        }
        let next = if full { events.last().map(Event::order_key) } else { None };
        Ok(HistoryPage { events, next })
    }

    /// Sends every subscriber what it lacks, in canonical order, stopping at events not
    /// yet durable and at full channels.
    fn pump(&mut self, ctx: &mut Context<Self>) {
        let mut index = 0;
        while index < self.subscribers.len() {
            match self.pump_one(index) {
                Ok(Pumped::Done) => index += 1,
                Ok(Pumped::Full) => {
                    self.wait_for_room(index, ctx);
                    index += 1;
                }
                // A closed channel (or a storage error reading for it) ends the subscription.
                Ok(Pumped::Closed) | Err(_) => {
                    self.subscribers.swap_remove(index);
                }
            }
        }
    }

    fn pump_one(&mut self, index: usize) -> Result<Pumped, StorageError> {
        let subscriber = &mut self.subscribers[index];
        if subscriber.waiting {
            return Ok(Pumped::Done);
        }
        loop {
            let page = self.storage.events_from(self.stream, subscriber.cursor, limits::SUBSCRIBE_BATCH_MAX)?;
            if page.is_empty() {
                return Ok(Pumped::Done);
            }
            for event in page {
                if self.inflight.contains_key(&event.order_key()) {
                    return Ok(Pumped::Done); // sent once its commit returns
                }
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
        }
    }

    fn wait_for_room(&mut self, index: usize, ctx: &mut Context<Self>) {
        let subscriber = &mut self.subscribers[index];
        subscriber.waiting = true;
        let (id, sender) = (subscriber.id, subscriber.sender.clone());
        // The permit is dropped at once: it only tells us there is room again.
        let room = async move { sender.reserve_owned().await.is_ok() };
        ctx.spawn(fut::wrap_future::<_, Self>(room).map(move |open, actor, ctx| {
            if let Some(subscriber) = actor.subscribers.iter_mut().find(|s| s.id == id) {
                subscriber.waiting = false;
                if !open {
                    actor.subscribers.retain(|s| s.id != id);
                }
            }
            actor.pump(ctx);
        }));
    }
}

/// Encodes a local event's payload, within [`limits::PAYLOAD_BYTES_MAX`].
fn encode_payload<E: serde::Serialize>(event: &E) -> Result<Vec<u8>, StreamError> {
    let payload = codec::encode(event).map_err(StreamError::Payload)?;
    if payload.len() > limits::PAYLOAD_BYTES_MAX {
        return Err(StreamError::Payload(CodecError::Oversized { len: payload.len(), max: limits::PAYLOAD_BYTES_MAX }));
    }
    Ok(payload)
}

enum Pumped {
    Done,
    Full,
    Closed,
}

fn now_ms() -> u64 {
    let since_epoch = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    u64::try_from(since_epoch.as_millis()).unwrap_or(u64::MAX)
}

impl<S: Stream> Actor for StreamActor<S> {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.set_mailbox_capacity(self.config.mailbox_capacity);
    }
}
