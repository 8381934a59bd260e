//! The storage layout: a database written in another storage format is refused with an
//! error naming both formats and is left untouched; whatever the number of streams, the
//! database keeps a fixed set of sled trees; the stream type is stored once per stream
//! and listed a page at a time.
#![allow(clippy::unwrap_used)]

mod common;

use actix::Actor;
use common::{run_site, TrailStream};
use gundb::storage::{SledStorage, Storage, StorageError, STORAGE_FORMAT};
use gundb::{Emit, StreamActor, StreamId};
use std::sync::Arc;

/// A database as the version-1 layout left it: a site id, no format record, and a sled tree
/// per stream. Opening it is refused with both versions named, and nothing is written.
#[test]
fn a_database_of_the_old_layout_is_refused_with_both_versions_and_left_as_it_was() {
    let dir = tempfile::tempdir().unwrap();
    {
        let db = sled::Config::new().path(dir.path()).segment_size(gundb::limits::SLED_SEGMENT_BYTES).open().unwrap();
        db.insert(b"gundb.site_id", uuid::Uuid::from_u128(7).as_bytes()).unwrap();
        db.open_tree(b"stream:0123456789abcdef").unwrap().insert(b"t", b"trail").unwrap();
        db.flush().unwrap();
    }
    let refused = SledStorage::open(dir.path()).expect_err("an old database is refused");
    assert!(
        matches!(refused, StorageError::Format { found: 1, supported, .. } if supported == STORAGE_FORMAT),
        "{refused:?}"
    );
    let message = refused.to_string();
    assert!(message.contains("storage format 1") && message.contains("reads format 2"), "{message}");
    assert!(message.contains("start this site from an empty one"), "the message says what to do: {message}");

    let db = sled::Config::new().path(dir.path()).segment_size(gundb::limits::SLED_SEGMENT_BYTES).open().unwrap();
    assert_eq!(db.get(b"gundb.format").unwrap(), None, "the refused database was not changed");
    assert_eq!(db.tree_names().len(), 2, "no tree was added");
}

/// A database of a newer format than this build's is refused the same way.
#[test]
fn a_database_of_a_newer_format_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    drop(SledStorage::open(dir.path()).unwrap());
    {
        let db = sled::Config::new().path(dir.path()).segment_size(gundb::limits::SLED_SEGMENT_BYTES).open().unwrap();
        db.insert(b"gundb.format", &(STORAGE_FORMAT + 1).to_be_bytes()).unwrap();
        db.flush().unwrap();
    }
    let refused = SledStorage::open(dir.path()).expect_err("a newer database is refused");
    assert!(matches!(refused, StorageError::Format { found, .. } if found == STORAGE_FORMAT + 1), "{refused:?}");
}

/// 300 streams, each written once: the database still has its two trees (sled's default
/// tree and the data tree), the streams list in id order a page at a time, and a stream
/// that was opened but never written is not listed.
#[test]
fn streams_are_key_prefixes_in_a_fixed_set_of_trees() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_path_buf();
    let written: Vec<StreamId> = (1..=300u128).map(StreamId::from_u128).collect();
    let expected = written.clone();
    run_site(move || async move {
        let storage: Arc<dyn Storage> = Arc::new(SledStorage::open(&path).unwrap());
        for stream in written {
            let actor = StreamActor::<TrailStream>::open(Arc::clone(&storage), stream).unwrap().start();
            actor.send(Emit::new(1)).await.unwrap().unwrap();
        }
        let idle = StreamActor::<TrailStream>::open(Arc::clone(&storage), StreamId::from_u128(1_000)).unwrap();
        drop(idle);
        let mut listed = Vec::new();
        let mut after = None;
        loop {
            let page = storage.streams_page(after, 64).unwrap();
            assert!(page.len() <= 64);
            let Some((last, _)) = page.last() else { break };
            after = Some(*last);
            for (stream, stream_type) in page {
                assert_eq!(stream_type, "test.trail");
                listed.push(stream);
            }
        }
        assert_eq!(listed, expected, "every written stream once, in id order, and no unwritten one");
        assert_eq!(storage.stream_type(StreamId::from_u128(1_000)).unwrap(), None);
    });
    let db = sled::Config::new().path(dir.path()).segment_size(gundb::limits::SLED_SEGMENT_BYTES).open().unwrap();
    assert_eq!(db.tree_names().len(), 2, "sled's default tree and the data tree, whatever the number of streams");
}
