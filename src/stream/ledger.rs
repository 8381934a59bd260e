//! [`Ledger`]: the pure core of a stream actor. It stamps local writes, judges remote
//! events (new, a copy, or an error) and advances the stream's frontier, Lamport counter
//! and view.
//!
//! It reads nothing itself: lookups in the stored index come in as a closure, ids and time
//! as arguments.

use super::StreamError;
use crate::clock::VectorClock;
use crate::codec;
use crate::event::{Dependencies, Event, OrderKey};
use crate::id::{EventId, Lane, Seq, SiteId, StreamId};
use crate::limits;
use crate::storage::StorageError;
use crate::view::{Fold, Folded, Stream};

/// What a remote event is to this stream.
#[derive(Debug)]
pub enum Check<E> {
    /// Not seen before and deliverable: its decoded payload.
    New(E),
    /// A copy of an event already delivered: nothing to do.
    Duplicate,
}

/// A stream's frontier, Lamport counter and view at one site.
pub struct Ledger<S: Stream> {
    site: SiteId,
    stream: StreamId,
    frontier: VectorClock,
    lamport: u64,
    fold: Fold<S>,
}

impl<S: Stream> Ledger<S> {
    /// A ledger of `stream` at `site`, resuming from `frontier`, `lamport` and `fold`.
    pub fn new(site: SiteId, stream: StreamId, frontier: VectorClock, lamport: u64, fold: Fold<S>) -> Self {
        debug_assert!(frontier.iter().all(|(lane, _)| lane.stream == stream));
        Self { site, stream, frontier, lamport, fold }
    }

    /// This site's lane in the stream.
    pub fn own_lane(&self) -> Lane {
        Lane::new(self.site, self.stream)
    }

    /// Every lane's delivered seq.
    pub fn frontier(&self) -> &VectorClock {
        &self.frontier
    }

    /// The largest Lamport counter delivered.
    pub fn lamport(&self) -> u64 {
        self.lamport
    }

    /// The current view.
    pub fn view(&self) -> &S::View {
        self.fold.view()
    }

    /// The fold, for rewinds and replays.
    pub fn fold_mut(&mut self) -> &mut Fold<S> {
        &mut self.fold
    }

    /// What a write depending on everything delivered here depends on.
    pub fn dependencies(&self) -> Dependencies {
        Dependencies { clock: self.frontier.clone(), lamport: self.lamport }
    }

    /// The next local events, in order: the next seqs of this site's lane, each with a
    /// clock of the stream's frontier plus `extra` plus the events before it, and Lamport
    /// counters above everything they depend on. Changes nothing: [`Ledger::record`] them
    /// once they are written.
    ///
    /// # Errors
    /// [`StreamError::DependencyNotDelivered`] when `extra` names a lane of this stream
    /// beyond what it has delivered, [`StreamError::MalformedDependencies`],
    /// [`StreamError::TooManyLanes`] or [`StreamError::LamportOutOfRange`].
    pub fn stamp_all(
        &self,
        extra: &Dependencies,
        stamps: impl ExactSizeIterator<Item = (EventId, u64, Vec<u8>)>,
    ) -> Result<Vec<Event>, StreamError> {
        if !extra.clock.is_canonical() {
            return Err(StreamError::MalformedDependencies);
        }
        for (lane, seq) in extra.clock.iter().filter(|(lane, _)| lane.stream == self.stream) {
            if !self.frontier.covers(lane, seq) {
                return Err(StreamError::DependencyNotDelivered { lane, seq, delivered: self.frontier.get(lane) });
            }
        }
        let lane = self.own_lane();
        let mut clock = self.frontier.clone();
        clock.merge(&extra.clock); // own-stream lanes of `extra` are covered: own lane unchanged
        let lanes = clock.len() + usize::from(clock.get(lane) == Seq::ZERO);
        if lanes > limits::CLOCK_LANES_MAX {
            return Err(StreamError::TooManyLanes { lanes, max: limits::CLOCK_LANES_MAX });
        }
        let lamport = self.lamport.max(extra.lamport);
        let count = u64::try_from(stamps.len()).unwrap_or(u64::MAX);
        if lamport.saturating_add(count) > limits::LAMPORT_MAX {
            return Err(StreamError::LamportOutOfRange {
                event: EventId::from_u128(0),
                lamport,
                max: limits::LAMPORT_MAX,
            });
        }
        let mut events = Vec::with_capacity(stamps.len());
        // Each event depends on the one before it, so each gets the next counter.
        for (lamport, (id, timestamp_ms, payload)) in (lamport + 1..).zip(stamps) {
            debug_assert!(payload.len() <= limits::PAYLOAD_BYTES_MAX, "payloads are checked when encoded");
            let seq = clock.increment(lane);
            events.push(Event {
                id,
                lane,
                seq,
                clock: clock.clone(),
                lamport,
                timestamp_ms,
                stream_type: S::TYPE_NAME.to_owned(),
                payload,
            });
        }
        Ok(events)
    }

    /// Judges a remote event. `key_at` looks up the stored key of (lane, seq).
    ///
    /// # Errors
    /// A [`StreamError`] naming what is wrong: another stream or type, a malformed clock,
    /// a seq gap, a missing dependency, a Lamport counter not above its dependencies', an
    /// equivocation, or a payload that does not decode.
    pub fn check<F>(&self, event: &Event, key_at: F) -> Result<Check<S::Event>, StreamError>
    where
        F: Fn(Lane, Seq) -> Result<Option<OrderKey>, StorageError>,
    {
        self.check_shape(event)?;
        let delivered = self.frontier.get(event.lane);
        if event.seq <= delivered {
            let kept = key_at(event.lane, event.seq)?
                .ok_or_else(|| StorageError::Corrupt(format!("no index entry for {} seq {}", event.lane, event.seq)))?;
            if kept.id == event.id {
                return Ok(Check::Duplicate);
            }
            return Err(StreamError::Equivocation {
                lane: event.lane,
                seq: event.seq,
                kept: kept.id,
                rejected: event.id,
            });
        }
        if event.seq != delivered.next() {
            return Err(StreamError::SeqGap { lane: event.lane, expected: delivered.next(), got: event.seq });
        }
        for (lane, seq) in event.clock.iter().filter(|(lane, _)| lane.stream == self.stream) {
            // The event's own entry is itself; the dependency there is the seq before.
            let needed = if lane == event.lane { Seq(seq.0 - 1) } else { seq };
            if needed == Seq::ZERO {
                continue;
            }
            if !self.frontier.covers(lane, needed) {
                return Err(StreamError::DependencyMissing {
                    event: event.id,
                    lane,
                    needed,
                    delivered: self.frontier.get(lane),
                });
            }
            let dependency = key_at(lane, needed)?
                .ok_or_else(|| StorageError::Corrupt(format!("no index entry for {lane} seq {needed}")))?;
            if dependency.lamport >= event.lamport {
                return Err(StreamError::LamportNotAfterDependency {
                    event: event.id,
                    lamport: event.lamport,
                    dependency: dependency.id,
                    dependency_lamport: dependency.lamport,
                });
            }
        }
        Ok(Check::New(codec::decode(&event.payload).map_err(StreamError::Payload)?))
    }

    fn check_shape(&self, event: &Event) -> Result<(), StreamError> {
        if event.lane.stream != self.stream {
            return Err(StreamError::WrongStream { expected: self.stream, got: event.lane.stream });
        }
        if event.stream_type != S::TYPE_NAME {
            return Err(StreamError::WrongStreamType { expected: S::TYPE_NAME, got: event.stream_type.clone() });
        }
        if !event.clock_names_own_lane() || !event.clock.is_canonical() || event.clock.len() > limits::CLOCK_LANES_MAX {
            return Err(StreamError::MalformedClock {
                event: event.id,
                seq: event.seq,
                in_clock: event.clock.get(event.lane),
            });
        }
        if event.lamport > limits::LAMPORT_MAX {
            return Err(StreamError::LamportOutOfRange {
                event: event.id,
                lamport: event.lamport,
                max: limits::LAMPORT_MAX,
            });
        }
        Ok(())
    }

    /// Records a stamped or checked event: advances the frontier and the Lamport counter
    /// and folds it into the view. A [`Folded::Rewind`] asks the caller to replay the log.
    pub fn record(&mut self, event: &Event, payload: &S::Event) -> Folded {
        debug_assert_eq!(event.lane.stream, self.stream);
        assert_eq!(event.seq, self.frontier.get(event.lane).next(), "lane seq must be contiguous");
        self.frontier.set(event.lane, event.seq);
        self.lamport = self.lamport.max(event.lamport);
        self.fold.apply(event, payload)
    }
}
