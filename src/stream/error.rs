//! [`StreamError`]: why a stream actor refused a message.

use crate::codec::CodecError;
use crate::id::{EventId, Lane, Seq, StreamId};
use crate::storage::StorageError;

/// Why a stream actor refused a message. The actor keeps serving after every variant
/// except a [`StreamError::Storage`] failure under a write it had applied: from then on it
/// refuses every message with that error, and the stream must be reopened.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StreamError {
    /// The event belongs to another stream: route it there.
    #[error("event of stream {got} delivered to stream {expected}")]
    WrongStream {
        /// This actor's stream.
        expected: StreamId,
        /// The event's stream.
        got: StreamId,
    },
    /// An event of this site's own lane, from elsewhere: only this site writes its lane,
    /// so it is a forgery (or this site's id reused on another database). Refused for good.
    #[error("event {event} claims this site's own lane at seq {seq}: only this site writes it")]
    OwnLane {
        /// The event.
        event: EventId,
        /// The seq it claims.
        seq: Seq,
    },
    /// The event's id is not the hash of its content ([`crate::Event::content_id`]): it
    /// was altered on the way, or forged to take another event's place in canonical
    /// order. Refused for good.
    #[error("event {event} does not match its content (whose id is {content}): altered or forged")]
    IdMismatch {
        /// The id the event claims.
        event: EventId,
        /// The id its content has.
        content: EventId,
    },
    /// The event was written by another stream type.
    #[error("event of stream type {got:?} delivered to a stream of type {expected:?}")]
    WrongStreamType {
        /// This actor's type name.
        expected: &'static str,
        /// The event's type name.
        got: String,
    },
    /// The event's clock does not name its own lane at its seq (or holds zero entries, or
    /// too many lanes): it was not written by gundb.
    #[error("event {event} at seq {seq} has a malformed clock (its own lane at {in_clock})")]
    MalformedClock {
        /// The event.
        event: EventId,
        /// Its seq.
        seq: Seq,
        /// Its clock's entry for its own lane.
        in_clock: Seq,
    },
    /// The event skips ahead in its lane: deliver the events before it first.
    #[error("{lane} expects seq {expected}, got {got}")]
    SeqGap {
        /// The lane.
        lane: Lane,
        /// The next seq this stream can take.
        expected: Seq,
        /// The event's seq.
        got: Seq,
    },
    /// The event depends on a lane of this stream not yet delivered this far.
    #[error("event {event} depends on {lane} seq {needed}, delivered only to {delivered}")]
    DependencyMissing {
        /// The event.
        event: EventId,
        /// The lane it depends on.
        lane: Lane,
        /// How far it needs that lane.
        needed: Seq,
        /// How far that lane is delivered here.
        delivered: Seq,
    },
    /// A local write named a dependency this stream has not delivered.
    #[error("a write may only depend on what is delivered: {lane} seq {seq} (delivered: {delivered})")]
    DependencyNotDelivered {
        /// The lane named.
        lane: Lane,
        /// The seq named.
        seq: Seq,
        /// How far that lane is delivered here.
        delivered: Seq,
    },
    /// The event's Lamport counter is not exactly one more than the largest of what it
    /// depends on (its lane's previous event and what its clock names). Not written by
    /// gundb: refused for good.
    #[error("event {event} has lamport {lamport}; one more than its dependencies' largest is {expected}")]
    LamportNotNext {
        /// The event.
        event: EventId,
        /// Its Lamport counter.
        lamport: u64,
        /// The counter it must have.
        expected: u64,
    },
    /// Two different events claim one (lane, seq): the one delivered first is kept, the
    /// other is never applied.
    #[error("equivocation on {lane} at seq {seq}: kept {kept}, rejected {rejected}")]
    Equivocation {
        /// The lane.
        lane: Lane,
        /// The seq claimed twice.
        seq: Seq,
        /// The event kept.
        kept: EventId,
        /// The event rejected.
        rejected: EventId,
    },
    /// A payload to write does not encode, or is too large.
    #[error("payload: {0}")]
    Payload(CodecError),
    /// The view's `apply_event` panicked on an event. The panic is caught at the fold, so
    /// it fails this write only: the event is not stored, the stream rebuilds its view
    /// (which may be half-changed) from storage at its next message, and the site's other
    /// streams go on.
    #[error("apply_event panicked on event {event}: {message}")]
    ApplyPanicked {
        /// The event being folded.
        event: EventId,
        /// The panic's message.
        message: String,
    },
    /// A write names more lanes in its clock than [`crate::limits::CLOCK_LANES_MAX`].
    #[error("a write would carry {lanes} lanes in its clock, more than the limit of {max}")]
    TooManyLanes {
        /// Lanes the clock would hold.
        lanes: usize,
        /// The limit.
        max: usize,
    },
    /// A Lamport counter beyond [`crate::limits::LAMPORT_MAX`]: far past anything a real history
    /// reaches, and a way to overflow the counters of every later write.
    #[error("event {event} has lamport {lamport}, beyond the limit of {max}")]
    LamportOutOfRange {
        /// The event (nil for a local write's dependencies).
        event: EventId,
        /// Its Lamport counter.
        lamport: u64,
        /// The limit.
        max: u64,
    },
    /// Dependencies named by a write hold a zero entry (they were not made by gundb).
    #[error("dependencies must not hold zero entries")]
    MalformedDependencies,
    /// A `Decide` asked to write more events than [`crate::limits::DECIDE_EVENTS_MAX`].
    #[error("a decision wrote {count} events, more than the limit of {max}")]
    TooManyEvents {
        /// Events returned.
        count: usize,
        /// The limit.
        max: usize,
    },
    /// The stream already has [`crate::limits::SUBSCRIBERS_MAX`] subscribers.
    #[error("too many subscribers (at most {max})")]
    TooManySubscribers {
        /// The limit.
        max: usize,
    },
    /// Storage failed.
    #[error("storage: {0}")]
    Storage(#[from] StorageError),
    /// Not stored: another event of the same delivered batch could not be folded
    /// ([`StreamError::ApplyPanicked`]), so none of it was written. The stream rebuilds
    /// itself: send it again.
    #[error("not stored: event {culprit} of the same batch could not be folded; send it again")]
    Interrupted {
        /// The event whose fold failed.
        culprit: EventId,
    },
}

impl From<crate::view::FoldError> for StreamError {
    fn from(error: crate::view::FoldError) -> Self {
        let crate::view::FoldError::Panicked { event, message } = error;
        StreamError::ApplyPanicked { event, message }
    }
}
