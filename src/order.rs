//! Canonical order: [`sort_events`] and the [`OrderError`]s of sets that contradict it.
//!
//! Pure. Sorting is by [`crate::OrderKey`], O(n log n); checking the result is O(n·k log n)
//! for k lanes per clock. The seed compared every pair of events (O(n²)); instead, for each
//! clock entry `(lane, c)` we look up only the latest event of that lane at or below `c`
//! that is present in the set. Lanes are checked to be increasing along their seq, so that
//! one comparison stands for every present event of that lane the entry covers.

use crate::event::{Event, OrderKey};
use crate::id::{EventId, Lane, Seq};
use std::collections::HashMap;

/// Why a set of events has no canonical order.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OrderError {
    /// A dependency sorts after an event that depends on it: its Lamport counter is not
    /// smaller. A well-behaved writer never produces this; the set holds a forged event.
    #[error("event {dependency} is a dependency of {dependent} but sorts after it (lamport {dependency_lamport} >= {dependent_lamport})")]
    DependencyAfterDependent {
        /// The event depended on.
        dependency: EventId,
        /// The event that depends on it.
        dependent: EventId,
        /// The dependency's Lamport counter.
        dependency_lamport: u64,
        /// The dependent's Lamport counter.
        dependent_lamport: u64,
    },
    /// Two different events claim one (lane, seq): their writer equivocated.
    #[error("equivocation on {lane} at seq {seq}: events {first} and {second}")]
    Equivocation {
        /// The lane claimed twice.
        lane: Lane,
        /// The seq claimed twice.
        seq: Seq,
        /// One of the two events.
        first: EventId,
        /// The other.
        second: EventId,
    },
    /// Two events share an id but differ: one of them is forged or damaged.
    #[error("two different events share the id {id}")]
    ConflictingCopies {
        /// The shared id.
        id: EventId,
    },
    /// An event's clock does not name its own lane at its seq.
    #[error("event {event} claims seq {seq} but its clock has its own lane at {in_clock}")]
    MalformedClock {
        /// The event.
        event: EventId,
        /// Its seq.
        seq: Seq,
        /// What its clock says for its own lane.
        in_clock: Seq,
    },
}

/// Returns `events` in canonical order, with copies of one event (same id) kept once.
///
/// # Errors
/// [`OrderError`] when the set contradicts canonical order: a dependency present in the set
/// that would come after its dependent, two different events on one (lane, seq), two
/// different events with one id and key, or an event whose clock does not name its own
/// lane at its seq.
///
/// # Examples
/// ```
/// use gundb::{sort_events, Event, Lane, Seq, SiteId, StreamId, VectorClock};
/// let lane = Lane::new(SiteId::from_u128(1), StreamId::from_u128(2));
/// let event = |n: u64| {
///     let clock: VectorClock = [(lane, Seq(n))].into_iter().collect();
///     Event::new(lane, Seq(n), clock, n, 0, "demo".into(), vec![])
/// };
/// let sorted = sort_events(vec![event(2), event(1), event(3)])?;
/// assert_eq!(sorted.iter().map(|e| e.seq.0).collect::<Vec<_>>(), [1, 2, 3]);
/// # Ok::<(), gundb::OrderError>(())
/// ```
pub fn sort_events(mut events: Vec<Event>) -> Result<Vec<Event>, OrderError> {
    // Sort small (key, index) pairs rather than moving whole events around, then permute
    // the events in place: no second vector of events is allocated.
    let mut order: Vec<(OrderKey, usize)> = events.iter().enumerate().map(|(i, e)| (e.order_key(), i)).collect();
    order.sort_unstable();
    let mut destination = vec![usize::MAX; events.len()];
    let mut kept = 0;
    let mut copies = events.len();
    for (rank, &(key, source)) in order.iter().enumerate() {
        if rank > 0 && order[rank - 1].0.id == key.id {
            if events[order[rank - 1].1] != events[source] {
                return Err(OrderError::ConflictingCopies { id: key.id });
            }
            copies -= 1; // a copy of the previous event: moved past the end, then dropped
            destination[source] = copies;
        } else {
            destination[source] = kept;
            kept += 1;
        }
    }
    debug_assert_eq!(kept, copies);
    for start in 0..events.len() {
        while destination[start] != start {
            let target = destination[start];
            events.swap(start, target);
            destination.swap(start, target);
        }
    }
    events.truncate(kept);
    check_canonical(&events)?;
    Ok(events)
}

/// The events of one lane present in a set, by seq.
struct LaneEvents {
    /// (seq, key), sorted by seq.
    entries: Vec<(Seq, OrderKey)>,
    /// True when the seqs are contiguous, so a seq's entry is found by subtraction.
    dense: bool,
}

impl LaneEvents {
    /// The key of the latest event at or below `upto`, if any is present.
    fn latest_at_or_below(&self, upto: Seq) -> Option<OrderKey> {
        let first = self.entries.first()?.0;
        if upto < first {
            return None;
        }
        if self.dense {
            let offset = usize::try_from(upto.0 - first.0).unwrap_or(usize::MAX);
            let index = offset.min(self.entries.len() - 1);
            return Some(self.entries[index].1);
        }
        let below = self.entries.partition_point(|&(seq, _)| seq <= upto);
        Some(self.entries[below - 1].1)
    }
}

/// Checks that `events`, already sorted by [`OrderKey`] and without copies, respect
/// causality and hold no equivocation.
///
/// # Errors
/// As [`sort_events`].
pub fn check_canonical(events: &[Event]) -> Result<(), OrderError> {
    debug_assert!(events.windows(2).all(|w| w[0].order_key() < w[1].order_key()));
    let mut by_lane: HashMap<Lane, Vec<(Seq, OrderKey)>> = HashMap::new();
    for event in events {
        if !event.clock_names_own_lane() {
            return Err(OrderError::MalformedClock {
                event: event.id,
                seq: event.seq,
                in_clock: event.clock.get(event.lane),
            });
        }
        by_lane.entry(event.lane).or_default().push((event.seq, event.order_key()));
    }
    // Lanes sorted, so a clock entry finds its lane by binary search instead of hashing.
    let mut lanes: Vec<(Lane, LaneEvents)> = Vec::with_capacity(by_lane.len());
    for (lane, mut entries) in by_lane {
        entries.sort_unstable_by_key(|&(seq, _)| seq);
        if let Some(pair) = entries.windows(2).find(|w| w[0].0 == w[1].0) {
            return Err(OrderError::Equivocation { lane, seq: pair[0].0, first: pair[0].1.id, second: pair[1].1.id });
        }
        let dense = entries.windows(2).all(|w| w[1].0 == w[0].0.next());
        lanes.push((lane, LaneEvents { entries, dense }));
    }
    lanes.sort_unstable_by_key(|(lane, _)| *lane);
    for event in events {
        let key = event.order_key();
        for (lane, upto) in event.clock.iter() {
            // The event's own entry covers itself: its dependency there is seq - 1.
            let upto = if lane == event.lane { Seq(upto.0 - 1) } else { upto };
            let Ok(found) = lanes.binary_search_by_key(&lane, |(l, _)| *l) else { continue };
            let Some(dependency) = lanes[found].1.latest_at_or_below(upto) else { continue };
            if dependency >= key {
                return Err(OrderError::DependencyAfterDependent {
                    dependency: dependency.id,
                    dependent: event.id,
                    dependency_lamport: dependency.lamport,
                    dependent_lamport: event.lamport,
                });
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::id::{SiteId, StreamId};
    use crate::testkit::{causal_shuffle, event, history, with_delta_clocks, HistoryShape, Rng};
    use proptest::prelude::*;

    fn lane(site: u128) -> Lane {
        Lane::new(SiteId::from_u128(site), StreamId::from_u128(100))
    }

    fn ids(events: &[Event]) -> Vec<u128> {
        events.iter().map(|e| e.id.as_uuid().as_u128()).collect()
    }

    #[test]
    fn linear_causality_follows_the_lane() {
        let a = lane(1);
        // Timestamps run backwards: causality (lamport) must win over time.
        let events = vec![event(3, a, 3, &[], 3, 1), event(1, a, 1, &[], 1, 3), event(2, a, 2, &[], 2, 2)];
        assert_eq!(ids(&sort_events(events).unwrap()), [1, 2, 3]);
    }

    #[test]
    fn branching_causality_puts_the_root_first_and_the_join_last() {
        let (a, b) = (lane(1), lane(2));
        let root = event(10, a, 1, &[], 1, 50);
        let left = event(11, a, 2, &[], 2, 60);
        let right = event(12, b, 1, &[(a, 1)], 2, 40);
        let join = event(13, a, 3, &[(b, 1)], 3, 10);
        let sorted = sort_events(vec![join, right, left, root]).unwrap();
        // The two branches are concurrent: ordered by timestamp (40 before 60).
        assert_eq!(ids(&sorted), [10, 12, 11, 13]);
    }

    #[test]
    fn concurrent_events_are_ordered_by_timestamp_then_id() {
        let (a, b, c) = (lane(1), lane(2), lane(3));
        let sorted =
            sort_events(vec![event(9, a, 1, &[], 1, 5), event(7, b, 1, &[], 1, 5), event(8, c, 1, &[], 1, 4)]).unwrap();
        assert_eq!(ids(&sorted), [8, 7, 9]);
    }

    #[test]
    fn copies_are_kept_once() {
        let a = lane(1);
        let e = event(1, a, 1, &[], 1, 1);
        assert_eq!(sort_events(vec![e.clone(), e]).unwrap().len(), 1);
    }

    #[test]
    fn different_events_with_one_id_are_rejected() {
        let e = event(1, lane(1), 1, &[], 1, 1);
        let mut forged = e.clone();
        forged.payload = vec![1];
        assert_eq!(sort_events(vec![e, forged]), Err(OrderError::ConflictingCopies { id: EventId::from_u128(1) }));
    }

    #[test]
    fn a_dependency_sorting_after_its_dependent_is_rejected_with_both_ids() {
        let (a, b) = (lane(1), lane(2));
        let dependency = event(1, a, 1, &[], 5, 1);
        let dependent = event(2, b, 1, &[(a, 1)], 2, 2); // lamport 2 <= 5: forged
        let err = sort_events(vec![dependency, dependent]).unwrap_err();
        assert!(
            matches!(err, OrderError::DependencyAfterDependent { dependency, dependent, .. }
            if dependency == EventId::from_u128(1) && dependent == EventId::from_u128(2)),
            "{err}"
        );
    }

    #[test]
    fn a_lane_out_of_order_is_rejected() {
        let a = lane(1);
        let err = sort_events(vec![event(1, a, 1, &[], 2, 1), event(2, a, 2, &[], 1, 1)]).unwrap_err();
        assert!(matches!(err, OrderError::DependencyAfterDependent { .. }), "{err}");
    }

    #[test]
    fn two_events_on_one_lane_and_seq_are_an_equivocation() {
        let a = lane(1);
        let err = sort_events(vec![event(1, a, 1, &[], 1, 1), event(2, a, 1, &[], 1, 2)]).unwrap_err();
        assert!(matches!(err, OrderError::Equivocation { seq: Seq(1), .. }), "{err}");
        assert!(err.to_string().contains(&EventId::from_u128(1).to_string()));
    }

    #[test]
    fn a_clock_without_its_own_lane_is_rejected() {
        let mut e = event(1, lane(1), 2, &[], 1, 1);
        e.clock.set(e.lane, Seq(1));
        assert!(matches!(sort_events(vec![e]), Err(OrderError::MalformedClock { .. })));
    }

    proptest! {
        /// For any valid multi-lane history in any arrival order, the output is a linear
        /// extension of happened-before: no event comes after one that it happened before.
        #[test]
        fn output_is_a_linear_extension_of_happened_before(seed in any::<u64>(), sites in 1u32..5, events in 1usize..80, sync in 0u64..100, delta in any::<bool>()) {
            let mut rng = Rng::new(seed);
            let full = history(HistoryShape { sites, streams: 1, events, sync_percent: sync }, &mut rng);
            let all = if delta { with_delta_clocks(&full) } else { full.clone() };
            let arrived = causal_shuffle(&all, &mut rng);
            let sorted = sort_events(arrived).unwrap();
            prop_assert_eq!(sorted.len(), all.len());
            // A full clock names the whole past, so naming is happening before. (A delta
            // clock makes another id: the events are matched by lane and seq.)
            let full: HashMap<(Lane, Seq), &Event> = full.iter().map(|e| ((e.lane, e.seq), e)).collect();
            let full_of = |e: &Event| full[&(e.lane, e.seq)];
            for (i, later) in sorted.iter().enumerate() {
                for earlier in &sorted[i + 1..] {
                    prop_assert!(!full_of(earlier).is_named_by(full_of(later)), "{:?} sorted after {:?}", earlier.id, later.id);
                }
            }
        }
    }
}
