//! `gundb node`: one site as a server. It replicates with its peers over authenticated TCP
//! and serves the HTTP API of [`gundb::http`] over its JSON document streams. It stops
//! cleanly on SIGINT or SIGTERM: the HTTP server drains, the connections to peers close,
//! and the database is closed after everything queued is on disk.

use anyhow::{bail, Context as _, Result};
use gundb::doc::Document;
use gundb::http::{Access, Api};
use gundb::node::{tcp, NodeConfig};
use gundb::Site;
use std::io::Write as _;
use std::net::SocketAddr;
use std::num::NonZeroUsize;
use std::path::PathBuf;
use std::time::Duration;

/// What `gundb node` is started with.
#[derive(clap::Args)]
pub struct NodeArgs {
    /// The site's sled database (created if missing). Default: a temporary folder,
    /// deleted when the node stops.
    #[arg(long)]
    data: Option<PathBuf>,
    /// Where peers connect (port 0: chosen by the system).
    #[arg(long, default_value = "127.0.0.1:7400")]
    listen: SocketAddr,
    /// A peer to keep connected to; repeat for several.
    #[arg(long)]
    peer: Vec<SocketAddr>,
    /// The file holding the secret every node of the cluster shares (trailing newlines
    /// are ignored).
    #[arg(long)]
    secret_file: PathBuf,
    /// Where the HTTP API listens (port 0: chosen by the system).
    #[arg(long, default_value = "127.0.0.1:7480")]
    http: SocketAddr,
    /// A file holding the token the HTTP API requires (`Authorization: Bearer <token>`) on
    /// every route but `/health`; without it the API is open to whoever reaches it.
    #[arg(long)]
    http_token_file: Option<PathBuf>,
    /// Request bodies larger than this get 413.
    #[arg(long, default_value_t = gundb::http::BODY_BYTES_DEFAULT)]
    max_body: usize,
    /// `GET /events` subscribers served at once; the next gets 503.
    #[arg(long, default_value_t = gundb::limits::HTTP_SUBSCRIBERS_MAX)]
    max_subscribers: usize,
    /// Threads serving HTTP requests [default: one fewer than the cores, at least one: the
    /// site's own threads (its actors, the commit writer) take about a core under load].
    #[arg(long)]
    http_workers: Option<NonZeroUsize>,
    /// How often a node tells its peers what it has, in milliseconds; three intervals of
    /// silence close a connection.
    #[arg(long, default_value_t = 1_000)]
    hello_ms: u64,
}

pub fn run(args: NodeArgs) -> Result<()> {
    let secret = read_secret(&args.secret_file, "the secret file", "the cluster's shared secret")?;
    let access = match &args.http_token_file {
        Some(path) => Access::token(&read_secret(path, "the HTTP token file", "the token HTTP clients must send")?),
        None => Access::open(),
    };
    let system = actix_web::rt::System::new();
    system.block_on(serve(args, secret, access))?;
    // The system's actors are gone, and with them the last handle on the database: the
    // storage's writer has acknowledged everything queued and the database is closed.
    tracing::info!("stopped");
    Ok(())
}

async fn serve(args: NodeArgs, secret: Vec<u8>, access: Access) -> Result<()> {
    let site = match &args.data {
        Some(path) => Site::open(path).with_context(|| format!("opening the database in {}", path.display()))?,
        None => Site::temporary()?,
    };
    site.register::<Document>().await?;
    let config = NodeConfig { hello_every: Some(Duration::from_millis(args.hello_ms.max(1))), ..NodeConfig::default() };
    let listener =
        tokio::net::TcpListener::bind(args.listen).await.with_context(|| format!("listening on {}", args.listen))?;
    let peers = listener.local_addr()?;
    tcp::serve(site.clone(), listener, secret.clone(), config.clone());
    for &peer in &args.peer {
        tcp::keep_dialing(site.clone(), peer, secret.clone(), config.clone());
    }
    let api = Api::new(site.clone()).body_limit(args.max_body).access(access).subscribers_max(args.max_subscribers);
    let server = actix_web::HttpServer::new(move || actix_web::App::new().configure(api.routes()))
        .workers(args.http_workers.unwrap_or_else(default_http_workers).get())
        // A response is written once its write is durable: send it at once.
        .tcp_nodelay(true)
        .shutdown_timeout(5)
        .bind(args.http)
        .with_context(|| format!("serving HTTP on {}", args.http))?;
    let http = server.addrs().first().copied().context("the HTTP server bound no address")?;
    tracing::info!(site = %site.id(), %peers, %http, peers_dialed = args.peer.len(), "node started");
    // One line on stdout for scripts and tests that start nodes on port 0.
    let mut stdout = std::io::stdout();
    writeln!(stdout, "gundb node ready site={} peers={peers} http={http}", site.id())?;
    stdout.flush()?;
    // Runs until SIGINT or SIGTERM, then drains the requests in flight.
    server.run().await?;
    tracing::info!("signal received; closing peers and the database");
    Ok(())
}

/// The bytes of a file holding a secret (`what`), trailing newlines left out; an empty one
/// is refused, saying what belongs in it (`holds`).
fn read_secret(path: &PathBuf, what: &str, holds: &str) -> Result<Vec<u8>> {
    let mut secret = std::fs::read(path).with_context(|| format!("reading {what} {}", path.display()))?;
    while secret.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
        secret.pop();
    }
    if secret.is_empty() {
        bail!("{what} {} is empty; put {holds} in it", path.display());
    }
    Ok(secret)
}

/// One fewer HTTP worker than the cores, at least one.
fn default_http_workers() -> NonZeroUsize {
    let cores = std::thread::available_parallelism().map_or(1, NonZeroUsize::get);
    NonZeroUsize::new(cores - 1).unwrap_or(NonZeroUsize::MIN)
}
