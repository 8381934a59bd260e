//! [`SourceNode`]: sends a peer this site's log from where the peer asks, in numbered
//! frames of bounded size, at most [`limits::UNACKED_FRAMES_MAX`] of them and
//! [`limits::UNACKED_BYTES_MAX`] unacknowledged: what a connection holds in flight is
//! bounded whatever the number of streams.

use super::{Frame, NodeConfig};
use crate::codec;
use crate::event::Event;
use crate::id::{LogPos, SiteId};
use crate::limits;
use crate::router::{BatchSent, FrontierAdvanced};
use crate::site::Site;
use actix::prelude::*;
use std::collections::VecDeque;
use std::time::Instant;
use tokio::sync::mpsc;

/// Sends to one peer.
pub struct SourceNode {
    site: Site,
    sender: mpsc::Sender<Vec<u8>>,
    config: NodeConfig,
    /// The peer's site, once it said hello: its own events are not sent back to it.
    peer: Option<SiteId>,
    /// Where the next frame starts: `None` until the peer says what it wants.
    cursor: Option<LogPos>,
    /// How far the peer holds our log, as it last said (by `Want` or `Ack`).
    acked: Option<LogPos>,
    /// Frames sent and not acknowledged: the last position of each, when it went, and its
    /// size.
    unacked: VecDeque<(LogPos, Instant, usize)>,
    /// The bytes of the frames in `unacked`.
    unacked_bytes: usize,
    /// A frame is being handed to the link: the next waits for it.
    sending: bool,
}

impl SourceNode {
    /// A source sending `site`'s log to the peer through `sender`.
    pub fn new(site: Site, sender: mpsc::Sender<Vec<u8>>, config: NodeConfig) -> Self {
        Self {
            site,
            sender,
            config,
            peer: None,
            cursor: None,
            acked: None,
            unacked: VecDeque::new(),
            unacked_bytes: 0,
            sending: false,
        }
    }

    /// Queues `frame` on the link, stopping the node if the link is gone.
    fn send_frame(&mut self, frame: &Frame, ctx: &mut Context<Self>) {
        let bytes = match codec::encode_frame(frame) {
            Ok(bytes) => bytes,
            Err(error) => {
                tracing::error!(%error, "a frame did not encode; closing the connection");
                return ctx.stop();
            }
        };
        let sender = self.sender.clone();
        ctx.spawn(async move { sender.send(bytes).await.is_ok() }.into_actor(self).map(|sent, _, ctx| {
            if !sent {
                ctx.stop(); // the link is gone
            }
        }));
    }

    /// Sends the next frame of the log if the peer wants one, the window has room and the
    /// log has more; called again as each frame is handed to the link.
    fn step(&mut self, ctx: &mut Context<Self>) {
        let Some(after) = self.cursor else { return };
        let window_full =
            self.unacked.len() >= limits::UNACKED_FRAMES_MAX || self.unacked_bytes >= limits::UNACKED_BYTES_MAX;
        if self.sending || window_full {
            return;
        }
        let page = match self.site.storage().log_after(after, limits::CATCHUP_BATCH_MAX) {
            Ok(page) => page,
            Err(error) => {
                // The next notice or resend check tries again.
                tracing::warn!(%error, "reading the log for a peer failed");
                return;
            }
        };
        let (events, last) = fill_frame(page.events, after, self.peer);
        if last == after {
            return; // nothing new: the router's next notice says when there is
        }
        let frame = Frame::Events { after, last, events };
        let bytes = match codec::encode_frame(&frame) {
            Ok(bytes) => bytes,
            Err(error) => {
                tracing::error!(%error, %after, "a frame of the log did not encode; closing the connection");
                return ctx.stop();
            }
        };
        self.cursor = Some(last);
        self.unacked.push_back((last, Instant::now(), bytes.len()));
        self.unacked_bytes += bytes.len();
        self.sending = true;
        let sender = self.sender.clone();
        let send = async move { sender.send(bytes).await.is_ok() };
        ctx.spawn(send.into_actor(self).map(|sent, node, ctx| {
            node.sending = false;
            if !sent {
                return ctx.stop();
            }
            // Counting is best effort: a full router mailbox skips one count, not data.
            let _ = node.site.router().try_send(BatchSent);
            node.step(ctx);
        }));
    }

    /// Forgets the frames sent: they go again from the cursor.
    fn forget_unacked(&mut self) {
        self.unacked.clear();
        self.unacked_bytes = 0;
    }

    /// Sends again whatever has gone unacknowledged for `resend_after`: lost, or dropped
    /// by the peer.
    fn resend_overdue(&mut self, ctx: &mut Context<Self>) {
        let Some(&(_, sent, _)) = self.unacked.front() else { return };
        if sent.elapsed() < self.config.resend_after {
            return;
        }
        tracing::debug!(acked = ?self.acked, frames = self.unacked.len(), "frames unacknowledged: sending them again");
        self.cursor = self.acked;
        self.forget_unacked();
        self.step(ctx);
    }
}

/// The frame that follows `after`: the page's events, without those `peer` wrote, cut at
/// [`limits::CATCHUP_BATCH_BYTES`] of payload (after the event that fills it). Returns
/// the events kept and the position of the last event covered.
fn fill_frame(page: Vec<Event>, after: LogPos, peer: Option<SiteId>) -> (Vec<Event>, LogPos) {
    let mut events = Vec::new();
    let mut bytes = 0;
    let mut last = after;
    for event in page {
        last = LogPos(last.0 + 1);
        if Some(event.lane.site) != peer {
            bytes += event.payload.len() + event.clock.len() * 48 + 128;
            events.push(event);
        }
        if bytes >= limits::CATCHUP_BATCH_BYTES {
            break;
        }
    }
    (events, last)
}

impl Actor for SourceNode {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.set_mailbox_capacity(limits::STREAM_MAILBOX_MAX);
        let hello = Frame::Hello { site: self.site.id() };
        self.send_frame(&hello, ctx);
        if let Some(every) = self.config.hello_every {
            let hello = hello.clone();
            ctx.run_interval(every, move |node, ctx| node.send_frame(&hello, ctx));
        }
        // Looked at four times per resend time, so a lost frame goes again within 1.25 of
        // it; and until the peer says what it wants, our `Hello` may have been lost.
        ctx.run_interval(self.config.resend_after / 4, move |node, ctx| {
            if node.cursor.is_none() {
                node.send_frame(&hello, ctx);
            }
            node.resend_overdue(ctx);
        });
        super::listen(&self.site, self, ctx);
    }
}

/// What the peer said, passed on by the sink node of the same connection.
#[derive(Debug, Clone, Copy)]
pub enum FromPeer {
    /// Its site: its own events are not sent back to it.
    Hello(SiteId),
    /// It wants our log after this position: sending starts (again) there.
    Want(LogPos),
    /// It holds our log up to this position.
    Ack(LogPos),
}

impl Message for FromPeer {
    type Result = ();
}

impl Handler<FromPeer> for SourceNode {
    type Result = ();

    fn handle(&mut self, said: FromPeer, ctx: &mut Context<Self>) {
        match said {
            FromPeer::Hello(site) => self.peer = Some(site),
            FromPeer::Want(after) => {
                // Frames on their way are superseded: the peer ignores what does not
                // follow on from `after`.
                self.cursor = Some(after);
                self.acked = Some(after);
                self.forget_unacked();
            }
            FromPeer::Ack(upto) => {
                if self.acked.is_some_and(|acked| acked >= upto) {
                    return;
                }
                self.acked = Some(upto);
                while let Some(&(last, _, bytes)) = self.unacked.front() {
                    if last > upto {
                        break;
                    }
                    self.unacked.pop_front();
                    self.unacked_bytes -= bytes;
                }
            }
        }
        self.step(ctx);
    }
}

/// A frame for the peer from the sink node of the same connection (`Want`, `Ack`).
pub struct ToPeer(pub Frame);

impl Message for ToPeer {
    type Result = ();
}

impl Handler<ToPeer> for SourceNode {
    type Result = ();

    fn handle(&mut self, ToPeer(frame): ToPeer, ctx: &mut Context<Self>) {
        self.send_frame(&frame, ctx);
    }
}

impl Handler<FrontierAdvanced> for SourceNode {
    type Result = ();

    fn handle(&mut self, _: FrontierAdvanced, ctx: &mut Context<Self>) {
        // More of the log may be durable.
        self.step(ctx);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::id::{Lane, Seq, StreamId};

    #[test]
    fn a_frame_leaves_out_the_peers_own_events_but_covers_their_positions() {
        let (ours, theirs) = (SiteId::from_u128(1), SiteId::from_u128(2));
        let stream = StreamId::from_u128(7);
        let page: Vec<Event> = [(ours, 1), (theirs, 1), (ours, 2)]
            .into_iter()
            .map(|(site, seq)| crate::testkit::event(u128::from(seq), Lane::new(site, stream), seq, &[], seq, 0))
            .collect();
        let (events, last) = fill_frame(page, LogPos(10), Some(theirs));
        assert_eq!(last, LogPos(13), "three positions covered");
        assert_eq!(
            events.iter().map(|e| (e.lane.site, e.seq)).collect::<Vec<_>>(),
            vec![(ours, Seq(1)), (ours, Seq(2))]
        );
    }
}
