//! [`SinkNode`]: takes the frames of a peer's log in order, hands their events to the
//! site's router, and once they are durable records how far the peer's log is held here
//! and acknowledges it. What the peer says about our log goes to the source node of the
//! same connection.

use super::flow::{Intake, Liveness, Origins, Take, WritesHeld};
use super::links::LinkUp;
use super::source::{FromPeer, SourceNode, ToPeer};
use super::{Frame, NodeConfig};
use crate::clock::VectorClock;
use crate::codec;
use crate::event::Event;
use crate::id::{Lane, LogPos, Seq, SiteId};
use crate::limits;
use crate::router::{retain_named, FrontierAdvanced, Receive, Verified, WaitFor};
use crate::site::Site;
use crate::storage::StorageError;
use crate::stream::clock_ms;
use actix::prelude::*;
use futures::StreamExt as _;
use std::collections::{BTreeSet, HashMap};
use tokio::sync::{mpsc, oneshot};

/// Receives from one peer.
pub struct SinkNode {
    site: Site,
    receiver: Option<mpsc::Receiver<Vec<u8>>>,
    source: Addr<SourceNode>,
    config: NodeConfig,
    /// The peer's site, from its `Hello`.
    peer: Option<SiteId>,
    /// The peer's site as the transport proved it, which its `Hello` must name.
    proven: Option<SiteId>,
    /// Which frames to take and how far the peer's log is durable here, and what is held
    /// of it per origin: `None` until the peer said hello.
    intake: Option<(Intake, Origins)>,
    /// The peer counted live in the site's links while the link works both ways.
    link: Option<LinkUp>,
    /// `Want` and `Ack` frames sent the peer, and whether it hears them.
    sent: u64,
    liveness: Liveness,
    /// [`HoldsPeerLog`] requests waiting for `durable` to reach their position.
    holds_waiters: Vec<(LogPos, oneshot::Sender<()>)>,
    /// [`HoldsPeerWrites`] requests.
    writes_waiters: WritesHeld<oneshot::Sender<bool>>,
    /// Skipped origins whose position is being advanced.
    advancing: BTreeSet<SiteId>,
    /// This sink, for the site's links.
    me: Option<Recipient<HoldsPeerWrites>>,
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
            proven: None,
            intake: None,
            link: None,
            sent: 0,
            liveness: Liveness::default(),
            holds_waiters: Vec::new(),
            writes_waiters: WritesHeld::default(),
            advancing: BTreeSet::new(),
            me: None,
        }
    }

    /// Requires the peer's `Hello` to name `peer`, the site its transport proved (see
    /// [`super::transport::Endpoint::peer`]).
    #[must_use]
    pub fn proven_peer(mut self, peer: Option<SiteId>) -> Self {
        self.proven = peer;
        self
    }

    /// Asks the peer for its log after `after`, under the current epoch and filter.
    fn want(&mut self, after: LogPos) {
        let Some((intake, origins)) = &self.intake else { return };
        self.sent += 1;
        self.source.do_send(ToPeer(Frame::Want { epoch: intake.epoch(), after, filter: origins.filter() }));
    }

    /// Asks the peer afresh: what to leave out changed, or the connection is new.
    fn restart(&mut self) {
        if let Some((intake, origins)) = &mut self.intake {
            let start = origins.start();
            intake.restart(start, clock_ms());
            self.want(start);
        }
    }

    /// Says we hold the peer's log up to `upto`.
    fn ack(&mut self, upto: LogPos) {
        self.sent += 1;
        self.source.do_send(ToPeer(Frame::Ack { upto }));
    }

    /// The peer said who it is: ask for its log from where ours of it ends.
    fn hello(&mut self, site: SiteId, heard: u64, head: LogPos) -> bool {
        if self.proven.is_some_and(|proven| proven != site) {
            tracing::warn!(proven = ?self.proven, named = %site, "a peer named another site than the one it proved; closing the connection");
            return false;
        }
        match self.peer {
            Some(known) if known == site => {
                // A keepalive. The peer's events are left to this link (other peers are
                // asked not to relay them) while it hears us: a link cut one way is not
                // taken for live.
                let grace = self.config.resend_after_ms();
                let live = self.liveness.hello(clock_ms(), heard, self.sent, grace);
                match (live, self.link.is_some(), &self.me) {
                    (true, false, Some(me)) => self.link = Some(self.site.links().up(site, me.clone())),
                    (false, true, _) => self.link = None,
                    _ => {}
                }
                self.writes_waiters.hello(heard, head);
                self.wake_writes_waiters();
                return true;
            }
            Some(known) => {
                tracing::warn!(%known, %site, "a peer changed its site id mid-connection; closing it");
                return false;
            }
            None => {}
        }
        let held = match self.site.storage().replicated(site) {
            Ok(held) => held,
            Err(error) => {
                tracing::warn!(%site, %error, "reading how far a peer's log is held failed; closing the connection");
                return false;
            }
        };
        self.peer = Some(site);
        self.source.do_send(FromPeer::Hello(site));
        let mut origins = Origins::new(site, &held);
        origins.skip(&self.site.links().live());
        self.intake = Some((Intake::default(), origins));
        self.restart();
        self.liveness.opened(clock_ms(), self.sent);
        true
    }

    /// A frame of the peer's log: taken when it follows on from the last one. Returns the
    /// id of the frame whose events go to the router, if any.
    fn events(&mut self, epoch: u64, after: LogPos, last: LogPos) -> Result<Option<u64>, ()> {
        let Some((intake, _)) = self.intake.as_mut().filter(|_| after < last) else {
            tracing::warn!(%after, %last, "a peer sent events out of protocol; closing the connection");
            return Err(());
        };
        match intake.frame(epoch, after, last, limits::UNACKED_FRAMES_MAX, clock_ms()) {
            Take::Events(id) => return Ok(Some(id)),
            // Sent again and durable: our `Ack` was lost.
            Take::Stale { ack: Some(upto) } => self.ack(upto),
            Take::Gap { want: Some(after) } | Take::Superseded { want: Some(after) } => self.want(after),
            Take::Stale { ack: None } | Take::Gap { want: None } | Take::Superseded { want: None } => {}
        }
        Ok(None)
    }

    /// The events of frame `id` are durable: record and acknowledge what is durable in order.
    fn settled(&mut self, id: u64) {
        let Some((intake, origins)) = self.intake.as_mut() else { return };
        let Some(durable) = intake.settled(id) else { return };
        origins.durable(durable);
        self.record();
        self.ack(durable);
        self.wake_writes_waiters();
    }

    /// Records how far the peer's log is held here, and answers the requests that reached
    /// their position.
    fn record(&mut self) {
        let (Some(peer), Some((_, origins))) = (self.peer, self.intake.as_ref()) else { return };
        // The events are durable; a position not recorded costs copies after a restart.
        match self.site.storage().set_replicated(peer, &origins.record()) {
            Ok(()) => {}
            // Backpressure, not a fault: the next frame's position is recorded instead.
            Err(StorageError::Busy { .. }) => tracing::debug!(%peer, "replication progress not recorded: storage busy"),
            Err(error) => tracing::warn!(%peer, %error, "recording replication progress failed"),
        }
        let (reached, waiting) =
            std::mem::take(&mut self.holds_waiters).into_iter().partition(|(upto, _)| origins.holds(*upto));
        self.holds_waiters = waiting;
        for (_, waiter) in reached {
            let _: Result<(), ()> = waiter.send(()); // a requester that went away needs no answer
        }
    }

    /// Answers the [`HoldsPeerWrites`] requests whose reported log end is held here (the
    /// peer's own events are never behind, so `upto` holds them).
    fn wake_writes_waiters(&mut self) {
        let Some((_, origins)) = &self.intake else { return };
        for waiter in self.writes_waiters.reached(origins.upto()) {
            let _: Result<(), bool> = waiter.send(true); // a requester that went away needs no answer
        }
    }

    /// Moves on the positions of skipped origins: each origin's own link is asked whether
    /// it holds everything the origin wrote before now; if so, every event of the origin
    /// in the peer's log as far as it is held now is durable here, so asking again after
    /// the link goes starts there rather than where the origin was first skipped.
    fn advance_skipped(&mut self, ctx: &mut Context<Self>) {
        let Some((_, origins)) = &self.intake else { return };
        let upto = origins.upto();
        for origin in origins.skipped_behind() {
            let Some(sink) = self.site.links().sink(origin).filter(|_| !self.advancing.contains(&origin)) else {
                continue;
            };
            self.advancing.insert(origin);
            let held = async move { sink.send(HoldsPeerWrites).await.unwrap_or(false) };
            ctx.spawn(held.into_actor(self).map(move |held, sink, _| {
                sink.advancing.remove(&origin);
                if let (true, Some((_, origins))) = (held, &mut sink.intake) {
                    origins.advance(origin, upto);
                    sink.record();
                }
            }));
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
        let Some(receiver) = self.receiver.take() else { return };
        let me = ctx.address();
        // Frames are opened (decoded, their signatures verified) on blocking threads, up to
        // `SINK_FRAMES_AHEAD` ahead of the one the router is taking, and handed on in
        // order: the router's thread, which every frame from every peer goes through,
        // neither decodes nor verifies, and does not wait for either. One frame at a time
        // goes to the router, which answers once its backlog is within its bound; only
        // then is the next one read, so a fast peer fills the link and then waits
        // (backpressure). A frame that does not decode ends the connection: a peer that
        // sends garbage is not one to trust with the rest of the stream.
        let frames = futures::stream::unfold(receiver, |mut receiver| async move {
            receiver.recv().await.map(|bytes| (bytes, receiver))
        })
        .map(|bytes| tokio::task::spawn_blocking(move || Got::open(&bytes)))
        .buffered(limits::SINK_FRAMES_AHEAD);
        let read = async move {
            futures::pin_mut!(frames);
            while let Some(opened) = frames.next().await {
                let got = match opened {
                    Ok(Ok(got)) => got,
                    Ok(Err(error)) => {
                        tracing::warn!(%error, "closing a connection on a frame that does not decode");
                        break;
                    }
                    Err(_) => break, // the runtime is shutting down
                };
                if !matches!(me.send(got).await, Ok(true)) {
                    break;
                }
            }
        };
        ctx.spawn(read.into_actor(self).map(|(), _, ctx| ctx.stop()));
        // A `Want` can be lost like any frame: one unanswered for `resend_after` goes again.
        ctx.run_interval(self.config.resend_after / 4, |sink, _| {
            let resend_after = sink.config.resend_after_ms();
            if let Some(after) = sink.intake.as_mut().and_then(|(i, _)| i.want_again(clock_ms(), resend_after)) {
                sink.want(after);
            }
            if sink.link.is_some() && !sink.liveness.check(clock_ms(), resend_after) {
                sink.link = None; // silent: the peer's events are asked of every link again
            }
        });
        // Links to other peers coming and going change which origins to ask this one for.
        let changes = futures::stream::unfold(self.site.links().watch(), |mut watch| async move {
            watch.changed().await.ok()?;
            Some((LinksChanged, watch))
        });
        ctx.add_message_stream(changes);
        ctx.run_interval(self.config.resend_after, Self::advance_skipped);
        self.me = Some(ctx.address().recipient());
        super::listen(&self.site, self, ctx);
    }
}

/// A frame from the peer, opened; answered false when the connection should close.
struct Got {
    frame: Frame,
    /// For an `Events` frame, which of its events' ids and attestations hold.
    verified: Option<Verified>,
}

impl Got {
    /// Decodes `bytes` and, for an `Events` frame, checks its events' ids and verifies
    /// the attestations they name (only those are worth a signature check; the rest are
    /// dropped). Runs on a blocking thread.
    fn open(bytes: &[u8]) -> Result<Self, codec::CodecError> {
        let mut frame = codec::decode_frame::<Frame>(bytes)?;
        let verified = match &mut frame {
            Frame::Events { events, attestations, .. } => {
                retain_named(events, attestations);
                Some(Verified::of(events, attestations))
            }
            _ => None,
        };
        Ok(Self { frame, verified })
    }
}

impl Message for Got {
    type Result = bool;
}

impl Handler<Got> for SinkNode {
    type Result = ResponseActFuture<Self, bool>;

    fn handle(&mut self, Got { frame, verified }: Got, _: &mut Context<Self>) -> Self::Result {
        let ((events, attestations), id) = match frame {
            Frame::Hello { site, heard, head } => return Box::pin(fut::ready(self.hello(site, heard, head))),
            Frame::Want { epoch, after, filter } => {
                self.source.do_send(FromPeer::Want { epoch, after, filter });
                return Box::pin(fut::ready(true));
            }
            Frame::Ack { upto } => {
                self.source.do_send(FromPeer::Ack(upto));
                return Box::pin(fut::ready(true));
            }
            Frame::Events { epoch, after, last, events, attestations } => match self.events(epoch, after, last) {
                Ok(Some(id)) => ((events, attestations), id),
                Ok(None) => return Box::pin(fut::ready(true)),
                Err(()) => return Box::pin(fut::ready(false)),
            },
        };
        let target = durable_target(&events);
        let router = self.site.router().clone();
        let handed = router.send(Receive { events, attestations, verified });
        let handed = async move { handed.await.is_ok() };
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
        if let Some(after) = self.intake.as_mut().and_then(|(intake, _)| intake.reset(clock_ms())) {
            self.want(after);
        }
    }
}

/// The set of live links changed.
struct LinksChanged;

impl Message for LinksChanged {
    type Result = ();
}

impl Handler<LinksChanged> for SinkNode {
    type Result = ();

    fn handle(&mut self, _: LinksChanged, _: &mut Context<Self>) {
        let live = self.site.links().live();
        if self.intake.as_mut().is_some_and(|(_, origins)| origins.skip(&live)) {
            self.restart();
        }
    }
}

/// Resolves once this sink holds the peer's log up to the position, the events of every
/// origin (durable here, and recorded with the next commit); false if the sink stopped
/// first, or [`limits::SINK_WAITERS_MAX`] requests wait already. Events of origins a direct link carries count once that link has carried them,
/// which the sink checks every [`NodeConfig::resend_after`].
pub struct HoldsPeerLog(pub LogPos);

impl Message for HoldsPeerLog {
    type Result = bool;
}

impl Handler<HoldsPeerLog> for SinkNode {
    type Result = ResponseFuture<bool>;

    fn handle(&mut self, HoldsPeerLog(upto): HoldsPeerLog, _: &mut Context<Self>) -> Self::Result {
        let (waiter, done) = oneshot::channel();
        if self.intake.as_ref().is_some_and(|(_, origins)| origins.holds(upto)) {
            let _ = waiter.send(());
        } else {
            // Requesters that gave up wait no more; past the bound, the answer is no.
            self.holds_waiters.retain(|(_, waiter)| !waiter.is_closed());
            if self.holds_waiters.len() >= limits::SINK_WAITERS_MAX {
                return Box::pin(fut::ready(false));
            }
            self.holds_waiters.push((upto, waiter));
        }
        Box::pin(async move { done.await.is_ok() })
    }
}

/// Resolves true once this sink holds every event its peer wrote before the request came
/// (false if it cannot tell: no link yet, or too many requests waiting). The sinks of a
/// site's other links ask it, to know how far they may count the peer's events held.
pub struct HoldsPeerWrites;

impl Message for HoldsPeerWrites {
    type Result = bool;
}

impl Handler<HoldsPeerWrites> for SinkNode {
    type Result = ResponseFuture<bool>;

    fn handle(&mut self, _: HoldsPeerWrites, _: &mut Context<Self>) -> Self::Result {
        let Some(durable) = self.intake.as_ref().map(|(intake, _)| intake.durable()) else {
            return Box::pin(fut::ready(false));
        };
        // A frame the peer must hear: the log end in its first hello after hearing it was
        // read after this request came.
        self.ack(durable);
        let (waiter, done) = oneshot::channel();
        if self.writes_waiters.ask(self.sent, waiter).is_err() {
            return Box::pin(fut::ready(false)); // too many waiting
        }
        Box::pin(async move { done.await.unwrap_or(false) })
    }
}
