//! `gundb inspect`: a look into a site's database without writing code. It reads only:
//! it refuses a folder that holds no gundb database rather than make one, and it says so
//! when a running process (a `gundb node`) holds the database.

use anyhow::{bail, Context as _, Result};
use gundb::doc::{event_json, Document, Fields, Patch};
use gundb::storage::{SledStorage, Storage, StorageError};
use gundb::{codec, Stream, StreamId, View};
use serde_json::{json, Value};
use std::ops::Bound;
use std::path::{Path, PathBuf};

/// Events read from storage per step while printing a stream.
const EVENTS_PAGE: usize = 1_000;

#[derive(clap::Args)]
pub struct InspectArgs {
    /// The site's data folder (what `gundb node --data` was given).
    #[arg(long)]
    data: PathBuf,
    /// JSON for scripts: one object (for the summary and `streams`), or one object per
    /// line (for `stream`).
    #[arg(long)]
    json: bool,
    #[command(subcommand)]
    what: Option<What>,
}

#[derive(clap::Subcommand)]
enum What {
    /// The streams, a page at a time: id, type, lanes, events.
    Streams {
        /// Start after this stream id (the `next` of the previous page).
        #[arg(long)]
        after: Option<String>,
        /// Streams per page.
        #[arg(long, default_value_t = 100)]
        limit: u32,
    },
    /// One stream's events as JSON lines in canonical order (document patches decoded,
    /// other payloads in hex), then its view if it is a document.
    Stream {
        /// Its id, or the name `gundb node`'s HTTP paths use.
        name: String,
    },
}

pub fn run(args: InspectArgs) -> Result<()> {
    let storage = open(&args.data)?;
    let mut out = std::io::stdout().lock();
    match args.what {
        None => summary(&storage, &args.data, args.json, &mut out),
        Some(What::Streams { after, limit }) => streams(&storage, after, limit, args.json, &mut out),
        Some(What::Stream { name }) => stream(&storage, &name, args.json, &mut out),
    }
}

/// Opens the database in `folder`, which must hold one.
fn open(folder: &Path) -> Result<SledStorage> {
    // sled makes a database in any folder it opens: look for its files first.
    if !folder.join("db").is_file() || !folder.join("conf").is_file() {
        bail!(
            "{} holds no gundb database (no sled `db` and `conf` files); give the folder `gundb node --data` used",
            folder.display()
        );
    }
    SledStorage::open(folder).map_err(|error| match &error {
        StorageError::Sled(cause) if cause.to_string().contains("could not acquire lock") => anyhow::anyhow!(
            "the database in {} is held by a running process (a `gundb node`?): stop it, or inspect a copy of the \
             folder",
            folder.display()
        ),
        _ => anyhow::Error::new(error).context(format!("opening the database in {}", folder.display())),
    })
}

fn summary(storage: &SledStorage, folder: &Path, json: bool, out: &mut impl std::io::Write) -> Result<()> {
    let disk_bytes = folder_bytes(folder)?;
    let events = storage.log_end().0;
    let site = storage.site_id().to_string();
    if json {
        let summary = json!({
            "site": site,
            "format": gundb::storage::STORAGE_FORMAT,
            "disk_bytes": disk_bytes,
            "events": events,
        });
        writeln!(out, "{summary}")?;
    } else {
        writeln!(out, "site     {site}")?;
        writeln!(out, "format   {}", gundb::storage::STORAGE_FORMAT)?;
        writeln!(out, "folder   {} ({:.1} MiB on disk)", folder.display(), disk_bytes as f64 / (1 << 20) as f64)?;
        writeln!(out, "events   {events} in the site's log")?;
        writeln!(out, "streams  `gundb inspect --data {} streams`", folder.display())?;
    }
    Ok(())
}

/// Bytes of the files in `folder` and below.
fn folder_bytes(folder: &Path) -> Result<u64> {
    let mut bytes = 0;
    for entry in std::fs::read_dir(folder).with_context(|| format!("listing {}", folder.display()))? {
        let entry = entry?;
        let kind = entry.file_type()?;
        if kind.is_dir() {
            bytes += folder_bytes(&entry.path())?;
        } else if kind.is_file() {
            bytes += entry.metadata()?.len();
        }
    }
    Ok(bytes)
}

fn streams(
    storage: &SledStorage,
    after: Option<String>,
    limit: u32,
    json: bool,
    out: &mut impl std::io::Write,
) -> Result<()> {
    let after = after
        .map(|text| text.parse().map(StreamId).with_context(|| format!("--after takes a stream id; got {text:?}")))
        .transpose()?;
    let limit = usize::try_from(limit.clamp(1, gundb::limits::STREAMS_PAGE_MAX))?;
    let page = storage.streams_page(after, limit)?;
    let next = if page.len() == limit { page.last().map(|(id, _)| id.to_string()) } else { None };
    let mut rows = Vec::new();
    for (stream, stream_type) in page {
        let frontier = storage.frontier(stream)?;
        let events: u64 = frontier.iter().map(|(_, seq)| seq.0).sum();
        rows.push(json!({ "id": stream.to_string(), "type": stream_type, "lanes": frontier.len(), "events": events }));
    }
    if json {
        writeln!(out, "{}", json!({ "streams": rows, "next": next }))?;
        return Ok(());
    }
    writeln!(out, "{:<36}  {:<24} {:>6} {:>10}", "stream", "type", "lanes", "events")?;
    for row in &rows {
        let text = |key: &str| row[key].as_str().unwrap_or_default().to_owned();
        writeln!(out, "{:<36}  {:<24} {:>6} {:>10}", text("id"), text("type"), row["lanes"], row["events"])?;
    }
    if let Some(next) = next {
        writeln!(out, "more: --after {next}")?;
    }
    Ok(())
}

fn stream(storage: &SledStorage, name: &str, json: bool, out: &mut impl std::io::Write) -> Result<()> {
    let stream = StreamId::from_name_or_id(name);
    let Some(stream_type) = storage.stream_type(stream)? else {
        bail!("this site holds no stream {name} ({stream})");
    };
    let document = stream_type == Document::TYPE_NAME;
    let mut view = Fields::default();
    let mut from = Bound::Unbounded;
    loop {
        let page = storage.events_from(stream, from, None, EVENTS_PAGE)?;
        let Some(last) = page.last() else { break };
        from = Bound::Excluded(last.order_key());
        for event in &page {
            writeln!(out, "{}", event_json(event))?;
            if document {
                // Canonical order, as the stream's actor folds; a patch this build cannot
                // decode is skipped, as the view skips it.
                if let Ok(patch) = codec::decode::<Patch>(&event.payload) {
                    view.apply_event(&patch, &event.meta());
                }
            }
        }
    }
    if document {
        let view: Value = view.to_json();
        if json {
            writeln!(out, "{}", json!({ "view": view }))?;
        } else {
            writeln!(out, "view: {}", serde_json::to_string_pretty(&view)?)?;
        }
    }
    Ok(())
}
