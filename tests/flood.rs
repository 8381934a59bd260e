//! A flood of hostile traffic against one site: 1,000,000 events whose dependencies never
//! arrive, 1,000,000 copies of an event already delivered and 100,000 equivocations. The
//! site keeps serving local writes and reads throughout, its router never holds more than
//! its bound, and the process's peak RSS (`VmHWM`, this test being alone in its binary)
//! stays under 128 MiB.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{run_site, TrailStream};
use gundb::testkit::{self, written_event};
use gundb::{limits, Emit, GetView, Lane, Site, SiteId, StreamId, VectorClock};

const FRAME: u64 = 500;

/// Peak resident memory of this process, in bytes.
fn peak_rss() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let kib: u64 = status
        .lines()
        .find_map(|line| line.strip_prefix("VmHWM:"))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|kib| kib.parse().ok())
        .unwrap();
    kib * 1024
}

/// A local write and a read succeed, and the router holds no more than its bound.
async fn still_serving(site: &Site, n: u64) {
    let local = site.stream::<TrailStream>(StreamId::named("local")).await.unwrap();
    local.send(Emit::new(n)).await.unwrap().expect("a local write during the flood");
    let view = local.send(GetView::new()).await.unwrap().expect("a read during the flood").view;
    assert_eq!(view.0.last(), Some(&n));
    let metrics = site.metrics().await.unwrap();
    assert!(metrics.pending <= limits::PENDING_EVENTS_MAX as u64, "the router holds {} events", metrics.pending);
}

#[test]
fn a_flood_of_orphans_copies_and_equivocations_stays_within_bounds() {
    run_site(|| async {
        let site = Site::temporary().unwrap();
        site.register::<TrailStream>().await.unwrap();
        let stream = StreamId::named("flood");

        // 1,000,000 events on 1,000 lanes (10 sites, 100 streams) whose first event never
        // comes, each frame signed by the sites that wrote it.
        let orphans = 1_000_000u64;
        let writers: Vec<SiteId> = (1..=10).map(testkit::site).collect();
        let lanes: Vec<Lane> = (0..1_000u64)
            .map(|l| Lane::new(writers[usize::try_from(l % 10).unwrap()], StreamId::from_u128(u128::from(l / 10) + 1)))
            .collect();
        for frame in 0..orphans / FRAME {
            let mut events: Vec<_> = (frame * FRAME..(frame + 1) * FRAME)
                .map(|n| {
                    written_event(lanes[usize::try_from(n % 1_000).unwrap()], n / 1_000 + 2, &[], n / 1_000 + 2, n)
                })
                .collect();
            let attestations = testkit::attest(&mut events);
            site.receive(events, attestations).await.unwrap();
            if frame % 256 == 0 {
                still_serving(&site, frame).await;
            }
        }
        let metrics = site.metrics().await.unwrap();
        assert_eq!(metrics.delivered, 0, "no orphan was delivered");
        assert_eq!(metrics.received, orphans);
        assert_eq!(metrics.pending, limits::PENDING_EVENTS_MAX as u64, "the buffer filled up to its bound");
        assert_eq!(metrics.dropped_on_overflow, orphans - limits::PENDING_EVENTS_MAX as u64, "the rest was dropped");

        // One event delivered, then 1,000,000 copies of it and 100,000 equivocations.
        let lane = Lane::new(testkit::site(11), stream); // not one of the orphans' lanes
        let mut original = written_event(lane, 1, &[], 1, 1);
        let attestations = testkit::attest(std::slice::from_mut(&mut original));
        site.receive(vec![original.clone()], attestations).await.unwrap();
        let delivered: VectorClock = [(lane, gundb::Seq(1))].into_iter().collect();
        site.wait_for(&delivered).await.unwrap();
        let before = site.metrics().await.unwrap();
        for frame in 0..1_000_000 / FRAME {
            site.receive(vec![original.clone(); usize::try_from(FRAME).unwrap()], Vec::new()).await.unwrap();
            if frame % 256 == 0 {
                still_serving(&site, 10_000 + frame).await;
            }
        }
        for frame in 0..100_000 / FRAME {
            // Another time each: another event, with the id of its content, at (lane, 1),
            // signed by the lane's site (one that equivocates).
            let mut forged: Vec<_> =
                (0..FRAME).map(|n| written_event(lane, 1, &[], 1, frame * FRAME + n + 2)).collect();
            let attestations = testkit::attest(&mut forged);
            site.receive(forged, attestations).await.unwrap();
        }
        still_serving(&site, 20_000).await;
        let after = site.metrics().await.unwrap();
        assert_eq!(after.duplicates - before.duplicates, 1_000_000, "{after:?}");
        assert_eq!(after.equivocations - before.equivocations, 100_000, "{after:?}");
        assert_eq!(site.frontier().await.unwrap().get(lane), gundb::Seq(1), "the original stays");
        assert!(site.equivocations().await.unwrap().len() <= limits::JOURNAL_MAX);

        let peak = peak_rss();
        eprintln!("peak RSS {} MiB; {after:?}", peak >> 20);
        assert!(peak < 128 << 20, "peak RSS {} MiB", peak >> 20);
    });
}
