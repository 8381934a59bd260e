//! `gundb bench`: how fast gundb is on this machine, and how close to what the machine can
//! do at all. Every scenario runs its baseline in the same run (raw sled with the same
//! flush policy, encoding into a reused buffer, causal arrival), and the report shows the
//! ratio and whether the project's targets were met.

mod core;
mod emit;
mod http;
mod memory;
mod rejoin;
mod replication;
mod report;
mod streams;
mod subscribe;
mod tcp;

use anyhow::{Context as _, Result};
use gundb::{EventMeta, Stream, View};
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
use report::{Better, Machine, Report, Row};
use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// The scenarios, by the names `--only` takes.
const SCENARIOS: [&str; 10] =
    ["emit", "codec", "router", "replication", "rejoin", "tcp", "memory", "streams", "subscribe", "http"];

/// Streams in emit's many-streams runs when `--streams` names none: enough that writers
/// rarely meet on one stream, and below the router's live-actor cap.
const EMIT_STREAMS: u64 = 10_000;

/// What `gundb bench` is started with.
#[derive(clap::Args)]
pub struct BenchArgs {
    /// Small sizes and short runs: the whole report in under a minute.
    #[arg(long)]
    quick: bool,
    /// Events per replication and router scenario (default 100000; 10000 with --quick).
    #[arg(long)]
    events: Option<u64>,
    /// Events stored before measuring memory and disk (default 1000000; 100000 with --quick).
    #[arg(long)]
    memory_events: Option<u64>,
    /// Bytes of application payload per event.
    #[arg(long, default_value_t = 100)]
    payload: usize,
    /// Concurrent writer counts for durable emit.
    #[arg(long, value_delimiter = ',', default_value = "1,16,64")]
    writers: Vec<u64>,
    /// Stream counts. The streams scenario runs each in a child process of its own (default
    /// 1000,10000,100000,1000000; 1000,10000 with --quick); emit's many-streams runs use the
    /// first count given (default 10000).
    #[arg(long, value_delimiter = ',')]
    streams: Vec<u64>,
    /// Sites in the in-process replication scenario.
    #[arg(long, default_value_t = 3)]
    sites: usize,
    /// Run only these scenarios (emit, codec, router, replication, rejoin, tcp, memory, streams, subscribe, http).
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
    /// Write the report as JSON.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Write the report as Markdown (with the machine and the command).
    #[arg(long)]
    markdown: Option<PathBuf>,
    /// Write the chart of emit throughput against writers as SVG.
    #[arg(long)]
    svg: Option<PathBuf>,
}

/// The events every scenario writes: a blob of bytes.
#[derive(Clone, Serialize, Deserialize)]
pub struct Blob(pub Vec<u8>);

/// Events counted, nothing else kept: the view costs nothing, so the writes are measured.
#[derive(Clone, Default, Serialize, Deserialize)]
pub struct Count(u64);

impl View<Blob> for Count {
    fn apply_event(&mut self, _blob: &Blob, _meta: &EventMeta<'_>) {
        self.0 += 1;
    }
}

impl Stream for Blob {
    const TYPE_NAME: &'static str = "bench.blob";
    type Event = Blob;
    type View = Count;
    const COMMUTATIVE: bool = true;
}

/// A scenario's progress bar.
#[derive(Clone)]
pub struct Progress(ProgressBar);

impl Progress {
    fn start(bars: &MultiProgress, name: &str) -> Self {
        let bar = bars.add(ProgressBar::new_spinner());
        let style = ProgressStyle::with_template("{spinner} {prefix:>12} [{elapsed:>3}] {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_spinner());
        bar.set_style(style);
        bar.set_prefix(name.to_owned());
        bar.enable_steady_tick(Duration::from_millis(120));
        Self(bar)
    }

    /// What the scenario is doing now.
    pub fn say(&self, message: impl Into<String>) {
        self.0.set_message(message.into());
    }

    /// A line printed above the bars and kept when the run ends (on stdout when the bars
    /// are hidden, as they are when it is not a terminal, so the line is not lost).
    pub fn note(&self, line: impl AsRef<str>) {
        if self.0.is_hidden() {
            println!("{}", line.as_ref());
        } else {
            self.0.println(line);
        }
    }

    fn done(&self, summary: String) {
        self.0.finish_with_message(summary);
    }
}

/// Writes `per_stream` `Blob` events of `payload` bytes into each of `streams` streams of
/// type `S` named `{prefix}-{n}` at `site`, durably, in `Decide` batches of `batch`.
async fn write_batches<S: gundb::Stream<Event = Blob>>(
    site: &gundb::Site,
    prefix: &str,
    streams: u64,
    per_stream: u64,
    batch: u64,
    payload: usize,
) -> Result<()> {
    for n in 0..streams {
        let stream = site.stream::<S>(gundb::StreamId::named(&format!("{prefix}-{n}"))).await?;
        let mut left = per_stream;
        while left > 0 {
            let count = usize::try_from(left.min(batch))?;
            left -= left.min(batch);
            let events = vec![Blob(vec![7; payload]); count];
            let decide = gundb::Decide::new(move |_: &_| Ok::<_, std::convert::Infallible>(events));
            stream.send(decide).await?.map_err(|e| anyhow::anyhow!("{e}"))?;
        }
    }
    Ok(())
}

/// Rounds of emit without and with a site-wide subscriber, alternated: one 3 s run varies
/// by 10% on this machine, about the size of the effect measured, so each side is the mean
/// of several.
const SUBSCRIBE_ROUNDS: u32 = 4;

/// The variable that makes this binary a bench child process: `memory` or `streams`,
/// its numbers as arguments. Not a subcommand: nobody but `gundb bench` starts one.
pub const CHILD: &str = "GUNDB_BENCH_CHILD";

/// A command starting this binary as a bench child of `kind`.
fn child_command(kind: &str) -> Result<std::process::Command> {
    let mut command = std::process::Command::new(std::env::current_exe()?);
    command.env(CHILD, kind);
    Ok(command)
}

/// When this process is a bench child ([`CHILD`] set), runs it and returns its outcome.
pub fn child_from_env() -> Option<Result<()>> {
    let kind = std::env::var(CHILD).ok()?;
    let numbers: Vec<String> = std::env::args().skip(1).collect();
    let number = |index: usize| -> Result<u64> {
        let text = numbers.get(index).with_context(|| format!("{CHILD}={kind}: argument {index} is missing"))?;
        text.parse().with_context(|| format!("{CHILD}={kind}: {text:?} is not a number"))
    };
    Some(match kind.as_str() {
        "memory" => (|| memory::child(number(0)?, usize::try_from(number(1)?)?))(),
        "streams" => (|| streams::child(number(0)?, number(1)?, usize::try_from(number(2)?)?))(),
        other => Err(anyhow::anyhow!("{CHILD}={other}: no such bench child (memory, streams)")),
    })
}

pub fn run(args: BenchArgs) -> Result<()> {
    let quick = args.quick;
    let events = args.events.unwrap_or(if quick { 10_000 } else { 100_000 });
    let memory_events = args.memory_events.unwrap_or(if quick { 100_000 } else { 1_000_000 });
    let emit_for = if quick { Duration::from_millis(700) } else { Duration::from_secs(3) };
    let wanted = |name: &str| args.only.is_empty() || args.only.iter().any(|only| only == name);
    if let Some(unknown) = args.only.iter().find(|name| !SCENARIOS.contains(&name.as_str())) {
        anyhow::bail!("no scenario {unknown:?}; the scenarios are {}", SCENARIOS.join(", "));
    }
    let started = Instant::now();
    let bars = MultiProgress::new();
    let mut rows = Vec::new();
    let payload = args.payload;

    if wanted("emit") {
        let progress = Progress::start(&bars, "durable emit");
        let bytes = emit::event_bytes(payload)?;
        let raw = emit::raw_sled(&args.writers, &bytes, emit_for, &progress)?;
        let mut latencies = Vec::new();
        for streams in [1, args.streams.first().copied().unwrap_or(EMIT_STREAMS)] {
            let runs = emit::gundb(streams, &args.writers, payload, emit_for, &progress)?;
            for ((&writers, run), raw) in args.writers.iter().zip(&runs).zip(&raw) {
                let plural = if streams == 1 { "stream" } else { "streams" };
                let writer_plural = if writers == 1 { "writer" } else { "writers" };
                let mut row = Row::new(
                    "durable emit",
                    format!("{streams} {plural}, {writers} {writer_plural}"),
                    run.rate,
                    "events/s",
                    Better::Higher,
                )
                .against("raw sled, same bytes, flush + fsync", raw.rate);
                if streams == 1 && writers == 64 {
                    row = row.target("≥ 100k events/s at 64 writers", run.rate >= 100_000.0);
                    // Signing runs on the storage writer, between a group's batch and its
                    // fsync: its share of the run is what it costs the throughput at most.
                    let share = run.signing * 100.0;
                    latencies.push(
                        Row::new(
                            "durable emit",
                            "signing, share of the run (1 stream, 64 writers)",
                            share,
                            "%",
                            Better::Lower,
                        )
                        .target("≤ 15%", share <= 15.0),
                    );
                }
                if streams == 1 && writers == 16 {
                    let met = row.ratio.unwrap_or(0.0) >= 2.0;
                    row = row.target("≥ 2× raw sled at 16 writers", met);
                    for (name, quantile) in [("p50", 0.5), ("p99", 0.99), ("p99.9", 0.999)] {
                        let ms = |run: &emit::Run| run.latency.value_at_quantile(quantile) as f64 / 1e3;
                        let mut latency = Row::new(
                            "emit latency",
                            format!("{name}, 16 writers, 1 stream"),
                            ms(run),
                            "ms",
                            Better::Lower,
                        )
                        .against("raw sled, 16 writers", ms(raw));
                        if name == "p99" {
                            latency = latency.target("p99 ≤ 5 ms under load", ms(run) <= 5.0);
                        }
                        latencies.push(latency);
                    }
                }
                rows.push(row);
            }
        }
        rows.append(&mut latencies);
        progress.done(format!("{} runs of {:.1} s", args.writers.len() * 3, emit_for.as_secs_f64()));
    }

    if wanted("subscribe") {
        let progress = Progress::start(&bars, "subscribe");
        let writers = 64;
        let (without, with) = subscribe::emit_with_subscriber(writers, payload, emit_for, SUBSCRIBE_ROUNDS, &progress)?;
        let slower = (1.0 - with / without) * 100.0;
        rows.push(
            Row::new(
                "subscribe",
                format!("durable emit, 1 stream, {writers} writers, one site-wide subscriber"),
                with,
                "events/s",
                Better::Higher,
            )
            .against("no subscriber, same site, alternated", without)
            .target("≤ 10% below no subscriber", slower <= 10.0),
        );
        let (subscribed, pages) = subscribe::catch_up(events, payload, &progress)?;
        rows.push(
            Row::new(
                "subscribe",
                format!("catch-up from position 0, {events} events"),
                subscribed,
                "events/s",
                Better::Higher,
            )
            .against("the storage's log pages alone", pages)
            .target("≥ 200k events/s", subscribed >= 200_000.0),
        );
        progress.done(format!("{slower:.1}% slower with a subscriber; catch-up {:.0} k events/s", subscribed / 1e3));
    }

    if wanted("http") {
        let progress = Progress::start(&bars, "http");
        let writers = 64;
        let (http, in_process) = http::rates(writers, emit_for, &progress)?;
        rows.push(
            Row::new(
                "http",
                format!("{writers} connections posting a patch each to one gundb node, each waiting for its 201"),
                http,
                "writes/s",
                Better::Higher,
            )
            .against(format!("the same patches emitted in process, {writers} writers"), in_process)
            .target("≥ ½ of in-process emit", http >= in_process / 2.0),
        );
        progress.done(format!("{:.1} k writes/s over HTTP, {:.1} k in process", http / 1e3, in_process / 1e3));
    }

    if wanted("codec") {
        let progress = Progress::start(&bars, "codec");
        let (fresh, reused) = core::codec(usize::try_from(events * 10)?, payload, &progress)?;
        rows.push(
            Row::new("codec", format!("encode an event ({payload} B payload)"), fresh, "ops/s", Better::Higher)
                .against("into a reused buffer", reused),
        );
        progress.done(format!("{:.2} M encodes/s", fresh / 1e6));
    }

    if wanted("router") {
        let progress = Progress::start(&bars, "router");
        progress.say("the causal buffer alone");
        let [causal, reverse, random] = core::arrivals(usize::try_from(events)?);
        let alone = core::pending(&causal.1)?;
        for (name, arrivals) in [&reverse, &random] {
            let rate = core::pending(arrivals)?;
            rows.push(
                Row::new("router", format!("causal buffer alone, {name} arrival"), rate, "events/s", Better::Higher)
                    .against("causal arrival", alone),
            );
        }
        let actor_events = usize::try_from((events / 5).max(1_000))?;
        let [causal, reverse, random] = core::arrivals(actor_events);
        progress.say("through the router actor, causal arrival");
        let actor = core::router_actor(&causal.1)?;
        for (name, arrivals) in [&reverse, &random] {
            progress.say(format!("through the router actor, {name} arrival"));
            let rate = core::router_actor(arrivals)?;
            rows.push(
                Row::new("router", format!("router actor + sled, {name} arrival"), rate, "events/s", Better::Higher)
                    .against("causal arrival", actor),
            );
        }
        progress.done("done".into());
    }

    let baseline = if wanted("replication") || wanted("tcp") {
        let progress = Progress::start(&bars, "replication");
        let raw = replication::raw_sled_batches(events, &emit::event_bytes(payload)?, &progress)?;
        if wanted("replication") {
            // The mesh asked for, and one of 5 sites for its copies.
            for sites in [args.sites, 5].into_iter().collect::<std::collections::BTreeSet<_>>() {
                let mesh = replication::in_process_sites(sites, events, payload, &progress)?;
                let scenario = format!("{sites} sites in-process, until all converged");
                let row = Row::new("replication", scenario.clone(), mesh.rate, "events/s", Better::Higher)
                    .against("raw sled, batches of 256", raw);
                // The rate target is for 3 sites; each further site stores every event too.
                rows.push(if sites == 3 { row.target("≥ 50k events/s", mesh.rate >= 50_000.0) } else { row });
                if sites == 3 {
                    // Each receiving router verifies on its own thread: the busiest one's
                    // share of the catch-up is what verifying costs the throughput at most.
                    let share = mesh.verifying * 100.0;
                    rows.push(
                        Row::new(
                            "replication",
                            format!("{scenario}: verifying, share of the catch-up"),
                            share,
                            "%",
                            Better::Lower,
                        )
                        .target("≤ 15%", share <= 15.0),
                    );
                }
                rows.push(
                    Row::new(
                        "replication",
                        format!("{scenario}: received ÷ delivered"),
                        mesh.copies,
                        "×",
                        Better::Lower,
                    )
                    .target("≤ 1.3", mesh.copies <= 1.3),
                );
            }
        }
        progress.done("done".into());
        Some(raw)
    } else {
        None
    };

    if wanted("rejoin") {
        let progress = Progress::start(&bars, "rejoin");
        // What a site missed while cut off, at two sizes ten times apart.
        let (small, large) = if quick { (1_000, 10_000) } else { (10_000, 100_000) };
        let small_rate = rejoin::rate(small, payload, &progress)?;
        let large_rate = rejoin::rate(large, payload, &progress)?;
        let scenario =
            |missed: u64| format!("a site rejoining after {missed} events written elsewhere, until both hold all");
        rows.push(Row::new("rejoin", scenario(small), small_rate, "events/s", Better::Higher));
        // Linear: the time per event missed does not grow with how many were missed.
        let per_event = small_rate / large_rate;
        rows.push(
            Row::new("rejoin", scenario(large), large_rate, "events/s", Better::Higher)
                .against(format!("{small} events missed"), small_rate)
                .target("time per event missed ≤ 1.5× the smaller run's", per_event <= 1.5),
        );
        progress.done(format!("{:.1} k and {:.1} k events/s", small_rate / 1e3, large_rate / 1e3));
    }

    if let (true, Some(raw)) = (wanted("tcp"), baseline) {
        let progress = Progress::start(&bars, "tcp");
        let rate = tcp::two_nodes(events, &progress)?;
        rows.push(
            Row::new("replication", "2 gundb node processes over TCP", rate, "events/s", Better::Higher)
                .against("raw sled, batches of 256", raw)
                .target("≥ 100k events/s", rate >= 100_000.0),
        );
        progress.done(format!("{:.1} k events/s", rate / 1e3));
    }

    if wanted("memory") {
        let progress = Progress::start(&bars, "memory");
        let m = memory::measure(memory_events, payload, &progress)?;
        let mib = |bytes: u64| bytes as f64;
        rows.push(
            Row::new(
                "memory",
                format!("peak RSS, {memory_events} events written"),
                mib(m.rss_peak),
                "bytes",
                Better::Lower,
            )
            .against("RSS of the empty site", mib(m.rss_empty))
            .target("≤ 256 MiB", m.rss_peak <= 256 << 20),
        );
        let per_event = |bytes: u64| bytes as f64 / memory_events.max(1) as f64;
        let disk = Row::new("memory", "bytes on disk per event", per_event(m.disk), "B", Better::Lower)
            .against("encoded bytes per event", per_event(m.encoded));
        let ratio = disk.ratio.unwrap_or(f64::INFINITY);
        rows.push(disk.target("≤ 2× the encoded bytes", ratio <= 2.0));
        rows.push(
            Row::new(
                "memory",
                "bytes on disk per event, raw sled alone (same settings)",
                per_event(m.raw_sled_disk),
                "B",
                Better::Lower,
            )
            .against("encoded bytes per event", per_event(m.encoded)),
        );
        progress.done("done".into());
    }

    if wanted("streams") {
        let progress = Progress::start(&bars, "streams");
        let counts = match (args.streams.is_empty(), quick) {
            (false, _) => args.streams.clone(),
            (true, false) => vec![1_000, 10_000, 100_000, 1_000_000],
            (true, true) => vec![1_000, 10_000],
        };
        for &count in &counts {
            rows.append(&mut streams::rows(count, payload, &progress)?);
        }
        progress.done(format!("{} stream counts", counts.len()));
    }

    let data_dir = std::env::temp_dir();
    let report = Report {
        command: std::iter::once("gundb".to_owned()).chain(std::env::args().skip(1)).collect::<Vec<_>>().join(" "),
        date: httpdate::fmt_http_date(std::time::SystemTime::now()),
        machine: Machine::here(&data_dir),
        rows,
    };
    println!("\n{}", report.table());
    println!(
        "{} scenarios in {:.0} s",
        if args.only.is_empty() { SCENARIOS.len() } else { args.only.len() },
        started.elapsed().as_secs_f64()
    );
    for row in report.missed() {
        println!("missed: {} / {}", row.scenario, row.measure);
    }
    if let Some(path) = &args.json {
        report.write_json(path)?;
    }
    if let Some(path) = &args.svg {
        report.write_chart(path)?;
    }
    if let Some(path) = &args.markdown {
        report.write_markdown(path, args.svg.as_deref())?;
    }
    Ok(())
}
