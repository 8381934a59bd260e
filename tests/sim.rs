//! Deterministic simulation of the pure core: 3 to 5 sites in a full mesh, each a router
//! buffer (`Pending`), stream ledgers with their folds, a site log with a durable part
//! (events become durable, and visible to the router's durable frontier, at a flush),
//! writes that depend on other streams, and replication as the nodes do it, with their own
//! decision structs (`node::flow`: `Window` at each source; `Intake`, `Origins`,
//! `Liveness` and `WritesHeld` at each sink; the `Filter` each asks with), on a simulated
//! network that drops, duplicates and reorders frames and partitions sites, with crashes
//! that lose whatever was not yet durable (replication records included). Everything comes
//! from one seed.
//!
//! After a final heal and quiescence it checks: every site holds the same events; views
//! are equal and equal to folding `sort_events` of the union; every acknowledged write is
//! everywhere (the Jepsen set check); each run injected a minimum of faults. Router
//! buffers hold 6 events, so overflow and refetching happen too. Lanes stay
//! contiguous and dependencies delivered first throughout (the ledger panics otherwise).
//!
//! `GUNDB_SEED=<n> cargo test --test sim` replays one seed. Bugs planted in the real
//! structs (the fold skipping its rollback, the intake taking a frame past a gap, origins
//! resuming a skipped origin from the wrong position) must each be caught within 200 seeds.
#![allow(clippy::unwrap_used)]

use gundb::node::flow::{Intake, Liveness, Origins, Take, Window, WritesHeld};
use gundb::node::Filter;
use gundb::router::{Insert, Pending, PendingLimits};
use gundb::storage::Replicated;
use gundb::stream::{Check, Ledger};
use gundb::testkit::Rng;
use gundb::view::{Fold, Folded};
use gundb::{
    codec, sort_events, Dependencies, Event, EventId, EventMeta, Lane, LogPos, OrderKey, Seq, SiteId, Stream, StreamId,
    VectorClock, View,
};
use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::ops::Bound;
use std::rc::Rc;
use std::sync::{Arc, Mutex};

#[derive(Clone, Default, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
struct Trail(Vec<u64>);

impl View<u64> for Trail {
    fn apply_event(&mut self, n: &u64, _meta: &EventMeta<'_>) {
        self.0.push(*n);
    }
}

struct TrailStream;
impl Stream for TrailStream {
    const TYPE_NAME: &'static str = "sim.trail";
    type Event = u64;
    type View = Trail;
}

/// Bugs the simulation must catch.
#[derive(Clone, Copy, Default, Debug)]
struct Bugs {
    skip_rollback: bool,
    take_gaps: bool,
    resume_at_upto: bool,
}

/// Frames a sink lets wait to be durable, events per frame, and the resend and liveness
/// time (simulated milliseconds).
const FRAMES: usize = 4;
const PAGE: usize = 6;
const RESEND_MS: u64 = 40;

type Log = BTreeMap<StreamId, BTreeMap<OrderKey, Event>>;

/// A frame on a directed link. `Hello` and `Events` are for the link's sink (from the
/// sender's source); `Want` and `Ack` for the link's source (from the sender's sink).
#[derive(Clone)]
enum Msg {
    Hello { heard: u64, head: LogPos },
    Events { epoch: u64, after: LogPos, last: LogPos, events: Vec<Event> },
    Want { epoch: u64, after: LogPos, filter: Filter },
    Ack(LogPos),
}

/// One direction of a connection: a site's source sending its log to a peer's sink, with
/// the decisions of both ends.
struct Conn {
    // The source end.
    window: Window,
    epoch: u64,
    filter: Filter,
    heard: u64,
    // The sink end: `None` until the source's first hello.
    sink: Option<(Intake, Origins)>,
    liveness: Liveness,
    live: bool,
    sent: u64,
    /// Frames taken, not yet durable: id and what they wait for.
    settling: Vec<(u64, VectorClock)>,
    /// Requests of the receiving site's other sinks: the origin's writes held? (the
    /// asking peer, the origin and the position to advance to).
    writes: WritesHeld<(usize, SiteId, LogPos)>,
    /// Skipped origins whose position is being advanced.
    advancing: BTreeSet<SiteId>,
}

impl Conn {
    fn new() -> Self {
        Self {
            window: Window::default(),
            epoch: 0,
            filter: Filter::default(),
            heard: 0,
            sink: None,
            liveness: Liveness::default(),
            live: false,
            sent: 0,
            settling: Vec::new(),
            writes: WritesHeld::default(),
            advancing: BTreeSet::new(),
        }
    }
}

struct SimSite {
    id: SiteId,
    logs: Log,
    durable: Log,
    /// The frontier of `durable`.
    durable_frontier: VectorClock,
    index: HashMap<(Lane, Seq), OrderKey>,
    ledgers: BTreeMap<StreamId, Ledger<TrailStream>>,
    pending: Pending,
    /// The site log: every event as it was applied here, the first `durable_len` durable.
    site_log: Vec<Event>,
    durable_len: usize,
    /// How far each peer's log is held here: recorded, and written with the next flush.
    records: BTreeMap<usize, Replicated>,
    unflushed_records: BTreeMap<usize, Replicated>,
    /// The router dropped an event for a full buffer: sinks must ask again.
    overflowed: bool,
    unacknowledged: Vec<EventId>,
    bugs: Bugs,
    pasts: Pasts,
    /// `durable_frontier` as storage shows it to the router, which reads the lanes it does
    /// not keep in memory from there.
    stored: Stored,
}

type Stored = Arc<Mutex<VectorClock>>;

/// Every written event's whole past, as its writer knew it: what the clocks, which name
/// only part of it, must still make every site deliver first. Shared by all sites.
type Pasts = Rc<RefCell<HashMap<EventId, VectorClock>>>;

fn fold_of(bugs: Bugs) -> Fold<TrailStream> {
    let mut fold = Fold::new(4);
    if bugs.skip_rollback {
        fold.plant_bug_skip_rollback();
    }
    fold
}

fn frontier_of(log: &Log) -> VectorClock {
    log.values().flat_map(|events| events.values()).map(|e| (e.lane, e.seq)).collect()
}

impl SimSite {
    fn new(id: SiteId, bugs: Bugs, pasts: Pasts, stored: Stored) -> Self {
        // A small buffer, so overflow (dropped, then fetched again) happens in most runs,
        // and room for four lanes at rest, so most lanes are read back from storage.
        let limits = PendingLimits { events_max: 6, bytes_max: u64::MAX, lanes_cached: 4 };
        let store = Arc::clone(&stored);
        let pending = Pending::new(limits, Box::new(move |lane| Some(store.lock().unwrap().get(lane))));
        Self {
            id,
            logs: Log::new(),
            durable: Log::new(),
            durable_frontier: VectorClock::new(),
            index: HashMap::new(),
            ledgers: BTreeMap::new(),
            pending,
            site_log: Vec::new(),
            durable_len: 0,
            records: BTreeMap::new(),
            unflushed_records: BTreeMap::new(),
            overflowed: false,
            unacknowledged: Vec::new(),
            bugs,
            pasts,
            stored,
        }
    }

    fn ledger(&mut self, stream: StreamId) -> &mut Ledger<TrailStream> {
        let (id, bugs) = (self.id, self.bugs);
        self.ledgers
            .entry(stream)
            .or_insert_with(|| Ledger::new(id, stream, VectorClock::new(), VectorClock::new(), 0, fold_of(bugs)))
    }

    /// Records an event in the log and folds it, replaying on a rewind.
    fn apply(&mut self, event: Event) {
        let stream = event.lane.stream;
        let payload: u64 = codec::decode(&event.payload).unwrap();
        self.index.insert((event.lane, event.seq), event.order_key());
        self.logs.entry(stream).or_default().insert(event.order_key(), event.clone());
        let folded = self.ledger(stream).record(&event, Some(&payload)).unwrap();
        if let Folded::Rewind { from } = folded {
            let log = &self.logs[&stream];
            let after: Vec<Event> = log
                .range((from.map_or(Bound::Unbounded, Bound::Excluded), Bound::Unbounded))
                .map(|(_, e)| e.clone())
                .collect();
            let ledger = self.ledgers.get_mut(&stream).unwrap();
            ledger.fold_mut().rewind(from);
            ledger.fold_mut().replay(&after).unwrap();
        }
    }

    /// A local write; with `depend_on`, it also depends on everything that other stream
    /// has delivered here (a cross-stream dependency). Shown to the router (and so to
    /// peers) only once durable.
    fn write(&mut self, stream: StreamId, number: u64, now_ms: u64, depend_on: Option<StreamId>) {
        let mut past = self.ledger(stream).frontier().clone();
        let extra = match depend_on {
            Some(other) if other != stream => {
                past.merge(self.ledger(other).frontier());
                self.ledger(other).dependencies()
            }
            _ => Dependencies::none(),
        };
        let payload = codec::encode(&number).unwrap();
        self.ledger(stream);
        let index = &self.index;
        let stamps = std::iter::once((now_ms, payload));
        let event =
            self.ledgers[&stream].stamp_all(&extra, stamps, |l, s| Ok(index.get(&(l, s)).copied())).unwrap().remove(0);
        self.pasts.borrow_mut().insert(event.id, past);
        self.unacknowledged.push(event.id);
        self.site_log.push(event.clone());
        self.apply(event);
    }

    fn receive(&mut self, events: Vec<Event>) {
        for event in events {
            match self.pending.insert(event) {
                Ok(Insert::Ready | Insert::Buffered { .. } | Insert::Duplicate | Insert::Delivered) => {}
                Ok(Insert::Overflow) => self.overflowed = true,
                Ok(Insert::Unread) => panic!("the simulated storage is always readable"),
                Err(equivocation) => panic!("no site equivocates here: {equivocation:?}"),
            }
        }
        while let Some(event) = self.pending.take_ready() {
            let (lane, seq) = (event.lane, event.seq);
            self.ledger(lane.stream);
            let index = &self.index;
            let check = self.ledgers[&lane.stream].check(&event, |l, s| Ok(index.get(&(l, s)).copied()));
            match check {
                Ok(Check::New(_)) => {
                    // Causal delivery of its whole past, not only what its clock names: in
                    // its stream delivered, in other streams durable.
                    for (dep, needed) in self.pasts.borrow()[&event.id].iter() {
                        let stream = &self.ledgers[&lane.stream];
                        let have = if dep.stream == lane.stream { stream.frontier() } else { &self.durable_frontier };
                        assert!(have.covers(dep, needed), "applied before {dep} reached {needed}");
                    }
                    self.site_log.push(event.clone());
                    self.apply(event);
                }
                Ok(Check::Duplicate) => {}
                Err(error) => panic!("the router released an event its stream refuses: {error}"),
            }
            // Durable only at the next flush: events of other streams that depend on it
            // wait until then.
            self.pending.mark_delivered(lane, seq);
        }
    }

    /// Makes everything applied durable and tells the router; returns the writes it
    /// acknowledges.
    fn flush(&mut self) -> Vec<EventId> {
        self.durable = self.logs.clone();
        self.durable_len = self.site_log.len();
        let records = std::mem::take(&mut self.unflushed_records);
        self.records.extend(records);
        self.durable_frontier = frontier_of(&self.durable);
        self.stored.lock().unwrap().clone_from(&self.durable_frontier);
        for (lane, seq) in self.durable_frontier.clone().iter() {
            self.pending.observe(lane, seq);
        }
        // Events of other streams that waited for this durability are ready now.
        self.receive(Vec::new());
        std::mem::take(&mut self.unacknowledged)
    }

    /// Loses everything not durable and rebuilds from the durable log.
    fn crash(&mut self) {
        let durable = self.durable.clone();
        let mut site_log = std::mem::take(&mut self.site_log);
        site_log.truncate(self.durable_len);
        let records = std::mem::take(&mut self.records);
        *self = SimSite::new(self.id, self.bugs, self.pasts.clone(), Arc::clone(&self.stored));
        self.durable_len = site_log.len();
        (self.site_log, self.records) = (site_log, records);
        let mut all: Vec<Event> = durable.values().flat_map(|s| s.values().cloned()).collect();
        all.sort_by_key(|e| (e.lane, e.seq));
        // Per lane in seq order, lanes interleaved by canonical order: a causal order.
        for event in sort_events(all).unwrap() {
            let (lane, seq) = (event.lane, event.seq);
            self.apply(event);
            self.pending.observe(lane, seq);
        }
        self.durable_frontier = frontier_of(&durable);
        self.durable = durable;
    }

    fn views(&self) -> BTreeMap<StreamId, Trail> {
        self.ledgers.iter().map(|(s, l)| (*s, l.view().clone())).collect()
    }
}

struct Sim {
    rng: Rng,
    sites: Vec<SimSite>,
    /// Directed links and what is on them.
    links: BTreeMap<(usize, usize), VecDeque<Msg>>,
    cut: BTreeMap<(usize, usize), bool>,
    /// Connections by (source site, sink site).
    conns: BTreeMap<(usize, usize), Conn>,
    streams: Vec<StreamId>,
    acknowledged: Vec<EventId>,
    faults: u64,
    now_ms: u64,
    next_number: u64,
    bugs: Bugs,
}

impl Sim {
    fn new(seed: u64, bugs: Bugs) -> Self {
        let mut rng = Rng::new(seed);
        let count = 3 + rng.index(3);
        let pasts = Pasts::default();
        let sites = (0..count)
            .map(|n| SimSite::new(SiteId::from_u128(n as u128 + 1), bugs, pasts.clone(), Stored::default()))
            .collect();
        let (mut links, mut cut, mut conns) = (BTreeMap::new(), BTreeMap::new(), BTreeMap::new());
        for a in 0..count {
            for b in (0..count).filter(|&b| b != a) {
                links.insert((a, b), VecDeque::new());
                cut.insert((a, b), false);
                conns.insert((a, b), Conn::new());
            }
        }
        let streams = (0..2).map(|n| StreamId::from_u128(100 + n)).collect();
        Self {
            rng,
            sites,
            links,
            cut,
            conns,
            streams,
            acknowledged: Vec::new(),
            faults: 0,
            now_ms: 1_000,
            next_number: 0,
            bugs,
        }
    }

    fn others(&self, site: usize) -> Vec<usize> {
        (0..self.sites.len()).filter(|&other| other != site).collect()
    }

    fn send(&mut self, from: usize, to: usize, msg: Msg) {
        self.links.get_mut(&(from, to)).unwrap().push_back(msg);
    }

    /// `from`'s source says hello to `to`.
    fn hello(&mut self, from: usize, to: usize) {
        let heard = self.conns[&(from, to)].heard;
        let head = LogPos(self.sites[from].durable_len as u64);
        self.send(from, to, Msg::Hello { heard, head });
    }

    /// `to`'s sink of `from` asks for `from`'s log after `after`.
    fn want(&mut self, from: usize, to: usize, after: LogPos) {
        let conn = self.conns.get_mut(&(from, to)).unwrap();
        let Some((intake, origins)) = &conn.sink else { return };
        let msg = Msg::Want { epoch: intake.epoch(), after, filter: origins.filter() };
        conn.sent += 1;
        self.send(to, from, msg);
    }

    /// `to`'s sink of `from` acknowledges `from`'s log up to `upto`.
    fn ack(&mut self, from: usize, to: usize, upto: LogPos) {
        self.conns.get_mut(&(from, to)).unwrap().sent += 1;
        self.send(to, from, Msg::Ack(upto));
    }

    /// The peers `site` has a live link from.
    fn live(&self, site: usize) -> BTreeSet<SiteId> {
        self.others(site).into_iter().filter(|&p| self.conns[&(p, site)].live).map(|p| self.sites[p].id).collect()
    }

    /// The sinks of `site` skip what its live links carry; those for which that changed
    /// ask afresh.
    fn reskip(&mut self, site: usize) {
        let live = self.live(site);
        for peer in self.others(site) {
            let now = self.now_ms;
            let conn = self.conns.get_mut(&(peer, site)).unwrap();
            let Some((intake, origins)) = &mut conn.sink else { continue };
            if origins.skip(&live) {
                let start = origins.start();
                intake.restart(start, now);
                self.want(peer, site, start);
            }
        }
    }

    fn set_live(&mut self, from: usize, to: usize, live: bool) {
        let conn = self.conns.get_mut(&(from, to)).unwrap();
        if conn.live != live {
            conn.live = live;
            self.reskip(to);
        }
    }

    /// The next frame of `from`'s log for `to`, if the window has room and the log more.
    fn send_frame(&mut self, from: usize, to: usize, limit: usize) -> bool {
        let (peer, now) = (self.sites[to].id, self.now_ms);
        let site = &self.sites[from];
        let conn = self.conns.get_mut(&(from, to)).unwrap();
        conn.window.rewind_if_overdue(now, RESEND_MS);
        let Some(after) = conn.window.next_after(FRAMES, usize::MAX) else { return false };
        let start = usize::try_from(after.0).unwrap();
        if start >= site.durable_len {
            return false;
        }
        let end = (start + limit).min(site.durable_len);
        let events = (start..end)
            .filter(|&i| {
                let origin = site.site_log[i].lane.site;
                origin != peer && conn.filter.sends(origin, LogPos(i as u64 + 1))
            })
            .map(|i| site.site_log[i].clone())
            .collect();
        let last = LogPos(end as u64);
        conn.window.sent(last, 1, now);
        let msg = Msg::Events { epoch: conn.epoch, after, last, events };
        self.send(from, to, msg);
        true
    }

    /// A hello from `from` at `to`: the sink opens on the first, and judges the link by
    /// the others.
    fn sink_hello(&mut self, from: usize, to: usize, heard: u64, head: LogPos) {
        let (now, bugs, peer) = (self.now_ms, self.bugs, self.sites[from].id);
        let live = self.live(to);
        let site = &self.sites[to];
        let record = site.unflushed_records.get(&from).or_else(|| site.records.get(&from)).cloned();
        let conn = self.conns.get_mut(&(from, to)).unwrap();
        if conn.sink.is_none() {
            let mut origins = Origins::new(peer, &record.unwrap_or_default());
            let mut intake = Intake::default();
            if bugs.resume_at_upto {
                origins.plant_bug_resume_at_upto();
            }
            if bugs.take_gaps {
                intake.plant_bug_take_gaps();
            }
            origins.skip(&live);
            let start = origins.start();
            intake.restart(start, now);
            conn.sink = Some((intake, origins));
            self.want(from, to, start);
            let conn = self.conns.get_mut(&(from, to)).unwrap();
            conn.liveness.opened(now, conn.sent);
            return;
        }
        let live = conn.liveness.hello(now, heard, conn.sent, RESEND_MS);
        conn.writes.hello(heard, head);
        self.wake_writes(from, to);
        self.set_live(from, to, live);
    }

    /// Answers the requests waiting for `to`'s sink of `from` to hold what `from` wrote.
    fn wake_writes(&mut self, from: usize, to: usize) {
        let conn = self.conns.get_mut(&(from, to)).unwrap();
        let Some((_, origins)) = &conn.sink else { return };
        for (asker, origin, upto) in conn.writes.reached(origins.upto()) {
            let conn = self.conns.get_mut(&(asker, to)).unwrap();
            conn.advancing.remove(&origin);
            if let Some((_, origins)) = &mut conn.sink {
                origins.advance(origin, upto);
                self.sites[to].unflushed_records.insert(asker, origins.record());
            }
        }
    }

    /// A frame of `from`'s log at `to`.
    fn sink_events(&mut self, from: usize, to: usize, epoch: u64, after: LogPos, last: LogPos, events: Vec<Event>) {
        let now = self.now_ms;
        let conn = self.conns.get_mut(&(from, to)).unwrap();
        let Some((intake, _)) = conn.sink.as_mut().filter(|_| after < last) else { return };
        match intake.frame(epoch, after, last, FRAMES, now) {
            Take::Events(id) => {
                let target: VectorClock = events.iter().map(|e| (e.lane, e.seq)).collect();
                conn.settling.push((id, target));
                self.sites[to].receive(events);
                if std::mem::take(&mut self.sites[to].overflowed) {
                    // Dropped: every sink takes its peer's log again from where it is durable.
                    for peer in self.others(to) {
                        let conn = self.conns.get_mut(&(peer, to)).unwrap();
                        if let Some((intake, _)) = &mut conn.sink {
                            conn.settling.clear();
                            if let Some(after) = intake.reset(now) {
                                self.want(peer, to, after);
                            }
                        }
                    }
                }
                self.settle(to);
            }
            Take::Stale { ack: Some(upto) } => self.ack(from, to, upto),
            Take::Gap { want: Some(after) } | Take::Superseded { want: Some(after) } => self.want(from, to, after),
            Take::Stale { ack: None } | Take::Gap { want: None } | Take::Superseded { want: None } => {}
        }
    }

    /// The sinks of `site` settle what became durable: record, acknowledge, answer.
    fn settle(&mut self, site: usize) {
        for peer in self.others(site) {
            let frontier = &self.sites[site].durable_frontier;
            let conn = self.conns.get_mut(&(peer, site)).unwrap();
            let Some((intake, origins)) = &mut conn.sink else { continue };
            let (done, waiting): (Vec<_>, Vec<_>) =
                std::mem::take(&mut conn.settling).into_iter().partition(|(_, target)| frontier.dominates(target));
            conn.settling = waiting;
            let mut acked = None;
            for (id, _) in done {
                if let Some(durable) = intake.settled(id) {
                    origins.durable(durable);
                    acked = Some(durable);
                }
            }
            if let Some(durable) = acked {
                let record = origins.record();
                self.sites[site].unflushed_records.insert(peer, record);
                self.ack(peer, site, durable);
                self.wake_writes(peer, site);
            }
        }
    }

    /// The timers of `site`'s sinks: wants not answered, silent links, and advancing the
    /// positions of skipped origins.
    fn tick(&mut self, site: usize) {
        let now = self.now_ms;
        for peer in self.others(site) {
            let conn = self.conns.get_mut(&(peer, site)).unwrap();
            if let Some(after) = conn.sink.as_mut().and_then(|(intake, _)| intake.want_again(now, RESEND_MS)) {
                self.want(peer, site, after);
            }
            let conn = self.conns.get_mut(&(peer, site)).unwrap();
            if conn.live && !conn.liveness.check(now, RESEND_MS) {
                self.set_live(peer, site, false);
            }
            let conn = &self.conns[&(peer, site)];
            let Some((_, origins)) = &conn.sink else { continue };
            let upto = origins.upto();
            for origin in origins.skipped_behind() {
                let Some(via) = self.others(site).into_iter().find(|&o| self.sites[o].id == origin) else { continue };
                if self.conns[&(peer, site)].advancing.contains(&origin) || !self.conns[&(via, site)].live {
                    continue;
                }
                let Some(durable) = self.conns[&(via, site)].sink.as_ref().map(|(intake, _)| intake.durable()) else {
                    continue;
                };
                self.ack(via, site, durable);
                let said = self.conns[&(via, site)].sent;
                if self.conns.get_mut(&(via, site)).unwrap().writes.ask(said, (peer, origin, upto)).is_ok() {
                    self.conns.get_mut(&(peer, site)).unwrap().advancing.insert(origin);
                }
            }
        }
    }

    /// Delivers one message of the link, maybe out of order, dropped or duplicated.
    fn deliver(&mut self, (from, to): (usize, usize), faults: bool) {
        let queue = self.links.get_mut(&(from, to)).unwrap();
        let position = if faults && queue.len() > 1 && self.rng.chance(30) { self.rng.index(queue.len()) } else { 0 };
        let Some(msg) = queue.remove(position) else { return };
        if faults && position > 0 {
            self.faults += 1;
        }
        if self.cut[&(from, to)] || (faults && self.rng.chance(10)) {
            self.faults += 1;
            return;
        }
        if faults && self.rng.chance(5) {
            self.faults += 1;
            self.links.get_mut(&(from, to)).unwrap().push_back(msg.clone());
        }
        match msg {
            Msg::Hello { heard, head } => self.sink_hello(from, to, heard, head),
            Msg::Events { epoch, after, last, events } => self.sink_events(from, to, epoch, after, last, events),
            Msg::Want { epoch, after, mut filter } => {
                let conn = self.conns.get_mut(&(to, from)).unwrap();
                conn.heard += 1;
                filter.behind.sort_unstable_by_key(|(site, _)| *site);
                (conn.epoch, conn.filter) = (epoch, filter);
                conn.window.want(after);
            }
            Msg::Ack(upto) => {
                let conn = self.conns.get_mut(&(to, from)).unwrap();
                conn.heard += 1;
                conn.window.ack(upto);
            }
        }
    }

    fn step(&mut self) {
        let n = self.sites.len();
        let site = self.rng.index(n);
        let peer = (site + 1 + self.rng.index(n - 1)) % n;
        self.now_ms += 1;
        match self.rng.below(100) {
            0..=19 => {
                let stream = self.streams[self.rng.index(self.streams.len())];
                self.next_number += 1;
                let skew = self.rng.below(5);
                let depend_on = self.rng.chance(30).then(|| self.streams[self.rng.index(self.streams.len())]);
                self.sites[site].write(stream, self.next_number, self.now_ms + skew, depend_on);
            }
            20..=29 => {
                let acked = self.sites[site].flush();
                self.acknowledged.extend(acked);
                self.settle(site);
            }
            30..=37 => self.hello(site, peer),
            38..=41 => self.tick(site),
            42..=61 => {
                let limit = 1 + self.rng.index(PAGE);
                self.send_frame(site, peer, limit);
            }
            62..=93 => {
                let busy: Vec<(usize, usize)> =
                    self.links.iter().filter(|(_, q)| !q.is_empty()).map(|(k, _)| *k).collect();
                if !busy.is_empty() {
                    let link = busy[self.rng.index(busy.len())];
                    self.deliver(link, true);
                }
            }
            94..=96 => {
                // Partition a random site from the rest, or heal everything.
                let heal = self.rng.chance(50);
                for ((a, b), cut) in self.cut.iter_mut() {
                    *cut = if heal { false } else { *a == site || *b == site };
                }
                self.faults += 1;
            }
            _ => self.crash(site),
        }
    }

    /// `site` crashes: what was not durable is lost, its connections drop and start over.
    fn crash(&mut self, site: usize) {
        self.sites[site].crash();
        for ((a, b), queue) in self.links.iter_mut() {
            if *a == site || *b == site {
                queue.clear();
            }
        }
        for ((a, b), conn) in self.conns.iter_mut() {
            if *a == site || *b == site {
                *conn = Conn::new();
            } else {
                // Requests to and from the dropped sinks die with them.
                conn.advancing.clear();
                conn.writes = WritesHeld::default();
            }
        }
        for other in self.others(site) {
            self.reskip(other);
        }
        self.faults += 1;
    }

    /// Heals, but for one pair of sites in half the runs (their events must then reach
    /// each other through the others), then lets time pass with every timer, hello and
    /// frame going, until every site holds the same events.
    fn quiesce(&mut self) -> Result<(), String> {
        let n = self.sites.len();
        let apart = self.rng.chance(50).then(|| {
            let a = self.rng.index(n);
            (a, (a + 1 + self.rng.index(n - 1)) % n)
        });
        for ((a, b), cut) in self.cut.iter_mut() {
            *cut = apart.is_some_and(|(x, y)| (*a, *b) == (x, y) || (*a, *b) == (y, x));
        }
        for _ in 0..2_000 {
            self.now_ms += RESEND_MS / 4;
            for site in 0..n {
                let acked = self.sites[site].flush();
                self.acknowledged.extend(acked);
                self.settle(site);
                self.tick(site);
                for peer in self.others(site) {
                    self.hello(site, peer);
                }
            }
            // Frames flow, and storage makes what arrives durable, until nothing moves (or
            // time must pass for a timer).
            let mut moved = true;
            for _ in 0..100 {
                if !moved {
                    break;
                }
                moved = false;
                let links: Vec<(usize, usize)> = self.links.keys().copied().collect();
                for link in links {
                    while !self.links[&link].is_empty() {
                        self.deliver(link, false);
                        moved = true;
                    }
                }
                for site in 0..n {
                    let acked = self.sites[site].flush();
                    self.acknowledged.extend(acked);
                    self.settle(site);
                    for peer in self.others(site) {
                        moved |= self.send_frame(site, peer, PAGE);
                    }
                }
            }
            let frontiers: Vec<VectorClock> = self.sites.iter().map(|s| frontier_of(&s.logs)).collect();
            if frontiers.windows(2).all(|w| w[0] == w[1]) {
                return Ok(());
            }
        }
        Err("the sites never converged".into())
    }

    fn check(&self) -> Result<(), String> {
        let first = &self.sites[0];
        let mut union: BTreeMap<StreamId, Vec<Event>> = BTreeMap::new();
        for (stream, log) in &first.logs {
            union.insert(*stream, log.values().cloned().collect());
        }
        for (n, site) in self.sites.iter().enumerate() {
            let keys = |s: &SimSite| {
                s.logs.iter().map(|(id, l)| (*id, l.keys().copied().collect::<Vec<_>>())).collect::<Vec<_>>()
            };
            if keys(site) != keys(first) {
                return Err(format!("site {n} holds other events than site 0"));
            }
            for (stream, events) in &union {
                let expected = {
                    let mut view = Trail::default();
                    for e in sort_events(events.clone()).map_err(|e| e.to_string())? {
                        view.apply_event(&codec::decode(&e.payload).unwrap(), &e.meta());
                    }
                    view
                };
                if site.views().get(stream) != Some(&expected) {
                    return Err(format!("site {n}: view of {stream} differs from the fold of the canonical order"));
                }
            }
            let held: std::collections::HashSet<EventId> =
                site.logs.values().flat_map(|l| l.values().map(|e| e.id)).collect();
            if let Some(lost) = self.acknowledged.iter().find(|id| !held.contains(id)) {
                return Err(format!("site {n} lacks acknowledged write {lost}"));
            }
        }
        if self.faults < 5 {
            return Err(format!("only {} faults injected", self.faults));
        }
        Ok(())
    }
}

fn run(seed: u64, bugs: Bugs) -> Result<(), String> {
    let mut sim = Sim::new(seed, bugs);
    for _ in 0..300 {
        sim.step();
    }
    sim.quiesce()?;
    sim.check()
}

fn seeds() -> Vec<u64> {
    match std::env::var("GUNDB_SEED") {
        Ok(seed) => vec![seed.parse().expect("GUNDB_SEED is a number")],
        Err(_) => (0..1_000).collect(),
    }
}

#[test]
fn sim_converges_for_every_seed() {
    for seed in seeds() {
        let outcome = std::panic::catch_unwind(|| run(seed, Bugs::default()));
        match outcome {
            Ok(Ok(())) => {}
            Ok(Err(failure)) => panic!("seed {seed}: {failure}\nreplay with GUNDB_SEED={seed} cargo test --test sim"),
            Err(_) => panic!("seed {seed} panicked\nreplay with GUNDB_SEED={seed} cargo test --test sim"),
        }
    }
}

#[test]
fn sim_catches_planted_bugs() {
    let planted = [
        ("skip the rollback", Bugs { skip_rollback: true, ..Bugs::default() }),
        ("the intake takes a frame past a gap", Bugs { take_gaps: true, ..Bugs::default() }),
        ("origins resume a skipped origin where the others are", Bugs { resume_at_upto: true, ..Bugs::default() }),
    ];
    for (name, bugs) in planted {
        let caught = (0..200).find(|&seed| !matches!(std::panic::catch_unwind(|| run(seed, bugs)), Ok(Ok(()))));
        assert!(caught.is_some(), "planted bug {name:?} went unnoticed for 200 seeds");
        eprintln!("planted bug {name:?} caught at seed {}", caught.unwrap_or_default());
    }
}
