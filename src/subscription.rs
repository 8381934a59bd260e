//! Site-wide subscriptions ([`Site::subscribe_all`]): every event a site holds that
//! matches a [`Filter`], in the order the site made them durable, from a checkpoint, then
//! live. The feed of read models that span streams.
//!
//! A site numbers every event it stores, its own and its peers', in one durable order:
//! the event's *position* in the site's log ([`LogPos`]). Positions only grow, never go
//! back and are the same after a restart, so a consumer that stores the position of the
//! last event it handled resumes exactly after it. They are local to one site: another
//! site holds the same events at other positions, so a checkpoint is valid only against
//! the site that gave it.
//!
//! A subscription reads the log a page at a time on a blocking thread, only what is
//! durable, and hands pages to the consumer through a channel of
//! [`limits::SUBSCRIPTION_PAGES_AHEAD`] pages: a slow consumer holds the reading back
//! rather than have it buffer without bound (it holds at most those pages, the one waiting
//! to be sent and the one the consumer is taking). At the end of the log it waits for the
//! storage to say the log moved ([`Storage::watch_log_end`]); when the storage closes, it
//! ends.
//!
//! [`Site::subscribe_all`]: crate::Site::subscribe_all
//! [`Storage::watch_log_end`]: crate::storage::Storage::watch_log_end

use crate::error::Cause;
use crate::event::Event;
use crate::id::{LogPos, StreamId};
use crate::limits;
use crate::storage::{Storage, StorageError};
use crate::view::Stream;
use std::collections::{HashSet, VecDeque};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use tokio::sync::{mpsc, watch};

/// Which events a site-wide subscription delivers.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Filter {
    /// Every event.
    #[default]
    All,
    /// The events of streams of one type (by its [`Stream::TYPE_NAME`]).
    Type(String),
    /// The events of these streams.
    Streams(HashSet<StreamId>),
}

impl Filter {
    /// The events of streams of type `S`.
    pub fn of_type<S: Stream>() -> Self {
        Filter::Type(S::TYPE_NAME.to_owned())
    }

    /// Whether `event` passes.
    pub fn matches(&self, event: &Event) -> bool {
        match self {
            Filter::All => true,
            Filter::Type(stream_type) => event.stream_type == *stream_type,
            Filter::Streams(streams) => streams.contains(&event.lane.stream),
        }
    }
}

/// One event of a site-wide subscription and its position in the site's log: store the
/// position as the consumer's checkpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PositionedEvent {
    /// Where the event sits in this site's log (local to this site).
    pub position: LogPos,
    /// The event.
    pub event: Event,
}

/// Why a site-wide subscription could not start or had to end.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SubscribeError {
    /// The checkpoint is past the end of this site's log: it was taken at another site,
    /// or from a database that was replaced. Positions are local to one site.
    #[error(
        "checkpoint {after} is past the end of this site's log ({end}): positions are local to the site that gave \
         them; start again from 0, or from a checkpoint this site gave"
    )]
    AheadOfLog {
        /// The checkpoint asked for.
        after: LogPos,
        /// The last durable position of the log.
        end: LogPos,
    },
    /// Called outside a tokio runtime: the reading has nowhere to run.
    #[error("a site-wide subscription starts inside the site's actix System (a tokio runtime); this call came from outside one")]
    NoRuntime,
    /// The log could not be read for good (a stored event that does not decode): the
    /// subscription ends after the last event read.
    #[error("reading the site's log after {after}: {source}")]
    Storage {
        /// The position read from.
        after: LogPos,
        /// The failure.
        source: StorageError,
    },
}

/// A site-wide subscription: yields each matching event with its position, in position
/// order, first what is stored after the checkpoint, then each new event once durable.
/// Ends when the site's storage closes, or with one error when the log cannot be read.
///
/// Use [`Subscription::next`], or use it as a [`futures::Stream`]. Dropping it ends the
/// reading.
pub struct Subscription {
    pages: mpsc::Receiver<Result<Vec<PositionedEvent>, SubscribeError>>,
    page: VecDeque<PositionedEvent>,
    /// How far the reading has read the log.
    read: Arc<AtomicU64>,
}

impl Subscription {
    /// Starts reading `storage`'s log after `after`, yielding what `filter` lets pass.
    /// Must run inside a tokio runtime (an actix `System` is one).
    pub(crate) fn start(storage: Arc<dyn Storage>, filter: Filter, after: LogPos) -> Result<Self, SubscribeError> {
        let end = storage.log_end();
        if after > end {
            return Err(SubscribeError::AheadOfLog { after, end });
        }
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| SubscribeError::NoRuntime)?;
        let (sender, pages) = mpsc::channel(limits::SUBSCRIPTION_PAGES_AHEAD);
        let read = Arc::new(AtomicU64::new(after.0));
        runtime.spawn(read_log(storage, filter, after, sender, Arc::clone(&read)));
        Ok(Self { pages, page: VecDeque::new(), read })
    }

    /// How far the subscription has read the site's log: ahead of what it yielded by at
    /// most [`limits::SUBSCRIPTION_PAGES_AHEAD`] pages, the one waiting to be sent and the
    /// rest of the one being taken.
    pub fn read_upto(&self) -> LogPos {
        LogPos(self.read.load(Ordering::Acquire))
    }

    /// The events read and not yet yielded, taken at once (none waits for the log).
    pub fn buffered(&mut self) -> impl Iterator<Item = PositionedEvent> + '_ {
        self.page.drain(..)
    }

    /// The next event, `None` once the subscription ended.
    pub async fn next(&mut self) -> Option<Result<PositionedEvent, SubscribeError>> {
        std::future::poll_fn(|cx| self.poll_event(cx)).await
    }

    fn poll_event(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<PositionedEvent, SubscribeError>>> {
        loop {
            if let Some(event) = self.page.pop_front() {
                return Poll::Ready(Some(Ok(event)));
            }
            match std::task::ready!(self.pages.poll_recv(cx)) {
                Some(Ok(page)) => self.page = page.into(),
                Some(Err(error)) => return Poll::Ready(Some(Err(error))),
                None => return Poll::Ready(None),
            }
        }
    }
}

impl futures::Stream for Subscription {
    type Item = Result<PositionedEvent, SubscribeError>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.get_mut().poll_event(cx)
    }
}

/// Whether a failed read of the log may pass: storage that failed heals by reopening
/// (a read racing the reopen finds it closed for a moment), a busy one frees up; a stored
/// event that does not decode stays so.
fn passes(error: &StorageError) -> bool {
    !matches!(
        error,
        StorageError::Codec(_)
            | StorageError::Corrupt(_)
            | StorageError::Format { .. }
            | StorageError::Interrupted { .. }
    )
}

/// What a wait of the reading ended with.
enum Woken {
    /// The log's durable end moved (or the pause is over).
    Moved,
    /// The storage closed for good, or the consumer went: the reading ends.
    Ended,
}

/// Waits until the log's end moves, `pause` is over (if given), or the consumer goes.
async fn wait(
    log_end: &mut watch::Receiver<LogPos>,
    pause: Option<std::time::Duration>,
    sender: &mpsc::Sender<Result<Vec<PositionedEvent>, SubscribeError>>,
) -> Woken {
    let paused = async {
        match pause {
            Some(pause) => tokio::time::sleep(pause).await,
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        moved = log_end.changed() => if moved.is_ok() { Woken::Moved } else { Woken::Ended },
        () = paused => Woken::Moved,
        () = sender.closed() => Woken::Ended,
    }
}

/// The subscription's reading: a page of the log at a time, on a blocking thread, sent
/// on once the consumer has room; at the end of the log, a wait for it to move. Ends when
/// the consumer drops the subscription or the storage closes.
async fn read_log(
    storage: Arc<dyn Storage>,
    filter: Filter,
    mut after: LogPos,
    sender: mpsc::Sender<Result<Vec<PositionedEvent>, SubscribeError>>,
    read: Arc<AtomicU64>,
) {
    let mut log_end = storage.watch_log_end();
    let mut pause = limits::SUBSCRIPTION_RETRY_FIRST;
    // A filter may pass nothing of many pages: the consumer's leaving is checked at
    // every page, not only when a page is sent.
    while !sender.is_closed() {
        if after >= *log_end.borrow_and_update() {
            match wait(&mut log_end, None, &sender).await {
                Woken::Moved => continue,
                Woken::Ended => return,
            }
        }
        let reader = Arc::clone(&storage);
        let reading = tokio::task::spawn_blocking(move || {
            reader.log_after(after, limits::SUBSCRIPTION_PAGE_EVENTS, limits::SUBSCRIPTION_PAGE_BYTES)
        });
        let read_page = reading.await.unwrap_or_else(|error| {
            Err(StorageError::Interrupted { what: "reading the log for a subscription", cause: Cause::new(error) })
        });
        let page = match read_page {
            Ok(page) => page,
            // Closed for good: the storage dropped the log end's sender.
            Err(StorageError::Closed) if log_end.has_changed().is_err() => return,
            Err(error) if passes(&error) => {
                tracing::warn!(%error, %after, retry_in = ?pause, "a site-wide subscription could not read the log; retrying");
                // The storage healing moves the log end: no need to wait out the pause.
                if let Woken::Ended = wait(&mut log_end, Some(pause), &sender).await {
                    return;
                }
                pause = (pause * 2).min(limits::SUBSCRIPTION_RETRY_MAX);
                continue;
            }
            Err(source) => {
                tracing::error!(error = %source, %after, "a site-wide subscription ends: the log does not read");
                let _ = sender.send(Err(SubscribeError::Storage { after, source })).await;
                return;
            }
        };
        pause = limits::SUBSCRIPTION_RETRY_FIRST;
        let first = after.0 + 1;
        // A page holds the events at the positions after `after`, up to `last`, each once.
        if page.last.0.checked_sub(after.0) != u64::try_from(page.events.len()).ok() {
            let source = StorageError::Corrupt(format!(
                "the log page after {after} ends at {} but holds {} events",
                page.last,
                page.events.len()
            ));
            tracing::error!(error = %source, "a site-wide subscription ends: the log does not read");
            let _ = sender.send(Err(SubscribeError::Storage { after, source })).await;
            return;
        }
        if page.events.is_empty() {
            // The log end moved past `after` but nothing reads there yet (a read racing a
            // reopen): read again at the next move.
            if let Woken::Ended = wait(&mut log_end, None, &sender).await {
                return;
            }
            continue;
        }
        after = page.last;
        read.store(after.0, Ordering::Release);
        let events: Vec<PositionedEvent> = (first..)
            .zip(page.events)
            .filter(|(_, event)| filter.matches(event))
            .map(|(position, event)| PositionedEvent { position: LogPos(position), event })
            .collect();
        if !events.is_empty() && sender.send(Ok(events)).await.is_err() {
            return; // the consumer dropped the subscription
        }
    }
}
