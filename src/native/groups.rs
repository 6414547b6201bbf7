//! Native group requests: the same coordinators as Kafka's group APIs, reached through
//! typed group requests, with native bodies and error codes.

use std::rc::Rc;
use std::time::Duration;

use bytes::Bytes;

use crate::error::ErrorKind;
use crate::group::coordinator::OffsetCommit;
use crate::group::state::JoinRequest;
use crate::group::{
    CommitOffsets, DeleteGroup, DeleteOffsets, FetchOffsets, Heartbeat, JoinGroup, LeaveGroup,
    SyncGroup,
};
use crate::native::exchange::{answer, undecodable, RequestFrame, Response};
use crate::native::frame::Api;
use crate::native::messages::{
    decode, AdminResponse, CommitOffsetsRequest, DeleteGroupRequest, DeleteOffsetsRequest,
    DeleteOffsetsResponse, ErrorBody, ErrorCode, FetchOffsetsRequest, FetchOffsetsResponse,
    FindCoordinatorRequest, FindCoordinatorResponse, HeartbeatRequest, JoinGroupRequest,
    JoinGroupResponse, LeaveGroupRequest, SyncGroupRequest, SyncGroupResponse,
};
use crate::shard::Shard;
use crate::types::{NodeId, PartitionId};

pub(super) fn error_body(error: ErrorKind) -> ErrorBody {
    ErrorBody::new(ErrorCode::from(error), error.to_string())
}

fn refused(code: ErrorCode, why: String) -> AdminResponse {
    AdminResponse { error: ErrorBody::new(code, why) }
}

fn done(result: Result<(), ErrorKind>) -> AdminResponse {
    AdminResponse { error: result.err().map_or_else(ErrorBody::none, error_body) }
}

/// The broker coordinating a group: the leader of its `__consumer_offsets` partition (created
/// on first use), at the native address it registered.
pub async fn find_coordinator(shard: &Rc<Shard>, frame: &RequestFrame) -> Response {
    let request_id = frame.header.request_id.get();
    let request: FindCoordinatorRequest = match decode(frame.meta()) {
        Ok(request) => request,
        Err(why) => return undecodable(Api::FindCoordinator, request_id, why),
    };
    let mut body = FindCoordinatorResponse {
        error: ErrorBody::none(),
        node: NodeId(-1),
        host: String::new(),
        port: 0,
    };
    let coordinator = shard.group_coordinator(&request.group).await;
    let found = coordinator.and_then(|node| Ok((node, shard.coordinator_endpoints(node)?)));
    match found {
        Ok((node, endpoints)) => (body.node, (body.host, body.port)) = (node, endpoints.native),
        Err(e) => body.error = ErrorBody::from(&e),
    }
    answer(Api::FindCoordinator, request_id, &body)
}

pub async fn join(shard: &Rc<Shard>, frame: &RequestFrame, peer: &str) -> Response {
    let request_id = frame.header.request_id.get();
    let request: JoinGroupRequest = match decode(frame.meta()) {
        Ok(request) => request,
        Err(why) => return undecodable(Api::JoinGroup, request_id, why),
    };
    let join = JoinRequest {
        member_id: request.member_id,
        instance_id: None,
        client_id: request.client_id,
        client_host: format!("/{peer}"),
        session_timeout: Duration::from_millis(u64::from(request.session_timeout_ms)),
        rebalance_timeout: Duration::from_millis(u64::from(request.rebalance_timeout_ms)),
        protocol_type: request.protocol_type,
        protocols: request.protocols.into_iter().map(|(n, m)| (n, Bytes::from(m))).collect(),
        require_known_member: false,
    };
    let group = request.group;
    let call = JoinGroup { group: group.clone(), request: join };
    let mut body = JoinGroupResponse {
        error: ErrorBody::none(),
        generation: -1,
        protocol: String::new(),
        leader: String::new(),
        member_id: String::new(),
        members: Vec::new(),
    };
    match shard.group(&group, call).await {
        Ok(Ok(outcome)) => {
            body.generation = outcome.generation;
            body.protocol = outcome.protocol;
            body.leader = outcome.leader;
            body.member_id = outcome.member_id;
            body.members =
                outcome.members.into_iter().map(|m| (m.member_id, m.metadata.to_vec())).collect();
        }
        Ok(Err((error, member_id))) => {
            body.error = error_body(error);
            body.member_id = member_id;
        }
        Err(error) => body.error = error_body(error),
    }
    answer(Api::JoinGroup, request_id, &body)
}

pub async fn sync(shard: &Rc<Shard>, frame: &RequestFrame) -> Response {
    let request_id = frame.header.request_id.get();
    let request: SyncGroupRequest = match decode(frame.meta()) {
        Ok(request) => request,
        Err(why) => return undecodable(Api::SyncGroup, request_id, why),
    };
    let group = request.group;
    let call = SyncGroup {
        group: group.clone(),
        member_id: request.member_id,
        instance_id: None,
        generation: request.generation,
        assignments: request.assignments.into_iter().map(|(m, a)| (m, Bytes::from(a))).collect(),
    };
    let body = match shard.group(&group, call).await.and_then(|r| r) {
        Ok(assignment) => {
            SyncGroupResponse { error: ErrorBody::none(), assignment: assignment.to_vec() }
        }
        Err(e) => SyncGroupResponse { error: error_body(e), assignment: vec![] },
    };
    answer(Api::SyncGroup, request_id, &body)
}

pub async fn heartbeat(shard: &Rc<Shard>, frame: &RequestFrame) -> Response {
    let request_id = frame.header.request_id.get();
    let request: HeartbeatRequest = match decode(frame.meta()) {
        Ok(request) => request,
        Err(why) => return undecodable(Api::Heartbeat, request_id, why),
    };
    let group = request.group;
    let call = Heartbeat {
        group: group.clone(),
        member_id: request.member_id,
        instance_id: None,
        generation: request.generation,
    };
    let result = shard.group(&group, call).await.and_then(|r| r);
    answer(Api::Heartbeat, request_id, &done(result))
}

pub async fn leave(shard: &Rc<Shard>, frame: &RequestFrame) -> Response {
    let request_id = frame.header.request_id.get();
    let request: LeaveGroupRequest = match decode(frame.meta()) {
        Ok(request) => request,
        Err(why) => return undecodable(Api::LeaveGroup, request_id, why),
    };
    let group = request.group;
    let call = LeaveGroup { group: group.clone(), members: vec![(request.member_id, None)] };
    let result = match shard.group(&group, call).await.and_then(|r| r) {
        Ok(results) => results.into_iter().next().unwrap_or(Ok(())),
        Err(e) => Err(e),
    };
    answer(Api::LeaveGroup, request_id, &done(result))
}

pub async fn commit(shard: &Rc<Shard>, frame: &RequestFrame) -> Response {
    let request_id = frame.header.request_id.get();
    let request: CommitOffsetsRequest = match decode(frame.meta()) {
        Ok(request) => request,
        Err(why) => return undecodable(Api::CommitOffsets, request_id, why),
    };
    let group = request.group;
    let mut offsets = Vec::with_capacity(request.offsets.len());
    for (topic, partition, offset) in request.offsets {
        // Refused whole, naming the first bad entry: the native answer has no per-partition
        // codes, and a commit must never be acknowledged for something it did not store.
        let (Ok(index), Ok(offset)) = (i32::try_from(partition), i64::try_from(offset)) else {
            let why = format!("offset {offset} for {topic}-{partition} is out of range");
            return answer(
                Api::CommitOffsets,
                request_id,
                &refused(ErrorCode::InvalidRequest, why),
            );
        };
        if !shard.has_partition(&topic, PartitionId(partition)) {
            let why = format!("no partition {topic}-{partition}");
            return answer(Api::CommitOffsets, request_id, &refused(ErrorCode::UnknownTopic, why));
        }
        offsets.push(OffsetCommit {
            topic,
            partition: index,
            offset,
            leader_epoch: -1,
            metadata: String::new(),
        });
    }
    let call = CommitOffsets {
        group: group.clone(),
        member_id: request.member_id,
        instance_id: None,
        generation: request.generation,
        offsets,
    };
    let result = shard.group(&group, call).await.and_then(|r| r);
    answer(Api::CommitOffsets, request_id, &done(result))
}

pub async fn delete(shard: &Rc<Shard>, frame: &RequestFrame) -> Response {
    let request_id = frame.header.request_id.get();
    let request: DeleteGroupRequest = match decode(frame.meta()) {
        Ok(request) => request,
        Err(why) => return undecodable(Api::DeleteGroup, request_id, why),
    };
    let group = request.group;
    let result = shard.group(&group, DeleteGroup { group: group.clone() }).await.and_then(|r| r);
    answer(Api::DeleteGroup, request_id, &done(result))
}

pub async fn delete_offsets(shard: &Rc<Shard>, frame: &RequestFrame) -> Response {
    let request_id = frame.header.request_id.get();
    let request: DeleteOffsetsRequest = match decode(frame.meta()) {
        Ok(request) => request,
        Err(why) => return undecodable(Api::DeleteOffsets, request_id, why),
    };
    let DeleteOffsetsRequest { group, partitions } = request;
    let call = DeleteOffsets { group: group.clone(), partitions };
    let body = match shard.group(&group, call).await.and_then(|r| r) {
        Ok(results) => DeleteOffsetsResponse {
            error: ErrorBody::none(),
            partitions: (results.into_iter())
                .map(|(topic, partition, result)| {
                    (topic, partition, result.err().map_or_else(ErrorBody::none, error_body))
                })
                .collect(),
        },
        Err(kind) => DeleteOffsetsResponse { error: error_body(kind), partitions: Vec::new() },
    };
    answer(Api::DeleteOffsets, request_id, &body)
}

pub async fn fetch_offsets(shard: &Rc<Shard>, frame: &RequestFrame) -> Response {
    let request_id = frame.header.request_id.get();
    let request: FetchOffsetsRequest = match decode(frame.meta()) {
        Ok(request) => request,
        Err(why) => return undecodable(Api::FetchOffsets, request_id, why),
    };
    let group = request.group;
    let mut by_topic: Vec<(String, Vec<i32>)> = Vec::new();
    for (topic, partition) in request.partitions {
        let Ok(partition) = i32::try_from(partition) else {
            let why = format!("partition {topic}-{partition} is out of range");
            let body = FetchOffsetsResponse {
                error: ErrorBody::new(ErrorCode::InvalidRequest, why),
                offsets: Vec::new(),
            };
            return answer(Api::FetchOffsets, request_id, &body);
        };
        match by_topic.iter_mut().find(|(t, _)| *t == topic) {
            Some((_, partitions)) => partitions.push(partition),
            None => by_topic.push((topic, vec![partition])),
        }
    }
    let call = FetchOffsets { group: group.clone(), topics: Some(by_topic) };
    let body = match shard.group(&group, call).await {
        Ok(found) => FetchOffsetsResponse {
            error: ErrorBody::none(),
            offsets: found
                .into_iter()
                .filter_map(|(topic, partition, committed)| {
                    // Every partition asked for fit in an i32 and came back as asked.
                    let partition = u32::try_from(partition).ok()?;
                    Some((topic, partition, committed.map_or(-1, |c| c.offset)))
                })
                .collect(),
        },
        Err(e) => FetchOffsetsResponse { error: error_body(e), offsets: Vec::new() },
    };
    answer(Api::FetchOffsets, request_id, &body)
}
