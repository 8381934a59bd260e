//! [`Lanes`]: how far each lane is delivered and durable at this site, as the router's
//! buffer needs it, in memory that does not grow with the number of lanes stored.
//!
//! Storage knows every lane's end; the router only needs the lanes it is working on. So a
//! lane is kept in memory only while it must be: while deliveries are in flight (durable
//! behind delivered, which storage cannot tell), or while events in the buffer belong to it
//! or wait on it (so the seqs their waiting lists hang on are never read back from storage
//! past a local write the router has not been told of yet). Other lanes sit in a bounded
//! cache of two generations (the older is dropped whole when the younger fills up, an
//! LRU's effect at a map's cost); a lane in neither is read from storage (`Stored`).
//!
//! Pure: storage comes in as a closure, so the simulation and the tests drive it too.

use crate::id::{Lane, Seq};
use std::collections::HashMap;

/// Hash maps keyed by lanes that remote peers choose: foldhash is fast and seeded per
/// map, so a peer cannot precompute colliding keys.
pub(super) type Map<K, V> = HashMap<K, V, foldhash::fast::RandomState>;

/// How far a lane is stored (durable) at this site, read from storage; `None` when it could
/// not be read (the caller has logged why).
pub type Stored = Box<dyn Fn(Lane) -> Option<Seq> + Send>;

/// A lane kept in memory whatever the cache does.
#[derive(Debug, Clone, Copy)]
struct Pinned {
    delivered: Seq,
    durable: Seq,
    /// Events held for the lane plus events waiting on one of its seqs.
    refs: u32,
}

/// Delivered and durable seqs of the lanes in use, the rest read from storage.
pub(super) struct Lanes {
    pinned: Map<Lane, Pinned>,
    /// Lanes at rest (durable as far as delivered), recently used.
    young: Map<Lane, Seq>,
    old: Map<Lane, Seq>,
    /// Lanes the two generations hold at most.
    cached_max: usize,
    stored: Stored,
}

impl std::fmt::Debug for Lanes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lanes")
            .field("pinned", &self.pinned.len())
            .field("cached", &(self.young.len() + self.old.len()))
            .finish_non_exhaustive()
    }
}

impl Lanes {
    /// Lanes read through `stored`, at most `cached_max` of those at rest kept.
    pub(super) fn new(cached_max: usize, stored: Stored) -> Self {
        Self { pinned: Map::default(), young: Map::default(), old: Map::default(), cached_max, stored }
    }

    /// (delivered, durable) of `lane` as far as memory knows it.
    pub(super) fn known(&self, lane: Lane) -> Option<(Seq, Seq)> {
        if let Some(pinned) = self.pinned.get(&lane) {
            return Some((pinned.delivered, pinned.durable));
        }
        self.young.get(&lane).or_else(|| self.old.get(&lane)).map(|&seq| (seq, seq))
    }

    /// (delivered, durable) of `lane`, read from storage when memory does not know it
    /// (and not kept: for requests that only look). `None` when storage could not be read.
    pub(super) fn peek(&self, lane: Lane) -> Option<(Seq, Seq)> {
        self.known(lane).or_else(|| (self.stored)(lane).map(|seq| (seq, seq)))
    }

    /// (delivered, durable) of `lane`, kept in the cache when read from storage. `None`
    /// when storage could not be read.
    pub(super) fn read(&mut self, lane: Lane) -> Option<(Seq, Seq)> {
        if let Some(known) = self.known(lane) {
            return Some(known);
        }
        let seq = (self.stored)(lane)?;
        self.remember(lane, seq);
        Some((seq, seq))
    }

    /// Sets how far `lane` is delivered and durable (`durable` at most `delivered`).
    pub(super) fn set(&mut self, lane: Lane, delivered: Seq, durable: Seq) {
        debug_assert!(durable <= delivered, "durable only after delivered");
        if let Some(pinned) = self.pinned.get_mut(&lane) {
            (pinned.delivered, pinned.durable) = (delivered, durable);
            if pinned.refs == 0 && durable == delivered {
                self.pinned.remove(&lane);
                self.remember(lane, delivered);
            }
        } else if durable < delivered {
            self.forget(lane);
            self.pinned.insert(lane, Pinned { delivered, durable, refs: 0 });
        } else {
            self.remember(lane, delivered);
        }
    }

    /// Keeps `lane` in memory until a matching [`Lanes::unpin`]. `None` (and nothing
    /// pinned) when storage could not be read.
    pub(super) fn pin(&mut self, lane: Lane) -> Option<()> {
        if let Some(pinned) = self.pinned.get_mut(&lane) {
            pinned.refs += 1;
            return Some(());
        }
        // Moved out of the cache, or read from storage straight into the pinned map.
        let (delivered, durable) = match self.known(lane) {
            Some(known) => {
                self.forget(lane);
                known
            }
            None => (self.stored)(lane).map(|seq| (seq, seq))?,
        };
        self.pinned.insert(lane, Pinned { delivered, durable, refs: 1 });
        Some(())
    }

    /// Drops one pin of `lane`; a lane at rest with none left goes back to the cache.
    pub(super) fn unpin(&mut self, lane: Lane) {
        let Some(pinned) = self.pinned.get_mut(&lane) else {
            debug_assert!(false, "unpinned a lane that was not pinned");
            return;
        };
        pinned.refs -= 1;
        if pinned.refs == 0 && pinned.durable == pinned.delivered {
            let seq = pinned.delivered;
            self.pinned.remove(&lane);
            self.remember(lane, seq);
        }
    }

    /// Lanes whose deliveries are not all durable yet, with how far they are durable:
    /// where storage, which shows what is written before it is durable, says too much.
    pub(super) fn in_flight(&self) -> impl Iterator<Item = (Lane, Seq)> + '_ {
        self.pinned.iter().filter(|(_, p)| p.durable < p.delivered).map(|(lane, p)| (*lane, p.durable))
    }

    /// Lanes kept in memory now: pinned and cached.
    pub(super) fn kept(&self) -> usize {
        self.pinned.len() + self.young.len() + self.old.len()
    }

    /// Caches a lane at rest: in the young generation, which when full becomes the old one.
    fn remember(&mut self, lane: Lane, seq: Seq) {
        self.old.remove(&lane);
        self.young.insert(lane, seq);
        if self.young.len() >= (self.cached_max / 2).max(1) {
            self.old = std::mem::take(&mut self.young);
        }
    }

    fn forget(&mut self, lane: Lane) {
        self.young.remove(&lane);
        self.old.remove(&lane);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::id::{SiteId, StreamId};
    use std::sync::{Arc, Mutex};

    fn lane(n: u128) -> Lane {
        Lane::new(SiteId::from_u128(n), StreamId::from_u128(n))
    }

    /// Storage holding every lane at seq 7, counting its reads.
    fn lanes(cached_max: usize) -> (Lanes, Arc<Mutex<u32>>) {
        let reads = Arc::new(Mutex::new(0));
        let counter = Arc::clone(&reads);
        let stored: Stored = Box::new(move |_| {
            *counter.lock().unwrap() += 1;
            Some(Seq(7))
        });
        (Lanes::new(cached_max, stored), reads)
    }

    #[test]
    fn memory_holds_at_most_the_cache_and_what_is_pinned() {
        let (mut lanes, reads) = lanes(100);
        for n in 0..10_000 {
            assert_eq!(lanes.read(lane(n)), Some((Seq(7), Seq(7))));
            lanes.set(lane(n), Seq(8), Seq(8));
            assert!(lanes.kept() <= 100);
        }
        assert_eq!(*reads.lock().unwrap(), 10_000, "each lane read once");
        assert_eq!(lanes.read(lane(9_999)), Some((Seq(8), Seq(8))), "a recent lane is cached");
        assert_eq!(lanes.peek(lane(0)), Some((Seq(7), Seq(7))), "an old one is read again");
    }

    #[test]
    fn pinned_and_moving_lanes_are_never_forgotten() {
        let (mut lanes, _) = lanes(4);
        lanes.pin(lane(1)).unwrap();
        lanes.set(lane(1), Seq(9), Seq(9));
        lanes.set(lane(2), Seq(9), Seq(8)); // delivered, not yet durable
        for n in 10..1_000 {
            lanes.set(lane(n), Seq(1), Seq(1));
        }
        assert_eq!(lanes.peek(lane(1)), Some((Seq(9), Seq(9))));
        assert_eq!(lanes.peek(lane(2)), Some((Seq(9), Seq(8))));
        assert_eq!(lanes.in_flight().collect::<Vec<_>>(), vec![(lane(2), Seq(8))]);
        lanes.unpin(lane(1));
        lanes.set(lane(2), Seq(9), Seq(9));
        assert_eq!(lanes.in_flight().count(), 0);
        for n in 1_000..2_000 {
            lanes.set(lane(n), Seq(1), Seq(1));
        }
        assert_eq!(lanes.peek(lane(1)), Some((Seq(7), Seq(7))), "at rest and unpinned: storage's again");
    }

    #[test]
    fn a_lane_storage_cannot_read_is_not_kept() {
        let mut lanes = Lanes::new(8, Box::new(|_| None));
        assert_eq!(lanes.read(lane(1)), None);
        assert_eq!(lanes.pin(lane(1)), None);
        assert_eq!(lanes.kept(), 0);
    }
}
