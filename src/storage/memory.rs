//! [`MemoryStorage`]: the [`Storage`] contract in memory, for tests and simulation.
//!
//! Every commit is durable at once (there is no disk). It keeps the same per-stream
//! contents as the sled implementation, so code above storage cannot tell them apart.

use super::{Append, Commit, Storage, StorageError, StorageStats, StreamRecord};
use crate::event::{Event, OrderKey};
use crate::id::{Lane, Seq, SiteId, StreamId};
use std::collections::{BTreeMap, HashMap};
use std::ops::Bound;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};

/// Storage in memory: nothing survives the process.
#[derive(Debug)]
pub struct MemoryStorage {
    site: SiteId,
    streams: Mutex<HashMap<StreamId, MemoryStream>>,
    commits: AtomicU64,
}

#[derive(Debug, Default)]
struct MemoryStream {
    stream_type: String,
    log: BTreeMap<OrderKey, Event>,
    index: HashMap<(Lane, Seq), OrderKey>,
    snapshots: BTreeMap<OrderKey, Vec<u8>>,
}

impl MemoryStorage {
    /// Empty storage of site `site`.
    pub fn new(site: SiteId) -> Self {
        Self { site, streams: Mutex::new(HashMap::new()), commits: AtomicU64::new(0) }
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<StreamId, MemoryStream>> {
        // A panic while holding the lock leaves whole values behind (every mutation below
        // is a single insert or remove), so a poisoned map is still consistent.
        self.streams.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl Storage for MemoryStorage {
    fn site_id(&self) -> SiteId {
        self.site
    }

    fn open_stream(&self, stream: StreamId, stream_type: &str) -> Result<StreamRecord, StorageError> {
        let mut streams = self.lock();
        let state = streams
            .entry(stream)
            .or_insert_with(|| MemoryStream { stream_type: stream_type.to_owned(), ..MemoryStream::default() });
        if state.stream_type != stream_type {
            return Err(StorageError::TypeMismatch {
                stream,
                stored: state.stream_type.clone(),
                requested: stream_type.to_owned(),
            });
        }
        let mut record = StreamRecord {
            lamport: state.log.keys().next_back().map_or(0, |k| k.lamport),
            snapshot: state.snapshots.iter().next_back().map(|(k, v)| (*k, v.clone())),
            snapshot_keys: state.snapshots.keys().copied().collect(),
            ..StreamRecord::default()
        };
        for (lane, seq) in state.index.keys() {
            if record.frontier.get(*lane) < *seq {
                record.frontier.set(*lane, *seq);
            }
        }
        Ok(record)
    }

    fn append(&self, stream: StreamId, append: Append<'_>) -> Result<(), StorageError> {
        let mut streams = self.lock();
        let state = streams.entry(stream).or_default();
        let key = append.event.order_key();
        state.log.insert(key, append.event.clone());
        state.index.insert((append.event.lane, append.event.seq), key);
        for stale in append.stale_snapshots {
            state.snapshots.remove(stale);
        }
        Ok(())
    }

    fn put_snapshot(
        &self,
        stream: StreamId,
        key: OrderKey,
        view: &[u8],
        drop: &[OrderKey],
    ) -> Result<(), StorageError> {
        let mut streams = self.lock();
        let state = streams.entry(stream).or_default();
        state.snapshots.insert(key, view.to_vec());
        for old in drop {
            state.snapshots.remove(old);
        }
        Ok(())
    }

    fn key_at(&self, stream: StreamId, lane: Lane, seq: Seq) -> Result<Option<OrderKey>, StorageError> {
        Ok(self.lock().get(&stream).and_then(|s| s.index.get(&(lane, seq)).copied()))
    }

    fn events_from(&self, stream: StreamId, from: Bound<OrderKey>, limit: usize) -> Result<Vec<Event>, StorageError> {
        let streams = self.lock();
        let Some(state) = streams.get(&stream) else { return Ok(Vec::new()) };
        Ok(state.log.range((from, Bound::Unbounded)).take(limit).map(|(_, e)| e.clone()).collect())
    }

    fn streams(&self) -> Result<Vec<(StreamId, String)>, StorageError> {
        Ok(self.lock().iter().map(|(id, s)| (*id, s.stream_type.clone())).collect())
    }

    fn commit(&self) -> Commit {
        self.commits.fetch_add(1, Ordering::Relaxed);
        Commit::ready(Ok(()))
    }

    fn stats(&self) -> StorageStats {
        let commits = self.commits.load(Ordering::Relaxed);
        StorageStats { commits, flushes: commits }
    }
}
