//! [`Healer`]: a site's storage that failed is reopened by the site itself, with backoff,
//! so that a fault that can pass (a full disk that was cleared, an I/O error) does not stop
//! the site for good. A storage failure refuses every read and write (what sled holds in
//! memory may be ahead of the disk); reopening drops the failed database and serves what
//! is durable. Stream actors that failed rebuild themselves from storage at their next
//! message ([`crate::StreamActor`]), the router and the nodes retry what was refused.

use crate::limits;
use crate::storage::Storage;
use actix::prelude::*;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Reopens a failed storage with backoff (see the module documentation).
pub(crate) struct Healer {
    storage: Arc<dyn Storage>,
    /// The pause before the next attempt.
    delay: Duration,
    /// When the next attempt is due, once a failure was seen.
    due: Option<Instant>,
    /// An attempt is running (on a blocking thread: reopening joins the writer).
    reopening: bool,
    /// When the storage was last reopened.
    healed_at: Option<Instant>,
}

impl Healer {
    pub(crate) fn new(storage: Arc<dyn Storage>) -> Self {
        Self { storage, delay: limits::HEAL_RETRY_FIRST, due: None, reopening: false, healed_at: None }
    }

    fn check(&mut self, ctx: &mut Context<Self>) {
        if self.reopening {
            return;
        }
        let now = Instant::now();
        let Some(failure) = self.storage.stats().failure else {
            if self.healed_at.is_some_and(|at| now.duration_since(at) >= limits::HEAL_QUIET) {
                (self.delay, self.healed_at) = (limits::HEAL_RETRY_FIRST, None);
            }
            return;
        };
        let due = *self.due.get_or_insert(now + self.delay);
        if now < due {
            return;
        }
        tracing::info!(%failure, "reopening the failed storage");
        self.reopening = true;
        let storage = Arc::clone(&self.storage);
        let reopen = tokio::task::spawn_blocking(move || storage.reopen());
        ctx.spawn(fut::wrap_future::<_, Self>(reopen).map(|outcome, healer, _| {
            healer.reopening = false;
            healer.due = None;
            // Whether it worked or not, the next attempt (a failure soon after a reopen
            // included) waits longer.
            healer.delay = (healer.delay * 2).min(limits::HEAL_RETRY_MAX);
            match outcome {
                Ok(Ok(())) => healer.healed_at = Some(Instant::now()),
                Ok(Err(error)) => {
                    tracing::warn!(%error, retry_in = ?healer.delay, "reopening the failed storage failed");
                }
                Err(error) => tracing::error!(%error, retry_in = ?healer.delay, "reopening the storage panicked"),
            }
        }));
    }
}

impl Actor for Healer {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.run_interval(limits::HEAL_CHECK_EVERY, Self::check);
    }
}
