//! Two sites each write one event into each of 35,000 streams while connected, and
//! replicate both ways: 70,000 lanes, more than a frontier-sized `Hello` could ever carry
//! (the old protocol stopped for good past about 60,000 lanes). What the sites exchange to
//! resume is a log position, and each frame of the log is a bounded page.
#![allow(clippy::unwrap_used)]

mod common;

use common::{run_site, TrailStream};
use gundb::node::transport::in_process;
use gundb::node::{connect, NodeConfig};
use gundb::{Emit, GetView, Site, StreamId};
use std::time::Duration;

const STREAMS: u64 = 35_000;
const WORKERS: u64 = 64;

fn id(n: u64) -> StreamId {
    StreamId::from_u128(u128::from(n) + 1)
}

/// Writes `base + n` into every stream n at `site`, on `WORKERS` concurrent tasks.
async fn write_each(site: &Site, base: u64) {
    let mut tasks = Vec::new();
    for worker in 0..WORKERS {
        let site = site.clone();
        tasks.push(actix::spawn(async move {
            for n in (worker..STREAMS).step_by(usize::try_from(WORKERS).unwrap()) {
                let stream = site.stream::<TrailStream>(id(n)).await.unwrap();
                stream.send(Emit::new(base + n)).await.unwrap().unwrap();
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
}

#[test]
fn two_sites_each_writing_35_000_streams_replicate_both_ways() {
    run_site(|| async {
        let (a, b) = (Site::temporary().unwrap(), Site::temporary().unwrap());
        a.register::<TrailStream>().await.unwrap();
        b.register::<TrailStream>().await.unwrap();
        let (l, r) = in_process(4);
        let config = NodeConfig { hello_every: None, ..NodeConfig::default() };
        connect(&a, l, config.clone());
        connect(&b, r, config);
        let (wrote_a, wrote_b) = (a.clone(), b.clone());
        let at_a = actix::spawn(async move { write_each(&wrote_a, 0).await });
        let at_b = actix::spawn(async move { write_each(&wrote_b, 1_000_000).await });
        at_a.await.unwrap();
        at_b.await.unwrap();
        let (fa, fb) = (a.frontier().await.unwrap(), b.frontier().await.unwrap());
        let both = tokio::time::timeout(Duration::from_secs(300), async {
            b.wait_for(&fa).await.unwrap();
            a.wait_for(&fb).await.unwrap();
        });
        if both.await.is_err() {
            panic!("no convergence: A {:?}, B {:?}", a.metrics().await.unwrap(), b.metrics().await.unwrap());
        }
        for (site, name) in [(&a, "A"), (&b, "B")] {
            let frontier = site.frontier().await.unwrap();
            assert_eq!(frontier.len(), 70_000, "{name} holds both sites' lanes");
            let metrics = site.metrics().await.unwrap();
            assert_eq!(metrics.received, STREAMS, "{name} was sent each of the other's events once: {metrics:?}");
        }
        for n in (0..STREAMS).step_by(7) {
            let mut views = Vec::new();
            for site in [&a, &b] {
                let stream = site.stream::<TrailStream>(id(n)).await.unwrap();
                views.push(stream.send(GetView::new()).await.unwrap().unwrap().view);
            }
            let mut numbers = views[0].0.clone();
            numbers.sort_unstable();
            assert_eq!(numbers, vec![n, 1_000_000 + n], "stream {n} holds both writes");
            assert_eq!(views[0], views[1], "stream {n}: both sites fold the same order");
        }
    });
}
