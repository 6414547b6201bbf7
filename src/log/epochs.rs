//! The leader-epoch cache: for each leader epoch a partition's log had, the offset of its first
//! entry (KIP-101, KIP-279). A replica that follows a new leader asks where its own latest epoch
//! ended on the leader (OffsetsForLeaderEpoch, answered from this cache) and truncates there,
//! rather than to its high watermark, which can lose acknowledged records or let logs diverge
//! (the cases KIP-101 lists).
//!
//! Kept in `leader-epoch-checkpoint` in the partition's directory, as Kafka writes it: a version
//! line (`0`), a count line, then one `<epoch> <start offset>` line per epoch, oldest first. A
//! new epoch is durable before it counts (the file is replaced whole: written beside, synced,
//! renamed, the directory synced); entries removed when the log is truncated at either end are
//! written lazily, as Kafka does, because opening the log removes whatever the file still holds
//! past its end or before its start. A version this build does not know stops the partition from
//! opening, naming the file, rather than be rewritten by an older build.
//!
//! The rules follow Kafka's `LeaderEpochFileCache`.

use std::io;
use std::path::{Path, PathBuf};

use crate::log::segment::{read_small_file, replace_small_file};
use crate::log::storage::Storage;
use crate::types::{LeaderEpoch, Offset};

pub const CHECKPOINT_FILE: &str = "leader-epoch-checkpoint";
const VERSION: u32 = 0;
/// A million epochs at their longest line (`-2147483648 9223372036854775807`): a larger file is
/// damaged or not ours, and is not read whole.
const CHECKPOINT_BYTES_MAX: u64 = 32 * 1024 * 1024;
/// Kafka's UNDEFINED_EPOCH: a fetch or a follower that knows no epoch.
pub const UNDEFINED_EPOCH: LeaderEpoch = LeaderEpoch(-1);

/// An epoch and the offset of its first entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EpochStart {
    pub epoch: LeaderEpoch,
    pub start_offset: Offset,
}

/// Epochs in increasing order, their start offsets too.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LeaderEpochs {
    entries: Vec<EpochStart>,
}

impl LeaderEpochs {
    /// The cache `entries` make when assigned in order.
    pub fn from_entries(entries: &[EpochStart]) -> Self {
        let mut epochs = Self::default();
        for entry in entries {
            epochs.assign(entry.epoch, entry.start_offset);
        }
        epochs
    }

    pub fn entries(&self) -> &[EpochStart] {
        &self.entries
    }

    pub fn latest(&self) -> Option<EpochStart> {
        self.entries.last().copied()
    }

    /// Records that `epoch` starts at `start_offset`; returns whether anything changed. The
    /// latest epoch again at the same or a later offset changes nothing. Entries that would
    /// break the order (an epoch at or above it, or a start at or after it) go first: only a
    /// truncated log can leave them.
    pub fn assign(&mut self, epoch: LeaderEpoch, start_offset: Offset) -> bool {
        let needed = self
            .latest()
            .is_none_or(|latest| epoch != latest.epoch || start_offset < latest.start_offset);
        if !needed {
            return false;
        }
        while self
            .latest()
            .is_some_and(|last| last.epoch >= epoch || last.start_offset >= start_offset)
        {
            self.entries.pop();
        }
        self.entries.push(EpochStart { epoch, start_offset });
        self.assert_ordered("assigning an epoch");
        true
    }

    /// Asserts that epochs and their start offsets both strictly increase, after `change`, with
    /// the entries in the message: out of order, OffsetsForLeaderEpoch would send a follower to
    /// the wrong truncation point, and it could drop acknowledged records.
    fn assert_ordered(&self, change: &str) {
        let ordered = self.entries.windows(2).all(|pair| {
            pair[0].epoch < pair[1].epoch && pair[0].start_offset < pair[1].start_offset
        });
        assert!(ordered, "leader epochs out of order after {change}: {:?}", self.entries);
    }

    /// The log was truncated to end at `end`: epochs starting there or later go.
    pub fn truncate_from_end(&mut self, end: Offset) -> bool {
        let keep = self.entries.partition_point(|e| e.start_offset < end);
        let changed = keep < self.entries.len();
        self.entries.truncate(keep);
        self.assert_ordered("a truncation of the log's end");
        changed
    }

    /// The log now starts at `start`: epochs wholly before it go, and the one it starts in
    /// starts there.
    pub fn truncate_from_start(&mut self, start: Offset) -> bool {
        let at_or_before = self.entries.partition_point(|e| e.start_offset <= start);
        let Some(holder) = at_or_before.checked_sub(1) else { return false };
        let changed = holder > 0 || self.entries[holder].start_offset != start;
        self.entries.drain(..holder);
        self.entries[0].start_offset = start;
        self.assert_ordered("moving the log start");
        changed
    }

    /// OffsetsForLeaderEpoch: the largest epoch at or below `epoch` and where it ends (the start
    /// of the next epoch, or `log_end` for the latest), as Kafka answers it. An epoch older than
    /// every one known answers itself and where the first known starts; an unknown newer one,
    /// or [`UNDEFINED_EPOCH`] itself, answers `None` (Kafka's UNDEFINED_EPOCH and
    /// UNDEFINED_EPOCH_OFFSET).
    pub fn end_offset_for(
        &self,
        epoch: LeaderEpoch,
        log_end: Offset,
    ) -> Option<(LeaderEpoch, Offset)> {
        if epoch == UNDEFINED_EPOCH {
            return None;
        }
        if self.latest().is_some_and(|latest| latest.epoch == epoch) {
            return Some((epoch, log_end));
        }
        let higher = self.entries.partition_point(|e| e.epoch <= epoch);
        let next = self.entries.get(higher)?;
        let found = higher.checked_sub(1).map_or(epoch, |floor| self.entries[floor].epoch);
        Some((found, next.start_offset))
    }

    /// The checkpoint file's text.
    pub fn encode(&self) -> Vec<u8> {
        let mut text = format!("{VERSION}\n{}\n", self.entries.len());
        for entry in &self.entries {
            text.push_str(&format!("{} {}\n", entry.epoch, entry.start_offset));
        }
        text.into_bytes()
    }

    /// Reads a checkpoint file's text; the error says what is wrong with it.
    pub fn decode(bytes: &[u8]) -> Result<Self, String> {
        let text = std::str::from_utf8(bytes).map_err(|_| "not text".to_string())?;
        let mut lines = text.lines();
        let version = lines.next().ok_or("empty")?;
        match version.trim().parse::<u32>() {
            Ok(VERSION) => {}
            Ok(newer) => {
                return Err(format!("version {newer}, written by a newer build (this one reads 0)"))
            }
            Err(_) => return Err(format!("version line {version:?}")),
        }
        let count_line = lines.next().ok_or("no count line")?;
        let count: usize =
            count_line.trim().parse().map_err(|_| format!("count {count_line:?}"))?;
        let mut epochs = Self::default();
        for line in lines.by_ref().take(count) {
            let mut fields = line.split_whitespace();
            let (Some(epoch), Some(start), None) = (fields.next(), fields.next(), fields.next())
            else {
                return Err(format!("entry line {line:?}"));
            };
            // Offsets as Kafka keeps them: at most i64::MAX.
            let entry = match (epoch.parse::<i32>(), start.parse::<i64>()) {
                (Ok(epoch), Ok(start)) if epoch >= 0 && start >= 0 => {
                    EpochStart { epoch: LeaderEpoch(epoch), start_offset: Offset(start as u64) }
                }
                _ => return Err(format!("entry line {line:?}")),
            };
            if epochs.latest().is_some_and(|last| {
                last.epoch >= entry.epoch || last.start_offset >= entry.start_offset
            }) {
                return Err(format!("entry {line:?} out of order"));
            }
            epochs.entries.push(entry);
        }
        if epochs.entries.len() != count || lines.any(|rest| !rest.trim().is_empty()) {
            return Err(format!("{} entries where the count says {count}", epochs.entries.len()));
        }
        Ok(epochs)
    }
}

pub fn checkpoint_path(dir: &Path) -> PathBuf {
    dir.join(CHECKPOINT_FILE)
}

/// Loads the partition's checkpoint; none yet is an empty cache. A file that cannot be read as
/// this build writes it is an error naming the file: the partition does not open over it.
pub async fn load<S: Storage>(storage: &S, dir: &Path) -> io::Result<LeaderEpochs> {
    let path = checkpoint_path(dir);
    let read = read_small_file(storage, &path, CHECKPOINT_BYTES_MAX).await;
    let named = |e: io::Error| io::Error::new(e.kind(), format!("{}: {e}", path.display()));
    let Some(bytes) = read.map_err(named)? else {
        return Ok(LeaderEpochs::default());
    };
    LeaderEpochs::decode(&bytes).map_err(|why| {
        io::Error::new(io::ErrorKind::InvalidData, format!("{}: {why}", path.display()))
    })
}

/// Replaces the partition's checkpoint with `epochs`, durably (directory synced too).
pub async fn persist<S: Storage>(storage: &S, dir: &Path, epochs: &LeaderEpochs) -> io::Result<()> {
    replace_small_file(storage, &checkpoint_path(dir), &epochs.encode()).await?;
    storage.sync_dir(dir).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn epochs(entries: &[(i32, u64)]) -> LeaderEpochs {
        let entries = entries.iter().map(|&(epoch, start)| EpochStart {
            epoch: LeaderEpoch(epoch),
            start_offset: Offset(start),
        });
        LeaderEpochs { entries: entries.collect() }
    }

    fn assign(cache: &mut LeaderEpochs, epoch: i32, start: u64) -> bool {
        cache.assign(LeaderEpoch(epoch), Offset(start))
    }

    fn end_offset_for(cache: &LeaderEpochs, epoch: i32, log_end: u64) -> Option<(i32, u64)> {
        let found = cache.end_offset_for(LeaderEpoch(epoch), Offset(log_end));
        found.map(|(epoch, end)| (epoch.0, end.0))
    }

    #[test]
    fn assign_keeps_epochs_and_offsets_increasing() {
        let mut cache = LeaderEpochs::default();
        assert!(assign(&mut cache, 0, 0));
        assert!(assign(&mut cache, 2, 10));
        assert!(!assign(&mut cache, 2, 15), "the latest epoch again, later: nothing to record");
        assert!(assign(&mut cache, 2, 8), "the latest epoch again, earlier: it starts there");
        assert_eq!(cache, epochs(&[(0, 0), (2, 8)]));
        // An older epoch, or an offset at or before the latest start, removes what conflicts.
        assert!(assign(&mut cache, 1, 5));
        assert_eq!(cache, epochs(&[(0, 0), (1, 5)]));
        assert!(assign(&mut cache, 3, 0));
        assert_eq!(cache, epochs(&[(3, 0)]));
    }

    #[test]
    fn truncation_from_either_end() {
        let mut cache = epochs(&[(1, 0), (3, 10), (4, 20), (7, 30)]);
        assert!(!cache.truncate_from_end(Offset(31)));
        assert!(cache.truncate_from_end(Offset(30)));
        assert_eq!(cache, epochs(&[(1, 0), (3, 10), (4, 20)]));
        assert!(cache.truncate_from_start(Offset(15)));
        assert_eq!(cache, epochs(&[(3, 15), (4, 20)]));
        assert!(!cache.truncate_from_start(Offset(15)), "already starts there");
        assert!(!cache.truncate_from_start(Offset(2)), "before every epoch");
        assert!(cache.truncate_from_start(Offset(20)));
        assert_eq!(cache, epochs(&[(4, 20)]));
        assert!(cache.truncate_from_end(Offset(0)));
        assert_eq!(cache, LeaderEpochs::default());
        assert!(!cache.truncate_from_start(Offset(5)));
    }

    /// The answers of Kafka's `LeaderEpochFileCache.endOffsetFor`, case by case.
    #[test]
    fn end_offsets_as_kafka_answers_them() {
        let cache = epochs(&[(2, 5), (4, 12), (6, 20)]);
        let log_end = 27;
        assert_eq!(end_offset_for(&cache, 6, log_end), Some((6, 27)), "the latest: the log end");
        assert_eq!(end_offset_for(&cache, 4, log_end), Some((4, 20)), "where the next starts");
        assert_eq!(end_offset_for(&cache, 5, log_end), Some((4, 20)), "the largest below it");
        assert_eq!(end_offset_for(&cache, 1, log_end), Some((1, 5)), "older than all: the first");
        assert_eq!(end_offset_for(&cache, 9, log_end), None, "newer than all: undefined");
        assert_eq!(end_offset_for(&cache, -1, log_end), None, "undefined asked: undefined");
        assert_eq!(end_offset_for(&cache, -5, log_end), Some((-5, 5)), "as any older epoch");
        assert_eq!(end_offset_for(&LeaderEpochs::default(), 0, log_end), None);
    }

    #[test]
    fn the_checkpoint_reads_back_and_refuses_what_it_cannot_read() {
        let cache = epochs(&[(0, 0), (3, 17), (5, 1 << 40)]);
        assert_eq!(cache.encode(), b"0\n3\n0 0\n3 17\n5 1099511627776\n");
        assert_eq!(LeaderEpochs::decode(&cache.encode()), Ok(cache));
        assert_eq!(LeaderEpochs::decode(b"0\n0\n"), Ok(LeaderEpochs::default()));
        let newer = LeaderEpochs::decode(b"1\n0\n").unwrap_err();
        assert!(newer.contains("newer build"), "{newer}");
        let bad_files = [
            &b""[..],
            b"0\n",
            b"0\n2\n1 5\n",
            b"0\n1\n1 5 7\n",
            b"0\n2\n3 5\n2 9\n",
            b"0\n2\n1 5\n2 5\n",
            b"0\n1\n1 9223372036854775808\n",
            b"x\n",
        ];
        for bad in bad_files {
            assert!(LeaderEpochs::decode(bad).is_err(), "{:?}", String::from_utf8_lossy(bad));
        }
        assert!(LeaderEpochs::decode(b"0\n1\n1 5\n2 6\n").is_err(), "more lines than counted");
    }
}
