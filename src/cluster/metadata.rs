//! The cluster metadata: the records the controller commits, and the image every broker builds
//! by applying them in order (KRaft's metadata log and `MetadataImage`).
//!
//! The records are the whole truth: brokers with their epochs, topics with their ids, and for
//! every partition its replicas, in-sync replicas, leader, leader epoch and partition epoch. One
//! decision of the controller is one batch of records, one entry of the log, applied whole or
//! not at all ([`MetadataImage::apply_batch`]): a change of leader in the middle of a topic's
//! creation cannot leave half a topic. A broker that has applied a prefix of the log has exactly
//! the image of that prefix, whatever it did before. A batch that would break an invariant (an
//! epoch going back, a leader outside its live in-sync set, a fenced broker sharing an in-sync
//! set, a leaderless partition with a live in-sync replica, a partition of an unknown topic) is
//! refused with the reason and leaves the image as it was: the log is input like any other, and
//! a bug in the controller must not turn into a panic on every broker.

use std::collections::BTreeMap;
use std::fmt;

use rkyv::{Archive, Deserialize, Serialize};

use super::old_layouts;
use crate::record::archive;
use crate::types::{LeaderEpoch, NodeId, PartitionId};

/// The format of a metadata log entry: its first byte. A build reads every version from
/// [`RECORD_VERSION_OLDEST`] on; one it does not read stops the voter or follower that meets it,
/// by number, never taken for damage.
/// - 1: an earlier layout, written only during development (refused by number, never misread).
/// - 2: registrations with their data directory and protocol version, the cluster id and
///   producer-id records.
/// - 3: a topic's creation carries its setting overrides. Version 2 entries never held a
///   topic, and read unchanged in the layout of version 3 (`reads_version_2_entries`).
/// - 4: a partition's state carries its reassignment (KIP-455's adding and removing replicas)
///   and its eligible leader replicas (KIP-966); a registration, the broker's
///   `min.insync.replicas` default. Versions 2 and 3 are read in their own layout and converted
///   (`old_layouts.rs`, `reads_version_3_entries`).
/// - 5: a topic's settings changed (`TopicConfigChanged`). Version 4 entries read unchanged in
///   the layout of version 5 (`reads_version_4_entries`).
/// - 6: the brokers' dynamic settings changed (`BrokerConfigChanged`). Versions 4 and 5 read
///   unchanged in its layout (`reads_version_5_entries`): a kind of record added last, smaller
///   than the largest, leaves the archived enum as it was.
const RECORD_VERSION: u8 = 6;
const RECORD_VERSION_OLDEST: u8 = 2;
/// The first version written in the current layout; older ones are converted.
const RECORD_VERSION_CURRENT_LAYOUT: u8 = 4;

/// The format of a metadata snapshot (an image whole, [`MetadataImage::encode_snapshot`]): its
/// first byte, refused by number when this build does not read it. 2: partition states and
/// brokers as record version 4 has them. 3: the brokers' dynamic settings besides. Versions 1
/// and 2 are read in their own layouts (`old_layouts.rs`), and an image without dynamic broker
/// settings is still written as version 2, which it is, so that a build of that version can
/// read it (a rollback) until one is set.
const SNAPSHOT_VERSION: u8 = 3;
const SNAPSHOT_VERSION_OLDEST: u8 = 1;

/// The version of what brokers of one cluster say to each other and write to its log (the
/// controller's requests, the metadata records, Raft messages). Every broker announces it when
/// it registers, and the controller refuses a broker that speaks one it does not: brokers of
/// different builds may share a cluster only while they speak the same version (a rolling
/// upgrade across a change of it is not supported yet).
/// 2: topics through the controller (its requests to create, grow and delete them, and their
/// answers; the cluster status with under-replicated partitions).
/// 3: metadata snapshots (Raft messages may carry one; the answer to a metadata fetch below
/// the voters' log start is one).
/// 4: leader elections asked of the controller (ElectLeaders, forwarded), besides the in-sync
/// changes leaders ask for (AlterPartition).
/// 5: partition reassignments asked of the controller; metadata record version 4 (partition
/// states with their reassignment and eligible leader replicas).
/// 6: topic settings changed through the controller (IncrementalAlterConfigs and AlterConfigs,
/// forwarded); metadata record version 5.
/// 7: the topic settings that shape stored batches (`compression.type` and its levels,
/// `message.timestamp.type`, KIP-937's limits): a broker of 6 would not resolve them, and would
/// store what it leads otherwise.
/// 8: dynamic broker settings (IncrementalAlterConfigs and AlterConfigs of a broker resource,
/// forwarded); metadata record version 6. A broker of 7 would resolve topics against its
/// static defaults alone.
/// 9: a heartbeat says whether the broker's storage is failing; the controller fences it
/// meanwhile. A controller of 8 would not read such a heartbeat.
pub const CLUSTER_PROTOCOL_VERSION: u16 = 9;

/// Kafka's limit on topic name length.
pub const TOPIC_NAME_BYTES_MAX: usize = 249;

/// Kafka's rule: 1 to 249 of `[a-zA-Z0-9._-]`, and not `.` or `..`. It also keeps names safe
/// as directory names.
pub fn validate_topic_name(name: &str) -> Result<(), String> {
    let allowed = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-');
    if name.is_empty() || name.len() > TOPIC_NAME_BYTES_MAX {
        return Err(format!("topic name must be 1 to {TOPIC_NAME_BYTES_MAX} characters"));
    }
    if name == "." || name == ".." {
        return Err("topic name cannot be '.' or '..'".into());
    }
    if name == super::voter_log::METADATA_DIR {
        return Err(format!("{name} is the cluster metadata log's, not a topic's"));
    }
    if !name.chars().all(allowed) {
        return Err(format!(
            "topic name {name:?} may only contain letters, digits, '.', '_' and '-'"
        ));
    }
    Ok(())
}

/// Whether no broker is named twice in `nodes` (a replica list, an in-sync set).
pub fn all_distinct(nodes: &[NodeId]) -> bool {
    let mut sorted = nodes.to_vec();
    sorted.sort_unstable();
    sorted.windows(2).all(|pair| pair[0] != pair[1])
}

/// More partitions than this in one topic is almost certainly a typo.
pub const PARTITIONS_MAX: u32 = 10_000;

/// A topic's id (Kafka's topic UUID): a topic deleted and created again under its name gets a
/// new one, so a broker that was away recognises the new topic and drops the old one's logs.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Archive, Serialize, Deserialize,
)]
pub struct TopicId(pub u128);

impl fmt::Display for TopicId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:032x}", self.0)
    }
}

/// The cluster's id, decided once by the first active controller and committed as the log's
/// first record; every data directory that joins keeps it (`meta.properties`), and a broker
/// refuses to serve another cluster's. Written as Kafka writes its ids: the 16 bytes in URL-safe
/// base64 without padding (22 characters).
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Archive, Serialize, Deserialize,
)]
pub struct ClusterId(pub u128);

impl fmt::Display for ClusterId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&uuid_text(self.0))
    }
}

impl std::str::FromStr for ClusterId {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        parse_uuid_text(text).map(Self).map_err(|why| format!("cluster id {text:?}: {why}"))
    }
}

/// A UUID as Kafka writes one (cluster, topic and directory ids): its 16 bytes in URL-safe
/// base64 without padding.
pub fn uuid_text(id: u128) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(id.to_be_bytes())
}

pub fn parse_uuid_text(text: &str) -> Result<u128, String> {
    use base64::Engine;
    let bytes =
        base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(text).map_err(|e| e.to_string())?;
    let bytes: [u8; 16] = bytes.try_into().map_err(|_| "not 16 bytes".to_string())?;
    Ok(u128::from_be_bytes(bytes))
}

/// A broker process's registration, as it asks for it.
#[derive(Clone, Debug, PartialEq, Eq, Archive, Serialize, Deserialize)]
pub struct Registration {
    pub node: NodeId,
    /// Chosen by the broker process at its start: the same process registering again is the
    /// same registration.
    pub incarnation: u64,
    /// The broker's data directory (Kafka's `directory.id`, KIP-858): a process on the same
    /// directory is the same broker restarted (the directory's lock rules out two at once), one
    /// on another is another broker claiming the node id.
    pub directory: u128,
    pub rack: Option<String>,
    pub endpoints: Endpoints,
    /// The cluster protocol version the broker speaks ([`CLUSTER_PROTOCOL_VERSION`]).
    pub protocol_version: u16,
    /// Its `min.insync.replicas` for topics that do not set it (`None`: 2 once a partition is
    /// replicated): what its leaderships hold the high watermark to, which the controller must
    /// not overestimate when it keeps the eligible leader replicas (KIP-966).
    pub min_insync_replicas: Option<u16>,
}

/// Where a broker listens, as it registered.
#[derive(Clone, Debug, PartialEq, Eq, Archive, Serialize, Deserialize)]
pub struct Endpoints {
    /// For Kafka clients.
    pub kafka: (String, u16),
    /// For Spate's native clients and for other brokers.
    pub native: (String, u16),
}

/// One change to the cluster metadata, as the controller commits it.
#[derive(Clone, Debug, PartialEq, Eq, Archive, Serialize, Deserialize)]
pub enum MetadataRecord {
    /// The cluster exists, under this id: the first record of its log. Never changes.
    ClusterFormed {
        cluster_id: ClusterId,
    },
    /// A broker (re)joined; `broker_epoch` is new for every registration, so messages from an
    /// earlier incarnation of the broker can be told apart and refused. It starts fenced.
    RegisterBroker {
        broker_epoch: u64,
        registration: Registration,
    },
    /// The broker leads nothing from here on and is in no in-sync set it shared (it may stay
    /// the last member of one: that partition waits for it). `shutdown`: it asked (a controlled
    /// shutdown), and this registration is over: it must register again.
    FenceBroker {
        node: NodeId,
        broker_epoch: u64,
        shutdown: bool,
    },
    /// The broker heartbeats again under `broker_epoch`: it may be given leadership.
    UnfenceBroker {
        node: NodeId,
        broker_epoch: u64,
    },
    /// `config`: the topic's setting overrides (Kafka's names), sorted by name.
    CreateTopic {
        name: String,
        id: TopicId,
        config: Vec<(String, String)>,
    },
    /// A partition's whole state: written when its topic is created and at every change of
    /// leader or in-sync set, with `partition_epoch` raised by one each time and `leader_epoch`
    /// raised whenever the leader changes (KIP-101, KIP-497).
    PartitionState {
        topic: TopicId,
        partition: PartitionId,
        state: PartitionState,
    },
    DeleteTopic {
        id: TopicId,
    },
    /// Producer ids up to `next_producer_id` are handed out: the block below it (from the
    /// previous record's end) went to `node` (Kafka's ProducerIdsRecord, KIP-730). Brokers hand
    /// out ids only from their blocks, so no two producers anywhere share one.
    ProducerIds {
        node: NodeId,
        broker_epoch: u64,
        next_producer_id: i64,
    },
    /// The topic's setting overrides from here on, all of them (Kafka's ConfigRecord, one per
    /// changed key; here one for the whole set, which a change of several keys keeps atomic),
    /// sorted by name.
    TopicConfigChanged {
        id: TopicId,
        config: Vec<(String, String)>,
    },
    /// The dynamic broker settings (Kafka's names, `log.retention.ms`, ...) of one broker, or
    /// with `node` `None` the cluster-wide defaults every broker takes (Kafka's BROKER
    /// ConfigRecord with resource name `""`, KIP-226), all of them from here on, sorted by
    /// name; empty when none is left.
    BrokerConfigChanged {
        node: Option<NodeId>,
        config: Vec<(String, String)>,
    },
}

/// Who holds a partition, and who leads it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Archive, Serialize, Deserialize)]
pub struct PartitionState {
    /// In preference order: the first is the preferred leader. While a reassignment moves the
    /// partition, the target replicas first, then those being removed (KIP-455).
    pub replicas: Vec<NodeId>,
    /// In-sync replicas: a subset of `replicas`; the leader is one of them.
    pub isr: Vec<NodeId>,
    /// `None`: no replica can lead (every in-sync and eligible replica is fenced).
    pub leader: Option<NodeId>,
    pub leader_epoch: LeaderEpoch,
    pub partition_epoch: u32,
    /// A reassignment in progress (KIP-455): replicas being added, which catch up from the
    /// leader, and those to be removed once every target replica is in sync. Both empty
    /// otherwise; each within `replicas`, the two apart.
    pub adding: Vec<NodeId>,
    pub removing: Vec<NodeId>,
    /// Eligible leader replicas (KIP-966): out of the in-sync set, yet holding everything below
    /// the high watermark, because they left it while it was below `min.insync.replicas` (when
    /// the high watermark cannot move). A leader comes from here when no in-sync replica is
    /// live. Within `replicas`, apart from `isr`.
    pub elr: Vec<NodeId>,
}

impl PartitionState {
    /// The replicas the partition ends up with: all of them, less those a reassignment removes.
    pub fn target_replicas(&self) -> impl Iterator<Item = NodeId> + '_ {
        self.replicas.iter().copied().filter(|r| !self.removing.contains(r))
    }

    /// The replicas it had before a reassignment began: all of them, less those being added.
    pub fn original_replicas(&self) -> impl Iterator<Item = NodeId> + '_ {
        self.replicas.iter().copied().filter(|r| !self.adding.contains(r))
    }

    pub fn is_reassigning(&self) -> bool {
        !self.adding.is_empty() || !self.removing.is_empty()
    }

    /// The replica count `min.insync.replicas` is resolved against: the smaller of before and
    /// after a reassignment, so moving a partition never asks more of it than either end.
    pub fn settled_replica_count(&self) -> usize {
        self.target_replicas().count().min(self.original_replicas().count())
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Archive, Serialize, Deserialize)]
pub struct BrokerInfo {
    pub broker_epoch: u64,
    pub incarnation: u64,
    pub directory: u128,
    pub rack: Option<String>,
    pub endpoints: Endpoints,
    pub protocol_version: u16,
    pub min_insync_replicas: Option<u16>,
    pub fenced: bool,
    /// Fenced by its own controlled shutdown: this registration is over.
    pub shut_down: bool,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TopicInfo {
    pub name: String,
    /// Setting overrides; every other setting is the broker's default.
    pub config: BTreeMap<String, String>,
    pub partitions: BTreeMap<PartitionId, PartitionState>,
}

/// The metadata as of some prefix of the log.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MetadataImage {
    /// `None` until the first controller has formed the cluster.
    pub cluster_id: Option<ClusterId>,
    pub brokers: BTreeMap<NodeId, BrokerInfo>,
    pub topics: BTreeMap<TopicId, TopicInfo>,
    pub topic_ids: BTreeMap<String, TopicId>,
    /// The highest broker epoch registered so far: the next registration gets a higher one.
    pub last_broker_epoch: u64,
    /// The first producer id no block holds yet.
    pub next_producer_id: i64,
    /// Dynamic broker settings by Kafka's broker names: `None` holds the cluster-wide defaults,
    /// `Some(node)` one broker's own, which beat them on that broker (KIP-226). No entry for a
    /// resource without any. A broker's set outlives its registration, as Kafka's does.
    pub broker_configs: BTreeMap<Option<NodeId>, BTreeMap<String, String>>,
}

/// One resource's dynamic broker settings as snapshots and answers carry them: the broker
/// (`None`: the cluster-wide defaults) and its settings by name, sorted.
pub type ResourceSettings = (Option<NodeId>, Vec<(String, String)>);

/// An image as a snapshot holds it: lists where the image has maps, so that reading one back
/// goes through the same checks as applying records ([`MetadataImage::decode_snapshot`]).
#[derive(Archive, Serialize, Deserialize)]
pub(super) struct ImageSnapshot {
    pub(super) cluster_id: Option<ClusterId>,
    pub(super) brokers: Vec<(NodeId, BrokerInfo)>,
    pub(super) topics: Vec<TopicSnapshot>,
    pub(super) last_broker_epoch: u64,
    pub(super) next_producer_id: i64,
    pub(super) broker_configs: Vec<ResourceSettings>,
}

#[derive(Archive, Serialize, Deserialize)]
pub(super) struct TopicSnapshot {
    pub(super) id: TopicId,
    pub(super) name: String,
    pub(super) config: Vec<(String, String)>,
    pub(super) partitions: Vec<(PartitionId, PartitionState)>,
}

/// One decision's records as the metadata log stores them, in one entry: the format version,
/// then the archive. A batch is written as the oldest version that has every kind of record it
/// holds (versions 5 and 6 only added kinds), which it is byte for byte: a build of that version
/// can still read the log (a rollback) until the newer kind is written.
pub fn encode_batch(records: &Vec<MetadataRecord>) -> Vec<u8> {
    let version_of = |record: &MetadataRecord| match record {
        MetadataRecord::BrokerConfigChanged { .. } => 6,
        MetadataRecord::TopicConfigChanged { .. } => 5,
        _ => RECORD_VERSION_CURRENT_LAYOUT,
    };
    let version = records.iter().map(version_of).max().unwrap_or(RECORD_VERSION_CURRENT_LAYOUT);
    archive::encode_versioned(version, records)
}

/// A batch read back from the log (input like any other: validated, never trusted).
pub fn decode_batch(bytes: &[u8]) -> Result<Vec<MetadataRecord>, String> {
    let what = "metadata entry";
    match bytes.first() {
        Some(version)
            if (RECORD_VERSION_OLDEST..RECORD_VERSION_CURRENT_LAYOUT).contains(version) =>
        {
            let old = RECORD_VERSION_OLDEST..=RECORD_VERSION_CURRENT_LAYOUT - 1;
            old_layouts::decode_batch(bytes, old, what)
        }
        _ => archive::decode_versioned(bytes, RECORD_VERSION_OLDEST..=RECORD_VERSION, what),
    }
}

/// Why a batch was not applied.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RefusedRecord(pub String);

impl fmt::Display for RefusedRecord {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "metadata refused: {}", self.0)
    }
}

impl MetadataImage {
    /// The whole image, as a snapshot of the log up to the entry it was applied to holds it
    /// (KRaft's snapshots hold records that rebuild the image; this holds the image itself).
    pub fn encode_snapshot(&self) -> Vec<u8> {
        let topics = self.topics.iter().map(|(id, topic)| TopicSnapshot {
            id: *id,
            name: topic.name.clone(),
            config: topic.config.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
            partitions: topic.partitions.iter().map(|(p, state)| (*p, state.clone())).collect(),
        });
        let snapshot = ImageSnapshot {
            cluster_id: self.cluster_id,
            brokers: self.brokers.iter().map(|(node, info)| (*node, info.clone())).collect(),
            topics: topics.collect(),
            last_broker_epoch: self.last_broker_epoch,
            next_producer_id: self.next_producer_id,
            broker_configs: self.resource_settings(),
        };
        if snapshot.broker_configs.is_empty() {
            return old_layouts::encode_snapshot_v2(snapshot);
        }
        archive::encode_versioned(SNAPSHOT_VERSION, &snapshot)
    }

    /// An image read back from a snapshot: from the disk or another voter, so input like any
    /// other. It must hold what applying records would let it hold (unique brokers, topic ids
    /// and names, valid names, and every partition's invariants), or it is refused with why.
    pub fn decode_snapshot(bytes: &[u8]) -> Result<Self, String> {
        let what = "metadata snapshot";
        let snapshot: ImageSnapshot = match bytes.first() {
            Some(version) if (SNAPSHOT_VERSION_OLDEST..SNAPSHOT_VERSION).contains(version) => {
                old_layouts::decode_snapshot(bytes, SNAPSHOT_VERSION_OLDEST..=SNAPSHOT_VERSION - 1)?
            }
            _ => {
                archive::decode_versioned(bytes, SNAPSHOT_VERSION_OLDEST..=SNAPSHOT_VERSION, what)?
            }
        };
        let mut image = MetadataImage {
            cluster_id: snapshot.cluster_id,
            last_broker_epoch: snapshot.last_broker_epoch,
            next_producer_id: snapshot.next_producer_id,
            ..MetadataImage::default()
        };
        for (node, config) in snapshot.broker_configs {
            if config.is_empty() || image.broker_configs.contains_key(&node) {
                return Err(format!("dynamic broker settings of {node:?} empty or twice"));
            }
            image.apply(&MetadataRecord::BrokerConfigChanged { node, config })?;
        }
        for (node, info) in snapshot.brokers {
            if info.broker_epoch > image.last_broker_epoch {
                return Err(format!(
                    "broker {node} has epoch {}, past the last one handed out, {}",
                    info.broker_epoch, image.last_broker_epoch
                ));
            }
            if image.brokers.insert(node, info).is_some() {
                return Err(format!("broker {node} twice"));
            }
        }
        for topic in snapshot.topics {
            let TopicSnapshot { id, name, config, partitions } = topic;
            validate_topic_name(&name)?;
            if image.topic_ids.contains_key(&name) || image.topics.contains_key(&id) {
                return Err(format!("topic {name} ({id}) twice"));
            }
            let config = config.into_iter().collect();
            let info = TopicInfo { name: name.clone(), config, partitions: BTreeMap::new() };
            image.topics.insert(id, info);
            image.topic_ids.insert(name.clone(), id);
            for (partition, state) in partitions {
                let taken =
                    image.topics.get(&id).is_some_and(|t| t.partitions.contains_key(&partition));
                if taken {
                    return Err(format!("{name}-{partition} twice"));
                }
                image.check_partition_state(id, partition, &state)?;
                if let Some(info) = image.topics.get_mut(&id) {
                    info.partitions.insert(partition, state);
                }
            }
        }
        image.check_partitions()?;
        Ok(image)
    }

    /// Applies one decision's records, all of them or (saying why) none.
    pub fn apply_batch(&mut self, records: &[MetadataRecord]) -> Result<(), RefusedRecord> {
        if records.is_empty() {
            return Ok(());
        }
        let mut next = self.clone();
        for record in records {
            next.apply(record).map_err(RefusedRecord)?;
        }
        next.check_partitions().map_err(RefusedRecord)?;
        *self = next;
        Ok(())
    }

    /// Applies one record of a batch; the invariants that hold across the records of a batch
    /// are checked once it is whole ([`Self::check_partitions`]).
    fn apply(&mut self, record: &MetadataRecord) -> Result<(), String> {
        match record {
            MetadataRecord::ClusterFormed { cluster_id } => match self.cluster_id {
                Some(formed) if formed != *cluster_id => {
                    return Err(format!("the cluster is {formed} already, not {cluster_id}"));
                }
                _ => self.cluster_id = Some(*cluster_id),
            },
            MetadataRecord::RegisterBroker { broker_epoch, registration } => {
                let node = &registration.node;
                if *broker_epoch <= self.last_broker_epoch {
                    return Err(format!(
                        "broker {node} registers with epoch {broker_epoch}, not above {}",
                        self.last_broker_epoch
                    ));
                }
                // A new registration starts fenced: its old incarnation must lead nothing.
                if self.must_hand_over(*node) {
                    return Err(format!("broker {node} registers again while it still leads"));
                }
                self.last_broker_epoch = *broker_epoch;
                let info = BrokerInfo {
                    broker_epoch: *broker_epoch,
                    incarnation: registration.incarnation,
                    directory: registration.directory,
                    rack: registration.rack.clone(),
                    endpoints: registration.endpoints.clone(),
                    protocol_version: registration.protocol_version,
                    min_insync_replicas: registration.min_insync_replicas,
                    fenced: true,
                    shut_down: false,
                };
                self.brokers.insert(*node, info);
            }
            MetadataRecord::FenceBroker { node, broker_epoch, shutdown } => {
                if self.must_hand_over(*node) {
                    return Err(format!("broker {node} still leads or shares an in-sync set"));
                }
                let broker = self.registration(*node, *broker_epoch)?;
                broker.fenced = true;
                broker.shut_down = *shutdown;
            }
            MetadataRecord::UnfenceBroker { node, broker_epoch } => {
                let broker = self.registration(*node, *broker_epoch)?;
                if broker.shut_down {
                    return Err(format!("broker {node} shut down: it must register again"));
                }
                broker.fenced = false;
            }
            MetadataRecord::CreateTopic { name, id, config } => {
                if self.topic_ids.contains_key(name) || self.topics.contains_key(id) {
                    return Err(format!("topic {name} ({id}) exists"));
                }
                let info = TopicInfo {
                    name: name.clone(),
                    config: config.iter().cloned().collect(),
                    partitions: BTreeMap::new(),
                };
                self.topics.insert(*id, info);
                self.topic_ids.insert(name.clone(), *id);
            }
            MetadataRecord::PartitionState { topic, partition, state } => {
                self.check_partition_state(*topic, *partition, state)?;
                if let Some(info) = self.topics.get_mut(topic) {
                    info.partitions.insert(*partition, state.clone());
                }
            }
            MetadataRecord::DeleteTopic { id } => {
                let Some(info) = self.topics.remove(id) else {
                    return Err(format!("no topic {id} to delete"));
                };
                self.topic_ids.remove(&info.name);
            }
            MetadataRecord::ProducerIds { node, broker_epoch, next_producer_id } => {
                self.registration(*node, *broker_epoch)?;
                if *next_producer_id <= self.next_producer_id {
                    return Err(format!(
                        "producer ids up to {next_producer_id} for broker {node}, but ids up to \
                         {} are handed out already",
                        self.next_producer_id
                    ));
                }
                self.next_producer_id = *next_producer_id;
            }
            MetadataRecord::TopicConfigChanged { id, config } => {
                let Some(topic) = self.topics.get_mut(id) else {
                    return Err(format!("no topic {id} to configure"));
                };
                topic.config = config.iter().cloned().collect();
            }
            MetadataRecord::BrokerConfigChanged { node, config } => {
                if node.is_some_and(|node| node.0 < 0) {
                    return Err(format!("broker settings for node {node:?}, not a node id"));
                }
                if let Some((key, _)) = config.iter().find(|(key, _)| key.is_empty()) {
                    return Err(format!("a broker setting without a name ({key:?})"));
                }
                match config.is_empty() {
                    true => self.broker_configs.remove(node),
                    false => self.broker_configs.insert(*node, config.iter().cloned().collect()),
                };
            }
        }
        Ok(())
    }

    /// Every resource's dynamic broker settings, as snapshots and answers carry them.
    pub fn resource_settings(&self) -> Vec<ResourceSettings> {
        let listed = |settings: &BTreeMap<String, String>| {
            settings.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
        };
        self.broker_configs.iter().map(|(node, settings)| (*node, listed(settings))).collect()
    }

    /// Broker `node` as registered under `broker_epoch`.
    fn registration(&mut self, node: NodeId, broker_epoch: u64) -> Result<&mut BrokerInfo, String> {
        match self.brokers.get_mut(&node) {
            Some(broker) if broker.broker_epoch == broker_epoch => Ok(broker),
            Some(broker) => Err(format!(
                "broker {node} has epoch {}, the record names {broker_epoch}",
                broker.broker_epoch
            )),
            None => Err(format!("broker {node} is not registered")),
        }
    }

    /// The topic named `name`, with its id.
    pub fn topic_named(&self, name: &str) -> Option<(TopicId, &TopicInfo)> {
        let id = *self.topic_ids.get(name)?;
        Some((id, self.topics.get(&id)?))
    }

    /// Every partition: (topic id, partition, state).
    pub fn partitions(&self) -> impl Iterator<Item = (TopicId, PartitionId, &PartitionState)> {
        self.topics.iter().flat_map(|(id, topic)| {
            topic.partitions.iter().map(move |(partition, state)| (*id, *partition, state))
        })
    }

    /// Whether `node` leads a partition or shares an in-sync set: what it must hand over before
    /// it is fenced. (A fenced broker may stay the last member of an in-sync set: the partition
    /// then has no leader until it, or another replica that catches up, comes back.)
    pub fn must_hand_over(&self, node: NodeId) -> bool {
        self.partitions()
            .any(|(_, _, p)| p.leader == Some(node) || (p.isr.contains(&node) && p.isr.len() > 1))
    }

    pub fn live_brokers(&self) -> impl Iterator<Item = (&NodeId, &BrokerInfo)> {
        self.brokers.iter().filter(|(_, b)| !b.fenced)
    }

    /// Whether `node` is registered and not fenced.
    pub fn is_live(&self, node: &NodeId) -> bool {
        self.brokers.get(node).is_some_and(|b| !b.fenced)
    }

    /// What holds for every partition once a whole batch is applied: an in-sync set shared by
    /// several replicas has only live ones (fencing takes a broker out first), and a partition
    /// without a leader has no live in-sync or eligible replica (one that comes back is elected
    /// in the same batch).
    fn check_partitions(&self) -> Result<(), String> {
        for (topic, partition, state) in self.partitions() {
            let fenced_sharing = state.isr.len() > 1 && !state.isr.iter().all(|r| self.is_live(r));
            let could_lead = state.isr.iter().chain(&state.elr).any(|r| self.is_live(r));
            let leaderless = state.leader.is_none() && could_lead;
            if fenced_sharing || leaderless {
                return Err(format!(
                    "{topic}-{partition}: in-sync replicas {:?} and eligible {:?} with leader {:?}",
                    state.isr, state.elr, state.leader
                ));
            }
        }
        Ok(())
    }

    /// The invariants a partition's state keeps from record to record.
    fn check_partition_state(
        &self,
        topic: TopicId,
        partition: PartitionId,
        state: &PartitionState,
    ) -> Result<(), String> {
        let Some(info) = self.topics.get(&topic) else {
            return Err(format!("partition {partition} of unknown topic {topic}"));
        };
        if !all_distinct(&state.replicas) || state.replicas.is_empty() {
            return Err(format!("{}-{partition}: replicas {:?}", info.name, state.replicas));
        }
        if let Some(stray) = state.replicas.iter().find(|r| !self.brokers.contains_key(r)) {
            return Err(format!("{}-{partition}: replica {stray} is not registered", info.name));
        }
        if state.isr.is_empty() || state.isr.iter().any(|r| !state.replicas.contains(r)) {
            return Err(format!(
                "{}-{partition}: in-sync replicas {:?} not within replicas {:?}",
                info.name, state.isr, state.replicas
            ));
        }
        let within =
            |set: &[NodeId]| all_distinct(set) && set.iter().all(|r| state.replicas.contains(r));
        let moving_apart = !state.adding.iter().any(|r| state.removing.contains(r));
        if !within(&state.adding) || !within(&state.removing) || !moving_apart {
            return Err(format!(
                "{}-{partition}: adding {:?} and removing {:?} not apart within replicas {:?}",
                info.name, state.adding, state.removing, state.replicas
            ));
        }
        if state.target_replicas().next().is_none() || state.original_replicas().next().is_none() {
            return Err(format!(
                "{}-{partition}: a reassignment of {:?} adding {:?} and removing {:?} leaves none",
                info.name, state.replicas, state.adding, state.removing
            ));
        }
        if !within(&state.elr) || state.elr.iter().any(|r| state.isr.contains(r)) {
            return Err(format!(
                "{}-{partition}: eligible replicas {:?} not apart from in-sync {:?} within {:?}",
                info.name, state.elr, state.isr, state.replicas
            ));
        }
        if let Some(leader) = state.leader {
            if !state.isr.contains(&leader) || !self.is_live(&leader) {
                return Err(format!(
                    "{}-{partition}: leader {leader} is not a live in-sync replica {:?}",
                    info.name, state.isr
                ));
            }
        }
        if let Some(before) = info.partitions.get(&partition) {
            let epochs_grow = state.partition_epoch > before.partition_epoch
                && state.leader_epoch >= before.leader_epoch;
            let new_leader_new_epoch =
                state.leader == before.leader || state.leader_epoch > before.leader_epoch;
            if !epochs_grow || !new_leader_new_epoch {
                return Err(format!(
                    "{}-{partition}: leader epoch {:?} and partition epoch {} go to {:?} and {} \
                     with leader {:?} then {:?}",
                    info.name,
                    before.leader_epoch,
                    before.partition_epoch,
                    state.leader_epoch,
                    state.partition_epoch,
                    before.leader,
                    state.leader
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn endpoints() -> Endpoints {
        Endpoints { kafka: ("h".into(), 1), native: ("h".into(), 2) }
    }

    fn state(leader: i32, leader_epoch: i32, partition_epoch: u32) -> PartitionState {
        PartitionState {
            replicas: vec![NodeId(1), NodeId(2)],
            isr: vec![NodeId(1), NodeId(2)],
            leader: Some(NodeId(leader)),
            leader_epoch: LeaderEpoch(leader_epoch),
            partition_epoch,
            ..PartitionState::default()
        }
    }

    fn register(node: i32, broker_epoch: u64) -> MetadataRecord {
        let (node, rack, endpoints) = (NodeId(node), None, endpoints());
        let registration = Registration {
            node,
            incarnation: 1,
            directory: 1,
            rack,
            endpoints,
            protocol_version: CLUSTER_PROTOCOL_VERSION,
            min_insync_replicas: None,
        };
        MetadataRecord::RegisterBroker { broker_epoch, registration }
    }

    fn change(state: PartitionState) -> MetadataRecord {
        MetadataRecord::PartitionState { topic: TopicId(7), partition: PartitionId(0), state }
    }

    /// Two live brokers and topic `t` with partition 0 led by broker 1 in epoch 0.
    fn image() -> MetadataImage {
        let mut image = MetadataImage::default();
        let mut batch = Vec::new();
        for (n, epoch) in [(1, 1), (2, 2)] {
            batch.push(register(n, epoch));
            batch.push(MetadataRecord::UnfenceBroker { node: NodeId(n), broker_epoch: epoch });
        }
        batch.push(MetadataRecord::CreateTopic {
            name: "t".into(),
            id: TopicId(7),
            config: vec![("retention.ms".into(), "1000".into())],
        });
        batch.push(change(state(1, 0, 0)));
        image.apply_batch(&batch).expect("applied");
        image
    }

    #[test]
    fn batches_that_break_an_invariant_are_refused_and_change_nothing() {
        let base = image();
        let fence = |node, broker_epoch| MetadataRecord::FenceBroker {
            node: NodeId(node),
            broker_epoch,
            shutdown: false,
        };
        let refused: Vec<Vec<MetadataRecord>> = vec![
            // A new leader under the same leader epoch.
            vec![change(state(2, 0, 1))],
            // The partition epoch not moving.
            vec![change(state(1, 0, 0))],
            // A leader epoch going back.
            vec![change(state(1, -1, 1))],
            // A leader outside the in-sync set.
            vec![change(PartitionState { isr: vec![NodeId(2)], ..state(1, 1, 1) })],
            // A replica never registered.
            vec![change(PartitionState { replicas: vec![NodeId(1), NodeId(9)], ..state(1, 0, 1) })],
            // A partition of no topic.
            vec![MetadataRecord::PartitionState {
                topic: TopicId(8),
                partition: PartitionId(0),
                state: state(1, 0, 0),
            }],
            // Fencing a broker that still leads, or shares an in-sync set.
            vec![fence(1, 1)],
            vec![fence(2, 2)],
            // No leader while an in-sync replica is live.
            vec![change(PartitionState { leader: None, ..state(1, 1, 1) })],
            // No leader while an eligible replica is live.
            vec![change(PartitionState {
                leader: None,
                isr: vec![NodeId(1)],
                elr: vec![NodeId(2)],
                ..state(1, 1, 1)
            })],
            // An eligible replica in sync too, or not a replica.
            vec![change(PartitionState { elr: vec![NodeId(2)], ..state(1, 0, 1) })],
            vec![change(PartitionState { elr: vec![NodeId(3)], ..state(1, 0, 1) })],
            // A reassignment adding and removing one replica, or removing every one.
            vec![change(PartitionState {
                adding: vec![NodeId(2)],
                removing: vec![NodeId(2)],
                ..state(1, 0, 1)
            })],
            vec![change(PartitionState { removing: vec![NodeId(1), NodeId(2)], ..state(1, 0, 1) })],
            // An epoch from another registration.
            vec![MetadataRecord::UnfenceBroker { node: NodeId(2), broker_epoch: 1 }],
            // A broker epoch that does not grow.
            vec![register(3, 2)],
            vec![MetadataRecord::CreateTopic {
                name: "t".into(),
                id: TopicId(9),
                config: Vec::new(),
            }],
            vec![MetadataRecord::DeleteTopic { id: TopicId(8) }],
            // A good record, then a bad one: neither is applied.
            vec![change(state(2, 1, 1)), change(state(2, 1, 1))],
        ];
        for batch in refused {
            let mut image = base.clone();
            assert!(image.apply_batch(&batch).is_err(), "{batch:?} applied");
            assert_eq!(image, base, "{batch:?} changed the image");
        }
        let mut image = base.clone();
        image.apply_batch(&[change(state(2, 1, 1))]).expect("a new leader in a new epoch");
    }

    /// Broker 2 hands over and shuts down: its registration is over, no heartbeat of it may
    /// bring it back, only a new registration.
    #[test]
    fn a_registration_ended_by_a_shutdown_stays_fenced() {
        let mut image = image();
        let handed_over = PartitionState { isr: vec![NodeId(1)], ..state(1, 0, 1) };
        let shutdown =
            MetadataRecord::FenceBroker { node: NodeId(2), broker_epoch: 2, shutdown: true };
        image.apply_batch(&[change(handed_over), shutdown]).expect("shut down");
        let unfence = MetadataRecord::UnfenceBroker { node: NodeId(2), broker_epoch: 2 };
        assert!(image.apply_batch(&[unfence]).is_err());
        image.apply_batch(&[register(2, 3)]).expect("registered again");
        let unfence = MetadataRecord::UnfenceBroker { node: NodeId(2), broker_epoch: 3 };
        image.apply_batch(&[unfence]).expect("unfenced");
    }

    #[test]
    fn batches_read_back_as_written_and_garbage_is_refused() {
        let batch = vec![register(1, 1), change(state(1, 0, 0))];
        assert_eq!(decode_batch(&encode_batch(&batch)), Ok(batch.clone()));
        assert_eq!(image().topics[&TopicId(7)].config["retention.ms"], "1000");
        let mut newer = encode_batch(&batch);
        newer[0] = RECORD_VERSION + 1;
        assert!(decode_batch(&newer).is_err_and(|e| e.contains("this build reads")));
        assert!(decode_batch(&[]).is_err());
        let mut torn = encode_batch(&batch);
        torn.truncate(torn.len() / 2);
        assert!(decode_batch(&torn).is_err());
    }

    /// Version 2 entries, as a build of that version wrote them (registration, fencing and
    /// producer ids: topics came with version 3), read by this build as they were written.
    #[test]
    fn reads_version_2_entries() {
        let bytes = hex_bytes(include_str!("testdata/metadata-v2.hex"));
        assert_eq!(bytes[0], 2);
        let registration = Registration {
            node: NodeId(2),
            incarnation: 77,
            directory: 0x1234,
            rack: Some("r1".into()),
            endpoints: Endpoints {
                kafka: ("127.0.0.1".into(), 9092),
                native: ("127.0.0.1".into(), 9192),
            },
            protocol_version: 1, // as that build spoke
            min_insync_replicas: None,
        };
        let expected = vec![
            MetadataRecord::ClusterFormed { cluster_id: ClusterId(0xabcdef) },
            MetadataRecord::RegisterBroker { broker_epoch: 3, registration },
            MetadataRecord::UnfenceBroker { node: NodeId(2), broker_epoch: 3 },
            MetadataRecord::ProducerIds {
                node: NodeId(2),
                broker_epoch: 3,
                next_producer_id: 1000,
            },
            MetadataRecord::FenceBroker { node: NodeId(2), broker_epoch: 3, shutdown: true },
        ];
        assert_eq!(decode_batch(&bytes), Ok(expected));
    }

    fn hex_bytes(hex: &str) -> Vec<u8> {
        let hex = hex.trim();
        (0..hex.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).expect("hex"))
            .collect()
    }

    fn registration_v3(node: i32, incarnation: u64, directory: u128, port: u16) -> Registration {
        Registration {
            node: NodeId(node),
            incarnation,
            directory,
            rack: None,
            endpoints: Endpoints {
                kafka: ("127.0.0.1".into(), 9090 + port),
                native: ("127.0.0.1".into(), 9190 + port),
            },
            protocol_version: 4, // as that build spoke
            min_insync_replicas: None,
        }
    }

    /// A version 3 entry, as a build of that version wrote it (partition states without a
    /// reassignment or eligible replicas), read by this build with none of either.
    #[test]
    fn reads_version_3_entries() {
        let bytes = hex_bytes(include_str!("testdata/metadata-v3.hex"));
        assert_eq!(bytes[0], 3);
        let state = PartitionState {
            replicas: vec![NodeId(3), NodeId(1), NodeId(2)],
            isr: vec![NodeId(3), NodeId(1)],
            leader: Some(NodeId(3)),
            leader_epoch: LeaderEpoch(4),
            partition_epoch: 9,
            ..PartitionState::default()
        };
        let expected = vec![
            MetadataRecord::RegisterBroker {
                broker_epoch: 7,
                registration: Registration { directory: 0x77, ..registration_v3(3, 5, 0, 2) },
            },
            MetadataRecord::CreateTopic {
                name: "orders".into(),
                id: TopicId(0x1234_5678),
                config: vec![("min.insync.replicas".into(), "2".into())],
            },
            MetadataRecord::PartitionState {
                topic: TopicId(0x1234_5678),
                partition: PartitionId(1),
                state,
            },
            MetadataRecord::DeleteTopic { id: TopicId(0x99) },
        ];
        assert_eq!(decode_batch(&bytes), Ok(expected));
    }

    /// The partition state the version 4 and 5 vectors hold: being moved, with an eligible
    /// replica.
    fn moving_state() -> PartitionState {
        PartitionState {
            replicas: vec![NodeId(3), NodeId(1), NodeId(2), NodeId(4)],
            isr: vec![NodeId(3)],
            leader: Some(NodeId(3)),
            leader_epoch: LeaderEpoch(4),
            partition_epoch: 9,
            adding: vec![NodeId(4)],
            removing: vec![NodeId(2)],
            elr: vec![NodeId(1)],
        }
    }

    /// Version 4 entries, as a build of that version wrote them (every kind of record it had,
    /// a partition state with a reassignment and eligible replicas), read unchanged: version 5
    /// only added a kind of record.
    #[test]
    fn reads_version_4_entries() {
        let bytes = hex_bytes(include_str!("testdata/metadata-v4.hex"));
        assert_eq!(bytes[0], 4);
        let registration = Registration {
            directory: 0x77,
            rack: Some("r2".into()),
            protocol_version: 5,
            min_insync_replicas: Some(2),
            ..registration_v3(3, 5, 0, 2)
        };
        let state = moving_state();
        let topic = TopicId(0x1234_5678);
        let expected = vec![
            MetadataRecord::RegisterBroker { broker_epoch: 7, registration },
            MetadataRecord::CreateTopic {
                name: "orders".into(),
                id: topic,
                config: vec![("retention.ms".into(), "60000".into())],
            },
            MetadataRecord::PartitionState { topic, partition: PartitionId(1), state },
            MetadataRecord::FenceBroker { node: NodeId(2), broker_epoch: 6, shutdown: true },
            MetadataRecord::ProducerIds {
                node: NodeId(3),
                broker_epoch: 7,
                next_producer_id: 2000,
            },
            MetadataRecord::DeleteTopic { id: TopicId(0x99) },
        ];
        assert_eq!(decode_batch(&bytes), Ok(expected));
    }

    #[test]
    fn a_topics_settings_change_whole_and_only_for_a_topic_that_exists() {
        let mut image = image();
        let config = vec![("segment.bytes".to_string(), "65536".to_string())];
        let changed = MetadataRecord::TopicConfigChanged { id: TopicId(7), config };
        image.apply_batch(std::slice::from_ref(&changed)).expect("configured");
        let topic = &image.topics[&TopicId(7)];
        assert_eq!(topic.config.len(), 1, "the old override goes: {:?}", topic.config);
        assert_eq!(topic.config["segment.bytes"], "65536");
        let written = encode_batch(&vec![changed]);
        assert_eq!(written[0], 5, "a settings change needs version 5");
        assert_eq!(decode_batch(&written).map(|b| b.len()), Ok(1));
        assert_eq!(encode_batch(&vec![register(1, 1)])[0], 4, "the rest reads as version 4");
        let unknown = MetadataRecord::TopicConfigChanged { id: TopicId(8), config: Vec::new() };
        let before = image.clone();
        assert!(image.apply_batch(&[unknown]).is_err());
        assert_eq!(image, before);
    }

    /// A version 1 snapshot, as a build of that version wrote it, read as the image it held.
    #[test]
    fn reads_version_1_snapshots() {
        let bytes = hex_bytes(include_str!("testdata/snapshot-v1.hex"));
        assert_eq!(bytes[0], 1);
        let image = MetadataImage::decode_snapshot(&bytes).expect("a version 1 snapshot");
        assert_eq!(image.cluster_id, Some(ClusterId(0xabc)));
        assert_eq!(image.brokers.len(), 3);
        assert_eq!(image.brokers[&NodeId(2)].endpoints, registration_v3(2, 1, 2, 2).endpoints);
        let (id, topic) = image.topic_named("orders").expect("topic orders");
        assert_eq!(id, TopicId(0x1234_5678));
        assert_eq!(topic.config["min.insync.replicas"], "2");
        let state = &topic.partitions[&PartitionId(1)];
        assert_eq!(state.replicas, vec![NodeId(3), NodeId(1), NodeId(2)]);
        assert_eq!(state.isr, vec![NodeId(3), NodeId(1)]);
        assert_eq!(
            (state.leader, state.leader_epoch, state.partition_epoch),
            (Some(NodeId(3)), LeaderEpoch(4), 9)
        );
        assert!(state.adding.is_empty() && state.removing.is_empty() && state.elr.is_empty());
        // Written again, it is version 2 (no dynamic broker settings), and reads back the same.
        let rewritten = image.encode_snapshot();
        assert_eq!(rewritten[0], 2);
        assert_eq!(MetadataImage::decode_snapshot(&rewritten), Ok(image));
    }

    #[test]
    fn a_snapshot_gives_back_the_image_and_one_that_breaks_an_invariant_is_refused() {
        let mut base = image();
        let formed = MetadataRecord::ClusterFormed { cluster_id: ClusterId(9) };
        base.apply_batch(&[formed]).expect("applied");
        let snapshot = base.encode_snapshot();
        assert_eq!(MetadataImage::decode_snapshot(&snapshot), Ok(base.clone()));

        // What no sequence of records can build is refused by what it breaks.
        let mut leaderless = base.clone();
        let partition = leaderless.topics.get_mut(&TopicId(7)).expect("topic t");
        partition.partitions.get_mut(&PartitionId(0)).expect("partition 0").leader = None;
        let refused = MetadataImage::decode_snapshot(&leaderless.encode_snapshot());
        assert!(refused.as_ref().is_err_and(|why| why.contains("in-sync")), "{refused:?}");
        let mut stray = base.clone();
        stray.brokers.remove(&NodeId(2));
        let refused = MetadataImage::decode_snapshot(&stray.encode_snapshot());
        assert!(refused.as_ref().is_err_and(|why| why.contains("not registered")), "{refused:?}");
        let mut epoch_ahead = base.clone();
        epoch_ahead.last_broker_epoch = 1;
        assert!(MetadataImage::decode_snapshot(&epoch_ahead.encode_snapshot()).is_err());

        // A newer format is refused by number; damage by rkyv's validation.
        let mut newer = snapshot.clone();
        newer[0] = SNAPSHOT_VERSION + 1;
        let refused = MetadataImage::decode_snapshot(&newer).expect_err("a newer snapshot");
        assert!(refused.contains(&format!("version {}", SNAPSHOT_VERSION + 1)), "{refused}");
        let damaged = &snapshot[..snapshot.len() / 2];
        assert!(MetadataImage::decode_snapshot(damaged).is_err());
    }

    /// Version 5 entries, as a build of that version wrote them (a settings change beside the
    /// largest kinds of record), read unchanged: version 6 only added a kind of record.
    #[test]
    fn reads_version_5_entries() {
        let bytes = hex_bytes(include_str!("testdata/metadata-v5.hex"));
        assert_eq!(bytes[0], 5);
        let registration = Registration {
            directory: 0x73,
            rack: Some("r2".into()),
            endpoints: Endpoints {
                kafka: ("127.0.0.1".into(), 9093),
                native: ("127.0.0.1".into(), 9193),
            },
            protocol_version: 7,
            min_insync_replicas: Some(2),
            ..registration_v3(3, 5, 0, 0)
        };
        let state = moving_state();
        let topic = TopicId(0x1234_5678);
        let config = vec![
            ("compression.type".to_string(), "zstd".to_string()),
            ("retention.ms".to_string(), "60000".to_string()),
        ];
        let expected = vec![
            MetadataRecord::RegisterBroker { broker_epoch: 7, registration },
            MetadataRecord::PartitionState { topic, partition: PartitionId(1), state },
            MetadataRecord::TopicConfigChanged { id: topic, config },
            MetadataRecord::DeleteTopic { id: TopicId(0x99) },
        ];
        assert_eq!(decode_batch(&bytes), Ok(expected));
    }

    /// A version 2 snapshot, as a build of that version wrote it, read as the image it held,
    /// without dynamic broker settings; written again unchanged while it has none.
    #[test]
    fn reads_version_2_snapshots() {
        let bytes = hex_bytes(include_str!("testdata/snapshot-v2.hex"));
        assert_eq!(bytes[0], 2);
        let image = MetadataImage::decode_snapshot(&bytes).expect("a version 2 snapshot");
        assert_eq!(image.cluster_id, Some(ClusterId(0xabc)));
        assert_eq!((image.brokers.len(), image.last_broker_epoch), (3, 3));
        let broker = &image.brokers[&NodeId(3)];
        assert_eq!((broker.incarnation, broker.min_insync_replicas), (13, Some(2)));
        assert_eq!(image.brokers[&NodeId(2)].rack.as_deref(), Some("r2"));
        assert!(image.brokers.values().all(|b| !b.fenced && b.protocol_version == 7));
        assert_eq!(image.next_producer_id, 5000);
        let (id, topic) = image.topic_named("orders").expect("topic orders");
        assert_eq!(id, TopicId(0x1234_5678));
        assert_eq!(topic.config["min.insync.replicas"], "2");
        let state = &topic.partitions[&PartitionId(1)];
        assert_eq!(
            (state.isr.clone(), state.elr.clone()),
            (vec![NodeId(3), NodeId(1)], vec![NodeId(2)])
        );
        assert_eq!((state.leader_epoch, state.partition_epoch), (LeaderEpoch(4), 9));
        assert!(image.broker_configs.is_empty());
        assert_eq!(image.encode_snapshot(), bytes, "written again as version 2, byte for byte");
    }

    #[test]
    fn broker_settings_are_kept_per_resource_and_need_version_6() {
        let mut image = image();
        let set =
            |node: Option<i32>, config: &[(&str, &str)]| MetadataRecord::BrokerConfigChanged {
                node: node.map(NodeId),
                config: config.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            };
        let cluster = set(None, &[("log.retention.ms", "1000"), ("min.insync.replicas", "2")]);
        image
            .apply_batch(&[cluster.clone(), set(Some(2), &[("log.retention.ms", "5")])])
            .expect("set");
        assert_eq!(image.broker_configs[&None]["min.insync.replicas"], "2");
        assert_eq!(image.broker_configs[&Some(NodeId(2))]["log.retention.ms"], "5");
        // A node that is not registered may have settings (they outlive registrations).
        image.apply_batch(&[set(Some(9), &[("log.roll.ms", "60000")])]).expect("set");
        // What no resource or name can be is refused.
        let before = image.clone();
        assert!(image.apply_batch(&[set(Some(-1), &[("log.roll.ms", "1")])]).is_err());
        assert!(image.apply_batch(&[set(None, &[("", "1")])]).is_err());
        assert_eq!(image, before);
        // With settings, a snapshot is version 3 and reads back whole.
        let snapshot = image.encode_snapshot();
        assert_eq!(snapshot[0], SNAPSHOT_VERSION);
        assert_eq!(MetadataImage::decode_snapshot(&snapshot), Ok(image.clone()));
        // An empty set removes the resource.
        image.apply_batch(&[set(Some(9), &[])]).expect("cleared");
        assert!(!image.broker_configs.contains_key(&Some(NodeId(9))));
        let written = encode_batch(&vec![cluster.clone(), register(1, 1)]);
        assert_eq!(written[0], 6, "broker settings need version 6");
        assert_eq!(decode_batch(&written), Ok(vec![cluster, register(1, 1)]));
        let topic = MetadataRecord::TopicConfigChanged { id: TopicId(7), config: Vec::new() };
        assert_eq!(encode_batch(&vec![topic])[0], 5, "a topic's settings still read as 5");
    }
}
