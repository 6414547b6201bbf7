//! Topic administration (CreateTopics, DeleteTopics, CreatePartitions, ElectLeaders) and
//! InitProducerId.

use std::collections::BTreeMap;
use std::rc::Rc;

use kafka_protocol::messages::create_partitions_response::CreatePartitionsTopicResult;
use kafka_protocol::messages::create_topics_request::CreatableTopic;
use kafka_protocol::messages::create_topics_response::{
    CreatableTopicConfigs, CreatableTopicResult,
};
use kafka_protocol::messages::delete_topics_response::DeletableTopicResult;
use kafka_protocol::messages::elect_leaders_response::{PartitionResult, ReplicaElectionResult};
use kafka_protocol::messages::{
    CreatePartitionsRequest, CreatePartitionsResponse, CreateTopicsRequest, CreateTopicsResponse,
    DeleteTopicsRequest, DeleteTopicsResponse, ElectLeadersRequest, ElectLeadersResponse,
    InitProducerIdRequest, InitProducerIdResponse, ProducerId, TopicName,
};
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::ResponseError;

use crate::cluster::decide::Election;
use crate::cluster::metadata::{MetadataImage, PartitionState};
use crate::error::BrokerError;
use crate::error::ErrorKind;
use crate::kafka::codec;
use crate::kafka::handlers::{configs, has_field, kafka_error};
use crate::shard::catalog::TopicInfo;
use crate::shard::{Shard, TopicRequest};
use crate::types::{NodeId, PartitionId};

/// Kafka's INVALID_REPLICATION_FACTOR and INVALID_REPLICA_ASSIGNMENT: one node holds one copy.
const INVALID_REPLICATION_FACTOR: i16 = ResponseError::InvalidReplicationFactor.code();
const INVALID_REPLICA_ASSIGNMENT: i16 = ResponseError::InvalidReplicaAssignment.code();

pub async fn create_topics(
    shard: &Rc<Shard>,
    version: i16,
    request: CreateTopicsRequest,
) -> CreateTopicsResponse {
    let mut response = CreateTopicsResponse::default();
    for topic in request.topics {
        let mut result = CreatableTopicResult::default();
        result.name = topic.name.clone();
        match create_one(shard, &topic, request.validate_only).await {
            Ok((info, replication_factor)) if has_field(version, 5) => {
                result.num_partitions = info.partitions as i32;
                result.replication_factor = replication_factor as i16;
                result.configs = Some(
                    (configs::describe_topic(shard, &info).into_iter())
                        .map(|setting| {
                            let mut config = CreatableTopicConfigs::default();
                            config.config_source = setting.source;
                            config.name = StrBytes::from_string(setting.name);
                            config.value = Some(StrBytes::from_string(setting.value));
                            config
                        })
                        .collect(),
                );
            }
            Ok(_) => {}
            Err((code, message)) => {
                result.error_code = code;
                result.error_message = Some(StrBytes::from_string(message));
            }
        }
        response.topics.push(result);
    }
    response
}

/// One topic of a CreateTopics: (the topic as created, its replication factor).
async fn create_one(
    shard: &Rc<Shard>,
    topic: &CreatableTopic,
    validate_only: bool,
) -> Result<(TopicInfo, u16), (i16, String)> {
    let name = topic.name.0.to_string();
    let invalid_request = ResponseError::InvalidRequest.code();
    let (partitions, replication_factor, assignment) = if topic.assignments.is_empty() {
        let partitions = match topic.num_partitions {
            -1 => shard.config.num_partitions,
            n => u32::try_from(n).unwrap_or(0),
        };
        let replication_factor = match topic.replication_factor {
            -1 => None,
            n => match u16::try_from(n) {
                Ok(n) if n > 0 => Some(n),
                _ => {
                    let why = format!("replication factor {n}: at least 1, or -1 for the default");
                    return Err((INVALID_REPLICATION_FACTOR, why));
                }
            },
        };
        (partitions, replication_factor, None)
    } else {
        // As Kafka: an assignment says both, so neither count may be given beside it.
        if topic.num_partitions != -1 || topic.replication_factor != -1 {
            let why = "with a replica assignment, num_partitions and replication_factor must be -1";
            return Err((invalid_request, why.to_string()));
        }
        let mut lists: Vec<(i32, Vec<NodeId>)> = topic
            .assignments
            .iter()
            .map(|a| (a.partition_index, a.broker_ids.iter().map(|b| NodeId(b.0)).collect()))
            .collect();
        lists.sort_by_key(|(index, _)| *index);
        if lists.iter().enumerate().any(|(i, (index, _))| usize::try_from(*index) != Ok(i)) {
            let why = "the assignment must list partitions 0, 1, 2, ... once each";
            return Err((INVALID_REPLICA_ASSIGNMENT, why.to_string()));
        }
        let assignment: Vec<Vec<NodeId>> = lists.into_iter().map(|(_, list)| list).collect();
        let replication_factor = assignment.first().map(|l| l.len() as u16);
        (assignment.len() as u32, replication_factor, Some(assignment))
    };
    let overrides: BTreeMap<String, String> = topic
        .configs
        .iter()
        .filter_map(|c| Some((c.name.to_string(), c.value.as_ref()?.to_string())))
        .collect();
    let request =
        TopicRequest { name: name.clone(), partitions, replication_factor, assignment, overrides };
    let refused = |e: BrokerError| (codec::error_code(e.kind), e.message);
    if validate_only {
        let info = shard.check_new_topic(&request).await.map_err(refused)?;
        let replication_factor =
            replication_factor.unwrap_or(shard.config.default_replication_factor);
        let live = shard.metadata_image().live_brokers().count();
        if usize::from(replication_factor) > live {
            let why = format!("replication factor {replication_factor} with {live} live brokers");
            return Err((INVALID_REPLICATION_FACTOR, why));
        }
        return Ok((info, replication_factor));
    }
    let checked = shard.create_topic(request).await.map_err(refused)?;
    // Created; as published here, or (this broker slow to learn it) as it was asked for.
    let info = shard.topic(&name).unwrap_or(checked);
    let image = shard.metadata_image();
    let first = image.topic_named(&name).and_then(|(_, t)| t.partitions.get(&PartitionId(0)));
    let replicas = first.map_or(1, |state| state.replicas.len());
    Ok((info, u16::try_from(replicas).unwrap_or(u16::MAX)))
}

pub async fn delete_topics(
    shard: &Rc<Shard>,
    version: i16,
    request: DeleteTopicsRequest,
) -> DeleteTopicsResponse {
    let mut response = DeleteTopicsResponse::default();
    let names =
        request.topic_names.into_iter().chain(request.topics.into_iter().filter_map(|t| t.name));
    for name in names {
        let mut result = DeletableTopicResult::default();
        if let Err(e) = shard.delete_topic(name.0.as_str()).await {
            let (code, message) = kafka_error(&e);
            result.error_code = code;
            if has_field(version, 5) {
                result.error_message = message;
            }
        }
        result.name = Some(name);
        response.responses.push(result);
    }
    response
}

/// One partition's election: done, or Kafka's error code and why.
type ElectionResult = Result<(), (i16, String)>;

/// ElectLeaders (KIP-460): the active controller elects what it can, and each partition's result
/// is read from the metadata before and after: ELECTION_NOT_NEEDED where the election would
/// change nothing (the preferred replica leads; for an unclean election, a leader exists),
/// PREFERRED_LEADER_NOT_AVAILABLE or ELIGIBLE_LEADERS_NOT_AVAILABLE where it could not be held.
/// Null partitions asks for every partition, and answers only those it needed to elect, as
/// Kafka's controller does.
pub async fn elect_leaders(
    shard: &Rc<Shard>,
    version: i16,
    request: ElectLeadersRequest,
) -> ElectLeadersResponse {
    let mut response = ElectLeadersResponse::default();
    let election = match (version, request.election_type) {
        (0, _) | (_, 0) => Election::Preferred,
        (_, 1) => Election::Unclean,
        (_, other) => {
            tracing::info!(election_type = other, "refused an ElectLeaders of an unknown type");
            response.error_code = ResponseError::InvalidRequest.code();
            return response;
        }
    };
    let before = shard.metadata_image();
    let every = request.topic_partitions.is_none();
    // Each partition once, as Kafka's handler takes them (a set).
    let asked: std::collections::BTreeSet<(String, i32)> = match request.topic_partitions {
        Some(topics) => (topics.into_iter())
            .flat_map(|t| {
                let name = t.topic.0.to_string();
                t.partitions.into_iter().map(move |p| (name.clone(), p))
            })
            .collect(),
        None => (before.partitions())
            .filter_map(|(id, partition, _)| {
                let name = before.topics.get(&id)?.name.clone();
                Some((name, i32::try_from(partition.0).ok()?))
            })
            .collect(),
    };
    let state_of = |image: &MetadataImage, topic: &str, partition: PartitionId| {
        image.topic_named(topic)?.1.partitions.get(&partition).cloned()
    };
    let elected = |state: &PartitionState| match election {
        Election::Preferred => {
            state.leader.is_some() && state.leader == state.replicas.first().copied()
        }
        Election::Unclean => state.leader.is_some(),
    };
    let mut results: Vec<(String, i32, ElectionResult)> = Vec::new();
    let mut to_elect = Vec::new();
    for (topic, index) in asked {
        let partition = u32::try_from(index).ok().map(PartitionId);
        match partition.and_then(|p| Some((p, state_of(&before, &topic, p)?))) {
            None => {
                let why = format!("no partition {index} of topic {topic}");
                let code = ResponseError::UnknownTopicOrPartition.code();
                results.push((topic, index, Err((code, why))));
            }
            Some((_, state)) if elected(&state) => {
                if !every {
                    let why = "the election would change nothing".to_string();
                    let code = ResponseError::ElectionNotNeeded.code();
                    results.push((topic, index, Err((code, why))));
                }
            }
            Some((partition, _)) => to_elect.push((topic, partition, index)),
        }
    }
    if !to_elect.is_empty() {
        let named = to_elect.iter().map(|(topic, partition, _)| (topic.clone(), *partition));
        let outcome = shard.elect_leaders(election, Some(named.collect())).await;
        let after = shard.metadata_image();
        for (topic, partition, index) in to_elect {
            let result = match (&outcome, state_of(&after, &topic, partition)) {
                (Err(e), _) => Err((codec::error_code(e.kind), e.message.clone())),
                (Ok(()), Some(state)) if elected(&state) => Ok(()),
                (Ok(()), _) => Err(match election {
                    Election::Preferred => (
                        ResponseError::PreferredLeaderNotAvailable.code(),
                        "the preferred replica is not live and in sync".to_string(),
                    ),
                    Election::Unclean => (
                        ResponseError::EligibleLeadersNotAvailable.code(),
                        "no replica is live".to_string(),
                    ),
                }),
            };
            results.push((topic, index, result));
        }
    }
    let mut by_topic: BTreeMap<String, Vec<PartitionResult>> = BTreeMap::new();
    for (topic, partition, result) in results {
        let mut answer = PartitionResult::default();
        answer.partition_id = partition;
        if let Err((code, why)) = result {
            answer.error_code = code;
            answer.error_message = Some(StrBytes::from_string(why));
        }
        by_topic.entry(topic).or_default().push(answer);
    }
    response.replica_election_results = by_topic
        .into_iter()
        .map(|(topic, partition_result)| {
            let mut result = ReplicaElectionResult::default();
            result.topic = TopicName(StrBytes::from_string(topic));
            result.partition_result = partition_result;
            result
        })
        .collect();
    response
}

pub async fn create_partitions(
    shard: &Rc<Shard>,
    request: CreatePartitionsRequest,
) -> CreatePartitionsResponse {
    let mut response = CreatePartitionsResponse::default();
    for topic in request.topics {
        let mut result = CreatePartitionsTopicResult::default();
        let outcome = match u32::try_from(topic.count) {
            Err(_) => Err(BrokerError::new(ErrorKind::InvalidPartitions, "a negative count")),
            Ok(count) if request.validate_only => match shard.topic(topic.name.0.as_str()) {
                Some(info) if count > info.partitions => Ok(()),
                Some(info) => Err(BrokerError::new(
                    ErrorKind::InvalidPartitions,
                    format!("topic has {} partitions already", info.partitions),
                )),
                None => Err(BrokerError::new(ErrorKind::UnknownTopic, "no such topic")),
            },
            Ok(count) => {
                // Null or empty: placed by the controller.
                let listed = topic.assignments.as_ref().filter(|lists| !lists.is_empty());
                let assignment = listed.map(|lists| {
                    lists
                        .iter()
                        .map(|a| a.broker_ids.iter().map(|b| NodeId(b.0)).collect())
                        .collect()
                });
                shard.add_partitions(topic.name.0.as_str(), count, assignment).await
            }
        };
        if let Err(e) = outcome {
            (result.error_code, result.error_message) = kafka_error(&e);
        }
        result.name = topic.name;
        response.results.push(result);
    }
    response
}

/// Hands out a producer id with epoch 0, or bumps the epoch of the id the producer already has
/// (KIP-360), which fences its older instances.
pub async fn init_producer_id(
    shard: &Rc<Shard>,
    request: InitProducerIdRequest,
) -> InitProducerIdResponse {
    let mut response = InitProducerIdResponse::default();
    if let Some(id) = request.transactional_id.as_ref().filter(|id| !id.0.is_empty()) {
        tracing::info!(
            transactional_id = %id.0,
            "refused InitProducerId: {}",
            crate::kafka::handlers::groups::TRANSACTIONS_NOT_SUPPORTED
        );
        response.error_code = crate::kafka::codec::TRANSACTIONS_REFUSED;
        response.producer_id = ProducerId(-1);
        response.producer_epoch = -1;
        return response;
    }
    if request.producer_id.0 >= 0
        && request.producer_epoch >= 0
        && request.producer_epoch < i16::MAX
    {
        response.producer_id = request.producer_id;
        response.producer_epoch = request.producer_epoch + 1;
    } else {
        match shard.next_producer_id().await {
            Ok(id) => {
                response.producer_id = ProducerId(id);
                response.producer_epoch = 0;
            }
            Err(e) => {
                // Retriable: the client asks again (this broker not registered yet, or no
                // controller elected for the moment).
                tracing::debug!("InitProducerId: {e}");
                response.error_code = crate::kafka::codec::error_code(e.kind);
                response.producer_id = ProducerId(-1);
                response.producer_epoch = -1;
            }
        }
    }
    response
}
