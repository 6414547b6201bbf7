//! Kafka requests at the byte level: a blocking connection and the record batches and
//! requests the tests send.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use indexmap::IndexMap;
use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
use kafka_protocol::messages::{
    ApiKey, ListOffsetsResponse, ProduceRequest, ProduceResponse, RequestHeader, ResponseHeader,
    TopicName,
};
use kafka_protocol::protocol::{Decodable, Encodable, StrBytes};
use kafka_protocol::records::{
    Compression, Record, RecordBatchEncoder, RecordEncodeOptions, TimestampType,
};

/// A blocking Kafka connection that sends one request and reads one response at a time.
pub struct Conn {
    pub stream: TcpStream,
    next_id: i32,
}

impl Conn {
    pub fn open(addr: &str) -> Conn {
        let stream = TcpStream::connect(addr).unwrap();
        stream.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        Conn { stream, next_id: 1 }
    }

    /// Sends a request frame without waiting; returns its correlation id.
    pub fn send<T: Encodable>(&mut self, api: ApiKey, version: i16, body: &T) -> i32 {
        self.send_with_version(api, version, version, body)
    }

    /// Sends `body` encoded at `version` but labelled `claimed`.
    pub fn send_with_version<T: Encodable>(
        &mut self,
        api: ApiKey,
        version: i16,
        claimed: i16,
        body: &T,
    ) -> i32 {
        let id = self.next_id;
        self.next_id += 1;
        let mut buf = request(api, version, id, body);
        buf[2..4].copy_from_slice(&claimed.to_be_bytes());
        self.send_raw(&buf);
        id
    }

    pub fn send_raw(&mut self, frame: &[u8]) {
        self.stream.write_all(&(frame.len() as i32).to_be_bytes()).unwrap();
        self.stream.write_all(frame).unwrap();
    }

    /// Reads one response; `None` when the broker closed the connection.
    pub fn receive(&mut self) -> Option<Bytes> {
        let mut size = [0u8; 4];
        self.stream.read_exact(&mut size).ok()?;
        let mut frame = vec![0u8; i32::from_be_bytes(size) as usize];
        self.stream.read_exact(&mut frame).ok()?;
        Some(Bytes::from(frame))
    }

    pub fn call<Q: Encodable, R: Decodable>(&mut self, api: ApiKey, version: i16, body: &Q) -> R {
        let id = self.send(api, version, body);
        self.response(api, version, id)
    }

    pub fn response<R: Decodable>(&mut self, api: ApiKey, version: i16, id: i32) -> R {
        let mut frame = self.receive().expect("a response");
        let header_version =
            if api == ApiKey::ApiVersions { 0 } else { api.response_header_version(version) };
        let header = ResponseHeader::decode(&mut frame, header_version).unwrap();
        assert_eq!(header.correlation_id, id, "responses come in request order");
        R::decode(&mut frame, version).unwrap()
    }

    pub fn is_closed(&mut self) -> bool {
        self.receive().is_none()
    }
}

/// A request (header and body, without the size prefix) encoded at `version`.
pub fn request<T: Encodable>(api: ApiKey, version: i16, correlation_id: i32, body: &T) -> BytesMut {
    let mut header = RequestHeader::default();
    header.request_api_key = api as i16;
    header.request_api_version = version;
    header.correlation_id = correlation_id;
    header.client_id = Some(StrBytes::from_static_str("spate-test"));
    let mut buf = BytesMut::new();
    header.encode(&mut buf, api.request_header_version(version)).unwrap();
    body.encode(&mut buf, version).unwrap();
    buf
}

pub fn batch(producer_id: i64, epoch: i16, sequence: i32, count: usize) -> Bytes {
    encode_batch((producer_id, epoch, sequence), count, (1_700_000_000_000, 1), |i| {
        (Some(Bytes::from(format!("key-{i}"))), Bytes::from(format!("value-{sequence}-{i}")))
    })
}

/// A batch of `count` unkeyed records of `value_bytes` each, without a producer id.
pub fn large_batch(count: usize, value_bytes: usize) -> Bytes {
    let value = Bytes::from(vec![b'v'; value_bytes]);
    encode_batch((-1, -1, 0), count, (1_700_000_000_000, 1), |_| (None, value.clone()))
}

/// A batch of `count` unkeyed records stamped from `timestamp` on, `step` ms apart, without a
/// producer id.
pub fn batch_at(count: usize, timestamp: i64, step: i64) -> Bytes {
    let value = Bytes::from(format!("from {timestamp}"));
    encode_batch((-1, -1, 0), count, (timestamp, step), |_| (None, value.clone()))
}

/// One RecordBatch v2 of `count` records from (producer id, epoch, first sequence), stamped
/// from `first_timestamp` on, `step` ms apart, `record(i)` giving each one's key and value.
fn encode_batch(
    (producer_id, epoch, sequence): (i64, i16, i32),
    count: usize,
    (first_timestamp, step): (i64, i64),
    record: impl Fn(usize) -> (Option<Bytes>, Bytes),
) -> Bytes {
    let records: Vec<Record> = (0..count)
        .map(|i| {
            let (key, value) = record(i);
            Record {
                transactional: false,
                control: false,
                delete_horizon: false,
                partition_leader_epoch: -1,
                producer_id,
                producer_epoch: epoch,
                timestamp_type: TimestampType::Creation,
                offset: i as i64,
                // The encoder starts a new batch wherever offset - sequence changes; a producer
                // without an id sends base sequence -1.
                sequence: if producer_id >= 0 { sequence + i as i32 } else { i as i32 - 1 },
                timestamp: first_timestamp + step * i as i64,
                key,
                value: Some(value),
                headers: IndexMap::new(),
            }
        })
        .collect();
    let mut buf = BytesMut::new();
    let options = RecordEncodeOptions { version: 2, compression: Compression::None };
    RecordBatchEncoder::encode(&mut buf, &records, &options).unwrap();
    buf.freeze()
}

pub fn produce_request(topic: &str, acks: i16, records: Bytes) -> ProduceRequest {
    let mut partition = PartitionProduceData::default();
    partition.index = 0;
    partition.records = Some(records);
    let mut data = TopicProduceData::default();
    data.name = TopicName(StrBytes::from_string(topic.to_string()));
    data.partition_data = vec![partition];
    let mut request = ProduceRequest::default();
    request.acks = acks;
    request.timeout_ms = 10_000;
    request.topic_data = vec![data];
    request
}

/// (error code, base offset) of the single partition in a produce response.
pub fn produced(response: &ProduceResponse) -> (i16, i64) {
    let partition = &response.responses[0].partition_responses[0];
    (partition.error_code, partition.base_offset)
}

pub fn latest_offset(conn: &mut Conn, topic: &str) -> i64 {
    use kafka_protocol::messages::list_offsets_request::{ListOffsetsPartition, ListOffsetsTopic};
    let mut partition = ListOffsetsPartition::default();
    partition.timestamp = -1;
    let mut wanted = ListOffsetsTopic::default();
    wanted.name = TopicName(StrBytes::from_string(topic.to_string()));
    wanted.partitions = vec![partition];
    let mut request = kafka_protocol::messages::ListOffsetsRequest::default();
    request.replica_id = kafka_protocol::messages::BrokerId(-1);
    request.topics = vec![wanted];
    let response: ListOffsetsResponse = conn.call(ApiKey::ListOffsets, 2, &request);
    let partition = &response.topics[0].partitions[0];
    assert_eq!(partition.error_code, 0);
    partition.offset
}

/// CreateTopics (v5) for one topic of `partitions` partitions: (error code, error message).
pub fn create_topic(conn: &mut Conn, name: &str, partitions: i32) -> (i16, String) {
    create_topic_with(conn, name, partitions, &[])
}

/// Settings as CreateTopics carries them.
pub fn topic_configs(
    configs: &[(&str, &str)],
) -> Vec<kafka_protocol::messages::create_topics_request::CreatableTopicConfig> {
    use kafka_protocol::messages::create_topics_request::CreatableTopicConfig;
    (configs.iter())
        .map(|(key, value)| {
            let mut config = CreatableTopicConfig::default();
            config.name = StrBytes::from_string(key.to_string());
            config.value = Some(StrBytes::from_string(value.to_string()));
            config
        })
        .collect()
}

/// CreateTopics of one topic with these settings: (error code, message).
pub fn create_topic_with(
    conn: &mut Conn,
    name: &str,
    partitions: i32,
    configs: &[(&str, &str)],
) -> (i16, String) {
    use kafka_protocol::messages::create_topics_request::CreatableTopic;
    use kafka_protocol::messages::{CreateTopicsRequest, CreateTopicsResponse};
    let mut topic = CreatableTopic::default();
    topic.name = TopicName(StrBytes::from_string(name.to_string()));
    topic.num_partitions = partitions;
    topic.replication_factor = 1;
    topic.configs = topic_configs(configs);
    let mut request = CreateTopicsRequest::default();
    request.topics = vec![topic];
    request.timeout_ms = 30_000;
    let response: CreateTopicsResponse = conn.call(ApiKey::CreateTopics, 5, &request);
    let result = &response.topics[0];
    (result.error_code, result.error_message.as_ref().map(|m| m.to_string()).unwrap_or_default())
}

/// OffsetForLeaderEpoch v4 for one partition: (error code, epoch, end offset).
pub fn epoch_end(
    conn: &mut Conn,
    (topic, partition): (&str, i32),
    current_leader_epoch: i32,
    leader_epoch: i32,
) -> (i16, i32, i64) {
    use kafka_protocol::messages::offset_for_leader_epoch_request::{
        OffsetForLeaderPartition, OffsetForLeaderTopic,
    };
    use kafka_protocol::messages::{OffsetForLeaderEpochRequest, OffsetForLeaderEpochResponse};
    let mut asked = OffsetForLeaderPartition::default();
    (asked.partition, asked.current_leader_epoch, asked.leader_epoch) =
        (partition, current_leader_epoch, leader_epoch);
    let mut wanted = OffsetForLeaderTopic::default();
    wanted.topic = TopicName(StrBytes::from_string(topic.to_string()));
    wanted.partitions = vec![asked];
    let mut request = OffsetForLeaderEpochRequest::default();
    request.replica_id = kafka_protocol::messages::BrokerId(-1);
    request.topics = vec![wanted];
    let response: OffsetForLeaderEpochResponse =
        conn.call(ApiKey::OffsetForLeaderEpoch, 4, &request);
    let answered = &response.topics[0].partitions[0];
    (answered.error_code, answered.leader_epoch, answered.end_offset)
}

/// ListOffsets v4 of the latest offset, in `current_leader_epoch`: (error code, offset, the
/// leader epoch answered).
pub fn latest_in_epoch(
    conn: &mut Conn,
    (topic, partition): (&str, i32),
    current_leader_epoch: i32,
) -> (i16, i64, i32) {
    use kafka_protocol::messages::list_offsets_request::{ListOffsetsPartition, ListOffsetsTopic};
    let mut asked = ListOffsetsPartition::default();
    (asked.partition_index, asked.timestamp, asked.current_leader_epoch) =
        (partition, -1, current_leader_epoch);
    let mut wanted = ListOffsetsTopic::default();
    wanted.name = TopicName(StrBytes::from_string(topic.to_string()));
    wanted.partitions = vec![asked];
    let mut request = kafka_protocol::messages::ListOffsetsRequest::default();
    request.replica_id = kafka_protocol::messages::BrokerId(-1);
    request.topics = vec![wanted];
    let response: ListOffsetsResponse = conn.call(ApiKey::ListOffsets, 4, &request);
    let answered = &response.topics[0].partitions[0];
    (answered.error_code, answered.offset, answered.leader_epoch)
}

/// Kafka's codes for a group coordinator not ready (COORDINATOR_LOAD_IN_PROGRESS,
/// COORDINATOR_NOT_AVAILABLE, NOT_COORDINATOR): clients find it again and retry.
pub const COORDINATOR_NOT_READY: [i16; 3] = [14, 15, 16];

/// How long a test retries what a client would while a coordinator gets ready.
const COORDINATOR_WAIT: Duration = Duration::from_secs(15);

/// FindCoordinator (v1) for `group`, asked again until it names the coordinator, as a client
/// asks before its first group request (the broker creates `__consumer_offsets` on the first).
/// Answers the coordinator's node id.
pub fn find_coordinator(conn: &mut Conn, group: &str) -> i32 {
    use kafka_protocol::messages::{FindCoordinatorRequest, FindCoordinatorResponse};
    let deadline = Instant::now() + COORDINATOR_WAIT;
    loop {
        let mut request = FindCoordinatorRequest::default();
        request.key = StrBytes::from_string(group.to_string());
        let found: FindCoordinatorResponse = conn.call(ApiKey::FindCoordinator, 1, &request);
        if found.error_code == 0 {
            return found.node_id.0;
        }
        assert!(Instant::now() < deadline, "no coordinator for {group}: {}", found.error_code);
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Runs `call` again while the error code `code` reads from its answer says the coordinator is
/// not ready ([`COORDINATOR_NOT_READY`]), as a client retries, for up to 15 s.
pub fn when_coordinated<R>(mut call: impl FnMut() -> R, code: impl Fn(&R) -> i16) -> R {
    let deadline = Instant::now() + COORDINATOR_WAIT;
    loop {
        let answer = call();
        if !COORDINATOR_NOT_READY.contains(&code(&answer)) || Instant::now() >= deadline {
            return answer;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// IncrementalAlterConfigs (v1) of one resource (`resource_type`: 2 a topic, 4 a broker, whose
/// name `""` is the cluster-wide defaults): each setting set to a value, or deleted for `None`.
/// Answers (error code, message).
pub fn alter_configs(
    conn: &mut Conn,
    resource_type: i8,
    name: &str,
    settings: &[(&str, Option<&str>)],
) -> (i16, String) {
    use kafka_protocol::messages::incremental_alter_configs_request::{
        AlterConfigsResource, AlterableConfig,
    };
    use kafka_protocol::messages::{
        IncrementalAlterConfigsRequest, IncrementalAlterConfigsResponse,
    };
    let mut resource = AlterConfigsResource::default();
    resource.resource_type = resource_type;
    resource.resource_name = StrBytes::from_string(name.to_string());
    resource.configs = (settings.iter())
        .map(|(key, value)| {
            let mut config = AlterableConfig::default();
            config.name = StrBytes::from_string(key.to_string());
            config.config_operation = if value.is_some() { 0 } else { 1 }; // SET or DELETE
            config.value = value.map(|v| StrBytes::from_string(v.to_string()));
            config
        })
        .collect();
    let mut request = IncrementalAlterConfigsRequest::default();
    request.resources = vec![resource];
    let response: IncrementalAlterConfigsResponse =
        conn.call(ApiKey::IncrementalAlterConfigs, 1, &request);
    let result = &response.responses[0];
    (result.error_code, result.error_message.as_ref().map(|m| m.to_string()).unwrap_or_default())
}

/// A setting as DescribeConfigs (v4) answers it: value, source, read-only, and its synonyms'
/// sources in order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DescribedConfig {
    pub value: String,
    pub source: i8,
    pub read_only: bool,
    pub synonym_sources: Vec<i8>,
}

/// DescribeConfigs (v4, with synonyms) of every setting of one resource: (error code, settings
/// by name).
pub fn describe_configs(
    conn: &mut Conn,
    resource_type: i8,
    name: &str,
) -> (i16, std::collections::BTreeMap<String, DescribedConfig>) {
    use kafka_protocol::messages::describe_configs_request::DescribeConfigsResource;
    use kafka_protocol::messages::{DescribeConfigsRequest, DescribeConfigsResponse};
    let mut resource = DescribeConfigsResource::default();
    resource.resource_type = resource_type;
    resource.resource_name = StrBytes::from_string(name.to_string());
    resource.configuration_keys = None;
    let mut request = DescribeConfigsRequest::default();
    request.resources = vec![resource];
    request.include_synonyms = true;
    let response: DescribeConfigsResponse = conn.call(ApiKey::DescribeConfigs, 4, &request);
    let result = &response.results[0];
    let settings = (result.configs.iter())
        .map(|config| {
            let described = DescribedConfig {
                value: config.value.as_ref().map(|v| v.to_string()).unwrap_or_default(),
                source: config.config_source,
                read_only: config.read_only,
                synonym_sources: config.synonyms.iter().map(|s| s.source).collect(),
            };
            (config.name.to_string(), described)
        })
        .collect();
    (result.error_code, settings)
}
