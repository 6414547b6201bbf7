//! A follower's fetch from its leader (`ReplicaFetch`): many partitions per request, each
//! checked in its leader epoch and against the leader's epoch cache by the shard that owns it;
//! the entries go back as stored, one partition's after another in the frame's data.

use std::rc::Rc;
use std::time::Duration;

use crate::native::exchange::{answer_with, undecodable, RequestFrame, Response};
use crate::native::frame::Api;
use crate::native::messages::{
    decode, ErrorBody, ErrorCode, ReplicaFetchAnswer, ReplicaFetchRequest, ReplicaFetchResponse,
};
use crate::shard::replicas::{FetchLimits, FollowerFetch};
use crate::shard::{Shard, FETCH_BYTES_MAX, FETCH_WAIT_MS_MAX};
use crate::types::{LeaderEpoch, NodeId, Offset, PartitionId};

pub async fn replica_fetch(shard: &Rc<Shard>, frame: &RequestFrame) -> Response {
    let request_id = frame.header.request_id.get();
    let request: ReplicaFetchRequest = match decode(frame.meta()) {
        Ok(request) => request,
        Err(why) => return undecodable(Api::ReplicaFetch, request_id, why),
    };
    let limits = FetchLimits {
        partition_max_bytes: (request.partition_max_bytes as usize).clamp(1, FETCH_BYTES_MAX),
        max_bytes: (request.max_bytes as usize).clamp(1, FETCH_BYTES_MAX),
        max_wait: Duration::from_millis(u64::from(request.max_wait_ms.min(FETCH_WAIT_MS_MAX))),
    };
    let epoch = |e: i32| (e >= 0).then_some(LeaderEpoch(e));
    let partitions = (request.partitions.into_iter())
        .map(|p| FollowerFetch {
            topic: p.topic,
            partition: PartitionId(p.partition),
            epoch: LeaderEpoch(p.leader_epoch),
            fetch_offset: Offset(p.fetch_offset),
            synced: Offset(p.synced),
            last_fetched_epoch: epoch(p.last_fetched_epoch),
            known_high_watermark: Offset(p.known_high_watermark),
            log_start: Offset(p.log_start),
        })
        .collect();
    let answers = shard.replica_fetch(NodeId(request.follower), partitions, limits).await;
    let mut data = Vec::new();
    let mut body = ReplicaFetchResponse { error: ErrorBody::none(), partitions: Vec::new() };
    for answer in answers {
        let (topic, partition) = (answer.topic, answer.partition.0);
        let answered = match answer.result {
            Ok(fetched) => {
                let bytes = fetched.entries.iter().map(|e| e.len() as u64).sum();
                data.extend(fetched.entries);
                let (diverging_epoch, diverging_end_offset) =
                    fetched.diverging.map_or((-1, 0), |d| (d.epoch.0, d.end_offset.0));
                let error = match fetched.out_of_range {
                    false => ErrorBody::none(),
                    true => ErrorBody::new(
                        ErrorCode::OffsetOutOfRange,
                        format!(
                            "outside the leader's log [{}, {}]",
                            fetched.log_start, fetched.log_end
                        ),
                    ),
                };
                ReplicaFetchAnswer {
                    topic,
                    partition,
                    error,
                    high_watermark: fetched.high_watermark.0,
                    log_start: fetched.log_start.0,
                    log_end: fetched.log_end.0,
                    diverging_epoch,
                    diverging_end_offset,
                    bytes,
                }
            }
            Err(e) => ReplicaFetchAnswer {
                topic,
                partition,
                error: ErrorBody::from(&e),
                high_watermark: 0,
                log_start: 0,
                log_end: 0,
                diverging_epoch: -1,
                diverging_end_offset: 0,
                bytes: 0,
            },
        };
        body.partitions.push(answered);
    }
    answer_with(Api::ReplicaFetch, request_id, &body, data)
}
