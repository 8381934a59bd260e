//! [`StreamActor`]: one stream at one site. It owns the stream's log (in storage), its
//! view, frontier and snapshots, and its subscribers.
//!
//! A thin shell around the pure [`Ledger`]: it stamps ids and wall-clock time, queues
//! writes to [`Storage`], and answers only once what it answers about is durable. The
//! ledger and view change at once, so the next message already sees a write; the write is
//! acknowledged when the group commit that carries it returns, and many writes are in
//! flight together and share one flush. Until then the actor keeps the event in memory
//! ("in flight"), so its own reads (equivocation checks, rollback replays) see it even
//! before the storage writer has applied it, and nothing shows it to anyone else: replies
//! wait for durability and subscribers stop at the first event in flight.

mod durable;
mod error;
mod gate;
mod ledger;
mod messages;
mod passivate;
mod subscribe;

pub use self::durable::{Durable, WatchDurable};
pub use self::error::StreamError;
pub(crate) use self::gate::clock_ms;
pub use self::gate::{Entry, Gate};
pub(crate) use self::ledger::check_lamport;
use self::ledger::Mark;
pub use self::ledger::{Check, Ledger};
pub(crate) use self::messages::DeliverIdsMatched;
pub use self::messages::{
    Decide, DecideError, Deliver, DeliverBatch, Delivered, Emit, Emitted, GetView, History, HistoryPage, Subscribe,
    ViewReply,
};
pub use self::passivate::Passivate;

use self::subscribe::Subscriber;
use crate::clock::VectorClock;
use crate::codec::{self, CodecError};
use crate::event::{Dependencies, Event, OrderKey};
use crate::id::{Lane, Seq, SiteId, StreamId};
use crate::limits;
use crate::storage::{Append, Storage, StorageError};
use crate::view::{Fold, Folded, Snapshot, Stream};
use actix::prelude::*;
use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::ops::Bound;
use std::sync::Arc;
use tokio::sync::oneshot;

/// Settings of a stream actor.
#[derive(Debug, Clone)]
pub struct StreamConfig {
    /// Events folded between view snapshots.
    pub snapshot_every: u32,
    /// The actor's mailbox capacity.
    pub mailbox_capacity: usize,
    /// Test-only planted bug: fold late events on top instead of rolling back, so tests can
    /// show that their convergence checks catch it.
    #[cfg(feature = "testing")]
    pub planted_bug_skip_rollback: bool,
}

impl Default for StreamConfig {
    fn default() -> Self {
        Self {
            snapshot_every: limits::SNAPSHOT_EVERY,
            mailbox_capacity: limits::STREAM_MAILBOX_MAX,
            #[cfg(feature = "testing")]
            planted_bug_skip_rollback: false,
        }
    }
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
    /// Events queued to storage whose append has not been acknowledged yet.
    inflight: BTreeMap<OrderKey, Event>,
    /// The same events by (lane, seq).
    inflight_index: HashMap<(Lane, Seq), OrderKey>,
    /// The same events with the number of the append that carries them, in append order.
    inflight_order: VecDeque<(u64, OrderKey)>,
    /// Appends queued so far, numbered 1, 2, 3 …
    appended: u64,
    /// Every append numbered up to this is durable. Appends are applied and flushed in
    /// queue order, so one acknowledgement vouches for all before it.
    durable: u64,
    /// Every append numbered up to this was answered by storage, durable or failed.
    answered: u64,
    /// Appends numbered up to this were made before the stream was last rebuilt from
    /// storage ([`StreamActor::resume`]): their answers no longer concern it.
    resumed_at: u64,
    /// The storage's [`Storage::generation`] when the stream was last rebuilt from it.
    generation: u64,
    /// Replies waiting for an append number to become durable, in number order.
    waiters: VecDeque<(u64, oneshot::Sender<Result<(), StorageError>>)>,
    /// Snapshots stored on disk, oldest first.
    snapshots: BTreeSet<OrderKey>,
    subscribers: Vec<Subscriber>,
    next_subscriber: u64,
    pump_scheduled: bool,
    /// The router, told what became durable after each commit.
    watch: durable::Watch,
    /// Set when storage failed under a write already applied in memory, or a fold panicked:
    /// every message is refused with it until the stream recovers (see
    /// [`StreamActor::refusal`]).
    failed: Option<StorageError>,
    /// The stream's claim was released on passivation: dropping must not release it again
    /// (the stream's next actor may hold it by then).
    released: bool,
}

impl<S: Stream> StreamActor<S> {
    /// Opens `stream` in `storage` with the default [`StreamConfig`].
    ///
    /// # Errors
    /// As [`StreamActor::open_with`].
    pub fn open(storage: Arc<dyn Storage>, stream: StreamId) -> Result<Self, StreamError> {
        Self::open_with(storage, stream, StreamConfig::default())
    }

    /// Opens `stream`: claims it (one actor per stream per storage), loads its frontier and
    /// snapshots and replays the log after the newest snapshot.
    ///
    /// # Errors
    /// The stream is open in another actor, exists with another type, or storage fails or
    /// holds damaged data.
    pub fn open_with(storage: Arc<dyn Storage>, stream: StreamId, config: StreamConfig) -> Result<Self, StreamError> {
        storage.claim_stream(stream)?;
        Self::load(storage.clone(), stream, config).inspect_err(|_| storage.release_stream(stream))
    }

    /// Loads a claimed stream (see [`StreamActor::open_with`]).
    fn load(storage: Arc<dyn Storage>, stream: StreamId, config: StreamConfig) -> Result<Self, StreamError> {
        let site = storage.site_id();
        let empty = VectorClock::new();
        let mut actor = Self {
            ledger: Ledger::new(site, stream, empty.clone(), empty, 0, Fold::new(config.snapshot_every)),
            snapshots: BTreeSet::new(),
            storage,
            stream,
            config,
            inflight: BTreeMap::new(),
            inflight_index: HashMap::new(),
            inflight_order: VecDeque::new(),
            appended: 0,
            durable: 0,
            answered: 0,
            resumed_at: 0,
            generation: 0,
            waiters: VecDeque::new(),
            subscribers: Vec::new(),
            next_subscriber: 0,
            pump_scheduled: false,
            watch: durable::Watch::default(),
            failed: None,
            released: false,
        };
        actor.resume()?;
        Ok(actor)
    }

    /// Loads the ledger and the view from what is durable: the stream's frontier, heads and
    /// usable snapshots, then the log after the newest snapshot. Whatever was in flight is
    /// forgotten, and the answers still to come for it are ignored.
    fn resume(&mut self) -> Result<(), StreamError> {
        // Read first: a reopen after this makes the next message rebuild again.
        self.generation = self.storage.generation();
        let record = self.storage.open_stream(self.stream, S::TYPE_NAME)?;
        let snapshots = usable_snapshots::<S>(self.storage.as_ref(), self.stream, &record.snapshots)?;
        let newest = snapshots.last().map(|(key, _)| *key);
        self.snapshots = snapshots.iter().map(|(key, _)| *key).collect();
        #[cfg_attr(not(feature = "testing"), allow(unused_mut))]
        let mut fold = Fold::resume(self.config.snapshot_every, snapshots);
        #[cfg(feature = "testing")]
        if self.config.planted_bug_skip_rollback {
            fold.plant_bug_skip_rollback();
        }
        let site = self.storage.site_id();
        // Every lane with a stored event is in the frontier: without one (a new stream)
        // there is no log to read, which spares each new stream a scan.
        let stored_nothing = record.frontier.is_empty();
        self.ledger = Ledger::new(site, self.stream, record.frontier, record.heads, record.lamport, fold);
        self.inflight.clear();
        self.inflight_index.clear();
        self.inflight_order.clear();
        (self.durable, self.answered, self.resumed_at) = (self.appended, self.appended, self.appended);
        if stored_nothing {
            return Ok(());
        }
        self.replay_and_store(newest.map_or(Bound::Unbounded, Bound::Excluded))
    }

    /// The site this actor runs at.
    pub fn site(&self) -> SiteId {
        self.ledger.own_lane().site
    }

    /// Stamps local events (their payloads already encoded) and commits them as one atomic
    /// append (see [`StreamActor::commit`]).
    fn write_local(
        &mut self,
        events: &[S::Event],
        payloads: Vec<Vec<u8>>,
        extra: &Dependencies,
        ctx: &mut Context<Self>,
    ) -> Result<Vec<Event>, StreamError> {
        // First: a stream that failed is rebuilt here, and stamping reads its ledger.
        self.refusal()?;
        let now = now_ms();
        let stamped =
            self.ledger.stamp_all(extra, payloads.into_iter().map(|payload| (now, payload)), |lane, seq| {
                self.key_at(lane, seq)
            })?;
        let mark = self.ledger.mark(&stamped);
        for event in &stamped {
            self.note(event);
        }
        self.commit(&stamped, events.iter().map(Some), mark, ctx)?;
        Ok(stamped)
    }

    /// Advances the ledger past `event` and keeps it in flight, so that the next checks
    /// and a rollback's replay see it; [`StreamActor::commit`] folds and appends it.
    fn note(&mut self, event: &Event) {
        self.ledger.note(event);
        let key = event.order_key();
        self.inflight.insert(key, event.clone());
        self.inflight_index.insert((event.lane, event.seq), key);
    }

    /// Folds `events` (noted since `mark`; their payloads, `None` for one that does not
    /// decode here), then queues them as one atomic append.
    ///
    /// Folding first means that an event the view cannot fold (its `apply_event` panicked)
    /// is never stored: the stream fails with [`StreamError::ApplyPanicked`] and nothing of
    /// the write reaches storage, so reopening works. An append then refused (a full
    /// queue) is taken back from the ledger and the view: a refused write changes nothing.
    /// A failure after the append was queued poisons the actor (see
    /// [`StreamActor::fail`]), since memory would be ahead of what the caller was told.
    fn commit<'p>(
        &mut self,
        events: &[Event],
        payloads: impl IntoIterator<Item = Option<&'p S::Event>>,
        mark: Mark,
        ctx: &mut Context<Self>,
    ) -> Result<(), StreamError> {
        let Some(first) = events.iter().map(Event::order_key).min() else { return Ok(()) };
        let taken = match self.fold(events, payloads) {
            Ok(newest) => newest,
            Err(error) => {
                self.forget_inflight(events);
                tracing::error!(
                    stream = %self.stream, %error,
                    "folding an event failed; it was not stored, the stream rebuilds its view from storage at its next \
                     message, and the site's other streams go on"
                );
                self.fail(error.clone());
                return Err(error);
            }
        };
        let stale: Vec<OrderKey> = self.snapshots.range(first..).copied().collect();
        let commit = match self.storage.append(self.stream, Append { events, stale_snapshots: &stale }) {
            Ok(commit) => commit,
            Err(error) => {
                self.forget_inflight(events);
                self.ledger.undo(mark);
                let from = self.ledger.fold_mut().rewind_before(first);
                if let Err(replay) = self.replay_and_store(from.map_or(Bound::Unbounded, Bound::Excluded)) {
                    tracing::warn!(stream = %self.stream, error = %replay,
                        "taking back a refused write failed; the stream rebuilds itself from storage");
                    self.fail(replay);
                }
                return Err(error.into());
            }
        };
        self.appended += 1;
        let number = self.appended;
        ctx.spawn(
            fut::wrap_future::<_, Self>(commit).map(move |result, actor, ctx| actor.on_commit(number, result, ctx)),
        );
        for key in &stale {
            self.snapshots.remove(key);
        }
        for event in events {
            let key = event.order_key();
            self.inflight_order.push_back((number, key));
            self.rewind_subscribers(key);
        }
        // Queued behind the events it covers, so no crash keeps it without them.
        if let Some(Err(error)) = taken.map(|key| self.store_snapshot(key)) {
            tracing::warn!(stream = %self.stream, %error,
                "queuing a snapshot after a write failed; the stream rebuilds itself from storage");
            self.fail(error.clone());
            return Err(error);
        }
        Ok(())
    }

    /// Forgets `events`, put in flight by a write that then stored nothing.
    fn forget_inflight(&mut self, events: &[Event]) {
        for event in events {
            self.inflight.remove(&event.order_key());
            self.inflight_index.remove(&(event.lane, event.seq));
        }
    }

    /// Folds noted `events` in canonical order; when the earliest sorts before what the
    /// view has applied, rolls back once, to the snapshot before it, and replays the log
    /// (with the events in flight, these among them) from there: one rollback per batch,
    /// however many of its events are late. Returns the newest snapshot taken, for the
    /// caller to store once the events are queued (one per batch: the older ones of it
    /// would be thinned out anyway).
    fn fold<'p>(
        &mut self,
        events: &[Event],
        payloads: impl IntoIterator<Item = Option<&'p S::Event>>,
    ) -> Result<Option<OrderKey>, StreamError> {
        let mut sorted: Vec<(&Event, Option<&S::Event>)> = events.iter().zip(payloads).collect();
        sorted.sort_by_key(|(event, _)| event.order_key());
        let mut newest = None;
        for (event, payload) in sorted {
            match self.ledger.fold_mut().apply(event, payload)? {
                Folded::Applied { snapshot } => newest = snapshot.or(newest),
                Folded::Rewind { from } => {
                    self.ledger.fold_mut().rewind(from);
                    // The replay folds this event and every later one of the batch.
                    return Ok(self.replay_from(from.map_or(Bound::Unbounded, Bound::Excluded))?.or(newest));
                }
            }
        }
        Ok(newest)
    }

    /// [`StreamActor::replay_from`] of events all stored or queued, storing the snapshot taken.
    fn replay_and_store(&mut self, from: Bound<OrderKey>) -> Result<(), StreamError> {
        match self.replay_from(from)? {
            Some(newest) => self.store_snapshot(newest),
            None => Ok(()),
        }
    }

    /// Folds the log from `from` on: stored events in pages, merged with the events in
    /// flight (which the storage writer may not have applied yet). Returns the newest
    /// snapshot taken, for the caller to store.
    fn replay_from(&mut self, mut from: Bound<OrderKey>) -> Result<Option<OrderKey>, StreamError> {
        let mut unstored: VecDeque<Event> =
            self.inflight.range((from, Bound::Unbounded)).map(|(_, e)| e.clone()).collect();
        let mut newest = None;
        loop {
            let page = self.storage.events_from(self.stream, from, None, limits::REPLAY_PAGE_MAX)?;
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
            let taken = self.ledger.fold_mut().replay(&merged)?;
            newest = taken.last().copied().or(newest);
            if last_page {
                return Ok(newest);
            }
        }
    }

    /// Queues the snapshot at `key` and the deletion of the oldest beyond the kept count.
    /// A full queue skips it: a snapshot only shortens replays.
    fn store_snapshot(&mut self, key: OrderKey) -> Result<(), StreamError> {
        let Some(snapshot) = self.ledger.fold_mut().snapshot(&key) else { return Ok(()) };
        // A view too large to snapshot is still correct: recovery replays more of the log.
        let Ok(bytes) = codec::encode_view(snapshot) else { return Ok(()) };
        let mut kept = self.snapshots.clone();
        kept.insert(key);
        let drop = crate::view::snapshots_to_drop(&kept);
        if drop.contains(&key) {
            return Ok(()); // older than what is kept (after a rewind): not worth storing
        }
        match self.storage.put_snapshot(self.stream, key, &bytes, &drop) {
            Ok(()) => {}
            Err(StorageError::Busy { .. }) => return Ok(()),
            Err(error) => return Err(error.into()),
        }
        for old in &drop {
            self.snapshots.remove(old);
        }
        self.snapshots.insert(key);
        Ok(())
    }

    /// The stored key of (lane, seq), looking at events in flight first.
    fn key_at(&self, lane: Lane, seq: Seq) -> Result<Option<OrderKey>, StorageError> {
        match self.inflight_index.get(&(lane, seq)) {
            Some(key) => Ok(Some(*key)),
            None => self.storage.key_at(lane.stream, lane, seq),
        }
    }

    /// An append came back from storage.
    fn on_commit(&mut self, number: u64, result: Result<(), StorageError>, ctx: &mut Context<Self>) {
        self.answered = self.answered.max(number);
        if number <= self.resumed_at {
            return; // made before the stream was rebuilt from storage: already accounted for
        }
        if let Err(error) = result {
            return self.fail(error.into());
        }
        self.durable = self.durable.max(number);
        while let Some(&(append, key)) = self.inflight_order.front() {
            if append > self.durable {
                break;
            }
            self.inflight_order.pop_front();
            if let Some(event) = self.inflight.remove(&key) {
                self.inflight_index.remove(&(event.lane, event.seq));
                self.note_durable(&event);
            }
        }
        if self.inflight.is_empty() {
            // An emptied map keeps its node (about 2 KiB): a site keeps thousands of idle
            // actors, so give it back.
            self.inflight = BTreeMap::new();
            self.inflight_index = HashMap::new();
        }
        self.report_durable(ctx);
        while self.waiters.front().is_some_and(|(target, _)| *target <= self.durable) {
            if let Some((_, waiter)) = self.waiters.pop_front() {
                let _ = waiter.send(Ok(())); // a caller that went away needs no answer
            }
        }
        self.schedule_pump(ctx);
    }

    /// Storage failed under a write this actor already applied in memory: what it holds
    /// may be ahead of the disk. Fail every waiting reply and refuse everything from now on;
    /// reopening the database rebuilds the stream from what is durable.
    fn fail(&mut self, error: StreamError) {
        let storage = match error {
            StreamError::Storage(error) => error,
            other => StorageError::Corrupt(other.to_string()),
        };
        for (_, waiter) in self.waiters.drain(..) {
            let _ = waiter.send(Err(storage.clone()));
        }
        self.subscribers.clear();
        self.failed.get_or_insert(storage);
    }

    /// The error every message gets after a failure, until the stream recovers: once its
    /// storage serves (the site reopens it after a storage failure, with backoff; after a
    /// panicking fold it never stopped) and has answered every append made, the stream is
    /// rebuilt from what is stored, since what it held in memory may have been ahead of
    /// the disk, and serves again. A storage reopened since the stream last looked (its
    /// failure not heard of yet here) counts as a failure too.
    fn refusal(&mut self) -> Result<(), StreamError> {
        let reopened = self.storage.generation() != self.generation;
        if self.failed.is_none() && !reopened {
            return Ok(());
        }
        if self.failed.is_none() {
            self.fail(StreamError::Storage(StorageError::Reopened));
        }
        let error = self.failed.clone().unwrap_or(StorageError::Reopened);
        // Appends still queued would be missed by a rebuild, and then written again.
        if self.storage.stats().failure.is_some() || self.answered < self.appended {
            return Err(StreamError::Storage(error));
        }
        match self.resume() {
            Ok(()) => {
                tracing::info!(stream = %self.stream, %error, "stream rebuilt from storage after a failure; serving again");
                self.failed = None;
                Ok(())
            }
            Err(resumed) => {
                tracing::warn!(stream = %self.stream, error = %resumed, "rebuilding the stream after a failure failed");
                Err(resumed)
            }
        }
    }

    /// Resolves once every append made so far is durable.
    fn durable(&mut self) -> ResponseActFuture<Self, Result<(), StreamError>> {
        if let Err(error) = self.refusal() {
            return Box::pin(fut::ready(Err(error)));
        }
        if self.durable >= self.appended {
            return Box::pin(fut::ready(Ok(())));
        }
        let (waiter, done) = oneshot::channel();
        self.waiters.push_back((self.appended, waiter));
        // A dropped waiter means the actor stopped before the append returned.
        Box::pin(fut::wrap_future::<_, Self>(done).map(|result, _, _| Ok(result.unwrap_or(Err(StorageError::Closed))?)))
    }

    /// Replies with `reply` once every append made so far is durable.
    fn when_durable<R: 'static>(&mut self, reply: R) -> ResponseActFuture<Self, Result<R, StreamError>> {
        Box::pin(self.durable().map(move |result, _, _| result.map(|()| reply)))
    }
}

/// The first event of a stream that holds none at `site`, stamped from `emit` as the
/// stream's actor would stamp it (`key_at` reads what `emit`'s dependencies name in
/// other streams), and folded into an empty view first, so that a write whose fold panics
/// stores nothing: what the router stores for a new stream without starting its actor.
///
/// # Errors
/// As [`Emit`]: the payload does not encode, a dependency is not stored here, or the
/// fold panicked.
pub(crate) fn first_event<S: Stream, F>(
    site: SiteId,
    stream: StreamId,
    emit: &Emit<S>,
    snapshot_every: u32,
    key_at: F,
) -> Result<Event, StreamError>
where
    F: Fn(Lane, Seq) -> Result<Option<OrderKey>, StorageError>,
{
    let payload = encode_payload(&emit.event)?;
    let empty = VectorClock::new();
    let mut ledger = Ledger::<S>::new(site, stream, empty.clone(), empty, 0, Fold::new(snapshot_every));
    let mut stamped = ledger.stamp_all(&emit.dependencies, std::iter::once((now_ms(), payload)), key_at)?;
    // One stamp in, one event out (`Ledger::stamp_all`).
    let event = stamped.swap_remove(0);
    ledger.record(&event, Some(&emit.event))?;
    Ok(event)
}

/// Encodes a local event's payload, within [`limits::PAYLOAD_BYTES_MAX`].
fn encode_payload<E: serde::Serialize>(event: &E) -> Result<Vec<u8>, StreamError> {
    let payload = codec::encode(event).map_err(StreamError::Payload)?;
    if payload.len() > limits::PAYLOAD_BYTES_MAX {
        return Err(StreamError::Payload(CodecError::Oversized { len: payload.len(), max: limits::PAYLOAD_BYTES_MAX }));
    }
    Ok(payload)
}

fn now_ms() -> u64 {
    let since_epoch = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    u64::try_from(since_epoch.as_millis()).unwrap_or(u64::MAX)
}

impl<S: Stream> Drop for StreamActor<S> {
    fn drop(&mut self) {
        if !self.released {
            self.storage.release_stream(self.stream);
        }
    }
}

impl<S: Stream> Actor for StreamActor<S> {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.set_mailbox_capacity(self.config.mailbox_capacity);
    }
}

/// A snapshot with the key of the event it was taken after.
type Keyed<T> = (OrderKey, T);

/// The stored snapshots of `stream` a fold can resume from, oldest first. A snapshot is a
/// cache of the log, dropped (its deletion queued) when it no longer holds:
/// - one that does not decode (damaged, or written by a view type that changed), with a
///   WARN line;
/// - one taken after an event the view could not fold, once that event decodes (the
///   application was upgraded), so that the fold takes the event in.
///
/// # Errors
/// A failure reading the first unfolded event.
fn usable_snapshots<S: Stream>(
    storage: &dyn Storage,
    stream: StreamId,
    stored: &[(OrderKey, Vec<u8>)],
) -> Result<Vec<Keyed<Snapshot<S::View>>>, StreamError> {
    let mut stale = Vec::new();
    let mut snapshots = Vec::with_capacity(stored.len());
    for (key, bytes) in stored {
        match codec::decode_view::<Snapshot<S::View>>(bytes) {
            Ok(snapshot) => snapshots.push((*key, snapshot)),
            Err(error) => {
                tracing::warn!(%stream, lamport = key.lamport, event = %key.id, %error,
                    "a view snapshot does not decode; dropped, the view is rebuilt from the log");
                stale.push(*key);
            }
        }
    }
    // Every snapshot after the first unfolded event names it; the newest says whether any does.
    if let Some(first) = snapshots.last().and_then(|(_, snapshot)| snapshot.unfolded.first) {
        let event = storage.events_from(stream, Bound::Included(first), None, 1)?;
        if event.first().is_some_and(|event| codec::decode::<S::Event>(&event.payload).is_ok()) {
            tracing::info!(%stream, event = %first.id,
                "an event this stream could not fold before decodes now; folding the log again from before it");
            let from = snapshots.partition_point(|(key, _)| *key < first);
            stale.extend(snapshots.drain(from..).map(|(key, _)| key));
        }
    }
    if !stale.is_empty() {
        // Durable with the next commit; until then (or if refused) the next open drops them again.
        let drop = storage.append(stream, Append { events: &[], stale_snapshots: &stale });
        if let Err(error) = drop {
            tracing::warn!(%stream, %error, "deleting stale snapshots failed; they are skipped again next time");
        }
    }
    Ok(snapshots)
}
