//! A voter's Raft log in memory, as raft-rs reads it: the latest snapshot of the metadata log,
//! the entries after it, and the voter's hard and configuration state.
//!
//! raft-rs's own `MemStorage` hands out snapshots without data and forgets the term at the
//! point it was compacted to, so it cannot serve a voter that lags behind the log's start. This
//! storage keeps the snapshot whole: a leader sends it to such a voter (Raft's InstallSnapshot,
//! section 7 of the Raft paper). The entries it stands for are dropped from memory one snapshot
//! later: a voter a little behind (reconnected, or probing after a rejected append) is sent
//! those entries, not the whole image (etcd keeps a tail of entries for the same reason).
//!
//! Every call checks what raft-rs's contract asks of its caller and answers an error rather
//! than panic: the entries given to it come from this voter's own Raft node, but a bug must not
//! take the broker down.

use raft::eraftpb::{ConfState, Entry, HardState, Snapshot};
use raft::{Error, GetEntriesContext, RaftState, Storage, StorageError};

pub struct VoterStorage {
    hard_state: HardState,
    conf_state: ConfState,
    /// The latest snapshot; it stands for every entry up to its index (0: none yet).
    snapshot: Snapshot,
    /// Consecutive entries from the first kept (at or before the one after the snapshot) to the
    /// log's end.
    entries: Vec<Entry>,
}

fn refused(why: String) -> Error {
    Error::Store(StorageError::Other(why.into()))
}

impl VoterStorage {
    pub fn new(voters: &[u64]) -> Self {
        Self {
            hard_state: HardState::default(),
            conf_state: ConfState::from((voters.to_vec(), vec![])),
            snapshot: Snapshot::default(),
            entries: Vec::new(),
        }
    }

    pub fn snapshot_index(&self) -> u64 {
        self.snapshot.get_metadata().index
    }

    pub fn hard_state(&self) -> &HardState {
        &self.hard_state
    }

    pub fn set_hard_state(&mut self, state: HardState) {
        self.hard_state = state;
    }

    pub fn set_commit(&mut self, commit: u64) {
        self.hard_state.commit = commit;
    }

    fn first(&self) -> u64 {
        self.entries.first().map_or(self.snapshot_index() + 1, |e| e.index)
    }

    fn last(&self) -> u64 {
        self.entries.last().map_or(self.snapshot_index(), |e| e.index)
    }

    /// Entries that replace the log from the first one's index on.
    pub fn append(&mut self, entries: &[Entry]) -> Result<(), Error> {
        let Some(first) = entries.first() else { return Ok(()) };
        // Never over what the snapshot stands for: those entries are committed.
        if first.index <= self.snapshot_index() || first.index > self.last() + 1 {
            return Err(refused(format!(
                "entries from {} appended to a log holding {} to {}",
                first.index,
                self.first(),
                self.last()
            )));
        }
        let kept = (first.index - self.first()) as usize;
        self.entries.truncate(kept);
        self.entries.extend_from_slice(entries);
        Ok(())
    }

    /// A snapshot from the leader replaces the whole log (raft-rs restores one only when this
    /// voter's log does not hold its last entry), and commits up to it.
    pub fn install(&mut self, snapshot: Snapshot) {
        let metadata = snapshot.get_metadata();
        self.hard_state.term = self.hard_state.term.max(metadata.term);
        self.hard_state.commit = self.hard_state.commit.max(metadata.index);
        self.conf_state = metadata.get_conf_state().clone();
        self.entries.clear();
        self.snapshot = snapshot;
    }

    /// This voter's own snapshot of what it applied; entries before `keep_from` are dropped
    /// (at most those the snapshot stands for).
    pub fn compact(&mut self, snapshot: Snapshot, keep_from: u64) -> Result<(), Error> {
        let (index, term) = (snapshot.get_metadata().index, snapshot.get_metadata().term);
        if index <= self.snapshot_index() {
            return Ok(());
        }
        if index > self.last() || self.term(index).ok() != Some(term) {
            return Err(refused(format!(
                "a snapshot at entry {index} of term {term}, which this log does not hold"
            )));
        }
        let keep_from = keep_from.min(index + 1);
        let dropped = keep_from.saturating_sub(self.first()) as usize;
        self.entries.drain(..dropped.min(self.entries.len()));
        self.snapshot = snapshot;
        Ok(())
    }
}

impl Storage for VoterStorage {
    fn initial_state(&self) -> raft::Result<RaftState> {
        Ok(RaftState { hard_state: self.hard_state.clone(), conf_state: self.conf_state.clone() })
    }

    fn entries(
        &self,
        low: u64,
        high: u64,
        max_size: impl Into<Option<u64>>,
        _context: GetEntriesContext,
    ) -> raft::Result<Vec<Entry>> {
        if low < self.first() {
            return Err(Error::Store(StorageError::Compacted));
        }
        if high > self.last() + 1 || low > high {
            return Err(Error::Store(StorageError::Unavailable));
        }
        let offset = self.first();
        let mut entries = self.entries[(low - offset) as usize..(high - offset) as usize].to_vec();
        raft::util::limit_size(&mut entries, max_size.into());
        Ok(entries)
    }

    fn term(&self, index: u64) -> raft::Result<u64> {
        if index >= self.first() {
            if let Some(entry) = self.entries.get((index - self.first()) as usize) {
                return Ok(entry.term);
            }
        }
        if index == self.snapshot_index() {
            return Ok(self.snapshot.get_metadata().term);
        }
        match index < self.first() {
            true => Err(Error::Store(StorageError::Compacted)),
            false => Err(Error::Store(StorageError::Unavailable)),
        }
    }

    fn first_index(&self) -> raft::Result<u64> {
        Ok(self.first())
    }

    fn last_index(&self) -> raft::Result<u64> {
        Ok(self.last())
    }

    /// The latest snapshot, for a voter that lags behind the log's start (raft-rs asks only
    /// then, so there is one).
    fn snapshot(&self, request_index: u64, _to: u64) -> raft::Result<Snapshot> {
        if self.snapshot_index() == 0 || self.snapshot_index() < request_index {
            return Err(Error::Store(StorageError::SnapshotTemporarilyUnavailable));
        }
        Ok(self.snapshot.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(index: u64, term: u64) -> Entry {
        Entry { index, term, ..Default::default() }
    }

    fn snapshot(index: u64, term: u64) -> Snapshot {
        let mut snapshot = Snapshot::default();
        (snapshot.mut_metadata().index, snapshot.mut_metadata().term) = (index, term);
        snapshot.mut_metadata().set_conf_state(ConfState::from((vec![1, 2, 3], vec![])));
        snapshot
    }

    #[test]
    fn compaction_keeps_the_snapshot_term_and_refuses_what_is_gone() {
        let mut storage = VoterStorage::new(&[1, 2, 3]);
        let none = storage.snapshot(0, 2);
        assert!(matches!(none, Err(Error::Store(StorageError::SnapshotTemporarilyUnavailable))));
        storage.append(&(1..=6).map(|i| entry(i, 1 + i / 4)).collect::<Vec<_>>()).expect("append");
        // Not the log's entry 4, which is of term 2.
        assert!(storage.compact(snapshot(4, 1), 5).is_err());
        // Entries from 3 on kept in memory a snapshot longer, then dropped up to the snapshot.
        storage.compact(snapshot(4, 2), 3).expect("compact");
        assert_eq!((storage.first_index().ok(), storage.term(3).ok()), (Some(3), Some(1)));
        storage.compact(snapshot(4, 2), 9).expect("compact again");
        assert_eq!(storage.first_index().ok(), Some(3), "the same snapshot changes nothing");
        storage.compact(snapshot(5, 2), 5).expect("compact to 5");
        storage.compact(snapshot(4, 2), 5).expect("an older snapshot changes nothing");
        assert_eq!(storage.snapshot(0, 2).expect("a snapshot").get_metadata().index, 5);
        let mut storage = VoterStorage::new(&[1, 2, 3]);
        storage.append(&(1..=6).map(|i| entry(i, 1 + i / 4)).collect::<Vec<_>>()).expect("append");
        storage.compact(snapshot(4, 2), 9).expect("compact");
        assert_eq!((storage.first_index().ok(), storage.last_index().ok()), (Some(5), Some(6)));
        assert_eq!(storage.term(4).ok(), Some(2));
        assert!(matches!(storage.term(3), Err(Error::Store(StorageError::Compacted))));
        let context = || GetEntriesContext::empty(false);
        assert!(matches!(storage.entries(4, 6, None, context()), Err(Error::Store(_))));
        assert_eq!(storage.entries(5, 7, None, context()).expect("entries").len(), 2);
        assert!(storage.entries(5, 8, None, context()).is_err(), "past the end, not a panic");
        assert_eq!(storage.snapshot(0, 2).expect("a snapshot").get_metadata().index, 4);
        // Appends may not reach below the snapshot or leave a gap.
        assert!(storage.append(&[entry(4, 2)]).is_err());
        assert!(storage.append(&[entry(8, 2)]).is_err());
        storage.append(&[entry(6, 3), entry(7, 3)]).expect("overwrite from 6");
        assert_eq!(storage.term(6).ok(), Some(3));

        // A leader's snapshot replaces the whole log and commits up to it.
        storage.install(snapshot(10, 4));
        assert_eq!((storage.first_index().ok(), storage.last_index().ok()), (Some(11), Some(10)));
        assert_eq!(storage.hard_state().commit, 10);
        assert_eq!(storage.term(10).ok(), Some(4));
    }
}
