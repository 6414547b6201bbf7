//! The broker's produce, fetch, offsets, retention and restart behaviour, through the real
//! binary and the client library.

mod common;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use common::{batch_of, connect, produce, read_all, record, run, Broker};
use spate::native::messages::{Acks, ErrorCode, OFFSET_EARLIEST, OFFSET_LATEST};
use spate::record::OwnedRecord;

#[test]
fn produce_and_fetch_across_partitions_and_shards() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(&dir.path().join("data"), &[]);
    run(|| async {
        let client = connect(&broker).await;
        client.create_topic("orders", 6, vec![]).await.unwrap();
        let description = client.describe_topic("orders").await.unwrap();
        let shards: BTreeSet<u32> = description.partitions.iter().map(|p| p.shard).collect();
        assert_eq!(
            shards.len(),
            common::cores().split('-').count(),
            "partitions spread over every shard"
        );

        // 30 batches of 20 records per partition, with every acks setting, pipelined.
        let acks = [Acks::Leader, Acks::All, Acks::None];
        let mut pending = Vec::new();
        for batch in 0..30u64 {
            for partition in 0..6u32 {
                let records: Vec<OwnedRecord> =
                    (0..20).map(|i| record(partition, batch * 20 + i)).collect();
                let client = client.clone();
                let acks = acks[(batch as usize + partition as usize) % 3];
                pending.push(glommio::spawn_local(async move {
                    client.produce("orders", partition, acks, batch_of(records)).await
                }));
            }
        }
        for task in pending {
            task.await.expect("produce succeeds");
        }
        for partition in 0..6u32 {
            // acks=0 batches are not waited for; the high watermark reaches them shortly.
            let deadline = Instant::now() + Duration::from_secs(10);
            while client.list_offset("orders", partition, OFFSET_LATEST).await.unwrap() < 600 {
                assert!(
                    Instant::now() < deadline,
                    "partition {partition} never reached 600 records"
                );
                glommio::timer::sleep(Duration::from_millis(20)).await;
            }
            let records = read_all(&client, "orders", partition, 0).await;
            assert_eq!(records.len(), 600, "partition {partition}");
            for (index, (offset, got)) in records.iter().enumerate() {
                assert_eq!(*offset, index as u64, "offsets are dense and ordered");
                assert_eq!(got, &record(partition, index as u64), "bytes come back unchanged");
            }
        }
    });
}

#[test]
fn everything_survives_a_clean_restart_and_histograms_are_printed() {
    let dir = tempfile::tempdir().unwrap();
    let hgrm = dir.path().join("hgrm");
    let mut broker =
        Broker::start(&dir.path().join("data"), &["--histogram-dir", hgrm.to_str().unwrap()]);
    run(|| async {
        let client = connect(&broker).await;
        client
            .create_topic("events", 3, vec![("segment.bytes".into(), "65536".into())])
            .await
            .unwrap();
        for seq in 0..199u64 {
            produce(&client, "events", (seq % 3) as u32, Acks::Leader, vec![record(7, seq)]).await;
        }
        // A fetch that waits at the end (on a connection of its own: responses go in order) and
        // is woken by the last record, so its delivery is timed.
        let waiting = connect(&broker).await;
        let end = client.list_offset("events", 1, OFFSET_LATEST).await.unwrap() as u64;
        let fetch = glommio::spawn_local(async move {
            waiting.fetch("events", 1, end, 1 << 20, 10_000).await.unwrap()
        });
        glommio::timer::sleep(Duration::from_millis(500)).await;
        produce(&client, "events", 1, Acks::Leader, vec![record(7, 199)]).await;
        assert_eq!(fetch.await.batches().unwrap().len(), 1);
    });
    let report = broker.stop();
    // Each histogram's row, with the count it recorded: every one is printed, so its presence
    // alone proves nothing.
    let count = |name: &str| -> u64 {
        let row = report.lines().find(|l| l.split_whitespace().next() == Some(name));
        let row = row.unwrap_or_else(|| panic!("histogram {name} missing from:\n{report}"));
        row.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0)
    };
    assert!(count("request.produce") >= 200, "200 produce requests:\n{report}");
    assert_eq!(count("request.create_topic"), 1, "one topic created:\n{report}");
    // Every produce was written, and the clean stop synced each partition.
    assert!(count("log.append_write") >= 1 && count("log.fdatasync") >= 1, "{report}");
    assert_eq!(count("fetch.woken_to_sent"), 1, "one long poll was woken:\n{report}");
    assert!(report.contains("p99.99") && report.contains("max"));
    assert!(hgrm.join("request.produce.hgrm").exists());

    broker.restart();
    run(|| async {
        let client = connect(&broker).await;
        let mut total = 0;
        for partition in 0..3u32 {
            let records = read_all(&client, "events", partition, 0).await;
            for (_, got) in &records {
                let seq = u64::from_le_bytes(got.headers[0].1.clone().try_into().unwrap());
                assert_eq!(seq % 3, u64::from(partition));
                assert_eq!(got, &record(7, seq));
            }
            total += records.len();
        }
        assert_eq!(total, 200);
        // Appends continue after the recovered end.
        let next = client.list_offset("events", 0, OFFSET_LATEST).await.unwrap() as u64;
        let base = produce(&client, "events", 0, Acks::All, vec![record(7, 1000)]).await;
        assert_eq!(base, next);
    });
}

#[test]
fn list_offsets_by_time_earliest_and_latest() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(&dir.path().join("data"), &[]);
    run(|| async {
        let client = connect(&broker).await;
        client.create_topic("times", 1, vec![]).await.unwrap();
        // 50 batches of 10 records; record n has timestamp 10_000 + 100 * n.
        for batch in 0..50u64 {
            let records = (0..10u64).map(|i| {
                let n = batch * 10 + i;
                OwnedRecord { timestamp: 10_000 + 100 * n as i64, ..record(0, n) }
            });
            produce(&client, "times", 0, Acks::Leader, records.collect()).await;
        }
        assert_eq!(client.list_offset("times", 0, OFFSET_EARLIEST).await.unwrap(), 0);
        assert_eq!(client.list_offset("times", 0, OFFSET_LATEST).await.unwrap(), 500);
        assert_eq!(client.list_offset("times", 0, 0).await.unwrap(), 0);
        assert_eq!(client.list_offset("times", 0, 10_000).await.unwrap(), 0);
        assert_eq!(client.list_offset("times", 0, 10_001).await.unwrap(), 1);
        assert_eq!(client.list_offset("times", 0, 10_000 + 100 * 333).await.unwrap(), 333);
        assert_eq!(client.list_offset("times", 0, 10_000 + 100 * 333 - 50).await.unwrap(), 333);
        assert_eq!(client.list_offset("times", 0, 10_000 + 100 * 499).await.unwrap(), 499);
        assert_eq!(client.list_offset("times", 0, 10_000 + 100 * 500).await.unwrap(), -1);
    });
}

#[test]
fn a_fetch_at_the_end_waits_for_new_data() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(&dir.path().join("data"), &[]);
    run(|| async {
        let client = connect(&broker).await;
        client.create_topic("tail", 2, vec![]).await.unwrap();
        let empty = client.fetch("tail", 1, 0, 1 << 20, 100).await.unwrap();
        assert!(empty.data.is_empty());
        let waiting = {
            let client = client.clone();
            glommio::spawn_local(async move { client.fetch("tail", 1, 0, 1 << 20, 20_000).await })
        };
        glommio::timer::sleep(Duration::from_millis(300)).await;
        let producer = connect(&broker).await;
        produce(&producer, "tail", 1, Acks::Leader, vec![record(1, 0), record(1, 1)]).await;
        let fetched = waiting.await.unwrap();
        let records: Vec<_> = fetched
            .batches()
            .unwrap()
            .iter()
            .flat_map(|b| b.records().map(|r| r.offset).collect::<Vec<_>>())
            .collect();
        assert_eq!(records, vec![0, 1]);
        assert_eq!(fetched.high_watermark, 2);
    });
}

#[test]
fn retention_deletes_whole_segments_by_size_and_time() {
    let dir = tempfile::tempdir().unwrap();
    let broker =
        Broker::start(&dir.path().join("data"), &["--set", "log.retention.check.interval.ms=100"]);
    run(|| async {
        let client = connect(&broker).await;
        let small_segments = |extra: (&str, &str)| {
            vec![
                ("segment.bytes".to_string(), "16384".to_string()),
                (extra.0.to_string(), extra.1.to_string()),
            ]
        };
        client
            .create_topic("by-size", 1, small_segments(("retention.bytes", "50000")))
            .await
            .unwrap();
        client.create_topic("by-time", 1, small_segments(("retention.ms", "60000"))).await.unwrap();
        let hour_ago = spate::now_ms() - 3_600_000;
        for seq in 0..400u64 {
            let value = vec![b'v'; 500];
            let fresh = OwnedRecord {
                value: Some(value.clone()),
                timestamp: spate::now_ms(),
                ..record(0, seq)
            };
            let stale = OwnedRecord { value: Some(value), timestamp: hour_ago, ..record(0, seq) };
            produce(&client, "by-size", 0, Acks::Leader, vec![fresh]).await;
            produce(&client, "by-time", 0, Acks::Leader, vec![stale]).await;
        }
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let size_start = client.list_offset("by-size", 0, OFFSET_EARLIEST).await.unwrap();
            let time_start = client.list_offset("by-time", 0, OFFSET_EARLIEST).await.unwrap();
            // Size: about 50 KB of 600-byte entries survive, so roughly the last 80 records.
            // Time: every record is an hour old, so everything goes.
            if size_start > 250 && time_start == 400 {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "retention did not run: starts {size_start} / {time_start}"
            );
            glommio::timer::sleep(Duration::from_millis(100)).await;
        }
        let kept = read_all(
            &client,
            "by-size",
            0,
            client.list_offset("by-size", 0, OFFSET_EARLIEST).await.unwrap() as u64,
        )
        .await;
        assert!(
            kept.len() * 600 >= 50_000 - 16384,
            "retention.bytes keeps at least the limit minus a segment"
        );
        assert_eq!(kept.last().unwrap().0, 399);
        let gone = client.fetch("by-size", 0, 0, 1 << 20, 0).await.err().unwrap();
        assert_eq!(gone.code(), Some(ErrorCode::OffsetOutOfRange));
    });
    let files = std::fs::read_dir(dir.path().join("data/by-size/0")).unwrap().count();
    assert!(files < 12, "deleted segments leave no files behind ({files} files)");
}

#[test]
fn segments_roll_by_age() {
    let dir = tempfile::tempdir().unwrap();
    let broker =
        Broker::start(&dir.path().join("data"), &["--set", "log.retention.check.interval.ms=50"]);
    run(|| async {
        let client = connect(&broker).await;
        client.create_topic("aging", 1, vec![("segment.ms".into(), "150".into())]).await.unwrap();
        for seq in 0..3u64 {
            // Fresh timestamps: the helper's 2023 ones are past the default 7-day retention.
            let fresh = OwnedRecord { timestamp: spate::now_ms(), ..record(0, seq) };
            produce(&client, "aging", 0, Acks::Leader, vec![fresh]).await;
            glommio::timer::sleep(Duration::from_millis(400)).await;
        }
        // Nothing is deleted (default retention), but each record now sits in its own segment.
        assert_eq!(read_all(&client, "aging", 0, 0).await.len(), 3);
    });
    let logs = std::fs::read_dir(dir.path().join("data/aging/0"))
        .unwrap()
        .filter(|e| e.as_ref().unwrap().file_name().to_string_lossy().ends_with(".log"))
        .count();
    assert!(logs >= 3, "segment.ms rolled the active segment ({logs} segments)");
}

#[test]
fn topics_are_created_on_first_produce_only_when_enabled() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(&dir.path().join("data"), &["--set", "num.partitions=3"]);
    run(|| async {
        let client = connect(&broker).await;
        produce(&client, "auto", 0, Acks::Leader, vec![record(0, 0)]).await;
        assert_eq!(client.describe_topic("auto").await.unwrap().partitions.len(), 3);
        let err = client.create_topic("auto", 1, vec![]).await.unwrap_err();
        assert_eq!(err.code(), Some(ErrorCode::TopicAlreadyExists));
        client.delete_topic("auto").await.unwrap();
        assert_eq!(
            client.describe_topic("auto").await.unwrap_err().code(),
            Some(ErrorCode::UnknownTopic)
        );
    });
    drop(broker);

    let dir = tempfile::tempdir().unwrap();
    let broker =
        Broker::start(&dir.path().join("data"), &["--set", "auto.create.topics.enable=false"]);
    run(|| async {
        let client = connect(&broker).await;
        let err =
            client.produce("nope", 0, Acks::Leader, batch_of([record(0, 0)])).await.unwrap_err();
        assert_eq!(err.code(), Some(ErrorCode::UnknownTopic));
        client.create_topic("yes", 2, vec![]).await.unwrap();
        let err =
            client.produce("yes", 2, Acks::Leader, batch_of([record(0, 0)])).await.unwrap_err();
        assert_eq!(err.code(), Some(ErrorCode::UnknownPartition));
        let err = client.create_topic("../escape", 1, vec![]).await.unwrap_err();
        assert_eq!(err.code(), Some(ErrorCode::InvalidTopicName));
        let err = client
            .create_topic("bad-config", 1, vec![("retention.ms".into(), "soon".into())])
            .await
            .unwrap_err();
        assert_eq!(err.code(), Some(ErrorCode::InvalidConfig));
    });
}

#[test]
fn a_second_broker_cannot_open_the_same_data_directory() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let _broker = Broker::start(&data, &[]);
    let output = std::process::Command::new(common::BINARY)
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(&data)
        .output()
        .unwrap();
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("in use by another spate process"));
}

/// glommio listens with SO_REUSEPORT: unchecked, a second broker on the same port would start
/// and silently take a share of the first one's connections.
#[test]
fn a_second_broker_cannot_listen_on_a_port_in_use() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(&dir.path().join("first"), &[]);
    let log_path = dir.path().join("second.log");
    let mut second = std::process::Command::new(common::BINARY)
        .args(["serve", "--listen", &broker.addr, "--kafka-listener", &broker.kafka_addr])
        .args(["--metrics-listener", "off"])
        .arg("--data-dir")
        .arg(dir.path().join("second"))
        .stderr(std::fs::File::create(&log_path).unwrap())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = second.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            second.kill().unwrap();
            second.wait().unwrap();
            panic!("a second broker started on ports in use");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(!status.success());
    let log = std::fs::read_to_string(&log_path).unwrap();
    let refusal = format!("native listener on {0}: {0} is already listening", broker.addr);
    assert!(log.contains(&refusal), "{log}");
    run(|| async {
        let client = connect(&broker).await;
        client.create_topic("still-served", 1, vec![]).await.unwrap();
    });
}

#[test]
fn fetches_asking_for_everything_are_answered_in_turn() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(&dir.path().join("data"), &[]);
    run(|| async {
        let client = connect(&broker).await;
        client.create_topic("big-asks", 1, vec![]).await.unwrap();
        produce(&client, "big-asks", 0, Acks::Leader, (0..10).map(|s| record(0, s)).collect())
            .await;
        // Each asks for more than the connection's whole response budget; pipelined, they must
        // be granted one after the other rather than wait for each other forever.
        let asks: Vec<_> = (0..3)
            .map(|_| {
                let client = client.clone();
                glommio::spawn_local(
                    async move { client.fetch("big-asks", 0, 0, u32::MAX, 0).await },
                )
            })
            .collect();
        for ask in asks {
            let fetched = ask.await.unwrap();
            assert_eq!(fetched.high_watermark, 10);
            assert!(!fetched.data.is_empty());
        }
    });
}

/// A data directory from before the cluster (its topics' files without ids, no metadata log)
/// opens unchanged: its topics are brought into the new cluster's metadata, this broker their
/// only replica, with their settings and records, and their files get the ids.
#[test]
fn topics_from_before_the_cluster_are_brought_in_with_their_records() {
    let dir = tempfile::tempdir().unwrap();
    let mut first = Broker::start(&dir.path().join("first"), &[]);
    run(|| async {
        let client = connect(&first).await;
        client
            .create_topic("legacy", 2, vec![("retention.ms".into(), "86400000".into())])
            .await
            .unwrap();
        for seq in 0..20u64 {
            produce(&client, "legacy", (seq % 2) as u32, Acks::All, vec![record(3, seq)]).await;
        }
    });
    first.stop();
    // Only the topic's directory, its file as an earlier build wrote it (no id).
    let old = dir.path().join("old");
    std::fs::create_dir_all(&old).unwrap();
    let copied = std::process::Command::new("cp")
        .arg("-a")
        .arg(dir.path().join("first/legacy"))
        .arg(old.join("legacy"))
        .status();
    assert!(copied.is_ok_and(|s| s.success()));
    let file = old.join("legacy/topic.toml");
    let text = std::fs::read_to_string(&file).unwrap();
    assert!(text.contains("id = "), "{text}");
    let without_id: String =
        text.lines().filter(|l| !l.starts_with("id = ")).map(|l| format!("{l}\n")).collect();
    std::fs::write(&file, without_id).unwrap();

    let broker = Broker::start(&old, &[]);
    run(|| async {
        let client = connect(&broker).await;
        let topic = client.describe_topic("legacy").await.unwrap();
        assert!(topic.partitions.iter().all(|p| p.leader.is_some() && p.replicas.len() == 1));
        assert!(topic.configs.contains(&("retention.ms".into(), "86400000".into())));
        let mut total = 0;
        for partition in 0..2u32 {
            let records = read_all(&client, "legacy", partition, 0).await;
            assert!(records.iter().all(|(_, r)| r.headers[0].1.len() == 8));
            total += records.len();
        }
        assert_eq!(total, 20, "every record of the old directory");
    });
    let text = std::fs::read_to_string(&file).unwrap();
    assert!(text.contains("id = "), "the topic's file records its id: {text}");
    assert!(broker.stderr().contains("brought into the cluster"), "{}", broker.stderr());
}
