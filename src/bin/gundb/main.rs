//! The `gundb` command line: `gundb demo` plays the partition story with three sites;
//! `gundb node` runs a site as a server; `gundb inspect` looks into a site's database;
//! `gundb bench` and `gundb throughput` measure.

mod bench;
mod crash_writer;
mod demo;
mod inspect;
mod node;
mod throughput;

use anyhow::Result;
use clap::{Parser, Subcommand};
use std::path::PathBuf;

#[derive(Parser)]
#[command(name = "gundb", version, about = "Replicated event sourcing on actix and sled")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Three sites write, get partitioned, write on both sides, heal, and converge.
    Demo {
        /// Keep the three sled databases in DIR/a, DIR/b, DIR/c (default: temporary).
        #[arg(long)]
        data: Option<PathBuf>,
        /// Seed of the links' delays and duplicates.
        #[arg(long, default_value_t = 1)]
        seed: u64,
    },
    /// Run a site as a server: replicate with peers over TCP, serve JSON documents over HTTP.
    Node(node::NodeArgs),
    /// Measure throughput, latency and memory against this machine's own limits.
    Bench(bench::BenchArgs),
    /// Look into a site's database (read only): its site id and sizes, its streams, one
    /// stream's events and view.
    Inspect(inspect::InspectArgs),
    /// The process the crash-loop test kills again and again (see tests/crash.rs).
    #[command(hide = true)]
    CrashWriter {
        #[arg(long)]
        data: PathBuf,
        #[arg(long)]
        acks: PathBuf,
        /// Fails a storage flush every few tens of milliseconds, so the site keeps healing
        /// (needs the `failpoints` feature).
        #[arg(long)]
        storage_faults: bool,
    },
    /// The memory scenario's child process (run by `gundb bench`).
    #[command(hide = true)]
    BenchMemoryChild {
        #[arg(long)]
        events: u64,
        #[arg(long)]
        payload: usize,
    },
    /// The streams scenario's child process, one per stream count (run by `gundb bench`).
    #[command(hide = true)]
    BenchStreamsChild {
        #[arg(long)]
        streams: u64,
        #[arg(long)]
        writers: u64,
        #[arg(long)]
        payload: usize,
    },
    /// Write events into one stream with concurrent writers; print the view and throughput.
    Throughput {
        /// Events to write in all.
        #[arg(long, default_value_t = 5_000)]
        events: u64,
        /// Concurrent writers; each waits for its write to be durable before the next.
        #[arg(long, default_value_t = 16)]
        writers: u64,
        /// Keep the sled database in this folder (default: a temporary folder).
        #[arg(long)]
        data: Option<PathBuf>,
        /// Acknowledge after sled's flush only, without fsync (survives a process crash,
        /// not power loss).
        #[arg(long)]
        no_fsync: bool,
    },
}

fn main() -> Result<()> {
    // Logs go to stderr, at `info` unless RUST_LOG says otherwise.
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let colour = std::io::IsTerminal::is_terminal(&std::io::stderr());
    tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_ansi(colour).init();
    match Cli::parse().command {
        Command::Node(args) => node::run(args),
        Command::Bench(args) => bench::run(args),
        Command::Inspect(args) => inspect::run(args),
        Command::CrashWriter { data, acks, storage_faults } => crash_writer::run(data, acks, storage_faults),
        Command::BenchMemoryChild { events, payload } => bench::memory_child(events, payload),
        Command::BenchStreamsChild { streams, writers, payload } => bench::streams_child(streams, writers, payload),
        Command::Demo { data, seed } => demo::run(data, seed),
        Command::Throughput { events, writers, data, no_fsync } => {
            throughput::run(events, writers.max(1), data, no_fsync)
        }
    }
}
