//! [`Ledger`]: the pure core of a stream actor. It stamps local writes, judges remote
//! events (new, a copy, or an error) and advances the stream's frontier, heads, Lamport
//! counter and view.
//!
//! A local write's clock names the stream's heads (the delivered events no other
//! delivered event depends on), not its whole frontier: the heads imply the rest. After
//! writes that saw each other there is one head, so a stream that thousands of sites once
//! wrote stays writable; the clock grows only with the writes that were concurrent.
//!
//! It reads nothing itself: lookups in the stored index come in as a closure, ids and time
//! as arguments.

use super::StreamError;
use crate::clock::VectorClock;
use crate::codec;
use crate::event::{Dependencies, Event, OrderKey};
use crate::id::{EventId, Lane, Seq, SiteId, StreamId};
use crate::limits;
use crate::storage::StorageError;
use crate::view::{Fold, Folded, Stream};

/// What a remote event is to this stream.
#[derive(Debug)]
pub enum Check<E> {
    /// Not seen before and deliverable: its decoded payload, `None` when the payload does
    /// not decode into this site's event type (a newer version of the application wrote
    /// it, or a broken writer): stored and relayed all the same, and skipped by the view
    /// (counted in [`crate::view::Unfolded`]).
    New(Option<E>),
    /// A copy of an event already delivered: nothing to do.
    Duplicate,
}

/// A stream's frontier, heads, Lamport counter and view at one site.
pub struct Ledger<S: Stream> {
    site: SiteId,
    stream: StreamId,
    frontier: VectorClock,
    /// Delivered events whose pasts, together, are the whole frontier: at least the heads,
    /// maybe a few more after a reopen (see [`crate::event::heads_of`]), never missing one.
    heads: VectorClock,
    lamport: u64,
    fold: Fold<S>,
}

/// Checks that `event`'s Lamport counter is exactly one more than the largest among what
/// it depends on directly: its lane's previous event and what its clock names (their
/// pasts hold the rest, and the largest counter of its past is among theirs). A larger
/// counter would let a peer push the stream towards its limit (or sort its event after
/// writes that did not see it), a smaller one would sort it before what it depends on.
/// `delivered` says how far a lane of its own stream is delivered here; `key_at` finds
/// the order keys of delivered events.
///
/// # Errors
/// [`StreamError::DependencyMissing`], [`StreamError::LamportNotNext`], or a failed read.
pub(crate) fn check_lamport<D, F>(event: &Event, delivered: D, key_at: F) -> Result<(), StreamError>
where
    D: Fn(Lane) -> Seq,
    F: Fn(Lane, Seq) -> Result<Option<OrderKey>, StorageError>,
{
    let mut largest = 0;
    for (lane, seq) in event.clock.iter() {
        // The event's own entry is itself; the dependency there is the seq before.
        let needed = if lane == event.lane { Seq(seq.0 - 1) } else { seq };
        if needed == Seq::ZERO {
            continue;
        }
        if lane.stream == event.lane.stream && delivered(lane) < needed {
            return Err(StreamError::DependencyMissing { event: event.id, lane, needed, delivered: delivered(lane) });
        }
        // Another stream's is durable here before the router delivers this one.
        let dependency = key_at(lane, needed)?.ok_or(StreamError::DependencyMissing {
            event: event.id,
            lane,
            needed,
            delivered: Seq::ZERO,
        })?;
        largest = largest.max(dependency.lamport);
    }
    if event.lamport != largest + 1 {
        return Err(StreamError::LamportNotNext { event: event.id, lamport: event.lamport, expected: largest + 1 });
    }
    Ok(())
}

impl<S: Stream> Ledger<S> {
    /// A ledger of `stream` at `site`, resuming from `frontier`, `heads` (events whose
    /// pasts make up the frontier: [`crate::event::heads_of`] the lanes' last events),
    /// `lamport` and `fold`.
    pub fn new(
        site: SiteId,
        stream: StreamId,
        frontier: VectorClock,
        heads: VectorClock,
        lamport: u64,
        fold: Fold<S>,
    ) -> Self {
        debug_assert!(frontier.iter().all(|(lane, _)| lane.stream == stream));
        debug_assert!(frontier.dominates(&heads), "heads are delivered events");
        Self { site, stream, frontier, heads, lamport, fold }
    }

    /// This site's lane in the stream.
    pub fn own_lane(&self) -> Lane {
        Lane::new(self.site, self.stream)
    }

    /// Every lane's delivered seq.
    pub fn frontier(&self) -> &VectorClock {
        &self.frontier
    }

    /// Delivered events that, with everything they depend on, are the whole frontier.
    pub fn heads(&self) -> &VectorClock {
        &self.heads
    }

    /// The largest Lamport counter delivered.
    pub fn lamport(&self) -> u64 {
        self.lamport
    }

    /// The current view.
    pub fn view(&self) -> &S::View {
        self.fold.view()
    }

    /// The events the view skipped because their payload does not decode.
    pub fn unfolded(&self) -> crate::view::Unfolded {
        self.fold.unfolded()
    }

    /// The fold, for rewinds and replays.
    pub fn fold_mut(&mut self) -> &mut Fold<S> {
        &mut self.fold
    }

    /// What a write depending on everything delivered here depends on: the heads, which
    /// imply the rest.
    pub fn dependencies(&self) -> Dependencies {
        Dependencies { clock: self.heads.clone(), lamport: self.lamport }
    }

    /// The next local events, in order: the next seqs of this site's lane, each with a
    /// Lamport counter exactly one more than the largest it depends on (as every site
    /// checks). The first names the stream's heads and `extra`'s lanes of other streams,
    /// whose counters `key_at` reads (`extra.lamport` is not trusted); each later one only
    /// its own lane, since the event before it implies the rest. Changes nothing:
    /// [`Ledger::record`] them once they are written.
    ///
    /// # Errors
    /// [`StreamError::DependencyNotDelivered`] when `extra` names an event not stored
    /// here, [`StreamError::MalformedDependencies`], [`StreamError::TooManyLanes`],
    /// [`StreamError::LamportOutOfRange`] or a read failure.
    pub fn stamp_all<F>(
        &self,
        extra: &Dependencies,
        stamps: impl ExactSizeIterator<Item = (u64, Vec<u8>)>,
        key_at: F,
    ) -> Result<Vec<Event>, StreamError>
    where
        F: Fn(Lane, Seq) -> Result<Option<OrderKey>, StorageError>,
    {
        if !extra.clock.is_canonical() {
            return Err(StreamError::MalformedDependencies);
        }
        for (lane, seq) in extra.clock.iter().filter(|(lane, _)| lane.stream == self.stream) {
            if !self.frontier.covers(lane, seq) {
                return Err(StreamError::DependencyNotDelivered { lane, seq, delivered: self.frontier.get(lane) });
            }
        }
        let lane = self.own_lane();
        let mut clock = self.heads.clone();
        // The heads hold the stream's largest counter.
        let mut lamport = self.lamport;
        // Own-stream lanes of `extra` are delivered, so implied by the heads: left out.
        for (other, seq) in extra.clock.iter().filter(|(other, _)| other.stream != self.stream) {
            let named = key_at(other, seq)?.ok_or(StreamError::DependencyNotDelivered {
                lane: other,
                seq,
                delivered: Seq::ZERO,
            })?;
            lamport = lamport.max(named.lamport);
            clock.set(other, seq);
        }
        clock.set(lane, self.frontier.get(lane));
        let lanes = clock.len() + usize::from(clock.get(lane) == Seq::ZERO);
        if lanes > limits::CLOCK_LANES_MAX {
            return Err(StreamError::TooManyLanes { lanes, max: limits::CLOCK_LANES_MAX });
        }
        let count = u64::try_from(stamps.len()).unwrap_or(u64::MAX);
        if lamport.saturating_add(count) > limits::LAMPORT_MAX {
            return Err(StreamError::LamportOutOfRange {
                event: EventId::from_u128(0),
                lamport,
                max: limits::LAMPORT_MAX,
            });
        }
        let mut events = Vec::with_capacity(stamps.len());
        // Each event depends on the one before it, so each gets the next counter.
        for (lamport, (timestamp_ms, payload)) in (lamport + 1..).zip(stamps) {
            debug_assert!(payload.len() <= limits::PAYLOAD_BYTES_MAX, "payloads are checked when encoded");
            let seq = clock.increment(lane);
            let clock = std::mem::replace(&mut clock, [(lane, seq)].into_iter().collect());
            events.push(Event::new(lane, seq, clock, lamport, timestamp_ms, S::TYPE_NAME.to_owned(), payload));
        }
        Ok(events)
    }

    /// Judges a remote event. `key_at` looks up the stored key of (lane, seq).
    ///
    /// # Errors
    /// A [`StreamError`] naming what is wrong: another stream or type, this site's own
    /// lane (only this site writes it), a malformed clock, a seq gap, a missing dependency,
    /// a Lamport counter not one above its dependencies', an equivocation (another event
    /// at a used (lane, seq), or the same id with another order key), or an id that is
    /// not the content's. A payload that does not decode is not an error (see
    /// [`Check::New`]).
    pub fn check<F>(&self, event: &Event, key_at: F) -> Result<Check<S::Event>, StreamError>
    where
        F: Fn(Lane, Seq) -> Result<Option<OrderKey>, StorageError>,
    {
        let content = event.content_id();
        if event.id != content {
            return Err(StreamError::IdMismatch { event: event.id, content });
        }
        self.check_id_matched(event, key_at)
    }

    /// [`Ledger::check`] of an event whose id was matched against its content already
    /// (the router does, before it holds an event): the hash is not paid twice.
    ///
    /// # Errors
    /// As [`Ledger::check`], but for the id.
    pub(crate) fn check_id_matched<F>(&self, event: &Event, key_at: F) -> Result<Check<S::Event>, StreamError>
    where
        F: Fn(Lane, Seq) -> Result<Option<OrderKey>, StorageError>,
    {
        self.check_shape(event)?;
        let delivered = self.frontier.get(event.lane);
        if event.seq <= delivered {
            let kept = key_at(event.lane, event.seq)?
                .ok_or_else(|| StorageError::Corrupt(format!("no index entry for {} seq {}", event.lane, event.seq)))?;
            // A copy has the same key; the same id with another counter or time is a
            // forgery of that event, refused like any other event at a used seq.
            if kept == event.order_key() {
                return Ok(Check::Duplicate);
            }
            return Err(StreamError::Equivocation {
                lane: event.lane,
                seq: event.seq,
                kept: kept.id,
                rejected: event.id,
            });
        }
        if event.seq != delivered.next() {
            return Err(StreamError::SeqGap { lane: event.lane, expected: delivered.next(), got: event.seq });
        }
        check_lamport(event, |lane| self.frontier.get(lane), key_at)?;
        Ok(Check::New(codec::decode(&event.payload).ok()))
    }

    fn check_shape(&self, event: &Event) -> Result<(), StreamError> {
        if event.lane.stream != self.stream {
            return Err(StreamError::WrongStream { expected: self.stream, got: event.lane.stream });
        }
        if event.lane.site == self.site {
            return Err(StreamError::OwnLane { event: event.id, seq: event.seq });
        }
        if event.stream_type != S::TYPE_NAME {
            return Err(StreamError::WrongStreamType { expected: S::TYPE_NAME, got: event.stream_type.clone() });
        }
        if !event.clock_names_own_lane() || !event.clock.is_canonical() || event.clock.len() > limits::CLOCK_LANES_MAX {
            return Err(StreamError::MalformedClock {
                event: event.id,
                seq: event.seq,
                in_clock: event.clock.get(event.lane),
            });
        }
        if event.lamport > limits::LAMPORT_MAX {
            return Err(StreamError::LamportOutOfRange {
                event: event.id,
                lamport: event.lamport,
                max: limits::LAMPORT_MAX,
            });
        }
        Ok(())
    }

    /// Records a stamped or checked event: advances the frontier, the heads and the
    /// Lamport counter and folds it into the view. A [`Folded::Rewind`] asks the caller to
    /// replay the log.
    ///
    /// # Errors
    /// The view's `apply_event` panicked ([`crate::view::FoldError::Panicked`]): the
    /// ledger must not be used again.
    pub fn record(&mut self, event: &Event, payload: Option<&S::Event>) -> Result<Folded, crate::view::FoldError> {
        self.note(event);
        self.fold.apply(event, payload)
    }

    /// Advances the frontier, the heads and the Lamport counter past a stamped or checked
    /// event, leaving the fold to the caller ([`Ledger::record`] does both).
    pub(crate) fn note(&mut self, event: &Event) {
        debug_assert_eq!(event.lane.stream, self.stream);
        assert_eq!(event.seq, self.frontier.get(event.lane).next(), "lane seq must be contiguous");
        self.frontier.set(event.lane, event.seq);
        // What the event names is in its past, so no longer a head; it is one now.
        for (lane, seq) in event.clock.iter().filter(|(lane, _)| lane.stream == self.stream) {
            if self.heads.get(lane) <= seq {
                self.heads.set(lane, Seq::ZERO);
            }
        }
        self.heads.set(event.lane, event.seq);
        self.lamport = self.lamport.max(event.lamport);
    }

    /// Where the frontier, heads and Lamport counter stand before `events` are recorded,
    /// for [`Ledger::undo`] should they then not be stored.
    pub(crate) fn mark(&self, events: &[Event]) -> Mark {
        let mut lanes: Vec<(Lane, Seq)> = Vec::new();
        for event in events {
            if !lanes.iter().any(|(lane, _)| *lane == event.lane) {
                lanes.push((event.lane, self.frontier.get(event.lane)));
            }
        }
        Mark { lanes, heads: self.heads.clone(), lamport: self.lamport }
    }

    /// Takes back the records made since `mark` (the view is the caller's to rewind).
    pub(crate) fn undo(&mut self, mark: Mark) {
        for (lane, seq) in mark.lanes {
            self.frontier.set(lane, seq);
        }
        self.heads = mark.heads;
        self.lamport = mark.lamport;
    }
}

/// What [`Ledger::undo`] restores.
pub(crate) struct Mark {
    lanes: Vec<(Lane, Seq)>,
    heads: VectorClock,
    lamport: u64,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::heads_of;
    use crate::testkit::{causal_shuffle, history, with_delta_clocks, HistoryShape, Rng, TrailStream};
    use crate::view::Fold;
    use proptest::prelude::*;
    use std::collections::HashMap;

    fn ledger(site: u128, stream: StreamId) -> Ledger<TrailStream> {
        Ledger::new(SiteId::from_u128(site), stream, VectorClock::new(), VectorClock::new(), 0, Fold::new(8))
    }

    fn record_all(ledger: &mut Ledger<TrailStream>, events: &[Event]) {
        for event in events {
            ledger.record(event, Some(&event.seq.0)).unwrap();
        }
    }

    fn write_one(ledger: &Ledger<TrailStream>) -> Event {
        let stamps = std::iter::once((0, codec::encode(&1u64).unwrap()));
        ledger.stamp_all(&Dependencies::none(), stamps, |_, _| Ok(None)).unwrap().remove(0)
    }

    /// 5,000 sites each wrote the stream once, in turn, each having seen the one before:
    /// a full clock of the stream would name 5,000 lanes (more than an event may), but a
    /// write names only its own lane and the one head, here and after a reopen.
    #[test]
    fn a_stream_that_thousands_of_sites_wrote_in_turn_stays_writable() {
        let stream = StreamId::from_u128(77);
        let lane = |site: u64| Lane::new(SiteId::from_u128(u128::from(site)), stream);
        let writers = 5_000u64;
        let events: Vec<Event> = (1..=writers)
            .map(|site| {
                let seen: &[(Lane, u64)] = if site == 1 { &[] } else { &[(lane(site - 1), 1)] };
                crate::testkit::event(u128::from(site), lane(site), 1, seen, site, 0)
            })
            .collect();
        let mut here = ledger(0, stream);
        record_all(&mut here, &events);
        assert!(here.frontier().len() > limits::CLOCK_LANES_MAX, "a full clock could not be written");
        assert_eq!(here.heads(), &[(lane(writers), Seq(1))].into_iter().collect::<VectorClock>());
        let written = write_one(&here);
        assert_eq!(written.clock.len(), 2, "its own lane and the head: {:?}", written.clock);

        // Reopened from storage: the heads come from the lanes' last events.
        let reopened_heads = heads_of(&events);
        assert_eq!(&reopened_heads, here.heads());
        let reopened = Ledger::<TrailStream>::new(
            SiteId::from_u128(0),
            stream,
            here.frontier().clone(),
            reopened_heads,
            here.lamport(),
            Fold::new(8),
        );
        assert_eq!(write_one(&reopened).clock, written.clock);
    }

    /// A local batch: the first event names the heads, the later ones only their own lane.
    #[test]
    fn later_events_of_a_batch_name_only_their_own_lane() {
        let stream = StreamId::from_u128(5);
        let other = Lane::new(SiteId::from_u128(2), stream);
        let mut here = ledger(1, stream);
        record_all(&mut here, &[crate::testkit::event(1, other, 1, &[], 1, 0)]);
        let stamps = (0..3u32).map(|n| (0, codec::encode(&u64::from(n)).unwrap()));
        let events = here.stamp_all(&Dependencies::none(), stamps, |_, _| Ok(None)).unwrap();
        let own = here.own_lane();
        assert_eq!(events[0].clock, [(own, Seq(1)), (other, Seq(1))].into_iter().collect::<VectorClock>());
        assert_eq!(events[1].clock, [(own, Seq(2))].into_iter().collect::<VectorClock>());
        assert_eq!(events[2].clock, [(own, Seq(3))].into_iter().collect::<VectorClock>());
        assert_eq!(events.iter().map(|e| e.lamport).collect::<Vec<_>>(), vec![2, 3, 4]);
    }

    /// A write depending on another stream's event takes its counter from that event, not
    /// from what the caller claims; a peer's event whose counter is not exactly one more
    /// than its dependencies' largest is refused, too low or too high.
    #[test]
    fn counters_are_exactly_one_more_than_the_dependencies_largest() {
        let stream = StreamId::from_u128(5);
        let other = Lane::new(SiteId::from_u128(9), StreamId::from_u128(6));
        let key = OrderKey { lamport: 40, timestamp_ms: 0, id: EventId::from_u128(99) };
        let stored = |lane: Lane, seq: Seq| Ok((lane == other && seq == Seq(3)).then_some(key));
        let extra = Dependencies { clock: [(other, Seq(3))].into_iter().collect(), lamport: 1_000 };
        let stamps = std::iter::once((0, codec::encode(&1u64).unwrap()));
        let written = ledger(1, stream).stamp_all(&extra, stamps, stored).unwrap().remove(0);
        assert_eq!(written.lamport, 41, "the named event's counter, not the claimed 1,000");
        let there = ledger(2, stream);
        assert!(matches!(there.check(&written, stored), Ok(Check::New(Some(1)))));
        for lamport in [40, 42, 1_001] {
            // A forger gives its event the id of its content: only the counter is wrong.
            let mut forged = Event { lamport, ..written.clone() };
            forged.id = forged.content_id();
            let refused = there.check(&forged, stored);
            assert!(matches!(refused, Err(StreamError::LamportNotNext { expected: 41, .. })), "{lamport}: {refused:?}");
        }
    }

    proptest! {
        /// Whatever clocks arrive (full or delta) and in whatever causal order, the heads
        /// a ledger keeps are exactly the delivered events that no other delivered event
        /// has in its past; the heads found from the lanes' last events on a reopen hold
        /// them all, and their pasts together are the whole frontier.
        #[test]
        fn heads_are_the_events_no_other_depends_on(seed in any::<u64>(), sites in 1u32..6, events in 1usize..80, sync in 0u64..100, delta in any::<bool>()) {
            let mut rng = Rng::new(seed);
            let full = history(HistoryShape { sites, streams: 1, events, sync_percent: sync }, &mut rng);
            let arrived = causal_shuffle(&if delta { with_delta_clocks(&full) } else { full.clone() }, &mut rng);
            let stream = full[0].lane.stream;
            let mut here = ledger(1_000, stream);
            record_all(&mut here, &arrived);

            let past: HashMap<(Lane, Seq), &VectorClock> = full.iter().map(|e| ((e.lane, e.seq), &e.clock)).collect();
            let in_a_later_past = |e: &Event| full.iter().any(|f| f.id != e.id && f.clock.covers(e.lane, e.seq));
            let maximal: VectorClock = full.iter().filter(|e| !in_a_later_past(e)).map(|e| (e.lane, e.seq)).collect();
            prop_assert_eq!(here.heads(), &maximal);

            let ends: Vec<Event> = arrived.iter().filter(|e| here.frontier().get(e.lane) == e.seq).cloned().collect();
            let reopened = heads_of(&ends);
            prop_assert!(reopened.dominates(&maximal) && here.frontier().dominates(&reopened));
            let mut covered = VectorClock::new();
            for (lane, seq) in reopened.iter() {
                covered.merge(past[&(lane, seq)]);
            }
            prop_assert_eq!(&covered, here.frontier());
        }
    }
}
