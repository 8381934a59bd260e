//! Signed lanes through `Site::receive`, the door of every replicated event: an event is
//! held only when an attestation of its lane's site covers it. An event with no
//! attestation, one covered only by another site's, one whose attestation's signature is
//! broken, and one covered by a second attestation its site signed under a used number
//! are each refused and counted; nothing of them is stored, and the stream stays writable
//! and takes the genuine event afterwards. The same over a link, from a peer written by
//! hand, with an equivocation reported with both events.
#![allow(clippy::unwrap_used)]

mod common;

use common::{remote_event, remote_lane, run_site, TrailStream};
use gundb::codec;
use gundb::node::transport::{in_process, Endpoint};
use gundb::node::{connect, Frame, NodeConfig};
use gundb::testkit::{self, site_keys};
use gundb::{Attestation, Emit, GetView, LogPos, Site, StreamId, VectorClock};

#[test]
fn forged_lanes_and_broken_attestations_are_refused() {
    run_site(|| async {
        let site = Site::temporary().unwrap();
        site.register::<TrailStream>().await.unwrap();
        let stream = StreamId::from_u128(41);
        let lane = remote_lane(1, stream);
        let event = remote_event(lane, 1, 1, 10);

        // No attestation at all.
        site.receive(vec![event.clone()], Vec::new()).await.unwrap();
        assert_eq!(site.metrics().await.unwrap().unattested, 1);

        // Signed by site 2, for an event of site 1's lane: a forged lane.
        let mut forged = event.clone();
        forged.attestation = 5;
        let by_another = Attestation::sign(&site_keys(2), 5, vec![forged.id]);
        site.receive(vec![forged], vec![by_another]).await.unwrap();
        assert_eq!(site.metrics().await.unwrap().unattested, 2);

        // Site 1's attestation with a signature of other content.
        let mut broken = Attestation::sign(&site_keys(1), 6, vec![event.id]);
        broken.signature = Attestation::sign(&site_keys(1), 6, vec![gundb::EventId::from_u128(1)]).signature;
        let mut unsigned = event.clone();
        unsigned.attestation = 6;
        site.receive(vec![unsigned], vec![broken]).await.unwrap();
        let metrics = site.metrics().await.unwrap();
        assert_eq!((metrics.attestations_refused, metrics.unattested), (1, 3), "{metrics:?}");
        assert_eq!(metrics.delivered, 0);
        assert!(site.frontier().await.unwrap().is_empty(), "nothing was stored");

        // The stream stays writable, and takes the genuine event.
        let local = site.stream::<TrailStream>(stream).await.unwrap();
        local.send(Emit::new(1)).await.unwrap().unwrap();
        let mut genuine = event;
        genuine.attestation = 7;
        let signed = Attestation::sign(&site_keys(1), 7, vec![genuine.id]);
        site.receive(vec![genuine], vec![signed]).await.unwrap();
        let target: VectorClock = [(lane, gundb::Seq(1))].into_iter().collect();
        tokio::time::timeout(std::time::Duration::from_secs(20), site.wait_for(&target)).await.unwrap().unwrap();
        let mut view = local.send(GetView::new()).await.unwrap().unwrap().view.0;
        view.sort_unstable();
        assert_eq!(view, vec![1, 10]);
    });
}

/// A site that signs two different attestations under one number equivocates: the second
/// is refused and counted (and logged with both), and its events find no attestation.
#[test]
fn a_second_attestation_under_a_used_number_is_refused() {
    run_site(|| async {
        let site = Site::temporary().unwrap();
        site.register::<TrailStream>().await.unwrap();
        let stream = StreamId::from_u128(42);
        let (mut first, mut second) =
            (remote_event(remote_lane(1, stream), 1, 1, 10), remote_event(remote_lane(1, stream), 2, 2, 20));
        first.attestation = 9;
        second.attestation = 9;
        let keys = site_keys(1);
        site.receive(vec![first.clone()], vec![Attestation::sign(&keys, 9, vec![first.id])]).await.unwrap();
        site.receive(vec![second], vec![Attestation::sign(&keys, 9, vec![gundb::EventId::from_u128(3)])])
            .await
            .unwrap();
        let metrics = site.metrics().await.unwrap();
        assert_eq!((metrics.attestations_refused, metrics.unattested), (1, 1), "{metrics:?}");
        let target: VectorClock = [(first.lane, gundb::Seq(1))].into_iter().collect();
        tokio::time::timeout(std::time::Duration::from_secs(20), site.wait_for(&target)).await.unwrap().unwrap();
        assert_eq!(site.frontier().await.unwrap(), target, "the first is kept, the second never held");
    });
}

/// An attestation that no event of its batch names vouches for nothing: it is neither
/// verified nor stored, whatever it holds, so a peer cannot fill a site's disk with them.
#[test]
fn an_attestation_no_event_names_is_ignored() {
    run_site(|| async {
        let site = Site::temporary().unwrap();
        let keys = site_keys(3);
        let mut broken = Attestation::sign(&keys, 11, vec![gundb::EventId::from_u128(5)]);
        broken.signature = Attestation::sign(&keys, 12, Vec::new()).signature;
        let good = Attestation::sign(&keys, 13, vec![gundb::EventId::from_u128(6)]);
        site.receive(Vec::new(), vec![broken, good]).await.unwrap();
        let metrics = site.metrics().await.unwrap();
        assert_eq!((metrics.attestations_refused, metrics.verify_ns), (0, 0), "nothing was verified: {metrics:?}");
        assert_eq!(site.storage().attestation(keys.site_id(), 13).unwrap(), None, "nothing was stored");
    });
}

/// A peer that speaks the link protocol by hand: says hello as `site`, then sends the
/// `Events` frames it is given, answering the site's `Want`.
struct HandPeer {
    to_site: tokio::sync::mpsc::Sender<Vec<u8>>,
    epoch: u64,
    sent: LogPos,
}

impl HandPeer {
    async fn hello(end: Endpoint, site: gundb::SiteId) -> Self {
        let Endpoint { sender, mut receiver, .. } = end;
        let hello = Frame::Hello { site, heard: 0, head: LogPos(1_000) };
        sender.send(codec::encode_frame(&hello).unwrap()).await.unwrap();
        loop {
            let bytes = receiver.recv().await.expect("the site keeps the link open");
            if let Frame::Want { epoch, after, .. } = codec::decode_frame(&bytes).unwrap() {
                // What else the site sends (its hello, acks) is read and left.
                actix::spawn(async move { while receiver.recv().await.is_some() {} });
                return Self { to_site: sender, epoch, sent: after };
            }
        }
    }

    /// One frame of `events`, taking the next place in the peer's log.
    async fn send(&mut self, events: Vec<gundb::Event>, attestations: Vec<Attestation>) {
        let (after, last) = (self.sent, LogPos(self.sent.0 + 1));
        let frame = Frame::Events { epoch: self.epoch, after, last, events, attestations };
        self.to_site.send(codec::encode_frame(&frame).unwrap()).await.unwrap();
        self.sent = last;
    }
}

/// Over a real link (the site's own source and sink nodes, on an in-process connection), a
/// peer's frames go through the sink's checks: an equivocation (another event its site
/// signed at a held (lane, seq)), a forged lane and an altered copy are each refused and
/// counted, the equivocation is reported with both events, and the genuine events are
/// stored while the stream stays writable.
#[test]
fn a_hand_written_peer_is_refused_event_by_event_over_a_link() {
    run_site(|| async {
        let site = Site::temporary().unwrap();
        site.register::<TrailStream>().await.unwrap();
        let (ours, theirs) = in_process(16);
        let _connection = connect(&site, ours, NodeConfig::default());
        let mut peer = HandPeer::hello(theirs, testkit::site(1)).await;
        let stream = StreamId::from_u128(44);
        let lane = remote_lane(1, stream);

        // The second event first: held until the first comes. Then another event its
        // site signed at the same place, while the first of the two is held.
        let mut second = vec![remote_event(lane, 2, 2, 20)];
        let signed = testkit::attest(&mut second);
        peer.send(second.clone(), signed).await;
        let mut other = vec![remote_event(lane, 2, 2, 21)];
        let signed = testkit::attest(&mut other);
        peer.send(other.clone(), signed).await;
        // Site 2's lane, signed by site 1.
        let mut forged = remote_event(remote_lane(2, stream), 1, 1, 30);
        forged.attestation = 77;
        let by_another = Attestation::sign(&site_keys(1), 77, vec![forged.id]);
        peer.send(vec![forged], vec![by_another]).await;
        // The held event with other content under its id.
        let mut altered = second[0].clone();
        altered.payload = gundb::codec::encode(&99u64).unwrap();
        peer.send(vec![altered], Vec::new()).await;
        // The first event: both genuine ones are delivered.
        let mut first = vec![remote_event(lane, 1, 1, 10)];
        let signed = testkit::attest(&mut first);
        peer.send(first.clone(), signed).await;

        let target: VectorClock = [(lane, gundb::Seq(2))].into_iter().collect();
        tokio::time::timeout(std::time::Duration::from_secs(20), site.wait_for(&target)).await.unwrap().unwrap();
        let metrics = site.metrics().await.unwrap();
        assert_eq!((metrics.equivocations, metrics.unattested, metrics.altered), (1, 1, 1), "{metrics:?}");
        let proofs = site.equivocations().await.unwrap();
        assert_eq!(proofs.len(), 1);
        assert_eq!((&proofs[0].kept.event, &proofs[0].rejected.event), (&second[0], &other[0]));
        assert_eq!(proofs[0].verify(), Ok(()));
        assert_eq!(site.frontier().await.unwrap(), target, "nothing of site 2's lane was stored");

        let local = site.stream::<TrailStream>(stream).await.unwrap();
        local.send(Emit::new(1)).await.unwrap().unwrap();
        let mut view = local.send(GetView::new()).await.unwrap().unwrap().view.0;
        view.sort_unstable();
        assert_eq!(view, vec![1, 10, 20], "the genuine events and the local write");
    });
}
