//! One partition's log: offsets, the segment writer, group commit, reads and retention.
//!
//! ```text
//!  append() ──► staged (in memory) ──writer task──► O_DIRECT write ──► written_offset
//!     │                                                                     │
//!     └──► tail cache (the same Bytes)             syncer task: fdatasync ──► synced_offset
//! ```
//!
//! Watermarks, always `log_start <= synced_offset <= written_offset <= next_offset`:
//! - `next_offset`: the next offset to assign; everything below has been appended.
//! - `written_offset`: everything below is on the device (an O_DIRECT write completed) and
//!   survives a process crash; reads stop here. (What consumers see, the high watermark, is the
//!   partition layer's, `crate::partition`, and never past it.)
//! - `synced_offset`: everything below has been fdatasync'ed and survives power loss.
//!
//! The partition layer's acks=1 waits for `written_offset`, acks=all for `synced_offset`. The writer task
//! (`partition/writer.rs`) keeps up to two writes in flight, laid out by `write_plan.rs` so they
//! never share a block, and writes grow with load (everything staged while both are in flight
//! goes in the next one); one syncer task keeps one fdatasync in flight and releases every
//! waiter at or below the position it covered: group commit.
//!
//! A write refused for lack of space (a full disk or quota) does not fail the partition: what
//! was appended but not yet written is discarded, its producers get a storage error, its offsets
//! are handed out again, and appends are refused for [`OUT_OF_SPACE_BACKOFF`] before the writer
//! tries again. Everything written before stays readable and acknowledged. Any other write or
//! sync error fails the partition for good: what reached the disk is then uncertain.

use std::cell::{RefCell, RefMut};
use std::collections::VecDeque;
use std::io;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use event_listener::Event;
use futures_channel::oneshot;

use crate::config::{TopicConfig, WRITE_ALIGN_BYTES};
use crate::error::{BrokerError, ErrorKind};
use crate::log::epochs::{self, EpochStart, LeaderEpochs};
use crate::log::health::StorageHealth;
use crate::log::in_place::{EntryData, Placement, ReceiveBuffer};
use crate::log::index::IndexedSegment;
use crate::log::log_start;
use crate::log::producers::{ProducerSummary, ProducerTable, SequenceCheck, SequenceError};
use crate::log::queued::QueuedBytes;
use crate::log::read_cache::{CachedLog, ReadCache};
use crate::log::retention::{self, SegmentFacts};
use crate::log::segment::{
    self, OpenFiles, PreallocateStep, Segment, Truncation, PREALLOCATE_STEP_MIN_BYTES,
};
use crate::log::storage::{DmaStorage, Storage, StorageFile};
use crate::log::tail_cache::{TailBudget, TailCache};
use crate::metrics::{Hist, Metrics};
use crate::record::entry::{entries, parse_entry, parse_header, Check, ENTRY_HEADER_BYTES};
use crate::record::pending::LEADER_EPOCH;
use crate::record::{EntryError, PendingEntry};
use crate::types::{FilePosition, LeaderEpoch, Offset, PartitionId};

mod reads;
mod writer;

pub use reads::READ_CHUNK_BYTES;

/// How much of the newest log is replayed on open to rebuild idempotent producers' state: far
/// more than any producer's retries span.
const PRODUCER_REBUILD_BYTES: u64 = 16 * 1024 * 1024;

/// How long a partition refuses appends after a write found no space, before trying again:
/// long enough not to spin on a full disk, short enough that producing resumes promptly once
/// space is freed.
pub const OUT_OF_SPACE_BACKOFF: Duration = Duration::from_secs(1);

/// Limits that come from the broker's settings rather than the topic's.
#[derive(Clone, Copy, Debug)]
pub struct LogLimits {
    pub write_bytes_max: usize,
    pub tail_cache_bytes: usize,
    /// The most read ahead of one sequential reader (`log.read.ahead.bytes`; 0: none).
    pub read_ahead_bytes: usize,
    /// About how much of a segment one chunk of the read cache spans ([`READ_CHUNK_BYTES`]).
    pub read_chunk_bytes: u64,
    /// Appended-but-unwritten bytes beyond which producers wait: the memory bound when
    /// producers outrun the disk.
    pub staged_bytes_max: usize,
    /// An idempotent producer that has not written for this long is forgotten
    /// (`producer.id.expiration.ms`).
    pub producer_expiration_ms: i64,
    /// How far the active segment may grow past its index file before a recovery point is
    /// made: an fdatasync (asked for by the writer when no acks=all producer asks) and then an
    /// index covering what it synced. A start after kill -9 or a power loss scans at most this
    /// much of each partition (plus what came after the last sync), Kafka's recovery point.
    pub recovery_point_bytes: u64,
}

/// 64 MiB: one extra fdatasync and one index file per 64 MiB written (well under 1% of the
/// disk's time at full speed here), and a kill -9 start that scans 64 MiB per busy partition at
/// most instead of up to a whole segment.
pub const RECOVERY_POINT_BYTES: u64 = 64 * 1024 * 1024;

/// What every partition of a shard shares.
#[derive(Clone)]
pub struct SharedByShard<S: Storage = DmaStorage> {
    /// Files and clocks: the machine's, or a simulation's.
    pub storage: S,
    pub metrics: Rc<Metrics>,
    /// The broker-wide count of appended-but-unwritten bytes.
    pub queued: Arc<QueuedBytes>,
    /// What the broker's writes met, for its heartbeat.
    pub storage_health: Arc<StorageHealth>,
    /// The shard's tail-cache memory.
    pub tail_budget: Rc<TailBudget>,
    /// The shard's memory for chunks read from the disk.
    pub read_cache: Rc<ReadCache>,
    /// The shard's open sealed-segment files.
    pub open_files: Rc<OpenFiles<S>>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LogError {
    OffsetOutOfRange {
        requested: Offset,
        log_start: Offset,
        log_end: Offset,
    },
    /// A write or sync failed: the records were not stored (the partition may refuse appends
    /// for a while, or for good).
    Storage(String),
    /// Stored bytes failed their checksum.
    Corrupt(String),
    /// The partition is closing (broker stopping or topic deleted).
    Closed,
    /// An idempotent producer's batch out of sequence or from a fenced epoch.
    Sequence(SequenceError),
    /// The log was truncated below the entry (its offsets may be handed out again).
    Truncated {
        below: Offset,
    },
    /// A truncation is under way: appends wait for it to end.
    Truncating,
    /// A leader epoch below zero or older than the latest, or not starting at the log end.
    InvalidEpoch {
        epoch: LeaderEpoch,
        start_offset: Offset,
    },
    /// A follower's entry does not continue the log where it ends.
    NotNextOffset {
        next_offset: Offset,
        entry_base_offset: Offset,
    },
}

/// The one place log errors become broker errors.
impl From<LogError> for BrokerError {
    fn from(e: LogError) -> Self {
        let kind = match &e {
            LogError::OffsetOutOfRange { .. } => ErrorKind::OffsetOutOfRange,
            LogError::Storage(_) => ErrorKind::StorageError,
            // A reader is told the stored bytes are bad rather than handed wrong data.
            LogError::Corrupt(_) => ErrorKind::StorageError,
            // A replica's log is truncated when it stops leading, and a truncation is brief:
            // either way the client tries again (the replica layer will say NOT_LEADER).
            LogError::Closed | LogError::Truncated { .. } | LogError::Truncating => {
                ErrorKind::NotAvailable
            }
            LogError::NotNextOffset { .. } | LogError::InvalidEpoch { .. } => {
                ErrorKind::InvalidRequest
            }
            LogError::Sequence(SequenceError::OutOfOrder(_)) => ErrorKind::OutOfOrderSequence,
            LogError::Sequence(SequenceError::StaleEpoch(_)) => ErrorKind::InvalidProducerEpoch,
        };
        Self::new(kind, e.to_string())
    }
}

impl std::fmt::Display for LogError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::OffsetOutOfRange { requested, log_start, log_end } => {
                write!(f, "offset {requested} is outside the log [{log_start}, {log_end}]")
            }
            Self::Storage(why) => write!(f, "storage error: {why}"),
            Self::Corrupt(why) => write!(f, "corrupt data: {why}"),
            Self::Closed => write!(f, "partition is closing"),
            Self::Sequence(why) => write!(f, "{why}"),
            Self::Truncated { below } => write!(f, "the log was truncated below offset {below}"),
            Self::Truncating => write!(f, "the log is being truncated"),
            Self::InvalidEpoch { epoch, start_offset } => {
                write!(f, "leader epoch {epoch} cannot start at offset {start_offset}")
            }
            Self::NotNextOffset { next_offset, entry_base_offset } => write!(
                f,
                "an entry at offset {entry_base_offset} does not continue the log at {next_offset}"
            ),
        }
    }
}

impl std::error::Error for LogError {}

/// The appends between two cuts of the log's end: a discard of what a full disk did not take,
/// or a truncation. A cut hands the offsets past it out again, so an offset alone cannot tell a
/// waiter whether its own entry is still there: the generation it appended in remembers where
/// it was cut, and why.
#[derive(Default)]
struct Generation {
    cut: RefCell<Option<(Offset, LogError)>>,
    /// The generation after the cut: a later cut can still take an entry an earlier one left.
    next: RefCell<Option<Rc<Generation>>>,
}

/// An appended entry: where it is in the log, and what to wait on with
/// [`PartitionLog::wait_written`] or [`PartitionLog::wait_synced`].
pub struct Appended {
    pub base_offset: Offset,
    pub next_offset: Offset,
    /// An idempotent producer's retry of a batch the log already has (nothing was appended):
    /// that batch's largest timestamp as stored, under LogAppendTime when it was appended.
    pub duplicate_of: Option<i64>,
    generation: Rc<Generation>,
}

impl Appended {
    /// Why the entry is gone, when a cut took it: its generation's, or any after it.
    fn cut(&self) -> Option<LogError> {
        let mut generation = Some(self.generation.clone());
        while let Some(current) = generation {
            let cut = current.cut.borrow();
            if let Some((_, why)) = cut.as_ref().filter(|(from, _)| self.next_offset > *from) {
                return Some(why.clone());
            }
            generation = current.next.borrow().clone();
        }
        None
    }
}

struct Staged<S: Storage> {
    base_offset: Offset,
    next_offset: Offset,
    max_timestamp: i64,
    entry: EntryData<S>,
}

struct LogState<S: Storage> {
    /// Oldest first; the last one is the active segment. Never empty.
    segments: VecDeque<Rc<Segment<S>>>,
    next_offset: Offset,
    written_offset: Offset,
    synced_offset: Offset,
    /// The highest offset an acks=all producer waits to see synced.
    sync_target: Offset,
    staged: VecDeque<Staged<S>>,
    staged_bytes: usize,
    producers: ProducerTable,
    roll_requested: bool,
    /// Set by a retention check that found the partition idle: the writer gives back the
    /// active segment's preallocation once nothing is staged or in flight.
    trim_requested: bool,
    /// What the last fdatasync covered, for the writer to write as the active segment's index
    /// (segment base offset, facts) once it is far enough past the last one.
    recovery_point: Option<(Offset, IndexedSegment)>,
    /// `next_offset` at the last retention check: unchanged means idle since.
    next_offset_at_last_check: Offset,
    /// The highest high watermark the partition layer reported (`note_high_watermark`, and
    /// each retention check): a roll reuses a segment file only if retention could delete it
    /// (see `reuse_oldest`).
    retention_keep_from: Offset,
    stopping: bool,
    writer_done: bool,
    syncer_done: bool,
    failed: Option<String>,
    generation: Rc<Generation>,
    /// Set when a write found no space: appends are refused until the instant passes.
    out_of_space: Option<(Instant, String)>,
    /// A truncation asked for and not yet begun by the writer: what, and who waits.
    truncation: Option<(Cut, oneshot::Sender<Result<Offset, LogError>>)>,
    /// From the request until the writer has done the truncation: appends are refused.
    truncating: bool,
    /// Truncations so far: an fdatasync that began before one covers offsets that may be gone.
    truncations: u64,
    /// Removals of old segments (retention, the offsets log's compaction) taken off the list
    /// whose files are still being deleted: a start over waits for them, or a crash could
    /// leave their files beside the new start.
    removals_in_flight: usize,
    /// Where each leader epoch starts; changes are numbered, and the writer persists them.
    epochs: LeaderEpochs,
    epochs_version: u64,
    epochs_persisted: u64,
    /// The log start where it is past the first segment's base (Kafka's log start offset as
    /// DeleteRecords moves it, KIP-107); changes are numbered, and the writer persists them
    /// (`log_start.rs`) before the segments below it go.
    start_floor: Offset,
    start_floor_version: u64,
    start_floor_persisted: u64,
    /// The latest numbered change the full disk refused to record.
    start_floor_refused: u64,
}

impl<S: Storage> LogState<S> {
    fn active(&self) -> Rc<Segment<S>> {
        // `segments` is never empty: open creates one and deletion keeps the active one.
        self.segments.back().cloned().expect("a partition always has an active segment")
    }

    /// The first segment's base, or the recorded start past it; never past what is synced (a
    /// replica started over inside an entry records a start the entry reaches only once synced).
    fn log_start(&self) -> Offset {
        let first = self.segments.front().map_or(self.next_offset, |s| s.base_offset);
        first.max(self.start_floor).min(self.synced_offset)
    }

    /// Whether the log start is the one recorded on disk: no change of it is being recorded,
    /// and the last was not refused (a full disk; `advance_start` then puts back the one
    /// before).
    fn log_start_recorded(&self) -> bool {
        let version = self.start_floor_version;
        self.start_floor_persisted >= version
            && (version == 0 || self.start_floor_refused != version)
    }

    /// Keeps the recorded log start within a log cut back to `end` (a truncation): the records
    /// above it went, so it cannot stay above them. So does what retention keeps from.
    fn bound_start_floor(&mut self, end: Offset) {
        if self.start_floor > end {
            self.start_floor = end;
            self.start_floor_version += 1;
        }
        self.retention_keep_from = self.retention_keep_from.min(end);
    }

    /// The epoch new entries are stamped with: the latest assigned, else the default.
    fn current_epoch(&self) -> LeaderEpoch {
        self.epochs.latest().map_or(LEADER_EPOCH, |latest| latest.epoch)
    }

    /// Why appends are refused at `now` after a write found no space, while they are.
    fn refused_for_space(&self, now: Instant) -> Option<&String> {
        (self.out_of_space.as_ref()).filter(|(until, _)| now < *until).map(|(_, why)| why)
    }

    /// Why the log takes no change now (an append, a truncation, a new epoch), if it does not.
    fn refuses_changes(&self) -> Result<(), LogError> {
        if let Some(why) = &self.failed {
            return Err(LogError::Storage(why.clone()));
        }
        if self.stopping {
            return Err(LogError::Closed);
        }
        match self.truncating {
            true => Err(LogError::Truncating),
            false => Ok(()),
        }
    }

    /// Cuts the log's end back to `from`: waiters on entries past it get `why`.
    fn cut_generation(&mut self, from: Offset, why: LogError) {
        let next = Rc::<Generation>::default();
        *self.generation.cut.borrow_mut() = Some((from, why));
        *self.generation.next.borrow_mut() = Some(next.clone());
        self.generation = next;
    }

    /// Asserts `log_start <= synced_offset <= written_offset <= next_offset` after `change`, with
    /// every value in the message. Out of order, a watermark would acknowledge records that are
    /// not durable, or serve records that are not written: stopping is the safer failure.
    fn assert_watermarks(&self, change: &str) {
        let (start, synced, written, next) =
            (self.log_start(), self.synced_offset, self.written_offset, self.next_offset);
        assert!(
            start <= synced && synced <= written && written <= next,
            "watermarks out of order after {change}: log_start {start}, synced {synced}, \
             written {written}, next {next}"
        );
    }
}

/// A cut of the log the writer makes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Cut {
    /// The entries holding the offset and after go.
    To(Offset),
    /// Every entry goes; the log starts again, empty, at `at`, its start recorded at
    /// `log_start` (at or past `at`: inside the first entry to come).
    StartOver { at: Offset, log_start: Offset },
}

pub struct PartitionLog<S: Storage = DmaStorage> {
    storage: S,
    pub topic: Rc<str>,
    pub partition: PartitionId,
    dir: PathBuf,
    config: RefCell<TopicConfig>,
    limits: LogLimits,
    state: RefCell<LogState<S>>,
    /// Fired whenever a watermark moves, the log fails, or it starts closing.
    changed: Event,
    /// Fired when the writer has work: staged entries, a roll request, or a stop.
    writer_wake: Event,
    metrics: Rc<Metrics>,
    /// The broker-wide count `staged_bytes` is part of.
    queued: Arc<QueuedBytes>,
    /// Where a refused or failed write is recorded, for the broker's heartbeat.
    storage_health: Arc<StorageHealth>,
    /// The newest entries, for caught-up readers; within the shard's budget.
    tail: Rc<RefCell<TailCache>>,
    /// This partition's chunks in the shard's read cache, and its sequential readers.
    reads: Rc<CachedLog>,
    /// The shard's open sealed-segment files, which this partition's segments join.
    open_files: Rc<OpenFiles<S>>,
}

impl<S: Storage> PartitionLog<S> {
    /// Opens (recovering) or creates the partition in `dir` and starts its writer and syncer.
    pub async fn open(
        topic: Rc<str>,
        partition: PartitionId,
        dir: PathBuf,
        config: TopicConfig,
        limits: LogLimits,
        shared: SharedByShard<S>,
    ) -> io::Result<Rc<Self>> {
        Self::open_starting_at(topic, partition, dir, config, limits, shared, Offset(0)).await
    }

    /// [`Self::open`], where a log created new starts at `start` rather than at 0: the log a
    /// replica begins after everything below `start` reached it another way (Kafka's
    /// `truncateFullyAndStartAt`; a controller voter given a snapshot of the metadata log).
    pub async fn open_starting_at(
        topic: Rc<str>,
        partition: PartitionId,
        dir: PathBuf,
        config: TopicConfig,
        limits: LogLimits,
        shared: SharedByShard<S>,
        start: Offset,
    ) -> io::Result<Rc<Self>> {
        let SharedByShard {
            storage,
            metrics,
            queued,
            storage_health,
            tail_budget,
            read_cache,
            open_files,
        } = shared;
        let names = storage.list_dir(&dir).await?;
        let segments = open_segments(
            &storage,
            &dir,
            &names,
            (&topic, partition, start),
            config.segment_bytes,
            &open_files,
        )
        .await?;
        let next_offset = segments.back().map_or(Offset(0), |s| s.meta.borrow().next_offset);
        let log_start = segments.front().map_or(next_offset, |s| s.base_offset);
        // What the checkpoint still holds past the log's end or before its start was removed
        // with the log; the writer persists the change (Kafka's load does the same).
        // Most partitions never had a leader epoch: the listing spares them the open.
        let mut epochs = match names.iter().any(|name| name == epochs::CHECKPOINT_FILE) {
            true => epochs::load(&storage, &dir).await?,
            false => LeaderEpochs::default(),
        };
        let recorded_start = match names.iter().any(|name| name == log_start::LOG_START_FILE) {
            true => log_start::load(&storage, &dir).await?.unwrap_or(Offset(0)),
            false => Offset(0),
        };
        // Recorded only up to what was synced: past the log's end it can only be a log cut
        // back since (or damage), and the log ends there.
        if recorded_start > next_offset {
            tracing::warn!(%topic, %partition, recorded = %recorded_start, log_end = %next_offset, "the recorded log start is past the log's end: the log starts at its end");
        }
        let start_floor = recorded_start.min(next_offset);
        let log_start = log_start.max(start_floor);
        let reconciled =
            epochs.truncate_from_end(next_offset) | epochs.truncate_from_start(log_start);
        // Everything opened is durable: sealed segments were synced when sealed, and the active
        // one was stopped cleanly or synced by recovery (`Segment::open_active`).
        let synced_offset = next_offset;
        let block_tail = match segments.back() {
            Some(active) => read_block_tail(active).await?,
            None => Vec::new(),
        };
        let log = Rc::new(Self {
            storage,
            topic,
            partition,
            dir,
            config: RefCell::new(config),
            limits,
            state: RefCell::new(LogState {
                segments,
                next_offset,
                written_offset: next_offset,
                synced_offset,
                sync_target: next_offset,
                staged: VecDeque::new(),
                staged_bytes: 0,
                producers: ProducerTable::default(),
                roll_requested: false,
                trim_requested: false,
                recovery_point: None,
                next_offset_at_last_check: next_offset,
                retention_keep_from: Offset(0),
                stopping: false,
                writer_done: false,
                syncer_done: false,
                failed: None,
                generation: Rc::default(),
                out_of_space: None,
                truncation: None,
                truncating: false,
                truncations: 0,
                removals_in_flight: 0,
                epochs,
                epochs_version: u64::from(reconciled),
                epochs_persisted: 0,
                start_floor,
                start_floor_version: u64::from(start_floor != recorded_start),
                start_floor_persisted: 0,
                start_floor_refused: 0,
            }),
            changed: Event::new(),
            writer_wake: Event::new(),
            metrics,
            queued,
            storage_health,
            tail: TailCache::new(limits.tail_cache_bytes, tail_budget),
            reads: Rc::new(read_cache.register()),
            open_files,
        });
        log.state.borrow().assert_watermarks("opening");
        log.rebuild_producers().await?;
        glommio::spawn_local(writer::run(log.clone(), block_tail)).detach();
        glommio::spawn_local(log.clone().run_syncer()).detach();
        Ok(log)
    }

    pub fn config(&self) -> TopicConfig {
        self.config.borrow().clone()
    }

    /// Takes the topic's settings as an administrator changed them. Nothing keeps a copy: a new
    /// `segment.bytes` applies from the next write, new retention limits from the next check.
    pub fn reconfigure(&self, config: &TopicConfig) {
        if *self.config.borrow() != *config {
            self.config.replace(config.clone());
        }
    }

    /// Replays the producer ids of the newest [`PRODUCER_REBUILD_BYTES`] of the log, so a batch
    /// retried across a restart is still recognised. The range reaches back across segments:
    /// a roll just before the restart leaves the active segment (nearly) empty, and a retry of
    /// the batch that filled the previous one must not be stored twice.
    async fn rebuild_producers(&self) -> io::Result<()> {
        let segments: Vec<Rc<Segment<S>>> = self.state.borrow().segments.iter().cloned().collect();
        // Newest first, until the range is covered; then replayed oldest first.
        let mut ranges = Vec::new();
        let mut wanted = PRODUCER_REBUILD_BYTES;
        for segment in segments.iter().rev() {
            let (from, size) = {
                let meta = segment.meta.borrow();
                let start = meta.size.saturating_sub(wanted);
                let from = meta.index.seek_position(FilePosition(start));
                (from.map_or(0, |p| p.position.0), meta.size)
            };
            if size > from {
                ranges.push((segment.clone(), from, size));
            }
            wanted = wanted.saturating_sub(size);
            if wanted == 0 {
                break;
            }
        }
        // Rebuilt producers get a whole expiry period from now: the log does not say when
        // each batch was written, only the timestamps its producer chose.
        let now = self.storage.now_ms();
        for (segment, from, size) in ranges.into_iter().rev() {
            let bytes = segment.read(from, (size - from) as usize).await?;
            let mut st = self.state.borrow_mut();
            // Entries up to `size` were checked when written (and the active segment's again by
            // recovery); a header that does not parse ends this segment's replay.
            for entry in entries(&bytes, Check::Header).map_while(Result::ok) {
                let (meta, header) = (entry.header.meta(), entry.header);
                st.producers.record(&meta, header.base_offset(), header.next_offset(), now);
            }
        }
        Ok(())
    }

    /// Assigns offsets to the entry and queues it for writing; wait for it with
    /// [`Self::wait_written`] or [`Self::wait_synced`]. A batch an idempotent producer already
    /// appended is not appended again: its first offsets are returned.
    pub fn append(&self, pending: PendingEntry) -> Result<Appended, LogError> {
        let mut st = self.state.borrow_mut();
        self.refuses_appends(&st)?;
        let generation = st.generation.clone();
        match st.producers.check(&pending.meta).map_err(LogError::Sequence)? {
            SequenceCheck::Duplicate { base_offset, next_offset, max_timestamp } => {
                let duplicate_of = Some(max_timestamp);
                return Ok(Appended { base_offset, next_offset, duplicate_of, generation });
            }
            SequenceCheck::Append => {}
        }
        let base_offset = st.next_offset;
        let next_offset = base_offset.plus(u64::from(pending.meta.record_count));
        let max_timestamp = pending.meta.max_timestamp;
        st.producers.record(&pending.meta, base_offset, next_offset, self.storage.now_ms());
        let (entry, footprint) = pending.seal(base_offset, st.current_epoch());
        let staged = Staged { base_offset, next_offset, max_timestamp, entry: entry.into() };
        Ok(self.stage(st, staged, footprint, "an append"))
    }

    /// Puts a sealed entry at the log's end: queued for the writer, and in the tail cache if it
    /// came as shared bytes (the cache holds a contiguous run of entries, so one received in
    /// place empties it: `in_place.rs`).
    fn stage(
        &self,
        mut st: RefMut<LogState<S>>,
        staged: Staged<S>,
        footprint: usize,
        change: &str,
    ) -> Appended {
        let (base_offset, next_offset) = (staged.base_offset, staged.next_offset);
        st.next_offset = next_offset;
        st.assert_watermarks(change);
        st.staged_bytes += staged.entry.len();
        self.queued.add(staged.entry.len());
        match &staged.entry {
            EntryData::Shared(bytes) => {
                TailCache::push(&self.tail, base_offset, next_offset, bytes.clone(), footprint)
            }
            EntryData::InPlace { .. } => self.tail.borrow_mut().truncate_from(Offset(0)),
        }
        st.staged.push_back(staged);
        let generation = st.generation.clone();
        drop(st);
        self.writer_wake.notify(1);
        Appended { base_offset, next_offset, duplicate_of: None, generation }
    }

    /// Why an append would be refused now, if it would.
    fn refuses_appends(&self, st: &LogState<S>) -> Result<(), LogError> {
        st.refuses_changes()?;
        match st.refused_for_space(self.storage.now()) {
            Some(why) => Err(LogError::Storage(why.clone())),
            None => Ok(()),
        }
    }

    /// A buffer to receive `len` bytes of a leader's entries into, where the writer expects to
    /// write them (`in_place.rs`): append them with [`Self::append_at`], as slices of
    /// [`ReceiveBuffer::into_run`]. `None` for no bytes, or when the active segment's file
    /// cannot be had (the entries then come as shared bytes).
    pub fn receive_buffer(&self, len: usize) -> Option<ReceiveBuffer<S>> {
        if len == 0 {
            return None;
        }
        let st = self.state.borrow();
        let active = st.active();
        // Everything staged or being written lands in the active segment, unless it rolls
        // first: then the guess is wrong, and the writer copies these entries.
        let position = active.meta.borrow().size + st.staged_bytes as u64;
        let at = Placement { segment: active.base_offset, position };
        let file = active.active_file().ok()?;
        let lead = (position % WRITE_ALIGN_BYTES as u64) as usize;
        let buffer = file.alloc_buffer((lead + len).next_multiple_of(WRITE_ALIGN_BYTES));
        Some(ReceiveBuffer::new(buffer, len, at))
    }

    /// Appends an entry as another replica stored it, at the offsets it carries: a follower's
    /// append. The entry must be whole (its checksum holds) and continue the log where it
    /// ends. Idempotent producers' state follows it without checks: the leader made them.
    pub fn append_at(&self, entry: EntryData<S>) -> Result<Appended, LogError> {
        let header = entry.with_bytes(|bytes| {
            let mut parsed = entries(bytes, Check::Checksum);
            match (parsed.next(), parsed.next()) {
                (Some(Ok(stored)), None) if stored.bytes.len() == bytes.len() => Ok(stored.header),
                (Some(Err(e)), _) => Err(LogError::Corrupt(format!("a follower's entry: {e}"))),
                _ => Err(LogError::Corrupt("a follower's entry is not one whole entry".into())),
            }
        });
        let header = header
            .unwrap_or_else(|| Err(LogError::Corrupt("a follower's entry was written".into())))?;
        let mut st = self.state.borrow_mut();
        self.refuses_appends(&st)?;
        // The base offset first: a checksummed header is still a peer's, and only one that
        // continues the log has a next offset worth computing.
        let base_offset = header.base_offset();
        if base_offset != st.next_offset {
            return Err(LogError::NotNextOffset {
                next_offset: st.next_offset,
                entry_base_offset: base_offset,
            });
        }
        let next_offset = header.next_offset();
        // An entry of an older leader epoch than the log's latest comes from a leader this
        // replica has moved past (it leads now, or follows a newer one): taking it would undo
        // the newer epoch's start.
        let epoch = header.leader_epoch();
        if st.epochs.latest().is_some_and(|latest| epoch < latest.epoch) {
            return Err(LogError::InvalidEpoch { epoch, start_offset: base_offset });
        }
        let meta = header.meta();
        st.producers.record(&meta, base_offset, next_offset, self.storage.now_ms());
        // The leader's epochs come with its entries (Kafka's follower does the same); a new one
        // is persisted before the writer writes anything after it.
        if epoch.0 >= 0 && st.epochs.assign(epoch, base_offset) {
            st.epochs_version += 1;
        }
        let footprint = entry.len();
        let staged = Staged { base_offset, next_offset, max_timestamp: meta.max_timestamp, entry };
        Ok(self.stage(st, staged, footprint, "a follower's append"))
    }

    /// Removes every entry that holds `offset` or comes after it, durably: once this returns,
    /// no crash or power loss brings them back. Returns the new end of the log, the base
    /// offset of the first entry removed (an entry is kept or removed whole, so it may be below
    /// `offset`). What a follower does when its log diverged from the new leader's (Kafka's
    /// truncation by leader epoch, KIP-101). Appends are refused until it is done; waiters on
    /// removed entries get [`LogError::Truncated`]; an offset at or past the end changes nothing.
    pub async fn truncate_to(&self, offset: Offset) -> Result<Offset, LogError> {
        {
            let st = self.state.borrow();
            let log_start = st.log_start();
            if offset < log_start {
                let log_end = st.next_offset;
                return Err(LogError::OffsetOutOfRange { requested: offset, log_start, log_end });
            }
        }
        self.cut(Cut::To(offset)).await
    }

    /// Removes every entry, durably, and starts the log again, empty, at `offset`: what a
    /// follower does when its log ends before its leader's log start (Kafka's
    /// `truncateFullyAndStartAt`), so it can copy the leader's log from there. Leader epochs and
    /// idempotent producers' state go with the entries (they come back with the leader's).
    /// Returns the new log end, `offset`.
    pub async fn start_over_at(&self, offset: Offset) -> Result<Offset, LogError> {
        self.cut(Cut::StartOver { at: offset, log_start: offset }).await
    }

    /// [`Self::start_over_at`] the base `at` of an entry that holds `log_start`, the log start
    /// to keep: the leader's log start falls inside that entry (records deleted below it), and
    /// entries are copied whole. Returns the new log end, `at`.
    pub async fn start_over_within(
        &self,
        at: Offset,
        log_start: Offset,
    ) -> Result<Offset, LogError> {
        self.cut(Cut::StartOver { at, log_start: log_start.max(at) }).await
    }

    /// Hands `cut` to the writer, which does it once what was appended before is written
    /// (appends are refused meanwhile), and waits for it.
    async fn cut(&self, cut: Cut) -> Result<Offset, LogError> {
        let (reply, answer) = oneshot::channel();
        {
            let mut st = self.state.borrow_mut();
            st.refuses_changes()?;
            st.truncating = true;
            st.truncation = Some((cut, reply));
        }
        self.writer_wake.notify(1);
        // The writer ends `truncating` (a caller that stops waiting does not stop the truncation).
        answer.await.unwrap_or(Err(LogError::Closed))
    }

    /// Records that leader `epoch` starts at `start_offset`, the log end (a replica becoming
    /// leader starts its epoch there; a follower takes epochs from the leader's entries in
    /// [`Self::append_at`]), and returns once that is durable. An epoch older than the latest
    /// is refused. The rules are Kafka's (`epochs.rs`).
    pub async fn assign_epoch(
        &self,
        epoch: LeaderEpoch,
        start_offset: Offset,
    ) -> Result<(), LogError> {
        let version = {
            let mut st = self.state.borrow_mut();
            st.refuses_changes()?;
            let older = st.epochs.latest().is_some_and(|latest| epoch < latest.epoch);
            if epoch.0 < 0 || older || start_offset != st.next_offset {
                return Err(LogError::InvalidEpoch { epoch, start_offset });
            }
            // Known already, it may still be on its way to the disk (a follower's entry
            // brought it): wait for that too.
            if st.epochs.assign(epoch, start_offset) {
                st.epochs_version += 1;
            }
            st.epochs_version
        };
        self.writer_wake.notify(1);
        // A disk without room for the checkpoint refuses appends for a while (the writer's
        // `PersistEpochs`): so is this, and the caller asks again (the publisher does).
        self.wait_until(|st| match st.refused_for_space(self.storage.now()) {
            _ if st.epochs_persisted >= version => Ok(true),
            Some(why) => Err(LogError::Storage(why.clone())),
            None => Ok(false),
        })
        .await
    }

    /// The latest leader epoch the log has recorded, if any.
    pub fn latest_epoch(&self) -> Option<LeaderEpoch> {
        self.state.borrow().epochs.latest().map(|e| e.epoch)
    }

    /// The latest leader epoch, if it is on the disk: an epoch a full disk refused to record
    /// (`assign_epoch`) is known but not yet recorded.
    pub fn latest_durable_epoch(&self) -> Option<LeaderEpoch> {
        let st = self.state.borrow();
        let durable = st.epochs_persisted >= st.epochs_version;
        st.epochs.latest().filter(|_| durable).map(|e| e.epoch)
    }

    /// The epoch `offset` was appended in: the latest starting at or before it (`None` before
    /// the first recorded).
    pub fn epoch_at(&self, offset: Offset) -> Option<LeaderEpoch> {
        let st = self.state.borrow();
        st.epochs.entries().iter().rev().find(|e| e.start_offset <= offset).map(|e| e.epoch)
    }

    /// Every leader epoch of the log and where it starts, oldest first.
    pub fn leader_epochs(&self) -> Vec<EpochStart> {
        self.state.borrow().epochs.entries().to_vec()
    }

    /// OffsetsForLeaderEpoch for this log: the largest epoch at or below `epoch`, and the offset
    /// where it ends.
    pub fn epoch_end_offset(&self, epoch: LeaderEpoch) -> Option<(LeaderEpoch, Offset)> {
        let st = self.state.borrow();
        st.epochs.end_offset_for(epoch, st.next_offset)
    }

    /// Has the syncer fdatasync everything below `offset` as it is written, with no producer
    /// waiting for it: a replica's log end counts for `acks=all` only once synced.
    pub fn sync_up_to(&self, offset: Offset) {
        {
            let mut st = self.state.borrow_mut();
            if offset <= st.sync_target {
                return;
            }
            st.sync_target = offset;
        }
        self.changed.notify(usize::MAX);
    }

    /// Fires at the next change of a watermark, a failure, or the start of closing: what a
    /// reader of [`Self::synced_offset`] waits on.
    pub fn listen_changed(&self) -> event_listener::EventListener {
        self.changed.listen()
    }

    /// Runs `check` on the log's leader-epoch cache, log start and log end, read together (a
    /// leader checks a follower's fetch against them).
    pub fn with_epochs<R>(&self, check: impl FnOnce(&LeaderEpochs, Offset, Offset) -> R) -> R {
        let st = self.state.borrow();
        check(&st.epochs, st.log_start(), st.next_offset)
    }

    /// Waits until the appended entry is on the device.
    pub async fn wait_written(&self, appended: &Appended) -> Result<(), LogError> {
        self.wait_for(appended, |st| st.written_offset).await
    }

    /// Waits until the appended entry is fdatasync'ed.
    pub async fn wait_synced(&self, appended: &Appended) -> Result<(), LogError> {
        {
            let mut st = self.state.borrow_mut();
            st.sync_target = st.sync_target.max(appended.next_offset);
        }
        self.changed.notify(usize::MAX);
        self.wait_for(appended, |st| st.synced_offset).await
    }

    /// Whether the appended entry is still in the log: the error a cut of the log's end gave
    /// it (a full disk's discard, a truncation) when it is not.
    pub fn kept(&self, appended: &Appended) -> Result<(), LogError> {
        appended.cut().map_or(Ok(()), Err)
    }

    /// Waits until `watermark` passes the appended entry, unless the entry is discarded first.
    async fn wait_for(
        &self,
        appended: &Appended,
        watermark: impl Fn(&LogState<S>) -> Offset,
    ) -> Result<(), LogError> {
        self.wait_until(|st| {
            // Checked first: the offsets cut may since have been written again.
            if let Some(why) = appended.cut() {
                return Err(why);
            }
            Ok(watermark(st) >= appended.next_offset)
        })
        .await
    }

    /// Waits while more than `staged_bytes_max` is waiting to be written (backpressure).
    pub async fn wait_for_room(&self) -> Result<(), LogError> {
        let max = self.limits.staged_bytes_max;
        self.wait_until(|st| Ok(st.staged_bytes <= max)).await
    }

    /// Waits until the entry holding `offset` is written: the written offset passes it.
    pub async fn wait_written_past(&self, offset: Offset) -> Result<(), LogError> {
        self.wait_until(|st| Ok(st.written_offset > offset)).await
    }

    async fn wait_until(
        &self,
        done: impl Fn(&LogState<S>) -> Result<bool, LogError>,
    ) -> Result<(), LogError> {
        loop {
            let listener = self.changed.listen();
            {
                let st = self.state.borrow();
                if done(&st)? {
                    return Ok(());
                }
                if let Some(why) = &st.failed {
                    return Err(LogError::Storage(why.clone()));
                }
                // The syncer stops last, after everything a waiter could want was written and
                // synced; a waiter still unsatisfied then never will be.
                if st.syncer_done {
                    return Err(LogError::Closed);
                }
            }
            listener.await;
        }
    }

    /// Everything below is on the device: what a reader of the local log may see. (Which of it
    /// clients may see is the partition layer's to say: [`crate::partition`].)
    pub fn written_offset(&self) -> Offset {
        self.state.borrow().written_offset
    }

    pub fn log_start(&self) -> Offset {
        self.state.borrow().log_start()
    }

    /// Everything below is fdatasync'ed: what survives a power loss.
    pub fn synced_offset(&self) -> Offset {
        self.state.borrow().synced_offset
    }

    /// Whether a write or sync error failed the log: it takes nothing more until reopened.
    pub fn has_failed(&self) -> bool {
        self.state.borrow().failed.is_some()
    }

    /// How many truncations have cut this log's end since it opened: a reader that sees the
    /// count change knows the written offset may have gone down.
    pub fn truncations(&self) -> u64 {
        self.state.borrow().truncations
    }

    /// The offset the next entry gets: everything below was appended (the log end offset).
    pub fn log_end(&self) -> Offset {
        self.state.borrow().next_offset
    }

    /// Whole entries holding `offset` and after, below `end` and the written offset, up to
    /// about `max_bytes` (always at least one entry when any is available). `end` must fall on
    /// an entry boundary (the high watermark does). An offset between the log start and the log
    /// end is in range, even where nothing is readable yet.
    pub async fn read(
        &self,
        offset: Offset,
        max_bytes: usize,
        end: Offset,
    ) -> Result<Vec<Bytes>, LogError> {
        let end = {
            let st = self.state.borrow();
            let (start, log_end) = (st.log_start(), st.next_offset);
            if offset < start || offset > log_end {
                return Err(LogError::OffsetOutOfRange {
                    requested: offset,
                    log_start: start,
                    log_end,
                });
            }
            let end = end.min(st.written_offset);
            if offset >= end {
                return Ok(Vec::new());
            }
            if let Some(entries) = self.tail.borrow().read(offset, end, max_bytes) {
                return Ok(entries);
            }
            end
        };
        self.read_chunks(offset, max_bytes, end).await
    }

    fn read_error(&self, segment: &Segment<S>, offset: Offset, error: ReadError) -> LogError {
        match error {
            ReadError::Io(e) if segment::is_deleted_segment(segment, &e) => {
                let st = self.state.borrow();
                LogError::OffsetOutOfRange {
                    requested: offset,
                    log_start: st.log_start(),
                    log_end: st.next_offset,
                }
            }
            ReadError::Io(e) => LogError::Storage(format!("{}: {e}", segment.log_path.display())),
            ReadError::Corrupt { position, why } => {
                let message =
                    format!("{} at position {position}: {why}", segment.log_path.display());
                tracing::error!(topic = %self.topic, partition = %self.partition, "{message}");
                LogError::Corrupt(message)
            }
        }
    }

    /// The offset and timestamp of the first record at or past the log start whose timestamp
    /// is at or after `timestamp`, or `None` (as Kafka's lookup, never below the log start).
    pub async fn offset_for_timestamp(
        &self,
        timestamp: i64,
    ) -> Result<Option<(Offset, i64)>, LogError> {
        let (start, candidates): (Offset, Vec<_>) = {
            let st = self.state.borrow();
            let candidates = (st.segments.iter())
                .filter(|s| {
                    let meta = s.meta.borrow();
                    meta.max_timestamp >= timestamp && meta.next_offset > st.log_start()
                })
                .cloned()
                .collect();
            (st.log_start(), candidates)
        };
        for segment in candidates {
            match find_timestamp(&segment, timestamp, start).await {
                Ok(Some(found)) => return Ok(Some(found)),
                Ok(None) => {}
                // Deleted by retention meanwhile: the answer lies in a later segment.
                Err(ReadError::Io(e)) if segment::is_deleted_segment(&segment, &e) => {}
                Err(e) => return Err(self.read_error(&segment, segment.base_offset, e)),
            }
        }
        Ok(None)
    }

    /// The first record with the log's largest timestamp, and that timestamp (KIP-734):
    /// found as the first record at or after that time, which lies in the first segment
    /// reaching it. `None` for a log without timestamps (or whose largest lies below the log
    /// start, in the segment holding it).
    pub async fn max_timestamp_record(&self) -> Result<Option<(Offset, i64)>, LogError> {
        let largest = {
            let st = self.state.borrow();
            let within =
                st.segments.iter().filter(|s| s.meta.borrow().next_offset > st.log_start());
            within.map(|s| s.meta.borrow().max_timestamp).max()
        };
        match largest {
            Some(timestamp) if timestamp >= 0 => self.offset_for_timestamp(timestamp).await,
            _ => Ok(None),
        }
    }

    /// Asks for everything below `offset` to be synced (within what is written) and waits for
    /// it.
    pub async fn sync_through(&self, offset: Offset) -> Result<(), LogError> {
        self.sync_up_to(offset);
        self.wait_until(|st| Ok(st.synced_offset >= offset.min(st.written_offset))).await
    }

    /// Moves the log start up to `offset`, never past what is synced and never back (Kafka's
    /// DeleteRecords, KIP-107, at a leader; a follower taking its leader's log start): reads
    /// below it are refused at once, and once it is durable the segments wholly below it go,
    /// the newest of them at the next roll (which reuses its file) or retention check.
    /// Returns the log start then.
    pub async fn advance_start(&self, offset: Offset) -> Result<Offset, LogError> {
        let (version, before) = {
            let mut st = self.state.borrow_mut();
            if let Some(why) = &st.failed {
                return Err(LogError::Storage(why.clone()));
            }
            if st.stopping {
                return Err(LogError::Closed);
            }
            let target = offset.min(st.synced_offset);
            if target <= st.log_start() {
                return Ok(st.log_start());
            }
            let before = st.start_floor;
            st.start_floor = target;
            st.start_floor_version += 1;
            st.assert_watermarks("moving the log start");
            (st.start_floor_version, before)
        };
        self.writer_wake.notify(1);
        self.wait_until(|st| Ok(st.start_floor_persisted >= version)).await?;
        {
            let mut st = self.state.borrow_mut();
            if st.start_floor_refused >= version {
                // Undone, unless a later change came meanwhile: the records below were never
                // acknowledged deleted.
                if st.start_floor_version == version {
                    st.start_floor = before;
                    st.start_floor_version += 1;
                }
                let why = "no space left on the disk to record the log start: nothing was deleted";
                return Err(LogError::Storage(why.to_string()));
            }
        }
        // The newest segment wholly below stays, for the next roll to reuse its file
        // (`reuse_oldest`): a follower moves its start this way each time its leader's
        // retention deletes (or reuses) a segment. A retention check deletes it if no roll
        // came first.
        let start = self.log_start();
        let below = |st: &LogState<S>| segments_below(st, start).saturating_sub(1);
        let deleted = self.remove_oldest(below, "deleting segments below the log start").await;
        deleted.map_err(|e| {
            LogError::Storage(format!("deleting segments below the log start: {e}"))
        })?;
        self.changed.notify(usize::MAX);
        Ok(self.log_start())
    }

    /// The idempotent producers this partition remembers (DescribeProducers).
    pub fn producers(&self) -> Vec<ProducerSummary> {
        self.state.borrow().producers.describe()
    }

    /// The bytes its segment files hold (DescribeLogDirs).
    pub fn size_bytes(&self) -> u64 {
        self.state.borrow().segments.iter().map(|s| s.meta.borrow().size).sum()
    }

    /// Sealed segments, not counting the active one.
    pub fn sealed_segments(&self) -> usize {
        self.state.borrow().segments.len() - 1
    }

    /// Deletes the sealed segments that hold only offsets below `offset` (the log start moves
    /// up to the first kept segment). Returns how many it deleted.
    pub async fn delete_segments_below(&self, offset: Offset) -> io::Result<usize> {
        let below = |st: &LogState<S>| segments_below(st, offset);
        let doomed = self.remove_oldest(below, "deleting segments below an offset").await?;
        Ok(doomed.len())
    }

    /// Removes the oldest sealed segments, as many as `count` says of the current state: none
    /// while a truncation runs (it works on positions in the list, and on the segment it cuts).
    async fn remove_oldest(
        &self,
        count: impl FnOnce(&LogState<S>) -> usize,
        change: &str,
    ) -> io::Result<Vec<Rc<Segment<S>>>> {
        let doomed = self.take_oldest(count, change);
        let removed = async {
            for segment in &doomed {
                segment.remove_files(&self.dir).await?;
            }
            Ok::<(), io::Error>(())
        };
        let removed = removed.await;
        self.oldest_removed(!doomed.is_empty(), removed)?;
        Ok(doomed)
    }

    /// Takes the oldest sealed segments off the list, as many as `count` says of the current
    /// state: none while a truncation runs (it works on positions in the list, and on the
    /// segment it cuts). Their files are the caller's to remove, then to report with
    /// [`Self::oldest_removed`].
    fn take_oldest(
        &self,
        count: impl FnOnce(&LogState<S>) -> usize,
        change: &str,
    ) -> Vec<Rc<Segment<S>>> {
        let mut st = self.state.borrow_mut();
        if st.truncating {
            return Vec::new();
        }
        let count = count(&st).min(st.segments.len() - 1);
        let doomed: Vec<_> = st.segments.drain(..count).collect();
        st.assert_watermarks(change);
        if !doomed.is_empty() {
            st.removals_in_flight += 1;
            // Reads of them still under way are not cached either (the epoch moves).
            self.reads.forget_below(st.log_start());
        }
        doomed
    }

    /// Ends a removal [`Self::take_oldest`] began (`any` if it took a segment), once its files
    /// are gone (`removed`).
    fn oldest_removed(&self, any: bool, removed: io::Result<()>) -> io::Result<()> {
        if any {
            self.state.borrow_mut().removals_in_flight -= 1;
            self.writer_wake.notify(1);
        }
        removed?;
        // Only now: the checkpoint's directory sync then makes the removals durable with it,
        // so a power loss cannot bring back segments older than the epochs it keeps (found by
        // the simulation, whose entries carry their epochs).
        let mut st = self.state.borrow_mut();
        let log_start = st.log_start();
        if st.epochs.truncate_from_start(log_start) {
            st.epochs_version += 1;
            self.writer_wake.notify(1);
        }
        drop(st);
        if any {
            self.changed.notify(usize::MAX);
        }
        Ok(())
    }

    /// The partition's high watermark moved to `offset`: retention may delete what lies below.
    pub fn note_high_watermark(&self, offset: Offset) {
        let mut st = self.state.borrow_mut();
        st.retention_keep_from = st.retention_keep_from.max(offset);
    }

    /// The oldest segment's file, renamed to `path` for the segment starting at `base_offset`,
    /// with its length, when retention by size would delete that segment now (or it lies
    /// below the log start), nothing reads it and no other removal is under way; `None`
    /// otherwise. Called by the writer as it rolls.
    /// (Another removal's unlinks may not be durable yet when the new name's directory sync
    /// is: a crash would then bring back an older segment before a gap; found by review.)
    ///
    /// Why: O_DIRECT writes into preallocated blocks make ext4 mark those extents written,
    /// and the fdatasync after them must make that durable too: synchronous 4 KiB metadata
    /// writes beside the data (PERFORMANCE.md counts them, "Reusing segment files"). Writes
    /// over blocks the file has written before change no extent. A partition whose size
    /// retention deletes segments as fast as it rolls them (its steady state), and its
    /// followers, write only over written blocks, and delete no file whose blocks the device
    /// must be told are free.
    ///
    /// Safe because the reused file's old entries all have offsets below `base_offset`: the
    /// recovery scan takes an entry only at exactly the next offset (`scan.rs`), so it stops
    /// at the first old entry, as it stops at the zeros of a new file. Like a retention check,
    /// it keeps every segment not wholly below the high watermark.
    pub(super) async fn reuse_oldest(
        &self,
        base_offset: Offset,
    ) -> io::Result<Option<(S::File, u64)>> {
        let path = segment::log_path(&self.dir, base_offset);
        let now_ms = self.storage.now_ms();
        let reusable = |st: &LogState<S>| {
            let oldest = match st.segments.front() {
                Some(oldest) if st.segments.len() > 1 && st.removals_in_flight == 0 => oldest,
                _ => return 0,
            };
            // Nobody else holds it: a read under way keeps the file, and must find its bytes.
            let unread = Rc::strong_count(oldest) == 1;
            let below = oldest.meta.borrow().next_offset <= base_offset;
            // By size only: deletion by time stays with the retention checks, as in Kafka.
            // Records old when written (a replay, a mirror, a test's) would otherwise go at
            // the next roll, minutes before the next check would take them.
            let by_size = TopicConfig { retention_ms: -1, ..self.config.borrow().clone() };
            let plan = retention_plan(st, &by_size, now_ms);
            let past = past_retention(st, plan.delete_oldest, st.retention_keep_from);
            usize::from(unread && below && past > 0)
        };
        let taken = self.take_oldest(reusable, "reusing the oldest segment's file");
        let Some(oldest) = taken.first() else {
            return Ok(None);
        };
        let reused = async {
            oldest.remove_index(&self.dir).await?;
            oldest.mark_deleted();
            let file = self.storage.open_rw(&oldest.log_path, false).await?;
            let len = file.size().await?;
            file.rename(&path).await?;
            Ok::<_, io::Error>((file, len))
        };
        let reused = match reused.await {
            Ok(reused) => Some(reused),
            Err(e) => {
                tracing::warn!(
                    topic = %self.topic,
                    partition = %self.partition,
                    segment = %oldest.log_path.display(),
                    "reusing a segment past retention failed, deleting it instead: {e}"
                );
                if let Err(e) = oldest.remove_files(&self.dir).await {
                    // Off the log all the same; a restart finds it and retention deletes it.
                    tracing::warn!(
                        topic = %self.topic,
                        partition = %self.partition,
                        segment = %oldest.log_path.display(),
                        "deleting a segment past retention: {e}"
                    );
                }
                None
            }
        };
        self.oldest_removed(true, Ok(()))?;
        if reused.is_some() {
            tracing::debug!(
                topic = %self.topic,
                partition = %self.partition,
                segment = %oldest.log_path.display(),
                reused_as = %path.display(),
                "a segment past retention gave its file to the new segment"
            );
        }
        Ok(reused)
    }

    /// Applies retention and time-based rolling once, and forgets idempotent producers that
    /// have not written for `producer.id.expiration.ms`. Deletes no segment holding an offset at
    /// or above `keep_from` (the high watermark: records not yet visible stay, as in Kafka).
    /// Returns how many segments it deleted.
    pub async fn enforce_retention(&self, now_ms: i64, keep_from: Offset) -> io::Result<usize> {
        let cutoff = now_ms.saturating_sub(self.limits.producer_expiration_ms);
        let expired = self.state.borrow_mut().producers.expire(cutoff);
        if expired > 0 {
            tracing::debug!(topic = %self.topic, partition = %self.partition, expired, "forgot idle producers");
        }
        let plan = retention_plan(&self.state.borrow(), &self.config.borrow(), now_ms);
        if plan.roll_active {
            self.state.borrow_mut().roll_requested = true;
            self.writer_wake.notify(1);
        }
        self.give_back_if_idle();
        {
            let mut st = self.state.borrow_mut();
            st.retention_keep_from = st.retention_keep_from.max(keep_from);
        }
        let past = |st: &LogState<S>| past_retention(st, plan.delete_oldest, keep_from);
        let doomed = self.remove_oldest(past, "deleting segments past retention").await?;
        for segment in &doomed {
            tracing::info!(
                topic = %self.topic,
                partition = %self.partition,
                segment = %segment.log_path.display(),
                "deleted a segment past retention"
            );
        }
        Ok(doomed.len())
    }

    /// Asks the writer to give back the active segment's preallocated space when nothing was
    /// appended since the last check: an idle partition costs its data on disk, and little more.
    fn give_back_if_idle(&self) {
        let mut st = self.state.borrow_mut();
        let idle = st.next_offset == st.next_offset_at_last_check;
        st.next_offset_at_last_check = st.next_offset;
        if idle && st.active().allocated_unused_bytes() > PREALLOCATE_STEP_MIN_BYTES {
            st.trim_requested = true;
            drop(st);
            self.writer_wake.notify(1);
        }
    }

    /// Marks every segment deleted before the partition's directory is removed (its topic was
    /// deleted): reads still in flight fail cleanly rather than reopen a path that may soon
    /// name a re-created topic's file.
    pub fn mark_deleted(&self) {
        self.state.borrow().segments.iter().for_each(|segment| segment.mark_deleted());
    }

    /// Stops taking appends, writes and syncs everything appended, and persists the active
    /// segment's index. Waiters still pending afterwards get [`LogError::Closed`].
    pub async fn close(&self) {
        self.state.borrow_mut().stopping = true;
        self.writer_wake.notify(usize::MAX);
        self.changed.notify(usize::MAX);
        loop {
            let listener = self.changed.listen();
            let finished = {
                let st = self.state.borrow();
                st.writer_done && st.syncer_done
            };
            if finished {
                break;
            }
            listener.await;
        }
        // Chunk reads under way (reads ahead above all, which no reader awaits) end before the
        // log is called closed, so a closed log has none running (the simulation's next seed
        // starts with no task of the last one).
        self.reads.wait_idle().await;
        let (active, failed) = {
            let st = self.state.borrow();
            (st.active(), st.failed.is_some())
        };
        if failed {
            return;
        }
        let synced = async {
            // Cut to its entries first, so the index written below covers the whole file and
            // the next start reads nothing of the active segment: a clean stop leaves no tail
            // to scan.
            active.cut_to_size().await?;
            let started = self.storage.now();
            active.active_file()?.fdatasync().await?;
            self.metrics.record(Hist::Fdatasync, self.storage.now() - started);
            active.persist_index(&self.dir).await
        };
        match synced.await {
            Ok(()) => {
                let mut st = self.state.borrow_mut();
                st.synced_offset = st.written_offset;
                st.assert_watermarks("the final sync");
            }
            Err(e) => {
                tracing::error!(topic = %self.topic, partition = %self.partition, "final sync failed: {e}")
            }
        }
    }

    fn fail(&self, why: String) {
        tracing::error!(topic = %self.topic, partition = %self.partition, "{why}; refusing appends");
        self.storage_health.log_failed();
        let mut st = self.state.borrow_mut();
        st.failed = Some(why);
        // Nothing staged will be written now: it must not hold back every connection.
        st.staged.clear();
        self.queued.remove(std::mem::take(&mut st.staged_bytes));
        drop(st);
        self.changed.notify(usize::MAX);
    }

    async fn run_syncer(self: Rc<Self>) {
        loop {
            let listener = self.changed.listen();
            let job = {
                let st = self.state.borrow();
                let wanted = st.sync_target > st.synced_offset;
                let possible = st.written_offset > st.synced_offset;
                // When closing, sync what acks=all producers still wait for, then stop.
                if st.failed.is_some() || (st.stopping && st.writer_done && !(wanted && possible)) {
                    break;
                }
                (wanted && possible).then(|| {
                    let active = st.active();
                    // Everything written so far is what the fdatasync below covers.
                    let facts = active.written_facts();
                    (active, st.written_offset, facts, st.truncations)
                })
            };
            let Some((segment, covers, facts, truncations)) = job else {
                listener.await;
                continue;
            };
            let started = self.storage.now();
            let synced = match segment.active_file() {
                Ok(file) => file.fdatasync().await,
                Err(e) => Err(e),
            };
            if let Err(e) = synced {
                self.fail(format!("fdatasync failed: {e}"));
                break;
            }
            self.metrics.record(Hist::Fdatasync, self.storage.now() - started);
            let mut st = self.state.borrow_mut();
            if st.truncations != truncations {
                // A truncation while it ran: the offsets it covered may since have been cut
                // and written again after it began. Count nothing; the next round syncs anew.
                continue;
            }
            st.synced_offset = st.synced_offset.max(covers);
            st.assert_watermarks("an fdatasync");
            if facts.covered_bytes >= segment.indexed_bytes() + self.limits.recovery_point_bytes {
                // The writer writes the index: it alone seals and rolls segments, so the two
                // index writes of one segment never race.
                st.recovery_point = Some((segment.base_offset, facts));
                self.writer_wake.notify(1);
            }
            drop(st);
            self.changed.notify(usize::MAX);
        }
        self.state.borrow_mut().syncer_done = true;
        self.changed.notify(usize::MAX);
    }
}

enum ReadError {
    Io(io::Error),
    Corrupt { position: u64, why: String },
}

impl std::fmt::Display for ReadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Io(e) => write!(f, "{e}"),
            Self::Corrupt { position, why } => write!(f, "at position {position}: {why}"),
        }
    }
}

impl From<io::Error> for ReadError {
    fn from(e: io::Error) -> Self {
        Self::Io(e)
    }
}

/// Bytes read past the requested size so the entry holding the offset is in the first read.
const READ_SLACK_BYTES: usize = crate::log::index::INDEX_INTERVAL_BYTES as usize + 64 * 1024;

/// Finds the first record at or after `timestamp` in one segment, reading the log in windows
/// (the first one reaches past the next index point) rather than entry by entry.
async fn find_timestamp<S: Storage>(
    segment: &Segment<S>,
    timestamp: i64,
    from: Offset,
) -> Result<Option<(Offset, i64)>, ReadError> {
    let (mut position, size) = {
        let meta = segment.meta.borrow();
        (meta.index.seek_timestamp(timestamp).map_or(0, |p| p.position.0), meta.size)
    };
    while position < size {
        let window_start = position;
        let window =
            segment.read(position, (size - position).min(READ_SLACK_BYTES as u64) as usize).await?;
        while position < window_start + window.len() as u64 {
            let at = (position - window_start) as usize;
            if window.len() - at < ENTRY_HEADER_BYTES {
                if at == 0 {
                    let why = "entry header cut off at the end of the segment".to_string();
                    return Err(ReadError::Corrupt { position, why });
                }
                break; // the header straddles the window's end: read on from here
            }
            let header = parse_header(&window[at..])
                .map_err(|e| ReadError::Corrupt { position, why: e.to_string() })?;
            let entry_len = header.entry_len();
            if header.max_timestamp.get() >= timestamp && header.next_offset() > from {
                let entry = match at + entry_len <= window.len() {
                    true => window.slice(at..at + entry_len),
                    false => segment.read(position, entry_len).await?,
                };
                let found = first_record_at_or_after(&entry, timestamp, from)
                    .map_err(|why| ReadError::Corrupt { position, why })?;
                if found.is_some() {
                    return Ok(found);
                }
            }
            position += entry_len as u64;
        }
    }
    Ok(None)
}

/// The offset and timestamp of the first record in `entry` at or after `timestamp`, at offset
/// `from` or later (the log start may fall inside the entry): `None` when only records below
/// `from` are that late.
fn first_record_at_or_after(
    entry: &[u8],
    timestamp: i64,
    from: Offset,
) -> Result<Option<(Offset, i64)>, String> {
    let (header, payload) = parse_entry(entry).map_err(|e| e.to_string())?;
    let mut found = None;
    match header.format() {
        Some(crate::record::PayloadFormat::Native) => {
            // Disk reads land at arbitrary alignment; the archive needs 16.
            let aligned = crate::record::archive::aligned(payload);
            let view = crate::record::batch::NativeBatchView::new(&header, &aligned)
                .map_err(|e| e.to_string())?;
            found = view
                .records()
                .find(|r| r.timestamp >= timestamp && r.offset >= from.0)
                .map(|r| (Offset(r.offset), r.timestamp));
        }
        Some(crate::record::PayloadFormat::Kafka) => {
            crate::record::convert::for_each_record(payload, |record| {
                if found.is_none() && record.timestamp >= timestamp && record.offset >= from.0 {
                    found = Some((Offset(record.offset), record.timestamp));
                }
            })?;
        }
        None => {}
    }
    // A format whose records cannot be read one by one: the entry as a whole, when it starts
    // within the log.
    let whole =
        (header.base_offset() >= from).then(|| (header.base_offset(), header.max_timestamp.get()));
    Ok(found.or(whole))
}

/// Opens every segment `names` (the listing of `dir`) holds, creating the first if there is none,
/// and logs what recovery cut.
/// What retention under `config` deletes and rolls now.
fn retention_plan<S: Storage>(
    st: &LogState<S>,
    config: &TopicConfig,
    now_ms: i64,
) -> retention::RetentionPlan {
    let sealed: Vec<SegmentFacts> =
        st.segments.iter().take(st.segments.len() - 1).map(|s| s.facts()).collect();
    retention::plan(&sealed, st.active().facts(), config, now_ms)
}

/// How many sealed segments hold only offsets below `offset`.
fn segments_below<S: Storage>(st: &LogState<S>, offset: Offset) -> usize {
    let sealed = st.segments.iter().take(st.segments.len() - 1);
    sealed.take_while(|s| s.meta.borrow().next_offset <= offset).count()
}

/// How many of the oldest segments retention deletes: up to `by_plan` of those wholly below
/// `keep_from`, and any wholly below the log start once it is recorded (a crash can come
/// between recording a DeleteRecords and deleting them; one being recorded may yet be refused,
/// found by the simulation as a roll reused a segment below it).
fn past_retention<S: Storage>(st: &LogState<S>, by_plan: usize, keep_from: Offset) -> usize {
    let visible = st.segments.iter().take_while(|s| s.meta.borrow().next_offset <= keep_from);
    let start = if st.log_start_recorded() { st.log_start() } else { Offset(0) };
    by_plan.min(visible.count()).max(segments_below(st, start))
}

async fn open_segments<S: Storage>(
    storage: &S,
    dir: &Path,
    names: &[String],
    (topic, partition, start): (&str, PartitionId, Offset),
    segment_bytes: u64,
    open_files: &Rc<OpenFiles<S>>,
) -> io::Result<VecDeque<Rc<Segment<S>>>> {
    let mut bases: Vec<Offset> = names.iter().filter_map(|n| segment::parse_log_name(n)).collect();
    bases.sort_unstable();
    let mut segments = VecDeque::new();
    let Some((&last, sealed)) = bases.split_last() else {
        let first =
            Segment::create(storage, dir, start, PreallocateStep::MIN, segment_bytes, open_files);
        segments.push_back(first.await?);
        return Ok(segments);
    };
    for &base in sealed {
        let (segment, cut) = Segment::open_sealed(storage, dir, base, open_files).await?;
        report_truncation(topic, partition, &segment, cut);
        segments.push_back(segment);
    }
    let (active, cut) = Segment::open_active(storage, dir, last, open_files).await?;
    report_truncation(topic, partition, &active, cut);
    segments.push_back(active);
    Ok(segments)
}

fn report_truncation<S: Storage>(
    topic: &str,
    partition: PartitionId,
    segment: &Segment<S>,
    cut: Option<Truncation>,
) {
    let Some(cut) = cut else { return };
    if let EntryError::UnexpectedOffset { found, .. } = cut.reason {
        if found < segment.base_offset {
            // Not damage: a reused file's old entries (`PartitionLog::reuse_oldest`).
            tracing::info!(
                topic,
                partition = %partition,
                segment = %segment.log_path.display(),
                position = cut.position,
                offset = %cut.offset,
                "recovery found the log's end where the reused segment file's old entries begin"
            );
            return;
        }
    }
    tracing::warn!(
        topic,
        partition = %partition,
        segment = %segment.log_path.display(),
        position = cut.position,
        offset = %cut.offset,
        "recovery truncated the log at the first bad entry: {}",
        cut.reason
    );
}

/// The bytes of the active segment after its last block boundary, which the next write
/// rewrites.
async fn read_block_tail<S: Storage>(active: &Segment<S>) -> io::Result<Vec<u8>> {
    let size = active.meta.borrow().size;
    let tail_len = (size % WRITE_ALIGN_BYTES as u64) as usize;
    if tail_len == 0 {
        return Ok(Vec::new());
    }
    Ok(active.read(size - tail_len as u64, tail_len).await?.to_vec())
}

#[cfg(test)]
pub(crate) mod tests;
