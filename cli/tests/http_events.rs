//! `GET /events`: a site's events as server-sent events, from a real `gundb node` process
//! over a real socket; `Last-Event-ID` resumes; filters; a bounded number of subscribers,
//! whose places free when they go.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod cluster;

use cluster::{eventually, Node, Start};
use serde_json::{json, Value};
use std::io::{BufRead, BufReader, Read};
use std::time::Duration;

/// One open `GET /events` response, read event by event.
struct Events {
    lines: BufReader<Box<dyn Read + Send + Sync>>,
}

impl Events {
    /// Opens `/events?{query}`, with `Last-Event-ID` if given; the status and body of a
    /// refusal otherwise.
    fn open(node: &Node, query: &str, last_event_id: Option<&str>) -> Result<Events, (u16, Value)> {
        // The read timeout turns a missing event into a failure, not a hang.
        let agent = ureq::AgentBuilder::new().timeout_read(Duration::from_secs(30)).build();
        let mut request = agent.get(&format!("http://{}/events?{query}", node.http));
        if let Some(id) = last_event_id {
            request = request.set("Last-Event-ID", id);
        }
        match request.call() {
            Ok(response) => {
                assert_eq!(response.content_type(), "text/event-stream");
                Ok(Events { lines: BufReader::new(response.into_reader()) })
            }
            Err(ureq::Error::Status(status, response)) => Err((status, response.into_json().unwrap())),
            Err(error) => panic!("GET /events: {error}"),
        }
    }

    /// The next event: its `id:` and its `data:` (comments skipped).
    fn next(&mut self) -> (u64, Value) {
        let (mut id, mut data) = (None, None);
        loop {
            let mut line = String::new();
            assert!(self.lines.read_line(&mut line).unwrap() > 0, "the event stream ended");
            let line = line.trim_end_matches('\n');
            if line.is_empty() {
                if let (Some(id), Some(data)) = (id, data.take()) {
                    return (id, data);
                }
            } else if let Some(value) = line.strip_prefix("id: ") {
                id = Some(value.parse().unwrap());
            } else if let Some(value) = line.strip_prefix("data: ") {
                data = Some(serde_json::from_str(value).unwrap());
            } else {
                assert!(line.starts_with(':'), "unexpected line {line:?}");
            }
        }
    }
}

fn node(root: &std::path::Path, extra: &[&str]) -> Node {
    std::fs::write(root.join("secret"), "s").unwrap();
    let extra: Vec<&std::ffi::OsStr> = extra.iter().map(std::ffi::OsStr::new).collect();
    let start = Start {
        name: "a",
        data: &root.join("a"),
        secret_file: &root.join("secret"),
        listen: "127.0.0.1:0".parse().unwrap(),
        peers: &[],
    };
    Node::start_with(start, &extra)
}

/// Writes to a node, reads them back as server-sent events in position order, goes on
/// live, resumes from `Last-Event-ID`, filters by stream and type, refuses a foreign
/// checkpoint and a subscriber past the limit.
#[test]
fn a_node_serves_its_events_as_server_sent_events_and_resumes_from_the_last_id() {
    let root = tempfile::tempdir().unwrap();
    let a = node(root.path(), &["--max-subscribers", "2"]);
    let writes =
        [("cart-1", json!({"item": "apple"})), ("cart-2", json!({"item": "pear"})), ("cart-1", json!({"qty": 3}))];
    for (stream, patch) in &writes {
        a.post(stream, &patch.to_string()).unwrap();
    }

    let mut all = Events::open(&a, "", None).unwrap();
    let mut ids = Vec::new();
    for (position, (stream, patch)) in (1..).zip(&writes) {
        let (id, data) = all.next();
        assert_eq!(id, position);
        assert_eq!(data["position"], json!(position));
        assert_eq!(data["stream"], json!(gundb::StreamId::named(stream).to_string()));
        assert_eq!(data["type"], json!("gundb.document"));
        assert_eq!(&data["patch"], patch);
        ids.push(data["id"].clone());
    }
    // Live: the next write comes on the open connection.
    a.post("cart-2", r#"{"qty": 1}"#).unwrap();
    assert_eq!(all.next().0, 4);

    // `Last-Event-ID` (what a browser sends on reconnecting) wins over `after`.
    let mut resumed = Events::open(&a, "after=1", Some("2")).unwrap();
    let (id, data) = resumed.next();
    assert_eq!((id, &data["id"]), (3, &ids[2]));
    assert_eq!(resumed.next().0, 4);

    // Two subscribers are open: the limit.
    let (status, body) = Events::open(&a, "stream=cart-2", None).err().expect("a third subscriber is refused");
    assert_eq!(status, 503);
    assert!(body["error"].as_str().unwrap().contains("--max-subscribers"), "{body}");
    drop(resumed);
    // A subscriber that went away frees its place once the node notices, when a write to
    // its connection fails: the first write after the close draws the reset, the second
    // fails.
    a.post("cart-1", r#"{"qty": 4}"#).unwrap();
    a.post("cart-1", r#"{"qty": 5}"#).unwrap();
    let mut cart_2 = None;
    eventually("the closed subscriber's place is free", || match Events::open(&a, "stream=cart-2", None) {
        Ok(events) => cart_2.replace(events).is_none(),
        Err((503, _)) => false,
        Err(other) => panic!("{other:?}"),
    });
    let mut cart_2 = cart_2.unwrap();
    assert_eq!(cart_2.next().0, 2, "cart-2's events only");
    assert_eq!(cart_2.next().0, 4);

    let (status, body) = Events::open(&a, "after=999", None).err().expect("a checkpoint past the end is refused");
    assert_eq!(status, 400);
    assert!(body["error"].as_str().unwrap().contains("positions are local"), "{body}");
}
