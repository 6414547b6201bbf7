//! Many partitions on one broker, against the real binary: the disk a partition costs follows its
//! data, and creation refuses what the broker cannot hold (`max.broker.partitions`) with
//! POLICY_VIOLATION, through both protocols, while other clients carry on.

mod common;

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use kafka_protocol::messages::create_partitions_request::CreatePartitionsTopic;
use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
use kafka_protocol::messages::{
    ApiKey, BrokerId, CreatePartitionsRequest, CreatePartitionsResponse, FetchRequest,
    FetchResponse, ProduceResponse, TopicName,
};
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::records::RecordBatchDecoder;

use common::kafka_wire::{batch, create_topic, large_batch, latest_offset, produce_request, Conn};
use common::Broker;

/// What an idle partition may cost on disk, all its files and its directory counted.
const IDLE_PARTITION_DISK_BYTES_MAX: u64 = 64 * 1024;
/// Kafka's POLICY_VIOLATION.
const POLICY_VIOLATION: i16 = 44;

/// Bytes the files and directories under `dir` occupy on the device, as `du` counts them.
fn disk_bytes(dir: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let mut total = 0;
    for entry in std::fs::read_dir(dir).unwrap() {
        let entry = entry.unwrap();
        let metadata = entry.metadata().unwrap();
        total += metadata.blocks() * 512;
        if metadata.is_dir() {
            total += disk_bytes(&entry.path());
        }
    }
    total
}

/// The high watermark of every partition of `topic` (partitions 0..count), by ListOffsets.
fn latest_offsets(conn: &mut Conn, topic: &str, count: i32) -> Vec<i64> {
    use kafka_protocol::messages::list_offsets_request::{ListOffsetsPartition, ListOffsetsTopic};
    use kafka_protocol::messages::{ListOffsetsRequest, ListOffsetsResponse};
    let mut wanted = ListOffsetsTopic::default();
    wanted.name = TopicName(StrBytes::from_string(topic.to_string()));
    wanted.partitions = (0..count)
        .map(|index| {
            let mut partition = ListOffsetsPartition::default();
            partition.partition_index = index;
            partition.timestamp = -1;
            partition
        })
        .collect();
    let mut request = ListOffsetsRequest::default();
    request.replica_id = BrokerId(-1);
    request.topics = vec![wanted];
    let response: ListOffsetsResponse = conn.call(ApiKey::ListOffsets, 2, &request);
    response.topics[0].partitions.iter().map(|p| p.offset).collect()
}

/// Records per partition of `topic` (partitions 0..count), read back with one Fetch.
fn records_per_partition(conn: &mut Conn, topic: &str, count: i32) -> Vec<usize> {
    let mut wanted = FetchTopic::default();
    wanted.topic = TopicName(StrBytes::from_string(topic.to_string()));
    wanted.partitions = (0..count)
        .map(|index| {
            let mut partition = FetchPartition::default();
            partition.partition = index;
            partition.partition_max_bytes = 1 << 20;
            partition
        })
        .collect();
    let mut request = FetchRequest::default();
    request.replica_id = BrokerId(-1);
    request.max_bytes = 64 << 20;
    request.topics = vec![wanted];
    let response: FetchResponse = conn.call(ApiKey::Fetch, 11, &request);
    response.responses[0]
        .partitions
        .iter()
        .map(|p| {
            assert_eq!(p.error_code, 0, "partition {}", p.partition_index);
            let mut records = p.records.clone().unwrap_or_default();
            let mut read = 0;
            while !records.is_empty() {
                read += RecordBatchDecoder::decode(&mut records).unwrap().records.len();
            }
            read
        })
        .collect()
}

/// A few hundred partitions across several topics cost a bounded amount of disk before and
/// after a little data is written, and after a restart; every record reads back.
#[test]
fn hundreds_of_partitions_cost_disk_by_their_data() {
    const TOPICS: usize = 3;
    const PARTITIONS: i32 = 100;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut broker = Broker::start(&data, &[]);
    let mut conn = Conn::open(&broker.kafka_addr);
    let topics: Vec<String> = (0..TOPICS).map(|t| format!("many-{t}")).collect();
    for topic in &topics {
        assert_eq!(create_topic(&mut conn, topic, PARTITIONS).0, 0);
    }
    let partitions = (TOPICS as u64) * PARTITIONS as u64;
    let bound = partitions * IDLE_PARTITION_DISK_BYTES_MAX;
    let empty = disk_bytes(&data);
    println!("{partitions} empty partitions: {empty} bytes on disk");
    assert!(empty <= bound, "{partitions} empty partitions hold {empty} bytes (bound {bound})");

    for topic in &topics {
        for partition in 0..PARTITIONS {
            let mut request = produce_request(topic, -1, batch(-1, -1, partition, 10));
            request.topic_data[0].partition_data[0].index = partition;
            let response: ProduceResponse = conn.call(ApiKey::Produce, 7, &request);
            assert_eq!(response.responses[0].partition_responses[0].error_code, 0);
        }
    }
    let written = disk_bytes(&data);
    println!("{partitions} partitions with 10 records each: {written} bytes on disk");
    assert!(written <= bound, "{written} bytes on disk (bound {bound})");
    for topic in &topics {
        assert_eq!(records_per_partition(&mut conn, topic, PARTITIONS), vec![10; 100]);
    }

    broker.stop();
    let stopped = disk_bytes(&data);
    broker.restart();
    let mut conn = Conn::open(&broker.kafka_addr);
    for topic in &topics {
        assert_eq!(records_per_partition(&mut conn, topic, PARTITIONS), vec![10; 100]);
    }
    let restarted = disk_bytes(&data);
    println!("after a clean stop: {stopped} bytes; after the restart: {restarted} bytes");
    assert!(stopped <= bound && restarted <= bound, "{stopped}, {restarted} (bound {bound})");
}

/// Past `max.broker.partitions`, CreateTopics (Kafka and native), CreatePartitions and
/// auto-creation are refused with POLICY_VIOLATION and a reason, while a producer carries on
/// and nothing stored is touched. The 16 partitions of `__consumer_offsets` are kept free until
/// it exists, so a group's first commit still works on a broker full of topics.
#[test]
fn creating_past_max_broker_partitions_is_refused_and_others_carry_on() {
    let dir = tempfile::tempdir().unwrap();
    // 50 + 10 user partitions, and 16 kept for __consumer_offsets.
    let broker = Broker::start(&dir.path().join("data"), &["--set", "max.broker.partitions=76"]);
    let mut conn = Conn::open(&broker.kafka_addr);
    assert_eq!(create_topic(&mut conn, "busy", 50).0, 0);

    let stop = Arc::new(AtomicBool::new(false));
    let producer = {
        let (addr, stop) = (broker.kafka_addr.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut conn = Conn::open(&addr);
            let mut acknowledged = 0;
            while !stop.load(Ordering::Relaxed) || acknowledged == 0 {
                let request = produce_request("busy", -1, batch(-1, -1, 0, 5));
                let response: ProduceResponse = conn.call(ApiKey::Produce, 7, &request);
                assert_eq!(response.responses[0].partition_responses[0].error_code, 0);
                acknowledged += 5;
            }
            acknowledged
        })
    };

    let (code, message) = create_topic(&mut conn, "too-many", 11);
    assert_eq!(code, POLICY_VIOLATION, "{message}");
    assert!(message.contains("max.broker.partitions=76"), "{message}");
    assert_eq!(create_topic(&mut conn, "fits", 10).0, 0, "up to the limit is fine");

    let mut grow = CreatePartitionsTopic::default();
    grow.name = TopicName(StrBytes::from_static_str("busy"));
    grow.count = 51;
    let mut request = CreatePartitionsRequest::default();
    request.topics = vec![grow];
    request.timeout_ms = 10_000;
    let grown: CreatePartitionsResponse = conn.call(ApiKey::CreatePartitions, 1, &request);
    assert_eq!(grown.results[0].error_code, POLICY_VIOLATION);

    let native = std::process::Command::new(common::BINARY)
        .args(["topic", "create", "native-too-many", "--partitions", "5", "--broker", &broker.addr])
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&native.stderr);
    assert!(!native.status.success() && said.contains("max.broker.partitions"), "{said}");

    // Auto-creation on produce goes through the same check.
    let request = produce_request("auto-created", -1, batch(-1, -1, 0, 1));
    let response: ProduceResponse = conn.call(ApiKey::Produce, 7, &request);
    assert_ne!(response.responses[0].partition_responses[0].error_code, 0);

    // At the limit, the first group (its coordinator found) still creates __consumer_offsets in
    // its kept room.
    {
        use kafka_protocol::messages::offset_commit_request::{
            OffsetCommitRequestPartition, OffsetCommitRequestTopic,
        };
        use kafka_protocol::messages::{GroupId, OffsetCommitRequest, OffsetCommitResponse};
        let mut partition = OffsetCommitRequestPartition::default();
        partition.committed_offset = 1;
        let mut topic = OffsetCommitRequestTopic::default();
        topic.name = TopicName(StrBytes::from_static_str("busy"));
        topic.partitions = vec![partition];
        let mut commit = OffsetCommitRequest::default();
        commit.group_id = GroupId(StrBytes::from_static_str("at-the-limit"));
        commit.generation_id_or_member_epoch = -1;
        commit.topics = vec![topic];
        common::kafka_wire::find_coordinator(&mut conn, "at-the-limit");
        let committed: OffsetCommitResponse = common::kafka_wire::when_coordinated(
            || conn.call(ApiKey::OffsetCommit, 2, &commit),
            |r: &OffsetCommitResponse| r.topics[0].partitions[0].error_code,
        );
        assert_eq!(committed.topics[0].partitions[0].error_code, 0);
    }

    stop.store(true, Ordering::Relaxed);
    let acknowledged = producer.join().unwrap();
    assert_eq!(latest_offset(&mut conn, "busy"), acknowledged, "every acknowledged record kept");
    for refused in ["too-many", "native-too-many", "auto-created"] {
        assert!(!broker.data_dir.join(refused).exists(), "{refused} left a directory");
    }
}

/// Memory under load across many partitions stays under the stated ceiling: what the broker
/// holds at rest, plus each shard's tail-cache budget, plus `queued.max.request.bytes`, plus
/// slack for the allocator and requests in flight. Each partition may cache 512 KiB, so 200 busy
/// partitions would keep 100 MiB without the shard budget.
#[test]
fn memory_under_load_stays_under_the_shard_budgets() {
    const PARTITIONS: i32 = 200;
    const SHARDS: u64 = 2;
    const SHARD_TAIL_MIB: u64 = 8;
    const QUEUED_MIB: u64 = 16;
    const SLACK_MIB: u64 = 32;
    const ROUNDS: usize = 9;
    let dir = tempfile::tempdir().unwrap();
    let shard_tail = (SHARD_TAIL_MIB << 20).to_string();
    let queued = (QUEUED_MIB << 20).to_string();
    let broker = Broker::start(
        &dir.path().join("data"),
        &[
            "--set",
            "log.tail.cache.bytes=524288",
            "--set",
            &format!("log.tail.cache.shard.bytes={shard_tail}"),
            "--set",
            &format!("queued.max.request.bytes={queued}"),
        ],
    );
    let mut conn = Conn::open(&broker.kafka_addr);
    assert_eq!(create_topic(&mut conn, "busy", PARTITIONS).0, 0);
    let at_rest = common::proc_status_kib(broker.pid(), "VmRSS:") / 1024;

    // Rounds of one request carrying a batch for every partition, as a batching producer sends.
    let one_batch = large_batch(60, 1000);
    for _round in 0..ROUNDS {
        let mut request = produce_request("busy", 1, one_batch.clone());
        let template = request.topic_data[0].partition_data[0].clone();
        request.topic_data[0].partition_data = (0..PARTITIONS)
            .map(|index| {
                let mut partition = template.clone();
                partition.index = index;
                partition
            })
            .collect();
        let response: ProduceResponse = conn.call(ApiKey::Produce, 7, &request);
        let codes = response.responses[0].partition_responses.iter().map(|p| p.error_code);
        assert!(codes.clone().all(|code| code == 0), "{:?}", codes.collect::<Vec<_>>());
    }
    let peak = common::proc_status_kib(broker.pid(), "VmHWM:") / 1024;
    let ceiling = at_rest + SHARDS * SHARD_TAIL_MIB + QUEUED_MIB + SLACK_MIB;
    let produced_mib = (ROUNDS as u64 * PARTITIONS as u64 * one_batch.len() as u64) >> 20;
    println!("at rest {at_rest} MiB, peak {peak} MiB, ceiling {ceiling} MiB, {produced_mib} MiB produced");
    assert!(peak <= ceiling, "peak RSS {peak} MiB over the ceiling {ceiling} MiB");
    let latest = latest_offsets(&mut conn, "busy", PARTITIONS);
    assert_eq!(latest, vec![ROUNDS as i64 * 60; PARTITIONS as usize]);
}
