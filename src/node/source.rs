//! [`SourceNode`]: sends a peer what it lacks, in causal order, in bounded batches,
//! waiting for room on the link.

use super::catchup::{lacking, CausalMerge};
use super::{Frame, NodeConfig};
use crate::clock::VectorClock;
use crate::codec;
use crate::event::Event;
use crate::id::{Lane, Seq};
use crate::limits;
use crate::router::{BatchSent, FrontierAdvanced, Listen};
use crate::site::Site;
use crate::storage::{Storage, StorageError};
use actix::prelude::*;
use std::sync::Arc;
use tokio::sync::mpsc;

type Reader = Box<dyn FnMut(Lane, Seq, usize) -> Result<Vec<Event>, StorageError>>;

/// Sends to one peer.
pub struct SourceNode {
    site: Site,
    sender: mpsc::Sender<Vec<u8>>,
    config: NodeConfig,
    /// What the peer has, as far as we know: its last `Hello` plus what we sent since.
    peer: Option<VectorClock>,
    /// The round under way: what is left to send.
    round: Option<CausalMerge<Reader>>,
    /// The frontier moved (or the peer said hello) during the round: go again after it.
    again: bool,
}

impl SourceNode {
    /// A source sending `site`'s events to the peer through `sender`.
    pub fn new(site: Site, sender: mpsc::Sender<Vec<u8>>, config: NodeConfig) -> Self {
        Self { site, sender, config, peer: None, round: None, again: false }
    }

    /// Sends our `Hello`: who we are and what we have.
    fn hello(&mut self, ctx: &mut Context<Self>) {
        let (site, sender) = (self.site.clone(), self.sender.clone());
        let hello = async move {
            let frontier = site.frontier().await.ok()?;
            let frame = codec::encode_frame(&Frame::Hello { site: site.id(), frontier }).ok()?;
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
        let slots: Vec<(Lane, Seq)> = batch.iter().map(|e| (e.lane, e.seq)).collect();
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
                for (lane, seq) in slots {
                    if peer.get(lane) < seq {
                        peer.set(lane, seq);
                    }
                }
            }
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
        self.hello(ctx);
        if let Some(every) = self.config.hello_every {
            ctx.run_interval(every, |node, ctx| node.hello(ctx));
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
pub struct PeerHello(pub VectorClock);

impl Message for PeerHello {
    type Result = ();
}

impl Handler<PeerHello> for SourceNode {
    type Result = ();

    fn handle(&mut self, PeerHello(frontier): PeerHello, ctx: &mut Context<Self>) {
        // What the peer says it has is the truth: frames we sent may have been lost.
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
            self.hello(ctx);
        }
        self.start_round(ctx);
    }
}
