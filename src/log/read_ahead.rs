//! Which readers of a partition read sequentially, and how far ahead of them to read.
//!
//! A partition remembers where its last few readers will read next ([`READ_STREAMS_MAX`]
//! streams, as the Linux page cache's read-ahead keeps a window per open file). A read that
//! starts where a stream's last read ended continues that stream: its reader reads
//! sequentially, and the next chunks past what it was just given are read before it asks
//! (`log/partition/reads.rs`), up to a window of a few of its fetches. Any other read starts a
//! new stream, in place of the one least recently continued, and gets nothing read ahead: a
//! reader that jumps or reads at random costs one stream and no extra disk reads, and a reader
//! that stops is read ahead of no further than the window it had.
//!
//! Pure: no I/O, no clock (a use counter orders the streams).

use crate::types::Offset;

/// Readers of one partition followed at once: several consumer groups, and a follower or two.
pub const READ_STREAMS_MAX: usize = 4;

/// Fetches' worth of data kept read ahead of a sequential reader (within the configured
/// most). Eight 1 MiB fetches keep about as many bytes in flight as fio needs to reach this
/// disk's sequential read; four read 6-8% slower here (medians of 18 alternated pairs, see
/// docs/PERFORMANCE.md).
const FETCHES_AHEAD: usize = 8;

#[derive(Clone, Copy, Debug)]
struct Stream {
    next: Offset,
    last_use: u64,
}

#[derive(Debug, Default)]
pub struct ReadStreams {
    streams: Vec<Stream>,
    uses: u64,
}

impl ReadStreams {
    /// Notes a read of `offset` that returned up to `next`. Returns whether it continued a
    /// stream (so its reader reads sequentially).
    pub fn observe(&mut self, offset: Offset, next: Offset) -> bool {
        self.uses += 1;
        let use_now = self.uses;
        if let Some(stream) = self.streams.iter_mut().find(|s| s.next == offset) {
            *stream = Stream { next, last_use: use_now };
            return true;
        }
        let stream = Stream { next, last_use: use_now };
        if self.streams.len() < READ_STREAMS_MAX {
            self.streams.push(stream);
        } else if let Some(oldest) = self.streams.iter_mut().min_by_key(|s| s.last_use) {
            *oldest = stream;
        }
        false
    }
}

/// Bytes to keep read ahead of a sequential reader whose fetches ask for `fetch_bytes`, within
/// `most` (`log.read.ahead.bytes`; 0 turns reading ahead off).
pub fn window_bytes(fetch_bytes: usize, most: usize) -> usize {
    fetch_bytes.saturating_mul(FETCHES_AHEAD).min(most)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_read_continuing_the_last_one_is_sequential() {
        let mut streams = ReadStreams::default();
        assert!(!streams.observe(Offset(0), Offset(100)), "the first read starts a stream");
        assert!(streams.observe(Offset(100), Offset(200)));
        assert!(streams.observe(Offset(200), Offset(250)));
        // A jump back starts another stream; the first one goes on.
        assert!(!streams.observe(Offset(50), Offset(80)));
        assert!(streams.observe(Offset(250), Offset(300)));
        assert!(streams.observe(Offset(80), Offset(90)));
    }

    #[test]
    fn random_readers_replace_the_least_recently_continued_stream() {
        let mut streams = ReadStreams::default();
        streams.observe(Offset(0), Offset(10));
        for (i, at) in [1000, 2000, 3000, 4000].into_iter().enumerate() {
            assert!(!streams.observe(Offset(at), Offset(at + 1)), "read {i} is at random");
        }
        // Five streams were started: the first one, least recently used, is gone.
        assert!(!streams.observe(Offset(10), Offset(20)));
        assert!(streams.observe(Offset(4001), Offset(4002)));
    }

    #[test]
    fn the_window_follows_the_fetch_size_within_the_setting() {
        assert_eq!(window_bytes(512 << 10, 8 << 20), 4 << 20);
        assert_eq!(window_bytes(1 << 20, 8 << 20), 8 << 20);
        assert_eq!(window_bytes(4 << 20, 8 << 20), 8 << 20);
        assert_eq!(window_bytes(1 << 20, 0), 0);
    }
}
