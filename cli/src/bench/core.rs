//! The pure cores and the router: the codec against encoding into a reused buffer, and the
//! router's causal buffer with events arriving in reverse and random order, alone and
//! through the router actor, each against causal arrival (nothing to hold back).

use super::{Blob, Progress};
use anyhow::{ensure, Result};
use gundb::router::{Pending, PendingLimits};
use gundb::testkit::{causal_shuffle, history, HistoryShape, Rng};
use gundb::{codec, Event, Seq, Site, SiteConfig, VectorClock};
use std::time::{Duration, Instant};

/// Encodes per second: fresh allocations (`codec::encode`) and a reused buffer.
pub fn codec(events: usize, payload: usize, progress: &Progress) -> Result<(f64, f64)> {
    progress.say("encoding events");
    let mut sample = history(HistoryShape { sites: 3, streams: 1, events: 1, sync_percent: 0 }, &mut Rng::new(1));
    let mut event = sample.pop().ok_or_else(|| anyhow::anyhow!("a history of one event"))?;
    event.payload = codec::encode(&Blob(vec![7; payload]))?;
    let started = Instant::now();
    let mut bytes = 0;
    for _ in 0..events {
        bytes += codec::encode(std::hint::black_box(&event))?.len();
    }
    let fresh = events as f64 / started.elapsed().as_secs_f64();
    let mut buffer = Vec::new();
    let started = Instant::now();
    for _ in 0..events {
        codec::encode_into(std::hint::black_box(&event), &mut buffer)?;
        bytes -= buffer.len();
    }
    let reused = events as f64 / started.elapsed().as_secs_f64();
    ensure!(bytes == 0, "both encodings wrote the same bytes");
    Ok((fresh, reused))
}

/// Arrival orders of one history of 4 concurrent lanes: causal, reverse, random.
pub fn arrivals(events: usize) -> [(&'static str, Vec<Event>); 3] {
    let mut rng = Rng::new(7);
    let all = history(HistoryShape { sites: 4, streams: 1, events, sync_percent: 20 }, &mut rng);
    let causal = causal_shuffle(&all, &mut rng);
    let reverse: Vec<Event> = causal.iter().rev().cloned().collect();
    let mut random = causal.clone();
    for i in (1..random.len()).rev() {
        random.swap(i, rng.index(i + 1));
    }
    [("causal", causal), ("reverse", reverse), ("random", random)]
}

/// Events per second through `Pending` alone.
pub fn pending(arrivals: &[Event]) -> Result<f64> {
    // A fresh site: nothing stored, and every lane kept in memory, so storage is never read.
    let limits = PendingLimits { events_max: arrivals.len() + 1, bytes_max: u64::MAX, lanes_cached: usize::MAX };
    let mut pending = Pending::new(limits, Box::new(|_| Some(Seq::ZERO)));
    let events = arrivals.to_vec();
    let started = Instant::now();
    let mut delivered = 0;
    for event in events {
        pending.insert(event).map_err(|e| anyhow::anyhow!("equivocation in a valid history: {e:?}"))?;
        while let Some(ready) = pending.take_ready() {
            pending.mark_delivered(ready.lane, ready.seq);
            pending.mark_durable(ready.lane, ready.seq);
            delivered += 1;
        }
    }
    let rate = delivered as f64 / started.elapsed().as_secs_f64();
    ensure!(delivered == arrivals.len(), "delivered {delivered} of {}", arrivals.len());
    Ok(rate)
}

/// Events per second through a site's router actor, on a fresh sled database (fsync on):
/// received in frames of 512 until every event is durable. The events' type is not
/// registered, so they are stored unfolded, as a relay stores them.
pub fn router_actor(arrivals: &[Event]) -> Result<f64> {
    let mut arrivals = arrivals.to_vec();
    // Signed as their sites would: one attestation per site, sent with the first frame.
    let mut attestations = gundb::testkit::attest(&mut arrivals);
    actix::System::new().block_on(async move {
        let config = SiteConfig {
            pending: PendingLimits { events_max: arrivals.len() + 1, bytes_max: u64::MAX, ..PendingLimits::default() },
            ..SiteConfig::default()
        };
        let storage = std::sync::Arc::new(gundb::storage::SledStorage::temporary()?);
        let site = Site::with_storage(storage, config)?;
        let all: VectorClock = arrivals.iter().map(|e| (e.lane, e.seq)).collect();
        let started = Instant::now();
        for frame in arrivals.chunks(512) {
            site.receive(frame.to_vec(), std::mem::take(&mut attestations)).await?;
        }
        tokio::time::timeout(Duration::from_secs(600), site.wait_for(&all)).await??;
        Ok(arrivals.len() as f64 / started.elapsed().as_secs_f64())
    })
}
