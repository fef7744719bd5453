//! The lease table's free blocks.

use std::collections::BTreeMap;

/// Free block indexes as a set of disjoint `[start, end)` intervals: lowest-free lookup,
/// acquire and release are O(log n) and the set stays tiny for any pool size.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct FreeBlocks {
    intervals: BTreeMap<u64, u64>,
}

impl FreeBlocks {
    pub(super) fn all(count: u64) -> Self {
        let mut intervals = BTreeMap::new();
        if count > 0 {
            intervals.insert(0, count);
        }
        Self { intervals }
    }

    pub(super) fn len(&self) -> u64 {
        self.intervals.iter().map(|(start, end)| end - start).sum()
    }

    pub(super) fn take_lowest(&mut self) -> Option<u32> {
        let (&start, &end) = self.intervals.iter().next()?;
        self.intervals.remove(&start);
        if start + 1 < end {
            self.intervals.insert(start + 1, end);
        }
        u32::try_from(start).ok()
    }

    /// Marks `index` used; false when it was not free.
    pub(super) fn take(&mut self, index: u32) -> bool {
        let index = u64::from(index);
        let Some((&start, &end)) = self.intervals.range(..=index).next_back() else {
            return false;
        };
        if index >= end {
            return false;
        }
        self.intervals.remove(&start);
        if start < index {
            self.intervals.insert(start, index);
        }
        if index + 1 < end {
            self.intervals.insert(index + 1, end);
        }
        true
    }

    pub(super) fn give_back(&mut self, index: u32) {
        let mut start = u64::from(index);
        let mut end = start + 1;
        if let Some((&prev_start, &prev_end)) = self.intervals.range(..start).next_back() {
            if prev_end == start {
                self.intervals.remove(&prev_start);
                start = prev_start;
            }
        }
        if let Some(next_end) = self.intervals.remove(&end) {
            end = next_end;
        }
        self.intervals.insert(start, end);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn free_set_merges_intervals() {
        let mut f = FreeBlocks::all(10);
        for _ in 0..10 {
            f.take_lowest();
        }
        assert_eq!(f.len(), 0);
        for i in [5, 3, 4, 9, 0] {
            f.give_back(i);
        }
        assert_eq!(
            f.intervals
                .iter()
                .map(|(a, b)| (*a, *b))
                .collect::<Vec<_>>(),
            vec![(0, 1), (3, 6), (9, 10)]
        );
        assert!(f.take(4));
        assert!(!f.take(4));
        assert!(!f.take(7));
        assert_eq!(f.len(), 4);
        assert_eq!(f.take_lowest(), Some(0));
        assert_eq!(f.take_lowest(), Some(3));
        assert_eq!(f.take_lowest(), Some(5));
    }
}
