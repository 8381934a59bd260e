//! Transports: what carries encoded frames between two sites. A transport end is an
//! [`Endpoint`], a bounded sender and receiver of frames; a full sender makes the
//! source node wait, which is the backpressure of the whole path.
//!
//! [`in_process`] links two sites in one process. [`crossbeam()`] carries the frames over
//! bounded crossbeam channels between threads, the way two sites in different threads (or
//! runtimes) of one process talk. [`faulty`] puts a seeded relay in the middle that drops,
//! duplicates, delays (reorders) frames and partitions the link, one way or both, under a
//! [`Faults`] control; tests and the demo use it.

use crate::rng::Rng;
use crossbeam::channel as crossbeam_channel;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use tokio::sync::mpsc;

/// One end of a link: frames out, frames in.
#[derive(Debug)]
pub struct Endpoint {
    /// Frames to the peer.
    pub sender: mpsc::Sender<Vec<u8>>,
    /// Frames from the peer.
    pub receiver: mpsc::Receiver<Vec<u8>>,
    /// The peer's site, when the transport proved it (a TCP link does: the peer signs
    /// the session with its site's key). A `Hello` naming another site closes the
    /// connection. `None` for transports within one process, which trust both ends.
    pub peer: Option<crate::id::SiteId>,
}

/// Two endpoints joined directly, each direction holding at most `capacity` frames.
pub fn in_process(capacity: usize) -> (Endpoint, Endpoint) {
    let (to_b, from_a) = mpsc::channel(capacity.max(1));
    let (to_a, from_b) = mpsc::channel(capacity.max(1));
    (Endpoint { sender: to_b, receiver: from_b, peer: None }, Endpoint { sender: to_a, receiver: from_a, peer: None })
}

/// Two endpoints joined by bounded crossbeam channels (`capacity` frames each way), with a
/// thread at each end of each direction moving frames between the node's channel and the
/// crossbeam one. Every hop is bounded, so a slow reader holds up the writer all the way.
/// The threads end when either side closes.
pub fn crossbeam(capacity: usize) -> (Endpoint, Endpoint) {
    let (a, a_inner) = in_process(capacity);
    let (b_inner, b) = in_process(capacity);
    let Endpoint { sender: to_b, receiver: from_b, .. } = b_inner;
    let Endpoint { sender: to_a, receiver: from_a, .. } = a_inner;
    bridge(from_a, to_b, capacity);
    bridge(from_b, to_a, capacity);
    (a, b)
}

/// Moves frames from `from` through a bounded crossbeam channel into `to`.
fn bridge(mut from: mpsc::Receiver<Vec<u8>>, to: mpsc::Sender<Vec<u8>>, capacity: usize) {
    let (wire_in, wire_out) = crossbeam_channel::bounded::<Vec<u8>>(capacity.max(1));
    std::thread::spawn(move || {
        while let Some(frame) = from.blocking_recv() {
            if wire_in.send(frame).is_err() {
                break;
            }
        }
    });
    std::thread::spawn(move || {
        while let Ok(frame) = wire_out.recv() {
            if to.blocking_send(frame).is_err() {
                break;
            }
        }
    });
}

/// What a faulty link does to frames, in percent, and whether it is cut.
#[derive(Debug, Default)]
pub struct Faults {
    /// Frames dropped, percent.
    pub drop_percent: AtomicU64,
    /// Frames sent twice, percent.
    pub duplicate_percent: AtomicU64,
    /// Frames held back and sent after the next one, percent.
    pub delay_percent: AtomicU64,
    /// The direction from the first endpoint to the second is cut.
    pub cut_forward: AtomicBool,
    /// The direction from the second endpoint to the first is cut.
    pub cut_backward: AtomicBool,
    /// Frames that met a fault (dropped, duplicated, delayed or cut).
    pub injected: AtomicU64,
}

impl Faults {
    /// Cuts the link both ways (a partition) or heals it.
    pub fn partition(&self, cut: bool) {
        self.cut_forward.store(cut, Ordering::SeqCst);
        self.cut_backward.store(cut, Ordering::SeqCst);
    }
}

/// Two endpoints joined through seeded relays (one per direction) that apply `faults`.
/// The relays run on the current actix arbiter.
pub fn faulty(capacity: usize, faults: Arc<Faults>, seed: u64) -> (Endpoint, Endpoint) {
    let (a, a_inner) = in_process(capacity);
    let (b_inner, b) = in_process(capacity);
    let Endpoint { sender: to_b, receiver: from_b, .. } = b_inner;
    let Endpoint { sender: to_a, receiver: from_a, .. } = a_inner;
    actix::spawn(relay(from_a, to_b, Arc::clone(&faults), true, Rng::new(seed)));
    actix::spawn(relay(from_b, to_a, faults, false, Rng::new(seed ^ 0x9e37_79b9)));
    (a, b)
}

async fn relay(
    mut from: mpsc::Receiver<Vec<u8>>,
    to: mpsc::Sender<Vec<u8>>,
    faults: Arc<Faults>,
    forward: bool,
    mut rng: Rng,
) {
    let mut held: Option<Vec<u8>> = None;
    while let Some(frame) = from.recv().await {
        let cut = if forward { &faults.cut_forward } else { &faults.cut_backward };
        let chance = |rng: &mut Rng, percent: &AtomicU64| rng.chance(percent.load(Ordering::Relaxed));
        if cut.load(Ordering::SeqCst) || chance(&mut rng, &faults.drop_percent) {
            faults.injected.fetch_add(1, Ordering::Relaxed);
            continue;
        }
        let mut out = vec![frame];
        if chance(&mut rng, &faults.duplicate_percent) {
            faults.injected.fetch_add(1, Ordering::Relaxed);
            out.push(out[0].clone());
        }
        if held.is_none() && chance(&mut rng, &faults.delay_percent) {
            faults.injected.fetch_add(1, Ordering::Relaxed);
            held = out.pop();
        } else if let Some(late) = held.take() {
            out.push(late);
        }
        for frame in out {
            if to.send(frame).await.is_err() {
                return;
            }
        }
    }
}
