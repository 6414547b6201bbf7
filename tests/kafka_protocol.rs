//! The Kafka listener at the byte level, against the real binary: version negotiation, the
//! idempotent producer across a crash, acks=0, and malformed frames.

mod common;

use std::io::Write;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use indexmap::IndexMap;
use kafka_protocol::messages::describe_configs_request::DescribeConfigsResource;
use kafka_protocol::messages::{
    ApiKey, ApiVersionsRequest, ApiVersionsResponse, DescribeConfigsRequest,
    DescribeConfigsResponse, InitProducerIdRequest, InitProducerIdResponse, MetadataRequest,
    MetadataResponse, ProduceResponse, TopicName,
};
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::records::{
    Compression, Record, RecordBatchEncoder, RecordEncodeOptions, TimestampType,
};

use common::kafka_wire::{
    batch, batch_at, create_topic, create_topic_with, latest_offset, produce_request, produced,
    Conn,
};
use common::Broker;
use spate::record::OwnedRecord;

#[test]
fn api_versions_answers_unknown_versions_in_v0_with_the_ranges() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(&dir.path().join("data"), &[]);
    let mut conn = Conn::open(&broker.kafka_addr);
    let current: ApiVersionsResponse =
        conn.call(ApiKey::ApiVersions, 3, &ApiVersionsRequest::default());
    assert_eq!(current.error_code, 0);
    let produce = current.api_keys.iter().find(|k| k.api_key == ApiKey::Produce as i16).unwrap();
    assert_eq!((produce.min_version, produce.max_version), (0, 9));
    // KIP-511: a version from the future gets a v0 body with UNSUPPORTED_VERSION.
    let id = conn.send_with_version(ApiKey::ApiVersions, 3, 99, &ApiVersionsRequest::default());
    let future: ApiVersionsResponse = conn.response(ApiKey::ApiVersions, 0, id);
    assert_eq!(future.error_code, 35);
    assert_eq!(future.api_keys, current.api_keys);
    let metadata: MetadataResponse = conn.call(ApiKey::Metadata, 1, &MetadataRequest::default());
    assert_eq!(metadata.brokers.len(), 1);
}

#[test]
fn an_idempotent_retry_is_stored_once_even_across_a_crash() {
    let dir = tempfile::tempdir().unwrap();
    let mut broker = Broker::start(&dir.path().join("data"), &[]);
    let mut conn = Conn::open(&broker.kafka_addr);
    let init: InitProducerIdResponse =
        conn.call(ApiKey::InitProducerId, 1, &InitProducerIdRequest::default());
    assert_eq!(init.error_code, 0);
    let (pid, epoch) = (init.producer_id.0, init.producer_epoch);
    assert!(pid >= 0);

    let first = batch(pid, epoch, 0, 10);
    let response: ProduceResponse =
        conn.call(ApiKey::Produce, 7, &produce_request("idem", -1, first.clone()));
    assert_eq!(produced(&response), (0, 0));
    // The same batch again, as after a lost acknowledgement: the original offset, nothing new.
    let response: ProduceResponse =
        conn.call(ApiKey::Produce, 7, &produce_request("idem", -1, first.clone()));
    assert_eq!(produced(&response), (0, 0));
    assert_eq!(latest_offset(&mut conn, "idem"), 10);

    let second = batch(pid, epoch, 10, 5);
    let response: ProduceResponse =
        conn.call(ApiKey::Produce, 7, &produce_request("idem", -1, second.clone()));
    assert_eq!(produced(&response), (0, 10));
    // A gap in the sequence, and a fenced epoch.
    let gap: ProduceResponse =
        conn.call(ApiKey::Produce, 7, &produce_request("idem", -1, batch(pid, epoch, 30, 1)));
    assert_eq!(produced(&gap).0, 45, "OUT_OF_ORDER_SEQUENCE_NUMBER");
    let bumped: ProduceResponse =
        conn.call(ApiKey::Produce, 7, &produce_request("idem", -1, batch(pid, epoch + 1, 0, 1)));
    assert_eq!(produced(&bumped), (0, 15));
    let stale: ProduceResponse =
        conn.call(ApiKey::Produce, 7, &produce_request("idem", -1, batch(pid, epoch, 15, 1)));
    assert_eq!(produced(&stale).0, 47, "INVALID_PRODUCER_EPOCH");

    // After kill -9 the producer state is rebuilt from the log: the retry is still recognised.
    broker.kill9();
    broker.restart();
    let mut conn = Conn::open(&broker.kafka_addr);
    let retried: ProduceResponse =
        conn.call(ApiKey::Produce, 7, &produce_request("idem", -1, batch(pid, epoch + 1, 0, 1)));
    assert_eq!(produced(&retried), (0, 15));
    assert_eq!(latest_offset(&mut conn, "idem"), 16);
}

#[test]
fn acks_zero_gets_no_response_and_order_is_kept() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(&dir.path().join("data"), &[]);
    let mut conn = Conn::open(&broker.kafka_addr);
    conn.send(ApiKey::Produce, 7, &produce_request("fire", 0, batch(-1, -1, 0, 3)));
    conn.send(ApiKey::Produce, 7, &produce_request("fire", 0, batch(-1, -1, 0, 4)));
    // The next response on the wire is the ApiVersions answer: the produces had none.
    let id = conn.send(ApiKey::ApiVersions, 3, &ApiVersionsRequest::default());
    let versions: ApiVersionsResponse = conn.response(ApiKey::ApiVersions, 3, id);
    assert_eq!(versions.error_code, 0);
    // Unacknowledged records become visible once written; wait for that, boundedly.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while latest_offset(&mut conn, "fire") < 7 && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(latest_offset(&mut conn, "fire"), 7);
}

#[test]
fn malformed_frames_get_an_error_or_a_clean_close_and_others_carry_on() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(&dir.path().join("data"), &["--set", "message.max.bytes=1000"]);
    let mut bystander = Conn::open(&broker.kafka_addr);
    let check_bystander = |conn: &mut Conn| {
        let response: ProduceResponse =
            conn.call(ApiKey::Produce, 8, &produce_request("ok", 1, batch(-1, -1, 0, 2)));
        assert_eq!(produced(&response).0, 0, "{:?}", response);
    };
    check_bystander(&mut bystander);

    // A bad CRC-32C: CORRUPT_MESSAGE, and the connection goes on.
    let mut conn = Conn::open(&broker.kafka_addr);
    let mut bad = batch(-1, -1, 0, 3).to_vec();
    let last = bad.len() - 1;
    bad[last] ^= 0x40;
    let response: ProduceResponse =
        conn.call(ApiKey::Produce, 7, &produce_request("bad", 1, Bytes::from(bad)));
    assert_eq!(produced(&response).0, 2, "CORRUPT_MESSAGE");
    // Too large for the topic: MESSAGE_TOO_LARGE.
    let big = batch(-1, -1, 0, 200);
    let response: ProduceResponse = conn.call(ApiKey::Produce, 7, &produce_request("bad", 1, big));
    assert_eq!(produced(&response).0, 10, "MESSAGE_TOO_LARGE");
    // Two batches for one partition: INVALID_RECORD.
    let mut two = batch(-1, -1, 0, 1).to_vec();
    two.extend_from_slice(&batch(-1, -1, 0, 1));
    let response: ProduceResponse =
        conn.call(ApiKey::Produce, 7, &produce_request("bad", 1, Bytes::from(two)));
    assert_eq!(produced(&response).0, 87, "INVALID_RECORD");

    // An unknown API key closes the connection.
    let mut conn = Conn::open(&broker.kafka_addr);
    conn.send_raw(&[0x03, 0xE7, 0, 0, 0, 0, 0, 1, 0xFF, 0xFF]);
    assert!(conn.is_closed());
    // So do a version that is not served and a body the codec cannot decode.
    let mut conn = Conn::open(&broker.kafka_addr);
    conn.send(ApiKey::Produce, 2, &ApiVersionsRequest::default());
    assert!(conn.is_closed());
    let mut conn = Conn::open(&broker.kafka_addr);
    conn.send_raw(&[0, 3, 0, 1, 0, 0, 0, 1, 0, 4, b's', b'p']);
    assert!(conn.is_closed());
    // Found by the fuzzer: a DeleteGroups claiming 1.2 billion group ids in 14 bytes. The codec
    // allocated 28 GB for them up front and the broker aborted; now it is undecodable.
    let mut conn = Conn::open(&broker.kafka_addr);
    conn.send_raw(&[0x00, 0x2a, 0, 0, 0x09, 0, 0x0a, 0, 0, 0, 0x47, 0x46, 0x46, 0x50]);
    assert!(conn.is_closed());
    // A size beyond socket.request.max.bytes, and a negative one.
    for size in [i32::MAX, -5] {
        let mut conn = Conn::open(&broker.kafka_addr);
        conn.stream.write_all(&size.to_be_bytes()).unwrap();
        assert!(conn.is_closed());
    }
    // A frame cut short by the client.
    let mut conn = Conn::open(&broker.kafka_addr);
    conn.stream.write_all(&100i32.to_be_bytes()).unwrap();
    conn.stream.write_all(&[0, 18, 0, 3]).unwrap();
    drop(conn);

    check_bystander(&mut bystander);
    let log = broker.stderr();
    assert!(log.contains("unknown API key 999"), "{log}");
    assert!(log.contains("Produce v2 is not supported"), "{log}");
    assert!(log.contains("socket.request.max.bytes"), "{log}");
}

#[test]
fn create_partitions_adds_partitions_that_survive_a_restart() {
    use kafka_protocol::messages::create_partitions_request::CreatePartitionsTopic;
    use kafka_protocol::messages::create_topics_request::CreatableTopic;
    use kafka_protocol::messages::{
        CreatePartitionsRequest, CreatePartitionsResponse, CreateTopicsRequest,
        CreateTopicsResponse,
    };
    let dir = tempfile::tempdir().unwrap();
    let mut broker = Broker::start(&dir.path().join("data"), &[]);
    let mut conn = Conn::open(&broker.kafka_addr);
    let mut topic = CreatableTopic::default();
    topic.name = TopicName(StrBytes::from_static_str("grow"));
    topic.num_partitions = 1;
    topic.replication_factor = 1;
    let mut create = CreateTopicsRequest::default();
    create.topics = vec![topic];
    let created: CreateTopicsResponse = conn.call(ApiKey::CreateTopics, 4, &create);
    assert_eq!(created.topics[0].error_code, 0);

    let grow = |conn: &mut Conn, count: i32| {
        let mut topic = CreatePartitionsTopic::default();
        topic.name = TopicName(StrBytes::from_static_str("grow"));
        topic.count = count;
        let mut request = CreatePartitionsRequest::default();
        request.topics = vec![topic];
        request.timeout_ms = 10_000;
        let response: CreatePartitionsResponse = conn.call(ApiKey::CreatePartitions, 1, &request);
        response.results[0].error_code
    };
    // Acknowledged records in the existing partition, which growing must keep.
    let response: ProduceResponse =
        conn.call(ApiKey::Produce, 7, &produce_request("grow", -1, batch(-1, -1, 0, 4)));
    assert_eq!(produced(&response), (0, 0));
    assert_eq!(grow(&mut conn, 3), 0);
    assert_eq!(grow(&mut conn, 2), 37, "INVALID_PARTITIONS: partitions never shrink");

    let mut request = produce_request("grow", 1, batch(-1, -1, 0, 4));
    request.topic_data[0].partition_data[0].index = 2;
    let response: ProduceResponse = conn.call(ApiKey::Produce, 7, &request);
    assert_eq!(produced(&response), (0, 0));

    broker.stop();
    broker.restart();
    let mut conn = Conn::open(&broker.kafka_addr);
    let mut request = MetadataRequest::default();
    let mut wanted = kafka_protocol::messages::metadata_request::MetadataRequestTopic::default();
    wanted.name = Some(TopicName(StrBytes::from_static_str("grow")));
    request.topics = Some(vec![wanted]);
    let metadata: MetadataResponse = conn.call(ApiKey::Metadata, 4, &request);
    assert_eq!(metadata.topics[0].partitions.len(), 3);
    assert_eq!(latest_offset(&mut conn, "grow"), 4, "partition 0 keeps its records");
}

#[test]
fn committed_offsets_show_in_spate_group_describe_and_survive_a_crash() {
    use kafka_protocol::messages::offset_commit_request::{
        OffsetCommitRequestPartition, OffsetCommitRequestTopic,
    };
    use kafka_protocol::messages::{GroupId, OffsetCommitRequest, OffsetCommitResponse};
    let dir = tempfile::tempdir().unwrap();
    let mut broker = Broker::start(&dir.path().join("data"), &[]);
    let mut conn = Conn::open(&broker.kafka_addr);
    let response: ProduceResponse =
        conn.call(ApiKey::Produce, 7, &produce_request("lagging", 1, batch(-1, -1, 0, 10)));
    assert_eq!(produced(&response).0, 0);
    // A commit outside membership (generation -1, no member id), as a consumer without a
    // subscription makes.
    let mut partition = OffsetCommitRequestPartition::default();
    partition.partition_index = 0;
    partition.committed_offset = 4;
    let mut topic = OffsetCommitRequestTopic::default();
    topic.name = TopicName(StrBytes::from_static_str("lagging"));
    topic.partitions = vec![partition];
    let mut commit = OffsetCommitRequest::default();
    commit.group_id = GroupId(StrBytes::from_static_str("auditors"));
    commit.generation_id_or_member_epoch = -1;
    commit.topics = vec![topic];
    common::kafka_wire::find_coordinator(&mut conn, "auditors");
    let committed: OffsetCommitResponse = common::kafka_wire::when_coordinated(
        || conn.call(ApiKey::OffsetCommit, 2, &commit),
        |r: &OffsetCommitResponse| r.topics[0].partitions[0].error_code,
    );
    assert_eq!(committed.topics[0].partitions[0].error_code, 0);

    broker.kill9();
    broker.restart();
    let spate = |args: &[&str]| {
        let output = std::process::Command::new(common::BINARY)
            .args(args)
            .args(["--broker", &broker.addr])
            .output()
            .unwrap();
        assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
        String::from_utf8_lossy(&output.stdout).into_owned()
    };
    assert!(spate(&["group", "list"]).contains("auditors"));
    let described = spate(&["group", "describe", "auditors"]);
    let row = described.lines().find(|l| l.contains("lagging")).unwrap_or_default();
    let fields: Vec<&str> = row.split_whitespace().collect();
    assert_eq!(
        fields,
        ["lagging", "partition", "0", "committed", "4", "high_watermark", "10", "lag", "6"]
    );
}

#[test]
fn records_cross_protocols_both_ways_compressed_ones_included() {
    use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
    use kafka_protocol::messages::{BrokerId, FetchRequest, FetchResponse};
    use kafka_protocol::records::RecordBatchDecoder;
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(&dir.path().join("data"), &[]);
    let mut conn = Conn::open(&broker.kafka_addr);

    // A zstd batch from a "Kafka client", with a header, then read by the native client.
    let mut records: Vec<Record> = Vec::new();
    for i in 0..5i64 {
        let mut headers = IndexMap::new();
        headers.insert(StrBytes::from_static_str("source"), Some(Bytes::from(format!("h{i}"))));
        records.push(Record {
            transactional: false,
            control: false,
            delete_horizon: false,
            partition_leader_epoch: -1,
            producer_id: -1,
            producer_epoch: -1,
            timestamp_type: TimestampType::Creation,
            offset: i,
            sequence: i as i32 - 1,
            timestamp: 1_700_000_000_000 + i,
            key: Some(Bytes::from(format!("k{i}"))),
            value: Some(Bytes::from(format!("kafka value {i}").repeat(20))),
            headers,
        });
    }
    let mut compressed = BytesMut::new();
    let options = RecordEncodeOptions { version: 2, compression: Compression::Zstd };
    RecordBatchEncoder::encode(&mut compressed, &records, &options).unwrap();
    let compressed = compressed.freeze();
    // Before Produce v7 zstd is not Kafka's to take (KIP-110): refused, nothing stored.
    let refused: ProduceResponse =
        conn.call(ApiKey::Produce, 6, &produce_request("cross", 1, compressed.clone()));
    assert_eq!(refused.responses[0].partition_responses[0].error_code, 76);
    let response: ProduceResponse =
        conn.call(ApiKey::Produce, 7, &produce_request("cross", 1, compressed));
    assert_eq!(produced(&response), (0, 0));
    let natively = common::run(|| async {
        let client = common::connect(&broker).await;
        let read = common::read_all(&client, "cross", 0, 0).await;
        // Then native records after them, for the Kafka reader below.
        common::produce(
            &client,
            "cross",
            0,
            spate::native::messages::Acks::All,
            vec![common::record(0, 5), common::record(0, 6)],
        )
        .await;
        read
    });
    assert_eq!(natively.len(), 5);
    for (i, (offset, record)) in natively.iter().enumerate() {
        assert_eq!(*offset, i as u64);
        assert_eq!(record.key.as_deref(), Some(format!("k{i}").as_bytes()));
        assert_eq!(record.value.as_deref(), Some(format!("kafka value {i}").repeat(20).as_bytes()));
        assert_eq!(record.headers, vec![(b"source".to_vec(), format!("h{i}").into_bytes())]);
        assert_eq!(record.timestamp, 1_700_000_000_000 + i as i64);
    }

    // Everything through a Kafka Fetch: the zstd batch as stored, the native entry converted.
    let mut partition = FetchPartition::default();
    partition.partition = 0;
    partition.fetch_offset = 0;
    partition.partition_max_bytes = 1 << 20;
    let mut topic = FetchTopic::default();
    topic.topic = TopicName(StrBytes::from_static_str("cross"));
    topic.partitions = vec![partition];
    let mut fetch = FetchRequest::default();
    fetch.replica_id = BrokerId(-1);
    fetch.max_bytes = 1 << 20;
    fetch.topics = vec![topic];
    let fetched: FetchResponse = conn.call(ApiKey::Fetch, 11, &fetch);
    let data = &fetched.responses[0].partitions[0];
    assert_eq!((data.error_code, data.high_watermark), (0, 7));
    let mut bytes = data.records.clone().unwrap_or_default();
    let sets = RecordBatchDecoder::decode_all(&mut bytes).unwrap();
    assert_eq!(sets.len(), 2, "one stored Kafka batch, one converted native entry");
    assert_eq!(sets[0].compression, Compression::Zstd);
    let all: Vec<&Record> = sets.iter().flat_map(|s| &s.records).collect();
    let offsets: Vec<i64> = all.iter().map(|r| r.offset).collect();
    assert_eq!(offsets, (0..7).collect::<Vec<_>>());
    let native = common::record(0, 6);
    assert_eq!(all[6].value.as_deref(), native.value.as_deref());
    assert_eq!(all[6].key.as_deref(), native.key.as_deref());
    assert_eq!(all[6].timestamp, native.timestamp);
}

/// OffsetCommit answers per partition: a topic or partition that does not exist gets
/// UNKNOWN_TOPIC_OR_PARTITION and is not stored, the others are committed with their leader
/// epoch (KIP-320), which OffsetFetch returns, also after a crash.
#[test]
fn offset_commit_answers_unknown_partitions_and_keeps_leader_epochs() {
    use kafka_protocol::messages::offset_commit_request::{
        OffsetCommitRequestPartition, OffsetCommitRequestTopic,
    };
    use kafka_protocol::messages::offset_fetch_request::OffsetFetchRequestTopic;
    use kafka_protocol::messages::{
        GroupId, OffsetCommitRequest, OffsetCommitResponse, OffsetFetchRequest, OffsetFetchResponse,
    };
    let dir = tempfile::tempdir().unwrap();
    let mut broker = Broker::start(&dir.path().join("data"), &[]);
    let mut conn = Conn::open(&broker.kafka_addr);
    let response: ProduceResponse =
        conn.call(ApiKey::Produce, 7, &produce_request("known", 1, batch(-1, -1, 0, 10)));
    assert_eq!(produced(&response).0, 0);

    let topic = |name: &'static str, partitions: &[i32]| {
        let mut topic = OffsetCommitRequestTopic::default();
        topic.name = TopicName(StrBytes::from_static_str(name));
        topic.partitions = partitions
            .iter()
            .map(|&index| {
                let mut partition = OffsetCommitRequestPartition::default();
                partition.partition_index = index;
                partition.committed_offset = 3;
                partition.committed_leader_epoch = 2;
                partition
            })
            .collect();
        topic
    };
    let mut commit = OffsetCommitRequest::default();
    commit.group_id = GroupId(StrBytes::from_static_str("epochs"));
    commit.generation_id_or_member_epoch = -1;
    commit.topics = vec![topic("known", &[0, 5, -1]), topic("ghost", &[0])];
    common::kafka_wire::find_coordinator(&mut conn, "epochs");
    let committed: OffsetCommitResponse = common::kafka_wire::when_coordinated(
        || conn.call(ApiKey::OffsetCommit, 7, &commit),
        |r: &OffsetCommitResponse| r.topics[0].partitions[0].error_code,
    );
    let codes: Vec<Vec<i16>> = committed
        .topics
        .iter()
        .map(|t| t.partitions.iter().map(|p| p.error_code).collect())
        .collect();
    assert_eq!(codes, [vec![0, 3, 3], vec![3]], "UNKNOWN_TOPIC_OR_PARTITION is 3");

    let fetch_committed = |conn: &mut Conn| {
        let mut wanted = OffsetFetchRequestTopic::default();
        wanted.name = TopicName(StrBytes::from_static_str("known"));
        wanted.partition_indexes = vec![0, 5];
        let mut request = OffsetFetchRequest::default();
        request.group_id = GroupId(StrBytes::from_static_str("epochs"));
        request.topics = Some(vec![wanted]);
        let response: OffsetFetchResponse = common::kafka_wire::when_coordinated(
            || conn.call(ApiKey::OffsetFetch, 7, &request),
            |r: &OffsetFetchResponse| r.error_code,
        );
        response.topics[0]
            .partitions
            .iter()
            .map(|p| (p.partition_index, p.committed_offset, p.committed_leader_epoch))
            .collect::<Vec<_>>()
    };
    assert_eq!(fetch_committed(&mut conn), [(0, 3, 2), (5, -1, -1)]);
    broker.kill9();
    broker.restart();
    let mut conn = Conn::open(&broker.kafka_addr);
    assert_eq!(fetch_committed(&mut conn), [(0, 3, 2), (5, -1, -1)], "after kill -9");
}

/// KIP-74: a fetch response holds at most `max_bytes`, each partition at most its
/// `partition_max_bytes`; only the first batch of the response may go over either.
#[test]
fn fetch_responses_keep_the_response_and_partition_limits() {
    use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
    use kafka_protocol::messages::{BrokerId, FetchRequest, FetchResponse};
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(&dir.path().join("data"), &[]);
    let mut conn = Conn::open(&broker.kafka_addr);
    assert_eq!(create_topic(&mut conn, "sized", 2).0, 0);
    let one_batch = batch(-1, -1, 0, 400);
    for partition in 0..2 {
        for _ in 0..3 {
            let mut request = produce_request("sized", 1, one_batch.clone());
            request.topic_data[0].partition_data[0].index = partition;
            let response: ProduceResponse = conn.call(ApiKey::Produce, 7, &request);
            assert_eq!(response.responses[0].partition_responses[0].error_code, 0);
        }
    }

    // Bytes of records per partition in a fetch of both partitions from offset 0.
    // (error code, high watermark, bytes of records) per partition of a fetch of both
    // partitions from `offsets`.
    let mut fetch_from = |offsets: [i64; 2], max_bytes: usize, partition_max_bytes: usize| {
        let mut topic = FetchTopic::default();
        topic.topic = TopicName(StrBytes::from_static_str("sized"));
        topic.partitions = (0..2)
            .map(|index| {
                let mut partition = FetchPartition::default();
                partition.partition = index;
                partition.fetch_offset = offsets[index as usize];
                partition.partition_max_bytes = partition_max_bytes as i32;
                partition
            })
            .collect();
        let mut request = FetchRequest::default();
        request.replica_id = BrokerId(-1);
        request.max_bytes = max_bytes as i32;
        request.min_bytes = 1;
        request.topics = vec![topic];
        let response: FetchResponse = conn.call(ApiKey::Fetch, 11, &request);
        response.responses[0]
            .partitions
            .iter()
            .map(|p| (p.error_code, p.high_watermark, p.records.as_ref().map_or(0, |r| r.len())))
            .collect::<Vec<_>>()
    };
    // A partition the response had no room for is not read, but still reports its high
    // watermark (consumers track their lag by it) and still refuses an offset outside its log.
    let whole = one_batch.len();
    assert_eq!(fetch_from([0, 0], whole, whole * 10), [(0, 1200, whole), (0, 1200, 0)]);
    assert_eq!(fetch_from([0, 5000], whole, whole * 10), [(0, 1200, whole), (1, -1, 0)]);
    let mut fetch = |max_bytes: usize, partition_max_bytes: usize| -> Vec<usize> {
        let answer = fetch_from([0, 0], max_bytes, partition_max_bytes);
        answer.into_iter().map(|(_, _, bytes)| bytes).collect()
    };
    assert_eq!(
        fetch(whole * 3 / 2, whole * 10),
        [whole, 0],
        "a second partition's first batch does not go over what is left of max_bytes"
    );
    assert_eq!(
        fetch(whole * 10, whole * 3 / 2),
        [whole, whole],
        "each partition stops at partition_max_bytes"
    );
    assert_eq!(
        fetch(whole / 2, whole * 10),
        [whole, 0],
        "the response's first batch goes out whole even over max_bytes"
    );
    assert_eq!(fetch(whole * 10, whole / 2), [whole, 0], "... and over partition_max_bytes");
}

/// Only the broker writes its internal topic: a client's produce to `__consumer_offsets` is
/// refused (INVALID_TOPIC_EXCEPTION, as Kafka answers), and so is creating it, whose records the
/// broker would otherwise replay as commits at its next start.
#[test]
fn clients_cannot_write_or_create_the_internal_offsets_topic() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(&dir.path().join("data"), &[]);
    let mut conn = Conn::open(&broker.kafka_addr);
    let (code, message) = create_topic(&mut conn, "__consumer_offsets", 1);
    assert_eq!(code, 17, "INVALID_TOPIC_EXCEPTION: {message}");

    let response: ProduceResponse = conn.call(
        ApiKey::Produce,
        7,
        &produce_request("__consumer_offsets", 1, batch(-1, -1, 0, 1)),
    );
    assert_eq!(produced(&response).0, 17, "INVALID_TOPIC_EXCEPTION");
    let offsets_dir = broker.data_dir.join("__consumer_offsets");
    let toml = std::fs::read_to_string(offsets_dir.join("topic.toml")).unwrap_or_default();
    assert!(
        toml.is_empty() || toml.contains("partitions = 16"),
        "created only by the broker, with its own settings: {toml}"
    );
}

/// Admin tools create topics with Kafka's full standard config set: what Spate does is taken
/// (and described back), anything else is INVALID_CONFIG naming the setting and why.
#[test]
fn create_topics_takes_the_standard_settings_at_what_spate_does() {
    let dir = tempfile::tempdir().unwrap();
    let mut broker = Broker::start(&dir.path().join("data"), &[]);
    let mut conn = Conn::open(&broker.kafka_addr);
    let standard = [
        ("cleanup.policy", "delete"),
        ("compression.type", "producer"),
        ("delete.retention.ms", "86400000"),
        ("message.timestamp.type", "CreateTime"),
        ("min.insync.replicas", "1"),
        ("unclean.leader.election.enable", "false"),
        ("retention.ms", "604800000"),
    ];
    assert_eq!(create_topic_with(&mut conn, "standard", 1, &standard), (0, String::new()));
    let (code, why) =
        create_topic_with(&mut conn, "appended", 1, &[("message.timestamp.type", "AppendTime")]);
    assert_eq!(code, 40, "INVALID_CONFIG: {why}");
    assert!(why.contains("message.timestamp.type") && why.contains("LogAppendTime"), "{why}");
    broker.stop();
}

/// What a topic's settings make of produced batches, through both protocols: `compression.type`
/// recompresses (every reader gets the records back), `LogAppendTime` gives batches the broker's
/// clock (and the produce response says which), and KIP-937's limits refuse batches whose
/// timestamps stray from it (INVALID_TIMESTAMP, nothing stored).
#[test]
fn topic_settings_recompress_stamp_and_bound_what_is_stored() {
    use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
    use kafka_protocol::messages::{BrokerId, FetchRequest, FetchResponse};
    use kafka_protocol::records::RecordBatchDecoder;
    const INVALID_TIMESTAMP: i16 = 32;
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(&dir.path().join("data"), &[]);
    let mut conn = Conn::open(&broker.kafka_addr);
    for (name, configs) in [
        ("zstd", vec![("compression.type", "zstd"), ("compression.zstd.level", "5")]),
        ("appended", vec![("message.timestamp.type", "LogAppendTime")]),
        ("recent", vec![("message.timestamp.before.max.ms", "60000")]),
        ("plain", vec![]),
        ("lz4", vec![("compression.type", "lz4")]),
        ("snappy", vec![("compression.type", "snappy")]),
    ] {
        assert_eq!(create_topic_with(&mut conn, name, 1, &configs), (0, String::new()), "{name}");
    }
    let now = || {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis()
            as i64
    };
    // A Fetch of the topic's partition at `version`: its error code and record batches.
    let fetch_at = |conn: &mut Conn, topic: &'static str, version: i16| {
        let mut partition = FetchPartition::default();
        partition.partition_max_bytes = 1 << 20;
        let mut wanted = FetchTopic::default();
        wanted.topic = TopicName(StrBytes::from_static_str(topic));
        wanted.partitions = vec![partition];
        let mut fetch = FetchRequest::default();
        fetch.replica_id = BrokerId(-1);
        fetch.max_bytes = 1 << 20;
        fetch.topics = vec![wanted];
        let fetched: FetchResponse = conn.call(ApiKey::Fetch, version, &fetch);
        let data = &fetched.responses[0].partitions[0];
        (data.error_code, data.records.clone().unwrap_or_default())
    };
    let fetch_batches = |conn: &mut Conn, topic: &'static str| fetch_at(conn, topic, 11).1;
    let decoded = |mut raw: Bytes| RecordBatchDecoder::decode_all(&mut raw).unwrap();

    // Uncompressed from a Kafka producer, from a native one: both stored in zstd, both read
    // back whole by either protocol.
    let sent = batch(-1, -1, -1, 20);
    let response: ProduceResponse =
        conn.call(ApiKey::Produce, 7, &produce_request("zstd", 1, sent.clone()));
    assert_eq!(produced(&response), (0, 0));
    assert_eq!(response.responses[0].partition_responses[0].log_append_time_ms, -1);
    let natively = common::run(|| async {
        let client = common::connect(&broker).await;
        let records = (20..25).map(|n| common::record(0, n)).collect();
        common::produce(&client, "zstd", 0, spate::native::messages::Acks::All, records).await;
        common::read_all(&client, "zstd", 0, 0).await
    });
    assert_eq!(natively.len(), 25);
    assert_eq!(natively[3].1.value.as_deref(), Some(&b"value--1-3"[..]));
    assert_eq!(natively[24].1.value, common::record(0, 24).value);
    let stored = decoded(fetch_batches(&mut conn, "zstd"));
    assert_eq!(stored.len(), 2);
    assert!(stored.iter().all(|b| b.compression == Compression::Zstd), "stored in zstd");
    let mut original = sent.clone();
    let originals = RecordBatchDecoder::decode_all(&mut original).unwrap();
    // Every record as sent, but for the leader epoch the broker stamps on the batch.
    let epoch_zero = |records: &[Record]| -> Vec<Record> {
        records.iter().map(|r| Record { partition_leader_epoch: 0, ..r.clone() }).collect()
    };
    assert_eq!(epoch_zero(&stored[0].records), epoch_zero(&originals[0].records));
    // A fetch from before zstd (v9) gets Kafka's UNSUPPORTED_COMPRESSION_TYPE, not zstd bytes.
    assert_eq!(fetch_at(&mut conn, "zstd", 9).0, 76);
    // The other codecs too, every record as sent.
    for (topic, codec) in [("lz4", Compression::Lz4), ("snappy", Compression::Snappy)] {
        let response: ProduceResponse =
            conn.call(ApiKey::Produce, 7, &produce_request(topic, 1, sent.clone()));
        assert_eq!(produced(&response), (0, 0), "{topic}");
        let stored = decoded(fetch_batches(&mut conn, topic));
        assert_eq!(stored[0].compression, codec, "{topic}");
        assert_eq!(epoch_zero(&stored[0].records), epoch_zero(&originals[0].records));
    }

    // LogAppendTime: the broker's clock, whatever the producer said.
    let before = now();
    let response: ProduceResponse =
        conn.call(ApiKey::Produce, 7, &produce_request("appended", 1, batch(-1, -1, -1, 3)));
    let answered = &response.responses[0].partition_responses[0];
    assert_eq!(answered.error_code, 0);
    let append_time = answered.log_append_time_ms;
    assert!((before..=now()).contains(&append_time), "{append_time} not the broker's clock");
    // Readers give every record the batch's max timestamp under LogAppendTime.
    let raw = fetch_batches(&mut conn, "appended");
    let header = spate::record::kafka_batch::BatchHeader::read(&raw).expect("a batch");
    assert_eq!(header.max_timestamp.get(), append_time);
    let stored = decoded(raw);
    assert!(stored[0].records.iter().all(|r| r.timestamp_type == TimestampType::LogAppend));
    // An idempotent producer's retry is answered with the time its batch was appended at, as
    // Kafka answers it, not the retry's.
    let init: InitProducerIdResponse =
        conn.call(ApiKey::InitProducerId, 1, &InitProducerIdRequest::default());
    let idempotent = batch(init.producer_id.0, init.producer_epoch, 0, 2);
    let request = produce_request("appended", -1, idempotent);
    let first: ProduceResponse = conn.call(ApiKey::Produce, 7, &request);
    assert_eq!(produced(&first), (0, 3));
    std::thread::sleep(std::time::Duration::from_millis(20));
    let retried: ProduceResponse = conn.call(ApiKey::Produce, 7, &request);
    assert_eq!(produced(&retried), (0, 3), "the original offset");
    let time = |r: &ProduceResponse| r.responses[0].partition_responses[0].log_append_time_ms;
    assert_eq!(time(&retried), time(&first), "the original append time");

    // The before-limit reads every record: a batch whose first record (and max timestamp) is
    // now but whose next is a day old is refused, nothing stored; the default after-limit (an
    // hour, Kafka 4.0's) refuses a producer's clock two hours ahead.
    let older = batch_at(2, now(), -86_400_000);
    let response: ProduceResponse =
        conn.call(ApiKey::Produce, 8, &produce_request("recent", 1, older));
    let refused = &response.responses[0].partition_responses[0];
    assert_eq!(refused.error_code, INVALID_TIMESTAMP);
    let message = refused.error_message.as_ref().map(|m| m.to_string()).unwrap_or_default();
    assert!(message.contains("offset 1 is out of range"), "{message}");
    assert!(fetch_batches(&mut conn, "recent").is_empty());
    let ahead = batch_at(3, now() + 2 * 3_600_000, 0);
    let response: ProduceResponse =
        conn.call(ApiKey::Produce, 7, &produce_request("plain", 1, ahead));
    assert_eq!(response.responses[0].partition_responses[0].error_code, INVALID_TIMESTAMP);
    let timely = batch_at(3, now(), 0);
    let response: ProduceResponse =
        conn.call(ApiKey::Produce, 7, &produce_request("plain", 1, timely));
    assert_eq!(produced(&response), (0, 0));
    let natively_ahead = common::run(|| async {
        let client = common::connect(&broker).await;
        let record = OwnedRecord { timestamp: now() + 2 * 3_600_000, ..common::record(0, 0) };
        let batch = common::batch_of([record]);
        client.produce("plain", 0, spate::native::messages::Acks::Leader, batch).await
    });
    let refused = natively_ahead.expect_err("a native batch two hours ahead is refused");
    assert!(format!("{refused:?}").contains("InvalidTimestamp"), "{refused:?}");
}

#[test]
fn the_broker_describes_its_cluster_settings() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(&dir.path().join("data"), &["--set", "broker.rack=r1"]);
    let mut conn = Conn::open(&broker.kafka_addr);
    let mut resource = DescribeConfigsResource::default();
    resource.resource_type = 4;
    resource.resource_name = StrBytes::from_static_str("0");
    resource.configuration_keys = None;
    let mut request = DescribeConfigsRequest::default();
    request.resources = vec![resource];
    let response: DescribeConfigsResponse = conn.call(ApiKey::DescribeConfigs, 1, &request);
    let result = &response.results[0];
    assert_eq!(result.error_code, 0, "{:?}", result.error_message);
    let value = |name: &str| {
        let entry = result.configs.iter().find(|c| c.name.as_str() == name);
        entry.and_then(|c| c.value.as_ref()).map(|v| v.to_string())
    };
    assert_eq!(value("node.id").as_deref(), Some("0"));
    // A cluster of one: no voters named, this broker its own.
    assert_eq!(value("controller.quorum.voters").as_deref(), Some(""));
    assert_eq!(value("broker.rack").as_deref(), Some("r1"));
    assert_eq!(value("broker.session.timeout.ms").as_deref(), Some("3000"));
    assert_eq!(value("broker.heartbeat.interval.ms").as_deref(), Some("500"));
    let native = value("native.advertised.listener").expect("the native address");
    assert_eq!(native, broker.addr);
    // Another broker's id, a name that is no id, and the cluster-wide defaults (none here), as
    // Kafka answers them.
    for (name, code, count) in [("7", 42, 0), ("one", 42, 0), ("", 0, 0)] {
        let mut resource = DescribeConfigsResource::default();
        resource.resource_type = 4;
        resource.resource_name = StrBytes::from_static_str(name);
        let mut request = DescribeConfigsRequest::default();
        request.resources = vec![resource];
        let response: DescribeConfigsResponse = conn.call(ApiKey::DescribeConfigs, 1, &request);
        let result = &response.results[0];
        assert_eq!((result.error_code, result.configs.len()), (code, count), "broker {name:?}");
    }
    // A group (Kafka 4.0's resource 32): KIP-848's settings at their defaults, read-only; a
    // group needs a name.
    for (name, code) in [("readers", 0), ("", 42)] {
        let mut resource = DescribeConfigsResource::default();
        resource.resource_type = 32;
        resource.resource_name = StrBytes::from_static_str(name);
        resource.configuration_keys = None;
        let mut request = DescribeConfigsRequest::default();
        request.resources = vec![resource];
        let response: DescribeConfigsResponse = conn.call(ApiKey::DescribeConfigs, 4, &request);
        let result = &response.results[0];
        assert_eq!(result.error_code, code, "group {name:?}");
        if code == 0 {
            let session = (result.configs.iter())
                .find(|c| c.name.as_str() == "consumer.session.timeout.ms")
                .expect("the group's session timeout");
            assert_eq!(session.value.as_deref(), Some("45000"));
            assert!(session.read_only && session.config_source == 5);
        }
    }
}

/// DeleteRecords (KIP-107): the log start moves up inside the log (not past the high
/// watermark, never back), reads below it are OFFSET_OUT_OF_RANGE, ListOffsets' earliest is
/// it, and after kill -9 all of that still holds.
#[test]
fn deleted_records_stay_deleted_across_a_crash() {
    use kafka_protocol::messages::delete_records_request::{
        DeleteRecordsPartition, DeleteRecordsTopic,
    };
    use kafka_protocol::messages::{DeleteRecordsRequest, DeleteRecordsResponse};
    let dir = tempfile::tempdir().unwrap();
    let mut broker = Broker::start(&dir.path().join("data"), &[]);
    let mut conn = Conn::open(&broker.kafka_addr);
    assert_eq!(create_topic(&mut conn, "trimmed", 1).0, 0);
    for _ in 0..3 {
        let response: ProduceResponse =
            conn.call(ApiKey::Produce, 7, &produce_request("trimmed", -1, batch(-1, -1, 0, 10)));
        assert_eq!(produced(&response).0, 0);
    }
    let delete = |conn: &mut Conn, offset: i64| -> (i16, i64) {
        let mut partition = DeleteRecordsPartition::default();
        partition.offset = offset;
        let mut topic = DeleteRecordsTopic::default();
        topic.name = TopicName(StrBytes::from_static_str("trimmed"));
        topic.partitions = vec![partition];
        let mut request = DeleteRecordsRequest::default();
        request.topics = vec![topic];
        request.timeout_ms = 10_000;
        let response: DeleteRecordsResponse = conn.call(ApiKey::DeleteRecords, 2, &request);
        let answer = &response.topics[0].partitions[0];
        (answer.error_code, answer.low_watermark)
    };
    assert_eq!(delete(&mut conn, 31), (1, -1), "past the high watermark: OFFSET_OUT_OF_RANGE");
    assert_eq!(delete(&mut conn, 15), (0, 15), "inside the second batch");
    assert_eq!(delete(&mut conn, 5), (0, 15), "never back");
    let earliest = |conn: &mut Conn| -> (i16, i64) {
        use kafka_protocol::messages::list_offsets_request::{
            ListOffsetsPartition, ListOffsetsTopic,
        };
        use kafka_protocol::messages::ListOffsetsResponse;
        let mut partition = ListOffsetsPartition::default();
        partition.timestamp = -2;
        let mut topic = ListOffsetsTopic::default();
        topic.name = TopicName(StrBytes::from_static_str("trimmed"));
        topic.partitions = vec![partition];
        let mut request = kafka_protocol::messages::ListOffsetsRequest::default();
        request.replica_id = kafka_protocol::messages::BrokerId(-1);
        request.topics = vec![topic];
        let response: ListOffsetsResponse = conn.call(ApiKey::ListOffsets, 7, &request);
        let answer = &response.topics[0].partitions[0];
        (answer.error_code, answer.offset)
    };
    let fetch_code = |conn: &mut Conn, offset: i64| -> i16 {
        use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
        use kafka_protocol::messages::{FetchRequest, FetchResponse};
        let mut partition = FetchPartition::default();
        partition.fetch_offset = offset;
        partition.partition_max_bytes = 1 << 20;
        let mut topic = FetchTopic::default();
        topic.topic = TopicName(StrBytes::from_static_str("trimmed"));
        topic.partitions = vec![partition];
        let mut request = FetchRequest::default();
        request.max_bytes = 1 << 20;
        request.topics = vec![topic];
        let response: FetchResponse = conn.call(ApiKey::Fetch, 11, &request);
        response.responses[0].partitions[0].error_code
    };
    assert_eq!(earliest(&mut conn), (0, 15));
    assert_eq!(fetch_code(&mut conn, 14), 1, "below the log start: OFFSET_OUT_OF_RANGE");
    assert_eq!(fetch_code(&mut conn, 15), 0);
    broker.kill9();
    broker.restart();
    let mut conn = Conn::open(&broker.kafka_addr);
    assert_eq!(earliest(&mut conn), (0, 15), "after kill -9");
    assert_eq!(fetch_code(&mut conn, 0), 1, "after kill -9");
    assert_eq!(delete(&mut conn, -1), (0, 30), "-1: everything below the high watermark");
}

/// A leader records the epoch it leads in (where it starts, in `leader-epoch-checkpoint`) and
/// answers OffsetForLeaderEpoch from it (KIP-101, KIP-320); a request made in a leader epoch
/// newer than the broker's gets UNKNOWN_LEADER_EPOCH, on Fetch, ListOffsets and
/// OffsetForLeaderEpoch alike.
#[test]
fn leader_epochs_are_recorded_and_answered_and_a_newer_one_is_unknown() {
    use common::kafka_wire::{epoch_end, latest_in_epoch};
    use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
    use kafka_protocol::messages::{BrokerId, FetchRequest, FetchResponse};
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(&dir.path().join("data"), &[]);
    let mut conn = Conn::open(&broker.kafka_addr);
    assert_eq!(create_topic(&mut conn, "epochs", 1).0, 0);
    for _ in 0..3 {
        let response: ProduceResponse =
            conn.call(ApiKey::Produce, 7, &produce_request("epochs", 1, batch(-1, -1, 0, 5)));
        assert_eq!(produced(&response).0, 0);
    }
    let checkpoint = dir.path().join("data/epochs/0/leader-epoch-checkpoint");
    let recorded = std::fs::read_to_string(&checkpoint).expect("the epoch checkpoint");
    assert_eq!(recorded, "0\n1\n0 0\n", "epoch 0 from offset 0");

    // Epoch 0 ends at the log end while it is the latest; one newer than any is unknown.
    assert_eq!(epoch_end(&mut conn, ("epochs", 0), 0, 0), (0, 0, 15));
    assert_eq!(epoch_end(&mut conn, ("epochs", 0), -1, 3), (0, -1, -1));
    assert_eq!(latest_in_epoch(&mut conn, ("epochs", 0), 0), (0, 15, 0));
    // A client that believes in a newer epoch than the broker knows.
    assert_eq!(epoch_end(&mut conn, ("epochs", 0), 2, 0).0, 75, "UNKNOWN_LEADER_EPOCH");
    assert_eq!(latest_in_epoch(&mut conn, ("epochs", 0), 2).0, 75);
    let mut fetch_in = |epoch: i32| {
        let mut partition = FetchPartition::default();
        (partition.current_leader_epoch, partition.partition_max_bytes) = (epoch, 1 << 20);
        let mut topic = FetchTopic::default();
        topic.topic = TopicName(StrBytes::from_static_str("epochs"));
        topic.partitions = vec![partition];
        let mut request = FetchRequest::default();
        (request.replica_id, request.max_bytes, request.topics) =
            (BrokerId(-1), 1 << 20, vec![topic]);
        let response: FetchResponse = conn.call(ApiKey::Fetch, 12, &request);
        let answered = &response.responses[0].partitions[0];
        (answered.error_code, answered.high_watermark)
    };
    assert_eq!(fetch_in(5), (75, -1));
    assert_eq!(fetch_in(0), (0, 15));
    assert_eq!(fetch_in(-1), (0, 15));
}
