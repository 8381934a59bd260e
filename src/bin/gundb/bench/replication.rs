//! Replication: events written at one site reach every other, in-process over links in a
//! full mesh (default node settings), timed from connecting until all hold every event
//! durable; against raw sled
//! storing as many events in batches (one flush and fsync per batch of 256), the most one
//! receiving site's disk could take.

use super::{Blob, Progress};
use anyhow::{Context as _, Result};
use gundb::node::transport::in_process;
use gundb::node::{connect, NodeConfig};
use gundb::{Decide, Site, StreamId};
use std::fs::File;
use std::time::{Duration, Instant};

/// Events per second until every one of `sites` sites holds the `events` written at the first.
pub fn in_process_sites(sites: usize, events: u64, payload: usize, progress: &Progress) -> Result<f64> {
    let progress = progress.clone();
    actix::System::new().block_on(async move {
        let sites: Vec<Site> = (0..sites.max(2)).map(|_| Site::temporary()).collect::<Result<_, _>>()?;
        progress.say(format!("writing {events} events at the first site"));
        let writer = sites[0].stream::<Blob>(StreamId::named("bench-replication")).await?;
        for chunk in 0..events.div_ceil(100) {
            let count = usize::try_from((events - chunk * 100).min(100))?;
            let decide =
                Decide::new(move |_: &_| Ok::<_, std::convert::Infallible>(vec![Blob(vec![7; payload]); count]));
            writer.send(decide).await?.map_err(|e| anyhow::anyhow!("{e}"))?;
        }
        for site in &sites[1..] {
            site.register::<Blob>().await?;
        }
        let target = sites[0].frontier().await?;
        progress.say(format!("{} sites catching up", sites.len()));
        let started = Instant::now();
        for left in 0..sites.len() {
            for right in left + 1..sites.len() {
                let (l, r) = in_process(16);
                connect(&sites[left], l, NodeConfig::default());
                connect(&sites[right], r, NodeConfig::default());
            }
        }
        for site in &sites[1..] {
            tokio::time::timeout(Duration::from_secs(600), site.wait_for(&target)).await.context("catching up")??;
        }
        Ok(events as f64 / started.elapsed().as_secs_f64())
    })
}

/// Raw sled: `events` values of `bytes` each, applied in batches of 256, each batch
/// flushed and fsynced before the next.
pub fn raw_sled_batches(events: u64, bytes: &[u8], progress: &Progress) -> Result<f64> {
    progress.say("raw sled, batches of 256");
    let dir = tempfile::tempdir()?;
    let db = sled::Config::new().path(dir.path()).cache_capacity(64 << 20).flush_every_ms(None).open()?;
    let file = File::open(dir.path().join("db"))?;
    let started = Instant::now();
    let mut n = 0u64;
    while n < events {
        let mut batch = sled::Batch::default();
        for _ in 0..256.min(events - n) {
            batch.insert(&n.to_be_bytes(), bytes);
            n += 1;
        }
        db.apply_batch(batch)?;
        db.flush()?;
        file.sync_all()?;
    }
    Ok(events as f64 / started.elapsed().as_secs_f64())
}
