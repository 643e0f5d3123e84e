//! Splitting the reading of partitions across more workers than there are partitions.
//!
//! Partitions and workers are decoupled: with at least as many partitions as workers, each
//! worker reads whole partitions (`partition % workers == index`); with more workers than
//! partitions, partition `p` is shared by the workers `w` with `w % partitions == p`, each
//! reading one *slot* of it. A batch run gives each slot a contiguous slice of the
//! partition ([`Share::slice`]); the speed layer, which tails a partition that keeps
//! growing, gives slot `j` of `k` the chunks `j, j + k, j + 2k, ...` of [`CHUNK`] events
//! from its start offset ([`Interleaved`]). Each slot's position is then a lower bound of
//! what it has read, and the minimum over a partition's slots is an offset below which
//! every event has been read: the partition's frontier.

/// Events per chunk of an interleaved (speed layer) share.
pub(crate) const CHUNK: u64 = 16 * 1024;

/// What one worker reads of one partition: slot `slot` of `slots`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Share {
    /// The partition.
    pub partition: u32,
    /// Which slot of the partition this worker reads.
    pub slot: u32,
    /// How many workers share the partition.
    pub slots: u32,
}

/// The shares of worker `index` of `workers` over `partitions` partitions. With `split`
/// false (or no more workers than partitions), whole partitions only.
pub(crate) fn shares(partitions: usize, workers: usize, index: usize, split: bool) -> Vec<Share> {
    let workers = workers.max(1);
    if !split || workers <= partitions {
        return (0..partitions as u32)
            .filter(|p| *p as usize % workers == index)
            .map(|partition| Share { partition, slot: 0, slots: 1 })
            .collect();
    }
    if partitions == 0 {
        return Vec::new();
    }
    let partition = index % partitions;
    vec![Share { partition: partition as u32, slot: (index / partitions) as u32, slots: slots_of(partitions, workers, partition, split) }]
}

/// How many workers share `partition` (see [`shares`]).
pub(crate) fn slots_of(partitions: usize, workers: usize, partition: usize, split: bool) -> u32 {
    if !split || workers <= partitions {
        return 1;
    }
    // The workers w < workers with w % partitions == partition.
    (workers - partition).div_ceil(partitions) as u32
}

impl Share {
    /// The contiguous slice `[from, to)` of `[start, end)` this share reads (batch runs).
    pub(crate) fn slice(&self, start: u64, end: u64) -> (u64, u64) {
        let len = end.saturating_sub(start) as u128;
        let at = |j: u32| start + (len * j as u128 / self.slots as u128) as u64;
        (at(self.slot), at(self.slot + 1))
    }
}

/// A speed layer's reading position in an interleaved share of a partition that starts at
/// `base`: always inside one of its own chunks (or at the start of one).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Interleaved {
    share: Share,
    base: u64,
    /// The next offset to read: every event of this share below it has been read.
    pub next: u64,
}

impl Interleaved {
    /// The position of `share` in a partition read from `base`.
    pub(crate) fn new(share: Share, base: u64) -> Interleaved {
        let next = if share.slots == 1 { base } else { base + share.slot as u64 * CHUNK };
        Interleaved { share, base, next }
    }

    /// The partition.
    pub(crate) fn partition(&self) -> u32 {
        self.share.partition
    }

    /// The slot of the partition.
    pub(crate) fn slot(&self) -> u32 {
        self.share.slot
    }

    /// The next range to read, `[next, to)` with `to <= end` and at most `budget` events
    /// (empty when there is nothing to read yet).
    pub(crate) fn range(&self, end: u64, budget: u64) -> (u64, u64) {
        if self.share.slots == 1 {
            return (self.next, end.min(self.next.saturating_add(budget)).max(self.next));
        }
        let chunk_end = self.base + ((self.next - self.base) / CHUNK + 1) * CHUNK;
        (self.next, end.min(chunk_end).min(self.next.saturating_add(budget)).max(self.next))
    }

    /// Records that `[next, to)` was read; past the end of a chunk, moves to this share's
    /// next chunk.
    pub(crate) fn advance(&mut self, to: u64) {
        if to <= self.next {
            // Nothing read: stay (a position at a chunk's start is that chunk's).
            return;
        }
        self.next = to;
        if self.share.slots > 1 && (self.next - self.base).is_multiple_of(CHUNK) {
            self.next += (self.share.slots as u64 - 1) * CHUNK;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shares_cover_every_partition_once_or_split_evenly() {
        for partitions in 1..6 {
            for workers in 1..12 {
                for split in [false, true] {
                    let all: Vec<Share> = (0..workers).flat_map(|w| shares(partitions, workers, w, split)).collect();
                    for p in 0..partitions as u32 {
                        let of_p: Vec<&Share> = all.iter().filter(|s| s.partition == p).collect();
                        let want = slots_of(partitions, workers, p as usize, split);
                        assert_eq!(of_p.len(), want as usize, "{partitions} partitions, {workers} workers, split {split}");
                        let mut slots: Vec<u32> = of_p.iter().map(|s| s.slot).collect();
                        slots.sort();
                        assert_eq!(slots, (0..want).collect::<Vec<_>>());
                        assert!(of_p.iter().all(|s| s.slots == want));
                    }
                    // Every worker has work when splitting (as long as there are partitions).
                    if split && workers >= partitions {
                        assert!((0..workers).all(|w| !shares(partitions, workers, w, split).is_empty()));
                    }
                }
            }
        }
    }

    #[test]
    fn slices_cover_a_partition_exactly() {
        for slots in 1..7u32 {
            for (start, end) in [(0u64, 0u64), (0, 1), (5, 17), (0, 1_000_003)] {
                let mut at = start;
                for slot in 0..slots {
                    let (from, to) = Share { partition: 0, slot, slots }.slice(start, end);
                    assert_eq!(from, at);
                    assert!(to >= from);
                    at = to;
                }
                assert_eq!(at, end);
            }
        }
    }

    /// Interleaved shares, advanced in uneven steps as the log grows, read every offset
    /// exactly once, and the minimum of their positions is always a frontier: every offset
    /// below it was read.
    #[test]
    fn interleaved_shares_read_everything_once_and_bound_the_frontier() {
        for slots in 1..5u32 {
            let base = 1000;
            let mut read = vec![0u8; (5 * CHUNK * slots as u64) as usize];
            let mut pos: Vec<Interleaved> = (0..slots).map(|slot| Interleaved::new(Share { partition: 0, slot, slots }, base)).collect();
            let mut end = base;
            let mut x: u64 = 0x2545_F491_4F6C_DD1D;
            for round in 0..400 {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                end = (end + x % (CHUNK / 2)).min(base + read.len() as u64);
                let i = (x >> 20) as usize % slots as usize;
                let budget = 1 + x % (2 * CHUNK);
                let (from, to) = pos[i].range(end, budget);
                assert!(from >= to || (to <= end && to - from <= budget));
                for o in from..to {
                    read[(o - base) as usize] += 1;
                }
                pos[i].advance(to);
                let frontier = pos.iter().map(|p| p.next).min().unwrap();
                // Never past the log's end: no event that does not exist yet is claimed.
                assert!(frontier <= end, "round {round}: frontier {frontier} past the end {end}");
                assert!(read[..(frontier - base) as usize].iter().all(|r| *r == 1), "round {round}: frontier {frontier}");
            }
            // Drain everything.
            let end = base + read.len() as u64;
            for p in pos.iter_mut() {
                loop {
                    let (from, to) = p.range(end, u64::MAX);
                    if from >= to {
                        break;
                    }
                    for o in from..to {
                        read[(o - base) as usize] += 1;
                    }
                    p.advance(to);
                }
            }
            assert!(read.iter().all(|r| *r == 1), "{slots} slots");
            assert!(pos.iter().map(|p| p.next).min().unwrap() >= end);
        }
    }
}
