//! `gundb inspect`: the summary, the streams page by page and one stream's events and view
//! of a real database, in text and JSON; a folder without a database is refused and left
//! empty; a database a running node holds is refused, saying so.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod cluster;
#[path = "../../tests/common/mod.rs"]
mod common;

use cluster::{Node, Start};
use common::{run_site, TrailStream};
use gundb::doc::{Document, Patch};
use gundb::{Emit, Site, StreamId};
use serde_json::{json, Value};
use std::path::Path;
use std::process::{Command, Output};

fn inspect(data: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_gundb")).arg("inspect").arg("--data").arg(data).args(args).output().unwrap()
}

fn json_lines(output: &Output) -> Vec<Value> {
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8(output.stdout.clone()).unwrap().lines().map(|line| serde_json::from_str(line).unwrap()).collect()
}

#[test]
fn inspect_shows_the_site_its_streams_and_a_streams_events_and_view() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_path_buf();
    let site_id = run_site(move || async move {
        let site = Site::open(&path).unwrap();
        let profile = site.stream::<Document>(StreamId::named("profile")).await.unwrap();
        for patch in [json!({"name": "Ada", "city": "London"}), json!({"city": null, "lang": "en"})] {
            profile.send(Emit::new(Patch::from_value(patch).unwrap())).await.unwrap().unwrap();
        }
        let trail = site.stream::<TrailStream>(StreamId::from_u128(7)).await.unwrap();
        trail.send(Emit::new(258)).await.unwrap().unwrap();
        let id = site.id();
        site.close().await;
        id
    });

    let summary = &json_lines(&inspect(dir.path(), &["--json"]))[0];
    assert_eq!(summary["site"], json!(site_id.to_string()));
    assert_eq!(summary["format"], json!(gundb::storage::STORAGE_FORMAT));
    assert_eq!(summary["events"], json!(3));
    assert!(summary["disk_bytes"].as_u64().unwrap() > 0);
    let text = String::from_utf8(inspect(dir.path(), &[]).stdout).unwrap();
    assert!(text.contains(&site_id.to_string()) && text.contains("3 in the site's log"), "{text}");

    // Two streams, a page of one at a time.
    let first = &json_lines(&inspect(dir.path(), &["--json", "streams", "--limit", "1"]))[0];
    let next = first["next"].as_str().expect("a second page").to_owned();
    let second = &json_lines(&inspect(dir.path(), &["--json", "streams", "--limit", "1", "--after", &next]))[0];
    let mut streams: Vec<Value> = [first, second].iter().map(|page| page["streams"][0].clone()).collect();
    streams.sort_by_key(|stream| stream["type"].as_str().unwrap().to_owned());
    assert_eq!(streams[0]["type"], json!("gundb.document"));
    assert_eq!((&streams[0]["lanes"], &streams[0]["events"]), (&json!(1), &json!(2)));
    assert_eq!(streams[1]["type"], json!(<TrailStream as gundb::Stream>::TYPE_NAME));

    let lines = json_lines(&inspect(dir.path(), &["--json", "stream", "profile"]));
    assert_eq!(lines.len(), 3, "two events and the view");
    assert_eq!(lines[0]["patch"], json!({"name": "Ada", "city": "London"}));
    assert_eq!(lines[1]["seq"], json!(2));
    assert_eq!(lines[2]["view"], json!({"name": "Ada", "lang": "en"}));
    let trail = json_lines(&inspect(dir.path(), &["--json", "stream", &StreamId::from_u128(7).to_string()]));
    assert_eq!(trail.len(), 1, "not a document: no view");
    assert_eq!(trail[0]["payload_hex"], json!(hex(&gundb::codec::encode(&258u64).unwrap())));

    let missing = inspect(dir.path(), &["stream", "nobody"]);
    assert!(!missing.status.success());
    assert!(String::from_utf8_lossy(&missing.stderr).contains("holds no stream nobody"));
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

#[test]
fn inspect_refuses_a_folder_without_a_database_and_leaves_it_empty() {
    let dir = tempfile::tempdir().unwrap();
    let refused = inspect(dir.path(), &[]);
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("holds no gundb database"));
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0, "nothing made");
}

#[test]
fn inspect_says_when_a_running_node_holds_the_database() {
    let root = tempfile::tempdir().unwrap();
    std::fs::write(root.path().join("secret"), "s").unwrap();
    let data = root.path().join("a");
    let node = Node::start(Start {
        name: "a",
        data: &data,
        secret_file: &root.path().join("secret"),
        listen: "127.0.0.1:0".parse().unwrap(),
        peers: &[],
    });
    node.post("doc", r#"{"a": 1}"#).unwrap();
    let held = inspect(&data, &[]);
    assert!(!held.status.success());
    assert!(String::from_utf8_lossy(&held.stderr).contains("held by a running process"), "{held:?}");
}
