//! [`Error`]: the top-level error, wrapping each boundary's own enum, and [`Cause`]: the
//! error of a library gundb uses (sled, bincode, the operating system), kept whole inside
//! gundb's own.

use crate::attest::AttestError;
use crate::codec::CodecError;
use crate::doc::PatchError;
#[cfg(feature = "http")]
use crate::http::ApiError;
use crate::keys::KeyError;
use crate::node::tcp::TcpError;
use crate::order::OrderError;
use crate::router::RouterError;
use crate::site::SiteError;
use crate::storage::StorageError;
use crate::stream::{DecideError, StreamError};
use crate::subscription::SubscribeError;
use crate::view::FoldError;
use std::fmt;
use std::sync::Arc;

/// Any gundb error: every public error converts into it, so `?` works from any call into
/// a function returning `Result<_, gundb::Error>`. Boundaries return their own enums; this
/// one is for callers that only want to pass them on or report them.
///
/// # Examples
/// ```
/// use gundb::{Decide, Emit, GetView, Site, StreamId};
/// use gundb::doc::{Document, Patch};
///
/// async fn rename(site: &Site, name: &str) -> Result<u64, gundb::Error> {
///     let doc = site.stream::<Document>(StreamId::named("profile")).await?;
///     doc.send(Emit::new(Patch::from_value(serde_json::json!({ "name": name }))?)).await??;
///     let decided = doc.send(Decide::new(|_| Err::<Vec<Patch>, _>("nothing to decide"))).await?;
///     assert!(decided.is_err());
///     Ok(doc.send(GetView::new()).await??.frontier.len() as u64)
/// }
///
/// # fn main() -> Result<(), gundb::Error> {
/// actix::System::new().block_on(async {
///     let site = Site::temporary()?;
///     assert_eq!(rename(&site, "Ada").await?, 1);
///     Ok(())
/// })
/// # }
/// ```
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
    /// A site refused an operation.
    #[error(transparent)]
    Site(#[from] SiteError),
    /// A site's router refused a request.
    #[error(transparent)]
    Router(#[from] RouterError),
    /// A site's keys could not be read or made.
    #[error(transparent)]
    Key(#[from] KeyError),
    /// An attestation was refused.
    #[error(transparent)]
    Attest(#[from] AttestError),
    /// JSON that is not a document patch.
    #[error(transparent)]
    Patch(#[from] PatchError),
    /// A view could not fold an event.
    #[error(transparent)]
    Fold(#[from] FoldError),
    /// A TCP link was refused or lost.
    #[error(transparent)]
    Tcp(#[from] TcpError),
    /// An HTTP request failed.
    #[cfg(feature = "http")]
    #[error(transparent)]
    Api(#[from] ApiError),
    /// A [`crate::Decide`] closure said no: its reason.
    #[error("decision rejected: {0}")]
    Rejected(Box<dyn std::error::Error + Send + Sync>),
}

impl<E> From<DecideError<E>> for Error
where
    E: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    fn from(error: DecideError<E>) -> Self {
        match error {
            DecideError::Rejected(reason) => Error::Rejected(reason.into()),
            DecideError::Stream(error) => Error::Stream(error),
        }
    }
}

/// The error of a library gundb uses (sled, bincode, the operating system, Noise), kept
/// whole inside one of gundb's: [`std::error::Error::source`] reaches it, and
/// [`Cause::get`] can be downcast to its type. Cheap to clone, so that one failure can fail
/// every request it touched; two are equal when they say the same.
#[derive(Clone)]
pub struct Cause(Arc<dyn std::error::Error + Send + Sync + 'static>);

impl Cause {
    /// Keeps `error`.
    pub fn new(error: impl std::error::Error + Send + Sync + 'static) -> Self {
        Self(Arc::new(error))
    }

    /// The error itself, for example to downcast it:
    /// `cause.get().downcast_ref::<std::io::Error>()`.
    pub fn get(&self) -> &(dyn std::error::Error + Send + Sync + 'static) {
        self.0.as_ref()
    }
}

impl fmt::Display for Cause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

impl fmt::Debug for Cause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0, f)
    }
}

impl PartialEq for Cause {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0) || self.0.to_string() == other.0.to_string()
    }
}

impl Eq for Cause {}

impl std::error::Error for Cause {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.0.source()
    }
}
