//! [`Error`]: the top-level error, wrapping each boundary's own enum.

use crate::codec::CodecError;
use crate::order::OrderError;
use crate::storage::StorageError;
use crate::stream::StreamError;
use crate::subscription::SubscribeError;

/// Any gundb error. Boundaries return their own enums; this one is for callers that only
/// want to report them.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Encoding or decoding failed.
    #[error(transparent)]
    Codec(#[from] CodecError),
    /// Storage failed.
    #[error(transparent)]
    Storage(#[from] StorageError),
    /// A set of events has no canonical order.
    #[error(transparent)]
    Order(#[from] OrderError),
    /// A stream actor refused a message.
    #[error(transparent)]
    Stream(#[from] StreamError),
    /// A site-wide subscription could not start or ended.
    #[error(transparent)]
    Subscribe(#[from] SubscribeError),
    /// The actor did not answer (it stopped, or its mailbox closed).
    #[error("actor mailbox: {0}")]
    Mailbox(#[from] actix::MailboxError),
}
