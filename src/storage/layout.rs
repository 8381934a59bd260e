//! The on-disk layout of a site's database: the storage format version, the keys of the
//! one data tree, and the compact form of a stored event.
//!
//! Every stream lives in one fixed sled tree as key prefixes, never in a tree of its own:
//! sled 0.34.7 keeps the roots of all trees in one map that it clones and rewrites whole
//! whenever a tree is created (`PageCache::cas_root_in_meta`), so a tree per stream made
//! the n-th stream cost O(n). With one tree, a group commit is also one atomic sled batch
//! whatever the number of streams it touches.
//!
//! Keys of the data tree (a byte saying what the record is, then the stream's 16 bytes):
//!
//! | key | value |
//! | --- | --- |
//! | `t` stream | the stream type's name (written with the stream's first event) |
//! | `b` stream site last-seq | a block: a run of one lane's events, up to that seq, written in one group commit |
//! | `s` stream order-key | a view snapshot taken after the event at that key |
//! | `l` position | a log entry: how many events one sled batch wrote and the keys of their blocks, whose events are the site's log from that position on, in canonical order |
//! | `r` site | how far that peer's log is durable here (a big-endian position) |
//! | `a` site number | an [`Attestation`] of that site: its signature over the ids of events it wrote |
//!
//! Seqs are big-endian and order keys are 32 bytes that sort like [`OrderKey`], so a prefix
//! scan of `b` stream site is the lane in seq order, and the block holding seq n is the
//! first at or after `b` stream site n. A lane's last block ends at its frontier. A lane is
//! also in canonical order (each event depends on the one before it in its lane, so its
//! Lamport counter is larger): a stream in canonical order is its lanes merged.
//!
//! The site's log (every event it stores, numbered from one in the order they became
//! durable) costs one record per sled batch: replication reads it forward from a peer's
//! position, so what two sites exchange to resume is a position, not a frontier.
//!
//! One record per lane per group commit, not one per event and another for an index: sled
//! copies a leaf on every write, so its cost grows with the records written.

use crate::attest::Attestation;
use crate::clock::VectorClock;
use crate::codec;
use crate::event::{Event, OrderKey};
use crate::id::{EventId, Lane, LogPos, Seq, SiteId, StreamId};
use serde::{Deserialize, Serialize};

use super::{Replicated, StorageError};

/// The storage layout this build reads and writes. Version 1 was a sled tree per stream
/// with whole events as values (it had no version record); version 2 kept every stream in
/// one tree with a record per event and another per index entry; version 3 is this
/// module, with a block per lane per group commit, and events with full vector clocks;
/// version 4 is the same layout with events whose clocks name only what their lane's
/// previous event does not imply ([`Event::clock`]); version 5 is the same layout with
/// events whose ids are hashes of their content ([`Event::content_id`]); version 6 adds
/// attestations (`a` records) and the number of the attestation covering each event in its
/// block. Events of earlier versions are not signed (nor, before 5, content-addressed),
/// which every peer of protocol 9 or later refuses, so they cannot be kept: such a database is
/// refused, not upgraded.
pub const STORAGE_FORMAT: u32 = 6;

/// Key of the format version in sled's default tree, beside the site id.
pub(super) const FORMAT_KEY: &[u8] = b"gundb.format";

/// Key of the site id in sled's default tree (the same in every version, which is how a
/// version-1 database is told from an empty folder).
pub(super) const SITE_ID_KEY: &[u8] = b"gundb.site_id";

/// The name of the one tree that holds every stream.
pub(super) const DATA_TREE: &[u8] = b"gundb.streams";

const TYPE: u8 = b't';
const BLOCK: u8 = b'b';
const SNAPSHOT: u8 = b's';
const LOG: u8 = b'l';
const REPLICATED: u8 = b'r';
const ATTESTATION: u8 = b'a';

/// Length of a block key.
pub(super) const BLOCK_KEY_LEN: usize = 41;

/// `l` position: the log entry whose first event is at `first`.
pub(super) fn log_key(first: LogPos) -> [u8; 9] {
    let mut out = [0u8; 9];
    out[0] = LOG;
    out[1..].copy_from_slice(&first.0.to_be_bytes());
    out
}

/// The first byte of every log entry's key.
pub(super) const LOG_PREFIX: [u8; 1] = [LOG];

/// The position of a log entry's key.
pub(super) fn parse_log_key(key: &[u8]) -> Result<LogPos, StorageError> {
    let bytes: [u8; 8] = key
        .get(1..9)
        .and_then(|b| b.try_into().ok())
        .ok_or_else(|| StorageError::Corrupt(format!("log key of {} bytes", key.len())))?;
    Ok(LogPos(u64::from_be_bytes(bytes)))
}

/// A log entry's value: how many events it holds (big-endian u32), then the keys of the
/// blocks that hold them.
pub(super) fn join_log_entry<'a>(events: u32, blocks: impl IntoIterator<Item = &'a [u8; BLOCK_KEY_LEN]>) -> Vec<u8> {
    let mut out = events.to_be_bytes().to_vec();
    for block in blocks {
        out.extend_from_slice(block);
    }
    out
}

/// How many events a log entry holds, and the keys of its blocks.
pub(super) fn split_log_entry(value: &[u8]) -> Result<(u64, std::slice::ChunksExact<'_, u8>), StorageError> {
    let corrupt = || StorageError::Corrupt(format!("log entry of {} bytes", value.len()));
    let (count, blocks) = value.split_first_chunk::<4>().ok_or_else(corrupt)?;
    if blocks.len() % BLOCK_KEY_LEN != 0 {
        return Err(corrupt());
    }
    Ok((u64::from(u32::from_be_bytes(*count)), blocks.chunks_exact(BLOCK_KEY_LEN)))
}

/// `a` site number: attestation `number` of `site`.
pub(super) fn attestation_key(site: SiteId, number: u64) -> [u8; 25] {
    let mut out = [0u8; 25];
    out[0] = ATTESTATION;
    out[1..17].copy_from_slice(site.as_uuid().as_bytes());
    out[17..].copy_from_slice(&number.to_be_bytes());
    out
}

/// `r` site: how far `peer`'s log is durable here.
pub(super) fn replicated_key(peer: SiteId) -> [u8; 17] {
    let mut out = [0u8; 17];
    out[0] = REPLICATED;
    out[1..].copy_from_slice(peer.as_uuid().as_bytes());
    out
}

/// An `a` record: the attestation, encoded.
pub(super) fn encode_attestation(attestation: &Attestation) -> Result<Vec<u8>, StorageError> {
    Ok(codec::encode(attestation)?)
}

/// Reads an `a` record written by [`encode_attestation`]. From this site's own disk, where
/// only verified attestations are written: not verified again.
pub(super) fn decode_attestation(bytes: &[u8]) -> Result<Attestation, StorageError> {
    Ok(codec::decode(bytes)?)
}

/// A `r` record: the common position as 8 big-endian bytes, then the origins held less
/// far, encoded, when there are any. A record of storage format 4 is the 8 bytes alone.
pub(super) fn encode_replicated(held: &Replicated) -> Result<Vec<u8>, StorageError> {
    let mut out = held.upto.0.to_be_bytes().to_vec();
    if !held.behind.is_empty() {
        out.extend(codec::encode(&held.behind)?);
    }
    Ok(out)
}

/// Reads a `r` record written by [`encode_replicated`].
pub(super) fn decode_replicated(bytes: &[u8]) -> Result<Replicated, StorageError> {
    let Some((upto, behind)) = bytes.split_first_chunk::<8>() else {
        return Err(StorageError::Corrupt(format!("replication progress of {} bytes", bytes.len())));
    };
    let behind = if behind.is_empty() { Vec::new() } else { codec::decode(behind)? };
    Ok(Replicated { upto: LogPos(u64::from_be_bytes(*upto)), behind })
}

/// `t` stream: the stream's record.
pub(super) fn type_key(stream: StreamId) -> [u8; 17] {
    let mut out = [0u8; 17];
    out[0] = TYPE;
    out[1..].copy_from_slice(stream.as_uuid().as_bytes());
    out
}

/// The first byte of every stream record key: `t` followed by a stream id.
pub(super) const TYPE_PREFIX: [u8; 1] = [TYPE];

/// `s` stream: the prefix of a stream's snapshots.
pub(super) fn snapshot_prefix(stream: StreamId) -> [u8; 17] {
    let mut out = type_key(stream);
    out[0] = SNAPSHOT;
    out
}

/// `s` stream key: the snapshot taken after the event at `key`.
pub(super) fn snapshot_key(stream: StreamId, key: &OrderKey) -> [u8; 49] {
    keyed(SNAPSHOT, stream, key)
}

/// `b` stream: the prefix of a stream's blocks, every lane's.
pub(super) fn blocks_prefix(stream: StreamId) -> [u8; 17] {
    let mut out = type_key(stream);
    out[0] = BLOCK;
    out
}

/// `b` stream site seq: the key of `lane`'s block that ends at `seq`.
pub(super) fn block_key(lane: Lane, seq: Seq) -> [u8; BLOCK_KEY_LEN] {
    let mut out = [0u8; BLOCK_KEY_LEN];
    out[..17].copy_from_slice(&blocks_prefix(lane.stream));
    out[17..33].copy_from_slice(lane.site.as_uuid().as_bytes());
    out[33..].copy_from_slice(&seq.0.to_be_bytes());
    out
}

/// The lane and last seq of a block key.
pub(super) fn parse_block_ref(key: &[u8]) -> Result<(Lane, Seq), StorageError> {
    let corrupt = || StorageError::Corrupt(format!("block key of {} bytes", key.len()));
    let stream: [u8; 16] = key.get(1..17).and_then(|b| b.try_into().ok()).ok_or_else(corrupt)?;
    let (site, seq) = parse_block_key(key)?;
    Ok((Lane::new(site, StreamId(uuid::Uuid::from_bytes(stream))), seq))
}

/// The site and last seq of a block key.
pub(super) fn parse_block_key(key: &[u8]) -> Result<(SiteId, Seq), StorageError> {
    let corrupt = || StorageError::Corrupt(format!("block key of {} bytes", key.len()));
    let site: [u8; 16] = key.get(17..33).and_then(|b| b.try_into().ok()).ok_or_else(corrupt)?;
    let seq: [u8; 8] = key.get(33..41).and_then(|b| b.try_into().ok()).ok_or_else(corrupt)?;
    Ok((SiteId(uuid::Uuid::from_bytes(site)), Seq(u64::from_be_bytes(seq))))
}

/// The stream id of a `t` stream key.
pub(super) fn parse_type_key(key: &[u8]) -> Result<StreamId, StorageError> {
    let id: [u8; 16] = key
        .get(1..17)
        .and_then(|b| b.try_into().ok())
        .ok_or_else(|| StorageError::Corrupt(format!("stream record key of {} bytes", key.len())))?;
    Ok(StreamId(uuid::Uuid::from_bytes(id)))
}

/// The order key at the end of an `s` key.
pub(super) fn parse_order_key(key: &[u8]) -> Result<OrderKey, StorageError> {
    let bytes = key.get(17..).unwrap_or_default();
    OrderKey::from_bytes(bytes).ok_or_else(|| StorageError::Corrupt(format!("order key of {} bytes", bytes.len())))
}

/// The smallest key greater than every key that starts with `prefix`.
pub(super) fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < u8::MAX {
            end.push(last + 1);
            return end;
        }
    }
    // Only an all-0xFF prefix gets here, and every prefix here starts with a record byte.
    vec![u8::MAX; prefix.len() + 1]
}

fn keyed(kind: u8, stream: StreamId, key: &OrderKey) -> [u8; 49] {
    let mut out = [0u8; 49];
    out[0] = kind;
    out[1..17].copy_from_slice(stream.as_uuid().as_bytes());
    out[17..].copy_from_slice(&key.to_bytes());
    out
}

/// A clock entry in the event's own stream: (site, seq).
type SameStream = ([u8; 16], u64);
/// A clock entry in another stream: (site, stream, seq).
type OtherStream = ([u8; 16], [u8; 16], u64);

/// An event as stored in its lane's block: what the block's key (stream, site) and the
/// stream's record (the type) do not say. The clock leaves out the event's own lane (it is
/// always at the event's seq) and names lanes of its own stream by site alone. Written
/// with a borrowed payload, read back with an owned one: the same encoding, as bytes (a
/// length and the bytes, copied at once rather than visited one by one).
#[derive(Serialize, Deserialize)]
struct StoredEvent<P> {
    id: [u8; 16],
    seq: u64,
    lamport: u64,
    timestamp_ms: u64,
    same_stream: Vec<SameStream>,
    other_streams: Vec<OtherStream>,
    payload: P,
}

/// The stored form of `event`.
///
/// # Errors
/// The event's clock does not name its own lane at its seq (the store only takes
/// well-formed events, so this is a caller's bug), or it does not encode.
pub(super) fn encode_event(event: &Event) -> Result<Vec<u8>, StorageError> {
    if !event.clock_names_own_lane() {
        return Err(StorageError::Corrupt(format!(
            "event {} at {} seq {} has a clock without its own lane at that seq",
            event.id, event.lane, event.seq.0
        )));
    }
    let stream = event.lane.stream;
    let mut same_stream = Vec::new();
    let mut other_streams = Vec::new();
    for (lane, seq) in event.clock.iter() {
        if lane == event.lane {
            continue;
        }
        let site = *lane.site.as_uuid().as_bytes();
        if lane.stream == stream {
            same_stream.push((site, seq.0));
        } else {
            other_streams.push((site, *lane.stream.as_uuid().as_bytes(), seq.0));
        }
    }
    let stored = StoredEvent {
        id: *event.id.as_uuid().as_bytes(),
        seq: event.seq.0,
        lamport: event.lamport,
        timestamp_ms: event.timestamp_ms,
        same_stream,
        other_streams,
        payload: serde_bytes::Bytes::new(&event.payload),
    };
    Ok(codec::encode_run_item(&stored)?)
}

/// A block of `lane`'s events: for each, the number of the attestation covering it, then
/// its bytes from [`encode_event`].
///
/// # Errors
/// A number does not encode (it always does).
pub(super) fn join_block<'a>(events: impl IntoIterator<Item = (u64, &'a [u8])>) -> Result<Vec<u8>, StorageError> {
    let mut out = codec::join_run(std::iter::empty());
    for (attestation, bytes) in events {
        codec::push_run_item(&mut out, &attestation)?;
        out.extend_from_slice(bytes);
    }
    Ok(out)
}

/// One item of a block, as [`join_block`] wrote it.
#[derive(Deserialize)]
struct BlockItem {
    attestation: u64,
    event: StoredEvent<serde_bytes::ByteBuf>,
}

/// The events of `lane`'s block `bytes`, whose stream has type `stream_type`, in seq order.
///
/// # Errors
/// The bytes do not decode, decode to an event whose clock names its own lane twice, or
/// the block's seqs are not consecutive.
pub(super) fn decode_block(lane: Lane, stream_type: &str, bytes: &[u8]) -> Result<Vec<Event>, StorageError> {
    let stored: Vec<BlockItem> = codec::decode_run(bytes)?;
    let events = stored
        .into_iter()
        .map(|item| decode_event(lane, stream_type, item.event, item.attestation))
        .collect::<Result<Vec<_>, _>>()?;
    if events.windows(2).any(|pair| pair[1].seq != pair[0].seq.next()) {
        return Err(StorageError::Corrupt(format!("a block of {lane} with seqs out of order")));
    }
    Ok(events)
}

fn decode_event(
    lane: Lane,
    stream_type: &str,
    stored: StoredEvent<serde_bytes::ByteBuf>,
    attestation: u64,
) -> Result<Event, StorageError> {
    let stream = lane.stream;
    let site_lane = |site: [u8; 16]| Lane::new(SiteId(uuid::Uuid::from_bytes(site)), stream);
    let clock: VectorClock = std::iter::once((lane, Seq(stored.seq)))
        .chain(stored.same_stream.into_iter().map(|(site, seq)| (site_lane(site), Seq(seq))))
        .chain(stored.other_streams.into_iter().map(|(site, other, seq)| {
            (Lane::new(SiteId(uuid::Uuid::from_bytes(site)), StreamId(uuid::Uuid::from_bytes(other))), Seq(seq))
        }))
        .collect();
    let event = Event {
        id: EventId(uuid::Uuid::from_bytes(stored.id)),
        lane,
        seq: Seq(stored.seq),
        clock,
        lamport: stored.lamport,
        timestamp_ms: stored.timestamp_ms,
        stream_type: stream_type.to_owned(),
        payload: stored.payload.into_vec(),
        attestation,
    };
    if !event.clock_names_own_lane() {
        return Err(StorageError::Corrupt(format!("stored event {} names its own lane twice", event.id)));
    }
    Ok(event)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testkit;
    use proptest::prelude::*;

    proptest! {
        /// A block gives back exactly its events, for any clocks over a few streams.
        #[test]
        fn a_block_round_trips(
            first in 1u64..1_000,
            events in proptest::collection::vec(
                (proptest::collection::vec((0u8..4, 0u8..3, 1u64..1_000), 0..8),
                 proptest::collection::vec(any::<u8>(), 0..64),
                 1u64..1_000_000,
                 any::<u64>()),
                1..6),
        ) {
            let stream = StreamId::from_u128(10);
            let lane = Lane::new(SiteId::from_u128(1), stream);
            let events: Vec<Event> = (first..).zip(events).map(|(seq, (others, payload, lamport, timestamp_ms))| {
                let deps: Vec<(Lane, u64)> = others
                    .into_iter()
                    .map(|(site, other, at)| {
                        let other = StreamId::from_u128(u128::from(other) + 10);
                        (Lane::new(SiteId::from_u128(u128::from(site) + 2), other), at)
                    })
                    .collect();
                let mut event = testkit::event(u128::from(seq), lane, seq, &deps, lamport, timestamp_ms);
                event.payload = payload;
                event.attestation = lamport;
                event
            }).collect();
            let encoded: Vec<Vec<u8>> = events.iter().map(|e| encode_event(e).unwrap()).collect();
            let block = join_block(events.iter().zip(&encoded).map(|(e, bytes)| (e.attestation, bytes.as_slice()))).unwrap();
            prop_assert_eq!(decode_block(lane, "testkit", &block).unwrap(), events);
        }
    }

    #[test]
    fn a_block_with_a_gap_is_refused() {
        let lane = Lane::new(SiteId::from_u128(1), StreamId::from_u128(2));
        let (one, three) = (testkit::event(1, lane, 1, &[], 1, 0), testkit::event(3, lane, 3, &[], 3, 0));
        let encoded = [encode_event(&one).unwrap(), encode_event(&three).unwrap()];
        let block = join_block(encoded.iter().map(|bytes| (0, bytes.as_slice()))).unwrap();
        assert!(matches!(decode_block(lane, "testkit", &block), Err(StorageError::Corrupt(_))));
    }

    #[test]
    fn prefix_end_is_past_every_key_with_the_prefix() {
        assert_eq!(prefix_end(&[b'e', 1, 0xFF]), vec![b'e', 2]);
        let last = Lane::new(SiteId::from_u128(u128::MAX), StreamId::from_u128(u128::MAX));
        assert!(prefix_end(&blocks_prefix(last.stream)).as_slice() > block_key(last, Seq(u64::MAX)).as_slice());
    }

    #[test]
    fn keys_parse_back() {
        let lane = Lane::new(SiteId::from_u128(7), StreamId::from_u128(8));
        assert_eq!(parse_block_key(&block_key(lane, Seq(300))).unwrap(), (lane.site, Seq(300)));
        assert_eq!(parse_type_key(&type_key(lane.stream)).unwrap(), lane.stream);
    }
}
