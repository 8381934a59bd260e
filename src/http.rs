//! The HTTP API of `gundb node`: a site's [`Document`] streams over actix-web.
//!
//! | method and path | what it does |
//! |---|---|
//! | `POST /streams/{name}/events` | appends a patch (a JSON object; `null` removes a field); answers `201` once durable |
//! | `GET /streams/{name}` | the stream's view, as a JSON object |
//! | `GET /streams/{name}/events?after=CURSOR&limit=N` | its history in canonical order, a page at a time |
//! | `GET /streams?after=ID&limit=N` | the streams this site holds, with their types, a page at a time |
//! | `GET /health` | the site id and a summary of its frontier: lanes, events and a digest |
//! | `GET /frontier?after=ID&limit=N` | the stored frontier, a page of streams at a time |
//! | `GET /metrics` | the router's counters, in Prometheus' text format |
//! | `GET /events?after=POSITION&type=T` or `&stream=A,B` | every event this site holds (of a type, or of some streams) in position order, then live, as server-sent events |
//!
//! A stream's `{name}` is its id when it parses as a UUID, and otherwise a name every site
//! maps to the same id ([`StreamId::named`]). Errors are JSON objects `{"error": reason}`:
//! 400 for a body that is not a patch, 401 without the token an [`Access`] requires, 404 for
//! a stream this site does not hold, 409 for a stream of another type, 413 for a body over
//! the limit, 503 while storage is busy or when the node serves as many event subscribers as
//! it may.
//!
//! `GET /events` answers `text/event-stream`: each event is one server-sent event whose `id:`
//! is its position in this site's log and whose `data:` is a JSON object (`position`,
//! `stream`, `type`, `id`, `site`, `seq`, `lamport`, `timestamp_ms`, and `patch` for a
//! document's event, `payload_hex` for others). A browser's `EventSource` resumes after the
//! last one it got by sending it as `Last-Event-ID`, which wins over `after` (on a node
//! without a token: `EventSource` cannot send `Authorization`). Positions are local to the
//! site that gave them: the response names its site in a `Gundb-Site` header, and
//! `&site=ID` makes a node that is another site refuse with 409. A failure of the feed
//! ends it with an event named `gundb-error`. A comment line every
//! [`limits::HTTP_EVENTS_KEEPALIVE`] keeps an idle subscription's connection open.

use crate::doc::{Document, Patch};
use crate::event::OrderKey;
use crate::handle::StreamHandle;
use crate::id::LogPos;
use crate::id::{EventId, StreamId};
use crate::limits;
use crate::site::{Site, SiteError};
use crate::storage::StorageError;
use crate::stream::{Emit, GetView, History, StreamError};
use crate::subscription::{Filter, PositionedEvent, SubscribeError, Subscription};
use crate::{codec, router::RouterError};
use actix_web::body::{EitherBody, MessageBody};
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::{header, StatusCode};
use actix_web::middleware::{from_fn, Next};
use actix_web::{web, HttpRequest, HttpResponse, ResponseError};
use hmac::{Hmac, KeyInit, Mac};
use serde::Deserialize;
use serde_json::{json, Map, Value};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Bodies larger than this get 413 unless configured otherwise
/// ([`limits::HTTP_BODY_BYTES_DEFAULT`]).
pub const BODY_BYTES_DEFAULT: usize = limits::HTTP_BODY_BYTES_DEFAULT;

/// Why a request failed; each maps to a status code and a JSON body naming the reason.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The body is not a patch.
    #[error("{0}")]
    BadRequest(String),
    /// This site holds no stream by that name.
    #[error("no stream {0} at this site")]
    NotFound(String),
    /// The stream exists with another type.
    #[error("stream {stream} has type {stream_type:?}, not a JSON document")]
    NotADocument {
        /// The stream.
        stream: StreamId,
        /// Its type.
        stream_type: String,
    },
    /// The body is larger than the node accepts.
    #[error(
        "the body is over the limit of {0} bytes; send smaller patches, or start the node with a larger --max-body"
    )]
    TooLarge(usize),
    /// The body could not be read.
    #[error("reading the body: {0}")]
    Body(String),
    /// The site failed.
    #[error("{0}")]
    Site(#[from] SiteError),
    /// The stream failed.
    #[error("{0}")]
    Stream(#[from] StreamError),
    /// The stream actor did not answer.
    #[error("the stream stopped: {0}")]
    Mailbox(#[from] actix::MailboxError),
    /// The node serves as many event subscribers as it may.
    #[error(
        "this node serves {0} event subscribers already, its limit; close one, or start the node with a larger \
         --max-subscribers"
    )]
    TooManySubscribers(usize),
    /// The checkpoint names another site than this node's: positions are local to a site.
    #[error(
        "the checkpoint is from site {named}, and this node is site {site}: positions are local to a site; start \
         again from 0 to follow this one"
    )]
    OtherSite {
        /// The site the request named.
        named: String,
        /// This node's site.
        site: crate::SiteId,
    },
    /// The subscription could not start (a checkpoint past the end of the log).
    #[error("{0}")]
    Subscribe(#[from] SubscribeError),
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        match self {
            ApiError::BadRequest(_) | ApiError::Body(_) | ApiError::Subscribe(SubscribeError::AheadOfLog { .. }) => {
                StatusCode::BAD_REQUEST
            }
            ApiError::TooManySubscribers(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::OtherSite { .. } => StatusCode::CONFLICT,
            ApiError::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::NotADocument { .. } | ApiError::Site(SiteError::Router(RouterError::TypeMismatch { .. })) => {
                StatusCode::CONFLICT
            }
            ApiError::Stream(StreamError::Storage(StorageError::Busy { .. })) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Site(_) | ApiError::Stream(_) | ApiError::Mailbox(_) | ApiError::Subscribe(_) => {
                StatusCode::INTERNAL_SERVER_ERROR
            }
        }
    }

    fn error_response(&self) -> HttpResponse {
        HttpResponse::build(self.status_code()).json(json!({ "error": self.to_string() }))
    }
}

/// Who may call the API. With a token, every route but `/health` answers 401 unless the
/// request says `Authorization: Bearer <token>`; the token is compared in constant time.
#[derive(Clone, Default)]
pub struct Access {
    /// The HMAC-SHA256 tag of the token, keyed by it; `None`: open to anyone who can reach it.
    tag: Option<Vec<u8>>,
}

/// What a token is turned into before it is compared: comparing these tags in constant
/// time compares the tokens without a timing leak.
type TokenMac = Hmac<sha2::Sha256>;

impl Access {
    /// Every route open: for a node only its own host or a trusted network reaches.
    pub fn open() -> Self {
        Self::default()
    }

    /// Every route but `/health` requires `token`.
    pub fn token(token: &[u8]) -> Self {
        Self { tag: Some(token_tag(token).finalize().into_bytes().to_vec()) }
    }

    /// True when the request may go on.
    fn admits(&self, request: &ServiceRequest) -> bool {
        let Some(tag) = &self.tag else { return true };
        let presented = request.headers().get(header::AUTHORIZATION).and_then(|value| value.to_str().ok());
        match presented.and_then(|value| value.strip_prefix("Bearer ")) {
            Some(token) => token_tag(token.as_bytes()).verify_slice(tag).is_ok(),
            None => false,
        }
    }
}

fn token_tag(token: &[u8]) -> TokenMac {
    let mut mac = TokenMac::new_from_slice(token).expect("HMAC takes keys of any length");
    mac.update(b"gundb http bearer token");
    mac
}

/// Answers 401 to a request without the token its [`Access`] requires.
async fn require_token(
    request: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<EitherBody<impl MessageBody>>, actix_web::Error> {
    let admitted = request.app_data::<web::Data<Access>>().is_none_or(|access| access.admits(&request));
    if admitted {
        return next.call(request).await.map(ServiceResponse::map_into_left_body);
    }
    let refusal = HttpResponse::Unauthorized()
        .insert_header((header::WWW_AUTHENTICATE, "Bearer"))
        .json(json!({ "error": "this node requires `Authorization: Bearer <token>` (see --http-token-file)" }));
    Ok(request.into_response(refusal).map_into_right_body())
}

/// The HTTP API of one site and its settings. Clones share one limit on event
/// subscribers, so build it once and clone it into the `HttpServer` factory, which runs
/// once per worker.
///
/// # Examples
/// ```no_run
/// use actix_web::{App, HttpServer};
/// use gundb::http::{Access, Api};
/// use gundb::Site;
///
/// #[actix_web::main]
/// async fn main() -> Result<(), Box<dyn std::error::Error>> {
///     let site = Site::open("./data")?;
///     let token = std::fs::read_to_string("./http-token")?;
///     let api = Api::new(site).access(Access::token(token.trim_end().as_bytes())).subscribers_max(16);
///     HttpServer::new(move || App::new().configure(api.routes())).bind("127.0.0.1:8080")?.run().await?;
///     Ok(())
/// }
/// ```
#[derive(Clone)]
pub struct Api {
    site: Site,
    body_limit: usize,
    access: Access,
    subscribers: Subscribers,
}

/// The event subscribers a node serves at once, shared by its workers.
#[derive(Clone)]
struct Subscribers {
    permits: Arc<Semaphore>,
    max: usize,
}

impl Api {
    /// The API of `site`: open to anyone who can reach it, bodies up to
    /// [`BODY_BYTES_DEFAULT`], [`limits::HTTP_SUBSCRIBERS_MAX`] event subscribers.
    pub fn new(site: Site) -> Self {
        Self {
            site,
            body_limit: BODY_BYTES_DEFAULT,
            access: Access::open(),
            subscribers: Subscribers::new(limits::HTTP_SUBSCRIBERS_MAX),
        }
    }

    /// Request bodies larger than `bytes` get 413.
    pub fn body_limit(mut self, bytes: usize) -> Self {
        self.body_limit = bytes;
        self
    }

    /// Every route but `/health` open only to whom `access` admits.
    pub fn access(mut self, access: Access) -> Self {
        self.access = access;
        self
    }

    /// At most `max` `GET /events` subscribers at once; the next gets 503.
    pub fn subscribers_max(mut self, max: usize) -> Self {
        self.subscribers = Subscribers::new(max);
        self
    }

    /// Registers the routes: call it from the factory of an `HttpServer`.
    pub fn routes(&self) -> impl FnOnce(&mut web::ServiceConfig) {
        let api = self.clone();
        move |config| {
            config
                .app_data(web::Data::new(Handles::new(api.site.clone())))
                .app_data(web::Data::new(api.site))
                .app_data(web::Data::new(BodyLimit(api.body_limit)))
                .app_data(web::Data::new(api.access))
                .app_data(web::Data::new(api.subscribers))
                .app_data(web::PayloadConfig::new(api.body_limit))
                .route("/health", web::get().to(health))
                .service(
                    web::scope("")
                        .wrap(from_fn(require_token))
                        .route("/metrics", web::get().to(metrics))
                        .route("/frontier", web::get().to(frontier))
                        .route("/events", web::get().to(events))
                        .route("/streams", web::get().to(streams))
                        // One resource for both methods, before the view's: a path is
                        // matched (a regular expression) once per resource it is tried
                        // against, a cost each write pays.
                        .service(
                            web::resource("/streams/{name}/events")
                                .route(web::post().to(append))
                                .route(web::get().to(history)),
                        )
                        .route("/streams/{name}", web::get().to(view)),
                );
        }
    }
}

impl Subscribers {
    fn new(max: usize) -> Self {
        Self { permits: Arc::new(Semaphore::new(max.min(Semaphore::MAX_PERMITS))), max }
    }
}

/// The routes of [`Api::new`]`(site).body_limit(body_limit)`: open to anyone who can reach
/// them. Each call has its own limit on event subscribers; build an [`Api`] once to share
/// one among an `HttpServer`'s workers.
pub fn routes(site: Site, body_limit: usize) -> impl FnOnce(&mut web::ServiceConfig) {
    Api::new(site).body_limit(body_limit).routes()
}

/// The document stream handles of one worker (the routes are registered once per
/// worker), at most [`limits::HTTP_HANDLES_MAX`].
struct Handles {
    site: Site,
    open: Mutex<HashMap<StreamId, StreamHandle<Document>>>,
}

impl Handles {
    fn new(site: Site) -> Self {
        Self { site, open: Mutex::new(HashMap::new()) }
    }

    /// A handle on document stream `stream`: the one kept, or a new one, kept.
    async fn get(&self, stream: StreamId) -> Result<StreamHandle<Document>, SiteError> {
        if let Some(handle) = self.lock().get(&stream) {
            return Ok(handle.clone());
        }
        let handle = self.site.stream::<Document>(stream).await?;
        let mut open = self.lock();
        if open.len() >= limits::HTTP_HANDLES_MAX {
            if let Some(&dropped) = open.keys().next() {
                open.remove(&dropped);
            }
        }
        open.insert(stream, handle.clone());
        Ok(handle)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<StreamId, StreamHandle<Document>>> {
        // The map is consistent at every await and panic point: a poisoned lock's is usable.
        self.open.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The largest request body accepted, in bytes.
struct BodyLimit(usize);

/// The id a path's `{name}` stands for.
fn stream_id(name: &str) -> StreamId {
    StreamId::from_name_or_id(name)
}

/// The stream `name` names, if this site holds it as a document.
fn existing(site: &Site, name: &str) -> Result<StreamId, ApiError> {
    let stream = stream_id(name);
    match site.storage().stream_type(stream).map_err(SiteError::from)? {
        None => Err(ApiError::NotFound(name.to_owned())),
        Some(stream_type) if stream_type != <Document as crate::Stream>::TYPE_NAME => {
            Err(ApiError::NotADocument { stream, stream_type })
        }
        Some(_) => Ok(stream),
    }
}

async fn append(
    handles: web::Data<Handles>,
    limit: web::Data<BodyLimit>,
    name: web::Path<String>,
    body: Result<web::Bytes, actix_web::Error>,
) -> Result<HttpResponse, ApiError> {
    let body = body.map_err(|error| match error.as_response_error().status_code() {
        StatusCode::PAYLOAD_TOO_LARGE => ApiError::TooLarge(limit.0),
        _ => ApiError::Body(error.to_string()),
    })?;
    let patch = Patch::from_slice(&body).map_err(|e| ApiError::BadRequest(e.to_string()))?;
    let stream = stream_id(&name);
    let emitted = handles.get(stream).await?.send(Emit::new(patch)).await??;
    Ok(HttpResponse::Created().json(json!({
        "stream": stream.to_string(),
        "id": emitted.id.to_string(),
        "seq": emitted.seq.0,
        "lamport": emitted.lamport,
    })))
}

async fn view(handles: web::Data<Handles>, name: web::Path<String>) -> Result<HttpResponse, ApiError> {
    let stream = existing(&handles.site, &name)?;
    let reply = handles.get(stream).await?.send(GetView::new()).await??;
    let events: u64 = reply.frontier.iter().map(|(_, seq)| seq.0).sum();
    Ok(HttpResponse::Ok().json(json!({
        "stream": stream.to_string(),
        "events": events,
        "unfolded": reply.unfolded,
        "view": reply.view.to_json(),
    })))
}

/// The query of a history request.
#[derive(Debug, Deserialize)]
struct Page {
    /// The `next` cursor of the previous page.
    after: Option<String>,
    limit: Option<u32>,
}

async fn history(
    handles: web::Data<Handles>,
    name: web::Path<String>,
    page: web::Query<Page>,
) -> Result<HttpResponse, ApiError> {
    let stream = existing(&handles.site, &name)?;
    let after = page.after.as_deref().map(parse_cursor).transpose()?;
    let limit = page.limit.unwrap_or(limits::HTTP_HISTORY_PAGE_DEFAULT).clamp(1, limits::HISTORY_LIMIT_MAX);
    let reply = handles.get(stream).await?.send(History { after, limit }).await??;
    let events: Vec<Value> = reply
        .events
        .iter()
        .map(|event| {
            json!({
                "id": event.id.to_string(),
                "site": event.lane.site.to_string(),
                "seq": event.seq.0,
                "lamport": event.lamport,
                "timestamp_ms": event.timestamp_ms,
                // Null for an event this build cannot decode (a newer one wrote it).
                "patch": codec::decode::<Patch>(&event.payload).map(|p| p.to_json()).unwrap_or(Value::Null),
            })
        })
        .collect();
    let next = reply.next_after(after).map(|key| cursor(&key));
    Ok(HttpResponse::Ok().json(json!({ "events": events, "more": reply.more, "next": next })))
}

/// A history cursor: `lamport-timestamp-id`, readable and sorted like the key.
fn cursor(key: &OrderKey) -> String {
    format!("{}-{}-{}", key.lamport, key.timestamp_ms, key.id)
}

fn parse_cursor(text: &str) -> Result<OrderKey, ApiError> {
    let bad = || ApiError::BadRequest(format!("`after` is a `next` cursor from an earlier page; got {text:?}"));
    let mut parts = text.splitn(3, '-');
    let mut part = || parts.next().ok_or_else(bad);
    let lamport = part()?.parse().map_err(|_| bad())?;
    let timestamp_ms = part()?.parse().map_err(|_| bad())?;
    let id = part()?.parse().map(EventId).map_err(|_| bad())?;
    Ok(OrderKey { lamport, timestamp_ms, id })
}

/// The query of `GET /events`.
#[derive(Debug, Deserialize)]
struct EventsQuery {
    /// The position to start after (0: from the start).
    after: Option<u64>,
    /// Only events of streams of this type.
    #[serde(rename = "type")]
    stream_type: Option<String>,
    /// Only events of these streams: names or ids, comma-separated.
    stream: Option<String>,
    /// The site the checkpoint is from: refused if this node is another.
    site: Option<String>,
}

/// Every event this site holds that the query asks for, as server-sent events.
async fn events(
    request: HttpRequest,
    site: web::Data<Site>,
    subscribers: web::Data<Subscribers>,
    query: web::Query<EventsQuery>,
) -> Result<HttpResponse, ApiError> {
    let last_event_id = match request.headers().get("Last-Event-ID") {
        None => None,
        Some(value) => Some(value.to_str().ok().and_then(|text| text.trim().parse::<u64>().ok()).ok_or_else(|| {
            ApiError::BadRequest("`Last-Event-ID` is the `id` of an event this site sent: a position".into())
        })?),
    };
    let after = LogPos(last_event_id.or(query.after).unwrap_or(0));
    let filter = match (&query.stream_type, &query.stream) {
        (Some(_), Some(_)) => return Err(ApiError::BadRequest("give `type` or `stream`, not both".into())),
        (Some(stream_type), None) => Filter::Type(stream_type.clone()),
        (None, Some(streams)) => Filter::Streams(streams.split(',').map(stream_id).collect()),
        (None, None) => Filter::All,
    };
    // Positions are local to a site: a checkpoint of another is refused, not misread.
    if let Some(named) = &query.site {
        if named.parse().ok().map(crate::SiteId) != Some(site.id()) {
            return Err(ApiError::OtherSite { named: named.clone(), site: site.id() });
        }
    }
    // A checkpoint that cannot be served is refused as such, whether or not there is room.
    let end = site.storage().log_end();
    if after > end {
        return Err(SubscribeError::AheadOfLog { after, end }.into());
    }
    let permit = Arc::clone(&subscribers.permits)
        .try_acquire_owned()
        .map_err(|_| ApiError::TooManySubscribers(subscribers.max))?;
    let subscription = site.subscribe_all(filter, after)?;
    Ok(HttpResponse::Ok()
        .content_type("text/event-stream")
        .insert_header((header::CACHE_CONTROL, "no-cache"))
        .insert_header(("Gundb-Site", site.id().to_string()))
        .streaming(server_sent(subscription, permit)))
}

/// The body of `GET /events`: each page of events ready as one chunk, a comment when idle
/// for [`limits::HTTP_EVENTS_KEEPALIVE`], an `error` event if the subscription fails. The
/// permit goes when the client does (the body is dropped).
fn server_sent(
    subscription: Subscription,
    permit: OwnedSemaphorePermit,
) -> impl futures::Stream<Item = Result<web::Bytes, std::convert::Infallible>> {
    futures::stream::unfold(Some((subscription, permit)), |state| async move {
        let (mut subscription, permit) = state?;
        let next = tokio::select! {
            next = subscription.next() => next,
            () = tokio::time::sleep(limits::HTTP_EVENTS_KEEPALIVE) => {
                return Some((Ok(web::Bytes::from_static(b": idle\n\n")), Some((subscription, permit))));
            }
        };
        let mut chunk = String::new();
        match next? {
            Ok(item) => {
                push_server_sent(&mut chunk, &item);
                for item in subscription.buffered() {
                    push_server_sent(&mut chunk, &item);
                }
            }
            Err(error) => {
                // Not `error`: that name is `EventSource`'s own, for a lost connection.
                chunk = format!("event: gundb-error\ndata: {}\n\n", json!({ "error": error.to_string() }));
                return Some((Ok(chunk.into()), None));
            }
        }
        Some((Ok(chunk.into()), Some((subscription, permit))))
    })
}

/// Appends `item` as one server-sent event.
fn push_server_sent(chunk: &mut String, item: &PositionedEvent) {
    let mut data = crate::doc::event_json(&item.event);
    data["position"] = item.position.0.into();
    // JSON on one line: a `data:` line cannot hold a line break.
    chunk.push_str(&format!("id: {}\ndata: {data}\n\n", item.position));
}

/// The query of a `/streams` or `/frontier` page.
#[derive(Debug, Deserialize)]
struct StreamsPage {
    /// The `next` stream id of the previous page.
    after: Option<String>,
    limit: Option<u32>,
}

/// Streams with their types, and the cursor of the next page (`None` on the last).
type StreamsAndNext = (Vec<(StreamId, String)>, Option<String>);

/// The page of the streams this site holds that `page` asks for.
fn streams_page(site: &Site, page: &StreamsPage) -> Result<StreamsAndNext, ApiError> {
    let after = match page.after.as_deref() {
        None => None,
        Some(text) => Some(text.parse().map(StreamId).map_err(|_| {
            ApiError::BadRequest(format!("`after` is the `next` stream id of an earlier page; got {text:?}"))
        })?),
    };
    let limit = page.limit.unwrap_or(limits::HTTP_STREAMS_PAGE_DEFAULT).clamp(1, limits::STREAMS_PAGE_MAX);
    let limit = usize::try_from(limit).unwrap_or(usize::MAX);
    let streams = site.storage().streams_page(after, limit).map_err(SiteError::from)?;
    let next = if streams.len() == limit { streams.last().map(|(id, _)| id.to_string()) } else { None };
    Ok((streams, next))
}

async fn streams(site: web::Data<Site>, page: web::Query<StreamsPage>) -> Result<HttpResponse, ApiError> {
    let (streams, next) = streams_page(&site, &page)?;
    let streams: Vec<Value> =
        streams.into_iter().map(|(id, stream_type)| json!({ "id": id.to_string(), "type": stream_type })).collect();
    Ok(HttpResponse::Ok().json(json!({ "streams": streams, "next": next })))
}

/// The stored frontier of a page of streams: `stream/site` → seq.
async fn frontier(site: web::Data<Site>, page: web::Query<StreamsPage>) -> Result<HttpResponse, ApiError> {
    let (streams, next) = streams_page(&site, &page)?;
    let mut lanes = Map::new();
    for (stream, _) in streams {
        for (lane, seq) in site.storage().frontier(stream).map_err(SiteError::from)?.iter() {
            lanes.insert(format!("{}/{}", lane.stream, lane.site), json!(seq.0));
        }
    }
    Ok(HttpResponse::Ok().json(json!({ "frontier": lanes, "next": next })))
}

/// A summary of the site's frontier that stays small whatever the number of streams: how
/// many lanes and events it holds, and a SHA-256 digest of it, equal at two sites exactly
/// when they hold the same events.
async fn health(site: web::Data<Site>) -> Result<HttpResponse, ApiError> {
    use sha2::Digest;
    if let Some(failure) = site.storage().stats().failure {
        return Ok(HttpResponse::ServiceUnavailable().json(json!({
            "status": "failing",
            "site": site.id().to_string(),
            "reason": format!("storage: {failure}"),
        })));
    }
    let frontier = site.frontier().await?;
    let mut digest = sha2::Sha256::new();
    let mut events = 0u64;
    for (lane, seq) in frontier.iter() {
        digest.update(lane.site.as_uuid().as_bytes());
        digest.update(lane.stream.as_uuid().as_bytes());
        digest.update(seq.0.to_be_bytes());
        events = events.saturating_add(seq.0);
    }
    let digest: String = digest.finalize().iter().map(|byte| format!("{byte:02x}")).collect();
    Ok(HttpResponse::Ok().json(json!({
        "status": "ok",
        "site": site.id().to_string(),
        "lanes": frontier.len(),
        "events": events,
        "digest": digest,
    })))
}

async fn metrics(site: web::Data<Site>) -> Result<HttpResponse, ApiError> {
    let m = site.metrics().await?;
    let counters = [
        ("emitted", "Events written at this site", m.emitted),
        ("received", "Events received from peers, copies included", m.received),
        ("delivered", "Events delivered to their streams", m.delivered),
        ("duplicates", "Copies of events already held, dropped", m.duplicates),
        ("unfolded", "Events stored whose payload does not decode into this site's type, skipped by views", m.unfolded),
        ("equivocations", "Different events claiming one lane and seq, refused", m.equivocations),
        ("malformed", "Malformed events refused", m.malformed),
        ("held_back", "Events held back until a dependency arrived", m.held_back),
        ("dropped_on_overflow", "Events dropped on a full router buffer", m.dropped_on_overflow),
        ("dropped_unread", "Events dropped because storage could not be read for a lane", m.dropped_unread),
        ("own_lane_claims", "Events refused for claiming this site's own lane", m.own_lane_claims),
        ("altered", "Events refused because their id is not their content's (altered or forged)", m.altered),
        ("refused", "Deliveries a stream refused for now", m.refused),
        ("batches_sent", "Batches sent to peers", m.batches_sent),
        ("batches_received", "Batches received from peers", m.batches_received),
    ];
    let mut text = String::new();
    for (name, help, value) in counters {
        text.push_str(&format!("# HELP gundb_{name}_total {help}.\n# TYPE gundb_{name}_total counter\n"));
        text.push_str(&format!("gundb_{name}_total {value}\n"));
    }
    text.push_str("# HELP gundb_pending Events the router holds now.\n# TYPE gundb_pending gauge\n");
    text.push_str(&format!("gundb_pending {}\n", m.pending));
    let failed = u8::from(site.storage().stats().failure.is_some());
    text.push_str(
        "# HELP gundb_storage_failed 1 when storage failed and refuses every call until the site reopens it.\n",
    );
    text.push_str(&format!("# TYPE gundb_storage_failed gauge\ngundb_storage_failed {failed}\n"));
    text.push_str("# HELP gundb_links_live Peers with a live direct link here.\n# TYPE gundb_links_live gauge\n");
    text.push_str(&format!("gundb_links_live {}\n", site.links().live().len()));
    Ok(HttpResponse::Ok().content_type("text/plain; version=0.0.4").body(text))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cursor_reads_back_as_its_key() {
        let key = OrderKey { lamport: 7, timestamp_ms: 1_700_000_000_123, id: EventId::from_u128(99) };
        assert_eq!(parse_cursor(&cursor(&key)).unwrap(), key);
        assert!(parse_cursor("7-x").is_err());
    }

    #[test]
    fn a_path_name_is_a_uuid_or_a_name() {
        let id = StreamId::from_u128(5);
        assert_eq!(stream_id(&id.to_string()), id);
        assert_eq!(stream_id("chat"), StreamId::named("chat"));
        assert_ne!(stream_id("chat"), stream_id("chat2"));
    }
}
