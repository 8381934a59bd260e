//! The router's causal buffer (`Pending`): events of 4 concurrent lanes arriving in causal,
//! reverse and random order, inserted and delivered until none is left. Target (for the
//! benchmark, not tests): at least 1M events/s.

#![allow(missing_docs)] // criterion_group! generates undocumented functions

use criterion::{criterion_group, criterion_main, BatchSize, BenchmarkId, Criterion, Throughput};
use gundb::router::{Pending, PendingLimits};
use gundb::testkit::{causal_shuffle, history, HistoryShape, Rng};
use gundb::{Event, Seq};

const EVENTS: usize = 100_000;

/// Delivers every event; returns them, so that freeing them (the stream actor's job in a
/// site) is not timed.
fn deliver_all(arrivals: Vec<Event>) -> Vec<Event> {
    // A fresh site: nothing stored, and every lane kept in memory, so storage is never read.
    let limits = PendingLimits { events_max: EVENTS, bytes_max: u64::MAX, lanes_cached: usize::MAX };
    let mut pending = Pending::new(limits, Box::new(|_| Some(Seq::ZERO)));
    let mut delivered = Vec::with_capacity(EVENTS);
    for event in arrivals {
        pending.insert(event).expect("no equivocation in a valid history");
        while let Some(ready) = pending.take_ready() {
            pending.mark_delivered(ready.lane, ready.seq);
            pending.mark_durable(ready.lane, ready.seq);
            delivered.push(ready);
        }
    }
    assert_eq!(delivered.len(), EVENTS);
    delivered
}

fn bench(c: &mut Criterion) {
    let mut rng = Rng::new(11);
    let all = history(HistoryShape { sites: 4, streams: 1, events: EVENTS, sync_percent: 20 }, &mut rng);
    let causal = causal_shuffle(&all, &mut rng);
    let reverse: Vec<Event> = all.iter().rev().cloned().collect();
    let mut random = all.clone();
    for i in (1..random.len()).rev() {
        random.swap(i, rng.index(i + 1));
    }
    let mut group = c.benchmark_group("pending");
    group.sample_size(20);
    group.throughput(Throughput::Elements(EVENTS as u64));
    for (name, arrivals) in [("causal", causal), ("reverse", reverse), ("random", random)] {
        group.bench_with_input(BenchmarkId::new("deliver", name), &arrivals, |b, arrivals| {
            b.iter_batched(|| arrivals.clone(), deliver_all, BatchSize::LargeInput)
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
