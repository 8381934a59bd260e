//! Nodes: moving events between sites. Each end of a connection has a [`SourceNode`],
//! which sends the peer this site's log, and a [`SinkNode`], which hands what arrives to
//! this site's router and acknowledges it once durable.
//!
//! Every site numbers the events it stores, its own and its peers', in the order they
//! became durable: its log ([`crate::storage::Storage::log_after`]), a causal order. A
//! site replicating from a peer keeps one [`LogPos`] for it: how far the peer's log is
//! durable here. On connect each side says who it is (`Hello`) and asks for the other's
//! log after that position (`Want`); the source then reads its log forward, a bounded
//! page per frame, and sends it in numbered frames (`Events`, with the positions they
//! cover). The sink acknowledges a frame (`Ack`) once everything in it and before it is
//! durable, and records the position, so what two sites exchange to resume is a number
//! whatever the number of streams. A frame that does not follow on from the last one (a
//! frame was lost) makes the sink ask again from where it is (`Want`); frames left
//! unacknowledged for [`NodeConfig::resend_after`] go again. Catch-up and live streaming
//! are one mechanism, and because a site's log holds what it got from others, a site
//! relays: A heals C through B. A peer is never sent its own events.
//!
//! In a mesh, relaying would send each event once per peer. So a `Want` carries a
//! [`Filter`]: per origin site, how far its events are held here, or not to send them at
//! all while this site has a live direct link from the origin ([`links::Links`]; live
//! means it hears us, see [`flow::Liveness`]). When such a link goes, the other peers are
//! asked for that origin's events again from where they were left, which moves on while
//! the link works ([`flow::Origins`]). Everything two sites exchange to resume is
//! O(origin sites), whatever the number of streams.

pub mod flow;
pub mod links;
mod sink;
mod source;
pub mod tcp;
pub mod transport;

pub use self::sink::{HoldsPeerLog, SinkNode};
pub use self::source::SourceNode;

use crate::attest::Attestation;
use crate::event::Event;
use crate::id::{LogPos, SiteId};
use crate::limits;
use crate::router::{FrontierAdvanced, Listen};
use crate::site::Site;
use actix::prelude::*;
use serde::{Deserialize, Serialize};
use std::time::Duration;
use transport::Endpoint;

/// What travels between sites, encoded by [`crate::codec::encode_frame`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Frame {
    /// Who the sender is: its first frame, and again every [`NodeConfig::hello_every`] so
    /// that a quiet link is not taken for dead.
    Hello {
        /// The sender's site.
        site: SiteId,
        /// How many `Want` and `Ack` frames the sender has had from the receiver on this
        /// connection: the receiver knows from it that the link works both ways, and only
        /// then leaves the sender's events to it (see [`flow::Origins`]).
        heard: u64,
        /// The end of the sender's log as the hello went: once the receiver holds the
        /// sender's events up to it, it holds everything the sender wrote before it heard
        /// the receiver's `heard`-th frame.
        head: LogPos,
    },
    /// Send your log after `after`, the events `filter` lets through: on connect, when
    /// what to leave out changes (a new `epoch`), and again when a frame was lost or an
    /// event refused.
    Want {
        /// Frames answering this `Want` carry it; earlier ones are dropped.
        epoch: u64,
        /// Where frames start.
        after: LogPos,
        /// Which events to send.
        filter: Filter,
    },
    /// The sender's log after `after` up to `last`, in log order. Events the receiver
    /// wrote itself or filtered out are left out, so `events` may be fewer than the
    /// positions covered.
    Events {
        /// The epoch of the `Want` the frame answers.
        epoch: u64,
        /// The position the frame follows on from.
        after: LogPos,
        /// The position of the frame's last event.
        last: LogPos,
        /// The events.
        events: Vec<Event>,
        /// The attestations covering them: their sites' signatures, each once.
        attestations: Vec<Attestation>,
    },
    /// The receiver's log is durable at the sender up to `upto`.
    Ack {
        /// The position acknowledged, with everything before it.
        upto: LogPos,
    },
}

/// Which events of its log a source sends a peer: those past what the peer holds of their
/// origin site. O(origins) bytes, whatever the number of streams.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Filter {
    /// How far the peer holds the events of origins not in `behind`.
    pub held: LogPos,
    /// Origins held less far (`Some`), or not to be sent at all (`None`: a direct link
    /// carries them), sorted by site; at most [`crate::limits::ORIGINS_MAX`].
    pub behind: Vec<(SiteId, Option<LogPos>)>,
}

impl Filter {
    /// Whether the event of `origin` at `pos` goes to the peer. Expects `behind` sorted.
    pub fn sends(&self, origin: SiteId, pos: LogPos) -> bool {
        match self.behind.binary_search_by_key(&origin, |(site, _)| *site) {
            Ok(at) => self.behind.get(at).and_then(|(_, held)| *held).is_some_and(|held| pos > held),
            Err(_) => pos > self.held,
        }
    }
}

/// Settings of a connection.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    /// How often the source node repeats its `Hello` on a quiet link (the TCP transport
    /// takes three missed ones for a dead peer); `None`: only on connect. Hellos also tell
    /// the peer that the link works both ways: without them no link counts as live, and
    /// every peer relays every origin's events (copies, never losses).
    pub hello_every: Option<Duration>,
    /// Frames unacknowledged for this long are sent again: they were lost, or the peer
    /// dropped them. Keep it above the time `limits::UNACKED_BYTES_MAX` takes to cross the
    /// slowest link, or a slow link carries frames twice (copies, never losses).
    pub resend_after: Duration,
}

impl NodeConfig {
    /// [`NodeConfig::resend_after`] in milliseconds, the unit of the `flow` structs.
    fn resend_after_ms(&self) -> u64 {
        u64::try_from(self.resend_after.as_millis()).unwrap_or(u64::MAX)
    }
}

impl Default for NodeConfig {
    fn default() -> Self {
        Self { hello_every: Some(limits::HELLO_EVERY_DEFAULT), resend_after: limits::RESEND_AFTER_DEFAULT }
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

/// Has `site`'s router tell `actor` each time the durable frontier moves; stops the actor
/// if the router is gone.
fn listen<A>(site: &Site, actor: &A, ctx: &mut Context<A>)
where
    A: Actor<Context = Context<A>> + Handler<FrontierAdvanced>,
{
    let (router, me) = (site.router().clone(), ctx.address().recipient());
    ctx.spawn(async move { router.send(Listen(me)).await.is_ok() }.into_actor(actor).map(|ok, _, ctx| {
        if !ok {
            ctx.stop();
        }
    }));
}

/// Starts the source and sink nodes of `site` on `endpoint`. Call it on both sites with
/// the two ends of a link; stopping either node closes its half.
pub fn connect(site: &Site, endpoint: Endpoint, config: NodeConfig) -> Connection {
    let Endpoint { sender, receiver, peer } = endpoint;
    let source = SourceNode::new(site.clone(), sender, config.clone()).start();
    let sink = SinkNode::new(site.clone(), receiver, source.clone(), config).proven_peer(peer).start();
    Connection { source, sink }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What two sites exchange to resume does not grow with the number of streams: a
    /// `Hello`, a `Want` naming five origins and an `Ack` are a few bytes each, whatever
    /// either site holds.
    #[test]
    fn control_frames_are_a_few_bytes_whatever_the_sites_hold() {
        let five = (1..=5).map(|n| (SiteId::from_u128(n), Some(LogPos(u64::MAX)))).collect();
        let frames = [
            Frame::Hello { site: SiteId::random(), heard: u64::MAX, head: LogPos(u64::MAX) },
            Frame::Want {
                epoch: u64::MAX,
                after: LogPos(u64::MAX),
                filter: Filter { held: LogPos(u64::MAX), behind: five },
            },
            Frame::Ack { upto: LogPos(u64::MAX) },
        ];
        for frame in frames {
            let bytes = crate::codec::encode_frame(&frame).unwrap();
            assert!(bytes.len() <= 256, "{frame:?} is {} bytes", bytes.len());
        }
    }
}
