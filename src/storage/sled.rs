//! [`SledStorage`]: one sled database per site, one tree per stream, and the group-commit
//! writer thread.
//!
//! Writes are applied to sled by the stream actor that makes them, so that its next read
//! (an equivocation check, a rollback's replay) sees them. Durability is the writer
//! thread's job: stream actors send it commit requests over a bounded crossbeam channel;
//! it takes every request queued, flushes once with sled's blocking `flush` (never
//! `flush_async`, which deadlocks under concurrent use in sled 0.34.7, upstream issue
//! 1308), optionally fsyncs, and only then acknowledges every request of that flush.

use super::{keys, Append, Commit, StorageError, StorageStats, StreamRecord, Storage};
use crate::codec;
use crate::event::{Event, OrderKey};
use crate::id::{Lane, Seq, SiteId, StreamId};
use crate::limits;
use crossbeam::channel::{self, Receiver, Sender, TrySendError};
use std::fs::File;
use std::ops::Bound;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use tokio::sync::oneshot;

/// What a write survives once acknowledged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Durability {
    /// sled's flush, then `fsync` of the database file. Survives a process crash, a kernel
    /// panic and power loss (on a disk that honours flushes). The default.
    #[default]
    Fsync,
    /// sled's flush only: data is written with `sync_file_range`, which neither flushes
    /// the disk's cache nor the file's size and metadata. Survives a process crash
    /// (SIGKILL, panic); may lose acknowledged writes on power loss or a kernel crash.
    Flush,
}

/// How to open a site's sled database.
#[derive(Debug, Clone)]
pub struct SledConfig {
    /// The database folder; `None` makes a temporary one, deleted when the storage drops.
    pub path: Option<PathBuf>,
    /// sled's page cache in bytes (sled's own default is 1 GiB).
    pub cache_bytes: u64,
    /// What an acknowledged write survives.
    pub durability: Durability,
}

impl Default for SledConfig {
    fn default() -> Self {
        Self { path: None, cache_bytes: limits::SLED_CACHE_BYTES, durability: Durability::default() }
    }
}

impl SledConfig {
    /// The default configuration for a database in `path`.
    pub fn at(path: impl Into<PathBuf>) -> Self {
        Self { path: Some(path.into()), ..Self::default() }
    }
}

/// A site's storage on sled.
///
/// # Examples
/// ```
/// use gundb::storage::{SledStorage, Storage};
/// let storage = SledStorage::temporary()?;
/// let again = storage.site_id();
/// assert_eq!(storage.site_id(), again);
/// # Ok::<(), gundb::storage::StorageError>(())
/// ```
pub struct SledStorage {
    db: sled::Db,
    site: SiteId,
    commits: Sender<oneshot::Sender<Result<(), StorageError>>>,
    writer: Option<JoinHandle<()>>,
    stats: Arc<Counters>,
    #[cfg(feature = "failpoints")]
    failpoints: Arc<failpoints::Failpoints>,
    // Declared last: dropped after the database, so the folder outlives it.
    _temporary: Option<tempfile::TempDir>,
}

#[derive(Default)]
struct Counters {
    commits: AtomicU64,
    flushes: AtomicU64,
}

const SITE_ID_KEY: &[u8] = b"gundb.site_id";
const STREAM_TREE_PREFIX: &[u8] = b"stream:";

impl SledStorage {
    /// Opens (or creates) the database in `path` with the default configuration.
    ///
    /// # Errors
    /// sled cannot open the folder, or the stored site id is damaged.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, StorageError> {
        Self::with_config(SledConfig::at(path.as_ref()))
    }

    /// Opens a database in a fresh temporary folder, deleted on drop.
    ///
    /// # Errors
    /// The folder or the database cannot be created.
    pub fn temporary() -> Result<Self, StorageError> {
        Self::with_config(SledConfig::default())
    }

    /// Opens a database as `config` says.
    ///
    /// # Errors
    /// sled cannot open the folder, or the stored site id is damaged.
    pub fn with_config(config: SledConfig) -> Result<Self, StorageError> {
        let (temporary, path) = match config.path {
            Some(path) => (None, path),
            None => {
                let dir = tempfile::Builder::new().prefix("gundb-").tempdir().map_err(io_error)?;
                let path = dir.path().to_path_buf();
                (Some(dir), path)
            }
        };
        let db = sled::Config::new()
            .path(&path)
            .cache_capacity(config.cache_bytes)
            // We flush on every commit; sled's timer would only add flushes nobody waits for.
            .flush_every_ms(None)
            .open()?;
        let site = load_or_create_site(&db)?;
        let file = match config.durability {
            Durability::Fsync => Some(File::open(path.join("db")).map_err(io_error)?),
            Durability::Flush => None,
        };
        let (commits, requests) = channel::bounded(limits::COMMIT_QUEUE_MAX);
        let stats = Arc::new(Counters::default());
        #[cfg(feature = "failpoints")]
        let failpoints = Arc::new(failpoints::Failpoints::default());
        let writer = {
            let (db, stats) = (db.clone(), Arc::clone(&stats));
            #[cfg(feature = "failpoints")]
            let failpoints = Arc::clone(&failpoints);
            std::thread::Builder::new()
                .name("gundb-commit".into())
                .spawn(move || {
                    let flush = move || {
                        #[cfg(feature = "failpoints")]
                        failpoints.check(&failpoints.flush, "flush")?;
                        flush_durably(&db, file.as_ref())
                    };
                    write_loop(&requests, &stats, flush);
                })
                .map_err(io_error)?
        };
        Ok(Self {
            db,
            site,
            commits,
            writer: Some(writer),
            stats,
            #[cfg(feature = "failpoints")]
            failpoints,
            _temporary: temporary,
        })
    }

    /// Injects faults into this storage's appends and flushes.
    #[cfg(feature = "failpoints")]
    pub fn failpoints(&self) -> &failpoints::Failpoints {
        &self.failpoints
    }

    fn tree(&self, stream: StreamId) -> Result<sled::Tree, StorageError> {
        let mut name = STREAM_TREE_PREFIX.to_vec();
        name.extend_from_slice(stream.as_uuid().as_bytes());
        Ok(self.db.open_tree(name)?)
    }
}

impl Drop for SledStorage {
    fn drop(&mut self) {
        // Closing the channel ends the writer after it acknowledged what was queued.
        let (closed, _) = channel::bounded(1);
        drop(std::mem::replace(&mut self.commits, closed));
        if let Some(writer) = self.writer.take() {
            let _ = writer.join();
        }
    }
}

fn write_loop<F>(requests: &Receiver<oneshot::Sender<Result<(), StorageError>>>, stats: &Counters, flush: F)
where
    F: Fn() -> Result<(), StorageError>,
{
    let mut group = Vec::with_capacity(limits::GROUP_COMMIT_MAX);
    while let Ok(first) = requests.recv() {
        group.push(first);
        while group.len() < limits::GROUP_COMMIT_MAX {
            match requests.try_recv() {
                Ok(ack) => group.push(ack),
                Err(_) => break,
            }
        }
        let result = flush();
        stats.flushes.fetch_add(1, Ordering::Relaxed);
        for ack in group.drain(..) {
            // A requester that went away no longer needs the answer.
            let _ = ack.send(result.clone());
        }
    }
}

fn flush_durably(db: &sled::Db, file: Option<&File>) -> Result<(), StorageError> {
    db.flush().map_err(|e| StorageError::Flush(e.to_string()))?;
    if let Some(file) = file {
        file.sync_all().map_err(|e| StorageError::Flush(format!("fsync: {e}")))?;
    }
    Ok(())
}

fn load_or_create_site(db: &sled::Db) -> Result<SiteId, StorageError> {
    if let Some(bytes) = db.get(SITE_ID_KEY)? {
        let uuid = uuid::Uuid::from_slice(&bytes).map_err(|e| StorageError::Corrupt(format!("site id: {e}")))?;
        return Ok(SiteId(uuid));
    }
    let site = SiteId::random();
    db.insert(SITE_ID_KEY, site.as_uuid().as_bytes())?;
    // A site id is created once: make it durable before anything can depend on it.
    db.flush()?;
    Ok(site)
}

fn io_error(error: std::io::Error) -> StorageError {
    StorageError::Sled(error.to_string())
}

impl From<sled::Error> for StorageError {
    fn from(error: sled::Error) -> Self {
        StorageError::Sled(error.to_string())
    }
}

fn order_key(bytes: &[u8]) -> Result<OrderKey, StorageError> {
    OrderKey::from_bytes(bytes).ok_or_else(|| StorageError::Corrupt(format!("order key of {} bytes", bytes.len())))
}

impl Storage for SledStorage {
    fn site_id(&self) -> SiteId {
        self.site
    }

    fn open_stream(&self, stream: StreamId, stream_type: &str) -> Result<StreamRecord, StorageError> {
        let tree = self.tree(stream)?;
        match tree.get(keys::TYPE)? {
            Some(stored) if stored != stream_type.as_bytes() => {
                return Err(StorageError::TypeMismatch {
                    stream,
                    stored: String::from_utf8_lossy(&stored).into_owned(),
                    requested: stream_type.to_owned(),
                })
            }
            Some(_) => {}
            // Not flushed here: a stream with no durable event has nothing to lose.
            None => drop(tree.insert(keys::TYPE, stream_type.as_bytes())?),
        }
        let mut record = StreamRecord::default();
        for entry in tree.scan_prefix([keys::FRONTIER]) {
            let (key, value) = entry?;
            let site = uuid::Uuid::from_slice(&key[1..]).map_err(|e| StorageError::Corrupt(e.to_string()))?;
            let seq = u64::from_be_bytes(value.as_ref().try_into().map_err(|_| StorageError::Corrupt("frontier".into()))?);
            record.frontier.set(Lane::new(SiteId(site), stream), Seq(seq));
        }
        if let Some(entry) = tree.scan_prefix([keys::EVENT]).next_back() {
            record.lamport = order_key(&entry?.0[1..])?.lamport;
        }
        for entry in tree.scan_prefix([keys::SNAPSHOT]) {
            let (key, value) = entry?;
            record.snapshot_keys.push(order_key(&key[1..])?);
            record.snapshot = Some((order_key(&key[1..])?, value.to_vec()));
        }
        Ok(record)
    }

    fn append(&self, stream: StreamId, append: Append<'_>) -> Result<(), StorageError> {
        #[cfg(feature = "failpoints")]
        self.failpoints.check(&self.failpoints.append, "append")?;
        let event = append.event;
        let key = event.order_key();
        let mut batch = sled::Batch::default();
        batch.insert(&keys::event(&key)[..], codec::encode(event)?);
        batch.insert(&keys::index(event.lane, event.seq)[..], &key.to_bytes()[..]);
        batch.insert(&keys::frontier(event.lane)[..], &event.seq.0.to_be_bytes()[..]);
        for stale in append.stale_snapshots {
            batch.remove(&keys::snapshot(stale)[..]);
        }
        self.tree(stream)?.apply_batch(batch)?;
        Ok(())
    }

    fn put_snapshot(&self, stream: StreamId, key: OrderKey, view: &[u8], drop: &[OrderKey]) -> Result<(), StorageError> {
        let mut batch = sled::Batch::default();
        batch.insert(&keys::snapshot(&key)[..], view);
        for old in drop {
            batch.remove(&keys::snapshot(old)[..]);
        }
        self.tree(stream)?.apply_batch(batch)?;
        Ok(())
    }

    fn key_at(&self, stream: StreamId, lane: Lane, seq: Seq) -> Result<Option<OrderKey>, StorageError> {
        match self.tree(stream)?.get(keys::index(lane, seq))? {
            Some(bytes) => Ok(Some(order_key(&bytes)?)),
            None => Ok(None),
        }
    }

    fn events_from(&self, stream: StreamId, from: Bound<OrderKey>, limit: usize) -> Result<Vec<Event>, StorageError> {
        let start = match from {
            Bound::Included(key) => Bound::Included(keys::event(&key).to_vec()),
            Bound::Excluded(key) => Bound::Excluded(keys::event(&key).to_vec()),
            Bound::Unbounded => Bound::Included(vec![keys::EVENT]),
        };
        let end = Bound::Excluded(vec![keys::EVENT + 1]);
        self.tree(stream)?
            .range::<Vec<u8>, _>((start, end))
            .take(limit)
            .map(|entry| Ok(codec::decode(&entry?.1)?))
            .collect()
    }

    fn streams(&self) -> Result<Vec<(StreamId, String)>, StorageError> {
        let mut streams = Vec::new();
        for name in self.db.tree_names() {
            let Some(id) = name.strip_prefix(STREAM_TREE_PREFIX) else { continue };
            let id = uuid::Uuid::from_slice(id).map_err(|e| StorageError::Corrupt(e.to_string()))?;
            let tree = self.db.open_tree(&name)?;
            let stream_type = tree.get(keys::TYPE)?.map(|t| String::from_utf8_lossy(&t).into_owned()).unwrap_or_default();
            streams.push((StreamId(id), stream_type));
        }
        Ok(streams)
    }

    fn commit(&self) -> Commit {
        self.stats.commits.fetch_add(1, Ordering::Relaxed);
        let (ack, done) = oneshot::channel();
        match self.commits.try_send(ack) {
            Ok(()) => Commit::waiting(done),
            // Backpressure: the writer drains the queue without waiting on anyone, so this
            // wait is bounded by one flush.
            Err(TrySendError::Full(ack)) => match self.commits.send(ack) {
                Ok(()) => Commit::waiting(done),
                Err(_) => Commit::ready(Err(StorageError::Closed)),
            },
            Err(TrySendError::Disconnected(_)) => Commit::ready(Err(StorageError::Closed)),
        }
    }

    fn stats(&self) -> StorageStats {
        StorageStats {
            commits: self.stats.commits.load(Ordering::Relaxed),
            flushes: self.stats.flushes.load(Ordering::Relaxed),
        }
    }
}

impl std::fmt::Debug for SledStorage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SledStorage").field("site", &self.site).finish_non_exhaustive()
    }
}

/// Fault injection for tests (the `failpoints` feature).
#[cfg(feature = "failpoints")]
pub mod failpoints {
    use super::StorageError;
    use std::sync::atomic::{AtomicU32, Ordering};

    /// Counters of faults to inject: each one fails that many of the next calls.
    #[derive(Debug, Default)]
    pub struct Failpoints {
        /// Appends to fail.
        pub append: AtomicU32,
        /// Flushes to fail.
        pub flush: AtomicU32,
    }

    impl Failpoints {
        pub(super) fn check(&self, counter: &AtomicU32, what: &'static str) -> Result<(), StorageError> {
            let fail = counter.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1)).is_ok();
            if fail {
                Err(StorageError::Injected(what))
            } else {
                Ok(())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicBool;

    /// Requests queued while a flush runs are acknowledged together by the next flush,
    /// and only after it returned.
    #[test]
    fn one_flush_acknowledges_every_queued_request() {
        let (sender, requests) = channel::bounded(limits::COMMIT_QUEUE_MAX);
        let mut acks = Vec::new();
        for _ in 0..100 {
            let (ack, done) = oneshot::channel();
            sender.send(ack).unwrap();
            acks.push(done);
        }
        drop(sender);
        let flushed = Arc::new(AtomicBool::new(false));
        let stats = Counters::default();
        let mut receivers = acks;
        let seen = Arc::clone(&flushed);
        write_loop(&requests, &stats, move || {
            seen.store(true, Ordering::SeqCst);
            Ok(())
        });
        assert_eq!(stats.flushes.load(Ordering::SeqCst), 1);
        assert!(flushed.load(Ordering::SeqCst));
        for done in &mut receivers {
            assert_eq!(done.try_recv().unwrap(), Ok(()));
        }
    }

    #[test]
    fn a_failed_flush_fails_every_request_it_carried() {
        let (sender, requests) = channel::bounded(8);
        let (ack, mut done) = oneshot::channel();
        sender.send(ack).unwrap();
        drop(sender);
        write_loop(&requests, &Counters::default(), || Err(StorageError::Flush("disk on fire".into())));
        assert!(matches!(done.try_recv().unwrap(), Err(StorageError::Flush(_))));
    }

    #[test]
    fn the_site_id_is_created_once_and_kept() {
        let dir = tempfile::tempdir().unwrap();
        let first = SledStorage::open(dir.path()).unwrap().site_id();
        let again = SledStorage::open(dir.path()).unwrap().site_id();
        assert_eq!(first, again);
        assert_ne!(first, SledStorage::temporary().unwrap().site_id());
    }
}
