//! The stream actor's messages end to end on sled: concurrent emits, decisions that hold a
//! business rule under concurrency, subscriptions (catch-up, then live, through a tiny
//! bounded channel), stream-type mismatches, and a stream that thousands of sites wrote.
#![allow(clippy::unwrap_used)]

mod common;

use actix::Actor;
use common::{remote_event, remote_lane, run_site, Trail, TrailStream};
use gundb::storage::{SledStorage, Storage, StorageError};
use gundb::{
    Decide, DecideError, DeliverBatch, Delivered, Emit, EventMeta, GetView, History, Lane, Seq, Stream, StreamActor,
    StreamError, StreamId, VectorClock, View,
};
use serde::{Deserialize, Serialize};
use std::collections::HashSet;
use std::sync::Arc;

fn temporary() -> Arc<dyn Storage> {
    Arc::new(SledStorage::temporary().unwrap())
}

/// Many emits in flight at once: every one is acknowledged, with seqs 1..=n, no gap and
/// no reuse, and the history holds exactly them.
#[test]
fn concurrent_emits_get_contiguous_seqs() {
    run_site(|| async {
        let actor = StreamActor::<TrailStream>::open(temporary(), StreamId::random()).unwrap().start();
        let pending: Vec<_> = (0..300).map(|n| actor.send(Emit::new(n))).collect();
        let mut seqs = Vec::new();
        for reply in pending {
            seqs.push(reply.await.unwrap().unwrap().seq.0);
        }
        assert_eq!(seqs, (1..=300).collect::<Vec<_>>());
        let history = actor.send(History { after: None, limit: 1_000 }).await.unwrap().unwrap();
        assert_eq!(history.events.len(), 300);
        assert_eq!(common::fold(&history.events).0, (0..300).collect::<Vec<_>>());
    });
}

#[derive(Clone, Default, Serialize, Deserialize)]
struct Balance(u64);

#[derive(Clone, Serialize, Deserialize)]
enum Money {
    Deposit(u64),
    Withdraw(u64),
}

impl View<Money> for Balance {
    fn apply_event(&mut self, event: &Money, _meta: &EventMeta<'_>) {
        match event {
            Money::Deposit(n) => self.0 += n,
            Money::Withdraw(n) => self.0 = self.0.checked_sub(*n).expect("a withdrawal never overdraws"),
        }
    }
}

struct Account;
impl Stream for Account {
    const TYPE_NAME: &'static str = "test.account";
    type Event = Money;
    type View = Balance;
}

/// 50 withdrawals of 10 race against a balance of 100: a decision sees the view with every
/// earlier decision applied, so exactly 10 succeed and the balance never goes negative.
#[test]
fn decide_holds_a_business_rule_under_concurrency() {
    run_site(|| async {
        let actor = StreamActor::<Account>::open(temporary(), StreamId::random()).unwrap().start();
        actor.send(Emit::new(Money::Deposit(100))).await.unwrap().unwrap();
        let attempts: Vec<_> = (0..50)
            .map(|_| {
                actor.send(Decide::new(|balance: &Balance| {
                    if balance.0 >= 10 {
                        Ok(vec![Money::Withdraw(10)])
                    } else {
                        Err("insufficient funds")
                    }
                }))
            })
            .collect();
        let mut granted = 0;
        for attempt in attempts {
            match attempt.await.unwrap() {
                Ok(emitted) => granted += emitted.len(),
                Err(DecideError::Rejected(reason)) => assert_eq!(reason, "insufficient funds"),
                Err(other) => panic!("unexpected {other}"),
            }
        }
        assert_eq!(granted, 10);
        assert_eq!(actor.send(GetView::new()).await.unwrap().unwrap().view.0, 0);
    });
}

/// A subscriber that has seen the first 10 events gets the other 30 (catch-up, then live),
/// each exactly once and in seq order, through a channel of capacity 2.
#[test]
fn subscribe_catches_up_then_follows_live_through_a_tiny_channel() {
    run_site(|| async {
        let storage = temporary();
        let own = gundb::Lane::new(storage.site_id(), StreamId::from_u128(5));
        let actor = StreamActor::<TrailStream>::open(storage, own.stream).unwrap().start();
        for n in 0..20 {
            actor.send(Emit::new(n)).await.unwrap().unwrap();
        }
        let seen: gundb::VectorClock = [(own, Seq(10))].into_iter().collect();
        let (sender, mut receiver) = tokio::sync::mpsc::channel(2);
        actor.send(gundb::Subscribe { seen, sender }).await.unwrap().unwrap();
        let live: Vec<_> = (20..40).map(|n| actor.send(Emit::new(n))).collect();
        let mut received = Vec::new();
        while received.len() < 30 {
            received.push(receiver.recv().await.unwrap());
        }
        for reply in live {
            reply.await.unwrap().unwrap();
        }
        let seqs: Vec<u64> = received.iter().map(|e| e.seq.0).collect();
        assert_eq!(seqs, (11..=40).collect::<Vec<_>>());
        let ids: HashSet<_> = received.iter().map(|e| e.id).collect();
        assert_eq!(ids.len(), 30, "each event once");
        assert_eq!(common::fold(&received), Trail((10..40).collect()));
    });
}

/// A stream is of one type for ever once it holds an event: opening it as another type
/// is refused.
#[test]
fn a_stream_cannot_be_reopened_as_another_type() {
    let storage = temporary();
    let stream = StreamId::random();
    let writer = Arc::clone(&storage);
    run_site(move || async move {
        let actor = StreamActor::<TrailStream>::open(writer, stream).unwrap().start();
        actor.send(Emit::new(1)).await.unwrap().unwrap();
    });
    let error = StreamActor::<Account>::open(storage, stream).err().unwrap();
    assert!(matches!(error, StreamError::Storage(StorageError::TypeMismatch { .. })), "{error}");
}

/// One writer per lane means one actor per stream per site: a second actor for an open
/// stream is refused, and the stream opens again once the first is gone.
#[test]
fn a_stream_has_one_actor_at_a_time() {
    let storage = temporary();
    let stream = StreamId::random();
    let first = StreamActor::<TrailStream>::open(Arc::clone(&storage), stream).unwrap();
    let error = StreamActor::<TrailStream>::open(Arc::clone(&storage), stream).err().unwrap();
    assert!(matches!(error, StreamError::Storage(StorageError::StreamInUse { .. })), "{error}");
    drop(first);
    assert!(StreamActor::<TrailStream>::open(storage, stream).is_ok());
}

/// `History` pages: a page of `limit` events says there may be more, the last one does
/// not, and a limit of 0 still makes progress.
#[test]
fn history_pages_through_the_log() {
    run_site(|| async {
        let actor = StreamActor::<TrailStream>::open(temporary(), StreamId::random()).unwrap().start();
        for n in 0..5 {
            actor.send(Emit::new(n)).await.unwrap().unwrap();
        }
        let (mut after, mut seen, mut pages) = (None, Vec::new(), 0);
        loop {
            let page = actor.send(History { after, limit: 2 }).await.unwrap().unwrap();
            pages += 1;
            after = page.next_after(after);
            seen.extend(page.events.iter().map(|e| e.seq.0));
            if !page.more {
                break;
            }
        }
        assert_eq!(seen, [1, 2, 3, 4, 5]);
        assert_eq!(pages, 3);
        assert_eq!(actor.send(History::default()).await.unwrap().unwrap().events.len(), 1);
    });
}

/// A stream that 5,000 sites wrote in turn, each after seeing the write before: its
/// frontier names more lanes than one event's clock may, yet a local write names only its
/// own lane and the stream's one head, on the open actor and again after the stream is
/// reopened from sled (where a full vector clock made it unwritable for ever).
#[test]
fn a_stream_that_thousands_of_sites_wrote_stays_writable_after_a_reopen() {
    let storage = temporary();
    let stream = StreamId::random();
    let lane = move |site: u64| remote_lane(u128::from(site), stream);
    let writers = 5_000u64;
    let events = (1..=writers)
        .map(|site| {
            let mut event = remote_event(lane(site), 1, site, site);
            if site > 1 {
                event.clock.set(lane(site - 1), Seq(1));
                event.id = event.content_id();
            }
            event
        })
        .collect();
    let own = Lane::new(storage.site_id(), stream);
    let writer = Arc::clone(&storage);
    run_site(move || async move {
        let actor = StreamActor::<TrailStream>::open(writer, stream).unwrap().start();
        let outcomes = actor.send(DeliverBatch(events)).await.unwrap();
        assert!(outcomes.iter().all(|outcome| matches!(outcome, Ok(Delivered::Applied))));
        let view = actor.send(GetView::new()).await.unwrap().unwrap();
        assert!(view.frontier.len() > gundb::limits::CLOCK_LANES_MAX, "a full clock could not be written");
        assert_eq!(view.heads, [(lane(writers), Seq(1))].into_iter().collect::<VectorClock>());
        let emitted = actor.send(Emit::new(0)).await.unwrap().unwrap();
        assert_eq!(emitted.clock, [(own, Seq(1)), (lane(writers), Seq(1))].into_iter().collect::<VectorClock>());
    });
    run_site(move || async move {
        let actor = StreamActor::<TrailStream>::open(storage, stream).unwrap().start();
        let emitted = actor.send(Emit::new(1)).await.unwrap().unwrap();
        // The write before is the one head: naming its own lane names everything.
        assert_eq!(emitted.clock, [(own, Seq(2))].into_iter().collect::<VectorClock>());
        let view = actor.send(GetView::new()).await.unwrap().unwrap();
        assert_eq!(view.view.0.len(), 5_002);
    });
}
