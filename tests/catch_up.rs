//! Readers behind the tail, on the real broker: what they read comes from the shard's read cache
//! and its reads ahead (issue 18), while retention deletes the segments under them and the
//! broker restarts, cleanly and by kill -9. Every record read must be the one the log holds at
//! its offset, and each shard's read cache must stay within its budget by its own report at
//! shutdown. (Truncation is the simulation's, `log/simulation.rs`, and the cluster tests'.) Kafka
//! consumers (confluent-kafka) read behind the tail through the same cache.

mod common;

use std::time::Duration;

use common::scripts::{require_pip_confluent, run_script};
use common::{connect, produce, record, run, Broker};
use spate::client::Client;
use spate::native::messages::{Acks, ErrorCode, OFFSET_EARLIEST};

const TOPIC: &str = "behind";
const PARTITIONS: u32 = 2;
/// A read cache of 2 MiB per shard against about 6 MB per partition: readers evict each other.
const READ_CACHE_BYTES: u64 = 2 * 1024 * 1024;
/// Records produced to each partition, about 210 bytes each as stored.
const RECORDS: u64 = 40_000;

/// Reads `partition` from `from` to `until`, `max_bytes` at a time, checking every record
/// against the one produced at its offset; a reader that falls below the log start (retention)
/// goes on from the new start. Returns how many records it checked.
async fn read_and_check(
    client: &Client,
    partition: u32,
    mut from: u64,
    max_bytes: u32,
    until: u64,
) -> u64 {
    let mut checked = 0;
    while from < until {
        let fetched = match client.fetch(TOPIC, partition, from, max_bytes, 0).await {
            Ok(fetched) => fetched,
            Err(e) if e.code() == Some(ErrorCode::OffsetOutOfRange) => {
                let start = client.list_offset(TOPIC, partition, OFFSET_EARLIEST).await;
                let start = start.expect("the log start") as u64;
                assert!(start > from, "out of range at {from}, but the log starts at {start}");
                from = start;
                continue;
            }
            Err(e) => panic!("partition {partition}: fetch at {from}: {e}"),
        };
        let mut next = from;
        for batch in fetched.batches().expect("valid batches") {
            for read in batch.records().filter(|r| r.offset >= from) {
                assert_eq!(read.offset, next, "partition {partition}: offsets run on");
                let expected = record(partition, read.offset);
                assert_eq!(
                    read.to_owned_record().value,
                    expected.value,
                    "partition {partition}: the record at offset {} is not the one produced there",
                    read.offset
                );
                next += 1;
                checked += 1;
            }
        }
        if next == from {
            // Caught up with the producer: wait for more.
            glommio::timer::sleep(Duration::from_millis(5)).await;
        }
        from = next;
    }
    checked
}

/// Each shard's read-cache report at shutdown: (peak MiB, budget MiB, reads ahead).
fn cache_reports(log: &str) -> Vec<(f64, f64, u64)> {
    let mut reports = Vec::new();
    for line in log.lines().filter(|l| l.contains("read cache: peak")) {
        let words: Vec<&str> = line.split_whitespace().collect();
        let after = |word: &str| {
            let at = words.iter().position(|w| *w == word).expect("a field of the report");
            words[at + 1].trim_end_matches(['(', ';'])
        };
        let peak = after("peak").parse().expect("a peak in MiB");
        let budget = after("of").parse().expect("a budget in MiB");
        let ahead = after("ahead").parse().expect("a count of chunks read ahead");
        reports.push((peak, budget, ahead));
    }
    reports
}

fn check_cache_reports(log: &str) -> u64 {
    let reports = cache_reports(log);
    eprintln!("read caches (peak MiB, budget MiB, chunks read ahead): {reports:?}");
    assert_eq!(reports.len(), 2, "one report per shard:\n{log}");
    for (peak, budget, _) in &reports {
        assert!(peak <= budget, "a read cache over its budget: {peak} MiB of {budget} MiB");
        assert_eq!(*budget, READ_CACHE_BYTES as f64 / (1024.0 * 1024.0));
    }
    reports.iter().map(|r| r.2).sum()
}

#[test]
fn readers_behind_the_tail_read_what_the_log_holds_through_retention_and_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let budget = format!("log.read.cache.shard.bytes={READ_CACHE_BYTES}");
    let mut broker = Broker::start(
        &dir.path().join("data"),
        &[
            "--set",
            "log.retention.check.interval.ms=100",
            "--set",
            &budget,
            // Every read below the newest few entries comes from the segments.
            "--set",
            "log.tail.cache.bytes=16384",
        ],
    );
    let produce_all = |client: &Client, from: u64, to: u64| {
        let client = client.clone();
        async move {
            for start in (from..to).step_by(50) {
                for partition in 0..PARTITIONS {
                    let records = (start..start + 50).map(|seq| record(partition, seq)).collect();
                    produce(&client, TOPIC, partition, Acks::Leader, records).await;
                }
            }
        }
    };
    run(|| async {
        let client = connect(&broker).await;
        let configs = vec![
            ("segment.bytes".to_string(), "1048576".to_string()),
            ("retention.bytes".to_string(), "3145728".to_string()),
            // The records' timestamps are from 2023: by size only.
            ("retention.ms".to_string(), "-1".to_string()),
        ];
        client.create_topic(TOPIC, PARTITIONS, configs).await.expect("create");
        // About 4 MB per partition first, then as much again while three readers per
        // partition catch up from the start (with 64 KiB, 256 KiB and 1 MiB fetches) and
        // retention deletes the oldest segments under them.
        produce_all(&client, 0, RECORDS / 2).await;
        let mut readers = Vec::new();
        for partition in 0..PARTITIONS {
            for max_bytes in [64 * 1024, 256 * 1024, 1024 * 1024] {
                let client = connect(&broker).await;
                readers.push(glommio::spawn_local(async move {
                    read_and_check(&client, partition, 0, max_bytes, RECORDS).await
                }));
            }
        }
        produce_all(&client, RECORDS / 2, RECORDS).await;
        for reader in readers {
            assert!(reader.await > 0, "every reader read something");
        }
    });
    let first = broker.stop();
    let read_ahead = check_cache_reports(&(first + &broker.stderr()));
    assert!(read_ahead > 0, "sequential readers were read ahead of");

    // After a clean restart and after kill -9, two readers per partition read everything the
    // log still holds, from its start.
    for crash in [false, true] {
        broker.restart();
        run(|| async {
            let client = connect(&broker).await;
            let mut readers = Vec::new();
            for partition in 0..PARTITIONS {
                let start = client.list_offset(TOPIC, partition, OFFSET_EARLIEST).await;
                let start = start.expect("the log start") as u64;
                assert!(start > 0, "retention deleted the oldest segments");
                for max_bytes in [128 * 1024, 1024 * 1024] {
                    let client = connect(&broker).await;
                    readers.push(glommio::spawn_local(async move {
                        let checked =
                            read_and_check(&client, partition, start, max_bytes, RECORDS).await;
                        assert_eq!(start + checked, RECORDS, "read to the end from {start}");
                    }));
                }
            }
            for reader in readers {
                reader.await;
            }
            glommio::timer::sleep(Duration::from_millis(10)).await;
        });
        if crash {
            broker.kill9();
        } else {
            let out = broker.stop();
            check_cache_reports(&(out + &broker.stderr()));
        }
    }
}

/// Real Kafka consumers behind the tail: confluent-kafka readers with three fetch sizes per
/// partition read what they produced from segments, through the read cache and its reads ahead
/// (tests/kafka/catch_up_readers.py checks every record), within the cache's budget.
#[test]
fn kafka_consumers_behind_the_tail_read_through_the_read_cache() {
    let python = require_pip_confluent();
    let dir = tempfile::tempdir().unwrap();
    let budget = format!("log.read.cache.shard.bytes={READ_CACHE_BYTES}");
    let mut broker = Broker::start(
        &dir.path().join("data"),
        &["--set", &budget, "--set", "log.tail.cache.bytes=16384"],
    );
    match run_script(&broker, "behind-kafka", &python, &["catch_up_readers.py"]) {
        Ok(out) => println!("catch_up_readers: {out}"),
        Err(why) => panic!("catch_up_readers {why}\n--- broker stderr\n{}", broker.stderr()),
    }
    let stopped = broker.stop();
    let read_ahead = check_cache_reports(&(stopped + &broker.stderr()));
    assert!(read_ahead > 0, "the Kafka consumers were read ahead of");
}
