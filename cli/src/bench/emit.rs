//! Durable local writes: `Emit` with many concurrent writers over one stream or many,
//! against raw sled inserting the same bytes with the same flush policy (flush, then fsync
//! of the database file, before a write counts). Every write's latency goes into a
//! histogram, for the percentiles under load.

use super::{Blob, Progress};
use anyhow::{Context as _, Result};
use gundb::storage::{SledStorage, Storage};
use gundb::{codec, Emit, StreamActor, StreamId};
use hdrhistogram::Histogram;
use std::fs::File;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// What one timed run did.
pub struct Run {
    pub rate: f64,
    /// Write latencies in microseconds.
    pub latency: Histogram<u64>,
    /// The share of the run the storage writer spent signing (0 for raw sled).
    pub signing: f64,
}

pub fn histogram() -> Histogram<u64> {
    // 1 µs to 60 s at 3 significant digits: bounds that every write fits in.
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid histogram bounds")
}

fn micros(elapsed: Duration) -> u64 {
    u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX).max(1)
}

/// The size of a stored event with a `payload`-byte `Blob`: what raw sled writes too.
pub fn event_bytes(payload: usize) -> Result<Vec<u8>> {
    let lane = gundb::Lane::new(gundb::SiteId::from_u128(1), StreamId::from_u128(1));
    let mut event = gundb::testkit::event(1, lane, 1, &[], 1, 1_700_000_000_000);
    event.payload = codec::encode(&Blob(vec![7; payload]))?;
    Ok(codec::encode(&event)?)
}

/// gundb: `writers` writers over `streams` stream actors on one fresh database, each writer
/// waiting for its write to be durable before the next, for `duration` per writer count.
pub fn gundb(
    streams: u64,
    writers: &[u64],
    payload: usize,
    duration: Duration,
    progress: &Progress,
) -> Result<Vec<Run>> {
    let storage: Arc<dyn Storage> = Arc::new(SledStorage::temporary()?);
    let writers = writers.to_vec();
    let progress = progress.clone();
    actix::System::new().block_on(async move {
        progress.say(format!("opening {streams} streams"));
        let mut actors = Vec::new();
        for n in 0..streams {
            let actor = StreamActor::<Blob>::open(Arc::clone(&storage), StreamId::from_u128(u128::from(n) + 1))?;
            actors.push(actix::Actor::start(actor));
        }
        let actors = Arc::new(actors);
        let mut runs = Vec::new();
        for &count in &writers {
            progress.say(format!("{streams} streams, {count} writers"));
            let stop = Arc::new(AtomicBool::new(false));
            let done = Arc::new(AtomicU64::new(0));
            let signing_before = storage.stats().signing_ns;
            let started = Instant::now();
            let tasks: Vec<_> = (0..count)
                .map(|writer| {
                    let (actors, stop, done) = (Arc::clone(&actors), Arc::clone(&stop), Arc::clone(&done));
                    actix::spawn(async move {
                        let mut latency = histogram();
                        let mut n = 0u64;
                        while !stop.load(Ordering::Relaxed) {
                            let index = usize::try_from((writer + n * count) % streams).unwrap_or(0);
                            let sent = Instant::now();
                            actors[index].send(Emit::new(Blob(vec![7; payload]))).await??;
                            latency.saturating_record(micros(sent.elapsed()));
                            done.fetch_add(1, Ordering::Relaxed);
                            n += 1;
                        }
                        Ok::<_, anyhow::Error>(latency)
                    })
                })
                .collect();
            tokio::time::sleep(duration).await;
            stop.store(true, Ordering::Relaxed);
            let mut latency = histogram();
            for task in tasks {
                latency.add(task.await.context("writer task")??)?;
            }
            let elapsed = started.elapsed();
            let rate = done.load(Ordering::Relaxed) as f64 / elapsed.as_secs_f64();
            let signing = (storage.stats().signing_ns - signing_before) as f64 / elapsed.as_nanos() as f64;
            runs.push(Run { rate, latency, signing });
        }
        Ok(runs)
    })
}

/// Raw sled: each writer thread inserts `bytes` under a fresh key, flushes and fsyncs
/// before its next write, for `duration` per writer count.
pub fn raw_sled(writers: &[u64], bytes: &[u8], duration: Duration, progress: &Progress) -> Result<Vec<Run>> {
    let dir = tempfile::tempdir()?;
    let db = sled::Config::new().path(dir.path()).cache_capacity(64 << 20).flush_every_ms(None).open()?;
    let file = File::open(dir.path().join("db"))?;
    let mut runs = Vec::new();
    for &count in writers {
        progress.say(format!("raw sled, {count} writers"));
        let stop = AtomicBool::new(false);
        let started = Instant::now();
        let results: Vec<Result<(u64, Histogram<u64>)>> = std::thread::scope(|scope| {
            let threads: Vec<_> = (0..count)
                .map(|writer| {
                    let (db, file, stop) = (&db, &file, &stop);
                    scope.spawn(move || {
                        let mut latency = histogram();
                        let mut n = 0u64;
                        while !stop.load(Ordering::Relaxed) {
                            let sent = Instant::now();
                            db.insert([count.to_be_bytes(), writer.to_be_bytes(), n.to_be_bytes()].concat(), bytes)?;
                            db.flush()?;
                            file.sync_all()?;
                            latency.saturating_record(micros(sent.elapsed()));
                            n += 1;
                        }
                        Ok((n, latency))
                    })
                })
                .collect();
            std::thread::sleep(duration);
            stop.store(true, Ordering::Relaxed);
            threads
                .into_iter()
                .map(|t| t.join().unwrap_or_else(|_| Err(anyhow::anyhow!("a writer panicked"))))
                .collect()
        });
        let elapsed = started.elapsed().as_secs_f64();
        let mut latency = histogram();
        let mut done = 0;
        for result in results {
            let (n, writer_latency) = result?;
            done += n;
            latency.add(writer_latency)?;
        }
        runs.push(Run { rate: done as f64 / elapsed, latency, signing: 0.0 });
    }
    Ok(runs)
}
