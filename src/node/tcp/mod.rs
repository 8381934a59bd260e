//! TCP transport: a Noise handshake (module `noise`) that checks the protocol version and
//! authenticates both sides by their link keys and the cluster's shared secret, then
//! sealed frames over the socket.
//!
//! A connection that fails the handshake, or sends a frame that does not open or is over
//! the size limit, is closed before any frame reaches the router. After the handshake the
//! socket is bridged to an [`Endpoint`], so the same source and sink nodes serve it as any
//! other link.

mod noise;

use super::transport::Endpoint;
use super::{connect, Connection, NodeConfig};
use crate::error::Cause;
use crate::id::SiteId;
use crate::keys::SiteKeys;
use crate::limits;
use crate::site::Site;
use crate::stream::clock_ms;
use futures::{SinkExt, StreamExt};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot};
use tokio_util::bytes::Bytes;
use tokio_util::codec::{Framed, LengthDelimitedCodec};

use noise::{Role, Seal, Session};

/// The wire protocol version this build speaks. Version 10 names each side's site by its
/// signing key, signed over the session; version 9 sent events with the attestations
/// that sign them ([`crate::attest`]); version 8 sent events whose ids are
/// hashes of their content ([`crate::Event::content_id`]); version 7 encrypted links with
/// Noise; version 6 sent events whose clocks name only what their lane's
/// previous event does not imply.
pub const PROTOCOL_VERSION: u32 = 10;

/// Why a TCP connection was refused or lost.
#[derive(Debug, thiserror::Error)]
pub enum TcpError {
    /// The socket failed.
    #[error("socket: {0}")]
    Io(#[from] std::io::Error),
    /// The peer speaks another protocol version.
    #[error("peer speaks protocol version {peer}, this site {ours}")]
    Version {
        /// The peer's version.
        peer: u32,
        /// Ours.
        ours: u32,
    },
    /// One side could not prove it holds the shared secret: the two sites were given
    /// different secret files.
    #[error("authentication failed at {stage}: the two sites do not hold the same secret")]
    Unauthenticated {
        /// Where the handshake failed.
        stage: &'static str,
    },
    /// The peer holds the secret but not the signing key of the site it names: its
    /// signature over the session does not verify.
    #[error("the peer named site {site} but could not sign as it: refused")]
    Impersonation {
        /// The site it named.
        site: SiteId,
    },
    /// The peer is this site itself: its own link key or site id came back (it dialed
    /// itself, or someone reflected or looped its handshake).
    #[error("the peer is this site itself: a reflected or looped connection")]
    Reflected,
    /// An authenticated peer's message did not open (altered, replayed or reordered on
    /// the way), or was malformed: the link is closed.
    #[error("sealed frame: {reason}{}", because(cause))]
    Sealed {
        /// What was wrong.
        reason: String,
        /// Noise's error, when it refused the message.
        #[source]
        cause: Option<Cause>,
    },
    /// A handshake message did not decode, or the peer hung up during the handshake.
    #[error("handshake: {reason}{}", because(cause))]
    Handshake {
        /// What was wrong.
        reason: String,
        /// The error of Noise or of the codec, when one refused a message.
        #[source]
        cause: Option<Cause>,
    },
}

/// `": cause"`, or nothing.
fn because(cause: &Option<Cause>) -> String {
    cause.as_ref().map(|cause| format!(": {cause}")).unwrap_or_default()
}

impl TcpError {
    /// A sealed message refused for `reason`, by `cause` if given.
    fn sealed(reason: impl Into<String>, cause: Option<Cause>) -> Self {
        TcpError::Sealed { reason: reason.into(), cause }
    }

    /// A handshake refused for `reason`, by `cause` if given.
    fn handshake(reason: impl Into<String>, cause: Option<Cause>) -> Self {
        TcpError::Handshake { reason: reason.into(), cause }
    }
}

type Wire<T = Watched<TcpStream>> = Framed<T, LengthDelimitedCodec>;

/// A byte stream that notes when it last read a byte, so that a connection's idle timeout
/// measures silence between bytes, not the time a whole frame takes: a slow link that
/// keeps delivering a large frame is alive.
struct Watched<T> {
    inner: T,
    /// When a byte last arrived, in [`crate::stream::clock_ms`] time.
    last_byte_ms: Arc<AtomicU64>,
}

impl<T> Watched<T> {
    fn new(inner: T) -> Self {
        Self { inner, last_byte_ms: Arc::new(AtomicU64::new(clock_ms())) }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Watched<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.last_byte_ms.store(clock_ms(), Ordering::Relaxed);
        }
        polled
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Watched<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// A fresh socket, framed for the handshake: frames of at most
/// [`limits::HANDSHAKE_FRAME_BYTES_MAX`] until the peer is authenticated, so that a
/// stranger cannot make this site reserve a large buffer. The limit is checked on the
/// length prefix, before anything is allocated.
fn framed<T: AsyncRead + AsyncWrite>(socket: T) -> Wire<T> {
    let codec = LengthDelimitedCodec::builder().max_frame_length(limits::HANDSHAKE_FRAME_BYTES_MAX).new_codec();
    Framed::new(socket, codec)
}

async fn next<T: AsyncRead + AsyncWrite + Unpin>(wire: &mut Wire<T>) -> Result<Vec<u8>, TcpError> {
    match wire.next().await {
        Some(Ok(bytes)) => Ok(bytes.to_vec()),
        Some(Err(error)) => Err(TcpError::Io(error)),
        None => Err(TcpError::handshake("the peer hung up", None)),
    }
}

/// Runs the listening side's handshake over any byte stream: what the handshake fuzz
/// target feeds a peer's bytes to. Not part of the API.
///
/// # Errors
/// As the handshake of [`dial`].
#[doc(hidden)]
pub async fn handshake_over<T: AsyncRead + AsyncWrite + Unpin>(
    socket: T,
    keys: &SiteKeys,
    secret: &[u8],
) -> Result<SiteId, TcpError> {
    Ok(noise::handshake(&mut framed(socket), Role::Listener, keys, secret).await?.peer)
}

/// Moves frames between an authenticated socket and an endpoint, opening what comes in
/// and sealing what goes out, until either side closes, a message does not open, or no
/// byte arrives for `idle` (a dead peer: a live one says hello every interval, and a slow
/// link delivering a large frame is sending bytes all along). The receiver resolves once
/// the socket's reading side has ended.
fn bridge(wire: Wire, session: Session, idle: Option<Duration>) -> (Endpoint, oneshot::Receiver<()>) {
    let Session { peer, mut seal, mut open } = session;
    let last_byte_ms = Arc::clone(&wire.get_ref().last_byte_ms);
    let (closed, on_close) = oneshot::channel::<()>();
    let (to_node, from_socket) = mpsc::channel(limits::LINK_FRAMES_MAX);
    let (to_socket, mut from_node) = mpsc::channel::<Vec<u8>>(limits::LINK_FRAMES_MAX);
    let (mut sink, mut stream) = wire.split();
    // The writer stops when the reader does, so that both halves of the socket drop and
    // the peer sees the connection close.
    let (reading, mut read_ended) = oneshot::channel::<()>();
    actix::spawn(async move {
        let (_closed, _reading) = (closed, reading); // dropped when this loop ends: the signals
        loop {
            let next = async {
                loop {
                    let Some(idle) = idle else { break stream.next().await };
                    // `next` on a `Framed` is cancel-safe: a part of a frame read so far
                    // stays in its buffer when the timeout drops the future.
                    match tokio::time::timeout(idle, stream.next()).await {
                        Ok(frame) => break frame,
                        Err(_) => {
                            let silent_ms = clock_ms().saturating_sub(last_byte_ms.load(Ordering::Relaxed));
                            if u128::from(silent_ms) >= idle.as_millis() {
                                break None; // silent for too long: the peer is gone
                            }
                        }
                    }
                }
            };
            let frame = tokio::select! {
                frame = next => frame,
                () = to_node.closed() => None, // the sink node closed the connection
            };
            let Some(Ok(message)) = frame else { break };
            match open.open(&message) {
                Ok(None) => {} // a part of a frame
                Ok(Some(frame)) => {
                    if to_node.send(frame).await.is_err() {
                        break;
                    }
                }
                Err(error) => {
                    tracing::warn!(%peer, %error, "closing the link: a message from the peer did not open");
                    break;
                }
            }
        }
    });
    actix::spawn(async move {
        loop {
            let frame = tokio::select! {
                frame = from_node.recv() => frame,
                _ = &mut read_ended => None,
            };
            let Some(frame) = frame else { break };
            if send_sealed(&mut sink, &mut seal, &frame).await.is_err() {
                break;
            }
        }
    });
    (Endpoint { sender: to_socket, receiver: from_socket, peer: Some(peer) }, on_close)
}

/// Seals `frame` and sends its messages, flushing once after the last.
async fn send_sealed<S>(sink: &mut S, seal: &mut Seal, frame: &[u8]) -> Result<(), TcpError>
where
    S: futures::Sink<Bytes, Error = std::io::Error> + Unpin,
{
    for message in seal.seal(frame)? {
        sink.feed(message).await?;
    }
    Ok(sink.flush().await?)
}

/// Accepts connections on `listener` for `site`, for as long as the site's actix system
/// runs. Each authenticated peer gets its own source and sink nodes; a peer that fails
/// the handshake is closed before any of its frames reaches the router. At most
/// [`limits::HANDSHAKES_MAX`] handshakes run at once (a connection past them is closed at
/// once), each for at most [`limits::HANDSHAKE_TIMEOUT`]; a failed accept (out of file
/// descriptors, say) is logged and retried after a pause that doubles up to a second,
/// and never ends the listener.
pub fn serve(site: Site, listener: TcpListener, secret: Vec<u8>, config: NodeConfig) {
    actix::spawn(async move {
        let handshakes = Arc::new(tokio::sync::Semaphore::new(limits::HANDSHAKES_MAX));
        let mut pause = limits::ACCEPT_PAUSE_MIN;
        loop {
            let socket = match listener.accept().await {
                Ok((socket, _)) => socket,
                Err(error) => {
                    tracing::warn!(%error, pause_ms = pause.as_millis(), "accepting a connection failed; retrying");
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(limits::ACCEPT_PAUSE_MAX);
                    continue;
                }
            };
            pause = limits::ACCEPT_PAUSE_MIN;
            let Ok(permit) = Arc::clone(&handshakes).try_acquire_owned() else {
                tracing::warn!(max = limits::HANDSHAKES_MAX, "closed a connection: too many handshakes under way");
                continue;
            };
            let (site, secret, config) = (site.clone(), secret.clone(), config.clone());
            actix::spawn(async move {
                let mut wire = framed(Watched::new(socket));
                let handshake = noise::handshake(&mut wire, Role::Listener, site.storage().keys(), &secret);
                let handshake = tokio::time::timeout(limits::HANDSHAKE_TIMEOUT, handshake).await;
                drop(permit);
                match handshake {
                    Ok(Ok(session)) => {
                        let peer = session.peer;
                        tracing::info!(%peer, "peer connected");
                        let (endpoint, closed) = bridge(wire, session, idle_limit(&config));
                        connect(&site, endpoint, config);
                        let _ = closed.await;
                        tracing::info!(%peer, "peer disconnected");
                    }
                    Ok(Err(error)) => tracing::warn!(%error, "refused a connecting peer"),
                    Err(_) => tracing::warn!("refused a connecting peer: handshake timed out"),
                }
            });
        }
    });
}

/// Connects `site` to the peer at `addr`, authenticating with `secret`.
///
/// # Errors
/// The connection, the version check or the authentication failed.
pub async fn dial(site: &Site, addr: SocketAddr, secret: &[u8], config: NodeConfig) -> Result<Connection, TcpError> {
    Ok(dial_watched(site, addr, secret, config).await?.0)
}

/// [`dial`], also returning what resolves once the connection is gone.
async fn dial_watched(
    site: &Site,
    addr: SocketAddr,
    secret: &[u8],
    config: NodeConfig,
) -> Result<(Connection, oneshot::Receiver<()>), TcpError> {
    let mut wire = framed(Watched::new(TcpStream::connect(addr).await?));
    let handshake = noise::handshake(&mut wire, Role::Dialer, site.storage().keys(), secret);
    let session = tokio::time::timeout(limits::HANDSHAKE_TIMEOUT, handshake)
        .await
        .map_err(|_| TcpError::handshake("timed out", None))??;
    let (endpoint, closed) = bridge(wire, session, idle_limit(&config));
    Ok((connect(site, endpoint, config), closed))
}

/// How long a connection may stay silent before it is taken for dead:
/// [`limits::HELLOS_MISSED_MAX`] hello intervals (none without periodic hellos).
fn idle_limit(config: &NodeConfig) -> Option<Duration> {
    config.hello_every.map(|every| every * limits::HELLOS_MISSED_MAX)
}

/// Keeps `site` connected to the peer at `addr` for as long as its actix system runs:
/// dials, and after a failure or a lost connection dials again, backing off
/// exponentially from [`limits::DIAL_RETRY_FIRST`] to [`limits::DIAL_RETRY_MAX`] with random
/// jitter so that many sites do not retry in step. Every new connection starts with catch-up.
pub fn keep_dialing(site: Site, addr: SocketAddr, secret: Vec<u8>, config: NodeConfig) {
    actix::spawn(async move {
        let mut backoff = limits::DIAL_RETRY_FIRST;
        loop {
            match dial_watched(&site, addr, &secret, config.clone()).await {
                Ok((_connection, closed)) => {
                    tracing::info!(%addr, "connected to peer");
                    backoff = limits::DIAL_RETRY_FIRST;
                    let _ = closed.await; // the socket closed: dial again
                    tracing::info!(%addr, "connection to peer lost; dialing again");
                }
                // A refused secret will not get better by retrying fast.
                Err(
                    error @ (TcpError::Unauthenticated { .. }
                    | TcpError::Impersonation { .. }
                    | TcpError::Version { .. }
                    | TcpError::Reflected),
                ) => {
                    tracing::warn!(%addr, %error, "peer refused");
                    backoff = limits::DIAL_RETRY_MAX;
                }
                Err(error) => tracing::debug!(%addr, %error, "dial failed; retrying"),
            }
            let jitter = u64::from(uuid::Uuid::new_v4().as_bytes()[0]) % u64::from(limits::DIAL_JITTER_MS);
            let jitter = Duration::from_millis(jitter);
            tokio::time::sleep(backoff + jitter).await;
            backoff = (backoff * 2).min(limits::DIAL_RETRY_MAX);
        }
    });
}
