//! Peak memory and bytes on disk after many events, measured in a child process of its
//! own, so that no other scenario's memory counts: the child opens a site, notes its RSS,
//! writes the events, closes the database and reports its peak RSS and the folder's size.

use super::{emit, Blob, Progress};
use anyhow::{Context as _, Result};
use gundb::{Decide, Site, StreamId};
use serde::{Deserialize, Serialize};
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::Stdio;

/// What the child reports.
#[derive(Debug, Serialize, Deserialize)]
pub struct Memory {
    /// RSS once the empty site is open, bytes.
    pub rss_empty: u64,
    /// Peak RSS (VmHWM), bytes.
    pub rss_peak: u64,
    /// The database folder's size after closing, bytes.
    pub disk: u64,
    /// The events' encoded size, bytes.
    pub encoded: u64,
    /// Raw sled's folder (gundb's sled settings) after storing as many values of the
    /// encoded size, in batches of the same size, bytes: what sled itself takes.
    pub raw_sled_disk: u64,
}

/// Events per `Decide`, and concurrent writers (over four streams).
const BATCH: u64 = 64;
const WRITERS: u64 = 16;

/// Runs the child (this binary with [`super::CHILD`] = `memory`) and reads its report.
pub fn measure(events: u64, payload: usize, progress: &Progress) -> Result<Memory> {
    let mut child = super::child_command("memory")?
        .args([events.to_string(), payload.to_string()])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .context("starting the memory child")?;
    let stdout = child.stdout.take().context("the child's stdout")?;
    let mut report = None;
    for line in BufReader::new(stdout).lines() {
        let line = line?;
        match line.strip_prefix("written ") {
            Some(written) => progress.say(format!("{written} of {events} events written")),
            None => report = Some(serde_json::from_str::<Memory>(&line)?),
        }
    }
    anyhow::ensure!(child.wait()?.success(), "the memory child failed");
    report.context("the memory child reported nothing")
}

/// The child's side: prints progress lines, then the report as one JSON line.
pub fn child(events: u64, payload: usize) -> Result<()> {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("site");
    let rss_empty = actix::System::new().block_on(write(&path, events, payload))?;
    let rss_peak = status_bytes("VmHWM:")?;
    let bytes = emit::event_bytes(payload)?;
    let raw = dir.path().join("raw");
    raw_sled(&raw, events, &bytes)?;
    let report = Memory {
        rss_empty,
        rss_peak,
        disk: folder_bytes(&path)?,
        encoded: events * u64::try_from(bytes.len())?,
        raw_sled_disk: folder_bytes(&raw)?,
    };
    println!("{}", serde_json::to_string(&report)?);
    Ok(())
}

/// Writes the events; returns the RSS measured once the empty site was open. The site is
/// closed (its last handle dropped with the actix system) when this returns.
async fn write(path: &Path, events: u64, payload: usize) -> Result<u64> {
    let site = Site::open(path)?;
    let rss_empty = status_bytes("VmRSS:")?;
    let decides = events.div_ceil(BATCH);
    let mut tasks = Vec::new();
    for writer in 0..WRITERS {
        let stream = site.stream::<Blob>(StreamId::named(&format!("memory-{}", writer % 4))).await?;
        tasks.push(actix::spawn(async move {
            let mut decide = writer;
            while decide < decides {
                let count = usize::try_from((events - decide * BATCH).min(BATCH))?;
                let blobs = vec![Blob(vec![7; payload]); count];
                stream
                    .send(Decide::new(move |_: &_| Ok::<_, std::convert::Infallible>(blobs)))
                    .await?
                    .map_err(|e| anyhow::anyhow!("{e}"))?;
                if writer == 0 && decide % 256 == 0 {
                    println!("written {}", decide * BATCH);
                }
                decide += WRITERS;
            }
            Ok::<_, anyhow::Error>(())
        }));
    }
    for task in tasks {
        task.await.context("writer task")??;
    }
    Ok(rss_empty)
}

/// Raw sled storing `events` values of `bytes`, in batches of [`BATCH`], flushed.
fn raw_sled(path: &Path, events: u64, bytes: &[u8]) -> Result<()> {
    let db = sled::Config::new()
        .path(path)
        .cache_capacity(gundb::limits::SLED_CACHE_BYTES)
        .segment_size(gundb::limits::SLED_SEGMENT_BYTES)
        .flush_every_ms(None)
        .open()?;
    let mut n = 0u64;
    while n < events {
        let mut batch = sled::Batch::default();
        for _ in 0..BATCH.min(events - n) {
            batch.insert(&n.to_be_bytes(), bytes);
            n += 1;
        }
        db.apply_batch(batch)?;
        db.flush()?;
    }
    Ok(())
}

/// A `kB` line of `/proc/self/status`, in bytes.
pub(super) fn status_bytes(field: &str) -> Result<u64> {
    let status = std::fs::read_to_string("/proc/self/status")?;
    let kib: u64 = status
        .lines()
        .find_map(|line| line.strip_prefix(field))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|kib| kib.parse().ok())
        .with_context(|| format!("{field} in /proc/self/status"))?;
    Ok(kib * 1024)
}

/// The bytes the files under `path` take on disk (allocated blocks, as `du` counts).
pub(super) fn folder_bytes(path: &Path) -> Result<u64> {
    use std::os::unix::fs::MetadataExt;
    let mut total = 0;
    for entry in std::fs::read_dir(path)? {
        let entry = entry?;
        let metadata = entry.metadata()?;
        total += if metadata.is_dir() { folder_bytes(&entry.path())? } else { metadata.blocks() * 512 };
    }
    Ok(total)
}
