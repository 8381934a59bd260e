//! HTTP writes: concurrent clients posting JSON patches (a field of their own each time)
//! to one `gundb node` process, each waiting for its `201` (the write is durable) before
//! the next, against the same patches emitted in this process through `Site` handles by as
//! many writers: what the HTTP layer costs.

use super::tcp::NodeProcess;
use super::Progress;
use anyhow::{ensure, Context as _, Result};
use gundb::doc::{Document, Patch};
use gundb::{Emit, Site, StreamId};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Documents the writes go to.
const STREAMS: u64 = 16;

/// The patch writer `writer` sends as its `n`th write: a field of its own.
fn patch(writer: u64, n: u64) -> String {
    format!(r#"{{"w{writer}-{n}": {n}}}"#)
}

fn stream_name(writer: u64) -> String {
    format!("bench-http-{}", writer % STREAMS)
}

/// Durable writes per second over HTTP by `writers` connections, and in this process by
/// `writers` writers, each for `duration`.
pub fn rates(writers: u64, duration: Duration, progress: &Progress) -> Result<(f64, f64)> {
    progress.say(format!("in-process emit, {writers} writers"));
    let in_process = in_process(writers, duration)?;
    progress.say(format!("HTTP, {writers} connections"));
    let root = tempfile::tempdir()?;
    let secret = root.path().join("secret");
    std::fs::write(&secret, "bench")?;
    let node = NodeProcess::start(&root.path().join("node"), &secret, None)?;
    let (stop, done, failed) = (AtomicBool::new(false), AtomicU64::new(0), AtomicU64::new(0));
    let started = Instant::now();
    std::thread::scope(|scope| {
        for writer in 0..writers {
            let (stop, done, failed) = (&stop, &done, &failed);
            let url = format!("http://{}/streams/{}/events", node.http, stream_name(writer));
            scope.spawn(move || {
                // One keep-alive connection per writer, as a load generator keeps.
                let agent = ureq::AgentBuilder::new().timeout(Duration::from_secs(10)).max_idle_connections(1).build();
                let mut n = 0;
                while !stop.load(Ordering::Relaxed) {
                    match agent.post(&url).send_string(&patch(writer, n)) {
                        Ok(response) if response.status() == 201 => done.fetch_add(1, Ordering::Relaxed),
                        _ => failed.fetch_add(1, Ordering::Relaxed),
                    };
                    n += 1;
                }
            });
        }
        std::thread::sleep(duration);
        stop.store(true, Ordering::Relaxed);
    });
    let rate = done.load(Ordering::Relaxed) as f64 / started.elapsed().as_secs_f64();
    ensure!(failed.load(Ordering::Relaxed) == 0, "{} HTTP writes failed", failed.load(Ordering::Relaxed));
    Ok((rate, in_process))
}

/// The same patches emitted through `Site` handles by `writers` writers in this process.
fn in_process(writers: u64, duration: Duration) -> Result<f64> {
    actix::System::new().block_on(async move {
        let site = Site::temporary()?;
        let stop = Arc::new(AtomicBool::new(false));
        let done = Arc::new(AtomicU64::new(0));
        let started = Instant::now();
        let mut tasks = Vec::new();
        for writer in 0..writers {
            let stream = site.stream::<Document>(StreamId::named(&stream_name(writer))).await?;
            let (stop, done) = (Arc::clone(&stop), Arc::clone(&done));
            tasks.push(actix::spawn(async move {
                let mut n = 0;
                while !stop.load(Ordering::Relaxed) {
                    stream.send(Emit::new(Patch::from_json(&patch(writer, n))?)).await??;
                    done.fetch_add(1, Ordering::Relaxed);
                    n += 1;
                }
                Ok::<_, anyhow::Error>(())
            }));
        }
        tokio::time::sleep(duration).await;
        stop.store(true, Ordering::Relaxed);
        for task in tasks {
            task.await.context("writer task")??;
        }
        let rate = done.load(Ordering::Relaxed) as f64 / started.elapsed().as_secs_f64();
        site.close().await;
        Ok(rate)
    })
}
