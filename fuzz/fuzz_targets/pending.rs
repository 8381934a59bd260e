//! The router's causal buffer fed arbitrary (well-formed) events in arbitrary order, with
//! copies and equivocations: no panic; everything it hands out is in lane order and after
//! its dependencies; it never holds more than its bound. It keeps two lanes at rest in
//! memory and reads the others back from a store of what it made durable.
#![no_main]

use arbitrary::Arbitrary;
use gundb::router::{Pending, PendingLimits};
use gundb::{Lane, SiteId, StreamId, VectorClock};
use libfuzzer_sys::fuzz_target;
use std::sync::{Arc, Mutex};

#[derive(Arbitrary, Debug)]
struct Arrival {
    id: u8,
    site: u8,
    stream: bool,
    seq: u8,
    deps: Vec<(u8, bool, u8)>,
    lamport: u8,
}

fn lane(site: u8, stream: bool) -> Lane {
    Lane::new(SiteId::from_u128(u128::from(site % 4) + 1), StreamId::from_u128(u128::from(stream) + 1))
}

fuzz_target!(|arrivals: Vec<Arrival>| {
    let stored = Arc::new(Mutex::new(VectorClock::new()));
    let store = Arc::clone(&stored);
    let limits = PendingLimits { events_max: 16, bytes_max: 1 << 16, lanes_cached: 2 };
    let mut pending = Pending::new(limits, Box::new(move |lane| Some(store.lock().unwrap().get(lane))));
    let mut delivered = VectorClock::new();
    for arrival in arrivals {
        let own = lane(arrival.site, arrival.stream);
        let deps: Vec<(Lane, u64)> = arrival.deps.iter().map(|&(s, t, q)| (lane(s, t), u64::from(q))).collect();
        let seq = u64::from(arrival.seq).max(1);
        let event = gundb::testkit::event(u128::from(arrival.id), own, seq, &deps, u64::from(arrival.lamport), 0);
        if !event.clock_names_own_lane() {
            continue; // the router refuses these before the buffer sees them
        }
        let _ = pending.insert(event);
        assert!(pending.len() <= 16 + 1, "the buffer holds past its bound");
        while let Some(ready) = pending.take_ready() {
            assert_eq!(delivered.get(ready.lane).next(), ready.seq, "handed out of lane order");
            for (lane, seq) in ready.clock.iter() {
                assert!(lane == ready.lane || delivered.get(lane) >= seq, "handed out before a dependency");
            }
            delivered.set(ready.lane, ready.seq);
            pending.mark_delivered(ready.lane, ready.seq);
            stored.lock().unwrap().set(ready.lane, ready.seq);
            pending.mark_durable(ready.lane, ready.seq);
        }
    }
});
