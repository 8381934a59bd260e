//! [`Site`]: one replica. It owns its storage (one sled database, with a persistent site
//! id), its router and, through the router, its stream actors.
//!
//! A thin handle: every operation is a message to the router actor, so a `Site` must be
//! opened inside a running actix `System`, and clones of it share one router.

use crate::attest::Attestation;
use crate::clock::VectorClock;
use crate::event::Event;
use crate::handle::StreamHandle;
use crate::heal::Healer;
use crate::id::{LogPos, SiteId, StreamId};
use crate::node::links::Links;
use crate::router::{
    Equivocation, GetEquivocations, GetFrontier, GetHeldBack, GetMetrics, HeldBack, Passivation, PendingLimits,
    Receive, Register, Router, RouterError, RouterMetrics, WaitFor,
};
use crate::storage::{SledConfig, SledStorage, Storage, StorageError};
use crate::stream::StreamConfig;
use crate::subscription::{Filter, SubscribeError, Subscription};
use crate::view::Stream;
use actix::{Actor, Addr, MailboxError};
use std::collections::HashSet;
use std::path::Path;
use std::sync::{Arc, Mutex, PoisonError};

/// Why a site operation failed.
#[derive(Debug, thiserror::Error)]
pub enum SiteError {
    /// Storage failed (opening the database, or reading it).
    #[error(transparent)]
    Storage(#[from] StorageError),
    /// The router refused.
    #[error(transparent)]
    Router(#[from] RouterError),
    /// The router did not answer: the site's actix system is stopping.
    #[error("router mailbox: {0}")]
    Mailbox(#[from] MailboxError),
}

/// Settings of a site.
#[derive(Debug, Clone, Default)]
pub struct SiteConfig {
    /// The router's buffer bounds.
    pub pending: PendingLimits,
    /// Settings of every stream actor the site starts.
    pub stream: StreamConfig,
    /// When stream actors stop: how many may be alive, and after how long idle.
    pub passivation: Passivation,
}

/// One replica of the data: storage, router and stream actors.
///
/// # Examples
/// ```
/// use gundb::{Emit, EventMeta, GetView, Site, Stream, StreamId, View};
/// use serde::{Deserialize, Serialize};
///
/// #[derive(Clone, Default, Serialize, Deserialize)]
/// struct Count(u64);
/// impl View<u64> for Count {
///     fn apply_event(&mut self, n: &u64, _: &EventMeta<'_>) { self.0 += n }
/// }
/// struct Counter;
/// impl Stream for Counter {
///     const TYPE_NAME: &'static str = "doc.site.counter";
///     type Event = u64;
///     type View = Count;
/// }
///
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// actix::System::new().block_on(async {
///     let site = Site::temporary()?;
///     let counter = site.stream::<Counter>(StreamId::random()).await?;
///     counter.send(Emit::new(2)).await??;
///     assert_eq!(counter.send(GetView::new()).await??.view.0, 2);
///     assert_eq!(site.frontier().await?.len(), 1, "one lane: this site's, of that stream");
///     Ok(())
/// })
/// # }
/// ```
#[derive(Clone)]
pub struct Site {
    id: SiteId,
    storage: Arc<dyn Storage>,
    router: Addr<Router>,
    /// Reopens the storage after a failure, with backoff; kept so it lives as the site does.
    _healer: Addr<Healer>,
    links: Links,
    /// Shared by every clone: the last one dropped closes the storage.
    _closer: Arc<CloseOnDrop>,
    /// Stream types registered through `stream`, so each is registered once.
    registered: Arc<Mutex<HashSet<&'static str>>>,
}

/// Closes a site's storage when the last handle to the site is dropped, as
/// [`Site::close`] does: the database is released on the spot.
struct CloseOnDrop(Arc<dyn Storage>);

impl Drop for CloseOnDrop {
    fn drop(&mut self) {
        self.0.close();
    }
}

impl Site {
    /// Opens (or creates) the site whose database is in `path`.
    ///
    /// # Errors
    /// The database cannot be opened or read.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, SiteError> {
        Self::with_storage(Arc::new(SledStorage::with_config(SledConfig::at(path.as_ref()))?), SiteConfig::default())
    }

    /// A site on a temporary database, deleted when the site's last actor stops.
    ///
    /// # Errors
    /// The database cannot be created.
    pub fn temporary() -> Result<Self, SiteError> {
        Self::with_storage(Arc::new(SledStorage::temporary()?), SiteConfig::default())
    }

    /// A site over `storage`.
    ///
    /// # Errors
    /// Storage cannot be read.
    pub fn with_storage(storage: Arc<dyn Storage>, config: SiteConfig) -> Result<Self, SiteError> {
        let router = Router::new(Arc::clone(&storage), config.pending, config.stream, config.passivation).start();
        let healer = Healer::new(Arc::clone(&storage)).start();
        let closer = Arc::new(CloseOnDrop(Arc::clone(&storage)));
        Ok(Self {
            id: storage.site_id(),
            storage,
            router,
            _healer: healer,
            links: Links::default(),
            _closer: closer,
            registered: Arc::default(),
        })
    }

    /// Closes the site: what its streams queued is written and acknowledged, then the
    /// database is released, so the folder can be opened again at once (in this process
    /// or another) even while handles to this site or its streams remain. Every later call
    /// through them fails with [`crate::storage::StorageError::Closed`]. Dropping the last
    /// clone of a `Site` (the nodes connected with it and the HTTP routes hold clones too)
    /// closes it the same way, on the dropping thread.
    ///
    /// ```
    /// # actix::System::new().block_on(async {
    /// use gundb::Site;
    /// let folder = tempfile::tempdir().unwrap();
    /// let site = Site::open(folder.path()).unwrap();
    /// site.close().await;
    /// let again = Site::open(folder.path()).unwrap(); // no lock left behind
    /// assert_eq!(again.id(), site.id());
    /// # });
    /// ```
    pub async fn close(&self) {
        let storage = Arc::clone(&self.storage);
        // The writer is joined: off the actors' thread. A closing task that panicked
        // closed nothing more than it could.
        let _ = tokio::task::spawn_blocking(move || storage.close()).await;
    }

    /// This site's id.
    pub fn id(&self) -> SiteId {
        self.id
    }

    /// The site's storage.
    pub fn storage(&self) -> &Arc<dyn Storage> {
        &self.storage
    }

    /// Registers stream type `S`: events of it arriving from other sites are folded into
    /// views from now on (they are stored and forwarded either way).
    ///
    /// # Errors
    /// The router is gone.
    pub async fn register<S: Stream>(&self) -> Result<(), SiteError> {
        Ok(self.router.send(Register::of::<S>()).await?)
    }

    /// A handle on stream `stream` of type `S`, whose actor starts on first use (and `S`
    /// is registered). The handle keeps working when the site stops the actor for being
    /// idle: the next message starts it again.
    ///
    /// # Errors
    /// The stream is stored with another type, or storage cannot be read.
    pub async fn stream<S: Stream>(&self, stream: StreamId) -> Result<StreamHandle<S>, SiteError> {
        let stored = self.storage.stream_type(stream)?;
        if let Some(stored) = stored.as_ref().filter(|stored| *stored != S::TYPE_NAME) {
            return Err(RouterError::TypeMismatch { stream, stored: stored.clone(), requested: S::TYPE_NAME }.into());
        }
        if self.registered.lock().unwrap_or_else(PoisonError::into_inner).insert(S::TYPE_NAME) {
            // Queued ahead of anything the handle sends, so no round trip to wait for.
            self.router.do_send(Register::of::<S>());
        }
        Ok(StreamHandle::new(self.router.clone(), stream, stored.is_none()))
    }

    /// Every event this site holds that `filter` lets pass, in the order the site made
    /// them durable: first those after position `after` (`LogPos(0)`: from the start),
    /// then each new one once it is durable, local writes and replicated events alike.
    /// Each comes with its position: store it as the consumer's checkpoint and pass it
    /// back here to resume exactly after it, also after a restart of either side.
    /// Positions are local to this site (another site holds the same events at other
    /// positions). A slow consumer holds the reading back: at most
    /// [`crate::limits::SUBSCRIPTION_PAGES_AHEAD`] pages wait for it.
    ///
    /// # Errors
    /// `after` is past the end of this site's log (a checkpoint another site gave).
    ///
    /// # Examples
    /// ```
    /// use gundb::subscription::Filter;
    /// use gundb::{Emit, EventMeta, LogPos, Site, Stream, StreamId, View};
    /// use serde::{Deserialize, Serialize};
    ///
    /// #[derive(Clone, Default, Serialize, Deserialize)]
    /// struct Count(u64);
    /// impl View<u64> for Count {
    ///     fn apply_event(&mut self, n: &u64, _: &EventMeta<'_>) { self.0 += n }
    /// }
    /// struct Counter;
    /// impl Stream for Counter {
    ///     const TYPE_NAME: &'static str = "doc.subscribe_all.counter";
    ///     type Event = u64;
    ///     type View = Count;
    /// }
    ///
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// actix::System::new().block_on(async {
    ///     let site = Site::temporary()?;
    ///     for n in 1..=3 {
    ///         site.stream::<Counter>(StreamId::random()).await?.send(Emit::new(n)).await??;
    ///     }
    ///     let mut all = site.subscribe_all(Filter::of_type::<Counter>(), LogPos(0))?;
    ///     let mut checkpoint = LogPos(0);
    ///     for n in 1..=3u64 {
    ///         let item = all.next().await.expect("three events are stored")?;
    ///         assert_eq!(gundb::codec::decode::<u64>(&item.event.payload)?, n);
    ///         checkpoint = item.position;
    ///     }
    ///     // Resuming from the checkpoint gives what follows it, once it is durable.
    ///     let mut rest = site.subscribe_all(Filter::All, checkpoint)?;
    ///     site.stream::<Counter>(StreamId::random()).await?.send(Emit::new(4)).await??;
    ///     assert_eq!(rest.next().await.expect("a fourth event")?.position, LogPos(checkpoint.0 + 1));
    ///     Ok(())
    /// })
    /// # }
    /// ```
    pub fn subscribe_all(&self, filter: Filter, after: LogPos) -> Result<Subscription, SubscribeError> {
        Subscription::start(Arc::clone(&self.storage), filter, after)
    }

    /// Everything stored at this site: every lane of every stream, at its seq, read from
    /// storage (it takes time in proportion to the lanes stored).
    ///
    /// # Errors
    /// The router is gone, or storage could not be read.
    pub async fn frontier(&self) -> Result<VectorClock, SiteError> {
        Ok(self.router.send(GetFrontier).await??)
    }

    /// Resolves once everything in `clock` is durable here (for example another site's
    /// frontier, to read one's writes there). Waits for ever if that never happens: put
    /// a timeout around it where the clock's events may not come.
    ///
    /// # Errors
    /// The router is gone.
    pub async fn wait_for(&self, clock: &VectorClock) -> Result<(), SiteError> {
        Ok(self.router.send(WaitFor(clock.clone())).await??)
    }

    /// The latest events the router held back, and what each waited for.
    ///
    /// # Errors
    /// The router is gone.
    pub async fn held_back(&self) -> Result<Vec<HeldBack>, SiteError> {
        Ok(self.router.send(GetHeldBack).await?)
    }

    /// The proofs of equivocation found here: two different events their site signed
    /// for one (lane, seq), each with the attestation that covers it, checkable by anyone
    /// ([`Equivocation::verify`]). The first to arrive is kept, the other refused. Only
    /// the first proof against each site is kept, up to [`crate::limits::JOURNAL_MAX`]
    /// proofs; every equivocation is counted in [`RouterMetrics::equivocations`].
    ///
    /// # Errors
    /// The router is gone.
    pub async fn equivocations(&self) -> Result<Vec<Equivocation>, SiteError> {
        Ok(self.router.send(GetEquivocations).await?)
    }

    /// The router's counters.
    ///
    /// # Errors
    /// The router is gone.
    pub async fn metrics(&self) -> Result<RouterMetrics, SiteError> {
        Ok(self.router.send(GetMetrics).await?)
    }

    /// Takes events from other sites, with the attestations that cover them (their
    /// sites' signatures, [`crate::attest`]): each event an attestation of its lane's site
    /// vouches for is delivered once everything it depends on is, whatever order they come
    /// in; the others are refused and counted ([`RouterMetrics::unattested`]).
    ///
    /// # Errors
    /// The router is gone.
    pub async fn receive(&self, events: Vec<Event>, attestations: Vec<Attestation>) -> Result<(), SiteError> {
        Ok(self.router.send(Receive { events, attestations, verified: None }).await?)
    }

    /// The peers with a live direct link to this site.
    pub fn links(&self) -> &Links {
        &self.links
    }

    /// The router's address, for nodes that feed it.
    pub fn router(&self) -> &Addr<Router> {
        &self.router
    }
}

impl std::fmt::Debug for Site {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Site").field("id", &self.id).finish_non_exhaustive()
    }
}
