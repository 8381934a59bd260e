//! Replication: events written at one site reach every other, in-process over links in a
//! full mesh (default node settings), timed from connecting until all hold every event
//! durable; against raw sled
//! storing as many events in batches (one flush and fsync per batch of 256), the most one
//! receiving site's disk could take.

use super::{Blob, Progress};
use actix::Arbiter;
use anyhow::{Context as _, Result};
use gundb::node::transport::in_process;
use gundb::node::{connect, NodeConfig};
use gundb::{Decide, Site, StreamId};
use std::fs::File;
use std::time::{Duration, Instant};

/// How replication in a mesh went.
pub struct Mesh {
    /// Events per second until every site held every event.
    pub rate: f64,
    /// Events received ÷ events delivered, over the receiving sites: 1 when nothing
    /// arrives twice.
    pub copies: f64,
    /// The largest share of the catch-up a receiving site's router spent verifying
    /// attestations.
    pub verifying: f64,
}

/// The site `open` opens, its actors running on an arbiter (a thread) of its own, as each
/// site of a deployment has its own process. Nodes of it are started on that arbiter too
/// ([`connect_on`]).
pub async fn site_on_own_thread(
    open: impl FnOnce() -> Result<Site, gundb::SiteError> + Send + 'static,
) -> Result<(Site, Arbiter)> {
    let arbiter = Arbiter::new();
    let (sender, receiver) = tokio::sync::oneshot::channel();
    arbiter.spawn(async move {
        let _ = sender.send(open());
    });
    Ok((receiver.await??, arbiter))
}

/// Stops the sites' arbiters and waits for their threads: their databases close.
pub async fn stop_threads(arbiters: Vec<Arbiter>) {
    for arbiter in arbiters {
        arbiter.stop();
        // A panicked site thread was reported by the panic itself.
        let _ = tokio::task::spawn_blocking(move || arbiter.join()).await;
    }
}

/// Connects `site` on `end`, its nodes on `arbiter` (the site's own).
pub fn connect_on(arbiter: &Arbiter, site: &Site, end: gundb::node::transport::Endpoint) {
    let site = site.clone();
    arbiter.spawn(async move {
        connect(&site, end, NodeConfig::default());
    });
}

/// Until every one of `sites` sites holds the `events` written at the first.
pub fn in_process_sites(sites: usize, events: u64, payload: usize, progress: &Progress) -> Result<Mesh> {
    let progress = progress.clone();
    actix::System::new().block_on(async move {
        let (count, mut sites, mut arbiters) = (sites.max(2), Vec::new(), Vec::new());
        for _ in 0..count {
            let (site, arbiter) = site_on_own_thread(Site::temporary).await?;
            sites.push(site);
            arbiters.push(arbiter);
        }
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
                connect_on(&arbiters[left], &sites[left], l);
                connect_on(&arbiters[right], &sites[right], r);
            }
        }
        for site in &sites[1..] {
            tokio::time::timeout(Duration::from_secs(600), site.wait_for(&target)).await.context("catching up")??;
        }
        let elapsed = started.elapsed();
        let rate = events as f64 / elapsed.as_secs_f64();
        let (mut received, mut delivered, mut verify_ns) = (0, 0, 0);
        for site in &sites[1..] {
            let metrics = site.metrics().await?;
            (received, delivered) = (received + metrics.received, delivered + metrics.delivered);
            verify_ns = verify_ns.max(metrics.verify_ns);
        }
        drop(sites);
        stop_threads(arbiters).await;
        let verifying = verify_ns as f64 / elapsed.as_nanos() as f64;
        Ok(Mesh { rate, copies: received as f64 / delivered.max(1) as f64, verifying })
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
