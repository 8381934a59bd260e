//! [`MemoryStorage`]: the [`Storage`] contract in memory, for tests and simulation.
//!
//! It keeps the same per-stream contents as the sled implementation, so code above storage
//! cannot tell them apart. By default every write is applied and durable at once. A
//! [`MemoryStorage::deferred`] one holds writes back (unapplied, unacknowledged) until
//! [`MemoryStorage::release`], so tests can look at everything that happens while a write
//! is in flight.

use super::{Append, Claims, Commit, LogPage, Replicated, Storage, StorageError, StorageStats, StreamRecord};
use crate::attest::Attestation;
use crate::clock::VectorClock;
use crate::event::{heads_of, Event, OrderKey};
use crate::id::{Lane, LogPos, Seq, SiteId, StreamId};
use crate::keys::SiteKeys;
use std::collections::{BTreeMap, HashMap};
use std::ops::Bound;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};
use tokio::sync::{oneshot, watch};

/// Storage in memory: nothing survives the process.
#[derive(Debug)]
pub struct MemoryStorage {
    site: SiteId,
    keys: SiteKeys,
    /// Attestations stored, by site and number, and the last number this site signed.
    attestations: Mutex<HashMap<(SiteId, u64), Attestation>>,
    next_attestation: AtomicU64,
    streams: Mutex<BTreeMap<StreamId, MemoryStream>>,
    /// The site's log: every event as it was applied (position = index + 1).
    log: Mutex<Vec<Event>>,
    /// Tells site-wide subscriptions each time the log grows; taken by `close`, which
    /// ends them.
    log_watch: Mutex<Option<watch::Sender<LogPos>>>,
    /// How far each peer's log is durable here.
    replicated: Mutex<HashMap<SiteId, Replicated>>,
    /// Writes held back, in order, when deferred; `None` applies at once.
    held: Option<Mutex<Vec<Held>>>,
    commits: AtomicU64,
    flushes: AtomicU64,
    claims: Claims,
}

#[derive(Debug)]
struct Held {
    stream: StreamId,
    write: Write,
    ack: Option<oneshot::Sender<Result<(), StorageError>>>,
}

#[derive(Debug)]
enum Write {
    Events(Vec<Event>, Vec<OrderKey>),
    Snapshot(OrderKey, Vec<u8>, Vec<OrderKey>),
}

#[derive(Debug, Default)]
struct MemoryStream {
    stream_type: String,
    log: BTreeMap<OrderKey, Event>,
    index: HashMap<(Lane, Seq), OrderKey>,
    snapshots: BTreeMap<OrderKey, Vec<u8>>,
}

impl MemoryStream {
    /// Every lane's highest stored seq.
    fn frontier(&self) -> VectorClock {
        let mut frontier = VectorClock::new();
        for &(lane, seq) in self.index.keys() {
            if frontier.get(lane) < seq {
                frontier.set(lane, seq);
            }
        }
        frontier
    }

    /// Applies `write`, adding the events new to this stream to the site's `log`.
    fn apply(&mut self, write: Write, log: &mut Vec<Event>) {
        match write {
            Write::Events(events, stale) => {
                for event in events {
                    if !self.index.contains_key(&(event.lane, event.seq)) {
                        log.push(event.clone());
                    }
                    self.index.insert((event.lane, event.seq), event.order_key());
                    self.log.insert(event.order_key(), event);
                }
                for key in stale {
                    self.snapshots.remove(&key);
                }
            }
            Write::Snapshot(key, view, drop) => {
                self.snapshots.insert(key, view);
                for old in drop {
                    self.snapshots.remove(&old);
                }
            }
        }
    }
}

/// Locks `mutex`. Every mutation under these locks is a whole insert or remove, so a map
/// left behind by a panicking holder is still consistent.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl MemoryStorage {
    /// Empty storage of the site `keys` are, durable at once.
    pub fn new(keys: SiteKeys) -> Self {
        Self {
            site: keys.site_id(),
            keys,
            attestations: Mutex::new(HashMap::new()),
            next_attestation: AtomicU64::new(0),
            streams: Mutex::new(BTreeMap::new()),
            log: Mutex::new(Vec::new()),
            log_watch: Mutex::new(Some(watch::Sender::default())),
            replicated: Mutex::new(HashMap::new()),
            held: None,
            commits: AtomicU64::new(0),
            flushes: AtomicU64::new(0),
            claims: Claims::default(),
        }
    }

    /// Empty storage of the site `keys` are that holds every write back until
    /// [`Self::release`].
    pub fn deferred(keys: SiteKeys) -> Self {
        Self { held: Some(Mutex::new(Vec::new())), ..Self::new(keys) }
    }

    /// Applies every held write in order and acknowledges them, as one flush would.
    /// Returns how many appends it acknowledged.
    pub fn release(&self) -> usize {
        let Some(held) = &self.held else { return 0 };
        let writes = std::mem::take(&mut *lock(held));
        let mut streams = lock(&self.streams);
        let mut acked = 0;
        for Held { stream, write, ack } in writes {
            streams.entry(stream).or_default().apply(write, &mut lock(&self.log));
            if let Some(ack) = ack {
                let _ = ack.send(Ok(()));
                acked += 1;
            }
        }
        drop(streams);
        self.publish_log_end();
        self.flushes.fetch_add(1, Ordering::Relaxed);
        self.commits.fetch_add(u64::try_from(acked).unwrap_or(u64::MAX), Ordering::Relaxed);
        acked
    }

    /// Tells site-wide subscriptions where the log ends now. Only forward: two writers
    /// may publish in either order.
    fn publish_log_end(&self) {
        let end = self.log_end();
        if let Some(log_watch) = lock(&self.log_watch).as_ref() {
            log_watch.send_if_modified(|known| {
                let moved = end > *known;
                *known = (*known).max(end);
                moved
            });
        }
    }

    fn write(&self, stream: StreamId, write: Write, acked: bool) -> Commit {
        match &self.held {
            Some(held) => {
                let (ack, done) = oneshot::channel();
                lock(held).push(Held { stream, write, ack: acked.then_some(ack) });
                Commit::waiting(done)
            }
            None => {
                lock(&self.streams).entry(stream).or_default().apply(write, &mut lock(&self.log));
                self.publish_log_end();
                self.commits.fetch_add(1, Ordering::Relaxed);
                self.flushes.fetch_add(1, Ordering::Relaxed);
                Commit::ready(Ok(()))
            }
        }
    }
}

impl Storage for MemoryStorage {
    fn site_id(&self) -> SiteId {
        self.site
    }

    fn keys(&self) -> &SiteKeys {
        &self.keys
    }

    fn claim_stream(&self, stream: StreamId) -> Result<(), StorageError> {
        self.claims.claim(stream)
    }

    fn release_stream(&self, stream: StreamId) {
        self.claims.release(stream);
    }

    fn open_stream(&self, stream: StreamId, stream_type: &str) -> Result<StreamRecord, StorageError> {
        let mut streams = lock(&self.streams);
        let state = streams.entry(stream).or_default();
        if state.stream_type.is_empty() {
            state.stream_type = stream_type.to_owned();
        }
        if state.stream_type != stream_type {
            return Err(StorageError::TypeMismatch {
                stream,
                stored: state.stream_type.clone(),
                requested: stream_type.to_owned(),
            });
        }
        let lamport = state.log.keys().next_back().map_or(0, |k| k.lamport);
        let snapshots = state.snapshots.iter().map(|(k, v)| (*k, v.clone())).collect();
        let frontier = state.frontier();
        let ends: Vec<&Event> =
            frontier.iter().filter_map(|(lane, seq)| state.log.get(state.index.get(&(lane, seq))?)).collect();
        let heads = heads_of(ends);
        Ok(StreamRecord { frontier, heads, lamport, snapshots })
    }

    fn append(&self, stream: StreamId, append: Append<'_>) -> Result<Commit, StorageError> {
        let mut events = append.events.to_vec();
        // This site's own events of the append are signed together, as a group commit
        // signs them at a site on disk.
        let own: Vec<&mut Event> = events.iter_mut().filter(|event| event.lane.site == self.site).collect();
        if !own.is_empty() {
            let number = self.next_attestation.fetch_add(1, Ordering::Relaxed) + 1;
            let mut ids = Vec::with_capacity(own.len());
            for event in own {
                event.attestation = number;
                ids.push(event.id);
            }
            self.put_attestation(&Attestation::sign(&self.keys, number, ids))?;
        }
        let write = Write::Events(events, append.stale_snapshots.to_vec());
        Ok(self.write(stream, write, true))
    }

    fn log_after(&self, after: LogPos, limit: usize, bytes: usize) -> Result<LogPage, StorageError> {
        let log = lock(&self.log);
        let start = usize::try_from(after.0).unwrap_or(usize::MAX).min(log.len());
        let mut taken = 0;
        let events: Vec<Event> = log[start..]
            .iter()
            .take(limit)
            .take_while(|event| {
                let more = taken < bytes;
                taken += event.size();
                more
            })
            .cloned()
            .collect();
        // Positions are indices + 1, so `len` events never overflow a u64.
        let last = LogPos(after.0.saturating_add(u64::try_from(events.len()).unwrap_or(u64::MAX)));
        Ok(LogPage { events, last })
    }

    fn log_end(&self) -> LogPos {
        LogPos(u64::try_from(lock(&self.log).len()).unwrap_or(u64::MAX))
    }

    fn watch_log_end(&self) -> watch::Receiver<LogPos> {
        match lock(&self.log_watch).as_ref() {
            Some(log_watch) => log_watch.subscribe(),
            None => watch::channel(self.log_end()).1, // closed: its sender is gone already
        }
    }

    /// Ends the site-wide subscriptions; everything else goes on working (nothing to
    /// release).
    fn close(&self) {
        lock(&self.log_watch).take();
    }

    fn replicated(&self, peer: SiteId) -> Result<Replicated, StorageError> {
        Ok(lock(&self.replicated).get(&peer).cloned().unwrap_or_default())
    }

    fn set_replicated(&self, peer: SiteId, held: &Replicated) -> Result<(), StorageError> {
        lock(&self.replicated).insert(peer, held.clone());
        Ok(())
    }

    fn put_snapshot(
        &self,
        stream: StreamId,
        key: OrderKey,
        view: &[u8],
        drop: &[OrderKey],
    ) -> Result<(), StorageError> {
        self.write(stream, Write::Snapshot(key, view.to_vec(), drop.to_vec()), false);
        Ok(())
    }

    fn snapshots_from(&self, stream: StreamId, from: OrderKey) -> Result<Vec<OrderKey>, StorageError> {
        Ok(lock(&self.streams)
            .get(&stream)
            .map(|s| s.snapshots.range(from..).map(|(k, _)| *k).collect())
            .unwrap_or_default())
    }

    fn key_at(&self, stream: StreamId, lane: Lane, seq: Seq) -> Result<Option<OrderKey>, StorageError> {
        Ok(lock(&self.streams).get(&stream).and_then(|s| s.index.get(&(lane, seq)).copied()))
    }

    fn frontier(&self, stream: StreamId) -> Result<VectorClock, StorageError> {
        Ok(lock(&self.streams).get(&stream).map(MemoryStream::frontier).unwrap_or_default())
    }

    fn lane_events(&self, lane: Lane, after: Seq, limit: usize) -> Result<Vec<Event>, StorageError> {
        let streams = lock(&self.streams);
        let Some(state) = streams.get(&lane.stream) else { return Ok(Vec::new()) };
        let keys = (after.0 + 1..).map(|seq| state.index.get(&(lane, Seq(seq)))).map_while(|key| key.copied());
        Ok(keys.take(limit).filter_map(|key| state.log.get(&key).cloned()).collect())
    }

    fn events_from(
        &self,
        stream: StreamId,
        from: Bound<OrderKey>,
        before: Option<OrderKey>,
        limit: usize,
    ) -> Result<Vec<Event>, StorageError> {
        let streams = lock(&self.streams);
        let Some(state) = streams.get(&stream) else { return Ok(Vec::new()) };
        let events = state.log.range((from, Bound::Unbounded)).take_while(|(key, _)| before.is_none_or(|b| **key < b));
        Ok(events.take(limit).map(|(_, e)| e.clone()).collect())
    }

    fn streams_page(&self, after: Option<StreamId>, limit: usize) -> Result<Vec<(StreamId, String)>, StorageError> {
        let streams = lock(&self.streams);
        let from = after.map_or(Bound::Unbounded, Bound::Excluded);
        let stored = streams.range((from, Bound::Unbounded)).filter(|(_, s)| !s.log.is_empty());
        Ok(stored.take(limit).map(|(id, s)| (*id, s.stream_type.clone())).collect())
    }

    fn stream_type(&self, stream: StreamId) -> Result<Option<String>, StorageError> {
        let streams = lock(&self.streams);
        Ok(streams.get(&stream).filter(|s| !s.log.is_empty()).map(|s| s.stream_type.clone()))
    }

    fn put_attestation(&self, attestation: &Attestation) -> Result<(), StorageError> {
        lock(&self.attestations).insert((attestation.site(), attestation.number), attestation.clone());
        Ok(())
    }

    fn attestation(&self, site: SiteId, number: u64) -> Result<Option<Attestation>, StorageError> {
        Ok(lock(&self.attestations).get(&(site, number)).cloned())
    }

    fn stats(&self) -> StorageStats {
        StorageStats {
            commits: self.commits.load(Ordering::Relaxed),
            flushes: self.flushes.load(Ordering::Relaxed),
            signing_ns: 0,
            failure: None,
        }
    }
}
