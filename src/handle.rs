//! [`StreamHandle`]: what an application holds to talk to one stream of a site. It keeps
//! working when the site passivates the stream's actor: a message finds the actor alive, or
//! the handle asks the site's router for the stream's next actor and sends it there. A
//! handle starts no actor until a message needs one: the first [`Emit`] to a stream the
//! site holds no event of goes to the router, which stores it without an actor.

use crate::id::StreamId;
use crate::router::{OpenStream, Router, WriteNew};
use crate::site::SiteError;
use crate::stream::{Emit, Entry, Gate, StreamActor};
use crate::view::Stream;
use actix::dev::ToEnvelope;
use actix::prelude::*;
use std::any::{Any, TypeId};
use std::sync::{Arc, Mutex, PoisonError};

/// A handle on one stream of a [`crate::Site`], from [`crate::Site::stream`]. Cheap to
/// clone; every clone shares the stream's current actor.
///
/// Send it the stream's messages ([`crate::Emit`], [`crate::Decide`], [`crate::GetView`],
/// [`crate::History`], [`crate::Subscribe`]) as you would an actix `Addr`. The stream's
/// actor starts on the first message that needs it; one that was idle may have stopped
/// (passivated) meanwhile: the handle then starts the stream's next actor through the
/// router, which loads the stream from its snapshot and the tail of its log, and the
/// message goes there. A message is never sent to an actor that is stopping, so none is
/// lost or answered twice. The first [`crate::Emit`] to a stream the site holds no event of
/// needs no actor: the router stores it, so writing once into each of many streams costs
/// no actor's start and stop.
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
    live: Arc<Mutex<Live<S>>>,
}

/// What the clones of a handle know of their stream's actor.
struct Live<S: Stream> {
    /// The stream's current actor, with its gate, once one was started for the handle.
    actor: Option<(Addr<StreamActor<S>>, Arc<Gate>)>,
    /// The stream held no event when the handle was made, and no write has gone through
    /// the handle since: its first `Emit` goes to the router.
    maybe_new: bool,
}

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
    /// A handle on `stream` of type `S` through `router`, which starts no actor yet;
    /// `maybe_new` when the site held no event of the stream.
    pub(crate) fn new(router: Addr<Router>, stream: StreamId, maybe_new: bool) -> Self {
        Self { stream, router, live: Arc::new(Mutex::new(Live { actor: None, maybe_new })) }
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
        M::Result: Send + 'static,
        StreamActor<S>: Handler<M>,
        <StreamActor<S> as Actor>::Context: ToEnvelope<StreamActor<S>, M>,
    {
        let msg = match self.write_new(msg).await? {
            Ok(written) => return Ok(written),
            Err(msg) => msg,
        };
        let (addr, entry) = self.enter().await?;
        let reply = addr.send(msg).await;
        drop(entry);
        Ok(reply?)
    }

    /// Sends the first [`Emit`] through the handle's clones to the router when the stream
    /// may be new (see [`WriteNew`]): the answer, or the message back for the actor.
    async fn write_new<M>(&self, msg: M) -> Result<Result<M::Result, M>, SiteError>
    where
        M: Message + 'static,
        M::Result: 'static,
    {
        if TypeId::of::<M>() != TypeId::of::<Emit<S>>() || !self.take_maybe_new() {
            return Ok(Err(msg));
        }
        // `M` is `Emit<S>`, whose result is what the router answers.
        Ok(match self.router.send(WriteNew::<S>(self.stream, cast(msg))).await? {
            Ok(written) => Ok(cast(written)),
            Err(emit) => Err(cast(emit)),
        })
    }

    /// Whether the stream may still be new to the site, now noted as no longer: the first
    /// write through any clone asks the router, later ones go to the actor.
    fn take_maybe_new(&self) -> bool {
        let mut live = self.live.lock().unwrap_or_else(PoisonError::into_inner);
        std::mem::take(&mut live.maybe_new) && live.actor.is_none()
    }

    /// The current actor with this message inside its gate: the cached one while its gate
    /// is open, else the one the router opens next, which the router lets the message into
    /// before it answers (so that no other passivation can come in between).
    async fn enter(&self) -> Result<(Addr<StreamActor<S>>, Entry), SiteError> {
        let cached = self.live.lock().unwrap_or_else(PoisonError::into_inner).actor.clone();
        if let Some(entry) = cached.as_ref().and_then(|(addr, gate)| Some((addr.clone(), gate.entry()?))) {
            return Ok(entry);
        }
        // None yet, or passivated: the router answers once the old actor has stopped (or stayed).
        let (addr, entry) = self.router.send(OpenStream::<S>::new(self.stream)).await??;
        self.live.lock().unwrap_or_else(PoisonError::into_inner).actor = Some((addr.clone(), Arc::clone(entry.gate())));
        Ok((addr, entry))
    }
}

/// `value`, whose type `U` is `T`: what a `TypeId` check allows without specialization.
fn cast<T: 'static, U: 'static>(value: U) -> T {
    let mut slot = Some(value);
    let taken = (&mut slot as &mut dyn Any).downcast_mut::<Option<T>>().and_then(Option::take);
    // The caller checked that the types are the same.
    taken.expect("a value cast to its own type")
}
