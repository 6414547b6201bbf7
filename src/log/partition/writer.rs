//! The partition's writer task: turns staged entries into O_DIRECT writes at the end of the
//! active segment, up to [`WRITES_IN_FLIGHT_MAX`](crate::log::write_plan::WRITES_IN_FLIGHT_MAX)
//! in flight as [`WritePlan`] lays them out,
//! moves the written watermark as they complete, rolls segments, and after a write that found
//! no space discards what was not written.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::io;
use std::rc::Rc;

use super::{read_block_tail, PartitionLog, Staged, OUT_OF_SPACE_BACKOFF};
use crate::log::index::IndexedSegment;
use crate::log::segment::{is_out_of_space, Segment};
use crate::log::storage::{Storage, StorageFile};
use crate::log::write_plan::{PlannedWrite, WritePlan};
use crate::metrics::Hist;

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
    };
    writer.run().await;
    log.state.borrow_mut().writer_done = true;
    log.changed.notify(usize::MAX);
}

/// Finished writes' results by write id, pushed by the writes' tasks.
type Completions = Rc<RefCell<Vec<(u64, io::Result<()>)>>>;

/// An entry handed to a write, not yet below the frontier.
struct IssuedEntry {
    base_offset: u64,
    next_offset: u64,
    max_timestamp: i64,
    position: u64,
    len: u64,
}

enum Step {
    Write(Vec<Staged>),
    Roll,
    /// Give back the idle active segment's preallocated space.
    Trim,
    /// Write the active segment's index covering what the syncer synced.
    RecoveryPoint(IndexedSegment),
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
                Step::Write(entries) => self.issue_entries(entries).await,
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
                            partition = self.log.partition,
                            "writing a recovery point: {e}"
                        );
                    }
                }
                Step::Trim => {
                    // Housekeeping: a failure leaves the space allocated, and the next idle
                    // check tries again; the partition carries on.
                    if let Err(e) = self.active().trim().await {
                        tracing::warn!(
                            topic = %self.log.topic,
                            partition = self.log.partition,
                            "giving back an idle segment's preallocation: {e}"
                        );
                    }
                }
                Step::Wait => listener.await,
                Step::Stop => return,
            }
        }
    }

    fn next_step(&self) -> Step {
        let mut st = self.log.state.borrow_mut();
        if st.failed.is_some() {
            return Step::Stop;
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

    async fn issue_entries(&mut self, entries: Vec<Staged>) {
        let mut position = self.plan.issued_end();
        let mut data = Vec::with_capacity(entries.len());
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
            data.push(staged.entry);
        }
        if let Some(write) = self.plan.plan(data) {
            self.issue(write).await;
        }
    }

    /// Copies the write into a DMA buffer and starts it; its task reports the result.
    async fn issue(&mut self, write: PlannedWrite) {
        let (id, position, len) = (write.id, write.position, write.padded_len());
        let segment = self.active();
        let ready = async {
            let segment_bytes = self.log.config.borrow().segment_bytes;
            segment.ensure_allocated(position + len as u64, segment_bytes).await?;
            segment.active_file()
        };
        let file = match ready.await {
            Ok(file) => file,
            Err(e) => {
                self.plan.abandon(id);
                self.error.get_or_insert(e);
                return;
            }
        };
        let mut buf = file.alloc_buffer(len);
        let bytes = S::File::buffer_bytes(&mut buf);
        let mut at = 0;
        for piece in std::iter::once(&write.prefix[..]).chain(write.data.iter().map(|d| &d[..])) {
            bytes[at..at + piece.len()].copy_from_slice(piece);
            at += piece.len();
        }
        bytes[at..].fill(0);
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

    /// Moves the segment's size and index and the high watermark over the entries now wholly
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
                meta.index.observe(entry.base_offset, entry.position, max_timestamp_before);
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
            tracing::info!(topic = %self.log.topic, partition = self.log.partition, "space again: writes resumed");
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
        let new = Segment::create(
            &log.storage,
            &log.dir,
            base_offset,
            step,
            segment_bytes,
            &log.open_files,
        )
        .await?;
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
                partition = log.partition,
                discarded = st.next_offset - from,
                "{why}; discarding the unwritten records and refusing appends for {:?}",
                OUT_OF_SPACE_BACKOFF
            );
            st.generation.discarded_from.set(Some(from));
            st.generation = Rc::default();
            st.next_offset = from;
            st.assert_watermarks("discarding unwritten records");
            st.staged.clear();
            log.queued.remove(std::mem::take(&mut st.staged_bytes));
            st.sync_target = st.sync_target.min(from);
            log.tail.borrow_mut().truncate_from(from);
            st.producers.forget_from(from);
            st.out_of_space = Some((log.storage.now() + OUT_OF_SPACE_BACKOFF, why));
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
