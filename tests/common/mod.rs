//! Helpers shared by the integration tests: stream types, a site runner and event makers.
#![allow(dead_code, clippy::unwrap_used)]

use gundb::storage::Storage;
use gundb::testkit::{history, HistoryShape, Rng};
use gundb::{codec, Event, Lane, Seq, Stream, StreamId, View};
use std::future::Future;
use std::sync::Arc;

pub use gundb::testkit::{Trail, TrailStream};

/// Runs `body` in a fresh actix system on its own thread, and tears everything down
/// (actors, storage, the sled writer thread) before returning: a site stopping.
pub fn run_site<F, Fut, T>(body: F) -> T
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output = T> + 'static,
    T: Send + 'static,
{
    std::thread::spawn(move || actix::System::new().block_on(body())).join().unwrap()
}

/// Folds `events` (already in order) into a trail, as a view would.
pub fn fold(events: &[Event]) -> Trail {
    let mut view = Trail::default();
    for event in events {
        view.apply_event(&codec::decode(&event.payload).unwrap(), &event.meta());
    }
    view
}

/// A history of `events` events by `sites` remote sites in one stream, as `TrailStream`
/// events numbered in write order.
pub fn remote_history(seed: u64, sites: u32, events: usize) -> (StreamId, Vec<Event>) {
    let mut rng = Rng::new(seed);
    let all = history(HistoryShape { sites, streams: 1, events, sync_percent: 30 }, &mut rng);
    let stream = all[0].lane.stream;
    let all = all
        .into_iter()
        .enumerate()
        .map(|(n, mut event)| {
            event.stream_type = TrailStream::TYPE_NAME.to_owned();
            event.payload = codec::encode(&(n as u64)).unwrap();
            event.id = event.content_id();
            event
        })
        .collect();
    (stream, all)
}

/// A well-formed event of `lane` at `seq` with no other dependencies.
pub fn remote_event(lane: Lane, seq: u64, lamport: u64, number: u64) -> Event {
    let clock = [(lane, Seq(seq))].into_iter().collect();
    let payload = codec::encode(&number).unwrap();
    Event::new(lane, Seq(seq), clock, lamport, 1_000 + seq, TrailStream::TYPE_NAME.to_owned(), payload)
}

/// A lane of test site `site` (one [`gundb::testkit::attest`] signs for), not the storage's own.
pub fn remote_lane(site: u128, stream: StreamId) -> Lane {
    Lane::new(gundb::testkit::site(u64::try_from(site).unwrap()), stream)
}

/// The attestations `site` stores for `events` (its own and its peers'), each once: what a
/// frame of them would carry.
pub fn stored_attestations(site: &gundb::Site, events: &[Event]) -> Vec<gundb::Attestation> {
    let mut seen = std::collections::HashSet::new();
    events
        .iter()
        .filter(|event| seen.insert((event.lane.site, event.attestation)))
        .map(|event| site.storage().attestation(event.lane.site, event.attestation).unwrap().expect("stored"))
        .collect()
}

/// Storage as the actors take it.
pub fn shared(storage: impl Storage) -> Arc<dyn Storage> {
    Arc::new(storage)
}
