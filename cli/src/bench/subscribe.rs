//! Site-wide subscriptions: what one subscriber following every event live costs durable
//! emit (runs with and without it, alternated, in one site), and how fast a subscription
//! catches up on a stored log, against the storage's own page reads of the same log.

use super::{Blob, Progress};
use anyhow::{Context as _, Result};
use gundb::subscription::Filter;
use gundb::{Emit, LogPos, Site, StreamId};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Emit rates (events/s) without a subscriber and with one following every event, each
/// the mean of `rounds` runs of `duration`, alternated so that drift hits both alike.
pub fn emit_with_subscriber(
    writers: u64,
    payload: usize,
    duration: Duration,
    rounds: u32,
    progress: &Progress,
) -> Result<(f64, f64)> {
    let progress = progress.clone();
    actix::System::new().block_on(async move {
        let site = Site::temporary()?;
        let stream = site.stream::<Blob>(StreamId::named("bench-subscribe")).await?;
        let (mut without, mut with) = (0.0, 0.0);
        for round in 0..rounds {
            for subscribed in [false, true] {
                progress.say(format!("emit, {writers} writers, round {}, subscriber: {subscribed}", round + 1));
                let received = Arc::new(AtomicU64::new(0));
                let from = site.storage().log_end();
                let follower = subscribed.then(|| {
                    let mut all = site.subscribe_all(Filter::All, from)?;
                    let received = Arc::clone(&received);
                    Ok::<_, anyhow::Error>(actix::spawn(async move {
                        while let Some(item) = all.next().await {
                            item?;
                            received.fetch_add(1, Ordering::Relaxed);
                        }
                        Ok::<_, anyhow::Error>(())
                    }))
                });
                let follower = follower.transpose()?;
                let stop = Arc::new(AtomicBool::new(false));
                let done = Arc::new(AtomicU64::new(0));
                let started = Instant::now();
                let tasks: Vec<_> = (0..writers)
                    .map(|_| {
                        let (stream, stop, done) = (stream.clone(), Arc::clone(&stop), Arc::clone(&done));
                        actix::spawn(async move {
                            while !stop.load(Ordering::Relaxed) {
                                stream.send(Emit::new(Blob(vec![7; payload]))).await??;
                                done.fetch_add(1, Ordering::Relaxed);
                            }
                            Ok::<_, anyhow::Error>(())
                        })
                    })
                    .collect();
                tokio::time::sleep(duration).await;
                stop.store(true, Ordering::Relaxed);
                for task in tasks {
                    task.await.context("writer task")??;
                }
                let rate = done.load(Ordering::Relaxed) as f64 / started.elapsed().as_secs_f64();
                if let Some(follower) = follower {
                    // The subscriber must have kept up: it gets every event written.
                    let written = done.load(Ordering::Relaxed);
                    let deadline = Instant::now() + Duration::from_secs(60);
                    while received.load(Ordering::Relaxed) < written {
                        anyhow::ensure!(Instant::now() < deadline, "the subscriber fell behind for good");
                        tokio::task::yield_now().await;
                    }
                    follower.abort();
                    with += rate;
                } else {
                    without += rate;
                }
            }
        }
        site.close().await;
        Ok((without / f64::from(rounds), with / f64::from(rounds)))
    })
}

/// Events per second a subscription from position 0 reads on a log of `events` stored
/// events, and the storage's own `log_after` pages over the same log.
pub fn catch_up(events: u64, payload: usize, progress: &Progress) -> Result<(f64, f64)> {
    let progress = progress.clone();
    actix::System::new().block_on(async move {
        let site = Site::temporary()?;
        progress.say(format!("catch-up: writing {events} events into 100 streams"));
        super::write_batches::<Blob>(&site, "bench-catch-up", 100, events.div_ceil(100), 1_000, payload).await?;
        let end = site.storage().log_end();
        progress.say(format!("catch-up: the storage's pages over {} events", end.0));
        let storage = Arc::clone(site.storage());
        let started = Instant::now();
        let mut after = LogPos(0);
        while after < end {
            after = storage
                .log_after(after, gundb::limits::SUBSCRIPTION_PAGE_EVENTS, gundb::limits::SUBSCRIPTION_PAGE_BYTES)?
                .last;
        }
        let pages = end.0 as f64 / started.elapsed().as_secs_f64();
        progress.say(format!("catch-up: a subscription over {} events", end.0));
        let started = Instant::now();
        let mut all = site.subscribe_all(Filter::All, LogPos(0))?;
        let mut read = 0;
        while read < end.0 {
            all.next().await.context("the subscription ended early")??;
            read += 1;
        }
        let subscribed = end.0 as f64 / started.elapsed().as_secs_f64();
        site.close().await;
        Ok((subscribed, pages))
    })
}
