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
