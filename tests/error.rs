//! One error type: `?` takes every public error of gundb into `gundb::Error`, and the
//! errors of the libraries underneath stay reachable as sources.
#![allow(clippy::unwrap_used)]

mod common;

use common::{run_site, TrailStream};
use gundb::keys::SiteKeys;
use gundb::node::{tcp, NodeConfig};
use gundb::storage::StorageError;
use gundb::subscription::Filter;
use gundb::{codec, order, Decide, Emit, Error, GetView, LogPos, Site, StreamId};
use std::error::Error as _;

/// Calls each part of the API once, every failure passed on with `?`.
async fn every_part(site: &Site, folder: &std::path::Path) -> Result<(), Error> {
    let stream = site.stream::<TrailStream>(StreamId::from_u128(1)).await?;
    let written = stream.send(Emit::new(1)).await??;
    stream.send(Decide::new(|_| Ok::<_, std::io::Error>(vec![2]))).await??;
    stream.send(GetView::new()).await??;
    site.frontier().await?;
    let mut all = site.subscribe_all(Filter::All, LogPos(0))?;
    let first = all.next().await.unwrap()?;
    assert_eq!(first.event.id, written.id);
    order::sort_events(vec![first.event.clone()])?;
    let _: u64 = codec::decode(&codec::encode(&7u64)?)?;
    SiteKeys::load_or_create(folder)?;
    gundb::doc::Patch::from_json(r#"{"a": 1}"#)?;
    Ok(())
}

#[test]
fn every_public_error_converts_into_gundb_error() {
    run_site(|| async {
        let site = Site::temporary().unwrap();
        let folder = tempfile::tempdir().unwrap();
        every_part(&site, folder.path()).await.unwrap();

        let rejected: Result<(), Error> = async {
            let stream = site.stream::<TrailStream>(StreamId::from_u128(2)).await?;
            stream.send(Decide::new(|_| Err::<Vec<u64>, _>("out of stock"))).await??;
            Ok(())
        }
        .await;
        assert_eq!(rejected.unwrap_err().to_string(), "decision rejected: out of stock");

        let refused: Result<(), Error> = async {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            let addr = listener.local_addr().unwrap();
            drop(listener);
            tcp::dial(&site, addr, b"secret", NodeConfig::default()).await?;
            Ok(())
        }
        .await;
        assert!(matches!(refused, Err(Error::Tcp(_))), "{refused:?}");
        site.close().await;
    });
}

/// A storage error keeps what sled or the system said as its source, reachable and typed.
#[test]
fn a_storage_error_keeps_its_cause() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("db"), b"not a directory's worth of sled").unwrap();
    let error = gundb::storage::SledStorage::open(dir.path().join("db")).expect_err("a file is not a database folder");
    let cause = match &error {
        StorageError::Sled(cause) => cause,
        other => panic!("{other:?}"),
    };
    assert!(error.source().is_some(), "{error}");
    assert!(
        cause.get().downcast_ref::<sled::Error>().is_some() || cause.get().downcast_ref::<std::io::Error>().is_some()
    );
}
