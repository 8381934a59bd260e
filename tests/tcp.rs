//! Sites replicating over TCP on 127.0.0.1 (ports chosen by the OS): with the shared
//! secret they replicate; a peer with a wrong secret is refused and gets nothing; bytes
//! that are not a handshake, or a length prefix over the limit, get the connection closed;
//! before authentication a frame may claim only a few hundred bytes, and handshakes are
//! capped without locking an honest peer out.
#![allow(clippy::unwrap_used)]

mod common;

use common::{run_site, TrailStream};
use futures::{SinkExt, StreamExt};
use gundb::node::tcp::{dial, serve, TcpError};
use gundb::node::NodeConfig;
use gundb::{Emit, GetView, Site, StreamId};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::codec::{Framed, LengthDelimitedCodec};

const SECRET: &[u8] = b"correct horse battery staple";

async fn listening(site: &Site) -> std::net::SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    serve(site.clone(), listener, SECRET.to_vec(), NodeConfig::default());
    addr
}

#[test]
fn two_sites_replicate_over_tcp_with_the_shared_secret() {
    run_site(|| async {
        let (a, b) = (Site::temporary().unwrap(), Site::temporary().unwrap());
        let stream = StreamId::from_u128(11);
        let addr = listening(&a).await;
        let at_a = a.stream::<TrailStream>(stream).await.unwrap();
        for n in 0..20 {
            at_a.send(Emit::new(n)).await.unwrap().unwrap();
        }
        dial(&b, addr, SECRET, NodeConfig::default()).await.unwrap();
        let target = a.frontier().await.unwrap();
        tokio::time::timeout(Duration::from_secs(20), b.wait_for(&target))
            .await
            .expect("B caught up over TCP")
            .unwrap();
        let at_b = b.stream::<TrailStream>(stream).await.unwrap();
        assert_eq!(at_b.send(GetView::new()).await.unwrap().unwrap().view.0, (0..20).collect::<Vec<_>>());
    });
}

#[test]
fn a_peer_with_the_wrong_secret_is_refused_and_gets_nothing() {
    run_site(|| async {
        let (a, intruder) = (Site::temporary().unwrap(), Site::temporary().unwrap());
        let addr = listening(&a).await;
        let at_a = a.stream::<TrailStream>(StreamId::from_u128(12)).await.unwrap();
        at_a.send(Emit::new(1)).await.unwrap().unwrap();
        let refused = dial(&intruder, addr, b"wrong", NodeConfig::default()).await.err().unwrap();
        assert!(matches!(refused, TcpError::Unauthenticated { .. }), "{refused}");
        assert!(intruder.frontier().await.unwrap().is_empty(), "the intruder received nothing");
        assert_eq!(a.metrics().await.unwrap().received, 0, "nothing from the intruder reached A's router");
    });
}

/// Garbage instead of a handshake, and a length prefix claiming 4 GiB: each gets the
/// connection closed, and the site keeps serving honest peers.
#[test]
fn garbage_and_oversized_frames_close_the_connection() {
    run_site(|| async {
        let a = Site::temporary().unwrap();
        let addr = listening(&a).await;
        for bytes in [vec![0, 0, 0, 5, 1, 2, 3, 4, 5], vec![0xFF, 0xFF, 0xFF, 0xFF, 0]] {
            let mut socket = TcpStream::connect(addr).await.unwrap();
            socket.write_all(&bytes).await.unwrap();
            let mut rest = Vec::new();
            // The site closes the connection: the read ends (after its own greeting, if any).
            tokio::time::timeout(Duration::from_secs(10), socket.read_to_end(&mut rest))
                .await
                .expect("the connection was closed")
                .ok();
        }
        let honest = Site::temporary().unwrap();
        dial(&honest, addr, SECRET, NodeConfig::default()).await.unwrap();
    });
}

/// A site that keeps dialing connects once the peer starts listening, and catches up.
#[test]
fn keep_dialing_connects_once_the_peer_listens() {
    run_site(|| async {
        let (a, b) = (Site::temporary().unwrap(), Site::temporary().unwrap());
        let stream = StreamId::from_u128(13);
        // A free port, closed again: B's first dials fail.
        let addr = TcpListener::bind("127.0.0.1:0").await.unwrap().local_addr().unwrap();
        gundb::node::tcp::keep_dialing(b.clone(), addr, SECRET.to_vec(), NodeConfig::default());
        let at_a = a.stream::<TrailStream>(stream).await.unwrap();
        at_a.send(Emit::new(7)).await.unwrap().unwrap();
        let listener = TcpListener::bind(addr).await.unwrap();
        serve(a.clone(), listener, SECRET.to_vec(), NodeConfig::default());
        let target = a.frontier().await.unwrap();
        tokio::time::timeout(Duration::from_secs(30), b.wait_for(&target))
            .await
            .expect("B connected and caught up")
            .unwrap();
    });
}

/// Reads frames until the node closes the connection, for at most 10 s; fails the test
/// unless the connection closed with no frame.
async fn assert_closed_with_nothing(wire: &mut Framed<TcpStream, LengthDelimitedCodec>, attack: &str) {
    let mut frames = 0;
    let closed = tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(Ok(_)) = wire.next().await {
            frames += 1;
        }
    });
    let closed = closed.await.is_ok();
    assert!(closed && frames == 0, "{attack}: closed {closed}, {frames} frames after the handshake");
}

async fn hostile(addr: std::net::SocketAddr) -> Framed<TcpStream, LengthDelimitedCodec> {
    Framed::new(TcpStream::connect(addr).await.unwrap(), LengthDelimitedCodec::new())
}

/// A client without the secret reflects the node's handshake: it sends the node's own
/// greeting back, then whatever proof the node sends, on one connection; and across two
/// connections it hands each one the other's greeting and proof. Before the proof was
/// bound to the side's role, the first attack was accepted and received the node's
/// events. Now each connection is closed with nothing sent after the handshake, and
/// nothing reaches the router.
#[test]
fn a_reflected_handshake_is_refused() {
    run_site(|| async {
        let a = Site::temporary().unwrap();
        let addr = listening(&a).await;
        let at_a = a.stream::<TrailStream>(StreamId::from_u128(14)).await.unwrap();
        at_a.send(Emit::new(1)).await.unwrap().unwrap();

        // One connection: echo the greeting, then echo the proof if one comes.
        let mut wire = hostile(addr).await;
        let greeting = wire.next().await.unwrap().unwrap();
        wire.send(greeting.freeze()).await.unwrap();
        if let Some(Ok(proof)) = wire.next().await {
            wire.send(proof.freeze()).await.unwrap();
        }
        assert_closed_with_nothing(&mut wire, "reflection").await;

        // Two connections: each gets the other's greeting, then the other's proof.
        let (mut one, mut two) = (hostile(addr).await, hostile(addr).await);
        let greeting_one = one.next().await.unwrap().unwrap();
        let greeting_two = two.next().await.unwrap().unwrap();
        one.send(greeting_two.freeze()).await.unwrap();
        two.send(greeting_one.freeze()).await.unwrap();
        if let (Some(Ok(proof_one)), Some(Ok(proof_two))) = (one.next().await, two.next().await) {
            one.send(proof_two.freeze()).await.unwrap();
            two.send(proof_one.freeze()).await.unwrap();
        }
        assert_closed_with_nothing(&mut one, "cross reflection").await;
        assert_closed_with_nothing(&mut two, "cross reflection").await;

        assert_eq!(a.metrics().await.unwrap().received, 0, "nothing from the attacker reached A's router");
        let honest = Site::temporary().unwrap();
        dial(&honest, addr, SECRET, NodeConfig::default()).await.unwrap();
    });
}

/// One event's payload, counted: big events make big frames.
#[derive(Clone, Default, PartialEq, Debug, serde::Serialize, serde::Deserialize)]
struct Sized(u64);

impl gundb::View<Vec<u8>> for Sized {
    fn apply_event(&mut self, event: &Vec<u8>, _: &gundb::EventMeta<'_>) {
        self.0 += u64::try_from(event.len()).unwrap();
    }
}

struct BlobStream;

impl gundb::Stream for BlobStream {
    const TYPE_NAME: &'static str = "test.tcp.blob";
    type Event = Vec<u8>;
    type View = Sized;
}

/// A proxy to `target` that passes the listener's bytes to the dialer at `per_second`
/// (in tenths of a second), and the dialer's at full speed.
async fn throttling_proxy(target: std::net::SocketAddr, per_second: usize) -> std::net::SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    actix::spawn(async move {
        while let Ok((dialer, _)) = listener.accept().await {
            let server = TcpStream::connect(target).await.unwrap();
            let (mut from_dialer, mut to_dialer) = dialer.into_split();
            let (mut from_server, mut to_server) = server.into_split();
            actix::spawn(async move { tokio::io::copy(&mut from_dialer, &mut to_server).await });
            actix::spawn(async move {
                let mut tenth = vec![0; per_second / 10];
                loop {
                    let read = from_server.read(&mut tenth).await.unwrap_or(0);
                    if read == 0 || to_dialer.write_all(&tenth[..read]).await.is_err() {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await; // the throttle, not a wait for anything
                }
            });
        }
    });
    addr
}

/// A frame of about 1 MiB over a link throttled to 100 KB/s takes some ten seconds, more
/// than three times the connection's idle limit (3 s, wide enough for a loaded machine's
/// scheduling): the link stays up because bytes keep arriving, and the frame gets through.
#[test]
fn a_slow_link_carries_a_large_frame() {
    run_site(|| async {
        let (a, b) = (Site::temporary().unwrap(), Site::temporary().unwrap());
        b.register::<BlobStream>().await.unwrap();
        // Idle limit 3 s; nothing sent again while the frame crawls.
        let config = NodeConfig { hello_every: Some(Duration::from_secs(1)), resend_after: Duration::from_secs(120) };
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        serve(a.clone(), listener, SECRET.to_vec(), config.clone());
        let stream = StreamId::from_u128(21);
        let at_a = a.stream::<BlobStream>(stream).await.unwrap();
        for byte in [1, 2] {
            at_a.send(Emit::new(vec![byte; 500_000])).await.unwrap().unwrap();
        }
        let proxy = throttling_proxy(addr, 100_000).await;
        let started = std::time::Instant::now();
        let connection = dial(&b, proxy, SECRET, config).await.unwrap();
        let target = a.frontier().await.unwrap();
        tokio::time::timeout(Duration::from_secs(120), b.wait_for(&target))
            .await
            .expect("the frame got through the slow link")
            .unwrap();
        assert!(
            started.elapsed() > Duration::from_secs(6),
            "the link was slower than the idle limit: {:?}",
            started.elapsed()
        );
        assert!(connection.sink.connected(), "the connection that carried it is still up");
        let at_b = b.stream::<BlobStream>(stream).await.unwrap();
        assert_eq!(at_b.send(GetView::new()).await.unwrap().unwrap().view, Sized(1_000_000));
    });
}

/// A greeting as protocol version 5 sent it (the same fields as today's).
#[derive(serde::Serialize)]
struct OldGreeting {
    version: u32,
    site: gundb::SiteId,
    challenge: [u8; 32],
}

/// A peer of the protocol before delta clocks (version 5) is refused at the handshake,
/// with both versions named, before anything else is exchanged.
#[test]
fn a_peer_of_the_old_protocol_is_refused_with_both_versions() {
    run_site(|| async {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let old_peer = actix::spawn(async move {
            let (socket, _) = listener.accept().await.unwrap();
            let mut wire = Framed::new(socket, LengthDelimitedCodec::new());
            let _their_greeting = wire.next().await.unwrap().unwrap();
            let ours = OldGreeting { version: 5, site: gundb::SiteId::random(), challenge: [7; 32] };
            wire.send(tokio_util::bytes::Bytes::from(gundb::codec::encode(&ours).unwrap())).await.unwrap();
            // Whatever the new site does next, it must not be a proof or a frame.
            wire.next().await.is_none_or(|frame| frame.is_err())
        });
        let site = Site::temporary().unwrap();
        let refused = dial(&site, addr, SECRET, NodeConfig::default()).await.expect_err("an old peer is refused");
        assert!(
            matches!(refused, TcpError::Version { peer: 5, ours } if ours == gundb::node::tcp::PROTOCOL_VERSION),
            "{refused:?}"
        );
        let message = refused.to_string();
        assert!(
            message.contains("version 5") && message.contains(&gundb::node::tcp::PROTOCOL_VERSION.to_string()),
            "{message}"
        );
        assert!(old_peer.await.unwrap(), "the new site sent nothing after the greetings");
    });
}

/// Before a peer is authenticated, a frame may claim at most `HANDSHAKE_FRAME_BYTES_MAX`:
/// a first frame announcing 2 KiB (far below the replication limit) gets the connection
/// closed at once, not after the handshake's timeout with a buffer reserved meanwhile.
#[test]
fn a_stranger_cannot_announce_a_large_frame() {
    run_site(|| async {
        let a = Site::temporary().unwrap();
        let addr = listening(&a).await;
        let mut socket = TcpStream::connect(addr).await.unwrap();
        let announced = u32::try_from(gundb::limits::HANDSHAKE_FRAME_BYTES_MAX * 2).unwrap();
        socket.write_all(&announced.to_be_bytes()).await.unwrap();
        let mut rest = Vec::new();
        let closed = tokio::time::timeout(gundb::limits::HANDSHAKE_TIMEOUT / 2, socket.read_to_end(&mut rest)).await;
        assert!(closed.is_ok(), "the connection stayed open waiting for the announced bytes");
        assert_eq!(a.metrics().await.unwrap().received, 0);
    });
}

/// More connections than `HANDSHAKES_MAX` that never say anything: those past the cap are
/// closed at once, without even a greeting, and once the others are gone an honest peer
/// connects and replicates.
#[test]
fn handshakes_are_capped_and_an_honest_peer_gets_in_afterwards() {
    run_site(|| async {
        let a = Site::temporary().unwrap();
        let addr = listening(&a).await;
        let extra = 8;
        let mut idle = Vec::new();
        for _ in 0..gundb::limits::HANDSHAKES_MAX + extra {
            idle.push(TcpStream::connect(addr).await.unwrap());
        }
        let mut refused = 0;
        for socket in &mut idle {
            // A greeting (for a handshake under way) or the end of the stream (refused).
            let mut first = [0u8; 1];
            let read = tokio::time::timeout(Duration::from_secs(30), socket.read(&mut first)).await;
            if read.expect("the node answers every connection").unwrap_or(0) == 0 {
                refused += 1;
            }
        }
        assert_eq!(refused, extra, "exactly the connections past the cap are closed");
        drop(idle);
        let honest = Site::temporary().unwrap();
        let stream = StreamId::from_u128(17);
        a.stream::<TrailStream>(stream).await.unwrap().send(Emit::new(1)).await.unwrap().unwrap();
        honest.register::<TrailStream>().await.unwrap();
        // The node frees the slots as it sees the idle connections end; a peer that keeps
        // dialing gets in then, and catches up.
        gundb::node::tcp::keep_dialing(honest.clone(), addr, SECRET.to_vec(), NodeConfig::default());
        let target = a.frontier().await.unwrap();
        let caught_up = tokio::time::timeout(Duration::from_secs(60), honest.wait_for(&target)).await;
        caught_up.expect("an honest peer gets in once the idle connections are gone").unwrap();
    });
}
