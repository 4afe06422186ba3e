//! Settle: per partition, which dispatched offsets are settled (indexed, already present, or
//! dead-lettered), and the contiguous settled prefix that may be committed.
//!
//! Batches finish out of order (several bulk requests in flight, retries), so a partition's commit
//! point is the first offset that is *not* settled yet: nothing after a gap is ever committed
//! (invariant 1). Each assignment of a partition gets a new *epoch*; settlements carrying an older
//! epoch (records of a revoked assignment) are ignored, and such records are not retried.
//!
//! Memory: offsets are kept as **runs** (`[start, end)`, settled or not), not one entry per
//! offset, so one stuck record followed by millions of settled ones costs three runs. Unsettled
//! runs hold consecutive offsets only (exact counts); settled runs may span offsets that do not
//! exist (compaction, transaction markers), which is harmless for a commit point. The number of
//! runs is at most twice the number of unsettled records plus one, and unsettled records are
//! bounded by `batch.max_in_flight_bytes`. How far the commit point may lag behind the last
//! dispatched offset is bounded separately: [`Tracker::unsettled_span`] feeds the consumer's
//! per-partition pause (`kafka.max_unsettled_span`).
//!
//! **Several records per offset** (Kafka message contract v2): the batcher expands one message into
//! one [`Item`] per record, all with the message's offset ([`Item::record`] of
//! [`Item::records`]). Such an offset stays in its unsettled run until **every** record is settled;
//! meanwhile a small entry per multi-record offset (how many records were dispatched, which ones
//! are settled: a bitset, so settling one twice counts once) sits beside the runs. The further
//! records of the offset dispatched last are accepted in order (`record` = records dispatched so
//! far); anything else (a replay) gets epoch 0 as before. Single-record offsets (v1) cost nothing
//! more. Record counts ([`Tracker::in_flight`]) count records, spans count offsets.

use std::collections::{HashMap, VecDeque};

use crate::batch::Item;

/// Offsets `[start, end)`, all settled or all unsettled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Run {
    start: i64,
    end: i64,
    settled: bool,
}

/// Settlement of an offset holding several records (a contract-v2 message).
#[derive(Debug)]
struct Multi {
    /// Records the message holds.
    records: u32,
    /// Records dispatched so far (they come in order: 0, 1, …).
    dispatched: u32,
    /// Records settled so far.
    settled: u32,
    /// Bit `i`: record `i` is settled.
    done: Vec<u64>,
}

impl Multi {
    fn new(records: u32) -> Self {
        Multi { records, dispatched: 1, settled: 0, done: vec![0; (records as usize).div_ceil(64)] }
    }

    /// Marks `record` settled; `false` if it was not dispatched or is settled already.
    fn settle(&mut self, record: u32) -> bool {
        if record >= self.dispatched {
            return false;
        }
        let (word, bit) = ((record / 64) as usize, 1u64 << (record % 64));
        if self.done[word] & bit != 0 {
            return false;
        }
        self.done[word] |= bit;
        self.settled += 1;
        true
    }
}

#[derive(Debug)]
struct Part {
    epoch: u64,
    /// Dispatched offsets in increasing order as runs; the front run is unsettled (settled runs
    /// at the front are folded into `next_commit`).
    runs: VecDeque<Run>,
    /// Offsets holding several records whose records are not all settled (see [`Multi`]).
    multi: HashMap<i64, Multi>,
    /// Records dispatched and not settled.
    unsettled: usize,
    /// Offset to commit: one past the last offset of the settled prefix.
    next_commit: Option<i64>,
    /// Last offset committed (the value passed to the commit, i.e. next offset to read).
    committed: Option<i64>,
}

impl Part {
    fn new(epoch: u64) -> Self {
        Part { epoch, runs: VecDeque::new(), multi: HashMap::new(), unsettled: 0, next_commit: None, committed: None }
    }

    /// Registers record `record` of the `records` of `offset` as dispatched; `false` if the offset
    /// is not after everything seen so far (or, for a further record of a multi-record offset, if
    /// it is not the next record of the offset dispatched last).
    fn dispatch(&mut self, offset: i64, record: u32, records: u32) -> bool {
        if records > 1 && record > 0 {
            let last = self.runs.back().is_some_and(|r| !r.settled && r.end == offset + 1);
            return match self.multi.get_mut(&offset) {
                Some(m) if last && m.records == records && m.dispatched == record => {
                    m.dispatched += 1;
                    self.unsettled += 1;
                    true
                }
                _ => false,
            };
        }
        if records > 1 && self.multi.contains_key(&offset) {
            return false;
        }
        let after_last = match self.runs.back() {
            Some(last) => offset >= last.end,
            None => self.next_commit.is_none_or(|next| offset >= next),
        };
        if !after_last {
            return false;
        }
        self.unsettled += 1;
        if records > 1 {
            self.multi.insert(offset, Multi::new(records));
        }
        match self.runs.back_mut() {
            Some(last) if !last.settled && last.end == offset => last.end = offset + 1,
            _ => self.runs.push_back(Run { start: offset, end: offset + 1, settled: false }),
        }
        true
    }

    /// Marks record `record` of the `records` of `offset` settled; returns whether it was
    /// dispatched and unsettled. The offset itself is settled with its last record.
    fn settle(&mut self, offset: i64, record: u32, records: u32) -> bool {
        let at = self.runs.partition_point(|r| r.end <= offset);
        let Some(&run) = self.runs.get(at) else { return false };
        if run.settled || offset < run.start {
            return false;
        }
        if records > 1 || !self.multi.is_empty() {
            match self.multi.get_mut(&offset) {
                Some(m) if m.records == records => {
                    if !m.settle(record) {
                        return false;
                    }
                    self.unsettled -= 1;
                    if m.settled < m.records {
                        return true;
                    }
                    self.multi.remove(&offset);
                    self.settle_offset(at, run, offset);
                    return true;
                }
                // A single-record settlement of a multi-record offset (or the reverse): not ours.
                Some(_) => return false,
                None if records > 1 => return false,
                None => {}
            }
        }
        self.unsettled -= 1;
        self.settle_offset(at, run, offset);
        true
    }

    /// Marks `offset`, in the unsettled run `run` at index `at`, settled.
    fn settle_offset(&mut self, at: usize, run: Run, offset: i64) {
        // Split the unsettled run around `offset`.
        let mut pieces = Vec::with_capacity(3);
        if run.start < offset {
            pieces.push(Run { start: run.start, end: offset, settled: false });
        }
        pieces.push(Run { start: offset, end: offset + 1, settled: true });
        if offset + 1 < run.end {
            pieces.push(Run { start: offset + 1, end: run.end, settled: false });
        }
        self.runs.remove(at);
        for (i, piece) in pieces.into_iter().enumerate() {
            self.runs.insert(at + i, piece);
        }
        // The settled piece is at `at` or `at + 1`; merge it with settled neighbours.
        let mut i = if run.start < offset { at + 1 } else { at };
        if i + 1 < self.runs.len() && self.runs[i + 1].settled {
            let next = self.runs.remove(i + 1).expect("index checked");
            self.runs[i].end = next.end;
        }
        if i > 0 && self.runs[i - 1].settled {
            let current = self.runs.remove(i).expect("index checked");
            i -= 1;
            self.runs[i].end = current.end;
        }
        while let Some(front) = self.runs.front() {
            if !front.settled {
                break;
            }
            self.next_commit = Some(front.end);
            self.runs.pop_front();
        }
    }

    /// Offsets from the first unsettled one to the last dispatched one.
    fn span(&self) -> u64 {
        match (self.runs.front(), self.runs.back()) {
            (Some(first), Some(last)) if self.unsettled > 0 => (last.end - first.start) as u64,
            _ => 0,
        }
    }
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
        self.parts.insert(partition, Part::new(self.next_epoch));
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
    /// Records of unassigned partitions (or replayed offsets) get epoch 0: never current. The
    /// records of a multi-record offset must come in order, right after each other (the batcher
    /// never splits a message).
    pub fn dispatch(&mut self, items: &mut [Item]) {
        for item in items {
            item.epoch = 0;
            let Some(part) = self.parts.get_mut(&item.partition) else { continue };
            if part.dispatch(item.offset, item.record, item.records) {
                item.epoch = part.epoch;
            }
        }
    }

    /// Marks the record at `offset` settled (an offset holding one record). Returns `false` when
    /// it no longer belongs to this consumer (or was settled already).
    pub fn settle(&mut self, partition: i32, epoch: u64, offset: i64) -> bool {
        self.settle_record(partition, epoch, offset, 0, 1)
    }

    /// Marks record `record` of the `records` at `offset` settled; the offset counts as settled
    /// once all its records are. Returns `false` when the record no longer belongs to this
    /// consumer, was not dispatched, or was settled already (a second settlement counts nothing).
    pub fn settle_record(&mut self, partition: i32, epoch: u64, offset: i64, record: u32, records: u32) -> bool {
        let Some(part) = self.parts.get_mut(&partition) else { return false };
        if part.epoch != epoch {
            return false;
        }
        part.settle(offset, record, records)
    }

    /// Marks every record of `items` settled (see [`Tracker::settle_record`]).
    pub fn settle_items<'a>(&mut self, items: impl IntoIterator<Item = &'a Item>) {
        for item in items {
            self.settle_record(item.partition, item.epoch, item.offset, item.record, item.records);
        }
    }

    /// Records dispatched but not settled for `partition` (each record of a multi-record offset
    /// counts).
    pub fn in_flight(&self, partition: i32) -> usize {
        self.parts.get(&partition).map_or(0, |p| p.unsettled)
    }

    /// Runs and multi-record offsets stored over all partitions (the tracker's memory is
    /// proportional to this).
    pub fn stored_entries(&self) -> usize {
        self.parts.values().map(|p| p.runs.len() + p.multi.len()).sum()
    }

    /// Offsets from the first unsettled one to the last dispatched one (0 when all settled): how
    /// far the commit point lags behind what was read.
    pub fn unsettled_span(&self, partition: i32) -> u64 {
        self.parts.get(&partition).map_or(0, Part::span)
    }

    /// [`Tracker::unsettled_span`] of every tracked partition.
    pub fn spans(&self) -> Vec<(i32, u64)> {
        self.parts.iter().map(|(&p, part)| (p, part.span())).collect()
    }

    /// Records dispatched but not settled, over all partitions.
    pub fn total_in_flight(&self) -> usize {
        self.parts.values().map(|p| p.unsettled).sum()
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
        Item::pending(partition, offset, 0)
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

    // Issue #9, scenario 13: one stuck record must not make the tracker keep every later offset.
    #[test]
    fn one_stuck_record_keeps_the_tracker_small() {
        let mut t = Tracker::new();
        let e = t.assign(0);
        let mut stuck = None;
        for start in (0..1_000_000i64).step_by(1000) {
            let items = dispatch(&mut t, 0, &(start..start + 1000).collect::<Vec<_>>());
            for item in items {
                if item.offset == 0 {
                    stuck = Some(item);
                } else {
                    t.settle(0, e, item.offset);
                }
            }
        }
        assert_eq!(t.in_flight(0), 1, "only offset 0 is unsettled");
        assert!(t.stored_entries() <= 4, "{} entries stored for one unsettled record", t.stored_entries());
        assert_eq!(t.unsettled_span(0), 1_000_000, "first unsettled offset to the last dispatched one");
        assert_eq!(t.commit_points(None), vec![]);
        t.settle_items([stuck.as_ref().unwrap()]);
        assert_eq!(t.commit_points(None), vec![(0, 1_000_000)]);
        assert_eq!((t.in_flight(0), t.unsettled_span(0)), (0, 0));
    }

    // Runs against a plain model: random offsets with gaps, settled in random order (some twice),
    // the commit point is always one past the contiguous settled prefix of dispatched offsets.
    #[test]
    fn runs_agree_with_a_plain_model() {
        use rand::Rng;
        use rand::seq::SliceRandom;
        let mut rng = rand::rng();
        for _ in 0..200 {
            let mut t = Tracker::new();
            let e = t.assign(0);
            let mut offsets = Vec::new();
            let mut next = rng.random_range(0..5i64);
            for _ in 0..rng.random_range(1..60) {
                offsets.push(next);
                next += rng.random_range(1..4);
            }
            dispatch(&mut t, 0, &offsets);
            let mut order = offsets.clone();
            order.shuffle(&mut rng);
            let mut settled = std::collections::BTreeSet::new();
            for &o in &order {
                assert!(t.settle(0, e, o), "first settle of {o}");
                assert!(!t.settle(0, e, o), "second settle of {o} is a no-op");
                settled.insert(o);
                let prefix = offsets.iter().take_while(|o| settled.contains(o)).last();
                let expected: Vec<(i32, i64)> = prefix.map(|&o| (0, o + 1)).into_iter().collect();
                assert_eq!(t.commit_points(None), expected, "offsets {offsets:?}, settled {settled:?}");
                assert_eq!(t.in_flight(0), offsets.len() - settled.len());
                assert!(t.stored_entries() <= 2 * t.in_flight(0) + 1);
            }
        }
    }

    // ---- Several records per offset (contract v2) ----

    /// Items for `(offset, records)` messages, in order: one item per record.
    fn messages(partition: i32, messages: &[(i64, u32)]) -> Vec<Item> {
        messages
            .iter()
            .flat_map(|&(offset, records)| {
                (0..records).map(move |record| Item {
                    record,
                    records,
                    from_v2: records > 1,
                    ..item(partition, offset)
                })
            })
            .collect()
    }

    fn dispatch_messages(t: &mut Tracker, partition: i32, m: &[(i64, u32)]) -> Vec<Item> {
        let mut items = messages(partition, m);
        t.dispatch(&mut items);
        items
    }

    fn settle(t: &mut Tracker, item: &Item) -> bool {
        t.settle_record(item.partition, item.epoch, item.offset, item.record, item.records)
    }

    #[test]
    fn a_multi_record_offset_is_settled_when_all_its_records_are() {
        let mut t = Tracker::new();
        let e = t.assign(0);
        let items = dispatch_messages(&mut t, 0, &[(10, 3), (11, 2)]);
        assert!(items.iter().all(|i| i.epoch == e), "further records of the offset just dispatched are accepted");
        assert_eq!((t.in_flight(0), t.unsettled_span(0)), (5, 2), "records in flight, offsets spanned");
        assert!(settle(&mut t, &items[0]));
        assert!(settle(&mut t, &items[2]));
        assert_eq!(t.commit_points(None), vec![], "record 1 of offset 10 is still in flight");
        assert!(settle(&mut t, &items[3]) && settle(&mut t, &items[4]));
        assert_eq!(t.commit_points(None), vec![], "offset 11 is settled, 10 is not");
        assert_eq!(t.in_flight(0), 1);
        assert!(settle(&mut t, &items[1]));
        assert_eq!(t.commit_points(None), vec![(0, 12)]);
        assert_eq!((t.in_flight(0), t.unsettled_span(0), t.stored_entries()), (0, 0, 0));
    }

    #[test]
    fn settling_a_record_twice_counts_once() {
        let mut t = Tracker::new();
        t.assign(0);
        let items = dispatch_messages(&mut t, 0, &[(0, 2)]);
        assert!(settle(&mut t, &items[0]));
        assert!(!settle(&mut t, &items[0]), "a second settlement of the same record is a no-op");
        assert!(!settle(&mut t, &items[0]));
        assert_eq!(t.commit_points(None), vec![], "record 1 was never settled");
        assert_eq!(t.in_flight(0), 1);
        // A settlement claiming the offset holds one record does not settle it either.
        assert!(!t.settle(0, items[0].epoch, 0));
        assert_eq!(t.commit_points(None), vec![]);
        assert!(settle(&mut t, &items[1]));
        assert_eq!(t.commit_points(None), vec![(0, 1)]);
        assert!(!settle(&mut t, &items[1]), "settled offsets stay settled");
    }

    #[test]
    fn interleaved_v1_and_v2_offsets_commit_in_order() {
        let mut t = Tracker::new();
        t.assign(0);
        // v1, v2 (3 records), v1, v2 (2 records), v1 — over two batches (a message never spans two).
        let mut a = dispatch_messages(&mut t, 0, &[(0, 1), (1, 3), (2, 1)]);
        let b = dispatch_messages(&mut t, 0, &[(3, 2), (4, 1)]);
        assert!(a.iter().chain(&b).all(|i| i.epoch != 0));
        assert_eq!(t.in_flight(0), 8);
        for i in &b {
            settle(&mut t, i);
        }
        assert_eq!(t.commit_points(None), vec![]);
        settle(&mut t, &a[0]);
        assert_eq!(t.commit_points(None), vec![(0, 1)]);
        settle(&mut t, &a[4]); // offset 2 (v1)
        settle(&mut t, &a[1]);
        settle(&mut t, &a[3]);
        assert_eq!(t.commit_points(None), vec![(0, 1)], "offset 1 still misses record 1");
        let last = a.remove(2);
        settle(&mut t, &last);
        assert_eq!(t.commit_points(None), vec![(0, 5)]);
        assert_eq!(t.in_flight(0), 0);
    }

    #[test]
    fn replayed_or_out_of_order_records_of_a_multi_record_offset_are_not_tracked() {
        let mut t = Tracker::new();
        t.assign(0);
        let items = dispatch_messages(&mut t, 0, &[(5, 3)]);
        assert!(items.iter().all(|i| i.epoch != 0));
        // The same message read again: every record is refused.
        let replay = dispatch_messages(&mut t, 0, &[(5, 3)]);
        assert!(replay.iter().all(|i| i.epoch == 0), "{replay:?}");
        // A further record of an offset that is not the last one dispatched, or out of order.
        dispatch_messages(&mut t, 0, &[(6, 1)]);
        let mut late = vec![Item { record: 1, records: 2, ..item(0, 6) }, Item { record: 2, records: 3, ..item(0, 5) }];
        t.dispatch(&mut late);
        assert!(late.iter().all(|i| i.epoch == 0));
        let mut skip = messages(0, &[(7, 3)]);
        skip.remove(1);
        t.dispatch(&mut skip);
        assert_eq!((skip[0].epoch != 0, skip[1].epoch), (true, 0), "record 2 before record 1 is refused");
        assert_eq!(t.in_flight(0), 3 + 1 + 1);
    }

    #[test]
    fn revoking_forgets_multi_record_offsets() {
        let mut t = Tracker::new();
        let old = t.assign(0);
        let stale = dispatch_messages(&mut t, 0, &[(0, 2)]);
        t.revoke(0);
        t.assign(0);
        let fresh = dispatch_messages(&mut t, 0, &[(0, 2)]);
        assert!(fresh.iter().all(|i| i.epoch != old && i.epoch != 0));
        t.settle_items(&stale);
        assert_eq!(t.in_flight(0), 2, "settlements of the old epoch count nothing");
        t.settle_items(&fresh);
        assert_eq!(t.commit_points(None), vec![(0, 1)]);
    }

    // Multi-record offsets against a plain model: random messages of 1–4 records, every record
    // settled in random order (some twice); an offset is settled when all its records are.
    #[test]
    fn multi_record_offsets_agree_with_a_plain_model() {
        use rand::Rng;
        use rand::seq::SliceRandom;
        let mut rng = rand::rng();
        for _ in 0..200 {
            let mut t = Tracker::new();
            t.assign(0);
            let mut msgs = Vec::new();
            let mut next = rng.random_range(0..5i64);
            for _ in 0..rng.random_range(1..40) {
                msgs.push((next, rng.random_range(1..5u32)));
                next += rng.random_range(1..3);
            }
            let mut items = Vec::new();
            for chunk in msgs.chunks(rng.random_range(1..8)) {
                items.extend(dispatch_messages(&mut t, 0, chunk));
            }
            assert!(items.iter().all(|i| i.epoch != 0));
            let mut order: Vec<usize> = (0..items.len()).collect();
            order.shuffle(&mut rng);
            let mut settled = std::collections::BTreeSet::new();
            for &i in &order {
                let item = &items[i];
                assert!(settle(&mut t, item));
                assert!(!settle(&mut t, item), "second settle is a no-op");
                settled.insert((item.offset, item.record));
                let done = |&(o, n): &(i64, u32)| (0..n).all(|r| settled.contains(&(o, r)));
                let prefix = msgs.iter().take_while(|m| done(m)).last();
                let expected: Vec<(i32, i64)> = prefix.map(|&(o, _)| (0, o + 1)).into_iter().collect();
                assert_eq!(t.commit_points(None), expected, "messages {msgs:?}, settled {settled:?}");
                assert_eq!(t.in_flight(0), items.len() - settled.len());
            }
            assert_eq!(t.stored_entries(), 0);
        }
    }
}
