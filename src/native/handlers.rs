//! What each native request does: decode → validate → route to the owning shard → answer.
//!
//! Every failure becomes an error code and a message in the response; nothing a client sends
//! can panic the broker. Produce payloads are validated here, once, before they reach a log.

use std::rc::Rc;
use std::time::Duration;

use crate::error::{BrokerError, ErrorKind};
use crate::group::{DescribeGroup, FetchOffsets, ListGroups};
use crate::metrics::Hist;
use crate::native::exchange::{
    answer, answer_with, undecodable, HeartbeatsSeen, RequestFrame, Response,
};
use crate::native::frame::Api;
use crate::native::messages::{
    decode, Acks, AdminResponse, AlterTopicConfigRequest, BrokerConfigRequest,
    BrokerConfigResponse, BrokerMetadata, CreateTopicRequest, DeleteRecordsRequest,
    DeleteRecordsResponse, DeleteTopicRequest, DescribeGroupRequest, DescribeGroupResponse,
    ErrorBody, ErrorCode, FetchRequest, FetchResponse, GroupMember, GroupOffset, GroupSummary,
    ListGroupsResponse, ListOffsetsRequest, ListOffsetsResponse, LogDirsResponse, MetadataRequest,
    MetadataResponse, PartitionMetadata, ProduceRequest, ProduceResponse, ProducerDescription,
    ProducersRequest, ProducersResponse, ReassignRequest, TopicMetadata,
};
use crate::native::{cluster, groups, replication};
use crate::record::batch::validate_native_payload;
use crate::record::conform::{check_native, native_as_kafka, ConformError};
use crate::record::kafka_batch::validate_produced;
use crate::record::{PayloadFormat, PendingEntry, ENTRY_HEADER_BYTES};
use crate::shard::{Produced, Shard, TopicRequest, FETCH_BYTES_MAX, FETCH_WAIT_MS_MAX};
use crate::types::{Offset, PartitionId, ShardId};
use glommio::sync::StaticPermit;

/// Runs one request. `None` means no response is sent (a produce with acks=0).
/// A fetch decoded by the connection's reader, with the response budget it reserved.
pub struct PreparedFetch {
    pub request: FetchRequest,
    pub reserved: StaticPermit,
}

/// The request of a fetch frame, decoded once by the reader so it can reserve the response's
/// bytes ([`fetch_max_bytes`]) in request order. `None` for other frames and for fetches too
/// broken to decode (they get an error when handled).
pub fn decode_fetch(frame: &RequestFrame) -> Option<FetchRequest> {
    if Api::from_u8(frame.header.api) != Some(Api::Fetch) {
        return None;
    }
    decode(frame.meta()).ok()
}

/// The most a fetch returns: what it asked for, within [1, `FETCH_BYTES_MAX`].
pub fn fetch_max_bytes(request: &FetchRequest) -> usize {
    (request.max_bytes as usize).clamp(1, FETCH_BYTES_MAX)
}

/// Runs one request; a fetch comes `prepared` by the reader. Every request is counted for
/// `/metrics` with the error it was answered with, those refused before they ran included.
pub async fn handle(
    shard: Rc<Shard>,
    frame: RequestFrame,
    prepared: Option<PreparedFetch>,
    connection: (Rc<str>, Rc<HeartbeatsSeen>),
) -> Option<Response> {
    let api = frame.header.api;
    let response = respond(&shard, frame, prepared, connection).await;
    // Named as the protocol's `ErrorCode` names them; errors are rare enough to pay for it.
    let error = response.as_ref().and_then(Response::error_code).map(|code| code.to_string());
    shard.metrics.count_native_request(api, error);
    response
}

async fn respond(
    shard: &Rc<Shard>,
    frame: RequestFrame,
    prepared: Option<PreparedFetch>,
    (peer, beats): (Rc<str>, Rc<HeartbeatsSeen>),
) -> Option<Response> {
    let header = frame.header;
    let request_id = header.request_id.get();
    let Some(api) = Api::from_u8(header.api) else {
        let why = format!("unknown api code {}", header.api);
        return Some(Response::error(header.api, request_id, ErrorCode::UnsupportedApi, why));
    };
    if header.is_response() {
        return Some(Response::error(
            header.api,
            request_id,
            ErrorCode::InvalidRequest,
            "a response sent as a request",
        ));
    }
    let data = frame.data();
    if !data.is_empty() && crc32fast::hash(data) != header.data_crc.get() {
        let why = format!("data checksum mismatch over {} bytes", data.len());
        return Some(Response::error(header.api, request_id, ErrorCode::CorruptMessage, why));
    }
    let received = frame.received;
    let for_the_cluster = matches!(
        api,
        Api::VoterMessages
            | Api::ControllerRequest
            | Api::ClusterStatus
            | Api::MetadataFetch
            | Api::ReplicaFetch
    );
    // What peers ask for the cluster is served from the start; clients wait until this broker
    // has joined and caught up.
    if !for_the_cluster {
        shard.wait_ready().await;
    }
    let response = match api {
        Api::Produce => produce(shard, frame).await,
        Api::Fetch => Some(fetch(shard, &frame, prepared).await),
        Api::ListOffsets => Some(list_offsets(shard, &frame).await),
        Api::Metadata => Some(metadata(shard, &frame).await),
        Api::CreateTopic => Some(create_topic(shard, &frame).await),
        Api::DeleteTopic => Some(delete_topic(shard, &frame).await),
        Api::Reassign => Some(reassign(shard, &frame).await),
        Api::AlterTopicConfig => Some(alter_topic_config(shard, &frame).await),
        Api::BrokerConfig => Some(broker_config(shard, &frame).await),
        Api::LogDirs => Some(log_dirs(shard, request_id).await),
        Api::Producers => Some(producers(shard, &frame).await),
        Api::DeleteRecords => Some(delete_records(shard, &frame).await),
        Api::ListGroups => Some(list_groups(shard, request_id).await),
        Api::DescribeGroup => Some(describe_group(shard, &frame).await),
        Api::JoinGroup => Some(groups::join(shard, &frame, &peer).await),
        Api::SyncGroup => Some(groups::sync(shard, &frame).await),
        Api::Heartbeat => Some(groups::heartbeat(shard, &frame).await),
        Api::LeaveGroup => Some(groups::leave(shard, &frame).await),
        Api::CommitOffsets => Some(groups::commit(shard, &frame).await),
        Api::FetchOffsets => Some(groups::fetch_offsets(shard, &frame).await),
        Api::DeleteGroup => Some(groups::delete(shard, &frame).await),
        Api::DeleteOffsets => Some(groups::delete_offsets(shard, &frame).await),
        Api::FindCoordinator => Some(groups::find_coordinator(shard, &frame).await),
        Api::VoterMessages => Some(cluster::voter_messages(shard, &frame).await),
        Api::ControllerRequest => Some(cluster::controller_request(shard, &frame, &beats).await),
        Api::ClusterStatus => Some(cluster::cluster_status(shard, request_id).await),
        Api::MetadataFetch => Some(cluster::metadata_fetch(shard, &frame).await),
        Api::ReplicaFetch => Some(replication::replica_fetch(shard, &frame).await),
    };
    shard.metrics.record(hist_of(api), received.elapsed());
    response
}

fn hist_of(api: Api) -> Hist {
    match api {
        Api::Produce => Hist::Produce,
        Api::Fetch => Hist::Fetch,
        Api::ListOffsets => Hist::ListOffsets,
        Api::Metadata => Hist::Metadata,
        Api::CreateTopic => Hist::CreateTopic,
        Api::DeleteTopic => Hist::DeleteTopic,
        Api::Reassign => Hist::Cluster,
        Api::AlterTopicConfig | Api::BrokerConfig => Hist::CreateTopic,
        Api::LogDirs | Api::Producers => Hist::Metadata,
        Api::DeleteRecords => Hist::DeleteTopic,
        Api::ListGroups
        | Api::DescribeGroup
        | Api::JoinGroup
        | Api::SyncGroup
        | Api::Heartbeat
        | Api::LeaveGroup
        | Api::CommitOffsets
        | Api::FetchOffsets
        | Api::DeleteGroup
        | Api::DeleteOffsets
        | Api::FindCoordinator => Hist::Groups,
        Api::VoterMessages | Api::ControllerRequest | Api::ClusterStatus | Api::MetadataFetch => {
            Hist::Cluster
        }
        Api::ReplicaFetch => Hist::ReplicaFetch,
    }
}

async fn produce(shard: &Rc<Shard>, frame: RequestFrame) -> Option<Response> {
    let request_id = frame.header.request_id.get();
    let request: ProduceRequest = match decode(frame.meta()) {
        Ok(request) => request,
        Err(why) => return Some(undecodable(Api::Produce, request_id, why)),
    };
    let acks = request.acks;
    let topic = request.topic.clone();
    let result = append(shard, frame, request).await;
    if acks == Acks::None {
        if let Err(e) = result {
            tracing::debug!(%topic, "acks=0 produce failed: {e}");
        }
        return None;
    }
    let body = match result {
        Ok(produced) => ProduceResponse {
            error: ErrorBody::none(),
            base_offset: produced.base_offset.0,
            log_start: produced.log_start.0,
        },
        Err(e) => ProduceResponse { error: ErrorBody::from(&e), base_offset: 0, log_start: 0 },
    };
    Some(answer(Api::Produce, request_id, &body))
}

async fn append(
    shard: &Rc<Shard>,
    frame: RequestFrame,
    request: ProduceRequest,
) -> Result<Produced, BrokerError> {
    let info = shard.topic_or_create(&request.topic).await?;
    if request.partition >= info.partitions {
        let why = format!(
            "topic {} has {} partitions, no partition {}",
            request.topic, info.partitions, request.partition
        );
        return Err(BrokerError::new(ErrorKind::UnknownPartition, why));
    }
    let data_len = frame.header.data_len.get() as usize;
    if data_len == 0 {
        return Err(BrokerError::new(ErrorKind::InvalidRequest, "produce without a batch"));
    }
    if data_len > info.config.max_message_bytes as usize {
        let why = format!(
            "batch of {data_len} bytes exceeds max.message.bytes {} of topic {}",
            info.config.max_message_bytes, request.topic
        );
        return Err(BrokerError::new(ErrorKind::MessageTooLarge, why));
    }
    validate_native_payload(frame.data(), &request.batch)
        .map_err(|e| BrokerError::new(ErrorKind::CorruptMessage, e.to_string()))?;
    let (rules, now) = (info.config.batch_rules(), crate::now_ms());
    let refused = |e: ConformError| e.refusal(&request.topic, request.partition);
    if rules.rewrites_native() {
        // Stored as the Kafka batch its topic asks for (a codec, the broker's time); native
        // readers get it converted back, as any Kafka producer's batch.
        let kafka = native_as_kafka(frame.data(), &request.batch, &rules, now).map_err(refused)?;
        let meta = validate_produced(&kafka, info.config.max_message_bytes)
            .map_err(|e| e.refusal(&request.topic, request.partition))?
            .meta();
        let entry = PendingEntry::kafka(&kafka, meta)
            .ok_or_else(|| BrokerError::new(ErrorKind::CorruptMessage, "batch too short"))?;
        let partition = PartitionId(request.partition);
        return shard.produce(&request.topic, partition, request.acks, entry).await;
    }
    check_native(frame.data(), &request.batch, &rules.limits, now).map_err(refused)?;
    let data_crc = frame.header.data_crc.get();
    let header_at = frame.data_start() - ENTRY_HEADER_BYTES;
    let entry = PendingEntry::new(
        frame.body,
        header_at,
        data_len,
        data_crc,
        request.batch,
        PayloadFormat::Native,
    )
    .ok_or_else(|| BrokerError::new(ErrorKind::InvalidRequest, "malformed produce body"))?;
    shard.produce(&request.topic, PartitionId(request.partition), request.acks, entry).await
}

async fn fetch(
    shard: &Rc<Shard>,
    frame: &RequestFrame,
    prepared: Option<PreparedFetch>,
) -> Response {
    let request_id = frame.header.request_id.get();
    let (request, reserved) = match prepared {
        Some(PreparedFetch { request, reserved }) => (request, Some(reserved)),
        None => match decode::<FetchRequest>(frame.meta()) {
            Ok(request) => (request, None),
            Err(why) => return undecodable(Api::Fetch, request_id, why),
        },
    };
    let max_bytes = fetch_max_bytes(&request);
    let max_wait = Duration::from_millis(u64::from(request.max_wait_ms.min(FETCH_WAIT_MS_MAX)));
    // The native protocol names no leader epoch: the leader serves whoever asks it.
    let asked = (request.topic.as_str(), PartitionId(request.partition), None);
    let result = shard.fetch(asked, Offset(request.offset), max_bytes, max_wait).await;
    // Entries Kafka producers stored are converted for native readers, one entry at a time.
    let result = result.and_then(|mut outcome| {
        outcome.entries = crate::record::convert::native_entries(outcome.entries).map_err(|e| {
            BrokerError::new(ErrorKind::StorageError, format!("converting a Kafka entry: {e}"))
        })?;
        Ok(outcome)
    });
    if let Ok(outcome) = &result {
        shard.metrics.consumed(&request.topic, outcome.bytes());
    }
    let (body, entries, woken_at) = match result {
        Ok(outcome) => (
            FetchResponse {
                error: ErrorBody::none(),
                high_watermark: outcome.high_watermark.0,
                log_start: outcome.log_start.0,
            },
            outcome.entries,
            outcome.woken_at,
        ),
        Err(e) => (
            FetchResponse { error: ErrorBody::from(&e), high_watermark: 0, log_start: 0 },
            Vec::new(),
            None,
        ),
    };
    answer_with(Api::Fetch, request_id, &body, entries)
        .holding(reserved)
        .timing_delivery_from(woken_at)
}

async fn list_offsets(shard: &Rc<Shard>, frame: &RequestFrame) -> Response {
    let request_id = frame.header.request_id.get();
    let request: ListOffsetsRequest = match decode(frame.meta()) {
        Ok(request) => request,
        Err(why) => return undecodable(Api::ListOffsets, request_id, why),
    };
    let partition = PartitionId(request.partition);
    let asked = (request.topic.as_str(), partition, None);
    let body = match shard.list_offset(asked, request.timestamp).await {
        Ok((offset, ..)) => ListOffsetsResponse { error: ErrorBody::none(), offset },
        Err(e) => ListOffsetsResponse { error: ErrorBody::from(&e), offset: -1 },
    };
    answer(Api::ListOffsets, request_id, &body)
}

async fn metadata(shard: &Rc<Shard>, frame: &RequestFrame) -> Response {
    let request_id = frame.header.request_id.get();
    let request: MetadataRequest = match decode(frame.meta()) {
        Ok(request) => request,
        Err(why) => return undecodable(Api::Metadata, request_id, why),
    };
    let names: Vec<String> = match request.topics {
        Some(names) => names,
        None => shard.topics().into_iter().map(|(name, _)| name).collect(),
    };
    let mut topics = Vec::with_capacity(names.len());
    for name in names {
        if request.allow_auto_create {
            if let Err(e) = shard.topic_or_create(&name).await {
                let error = ErrorBody::from(&e);
                topics.push(TopicMetadata {
                    name,
                    error,
                    partitions: Vec::new(),
                    configs: Vec::new(),
                });
                continue;
            }
        }
        topics.push(describe_topic(shard, name, request.with_offsets).await);
    }
    let image = shard.metadata_image();
    let brokers = image
        .live_brokers()
        .map(|(node, info)| BrokerMetadata {
            node: *node,
            host: info.endpoints.native.0.clone(),
            port: info.endpoints.native.1,
            rack: info.rack.clone(),
        })
        .collect();
    let node = shard.config.node_id;
    let response = MetadataResponse { shards: shard.count as u32, node, brokers, topics };
    answer(Api::Metadata, request_id, &response)
}

async fn describe_topic(shard: &Rc<Shard>, name: String, with_offsets: bool) -> TopicMetadata {
    let Some(info) = shard.topic(&name) else {
        let error = ErrorBody::new(ErrorCode::UnknownTopic, format!("no topic {name}"));
        return TopicMetadata { name, error, partitions: Vec::new(), configs: Vec::new() };
    };
    let mut partitions = Vec::with_capacity(info.partitions as usize);
    let mut error = ErrorBody::none();
    let image = shard.metadata_image();
    let states = image.topic_named(&name).map(|(_, topic)| &topic.partitions);
    // Not caught up with the cluster: no leader is named from what may be a stale image.
    let ready = shard.is_ready();
    for partition in 0..info.partitions {
        let (log_start, high_watermark) = if with_offsets {
            match shard.watermarks(&name, PartitionId(partition)).await {
                Ok(bounds) => (bounds.log_start.0, bounds.high_watermark.0),
                // Held by other brokers: their leaders tell.
                Err(e) if e.kind == ErrorKind::NotLeaderOrFollower => (0, 0),
                Err(e) => {
                    error = ErrorBody::from(&e);
                    (0, 0)
                }
            }
        } else {
            (0, 0)
        };
        let owner = shard.owner(&name, PartitionId(partition)).0 as u32;
        let state = states.and_then(|s| s.get(&PartitionId(partition)));
        partitions.push(PartitionMetadata {
            partition,
            shard: owner,
            log_start,
            high_watermark,
            leader: state.and_then(|s| s.leader).filter(|_| ready),
            leader_epoch: state.map_or(-1, |s| s.leader_epoch.0),
            isr: state.map(|s| s.isr.clone()).unwrap_or_default(),
            replicas: state.map(|s| s.replicas.clone()).unwrap_or_default(),
            adding: state.map(|s| s.adding.clone()).unwrap_or_default(),
            removing: state.map(|s| s.removing.clone()).unwrap_or_default(),
            elr: state.map(|s| s.elr.clone()).unwrap_or_default(),
        });
    }
    TopicMetadata { name, error, partitions, configs: info.config.entries() }
}

async fn create_topic(shard: &Rc<Shard>, frame: &RequestFrame) -> Response {
    let request_id = frame.header.request_id.get();
    let request: CreateTopicRequest = match decode(frame.meta()) {
        Ok(request) => request,
        Err(why) => return undecodable(Api::CreateTopic, request_id, why),
    };
    let topic = TopicRequest {
        name: request.name,
        partitions: request.partitions,
        replication_factor: request.replication_factor,
        assignment: None,
        overrides: request.configs.into_iter().collect(),
    };
    let result = shard.create_topic(topic).await;
    answer(Api::CreateTopic, request_id, &admin_body(result.map(|_| ())))
}

async fn delete_topic(shard: &Rc<Shard>, frame: &RequestFrame) -> Response {
    let request_id = frame.header.request_id.get();
    let request: DeleteTopicRequest = match decode(frame.meta()) {
        Ok(request) => request,
        Err(why) => return undecodable(Api::DeleteTopic, request_id, why),
    };
    let result = shard.delete_topic(&request.name).await;
    answer(Api::DeleteTopic, request_id, &admin_body(result))
}

async fn reassign(shard: &Rc<Shard>, frame: &RequestFrame) -> Response {
    let request_id = frame.header.request_id.get();
    let request: ReassignRequest = match decode(frame.meta()) {
        Ok(request) => request,
        Err(why) => return undecodable(Api::Reassign, request_id, why),
    };
    let result = shard.reassign_partitions(request.moves).await;
    answer(Api::Reassign, request_id, &admin_body(result))
}

async fn alter_topic_config(shard: &Rc<Shard>, frame: &RequestFrame) -> Response {
    let request_id = frame.header.request_id.get();
    let request: AlterTopicConfigRequest = match decode(frame.meta()) {
        Ok(request) => request,
        Err(why) => return undecodable(Api::AlterTopicConfig, request_id, why),
    };
    let AlterTopicConfigRequest { name, changes, validate_only } = request;
    let result = shard.alter_topic_config(&name, changes, false, validate_only).await;
    answer(Api::AlterTopicConfig, request_id, &admin_body(result))
}

async fn broker_config(shard: &Rc<Shard>, frame: &RequestFrame) -> Response {
    let request_id = frame.header.request_id.get();
    let request: BrokerConfigRequest = match decode(frame.meta()) {
        Ok(request) => request,
        Err(why) => return undecodable(Api::BrokerConfig, request_id, why),
    };
    let BrokerConfigRequest { node, changes, validate_only } = request;
    let mut body = BrokerConfigResponse { error: ErrorBody::none(), settings: Vec::new() };
    if !changes.is_empty() {
        let altered = shard.alter_broker_config(node, changes, false, validate_only).await;
        if let Err(e) = altered {
            body.error = ErrorBody::from(&e);
            return answer(Api::BrokerConfig, request_id, &body);
        }
    }
    body.settings = shard.metadata_image().resource_settings();
    answer(Api::BrokerConfig, request_id, &body)
}

async fn log_dirs(shard: &Rc<Shard>, request_id: u64) -> Response {
    let mut body = LogDirsResponse {
        error: ErrorBody::none(),
        log_dir: shard.log_dir(),
        total_bytes: 0,
        usable_bytes: 0,
        replicas: Vec::new(),
    };
    match shard.replica_sizes().await {
        Ok(sizes) => {
            let sizes = sizes.into_iter();
            body.replicas = sizes.map(|r| (r.topic, r.partition.0, r.size_bytes)).collect();
        }
        Err(e) => body.error = ErrorBody::from(&e),
    }
    match shard.disk_space().await {
        Ok((total, usable)) => (body.total_bytes, body.usable_bytes) = (total, usable),
        Err(e) => {
            let why = format!("the data directory's file system: {e}");
            body.error = ErrorBody::new(ErrorCode::StorageError, why);
        }
    }
    answer(Api::LogDirs, request_id, &body)
}

async fn delete_records(shard: &Rc<Shard>, frame: &RequestFrame) -> Response {
    let request_id = frame.header.request_id.get();
    let request: DeleteRecordsRequest = match decode(frame.meta()) {
        Ok(request) => request,
        Err(why) => return undecodable(Api::DeleteRecords, request_id, why),
    };
    let DeleteRecordsRequest { topic, partition, offset } = request;
    // As Kafka's admin client waits by default.
    let timeout = Duration::from_secs(30);
    let deleted =
        shard.delete_records(&topic, PartitionId(partition), offset.map(Offset), timeout).await;
    let body = match deleted {
        Ok(start) => DeleteRecordsResponse { error: ErrorBody::none(), log_start: start.0 },
        Err(e) => DeleteRecordsResponse { error: ErrorBody::from(&e), log_start: 0 },
    };
    answer(Api::DeleteRecords, request_id, &body)
}

async fn producers(shard: &Rc<Shard>, frame: &RequestFrame) -> Response {
    let request_id = frame.header.request_id.get();
    let request: ProducersRequest = match decode(frame.meta()) {
        Ok(request) => request,
        Err(why) => return undecodable(Api::Producers, request_id, why),
    };
    let body = match shard.producers(&request.topic, PartitionId(request.partition)).await {
        Ok(producers) => ProducersResponse {
            error: ErrorBody::none(),
            producers: (producers.into_iter())
                .map(|p| ProducerDescription {
                    producer_id: p.producer_id,
                    epoch: p.epoch,
                    last_sequence: p.last_sequence,
                    last_timestamp: p.last_timestamp,
                })
                .collect(),
        },
        Err(e) => ProducersResponse { error: ErrorBody::from(&e), producers: Vec::new() },
    };
    answer(Api::Producers, request_id, &body)
}

async fn list_groups(shard: &Rc<Shard>, request_id: u64) -> Response {
    let mut groups = Vec::new();
    let mut error = ErrorBody::none();
    for target in (0..shard.count).map(ShardId) {
        match shard.group_on(target, ListGroups {}).await {
            Ok(listed) => {
                groups.extend(listed.into_iter().map(|(group, state, protocol_type)| {
                    GroupSummary { group, state: state.name().to_string(), protocol_type }
                }));
            }
            // As Kafka's ListGroups: the groups of the shards that answered, and the error.
            Err(e) => error = groups::error_body(e),
        }
    }
    groups.sort_by(|a, b| a.group.cmp(&b.group));
    answer(Api::ListGroups, request_id, &ListGroupsResponse { error, groups })
}

async fn describe_group(shard: &Rc<Shard>, frame: &RequestFrame) -> Response {
    let request_id = frame.header.request_id.get();
    let request: DescribeGroupRequest = match decode(frame.meta()) {
        Ok(request) => request,
        Err(why) => return undecodable(Api::DescribeGroup, request_id, why),
    };
    let group = request.group;
    let mut body = DescribeGroupResponse {
        error: ErrorBody::none(),
        state: "Dead".into(),
        protocol_type: String::new(),
        protocol: String::new(),
        members: Vec::new(),
        offsets: Vec::new(),
    };
    let described = match shard.group(&group, DescribeGroup { group: group.clone() }).await {
        Ok(described) => described,
        Err(e) => {
            body.error = groups::error_body(e);
            return answer(Api::DescribeGroup, request_id, &body);
        }
    };
    if let Some(description) = described {
        body.state = description.state.name().to_string();
        body.members = description
            .members
            .into_iter()
            .map(|m| GroupMember {
                assignment: crate::group::consumer_protocol::assigned_partitions(&m.assignment),
                member_id: m.member_id,
                instance_id: m.instance_id,
                client_id: m.client_id,
                client_host: m.client_host,
            })
            .collect();
        body.protocol_type = description.protocol_type;
        body.protocol = description.protocol;
    }
    let offsets =
        match shard.group(&group, FetchOffsets { group: group.clone(), topics: None }).await {
            Ok(offsets) => offsets,
            Err(e) => {
                body.error = groups::error_body(e);
                return answer(Api::DescribeGroup, request_id, &body);
            }
        };
    for (topic, partition, committed) in offsets {
        let Some(committed) = committed else { continue };
        let high_watermark = match u32::try_from(partition) {
            Ok(p) => {
                let bounds = shard.watermarks(&topic, PartitionId(p)).await;
                bounds.map_or(-1, |b| b.high_watermark.0 as i64)
            }
            Err(_) => -1,
        };
        body.offsets.push(GroupOffset {
            topic,
            partition,
            committed: committed.offset,
            high_watermark,
        });
    }
    if body.state == "Dead" && body.offsets.is_empty() {
        body.error = ErrorBody::new(ErrorCode::UnknownGroup, format!("no group {group}"));
    }
    answer(Api::DescribeGroup, request_id, &body)
}

fn admin_body(result: Result<(), BrokerError>) -> AdminResponse {
    AdminResponse { error: result.err().map_or_else(ErrorBody::none, |e| ErrorBody::from(&e)) }
}
