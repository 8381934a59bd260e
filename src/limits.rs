//! Every bound in gundb, with the reason for its number.
//!
//! These are defaults: the ones a deployment may want to change also live in a `Config`
//! (for example [`crate::StreamConfig`] or [`crate::storage::SledConfig`]), so tests can
//! shrink them and exercise the "full" paths.

/// Largest encoded value the codec will decode: an event on the wire or on disk. Bulky
/// payloads belong outside the event log; this keeps one hostile length prefix from
/// allocating gigabytes.
pub const FRAME_BYTES_MAX: usize = 1 << 20;

/// Largest wire frame between sites: a batch of events. Room for a batch of
/// `CATCHUP_BATCH_BYTES` plus one event of `FRAME_BYTES_MAX`, since a batch is closed
/// after the event that fills it.
pub const WIRE_FRAME_BYTES_MAX: usize = CATCHUP_BATCH_BYTES + FRAME_BYTES_MAX + (64 << 10);

/// Bytes of events a source node puts in one frame before closing it.
pub const CATCHUP_BATCH_BYTES: usize = 1 << 20;

/// Events a source node puts in one frame at most.
pub const CATCHUP_BATCH_MAX: usize = 512;

/// Frames queued on one in-process link in each direction; a full link makes the source
/// node wait (backpressure), so a slow peer cannot make us buffer without bound.
pub const LINK_FRAMES_MAX: usize = 16;

/// Largest encoded view snapshot. Views may outgrow a frame (they hold a whole stream's
/// state) but are only read back from this site's own disk.
pub const VIEW_BYTES_MAX: usize = 256 << 20;

/// Lanes in one event's clock. A clock names its own lane, the stream's heads at the
/// writer (the writes no other write had seen: one after writes that saw each other) and
/// the dependencies named in other streams, not every lane the stream ever had; only a
/// write that follows thousands of concurrent ones reaches this.
pub const CLOCK_LANES_MAX: usize = 4_096;

/// Largest encoding of one clock entry: two uuids with their length prefixes (17 bytes
/// each) and a varint seq (at most 9).
const CLOCK_ENTRY_BYTES_MAX: usize = 43;

/// Largest payload a local write may carry: a frame less the largest clock and 8 KiB for
/// the rest of the event, so every stamped event fits a frame.
pub const PAYLOAD_BYTES_MAX: usize = FRAME_BYTES_MAX - CLOCK_LANES_MAX * CLOCK_ENTRY_BYTES_MAX - (8 << 10);

/// Largest Lamport counter accepted. Half the range: nothing real gets near it, and every
/// later write can still add one without overflow.
pub const LAMPORT_MAX: u64 = u64::MAX / 2;

/// Appends and snapshots queued for the group-commit writer. Past it a write is refused
/// with `StorageError::Busy` (backpressure); a few thousand is far more than one flush
/// ever groups.
pub const COMMIT_QUEUE_MAX: usize = 16_384;

/// Queued operations (appends and snapshots) one group takes at most: bounds the work
/// before a group's appends are acknowledged. An append holds at most
/// `DECIDE_EVENTS_MAX` events, so a merged batch is bounded too, if generously.
pub const GROUP_OPS_MAX: usize = 4_096;

/// How often the group-commit writer looks for a new sled page-table snapshot to make its
/// name durable (sled renames it in without syncing the folder). Missing one costs only
/// reopen time after a crash within this window (sled scans its log instead), never
/// acknowledged data, so it is not paid in every group: a directory read per group took
/// a tenth of a one-writer commit's syscalls.
pub const SNAPSHOT_NAMES_CHECK_EVERY: std::time::Duration = std::time::Duration::from_millis(100);

/// Bytes of events a storage block (a run of one lane's events written together) takes
/// before the next event starts another block. A block holds at most this plus one event,
/// under a quarter sled segment, so blocks never go to sled's blob files either.
pub const BLOCK_BYTES_MAX: usize = 256 << 10;

/// Largest run (a block of events) the codec decodes: a block's bound plus one event.
pub const RUN_BYTES_MAX: usize = BLOCK_BYTES_MAX + FRAME_BYTES_MAX + 1;

/// Writes (keys put or removed) in one sled batch, closed between two appends. sled 0.34.7
/// keeps the garbage of one `apply_batch` until it returns, and a batch of 2,048 writes to
/// one tree grew a site by about 4 KiB of memory per event for good (1.3 GiB after 200,000
/// events, against 130 MiB in batches of 256; measured with raw sled on this machine).
pub const SLED_BATCH_WRITES_MAX: usize = 256;

/// Messages a stream actor's mailbox holds; senders beyond it wait (`send`) or are told
/// (`try_send`). Big enough for many writers to keep a group commit full.
pub const STREAM_MAILBOX_MAX: usize = 4_096;

/// Stream actors a site keeps alive at most; past it the least recently used idle ones
/// stop (passivate). An actor holds its view and up to `SNAPSHOTS_KEPT` snapshots in
/// memory, so this bounds a site's memory whatever the number of streams it stores.
pub const STREAMS_LIVE_MAX: usize = 10_000;

/// A stream actor unused for this long stops; its next message starts it again from its
/// snapshot and the tail of its log.
pub const STREAM_IDLE_AFTER: std::time::Duration = std::time::Duration::from_secs(60);

/// Live actors the router looks at in one passivation round: a bound on one router turn
/// when many actors are busy and cannot stop.
pub const PASSIVATION_LOOKS_MAX: usize = 256;

/// Streams listed per storage read when the whole site frontier is read
/// ([`crate::Site::frontier`]).
pub const FRONTIER_PAGE_STREAMS: usize = 1_024;

/// Events folded between two view snapshots: the least a late event costs to replay.
pub const SNAPSHOT_EVERY: u32 = 1_024;

/// View snapshots a stream keeps in memory (and on disk), thinned so that the distance back
/// from the newest grows geometrically (`view::snapshots_to_drop`): an event k events late
/// replays a small multiple of k (at most 6 k in the test, whose log is 20,000
/// snapshots long), not the whole log.
pub const SNAPSHOTS_KEPT: usize = 8;

/// Largest frame a peer may send before it is authenticated: a greeting or a proof is
/// under a hundred bytes, so a stranger cannot make a site reserve more than this.
pub const HANDSHAKE_FRAME_BYTES_MAX: usize = 1 << 10;

/// Handshakes a node runs at once; a connection past them is closed at once (an honest
/// peer dials again).
pub const HANDSHAKES_MAX: usize = 64;

/// How long a handshake may take before the connection is closed.
pub const HANDSHAKE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Frames a source node sends its peer before the first of them is acknowledged. A sink
/// node holds no more frames waiting to be durable; one past it is dropped and asked for
/// again.
pub const UNACKED_FRAMES_MAX: usize = 16;

/// Frames a sink node opens (decodes and verifies, on blocking threads) ahead of the one
/// its router is taking: enough that the router never waits for a signature check, each
/// at most [`WIRE_FRAME_BYTES_MAX`] bytes.
pub const SINK_FRAMES_AHEAD: usize = 2;

/// Bytes of frames a source node sends its peer before the first of them is acknowledged
/// (one frame goes whatever its size): with `UNACKED_FRAMES_MAX`, the memory a connection
/// holds in flight, whatever the number of streams.
pub const UNACKED_BYTES_MAX: usize = 4 << 20;

/// Most origin sites a sink names in the filter it sends a peer (`node::Filter`): beyond
/// it, events of further origins come from every peer that has them (copies, not losses).
pub const ORIGINS_MAX: usize = 256;

/// Requests a sink node keeps waiting for a position of its peer's log (`HoldsPeerLog`);
/// past it, further ones are answered false at once.
pub const SINK_WAITERS_MAX: usize = 1_024;

/// Fields one JSON document patch may set or remove.
pub const PATCH_FIELDS_MAX: usize = 1_024;

/// Events one `History` reply carries; page with its cursor for more.
pub const HISTORY_LIMIT_MAX: u32 = 10_000;

/// Streams one `/streams` or `/frontier` page lists at most; page with its cursor for more.
pub const STREAMS_PAGE_MAX: u32 = 1_000;

/// Pages a site-wide subscription reads ahead of its consumer: a slow consumer holds
/// the reading back, so a subscription holds at most this many pages, the one waiting to
/// be sent and the one the consumer is taking.
pub const SUBSCRIPTION_PAGES_AHEAD: usize = 2;

/// Events one page of a site-wide subscription holds at most: one blocking read of the
/// log, one message to the consumer.
pub const SUBSCRIPTION_PAGE_EVENTS: usize = 1_024;

/// Bytes of events one page of a site-wide subscription holds (past it, the page ends
/// with the event that filled it).
pub const SUBSCRIPTION_PAGE_BYTES: usize = 1 << 20;

/// A site-wide subscription whose read of the log failed (storage failing, being
/// reopened) tries again after this, doubling each time up to [`SUBSCRIPTION_RETRY_MAX`].
pub const SUBSCRIPTION_RETRY_FIRST: std::time::Duration = std::time::Duration::from_millis(100);

/// The longest pause between a site-wide subscription's tries to read a failing log.
pub const SUBSCRIPTION_RETRY_MAX: std::time::Duration = std::time::Duration::from_secs(30);

/// Server-sent-event subscribers (`GET /events`) one node serves at once; past it a new
/// one gets 503. Each holds a subscription's pages and a connection.
pub const HTTP_SUBSCRIBERS_MAX: usize = 64;

/// An idle `GET /events` connection gets a comment line this often: proxies keep it open,
/// and a client that went away is noticed (its write fails) and its place freed.
pub const HTTP_EVENTS_KEEPALIVE: std::time::Duration = std::time::Duration::from_secs(15);

/// Document stream handles one HTTP worker keeps open between requests, so that a write
/// to a stream written lately goes straight to its actor rather than through the router
/// first. Past it an arbitrary one is dropped (it is opened again when needed); a handle
/// is a few pointers, and holding one does not keep its stream's actor in memory.
pub const HTTP_HANDLES_MAX: usize = 1_024;

/// Subscribers of one stream actor.
pub const SUBSCRIBERS_MAX: usize = 1_024;

/// Events read from storage per subscriber per turn, so one slow subscriber's catch-up
/// cannot starve the mailbox.
pub const SUBSCRIBE_BATCH_MAX: usize = 256;

/// Events one `Decide` may write: a decision is a small atomic step, not a bulk import.
pub const DECIDE_EVENTS_MAX: usize = 1_024;

/// Events a rollback replays in one go, read from storage in pages of this many.
pub const REPLAY_PAGE_MAX: usize = 4_096;

/// Lanes at rest whose progress the router keeps in memory (about 60 bytes each): the
/// lanes recently used. Others are read from storage when an event needs them, so the
/// router's memory does not grow with the lanes stored.
pub const ROUTER_LANES_CACHED: usize = 65_536;

/// Attestations the router keeps checked, per generation (two are kept): those of the
/// recent group commits of every site it hears from. Each is up to a few KiB (16 bytes per
/// event it covers); an event whose attestation is not kept is checked against storage.
pub const ROUTER_ATTESTATIONS_CACHED: usize = 1_024;

/// Bytes of attestations the router keeps checked, per generation: the byte bound beside
/// [`ROUTER_ATTESTATIONS_CACHED`] (an attestation may list up to a frame's worth of ids).
pub const ROUTER_ATTESTATION_BYTES_CACHED: usize = 8 << 20;

/// Events the router holds while their dependencies are missing. Past it, arrivals are
/// dropped and counted; catch-up fetches them again, so a partitioned peer cannot run us
/// out of memory.
pub const PENDING_EVENTS_MAX: usize = 32_768;

/// Bytes the router holds (estimated), for the same reason.
pub const PENDING_BYTES_MAX: u64 = 64 << 20;

/// Events the router hands a stream in one batch, so one burst cannot starve the
/// stream's mailbox and one flush carries many deliveries.
pub const DELIVER_BATCH_MAX: usize = 256;

/// Held-back events a router remembers for inspection (the demo's timeline).
pub const JOURNAL_MAX: usize = 64;

/// Bytes of the proofs of equivocation a router keeps (two events and two attestations
/// each): past it, and past [`JOURNAL_MAX`] proofs, equivocations are counted and logged
/// but their proofs not kept.
pub const EQUIVOCATION_BYTES_MAX: usize = 16 << 20;

/// Default sled page cache: sled's own default is 1 GiB, too much for an embedded store.
/// sled counts the cache by its pages' serialized size, and the pages in memory take about
/// three times that: with 64 MiB a site that read 10⁶ streams peaked at 423 MiB, with 16 MiB
/// at 224 MiB, reads and writes 5 to 10% slower (`gundb bench --only streams`).
pub const SLED_CACHE_BYTES: u64 = 16 << 20;

/// sled's log segment size. sled writes any log item over a quarter segment to a separate
/// blob file, so 8 MiB keeps every event (at most `FRAME_BYTES_MAX`) in the log. sled stores
/// this in the database: changing it makes existing databases refuse to open.
pub const SLED_SEGMENT_BYTES: usize = 8 << 20;

// --- Timings: healing, links, retries ---

/// How often a site's healer looks at its storage's health: a lock and a few atomics.
pub const HEAL_CHECK_EVERY: std::time::Duration = std::time::Duration::from_millis(100);

/// The pause before the healer's first attempt to reopen a failed storage, doubled after
/// each attempt that failed or was followed by another failure soon (within
/// [`HEAL_QUIET`]), up to [`HEAL_RETRY_MAX`]: a disk that stays broken is not hammered.
pub const HEAL_RETRY_FIRST: std::time::Duration = std::time::Duration::from_millis(100);

/// The longest pause between the healer's attempts to reopen a failed storage.
pub const HEAL_RETRY_MAX: std::time::Duration = std::time::Duration::from_secs(30);

/// Healthy this long after a reopen, the storage counts as healed: the next failure starts
/// the healer's backoff over.
pub const HEAL_QUIET: std::time::Duration = std::time::Duration::from_secs(60);

/// How often a node says `Hello` unless configured otherwise (`NodeConfig::hello_every`,
/// `gundb node --hello-ms`): how soon a silent link is noticed, at a few bytes a second.
pub const HELLO_EVERY_DEFAULT: std::time::Duration = std::time::Duration::from_secs(1);

/// Hellos a link's liveness check remembers (when each came and how much the peer had
/// heard by then), whatever the hello rate and grace: one is kept per 1/32 of the grace at
/// most, so about 33 cover a grace and the bound is never reached.
pub const LIVENESS_HELLOS_MAX: usize = 64;

/// Hello intervals of silence after which a TCP connection is taken for dead and closed
/// (a live peer says hello every interval; a slow link still moves bytes).
pub const HELLOS_MISSED_MAX: u32 = 3;

/// How long a frame may go unanswered before it is sent again unless configured
/// otherwise (`NodeConfig::resend_after`): well past a round trip under load, so a slow
/// answer is not taken for a loss.
pub const RESEND_AFTER_DEFAULT: std::time::Duration = std::time::Duration::from_secs(5);

/// The first pause before dialing a peer again after a failed dial or a lost connection,
/// doubled up to [`DIAL_RETRY_MAX`] (plus up to [`DIAL_JITTER_MS`] of jitter, so that many
/// sites do not retry in step).
pub const DIAL_RETRY_FIRST: std::time::Duration = std::time::Duration::from_millis(50);

/// The longest pause between dials to a peer; also the pause after a peer refused us (a
/// wrong secret or version does not get better by retrying fast).
pub const DIAL_RETRY_MAX: std::time::Duration = std::time::Duration::from_secs(10);

/// Random milliseconds added to each pause between dials, at most.
pub const DIAL_JITTER_MS: u8 = 50;

/// The first pause after a failed `accept` (out of file descriptors, say), doubled up to
/// [`ACCEPT_PAUSE_MAX`]: the listener neither spins nor stops.
pub const ACCEPT_PAUSE_MIN: std::time::Duration = std::time::Duration::from_millis(10);

/// The longest pause after failed `accept`s.
pub const ACCEPT_PAUSE_MAX: std::time::Duration = std::time::Duration::from_secs(1);

/// The first pause while waiting for sled to release a database's lock (see
/// [`SLED_LOCK_WAIT`]), doubled up to [`SLED_LOCK_RETRY_MAX`].
pub const SLED_LOCK_RETRY_FIRST: std::time::Duration = std::time::Duration::from_millis(1);

/// The longest pause while waiting for sled to release a database's lock.
pub const SLED_LOCK_RETRY_MAX: std::time::Duration = std::time::Duration::from_millis(50);

/// The largest Noise message (fixed by the Noise specification, section 3): the bound on
/// every sealed frame chunk of an authenticated link.
pub const NOISE_MESSAGE_BYTES_MAX: usize = 65_535;

// --- HTTP API defaults ---

/// Request bodies larger than this get 413 unless the node is configured otherwise
/// (`--max-body`): a patch is a handful of fields.
pub const HTTP_BODY_BYTES_DEFAULT: usize = 256 << 10;

/// Events a history page holds unless the request asks for fewer or more (at most
/// [`HISTORY_LIMIT_MAX`]).
pub const HTTP_HISTORY_PAGE_DEFAULT: u32 = 100;

/// Streams a `/streams` or `/frontier` page holds unless the request asks for fewer or
/// more (at most [`STREAMS_PAGE_MAX`]).
pub const HTTP_STREAMS_PAGE_DEFAULT: u32 = 100;

const _: () = assert!(PAYLOAD_BYTES_MAX < FRAME_BYTES_MAX);
const _: () = assert!(FRAME_BYTES_MAX < SLED_SEGMENT_BYTES / 4);
const _: () = assert!(RUN_BYTES_MAX < SLED_SEGMENT_BYTES / 4);
const _: () = assert!(GROUP_OPS_MAX <= COMMIT_QUEUE_MAX);
const _: () = assert!(SUBSCRIBE_BATCH_MAX <= HISTORY_LIMIT_MAX as usize);
const _: () = assert!(SNAPSHOTS_KEPT >= 1);
const _: () = assert!(DELIVER_BATCH_MAX <= PENDING_EVENTS_MAX);

/// How long opening a database waits for sled's file lock of a database just dropped in
/// this process (see [`crate::storage::open_waiting_for_lock`]).
pub const SLED_LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

/// Blocks whose order keys the sled storage remembers for checking copies of events
/// (at most `BLOCK_BYTES_MAX` of events each, 32 bytes a key).
pub const RECENT_BLOCKS_MAX: usize = 16;
