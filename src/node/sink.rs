//! [`SinkNode`]: takes the frames of a peer's log in order, hands their events to the
//! site's router, and once they are durable records how far the peer's log is held here
//! and acknowledges it. What the peer says about our log goes to the source node of the
//! same connection.

use super::source::{FromPeer, SourceNode, ToPeer};
use super::{Frame, NodeConfig};
use crate::clock::VectorClock;
use crate::codec;
use crate::event::Event;
use crate::id::{Lane, LogPos, Seq, SiteId};
use crate::limits;
use crate::router::{FrontierAdvanced, WaitFor};
use crate::site::Site;
use actix::prelude::*;
use std::collections::{HashMap, VecDeque};
use std::time::Instant;
use tokio::sync::{mpsc, oneshot};

/// Receives from one peer.
pub struct SinkNode {
    site: Site,
    receiver: Option<mpsc::Receiver<Vec<u8>>>,
    source: Addr<SourceNode>,
    config: NodeConfig,
    /// The peer's site, from its `Hello`.
    peer: Option<SiteId>,
    /// Where the next frame must start: the end of the last frame taken.
    expected: LogPos,
    /// How far the peer's log is durable here, recorded and acknowledged.
    durable: LogPos,
    /// The position last asked for, and when: a run of frames past a gap asks once, and
    /// an answer that does not come is asked for again after `resend_after`.
    wanted: Option<(LogPos, Instant)>,
    /// Frames handed to the router and not yet durable, in order: an id, the frame's last
    /// position, and whether it is durable.
    settling: VecDeque<(u64, LogPos, bool)>,
    next_id: u64,
    /// [`HoldsPeerLog`] requests waiting for `durable` to reach their position.
    holds_waiters: Vec<(LogPos, oneshot::Sender<()>)>,
}

impl SinkNode {
    /// A sink reading `receiver` for `site`, telling `source` what the peer says.
    pub fn new(site: Site, receiver: mpsc::Receiver<Vec<u8>>, source: Addr<SourceNode>, config: NodeConfig) -> Self {
        Self {
            site,
            receiver: Some(receiver),
            source,
            config,
            peer: None,
            expected: LogPos(0),
            durable: LogPos(0),
            wanted: None,
            settling: VecDeque::new(),
            next_id: 0,
            holds_waiters: Vec::new(),
        }
    }

    /// Asks the peer for its log after `after`.
    fn want(&mut self, after: LogPos) {
        self.wanted = Some((after, Instant::now()));
        self.source.do_send(ToPeer(Frame::Want { after }));
    }

    /// The peer said who it is: ask for its log from where ours of it ends.
    fn hello(&mut self, site: SiteId) -> bool {
        match self.peer {
            Some(known) if known == site => return true, // a keepalive
            Some(known) => {
                tracing::warn!(%known, %site, "a peer changed its site id mid-connection; closing it");
                return false;
            }
            None => {}
        }
        let durable = match self.site.storage().replicated(site) {
            Ok(durable) => durable,
            Err(error) => {
                tracing::warn!(%site, %error, "reading how far a peer's log is held failed; closing the connection");
                return false;
            }
        };
        self.peer = Some(site);
        self.source.do_send(FromPeer::Hello(site));
        (self.expected, self.durable) = (durable, durable);
        self.want(durable);
        true
    }

    /// A frame of the peer's log: taken when it follows on from the last one. Returns the
    /// events to hand to the router and the id of their frame, if any.
    fn events(&mut self, after: LogPos, last: LogPos, events: Vec<Event>) -> Result<Option<(u64, Vec<Event>)>, ()> {
        if self.peer.is_none() || last <= after {
            tracing::warn!(%after, %last, "a peer sent events out of protocol; closing the connection");
            return Err(());
        }
        if last <= self.expected {
            // Sent again: held already. If it is durable, our `Ack` was lost: say it again.
            if last <= self.durable {
                self.source.do_send(ToPeer(Frame::Ack { upto: self.durable }));
            }
            return Ok(None);
        }
        if after > self.expected || self.settling.len() >= limits::UNACKED_FRAMES_MAX {
            // A frame was lost (or the peer sends past its window): ask again from here.
            if self.wanted.is_none_or(|(wanted, _)| wanted != self.expected) {
                self.want(self.expected);
            }
            return Ok(None);
        }
        self.expected = last;
        self.wanted = None;
        let id = self.next_id;
        self.next_id += 1;
        self.settling.push_back((id, last, false));
        Ok(Some((id, events)))
    }

    /// The events of frame `id` are durable: record and acknowledge what is durable in order.
    fn settled(&mut self, id: u64) {
        let Some(frame) = self.settling.iter_mut().find(|(frame, _, _)| *frame == id) else { return };
        frame.2 = true;
        let before = self.durable;
        while let Some(&(_, last, true)) = self.settling.front() {
            self.durable = last;
            self.settling.pop_front();
        }
        let (Some(peer), true) = (self.peer, self.durable > before) else { return };
        if let Err(error) = self.site.storage().set_replicated(peer, self.durable) {
            // The events are durable; forgetting where they end costs copies after a restart.
            tracing::warn!(%peer, %error, "recording replication progress failed");
        }
        self.source.do_send(ToPeer(Frame::Ack { upto: self.durable }));
        let durable = self.durable;
        let (reached, waiting) =
            std::mem::take(&mut self.holds_waiters).into_iter().partition(|(upto, _)| *upto <= durable);
        self.holds_waiters = waiting;
        for (_, waiter) in reached {
            let _: Result<(), ()> = waiter.send(()); // a requester that went away needs no answer
        }
    }
}

/// What a frame's events wait for to be durable here: each lane's last seq among them,
/// leaving out the events the router drops as malformed.
fn durable_target(events: &[Event]) -> VectorClock {
    let mut lanes: HashMap<Lane, Seq> = HashMap::new();
    for event in events.iter().filter(|event| crate::router::well_formed(event)) {
        let seq = lanes.entry(event.lane).or_default();
        *seq = (*seq).max(event.seq);
    }
    lanes.into_iter().collect()
}

impl Actor for SinkNode {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        let Some(mut receiver) = self.receiver.take() else { return };
        let me = ctx.address();
        // One frame at a time: the router answers `Receive` once its backlog is within its
        // bound, and only then is the next frame read, so a fast peer fills the link and
        // then waits (backpressure). A frame that does not decode ends the connection: a
        // peer that sends garbage is not one to trust with the rest of the stream.
        let read = async move {
            while let Some(bytes) = receiver.recv().await {
                let frame = match codec::decode_frame::<Frame>(&bytes) {
                    Ok(frame) => frame,
                    Err(error) => {
                        tracing::warn!(%error, "closing a connection on a frame that does not decode");
                        break;
                    }
                };
                if !matches!(me.send(Got(frame)).await, Ok(true)) {
                    break;
                }
            }
        };
        ctx.spawn(read.into_actor(self).map(|(), _, ctx| ctx.stop()));
        // A `Want` can be lost like any frame: one unanswered for `resend_after` goes again.
        ctx.run_interval(self.config.resend_after / 4, |sink, _| {
            if let Some((after, asked)) = sink.wanted {
                if asked.elapsed() >= sink.config.resend_after {
                    sink.want(after);
                }
            }
        });
        super::listen(&self.site, self, ctx);
    }
}

/// A frame from the peer; answered false when the connection should close.
struct Got(Frame);

impl Message for Got {
    type Result = bool;
}

impl Handler<Got> for SinkNode {
    type Result = ResponseActFuture<Self, bool>;

    fn handle(&mut self, Got(frame): Got, _: &mut Context<Self>) -> Self::Result {
        let (events, id) = match frame {
            Frame::Hello { site } => return Box::pin(fut::ready(self.hello(site))),
            Frame::Want { after } => {
                self.source.do_send(FromPeer::Want(after));
                return Box::pin(fut::ready(true));
            }
            Frame::Ack { upto } => {
                self.source.do_send(FromPeer::Ack(upto));
                return Box::pin(fut::ready(true));
            }
            Frame::Events { after, last, events } => match self.events(after, last, events) {
                Ok(Some((id, events))) => (events, id),
                Ok(None) => return Box::pin(fut::ready(true)),
                Err(()) => return Box::pin(fut::ready(false)),
            },
        };
        let target = durable_target(&events);
        let (site, router) = (self.site.clone(), self.site.router().clone());
        let handed = async move { site.receive(events).await.is_ok() };
        Box::pin(handed.into_actor(self).map(move |handed, sink, ctx| {
            if handed {
                let durable = router.send(WaitFor(target));
                ctx.spawn(durable.into_actor(&*sink).map(move |result, sink, _| {
                    if let Ok(Ok(())) = result {
                        sink.settled(id);
                    }
                }));
            }
            handed
        }))
    }
}

impl Handler<FrontierAdvanced> for SinkNode {
    type Result = ();

    fn handle(&mut self, advanced: FrontierAdvanced, _: &mut Context<Self>) {
        if advanced.hello && self.peer.is_some() {
            // The router dropped or refused an event (a full buffer, a busy stream): what
            // is not durable yet may be lost, so take the peer's log again from there.
            self.settling.clear();
            self.expected = self.durable;
            self.want(self.durable);
        }
    }
}

/// Resolves once this sink holds the peer's log up to the position (durable here, and
/// recorded with the next commit); false if the sink stopped first.
pub struct HoldsPeerLog(pub LogPos);

impl Message for HoldsPeerLog {
    type Result = bool;
}

impl Handler<HoldsPeerLog> for SinkNode {
    type Result = ResponseFuture<bool>;

    fn handle(&mut self, HoldsPeerLog(upto): HoldsPeerLog, _: &mut Context<Self>) -> Self::Result {
        let (waiter, done) = oneshot::channel();
        if self.durable >= upto {
            let _ = waiter.send(());
        } else {
            self.holds_waiters.push((upto, waiter));
        }
        Box::pin(async move { done.await.is_ok() })
    }
}
