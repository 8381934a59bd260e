//! `gundb demo`: the seed's story with three real sites in one process. A, B and C write;
//! a partition cuts A off from B and C; both sides go on writing, to the same stream;
//! the partition heals; every view ends equal. Prints a timeline as it goes.

use anyhow::{ensure, Result};
use gundb::node::transport::{faulty, Faults};
use gundb::node::{connect, NodeConfig};
use gundb::storage::{SledConfig, SledStorage};
use gundb::{Emit, EventMeta, GetView, Site, SiteConfig, Stream, StreamId, VectorClock, View};
use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

/// A line said in the shared chat.
#[derive(Clone, Serialize, Deserialize)]
struct Said {
    who: String,
    text: String,
}

/// The chat transcript in canonical order: appending makes order matter, so equal
/// transcripts mean the sites agree on the order of concurrent lines too.
#[derive(Clone, Default, PartialEq, Serialize, Deserialize)]
struct Transcript(Vec<String>);

impl View<Said> for Transcript {
    fn apply_event(&mut self, said: &Said, _meta: &EventMeta<'_>) {
        self.0.push(format!("{}: {}", said.who, said.text));
    }
}

struct Chat;
impl Stream for Chat {
    const TYPE_NAME: &'static str = "demo.chat";
    type Event = Said;
    type View = Transcript;
}

const NAMES: [&str; 3] = ["A", "B", "C"];

struct Demo {
    sites: Vec<Site>,
    /// Links (A-B, A-C, B-C) with their fault controls.
    links: Vec<((usize, usize), Arc<Faults>)>,
    chat: StreamId,
    step: u32,
}

impl Demo {
    fn say(&mut self, line: impl AsRef<str>) {
        self.step += 1;
        println!("{:>3}  {}", self.step, line.as_ref());
    }

    async fn write(&mut self, site: usize, text: &str) -> Result<()> {
        let chat = self.sites[site].stream::<Chat>(self.chat).await?;
        let said = Said { who: NAMES[site].into(), text: text.into() };
        let emitted = chat.send(Emit::new(said)).await??;
        self.say(format!(
            "[{}] writes {text:?} (seq {}, lamport {}, durable)",
            NAMES[site], emitted.seq, emitted.lamport
        ));
        Ok(())
    }

    /// Waits until every site has everything any site has.
    async fn settle(&mut self) -> Result<VectorClock> {
        let mut union = VectorClock::new();
        for site in &self.sites {
            union.merge(&site.frontier().await?);
        }
        for (n, site) in self.sites.iter().enumerate() {
            let Ok(waited) = tokio::time::timeout(Duration::from_secs(30), site.wait_for(&union)).await else {
                // Say what it holds and what its router saw, so that a failure can be read.
                let (held, metrics) = (site.frontier().await?, site.metrics().await?);
                anyhow::bail!(
                    "site {} did not catch up in 30 s: it holds {held:?} of {union:?}; its router: {metrics:?}",
                    NAMES[n]
                );
            };
            waited?;
        }
        Ok(union)
    }

    fn cut(&self, site: usize, cut: bool) {
        for ((left, right), faults) in &self.links {
            if *left == site || *right == site {
                faults.partition(cut);
            }
        }
    }

    async fn views(&self) -> Result<Vec<Transcript>> {
        let mut views = Vec::new();
        for site in &self.sites {
            let chat = site.stream::<Chat>(self.chat).await?;
            views.push(chat.send(GetView::new()).await??.view);
        }
        Ok(views)
    }

    async fn show_views(&mut self, title: &str) -> Result<()> {
        let views = self.views().await?;
        self.say(title);
        let rows = views.iter().map(|v| v.0.len()).max().unwrap_or(0);
        println!("       {:<26}{:<26}{:<26}", "site A", "site B", "site C");
        for row in 0..rows {
            let cell = |v: &Transcript| v.0.get(row).cloned().unwrap_or_default();
            println!("       {:<26}{:<26}{:<26}", cell(&views[0]), cell(&views[1]), cell(&views[2]));
        }
        Ok(())
    }
}

/// Runs the story; sites keep their databases in `data/{a,b,c}` when given.
pub fn run(data: Option<PathBuf>, seed: u64) -> Result<()> {
    actix::System::new().block_on(async move {
        let mut sites = Vec::new();
        for name in NAMES {
            let path = data.as_ref().map(|d| d.join(name.to_lowercase()));
            let storage = Arc::new(SledStorage::with_config(SledConfig { path, ..SledConfig::default() })?);
            sites.push(Site::with_storage(storage, SiteConfig::default())?);
        }
        let mut links = Vec::new();
        for (i, (left, right)) in [(0, 1), (0, 2), (1, 2)].into_iter().enumerate() {
            let faults = Arc::new(Faults::default());
            // Links that delay and duplicate frames, so routers see events out of order.
            faults.delay_percent.store(30, Ordering::SeqCst);
            faults.duplicate_percent.store(10, Ordering::SeqCst);
            let (l, r) = faulty(8, Arc::clone(&faults), seed + i as u64);
            let config = NodeConfig { hello_every: Some(Duration::from_millis(50)), ..NodeConfig::default() };
            connect(&sites[left], l, config.clone());
            connect(&sites[right], r, config);
            links.push(((left, right), faults));
        }
        let mut demo = Demo { sites, links, chat: StreamId::from_u128(0xC4A7), step: 0 };
        for (n, site) in demo.sites.clone().iter().enumerate() {
            demo.say(format!("site {} is up: id {}", NAMES[n], site.id()));
        }

        demo.write(0, "hello from A").await?;
        demo.write(1, "hi, B here").await?;
        demo.write(2, "C joins").await?;
        demo.settle().await?;
        demo.say("all three sites have every line");

        demo.cut(0, true);
        demo.say("PARTITION: A is cut off from B and C");
        demo.write(0, "is anyone there?").await?;
        demo.write(0, "A keeps writing").await?;
        demo.write(1, "A went quiet").await?;
        demo.write(2, "agreed with B").await?;
        demo.write(1, "carrying on").await?;
        demo.show_views("views during the partition (A differs from B and C):").await?;

        demo.cut(0, false);
        demo.say("HEAL: links are back; sites exchange frontiers and catch up");
        let union = demo.settle().await?;
        demo.say(format!(
            "every site holds {} events in {} lanes",
            union.iter().map(|(_, s)| s.0).sum::<u64>(),
            union.len()
        ));
        for (n, site) in demo.sites.clone().iter().enumerate() {
            let m = site.metrics().await?;
            demo.say(format!(
                "router {}: received {}, delivered {}, held back {} until their dependencies came, {} copies dropped",
                NAMES[n], m.received, m.delivered, m.held_back, m.duplicates
            ));
        }
        let names: std::collections::HashMap<gundb::SiteId, &str> =
            demo.sites.iter().zip(NAMES).map(|(s, n)| (s.id(), n)).collect();
        for (n, site) in demo.sites.clone().iter().enumerate() {
            for held in site.held_back().await? {
                demo.say(format!(
                    "router {} held back {}#{} until {}#{} arrived",
                    NAMES[n], names[&held.lane.site], held.seq, names[&held.missing.site], held.needed
                ));
            }
        }
        let injected: u64 = demo.links.iter().map(|(_, f)| f.injected.load(Ordering::SeqCst)).sum();
        demo.say(format!("the links delayed, duplicated or cut {injected} frames along the way"));
        demo.show_views("views after the heal:").await?;
        let views = demo.views().await?;
        let equal = views.windows(2).all(|w| w[0] == w[1]);
        println!();
        println!("verdict: {}", if equal { "CONVERGED: every view is equal on A, B and C" } else { "DIVERGED" });
        ensure!(equal, "the views differ");
        Ok(())
    })
}
