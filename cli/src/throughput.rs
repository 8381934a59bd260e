//! `gundb throughput`: durable writes into one stream with many concurrent writers; prints
//! the view, the throughput and the group-commit factor.

use anyhow::{Context as _, Result};
use gundb::storage::{Durability, SledConfig, SledStorage, Storage};
use gundb::{Emit, EventMeta, GetView, History, Stream, StreamActor, StreamId, View};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

/// The demo's events: a shop till recording sales.
#[derive(Clone, Serialize, Deserialize)]
struct Sale {
    till: u64,
    cents: u64,
}

/// Sales per till and in all.
#[derive(Clone, Default, Serialize, Deserialize)]
struct Takings {
    sales: u64,
    cents: u64,
    per_till: BTreeMap<u64, u64>,
}

impl View<Sale> for Takings {
    fn apply_event(&mut self, sale: &Sale, _meta: &EventMeta<'_>) {
        self.sales += 1;
        self.cents += sale.cents;
        *self.per_till.entry(sale.till).or_default() += sale.cents;
    }
}

struct Till;
impl Stream for Till {
    const TYPE_NAME: &'static str = "demo.till";
    type Event = Sale;
    type View = Takings;
    const COMMUTATIVE: bool = true;
}

/// Writes `events` durable events into one stream with `writers` concurrent writers and
/// prints the view, the throughput and the group-commit factor.
pub fn run(events: u64, writers: u64, data: Option<PathBuf>, no_fsync: bool) -> Result<()> {
    let durability = if no_fsync { Durability::Flush } else { Durability::Fsync };
    let config = SledConfig { path: data.clone(), durability, ..SledConfig::default() };
    let storage = Arc::new(SledStorage::with_config(config).context("opening the sled database")?);
    let shared: Arc<dyn Storage> = storage.clone();
    let where_ = data.map_or_else(|| "a temporary folder".to_owned(), |p| p.display().to_string());
    println!("site {} on sled in {where_} (durability: {durability:?})", storage.site_id());
    actix::System::new().block_on(async move {
        let stream = StreamId::from_u128(0x7111);
        let till = actix::Actor::start(StreamActor::<Till>::open(shared, stream)?);
        let before = till.send(GetView::new()).await??.view;
        let started = Instant::now();
        let tasks: Vec<_> = (0..writers)
            .map(|writer| {
                let till = till.clone();
                let share = events / writers + u64::from(writer < events % writers);
                actix::spawn(async move {
                    for n in 0..share {
                        till.send(Emit::new(Sale { till: writer, cents: 100 + n % 900 })).await??;
                    }
                    Ok::<_, anyhow::Error>(())
                })
            })
            .collect();
        for task in tasks {
            task.await.context("writer task")??;
        }
        let elapsed = started.elapsed();
        let reply = till.send(GetView::new()).await??;
        let last = till.send(History { after: None, limit: 1 }).await??;
        let stats = storage.stats();
        println!("wrote {events} durable events with {writers} writers in {:.3} s", elapsed.as_secs_f64());
        println!("throughput: {:.0} events/s", events as f64 / elapsed.as_secs_f64().max(1e-9));
        println!(
            "group commit: {} commits in {} flushes ({:.1} per flush)",
            stats.commits,
            stats.flushes,
            stats.commits as f64 / stats.flushes.max(1) as f64
        );
        let view = reply.view;
        println!(
            "view: {} sales (before this run: {}), {:.2} in all",
            view.sales,
            before.sales,
            view.cents as f64 / 100.0
        );
        for (writer, cents) in &view.per_till {
            println!("  till {writer:>3}: {:>12.2}", *cents as f64 / 100.0);
        }
        println!("frontier: {:?}", reply.frontier);
        if let Some(first) = last.events.first() {
            println!("first event in canonical order: {} (lamport {})", first.id, first.lamport);
        }
        anyhow::ensure!(view.sales == before.sales + events, "the view must count every acknowledged write");
        println!("verdict: every acknowledged write is in the view");
        Ok(())
    })
}
