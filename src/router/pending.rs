//! [`Pending`]: the router's causal buffer. It holds events until everything in their
//! clock is delivered at this site, then releases them in an order that respects
//! causality.
//!
//! Pure: no actors, no storage, no time. Waiting events are indexed by the one dependency
//! they wait for, (lane, seq); when that lane reaches that seq, exactly the events waiting
//! on it are looked at again. So an arrival costs what it releases, never a scan of the
//! buffer. Delivering is two steps, [`Pending::take_ready`] then
//! [`Pending::mark_delivered`] (or [`Pending::abandon`]), so the router can hand an event
//! to its stream and advance the frontier only once the stream has it.
//!
//! Two frontiers: *delivered* (handed to its stream, whose mailbox keeps order) and
//! *durable* (its stream made it durable). A dependency in the same stream needs only
//! the first, since the stream applies in mailbox order; a dependency in another stream
//! needs the second, so nothing reaches a view before what it depends on is durable in
//! its own stream. Both are kept per lane only for the lanes in use ([`super::lanes`]);
//! the others are read from storage, so memory does not grow with the lanes stored.

pub use super::lanes::Stored;
use super::lanes::{Lanes, Map};
use crate::event::Event;
use crate::id::{EventId, Lane, Seq};
use crate::limits;
use std::collections::VecDeque;

/// Bounds of the buffer. Past them, arrivals that would have to wait are dropped and
/// counted; catch-up fetches them again later, so nothing is lost. Arrivals that are
/// deliverable at once are always taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PendingLimits {
    /// Events held at most.
    pub events_max: usize,
    /// Payload and clock bytes held at most (estimated).
    pub bytes_max: u64,
    /// Lanes at rest whose progress is kept in memory at most (read from storage again
    /// when needed).
    pub lanes_cached: usize,
}

impl Default for PendingLimits {
    fn default() -> Self {
        Self {
            events_max: limits::PENDING_EVENTS_MAX,
            bytes_max: limits::PENDING_BYTES_MAX,
            lanes_cached: limits::ROUTER_LANES_CACHED,
        }
    }
}

/// What [`Pending::insert`] did with an event. Expected outcomes, not errors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Insert {
    /// Every dependency is delivered: it is ready.
    Ready,
    /// Held until a dependency arrives: the first one missing, (lane, seq).
    Buffered {
        /// The lane of the dependency it waits for.
        lane: Lane,
        /// How far that lane must be delivered.
        seq: Seq,
    },
    /// This copy is already held (or being delivered): dropped.
    Duplicate,
    /// Its (lane, seq) is already delivered: a copy of that event or an equivocation,
    /// which only the stream (holding the delivered event's id) can tell apart.
    Delivered,
    /// The buffer is full: dropped and counted; catch-up will fetch it again.
    Overflow,
    /// How far its lane, or one it depends on, is stored could not be read: dropped and
    /// counted; catch-up will fetch it again.
    Unread,
}

/// An arriving event refused because another holds its (lane, seq) here
/// ([`Pending::insert`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Contested {
    /// The id of the event held (arrived first): [`Pending::held`] has it.
    pub kept: EventId,
    /// The event refused.
    pub rejected: Box<Event>,
}

/// Counters of the buffer.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PendingStats {
    /// Events held because a dependency was missing.
    pub buffered: u64,
    /// Events delivered.
    pub delivered: u64,
    /// Copies dropped.
    pub duplicates: u64,
    /// Equivocations refused.
    pub equivocations: u64,
    /// Events dropped because the buffer was full.
    pub overflows: u64,
    /// Events dropped because storage could not say how far a lane is stored.
    pub unread: u64,
}

/// A (lane, seq) position: where an event sits, or what one waits for.
type Slot = (Lane, Seq);

/// The router's causal buffer and the site frontier it delivers against.
///
/// Held events live in a slab (a vector with a free list) and the maps hold small slab
/// indices: the buffer is probed once or twice per dependency, and small map entries keep
/// those probes in cache.
#[derive(Debug)]
pub struct Pending {
    /// How far each lane is delivered and durable: the lanes in use in memory (a lane is
    /// pinned while events are held for it or wait on it), the rest read from storage.
    lanes: Lanes,
    /// Events left the buffer unread since [`Pending::take_dropped`] last said so.
    dropped: bool,
    /// Events held, waiting or ready.
    slab: Vec<Option<Held>>,
    /// Free places in `slab`.
    free: Vec<u32>,
    /// Per (lane, seq): where the event held for it sits in `slab` (taken events keep
    /// their place, without the event, until marked delivered or abandoned), and the first
    /// of the events waiting for it to be delivered. One map for both, so delivering a
    /// slot costs one probe; the rest of the waiters follow through [`Held::next_waiter`],
    /// which costs no allocation per waiting event. Events wait here for a dependency in
    /// their own stream (to be delivered)...
    slots: Map<Slot, SlotState>,
    /// Events held (or taken and not yet marked).
    held: usize,
    /// ...and here for one in another stream (to be durable): two maps, so each mark looks
    /// only where its waiters can be, and a single-stream site never probes the second.
    waiting_durable: Map<Slot, u32>,
    /// Events ready, in the order they became ready.
    ready: VecDeque<u32>,
    bytes: u64,
    limits: PendingLimits,
    stats: PendingStats,
}

impl Pending {
    /// An empty buffer at a site whose storage says how far each lane is stored.
    pub fn new(limits: PendingLimits, stored: Stored) -> Self {
        Self {
            lanes: Lanes::new(limits.lanes_cached, stored),
            dropped: false,
            slab: Vec::new(),
            free: Vec::new(),
            slots: Map::default(),
            held: 0,
            waiting_durable: Map::default(),
            ready: VecDeque::new(),
            bytes: 0,
            limits,
            stats: PendingStats::default(),
        }
    }

    /// How far `lane` is durable at this site (0 when storage could not be read: asked
    /// again later).
    pub fn durable_seq(&self, lane: Lane) -> Seq {
        self.lanes.peek(lane).map_or(Seq::ZERO, |(_, durable)| durable)
    }

    /// How far `lane` is delivered at this site (0 when storage could not be read).
    pub fn delivered_seq(&mut self, lane: Lane) -> Seq {
        self.lanes.read(lane).map_or(Seq::ZERO, |(delivered, _)| delivered)
    }

    /// The lanes whose deliveries are not all durable yet, with how far they are durable:
    /// storage, which shows what is written before it is durable, says more for them.
    pub fn in_flight(&self) -> impl Iterator<Item = (Lane, Seq)> + '_ {
        self.lanes.in_flight()
    }

    /// Lanes whose progress is in memory now: the lanes in use and a bounded cache.
    pub fn lanes_kept(&self) -> usize {
        self.lanes.kept()
    }

    /// True once if events left the buffer since the last call because storage could not
    /// be read: peers must be asked for them again.
    pub fn take_dropped(&mut self) -> bool {
        std::mem::take(&mut self.dropped)
    }

    /// Events held, including those taken and not yet marked delivered.
    pub fn len(&self) -> usize {
        self.held
    }

    /// True when nothing is held.
    pub fn is_empty(&self) -> bool {
        self.held == 0
    }

    /// Estimated bytes held.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// The counters.
    pub fn stats(&self) -> PendingStats {
        self.stats
    }

    /// The event held at (`lane`, `seq`), if one is (and not taken for delivery).
    pub fn held(&self, lane: Lane, seq: Seq) -> Option<&Event> {
        let index = self.slots.get(&(lane, seq))?.held?;
        self.entry(index).event.as_ref()
    }

    /// Takes an arriving event.
    ///
    /// # Errors
    /// [`Contested`] when a different event already holds its (lane, seq) here.
    pub fn insert(&mut self, event: Event) -> Result<Insert, Contested> {
        debug_assert!(event.clock_names_own_lane(), "the router checks the clock before buffering");
        let (lane, slot) = (event.lane, (event.lane, event.seq));
        // Pinned for as long as the event is held; every way out below that does not hold
        // it unpins.
        if self.lanes.pin(lane).is_none() {
            self.stats.unread += 1;
            return Ok(Insert::Unread);
        }
        if event.seq <= self.delivered_seq(lane) {
            self.lanes.unpin(lane);
            return Ok(Insert::Delivered);
        }
        if let Some(index) = self.slots.get(&slot).and_then(|state| state.held) {
            self.lanes.unpin(lane);
            let kept = self.entry(index).id;
            if kept == event.id {
                self.stats.duplicates += 1;
                return Ok(Insert::Duplicate);
            }
            self.stats.equivocations += 1;
            return Err(Contested { kept, rejected: Box::new(event) });
        }
        let size = size_of(&event);
        let Ok(missing) = first_missing(&mut self.lanes, &event) else {
            self.lanes.unpin(lane);
            self.stats.unread += 1;
            return Ok(Insert::Unread);
        };
        // The bounds hold events that must wait. A ready event is always taken: it leaves at
        // the next `take_ready`, and refusing it could leave a full buffer waiting for the
        // very events it turns away (catch-up sends them in causal order, ready on arrival).
        let full = self.held >= self.limits.events_max || self.bytes + size > self.limits.bytes_max;
        if missing.is_some() && full {
            self.lanes.unpin(lane);
            self.stats.overflows += 1;
            return Ok(Insert::Overflow);
        }
        let state = self.slots.entry(slot).or_default();
        let index = match self.free.pop() {
            Some(index) => index,
            None => {
                self.slab.push(None);
                u32::try_from(self.slab.len() - 1).expect("the buffer holds far fewer than 2^32 events")
            }
        };
        state.held = Some(index);
        self.slab[index as usize] = Some(Held { id: event.id, lane, event: Some(event), next_waiter: None });
        self.held += 1;
        self.bytes += size;
        match missing {
            None => {
                self.ready.push_back(index);
                Ok(Insert::Ready)
            }
            Some(missing) => {
                if !self.wait(index, missing) {
                    return Ok(Insert::Unread);
                }
                self.stats.buffered += 1;
                Ok(Insert::Buffered { lane: missing.0, seq: missing.1 })
            }
        }
    }

    /// Takes the next ready event out of the buffer, for delivery. Its (lane, seq) stays
    /// reserved until [`Pending::mark_delivered`] or [`Pending::abandon`].
    pub fn take_ready(&mut self) -> Option<Event> {
        loop {
            let index = self.ready.pop_front()?;
            match self.entry_mut(index).event.take() {
                Some(event) => {
                    self.bytes -= size_of(&event);
                    return Some(event);
                }
                None => self.free_tombstone(index),
            }
        }
    }

    /// Records that (lane, seq) is delivered, and releases what waited for it.
    ///
    /// # Panics
    /// When `seq` does not follow the lane's delivered seq: delivery is in lane order.
    pub fn mark_delivered(&mut self, lane: Lane, seq: Seq) {
        // The lane is in memory: pinned by the event taken, or read just before by
        // `observe`, so this reads no storage.
        let (delivered, durable) = self.lanes.read(lane).unwrap_or_default();
        assert_eq!(seq, delivered.next(), "lane seq must be contiguous");
        self.lanes.set(lane, seq, durable);
        self.stats.delivered += 1;
        let Some(state) = self.slots.remove(&(lane, seq)) else { return };
        if let Some(index) = state.held {
            self.free_taken(index);
        }
        self.walk(lane, state.waiters);
    }

    /// Records that `lane` is durable up to `seq` in its stream, releasing events of
    /// other streams that waited for it.
    pub fn mark_durable(&mut self, lane: Lane, seq: Seq) {
        let Some((delivered, mut at)) = self.lanes.read(lane) else { return };
        debug_assert!(seq <= delivered, "durable only after delivered");
        while at < seq {
            at = at.next();
            self.lanes.set(lane, delivered, at);
            if !self.waiting_durable.is_empty() {
                self.release_durable_waiters(lane, at);
            }
        }
    }

    /// Looks again at the events waiting for (lane, seq) to be durable.
    fn release_durable_waiters(&mut self, lane: Lane, seq: Seq) {
        let first = self.waiting_durable.remove(&(lane, seq));
        self.walk(lane, first);
    }

    /// Looks again at every event of the list that waited on a seq of `lane`.
    fn walk(&mut self, lane: Lane, first: Option<u32>) {
        let mut waiter = first;
        while let Some(index) = waiter {
            self.lanes.unpin(lane); // each waiter pinned the lane it waited on
            let held = self.slab[index as usize].as_mut().expect("a waiting index is held");
            waiter = held.next_waiter.take();
            let Some(event) = held.event.as_ref() else {
                self.free_tombstone(index);
                continue;
            };
            match first_missing(&mut self.lanes, event) {
                Ok(None) => self.ready.push_back(index),
                Ok(Some(missing)) => {
                    self.wait(index, missing);
                }
                Err(Unreadable) => self.drop_unread(index),
            }
        }
    }

    /// Records that `lane` is delivered and durable up to `seq` by another path (a local
    /// write, or a stream's own recovery), releasing what waited. Lower seqs are ignored.
    pub fn observe(&mut self, lane: Lane, seq: Seq) {
        // A lane memory does not hold has no copy held and nothing waiting on it (both pin
        // their lanes): storage has the write, and the lane is read from there when next
        // needed. Reading it now would cost a lookup per write to a stream not seen lately.
        let Some((mut delivered, _)) = self.lanes.known(lane) else { return };
        while delivered < seq {
            let next = delivered.next();
            // A copy held for that slot is obsolete: drop the event and leave a tombstone
            // in its list (ready or waiting), freed when that list is walked.
            if let Some(index) = self.slots.get_mut(&(lane, next)).and_then(|state| state.held.take()) {
                match self.entry_mut(index).event.take() {
                    Some(event) => {
                        self.bytes -= size_of(&event);
                        self.held -= 1;
                        self.lanes.unpin(lane);
                    }
                    // Taken for delivery (so on no list): its place can go at once.
                    None => self.free_taken(index),
                }
            }
            self.mark_delivered(lane, next);
            delivered = next;
        }
        self.mark_durable(lane, seq);
    }

    /// Rewinds `lane` to `seq` after its stream refused an event (it lost it, or never
    /// took it): catch-up fetches the rest again. Higher seqs are ignored.
    pub fn rewind(&mut self, lane: Lane, seq: Seq) {
        let Some((delivered, durable)) = self.lanes.read(lane) else { return };
        if seq < delivered {
            self.lanes.set(lane, seq, durable.min(seq));
        }
    }

    /// Gives up delivering a taken event (its stream refused it for now): frees its
    /// (lane, seq), so a later copy (from catch-up) is taken again.
    pub fn abandon(&mut self, lane: Lane, seq: Seq) {
        self.release_slot(lane, seq);
    }

    /// Frees the place of the taken event at (lane, seq).
    fn release_slot(&mut self, lane: Lane, seq: Seq) {
        let Some(state) = self.slots.get_mut(&(lane, seq)) else { return };
        let held = state.held.take();
        if state.waiters.is_none() {
            self.slots.remove(&(lane, seq));
        }
        if let Some(index) = held {
            self.free_taken(index);
        }
    }

    /// Frees the place of a taken event.
    fn free_taken(&mut self, index: u32) {
        // A held event is on the ready queue or a waiting list: freeing its place would let
        // it be reused while linked. Marking an event that was never taken is a bug.
        assert!(self.entry(index).event.is_none(), "only taken events are freed");
        let lane = self.entry(index).lane;
        self.slab[index as usize] = None;
        self.free.push(index);
        self.held -= 1;
        self.lanes.unpin(lane);
    }

    /// Drops the held event at `index`, on no list now, because storage could not say how
    /// far a lane it needs is stored: catch-up brings it again.
    fn drop_unread(&mut self, index: u32) {
        let held = self.slab[index as usize].take().expect("a dropped index is held");
        if let Some(event) = &held.event {
            self.bytes -= size_of(event);
            if let Some(state) = self.slots.get_mut(&(event.lane, event.seq)) {
                state.held = None;
                if state.waiters.is_none() {
                    self.slots.remove(&(event.lane, event.seq));
                }
            }
        }
        self.free.push(index);
        self.held -= 1;
        self.lanes.unpin(held.lane);
        self.stats.unread += 1;
        self.dropped = true;
    }

    /// Frees the place of an event dropped by [`Pending::observe`], once off its list.
    fn free_tombstone(&mut self, index: u32) {
        self.slab[index as usize] = None;
        self.free.push(index);
    }

    fn entry(&self, index: u32) -> &Held {
        self.slab[index as usize].as_ref().expect("indices in maps point at held events")
    }

    fn entry_mut(&mut self, index: u32) -> &mut Held {
        self.slab[index as usize].as_mut().expect("indices in maps point at held events")
    }

    /// Puts the event at `index` at the head of the list waiting for `missing`.
    /// Pins the lane waited on, so that its seqs stay in memory until the list is walked;
    /// when storage cannot be read for it, drops the event instead and returns false.
    fn wait(&mut self, index: u32, missing: Slot) -> bool {
        if self.lanes.pin(missing.0).is_none() {
            self.drop_unread(index);
            return false;
        }
        let held = self.slab[index as usize].as_mut().expect("a waiting index is held");
        let own_stream = held.event.as_ref().is_some_and(|e| e.lane.stream == missing.0.stream);
        held.next_waiter = if own_stream {
            self.slots.entry(missing).or_default().waiters.replace(index)
        } else {
            self.waiting_durable.insert(missing, index)
        };
        true
    }
}

/// Storage could not say how far a lane is stored.
struct Unreadable;

/// The one dependency `event` waits for first, or `None` when it is deliverable: its lane
/// is delivered to exactly seq - 1, every other lane of its stream is delivered, and every
/// lane of another stream is durable, as far as its clock says.
///
/// The event's own lane is looked at first: its predecessor is the dependency most often
/// missing, and once it is delivered the others usually are too (the writer had seen
/// them before writing the predecessor, or just after), so events are rarely re-queued.
fn first_missing(lanes: &mut Lanes, event: &Event) -> Result<Option<Slot>, Unreadable> {
    let before = Seq(event.seq.0 - 1);
    let (delivered, _) = lanes.read(event.lane).ok_or(Unreadable)?;
    if delivered < before {
        return Ok(Some((event.lane, before)));
    }
    for (lane, seq) in event.clock.iter().filter(|&(lane, _)| lane != event.lane) {
        let (delivered, durable) = lanes.read(lane).ok_or(Unreadable)?;
        let at = if lane.stream == event.lane.stream { delivered } else { durable };
        if at < seq {
            return Ok(Some((lane, seq)));
        }
    }
    Ok(None)
}

/// What the buffer knows of one (lane, seq).
#[derive(Debug, Default)]
struct SlotState {
    /// Where the event for it sits in the slab.
    held: Option<u32>,
    /// The first event waiting for it to be delivered.
    waiters: Option<u32>,
}

/// An event in the buffer.
#[derive(Debug)]
struct Held {
    id: EventId,
    /// Its lane, pinned while it is held.
    lane: Lane,
    /// `None` once taken for delivery, or once dropped by [`Pending::observe`] (a
    /// tombstone, still linked in the ready queue or a waiting list).
    event: Option<Event>,
    /// The next event waiting for the same dependency as this one.
    next_waiter: Option<u32>,
}

/// What an event costs the buffer: its payload, its clock and a fixed overhead.
fn size_of(event: &Event) -> u64 {
    u64::try_from(event.size()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::VectorClock;
    use crate::id::{SiteId, StreamId};
    use crate::testkit::{causal_shuffle, history, with_delta_clocks, HistoryShape, Rng};
    use proptest::prelude::*;
    use std::collections::HashMap;
    use std::sync::{Arc, Mutex};

    /// Storage as the buffer reads it: how far each lane is stored.
    #[derive(Clone, Default)]
    struct Store(Arc<Mutex<VectorClock>>);

    impl Store {
        /// A buffer over this storage.
        fn pending(&self, limits: PendingLimits) -> Pending {
            let store = self.clone();
            Pending::new(limits, Box::new(move |lane| Some(store.0.lock().unwrap().get(lane))))
        }

        /// Takes every ready event, stores it and marks it delivered and durable, as a
        /// site does; returns them in delivery order.
        fn drain(&self, pending: &mut Pending) -> Vec<Event> {
            let mut out = Vec::new();
            while let Some(event) = pending.take_ready() {
                pending.mark_delivered(event.lane, event.seq);
                self.0.lock().unwrap().set(event.lane, event.seq);
                pending.mark_durable(event.lane, event.seq);
                out.push(event);
            }
            out
        }
    }

    fn lane(site: u128) -> Lane {
        Lane::new(SiteId::from_u128(site), StreamId::from_u128(50))
    }

    /// An event whose Lamport counter is its seq.
    fn event(id: u128, lane: Lane, seq: u64, deps: &[(Lane, u64)]) -> Event {
        crate::testkit::event(id, lane, seq, deps, seq, 0)
    }

    /// Takes and marks every ready event; returns them in delivery order. Lanes are
    /// never read back from storage here: the cache holds them all.
    fn drain(pending: &mut Pending) -> Vec<Event> {
        Store::default().drain(pending)
    }

    fn pending() -> Pending {
        pending_with(PendingLimits::default())
    }

    fn pending_with(limits: PendingLimits) -> Pending {
        Store::default().pending(limits)
    }

    #[test]
    fn an_event_waits_for_its_lane_and_its_dependencies() {
        let (a, b) = (lane(1), lane(2));
        let mut p = pending();
        assert_eq!(p.insert(event(3, b, 1, &[(a, 2)])).unwrap(), Insert::Buffered { lane: a, seq: Seq(2) });
        assert_eq!(p.insert(event(2, a, 2, &[])).unwrap(), Insert::Buffered { lane: a, seq: Seq(1) });
        assert!(drain(&mut p).is_empty());
        assert_eq!(p.insert(event(1, a, 1, &[])).unwrap(), Insert::Ready);
        let order: Vec<_> = drain(&mut p).iter().map(|e| e.id.as_uuid().as_u128()).collect();
        assert_eq!(order, [1, 2, 3], "each released by exactly what it waited for");
        assert!(p.is_empty());
        assert_eq!(p.bytes(), 0);
        assert_eq!(p.delivered_seq(b), Seq(1));
    }

    #[test]
    fn copies_are_dropped_and_equivocations_refused_with_both_ids() {
        let a = lane(1);
        let mut p = pending();
        assert!(matches!(p.insert(event(2, a, 2, &[])).unwrap(), Insert::Buffered { .. }));
        assert_eq!(p.insert(event(2, a, 2, &[])).unwrap(), Insert::Duplicate);
        let refused = p.insert(event(9, a, 2, &[])).unwrap_err();
        assert_eq!(refused, Contested { kept: EventId::from_u128(2), rejected: Box::new(event(9, a, 2, &[])) });
        assert_eq!(p.held(a, Seq(2)).map(|e| e.id), Some(EventId::from_u128(2)));
        p.insert(event(1, a, 1, &[])).unwrap();
        assert_eq!(drain(&mut p).len(), 2);
        assert_eq!(p.insert(event(1, a, 1, &[])).unwrap(), Insert::Delivered, "the stream judges delivered slots");
        let stats = p.stats();
        assert_eq!((stats.duplicates, stats.equivocations, stats.delivered), (1, 1, 2));
    }

    #[test]
    fn a_taken_event_is_reserved_until_marked_or_abandoned() {
        let a = lane(1);
        let mut p = pending();
        p.insert(event(1, a, 1, &[])).unwrap();
        let taken = p.take_ready().unwrap();
        assert_eq!(p.insert(event(1, a, 1, &[])).unwrap(), Insert::Duplicate);
        p.abandon(taken.lane, taken.seq);
        assert_eq!(p.insert(event(1, a, 1, &[])).unwrap(), Insert::Ready, "catch-up may bring it again");
    }

    #[test]
    fn observing_a_local_write_releases_waiters_and_drops_obsolete_copies() {
        let (a, b) = (lane(1), lane(2));
        let mut p = pending();
        p.insert(event(3, b, 1, &[(a, 2)])).unwrap();
        p.insert(event(2, a, 2, &[])).unwrap(); // a copy of a write the site makes itself
        p.observe(a, Seq(2));
        let released = drain(&mut p);
        assert_eq!(released.iter().map(|e| e.id).collect::<Vec<_>>(), [EventId::from_u128(3)]);
        assert!(p.is_empty());
        assert_eq!(p.bytes(), 0);
        assert_eq!(p.insert(event(4, a, 3, &[])).unwrap(), Insert::Ready, "freed places are reused safely");
        p.rewind(a, Seq(1));
        assert_eq!(p.delivered_seq(a), Seq(1));
    }

    /// A local write to a lane the buffer does not hold reads no storage (one lookup per
    /// write to each new stream otherwise); the lane is read when next needed, and a copy of
    /// the write arriving then is known as delivered.
    #[test]
    fn observing_a_lane_not_in_memory_reads_it_later_not_now() {
        let a = lane(1);
        let reads = Arc::new(std::sync::atomic::AtomicU32::new(0));
        let store = Store::default();
        let (counted, seen) = (Arc::clone(&reads), store.clone());
        let mut p = Pending::new(
            PendingLimits::default(),
            Box::new(move |lane| {
                counted.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                Some(seen.0.lock().unwrap().get(lane))
            }),
        );
        store.0.lock().unwrap().set(a, Seq(1)); // written and durable here
        p.observe(a, Seq(1));
        assert_eq!(reads.load(std::sync::atomic::Ordering::Relaxed), 0, "no read for a lane not in memory");
        assert_eq!(p.insert(event(1, a, 1, &[])).unwrap(), Insert::Delivered, "read when needed");
        assert_eq!(reads.load(std::sync::atomic::Ordering::Relaxed), 1);
        assert_eq!(p.insert(event(2, a, 2, &[])).unwrap(), Insert::Ready);
    }

    /// A lane that events wait on stays in memory however many other lanes pass through:
    /// read back from storage, which shows a local write before the router is told of it,
    /// it would skip the seqs the waiters hang on and leave them waiting for ever.
    #[test]
    fn a_lane_waited_on_is_not_forgotten_while_storage_moves_past_it() {
        let (a, b) = (lane(1), lane(2));
        let store = Store::default();
        store.0.lock().unwrap().set(a, Seq(1));
        let mut p = store.pending(PendingLimits { lanes_cached: 2, ..PendingLimits::default() });
        assert_eq!(p.insert(event(1, b, 1, &[(a, 2)])).unwrap(), Insert::Buffered { lane: a, seq: Seq(2) });
        for n in 10..100 {
            p.insert(event(n, lane(n), 1, &[])).unwrap();
            store.drain(&mut p);
        }
        store.0.lock().unwrap().set(a, Seq(2)); // written here, not yet told
        p.observe(a, Seq(2));
        assert_eq!(store.drain(&mut p).iter().map(|e| e.lane).collect::<Vec<_>>(), [b]);
        assert!(p.is_empty());
    }

    /// Storage that cannot be read drops what needs it, counted, to be fetched again.
    #[test]
    fn an_event_whose_lane_cannot_be_read_is_dropped_to_be_fetched_again() {
        let mut p = Pending::new(PendingLimits::default(), Box::new(|_| None));
        assert_eq!(p.insert(event(1, lane(1), 1, &[])).unwrap(), Insert::Unread);
        assert_eq!((p.stats().unread, p.len(), p.lanes_kept()), (1, 0, 0));
    }

    /// An event depending on another stream waits until that event is durable, not just
    /// handed to its stream; one of the same stream only until it is handed over.
    #[test]
    fn another_streams_dependency_must_be_durable() {
        let x = Lane::new(SiteId::from_u128(1), StreamId::from_u128(1));
        let y = Lane::new(SiteId::from_u128(1), StreamId::from_u128(2));
        let mut p = pending();
        p.insert(event(1, x, 1, &[])).unwrap();
        p.insert(event(2, x, 2, &[])).unwrap();
        p.insert(event(3, y, 1, &[(x, 1)])).unwrap();
        let first = p.take_ready().unwrap();
        p.mark_delivered(first.lane, first.seq);
        assert_eq!(p.take_ready().unwrap().id, EventId::from_u128(2), "same stream: handed over is enough");
        p.mark_delivered(x, Seq(2));
        assert!(p.take_ready().is_none(), "other stream: must wait for durability");
        p.mark_durable(x, Seq(1));
        assert_eq!(p.take_ready().unwrap().id, EventId::from_u128(3));
    }

    #[test]
    fn a_full_buffer_drops_and_counts() {
        let a = lane(1);
        let mut p = pending_with(PendingLimits { events_max: 2, bytes_max: u64::MAX, ..PendingLimits::default() });
        for seq in 2..=3 {
            assert!(matches!(p.insert(event(u128::from(seq), a, seq, &[])).unwrap(), Insert::Buffered { .. }));
        }
        assert_eq!(p.insert(event(4, a, 4, &[])).unwrap(), Insert::Overflow);
        assert_eq!(p.stats().overflows, 1);
        // What is deliverable now is taken even when full, or the buffer could never drain.
        assert_eq!(p.insert(event(1, a, 1, &[])).unwrap(), Insert::Ready);
        assert_eq!(drain(&mut p).len(), 3);
        let mut tiny = pending_with(PendingLimits { events_max: 10, bytes_max: 10, ..PendingLimits::default() });
        assert_eq!(tiny.insert(event(2, a, 2, &[])).unwrap(), Insert::Overflow);
    }

    proptest! {
        /// For any arrival order of a valid history, with copies, the buffer delivers
        /// every event exactly once, each after everything in its clock: the same set
        /// as a reference model that rescans everything it holds after each arrival.
        #[test]
        /// Its memory holds two lanes at rest at most: the rest are read back from storage,
        /// which must change nothing.
        fn delivers_every_event_once_in_causal_order(seed in any::<u64>(), sites in 1u32..5, streams in 1u32..3, events in 1usize..120, delta in any::<bool>()) {
            let mut rng = Rng::new(seed);
            let full = history(HistoryShape { sites, streams, events, sync_percent: 30 }, &mut rng);
            // Delta clocks name less; what is delivered first must still be the whole past.
            let all = if delta { with_delta_clocks(&full) } else { full.clone() };
            // By lane and seq: a delta clock makes another id.
            let full_clock: HashMap<(Lane, Seq), VectorClock> = full.iter().map(|e| ((e.lane, e.seq), e.clock.clone())).collect();
            let mut arrivals = causal_shuffle(&all, &mut rng);
            for i in (1..arrivals.len()).rev() {
                arrivals.swap(i, rng.index(i + 1)); // any order, not only causal ones
            }
            let copies: Vec<Event> = arrivals.iter().filter(|_| rng.chance(20)).cloned().collect();
            arrivals.extend(copies);

            let store = Store::default();
            let mut p = store.pending(PendingLimits { lanes_cached: 2, ..PendingLimits::default() });
            let mut delivered: Vec<Event> = Vec::new();
            let mut model_held: Vec<Event> = Vec::new();
            let mut model = VectorClock::new();
            let mut model_count = 0;
            for event in arrivals {
                p.insert(event.clone()).unwrap();
                delivered.extend(store.drain(&mut p));
                prop_assert!(p.lanes_kept() <= 2 + p.len() * 2, "{} lanes kept", p.lanes_kept());
                // Reference model: hold everything new, deliver whatever is deliverable.
                if event.seq > model.get(event.lane) && !model_held.iter().any(|h| h.id == event.id) {
                    model_held.push(event);
                }
                while let Some(i) = model_held.iter().position(|e| {
                    e.clock.iter().all(|(l, s)| if l == e.lane { model.get(l).next() == s } else { model.get(l) >= s })
                }) {
                    let e = model_held.swap_remove(i);
                    model.set(e.lane, e.seq);
                    model_count += 1;
                }
            }
            prop_assert_eq!(delivered.len(), all.len(), "every event once");
            prop_assert_eq!(model_count, all.len());
            for (lane, seq) in model.iter() {
                prop_assert_eq!(p.delivered_seq(lane), seq);
            }
            prop_assert!(p.is_empty());
            let mut seen = VectorClock::new();
            for e in &delivered {
                for (l, s) in full_clock[&(e.lane, e.seq)].iter() {
                    let needed = if l == e.lane { Seq(s.0 - 1) } else { s };
                    prop_assert!(seen.get(l) >= needed, "{:?} delivered before its dependency on {:?}", e.id, l);
                }
                prop_assert_eq!(seen.get(e.lane).next(), e.seq);
                seen.set(e.lane, e.seq);
            }
        }
    }
}
