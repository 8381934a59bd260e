//! [`Event`], its canonical [`OrderKey`], and the [`EventMeta`] a view sees.
//!
//! Pure data. Every site orders a stream's events by `(lamport, timestamp_ms, id)`: the
//! Lamport counter puts every dependency first, the timestamp then orders concurrent events
//! by time as the seed asks, and the id breaks the remaining ties the same way everywhere.

use crate::clock::VectorClock;
use crate::id::{EventId, Lane, Seq};
use serde::{Deserialize, Serialize};

/// One event of one lane, as stored on disk and sent between sites.
///
/// # Examples
/// ```
/// use gundb::{Event, Lane, Seq, SiteId, StreamId, VectorClock};
///
/// let lane = Lane::new(SiteId::random(), StreamId::random());
/// let clock: VectorClock = [(lane, Seq(1))].into_iter().collect();
/// let mut event = Event::new(lane, Seq(1), clock, 1, 0, "doc.counter".into(), vec![1]);
/// assert_eq!(event.id, event.content_id(), "the id is the content's");
/// event.payload = vec![2];
/// assert_ne!(event.id, event.content_id(), "an altered event no longer matches its id");
/// ```
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct Event {
    /// The event's identity, a hash of everything else ([`Event::content_id`]): copies of
    /// it share this id, and no two different events can (short of a hash collision), so
    /// an event cannot borrow another's place in canonical order, nor be altered and keep
    /// its id.
    pub id: EventId,
    /// The site and stream that wrote it.
    pub lane: Lane,
    /// Its position in its lane.
    pub seq: Seq,
    /// Its own lane at `seq` plus the events it depends on that its lane's previous event
    /// does not: at the writer, the stream's heads (the delivered events no other
    /// delivered event depends on) and any dependencies in other streams. Its causal past
    /// is its lane's previous event's with everything named here and theirs, so a clock
    /// does not grow with the number of sites that ever wrote the stream. A clock that
    /// names more (a full vector clock, as storage format 3 and protocol 5 kept) means the
    /// same thing.
    pub clock: VectorClock,
    /// 1 + the largest Lamport counter of what it depends on.
    pub lamport: u64,
    /// Its writer's wall clock when it was written, in milliseconds since the Unix epoch.
    pub timestamp_ms: u64,
    /// The stable name of its stream type.
    pub stream_type: String,
    /// The application's event, encoded by [`crate::codec`]. Encoded as bytes (a length
    /// and the bytes: the same encoding as a sequence of `u8`, copied at once).
    #[serde(with = "serde_bytes")]
    pub payload: Vec<u8>,
    /// The number of its site's [`crate::attest::Attestation`] that covers it: 0 until its
    /// site's storage writes it and signs. Not part of its content: where it is signed,
    /// not what.
    pub attestation: u64,
}

/// Where an event sorts in its stream's canonical order. Field order is sort order.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug, Serialize, Deserialize)]
pub struct OrderKey {
    /// The event's Lamport counter.
    pub lamport: u64,
    /// The event's timestamp.
    pub timestamp_ms: u64,
    /// The event's id.
    pub id: EventId,
}

impl OrderKey {
    /// Bytes that sort like the key: big-endian counters then the id.
    pub fn to_bytes(&self) -> [u8; 32] {
        let mut out = [0u8; 32];
        out[..8].copy_from_slice(&self.lamport.to_be_bytes());
        out[8..16].copy_from_slice(&self.timestamp_ms.to_be_bytes());
        out[16..].copy_from_slice(self.id.as_uuid().as_bytes());
        out
    }

    /// The key written by [`OrderKey::to_bytes`]; `None` when `bytes` is not 32 long.
    pub fn from_bytes(bytes: &[u8]) -> Option<OrderKey> {
        let bytes: &[u8; 32] = bytes.try_into().ok()?;
        let (lamport, rest) = bytes.split_at(8);
        let (timestamp_ms, id) = rest.split_at(8);
        Some(OrderKey {
            lamport: u64::from_be_bytes(lamport.try_into().ok()?),
            timestamp_ms: u64::from_be_bytes(timestamp_ms.try_into().ok()?),
            id: EventId(uuid::Uuid::from_slice(id).ok()?),
        })
    }
}

impl Event {
    /// An event with this content, and the id that commits to it.
    #[allow(clippy::too_many_arguments)] // an event's fields, each named at the call
    pub fn new(
        lane: Lane,
        seq: Seq,
        clock: VectorClock,
        lamport: u64,
        timestamp_ms: u64,
        stream_type: String,
        payload: Vec<u8>,
    ) -> Self {
        let mut event = Event {
            id: EventId::from_u128(0),
            lane,
            seq,
            clock,
            lamport,
            timestamp_ms,
            stream_type,
            payload,
            attestation: 0,
        };
        event.id = event.content_id();
        event
    }

    /// The id an event with this content has: the first 128 bits of a BLAKE3 hash (in
    /// key-derivation mode, under a context string of its own) of every other field but
    /// [`Event::attestation`]. The
    /// fields are fed to the hash one by one, each fixed-size or prefixed by its length,
    /// rather than through [`crate::codec`]: ids must not change when the codec does.
    pub fn content_id(&self) -> EventId {
        // Deriving the key from the context string costs a compression per id: once.
        static KEYED: std::sync::LazyLock<blake3::Hasher> =
            std::sync::LazyLock::new(|| blake3::Hasher::new_derive_key("gundb 2026-11 event id"));
        let mut hash = KEYED.clone();
        let lane = |hash: &mut blake3::Hasher, lane: Lane| {
            hash.update(lane.site.as_uuid().as_bytes());
            hash.update(lane.stream.as_uuid().as_bytes());
        };
        let length = |len: usize| u64::try_from(len).unwrap_or(u64::MAX).to_be_bytes();
        lane(&mut hash, self.lane);
        hash.update(&self.seq.0.to_be_bytes());
        hash.update(&length(self.clock.len()));
        for (named, seq) in self.clock.iter() {
            lane(&mut hash, named);
            hash.update(&seq.0.to_be_bytes());
        }
        hash.update(&self.lamport.to_be_bytes());
        hash.update(&self.timestamp_ms.to_be_bytes());
        hash.update(&length(self.stream_type.len()));
        hash.update(self.stream_type.as_bytes());
        hash.update(&length(self.payload.len()));
        hash.update(&self.payload);
        let mut id = [0u8; 16];
        id.copy_from_slice(&hash.finalize().as_bytes()[..16]);
        EventId(uuid::Uuid::from_bytes(id))
    }

    /// Bytes it takes in memory, about: what bounds on held events count.
    pub fn size(&self) -> usize {
        self.payload.len() + self.stream_type.len() + self.clock.len() * 48 + 160
    }

    /// The event's position in canonical order.
    pub fn order_key(&self) -> OrderKey {
        OrderKey { lamport: self.lamport, timestamp_ms: self.timestamp_ms, id: self.id }
    }

    /// What a view sees of the event besides its payload.
    pub fn meta(&self) -> EventMeta<'_> {
        EventMeta {
            id: self.id,
            lane: self.lane,
            seq: self.seq,
            clock: &self.clock,
            lamport: self.lamport,
            timestamp_ms: self.timestamp_ms,
        }
    }

    /// True when `other`'s clock names `self`: `other` is a later event of `self`'s lane or
    /// names it (or a later event of its lane) among what it depends on. Then `self` is in
    /// `other`'s past. The converse needs the whole past: a clock names only what its
    /// lane's previous event does not imply, so follow the named events' clocks too.
    pub fn is_named_by(&self, other: &Event) -> bool {
        self.id != other.id && other.clock.covers(self.lane, self.seq)
    }

    /// True when the clock names the event's own lane at exactly its seq, as every
    /// well-formed event's does.
    pub fn clock_names_own_lane(&self) -> bool {
        self.seq > Seq::ZERO && self.clock.get(self.lane) == self.seq
    }
}

/// An event's metadata, handed to [`crate::View::apply_event`] beside the decoded payload.
#[derive(Clone, Copy, Debug)]
pub struct EventMeta<'a> {
    /// The event's id.
    pub id: EventId,
    /// The lane (site, stream) that wrote it.
    pub lane: Lane,
    /// Its position in that lane.
    pub seq: Seq,
    /// Its clock: its own lane at its seq plus what it depends on beyond its lane's
    /// previous event (see [`Event::clock`]).
    pub clock: &'a VectorClock,
    /// Its Lamport counter.
    pub lamport: u64,
    /// Its writer's timestamp in milliseconds.
    pub timestamp_ms: u64,
}

/// What a local write depends on besides its own stream: other streams' events, as a clock
/// and the largest Lamport counter among them. Take it from an earlier write's
/// [`crate::Emitted`] or a view's [`crate::ViewReply`].
#[derive(Clone, PartialEq, Eq, Debug, Default, Serialize, Deserialize)]
pub struct Dependencies {
    /// The lanes depended on, at the counter seen.
    pub clock: VectorClock,
    /// The largest Lamport counter among the events depended on. A hint only: a write
    /// reads the counters of the events it names from storage, since every site checks
    /// that an event's counter is exactly one more than theirs.
    pub lamport: u64,
}

/// The heads of a stream whose lanes end at `lane_ends` (each lane's last event): every
/// lane end that no other lane end names. Naming them names everything the stream holds,
/// since each lane end left out is in the past of one kept (causality has no cycles).
/// After writes that saw each other it is one event, whatever the number of lanes.
pub fn heads_of<'a>(lane_ends: impl IntoIterator<Item = &'a Event> + Clone) -> VectorClock {
    let mut named = VectorClock::new();
    for end in lane_ends.clone() {
        for (lane, seq) in end.clock.iter().filter(|&(lane, _)| lane != end.lane && lane.stream == end.lane.stream) {
            named.set(lane, named.get(lane).max(seq));
        }
    }
    lane_ends.into_iter().filter(|end| named.get(end.lane) < end.seq).map(|end| (end.lane, end.seq)).collect()
}

impl Dependencies {
    /// No extra dependencies.
    pub fn none() -> Self {
        Self::default()
    }

    /// Adds everything `other` depends on.
    pub fn merge(&mut self, other: &Dependencies) {
        self.clock.merge(&other.clock);
        self.lamport = self.lamport.max(other.lamport);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn order_key_bytes_sort_like_the_key(a in any::<(u64, u64, u128)>(), b in any::<(u64, u64, u128)>()) {
            let key = |(lamport, timestamp_ms, id): (u64, u64, u128)| OrderKey { lamport, timestamp_ms, id: EventId::from_u128(id) };
            let (ka, kb) = (key(a), key(b));
            prop_assert_eq!(ka.cmp(&kb), ka.to_bytes().cmp(&kb.to_bytes()));
            prop_assert_eq!(OrderKey::from_bytes(&ka.to_bytes()), Some(ka));
        }
    }
}
