//! [`Equivocations`]: the proofs that sites equivocate, which a router keeps to report.
//!
//! A site that signs two different events for one (lane, seq) tells different sites
//! different histories. Each site keeps the event that reached it first and refuses the
//! other; the two, with the attestations that cover them, are an
//! [`Equivocation`] anyone can check. One proof is enough to show a site faulty, and
//! keeping only the first against each site means a site that equivocates without end
//! cannot flush out the proofs against others: at most [`limits::JOURNAL_MAX`] proofs and
//! [`limits::EQUIVOCATION_BYTES_MAX`] bytes are kept, the first found, and every
//! equivocation is counted whether or not its proof is kept.
//!
//! Most are found by the router itself, with the refused event in hand and the kept one
//! held or stored. One way is not: a copy of an event whose slot was delivered to its
//! stream but is not stored yet goes to the stream, which alone knows what it has in
//! flight. Those copies are remembered here (at most [`limits::JOURNAL_MAX`] of them and
//! [`limits::EQUIVOCATION_BYTES_MAX`] bytes) until the stream judges them, so that a refusal as equivocation still has the refused event.

use super::attested::Attested;
use crate::attest::{Equivocation, SignedEvent};
use crate::event::Event;
use crate::id::{Lane, Seq, SiteId};
use crate::limits;
use crate::storage::{Storage, StorageError};
use std::collections::HashMap;

/// Why a proof could not be made.
#[derive(Debug, thiserror::Error)]
pub(crate) enum Unproven {
    /// Reading the kept event or an attestation failed.
    #[error(transparent)]
    Storage(#[from] StorageError),
    /// The kept event or an attestation is not where it should be.
    #[error("{0} is missing")]
    Missing(&'static str),
}

/// The proofs kept and the copies a stream is judging.
#[derive(Default)]
pub(crate) struct Equivocations {
    /// The first proof against each site, in the order found.
    proofs: Vec<Equivocation>,
    /// Bytes of `proofs`.
    bytes: usize,
    /// Copies of events at delivered but unstored slots, sent to their stream to judge.
    judged: HashMap<(Lane, Seq), Event>,
    /// Bytes of `judged`.
    judged_bytes: usize,
}

impl Equivocations {
    /// The proofs kept.
    pub fn proofs(&self) -> &[Equivocation] {
        &self.proofs
    }

    /// True when a proof against `site` is kept, or there is no room for one.
    pub fn needs_no_proof(&self, site: SiteId) -> bool {
        self.proofs.len() >= limits::JOURNAL_MAX
            || self.bytes >= limits::EQUIVOCATION_BYTES_MAX
            || self.proofs.iter().any(|proof| proof.site() == site)
    }

    /// Remembers a copy of `event` while its stream judges it.
    pub fn judging(&mut self, event: &Event) {
        if self.needs_no_proof(event.lane.site) {
            return;
        }
        if self.judged.len() >= limits::JOURNAL_MAX || self.judged_bytes >= limits::EQUIVOCATION_BYTES_MAX {
            // Copies the stream took for its own are never claimed back: start afresh
            // rather than grow.
            self.judged.clear();
            self.judged_bytes = 0;
        }
        self.judged_bytes += event.size();
        if let Some(replaced) = self.judged.insert((event.lane, event.seq), event.clone()) {
            self.judged_bytes -= replaced.size();
        }
    }

    /// The copy at (`lane`, `seq`) the stream judged, if one was remembered.
    pub fn judged(&mut self, lane: Lane, seq: Seq) -> Option<Event> {
        let judged = self.judged.remove(&(lane, seq))?;
        self.judged_bytes -= judged.size();
        Some(judged)
    }

    /// Makes and keeps the proof that `rejected`'s site equivocates, with `kept` (the
    /// event held here, or `None` when it is stored) at the same (lane, seq). For a site
    /// that [`Equivocations::needs_no_proof`] says needs one.
    ///
    /// # Errors
    /// [`Unproven`] when the kept event or an attestation cannot be read.
    pub fn prove(
        &mut self,
        kept: Option<Event>,
        rejected: Event,
        attested: &mut Attested,
        storage: &dyn Storage,
    ) -> Result<(), Unproven> {
        let (lane, seq) = (rejected.lane, rejected.seq);
        debug_assert!(!self.needs_no_proof(lane.site), "the caller asks first");
        let kept = match kept {
            Some(kept) => kept,
            None => {
                let stored = storage.lane_events(lane, Seq(seq.0 - 1), 1)?.into_iter().next();
                stored.filter(|event| event.seq == seq).ok_or(Unproven::Missing("the kept event"))?
            }
        };
        let mut signed = |event: Event| -> Result<SignedEvent, Unproven> {
            let attestation = attested.get_or_read(lane.site, event.attestation, storage)?;
            let attestation = attestation.ok_or(Unproven::Missing("an attestation"))?;
            Ok(SignedEvent { event, attestation })
        };
        let proof = Equivocation { kept: signed(kept)?, rejected: signed(rejected)? };
        self.bytes += proof.size();
        self.proofs.push(proof);
        Ok(())
    }
}
