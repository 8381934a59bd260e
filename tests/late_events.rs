//! Late events cost what they move: a batch of events that sort before what a stream has
//! folded rolls the view back once, to the snapshot before the earliest of them, not once
//! per event.
#![allow(clippy::unwrap_used)]

mod common;

use actix::Actor;
use common::{remote_event, remote_lane, run_site};
use gundb::storage::{SledStorage, Storage};
use gundb::{Decide, DeliverBatch, Delivered, EventMeta, GetView, Stream, StreamActor, StreamConfig, StreamId, View};
use serde::{Deserialize, Serialize};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// Every `apply_event` call in this test binary (it has one test).
static APPLIED: AtomicU64 = AtomicU64::new(0);

/// The numbers in the order folded, counting each fold.
#[derive(Clone, Default, Debug, PartialEq, Serialize, Deserialize)]
struct Counted(Vec<u64>);

impl View<u64> for Counted {
    fn apply_event(&mut self, event: &u64, _: &EventMeta<'_>) {
        APPLIED.fetch_add(1, Ordering::Relaxed);
        self.0.push(*event);
    }
}

struct CountedStream;
impl Stream for CountedStream {
    const TYPE_NAME: &'static str = "test.trail"; // the events of `common::remote_event`
    type Event = u64;
    type View = Counted;
}

/// 2,000 local events (snapshots every 100), then one batch of 50 remote events with
/// counters 1 to 50: every one sorts before almost everything folded. One rollback
/// replays the log once (about 2,050 folds); one per event replayed it 50 times over.
#[test]
fn a_batch_of_late_events_rolls_back_once() {
    run_site(|| async {
        let storage = Arc::new(SledStorage::temporary().unwrap());
        let stream = StreamId::from_u128(0x1A7E);
        let config = StreamConfig { snapshot_every: 100, ..StreamConfig::default() };
        let actor = StreamActor::<CountedStream>::open_with(storage.clone(), stream, config).unwrap().start();
        for chunk in 0..20u64 {
            let decide = Decide::new(move |_: &Counted| {
                Ok::<_, std::convert::Infallible>((0..100).map(|n| chunk * 100 + n).collect())
            });
            actor.send(decide).await.unwrap().unwrap();
        }
        let lane = remote_lane(2, stream);
        let late: Vec<_> = (1..=50).map(|seq| remote_event(lane, seq, seq, 10_000 + seq)).collect();
        APPLIED.store(0, Ordering::Relaxed);
        let outcomes = actor.send(DeliverBatch(late)).await.unwrap();
        assert!(outcomes.iter().all(|outcome| outcome == &Ok(Delivered::Applied)), "{outcomes:?}");
        let applied = APPLIED.load(Ordering::Relaxed);
        assert!(applied <= 2 * 2_050, "{applied} folds for one batch: it rolled back more than once");

        let view = actor.send(GetView::new()).await.unwrap().unwrap().view;
        let log = storage.events_from(stream, std::ops::Bound::Unbounded, None, usize::MAX).unwrap();
        let folded: Vec<u64> = log.iter().map(|event| gundb::codec::decode(&event.payload).unwrap()).collect();
        assert_eq!(view.0, folded, "the view is the fold of the log in canonical order");
        assert_eq!(view.0.len(), 2_050);
    });
}
