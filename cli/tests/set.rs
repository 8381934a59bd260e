//! A set test of our own: three `gundb node` processes, HTTP clients writing unique fields
//! concurrently into four document streams (values of 16 KiB, so views reach megabytes),
//! while a nemesis kills nodes with SIGKILL and restarts them, pauses them with SIGSTOP and
//! cuts the links between them. Every running node keeps serving throughout (no answer in
//! the 5xx range, `/health` answering 200, no storage failure logged), and at the end every
//! write that got a 201 is on every node, and every stream's view and history are equal
//! everywhere.
//!
//! `GUNDB_SET_SECS` sets how long the faults go on (default 8 s, so the normal test run
//! stays short); `GUNDB_SEED` replays a run (the seed is printed).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod cluster;

use cluster::{Node, Proxy, Start};
use gundb::testkit::Rng;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const STREAMS: [&str; 4] = ["doc-a", "doc-b", "doc-c", "doc-d"];
const WRITERS: u64 = 6;
const VALUE_BYTES: usize = 16 << 10;
/// Longer than any pause the nemesis makes: a request to a paused node waits, it does not fail.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(20);

/// What clients may know of a node: where its HTTP API is, whether it runs, and a number
/// that changes each time it is killed (a request that failed across a kill is no fault).
#[derive(Clone, Copy)]
struct Seen {
    http: SocketAddr,
    up: bool,
    kills: u64,
}

type Table = Arc<Mutex<Vec<Seen>>>;

/// The value writer `writer` wrote in its `n`th write: known again at the end from both.
fn value(writer: u64, n: u64) -> String {
    let stem = format!("{writer}-{n}-");
    stem.repeat(VALUE_BYTES / stem.len() + 1)[..VALUE_BYTES].to_owned()
}

/// A write a client got a 201 for.
struct Acked {
    stream: &'static str,
    writer: u64,
    n: u64,
}

/// What a client or a prober saw go wrong at a running node.
type Faults = Arc<Mutex<Vec<String>>>;

/// A client without kept-alive connections: a pooled one the server has just timed out
/// would end a write with an EOF that says nothing about the node.
fn agent() -> ureq::Agent {
    ureq::AgentBuilder::new().timeout(REQUEST_TIMEOUT).max_idle_connections(0).build()
}

/// Records `what` as a fault unless the node was killed or is down (`before` is the table
/// row when the request started).
fn judge(table: &Table, faults: &Faults, node: usize, before: Seen, what: String) {
    let now = table.lock().unwrap()[node];
    if now.up && now.kills == before.kills {
        faults.lock().unwrap().push(what);
    }
}

/// A client: writes unique fields to random streams at random running nodes until `stop`.
fn writer(writer: u64, seed: u64, table: Table, faults: Faults, stop: Arc<AtomicBool>) -> Vec<Acked> {
    let (agent, mut rng, mut acked) = (agent(), Rng::new(seed ^ writer), Vec::new());
    for n in 0.. {
        if stop.load(Ordering::SeqCst) {
            break;
        }
        let up: Vec<(usize, Seen)> = table.lock().unwrap().iter().copied().enumerate().filter(|(_, s)| s.up).collect();
        let (node, seen) = up[rng.index(up.len())];
        let stream = STREAMS[rng.index(STREAMS.len())];
        let body = json!({ format!("w{writer}-{n}"): value(writer, n) }).to_string();
        match agent.post(&format!("http://{}/streams/{stream}/events", seen.http)).send_string(&body) {
            Ok(response) if response.status() == 201 => acked.push(Acked { stream, writer, n }),
            Ok(response) => judge(&table, &faults, node, seen, format!("write to node {node}: {}", response.status())),
            Err(ureq::Error::Status(code, response)) => {
                let reason = response.into_string().unwrap_or_default();
                judge(&table, &faults, node, seen, format!("write to node {node}: {code} {reason}"));
            }
            Err(error) => judge(&table, &faults, node, seen, format!("write to node {node}: {error}")),
        }
    }
    acked
}

/// Asks every running node's `/health` in turn until `stop`: each must answer 200.
fn prober(table: Table, faults: Faults, stop: Arc<AtomicBool>) {
    let agent = agent();
    while !stop.load(Ordering::SeqCst) {
        let rows: Vec<Seen> = table.lock().unwrap().clone();
        for (node, seen) in rows.into_iter().enumerate().filter(|(_, s)| s.up) {
            match agent.get(&format!("http://{}/health", seen.http)).call() {
                Ok(response) if response.status() == 200 => {}
                Ok(response) => {
                    judge(&table, &faults, node, seen, format!("health of node {node}: {}", response.status()))
                }
                Err(error) => judge(&table, &faults, node, seen, format!("health of node {node}: {error}")),
            }
        }
        std::thread::sleep(Duration::from_millis(100)); // pacing the probes, not a synchronisation
    }
}

struct Cluster<'a> {
    root: &'a Path,
    nodes: Vec<Node>,
    /// Where each node listens for peers, and whom it dials (through the proxies).
    listen: Vec<SocketAddr>,
    dials: Vec<Vec<SocketAddr>>,
    table: Table,
}

impl Cluster<'_> {
    fn start(&self, node: usize) -> Node {
        let name = ["a", "b", "c"][node];
        let data = self.root.join(name);
        let secret = self.root.join("secret");
        let start =
            Start { name, data: &data, secret_file: &secret, listen: self.listen[node], peers: &self.dials[node] };
        Node::start(start)
    }

    fn kill_and_restart(&mut self, node: usize, down_for: Duration) {
        {
            let mut table = self.table.lock().unwrap();
            table[node].up = false;
            table[node].kills += 1;
        }
        self.nodes[node].kill();
        std::thread::sleep(down_for); // how long the node stays down: the fault itself
        self.nodes[node] = self.start(node);
        let mut table = self.table.lock().unwrap();
        (table[node].http, table[node].up) = (self.nodes[node].http, true);
    }
}

#[test]
fn three_nodes_under_kills_pauses_and_cut_links_keep_serving_and_agree() {
    let secs: u64 = std::env::var("GUNDB_SET_SECS").ok().and_then(|s| s.parse().ok()).unwrap_or(8);
    let seed: u64 = std::env::var("GUNDB_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(|| {
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap();
        now.as_secs() ^ u64::from(now.subsec_nanos()) << 32
    });
    eprintln!("set test: GUNDB_SEED={seed} GUNDB_SET_SECS={secs}");
    let root = tempfile::tempdir().unwrap();
    std::fs::write(root.path().join("secret"), "set secret\n").unwrap();
    let any: SocketAddr = "127.0.0.1:0".parse().unwrap();

    // A listens; B dials A; C dials A and B: every link through a proxy the nemesis cuts.
    let mut cluster = Cluster {
        root: root.path(),
        nodes: Vec::new(),
        listen: vec![any; 3],
        dials: vec![Vec::new(); 3],
        table: Table::default(),
    };
    let a = cluster.start(0);
    cluster.listen[0] = a.peers;
    let a_b = Proxy::start(a.peers);
    cluster.dials[1] = vec![a_b.addr];
    let b = cluster.start(1);
    cluster.listen[1] = b.peers;
    let (a_c, b_c) = (Proxy::start(a.peers), Proxy::start(b.peers));
    cluster.dials[2] = vec![a_c.addr, b_c.addr];
    let c = cluster.start(2);
    cluster.listen[2] = c.peers;
    cluster.nodes = vec![a, b, c];
    *cluster.table.lock().unwrap() = cluster.nodes.iter().map(|n| Seen { http: n.http, up: true, kills: 0 }).collect();
    let proxies = [&a_b, &a_c, &b_c];

    let (faults, stop) = (Faults::default(), Arc::new(AtomicBool::new(false)));
    let writers: Vec<_> = (0..WRITERS)
        .map(|w| {
            let (table, faults, stop) = (Arc::clone(&cluster.table), Arc::clone(&faults), Arc::clone(&stop));
            std::thread::spawn(move || writer(w, seed, table, faults, stop))
        })
        .collect();
    let prober = {
        let (table, faults, stop) = (Arc::clone(&cluster.table), Arc::clone(&faults), Arc::clone(&stop));
        std::thread::spawn(move || prober(table, faults, stop))
    };

    // The nemesis: one fault at a time, each for a random while, until the time is up.
    let mut rng = Rng::new(seed);
    let between = |rng: &mut Rng, low: u64, high: u64| Duration::from_millis(low + rng.below(high - low));
    let (mut kills, mut pauses, mut cuts) = (0, 0, 0);
    let deadline = Instant::now() + Duration::from_secs(secs);
    while Instant::now() < deadline {
        std::thread::sleep(between(&mut rng, 200, 800)); // writes flow between faults
        let node = rng.index(3);
        match rng.below(3) {
            0 => {
                cluster.kill_and_restart(node, between(&mut rng, 100, 800));
                kills += 1;
            }
            1 => {
                cluster.nodes[node].pause();
                std::thread::sleep(between(&mut rng, 200, 1_500));
                cluster.nodes[node].resume();
                pauses += 1;
            }
            _ => {
                let proxy = proxies[rng.index(proxies.len())];
                proxy.cut();
                std::thread::sleep(between(&mut rng, 300, 2_000));
                proxy.restore();
                cuts += 1;
            }
        }
    }
    stop.store(true, Ordering::SeqCst);
    let acked: Vec<Acked> = writers.into_iter().flat_map(|w| w.join().unwrap()).collect();
    prober.join().unwrap();
    eprintln!("set test: {kills} kills, {pauses} pauses, {cuts} cut links; {} writes acknowledged", acked.len());
    let faults = faults.lock().unwrap().clone();
    assert!(faults.is_empty(), "running nodes failed requests (seed {seed}): {faults:#?}");
    assert!(acked.len() >= 50, "too few writes acknowledged to judge (seed {seed}): {}", acked.len());

    // Healed: every node holds everything, with equal views and histories.
    let nodes = &cluster.nodes;
    let healing = Instant::now();
    let equal = || {
        let first = nodes[0].frontier();
        nodes[1..].iter().all(|node| node.frontier() == first)
    };
    while !equal() {
        let state: Vec<String> = nodes
            .iter()
            .map(|node| {
                let metrics = node.get_text("/metrics").1;
                let pick = |name: &str| metrics.lines().find(|l| l.starts_with(name)).unwrap_or_default().to_owned();
                format!(
                    "{}: {} {} {}",
                    node.name,
                    node.frontier()["events"],
                    pick("gundb_pending "),
                    pick("gundb_refused_total")
                )
            })
            .collect();
        assert!(healing.elapsed() < Duration::from_secs(120), "seed {seed}: never converged: {state:?}");
        std::thread::sleep(Duration::from_millis(100)); // polling the nodes until they agree
    }
    eprintln!("set test: converged {:.1} s after the faults ended", healing.elapsed().as_secs_f64());
    for node in nodes {
        let metrics = node.get_text("/metrics").1;
        let counters: Vec<&str> = metrics.lines().filter(|l| l.starts_with("gundb_") && !l.ends_with(" 0")).collect();
        eprintln!("set test: node {}: {}", node.name, counters.join(", "));
    }
    let mut largest = 0;
    for stream in STREAMS {
        let view = nodes[0].get_ok(&format!("/streams/{stream}"))["view"].clone();
        largest = largest.max(view.to_string().len());
        let events = nodes[0].history(stream, 500);
        for node in &nodes[1..] {
            assert_eq!(
                node.get_ok(&format!("/streams/{stream}"))["view"],
                view,
                "seed {seed}: {stream} at {}",
                node.name
            );
            assert!(node.history(stream, 500) == events, "seed {seed}: history of {stream} at {}", node.name);
        }
        let fields: BTreeMap<String, String> = acked
            .iter()
            .filter(|a| a.stream == stream)
            .map(|a| (format!("w{}-{}", a.writer, a.n), value(a.writer, a.n)))
            .collect();
        for (field, value) in fields {
            assert_eq!(view.get(&field).and_then(Value::as_str), Some(value.as_str()), "seed {seed}: {stream}.{field}");
        }
    }
    for node in nodes {
        assert!(!node.log.wait_for("storage failed", Duration::ZERO), "node {} logged a storage failure", node.name);
    }
    eprintln!("set test: the largest view is {:.1} MB", largest as f64 / 1e6);
}
