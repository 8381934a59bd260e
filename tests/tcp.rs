//! Sites replicating over TCP on 127.0.0.1 (ports chosen by the OS): with the shared
//! secret they replicate over a Noise-encrypted link; a peer with a wrong secret, a
//! replayed handshake, a reflected or looped one and a peer of another version are each
//! refused and get nothing (a hand-rolled client plays the attacker); bytes that are not
//! a handshake, or a length prefix over the limit, get the connection closed; before
//! authentication a frame may claim only a few hundred bytes, and handshakes are capped
//! without locking an honest peer out.
#![allow(clippy::unwrap_used)]

mod common;

use common::{run_site, TrailStream};
use futures::{SinkExt, StreamExt};
use gundb::node::tcp::{dial, serve, TcpError};
use gundb::node::NodeConfig;
use gundb::{Emit, GetView, Site, StreamId};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::bytes::Bytes;
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

/// Reads frames until the node closes the connection, for at most 10 s; returns how many
/// came, failing the test if the connection stayed open.
async fn frames_until_closed(wire: &mut Framed<TcpStream, LengthDelimitedCodec>, attack: &str) -> usize {
    let mut frames = 0;
    let closed = tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(Ok(_)) = wire.next().await {
            frames += 1;
        }
    });
    assert!(closed.await.is_ok(), "{attack}: the node kept the connection open");
    frames
}

fn framed(socket: TcpStream) -> Framed<TcpStream, LengthDelimitedCodec> {
    Framed::new(socket, LengthDelimitedCodec::new())
}

/// The preface every version starts with: its version, first.
#[derive(serde::Serialize, serde::Deserialize)]
struct Preface {
    version: u32,
}

/// The link identity a side sends in its first sealed frame: its site's public signing
/// key and its signature over its role and the handshake hash.
#[derive(serde::Serialize, serde::Deserialize)]
struct Identity {
    key: [u8; 32],
    signature: ed25519_dalek::Signature,
}

/// What a side of `role` (0 dialer, 1 listener) signs to name its site.
fn identity_message(role: u8, handshake_hash: &[u8]) -> [u8; 32] {
    let mut hash = blake3::Hasher::new_derive_key("gundb 2026-11 link identity");
    hash.update(&[role]);
    hash.update(handshake_hash);
    *hash.finalize().as_bytes()
}

/// A client written from the protocol's description, not from gundb's code.
struct HandRolled {
    wire: Framed<TcpStream, LengthDelimitedCodec>,
    transport: snow::TransportState,
    handshake_hash: Vec<u8>,
    /// The site the node proved it is.
    node: gundb::SiteId,
}

impl HandRolled {
    /// The preface, the three Noise messages with a pre-shared key derived from `secret`,
    /// then the node's identity frame, checked. What went wrong otherwise.
    async fn connect(addr: std::net::SocketAddr, secret: &[u8]) -> Result<Self, String> {
        use sha2::Digest;
        let mut wire = framed(TcpStream::connect(addr).await.unwrap());
        let preface = gundb::codec::encode(&Preface { version: gundb::node::tcp::PROTOCOL_VERSION }).unwrap();
        wire.send(Bytes::from(preface)).await.unwrap();
        let theirs: Preface = gundb::codec::decode(&wire.next().await.unwrap().unwrap()).unwrap();
        assert_eq!(theirs.version, gundb::node::tcp::PROTOCOL_VERSION);
        let psk: [u8; 32] =
            sha2::Sha256::new().chain_update(b"gundb link pre-shared key\0").chain_update(secret).finalize().into();
        let prologue = format!("gundb link, protocol version {}", gundb::node::tcp::PROTOCOL_VERSION);
        let builder = snow::Builder::new(gundb::keys::NOISE_PARAMS.parse().unwrap());
        let keys = builder.generate_keypair().unwrap();
        let mut noise = snow::Builder::new(gundb::keys::NOISE_PARAMS.parse().unwrap())
            .local_private_key(&keys.private)
            .unwrap()
            .psk(3, &psk)
            .unwrap()
            .prologue(prologue.as_bytes())
            .unwrap()
            .build_initiator()
            .unwrap();
        let (mut message, mut payload) = (vec![0u8; 1024], vec![0u8; 1024]);
        let len = noise.write_message(&[], &mut message).unwrap();
        wire.send(Bytes::from(message[..len].to_vec())).await.unwrap();
        let second = wire.next().await.ok_or("closed before the second message")?.map_err(|e| e.to_string())?;
        noise.read_message(&second, &mut payload).map_err(|e| e.to_string())?;
        let len = noise.write_message(&[], &mut message).unwrap();
        wire.send(Bytes::from(message[..len].to_vec())).await.unwrap();
        let handshake_hash = noise.get_handshake_hash().to_vec();
        let mut transport = noise.into_transport_mode().unwrap();
        let sealed = wire.next().await.ok_or("closed after the third message")?.map_err(|e| e.to_string())?;
        let len = transport.read_message(&sealed, &mut payload).map_err(|e| e.to_string())?;
        assert_eq!(payload[0], 1, "the identity is one whole frame");
        let identity: Identity = gundb::codec::decode(&payload[1..len]).map_err(|e| e.to_string())?;
        let key = ed25519_dalek::VerifyingKey::from_bytes(&identity.key).map_err(|e| e.to_string())?;
        key.verify_strict(&identity_message(1, &handshake_hash), &identity.signature).map_err(|e| e.to_string())?;
        let node = gundb::SiteId::of_key(&identity.key);
        Ok(Self { wire, transport, handshake_hash, node })
    }

    /// Seals `frame` as one message: its end-of-frame byte, then its bytes.
    async fn send_sealed(&mut self, frame: &[u8]) {
        let mut message = vec![0u8; frame.len() + 64];
        let plain = [&[1u8][..], frame].concat();
        let len = self.transport.write_message(&plain, &mut message).unwrap();
        self.wire.send(Bytes::from(message[..len].to_vec())).await.unwrap();
    }

    /// Names the site of `key`, signing with `signer`'s key.
    async fn identify(&mut self, key: [u8; 32], signer: &gundb::keys::SiteKeys) {
        use ed25519_dalek::Signer as _;
        let signature = signer.signing().sign(&identity_message(0, &self.handshake_hash));
        self.send_sealed(&gundb::codec::encode(&Identity { key, signature }).unwrap()).await;
    }

    /// Frames from the node until one is a `Want`, for at most 10 s.
    async fn wanted(&mut self) -> bool {
        let mut plain = vec![0u8; 1 << 16];
        let want = async {
            while let Some(Ok(message)) = self.wire.next().await {
                let len = self.transport.read_message(&message, &mut plain).unwrap();
                let frame = gundb::codec::decode_frame::<gundb::node::Frame>(&plain[1..len]);
                if matches!(frame, Ok(gundb::node::Frame::Want { .. })) {
                    return true;
                }
            }
            false
        };
        tokio::time::timeout(Duration::from_secs(10), want).await.unwrap_or(false)
    }
}

/// The hand-rolled client with the cluster's secret gets through, and learns the node's
/// site id, signed (so it speaks the protocol); with another secret the node closes the
/// link after the third message, and nothing reaches the router.
#[test]
fn a_hand_rolled_client_needs_the_secret() {
    run_site(|| async {
        let a = Site::temporary().unwrap();
        let addr = listening(&a).await;
        assert_eq!(HandRolled::connect(addr, SECRET).await.map(|client| client.node), Ok(a.id()));
        let refused = HandRolled::connect(addr, b"a guess").await.map(|client| client.node);
        assert_eq!(refused, Err("closed after the third message".to_owned()));
        assert_eq!(a.metrics().await.unwrap().received, 0, "nothing from either reached A's router");
    });
}

/// A peer holding the secret names only a site whose signing key it holds, and only that
/// site in its `Hello`: naming another site's key with a signature of its own, or proving
/// one site and saying hello as another, gets the connection closed. The same client,
/// honest, is answered with a `Want` (so the refusals are the checks, not the client).
#[test]
fn a_peer_names_only_the_site_whose_key_it_holds() {
    run_site(|| async {
        let a = Site::temporary().unwrap();
        let addr = listening(&a).await;
        let (ours, victim) = (gundb::testkit::site_keys(3), gundb::testkit::site_keys(4));
        let hello = |site| {
            gundb::codec::encode_frame(&gundb::node::Frame::Hello { site, heard: 0, head: gundb::LogPos(0) }).unwrap()
        };

        let mut impersonator = HandRolled::connect(addr, SECRET).await.unwrap();
        impersonator.identify(victim.public_key(), &ours).await;
        assert_eq!(frames_until_closed(&mut impersonator.wire, "another site's key").await, 0);

        let mut two_faced = HandRolled::connect(addr, SECRET).await.unwrap();
        two_faced.identify(ours.public_key(), &ours).await;
        two_faced.send_sealed(&hello(victim.site_id())).await;
        assert!(!two_faced.wanted().await, "a hello naming another site than the proven one is not answered");
        frames_until_closed(&mut two_faced.wire, "a hello naming another site").await;

        let mut honest = HandRolled::connect(addr, SECRET).await.unwrap();
        honest.identify(ours.public_key(), &ours).await;
        honest.send_sealed(&hello(ours.site_id())).await;
        assert!(honest.wanted().await, "an honest peer is asked for its log");
    });
}

/// A proxy to `target` that records every byte the dialer sends.
async fn recording_proxy(target: std::net::SocketAddr) -> (std::net::SocketAddr, Arc<Mutex<Vec<u8>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let recorded = Arc::new(Mutex::new(Vec::new()));
    let record = Arc::clone(&recorded);
    actix::spawn(async move {
        let (dialer, _) = listener.accept().await.unwrap();
        let server = TcpStream::connect(target).await.unwrap();
        let (mut from_dialer, mut to_dialer) = dialer.into_split();
        let (mut from_server, mut to_server) = server.into_split();
        actix::spawn(async move { tokio::io::copy(&mut from_server, &mut to_dialer).await });
        let mut buffer = vec![0; 1 << 16];
        loop {
            let read = from_dialer.read(&mut buffer).await.unwrap_or(0);
            if read == 0 {
                break;
            }
            record.lock().unwrap().extend_from_slice(&buffer[..read]);
            if to_server.write_all(&buffer[..read]).await.is_err() {
                break;
            }
        }
    });
    (addr, recorded)
}

/// An honest peer's whole side of a session, recorded on the way (its handshake and
/// sealed frames carrying its events), replayed byte for byte on a new connection: the
/// node answers the replayed first message with fresh keys, so the replayed third does
/// not open, and the connection is closed with nothing of the replay reaching the router.
#[test]
fn a_replayed_handshake_is_refused() {
    run_site(|| async {
        let (a, b) = (Site::temporary().unwrap(), Site::temporary().unwrap());
        let addr = listening(&a).await;
        let (proxy, recorded) = recording_proxy(addr).await;
        b.stream::<TrailStream>(StreamId::from_u128(15)).await.unwrap().send(Emit::new(1)).await.unwrap().unwrap();
        dial(&b, proxy, SECRET, NodeConfig::default()).await.unwrap();
        let target = b.frontier().await.unwrap();
        tokio::time::timeout(Duration::from_secs(20), a.wait_for(&target)).await.expect("A got B's event").unwrap();
        let received = a.metrics().await.unwrap().received;
        let replay = recorded.lock().unwrap().clone();
        assert!(replay.len() > 200, "the recording holds the handshake and sealed frames: {} bytes", replay.len());

        // The recording's first two frames (preface, first message), the node's answers,
        // then the rest of it byte for byte.
        let first_two = (0..2).fold(0, |at, _| {
            let len = u32::from_be_bytes(replay[at..at + 4].try_into().unwrap());
            at + 4 + usize::try_from(len).unwrap()
        });
        let mut wire = framed(TcpStream::connect(addr).await.unwrap());
        wire.get_mut().write_all(&replay[..first_two]).await.unwrap();
        for answer in ["preface", "second message"] {
            wire.next().await.unwrap_or_else(|| panic!("the node sent its {answer}")).unwrap();
        }
        wire.get_mut().write_all(&replay[first_two..]).await.unwrap();
        assert_eq!(frames_until_closed(&mut wire, "replay").await, 0, "the node closed with nothing sealed sent");
        assert_eq!(a.metrics().await.unwrap().received, received, "nothing of the replay reached A's router");
    });
}

/// Reflection: a node that dials an attacker who sends every frame straight back gets
/// its own preface and first message as answers, and gives up; a node whose dial is
/// relayed to its own listener meets its own key at both ends and refuses on both. No
/// link comes up and nothing reaches the router.
#[test]
fn a_reflected_or_looped_handshake_is_refused() {
    run_site(|| async {
        let a = Site::temporary().unwrap();
        let addr = listening(&a).await;
        a.stream::<TrailStream>(StreamId::from_u128(14)).await.unwrap().send(Emit::new(1)).await.unwrap().unwrap();

        // A mirror: every frame back to the sender.
        let mirror = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mirror_addr = mirror.local_addr().unwrap();
        actix::spawn(async move {
            let (socket, _) = mirror.accept().await.unwrap();
            let mut wire = framed(socket);
            while let Some(Ok(frame)) = wire.next().await {
                if wire.send(frame.freeze()).await.is_err() {
                    break;
                }
            }
        });
        let refused = dial(&a, mirror_addr, SECRET, NodeConfig::default()).await.expect_err("a mirror is refused");
        assert!(matches!(refused, TcpError::Handshake { .. }), "{refused:?}");

        // A loop: the node's dial relayed to its own listener.
        let (relay, _) = recording_proxy(addr).await;
        let refused = dial(&a, relay, SECRET, NodeConfig::default()).await.expect_err("a loop is refused");
        assert!(matches!(refused, TcpError::Reflected), "{refused:?}");

        assert!(a.links().live().is_empty(), "no link came up");
        assert_eq!(a.metrics().await.unwrap().received, 0, "nothing reached A's router");
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

/// The greeting protocol version 6 started with (before Noise).
#[derive(serde::Serialize)]
struct OldGreeting {
    version: u32,
    site: gundb::SiteId,
    challenge: [u8; 32],
}

/// A peer of the protocol before Noise (version 6) is refused at the preface, with both
/// versions named, before anything else is exchanged; and a node that a client of a
/// later version dials answers with its preface only.
#[test]
fn a_peer_of_the_old_protocol_is_refused_with_both_versions() {
    run_site(|| async {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let old_peer = actix::spawn(async move {
            let (socket, _) = listener.accept().await.unwrap();
            let mut wire = Framed::new(socket, LengthDelimitedCodec::new());
            let _their_greeting = wire.next().await.unwrap().unwrap();
            let ours = OldGreeting { version: 6, site: gundb::SiteId::random(), challenge: [7; 32] };
            wire.send(Bytes::from(gundb::codec::encode(&ours).unwrap())).await.unwrap();
            // Whatever the new site does next, it must not be a proof or a frame.
            wire.next().await.is_none_or(|frame| frame.is_err())
        });
        let site = Site::temporary().unwrap();
        let refused = dial(&site, addr, SECRET, NodeConfig::default()).await.expect_err("an old peer is refused");
        assert!(
            matches!(refused, TcpError::Version { peer: 6, ours } if ours == gundb::node::tcp::PROTOCOL_VERSION),
            "{refused:?}"
        );
        let message = refused.to_string();
        assert!(
            message.contains("version 6") && message.contains(&gundb::node::tcp::PROTOCOL_VERSION.to_string()),
            "{message}"
        );
        assert!(old_peer.await.unwrap(), "the new site sent nothing after the greetings");

        // A client of a later version, at the listening side.
        let addr = listening(&site).await;
        let mut wire = framed(TcpStream::connect(addr).await.unwrap());
        wire.send(Bytes::from(gundb::codec::encode(&Preface { version: 99 }).unwrap())).await.unwrap();
        let theirs: Preface = gundb::codec::decode(&wire.next().await.unwrap().unwrap()).unwrap();
        assert_eq!(theirs.version, gundb::node::tcp::PROTOCOL_VERSION, "the node names its version");
        assert_eq!(frames_until_closed(&mut wire, "a later version").await, 0, "and sends nothing else");
        assert_eq!(site.metrics().await.unwrap().received, 0);
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
