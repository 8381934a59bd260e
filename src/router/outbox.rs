//! [`Outboxes`]: events released for their streams and not yet handed over, one outbox
//! per stream that has any, so that what the router keeps and scans per round grows with
//! its backlog, never with the number of streams it has ever delivered to.
//!
//! A stream's events go to its actor one batch at a time: one batch in flight per stream
//! keeps them in order (a second `send` to a full mailbox could overtake the first) and
//! bounds what the router has outstanding.

use crate::event::Event;
use crate::id::{Lane, Seq, StreamId};
use std::collections::{HashMap, HashSet, VecDeque};

#[derive(Default)]
struct Outbox {
    queued: VecDeque<Event>,
    in_flight: bool,
}

/// Every stream's outbox, with the count of events queued and the streams that have a
/// batch to send.
#[derive(Default)]
pub(super) struct Outboxes {
    boxes: HashMap<StreamId, Outbox>,
    queued: usize,
    /// Streams with events queued and no batch in flight.
    sendable: HashSet<StreamId>,
}

impl Outboxes {
    /// Queues `event` for its stream.
    pub(super) fn push(&mut self, event: Event) {
        let stream = event.lane.stream;
        let outbox = self.boxes.entry(stream).or_default();
        outbox.queued.push_back(event);
        self.queued += 1;
        if !outbox.in_flight {
            self.sendable.insert(stream);
        }
    }

    /// Events queued, all streams together.
    pub(super) fn queued(&self) -> usize {
        self.queued
    }

    /// True when `stream` has events queued.
    pub(super) fn has_queued(&self, stream: StreamId) -> bool {
        self.boxes.get(&stream).is_some_and(|o| !o.queued.is_empty())
    }

    /// True when `stream` has nothing queued and no batch in flight.
    pub(super) fn is_idle(&self, stream: StreamId) -> bool {
        !self.boxes.contains_key(&stream)
    }

    /// The streams that have a batch to send.
    pub(super) fn sendable(&self) -> Vec<StreamId> {
        self.sendable.iter().copied().collect()
    }

    /// Takes up to `max` of `stream`'s events as its batch in flight.
    pub(super) fn take_batch(&mut self, stream: StreamId, max: usize) -> Vec<Event> {
        let Some(outbox) = self.boxes.get_mut(&stream) else { return Vec::new() };
        let count = outbox.queued.len().min(max);
        let batch: Vec<Event> = outbox.queued.drain(..count).collect();
        outbox.in_flight = true;
        self.queued -= count;
        self.sendable.remove(&stream);
        batch
    }

    /// `stream`'s batch in flight was answered.
    pub(super) fn batch_done(&mut self, stream: StreamId) {
        let Some(outbox) = self.boxes.get_mut(&stream) else { return };
        outbox.in_flight = false;
        self.settle(stream);
    }

    /// Drops `lane`'s events from `seq` on (they go again).
    pub(super) fn drop_lane_from(&mut self, lane: Lane, seq: Seq) {
        let Some(outbox) = self.boxes.get_mut(&lane.stream) else { return };
        let before = outbox.queued.len();
        outbox.queued.retain(|queued| queued.lane != lane || queued.seq < seq);
        self.queued -= before - outbox.queued.len();
        self.settle(lane.stream);
    }

    /// Takes every event queued for `stream`.
    pub(super) fn remove(&mut self, stream: StreamId) -> VecDeque<Event> {
        self.sendable.remove(&stream);
        let Some(outbox) = self.boxes.remove(&stream) else { return VecDeque::new() };
        self.queued -= outbox.queued.len();
        outbox.queued
    }

    /// Keeps the outbox of `stream` only while it holds something, and in `sendable` only
    /// while it has a batch to send.
    fn settle(&mut self, stream: StreamId) {
        let Some(outbox) = self.boxes.get(&stream) else { return };
        match (outbox.queued.is_empty(), outbox.in_flight) {
            (true, false) => {
                self.boxes.remove(&stream);
                self.sendable.remove(&stream);
            }
            (false, false) => {
                self.sendable.insert(stream);
            }
            (_, true) => {
                self.sendable.remove(&stream);
            }
        }
    }
}
