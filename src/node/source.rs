//! [`SourceNode`]: sends a peer what it lacks, in causal order, in bounded batches,
//! waiting for room on the link.

use super::catchup::{lacking, CausalMerge};
use super::{Frame, NodeConfig};
use crate::clock::VectorClock;
use crate::codec;
use crate::event::Event;
use crate::id::{Lane, Seq};
use crate::limits;
use crate::router::{BatchSent, FrontierAdvanced, GetDelivered, Listen};
use crate::site::Site;
use crate::storage::{Storage, StorageError};
use actix::prelude::*;
use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Instant;
use tokio::sync::mpsc;

type Reader = Box<dyn FnMut(Lane, Seq, usize) -> Result<Vec<Event>, StorageError>>;

/// What one frame carried: per lane, the first and last seq (a frame's events of a lane
/// are consecutive).
type Carried = Vec<(Lane, Seq, Seq)>;

fn carried(batch: &[Event]) -> Carried {
    let mut ranges: Carried = Vec::new();
    for event in batch {
        match ranges.iter_mut().find(|(lane, _, _)| *lane == event.lane) {
            Some((_, _, last)) => *last = event.seq,
            None => ranges.push((event.lane, event.seq, event.seq)),
        }
    }
    ranges
}

/// Moves `peer` past what a frame carried, lane by lane, but only where the frame starts
/// at or before the peer's next seq: past a gap (the peer rewound a refused event), the
/// frame proves nothing, and the gap must be sent again.
fn advance(peer: &mut VectorClock, carried: &Carried) {
    for &(lane, first, last) in carried {
        let has = peer.get(lane);
        if first <= has.next() && has < last {
            peer.set(lane, last);
        }
    }
}

/// Sends to one peer.
pub struct SourceNode {
    site: Site,
    sender: mpsc::Sender<Vec<u8>>,
    config: NodeConfig,
    /// What the peer has, as far as we know: its last `Hello` plus what we sent since.
    peer: Option<VectorClock>,
    /// The last frames sent, with when and what each carried: a periodic hello may not
    /// reflect them yet, since they may still be on their way.
    in_flight: VecDeque<(Instant, Carried)>,
    /// The round under way: what is left to send.
    round: Option<CausalMerge<Reader>>,
    /// The frontier moved (or the peer said hello) during the round: go again after it.
    again: bool,
    /// When our last `Hello` went out.
    last_hello: Option<Instant>,
}

impl SourceNode {
    /// A source sending `site`'s events to the peer through `sender`.
    pub fn new(site: Site, sender: mpsc::Sender<Vec<u8>>, config: NodeConfig) -> Self {
        Self {
            site,
            sender,
            config,
            peer: None,
            in_flight: VecDeque::new(),
            round: None,
            again: false,
            last_hello: None,
        }
    }

    /// Sends our `Hello`: who we are and what we hold; `resend` when we dropped or refused
    /// something the peer sent.
    fn hello(&mut self, resend: bool, ctx: &mut Context<Self>) {
        self.last_hello = Some(Instant::now());
        let (site, sender) = (self.site.clone(), self.sender.clone());
        let hello = async move {
            let frontier = site.router().send(GetDelivered).await.ok()?;
            let frame = codec::encode_frame(&Frame::Hello { site: site.id(), frontier, resend }).ok()?;
            sender.send(frame).await.ok()
        };
        ctx.spawn(hello.into_actor(self).map(|sent, _, ctx| {
            if sent.is_none() {
                ctx.stop(); // the link is gone
            }
        }));
    }

    /// Starts a round: what the peer lacks of our current frontier.
    fn start_round(&mut self, ctx: &mut Context<Self>) {
        if self.round.is_some() {
            self.again = true;
            return;
        }
        let Some(peer) = self.peer.clone() else { return };
        let site = self.site.clone();
        let plan = async move { site.frontier().await.ok() };
        ctx.wait(plan.into_actor(self).map(move |ours, node, ctx| {
            let Some(ours) = ours else { return ctx.stop() };
            let storage: Arc<dyn Storage> = Arc::clone(node.site.storage());
            let reader: Reader = Box::new(move |lane, after, limit| storage.lane_events(lane, after, limit));
            match CausalMerge::new(lacking(&ours, &peer), &ours, limits::CATCHUP_BATCH_MAX, reader) {
                Ok(merge) => {
                    node.round = Some(merge);
                    node.step(ctx);
                }
                Err(_) => ctx.stop(),
            }
        }));
    }

    /// Sends the next batch of the round, or ends it.
    fn step(&mut self, ctx: &mut Context<Self>) {
        let Some(round) = self.round.as_mut() else { return };
        let batch = match next_frame(round) {
            Ok(batch) => batch,
            Err(_) => return ctx.stop(),
        };
        if batch.is_empty() {
            self.round = None;
            if std::mem::take(&mut self.again) {
                self.start_round(ctx);
            }
            return;
        }
        let carried = carried(&batch);
        let Ok(frame) = codec::encode_frame(&Frame::Events(batch)) else { return ctx.stop() };
        let sender = self.sender.clone();
        let send = async move { sender.send(frame).await.is_ok() };
        ctx.spawn(send.into_actor(self).map(move |sent, node, ctx| {
            if !sent {
                return ctx.stop();
            }
            // Counting is best effort: a full router mailbox skips one count, not data.
            let _ = node.site.router().try_send(BatchSent);
            if let Some(peer) = node.peer.as_mut() {
                advance(peer, &carried);
            }
            if node.in_flight.len() == limits::IN_FLIGHT_FRAMES_MAX {
                node.in_flight.pop_front(); // forgotten: at worst sent again after a hello
            }
            node.in_flight.push_back((Instant::now(), carried));
            node.step(ctx);
        }));
    }
}

/// The next batch: up to [`limits::CATCHUP_BATCH_MAX`] events, closed once it holds
/// [`limits::CATCHUP_BATCH_BYTES`] of payload.
fn next_frame(round: &mut CausalMerge<Reader>) -> Result<Vec<Event>, StorageError> {
    let mut batch = Vec::new();
    let mut bytes = 0;
    while batch.len() < limits::CATCHUP_BATCH_MAX && bytes < limits::CATCHUP_BATCH_BYTES {
        let Some(event) = round.next_event()? else { break };
        bytes += event.payload.len() + event.clock.len() * 48 + 128;
        batch.push(event);
    }
    Ok(batch)
}

impl Actor for SourceNode {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.set_mailbox_capacity(limits::STREAM_MAILBOX_MAX);
        self.hello(false, ctx);
        if let Some(every) = self.config.hello_every {
            ctx.run_interval(every, |node, ctx| node.hello(false, ctx));
        }
        let router = self.site.router().clone();
        let me = ctx.address().recipient();
        ctx.spawn(async move { router.send(Listen(me)).await.is_ok() }.into_actor(self).map(|ok, _, ctx| {
            if !ok {
                ctx.stop();
            }
        }));
    }
}

/// The peer said what it has (through the sink node of the same connection).
pub struct PeerHello {
    /// What the peer holds.
    pub frontier: VectorClock,
    /// It dropped or refused some of what we sent: send again whatever it lacks.
    pub resend: bool,
}

impl Message for PeerHello {
    type Result = ();
}

impl Handler<PeerHello> for SourceNode {
    type Result = ();

    fn handle(&mut self, PeerHello { mut frontier, resend }: PeerHello, ctx: &mut Context<Self>) {
        // What the peer says it has is the truth, except for frames sent so recently that
        // they may still be on their way. Those older than that were lost; a peer that
        // dropped or refused something makes everything it lacks go again.
        let recent = Instant::now().checked_sub(self.config.in_flight_for());
        if resend {
            self.in_flight.clear();
        }
        while self.in_flight.front().is_some_and(|(sent, _)| recent.is_some_and(|recent| *sent < recent)) {
            self.in_flight.pop_front();
        }
        for (_, carried) in &self.in_flight {
            advance(&mut frontier, carried);
        }
        self.peer = Some(frontier);
        self.start_round(ctx);
    }
}

/// The peer sent us these events, so it holds them (and, lanes being contiguous, every
/// earlier event of their lanes): they are not worth sending back.
pub struct PeerHas(pub VectorClock);

impl Message for PeerHas {
    type Result = ();
}

impl Handler<PeerHas> for SourceNode {
    type Result = ();

    fn handle(&mut self, PeerHas(has): PeerHas, _: &mut Context<Self>) {
        if let Some(peer) = self.peer.as_mut() {
            peer.merge(&has);
        }
    }
}

impl Handler<FrontierAdvanced> for SourceNode {
    type Result = ();

    fn handle(&mut self, advanced: FrontierAdvanced, ctx: &mut Context<Self>) {
        if advanced.hello {
            self.hello(true, ctx);
        } else if let Some(every) = self.config.progress_hello_every() {
            // While events flow, the peer hears what we hold often, so that it does not
            // relay us what another site has sent us already.
            if self.last_hello.is_none_or(|last| last.elapsed() >= every) {
                self.hello(false, ctx);
            }
        }
        self.start_round(ctx);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::id::{SiteId, StreamId};

    #[test]
    fn a_frame_past_a_gap_does_not_advance_what_the_peer_holds() {
        let lane = Lane::new(SiteId::from_u128(1), StreamId::from_u128(1));
        let mut peer: VectorClock = [(lane, Seq(4))].into_iter().collect();
        advance(&mut peer, &vec![(lane, Seq(101), Seq(120))]);
        assert_eq!(peer.get(lane), Seq(4), "5 to 100 are still missing there");
        advance(&mut peer, &vec![(lane, Seq(5), Seq(9))]);
        assert_eq!(peer.get(lane), Seq(9));
        advance(&mut peer, &vec![(lane, Seq(3), Seq(7))]);
        assert_eq!(peer.get(lane), Seq(9), "an older frame moves nothing back");
    }

    #[test]
    fn a_frame_carries_one_range_per_lane() {
        let (a, b) = (
            Lane::new(SiteId::from_u128(1), StreamId::from_u128(1)),
            Lane::new(SiteId::from_u128(2), StreamId::from_u128(1)),
        );
        let batch: Vec<Event> = [(a, 3), (b, 1), (a, 4), (b, 2), (a, 5)]
            .into_iter()
            .map(|(lane, seq)| crate::testkit::event(u128::from(seq), lane, seq, &[], seq, 0))
            .collect();
        assert_eq!(carried(&batch), vec![(a, Seq(3), Seq(5)), (b, Seq(1), Seq(2))]);
    }
}
