//! `sort_events` on 10^3 to 10^6 events of 8 concurrent lanes, in random arrival order.
//! Target (for the benchmark, not tests): 10^6 events in under 1.5 s.

#![allow(missing_docs)] // criterion_group! generates undocumented functions

use criterion::{criterion_group, criterion_main, BatchSize, BenchmarkId, Criterion, Throughput};
use gundb::sort_events;
use gundb::testkit::{history, HistoryShape, Rng};

fn bench(c: &mut Criterion) {
    let mut group = c.benchmark_group("sort_events");
    group.sample_size(10);
    for events in [1_000usize, 10_000, 100_000, 1_000_000] {
        let mut rng = Rng::new(7);
        let mut all = history(HistoryShape { sites: 8, streams: 1, events, sync_percent: 20 }, &mut rng);
        for i in (1..all.len()).rev() {
            all.swap(i, rng.index(i + 1)); // arrival order: any
        }
        group.throughput(Throughput::Elements(events as u64));
        group.bench_with_input(BenchmarkId::from_parameter(events), &all, |bench, all| {
            bench.iter_batched(
                || all.clone(),
                |events| sort_events(events).expect("a valid history"),
                BatchSize::LargeInput,
            )
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
