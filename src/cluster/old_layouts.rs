//! The metadata layouts earlier builds wrote, kept so that this build reads their log entries
//! and snapshots: each is decoded in its own layout and converted to the current one. A layout
//! here never changes again; a new format version adds one.
//!
//! - Record versions 2 and 3: a partition's state without its reassignment and eligible leader
//!   replicas (version 4 added both; converted as none of either), a registration without the
//!   broker's `min.insync.replicas` default (converted as unset).
//! - Snapshot version 1: partition states and brokers as record version 3 has them.
//! - Snapshot version 2: the image without the brokers' dynamic settings (converted as none).
//!   Its brokers and topics are today's (`reads_version_2_snapshots` holds them to it): when
//!   either changes, this layout gets its own copy of the old one.

use std::ops::RangeInclusive;

use rkyv::{Archive, Deserialize, Serialize};

use super::metadata::{
    BrokerInfo, ClusterId, Endpoints, ImageSnapshot, MetadataRecord, PartitionState, Registration,
    TopicId, TopicSnapshot,
};
use crate::record::archive;
use crate::types::{LeaderEpoch, NodeId, PartitionId};

/// `MetadataRecord` as record versions 2 and 3 lay it out: the same variants in the same order.
#[derive(Archive, Serialize, Deserialize)]
enum MetadataRecordV3 {
    ClusterFormed { cluster_id: ClusterId },
    RegisterBroker { broker_epoch: u64, registration: RegistrationV3 },
    FenceBroker { node: NodeId, broker_epoch: u64, shutdown: bool },
    UnfenceBroker { node: NodeId, broker_epoch: u64 },
    CreateTopic { name: String, id: TopicId, config: Vec<(String, String)> },
    PartitionState { topic: TopicId, partition: PartitionId, state: PartitionStateV3 },
    DeleteTopic { id: TopicId },
    ProducerIds { node: NodeId, broker_epoch: u64, next_producer_id: i64 },
}

#[derive(Archive, Serialize, Deserialize)]
struct RegistrationV3 {
    node: NodeId,
    incarnation: u64,
    directory: u128,
    rack: Option<String>,
    endpoints: Endpoints,
    protocol_version: u16,
}

impl From<RegistrationV3> for Registration {
    fn from(old: RegistrationV3) -> Self {
        let RegistrationV3 { node, incarnation, directory, rack, endpoints, protocol_version } =
            old;
        let min_insync_replicas = None;
        Self {
            node,
            incarnation,
            directory,
            rack,
            endpoints,
            protocol_version,
            min_insync_replicas,
        }
    }
}

#[derive(Archive, Serialize, Deserialize)]
struct BrokerInfoV1 {
    broker_epoch: u64,
    incarnation: u64,
    directory: u128,
    rack: Option<String>,
    endpoints: Endpoints,
    protocol_version: u16,
    fenced: bool,
    shut_down: bool,
}

impl From<BrokerInfoV1> for BrokerInfo {
    fn from(old: BrokerInfoV1) -> Self {
        let BrokerInfoV1 {
            broker_epoch,
            incarnation,
            directory,
            rack,
            endpoints,
            protocol_version,
            fenced,
            shut_down,
        } = old;
        Self {
            broker_epoch,
            incarnation,
            directory,
            rack,
            endpoints,
            protocol_version,
            min_insync_replicas: None,
            fenced,
            shut_down,
        }
    }
}

#[derive(Archive, Serialize, Deserialize)]
struct PartitionStateV3 {
    replicas: Vec<NodeId>,
    isr: Vec<NodeId>,
    leader: Option<NodeId>,
    leader_epoch: LeaderEpoch,
    partition_epoch: u32,
}

impl From<PartitionStateV3> for PartitionState {
    fn from(old: PartitionStateV3) -> Self {
        let PartitionStateV3 { replicas, isr, leader, leader_epoch, partition_epoch } = old;
        Self { replicas, isr, leader, leader_epoch, partition_epoch, ..Self::default() }
    }
}

impl From<MetadataRecordV3> for MetadataRecord {
    fn from(old: MetadataRecordV3) -> Self {
        match old {
            MetadataRecordV3::ClusterFormed { cluster_id } => Self::ClusterFormed { cluster_id },
            MetadataRecordV3::RegisterBroker { broker_epoch, registration } => {
                Self::RegisterBroker { broker_epoch, registration: registration.into() }
            }
            MetadataRecordV3::FenceBroker { node, broker_epoch, shutdown } => {
                Self::FenceBroker { node, broker_epoch, shutdown }
            }
            MetadataRecordV3::UnfenceBroker { node, broker_epoch } => {
                Self::UnfenceBroker { node, broker_epoch }
            }
            MetadataRecordV3::CreateTopic { name, id, config } => {
                Self::CreateTopic { name, id, config }
            }
            MetadataRecordV3::PartitionState { topic, partition, state } => {
                Self::PartitionState { topic, partition, state: state.into() }
            }
            MetadataRecordV3::DeleteTopic { id } => Self::DeleteTopic { id },
            MetadataRecordV3::ProducerIds { node, broker_epoch, next_producer_id } => {
                Self::ProducerIds { node, broker_epoch, next_producer_id }
            }
        }
    }
}

/// A log entry of record version 2 or 3, in the current layout.
pub(super) fn decode_batch(
    bytes: &[u8],
    versions: RangeInclusive<u8>,
    what: &str,
) -> Result<Vec<MetadataRecord>, String> {
    let old: Vec<MetadataRecordV3> = archive::decode_versioned(bytes, versions, what)?;
    Ok(old.into_iter().map(MetadataRecord::from).collect())
}

#[derive(Archive, Serialize, Deserialize)]
struct ImageSnapshotV1 {
    cluster_id: Option<ClusterId>,
    brokers: Vec<(NodeId, BrokerInfoV1)>,
    topics: Vec<TopicSnapshotV1>,
    last_broker_epoch: u64,
    next_producer_id: i64,
}

#[derive(Archive, Serialize, Deserialize)]
struct TopicSnapshotV1 {
    id: TopicId,
    name: String,
    config: Vec<(String, String)>,
    partitions: Vec<(PartitionId, PartitionStateV3)>,
}

#[derive(Archive, Serialize, Deserialize)]
struct ImageSnapshotV2 {
    cluster_id: Option<ClusterId>,
    brokers: Vec<(NodeId, BrokerInfo)>,
    topics: Vec<TopicSnapshot>,
    last_broker_epoch: u64,
    next_producer_id: i64,
}

/// An image without dynamic broker settings, written as snapshot version 2 (which it is).
pub(super) fn encode_snapshot_v2(snapshot: ImageSnapshot) -> Vec<u8> {
    let ImageSnapshot { cluster_id, brokers, topics, last_broker_epoch, next_producer_id, .. } =
        snapshot;
    let old = ImageSnapshotV2 { cluster_id, brokers, topics, last_broker_epoch, next_producer_id };
    archive::encode_versioned(2, &old)
}

/// A snapshot of version 1 or 2, in the current layout (its checks are the caller's).
pub(super) fn decode_snapshot(
    bytes: &[u8],
    versions: RangeInclusive<u8>,
) -> Result<ImageSnapshot, String> {
    let what = "metadata snapshot";
    if bytes.first() == Some(&2) {
        let old: ImageSnapshotV2 = archive::decode_versioned(bytes, versions, what)?;
        let ImageSnapshotV2 { cluster_id, brokers, topics, last_broker_epoch, next_producer_id } =
            old;
        let broker_configs = Vec::new();
        return Ok(ImageSnapshot {
            cluster_id,
            brokers,
            topics,
            last_broker_epoch,
            next_producer_id,
            broker_configs,
        });
    }
    let old: ImageSnapshotV1 = archive::decode_versioned(bytes, versions, what)?;
    let topics = old.topics.into_iter().map(|topic| TopicSnapshot {
        id: topic.id,
        name: topic.name,
        config: topic.config,
        partitions: topic.partitions.into_iter().map(|(p, state)| (p, state.into())).collect(),
    });
    Ok(ImageSnapshot {
        cluster_id: old.cluster_id,
        brokers: old.brokers.into_iter().map(|(node, info)| (node, info.into())).collect(),
        topics: topics.collect(),
        last_broker_epoch: old.last_broker_epoch,
        next_producer_id: old.next_producer_id,
        broker_configs: Vec::new(),
    })
}
