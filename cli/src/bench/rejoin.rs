//! Rejoin: a site that was cut off while another wrote `missed` events, and wrote a few
//! of its own into the same streams meanwhile, connects again; timed until both hold
//! everything. Its streams are not commutative, so every stream takes events that sort
//! before what it folded (rollbacks), as after a real partition. Run at two sizes, the
//! time per event missed says whether catching up is linear in what was missed.

use super::replication::{connect_on, site_on_own_thread, stop_threads};
use super::{Blob, Count, Progress};
use anyhow::{Context as _, Result};
use gundb::node::transport::in_process;
use gundb::{Site, Stream};
use std::time::{Duration, Instant};

/// `Blob` events whose order matters to the view (so late ones roll it back).
struct Ordered;

impl Stream for Ordered {
    const TYPE_NAME: &'static str = "bench.ordered";
    type Event = Blob;
    type View = Count;
}

/// Streams both sites write: one per entity, many of them.
const STREAMS: u64 = 100;

/// The rejoining site's own writes while cut off, per stream.
const OWN_PER_STREAM: u64 = 10;

/// Writes `per_stream` events into each of the [`STREAMS`] streams at `site`, in batches.
async fn write(site: &Site, per_stream: u64, payload: usize) -> Result<()> {
    super::write_batches::<Ordered>(site, "bench-rejoin", STREAMS, per_stream, 100, payload).await
}

/// Events per second missed, from connecting until both sites hold everything.
pub fn rate(missed: u64, payload: usize, progress: &Progress) -> Result<f64> {
    let progress = progress.clone();
    actix::System::new().block_on(async move {
        let (away, away_thread) = site_on_own_thread(Site::temporary).await?;
        let (back, back_thread) = site_on_own_thread(Site::temporary).await?;
        progress.say(format!("rejoin: {missed} events written while a site is away"));
        write(&away, missed.div_ceil(STREAMS), payload).await?;
        write(&back, OWN_PER_STREAM, payload).await?;
        let mut target = away.frontier().await?;
        target.merge(&back.frontier().await?);
        progress.say(format!("rejoin: catching up on {missed} events"));
        let started = Instant::now();
        let (l, r) = in_process(16);
        connect_on(&away_thread, &away, l);
        connect_on(&back_thread, &back, r);
        for site in [&back, &away] {
            tokio::time::timeout(Duration::from_secs(600), site.wait_for(&target)).await.context("catching up")??;
        }
        let rate = missed as f64 / started.elapsed().as_secs_f64();
        drop((away, back));
        stop_threads(vec![away_thread, back_thread]).await;
        Ok(rate)
    })
}
