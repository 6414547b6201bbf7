//! Metadata: the cluster's live brokers and, for the topics asked for (created when allowed),
//! every partition's leader, leader epoch, replicas, in-sync and offline replicas, as this
//! broker's published metadata has them (the same on every broker once it has caught up).
//! DescribeCluster: the cluster's members.
//!
//! This broker is listed at its `advertised.listeners` address when set, else at the address
//! the client connected to, which it can reach by definition; the others at the address they
//! registered.

use std::rc::Rc;

use kafka_protocol::messages::describe_cluster_response::DescribeClusterBroker;
use kafka_protocol::messages::metadata_response::{
    MetadataResponseBroker, MetadataResponsePartition, MetadataResponseTopic,
};
use kafka_protocol::messages::{
    BrokerId, DescribeClusterRequest, DescribeClusterResponse, MetadataRequest, MetadataResponse,
    TopicName,
};
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::ResponseError;

use crate::cluster::metadata::{MetadataImage, PartitionState, TopicId};
use crate::error::{BrokerError, ErrorKind};
use crate::group::offsets::OFFSETS_TOPIC;
use crate::kafka::codec;
use crate::kafka::handlers::Connection;
use crate::kafka::handlers::{has_field, kafka_error};
use crate::shard::Shard;
use crate::types::{NodeId, PartitionId};

pub async fn metadata(
    shard: &Rc<Shard>,
    connection: &Connection,
    version: i16,
    request: MetadataRequest,
) -> MetadataResponse {
    let mut response = MetadataResponse::default();
    // v0 has no null list: an empty one means every topic. From v1, null is every topic and
    // empty is none. Auto-creation is implied before v4, where the flag appeared. From v12 a
    // topic may be asked for by id alone (v10 and v11 carry the field, but Kafka answers it
    // only from v12).
    let asked: Option<Vec<Result<String, uuid::Uuid>>> = match request.topics {
        Some(topics) if !(version == 0 && topics.is_empty()) => Some(
            topics.into_iter().map(|t| t.name.map(|n| n.0.to_string()).ok_or(t.topic_id)).collect(),
        ),
        _ => None,
    };
    let may_create = version < 4 || request.allow_auto_topic_creation;
    let mut created: Vec<(String, Result<(), BrokerError>)> = Vec::new();
    if let Some(asked) = &asked {
        for name in asked.iter().filter_map(|a| a.as_ref().ok()) {
            if may_create && !shard.has_topic(name) {
                created.push((name.clone(), shard.topic_or_create(name).await.map(|_| ())));
            }
        }
    }
    // Taken after any creation, so the answer holds what was just created.
    let image = shard.metadata_image();
    let me = shard.config.node_id;
    response.brokers = brokers(shard, connection, &image);
    if has_field(version, 2) {
        // Null until the cluster is formed (the first moments of a new one), as Kafka's nullable
        // field allows; clients compare it between brokers.
        let cluster_id = shard.cluster_id.get().map(|id| StrBytes::from_string(id.to_string()));
        response.cluster_id = cluster_id;
    }
    if has_field(version, 1) {
        // As a KRaft broker answers: a live broker, here this one. Admin clients send topic
        // changes to the "controller" they are told of, and every broker forwards them to the
        // active controller (KIP-590), which clients never reach (DescribeCluster names it).
        response.controller_id = BrokerId(me.0);
    }
    let asked = asked.unwrap_or_else(|| shard.topics().into_iter().map(|(n, _)| Ok(n)).collect());
    for wanted in asked {
        let name = match wanted {
            Ok(name) => name,
            Err(id) if !has_field(version, 12) => {
                let mut topic = MetadataResponseTopic::default();
                topic.topic_id = id;
                topic.error_code = ResponseError::InvalidRequest.code();
                response.topics.push(topic);
                continue;
            }
            Err(id) => match image.topics.get(&TopicId(id.as_u128())) {
                Some(topic) => topic.name.clone(),
                None => {
                    let mut topic = MetadataResponseTopic::default();
                    topic.topic_id = id;
                    topic.error_code = ResponseError::UnknownTopicId.code();
                    response.topics.push(topic);
                    continue;
                }
            },
        };
        let mut topic = MetadataResponseTopic::default();
        topic.name = Some(TopicName(StrBytes::from_string(name.clone())));
        if has_field(version, 1) {
            topic.is_internal = name == OFFSETS_TOPIC;
        }
        let creation = created.iter().find(|(n, _)| *n == name).map(|(_, r)| r);
        match (shard.topic(&name), creation) {
            (Some(info), _) => {
                if let (Some(id), true) = (info.id, has_field(version, 10)) {
                    topic.topic_id = uuid::Uuid::from_u128(id.0);
                }
                // Named only by a broker caught up with the cluster: another's image may be an
                // earlier prefix of the log.
                let states = image.topic_named(&name).map(|(_, t)| &t.partitions);
                let ready = shard.is_ready();
                for index in 0..info.partitions {
                    let state = states.and_then(|s| s.get(&PartitionId(index)));
                    let known = state.map(|state| (state, ready));
                    topic.partitions.push(partition(&image, known, index, me, version));
                }
            }
            (None, Some(Err(e))) => topic.error_code = kafka_error(e).0,
            (None, _) => topic.error_code = codec::error_code(ErrorKind::UnknownTopic),
        }
        response.topics.push(topic);
    }
    response
}

/// The live brokers, this one at the address the client can reach it at.
fn brokers(
    shard: &Shard,
    connection: &Connection,
    image: &MetadataImage,
) -> Vec<MetadataResponseBroker> {
    let me = shard.config.node_id;
    let entry = |node: NodeId, (host, port): (String, u16), rack: Option<String>| {
        let mut broker = MetadataResponseBroker::default();
        broker.node_id = BrokerId(node.0);
        broker.host = StrBytes::from_string(host);
        broker.port = i32::from(port);
        broker.rack = rack.map(StrBytes::from_string);
        broker
    };
    let mut brokers: Vec<MetadataResponseBroker> = image
        .live_brokers()
        .map(|(node, info)| match *node == me {
            true => entry(me, advertised(shard, connection), info.rack.clone()),
            false => entry(*node, info.endpoints.kafka.clone(), info.rack.clone()),
        })
        .collect();
    // A broker fenced for the moment (or not yet registered) still names itself: the client
    // reached it, and its answers say where each partition's leader is.
    if !image.live_brokers().any(|(node, _)| *node == me) {
        brokers.push(entry(me, advertised(shard, connection), shard.config.rack.clone()));
    }
    brokers
}

/// One partition as the metadata has it: without a leader, LEADER_NOT_AVAILABLE (clients ask
/// again); replicas on fenced brokers listed as offline.
/// `known`: the partition's state in this broker's image, and whether the broker is caught up.
fn partition(
    image: &MetadataImage,
    known: Option<(&PartitionState, bool)>,
    index: u32,
    me: NodeId,
    version: i16,
) -> MetadataResponsePartition {
    let mut partition = MetadataResponsePartition::default();
    partition.partition_index = index as i32;
    let ids = |nodes: &[NodeId]| nodes.iter().map(|n| BrokerId(n.0)).collect::<Vec<_>>();
    match known {
        Some((state, true)) => {
            partition.leader_id = BrokerId(state.leader.map_or(-1, |l| l.0));
            if state.leader.is_none() {
                partition.error_code = ResponseError::LeaderNotAvailable.code();
            }
            if has_field(version, 7) {
                partition.leader_epoch = state.leader_epoch.0;
            }
            partition.replica_nodes = ids(&state.replicas);
            partition.isr_nodes = ids(&state.isr);
            if has_field(version, 5) {
                let offline: Vec<NodeId> =
                    state.replicas.iter().filter(|n| !image.is_live(n)).copied().collect();
                partition.offline_replicas = ids(&offline);
            }
        }
        // A broker that could not catch up (its wait for that ran out) names no leader: what it
        // holds may be an earlier prefix of the log. Clients ask again, or another broker.
        Some((state, false)) => {
            partition.error_code = ResponseError::LeaderNotAvailable.code();
            partition.leader_id = BrokerId(-1);
            partition.replica_nodes = ids(&state.replicas);
        }
        // A topic of this broker's disk not in the cluster's metadata yet (answered only when
        // the broker could not join in time): it holds the only replica, which leads nothing
        // until the topic is brought in.
        None => {
            partition.error_code = ResponseError::LeaderNotAvailable.code();
            partition.leader_id = BrokerId(-1);
            partition.replica_nodes = vec![BrokerId(me.0)];
            partition.isr_nodes = vec![BrokerId(me.0)];
        }
    }
    partition
}

/// Where clients should connect: the configured address, else the one this client used.
pub fn advertised(shard: &Shard, connection: &Connection) -> (String, u16) {
    if let Some((host, port)) = &shard.config.kafka_advertised {
        return (host.clone(), *port);
    }
    let local = connection.local.unwrap_or(shard.config.kafka_listener);
    (local.ip().to_string(), local.port())
}

/// DescribeCluster (KIP-700): the cluster's id, its active controller and its live brokers, as
/// this broker's copy of the metadata has them (the same on every broker once it has caught up).
pub async fn describe_cluster(
    shard: &Rc<Shard>,
    request: DescribeClusterRequest,
) -> DescribeClusterResponse {
    let mut response = DescribeClusterResponse::default();
    // Only brokers: Spate does not serve its controllers as a separate endpoint type (v1).
    response.endpoint_type = 1;
    if request.endpoint_type != 1 {
        response.error_code = codec::error_code(ErrorKind::UnsupportedApi);
        response.error_message = Some(StrBytes::from_static_str("only broker endpoints"));
        return response;
    }
    let status = match shard.describe_cluster().await {
        Ok(status) => status,
        Err(e) => {
            response.error_code = codec::error_code(e.kind);
            response.error_message = Some(StrBytes::from_string(e.message));
            return response;
        }
    };
    let Some(cluster_id) = status.cluster_id else {
        response.error_code = codec::error_code(ErrorKind::NotAvailable);
        response.error_message = Some(StrBytes::from_static_str("the cluster is not formed yet"));
        return response;
    };
    response.cluster_id = StrBytes::from_string(cluster_id.to_string());
    response.controller_id = BrokerId(status.leader.map_or(-1, |l| l.0));
    for broker in status.brokers.iter().filter(|b| !b.fenced) {
        let mut entry = DescribeClusterBroker::default();
        entry.broker_id = BrokerId(broker.node.0);
        entry.host = StrBytes::from_string(broker.endpoints.kafka.0.clone());
        entry.port = i32::from(broker.endpoints.kafka.1);
        entry.rack = broker.rack.clone().map(StrBytes::from_string);
        response.brokers.push(entry);
    }
    // Authorized operations are not computed (no ACLs): i32::MIN, as Kafka says "not asked".
    response.cluster_authorized_operations = i32::MIN;
    response
}
