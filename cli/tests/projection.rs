//! The SQLite projection example (`examples/projection_sqlite.rs`) against two real
//! `gundb node` processes: writers at both, the link between them cut now and then (so
//! both write the same fields concurrently, and the followed node receives the other's
//! writes late, out of canonical order), the projector following one of them, killed with
//! SIGKILL and restarted at random moments while events flow. At the end its table equals
//! every view, field by field, and counts every stream's events exactly: nothing skipped,
//! nothing applied twice.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod cluster;

use cluster::{eventually, Node, Proxy, Start};
use gundb::testkit::Rng;
use rusqlite::{Connection, OpenFlags};
use serde_json::{json, Map, Value};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};

/// The projector process; killed when dropped, also when the test fails.
struct Projector(Child, PathBuf);

impl Projector {
    fn start(node: &Node, db: &Path) -> Projector {
        Self::start_with(node, db, &[])
    }

    fn start_with(node: &Node, db: &Path, extra: &[&str]) -> Projector {
        let gundb = Path::new(env!("CARGO_BIN_EXE_gundb"));
        let example = gundb.parent().unwrap().join("examples").join("projection_sqlite");
        assert!(example.exists(), "{} is missing: `cargo test` builds the examples", example.display());
        let child = Command::new(example)
            .args(["--node", &node.http.to_string(), "--batch", "16", "--db"])
            .arg(db)
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log(db))
            .spawn()
            .unwrap();
        Projector(child, db.with_extension("log"))
    }
}

/// The projectors' stderr, appended to a file beside the model (printed if the test fails).
fn log(db: &Path) -> std::fs::File {
    std::fs::OpenOptions::new().create(true).append(true).open(db.with_extension("log")).unwrap()
}

impl Drop for Projector {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
        if std::thread::panicking() {
            let log = std::fs::read_to_string(&self.1).unwrap_or_default();
            eprintln!("--- projector log ---\n{log}");
        }
    }
}

/// Sets its flag when dropped.
struct StopOnDrop<'a>(&'a AtomicBool);

impl Drop for StopOnDrop<'_> {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// The read model's checkpoint and total of events counted (0 before it made its tables).
fn progress(db: &Path) -> (i64, i64) {
    let Ok(db) = Connection::open_with_flags(db, OpenFlags::SQLITE_OPEN_READ_ONLY) else { return (0, 0) };
    let read = || -> rusqlite::Result<(i64, i64)> {
        let position = db.query_row("SELECT position FROM checkpoint", [], |row| row.get(0))?;
        let events = db.query_row("SELECT COALESCE(SUM(events), 0) FROM streams", [], |row| row.get(0))?;
        Ok((position, events))
    };
    read().unwrap_or((0, 0))
}

/// Per stream id: the fields that hold a value, and the events counted.
fn read_model(db: &Path) -> BTreeMap<String, (Map<String, Value>, u64)> {
    let db = Connection::open_with_flags(db, OpenFlags::SQLITE_OPEN_READ_ONLY).unwrap();
    let mut model: BTreeMap<String, (Map<String, Value>, u64)> = BTreeMap::new();
    let mut streams = db.prepare("SELECT stream, events FROM streams").unwrap();
    for row in streams.query_map([], |row| Ok((row.get::<_, String>(0)?, row.get::<_, i64>(1)?))).unwrap() {
        let (stream, events) = row.unwrap();
        model.entry(stream).or_default().1 = u64::try_from(events).unwrap();
    }
    let mut fields = db.prepare("SELECT stream, field, value FROM fields WHERE value IS NOT NULL").unwrap();
    let rows =
        fields.query_map([], |row| Ok((row.get::<_, String>(0)?, row.get::<_, String>(1)?, row.get::<_, String>(2)?)));
    for row in rows.unwrap() {
        let (stream, field, value) = row.unwrap();
        model.entry(stream).or_default().0.insert(field, serde_json::from_str(&value).unwrap());
    }
    model
}

/// Every document stream of `node`: its view and its events.
fn views(node: &Node) -> BTreeMap<String, (Map<String, Value>, u64)> {
    let streams = node.get_ok("/streams?limit=1000")["streams"].as_array().unwrap().clone();
    streams
        .iter()
        .map(|stream| {
            let id = stream["id"].as_str().unwrap().to_owned();
            let view = node.get_ok(&format!("/streams/{id}"));
            (id, (view["view"].as_object().unwrap().clone(), view["events"].as_u64().unwrap()))
        })
        .collect()
}

/// Random patches into a few streams and fields, some removing a field, until `stop`.
fn write_until(node: &Node, seed: u64, stop: &AtomicBool) -> u64 {
    let mut rng = Rng::new(seed);
    let mut written = 0;
    while !stop.load(Ordering::Relaxed) {
        let stream = format!("doc-{}", rng.below(12));
        let field = format!("f{}", rng.below(4));
        let value = if rng.chance(15) { Value::Null } else { json!(rng.below(1_000)) };
        node.post(&stream, &json!({ field: value }).to_string()).unwrap();
        written += 1;
    }
    written
}

#[test]
fn a_projector_killed_mid_stream_neither_skips_nor_repeats_an_event() {
    let seed: u64 = std::env::var("GUNDB_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or(14);
    println!("GUNDB_SEED={seed}");
    let root = tempfile::tempdir().unwrap();
    let secret = root.path().join("secret");
    std::fs::write(&secret, "s").unwrap();
    let any: std::net::SocketAddr = "127.0.0.1:0".parse().unwrap();
    let start = |name: &str, peers: &[std::net::SocketAddr]| {
        Node::start(Start { name, data: &root.path().join(name), secret_file: &secret, listen: any, peers })
    };
    let a = start("a", &[]);
    let link = Proxy::start(a.peers);
    let b = start("b", &[link.addr]);
    let db: PathBuf = root.path().join("read-model.sqlite");
    let mut rng = Rng::new(seed);
    let stop = AtomicBool::new(false);
    let kills = std::thread::scope(|scope| {
        let writers = [(&a, rng.next_u64()), (&b, rng.next_u64())].map(|(node, seed)| {
            scope.spawn({
                let stop = &stop;
                move || write_until(node, seed, stop)
            })
        });
        // Stops the writers however this closure ends: a failure must not leave them
        // writing while the scope waits for them.
        let _stop_writers = StopOnDrop(&stop);
        let mut projector = Projector::start(&a, &db);
        let mut kills = 0;
        for round in 0..6 {
            // Every other round the nodes write apart, then meet again.
            if round % 2 == 0 {
                link.cut();
            } else {
                link.restore();
            }
            // Let it apply some events, a random number of them, then kill it mid-stream.
            let (from, _) = progress(&db);
            let more = 1 + i64::try_from(rng.below(40)).unwrap();
            eventually("the projector applies more events", || progress(&db).0 >= from + more);
            drop(projector);
            kills += 1;
            projector = Projector::start(&a, &db);
        }
        // The writers stop while the nodes are apart: the last writes of each arrive at the
        // other late, and some sort before what it had, so only the order key decides.
        link.cut();
        let (from, _) = progress(&db);
        eventually("the projector applies more events", || progress(&db).0 >= from + 20);
        stop.store(true, Ordering::Relaxed);
        link.restore();
        let written: u64 = writers.into_iter().map(|writer| writer.join().unwrap()).sum();
        assert!(written > 0);
        eventually("both nodes hold every write", || a.frontier() == b.frontier());
        let events = a.frontier()["events"].as_u64().unwrap();
        assert_eq!(events, written, "the node holds every write");
        eventually("the projector counts every event", || progress(&db).1 >= i64::try_from(events).unwrap());
        drop(projector);
        kills
    });
    assert_eq!(kills, 6);
    let (model, views) = (read_model(&db), views(&a));
    for (stream, (fields, events)) in &views {
        let (projected, counted) = model.get(stream).cloned().unwrap_or_default();
        assert_eq!(counted, *events, "seed {seed}: stream {stream}'s events counted once each");
        assert_eq!(&projected, fields, "seed {seed}: stream {stream}'s fields");
    }
    assert_eq!(model.len(), views.len(), "seed {seed}: no other stream");
    assert_eq!(views, self::views(&b), "seed {seed}: both nodes' views agree");

    // A rebuild starts over from position 0: a model spoiled meanwhile comes out right.
    let spoiled = Connection::open(&db).unwrap();
    spoiled.execute_batch("UPDATE streams SET events = events + 1; DELETE FROM fields;").unwrap();
    drop(spoiled);
    assert_ne!(read_model(&db), model);
    let _rebuilt = Projector::start_with(&a, &db, &["--rebuild"]);
    eventually("the rebuilt model equals the views", || read_model(&db) == model);
}
