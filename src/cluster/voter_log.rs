//! A controller voter's disk: its Raft log as a partition log, and its state beside it.
//!
//! As in KRaft, the metadata log is a partition like any other (`__cluster_metadata/0` in the
//! data directory, written with the same O_DIRECT path, checksummed and recovered the same way):
//! entry `i` of the Raft log is the record at offset `i - 1`, one log entry each, so a Raft
//! truncation removes exactly the entries it names. The voter's term, vote and commit index go
//! to `__cluster_metadata/quorum-state` (Kafka's file name), replaced whole and synced.
//!
//! [`VoterLog::persist`] keeps the order `quorum.rs` asks for: the log's new entries synced
//! first, then the state; its caller acts on the drain only after it returns.

use std::io;
use std::path::{Path, PathBuf};
use std::rc::Rc;

use super::quorum::{Durable, Persist};
use super::raft_wire::{StoredEntry, VoterState};
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
/// The formats of a stored Raft entry and of the state file: their first byte. Another stops
/// the broker, naming the file.
const ENTRY_VERSION: u8 = 1;
/// 2: the voter set beside the state (1 was the state alone, during development only).
const STATE_VERSION: u8 = 2;
const STATE_BYTES_MAX: u64 = 4096;
/// The metadata log is small; segments of this size keep its files few.
const SEGMENT_BYTES: u64 = 64 * 1024 * 1024;
/// How much of the log one read at start takes.
const REPLAY_READ_BYTES: usize = 1024 * 1024;

pub struct VoterLog<S: Storage> {
    log: Rc<PartitionLog<S>>,
    storage: S,
    dir: PathBuf,
    /// The voter set, written with every state: a log kept under one voter set must not go on
    /// under another (two sets can elect two leaders in one term).
    voters: Vec<NodeId>,
}

/// What `quorum-state` holds.
#[derive(Clone, Debug, PartialEq, Eq, Archive, Serialize, Deserialize)]
struct QuorumFile {
    voters: Vec<NodeId>,
    state: VoterState,
}

impl<S: Storage> VoterLog<S> {
    /// Opens (recovering) the voter's log and state under `data_dir`, or creates them empty,
    /// and returns what they hold. Refused when they were kept under another voter set: the
    /// set is static (changing it, KIP-853, is to come).
    pub async fn open(
        data_dir: &Path,
        voters: &[NodeId],
        limits: LogLimits,
        shared: SharedByShard<S>,
    ) -> io::Result<(Self, Durable)> {
        let dir = data_dir.join(METADATA_DIR);
        let storage = shared.storage.clone();
        let config = TopicConfig { segment_bytes: SEGMENT_BYTES, ..TopicConfig::default() };
        let log = PartitionLog::open(
            Rc::from(METADATA_DIR),
            PartitionId(0),
            dir.join("0"),
            config,
            limits,
            shared,
        )
        .await?;
        // A set: the order the setting names them in does not matter.
        let mut voters = voters.to_vec();
        voters.sort();
        voters.dedup();
        let voter_log = Self { log, storage, dir, voters };
        let entries = voter_log.read_all().await?;
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
        Ok((voter_log, Durable { entries, state }))
    }

    async fn read_all(&self) -> io::Result<Vec<StoredEntry>> {
        let damaged = |why: String| {
            io::Error::new(io::ErrorKind::InvalidData, format!("{}: {why}", self.dir.display()))
        };
        let (mut offset, end) = (self.log.log_start(), self.log.log_end());
        if offset != Offset(0) {
            return Err(damaged(format!("the log starts at {offset}, not at its first entry")));
        }
        let mut read = Vec::new();
        while offset < end {
            let chunks = (self.log.read(offset, REPLAY_READ_BYTES, end).await)
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

    /// Makes `persist` durable: the log from its first entry's index replaced by its entries and
    /// synced, then the state replaced.
    pub async fn persist(&self, persist: &Persist) -> io::Result<()> {
        let failed = |e: LogError| io::Error::other(format!("{}: {e}", self.dir.display()));
        if let Some(first) = persist.entries.first() {
            let from = Offset(first.index.saturating_sub(1));
            if from < self.log.log_end() {
                let cut = self.log.truncate_to(from).await.map_err(failed)?;
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
                let appended = self.log.append(pending).map_err(failed)?;
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
                self.log.wait_synced(&last).await.map_err(failed)?;
            }
        }
        if let Some(state) = persist.state {
            self.write_state(state).await?;
        }
        Ok(())
    }

    pub async fn close(&self) {
        self.log.close().await;
    }
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
        let limits = LogLimits {
            write_bytes_max: 64 * 1024,
            tail_cache_bytes: 0,
            staged_bytes_max: 1024 * 1024,
            producer_expiration_ms: 60_000,
            recovery_point_bytes: 1024 * 1024,
        };
        let shared = SharedByShard {
            storage: DmaStorage,
            metrics: Rc::new(Metrics::default()),
            queued: Arc::new(QueuedBytes::new(usize::MAX)),
            tail_budget: TailBudget::new(usize::MAX),
            open_files: OpenFiles::new(2),
        };
        VoterLog::open(data_dir, voters, limits, shared).await
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
                entries: (1..=5).map(|i| entry(i, 1 + i / 4)).collect(),
                state: Some(state),
            };
            log.persist(&first).await.expect("persist");
            // A new leader overwrites entries 4 and 5 it never had, and adds a sixth.
            let overwrite =
                Persist { entries: vec![entry(4, 3), entry(5, 3), entry(6, 3)], state: None };
            log.persist(&overwrite).await.expect("overwrite");
            log.close().await;

            let (log, durable) = open(&data_dir).await;
            let mut expected = Durable { state, ..Durable::default() };
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
}
