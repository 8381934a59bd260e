//! A read model in SQLite, kept by following a `gundb node`'s event feed (`GET /events`).
//!
//! Every document stream of the node becomes rows of one table, one per stream and field,
//! and a count of events per stream. The position of the last event applied is stored in
//! the same SQLite transaction as the rows it produced, so the projector can be killed at
//! any moment and started again: it resumes after that position and neither skips nor
//! repeats an event.
//!
//! ```text
//! cargo run --example projection_sqlite -- --node 127.0.0.1:8081 --db read-model.sqlite
//! sqlite3 read-model.sqlite 'select stream, field, value from fields where value is not null'
//! ```
//!
//! The feed is in the order the node made events durable: causal, but not the canonical
//! order in which the node's views fold them. Two sites may set one field concurrently,
//! and the view keeps the write that sorts last in canonical order (Lamport counter, then
//! time, then id). So each row keeps the order key of the write that set it and a later
//! event only replaces it if it sorts after: the table converges to the views whatever
//! order the events came in. A removed field (`null`) stays as a row with a null value,
//! so that an older write arriving later cannot bring it back.
//!
//! Positions are local to one node: the table remembers which site it follows and refuses
//! another. `--rebuild` starts over from position 0 (after a change of the projection's
//! logic, or to follow another node).

use clap::Parser;
use rusqlite::{params, Connection, OptionalExtension, Transaction};
use serde_json::Value;
use std::io::{BufRead, BufReader, Read};
use std::path::PathBuf;
use std::time::Duration;

#[derive(Parser)]
struct Args {
    /// The node's HTTP address.
    #[arg(long)]
    node: String,
    /// The SQLite file of the read model.
    #[arg(long)]
    db: PathBuf,
    /// Drops the read model and projects everything again from position 0.
    #[arg(long)]
    rebuild: bool,
    /// Events applied per SQLite transaction at most (fewer when no more are waiting).
    #[arg(long, default_value_t = 256)]
    batch: usize,
}

type Result<T> = std::result::Result<T, Box<dyn std::error::Error + Send + Sync>>;

fn main() -> Result<()> {
    let args = Args::parse();
    let mut db = Connection::open(&args.db)?;
    // WAL: a reader (a report, a test) never blocks the projector. NORMAL: a commit
    // survives a crash of this process; after a power loss the last few may go, and with
    // them their checkpoint, so they are applied again: still exactly once.
    db.pragma_update(None, "journal_mode", "WAL")?;
    db.pragma_update(None, "synchronous", "NORMAL")?;
    // Dropping and making the tables in one transaction: a reader sees the old model or
    // the new one, never none.
    let tx = db.transaction()?;
    if args.rebuild {
        tx.execute_batch(
            "DROP TABLE IF EXISTS fields; DROP TABLE IF EXISTS streams; DROP TABLE IF EXISTS checkpoint;",
        )?;
    }
    tx.execute_batch(
        "CREATE TABLE IF NOT EXISTS fields (
             stream TEXT NOT NULL, field TEXT NOT NULL, value TEXT,
             lamport INTEGER NOT NULL, timestamp_ms INTEGER NOT NULL, id TEXT NOT NULL,
             PRIMARY KEY (stream, field));
         CREATE TABLE IF NOT EXISTS streams (stream TEXT PRIMARY KEY, events INTEGER NOT NULL);
         CREATE TABLE IF NOT EXISTS checkpoint (
             only INTEGER PRIMARY KEY CHECK (only = 0), site TEXT NOT NULL, position INTEGER NOT NULL);",
    )?;
    tx.commit()?;
    // The node sends a comment line every 15 s on an idle feed: a longer silence is a dead
    // connection.
    let agent =
        ureq::AgentBuilder::new().timeout_connect(Duration::from_secs(5)).timeout_read(Duration::from_secs(35)).build();
    let site = node_site(&agent, &args.node)?;
    let followed: Option<String> = db.query_row("SELECT site FROM checkpoint", [], |row| row.get(0)).optional()?;
    match followed {
        Some(followed) if followed != site => {
            return Err(format!(
                "{} follows site {followed}, and {} is site {site}: positions are local to a site; run with --rebuild \
                 to follow this one",
                args.db.display(),
                args.node
            )
            .into())
        }
        Some(_) => {}
        None => {
            db.execute("INSERT INTO checkpoint (only, site, position) VALUES (0, ?1, 0)", params![site])?;
        }
    }
    // The node may restart or a connection drop: start again from the checkpoint.
    let mut pause = Duration::from_millis(100);
    loop {
        let error = follow(&agent, &args, &site, &mut db, &mut pause);
        if error.is::<OtherSite>() {
            return Err(error);
        }
        eprintln!("following {} failed: {error}; reconnecting in {pause:?}", args.node);
        std::thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_secs(10));
    }
}

/// The node at the address is another site than the one the read model follows.
#[derive(Debug)]
struct OtherSite(String);

impl std::fmt::Display for OtherSite {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}; run with --rebuild to follow this node", self.0)
    }
}

impl std::error::Error for OtherSite {}

/// The id of the site the node serves.
fn node_site(agent: &ureq::Agent, node: &str) -> Result<String> {
    let health: Value = agent.get(&format!("http://{node}/health")).call()?.into_json()?;
    health["site"].as_str().map(str::to_owned).ok_or_else(|| format!("{node}/health names no site").into())
}

/// Reads the node's feed of document events after the checkpoint and applies it, a
/// transaction per batch, until the connection ends; returns why it ended. The feed is
/// asked for as the site the model follows: a node that is another refuses it (409).
fn follow(
    agent: &ureq::Agent,
    args: &Args,
    site: &str,
    db: &mut Connection,
    pause: &mut Duration,
) -> Box<dyn std::error::Error + Send + Sync> {
    match feed(agent, args, site, db, pause) {
        Ok(never) => match never {},
        Err(error) => error,
    }
}

fn feed(
    agent: &ureq::Agent,
    args: &Args,
    site: &str,
    db: &mut Connection,
    pause: &mut Duration,
) -> Result<std::convert::Infallible> {
    let after: i64 = db.query_row("SELECT position FROM checkpoint", [], |row| row.get(0))?;
    let url = format!("http://{}/events?type=gundb.document&after={after}&site={site}", args.node);
    let response = match agent.get(&url).call() {
        Ok(response) => response,
        Err(ureq::Error::Status(409, response)) => {
            let body: Value = response.into_json()?;
            return Err(Box::new(OtherSite(body["error"].as_str().unwrap_or("another site").to_owned())));
        }
        Err(error) => return Err(error.into()),
    };
    let mut feed = Feed { lines: BufReader::new(response.into_reader()) };
    eprintln!("following {} after position {after}", args.node);
    *pause = Duration::from_millis(100); // connected: the next failure starts the backoff over
    loop {
        let first = feed.next()?;
        let tx = db.transaction()?;
        let mut last = apply(&tx, &first)?;
        // More in this transaction only while they are already here: a quiet feed does
        // not hold a commit back.
        for _ in 1..args.batch {
            if !feed.ready() {
                break;
            }
            last = apply(&tx, &feed.next()?)?;
        }
        tx.execute("UPDATE checkpoint SET position = ?1", params![last])?;
        tx.commit()?;
    }
}

/// Applies one event of the feed; returns its position.
fn apply(tx: &Transaction<'_>, event: &Value) -> Result<i64> {
    let number = |name: &str| event[name].as_i64().ok_or_else(|| format!("event without {name}: {event}"));
    let (position, lamport, timestamp_ms) = (number("position")?, number("lamport")?, number("timestamp_ms")?);
    let stream = event["stream"].as_str().ok_or("event without stream")?;
    let id = event["id"].as_str().ok_or("event without id")?;
    tx.execute(
        "INSERT INTO streams (stream, events) VALUES (?1, 1) ON CONFLICT (stream) DO UPDATE SET events = events + 1",
        params![stream],
    )?;
    let Some(patch) = event["patch"].as_object() else {
        return Ok(position); // a document event this build could not decode: counted only
    };
    for (field, value) in patch {
        let value = (!value.is_null()).then(|| value.to_string());
        // The write that sorts last in canonical order wins, as in the view; a uuid's
        // text sorts as its bytes.
        tx.execute(
            "INSERT INTO fields (stream, field, value, lamport, timestamp_ms, id) VALUES (?1, ?2, ?3, ?4, ?5, ?6)
             ON CONFLICT (stream, field) DO UPDATE SET
                 value = excluded.value, lamport = excluded.lamport,
                 timestamp_ms = excluded.timestamp_ms, id = excluded.id
             WHERE (excluded.lamport, excluded.timestamp_ms, excluded.id) > (lamport, timestamp_ms, id)",
            params![stream, field, value, lamport, timestamp_ms, id],
        )?;
    }
    Ok(position)
}

/// A server-sent event stream, read event by event.
struct Feed {
    lines: BufReader<Box<dyn Read + Send + Sync + 'static>>,
}

impl Feed {
    /// The `data:` of the next event (comments and other fields skipped).
    fn next(&mut self) -> Result<Value> {
        let mut data = None;
        loop {
            let mut line = String::new();
            if self.lines.read_line(&mut line)? == 0 {
                return Err("the node closed the feed".into());
            }
            let line = line.trim_end_matches(['\n', '\r']);
            if line.is_empty() {
                if let Some(data) = data.take() {
                    return Ok(data);
                }
            } else if let Some(json) = line.strip_prefix("data: ") {
                data = Some(serde_json::from_str(json)?);
            } else if line.starts_with("event: gundb-error") {
                return Err(format!("the node ended the feed: {line}").into());
            }
        }
    }

    /// Whether a whole event is already read from the connection (not a comment, nor a
    /// part of one): taking it does not wait for the network.
    fn ready(&self) -> bool {
        let buffered = self.lines.buffer();
        !buffered.starts_with(b":") && buffered.windows(2).any(|two| two == b"\n\n")
    }
}
