//! Deterministic generators for tests, simulations and benchmarks: a small seeded RNG,
//! valid multi-lane histories, and random delivery orders that respect causality.
//!
//! Pure and seeded: the same seed gives the same history on every machine, so a failing
//! seed can be replayed exactly.

use crate::attest::Attestation;
use crate::clock::VectorClock;
use crate::event::Event;
use crate::id::{EventId, Lane, Seq, SiteId, StreamId};
use std::collections::{BTreeMap, HashMap, VecDeque};

pub use crate::rng::Rng;

/// One event of `lane` at `seq` whose clock names `deps` besides its own lane, with an
/// empty payload and the id `id`: for hand-written cases in tests of the pure core
/// (ordering, buffering), where ties are broken by chosen ids. Its id is not its content's
/// ([`Event::content_id`]), so a site refuses it: set `id` to that to send it to one.
pub fn event(id: u128, lane: Lane, seq: u64, deps: &[(Lane, u64)], lamport: u64, timestamp_ms: u64) -> Event {
    let mut clock: VectorClock = deps.iter().map(|&(l, s)| (l, Seq(s))).collect();
    clock.set(lane, Seq(seq));
    Event {
        id: EventId::from_u128(id),
        lane,
        seq: Seq(seq),
        clock,
        lamport,
        timestamp_ms,
        stream_type: "testkit".to_owned(),
        payload: Vec::new(),
        attestation: 0,
    }
}

/// [`event`] as a site writes it: with the id of its content, so a site takes it.
pub fn written_event(lane: Lane, seq: u64, deps: &[(Lane, u64)], lamport: u64, timestamp_ms: u64) -> Event {
    let mut written = event(0, lane, seq, deps, lamport, timestamp_ms);
    written.id = written.content_id();
    written
}

/// The keys of test site `n`: the same `n` is the same site (its signing key comes from
/// `n`), with a fresh link key.
pub fn site_keys(n: u64) -> crate::keys::SiteKeys {
    crate::keys::SiteKeys::with_signing_seed(blake3::hash(&n.to_be_bytes()).as_bytes())
}

/// Test site `n`: the site [`site_keys`]`(n)` are.
pub fn site(n: u64) -> SiteId {
    site_keys(n).site_id()
}

/// The test sites [`attest`] can sign for: 1 to this.
pub const TEST_SITES: u64 = 1_024;

/// Signs `events` as their sites would: each test site's events (sites 1 to [`TEST_SITES`])
/// in one attestation, numbered by a hash of the ids it covers (so separate calls make
/// separate attestations), which each event then names. Events of other sites are left
/// unsigned: a site refuses them, as it refuses a forged lane.
pub fn attest(events: &mut [Event]) -> Vec<Attestation> {
    static TABLE: std::sync::OnceLock<HashMap<SiteId, u64>> = std::sync::OnceLock::new();
    let table = TABLE.get_or_init(|| (1..=TEST_SITES).map(|n| (site(n), n)).collect());
    let mut by_site: BTreeMap<u64, Vec<EventId>> = BTreeMap::new();
    for event in events.iter() {
        if let Some(&n) = table.get(&event.lane.site) {
            by_site.entry(n).or_default().push(event.id);
        }
    }
    let mut attestations = Vec::new();
    let mut numbers: HashMap<SiteId, u64> = HashMap::new();
    for (n, mut ids) in by_site {
        ids.sort_unstable();
        let mut hash = blake3::Hasher::new();
        for id in &ids {
            hash.update(id.as_uuid().as_bytes());
        }
        let mut number = [0u8; 8];
        number.copy_from_slice(&hash.finalize().as_bytes()[..8]);
        let number = u64::from_be_bytes(number);
        let keys = site_keys(n);
        numbers.insert(keys.site_id(), number);
        attestations.push(Attestation::sign(&keys, number, ids));
    }
    for event in events.iter_mut() {
        if let Some(&number) = numbers.get(&event.lane.site) {
            event.attestation = number;
        }
    }
    attestations
}

/// The shape of a generated history.
#[derive(Clone, Copy, Debug)]
pub struct HistoryShape {
    /// Writing sites (lanes per stream).
    pub sites: u32,
    /// Streams written.
    pub streams: u32,
    /// Events in all.
    pub events: usize,
    /// Percent of steps in which a site first learns everything another site knows. Lower
    /// means more concurrency.
    pub sync_percent: u64,
}

/// A valid history: every event's clock names its own lane at its seq and what its writer
/// had seen; Lamport counters exceed those of every dependency; timestamps come from
/// slightly skewed site clocks, so concurrent events are ordered by time, then id.
/// Returned in the order written.
pub fn history(shape: HistoryShape, rng: &mut Rng) -> Vec<Event> {
    assert!(shape.sites > 0 && shape.streams > 0, "a history needs a site and a stream");
    let sites: Vec<SiteId> = (0..shape.sites).map(|n| site(u64::from(n) + 1)).collect();
    let streams: Vec<StreamId> = (0..shape.streams).map(|n| StreamId::from_u128((1 << 64) + u128::from(n))).collect();
    // What each site has seen: a causally closed set, as a clock and its largest lamport.
    let mut known: Vec<(VectorClock, u64)> = vec![(VectorClock::new(), 0); sites.len()];
    let mut events = Vec::with_capacity(shape.events);
    let mut now_ms = 1_700_000_000_000u64;
    while events.len() < shape.events {
        let writer = rng.index(sites.len());
        if rng.chance(shape.sync_percent) {
            let from = rng.index(sites.len());
            let (clock, lamport) = known[from].clone();
            known[writer].0.merge(&clock);
            known[writer].1 = known[writer].1.max(lamport);
        }
        now_ms += rng.below(3);
        let lane = Lane::new(sites[writer], streams[rng.index(streams.len())]);
        let (clock, lamport) = &mut known[writer];
        let seq = clock.increment(lane);
        *lamport += 1;
        // Site clocks are skewed by up to 5 ms, so time alone does not order events.
        let timestamp_ms = now_ms + rng.below(5);
        events.push(Event::new(lane, seq, clock.clone(), *lamport, timestamp_ms, "testkit".to_owned(), Vec::new()));
    }
    events
}

/// The events of `history` (full clocks, in the order written) with the clocks a writer
/// gives them: each names its own lane and only what rose since its lane's previous event.
/// The clock is part of the content, so each gets the id of its new content.
pub fn with_delta_clocks(history: &[Event]) -> Vec<Event> {
    let mut previous: HashMap<Lane, &VectorClock> = HashMap::new();
    history
        .iter()
        .map(|event| {
            let before = previous.insert(event.lane, &event.clock);
            let clock = event
                .clock
                .iter()
                .filter(|&(lane, seq)| lane == event.lane || before.is_none_or(|b| b.get(lane) < seq))
                .collect();
            let Event { lane, seq, lamport, timestamp_ms, .. } = *event;
            Event::new(lane, seq, clock, lamport, timestamp_ms, event.stream_type.clone(), event.payload.clone())
        })
        .collect()
}

/// A random order of `events` in which every event comes after everything in its clock
/// that is among `events` (clock entries beyond the set are taken as already delivered).
pub fn causal_shuffle(events: &[Event], rng: &mut Rng) -> Vec<Event> {
    let mut lanes: HashMap<Lane, VecDeque<&Event>> = HashMap::new();
    let mut sorted: Vec<&Event> = events.iter().collect();
    sorted.sort_by_key(|e| (e.lane, e.seq));
    for event in sorted {
        lanes.entry(event.lane).or_default().push_back(event);
    }
    let first_seq: HashMap<Lane, Seq> = lanes.iter().filter_map(|(l, q)| q.front().map(|e| (*l, e.seq))).collect();
    // Delivered so far, starting just below each lane's first event in the set.
    let mut delivered: VectorClock = first_seq.iter().map(|(l, s)| (*l, Seq(s.0 - 1))).collect();
    let ready = |event: &Event, delivered: &VectorClock| {
        event.clock.iter().all(|(lane, seq)| {
            let have = if first_seq.contains_key(&lane) { delivered.get(lane) } else { seq };
            if lane == event.lane {
                have.next() == seq
            } else {
                have >= seq
            }
        })
    };
    let mut order = Vec::with_capacity(events.len());
    let mut lane_ids: Vec<Lane> = lanes.keys().copied().collect();
    lane_ids.sort();
    while order.len() < events.len() {
        let candidates: Vec<Lane> =
            lane_ids.iter().copied().filter(|l| lanes[l].front().is_some_and(|e| ready(e, &delivered))).collect();
        assert!(!candidates.is_empty(), "a valid history always has a deliverable event");
        let lane = candidates[rng.index(candidates.len())];
        let event = lanes.get_mut(&lane).and_then(VecDeque::pop_front).expect("candidate lanes are non-empty");
        delivered.set(lane, event.seq);
        order.push(event.clone());
    }
    order
}

/// A non-commutative view: the events' numbers in the order they were folded, so a number
/// applied twice, or out of canonical order, shows. The tests' and the crash loop's view.
#[derive(Clone, Default, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Trail(pub Vec<u64>);

impl crate::view::View<u64> for Trail {
    fn apply_event(&mut self, event: &u64, _meta: &crate::event::EventMeta<'_>) {
        self.0.push(*event);
    }
}

/// The stream type over [`Trail`].
#[derive(Debug)]
pub struct TrailStream;

impl crate::view::Stream for TrailStream {
    const TYPE_NAME: &'static str = "test.trail";
    type Event = u64;
    type View = Trail;
}
