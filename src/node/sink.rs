//! [`SinkNode`]: decodes the frames a peer sends and hands their events to the site's
//! router; a peer's `Hello` goes to the source node of the same connection.

use super::source::{PeerHas, PeerHello, SourceNode};
use super::Frame;
use crate::codec;
use crate::site::Site;
use actix::prelude::*;
use tokio::sync::mpsc;

/// Receives from one peer.
pub struct SinkNode {
    site: Site,
    receiver: Option<mpsc::Receiver<Vec<u8>>>,
    source: Addr<SourceNode>,
}

impl SinkNode {
    /// A sink reading `receiver` for `site`, telling `source` what the peer has.
    pub fn new(site: Site, receiver: mpsc::Receiver<Vec<u8>>, source: Addr<SourceNode>) -> Self {
        Self { site, receiver: Some(receiver), source }
    }
}

impl Actor for SinkNode {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        let Some(mut receiver) = self.receiver.take() else { return };
        let (site, source) = (self.site.clone(), self.source.clone());
        // One frame at a time: the router answers `Receive` once its backlog is within its
        // bound, and only then is the next frame read, so a fast peer fills the link and
        // then waits (backpressure). A frame that does not decode ends the connection: a
        // peer that sends garbage is not one to trust with the rest of the stream.
        let read = async move {
            while let Some(bytes) = receiver.recv().await {
                let handed = match codec::decode_frame::<Frame>(&bytes) {
                    Ok(Frame::Hello { frontier, resend, .. }) => {
                        source.send(PeerHello { frontier, resend }).await.is_ok()
                    }
                    Ok(Frame::Events(events)) => {
                        // The peer holds what it sends us: its source must not echo it back.
                        let sent = events.iter().map(|e| (e.lane, e.seq)).collect();
                        source.send(PeerHas(sent)).await.is_ok() && site.receive(events).await.is_ok()
                    }
                    Err(error) => {
                        tracing::warn!(%error, "closing a connection on a frame that does not decode");
                        false
                    }
                };
                if !handed {
                    break;
                }
            }
        };
        ctx.spawn(read.into_actor(self).map(|(), _, ctx| ctx.stop()));
    }
}
