//! The write path against real segment files: many writes in flight, rolls, and what recovery
//! keeps after a crash left entries beyond a gap.

use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::Arc;

use bytes::Bytes;

use super::{LogError, LogLimits, PartitionLog, SharedByShard};
use crate::config::TopicConfig;
use crate::log::in_place::EntryData;
use crate::log::probe;
use crate::log::queued::QueuedBytes;
use crate::log::read_cache::ReadCache;
use crate::log::segment::OpenFiles;
use crate::log::storage::DmaStorage;
use crate::log::tail_cache::TailBudget;
use crate::metrics::Metrics;
use crate::record::entry::{entries, parse_header, Check, StoredEntry, ENTRY_HEADER_BYTES};
use crate::record::{BatchMeta, PendingEntry};
use crate::types::{LeaderEpoch, Offset, PartitionId};

/// Runs `test` with a fresh partition directory, on an executor whose first DMA file is a
/// probe beside it, as a shard's is.
pub(crate) fn in_partition_dir<F>(test: impl FnOnce(PathBuf) -> F)
where
    F: std::future::Future<Output = ()> + 'static,
{
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("t-0");
    std::fs::create_dir(&path).expect("partition dir");
    probe::write_probe_file(dir.path()).expect("probe file");
    let probe_dir = dir.path().to_path_buf();
    let test = test(path);
    glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound).make().expect("executor").run(
        async move {
            probe::probe_device(&probe_dir).await;
            test.await
        },
    );
}

pub(crate) async fn open(dir: &Path, segment_bytes: u64) -> Rc<PartitionLog> {
    try_open(dir, segment_bytes).await.expect("open the partition")
}

async fn try_open(dir: &Path, segment_bytes: u64) -> std::io::Result<Rc<PartitionLog>> {
    open_with(dir, TopicConfig { segment_bytes, ..TopicConfig::default() }).await
}

async fn open_with(dir: &Path, config: TopicConfig) -> std::io::Result<Rc<PartitionLog>> {
    open_in(dir, config, ReadCache::new(64 * 1024 * 1024)).await
}

/// Opens the partition in a shard whose read cache is `read_cache`.
async fn open_in(
    dir: &Path,
    config: TopicConfig,
    read_cache: Rc<ReadCache>,
) -> std::io::Result<Rc<PartitionLog>> {
    let limits = LogLimits {
        write_bytes_max: 64 * 1024,
        // Reads come from the segment files, not from memory.
        tail_cache_bytes: 0,
        read_ahead_bytes: 8 * 1024 * 1024,
        read_chunk_bytes: crate::log::partition::READ_CHUNK_BYTES,
        staged_bytes_max: 64 * 1024 * 1024,
        producer_expiration_ms: PRODUCER_EXPIRATION_MS,
        recovery_point_bytes: RECOVERY_POINT_BYTES,
    };
    PartitionLog::open(
        "t".into(),
        PartitionId(0),
        dir.to_path_buf(),
        config,
        limits,
        SharedByShard {
            storage: DmaStorage,
            metrics: Rc::new(Metrics::default()),
            queued: Arc::new(QueuedBytes::new(usize::MAX)),
            storage_health: Arc::default(),
            tail_budget: TailBudget::new(usize::MAX),
            read_cache,
            open_files: OpenFiles::new(2),
        },
    )
    .await
}

const PRODUCER_EXPIRATION_MS: i64 = 60_000;
/// Small, so the tests' few writes make recovery points.
const RECOVERY_POINT_BYTES: u64 = 64 * 1024;

/// A payload of `len` bytes that names its entry.
pub(crate) fn payload(entry: u64, len: usize) -> Vec<u8> {
    (0..len).map(|i| (entry as usize * 7 + i) as u8 | 1).collect()
}

pub(crate) fn entry(records: u32, payload: &[u8]) -> PendingEntry {
    PendingEntry::native(BatchMeta::new(records, 1, 1), payload).expect("entry")
}

/// Appends `count` entries of `len` bytes one after another, each waited for until written;
/// returns their payloads.
async fn append_written(log: &PartitionLog, count: u64, len: usize) -> Vec<Vec<u8>> {
    let mut written = Vec::new();
    for i in 0..count {
        let data = payload(i, len);
        let appended = log.append(entry(1, &data)).expect("append");
        log.wait_written(&appended).await.expect("written");
        written.push(data);
    }
    written
}

/// The payloads of every stored entry, in order.
async fn payloads(log: &PartitionLog) -> Vec<Vec<u8>> {
    stored(log).await.into_iter().map(|(_, _, payload)| payload).collect()
}

/// Every stored entry from offset 0 on: (base offset, next offset, payload).
async fn stored(log: &PartitionLog) -> Vec<(u64, u64, Vec<u8>)> {
    let mut out = Vec::new();
    let mut offset = Offset(0);
    while offset < log.written_offset() {
        let read = log.read(offset, 1024 * 1024, Offset(u64::MAX)).await.expect("read");
        for chunk in read {
            for entry in entries(&chunk, Check::Checksum) {
                let StoredEntry { header, payload, .. } = entry.expect("a whole entry");
                out.push((header.base_offset().0, header.next_offset().0, payload.to_vec()));
                offset = header.next_offset();
            }
        }
    }
    out
}

/// Entries of 1 byte to 40 KiB appended back to back without waiting, so writes overlap and
/// shared blocks are deferred, in writes of up to 64 KiB and across rolls of 1 MiB segments: every entry reads back whole
/// and in order, before and after a restart.
#[test]
fn entries_appended_while_writes_are_in_flight_read_back_in_order() {
    in_partition_dir(|path| async move {
        let log = open(&path, 1024 * 1024).await;
        let mut expected = Vec::new();
        let mut waits = Vec::new();
        let mut size_seed = 17u64;
        for i in 0..600u64 {
            size_seed =
                size_seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            let len = 1 + (size_seed >> 33) as usize % (40 * 1024);
            let records = 1 + (i % 5) as u32;
            let appended = log.append(entry(records, &payload(i, len))).expect("append");
            expected.push((appended.base_offset.0, appended.next_offset.0, payload(i, len)));
            waits.push(appended);
            if i % 50 == 49 {
                // Let the writer catch up now and then, so some writes start from idle.
                for appended in waits.drain(..) {
                    log.wait_written(&appended).await.expect("written");
                }
            }
        }
        for appended in waits.drain(..) {
            log.wait_written(&appended).await.expect("written");
        }
        assert!(log.sealed_segments() > 3, "the appends roll segments");
        assert_eq!(stored(&log).await, expected);
        log.close().await;

        let log = open(&path, 1024 * 1024).await;
        assert_eq!(stored(&log).await, expected, "after a restart");
        log.close().await;
    });
}

/// The payload of an entry of exactly one block, so that rewriting an entry does not also pad
/// over the one after it.
const BLOCK_PAYLOAD: usize =
    crate::config::WRITE_ALIGN_BYTES - crate::record::entry::ENTRY_HEADER_BYTES;

/// A crash can leave a later write's entries on the device without the block before them.
/// Recovery ends the log at the gap and cuts what follows, so that entries appended after the
/// restart, reaching the same positions, are never followed by the stale ones.
#[test]
fn recovery_cuts_entries_left_beyond_a_gap() {
    in_partition_dir(|path| async move {
        let log = open(&path, 1 << 30).await;
        let mut ends = Vec::new();
        for i in 0..3u64 {
            let appended = log.append(entry(2, &payload(i, BLOCK_PAYLOAD))).expect("append");
            log.wait_written(&appended).await.expect("written");
            ends.push(appended.next_offset);
        }
        log.close().await;
        let entry_bytes = {
            let stored = std::fs::read(path.join("00000000000000000000.log")).expect("segment");
            parse_header(&stored).expect("header").entry_len()
        };
        // Entry 1 never reached the device; entries 0 and 2 did. No index: a crash leaves none
        // for the bytes it covers.
        let segment = path.join("00000000000000000000.log");
        let mut bytes = std::fs::read(&segment).expect("segment");
        bytes[entry_bytes..2 * entry_bytes].fill(0);
        std::fs::write(&segment, &bytes).expect("segment");
        std::fs::remove_file(path.join("00000000000000000000.index")).expect("index");

        let log = open(&path, 1 << 30).await;
        assert_eq!(log.written_offset(), ends[0]);
        // The same offsets and size as the lost entry: without the cut, the stale entry 2
        // would continue it exactly.
        let appended = log.append(entry(2, &payload(9, BLOCK_PAYLOAD))).expect("append");
        log.wait_written(&appended).await.expect("written");
        assert_eq!(appended.next_offset, ends[1]);
        log.close().await;
        std::fs::remove_file(path.join("00000000000000000000.index")).expect("index");

        let log = open(&path, 1 << 30).await;
        assert_eq!(log.written_offset(), ends[1], "the stale entry is not part of the log");
        let offsets: Vec<_> = stored(&log).await.into_iter().map(|(b, n, _)| (b, n)).collect();
        assert_eq!(offsets, vec![(0, ends[0].0), (ends[0].0, ends[1].0)]);
        log.close().await;
    });
}

/// An idempotent producer's state lives until it has not written for
/// `producer.id.expiration.ms`: a batch out of sequence is refused before, taken as new after.
#[test]
fn retention_forgets_producers_idle_past_their_expiration() {
    in_partition_dir(|path| async move {
        let log = open(&path, 1 << 30).await;
        let idempotent = |sequence: i32| {
            let meta = BatchMeta {
                producer_id: 7,
                producer_epoch: 0,
                base_sequence: sequence,
                ..BatchMeta::new(1, 1, 1)
            };
            PendingEntry::native(meta, &payload(0, 100)).expect("entry")
        };
        let appended = log.append(idempotent(0)).expect("append");
        log.wait_written(&appended).await.expect("written");
        let now = crate::now_ms();
        log.enforce_retention(now, Offset(u64::MAX)).await.expect("retention");
        assert!(log.append(idempotent(5)).is_err(), "a gap is refused while the producer is known");
        log.enforce_retention(now + PRODUCER_EXPIRATION_MS + 1_000, Offset(u64::MAX))
            .await
            .expect("retention");
        let appended = log.append(idempotent(5)).expect("a forgotten producer starts anew");
        log.wait_written(&appended).await.expect("written");
        log.close().await;
    });
}

/// A read stops before `end` (the partition layer's high watermark), though more is written.
#[test]
fn a_read_stops_at_the_end_it_is_given() {
    in_partition_dir(|path| async move {
        let log = open(&path, 1 << 30).await;
        append_written(&log, 3, 100).await;
        let whole = |read: Vec<bytes::Bytes>| -> Vec<u64> {
            let chunks = read.iter().flat_map(|chunk| entries(chunk, Check::Checksum));
            chunks.map(|e| e.expect("a whole entry").header.base_offset().0).collect()
        };
        assert_eq!(
            whole(log.read(Offset(0), 1 << 20, Offset(u64::MAX)).await.expect("read")),
            [0, 1, 2]
        );
        assert_eq!(whole(log.read(Offset(0), 1 << 20, Offset(2)).await.expect("read")), [0, 1]);
        assert_eq!(
            whole(log.read(Offset(1), 1 << 20, Offset(1)).await.expect("read")),
            Vec::<u64>::new()
        );
        log.close().await;
    });
}

/// Retention deletes no segment holding an offset at or past the offset it must keep from.
#[test]
fn retention_keeps_what_it_is_told_to_keep() {
    in_partition_dir(|path| async move {
        let tiny =
            TopicConfig { segment_bytes: 64 * 1024, retention_bytes: 1, ..TopicConfig::default() };
        let log = open_with(&path, tiny).await.expect("open");
        append_written(&log, 8, 40 * 1024).await;
        assert!(log.sealed_segments() >= 3, "{} sealed", log.sealed_segments());
        let first_sealed_end = {
            let st = log.state.borrow();
            st.segments[1].base_offset
        };
        let now = crate::now_ms();
        log.enforce_retention(now, first_sealed_end).await.expect("retention");
        assert_eq!(log.log_start(), first_sealed_end, "only the first segment was below it");
        log.enforce_retention(now, Offset(u64::MAX)).await.expect("retention");
        assert!(log.log_start() > first_sealed_end, "unbounded, retention deletes more");
        log.close().await;
    });
}

/// The inode of each segment file in `dir`, by name.
fn segment_inodes(dir: &Path) -> std::collections::BTreeMap<String, u64> {
    use std::os::unix::fs::MetadataExt;
    let entries = std::fs::read_dir(dir).expect("list the partition");
    let names = entries.map(|e| e.expect("an entry").file_name().into_string().expect("utf-8"));
    let logs = names.filter(|name| name.ends_with(".log"));
    logs.map(|name| {
        let inode = std::fs::metadata(dir.join(&name)).expect("metadata").ino();
        (name, inode)
    })
    .collect()
}

/// Once retention deletes as fast as the partition rolls, a roll gives the new segment the
/// file of the oldest segment past retention, renamed, instead of a new file; only after a
/// retention check has seen a high watermark past that segment. Every entry since reads back,
/// and a partition opened on the files as a crash left them, with the old segment's entries
/// still past the new ones, ends where the new entries end and appends after them.
#[test]
fn a_roll_reuses_the_file_of_a_segment_past_retention() {
    in_partition_dir(|path| async move {
        // Three entries of 20 KiB a segment; retention keeps 100 KiB and more, whatever their
        // time (the entries' timestamps are of 1970). Entries of exactly five blocks: a new one
        // ends where an old one begins, with no padding of zeros between them, so recovery
        // meets the old entry itself.
        let len = 20 * 1024 - ENTRY_HEADER_BYTES;
        let config = TopicConfig {
            segment_bytes: 64 * 1024,
            retention_bytes: 100 * 1024,
            retention_ms: -1,
            ..TopicConfig::default()
        };
        let log = open_with(&path, config.clone()).await.expect("open");
        let mut written = append_written(&log, 12, len).await;
        let before_check = segment_inodes(&path);
        assert_eq!(before_check.len(), 4, "{before_check:?}");
        let names: Vec<_> = before_check.keys().collect();
        assert!(names.windows(2).all(|w| before_check[w[0]] != before_check[w[1]]));

        // The first check deletes two; the roll after the next three entries finds the log
        // still within retention and a full segment, so it takes a new file.
        log.enforce_retention(crate::now_ms(), Offset(u64::MAX)).await.expect("retention");
        let start = log.log_start().0 as usize;
        written.extend(append_written(&log, 3, len).await);
        let after_check = segment_inodes(&path);
        assert_eq!(after_check.len(), 3, "{after_check:?}");
        // The two segments the check kept are still there, each in its own file (a deleted
        // file's inode number may be the new file's: ext4 hands freed numbers out again).
        let kept = before_check.iter().filter(|(name, _)| after_check.contains_key(*name));
        assert_eq!(kept.clone().count(), 2, "{before_check:?} then {after_check:?}");
        assert!(kept.into_iter().all(|(name, inode)| after_check[name] == *inode));

        // The next roll finds the oldest segment past retention: its file becomes the newest,
        // and the one new entry overwrites only the first of its old ones.
        let oldest = after_check.keys().next().expect("a segment").clone();
        written.extend(append_written(&log, 1, len).await);
        let reused = segment_inodes(&path);
        let newest = reused.keys().last().expect("a segment").clone();
        assert!(!reused.contains_key(&oldest), "{oldest} is still there: {reused:?}");
        assert_eq!(reused[&newest], after_check[&oldest], "{newest} has a new file: {reused:?}");
        let start_now = log.log_start().0 as usize;
        assert!(start_now > start, "the log start moved past the reused segment");
        assert_eq!(read_through(&log, start_now as u64, 1 << 20).await, written[start_now..]);

        // As after kill -9: the reused file's old entries follow the new one on disk.
        let reopened = open_with(&path, config).await.expect("reopen");
        assert_eq!(reopened.written_offset(), log.written_offset());
        assert_eq!(read_through(&reopened, start_now as u64, 1 << 20).await, written[start_now..]);
        written.extend(append_written(&reopened, 2, len).await);
        assert_eq!(read_through(&reopened, start_now as u64, 1 << 20).await, written[start_now..]);
        reopened.close().await;
        log.close().await;
    });
}

/// A follower moves its log start as its leader deletes: the newest segment wholly below the
/// new start stays, unread, until the next roll reuses its file.
#[test]
fn a_roll_reuses_the_file_of_a_segment_below_the_log_start() {
    in_partition_dir(|path| async move {
        let len = 20 * 1024 - ENTRY_HEADER_BYTES;
        let log = open(&path, 64 * 1024).await;
        let mut written = Vec::new();
        for i in 0..7 {
            let appended = log.append(entry(1, &payload(i, len))).expect("append");
            log.wait_synced(&appended).await.expect("synced");
            written.push(payload(i, len));
        }
        let before = segment_inodes(&path);
        assert_eq!(before.len(), 3, "{before:?}");
        let first = before.keys().next().expect("a segment").clone();
        assert_eq!(log.advance_start(Offset(4)).await, Ok(Offset(4)));
        assert!(segment_inodes(&path).contains_key(&first), "kept for the next roll");

        // Entries 7 and 8 fill the active segment; 9 rolls into the first one's file.
        written.extend(append_written(&log, 3, len).await);
        let after = segment_inodes(&path);
        let newest = after.keys().last().expect("a segment");
        assert!(!after.contains_key(&first), "{after:?}");
        assert_eq!(after[newest], before[&first], "{newest} has a new file: {after:?}");
        assert_eq!(read_through(&log, 4, 1 << 20).await, written[4..]);
        log.close().await;
    });
}

/// Bytes the file at `path` occupies on the device (as `du` counts them).
fn disk_bytes(path: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path).expect("metadata").blocks() * 512
}

/// The disk a partition holds follows its data: a new one preallocates one small step, a hot
/// one grows its steps, and a partition idle since the last retention check gives back all it
/// held past its data; every entry reads back before and after, and across a restart.
#[test]
fn an_idle_partition_gives_back_its_preallocation() {
    use crate::log::segment::{PREALLOCATE_STEP_MAX_BYTES, PREALLOCATE_STEP_MIN_BYTES};
    in_partition_dir(|path| async move {
        let segment = path.join("00000000000000000000.log");
        let log = open(&path, 1 << 30).await;
        assert!(
            disk_bytes(&segment) <= PREALLOCATE_STEP_MIN_BYTES,
            "a new partition holds {} bytes",
            disk_bytes(&segment)
        );
        let mut written = append_written(&log, 64, 64 * 1024).await;
        let data_bytes = log.state.borrow().active().meta.borrow().size;
        let step = log.state.borrow().active().preallocate_step().bytes();
        assert!(step > PREALLOCATE_STEP_MIN_BYTES, "steps grow while a partition is hot: {step}");
        let hot = disk_bytes(&segment);
        assert!(hot <= data_bytes + PREALLOCATE_STEP_MAX_BYTES, "{hot}");

        let now = crate::now_ms();
        log.enforce_retention(now, Offset(u64::MAX)).await.expect("retention");
        log.enforce_retention(now, Offset(u64::MAX)).await.expect("retention");
        // Its data's blocks, and one for the file's extent tree (ext4 keeps it outside the inode
        // once a file has more than four extents).
        let idle_bytes_max = data_bytes.next_multiple_of(4096) + 4096;
        // The writer trims in its own task: wait (bounded) for it.
        for _ in 0..500 {
            if disk_bytes(&segment) <= idle_bytes_max {
                break;
            }
            glommio::timer::sleep(std::time::Duration::from_millis(10)).await;
        }
        let idle = disk_bytes(&segment);
        assert!(idle <= idle_bytes_max, "idle: {idle} bytes on disk for {data_bytes} of data");
        let read = payloads(&log).await;
        assert_eq!(read, written);

        // Written to again after the trim: the next write allocates afresh.
        let data = payload(99, 1000);
        let appended = log.append(entry(1, &data)).expect("append");
        log.wait_written(&appended).await.expect("written");
        written.push(data);
        log.close().await;
        let log = open(&path, 1 << 30).await;
        let read = payloads(&log).await;
        assert_eq!(read, written);
        log.close().await;
    });
}

/// Files under `dir` this process holds open.
fn open_files_in(dir: &Path) -> usize {
    std::fs::read_dir("/proc/self/fd")
        .expect("/proc/self/fd")
        .filter_map(|fd| std::fs::read_link(fd.ok()?.path()).ok())
        .filter(|target| target.starts_with(dir))
        .count()
}

/// Files under `dir` open once those being closed are: glommio closes a dropped file through
/// its reactor, and a closed partition's tasks drop their handles as they finish, so this waits
/// (bounded) for the count to fall to `expected` before reporting it.
async fn open_files_settled(dir: &Path, expected: usize) -> usize {
    for _ in 0..200 {
        if open_files_in(dir) <= expected {
            break;
        }
        glommio::timer::sleep(std::time::Duration::from_millis(10)).await;
    }
    open_files_in(dir)
}

/// A partition with many sealed segments keeps at most the shard's bound of their files open:
/// reading through all of them closes the ones read longest ago, every entry reads back, a
/// closed partition holds none, and a reopened one stays within the bound too.
#[test]
fn sealed_segment_files_stay_within_the_shards_bound() {
    in_partition_dir(|path| async move {
        let log = open(&path, 64 * 1024).await;
        let written = append_written(&log, 40, 20 * 1024).await;
        assert!(log.sealed_segments() >= 10, "{} sealed segments", log.sealed_segments());
        let read = payloads(&log).await;
        assert_eq!(read, written);
        assert_eq!(log.open_files.open_count(), 2, "the bound of the test's shard");
        let held = open_files_settled(&path, 3).await;
        assert!(held <= 3, "{held} files open: two sealed and the active one at most");
        log.close().await;
        drop(log);
        assert_eq!(open_files_settled(&path, 0).await, 0, "a closed partition holds no file");

        let log = open(&path, 64 * 1024).await;
        // Opening reads the newest sealed segments (idempotent producers' state), no more.
        let held = open_files_settled(&path, 3).await;
        assert!(held <= 3, "{held} files open after a restart");
        let read = payloads(&log).await;
        assert_eq!(read, written);
        let held = open_files_settled(&path, 3).await;
        assert!(held <= 3, "{held} files open");
        log.close().await;
    });
}

/// Regression: producer state was rebuilt from the active segment only, so a batch retried
/// after a roll and a restart was stored a second time. The rebuild now reaches back across
/// segments.
#[test]
fn a_retry_across_a_roll_and_a_restart_is_recognised() {
    in_partition_dir(|path| async move {
        let batch = |producer_id: i64, sequence: i32| {
            let meta = BatchMeta {
                producer_id,
                producer_epoch: 0,
                base_sequence: sequence,
                ..BatchMeta::new(1, 1, 1)
            };
            PendingEntry::native(meta, &payload(producer_id as u64, 600)).expect("entry")
        };
        // Segments of one entry: producer 7's batch ends the first segment, producer 8's rolls.
        let log = open(&path, 1000).await;
        let first = log.append(batch(7, 0)).expect("append");
        log.wait_written(&first).await.expect("written");
        let other = log.append(batch(8, 0)).expect("append");
        log.wait_written(&other).await.expect("written");
        assert_eq!(log.sealed_segments(), 1, "producer 7's batch is in a sealed segment");
        log.close().await;
        drop(log);

        let log = open(&path, 1000).await;
        let end = log.written_offset();
        let retried = log.append(batch(7, 0)).expect("a retry is answered");
        assert_eq!(retried.base_offset, first.base_offset, "answered with the original offset");
        assert_eq!(log.written_offset(), end, "and not stored again");
        log.close().await;
    });
}

/// Reads every stored payload from `from`, `max_bytes` at a time, as a consumer catching up.
async fn read_through(log: &PartitionLog, from: u64, max_bytes: usize) -> Vec<Vec<u8>> {
    let (mut out, mut offset) = (Vec::new(), Offset(from));
    while offset < log.written_offset() {
        let read = log.read(offset, max_bytes, Offset(u64::MAX)).await.expect("read");
        for chunk in read {
            for entry in entries(&chunk, Check::Checksum) {
                let StoredEntry { header, payload, .. } = entry.expect("a whole entry");
                out.push(payload.to_vec());
                offset = header.next_offset();
            }
        }
    }
    out
}

/// A reader fetching sequentially gets the next chunks read before it asks; a second reader of
/// the same range is served from memory; neither gets more than the log holds.
#[test]
fn sequential_readers_are_read_ahead_of_and_share_what_was_read() {
    in_partition_dir(|path| async move {
        let cache = ReadCache::new(64 * 1024 * 1024);
        let config = TopicConfig { segment_bytes: 1 << 30, ..TopicConfig::default() };
        let log = open_in(&path, config, cache.clone()).await.expect("open");
        // 4 MB: eight chunks.
        let written = append_written(&log, 200, 20 * 1024).await;
        assert_eq!(read_through(&log, 0, 64 * 1024).await, written);
        let first = cache.stats();
        assert!(first.read_ahead >= 6 && first.read_ahead_used >= 6, "{first}");
        assert!(first.misses <= 2, "the reader waited for what was read ahead: {first}");
        // A second group: every chunk from memory, nothing read again or ahead.
        assert_eq!(read_through(&log, 0, 1024 * 1024).await, written);
        let second = cache.stats();
        assert_eq!((second.misses, second.read_ahead), (first.misses, first.read_ahead));
        assert!(second.hits > first.hits, "{second}");
        log.close().await;
    });
}

/// A read of no bytes still gets the entry holding its offset, whole (a follower's fetch can ask
/// for what is left of its response's limit, which may be nothing).
#[test]
fn a_read_of_zero_bytes_returns_one_whole_entry() {
    in_partition_dir(|path| async move {
        let log = open(&path, 1 << 30).await;
        let written = append_written(&log, 40, 20 * 1024).await;
        for at in [0u64, 17, 39] {
            let read = log.read(Offset(at), 0, Offset(u64::MAX)).await.expect("read");
            let found: Vec<_> = read
                .iter()
                .flat_map(|chunk| entries(chunk, Check::Checksum))
                .map(|entry| entry.expect("whole").payload.to_vec())
                .collect();
            assert_eq!(found, vec![written[at as usize].clone()], "at {at}");
        }
        log.close().await;
    });
}

/// A byte flipped inside a sealed segment (its index intact, so no start rescans it) is reported
/// to the reader that reaches it, never served nor cached, while the entries before and after
/// it are still served, sequential readers and their reads ahead notwithstanding. (Each entry
/// here is an index point: a read resumes past damage from the next index point, as before the
/// read cache.)
#[test]
fn a_corrupt_entry_in_a_sealed_segment_is_reported_and_its_neighbours_served() {
    in_partition_dir(|path| async move {
        let config = TopicConfig { segment_bytes: 2 << 20, ..TopicConfig::default() };
        let log = open_with(&path, config.clone()).await.expect("open");
        let written = append_written(&log, 200, 20 * 1024).await;
        let damaged = 60u64;
        let position = {
            let st = log.state.borrow();
            let segment = st.segments.front().expect("a segment");
            assert!(segment.meta.borrow().next_offset > Offset(damaged), "in the first segment");
            let point = segment.meta.borrow().index.seek_offset(Offset(damaged));
            let point = point.expect("an index point");
            assert_eq!(point.offset, Offset(damaged), "each 20 KiB entry is an index point");
            point.position.0
        };
        log.close().await;
        drop(log);
        let file = path.join("00000000000000000000.log");
        let mut bytes = std::fs::read(&file).expect("the segment");
        bytes[position as usize + 1000] ^= 0x40;
        std::fs::write(&file, bytes).expect("the damaged segment");

        let log = open_with(&path, config).await.expect("open");
        for max_bytes in [64 * 1024, 1024 * 1024] {
            // A sequential reader gets everything before the damage, then the error.
            let mut offset = Offset(0);
            let error = loop {
                match log.read(offset, max_bytes, Offset(u64::MAX)).await {
                    Ok(read) => {
                        for chunk in read {
                            for entry in entries(&chunk, Check::Checksum) {
                                let StoredEntry { header, payload, .. } = entry.expect("whole");
                                let at = header.base_offset().0 as usize;
                                assert_eq!(payload, &written[at][..], "entry {at}");
                                offset = header.next_offset();
                            }
                        }
                    }
                    Err(e) => break e,
                }
            };
            assert_eq!(offset, Offset(damaged), "served up to the damaged entry");
            assert!(matches!(error, LogError::Corrupt(_)), "{error:?}");
            // Past it, the log reads on.
            let read = log.read(Offset(damaged + 1), max_bytes, Offset(u64::MAX)).await;
            let read = read.expect("the entries after the damaged one");
            let first = entries(&read[0], Check::Checksum).next().expect("an entry");
            assert_eq!(first.expect("whole").payload, &written[damaged as usize + 1][..]);
        }
        log.close().await;
    });
}

/// Readers that jump about get nothing read ahead, and the cache stays within its budget.
#[test]
fn random_readers_get_no_read_ahead_and_the_cache_keeps_its_budget() {
    in_partition_dir(|path| async move {
        let cache = ReadCache::new(1024 * 1024);
        let config = TopicConfig { segment_bytes: 1 << 30, ..TopicConfig::default() };
        let log = open_in(&path, config, cache.clone()).await.expect("open");
        let written = append_written(&log, 200, 20 * 1024).await;
        for at in [150u64, 20, 180, 60, 120, 5, 99, 170, 35] {
            let read = log.read(Offset(at), 16 * 1024, Offset(u64::MAX)).await.expect("read");
            let first = entries(&read[0], Check::Checksum).next().expect("an entry");
            assert_eq!(first.expect("whole").payload, &written[at as usize][..]);
        }
        assert_eq!(cache.stats().read_ahead, 0, "{}", cache.stats());
        // A sequential reader of all of it, through a budget of a quarter of it.
        assert_eq!(read_through(&log, 0, 256 * 1024).await, written);
        let stats = cache.stats();
        assert!(stats.read_ahead > 0 && stats.peak_bytes <= 1024 * 1024, "{stats}");
        log.close().await;
    });
}

/// A read that reaches a segment retention deleted meanwhile (its file closed, so it would have
/// to reopen a path that is gone) answers "out of range", never a storage error or another
/// file's bytes.
#[test]
fn a_read_of_a_segment_deleted_meanwhile_is_out_of_range() {
    in_partition_dir(|path| async move {
        let log = open(&path, 64 * 1024).await;
        append_written(&log, 40, 20 * 1024).await;
        // Read everything: the test shard keeps two sealed files open, so the oldest is closed.
        stored(&log).await;
        let oldest = log.state.borrow().segments.front().cloned().expect("a segment");
        let chunk_bytes = super::READ_CHUNK_BYTES;
        let at = super::reads::chunk_holding(&log.state.borrow(), oldest.base_offset, chunk_bytes)
            .expect("a chunk of the oldest segment");
        let next = oldest.meta.borrow().next_offset;
        assert_eq!(log.delete_segments_below(next).await.expect("retention"), 1);
        let loading = log.reads.start_loading(oldest.base_offset, false, log.reads.epoch());
        let error = super::reads::load(at, loading, None)
            .await
            .map(|_| ())
            .map_err(|e| log.read_error(&oldest, oldest.base_offset, e));
        assert!(matches!(error, Err(super::LogError::OffsetOutOfRange { .. })), "{error:?}");
        log.close().await;
    });
}

/// Recovery points: with only acks=1 producers (no fdatasync asked for), the writer still has
/// the active segment synced and its index written every `recovery_point_bytes`, covering only
/// what was synced; a partition opened on the files as a crash left them (no clean stop) starts
/// from that index and reads every entry back.
#[test]
fn recovery_points_bound_what_a_crash_leaves_to_scan() {
    in_partition_dir(|path| async move {
        let log = open(&path, 1 << 30).await;
        let written = append_written(&log, 40, 20 * 1024).await;
        let index_file = path.join("00000000000000000000.index");
        let mut covered = 0;
        for _ in 0..500 {
            // The syncer and then the writer make the point in their own tasks: wait (bounded).
            if let Ok(bytes) = std::fs::read(&index_file) {
                let (_, facts) = crate::log::index::decode(&bytes, 0).expect("a whole index");
                covered = facts.covered_bytes;
            }
            if covered + 2 * RECOVERY_POINT_BYTES >= 40 * 20 * 1024 {
                break;
            }
            glommio::timer::sleep(std::time::Duration::from_millis(10)).await;
        }
        let size = log.state.borrow().active().meta.borrow().size;
        assert!(
            covered > 0 && covered <= size && size - covered <= 2 * RECOVERY_POINT_BYTES,
            "the index on disk covers {covered} of {size} bytes"
        );
        // As after kill -9: the same files opened again without a clean stop.
        let reopened = open(&path, 1 << 30).await;
        let read = payloads(&reopened).await;
        assert_eq!(read, written);
        reopened.close().await;
        log.close().await;
    });
}

/// On real segment files: a truncation into an older segment removes the newer ones and cuts
/// the one holding the offset at the entry that holds it; appends continue from there, and a
/// restart finds exactly that log.
#[test]
fn a_truncation_across_segments_cuts_at_the_entry_holding_the_offset() {
    in_partition_dir(|dir| async move {
        let log = open(&dir, 64 * 1024).await;
        // Entries of 3 records, 10 KiB each: six to a segment, so 20 make four segments.
        let mut kept = Vec::new();
        for i in 0..20 {
            let data = payload(i, 10 * 1024);
            let appended = log.append(entry(3, &data)).expect("append");
            log.wait_written(&appended).await.expect("written");
            kept.push((appended.base_offset.0, appended.next_offset.0, data));
        }
        assert!(log.sealed_segments() >= 3, "{} sealed segments", log.sealed_segments());
        // Read once: the read cache holds what the truncation removes, and must let it go.
        assert_eq!(stored(&log).await, kept);
        // Offset 22 is inside the entry 21..24 (the eighth, in the second segment).
        assert_eq!(log.truncate_to(Offset(22)).await, Ok(Offset(21)));
        assert_eq!((log.log_end(), log.written_offset()), (Offset(21), Offset(21)));
        assert_eq!(log.sealed_segments(), 1, "the third and fourth segments are gone");
        kept.truncate(7);
        assert_eq!(stored(&log).await, kept);
        let data = payload(99, 100);
        let appended = log.append(entry(1, &data)).expect("append after the truncation");
        assert_eq!(appended.base_offset, Offset(21));
        log.wait_synced(&appended).await.expect("synced");
        kept.push((21, 22, data));
        assert_eq!(stored(&log).await, kept, "the new entry, not the removed one cached");
        log.close().await;
        let log = open(&dir, 64 * 1024).await;
        assert_eq!(stored(&log).await, kept);
        // At or past the end: nothing to do. Below the log start: refused.
        assert_eq!(log.truncate_to(Offset(500)).await, Ok(Offset(22)));
        log.delete_segments_below(Offset(21)).await.expect("delete");
        assert!(matches!(log.truncate_to(Offset(3)).await, Err(LogError::OffsetOutOfRange { .. })));
        log.close().await;
    });
}

/// DeleteRecords (KIP-107): the log start moves inside a segment, never past what is synced;
/// reads below it are out of range at once, the segments wholly below it go (the newest of
/// them at the next roll or retention check), a restart keeps it
/// (even with the segments all there, as a crash after its record and before their deletion
/// leaves them), and a truncation below it brings it down with the log's end.
#[test]
fn a_log_start_moved_by_delete_records_holds_across_a_restart() {
    in_partition_dir(|dir| async move {
        let log = open(&dir, 64 * 1024).await;
        // Entries of 3 records, 10 KiB each: six to a segment.
        for i in 0..20 {
            let appended = log.append(entry(3, &payload(i, 10 * 1024))).expect("append");
            log.wait_synced(&appended).await.expect("synced");
        }
        let sealed = log.sealed_segments();
        assert_eq!(log.advance_start(Offset(25)).await, Ok(Offset(25)));
        assert_eq!(log.log_start(), Offset(25));
        // The first segment (offsets 0 to 17) stays for the next roll to reuse its file, until
        // a retention check, which deletes it whatever it is told to keep.
        assert_eq!(log.sealed_segments(), sealed);
        log.enforce_retention(crate::now_ms(), Offset(0)).await.expect("retention");
        assert_eq!(log.sealed_segments(), sealed - 1, "the first segment went");
        assert!(matches!(
            log.read(Offset(24), 1 << 20, log.log_end()).await,
            Err(LogError::OffsetOutOfRange { .. })
        ));
        // From 25 on: the entry holding it (24..27) comes whole, as Kafka serves a batch.
        let read = log.read(Offset(25), 1 << 20, log.log_end()).await.expect("read");
        let first = read.first().and_then(|chunk| entries(chunk, Check::Checksum).next());
        let first = first.and_then(Result::ok).map(|e| e.header.base_offset());
        assert_eq!(first, Some(Offset(24)));
        assert_eq!(log.advance_start(Offset(10)).await, Ok(Offset(25)), "never back");
        log.close().await;
        let log = open(&dir, 64 * 1024).await;
        assert_eq!(log.log_start(), Offset(25), "kept across a restart");
        log.close().await;
        // A record that got to the disk before the deletion of the segments below it (a crash
        // between the two): the segments from 18 on are all there, and the record holds.
        let record = dir.join(crate::log::log_start::LOG_START_FILE);
        std::fs::write(&record, "0\n40\n").expect("write");
        let log = open(&dir, 64 * 1024).await;
        assert_eq!(log.log_start(), Offset(40));
        assert!(matches!(
            log.read(Offset(39), 1 << 20, log.log_end()).await,
            Err(LogError::OffsetOutOfRange { .. })
        ));
        // Never past the synced end.
        assert_eq!(log.advance_start(Offset(9_999)).await, Ok(Offset(60)));
        log.close().await;
        let log = open(&dir, 64 * 1024).await;
        assert_eq!((log.log_start(), log.log_end()), (Offset(60), Offset(60)));
        log.close().await;
        // A record past the log's end (the log cut back since): the log starts at its end.
        std::fs::write(&record, "0\n70\n").expect("write");
        let log = open(&dir, 64 * 1024).await;
        assert_eq!((log.log_start(), log.log_end()), (Offset(60), Offset(60)));
        log.close().await;
    });
}

/// A follower that starts over at its leader's log start where that lies inside an entry
/// starts at the entry's base, keeping its start: the entry the leader sends whole is taken,
/// and the records below the start stay out of reach, across a restart too.
#[test]
fn a_log_started_over_inside_an_entry_keeps_its_start() {
    in_partition_dir(|dir| async move {
        let log = open(&dir, 64 * 1024).await;
        assert_eq!(log.start_over_within(Offset(24), Offset(25)).await, Ok(Offset(24)));
        assert_eq!((log.log_start(), log.log_end()), (Offset(24), Offset(24)), "nothing yet");
        let (from_leader, _) = entry(3, b"24 to 26").seal(Offset(24), LeaderEpoch(2));
        let appended = log.append_at(from_leader.into()).expect("the entry holding the start");
        log.wait_synced(&appended).await.expect("synced");
        assert_eq!((log.log_start(), log.log_end()), (Offset(25), Offset(27)));
        let below = log.read(Offset(24), 1024, Offset(u64::MAX)).await;
        assert!(matches!(below, Err(LogError::OffsetOutOfRange { .. })), "{below:?}");
        log.close().await;
        let log = open(&dir, 64 * 1024).await;
        assert_eq!((log.log_start(), log.log_end()), (Offset(25), Offset(27)));
        log.close().await;
    });
}

/// A follower whose log ends before its leader's log start empties its log and starts it
/// again there (Kafka's truncateFullyAndStartAt): every entry, epoch and producer goes, reads
/// below are out of range, the leader's entries continue it, and a restart finds it so.
#[test]
fn a_log_started_over_at_an_offset_continues_from_there_across_a_restart() {
    in_partition_dir(|dir| async move {
        let log = open(&dir, 64 * 1024).await;
        for i in 0..14 {
            let data = payload(i, 10 * 1024);
            let appended = log.append(entry(3, &data)).expect("append");
            log.wait_written(&appended).await.expect("written");
        }
        log.assign_epoch(LeaderEpoch(2), log.log_end()).await.expect("an epoch");
        assert!(log.sealed_segments() >= 2);
        let truncations = log.truncations();
        assert_eq!(log.start_over_at(Offset(500)).await, Ok(Offset(500)));
        assert_eq!(
            (log.log_start(), log.log_end(), log.written_offset(), log.synced_offset()),
            (Offset(500), Offset(500), Offset(500), Offset(500))
        );
        assert_eq!(log.sealed_segments(), 0);
        assert!(log.leader_epochs().is_empty(), "epochs go with the entries");
        assert!(log.truncations() > truncations, "readers see the log cut");
        let below = log.read(Offset(10), 1024, Offset(u64::MAX)).await;
        assert!(matches!(below, Err(LogError::OffsetOutOfRange { .. })), "{below:?}");
        let (from_leader, _) = entry(2, b"from the leader").seal(Offset(500), LeaderEpoch(7));
        let appended = log.append_at(from_leader.into()).expect("the leader's next entry");
        assert_eq!((appended.base_offset, appended.next_offset), (Offset(500), Offset(502)));
        log.wait_synced(&appended).await.expect("synced");
        log.close().await;
        let log = open(&dir, 64 * 1024).await;
        assert_eq!((log.log_start(), log.log_end()), (Offset(500), Offset(502)));
        let read = log.read(Offset(500), 1024, Offset(u64::MAX)).await.expect("read");
        let entries: Vec<_> =
            read.iter().flat_map(|chunk| entries(chunk, Check::Checksum)).collect();
        assert_eq!(entries.len(), 1);
        let epochs: Vec<_> =
            log.leader_epochs().iter().map(|e| (e.epoch.0, e.start_offset.0)).collect();
        assert_eq!(epochs, [(7, 500)]);
        log.close().await;
    });
}

/// A follower's entries received in place (`log::in_place`) are written from their own buffer
/// where the log ends mid-block, and copied where the guess of where they go missed (a leader's
/// append landed first, or the segment rolled): every entry reads back whole and in order,
/// after a restart too.
#[test]
fn entries_received_in_place_are_written_from_their_buffer_where_the_log_ends() {
    in_partition_dir(|path| async move {
        let log = open(&path, 64 * 1024).await;
        let mut expected = append_written(&log, 1, 1000).await;
        let (mut from_own_buffer, mut copied) = (0, 0);
        for round in 0..40u64 {
            let datas: Vec<Vec<u8>> = (0..1 + round % 4)
                .map(|i| payload(round * 10 + i, 300 + (round * 977 + i * 1531) as usize % 6000))
                .collect();
            // An entry's length does not depend on its offsets.
            let lens: Vec<usize> = datas
                .iter()
                .map(|data| entry(1, data).seal(Offset(0), LeaderEpoch(1)).0.len())
                .collect();
            let len = lens.iter().sum();
            let mut buffer = log.receive_buffer(len).expect("a receive buffer");
            // One round in five, an entry of the log's own lands between the receive and the
            // append: the received entries are not where they were expected.
            let spoiled = round % 5 == 4;
            if spoiled {
                expected.extend(append_written(&log, 1, 777).await);
            }
            let mut next = log.log_end();
            for data in datas {
                let (sealed, _) = entry(1, &data).seal(next, LeaderEpoch(1));
                next = next.plus(1);
                buffer.receive(&sealed);
                expected.push(data);
            }
            let run = EntryData::InPlace { run: buffer.into_run(), range: 0..len };
            let mut at = 0;
            let mut last = None;
            for len in lens {
                last = Some(log.append_at(run.slice(at..at + len)).expect("a follower's append"));
                at += len;
            }
            log.wait_written(&last.expect("appended")).await.expect("written");
            // The writer takes a run's buffer only to write from it.
            match run.with_bytes(|_| ()) {
                None => from_own_buffer += 1,
                Some(()) => copied += 1,
            }
            assert!(
                !spoiled || run.with_bytes(|_| ()).is_some(),
                "round {round}: written in place after another entry"
            );
        }
        assert!(from_own_buffer >= 20, "in place {from_own_buffer}, copied {copied}");
        assert!(copied >= 8, "in place {from_own_buffer}, copied {copied}");
        assert_eq!(payloads(&log).await, expected);
        log.close().await;
        let log = open(&path, 64 * 1024).await;
        assert_eq!(payloads(&log).await, expected, "after a restart");
        log.close().await;
    });
}

/// A follower's append takes an entry as the leader stored it, only where the log ends, and
/// only whole.
#[test]
fn a_followers_append_continues_the_log_with_whole_entries_only() {
    in_partition_dir(|dir| async move {
        let log = open(&dir, 1024 * 1024).await;
        append_written(&log, 2, 100).await;
        let (at_end, _) = entry(2, b"from the leader").seal(Offset(2), LeaderEpoch(4));
        let (too_far, _) = entry(1, b"from the leader").seal(Offset(5), LeaderEpoch(4));
        let mut damaged = at_end.to_vec();
        damaged[ENTRY_HEADER_BYTES + 3] ^= 1;
        assert_eq!(
            log.append_at(too_far.into()).err(),
            Some(LogError::NotNextOffset { next_offset: Offset(2), entry_base_offset: Offset(5) })
        );
        assert!(matches!(log.append_at(Bytes::from(damaged).into()), Err(LogError::Corrupt(_))));
        let mut two = at_end.to_vec();
        two.extend_from_slice(&at_end);
        assert!(matches!(log.append_at(Bytes::from(two).into()), Err(LogError::Corrupt(_))));
        assert!(log.leader_epochs().is_empty(), "refused entries bring no epoch");
        let appended = log.append_at(at_end.into()).expect("the next entry");
        assert_eq!((appended.base_offset, appended.next_offset), (Offset(2), Offset(4)));
        let epochs: Vec<_> =
            log.leader_epochs().iter().map(|e| (e.epoch.0, e.start_offset.0)).collect();
        assert_eq!(epochs, [(4, 2)], "the leader's epoch came with its entry");
        log.wait_written(&appended).await.expect("written");
        let stored = stored(&log).await;
        assert_eq!(stored.last(), Some(&(2, 4, b"from the leader".to_vec())));
        log.close().await;
    });
}

/// A follower that has moved past a leader (it leads a newer epoch now, or follows a newer
/// leader) takes no entry of the old leader's epoch: it would undo the newer epoch's start.
/// And an epoch recorded at the log end without entries (one this replica led briefly) goes
/// with a truncation to the end, as Kafka's truncateTo drops it: kept, the follower would
/// fetch with an epoch its new leader never had, and be told where the logs part forever.
#[test]
fn a_follower_refuses_an_older_epochs_entries_and_truncating_to_its_end_drops_an_empty_epoch() {
    in_partition_dir(|dir| async move {
        let log = open(&dir, 1024 * 1024).await;
        let (first, _) = entry(2, b"epoch 4").seal(Offset(0), LeaderEpoch(4));
        log.append_at(first.into()).expect("the leader's entry");
        log.assign_epoch(LeaderEpoch(6), Offset(2)).await.expect("led epoch 6");
        let (stale, _) = entry(1, b"epoch 5").seal(Offset(2), LeaderEpoch(5));
        assert_eq!(
            log.append_at(stale.into()).err(),
            Some(LogError::InvalidEpoch { epoch: LeaderEpoch(5), start_offset: Offset(2) })
        );
        let starts: Vec<_> =
            log.leader_epochs().iter().map(|e| (e.epoch.0, e.start_offset.0)).collect();
        assert_eq!(starts, [(4, 0), (6, 2)], "epoch 6's start kept");
        // Epoch 6 never had an entry; the next leader answers that the logs part at 2.
        assert_eq!(log.truncate_to(Offset(2)).await, Ok(Offset(2)));
        let starts: Vec<_> =
            log.leader_epochs().iter().map(|e| (e.epoch.0, e.start_offset.0)).collect();
        assert_eq!(starts, [(4, 0)], "the empty epoch at the end went");
        log.close().await;
        let log = open(&dir, 1024 * 1024).await;
        assert_eq!(log.latest_epoch(), Some(LeaderEpoch(4)), "and stays gone after a restart");
        log.close().await;
    });
}

/// Leader epochs on real files: an assigned epoch survives a restart, a truncation removes the
/// epochs it cut (and a restart agrees), and a checkpoint of a newer version stops the
/// partition from opening, naming the file, rather than be rewritten.
#[test]
fn leader_epochs_are_durable_and_follow_truncation() {
    in_partition_dir(|dir| async move {
        let log = open(&dir, 1024 * 1024).await;
        log.assign_epoch(LeaderEpoch(0), Offset(0)).await.expect("epoch 0");
        append_written(&log, 5, 100).await;
        log.assign_epoch(LeaderEpoch(3), Offset(5)).await.expect("epoch 3");
        append_written(&log, 5, 100).await;
        assert!(matches!(
            log.assign_epoch(LeaderEpoch(4), Offset(11)).await,
            Err(LogError::InvalidEpoch { .. })
        ));
        assert!(matches!(
            log.assign_epoch(LeaderEpoch(-2), Offset(0)).await,
            Err(LogError::InvalidEpoch { .. })
        ));
        assert_eq!(log.epoch_end_offset(LeaderEpoch(0)), Some((LeaderEpoch(0), Offset(5))));
        assert_eq!(log.epoch_end_offset(LeaderEpoch(3)), Some((LeaderEpoch(3), Offset(10))));
        log.close().await;

        let log = open(&dir, 1024 * 1024).await;
        let starts: Vec<_> =
            log.leader_epochs().iter().map(|e| (e.epoch.0, e.start_offset.0)).collect();
        assert_eq!(starts, [(0, 0), (3, 5)]);
        assert_eq!(log.truncate_to(Offset(4)).await, Ok(Offset(4)));
        let starts: Vec<_> =
            log.leader_epochs().iter().map(|e| (e.epoch.0, e.start_offset.0)).collect();
        assert_eq!(starts, [(0, 0)], "epoch 3 started past the new end");
        assert_eq!(
            log.epoch_end_offset(LeaderEpoch(0)),
            Some((LeaderEpoch(0), Offset(4))),
            "the latest epoch ends at the log end"
        );
        assert_eq!(
            log.epoch_end_offset(LeaderEpoch(3)),
            None,
            "an epoch newer than any is undefined"
        );
        log.close().await;

        let log = open(&dir, 1024 * 1024).await;
        assert_eq!(log.leader_epochs().len(), 1);
        log.close().await;
        std::fs::write(dir.join(crate::log::epochs::CHECKPOINT_FILE), "1\n0\n").expect("write");
        let refused = try_open(&dir, 1024 * 1024).await;
        let why = refused.err().map(|e| e.to_string()).unwrap_or_default();
        assert!(why.contains("leader-epoch-checkpoint") && why.contains("newer build"), "{why}");
        // A checkpoint far larger than any this build writes is not read whole, and said so.
        let huge = std::fs::File::create(dir.join(crate::log::epochs::CHECKPOINT_FILE));
        huge.and_then(|f| f.set_len(1 << 30)).expect("a sparse 1 GiB checkpoint");
        let refused = try_open(&dir, 1024 * 1024).await;
        let why = refused.err().map(|e| e.to_string()).unwrap_or_default();
        assert!(why.contains("leader-epoch-checkpoint") && why.contains("more than"), "{why}");
    });
}
