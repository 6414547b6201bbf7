//! The partition's writer task: turns staged entries into O_DIRECT writes at the end of the
//! active segment, up to [`WRITES_IN_FLIGHT_MAX`](crate::log::write_plan::WRITES_IN_FLIGHT_MAX)
//! in flight as [`WritePlan`] lays them out,
//! moves the written watermark as they complete, rolls segments, and after a write that found
//! no space discards what was not written.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::io;
use std::rc::Rc;

use futures_channel::oneshot;

use super::OUT_OF_SPACE_BACKOFF;
use super::{read_block_tail, report_truncation, Cut, LogError, PartitionLog, Staged};
use crate::config::WRITE_ALIGN_BYTES;
use crate::log::epochs::{self, LeaderEpochs};
use crate::log::in_place::{EntryData, InPlaceRun, Placement};
use crate::log::index::IndexedSegment;
use crate::log::log_start;
use crate::log::producers::ProducerTable;
use crate::log::segment::{is_out_of_space, PreallocateStep, Segment};
use crate::log::storage::{Storage, StorageFile};
use crate::log::write_plan::{PlannedWrite, WritePlan};
use crate::metrics::Hist;
use crate::record::entry::{parse_header, ENTRY_HEADER_BYTES};
use crate::types::{FilePosition, Offset};

/// Runs the writer of `log` until the log closes or fails. `block_tail` holds the active
/// segment's bytes from its last block boundary to its end.
pub(super) async fn run<S: Storage>(log: Rc<PartitionLog<S>>, block_tail: Vec<u8>) {
    let size = log.state.borrow().active().meta.borrow().size;
    let mut writer = Writer {
        log: log.clone(),
        plan: WritePlan::new(size, block_tail),
        issued: VecDeque::new(),
        completions: Rc::default(),
        error: None,
        recovery_point_asked_at: 0,
        dir_synced: false,
    };
    writer.run().await;
    let mut st = log.state.borrow_mut();
    st.writer_done = true;
    // A truncation asked for as the log failed or closed is not going to happen.
    if let Some((_, reply)) = st.truncation.take() {
        let why = st.failed.clone().map_or(LogError::Closed, LogError::Storage);
        let _ = reply.send(Err(why));
        st.truncating = false;
    }
    drop(st);
    log.changed.notify(usize::MAX);
}

/// How many of the first `staged` entries are `run`, all of it in order; 0 if they are not.
fn run_staged_whole<S: Storage>(staged: &VecDeque<Staged<S>>, run: &Rc<InPlaceRun<S>>) -> usize {
    let mut bytes = 0;
    for (count, next) in staged.iter().enumerate() {
        match &next.entry {
            EntryData::InPlace { run: of, range }
                if Rc::ptr_eq(of, run) && range.start == bytes =>
            {
                bytes = range.end;
                if bytes == run.len() {
                    return count + 1;
                }
            }
            _ => return 0,
        }
    }
    0
}

/// Finished writes' results by write id, pushed by the writes' tasks.
type Completions = Rc<RefCell<Vec<(u64, io::Result<()>)>>>;

/// An entry handed to a write, not yet below the frontier.
struct IssuedEntry {
    base_offset: Offset,
    next_offset: Offset,
    max_timestamp: i64,
    position: u64,
    len: u64,
}

enum Step<S: Storage> {
    Write(Vec<Staged<S>>),
    /// Write entries received in place, the first ones of their run, from the run's buffer.
    WriteInPlace(Rc<InPlaceRun<S>>, Vec<Staged<S>>),
    /// Remove the entries at and after an offset, or all of them; the caller waits for the new
    /// end.
    Truncate(Cut, oneshot::Sender<Result<Offset, LogError>>),
    Roll,
    /// Give back the idle active segment's preallocated space.
    Trim,
    /// Write the active segment's index covering what the syncer synced.
    RecoveryPoint(IndexedSegment),
    /// Write the leader-epoch checkpoint as it stands at a numbered change.
    PersistEpochs(LeaderEpochs, u64),
    /// Record the log start as it stands at a numbered change.
    PersistLogStart(Offset, u64),
    Wait,
    Stop,
}

struct Writer<S: Storage> {
    log: Rc<PartitionLog<S>>,
    /// Lays out the writes of the active segment.
    plan: WritePlan,
    /// Oldest first.
    issued: VecDeque<IssuedEntry>,
    completions: Completions,
    /// The first failure among the writes; acted on once none is left in flight.
    error: Option<io::Error>,
    /// The active segment's size when the writer last asked for a recovery point.
    recovery_point_asked_at: u64,
    /// Whether this process has synced the partition's directory.
    dir_synced: bool,
}

impl<S: Storage> Writer<S> {
    /// The segment the plan lays writes out in.
    fn active(&self) -> Rc<Segment<S>> {
        self.log.state.borrow().active()
    }

    async fn run(&mut self) {
        loop {
            let listener = self.log.writer_wake.listen();
            self.take_completions();
            if let Some(error) = self.error.take() {
                if self.plan.has_in_flight() {
                    self.error = Some(error);
                    listener.await;
                    continue;
                }
                if is_out_of_space(&error) && self.discard_unwritten(&error).await.is_ok() {
                    continue;
                }
                self.log.fail(format!("segment write failed: {error}"));
                return;
            }
            if let Some(write) = self.plan.take_deferred() {
                self.issue(write).await;
                continue;
            }
            match self.next_step() {
                Step::Write(entries) => {
                    if self.sync_dir_once().await {
                        self.issue_entries(entries).await
                    }
                }
                Step::WriteInPlace(run, entries) => {
                    if self.sync_dir_once().await {
                        self.issue_in_place(&run, entries).await
                    }
                }
                Step::Truncate(cut, reply) => {
                    let outcome = match cut {
                        Cut::To(offset) => self.truncate(offset).await,
                        Cut::StartOver { at, log_start } => self.start_over(at, log_start).await,
                    };
                    self.log.state.borrow_mut().truncating = false;
                    if let Err(LogError::Storage(why)) = &outcome {
                        // Which of its steps reached the disk is uncertain: a restart's
                        // recovery finds the log whole, cut or not.
                        self.log.fail(format!("{cut:?}: {why}"));
                    }
                    let _ = reply.send(outcome);
                }
                Step::Roll => {
                    if let Err(e) = self.roll().await {
                        self.error = Some(e);
                    }
                }
                Step::RecoveryPoint(facts) => {
                    // Housekeeping: a failure only means a longer scan after a crash.
                    if let Err(e) = self.active().persist_index_covering(&self.log.dir, facts).await
                    {
                        tracing::warn!(
                            topic = %self.log.topic,
                            partition = %self.log.partition,
                            "writing a recovery point: {e}"
                        );
                    }
                }
                Step::PersistEpochs(epochs, version) => {
                    let log = &self.log;
                    match epochs::persist(&log.storage, &log.dir, &epochs).await {
                        Ok(()) => {
                            let mut st = log.state.borrow_mut();
                            st.epochs_persisted = st.epochs_persisted.max(version);
                            drop(st);
                            log.changed.notify(usize::MAX);
                        }
                        // A full disk, which the leader change that brought this epoch may well
                        // meet (a broker fenced for its full disk follows the new leader): as a
                        // write that found no space, what was appended is discarded and appends
                        // are refused for a while; the checkpoint is written again with the
                        // first append after (`next_step`), before the entries that carry it.
                        Err(e) if is_out_of_space(&e) => self.error = Some(e),
                        // A new epoch must be durable before the replica acts on it, and entries
                        // must not reach the disk before the epoch they carry: the partition
                        // stops until restarted (epochs change at leader changes, rarely).
                        Err(e) => log.fail(format!("writing the leader-epoch checkpoint: {e}")),
                    }
                }
                Step::PersistLogStart(offset, version) => {
                    let log = &self.log;
                    match log_start::persist(&log.storage, &log.dir, offset).await {
                        Ok(()) => {
                            let mut st = log.state.borrow_mut();
                            st.start_floor_persisted = st.start_floor_persisted.max(version);
                            drop(st);
                            log.changed.notify(usize::MAX);
                        }
                        // A full disk, which a DeleteRecords is often meant to relieve: nothing
                        // was acknowledged yet, so the partition carries on, and the change that
                        // waits for this record is refused (and undone, `advance_start`).
                        Err(e) if is_out_of_space(&e) => {
                            tracing::warn!(
                                topic = %log.topic,
                                partition = %log.partition,
                                "recording the log start {offset}: {e}"
                            );
                            let mut st = log.state.borrow_mut();
                            st.start_floor_refused = version;
                            st.start_floor_persisted = st.start_floor_persisted.max(version);
                            drop(st);
                            log.changed.notify(usize::MAX);
                        }
                        // Records below it must never come back into view: the partition stops
                        // until restarted.
                        Err(e) => log.fail(format!("writing the log start offset: {e}")),
                    }
                }
                Step::Trim => {
                    // Housekeeping: a failure leaves the space allocated, and the next idle
                    // check tries again; the partition carries on.
                    if let Err(e) = self.active().trim().await {
                        tracing::warn!(
                            topic = %self.log.topic,
                            partition = %self.log.partition,
                            "giving back an idle segment's preallocation: {e}"
                        );
                    }
                }
                Step::Wait => listener.await,
                Step::Stop => return,
            }
        }
    }

    /// Syncs the partition's directory before this process's first write; false, with the log
    /// failed, if that fails. A process that died between renaming a file here and syncing the
    /// directory (a truncation's index, the epoch checkpoint) left names this one saw but a
    /// power loss could still undo, with this process's writes built on them (found by the
    /// simulation). One sync before the first write settles them.
    async fn sync_dir_once(&mut self) -> bool {
        if !self.dir_synced {
            if let Err(e) = self.log.storage.sync_dir(&self.log.dir).await {
                self.log.fail(format!("syncing the partition's directory: {e}"));
                return false;
            }
            self.dir_synced = true;
        }
        true
    }

    fn next_step(&self) -> Step<S> {
        let mut st = self.log.state.borrow_mut();
        if st.failed.is_some() {
            return Step::Stop;
        }
        // A truncation waits until what was appended before it is written (appends made
        // after it are refused).
        if st.truncation.is_some() && st.staged.is_empty() {
            if !self.plan.is_idle() {
                return Step::Wait;
            }
            // Starting over removes every segment's files: not while a removal of old segments
            // still deletes its own (taken off the list, their files could outlive a crash
            // beside the new start, a gap the next start would open).
            let starts_over = matches!(st.truncation, Some((Cut::StartOver { .. }, _)));
            if starts_over && st.removals_in_flight > 0 {
                return Step::Wait;
            }
            if let Some((cut, reply)) = st.truncation.take() {
                return Step::Truncate(cut, reply);
            }
        }
        // A roll waits until what is staged is written (it may roll by size anyway).
        if st.roll_requested && st.staged.is_empty() {
            if !self.plan.is_idle() {
                return Step::Wait;
            }
            st.roll_requested = false;
            if self.plan.issued_end() > 0 {
                return Step::Roll;
            }
        }
        if let Some((base_offset, facts)) = st.recovery_point.take() {
            // A roll since the sync wrote the sealed segment's whole index already.
            if base_offset == st.active().base_offset {
                return Step::RecoveryPoint(facts);
            }
        }
        if st.trim_requested {
            if !st.staged.is_empty() {
                // Written to again since the check: not idle after all.
                st.trim_requested = false;
            } else if self.plan.is_idle() {
                st.trim_requested = false;
                return Step::Trim;
            }
        }
        if st.start_floor_persisted < st.start_floor_version {
            return Step::PersistLogStart(st.start_floor, st.start_floor_version);
        }
        if st.epochs_persisted < st.epochs_version {
            // Not while appends are refused for lack of space: the append that ends the
            // refusal wakes the writer to try again. A log closing meanwhile stops without it:
            // what carried the epoch was discarded.
            if st.refused_for_space(self.log.storage.now()).is_none() {
                return Step::PersistEpochs(st.epochs.clone(), st.epochs_version);
            }
            if !st.stopping {
                return Step::Wait;
            }
        }
        let Some(first) = st.staged.front() else {
            let done = st.stopping && self.plan.is_idle();
            return if done { Step::Stop } else { Step::Wait };
        };
        if !self.plan.accepts_data() {
            return Step::Wait;
        }
        let segment_bytes = self.log.config.borrow().segment_bytes;
        let end = self.plan.issued_end();
        if end > 0 && end + first.entry.len() as u64 > segment_bytes {
            // The segment is full: it is sealed once everything in it is on the device.
            return if self.plan.is_idle() { Step::Roll } else { Step::Wait };
        }
        if let EntryData::InPlace { run, .. } = &first.entry {
            // A run is written from its own buffer only whole, where it was expected, and within
            // the segment; else its entries are copied, as shared ones are.
            let expected = Placement { segment: st.active().base_offset, position: end };
            let placed = run.at == expected && end + run.len() as u64 <= segment_bytes;
            // The whole run's entry count, scanned only for a run placed here.
            let staged_whole = if placed { run_staged_whole(&st.staged, run) } else { 0 };
            if staged_whole > 0 {
                // Written from the start of the block the run begins in: not while a write in
                // flight covers that block (its completion wakes the writer).
                if self.plan.shared_block_busy() {
                    return Step::Wait;
                }
                let run = run.clone();
                let batch = st.staged.drain(..staged_whole).collect();
                return Step::WriteInPlace(run, batch);
            }
        }
        let mut batch = Vec::new();
        let mut bytes = 0u64;
        while let Some(next) = st.staged.front() {
            let len = next.entry.len() as u64;
            let over_write = bytes + len > self.log.limits.write_bytes_max as u64;
            if !batch.is_empty() && (over_write || end + bytes + len > segment_bytes) {
                break;
            }
            bytes += len;
            batch.extend(st.staged.pop_front());
        }
        Step::Write(batch)
    }

    async fn issue_entries(&mut self, entries: Vec<Staged<S>>) {
        // Entries received in place but not where they were expected (a roll or a truncation
        // came between), or of a run appended only in part, are copied as shared ones are: a
        // run's buffer is written only whole, at the position it was placed for.
        let data = entries.iter().map(|staged| staged.entry.to_bytes()).collect();
        self.note_issued(entries);
        if let Some(write) = self.plan.plan(data) {
            self.issue(write).await;
        }
    }

    /// Writes the entries of `run`, all of it, from its own buffer (`log::in_place`).
    async fn issue_in_place(&mut self, run: &InPlaceRun<S>, entries: Vec<Staged<S>>) {
        let len = run.len();
        self.note_issued(entries);
        let planned = run.with_bytes(0..len, |data| self.plan.plan_in_place(data));
        let planned = planned.expect("a run's buffer is taken only by the run's write");
        let padded = (planned.prefix.len() + len).next_multiple_of(WRITE_ALIGN_BYTES);
        let Some(file) = self.ready_file(planned.id, planned.position, padded).await else {
            return;
        };
        let buffer = run.take_write(&planned.prefix);
        let buffer = buffer.expect("a run's buffer is taken only by the run's write");
        self.start(file, buffer, planned.id, planned.position);
    }

    /// Counts `entries` as issued, from the plan's issued end on.
    fn note_issued(&mut self, entries: Vec<Staged<S>>) {
        let mut position = self.plan.issued_end();
        for staged in entries {
            let len = staged.entry.len() as u64;
            self.issued.push_back(IssuedEntry {
                base_offset: staged.base_offset,
                next_offset: staged.next_offset,
                max_timestamp: staged.max_timestamp,
                position,
                len,
            });
            position += len;
        }
    }

    /// Copies the write into a DMA buffer and starts it.
    async fn issue(&mut self, write: PlannedWrite) {
        let (id, position, len) = (write.id, write.position, write.padded_len());
        let Some(file) = self.ready_file(id, position, len).await else {
            return;
        };
        let mut buf = file.alloc_buffer(len);
        let bytes = S::File::buffer_bytes(&mut buf);
        let mut at = 0;
        for piece in std::iter::once(&write.prefix[..]).chain(write.data.iter().map(|d| &d[..])) {
            bytes[at..at + piece.len()].copy_from_slice(piece);
            at += piece.len();
        }
        bytes[at..].fill(0);
        self.start(file, buf, id, position);
    }

    /// The active segment's file, allocated up to the end of write `id` (`len` bytes at
    /// `position`); `None`, with the write abandoned and the error kept, if it cannot be had.
    async fn ready_file(&mut self, id: u64, position: u64, len: usize) -> Option<Rc<S::File>> {
        let segment = self.active();
        let ready = async {
            let segment_bytes = self.log.config.borrow().segment_bytes;
            segment.ensure_allocated(position + len as u64, segment_bytes).await?;
            segment.active_file()
        };
        match ready.await {
            Ok(file) => Some(file),
            Err(e) => {
                self.plan.abandon(id);
                self.error.get_or_insert(e);
                None
            }
        }
    }

    /// Starts write `id` of `buf` at `position`; its task reports the result.
    fn start(
        &mut self,
        file: Rc<S::File>,
        mut buf: <S::File as StorageFile>::Buffer,
        id: u64,
        position: u64,
    ) {
        let len = S::File::buffer_bytes(&mut buf).len();
        let (log, completions) = (self.log.clone(), self.completions.clone());
        glommio::spawn_local(async move {
            let started = log.storage.now();
            let result = match file.write_at(buf, position).await {
                Ok(written) if written == len => {
                    log.metrics.record(Hist::LogAppend, log.storage.now() - started);
                    Ok(())
                }
                // A regular file takes fewer bytes than asked only when the device is full.
                Ok(written) => Err(io::Error::new(
                    io::ErrorKind::StorageFull,
                    format!("short write: {written} of {len} bytes"),
                )),
                Err(e) => Err(e),
            };
            completions.borrow_mut().push((id, result));
            log.writer_wake.notify(1);
        })
        .detach();
    }

    fn take_completions(&mut self) {
        let finished = std::mem::take(&mut *self.completions.borrow_mut());
        if finished.is_empty() {
            return;
        }
        for (id, result) in finished {
            match result {
                Ok(()) => {
                    self.plan.complete(id);
                }
                Err(e) => {
                    self.plan.abandon(id);
                    self.error.get_or_insert(e);
                }
            }
        }
        self.advance_written();
    }

    /// Moves the segment's size and index and the written offset over the entries now wholly
    /// below the frontier.
    fn advance_written(&mut self) {
        let frontier = self.plan.frontier();
        let mut written_bytes = 0u64;
        let mut newest = None;
        {
            let segment = self.active();
            let mut meta = segment.meta.borrow_mut();
            while let Some(entry) = self.issued.front() {
                if entry.position + entry.len > frontier {
                    break;
                }
                // The disk boundary's pair to the watermarks: entries land back to back, each
                // where the segment's written bytes end and at the offset they continue from.
                assert!(
                    entry.position == meta.size && entry.base_offset == meta.next_offset,
                    "{}: entry {}..{} written at byte {}, but the segment ends at byte {} and \
                     offset {}",
                    segment.log_path.display(),
                    entry.base_offset,
                    entry.next_offset,
                    entry.position,
                    meta.size,
                    meta.next_offset
                );
                let max_timestamp_before = meta.max_timestamp;
                let position = FilePosition(entry.position);
                meta.index.observe(entry.base_offset, position, max_timestamp_before);
                meta.max_timestamp = meta.max_timestamp.max(entry.max_timestamp);
                meta.size = entry.position + entry.len;
                meta.next_offset = entry.next_offset;
                written_bytes += entry.len;
                newest = Some(entry.next_offset);
                self.issued.pop_front();
            }
            if newest.is_some() {
                meta.first_write_ms.get_or_insert_with(|| self.log.storage.now_ms());
            }
        }
        let Some(written_offset) = newest else {
            return;
        };
        let active = self.active();
        let size = active.meta.borrow().size;
        let mut st = self.log.state.borrow_mut();
        st.written_offset = written_offset;
        st.assert_watermarks("a write");
        // Far enough past the last recovery point: ask the syncer for one, once per stretch,
        // even when no acks=all producer waits (it then also writes the index).
        let stretch = self.log.limits.recovery_point_bytes;
        let past_point = size >= active.indexed_bytes() + stretch;
        if past_point && size >= self.recovery_point_asked_at + stretch {
            self.recovery_point_asked_at = size;
            st.sync_target = st.sync_target.max(written_offset);
        }
        // A failed fdatasync may have zeroed the count (`fail`) while these writes were in flight.
        let written_bytes = (written_bytes as usize).min(st.staged_bytes);
        st.staged_bytes -= written_bytes;
        self.log.queued.remove(written_bytes);
        if st.out_of_space.take().is_some() {
            tracing::info!(topic = %self.log.topic, partition = %self.log.partition, "space again: writes resumed");
            self.log.storage_health.write_taken();
        }
        drop(st);
        self.log.changed.notify(usize::MAX);
    }

    /// Seals the active segment and opens a new one at the next offset. Called with nothing in
    /// flight.
    async fn roll(&mut self) -> io::Result<()> {
        let log = &self.log;
        let old = self.active();
        let started = log.storage.now();
        old.seal(&log.dir).await?;
        log.metrics.record(Hist::Fdatasync, log.storage.now() - started);
        let base_offset = old.meta.borrow().next_offset;
        let step = old.preallocate_step();
        let segment_bytes = log.config.borrow().segment_bytes;
        let (storage, dir, open_files) = (&log.storage, &log.dir, &log.open_files);
        let new = match log.reuse_oldest(base_offset).await? {
            Some(reused) => {
                Segment::reuse(storage, dir, base_offset, reused, step, segment_bytes, open_files)
                    .await?
            }
            None => {
                Segment::create(storage, dir, base_offset, step, segment_bytes, open_files).await?
            }
        };
        let mut st = log.state.borrow_mut();
        assert_eq!(
            st.written_offset,
            base_offset,
            "rolling {}: the new segment must start where everything written ends",
            old.log_path.display()
        );
        st.synced_offset = st.synced_offset.max(base_offset);
        st.segments.push_back(new);
        st.assert_watermarks("a roll");
        drop(st);
        old.retire();
        self.plan = WritePlan::new(0, Vec::new());
        self.recovery_point_asked_at = 0;
        log.changed.notify(usize::MAX);
        Ok(())
    }

    /// Removes the entries holding `offset` and after; called with nothing staged or in flight.
    /// The disk is changed in an order that leaves a whole log after a crash at any step: the
    /// later segments go first, newest first, then the segment holding `offset` is cut and
    /// synced and opened again as the active one. A storage error leaves the log failed.
    async fn truncate(&mut self, offset: Offset) -> Result<Offset, LogError> {
        let log = self.log.clone();
        let (segments, end) = {
            let st = log.state.borrow();
            (st.segments.iter().cloned().collect::<Vec<_>>(), st.next_offset)
        };
        if offset >= end {
            // Nothing of the log goes, but an epoch recorded at its end without entries (one
            // this replica led, or learnt, before the leader it now follows) does, as Kafka's
            // truncateTo drops it: kept, the follower would fetch again with an epoch its
            // leader never had, and be told again where the logs part.
            let mut st = log.state.borrow_mut();
            if st.epochs.truncate_from_end(offset) {
                st.epochs_version += 1;
            }
            return Ok(end);
        }
        let Some(holder_at) = segments.iter().rposition(|s| s.base_offset <= offset) else {
            // Retention moved the log start past it since the request.
            return Err(LogError::OffsetOutOfRange {
                requested: offset,
                log_start: log.log_start(),
                log_end: end,
            });
        };
        let holder = segments[holder_at].clone();
        let storage_error = |e: io::Error| LogError::Storage(e.to_string());
        let facts = entry_boundary(&holder, offset).await.map_err(storage_error)?;
        let cut = async {
            // Indexes go first, the holder's too: the newest segment a crash at any later step
            // leaves has no index, so the next start is not taken for a clean one (it syncs
            // what it recovers and the directory before serving it). Then the segments, newest
            // first, so what is left is always a whole log; the directory sync makes all of it
            // durable before the cut (found by the simulation, crashing inside truncations).
            let later = &segments[holder_at + 1..];
            for segment in later {
                segment.remove_index(&log.dir).await?;
            }
            holder.remove_index(&log.dir).await?;
            for segment in later.iter().rev() {
                segment.remove_files(&log.dir).await?;
            }
            log.storage.sync_dir(&log.dir).await?;
            holder.cut_file(facts.covered_bytes).await?;
            // A power loss can take this index (its directory is not synced again), never
            // bring back the old one: the next start then scans the segment.
            holder.persist_index_covering(&log.dir, facts).await?;
            Segment::open_active(&log.storage, &log.dir, holder.base_offset, &log.open_files).await
        };
        let (active, recovery_cut) = cut.await.map_err(storage_error)?;
        report_truncation(&log.topic, log.partition, &active, recovery_cut);
        let new_end = active.meta.borrow().next_offset;
        {
            let mut st = log.state.borrow_mut();
            // By base offset, not position: retention waits while a truncation runs, but a
            // removal it began just before may have shortened the list meanwhile.
            let kept = st.segments.iter().take_while(|s| s.base_offset < holder.base_offset);
            let kept = kept.count();
            for removed in st.segments.drain(kept..) {
                removed.retire();
                // A read that still holds it must not reopen the path, which now names the
                // segment opened again, with the old segment's sizes and index.
                removed.mark_deleted();
            }
            st.segments.push_back(active.clone());
            st.next_offset = new_end;
            st.bound_start_floor(new_end);
            st.written_offset = new_end;
            st.synced_offset = st.synced_offset.min(new_end);
            st.sync_target = st.sync_target.min(new_end);
            st.recovery_point = None;
            st.truncations += 1;
            if st.epochs.truncate_from_end(new_end) {
                // Written lazily: a start drops whatever the file still holds past the log end.
                st.epochs_version += 1;
            }
            st.cut_generation(new_end, LogError::Truncated { below: new_end });
            // Rebuilt from what is left, as at a start (Kafka reloads producer state on a
            // truncation too): a producer's epoch bump in the removed entries must go with them.
            st.producers = ProducerTable::default();
            st.assert_watermarks("a truncation");
        }
        log.tail.borrow_mut().truncate_from(new_end);
        log.reads.forget_from(new_end);
        log.rebuild_producers().await.map_err(storage_error)?;
        log.changed.notify(usize::MAX);
        tracing::info!(
            topic = %log.topic,
            partition = %log.partition,
            requested = %offset,
            removed = end.records_since(new_end),
            "truncated the log to offset {new_end}"
        );
        let size = active.meta.borrow().size;
        self.plan = WritePlan::new(size, read_block_tail(&active).await.map_err(storage_error)?);
        self.recovery_point_asked_at = size;
        Ok(new_end)
    }

    /// Removes every entry and starts the log again, empty, at `offset`; called with nothing
    /// staged or in flight. Indexes go first, then the segments, newest first, so a crash at any
    /// step leaves a whole log (what is left of the old one, or nothing: the follower is then
    /// out of range again and starts over again), then the new empty segment is made durable.
    /// A storage error leaves the log failed.
    async fn start_over(&mut self, offset: Offset, log_start: Offset) -> Result<Offset, LogError> {
        let log = self.log.clone();
        let segments: Vec<_> = log.state.borrow().segments.iter().cloned().collect();
        let storage_error = |e: io::Error| LogError::Storage(e.to_string());
        let emptied = async {
            for segment in &segments {
                segment.remove_index(&log.dir).await?;
            }
            for segment in segments.iter().rev() {
                segment.remove_files(&log.dir).await?;
            }
            log.storage.sync_dir(&log.dir).await?;
            // Created with its directory synced: durable.
            let segment_bytes = log.config.borrow().segment_bytes;
            let step = PreallocateStep::MIN;
            Segment::create(&log.storage, &log.dir, offset, step, segment_bytes, &log.open_files)
                .await
        };
        let active = emptied.await.map_err(storage_error)?;
        let removed = {
            let mut st = log.state.borrow_mut();
            let removed = st.next_offset.records_since(st.log_start());
            for segment in st.segments.drain(..) {
                segment.retire();
                segment.mark_deleted();
            }
            st.segments.push_back(active.clone());
            st.next_offset = offset;
            // What retention kept from was another log's.
            st.retention_keep_from = st.retention_keep_from.min(offset);
            // Where the log starts: its first offset, or inside the first entry to come.
            if st.start_floor != log_start {
                st.start_floor = log_start;
                st.start_floor_version += 1;
            }
            st.written_offset = offset;
            st.synced_offset = offset;
            st.sync_target = offset;
            st.recovery_point = None;
            st.truncations += 1;
            if st.epochs.truncate_from_end(Offset(0)) {
                st.epochs_version += 1;
            }
            st.cut_generation(Offset(0), LogError::Truncated { below: Offset(0) });
            st.producers = ProducerTable::default();
            st.assert_watermarks("starting the log over");
            removed
        };
        log.tail.borrow_mut().truncate_from(Offset(0));
        log.reads.forget_all();
        log.changed.notify(usize::MAX);
        tracing::info!(
            topic = %log.topic,
            partition = %log.partition,
            removed,
            "emptied the log and started it again at offset {offset}"
        );
        self.plan = WritePlan::new(0, Vec::new());
        self.recovery_point_asked_at = 0;
        Ok(offset)
    }

    /// After a write found no space, with nothing left in flight: discards everything appended
    /// but not written (failing its waiters), refuses appends for [`OUT_OF_SPACE_BACKOFF`], and
    /// cuts the active segment back to its written entries, so nothing a failed write (or a
    /// later one that completed) left behind can be read or recovered.
    async fn discard_unwritten(&mut self, error: &io::Error) -> io::Result<()> {
        let log = &self.log;
        {
            let mut st = log.state.borrow_mut();
            let from = st.written_offset;
            let why = format!("no space to write offsets {from} and after: {error}");
            tracing::warn!(
                topic = %log.topic,
                partition = %log.partition,
                discarded = st.next_offset.records_since(from),
                "{why}; discarding the unwritten records and refusing appends for {:?}",
                OUT_OF_SPACE_BACKOFF
            );
            st.cut_generation(from, LogError::Storage(why.clone()));
            // The offsets are handed out again in the same leader epoch: it starts no later
            // than they do. Persisted before any new write (Kafka's assign rules, `epochs.rs`).
            if let Some(latest) = st.epochs.latest().filter(|latest| latest.start_offset > from) {
                st.epochs.assign(latest.epoch, from);
                st.epochs_version += 1;
            }
            st.next_offset = from;
            st.assert_watermarks("discarding unwritten records");
            st.staged.clear();
            log.queued.remove(std::mem::take(&mut st.staged_bytes));
            st.sync_target = st.sync_target.min(from);
            log.tail.borrow_mut().truncate_from(from);
            st.producers.forget_from(from);
            st.out_of_space = Some((log.storage.now() + OUT_OF_SPACE_BACKOFF, why));
            log.storage_health.write_refused();
        }
        self.issued.clear();
        log.changed.notify(usize::MAX);
        let active = self.active();
        active.cut_to_size().await?;
        let size = active.meta.borrow().size;
        self.plan = WritePlan::new(size, read_block_tail(&active).await?);
        Ok(())
    }
}

/// What `segment` holds before the entry that holds `offset`, as its index would state it: the
/// entry's position, its base offset, and the newest timestamp before it. The index points the
/// walk to within [`INDEX_INTERVAL_BYTES`](crate::log::index::INDEX_INTERVAL_BYTES) of it.
async fn entry_boundary<S: Storage>(
    segment: &Segment<S>,
    offset: Offset,
) -> io::Result<IndexedSegment> {
    let (point, size, next_offset) = {
        let meta = segment.meta.borrow();
        (meta.index.seek_offset(offset), meta.size, meta.next_offset)
    };
    let (mut position, mut max_timestamp) =
        point.map_or((0, i64::MIN), |p| (p.position.0, p.max_timestamp_before));
    while position < size {
        let bytes = segment.read(position, ENTRY_HEADER_BYTES).await?;
        let header = parse_header(&bytes).map_err(|e| {
            io::Error::other(format!(
                "{}: entry at byte {position}: {e}",
                segment.log_path.display()
            ))
        })?;
        if header.next_offset() > offset {
            let next_offset = header.base_offset();
            return Ok(IndexedSegment { covered_bytes: position, next_offset, max_timestamp });
        }
        max_timestamp = max_timestamp.max(header.max_timestamp.get());
        position += header.entry_len() as u64;
    }
    Ok(IndexedSegment { covered_bytes: size, next_offset, max_timestamp })
}
