//! [`SourceNode`]: sends a peer this site's log from where the peer asks, in numbered
//! frames of bounded size, at most [`limits::UNACKED_FRAMES_MAX`] of them and
//! [`limits::UNACKED_BYTES_MAX`] unacknowledged: what a connection holds in flight is
//! bounded whatever the number of streams.

use super::flow::Window;
use super::{Filter, Frame, NodeConfig};
use crate::codec;
use crate::event::Event;
use crate::id::{LogPos, SiteId};
use crate::limits;
use crate::router::{BatchSent, FrontierAdvanced};
use crate::site::Site;
use crate::storage::{StorageError, WantedPage};
use crate::stream::clock_ms;
use actix::prelude::*;
use std::collections::HashSet;
use tokio::sync::mpsc;

/// Sends to one peer.
pub struct SourceNode {
    site: Site,
    sender: mpsc::Sender<Vec<u8>>,
    config: NodeConfig,
    /// The peer's site, once it said hello: its own events are not sent back to it.
    peer: Option<SiteId>,
    /// Where the next frame starts, and what is unacknowledged.
    window: Window,
    /// The peer's latest `Want`: its epoch, and which events it wants.
    epoch: u64,
    filter: Filter,
    /// `Want` and `Ack` frames had from the peer, told it in each `Hello`.
    heard: u64,
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
            window: Window::default(),
            epoch: 0,
            filter: Filter::default(),
            heard: 0,
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
        if self.sending {
            return;
        }
        let Some(after) = self.window.next_after(limits::UNACKED_FRAMES_MAX, limits::UNACKED_BYTES_MAX) else {
            return;
        };
        // No more than a frame takes: the rest would be decoded for nothing. What the peer
        // does not want (its own events, origins it has from elsewhere) storage passes
        // over, unread where it can.
        let (peer, filter) = (self.peer, &self.filter);
        let wanted = |origin: SiteId, pos: LogPos| Some(origin) != peer && filter.sends(origin, pos);
        let storage = self.site.storage();
        let page = match storage.log_wanted(after, limits::CATCHUP_BATCH_MAX, limits::CATCHUP_BATCH_BYTES, &wanted) {
            Ok(page) => page,
            Err(error) => {
                // The next notice or resend check tries again.
                tracing::warn!(%error, "reading the log for a peer failed");
                return;
            }
        };
        let mut attestations = Vec::new();
        let mut carried = HashSet::new();
        let mut unread = None;
        let (events, last) = fill_frame(page, |event| {
            if unread.is_some() || !carried.insert((event.lane.site, event.attestation)) {
                return 0;
            }
            match storage.attestation(event.lane.site, event.attestation) {
                Ok(Some(attestation)) => {
                    let size = attestation.size();
                    attestations.push(attestation);
                    size
                }
                Ok(None) => {
                    unread.get_or_insert(StorageError::Corrupt(format!(
                        "event {} of {} names attestation {} of its site, which is not stored",
                        event.id, event.lane, event.attestation
                    )));
                    0
                }
                Err(error) => {
                    unread.get_or_insert(error);
                    0
                }
            }
        });
        if let Some(error) = unread {
            tracing::error!(%error, %after, "reading the attestations of a frame failed; trying again later");
            return;
        }
        if last == after {
            return; // nothing new: the router's next notice says when there is
        }
        let frame = Frame::Events { epoch: self.epoch, after, last, events, attestations };
        let bytes = match codec::encode_frame(&frame) {
            Ok(bytes) => bytes,
            Err(error) => {
                tracing::error!(%error, %after, "a frame of the log did not encode; closing the connection");
                return ctx.stop();
            }
        };
        self.window.sent(last, bytes.len(), clock_ms());
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

    /// Says who we are, and how much we heard from the peer.
    fn hello(&mut self, ctx: &mut Context<Self>) {
        let head = self.site.storage().log_end();
        self.send_frame(&Frame::Hello { site: self.site.id(), heard: self.heard, head }, ctx);
    }

    /// Sends again whatever has gone unacknowledged for `resend_after`: lost, or dropped
    /// by the peer.
    fn resend_overdue(&mut self, ctx: &mut Context<Self>) {
        let resend_after = self.config.resend_after_ms();
        if self.window.rewind_if_overdue(clock_ms(), resend_after) {
            tracing::debug!("frames unacknowledged: sending them again");
            self.step(ctx);
        }
    }
}

/// The events of `page` for one frame, and the last position the frame covers: the
/// page's last, or the event that brings the frame to [`limits::CATCHUP_BATCH_BYTES`]
/// with `attestation`, the bytes of the attestation an event brings along (0 when it is
/// in the frame already).
fn fill_frame(page: WantedPage, mut attestation: impl FnMut(&Event) -> usize) -> (Vec<Event>, LogPos) {
    let mut events = Vec::new();
    let mut bytes = 0;
    for (pos, event) in page.events {
        bytes += event.size() + attestation(&event);
        events.push(event);
        if bytes >= limits::CATCHUP_BATCH_BYTES {
            return (events, pos);
        }
    }
    (events, page.last)
}

impl Actor for SourceNode {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.set_mailbox_capacity(limits::STREAM_MAILBOX_MAX);
        self.hello(ctx);
        if let Some(every) = self.config.hello_every {
            ctx.run_interval(every, Self::hello);
        }
        // Looked at four times per resend time, so a lost frame goes again within 1.25 of
        // it; and until the peer says what it wants, our `Hello` may have been lost.
        ctx.run_interval(self.config.resend_after / 4, move |node, ctx| {
            if node.window.awaits_want() {
                node.hello(ctx);
            }
            node.resend_overdue(ctx);
        });
        super::listen(&self.site, self, ctx);
    }
}

/// What the peer said, passed on by the sink node of the same connection.
#[derive(Debug, Clone)]
pub enum FromPeer {
    /// Its site: its own events are not sent back to it.
    Hello(SiteId),
    /// It wants our log after a position, filtered: sending starts (again) there.
    Want {
        /// The epoch frames answering it carry.
        epoch: u64,
        /// Where sending starts.
        after: LogPos,
        /// Which events to send.
        filter: Filter,
    },
    /// It holds our log up to this position.
    Ack(LogPos),
}

impl Message for FromPeer {
    type Result = ();
}

impl Handler<FromPeer> for SourceNode {
    type Result = ();

    fn handle(&mut self, said: FromPeer, ctx: &mut Context<Self>) {
        if matches!(said, FromPeer::Want { .. } | FromPeer::Ack(_)) {
            self.heard += 1;
            // The peer learns at once that its first `Want` arrived, so it can leave our
            // events to this link from the start; later hellos keep it informed.
            if self.heard == 1 && self.config.hello_every.is_some() {
                self.hello(ctx);
            }
        }
        match said {
            FromPeer::Hello(site) => self.peer = Some(site),
            // A `Want` older than the one followed (a link delayed or duplicated it): the
            // peer drops frames of its epoch, so following it would send nothing it takes.
            FromPeer::Want { epoch, .. } if epoch < self.epoch => return,
            FromPeer::Want { epoch, after, mut filter } => {
                if filter.behind.len() > limits::ORIGINS_MAX {
                    tracing::warn!(
                        origins = filter.behind.len(),
                        "a peer's filter names too many origins; closing the connection"
                    );
                    return ctx.stop();
                }
                filter.behind.sort_unstable_by_key(|(site, _)| *site);
                (self.epoch, self.filter) = (epoch, filter);
                self.window.want(after);
            }
            FromPeer::Ack(upto) => self.window.ack(upto),
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
    fn a_frame_ends_at_its_byte_limit_or_covers_the_whole_page() {
        let stream = StreamId::from_u128(7);
        let site = SiteId::from_u128(1);
        let event = |seq| crate::testkit::event(u128::from(seq), Lane::new(site, stream), seq, &[], seq, 0);
        let page = WantedPage { events: vec![(LogPos(11), event(1)), (LogPos(13), event(2))], last: LogPos(20) };
        let (events, last) = fill_frame(page.clone(), |_| 0);
        assert_eq!((events.len(), last), (2, LogPos(20)), "the positions nobody wanted are covered too");
        let (events, last) = fill_frame(page, |_| limits::CATCHUP_BATCH_BYTES);
        assert_eq!(events.iter().map(|e| e.seq).collect::<Vec<_>>(), [Seq(1)]);
        assert_eq!(last, LogPos(11), "the frame ends with the event that fills it");
    }
}
