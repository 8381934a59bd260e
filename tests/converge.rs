//! One stream converges under any delivery order: a history of 3 concurrent lanes is
//! delivered to fresh stream actors in many seeded causal orders. With a non-commutative
//! view every actor must end with the view of folding `sort_events(all)`. A companion test
//! switches the rollback off and shows that this check then fails, so it can fail.
#![allow(clippy::unwrap_used)]

mod common;

use actix::Actor;
use common::{fold, remote_history, run_site, shared, Trail, TrailStream};
use gundb::storage::{MemoryStorage, SledStorage, Storage};
use gundb::testkit::{causal_shuffle, Rng};
use gundb::{sort_events, Deliver, Event, GetView, History, StreamActor, StreamConfig, StreamId};
use std::sync::Arc;

const ORDERS: u64 = 60;
const EVENTS: usize = 120;

/// Delivers `order` to a fresh actor on `storage` and returns its view and history.
fn deliver_all(
    storage: Arc<dyn Storage>,
    stream: StreamId,
    order: Vec<Event>,
    config: StreamConfig,
) -> (Trail, Vec<Event>) {
    run_site(move || async move {
        let actor = StreamActor::<TrailStream>::open_with(storage, stream, config).unwrap().start();
        // Sent without waiting in between: the mailbox keeps them in order, and many
        // deliveries share a group commit.
        let replies: Vec<_> = order.into_iter().map(|e| actor.send(Deliver(e))).collect();
        for reply in replies {
            reply.await.unwrap().unwrap();
        }
        let view = actor.send(GetView::new()).await.unwrap().unwrap().view;
        let history = actor.send(History { after: None, limit: 10_000 }).await.unwrap().unwrap().events;
        (view, history)
    })
}

fn config(planted_bug: bool) -> StreamConfig {
    StreamConfig { snapshot_every: 5, planted_bug_skip_rollback: planted_bug, ..StreamConfig::default() }
}

/// Checks one seed; `Err` describes the divergence.
fn check(seed: u64, storage: Arc<dyn Storage>, planted_bug: bool) -> Result<(), String> {
    let (stream, all) = remote_history(seed, 3, EVENTS);
    let canonical = sort_events(all.clone()).unwrap();
    let expected = fold(&canonical);
    let order = causal_shuffle(&all, &mut Rng::new(seed ^ 0x5eed));
    let (view, history) = deliver_all(storage, stream, order, config(planted_bug));
    if history != canonical {
        return Err(format!("seed {seed}: history is not in canonical order"));
    }
    if view != expected {
        return Err(format!("seed {seed}: view {:?} != expected {:?}", view.0, expected.0));
    }
    Ok(())
}

#[test]
fn every_causal_delivery_order_ends_in_the_canonical_view() {
    for seed in 0..ORDERS {
        let storage = shared(MemoryStorage::new(gundb::testkit::site_keys(1_000)));
        if let Err(failure) = check(seed, storage, false) {
            panic!("{failure} (replay: this seed)");
        }
    }
}

#[test]
fn every_causal_delivery_order_ends_in_the_canonical_view_on_sled() {
    for seed in 0..5 {
        let storage = shared(SledStorage::temporary().unwrap());
        if let Err(failure) = check(seed, storage, false) {
            panic!("{failure}");
        }
    }
}

#[test]
fn without_the_rollback_the_check_fails() {
    let caught: u64 = (0..ORDERS)
        .filter(|&seed| check(seed, shared(MemoryStorage::new(gundb::testkit::site_keys(1_000))), true).is_err())
        .count()
        .try_into()
        .unwrap();
    eprintln!("planted bug caught by {caught} of {ORDERS} seeds");
    assert!(caught >= ORDERS / 2, "switching the rollback off must make most seeds diverge");
}
