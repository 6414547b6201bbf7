//! A follower's entries received straight into the buffer the writer writes them from.
//!
//! O_DIRECT writes whole blocks, from buffers the file hands out, so entries that arrive in a
//! socket's buffer are copied into one before they are written. On each broker of an RF 3
//! cluster, where two thirds of what a broker writes is its followers', that copy was 7-8% of
//! the CPU, and writing without it gave 11-22% more (PERFORMANCE.md, "What the copy into the
//! O_DIRECT buffers costs").
//!
//! A follower knows where a fetch answer's entries will go before it receives them: at its log's
//! end, which is the active segment's written size plus what is staged or being written. So it
//! receives them into a write buffer at that position's offset within its block (`lead`),
//! leaving room in front for the block's bytes that are already there. When the writer reaches
//! them it copies those bytes in front (less than a block), zeroes the rest of the last block,
//! and issues the buffer as it is:
//!
//! ```text
//!  block:          |   n   |  n+1  |  n+2  |
//!  segment:        [aaaa                      a: the log up to its end, inside block n
//!  received:       [....bbb|bbbbbbb|bb.....]  b: the entries, from `lead` = end % block
//!  issued:         [aaaabbb|bbbbbbb|bb00000]
//! ```
//!
//! Where the entries go is guessed when the buffer is made; the writer checks the guess (the
//! same segment and position, the whole run staged and within the segment) and copies the
//! entries as it copies any other when it does not hold: after a roll, a truncation, or an
//! append refused part way through the run. While a write in flight covers the block the run
//! begins in, the writer waits for it rather than defer that block, as it does for copied
//! entries: the buffer can only be written whole, from its start.
//!
//! These entries are not put in the tail cache: a follower serves no consumer, and its caught-up
//! readers after it becomes leader read them from the disk.

use std::cell::RefCell;
use std::mem::MaybeUninit;
use std::ops::Range;
use std::rc::Rc;

use bytes::Bytes;

use crate::config::WRITE_ALIGN_BYTES;
use crate::log::storage::{Storage, StorageFile};
use crate::types::Offset;

type FileBuffer<S> = <<S as Storage>::File as StorageFile>::Buffer;

/// Where received entries are expected to start: a segment (by base offset) and a byte
/// position in it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Placement {
    pub segment: Offset,
    pub position: u64,
}

/// A write buffer entries are being received into, at their expected place in its blocks.
pub struct ReceiveBuffer<S: Storage> {
    buffer: FileBuffer<S>,
    /// Where the entries start in the buffer: their expected position within its block.
    lead: usize,
    /// Room for entries after `lead`.
    capacity: usize,
    filled: usize,
    at: Placement,
}

impl<S: Storage> ReceiveBuffer<S> {
    /// `buffer` holds `lead + capacity` bytes rounded up to whole blocks.
    pub(super) fn new(buffer: FileBuffer<S>, capacity: usize, at: Placement) -> Self {
        let lead = (at.position % WRITE_ALIGN_BYTES as u64) as usize;
        Self { buffer, lead, capacity, filled: 0, at }
    }

    /// Bytes received so far.
    pub fn filled(&self) -> usize {
        self.filled
    }

    /// Bytes the buffer has room for after `lead`.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// The room left, up to `max` bytes, to receive into.
    pub fn unfilled(&mut self, max: usize) -> &mut [MaybeUninit<u8>] {
        let from = self.lead + self.filled;
        let len = (self.capacity - self.filled).min(max);
        let bytes = &mut S::File::buffer_bytes(&mut self.buffer)[from..from + len];
        // SAFETY: the slice covers `len` bytes inside the buffer, which `self` borrows mutably
        // for as long as the result lives, and `MaybeUninit<u8>` has the layout of `u8`. The
        // bytes may be uninitialised (glommio does not zero its buffers), as `MaybeUninit`
        // allows; they count as filled only through `advance`, whose caller vouches for them.
        unsafe { std::slice::from_raw_parts_mut(bytes.as_mut_ptr().cast::<MaybeUninit<u8>>(), len) }
    }

    /// Counts `n` more bytes received.
    ///
    /// # Safety
    ///
    /// The first `n` bytes of what [`Self::unfilled`] last returned have been written.
    pub unsafe fn advance(&mut self, n: usize) {
        assert!(self.filled + n <= self.capacity, "received past the buffer's room");
        self.filled += n;
    }

    /// Receives `bytes` as a socket would, in tests that stand in for the fetcher.
    #[cfg(test)]
    pub fn receive(&mut self, bytes: &[u8]) {
        let room = self.unfilled(bytes.len());
        assert_eq!(room.len(), bytes.len(), "room for {} bytes", bytes.len());
        for (to, from) in room.iter_mut().zip(bytes) {
            to.write(*from);
        }
        // SAFETY: the loop wrote every byte of `room`, which is `bytes.len()` long.
        unsafe { self.advance(bytes.len()) };
    }

    /// The entries received, to append (`PartitionLog::append_at`) as slices of the run.
    pub fn into_run(self) -> Rc<InPlaceRun<S>> {
        Rc::new(InPlaceRun {
            buffer: RefCell::new(Some(self.buffer)),
            lead: self.lead,
            len: self.filled,
            at: self.at,
        })
    }
}

/// Entries received in place, shared by the staged entries that are slices of it until the
/// writer takes its buffer to write them.
pub struct InPlaceRun<S: Storage> {
    /// `None` once the writer took it.
    buffer: RefCell<Option<FileBuffer<S>>>,
    lead: usize,
    len: usize,
    pub(super) at: Placement,
}

impl<S: Storage> InPlaceRun<S> {
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Calls `f` with the run's bytes in `range` (relative to its first entry); `None` once the
    /// writer took the buffer.
    pub fn with_bytes<R>(&self, range: Range<usize>, f: impl FnOnce(&[u8]) -> R) -> Option<R> {
        let mut buffer = self.buffer.borrow_mut();
        let bytes = S::File::buffer_bytes(buffer.as_mut()?);
        Some(f(&bytes[self.lead + range.start..self.lead + range.end]))
    }

    /// The buffer to write the run from, from the start of the block it begins in: `head` (the
    /// block's bytes before the run) copied in front, and zeros after the run to the end of its
    /// last block. `None` if it was taken already.
    pub(super) fn take_write(&self, head: &[u8]) -> Option<FileBuffer<S>> {
        assert_eq!(
            head.len(),
            self.lead,
            "a run received {} bytes into its block is written after {} bytes of it",
            self.lead,
            head.len()
        );
        let mut buffer = self.buffer.borrow_mut().take()?;
        let padded = (self.lead + self.len).next_multiple_of(WRITE_ALIGN_BYTES);
        S::File::trim_buffer(&mut buffer, padded);
        let bytes = S::File::buffer_bytes(&mut buffer);
        bytes[..self.lead].copy_from_slice(head);
        bytes[self.lead + self.len..].fill(0);
        Some(buffer)
    }
}

/// A staged entry's bytes: shared with the request or answer they came in, or a slice of a run
/// received in place.
pub enum EntryData<S: Storage> {
    Shared(Bytes),
    InPlace { run: Rc<InPlaceRun<S>>, range: Range<usize> },
}

impl<S: Storage> EntryData<S> {
    pub fn len(&self) -> usize {
        match self {
            Self::Shared(bytes) => bytes.len(),
            Self::InPlace { range, .. } => range.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Calls `f` with the entry's bytes; `None` if they were written from their run already.
    pub fn with_bytes<R>(&self, f: impl FnOnce(&[u8]) -> R) -> Option<R> {
        match self {
            Self::Shared(bytes) => Some(f(bytes)),
            Self::InPlace { run, range } => run.with_bytes(range.clone(), f),
        }
    }

    /// The bytes in `range` of these, sharing them.
    pub fn slice(&self, range: Range<usize>) -> Self {
        match self {
            Self::Shared(bytes) => Self::Shared(bytes.slice(range)),
            Self::InPlace { run, range: of } => {
                assert!(
                    range.start <= range.end && range.end <= of.len(),
                    "slice {range:?} of {} received bytes",
                    of.len()
                );
                Self::InPlace {
                    run: run.clone(),
                    range: of.start + range.start..of.start + range.end,
                }
            }
        }
    }

    /// The bytes as `Bytes`: shared as they are, or copied out of their run, which must not have
    /// been written yet (the writer writes a run from its buffer only whole).
    pub fn to_bytes(&self) -> Bytes {
        match self {
            Self::Shared(bytes) => bytes.clone(),
            Self::InPlace { .. } => (self.with_bytes(Bytes::copy_from_slice))
                .expect("an entry received in place is copied only before its run is written"),
        }
    }
}

impl<S: Storage> From<Bytes> for EntryData<S> {
    fn from(bytes: Bytes) -> Self {
        Self::Shared(bytes)
    }
}
