//! Catch-up planning, pure: which lanes a peer lacks, and the order to send their events
//! in so that every event comes after what it depends on.
//!
//! Canonical order is causal order for events of any streams: a Lamport counter exceeds
//! those of everything in its clock. So a merge of the lanes a peer lacks, by
//! [`OrderKey`], is causal, whatever streams the lanes belong to.

use crate::clock::VectorClock;
use crate::event::{Event, OrderKey};
use crate::id::{Lane, Seq};
use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};

/// The lanes `ours` has beyond `theirs`, each with the seq the peer has.
pub fn lacking(ours: &VectorClock, theirs: &VectorClock) -> Vec<(Lane, Seq)> {
    ours.iter().filter(|&(lane, seq)| theirs.get(lane) < seq).map(|(lane, _)| (lane, theirs.get(lane))).collect()
}

/// Merges the events of several lanes by canonical order, reading each lane in pages
/// through `read(lane, after, limit)` (what [`crate::storage::Storage::lane_events`]
/// does). Holds at most one page per lane.
pub struct CausalMerge<F> {
    read: F,
    page: usize,
    /// Per lane: events read and not yet sent, and the last seq read.
    lanes: HashMap<Lane, (VecDeque<Event>, Seq, Seq)>,
    heads: BinaryHeap<Reverse<(OrderKey, Lane)>>,
}

impl<F, E> CausalMerge<F>
where
    F: FnMut(Lane, Seq, usize) -> Result<Vec<Event>, E>,
{
    /// A merge of `lanes` from the given seqs up to `upto`'s seqs, read `page` at a time.
    ///
    /// # Errors
    /// The first read of a lane failed.
    pub fn new(lanes: Vec<(Lane, Seq)>, upto: &VectorClock, page: usize, read: F) -> Result<Self, E> {
        let mut merge = Self { read, page: page.max(1), lanes: HashMap::new(), heads: BinaryHeap::new() };
        for (lane, after) in lanes {
            merge.lanes.insert(lane, (VecDeque::new(), after, upto.get(lane)));
            merge.refill(lane)?;
        }
        Ok(merge)
    }

    /// Up to `limit` next events in causal order; empty when every lane is sent.
    ///
    /// # Errors
    /// A read failed.
    pub fn next_batch(&mut self, limit: usize) -> Result<Vec<Event>, E> {
        let mut batch = Vec::new();
        while batch.len() < limit {
            let Some(event) = self.next_event()? else { break };
            batch.push(event);
        }
        Ok(batch)
    }

    /// The next event in causal order; `None` when every lane is sent.
    ///
    /// # Errors
    /// A read failed.
    pub fn next_event(&mut self) -> Result<Option<Event>, E> {
        while let Some(Reverse((_, lane))) = self.heads.pop() {
            let Some((queue, _, _)) = self.lanes.get_mut(&lane) else { continue };
            let Some(event) = queue.pop_front() else { continue };
            self.refill(lane)?;
            return Ok(Some(event));
        }
        Ok(None)
    }

    /// Puts the lane's next event on the heap, reading a page when its queue is empty.
    fn refill(&mut self, lane: Lane) -> Result<(), E> {
        let Some((queue, read_to, upto)) = self.lanes.get_mut(&lane) else { return Ok(()) };
        if queue.is_empty() && *read_to < *upto {
            let page = (self.read)(lane, *read_to, self.page)?;
            let page: Vec<Event> = page.into_iter().filter(|e| e.seq <= *upto).collect();
            match page.last() {
                Some(last) => *read_to = last.seq,
                None => *read_to = *upto, // nothing stored past here: the lane is done
            }
            queue.extend(page);
        }
        if let Some(next) = queue.front() {
            self.heads.push(Reverse((next.order_key(), lane)));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testkit::{history, HistoryShape, Rng};

    #[test]
    fn lacking_names_each_lane_the_peer_is_behind_on() {
        let lane = |n: u128| Lane::new(crate::id::SiteId::from_u128(n), crate::id::StreamId::from_u128(1));
        let ours: VectorClock = [(lane(1), Seq(5)), (lane(2), Seq(2)), (lane(3), Seq(1))].into_iter().collect();
        let theirs: VectorClock = [(lane(1), Seq(3)), (lane(2), Seq(2)), (lane(4), Seq(9))].into_iter().collect();
        assert_eq!(lacking(&ours, &theirs), [(lane(1), Seq(3)), (lane(3), Seq(0))]);
    }

    /// The merge sends exactly what the peer lacks, each event after everything in its
    /// clock that the peer lacked too, across streams.
    #[test]
    fn the_merge_is_causal_and_complete() {
        for seed in 0..50 {
            let mut rng = Rng::new(seed);
            let all = history(HistoryShape { sites: 3, streams: 2, events: 200, sync_percent: 30 }, &mut rng);
            let ours: VectorClock = all.iter().map(|e| (e.lane, e.seq)).collect();
            // The peer has a random prefix of each lane.
            let theirs: VectorClock = ours.iter().map(|(l, s)| (l, Seq(rng.below(s.0 + 1)))).collect();
            let by_lane: HashMap<Lane, Vec<Event>> = all.iter().fold(HashMap::new(), |mut m, e| {
                m.entry(e.lane).or_insert_with(Vec::new).push(e.clone());
                m
            });
            let read = |lane: Lane, after: Seq, limit: usize| -> Result<Vec<Event>, ()> {
                Ok(by_lane[&lane].iter().filter(|e| e.seq > after).take(limit).cloned().collect())
            };
            let mut merge = CausalMerge::new(lacking(&ours, &theirs), &ours, 3, read).unwrap();
            let mut have = theirs.clone();
            let mut sent = 0;
            loop {
                let batch = merge.next_batch(7).unwrap();
                if batch.is_empty() {
                    break;
                }
                for e in batch {
                    assert_eq!(have.get(e.lane).next(), e.seq, "seed {seed}: lane order");
                    assert!(
                        have.dominates(&{
                            let mut deps = e.clock.clone();
                            deps.set(e.lane, Seq(e.seq.0 - 1));
                            deps
                        }),
                        "seed {seed}: sent before a dependency"
                    );
                    have.set(e.lane, e.seq);
                    sent += 1;
                }
            }
            assert_eq!(have, ours, "seed {seed}: everything the peer lacked");
            let lacked: u64 = ours.iter().map(|(l, s)| s.0 - theirs.get(l).0).sum();
            assert_eq!(sent, lacked);
        }
    }
}
