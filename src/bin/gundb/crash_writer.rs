//! `gundb crash-writer`: the process the crash-loop test (`tests/crash.rs`) kills with
//! SIGKILL over and over. It opens a site on `--data`, prints `ready` once recovery is
//! done, and then writes for ever: four local writers emit, and a fifth delivers events of
//! another site's lane, all durably. Each acknowledged local write is appended to `--acks`
//! as `seq id number` and the file is fsynced before the next acknowledgement is counted,
//! so the test knows what was acknowledged whenever the kill comes.

use anyhow::{Context as _, Result};
use gundb::testkit::TrailStream;
use gundb::{Deliver, Emit, GetView, Site, Stream, StreamId};
use std::io::Write as _;
use std::path::PathBuf;

/// The stream every run writes.
fn stream() -> StreamId {
    StreamId::named("crash-loop")
}

const LOCAL_WRITERS: u64 = 4;

pub fn run(data: PathBuf, acks: PathBuf) -> Result<()> {
    actix::System::new().block_on(async move {
        let site = Site::open(&data).context("opening the site")?;
        let numbers = site.stream::<TrailStream>(stream()).await?;
        let recovered = numbers.send(GetView::new()).await??;
        println!("ready {}", recovered.view.0.len());
        std::io::stdout().flush()?;

        let mut file = std::fs::OpenOptions::new().create(true).append(true).open(&acks)?;
        let (acked, mut to_record) = tokio::sync::mpsc::channel::<String>(64);
        for writer in 0..LOCAL_WRITERS {
            let (numbers, acked) = (numbers.clone(), acked.clone());
            actix::spawn(async move {
                loop {
                    // Random numbers: a restart never writes one it wrote before.
                    let n = uuid::Uuid::new_v4().as_u64_pair().0 >> 1 | writer;
                    let Ok(Ok(emitted)) = numbers.send(Emit::new(n)).await else { return };
                    if acked.send(format!("{} {} {n}\n", emitted.seq.0, emitted.id)).await.is_err() {
                        return;
                    }
                }
            });
        }
        // Another site's lane, delivered an event every 10 ms: its seqs continue where the
        // recovered stream stands. Their Lamport counters are low, so each sorts before
        // local writes already applied and makes the view roll back and replay.
        let remote = gundb::SiteId::from_u128(0xC4A5);
        let lane = gundb::Lane::new(remote, stream());
        let mut seq = recovered.frontier.get(lane).0;
        let delivering = numbers.clone();
        actix::spawn(async move {
            loop {
                seq += 1;
                let mut event = gundb::testkit::event(u128::from(seq) | 0xC4A5 << 64, lane, seq, &[], seq, seq);
                event.stream_type = TrailStream::TYPE_NAME.to_owned();
                let Ok(payload) = gundb::codec::encode(&(seq << 32)) else { return };
                event.payload = payload;
                event.id = event.content_id();
                if !matches!(delivering.send(Deliver(event)).await, Ok(Ok(_))) {
                    return;
                }
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
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
