//! Site-wide subscriptions (`Site::subscribe_all`): every durable event a site holds, in
//! position order, from a checkpoint, then live; filters; a slow consumer back-pressured.
#![allow(clippy::unwrap_used)]

mod common;

use common::{run_site, TrailStream};
use gundb::limits;
use gundb::node::transport::in_process;
use gundb::node::{connect, NodeConfig};
use gundb::subscription::{Filter, PositionedEvent, SubscribeError, Subscription};
use gundb::testkit::Rng;
use gundb::{Decide, Emit, EventId, EventMeta, Lane, LogPos, Seq, Site, Stream, StreamId, VectorClock, View};
use serde::{Deserialize, Serialize};
use std::collections::{HashMap, HashSet};
use std::time::Duration;

/// A second stream type, for the filters.
#[derive(Clone, Default, Serialize, Deserialize)]
struct Total(u64);

impl View<u64> for Total {
    fn apply_event(&mut self, n: &u64, _: &EventMeta<'_>) {
        self.0 += n;
    }
}

struct Counter;

impl Stream for Counter {
    const TYPE_NAME: &'static str = "test.subscribe_all.counter";
    type Event = u64;
    type View = Total;
}

fn seed() -> u64 {
    std::env::var("GUNDB_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or(0x05ee_da11)
}

/// The next `n` events of `subscription`; a guard turns a hang into a failure.
async fn take(subscription: &mut Subscription, n: usize) -> Vec<PositionedEvent> {
    let mut taken = Vec::with_capacity(n);
    while taken.len() < n {
        match tokio::time::timeout(Duration::from_secs(20), subscription.next()).await {
            Ok(Some(item)) => taken.push(item.unwrap()),
            Ok(None) => panic!("the subscription ended after {} of {n} events", taken.len()),
            Err(_) => panic!("the subscription gave {} of {n} events, then nothing", taken.len()),
        }
    }
    taken
}

async fn until_covers(site: &Site, target: &VectorClock) {
    if tokio::time::timeout(Duration::from_secs(20), site.wait_for(target)).await.is_err() {
        panic!("the site never caught up: has {:?}, needs {target:?}", site.frontier().await.unwrap());
    }
}

/// Writes `per_writer` events from each of `writers` concurrent writers into streams
/// picked at random among `streams`; returns the ids written.
async fn write_concurrently(
    site: &Site,
    rng: &mut Rng,
    writers: usize,
    per_writer: usize,
    streams: &[StreamId],
) -> Vec<EventId> {
    let mut tasks = Vec::new();
    for _ in 0..writers {
        let picks: Vec<StreamId> = (0..per_writer).map(|_| streams[rng.index(streams.len())]).collect();
        let site = site.clone();
        tasks.push(actix::spawn(async move {
            let mut ids = Vec::new();
            for (n, stream) in picks.into_iter().enumerate() {
                let actor = site.stream::<TrailStream>(stream).await.unwrap();
                ids.push(actor.send(Emit::new(n as u64)).await.unwrap().unwrap().id);
            }
            ids
        }));
    }
    let mut ids = Vec::new();
    for task in tasks {
        ids.extend(task.await.unwrap());
    }
    ids
}

/// Checks that `items` are at consecutive positions from `first`, each the event the
/// site's log holds there, each event once, and in causal order: an event comes after its
/// lane's previous event and everything its clock names.
fn assert_complete_and_causal(site: &Site, items: &[PositionedEvent], first: u64) {
    let mut seen = HashSet::new();
    let mut delivered: HashMap<Lane, Seq> = HashMap::new();
    for (expected, item) in (first..).zip(items) {
        assert_eq!(item.position, LogPos(expected), "positions are consecutive");
        let stored = site.storage().log_after(LogPos(expected - 1), 1, usize::MAX).unwrap();
        assert_eq!((stored.last, stored.events[0].id), (item.position, item.event.id), "the log's event there");
        let event = &item.event;
        assert!(seen.insert(event.id), "event {} came twice", event.id);
        let before = delivered.get(&event.lane).copied().unwrap_or(Seq(0));
        assert_eq!(before.next(), event.seq, "{} comes right after its lane's previous event", event.id);
        for (lane, seq) in event.clock.iter() {
            if lane != event.lane {
                assert!(
                    delivered.get(&lane).is_some_and(|&held| held >= seq),
                    "{} comes after what it depends on",
                    event.id
                );
            }
        }
        delivered.insert(event.lane, event.seq);
    }
}

/// Writers at two sites at once, replicating both ways: a subscription started before
/// any write gets every event the site holds, once each, at consecutive positions, in
/// causal order; a catch-up subscription from 0 gets the same sequence; and the live one
/// then goes on with the next event.
#[test]
fn every_event_comes_once_in_position_order_under_concurrent_writes_and_replication() {
    let seed = seed();
    println!("GUNDB_SEED={seed}");
    run_site(move || async move {
        let mut rng = Rng::new(seed);
        let (a, b) = (Site::temporary().unwrap(), Site::temporary().unwrap());
        a.register::<TrailStream>().await.unwrap();
        b.register::<TrailStream>().await.unwrap();
        let mut live = a.subscribe_all(Filter::All, LogPos(0)).unwrap();
        let (end_a, end_b) = in_process(16);
        let _ab = connect(&a, end_a, NodeConfig::default());
        let _ba = connect(&b, end_b, NodeConfig::default());
        let streams: Vec<StreamId> = (0..40).map(|_| StreamId::from_u128(u128::from(rng.next_u64()))).collect();
        let (mut rng_a, mut rng_b) = (Rng::new(rng.next_u64()), Rng::new(rng.next_u64()));
        let (at_a, at_b) = futures::join!(
            write_concurrently(&a, &mut rng_a, 8, 60, &streams),
            write_concurrently(&b, &mut rng_b, 4, 40, &streams)
        );
        until_covers(&a, &b.frontier().await.unwrap()).await;
        let written: HashSet<EventId> = at_a.iter().chain(&at_b).copied().collect();
        let items = take(&mut live, written.len()).await;
        assert_complete_and_causal(&a, &items, 1);
        let got: HashSet<EventId> = items.iter().map(|item| item.event.id).collect();
        assert_eq!(got, written, "seed {seed}: every event written at either site, and no other");

        let mut again = a.subscribe_all(Filter::All, LogPos(0)).unwrap();
        assert_eq!(take(&mut again, items.len()).await, items, "seed {seed}: catch-up reads the same order");

        let next = b.stream::<TrailStream>(streams[0]).await.unwrap().send(Emit::new(7)).await.unwrap().unwrap();
        let after = take(&mut live, 1).await;
        assert_eq!((after[0].position, after[0].event.id), (LogPos(items.len() as u64 + 1), next.id));
        a.close().await;
        b.close().await;
    });
}

/// From each checkpoint a subscription gets exactly the events after it, also against the
/// site reopened from its folder: the next event written after comes right after them.
#[test]
fn resuming_from_every_checkpoint_gives_exactly_the_rest_also_after_a_restart() {
    run_site(|| async {
        let dir = tempfile::tempdir().unwrap();
        let streams: Vec<StreamId> = (1..=7).map(StreamId::from_u128).collect();
        let site = Site::open(dir.path()).unwrap();
        write_concurrently(&site, &mut Rng::new(seed()), 6, 20, &streams).await;
        let all = take(&mut site.subscribe_all(Filter::All, LogPos(0)).unwrap(), 120).await;
        site.close().await;

        let site = Site::open(dir.path()).unwrap();
        let mut resumed = Vec::new();
        for k in 0..=all.len() {
            let checkpoint = if k == 0 { LogPos(0) } else { all[k - 1].position };
            let mut subscription = site.subscribe_all(Filter::All, checkpoint).unwrap();
            assert_eq!(take(&mut subscription, all.len() - k).await, all[k..], "from checkpoint {checkpoint}");
            resumed.push(subscription);
        }
        let marker = site.stream::<TrailStream>(streams[0]).await.unwrap().send(Emit::new(99)).await.unwrap().unwrap();
        for subscription in &mut resumed {
            let next = take(subscription, 1).await;
            assert_eq!((next[0].position, next[0].event.id), (LogPos(121), marker.id), "nothing more before it");
        }
        site.close().await;
    });
}

/// A filter by type sees that type's events only, a filter by streams those streams'
/// only, each at the positions the unfiltered subscription gives them.
#[test]
fn a_filter_by_type_or_streams_sees_only_those() {
    run_site(|| async {
        let site = Site::temporary().unwrap();
        let trails: Vec<StreamId> = (1..=3).map(StreamId::from_u128).collect();
        let counters: Vec<StreamId> = (11..=13).map(StreamId::from_u128).collect();
        for n in 0..30u64 {
            let index = usize::try_from(n % 3).unwrap();
            site.stream::<TrailStream>(trails[index]).await.unwrap().send(Emit::new(n)).await.unwrap().unwrap();
            let counter = site.stream::<Counter>(counters[index]).await.unwrap();
            counter.send(Decide::new(move |_| Ok::<_, String>(vec![n, n + 1]))).await.unwrap().unwrap();
        }
        let all = take(&mut site.subscribe_all(Filter::All, LogPos(0)).unwrap(), 90).await;
        let expect =
            |keep: &dyn Fn(&PositionedEvent) -> bool| all.iter().filter(|i| keep(i)).cloned().collect::<Vec<_>>();

        let of_counters = take(&mut site.subscribe_all(Filter::of_type::<Counter>(), LogPos(0)).unwrap(), 60).await;
        assert_eq!(of_counters, expect(&|i| i.event.stream_type == Counter::TYPE_NAME));
        let chosen: HashSet<StreamId> = [trails[1], counters[2]].into_iter().collect();
        let of_streams = take(&mut site.subscribe_all(Filter::Streams(chosen.clone()), LogPos(0)).unwrap(), 30).await;
        assert_eq!(of_streams, expect(&|i| chosen.contains(&i.event.lane.stream)));

        // Nothing else comes: the next event of the type is the next item.
        let mut counters_live = site.subscribe_all(Filter::of_type::<Counter>(), of_counters[59].position).unwrap();
        site.stream::<TrailStream>(trails[0]).await.unwrap().send(Emit::new(5)).await.unwrap().unwrap();
        let last = site.stream::<Counter>(counters[0]).await.unwrap().send(Emit::new(5)).await.unwrap().unwrap();
        let next = take(&mut counters_live, 1).await;
        assert_eq!((next[0].position, next[0].event.id), (LogPos(92), last.id));
        site.close().await;
    });
}

/// A consumer that reads slowly holds the reading back: the subscription never reads
/// the log more than its pages ahead of what it handed over, and still hands over all.
#[test]
fn a_slow_consumer_holds_the_reading_back() {
    run_site(|| async {
        let site = Site::temporary().unwrap();
        let stream = site.stream::<Counter>(StreamId::from_u128(1)).await.unwrap();
        let events = 12 * limits::SUBSCRIPTION_PAGE_EVENTS as u64;
        for chunk in 0..events / 1_000 + 1 {
            let count = (events - chunk * 1_000).min(1_000);
            if count > 0 {
                stream.send(Decide::new(move |_| Ok::<_, String>(vec![1; count as usize]))).await.unwrap().unwrap();
            }
        }
        let mut subscription = site.subscribe_all(Filter::All, LogPos(0)).unwrap();
        let bound = (limits::SUBSCRIPTION_PAGES_AHEAD as u64 + 2) * limits::SUBSCRIPTION_PAGE_EVENTS as u64;
        for expected in 1..=events {
            let item = take(&mut subscription, 1).await.remove(0);
            assert_eq!(item.position, LogPos(expected));
            let ahead = subscription.read_upto().0 - item.position.0;
            assert!(ahead <= bound, "read {ahead} events ahead of the consumer (bound {bound})");
            // A slow consumer: the reading has every chance to run ahead meanwhile.
            tokio::task::spawn_blocking(|| ()).await.unwrap();
        }
        site.close().await;
    });
}

/// A checkpoint past the end of the log (another site's) is refused, naming both.
#[test]
fn a_checkpoint_past_the_end_of_the_log_is_refused() {
    run_site(|| async {
        let site = Site::temporary().unwrap();
        site.stream::<Counter>(StreamId::from_u128(1)).await.unwrap().send(Emit::new(1)).await.unwrap().unwrap();
        let error = site.subscribe_all(Filter::All, LogPos(10)).err().expect("refused");
        assert_eq!(error, SubscribeError::AheadOfLog { after: LogPos(10), end: LogPos(1) });
        assert!(error.to_string().contains("positions are local"), "{error}");
        site.close().await;
    });
}

/// Closing the site ends its subscriptions, also one waiting at the end of the log.
#[test]
fn closing_the_site_ends_its_subscriptions() {
    run_site(|| async {
        let site = Site::temporary().unwrap();
        site.stream::<Counter>(StreamId::from_u128(1)).await.unwrap().send(Emit::new(1)).await.unwrap().unwrap();
        let mut all = site.subscribe_all(Filter::All, LogPos(0)).unwrap();
        assert_eq!(take(&mut all, 1).await[0].position, LogPos(1));
        site.close().await;
        let end = tokio::time::timeout(Duration::from_secs(20), all.next()).await.expect("the subscription ends");
        assert!(end.is_none(), "{end:?}");
    });
}
