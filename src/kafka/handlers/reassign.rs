//! Partition reassignment (KIP-455): AlterPartitionReassignments moves partitions to other
//! replicas (or cancels a move), ListPartitionReassignments shows the moves in progress. The
//! controller runs the moves (`cluster::decide`); this broker checks each partition against its
//! metadata first, so that one bad partition gets its own error rather than fail the others.

use std::collections::{BTreeMap, BTreeSet};
use std::rc::Rc;

use kafka_protocol::messages::alter_partition_reassignments_response::{
    ReassignablePartitionResponse, ReassignableTopicResponse,
};
use kafka_protocol::messages::list_partition_reassignments_response::{
    OngoingPartitionReassignment, OngoingTopicReassignment,
};
use kafka_protocol::messages::{
    AlterPartitionReassignmentsRequest, AlterPartitionReassignmentsResponse, BrokerId,
    ListPartitionReassignmentsRequest, ListPartitionReassignmentsResponse, TopicName,
};
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::ResponseError;

use crate::cluster::decide::Reassignment;
use crate::cluster::metadata::{MetadataImage, PartitionState};
use crate::kafka::handlers::kafka_error;
use crate::shard::Shard;
use crate::types::{NodeId, PartitionId};

/// A partition's outcome: accepted, or Kafka's code and why.
type Outcome = Result<(), (i16, String)>;

/// AlterPartitionReassignments v0-1. `allow_replication_factor_change` false (v1, KIP-860)
/// refuses a move to another number of replicas with INVALID_REPLICATION_FACTOR. The request's
/// timeout is not waited on: the answer comes once the controller has committed the moves.
pub async fn alter_partition_reassignments(
    shard: &Rc<Shard>,
    version: i16,
    request: AlterPartitionReassignmentsRequest,
) -> AlterPartitionReassignmentsResponse {
    let mut response = AlterPartitionReassignmentsResponse::default();
    let allow_factor_change = version < 1 || request.allow_replication_factor_change;
    response.allow_replication_factor_change = request.allow_replication_factor_change;
    let image = shard.metadata_image();
    let mut outcomes: Vec<(String, i32, Outcome)> = Vec::new();
    let mut moves: Vec<(usize, Reassignment)> = Vec::new();
    let mut named = BTreeSet::new();
    for topic in request.topics {
        let name = topic.name.0.to_string();
        for partition in topic.partitions {
            let index = partition.partition_index;
            let target = partition.replicas.map(|r| r.iter().map(|b| NodeId(b.0)).collect());
            let checked = check_move(&image, &name, index, target.as_ref(), allow_factor_change)
                .and_then(|partition| match named.insert((name.clone(), partition)) {
                    true => Ok(partition),
                    false => Err((
                        ResponseError::InvalidRequest.code(),
                        format!("{name}-{index} is named twice"),
                    )),
                });
            match checked {
                Ok(partition) => {
                    let reassignment = Reassignment { topic: name.clone(), partition, target };
                    moves.push((outcomes.len(), reassignment));
                    outcomes.push((name.clone(), index, Ok(())));
                }
                Err(refused) => outcomes.push((name.clone(), index, Err(refused))),
            }
        }
    }
    if !moves.is_empty() {
        let (at, moves): (Vec<usize>, Vec<Reassignment>) = moves.into_iter().unzip();
        if let Err(e) = shard.reassign_partitions(moves).await {
            let (code, message) = kafka_error(&e);
            let why = message.map_or_else(String::new, |m| m.to_string());
            for i in at {
                outcomes[i].2 = Err((code, why.clone()));
            }
        }
    }
    let mut by_topic: BTreeMap<String, Vec<ReassignablePartitionResponse>> = BTreeMap::new();
    for (topic, index, outcome) in outcomes {
        let mut answer = ReassignablePartitionResponse::default();
        answer.partition_index = index;
        if let Err((code, why)) = outcome {
            answer.error_code = code;
            answer.error_message = Some(StrBytes::from_string(why));
        }
        by_topic.entry(topic).or_default().push(answer);
    }
    response.responses = by_topic
        .into_iter()
        .map(|(name, partitions)| {
            let mut topic = ReassignableTopicResponse::default();
            topic.name = TopicName(StrBytes::from_string(name));
            topic.partitions = partitions;
            topic
        })
        .collect();
    response
}

/// A move checked against this broker's metadata, as the controller checks it (which refuses
/// a request whole): the partition exists; a target names distinct registered brokers, one of
/// them live (and as many as the partition has, unless the replication factor may change); a
/// cancellation finds a move in progress; and some in-sync replica is kept.
fn check_move(
    image: &MetadataImage,
    topic: &str,
    index: i32,
    target: Option<&Vec<NodeId>>,
    allow_factor_change: bool,
) -> Result<PartitionId, (i16, String)> {
    let unknown = || {
        let why = format!("no partition {index} of topic {topic}");
        (ResponseError::UnknownTopicOrPartition.code(), why)
    };
    let partition = u32::try_from(index).map(PartitionId).map_err(|_| unknown())?;
    let state = image
        .topic_named(topic)
        .and_then(|(_, t)| t.partitions.get(&partition))
        .ok_or_else(unknown)?;
    let invalid = |why: String| (ResponseError::InvalidReplicaAssignment.code(), why);
    let original: Vec<NodeId> = state.original_replicas().collect();
    let kept = target.unwrap_or(&original);
    if !state.isr.iter().any(|r| kept.contains(r) || original.contains(r) && target.is_some()) {
        let why = format!("no in-sync replica of {:?} would be kept", state.isr);
        return Err(invalid(why));
    }
    match target {
        None if !state.is_reassigning() => Err((
            ResponseError::NoReassignmentInProgress.code(),
            format!("{topic}-{index} is not being reassigned"),
        )),
        None => Ok(partition),
        Some(target) => {
            let distinct: BTreeSet<&NodeId> = target.iter().collect();
            if target.is_empty() || distinct.len() != target.len() {
                return Err(invalid(format!("{target:?} are not distinct brokers")));
            }
            if let Some(unknown) = target.iter().find(|r| !image.brokers.contains_key(r)) {
                return Err(invalid(format!("broker {unknown} is not registered")));
            }
            if !target.iter().any(|r| image.is_live(r)) {
                return Err(invalid(format!("none of {target:?} is live to lead")));
            }
            let factor = state.original_replicas().count();
            if !allow_factor_change && target.len() != factor {
                return Err((
                    ResponseError::InvalidReplicationFactor.code(),
                    format!(
                        "{topic}-{index} has {factor} replicas, not {}, and the request does not \
                         allow a change of replication factor",
                        target.len()
                    ),
                ));
            }
            Ok(partition)
        }
    }
}

/// ListPartitionReassignments v0: the moves in progress, of the partitions named or of all.
pub fn list_partition_reassignments(
    shard: &Rc<Shard>,
    request: ListPartitionReassignmentsRequest,
) -> ListPartitionReassignmentsResponse {
    let image = shard.metadata_image();
    let mut by_topic: BTreeMap<String, Vec<OngoingPartitionReassignment>> = BTreeMap::new();
    let mut ongoing = |name: &str, index: u32, state: &PartitionState| {
        if !state.is_reassigning() {
            return;
        }
        let brokers = |nodes: &[NodeId]| nodes.iter().map(|n| BrokerId(n.0)).collect();
        let mut entry = OngoingPartitionReassignment::default();
        entry.partition_index = i32::try_from(index).unwrap_or(i32::MAX);
        entry.replicas = brokers(&state.replicas);
        entry.adding_replicas = brokers(&state.adding);
        entry.removing_replicas = brokers(&state.removing);
        by_topic.entry(name.to_string()).or_default().push(entry);
    };
    match request.topics {
        None => {
            for topic in image.topics.values() {
                for (partition, state) in &topic.partitions {
                    ongoing(&topic.name, partition.0, state);
                }
            }
        }
        // Partitions the metadata does not have are left out, as Kafka's controller does.
        Some(topics) => {
            for asked in topics {
                let Some((_, topic)) = image.topic_named(asked.name.0.as_str()) else { continue };
                for index in asked.partition_indexes {
                    let partition = u32::try_from(index).ok().map(PartitionId);
                    if let Some(state) = partition.and_then(|p| topic.partitions.get(&p)) {
                        ongoing(&topic.name, index as u32, state);
                    }
                }
            }
        }
    }
    let mut response = ListPartitionReassignmentsResponse::default();
    response.topics = by_topic
        .into_iter()
        .map(|(name, partitions)| {
            let mut topic = OngoingTopicReassignment::default();
            topic.name = TopicName(StrBytes::from_string(name));
            topic.partitions = partitions;
            topic
        })
        .collect();
    response
}
