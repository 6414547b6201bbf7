//! Which bytes each O_DIRECT write of the active segment carries, so that a partition can keep
//! two writes in flight without two of them ever touching the same block.
//!
//! O_DIRECT writes whole [`WRITE_ALIGN_BYTES`] blocks, and entries do not end on block
//! boundaries: a write's last block is usually partial, padded with zeros, and the next write
//! rewrites that block from memory with the new bytes appended. Two writes to one block in
//! flight at once could complete in either order and leave the older content on the device, so:
//!
//! - new data goes out from the block holding the end of what was issued before, rewriting that
//!   block's start from memory, when no write in flight covers that block;
//! - otherwise that shared block is *deferred*: the new bytes that belong in it wait in memory
//!   and the rest goes out at once, from the next block on. The deferred block is written when
//!   the write covering it completes.
//!
//! ```text
//!   block:      |  n-1  |   n   |  n+1  |  n+2  |
//!   write A:    [aaaaaaa|aaa000]                     in flight, its last block partial
//!   new data B:             bbbb|bbbbbbb|bbb          arrives while A is in flight
//!   write B:                    [bbbbbbb|bbb000]     issued at once, from block n+1
//!   deferred:           [aaabbbb]                    block n, issued when A completes
//! ```
//!
//! The *frontier* is the position below which every byte is final on the device: the
//! contiguous prefix of what completed writes cover. Entries below it are written. Nothing past
//! it is acknowledged, so what a crash leaves there (B's blocks without block n) is cut by
//! recovery.

use std::ops::Range;

use bytes::Bytes;

use crate::config::WRITE_ALIGN_BYTES;

/// Writes one partition keeps in flight. Two is enough to take the wait for the previous write
/// out of an append's latency (a batch that arrives during a write goes out at once, not after
/// it); more would only cut the bytes each write carries.
pub const WRITES_IN_FLIGHT_MAX: usize = 2;

const BLOCK: u64 = WRITE_ALIGN_BYTES as u64;

/// One write to issue: `prefix` then `data` at the block-aligned `position`, padded with zeros
/// to a whole block.
pub struct PlannedWrite {
    pub id: u64,
    pub position: u64,
    /// Bytes from the start of the first block that are already issued (or on the device) and
    /// are rewritten because the block is shared.
    pub prefix: Vec<u8>,
    pub data: Vec<Bytes>,
}

impl PlannedWrite {
    pub fn data_len(&self) -> usize {
        self.prefix.len() + self.data.iter().map(Bytes::len).sum::<usize>()
    }

    /// The length of the write: its data rounded up to whole blocks.
    pub fn padded_len(&self) -> usize {
        self.data_len().next_multiple_of(WRITE_ALIGN_BYTES)
    }
}

/// A write planned by [`WritePlan::plan_in_place`]: its data sits in the caller's buffer, after
/// room for `prefix`.
pub struct InPlaceWrite {
    pub id: u64,
    pub position: u64,
    pub prefix: Vec<u8>,
}

struct InFlight {
    id: u64,
    blocks: Range<u64>,
    covers: Range<u64>,
}

/// A shared block waiting for the write in flight that covers it.
struct Deferred {
    position: u64,
    /// The block's bytes from its start: what was issued into it before, then the new head.
    bytes: Vec<u8>,
    /// Where the bytes that are new in this block start.
    covers_from: u64,
}

pub struct WritePlan {
    /// The position after all data handed to [`Self::plan`].
    issued_end: u64,
    /// The bytes from the start of the block holding `issued_end` up to it.
    issued_tail: Vec<u8>,
    frontier: u64,
    in_flight: Vec<InFlight>,
    /// What completed writes cover beyond the frontier (a later write may complete first).
    completed: Vec<Range<u64>>,
    deferred: Option<Deferred>,
    next_id: u64,
}

impl WritePlan {
    /// A plan for a segment whose first `size` bytes are on the device; `tail` holds its bytes
    /// from the last block boundary to `size`.
    pub fn new(size: u64, tail: Vec<u8>) -> Self {
        debug_assert_eq!(tail.len() as u64, size % BLOCK);
        Self {
            issued_end: size,
            issued_tail: tail,
            frontier: size,
            in_flight: Vec::new(),
            completed: Vec::new(),
            deferred: None,
            next_id: 0,
        }
    }

    /// Where the next data handed to [`Self::plan`] will start.
    pub fn issued_end(&self) -> u64 {
        self.issued_end
    }

    /// Everything below this position is final on the device.
    pub fn frontier(&self) -> u64 {
        self.frontier
    }

    /// Nothing in flight and nothing deferred: the frontier is the issued end.
    pub fn is_idle(&self) -> bool {
        self.in_flight.is_empty() && self.deferred.is_none()
    }

    pub fn has_in_flight(&self) -> bool {
        !self.in_flight.is_empty()
    }

    /// Whether [`Self::plan`] may be called: a write slot is free and no block is deferred
    /// (one deferred block at a time keeps the bookkeeping to one shared block).
    pub fn accepts_data(&self) -> bool {
        self.in_flight.len() < WRITES_IN_FLIGHT_MAX && self.deferred.is_none()
    }

    /// Plans `data`, which continues the segment at [`Self::issued_end`]. Returns the write to
    /// issue now, if any: all of `data` may fit in a deferred block. Call only when
    /// [`Self::accepts_data`].
    pub fn plan(&mut self, data: Vec<Bytes>) -> Option<PlannedWrite> {
        debug_assert!(self.accepts_data());
        let start = self.issued_end;
        let len: u64 = data.iter().map(|d| d.len() as u64).sum();
        if len == 0 {
            return None;
        }
        let end = start + len;
        let block = start - start % BLOCK;
        let shared_block_busy = self.shared_block_busy();
        let pieces: Vec<&[u8]> = data.iter().map(|d| &d[..]).collect();
        let prefix = self.move_end(&pieces, end);
        if !shared_block_busy {
            return Some(self.start_write(block, prefix, data, start..end));
        }
        let head_len = ((block + BLOCK).min(end) - start) as usize;
        let (head, rest) = split_at(data, head_len);
        let mut bytes = prefix;
        bytes.extend_from_slice(&head);
        self.deferred = Some(Deferred { position: block, bytes, covers_from: start });
        (!rest.is_empty())
            .then(|| self.start_write(block + BLOCK, Vec::new(), rest, block + BLOCK..end))
    }

    /// Whether data planned now would share its first block with a write in flight, and so
    /// wait in a deferred block.
    pub fn shared_block_busy(&self) -> bool {
        let start = self.issued_end;
        !start.is_multiple_of(BLOCK) && self.covered(start - start % BLOCK)
    }

    /// Plans `data`, which continues the segment at [`Self::issued_end`], as one write the
    /// caller makes from a buffer of its own (`log::in_place`): the write starts at the block
    /// holding the issued end, with the returned prefix (that block's bytes before `data`)
    /// in front. Call only when [`Self::accepts_data`] and not [`Self::shared_block_busy`].
    pub fn plan_in_place(&mut self, data: &[u8]) -> InPlaceWrite {
        debug_assert!(self.accepts_data() && !self.shared_block_busy());
        let start = self.issued_end;
        let end = start + data.len() as u64;
        let position = start - start % BLOCK;
        let prefix = self.move_end(&[data], end);
        let id = self.register(position, prefix.len() + data.len(), start..end);
        InPlaceWrite { id, position, prefix }
    }

    /// Moves the issued end to `end` over `data`; returns the bytes of the block it was in
    /// that came before (the prefix a write from that block's start carries).
    fn move_end(&mut self, data: &[&[u8]], end: u64) -> Vec<u8> {
        let new_tail = tail_of(&self.issued_tail, data, (end % BLOCK) as usize);
        self.issued_end = end;
        std::mem::replace(&mut self.issued_tail, new_tail)
    }

    /// The deferred block's write, once no write in flight covers it and a slot is free.
    pub fn take_deferred(&mut self) -> Option<PlannedWrite> {
        let ready = self.deferred.as_ref().is_some_and(|d| !self.covered(d.position))
            && self.in_flight.len() < WRITES_IN_FLIGHT_MAX;
        if !ready {
            return None;
        }
        let deferred = self.deferred.take()?;
        let covers = deferred.covers_from..deferred.position + deferred.bytes.len() as u64;
        Some(self.start_write(deferred.position, deferred.bytes, Vec::new(), covers))
    }

    /// Records that write `id` is on the device; returns the frontier.
    pub fn complete(&mut self, id: u64) -> u64 {
        if let Some(at) = self.in_flight.iter().position(|w| w.id == id) {
            let done = self.in_flight.swap_remove(at);
            self.completed.push(done.covers);
        }
        while let Some(at) = self.completed.iter().position(|c| c.start <= self.frontier) {
            let covers = self.completed.swap_remove(at);
            self.frontier = self.frontier.max(covers.end);
        }
        self.frontier
    }

    /// Forgets write `id`, which failed: the frontier stays below what it covered.
    pub fn abandon(&mut self, id: u64) {
        self.in_flight.retain(|w| w.id != id);
    }

    fn covered(&self, block: u64) -> bool {
        self.in_flight.iter().any(|w| w.blocks.contains(&block))
    }

    fn start_write(
        &mut self,
        position: u64,
        prefix: Vec<u8>,
        data: Vec<Bytes>,
        covers: Range<u64>,
    ) -> PlannedWrite {
        let len = prefix.len() + data.iter().map(Bytes::len).sum::<usize>();
        let id = self.register(position, len, covers);
        PlannedWrite { id, position, prefix, data }
    }

    /// Counts a write of `len` bytes at `position` in flight; returns its id.
    fn register(&mut self, position: u64, len: usize, covers: Range<u64>) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        let blocks = position..position + len.next_multiple_of(WRITE_ALIGN_BYTES) as u64;
        self.in_flight.push(InFlight { id, blocks, covers });
        id
    }
}

/// The last `len` bytes of `before` followed by `data`.
fn tail_of(before: &[u8], data: &[&[u8]], len: usize) -> Vec<u8> {
    let mut tail = Vec::with_capacity(len);
    let mut skip = before.len() + data.iter().map(|d| d.len()).sum::<usize>() - len;
    for piece in std::iter::once(before).chain(data.iter().copied()) {
        let from = skip.min(piece.len());
        skip -= from;
        tail.extend_from_slice(&piece[from..]);
    }
    tail
}

/// The first `len` bytes of `data` copied out, and the rest as slices of the same buffers.
fn split_at(data: Vec<Bytes>, mut len: usize) -> (Vec<u8>, Vec<Bytes>) {
    let mut head = Vec::with_capacity(len);
    let mut rest = Vec::with_capacity(data.len());
    for piece in data {
        let take = len.min(piece.len());
        head.extend_from_slice(&piece[..take]);
        len -= take;
        if take < piece.len() {
            rest.push(piece.slice(take..));
        }
    }
    (head, rest)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A device that applies whole writes when they complete, in any order.
    struct Device {
        bytes: Vec<u8>,
    }

    impl Device {
        fn apply(&mut self, write: &PlannedWrite) {
            let at = write.position as usize;
            let end = at + write.padded_len();
            if self.bytes.len() < end {
                self.bytes.resize(end, 0);
            }
            let mut content = write.prefix.clone();
            for piece in &write.data {
                content.extend_from_slice(piece);
            }
            content.resize(write.padded_len(), 0);
            self.bytes[at..end].copy_from_slice(&content);
        }
    }

    fn overlaps(a: &PlannedWrite, b: &PlannedWrite) -> bool {
        let (a0, a1) = (a.position, a.position + a.padded_len() as u64);
        let (b0, b1) = (b.position, b.position + b.padded_len() as u64);
        a0 < b1 && b0 < a1
    }

    /// Random appends of 1 byte to 3 blocks, some planned for writes from the caller's buffer
    /// (`plan_in_place`, which the writer asks only when the shared block is not busy),
    /// completed in random order: no two writes in flight ever share a block, the device holds
    /// exactly the log below the frontier at every step, and the frontier reaches the end once
    /// everything completes.
    #[test]
    fn random_appends_and_completion_orders_keep_the_frontier_on_the_device() {
        let (mut deferrals, mut in_place) = (0, 0);
        let seeds = crate::testing::seeds(199);
        for &seed in &seeds {
            let mut rng = crate::testing::TestRng::new(seed);
            let existing = rng.below(3 * BLOCK);
            let log: Vec<u8> = (0..20_000u32).map(|i| (i % 251) as u8 + 1).collect();
            let mut device = Device { bytes: log[..existing as usize].to_vec() };
            let tail = log[(existing - existing % BLOCK) as usize..existing as usize].to_vec();
            let mut plan = WritePlan::new(existing, tail);
            let mut in_flight: Vec<PlannedWrite> = Vec::new();
            let mut appended = existing as usize;
            while appended < log.len() || !plan.is_idle() {
                let issue = |write: Option<PlannedWrite>, in_flight: &mut Vec<PlannedWrite>| {
                    if let Some(write) = write {
                        assert!(
                            in_flight.iter().all(|w| !overlaps(w, &write)),
                            "seed {seed}: a write overlaps one in flight"
                        );
                        in_flight.push(write);
                    }
                };
                issue(plan.take_deferred(), &mut in_flight);
                let from_own_buffer = rng.below(2) == 0;
                let can_plan =
                    plan.accepts_data() && !(from_own_buffer && plan.shared_block_busy());
                if appended < log.len() && can_plan && rng.below(3) > 0 {
                    let len = (1 + rng.below(3 * BLOCK) as usize).min(log.len() - appended);
                    if from_own_buffer {
                        let data = &log[appended..appended + len];
                        let start = plan.issued_end();
                        let write = plan.plan_in_place(data);
                        assert_eq!(write.position, start - start % BLOCK, "seed {seed}");
                        assert_eq!(write.prefix.len() as u64, start % BLOCK, "seed {seed}");
                        let data = vec![Bytes::copy_from_slice(data)];
                        let (id, position, prefix) = (write.id, write.position, write.prefix);
                        issue(Some(PlannedWrite { id, position, prefix, data }), &mut in_flight);
                        in_place += 1;
                    } else {
                        // Split across two buffers, as entries are.
                        let cut = appended + rng.below(len as u64) as usize;
                        let data = vec![
                            Bytes::copy_from_slice(&log[appended..cut]),
                            Bytes::copy_from_slice(&log[cut..appended + len]),
                        ];
                        issue(plan.plan(data), &mut in_flight);
                        deferrals += usize::from(plan.deferred.is_some());
                    }
                    appended += len;
                } else if !in_flight.is_empty() {
                    let done = in_flight.swap_remove(rng.below(in_flight.len() as u64) as usize);
                    device.apply(&done);
                    let frontier = plan.complete(done.id) as usize;
                    assert_eq!(
                        &device.bytes[..frontier],
                        &log[..frontier],
                        "seed {seed}: the device differs from the log below the frontier"
                    );
                }
                assert!(plan.in_flight.len() <= WRITES_IN_FLIGHT_MAX);
            }
            assert_eq!(plan.frontier(), log.len() as u64, "seed {seed}");
            assert_eq!(&device.bytes[..log.len()], &log[..], "seed {seed}");
            assert!(device.bytes[log.len()..].iter().all(|&b| b == 0), "seed {seed}: padding");
        }
        if seeds.len() > 1 {
            assert!(deferrals > 100, "the runs must exercise deferred blocks: {deferrals}");
            assert!(in_place > 100, "the runs must exercise in-place writes: {in_place}");
        }
    }

    #[test]
    fn data_arriving_during_a_write_goes_out_at_once_past_the_shared_block() {
        let mut plan = WritePlan::new(0, Vec::new());
        let first = plan.plan(vec![Bytes::from(vec![1u8; 5000])]).unwrap();
        assert_eq!((first.position, first.padded_len()), (0, 8192));
        // 5000 + 9000 = 14000: block 1 (4096..8192) is shared with the write in flight.
        let second = plan.plan(vec![Bytes::from(vec![2u8; 9000])]).unwrap();
        assert_eq!(second.position, 8192);
        assert_eq!(second.data_len(), 14000 - 8192);
        assert!(plan.take_deferred().is_none(), "the shared block waits for the first write");
        assert!(!plan.accepts_data());
        assert_eq!(plan.complete(second.id), 0, "the shared block is not written yet");
        assert_eq!(plan.complete(first.id), 5000);
        let shared = plan.take_deferred().unwrap();
        assert_eq!((shared.position, shared.prefix.len()), (4096, 4096));
        assert_eq!(&shared.prefix[..904], &[1u8; 904][..]);
        assert_eq!(&shared.prefix[904..], &[2u8; 3192][..]);
        assert_eq!(plan.complete(shared.id), 14000, "the completed second write counts now");
        assert!(plan.is_idle());
    }

    #[test]
    fn a_failed_write_holds_the_frontier_below_it() {
        let mut plan = WritePlan::new(0, Vec::new());
        let first = plan.plan(vec![Bytes::from(vec![1u8; 8192])]).unwrap();
        let second = plan.plan(vec![Bytes::from(vec![2u8; 8192])]).unwrap();
        assert_eq!(second.position, 8192, "a block-aligned end shares no block");
        plan.abandon(first.id);
        assert_eq!(plan.complete(second.id), 0);
        assert!(plan.is_idle());
    }
}
