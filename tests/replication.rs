//! Replication between sites in one process, through source and sink nodes: catch-up on
//! connect, live streaming after, relay through a middle site, and convergence after a
//! partition on links that drop, duplicate and delay frames.
#![allow(clippy::unwrap_used)]

mod common;

use common::{run_site, Trail, TrailStream};
use gundb::node::transport::{faulty, in_process, Faults};
use gundb::node::{connect, HoldsPeerLog, NodeConfig};
use gundb::{Emit, Emitted, GetView, Site, StreamId, VectorClock};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

/// Waits until everything in `target` is durable at `site`; a guard turns a hang into a
/// failure.
async fn until_covers(site: &Site, target: &VectorClock) {
    if tokio::time::timeout(Duration::from_secs(10), site.wait_for(target)).await.is_err() {
        let metrics = site.metrics().await.unwrap();
        let frontier = site.frontier().await.unwrap();
        panic!("the site never caught up: has {frontier:?}, needs {target:?}, metrics {metrics:?}");
    }
}

async fn view(site: &Site, stream: StreamId) -> Trail {
    let actor = site.stream::<TrailStream>(stream).await.unwrap();
    actor.send(GetView::new()).await.unwrap().unwrap().view
}

async fn write(site: &Site, stream: StreamId, numbers: std::ops::Range<u64>) -> Vec<Emitted> {
    let actor = site.stream::<TrailStream>(stream).await.unwrap();
    let mut emitted = Vec::new();
    for n in numbers {
        emitted.push(actor.send(Emit::new(n)).await.unwrap().unwrap());
    }
    emitted
}

fn quiet() -> NodeConfig {
    NodeConfig { hello_every: None, ..NodeConfig::default() }
}

/// Writes made before connecting arrive by catch-up, writes made after by streaming.
#[test]
fn two_sites_catch_up_then_stream() {
    run_site(|| async {
        let (a, b) = (Site::temporary().unwrap(), Site::temporary().unwrap());
        let stream = StreamId::from_u128(1);
        write(&a, stream, 0..50).await;
        b.register::<TrailStream>().await.unwrap();
        let (end_a, end_b) = in_process(4);
        let _ab = connect(&a, end_a, quiet());
        let _ba = connect(&b, end_b, quiet());
        until_covers(&b, &a.frontier().await.unwrap()).await;
        write(&a, stream, 50..80).await;
        write(&b, stream, 100..110).await;
        until_covers(&b, &a.frontier().await.unwrap()).await;
        until_covers(&a, &b.frontier().await.unwrap()).await;
        let (va, vb) = (view(&a, stream).await, view(&b, stream).await);
        assert_eq!(va.0.len(), 90);
        assert_eq!(va, vb);
        let (ma, mb) = (a.metrics().await.unwrap(), b.metrics().await.unwrap());
        assert_eq!((ma.emitted, mb.emitted), (80, 10));
        assert_eq!((ma.delivered, mb.delivered), (10, 80));
        assert_eq!(ma.received, 10, "B sent A only B's writes, not A's back: {ma:?}");
        assert!(ma.batches_sent >= 2 && mb.batches_received >= 2, "{ma:?} {mb:?}");
    });
}

/// A site catching up on streams it has never held stores each one's first event without
/// starting an actor for it (an actor's start was most of the cost of each new stream);
/// the views come out right when first read, for streams of one event and of several,
/// and for streams that then take more events live. A forged counter on a new stream's
/// first event is refused as an actor would refuse it, and leaves no stream behind.
#[test]
fn a_site_catching_up_on_new_streams_starts_no_actor_for_them() {
    run_site(|| async {
        let (a, b) = (Site::temporary().unwrap(), Site::temporary().unwrap());
        let id = |n: u64| StreamId::from_u128(u128::from(n) + 1_000);
        for n in 0..200 {
            write(&a, id(n), n..n + 1).await;
        }
        b.register::<TrailStream>().await.unwrap();
        let (end_a, end_b) = in_process(4);
        let _ab = connect(&a, end_a, quiet());
        let _ba = connect(&b, end_b, quiet());
        until_covers(&b, &a.frontier().await.unwrap()).await;
        let metrics = b.metrics().await.unwrap();
        assert_eq!((metrics.delivered, metrics.refused, metrics.streams_live_max), (200, 0, 0), "{metrics:?}");

        // Live: new streams of several events each, and more events into streams B holds.
        for n in 200..220 {
            write(&a, id(n), 0..5).await;
        }
        for n in 0..20 {
            write(&a, id(n), 100..103).await;
        }
        until_covers(&b, &a.frontier().await.unwrap()).await;
        for n in 0..220 {
            assert_eq!(view(&b, id(n)).await, view(&a, id(n)).await, "stream {n}");
        }
        let metrics = b.metrics().await.unwrap();
        assert_eq!((metrics.delivered, metrics.refused, metrics.unfolded), (360, 0, 0), "{metrics:?}");

        // A new stream's first event whose counter is not one above what it depends on.
        let forged_stream = StreamId::from_u128(99);
        let mut forged = vec![common::remote_event(common::remote_lane(66, forged_stream), 1, 7, 0)];
        let attestations = gundb::testkit::attest(&mut forged);
        b.receive(forged, attestations).await.unwrap();
        let metrics = b.metrics().await.unwrap();
        assert_eq!((metrics.refused, metrics.malformed), (1, 1), "{metrics:?}");
        assert_eq!(b.storage().stream_type(forged_stream).unwrap(), None, "nothing stored of it");
    });
}

/// The same over bounded crossbeam channels between threads.
#[test]
fn two_sites_replicate_over_crossbeam_channels() {
    run_site(|| async {
        let (a, b) = (Site::temporary().unwrap(), Site::temporary().unwrap());
        let stream = StreamId::from_u128(6);
        let (end_a, end_b) = gundb::node::transport::crossbeam(2);
        connect(&a, end_a, quiet());
        connect(&b, end_b, quiet());
        write(&a, stream, 0..300).await;
        write(&b, stream, 1_000..1_010).await;
        until_covers(&b, &a.frontier().await.unwrap()).await;
        until_covers(&a, &b.frontier().await.unwrap()).await;
        assert_eq!(view(&a, stream).await, view(&b, stream).await);
        assert_eq!(view(&a, stream).await.0.len(), 310);
    });
}

/// A and C never talk; B, in the middle, passes everything on both ways.
#[test]
fn a_middle_site_relays() {
    run_site(|| async {
        let sites: Vec<Site> = (0..3).map(|_| Site::temporary().unwrap()).collect();
        let stream = StreamId::from_u128(2);
        for (left, right) in [(0, 1), (1, 2)] {
            let (l, r) = in_process(4);
            connect(&sites[left], l, quiet());
            connect(&sites[right], r, quiet());
        }
        write(&sites[0], stream, 0..20).await;
        write(&sites[2], stream, 100..120).await;
        until_covers(&sites[2], &sites[0].frontier().await.unwrap()).await;
        until_covers(&sites[0], &sites[2].frontier().await.unwrap()).await;
        assert_eq!(view(&sites[0], stream).await, view(&sites[2], stream).await);
        assert_eq!(view(&sites[0], stream).await.0.len(), 40);
    });
}

/// Three sites on faulty links (drops, copies, delays), a partition A | B C with writes
/// on both sides (concurrent writes to one stream), then a heal: every site ends with
/// every acknowledged write and the same views.
#[test]
fn three_sites_converge_after_a_partition_on_faulty_links() {
    run_site(|| async {
        let sites: Vec<Site> = (0..3).map(|_| Site::temporary().unwrap()).collect();
        let streams = [StreamId::from_u128(3), StreamId::from_u128(4)];
        let mut links = Vec::new();
        for (i, (left, right)) in [(0, 1), (0, 2), (1, 2)].into_iter().enumerate() {
            let faults = Arc::new(Faults::default());
            faults.drop_percent.store(10, Ordering::SeqCst);
            faults.duplicate_percent.store(10, Ordering::SeqCst);
            faults.delay_percent.store(10, Ordering::SeqCst);
            let (l, r) = faulty(4, Arc::clone(&faults), 77 + i as u64);
            // Frequent hellos, and a dropped frame sent again after half a second rather
            // than the default five: the links drop one frame in ten.
            let config =
                NodeConfig { hello_every: Some(Duration::from_millis(20)), resend_after: Duration::from_millis(500) };
            connect(&sites[left], l, config.clone());
            connect(&sites[right], r, config);
            links.push(((left, right), faults));
        }
        let mut acknowledged = Vec::new();
        for (n, site) in sites.iter().enumerate() {
            acknowledged.extend(write(site, streams[0], (n as u64 * 100)..(n as u64 * 100 + 10)).await);
        }
        // Partition A | B C.
        for ((left, _), faults) in &links {
            if *left == 0 {
                faults.partition(true);
            }
        }
        for (n, site) in sites.iter().enumerate() {
            for &stream in &streams {
                acknowledged.extend(write(site, stream, (1_000 + n as u64 * 100)..(1_000 + n as u64 * 100 + 15)).await);
            }
        }
        for (_, faults) in &links {
            faults.partition(false);
        }
        let mut union = VectorClock::new();
        for site in &sites {
            union.merge(&site.frontier().await.unwrap());
        }
        for site in &sites {
            until_covers(site, &union).await;
            for emitted in &acknowledged {
                assert!(site.frontier().await.unwrap().dominates(&emitted.clock), "an acknowledged write is missing");
            }
        }
        for &stream in &streams {
            let first = view(&sites[0], stream).await;
            for site in &sites[1..] {
                assert_eq!(view(site, stream).await, first);
            }
        }
        let injected: u64 = links.iter().map(|(_, f)| f.injected.load(Ordering::SeqCst)).sum();
        assert!(injected >= 10, "the links injected only {injected} faults");
    });
}

/// Site C, in its own actix system on its own thread, on a real sled folder: it connects,
/// writes `numbers`, reports what was acknowledged, and runs until told to stop.
struct SiteThread {
    written: tokio::sync::oneshot::Receiver<Vec<Emitted>>,
    /// Stops the site once it holds everything in the clock.
    stop: tokio::sync::oneshot::Sender<VectorClock>,
    /// Its view when it stopped.
    thread: std::thread::JoinHandle<Trail>,
}

impl SiteThread {
    fn start(
        path: std::path::PathBuf,
        ends: Vec<gundb::node::transport::Endpoint>,
        stream: StreamId,
        numbers: std::ops::Range<u64>,
    ) -> Self {
        let (report, written) = tokio::sync::oneshot::channel();
        let (stop, stopped) = tokio::sync::oneshot::channel::<VectorClock>();
        let thread = std::thread::spawn(move || {
            actix::System::new().block_on(async move {
                let site = Site::open(&path).unwrap();
                let config = NodeConfig {
                    hello_every: Some(Duration::from_millis(20)),
                    resend_after: Duration::from_millis(500),
                };
                for end in ends {
                    connect(&site, end, config.clone());
                }
                report.send(write(&site, stream, numbers).await).unwrap();
                let target = stopped.await.unwrap();
                until_covers(&site, &target).await;
                view(&site, stream).await
            })
            // The system is gone: its actors stopped and the database closed.
        });
        Self { written, stop, thread }
    }

    /// Stops the site once it holds `target`; returns its view then.
    async fn stop(self, target: VectorClock) -> Trail {
        self.stop.send(target).unwrap();
        tokio::task::spawn_blocking(move || self.thread.join().unwrap()).await.unwrap()
    }
}

/// Three sites on real sled folders and faulty links; A is partitioned from B and C; C
/// is stopped and restarted from its folder during the partition; after the heal every
/// site has every acknowledged write and the views are equal.
#[test]
fn a_restarted_site_catches_up_after_a_partition() {
    run_site(|| async {
        let folders: Vec<tempfile::TempDir> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
        let stream = StreamId::from_u128(5);
        let (a, b) = (Site::open(folders[0].path()).unwrap(), Site::open(folders[1].path()).unwrap());
        // Links drop one frame in twenty: sent again after half a second, not five.
        let config =
            NodeConfig { hello_every: Some(Duration::from_millis(20)), resend_after: Duration::from_millis(500) };
        let link = |seed| {
            let faults = Arc::new(Faults::default());
            faults.drop_percent.store(5, Ordering::SeqCst);
            faults.delay_percent.store(20, Ordering::SeqCst);
            faults.duplicate_percent.store(10, Ordering::SeqCst);
            let (l, r) = faulty(4, Arc::clone(&faults), seed);
            (l, r, faults)
        };
        let (ab_a, ab_b, ab) = link(1);
        connect(&a, ab_a, config.clone());
        connect(&b, ab_b, config.clone());
        let (ac_a, ac_c, ac) = link(2);
        connect(&a, ac_a, config.clone());
        let (bc_b, bc_c, _) = link(3);
        connect(&b, bc_b, config.clone());
        let mut c = SiteThread::start(folders[2].path().to_path_buf(), vec![ac_c, bc_c], stream, 200..210);

        let mut acknowledged = write(&a, stream, 0..10).await;
        acknowledged.extend(write(&b, stream, 100..110).await);
        acknowledged.extend((&mut c.written).await.unwrap());
        ab.partition(true);
        ac.partition(true);
        acknowledged.extend(write(&a, stream, 10..20).await);
        acknowledged.extend(write(&b, stream, 110..120).await);
        c.stop(VectorClock::new()).await; // C may stop before B has its writes: they wait in C's folder

        // C comes back from its folder, on fresh links to A and B, and writes on.
        let (ac_a, ac_c, _) = link(4);
        connect(&a, ac_a, config.clone());
        let (bc_b, bc_c, _) = link(5);
        connect(&b, bc_b, config.clone());
        let mut c = SiteThread::start(folders[2].path().to_path_buf(), vec![ac_c, bc_c], stream, 210..215);
        ab.partition(false); // the old A–C link stays cut: it is dead anyway
        let late = (&mut c.written).await.unwrap();
        assert_eq!(late.first().unwrap().seq.0, 11, "C's lane continues with no gap and no reuse");
        acknowledged.extend(late);

        let mut target = VectorClock::new();
        for emitted in &acknowledged {
            target.merge(&emitted.clock);
        }
        until_covers(&a, &target).await;
        until_covers(&b, &target).await;
        let vc = c.stop(target.clone()).await;
        let (va, vb) = (view(&a, stream).await, view(&b, stream).await);
        assert_eq!(va.0.len(), 55);
        assert_eq!(va, vb);
        assert_eq!(va, vc, "the restarted site has the same view");
        let stored = a.storage().events_from(stream, std::ops::Bound::Unbounded, None, usize::MAX).unwrap();
        assert_eq!(
            va,
            common::fold(&gundb::sort_events(stored).unwrap()),
            "the view is the fold of the canonical order"
        );
        assert!(ab.injected.load(Ordering::SeqCst) >= 5, "the A–B link injected too few faults");
        for emitted in &acknowledged {
            assert!(a.frontier().await.unwrap().dominates(&emitted.clock), "an acknowledged write is missing");
            assert!(b.frontier().await.unwrap().dominates(&emitted.clock), "an acknowledged write is missing");
        }
    });
}

/// A router buffer of 4 events overflows when 40 arrive in reverse order: the overflow
/// is dropped and counted, and catch-up from a peer that has them fills the gap later,
/// even though the buffer is still full of events waiting for them.
#[test]
fn an_overflowing_buffer_is_refilled_by_catch_up() {
    run_site(|| async {
        let source = Site::temporary().unwrap();
        let stream = StreamId::from_u128(7);
        write(&source, stream, 0..40).await;
        let tiny = gundb::SiteConfig {
            pending: gundb::router::PendingLimits { events_max: 4, bytes_max: u64::MAX, ..Default::default() },
            ..gundb::SiteConfig::default()
        };
        let storage: Arc<dyn gundb::storage::Storage> = Arc::new(gundb::storage::SledStorage::temporary().unwrap());
        let small = Site::with_storage(storage, tiny).unwrap();
        small.register::<TrailStream>().await.unwrap();
        let mut events: Vec<gundb::Event> = {
            let actor = source.stream::<TrailStream>(stream).await.unwrap();
            actor.send(gundb::History { after: None, limit: 100 }).await.unwrap().unwrap().events
        };
        events.reverse();
        let attestations = common::stored_attestations(&source, &events);
        small.receive(events, attestations).await.unwrap();
        let metrics = small.metrics().await.unwrap();
        // 40..=37 wait in the buffer, 36..=2 find it full, and 1 is deliverable at once.
        assert_eq!(metrics.dropped_on_overflow, 35, "{metrics:?}");
        assert_eq!(metrics.pending, 4);

        let (l, r) = in_process(4);
        connect(&source, l, quiet());
        connect(&small, r, quiet());
        until_covers(&small, &source.frontier().await.unwrap()).await;
        assert_eq!(view(&small, stream).await, view(&source, stream).await);
    });
}

/// A relay stores an event it cannot check (its type is unknown there) whose payload is
/// garbage; the site that knows the type stores it too, once, skips it in its view and
/// counts it, and the garbage's lane flows on: its next event is folded.
#[test]
fn an_event_whose_payload_does_not_decode_is_taken_once_and_its_lane_flows_on() {
    run_site(|| async {
        let (relay, reader) = (Site::temporary().unwrap(), Site::temporary().unwrap());
        reader.register::<TrailStream>().await.unwrap();
        let stream = StreamId::from_u128(8);
        let (bad_lane, good_lane) = (common::remote_lane(66, stream), common::remote_lane(77, stream));
        let mut garbage = common::remote_event(bad_lane, 1, 1, 0);
        garbage.payload = vec![gundb::codec::FORMAT_VERSION, 0xFF, 0xFF, 0xFF];
        garbage.id = garbage.content_id();
        let mut first = vec![garbage, common::remote_event(good_lane, 1, 1, 5)];
        let attestations = gundb::testkit::attest(&mut first);
        relay.receive(first, attestations).await.unwrap();
        let (l, r) = in_process(4);
        connect(&relay, l, quiet());
        connect(&reader, r, quiet());
        let good: VectorClock = [(good_lane, gundb::Seq(1))].into_iter().collect();
        until_covers(&reader, &good).await;
        // Another round trip, during which a retry loop would fetch the garbage many times.
        let mut second = vec![common::remote_event(good_lane, 2, 2, 6), common::remote_event(bad_lane, 2, 2, 7)];
        let attestations = gundb::testkit::attest(&mut second);
        relay.receive(second, attestations).await.unwrap();
        let all: VectorClock = [(good_lane, gundb::Seq(2)), (bad_lane, gundb::Seq(2))].into_iter().collect();
        until_covers(&reader, &all).await;
        let metrics = reader.metrics().await.unwrap();
        assert_eq!((metrics.refused, metrics.unfolded, metrics.received), (0, 1, 4), "{metrics:?}");
        let mut folded = view(&reader, stream).await.0;
        folded.sort_unstable(); // 6 and 7 are concurrent: their order is by id
        assert_eq!(folded, vec![5, 6, 7]);
    });
}

/// A stream of numbers summed: the same events as `TrailStream`, another type name.
struct SumStream;

impl gundb::Stream for SumStream {
    const TYPE_NAME: &'static str = "test.sum";
    type Event = u64;
    type View = Sum;
}

#[derive(Clone, Default, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
struct Sum(u64);

impl gundb::View<u64> for Sum {
    fn apply_event(&mut self, event: &u64, _: &gundb::EventMeta<'_>) {
        self.0 += event;
    }
}

/// One stream, two types: A writes stream X as `TrailStream`, B as `SumStream`. Each
/// refuses the other's events of X for good, each once (the lane stops there and its
/// later events are dropped on arrival, not held), and neither fetches them again: after
/// two more round trips on another stream each site has received every event exactly
/// once. Both keep serving: the other stream replicates both ways, and each site's X
/// takes local writes.
#[test]
fn a_stream_of_another_type_at_each_site_is_refused_once_and_both_keep_serving() {
    run_site(|| async {
        let (a, b) = (Site::temporary().unwrap(), Site::temporary().unwrap());
        let (x, y) = (StreamId::from_u128(12), StreamId::from_u128(13));
        write(&a, x, 0..3).await;
        let sums = b.stream::<SumStream>(x).await.unwrap();
        for n in 10..13 {
            sums.send(Emit::new(n)).await.unwrap().unwrap();
        }
        let (l, r) = in_process(4);
        connect(&a, l, quiet());
        connect(&b, r, quiet());
        for round in 0..3 {
            write(&a, y, round..round + 1).await;
            write(&b, y, 100 + round..101 + round).await;
            let mut both = a.frontier().await.unwrap();
            both.merge(&b.frontier().await.unwrap());
            let y_lanes: VectorClock = both.iter().filter(|(lane, _)| lane.stream == y).collect();
            until_covers(&a, &y_lanes).await;
            until_covers(&b, &y_lanes).await;
        }
        for (site, name) in [(&a, "A"), (&b, "B")] {
            let metrics = site.metrics().await.unwrap();
            assert_eq!(metrics.refused, 3, "{name}: the other's three events of X, once each: {metrics:?}");
            assert_eq!(metrics.received, 6, "{name}: three of X and three of Y, each once: {metrics:?}");
        }
        write(&a, x, 3..4).await;
        sums.send(Emit::new(13)).await.unwrap().unwrap();
        assert_eq!(view(&a, x).await, Trail(vec![0, 1, 2, 3]));
        assert_eq!(sums.send(GetView::new()).await.unwrap().unwrap().view, Sum(46));
    });
}

/// One-way cuts: A cannot reach B directly (but B reaches A), and C relays: both end with
/// every write.
#[test]
fn a_one_way_cut_is_healed_through_a_relay() {
    run_site(|| async {
        let sites: Vec<Site> = (0..3).map(|_| Site::temporary().unwrap()).collect();
        let stream = StreamId::from_u128(9);
        let config = NodeConfig { hello_every: Some(Duration::from_millis(20)), ..NodeConfig::default() };
        let mut ab = None;
        for (i, (left, right)) in [(0, 1), (0, 2), (1, 2)].into_iter().enumerate() {
            let faults = Arc::new(Faults::default());
            let (l, r) = faulty(4, Arc::clone(&faults), 40 + i as u64);
            connect(&sites[left], l, config.clone());
            connect(&sites[right], r, config.clone());
            if (left, right) == (0, 1) {
                faults.cut_forward.store(true, Ordering::SeqCst); // A → B is cut, B → A works
                ab = Some(faults);
            }
        }
        write(&sites[0], stream, 0..15).await;
        write(&sites[1], stream, 100..115).await;
        let mut union = VectorClock::new();
        for site in &sites {
            union.merge(&site.frontier().await.unwrap());
        }
        for site in &sites {
            until_covers(site, &union).await;
        }
        assert_eq!(view(&sites[0], stream).await, view(&sites[1], stream).await);
        assert!(ab.unwrap().injected.load(Ordering::SeqCst) > 0, "frames from A to B were cut");
    });
}

/// A frame that does not decode closes the connection it came on; the site goes on
/// serving (and loses nothing).
#[test]
fn a_garbage_frame_closes_its_connection() {
    run_site(|| async {
        let site = Site::temporary().unwrap();
        let stream = StreamId::from_u128(10);
        write(&site, stream, 0..3).await;
        let (raw, end) = in_process(4);
        connect(&site, end, quiet());
        raw.sender.send(vec![gundb::codec::FORMAT_VERSION, 0xFF, 0x13, 0x37]).await.unwrap();
        tokio::time::timeout(Duration::from_secs(10), raw.sender.closed()).await.expect("the connection was closed");
        assert_eq!(view(&site, stream).await, Trail(vec![0, 1, 2]));
    });
}

/// Without hellos, on links that drop a fifth of the frames both ways (events, wants and
/// acknowledgements alike): what is lost goes again because its acknowledgement is
/// missing, and the sites converge.
#[test]
fn a_lost_frame_goes_again_because_its_acknowledgement_is_missing() {
    run_site(|| async {
        let (a, b) = (Site::temporary().unwrap(), Site::temporary().unwrap());
        let faults = Arc::new(Faults::default());
        faults.drop_percent.store(20, Ordering::SeqCst);
        let (l, r) = faulty(4, Arc::clone(&faults), 11);
        let config = NodeConfig { hello_every: None, resend_after: Duration::from_millis(100) };
        connect(&a, l, config.clone());
        connect(&b, r, config);
        let mut target = VectorClock::new();
        for n in 0..20_u64 {
            for emitted in write(&a, StreamId::from_u128(u128::from(100 + n)), (n * 10)..(n * 10 + 10)).await {
                target.merge(&emitted.clock);
            }
            for emitted in write(&b, StreamId::from_u128(u128::from(200 + n)), (n * 10)..(n * 10 + 10)).await {
                target.merge(&emitted.clock);
            }
        }
        until_covers(&a, &target).await;
        until_covers(&b, &target).await;
        assert!(faults.injected.load(Ordering::SeqCst) >= 3, "the link dropped too few frames to test anything");
        for n in 0..20_u64 {
            let stream = StreamId::from_u128(u128::from(100 + n));
            assert_eq!(view(&a, stream).await, view(&b, stream).await, "stream {n}");
        }
    });
}

/// A site records how far it holds each peer's log; reconnected after a restart, it asks
/// for the rest only: nothing it held is sent again.
#[test]
fn a_restarted_site_resumes_from_the_position_it_recorded() {
    let folders: Vec<tempfile::TempDir> = (0..2).map(|_| tempfile::tempdir().unwrap()).collect();
    let paths: Vec<std::path::PathBuf> = folders.iter().map(|f| f.path().to_path_buf()).collect();
    let streams: Vec<StreamId> = (0..50).map(|n| StreamId::from_u128(300 + n)).collect();
    let (first, again) = (paths.clone(), paths.clone());
    let (written, more) = (streams.clone(), streams.clone());
    run_site(move || async move {
        let (a, b) = (Site::open(&first[0]).unwrap(), Site::open(&first[1]).unwrap());
        let (l, r) = in_process(4);
        connect(&a, l, quiet());
        let at_b = connect(&b, r, quiet());
        for (n, stream) in (0..).zip(&written) {
            write(&a, *stream, (n * 10)..(n * 10 + 10)).await;
        }
        until_covers(&b, &a.frontier().await.unwrap()).await;
        let end = a.storage().log_after(gundb::LogPos(0), usize::MAX, usize::MAX).unwrap().last;
        assert_eq!(end, gundb::LogPos(500), "A's log numbers its 500 events");
        // B records the position once the events are durable, just after it has them.
        let held = tokio::time::timeout(Duration::from_secs(10), at_b.sink.send(HoldsPeerLog(end)));
        assert!(held.await.unwrap().unwrap(), "B's sink took A's log to its end");
        assert_eq!(b.storage().replicated(a.id()).unwrap().upto, end, "B holds A's log up to its end");
    });
    run_site(move || async move {
        let (a, b) = (Site::open(&again[0]).unwrap(), Site::open(&again[1]).unwrap());
        let (l, r) = in_process(4);
        connect(&a, l, quiet());
        connect(&b, r, quiet());
        let emitted = write(&a, more[0], 1_000..1_001).await;
        until_covers(&b, &emitted[0].clock).await;
        let (ma, mb) = (a.metrics().await.unwrap(), b.metrics().await.unwrap());
        assert_eq!(mb.received, 1, "B was sent only the new event: {mb:?}");
        assert_eq!(ma.batches_sent, 1, "{ma:?}");
    });
}

/// In a full mesh of 3 and of 5 sites, all writing into shared streams at once, each site
/// receives each event about once: from its origin, while the other peers, asked to leave
/// it out, do not relay it. Without that, each arrives once per peer (2× and 4×).
#[test]
fn a_full_mesh_receives_each_event_about_once() {
    for count in [3_usize, 5] {
        run_site(move || async move {
            let sites: Vec<Site> = (0..count).map(|_| Site::temporary().unwrap()).collect();
            let config = NodeConfig { hello_every: Some(Duration::from_millis(50)), ..NodeConfig::default() };
            for left in 0..count {
                for right in left + 1..count {
                    let (l, r) = in_process(16);
                    connect(&sites[left], l, config.clone());
                    connect(&sites[right], r, config.clone());
                }
            }
            for site in &sites {
                site.register::<TrailStream>().await.unwrap();
                let live = tokio::time::timeout(Duration::from_secs(10), site.links().until_live(count - 1));
                live.await.expect("every link is seen to work both ways");
            }
            let before = futures::future::join_all(sites.iter().map(|site| site.metrics())).await;
            let streams: Vec<StreamId> = (0..4).map(|n| StreamId::from_u128(900 + n)).collect();
            let writes = sites.iter().enumerate().map(|(n, site)| {
                let streams = streams.clone();
                async move {
                    for (round, stream) in (0..25_u64).zip(streams.iter().cycle()) {
                        let number = n as u64 * 1_000 + round;
                        write(site, *stream, number..number + 1).await;
                    }
                }
            });
            futures::future::join_all(writes).await;
            let mut union = VectorClock::new();
            for site in &sites {
                union.merge(&site.frontier().await.unwrap());
            }
            for site in &sites {
                until_covers(site, &union).await;
            }
            let others = (count as u64 - 1) * 25;
            for (site, before) in sites.iter().zip(before) {
                let (now, before) = (site.metrics().await.unwrap(), before.unwrap());
                let delivered = now.delivered - before.delivered;
                let received = now.received - before.received;
                assert_eq!(delivered, others, "{count} sites: each site took every other's writes");
                assert!(
                    received as f64 <= 1.3 * delivered as f64,
                    "{count} sites: {received} events received for {delivered} delivered: {now:?}"
                );
            }
        });
    }
}

/// A and B each have a direct link to C, so neither relays C's events to the other. When
/// A's link to C is cut, B relays them again, from where A's direct link left off: A is
/// sent C's new events, not C's whole history.
#[test]
fn a_cut_direct_link_costs_only_the_events_it_missed() {
    run_site(|| async {
        let sites: Vec<Site> = (0..3).map(|_| Site::temporary().unwrap()).collect();
        let (a, b, c) = (&sites[0], &sites[1], &sites[2]);
        let config =
            NodeConfig { hello_every: Some(Duration::from_millis(50)), resend_after: Duration::from_millis(500) };
        let (l, r) = in_process(16);
        let a_from_b = connect(a, l, config.clone()).sink;
        connect(b, r, config.clone());
        let (l, r) = in_process(16);
        connect(b, l, config.clone());
        connect(c, r, config.clone());
        let faults = Arc::new(Faults::default());
        let (l, r) = faulty(16, Arc::clone(&faults), 7);
        connect(a, l, config.clone());
        connect(c, r, config.clone());
        for site in &sites {
            site.register::<TrailStream>().await.unwrap();
            let live = tokio::time::timeout(Duration::from_secs(10), site.links().until_live(2));
            live.await.expect("every link is seen to work both ways");
        }
        let stream = StreamId::from_u128(77);
        write(c, stream, 0..100).await;
        let frontier = c.frontier().await.unwrap();
        until_covers(a, &frontier).await;
        until_covers(b, &frontier).await;
        // A counts C's events in B's log held once C's own link says it carried them.
        let end = b.storage().log_end();
        let held = tokio::time::timeout(Duration::from_secs(10), a_from_b.send(HoldsPeerLog(end)));
        assert!(held.await.expect("A holds B's log, C's events included").unwrap());

        let before = a.metrics().await.unwrap();
        faults.partition(true);
        write(c, stream, 100..110).await;
        until_covers(a, &c.frontier().await.unwrap()).await;
        let received = a.metrics().await.unwrap().received - before.received;
        assert_eq!(received, 10, "A was sent C's ten new events only, through B");
        assert_eq!(view(a, stream).await, Trail((0..110).collect()));
    });
}

/// Five sites on real sled folders and faulty links in a full mesh: partitioned into
/// {A, B} and {C, D, E}, D restarted from its folder during the partition, the partition
/// healed, E restarted after; every site writes throughout. In the end every site has
/// every acknowledged write and the views are equal.
#[test]
fn five_sites_converge_through_partitions_and_restarts() {
    run_site(|| async {
        let folders: Vec<tempfile::TempDir> = (0..5).map(|_| tempfile::tempdir().unwrap()).collect();
        let path = |n: usize| folders[n].path().to_path_buf();
        let stream = StreamId::from_u128(6);
        let main: Vec<Site> = (0..3).map(|n| Site::open(path(n)).unwrap()).collect();
        let config =
            NodeConfig { hello_every: Some(Duration::from_millis(20)), resend_after: Duration::from_millis(500) };
        let side = |n: usize| n < 2; // {A, B} against {C, D, E}
        let mut links: Vec<(usize, usize, Arc<Faults>)> = Vec::new();
        let link = |links: &mut Vec<(usize, usize, Arc<Faults>)>, left: usize, right: usize, cut: bool| {
            let faults = Arc::new(Faults::default());
            faults.drop_percent.store(5, Ordering::SeqCst);
            faults.delay_percent.store(20, Ordering::SeqCst);
            faults.duplicate_percent.store(10, Ordering::SeqCst);
            faults.partition(cut && side(left) != side(right));
            let (l, r) = faulty(4, Arc::clone(&faults), 50 + links.len() as u64);
            links.push((left, right, faults));
            (l, r)
        };
        // Links from A, B and C to site `to` (D or E), connected here: `to`'s ends.
        let from_main = |links: &mut Vec<(usize, usize, Arc<Faults>)>, to: usize, cut: bool| -> Vec<_> {
            (main.iter().enumerate())
                .map(|(n, site)| {
                    let (l, r) = link(links, n, to, cut);
                    connect(site, l, config.clone());
                    r
                })
                .collect()
        };
        // A, B and C here; D and E on threads of their own, with links to all.
        for (left, right) in [(0, 1), (0, 2), (1, 2)] {
            let (l, r) = link(&mut links, left, right, false);
            connect(&main[left], l, config.clone());
            connect(&main[right], r, config.clone());
        }
        let (mut d_ends, mut e_ends) = (from_main(&mut links, 3, false), from_main(&mut links, 4, false));
        let (l, r) = link(&mut links, 3, 4, false);
        d_ends.push(l);
        e_ends.push(r);
        let mut d = SiteThread::start(path(3), d_ends, stream, 300..310);
        let mut e = SiteThread::start(path(4), e_ends, stream, 400..410);
        let mut acknowledged = Vec::new();
        for (n, site) in main.iter().enumerate() {
            let from = n as u64 * 100;
            acknowledged.extend(write(site, stream, from..from + 10).await);
        }
        acknowledged.extend((&mut d.written).await.unwrap());
        acknowledged.extend((&mut e.written).await.unwrap());

        // The partition; D restarts in it, on fresh links (those across it cut too).
        for (left, right, faults) in &links {
            faults.partition(side(*left) != side(*right));
        }
        for (n, site) in main.iter().enumerate() {
            let from = n as u64 * 100 + 10;
            acknowledged.extend(write(site, stream, from..from + 10).await);
        }
        let before = d.stop(VectorClock::new()).await; // its writes wait in its folder
        assert!(before.0.iter().any(|n| (300..310).contains(n)), "D kept its own writes");
        let mut d = SiteThread::start(path(3), from_main(&mut links, 3, true), stream, 310..320);
        acknowledged.extend((&mut d.written).await.unwrap());

        // Healed; then E restarts, on fresh links to A, B and C.
        for (_, _, faults) in &links {
            faults.partition(false);
        }
        e.stop(VectorClock::new()).await;
        let mut e = SiteThread::start(path(4), from_main(&mut links, 4, false), stream, 410..420);
        acknowledged.extend((&mut e.written).await.unwrap());

        let mut target = VectorClock::new();
        for emitted in &acknowledged {
            target.merge(&emitted.clock);
        }
        for site in &main {
            until_covers(site, &target).await;
        }
        let (vd, ve) = (d.stop(target.clone()).await, e.stop(target.clone()).await);
        let va = view(&main[0], stream).await;
        assert_eq!(va.0.len(), 100, "every write, once: {va:?}");
        for (name, other) in
            [("B", view(&main[1], stream).await), ("C", view(&main[2], stream).await), ("D", vd), ("E", ve)]
        {
            assert_eq!(va, other, "A and {name} converged");
        }
    });
}
