//! Replication between two `gundb node` processes over TCP. Node A starts on a database
//! already holding the events; node B starts empty with A as its peer; the clock runs from
//! B's start until B's `/health` frontier holds every event.

use super::Progress;
use anyhow::{bail, ensure, Context as _, Result};
use gundb::doc::{Document, Patch};
use gundb::{Emit, Site, StreamId};
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Streams the events are spread over.
const STREAMS: u64 = 4;
/// Concurrent writers per stream while filling node A's database.
const WRITERS_PER_STREAM: u64 = 16;

/// Events per second until node B holds all `events`; fails if any arrived twice.
pub fn two_nodes(events: u64, progress: &Progress) -> Result<f64> {
    let root = tempfile::tempdir()?;
    let secret = root.path().join("secret");
    std::fs::write(&secret, "bench")?;
    progress.say(format!("filling node A's database with {events} events"));
    fill(&root.path().join("a"), events)?;

    let a = NodeProcess::start(&root.path().join("a"), &secret, None)?;
    let started = Instant::now();
    let b = NodeProcess::start(&root.path().join("b"), &secret, Some(a.peers))?;
    let agent = ureq::AgentBuilder::new().timeout(Duration::from_secs(10)).build();
    loop {
        let held = events_held(&agent, b.http)?;
        if held >= events {
            break;
        }
        progress.say(format!("node B holds {held} of {events}"));
        if started.elapsed() > Duration::from_secs(600) {
            bail!("node B holds {held} of {events} events after 10 minutes");
        }
        std::thread::sleep(Duration::from_millis(10)); // polling B, not synchronising a test
    }
    let rate = events as f64 / started.elapsed().as_secs_f64();
    let metrics = agent.get(&format!("http://{}/metrics", b.http)).call()?.into_string()?;
    let received = metrics.lines().find_map(|line| line.strip_prefix("gundb_received_total "));
    ensure!(
        received == Some(&events.to_string()),
        "node B received {received:?} events for {events}: copies were sent"
    );
    Ok(rate)
}

/// Writes `events` small JSON patches into node A's database, durably, before A starts.
fn fill(path: &Path, events: u64) -> Result<()> {
    let path = path.to_owned();
    actix::System::new().block_on(async move {
        let site = Site::open(&path)?;
        let writers = STREAMS * WRITERS_PER_STREAM;
        let mut tasks = Vec::new();
        for writer in 0..writers {
            let stream = site.stream::<Document>(StreamId::named(&format!("bench-{}", writer % STREAMS))).await?;
            let share = events / writers + u64::from(writer < events % writers);
            tasks.push(actix::spawn(async move {
                for n in 0..share {
                    let patch = Patch::from_json(&format!(r#"{{"writer-{writer}": {n}}}"#))?;
                    stream.send(Emit::new(patch)).await??;
                }
                Ok::<_, anyhow::Error>(())
            }));
        }
        for task in tasks {
            task.await.context("writer task")??;
        }
        Ok(())
    })
}

/// The number of events in `/health`'s frontier at `http`.
fn events_held(agent: &ureq::Agent, http: SocketAddr) -> Result<u64> {
    let health: serde_json::Value = agent.get(&format!("http://{http}/health")).call()?.into_json()?;
    health["events"].as_u64().context("/health without an event count")
}

/// A `gundb node` child process, killed when dropped.
pub(super) struct NodeProcess {
    child: Child,
    pub(super) peers: SocketAddr,
    pub(super) http: SocketAddr,
}

impl NodeProcess {
    pub(super) fn start(data: &Path, secret: &Path, peer: Option<SocketAddr>) -> Result<Self> {
        let mut command = Command::new(std::env::current_exe()?);
        command.arg("node").arg("--data").arg(data).arg("--secret-file").arg(secret);
        command.args(["--listen", "127.0.0.1:0", "--http", "127.0.0.1:0"]);
        if let Some(peer) = peer {
            command.arg("--peer").arg(peer.to_string());
        }
        command.env("RUST_LOG", "warn").stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::inherit());
        let child = command.spawn().context("starting gundb node")?;
        // Owned by the guard from here on, so it is killed on every way out.
        let unknown = SocketAddr::from(([0, 0, 0, 0], 0));
        let mut node = Self { child, peers: unknown, http: unknown };
        let stdout = node.child.stdout.take().context("the node's stdout")?;
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line)?;
        let field = |name: &str| -> Result<SocketAddr> {
            let at = line.find(name).with_context(|| format!("{name} in the node's ready line {line:?}"))?;
            Ok(line[at + name.len()..].split_whitespace().next().unwrap_or_default().parse()?)
        };
        (node.peers, node.http) = (field("peers=")?, field("http=")?);
        Ok(node)
    }
}

impl Drop for NodeProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
