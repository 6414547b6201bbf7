//! One segment file of a partition: creating, recovering, reading and sealing it.
//!
//! A segment is `<base_offset>.log` (20 digits, as Kafka names them) beside its
//! `<base_offset>.index`. The active segment is preallocated a step at a time ahead of the
//! writer, so an append almost never grows the file's metadata; the unwritten end reads as zeros,
//! which is how recovery finds where the log ends. A roll may instead reuse the file of a
//! segment retention deletes ([`Segment::reuse`]): its end then holds that segment's old
//! entries, whose offsets are below the new base, and recovery stops at the first of them as it
//! would at zeros. Such a segment holds the old file's length until it fills, is sealed, or is
//! trimmed as idle. The step follows the partition's own write
//! rate (see [`PreallocateStep`]): a new or idle partition holds at most
//! [`PREALLOCATE_STEP_MIN_BYTES`] past its data, a hot one gets steps of up to
//! [`PREALLOCATE_STEP_MAX_BYTES`], and what an idle or sealed segment holds past its data is given
//! back ([`Segment::trim`], [`Segment::seal`]). So the disk a partition costs follows its data,
//! not the partition count. A sealed segment is fdatasync'ed, truncated to its real length and
//! indexed.
//!
//! Only the partition's writer task changes [`SegmentMeta`]; readers borrow it briefly and never
//! across an `.await`.

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};
use std::rc::{Rc, Weak};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};

use crate::config::WRITE_ALIGN_BYTES;
use crate::log::index::{self, IndexedSegment, SegmentIndex};
use crate::log::retention::SegmentFacts;
use crate::log::scan::{scan, ScanState, ScanStop};
use crate::log::storage::{DmaStorage, Storage, StorageFile};
use crate::record::EntryError;
use crate::types::Offset;

/// The largest single read issued to the device. glommio 0.9 can hang on reads larger than the
/// device's `max_sectors_kb` (upstream PR #635); 512 KiB is below every common setting.
pub const READ_BYTES_MAX: usize = 512 * 1024;
/// The first preallocation step of a segment, and the step of a partition written to slowly:
/// what a new or idle partition costs on disk past its data. Four blocks keep it well under the
/// 64 KiB an idle partition may cost in all (with its directory and index).
pub const PREALLOCATE_STEP_MIN_BYTES: u64 = 16 * 1024;
/// The step of a partition written to fast: one metadata update per 64 MiB, where the step stops
/// mattering to write throughput (measured when the step was fixed at this size).
pub const PREALLOCATE_STEP_MAX_BYTES: u64 = 64 * 1024 * 1024;
/// What a new partition takes on disk before its first record: its first segment's first step,
/// its directory's block and its index's.
pub const PARTITION_DISK_BYTES_AT_FIRST: u64 =
    PREALLOCATE_STEP_MIN_BYTES + 2 * WRITE_ALIGN_BYTES as u64;
/// A step used up faster than this doubles the next one...
const PREALLOCATE_STEP_GROW_WITHIN: Duration = Duration::from_secs(1);
/// ...and one that lasted longer than this halves it.
const PREALLOCATE_STEP_SHRINK_AFTER: Duration = Duration::from_secs(10);
const _: () = assert!(PREALLOCATE_STEP_MIN_BYTES.is_multiple_of(WRITE_ALIGN_BYTES as u64));
const _: () = assert!(PREALLOCATE_STEP_MAX_BYTES.is_power_of_two());
const _: () = assert!(PREALLOCATE_STEP_MIN_BYTES.is_power_of_two());
/// Reads of one range in flight at once.
const READS_INFLIGHT_MAX: usize = 4;
/// Recovery reads segments in chunks of this size.
const SCAN_CHUNK_BYTES: usize = READ_BYTES_MAX;

/// What the writer has put in the segment so far.
#[derive(Debug)]
pub struct SegmentMeta {
    /// Bytes of whole entries, from the start of the file.
    pub size: u64,
    pub next_offset: Offset,
    pub max_timestamp: i64,
    pub index: SegmentIndex,
    pub first_write_ms: Option<i64>,
}

pub struct Segment<S: Storage = DmaStorage> {
    storage: S,
    pub base_offset: Offset,
    pub log_path: PathBuf,
    pub meta: RefCell<SegmentMeta>,
    /// Open (read-write) while the segment is active. A sealed segment's is opened read-only by
    /// the read that needs it and closed again by the shard's [`OpenFiles`] when it has not been
    /// read for longest; readers keep their own handle, so a close never cuts a read short.
    file: RefCell<Option<Rc<S::File>>>,
    sealed: Cell<bool>,
    /// Set before its files are removed (retention, a deleted topic): a closed file is then
    /// never reopened, since the path may already name nothing, or a newer topic's file.
    deleted: Cell<bool>,
    /// The segment's place in `open_files`' order of use, while a sealed segment's file is open.
    last_use: Cell<Option<u64>>,
    open_files: Rc<OpenFiles<S>>,
    me: Weak<Segment<S>>,
    /// Bytes of the file allocated so far (its size while it is active).
    allocated_bytes: Cell<u64>,
    step: Cell<PreallocateStep>,
    /// What the index file on disk covers: recovery scans only past it.
    indexed_bytes: Cell<u64>,
}

/// The sealed segment files one shard keeps open, at most `files_max`: past it the file read
/// longest ago is closed (and reopened by its next read). Active segments' files stay open and
/// are not counted: one per partition, which `max.broker.partitions` bounds. So the files a
/// broker holds open are its partitions plus this bound, whatever the segment count.
pub struct OpenFiles<S: Storage = DmaStorage> {
    files_max: usize,
    next_use: Cell<u64>,
    /// Sealed segments whose file is open, by last use.
    by_use: RefCell<BTreeMap<u64, Weak<Segment<S>>>>,
}

impl<S: Storage> OpenFiles<S> {
    pub fn new(files_max: usize) -> Rc<Self> {
        assert!(files_max > 0, "a shard must be able to keep one sealed segment file open");
        Rc::new(Self { files_max, next_use: Cell::new(0), by_use: RefCell::default() })
    }

    /// Sealed segment files open now.
    pub fn open_count(&self) -> usize {
        self.by_use.borrow().len()
    }

    /// Marks `segment`'s open file as just used, then closes the files used longest ago past
    /// the bound.
    fn touch(&self, segment: &Segment<S>) {
        let now = self.next_use.get();
        self.next_use.set(now + 1);
        {
            let mut by_use = self.by_use.borrow_mut();
            if let Some(before) = segment.last_use.replace(Some(now)) {
                by_use.remove(&before);
            }
            by_use.insert(now, segment.me.clone());
        }
        loop {
            // Not borrowed while a segment is touched below.
            let oldest = {
                let mut by_use = self.by_use.borrow_mut();
                if by_use.len() <= self.files_max {
                    return;
                }
                by_use.pop_first()
            };
            let Some((_, oldest)) = oldest else { return };
            if let Some(oldest) = oldest.upgrade() {
                oldest.last_use.set(None);
                oldest.file.borrow_mut().take();
            }
        }
    }
}

impl<S: Storage> Drop for Segment<S> {
    /// A deleted segment leaves the shard's order of use.
    fn drop(&mut self) {
        if let Some(at) = self.last_use.get() {
            self.open_files.by_use.borrow_mut().remove(&at);
        }
    }
}

/// How far ahead of the writer the next preallocation reaches, sized by how fast the partition
/// used up the last one: a step used up within [`PREALLOCATE_STEP_GROW_WITHIN`] doubles (up to
/// [`PREALLOCATE_STEP_MAX_BYTES`]), one that lasted past [`PREALLOCATE_STEP_SHRINK_AFTER`]
/// halves (down to [`PREALLOCATE_STEP_MIN_BYTES`]). A roll hands the step to the next segment,
/// so a hot partition keeps its large steps.
#[derive(Clone, Copy, Debug)]
pub struct PreallocateStep {
    bytes: u64,
    /// When the last preallocation was made.
    at: Option<Instant>,
}

impl PreallocateStep {
    pub const MIN: Self = Self { bytes: PREALLOCATE_STEP_MIN_BYTES, at: None };

    pub fn bytes(self) -> u64 {
        self.bytes
    }

    /// The step to take now, the last one having been taken at `self.at`.
    fn next(self, now: Instant) -> Self {
        let bytes = match self.at.map(|at| now.saturating_duration_since(at)) {
            Some(lasted) if lasted < PREALLOCATE_STEP_GROW_WITHIN => {
                (self.bytes * 2).min(PREALLOCATE_STEP_MAX_BYTES)
            }
            Some(lasted) if lasted > PREALLOCATE_STEP_SHRINK_AFTER => {
                (self.bytes / 2).max(PREALLOCATE_STEP_MIN_BYTES)
            }
            _ => self.bytes,
        };
        Self { bytes, at: Some(now) }
    }
}

/// Where and why recovery cut a segment short.
#[derive(Debug)]
pub struct Truncation {
    pub position: u64,
    pub offset: Offset,
    pub reason: EntryError,
}

pub fn log_path(dir: &Path, base_offset: Offset) -> PathBuf {
    dir.join(format!("{base_offset:020}.log"))
}

fn index_path(dir: &Path, base_offset: Offset) -> PathBuf {
    dir.join(format!("{base_offset:020}.index"))
}

/// Parses `<20 digits>.log` back into a base offset.
pub fn parse_log_name(name: &str) -> Option<Offset> {
    let digits = name.strip_suffix(".log")?;
    (digits.len() == 20).then(|| digits.parse().ok().map(Offset)).flatten()
}

impl<S: Storage> Segment<S> {
    /// Creates an empty active segment with its first preallocation, `step` ahead (the rolled
    /// segment's step, or [`PreallocateStep::MIN`] for a new partition). On failure (a full
    /// disk) no file is left behind: an empty newest segment would claim offsets its
    /// predecessor goes on writing.
    pub async fn create(
        storage: &S,
        dir: &Path,
        base_offset: Offset,
        step: PreallocateStep,
        segment_bytes: u64,
        open_files: &Rc<OpenFiles<S>>,
    ) -> io::Result<Rc<Self>> {
        let path = log_path(dir, base_offset);
        let file = storage.open_rw(&path, true).await?;
        Self::reuse(storage, dir, base_offset, (file, 0), step, segment_bytes, open_files).await
    }

    /// Creates an empty active segment in `file`, `allocated` bytes long and already named as
    /// this segment, made durable (its first preallocation, its name). `create` hands it a new
    /// file; a roll may hand it an older segment's file, renamed (`PartitionLog::reuse_oldest`):
    /// its blocks are written and the new entries overwrite them. What lies past the new
    /// entries is then the old segment's entries, whose offsets are all below `base_offset`,
    /// so recovery stops there as at zeros.
    pub async fn reuse(
        storage: &S,
        dir: &Path,
        base_offset: Offset,
        (file, allocated): (S::File, u64),
        step: PreallocateStep,
        segment_bytes: u64,
        open_files: &Rc<OpenFiles<S>>,
    ) -> io::Result<Rc<Self>> {
        let path = log_path(dir, base_offset);
        let state = ScanState::new(base_offset);
        let segment = Self::new(
            storage,
            base_offset,
            Some(Rc::new(file)),
            path.clone(),
            state,
            allocated,
            open_files.clone(),
        );
        segment.step.set(step);
        let ready = async {
            segment.ensure_allocated(1, segment_bytes).await?;
            storage.sync_dir(dir).await
        };
        if let Err(e) = ready.await {
            if let Err(removed) = storage.remove_file(&path).await {
                tracing::warn!(segment = %path.display(), "removing a half-created segment: {removed}");
            }
            return Err(e);
        }
        Ok(segment)
    }

    /// Makes sure the file is allocated up to `end`: to the next multiple of the step at or
    /// past it, but not past the segment's size (`segment_bytes`, unless one entry alone is
    /// larger), or only as far as `end` when the device has no room for that.
    pub async fn ensure_allocated(&self, end: u64, segment_bytes: u64) -> io::Result<()> {
        if end <= self.allocated_bytes.get() {
            return Ok(());
        }
        let step = self.step.get().next(self.storage.now());
        let exact = end.next_multiple_of(WRITE_ALIGN_BYTES as u64);
        let segment_end = segment_bytes.next_multiple_of(WRITE_ALIGN_BYTES as u64);
        // Steps are powers of two from four blocks up, so the reach stays block-aligned.
        let reach = end.next_multiple_of(step.bytes()).min(segment_end).max(exact);
        let file = self.active_file()?;
        let target = match file.pre_allocate(reach).await {
            Ok(()) => reach,
            Err(e) if is_out_of_space(&e) => {
                file.pre_allocate(exact).await?;
                exact
            }
            Err(e) => return Err(e),
        };
        self.step.set(step);
        self.allocated_bytes.set(target);
        Ok(())
    }

    /// The step the next preallocation starts from.
    pub fn preallocate_step(&self) -> PreallocateStep {
        self.step.get()
    }

    /// Bytes allocated past the written entries.
    pub fn allocated_unused_bytes(&self) -> u64 {
        self.allocated_bytes.get().saturating_sub(self.meta.borrow().size)
    }

    /// Gives back what an idle active segment holds past its entries: the file is cut to them
    /// and the next write starts again from the smallest step. Called by the writer with nothing
    /// in flight.
    pub async fn trim(&self) -> io::Result<()> {
        self.cut_to_size().await?;
        self.step.set(PreallocateStep::MIN);
        Ok(())
    }

    /// Cuts the file back to the entries written so far, dropping whatever a failed write may
    /// have left past them and the space preallocated after them.
    pub async fn cut_to_size(&self) -> io::Result<()> {
        let size = self.meta.borrow().size;
        self.active_file()?.truncate(size).await?;
        self.allocated_bytes.set(size);
        Ok(())
    }

    fn new(
        storage: &S,
        base_offset: Offset,
        file: Option<Rc<S::File>>,
        log_path: PathBuf,
        state: ScanState,
        allocated_bytes: u64,
        open_files: Rc<OpenFiles<S>>,
    ) -> Rc<Self> {
        let first_write_ms = (state.position > 0).then(|| storage.now_ms());
        Rc::new_cyclic(|me| Self {
            storage: storage.clone(),
            base_offset,
            log_path,
            meta: RefCell::new(SegmentMeta {
                size: state.position,
                next_offset: state.next_offset,
                max_timestamp: state.max_timestamp,
                index: state.index,
                first_write_ms,
            }),
            file: RefCell::new(file),
            sealed: Cell::new(false),
            deleted: Cell::new(false),
            last_use: Cell::new(None),
            open_files,
            me: me.clone(),
            allocated_bytes: Cell::new(allocated_bytes),
            step: Cell::new(PreallocateStep::MIN),
            indexed_bytes: Cell::new(0),
        })
    }

    /// The file of the active segment, for writing and syncing: it is never closed while the
    /// segment is active (only sealed segments' files are).
    pub fn active_file(&self) -> io::Result<Rc<S::File>> {
        self.file.borrow().clone().ok_or_else(|| {
            io::Error::other(format!("{}: the segment's file is closed", self.log_path.display()))
        })
    }

    /// The file to read from: a sealed segment's is reopened if it was closed, and counts as
    /// used.
    async fn readable_file(&self) -> io::Result<Rc<S::File>> {
        let open = self.file.borrow().clone();
        let file = match open {
            Some(file) => file,
            None if self.deleted.get() => return Err(deleted_error(&self.log_path)),
            None => {
                let opened = Rc::new(self.storage.open_read(&self.log_path).await?);
                // Another read may have opened it meanwhile: keep one.
                self.file.borrow_mut().get_or_insert(opened).clone()
            }
        };
        if self.sealed.get() {
            self.open_files.touch(self);
        }
        Ok(file)
    }

    /// The segment is no longer the active one (a newer one took its place): from now on it is
    /// read only, and its file is closed until a read needs it. Not part of [`Segment::seal`]:
    /// a roll that finds no space for the next segment leaves the sealed one active.
    pub fn retire(&self) {
        self.sealed.set(true);
        self.file.borrow_mut().take();
    }

    /// Opens a sealed segment read-only, from its index file when that matches the segment,
    /// else by scanning it (and writing a fresh index).
    /// Its file is closed again once opened: sealed segments hold no file until read.
    pub async fn open_sealed(
        storage: &S,
        dir: &Path,
        base_offset: Offset,
        open_files: &Rc<OpenFiles<S>>,
    ) -> io::Result<(Rc<Self>, Option<Truncation>)> {
        let path = log_path(dir, base_offset);
        let file = Rc::new(storage.open_read(&path).await?);
        let file_len = file.size().await?;
        let indexed = match load_index(storage, dir, base_offset, file_len).await {
            Some((index, facts)) if facts.covered_bytes == file_len => Some(ScanState {
                position: facts.covered_bytes,
                next_offset: facts.next_offset,
                max_timestamp: facts.max_timestamp,
                index,
            }),
            _ => None,
        };
        let (state, rebuilt, truncation) = match indexed {
            Some(state) => (state, false, None),
            None => {
                let mut state = ScanState::new(base_offset);
                let truncation = scan_file(&path, &file, &mut state, file_len).await?;
                (state, true, truncation)
            }
        };
        let segment =
            Self::new(storage, base_offset, None, path, state, file_len, open_files.clone());
        segment.sealed.set(true);
        segment.indexed_bytes.set(file_len);
        if rebuilt {
            segment.persist_index(dir).await?;
            tracing::info!(segment = %segment.log_path.display(), "rebuilt a missing or stale index");
        }
        Ok((segment, truncation))
    }

    /// Opens the newest segment for appending: scans past what its index covers and truncates
    /// any torn or corrupt tail.
    pub async fn open_active(
        storage: &S,
        dir: &Path,
        base_offset: Offset,
        open_files: &Rc<OpenFiles<S>>,
    ) -> io::Result<(Rc<Self>, Option<Truncation>)> {
        let path = log_path(dir, base_offset);
        let file = Rc::new(storage.open_rw(&path, false).await?);
        let file_len = file.size().await?;
        let (mut state, indexed) = match load_index(storage, dir, base_offset, file_len).await {
            Some((index, facts)) if facts.covered_bytes <= file_len => (
                ScanState {
                    position: facts.covered_bytes,
                    next_offset: facts.next_offset,
                    max_timestamp: facts.max_timestamp,
                    index,
                },
                Some(facts.covered_bytes),
            ),
            _ => (ScanState::new(base_offset), None),
        };
        let truncation = scan_file(&path, &file, &mut state, file_len).await?;
        let mut allocated = file_len;
        if file_len > state.position {
            // Drop whatever lies past the last good entry, so zeros follow it again: damaged
            // bytes, and also whole entries a crash left beyond a gap (the writer keeps two
            // writes in flight, and the later one can complete alone). Left in place, such an
            // entry would be taken for part of the log once new entries grew back up to it.
            file.truncate(state.position).await?;
            allocated = state.position;
        }
        if indexed != Some(file_len) {
            // Not stopped cleanly (a clean stop leaves an index covering the whole file). What
            // recovery found may be only in the page cache: entries written but never synced,
            // a size a truncation set. Made durable before anyone reads it, so a power loss
            // cannot later bring back another log than the one served (entries an interrupted
            // truncation had cut; found by the simulation). And the process may have died
            // between creating this segment and syncing its directory: its name would then be
            // lost by a power loss, with every record appended to it from now on (seed 955).
            file.fdatasync().await?;
            storage.sync_dir(dir).await?;
        }
        let segment =
            Self::new(storage, base_offset, Some(file), path, state, allocated, open_files.clone());
        segment.indexed_bytes.set(indexed.unwrap_or(0));
        Ok((segment, truncation))
    }

    /// Reads `len` bytes at `position`, in device-friendly pieces.
    pub async fn read(&self, position: u64, len: usize) -> io::Result<Bytes> {
        read_range(&self.readable_file().await?, position, len).await
    }

    /// Writes the index file describing the segment as it is now.
    pub async fn persist_index(&self, dir: &Path) -> io::Result<()> {
        let facts = self.written_facts();
        self.persist_index_covering(dir, facts).await
    }

    /// What the segment holds now, as an index file states it.
    pub fn written_facts(&self) -> IndexedSegment {
        let meta = self.meta.borrow();
        IndexedSegment {
            covered_bytes: meta.size,
            next_offset: meta.next_offset,
            max_timestamp: meta.max_timestamp,
        }
    }

    /// Bytes the index file on disk covers.
    pub fn indexed_bytes(&self) -> u64 {
        self.indexed_bytes.get()
    }

    /// Writes the index file covering the segment up to `facts` (a recovery point: `facts`
    /// were taken before an fdatasync that has since completed, so everything they cover is on
    /// the device whatever happens next, and recovery need not scan it).
    pub async fn persist_index_covering(
        &self,
        dir: &Path,
        facts: IndexedSegment,
    ) -> io::Result<()> {
        let bytes = index::encode(&self.meta.borrow().index, self.base_offset.0, facts);
        replace_small_file(&self.storage, &index_path(dir, self.base_offset), &bytes).await?;
        self.indexed_bytes.set(self.indexed_bytes.get().max(facts.covered_bytes));
        Ok(())
    }

    /// Cuts the segment's file to `len` bytes and syncs it. Its index must be gone first (see
    /// the log's truncation for the order of the steps around it).
    pub async fn cut_file(&self, len: u64) -> io::Result<()> {
        let file = Rc::new(self.storage.open_rw(&self.log_path, false).await?);
        file.truncate(len).await?;
        file.fdatasync().await?;
        file.close().await
    }

    /// Makes the segment durable and final: data synced, preallocated tail cut, index written.
    /// A failed fdatasync is never [`is_out_of_space`]: what it covered may be lost whatever
    /// the cause, so the caller must not carry on as if only new writes had failed.
    pub async fn seal(&self, dir: &Path) -> io::Result<()> {
        self.cut_to_size().await?;
        let file = self.active_file()?;
        file.fdatasync().await.map_err(|e| io::Error::other(format!("fdatasync: {e}")))?;
        self.persist_index(dir).await
    }

    pub fn facts(&self) -> SegmentFacts {
        let meta = self.meta.borrow();
        SegmentFacts {
            size_bytes: meta.size,
            max_timestamp: meta.max_timestamp,
            first_write_ms: meta.first_write_ms,
        }
    }

    /// Marks the segment deleted: a read that finds its file closed gets
    /// [`is_deleted_segment`]'s error instead of reopening it.
    pub fn mark_deleted(&self) {
        self.deleted.set(true);
    }

    /// Whether the segment left the log (retention, a truncation, a deleted topic).
    pub fn is_deleted(&self) -> bool {
        self.deleted.get()
    }

    /// Removes the segment's files; a read that holds the file open finishes, a later one gets
    /// [`is_deleted_segment`]'s error.
    pub async fn remove_files(&self, dir: &Path) -> io::Result<()> {
        self.mark_deleted();
        self.storage.remove_file(&self.log_path).await?;
        self.remove_index(dir).await
    }

    /// Removes the segment's index file, if it has one: the next start scans the segment (and,
    /// were it the newest, counts the start as not clean).
    pub async fn remove_index(&self, dir: &Path) -> io::Result<()> {
        match self.storage.remove_file(&index_path(dir, self.base_offset)).await {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }
}

fn deleted_error(path: &Path) -> io::Error {
    io::Error::new(io::ErrorKind::NotFound, format!("{}: segment deleted", path.display()))
}

/// Whether a read failed because its segment was deleted meanwhile (retention moved the log
/// start past it, or its topic went): the reader asked for data the log no longer holds.
pub fn is_deleted_segment<S: Storage>(segment: &Segment<S>, error: &io::Error) -> bool {
    segment.deleted.get() && error.kind() == io::ErrorKind::NotFound
}

/// The index of the segment at `base_offset`, whose log file holds `segment_len` bytes.
async fn load_index<S: Storage>(
    storage: &S,
    dir: &Path,
    base_offset: Offset,
    segment_len: u64,
) -> Option<(SegmentIndex, IndexedSegment)> {
    let path = index_path(dir, base_offset);
    let bytes = match read_small_file(storage, &path, index::file_bytes_max(segment_len)).await {
        Ok(bytes) => bytes?,
        Err(e) => {
            tracing::warn!(index = %path.display(), "ignoring an index file, rebuilding: {e}");
            return None;
        }
    };
    match index::decode(&bytes, base_offset.0) {
        Ok(loaded) => Some(loaded),
        Err(why) => {
            tracing::warn!(index = %path.display(), why, "ignoring an index file, rebuilding");
            None
        }
    }
}

/// Scans from `state.position` to the end of the valid entries. Returns where and why it cut,
/// or `None` when the segment simply ends (zeros or end of file). Fails, naming `path`, on an
/// intact entry a newer build wrote: cutting there would drop it and everything after it.
async fn scan_file<F: StorageFile>(
    path: &Path,
    file: &Rc<F>,
    state: &mut ScanState,
    file_len: u64,
) -> io::Result<Option<Truncation>> {
    let mut want = SCAN_CHUNK_BYTES;
    loop {
        if state.position >= file_len {
            return Ok(None);
        }
        let len = (file_len - state.position).min(want as u64) as usize;
        let buf = read_range(file, state.position, len).await?;
        let start = state.position;
        let cut = |state: &ScanState, reason| Truncation {
            position: state.position,
            offset: state.next_offset,
            reason,
        };
        match scan(&buf, state) {
            ScanStop::End => return Ok(None),
            ScanStop::Corrupt(reason) => return Ok(Some(cut(state, reason))),
            ScanStop::WrittenByNewerBuild(reason) => {
                let why = format!(
                    "{}: the entry at byte {} (offset {}) was written by a newer build of Spate \
                     ({reason}); refusing to start rather than cut the log there: run a build \
                     that reads it",
                    path.display(),
                    state.position,
                    state.next_offset
                );
                return Err(io::Error::new(io::ErrorKind::InvalidData, why));
            }
            ScanStop::NeedMore { entry_bytes } => {
                let consumed = (state.position - start) as usize;
                let at_eof = start + len as u64 >= file_len;
                if at_eof && consumed == buf.len() {
                    return Ok(None);
                }
                if at_eof {
                    let rest = &buf[consumed..];
                    if rest.iter().all(|&b| b == 0) {
                        return Ok(None);
                    }
                    let reason = EntryError::Truncated { need: entry_bytes, have: rest.len() };
                    return Ok(Some(cut(state, reason)));
                }
                want = SCAN_CHUNK_BYTES.max(entry_bytes);
            }
        }
    }
}

/// Reads `len` bytes at `position` into one buffer. The range is split into `READ_BYTES_MAX`
/// pieces with up to `READS_INFLIGHT_MAX` of them in flight: one read at a time leaves the
/// device idle between requests (fio here: 512 KiB reads reach full speed only at depth 4).
pub async fn read_range<F: StorageFile>(
    file: &Rc<F>,
    position: u64,
    len: usize,
) -> io::Result<Bytes> {
    let mut out = BytesMut::with_capacity(len);
    let mut pieces = std::collections::VecDeque::new();
    let mut next = 0usize;
    while out.len() < len {
        while next < len && pieces.len() < READS_INFLIGHT_MAX {
            let (file, at, want) =
                (file.clone(), position + next as u64, (len - next).min(READ_BYTES_MAX));
            pieces.push_back((
                at,
                want,
                glommio::spawn_local(async move { file.read_at(at, want).await }),
            ));
            next += want;
        }
        let Some((at, want, piece)) = pieces.pop_front() else {
            break;
        };
        let chunk = piece.await?;
        if chunk.len() < want {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("read {want} bytes at {at}: file ends after {}", chunk.len()),
            ));
        }
        out.extend_from_slice(&chunk);
    }
    Ok(out.freeze())
}

/// Replaces a small file atomically: write a temporary file, sync it, rename it over.
pub async fn replace_small_file<S: Storage>(
    storage: &S,
    path: &Path,
    bytes: &[u8],
) -> io::Result<()> {
    // `<name>.index.tmp`, so an error while writing it names the file it stands for.
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    let file = Rc::new(storage.open_rw(&tmp, true).await?);
    let written = async {
        let aligned = bytes.len().next_multiple_of(WRITE_ALIGN_BYTES).max(WRITE_ALIGN_BYTES);
        let mut buf = file.alloc_buffer(aligned);
        let out = S::File::buffer_bytes(&mut buf);
        out[..bytes.len()].copy_from_slice(bytes);
        out[bytes.len()..].fill(0);
        let written = file.write_at(buf, 0).await?;
        if written < aligned {
            let why = format!("short write: {written} of {aligned} bytes");
            return Err(io::Error::new(io::ErrorKind::StorageFull, why));
        }
        // Also cuts what a longer leftover temporary file held past it.
        file.truncate(bytes.len() as u64).await?;
        file.fdatasync().await?;
        file.rename(path).await
    };
    if let Err(e) = written.await {
        // Best effort: a leftover temporary file is only wasted space.
        let _ = storage.remove_file(&tmp).await;
        return Err(e);
    }
    file.close().await
}

/// Reads a small file whole; `None` when there is none.
pub async fn read_small_file<S: Storage>(
    storage: &S,
    path: &Path,
    max_bytes: u64,
) -> io::Result<Option<Bytes>> {
    let file = match storage.open_read(path).await {
        Ok(file) => Rc::new(file),
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let read = async {
        let len = file.size().await?;
        if len > max_bytes {
            let why = format!("{len} bytes, more than the {max_bytes} such a file can hold");
            return Err(io::Error::new(io::ErrorKind::InvalidData, why));
        }
        read_range(&file, 0, len as usize).await
    };
    let bytes = read.await;
    // Read only: nothing to lose by a failed close.
    let _ = file.close().await;
    bytes.map(Some)
}

/// Whether an I/O error means the device (or the user's quota) has no room: the writes it
/// refused can be tried again once space is freed.
pub fn is_out_of_space(error: &io::Error) -> bool {
    matches!(error.kind(), io::ErrorKind::StorageFull | io::ErrorKind::QuotaExceeded)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_preallocation_step_follows_the_write_rate() {
        let start = Instant::now();
        let first = PreallocateStep::MIN.next(start);
        assert_eq!(first.bytes(), PREALLOCATE_STEP_MIN_BYTES, "no rate known yet");
        let mut step = first;
        for i in 1..=20 {
            step = step.next(start + Duration::from_millis(i * 100));
        }
        assert_eq!(step.bytes(), PREALLOCATE_STEP_MAX_BYTES, "used up fast: doubles to the cap");
        let steady = step.next(start + Duration::from_secs(7));
        assert_eq!(steady.bytes(), PREALLOCATE_STEP_MAX_BYTES, "between the bounds: kept");
        let mut slow = steady;
        for i in 1..=20 {
            slow = slow.next(start + Duration::from_secs(7 + 11 * i));
        }
        assert_eq!(slow.bytes(), PREALLOCATE_STEP_MIN_BYTES, "used up slowly: halves to the floor");
    }

    #[test]
    fn segment_names_round_trip() {
        let path = log_path(Path::new("/d"), Offset(1234));
        assert_eq!(path.file_name().unwrap(), "00000000000000001234.log");
        assert_eq!(parse_log_name("00000000000000001234.log"), Some(Offset(1234)));
        assert_eq!(parse_log_name("1234.log"), None);
        assert_eq!(parse_log_name("00000000000000001234.index"), None);
    }
}
