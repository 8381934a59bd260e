//! [`SinkNode`]: decodes the frames a peer sends and hands their events to the site's
//! router; a peer's `Hello` goes to the source node of the same connection.

use super::source::{PeerHello, SourceNode};
use super::Frame;
use crate::codec::{self, CodecError};
use crate::site::Site;
use actix::prelude::*;
use tokio::sync::mpsc;

/// Receives from one peer.
pub struct SinkNode {
    site: Site,
    receiver: Option<mpsc::Receiver<Vec<u8>>>,
    source: Addr<SourceNode>,
    frames: u64,
    /// Why the last bad frame was refused (the connection closed on it).
    refused: Option<CodecError>,
}

impl SinkNode {
    /// A sink reading `receiver` for `site`, telling `source` what the peer has.
    pub fn new(site: Site, receiver: mpsc::Receiver<Vec<u8>>, source: Addr<SourceNode>) -> Self {
        Self { site, receiver: Some(receiver), source, frames: 0, refused: None }
    }
}

/// What a frame was.
enum Received {
    Hello,
    Events,
    Bad(CodecError),
}

impl Actor for SinkNode {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        let Some(mut receiver) = self.receiver.take() else { return };
        let (site, source) = (self.site.clone(), self.source.clone());
        let me = ctx.address();
        // One frame at a time: the router's answer is awaited before the next frame is
        // read, so a fast peer fills the link and then waits (backpressure).
        let read = async move {
            while let Some(bytes) = receiver.recv().await {
                let received = match codec::decode_frame::<Frame>(&bytes) {
                    Ok(Frame::Hello { frontier, .. }) => {
                        if source.send(PeerHello(frontier)).await.is_err() {
                            break;
                        }
                        Received::Hello
                    }
                    Ok(Frame::Events(events)) => {
                        if site.receive(events).await.is_err() {
                            break;
                        }
                        Received::Events
                    }
                    Err(error) => Received::Bad(error),
                };
                if me.send(Count(received)).await.is_err() {
                    break;
                }
            }
        };
        ctx.spawn(read.into_actor(self).map(|(), _, ctx| ctx.stop()));
    }
}

/// Counts a frame (sent by the node's own reading loop).
struct Count(Received);

impl Message for Count {
    type Result = ();
}

impl Handler<Count> for SinkNode {
    type Result = ();

    fn handle(&mut self, Count(received): Count, ctx: &mut Context<Self>) {
        self.frames += 1;
        if let Received::Bad(error) = received {
            // A peer that sends garbage is not one to trust with the rest of the stream.
            self.refused = Some(error);
            ctx.stop();
        }
    }
}
