//! Stream types ([`Stream`], [`View`]) and [`Fold`]: a view folded from events in
//! canonical order, with snapshots to roll back to when a late event sorts before events
//! already applied.
//!
//! Pure: the caller hands `Fold` the events (from storage or memory); `Fold` never reads a
//! disk or a clock. Persisting snapshots is the caller's job too.
//!
//! An event whose payload does not decode into the stream's event type (written by a newer
//! version of the application, or garbage from a broken writer) is skipped and counted in
//! [`Unfolded`], not refused: the stream keeps moving past it, and a build whose type
//! decodes it folds it from the log (see [`Unfolded::first`]).

use crate::codec;
use crate::event::{Event, EventMeta, OrderKey};
use crate::id::EventId;
use crate::limits;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// A stream type: a stable name, the application's event type and the view folded from it.
///
/// # Examples
/// ```
/// use gundb::{EventMeta, Stream, View};
/// use serde::{Deserialize, Serialize};
///
/// #[derive(Clone, Serialize, Deserialize)]
/// enum Cart { Add(String), Remove(String) }
///
/// #[derive(Clone, Default, Serialize, Deserialize)]
/// struct Items(Vec<String>);
///
/// impl View<Cart> for Items {
///     fn apply_event(&mut self, event: &Cart, _meta: &EventMeta<'_>) {
///         match event {
///             Cart::Add(item) => self.0.push(item.clone()),
///             Cart::Remove(item) => self.0.retain(|i| i != item),
///         }
///     }
/// }
///
/// struct ShoppingCart;
/// impl Stream for ShoppingCart {
///     const TYPE_NAME: &'static str = "shop.cart";
///     type Event = Cart;
///     type View = Items;
/// }
/// ```
pub trait Stream: Send + Unpin + 'static {
    /// A name that identifies the type on disk and on the wire. Never change it once
    /// events exist.
    const TYPE_NAME: &'static str;
    /// The application's event.
    type Event: Serialize + DeserializeOwned + Clone + Send + Unpin + 'static;
    /// The state folded from the events.
    type View: View<Self::Event>;
    /// Whether the view is the same whatever order concurrent events are applied in. A
    /// commutative stream skips the rollback when a late event arrives.
    const COMMUTATIVE: bool = false;
}

/// A view: the current state of a stream, the fold of [`View::apply_event`] over its events
/// in canonical order. Serde, so that it can be snapshotted.
pub trait View<E>: Default + Clone + Serialize + DeserializeOwned + Send + Unpin + 'static {
    /// Folds one event into the view. Must be deterministic: the same events in the same
    /// order give the same view on every site.
    fn apply_event(&mut self, event: &E, meta: &EventMeta<'_>);
}

/// What [`Fold::apply`] did with an event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Folded {
    /// Folded on top of the view (it sorts after everything applied, or the stream is
    /// commutative). `snapshot` names a snapshot taken right after it, to persist.
    Applied {
        /// Key of a new snapshot, when one was due.
        snapshot: Option<OrderKey>,
    },
    /// The event sorts before events already applied: call [`Fold::rewind`] and
    /// [`Fold::replay`] with the log's events after `from` (all of them when `None`),
    /// including this one. Snapshots after the event were dropped: they lack it.
    Rewind {
        /// The newest snapshot before the event, where the replay starts.
        from: Option<OrderKey>,
    },
}

/// The events a fold skipped because their payload does not decode into the stream's
/// event type.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Unfolded {
    /// How many.
    pub count: u64,
    /// The first of them in canonical order. A snapshot taken after it lacks it: when it
    /// decodes after an upgrade, the stream drops the snapshots from it on and folds it.
    pub first: Option<OrderKey>,
}

/// A view as it was after the event at some key, with the events skipped up to there: what
/// a stream stores as a snapshot.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Snapshot<V> {
    /// The view.
    pub view: V,
    /// What the fold had skipped by then.
    pub unfolded: Unfolded,
}

/// A stream's view, folded in canonical order, with the snapshots to roll back to.
pub struct Fold<S: Stream> {
    view: S::View,
    unfolded: Unfolded,
    last: Option<OrderKey>,
    since_snapshot: u32,
    snapshot_every: u32,
    snapshots: BTreeMap<OrderKey, Snapshot<S::View>>,
    rollback: bool,
}

impl<S: Stream> Fold<S> {
    /// An empty fold that snapshots every `snapshot_every` events (at least 1).
    pub fn new(snapshot_every: u32) -> Self {
        Self {
            view: S::View::default(),
            unfolded: Unfolded::default(),
            last: None,
            since_snapshot: 0,
            snapshot_every: snapshot_every.max(1),
            snapshots: BTreeMap::new(),
            rollback: true,
        }
    }

    /// A fold resumed from persisted snapshots (each the view after every event up to its
    /// key), at the newest of them; empty when there are none.
    pub fn resume(snapshot_every: u32, snapshots: impl IntoIterator<Item = (OrderKey, Snapshot<S::View>)>) -> Self {
        let mut fold = Self::new(snapshot_every);
        fold.snapshots.extend(snapshots);
        for key in snapshots_to_drop(fold.snapshots.keys()) {
            fold.snapshots.remove(&key);
        }
        fold.rewind(fold.snapshots.keys().next_back().copied());
        fold
    }

    /// The current view.
    pub fn view(&self) -> &S::View {
        &self.view
    }

    /// The events skipped so far because their payload does not decode.
    pub fn unfolded(&self) -> Unfolded {
        self.unfolded
    }

    /// The snapshot at `key`, when held.
    pub fn snapshot(&self, key: &OrderKey) -> Option<&Snapshot<S::View>> {
        self.snapshots.get(key)
    }

    /// Test-only switch for a planted bug: fold late events on top instead of rolling
    /// back. Exists so tests can show that the convergence checks catch it.
    #[cfg(any(test, feature = "testing"))]
    pub fn plant_bug_skip_rollback(&mut self) {
        self.rollback = false;
    }

    /// Folds `event` (whose decoded payload is `payload`, `None` when it does not decode:
    /// skipped and counted), or says a replay is needed.
    ///
    /// # Errors
    /// [`FoldError::Panicked`] when the view's `apply_event` panicked: the view may be
    /// half-changed, so the fold must not be used again.
    pub fn apply(&mut self, event: &Event, payload: Option<&S::Event>) -> Result<Folded, FoldError> {
        let key = event.order_key();
        let in_order = self.last.is_none_or(|last| key > last);
        if in_order || S::COMMUTATIVE || !self.rollback {
            if !in_order {
                // Folded on top, late: the snapshots after it lack it.
                drop(self.snapshots.split_off(&key));
            }
            self.fold_one(event, payload)?;
            if in_order {
                self.last = Some(key);
                return Ok(Folded::Applied { snapshot: self.maybe_snapshot(key) });
            }
            return Ok(Folded::Applied { snapshot: None });
        }
        drop(self.snapshots.split_off(&key));
        Ok(Folded::Rewind { from: self.snapshots.keys().next_back().copied() })
    }

    /// Restores the snapshot at `from` (or the empty view), ready for [`Fold::replay`] of
    /// the log's events after it.
    ///
    /// # Panics
    /// When `from` is not a held snapshot: only keys from [`Folded::Rewind`] and
    /// [`Fold::rewind_before`] are.
    pub fn rewind(&mut self, from: Option<OrderKey>) {
        (self.view, self.unfolded) = match from {
            Some(key) => {
                let snapshot = self.snapshots.get(&key).expect("Rewind names a held snapshot");
                (snapshot.view.clone(), snapshot.unfolded)
            }
            None => (S::View::default(), Unfolded::default()),
        };
        self.last = from;
        self.since_snapshot = 0;
    }

    /// Takes back everything folded at or after `key` (events that were then not stored):
    /// drops the snapshots from `key` on and rewinds to the newest before it, which it
    /// returns for the [`Fold::replay`] of the log after it.
    pub fn rewind_before(&mut self, key: OrderKey) -> Option<OrderKey> {
        drop(self.snapshots.split_off(&key));
        let from = self.snapshots.keys().next_back().copied();
        self.rewind(from);
        from
    }

    /// Folds `events`, which must continue the log in canonical order after the last one
    /// folded (after [`Fold::rewind`], or on recovery). Returns keys of snapshots taken.
    ///
    /// # Errors
    /// An `apply_event` that panicked ([`FoldError::Panicked`]: the fold must not be used
    /// again). A payload that does not decode is skipped and counted, not an error.
    pub fn replay<'e>(&mut self, events: impl IntoIterator<Item = &'e Event>) -> Result<Vec<OrderKey>, FoldError> {
        let mut taken = Vec::new();
        for event in events {
            let key = event.order_key();
            assert!(self.last.is_none_or(|last| key > last), "replay must be in canonical order");
            let payload: Option<S::Event> = codec::decode(&event.payload).ok();
            self.fold_one(event, payload.as_ref())?;
            self.last = Some(key);
            taken.extend(self.maybe_snapshot(key));
        }
        Ok(taken)
    }

    /// Applies one event's payload, or counts it as unfolded when there is none.
    fn fold_one(&mut self, event: &Event, payload: Option<&S::Event>) -> Result<(), FoldError> {
        match payload {
            Some(payload) => apply_caught::<S>(&mut self.view, payload, event),
            None => {
                self.unfolded.count += 1;
                let key = event.order_key();
                // Folded in canonical order but for commutative streams and the planted
                // bug: keep the smallest.
                self.unfolded.first = Some(self.unfolded.first.map_or(key, |first| first.min(key)));
                Ok(())
            }
        }
    }

    fn maybe_snapshot(&mut self, key: OrderKey) -> Option<OrderKey> {
        self.since_snapshot += 1;
        if self.since_snapshot < self.snapshot_every {
            return None;
        }
        self.since_snapshot = 0;
        self.snapshots.insert(key, Snapshot { view: self.view.clone(), unfolded: self.unfolded });
        for key in snapshots_to_drop(self.snapshots.keys()) {
            self.snapshots.remove(&key);
        }
        Some(key)
    }
}

/// Which of the snapshots at `keys` (in canonical order) to drop so that at most
/// [`limits::SNAPSHOTS_KEPT`] remain, spaced so that the distance back from the newest
/// grows about geometrically: a late event then rolls back to a snapshot about as far
/// behind as the event is late, rather than to the start of the log once it is older than
/// the last few snapshots. Distances are in Lamport counters (the first part of canonical
/// order). The newest is always kept; each step drops the snapshot whose removal leaves the
/// smallest gap relative to its age, counting the start of the log as a snapshot at 0.
pub(crate) fn snapshots_to_drop<'k>(keys: impl IntoIterator<Item = &'k OrderKey>) -> Vec<OrderKey> {
    let mut kept: Vec<OrderKey> = keys.into_iter().copied().collect();
    let mut dropped = Vec::new();
    while kept.len() > limits::SNAPSHOTS_KEPT {
        let Some(newest) = kept.last().map(|key| u128::from(key.lamport)) else { break };
        let cost = |index: usize| {
            let before = index.checked_sub(1).map_or(0, |before| u128::from(kept[before].lamport));
            let gap = u128::from(kept[index + 1].lamport).saturating_sub(before);
            (gap, newest.saturating_sub(u128::from(kept[index].lamport)) + 1)
        };
        // The smallest gap ÷ age, compared by cross-multiplying (no rounding).
        let Some(index) = (0..kept.len() - 1).min_by(|&a, &b| {
            let ((gap_a, age_a), (gap_b, age_b)) = (cost(a), cost(b));
            (gap_a * age_b).cmp(&(gap_b * age_a))
        }) else {
            break;
        };
        dropped.push(kept.remove(index));
    }
    dropped
}

/// Why a [`Fold`] could not fold an event.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FoldError {
    /// The view's `apply_event` panicked on the event (a bug in the application's view,
    /// or an event it cannot handle): caught, so that the panic stops this stream only.
    #[error("apply_event panicked on event {event}: {message}")]
    Panicked {
        /// The event being folded.
        event: EventId,
        /// The panic's message.
        message: String,
    },
}

/// `view.apply_event(payload)`, with a panic caught and returned. The view may be left
/// half-changed by a panic, which is why [`FoldError::Panicked`] retires the fold.
fn apply_caught<S: Stream>(view: &mut S::View, payload: &S::Event, event: &Event) -> Result<(), FoldError> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| view.apply_event(payload, &event.meta()))).map_err(
        |panic| {
            let message = panic
                .downcast_ref::<&str>()
                .map(|message| (*message).to_owned())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "a panic without a message".to_owned());
            FoldError::Panicked { event: event.id, message }
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::id::{EventId, Lane, Seq, SiteId, StreamId};
    use crate::order::sort_events;
    use crate::testkit::{causal_shuffle, history, HistoryShape, Rng};
    use serde::Deserialize;

    /// Appends each event's number: not commutative, so order matters.
    #[derive(Clone, Default, Debug, PartialEq, Serialize, Deserialize)]
    struct Trail(Vec<u32>);
    impl View<u32> for Trail {
        fn apply_event(&mut self, event: &u32, _meta: &EventMeta<'_>) {
            self.0.push(*event);
        }
    }
    struct TrailStream;
    impl Stream for TrailStream {
        const TYPE_NAME: &'static str = "test.trail";
        type Event = u32;
        type View = Trail;
    }

    /// Folds `arrivals` the way a stream actor does, keeping the log in a sorted map.
    fn fold_all(arrivals: &[Event], every: u32, planted: bool) -> Trail {
        let mut fold = Fold::<TrailStream>::new(every);
        if planted {
            fold.plant_bug_skip_rollback();
        }
        let mut log = BTreeMap::new();
        for event in arrivals {
            log.insert(event.order_key(), event.clone());
            let payload: u32 = codec::decode(&event.payload).unwrap();
            if let Folded::Rewind { from } = fold.apply(event, Some(&payload)).unwrap() {
                let after: Vec<&Event> = match from {
                    Some(k) => {
                        log.range((std::ops::Bound::Excluded(k), std::ops::Bound::Unbounded)).map(|(_, e)| e).collect()
                    }
                    None => log.values().collect(),
                };
                fold.rewind(from);
                fold.replay(after).unwrap();
            }
        }
        fold.view().clone()
    }

    fn numbered(events: Vec<Event>) -> Vec<Event> {
        events
            .into_iter()
            .enumerate()
            .map(|(n, mut e)| {
                e.payload = codec::encode(&u32::try_from(n).unwrap()).unwrap();
                e
            })
            .collect()
    }

    #[test]
    fn any_causal_arrival_order_folds_to_the_canonical_view() {
        for seed in 0..200u64 {
            let mut rng = Rng::new(seed);
            let all = numbered(history(HistoryShape { sites: 3, streams: 1, events: 60, sync_percent: 30 }, &mut rng));
            let expected = fold_all(&sort_events(all.clone()).unwrap(), 4, false);
            let got = fold_all(&causal_shuffle(&all, &mut rng), 4, false);
            assert_eq!(got, expected, "seed {seed}");
        }
    }

    #[test]
    fn without_the_rollback_some_order_diverges() {
        let diverged = (0..200u64).any(|seed| {
            let mut rng = Rng::new(seed);
            let all = numbered(history(HistoryShape { sites: 3, streams: 1, events: 60, sync_percent: 30 }, &mut rng));
            let expected = fold_all(&sort_events(all.clone()).unwrap(), 4, false);
            fold_all(&causal_shuffle(&all, &mut rng), 4, true) != expected
        });
        assert!(diverged, "the planted bug must be visible, or the test above proves nothing");
    }

    /// Snapshots taken at Lamport 1, 2 … 20,000 thin out geometrically: at most
    /// `SNAPSHOTS_KEPT` remain, the newest always among them, and for every lateness the
    /// newest snapshot before a late event is at most 6 times as far back as the
    /// event is late (keeping the newest eight, an event 9 steps late replayed everything).
    #[test]
    fn snapshots_are_spaced_so_a_late_event_replays_about_as_far_as_it_is_late() {
        let key = |lamport: u64| OrderKey { lamport, timestamp_ms: 0, id: EventId::from_u128(u128::from(lamport)) };
        let mut kept = std::collections::BTreeSet::new();
        let newest = 20_000u64;
        for lamport in 1..=newest {
            kept.insert(key(lamport));
            for dropped in snapshots_to_drop(&kept) {
                kept.remove(&dropped);
            }
            assert!(kept.len() <= limits::SNAPSHOTS_KEPT);
            assert!(kept.contains(&key(lamport)), "the newest is kept");
        }
        for late in 1..newest {
            let from = kept.iter().rev().find(|k| k.lamport <= newest - late).map_or(0, |k| k.lamport);
            let replayed = newest - from;
            assert!(replayed <= 6 * late, "{late} late replays {replayed}: kept {kept:?}");
        }
    }

    /// An event of one lane at seq 1 with counter `lamport`: only its order key matters.
    fn event(id: u128, lamport: u64) -> Event {
        let lane = Lane::new(SiteId::from_u128(1), StreamId::from_u128(2));
        Event {
            id: EventId::from_u128(id),
            lane,
            seq: Seq(1),
            clock: [(lane, Seq(1))].into_iter().collect(),
            lamport,
            timestamp_ms: 0,
            stream_type: "t".into(),
            payload: codec::encode(&0u32).unwrap(),
            attestation: 0,
        }
    }

    /// A commutative stream folds a late event on top: the snapshots taken after it lack
    /// it, so they go (a rewind to one, when a later write is taken back, would lose it).
    #[test]
    fn a_late_event_folded_on_top_drops_the_snapshots_after_it() {
        struct Sum;
        impl Stream for Sum {
            const TYPE_NAME: &'static str = "test.sum";
            type Event = u32;
            type View = Trail;
            const COMMUTATIVE: bool = true;
        }
        let mut fold = Fold::<Sum>::new(1);
        let (first, late) = (event(1, 2), event(2, 1));
        assert_eq!(fold.apply(&first, Some(&1)), Ok(Folded::Applied { snapshot: Some(first.order_key()) }));
        assert_eq!(fold.apply(&late, Some(&2)), Ok(Folded::Applied { snapshot: None }));
        assert_eq!(fold.view(), &Trail(vec![1, 2]));
        assert!(fold.snapshot(&first.order_key()).is_none(), "the snapshot lacks the late event");
        assert_eq!(fold.rewind_before(first.order_key()), None);
    }

    #[test]
    fn a_late_event_drops_the_snapshots_after_it() {
        let mut fold = Fold::<TrailStream>::new(1);
        let first = event(1, 2);
        assert_eq!(fold.apply(&first, Some(&1)), Ok(Folded::Applied { snapshot: Some(first.order_key()) }));
        let late = event(2, 1);
        assert_eq!(fold.apply(&late, Some(&2)), Ok(Folded::Rewind { from: None }));
        assert!(fold.snapshot(&first.order_key()).is_none());
    }
}
