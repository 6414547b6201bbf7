//! Crash safety: `kill -9` under load, torn and corrupt segment tails, flipped bytes in sealed
//! segments, and garbage, missing or foreign index files.

mod common;

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::io::{Seek, SeekFrom, Write};
use std::rc::Rc;
use std::time::Duration;

use common::{connect, produce, read_all, record, run, Broker};
use spate::native::messages::{Acks, OFFSET_LATEST};
use spate::record::OwnedRecord;

const PARTITIONS: u32 = 4;
const CYCLES: u64 = 5;

/// A record carrying its producer-side sequence number, then up to `pad_max` bytes more.
fn sequenced(partition: u32, seq: u64, pad_max: u64) -> OwnedRecord {
    let mut value = seq.to_le_bytes().to_vec();
    value.resize(8 + (seq * 131 % (pad_max + 1)) as usize, 0xa5);
    OwnedRecord { value: Some(value), ..record(partition, seq) }
}

fn seq_of(record: &OwnedRecord) -> u64 {
    let value = record.value.as_deref().unwrap();
    u64::from_le_bytes(value[..8].try_into().unwrap())
}

/// A small deterministic generator, so a failure names the seed that reproduces it.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

/// One producer per partition, awaiting each acknowledgement: every write starts from an idle
/// writer and ends in an fdatasync.
#[test]
fn kill_9_during_acks_all_produce_loses_no_acknowledged_record() {
    kill_9_during_produce(Acks::All, 1, 0);
}

/// Eight batches of up to 200 KiB in flight per partition: the writer keeps two writes in
/// flight and defers the blocks they share, and an acknowledgement means only that the write
/// completed, so a crash lands between writes completing out of order.
#[test]
fn kill_9_during_pipelined_acks_1_produce_loses_no_acknowledged_record() {
    kill_9_during_produce(Acks::Leader, 8, 4096);
}

/// Produces sequence-numbered records to every partition, `in_flight` batches at a time per
/// partition on one connection (so they are appended in sequence), kills the broker with
/// SIGKILL at a random moment, restarts it, and checks that every acknowledged record is stored
/// at its acknowledged offset and that the log never holds a sequence number twice or out of
/// order. Five cycles.
fn kill_9_during_produce(acks: Acks, in_flight: usize, pad_max: u64) {
    let seed = std::env::var("SPATE_TEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x5eed_1234u64);
    let mut rng = Rng(seed);
    let dir = tempfile::tempdir().unwrap();
    let mut broker = Broker::start(&dir.path().join("data"), &[]);
    run(|| async {
        connect(&broker).await.create_topic("durable", PARTITIONS, vec![]).await.unwrap()
    });

    // Per partition: the next sequence number to send, and every acknowledged (offset, seq).
    let mut next_seq = [0u64; PARTITIONS as usize];
    let mut acked: BTreeMap<u32, Vec<(u64, u64)>> = BTreeMap::new();
    for cycle in 0..CYCLES {
        let kill_after = Duration::from_millis(200 + rng.next() % 600);
        let acks_this_cycle = Rc::new(RefCell::new(Vec::<(u32, u64, u64, u64)>::new()));
        let sent = run(|| async {
            let client = connect(&broker).await;
            let mut tasks = Vec::new();
            for partition in 0..PARTITIONS {
                // Shared by the partition's senders: each takes the next batch's numbers and
                // queues the request before it yields, so requests go out in sequence.
                let next = Rc::new(Cell::new(next_seq[partition as usize]));
                for _ in 0..in_flight {
                    let (client, acks_seen, next) =
                        (client.clone(), acks_this_cycle.clone(), next.clone());
                    tasks.push(glommio::spawn_local(async move {
                        // Batches of 1 to 50 records, back to back, until the broker dies.
                        loop {
                            let seq = next.get();
                            let count = 1 + (seq * 7 + u64::from(partition)) % 50;
                            next.set(seq + count);
                            let records: Vec<_> = (seq..seq + count)
                                .map(|s| sequenced(partition, s, pad_max))
                                .collect();
                            let batch = common::batch_of(records);
                            match client.produce("durable", partition, acks, batch).await {
                                Ok(Some(base)) => {
                                    acks_seen.borrow_mut().push((partition, base, seq, count))
                                }
                                Ok(None) => unreachable!("acks=1 and acks=all always answer"),
                                Err(_) => return (partition, next.get()),
                            }
                        }
                    }));
                }
            }
            glommio::timer::sleep(kill_after).await;
            broker.kill9();
            let mut sent = [0u64; PARTITIONS as usize];
            for task in tasks {
                let (partition, attempted_to) = task.await;
                sent[partition as usize] = sent[partition as usize].max(attempted_to);
            }
            sent
        });
        for (partition, base, seq, count) in acks_this_cycle.borrow().iter().copied() {
            let list = acked.entry(partition).or_default();
            list.extend((0..count).map(|i| (base + i, seq + i)));
        }
        broker.restart();
        let acked_total: usize = acked.values().map(Vec::len).sum();
        run(|| async {
            let client = connect(&broker).await;
            for partition in 0..PARTITIONS {
                let stored = read_all(&client, "durable", partition, 0).await;
                let stored_seqs: BTreeMap<u64, u64> =
                    stored.iter().map(|(o, r)| (*o, seq_of(r))).collect();
                for (offset, seq) in acked.get(&partition).into_iter().flatten() {
                    assert_eq!(
                        stored_seqs.get(offset),
                        Some(seq),
                        "seed {seed} cycle {cycle}: acknowledged record {seq} of partition {partition} missing at offset {offset}"
                    );
                }
                // Records sent but unacknowledged before a crash may or may not be there, but
                // each partition's batches are appended in sequence, so the log holds strictly
                // increasing sequence numbers: each at most once, never reordered.
                let mut previous: Option<u64> = None;
                for (offset, seq) in &stored_seqs {
                    assert!(
                        previous.is_none_or(|p| p < *seq),
                        "seed {seed} cycle {cycle}: seq {seq} at offset {offset} follows {previous:?}"
                    );
                    previous = Some(*seq);
                }
                // The next cycle continues after everything that was attempted.
                next_seq[partition as usize] =
                    sent[partition as usize].max(stored_seqs.values().max().map_or(0, |m| m + 1));
            }
        });
        assert!(acked_total > 0, "cycle {cycle}: nothing was acknowledged before the kill");
        eprintln!("cycle {cycle}: killed after {kill_after:?}; {acked_total} acknowledged records verified");
    }
}

/// The data directory of partition 0 of `topic`.
fn partition_dir(broker: &Broker, topic: &str) -> std::path::PathBuf {
    broker.data_dir.join(topic).join("0")
}

/// The end of the valid data in the first segment, from its index file (covered bytes).
fn indexed_end(dir: &std::path::Path) -> u64 {
    let index = std::fs::read(dir.join("00000000000000000000.index")).unwrap();
    u64::from_le_bytes(index[16..24].try_into().unwrap())
}

#[test]
fn a_torn_tail_is_cut_at_the_last_whole_entry_and_the_rest_is_served() {
    let dir = tempfile::tempdir().unwrap();
    let mut broker = Broker::start(&dir.path().join("data"), &[]);
    run(|| async {
        let client = connect(&broker).await;
        client.create_topic("torn", 1, vec![]).await.unwrap();
        for seq in 0..100u64 {
            produce(&client, "torn", 0, Acks::All, vec![record(0, seq)]).await;
        }
    });
    broker.stop();
    let partition = partition_dir(&broker, "torn");
    let end = indexed_end(&partition);
    // Write the first 200 bytes of the first entry (a valid header claiming a longer payload)
    // at the end: what a crash in the middle of a write leaves. Then lose the index too.
    let log_path = partition.join("00000000000000000000.log");
    let head = std::fs::read(&log_path).unwrap()[..200].to_vec();
    let mut log = std::fs::OpenOptions::new().write(true).open(&log_path).unwrap();
    log.seek(SeekFrom::Start(end)).unwrap();
    log.write_all(&head).unwrap();
    drop(log);
    std::fs::remove_file(partition.join("00000000000000000000.index")).unwrap();

    broker.restart();
    let logged = broker.stderr();
    assert!(logged.contains("recovery truncated the log at the first bad entry"), "{logged}");
    assert!(
        logged.contains(&format!("position={end}")),
        "the log line names the position:\n{logged}"
    );
    run(|| async {
        let client = connect(&broker).await;
        let records = read_all(&client, "torn", 0, 0).await;
        assert_eq!(records.len(), 100);
        assert_eq!(
            records.iter().map(|(_, r)| r.clone()).collect::<Vec<_>>(),
            (0..100).map(|s| record(0, s)).collect::<Vec<_>>()
        );
        assert_eq!(produce(&client, "torn", 0, Acks::All, vec![record(0, 100)]).await, 100);
        assert_eq!(read_all(&client, "torn", 0, 100).await[0].1, record(0, 100));
    });
    broker.stop();
    assert!(partition.join("00000000000000000000.index").exists(), "the index is rebuilt");
}

#[test]
fn a_corrupt_entry_in_the_tail_is_cut_with_everything_after_it() {
    let dir = tempfile::tempdir().unwrap();
    let mut broker = Broker::start(&dir.path().join("data"), &[]);
    let mut boundaries = Vec::new();
    run(|| async {
        let client = connect(&broker).await;
        client.create_topic("flipped", 1, vec![]).await.unwrap();
        for seq in 0..50u64 {
            produce(&client, "flipped", 0, Acks::All, vec![record(0, seq)]).await;
        }
    });
    broker.stop();
    let partition = partition_dir(&broker, "flipped");
    let log_path = partition.join("00000000000000000000.log");
    let bytes = std::fs::read(&log_path).unwrap();
    // Walk the entries to find where record 40 starts, then flip a byte in its payload.
    let mut position = 0usize;
    while boundaries.len() < 50 {
        boundaries.push(position);
        let payload_len =
            u32::from_le_bytes(bytes[position + 8..position + 12].try_into().unwrap()) as usize;
        position += 64 + payload_len.next_multiple_of(16);
    }
    let mut log = std::fs::OpenOptions::new().write(true).open(&log_path).unwrap();
    log.seek(SeekFrom::Start(boundaries[40] as u64 + 70)).unwrap();
    log.write_all(&[bytes[boundaries[40] + 70] ^ 0xff]).unwrap();
    drop(log);
    std::fs::remove_file(partition.join("00000000000000000000.index")).unwrap();

    broker.restart();
    let logged = broker.stderr();
    assert!(logged.contains("checksum mismatch") && logged.contains("offset=40"), "{logged}");
    run(|| async {
        let client = connect(&broker).await;
        assert_eq!(client.list_offset("flipped", 0, OFFSET_LATEST).await.unwrap(), 40);
        let records = read_all(&client, "flipped", 0, 0).await;
        assert_eq!(records.len(), 40);
        assert_eq!(records[39].1, record(0, 39));
    });
}

/// An older build must not cut the log at entries a newer build wrote: that would drop them and
/// everything after them. It refuses to start, naming the file, and leaves the file as it was.
#[test]
fn an_entry_written_by_a_newer_build_stops_the_start_and_nothing_is_cut() {
    let dir = tempfile::tempdir().unwrap();
    let mut broker = Broker::start(&dir.path().join("data"), &[]);
    run(|| async {
        let client = connect(&broker).await;
        client.create_topic("newer", 1, vec![]).await.unwrap();
        for seq in 0..20u64 {
            produce(&client, "newer", 0, Acks::All, vec![record(0, seq)]).await;
        }
    });
    broker.stop();
    let partition = partition_dir(&broker, "newer");
    let log_path = partition.join("00000000000000000000.log");
    let mut bytes = std::fs::read(&log_path).unwrap();
    // Entry 15 as a newer build would write it: the next version, checksum valid for its bytes.
    let mut position = 0usize;
    for _ in 0..15 {
        let payload_len =
            u32::from_le_bytes(bytes[position + 8..position + 12].try_into().unwrap()) as usize;
        position += 64 + payload_len.next_multiple_of(16);
    }
    let payload_len =
        u32::from_le_bytes(bytes[position + 8..position + 12].try_into().unwrap()) as usize;
    bytes[position + 12] = spate::record::entry::ENTRY_VERSION + 1;
    let crc = crc32fast::hash(&bytes[position + 8..position + 64 + payload_len]);
    bytes[position + 4..position + 8].copy_from_slice(&crc.to_le_bytes());
    std::fs::write(&log_path, &bytes).unwrap();
    // As after a crash: no index covers the entry, so the start must read it.
    std::fs::remove_file(partition.join("00000000000000000000.index")).unwrap();

    let log = dir.path().join("older-build.log");
    let mut older = std::process::Command::new(common::BINARY)
        .args(["serve", "--listen", "127.0.0.1:0", "--kafka-listener", "127.0.0.1:0"])
        .args(["--metrics-listener", "127.0.0.1:0"])
        .args(["--cores", &common::cores(), "--data-dir"])
        .arg(&broker.data_dir)
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = older.try_wait().unwrap() {
            break status;
        }
        if std::time::Instant::now() > deadline {
            older.kill().unwrap();
            older.wait().unwrap();
            panic!("the broker started on a log holding an entry it cannot read");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let logged = std::fs::read_to_string(&log).unwrap();
    assert!(!status.success(), "{logged}");
    assert!(
        logged.contains(&log_path.display().to_string())
            && logged.contains("written by a newer build")
            && logged.contains(&format!("byte {position} (offset 15)")),
        "the refusal names the file and the entry:\n{logged}"
    );
    assert_eq!(std::fs::read(&log_path).unwrap(), bytes, "the log is left as it was");
}

/// Writes `records` records to a one-partition topic of 16 KiB segments (the first seals after a
/// few dozen records), stops the broker, and lists the partition's files ending in `extension`,
/// oldest first.
fn stopped_with_small_segments(
    broker: &mut Broker,
    topic: &str,
    records: u64,
    extension: &str,
) -> Vec<std::path::PathBuf> {
    run(|| async {
        let client = connect(broker).await;
        let config = vec![("segment.bytes".to_string(), "16384".to_string())];
        client.create_topic(topic, 1, config).await.unwrap();
        for seq in 0..records {
            produce(&client, topic, 0, Acks::All, vec![record(0, seq)]).await;
        }
    });
    broker.stop();
    let mut files: Vec<_> = std::fs::read_dir(partition_dir(broker, topic))
        .unwrap()
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == extension))
        .collect();
    files.sort();
    files
}

#[test]
fn a_flipped_byte_in_a_sealed_segment_is_an_error_to_readers_never_wrong_data() {
    let dir = tempfile::tempdir().unwrap();
    let mut broker = Broker::start(&dir.path().join("data"), &[]);
    let logs = stopped_with_small_segments(&mut broker, "sealed", 200, "log");
    assert!(logs.len() >= 3, "expected sealed segments, found {logs:?}");
    // A byte in the payload of the second entry of the first (sealed, indexed) segment.
    let sealed = &logs[0];
    let bytes = std::fs::read(sealed).unwrap();
    let first_len =
        64 + (u32::from_le_bytes(bytes[8..12].try_into().unwrap()) as usize).next_multiple_of(16);
    let target = first_len + 80;
    let mut log = std::fs::OpenOptions::new().write(true).open(sealed).unwrap();
    log.seek(SeekFrom::Start(target as u64)).unwrap();
    log.write_all(&[bytes[target] ^ 0x01]).unwrap();
    drop(log);

    // Sealed segments with a good index are trusted at start (no rescan), so the damage is
    // found by the read that reaches it: an error naming the file, never the wrong bytes. The
    // entry before it is served (to the read that starts there), the damaged one never.
    broker.restart();
    run(|| async {
        let client = connect(&broker).await;
        let before = client.fetch("sealed", 0, 0, 1 << 20, 0).await.expect("the entry before");
        let offsets: Vec<u64> = (before.batches().expect("valid batches").iter())
            .flat_map(|batch| batch.records().map(|r| r.offset).collect::<Vec<_>>())
            .collect();
        assert_eq!(offsets, vec![0], "only what lies before the damage");
        let error = client.fetch("sealed", 0, 1, 1 << 20, 0).await.err().expect("an error");
        assert_eq!(error.code(), Some(spate::native::messages::ErrorCode::StorageError), "{error}");
        // Data past the damaged segment still reads.
        let tail = read_all(&client, "sealed", 0, 150).await;
        assert_eq!(tail.first().map(|(o, _)| *o), Some(150));
        assert_eq!(tail.last().map(|(_, r)| r.clone()), Some(record(0, 199)));
    });
    let logged = broker.stderr();
    let name = sealed.file_name().unwrap().to_string_lossy().into_owned();
    assert!(logged.contains("checksum mismatch") && logged.contains(&name), "{logged}");
}

#[test]
fn garbage_missing_and_foreign_index_files_are_rebuilt_and_every_record_served() {
    let dir = tempfile::tempdir().unwrap();
    let mut broker = Broker::start(&dir.path().join("data"), &[]);
    let indexes = stopped_with_small_segments(&mut broker, "indexed", 300, "index");
    assert!(indexes.len() >= 4, "expected several sealed segments, found {indexes:?}");
    // Garbage in the first, the second gone, the third replaced by the fourth's (a valid file
    // describing another segment).
    let garbage: Vec<u8> =
        (0..4096u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8).collect();
    std::fs::write(&indexes[0], garbage).unwrap();
    std::fs::remove_file(&indexes[1]).unwrap();
    std::fs::copy(&indexes[3], &indexes[2]).unwrap();

    broker.restart();
    run(|| async {
        let client = connect(&broker).await;
        let records = read_all(&client, "indexed", 0, 0).await;
        assert_eq!(records.len(), 300);
        for (i, (offset, stored)) in records.iter().enumerate() {
            assert_eq!(*offset, i as u64);
            assert_eq!(*stored, record(0, i as u64));
        }
        // Reads that start in the middle of each damaged segment land on the right record.
        for from in [5u64, 60, 110, 170] {
            let tail = read_all(&client, "indexed", 0, from).await;
            assert_eq!(tail.first().map(|(o, r)| (*o, r.clone())), Some((from, record(0, from))));
        }
    });
    let logged = broker.stderr();
    let name = |path: &std::path::Path| path.file_name().unwrap().to_string_lossy().into_owned();
    assert!(logged.contains("ignoring an index file") && logged.contains(&name(&indexes[0])));
    for index in &indexes[..3] {
        let log_name = name(index).replace(".index", ".log");
        assert!(
            logged
                .lines()
                .any(|l| l.contains("rebuilt a missing or stale index") && l.contains(&log_name)),
            "no rebuild line for {log_name}:\n{logged}"
        );
        assert!(index.exists(), "{} is written again", name(index));
    }
}
