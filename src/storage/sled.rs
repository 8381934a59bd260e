//! [`SledStorage`]: one sled database per site, every stream in one data tree (the layout
//! is in [`super::layout`]), and the group-commit writer thread.
//!
//! Every write goes to one writer thread over a bounded crossbeam channel, in order; a
//! full channel refuses the write ([`StorageError::Busy`]) rather than block the caller's
//! arbiter. The writer takes everything queued, applies the writes (merged into one atomic
//! sled batch, whatever the number of streams they touch), flushes once with sled's blocking `flush` (never `flush_async`,
//! which deadlocks under concurrent use in sled 0.34.7, upstream issue 1308), optionally
//! fsyncs, and only then acknowledges every append of that group. Applying on the writer
//! rather than in the stream actors matters for speed: a sled write made while a flush is
//! running waits for it (about 110 µs per write measured), which would stall the actor's
//! arbiter.
//!
//! The writer fails stop: after one failed write or flush it applies nothing more, and
//! every later call on the storage returns that failure, so a lane can never be stored
//! with a gap and nothing sled holds only in memory is read. Reopen the database to
//! recover what was durable.

use super::blocks::Blocks;
use super::layout::{self, DATA_TREE, FORMAT_KEY, SITE_ID_KEY, STORAGE_FORMAT};
use super::{
    Append, Claims, Commit, LogPage, Replicated, Storage, StorageError, StorageStats, StreamRecord, WantedPage,
};
use crate::attest::Attestation;
use crate::clock::VectorClock;
use crate::error::Cause;
use crate::event::{heads_of, Event, OrderKey};
use crate::id::{EventId, Lane, LogPos, Seq, SiteId, StreamId};
use crate::keys::SiteKeys;
use crate::limits;
use crossbeam::channel::{self, Receiver, Sender, TrySendError};
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::fs::File;
use std::ops::Bound;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::thread::JoinHandle;
use std::time::Instant;
use tokio::sync::oneshot;
use tokio::sync::watch;

/// What a write survives once acknowledged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Durability {
    /// sled's flush, then `fsync` of the database file. Survives a process crash, a kernel
    /// panic and power loss (on a disk that honours flushes). The default.
    #[default]
    Fsync,
    /// sled's flush only: data is written with `sync_file_range`, which neither flushes
    /// the disk's cache nor the file's size and metadata. Survives a process crash
    /// (SIGKILL, panic); may lose acknowledged writes on power loss or a kernel crash, and
    /// then reuse their seqs, which other sites that got them see as equivocation.
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
    ///
    /// Measured cost (16 writers, this project's CI machine): `Fsync` is about 38% slower
    /// than `Flush`; see `docs/BENCHMARKS.md`.
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
    /// Every stream's records, as key prefixes; `None` once closed ([`Storage::close`]),
    /// so that the database is released even while handles to this storage remain.
    data: RwLock<Option<sled::Tree>>,
    site: SiteId,
    keys: SiteKeys,
    /// Nanoseconds the writer spent signing ([`StorageStats::signing_ns`]).
    signing_ns: Arc<AtomicU64>,
    /// Streams opened whose type is not stored yet: it is written with their first event,
    /// by the writer, rather than by the opening actor (a sled write waits for a running
    /// flush). An entry lives from `open_stream` to that stream's first append or release.
    new_types: Mutex<HashMap<StreamId, String>>,
    /// The writer's queue; `None` once closed, and while the database is reopened.
    ops: RwLock<Option<Sender<Op>>>,
    /// The writer thread; its lock also orders closing and reopening.
    writer: Mutex<Option<JoinHandle<()>>>,
    /// Set by [`Storage::close`]: the database is not reopened after that.
    closed: std::sync::atomic::AtomicBool,
    /// The database folder, its cache and durability: how to open it again
    /// ([`Storage::reopen`]).
    path: PathBuf,
    cache_bytes: u64,
    durability: Durability,
    stats: Arc<Counters>,
    claims: Claims,
    recent_keys: RecentKeys,
    #[cfg(feature = "failpoints")]
    failpoints: Arc<failpoints::Failpoints>,
    // Declared last: dropped after the database, so the folder outlives it.
    _temporary: Option<tempfile::TempDir>,
}

/// The order keys of the blocks [`Storage::key_at`] decoded last. Copies of a peer's events
/// (relayed by another peer) arrive in lane order, and each is checked against the event
/// stored at its slot: one decoded block then answers for the copies after it, instead of
/// decoding the block once per copy. Blocks never change once written.
#[derive(Default)]
struct RecentKeys(Mutex<VecDeque<(Lane, Seq, Vec<OrderKey>)>>);

impl RecentKeys {
    fn clear(&self) {
        lock(&self.0).clear();
    }

    /// The order key at (lane, seq), if a remembered block holds it.
    fn get(&self, lane: Lane, seq: Seq) -> Option<OrderKey> {
        lock(&self.0).iter().find_map(|(held, first, keys)| {
            let index = usize::try_from(seq.0.checked_sub(first.0)?).ok()?;
            (*held == lane).then(|| keys.get(index).copied()).flatten()
        })
    }

    /// Remembers the keys of `lane`'s decoded block of consecutive events.
    fn put(&self, lane: Lane, block: &[Event]) {
        let Some(first) = block.first() else { return };
        let mut recent = lock(&self.0);
        recent.push_front((lane, first.seq, block.iter().map(Event::order_key).collect()));
        recent.truncate(limits::RECENT_BLOCKS_MAX);
    }
}

/// What the writer thread is asked to do, in order: write these events (to their lanes'
/// blocks) and these keys atomically, and (when an ack is given) acknowledge once durable.
struct Op {
    events: Vec<Encoded>,
    writes: Vec<Write>,
    ack: Option<Ack>,
}

type Ack = oneshot::Sender<Result<(), StorageError>>;

/// One event encoded for its lane's block.
struct Encoded {
    lane: Lane,
    seq: Seq,
    id: EventId,
    /// The attestation covering it: the peer's, for a peer's event; set by the writer
    /// for this site's own.
    attestation: u64,
    bytes: Vec<u8>,
}

/// What the writer signs this site's own events with.
struct Signer {
    site: SiteId,
    keys: Arc<SiteKeys>,
    /// Nanoseconds spent signing, for [`StorageStats::signing_ns`].
    spent_ns: Arc<AtomicU64>,
}

/// One key written or removed.
enum Write {
    Put(Vec<u8>, Vec<u8>),
    Remove(Vec<u8>),
}

/// The writes of one group, merged into few sled batches: one batch of many events costs
/// far less than many batches (about 21 µs against 41 µs per event measured), and each
/// lane's events in a batch go to one block, one sled record. A batch is closed once it
/// holds `limits::SLED_BATCH_WRITES_MAX` writes, between two operations, so every
/// operation stays atomic.
#[derive(Default)]
struct Group<'a> {
    /// Signs this site's own events of each batch (none in tests of the writer alone).
    signer: Option<&'a Signer>,
    /// A failure while closing a batch: the group is not applied.
    error: Option<StorageError>,
    /// The log position of the last event written (0: none yet).
    log_last: u64,
    /// Batches closed, in order.
    closed: Vec<sled::Batch>,
    /// The batch being filled: events by lane, in seq order, and other keys in order.
    lanes: BTreeMap<Lane, Vec<Encoded>>,
    writes: Vec<Write>,
    open_writes: usize,
    acks: Vec<Ack>,
    ops: usize,
}

impl Group<'_> {
    fn add(&mut self, op: Op) {
        self.ops += 1;
        self.acks.extend(op.ack);
        if self.open_writes >= limits::SLED_BATCH_WRITES_MAX {
            self.close();
        }
        self.open_writes += op.events.len() + op.writes.len();
        for event in op.events {
            self.lanes.entry(event.lane).or_default().push(event);
        }
        self.writes.extend(op.writes);
    }

    /// Closes the batch being filled: each lane's events become blocks of consecutive seqs
    /// and at most `limits::BLOCK_BYTES_MAX` bytes (plus the event that fills one).
    fn close(&mut self) {
        if self.lanes.is_empty() && self.writes.is_empty() {
            return;
        }
        let mut batch = sled::Batch::default();
        // This site's own events of the batch are signed together, under the number of the
        // batch's first log position (unique: positions are never reused).
        let number = self.log_last + 1;
        if let Some(signer) = self.signer {
            let mut own = Vec::new();
            for event in self.lanes.iter_mut().filter(|(lane, _)| lane.site == signer.site).flat_map(|(_, e)| e) {
                event.attestation = number;
                own.push(event.id);
            }
            if !own.is_empty() {
                let started = std::time::Instant::now();
                let attestation = Attestation::sign(&signer.keys, number, own);
                let spent = u64::try_from(started.elapsed().as_nanos()).unwrap_or(u64::MAX);
                signer.spent_ns.fetch_add(spent, Ordering::Relaxed);
                match layout::encode_attestation(&attestation) {
                    Ok(bytes) => batch.insert(&layout::attestation_key(signer.site, number)[..], bytes),
                    Err(error) => {
                        self.error.get_or_insert(error);
                    }
                }
            }
        }
        let mut blocks = Vec::new();
        let mut count: u32 = 0;
        for (lane, events) in std::mem::take(&mut self.lanes) {
            let mut start = 0;
            let mut bytes = 0;
            for (index, event) in events.iter().enumerate() {
                bytes += event.bytes.len();
                let last = events.get(index + 1).is_none_or(|next| {
                    // A lane's appends come in seq order; a gap would be a caller's bug, and
                    // a block of non-consecutive seqs would not read back.
                    debug_assert_eq!(next.seq, event.seq.next(), "a lane's events out of order");
                    next.seq != event.seq.next() || bytes >= limits::BLOCK_BYTES_MAX
                });
                if last {
                    let items = events[start..=index].iter().map(|e| (e.attestation, e.bytes.as_slice()));
                    match layout::join_block(items) {
                        Ok(block) => {
                            let key = layout::block_key(lane, event.seq);
                            batch.insert(&key[..], block);
                            blocks.push(key);
                        }
                        Err(error) => {
                            self.error.get_or_insert(error);
                        }
                    }
                    start = index + 1;
                    bytes = 0;
                }
            }
            // A batch closes at SLED_BATCH_WRITES_MAX writes plus one operation's, far
            // below u32::MAX events.
            count = count.saturating_add(u32::try_from(events.len()).unwrap_or(u32::MAX));
        }
        if count > 0 {
            // The batch's events are the log's next `count` positions, in canonical order.
            batch.insert(&layout::log_key(LogPos(self.log_last + 1))[..], layout::join_log_entry(count, &blocks));
            self.log_last += u64::from(count);
        }
        // Later writes to a key replace earlier ones, as if applied one by one.
        for write in self.writes.drain(..) {
            match write {
                Write::Put(key, value) => batch.insert(key, value),
                Write::Remove(key) => batch.remove(key),
            }
        }
        self.closed.push(batch);
        self.open_writes = 0;
    }

    /// The group's batches, in the order they must be applied.
    fn batches(&mut self) -> Vec<sled::Batch> {
        self.close();
        std::mem::take(&mut self.closed)
    }
}

/// State the writer thread shares with the storage handle.
#[derive(Default)]
struct Counters {
    commits: AtomicU64,
    flushes: AtomicU64,
    /// The log position the writer gave the last event (0: none yet).
    log_last: AtomicU64,
    /// The last log position that is durable: what the log may be read up to.
    log_durable: AtomicU64,
    /// Tells site-wide subscriptions each time `log_durable` moves; taken when the storage
    /// closes, which ends them. `None` in a writer's tests.
    log_watch: Mutex<Option<watch::Sender<LogPos>>>,
    /// Times the database was reopened after a failure ([`Storage::generation`]).
    generation: AtomicU64,
    /// The failure that stopped the writer. Once set, every storage call returns it: what
    /// sled holds in memory may be ahead of the disk, so nothing may be read or written
    /// until the database is reopened.
    failed: std::sync::Mutex<Option<StorageError>>,
}

impl Counters {
    /// The log is durable up to `position`: readers may read it, subscriptions are told.
    fn publish_durable(&self, position: u64) {
        self.log_durable.store(position, Ordering::Release);
        if let Some(log_watch) = lock(&self.log_watch).as_ref() {
            log_watch.send_if_modified(|end| std::mem::replace(end, LogPos(position)) != LogPos(position));
        }
    }

    fn fail(&self, error: &StorageError) {
        let mut failed = self.failed.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if failed.is_none() {
            tracing::error!(
                %error,
                "storage failed: this site refuses every read and write until its database is reopened, which \
                 it retries with backoff; nothing acknowledged before is lost"
            );
            *failed = Some(error.clone());
        }
    }

    /// The database was reopened: calls are served again.
    fn heal(&self) {
        let mut failed = self.failed.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(error) = failed.take() {
            self.generation.fetch_add(1, Ordering::AcqRel);
            tracing::info!(%error, "storage reopened after a failure; serving again");
        }
    }

    fn check(&self) -> Result<(), StorageError> {
        match &*self.failed.lock().unwrap_or_else(std::sync::PoisonError::into_inner) {
            Some(error) => Err(error.clone()),
            None => Ok(()),
        }
    }
}

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
    /// sled cannot open the folder, the stored site id is damaged, or the database was
    /// written in another storage format ([`StorageError::Format`]).
    pub fn with_config(config: SledConfig) -> Result<Self, StorageError> {
        let (temporary, path) = match config.path {
            Some(path) => (None, path),
            None => {
                let dir = tempfile::Builder::new().prefix("gundb-").tempdir().map_err(io_error)?;
                let path = dir.path().to_path_buf();
                (Some(dir), path)
            }
        };
        let db = open_db(&path, config.cache_bytes)?;
        let (site, keys) = load_or_create_site(&db, &path)?;
        let data = db.open_tree(DATA_TREE)?;
        let storage = Self {
            data: RwLock::new(None),
            site,
            keys,
            signing_ns: Arc::new(AtomicU64::new(0)),
            new_types: Mutex::new(HashMap::new()),
            ops: RwLock::new(None),
            writer: Mutex::new(None),
            closed: std::sync::atomic::AtomicBool::new(false),
            path,
            cache_bytes: config.cache_bytes,
            durability: config.durability,
            stats: Arc::new(Counters { log_watch: Mutex::new(Some(watch::Sender::default())), ..Counters::default() }),
            claims: Claims::default(),
            recent_keys: RecentKeys::default(),
            #[cfg(feature = "failpoints")]
            failpoints: Arc::new(failpoints::Failpoints::default()),
            _temporary: temporary,
        };
        storage.start(&mut lock(&storage.writer), &db, data)?;
        Ok(storage)
    }

    /// Starts a writer thread on `db` and serves `data`: when the storage opens, and each
    /// time it is reopened after a failure.
    fn start(&self, writer: &mut Option<JoinHandle<()>>, db: &sled::Db, data: sled::Tree) -> Result<(), StorageError> {
        let log_last = last_log_position(&data)?;
        self.stats.log_last.store(log_last.0, Ordering::Release);
        self.stats.publish_durable(log_last.0);
        let mut fsync = match self.durability {
            Durability::Fsync => Some(Fsync::new(&self.path)?),
            Durability::Flush => None,
        };
        let (ops, queue) = channel::bounded(limits::COMMIT_QUEUE_MAX);
        let (db, tree, stats) = (db.clone(), data.clone(), Arc::clone(&self.stats));
        let signer =
            Signer { site: self.site, keys: Arc::new(self.keys.clone()), spent_ns: Arc::clone(&self.signing_ns) };
        #[cfg(feature = "failpoints")]
        let failpoints = Arc::clone(&self.failpoints);
        let handle = std::thread::Builder::new()
            .name("gundb-commit".into())
            .spawn(move || {
                write_loop(
                    &queue,
                    &stats,
                    Some(&signer),
                    |batch| {
                        #[cfg(feature = "failpoints")]
                        failpoints.check(failpoints::Fault::Batch)?;
                        Ok(tree.apply_batch(batch)?)
                    },
                    || {
                        #[cfg(feature = "failpoints")]
                        failpoints.check(failpoints::Fault::Flush)?;
                        flush_durably(&db, fsync.as_mut(), || {
                            #[cfg(feature = "failpoints")]
                            failpoints.check(failpoints::Fault::Fsync)?;
                            Ok(())
                        })
                    },
                );
            })
            .map_err(io_error)?;
        *writer = Some(handle);
        *self.ops.write().unwrap_or_else(PoisonError::into_inner) = Some(ops);
        *self.data.write().unwrap_or_else(PoisonError::into_inner) = Some(data);
        Ok(())
    }

    /// Stops the writer (after it answered what was queued) and drops this storage's
    /// handles to the database, which sled then releases.
    fn stop(&self, writer: &mut Option<JoinHandle<()>>) {
        // Dropping the queue's sender ends the writer; it drops its handles as it ends.
        drop(self.ops.write().unwrap_or_else(PoisonError::into_inner).take());
        if let Some(writer) = writer.take() {
            let _ = writer.join(); // a writer that panicked has nothing left to write
        }
        drop(self.data.write().unwrap_or_else(PoisonError::into_inner).take());
    }

    /// Injects faults into this storage's appends and flushes.
    #[cfg(feature = "failpoints")]
    pub fn failpoints(&self) -> &failpoints::Failpoints {
        &self.failpoints
    }

    /// The stored type of `stream`, or the one it was opened with if no event is stored yet.
    fn type_of(&self, stream: StreamId) -> Result<Option<String>, StorageError> {
        if let Some(stored) = self.data()?.get(layout::type_key(stream))? {
            return Ok(Some(String::from_utf8_lossy(&stored).into_owned()));
        }
        Ok(lock(&self.new_types).get(&stream).cloned())
    }

    /// Declares `stream` of `stream_type` (see [`Storage::declare_stream`]); true when it
    /// holds events. The type is written with the first event, so a stream without one
    /// is only remembered, until its claim is released.
    fn declare(&self, stream: StreamId, stream_type: &str) -> Result<bool, StorageError> {
        self.check(Access::Read)?;
        let mismatch =
            |stored: String| StorageError::TypeMismatch { stream, stored, requested: stream_type.to_owned() };
        if let Some(stored) = self.data()?.get(layout::type_key(stream))? {
            if stored != stream_type.as_bytes() {
                return Err(mismatch(String::from_utf8_lossy(&stored).into_owned()));
            }
            return Ok(true);
        }
        let mut new_types = lock(&self.new_types);
        match new_types.get(&stream) {
            Some(declared) if declared != stream_type => Err(mismatch(declared.clone())),
            Some(_) => Ok(false),
            None => {
                new_types.insert(stream, stream_type.to_owned());
                Ok(false)
            }
        }
    }

    /// The log after `after`: at most `limit` positions, ending with the event that
    /// brings the bytes read to `bytes`; with `wanted`, only the events it keeps, and an
    /// entry none of whose blocks it keeps (at the entry's last position: `wanted` keeps
    /// every later position once it keeps one) is passed over unread.
    fn read_log(
        &self,
        after: LogPos,
        limit: usize,
        bytes: usize,
        wanted: Option<&dyn Fn(SiteId, LogPos) -> bool>,
    ) -> Result<WantedPage, StorageError> {
        self.check(Access::Read)?;
        let durable = self.stats.log_durable.load(Ordering::Acquire);
        let mut page = WantedPage { events: Vec::new(), last: after };
        if after.0 >= durable || limit == 0 {
            return Ok(page);
        }
        // The entry holding `after + 1` starts at or before it.
        let from = layout::log_key(LogPos(after.0 + 1));
        let start = match self.data()?.range(&layout::LOG_PREFIX[..]..=&from[..]).next_back() {
            Some(entry) => entry?.0,
            None => sled::IVec::from(&from[..]),
        };
        let end = layout::prefix_end(&layout::LOG_PREFIX);
        let mut types: HashMap<StreamId, String> = HashMap::new();
        let (mut passed, mut taken) = (0, 0);
        for entry in self.data()?.range(start..sled::IVec::from(end)) {
            let (key, value) = entry?;
            let first = layout::parse_log_key(&key)?;
            if first.0 > durable {
                break; // written, not yet flushed
            }
            let (count, blocks) = layout::split_log_entry(&value)?;
            if let Some(wanted) = wanted {
                let entry_last = LogPos(first.0 + count.saturating_sub(1));
                let mut unwanted = true;
                for block in blocks.clone() {
                    unwanted &= !wanted(layout::parse_block_ref(block)?.0.site, entry_last);
                }
                if unwanted && entry_last > after {
                    // Its positions from the page's next one on, up to the limit.
                    let next = first.0.max(after.0 + 1);
                    let covered = usize::try_from(entry_last.0 - next + 1).unwrap_or(usize::MAX);
                    let room = limit - passed;
                    page.last = LogPos(next + u64::try_from(covered.min(room)).unwrap_or(u64::MAX) - 1);
                    passed += covered.min(room);
                    if passed == limit {
                        return Ok(page);
                    }
                    continue;
                }
            }
            let mut events = Vec::new();
            for block in blocks {
                let (lane, last) = layout::parse_block_ref(block)?;
                let stream_type = match types.get(&lane.stream) {
                    Some(known) => known.clone(),
                    None => {
                        let known = self.type_of(lane.stream)?.unwrap_or_default();
                        types.insert(lane.stream, known.clone());
                        known
                    }
                };
                let Some(bytes) = self.data()?.get(block)? else {
                    return Err(StorageError::Corrupt(format!(
                        "log entry {first} names a missing block of {lane} at {last}"
                    )));
                };
                events.extend(layout::decode_block(lane, &stream_type, &bytes)?);
            }
            // Canonical order is causal: what an event depends on comes first.
            events.sort_by_key(Event::order_key);
            for (pos, event) in (first.0..).map(LogPos).zip(events) {
                if pos <= after {
                    continue;
                }
                passed += 1;
                page.last = pos;
                if wanted.is_none_or(|wanted| wanted(event.lane.site, pos)) {
                    taken += event.size();
                    page.events.push((pos, event));
                }
                if passed == limit || taken >= bytes {
                    return Ok(page);
                }
            }
        }
        Ok(page)
    }

    /// `stream`'s blocks, read as its stored type.
    fn blocks<'a>(&self, stream: StreamId, stream_type: &'a str) -> Result<Blocks<'a>, StorageError> {
        Ok(Blocks { data: self.data()?, stream, stream_type })
    }

    /// The data tree, unless the storage is closed.
    fn data(&self) -> Result<sled::Tree, StorageError> {
        self.data.read().unwrap_or_else(PoisonError::into_inner).clone().ok_or(StorageError::Closed)
    }
}

impl Drop for SledStorage {
    fn drop(&mut self) {
        self.close();
    }
}

/// The writer thread: applies queued writes in order and acknowledges commits in groups,
/// each batch's own events signed by `signer`.
fn write_loop<A, F>(queue: &Receiver<Op>, stats: &Counters, signer: Option<&Signer>, mut apply: A, mut flush: F)
where
    A: FnMut(sled::Batch) -> Result<(), StorageError>,
    F: FnMut() -> Result<(), StorageError>,
{
    let mut failed: Option<StorageError> = None;
    while let Ok(first) = queue.recv() {
        let mut group = Group { signer, log_last: stats.log_last.load(Ordering::Acquire), ..Group::default() };
        group.add(first);
        while group.ops < limits::GROUP_OPS_MAX {
            match queue.try_recv() {
                Ok(op) => group.add(op),
                Err(_) => break,
            }
        }
        let batches = group.batches();
        if let Some(error) = group.error.take() {
            failed.get_or_insert(error);
        }
        for batch in batches {
            if failed.is_none() {
                failed = apply(batch).err();
            }
        }
        if group.acks.is_empty() {
            continue; // snapshots only: the next append's flush makes them durable
        }
        stats.log_last.store(group.log_last, Ordering::Release);
        if failed.is_none() {
            failed = flush().err();
            stats.flushes.fetch_add(1, Ordering::Relaxed);
        }
        if failed.is_none() {
            stats.publish_durable(group.log_last);
        }
        if let Some(error) = &failed {
            stats.fail(error);
        }
        let result = failed.clone().map_or(Ok(()), Err);
        stats.commits.fetch_add(group.acks.len() as u64, Ordering::Relaxed);
        for ack in group.acks {
            // A requester that went away no longer needs the answer.
            let _ = ack.send(result.clone());
        }
    }
}

/// sled's flush, then (with `fsync`) the fsyncs; `before_fsync` is where tests inject a
/// failed fsync.
fn flush_durably(
    db: &sled::Db,
    fsync: Option<&mut Fsync>,
    before_fsync: impl FnOnce() -> Result<(), StorageError>,
) -> Result<(), StorageError> {
    db.flush().map_err(|e| StorageError::Flush { step: "sled's flush", cause: Cause::new(e) })?;
    if let Some(fsync) = fsync {
        before_fsync()?;
        fsync.sync().map_err(|e| StorageError::Flush { step: "fsync", cause: Cause::new(e) })?;
    }
    Ok(())
}

/// What `Durability::Fsync` syncs after sled's flush: the database file, and the blob
/// files sled writes (without fsync) for items larger than a quarter segment.
///
/// Blob files are named by their log sequence number, which only grows, and never change
/// once written, so a pass syncs the blobs named past what the pass before the last one
/// saw: each blob is synced in the two passes after it appears, the second covering one
/// that another sled thread was still writing during the first. No file times are read.
/// sled deletes the blobs of items it replaced, also while a pass runs: a blob gone before
/// it could be synced holds nothing that needs it, and is skipped.
struct Fsync {
    db: File,
    /// The database folder: sled renames its page-table snapshots (`snap.*`) into it.
    folder: PathBuf,
    /// The snapshot names the folder held when it was last synced.
    snapshots: Vec<std::ffi::OsString>,
    /// When the snapshot names were last compared.
    names_checked: Instant,
    blobs: PathBuf,
    /// The newest blob the pass before the last one saw (`None`: none yet).
    floor: Option<i64>,
    /// The newest blob the last pass saw.
    newest: Option<i64>,
}

impl Fsync {
    /// Syncs the database folder first: sled created its files in it (a crash before the
    /// new names are durable would lose the whole database).
    fn new(path: &Path) -> Result<Self, StorageError> {
        let db = File::open(path.join("db")).map_err(io_error)?;
        let mut fsync = Self {
            db,
            folder: path.to_owned(),
            snapshots: Vec::new(),
            names_checked: Instant::now(),
            blobs: path.join("blobs"),
            floor: None,
            newest: None,
        };
        fsync.sync_folder().map_err(io_error)?;
        Ok(fsync)
    }

    fn sync(&mut self) -> std::io::Result<()> {
        self.db.sync_all()?;
        // sled renames a new page-table snapshot into place (and deletes the old one)
        // without syncing the folder: a crash could keep neither name, and a reopen would
        // then scan the whole log. That costs reopen time, not acknowledged data, so the
        // names are compared at most every `SNAPSHOT_NAMES_CHECK_EVERY`, not in every pass
        // (two directory reads out of a pass's few syscalls); a sync when they changed.
        if self.names_checked.elapsed() >= limits::SNAPSHOT_NAMES_CHECK_EVERY {
            self.names_checked = Instant::now();
            if self.snapshot_names()? != self.snapshots {
                self.sync_folder()?;
            }
        }
        let entries = match std::fs::read_dir(&self.blobs) {
            Ok(entries) => entries,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(error) => return Err(error),
        };
        let mut newest = self.newest;
        let mut synced = false;
        for entry in entries {
            let name = entry?.file_name();
            let Some(lsn) = name.to_str().and_then(|name| name.parse::<i64>().ok()) else { continue };
            if self.floor.is_some_and(|floor| lsn <= floor) {
                continue;
            }
            match File::open(self.blobs.join(&name)).and_then(|blob| blob.sync_all()) {
                Ok(()) => synced = true,
                Err(error) if error.kind() == std::io::ErrorKind::NotFound => continue, // deleted by sled
                Err(error) => return Err(error),
            }
            newest = newest.max(Some(lsn));
        }
        if synced {
            File::open(&self.blobs)?.sync_all()?; // the new names
        }
        (self.floor, self.newest) = (self.newest, newest);
        Ok(())
    }

    /// The names of sled's page-table snapshots in the folder, sorted.
    fn snapshot_names(&self) -> std::io::Result<Vec<std::ffi::OsString>> {
        let mut names = Vec::new();
        for entry in std::fs::read_dir(&self.folder)? {
            let name = entry?.file_name();
            // `snap.<lsn>`; `snap.<lsn>.generating` is not in place yet.
            if name.to_str().is_some_and(|name| name.starts_with("snap.") && !name.ends_with(".generating")) {
                names.push(name);
            }
        }
        names.sort();
        Ok(names)
    }

    /// Syncs the folder, making the names in it durable, and notes its snapshots.
    fn sync_folder(&mut self) -> std::io::Result<()> {
        let names = self.snapshot_names()?;
        File::open(&self.folder)?.sync_all()?;
        self.snapshots = names;
        Ok(())
    }
}

/// The site id and keys of the database in `path`: for an existing database, after checking
/// its storage format (a refused database is left as it was, no key made) and that the keys
/// beside it are the ones its id was derived from; for an empty one, the keys are made
/// first, then the format and the id derived from them are recorded, durably.
fn load_or_create_site(db: &sled::Db, path: &Path) -> Result<(SiteId, SiteKeys), StorageError> {
    let format = db.get(FORMAT_KEY)?;
    let Some(bytes) = db.get(SITE_ID_KEY)? else {
        if format.is_some() {
            return Err(StorageError::Corrupt("a storage format is recorded but no site id".into()));
        }
        // Keys before the id: a crash between leaves keys that the next open derives from.
        let keys = SiteKeys::load_or_create(path)?;
        let site = keys.site_id();
        let mut batch = sled::Batch::default();
        batch.insert(FORMAT_KEY, &STORAGE_FORMAT.to_be_bytes());
        batch.insert(SITE_ID_KEY, site.as_uuid().as_bytes());
        db.apply_batch(batch)?;
        // A site id is created once: make it durable before anything can depend on it.
        db.flush()?;
        return Ok((site, keys));
    };
    // Version 1 recorded no format: a site id without one is a version-1 database.
    let found = match format {
        None => 1,
        Some(format) => {
            let bytes: [u8; 4] = format
                .as_ref()
                .try_into()
                .map_err(|_| StorageError::Corrupt(format!("storage format record of {} bytes", format.len())))?;
            u32::from_be_bytes(bytes)
        }
    };
    if found != STORAGE_FORMAT {
        return Err(StorageError::Format { path: path.to_path_buf(), found, supported: STORAGE_FORMAT });
    }
    let uuid = uuid::Uuid::from_slice(&bytes).map_err(|e| StorageError::Corrupt(format!("site id: {e}")))?;
    let keys = SiteKeys::load_or_create(path)?;
    if keys.site_id() != SiteId(uuid) {
        return Err(StorageError::Corrupt(format!(
            "the signing key in {path:?} is site {}'s, not this database's site {uuid}: put back the key file \
             {} this database was made with",
            keys.site_id(),
            crate::keys::SIGNING_KEY_FILE
        )));
    }
    Ok((SiteId(uuid), keys))
}

/// Opens the sled database in `path` with gundb's settings and a page cache of `cache_bytes`.
fn open_db(path: &Path, cache_bytes: u64) -> Result<sled::Db, StorageError> {
    Ok(open_waiting_for_lock(
        &sled::Config::new()
            .path(path)
            .cache_capacity(cache_bytes)
            // We flush on every commit; sled's timer would only add flushes nobody waits for.
            .flush_every_ms(None)
            .segment_size(limits::SLED_SEGMENT_BYTES),
    )?)
}

/// Opens `config`'s database, waiting up to [`limits::SLED_LOCK_WAIT`] for its file lock.
/// sled 0.34 releases the lock of a dropped database on a background thread, a moment
/// after the drop (spacejam/sled#1234), so reopening a folder at once (a restart in one
/// process) can find it still taken. A database another process keeps open holds the
/// lock for longer than the wait, and its error comes back as it is.
///
/// # Errors
/// sled's, once the lock is still taken after the wait or on any other failure.
pub fn open_waiting_for_lock(config: &sled::Config) -> sled::Result<sled::Db> {
    let started = std::time::Instant::now();
    let mut pause = limits::SLED_LOCK_RETRY_FIRST;
    loop {
        match config.open() {
            // sled reports the taken lock as `ErrorKind::Other` with this message.
            Err(sled::Error::Io(error))
                if error.to_string().starts_with("could not acquire lock")
                    && started.elapsed() < limits::SLED_LOCK_WAIT =>
            {
                tracing::debug!(%error, "the database's lock is still taken: waiting for it");
                std::thread::sleep(pause);
                pause = (pause * 2).min(limits::SLED_LOCK_RETRY_MAX);
            }
            opened => return opened,
        }
    }
}

/// The position of the last event in the stored log (everything stored is durable when the
/// database opens: sled recovers only what it flushed).
fn last_log_position(data: &sled::Tree) -> Result<LogPos, StorageError> {
    let Some(entry) = data.scan_prefix(layout::LOG_PREFIX).next_back() else { return Ok(LogPos(0)) };
    let (key, value) = entry?;
    let (count, _) = layout::split_log_entry(&value)?;
    Ok(LogPos(layout::parse_log_key(&key)?.0 + count - 1))
}

fn io_error(error: std::io::Error) -> StorageError {
    StorageError::Sled(Cause::new(error))
}

impl From<sled::Error> for StorageError {
    fn from(error: sled::Error) -> Self {
        StorageError::Sled(Cause::new(error))
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Every update is one insert or remove, so a poisoned map is still consistent.
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Storage for SledStorage {
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
        lock(&self.new_types).remove(&stream);
    }

    fn declare_stream(&self, stream: StreamId, stream_type: &str) -> Result<(), StorageError> {
        self.declare(stream, stream_type).map(drop)
    }

    fn open_stream(&self, stream: StreamId, stream_type: &str) -> Result<StreamRecord, StorageError> {
        if !self.declare(stream, stream_type)? {
            return Ok(StreamRecord::default()); // no event stored: nothing to read
        }
        // A lane's last event has its largest Lamport counter, and the heads are among them.
        let blocks = self.blocks(stream, stream_type)?;
        let lanes = blocks.frontier()?;
        let ends = lanes
            .iter()
            .map(|&(lane, last)| {
                blocks.event(lane, last)?.ok_or_else(|| StorageError::Corrupt(format!("{lane} ends empty")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let lamport = ends.iter().map(|end| end.lamport).max().unwrap_or(0);
        let heads = heads_of(&ends);
        let snapshots = self
            .data()?
            .scan_prefix(layout::snapshot_prefix(stream))
            .map(|entry| {
                let (key, value) = entry?;
                Ok((layout::parse_order_key(&key)?, value.to_vec()))
            })
            .collect::<Result<_, StorageError>>()?;
        Ok(StreamRecord { frontier: lanes.into_iter().collect(), heads, lamport, snapshots })
    }

    fn append(&self, stream: StreamId, append: Append<'_>) -> Result<Commit, StorageError> {
        self.check(Access::Write)?;
        let events = append
            .events
            .iter()
            .map(|event| {
                debug_assert_eq!(event.lane.stream, stream, "an event of another stream");
                Ok(Encoded {
                    lane: event.lane,
                    seq: event.seq,
                    id: event.id,
                    attestation: event.attestation,
                    bytes: layout::encode_event(event)?,
                })
            })
            .collect::<Result<Vec<_>, StorageError>>()?;
        let mut writes = Vec::with_capacity(append.stale_snapshots.len() + 1);
        let remove = |stale: &OrderKey| Write::Remove(layout::snapshot_key(stream, stale).to_vec());
        writes.extend(append.stale_snapshots.iter().map(remove));
        let (ack, done) = oneshot::channel();
        let mut new_types = lock(&self.new_types);
        let stream_type = if append.events.is_empty() { None } else { new_types.remove(&stream) };
        if let Some(stream_type) = &stream_type {
            writes.push(Write::Put(layout::type_key(stream).to_vec(), stream_type.as_bytes().to_vec()));
        }
        let sent = self.send(Op { events, writes, ack: Some(ack) });
        if let (Err(_), Some(stream_type)) = (&sent, stream_type) {
            new_types.insert(stream, stream_type); // nothing was queued: the next append writes it
        }
        sent?;
        Ok(Commit::waiting(done))
    }

    fn put_snapshot(
        &self,
        stream: StreamId,
        key: OrderKey,
        view: &[u8],
        drop: &[OrderKey],
    ) -> Result<(), StorageError> {
        self.check(Access::Write)?;
        let mut writes = vec![Write::Put(layout::snapshot_key(stream, &key).to_vec(), view.to_vec())];
        writes.extend(drop.iter().map(|old| Write::Remove(layout::snapshot_key(stream, old).to_vec())));
        // Queued behind the events it covers, so no crash can keep it without them.
        self.send(Op { events: Vec::new(), writes, ack: None })
    }

    fn snapshots_from(&self, stream: StreamId, from: OrderKey) -> Result<Vec<OrderKey>, StorageError> {
        self.check(Access::Read)?;
        let prefix = layout::snapshot_prefix(stream);
        self.data()?
            .range(layout::snapshot_key(stream, &from)..)
            .keys()
            .take_while(|key| key.as_ref().map_or(true, |key| key.starts_with(&prefix)))
            .map(|key| layout::parse_order_key(&key?))
            .collect()
    }

    fn key_at(&self, stream: StreamId, lane: Lane, seq: Seq) -> Result<Option<OrderKey>, StorageError> {
        self.check(Access::Read)?;
        debug_assert_eq!(lane.stream, stream, "a lane of another stream");
        if let Some(key) = self.recent_keys.get(lane, seq) {
            return Ok(Some(key));
        }
        // Order keys do not depend on the stream type.
        let Some(block) = self.blocks(stream, "")?.holding(lane, seq)? else { return Ok(None) };
        let key = block.iter().find(|event| event.seq == seq).map(Event::order_key);
        self.recent_keys.put(lane, &block);
        Ok(key)
    }

    fn frontier(&self, stream: StreamId) -> Result<VectorClock, StorageError> {
        self.check(Access::Read)?;
        // The type only names decoded events; the frontier decodes none.
        Ok(self.blocks(stream, "")?.frontier()?.into_iter().collect())
    }

    fn lane_end(&self, lane: Lane) -> Result<Seq, StorageError> {
        self.check(Access::Read)?;
        // A lane's last block ends at its last seq.
        let (first, last) = (layout::block_key(lane, Seq::ZERO), layout::block_key(lane, Seq(u64::MAX)));
        match self.data()?.range(&first[..]..=&last[..]).next_back() {
            Some(entry) => Ok(layout::parse_block_key(&entry?.0)?.1),
            None => Ok(Seq::ZERO),
        }
    }

    fn lane_events(&self, lane: Lane, after: Seq, limit: usize) -> Result<Vec<Event>, StorageError> {
        self.check(Access::Read)?;
        let stream_type = self.type_of(lane.stream)?.unwrap_or_default();
        self.blocks(lane.stream, &stream_type)?.lane_events(lane, after, limit)
    }

    fn events_from(
        &self,
        stream: StreamId,
        from: Bound<OrderKey>,
        before: Option<OrderKey>,
        limit: usize,
    ) -> Result<Vec<Event>, StorageError> {
        self.check(Access::Read)?;
        let stream_type = self.type_of(stream)?.unwrap_or_default();
        self.blocks(stream, &stream_type)?.in_order(from, before, limit)
    }

    fn log_after(&self, after: LogPos, limit: usize, bytes: usize) -> Result<LogPage, StorageError> {
        let page = self.read_log(after, limit, bytes, None)?;
        Ok(LogPage { events: page.events.into_iter().map(|(_, event)| event).collect(), last: page.last })
    }

    fn log_wanted(
        &self,
        after: LogPos,
        limit: usize,
        bytes: usize,
        wanted: &dyn Fn(SiteId, LogPos) -> bool,
    ) -> Result<WantedPage, StorageError> {
        self.read_log(after, limit, bytes, Some(wanted))
    }

    fn log_end(&self) -> LogPos {
        LogPos(self.stats.log_durable.load(Ordering::Acquire))
    }

    fn watch_log_end(&self) -> watch::Receiver<LogPos> {
        match lock(&self.stats.log_watch).as_ref() {
            Some(log_watch) => log_watch.subscribe(),
            None => watch::channel(self.log_end()).1, // closed: its sender is gone already
        }
    }

    fn replicated(&self, peer: SiteId) -> Result<Replicated, StorageError> {
        self.check(Access::Read)?;
        match self.data()?.get(layout::replicated_key(peer))? {
            Some(bytes) => layout::decode_replicated(&bytes),
            None => Ok(Replicated::default()),
        }
    }

    fn set_replicated(&self, peer: SiteId, held: &Replicated) -> Result<(), StorageError> {
        self.check(Access::Write)?;
        let write = Write::Put(layout::replicated_key(peer).to_vec(), layout::encode_replicated(held)?);
        self.send(Op { events: Vec::new(), writes: vec![write], ack: None })
    }

    fn stream_type(&self, stream: StreamId) -> Result<Option<String>, StorageError> {
        self.check(Access::Read)?;
        let stored = self.data()?.get(layout::type_key(stream))?;
        Ok(stored.map(|t| String::from_utf8_lossy(&t).into_owned()))
    }

    fn streams_page(&self, after: Option<StreamId>, limit: usize) -> Result<Vec<(StreamId, String)>, StorageError> {
        self.check(Access::Read)?;
        let start = match after {
            Some(after) => Bound::Excluded(layout::type_key(after).to_vec()),
            None => Bound::Included(layout::TYPE_PREFIX.to_vec()),
        };
        let end = Bound::Excluded(layout::prefix_end(&layout::TYPE_PREFIX));
        self.data()?
            .range::<Vec<u8>, _>((start, end))
            .take(limit)
            .map(|entry| {
                let (key, stream_type) = entry?;
                Ok((layout::parse_type_key(&key)?, String::from_utf8_lossy(&stream_type).into_owned()))
            })
            .collect()
    }

    fn put_attestation(&self, attestation: &Attestation) -> Result<(), StorageError> {
        self.check(Access::Write)?;
        let key = layout::attestation_key(attestation.site(), attestation.number);
        let writes = vec![Write::Put(key.to_vec(), layout::encode_attestation(attestation)?)];
        // Queued before the events it covers: no crash keeps them without it.
        self.send(Op { events: Vec::new(), writes, ack: None })
    }

    fn attestation(&self, site: SiteId, number: u64) -> Result<Option<Attestation>, StorageError> {
        self.check(Access::Read)?;
        self.data()?
            .get(layout::attestation_key(site, number))?
            .map(|bytes| layout::decode_attestation(&bytes))
            .transpose()
    }

    fn close(&self) {
        let mut writer = lock(&self.writer);
        self.closed.store(true, Ordering::Release);
        self.stop(&mut writer);
        lock(&self.stats.log_watch).take(); // ends the site-wide subscriptions
    }

    fn reopen(&self) -> Result<(), StorageError> {
        let mut writer = lock(&self.writer);
        if self.closed.load(Ordering::Acquire) {
            return Err(StorageError::Closed);
        }
        if self.stats.check().is_ok() {
            return Ok(()); // healthy: reopened by another caller, or never failed
        }
        #[cfg(feature = "failpoints")]
        self.failpoints.check(failpoints::Fault::Reopen)?;
        // Every call is refused with the failure until the new database serves.
        self.stop(&mut writer);
        // What was read from the failed database's memory may never have reached the disk.
        self.recent_keys.clear();
        let db = open_db(&self.path, self.cache_bytes)?;
        let data = db.open_tree(DATA_TREE)?;
        self.start(&mut writer, &db, data)?;
        self.stats.heal();
        Ok(())
    }

    fn generation(&self) -> u64 {
        self.stats.generation.load(Ordering::Acquire)
    }

    fn stats(&self) -> StorageStats {
        StorageStats {
            commits: self.stats.commits.load(Ordering::Relaxed),
            flushes: self.stats.flushes.load(Ordering::Relaxed),
            signing_ns: self.signing_ns.load(Ordering::Relaxed),
            failure: self.stats.check().err(),
        }
    }
}

/// What a storage call does, for [`SledStorage::check`].
enum Access {
    Read,
    Write,
}

impl SledStorage {
    /// Refuses every call once the writer has failed (fail-stop); with the `failpoints`
    /// feature, fails the call when a test asked for it.
    fn check(&self, access: Access) -> Result<(), StorageError> {
        self.stats.check()?;
        #[cfg(feature = "failpoints")]
        self.failpoints.check(match access {
            Access::Read => failpoints::Fault::Read,
            Access::Write => failpoints::Fault::Write,
        })?;
        #[cfg(not(feature = "failpoints"))]
        let _ = access;
        Ok(())
    }

    /// Queues `op` for the writer, never waiting: callers run on actor arbiters.
    fn send(&self, op: Op) -> Result<(), StorageError> {
        let ops = self.ops.read().unwrap_or_else(PoisonError::into_inner);
        let Some(ops) = ops.as_ref() else { return Err(StorageError::Closed) };
        match ops.try_send(op) {
            Ok(()) => Ok(()),
            Err(TrySendError::Full(_)) => Err(StorageError::Busy { capacity: limits::COMMIT_QUEUE_MAX }),
            Err(TrySendError::Disconnected(_)) => Err(StorageError::Closed),
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
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

    /// A storage operation a test can make fail.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub enum Fault {
        /// Queuing an append or a snapshot (the caller's call).
        Write,
        /// The writer applying a batch to a stream's tree.
        Batch,
        /// sled's flush.
        Flush,
        /// The fsync after it (with `Durability::Fsync`).
        Fsync,
        /// Any read.
        Read,
        /// Reopening the database after a failure ([`crate::storage::Storage::reopen`]).
        Reopen,
    }

    impl Fault {
        /// Every kind of operation a workload makes, for tests that try them all.
        pub const ALL: [Fault; 5] = [Fault::Write, Fault::Batch, Fault::Flush, Fault::Fsync, Fault::Read];

        /// The name an injected failure of this kind carries ([`StorageError::Injected`]).
        pub fn name(self) -> &'static str {
            match self {
                Fault::Write => "write",
                Fault::Batch => "batch",
                Fault::Flush => "flush",
                Fault::Fsync => "fsync",
                Fault::Read => "read",
                Fault::Reopen => "reopen",
            }
        }
    }

    /// Faults to inject: per kind, how many operations from now the failing one is, and
    /// whether every one fails.
    #[derive(Debug, Default)]
    pub struct Failpoints {
        countdown: [AtomicU64; 6],
        always: [AtomicBool; 6],
    }

    impl Failpoints {
        /// Makes the `n`th operation of `kind` from now fail, once (`n` = 1: the next one;
        /// 0: none).
        pub fn fail_nth(&self, kind: Fault, n: u64) {
            self.countdown[kind as usize].store(n, Ordering::SeqCst);
        }

        /// Makes every operation of `kind` fail from now on (`true`), or none (`false`).
        pub fn fail_always(&self, kind: Fault, on: bool) {
            self.always[kind as usize].store(on, Ordering::SeqCst);
        }

        /// Counts one operation of `kind`, failing it if it is the one asked for.
        pub(super) fn check(&self, kind: Fault) -> Result<(), StorageError> {
            if self.always[kind as usize].load(Ordering::SeqCst) {
                return Err(StorageError::Injected(kind.name()));
            }
            let countdown = &self.countdown[kind as usize];
            let before = countdown.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1));
            if before == Ok(1) {
                Err(StorageError::Injected(kind.name()))
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

    /// The fsync pass chooses blobs by name, not by time: a blob sled deleted while the
    /// pass ran (a dangling name here) is skipped, and a blob synced in two passes is not
    /// opened again (a name that cannot be opened at all here: a symlink to itself).
    #[test]
    fn the_fsync_pass_skips_deleted_blobs_and_syncs_each_blob_in_two_passes() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("db"), b"db").unwrap();
        let blobs = dir.path().join("blobs");
        std::fs::create_dir(&blobs).unwrap();
        std::fs::write(blobs.join("3"), b"blob").unwrap();
        std::os::unix::fs::symlink(blobs.join("gone"), blobs.join("10")).unwrap();
        let mut fsync = Fsync::new(dir.path()).unwrap();
        fsync.sync().expect("a deleted blob is skipped");
        fsync.sync().unwrap();
        assert_eq!((fsync.floor, fsync.newest), (Some(3), Some(3)));
        std::fs::remove_file(blobs.join("3")).unwrap();
        std::os::unix::fs::symlink(blobs.join("3"), blobs.join("3")).unwrap();
        assert!(File::open(blobs.join("3")).is_err(), "the name cannot be opened");
        fsync.sync().expect("a blob synced twice is left alone");
        std::fs::write(blobs.join("12"), b"new").unwrap();
        fsync.sync().unwrap();
        assert_eq!(fsync.newest, Some(12));
    }

    /// sled renames its page-table snapshot into the folder without syncing it: the first
    /// pass `SNAPSHOT_NAMES_CHECK_EVERY` after the last look syncs the folder and notes the
    /// new name (one being generated does not count); passes sooner do not look.
    #[test]
    fn the_fsync_pass_syncs_the_folder_after_sled_renames_a_snapshot() {
        // Ages the last look instead of waiting for it to age.
        let look_due = |fsync: &mut Fsync| {
            fsync.names_checked = Instant::now().checked_sub(limits::SNAPSHOT_NAMES_CHECK_EVERY).unwrap();
        };
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("db"), b"db").unwrap();
        std::fs::write(dir.path().join("snap.0000000000000010"), b"old").unwrap();
        let mut fsync = Fsync::new(dir.path()).unwrap();
        assert_eq!(fsync.snapshots, vec![std::ffi::OsString::from("snap.0000000000000010")]);
        std::fs::write(dir.path().join("snap.0000000000000020.generating"), b"new").unwrap();
        look_due(&mut fsync);
        fsync.sync().unwrap();
        assert_eq!(fsync.snapshots, vec![std::ffi::OsString::from("snap.0000000000000010")]);
        std::fs::rename(dir.path().join("snap.0000000000000020.generating"), dir.path().join("snap.0000000000000020"))
            .unwrap();
        std::fs::remove_file(dir.path().join("snap.0000000000000010")).unwrap();
        fsync.sync().unwrap();
        assert_eq!(fsync.snapshots, vec![std::ffi::OsString::from("snap.0000000000000010")], "the last look is recent");
        look_due(&mut fsync);
        fsync.sync().unwrap();
        assert_eq!(fsync.snapshots, vec![std::ffi::OsString::from("snap.0000000000000020")], "synced after the rename");
    }

    fn queue_of(ops: Vec<Op>) -> Receiver<Op> {
        let (sender, queue) = channel::bounded(limits::COMMIT_QUEUE_MAX);
        for op in ops {
            assert!(sender.send(op).is_ok());
        }
        queue
    }

    fn write(n: u8) -> (Op, oneshot::Receiver<Result<(), StorageError>>) {
        let (ack, done) = oneshot::channel();
        (Op { events: Vec::new(), writes: vec![Write::Put(vec![n], vec![n])], ack: Some(ack) }, done)
    }

    /// Appends queued while the writer is busy are applied as one merged batch and
    /// acknowledged together by one flush, only after it returned.
    #[test]
    fn one_flush_acknowledges_every_queued_append() {
        let db = sled::Config::new().temporary(true).open().unwrap();
        let tree = db.open_tree("t").unwrap();
        let (ops, mut acks): (Vec<Op>, Vec<_>) = (0u8..100).map(write).unzip();
        let queue = queue_of(ops);
        let stats = Counters::default();
        let flushed = AtomicBool::new(false);
        let applied = AtomicU64::new(0);
        write_loop(
            &queue,
            &stats,
            None,
            |batch| {
                assert!(!flushed.load(Ordering::SeqCst), "every write of the group precedes its flush");
                applied.fetch_add(1, Ordering::SeqCst);
                Ok(tree.apply_batch(batch)?)
            },
            || {
                flushed.store(true, Ordering::SeqCst);
                Ok(())
            },
        );
        assert_eq!(applied.load(Ordering::SeqCst), 1, "one merged batch");
        assert_eq!(stats.flushes.load(Ordering::SeqCst), 1);
        assert_eq!(stats.commits.load(Ordering::SeqCst), 100);
        assert_eq!(tree.len(), 100);
        for done in &mut acks {
            assert_eq!(done.try_recv().unwrap(), Ok(()));
        }
    }

    /// A group closes a batch between two operations once it holds the bound, so no
    /// batch grows past the bound plus one operation and no operation is split.
    #[test]
    fn a_group_closes_its_batch_at_the_bound_between_operations() {
        let mut group = Group::default();
        let per_op = 100;
        for n in 0..10u8 {
            let writes = (0..per_op).map(|k: u8| Write::Put(vec![n, k], vec![k])).collect();
            group.add(Op { events: Vec::new(), writes, ack: None });
        }
        // Each batch takes operations until it holds the bound: 3 of 100 writes for 256.
        let ops_per_batch = limits::SLED_BATCH_WRITES_MAX.div_ceil(usize::from(per_op));
        assert_eq!(group.closed.len(), 10 / ops_per_batch);
        assert_eq!(group.open_writes, (10 % ops_per_batch) * usize::from(per_op));
        assert_eq!(group.batches().len(), 10 / ops_per_batch + 1);
    }

    /// After a failed write nothing more is applied and every later append fails, so a
    /// lane cannot be stored with a gap.
    #[test]
    fn the_writer_fails_stop() {
        let (sender, queue) = channel::bounded(8);
        let attempts = Arc::new(AtomicU64::new(0));
        let counted = Arc::clone(&attempts);
        let writer = std::thread::spawn(move || {
            let fail = |_: sled::Batch| {
                counted.fetch_add(1, Ordering::SeqCst);
                Err(StorageError::Injected("append"))
            };
            write_loop(&queue, &Counters::default(), None, fail, || Ok(()));
        });
        // One group at a time: the second append is queued after the first was answered.
        for n in 1..=2 {
            let (op, done) = write(n);
            assert!(sender.send(op).is_ok());
            assert_eq!(done.blocking_recv().unwrap(), Err(StorageError::Injected("append")));
        }
        drop(sender);
        writer.join().unwrap();
        assert_eq!(attempts.load(Ordering::SeqCst), 1, "nothing is applied after a failure");
    }

    #[test]
    fn a_failed_flush_fails_every_append_it_carried() {
        let (op, mut done) = write(1);
        let queue = queue_of(vec![op]);
        let on_fire =
            || Err(StorageError::Flush { step: "fsync", cause: Cause::new(std::io::Error::other("disk on fire")) });
        write_loop(&queue, &Counters::default(), None, |_| Ok(()), on_fire);
        assert!(matches!(done.try_recv().unwrap(), Err(StorageError::Flush { .. })));
    }

    /// The frontier is read back from the index: each lane's highest seq.
    #[test]
    fn the_frontier_is_each_lanes_last_index_entry() {
        let storage = SledStorage::temporary().unwrap();
        let stream = StreamId::from_u128(3);
        storage.open_stream(stream, "t").unwrap();
        let mut events = Vec::new();
        for (site, seqs) in [(1u128, 3u64), (2, 1), (u128::MAX, 300)] {
            let lane = Lane::new(SiteId::from_u128(site), stream);
            for seq in 1..=seqs {
                events.push(Event {
                    id: crate::id::EventId::random(),
                    lane,
                    seq: Seq(seq),
                    clock: [(lane, Seq(seq))].into_iter().collect(),
                    lamport: seq,
                    timestamp_ms: 0,
                    stream_type: "t".into(),
                    payload: Vec::new(),
                    attestation: 0,
                });
            }
        }
        let commit = storage.append(stream, Append { events: &events, stale_snapshots: &[] }).unwrap();
        tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(commit).unwrap();
        let record = storage.open_stream(stream, "t").unwrap();
        let expected: VectorClock = [(1u128, 3u64), (2, 1), (u128::MAX, 300)]
            .into_iter()
            .map(|(site, seq)| (Lane::new(SiteId::from_u128(site), stream), Seq(seq)))
            .collect();
        assert_eq!(record.frontier, expected);
        assert_eq!(record.lamport, 300);
    }

    #[test]
    fn the_site_id_and_link_key_are_created_once_and_kept() {
        let dir = tempfile::tempdir().unwrap();
        let first = SledStorage::open(dir.path()).unwrap();
        let (site, key) = (first.site_id(), *first.keys().link().public());
        assert_eq!(site, first.keys().site_id(), "the site id is its signing key's");
        drop(first);
        let again = SledStorage::open(dir.path()).unwrap();
        assert_eq!((again.site_id(), *again.keys().link().public()), (site, key));
        let other = SledStorage::temporary().unwrap();
        assert_ne!(other.site_id(), site);
        assert_ne!(*other.keys().link().public(), key);
    }

    /// A database opened with another site's signing key beside it (a key file copied
    /// over, or lost and made anew) is refused: it would sign as a site it is not.
    #[test]
    fn a_database_with_another_sites_key_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        drop(SledStorage::open(dir.path()).unwrap());
        std::fs::remove_file(dir.path().join(crate::keys::SIGNING_KEY_FILE)).unwrap();
        let refused = SledStorage::open(dir.path()).err().unwrap();
        assert!(matches!(&refused, StorageError::Corrupt(why) if why.contains("signing key")), "{refused}");
    }
}
