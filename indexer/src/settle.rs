//! Settle: per partition, which dispatched offsets are settled (indexed, already present, or
//! dead-lettered), and the contiguous settled prefix that may be committed.
//!
//! Batches finish out of order (several bulk requests in flight, retries), so a partition's commit
//! point is the first offset that is *not* settled yet: nothing after a gap is ever committed
//! (invariant 1). Each assignment of a partition gets a new *epoch*; settlements carrying an older
//! epoch (records of a revoked assignment) are ignored, and such records are not retried.

use std::collections::{HashMap, VecDeque};

use crate::batch::Item;

#[derive(Debug)]
struct Part {
    epoch: u64,
    /// Dispatched offsets in increasing order, with their settled flag; the front is unsettled.
    pending: VecDeque<(i64, bool)>,
    /// Offset to commit: one past the last offset of the settled prefix.
    next_commit: Option<i64>,
    /// Last offset committed (the value passed to the commit, i.e. next offset to read).
    committed: Option<i64>,
}

/// Settlement state of every assigned partition.
#[derive(Debug, Default)]
pub struct Tracker {
    parts: HashMap<i32, Part>,
    next_epoch: u64,
}

impl Tracker {
    /// An empty tracker.
    pub fn new() -> Self {
        Tracker::default()
    }

    /// Starts tracking a newly assigned partition; returns its epoch.
    pub fn assign(&mut self, partition: i32) -> u64 {
        self.next_epoch += 1;
        let part = Part { epoch: self.next_epoch, pending: VecDeque::new(), next_commit: None, committed: None };
        self.parts.insert(partition, part);
        self.next_epoch
    }

    /// Stops tracking a partition. Records of it still in flight are abandoned.
    pub fn revoke(&mut self, partition: i32) {
        self.parts.remove(&partition);
    }

    /// Partitions currently tracked.
    pub fn partitions(&self) -> Vec<i32> {
        let mut parts: Vec<i32> = self.parts.keys().copied().collect();
        parts.sort_unstable();
        parts
    }

    /// Whether records of `partition` dispatched under `epoch` still belong to this consumer.
    pub fn is_current(&self, partition: i32, epoch: u64) -> bool {
        self.parts.get(&partition).is_some_and(|p| p.epoch == epoch)
    }

    /// Registers a batch's records as in flight and stamps them with their partition's epoch.
    /// Records of unassigned partitions (or replayed offsets) get epoch 0: never current.
    pub fn dispatch(&mut self, items: &mut [Item]) {
        for item in items {
            item.epoch = 0;
            let Some(part) = self.parts.get_mut(&item.partition) else { continue };
            let after_last = match part.pending.back() {
                Some(&(last, _)) => item.offset > last,
                None => part.next_commit.is_none_or(|next| item.offset >= next),
            };
            if after_last {
                part.pending.push_back((item.offset, false));
                item.epoch = part.epoch;
            }
        }
    }

    /// Marks one record settled. Returns `false` when it no longer belongs to this consumer.
    pub fn settle(&mut self, partition: i32, epoch: u64, offset: i64) -> bool {
        let Some(part) = self.parts.get_mut(&partition) else { return false };
        if part.epoch != epoch {
            return false;
        }
        let Ok(at) = part.pending.binary_search_by_key(&offset, |&(o, _)| o) else { return false };
        part.pending[at].1 = true;
        while let Some(&(o, true)) = part.pending.front() {
            part.next_commit = Some(o + 1);
            part.pending.pop_front();
        }
        true
    }

    /// Marks every record of `items` settled (see [`Tracker::settle`]).
    pub fn settle_items<'a>(&mut self, items: impl IntoIterator<Item = &'a Item>) {
        for item in items {
            self.settle(item.partition, item.epoch, item.offset);
        }
    }

    /// Records dispatched but not settled for `partition`.
    pub fn in_flight(&self, partition: i32) -> usize {
        self.parts.get(&partition).map_or(0, |p| p.pending.len())
    }

    /// Records dispatched but not settled, over all partitions.
    pub fn total_in_flight(&self) -> usize {
        self.parts.values().map(|p| p.pending.len()).sum()
    }

    /// `(partition, offset)` pairs whose settled prefix moved past the last commit (the offset is
    /// the next one to read, as Kafka expects). `only` restricts to some partitions.
    pub fn commit_points(&self, only: Option<&[i32]>) -> Vec<(i32, i64)> {
        let mut points: Vec<(i32, i64)> = self
            .parts
            .iter()
            .filter(|(p, _)| only.is_none_or(|only| only.contains(p)))
            .filter_map(|(&p, part)| match (part.next_commit, part.committed) {
                (Some(next), Some(done)) if next <= done => None,
                (Some(next), _) => Some((p, next)),
                (None, _) => None,
            })
            .collect();
        points.sort_unstable();
        points
    }

    /// Notes that `offset` was committed for `partition`.
    pub fn committed(&mut self, partition: i32, offset: i64) {
        if let Some(part) = self.parts.get_mut(&partition) {
            part.committed = Some(part.committed.map_or(offset, |c| c.max(offset)));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(partition: i32, offset: i64) -> Item {
        Item { partition, offset, epoch: 0, doc: 0..0, payload_start: 0, side: 0..0, rejected: None, attempts: 0 }
    }

    fn dispatch(t: &mut Tracker, partition: i32, offsets: &[i64]) -> Vec<Item> {
        let mut items: Vec<Item> = offsets.iter().map(|&o| item(partition, o)).collect();
        t.dispatch(&mut items);
        items
    }

    #[test]
    fn commits_only_the_contiguous_settled_prefix() {
        let mut t = Tracker::new();
        let epoch = t.assign(0);
        let a = dispatch(&mut t, 0, &[10, 11, 12]);
        let b = dispatch(&mut t, 0, &[13, 14]);
        assert!(a.iter().chain(&b).all(|i| i.epoch == epoch));
        assert_eq!(t.commit_points(None), vec![]);
        // The second batch finishes first: nothing may be committed yet.
        t.settle_items(&b);
        assert_eq!(t.commit_points(None), vec![]);
        t.settle(0, epoch, 10);
        assert_eq!(t.commit_points(None), vec![(0, 11)]);
        t.settle(0, epoch, 12);
        assert_eq!(t.commit_points(None), vec![(0, 11)], "11 is still in flight");
        t.settle(0, epoch, 11);
        assert_eq!(t.commit_points(None), vec![(0, 15)]);
        assert_eq!(t.in_flight(0), 0);
        t.committed(0, 15);
        assert_eq!(t.commit_points(None), vec![]);
    }

    #[test]
    fn offsets_with_gaps_are_fine() {
        // Compacted topics and transaction markers leave gaps in offsets.
        let mut t = Tracker::new();
        let epoch = t.assign(3);
        dispatch(&mut t, 3, &[5, 9, 20]);
        t.settle(3, epoch, 9);
        t.settle(3, epoch, 5);
        assert_eq!(t.commit_points(None), vec![(3, 10)]);
        t.settle(3, epoch, 20);
        assert_eq!(t.commit_points(None), vec![(3, 21)]);
    }

    #[test]
    fn partitions_are_independent() {
        let mut t = Tracker::new();
        let e0 = t.assign(0);
        let e1 = t.assign(1);
        dispatch(&mut t, 0, &[1, 2]);
        dispatch(&mut t, 1, &[100]);
        t.settle(1, e1, 100);
        t.settle(0, e0, 2);
        assert_eq!(t.commit_points(None), vec![(1, 101)]);
        t.settle(0, e0, 1);
        assert_eq!(t.commit_points(None), vec![(0, 3), (1, 101)]);
        assert_eq!(t.commit_points(Some(&[0])), vec![(0, 3)]);
        assert_eq!(t.total_in_flight(), 0);
    }

    #[test]
    fn revoked_and_reassigned_partitions_ignore_stale_settlements() {
        let mut t = Tracker::new();
        let old = t.assign(0);
        let stale = dispatch(&mut t, 0, &[1, 2]);
        t.revoke(0);
        assert!(!t.is_current(0, old));
        assert!(!t.settle(0, old, 1));
        let new = t.assign(0);
        assert_ne!(old, new);
        dispatch(&mut t, 0, &[1, 2]);
        t.settle_items(&stale);
        assert_eq!(t.commit_points(None), vec![], "a settlement of the old epoch does not count");
        assert!(t.settle(0, new, 1));
        assert_eq!(t.commit_points(None), vec![(0, 2)]);
    }

    #[test]
    fn unassigned_or_replayed_records_are_not_tracked() {
        let mut t = Tracker::new();
        let unassigned = dispatch(&mut t, 9, &[1]);
        assert_eq!(unassigned[0].epoch, 0);
        let e = t.assign(0);
        dispatch(&mut t, 0, &[5, 6]);
        let replay = dispatch(&mut t, 0, &[6]);
        assert_eq!(replay[0].epoch, 0);
        t.settle(0, e, 5);
        t.settle(0, e, 6);
        let replay = dispatch(&mut t, 0, &[6]);
        assert_eq!(replay[0].epoch, 0, "below the commit point");
        assert_eq!(t.commit_points(None), vec![(0, 7)]);
    }
}
