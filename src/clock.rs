//! [`VectorClock`]: a map lane → counter, and how two clocks relate ([`Causality`]).
//!
//! Pure: no actors, no storage, no time. A missing lane counts as 0 and zero entries are
//! never stored, so two clocks that mean the same thing are structurally equal and
//! iterate (sorted by lane) in the same order on every site.

use crate::id::{Lane, Seq};
use serde::{Deserialize, Serialize};
use std::cmp::Ordering;
use std::collections::BTreeMap;

/// How two clocks (or the events carrying them) relate.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Causality {
    /// Every entry is `<=` the other's and at least one is `<`: this happened before.
    Before,
    /// The mirror of `Before`.
    After,
    /// The same entries.
    Equal,
    /// Each has an entry the other lacks: neither saw the other.
    Concurrent,
}

/// A vector clock: for each lane, how far into it (by [`Seq`]) something has seen.
///
/// # Examples
/// ```
/// use gundb::{Causality, Lane, SiteId, StreamId, VectorClock};
/// let lane = Lane::new(SiteId::from_u128(1), StreamId::from_u128(9));
/// let mut a = VectorClock::new();
/// let b = a.clone();
/// a.increment(lane);
/// assert_eq!(a.compare(&b), Causality::After);
/// assert!(b.happened_before(&a));
/// ```
#[derive(Clone, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
pub struct VectorClock(BTreeMap<Lane, Seq>);

impl VectorClock {
    /// The empty clock: every lane at 0.
    pub fn new() -> Self {
        Self::default()
    }

    /// The counter of `lane` (0 when absent).
    pub fn get(&self, lane: Lane) -> Seq {
        self.0.get(&lane).copied().unwrap_or(Seq::ZERO)
    }

    /// Sets `lane` to `seq`, removing the entry when `seq` is 0.
    pub fn set(&mut self, lane: Lane, seq: Seq) {
        if seq == Seq::ZERO {
            self.0.remove(&lane);
        } else {
            self.0.insert(lane, seq);
        }
    }

    /// Advances `lane` by one and returns its new counter.
    pub fn increment(&mut self, lane: Lane) -> Seq {
        let next = self.get(lane).next();
        self.0.insert(lane, next);
        next
    }

    /// Raises every entry to the maximum of both clocks (the least upper bound).
    pub fn merge(&mut self, other: &VectorClock) {
        for (&lane, &seq) in &other.0 {
            let entry = self.0.entry(lane).or_insert(seq);
            *entry = (*entry).max(seq);
        }
    }

    /// True when every entry of `other` is `<=` this clock's: this clock has seen all of it.
    pub fn dominates(&self, other: &VectorClock) -> bool {
        other.0.iter().all(|(&lane, &seq)| self.get(lane) >= seq)
    }

    /// True when this clock has seen `lane` up to at least `seq`.
    pub fn covers(&self, lane: Lane, seq: Seq) -> bool {
        self.get(lane) >= seq
    }

    /// How this clock relates to `other`, in one merge-walk over both (O(n + m)).
    pub fn compare(&self, other: &VectorClock) -> Causality {
        let (mut less, mut greater) = (false, false);
        let mut mine = self.0.iter().peekable();
        let mut theirs = other.0.iter().peekable();
        loop {
            // Stored entries are never 0, so a lane on one side only is greater there.
            let step = match (mine.peek(), theirs.peek()) {
                (None, None) => break,
                (Some(_), None) => {
                    mine.next();
                    Ordering::Greater
                }
                (None, Some(_)) => {
                    theirs.next();
                    Ordering::Less
                }
                (Some((a, x)), Some((b, y))) => match a.cmp(b) {
                    Ordering::Equal => {
                        let order = x.cmp(y);
                        mine.next();
                        theirs.next();
                        order
                    }
                    Ordering::Less => {
                        mine.next();
                        Ordering::Greater
                    }
                    Ordering::Greater => {
                        theirs.next();
                        Ordering::Less
                    }
                },
            };
            match step {
                Ordering::Less => less = true,
                Ordering::Greater => greater = true,
                Ordering::Equal => {}
            }
            if less && greater {
                return Causality::Concurrent; // no later entry can change the answer
            }
        }
        match (less, greater) {
            (false, false) => Causality::Equal,
            (true, false) => Causality::Before,
            (false, true) => Causality::After,
            (true, true) => Causality::Concurrent,
        }
    }

    /// True when this clock is strictly before `other`.
    pub fn happened_before(&self, other: &VectorClock) -> bool {
        self.compare(other) == Causality::Before
    }

    /// True when neither clock has seen all of the other.
    pub fn concurrent_with(&self, other: &VectorClock) -> bool {
        self.compare(other) == Causality::Concurrent
    }

    /// The entries, sorted by lane.
    pub fn iter(&self) -> impl ExactSizeIterator<Item = (Lane, Seq)> + '_ {
        self.0.iter().map(|(&lane, &seq)| (lane, seq))
    }

    /// How many lanes are above 0.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// True when every lane is at 0.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// True when no stored entry is 0: the invariant that makes `==` mean "same clock".
    /// Decoded clocks come from outside and must be checked with this.
    pub fn is_canonical(&self) -> bool {
        self.0.values().all(|&seq| seq > Seq::ZERO)
    }
}

impl std::fmt::Debug for VectorClock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_map().entries(self.0.iter().map(|(l, s)| (l, s.0))).finish()
    }
}

impl FromIterator<(Lane, Seq)> for VectorClock {
    fn from_iter<I: IntoIterator<Item = (Lane, Seq)>>(iter: I) -> Self {
        let mut clock = VectorClock::new();
        for (lane, seq) in iter {
            let merged = clock.get(lane).max(seq);
            clock.set(lane, merged);
        }
        clock
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::id::{SiteId, StreamId};
    use proptest::prelude::*;

    fn lane(n: u8) -> Lane {
        Lane::new(SiteId::from_u128(u128::from(n)), StreamId::from_u128(7))
    }

    /// Clocks over a handful of lanes, so that equal and dominated clocks are common.
    fn clock() -> impl Strategy<Value = VectorClock> {
        proptest::collection::vec((0u8..4, 0u64..4), 0..6)
            .prop_map(|entries| entries.into_iter().map(|(l, s)| (lane(l), Seq(s))).collect())
    }

    fn merged(a: &VectorClock, b: &VectorClock) -> VectorClock {
        let mut m = a.clone();
        m.merge(b);
        m
    }

    #[test]
    fn missing_lanes_count_as_zero() {
        let mut a = VectorClock::new();
        assert_eq!(a.get(lane(1)), Seq::ZERO);
        a.set(lane(1), Seq(0));
        assert!(a.is_empty(), "a zero entry is never stored");
        assert_eq!(a.compare(&VectorClock::new()), Causality::Equal);
    }

    #[test]
    fn compare_cases() {
        let a: VectorClock = [(lane(1), Seq(1))].into_iter().collect();
        let b: VectorClock = [(lane(1), Seq(2))].into_iter().collect();
        let c: VectorClock = [(lane(2), Seq(1))].into_iter().collect();
        assert_eq!(a.compare(&b), Causality::Before);
        assert_eq!(b.compare(&a), Causality::After);
        assert_eq!(a.compare(&c), Causality::Concurrent);
        assert_eq!(merged(&a, &c).compare(&c), Causality::After);
        assert!(merged(&b, &c).dominates(&a));
        assert!(!a.dominates(&c));
    }

    proptest! {
        #[test]
        fn merge_is_commutative(a in clock(), b in clock()) {
            prop_assert_eq!(merged(&a, &b), merged(&b, &a));
        }

        #[test]
        fn merge_is_associative(a in clock(), b in clock(), c in clock()) {
            prop_assert_eq!(merged(&merged(&a, &b), &c), merged(&a, &merged(&b, &c)));
        }

        #[test]
        fn merge_is_idempotent(a in clock(), b in clock()) {
            prop_assert_eq!(merged(&a, &a), a.clone());
            let ab = merged(&a, &b);
            prop_assert_eq!(merged(&ab, &b), ab.clone());
            prop_assert!(ab.dominates(&a) && ab.dominates(&b));
        }

        #[test]
        fn compare_is_antisymmetric(a in clock(), b in clock()) {
            let mirrored = match a.compare(&b) {
                Causality::Before => Causality::After,
                Causality::After => Causality::Before,
                same => same,
            };
            prop_assert_eq!(b.compare(&a), mirrored);
            prop_assert_eq!(a.compare(&b) == Causality::Equal, a == b);
        }

        #[test]
        fn compare_agrees_with_happened_before(a in clock(), b in clock()) {
            prop_assert_eq!(a.happened_before(&b), a.compare(&b) == Causality::Before);
            prop_assert_eq!(a.happened_before(&b), b.dominates(&a) && a != b);
            prop_assert_eq!(a.concurrent_with(&b), !a.dominates(&b) && !b.dominates(&a));
        }

        #[test]
        fn happened_before_is_transitive(a in clock(), b in clock(), c in clock()) {
            // Build a chain a < a+b < a+b+c (when strict) so the premise holds often.
            let ab = merged(&a, &b);
            let abc = merged(&ab, &c);
            if a.happened_before(&ab) && ab.happened_before(&abc) {
                prop_assert!(a.happened_before(&abc));
            }
            if a.happened_before(&b) && b.happened_before(&c) {
                prop_assert!(a.happened_before(&c));
            }
        }

        #[test]
        fn increment_makes_the_clock_after(a in clock(), l in 0u8..6) {
            let mut next = a.clone();
            let seq = next.increment(lane(l));
            prop_assert_eq!(seq, a.get(lane(l)).next());
            prop_assert_eq!(next.compare(&a), Causality::After);
            prop_assert!(a.happened_before(&next));
        }
    }
}
