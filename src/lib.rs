#![doc = include_str!("../README.md")]
//!
//! # Layout
//!
//! Pure core (no actix, no sled, no wall clock): [`id`], [`clock`], [`event`], [`order`],
//! [`codec`], [`view`], and [`stream::Ledger`]. Shells: [`storage`] (the only sled user)
//! and [`stream`] (the actix actor), [`router`] (one per site), [`site`] with its
//! [`handle`] on a stream that survives passivation, [`node`] (replication) and [`keys`] (a
//! site's link key). [`limits`] holds every bound; [`testkit`] generates
//! seeded histories for tests and benchmarks.

pub mod attest;
pub mod clock;
pub mod codec;
pub mod doc;
pub mod error;
pub mod event;
pub mod handle;
mod heal;
pub mod http;
pub mod id;
pub mod keys;
pub mod limits;
pub mod node;
pub mod order;
pub mod router;
pub mod site;
pub mod storage;
pub mod stream;
pub mod subscription;
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
