//! A view that is not commutative (a chat transcript, in canonical order) and a concurrent
//! event from another site that arrives late: the stream actor rolls the view back and
//! replays, so the transcript comes out the same on every site.
//!
//! Run with `cargo run --example custom_view`.

use actix::Actor;
use gundb::storage::SledStorage;
use gundb::{codec, Deliver, Emit, Event, EventMeta, GetView, Lane, Seq, SiteId, Stream, StreamActor, StreamId, View};
use serde::{Deserialize, Serialize};
use std::sync::Arc;

#[derive(Clone, Serialize, Deserialize)]
struct Said(String);

/// The lines of a chat in canonical order: appending makes order matter.
#[derive(Clone, Default, Serialize, Deserialize)]
struct Transcript(Vec<String>);

impl View<Said> for Transcript {
    fn apply_event(&mut self, said: &Said, meta: &EventMeta<'_>) {
        self.0.push(format!("[lamport {}] {}", meta.lamport, said.0));
    }
}

struct Chat;
impl Stream for Chat {
    const TYPE_NAME: &'static str = "example.chat";
    type Event = Said;
    type View = Transcript;
}

#[actix::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let storage = Arc::new(SledStorage::temporary()?);
    let stream = StreamId::random();
    let chat = StreamActor::<Chat>::open(storage, stream)?.start();
    chat.send(Emit::new(Said("local: hello".into()))).await??;
    chat.send(Emit::new(Said("local: anyone there?".into()))).await??;

    // Written at another site at the same time as our first line (lamport 1, earlier
    // timestamp), delivered only now: it sorts first, so the view is rebuilt.
    let remote = Lane::new(SiteId::from_u128(0xB), stream);
    let clock = [(remote, Seq(1))].into_iter().collect();
    let payload = codec::encode(&Said("remote: hi from site B".into()))?;
    let late = Event::new(remote, Seq(1), clock, 1, 0, Chat::TYPE_NAME.into(), payload);
    chat.send(Deliver(late)).await??;

    for line in chat.send(GetView::new()).await??.view.0 {
        println!("{line}");
    }
    Ok(())
}
