//! What each Kafka request does: route its topics and partitions to the owning shards and build
//! the response. Per-partition failures become Kafka error codes in the response; nothing a
//! client sends can panic the broker.

pub mod admin;
pub mod configs;
pub mod error_codes;
pub mod fetch;
pub mod groups;
pub mod metadata;
pub mod partitions;
pub mod produce;
pub mod reassign;

use std::net::SocketAddr;
use std::rc::Rc;
use std::time::Instant;

use bytes::Bytes;
use kafka_protocol::messages::ApiKey;
use kafka_protocol::protocol::{Encodable, StrBytes};

use crate::error::BrokerError;
use crate::kafka::codec::{self, DecodedRequest, Request};
use crate::kafka::handlers::error_codes::ErrorCodes;
use crate::kafka::versions;
use crate::metrics::Hist;
use crate::shard::Shard;

/// What a handler knows of its connection.
pub struct Connection {
    pub peer: String,
    /// The address the client reached: what Metadata advertises when no address is configured.
    pub local: Option<SocketAddr>,
}

/// Runs one request: `Ok(None)` means no response is sent (a produce with acks=0); `Err` that
/// the response could not be encoded, and the connection must close rather than leave the client
/// waiting for it.
pub async fn handle(
    shard: Rc<Shard>,
    connection: Rc<Connection>,
    request: DecodedRequest,
    received: Instant,
) -> Result<Option<Vec<Bytes>>, String> {
    let DecodedRequest { api, version, header, body } = request;
    let correlation_id = header.correlation_id;
    let reply = |body: &dyn AnyResponse| {
        let mut errors = Vec::new();
        body.error_codes(&mut |code| errors.push(code));
        (body.encode_frame(api, version, correlation_id).map(|frame| vec![frame]), errors)
    };
    // Clients are served once this broker has joined its cluster and caught up with the
    // metadata (bounded): before, its answers could be of an earlier cluster.
    if !matches!(body, Request::ApiVersions(_)) {
        shard.wait_ready().await;
    }
    let (hist, (frame, errors)) = match body {
        Request::ApiVersions(_) => (Hist::KafkaOther, reply(&versions::api_versions_response(0))),
        Request::Metadata(request) => (
            Hist::KafkaOther,
            reply(&metadata::metadata(&shard, &connection, version, request).await),
        ),
        Request::Produce(request) => match produce::produce(&shard, version, request).await {
            Some(response) => (Hist::KafkaProduce, reply(&response)),
            None => {
                shard.metrics.record(Hist::KafkaProduce, received.elapsed());
                shard.metrics.count_kafka_request(api as i16, []);
                return Ok(None);
            }
        },
        Request::Fetch(request) => {
            let answer = fetch::fetch(&shard, version, request).await;
            let mut errors = Vec::new();
            answer.response.error_codes(&mut |code| errors.push(code));
            let frame = codec::encode_spliced(
                api,
                version,
                correlation_id,
                &answer.response,
                answer.records,
            );
            (Hist::KafkaFetch, (frame, errors))
        }
        Request::ListOffsets(request) => {
            (Hist::KafkaOther, reply(&fetch::list_offsets(&shard, version, request).await))
        }
        Request::CreateTopics(request) => {
            (Hist::KafkaOther, reply(&admin::create_topics(&shard, version, request).await))
        }
        Request::DeleteTopics(request) => {
            (Hist::KafkaOther, reply(&admin::delete_topics(&shard, version, request).await))
        }
        Request::CreatePartitions(request) => {
            (Hist::KafkaOther, reply(&admin::create_partitions(&shard, request).await))
        }
        Request::ElectLeaders(request) => {
            (Hist::KafkaOther, reply(&admin::elect_leaders(&shard, version, request).await))
        }
        Request::AlterPartitionReassignments(request) => {
            let response = reassign::alter_partition_reassignments(&shard, version, request).await;
            (Hist::KafkaOther, reply(&response))
        }
        Request::ListPartitionReassignments(request) => {
            let response = reassign::list_partition_reassignments(&shard, request);
            (Hist::KafkaOther, reply(&response))
        }
        Request::DescribeCluster(request) => {
            (Hist::KafkaOther, reply(&metadata::describe_cluster(&shard, request).await))
        }
        Request::OffsetForLeaderEpoch(request) => {
            (Hist::KafkaOther, reply(&fetch::offset_for_leader_epoch(&shard, request).await))
        }
        Request::DescribeConfigs(request) => {
            (Hist::KafkaOther, reply(&configs::describe_configs(&shard, version, request)))
        }
        Request::IncrementalAlterConfigs(request) => {
            (Hist::KafkaOther, reply(&configs::incremental_alter_configs(&shard, request).await))
        }
        Request::AlterConfigs(request) => {
            (Hist::KafkaOther, reply(&configs::alter_configs(&shard, request).await))
        }
        Request::InitProducerId(request) => {
            (Hist::KafkaOther, reply(&admin::init_producer_id(&shard, request).await))
        }
        Request::FindCoordinator(request) => (
            Hist::KafkaOther,
            reply(&groups::find_coordinator(&shard, &connection, version, request).await),
        ),
        Request::JoinGroup(request) => {
            let client_id = header.client_id.as_ref().map(|c| c.to_string()).unwrap_or_default();
            let response =
                groups::join_group(&shard, &connection, version, request, client_id).await;
            (Hist::KafkaOther, reply(&response))
        }
        Request::SyncGroup(request) => {
            (Hist::KafkaOther, reply(&groups::sync_group(&shard, version, request).await))
        }
        Request::Heartbeat(request) => {
            (Hist::KafkaOther, reply(&groups::heartbeat(&shard, request).await))
        }
        Request::LeaveGroup(request) => {
            (Hist::KafkaOther, reply(&groups::leave_group(&shard, version, request).await))
        }
        Request::OffsetCommit(request) => {
            (Hist::KafkaOther, reply(&groups::offset_commit(&shard, version, request).await))
        }
        Request::OffsetFetch(request) => {
            (Hist::KafkaOther, reply(&groups::offset_fetch(&shard, version, request).await))
        }
        Request::ListGroups(request) => {
            (Hist::KafkaOther, reply(&groups::list_groups(&shard, version, request).await))
        }
        Request::DescribeGroups(request) => {
            (Hist::KafkaOther, reply(&groups::describe_groups(&shard, version, request).await))
        }
        Request::DeleteGroups(request) => {
            (Hist::KafkaOther, reply(&groups::delete_groups(&shard, request).await))
        }
        Request::DescribeLogDirs(request) => (
            Hist::KafkaOther,
            reply(&partitions::describe_log_dirs(&shard, version, request).await),
        ),
        Request::DeleteRecords(request) => {
            (Hist::KafkaOther, reply(&partitions::delete_records(&shard, request).await))
        }
        Request::DescribeProducers(request) => {
            (Hist::KafkaOther, reply(&partitions::describe_producers(&shard, request).await))
        }
        Request::OffsetDelete(request) => {
            (Hist::KafkaOther, reply(&groups::offset_delete(&shard, request).await))
        }
    };
    shard.metrics.record(hist, received.elapsed());
    shard.metrics.count_kafka_request(api as i16, errors);
    // A response the codec cannot encode at this version is a broker bug.
    frame.map(Some).map_err(|why| format!("{api:?} v{version}: {why}"))
}

/// A response body of any API, encoded into a frame, with the error codes it carries.
trait AnyResponse: ErrorCodes {
    fn encode_frame(&self, api: ApiKey, version: i16, correlation_id: i32)
        -> Result<Bytes, String>;
}

impl<T: Encodable + ErrorCodes> AnyResponse for T {
    fn encode_frame(
        &self,
        api: ApiKey,
        version: i16,
        correlation_id: i32,
    ) -> Result<Bytes, String> {
        codec::encode_response(api, version, correlation_id, self)
    }
}

/// The codec refuses to encode a field the response's version does not have, even one set to
/// a meaningful value; fields newer than the first versions are set only when present.
fn has_field(version: i16, since: i16) -> bool {
    version >= since
}

/// A broker error as a Kafka code and message.
fn kafka_error(e: &BrokerError) -> (i16, Option<StrBytes>) {
    (codec::error_code(e.kind), Some(StrBytes::from_string(e.message.clone())))
}
