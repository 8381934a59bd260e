//! Many fresh streams: one durable event into each of N streams with 64 writers, the
//! site reopened and every view read back cold, in a child process per N so that its
//! peak RSS is its own. It asks whether a stream costs only its key prefix: the write
//! rate beside the one-stream rate of the same child, RSS, disk per event, and how soon a
//! reopened site with N streams serves a view, and how fast a fresh second site catches
//! up on them.
//!
//! The views are read from the reopened site rather than the one that wrote them: below
//! the router's live-actor cap (and before the idle timeout) every stream actor is still
//! alive after the writes, so only a reopen makes every read cold, whatever N is. The
//! one-stream baseline runs last, on a database of its own, after the peak RSS is taken,
//! so neither its memory nor its events count in the N-streams figures.

use super::memory::{folder_bytes, status_bytes};
use super::replication::{connect_on, site_on_own_thread, stop_threads};
use super::report::{Better, Row};
use super::{emit, Blob, Progress};
use anyhow::{Context as _, Result};
use gundb::{Emit, GetView, Site, StreamId};
use serde::{Deserialize, Serialize};
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

/// Concurrent writers (and readers), as the issue sets them.
const WRITERS: u64 = 64;

/// The stream count the targets are set for; smaller counts have none.
const TARGETED: u64 = 1_000_000;

/// Events the one-stream baseline writes at most: enough for a steady rate, few enough
/// that the baseline stays a few seconds when N is 10⁶.
const BASELINE_EVENTS_MAX: u64 = 100_000;

/// What the child prints before a progress line; any other line is the report.
const PROGRESS: &str = "progress ";

/// What one child reports, for one N.
#[derive(Debug, Serialize, Deserialize)]
struct Streams {
    /// Fresh streams written, one event each.
    streams: u64,
    /// Events per second into the fresh streams.
    rate: f64,
    /// Events the one-stream baseline wrote (N, at most [`BASELINE_EVENTS_MAX`]).
    one_stream_events: u64,
    /// Events per second into one stream shared by the same writers.
    one_stream_rate: f64,
    /// Cold views read per second, from the reopened site.
    read_rate: f64,
    /// Milliseconds from `Site::open` until the first view was served.
    reopen_ms: f64,
    /// Milliseconds raw sled takes to open the same folder (gundb's sled settings).
    raw_sled_open_ms: f64,
    /// RSS once the empty site was open, bytes.
    rss_empty: u64,
    /// RSS after the writes, before the site was closed, bytes.
    rss_written: u64,
    /// RSS after every view was read from the reopened site, bytes.
    rss_read: u64,
    /// Peak RSS (VmHWM) over writes, reopen and reads, before the baseline, bytes.
    rss_peak: u64,
    /// The database folder's size once closed, bytes.
    disk: u64,
    /// Events per second a fresh second site took to catch up on the N streams over an
    /// in-process link, from connecting until it held them all durably.
    catch_up_rate: f64,
}

/// Measures `streams` streams with [`WRITERS`] writers in a child process, notes its RSS
/// phase by phase above the bars, and returns its rows.
pub fn rows(streams: u64, payload: usize, progress: &Progress) -> Result<Vec<Row>> {
    let measured = measure(streams, WRITERS, payload, progress)?;
    let mib = |bytes: u64| bytes as f64 / f64::from(1 << 20);
    progress.note(format!(
        "{streams} streams: RSS {:.0} MiB with the empty site, {:.0} MiB after the writes, \
         {:.0} MiB after the cold reads, peak {:.0} MiB",
        mib(measured.rss_empty),
        mib(measured.rss_written),
        mib(measured.rss_read),
        mib(measured.rss_peak)
    ));
    rows_of(&measured, payload)
}

/// The rows for one stream count (the targets only on [`TARGETED`]) from the report of
/// [`measure`]'s child.
fn rows_of(m: &Streams, payload: usize) -> Result<Vec<Row>> {
    let n = m.streams;
    let targeted = n == TARGETED;
    let one_stream = format!("one stream, {WRITERS} writers, {} events, same run", m.one_stream_events);
    let mut rate =
        Row::new("streams", format!("{n} fresh streams, {WRITERS} writers"), m.rate, "events/s", Better::Higher)
            .against(&one_stream, m.one_stream_rate);
    // The time per event at this rate (writers overlapping), so the ratio is the cost ratio.
    let micros = |rate: f64| if rate > 0.0 { 1e6 / rate } else { f64::INFINITY };
    let mut cost =
        Row::new("streams", format!("per-event cost, {n} fresh streams"), micros(m.rate), "µs", Better::Lower)
            .against(&one_stream, micros(m.one_stream_rate));
    let reads = Row::new(
        "streams",
        format!("cold view reads, {n} streams, {WRITERS} readers"),
        m.read_rate,
        "views/s",
        Better::Higher,
    );
    let mut rss = Row::new(
        "streams",
        format!("peak RSS, {n} streams written and read"),
        m.rss_peak as f64,
        "bytes",
        Better::Lower,
    )
    .against("RSS of the empty site", m.rss_empty as f64);
    let per_event = |bytes: u64| bytes as f64 / n.max(1) as f64;
    let encoded = u64::try_from(emit::event_bytes(payload)?.len())?;
    let disk =
        Row::new("streams", format!("bytes on disk per event, {n} streams"), per_event(m.disk), "B", Better::Lower)
            .against("encoded bytes per event", encoded as f64);
    let mut reopen =
        Row::new("streams", format!("reopen until a view is served, {n} streams"), m.reopen_ms, "ms", Better::Lower)
            .against("raw sled opening the same folder", m.raw_sled_open_ms);
    let mut catch_up = Row::new(
        "streams",
        format!("a fresh site catching up on {n} streams, in-process"),
        m.catch_up_rate,
        "events/s",
        Better::Higher,
    )
    .against("the same events written", m.rate);
    if targeted {
        rate = rate.target("≥ 10k events/s", m.rate >= 10_000.0);
        let ratio = cost.ratio.unwrap_or(f64::INFINITY);
        cost = cost.target("within 1.5× of one stream", ratio <= 1.5);
        rss = rss.target("≤ 256 MiB throughout", m.rss_peak <= 256 << 20);
        reopen = reopen.target("< 2 s", m.reopen_ms < 2_000.0);
        catch_up = catch_up.target("≥ 20k events/s", m.catch_up_rate >= 20_000.0);
    }
    Ok(vec![rate, cost, reads, rss, disk, reopen, catch_up])
}

/// Runs the child (this binary with [`super::CHILD`] = `streams`) for `streams` streams
/// and reads its report.
fn measure(streams: u64, writers: u64, payload: usize, progress: &Progress) -> Result<Streams> {
    let mut child = super::child_command("streams")?
        .args([streams.to_string(), writers.to_string(), payload.to_string()])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .context("starting the streams child")?;
    let stdout = child.stdout.take().context("the child's stdout")?;
    let mut report = None;
    for line in BufReader::new(stdout).lines() {
        let line = line?;
        match line.strip_prefix(PROGRESS) {
            Some(said) => progress.say(format!("{streams} streams: {said}")),
            None => report = Some(serde_json::from_str::<Streams>(&line).context("the streams child's report")?),
        }
    }
    anyhow::ensure!(child.wait()?.success(), "the streams child failed ({streams} streams)");
    report.context("the streams child reported nothing")
}

/// The child's side: prints progress lines, then the report as one JSON line.
pub fn child(streams: u64, writers: u64, payload: usize) -> Result<()> {
    anyhow::ensure!(streams > 0 && writers > 0, "--streams and --writers must be at least 1");
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("site");
    // Each phase in an actix system of its own: when `block_on` returns and the system
    // drops, its actors and the last `Site` clone drop, which closes the database.
    let (rate, rss_empty, rss_written) = actix::System::new().block_on(write(&path, streams, writers, payload))?;
    let (reopen_ms, read_rate, rss_read) = actix::System::new().block_on(read(&path, streams, writers))?;
    let rss_peak = status_bytes("VmHWM:")?;
    let disk = folder_bytes(&path)?;
    let raw_sled_open_ms = raw_sled_open(&path)?;
    // After the peak RSS is taken: the second site's memory is not the first's.
    let catch_up_rate = actix::System::new().block_on(catch_up(&path, &dir.path().join("peer"), streams))?;
    let one_stream_events = streams.min(BASELINE_EVENTS_MAX);
    let one = dir.path().join("one");
    let one_stream_rate = actix::System::new().block_on(one_stream(&one, one_stream_events, writers, payload))?;
    let report = Streams {
        streams,
        rate,
        one_stream_events,
        one_stream_rate,
        read_rate,
        reopen_ms,
        raw_sled_open_ms,
        rss_empty,
        rss_written,
        rss_read,
        rss_peak,
        disk,
        catch_up_rate,
    };
    println!("{}", serde_json::to_string(&report)?);
    Ok(())
}

/// Opens the written site and a fresh one in `peer`, connects them over an in-process link
/// and times the fresh site until it holds every event durably; returns events/s.
async fn catch_up(path: &Path, peer: &Path, streams: u64) -> Result<f64> {
    println!("{PROGRESS}a fresh site catching up");
    let (path, peer) = (path.to_path_buf(), peer.to_path_buf());
    let (site, at_site) = site_on_own_thread(move || Site::open(path)).await?;
    let (fresh, at_fresh) = site_on_own_thread(move || Site::open(peer)).await?;
    fresh.register::<Blob>().await?;
    let target = site.frontier().await?;
    let started = Instant::now();
    let (here, there) = gundb::node::transport::in_process(gundb::limits::LINK_FRAMES_MAX);
    connect_on(&at_site, &site, here);
    connect_on(&at_fresh, &fresh, there);
    fresh.wait_for(&target).await?;
    let rate = streams as f64 / started.elapsed().as_secs_f64();
    drop((site, fresh));
    stop_threads(vec![at_site, at_fresh]).await;
    Ok(rate)
}

/// The id of fresh stream `n` (0-based): the same in the writes and the reads.
fn stream_id(n: u64) -> StreamId {
    StreamId::from_u128(u128::from(n) + 1)
}

/// Counts finished items across tasks and prints a progress line every `step` of them.
#[derive(Clone)]
struct Done {
    count: Arc<AtomicU64>,
    step: u64,
    of: u64,
    doing: &'static str,
}

impl Done {
    fn new(of: u64, doing: &'static str) -> Self {
        // About a hundred lines per phase: enough to watch, few enough to cost nothing.
        Self { count: Arc::new(AtomicU64::new(0)), step: (of / 100).max(1_000), of, doing }
    }

    fn one(&self) {
        let done = self.count.fetch_add(1, Ordering::Relaxed) + 1;
        if done % self.step == 0 {
            println!("{PROGRESS}{done} of {} {}", self.of, self.doing);
        }
    }
}

/// Writes one event into each of `streams` fresh streams, writer `w` taking streams `w`,
/// `w + writers`, …; returns events/s and the RSS once the site was open and after the writes.
async fn write(path: &Path, streams: u64, writers: u64, payload: usize) -> Result<(f64, u64, u64)> {
    let site = Site::open(path)?;
    let rss_empty = status_bytes("VmRSS:")?;
    let done = Done::new(streams, "streams written");
    let started = Instant::now();
    each_stream(&site, streams, writers, &done, move |site, n| async move {
        let stream = site.stream::<Blob>(stream_id(n)).await?;
        stream.send(Emit::new(Blob(vec![7; payload]))).await??;
        Ok(())
    })
    .await?;
    let rate = streams as f64 / started.elapsed().as_secs_f64();
    Ok((rate, rss_empty, status_bytes("VmRSS:")?))
}

/// Reopens the site and times it until one view is served, then reads every stream's view
/// with `readers` concurrent readers, each view checked to hold exactly its one event;
/// returns the milliseconds until ready, views/s and the RSS after the reads.
async fn read(path: &Path, streams: u64, readers: u64) -> Result<(f64, f64, u64)> {
    println!("{PROGRESS}reopening");
    let started = Instant::now();
    let site = Site::open(path)?;
    one_event(&site, streams - 1).await?;
    let reopen_ms = started.elapsed().as_secs_f64() * 1e3;
    let done = Done::new(streams, "views read");
    let started = Instant::now();
    each_stream(&site, streams, readers, &done, |site, n| async move { one_event(&site, n).await }).await?;
    let read_rate = streams as f64 / started.elapsed().as_secs_f64();
    Ok((reopen_ms, read_rate, status_bytes("VmRSS:")?))
}

/// Runs `work(site, n)` for every stream n on `tasks` concurrent tasks, task `t` taking
/// streams `t`, `t + tasks`, …, and counts each in `done`.
async fn each_stream<F, Fut>(site: &Site, streams: u64, tasks: u64, done: &Done, work: F) -> Result<()>
where
    F: Fn(Site, u64) -> Fut + Clone + 'static,
    Fut: std::future::Future<Output = Result<()>> + 'static,
{
    let running: Vec<_> = (0..tasks.min(streams))
        .map(|first| {
            let (site, done, work) = (site.clone(), done.clone(), work.clone());
            actix::spawn(async move {
                for n in (first..streams).step_by(usize::try_from(tasks)?) {
                    work(site.clone(), n).await?;
                    done.one();
                }
                Ok::<_, anyhow::Error>(())
            })
        })
        .collect();
    for task in running {
        task.await.context("a task of the streams scenario")??;
    }
    Ok(())
}

/// Reads fresh stream `n`'s view and checks that it counts the one event written.
async fn one_event(site: &Site, n: u64) -> Result<()> {
    let stream = site.stream::<Blob>(stream_id(n)).await?;
    let events = stream.send(GetView::new()).await??.view.0;
    anyhow::ensure!(events == 1, "stream {} holds {events} events, 1 was written", stream_id(n));
    Ok(())
}

/// The baseline: `events` events into one stream shared by `writers` writers, on a fresh
/// site in `path`; returns events/s.
async fn one_stream(path: &Path, events: u64, writers: u64, payload: usize) -> Result<f64> {
    let site = Site::open(path)?;
    let stream = site.stream::<Blob>(StreamId::named("streams-baseline")).await?;
    let done = Done::new(events, "events into one stream");
    let started = Instant::now();
    let tasks: Vec<_> = (0..writers.min(events))
        .map(|writer| {
            let (stream, done) = (stream.clone(), done.clone());
            actix::spawn(async move {
                let mut n = writer;
                while n < events {
                    stream.send(Emit::new(Blob(vec![7; payload]))).await??;
                    done.one();
                    n += writers;
                }
                Ok::<_, anyhow::Error>(())
            })
        })
        .collect();
    for task in tasks {
        task.await.context("baseline writer task")??;
    }
    Ok(events as f64 / started.elapsed().as_secs_f64())
}

/// Milliseconds raw sled takes to open the closed database in `path` with gundb's sled
/// settings: what reopening costs before gundb does anything.
fn raw_sled_open(path: &Path) -> Result<f64> {
    let started = Instant::now();
    let db = gundb::storage::open_waiting_for_lock(
        &sled::Config::new()
            .path(path)
            .cache_capacity(gundb::limits::SLED_CACHE_BYTES)
            .segment_size(gundb::limits::SLED_SEGMENT_BYTES)
            .flush_every_ms(None),
    )?;
    let opened_ms = started.elapsed().as_secs_f64() * 1e3;
    drop(db);
    Ok(opened_ms)
}
