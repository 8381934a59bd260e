//! Stream actors that passivate: a site keeps at most `live_max` actors alive (least
//! recently used stop first) and stops actors idle for `idle_after`; handles obtained
//! before an actor stopped keep working, every view stays right and every acknowledged
//! write stays in its lane, also with many writers racing the passivations.
#![allow(clippy::unwrap_used)]

mod common;

use common::{run_site, Trail, TrailStream};
use gundb::storage::{SledStorage, Storage};
use gundb::{Emit, GetView, Passivation, Seq, Site, SiteConfig, StreamHandle, StreamId};
use std::sync::Arc;
use std::time::Duration;

fn site(live_max: usize, idle_after: Option<Duration>) -> Site {
    let storage: Arc<dyn Storage> = Arc::new(SledStorage::temporary().unwrap());
    let config = SiteConfig { passivation: Passivation { live_max, idle_after }, ..SiteConfig::default() };
    Site::with_storage(storage, config).unwrap()
}

fn id(n: u64) -> StreamId {
    StreamId::from_u128(u128::from(n) + 1)
}

/// 10,000 streams touched by 32 concurrent writers (a write, which starts no actor on a
/// new stream, then a read, which does) at a site that keeps 100 actors alive: never more
/// than 100 are alive, the rest were passivated, and every handle obtained before its
/// actor stopped still reads the right view and writes on in the same lane.
#[test]
fn a_site_keeps_at_most_live_max_actors_and_old_handles_keep_working() {
    const STREAMS: u64 = 10_000;
    const WRITERS: u64 = 32;
    run_site(|| async {
        let site = site(100, None);
        let mut tasks = Vec::new();
        for writer in 0..WRITERS {
            let site = site.clone();
            tasks.push(actix::spawn(async move {
                let mut handles = Vec::new();
                for n in (writer..STREAMS).step_by(usize::try_from(WRITERS).unwrap()) {
                    let handle = site.stream::<TrailStream>(id(n)).await.unwrap();
                    handle.send(Emit::new(n)).await.unwrap().unwrap();
                    assert_eq!(handle.send(GetView::new()).await.unwrap().unwrap().view, Trail(vec![n]));
                    let live = site.metrics().await.unwrap().streams_live;
                    assert!(live <= 100, "{live} stream actors alive, at most 100 allowed");
                    handles.push((n, handle));
                }
                handles
            }));
        }
        let mut handles: Vec<(u64, StreamHandle<TrailStream>)> = Vec::new();
        for task in tasks {
            handles.extend(task.await.unwrap());
        }
        let metrics = site.metrics().await.unwrap();
        assert!(metrics.streams_live_max <= 100, "at most 100 alive at once, saw {}", metrics.streams_live_max);
        assert!(metrics.passivated >= STREAMS - 100, "{} passivated", metrics.passivated);

        // Every handle was obtained before its actor stopped: it reads and writes on.
        for (n, handle) in &handles {
            let view = handle.send(GetView::new()).await.unwrap().unwrap();
            assert_eq!(view.view, Trail(vec![*n]), "stream {n}");
        }
        for (n, handle) in handles.iter().step_by(97) {
            let emitted = handle.send(Emit::new(n + 1)).await.unwrap().unwrap();
            assert_eq!(emitted.seq, Seq(2), "stream {n}: the lane continues after passivation");
            let view = handle.send(GetView::new()).await.unwrap().unwrap();
            assert_eq!(view.view, Trail(vec![*n, n + 1]));
        }
        assert!(site.metrics().await.unwrap().streams_live_max <= 100);
    });
}

/// Actors unused for the idle time stop on their own, and their handles start them again.
#[test]
fn idle_actors_stop_and_come_back_on_their_next_message() {
    run_site(|| async {
        let site = site(10_000, Some(Duration::from_millis(200)));
        let mut handles = Vec::new();
        for n in 0..10 {
            let handle = site.stream::<TrailStream>(id(n)).await.unwrap();
            handle.send(Emit::new(n)).await.unwrap().unwrap();
            // The first write to a new stream starts no actor; a read does.
            assert_eq!(handle.send(GetView::new()).await.unwrap().unwrap().view, Trail(vec![n]));
            handles.push(handle);
        }
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        while site.metrics().await.unwrap().passivated < 10 {
            assert!(tokio::time::Instant::now() < deadline, "idle actors did not stop");
            tokio::time::sleep(Duration::from_millis(50)).await; // polling a condition, not timing
        }
        assert_eq!(site.metrics().await.unwrap().streams_live, 0);
        for (n, handle) in (0..).zip(&handles) {
            assert_eq!(handle.send(GetView::new()).await.unwrap().unwrap().view, Trail(vec![n]));
        }
        assert_eq!(site.metrics().await.unwrap().streams_live, 10);
    });
}

/// 16 writers share 64 streams at a site that keeps 4 actors alive, so actors are asked to
/// stop while messages race to them: every write is acknowledged once, in its lane with no
/// gap, and every view holds exactly the writes made to its stream.
#[test]
fn writers_racing_passivation_lose_nothing() {
    const STREAMS: u64 = 64;
    const WRITERS: u64 = 16;
    const WRITES: u64 = 40;
    run_site(|| async {
        let site = site(4, None);
        let handles: Vec<StreamHandle<TrailStream>> = {
            let mut handles = Vec::new();
            for n in 0..STREAMS {
                handles.push(site.stream::<TrailStream>(id(n)).await.unwrap());
            }
            handles
        };
        let mut tasks = Vec::new();
        for writer in 0..WRITERS {
            let handles = handles.clone();
            tasks.push(actix::spawn(async move {
                let mut acked = Vec::new();
                for k in 0..WRITES {
                    let n = (writer * 7 + k * 13) % STREAMS;
                    let value = writer * 1_000 + k;
                    let emitted = handles[usize::try_from(n).unwrap()].send(Emit::new(value)).await.unwrap().unwrap();
                    acked.push((n, value, emitted.seq));
                }
                acked
            }));
        }
        let mut acked = Vec::new();
        for task in tasks {
            acked.extend(task.await.unwrap());
        }
        assert!(site.metrics().await.unwrap().passivated > 0, "the race was run: actors were passivated");
        for (n, handle) in (0..STREAMS).zip(&handles) {
            let mut expected: Vec<(Seq, u64)> =
                acked.iter().filter(|(s, _, _)| *s == n).map(|(_, value, seq)| (*seq, *value)).collect();
            expected.sort();
            let seqs: Vec<Seq> = expected.iter().map(|(seq, _)| *seq).collect();
            let contiguous: Vec<Seq> = (1..=u64::try_from(seqs.len()).unwrap()).map(Seq).collect();
            assert_eq!(seqs, contiguous, "stream {n}: each write once, no gap");
            let view = handle.send(GetView::new()).await.unwrap().unwrap().view;
            assert_eq!(view, Trail(expected.iter().map(|(_, value)| *value).collect()), "stream {n}");
        }
    });
}

/// HTTP writes go through the handles a worker keeps: at a site that keeps 2 actors
/// alive, rounds of writes to 5 documents passivate actors under those handles (from the
/// second round: a new document's first write starts no actor), and every write still
/// lands in its lane, in order, and in the view.
#[test]
fn http_writes_through_kept_handles_survive_passivation() {
    use actix_web::test::{call_service, init_service, read_body_json, TestRequest};
    const DOCS: u64 = 5;
    const ROUNDS: u64 = 3;
    run_site(|| async {
        let site = site(2, None);
        let app = init_service(actix_web::App::new().configure(gundb::http::Api::new(site.clone()).routes())).await;
        for round in 0..ROUNDS {
            for doc in 0..DOCS {
                let post = TestRequest::post()
                    .uri(&format!("/streams/doc-{doc}/events"))
                    .set_payload(format!(r#"{{"round{round}": {round}}}"#))
                    .to_request();
                let reply = call_service(&app, post).await;
                assert_eq!(reply.status(), 201, "doc {doc}, round {round}");
                let emitted: serde_json::Value = read_body_json(reply).await;
                assert_eq!(emitted["seq"], round + 1, "doc {doc}: the lane continues after passivation");
            }
        }
        let metrics = site.metrics().await.unwrap();
        assert!(metrics.streams_live_max <= 2, "at most 2 alive at once, saw {}", metrics.streams_live_max);
        assert!(metrics.passivated >= (DOCS - 2) * (ROUNDS - 1), "{} passivated", metrics.passivated);
        for doc in 0..DOCS {
            let get = TestRequest::get().uri(&format!("/streams/doc-{doc}")).to_request();
            let view: serde_json::Value = read_body_json(call_service(&app, get).await).await;
            let expected: serde_json::Value = (0..ROUNDS)
                .map(|r| (format!("round{r}"), serde_json::Value::from(r)))
                .collect::<serde_json::Map<_, _>>()
                .into();
            assert_eq!(view["view"], expected, "doc {doc}: {view}");
        }
    });
}
