//! [`Attestation`]: a site's signature over the ids of events it wrote, which is how every
//! other site knows a lane's events come from the lane's site.
//!
//! An event's id is the hash of its content ([`crate::Event::content_id`]), so signing ids
//! signs contents. Signing each event would cost an ed25519 signature (about 43 µs) per
//! write and a verification (about 79 µs) per event at every receiver; instead a site signs
//! once per group commit, over the ids of all its own events in it (the storage writer
//! does, as it writes them), and each event names the attestation that covers it
//! ([`crate::Event::attestation`]). A receiver verifies an attestation once, keeps it, and
//! checks each event's id against it by binary search. The key travels in the attestation
//! and the site's id is derived from it ([`SiteId::of_key`]): no directory of keys.

use crate::event::Event;
use crate::id::{EventId, Lane, Seq, SiteId};
use crate::keys::SiteKeys;
use ed25519_dalek::{Signature, Signer as _, VerifyingKey};
use serde::{Deserialize, Serialize};

/// Why an attestation is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AttestError {
    /// The key is not an ed25519 public key.
    #[error("attestation {number} of site {site}: not an ed25519 key")]
    Key {
        /// The site the key would be.
        site: SiteId,
        /// The attestation's number.
        number: u64,
    },
    /// The signature does not verify: forged or altered.
    #[error("attestation {number} of site {site}: the signature does not verify")]
    Signature {
        /// The site the key is.
        site: SiteId,
        /// The attestation's number.
        number: u64,
    },
    /// The ids are not in strictly increasing order (a signer writes them sorted).
    #[error("attestation {number} of site {site}: ids out of order")]
    Unsorted {
        /// The site the key is.
        site: SiteId,
        /// The attestation's number.
        number: u64,
    },
    /// Two signed events that do not show their site equivocating ([`Equivocation::verify`]).
    #[error("not proof of equivocation: {0}")]
    NotEquivocation(&'static str),
}

/// A site's signature over the ids of events it wrote.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct Attestation {
    /// The signing site's public ed25519 key: the site is [`SiteId::of_key`] of it.
    pub key: [u8; 32],
    /// Its number among the site's attestations (the site-log position of the first
    /// event of the group commit it was made in).
    pub number: u64,
    /// The ids it covers, sorted.
    pub ids: Vec<EventId>,
    /// The signature over key, number and ids.
    pub signature: Signature,
}

impl Attestation {
    /// `keys`' attestation `number` over `ids` (sorted here).
    pub fn sign(keys: &SiteKeys, number: u64, mut ids: Vec<EventId>) -> Self {
        ids.sort_unstable();
        ids.dedup();
        let key = keys.public_key();
        let signature = keys.signing().sign(&message(&key, number, &ids));
        Self { key, number, ids, signature }
    }

    /// The site that signed it.
    pub fn site(&self) -> SiteId {
        SiteId::of_key(&self.key)
    }

    /// Checks the signature and the order of the ids.
    ///
    /// # Errors
    /// An [`AttestError`] naming what is wrong.
    pub fn verify(&self) -> Result<(), AttestError> {
        let (site, number) = (self.site(), self.number);
        if self.ids.windows(2).any(|pair| pair[0] >= pair[1]) {
            return Err(AttestError::Unsorted { site, number });
        }
        let key = VerifyingKey::from_bytes(&self.key).map_err(|_| AttestError::Key { site, number })?;
        key.verify_strict(&message(&self.key, number, &self.ids), &self.signature)
            .map_err(|_| AttestError::Signature { site, number })
    }

    /// True when it covers `id`.
    pub fn covers(&self, id: EventId) -> bool {
        self.ids.binary_search(&id).is_ok()
    }

    /// Bytes it takes in memory and on the wire, about.
    pub fn size(&self) -> usize {
        32 + 8 + 64 + self.ids.len() * 16
    }
}

/// An event with the attestation of its site that covers it: what shows, to anyone, that
/// the lane's site wrote it.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct SignedEvent {
    /// The event.
    pub event: Event,
    /// Its site's attestation that covers it.
    pub attestation: Attestation,
}

impl SignedEvent {
    /// Checks that the event's id is its content's and that a verified attestation of its
    /// lane's site covers it.
    ///
    /// # Errors
    /// An [`AttestError`] naming what is wrong.
    pub fn verify(&self) -> Result<(), AttestError> {
        let (event, attestation) = (&self.event, &self.attestation);
        if event.id != event.content_id() {
            return Err(AttestError::NotEquivocation("an event's id is not its content's"));
        }
        if attestation.site() != event.lane.site || attestation.number != event.attestation {
            return Err(AttestError::NotEquivocation("an attestation is not the one its event names"));
        }
        if !attestation.covers(event.id) {
            return Err(AttestError::NotEquivocation("an attestation does not cover its event"));
        }
        attestation.verify()
    }

    /// Bytes it takes in memory, about.
    pub fn size(&self) -> usize {
        self.event.size() + self.attestation.size()
    }
}

/// Two different events that one site signed for one (lane, seq) of its lane: proof that
/// the site (or whoever holds its key) equivocates, telling different sites different
/// histories. Anyone can check it ([`Equivocation::verify`]) trusting neither that site
/// nor the one that reports it. A site keeps the event that reached it first and refuses
/// the other.
///
/// ```
/// use gundb::attest::{Attestation, Equivocation, SignedEvent};
/// use gundb::testkit::{site_keys, written_event};
/// use gundb::{Lane, StreamId};
///
/// let keys = site_keys(1);
/// let lane = Lane::new(keys.site_id(), StreamId::from_u128(1));
/// let signed = |time| {
///     let mut event = written_event(lane, 1, &[], 1, time);
///     event.attestation = time;
///     let attestation = Attestation::sign(&keys, time, vec![event.id]);
///     SignedEvent { event, attestation }
/// };
/// let proof = Equivocation { kept: signed(1), rejected: signed(2) };
/// assert_eq!(proof.verify(), Ok(()));
/// assert!(Equivocation { kept: signed(1), rejected: signed(1) }.verify().is_err(), "one event twice");
/// ```
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct Equivocation {
    /// The event this site kept (the first to reach it).
    pub kept: SignedEvent,
    /// The event this site refused.
    pub rejected: SignedEvent,
}

impl Equivocation {
    /// The lane claimed twice.
    pub fn lane(&self) -> Lane {
        self.kept.event.lane
    }

    /// The seq claimed twice.
    pub fn seq(&self) -> Seq {
        self.kept.event.seq
    }

    /// The site that equivocates.
    pub fn site(&self) -> SiteId {
        self.lane().site
    }

    /// Checks the proof: two different events at one (lane, seq), each with its id its
    /// content's and covered by a verified attestation of the lane's site.
    ///
    /// # Errors
    /// An [`AttestError`] naming what is wrong.
    pub fn verify(&self) -> Result<(), AttestError> {
        let (kept, rejected) = (&self.kept.event, &self.rejected.event);
        if (kept.lane, kept.seq) != (rejected.lane, rejected.seq) {
            return Err(AttestError::NotEquivocation("the events are at different places"));
        }
        if kept.id == rejected.id {
            return Err(AttestError::NotEquivocation("the events are one event"));
        }
        self.kept.verify()?;
        self.rejected.verify()
    }

    /// Bytes it takes in memory, about.
    pub fn size(&self) -> usize {
        self.kept.size() + self.rejected.size()
    }
}

/// What is signed: a BLAKE3 hash (key-derivation mode, a context of its own) of the key,
/// the number and the ids, each fixed-size, the ids after their count.
fn message(key: &[u8; 32], number: u64, ids: &[EventId]) -> [u8; 32] {
    let mut hash = blake3::Hasher::new_derive_key("gundb 2026-11 attestation");
    hash.update(key);
    hash.update(&number.to_be_bytes());
    hash.update(&u64::try_from(ids.len()).unwrap_or(u64::MAX).to_be_bytes());
    for id in ids {
        hash.update(id.as_uuid().as_bytes());
    }
    *hash.finalize().as_bytes()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::testkit::site_keys;

    fn ids(ns: &[u128]) -> Vec<EventId> {
        ns.iter().copied().map(EventId::from_u128).collect()
    }

    #[test]
    fn a_signed_attestation_verifies_and_covers_its_ids() {
        let keys = site_keys(1);
        let attestation = Attestation::sign(&keys, 7, ids(&[3, 1, 2]));
        assert_eq!(attestation.verify(), Ok(()));
        assert_eq!(attestation.site(), keys.site_id());
        assert!(attestation.covers(EventId::from_u128(2)));
        assert!(!attestation.covers(EventId::from_u128(4)));
    }

    /// Every part is signed: another id, number or key, or a signature of another
    /// attestation, does not verify.
    #[test]
    fn an_altered_attestation_does_not_verify() {
        let keys = site_keys(1);
        let good = Attestation::sign(&keys, 7, ids(&[1, 2, 3]));
        let mut added = good.clone();
        added.ids.push(EventId::from_u128(4));
        let mut renumbered = good.clone();
        renumbered.number = 8;
        let mut rekeyed = good.clone();
        rekeyed.key = site_keys(2).public_key();
        let mut resigned = good.clone();
        resigned.signature = Attestation::sign(&keys, 7, ids(&[1, 2])).signature;
        for (what, bad) in
            [("an id added", added), ("renumbered", renumbered), ("rekeyed", rekeyed), ("resigned", resigned)]
        {
            assert!(matches!(bad.verify(), Err(AttestError::Signature { .. })), "{what}: {:?}", bad.verify());
        }
        let mut unsorted = good;
        unsorted.ids.swap(0, 1);
        assert!(matches!(unsorted.verify(), Err(AttestError::Unsorted { .. })));
    }
}
