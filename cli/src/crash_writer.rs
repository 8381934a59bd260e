//! `gundb-crash-writer`: the process the crash-loop test (`tests/crash.rs`) kills with
//! SIGKILL over and over. It opens a site on `--data`, prints `ready` once recovery is
//! done, and then writes for ever: four local writers emit, and a fifth delivers events of
//! another site's lane, all durably. Each acknowledged local write is appended to `--acks`
//! as `seq id number` and the file is fsynced before the next acknowledgement is counted,
//! so the test knows what was acknowledged whenever the kill comes. With
//! `--storage-faults`, a storage flush fails every few tens of milliseconds: the site
//! reopens its storage by itself (printing `healed` each time it serves again) and the
//! writers carry on, so kills also land while storage is failed or being reopened.

use anyhow::{Context as _, Result};
use gundb::storage::{SledStorage, Storage};
use gundb::testkit::TrailStream;
use gundb::{Deliver, Emit, GetView, Site, SiteConfig, Stream, StreamId};
use std::io::Write as _;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// The stream every run writes.
fn stream() -> StreamId {
    StreamId::named("crash-loop")
}

const LOCAL_WRITERS: u64 = 4;

pub fn run(data: PathBuf, acks: PathBuf, storage_faults: bool) -> Result<()> {
    actix::System::new().block_on(async move {
        let storage = Arc::new(SledStorage::open(&data).context("opening the site")?);
        let site = Site::with_storage(Arc::clone(&storage) as Arc<dyn Storage>, SiteConfig::default())?;
        let numbers = site.stream::<TrailStream>(stream()).await?;
        let recovered = numbers.send(GetView::new()).await??;
        println!("ready {}", recovered.view.0.len());
        std::io::stdout().flush()?;
        if storage_faults {
            inject_faults(storage)?;
        }

        let mut file = std::fs::OpenOptions::new().create(true).append(true).open(&acks)?;
        let (acked, mut to_record) = tokio::sync::mpsc::channel::<String>(64);
        for writer in 0..LOCAL_WRITERS {
            let (numbers, acked) = (numbers.clone(), acked.clone());
            actix::spawn(async move {
                loop {
                    // Random numbers: a restart never writes one it wrote before.
                    let n = uuid::Uuid::new_v4().as_u64_pair().0 >> 1 | writer;
                    let emitted = match numbers.send(Emit::new(n)).await {
                        Ok(Ok(emitted)) => emitted,
                        // Storage failed (with --storage-faults): try again once it healed.
                        Ok(Err(_)) => {
                            tokio::time::sleep(Duration::from_millis(5)).await;
                            continue;
                        }
                        Err(_) => return,
                    };
                    if acked.send(format!("{} {} {n}\n", emitted.seq.0, emitted.id)).await.is_err() {
                        return;
                    }
                }
            });
        }
        // Another site's lane, delivered an event every 10 ms: its seqs continue where the
        // recovered stream stands (`seq` is the next). Their Lamport counters are low, so each sorts before
        // local writes already applied and makes the view roll back and replay.
        let remote = gundb::SiteId::from_u128(0xC4A5);
        let lane = gundb::Lane::new(remote, stream());
        let mut seq = recovered.frontier.get(lane).0 + 1;
        let delivering = numbers.clone();
        actix::spawn(async move {
            loop {
                let mut event = gundb::testkit::event(u128::from(seq) | 0xC4A5 << 64, lane, seq, &[], seq, seq);
                event.stream_type = TrailStream::TYPE_NAME.to_owned();
                let Ok(payload) = gundb::codec::encode(&(seq << 32)) else { return };
                event.payload = payload;
                event.id = event.content_id();
                match delivering.send(Deliver(event)).await {
                    Ok(Ok(_)) => seq += 1,
                    // Refused while storage failed (with --storage-faults): the same event
                    // again, a copy if it was stored after all.
                    Ok(Err(_)) => {}
                    Err(_) => return,
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        });
        drop(acked);
        let mut lines = Vec::new();
        while to_record.recv_many(&mut lines, 64).await > 0 {
            for line in lines.drain(..) {
                file.write_all(line.as_bytes())?;
            }
            file.sync_data()?; // on disk before they count as acknowledged
        }
        Ok(())
    })
}

/// Fails the next flush every 20 to 60 ms once the storage serves, and prints `healed`
/// each time the site has reopened it.
#[cfg(feature = "failpoints")]
fn inject_faults(storage: Arc<SledStorage>) -> Result<()> {
    use gundb::storage::Fault;
    actix::spawn(async move {
        let mut rng = gundb::testkit::Rng::new(uuid::Uuid::new_v4().as_u64_pair().0);
        loop {
            tokio::time::sleep(Duration::from_millis(20 + rng.below(40))).await;
            storage.failpoints().fail_nth(Fault::Flush, 1);
            while storage.stats().failure.is_none() {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            while storage.stats().failure.is_some() {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            println!("healed");
            let _ = std::io::stdout().flush();
        }
    });
    Ok(())
}

#[cfg(not(feature = "failpoints"))]
fn inject_faults(_storage: Arc<SledStorage>) -> Result<()> {
    anyhow::bail!("--storage-faults needs a build with the failpoints feature")
}
