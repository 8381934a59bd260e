//! Storage faults, injected with the `failpoints` feature: a write is acknowledged only
//! when its flush succeeded; after a failure the stream actor refuses everything (what it
//! holds may be ahead of the disk) and reopening recovers what was acknowledged, with the
//! lane continuing with no gap and no reuse.
#![cfg(feature = "failpoints")]
#![allow(clippy::unwrap_used)]

mod common;

use actix::Actor;
use common::{run_site, TrailStream};
use gundb::storage::{Failpoints, Fault, SledStorage, Storage, StorageError};
use gundb::{Emit, GetView, StreamActor, StreamError, StreamId};
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
        assert_eq!(storage.stats().failure, None);
        fault(storage.failpoints());
        let failed = actor.send(Emit::new(2));
        let after = actor.send(Emit::new(3));
        let refusal = StreamError::Storage(expected.clone());
        assert_eq!(failed.await.unwrap().unwrap_err(), refusal);
        // The write after it shares its fate: the writer applies nothing after a failure.
        assert_eq!(after.await.unwrap().unwrap_err(), refusal);
        assert_eq!(actor.send(GetView::new()).await.unwrap().unwrap_err(), refusal, "refuses until reopened");
        assert_eq!(storage.stats().failure, Some(expected), "the storage says why");
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
    let (view, next) = fail_then_reopen(|f| f.fail_nth(Fault::Batch, 1), StorageError::Injected("batch"));
    assert_eq!(view, vec![1], "only the acknowledged write");
    assert_eq!(next, 2);
}

#[test]
fn a_failed_flush_is_never_acknowledged_and_reopening_continues_the_lane() {
    let (view, next) = fail_then_reopen(|f| f.fail_nth(Fault::Flush, 1), StorageError::Injected("flush"));
    // Unacknowledged writes may or may not have reached the disk; the acknowledged one did.
    assert_eq!(view[0], 1, "the acknowledged write survived");
    assert_eq!(next, u64::try_from(view.len()).unwrap() + 1, "no gap and no reuse");
}

/// A write the storage refuses to queue changes nothing, in memory too: the stream folds
/// before it appends (so that an event it cannot fold is never stored), and takes back
/// what it folded when the append is refused. Here a late remote event, which rolled the
/// view back before it was refused, and a local write: both refused, then both taken.
#[test]
fn a_refused_append_is_taken_back_from_the_view_and_the_lane() {
    run_site(|| async {
        let storage = Arc::new(SledStorage::temporary().unwrap());
        let stream = StreamId::from_u128(0xB0);
        let actor = StreamActor::<TrailStream>::open(storage.clone(), stream).unwrap().start();
        for n in [1, 2] {
            actor.send(Emit::new(n)).await.unwrap().unwrap();
        }
        let refused = StreamError::Storage(StorageError::Injected("write"));
        // Counter 1 at another site: sorts before both local writes.
        let late = common::remote_event(common::remote_lane(7, stream), 1, 1, 100);
        storage.failpoints().fail_nth(Fault::Write, 1);
        assert_eq!(actor.send(gundb::Deliver(late.clone())).await.unwrap().unwrap_err(), refused);
        let view = actor.send(GetView::new()).await.unwrap().unwrap();
        assert_eq!(view.view.0, vec![1, 2], "the late event was taken back");
        assert!(view.frontier.get(late.lane).0 == 0, "and its lane: {:?}", view.frontier);
        storage.failpoints().fail_nth(Fault::Write, 1);
        assert_eq!(actor.send(Emit::new(3)).await.unwrap().unwrap_err(), refused);
        assert_eq!(actor.send(GetView::new()).await.unwrap().unwrap().view.0, vec![1, 2]);

        actor.send(gundb::Deliver(late)).await.unwrap().unwrap();
        assert_eq!(actor.send(Emit::new(4)).await.unwrap().unwrap().seq.0, 3, "3 took no seq");
        let view = actor.send(GetView::new()).await.unwrap().unwrap().view;
        let events = storage.events_from(stream, std::ops::Bound::Unbounded, None, usize::MAX).unwrap();
        assert_eq!(view, common::fold(&events));
        assert_eq!(view.0, vec![100, 1, 2, 4]);
    });
}

/// What one faulted run saw.
struct Run {
    acknowledged: Vec<u64>,
    errors: Vec<StreamError>,
}

/// The fixed workload: three writers emit 12 numbers each, and after every third write a
/// writer reads the view and a page of history. Every error is recorded.
async fn workload(storage: Arc<SledStorage>, stream: StreamId) -> Run {
    let actor = match StreamActor::<TrailStream>::open(storage, stream) {
        Ok(actor) => actor.start(),
        Err(error) => return Run { acknowledged: Vec::new(), errors: vec![error] },
    };
    let writers: Vec<_> = (0..3u64)
        .map(|writer| {
            let actor = actor.clone();
            actix::spawn(async move {
                let mut run = Run { acknowledged: Vec::new(), errors: Vec::new() };
                for i in 0..12u64 {
                    let n = writer * 100 + i;
                    match actor.send(Emit::new(n)).await.unwrap() {
                        Ok(_) => run.acknowledged.push(n),
                        Err(error) => run.errors.push(error),
                    }
                    if i % 3 == 2 {
                        if let Err(error) = actor.send(GetView::new()).await.unwrap() {
                            run.errors.push(error);
                        }
                        let page = actor.send(gundb::History { after: None, limit: 5 }).await.unwrap();
                        if let Err(error) = page {
                            run.errors.push(error);
                        }
                    }
                }
                run
            })
        })
        .collect();
    let mut all = Run { acknowledged: Vec::new(), errors: Vec::new() };
    for writer in writers {
        let mut run = writer.await.unwrap();
        all.acknowledged.append(&mut run.acknowledged);
        all.errors.append(&mut run.errors);
    }
    all
}

/// The Nth operation of each kind (write, batch, flush, fsync, read) fails, for N = 1 to
/// 50, under the same workload: each failure reaches its caller as the typed injected
/// error and nothing else goes wrong; after reopening, every acknowledged write is there,
/// the lane has no gap and the view is the fold of the log.
#[test]
fn the_nth_storage_operation_fails_and_nothing_acknowledged_is_lost() {
    for fault in Fault::ALL {
        let mut fired = 0;
        for n in 1..=50u64 {
            let context = format!("{fault:?} #{n}");
            let dir = tempfile::tempdir().unwrap();
            let stream = StreamId::from_u128(0xFA11);
            let path = dir.path().to_path_buf();
            let run = run_site(move || async move {
                let storage = Arc::new(SledStorage::open(&path).unwrap());
                storage.failpoints().fail_nth(fault, n);
                workload(storage, stream).await
            });
            let injected = StreamError::Storage(StorageError::Injected(fault.name()));
            for error in &run.errors {
                assert_eq!(error, &injected, "{context}: every error is the injected one, typed");
            }
            fired += usize::from(!run.errors.is_empty());

            let path = dir.path().to_path_buf();
            let acknowledged = run.acknowledged.clone();
            run_site(move || async move {
                let storage: Arc<dyn Storage> = Arc::new(SledStorage::open(&path).unwrap());
                let actor = StreamActor::<TrailStream>::open(Arc::clone(&storage), stream).unwrap().start();
                let view = actor.send(GetView::new()).await.unwrap().unwrap().view;
                for n in &acknowledged {
                    assert!(view.0.contains(n), "{context}: acknowledged {n} is missing after reopening");
                }
                let events = storage.events_from(stream, std::ops::Bound::Unbounded, None, usize::MAX).unwrap();
                assert_eq!(common::fold(&events), view, "{context}: the view is the fold of the log");
                let mut seqs: Vec<u64> = events.iter().map(|e| e.seq.0).collect();
                seqs.sort_unstable();
                assert_eq!(seqs, (1..=seqs.len() as u64).collect::<Vec<_>>(), "{context}: the lane has a gap");
            });
        }
        eprintln!("{fault:?}: the fault fired in {fired} of 50 runs");
        assert!(fired >= 5, "{fault:?}: the fault fired in only {fired} of 50 runs");
    }
}

/// An attestation that cannot be read or stored (here a failed read) does not make its
/// events look forged: they are dropped and counted in `dropped_unread`, not refused as
/// unattested, and taken when they come again.
#[test]
fn events_whose_attestation_cannot_be_read_are_dropped_not_refused() {
    run_site(|| async {
        let storage = Arc::new(SledStorage::temporary().unwrap());
        let site = gundb::Site::with_storage(storage.clone(), gundb::SiteConfig::default()).unwrap();
        site.register::<TrailStream>().await.unwrap();
        let lane = common::remote_lane(1, StreamId::from_u128(5));
        let mut events = vec![common::remote_event(lane, 1, 1, 10)];
        let attestations = gundb::testkit::attest(&mut events);
        storage.failpoints().fail_nth(Fault::Read, 1);
        site.receive(events.clone(), attestations.clone()).await.unwrap();
        let metrics = site.metrics().await.unwrap();
        assert_eq!((metrics.unattested, metrics.malformed, metrics.dropped_unread), (0, 0, 1), "{metrics:?}");
        site.receive(events, attestations).await.unwrap();
        let target: gundb::VectorClock = [(lane, gundb::Seq(1))].into_iter().collect();
        tokio::time::timeout(std::time::Duration::from_secs(20), site.wait_for(&target)).await.unwrap().unwrap();
    });
}

/// A storage failure shows: `/health` answers 503 with the failure as its reason (not
/// "ok"), and `/metrics` has `gundb_storage_failed 1`.
/// A storage failure is shown by `/health` (503, with the reason) and `/metrics`; the site
/// then reopens its storage by itself (here once the test lets reopening succeed), and the
/// stream that failed (its write was in flight) rebuilds itself from what is durable: the
/// same handle writes again, the acknowledged write is there and the lane has no gap.
#[test]
fn a_failed_storage_shows_in_health_and_metrics_and_heals_by_itself() {
    run_site(|| async {
        use actix_web::test::{call_service, init_service, read_body, TestRequest};
        let storage = Arc::new(SledStorage::temporary().unwrap());
        let site = gundb::Site::with_storage(storage.clone(), gundb::SiteConfig::default()).unwrap();
        let app = init_service(actix_web::App::new().configure(gundb::http::routes(site.clone(), 1 << 20))).await;
        let get = |path: &str| TestRequest::get().uri(path).to_request();
        assert_eq!(call_service(&app, get("/health")).await.status(), 200);
        let stream = site.stream::<TrailStream>(StreamId::from_u128(7)).await.unwrap();
        stream.send(Emit::new(0)).await.unwrap().unwrap();
        // A peer's lane, its first event taken now (and its attestation, which covers both).
        let lane = common::remote_lane(2, StreamId::from_u128(7));
        let mut remote = vec![common::remote_event(lane, 1, 1, 100), common::remote_event(lane, 2, 2, 200)];
        let attestations = gundb::testkit::attest(&mut remote);
        site.receive(vec![remote[0].clone()], attestations.clone()).await.unwrap();
        let first: gundb::VectorClock = [(lane, gundb::Seq(1))].into_iter().collect();
        site.wait_for(&first).await.unwrap();

        storage.failpoints().fail_always(Fault::Reopen, true);
        // A batch that is not applied: the write in flight never reaches the disk, so the
        // stream's memory is ahead of it until the stream rebuilds itself.
        storage.failpoints().fail_nth(Fault::Batch, 1);
        assert!(stream.send(Emit::new(1)).await.unwrap().is_err(), "the write failed");
        let health = call_service(&app, get("/health")).await;
        assert_eq!(health.status(), 503);
        let health: serde_json::Value = serde_json::from_slice(&read_body(health).await).unwrap();
        assert_eq!(health["status"], "failing");
        assert!(health["reason"].as_str().unwrap().contains("batch"), "{health}");
        let metrics = |app| async move {
            let body = read_body(call_service(app, get("/metrics")).await).await;
            String::from_utf8(body.to_vec()).unwrap()
        };
        let failing = metrics(&app).await;
        assert!(failing.lines().any(|line| line == "gundb_storage_failed 1"), "{failing}");
        assert!(stream.send(GetView::new()).await.unwrap().is_err(), "refused while the storage is failed");
        // The peer's next event arriving now cannot be stored: refused for now, not for good.
        site.receive(vec![remote[1].clone()], Vec::new()).await.unwrap();
        let refused = async {
            while site.metrics().await.unwrap().refused == 0 {
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            }
        };
        tokio::time::timeout(std::time::Duration::from_secs(20), refused).await.expect("the stream refused it");

        storage.failpoints().fail_always(Fault::Reopen, false);
        let healed = async {
            while call_service(&app, get("/health")).await.status() != 200 {
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
        };
        tokio::time::timeout(std::time::Duration::from_secs(20), healed).await.expect("the storage never healed");
        let serving = metrics(&app).await;
        assert!(serving.lines().any(|line| line == "gundb_storage_failed 0"), "{serving}");
        let written = stream.send(Emit::new(2)).await.unwrap().expect("the stream serves again");
        assert_eq!(written.seq.0, 2, "the failed write's seq is taken again: it was never stored");
        // The peer's event, sent again, is taken: its lane was not stopped here.
        site.receive(vec![remote[1].clone()], attestations).await.unwrap();
        let target: gundb::VectorClock = [(lane, gundb::Seq(2))].into_iter().collect();
        tokio::time::timeout(std::time::Duration::from_secs(20), site.wait_for(&target))
            .await
            .expect("the peer's event is taken after the heal")
            .unwrap();
        let mut view = stream.send(GetView::new()).await.unwrap().unwrap().view.0;
        view.sort_unstable();
        assert_eq!(view, vec![0, 2, 100, 200]);
    });
}

/// The next event of a subscription; a guard turns a hang into a failure.
async fn next_of(all: &mut gundb::subscription::Subscription) -> gundb::subscription::PositionedEvent {
    let next = tokio::time::timeout(std::time::Duration::from_secs(20), all.next()).await;
    next.expect("an event comes").expect("the subscription goes on").unwrap()
}

/// A site-wide subscription spans a storage failure and the heal after it: the failed
/// write never shows, the writes after the heal come at the next positions, once each.
#[test]
fn a_site_wide_subscription_goes_on_after_the_storage_heals() {
    run_site(|| async {
        use gundb::subscription::Filter;
        let storage = Arc::new(SledStorage::temporary().unwrap());
        let site = gundb::Site::with_storage(storage.clone(), gundb::SiteConfig::default()).unwrap();
        let stream = site.stream::<TrailStream>(StreamId::from_u128(8)).await.unwrap();
        stream.send(Emit::new(0)).await.unwrap().unwrap();
        let mut all = site.subscribe_all(Filter::All, gundb::LogPos(0)).unwrap();
        let first = next_of(&mut all).await;
        assert_eq!(first.position, gundb::LogPos(1));

        storage.failpoints().fail_nth(Fault::Batch, 1);
        assert!(stream.send(Emit::new(1)).await.unwrap().is_err(), "the write failed");
        // The healer reopens the storage; the stream rebuilds itself at its next message.
        let healed = async {
            loop {
                match stream.send(Emit::new(2)).await.unwrap() {
                    Ok(written) => return written,
                    Err(_) => tokio::time::sleep(std::time::Duration::from_millis(20)).await,
                }
            }
        };
        let written = tokio::time::timeout(std::time::Duration::from_secs(20), healed).await.expect("healed");
        let after = next_of(&mut all).await;
        assert_eq!((after.position, after.event.id), (gundb::LogPos(2), written.id), "the failed write never shows");
        let last = stream.send(Emit::new(3)).await.unwrap().unwrap();
        let after = next_of(&mut all).await;
        assert_eq!((after.position, after.event.id), (gundb::LogPos(3), last.id));
    });
}

/// A read of the log that fails in the middle of a catch-up is tried again: every event
/// comes once, at its position.
#[test]
fn a_subscription_tries_a_failed_read_again() {
    run_site(|| async {
        use gundb::subscription::Filter;
        let storage = Arc::new(SledStorage::temporary().unwrap());
        let site = gundb::Site::with_storage(storage.clone(), gundb::SiteConfig::default()).unwrap();
        let stream = site.stream::<TrailStream>(StreamId::from_u128(9)).await.unwrap();
        let events = 3 * gundb::limits::SUBSCRIPTION_PAGE_EVENTS as u64;
        for chunk in 0..events / 1_000 + 1 {
            let numbers: Vec<u64> = (chunk * 1_000..((chunk + 1) * 1_000).min(events)).collect();
            if !numbers.is_empty() {
                stream.send(gundb::Decide::new(move |_| Ok::<_, String>(numbers))).await.unwrap().unwrap();
            }
        }
        // The site is idle: its next reads are the subscription's pages, and the second fails.
        storage.failpoints().fail_nth(Fault::Read, 2);
        let mut all = site.subscribe_all(Filter::All, gundb::LogPos(0)).unwrap();
        for position in 1..=events {
            let item = next_of(&mut all).await;
            assert_eq!(item.position, gundb::LogPos(position));
            assert_eq!(gundb::codec::decode::<u64>(&item.event.payload).unwrap(), position - 1);
        }
    });
}
