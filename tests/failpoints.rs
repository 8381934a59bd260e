//! Storage faults, injected with the `failpoints` feature: a write is acknowledged only
//! when its flush succeeded; after a failure the stream actor refuses everything (what it
//! holds may be ahead of the disk) and reopening recovers exactly what was acknowledged.
#![cfg(feature = "failpoints")]
#![allow(clippy::unwrap_used)]

mod common;

use actix::Actor;
use common::{run_site, TrailStream};
use gundb::storage::{SledStorage, Storage, StorageError};
use gundb::{Emit, GetView, StreamActor, StreamError, StreamId};
use std::sync::atomic::Ordering;
use std::sync::Arc;

/// A write that fails to apply is not acknowledged, the storage fails stop, and a
/// restart recovers exactly the acknowledged writes; the lane continues with no gap.
#[test]
fn a_failed_append_is_never_acknowledged_and_the_lane_has_no_gap() {
    let dir = tempfile::tempdir().unwrap();
    let stream = StreamId::random();
    let path = dir.path().to_path_buf();
    run_site(move || async move {
        let storage = Arc::new(SledStorage::open(&path).unwrap());
        let actor = StreamActor::<TrailStream>::open(storage.clone(), stream).unwrap().start();
        actor.send(Emit::new(1)).await.unwrap().unwrap();
        storage.failpoints().append.store(1, Ordering::SeqCst);
        let failed = actor.send(Emit::new(2));
        let after = actor.send(Emit::new(3));
        assert_eq!(failed.await.unwrap().unwrap_err(), StreamError::Storage(StorageError::Injected("append")));
        // The write after it shares its fate: applying it would leave a gap at seq 2.
        assert_eq!(after.await.unwrap().unwrap_err(), StreamError::Storage(StorageError::Injected("append")));
    });
    let path = dir.path().to_path_buf();
    let (view, next) = run_site(move || async move {
        let storage: Arc<dyn Storage> = Arc::new(SledStorage::open(&path).unwrap());
        let actor = StreamActor::<TrailStream>::open(storage, stream).unwrap().start();
        let view = actor.send(GetView::new()).await.unwrap().unwrap().view.0;
        (view, actor.send(Emit::new(4)).await.unwrap().unwrap().seq.0)
    });
    assert_eq!(view, vec![1]);
    assert_eq!(next, 2);
}

#[test]
fn a_failed_flush_is_never_acknowledged_and_stops_the_actor() {
    let dir = tempfile::tempdir().unwrap();
    let stream = StreamId::random();
    let path = dir.path().to_path_buf();
    run_site(move || async move {
        let storage = Arc::new(SledStorage::open(&path).unwrap());
        let actor = StreamActor::<TrailStream>::open(storage.clone(), stream).unwrap().start();
        actor.send(Emit::new(1)).await.unwrap().unwrap();
        storage.failpoints().flush.store(1, Ordering::SeqCst);
        let error = actor.send(Emit::new(2)).await.unwrap().unwrap_err();
        assert_eq!(error, StreamError::Storage(StorageError::Injected("flush")));
        let refused = actor.send(GetView::new()).await.unwrap().unwrap_err();
        assert_eq!(refused, StreamError::Storage(StorageError::Injected("flush")), "refuses until reopened");
    });
    // Restarting recovers what was durable; the unacknowledged write may or may not be there.
    let path = dir.path().to_path_buf();
    let view = run_site(move || async move {
        let storage: Arc<dyn Storage> = Arc::new(SledStorage::open(&path).unwrap());
        let actor = StreamActor::<TrailStream>::open(storage, stream).unwrap().start();
        actor.send(GetView::new()).await.unwrap().unwrap().view.0
    });
    assert_eq!(view[0], 1, "the acknowledged write survived");
}
