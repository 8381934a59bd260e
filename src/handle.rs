//! [`StreamHandle`]: what an application holds to talk to one stream of a site. It keeps
//! working when the site passivates the stream's actor: a message finds the actor alive, or
//! the handle asks the site's router for the stream's next actor and sends it there.

use crate::id::StreamId;
use crate::router::{OpenStream, Router};
use crate::site::SiteError;
use crate::stream::{Entry, Gate, StreamActor};
use crate::view::Stream;
use actix::dev::ToEnvelope;
use actix::prelude::*;
use std::sync::{Arc, Mutex, PoisonError};

/// A handle on one stream of a [`crate::Site`], from [`crate::Site::stream`]. Cheap to
/// clone; every clone shares the stream's current actor.
///
/// Send it the stream's messages ([`crate::Emit`], [`crate::Decide`], [`crate::GetView`],
/// [`crate::History`], [`crate::Subscribe`]) as you would an actix `Addr`. An actor that
/// was idle may have stopped (passivated) meanwhile: the handle then starts the stream's
/// next actor through the router, which loads the stream from its snapshot and the tail of
/// its log, and the message goes there. A message is never sent to an actor that is
/// stopping, so none is lost or answered twice.
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
///     const TYPE_NAME: &'static str = "doc.handle.counter";
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
///     Ok(())
/// })
/// # }
/// ```
pub struct StreamHandle<S: Stream> {
    stream: StreamId,
    router: Addr<Router>,
    live: Arc<Mutex<Current<S>>>,
}

/// The stream's current actor, with its gate.
type Current<S> = (Addr<StreamActor<S>>, Arc<Gate>);

impl<S: Stream> Clone for StreamHandle<S> {
    fn clone(&self) -> Self {
        Self { stream: self.stream, router: self.router.clone(), live: Arc::clone(&self.live) }
    }
}

impl<S: Stream> std::fmt::Debug for StreamHandle<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StreamHandle").field("stream", &self.stream).field("type", &S::TYPE_NAME).finish()
    }
}

impl<S: Stream> StreamHandle<S> {
    /// Opens `stream` of type `S` through `router`.
    pub(crate) async fn open(router: Addr<Router>, stream: StreamId) -> Result<Self, SiteError> {
        let (addr, entry) = router.send(OpenStream::<S>::new(stream)).await??;
        let live = Arc::new(Mutex::new((addr, Arc::clone(entry.gate()))));
        Ok(Self { stream, router, live })
    }

    /// The stream this handle is for.
    pub fn id(&self) -> StreamId {
        self.stream
    }

    /// Sends `msg` to the stream's actor and waits for the reply, starting the actor again
    /// first if it was passivated.
    ///
    /// # Errors
    /// The site's router is gone or could not start the stream's actor again (for example
    /// after a storage failure), or the actor stopped before it answered.
    pub async fn send<M>(&self, msg: M) -> Result<M::Result, SiteError>
    where
        M: Message + Send + 'static,
        M::Result: Send,
        StreamActor<S>: Handler<M>,
        <StreamActor<S> as Actor>::Context: ToEnvelope<StreamActor<S>, M>,
    {
        let (addr, entry) = self.enter().await?;
        let reply = addr.send(msg).await;
        drop(entry);
        Ok(reply?)
    }

    /// The current actor with this message inside its gate: the cached one while its gate
    /// is open, else the one the router opens next, which the router lets the message into
    /// before it answers (so that no other passivation can come in between).
    async fn enter(&self) -> Result<(Addr<StreamActor<S>>, Entry), SiteError> {
        let (addr, gate) = self.live.lock().unwrap_or_else(PoisonError::into_inner).clone();
        if let Some(entry) = gate.entry() {
            return Ok((addr, entry));
        }
        // Passivated: the router answers once the old actor has stopped (or stayed).
        let (addr, entry) = self.router.send(OpenStream::<S>::new(self.stream)).await??;
        *self.live.lock().unwrap_or_else(PoisonError::into_inner) = (addr.clone(), Arc::clone(entry.gate()));
        Ok((addr, entry))
    }
}
