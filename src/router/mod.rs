//! The router: holds incoming events until their dependencies are delivered at this site.
//!
//! [`Pending`] is its pure core, the causal buffer. The router actor that feeds it from
//! sink nodes and hands ready events to stream actors comes with sites.

mod pending;

pub use self::pending::{Equivocation, Insert, Pending, PendingLimits, PendingStats};
