//! A deterministic simulation of a partition log on a simulated disk.
//!
//! [`SimStorage`] implements [`Storage`] in memory with the durability a real disk gives: a
//! completed write is seen by later reads and survives the process dying, but only what an
//! fdatasync covered survives a power loss. There, each write not yet covered is lost, kept or
//! torn (sector by sector, in any order), a size change not yet covered may be lost, and of the
//! name changes (creates, unlinks, renames) made in a directory since its last sync, a power loss
//! keeps only a prefix of seeded length: a journalling file system commits them in order, and
//! whole (a rename is never half done), but may lose the newest. The disk can also fill up and fail an
//! fdatasync, and every operation yields to the executor a seeded number of times first, so the
//! writer, the syncer and the test's own tasks interleave differently from seed to seed. Its
//! clock moves only when the test moves it.
//!
//! Each seeded run drives one log through appends (unwaited, waited until written, waited until
//! synced; a producer's and a follower's, which carry their offsets), new leader epochs, rolls,
//! truncations of the log's end (with retention and a reader racing some of them), deletions of
//! old segments, reads, a full disk, a failed
//! fdatasync, process crashes and power losses, and after every reopen checks what the log
//! promises: every entry acknowledged as written survives a crash, every entry acknowledged as
//! synced survives a power loss, nothing truncated comes back, nothing torn or foreign is
//! served, offsets stay contiguous, and the leader epochs are those the last process had, less
//! what lies outside the reopened log. Everything is a
//! function of the seed: `SPATE_TEST_SEED=<n> cargo test --lib simulation` replays a failure.
//! The watermark assertions inside the log run throughout.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::epochs::{EpochStart, LeaderEpochs};
use super::in_place::EntryData;
use super::partition::{LogError, LogLimits, PartitionLog, SharedByShard};
use super::queued::QueuedBytes;
use super::read_cache::ReadCache;
use super::segment::OpenFiles;
use super::storage::{Storage, StorageFile};
use super::tail_cache::TailBudget;
use crate::config::TopicConfig;
use crate::metrics::Metrics;
use crate::record::entry::{entries, Check, StoredEntry};
use crate::record::{BatchMeta, PendingEntry};
use crate::testing::TestRng;
use crate::types::{LeaderEpoch, Offset, PartitionId};

const SECTOR_BYTES: usize = 512;
/// The idempotent producer's id.
const PRODUCER_ID: i64 = 7;

/// One file's bytes: what reads see now, what survives a power loss, and the changes since the
/// last fdatasync, in order.
#[derive(Default)]
struct Inode {
    data: Vec<u8>,
    durable: Vec<u8>,
    unsynced: Vec<Change>,
}

enum Change {
    Write { position: usize, bytes: Vec<u8> },
    Resize(usize),
}

/// A change to a directory's names, not yet made durable by a sync of the directory.
enum NameChange {
    Link {
        path: PathBuf,
        inode: usize,
    },
    Unlink {
        path: PathBuf,
    },
    /// Atomic: the inode's old names go and the new one comes, or nothing changes.
    Rename {
        to: PathBuf,
        inode: usize,
    },
}

impl NameChange {
    fn apply(&self, names: &mut BTreeMap<PathBuf, usize>) {
        match self {
            Self::Link { path, inode } => {
                names.insert(path.clone(), *inode);
            }
            Self::Unlink { path } => {
                names.remove(path);
            }
            Self::Rename { to, inode } => {
                names.retain(|_, i| i != inode);
                names.insert(to.clone(), *inode);
            }
        }
    }
}

struct Disk {
    inodes: Vec<Inode>,
    names: BTreeMap<PathBuf, usize>,
    /// The names as of each directory's last sync.
    durable_names: BTreeMap<PathBuf, usize>,
    /// Per directory, the name changes since its last sync, oldest first: `names` is
    /// `durable_names` with all of them made, and a power loss makes a prefix of each.
    name_changes: BTreeMap<PathBuf, Vec<NameChange>>,
    /// Bumped by every crash: files opened before it fail every operation, so the dead
    /// process's tasks cannot touch the disk the next one opens.
    generation: u64,
    rng: TestRng,
    full: bool,
    fail_next_fdatasync: bool,
    started: Instant,
    elapsed: Duration,
    /// Counts, for the test's report.
    torn_writes: u64,
    lost_writes: u64,
    lost_name_changes: u64,
    /// Segment files renamed to another segment's name: a roll reusing one.
    reused_segment_files: u64,
}

/// Files, directories and a clock, simulated; cheap to clone (one shared disk). A handle
/// belongs to one process: after a crash, it and the files opened through it fail every
/// operation, and the next process gets a new handle ([`SimStorage::for_next_process`]).
#[derive(Clone)]
pub struct SimStorage {
    disk: Rc<RefCell<Disk>>,
    generation: u64,
}

pub struct SimFile {
    disk: Rc<RefCell<Disk>>,
    inode: usize,
    generation: u64,
}

fn crashed() -> io::Error {
    io::Error::other("simulated crash: this file belongs to a process that is gone")
}

fn no_space() -> io::Error {
    io::Error::new(io::ErrorKind::StorageFull, "simulated full disk")
}

impl SimStorage {
    pub fn new(seed: u64) -> Self {
        let disk = Disk {
            inodes: Vec::new(),
            names: BTreeMap::new(),
            durable_names: BTreeMap::new(),
            name_changes: BTreeMap::new(),
            generation: 0,
            rng: TestRng::new(seed ^ 0x5eed_d15c),
            full: false,
            fail_next_fdatasync: false,
            started: Instant::now(),
            elapsed: Duration::ZERO,
            torn_writes: 0,
            lost_writes: 0,
            lost_name_changes: 0,
            reused_segment_files: 0,
        };
        Self { disk: Rc::new(RefCell::new(disk)), generation: 0 }
    }

    /// A handle for the process started after the last crash.
    pub fn for_next_process(&self) -> Self {
        Self { disk: self.disk.clone(), generation: self.disk.borrow().generation }
    }

    /// Yields as [`SimStorage::interleave`] does, then fails if this handle's process crashed.
    async fn enter(&self) -> io::Result<()> {
        self.interleave().await;
        if self.disk.borrow().generation != self.generation {
            return Err(crashed());
        }
        Ok(())
    }

    /// Yields a seeded number of times: where other tasks get to run in between.
    async fn interleave(&self) {
        let yields = self.disk.borrow_mut().rng.below(4);
        for _ in 0..yields {
            futures_lite::future::yield_now().await;
        }
    }

    pub fn advance(&self, by: Duration) {
        self.disk.borrow_mut().elapsed += by;
    }

    pub fn set_full(&self, full: bool) {
        self.disk.borrow_mut().full = full;
    }

    pub fn fail_next_fdatasync(&self) {
        self.disk.borrow_mut().fail_next_fdatasync = true;
    }

    /// The process dies: what it wrote stays, its open files go dead. A failure armed for its
    /// next fdatasync goes with it.
    pub fn process_crash(&self) {
        let mut disk = self.disk.borrow_mut();
        disk.generation += 1;
        disk.fail_next_fdatasync = false;
    }

    /// The machine loses power: only what was synced is sure to survive; everything since is
    /// lost, kept or torn at random.
    pub fn power_loss(&self) {
        let mut disk = self.disk.borrow_mut();
        let disk = &mut *disk;
        disk.generation += 1;
        for changes in std::mem::take(&mut disk.name_changes).into_values() {
            let kept = disk.rng.below(changes.len() as u64 + 1) as usize;
            disk.lost_name_changes += (changes.len() - kept) as u64;
            changes[..kept].iter().for_each(|change| change.apply(&mut disk.durable_names));
        }
        disk.names = disk.durable_names.clone();
        for inode in &mut disk.inodes {
            let mut data = inode.durable.clone();
            for change in std::mem::take(&mut inode.unsynced) {
                match change {
                    Change::Resize(len) => {
                        if disk.rng.below(2) == 0 {
                            data.resize(len, 0);
                        }
                    }
                    Change::Write { position, bytes } => {
                        let fate = disk.rng.below(3);
                        if fate == 0 {
                            disk.lost_writes += 1;
                            continue;
                        }
                        if data.len() < position + bytes.len() {
                            data.resize(position + bytes.len(), 0);
                        }
                        if fate == 1 {
                            data[position..position + bytes.len()].copy_from_slice(&bytes);
                            continue;
                        }
                        disk.torn_writes += 1;
                        for (i, sector) in bytes.chunks(SECTOR_BYTES).enumerate() {
                            if disk.rng.below(2) == 0 {
                                let at = position + i * SECTOR_BYTES;
                                data[at..at + sector.len()].copy_from_slice(sector);
                            }
                        }
                    }
                }
            }
            inode.durable = data.clone();
            inode.data = data;
        }
    }

    fn file(&self, inode: usize) -> SimFile {
        SimFile { disk: self.disk.clone(), inode, generation: self.generation }
    }

    /// Writes no fdatasync has covered yet, on every file.
    fn unsynced_writes(&self) -> usize {
        let disk = self.disk.borrow();
        let changes = disk.inodes.iter().flat_map(|inode| &inode.unsynced);
        changes.filter(|change| matches!(change, Change::Write { .. })).count()
    }

    fn counts(&self) -> (u64, u64, u64, u64) {
        let disk = self.disk.borrow();
        (disk.torn_writes, disk.lost_writes, disk.lost_name_changes, disk.reused_segment_files)
    }
}

impl Disk {
    /// Makes a name change, and journals it against its directory's next sync.
    fn change_names(&mut self, change: NameChange) {
        change.apply(&mut self.names);
        let path = match &change {
            NameChange::Link { path, .. } | NameChange::Unlink { path } => path,
            NameChange::Rename { to, .. } => to,
        };
        let dir = path.parent().map(Path::to_path_buf).unwrap_or_default();
        self.name_changes.entry(dir).or_default().push(change);
    }
}

fn in_dir(path: &Path, dir: &Path) -> bool {
    path.parent() == Some(dir)
}

impl Storage for SimStorage {
    type File = SimFile;

    async fn open_rw(&self, path: &Path, create: bool) -> io::Result<SimFile> {
        self.enter().await?;
        let existing = self.disk.borrow().names.get(path).copied();
        match existing {
            Some(inode) => Ok(self.file(inode)),
            None if create => {
                let mut disk = self.disk.borrow_mut();
                if disk.full {
                    return Err(no_space());
                }
                disk.inodes.push(Inode::default());
                let inode = disk.inodes.len() - 1;
                disk.change_names(NameChange::Link { path: path.to_path_buf(), inode });
                drop(disk);
                Ok(self.file(inode))
            }
            None => Err(io::Error::new(io::ErrorKind::NotFound, path.display().to_string())),
        }
    }

    async fn open_read(&self, path: &Path) -> io::Result<SimFile> {
        self.open_rw(path, false).await
    }

    async fn list_dir(&self, dir: &Path) -> io::Result<Vec<String>> {
        self.enter().await?;
        let disk = self.disk.borrow();
        let names = disk.names.keys().filter(|p| in_dir(p, dir));
        Ok(names.filter_map(|p| p.file_name()?.to_str().map(str::to_string)).collect())
    }

    async fn remove_file(&self, path: &Path) -> io::Result<()> {
        self.enter().await?;
        let mut disk = self.disk.borrow_mut();
        if !disk.names.contains_key(path) {
            return Err(io::Error::new(io::ErrorKind::NotFound, path.display().to_string()));
        }
        disk.change_names(NameChange::Unlink { path: path.to_path_buf() });
        Ok(())
    }

    async fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        self.enter().await?;
        let mut disk = self.disk.borrow_mut();
        let disk = &mut *disk;
        for change in disk.name_changes.remove(dir).unwrap_or_default() {
            change.apply(&mut disk.durable_names);
        }
        Ok(())
    }

    fn now(&self) -> Instant {
        let disk = self.disk.borrow();
        disk.started + disk.elapsed
    }

    fn now_ms(&self) -> i64 {
        1_700_000_000_000 + self.disk.borrow().elapsed.as_millis() as i64
    }
}

impl SimFile {
    /// Runs `change` on this file's inode unless its process crashed meanwhile.
    async fn with_inode<T>(
        &self,
        change: impl FnOnce(&mut Disk, usize) -> io::Result<T>,
    ) -> io::Result<T> {
        SimStorage { disk: self.disk.clone(), generation: self.generation }.interleave().await;
        let mut disk = self.disk.borrow_mut();
        if disk.generation != self.generation {
            return Err(crashed());
        }
        change(&mut disk, self.inode)
    }
}

impl StorageFile for SimFile {
    type Buffer = Vec<u8>;
    type Read = Vec<u8>;

    fn alloc_buffer(&self, len: usize) -> Vec<u8> {
        // Not zeroed, as glommio's are not: a write that leaves bytes unset puts this on the
        // simulated disk, where recovery and the checks find it.
        vec![0xA5; len]
    }

    fn buffer_bytes(buffer: &mut Vec<u8>) -> &mut [u8] {
        buffer
    }

    fn trim_buffer(buffer: &mut Vec<u8>, len: usize) {
        buffer.truncate(len);
    }

    async fn write_at(&self, buffer: Vec<u8>, position: u64) -> io::Result<usize> {
        self.with_inode(|disk, inode| {
            if disk.full {
                return Err(no_space());
            }
            let (position, len) = (position as usize, buffer.len());
            let file = &mut disk.inodes[inode];
            if file.data.len() < position + len {
                file.data.resize(position + len, 0);
            }
            file.data[position..position + len].copy_from_slice(&buffer);
            file.unsynced.push(Change::Write { position, bytes: buffer });
            Ok(len)
        })
        .await
    }

    async fn read_at(&self, position: u64, len: usize) -> io::Result<Vec<u8>> {
        self.with_inode(|disk, inode| {
            let data = &disk.inodes[inode].data;
            let start = (position as usize).min(data.len());
            Ok(data[start..(start + len).min(data.len())].to_vec())
        })
        .await
    }

    async fn size(&self) -> io::Result<u64> {
        self.with_inode(|disk, inode| Ok(disk.inodes[inode].data.len() as u64)).await
    }

    async fn pre_allocate(&self, len: u64) -> io::Result<()> {
        self.with_inode(|disk, inode| {
            if disk.full {
                return Err(no_space());
            }
            let file = &mut disk.inodes[inode];
            if (len as usize) > file.data.len() {
                file.data.resize(len as usize, 0);
                file.unsynced.push(Change::Resize(len as usize));
            }
            Ok(())
        })
        .await
    }

    async fn truncate(&self, len: u64) -> io::Result<()> {
        self.with_inode(|disk, inode| {
            let file = &mut disk.inodes[inode];
            file.data.resize(len as usize, 0);
            file.unsynced.push(Change::Resize(len as usize));
            Ok(())
        })
        .await
    }

    async fn fdatasync(&self) -> io::Result<()> {
        self.with_inode(|disk, inode| {
            if std::mem::take(&mut disk.fail_next_fdatasync) {
                return Err(io::Error::other("simulated fdatasync failure (EIO)"));
            }
            let file = &mut disk.inodes[inode];
            file.durable = file.data.clone();
            file.unsynced.clear();
            Ok(())
        })
        .await
    }

    async fn rename(&self, to: &Path) -> io::Result<()> {
        self.with_inode(|disk, inode| {
            if to.extension().is_some_and(|extension| extension == "log") {
                disk.reused_segment_files += 1;
            }
            disk.change_names(NameChange::Rename { to: to.to_path_buf(), inode });
            Ok(())
        })
        .await
    }

    async fn close(self: Rc<Self>) -> io::Result<()> {
        Ok(())
    }
}

// ---- the driver ----

/// What the test knows of the log: the payloads it appended at each base offset, and how far
/// the log acknowledged them.
#[derive(Default)]
struct Model {
    /// Base offset → (next offset, payload) of every append not known to be gone. An offset
    /// handed out again after a discard or a crash replaces the old one.
    appended: BTreeMap<Offset, (Offset, Vec<u8>)>,
    /// Every entry below was acknowledged written: it survives a process crash.
    written: Offset,
    /// Every entry below was acknowledged synced: it survives a power loss.
    synced: Offset,
    /// The log start a DeleteRecords was answered with: no restart may bring what lies below it
    /// back into view (unless a truncation cut the log's end below it since).
    deleted_below: Offset,
    /// The highest offset retention was told to keep from: a roll may delete the oldest
    /// segment, reusing its file, whenever it lies wholly below (`PartitionLog::reuse_oldest`).
    retention_kept_from: Offset,
}

impl Model {
    /// Records an entry the log took at `base..next`. Entries recorded before over any of its
    /// offsets were lost with a crash, a discard or a truncation: they go.
    fn record(&mut self, base: Offset, next: Offset, data: Vec<u8>) {
        let overlapped: Vec<Offset> =
            self.appended.range(base.plus(1)..next).map(|(b, _)| *b).collect();
        for stale in overlapped {
            self.appended.remove(&stale);
        }
        self.appended.insert(base, (next, data));
    }
}

struct Run {
    seed: u64,
    rng: TestRng,
    storage: SimStorage,
    dir: PathBuf,
    config: TopicConfig,
    limits: LogLimits,
    open_files: Rc<OpenFiles<SimStorage>>,
    model: Model,
    faults: BTreeMap<&'static str, u64>,
    next_payload: u64,
    /// The idempotent producer's next sequence number, and the last batch it sent (which it
    /// retries, as a producer does when it missed the answer).
    producer_epoch: i16,
    next_sequence: i32,
    last_idempotent: Option<(BatchMeta, Vec<u8>)>,
    /// The newest leader epoch assigned.
    leader_epoch: i32,
    /// The shard's read cache of the running process, and its budget.
    read_cache: Rc<ReadCache>,
    read_cache_bytes: usize,
    /// Where the sequential reader reads next, if it has begun.
    reader_at: Option<Offset>,
    /// Each run of entries received in place, to count those written from their own buffer.
    received_in_place: Vec<EntryData<SimStorage>>,
}

/// What one seed did, for the test's report.
#[derive(Debug, Default)]
pub struct SeedReport {
    pub faults: BTreeMap<&'static str, u64>,
    pub appends: u64,
    pub torn_writes: u64,
    pub lost_writes: u64,
    pub lost_name_changes: u64,
    pub reused_segment_files: u64,
    /// Runs of a follower's entries received in place, and those of them written from their
    /// own buffer (the rest were copied, or never written).
    pub runs_received: u64,
    pub runs_written_in_place: u64,
}

impl Run {
    fn new(seed: u64) -> Self {
        let mut rng = TestRng::new(seed);
        let segment_bytes = [8 * 1024, 32 * 1024, 256 * 1024][rng.below(3) as usize];
        let retention_bytes = [-1, 64 * 1024][rng.below(2) as usize];
        let config = TopicConfig { segment_bytes, retention_bytes, ..TopicConfig::default() };
        let read_cache_bytes = [0, 48 * 1024, 1024 * 1024][rng.below(3) as usize];
        let limits = LogLimits {
            write_bytes_max: [4 * 1024, 64 * 1024][rng.below(2) as usize],
            tail_cache_bytes: [0, 64 * 1024][rng.below(2) as usize],
            read_ahead_bytes: [0, 64 * 1024, 8 * 1024 * 1024][rng.below(3) as usize],
            read_chunk_bytes: [1024, 4 * 1024, 16 * 1024, 512 * 1024][rng.below(4) as usize],
            staged_bytes_max: 1024 * 1024,
            producer_expiration_ms: 60_000,
            recovery_point_bytes: [16 * 1024, 1024 * 1024][rng.below(2) as usize],
        };
        Self {
            seed,
            rng,
            storage: SimStorage::new(seed),
            dir: PathBuf::from("/sim/t-0"),
            config,
            limits,
            open_files: OpenFiles::new(2),
            model: Model::default(),
            faults: BTreeMap::new(),
            next_payload: 0,
            producer_epoch: 0,
            next_sequence: 0,
            last_idempotent: None,
            leader_epoch: 0,
            read_cache: ReadCache::new(0),
            read_cache_bytes,
            reader_at: None,
            received_in_place: Vec::new(),
        }
    }

    fn fault(&mut self, name: &'static str) {
        *self.faults.entry(name).or_default() += 1;
        self.trace(name);
    }

    /// With `SPATE_SIMULATION_TRACE` set, says what the run does, to follow a failing seed.
    fn trace(&self, what: &str) {
        if std::env::var_os("SPATE_SIMULATION_TRACE").is_some() {
            let (written, synced) = (self.model.written, self.model.synced);
            eprintln!(
                "seed {}: {what} (acknowledged written {written}, synced {synced})",
                self.seed
            );
        }
    }

    async fn open(&mut self) -> Rc<PartitionLog<SimStorage>> {
        self.storage = self.storage.for_next_process();
        // What the last process's read cache did, in the report with the faults.
        let stats = self.read_cache.stats();
        *self.faults.entry("chunks read ahead (not a fault)").or_default() += stats.read_ahead;
        *self.faults.entry("chunks served from the read cache (not a fault)").or_default() +=
            stats.hits;
        self.read_cache = ReadCache::new(self.read_cache_bytes);
        let shared = SharedByShard {
            storage: self.storage.clone(),
            metrics: Rc::new(Metrics::default()),
            queued: Arc::new(QueuedBytes::new(usize::MAX)),
            storage_health: Arc::default(),
            tail_budget: TailBudget::new(usize::MAX),
            read_cache: self.read_cache.clone(),
            open_files: self.open_files.clone(),
        };
        let opened = PartitionLog::open(
            Rc::from("t"),
            PartitionId(0),
            self.dir.clone(),
            self.config.clone(),
            self.limits,
            shared,
        )
        .await;
        let log = opened.unwrap_or_else(|e| panic!("seed {}: reopening the log: {e}", self.seed));
        self.trace(&format!("reopened with leader epochs {:?}", log.leader_epochs()));
        self.check(&log).await;
        // What the reopened log does not hold is gone for good: its offsets are handed out again.
        let end = log.written_offset();
        self.model.appended.retain(|base, _| *base < end);
        self.model.synced = self.model.synced.min(end);
        // A new process: its log has been told of no high watermark yet.
        self.model.retention_kept_from = Offset(0);
        log
    }

    /// A seeded offset in `start..=end`.
    fn offset_in(&mut self, start: Offset, end: Offset) -> Offset {
        start.plus(self.rng.below(end.records_since(start) + 1))
    }

    /// A payload that names itself, of a seeded size.
    fn payload(&mut self) -> Vec<u8> {
        self.next_payload += 1;
        let len = match self.rng.below(10) {
            0 => 1,
            1..=7 => 1 + self.rng.below(2000) as usize,
            _ => 1 + self.rng.below(20_000) as usize,
        };
        let tag = self.next_payload;
        (0..len).map(|i| (tag as usize * 31 + i) as u8).collect()
    }

    /// Checks the log against what was acknowledged: everything acknowledged is there, and
    /// everything there is what was appended at its offset.
    async fn check(&mut self, log: &PartitionLog<SimStorage>) {
        let seed = self.seed;
        let (start, end) = (log.log_start(), log.written_offset());
        self.trace(&format!("checking {start}..{end} ({} sealed segments)", log.sealed_segments()));
        assert!(
            end >= self.model.written,
            "seed {seed}: acknowledged-written entries lost: written offset {end}, \
             acknowledged up to {}",
            self.model.written
        );
        let epochs = log.leader_epochs();
        let mut offset = start;
        while offset < end {
            let read = log
                .read(offset, 256 * 1024, Offset(u64::MAX))
                .await
                .unwrap_or_else(|e| panic!("seed {seed}: reading offset {offset}: {e}"));
            assert!(!read.is_empty(), "seed {seed}: nothing read at {offset} below {end}");
            for chunk in read {
                for entry in entries(&chunk, Check::Checksum) {
                    let StoredEntry { header, payload, .. } = entry
                        .unwrap_or_else(|e| panic!("seed {seed}: entry at offset {offset}: {e}"));
                    // The log may start inside an entry (records deleted below it): that entry
                    // comes whole, and starts below.
                    let base = header.base_offset();
                    let holds_start =
                        offset == start && base < offset && header.next_offset() > offset;
                    assert!(
                        base == offset || holds_start,
                        "seed {seed}: offsets not contiguous at {offset}: {base}"
                    );
                    // Stamped with the epoch the log says held its offset (0 before any; the
                    // first epoch starts no earlier than the log).
                    let holder = epochs.iter().rev().find(|e| e.start_offset <= offset);
                    assert_eq!(
                        header.leader_epoch(),
                        holder.map_or(LeaderEpoch(0), |e| e.epoch),
                        "seed {seed}: the entry at {offset} is stamped with another epoch than \
                         the log's {epochs:?}"
                    );
                    let expected = self.model.appended.get(&base);
                    assert!(
                        expected.is_some_and(|(next, data)| {
                            *next == header.next_offset() && data[..] == *payload
                        }),
                        "seed {seed}: the entry at offset {base} is not the one appended there"
                    );
                    offset = header.next_offset();
                }
            }
        }
        // Readers have seen it: from now on it must survive a process crash.
        self.model.written = end;
    }

    /// A consumer reading on from where it stopped (at the log start at first; one time in
    /// sixteen it starts over there, and one in sixteen it jumps to a seeded offset), a few
    /// fetches of a seeded size: sequential fetches are read
    /// ahead of, and the reads ahead run on beside the steps that follow (appends, truncations,
    /// retention, crashes). What it reads must be what the log holds at those offsets now, and
    /// the shard's read cache must stay within its budget.
    async fn read_on(&mut self, log: &PartitionLog<SimStorage>) {
        let seed = self.seed;
        let max_bytes = [1, 4 * 1024, 16 * 1024, 64 * 1024][self.rng.below(4) as usize];
        for _ in 0..1 + self.rng.below(8) {
            let (start, end) = (log.log_start(), log.written_offset());
            let mut at = self.reader_at.filter(|at| (start..=end).contains(at)).unwrap_or(start);
            match self.rng.below(16) {
                0 => at = start, // a new group, catching up from the start
                1 => at = self.offset_in(start, end),
                _ => {}
            }
            // Nothing changes the log during these reads (reads ahead of earlier steps only
            // read it), and the disk fails no read of the live process: no error is expected.
            let read = match log.read(at, max_bytes, Offset(u64::MAX)).await {
                Ok(read) => read,
                Err(e) => panic!("seed {seed}: reading on at {at} ({start}..{end}): {e}"),
            };
            let mut next = at;
            for chunk in read {
                for entry in entries(&chunk, Check::Checksum) {
                    let StoredEntry { header, payload, .. } =
                        entry.unwrap_or_else(|e| panic!("seed {seed}: reading on at {at}: {e}"));
                    let base = header.base_offset();
                    assert!(
                        base <= next && header.next_offset() > next,
                        "seed {seed}: reading on at {at}: {base}..{} does not continue at {next}",
                        header.next_offset()
                    );
                    let expected = self.model.appended.get(&base);
                    assert!(
                        expected.is_some_and(|(next, data)| {
                            *next == header.next_offset() && data[..] == *payload
                        }),
                        "seed {seed}: reading on at {at}, the entry at {base} is not the one the \
                         log holds there"
                    );
                    next = header.next_offset();
                }
            }
            self.reader_at = Some(next);
            let held = self.read_cache.held_bytes();
            assert!(
                held <= self.read_cache_bytes,
                "seed {seed}: the read cache holds {held} bytes, over its {} budget",
                self.read_cache_bytes
            );
        }
    }

    /// Appends a few entries and waits for the last one as the seed says: not at all, until
    /// written, or until synced.
    async fn append(&mut self, log: &PartitionLog<SimStorage>) -> u64 {
        let count = 1 + self.rng.below(4);
        let wait = self.rng.below(3);
        let idempotent = self.rng.below(2) == 0;
        let mut last = None;
        for _ in 0..count {
            let data = self.payload();
            let records = 1 + self.rng.below(3) as u32;
            let mut meta = BatchMeta::new(records, self.storage.now_ms(), self.storage.now_ms());
            if idempotent {
                (meta.producer_id, meta.producer_epoch) = (PRODUCER_ID, self.producer_epoch);
                meta.base_sequence = self.next_sequence;
                self.next_sequence += records as i32;
                self.last_idempotent = Some((meta, data.clone()));
            }
            let Some(entry) = PendingEntry::native(meta, &data) else { continue };
            match log.append(entry) {
                Ok(appended) => {
                    let offsets = (appended.base_offset, appended.next_offset);
                    self.trace(&format!(
                        "appended {}..{} ({} bytes)",
                        offsets.0,
                        offsets.1,
                        data.len()
                    ));
                    self.model.record(offsets.0, offsets.1, data);
                    last = Some((appended, offsets.1));
                }
                Err(LogError::Storage(_) | LogError::Closed) => break,
                Err(LogError::Sequence(_)) if idempotent => {
                    // Batches before it were lost unacknowledged (a crash, a full disk): as a
                    // Kafka producer does, start over with a new epoch.
                    self.trace("the producer starts a new epoch");
                    self.producer_epoch += 1;
                    self.next_sequence = 0;
                    self.last_idempotent = None;
                    break;
                }
                Err(e) => panic!("seed {}: append: {e}", self.seed),
            }
        }
        let Some((appended, next)) = last else { return 0 };
        self.wait(log, &appended, next, wait).await;
        count
    }

    /// Appends a few entries as a follower does, with the offsets they carry, and waits for the
    /// last as the seed says. One time in two they are received in place, as a fetch answer's
    /// entries are (`log::in_place`), else each comes as bytes of its own.
    async fn append_as_follower(&mut self, log: &PartitionLog<SimStorage>) -> u64 {
        let count = 1 + self.rng.below(3);
        let wait = self.rng.below(3);
        let mut sealed = Vec::new();
        let mut next = log.log_end();
        // The leader's epoch: the one this log has, or a newer one (a new leader).
        let mut epoch = log.leader_epochs().last().map_or(0, |e| e.epoch.0);
        for _ in 0..count {
            let data = self.payload();
            let records = 1 + self.rng.below(3) as u32;
            let meta = BatchMeta::new(records, self.storage.now_ms(), self.storage.now_ms());
            let Some(pending) = PendingEntry::native(meta, &data) else { continue };
            epoch += self.rng.below(2) as i32;
            self.leader_epoch = self.leader_epoch.max(epoch);
            let (entry, _) = pending.seal(next, LeaderEpoch(epoch));
            next = next.plus(u64::from(records));
            sealed.push((entry, data));
        }
        let len = sealed.iter().map(|(entry, _)| entry.len()).sum();
        let received = match self.rng.below(2) {
            0 => log.receive_buffer(len),
            _ => None,
        };
        let entries: Vec<(EntryData<SimStorage>, Vec<u8>)> = match received {
            Some(mut buffer) => {
                for (entry, _) in &sealed {
                    buffer.receive(entry);
                }
                let run = buffer.into_run();
                let mut at = 0;
                let all = EntryData::InPlace { run, range: 0..len };
                self.received_in_place.push(all.slice(0..len));
                // One run in four is appended only in part, as when the log refuses an entry
                // of it: the writer copies what was appended.
                let appended = match self.rng.below(4) {
                    0 => self.rng.below(sealed.len() as u64) as usize,
                    _ => sealed.len(),
                };
                (sealed.into_iter().take(appended))
                    .map(|(entry, data)| {
                        at += entry.len();
                        (all.slice(at - entry.len()..at), data)
                    })
                    .collect()
            }
            None => sealed.into_iter().map(|(entry, data)| (entry.into(), data)).collect(),
        };
        let mut last = None;
        for (entry, data) in entries {
            match log.append_at(entry) {
                Ok(appended) => {
                    let offsets = (appended.base_offset, appended.next_offset);
                    self.trace(&format!("appended {}..{} as a follower", offsets.0, offsets.1));
                    self.model.record(offsets.0, offsets.1, data);
                    last = Some((appended, offsets.1));
                }
                Err(LogError::Storage(_) | LogError::Closed) => break,
                Err(e) => panic!("seed {}: a follower's append: {e}", self.seed),
            }
        }
        let Some((appended, next)) = last else { return 0 };
        self.wait(log, &appended, next, wait).await;
        count
    }

    /// Truncates the log at a seeded offset, with a few entries appended just before and not
    /// yet written: the log must end at the entry boundary at or below the offset, waiters on
    /// removed entries must hear so, and nothing removed may come back, even after power loss.
    /// One time in four the process crashes or the power fails at a seeded moment during the
    /// truncation: the log must then be whole, truncated or not. Returns whether it crashed.
    async fn truncate(&mut self, log: &PartitionLog<SimStorage>) -> bool {
        let seed = self.seed;
        let mut unwritten = Vec::new();
        for _ in 0..self.rng.below(3) {
            let data = self.payload();
            let meta = BatchMeta::new(1, self.storage.now_ms(), self.storage.now_ms());
            let Some(entry) = PendingEntry::native(meta, &data) else { continue };
            if let Ok(appended) = log.append(entry) {
                self.model.record(appended.base_offset, appended.next_offset, data);
                unwritten.push(appended);
            }
        }
        let (start, end) = (log.log_start(), log.log_end());
        let offset = self.offset_in(start, end);
        if self.rng.below(4) == 0 {
            // Whichever way it ends, only what lies before the entry holding `offset` is
            // promised; what lies after it must be the entries appended there, if anything.
            let holder = self.model.appended.range(..=offset).next_back();
            let boundary = holder.filter(|(_, (next, _))| *next > offset).map_or(offset, |e| *e.0);
            self.model.written = self.model.written.min(boundary);
            self.model.synced = self.model.synced.min(boundary);
            let (yields, power_loss) = (self.rng.below(40), self.rng.below(2) == 0);
            let storage = self.storage.clone();
            let crash = async move {
                for _ in 0..yields {
                    futures_lite::future::yield_now().await;
                }
                match power_loss {
                    true => storage.power_loss(),
                    false => storage.process_crash(),
                }
            };
            let (truncated, ()) = futures_lite::future::zip(log.truncate_to(offset), crash).await;
            self.fault(if power_loss {
                "power loss in a truncation"
            } else {
                "crash in a truncation"
            });
            self.trace(&format!("truncating to {offset} when it crashed: {truncated:?}"));
            if power_loss {
                self.model.written = self.model.synced;
            }
            // Done or not, the cut may have brought the log's end (and so a log start past it)
            // down to the entry holding the offset.
            let holder = self.model.appended.range(..=offset).next_back();
            let lowest_end =
                holder.filter(|(_, (next, _))| *next > offset).map_or(offset, |h| *h.0);
            self.model.deleted_below = self.model.deleted_below.min(lowest_end);
            return true;
        }
        // Half the time retention deletes old segments and a reader reads while it runs, at
        // times below an entry boundary as the partition layer reads below its high watermark.
        let read_end = match self.rng.below(2) {
            0 => Offset(u64::MAX),
            _ => {
                let later = self.model.appended.range(start..).nth(self.rng.below(8) as usize);
                later.map_or(Offset(u64::MAX), |(base, _)| *base)
            }
        };
        let beside = async {
            if end == start || self.rng.below(2) == 0 {
                return None;
            }
            let (yields, below) = (self.rng.below(20), self.offset_in(start, end));
            let read_at = start.plus(self.rng.below(end.records_since(start)));
            for _ in 0..yields {
                futures_lite::future::yield_now().await;
            }
            let deleted = log.delete_segments_below(below).await;
            Some((deleted, read_at, log.read(read_at, 64 * 1024, read_end).await))
        };
        let (truncated, beside) = futures_lite::future::zip(log.truncate_to(offset), beside).await;
        if let Some((deleted, read_at, read)) = beside {
            self.fault("retention and a read during a truncation");
            if let Err(e) = deleted {
                panic!("seed {seed}: deleting segments during a truncation: {e}");
            }
            // What a read returns is whole and is what was appended there, as the log held it
            // then; a read racing the cut may instead fail (never return other data).
            if let Ok(read) = read {
                for chunk in read {
                    for entry in entries(&chunk, Check::Checksum) {
                        let StoredEntry { header, payload, .. } =
                            entry.unwrap_or_else(|e| panic!("seed {seed}: read at {read_at}: {e}"));
                        let at = header.base_offset();
                        assert!(at < read_end, "seed {seed}: a read below {read_end} served {at}");
                        let expected = self.model.appended.get(&at);
                        assert!(
                            expected.is_some_and(|(_, data)| data[..] == *payload),
                            "seed {seed}: a read during a truncation served a foreign entry at {at}"
                        );
                    }
                }
            }
        }
        let new_end = match truncated {
            Ok(new_end) => new_end,
            Err(e @ (LogError::Storage(_) | LogError::Closed)) => {
                self.trace(&format!("truncating to {offset}: {e}"));
                return false;
            }
            Err(e) => panic!("seed {seed}: truncating to {offset}: {e}"),
        };
        self.trace(&format!("truncated to {offset}: the log ends at {new_end}"));
        assert_eq!(new_end, log.log_end(), "seed {seed}: the truncation's answer is the log end");
        if new_end < end {
            let holder = self.model.appended.get(&new_end);
            assert!(
                new_end <= offset && holder.is_some_and(|(next, _)| *next > offset),
                "seed {seed}: truncating to {offset} ended the log at {new_end}, not at the \
                 entry holding {offset}"
            );
        }
        self.model.appended.retain(|base, _| *base < new_end);
        self.model.written = self.model.written.min(new_end);
        self.model.synced = self.model.synced.min(new_end);
        self.model.deleted_below = self.model.deleted_below.min(new_end);
        self.model.retention_kept_from = self.model.retention_kept_from.min(new_end);
        for appended in unwritten {
            let outcome = log.wait_written(&appended).await;
            match outcome {
                Ok(()) => assert!(
                    appended.next_offset <= new_end,
                    "seed {seed}: {}..{} acknowledged after a truncation to {new_end}",
                    appended.base_offset,
                    appended.next_offset
                ),
                Err(LogError::Truncated { .. }) => assert!(
                    appended.next_offset > new_end,
                    "seed {seed}: {}..{} reported truncated by a truncation to {new_end}",
                    appended.base_offset,
                    appended.next_offset
                ),
                Err(e) => panic!("seed {seed}: waiting across a truncation: {e}"),
            }
        }
        false
    }

    /// Sends the idempotent producer's last batch again and waits until it is synced: as a
    /// duplicate it must be answered with its first offsets, and only once they are durable.
    async fn retry(&mut self, log: &PartitionLog<SimStorage>) {
        let Some((meta, data)) = self.last_idempotent.clone() else { return };
        let Some(entry) = PendingEntry::native(meta, &data) else { return };
        match log.append(entry) {
            Ok(appended) => {
                let (base, next) = (appended.base_offset, appended.next_offset);
                self.trace(&format!("retried into {base}..{next}"));
                self.model.record(base, next, data);
                self.wait(log, &appended, next, 2).await;
            }
            // Lost with batches before it (the producer would start over), or refused.
            Err(LogError::Sequence(_) | LogError::Storage(_) | LogError::Closed) => {}
            Err(e) => panic!("seed {}: retry: {e}", self.seed),
        }
    }

    /// Waits for `appended` as `wait` says (0: not at all, 1: written, 2: synced) and records
    /// what the log acknowledged.
    async fn wait(
        &mut self,
        log: &PartitionLog<SimStorage>,
        appended: &super::partition::Appended,
        next: Offset,
        wait: u64,
    ) {
        match wait {
            1 if log.wait_written(appended).await.is_ok() => {
                self.model.written = self.model.written.max(next);
            }
            2 if log.wait_synced(appended).await.is_ok() => {
                self.model.written = self.model.written.max(next);
                self.model.synced = self.model.synced.max(next);
            }
            _ => {}
        }
    }

    /// Opens the log again after a crash. The dead process's tasks are wound down first (every
    /// operation of theirs fails, so nothing they do reaches the disk): left waiting, each
    /// crash would keep a whole log's memory alive until the run ends.
    async fn restart(
        &mut self,
        dead: Rc<PartitionLog<SimStorage>>,
    ) -> Rc<PartitionLog<SimStorage>> {
        let epochs = dead.leader_epochs();
        dead.close().await;
        let log = self.open().await;
        self.check_epochs(&log, &epochs);
        self.check_log_start(&log);
        log
    }

    /// Starts a new leader epoch where the log ends, as a replica that becomes leader does; it
    /// must be durable once assigned.
    async fn new_leader_epoch(&mut self, log: &PartitionLog<SimStorage>) {
        self.leader_epoch += 1 + self.rng.below(2) as i32;
        let (epoch, start_offset) = (LeaderEpoch(self.leader_epoch), log.log_end());
        // One time in five the disk is full as the checkpoint is written (a broker fenced for
        // its full disk follows a new leader, say).
        let full = self.rng.below(5) == 0;
        self.storage.set_full(full);
        let assigned = log.assign_epoch(epoch, start_offset).await;
        self.storage.set_full(false);
        match assigned {
            // Refused as a write is: the log carries on, and once appends are taken again the
            // same epoch is recorded where the log now ends (the publisher asks again).
            Err(LogError::Storage(why)) if full && !log.has_failed() => {
                self.fault("leader epoch refused by a full disk");
                self.trace(&format!("leader epoch {epoch} refused: {why}"));
                self.storage.advance(Duration::from_secs(2));
                let start_offset = log.log_end();
                match log.assign_epoch(epoch, start_offset).await {
                    Ok(()) => {
                        let latest = log.leader_epochs().last().copied();
                        let expected = Some(EpochStart { epoch, start_offset });
                        assert_eq!(latest, expected, "seed {}: asked again", self.seed);
                    }
                    Err(e) => panic!("seed {}: leader epoch {epoch} asked again: {e}", self.seed),
                }
            }
            Ok(()) => {
                self.trace(&format!("leader epoch {epoch} starts at {start_offset}"));
                // A write that found the disk full while the epoch was persisted discards what
                // was not written: those offsets are handed out again in this epoch, which then
                // starts where they did (`discard_unwritten`; seed 609 of the long form).
                let start_offset = start_offset.min(log.log_end());
                let latest = log.leader_epochs().last().copied();
                assert_eq!(latest, Some(EpochStart { epoch, start_offset }), "seed {}", self.seed);
            }
            Err(LogError::Storage(_) | LogError::Closed) => {}
            Err(e) => panic!("seed {}: assigning leader epoch {epoch}: {e}", self.seed),
        }
    }

    /// After a restart, what a DeleteRecords was answered for holds: the log starts at or past
    /// it (or at the log's end, where a truncation cut the log below it).
    fn check_log_start(&self, log: &PartitionLog<SimStorage>) {
        let (start, end) = (log.log_start(), log.log_end());
        let promised = self.model.deleted_below.min(end);
        assert!(
            start >= promised,
            "seed {}: after a restart the log starts at {start}, below {promised} where records \
             were deleted (log end {end})",
            self.seed
        );
    }

    /// After a restart, the leader epochs are those the last process had, less what lies past
    /// the reopened log's end. Cuts at the log's start are written lazily, and a power loss
    /// that brings back old segments can take the last one: both sides are compared from where
    /// the later of them (or the log) begins.
    fn check_epochs(&self, log: &PartitionLog<SimStorage>, before: &[EpochStart]) {
        let mut expected = LeaderEpochs::from_entries(before);
        let mut found = LeaderEpochs::from_entries(&log.leader_epochs());
        let first = |epochs: &LeaderEpochs| epochs.entries().first().map(|e| e.start_offset);
        let from = first(&expected).max(first(&found)).unwrap_or_default().max(log.log_start());
        for epochs in [&mut expected, &mut found] {
            epochs.truncate_from_start(from);
            epochs.truncate_from_end(log.log_end());
        }
        assert_eq!(
            found, expected,
            "seed {}: leader epochs after a restart, the last process had {before:?}",
            self.seed
        );
    }

    async fn run(mut self, steps: u64) -> SeedReport {
        let mut report = SeedReport::default();
        let mut log = self.open().await;
        for _ in 0..steps {
            self.storage.advance(Duration::from_millis(self.rng.below(50)));
            match self.rng.below(100) {
                0..=41 => report.appends += self.append(&log).await,
                42..=44 => {
                    self.fault("new leader epoch");
                    self.new_leader_epoch(&log).await;
                }
                45..=49 => report.appends += self.append_as_follower(&log).await,
                50..=54 => {
                    self.fault("truncation");
                    if self.truncate(&log).await {
                        log = self.restart(log).await;
                    }
                }
                55..=59 => {
                    self.fault("producer retry");
                    self.retry(&log).await;
                }
                60..=64 => self.check(&log).await,
                65..=69 => self.read_on(&log).await,
                70..=71 => {
                    // Retention by size; run twice with nothing appended between, it also
                    // finds the partition idle and gives back its preallocated space.
                    // Nothing at or past `keep_from` goes (the partition layer passes its high
                    // watermark).
                    let (start, end) = (log.log_start(), log.written_offset());
                    let keep_from = self.offset_in(start, end);
                    self.trace(&format!("retention, keeping from {keep_from}"));
                    if let Err(e) = log.enforce_retention(self.storage.now_ms(), keep_from).await {
                        panic!("seed {}: retention: {e}", self.seed);
                    }
                    let kept_from = log.log_start();
                    let earlier = self.model.retention_kept_from;
                    assert!(
                        kept_from <= keep_from.max(start).max(earlier),
                        "seed {}: retention moved the log start from {start} to {kept_from}, past \
                         {keep_from} (and {earlier}, kept from before)",
                        self.seed
                    );
                    self.model.retention_kept_from = earlier.max(keep_from);
                }
                72 | 73 if self.rng.below(2) == 0 => {
                    // DeleteRecords: the log start moves inside a segment, within what is synced;
                    // one time in three on a full disk, which may refuse to record it.
                    self.fault("records deleted");
                    let (start, synced) = (log.log_start(), log.synced_offset());
                    let below = self.offset_in(start, log.written_offset());
                    let full = self.rng.below(3) == 0;
                    self.storage.set_full(full);
                    let moved = log.advance_start(below).await;
                    self.storage.set_full(false);
                    match moved {
                        Ok(moved) => {
                            let expected = start.max(below.min(synced));
                            assert!(
                                moved >= expected && moved <= below.max(start),
                                "seed {}: deleting below {below} (log start {start}, synced \
                                 {synced}) moved the log start to {moved}",
                                self.seed
                            );
                            self.model.deleted_below = self.model.deleted_below.max(moved);
                            self.trace(&format!("records deleted below {moved}"));
                        }
                        // Nothing was recorded: nothing changed (the partition itself fails
                        // only if other writes on the full disk fail it).
                        Err(LogError::Storage(why)) if why.contains("no space left") => {
                            self.fault("records not deleted: a full disk");
                            // A roll meanwhile may have moved it as retention would.
                            let now = log.log_start();
                            let by_roll = now <= self.model.retention_kept_from;
                            assert!(
                                full && (now == start || by_roll),
                                "seed {}: a refused deletion below {below} moved the log start \
                                 from {start} to {now} (retention kept from {})",
                                self.seed,
                                self.model.retention_kept_from
                            );
                        }
                        Err(LogError::Storage(_) | LogError::Closed) => {}
                        Err(e) => panic!("seed {}: deleting records below {below}: {e}", self.seed),
                    }
                }
                72..=74 => {
                    // Old data goes, as compaction deletes it.
                    let end = log.written_offset();
                    let below = self.offset_in(log.log_start(), end);
                    if let Err(e) = log.delete_segments_below(below).await {
                        panic!("seed {}: deleting segments below {below}: {e}", self.seed);
                    }
                    self.trace(&format!("deleted below {below}: log start {}", log.log_start()));
                    // The model keeps what was deleted: offsets below the log start are never
                    // handed out again, and a power loss may bring a deleted segment back
                    // (the directory was not synced after the unlink), as on a real disk.
                }
                75..=79 => {
                    self.fault("full disk");
                    self.storage.set_full(true);
                    report.appends += self.append(&log).await;
                    self.storage.set_full(false);
                    // Past the back-off, appends are taken again.
                    self.storage.advance(Duration::from_secs(2));
                }
                80..=83 => {
                    // A failed fdatasync fails the partition for good: only a restart helps.
                    self.fault("failed fdatasync");
                    self.storage.fail_next_fdatasync();
                    report.appends += self.append(&log).await;
                    self.storage.process_crash();
                    log = self.restart(log).await;
                }
                84..=89 => {
                    self.fault("clean restart");
                    let (epochs, failed) = (log.leader_epochs(), log.has_failed());
                    log.close().await;
                    // Everything was written and synced by the close, unless the log had failed.
                    if !failed {
                        self.model.synced = self.model.written.max(self.model.synced);
                    }
                    log = self.open().await;
                    self.check_epochs(&log, &epochs);
                    self.check_log_start(&log);
                    let end = log.written_offset();
                    self.model.synced = self.model.synced.max(end);
                }
                90..=94 => {
                    self.fault("process crash");
                    self.storage.process_crash();
                    log = self.restart(log).await;
                }
                _ => {
                    self.fault("power loss");
                    self.storage.power_loss();
                    // Only what was acknowledged synced is promised now.
                    self.model.written = self.model.synced;
                    log = self.restart(log).await;
                }
            }
            if log.has_failed() {
                // A failed partition takes nothing until the broker restarts it (a failed
                // checkpoint write in a full disk, say): as after a crash.
                self.fault("restart of a failed log");
                self.storage.process_crash();
                log = self.restart(log).await;
            }
        }
        let (epochs, failed) = (log.leader_epochs(), log.has_failed());
        log.close().await;
        if !failed {
            self.model.synced = self.model.written;
        }
        self.storage.power_loss();
        self.model.written = self.model.synced;
        let log = self.open().await;
        self.check_epochs(&log, &epochs);
        self.check_log_start(&log);
        log.close().await;
        (
            report.torn_writes,
            report.lost_writes,
            report.lost_name_changes,
            report.reused_segment_files,
        ) = self.storage.counts();
        report.faults = self.faults;
        report.runs_received = self.received_in_place.len() as u64;
        // The writer takes a run's buffer only to write the run from it.
        report.runs_written_in_place =
            self.received_in_place.iter().filter(|run| run.with_bytes(|_| ()).is_none()).count()
                as u64;
        report
    }
}

/// CI runs a few hundred seeds; `SPATE_SIMULATION_SEEDS=20000` is the long form. One executor
/// runs them all, one seed after another: glommio keeps a few descriptors of every executor it
/// made until the process ends, and an executor per seed ran out of them near 16,000 seeds.
/// Each seed starts with no task of the last one left (every log is closed and its writer and
/// syncer have ended), so `SPATE_TEST_SEED` replays a seed as it ran among the others.
#[test]
fn the_log_keeps_its_promises_through_crashes_power_loss_and_a_full_disk() {
    let count =
        std::env::var("SPATE_SIMULATION_SEEDS").ok().and_then(|s| s.parse().ok()).unwrap_or(300);
    let executor = glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound);
    executor.make().expect("an executor").run(async move {
        let mut totals: BTreeMap<&'static str, u64> = BTreeMap::new();
        let (mut appends, mut torn, mut lost, mut lost_names, mut reused) = (0, 0, 0, 0, 0);
        let (mut runs_received, mut runs_in_place) = (0, 0);
        for seed in crate::testing::seeds(count) {
            let report = Run::new(seed).run(150).await;
            for (fault, n) in report.faults {
                *totals.entry(fault).or_default() += n;
            }
            appends += report.appends;
            torn += report.torn_writes;
            lost += report.lost_writes;
            lost_names += report.lost_name_changes;
            reused += report.reused_segment_files;
            runs_received += report.runs_received;
            runs_in_place += report.runs_written_in_place;
        }
        println!(
            "simulation: {count} seeds, {appends} entries appended, faults {totals:?}, \
             {torn} writes torn, {lost} writes and {lost_names} name changes lost by power losses, \
             {reused} segment files reused by rolls, {runs_in_place} of {runs_received} runs \
             received in place written from their own buffer"
        );
        assert!(appends > 0 && totals.len() >= 5, "every kind of fault ran: {totals:?}");
        let refused = totals.get("leader epoch refused by a full disk");
        assert!(refused.is_some(), "no leader epoch met a full disk: {totals:?}");
        assert!(reused > 0, "no roll reused a segment's file");
        assert!(runs_in_place > 0, "no run was written from its own buffer: {runs_received}");
        assert!(runs_in_place < runs_received, "every run was written from its own buffer");
    });
}

/// The bug the simulation found (seed 8 of the first run): entries recovery found past the
/// active segment's index counted as synced at once, so an idempotent producer's retry of one
/// of them, answered as a duplicate, was acknowledged as durable with no fdatasync behind it.
/// Now a start that was not clean syncs what it recovered before the log opens.
#[test]
fn a_retry_after_a_crash_is_acknowledged_as_durable_only_once_synced() {
    let mut run = Run::new(1);
    run.limits.recovery_point_bytes = 1024 * 1024;
    glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound).make().expect("executor").run(
        async move {
            let log = run.open().await;
            let mut meta = BatchMeta::new(1, 1, 1);
            (meta.producer_id, meta.producer_epoch, meta.base_sequence) = (PRODUCER_ID, 0, 0);
            let entry = || PendingEntry::native(meta, b"retried").expect("entry");
            let appended = log.append(entry()).expect("append");
            let payload = (appended.next_offset, b"retried".to_vec());
            run.model.record(appended.base_offset, payload.0, payload.1);
            log.wait_written(&appended).await.expect("written");
            assert!(run.storage.unsynced_writes() > 0, "written, not synced");
            run.storage.process_crash();
            let log = run.restart(log).await;
            let retried = log.append(entry()).expect("the retry");
            assert_eq!(retried.base_offset, appended.base_offset, "answered as a duplicate");
            log.wait_synced(&retried).await.expect("synced");
            assert_eq!(run.storage.unsynced_writes(), 0, "acknowledged synced: nothing unsynced");
        },
    );
}

/// The bug the long form found (seed 955 of 5,000): a process died between creating a segment
/// and syncing its directory; the next start took the segment as its active one and appended to
/// it, fdatasync'ing the file but never the directory, so a power loss lost the file's name and
/// every acknowledged record in it. Now a start that was not clean syncs the directory.
#[test]
fn a_segment_created_just_before_a_crash_survives_a_later_power_loss() {
    let mut run = Run::new(2);
    glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound).make().expect("executor").run(
        async move {
            let log = run.open().await;
            let first = log.append(run_entry(&mut run, 0)).expect("append");
            log.wait_synced(&first).await.expect("synced");
            // As a roll does before its directory sync: the next segment's file exists.
            let next = super::segment::log_path(&run.dir, first.next_offset);
            run.storage.open_rw(&next, true).await.expect("the next segment");
            run.storage.process_crash();
            let log = run.restart(log).await;
            let second = log.append(run_entry(&mut run, 1)).expect("append");
            log.wait_synced(&second).await.expect("synced");
            run.model.written = second.next_offset;
            run.model.synced = second.next_offset;
            run.storage.power_loss();
            let log = run.restart(log).await;
            assert_eq!(log.written_offset(), second.next_offset, "acknowledged as durable");
        },
    );
}

/// An entry for the hand-written tests, recorded in the model.
fn run_entry(run: &mut Run, tag: u8) -> PendingEntry {
    let data = vec![tag; 100];
    let entry = PendingEntry::native(BatchMeta::new(1, 1, 1), &data).expect("entry");
    let base = run.model.appended.last_key_value().map_or(Offset(0), |(_, (next, _))| *next);
    run.model.record(base, base.plus(1), data);
    entry
}
