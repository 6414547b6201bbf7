//! Metadata: this broker, and the topics asked for (creating them when allowed). DescribeCluster:
//! the cluster's members.
//!
//! Every partition is led by this broker; with one node the replica and in-sync lists are just
//! it. The advertised address is `advertised.listeners` when set, else the address the client
//! connected to, which it can reach by definition.

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

use crate::error::ErrorKind;
use crate::kafka::codec;
use crate::kafka::handlers::Connection;
use crate::kafka::handlers::{has_field, kafka_error};
use crate::record::pending::LEADER_EPOCH;
use crate::shard::Shard;

pub async fn metadata(
    shard: &Rc<Shard>,
    connection: &Connection,
    version: i16,
    request: MetadataRequest,
) -> MetadataResponse {
    let node = BrokerId(shard.config.node_id.0);
    let mut response = MetadataResponse::default();
    let (host, port) = advertised(shard, connection);
    let mut broker = MetadataResponseBroker::default();
    broker.node_id = node;
    broker.host = StrBytes::from_string(host);
    broker.port = i32::from(port);
    response.brokers.push(broker);
    if has_field(version, 2) {
        // Null until the cluster is formed (the first moments of a new one), as Kafka's nullable
        // field allows; clients compare it between brokers.
        let cluster_id = shard.cluster_id.get().map(|id| StrBytes::from_string(id.to_string()));
        response.cluster_id = cluster_id;
    }
    if has_field(version, 1) {
        response.controller_id = node;
    }
    // v0 has no null list: an empty one means every topic. From v1, null is every topic and
    // empty is none. Auto-creation is implied before v4, where the flag appeared.
    let names: Vec<String> = match request.topics {
        Some(topics) if !(version == 0 && topics.is_empty()) => {
            topics.into_iter().filter_map(|t| t.name).map(|n| n.0.to_string()).collect()
        }
        _ => shard.topics().into_iter().map(|(name, _)| name).collect(),
    };
    let may_create = version < 4 || request.allow_auto_topic_creation;
    for name in names {
        let mut topic = MetadataResponseTopic::default();
        topic.name = Some(TopicName(StrBytes::from_string(name.clone())));
        if has_field(version, 1) {
            topic.is_internal = name == crate::group::offsets::OFFSETS_TOPIC;
        }
        let info = if may_create {
            shard.topic_or_create(&name).await
        } else {
            shard.topic(&name).ok_or_else(|| {
                crate::error::BrokerError::new(
                    crate::error::ErrorKind::UnknownTopic,
                    format!("no topic {name}"),
                )
            })
        };
        match info {
            Ok(info) => {
                for index in 0..info.partitions as i32 {
                    let mut partition = MetadataResponsePartition::default();
                    partition.partition_index = index;
                    partition.leader_id = node;
                    if has_field(version, 7) {
                        partition.leader_epoch = LEADER_EPOCH.0;
                    }
                    partition.replica_nodes = vec![node];
                    partition.isr_nodes = vec![node];
                    topic.partitions.push(partition);
                }
            }
            Err(e) => topic.error_code = kafka_error(&e).0,
        }
        response.topics.push(topic);
    }
    response
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
