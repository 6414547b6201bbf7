//! A full disk: produce is refused with a storage error (native and Kafka), the broker stays
//! up, reads keep working, and producing resumes once space is freed, with every acknowledged
//! record kept and no refused one stored, across a `kill -9` too.
//!
//! The data directory is a small tmpfs, so the test needs to mount one (root with
//! CAP_SYS_ADMIN). Without that it says so and skips, unless `SPATE_REQUIRE_FAULT_FS=1` (set
//! by `.ci/run`) makes the missing privilege a failure.

mod common;

use std::cell::RefCell;
use std::collections::BTreeSet;
use std::process::Command;
use std::rc::Rc;
use std::time::{Duration, Instant};

use common::kafka_wire::{batch, produce_request, produced, Conn};
use common::small_fs::SmallFs;
use common::{connect, read_all, record, run, Broker};
use kafka_protocol::messages::{ApiKey, ProduceResponse};
use spate::client::{Client, ClientError};
use spate::native::messages::{Acks, ErrorCode};
use spate::record::OwnedRecord;

const TOPIC: &str = "full";
const PARTITIONS: u32 = 2;
/// Records per produced batch, of about 1 KiB each.
const BATCH_RECORDS: u64 = 64;
/// Produce requests in flight per partition while the disk fills.
const IN_FLIGHT: usize = 4;
/// KAFKA_STORAGE_ERROR.
const KAFKA_STORAGE_ERROR: i16 = 56;

fn sequenced(partition: u32, seq: u64) -> OwnedRecord {
    let mut value = seq.to_le_bytes().to_vec();
    value.resize(1024, b'v');
    OwnedRecord { value: Some(value), ..record(partition, seq) }
}

fn seq_of(record: &OwnedRecord) -> u64 {
    let value = record.value.as_deref().expect("a value");
    u64::from_le_bytes(value[..8].try_into().expect("8 bytes of sequence"))
}

/// Per partition, the next sequence number to send and every acknowledged one.
#[derive(Default)]
struct Ledger {
    next_seq: [u64; PARTITIONS as usize],
    acked: [BTreeSet<u64>; PARTITIONS as usize],
}

/// Produces one batch with acks=all, recording it when acknowledged; `Err` carries the
/// broker's refusal. Several may be in flight on one connection.
async fn produce(
    ledger: &RefCell<Ledger>,
    client: &Client,
    partition: u32,
) -> Result<(), ClientError> {
    let first = {
        let mut ledger = ledger.borrow_mut();
        let first = ledger.next_seq[partition as usize];
        ledger.next_seq[partition as usize] += BATCH_RECORDS;
        first
    };
    let records = (first..first + BATCH_RECORDS).map(|s| sequenced(partition, s));
    client.produce(TOPIC, partition, Acks::All, common::batch_of(records)).await?;
    ledger.borrow_mut().acked[partition as usize].extend(first..first + BATCH_RECORDS);
    Ok(())
}

/// The log must hold exactly the acknowledged records, in the order they were sent: nothing
/// lost, nothing refused stored.
async fn verify(ledger: &RefCell<Ledger>, client: &Client) {
    for partition in 0..PARTITIONS {
        let stored: Vec<u64> =
            read_all(client, TOPIC, partition, 0).await.iter().map(|(_, r)| seq_of(r)).collect();
        let ledger = ledger.borrow();
        let acked = &ledger.acked[partition as usize];
        assert!(stored.windows(2).all(|w| w[0] < w[1]), "partition {partition}: out of order");
        assert_eq!(
            stored.len(),
            acked.len(),
            "partition {partition}: {} records stored, {} acknowledged",
            stored.len(),
            acked.len()
        );
        assert!(stored.iter().eq(acked.iter()), "partition {partition}: stored records differ");
    }
}

/// Produces batches until the broker refuses one for lack of space, at most `tries`; says whether
/// it did.
async fn produce_until_refused(
    ledger: &RefCell<Ledger>,
    client: &Client,
    partition: u32,
    tries: usize,
) -> bool {
    for _ in 0..tries {
        let result = produce(ledger, client, partition).await;
        match &result {
            Ok(()) => {}
            _ if is_storage_error(&result) => return true,
            Err(e) => panic!("partition {partition}: unexpected error {e:?}"),
        }
    }
    false
}

fn is_storage_error(result: &Result<(), ClientError>) -> bool {
    matches!(result, Err(ClientError::Broker { code: ErrorCode::StorageError, .. }))
}

#[test]
fn a_full_disk_refuses_produce_keeps_reads_and_resumes_when_space_is_freed() {
    fill_free_and_recover(1 << 20);
}

/// Segments of 16 KiB, smaller than a batch: every write rolls, so the space runs out at a
/// segment's first write, and recovery opens thousands of segments. (A roll that itself finds
/// no space, to seal or to create, is made deterministic by the `roll_without_space` tests.)
#[test]
fn a_disk_that_fills_while_segments_roll_recovers_the_same_way() {
    fill_free_and_recover(16 << 10);
}

/// Fills a small filesystem with acks=all producers, checks what is refused and what is kept,
/// frees space, checks that producing resumes, and checks it all again after a `kill -9`.
fn fill_free_and_recover(segment_bytes: u64) {
    let dir = tempfile::tempdir().unwrap();
    let Some(fs) = SmallFs::mount_or_skip(&dir.path().join("fs"), 48) else { return };
    // Space the test frees later to let producing resume.
    let filler = fs.path.join("filler");
    std::fs::write(&filler, vec![0xa5u8; 12 << 20]).unwrap();
    let mut broker = Broker::start_logging_in(&fs.path.join("data"), dir.path(), &[]);
    let ledger = Rc::new(RefCell::new(Ledger::default()));

    run(|| async {
        let client = connect(&broker).await;
        let config = vec![("segment.bytes".to_string(), segment_bytes.to_string())];
        client.create_topic(TOPIC, PARTITIONS, config).await.unwrap();

        // Fill the disk: per partition, producers with batches in flight until each is refused,
        // so the disk fills with some batches written, some staged and some in flight.
        let mut producers = Vec::new();
        for partition in 0..PARTITIONS {
            for _ in 0..IN_FLIGHT {
                let (ledger, client) = (ledger.clone(), client.clone());
                producers.push(glommio::spawn_local(async move {
                    produce_until_refused(&ledger, &client, partition, 2_000).await
                }));
            }
        }
        for producer in producers {
            assert!(producer.await, "48 MiB never filled up: {:?}", ledger.borrow().next_seq);
        }
        assert!(ledger.borrow().acked.iter().all(|a| !a.is_empty()), "nothing was acknowledged");

        // Still full, past the back-off: the writer tries again and is refused again (after
        // at most a few batches that fit where a larger coalesced write did not).
        glommio::timer::sleep(Duration::from_millis(1_200)).await;
        for partition in 0..PARTITIONS {
            let refused = produce_until_refused(&ledger, &client, partition, 64).await;
            assert!(refused, "partition {partition} kept taking records on a full disk");
        }
        verify(&ledger, &client).await;
    });

    // A Kafka producer is told KAFKA_STORAGE_ERROR, and may try again.
    let mut conn = Conn::open(&broker.kafka_addr);
    let response: ProduceResponse =
        conn.call(ApiKey::Produce, 8, &produce_request(TOPIC, -1, batch(-1, -1, 0, 8)));
    assert_eq!(produced(&response).0, KAFKA_STORAGE_ERROR);

    std::fs::remove_file(&filler).unwrap();
    run(|| async {
        let client = connect(&broker).await;
        // Appends are refused for a second after each failed write; then they go through.
        let deadline = Instant::now() + Duration::from_secs(15);
        for partition in 0..PARTITIONS {
            loop {
                let result = produce(&ledger, &client, partition).await;
                if result.is_ok() {
                    break;
                }
                assert!(is_storage_error(&result), "partition {partition}: {result:?}");
                assert!(
                    Instant::now() < deadline,
                    "producing did not resume after space was freed"
                );
                glommio::timer::sleep(Duration::from_millis(100)).await;
            }
        }
        for _ in 0..20 {
            for partition in 0..PARTITIONS {
                produce(&ledger, &client, partition).await.expect("produce after space was freed");
            }
        }
        verify(&ledger, &client).await;
    });
    let log = broker.stderr();
    assert!(log.contains("no space to write offsets"), "no log line names the full disk:\n{log}");
    assert!(log.contains("writes resumed"), "no log line says writes resumed:\n{log}");

    // What a failed write left behind was cut: a crash and recovery bring back exactly the
    // acknowledged records, and the log takes more.
    broker.kill9();
    broker.restart();
    run(|| async {
        let client = connect(&broker).await;
        verify(&ledger, &client).await;
        for partition in 0..PARTITIONS {
            produce(&ledger, &client, partition).await.expect("produce after restart");
        }
        verify(&ledger, &client).await;
    });
    let recovery = broker.stderr();
    assert!(!recovery.contains("truncated"), "recovery found damage:\n{recovery}");
    broker.stop();
}

/// The disk runs out exactly when a segment rolls, at either step of it: sealing the old segment
/// needs a block for its index file, and creating the next one a block of its own. The roll
/// fails like a write (the batch is refused, the old segment stays active and intact, a
/// half-created segment is removed), and once space is back the roll completes and the log goes
/// on in a new segment.
#[test]
fn a_roll_that_finds_no_space_to_seal_is_refused_and_completes_later() {
    roll_without_space(0, "00000000000000000000.index.tmp");
}

#[test]
fn a_roll_that_finds_no_space_to_create_a_segment_is_refused_and_completes_later() {
    roll_without_space(1, "00000000000000000012.log");
}

/// Fills the disk but `spare` blocks just before a produce that rolls, and expects the write of
/// `failing_file` to be the step that found no space.
fn roll_without_space(spare: u64, failing_file: &str) {
    let dir = tempfile::tempdir().unwrap();
    let Some(fs) = SmallFs::mount_or_skip(&dir.path().join("fs"), 8) else { return };
    let data = fs.path.join("data");
    let mut broker = Broker::start_logging_in(&data, dir.path(), &[]);
    // 12 records of about 1 KiB to a batch: two batches overflow a 16 KiB segment.
    let batch_of = |first: u64| (first..first + 12).map(|s| sequenced(0, s)).collect::<Vec<_>>();
    run(|| async {
        let client = connect(&broker).await;
        let config = vec![("segment.bytes".to_string(), "16384".to_string())];
        client.create_topic(TOPIC, 1, config).await.unwrap();
        client.produce(TOPIC, 0, Acks::All, common::batch_of(batch_of(0))).await.unwrap();
    });
    let filler = fs.fill(spare);
    run(|| async {
        let client = connect(&broker).await;
        let refused = client.produce(TOPIC, 0, Acks::All, common::batch_of(batch_of(12))).await;
        assert!(is_storage_error(&refused.map(|_| ())), "a roll on a full disk must be refused");
        let kept = read_all(&client, TOPIC, 0, 0).await;
        assert_eq!(
            kept.iter().map(|(_, r)| seq_of(r)).collect::<Vec<_>>(),
            (0..12).collect::<Vec<_>>()
        );
    });
    let log = broker.stderr();
    let failed = log.lines().find(|l| l.contains("no space to write offsets 12 and after"));
    assert!(
        failed.is_some_and(|l| l.contains(failing_file)),
        "not the step expected to fail ({failing_file}):\n{log}"
    );

    let partition = data.join(TOPIC).join("0");
    let files = || -> Vec<String> {
        let entries = std::fs::read_dir(&partition).unwrap();
        entries.map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect()
    };
    // Nothing half-made is left to claim offsets or space: no empty newest segment, no temp.
    let left = files();
    assert!(
        !left.iter().any(|n| n == "00000000000000000012.log" || n.ends_with(".tmp")),
        "{left:?}"
    );

    std::fs::remove_file(filler).unwrap();
    run(|| async {
        let client = connect(&broker).await;
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            match client.produce(TOPIC, 0, Acks::All, common::batch_of(batch_of(12))).await {
                Ok(_) => break,
                Err(e) => {
                    assert!(Instant::now() < deadline, "the roll never completed: {e:?}");
                    glommio::timer::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    });
    broker.kill9();
    broker.restart();
    run(|| async {
        let client = connect(&broker).await;
        let stored = read_all(&client, TOPIC, 0, 0).await;
        assert_eq!(
            stored.iter().map(|(_, r)| seq_of(r)).collect::<Vec<_>>(),
            (0..24).collect::<Vec<_>>()
        );
    });
    let names = files();
    assert!(names.iter().any(|n| n == "00000000000000000012.log"), "a second segment: {names:?}");
    assert!(!names.iter().any(|n| n.ends_with(".tmp")), "a leftover temporary file: {names:?}");
    broker.stop();
}

/// A DeleteRecords whose new log start finds no room on the disk to be recorded is refused
/// with a storage error and changes nothing: the partition carries on (every record still
/// reads), and once space is freed the same DeleteRecords is taken.
#[test]
fn a_delete_records_the_full_disk_cannot_record_is_refused_and_the_partition_carries_on() {
    let dir = tempfile::tempdir().unwrap();
    let Some(fs) = SmallFs::mount_or_skip(&dir.path().join("fs"), 8) else { return };
    let data = fs.path.join("data");
    let broker = Broker::start_logging_in(&data, dir.path(), &[]);
    let batch_of = |first: u64| (first..first + 12).map(|s| sequenced(0, s)).collect::<Vec<_>>();
    run(|| async {
        let client = connect(&broker).await;
        client.create_topic(TOPIC, 1, Vec::new()).await.unwrap();
        client.produce(TOPIC, 0, Acks::All, common::batch_of(batch_of(0))).await.unwrap();
    });
    let filler = fs.fill(0);
    run(|| async {
        let client = connect(&broker).await;
        let refused = client.delete_records(TOPIC, 0, Some(5)).await;
        assert!(is_storage_error(&refused.map(|_| ())), "no room to record the log start");
        let kept = read_all(&client, TOPIC, 0, 0).await;
        assert_eq!(
            kept.iter().map(|(_, r)| seq_of(r)).collect::<Vec<_>>(),
            (0..12).collect::<Vec<_>>()
        );
    });
    assert!(broker.stderr().contains("recording the log start 5"), "{}", broker.stderr());
    std::fs::remove_file(filler).unwrap();
    run(|| async {
        let client = connect(&broker).await;
        assert_eq!(client.delete_records(TOPIC, 0, Some(5)).await.unwrap(), 5);
        assert!(client.fetch(TOPIC, 0, 0, 1 << 20, 0).await.is_err(), "below the log start");
        let kept = read_all(&client, TOPIC, 0, 5).await;
        assert_eq!(
            kept.iter().map(|(_, r)| seq_of(r)).collect::<Vec<_>>(),
            (5..12).collect::<Vec<_>>()
        );
    });
}

/// Creating partitions the disk has no room for is refused with POLICY_VIOLATION and a reason,
/// instead of filling the disk; creating what fits still works.
#[test]
fn creating_more_partitions_than_the_disk_holds_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let Some(fs) = SmallFs::mount_or_skip(&dir.path().join("fs"), 4) else { return };
    let broker = Broker::start_logging_in(&fs.path.join("data"), dir.path(), &[]);
    let create = |name: &str, partitions: &str| {
        Command::new(common::BINARY)
            .args(["topic", "create", name, "--partitions", partitions, "--broker", &broker.addr])
            .output()
            .unwrap()
    };
    let refused = create("huge", "1000");
    let said = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success() && said.contains("bytes of disk at first"), "{said}");
    assert!(!broker.data_dir.join("huge").exists(), "a refused topic left a directory");
    let fits = create("small", "10");
    assert!(fits.status.success(), "{}", String::from_utf8_lossy(&fits.stderr));
}
