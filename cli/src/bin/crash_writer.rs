//! `gundb-crash-writer`: the process the crash-loop test (`tests/crash.rs`) kills with
//! SIGKILL over and over (see `gundb_cli::crash_writer`). A test binary: built with the
//! `testing` feature only.

use clap::Parser;

#[derive(Parser)]
#[command(name = "gundb-crash-writer", about = "The process the crash-loop test kills again and again")]
struct Args {
    /// The site's data folder.
    #[arg(long)]
    data: std::path::PathBuf,
    /// The file each acknowledged write is appended to.
    #[arg(long)]
    acks: std::path::PathBuf,
    /// Fails a storage flush every few tens of milliseconds, so the site keeps healing
    /// (needs the `failpoints` feature).
    #[arg(long)]
    storage_faults: bool,
}

fn main() -> anyhow::Result<()> {
    gundb_cli::init_logs();
    let args = Args::parse();
    gundb_cli::crash_writer::run(args.data, args.acks, args.storage_faults)
}
