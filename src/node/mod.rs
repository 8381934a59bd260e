//! Nodes: moving events between sites. Each end of a connection has a [`SourceNode`],
//! which tells the peer what this site has and sends it what it lacks (catch-up, then
//! live), and a [`SinkNode`], which hands what arrives to this site's router.
//!
//! Catch-up and live streaming are one mechanism: the source node knows what the peer
//! has (its `Hello`, advanced by what was sent since) and, whenever this site's frontier
//! moves, sends the difference in causal order, in bounded batches, waiting for room on
//! the link. Because it sends whatever the site holds, not only the site's own writes,
//! a site relays: A heals C through B. A fresh `Hello` (on every connection, and
//! periodically) corrects what the source thinks the peer has, so lost frames are sent
//! again.

pub mod catchup;
mod sink;
mod source;
pub mod tcp;
pub mod transport;

pub use self::sink::SinkNode;
pub use self::source::SourceNode;

use crate::clock::VectorClock;
use crate::event::Event;
use crate::id::SiteId;
use crate::site::Site;
use actix::{Actor, Addr};
use serde::{Deserialize, Serialize};
use std::time::Duration;
use transport::Endpoint;

/// What travels between sites, encoded by [`crate::codec::encode_frame`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Frame {
    /// Who the sender is and what it holds: on connect, and again now and then.
    Hello {
        /// The sender's site.
        site: SiteId,
        /// Everything the sender's router has delivered to its streams (durable, or being
        /// made durable; a stream that refuses an event rewinds this and says hello again).
        frontier: VectorClock,
        /// The sender dropped or refused events it was sent: whatever the receiver sent
        /// that `frontier` lacks must go again, even what it sent a moment ago.
        resend: bool,
    },
    /// Events the receiver lacked, in causal order.
    Events(Vec<Event>),
}

/// Settings of a connection.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    /// How often the source node repeats its `Hello`; `None` only on connect.
    pub hello_every: Option<Duration>,
}

impl NodeConfig {
    /// How long a sent frame counts as still on its way: a periodic `Hello` that does not
    /// reflect it yet does not make it go again until then. Two hello intervals.
    pub fn in_flight_for(&self) -> Duration {
        self.hello_every.map_or(Duration::from_secs(2), |every| every * 2)
    }

    /// While this site's frontier moves, a `Hello` goes out at most this often (a tenth of
    /// the hello interval, at least 10 ms); `None` on quiet links.
    pub fn progress_hello_every(&self) -> Option<Duration> {
        self.hello_every.map(|every| (every / 10).max(Duration::from_millis(10)))
    }
}

impl Default for NodeConfig {
    fn default() -> Self {
        Self { hello_every: Some(Duration::from_secs(1)) }
    }
}

/// The two nodes of one end of a connection.
#[derive(Debug, Clone)]
pub struct Connection {
    /// Sends to the peer.
    pub source: Addr<SourceNode>,
    /// Receives from the peer.
    pub sink: Addr<SinkNode>,
}

/// Starts the source and sink nodes of `site` on `endpoint`. Call it on both sites with
/// the two ends of a link; stopping either node closes its half.
pub fn connect(site: &Site, endpoint: Endpoint, config: NodeConfig) -> Connection {
    let Endpoint { sender, receiver } = endpoint;
    let source = SourceNode::new(site.clone(), sender, config).start();
    let sink = SinkNode::new(site.clone(), receiver, source.clone()).start();
    Connection { source, sink }
}
