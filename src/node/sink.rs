//! [`SinkNode`]: takes the frames of a peer's log in order, hands their events to the
//! site's router, and once they are durable records how far the peer's log is held here
//! and acknowledges it. What the peer says about our log goes to the source node of the
//! same connection.

use super::flow::{Intake, Take};
use super::source::{FromPeer, SourceNode, ToPeer};
use super::{Frame, NodeConfig};
use crate::clock::VectorClock;
use crate::codec;
use crate::event::Event;
use crate::id::{Lane, LogPos, Seq, SiteId};
use crate::limits;
use crate::router::{FrontierAdvanced, WaitFor};
use crate::site::Site;
use crate::storage::StorageError;
use crate::stream::clock_ms;
use actix::prelude::*;
use std::collections::HashMap;
use tokio::sync::{mpsc, oneshot};

/// Receives from one peer.
pub struct SinkNode {
    site: Site,
    receiver: Option<mpsc::Receiver<Vec<u8>>>,
    source: Addr<SourceNode>,
    config: NodeConfig,
    /// The peer's site, from its `Hello`.
    peer: Option<SiteId>,
    /// Which frames to take and how far the peer's log is durable here: `None` until the
    /// peer said hello.
    intake: Option<Intake>,
    /// [`HoldsPeerLog`] requests waiting for `durable` to reach their position.
    holds_waiters: Vec<(LogPos, oneshot::Sender<()>)>,
}

impl SinkNode {
    /// A sink reading `receiver` for `site`, telling `source` what the peer says.
    pub fn new(site: Site, receiver: mpsc::Receiver<Vec<u8>>, source: Addr<SourceNode>, config: NodeConfig) -> Self {
        Self { site, receiver: Some(receiver), source, config, peer: None, intake: None, holds_waiters: Vec::new() }
    }

    /// Asks the peer for its log after `after`.
    fn want(&self, after: LogPos) {
        self.source.do_send(ToPeer(Frame::Want { after }));
    }

    /// Says we hold the peer's log up to `upto`.
    fn ack(&self, upto: LogPos) {
        self.source.do_send(ToPeer(Frame::Ack { upto }));
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
        self.intake = Some(Intake::new(durable, clock_ms()));
        self.want(durable);
        true
    }

    /// A frame of the peer's log: taken when it follows on from the last one. Returns the
    /// id of the frame whose events go to the router, if any.
    fn events(&mut self, after: LogPos, last: LogPos) -> Result<Option<u64>, ()> {
        let Some(intake) = self.intake.as_mut().filter(|_| after < last) else {
            tracing::warn!(%after, %last, "a peer sent events out of protocol; closing the connection");
            return Err(());
        };
        match intake.frame(after, last, limits::UNACKED_FRAMES_MAX, clock_ms()) {
            Take::Events(id) => return Ok(Some(id)),
            // Sent again and durable: our `Ack` was lost.
            Take::Stale { ack: Some(upto) } => self.ack(upto),
            Take::Gap { want: Some(after) } => self.want(after),
            Take::Stale { ack: None } | Take::Gap { want: None } => {}
        }
        Ok(None)
    }

    /// The events of frame `id` are durable: record and acknowledge what is durable in order.
    fn settled(&mut self, id: u64) {
        let (Some(peer), Some(durable)) = (self.peer, self.intake.as_mut().and_then(|i| i.settled(id))) else {
            return;
        };
        // The events are durable; a position not recorded costs copies after a restart.
        match self.site.storage().set_replicated(peer, durable) {
            Ok(()) => {}
            // Backpressure, not a fault: the next frame's position is recorded instead.
            Err(StorageError::Busy { .. }) => tracing::debug!(%peer, "replication progress not recorded: storage busy"),
            Err(error) => tracing::warn!(%peer, %error, "recording replication progress failed"),
        }
        self.ack(durable);
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
            let resend_after = u64::try_from(sink.config.resend_after.as_millis()).unwrap_or(u64::MAX);
            if let Some(after) = sink.intake.as_mut().and_then(|i| i.want_again(clock_ms(), resend_after)) {
                sink.want(after);
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
            Frame::Events { after, last, events } => match self.events(after, last) {
                Ok(Some(id)) => (events, id),
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
        if !advanced.hello {
            return;
        }
        // The router dropped or refused an event (a full buffer, a busy stream): what is
        // not durable yet may be lost, so take the peer's log again from there.
        if let Some(after) = self.intake.as_mut().map(|intake| intake.reset(clock_ms())) {
            self.want(after);
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
        if self.intake.as_ref().is_some_and(|intake| intake.durable() >= upto) {
            let _ = waiter.send(());
        } else {
            self.holds_waiters.push((upto, waiter));
        }
        Box::pin(async move { done.await.is_ok() })
    }
}
