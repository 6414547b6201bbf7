//! Reads below the tail cache: segments cut into chunks, served from the shard's read cache or
//! read from the disk, several at once, and read ahead of sequential readers.
//!
//! ```text
//!  read(offset, max_bytes, end)
//!    the chunks from the one holding `offset`, enough for max_bytes, below end (index only)
//!    each: cached → used as is │ being read → wait for it │ else → read now (a few at once)
//!    entries from the one holding `offset`, below `end`, up to max_bytes (the first whole)
//!    a read continuing where one of the partition's readers stopped (read_ahead.rs) →
//!      the chunks after it, up to a window of its fetches, read now into the cache
//! ```
//!
//! A chunk runs from the first index point at or past a multiple of [`READ_CHUNK_BYTES`] in
//! its segment to the first one at or past the next multiple: decided by the index alone, the
//! same for every reader, and whole entries by construction. The active segment's last chunk
//! has no end yet (it grows with every write): it is read as before the cache, from the index
//! point at or before the offset and only as much as the read needs, and never cached or read
//! ahead, which is the tail cache's part. Every chunk read is checked before anything of it is
//! served or cached: each entry's checksum, and offsets running from where the index says the
//! chunk starts to where it says the chunk ends. A chunk that fails is read again the precise
//! way, so entries before a corrupt one are still served and the corrupt one is reported.

use std::rc::Rc;

use bytes::Bytes;

use super::{LogError, LogState, PartitionLog, ReadError, READ_SLACK_BYTES};
use crate::log::index::IndexPoint;
use crate::log::read_ahead;
use crate::log::read_cache::{Chunk, Loading, Lookup, Reservation};
use crate::log::segment::Segment;
use crate::log::storage::Storage;
use crate::record::entry::{parse_entry, parse_header};
use crate::types::{FilePosition, Offset};

/// Bytes a chunk spans, about (`LogLimits::read_chunk_bytes` in the broker): a 512 KiB read
/// (glommio's largest, [`crate::log::segment::READ_BYTES_MAX`]) and the rest of an entry.
pub const READ_CHUNK_BYTES: u64 = 512 * 1024;

/// Chunk reads one read keeps in flight: a large fetch does not take the whole device queue.
const LOADS_PER_READ_MAX: usize = 4;

/// Where a chunk lies, from the index.
#[derive(Clone)]
pub(super) struct ChunkAt<S: Storage> {
    segment: Rc<Segment<S>>,
    first: Offset,
    next: Offset,
    position: u64,
    len: usize,
    /// The active segment's last chunk, which grows as entries are written.
    growing: bool,
}

/// Why a read of chunks gave up.
pub(super) enum Failed<S: Storage> {
    /// Reading the segment failed.
    Read { segment: Rc<Segment<S>>, error: ReadError },
    /// The log changed under the read before it had anything: plan it again.
    Changed,
}

/// The chunk holding `offset`, if a segment holds it, with chunks of about `chunk_bytes`.
pub(super) fn chunk_holding<S: Storage>(
    st: &LogState<S>,
    offset: Offset,
    chunk_bytes: u64,
) -> Option<ChunkAt<S>> {
    let holder = st.segments.partition_point(|s| s.base_offset <= offset).checked_sub(1)?;
    let segment = st.segments[holder].clone();
    let meta = segment.meta.borrow();
    if offset >= meta.next_offset {
        return None;
    }
    // A segment's first entry is at its start, whether or not its index has a point there.
    let segment_start = IndexPoint {
        offset: segment.base_offset,
        position: FilePosition(0),
        max_timestamp_before: i64::MIN,
    };
    let point = meta.index.seek_offset(offset).unwrap_or(segment_start);
    let bucket = point.position.0 / chunk_bytes;
    let start = match bucket {
        0 => segment_start,
        _ => meta.index.first_at_or_after(FilePosition(bucket * chunk_bytes))?,
    };
    let after = meta.index.first_at_or_after(FilePosition((bucket + 1) * chunk_bytes));
    let growing = after.is_none() && holder + 1 == st.segments.len();
    let (next, end) = after.map_or((meta.next_offset, meta.size), |p| (p.offset, p.position.0));
    // Index points lie within the written size; a start past the end would be a broken index.
    let len = usize::try_from(end.checked_sub(start.position.0)?).ok()?;
    drop(meta);
    Some(ChunkAt { segment, first: start.offset, next, position: start.position.0, len, growing })
}

/// Reads a chunk, checks it, and caches it unless the log changed meanwhile.
pub(super) async fn load<S: Storage>(
    at: ChunkAt<S>,
    loading: Loading,
    reserved: Option<Reservation>,
) -> Result<Chunk, ReadError> {
    let entries = at.segment.read(at.position, at.len).await?;
    check_chunk(&entries, &at)?;
    let chunk = Chunk { first_offset: at.first, next_offset: at.next, entries };
    loading.finish(&chunk, reserved);
    Ok(chunk)
}

/// The disk boundary's check of a read: whole entries, each with its checksum, with offsets
/// running from the chunk's first to its next, as the index said.
fn check_chunk<S: Storage>(entries: &Bytes, at: &ChunkAt<S>) -> Result<(), ReadError> {
    let (mut from, mut expected) = (0usize, at.first);
    while from < entries.len() {
        let position = at.position + from as u64;
        let corrupt = |why: String| ReadError::Corrupt { position, why };
        let header = parse_header(&entries[from..]).map_err(|e| corrupt(e.to_string()))?;
        if header.base_offset() != expected {
            return Err(corrupt(format!(
                "the entry starts at offset {}, where offset {expected} was expected",
                header.base_offset()
            )));
        }
        let len = header.entry_len();
        let Some(entry) = entries.get(from..from + len) else {
            return Err(corrupt(format!("an entry of {len} bytes runs past the chunk's end")));
        };
        parse_entry(entry).map_err(|e| corrupt(e.to_string()))?;
        (from, expected) = (from + len, header.next_offset());
    }
    if expected != at.next {
        let position = at.position + entries.len() as u64;
        let why = format!("the entries end at offset {expected}, the index says {}", at.next);
        return Err(ReadError::Corrupt { position, why });
    }
    Ok(())
}

/// What a read takes from one chunk: the entries holding `from` and after, below `end`, while
/// they fit in `room` (the first one whole whatever its size when `taken` is 0).
struct Taken {
    entries: Option<Bytes>,
    next: Offset,
    bytes: usize,
    /// The read ends here (`end` or `room` reached).
    done: bool,
}

fn take(chunk: &Chunk, from: Offset, end: Offset, taken: usize, max_bytes: usize) -> Taken {
    let bytes = &chunk.entries;
    let (mut at, mut start, mut next, mut total) = (0usize, None, from, taken);
    let mut done = false;
    // Checked when read: a header that does not parse now ends the read, never panics it.
    while let Some(header) = bytes.get(at..).and_then(|rest| parse_header(rest).ok()) {
        let len = header.entry_len();
        if header.base_offset() >= end {
            done = true;
            break;
        }
        if header.next_offset() <= from {
            at += len;
            continue;
        }
        if total > 0 && total + len > max_bytes {
            done = true;
            break;
        }
        start.get_or_insert(at);
        (at, next, total) = (at + len, header.next_offset(), total + len);
    }
    let entries = start.map(|start| bytes.slice(start..at));
    Taken { entries, next, bytes: total - taken, done: done || total >= max_bytes }
}

impl<S: Storage> PartitionLog<S> {
    /// Whole entries holding `offset` and after, below `end` (at most the written offset),
    /// up to `max_bytes` (the first whole), from the read cache or the disk.
    pub(super) async fn read_chunks(
        &self,
        offset: Offset,
        max_bytes: usize,
        end: Offset,
    ) -> Result<Vec<Bytes>, LogError> {
        // A log that changed under the read (a truncation reopens the segment it cuts, a
        // chunk became the growing one) is planned again from the log as it is now, once.
        let outcome = match self.read_chunks_once(offset, max_bytes, end).await {
            Err(Failed::Changed) => self.read_chunks_once(offset, max_bytes, end).await,
            Err(Failed::Read { segment, .. })
                if segment.is_deleted() && self.still_holds(offset) =>
            {
                self.read_chunks_once(offset, max_bytes, end).await
            }
            outcome => outcome,
        };
        match outcome {
            Ok(out) => Ok(out),
            // Changed again: the reader asks again.
            Err(Failed::Changed) => Ok(Vec::new()),
            Err(Failed::Read { segment, error }) => Err(self.read_error(&segment, offset, error)),
        }
    }

    fn still_holds(&self, offset: Offset) -> bool {
        let st = self.state.borrow();
        st.log_start() <= offset && offset < st.written_offset
    }

    async fn read_chunks_once(
        &self,
        offset: Offset,
        max_bytes: usize,
        end: Offset,
    ) -> Result<Vec<Bytes>, Failed<S>> {
        let (wanted, epoch) = self.chunks_for(offset, max_bytes, end);
        // The chunks no one has or is reading are read now, a few at once.
        let mut reading: Vec<_> = wanted.iter().map(|_| None).collect();
        for (slot, at) in reading.iter_mut().zip(&wanted).take(LOADS_PER_READ_MAX) {
            *slot = self.start_load(at, epoch);
        }
        let (mut out, mut taken, mut next) = (Vec::new(), 0usize, offset);
        let mut damaged = false;
        for (i, at) in wanted.iter().enumerate() {
            if at.growing || next < at.first {
                // The growing chunk, as the read's first only: past others, the next read goes
                // on from here. (A gap: the log changed under the read.)
                if out.is_empty() && at.growing {
                    (out, next) = read_precisely(at, next, max_bytes, end).await?;
                }
                break;
            }
            let chunk = match reading[i].take() {
                Some(task) => task.await.map(Some),
                None => self.wait_for_chunk(at, next).await,
            };
            if let Some((slot, ahead)) =
                reading.get_mut(i + LOADS_PER_READ_MAX).zip(wanted.get(i + LOADS_PER_READ_MAX))
            {
                *slot = self.start_load(ahead, epoch);
            }
            let chunk = match chunk {
                Ok(Some(chunk)) => chunk,
                Ok(None) if out.is_empty() => return Err(Failed::Changed),
                // The log changed under the read: what it has so far.
                Ok(None) => break,
                // The next read starts there and reports it.
                Err(_) if !out.is_empty() => break,
                Err(ReadError::Corrupt { .. }) => {
                    // Entries before the damage are served; the damaged one is reported.
                    damaged = true;
                    (out, next) = read_precisely(at, next, max_bytes, end).await?;
                    break;
                }
                Err(error) => return Err(Failed::Read { segment: at.segment.clone(), error }),
            };
            let part = take(&chunk, next, end, taken, max_bytes);
            out.extend(part.entries);
            (next, taken) = (part.next, taken + part.bytes);
            if part.done {
                break;
            }
        }
        // Reads not needed after all (the read ended early) still land in the cache.
        reading.into_iter().flatten().for_each(|task| drop(task.detach()));
        // Not past damage: reading ahead would only read the damaged chunk again.
        if !out.is_empty() && !damaged && self.reads.streams.borrow_mut().observe(offset, next) {
            let window = read_ahead::window_bytes(max_bytes, self.limits.read_ahead_bytes);
            self.read_ahead(next, window);
        }
        Ok(out)
    }

    /// Starts reading chunk `at`, planned in the log's `epoch`, unless it is cached or being
    /// read.
    fn start_load(
        &self,
        at: &ChunkAt<S>,
        epoch: u64,
    ) -> Option<glommio::Task<Result<Chunk, ReadError>>> {
        if at.growing || self.reads.holds(at.first, at.next) {
            return None;
        }
        let loading = self.reads.start_loading(at.first, false, epoch);
        Some(glommio::spawn_local(load(at.clone(), loading, None)))
    }

    /// The chunks a read of `max_bytes` at `offset` may need, below `end` (at least one), and
    /// the epoch of the log they were planned in.
    fn chunks_for(&self, offset: Offset, max_bytes: usize, end: Offset) -> (Vec<ChunkAt<S>>, u64) {
        let st = self.state.borrow();
        let mut wanted: Vec<ChunkAt<S>> = Vec::new();
        let mut span = 0usize;
        let mut at = offset;
        while at < end && (wanted.is_empty() || span < max_bytes) {
            let Some(chunk) = chunk_holding(&st, at, self.limits.read_chunk_bytes) else { break };
            // The part of the first chunk before `offset` does not count towards the read.
            let before = if wanted.is_empty() { bytes_before(&chunk, offset) } else { 0 };
            span += chunk.len.saturating_sub(before);
            at = chunk.next;
            wanted.push(chunk);
        }
        (wanted, self.reads.epoch())
    }

    /// The chunk holding `next` once someone else's read of chunk `at` is done, or read now if
    /// it is not cached by then (that read failed, or the log changed, or the cache had no
    /// room), from the log as it is now. `None` when the log no longer has it in a chunk.
    async fn wait_for_chunk(
        &self,
        at: &ChunkAt<S>,
        next: Offset,
    ) -> Result<Option<Chunk>, ReadError> {
        loop {
            match self.reads.lookup(at.first, at.next) {
                Lookup::Cached(chunk) => return Ok(Some(chunk)),
                Lookup::Loading(done) => done.await,
                Lookup::Absent => break,
            }
        }
        let now = chunk_holding(&self.state.borrow(), next, self.limits.read_chunk_bytes);
        let Some(now) = now.filter(|now| !now.growing) else { return Ok(None) };
        let loading = self.reads.start_loading(now.first, false, self.reads.epoch());
        load(now, loading, None).await.map(Some)
    }

    /// Starts reading the chunks from the one holding `from` on, up to `window` bytes, that are
    /// neither cached nor being read, while the shard's budget has room for them; never the
    /// active segment's last, growing chunk.
    fn read_ahead(&self, from: Offset, window: usize) {
        let st = self.state.borrow();
        let (mut at, mut ahead) = (from, 0usize);
        while ahead < window && at < st.written_offset {
            let Some(chunk) = chunk_holding(&st, at, self.limits.read_chunk_bytes) else { break };
            if chunk.growing {
                break;
            }
            // What the reader has of the chunk holding `from` is not ahead of it.
            let before = if at == from { bytes_before(&chunk, from) } else { 0 };
            ahead += chunk.len.saturating_sub(before);
            at = chunk.next;
            if self.reads.holds(chunk.first, chunk.next) {
                continue;
            }
            let Some(reserved) = self.reads.reserve(chunk.len) else { break };
            let loading = self.reads.start_loading(chunk.first, true, self.reads.epoch());
            let log = (self.topic.clone(), self.partition);
            glommio::spawn_local(async move {
                if let Err(e) = load(chunk, loading, Some(reserved)).await {
                    // A reader that needs it reads it again and reports what it finds.
                    tracing::debug!(topic = %log.0, partition = %log.1, "reading ahead: {e}");
                }
            })
            .detach();
        }
    }
}

/// The entries from `next` in `at`'s segment, read the precise way (`read_segment`), and the
/// offset after them: all a read returns when its first chunk cannot be used as a chunk.
async fn read_precisely<S: Storage>(
    at: &ChunkAt<S>,
    next: Offset,
    max_bytes: usize,
    end: Offset,
) -> Result<(Vec<Bytes>, Offset), Failed<S>> {
    match read_segment(&at.segment, next, max_bytes, end).await {
        Ok(found) => {
            Ok(found.map_or((Vec::new(), next), |(entries, after)| (vec![entries], after)))
        }
        Err(error) => Err(Failed::Read { segment: at.segment.clone(), error }),
    }
}

/// About how many bytes of `chunk` lie before `offset`: from its start to the index point at or
/// before `offset`.
fn bytes_before<S: Storage>(chunk: &ChunkAt<S>, offset: Offset) -> usize {
    let meta = chunk.segment.meta.borrow();
    let point = meta.index.seek_offset(offset).map_or(chunk.position, |p| p.position.0);
    point.saturating_sub(chunk.position) as usize
}

/// Reads whole entries holding `offset` and after, and starting below `end`, from one segment,
/// from the index point at or before `offset` and no more than the read needs, checking every
/// checksum, uncached: for the active segment's growing chunk, and for a chunk that failed its
/// checks. Entries before a damaged one are returned; the damaged one is an error only when it
/// is the first the read needs (or lies between the index point and it). Returns the entries
/// and the offset after them; `None` when the segment holds nothing at or after `offset`.
async fn read_segment<S: Storage>(
    segment: &Segment<S>,
    offset: Offset,
    max_bytes: usize,
    end: Offset,
) -> Result<Option<(Bytes, Offset)>, ReadError> {
    let mut after = offset;
    let (start, size) = {
        let meta = segment.meta.borrow();
        if meta.next_offset <= offset {
            return Ok(None);
        }
        (meta.index.seek_offset(offset).map_or(0, |p| p.position.0), meta.size)
    };
    let len = (size - start).min((max_bytes + READ_SLACK_BYTES) as u64) as usize;
    let mut buf = segment.read(start, len).await?;
    let mut buf_start = start;
    let mut at = 0usize;
    let mut first: Option<usize> = None;
    while at < buf.len() {
        let position = buf_start + at as u64;
        // Damage past what the read already holds ends the read there: the next one, starting
        // at the damaged entry, reports it.
        let damaged = |why: String| match first {
            Some(_) => Ok(()),
            None => Err(ReadError::Corrupt { position, why }),
        };
        let header = match parse_header(&buf[at..]) {
            Ok(header) => header,
            Err(e) => {
                damaged(e.to_string())?;
                break;
            }
        };
        if header.base_offset() >= end {
            // Before the entry holding `offset` (below `end`), only a damaged header gets here.
            damaged(format!("an entry at offset {} before offset {offset}", header.base_offset()))?;
            break;
        }
        let entry_len = header.entry_len();
        if at + entry_len > buf.len() {
            if first.is_some() {
                break;
            }
            // The entry we need does not fit: read exactly it.
            buf = segment.read(position, entry_len).await?;
            buf_start = position;
            at = 0;
            continue;
        }
        if let Some(first) = first {
            if at + entry_len - first > max_bytes {
                break;
            }
        }
        if let Err(e) = parse_entry(&buf[at..at + entry_len]) {
            damaged(e.to_string())?;
            break;
        }
        if first.is_none() && header.next_offset() > offset {
            first = Some(at);
        }
        if first.is_some() {
            after = header.next_offset();
        }
        at += entry_len;
    }
    Ok(first.map(|first| (buf.slice(first..at), after)))
}
