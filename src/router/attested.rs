//! [`Attested`]: the attestations the router has checked, so that each signature is
//! verified once however many events it covers, and an event is held only once an
//! attestation of its lane's site vouches for it.
//!
//! A frame carries the attestations of its events. Each new one is looked up in storage
//! first (stored ones were verified when stored: the disk is trusted), and otherwise
//! verified and stored, queued before the events it covers. The checked ones are kept in
//! two generations of at most [`limits::ROUTER_ATTESTATIONS_CACHED`] and
//! [`limits::ROUTER_ATTESTATION_BYTES_CACHED`] each, so memory is bounded whatever the
//! number of sites or commits; an event whose attestation fell out
//! is checked against storage.

use crate::attest::Attestation;
use crate::event::Event;
use crate::id::SiteId;
use crate::limits;
use crate::storage::{Storage, StorageError};
use std::collections::HashMap;
use std::sync::Arc;

type Key = (SiteId, u64);

/// Keeps of `attestations` only those `events` name: only those are worth a signature
/// check, and a peer must not make a site verify or store signatures that vouch for
/// nothing.
pub(crate) fn retain_named(events: &[Event], attestations: &mut Vec<Attestation>) {
    let named: std::collections::HashSet<Key> = events.iter().map(|e| (e.lane.site, e.attestation)).collect();
    attestations.retain(|attestation| named.contains(&(attestation.site(), attestation.number)));
}

/// Why an attestation from a peer was refused.
#[derive(Debug)]
pub(crate) enum Refused {
    /// Its signature or shape does not verify.
    Invalid(crate::attest::AttestError),
    /// Its site signed another attestation under the same number: proof that the site
    /// (or whoever holds its key) equivocates. Both are kept for the report.
    Conflict { stored: Box<Attestation>, received: Box<Attestation> },
}

/// The attestations checked lately.
#[derive(Default)]
pub(crate) struct Attested {
    recent: HashMap<Key, Arc<Attestation>>,
    older: HashMap<Key, Arc<Attestation>>,
    /// Bytes of the attestations in `recent`.
    recent_bytes: usize,
    /// Nanoseconds spent verifying signatures.
    pub verify_ns: u64,
}

impl Attested {
    fn get(&self, key: &Key) -> Option<&Arc<Attestation>> {
        self.recent.get(key).or_else(|| self.older.get(key))
    }

    fn keep(&mut self, key: Key, attestation: Arc<Attestation>) {
        // Bounded in count and in bytes: a site can sign an attestation of up to a frame's
        // worth of ids, so a count alone would let a few peers' sites fill memory.
        if self.recent.len() >= limits::ROUTER_ATTESTATIONS_CACHED
            || self.recent_bytes >= limits::ROUTER_ATTESTATION_BYTES_CACHED
        {
            self.older = std::mem::take(&mut self.recent);
            self.recent_bytes = 0;
        }
        self.recent_bytes += attestation.size();
        self.recent.insert(key, attestation);
    }

    /// Checks an attestation from a peer (its signature unless `verified` says it was
    /// checked already), and stores it when it is new.
    ///
    /// # Errors
    /// [`Refused`] when it does not verify or conflicts with a stored one; a storage
    /// failure to read or queue it (the attestation is then not kept: its events are
    /// refused and fetched again).
    pub fn check(
        &mut self,
        attestation: Attestation,
        verified: bool,
        storage: &dyn Storage,
    ) -> Result<Result<(), Refused>, StorageError> {
        let key = (attestation.site(), attestation.number);
        if let Some(known) = self.get(&key) {
            if **known == attestation {
                return Ok(Ok(()));
            }
            let known = known.as_ref().clone();
            return Ok(self.conflict(known, attestation));
        }
        if let Some(stored) = storage.attestation(key.0, key.1)? {
            let matches = stored == attestation;
            let stored = Arc::new(stored);
            self.keep(key, Arc::clone(&stored));
            return Ok(if matches { Ok(()) } else { self.conflict(stored.as_ref().clone(), attestation) });
        }
        if !verified {
            let started = std::time::Instant::now();
            let checked = attestation.verify();
            self.verify_ns += u64::try_from(started.elapsed().as_nanos()).unwrap_or(u64::MAX);
            if let Err(error) = checked {
                return Ok(Err(Refused::Invalid(error)));
            }
        }
        storage.put_attestation(&attestation)?;
        self.keep(key, Arc::new(attestation));
        Ok(Ok(()))
    }

    fn conflict(&mut self, stored: Attestation, received: Attestation) -> Result<(), Refused> {
        // Only a verified second attestation is proof; an unverified one is a forgery.
        let started = std::time::Instant::now();
        let verified = received.verify();
        self.verify_ns += u64::try_from(started.elapsed().as_nanos()).unwrap_or(u64::MAX);
        match verified {
            Ok(()) => Err(Refused::Conflict { stored: Box::new(stored), received: Box::new(received) }),
            Err(error) => Err(Refused::Invalid(error)),
        }
    }

    /// True when a checked attestation of `event`'s lane's site covers it (looked up in
    /// storage when it is not kept here).
    ///
    /// # Errors
    /// A storage failure.
    pub fn covers(&mut self, event: &Event, storage: &dyn Storage) -> Result<bool, StorageError> {
        let key = (event.lane.site, event.attestation);
        if let Some(attestation) = self.get(&key) {
            return Ok(attestation.covers(event.id));
        }
        Ok(self.read(key, storage)?.is_some_and(|attestation| attestation.covers(event.id)))
    }

    /// `site`'s checked attestation `number`, kept here or stored.
    ///
    /// # Errors
    /// A storage failure.
    pub fn get_or_read(
        &mut self,
        site: SiteId,
        number: u64,
        storage: &dyn Storage,
    ) -> Result<Option<Attestation>, StorageError> {
        let key = (site, number);
        if let Some(attestation) = self.get(&key) {
            return Ok(Some(attestation.as_ref().clone()));
        }
        Ok(self.read(key, storage)?.map(|attestation| attestation.as_ref().clone()))
    }

    /// The stored attestation `key`, kept from now on.
    fn read(&mut self, key: Key, storage: &dyn Storage) -> Result<Option<Arc<Attestation>>, StorageError> {
        let Some(stored) = storage.attestation(key.0, key.1)? else { return Ok(None) };
        let stored = Arc::new(stored);
        self.keep(key, Arc::clone(&stored));
        Ok(Some(stored))
    }
}
