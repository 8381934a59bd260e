#![doc = include_str!("../README.md")]
//!
//! # Layout
//!
//! Pure core (no actix, no sled, no wall clock): [`id`], [`clock`], [`event`], [`order`],
//! [`codec`], [`view`], [`attest`] (signed lanes), [`doc`] (the JSON document stream type)
//! and [`stream::Ledger`]. Shells: [`storage`] (the only sled user), [`stream`] (the actix
//! actor), [`router`] (one per site), [`site`] with its [`handle`] on a stream that
//! survives passivation and the healer that reopens failed storage, [`subscription`]
//! (site-wide subscriptions from a position), [`node`] (replication over links and TCP)
//! and [`keys`] (a site's signing and link keys); `http` (the HTTP API, feature `http`).
//! [`error`] holds the one error type every other converts into; [`limits`] every bound;
//! `testkit` (feature `testing`) generates seeded histories for tests and benchmarks. The `gundb` binary
//! (node, demo, bench, inspect) is the workspace's `cli` package.

pub mod attest;
pub mod clock;
pub mod codec;
pub mod doc;
pub mod error;
pub mod event;
pub mod handle;
mod heal;
#[cfg(feature = "http")]
pub mod http;
pub mod id;
pub mod keys;
pub mod limits;
pub mod node;
pub mod order;
mod rng;
pub mod router;
pub mod site;
pub mod storage;
pub mod stream;
pub mod subscription;
#[cfg(any(test, feature = "testing"))]
pub mod testkit;
pub mod view;

pub use attest::Attestation;
pub use clock::{Causality, VectorClock};
pub use error::{Cause, Error};
pub use event::{Dependencies, Event, EventMeta, OrderKey};
pub use handle::StreamHandle;
pub use id::{EventId, Lane, LogPos, Seq, SiteId, StreamId};
pub use order::{sort_events, OrderError};
pub use router::Passivation;
pub use site::{Site, SiteConfig, SiteError};
pub use stream::{
    Decide, DecideError, Deliver, DeliverBatch, Delivered, Emit, Emitted, GetView, History, HistoryPage, StreamActor,
    StreamConfig, StreamError, Subscribe, ViewReply,
};
pub use view::{Stream, View};
