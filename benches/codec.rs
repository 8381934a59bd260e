//! Encoding and decoding one event (4-lane clock, 100-byte payload).

#![allow(missing_docs)] // criterion_group! generates undocumented functions

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use gundb::testkit::{history, HistoryShape, Rng};
use gundb::{codec, Event};
use std::hint::black_box;

fn bench(c: &mut Criterion) {
    let mut event = history(HistoryShape { sites: 4, streams: 1, events: 400, sync_percent: 100 }, &mut Rng::new(1))
        .pop()
        .expect("a history of 400 events");
    event.payload = vec![42; 100];
    let bytes = codec::encode(&event).expect("an event encodes");
    let mut group = c.benchmark_group("codec");
    group.throughput(Throughput::Elements(1));
    group.bench_function("encode_event", |b| b.iter(|| codec::encode(black_box(&event))));
    group.bench_function("decode_event", |b| b.iter(|| codec::decode::<Event>(black_box(&bytes))));
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
