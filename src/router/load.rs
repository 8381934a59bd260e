//! Loading the site frontier from storage once the router has started, a page of streams
//! per turn, so that opening a site takes the same time whatever the number of streams it
//! stores: local reads and writes are served at once, while requests that need the whole
//! frontier (a peer's events, the frontier itself) wait until it is loaded.

use super::Router;
use crate::id::StreamId;
use crate::limits;
use actix::prelude::*;
use std::time::Duration;
use tokio::sync::oneshot;

/// How far the load has come, and who waits for its end.
#[derive(Default)]
pub(super) struct Loading {
    /// The last stream loaded; `None` before the first page.
    after: Option<StreamId>,
    waiters: Vec<oneshot::Sender<()>>,
}

/// Loads the next page of the frontier.
pub(super) struct LoadFrontier;

impl Message for LoadFrontier {
    type Result = ();
}

impl Handler<LoadFrontier> for Router {
    type Result = ();

    fn handle(&mut self, _msg: LoadFrontier, ctx: &mut Context<Self>) {
        self.load_page(ctx);
    }
}

impl Router {
    /// Resolves once the frontier is loaded (at once if it is).
    pub(super) fn when_loaded(&mut self) -> oneshot::Receiver<()> {
        let (waiter, loaded) = oneshot::channel();
        match &mut self.loading {
            Some(loading) => loading.waiters.push(waiter),
            None => drop(waiter.send(())),
        }
        loaded
    }

    /// Loads `stream`'s stored lanes now, ahead of the page that holds it: what a stream's
    /// durability notice needs while the load is under way.
    pub(super) fn load_stream(&mut self, stream: StreamId) {
        if self.loading.is_none() {
            return;
        }
        match self.storage.frontier(stream) {
            Ok(frontier) => frontier.iter().for_each(|(lane, seq)| self.pending.load(lane, seq)),
            Err(error) => tracing::warn!(%stream, %error, "reading a stream's frontier failed"),
        }
    }

    /// Loads one page of streams' frontiers; asks for the next page, or wakes what waited.
    fn load_page(&mut self, ctx: &mut Context<Self>) {
        let Some(loading) = &self.loading else { return };
        let page = match self.storage.streams_page(loading.after, limits::LOAD_PAGE_STREAMS) {
            Ok(page) => page,
            Err(error) => return self.retry_load(&error, ctx),
        };
        for (stream, _) in &page {
            match self.storage.frontier(*stream) {
                Ok(frontier) => frontier.iter().for_each(|(lane, seq)| self.pending.load(lane, seq)),
                Err(error) => return self.retry_load(&error, ctx),
            }
            if let Some(loading) = &mut self.loading {
                loading.after = Some(*stream);
            }
        }
        if page.len() == limits::LOAD_PAGE_STREAMS {
            // A timer, not `notify`: actix runs notified messages before its mailbox, and a
            // timer lets the mailbox (local reads and writes) be served between pages.
            ctx.run_later(Duration::ZERO, |router, ctx| router.load_page(ctx));
            return;
        }
        for waiter in self.loading.take().map(|loading| loading.waiters).unwrap_or_default() {
            let _ = waiter.send(()); // a requester that went away needs no answer
        }
        self.advanced = true;
        self.release(ctx);
    }

    /// Storage failed under the load: logged, and tried again in a second, so the site
    /// heals if the fault passes and says why it does not replicate if it lasts.
    fn retry_load(&mut self, error: &crate::storage::StorageError, ctx: &mut Context<Self>) {
        tracing::error!(%error, "loading the site frontier failed; retrying in 1 s");
        ctx.run_later(Duration::from_secs(1), |router, ctx| router.load_page(ctx));
    }
}
