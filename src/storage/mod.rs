//! Durable storage of streams: the [`Storage`] trait, its sled implementation
//! ([`SledStorage`], the only code that names sled) and an in-memory one
//! ([`MemoryStorage`]) for tests and simulation.
//!
//! Per stream it keeps the stream's type, the log in canonical order, an index by (lane, seq) (whose last
//! entry per lane is the frontier), and view snapshots. An append's events, with their
//! index entries, are written in one atomic batch. Writes are applied in the order they are made; reads see a
//! write once it is applied, at the latest when the [`Commit`] that [`Storage::append`]
//! returned resolves, which is when it is durable. Many appends share one flush (group
//! commit). Writing never blocks: a full queue refuses the write with
//! [`StorageError::Busy`] and nothing is written.

mod blocks;
mod layout;
mod memory;
mod sled;

pub use self::layout::STORAGE_FORMAT;
pub use self::memory::MemoryStorage;
#[cfg(feature = "failpoints")]
pub use self::sled::failpoints::{Failpoints, Fault};
pub use self::sled::{open_waiting_for_lock, Durability, SledConfig, SledStorage};

use crate::attest::Attestation;
use crate::clock::VectorClock;
use crate::codec::CodecError;
use crate::error::Cause;
use crate::event::{Event, OrderKey};
use crate::id::{Lane, LogPos, Seq, SiteId, StreamId};
use std::collections::HashSet;
use std::future::Future;
use std::ops::Bound;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::{Mutex, PoisonError};
use std::task::{Context, Poll};
use tokio::sync::{oneshot, watch};

/// Why storage failed. Clone, because one failed flush fails every write it carried.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StorageError {
    /// sled reported an I/O or corruption error. The database may be unusable: the site
    /// reopens it to recover what was durable.
    #[error("sled: {0}")]
    Sled(#[source] Cause),
    /// Making writes durable failed (sled's flush, or the fsync after it). Their outcome is
    /// unknown: they may or may not survive a crash. The site reopens the database.
    #[error("{step} failed: {cause}")]
    Flush {
        /// What failed: `"sled's flush"`, `"fsync"`.
        step: &'static str,
        /// Why.
        #[source]
        cause: Cause,
    },
    /// A read on a blocking thread did not finish (it panicked, or the runtime is
    /// stopping).
    #[error("{what} stopped: {cause}")]
    Interrupted {
        /// The read.
        what: &'static str,
        /// Why.
        #[source]
        cause: Cause,
    },
    /// The database was written in another storage format than this build's. Nothing was
    /// read or changed.
    #[error(
        "the database in {path:?} has storage format {found}, and this build of gundb reads format {supported} only \
         open it with the gundb release that wrote it, or move the folder aside and start this site from an \
         empty one (its peers send it everything again on catch-up)"
    )]
    Format {
        /// The database folder.
        path: PathBuf,
        /// The format it was written in.
        found: u32,
        /// The format this build reads.
        supported: u32,
    },
    /// Stored bytes did not decode.
    #[error("stored bytes did not decode: {0}")]
    Codec(#[from] CodecError),
    /// Stored data breaks an invariant (a key of the wrong length, a frontier ahead of the
    /// log). The database was damaged outside gundb.
    #[error("corrupt storage: {0}")]
    Corrupt(String),
    /// The stream exists with another stream type.
    #[error("stream {stream} has type {stored:?}, not {requested:?}")]
    TypeMismatch {
        /// The stream.
        stream: StreamId,
        /// Its stored type.
        stored: String,
        /// The type asked for.
        requested: String,
    },
    /// The group-commit writer has stopped (the storage is closing).
    #[error("storage is closed")]
    Closed,
    /// The storage failed and was reopened while a stream held writes not acknowledged:
    /// they may or may not be stored. The stream rebuilds itself from what is: try again.
    #[error("storage was reopened after a failure; try again")]
    Reopened,
    /// The write queue is full: nothing was written. Retry once earlier writes are
    /// acknowledged (this is backpressure, not a failure).
    #[error("storage write queue is full ({capacity} writes queued); retry after earlier writes complete")]
    Busy {
        /// The queue's capacity.
        capacity: usize,
    },
    /// Another stream actor has this stream open on this storage. A lane has one writer,
    /// so a stream has one actor per site: use the one that is open.
    #[error("stream {stream} is already open on this storage")]
    StreamInUse {
        /// The stream.
        stream: StreamId,
    },
    /// A fault injected by the `failpoints` feature.
    #[error("injected fault: {0}")]
    Injected(&'static str),
    /// The site's keys beside the database could not be read or made (a
    /// [`crate::keys::KeyError`]).
    #[error("{0}")]
    Key(#[source] Cause),
}

impl From<crate::keys::KeyError> for StorageError {
    fn from(error: crate::keys::KeyError) -> Self {
        StorageError::Key(Cause::new(error))
    }
}

/// What storage holds about one stream when it is opened.
#[derive(Debug, Clone, Default)]
pub struct StreamRecord {
    /// Every lane's highest stored seq.
    pub frontier: VectorClock,
    /// The lanes' last events that no other lane's last event names
    /// ([`crate::event::heads_of`]): what a write depending on the whole stream names.
    pub heads: VectorClock,
    /// The largest Lamport counter stored.
    pub lamport: u64,
    /// The stored view snapshots, oldest first: the key of the last event each covers,
    /// and the encoded view.
    pub snapshots: Vec<(OrderKey, Vec<u8>)>,
}

/// One atomic write to a stream.
#[derive(Debug, Clone, Copy)]
pub struct Append<'a> {
    /// The events to add to the log and the index, in lane order.
    pub events: &'a [Event],
    /// Snapshots that no longer hold (the event sorts before them): deleted.
    pub stale_snapshots: &'a [OrderKey],
}

/// A page of a site's log ([`Storage::log_after`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LogPage {
    /// The events, in log order, at consecutive positions after the page's start.
    pub events: Vec<Event>,
    /// The position of the last event of the page (the start when it is empty).
    pub last: LogPos,
}

/// What a peer wants of a page of a site's log ([`Storage::log_wanted`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WantedPage {
    /// The events wanted, with their positions, in log order.
    pub events: Vec<(LogPos, Event)>,
    /// The last position the page covers, wanted or not (the start when it covers none).
    pub last: LogPos,
}

/// How far a site holds a peer's log, per origin site ([`Storage::replicated`]): where
/// replication from the peer resumes. O(sites), whatever the number of streams.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Replicated {
    /// Every event of the peer's log up to here is durable here, but for the origins of
    /// `behind`.
    pub upto: LogPos,
    /// Origins whose events of the peer's log are durable here only up to an earlier
    /// position, sorted by site: ones the peer was asked not to send (a direct link to the
    /// origin carried them), or ones being caught up on.
    pub behind: Vec<(SiteId, LogPos)>,
}

/// Storage of a site's streams. Implementations are shared by every stream actor of a site.
pub trait Storage: Send + Sync + 'static {
    /// The site this database belongs to, created once and stored.
    fn site_id(&self) -> SiteId;

    /// The site's keys, whose signing key its id is derived from: made once and kept
    /// beside a database on disk ([`crate::keys::SiteKeys::load_or_create`]).
    fn keys(&self) -> &crate::keys::SiteKeys;

    /// Claims `stream` for one stream actor until [`Storage::release_stream`].
    ///
    /// # Errors
    /// [`StorageError::StreamInUse`] when it is claimed already.
    fn claim_stream(&self, stream: StreamId) -> Result<(), StorageError>;

    /// Releases a claim made with [`Storage::claim_stream`].
    fn release_stream(&self, stream: StreamId);

    /// Loads (or creates) `stream` of type `stream_type`.
    ///
    /// # Errors
    /// [`StorageError::TypeMismatch`] when the stream exists with another type, or a
    /// read failure.
    fn open_stream(&self, stream: StreamId, stream_type: &str) -> Result<StreamRecord, StorageError>;

    /// Declares `stream` of type `stream_type` without loading it: what storing events of a
    /// stream without an actor needs. The type is stored with the stream's first event.
    ///
    /// # Errors
    /// [`StorageError::TypeMismatch`] when the stream exists with another type, or a read
    /// failure.
    fn declare_stream(&self, stream: StreamId, stream_type: &str) -> Result<(), StorageError> {
        self.open_stream(stream, stream_type).map(drop)
    }

    /// Queues events with their index entries, as one atomic write after every
    /// write made before. The returned [`Commit`] resolves once they are durable (they may
    /// be visible to reads earlier), or to the error that stopped the storage.
    ///
    /// # Errors
    /// [`StorageError::Busy`] when the queue is full, [`StorageError::Closed`], or an event
    /// that does not encode: then nothing was queued.
    fn append(&self, stream: StreamId, append: Append<'_>) -> Result<Commit, StorageError>;

    /// Queues a view snapshot taken after the event at `key`, and the deletion of the
    /// snapshots named in `drop`, ordered like [`Storage::append`]. Durable with the next
    /// append's commit.
    ///
    /// # Errors
    /// As [`Storage::append`]; a refused snapshot costs only a longer replay on recovery.
    fn put_snapshot(&self, stream: StreamId, key: OrderKey, view: &[u8], drop: &[OrderKey])
        -> Result<(), StorageError>;

    /// The keys of `stream`'s stored snapshots at or after `from`: the ones an event at
    /// `from` makes stale, for a writer that does not keep track of them (the router,
    /// storing a stream whose type is not registered here).
    ///
    /// # Errors
    /// A read failure.
    fn snapshots_from(&self, stream: StreamId, from: OrderKey) -> Result<Vec<OrderKey>, StorageError>;

    /// The canonical key of the event at (lane, seq), if stored.
    ///
    /// # Errors
    /// A read failure.
    fn key_at(&self, stream: StreamId, lane: Lane, seq: Seq) -> Result<Option<OrderKey>, StorageError>;

    /// Every lane's highest stored seq in `stream` (empty for an unknown stream).
    ///
    /// # Errors
    /// A read failure.
    fn frontier(&self, stream: StreamId) -> Result<VectorClock, StorageError>;

    /// `lane`'s highest stored seq (0 when it holds nothing): one lookup, whatever the
    /// number of lanes stored.
    ///
    /// # Errors
    /// A read failure.
    fn lane_end(&self, lane: Lane) -> Result<Seq, StorageError> {
        Ok(self.frontier(lane.stream)?.get(lane))
    }

    /// Up to `limit` events of `lane` after seq `after`, in seq order.
    ///
    /// # Errors
    /// A read failure, or a stored event that does not decode.
    fn lane_events(&self, lane: Lane, after: Seq, limit: usize) -> Result<Vec<Event>, StorageError>;

    /// Up to `limit` events from `from` on and before `before` (to the end when `None`), in
    /// canonical order.
    ///
    /// # Errors
    /// A read failure, or a stored event that does not decode.
    fn events_from(
        &self,
        stream: StreamId,
        from: Bound<OrderKey>,
        before: Option<OrderKey>,
        limit: usize,
    ) -> Result<Vec<Event>, StorageError>;

    /// Up to `limit` events of this site's log after `after`, in log order, ending with
    /// the event whose [`Event::size`] brings the page to `bytes` or more: every event
    /// stored here, its own and its peers', as it became durable (a causal order: an
    /// event is stored only after what it depends on). Only durable events are read, so a
    /// peer is never sent what a crash here could still take back.
    ///
    /// # Errors
    /// A read failure, or a stored event that does not decode.
    fn log_after(&self, after: LogPos, limit: usize, bytes: usize) -> Result<LogPage, StorageError>;

    /// [`Storage::log_after`] for a peer that takes only some of it: of the next `limit`
    /// positions at most, the events `wanted` keeps (by origin site and position), each
    /// with its position, ending with the event that brings the bytes read to `bytes` (a
    /// storage that passes over unwanted events counts the wanted ones only). `wanted` must keep every later position
    /// of an origin once it keeps one, as a peer's filter does; then a storage may pass
    /// over what nobody wants without reading it (sled: a log entry none of whose blocks
    /// is wanted), so relaying costs what it sends.
    ///
    /// # Errors
    /// A read failure, or a wanted event that does not decode.
    fn log_wanted(
        &self,
        after: LogPos,
        limit: usize,
        bytes: usize,
        wanted: &dyn Fn(SiteId, LogPos) -> bool,
    ) -> Result<WantedPage, StorageError> {
        let page = self.log_after(after, limit, bytes)?;
        let events =
            (after.0 + 1..).map(LogPos).zip(page.events).filter(|(pos, event)| wanted(event.lane.site, *pos)).collect();
        Ok(WantedPage { events, last: page.last })
    }

    /// The position of the last durable event of this site's log (`LogPos(0)` when empty).
    fn log_end(&self) -> LogPos;

    /// Sees [`Storage::log_end`] each time it moves: how a site-wide subscription waits
    /// for new durable events without polling.
    fn watch_log_end(&self) -> watch::Receiver<LogPos>;

    /// How far this site has made `peer`'s log durable here (nothing for a peer never read
    /// from): where replication from `peer` resumes.
    ///
    /// # Errors
    /// A read failure, or a record that does not decode.
    fn replicated(&self, peer: SiteId) -> Result<Replicated, StorageError>;

    /// Records how far `peer`'s log is durable here. Written with the next commit: a crash
    /// may forget it, which costs copies, never events.
    ///
    /// # Errors
    /// The storage has failed or is closed, or the record does not encode.
    fn set_replicated(&self, peer: SiteId, held: &Replicated) -> Result<(), StorageError>;

    /// Up to `limit` of the streams stored, with their types, in stream id order after
    /// `after` (from the first when `None`): page with the last id of the previous page.
    /// A stream is stored once it holds an event.
    ///
    /// # Errors
    /// A read failure.
    fn streams_page(&self, after: Option<StreamId>, limit: usize) -> Result<Vec<(StreamId, String)>, StorageError>;

    /// The type of `stream`, or `None` when this site holds no event of it. Unlike
    /// [`Storage::open_stream`], it creates nothing.
    ///
    /// # Errors
    /// A read failure.
    fn stream_type(&self, stream: StreamId) -> Result<Option<String>, StorageError>;

    /// Stores `attestation`, which the caller has verified, behind the writes queued
    /// before it: it is durable no later than events appended after it.
    ///
    /// # Errors
    /// The storage has failed or is closed, or the attestation does not encode.
    fn put_attestation(&self, attestation: &Attestation) -> Result<(), StorageError>;

    /// Attestation `number` of `site`, if this site stores it: its own (made as it wrote
    /// its events) or a peer's (stored with the peer's events it covers).
    ///
    /// # Errors
    /// A read failure, or a record that does not decode.
    fn attestation(&self, site: SiteId, number: u64) -> Result<Option<Attestation>, StorageError>;

    /// Flush counters.
    fn stats(&self) -> StorageStats;

    /// Closes the storage: what is queued is written and acknowledged, and the database
    /// is released (its folder can be opened again at once), even while handles to this
    /// storage remain; every call after it fails with [`StorageError::Closed`]. Idempotent.
    /// The default does nothing: for a storage that holds no file (`MemoryStorage`).
    fn close(&self) {}

    /// After a failure ([`StorageStats::failure`]), opens the database again: the writer
    /// and every handle to the failed database are dropped, and what is durable is served
    /// again. Nothing acknowledged is lost; what was queued but not acknowledged may or may
    /// not be there. Does nothing while the storage is healthy. The site calls it with
    /// backoff; the default does nothing (a storage that cannot fail).
    ///
    /// # Errors
    /// The database cannot be opened (yet), or the storage was closed.
    fn reopen(&self) -> Result<(), StorageError> {
        Ok(())
    }

    /// How many times [`Storage::reopen`] opened the database again: a stream that saw
    /// another number may hold in memory what the disk lost. The default is always 0.
    fn generation(&self) -> u64 {
        0
    }
}

/// The streams claimed by live stream actors, shared by both implementations.
#[derive(Debug, Default)]
pub(crate) struct Claims(Mutex<HashSet<StreamId>>);

impl Claims {
    pub(crate) fn claim(&self, stream: StreamId) -> Result<(), StorageError> {
        // Every update is one insert or remove, so a poisoned set is still consistent.
        let mut claimed = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        if claimed.insert(stream) {
            Ok(())
        } else {
            Err(StorageError::StreamInUse { stream })
        }
    }

    pub(crate) fn release(&self, stream: StreamId) {
        self.0.lock().unwrap_or_else(PoisonError::into_inner).remove(&stream);
    }
}

/// Counters of the group commit.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StorageStats {
    /// Appends acknowledged or failed.
    pub commits: u64,
    /// Flushes done; commits per flush is the group-commit factor.
    pub flushes: u64,
    /// Nanoseconds the writer spent signing this site's events.
    pub signing_ns: u64,
    /// The failure that stopped the storage, if one did: it then refuses every read and
    /// write until the database is reopened ([`Storage::reopen`], which a site retries
    /// with backoff), since what it holds in memory may be ahead of the disk.
    pub failure: Option<StorageError>,
}

/// A pending append: resolves once it (and everything written before it) is durable.
#[derive(Debug)]
pub struct Commit(CommitState);

#[derive(Debug)]
enum CommitState {
    Ready(Option<Result<(), StorageError>>),
    Waiting(oneshot::Receiver<Result<(), StorageError>>),
}

impl Commit {
    /// A commit that is already decided.
    pub fn ready(result: Result<(), StorageError>) -> Self {
        Self(CommitState::Ready(Some(result)))
    }

    /// A commit decided when `ack` is sent.
    pub(crate) fn waiting(ack: oneshot::Receiver<Result<(), StorageError>>) -> Self {
        Self(CommitState::Waiting(ack))
    }
}

impl Future for Commit {
    type Output = Result<(), StorageError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match &mut self.0 {
            CommitState::Ready(result) => Poll::Ready(result.take().unwrap_or(Err(StorageError::Closed))),
            // A dropped sender means the writer thread stopped before acknowledging.
            CommitState::Waiting(ack) => Pin::new(ack).poll(cx).map(|r| r.unwrap_or(Err(StorageError::Closed))),
        }
    }
}
