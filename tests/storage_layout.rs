//! The storage layout: a database written in another storage format is refused with an
//! error naming both formats and is left untouched; whatever the number of streams, the
//! database keeps a fixed set of sled trees; the stream type is stored once per stream
//! and listed a page at a time.
#![allow(clippy::unwrap_used)]

mod common;

use actix::Actor;
use common::{run_site, TrailStream};
use gundb::storage::{Replicated, SledStorage, Storage, StorageError, STORAGE_FORMAT};
use gundb::{Emit, LogPos, StreamActor, StreamId};
use std::sync::Arc;

/// A database as the version-1 layout left it: a site id, no format record, and a sled tree
/// per stream. Opening it is refused with both versions named, and nothing is written.
#[test]
fn a_database_of_the_old_layout_is_refused_with_both_versions_and_left_as_it_was() {
    let dir = tempfile::tempdir().unwrap();
    {
        let db = sled::Config::new().path(dir.path()).segment_size(gundb::limits::SLED_SEGMENT_BYTES).open().unwrap();
        db.insert(b"gundb.site_id", uuid::Uuid::from_u128(7).as_bytes()).unwrap();
        db.open_tree(b"stream:0123456789abcdef").unwrap().insert(b"t", b"trail").unwrap();
        db.flush().unwrap();
    }
    let refused = SledStorage::open(dir.path()).expect_err("an old database is refused");
    assert!(
        matches!(refused, StorageError::Format { found: 1, supported, .. } if supported == STORAGE_FORMAT),
        "{refused:?}"
    );
    let message = refused.to_string();
    let ours = format!("reads format {STORAGE_FORMAT}");
    assert!(message.contains("storage format 1") && message.contains(&ours), "{message}");
    assert!(message.contains("start this site from an empty one"), "the message says what to do: {message}");

    let config = sled::Config::new().path(dir.path()).segment_size(gundb::limits::SLED_SEGMENT_BYTES);
    let db = gundb::storage::open_waiting_for_lock(&config).unwrap();
    assert_eq!(db.get(b"gundb.format").unwrap(), None, "the refused database was not changed");
    assert_eq!(db.tree_names().len(), 2, "no tree was added");
}

/// A database of a newer format than this build's is refused the same way.
#[test]
fn a_database_of_a_newer_format_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    drop(SledStorage::open(dir.path()).unwrap());
    {
        let config = sled::Config::new().path(dir.path()).segment_size(gundb::limits::SLED_SEGMENT_BYTES);
        let db = gundb::storage::open_waiting_for_lock(&config).unwrap();
        db.insert(b"gundb.format", &(STORAGE_FORMAT + 1).to_be_bytes()).unwrap();
        db.flush().unwrap();
    }
    let refused = SledStorage::open(dir.path()).expect_err("a newer database is refused");
    assert!(matches!(refused, StorageError::Format { found, .. } if found == STORAGE_FORMAT + 1), "{refused:?}");
}

/// A database of format 4 (events with random ids and unsigned, which no peer of this build
/// accepts) is refused with both formats named, like any other format.
#[test]
fn a_database_of_format_4_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    drop(SledStorage::open(dir.path()).unwrap());
    {
        let config = sled::Config::new().path(dir.path()).segment_size(gundb::limits::SLED_SEGMENT_BYTES);
        let db = gundb::storage::open_waiting_for_lock(&config).unwrap();
        db.insert(b"gundb.format", &4u32.to_be_bytes()).unwrap();
        db.flush().unwrap();
    }
    let refused = SledStorage::open(dir.path()).expect_err("a format-4 database is refused");
    assert!(matches!(refused, StorageError::Format { found: 4, supported: 6, .. }), "{refused:?}");
}

/// 300 streams, each written once: the database still has its two trees (sled's default
/// tree and the data tree), the streams list in id order a page at a time, and a stream
/// that was opened but never written is not listed.
#[test]
fn streams_are_key_prefixes_in_a_fixed_set_of_trees() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_path_buf();
    let written: Vec<StreamId> = (1..=300u128).map(StreamId::from_u128).collect();
    let expected = written.clone();
    run_site(move || async move {
        let storage: Arc<dyn Storage> = Arc::new(SledStorage::open(&path).unwrap());
        for stream in written {
            let actor = StreamActor::<TrailStream>::open(Arc::clone(&storage), stream).unwrap().start();
            actor.send(Emit::new(1)).await.unwrap().unwrap();
        }
        let idle = StreamActor::<TrailStream>::open(Arc::clone(&storage), StreamId::from_u128(1_000)).unwrap();
        drop(idle);
        let mut listed = Vec::new();
        let mut after = None;
        loop {
            let page = storage.streams_page(after, 64).unwrap();
            assert!(page.len() <= 64);
            let Some((last, _)) = page.last() else { break };
            after = Some(*last);
            for (stream, stream_type) in page {
                assert_eq!(stream_type, "test.trail");
                listed.push(stream);
            }
        }
        assert_eq!(listed, expected, "every written stream once, in id order, and no unwritten one");
        assert_eq!(storage.stream_type(StreamId::from_u128(1_000)).unwrap(), None);
    });
    let config = sled::Config::new().path(dir.path()).segment_size(gundb::limits::SLED_SEGMENT_BYTES);
    let db = gundb::storage::open_waiting_for_lock(&config).unwrap();
    assert_eq!(db.tree_names().len(), 2, "sled's default tree and the data tree, whatever the number of streams");
}

/// Seeded histories (3 streams, 4 writing sites, 400 events) stored in sled in appends of
/// 1 to 40 events of one lane, and in memory: every read agrees. Canonical-order pages
/// from and before random keys, with random limits (the stream's lanes merged from their
/// blocks), lane pages after random seqs, the event at every (lane, seq) and the frontier.
#[test]
fn blocks_read_back_like_the_reference_store() {
    use gundb::storage::{Append, MemoryStorage};
    use gundb::testkit::{history, HistoryShape, Rng};
    use gundb::{Lane, OrderKey, Seq};
    use std::ops::Bound;

    for seed in 0..8u64 {
        let mut rng = Rng::new(seed);
        let events = history(HistoryShape { sites: 4, streams: 3, events: 400, sync_percent: 30 }, &mut rng);
        let sled = SledStorage::temporary().unwrap();
        let memory = MemoryStorage::new(sled.keys().clone());
        let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
        let streams: Vec<StreamId> = {
            let mut streams: Vec<StreamId> = events.iter().map(|e| e.lane.stream).collect();
            streams.sort();
            streams.dedup();
            streams
        };
        for &stream in &streams {
            sled.open_stream(stream, "testkit").unwrap();
            memory.open_stream(stream, "testkit").unwrap();
        }
        // Appends of a random number of one lane's consecutive events, in written order.
        let mut rest: Vec<&gundb::Event> = events.iter().collect();
        while let Some(first) = rest.first().copied() {
            let take = 1 + rng.index(40);
            let run: Vec<gundb::Event> =
                rest.iter().filter(|e| e.lane == first.lane).take(take).map(|e| (*e).clone()).collect();
            rest.retain(|e| !run.iter().any(|r| r.id == e.id));
            let append = Append { events: &run, stale_snapshots: &[] };
            runtime.block_on(sled.append(first.lane.stream, append).unwrap()).unwrap();
            runtime.block_on(memory.append(first.lane.stream, append).unwrap()).unwrap();
        }
        let keys: Vec<OrderKey> = events.iter().map(gundb::Event::order_key).collect();
        for &stream in &streams {
            assert_eq!(sled.frontier(stream).unwrap(), memory.frontier(stream).unwrap(), "seed {seed}");
            for _ in 0..40 {
                let key = keys[rng.index(keys.len())];
                let from = match rng.below(3) {
                    0 => Bound::Included(key),
                    1 => Bound::Excluded(key),
                    _ => Bound::Unbounded,
                };
                let before = rng.chance(30).then(|| keys[rng.index(keys.len())]);
                let limit = 1 + rng.index(300);
                assert_eq!(
                    sled.events_from(stream, from, before, limit).unwrap(),
                    memory.events_from(stream, from, before, limit).unwrap(),
                    "seed {seed}: {from:?} before {before:?} limit {limit}"
                );
            }
        }
        for event in &events {
            let (lane, seq) = (event.lane, event.seq);
            assert_eq!(sled.key_at(lane.stream, lane, seq).unwrap(), Some(event.order_key()), "seed {seed}");
            let after = Seq(rng.below(seq.0));
            let limit = 1 + rng.index(50);
            assert_eq!(
                sled.lane_events(lane, after, limit).unwrap(),
                memory.lane_events(lane, after, limit).unwrap(),
                "seed {seed}: {lane} after {after:?}"
            );
        }
        let absent = Lane::new(gundb::SiteId::from_u128(99), streams[0]);
        assert_eq!(sled.key_at(absent.stream, absent, Seq(1)).unwrap(), None);
        // The site's log: every event once, in the order the appends became durable, read
        // from any position in pages of any length and byte budget.
        let whole = sled.log_after(LogPos(0), usize::MAX, usize::MAX).unwrap();
        assert_eq!(whole, memory.log_after(LogPos(0), usize::MAX, usize::MAX).unwrap(), "seed {seed}");
        assert_eq!(whole.last, LogPos(u64::try_from(events.len()).unwrap()), "seed {seed}");
        for _ in 0..40 {
            let after = LogPos(rng.below(u64::try_from(events.len()).unwrap() + 2));
            let limit = rng.index(100);
            let bytes = if rng.chance(50) { usize::MAX } else { rng.index(20_000) };
            let page = sled.log_after(after, limit, bytes).unwrap();
            assert_eq!(
                page,
                memory.log_after(after, limit, bytes).unwrap(),
                "seed {seed}: after {after} limit {limit}"
            );
            // The budget is reached by the last event, not before it.
            let sizes: Vec<usize> = page.events.iter().map(gundb::Event::size).collect();
            let before_last: usize = sizes.iter().rev().skip(1).sum();
            assert!(before_last < bytes, "seed {seed}: {before_last} bytes before the last event of {bytes}");
        }
        // What a peer wants of it: the events a filter keeps (each origin never, or past a
        // position), with their positions. sled passes over the entries nobody wants
        // unread; the reference reads everything and filters.
        let mut sites: Vec<gundb::SiteId> = events.iter().map(|e| e.lane.site).collect();
        sites.sort();
        sites.dedup();
        let logged = u64::try_from(events.len()).unwrap();
        for _ in 0..40 {
            let past: Vec<Option<u64>> = sites.iter().map(|_| rng.chance(60).then(|| rng.below(logged))).collect();
            let wanted = |origin: gundb::SiteId, pos: LogPos| {
                sites.iter().position(|&site| site == origin).and_then(|at| past[at]).is_some_and(|p| pos.0 > p)
            };
            let after = LogPos(rng.below(logged + 2));
            let limit = rng.index(200);
            let page = sled.log_wanted(after, limit, usize::MAX, &wanted).unwrap();
            let reference = memory.log_wanted(after, limit, usize::MAX, &wanted).unwrap();
            assert_eq!(page, reference, "seed {seed}: after {after} limit {limit} past {past:?}");
            let bytes = rng.index(20_000);
            let cut = sled.log_wanted(after, limit, bytes, &wanted).unwrap();
            assert!(page.events.starts_with(&cut.events), "seed {seed}: a byte budget cuts the same page short");
            let sizes: Vec<usize> = cut.events.iter().map(|(_, e)| e.size()).collect();
            assert!(sizes.iter().rev().skip(1).sum::<usize>() < bytes.max(1), "seed {seed}: over the budget");
        }
    }
}

/// The log's positions and each peer's recorded position survive a reopen, and the log
/// goes on numbering from where it ended.
#[test]
fn the_log_and_replication_positions_survive_a_reopen() {
    use gundb::storage::Append;
    use gundb::testkit::event;
    use gundb::{Lane, SiteId};
    let dir = tempfile::tempdir().unwrap();
    let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
    let (stream, peer) = (StreamId::from_u128(5), SiteId::from_u128(77));
    let append = |storage: &SledStorage, seqs: std::ops::RangeInclusive<u64>| {
        let lane = Lane::new(storage.site_id(), stream);
        let events: Vec<gundb::Event> = seqs.map(|seq| event(u128::from(seq), lane, seq, &[], seq, 0)).collect();
        let append = Append { events: &events, stale_snapshots: &[] };
        runtime.block_on(storage.append(stream, append).unwrap()).unwrap();
    };
    // Held up to 42, but for one origin whose events a direct link carried.
    let held = Replicated { upto: LogPos(42), behind: vec![(SiteId::from_u128(79), LogPos(17))] };
    let first = {
        let storage = SledStorage::open(dir.path()).unwrap();
        storage.open_stream(stream, "testkit").unwrap();
        append(&storage, 1..=3);
        append(&storage, 4..=5);
        storage.set_replicated(peer, &held).unwrap();
        append(&storage, 6..=6); // its flush makes the position durable too
        assert_eq!(storage.replicated(peer).unwrap(), held);
        storage.log_after(LogPos(0), usize::MAX, usize::MAX).unwrap()
    };
    assert_eq!(first.last, LogPos(6));
    let storage = SledStorage::open(dir.path()).unwrap();
    assert_eq!(storage.log_after(LogPos(0), usize::MAX, usize::MAX).unwrap(), first, "the same log after the reopen");
    assert_eq!(storage.replicated(peer).unwrap(), held);
    assert_eq!(storage.replicated(SiteId::from_u128(78)).unwrap(), Replicated::default(), "a peer never read from");
    append(&storage, 7..=8);
    let tail = storage.log_after(LogPos(5), usize::MAX, usize::MAX).unwrap();
    assert_eq!(tail.events.iter().map(|e| e.seq.0).collect::<Vec<_>>(), vec![6, 7, 8]);
    assert_eq!(tail.last, LogPos(8), "numbering goes on from the stored end");
}
