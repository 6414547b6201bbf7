//! The newest entries of a partition, kept in memory for consumers that are caught up.
//!
//! Entries enter at append time as the very `Bytes` the producer's request was read into, so a
//! tailing fetch is served without touching the disk or copying. The cache is bounded by bytes;
//! the oldest entries leave first.

use std::collections::VecDeque;

use bytes::Bytes;

struct Cached {
    base_offset: u64,
    next_offset: u64,
    entry: Bytes,
    /// Memory the entry keeps alive: what the budget is charged.
    footprint: usize,
}

pub struct TailCache {
    entries: VecDeque<Cached>,
    bytes: usize,
    budget_bytes: usize,
}

impl TailCache {
    pub fn new(budget_bytes: usize) -> Self {
        Self { entries: VecDeque::new(), bytes: 0, budget_bytes }
    }

    /// Caches an entry; `footprint` is the memory it keeps alive (at least its length).
    pub fn push(&mut self, base_offset: u64, next_offset: u64, entry: Bytes, footprint: usize) {
        debug_assert!(self.entries.back().is_none_or(|b| b.next_offset == base_offset));
        let footprint = footprint.max(entry.len());
        self.bytes += footprint;
        self.entries.push_back(Cached { base_offset, next_offset, entry, footprint });
        while self.bytes > self.budget_bytes {
            let Some(old) = self.entries.pop_front() else { break };
            self.bytes -= old.footprint;
        }
    }

    /// Drops the entries at `offset` and after: they were discarded before reaching the disk.
    pub fn truncate_from(&mut self, offset: u64) {
        while self.entries.back().is_some_and(|c| c.base_offset >= offset) {
            if let Some(dropped) = self.entries.pop_back() {
                self.bytes -= dropped.footprint;
            }
        }
    }

    /// Entries holding `offset` and after, below `end_offset`, up to `max_bytes` (but always
    /// the first entry whole). `None` when `offset` is older than the cache.
    pub fn read(&self, offset: u64, end_offset: u64, max_bytes: usize) -> Option<Vec<Bytes>> {
        let first = self.entries.front()?;
        if offset < first.base_offset {
            return None;
        }
        let start = self.entries.partition_point(|c| c.next_offset <= offset);
        let mut out = Vec::new();
        let mut total = 0;
        for cached in self.entries.range(start..) {
            if cached.base_offset >= end_offset
                || (!out.is_empty() && total + cached.entry.len() > max_bytes)
            {
                break;
            }
            total += cached.entry.len();
            out.push(cached.entry.clone());
        }
        Some(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cache_of(budget: usize) -> TailCache {
        let mut cache = TailCache::new(budget);
        for i in 0..10u64 {
            cache.push(i * 2, i * 2 + 2, Bytes::from(vec![i as u8; 100]), 100);
        }
        cache
    }

    #[test]
    fn serves_from_the_entry_holding_the_offset() {
        let cache = cache_of(10_000);
        let got = cache.read(5, 20, 250).unwrap();
        assert_eq!(got.len(), 2);
        assert_eq!(got[0][0], 2);
        assert!(cache.read(20, 20, 250).unwrap().is_empty());
    }

    #[test]
    fn stops_at_the_end_offset_and_always_returns_one_entry() {
        let cache = cache_of(10_000);
        assert_eq!(cache.read(0, 4, 10_000).unwrap().len(), 2);
        assert_eq!(cache.read(0, 20, 1).unwrap().len(), 1);
    }

    #[test]
    fn truncation_drops_the_newest_entries_and_their_bytes() {
        let mut cache = cache_of(1 << 20);
        cache.truncate_from(8);
        assert_eq!(cache.read(8, 20, 1 << 20).map(|e| e.len()), Some(0));
        assert_eq!(cache.read(0, 20, 1 << 20).map(|e| e.len()), Some(4));
        assert_eq!(cache.bytes, 4 * 100);
        cache.push(8, 9, Bytes::from_static(b"again"), 5);
        assert_eq!(cache.read(8, 20, 1 << 20).unwrap()[0], Bytes::from_static(b"again"));
    }

    #[test]
    fn evicts_oldest_beyond_budget_and_reports_misses() {
        let cache = cache_of(450);
        assert!(cache.read(0, 20, 1000).is_none());
        assert!(cache.read(11, 20, 1000).is_none());
        assert_eq!(cache.read(12, 20, 1000).unwrap().len(), 4);
    }
}
