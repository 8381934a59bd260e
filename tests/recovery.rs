//! Recovery: a site writes and receives events (some concurrent, some arriving late and
//! forcing a rollback), stops, and reopens its sled folder. Proves that view, frontier and
//! history survive exactly, and that the lane's seq continues with no gap and no reuse.
#![allow(clippy::unwrap_used)]

mod common;

use actix::Actor;
use common::{remote_event, remote_lane, run_site, Trail, TrailStream};
use gundb::storage::{SledStorage, Storage};
use gundb::{
    Deliver, Delivered, Emit, Event, EventMeta, GetView, History, Seq, Stream, StreamActor, StreamConfig, StreamId,
    VectorClock, View,
};
use serde::{Deserialize, Serialize};
use std::sync::Arc;

type Snapshot = (Trail, VectorClock, Vec<Event>, Seq);

fn config() -> StreamConfig {
    // Snapshot often, so recovery resumes from a snapshot and replays a tail.
    StreamConfig { snapshot_every: 3, ..StreamConfig::default() }
}

async fn read_back(actor: &actix::Addr<StreamActor<TrailStream>>, own: gundb::Lane) -> Snapshot {
    let view = actor.send(GetView::new()).await.unwrap().unwrap();
    let history = actor.send(History { after: None, limit: 1_000 }).await.unwrap().unwrap();
    let own_seq = view.frontier.get(own);
    (view.view, view.frontier, history.events, own_seq)
}

#[test]
fn a_reopened_site_has_the_same_view_frontier_and_history_and_continues_its_lane() {
    let dir = tempfile::tempdir().unwrap();
    let stream = StreamId::from_u128(42);
    let path = dir.path().to_path_buf();

    let before: Snapshot = run_site(move || async move {
        let storage: Arc<dyn Storage> = Arc::new(SledStorage::open(&path).unwrap());
        let own = gundb::Lane::new(storage.site_id(), stream);
        let actor = StreamActor::<TrailStream>::open_with(storage, stream, config()).unwrap().start();
        let (b, c) = (remote_lane(2, stream), remote_lane(3, stream));
        for n in 0..4 {
            actor.send(Emit::new(n)).await.unwrap().unwrap(); // lamports 1..=4
        }
        // Concurrent remote events with small Lamport counters: they sort before local
        // events already applied, so each one rolls the view back.
        for seq in 1..=3 {
            let applied = actor.send(Deliver(remote_event(b, seq, seq, 100 + seq))).await.unwrap().unwrap();
            assert_eq!(applied, Delivered::Applied);
        }
        actor.send(Deliver(remote_event(c, 1, 1, 200))).await.unwrap().unwrap();
        for n in 4..7 {
            actor.send(Emit::new(n)).await.unwrap().unwrap();
        }
        read_back(&actor, own).await
    });
    assert_eq!(before.2.len(), 11, "7 local and 4 remote events");
    assert_eq!(before.3, Seq(7));

    let path = dir.path().to_path_buf();
    let (after, next) = run_site(move || async move {
        let storage: Arc<dyn Storage> = Arc::new(SledStorage::open(&path).unwrap());
        let own = gundb::Lane::new(storage.site_id(), stream);
        let stored = storage.open_stream(stream, "test.trail").unwrap();
        assert!(!stored.snapshots.is_empty(), "the reopen resumes from a snapshot, not from nothing");
        let actor = StreamActor::<TrailStream>::open_with(storage, stream, config()).unwrap().start();
        let after = read_back(&actor, own).await;
        let next = actor.send(Emit::new(99)).await.unwrap().unwrap();
        (after, next)
    });
    assert_eq!(after.0, before.0, "view");
    assert_eq!(after.1, before.1, "frontier");
    assert_eq!(after.2, before.2, "history");
    assert_eq!(next.seq, Seq(8), "the lane continues with no gap and no reuse");
    assert_eq!(common::fold(&before.2), before.0, "the view is the fold of the history");
}

#[derive(Clone, Default, Debug, PartialEq, Serialize, Deserialize)]
struct Sum(u64);

impl View<u64> for Sum {
    fn apply_event(&mut self, n: &u64, _meta: &EventMeta<'_>) {
        self.0 += n;
    }
}

struct Adder;
impl Stream for Adder {
    const TYPE_NAME: &'static str = "test.adder";
    type Event = u64;
    type View = Sum;
    const COMMUTATIVE: bool = true;
}

/// A commutative stream folds late events on top instead of rolling back; the snapshots
/// taken before a late event no longer hold and must go, or a reopen would resume from one
/// and miss the late event.
#[test]
fn a_commutative_stream_drops_stale_snapshots_and_recovers_late_events() {
    let dir = tempfile::tempdir().unwrap();
    let stream = StreamId::from_u128(43);
    let path = dir.path().to_path_buf();
    let every = StreamConfig { snapshot_every: 2, ..StreamConfig::default() };
    let config = every.clone();
    run_site(move || async move {
        let storage: Arc<dyn Storage> = Arc::new(SledStorage::open(&path).unwrap());
        let actor = StreamActor::<Adder>::open_with(storage, stream, config).unwrap().start();
        for n in 1..=6 {
            actor.send(Emit::new(n)).await.unwrap().unwrap(); // lamports 1..=6, snapshots at 2, 4, 6
        }
        let remote = remote_lane(2, stream);
        for seq in 1..=3 {
            let mut late = remote_event(remote, seq, seq, 100);
            late.stream_type = Adder::TYPE_NAME.into();
            late.id = late.content_id();
            actor.send(Deliver(late)).await.unwrap().unwrap();
        }
        assert_eq!(actor.send(GetView::new()).await.unwrap().unwrap().view, Sum(321));
    });
    let path = dir.path().to_path_buf();
    let view = run_site(move || async move {
        let storage: Arc<dyn Storage> = Arc::new(SledStorage::open(&path).unwrap());
        let actor = StreamActor::<Adder>::open_with(storage, stream, every).unwrap().start();
        actor.send(GetView::new()).await.unwrap().unwrap().view
    });
    assert_eq!(view, Sum(321), "1 + 2 + ... + 6 + 3 × 100");
}

/// A site restarted without registering a stream's type stores that stream's events all
/// the same (relaying them): a late one, sorting before snapshots taken in the earlier run,
/// must make those snapshots go, or the stream, once registered, would resume from one and
/// never fold the late event.
#[test]
fn a_late_event_stored_before_its_type_is_registered_is_folded_once_it_is() {
    let dir = tempfile::tempdir().unwrap();
    let stream = StreamId::from_u128(44);
    let config = gundb::SiteConfig {
        stream: StreamConfig { snapshot_every: 2, ..StreamConfig::default() },
        ..Default::default()
    };
    let open = move |path: &std::path::Path| {
        gundb::Site::with_storage(Arc::new(SledStorage::open(path).unwrap()), config.clone()).unwrap()
    };
    let path = dir.path().to_path_buf();
    run_site(move || async move {
        let site = open(&path);
        let actor = site.stream::<TrailStream>(stream).await.unwrap();
        for n in 1..=6 {
            actor.send(Emit::new(n)).await.unwrap().unwrap(); // lamports 1..=6, snapshots at 2, 4, 6
        }
        site.close().await;

        let site = open(&path); // TrailStream not registered yet
        let mut late = vec![remote_event(remote_lane(2, stream), 1, 1, 100)];
        let attestations = gundb::testkit::attest(&mut late);
        let target: VectorClock = [(late[0].lane, late[0].seq)].into_iter().collect();
        site.receive(late, attestations).await.unwrap();
        site.wait_for(&target).await.unwrap();
        site.register::<TrailStream>().await.unwrap();
        let actor = site.stream::<TrailStream>(stream).await.unwrap();
        let view = actor.send(GetView::new()).await.unwrap().unwrap().view;
        assert_eq!(view, Trail(vec![100, 1, 2, 3, 4, 5, 6]), "the late event sorts first");
    });
}

/// The snapshot records of `stream` in the folder's data tree, read with sled directly.
fn snapshot_records(path: &std::path::Path, stream: StreamId) -> Vec<(sled::IVec, sled::IVec)> {
    let config = sled::Config::new().path(path).segment_size(gundb::limits::SLED_SEGMENT_BYTES);
    let db = gundb::storage::open_waiting_for_lock(&config).unwrap();
    let mut prefix = vec![b's'];
    prefix.extend_from_slice(stream.as_uuid().as_bytes());
    db.open_tree(b"gundb.streams").unwrap().scan_prefix(prefix).map(Result::unwrap).collect()
}

/// A snapshot is a cache of the log: when every stored one is damaged, the stream still
/// opens, with the view rebuilt from the log, the damaged records are deleted, and the
/// stream takes writes.
#[test]
fn snapshots_that_do_not_decode_are_dropped_and_the_view_rebuilt_from_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let stream = StreamId::from_u128(44);
    let open = move |path: std::path::PathBuf| {
        let storage: Arc<dyn Storage> = Arc::new(SledStorage::open(path).unwrap());
        StreamActor::<TrailStream>::open_with(storage, stream, config()).unwrap().start()
    };
    let path = dir.path().to_path_buf();
    run_site(move || async move {
        let actor = open(path);
        for n in 1..=7 {
            actor.send(Emit::new(n)).await.unwrap().unwrap();
        }
    });
    let damaged = snapshot_records(dir.path(), stream);
    assert!(damaged.len() >= 2, "snapshots after events 3 and 6");
    {
        let config = sled::Config::new().path(dir.path()).segment_size(gundb::limits::SLED_SEGMENT_BYTES);
        let db = gundb::storage::open_waiting_for_lock(&config).unwrap();
        let tree = db.open_tree(b"gundb.streams").unwrap();
        for (key, _) in &damaged {
            tree.insert(key, &[0xFF, 0xFF, 0xFF][..]).unwrap();
        }
        db.flush().unwrap();
    }
    let path = dir.path().to_path_buf();
    let view = run_site(move || async move {
        let actor = open(path);
        actor.send(Emit::new(8)).await.unwrap().unwrap();
        actor.send(GetView::new()).await.unwrap().unwrap().view
    });
    assert_eq!(view.0, (1..=8).collect::<Vec<u64>>(), "rebuilt from the log");
    let left = snapshot_records(dir.path(), stream);
    assert!(left.iter().all(|(_, value)| value.as_ref() != [0xFF, 0xFF, 0xFF]), "the damaged records are gone");
}
