//! The `gundb` command line: `gundb demo` plays the partition story with three sites;
//! `gundb node` runs a site as a server; `gundb inspect` looks into a site's database;
//! `gundb bench` and `gundb throughput` measure.

use gundb_cli::{bench, demo, inspect, node, throughput};

use anyhow::Result;
use clap::{Parser, Subcommand};
use std::path::PathBuf;

/// mimalloc rather than the system's allocator: a write's buffers are allocated on the
/// site's thread and freed on the storage writer's, which glibc's arenas serialise on a
/// lock (emit at 64 writers: 65k → 94k events/s, docs/BENCHMARKS.md). Transparent huge
/// pages off: with them an empty site held 49 MiB instead of 9.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

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
    gundb_cli::init_logs();
    // `gundb bench` measures memory in child processes of this binary, started with this
    // variable set rather than a subcommand users would see.
    if let Some(child) = bench::child_from_env() {
        return child;
    }
    match Cli::parse().command {
        Command::Node(args) => node::run(args),
        Command::Bench(args) => bench::run(args),
        Command::Inspect(args) => inspect::run(args),
        Command::Demo { data, seed } => demo::run(data, seed),
        Command::Throughput { events, writers, data, no_fsync } => {
            throughput::run(events, writers.max(1), data, no_fsync)
        }
    }
}
