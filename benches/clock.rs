//! Vector clock operations on clocks of 4 and 64 lanes.

#![allow(missing_docs)] // criterion_group! generates undocumented functions

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use gundb::{Lane, Seq, SiteId, StreamId, VectorClock};
use std::hint::black_box;

fn clock(lanes: u64, offset: u64) -> VectorClock {
    (0..lanes).map(|n| (Lane::new(SiteId::from_u128(n.into()), StreamId::from_u128(1)), Seq(n + offset))).collect()
}

fn bench(c: &mut Criterion) {
    let mut group = c.benchmark_group("clock");
    group.throughput(Throughput::Elements(1));
    for lanes in [4u64, 64] {
        let (a, b) = (clock(lanes, 1), clock(lanes, 2));
        group.bench_with_input(BenchmarkId::new("compare", lanes), &lanes, |bench, _| {
            bench.iter(|| black_box(&a).compare(black_box(&b)))
        });
        group.bench_with_input(BenchmarkId::new("merge", lanes), &lanes, |bench, _| {
            bench.iter(|| {
                let mut m = a.clone();
                m.merge(black_box(&b));
                m
            })
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
