//! The newest entries of each partition, kept in memory for consumers that are caught up, within
//! one memory budget per shard.
//!
//! Entries enter at append time as the very `Bytes` the producer's request was read into, so a
//! tailing fetch is served without touching the disk or copying. Each partition's cache holds at
//! most `log.tail.cache.bytes`, and all the caches of a shard together at most
//! `log.tail.cache.shard.bytes` ([`TailBudget`]): past that, the shard's oldest cached entry goes
//! first, whichever partition holds it. Busy partitions thus share the budget by how recently
//! they were written, an idle partition's entries leave before a busy one's, and the memory a
//! shard's caches keep stays under its budget whatever the partition count.
//!
//! ```text
//!  TailBudget (one per shard): used ≤ bytes_max
//!    oldest: { seq of each cache's oldest entry → that cache }   evict the smallest first
//!  TailCache (one per partition): entries oldest → newest, each with a shard-wide seq
//! ```

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, VecDeque};
use std::rc::{Rc, Weak};

use bytes::Bytes;

use crate::types::Offset;

/// The memory every tail cache of one shard may keep, together.
pub struct TailBudget {
    bytes_max: usize,
    used: Cell<usize>,
    next_seq: Cell<u64>,
    /// Every cache that holds entries, by the sequence number of its oldest entry.
    oldest: RefCell<BTreeMap<u64, Weak<RefCell<TailCache>>>>,
}

impl TailBudget {
    pub fn new(bytes_max: usize) -> Rc<Self> {
        Rc::new(Self {
            bytes_max,
            used: Cell::new(0),
            next_seq: Cell::new(0),
            oldest: RefCell::default(),
        })
    }

    /// Bytes the shard's caches keep now.
    pub fn used_bytes(&self) -> usize {
        self.used.get()
    }

    /// Evicts the shard's oldest cached entries until the caches fit the budget.
    fn evict_over_budget(&self) {
        while self.used.get() > self.bytes_max {
            // The map is not borrowed while a cache is: evicting re-keys the cache.
            let Some((seq, cache)) = self.oldest.borrow_mut().pop_first() else { break };
            let Some(cache) = cache.upgrade() else { continue };
            let mut cache = cache.borrow_mut();
            assert_eq!(
                cache.entries.front().map(|c| c.seq),
                Some(seq),
                "a cache is keyed by its oldest entry"
            );
            cache.pop_oldest();
            if let Some(front) = cache.entries.front() {
                self.oldest.borrow_mut().insert(front.seq, cache.me.clone());
            }
        }
    }
}

struct Cached {
    /// Shard-wide insertion order.
    seq: u64,
    base_offset: Offset,
    next_offset: Offset,
    entry: Bytes,
    /// Memory the entry keeps alive: what the budget is charged.
    footprint: usize,
}

pub struct TailCache {
    entries: VecDeque<Cached>,
    bytes: usize,
    /// This partition's own limit.
    bytes_max: usize,
    budget: Rc<TailBudget>,
    me: Weak<RefCell<TailCache>>,
}

impl TailCache {
    pub fn new(bytes_max: usize, budget: Rc<TailBudget>) -> Rc<RefCell<Self>> {
        Rc::new_cyclic(|me| {
            RefCell::new(Self {
                entries: VecDeque::new(),
                bytes: 0,
                bytes_max,
                budget,
                me: me.clone(),
            })
        })
    }

    /// Caches an entry; `footprint` is the memory it keeps alive (at least its length). Then
    /// the shard's oldest entries leave until its caches fit its budget (this one's included).
    pub fn push(
        cache: &RefCell<Self>,
        base_offset: Offset,
        next_offset: Offset,
        entry: Bytes,
        footprint: usize,
    ) {
        let budget = {
            let mut this = cache.borrow_mut();
            debug_assert!(this.entries.back().is_none_or(|b| b.next_offset == base_offset));
            let footprint = footprint.max(entry.len());
            let seq = this.budget.next_seq.get();
            this.budget.next_seq.set(seq + 1);
            if this.entries.is_empty() {
                this.budget.oldest.borrow_mut().insert(seq, this.me.clone());
            }
            this.entries.push_back(Cached { seq, base_offset, next_offset, entry, footprint });
            this.charge(footprint);
            let front = this.entries.front().map(|c| c.seq);
            while this.bytes > this.bytes_max {
                this.pop_oldest();
            }
            this.rekey_from(front);
            this.budget.clone()
        };
        budget.evict_over_budget();
    }

    /// Drops the entries at `offset` and after: they were discarded before reaching the disk.
    pub fn truncate_from(&mut self, offset: Offset) {
        let front = self.entries.front().map(|c| c.seq);
        while self.entries.back().is_some_and(|c| c.base_offset >= offset) {
            if let Some(dropped) = self.entries.pop_back() {
                self.uncharge(dropped.footprint);
            }
        }
        self.rekey_from(front);
    }

    /// Entries holding `offset` and after, below `end_offset`, up to `max_bytes` (but always
    /// the first entry whole). `None` when `offset` is older than the cache.
    pub fn read(&self, offset: Offset, end_offset: Offset, max_bytes: usize) -> Option<Vec<Bytes>> {
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

    /// Drops the oldest entry (the caller re-keys the cache).
    fn pop_oldest(&mut self) {
        if let Some(old) = self.entries.pop_front() {
            self.uncharge(old.footprint);
        }
    }

    fn charge(&mut self, footprint: usize) {
        self.bytes += footprint;
        self.budget.used.set(self.budget.used.get() + footprint);
    }

    fn uncharge(&mut self, footprint: usize) {
        assert!(
            footprint <= self.bytes && footprint <= self.budget.used.get(),
            "uncharging {footprint} bytes from a cache of {} and a shard total of {}",
            self.bytes,
            self.budget.used.get()
        );
        self.bytes -= footprint;
        self.budget.used.set(self.budget.used.get() - footprint);
    }

    /// Moves this cache's key in the budget from its oldest entry's seq `before` to its oldest
    /// entry's seq now.
    fn rekey_from(&self, before: Option<u64>) {
        let now = self.entries.front().map(|c| c.seq);
        if now == before {
            return;
        }
        let mut oldest = self.budget.oldest.borrow_mut();
        if let Some(before) = before {
            oldest.remove(&before);
        }
        if let Some(now) = now {
            oldest.insert(now, self.me.clone());
        }
    }
}

impl Drop for TailCache {
    /// A closed partition gives its cached bytes back to the shard.
    fn drop(&mut self) {
        if let Some(front) = self.entries.front() {
            self.budget.oldest.borrow_mut().remove(&front.seq);
        }
        let bytes = self.bytes;
        self.budget.used.set(self.budget.used.get() - bytes);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cache_in(budget: &Rc<TailBudget>, own_max: usize) -> Rc<RefCell<TailCache>> {
        TailCache::new(own_max, budget.clone())
    }

    /// Entries `from..to`, two offsets and 100 bytes each.
    fn fill(cache: &RefCell<TailCache>, from: u64, to: u64) {
        for i in from..to {
            let (base, next) = (Offset(i * 2), Offset(i * 2 + 2));
            TailCache::push(cache, base, next, Bytes::from(vec![i as u8; 100]), 100);
        }
    }

    fn cache_of(own_max: usize) -> Rc<RefCell<TailCache>> {
        let cache = cache_in(&TailBudget::new(usize::MAX), own_max);
        fill(&cache, 0, 10);
        cache
    }

    #[test]
    fn serves_from_the_entry_holding_the_offset() {
        let cache = cache_of(10_000);
        let cache = cache.borrow();
        let got = cache.read(Offset(5), Offset(20), 250).unwrap();
        assert_eq!(got.len(), 2);
        assert_eq!(got[0][0], 2);
        assert!(cache.read(Offset(20), Offset(20), 250).unwrap().is_empty());
    }

    #[test]
    fn stops_at_the_end_offset_and_always_returns_one_entry() {
        let cache = cache_of(10_000);
        let cache = cache.borrow();
        assert_eq!(cache.read(Offset(0), Offset(4), 10_000).unwrap().len(), 2);
        assert_eq!(cache.read(Offset(0), Offset(20), 1).unwrap().len(), 1);
    }

    #[test]
    fn truncation_drops_the_newest_entries_and_their_bytes() {
        let cache = cache_of(1 << 20);
        cache.borrow_mut().truncate_from(Offset(8));
        assert_eq!(cache.borrow().read(Offset(8), Offset(20), 1 << 20).map(|e| e.len()), Some(0));
        assert_eq!(cache.borrow().read(Offset(0), Offset(20), 1 << 20).map(|e| e.len()), Some(4));
        assert_eq!(cache.borrow().bytes, 4 * 100);
        TailCache::push(&cache, Offset(8), Offset(9), Bytes::from_static(b"again"), 5);
        assert_eq!(
            cache.borrow().read(Offset(8), Offset(20), 1 << 20).unwrap()[0],
            Bytes::from_static(b"again")
        );
    }

    #[test]
    fn evicts_oldest_beyond_its_own_limit_and_reports_misses() {
        let cache = cache_of(450);
        let cache = cache.borrow();
        assert!(cache.read(Offset(0), Offset(20), 1000).is_none());
        assert!(cache.read(Offset(11), Offset(20), 1000).is_none());
        assert_eq!(cache.read(Offset(12), Offset(20), 1000).unwrap().len(), 4);
    }

    /// The shard's caches together stay within its budget: the shard's oldest entries leave
    /// first, from whichever partition holds them; a closed partition gives its bytes back.
    #[test]
    fn a_shards_caches_share_one_budget_oldest_entries_first() {
        let budget = TailBudget::new(1000);
        let idle = cache_in(&budget, 800);
        fill(&idle, 0, 5);
        let busy = cache_in(&budget, 800);
        fill(&busy, 0, 8);
        assert_eq!(budget.used_bytes(), 1000);
        assert_eq!(idle.borrow().bytes, 200, "the idle partition's oldest entries went first");
        assert_eq!(busy.borrow().bytes, 800);
        assert!(idle.borrow().read(Offset(0), Offset(100), 1000).is_none());
        assert_eq!(idle.borrow().read(Offset(6), Offset(100), 1000).unwrap().len(), 2);

        fill(&busy, 8, 11);
        assert_eq!(budget.used_bytes(), 1000);
        assert_eq!(idle.borrow().bytes + busy.borrow().bytes, 1000);

        drop(busy);
        assert_eq!(budget.used_bytes(), idle.borrow().bytes);
        idle.borrow_mut().truncate_from(Offset(0));
        assert_eq!(budget.used_bytes(), 0);
        assert!(budget.oldest.borrow().is_empty());
    }

    /// Random pushes, truncations and closes over several partitions: the shard total always
    /// equals the sum of the caches, stays within the budget, and every cache is keyed by its
    /// oldest entry.
    #[test]
    fn the_budget_accounting_holds_under_random_operations() {
        for seed in crate::testing::seeds(20) {
            random_operations(seed);
        }
    }

    fn random_operations(seed: u64) {
        let mut rng = crate::testing::TestRng::new(seed);
        let budget = TailBudget::new(5_000);
        let mut caches: Vec<(Rc<RefCell<TailCache>>, Offset)> = Vec::new();
        for _ in 0..5_000 {
            match rng.below(10) {
                0 if !caches.is_empty() => {
                    let victim = rng.below(caches.len() as u64) as usize;
                    caches.swap_remove(victim);
                }
                1 if !caches.is_empty() => {
                    let pick = rng.below(caches.len() as u64) as usize;
                    let (cache, next) = &mut caches[pick];
                    let from = Offset(next.0.saturating_sub(rng.below(4)));
                    cache.borrow_mut().truncate_from(from);
                    *next = from;
                }
                2 => caches.push((cache_in(&budget, 500 + rng.below(2_000) as usize), Offset(0))),
                _ if !caches.is_empty() => {
                    let pick = rng.below(caches.len() as u64) as usize;
                    let (cache, next) = &mut caches[pick];
                    let len = 1 + rng.below(700) as usize;
                    TailCache::push(cache, *next, next.plus(1), Bytes::from(vec![0; len]), len);
                    *next = next.plus(1);
                }
                _ => {}
            }
            let total: usize = caches.iter().map(|(c, _)| c.borrow().bytes).sum();
            assert_eq!(budget.used_bytes(), total, "seed {seed}");
            assert!(total <= 5_000, "seed {seed}: {total} bytes cached");
            let keyed = budget.oldest.borrow().len();
            let holding = caches.iter().filter(|(c, _)| !c.borrow().entries.is_empty()).count();
            assert_eq!(keyed, holding, "seed {seed}");
        }
    }
}
