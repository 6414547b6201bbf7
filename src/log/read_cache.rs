//! Ranges of partition logs recently read from the disk, kept in memory for the next reader,
//! within one memory budget per shard.
//!
//! The tail cache serves readers that keep up with the producers; this cache serves the ones
//! that do not. A range is a *chunk*: whole, verified entries of one segment between two of its
//! index points (`log/partition/reads.rs` cuts segments into chunks of about
//! [`crate::log::partition::READ_CHUNK_BYTES`], the same cut for every reader, so several
//! readers of the same data share one copy of it, read from the disk once). Chunks are read
//! when a reader misses and ahead of sequential readers (`read_ahead.rs`).
//!
//! All the chunks of a shard's partitions share `log.read.cache.shard.bytes`: the least
//! recently used chunk goes first, whichever partition holds it, and reads ahead in flight
//! hold a [`Reservation`] of their bytes, so cached and in-flight bytes together stay within
//! the budget whatever the partition count. Memory a served chunk keeps alive in responses
//! still being written is the connections' response budgets', as for the tail cache.
//!
//! A chunk never outlives what the log holds: a truncation, a log started over and retention
//! forget the chunks they touch at the moment they change the log's state, and every change
//! moves the partition's *epoch*: a chunk read before one is not cached after it (its read may
//! have raced the change on the disk). A full disk's discard of unwritten entries needs
//! nothing: chunks end at the segment's written size, so they never hold unwritten entries.
//!
//! ```text
//!  ReadCache (one per shard): cached + reserved ≤ bytes_max
//!    chunks: (log id, first offset) → { entries, next offset, last use }
//!    by_use: last use → (log id, first offset)       least recently used out first
//!  CachedLog (one per partition): its id, epoch, chunks being read, its readers
//! ```

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::rc::Rc;

use bytes::Bytes;
use event_listener::{Event, EventListener};

use crate::log::read_ahead::ReadStreams;
use crate::types::Offset;

/// What a shard's cache did, for the report at shutdown (and tests).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ReadCacheStats {
    pub bytes_max: usize,
    /// The most the cache held at once, cached and reserved together.
    pub peak_bytes: usize,
    /// Chunks served to readers from memory.
    pub hits: u64,
    /// Chunks a reader had to read from the disk itself.
    pub misses: u64,
    /// Chunks read ahead of a sequential reader, and how many of them a reader then used.
    pub read_ahead: u64,
    pub read_ahead_used: u64,
}

impl std::fmt::Display for ReadCacheStats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mib = |bytes: usize| bytes as f64 / (1024.0 * 1024.0);
        write!(
            f,
            "read cache: peak {:.1} MiB of {:.1} MiB; chunks served from memory {}, read by \
             readers {}, read ahead {} ({} used)",
            mib(self.peak_bytes),
            mib(self.bytes_max),
            self.hits,
            self.misses,
            self.read_ahead,
            self.read_ahead_used
        )
    }
}

struct Slot {
    entries: Bytes,
    next_offset: Offset,
    /// Its key in `by_use`.
    last_use: u64,
    /// Read ahead and not yet served.
    unread_ahead: bool,
}

#[derive(Default)]
struct CacheState {
    chunks: BTreeMap<(u64, Offset), Slot>,
    by_use: BTreeMap<u64, (u64, Offset)>,
    next_use: u64,
    next_log: u64,
    cached_bytes: usize,
    reserved_bytes: usize,
    stats: ReadCacheStats,
}

impl CacheState {
    fn touch(&mut self) -> u64 {
        self.next_use += 1;
        self.next_use
    }

    fn remove(&mut self, key: (u64, Offset)) {
        if let Some(slot) = self.chunks.remove(&key) {
            self.by_use.remove(&slot.last_use);
            assert!(
                slot.entries.len() <= self.cached_bytes,
                "uncaching a chunk of {} bytes from a cache of {}",
                slot.entries.len(),
                self.cached_bytes
            );
            self.cached_bytes -= slot.entries.len();
        }
    }

    /// Evicts least recently used chunks until `more` bytes fit beside what is cached and
    /// reserved. Returns whether they do.
    fn make_room(&mut self, more: usize, bytes_max: usize) -> bool {
        if self.reserved_bytes + more > bytes_max {
            return false; // not even with every chunk gone: evict none for it
        }
        while self.cached_bytes + self.reserved_bytes + more > bytes_max {
            let Some((_, key)) = self.by_use.first_key_value().map(|(u, k)| (*u, *k)) else {
                break;
            };
            self.remove(key);
        }
        self.cached_bytes + self.reserved_bytes + more <= bytes_max
    }

    fn note_peak(&mut self, bytes_max: usize) {
        let held = self.cached_bytes + self.reserved_bytes;
        assert!(
            held <= bytes_max,
            "the read cache holds {held} bytes ({} cached, {} reserved), over its budget of \
             {bytes_max}",
            self.cached_bytes,
            self.reserved_bytes
        );
        self.stats.peak_bytes = self.stats.peak_bytes.max(held);
    }
}

/// The memory one shard keeps for chunks read from its partitions' segments.
pub struct ReadCache {
    bytes_max: usize,
    state: RefCell<CacheState>,
}

impl ReadCache {
    pub fn new(bytes_max: usize) -> Rc<Self> {
        Rc::new(Self { bytes_max, state: RefCell::default() })
    }

    /// A partition's handle on the cache; its chunks leave with it.
    pub fn register(self: &Rc<Self>) -> CachedLog {
        let mut st = self.state.borrow_mut();
        st.next_log += 1;
        CachedLog {
            cache: self.clone(),
            id: st.next_log,
            epoch: Cell::new(0),
            loading: RefCell::default(),
            reads_in_flight: Cell::new(0),
            idle: Event::new(),
            streams: RefCell::default(),
        }
    }

    /// Bytes cached and reserved now.
    pub fn held_bytes(&self) -> usize {
        let st = self.state.borrow();
        st.cached_bytes + st.reserved_bytes
    }

    pub fn stats(&self) -> ReadCacheStats {
        ReadCacheStats { bytes_max: self.bytes_max, ..self.state.borrow().stats }
    }

    /// Bytes read ahead of readers may take at most this much of the budget at once, so the
    /// reads of many partitions cannot push out everything already cached.
    fn reservable(&self) -> usize {
        self.bytes_max / 2
    }
}

/// Budget held for a chunk being read ahead; given back when dropped.
pub struct Reservation {
    cache: Rc<ReadCache>,
    bytes: usize,
}

impl Drop for Reservation {
    fn drop(&mut self) {
        let mut st = self.cache.state.borrow_mut();
        assert!(
            self.bytes <= st.reserved_bytes,
            "releasing {} reserved bytes of {}",
            self.bytes,
            st.reserved_bytes
        );
        st.reserved_bytes -= self.bytes;
    }
}

/// A chunk of whole entries starting at a segment's index point.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Chunk {
    pub first_offset: Offset,
    pub next_offset: Offset,
    pub entries: Bytes,
}

/// One partition's place in its shard's cache: its chunks, the reads of chunks under way (a
/// reader that needs one waits for it rather than read it again), and its sequential readers.
pub struct CachedLog {
    cache: Rc<ReadCache>,
    id: u64,
    epoch: Cell<u64>,
    loading: RefCell<BTreeMap<Offset, Rc<Event>>>,
    /// Reads under way (a chunk may be read by two readers at once), and who waits for none.
    reads_in_flight: Cell<usize>,
    idle: Event,
    pub streams: RefCell<ReadStreams>,
}

/// How a chunk a reader needs stands.
pub enum Lookup {
    Cached(Chunk),
    /// Being read: wait, then look again.
    Loading(EventListener),
    Absent,
}

impl CachedLog {
    /// The cached chunk starting at `first` and reaching `next` (the active segment's last
    /// chunk grows: a shorter one cached earlier does not count), marked used, or whether it is
    /// being read.
    pub fn lookup(&self, first: Offset, next: Offset) -> Lookup {
        let mut st = self.cache.state.borrow_mut();
        let now = st.touch();
        let key = (self.id, first);
        if let Some(slot) = st.chunks.get_mut(&key).filter(|slot| slot.next_offset >= next) {
            let before = std::mem::replace(&mut slot.last_use, now);
            let was_ahead = std::mem::take(&mut slot.unread_ahead);
            let chunk = Chunk {
                first_offset: first,
                next_offset: slot.next_offset,
                entries: slot.entries.clone(),
            };
            st.by_use.remove(&before);
            st.by_use.insert(now, key);
            st.stats.hits += 1;
            st.stats.read_ahead_used += u64::from(was_ahead);
            return Lookup::Cached(chunk);
        }
        drop(st);
        match self.loading.borrow().get(&first) {
            Some(done) => Lookup::Loading(done.listen()),
            None => Lookup::Absent,
        }
    }

    /// Whether the chunk at `first` reaching `next` is cached or being read (its use is not
    /// touched).
    pub fn holds(&self, first: Offset, next: Offset) -> bool {
        let st = self.cache.state.borrow();
        self.loading.borrow().contains_key(&first)
            || st.chunks.get(&(self.id, first)).is_some_and(|slot| slot.next_offset >= next)
    }

    /// The log's epoch now: a chunk planned in it is cached only if it has not moved since.
    pub fn epoch(&self) -> u64 {
        self.epoch.get()
    }

    /// Marks the chunk at `first`, planned in `epoch`, as being read until the returned guard
    /// drops; `ahead` when no reader asked for it yet. Readers that find it being read wait for
    /// the first reader of it only.
    pub fn start_loading(self: &Rc<Self>, first: Offset, ahead: bool, epoch: u64) -> Loading {
        let done = Rc::new(Event::new());
        self.loading.borrow_mut().entry(first).or_insert_with(|| done.clone());
        self.reads_in_flight.set(self.reads_in_flight.get() + 1);
        let mut st = self.cache.state.borrow_mut();
        match ahead {
            true => st.stats.read_ahead += 1,
            false => st.stats.misses += 1,
        }
        Loading { log: self.clone(), first, epoch, done }
    }

    /// Returns once no read of a chunk is under way (a closing log waits for its reads ahead).
    pub async fn wait_idle(&self) {
        while self.reads_in_flight.get() > 0 {
            let idle = self.idle.listen();
            if self.reads_in_flight.get() > 0 {
                idle.await;
            }
        }
    }

    /// Holds `bytes` of the budget for a chunk read ahead, if in-flight reads ahead leave room
    /// for it (evicting the least recently used chunks to make it).
    pub fn reserve(&self, bytes: usize) -> Option<Reservation> {
        let mut st = self.cache.state.borrow_mut();
        if st.reserved_bytes + bytes > self.cache.reservable()
            || !st.make_room(bytes, self.cache.bytes_max)
        {
            return None;
        }
        st.reserved_bytes += bytes;
        st.note_peak(self.cache.bytes_max);
        Some(Reservation { cache: self.cache.clone(), bytes })
    }

    /// Forgets the chunks holding `offset` or later: the log's end was cut back to it.
    pub fn forget_from(&self, offset: Offset) {
        self.forget(|_, next| next > offset);
    }

    /// Forgets the chunks wholly below `offset`: the log now starts there.
    pub fn forget_below(&self, offset: Offset) {
        self.forget(|_, next| next <= offset);
    }

    /// Forgets every chunk: the log was emptied.
    pub fn forget_all(&self) {
        self.forget(|_, _| true);
    }

    fn forget(&self, doomed: impl Fn(Offset, Offset) -> bool) {
        self.epoch.set(self.epoch.get() + 1);
        let mut st = self.cache.state.borrow_mut();
        let range = (self.id, Offset(0))..=(self.id, Offset(u64::MAX));
        let keys: Vec<_> = st
            .chunks
            .range(range)
            .filter(|(key, slot)| doomed(key.1, slot.next_offset))
            .map(|(key, _)| *key)
            .collect();
        for key in keys {
            st.remove(key);
        }
    }
}

impl Drop for CachedLog {
    /// A closed partition gives its chunks back to the shard.
    fn drop(&mut self) {
        self.forget_all();
    }
}

/// A chunk being read: cached when [`Loading::finish`]ed unless the log changed since the read
/// began; readers waiting for it are woken either way.
pub struct Loading {
    log: Rc<CachedLog>,
    first: Offset,
    epoch: u64,
    done: Rc<Event>,
}

impl Loading {
    /// Caches what was read (`reserved`: the budget a read ahead held for it).
    pub fn finish(self, chunk: &Chunk, reserved: Option<Reservation>) {
        debug_assert_eq!(chunk.first_offset, self.first);
        let ahead = reserved.is_some();
        drop(reserved);
        if self.log.epoch.get() != self.epoch {
            return; // the log changed while it was read: what was read may be gone
        }
        let cache = &self.log.cache;
        let mut st = cache.state.borrow_mut();
        let key = (self.log.id, self.first);
        match st.chunks.get(&key) {
            // Read twice at once (a reader did not wait for a read ahead): one copy is enough.
            Some(cached) if cached.next_offset >= chunk.next_offset => return,
            Some(_) => st.remove(key),
            None => {}
        }
        let len = chunk.entries.len();
        if !st.make_room(len, cache.bytes_max) {
            return;
        }
        let last_use = st.touch();
        let slot = Slot {
            entries: chunk.entries.clone(),
            next_offset: chunk.next_offset,
            last_use,
            unread_ahead: ahead,
        };
        st.chunks.insert(key, slot);
        st.by_use.insert(last_use, key);
        st.cached_bytes += len;
        st.note_peak(cache.bytes_max);
    }
}

impl Drop for Loading {
    fn drop(&mut self) {
        let mut loading = self.log.loading.borrow_mut();
        if loading.get(&self.first).is_some_and(|waited| Rc::ptr_eq(waited, &self.done)) {
            loading.remove(&self.first);
        }
        self.done.notify(usize::MAX);
        let log = &self.log;
        log.reads_in_flight.set(log.reads_in_flight.get() - 1);
        if log.reads_in_flight.get() == 0 {
            log.idle.notify(usize::MAX);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::TestRng;

    fn chunk(first: u64, next: u64, len: usize) -> Chunk {
        Chunk {
            first_offset: Offset(first),
            next_offset: Offset(next),
            entries: Bytes::from(vec![first as u8; len]),
        }
    }

    fn cache_in(log: &Rc<CachedLog>, c: &Chunk) {
        log.start_loading(c.first_offset, false, log.epoch()).finish(c, None);
    }

    fn cached(log: &CachedLog, first: u64) -> Option<Chunk> {
        match log.lookup(Offset(first), Offset(first)) {
            Lookup::Cached(c) => Some(c),
            _ => None,
        }
    }

    #[test]
    fn serves_what_was_cached_and_evicts_the_least_recently_used() {
        let cache = ReadCache::new(300);
        let log = Rc::new(cache.register());
        for first in [0, 10, 20] {
            cache_in(&log, &chunk(first, first + 10, 100));
        }
        assert_eq!(cache.held_bytes(), 300);
        // Using 0 makes 10 the least recently used.
        assert_eq!(cached(&log, 0), Some(chunk(0, 10, 100)));
        cache_in(&log, &chunk(30, 40, 100));
        assert!(cached(&log, 10).is_none());
        assert!(cached(&log, 0).is_some() && cached(&log, 20).is_some());
        assert_eq!(cache.held_bytes(), 300);
        // Too big for the whole budget: not cached, nothing evicted for it.
        cache_in(&log, &chunk(40, 50, 301));
        assert!(cached(&log, 40).is_none());
        assert_eq!(cache.held_bytes(), 300);
    }

    #[test]
    fn partitions_share_the_budget_and_give_it_back_when_closed() {
        let cache = ReadCache::new(250);
        let (a, b) = (Rc::new(cache.register()), Rc::new(cache.register()));
        cache_in(&a, &chunk(0, 10, 100));
        cache_in(&b, &chunk(0, 10, 100));
        assert_eq!(cached(&a, 0).map(|c| c.entries[0]), Some(0));
        cache_in(&b, &chunk(10, 20, 100));
        // b's first chunk was the least recently used.
        assert!(cached(&b, 0).is_none() && cached(&a, 0).is_some());
        drop(b);
        assert_eq!(cache.held_bytes(), 100);
    }

    #[test]
    fn a_change_of_the_log_forgets_what_it_touches_and_what_was_being_read() {
        let cache = ReadCache::new(1000);
        let log = Rc::new(cache.register());
        for first in [0, 10, 20, 30] {
            cache_in(&log, &chunk(first, first + 10, 10));
        }
        // A truncation to 25 takes the chunk holding 25 and those after.
        log.forget_from(Offset(25));
        assert!(cached(&log, 20).is_none() && cached(&log, 30).is_none());
        assert!(cached(&log, 10).is_some());
        // Retention moving the start to 10 takes the chunks wholly below it.
        log.forget_below(Offset(10));
        assert!(cached(&log, 0).is_none() && cached(&log, 10).is_some());
        // A chunk whose read began before a change is not cached after it.
        let loading = log.start_loading(Offset(20), false, log.epoch());
        assert!(matches!(log.lookup(Offset(20), Offset(30)), Lookup::Loading(_)));
        log.forget_from(Offset(40));
        loading.finish(&chunk(20, 30, 10), None);
        assert!(matches!(log.lookup(Offset(20), Offset(30)), Lookup::Absent));
        log.forget_all();
        assert_eq!(cache.held_bytes(), 0);
    }

    #[test]
    fn reads_ahead_are_bounded_to_half_the_budget_and_counted_until_released() {
        let cache = ReadCache::new(400);
        let log = Rc::new(cache.register());
        cache_in(&log, &chunk(0, 10, 300));
        let first = log.reserve(150).expect("room after evicting");
        assert!(cached(&log, 0).is_none(), "evicted to make room");
        assert!(log.reserve(100).is_none(), "past half the budget");
        let loading = log.start_loading(Offset(10), true, log.epoch());
        loading.finish(&chunk(10, 20, 150), Some(first));
        assert_eq!(cache.held_bytes(), 150);
        assert!(cached(&log, 10).is_some());
        assert_eq!(cache.stats().read_ahead_used, 1);
    }

    /// Random inserts, reservations, lookups and changes: what is held always matches the
    /// chunks and reservations alive, and never passes the budget (asserted inside).
    #[test]
    fn the_accounting_holds_under_random_operations() {
        for seed in 0..50 {
            let mut rng = TestRng::new(seed);
            let cache = ReadCache::new(2000);
            let logs: Vec<_> = (0..3).map(|_| Rc::new(cache.register())).collect();
            let mut reservations = Vec::new();
            for _ in 0..500 {
                let log = &logs[rng.below(3) as usize];
                let first = rng.below(20) * 10;
                match rng.below(6) {
                    0 => cache_in(log, &chunk(first, first + 10, 1 + rng.below(600) as usize)),
                    1 => {
                        if let Some(r) = log.reserve(1 + rng.below(400) as usize) {
                            reservations.push(r);
                        }
                    }
                    2 => drop(reservations.pop()),
                    3 => log.forget_from(Offset(first)),
                    4 => log.forget_below(Offset(first)),
                    _ => {
                        let _ = log.lookup(Offset(first), Offset(first));
                    }
                }
                let st = cache.state.borrow();
                let cached: usize = st.chunks.values().map(|s| s.entries.len()).sum();
                let reserved: usize = reservations.iter().map(|r| r.bytes).sum();
                assert_eq!((st.cached_bytes, st.reserved_bytes), (cached, reserved), "seed {seed}");
                assert_eq!(st.by_use.len(), st.chunks.len(), "seed {seed}");
                assert!(cached + reserved <= 2000, "seed {seed}");
            }
        }
    }
}
