//! Storage faults, injected with the `failpoints` feature: a write is acknowledged only
//! when its flush succeeded, a failed append changes nothing, and a failed flush stops the
//! stream actor (what it holds may be ahead of the disk) so the site restarts from disk.
#![cfg(feature = "failpoints")]
#![allow(clippy::unwrap_used)]

mod common;

use actix::Actor;
use common::{run_site, TrailStream};
use gundb::storage::{SledStorage, Storage, StorageError};
use gundb::{Emit, GetView, StreamActor, StreamError, StreamId};
use std::sync::atomic::Ordering;
use std::sync::Arc;

#[test]
fn a_failed_append_is_refused_and_changes_nothing() {
    run_site(|| async {
        let storage = Arc::new(SledStorage::temporary().unwrap());
        let actor = StreamActor::<TrailStream>::open(storage.clone(), StreamId::random()).unwrap().start();
        actor.send(Emit::new(1)).await.unwrap().unwrap();
        storage.failpoints().append.store(1, Ordering::SeqCst);
        let error = actor.send(Emit::new(2)).await.unwrap().unwrap_err();
        assert_eq!(error, StreamError::Storage(StorageError::Injected("append")));
        let next = actor.send(Emit::new(3)).await.unwrap().unwrap();
        assert_eq!(next.seq.0, 2, "the failed write used no seq");
        assert_eq!(actor.send(GetView::new()).await.unwrap().unwrap().view.0, vec![1, 3]);
    });
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
        assert!(actor.send(GetView::new()).await.is_err(), "the actor stopped");
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
