//! [`Links`]: the peers a site has a live direct link from. Their events come straight
//! from them, so the sinks of the site's other links ask their peers not to relay those
//! ([`super::flow::Origins`]), and ask again when the link goes.

use super::sink::HoldsPeerWrites;
use crate::id::SiteId;
use actix::Recipient;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use tokio::sync::watch;

/// The sinks of each peer's live links (a peer may dial twice), by link number.
type Live = BTreeMap<SiteId, BTreeMap<u64, Recipient<HoldsPeerWrites>>>;

/// The peers with a live direct link to this site, shared by its sink nodes.
#[derive(Debug, Clone)]
pub struct Links {
    live: Arc<watch::Sender<Live>>,
    next: Arc<AtomicU64>,
}

impl Default for Links {
    fn default() -> Self {
        Self { live: Arc::new(watch::Sender::new(BTreeMap::new())), next: Arc::default() }
    }
}

impl Links {
    /// The peers with a live link.
    pub fn live(&self) -> BTreeSet<SiteId> {
        self.live.borrow().keys().copied().collect()
    }

    /// Resolves once at least `count` peers have a live link here.
    pub async fn until_live(&self, count: usize) {
        let mut watch = self.live.subscribe();
        // The sender lives in `self`, so the channel cannot close while we wait.
        let _ = watch.wait_for(|live| live.len() >= count).await;
    }

    /// Marks the link whose sink is `sink` from `peer` live until the returned guard drops.
    pub(crate) fn up(&self, peer: SiteId, sink: Recipient<HoldsPeerWrites>) -> LinkUp {
        let number = self.next.fetch_add(1, Ordering::Relaxed);
        self.live.send_modify(|live| {
            live.entry(peer).or_default().insert(number, sink);
        });
        LinkUp { links: self.clone(), peer, number }
    }

    /// The sink of a live link from `peer`, if there is one.
    pub(crate) fn sink(&self, peer: SiteId) -> Option<Recipient<HoldsPeerWrites>> {
        self.live.borrow().get(&peer).and_then(|sinks| sinks.values().next().cloned())
    }

    /// Told of every change to the live set.
    pub(crate) fn watch(&self) -> watch::Receiver<Live> {
        self.live.subscribe()
    }
}

/// A live link, counted in [`Links`] until dropped.
#[derive(Debug)]
pub struct LinkUp {
    links: Links,
    peer: SiteId,
    number: u64,
}

impl Drop for LinkUp {
    fn drop(&mut self) {
        let (peer, number) = (self.peer, self.number);
        self.links.live.send_modify(|live| {
            if let Some(sinks) = live.get_mut(&peer) {
                sinks.remove(&number);
                if sinks.is_empty() {
                    live.remove(&peer);
                }
            }
        });
    }
}
