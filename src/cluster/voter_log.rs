//! A controller voter's disk: its Raft log as a partition log, its latest snapshot, and its
//! state beside them.
//!
//! As in KRaft, the metadata log is a partition like any other (`__cluster_metadata/0` in the
//! data directory, written with the same O_DIRECT path, checksummed and recovered the same way):
//! entry `i` of the Raft log is the record at offset `i - 1`, one log entry each, so a Raft
//! truncation removes exactly the entries it names. The voter's term, vote and commit index go
//! to `__cluster_metadata/quorum-state` (Kafka's file name), replaced whole and synced.
//!
//! Snapshots go to `__cluster_metadata/<index>-<term>.checkpoint` (KRaft's names), written
//! whole to a temporary file and renamed; only the newest is kept. The voter's own snapshot
//! ([`VoterLog::compact`]) deletes the sealed segments it covers. A leader's snapshot
//! ([`Persist::snapshot`]) replaces the whole log, which starts again at the snapshot's end. At
//! start ([`VoterLog::open`]) the log is read from the entry after the snapshot; a log that does
//! not continue it (a crash while one replaced the log) starts again after it too.
//!
//! [`VoterLog::persist`] keeps the order `quorum.rs` asks for: a snapshot first, then the log's
//! new entries synced, then the state; its caller acts on the drain only after it returns.

use std::cell::RefCell;
use std::io;
use std::path::{Path, PathBuf};
use std::rc::Rc;

use super::quorum::{Durable, Persist};
use super::raft_wire::{StoredEntry, StoredSnapshot, VoterState};
use crate::config::TopicConfig;
use crate::log::segment::{read_small_file, replace_small_file};
use crate::log::storage::Storage;
use crate::log::{LogError, LogLimits, PartitionLog, SharedByShard};
use crate::record::archive;
use crate::record::batch::NativeBatchView;
use crate::record::entry::{entries, Check, StoredEntry as LogEntry};
use crate::record::{BatchBuilder, OwnedRecord, PayloadFormat, PendingEntry};
use crate::types::{NodeId, Offset, PartitionId};
use rkyv::{Archive, Deserialize, Serialize};

/// The metadata log's directory in the data directory; no topic may take the name.
pub const METADATA_DIR: &str = "__cluster_metadata";
const STATE_FILE: &str = "quorum-state";
/// The log's partition directory, and the name it takes while a snapshot replaces it.
const LOG_DIR: &str = "0";
const DISCARDED_LOG_DIR: &str = "0.discarded";
const SNAPSHOT_SUFFIX: &str = ".checkpoint";
/// The formats of a stored Raft entry, of the state file and of a snapshot file: their first
/// byte. Another stops the broker, naming the file.
const ENTRY_VERSION: u8 = 1;
/// 2: the voter set beside the state (1 was the state alone, during development only).
const STATE_VERSION: u8 = 2;
const SNAPSHOT_VERSION: u8 = 1;
const STATE_BYTES_MAX: u64 = 4096;
/// A snapshot file larger than this is not read: the image of a cluster at its partition
/// limits is far smaller.
const SNAPSHOT_BYTES_MAX: u64 = 256 * 1024 * 1024;
/// How much of the log one read at start takes.
const REPLAY_READ_BYTES: usize = 1024 * 1024;

pub struct VoterLog<S: Storage> {
    /// Replaced whole when a leader's snapshot replaces the log.
    log: RefCell<Rc<PartitionLog<S>>>,
    storage: S,
    dir: PathBuf,
    /// The voter set, written with every state: a log kept under one voter set must not go on
    /// under another (two sets can elect two leaders in one term).
    voters: Vec<NodeId>,
    /// What the log is opened again with.
    opening: Opening<S>,
}

struct Opening<S: Storage> {
    config: TopicConfig,
    limits: LogLimits,
    shared: SharedByShard<S>,
}

/// What `quorum-state` holds.
#[derive(Clone, Debug, PartialEq, Eq, Archive, Serialize, Deserialize)]
struct QuorumFile {
    voters: Vec<NodeId>,
    state: VoterState,
}

impl<S: Storage> VoterLog<S> {
    /// Opens (recovering) the voter's log, snapshot and state under `data_dir`, or creates them
    /// empty, and returns what they hold. Refused when they were kept under another voter set:
    /// the set is static (changing it, KIP-853, is to come).
    pub async fn open(
        data_dir: &Path,
        voters: &[NodeId],
        segment_bytes: u64,
        limits: LogLimits,
        shared: SharedByShard<S>,
    ) -> io::Result<(Self, Durable)> {
        let dir = data_dir.join(METADATA_DIR);
        let storage = shared.storage.clone();
        let names = storage.list_dir(&dir).await?;
        if names.iter().any(|n| n == DISCARDED_LOG_DIR) {
            // What a crash left of a log a snapshot replaced.
            std::fs::remove_dir_all(dir.join(DISCARDED_LOG_DIR))?;
        }
        let snapshot = read_newest_snapshot(&storage, &dir, &names).await?;
        let snapshot_index = snapshot.as_ref().map_or(0, |s| s.index);
        // No retention: only snapshots delete the Raft log (nor may a roll reuse a segment).
        let config = TopicConfig {
            segment_bytes,
            retention_ms: -1,
            retention_bytes: -1,
            ..TopicConfig::default()
        };
        let opening = Opening { config, limits, shared };
        // A log created new (or whose directory a crash removed) starts after the snapshot.
        let log = opening.open(&dir, Offset(snapshot_index)).await?;
        // A set: the order the setting names them in does not matter.
        let mut voters = voters.to_vec();
        voters.sort();
        voters.dedup();
        let voter_log = Self { log: RefCell::new(log), storage, dir, voters, opening };
        let entries = voter_log.read_after(snapshot.as_ref()).await?;
        let state = match voter_log.read_state().await? {
            Some(file) if file.voters == voter_log.voters => file.state,
            Some(file) => {
                let why = format!(
                    "this voter's log was kept with controller.quorum.voters naming nodes {:?}, \
                     not {:?}: the voter set cannot change yet",
                    file.voters, voter_log.voters
                );
                return Err(io::Error::new(io::ErrorKind::InvalidInput, why));
            }
            None => {
                // The voter set is recorded before the voter votes at all.
                voter_log.write_state(VoterState::default()).await?;
                VoterState::default()
            }
        };
        Ok((voter_log, Durable { snapshot, entries, state }))
    }

    fn log(&self) -> Rc<PartitionLog<S>> {
        self.log.borrow().clone()
    }

    fn damaged(&self, why: String) -> io::Error {
        io::Error::new(io::ErrorKind::InvalidData, format!("{}: {why}", self.dir.display()))
    }

    /// The entries after `snapshot` (all of them without one). A log that does not hold the
    /// snapshot's last entry under its term, and starts before it, does not continue it: it
    /// starts again after the snapshot.
    async fn read_after(&self, snapshot: Option<&StoredSnapshot>) -> io::Result<Vec<StoredEntry>> {
        let (index, term) = snapshot.map_or((0, 0), |s| (s.index, s.term));
        let log_start = self.log().log_start();
        if log_start.0 > index {
            let why = format!(
                "the log starts at entry {} but the snapshot ends at {index}",
                log_start.0 + 1
            );
            return Err(self.damaged(why));
        }
        if log_start.0 == index {
            // Cut at the snapshot's end: by this voter's own snapshot, or started after one.
            return self.read_from(log_start).await;
        }
        // The snapshot's last entry is at offset index - 1.
        let from_last = Offset(index - 1);
        if self.log().log_end() > from_last {
            let mut read = self.read_from(from_last).await?;
            if read.first().is_some_and(|first| first.term == term) {
                return Ok(read.split_off(1));
            }
        }
        tracing::warn!(
            log = %self.dir.display(),
            "the log does not continue the snapshot at entry {index}: it starts again after it"
        );
        self.start_after(index).await?;
        Ok(Vec::new())
    }

    async fn read_from(&self, mut offset: Offset) -> io::Result<Vec<StoredEntry>> {
        let log = self.log();
        let damaged = |why: String| self.damaged(why);
        let end = log.log_end();
        let mut read = Vec::new();
        while offset < end {
            let chunks = (log.read(offset, REPLAY_READ_BYTES, end).await)
                .map_err(|e| damaged(e.to_string()))?;
            if chunks.is_empty() {
                return Err(damaged(format!("nothing readable at offset {offset}")));
            }
            for chunk in chunks {
                // Archives need 16-aligned bytes, as read buffers hand them out.
                for entry in entries(&archive::aligned(&chunk), Check::Checksum) {
                    let LogEntry { header, payload, .. } =
                        entry.map_err(|e| damaged(e.to_string()))?;
                    if header.format() != Some(PayloadFormat::Native) {
                        return Err(damaged(format!(
                            "offset {}: not a native entry",
                            header.base_offset()
                        )));
                    }
                    let view = NativeBatchView::new(&header, payload)
                        .map_err(|e| damaged(format!("offset {}: {e}", header.base_offset())))?;
                    for record in view.records() {
                        if record.offset < offset.0 {
                            continue;
                        }
                        let stored = decode_entry(record.value().unwrap_or_default())
                            .map_err(|e| damaged(format!("offset {}: {e}", record.offset)))?;
                        if stored.index != record.offset + 1 {
                            let why = format!(
                                "offset {} holds Raft entry {}, not {}",
                                record.offset,
                                stored.index,
                                record.offset + 1
                            );
                            return Err(damaged(why));
                        }
                        read.push(stored);
                    }
                    offset = offset.max(header.next_offset());
                }
            }
        }
        Ok(read)
    }

    async fn read_state(&self) -> io::Result<Option<QuorumFile>> {
        let path = self.dir.join(STATE_FILE);
        let named = |why: String| {
            io::Error::new(io::ErrorKind::InvalidData, format!("{}: {why}", path.display()))
        };
        let Some(bytes) = read_small_file(&self.storage, &path, STATE_BYTES_MAX).await? else {
            return Ok(None);
        };
        decode_state(&bytes).map(Some).map_err(named)
    }

    async fn write_state(&self, state: VoterState) -> io::Result<()> {
        let file = QuorumFile { voters: self.voters.clone(), state };
        replace_small_file(&self.storage, &self.dir.join(STATE_FILE), &encode_state(&file)).await?;
        self.storage.sync_dir(&self.dir).await
    }

    /// Makes `snapshot` durable, then removes the older ones.
    async fn write_snapshot(&self, snapshot: &StoredSnapshot) -> io::Result<()> {
        let name = snapshot_name(snapshot.index, snapshot.term);
        let bytes = archive::encode_versioned(SNAPSHOT_VERSION, snapshot);
        replace_small_file(&self.storage, &self.dir.join(&name), &bytes).await?;
        self.storage.sync_dir(&self.dir).await?;
        for other in self.storage.list_dir(&self.dir).await? {
            let older =
                parse_snapshot_name(&other).is_some_and(|(index, _)| index < snapshot.index);
            if older {
                self.storage.remove_file(&self.dir.join(&other)).await?;
            }
        }
        Ok(())
    }

    /// The voter's own snapshot, of what it applied up to `snapshot.index`: made durable, then
    /// the log's sealed segments holding only entries it covers are deleted.
    pub async fn compact(&self, snapshot: &StoredSnapshot) -> io::Result<()> {
        self.write_snapshot(snapshot).await?;
        // Entry `index` is at offset `index - 1`: segments wholly below offset `index` hold
        // only covered entries.
        self.log().delete_segments_below(Offset(snapshot.index)).await?;
        Ok(())
    }

    /// Replaces the whole log by an empty one that starts after entry `index`. The old log is
    /// renamed away first (atomically), so a crash leaves it whole or gone, never partly
    /// removed.
    async fn start_after(&self, index: u64) -> io::Result<()> {
        let old = self.log();
        old.close().await;
        old.mark_deleted();
        let (live, discarded) = (self.dir.join(LOG_DIR), self.dir.join(DISCARDED_LOG_DIR));
        std::fs::rename(&live, &discarded)?;
        self.storage.sync_dir(&self.dir).await?;
        std::fs::remove_dir_all(&discarded)?;
        let log = self.opening.open(&self.dir, Offset(index)).await?;
        // The new log's directory is durable before anything is appended to it.
        self.storage.sync_dir(&self.dir).await?;
        *self.log.borrow_mut() = log;
        Ok(())
    }

    /// Makes `persist` durable: a snapshot replacing the log, then the log from its first
    /// entry's index replaced by its entries and synced, then the state replaced.
    pub async fn persist(&self, persist: &Persist) -> io::Result<()> {
        let failed = |e: LogError| io::Error::other(format!("{}: {e}", self.dir.display()));
        if let Some(snapshot) = &persist.snapshot {
            self.write_snapshot(snapshot).await?;
            self.start_after(snapshot.index).await?;
        }
        let log = self.log();
        if let Some(first) = persist.entries.first() {
            let from = Offset(first.index.saturating_sub(1));
            if from < log.log_end() {
                let cut = log.truncate_to(from).await.map_err(failed)?;
                // One Raft entry per log entry: a truncation cuts exactly where it is asked.
                if cut != from {
                    let why = format!("the log cut at {cut}, asked to cut at {from}");
                    return Err(io::Error::other(format!("{}: {why}", self.dir.display())));
                }
            }
            let mut last = None;
            for entry in &persist.entries {
                let mut builder = BatchBuilder::default();
                let now = self.storage.now_ms();
                builder.push(OwnedRecord {
                    value: Some(encode_entry(entry)),
                    timestamp: now,
                    ..OwnedRecord::default()
                });
                let (meta, archive) = builder.build();
                let pending = PendingEntry::native(meta, &archive)
                    .ok_or_else(|| io::Error::other("a metadata entry too large to frame"))?;
                let appended = log.append(pending).map_err(failed)?;
                if appended.base_offset.0 + 1 != entry.index {
                    let why = format!(
                        "Raft entry {} went to offset {}",
                        entry.index, appended.base_offset
                    );
                    return Err(io::Error::other(format!("{}: {why}", self.dir.display())));
                }
                last = Some(appended);
            }
            if let Some(last) = last {
                log.wait_synced(&last).await.map_err(failed)?;
            }
        }
        if let Some(state) = persist.state {
            self.write_state(state).await?;
        }
        Ok(())
    }

    /// Where the log on disk starts: the first entry it holds is the one after this.
    pub fn log_start(&self) -> u64 {
        self.log().log_start().0
    }

    pub async fn close(&self) {
        self.log().close().await;
    }
}

impl<S: Storage> Opening<S> {
    async fn open(&self, dir: &Path, start: Offset) -> io::Result<Rc<PartitionLog<S>>> {
        PartitionLog::open_starting_at(
            Rc::from(METADATA_DIR),
            PartitionId(0),
            dir.join(LOG_DIR),
            self.config.clone(),
            self.limits,
            self.shared.clone(),
            start,
        )
        .await
    }
}

/// KRaft's snapshot file name: the end offset (the entries it covers) and the epoch (term).
fn snapshot_name(index: u64, term: u64) -> String {
    format!("{index:020}-{term:010}{SNAPSHOT_SUFFIX}")
}

fn parse_snapshot_name(name: &str) -> Option<(u64, u64)> {
    let (index, term) = name.strip_suffix(SNAPSHOT_SUFFIX)?.split_once('-')?;
    Some((index.parse().ok()?, term.parse().ok()?))
}

/// The newest snapshot in `dir`, checked against its name.
async fn read_newest_snapshot<S: Storage>(
    storage: &S,
    dir: &Path,
    names: &[String],
) -> io::Result<Option<StoredSnapshot>> {
    let newest = names.iter().filter_map(|n| Some((parse_snapshot_name(n)?, n))).max();
    let Some(((index, term), name)) = newest else { return Ok(None) };
    let path = dir.join(name);
    let named = |why: String| {
        io::Error::new(io::ErrorKind::InvalidData, format!("{}: {why}", path.display()))
    };
    let bytes = read_small_file(storage, &path, SNAPSHOT_BYTES_MAX).await?;
    let bytes = bytes.ok_or_else(|| named("removed while read".into()))?;
    let versions = SNAPSHOT_VERSION..=SNAPSHOT_VERSION;
    let snapshot: StoredSnapshot =
        archive::decode_versioned(&bytes, versions, "metadata snapshot").map_err(named)?;
    if (snapshot.index, snapshot.term) != (index, term) || index == 0 {
        let why = format!("holds entry {} of term {}", snapshot.index, snapshot.term);
        return Err(named(why));
    }
    Ok(Some(snapshot))
}

fn encode_entry(entry: &StoredEntry) -> Vec<u8> {
    archive::encode_versioned(ENTRY_VERSION, entry)
}

fn decode_entry(bytes: &[u8]) -> Result<StoredEntry, String> {
    archive::decode_versioned(bytes, ENTRY_VERSION..=ENTRY_VERSION, "Raft entry")
}

fn encode_state(file: &QuorumFile) -> Vec<u8> {
    archive::encode_versioned(STATE_VERSION, file)
}

fn decode_state(bytes: &[u8]) -> Result<QuorumFile, String> {
    archive::decode_versioned(bytes, STATE_VERSION..=STATE_VERSION, "voter state")
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::log::partition::tests::in_partition_dir;
    use crate::log::queued::QueuedBytes;
    use crate::log::read_cache::ReadCache;
    use crate::log::segment::OpenFiles;
    use crate::log::storage::DmaStorage;
    use crate::log::tail_cache::TailBudget;
    use crate::metrics::Metrics;

    const VOTERS: [NodeId; 3] = [NodeId(1), NodeId(2), NodeId(3)];

    async fn open(data_dir: &Path) -> (VoterLog<DmaStorage>, Durable) {
        try_open(data_dir, &VOTERS).await.expect("open the voter log")
    }

    async fn try_open(
        data_dir: &Path,
        voters: &[NodeId],
    ) -> io::Result<(VoterLog<DmaStorage>, Durable)> {
        // The smallest segments, so that a few entries fill one.
        let segment_bytes = crate::config::SEGMENT_BYTES_MIN;
        let limits = LogLimits {
            write_bytes_max: 64 * 1024,
            tail_cache_bytes: 0,
            // Replayed once at start: nothing to keep or read ahead.
            read_ahead_bytes: 0,
            read_chunk_bytes: crate::log::partition::READ_CHUNK_BYTES,
            staged_bytes_max: 1024 * 1024,
            producer_expiration_ms: 60_000,
            recovery_point_bytes: 1024 * 1024,
        };
        let shared = SharedByShard {
            storage: DmaStorage,
            metrics: Rc::new(Metrics::default()),
            queued: Arc::new(QueuedBytes::new(usize::MAX)),
            storage_health: Arc::default(),
            tail_budget: TailBudget::new(usize::MAX),
            read_cache: ReadCache::new(0),
            open_files: OpenFiles::new(2),
        };
        VoterLog::open(data_dir, voters, segment_bytes, limits, shared).await
    }

    fn entry(index: u64, term: u64) -> StoredEntry {
        StoredEntry { index, term, data: format!("{index}@{term}").into_bytes() }
    }

    #[test]
    fn the_log_and_state_come_back_as_persisted_with_overwrites_exact() {
        in_partition_dir(|dir| async move {
            let data_dir = dir.parent().expect("a data directory").to_path_buf();
            let (log, durable) = open(&data_dir).await;
            assert_eq!(durable, Durable::default(), "a new voter's disk is empty");
            let state = VoterState { term: 2, vote: 1, commit: 3 };
            let first = Persist {
                snapshot: None,
                entries: (1..=5).map(|i| entry(i, 1 + i / 4)).collect(),
                state: Some(state),
            };
            log.persist(&first).await.expect("persist");
            // A new leader overwrites entries 4 and 5 it never had, and adds a sixth.
            let overwrite = Persist {
                entries: vec![entry(4, 3), entry(5, 3), entry(6, 3)],
                ..Persist::default()
            };
            log.persist(&overwrite).await.expect("overwrite");
            log.close().await;

            let (log, durable) = open(&data_dir).await;
            let mut expected = Durable { snapshot: None, state, ..Durable::default() };
            expected.apply(&first);
            expected.apply(&overwrite);
            assert_eq!(durable, expected);
            assert_eq!(durable.entries[3], entry(4, 3));
            assert_eq!(durable.entries.len(), 6);
            log.close().await;

            // The same set in another order is the same set; another set is refused by name.
            let reordered = [VOTERS[2], VOTERS[0], VOTERS[1]];
            try_open(&data_dir, &reordered).await.expect("the same voters").0.close().await;
            let other = try_open(&data_dir, &VOTERS[..2]).await.err().expect("refused");
            assert!(other.to_string().contains("cannot change"), "{other}");

            // A state file of a newer format stops the voter by name, never read as damage.
            let state_path = data_dir.join(METADATA_DIR).join(STATE_FILE);
            let mut newer = std::fs::read(&state_path).expect("the state file");
            newer[0] = STATE_VERSION + 1;
            std::fs::write(&state_path, newer).expect("rewrite the state file");
            let refused = try_open(&data_dir, &VOTERS).await.err().expect("refused");
            let message = refused.to_string();
            assert!(
                message.contains("quorum-state")
                    && message.contains(&format!("version {}", STATE_VERSION + 1)),
                "{message}"
            );
        });
    }

    /// An entry of 4 KiB: four fill a segment of the smallest size.
    fn large_entry(index: u64, term: u64) -> StoredEntry {
        StoredEntry { index, term, data: vec![index as u8; 4096] }
    }

    fn snapshot(index: u64, term: u64) -> StoredSnapshot {
        StoredSnapshot { index, term, voters: vec![2, 3, 4], data: vec![index as u8; 100] }
    }

    fn snapshot_files(data_dir: &Path) -> Vec<String> {
        let names = std::fs::read_dir(data_dir.join(METADATA_DIR)).expect("the metadata dir");
        let names = names.map(|e| e.expect("an entry").file_name().to_string_lossy().into_owned());
        names.filter(|n| n.ends_with(SNAPSHOT_SUFFIX)).collect()
    }

    #[test]
    fn snapshots_bound_the_log_and_a_leaders_snapshot_replaces_it() {
        in_partition_dir(|dir| async move {
            let data_dir = dir.parent().expect("a data directory").to_path_buf();
            let (log, _) = open(&data_dir).await;
            let state = VoterState { term: 1, vote: 1, commit: 20 };
            let written = (1..=20).map(|i| large_entry(i, 1)).collect();
            log.persist(&Persist { entries: written, state: Some(state), snapshot: None })
                .await
                .expect("persist");
            // The voter's own snapshot of entries up to 15 deletes the segments it covers.
            log.compact(&snapshot(15, 1)).await.expect("compact");
            let log_start = log.log_start();
            assert!(log_start > 0 && log_start <= 15, "the log starts after entry {log_start}");
            log.close().await;

            let (log, durable) = open(&data_dir).await;
            assert_eq!(durable.snapshot, Some(snapshot(15, 1)));
            let after: Vec<u64> = durable.entries.iter().map(|e| e.index).collect();
            assert_eq!(after, (16..=20).collect::<Vec<_>>(), "the entries after the snapshot");
            assert_eq!(durable.state, state);

            // A leader's snapshot replaces the whole log, which goes on after it.
            let replaced = Persist {
                snapshot: Some(snapshot(30, 2)),
                entries: vec![large_entry(31, 2)],
                state: Some(VoterState { term: 2, vote: 0, commit: 30 }),
            };
            log.persist(&replaced).await.expect("persist a leader's snapshot");
            assert_eq!(log.log_start(), 30);
            log.close().await;
            let (log, durable) = open(&data_dir).await;
            assert_eq!(durable.snapshot, Some(snapshot(30, 2)));
            assert_eq!(durable.entries, vec![large_entry(31, 2)]);
            assert_eq!(snapshot_files(&data_dir), vec![snapshot_name(30, 2)], "only the newest");

            // A crash after a leader's snapshot was written, before the log was replaced:
            // the log does not reach it, so it starts again after it.
            log.write_snapshot(&snapshot(40, 3)).await.expect("write a snapshot");
            log.close().await;
            let (log, durable) = open(&data_dir).await;
            assert_eq!(durable.snapshot, Some(snapshot(40, 3)));
            assert!(durable.entries.is_empty(), "{:?}", durable.entries);
            assert_eq!(log.log_start(), 40);
            log.close().await;

            // A snapshot file of a newer format stops the voter by name.
            let path = data_dir.join(METADATA_DIR).join(snapshot_name(40, 3));
            let mut newer = std::fs::read(&path).expect("the snapshot file");
            newer[0] = SNAPSHOT_VERSION + 1;
            std::fs::write(&path, newer).expect("rewrite the snapshot file");
            let refused = try_open(&data_dir, &VOTERS).await.err().expect("refused");
            assert!(refused.to_string().contains(SNAPSHOT_SUFFIX), "{refused}");
        });
    }
}
