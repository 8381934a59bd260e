//! The decisions of replication, pure (no actor, no clock, no I/O), so that tests and the
//! simulation run the same code the nodes do: [`Window`], the source's side (where the
//! next frame starts, what is unacknowledged, when to send again), and [`Intake`], the
//! sink's side (which frames to take, when to ask again, how far the peer's log is durable
//! here, in order). Times are milliseconds of any monotonic clock the caller keeps.

use crate::id::LogPos;
use std::collections::VecDeque;

/// The source's side of one connection.
#[derive(Debug, Default)]
pub struct Window {
    /// Where the next frame starts: `None` until the peer says what it wants.
    cursor: Option<LogPos>,
    /// How far the peer holds our log, as it last said (by `Want` or `Ack`).
    acked: Option<LogPos>,
    /// Frames sent and not acknowledged: the last position of each, when it went, and its
    /// size.
    unacked: VecDeque<(LogPos, u64, usize)>,
    /// The bytes of the frames in `unacked`.
    unacked_bytes: usize,
}

impl Window {
    /// Where the next frame starts, if the peer wants one and the window has room for it:
    /// fewer than `frames_max` frames and `bytes_max` bytes unacknowledged (one frame goes
    /// whatever its size).
    pub fn next_after(&self, frames_max: usize, bytes_max: usize) -> Option<LogPos> {
        let full = self.unacked.len() >= frames_max || self.unacked_bytes >= bytes_max;
        if full {
            None
        } else {
            self.cursor
        }
    }

    /// A frame ending at `last`, of `bytes`, went at `now`.
    pub fn sent(&mut self, last: LogPos, bytes: usize, now: u64) {
        self.cursor = Some(last);
        self.unacked.push_back((last, now, bytes));
        self.unacked_bytes += bytes;
    }

    /// The peer wants our log after `after`: sending starts (again) there. Frames on their
    /// way are superseded; the peer ignores what does not follow on.
    pub fn want(&mut self, after: LogPos) {
        self.cursor = Some(after);
        self.acked = Some(after);
        self.forget_unacked();
    }

    /// The peer holds our log up to `upto`.
    pub fn ack(&mut self, upto: LogPos) {
        if self.acked.is_some_and(|acked| acked >= upto) {
            return;
        }
        self.acked = Some(upto);
        while let Some(&(last, _, bytes)) = self.unacked.front() {
            if last > upto {
                break;
            }
            self.unacked.pop_front();
            self.unacked_bytes -= bytes;
        }
    }

    /// True (and the window rewound to the last acknowledged position) when the oldest
    /// unacknowledged frame went `resend_after` or more before `now`: it was lost, or the
    /// peer dropped it.
    pub fn rewind_if_overdue(&mut self, now: u64, resend_after: u64) -> bool {
        let Some(&(_, sent, _)) = self.unacked.front() else { return false };
        if now.saturating_sub(sent) < resend_after {
            return false;
        }
        self.cursor = self.acked;
        self.forget_unacked();
        true
    }

    /// True until the peer has said what it wants: our `Hello` may have been lost.
    pub fn awaits_want(&self) -> bool {
        self.cursor.is_none()
    }

    /// Frames unacknowledged.
    pub fn unacked(&self) -> usize {
        self.unacked.len()
    }

    fn forget_unacked(&mut self) {
        self.unacked.clear();
        self.unacked_bytes = 0;
    }
}

/// What [`Intake::frame`] decided about a frame of the peer's log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Take {
    /// Hand its events to the router: it is frame `id`, to report to [`Intake::settled`]
    /// once durable.
    Events(u64),
    /// Held already (sent again). `ack`: say this `Ack` again, ours may have been lost.
    Stale {
        /// The position to acknowledge again, if the frame is durable here.
        ack: Option<LogPos>,
    },
    /// It does not follow on (a frame was lost, or the peer sends past the window).
    /// `want`: ask for the log after this position (once per position).
    Gap {
        /// The position to ask from, unless asked already.
        want: Option<LogPos>,
    },
}

/// The sink's side of one connection.
#[derive(Debug, Default)]
pub struct Intake {
    /// Where the next frame must start: the end of the last frame taken.
    expected: LogPos,
    /// How far the peer's log is durable here, in order.
    durable: LogPos,
    /// The position last asked for, and when: a run of frames past a gap asks once, and
    /// an answer that does not come is asked for again.
    wanted: Option<(LogPos, u64)>,
    /// Frames taken and not yet durable, in order: an id, the frame's last position, and
    /// whether it is durable.
    settling: VecDeque<(u64, LogPos, bool)>,
    next_id: u64,
}

impl Intake {
    /// An intake that holds the peer's log up to `durable` and asks for the rest (after
    /// `durable`) at `now`.
    pub fn new(durable: LogPos, now: u64) -> Self {
        Self { expected: durable, durable, wanted: Some((durable, now)), ..Self::default() }
    }

    /// How far the peer's log is durable here.
    pub fn durable(&self) -> LogPos {
        self.durable
    }

    /// A frame covering the peer's log after `after` up to `last` (`after < last`),
    /// arriving at `now`, when at most `settling_max` frames may wait to be durable.
    pub fn frame(&mut self, after: LogPos, last: LogPos, settling_max: usize, now: u64) -> Take {
        debug_assert!(after < last, "the caller refuses empty frames");
        if last <= self.expected {
            let ack = (last <= self.durable).then_some(self.durable);
            return Take::Stale { ack };
        }
        if after > self.expected || self.settling.len() >= settling_max {
            let asked = self.wanted.is_some_and(|(wanted, _)| wanted == self.expected);
            let want = (!asked).then(|| self.ask(now));
            return Take::Gap { want };
        }
        self.expected = last;
        self.wanted = None;
        let id = self.next_id;
        self.next_id += 1;
        self.settling.push_back((id, last, false));
        Take::Events(id)
    }

    /// Frame `id` is durable: the new durable position, if it moved (every frame before it
    /// is durable too).
    pub fn settled(&mut self, id: u64) -> Option<LogPos> {
        let frame = self.settling.iter_mut().find(|(frame, _, _)| *frame == id)?;
        frame.2 = true;
        let before = self.durable;
        while let Some(&(_, last, true)) = self.settling.front() {
            self.durable = last;
            self.settling.pop_front();
        }
        (self.durable > before).then_some(self.durable)
    }

    /// The router dropped or refused an event: whatever is not durable may be lost, so
    /// the frames waiting are forgotten and the log is asked for again from the durable
    /// position (returned).
    pub fn reset(&mut self, now: u64) -> LogPos {
        self.settling.clear();
        self.expected = self.durable;
        self.ask(now)
    }

    /// The position to ask for again, if the last `Want` went `resend_after` or more
    /// before `now` and nothing followed on since.
    pub fn want_again(&mut self, now: u64, resend_after: u64) -> Option<LogPos> {
        let (after, asked) = self.wanted?;
        (now.saturating_sub(asked) >= resend_after).then(|| {
            self.wanted = Some((after, now));
            after
        })
    }

    /// Asks from `expected` at `now`.
    fn ask(&mut self, now: u64) -> LogPos {
        self.wanted = Some((self.expected, now));
        self.expected
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testkit::Rng;

    const FRAMES: usize = 4;
    const BYTES: usize = usize::MAX;

    /// A source's log of `len` positions in frames of up to 3, sent over a link that drops,
    /// duplicates and reorders frames and acknowledgements alike, to a sink whose router
    /// makes frames durable in random order and now and then refuses one: the sink ends up
    /// holding the whole log, its durable position never passes a frame that is not
    /// durable, and it only moves forward.
    #[test]
    fn a_lossy_link_delivers_the_whole_log_in_order() {
        for seed in 0..300_u64 {
            let mut rng = Rng::new(seed);
            let len = 1 + rng.below(60);
            let (mut window, mut intake) = (Window::default(), Intake::new(LogPos(0), 0));
            window.want(LogPos(0));
            // In flight: frames (after, last) to the sink, acknowledgements and wants back.
            let mut to_sink: Vec<(u64, u64)> = Vec::new();
            // Ok: an acknowledgement; Err: a want.
            let mut to_source: Vec<Result<u64, u64>> = Vec::new();
            let mut taken: Vec<(u64, u64, u64)> = Vec::new(); // (id, after, last), not yet durable
            let mut durable_frames: Vec<(u64, u64)> = Vec::new();
            let mut now = 0;
            let mut last_durable = LogPos(0);
            for _ in 0..20_000 {
                now += 1;
                if intake.durable() == LogPos(len) {
                    break;
                }
                match rng.below(6) {
                    0 => {
                        if let Some(after) = window.next_after(FRAMES, BYTES) {
                            let last = (after.0 + 1 + rng.below(3)).min(len);
                            if last > after.0 {
                                window.sent(LogPos(last), 1, now);
                                to_sink.push((after.0, last));
                            }
                        }
                    }
                    1 if !to_sink.is_empty() => {
                        let (after, last) = to_sink.remove(rng.index(to_sink.len()));
                        if rng.chance(10) {
                            continue; // lost
                        }
                        if rng.chance(10) {
                            to_sink.push((after, last)); // duplicated
                        }
                        match intake.frame(LogPos(after), LogPos(last), FRAMES, now) {
                            Take::Events(id) => taken.push((id, after, last)),
                            Take::Stale { ack: Some(upto) } => to_source.push(Ok(upto.0)),
                            Take::Stale { ack: None } | Take::Gap { want: None } => {}
                            Take::Gap { want: Some(after) } => to_source.push(Err(after.0)),
                        }
                    }
                    2 if !taken.is_empty() => {
                        let (id, after, last) = taken.remove(rng.index(taken.len()));
                        if rng.chance(3) {
                            // The router refused an event of it: the sink asks again.
                            taken.clear();
                            to_source.push(Err(intake.reset(now).0));
                            continue;
                        }
                        durable_frames.push((after, last));
                        if let Some(upto) = intake.settled(id) {
                            assert!(upto > last_durable, "seed {seed}: the durable position only moves forward");
                            // Every position up to `upto` is in a durable frame.
                            let mut covered = 0;
                            while let Some(&(_, end)) =
                                durable_frames.iter().find(|(a, e)| *a <= covered && *e > covered)
                            {
                                covered = end;
                            }
                            assert!(covered >= upto.0, "seed {seed}: durable {upto} past a frame not durable");
                            last_durable = upto;
                            to_source.push(Ok(upto.0));
                        }
                    }
                    3 if !to_source.is_empty() => {
                        let said = to_source.remove(rng.index(to_source.len()));
                        if rng.chance(10) {
                            continue; // lost
                        }
                        match said {
                            Ok(upto) => window.ack(LogPos(upto)),
                            Err(after) => window.want(LogPos(after)),
                        }
                    }
                    4 => {
                        window.rewind_if_overdue(now, 50);
                    }
                    _ => {
                        if let Some(after) = intake.want_again(now, 50) {
                            to_source.push(Err(after.0));
                        }
                    }
                }
            }
            assert_eq!(intake.durable(), LogPos(len), "seed {seed}: the whole log is durable at the sink");
        }
    }

    #[test]
    fn the_window_closes_at_its_frame_and_byte_bounds_and_opens_on_acks() {
        let mut window = Window::default();
        assert_eq!(window.next_after(2, 100), None, "nothing before the peer wants");
        window.want(LogPos(5));
        window.sent(LogPos(7), 60, 0);
        assert_eq!(window.next_after(2, 100), Some(LogPos(7)));
        window.sent(LogPos(9), 60, 0);
        assert_eq!(window.next_after(3, 100), None, "120 bytes unacknowledged");
        assert_eq!(window.next_after(2, 1_000), None, "two frames unacknowledged");
        window.ack(LogPos(7));
        assert_eq!((window.next_after(2, 100), window.unacked()), (Some(LogPos(9)), 1));
        assert!(!window.rewind_if_overdue(9, 10));
        assert!(window.rewind_if_overdue(10, 10));
        assert_eq!(window.next_after(2, 100), Some(LogPos(7)), "sends again after the last ack");
    }
}
