//! Events a site cannot fold: a newer version of the application, somewhere else, writes
//! an event type this site's build does not know. The event is stored, relayed and
//! counted, the view skips it and says so, the lane's later events and writes depending
//! on it flow on, and once this site runs a build whose type decodes it, its view has it.
#![allow(clippy::unwrap_used)]

mod common;

use common::{run_site, stored_attestations};
use gundb::storage::SledStorage;
use gundb::{Emit, Event, EventMeta, GetView, Site, SiteConfig, Stream, StreamConfig, StreamId, VectorClock, View};
use serde::{Deserialize, Serialize};
use std::ops::Bound;
use std::path::Path;
use std::sync::Arc;

/// The event type of the older build.
#[derive(Clone, Debug, Serialize, Deserialize)]
enum Before {
    Add(u64),
}

/// The newer build's: one more variant, which the older one cannot decode.
#[derive(Clone, Debug, Serialize, Deserialize)]
enum After {
    Add(u64),
    Label(String),
}

/// One view for both builds, so its snapshots stay readable across the upgrade: only the
/// events it skipped tell the older build's snapshots apart.
#[derive(Clone, Default, Debug, PartialEq, Serialize, Deserialize)]
struct Ledger {
    total: u64,
    labels: Vec<String>,
}

impl View<Before> for Ledger {
    fn apply_event(&mut self, event: &Before, _: &EventMeta<'_>) {
        let Before::Add(n) = event;
        self.total += n;
    }
}

impl View<After> for Ledger {
    fn apply_event(&mut self, event: &After, _: &EventMeta<'_>) {
        match event {
            After::Add(n) => self.total += n,
            After::Label(label) => self.labels.push(label.clone()),
        }
    }
}

struct Older;
impl Stream for Older {
    const TYPE_NAME: &'static str = "test.ledger";
    type Event = Before;
    type View = Ledger;
}

struct Newer;
impl Stream for Newer {
    const TYPE_NAME: &'static str = "test.ledger";
    type Event = After;
    type View = Ledger;
}

/// A site on the sled folder at `path` that snapshots every 2 events, so that snapshots
/// are taken after the event it cannot fold.
fn open_site(path: &Path) -> Site {
    let config =
        SiteConfig { stream: StreamConfig { snapshot_every: 2, ..StreamConfig::default() }, ..SiteConfig::default() };
    Site::with_storage(Arc::new(SledStorage::open(path).unwrap()), config).unwrap()
}

fn stored(site: &Site, stream: StreamId) -> Vec<Event> {
    site.storage().events_from(stream, Bound::Unbounded, None, usize::MAX).unwrap()
}

/// Hands `from`'s log of `stream` to `to` and waits until `to` has all of it.
async fn swap(from: &Site, to: &Site, stream: StreamId) {
    let events = stored(from, stream);
    let target: VectorClock = events.iter().map(|e| (e.lane, e.seq)).collect();
    to.receive(events.clone(), stored_attestations(from, &events)).await.unwrap();
    let wait = to.wait_for(&target);
    tokio::time::timeout(std::time::Duration::from_secs(20), wait).await.expect("never caught up").unwrap();
}

/// What the site's `/metrics` route answers.
async fn metrics_text(site: &Site) -> String {
    use actix_web::test::{call_service, init_service, read_body, TestRequest};
    let app = init_service(actix_web::App::new().configure(gundb::http::routes(site.clone(), 1 << 20))).await;
    let body = read_body(call_service(&app, TestRequest::get().uri("/metrics").to_request()).await).await;
    String::from_utf8(body.to_vec()).unwrap()
}

#[test]
fn an_event_this_build_cannot_decode_is_stored_relayed_counted_and_folded_after_an_upgrade() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_path_buf();
    let stream = StreamId::from_u128(31);
    let newest = run_site(move || async move {
        let newer = Site::temporary().unwrap();
        let handle = newer.stream::<Newer>(stream).await.unwrap();
        for event in [After::Add(1), After::Label("audited".into()), After::Add(2), After::Add(3)] {
            handle.send(Emit::new(event)).await.unwrap().unwrap();
        }

        let older = open_site(&path);
        older.register::<Older>().await.unwrap();
        swap(&newer, &older, stream).await;
        let metrics = older.metrics().await.unwrap();
        assert_eq!((metrics.delivered, metrics.unfolded, metrics.refused), (4, 1, 0), "{metrics:?}");
        let text = metrics_text(&older).await;
        assert!(text.lines().any(|line| line == "gundb_unfolded_total 1"), "{text}");
        let mine = older.stream::<Older>(stream).await.unwrap();
        let view = mine.send(GetView::new()).await.unwrap().unwrap();
        assert_eq!((view.view.total, view.unfolded), (6, 1), "the later events of the lane are folded");
        // A write here depends on the event it could not fold (its heads come after it).
        for n in [10, 20, 30] {
            mine.send(Emit::new(Before::Add(n))).await.unwrap().unwrap();
        }
        assert_eq!(stored(&older, stream).len(), 7, "stored, so a source node relays it");

        // The newer site takes the older one's writes: both logs are the same.
        swap(&older, &newer, stream).await;
        let there = handle.send(GetView::new()).await.unwrap().unwrap();
        assert_eq!(there.view, Ledger { total: 66, labels: vec!["audited".into()] });
        assert_eq!(there.unfolded, 0);
        assert_eq!(stored(&older, stream), stored(&newer, stream));
        older.close().await;
        there.view
    });

    // The older site upgrades: its snapshots after the label lack it, and are rebuilt.
    let path = dir.path().to_path_buf();
    run_site(move || async move {
        let upgraded = open_site(&path);
        let handle = upgraded.stream::<Newer>(stream).await.unwrap();
        let view = handle.send(GetView::new()).await.unwrap().unwrap();
        assert_eq!(view.view, newest, "the view folds the event it skipped before");
        assert_eq!(view.unfolded, 0);
    });
}
