//! Durable writes: `Emit` on a stream actor over sled (with fsync) for 1 and 16
//! concurrent writers, each waiting for its write to be durable before the next, against
//! this machine's limits measured in the same run: raw sled inserting the same bytes with
//! the same flush policy (flush + fsync before a write counts), and a crossbeam channel
//! moving the same bytes. Target: gundb at 16 writers reaches 70% of raw sled's rate. The
//! `_flush` variants acknowledge after sled's flush without fsync, to show what fsync costs.

#![allow(missing_docs)] // criterion_group! generates undocumented functions

use actix::Actor;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use gundb::storage::{Durability, SledConfig, SledStorage, Storage};
use gundb::{codec, Emit, EventMeta, Stream, StreamActor, StreamId, View};
use serde::{Deserialize, Serialize};
use std::fs::File;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A 100-byte payload, as in the codec benchmark.
#[derive(Clone, Serialize, Deserialize)]
struct Reading(Vec<u8>);

#[derive(Clone, Default, Serialize, Deserialize)]
struct Count(u64);

impl View<Reading> for Count {
    fn apply_event(&mut self, _event: &Reading, _meta: &EventMeta<'_>) {
        self.0 += 1;
    }
}

struct Sensor;
impl Stream for Sensor {
    const TYPE_NAME: &'static str = "bench.sensor";
    type Event = Reading;
    type View = Count;
    const COMMUTATIVE: bool = true;
}

const WRITERS: [u64; 2] = [1, 16];

fn gundb_emit(storage: &Arc<dyn Storage>, writers: u64, events: u64) -> Duration {
    let storage = Arc::clone(storage);
    actix::System::new().block_on(async move {
        let actor = StreamActor::<Sensor>::open(storage, StreamId::random()).expect("the stream opens").start();
        let started = Instant::now();
        let tasks: Vec<_> = (0..writers)
            .map(|_| {
                let actor = actor.clone();
                actix::spawn(async move {
                    for _ in 0..events.div_ceil(writers) {
                        actor.send(Emit::new(Reading(vec![7; 100]))).await.expect("mailbox").expect("durable");
                    }
                })
            })
            .collect();
        for task in tasks {
            task.await.expect("writer task");
        }
        started.elapsed()
    })
}

/// Raw sled: each writer inserts the event's bytes, then flushes and (with `file`) fsyncs
/// before its next write, the policy a durable `Emit` follows.
fn raw_sled(db: &sled::Db, file: Option<&File>, writers: u64, events: u64, bytes: &[u8]) -> Duration {
    let started = Instant::now();
    std::thread::scope(|scope| {
        for writer in 0..writers {
            scope.spawn(move || {
                for n in 0..events.div_ceil(writers) {
                    let key = [writer.to_be_bytes(), n.to_be_bytes(), rand_key()].concat();
                    db.insert(key, bytes).expect("insert");
                    db.flush().expect("flush");
                    if let Some(file) = file {
                        file.sync_all().expect("fsync");
                    }
                }
            });
        }
    });
    started.elapsed()
}

/// Distinct keys across iterations, so raw sled grows like the event log does.
fn rand_key() -> [u8; 8] {
    uuid::Uuid::new_v4().as_u64_pair().0.to_be_bytes()
}

fn bench(c: &mut Criterion) {
    let fsync: Arc<dyn Storage> = Arc::new(SledStorage::temporary().expect("sled opens"));
    let flush_only = SledConfig { durability: Durability::Flush, ..SledConfig::default() };
    let flush: Arc<dyn Storage> = Arc::new(SledStorage::with_config(flush_only).expect("sled opens"));
    let dir = tempfile::tempdir().expect("a temporary folder");
    let db = sled::Config::new().path(dir.path()).cache_capacity(64 << 20).flush_every_ms(None).open().expect("sled");
    let file = File::open(dir.path().join("db")).expect("the sled file");
    let event = gundb::testkit::history(
        gundb::testkit::HistoryShape { sites: 1, streams: 1, events: 1, sync_percent: 0 },
        &mut gundb::testkit::Rng::new(1),
    )
    .pop()
    .expect("one event");
    let bytes =
        codec::encode(&gundb::Event { payload: codec::encode(&Reading(vec![7; 100])).expect("encodes"), ..event })
            .expect("encodes");

    let mut group = c.benchmark_group("durable_write");
    group.sample_size(10).measurement_time(Duration::from_secs(8));
    group.throughput(Throughput::Elements(1));
    for writers in WRITERS {
        group.bench_with_input(BenchmarkId::new("gundb_emit_fsync", writers), &writers, |b, &writers| {
            b.iter_custom(|iters| gundb_emit(&fsync, writers, iters))
        });
        group.bench_with_input(BenchmarkId::new("raw_sled_fsync", writers), &writers, |b, &writers| {
            b.iter_custom(|iters| raw_sled(&db, Some(&file), writers, iters, &bytes))
        });
    }
    // What fsync costs: the same at 16 writers with sled's flush only.
    group.bench_function(BenchmarkId::new("gundb_emit_flush", 16), |b| {
        b.iter_custom(|iters| gundb_emit(&flush, 16, iters))
    });
    group.bench_function(BenchmarkId::new("raw_sled_flush", 16), |b| {
        b.iter_custom(|iters| raw_sled(&db, None, 16, iters, &bytes))
    });
    group.finish();

    let mut group = c.benchmark_group("channel");
    group.throughput(Throughput::Elements(1));
    group.bench_function("crossbeam_bounded", |b| {
        let (sender, receiver) = crossbeam::channel::bounded::<Vec<u8>>(1024);
        let consumer = std::thread::spawn(move || while receiver.recv().is_ok() {});
        b.iter(|| sender.send(bytes.clone()).expect("the consumer runs"));
        drop(sender);
        consumer.join().expect("the consumer ends");
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
