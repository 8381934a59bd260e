//! Sites: events from other sites arrive at the router in any order, with copies, and are
//! delivered to their streams once their dependencies are; events of a type the site has
//! not registered are stored and counted in the frontier all the same; and three sites
//! that write concurrently and swap their events end with equal views.
#![allow(clippy::unwrap_used)]

mod common;

use common::{fold, run_site, stored_attestations, Trail, TrailStream};
use gundb::testkit::{attest, history, HistoryShape, Rng};
use gundb::{codec, sort_events, Attestation, Emit, Event, GetView, Site, StreamId, VectorClock};
use std::collections::BTreeMap;
use std::ops::Bound;

/// A history over several streams (with cross-stream dependencies), as `TrailStream`
/// events numbered in write order, with their sites' attestations.
fn multi_stream_history(seed: u64, events: usize) -> (Vec<Event>, Vec<Attestation>) {
    let mut rng = Rng::new(seed);
    let mut all: Vec<Event> = history(HistoryShape { sites: 3, streams: 3, events, sync_percent: 30 }, &mut rng)
        .into_iter()
        .enumerate()
        .map(|(n, mut e)| {
            e.stream_type = "test.trail".into();
            e.payload = codec::encode(&(n as u64)).unwrap();
            e.id = e.content_id();
            e
        })
        .collect();
    let attestations = attest(&mut all);
    (all, attestations)
}

/// Every stored event of every stream of a site, read straight from its storage: what a
/// source node will send.
fn stored_events(site: &Site) -> Vec<Event> {
    let storage = site.storage();
    let mut all = Vec::new();
    for (stream, _) in storage.streams_page(None, usize::MAX).unwrap() {
        all.extend(storage.events_from(stream, Bound::Unbounded, None, usize::MAX).unwrap());
    }
    all
}

async fn views(site: &Site, streams: &[StreamId]) -> BTreeMap<StreamId, Trail> {
    let mut out = BTreeMap::new();
    for &stream in streams {
        let actor = site.stream::<TrailStream>(stream).await.unwrap();
        out.insert(stream, actor.send(GetView::new()).await.unwrap().unwrap().view);
    }
    out
}

/// Waits until everything in `target` is durable at the site; a guard turns a hang into
/// a failure.
async fn until_covers(site: &Site, target: &VectorClock) {
    let wait = site.wait_for(target);
    tokio::time::timeout(std::time::Duration::from_secs(20), wait).await.expect("the site never caught up").unwrap();
    assert!(site.frontier().await.unwrap().dominates(target));
}

/// Any arrival order with copies ends with every stream's view equal to folding its
/// events in canonical order.
#[test]
fn a_site_delivers_any_arrival_order_causally() {
    for seed in 0..10u64 {
        run_site(move || async move {
            let (all, attestations) = multi_stream_history(seed, 150);
            let site = Site::temporary().unwrap();
            site.register::<TrailStream>().await.unwrap();
            let mut rng = Rng::new(seed);
            let mut arrivals = all.clone();
            arrivals.extend(all.iter().filter(|_| rng.chance(25)).cloned());
            for i in (1..arrivals.len()).rev() {
                arrivals.swap(i, rng.index(i + 1));
            }
            for chunk in arrivals.chunks(7) {
                site.receive(chunk.to_vec(), attestations.clone()).await.unwrap();
            }
            let target: VectorClock = all.iter().map(|e| (e.lane, e.seq)).collect();
            until_covers(&site, &target).await;
            let mut by_stream: BTreeMap<StreamId, Vec<Event>> = BTreeMap::new();
            for event in &all {
                by_stream.entry(event.lane.stream).or_default().push(event.clone());
            }
            let streams: Vec<StreamId> = by_stream.keys().copied().collect();
            let got = views(&site, &streams).await;
            for (stream, events) in by_stream {
                assert_eq!(got[&stream], fold(&sort_events(events).unwrap()), "seed {seed}");
            }
            let metrics = site.metrics().await.unwrap();
            assert_eq!(metrics.delivered, all.len() as u64, "seed {seed}: {metrics:?}");
            assert_eq!(metrics.pending, 0);
        });
    }
}

/// A site that does not know a stream type still stores its events and counts them in
/// its frontier, so it can pass them on; once registered, the type is folded.
#[test]
fn unregistered_types_are_stored_and_folded_once_registered() {
    run_site(|| async {
        let (all, attestations) = multi_stream_history(3, 60);
        let relay = Site::temporary().unwrap();
        relay.receive(all.clone(), attestations).await.unwrap();
        let target: VectorClock = all.iter().map(|e| (e.lane, e.seq)).collect();
        until_covers(&relay, &target).await;
        assert_eq!(stored_events(&relay).len(), all.len());

        // A third site learns everything from the relay alone.
        let reader = Site::temporary().unwrap();
        reader.register::<TrailStream>().await.unwrap();
        let relayed = stored_events(&relay);
        reader.receive(relayed.clone(), stored_attestations(&relay, &relayed)).await.unwrap();
        until_covers(&reader, &target).await;
        let stream = all[0].lane.stream;
        let events: Vec<Event> = all.iter().filter(|e| e.lane.stream == stream).cloned().collect();
        assert_eq!(views(&reader, &[stream]).await[&stream], fold(&sort_events(events).unwrap()));
    });
}

/// Three sites write to the same streams while cut off from each other, then swap
/// everything they hold (in shuffled order): every view is equal everywhere.
#[test]
fn three_sites_converge_after_swapping_their_events() {
    run_site(|| async {
        let sites: Vec<Site> = (0..3).map(|_| Site::temporary().unwrap()).collect();
        let streams = [StreamId::from_u128(1), StreamId::from_u128(2)];
        for (n, site) in sites.iter().enumerate() {
            for &stream in &streams {
                let actor = site.stream::<TrailStream>(stream).await.unwrap();
                for k in 0..20u64 {
                    actor.send(Emit::new(n as u64 * 100 + k)).await.unwrap().unwrap();
                }
            }
        }
        let mut rng = Rng::new(9);
        let mut everything: Vec<Event> = sites.iter().flat_map(stored_events).collect();
        let attestations: Vec<Attestation> =
            sites.iter().flat_map(|site| stored_attestations(site, &stored_events(site))).collect();
        for i in (1..everything.len()).rev() {
            everything.swap(i, rng.index(i + 1));
        }
        for site in &sites {
            site.receive(everything.clone(), attestations.clone()).await.unwrap();
        }
        let target: VectorClock = everything.iter().map(|e| (e.lane, e.seq)).collect();
        for site in &sites {
            until_covers(site, &target).await;
        }
        let first = views(&sites[0], &streams).await;
        assert_eq!(first[&streams[0]].0.len(), 60);
        for site in &sites[1..] {
            assert_eq!(views(site, &streams).await, first);
        }
    });
}

/// Two different events claiming one (lane, seq): the first is kept, the second refused,
/// counted and reported with both events and their attestations, a proof anyone can check.
#[test]
fn equivocations_are_refused_and_reported_with_both_events() {
    run_site(|| async {
        let site = Site::temporary().unwrap();
        site.register::<TrailStream>().await.unwrap();
        let (all, attestations) = multi_stream_history(5, 3);
        let first = all[0].clone();
        let mut forged = first.clone();
        forged.payload = codec::encode(&999u64).unwrap();
        site.receive(vec![first.clone()], attestations).await.unwrap();
        let target: VectorClock = [(first.lane, first.seq)].into_iter().collect();
        until_covers(&site, &target).await;
        // With the first event's id, it is an altered copy: refused and counted as such.
        site.receive(vec![forged.clone()], Vec::new()).await.unwrap();
        assert_eq!(site.metrics().await.unwrap().altered, 1);
        assert!(site.equivocations().await.unwrap().is_empty());
        // With the id of its content and signed by the lane's site (one that equivocates),
        // another event at the same (lane, seq).
        forged.id = forged.content_id();
        let signed = attest(std::slice::from_mut(&mut forged));
        site.receive(vec![forged.clone()], signed.clone()).await.unwrap();
        let reports = site.equivocations().await.unwrap();
        assert_eq!(reports.len(), 1);
        let proof = &reports[0];
        assert_eq!((&proof.kept.event, &proof.rejected.event), (&first, &forged), "both events");
        assert_eq!(proof.rejected.attestation, signed[0]);
        assert!(proof.kept.attestation.covers(first.id));
        assert_eq!(proof.verify(), Ok(()), "anyone can check the proof");
        let mut tampered = proof.clone();
        tampered.rejected.event.payload = first.payload.clone();
        assert!(tampered.verify().is_err(), "an altered proof does not verify");
        assert_eq!(site.metrics().await.unwrap().equivocations, 1);
        let view = views(&site, &[first.lane.stream]).await;
        assert_eq!(view[&first.lane.stream], fold(&[first]), "the forged event was never applied");
    });
}

/// Two events of one (lane, seq) in one batch: the first is on its way to its stream when
/// the second comes, so the stream judges it; the proof still has both events.
#[test]
fn an_equivocation_judged_by_the_stream_is_reported_with_both_events() {
    run_site(|| async {
        let site = Site::temporary().unwrap();
        site.register::<TrailStream>().await.unwrap();
        let lane = gundb::Lane::new(gundb::testkit::site(2), StreamId::from_u128(32));
        let event = |n: u64| {
            let clock = [(lane, gundb::Seq(1))].into_iter().collect();
            Event::new(lane, gundb::Seq(1), clock, 1, n, "test.trail".into(), codec::encode(&n).unwrap())
        };
        let (mut first, mut other) = ([event(1)], [event(2)]);
        let mut signed = attest(&mut first);
        signed.extend(attest(&mut other));
        site.receive(vec![first[0].clone(), other[0].clone()], signed).await.unwrap();
        let target: VectorClock = [(lane, gundb::Seq(1))].into_iter().collect();
        until_covers(&site, &target).await;
        let proofs = site.equivocations().await.unwrap();
        assert_eq!(proofs.len(), 1, "{:?}", site.metrics().await.unwrap());
        assert_eq!((&proofs[0].kept.event, &proofs[0].rejected.event), (&first[0], &other[0]));
        assert_eq!(proofs[0].verify(), Ok(()));
    });
}

/// An event claiming the receiving site's own lane, through `Site::receive` (the door of
/// every replicated event), is refused and counted before it is buffered: the site's own
/// writes go on at the next seq, and waiting for its own lane still waits.
#[test]
fn an_event_claiming_this_sites_own_lane_is_refused() {
    run_site(|| async {
        let site = Site::temporary().unwrap();
        let stream = StreamId::from_u128(31);
        let own = gundb::Lane::new(site.id(), stream);
        let handle = site.stream::<TrailStream>(stream).await.unwrap();
        handle.send(Emit::new(1)).await.unwrap().unwrap();
        site.receive(vec![common::remote_event(own, 2, 2, 666)], Vec::new()).await.unwrap();
        let metrics = site.metrics().await.unwrap();
        assert_eq!((metrics.malformed, metrics.own_lane_claims), (1, 1));
        let next = handle.send(Emit::new(2)).await.unwrap().unwrap();
        assert_eq!(next.seq.0, 2, "the forged seq 2 was never taken");
        assert_eq!(handle.send(GetView::new()).await.unwrap().unwrap().view.0, vec![1, 2]);
    });
}

/// A view that panics on the number 13, as a buggy application view would.
#[derive(Clone, Default, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
struct Fragile(Vec<u64>);

impl gundb::View<u64> for Fragile {
    fn apply_event(&mut self, event: &u64, _: &gundb::EventMeta<'_>) {
        assert_ne!(*event, 13, "unlucky");
        self.0.push(*event);
    }
}

struct FragileStream;

impl gundb::Stream for FragileStream {
    const TYPE_NAME: &'static str = "test.fragile";
    type Event = u64;
    type View = Fragile;
}

/// A panicking `apply_event` fails its write with a typed error, caught at the fold: the
/// stream rebuilds its view from storage, the site's other streams and its router go on,
/// the event it could not fold is not stored, and reopening the folder does not crash: the
/// stream opens with the view it had and writes on, its seq not taken by the refused event.
#[test]
fn a_panicking_view_stops_its_stream_only_and_reopening_does_not_crash() {
    let dir = tempfile::tempdir().unwrap();
    let (fragile, sturdy) = (StreamId::from_u128(51), StreamId::from_u128(52));
    let path = dir.path().to_path_buf();
    run_site(move || async move {
        let site = Site::open(&path).unwrap();
        let stream = site.stream::<FragileStream>(fragile).await.unwrap();
        stream.send(Emit::new(1)).await.unwrap().unwrap();
        let panicked = stream.send(Emit::new(13)).await.unwrap().unwrap_err();
        assert!(
            matches!(&panicked, gundb::StreamError::ApplyPanicked { message, .. } if message.contains("unlucky")),
            "{panicked:?}"
        );
        // Its view may be half-changed: the stream rebuilds itself from storage and serves on.
        assert_eq!(stream.send(GetView::new()).await.unwrap().unwrap().view, Fragile(vec![1]));
        let other = site.stream::<TrailStream>(sturdy).await.unwrap();
        other.send(Emit::new(7)).await.unwrap().unwrap();
        assert_eq!(other.send(GetView::new()).await.unwrap().unwrap().view, Trail(vec![7]));
        assert_eq!(site.metrics().await.unwrap().emitted, 2, "the router goes on counting, without 13");
    });
    let path = dir.path().to_path_buf();
    run_site(move || async move {
        let site = Site::open(&path).unwrap();
        let stream = site.stream::<FragileStream>(fragile).await.expect("nothing unfoldable was stored");
        assert_eq!(stream.send(GetView::new()).await.unwrap().unwrap().view, Fragile(vec![1]));
        assert_eq!(stream.send(Emit::new(2)).await.unwrap().unwrap().seq.0, 2, "13 took no seq");
        let other = site.stream::<TrailStream>(sturdy).await.unwrap();
        assert_eq!(other.send(GetView::new()).await.unwrap().unwrap().view, Trail(vec![7]));
    });
}

/// The first write to a stream the site holds no event of starts no actor: the router
/// stores it, stamped as the actor would stamp it (seq 1, a Lamport counter one above
/// what it depends on, its dependencies in its clock), and answers once it is durable and
/// in the frontier. Later writes go to the stream's actor, which loads the first from
/// storage; two handles racing to write first both land, one after the other; a first
/// write whose fold panics stores nothing; and a handle of another type than the one
/// stored is refused.
#[test]
fn the_first_write_to_a_new_stream_starts_no_actor() {
    run_site(|| async {
        let site = Site::temporary().unwrap();
        let id = |n: u64| StreamId::from_u128(u128::from(n) + 100);
        let mut firsts = Vec::new();
        for n in 0..50 {
            let emitted = site.stream::<TrailStream>(id(n)).await.unwrap().send(Emit::new(n)).await;
            let emitted = emitted.unwrap().unwrap();
            assert_eq!((emitted.seq.0, emitted.lamport), (1, 1), "stream {n}");
            firsts.push(emitted);
        }
        let metrics = site.metrics().await.unwrap();
        assert_eq!((metrics.emitted, metrics.streams_live_max), (50, 0), "{metrics:?}");
        let target: VectorClock = firsts.iter().flat_map(|e| e.clock.iter()).collect();
        until_covers(&site, &target).await;

        // Depending on another stream's event: named in its clock, counted above it.
        let later = site.stream::<TrailStream>(id(0)).await.unwrap();
        let second = later.send(Emit::new(1000)).await.unwrap().unwrap();
        assert_eq!((second.seq.0, second.lamport), (2, 2), "the actor took the first from storage");
        let dependent = site.stream::<TrailStream>(id(60)).await.unwrap();
        let emitted = dependent.send(Emit::new(7).depending_on(&second.dependencies())).await.unwrap().unwrap();
        assert_eq!((emitted.seq.0, emitted.lamport), (1, 3));
        assert!(emitted.clock.covers(second.clock.iter().next().unwrap().0, second.seq), "{emitted:?}");
        assert_eq!(
            views(&site, &[id(0), id(60)]).await,
            BTreeMap::from([(id(0), Trail(vec![0, 1000])), (id(60), Trail(vec![7]))])
        );

        // Two handles on one new stream write at once: both land, at seqs 1 and 2.
        let (a, b) =
            (site.stream::<TrailStream>(id(70)).await.unwrap(), site.stream::<TrailStream>(id(70)).await.unwrap());
        let (first, second) = futures::join!(a.send(Emit::new(1)), b.send(Emit::new(2)));
        let mut seqs = [first.unwrap().unwrap().seq.0, second.unwrap().unwrap().seq.0];
        seqs.sort_unstable();
        assert_eq!(seqs, [1, 2]);
        let mut both = views(&site, &[id(70)]).await[&id(70)].0.clone();
        both.sort_unstable();
        assert_eq!(both, vec![1, 2]);

        // A fold that panics stores nothing and takes no seq.
        let fragile = site.stream::<FragileStream>(id(80)).await.unwrap();
        let panicked = fragile.send(Emit::new(13)).await.unwrap().unwrap_err();
        assert!(matches!(panicked, gundb::StreamError::ApplyPanicked { .. }), "{panicked:?}");
        assert_eq!(site.storage().stream_type(id(80)).unwrap(), None);
        assert_eq!(fragile.send(Emit::new(1)).await.unwrap().unwrap().seq.0, 1);

        let refused = site.stream::<FragileStream>(id(0)).await.unwrap_err();
        assert!(
            matches!(refused, gundb::SiteError::Router(gundb::router::RouterError::TypeMismatch { .. })),
            "{refused}"
        );
    });
}

/// `Site::close` writes what was queued and releases the database: the folder opens again
/// at once in the same process, with every acknowledged write, while the old handles still
/// exist; they then fail with `Closed`.
#[test]
fn a_closed_site_releases_its_database_and_reopens_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_path_buf();
    run_site(move || async move {
        let stream = StreamId::from_u128(61);
        let site = Site::open(&path).unwrap();
        let old = site.stream::<TrailStream>(stream).await.unwrap();
        for n in 0..3 {
            old.send(Emit::new(n)).await.unwrap().unwrap();
        }
        site.close().await;
        let again = Site::open(&path).expect("the lock was released");
        let reopened = again.stream::<TrailStream>(stream).await.unwrap();
        assert_eq!(reopened.send(GetView::new()).await.unwrap().unwrap().view, Trail(vec![0, 1, 2]));
        let refused = old.send(Emit::new(9)).await.unwrap().unwrap_err();
        assert_eq!(refused, gundb::StreamError::Storage(gundb::storage::StorageError::Closed), "{refused}");
        reopened.send(Emit::new(3)).await.unwrap().unwrap();
    });
}

/// Dropping the last handle to a site closes it like `Site::close`: the folder opens again
/// at once, with every acknowledged write, although a handle to one of its streams remains
/// (which then fails with `Closed`).
#[test]
fn a_dropped_site_releases_its_database_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_path_buf();
    run_site(move || async move {
        let stream = StreamId::from_u128(62);
        let site = Site::open(&path).unwrap();
        let old = site.stream::<TrailStream>(stream).await.unwrap();
        for n in 0..3 {
            old.send(Emit::new(n)).await.unwrap().unwrap();
        }
        let copy = site.clone();
        drop(site);
        assert!(Site::open(&path).is_err(), "a clone still holds the site open");
        drop(copy);
        let again = Site::open(&path).expect("the last handle's drop released the lock");
        let reopened = again.stream::<TrailStream>(stream).await.unwrap();
        assert_eq!(reopened.send(GetView::new()).await.unwrap().unwrap().view, Trail(vec![0, 1, 2]));
        let refused = old.send(Emit::new(9)).await.unwrap().unwrap_err();
        assert_eq!(refused, gundb::StreamError::Storage(gundb::storage::StorageError::Closed), "{refused}");
    });
}

/// One event of a delivered batch whose fold panics is refused as such; the others of the
/// batch were not stored either, and are refused as interrupted (to be sent again), not
/// blamed: delivered again, they are taken.
#[test]
fn a_panicking_event_in_a_batch_blames_only_itself() {
    run_site(|| async {
        use actix::Actor;
        let storage = std::sync::Arc::new(gundb::storage::SledStorage::temporary().unwrap());
        let stream = StreamId::from_u128(53);
        let actor = gundb::StreamActor::<FragileStream>::open(storage, stream).unwrap().start();
        let with_type = |mut event: Event| {
            event.stream_type = "test.fragile".into();
            event.id = event.content_id();
            event
        };
        let (good, bad) = (common::remote_lane(2, stream), common::remote_lane(3, stream));
        let innocent = with_type(common::remote_event(good, 1, 1, 5));
        let culprit = with_type(common::remote_event(bad, 1, 1, 13));
        let outcomes = actor.send(gundb::DeliverBatch(vec![innocent.clone(), culprit.clone()])).await.unwrap();
        assert_eq!(outcomes[0], Err(gundb::StreamError::Interrupted { culprit: culprit.id }), "{outcomes:?}");
        assert!(matches!(&outcomes[1], Err(gundb::StreamError::ApplyPanicked { event, .. }) if *event == culprit.id));
        let again = actor.send(gundb::Deliver(innocent)).await.unwrap();
        assert_eq!(again, Ok(gundb::Delivered::Applied));
        assert_eq!(actor.send(GetView::new()).await.unwrap().unwrap().view, Fragile(vec![5]));
    });
}
