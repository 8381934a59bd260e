//! 50,000 streams at one site: one event written into each by 64 concurrent writers, the
//! site reopened from its folder (its frontier loaded whole), and every view read back
//! through a fresh handle. Proves
//! that streams are cheap (no per-stream sled tree, actors passivated under the default
//! bound) and that everything acknowledged survives the reopen.
#![allow(clippy::unwrap_used)]

mod common;

use common::{run_site, Trail, TrailStream};
use gundb::{Emit, GetView, Seq, Site, StreamId};

const STREAMS: u64 = 50_000;
const WORKERS: u64 = 64;

fn id(n: u64) -> StreamId {
    StreamId::from_u128(u128::from(n) + 1)
}

/// Runs `work(site, n)` for every stream n, on `WORKERS` concurrent tasks.
async fn each_stream<F, Fut>(site: &Site, work: F)
where
    F: Fn(Site, u64) -> Fut + Clone + 'static,
    Fut: std::future::Future<Output = ()> + 'static,
{
    let mut tasks = Vec::new();
    for worker in 0..WORKERS {
        let (site, work) = (site.clone(), work.clone());
        tasks.push(actix::spawn(async move {
            for n in (worker..STREAMS).step_by(usize::try_from(WORKERS).unwrap()) {
                work(site.clone(), n).await;
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
}

#[test]
fn fifty_thousand_streams_are_written_reopened_and_read_back() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_path_buf();
    let written = path.clone();
    run_site(move || async move {
        let site = Site::open(&written).unwrap();
        each_stream(&site, |site, n| async move {
            let stream = site.stream::<TrailStream>(id(n)).await.unwrap();
            let emitted = stream.send(Emit::new(n)).await.unwrap().unwrap();
            assert_eq!(emitted.seq, Seq(1));
        })
        .await;
        let metrics = site.metrics().await.unwrap();
        assert!(
            metrics.streams_live_max <= u64::try_from(gundb::limits::STREAMS_LIVE_MAX).unwrap(),
            "{} actors alive at once",
            metrics.streams_live_max
        );
    });
    run_site(move || async move {
        let site = Site::open(&path).unwrap();
        assert_eq!(site.metrics().await.unwrap().streams_live, 0, "opening a site opens none of its streams");
        // The router loads the stored frontier a page of streams at a time after opening;
        // asking for it waits until every page is in.
        let frontier = site.frontier().await.unwrap();
        assert_eq!(frontier.len(), usize::try_from(STREAMS).unwrap(), "every stored lane in the frontier");
        assert!(frontier.iter().all(|(_, seq)| seq == Seq(1)));
        each_stream(&site, |site, n| async move {
            let stream = site.stream::<TrailStream>(id(n)).await.unwrap();
            let view = stream.send(GetView::new()).await.unwrap().unwrap();
            assert_eq!(view.view, Trail(vec![n]), "stream {n} after the reopen");
        })
        .await;
        let mut listed = 0;
        let mut after = None;
        loop {
            let page = site.storage().streams_page(after, 4_096).unwrap();
            let Some((last, _)) = page.last() else { break };
            after = Some(*last);
            listed += page.len();
        }
        assert_eq!(listed, usize::try_from(STREAMS).unwrap(), "every stream listed once");
    });
}
