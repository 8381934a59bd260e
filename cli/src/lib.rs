//! The code of the `gundb` command line, shared by its binaries: `gundb` (node, demo,
//! bench, inspect, throughput) and, with the `testing` feature, `gundb-crash-writer` (the
//! process the crash-loop test kills).

pub mod bench;
#[cfg(feature = "testing")]
pub mod crash_writer;
pub mod demo;
pub mod inspect;
pub mod node;
pub mod throughput;

/// Logs to stderr, at `info` unless `RUST_LOG` says otherwise, coloured on a terminal.
pub fn init_logs() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let colour = std::io::IsTerminal::is_terminal(&std::io::stderr());
    tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_ansi(colour).init();
}
