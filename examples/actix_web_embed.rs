//! Embedding gundb in an existing actix-web application.
//!
//! The application counts page visits. It opens a [`Site`], shares it with its handlers
//! through `web::Data`, defines its own typed stream (`Visits`), and replicates with its
//! peers over authenticated TCP. Run two of them and visits counted on either show on both:
//!
//! ```text
//! export GUNDB_SECRET=change-me
//! cargo run --example actix_web_embed -- --http 127.0.0.1:8081 --listen 127.0.0.1:7401
//! cargo run --example actix_web_embed -- --http 127.0.0.1:8082 --listen 127.0.0.1:7402 --peer 127.0.0.1:7401
//! curl -X POST 127.0.0.1:8081/visit/home
//! curl -X POST 127.0.0.1:8082/visit/home
//! curl 127.0.0.1:8081/visits        # {"home":2}
//! ```

use actix_web::{web, App, HttpResponse, HttpServer};
use gundb::node::{tcp, NodeConfig};
use gundb::{Emit, EventMeta, GetView, Site, Stream, StreamId, View};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::net::SocketAddr;

/// The application's event: someone visited a page.
#[derive(Clone, Serialize, Deserialize)]
struct Visit {
    page: String,
}

/// The application's view: visits per page. Counting commutes, so the stream says so and
/// late events never cause a replay.
#[derive(Clone, Default, Serialize, Deserialize)]
struct PageCounts(BTreeMap<String, u64>);

impl View<Visit> for PageCounts {
    fn apply_event(&mut self, visit: &Visit, _meta: &EventMeta<'_>) {
        *self.0.entry(visit.page.clone()).or_default() += 1;
    }
}

struct Visits;

impl Stream for Visits {
    const TYPE_NAME: &'static str = "example.visits";
    type Event = Visit;
    type View = PageCounts;
    const COMMUTATIVE: bool = true;
}

/// Every site derives the same id from the name, so they all count into one stream.
fn visits() -> StreamId {
    StreamId::named("visits")
}

async fn visit(site: web::Data<Site>, page: web::Path<String>) -> actix_web::Result<HttpResponse> {
    let stream = site.stream::<Visits>(visits()).await.map_err(actix_web::error::ErrorInternalServerError)?;
    // Answered once the visit is durable on this site's disk.
    let emitted = stream
        .send(Emit::new(Visit { page: page.into_inner() }))
        .await
        .map_err(actix_web::error::ErrorServiceUnavailable)?
        .map_err(actix_web::error::ErrorInternalServerError)?;
    Ok(HttpResponse::Created().json(serde_json::json!({ "seq": emitted.seq.0 })))
}

async fn counts(site: web::Data<Site>) -> actix_web::Result<HttpResponse> {
    let stream = site.stream::<Visits>(visits()).await.map_err(actix_web::error::ErrorInternalServerError)?;
    let reply = stream
        .send(GetView::new())
        .await
        .map_err(actix_web::error::ErrorServiceUnavailable)?
        .map_err(actix_web::error::ErrorInternalServerError)?;
    Ok(HttpResponse::Ok().json(reply.view.0))
}

/// `--name value` pairs from the command line.
fn options() -> BTreeMap<String, Vec<String>> {
    let mut options: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let args: Vec<String> = std::env::args().skip(1).collect();
    for pair in args.chunks(2) {
        if let [name, value] = pair {
            options.entry(name.trim_start_matches("--").to_owned()).or_default().push(value.clone());
        }
    }
    options
}

#[actix_web::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let options = options();
    let first =
        |name: &str, default: &str| options.get(name).and_then(|v| v.first()).cloned().unwrap_or(default.into());
    let secret = std::env::var("GUNDB_SECRET").map_err(|_| "set GUNDB_SECRET to the secret the peers share")?;

    // The site lives as long as the actix system; `Site` is a cheap handle to clone.
    let site = match options.get("data").and_then(|v| v.first()) {
        Some(path) => Site::open(path)?,
        None => Site::temporary()?,
    };
    site.register::<Visits>().await?;

    // Replication: accept peers, and keep dialing the ones named.
    let listener = tokio::net::TcpListener::bind(first("listen", "127.0.0.1:7401")).await?;
    println!("replicating on {}", listener.local_addr()?);
    tcp::serve(site.clone(), listener, secret.clone().into_bytes(), NodeConfig::default());
    for peer in options.get("peer").into_iter().flatten() {
        tcp::keep_dialing(
            site.clone(),
            peer.parse::<SocketAddr>()?,
            secret.clone().into_bytes(),
            NodeConfig::default(),
        );
    }

    // The application's own routes, with the site shared like any other state.
    let http = first("http", "127.0.0.1:8081");
    println!("serving http://{http}/visits");
    let data = web::Data::new(site);
    HttpServer::new(move || {
        App::new()
            .app_data(data.clone())
            .route("/visit/{page}", web::post().to(visit))
            .route("/visits", web::get().to(counts))
    })
    .bind(http)?
    .run()
    .await?;
    Ok(())
}
