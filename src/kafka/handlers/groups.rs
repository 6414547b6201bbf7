//! The group APIs: FindCoordinator, JoinGroup, SyncGroup, Heartbeat, LeaveGroup, OffsetCommit,
//! OffsetFetch, ListGroups, DescribeGroups, DeleteGroups, OffsetDelete. Each becomes a [`GroupCall`] on the
//! group's coordinator shard; this file only translates between Kafka's messages and those.

use std::rc::Rc;
use std::time::Duration;

use kafka_protocol::messages::delete_groups_response::DeletableGroupResult;
use kafka_protocol::messages::describe_groups_response::{DescribedGroup, DescribedGroupMember};
use kafka_protocol::messages::join_group_response::JoinGroupResponseMember;
use kafka_protocol::messages::leave_group_response::MemberResponse;
use kafka_protocol::messages::list_groups_response::ListedGroup;
use kafka_protocol::messages::offset_commit_response::{
    OffsetCommitResponsePartition, OffsetCommitResponseTopic,
};
use kafka_protocol::messages::offset_delete_response::{
    OffsetDeleteResponsePartition, OffsetDeleteResponseTopic,
};
use kafka_protocol::messages::offset_fetch_response::{
    OffsetFetchResponsePartition, OffsetFetchResponseTopic,
};
use kafka_protocol::messages::{
    BrokerId, DeleteGroupsRequest, DeleteGroupsResponse, DescribeGroupsRequest,
    DescribeGroupsResponse, FindCoordinatorRequest, FindCoordinatorResponse, GroupId,
    HeartbeatRequest, HeartbeatResponse, JoinGroupRequest, JoinGroupResponse, LeaveGroupRequest,
    LeaveGroupResponse, ListGroupsRequest, ListGroupsResponse, OffsetCommitRequest,
    OffsetCommitResponse, OffsetDeleteRequest, OffsetDeleteResponse, OffsetFetchRequest,
    OffsetFetchResponse, SyncGroupRequest, SyncGroupResponse, TopicName,
};
use kafka_protocol::protocol::StrBytes;

use crate::error::ErrorKind;
use crate::group::coordinator::OffsetCommit;
use crate::group::state::JoinRequest;
use crate::group::{
    CommitOffsets, DeleteGroup, DeleteOffsets, DescribeGroup, FetchOffsets, Heartbeat, JoinGroup,
    LeaveGroup, ListGroups, SyncGroup,
};
use crate::kafka::codec;
use crate::kafka::handlers::has_field;
use crate::kafka::handlers::Connection;
use crate::shard::Shard;
use crate::types::{PartitionId, ShardId};

/// FindCoordinator key type of transactional ids: no transaction coordinator exists.
const KEY_TYPE_TRANSACTION: i8 = 1;
/// What a transactional producer is told, in the error message of versions that carry one.
pub const TRANSACTIONS_NOT_SUPPORTED: &str =
    "transactions are not supported by this broker (Spate) yet; use an idempotent producer";

fn text(s: impl Into<String>) -> StrBytes {
    StrBytes::from_string(s.into())
}

/// A group's coordinator is the broker leading its `__consumer_offsets` partition (created on
/// first use); the connection then lands on any of that broker's shards, which forwards to the
/// coordinating one.
pub async fn find_coordinator(
    shard: &Rc<Shard>,
    connection: &Connection,
    version: i16,
    request: FindCoordinatorRequest,
) -> FindCoordinatorResponse {
    let mut response = FindCoordinatorResponse::default();
    if has_field(version, 1) {
        response.error_message = None;
    }
    if request.key_type == KEY_TYPE_TRANSACTION {
        tracing::info!(
            peer = %connection.peer,
            transactional_id = %request.key,
            "refused a transaction coordinator lookup: {TRANSACTIONS_NOT_SUPPORTED}"
        );
        response.error_code = codec::TRANSACTIONS_REFUSED;
        response.node_id = BrokerId(-1);
        response.port = -1;
        if has_field(version, 1) {
            response.error_message = Some(text(TRANSACTIONS_NOT_SUPPORTED));
        }
        return response;
    }
    let coordinator = shard.group_coordinator(request.key.as_str()).await;
    let me = shard.config.node_id;
    let endpoint = coordinator.and_then(|node| match node == me {
        true => Ok((node, crate::kafka::handlers::metadata::advertised(shard, connection))),
        false => shard.coordinator_endpoints(node).map(|endpoints| (node, endpoints.kafka)),
    });
    match endpoint {
        Ok((node, (host, port))) => {
            response.node_id = BrokerId(node.0);
            response.host = text(host);
            response.port = i32::from(port);
        }
        Err(e) => {
            response.error_code = codec::error_code(e.kind);
            response.node_id = BrokerId(-1);
            response.port = -1;
            if has_field(version, 1) {
                response.error_message = Some(text(e.message));
            }
        }
    }
    response
}

pub async fn join_group(
    shard: &Rc<Shard>,
    connection: &Connection,
    version: i16,
    request: JoinGroupRequest,
    client_id: String,
) -> JoinGroupResponse {
    let group = request.group_id.0.to_string();
    let millis = |ms: i32| Duration::from_millis(u64::try_from(ms).unwrap_or(0));
    let join = JoinRequest {
        member_id: request.member_id.to_string(),
        instance_id: request.group_instance_id.as_ref().map(|i| i.to_string()),
        client_id,
        client_host: format!("/{}", connection.peer.rsplit_once(':').map_or("", |(h, _)| h)),
        session_timeout: millis(request.session_timeout_ms),
        rebalance_timeout: millis(if has_field(version, 1) {
            request.rebalance_timeout_ms
        } else {
            request.session_timeout_ms
        }),
        protocol_type: request.protocol_type.to_string(),
        protocols: request
            .protocols
            .iter()
            .map(|p| (p.name.to_string(), p.metadata.clone()))
            .collect(),
        require_known_member: version >= 4,
    };
    let answer = shard.group(&group, JoinGroup { group: group.clone(), request: join }).await;
    let mut response = JoinGroupResponse::default();
    response.protocol_name = Some(text(""));
    match answer {
        Ok(Ok(outcome)) => {
            response.generation_id = outcome.generation;
            if has_field(version, 7) {
                response.protocol_type = Some(text(outcome.protocol_type));
            }
            response.protocol_name = Some(text(outcome.protocol));
            response.leader = text(outcome.leader);
            response.member_id = text(outcome.member_id);
            response.members = outcome
                .members
                .into_iter()
                .map(|m| {
                    let mut member = JoinGroupResponseMember::default();
                    member.member_id = text(m.member_id);
                    if has_field(version, 5) {
                        member.group_instance_id = m.instance_id.map(text);
                    }
                    member.metadata = m.metadata;
                    member
                })
                .collect();
        }
        Ok(Err((error, member_id))) => {
            response.error_code = codec::error_code(error);
            response.generation_id = -1;
            response.member_id = text(member_id);
        }
        Err(error) => {
            response.error_code = codec::error_code(error);
            response.generation_id = -1;
            response.member_id = request.member_id;
        }
    }
    response
}

pub async fn sync_group(
    shard: &Rc<Shard>,
    version: i16,
    request: SyncGroupRequest,
) -> SyncGroupResponse {
    let group = request.group_id.0.to_string();
    let call = SyncGroup {
        group: group.clone(),
        member_id: request.member_id.to_string(),
        instance_id: request.group_instance_id.as_ref().map(|i| i.to_string()),
        generation: request.generation_id,
        assignments: request
            .assignments
            .into_iter()
            .map(|a| (a.member_id.to_string(), a.assignment))
            .collect(),
    };
    let mut response = SyncGroupResponse::default();
    match shard.group(&group, call).await {
        Ok(Ok(assignment)) => {
            response.assignment = assignment;
            if has_field(version, 5) {
                response.protocol_type = request.protocol_type;
                response.protocol_name = request.protocol_name;
            }
        }
        Ok(Err(e)) | Err(e) => response.error_code = codec::error_code(e),
    }
    response
}

pub async fn heartbeat(shard: &Rc<Shard>, request: HeartbeatRequest) -> HeartbeatResponse {
    let group = request.group_id.0.to_string();
    let call = Heartbeat {
        group: group.clone(),
        member_id: request.member_id.to_string(),
        instance_id: request.group_instance_id.as_ref().map(|i| i.to_string()),
        generation: request.generation_id,
    };
    let mut response = HeartbeatResponse::default();
    response.error_code = codec::result_code(shard.group(&group, call).await.and_then(|r| r));
    response
}

pub async fn leave_group(
    shard: &Rc<Shard>,
    version: i16,
    request: LeaveGroupRequest,
) -> LeaveGroupResponse {
    let group = request.group_id.0.to_string();
    let members: Vec<(String, Option<String>)> = if has_field(version, 3) {
        request
            .members
            .iter()
            .map(|m| (m.member_id.to_string(), m.group_instance_id.as_ref().map(|i| i.to_string())))
            .collect()
    } else {
        vec![(request.member_id.to_string(), None)]
    };
    let call = LeaveGroup { group: group.clone(), members: members.clone() };
    let mut response = LeaveGroupResponse::default();
    match shard.group(&group, call).await.and_then(|r| r) {
        Ok(results) => {
            if has_field(version, 3) {
                for ((member_id, instance_id), result) in members.into_iter().zip(&results) {
                    let mut member = MemberResponse::default();
                    member.member_id = text(member_id);
                    member.group_instance_id = instance_id.map(text);
                    member.error_code = codec::result_code(*result);
                    response.members.push(member);
                }
            } else if let Some(Err(e)) = results.first() {
                response.error_code = codec::error_code(*e);
            }
        }
        Err(e) => response.error_code = codec::error_code(e),
    }
    response
}

/// Commits the offsets of partitions that exist; the others are answered
/// UNKNOWN_TOPIC_OR_PARTITION one by one and not stored, as Kafka does.
pub async fn offset_commit(
    shard: &Rc<Shard>,
    version: i16,
    request: OffsetCommitRequest,
) -> OffsetCommitResponse {
    let group = request.group_id.0.to_string();
    // Decided once per partition: the answer must say exactly what was committed.
    let known: Vec<Vec<bool>> = request
        .topics
        .iter()
        .map(|t| {
            t.partitions
                .iter()
                .map(|p| {
                    u32::try_from(p.partition_index).is_ok_and(|index| {
                        shard.has_partition(t.name.0.as_str(), PartitionId(index))
                    })
                })
                .collect()
        })
        .collect();
    let offsets: Vec<OffsetCommit> = request
        .topics
        .iter()
        .zip(&known)
        .flat_map(|(t, known)| {
            t.partitions.iter().zip(known).filter(|(_, known)| **known).map(|(p, _)| OffsetCommit {
                topic: t.name.0.to_string(),
                partition: p.partition_index,
                offset: p.committed_offset,
                leader_epoch: if has_field(version, 6) { p.committed_leader_epoch } else { -1 },
                metadata: p.committed_metadata.as_ref().map(|m| m.to_string()).unwrap_or_default(),
            })
        })
        .collect();
    let call = CommitOffsets {
        group: group.clone(),
        member_id: request.member_id.to_string(),
        instance_id: if has_field(version, 7) {
            request.group_instance_id.as_ref().map(|i| i.to_string())
        } else {
            None
        },
        generation: request.generation_id_or_member_epoch,
        offsets,
    };
    let code = codec::result_code(shard.group(&group, call).await.and_then(|r| r));
    let mut response = OffsetCommitResponse::default();
    for (topic, known) in request.topics.into_iter().zip(known) {
        let mut result = OffsetCommitResponseTopic::default();
        for (partition, known) in topic.partitions.into_iter().zip(known) {
            let mut answer = OffsetCommitResponsePartition::default();
            answer.partition_index = partition.partition_index;
            answer.error_code =
                if known { code } else { codec::error_code(ErrorKind::UnknownTopic) };
            result.partitions.push(answer);
        }
        result.name = topic.name;
        response.topics.push(result);
    }
    response
}

pub async fn offset_fetch(
    shard: &Rc<Shard>,
    version: i16,
    request: OffsetFetchRequest,
) -> OffsetFetchResponse {
    let group = request.group_id.0.to_string();
    let topics = request.topics.map(|topics| {
        topics.into_iter().map(|t| (t.name.0.to_string(), t.partition_indexes)).collect()
    });
    let mut response = OffsetFetchResponse::default();
    let found = match shard.group(&group, FetchOffsets { group: group.clone(), topics }).await {
        Ok(found) => found,
        Err(e) => {
            if has_field(version, 2) {
                response.error_code = codec::error_code(e);
            }
            return response;
        }
    };
    for (topic, partition, committed) in found {
        if response
            .topics
            .last()
            .is_none_or(|t: &OffsetFetchResponseTopic| t.name.0.as_str() != topic)
        {
            let mut entry = OffsetFetchResponseTopic::default();
            entry.name = TopicName(text(topic));
            response.topics.push(entry);
        }
        let mut answer = OffsetFetchResponsePartition::default();
        answer.partition_index = partition;
        answer.committed_offset = committed.as_ref().map_or(-1, |c| c.offset);
        if has_field(version, 5) {
            answer.committed_leader_epoch = committed.as_ref().map_or(-1, |c| c.leader_epoch);
        }
        answer.metadata = Some(text(committed.map(|c| c.metadata).unwrap_or_default()));
        if let Some(entry) = response.topics.last_mut() {
            entry.partitions.push(answer);
        }
    }
    response
}

pub async fn list_groups(
    shard: &Rc<Shard>,
    version: i16,
    request: ListGroupsRequest,
) -> ListGroupsResponse {
    let mut response = ListGroupsResponse::default();
    for target in (0..shard.count).map(ShardId) {
        let groups = match shard.group_on(target, ListGroups {}).await {
            Ok(groups) => groups,
            Err(e) => {
                response.error_code = codec::error_code(e);
                continue;
            }
        };
        for (id, state, protocol_type) in groups {
            let wanted = request.states_filter.is_empty()
                || request
                    .states_filter
                    .iter()
                    .any(|s| s.as_str().eq_ignore_ascii_case(state.name()));
            if !wanted {
                continue;
            }
            let mut listed = ListedGroup::default();
            listed.group_id = GroupId(text(id));
            listed.protocol_type = text(protocol_type);
            if has_field(version, 4) {
                listed.group_state = text(state.name());
            }
            response.groups.push(listed);
        }
    }
    response
}

pub async fn describe_groups(
    shard: &Rc<Shard>,
    version: i16,
    request: DescribeGroupsRequest,
) -> DescribeGroupsResponse {
    let mut response = DescribeGroupsResponse::default();
    for group_id in request.groups {
        let group = group_id.0.to_string();
        let mut described = DescribedGroup::default();
        described.group_id = group_id;
        match shard.group(&group, DescribeGroup { group: group.clone() }).await {
            Ok(Some(description)) => {
                described.group_state = text(description.state.name());
                described.protocol_type = text(description.protocol_type);
                described.protocol_data = text(description.protocol);
                for m in description.members {
                    let mut member = DescribedGroupMember::default();
                    member.member_id = text(m.member_id);
                    if has_field(version, 4) {
                        member.group_instance_id = m.instance_id.map(text);
                    }
                    member.client_id = text(m.client_id);
                    member.client_host = text(m.client_host);
                    member.member_metadata = m.metadata;
                    member.member_assignment = m.assignment;
                    described.members.push(member);
                }
            }
            // Kafka describes an unknown group as Dead rather than failing.
            Ok(None) => described.group_state = text("Dead"),
            Err(e) => described.error_code = codec::error_code(e),
        }
        response.groups.push(described);
    }
    response
}

pub async fn delete_groups(
    shard: &Rc<Shard>,
    request: DeleteGroupsRequest,
) -> DeleteGroupsResponse {
    let mut response = DeleteGroupsResponse::default();
    for group_id in request.groups_names {
        let group = group_id.0.to_string();
        let mut result = DeletableGroupResult::default();
        let deleted = shard.group(&group, DeleteGroup { group: group.clone() }).await;
        result.error_code = codec::result_code(deleted.and_then(|r| r));
        result.group_id = group_id;
        response.results.push(result);
    }
    response
}

/// OffsetDelete (KIP-496): a group's committed offsets of partitions it no longer consumes go.
/// A partition the cluster does not have is UNKNOWN_TOPIC_OR_PARTITION, as Kafka answers it;
/// the others are the coordinator's to decide.
pub async fn offset_delete(
    shard: &Rc<Shard>,
    request: OffsetDeleteRequest,
) -> OffsetDeleteResponse {
    let group = request.group_id.0.to_string();
    let mut asked = Vec::new();
    let mut unknown = Vec::new();
    for topic in &request.topics {
        let name = topic.name.0.to_string();
        for partition in &topic.partitions {
            let index = partition.partition_index;
            let known =
                u32::try_from(index).is_ok_and(|p| shard.has_partition(&name, PartitionId(p)));
            match known {
                true => asked.push((name.clone(), index)),
                false => unknown.push((name.clone(), index)),
            }
        }
    }
    let mut response = OffsetDeleteResponse::default();
    let call = DeleteOffsets { group: group.clone(), partitions: asked };
    let mut results = match shard.group(&group, call).await.and_then(|r| r) {
        Ok(results) => results,
        Err(kind) => {
            response.error_code = codec::error_code(kind);
            return response;
        }
    };
    let unknown_topic = Err(crate::error::ErrorKind::UnknownTopic);
    results.extend(unknown.into_iter().map(|(topic, index)| (topic, index, unknown_topic)));
    let mut by_topic: std::collections::BTreeMap<String, Vec<OffsetDeleteResponsePartition>> =
        std::collections::BTreeMap::new();
    for (topic, index, result) in results {
        let mut partition = OffsetDeleteResponsePartition::default();
        partition.partition_index = index;
        partition.error_code = codec::result_code(result);
        by_topic.entry(topic).or_default().push(partition);
    }
    response.topics = (by_topic.into_iter())
        .map(|(name, partitions)| {
            let mut topic = OffsetDeleteResponseTopic::default();
            topic.name = TopicName(text(name));
            topic.partitions = partitions;
            topic
        })
        .collect();
    response
}
