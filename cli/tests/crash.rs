//! The crash loop: a writer process (`gundb-crash-writer`) on a real sled folder emits and
//! delivers events durably and is killed with SIGKILL at a random moment, some kills
//! landing during its recovery; then the folder is opened here and checked, and the
//! writer restarts. After every kill: every acknowledged write is present, no lane has a
//! gap, nothing is applied twice, the view is the fold of the log, and no (lane, seq) ever
//! holds a different event than it held before (a reused seq would be an equivocation).
//!
//! With the `failpoints` feature, every fourth run of the writer also fails a storage flush
//! every few tens of milliseconds, so the site keeps reopening its storage by itself
//! (`--storage-faults`): kills then land while storage is failed, being reopened, or
//! healed, and the same promises must hold.
//!
//! 300 cycles by default; `GUNDB_CRASH_CYCLES=<n>` changes that, `GUNDB_SEED=<n>` replays
//! the kill timings of a failed run (the seed is printed on failure).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use gundb::testkit::TrailStream;
use gundb::{codec, EventId, GetView, History, Lane, Site, StreamId};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

/// The writer process, killed when dropped (also when the test fails).
struct Writer(Child);

impl Drop for Writer {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// What the checks found, for the totals.
struct Checked {
    events: usize,
    acked: usize,
}

/// Opens the folder the writer left and checks every promise; `seen` carries what each
/// (lane, seq) held after earlier kills.
fn check(data: &Path, acks: &Path, seen: &mut HashMap<(Lane, u64), EventId>, context: &str) -> Checked {
    let data = data.to_owned();
    let acked_lines = std::fs::read_to_string(acks).unwrap_or_default();
    actix::System::new().block_on(async move {
        let site = Site::open(&data).unwrap_or_else(|e| panic!("{context}: reopening failed: {e}"));
        let numbers = site.stream::<TrailStream>(StreamId::named("crash-loop")).await.unwrap();
        let view = numbers.send(GetView::new()).await.unwrap().unwrap();
        let mut events = Vec::new();
        let mut after = None;
        loop {
            let page = numbers.send(History { after, limit: 10_000 }).await.unwrap().unwrap();
            after = page.next_after(after);
            events.extend(page.events);
            if !page.more {
                break;
            }
        }
        // The view is the fold of the log, and nothing was applied twice.
        let folded: Vec<u64> = events.iter().map(|e| codec::decode::<u64>(&e.payload).unwrap()).collect();
        assert_eq!(view.view.0, folded, "{context}: the view is not the fold of the log");
        let distinct: HashSet<u64> = folded.iter().copied().collect();
        assert_eq!(distinct.len(), folded.len(), "{context}: a number was applied twice");
        // No lane has a gap, and no (lane, seq) changed its event.
        let mut lanes: BTreeMap<Lane, Vec<u64>> = BTreeMap::new();
        for event in &events {
            lanes.entry(event.lane).or_default().push(event.seq.0);
            let before = *seen.entry((event.lane, event.seq.0)).or_insert(event.id);
            assert_eq!(before, event.id, "{context}: {} seq {} now holds another event", event.lane, event.seq);
        }
        for (lane, mut seqs) in lanes {
            seqs.sort_unstable();
            let expected: Vec<u64> = (1..=seqs.len() as u64).collect();
            assert_eq!(seqs, expected, "{context}: lane {lane} has a gap");
        }
        // Every acknowledged write is there, at its seq.
        let own = Lane::new(site.id(), StreamId::named("crash-loop"));
        let held: HashMap<(Lane, u64), EventId> = events.iter().map(|e| ((e.lane, e.seq.0), e.id)).collect();
        let mut acked = 0;
        for line in acked_lines.lines() {
            let fields: Vec<&str> = line.split(' ').collect();
            let [seq, id, _n] = fields[..] else { continue }; // a line cut by the kill
            let (Ok(seq), Ok(id)) = (seq.parse::<u64>(), id.parse::<uuid::Uuid>()) else { continue };
            assert_eq!(held.get(&(own, seq)), Some(&EventId(id)), "{context}: acknowledged write {line:?} is missing");
            acked += 1;
        }
        Checked { events: events.len(), acked }
    })
}

#[test]
fn nothing_acknowledged_is_lost_across_hundreds_of_kill_9s() {
    let cycles: u64 = std::env::var("GUNDB_CRASH_CYCLES").ok().and_then(|c| c.parse().ok()).unwrap_or(300);
    let seed: u64 = std::env::var("GUNDB_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or(0xC0FFEE);
    let mut rng = gundb::testkit::Rng::new(seed);
    let dir = tempfile::tempdir().unwrap();
    let (data, acks) = (dir.path().join("site"), dir.path().join("acks"));
    let mut seen = HashMap::new();
    let (mut during_recovery, mut healed, mut last) = (0, 0, Checked { events: 0, acked: 0 });
    for cycle in 0..cycles {
        let mut command = Command::new(env!("CARGO_BIN_EXE_gundb-crash-writer"));
        command.arg("--data").arg(&data).arg("--acks").arg(&acks);
        // Reopening takes a few hundred milliseconds: those runs live longer.
        let faults = cfg!(feature = "failpoints") && cycle % 4 == 1;
        if faults {
            command.arg("--storage-faults");
        }
        let mut child = command.env("RUST_LOG", "off").stdout(Stdio::piped()).stderr(Stdio::null()).spawn().unwrap();
        let stdout = child.stdout.take().unwrap();
        let mut writer = Writer(child);
        let (ready, on_ready) = mpsc::channel();
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = ready.send(line);
            }
        });
        // A quarter of the kills come within 40 ms of the start, before recovery is done;
        // the rest come up to 200 ms after the writer said it was ready.
        let early = rng.chance(25);
        if early {
            std::thread::sleep(Duration::from_millis(rng.below(40))); // the kill's timing
        } else {
            let line = on_ready.recv_timeout(Duration::from_secs(60)).expect("the writer recovers and says so");
            assert!(line.starts_with("ready"), "{line}");
            std::thread::sleep(Duration::from_millis(rng.below(if faults { 1_000 } else { 200 })));
            // the kill's timing
        }
        writer.0.kill().unwrap();
        let status = writer.0.wait().unwrap();
        assert!(!status.success(), "cycle {cycle}: the writer stopped by itself: {status} (seed {seed})");
        // The pipe closed with the process: once the reader is done, every line it printed is here.
        reader.join().unwrap();
        let printed: Vec<String> = on_ready.try_iter().collect();
        if early && !printed.iter().any(|line| line.starts_with("ready")) {
            during_recovery += 1;
        }
        healed += printed.iter().filter(|line| *line == "healed").count();
        let context = format!("cycle {cycle} (seed {seed})");
        let checked = check(&data, &acks, &mut seen, &context);
        assert!(checked.acked >= last.acked, "{context}: acknowledgements went missing from the file");
        assert!(checked.events >= last.events, "{context}: events went missing");
        last = checked;
    }
    eprintln!(
        "{cycles} kills, {during_recovery} before recovery finished; storage reopened {healed} times; {} events \
         stored, {} writes acknowledged",
        last.events, last.acked
    );
    assert!(during_recovery > 0, "some kills landed during recovery (seed {seed})");
    if cfg!(feature = "failpoints") {
        assert!(healed > 0, "the storage was reopened after injected faults (seed {seed})");
    }
    assert!(
        u64::try_from(last.acked).unwrap() > cycles,
        "the writer got writes acknowledged between kills (seed {seed})"
    );
}
