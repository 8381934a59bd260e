//! While a write is in flight (queued, not yet durable), nothing about it is acknowledged
//! or shown: not the write's own reply, not a view, not a subscription. The storage here
//! holds every write back until the test releases it, so "in flight" is a state the test
//! controls rather than a race it hopes to win.
#![allow(clippy::unwrap_used)]

mod common;

use actix::{Actor, Addr};
use common::{remote_event, remote_lane, run_site, TrailStream};
use gundb::storage::{MemoryStorage, Storage};
use gundb::{Decide, DecideError, Deliver, Emit, GetView, History, StreamActor, StreamId, Subscribe, VectorClock};
use std::future::Future;
use std::pin::pin;
use std::sync::Arc;
use std::task::{Context, Waker};
use std::time::Duration;
use tokio::sync::mpsc;

/// Polls `future` once: true when it has not resolved.
fn is_pending<F: Future>(future: F) -> bool {
    let mut future = pin!(future);
    future.as_mut().poll(&mut Context::from_waker(Waker::noop())).is_pending()
}

/// A round trip through the mailbox: every message sent before has been handled.
async fn settle(actor: &Addr<StreamActor<TrailStream>>) {
    let (sender, _receiver) = mpsc::channel(1);
    for _ in 0..2 {
        actor.send(Subscribe { seen: VectorClock::new(), sender: sender.clone() }).await.unwrap().unwrap();
    }
}

/// Guards a wait that must end; failing it fails the test instead of hanging it.
async fn within<T>(future: impl Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(10), future).await.expect("waited 10 s for something that must happen")
}

#[test]
fn a_write_is_not_acknowledged_or_shown_until_durable() {
    run_site(|| async {
        let storage = Arc::new(MemoryStorage::deferred(gundb::testkit::site_keys(1)));
        let shared: Arc<dyn Storage> = storage.clone();
        let actor = StreamActor::<TrailStream>::open(shared, StreamId::from_u128(9)).unwrap().start();
        let (sender, mut receiver) = mpsc::channel(8);
        actor.send(Subscribe { seen: VectorClock::new(), sender }).await.unwrap().unwrap();

        let mut emitted = Box::pin(actor.send(Emit::new(7)));
        assert!(is_pending(emitted.as_mut()));
        let mut view = Box::pin(actor.send(GetView::new()));
        let mut history = Box::pin(actor.send(History { after: None, limit: 10 }));
        settle(&actor).await;
        assert!(is_pending(emitted.as_mut()), "acknowledged before durable");
        assert!(is_pending(view.as_mut()), "a view showed a write in flight");
        assert!(is_pending(history.as_mut()), "history showed a write in flight");
        assert!(receiver.try_recv().is_err(), "a subscriber saw a write in flight");

        assert_eq!(storage.release(), 1);
        assert_eq!(emitted.await.unwrap().unwrap().seq.0, 1);
        assert_eq!(view.await.unwrap().unwrap().view.0, vec![7]);
        assert_eq!(history.await.unwrap().unwrap().events.len(), 1);
        assert_eq!(within(receiver.recv()).await.unwrap().seq.0, 1);
    });
}

/// A late event (sorting before one already sent) that is still in flight when someone
/// subscribes must not be skipped: the subscriber gets both, in canonical order.
#[test]
fn a_late_event_in_flight_is_not_skipped_by_a_new_subscriber() {
    run_site(|| async {
        let storage = Arc::new(MemoryStorage::deferred(gundb::testkit::site_keys(1)));
        let shared: Arc<dyn Storage> = storage.clone();
        let stream = StreamId::from_u128(9);
        let actor = StreamActor::<TrailStream>::open(shared, stream).unwrap().start();
        let mut early = remote_event(remote_lane(2, stream), 1, 1, 1);
        early.timestamp_ms = 2_000;
        early.id = early.content_id();
        let early = actor.send(Deliver(early));
        settle(&actor).await;
        storage.release();
        early.await.unwrap().unwrap();
        // Concurrent and written earlier: sorts before the event above, which is sent.
        let mut late = remote_event(remote_lane(3, stream), 1, 1, 2);
        late.timestamp_ms = 1_000;
        late.id = late.content_id();
        let late = actor.send(Deliver(late));
        let (sender, mut receiver) = mpsc::channel(8);
        actor.send(Subscribe { seen: VectorClock::new(), sender }).await.unwrap().unwrap();
        settle(&actor).await;
        assert!(receiver.try_recv().is_err(), "nothing at or after a write in flight is sent");
        storage.release();
        late.await.unwrap().unwrap();
        let first = within(receiver.recv()).await.unwrap();
        let second = within(receiver.recv()).await.unwrap();
        assert_eq!((first.timestamp_ms, second.timestamp_ms), (1_000, 2_000), "both, in canonical order");
    });
}

/// A decision rejected against a view holding a write in flight is answered only once
/// that write is durable: nobody acts on a state a crash could take back.
#[test]
fn a_rejection_waits_for_the_writes_it_saw() {
    run_site(|| async {
        let storage = Arc::new(MemoryStorage::deferred(gundb::testkit::site_keys(1)));
        let shared: Arc<dyn Storage> = storage.clone();
        let actor = StreamActor::<TrailStream>::open(shared, StreamId::from_u128(9)).unwrap().start();
        let emitted = actor.send(Emit::new(1));
        let mut rejected =
            Box::pin(actor.send(Decide::new(
                |trail: &common::Trail| if trail.0.is_empty() { Ok(vec![2]) } else { Err("taken") },
            )));
        settle(&actor).await;
        assert!(is_pending(rejected.as_mut()), "a rejection based on a write in flight was answered");
        storage.release();
        emitted.await.unwrap().unwrap();
        assert!(matches!(rejected.await.unwrap(), Err(DecideError::Rejected("taken"))));
    });
}
