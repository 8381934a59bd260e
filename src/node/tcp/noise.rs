//! The link's cryptography, all of it from the Noise protocol framework (the `snow`
//! crate): nothing here invents a construction.
//!
//! A connection starts with both sides naming their protocol version in the clear (a
//! [`Preface`]), so a peer of another version is refused with both versions named. Then
//! the Noise handshake [`NOISE_PARAMS`] runs: three messages in which each side proves it
//! holds its static key and, mixed in after the third, the cluster's shared secret (as a
//! pre-shared key derived from it), with fresh ephemeral keys, so recorded traffic stays
//! secret even once a static key or the secret leaks. The protocol version is in the
//! handshake's prologue, so a version changed on the way fails the handshake. Last, each
//! side sends its site's public signing key in its first sealed frame, with its signature
//! over the handshake's hash and its role ([`Identity`]): the site id is derived from the
//! key, so a peer names only a site whose key it holds, and the signature, bound to this
//! session and this side, cannot be replayed or reflected. The dialer learns that the
//! listener holds the secret only when that frame opens.
//!
//! After the handshake every frame is sealed (ChaCha20-Poly1305) in Noise transport
//! messages of at most [`limits::NOISE_MESSAGE_BYTES_MAX`], each numbered by an implicit
//! counter: a message replayed, reordered, dropped or altered on the way does not open,
//! and the link is closed.

use super::{next, TcpError, Wire, PROTOCOL_VERSION};
use crate::codec;
use crate::error::Cause;
use crate::id::SiteId;
use crate::keys::{SiteKeys, NOISE_PARAMS};
use crate::limits;
use ed25519_dalek::{Signature, Signer as _, VerifyingKey};
use futures::SinkExt;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use snow::StatelessTransportState;
use std::sync::Arc;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_util::bytes::Bytes;
use zeroize::Zeroizing;

/// The authentication tag each sealed message carries (ChaCha20-Poly1305's).
const TAG_BYTES: usize = 16;

/// Frame bytes per sealed message: the largest message, less its tag and the byte that
/// says whether the frame goes on in the next message.
const CHUNK_BYTES: usize = limits::NOISE_MESSAGE_BYTES_MAX - TAG_BYTES - 1;

/// The first thing each side sends, in the clear. Its first field is the version, in
/// every version to come, so that any two versions can name each other's.
#[derive(Debug, Serialize, Deserialize)]
struct Preface {
    version: u32,
}

/// Which end of a connection a side is: the dialer starts the Noise handshake.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Role {
    Dialer,
    Listener,
}

impl Role {
    fn other(self) -> Self {
        match self {
            Role::Dialer => Role::Listener,
            Role::Listener => Role::Dialer,
        }
    }
}

/// Each side's first sealed frame: its site's public signing key (the site id is
/// [`SiteId::of_key`] of it) and its signature over [`identity_message`].
#[derive(Debug, Serialize, Deserialize)]
struct Identity {
    key: [u8; 32],
    signature: Signature,
}

/// What a side signs to name its site on a link: a BLAKE3 hash (key-derivation mode, a
/// context of its own) of its role (0 dialer, 1 listener) and the handshake's hash, which
/// both sides share and no other session has.
fn identity_message(role: Role, handshake_hash: &[u8]) -> [u8; 32] {
    let mut hash = blake3::Hasher::new_derive_key("gundb 2026-11 link identity");
    hash.update(&[u8::from(role == Role::Listener)]);
    hash.update(handshake_hash);
    *hash.finalize().as_bytes()
}

/// An authenticated link: who the peer is, and the two halves of its encryption.
pub(super) struct Session {
    pub peer: SiteId,
    pub seal: Seal,
    pub open: Open,
}

/// The prologue both sides hash into the handshake: a peer of another version, or a
/// version altered on the way, fails it.
fn prologue() -> String {
    format!("gundb link, protocol version {PROTOCOL_VERSION}")
}

/// The Noise pre-shared key: the cluster's secret (a file of any length) hashed to 32
/// bytes under a label of its own.
fn psk(secret: &[u8]) -> Zeroizing<[u8; 32]> {
    let digest = Sha256::new().chain_update(b"gundb link pre-shared key\0").chain_update(secret).finalize();
    let mut key = Zeroizing::new([0u8; 32]);
    key.copy_from_slice(&digest);
    key
}

fn snow_error(stage: &'static str) -> impl Fn(snow::Error) -> TcpError {
    move |error| TcpError::handshake(stage, Some(Cause::new(error)))
}

async fn send<T: AsyncRead + AsyncWrite + Unpin>(wire: &mut Wire<T>, bytes: Vec<u8>) -> Result<(), TcpError> {
    Ok(wire.send(Bytes::from(bytes)).await?)
}

/// Runs the handshake on a fresh socket as `role`, for the site of `keys`: versions, then
/// Noise (with its link key), then identities (signed with its signing key). On success
/// the wire takes frames up to [`limits::NOISE_MESSAGE_BYTES_MAX`].
pub(super) async fn handshake<T: AsyncRead + AsyncWrite + Unpin>(
    wire: &mut Wire<T>,
    role: Role,
    keys: &SiteKeys,
    secret: &[u8],
) -> Result<Session, TcpError> {
    let (site, key) = (keys.site_id(), keys.link());
    let preface = codec::encode(&Preface { version: PROTOCOL_VERSION });
    send(wire, preface.map_err(|e| TcpError::handshake("encoding our preface", Some(Cause::new(e))))?).await?;
    let peer: Preface = codec::decode_leading(&next(wire).await?)
        .map_err(|e| TcpError::handshake("not a gundb peer", Some(Cause::new(e))))?;
    if peer.version != PROTOCOL_VERSION {
        return Err(TcpError::Version { peer: peer.version, ours: PROTOCOL_VERSION });
    }

    let (psk, prologue) = (psk(secret), prologue());
    let params = NOISE_PARAMS.parse().map_err(snow_error("the Noise protocol name"))?;
    let builder = snow::Builder::new(params)
        .local_private_key(key.private())
        .and_then(|builder| builder.psk(3, &psk))
        .and_then(|builder| builder.prologue(prologue.as_bytes()))
        .map_err(snow_error("setting up Noise"))?;
    let mut noise = match role {
        Role::Dialer => builder.build_initiator(),
        Role::Listener => builder.build_responder(),
    }
    .map_err(snow_error("setting up Noise"))?;
    let mut message = vec![0u8; limits::HANDSHAKE_FRAME_BYTES_MAX];
    let mut payload = vec![0u8; limits::HANDSHAKE_FRAME_BYTES_MAX];
    // XX: -> e; <- e, ee, s, es; -> s, se, psk. Empty payloads: the site ids follow sealed.
    for turn in 0..3 {
        let ours = (turn % 2 == 0) == (role == Role::Dialer);
        if ours {
            let len = noise.write_message(&[], &mut message).map_err(snow_error("writing a handshake message"))?;
            send(wire, message[..len].to_vec()).await?;
        } else {
            let received = next(wire).await?;
            match noise.read_message(&received, &mut payload) {
                Ok(_) => {}
                // The third message is the first sealed with the pre-shared key: it does
                // not open unless the dialer holds the secret.
                Err(snow::Error::Decrypt) if turn == 2 => {
                    return Err(TcpError::Unauthenticated { stage: "the dialer's last handshake message" });
                }
                Err(error) => {
                    return Err(TcpError::handshake(format!("handshake message {}", turn + 1), Some(Cause::new(error))))
                }
            }
        }
    }
    // Our own static key from the other end: this site dialed itself, or an attacker
    // reflected or looped its handshake back to it.
    if noise.get_remote_static() == Some(&key.public()[..]) {
        return Err(TcpError::Reflected);
    }
    let handshake_hash = noise.get_handshake_hash().to_vec();
    let transport = Arc::new(noise.into_stateless_transport_mode().map_err(snow_error("finishing the handshake"))?);
    let mut seal = Seal { transport: Arc::clone(&transport), nonce: 0, plain: Vec::new() };
    let mut open = Open { transport, nonce: 0, plain: Vec::new(), frame: Vec::new() };
    wire.codec_mut().set_max_frame_length(limits::NOISE_MESSAGE_BYTES_MAX);

    let ours =
        Identity { key: keys.public_key(), signature: keys.signing().sign(&identity_message(role, &handshake_hash)) };
    let ours = codec::encode(&ours).map_err(|e| TcpError::handshake("encoding our identity", Some(Cause::new(e))))?;
    for message in seal.seal(&ours)? {
        wire.send(message).await?;
    }
    // The listener learnt at the third message that the dialer holds the secret; the
    // dialer learns it of the listener when this frame opens. A listener that closes the
    // link instead refused the dialer's secret.
    let received = match next(wire).await {
        Ok(received) => received,
        Err(TcpError::Handshake { .. }) if role == Role::Dialer => {
            return Err(TcpError::Unauthenticated { stage: "the listener closed the link after the handshake" });
        }
        Err(error) => return Err(error),
    };
    let unauthenticated = |_| TcpError::Unauthenticated { stage: "the peer's first sealed frame" };
    let frame = open.open(&received).map_err(unauthenticated)?;
    let frame = frame.ok_or_else(|| TcpError::handshake("the peer's identity spans several messages", None))?;
    let theirs: Identity =
        codec::decode(&frame).map_err(|e| TcpError::handshake("the peer's identity", Some(Cause::new(e))))?;
    let peer = SiteId::of_key(&theirs.key);
    if peer == site {
        return Err(TcpError::Reflected);
    }
    let signed = identity_message(role.other(), &handshake_hash);
    VerifyingKey::from_bytes(&theirs.key)
        .and_then(|key| key.verify_strict(&signed, &theirs.signature))
        .map_err(|_| TcpError::Impersonation { site: peer })?;
    Ok(Session { peer, seal, open })
}

/// The sending half of a link's encryption.
pub(super) struct Seal {
    transport: Arc<StatelessTransportState>,
    /// The next message's number (both sides count; it never crosses the wire).
    nonce: u64,
    plain: Vec<u8>,
}

impl Seal {
    /// Seals `frame` into as many Noise messages as it takes (one for a frame of up to
    /// 64 KiB). Each message's plaintext is a byte saying whether it ends the frame,
    /// then up to [`CHUNK_BYTES`] of it.
    pub fn seal(&mut self, frame: &[u8]) -> Result<Vec<Bytes>, TcpError> {
        let count = frame.len().div_ceil(CHUNK_BYTES).max(1);
        let mut messages = Vec::with_capacity(count);
        for (index, chunk) in frame.chunks(CHUNK_BYTES).chain(frame.is_empty().then_some(&[][..])).enumerate() {
            self.plain.clear();
            self.plain.push(u8::from(index + 1 == count));
            self.plain.extend_from_slice(chunk);
            let mut message = vec![0u8; self.plain.len() + TAG_BYTES];
            let len = self
                .transport
                .write_message(self.nonce, &self.plain, &mut message)
                .map_err(|error| TcpError::sealed("sealing", Some(Cause::new(error))))?;
            message.truncate(len);
            // 2^64 messages would take millennia at any link speed; a link that got there
            // is closed rather than reuse a nonce.
            self.nonce = self
                .nonce
                .checked_add(1)
                .ok_or_else(|| TcpError::sealed("the link's message counter ran out", None))?;
            messages.push(Bytes::from(message));
        }
        Ok(messages)
    }
}

/// The receiving half of a link's encryption.
pub(super) struct Open {
    transport: Arc<StatelessTransportState>,
    /// The number the next message must have been sealed with.
    nonce: u64,
    plain: Vec<u8>,
    /// The frame being put together, at most [`limits::WIRE_FRAME_BYTES_MAX`].
    frame: Vec<u8>,
}

impl Open {
    /// Opens one Noise message; returns the frame it completes, if it ends one.
    ///
    /// # Errors
    /// [`TcpError::Sealed`] when the message does not open (altered, replayed, out of
    /// order, or sealed with other keys), is malformed, or makes a frame over
    /// [`limits::WIRE_FRAME_BYTES_MAX`].
    pub fn open(&mut self, message: &[u8]) -> Result<Option<Vec<u8>>, TcpError> {
        self.plain.resize(message.len(), 0);
        let len = self.transport.read_message(self.nonce, message, &mut self.plain).map_err(|error| {
            TcpError::sealed(format!("message {} did not open", self.nonce), Some(Cause::new(error)))
        })?;
        self.nonce =
            self.nonce.checked_add(1).ok_or_else(|| TcpError::sealed("the link's message counter ran out", None))?;
        let Some((&last, chunk)) = self.plain[..len].split_first() else {
            return Err(TcpError::sealed("an empty message", None));
        };
        if self.frame.len() + chunk.len() > limits::WIRE_FRAME_BYTES_MAX {
            return Err(TcpError::sealed(format!("a frame over {} bytes", limits::WIRE_FRAME_BYTES_MAX), None));
        }
        self.frame.extend_from_slice(chunk);
        match last {
            0 => Ok(None),
            1 => Ok(Some(std::mem::take(&mut self.frame))),
            other => Err(TcpError::sealed(format!("a message whose end marker is {other}"), None)),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use proptest::prelude::*;

    /// Both ends of a link, with keys from a real handshake over an in-memory pipe.
    fn linked() -> ((Seal, Open), (Seal, Open)) {
        let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
        runtime.block_on(async {
            let (a, b) = tokio::io::duplex(1 << 16);
            let (mut a, mut b) = (super::super::framed(a), super::super::framed(b));
            let (keys_a, keys_b) = (crate::testkit::site_keys(1), crate::testkit::site_keys(2));
            let dialer = handshake(&mut a, Role::Dialer, &keys_a, b"s");
            let listener = handshake(&mut b, Role::Listener, &keys_b, b"s");
            let (a, b) = tokio::join!(dialer, listener);
            let (a, b) = (a.unwrap(), b.unwrap());
            assert_eq!((a.peer, b.peer), (keys_b.site_id(), keys_a.site_id()));
            ((a.seal, a.open), (b.seal, b.open))
        })
    }

    fn open_all(open: &mut Open, messages: &[Bytes]) -> Result<Vec<Vec<u8>>, TcpError> {
        let mut frames = Vec::new();
        for message in messages {
            frames.extend(open.open(message)?);
        }
        Ok(frames)
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(16))]
        /// Frames of any size (empty, one message, several) arrive as they were sent, in
        /// order, and no message exceeds the Noise limit.
        #[test]
        fn frames_round_trip(sizes in proptest::collection::vec(0usize..200_000, 1..5)) {
            let ((mut seal, _), (_, mut open)) = linked();
            let frames: Vec<Vec<u8>> =
                sizes.iter().enumerate().map(|(n, &size)| vec![u8::try_from(n).unwrap(); size]).collect();
            let mut messages = Vec::new();
            for frame in &frames {
                messages.extend(seal.seal(frame).unwrap());
            }
            prop_assert!(messages.iter().all(|m| m.len() <= limits::NOISE_MESSAGE_BYTES_MAX));
            prop_assert_eq!(open_all(&mut open, &messages).unwrap(), frames);
        }
    }

    #[test]
    fn an_altered_replayed_or_reordered_message_does_not_open() {
        let ((mut seal, _), (_, mut open)) = linked();
        let first = seal.seal(b"one").unwrap();
        // Altered: one bit of the ciphertext flipped.
        let mut altered = first[0].to_vec();
        altered[3] ^= 1;
        assert!(matches!(open.open(&altered), Err(TcpError::Sealed { .. })));

        let ((mut seal, _), (_, mut open)) = linked();
        let first = seal.seal(b"one").unwrap();
        assert_eq!(open.open(&first[0]).unwrap(), Some(b"one".to_vec()));
        // Replayed: the same message again.
        assert!(matches!(open.open(&first[0]), Err(TcpError::Sealed { .. })));

        let ((mut seal, _), (_, mut open)) = linked();
        let _first = seal.seal(b"one").unwrap();
        let second = seal.seal(b"two").unwrap();
        // Reordered: the second message before the first.
        assert!(matches!(open.open(&second[0]), Err(TcpError::Sealed { .. })));
    }

    #[test]
    fn the_two_directions_use_different_keys() {
        let ((mut seal_a, mut open_a), _) = linked();
        let message = seal_a.seal(b"to b").unwrap();
        // A's own message handed back to A (a reflection) does not open.
        assert!(matches!(open_a.open(&message[0]), Err(TcpError::Sealed { .. })));
    }
}
