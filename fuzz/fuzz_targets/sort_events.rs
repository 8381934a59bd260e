//! `sort_events` on arbitrary events: a result or a typed error, never a panic; a sorted
//! result is in canonical order and holds every event it was given.
#![no_main]

use arbitrary::Arbitrary;
use gundb::{sort_events, Lane, SiteId, StreamId};
use libfuzzer_sys::fuzz_target;

#[derive(Arbitrary, Debug)]
struct Raw {
    id: u8,
    site: u8,
    seq: u8,
    deps: Vec<(u8, u8)>,
    lamport: u8,
    timestamp: u8,
}

fuzz_target!(|raws: Vec<Raw>| {
    let lane = |site: u8| Lane::new(SiteId::from_u128(u128::from(site % 5) + 1), StreamId::from_u128(1));
    let events: Vec<_> = raws
        .iter()
        .map(|r| {
            let deps: Vec<(Lane, u64)> = r.deps.iter().map(|&(s, q)| (lane(s), u64::from(q))).collect();
            let seq = u64::from(r.seq).max(1);
            gundb::testkit::event(
                u128::from(r.id),
                lane(r.site),
                seq,
                &deps,
                u64::from(r.lamport),
                u64::from(r.timestamp),
            )
        })
        .collect();
    let count = events.len();
    if let Ok(sorted) = sort_events(events) {
        assert!(sorted.len() <= count);
        assert!(sorted.windows(2).all(|w| w[0].order_key() <= w[1].order_key()), "not in canonical order");
    }
});
