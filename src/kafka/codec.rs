//! Kafka frames in and out: the request header, the typed request body, and the encoded
//! response with its size prefix.
//!
//! Decoding goes through the `kafka-protocol` crate; record bytes in a decoded produce request
//! are slices of the received frame, not copies.

use bytes::{BufMut, Bytes, BytesMut};
use kafka_protocol::messages::{
    AlterConfigsRequest, AlterPartitionReassignmentsRequest, ApiKey, ApiVersionsRequest,
    CreatePartitionsRequest, CreateTopicsRequest, DeleteGroupsRequest, DeleteRecordsRequest,
    DeleteTopicsRequest, DescribeClusterRequest, DescribeConfigsRequest, DescribeGroupsRequest,
    DescribeLogDirsRequest, DescribeProducersRequest, ElectLeadersRequest, FetchRequest,
    FindCoordinatorRequest, HeartbeatRequest, IncrementalAlterConfigsRequest,
    InitProducerIdRequest, JoinGroupRequest, LeaveGroupRequest, ListGroupsRequest,
    ListOffsetsRequest, ListPartitionReassignmentsRequest, MetadataRequest, OffsetCommitRequest,
    OffsetDeleteRequest, OffsetFetchRequest, OffsetForLeaderEpochRequest, ProduceRequest,
    RequestHeader, ResponseHeader, SyncGroupRequest,
};
use kafka_protocol::protocol::{Decodable, Encodable};

use crate::error::ErrorKind;

/// The fixed start of every request: api key, api version, correlation id.
pub const REQUEST_PREFIX_BYTES: usize = 8;

/// What every request starts with, read before anything is decoded.
#[derive(Clone, Copy, Debug)]
pub struct RequestPrefix {
    pub api_key: i16,
    pub api_version: i16,
    pub correlation_id: i32,
}

impl RequestPrefix {
    pub fn read(frame: &[u8]) -> Option<Self> {
        let field = |at: usize, n: usize| frame.get(at..at + n);
        Some(Self {
            api_key: i16::from_be_bytes(field(0, 2)?.try_into().ok()?),
            api_version: i16::from_be_bytes(field(2, 2)?.try_into().ok()?),
            correlation_id: i32::from_be_bytes(field(4, 4)?.try_into().ok()?),
        })
    }
}

/// A decoded request of an API this broker serves.
pub enum Request {
    ApiVersions(ApiVersionsRequest),
    Metadata(MetadataRequest),
    Produce(ProduceRequest),
    Fetch(FetchRequest),
    ListOffsets(ListOffsetsRequest),
    CreateTopics(CreateTopicsRequest),
    DeleteTopics(DeleteTopicsRequest),
    CreatePartitions(CreatePartitionsRequest),
    DescribeConfigs(DescribeConfigsRequest),
    InitProducerId(InitProducerIdRequest),
    FindCoordinator(FindCoordinatorRequest),
    JoinGroup(JoinGroupRequest),
    SyncGroup(SyncGroupRequest),
    Heartbeat(HeartbeatRequest),
    LeaveGroup(LeaveGroupRequest),
    OffsetCommit(OffsetCommitRequest),
    OffsetFetch(OffsetFetchRequest),
    ListGroups(ListGroupsRequest),
    DescribeGroups(DescribeGroupsRequest),
    DeleteGroups(DeleteGroupsRequest),
    DescribeCluster(DescribeClusterRequest),
    OffsetForLeaderEpoch(OffsetForLeaderEpochRequest),
    ElectLeaders(ElectLeadersRequest),
    AlterPartitionReassignments(AlterPartitionReassignmentsRequest),
    ListPartitionReassignments(ListPartitionReassignmentsRequest),
    IncrementalAlterConfigs(IncrementalAlterConfigsRequest),
    AlterConfigs(AlterConfigsRequest),
    OffsetDelete(OffsetDeleteRequest),
    DescribeLogDirs(DescribeLogDirsRequest),
    DescribeProducers(DescribeProducersRequest),
    DeleteRecords(DeleteRecordsRequest),
}

/// A whole request: its header (client id, correlation id) and body.
pub struct DecodedRequest {
    pub api: ApiKey,
    pub version: i16,
    pub header: RequestHeader,
    pub body: Request,
}

/// Decodes a frame whose API and version [`crate::kafka::versions::is_served`] accepted.
pub fn decode_request(api: ApiKey, frame: Bytes) -> Result<DecodedRequest, String> {
    let mut buf = frame;
    let header = kafka_protocol::protocol::decode_request_header_from_buffer(&mut buf)
        .map_err(|e| format!("request header: {e:#}"))?;
    let version = header.request_api_version;
    fn body<T: Decodable>(buf: &mut Bytes, version: i16) -> Result<T, String> {
        T::decode(buf, version).map_err(|e| format!("request body: {e:#}"))
    }
    let body = match api {
        ApiKey::ApiVersions => Request::ApiVersions(body(&mut buf, version)?),
        ApiKey::Metadata => Request::Metadata(body(&mut buf, version)?),
        ApiKey::Produce => Request::Produce(body(&mut buf, version)?),
        ApiKey::Fetch => Request::Fetch(body(&mut buf, version)?),
        ApiKey::ListOffsets => Request::ListOffsets(body(&mut buf, version)?),
        ApiKey::CreateTopics => Request::CreateTopics(body(&mut buf, version)?),
        ApiKey::DeleteTopics => Request::DeleteTopics(body(&mut buf, version)?),
        ApiKey::CreatePartitions => Request::CreatePartitions(body(&mut buf, version)?),
        ApiKey::DescribeConfigs => Request::DescribeConfigs(body(&mut buf, version)?),
        ApiKey::InitProducerId => Request::InitProducerId(body(&mut buf, version)?),
        ApiKey::FindCoordinator => Request::FindCoordinator(body(&mut buf, version)?),
        ApiKey::JoinGroup => Request::JoinGroup(body(&mut buf, version)?),
        ApiKey::SyncGroup => Request::SyncGroup(body(&mut buf, version)?),
        ApiKey::Heartbeat => Request::Heartbeat(body(&mut buf, version)?),
        ApiKey::LeaveGroup => Request::LeaveGroup(body(&mut buf, version)?),
        ApiKey::OffsetCommit => Request::OffsetCommit(body(&mut buf, version)?),
        ApiKey::OffsetFetch => Request::OffsetFetch(body(&mut buf, version)?),
        ApiKey::ListGroups => Request::ListGroups(body(&mut buf, version)?),
        ApiKey::DescribeGroups => Request::DescribeGroups(body(&mut buf, version)?),
        ApiKey::DeleteGroups => Request::DeleteGroups(body(&mut buf, version)?),
        ApiKey::DescribeCluster => Request::DescribeCluster(body(&mut buf, version)?),
        ApiKey::OffsetForLeaderEpoch => Request::OffsetForLeaderEpoch(body(&mut buf, version)?),
        ApiKey::ElectLeaders => Request::ElectLeaders(body(&mut buf, version)?),
        ApiKey::AlterPartitionReassignments => {
            Request::AlterPartitionReassignments(body(&mut buf, version)?)
        }
        ApiKey::ListPartitionReassignments => {
            Request::ListPartitionReassignments(body(&mut buf, version)?)
        }
        ApiKey::IncrementalAlterConfigs => {
            Request::IncrementalAlterConfigs(body(&mut buf, version)?)
        }
        ApiKey::AlterConfigs => Request::AlterConfigs(body(&mut buf, version)?),
        ApiKey::OffsetDelete => Request::OffsetDelete(body(&mut buf, version)?),
        ApiKey::DescribeLogDirs => Request::DescribeLogDirs(body(&mut buf, version)?),
        ApiKey::DescribeProducers => Request::DescribeProducers(body(&mut buf, version)?),
        ApiKey::DeleteRecords => Request::DeleteRecords(body(&mut buf, version)?),
        other => return Err(format!("{other:?} is not served")),
    };
    Ok(DecodedRequest { api, version, header, body })
}

/// A response frame: size, response header, body. ApiVersions always uses header v0 so a
/// client that sent a version the broker does not know can still read the answer.
pub fn encode_response<T: Encodable>(
    api: ApiKey,
    version: i16,
    correlation_id: i32,
    body: &T,
) -> Result<Bytes, String> {
    let mut buf = BytesMut::with_capacity(256);
    buf.put_i32(0);
    let mut header = ResponseHeader::default();
    header.correlation_id = correlation_id;
    let header_version =
        if api == ApiKey::ApiVersions { 0 } else { api.response_header_version(version) };
    header.encode(&mut buf, header_version).map_err(|e| format!("response header: {e:#}"))?;
    body.encode(&mut buf, version).map_err(|e| format!("{api:?} v{version} response: {e:#}"))?;
    let size = (buf.len() - 4) as i32;
    buf[..4].copy_from_slice(&size.to_be_bytes());
    Ok(buf.freeze())
}

/// Stands in for a partition's records while a fetch response is encoded; replaced by the real
/// record bytes in [`encode_spliced`]. Sixteen bytes no other field of a response can hold by
/// chance: topic names are ASCII, and the numbers around them are small.
pub const RECORDS_MARKER: [u8; 16] = *b"\xa7\x1e\xf0\x9cSpRecs\xd3\x05\xb8\x4e\x90\x2b";

/// A response frame whose records fields are the chunks in `splices`: encoded with
/// [`RECORDS_MARKER`] in each non-empty records field (in order), then cut at each marker so the
/// record bytes are written from where they lie instead of copied into the frame.
pub fn encode_spliced<T: Encodable>(
    api: ApiKey,
    version: i16,
    correlation_id: i32,
    body: &T,
    splices: Vec<Vec<Bytes>>,
) -> Result<Vec<Bytes>, String> {
    let head = encode_response(api, version, correlation_id, body)?;
    let flexible = api.response_header_version(version) >= 1;
    let mut chunks = Vec::with_capacity(1 + 3 * splices.len());
    let mut from = 4; // the size prefix is rewritten below
    for records in splices {
        let found = head[from..]
            .windows(RECORDS_MARKER.len())
            .position(|w| w == RECORDS_MARKER)
            .ok_or("a records field went missing while encoding")?;
        let marker_at = from + found;
        let records_len: usize = records.iter().map(Bytes::len).sum();
        // The marker's length prefix: i32 before flexible versions, else unsigned varint
        // of length + 1 (17 fits in one byte).
        let (prefix_len, prefix) = if flexible {
            let mut prefix = BytesMut::new();
            put_unsigned_varint(&mut prefix, records_len as u64 + 1);
            (1, prefix.freeze())
        } else {
            let len = i32::try_from(records_len).map_err(|_| "records over 2 GiB")?;
            (4, Bytes::copy_from_slice(&len.to_be_bytes()))
        };
        let field_at =
            marker_at.checked_sub(prefix_len).ok_or("a records marker without its length")?;
        chunks.push(head.slice(from..field_at));
        chunks.push(prefix);
        chunks.extend(records);
        from = marker_at + RECORDS_MARKER.len();
    }
    chunks.push(head.slice(from..));
    let size: usize = chunks.iter().map(Bytes::len).sum();
    let size = i32::try_from(size).map_err(|_| "response over 2 GiB")?;
    chunks.insert(0, Bytes::copy_from_slice(&size.to_be_bytes()));
    Ok(chunks)
}

fn put_unsigned_varint(out: &mut BytesMut, mut value: u64) {
    while value >= 0x80 {
        out.put_u8((value as u8) | 0x80);
        value >>= 7;
    }
    out.put_u8(value as u8);
}

/// Kafka's error code for a broker error: the one place broker errors become Kafka codes.
pub fn error_code(kind: ErrorKind) -> i16 {
    use kafka_protocol::ResponseError as Kafka;
    let kafka = match kind {
        ErrorKind::OffsetOutOfRange => Kafka::OffsetOutOfRange,
        ErrorKind::CorruptMessage => Kafka::CorruptMessage,
        ErrorKind::UnknownTopic | ErrorKind::UnknownPartition => Kafka::UnknownTopicOrPartition,
        // A partition closing on a stopping broker: clients refresh metadata and retry.
        ErrorKind::NotAvailable => Kafka::NotLeaderOrFollower,
        ErrorKind::MessageTooLarge => Kafka::MessageTooLarge,
        ErrorKind::InvalidTopicName => Kafka::InvalidTopicException,
        ErrorKind::UnsupportedApi => Kafka::UnsupportedVersion,
        ErrorKind::TopicAlreadyExists => Kafka::TopicAlreadyExists,
        ErrorKind::InvalidPartitions => Kafka::InvalidPartitions,
        ErrorKind::InvalidConfig => Kafka::InvalidConfig,
        ErrorKind::InvalidRequest => Kafka::InvalidRequest,
        ErrorKind::UnsupportedForMessageFormat => Kafka::UnsupportedForMessageFormat,
        ErrorKind::OutOfOrderSequence => Kafka::OutOfOrderSequenceNumber,
        ErrorKind::InvalidProducerEpoch => Kafka::InvalidProducerEpoch,
        ErrorKind::StorageError => Kafka::KafkaStorageError,
        ErrorKind::InvalidRecord => Kafka::InvalidRecord,
        ErrorKind::InvalidTimestamp => Kafka::InvalidTimestamp,
        ErrorKind::UnsupportedCompressionType => Kafka::UnsupportedCompressionType,
        ErrorKind::PolicyViolation => Kafka::PolicyViolation,
        ErrorKind::NotController => Kafka::NotController,
        ErrorKind::StaleBrokerEpoch => Kafka::StaleBrokerEpoch,
        ErrorKind::DuplicateBrokerRegistration => Kafka::DuplicateBrokerRegistration,
        ErrorKind::InvalidReplicationFactor => Kafka::InvalidReplicationFactor,
        ErrorKind::InvalidReplicaAssignment => Kafka::InvalidReplicaAssignment,
        ErrorKind::NotLeaderOrFollower => Kafka::NotLeaderOrFollower,
        ErrorKind::NotCoordinator => Kafka::NotCoordinator,
        ErrorKind::InconsistentClusterId => Kafka::InconsistentClusterId,
        ErrorKind::FencedLeaderEpoch => Kafka::FencedLeaderEpoch,
        ErrorKind::UnknownLeaderEpoch => Kafka::UnknownLeaderEpoch,
        ErrorKind::InvalidUpdateVersion => Kafka::InvalidUpdateVersion,
        ErrorKind::IneligibleReplica => Kafka::IneligibleReplica,
        ErrorKind::NotEnoughReplicas => Kafka::NotEnoughReplicas,
        ErrorKind::NotEnoughReplicasAfterAppend => Kafka::NotEnoughReplicasAfterAppend,
        ErrorKind::RequestTimedOut => Kafka::RequestTimedOut,
        ErrorKind::NoReassignmentInProgress => Kafka::NoReassignmentInProgress,
        ErrorKind::GroupSubscribedToTopic => Kafka::GroupSubscribedToTopic,
        ErrorKind::CoordinatorNotAvailable => Kafka::CoordinatorNotAvailable,
        ErrorKind::CoordinatorLoadInProgress => Kafka::CoordinatorLoadInProgress,
        ErrorKind::IllegalGeneration => Kafka::IllegalGeneration,
        ErrorKind::InconsistentGroupProtocol => Kafka::InconsistentGroupProtocol,
        ErrorKind::InvalidGroupId => Kafka::InvalidGroupId,
        ErrorKind::UnknownMemberId => Kafka::UnknownMemberId,
        ErrorKind::InvalidSessionTimeout => Kafka::InvalidSessionTimeout,
        ErrorKind::RebalanceInProgress => Kafka::RebalanceInProgress,
        ErrorKind::NonEmptyGroup => Kafka::NonEmptyGroup,
        ErrorKind::GroupIdNotFound => Kafka::GroupIdNotFound,
        ErrorKind::MemberIdRequired => Kafka::MemberIdRequired,
        ErrorKind::FencedInstanceId => Kafka::FencedInstanceId,
    };
    kafka.code()
}

/// Kafka's code for a result with no error (0) or with one.
pub fn result_code(result: Result<(), ErrorKind>) -> i16 {
    result.err().map_or(0, error_code)
}

/// Kafka's UNSUPPORTED_VERSION, for the KIP-511 ApiVersions answer.
pub const UNSUPPORTED_VERSION: i16 = kafka_protocol::ResponseError::UnsupportedVersion.code();
/// The answer to a transactional producer while Spate serves no transactions. Kafka has no code
/// for "not supported" here; this is the one every client treats as fatal at once (librdkafka's
/// FindCoordinator handler, the Java client's TransactionalIdAuthorizationException), where any
/// retriable code would leave the producer waiting out its own timeout.
pub const TRANSACTIONS_REFUSED: i16 =
    kafka_protocol::ResponseError::TransactionalIdAuthorizationFailed.code();

#[cfg(test)]
mod tests {
    use super::*;
    use kafka_protocol::messages::ApiVersionsResponse;

    #[test]
    fn api_versions_v3_response_uses_header_v0_and_a_flexible_body() {
        let body = crate::kafka::versions::api_versions_response(0);
        let frame = encode_response(ApiKey::ApiVersions, 3, 77, &body).unwrap();
        let size = i32::from_be_bytes(frame[..4].try_into().unwrap()) as usize;
        assert_eq!(size, frame.len() - 4);
        assert_eq!(i32::from_be_bytes(frame[4..8].try_into().unwrap()), 77);
        let mut rest = frame.slice(8..);
        let decoded = ApiVersionsResponse::decode(&mut rest, 3).unwrap();
        assert_eq!(decoded, body);
        assert!(rest.is_empty(), "{} bytes left over", rest.len());
    }

    #[test]
    fn spliced_fetch_responses_decode_like_copied_ones() {
        use kafka_protocol::messages::fetch_response::{FetchableTopicResponse, PartitionData};
        use kafka_protocol::messages::FetchResponse;
        let records = [Bytes::from(vec![1u8; 300]), Bytes::from(vec![2u8; 5])];
        for version in [4, 11, 12] {
            let mut expected = FetchResponse::default();
            let mut spliced = FetchResponse::default();
            let mut splices = Vec::new();
            for (response, real) in [(&mut expected, true), (&mut spliced, false)] {
                let mut topic = FetchableTopicResponse::default();
                topic.topic = kafka_protocol::messages::TopicName("t".into());
                for (index, data) in records.iter().enumerate() {
                    let mut partition = PartitionData::default();
                    partition.partition_index = index as i32;
                    partition.records =
                        Some(if real { data.clone() } else { Bytes::from_static(&RECORDS_MARKER) });
                    topic.partitions.push(partition);
                }
                response.responses.push(topic);
            }
            for data in &records {
                splices.push(vec![data.slice(..2), data.slice(2..)]);
            }
            let whole = encode_response(ApiKey::Fetch, version, 5, &expected).unwrap();
            let chunks = encode_spliced(ApiKey::Fetch, version, 5, &spliced, splices).unwrap();
            assert_eq!(chunks.concat(), whole.to_vec(), "v{version}");
        }
    }

    #[test]
    fn the_prefix_needs_eight_bytes() {
        assert!(RequestPrefix::read(&[0, 18, 0, 3, 0, 0, 0]).is_none());
        let prefix = RequestPrefix::read(&[0, 18, 0, 3, 0, 0, 0, 9]).unwrap();
        assert_eq!((prefix.api_key, prefix.api_version, prefix.correlation_id), (18, 3, 9));
    }
}
