//! Reading a site's blocks (see [`super::layout`]): one lane's events by seq, a lane's
//! first event past an order key, and a stream in canonical order as its lanes merged.
//!
//! A lane is in canonical order already (every event depends on the one before it in its
//! lane, so its Lamport counter is larger), so the first event of a lane past a key is
//! found by a binary search over seqs, a block read per step, and the stream's canonical
//! order is a merge of its lanes that holds one block per lane at a time.

use super::layout;
use super::StorageError;
use crate::event::{Event, OrderKey};
use crate::id::{Lane, Seq, StreamId};
use std::collections::VecDeque;
use std::ops::Bound;

/// The blocks of one stream in sled's data tree.
pub(super) struct Blocks<'a> {
    pub(super) data: sled::Tree,
    pub(super) stream: StreamId,
    pub(super) stream_type: &'a str,
}

impl Blocks<'_> {
    /// The block of `lane` that holds `seq`, if stored.
    pub(super) fn holding(&self, lane: Lane, seq: Seq) -> Result<Option<Vec<Event>>, StorageError> {
        debug_assert_eq!(lane.stream, self.stream);
        let from = layout::block_key(lane, seq);
        let to = layout::block_key(lane, Seq(u64::MAX));
        let Some(entry) = self.data.range(from..=to).next() else { return Ok(None) };
        let events = layout::decode_block(lane, self.stream_type, &entry?.1)?;
        Ok(events.first().is_some_and(|first| first.seq <= seq).then_some(events))
    }

    /// The event at (lane, seq), if stored.
    pub(super) fn event(&self, lane: Lane, seq: Seq) -> Result<Option<Event>, StorageError> {
        let block = self.holding(lane, seq)?.unwrap_or_default();
        Ok(block.into_iter().find(|event| event.seq == seq))
    }

    /// Up to `limit` events of `lane` after seq `after`, in seq order.
    pub(super) fn lane_events(&self, lane: Lane, after: Seq, limit: usize) -> Result<Vec<Event>, StorageError> {
        let from = layout::block_key(lane, after.next());
        let to = layout::block_key(lane, Seq(u64::MAX));
        let mut events = Vec::new();
        for entry in self.data.range(from..=to) {
            let block = layout::decode_block(lane, self.stream_type, &entry?.1)?;
            events.extend(block.into_iter().filter(|event| event.seq > after).take(limit - events.len()));
            if events.len() == limit {
                break;
            }
        }
        Ok(events)
    }

    /// Every lane's last stored seq: each lane's last block key, found by seeking from one
    /// lane's blocks to the next (O(lanes · log n), not a scan).
    pub(super) fn frontier(&self) -> Result<Vec<(Lane, Seq)>, StorageError> {
        let prefix = layout::blocks_prefix(self.stream);
        let end = layout::prefix_end(&prefix);
        let mut lanes = Vec::new();
        let mut from = prefix.to_vec();
        while let Some(entry) = self.data.range(from.as_slice()..end.as_slice()).next() {
            let (site, _) = layout::parse_block_key(&entry?.0)?;
            let lane = Lane::new(site, self.stream);
            let last_of_lane = layout::block_key(lane, Seq(u64::MAX));
            let (last, _) = self
                .data
                .range(..=&last_of_lane[..])
                .next_back()
                .ok_or_else(|| StorageError::Corrupt("a block vanished".into()))??;
            lanes.push((lane, layout::parse_block_key(&last)?.1));
            from = last_of_lane.to_vec();
            from.push(0); // the smallest key after this lane's blocks
        }
        Ok(lanes)
    }

    /// Up to `limit` events from `from` on and before `before` (to the end when `None`),
    /// in canonical order: the stream's lanes merged.
    pub(super) fn in_order(
        &self,
        from: Bound<OrderKey>,
        before: Option<OrderKey>,
        limit: usize,
    ) -> Result<Vec<Event>, StorageError> {
        let mut cursors = Vec::new();
        for (lane, last) in self.frontier()? {
            if let Some(cursor) = LaneCursor::seek(self, lane, last, from)? {
                cursors.push(cursor);
            }
        }
        let mut events = Vec::new();
        while events.len() < limit {
            let next = cursors
                .iter()
                .enumerate()
                .filter_map(|(index, cursor)| cursor.head().map(|event| (event.order_key(), index)))
                .min();
            let Some((key, index)) = next else { break };
            if before.is_some_and(|before| key >= before) {
                break;
            }
            events.extend(cursors[index].pop(self)?);
        }
        Ok(events)
    }
}

/// Where a merge stands in one lane: the rest of the block being read, and what follows.
struct LaneCursor {
    lane: Lane,
    buffered: VecDeque<Event>,
    /// The lane's last stored seq.
    last: Seq,
}

impl LaneCursor {
    /// A cursor at `lane`'s first event inside `from`, or `None` if it has none.
    fn seek(blocks: &Blocks<'_>, lane: Lane, last: Seq, from: Bound<OrderKey>) -> Result<Option<Self>, StorageError> {
        let inside = |event: &Event| match from {
            Bound::Included(key) => event.order_key() >= key,
            Bound::Excluded(key) => event.order_key() > key,
            Bound::Unbounded => true,
        };
        // The answer is in seqs lo..=hi (hi = last + 1: none). Each step reads one block:
        // it is wholly before the answer, wholly after it, or holds it.
        let (mut lo, mut hi) = (1, last.0.saturating_add(1));
        while lo < hi {
            let middle = Seq(lo + (hi - lo) / 2);
            let block = blocks.holding(lane, middle)?.ok_or_else(|| missing(lane, middle))?;
            let (Some(first), Some(end)) = (block.first(), block.last()) else { return Err(missing(lane, middle)) };
            if !inside(end) {
                lo = end.seq.0 + 1;
            } else if inside(first) {
                hi = first.seq.0;
            } else {
                let buffered: VecDeque<Event> = block.into_iter().skip_while(|event| !inside(event)).collect();
                return Ok(Some(Self { lane, buffered, last }));
            }
        }
        if lo > last.0 {
            return Ok(None);
        }
        let block = blocks.holding(lane, Seq(lo))?.ok_or_else(|| missing(lane, Seq(lo)))?;
        let buffered = block.into_iter().skip_while(|event| event.seq.0 < lo).collect();
        Ok(Some(Self { lane, buffered, last }))
    }

    fn head(&self) -> Option<&Event> {
        self.buffered.front()
    }

    /// Takes the head event, reading the lane's next block when this one is used up.
    fn pop(&mut self, blocks: &Blocks<'_>) -> Result<Option<Event>, StorageError> {
        let event = self.buffered.pop_front();
        if let (Some(taken), true) = (&event, self.buffered.is_empty()) {
            if taken.seq < self.last {
                let next = taken.seq.next();
                let block = blocks.holding(self.lane, next)?.ok_or_else(|| missing(self.lane, next))?;
                self.buffered = block.into_iter().skip_while(|e| e.seq < next).collect();
            }
        }
        Ok(event)
    }
}

fn missing(lane: Lane, seq: Seq) -> StorageError {
    StorageError::Corrupt(format!("{lane} has no block holding seq {} below its last", seq.0))
}
