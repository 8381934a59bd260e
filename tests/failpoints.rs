//! Storage faults, injected with the `failpoints` feature: a write is acknowledged only
//! when its flush succeeded; after a failure the stream actor refuses everything (what it
//! holds may be ahead of the disk) and reopening recovers what was acknowledged, with the
//! lane continuing with no gap and no reuse.
#![cfg(feature = "failpoints")]
#![allow(clippy::unwrap_used)]

mod common;

use actix::Actor;
use common::{run_site, TrailStream};
use gundb::storage::{Failpoints, SledStorage, Storage, StorageError};
use gundb::{Emit, GetView, StreamActor, StreamError, StreamId};
use std::sync::atomic::Ordering;
use std::sync::Arc;

/// Emits 1, injects `fault`, emits 2 and 3: neither may be acknowledged, and the actor
/// then refuses to show its view. Reopens the folder and returns the recovered view and
/// the seq the next write gets.
fn fail_then_reopen(fault: fn(&Failpoints), expected: StorageError) -> (Vec<u64>, u64) {
    let dir = tempfile::tempdir().unwrap();
    let stream = StreamId::random();
    let path = dir.path().to_path_buf();
    run_site(move || async move {
        let storage = Arc::new(SledStorage::open(&path).unwrap());
        let actor = StreamActor::<TrailStream>::open(storage.clone(), stream).unwrap().start();
        actor.send(Emit::new(1)).await.unwrap().unwrap();
        fault(storage.failpoints());
        let failed = actor.send(Emit::new(2));
        let after = actor.send(Emit::new(3));
        let refusal = StreamError::Storage(expected);
        assert_eq!(failed.await.unwrap().unwrap_err(), refusal);
        // The write after it shares its fate: the writer applies nothing after a failure.
        assert_eq!(after.await.unwrap().unwrap_err(), refusal);
        assert_eq!(actor.send(GetView::new()).await.unwrap().unwrap_err(), refusal, "refuses until reopened");
    });
    let path = dir.path().to_path_buf();
    run_site(move || async move {
        let storage: Arc<dyn Storage> = Arc::new(SledStorage::open(&path).unwrap());
        let actor = StreamActor::<TrailStream>::open(storage, stream).unwrap().start();
        let view = actor.send(GetView::new()).await.unwrap().unwrap().view.0;
        (view, actor.send(Emit::new(4)).await.unwrap().unwrap().seq.0)
    })
}

#[test]
fn a_failed_append_is_never_acknowledged_and_the_lane_has_no_gap() {
    let (view, next) = fail_then_reopen(|f| f.append.store(1, Ordering::SeqCst), StorageError::Injected("append"));
    assert_eq!(view, vec![1], "only the acknowledged write");
    assert_eq!(next, 2);
}

#[test]
fn a_failed_flush_is_never_acknowledged_and_reopening_continues_the_lane() {
    let (view, next) = fail_then_reopen(|f| f.flush.store(1, Ordering::SeqCst), StorageError::Injected("flush"));
    // Unacknowledged writes may or may not have reached the disk; the acknowledged one did.
    assert_eq!(view[0], 1, "the acknowledged write survived");
    assert_eq!(next, u64::try_from(view.len()).unwrap() + 1, "no gap and no reuse");
}
