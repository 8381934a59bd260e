//! Replication: 10,000 events written at site A (before timing) reach sites B and C, on
//! real sled with fsync, over in-process links in a triangle; timed from connecting
//! until both have every event durable. Target: at least 20k events/s.

#![allow(missing_docs)] // criterion_group! generates undocumented functions

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use gundb::node::transport::in_process;
use gundb::node::{connect, NodeConfig};
use gundb::{Decide, EventMeta, Site, Stream, StreamId, View};
use serde::{Deserialize, Serialize};
use std::time::{Duration, Instant};

const EVENTS: u64 = 10_000;

#[derive(Clone, Default, Serialize, Deserialize)]
struct Count(u64);

impl View<u64> for Count {
    fn apply_event(&mut self, _n: &u64, _meta: &EventMeta<'_>) {
        self.0 += 1;
    }
}

struct Counter;
impl Stream for Counter {
    const TYPE_NAME: &'static str = "bench.counter";
    type Event = u64;
    type View = Count;
    const COMMUTATIVE: bool = true;
}

fn one_run() -> Duration {
    actix::System::new().block_on(async {
        let sites: Vec<Site> = (0..3).map(|_| Site::temporary().expect("a site")).collect();
        let stream = StreamId::random();
        let actor = sites[0].stream::<Counter>(stream).await.expect("the stream");
        for chunk in 0..EVENTS / 100 {
            let decide = Decide::new(move |_: &Count| Ok::<_, ()>((chunk * 100..chunk * 100 + 100).collect()));
            actor.send(decide).await.expect("mailbox").expect("durable");
        }
        for site in &sites[1..] {
            site.register::<Counter>().await.expect("registered");
        }
        let target = sites[0].frontier().await.expect("frontier");
        let started = Instant::now();
        for (left, right) in [(0, 1), (0, 2), (1, 2)] {
            let (l, r) = in_process(16);
            connect(&sites[left], l, NodeConfig { hello_every: None, ..NodeConfig::default() });
            connect(&sites[right], r, NodeConfig { hello_every: None, ..NodeConfig::default() });
        }
        for site in &sites[1..] {
            site.wait_for(&target).await.expect("caught up");
        }
        started.elapsed()
    })
}

fn bench(c: &mut Criterion) {
    let mut group = c.benchmark_group("replication");
    group.sample_size(10).measurement_time(Duration::from_secs(20));
    group.throughput(Throughput::Elements(EVENTS));
    group.bench_function("three_sites_catch_up", |b| b.iter_custom(|iters| (0..iters).map(|_| one_run()).sum()));
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
