//! The console tools against a running broker: topics, produce from stdin, consume.

mod common;

use std::io::Write;
use std::process::{Command, Output, Stdio};

use common::Broker;

fn spate(broker: &Broker, args: &[&str], stdin: Option<&str>) -> Output {
    let mut child = Command::new(common::BINARY)
        .args(args)
        .args(["--broker", &broker.addr])
        .stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    if let Some(input) = stdin {
        child.stdin.take().unwrap().write_all(input.as_bytes()).unwrap();
    }
    let output = child.wait_with_output().unwrap();
    assert!(
        output.status.success(),
        "spate {args:?} failed: {}\nthe broker's log:\n{}",
        String::from_utf8_lossy(&output.stderr),
        broker.stderr()
    );
    output
}

fn stdout(output: &Output) -> String {
    String::from_utf8(output.stdout.clone()).unwrap()
}

#[test]
fn console_tools_create_produce_consume_and_delete() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(&dir.path().join("data"), &[]);
    spate(
        &broker,
        &["topic", "create", "lines", "--partitions", "3", "--config", "retention.ms=86400000"],
        None,
    );
    assert_eq!(stdout(&spate(&broker, &["topic", "list"], None)).trim(), "lines");

    let input: String = (0..300).map(|i| format!("user{}:event {i}\n", i % 10)).collect();
    spate(&broker, &["produce", "lines", "--key-separator", ":", "--acks", "all"], Some(&input));

    let described = stdout(&spate(&broker, &["topic", "describe", "lines"], None));
    assert!(described.contains("retention.ms=86400000"), "{described}");
    let total: u64 = described
        .lines()
        .filter_map(|l| l.split("high_watermark").nth(1))
        .map(|n| n.trim().parse::<u64>().unwrap())
        .sum();
    assert_eq!(total, 300);

    let consumed = stdout(&spate(
        &broker,
        &["consume", "lines", "--from-beginning", "--count", "300", "--format", "%k|%v|%p|%o"],
        None,
    ));
    let mut rows: Vec<(String, String, u32, u64)> = consumed
        .lines()
        .map(|line| {
            let parts: Vec<&str> = line.split('|').collect();
            (parts[0].into(), parts[1].into(), parts[2].parse().unwrap(), parts[3].parse().unwrap())
        })
        .collect();
    assert_eq!(rows.len(), 300);
    // One key, one partition (murmur2), and per partition the input order is kept.
    for key in 0..10 {
        let partitions: std::collections::BTreeSet<u32> =
            rows.iter().filter(|r| r.0 == format!("user{key}")).map(|r| r.2).collect();
        assert_eq!(partitions.len(), 1, "key user{key} landed in {partitions:?}");
        let expected =
            spate::client::partitioner::partition_for_key(format!("user{key}").as_bytes(), 3);
        assert_eq!(partitions.into_iter().next(), Some(expected));
    }
    rows.sort_by_key(|r| (r.2, r.3));
    for partition in 0..3 {
        let values: Vec<usize> = rows
            .iter()
            .filter(|r| r.2 == partition)
            .map(|r| r.1.trim_start_matches("event ").parse().unwrap())
            .collect();
        assert!(
            values.windows(2).all(|w| w[0] < w[1]),
            "partition {partition} keeps producer order"
        );
    }

    let one = stdout(&spate(
        &broker,
        &[
            "consume",
            "lines",
            "--partition",
            "0",
            "--offset",
            "2",
            "--count",
            "1",
            "--format",
            "%o",
        ],
        None,
    ));
    assert_eq!(one.trim(), "2");
    let idle = stdout(&spate(&broker, &["consume", "lines", "--timeout-ms", "300"], None));
    assert!(idle.is_empty(), "a consumer at the end prints nothing new");

    // The data directory as `spate cluster log-dirs` shows it: every partition, with its size.
    let dirs = stdout(&spate(&broker, &["cluster", "log-dirs", "--topic", "lines"], None));
    for partition in 0..3 {
        assert!(dirs.contains(&format!("  lines-{partition}  ")), "{dirs}");
    }
    assert!(dirs.contains("bytes free"), "{dirs}");
    // Partition 0's records below offset 2 deleted: its log starts there.
    let args = ["topic", "delete-records", "lines", "--partition", "0", "--before", "2"];
    let deleted = stdout(&spate(&broker, &args, None));
    assert!(deleted.contains("lines-0 starts at offset 2"), "{deleted}");
    let described = stdout(&spate(&broker, &["topic", "describe", "lines"], None));
    let first = described.lines().find(|l| l.contains("partition    0")).unwrap_or_default();
    assert!(first.contains("log_start            2"), "{described}");

    spate(&broker, &["topic", "delete", "lines"], None);
    assert_eq!(stdout(&spate(&broker, &["topic", "list"], None)).trim(), "");
    assert!(!broker.data_dir.join("lines").exists());
}

#[test]
fn producing_to_a_new_topic_creates_it_and_places_keys_like_kafka() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(&dir.path().join("data"), &["--set", "num.partitions=3"]);
    let input: String = (0..60).map(|i| format!("key{}:v{i}\n", i % 6)).collect();
    spate(&broker, &["produce", "fresh", "--key-separator", ":"], Some(&input));
    let consumed = stdout(&spate(
        &broker,
        &["consume", "fresh", "--from-beginning", "--count", "60", "--format", "%k %p"],
        None,
    ));
    let mut seen = std::collections::BTreeSet::new();
    for line in consumed.lines() {
        let (key, partition) = line.split_once(' ').unwrap();
        let expected = spate::client::partitioner::partition_for_key(key.as_bytes(), 3);
        assert_eq!(partition.parse::<u32>().unwrap(), expected, "key {key}");
        seen.insert(partition.to_string());
    }
    assert_eq!(consumed.lines().count(), 60);
    assert!(seen.len() > 1, "keys spread over the auto-created partitions");
}

#[test]
fn tune_disk_measures_and_recommends_without_leaving_files() {
    let dir = tempfile::tempdir().unwrap();
    let output = Command::new(common::BINARY)
        .args(["tune", "disk", "--file-mib", "64", "--millis-each", "100", "--data-dir"])
        .arg(dir.path())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{text}\n{}", String::from_utf8_lossy(&output.stderr));
    assert!(text.contains("sequential write MiB/s") && text.contains("sequential read"), "{text}");
    assert!(text.contains("\"log.flush.write.bytes.max\" = "), "{text}");
    assert!(text.contains("\"log.read.ahead.bytes\" = "), "{text}");
    assert!(!dir.path().join(".spate-tune-scratch").exists());
}
