//! What the active controller decides: from an event (a broker registering, heartbeating or
//! shutting down, a topic asked for, time passing) and the metadata image, the batch of records
//! to commit as one entry. No I/O and no clock: the caller passes `now`, commits the batch
//! through the metadata log and applies it; seeded simulations drive it (`simulation.rs`).
//!
//! Membership follows KRaft:
//! - A registration gets a new broker epoch and starts fenced; the same process (the same
//!   incarnation) registering again gets the registration it has, and another process claiming
//!   the node id while the registration's session is alive is refused (Kafka's
//!   DUPLICATE_BROKER_REGISTRATION).
//! - The broker's heartbeats under that epoch unfence it, and elect it leader of the partitions
//!   that waited for it.
//! - A broker silent for the session timeout is fenced; a controlled shutdown fences it and ends
//!   its registration, so a late heartbeat cannot bring it back (it registers again). Fencing
//!   first moves its leaderships to other live in-sync replicas (new leader and partition
//!   epochs) and takes it out of the in-sync sets it shares, in the same batch. A partition whose
//!   in-sync replicas are all fenced keeps the last one, without a leader, until it returns;
//!   unless its topic sets `unclean.leader.election.enable` (or the controller's broker has it
//!   as the default): then a live out-of-sync replica leads, its in-sync set alone, as soon as
//!   one is live, and what only the lost replicas had is gone (the returning ones truncate to
//!   it). Kafka's unclean election, off by default.
//!
//! Leaders return to their preferred replica (the first of the partition's replicas, where the
//! placement spread the leaders), as Kafka's controller does: when asked (ElectLeaders, KIP-460,
//! preferred or unclean), and on its own every `leader.imbalance.check.interval.seconds` for the
//! brokers that lead fewer of their preferred partitions than
//! `leader.imbalance.per.broker.percentage` allows (`auto.leader.rebalance.enable`). Only an
//! in-sync, live preferred replica takes over, in a new leader epoch.
//!
//! In-sync sets change at a partition leader's request (KIP-497's AlterPartition): a follower
//! that caught up joins, one that fell behind leaves. The request is taken only from the current
//! leader, in the current leader epoch and against the current partition epoch (so two changes
//! cannot both build on one state); a replica joins only while its broker is live and not
//! shutting down (KIP-841's eligible replicas).
//!
//! The heartbeat times are the controller's own memory, not the log's: a controller that takes
//! over gives every broker a full session before fencing it.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::time::{Duration, Instant};

use rkyv::{Archive, Deserialize, Serialize};

use crate::cluster::metadata::{
    all_distinct, validate_topic_name, BrokerInfo, ClusterId, MetadataImage, MetadataRecord,
    PartitionState, Registration, TopicId, CLUSTER_PROTOCOL_VERSION, PARTITIONS_MAX,
};
use crate::cluster::placement::{self, Candidate};
use crate::config::{ConfigChange, TopicConfig, MIN_INSYNC_KEY};
use crate::replication::eligible::eligible_after;
use crate::types::{LeaderEpoch, NodeId, PartitionId};

/// What happened, as the controller hears it.
#[derive(Clone, Debug)]
pub enum Event {
    /// `cluster_id`: the cluster the broker's data directory belongs to, if it joined one.
    Register {
        registration: Registration,
        cluster_id: Option<ClusterId>,
    },
    /// `via`: the connection it came over (`None`: from this controller's own broker, or not
    /// over the network), which `HeartbeatsLost` names when it closes. `storage_failing`: the
    /// broker's disk refuses its writes.
    Heartbeat {
        node: NodeId,
        broker_epoch: u64,
        via: Option<u64>,
        storage_failing: bool,
    },
    ControlledShutdown {
        node: NodeId,
        broker_epoch: u64,
    },
    /// Connection `via`, which broker `node`'s heartbeats reached this controller on, closed:
    /// its process died (the kernel closes a dead process's sockets at once), or its host or the
    /// network did. It is fenced at once rather than after its session, if that connection is
    /// the one this controller last heard it on (not one it has left for another).
    HeartbeatsLost {
        node: NodeId,
        broker_epoch: u64,
        via: u64,
    },
    /// `id` comes from the caller (random in the broker, seeded in tests).
    CreateTopic {
        topic: NewTopic,
        id: TopicId,
    },
    CreatePartitions(NewPartitions),
    DeleteTopic {
        name: String,
    },
    /// A broker needs a block of producer ids.
    AllocateProducerIds {
        node: NodeId,
        broker_epoch: u64,
    },
    /// A partition's leader asks for another in-sync set.
    AlterPartition(IsrRequest),
    /// An administrator asks for leader elections (Kafka's ElectLeaders): of the partitions
    /// named, or of every partition.
    ElectLeaders {
        election: Election,
        partitions: Option<Vec<(String, PartitionId)>>,
    },
    /// An administrator moves partitions to other replicas (Kafka's
    /// AlterPartitionReassignments, KIP-455): each named partition to its target replicas, the
    /// preferred leader first, or back to the replicas it had (`None`: the reassignment in
    /// progress is cancelled).
    Reassign(Vec<Reassignment>),
    /// An administrator changes a topic's settings (Kafka's IncrementalAlterConfigs, or with
    /// `replace` its AlterConfigs, which sets the whole override set anew).
    AlterTopicConfig {
        name: String,
        changes: Vec<ConfigChange>,
        replace: bool,
    },
    /// An administrator changes dynamic broker settings (Kafka's IncrementalAlterConfigs of a
    /// broker resource, or with `replace` its AlterConfigs): of broker `node`, or with `None`
    /// the cluster-wide defaults (KIP-226).
    AlterBrokerConfig {
        node: Option<NodeId>,
        changes: Vec<ConfigChange>,
        replace: bool,
    },
    Tick,
}

/// One partition's move, as an administrator asks for it.
#[derive(Clone, Debug, PartialEq, Eq, Archive, Serialize, Deserialize)]
pub struct Reassignment {
    pub topic: String,
    pub partition: PartitionId,
    /// `None`: cancel the reassignment in progress.
    pub target: Option<Vec<NodeId>>,
}

/// Which leader an election asked for brings (Kafka's ElectionType).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Archive, Serialize, Deserialize)]
pub enum Election {
    /// The preferred replica (the first listed), if it is live and in sync.
    Preferred,
    /// For a partition without a leader: a live in-sync replica, else any live replica (what
    /// only the lost in-sync replicas had is gone).
    Unclean,
}

/// The controller's own leader balancing (`auto.leader.rebalance.enable`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LeaderBalance {
    /// `leader.imbalance.check.interval.seconds`.
    pub interval: Duration,
    /// `leader.imbalance.per.broker.percentage`: a broker is out of balance once more than
    /// this share of the partitions it is the preferred replica of are led by others.
    pub imbalance_percentage: u32,
}

/// A leader's request to change a partition's in-sync set (Kafka's AlterPartition), made in
/// the epochs of the state it saw.
#[derive(Clone, Debug, PartialEq, Eq, Archive, Serialize, Deserialize)]
pub struct IsrRequest {
    pub node: NodeId,
    pub broker_epoch: u64,
    pub topic: TopicId,
    pub partition: PartitionId,
    pub leader_epoch: LeaderEpoch,
    pub partition_epoch: u32,
    pub isr: Vec<NodeId>,
}

/// A topic as a client asks for it (Kafka's CreatableTopic).
#[derive(Clone, Debug, PartialEq, Eq, Archive, Serialize, Deserialize)]
pub struct NewTopic {
    pub name: String,
    pub partitions: u32,
    pub replication_factor: u16,
    /// The replicas of each partition, its preferred leader first, instead of placing them.
    pub assignment: Option<Vec<Vec<NodeId>>>,
    /// Setting overrides, sorted by name.
    pub config: Vec<(String, String)>,
}

/// More partitions for a topic, as a client asks for them (Kafka's CreatePartitionsTopic):
/// `count` in all; the new ones get the topic's replication factor, placed, or as `assignment`
/// says (one list per new partition).
#[derive(Clone, Debug, PartialEq, Eq, Archive, Serialize, Deserialize)]
pub struct NewPartitions {
    pub name: String,
    pub count: u32,
    pub assignment: Option<Vec<Vec<NodeId>>>,
}

/// How many partitions a broker may hold (`max.broker.partitions`, replicas counted, KIP-578),
/// and the room kept for the internal topic until it exists: a cluster full of user topics
/// must still take a group's first commit.
#[derive(Clone, Debug)]
pub struct PartitionLimits {
    pub per_broker: u32,
    pub internal_topic: String,
    pub internal_partitions: u32,
    pub internal_replication_factor: u16,
}

/// The most leaders one balance check moves.
const BALANCE_MOVES_MAX: usize = 1000;

/// The topic setting that allows an unclean election.
const UNCLEAN_KEY: &str = "unclean.leader.election.enable";

/// Producer ids per block: a broker asks the controller once per this many new producers.
pub const PRODUCER_ID_BLOCK: i64 = 1000;

/// Why an event was refused, in terms a client or broker can be told.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// Heartbeat or shutdown from a broker that is not registered under that epoch (an older
    /// incarnation, or a registration a shutdown ended): it must register again.
    StaleBrokerEpoch {
        node: NodeId,
        broker_epoch: u64,
    },
    /// Another process holds the node id, and its session is alive.
    DuplicateRegistration(NodeId),
    TopicExists(String),
    /// A topic id already taken (ids are random: a caller's bug or a collision).
    TopicIdTaken(TopicId),
    UnknownTopic(String),
    /// Kafka's INVALID_REPLICATION_FACTOR: more replicas than live brokers, or none.
    InvalidReplicationFactor {
        asked: usize,
        live: usize,
    },
    /// None, or more than a topic may have, or not more than it has.
    InvalidPartitions(u32),
    /// A manual assignment that cannot be honoured, and why.
    InvalidAssignment(String),
    InvalidTopicName(String),
    /// A broker would hold more than `max.broker.partitions`.
    TooManyPartitions {
        node: NodeId,
        held: u64,
        reserved: u64,
        new: u64,
        limit: u32,
    },
    /// Every producer id is handed out (after about 9·10^15 of them).
    ProducerIdsExhausted,
    /// A broker whose data directory belongs to another cluster.
    OtherCluster {
        node: NodeId,
        theirs: ClusterId,
        ours: ClusterId,
    },
    /// A broker speaking a cluster protocol version this controller does not.
    UnsupportedProtocol {
        node: NodeId,
        protocol_version: u16,
    },
    UnknownPartition(TopicId, PartitionId),
    /// A partition change asked for by a broker that does not lead it.
    NotLeader(NodeId),
    /// A partition change made in an older leader epoch than the partition's.
    FencedLeaderEpoch {
        asked: LeaderEpoch,
        current: LeaderEpoch,
    },
    /// A partition change made against an older partition epoch.
    StalePartitionEpoch {
        asked: u32,
        current: u32,
    },
    /// An in-sync set that cannot be: not within the replicas, a replica twice, or without
    /// its leader.
    InvalidIsr(String),
    /// A replica that may not join the in-sync set: its broker is fenced or shutting down.
    IneligibleReplica(NodeId),
    /// A cancellation of a partition that is not being reassigned (Kafka's
    /// NO_REASSIGNMENT_IN_PROGRESS).
    NoReassignmentInProgress(String, PartitionId),
    /// A setting change that cannot be taken, and why (Kafka's INVALID_CONFIG).
    InvalidConfig(String),
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::StaleBrokerEpoch { node, broker_epoch } => {
                write!(f, "broker {node} is not registered under epoch {broker_epoch}")
            }
            Self::DuplicateRegistration(node) => {
                write!(f, "node id {node} is taken by a live broker")
            }
            Self::TopicExists(name) => write!(f, "topic {name} exists"),
            Self::TopicIdTaken(id) => write!(f, "topic id {id} is taken"),
            Self::UnknownTopic(name) => write!(f, "no topic {name}"),
            Self::InvalidReplicationFactor { asked, live } => {
                write!(f, "replication factor {asked} with {live} live brokers")
            }
            Self::InvalidPartitions(count) => {
                write!(f, "{count} partitions (1 to {PARTITIONS_MAX})")
            }
            Self::InvalidAssignment(why) => write!(f, "replica assignment: {why}"),
            Self::InvalidTopicName(why) => f.write_str(why),
            Self::TooManyPartitions { node, held, reserved, new, limit } => write!(
                f,
                "broker {node} holds {held} partitions (and keeps {reserved} for the internal \
                 topic); {new} more would pass max.broker.partitions={limit}"
            ),
            Self::ProducerIdsExhausted => write!(f, "every producer id is handed out"),
            Self::OtherCluster { node, theirs, ours } => write!(
                f,
                "node {node}'s data directory belongs to cluster {theirs}; this is cluster {ours}"
            ),
            Self::UnsupportedProtocol { node, protocol_version } => write!(
                f,
                "broker {node} speaks cluster protocol version {protocol_version}; this \
                 controller speaks {CLUSTER_PROTOCOL_VERSION}"
            ),
            Self::UnknownPartition(topic, partition) => {
                write!(f, "no partition {partition} of topic {topic}")
            }
            Self::NotLeader(node) => write!(f, "broker {node} does not lead the partition"),
            Self::FencedLeaderEpoch { asked, current } => {
                write!(f, "leader epoch {asked}, but the partition is in epoch {current}")
            }
            Self::StalePartitionEpoch { asked, current } => {
                write!(f, "partition epoch {asked}, but the partition is at {current}")
            }
            Self::InvalidIsr(why) => write!(f, "in-sync set: {why}"),
            Self::IneligibleReplica(node) => {
                write!(f, "replica {node} may not join the in-sync set: its broker is not live")
            }
            Self::NoReassignmentInProgress(topic, partition) => {
                write!(f, "{topic}-{partition} is not being reassigned")
            }
            Self::InvalidConfig(why) => f.write_str(why),
        }
    }
}

/// The active controller's decisions, and the little it remembers between them.
pub struct Controller {
    session_timeout: Duration,
    /// The id this controller gives the cluster if it is the first (chosen by the caller:
    /// random in the broker, seeded in tests).
    new_cluster_id: ClusterId,
    /// When each broker was last heard from (registration or heartbeat).
    last_heard: BTreeMap<NodeId, Instant>,
    /// The connection each broker's last heartbeat came over, when it came over one.
    heard_via: BTreeMap<NodeId, u64>,
    /// Where the next topic's first leader goes, so topics do not all start on one broker.
    next_start: usize,
    limits: PartitionLimits,
    /// When set, leaders go back to their preferred replicas on their own.
    balance: Option<LeaderBalance>,
    /// When this controller last checked the leaders' balance (or took over).
    last_balance_check: Option<Instant>,
    /// The topic settings of topics that do not override them, as the controller's broker has
    /// them statically (the cluster-wide dynamic ones go over them, [`Self::effective_topic_defaults`]):
    /// `unclean.leader.election.enable`, and `min.insync.replicas` for the eligible leader
    /// replicas.
    topic_defaults: TopicConfig,
}

impl Controller {
    pub fn new(
        session_timeout: Duration,
        new_cluster_id: ClusterId,
        limits: PartitionLimits,
    ) -> Self {
        let (last_heard, heard_via) = (BTreeMap::new(), BTreeMap::new());
        let next_start = 0;
        Self {
            session_timeout,
            new_cluster_id,
            last_heard,
            heard_via,
            next_start,
            limits,
            balance: None,
            last_balance_check: None,
            topic_defaults: TopicConfig::default(),
        }
    }

    /// Topics resolve the settings they do not override against `defaults`.
    pub fn with_topic_defaults(mut self, defaults: TopicConfig) -> Self {
        self.topic_defaults = defaults;
        self
    }

    /// The `min.insync.replicas` of a partition of `topic` in `state`, as low as any leader of
    /// it resolves it: the high watermark stops below it, which is what makes a replica
    /// eligible, so it must not be overestimated. The topic's own setting holds on every
    /// broker; without one each broker's default holds where it leads (as its registration
    /// says), and the lowest counts (KIP-966 makes it one cluster-wide setting instead).
    fn min_insync(&self, image: &MetadataImage, topic: TopicId, state: &PartitionState) -> usize {
        let replicas = state.settled_replica_count();
        let overrides = image.topics.get(&topic).map(|t| &t.config);
        if let Some(overrides) = overrides.filter(|o| o.contains_key(MIN_INSYNC_KEY)) {
            // The topic's own value holds whatever the defaults under it are.
            let config = self.topic_defaults.with_overrides(overrides);
            return config.map_or(1, |config| config.min_insync_for(replicas));
        }
        // A cluster-wide default holds on every broker alike. One this build cannot read (a
        // later build's) may hold on the brokers that can, whatever it is: the least there is.
        let cluster = image.broker_configs.get(&None);
        if let Some(value) = cluster.and_then(|settings| settings.get(MIN_INSYNC_KEY)) {
            return TopicConfig::parse_min_insync(MIN_INSYNC_KEY, value)
                .map_or(1, |set| TopicConfig::min_insync_of(Some(set), replicas));
        }
        let defaults = image.brokers.values().map(|b| b.min_insync_replicas);
        (defaults.chain([self.topic_defaults.min_insync_replicas]))
            .map(|setting| TopicConfig::min_insync_of(setting, replicas))
            .min()
            .unwrap_or(1)
    }

    /// `next`, a change of `before`, with its eligible leader replicas as the change of the
    /// in-sync set leaves them (KIP-966), within its replicas.
    fn with_eligible(
        &self,
        image: &MetadataImage,
        topic: TopicId,
        before: &PartitionState,
        mut next: PartitionState,
    ) -> PartitionState {
        let min_insync = self.min_insync(image, topic, &next);
        next.elr = eligible_after(&before.isr, &before.elr, &next.isr, min_insync);
        next.elr.retain(|r| next.replicas.contains(r));
        next
    }

    /// A partition whose in-sync replicas are all fenced, led by the first live eligible
    /// replica (KIP-966) if it has one: in sync alone, the in-sync ones it replaces eligible
    /// (they held everything below the high watermark too).
    fn eligible_election(
        &self,
        image: &MetadataImage,
        topic: TopicId,
        state: &PartitionState,
        live: impl Fn(&NodeId) -> bool,
    ) -> Option<PartitionState> {
        let leader = state.replicas.iter().copied().find(|r| state.elr.contains(r) && live(r))?;
        let name = image.topics.get(&topic).map_or("?", |t| t.name.as_str());
        tracing::info!(topic = name, isr = ?state.isr, elr = ?state.elr, %leader, "no in-sync replica is live: an eligible leader replica (KIP-966) leads");
        let next = PartitionState { isr: vec![leader], ..led_by(state, leader) };
        Some(self.with_completed(image, topic, self.with_eligible(image, topic, state, next)))
    }

    /// `state` led by out-of-sync replica `leader` (an unclean election): in sync alone, no
    /// replica eligible any more (what only the lost ones had is gone).
    fn led_uncleanly(
        &self,
        image: &MetadataImage,
        topic: TopicId,
        state: &PartitionState,
        leader: NodeId,
    ) -> PartitionState {
        let next = PartitionState { isr: vec![leader], elr: Vec::new(), ..led_by(state, leader) };
        self.with_completed(image, topic, next)
    }

    /// `next` with its reassignment completed if every target replica is in sync now.
    fn with_completed(
        &self,
        image: &MetadataImage,
        topic: TopicId,
        next: PartitionState,
    ) -> PartitionState {
        self.completed_reassignment(image, topic, &next).unwrap_or(next)
    }

    /// Leaders go back to their preferred replicas on their own, as `balance` says.
    pub fn with_leader_balance(mut self, balance: Option<LeaderBalance>) -> Self {
        self.balance = balance;
        self
    }

    /// Whether topic `topic` allows an out-of-sync replica to lead.
    fn allows_unclean(&self, image: &MetadataImage, topic: TopicId) -> bool {
        match image.topics.get(&topic).and_then(|t| t.config.get(UNCLEAN_KEY)) {
            Some(value) => value.eq_ignore_ascii_case("true"),
            None => self.decided_default(image, UNCLEAN_KEY).unclean_leader_election,
        }
    }

    /// The static topic defaults with the cluster-wide dynamic value of `key` over them, when
    /// it has one this build takes: what the controller decides by per partition, read one
    /// setting at a time rather than the whole cluster-wide set resolved for each.
    fn decided_default(&self, image: &MetadataImage, key: &str) -> TopicConfig {
        let mut config = self.topic_defaults.clone();
        let value = image.broker_configs.get(&None).and_then(|settings| settings.get(key));
        if value.is_some_and(|value| config.set(key, value).is_err()) {
            config = self.topic_defaults.clone();
        }
        config
    }

    /// The topic defaults decisions go by: this controller's broker's static ones with the
    /// cluster-wide dynamic settings over them. (A broker's own dynamic settings cannot hold
    /// the ones the controller decides by: `DynamicScope::ClusterOnly`.)
    fn effective_topic_defaults(&self, image: &MetadataImage) -> TopicConfig {
        match image.broker_configs.get(&None) {
            Some(cluster) => self.topic_defaults.with_broker_settings(cluster).0,
            None => self.topic_defaults.clone(),
        }
    }

    /// Takes over from the active controller that ran beside broker `node` and fell silent (Raft
    /// elected this one because it was): that broker gets a third of a session from now to be
    /// heard (a live one beats well within it: it is not the Raft voter's stall that fences its
    /// broker), not a whole one. Every other broker gets a whole session (this controller does
    /// not know when they were last heard).
    pub fn presume_silent(&mut self, node: NodeId, now: Instant) {
        let spent = self.session_timeout - self.session_timeout / 3;
        if let Some(heard) = now.checked_sub(spent) {
            self.last_heard.insert(node, heard);
        }
    }

    /// The batch of records `event` leads to, in the order they apply. The first decision of a
    /// new cluster forms it: its batch starts with the cluster's id.
    pub fn decide(
        &mut self,
        image: &MetadataImage,
        event: Event,
        now: Instant,
    ) -> Result<Vec<MetadataRecord>, Refusal> {
        let mut records = self.decide_event(image, event, now)?;
        if image.cluster_id.is_none() {
            records.insert(0, MetadataRecord::ClusterFormed { cluster_id: self.new_cluster_id });
        }
        Ok(records)
    }

    fn decide_event(
        &mut self,
        image: &MetadataImage,
        event: Event,
        now: Instant,
    ) -> Result<Vec<MetadataRecord>, Refusal> {
        match event {
            Event::Register { registration, cluster_id } => {
                let (node, protocol_version) = (registration.node, registration.protocol_version);
                if protocol_version != CLUSTER_PROTOCOL_VERSION {
                    return Err(Refusal::UnsupportedProtocol { node, protocol_version });
                }
                // Against the cluster this decision forms, when it forms it.
                let ours = image.cluster_id.unwrap_or(self.new_cluster_id);
                if let Some(theirs) = cluster_id.filter(|theirs| *theirs != ours) {
                    return Err(Refusal::OtherCluster { node, theirs, ours });
                }
                self.register(image, registration, now)
            }
            Event::Heartbeat { node, broker_epoch, via, storage_failing } => {
                let broker = registered(image, node, broker_epoch)?;
                self.last_heard.insert(node, now);
                match via {
                    Some(via) => self.heard_via.insert(node, via),
                    None => self.heard_via.remove(&node),
                };
                // KIP-858's failed log directory, for a broker of one: while its disk refuses
                // writes it is fenced, so its leaderships move and it leaves the in-sync sets at
                // once (a follower that cannot write would hold back their high watermarks until
                // `replica.lag.time.max.ms`). Not the last live broker: it keeps serving what it
                // holds, as no other could.
                if storage_failing && image.live_brokers().any(|(other, _)| *other != node) {
                    if broker.fenced {
                        return Ok(Vec::new());
                    }
                    tracing::warn!(%node, broker_epoch, "fencing a broker whose storage fails");
                    return Ok(self.fence(image, node, broker_epoch, false));
                }
                let mut records = Vec::new();
                if broker.fenced {
                    records.push(MetadataRecord::UnfenceBroker { node, broker_epoch });
                }
                // Every beat, not only the first: a partition left waiting (by a decision that
                // did not commit, say) is led again as soon as its replica is heard.
                records.extend(self.leaderless_led_by(image, node));
                Ok(records)
            }
            Event::ControlledShutdown { node, broker_epoch } => {
                registered(image, node, broker_epoch)?;
                self.last_heard.remove(&node);
                Ok(self.fence(image, node, broker_epoch, true))
            }
            Event::HeartbeatsLost { node, broker_epoch, via } => {
                if self.heard_via.get(&node) != Some(&via) {
                    // Not the connection it beats on now (or not heard by this controller).
                    return Ok(Vec::new());
                }
                self.heard_via.remove(&node);
                match registered(image, node, broker_epoch) {
                    Ok(broker) if !broker.fenced => {
                        self.last_heard.remove(&node);
                        Ok(self.fence(image, node, broker_epoch, false))
                    }
                    // Another registration, or fenced already: nothing.
                    _ => Ok(Vec::new()),
                }
            }
            Event::CreateTopic { topic, id } => self.create_topic(image, topic, id),
            Event::CreatePartitions(NewPartitions { name, count, assignment }) => {
                self.create_partitions(image, &name, count, assignment)
            }
            Event::DeleteTopic { name } => match image.topic_ids.get(&name) {
                Some(id) => Ok(vec![MetadataRecord::DeleteTopic { id: *id }]),
                None => Err(Refusal::UnknownTopic(name)),
            },
            Event::AllocateProducerIds { node, broker_epoch } => {
                registered(image, node, broker_epoch)?;
                let Some(next_producer_id) = image.next_producer_id.checked_add(PRODUCER_ID_BLOCK)
                else {
                    return Err(Refusal::ProducerIdsExhausted);
                };
                Ok(vec![MetadataRecord::ProducerIds { node, broker_epoch, next_producer_id }])
            }
            Event::AlterPartition(request) => self.alter_partition(image, request),
            Event::ElectLeaders { election, partitions } => {
                self.elect_leaders(image, election, partitions)
            }
            Event::Reassign(moves) => self.reassign(image, moves),
            Event::AlterTopicConfig { name, changes, replace } => {
                self.alter_topic_config(image, &name, &changes, replace)
            }
            Event::AlterBrokerConfig { node, changes, replace } => {
                self.alter_broker_config(image, node, &changes, replace)
            }
            Event::Tick => {
                let mut records = self.fence_the_silent(image, now);
                if records.is_empty() {
                    records = self.balance_leaders(image, now);
                }
                Ok(records)
            }
        }
    }

    /// A registration: the same process asking again keeps what it has; the same broker
    /// restarted on its data directory takes over at once (the directory's lock means the old
    /// process is gone); another directory claiming the node id is refused while the session of
    /// the one registered lives.
    fn register(
        &mut self,
        image: &MetadataImage,
        registration: Registration,
        now: Instant,
    ) -> Result<Vec<MetadataRecord>, Refusal> {
        let node = registration.node;
        if let Some(current) = image.brokers.get(&node) {
            if current.incarnation == registration.incarnation && !current.shut_down {
                // The same process asking again (its answer was lost): what it has stands.
                self.last_heard.insert(node, now);
                return Ok(Vec::new());
            }
            let heard = self.last_heard.get(&node);
            let alive =
                heard.is_some_and(|at| now.saturating_duration_since(*at) < self.session_timeout);
            // A later process on the same directory: the broker restarted. (A copy of the
            // directory on another host, running beside it, has a start time of its own but
            // cannot take the id back and forth: only a later start takes over.)
            let restarted = current.directory == registration.directory
                && registration.incarnation > current.incarnation;
            // Heard within its session, it is live even when fenced (its disk refusing writes,
            // say): its node id is not free.
            if alive && !restarted {
                return Err(Refusal::DuplicateRegistration(node));
            }
        }
        self.last_heard.insert(node, now);
        let mut records = self.without_leadership(image, node);
        let broker_epoch = image.last_broker_epoch.saturating_add(1);
        let previous = image.brokers.get(&node).cloned();
        records.push(MetadataRecord::RegisterBroker {
            broker_epoch,
            registration: registration.clone(),
        });
        if let Some(previous) = previous {
            // Against the image the registration leaves (the broker fenced, and a partition
            // changed twice in one batch going through both changes).
            let mut after = image.clone();
            match after.apply_batch(&records) {
                Ok(()) => records.extend(eligibility_revoked(&after, &previous, &registration)),
                Err(e) => tracing::error!(%node, "eligibility not revoked at a registration: {e}"),
            }
        }
        Ok(records)
    }

    fn create_topic(
        &mut self,
        image: &MetadataImage,
        topic: NewTopic,
        id: TopicId,
    ) -> Result<Vec<MetadataRecord>, Refusal> {
        let NewTopic { name, partitions, replication_factor, assignment, config } = topic;
        // Checked by the broker that asked, and again here: every broker makes a directory of
        // the name.
        validate_topic_name(&name).map_err(Refusal::InvalidTopicName)?;
        if image.topic_ids.contains_key(&name) {
            return Err(Refusal::TopicExists(name));
        }
        if image.topics.contains_key(&id) {
            return Err(Refusal::TopicIdTaken(id));
        }
        if partitions == 0 || partitions > PARTITIONS_MAX {
            return Err(Refusal::InvalidPartitions(partitions));
        }
        let placed = match assignment {
            Some(assignment) => {
                if assignment.len() != partitions as usize {
                    let why = format!("{} lists for {partitions} partitions", assignment.len());
                    return Err(Refusal::InvalidAssignment(why));
                }
                check_assignment(image, &assignment, None, 0)?;
                assignment
            }
            None => self.place(image, partitions, usize::from(replication_factor))?,
        };
        self.check_room(image, &name, &placed)?;
        let mut records = vec![MetadataRecord::CreateTopic { name, id, config }];
        records.extend(new_partitions(image, id, 0, placed));
        Ok(records)
    }

    /// A topic's settings changed: its new override set, checked against this controller's
    /// defaults, with what it does to the topic's partitions ([`Self::with_settings_effects`]).
    fn alter_topic_config(
        &self,
        image: &MetadataImage,
        name: &str,
        changes: &[ConfigChange],
        replace: bool,
    ) -> Result<Vec<MetadataRecord>, Refusal> {
        let Some((id, topic)) = image.topic_named(name) else {
            return Err(Refusal::UnknownTopic(name.to_string()));
        };
        let current = if replace { BTreeMap::new() } else { topic.config.clone() };
        let config = (self.effective_topic_defaults(image).altered_overrides(&current, changes))
            .map_err(|e| Refusal::InvalidConfig(e.0))?;
        if config == topic.config {
            return Ok(Vec::new());
        }
        let changed =
            MetadataRecord::TopicConfigChanged { id, config: config.into_iter().collect() };
        self.with_settings_effects(image, changed, &[id])
    }

    /// Dynamic broker settings changed (KIP-226): of broker `node`, or with `None` the
    /// cluster-wide defaults; the resource's new set, checked against this controller's static
    /// defaults (every broker's are its own; each checks a change it takes against its own
    /// before forwarding it). A cluster-wide change reaches the partitions of every topic that
    /// does not override the setting, as a topic's change reaches its own.
    fn alter_broker_config(
        &self,
        image: &MetadataImage,
        node: Option<NodeId>,
        changes: &[ConfigChange],
        replace: bool,
    ) -> Result<Vec<MetadataRecord>, Refusal> {
        if let Some(node) = node.filter(|node| !image.brokers.contains_key(node)) {
            return Err(Refusal::InvalidConfig(format!("broker {node} is not registered")));
        }
        let now = image.broker_configs.get(&node).cloned().unwrap_or_default();
        let current = if replace { BTreeMap::new() } else { now.clone() };
        let config =
            (self.topic_defaults.altered_broker_settings(&current, changes, node.is_some()))
                .map_err(|e| Refusal::InvalidConfig(e.0))?;
        if config == now {
            return Ok(Vec::new());
        }
        // Only the cluster-wide settings the controller decides by act on partitions.
        let decided = |set: &BTreeMap<String, String>| {
            (set.get(MIN_INSYNC_KEY).cloned(), set.get(UNCLEAN_KEY).cloned())
        };
        let topics: Vec<TopicId> = match node.is_none() && decided(&now) != decided(&config) {
            true => image.topics.keys().copied().collect(),
            false => Vec::new(),
        };
        let changed =
            MetadataRecord::BrokerConfigChanged { node, config: config.into_iter().collect() };
        self.with_settings_effects(image, changed, &topics)
    }

    /// A settings change with what it does to the partitions of `topics`: where it moves a
    /// partition's `min.insync.replicas`, its eligible leader replicas are cleared (KIP-966:
    /// their eligibility rested on the old value); where it allows an unclean election,
    /// partitions without a leader get one at once, as Kafka's controller does when the setting
    /// is turned on.
    fn with_settings_effects(
        &self,
        image: &MetadataImage,
        changed: MetadataRecord,
        topics: &[TopicId],
    ) -> Result<Vec<MetadataRecord>, Refusal> {
        let mut after = image.clone();
        after
            .apply_batch(std::slice::from_ref(&changed))
            .map_err(|e| Refusal::InvalidConfig(format!("the change does not apply: {e}")))?;
        let mut records = vec![changed];
        for id in topics {
            let Some(configured) = after.topics.get(id) else { continue };
            let unclean = self.allows_unclean(&after, *id);
            for (partition, state) in &configured.partitions {
                let mut next = state.clone();
                let moved =
                    self.min_insync(image, *id, state) != self.min_insync(&after, *id, state);
                if moved && !next.elr.is_empty() {
                    next.elr.clear();
                }
                if unclean {
                    if let Some(led) = self.unclean_election(&after, *id, *partition, &next) {
                        next = led;
                    }
                }
                if next != *state {
                    next.partition_epoch = state.partition_epoch.saturating_add(1);
                    let (topic, partition) = (*id, *partition);
                    records.push(MetadataRecord::PartitionState { topic, partition, state: next });
                }
            }
        }
        Ok(records)
    }

    fn create_partitions(
        &mut self,
        image: &MetadataImage,
        name: &str,
        count: u32,
        assignment: Option<Vec<Vec<NodeId>>>,
    ) -> Result<Vec<MetadataRecord>, Refusal> {
        let Some((id, topic)) = image.topic_named(name) else {
            return Err(Refusal::UnknownTopic(name.to_string()));
        };
        let held = u32::try_from(topic.partitions.len()).unwrap_or(u32::MAX);
        if count <= held || count > PARTITIONS_MAX {
            return Err(Refusal::InvalidPartitions(count));
        }
        // A partition being moved lists more replicas than it keeps: its target counts.
        let replication_factor =
            topic.partitions.values().map(|p| p.target_replicas().count()).max();
        let placed = match assignment {
            Some(assignment) => {
                if assignment.len() != (count - held) as usize {
                    let why = format!(
                        "{} lists for the {} new partitions",
                        assignment.len(),
                        count - held
                    );
                    return Err(Refusal::InvalidAssignment(why));
                }
                check_assignment(image, &assignment, replication_factor, held)?;
                assignment
            }
            None => {
                let mut placed = self.place(image, count, replication_factor.unwrap_or(1))?;
                placed.drain(..held as usize);
                placed
            }
        };
        self.check_room(image, name, &placed)?;
        Ok(new_partitions(image, id, held, placed))
    }

    /// Replicas for `partitions` partitions on distinct live brokers (`placement.rs`).
    fn place(
        &mut self,
        image: &MetadataImage,
        partitions: u32,
        replication_factor: usize,
    ) -> Result<Vec<Vec<NodeId>>, Refusal> {
        let live: Vec<Candidate> = image
            .live_brokers()
            .map(|(node, info)| Candidate { node: *node, rack: info.rack.clone() })
            .collect();
        let refused =
            Refusal::InvalidReplicationFactor { asked: replication_factor, live: live.len() };
        let placed = placement::place(&live, partitions, replication_factor, self.next_start)
            .ok_or(refused)?;
        self.next_start = self.next_start.wrapping_add(1);
        Ok(placed)
    }

    /// Refuses replicas that would take a broker past `max.broker.partitions`. The internal
    /// topic is exempt, and until it exists each live broker keeps its share of it free.
    fn check_room(
        &self,
        image: &MetadataImage,
        topic: &str,
        placed: &[Vec<NodeId>],
    ) -> Result<(), Refusal> {
        let limits = &self.limits;
        if topic == limits.internal_topic {
            return Ok(());
        }
        let mut new: BTreeMap<NodeId, u64> = BTreeMap::new();
        for node in placed.iter().flatten() {
            *new.entry(*node).or_default() += 1;
        }
        let live = image.live_brokers().count().max(1) as u64;
        let reserved = match image.topic_ids.contains_key(&limits.internal_topic) {
            true => 0,
            // Its replicas are at most one per live broker.
            false => (u64::from(limits.internal_partitions)
                * u64::from(limits.internal_replication_factor).min(live))
            .div_ceil(live),
        };
        let mut held_by: BTreeMap<NodeId, u64> = BTreeMap::new();
        for (_, _, state) in image.partitions() {
            for node in state.replicas.iter().filter(|n| new.contains_key(n)) {
                *held_by.entry(*node).or_default() += 1;
            }
        }
        for (node, new) in new {
            let held = held_by.get(&node).copied().unwrap_or(0);
            let limit = limits.per_broker;
            if held + reserved + new > u64::from(limit) {
                return Err(Refusal::TooManyPartitions { node, held, reserved, new, limit });
            }
        }
        Ok(())
    }

    /// Fences every live broker not heard from for the session timeout. One it has never heard
    /// from (this controller just took over) gets a full session from now.
    fn fence_the_silent(&mut self, image: &MetadataImage, now: Instant) -> Vec<MetadataRecord> {
        let mut silent = Vec::new();
        for (node, info) in image.live_brokers() {
            let heard = *self.last_heard.entry(*node).or_insert(now);
            if now.saturating_duration_since(heard) >= self.session_timeout {
                silent.push((*node, info.broker_epoch));
            }
        }
        if silent.is_empty() {
            return Vec::new();
        }
        // One broker after another, each against the image the ones before it leave.
        let (mut records, mut image) = (Vec::new(), image.clone());
        for (node, broker_epoch) in silent {
            let session = self.session_timeout;
            tracing::warn!(%node, broker_epoch, ?session, "fencing a broker silent for its session");
            let fenced = self.fence(&image, node, broker_epoch, false);
            match image.apply_batch(&fenced) {
                Ok(()) => records.extend(fenced),
                Err(e) => tracing::error!(%node, "cannot fence a silent broker: {e}"),
            }
        }
        records
    }
}

/// What a broker registering anew (`registration`, after `current`) takes away from the eligible
/// leader replicas (KIP-966): on another data directory, its own eligibility (its disk no
/// longer holds what made it eligible); with another `min.insync.replicas` default, every
/// eligibility that rested on the defaults (as Kafka clears them when the setting changes).
fn eligibility_revoked(
    image: &MetadataImage,
    current: &BrokerInfo,
    registration: &Registration,
) -> Vec<MetadataRecord> {
    let node = registration.node;
    let new_disk = current.directory != registration.directory;
    let new_default = current.min_insync_replicas != registration.min_insync_replicas;
    let mut records = Vec::new();
    for (topic, partition, state) in image.partitions() {
        let by_default =
            image.topics.get(&topic).is_some_and(|t| !t.config.contains_key(MIN_INSYNC_KEY));
        let elr: Vec<NodeId> = match (new_default && by_default, new_disk) {
            (true, _) => Vec::new(),
            (false, true) => state.elr.iter().copied().filter(|r| *r != node).collect(),
            (false, false) => continue,
        };
        if elr != state.elr {
            let partition_epoch = state.partition_epoch.saturating_add(1);
            let state = PartitionState { elr, partition_epoch, ..state.clone() };
            records.push(MetadataRecord::PartitionState { topic, partition, state });
        }
    }
    records
}

/// A manual assignment is honoured when every partition lists distinct registered brokers, as
/// many for each (the topic's replication factor, when it has one), one of them live to lead.
fn check_assignment(
    image: &MetadataImage,
    assignment: &[Vec<NodeId>],
    replication_factor: Option<usize>,
    first: u32,
) -> Result<(), Refusal> {
    let wanted = replication_factor.or_else(|| assignment.first().map(Vec::len));
    for (index, replicas) in (first..).zip(assignment) {
        let why = if replicas.is_empty() || !all_distinct(replicas) {
            Some(format!("partition {index}: {replicas:?} are not distinct brokers"))
        } else if Some(replicas.len()) != wanted {
            Some(format!("partition {index}: {} replicas, not {wanted:?}", replicas.len()))
        } else if let Some(unknown) = replicas.iter().find(|r| !image.brokers.contains_key(r)) {
            Some(format!("partition {index}: broker {unknown} is not registered"))
        } else if !replicas.iter().any(|r| image.is_live(r)) {
            Some(format!("partition {index}: none of {replicas:?} is live to lead it"))
        } else {
            None
        };
        if let Some(why) = why {
            return Err(Refusal::InvalidAssignment(why));
        }
    }
    Ok(())
}

/// The states of a topic's new partitions, numbered from `first`: each led by its first live
/// replica, with every live replica in sync (their logs are all empty), as Kafka's controller
/// creates them.
fn new_partitions(
    image: &MetadataImage,
    topic: TopicId,
    first: u32,
    placed: Vec<Vec<NodeId>>,
) -> Vec<MetadataRecord> {
    let live = |n: &NodeId| image.is_live(n);
    placed
        .into_iter()
        .zip(first..)
        .map(|(replicas, partition)| {
            let first = replicas.first().copied().unwrap_or(NodeId(-1));
            let leader = replicas.iter().copied().find(live).unwrap_or(first);
            let mut isr: Vec<NodeId> = replicas.iter().copied().filter(live).collect();
            if isr.is_empty() {
                isr.push(leader);
            }
            let state = PartitionState {
                replicas,
                isr,
                leader: Some(leader),
                leader_epoch: LeaderEpoch(0),
                partition_epoch: 0,
                ..PartitionState::default()
            };
            MetadataRecord::PartitionState { topic, partition: PartitionId(partition), state }
        })
        .collect()
}

/// The broker registered under `broker_epoch` and not shut down, or why not.
fn registered(
    image: &MetadataImage,
    node: NodeId,
    broker_epoch: u64,
) -> Result<&BrokerInfo, Refusal> {
    image
        .brokers
        .get(&node)
        .filter(|b| b.broker_epoch == broker_epoch && !b.shut_down)
        .ok_or(Refusal::StaleBrokerEpoch { node, broker_epoch })
}

impl Controller {
    /// A leader's new in-sync set, checked as Kafka's controller checks an AlterPartition: from the
    /// registered leader, in the partition's leader and partition epochs, within its replicas, with
    /// the leader, and with only live replicas joining. The partition epoch goes up by one; the
    /// eligible leader replicas follow the set, and a reassignment whose target replicas are now all
    /// in sync completes.
    fn alter_partition(
        &self,
        image: &MetadataImage,
        request: IsrRequest,
    ) -> Result<Vec<MetadataRecord>, Refusal> {
        let IsrRequest { node, broker_epoch, topic, partition, leader_epoch, partition_epoch, isr } =
            request;
        registered(image, node, broker_epoch)?;
        let state = image
            .topics
            .get(&topic)
            .and_then(|t| t.partitions.get(&partition))
            .ok_or(Refusal::UnknownPartition(topic, partition))?;
        // In Kafka's order: the leader first, then its epoch.
        if state.leader != Some(node) {
            return Err(Refusal::NotLeader(node));
        }
        if leader_epoch != state.leader_epoch {
            let current = state.leader_epoch;
            return Err(Refusal::FencedLeaderEpoch { asked: leader_epoch, current });
        }
        if partition_epoch != state.partition_epoch {
            let current = state.partition_epoch;
            return Err(Refusal::StalePartitionEpoch { asked: partition_epoch, current });
        }
        if !all_distinct(&isr) || !isr.contains(&node) {
            return Err(Refusal::InvalidIsr(format!("{isr:?} with leader {node}")));
        }
        if let Some(stranger) = isr.iter().find(|r| !state.replicas.contains(r)) {
            return Err(Refusal::InvalidIsr(format!("{stranger} is not a replica")));
        }
        if let Some(ineligible) = isr.iter().find(|r| !state.isr.contains(r) && !image.is_live(r)) {
            return Err(Refusal::IneligibleReplica(*ineligible));
        }
        if isr.len() == state.isr.len() && isr.iter().all(|r| state.isr.contains(r)) {
            return Ok(Vec::new());
        }
        let next = PartitionState {
            isr,
            partition_epoch: state.partition_epoch.saturating_add(1),
            ..state.clone()
        };
        let next = self.with_eligible(image, topic, state, next);
        let next = self.with_completed(image, topic, next);
        Ok(vec![MetadataRecord::PartitionState { topic, partition, state: next }])
    }
}

impl Controller {
    /// Takes `node`'s leaderships away and then fences it; a shutdown also ends its
    /// registration.
    fn fence(
        &self,
        image: &MetadataImage,
        node: NodeId,
        broker_epoch: u64,
        shutdown: bool,
    ) -> Vec<MetadataRecord> {
        let mut records = self.without_leadership(image, node);
        records.push(MetadataRecord::FenceBroker { node, broker_epoch, shutdown });
        records
    }

    /// The partition changes that leave `node` leading nothing and out of every in-sync set it
    /// shares: a partition it leads gets the first other live in-sync replica, in replica
    /// order, as leader, with a new leader epoch; with none, the first live replica if the
    /// topic allows an unclean election, else none.
    fn without_leadership(&self, image: &MetadataImage, node: NodeId) -> Vec<MetadataRecord> {
        let live = |n: &NodeId| *n != node && image.is_live(n);
        let mut records = Vec::new();
        for (topic, partition, state) in image.partitions() {
            let leads = state.leader == Some(node);
            let shares = state.isr.contains(&node) && state.isr.len() > 1;
            if !leads && !shares {
                continue;
            }
            let mut next = state.clone();
            if shares {
                next.isr.retain(|r| *r != node);
            }
            let mut next = self.with_eligible(image, topic, state, next);
            if leads {
                next.leader =
                    state.replicas.iter().copied().find(|r| next.isr.contains(r) && live(r));
                if next.leader.is_none() {
                    // No live in-sync replica: an eligible one (KIP-966), else, where the topic
                    // allows it, any live one.
                    if let Some(eligible) = self.eligible_election(image, topic, &next, live) {
                        next = eligible;
                    } else if self.allows_unclean(image, topic) {
                        if let Some(unclean) = unclean_leader(image, topic, partition, state, live)
                        {
                            next = self.led_uncleanly(image, topic, &next, unclean);
                        }
                    }
                }
                next.leader_epoch = LeaderEpoch(state.leader_epoch.0.saturating_add(1));
            }
            next.partition_epoch = state.partition_epoch.saturating_add(1);
            records.push(MetadataRecord::PartitionState { topic, partition, state: next });
        }
        records
    }

    /// Elections asked for: each partition named (every partition, for `None`) that the
    /// election would give another leader gets it, in a new leader epoch; the others are left
    /// as they are (the asking broker tells which from the metadata before and after).
    fn elect_leaders(
        &self,
        image: &MetadataImage,
        election: Election,
        partitions: Option<Vec<(String, PartitionId)>>,
    ) -> Result<Vec<MetadataRecord>, Refusal> {
        // Each partition once (a batch changing one twice would not apply); one the metadata
        // does not have (deleted since the asking broker looked) is left out, as Kafka leaves
        // it out with its own error rather than fail the others.
        let asked: BTreeSet<(TopicId, PartitionId)> = match partitions {
            None => image.partitions().map(|(topic, partition, _)| (topic, partition)).collect(),
            Some(named) => (named.into_iter())
                .filter_map(|(name, partition)| Some((*image.topic_ids.get(&name)?, partition)))
                .collect(),
        };
        let mut records = Vec::new();
        for (topic, partition) in asked {
            let Some(state) = image.topics.get(&topic).and_then(|t| t.partitions.get(&partition))
            else {
                continue;
            };
            let elected = match election {
                Election::Preferred => preferred_election(image, state),
                Election::Unclean => self.unclean_election(image, topic, partition, state),
            };
            if let Some(next) = elected {
                records.push(MetadataRecord::PartitionState { topic, partition, state: next });
            }
        }
        Ok(records)
    }

    /// Every `leader.imbalance.check.interval.seconds` (from when this controller took over),
    /// the preferred replicas of the brokers out of balance take their partitions back.
    fn balance_leaders(&mut self, image: &MetadataImage, now: Instant) -> Vec<MetadataRecord> {
        let Some(balance) = self.balance else { return Vec::new() };
        let last = *self.last_balance_check.get_or_insert(now);
        if now.saturating_duration_since(last) < balance.interval {
            return Vec::new();
        }
        self.last_balance_check = Some(now);
        // Per preferred replica: its partitions, and how many of them others lead.
        let mut preferred: BTreeMap<NodeId, (u64, u64)> = BTreeMap::new();
        for (_, _, state) in image.partitions() {
            if let Some(first) = state.replicas.first() {
                let counts = preferred.entry(*first).or_default();
                counts.0 += 1;
                counts.1 += u64::from(state.leader != Some(*first));
            }
        }
        let out_of_balance = |node: &NodeId| {
            preferred.get(node).is_some_and(|(all, elsewhere)| {
                *elsewhere * 100 > *all * u64::from(balance.imbalance_percentage)
            })
        };
        image
            .partitions()
            .filter(|(_, _, state)| state.replicas.first().is_some_and(out_of_balance))
            .filter_map(|(topic, partition, state)| {
                let next = preferred_election(image, state)?;
                Some(MetadataRecord::PartitionState { topic, partition, state: next })
            })
            // Kafka's controller moves at most this many leaders a round; the rest wait for the
            // next check.
            .take(BALANCE_MOVES_MAX)
            .collect()
    }

    /// The partition changes that make `node` (heard from) the leader of the partitions that
    /// have none and keep it in sync; and, where the topic allows an unclean election, of those
    /// it is an out-of-sync replica of while no in-sync one is live.
    fn leaderless_led_by(&self, image: &MetadataImage, node: NodeId) -> Vec<MetadataRecord> {
        let mut records = Vec::new();
        for (topic, partition, state) in image.partitions() {
            if state.leader.is_some() || !state.replicas.contains(&node) {
                continue;
            }
            let clean = state.isr.contains(&node);
            let none_in_sync = !state.isr.iter().any(|r| image.is_live(r));
            let next = if clean {
                led_by(state, node)
            } else if let Some(eligible) =
                self.eligible_election(image, topic, state, |r| *r == node && none_in_sync)
            {
                eligible
            } else if none_in_sync
                && !state.elr.iter().any(|r| image.is_live(r))
                && self.allows_unclean(image, topic)
            {
                warn_unclean(image, topic, partition, state, node);
                self.led_uncleanly(image, topic, state, node)
            } else {
                continue;
            };
            records.push(MetadataRecord::PartitionState { topic, partition, state: next });
        }
        records
    }
}

/// The partition led by its preferred replica, if another leads it now and the preferred one
/// is live and in sync.
fn preferred_election(image: &MetadataImage, state: &PartitionState) -> Option<PartitionState> {
    let preferred = *state.replicas.first()?;
    if state.leader == Some(preferred)
        || !state.isr.contains(&preferred)
        || !image.is_live(&preferred)
    {
        return None;
    }
    Some(led_by(state, preferred))
}

/// Partition reassignments (KIP-455), as Kafka's controller runs them: the target replicas
/// missing from a partition are added (they follow its leader and catch up), and once every
/// target replica is in sync the others are removed, in one change. Until then the partition
/// lists the target replicas first, then those to be removed.
impl Controller {
    /// The changes the moves asked for lead to; a move that cannot be made refuses them all
    /// (the asking broker checked each against its metadata first).
    fn reassign(
        &self,
        image: &MetadataImage,
        moves: Vec<Reassignment>,
    ) -> Result<Vec<MetadataRecord>, Refusal> {
        let mut records = Vec::new();
        let mut added: BTreeMap<String, Vec<Vec<NodeId>>> = BTreeMap::new();
        let mut seen = BTreeSet::new();
        for Reassignment { topic: name, partition, target } in moves {
            if !seen.insert((name.clone(), partition)) {
                let why = format!("{name}-{partition} is named twice");
                return Err(Refusal::InvalidAssignment(why));
            }
            let Some((topic, info)) = image.topic_named(&name) else {
                return Err(Refusal::UnknownTopic(name));
            };
            let Some(state) = info.partitions.get(&partition) else {
                return Err(Refusal::UnknownPartition(topic, partition));
            };
            let next = match target {
                Some(target) => {
                    let one = std::slice::from_ref(&target);
                    check_assignment(image, one, None, partition.0)?;
                    let new: Vec<NodeId> =
                        target.iter().copied().filter(|r| !state.replicas.contains(r)).collect();
                    added.entry(name.clone()).or_default().push(new);
                    self.moved_to(image, topic, state, &target)?
                }
                None if !state.is_reassigning() => {
                    return Err(Refusal::NoReassignmentInProgress(name, partition));
                }
                None => {
                    let original: Vec<NodeId> = state.original_replicas().collect();
                    self.moved_to(image, topic, state, &original)?
                }
            };
            if let Some(state) = next {
                records.push(MetadataRecord::PartitionState { topic, partition, state });
            }
        }
        for (name, new) in added {
            self.check_room(image, &name, &new)?;
        }
        Ok(records)
    }

    /// `state` on its way to `target` (a new reassignment, which replaces one in progress, or
    /// back to its original replicas): `None` when it is there already.
    fn moved_to(
        &self,
        image: &MetadataImage,
        topic: TopicId,
        state: &PartitionState,
        target: &[NodeId],
    ) -> Result<Option<PartitionState>, Refusal> {
        let original: Vec<NodeId> = state.original_replicas().collect();
        let removing: Vec<NodeId> =
            original.iter().copied().filter(|r| !target.contains(r)).collect();
        let adding: Vec<NodeId> =
            target.iter().copied().filter(|r| !original.contains(r)).collect();
        let replicas: Vec<NodeId> = target.iter().chain(&removing).copied().collect();
        let mut next = PartitionState {
            isr: state.isr.iter().copied().filter(|r| replicas.contains(r)).collect(),
            replicas,
            adding,
            removing,
            partition_epoch: state.partition_epoch.saturating_add(1),
            ..state.clone()
        };
        if next.isr.is_empty() {
            // Only replicas being added were in sync: dropping them would lose what they hold.
            let why = format!(
                "moving {:?} to {target:?} would leave none of in-sync replicas {:?}",
                state.replicas, state.isr
            );
            return Err(Refusal::InvalidAssignment(why));
        }
        next = self.with_eligible(image, topic, state, next);
        next = led_within(image, state, self.with_completed(image, topic, next));
        let unchanged = PartitionState { partition_epoch: state.partition_epoch, ..next.clone() };
        Ok((unchanged != *state).then_some(next))
    }

    /// `next` (a change of `before`) once its reassignment is complete, if every target replica
    /// is in sync: the target replicas alone, led by one of them.
    fn completed_reassignment(
        &self,
        image: &MetadataImage,
        topic: TopicId,
        next: &PartitionState,
    ) -> Option<PartitionState> {
        if !next.is_reassigning() || !next.target_replicas().all(|r| next.isr.contains(&r)) {
            return None;
        }
        let target: Vec<NodeId> = next.target_replicas().collect();
        let name = image.topics.get(&topic).map_or("?", |t| t.name.as_str());
        tracing::info!(topic = name, from = ?next.original_replicas().collect::<Vec<_>>(), to = ?target, "reassignment complete: every target replica is in sync");
        let completed = PartitionState {
            isr: next.isr.iter().copied().filter(|r| target.contains(r)).collect(),
            replicas: target,
            adding: Vec::new(),
            removing: Vec::new(),
            ..next.clone()
        };
        let completed = self.with_eligible(image, topic, next, completed);
        Some(led_within(image, next, completed))
    }
}

impl Controller {
    /// A leader for a partition that has none: a live in-sync replica, else a live eligible one
    /// (KIP-966), else any live replica, its in-sync set alone (asked for explicitly, so
    /// whatever the topic's setting).
    fn unclean_election(
        &self,
        image: &MetadataImage,
        topic: TopicId,
        partition: PartitionId,
        state: &PartitionState,
    ) -> Option<PartitionState> {
        if state.leader.is_some() {
            return None;
        }
        let live = |r: &NodeId| image.is_live(r);
        let in_sync = state.replicas.iter().copied().find(|r| state.isr.contains(r) && live(r));
        if let Some(leader) = in_sync {
            return Some(led_by(state, leader));
        }
        if let Some(eligible) = self.eligible_election(image, topic, state, live) {
            return Some(eligible);
        }
        let unclean = unclean_leader(image, topic, partition, state, live)?;
        Some(self.led_uncleanly(image, topic, state, unclean))
    }
}

/// `next` (a change of `before`), its leader kept if it is still a replica, else led by its
/// first live in-sync replica (or none) in the next leader epoch after `before`'s: a
/// reassignment removed it.
fn led_within(
    image: &MetadataImage,
    before: &PartitionState,
    next: PartitionState,
) -> PartitionState {
    if next.leader.is_none_or(|l| next.replicas.contains(&l)) {
        return next;
    }
    let leader = next.replicas.iter().copied().find(|r| next.isr.contains(r) && image.is_live(r));
    PartitionState {
        leader,
        leader_epoch: LeaderEpoch(before.leader_epoch.0.saturating_add(1)),
        ..next
    }
}

/// `state` led by `leader` in the next leader epoch (its partition epoch moves too).
fn led_by(state: &PartitionState, leader: NodeId) -> PartitionState {
    PartitionState {
        leader: Some(leader),
        leader_epoch: LeaderEpoch(state.leader_epoch.0.saturating_add(1)),
        partition_epoch: state.partition_epoch.saturating_add(1),
        ..state.clone()
    }
}

/// The first replica `live` allows, to lead out of sync (its in-sync set alone), with the
/// warning such an election gets.
fn unclean_leader(
    image: &MetadataImage,
    topic: TopicId,
    partition: PartitionId,
    state: &PartitionState,
    live: impl Fn(&NodeId) -> bool,
) -> Option<NodeId> {
    let unclean = state.replicas.iter().copied().find(|r| live(r))?;
    warn_unclean(image, topic, partition, state, unclean);
    Some(unclean)
}

/// An unclean election is logged where it is decided: what only the lost in-sync replicas had
/// is gone.
fn warn_unclean(
    image: &MetadataImage,
    topic: TopicId,
    partition: PartitionId,
    state: &PartitionState,
    leader: NodeId,
) {
    let name = image.topics.get(&topic).map_or("?", |t| t.name.as_str());
    tracing::warn!(
        topic = name,
        %partition,
        isr = ?state.isr,
        %leader,
        "unclean leader election (unclean.leader.election.enable): no in-sync replica is live, \
         so out-of-sync replica {leader} leads; records only the in-sync replicas had are lost"
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::metadata::Endpoints;

    /// The `min.insync.replicas` eligible replicas are decided by is never more than a leader
    /// holds: a cluster-wide value this build cannot read counts as 1 (no replica becomes
    /// eligible by it), not as this controller's static default.
    #[test]
    fn an_unreadable_cluster_wide_min_insync_counts_as_the_least() {
        let controller = Controller::new(TIMEOUT, ClusterId(7), limits());
        let mut image = MetadataImage::default();
        let nodes: Vec<NodeId> = [1, 2, 3].into_iter().map(NodeId).collect();
        let state = PartitionState {
            replicas: nodes.clone(),
            isr: nodes,
            leader: Some(NodeId(1)),
            leader_epoch: LeaderEpoch(1),
            partition_epoch: 0,
            adding: Vec::new(),
            removing: Vec::new(),
            elr: Vec::new(),
        };
        let topic = TopicId(1);
        assert_eq!(controller.min_insync(&image, topic, &state), 2, "the static default");
        let cluster_wide =
            |value: &str| [(MIN_INSYNC_KEY.to_string(), value.to_string())].into_iter().collect();
        image.broker_configs.insert(None, cluster_wide("3"));
        assert_eq!(controller.min_insync(&image, topic, &state), 3);
        image.broker_configs.insert(None, cluster_wide("a later build's"));
        assert_eq!(controller.min_insync(&image, topic, &state), 1);
    }

    const TIMEOUT: Duration = Duration::from_secs(9);

    fn endpoints() -> Endpoints {
        Endpoints { kafka: ("127.0.0.1".into(), 9092), native: ("127.0.0.1".into(), 9192) }
    }

    /// Decides and applies, as the controller and every broker would.
    fn commit(
        controller: &mut Controller,
        image: &mut MetadataImage,
        event: Event,
        now: Instant,
    ) -> Result<Vec<MetadataRecord>, Refusal> {
        let records = controller.decide(image, event, now)?;
        image.apply_batch(&records).expect("the controller's records apply");
        Ok(records)
    }

    /// Registers and unfences brokers `1..=count`; returns their epochs.
    fn cluster(count: i32, now: Instant) -> (Controller, MetadataImage, Vec<u64>) {
        let (mut controller, mut image) =
            (Controller::new(TIMEOUT, ClusterId(7), limits()), MetadataImage::default());
        let mut epochs = Vec::new();
        for n in 1..=count {
            let register = register(n, 1);
            commit(&mut controller, &mut image, register, now).expect("registered");
            let broker_epoch = image.brokers[&NodeId(n)].broker_epoch;
            let beat = Event::Heartbeat {
                node: NodeId(n),
                broker_epoch,
                via: None,
                storage_failing: false,
            };
            commit(&mut controller, &mut image, beat, now).expect("heartbeat");
            epochs.push(broker_epoch);
        }
        (controller, image, epochs)
    }

    fn register(node: i32, incarnation: u64) -> Event {
        // Each process on a data directory of its own, unless a test says otherwise.
        let registration = Registration {
            node: NodeId(node),
            incarnation,
            directory: u128::from(incarnation),
            rack: None,
            endpoints: endpoints(),
            protocol_version: CLUSTER_PROTOCOL_VERSION,
            min_insync_replicas: None,
        };
        Event::Register { registration, cluster_id: None }
    }

    fn limits() -> PartitionLimits {
        PartitionLimits {
            per_broker: 1000,
            internal_topic: "__consumer_offsets".into(),
            internal_partitions: 16,
            internal_replication_factor: 1,
        }
    }

    fn create(name: &str, partitions: u32, replication_factor: u16) -> Event {
        let id = TopicId(name.bytes().map(u128::from).sum());
        let topic = NewTopic {
            name: name.into(),
            partitions,
            replication_factor,
            assignment: None,
            config: Vec::new(),
        };
        Event::CreateTopic { topic, id }
    }

    #[test]
    fn the_first_decision_forms_the_cluster_and_its_id_never_changes() {
        let now = Instant::now();
        let (mut controller, mut image) =
            (Controller::new(TIMEOUT, ClusterId(7), limits()), MetadataImage::default());
        let first = commit(&mut controller, &mut image, Event::Tick, now).expect("a tick");
        assert_eq!(first, vec![MetadataRecord::ClusterFormed { cluster_id: ClusterId(7) }]);
        // A later controller, with an id of its own in mind, keeps the cluster's.
        let mut next = Controller::new(TIMEOUT, ClusterId(8), limits());
        commit(&mut next, &mut image, register(1, 1), now).expect("registered");
        assert_eq!(image.cluster_id, Some(ClusterId(7)));
        let other = vec![MetadataRecord::ClusterFormed { cluster_id: ClusterId(8) }];
        assert!(image.apply_batch(&other).is_err(), "a second id is refused");
        assert_eq!(image.cluster_id, Some(ClusterId(7)));
        // Kafka's text form: 22 characters of URL-safe base64, read back as written.
        let text = ClusterId(u128::MAX - 12345).to_string();
        assert_eq!(text.len(), 22);
        assert_eq!(text.parse::<ClusterId>(), Ok(ClusterId(u128::MAX - 12345)));
        assert!("not-an-id".parse::<ClusterId>().is_err());
    }

    #[test]
    fn registrations_are_idempotent_exclusive_and_ended_by_a_shutdown() {
        let now = Instant::now();
        let (mut controller, mut image) =
            (Controller::new(TIMEOUT, ClusterId(7), limits()), MetadataImage::default());
        commit(&mut controller, &mut image, register(1, 7), now).expect("registered");
        let first = image.brokers[&NodeId(1)].broker_epoch;
        assert!(image.brokers[&NodeId(1)].fenced, "fenced until its first heartbeat");
        let beat = |broker_epoch| Event::Heartbeat {
            node: NodeId(1),
            broker_epoch,
            via: None,
            storage_failing: false,
        };
        commit(&mut controller, &mut image, beat(first), now).expect("heartbeat");
        assert!(!image.brokers[&NodeId(1)].fenced);
        // The same process asking again keeps its registration; another is refused while the
        // session lives, and takes over once it has expired.
        let again = commit(&mut controller, &mut image, register(1, 7), now).expect("same");
        assert!(again.is_empty() && image.brokers[&NodeId(1)].broker_epoch == first);
        let other = controller.decide(&image, register(1, 8), now);
        assert_eq!(other, Err(Refusal::DuplicateRegistration(NodeId(1))));
        // The same broker restarted on its own data directory (after kill -9, say) takes over
        // at once: its directory's lock says the old process is gone.
        let mut restarted = register(1, 9);
        if let Event::Register { registration, .. } = &mut restarted {
            registration.directory = 7;
        }
        // A directory of another cluster is refused before anything is decided.
        let mut foreign = register(3, 1);
        if let Event::Register { cluster_id, .. } = &mut foreign {
            *cluster_id = Some(ClusterId(99));
        }
        let (node, theirs, ours) = (NodeId(3), ClusterId(99), ClusterId(7));
        assert_eq!(
            controller.decide(&image, foreign.clone(), now),
            Err(Refusal::OtherCluster { node, theirs, ours })
        );
        // Before the cluster is formed, against the id this controller would form it with.
        let mut unformed = Controller::new(TIMEOUT, ClusterId(99), limits());
        let empty = MetadataImage::default();
        assert!(unformed.decide(&empty, foreign, now).is_ok(), "its own cluster, to be formed");
        let mut other = register(3, 1);
        if let Event::Register { cluster_id, .. } = &mut other {
            *cluster_id = Some(ClusterId(5));
        }
        let (theirs, ours) = (ClusterId(5), ClusterId(99));
        assert_eq!(
            unformed.decide(&empty, other, now),
            Err(Refusal::OtherCluster { node, theirs, ours })
        );
        // An earlier process on the same directory (a copy of it, or a late request of the
        // process before) does not take over from the later one.
        let mut earlier = register(1, 6);
        if let Event::Register { registration, .. } = &mut earlier {
            registration.directory = 7;
        }
        assert_eq!(
            controller.decide(&image, earlier, now),
            Err(Refusal::DuplicateRegistration(NodeId(1)))
        );
        let mut taken_over = image.clone();
        commit(&mut controller, &mut taken_over, restarted, now).expect("restarted");
        assert!(taken_over.brokers[&NodeId(1)].broker_epoch > first, "a new registration");
        // (The rest goes on from the first process's registration, in `image`.)
        // A broker speaking another cluster protocol is refused before anything else.
        let mut newer = register(2, 1);
        if let Event::Register { registration, .. } = &mut newer {
            registration.protocol_version = CLUSTER_PROTOCOL_VERSION + 1;
        }
        let refused = controller.decide(&image, newer, now);
        let protocol_version = CLUSTER_PROTOCOL_VERSION + 1;
        assert_eq!(
            refused,
            Err(Refusal::UnsupportedProtocol { node: NodeId(2), protocol_version })
        );
        let expired = now + TIMEOUT;
        commit(&mut controller, &mut image, register(1, 8), expired).expect("took over");
        let second = image.brokers[&NodeId(1)].broker_epoch;
        assert!(second > first);
        let stale = controller.decide(&image, beat(first), expired);
        assert_eq!(stale, Err(Refusal::StaleBrokerEpoch { node: NodeId(1), broker_epoch: first }));
        // A controlled shutdown ends the registration: a late heartbeat does not revive it.
        commit(&mut controller, &mut image, beat(second), expired).expect("heartbeat");
        let shutdown = Event::ControlledShutdown { node: NodeId(1), broker_epoch: second };
        commit(&mut controller, &mut image, shutdown, expired).expect("shut down");
        let late = controller.decide(&image, beat(second), expired);
        assert_eq!(late, Err(Refusal::StaleBrokerEpoch { node: NodeId(1), broker_epoch: second }));
        commit(&mut controller, &mut image, register(1, 8), expired).expect("back");
    }

    #[test]
    fn a_silent_leader_is_fenced_after_its_session_and_an_in_sync_replica_takes_over() {
        let start = Instant::now();
        let (mut controller, mut image, epochs) = cluster(3, start);
        commit(&mut controller, &mut image, create("t", 3, 3), start).expect("created");
        let leaders: Vec<_> = image.partitions().map(|(_, _, p)| p.leader).collect();
        assert_eq!(leaders, [Some(NodeId(1)), Some(NodeId(2)), Some(NodeId(3))]);
        // A partition whose only replica is broker 1.
        let solo = NewTopic {
            assignment: Some(vec![vec![NodeId(1)]]),
            ..NewTopic {
                name: "solo".into(),
                partitions: 1,
                replication_factor: 1,
                assignment: None,
                config: Vec::new(),
            }
        };
        let solo = Event::CreateTopic { topic: solo, id: TopicId(99) };
        commit(&mut controller, &mut image, solo, start).expect("created");
        // Brokers 2 and 3 beat; broker 1 is silent.
        let later = start + TIMEOUT - Duration::from_millis(1);
        for n in [2, 3] {
            let beat = Event::Heartbeat {
                node: NodeId(n),
                broker_epoch: epochs[n as usize - 1],
                via: None,
                storage_failing: false,
            };
            commit(&mut controller, &mut image, beat, later).expect("heartbeat");
        }
        commit(&mut controller, &mut image, Event::Tick, later).expect("tick");
        assert!(!image.brokers[&NodeId(1)].fenced, "not before its session is over");
        commit(&mut controller, &mut image, Event::Tick, start + TIMEOUT).expect("tick");
        assert!(image.brokers[&NodeId(1)].fenced);
        let state = |image: &MetadataImage, topic: u128| {
            image.topics[&TopicId(topic)].partitions[&PartitionId(0)].clone()
        };
        let t = TopicId("t".bytes().map(u128::from).sum()).0;
        // The next in-sync replica leads, in a new epoch; the fenced one leaves the set.
        let first = state(&image, t);
        assert_eq!(
            (first.leader, first.leader_epoch, first.partition_epoch),
            (Some(NodeId(2)), LeaderEpoch(1), 1)
        );
        assert!(!first.isr.contains(&NodeId(1)), "{first:?}");
        // The lone replica's partition has nobody else: it waits for its broker.
        let alone = state(&image, 99);
        assert_eq!((alone.leader, alone.leader_epoch), (None, LeaderEpoch(1)));
        // Broker 1 comes back under a new epoch: it leads its lone partition again, in another
        // leader epoch, and follows the other (its leader asks for it once it has caught up).
        let register = register(1, 2);
        let back = start + TIMEOUT * 2;
        commit(&mut controller, &mut image, register, back).expect("registered");
        let broker_epoch = image.brokers[&NodeId(1)].broker_epoch;
        commit(
            &mut controller,
            &mut image,
            Event::Heartbeat { node: NodeId(1), broker_epoch, via: None, storage_failing: false },
            back,
        )
        .expect("heartbeat");
        let alone = state(&image, 99);
        assert_eq!((alone.leader, alone.leader_epoch), (Some(NodeId(1)), LeaderEpoch(2)));
        let first = state(&image, t);
        assert_eq!((first.leader, first.leader_epoch), (Some(NodeId(2)), LeaderEpoch(1)));
    }

    /// Brings broker `node` back under a new registration (`incarnation`), heard at `now`.
    fn come_back(
        controller: &mut Controller,
        image: &mut MetadataImage,
        node: i32,
        incarnation: u64,
        now: Instant,
    ) {
        commit(controller, image, register(node, incarnation), now).expect("registered");
        let broker_epoch = image.brokers[&NodeId(node)].broker_epoch;
        let beat = Event::Heartbeat {
            node: NodeId(node),
            broker_epoch,
            via: None,
            storage_failing: false,
        };
        commit(controller, image, beat, now).expect("heartbeat");
    }

    /// A broker whose heartbeat says its storage fails is fenced (its leaderships move to an
    /// in-sync replica, it leaves every in-sync set it shares) and stays fenced while it says
    /// so, unless no other broker is live; a heartbeat saying the storage takes writes again
    /// unfences it.
    #[test]
    fn a_broker_whose_storage_fails_is_fenced_until_it_takes_writes_unless_it_is_the_last() {
        let now = Instant::now();
        let (mut controller, mut image, epochs) = cluster(3, now);
        let topic = NewTopic {
            name: "t".into(),
            partitions: 2,
            replication_factor: 3,
            assignment: Some(vec![
                vec![NodeId(3), NodeId(1), NodeId(2)],
                vec![NodeId(1), NodeId(2), NodeId(3)],
            ]),
            config: Vec::new(),
        };
        let create = Event::CreateTopic { topic, id: TopicId(1) };
        commit(&mut controller, &mut image, create, now).expect("created");
        let beat = |node: i32, storage_failing: bool| Event::Heartbeat {
            node: NodeId(node),
            broker_epoch: epochs[node as usize - 1],
            via: None,
            storage_failing,
        };
        let partition = |image: &MetadataImage, p: u32| {
            image.topics[&TopicId(1)].partitions[&PartitionId(p)].clone()
        };
        let failing = commit(&mut controller, &mut image, beat(3, true), now).expect("beat");
        assert!(image.brokers[&NodeId(3)].fenced, "fenced: {failing:?}");
        let led = partition(&image, 0);
        assert_eq!(
            (led.leader, led.isr, led.leader_epoch),
            (Some(NodeId(1)), vec![NodeId(1), NodeId(2)], LeaderEpoch(1))
        );
        assert_eq!(partition(&image, 1).isr, [NodeId(1), NodeId(2)], "out of the sets it shared");
        // While it fails, its beats change nothing.
        assert_eq!(commit(&mut controller, &mut image, beat(3, true), now), Ok(Vec::new()));
        assert!(image.brokers[&NodeId(3)].fenced);
        // Broker 2's disk fails too: fenced, as broker 1 is live.
        commit(&mut controller, &mut image, beat(2, true), now).expect("beat");
        assert!(image.brokers[&NodeId(2)].fenced);
        assert_eq!(partition(&image, 1).isr, [NodeId(1)]);
        // Then broker 1's: the last live broker keeps serving what it holds.
        commit(&mut controller, &mut image, beat(1, true), now).expect("beat");
        assert!(!image.brokers[&NodeId(1)].fenced, "the last live broker");
        assert_eq!(partition(&image, 0).leader, Some(NodeId(1)));
        // Broker 3's disk takes writes again: unfenced, it follows until its leader finds it
        // caught up.
        commit(&mut controller, &mut image, beat(3, false), now).expect("beat");
        assert!(!image.brokers[&NodeId(3)].fenced);
        assert_eq!(partition(&image, 0).isr, [NodeId(1)]);
    }

    /// With no in-sync replica live, a topic that sets `unclean.leader.election.enable` gets an
    /// out-of-sync replica as leader (its in-sync set alone, a new epoch), both when the last
    /// in-sync leader is fenced and when an out-of-sync replica comes back; another topic waits
    /// for its in-sync replica, and the controller's default decides for topics that say
    /// nothing.
    #[test]
    fn an_out_of_sync_replica_leads_only_where_unclean_election_is_allowed() {
        let now = Instant::now();
        let (mut controller, mut image, epochs) = cluster(3, now);
        // min.insync.replicas 1: a replica that leaves the in-sync set is never eligible to lead
        // (KIP-966), so only an unclean election brings it back as leader.
        let topic = |name: &str, unclean: Option<&str>| {
            let config = unclean.map(|v| (UNCLEAN_KEY.to_string(), v.to_string()));
            let min_insync = ("min.insync.replicas".to_string(), "1".to_string());
            let config = [min_insync].into_iter().chain(config).collect();
            let topic = NewTopic {
                name: name.into(),
                partitions: 1,
                replication_factor: 2,
                assignment: Some(vec![vec![NodeId(1), NodeId(2)]]),
                config,
            };
            Event::CreateTopic { topic, id: TopicId(name.bytes().map(u128::from).sum()) }
        };
        for (name, unclean) in [("strict", None), ("lax", Some("true")), ("kept", Some("false"))] {
            commit(&mut controller, &mut image, topic(name, unclean), now).expect("created");
        }
        let state = |image: &MetadataImage, name: &str| {
            let id = image.topic_ids[name];
            image.topics[&id].partitions[&PartitionId(0)].clone()
        };
        // Broker 2 stops: out of every in-sync set. It comes back, out of sync (its leader would
        // ask for it once caught up).
        let shutdown = Event::ControlledShutdown { node: NodeId(2), broker_epoch: epochs[1] };
        commit(&mut controller, &mut image, shutdown, now).expect("shut down");
        come_back(&mut controller, &mut image, 2, 2, now);
        assert_eq!(state(&image, "lax").isr, [NodeId(1)]);
        // The last in-sync replica, broker 1, stops.
        let shutdown = Event::ControlledShutdown { node: NodeId(1), broker_epoch: epochs[0] };
        commit(&mut controller, &mut image, shutdown, now).expect("shut down");
        let lax = state(&image, "lax");
        assert_eq!(
            (lax.leader, lax.isr.clone(), lax.leader_epoch),
            (Some(NodeId(2)), vec![NodeId(2)], LeaderEpoch(1))
        );
        for name in ["strict", "kept"] {
            let waiting = state(&image, name);
            assert_eq!((waiting.leader, waiting.isr), (None, vec![NodeId(1)]), "{name}");
        }
        // Broker 1 comes back: it leads what waited for it, and only follows the other.
        come_back(&mut controller, &mut image, 1, 3, now);
        assert_eq!(state(&image, "strict").leader, Some(NodeId(1)));
        assert_eq!(state(&image, "lax").leader, Some(NodeId(2)));

        // Again with the controller's default on: a topic that says nothing elects uncleanly
        // when its out-of-sync replica returns; one that says false still waits.
        let (mut controller, mut image, epochs) = cluster(3, now);
        let unclean = TopicConfig { unclean_leader_election: true, ..TopicConfig::default() };
        controller = controller.with_topic_defaults(unclean);
        for (name, unclean) in [("strict", None), ("kept", Some("false"))] {
            commit(&mut controller, &mut image, topic(name, unclean), now).expect("created");
        }
        for n in [2, 1] {
            let broker_epoch = epochs[n as usize - 1];
            let shutdown = Event::ControlledShutdown { node: NodeId(n), broker_epoch };
            commit(&mut controller, &mut image, shutdown, now).expect("shut down");
        }
        assert_eq!(state(&image, "strict").leader, None, "no replica live yet");
        come_back(&mut controller, &mut image, 2, 2, now);
        let strict = state(&image, "strict");
        assert_eq!((strict.leader, strict.isr), (Some(NodeId(2)), vec![NodeId(2)]));
        assert_eq!(state(&image, "kept").leader, None);
    }

    /// Partition 0 of `topic` (in `state`)'s leader asks for `replica` to join its in-sync set.
    fn rejoin(
        image: &MetadataImage,
        topic: &str,
        state: &PartitionState,
        replica: NodeId,
    ) -> Event {
        let mut isr = state.isr.clone();
        isr.push(replica);
        let leader = state.leader.expect("a leader");
        Event::AlterPartition(IsrRequest {
            node: leader,
            broker_epoch: image.brokers[&leader].broker_epoch,
            topic: image.topic_ids[topic],
            partition: PartitionId(0),
            leader_epoch: state.leader_epoch,
            partition_epoch: state.partition_epoch,
            isr,
        })
    }

    /// ElectLeaders and the controller's own balancing move a partition back to its preferred
    /// replica only when that replica is live and in sync; an unclean election asked for leads a
    /// leaderless partition with a live replica.
    #[test]
    fn leaders_go_back_to_live_in_sync_preferred_replicas_when_asked_and_on_their_own() {
        let start = Instant::now();
        let (controller, mut image, epochs) = cluster(3, start);
        let balance =
            LeaderBalance { interval: Duration::from_secs(300), imbalance_percentage: 10 };
        let mut controller = controller.with_leader_balance(Some(balance));
        commit(&mut controller, &mut image, create("t", 3, 3), start).expect("created");
        // The balance check's interval counts from the controller's first tick.
        commit(&mut controller, &mut image, Event::Tick, start).expect("tick");
        let state = |image: &MetadataImage, p: u32| {
            let id = image.topic_ids["t"];
            image.topics[&id].partitions[&PartitionId(p)].clone()
        };
        let preferred = state(&image, 0).replicas[0];
        assert_eq!(state(&image, 0).leader, Some(preferred), "placed on its preferred replica");
        // Its preferred replica stops, and comes back out of sync: not elected.
        let index = preferred.0 as usize - 1;
        let shutdown = Event::ControlledShutdown { node: preferred, broker_epoch: epochs[index] };
        commit(&mut controller, &mut image, shutdown, start).expect("shut down");
        come_back(&mut controller, &mut image, preferred.0, 2, start);
        let moved = state(&image, 0);
        assert_ne!(moved.leader, Some(preferred));
        let all = |election| Event::ElectLeaders { election, partitions: None };
        let asked = commit(&mut controller, &mut image, all(Election::Preferred), start);
        assert_eq!(asked.expect("asked"), [], "not in sync: nothing to elect");
        // In sync again (its leader asks): a preferred election asked for moves it back.
        let join = rejoin(&image, "t", &moved, preferred);
        commit(&mut controller, &mut image, join, start).expect("joined");
        let named = Event::ElectLeaders {
            election: Election::Preferred,
            partitions: Some(vec![("t".to_string(), PartitionId(0))]),
        };
        let before = state(&image, 0).leader_epoch;
        commit(&mut controller, &mut image, named.clone(), start).expect("elected");
        let back = state(&image, 0);
        assert_eq!((back.leader, back.leader_epoch), (Some(preferred), LeaderEpoch(before.0 + 1)));
        assert_eq!(commit(&mut controller, &mut image, named, start).expect("asked"), []);
        let unknown = Event::ElectLeaders {
            election: Election::Preferred,
            partitions: Some(vec![("nope".to_string(), PartitionId(0))]),
        };
        assert_eq!(controller.decide(&image, unknown, start), Ok(Vec::new()), "left out");

        // The same move on its own: not before the check interval, then at once.
        let shutdown = Event::ControlledShutdown {
            node: preferred,
            broker_epoch: image.brokers[&preferred].broker_epoch,
        };
        commit(&mut controller, &mut image, shutdown, start).expect("shut down");
        come_back(&mut controller, &mut image, preferred.0, 3, start);
        let join = rejoin(&image, "t", &state(&image, 0), preferred);
        commit(&mut controller, &mut image, join, start).expect("joined");
        let beat_all = |controller: &mut Controller, image: &mut MetadataImage, at| {
            for n in 1..=3 {
                let broker_epoch = image.brokers[&NodeId(n)].broker_epoch;
                let beat = Event::Heartbeat {
                    node: NodeId(n),
                    broker_epoch,
                    via: None,
                    storage_failing: false,
                };
                commit(controller, image, beat, at).expect("heartbeat");
            }
        };
        let early = start + Duration::from_secs(299);
        beat_all(&mut controller, &mut image, early);
        commit(&mut controller, &mut image, Event::Tick, early).expect("tick");
        assert_ne!(state(&image, 0).leader, Some(preferred), "not before the interval");
        let due = start + Duration::from_secs(300);
        beat_all(&mut controller, &mut image, due);
        commit(&mut controller, &mut image, Event::Tick, due).expect("tick");
        assert_eq!(state(&image, 0).leader, Some(preferred), "balanced on its own");

        // An unclean election asked for: a leaderless partition gets a live replica. (With
        // min.insync.replicas 1, broker 2 leaving is never eligible to lead by KIP-966.)
        let solo = NewTopic {
            name: "solo".into(),
            partitions: 1,
            replication_factor: 2,
            assignment: Some(vec![vec![NodeId(1), NodeId(2)]]),
            config: vec![("min.insync.replicas".into(), "1".into())],
        };
        let solo = Event::CreateTopic { topic: solo, id: TopicId(500) };
        commit(&mut controller, &mut image, solo, due).expect("created");
        for n in [2, 1] {
            let broker_epoch = image.brokers[&NodeId(n)].broker_epoch;
            let shutdown = Event::ControlledShutdown { node: NodeId(n), broker_epoch };
            commit(&mut controller, &mut image, shutdown, due).expect("shut down");
        }
        come_back(&mut controller, &mut image, 2, 4, due);
        let solo =
            |image: &MetadataImage| image.topics[&TopicId(500)].partitions[&PartitionId(0)].clone();
        assert_eq!(solo(&image).leader, None, "the topic does not allow it by itself");
        let unclean = Event::ElectLeaders {
            election: Election::Unclean,
            partitions: Some(vec![("solo".to_string(), PartitionId(0))]),
        };
        commit(&mut controller, &mut image, unclean, due).expect("elected");
        let elected = solo(&image);
        assert_eq!((elected.leader, elected.isr), (Some(NodeId(2)), vec![NodeId(2)]));
    }

    /// A broker whose heartbeat connection closes is fenced at once, not a session later, when
    /// it is the connection the controller last heard it on: not one it has left for another
    /// (a reconnect), and not one another registration of the node id used.
    #[test]
    fn a_broker_whose_heartbeat_connection_closes_is_fenced_at_once_unless_it_moved_on() {
        let start = Instant::now();
        let (mut controller, mut image, epochs) = cluster(3, start);
        commit(&mut controller, &mut image, create("t", 3, 3), start).expect("created");
        let beat = |via| Event::Heartbeat {
            node: NodeId(2),
            broker_epoch: epochs[1],
            via,
            storage_failing: false,
        };
        let lost = |via| Event::HeartbeatsLost { node: NodeId(2), broker_epoch: epochs[1], via };
        let at = start + Duration::from_millis(100);
        commit(&mut controller, &mut image, beat(Some(7)), at).expect("heartbeat");
        // It reconnected and beat over connection 8: the old one closing changes nothing.
        commit(&mut controller, &mut image, beat(Some(8)), at).expect("heartbeat");
        let batch = controller.decide(&image, lost(7), at).expect("decided");
        assert!(batch.is_empty(), "a connection it left: {batch:?}");
        // Its connection closes: fenced at once, its partitions led by others, well within its
        // session.
        commit(&mut controller, &mut image, lost(8), at).expect("fenced");
        assert!(image.brokers[&NodeId(2)].fenced);
        let holds = |p: &PartitionState| p.leader == Some(NodeId(2)) || p.isr.contains(&NodeId(2));
        assert!(image.partitions().all(|(_, _, p)| !holds(p)));
        // Lost again: nothing more.
        assert!(controller.decide(&image, lost(8), at).expect("decided").is_empty());
        // A broker heard only locally (the controller's own) or under another registration.
        let local = Event::Heartbeat {
            node: NodeId(3),
            broker_epoch: epochs[2],
            via: None,
            storage_failing: false,
        };
        commit(&mut controller, &mut image, local, at).expect("heartbeat");
        let stale = Event::HeartbeatsLost { node: NodeId(3), broker_epoch: epochs[2], via: 0 };
        assert!(controller.decide(&image, stale, at).expect("decided").is_empty());
    }

    /// A controller that takes over from the one beside a silent broker fences that broker a
    /// third of a session later unless it beats first (a live one does: its voter's stall must
    /// not fence it); every other broker keeps a whole session.
    #[test]
    fn a_new_controller_fences_its_silent_predecessors_broker_within_a_third_of_a_session() {
        let start = Instant::now();
        let late = start + TIMEOUT * 3;
        let (_, mut image, epochs) = cluster(3, start);
        let mut taken_over = Controller::new(TIMEOUT, ClusterId(7), limits());
        taken_over.presume_silent(NodeId(1), late);
        commit(&mut taken_over, &mut image, Event::Tick, late).expect("tick");
        assert_eq!(image.live_brokers().count(), 3, "not at once");
        // Broker 2 beats; broker 1 does not.
        let beat = Event::Heartbeat {
            node: NodeId(2),
            broker_epoch: epochs[1],
            via: None,
            storage_failing: false,
        };
        commit(&mut taken_over, &mut image, beat, late).expect("heartbeat");
        commit(&mut taken_over, &mut image, Event::Tick, late + TIMEOUT / 3).expect("tick");
        assert!(image.brokers[&NodeId(1)].fenced, "the silent predecessor");
        assert_eq!(image.live_brokers().count(), 2, "the others keep their session");
        // One that beats in time stays.
        let (_, mut image, epochs) = cluster(3, start);
        let mut taken_over = Controller::new(TIMEOUT, ClusterId(7), limits());
        taken_over.presume_silent(NodeId(1), late);
        let beat = Event::Heartbeat {
            node: NodeId(1),
            broker_epoch: epochs[0],
            via: None,
            storage_failing: false,
        };
        commit(&mut taken_over, &mut image, beat, late + TIMEOUT / 4).expect("heartbeat");
        commit(&mut taken_over, &mut image, Event::Tick, late + TIMEOUT / 3).expect("tick");
        assert_eq!(image.live_brokers().count(), 3);
    }

    #[test]
    fn a_new_controller_gives_every_broker_a_full_session() {
        let start = Instant::now();
        let (_, mut image, _) = cluster(2, start);
        let mut taken_over = Controller::new(TIMEOUT, ClusterId(7), limits());
        let late = start + TIMEOUT * 3;
        commit(&mut taken_over, &mut image, Event::Tick, late).expect("tick");
        assert!(image.live_brokers().count() == 2, "heard from nobody yet: a session from now");
        commit(&mut taken_over, &mut image, Event::Tick, late + TIMEOUT).expect("tick");
        assert_eq!(image.live_brokers().count(), 0);
    }

    #[test]
    fn topics_need_enough_live_brokers_and_a_free_name() {
        let now = Instant::now();
        let (mut controller, mut image, epochs) = cluster(2, now);
        let refused = controller.decide(&image, create("t", 1, 3), now);
        assert_eq!(refused, Err(Refusal::InvalidReplicationFactor { asked: 3, live: 2 }));
        // Every broker makes a directory of the name: the controller checks it too.
        for bad in ["..", "a/b", "__cluster_metadata", ""] {
            let refused = controller.decide(&image, create(bad, 1, 1), now);
            assert!(matches!(refused, Err(Refusal::InvalidTopicName(_))), "{bad:?}: {refused:?}");
        }
        commit(&mut controller, &mut image, create("t", 2, 2), now).expect("created");
        assert_eq!(
            controller.decide(&image, create("t", 1, 1), now),
            Err(Refusal::TopicExists("t".into()))
        );
        let shutdown = Event::ControlledShutdown { node: NodeId(2), broker_epoch: epochs[1] };
        commit(&mut controller, &mut image, shutdown, now).expect("shut down");
        let refused = controller.decide(&image, create("u", 1, 2), now);
        assert_eq!(refused, Err(Refusal::InvalidReplicationFactor { asked: 2, live: 1 }));
        commit(&mut controller, &mut image, Event::DeleteTopic { name: "t".into() }, now)
            .expect("deleted");
        assert!(image.topics.is_empty() && image.topic_ids.is_empty());
    }

    /// Topic `name` with one partition on `replicas`, the first leading, every one in sync,
    /// with the settings `config`.
    fn assigned(name: &str, replicas: &[i32], config: &[(&str, &str)]) -> Event {
        let topic = NewTopic {
            name: name.into(),
            partitions: 1,
            replication_factor: replicas.len() as u16,
            assignment: Some(vec![replicas.iter().map(|n| NodeId(*n)).collect()]),
            config: config.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
        };
        Event::CreateTopic { topic, id: TopicId(name.bytes().map(u128::from).sum()) }
    }

    /// Partition 0 of topic `name`, as the image holds it.
    fn partition_of(image: &MetadataImage, name: &str) -> (TopicId, PartitionState) {
        let (id, topic) = image.topic_named(name).expect("the topic");
        (id, topic.partitions[&PartitionId(0)].clone())
    }

    fn nodes(ids: &[i32]) -> Vec<NodeId> {
        ids.iter().map(|n| NodeId(*n)).collect()
    }

    /// Broker `node` restarted as process `incarnation` on the data directory it had (as
    /// `cluster` registered it: directory 1), or on `directory`, and heard.
    fn restarted(
        controller: &mut Controller,
        image: &mut MetadataImage,
        (node, incarnation, directory): (i32, u64, u128),
        now: Instant,
    ) {
        let mut again = register(node, incarnation);
        if let Event::Register { registration, .. } = &mut again {
            registration.directory = directory;
        }
        commit(controller, image, again, now).expect("registered");
        let broker_epoch = image.brokers[&NodeId(node)].broker_epoch;
        let beat = Event::Heartbeat {
            node: NodeId(node),
            broker_epoch,
            via: None,
            storage_failing: false,
        };
        commit(controller, image, beat, now).expect("heartbeat");
    }

    /// KIP-966: replicas that leave the in-sync set while it is below `min.insync.replicas`
    /// hold everything below the high watermark (which cannot move then), so one of them leads
    /// when no in-sync replica is live, in a new leader epoch, without an unclean election.
    #[test]
    fn an_eligible_replica_leads_when_no_in_sync_one_is_live() {
        let now = Instant::now();
        let (mut controller, mut image, epochs) = cluster(3, now);
        commit(&mut controller, &mut image, assigned("e", &[1, 2, 3], &[]), now).expect("e");
        let lax = [("min.insync.replicas", "1")];
        commit(&mut controller, &mut image, assigned("one", &[1, 2, 3], &lax), now).expect("one");
        let shutdown = |node: i32| Event::ControlledShutdown {
            node: NodeId(node),
            broker_epoch: epochs[node as usize - 1],
        };
        // Broker 3 leaves a set that keeps min.insync.replicas (2): not eligible. Broker 2
        // leaves it below: eligible.
        commit(&mut controller, &mut image, shutdown(3), now).expect("3 down");
        assert_eq!(partition_of(&image, "e").1.elr, nodes(&[]));
        commit(&mut controller, &mut image, shutdown(2), now).expect("2 down");
        let e = partition_of(&image, "e").1;
        assert_eq!((e.isr.clone(), e.elr.clone()), (nodes(&[1]), nodes(&[2])));
        assert_eq!(partition_of(&image, "one").1.elr, nodes(&[]), "never below min 1");
        // The leader goes too: nothing live can lead.
        commit(&mut controller, &mut image, shutdown(1), now).expect("1 down");
        let e = partition_of(&image, "e").1;
        assert_eq!((e.leader, e.isr.clone(), e.elr.clone()), (None, nodes(&[1]), nodes(&[2])));
        // Broker 3, out of sync and not eligible, leads nothing back.
        restarted(&mut controller, &mut image, (3, 2, 1), now);
        assert_eq!(partition_of(&image, "e").1.leader, None);
        // Broker 2, eligible, leads at once, in sync alone; broker 1 held as much: eligible.
        restarted(&mut controller, &mut image, (2, 2, 1), now);
        let (id, e) = partition_of(&image, "e");
        assert_eq!(
            (e.leader, e.isr.clone(), e.elr.clone()),
            (Some(NodeId(2)), nodes(&[2]), nodes(&[1]))
        );
        assert_eq!(e.leader_epoch, LeaderEpoch(2), "a new epoch after the leaderless one");
        assert_eq!(partition_of(&image, "one").1.leader, None, "one waits for broker 1");
        // Broker 1 returns and catches up: the set is whole again, and no one is eligible.
        restarted(&mut controller, &mut image, (1, 2, 1), now);
        let broker_2 = image.brokers[&NodeId(2)].broker_epoch;
        let caught_up = isr_request(&(id, e), NodeId(2), broker_2, &[2, 1]);
        commit(&mut controller, &mut image, caught_up, now).expect("1 in sync");
        let e = partition_of(&image, "e").1;
        assert_eq!((e.isr.clone(), e.elr.clone()), (nodes(&[2, 1]), nodes(&[])));
    }

    /// An eligible replica back on another data directory (a disk replaced) no longer holds
    /// what made it eligible; a broker back with another `min.insync.replicas` default ends
    /// every eligibility that rested on the defaults; and the lowest default of any broker is
    /// the one that counts.
    #[test]
    fn eligibility_ends_with_the_disk_or_the_setting_it_rested_on() {
        let now = Instant::now();
        let below = |controller: &mut Controller, image: &mut MetadataImage, epochs: &[u64]| {
            commit(controller, image, assigned("e", &[1, 2, 3], &[]), now).expect("e");
            for node in [3, 2] {
                let broker_epoch = epochs[node as usize - 1];
                let shutdown = Event::ControlledShutdown { node: NodeId(node), broker_epoch };
                commit(controller, image, shutdown, now).expect("down");
            }
            assert_eq!(partition_of(image, "e").1.elr, nodes(&[2]));
        };
        let (mut controller, mut image, epochs) = cluster(3, now);
        below(&mut controller, &mut image, &epochs);
        restarted(&mut controller, &mut image, (2, 2, 99), now);
        assert_eq!(partition_of(&image, "e").1.elr, nodes(&[]), "on a new disk");

        // Live when it comes back on a new disk (its session over, not fenced yet), leading a
        // partition no other replica can take: it is fenced by its registration, and its
        // eligibility elsewhere goes with its disk.
        let (mut controller, mut image, _) = cluster(3, now);
        commit(&mut controller, &mut image, assigned("e", &[1, 2, 3], &[]), now).expect("e");
        commit(&mut controller, &mut image, assigned("solo", &[2], &[]), now).expect("solo");
        let broker_1 = image.brokers[&NodeId(1)].broker_epoch;
        for isr in [&[1, 2][..], &[1]] {
            let shrink = isr_request(&partition_of(&image, "e"), NodeId(1), broker_1, isr);
            commit(&mut controller, &mut image, shrink, now).expect("shrunk by its leader");
        }
        assert_eq!(partition_of(&image, "e").1.elr, nodes(&[2]));
        let later = now + TIMEOUT + Duration::from_secs(1);
        restarted(&mut controller, &mut image, (2, 2, 99), later);
        assert_eq!(partition_of(&image, "e").1.elr, nodes(&[]), "live, on a new disk");

        let (mut controller, mut image, epochs) = cluster(3, now);
        below(&mut controller, &mut image, &epochs);
        let mut lower = register(3, 2);
        if let Event::Register { registration, .. } = &mut lower {
            (registration.directory, registration.min_insync_replicas) = (1, Some(1));
        }
        commit(&mut controller, &mut image, lower, now).expect("3 back with min 1");
        assert_eq!(partition_of(&image, "e").1.elr, nodes(&[]), "another default");
        // From now on broker 3 may lead with min 1: no replica is eligible below 2.
        let (id, e) = partition_of(&image, "e");
        let broker_1 = image.brokers[&NodeId(1)].broker_epoch;
        restarted(&mut controller, &mut image, (2, 2, 1), now);
        let (_, e) = {
            let join = isr_request(&(id, e), NodeId(1), broker_1, &[1, 2]);
            commit(&mut controller, &mut image, join, now).expect("2 in sync");
            partition_of(&image, "e")
        };
        let shrink = isr_request(&(id, e), NodeId(1), broker_1, &[1]);
        commit(&mut controller, &mut image, shrink, now).expect("2 out");
        assert_eq!(partition_of(&image, "e").1.elr, nodes(&[]), "min 1 somewhere");
    }

    /// A topic's settings change whole through the controller: refused for an unknown topic or
    /// setting; a change of `min.insync.replicas` ends the eligibility that rested on the old
    /// value (KIP-966); turning on unclean elections leads a leaderless partition at once.
    #[test]
    fn topic_settings_change_through_the_controller() {
        let now = Instant::now();
        let (mut controller, mut image, epochs) = cluster(3, now);
        commit(&mut controller, &mut image, assigned("e", &[1, 2, 3], &[]), now).expect("e");
        let alter = |name: &str, changes: Vec<ConfigChange>| Event::AlterTopicConfig {
            name: name.into(),
            changes,
            replace: false,
        };
        let set =
            |key: &str, value: &str| ConfigChange::Set { key: key.into(), value: value.into() };
        let refused = controller.decide(&image, alter("nope", vec![set("retention.ms", "1")]), now);
        assert_eq!(refused, Err(Refusal::UnknownTopic("nope".into())));
        let refused = controller.decide(&image, alter("e", vec![set("retention.ms", "soon")]), now);
        assert!(matches!(refused, Err(Refusal::InvalidConfig(_))), "{refused:?}");
        let config = |image: &MetadataImage| image.topic_named("e").expect("e").1.config.clone();
        let same = commit(&mut controller, &mut image, alter("e", Vec::new()), now);
        assert_eq!(same, Ok(Vec::new()), "no change, no record");

        // Brokers 3 then 2 stop: 2 left below min.insync.replicas (2), so it is eligible.
        for node in [3, 2] {
            let broker_epoch = epochs[node as usize - 1];
            let shutdown = Event::ControlledShutdown { node: NodeId(node), broker_epoch };
            commit(&mut controller, &mut image, shutdown, now).expect("down");
        }
        assert_eq!(partition_of(&image, "e").1.elr, nodes(&[2]));
        let retention = alter("e", vec![set("retention.ms", "1000")]);
        commit(&mut controller, &mut image, retention, now).expect("retention");
        assert_eq!(partition_of(&image, "e").1.elr, nodes(&[2]), "min.insync.replicas unchanged");
        let lower = alter("e", vec![set(MIN_INSYNC_KEY, "1")]);
        let before = partition_of(&image, "e").1;
        commit(&mut controller, &mut image, lower, now).expect("min 1");
        let after = partition_of(&image, "e").1;
        assert_eq!(after.elr, nodes(&[]), "eligibility rested on min 2");
        assert_eq!(after.partition_epoch, before.partition_epoch + 1);
        let expected: BTreeMap<String, String> =
            [("min.insync.replicas", "1"), ("retention.ms", "1000")]
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .into();
        assert_eq!(config(&image), expected);

        // The leader stops: nothing in sync is live. Broker 2 returns out of sync: it leads
        // once unclean elections are turned on, not before.
        let shutdown = Event::ControlledShutdown { node: NodeId(1), broker_epoch: epochs[0] };
        commit(&mut controller, &mut image, shutdown, now).expect("1 down");
        restarted(&mut controller, &mut image, (2, 2, 1), now);
        assert_eq!(partition_of(&image, "e").1.leader, None);
        let unclean = alter("e", vec![set(UNCLEAN_KEY, "true")]);
        commit(&mut controller, &mut image, unclean, now).expect("unclean on");
        let e = partition_of(&image, "e").1;
        assert_eq!((e.leader, e.isr), (Some(NodeId(2)), nodes(&[2])));
        // AlterConfigs replaces the whole set.
        let replace = Event::AlterTopicConfig {
            name: "e".into(),
            changes: vec![set("segment.bytes", "65536")],
            replace: true,
        };
        commit(&mut controller, &mut image, replace, now).expect("replaced");
        let expected: BTreeMap<String, String> =
            [("segment.bytes".to_string(), "65536".to_string())].into();
        assert_eq!(config(&image), expected);
    }

    /// Dynamic broker settings change whole through the controller, cluster-wide or for one
    /// registered broker; what is not dynamic, or not at that level, or not a value, is
    /// refused. A cluster-wide `min.insync.replicas` ends the eligibility that rested on the
    /// old value for topics without their own; a cluster-wide unclean election default leads
    /// a leaderless partition at once, unless its topic says otherwise.
    #[test]
    fn broker_settings_change_through_the_controller() {
        let now = Instant::now();
        let (mut controller, mut image, epochs) = cluster(3, now);
        commit(&mut controller, &mut image, assigned("e", &[1, 2, 3], &[]), now).expect("e");
        let own = [(MIN_INSYNC_KEY, "2")];
        commit(&mut controller, &mut image, assigned("f", &[1, 2, 3], &own), now).expect("f");
        let own = [(MIN_INSYNC_KEY, "1"), (UNCLEAN_KEY, "false")];
        commit(&mut controller, &mut image, assigned("g", &[1, 2, 3], &own), now).expect("g");
        let alter = |node: Option<i32>, changes: Vec<ConfigChange>, replace: bool| {
            Event::AlterBrokerConfig { node: node.map(NodeId), changes, replace }
        };
        let set =
            |key: &str, value: &str| ConfigChange::Set { key: key.into(), value: value.into() };
        for refused in [
            alter(None, vec![set("num.partitions", "3")], false),
            alter(None, vec![set("log.retention.hours", "3")], false),
            alter(None, vec![set("log.retention.ms", "soon")], false),
            alter(Some(2), vec![set(MIN_INSYNC_KEY, "1")], false),
            alter(Some(9), vec![set("log.retention.ms", "1")], false),
        ] {
            let decided = controller.decide(&image, refused.clone(), now);
            assert!(matches!(decided, Err(Refusal::InvalidConfig(_))), "{refused:?}: {decided:?}");
        }
        let settings = |image: &MetadataImage, node: Option<i32>| {
            image.broker_configs.get(&node.map(NodeId)).cloned().unwrap_or_default()
        };
        let retention = alter(Some(2), vec![set("log.retention.ms", "1000")], false);
        let records = commit(&mut controller, &mut image, retention.clone(), now).expect("set");
        assert_eq!(records.len(), 1, "no partition changes: {records:?}");
        assert_eq!(settings(&image, Some(2))["log.retention.ms"], "1000");
        assert_eq!(commit(&mut controller, &mut image, retention, now), Ok(Vec::new()));

        // Brokers 3 then 2 stop: 2 left below min.insync.replicas (2), so it is eligible.
        for node in [3, 2] {
            let broker_epoch = epochs[node as usize - 1];
            let shutdown = Event::ControlledShutdown { node: NodeId(node), broker_epoch };
            commit(&mut controller, &mut image, shutdown, now).expect("down");
        }
        assert_eq!(partition_of(&image, "e").1.elr, nodes(&[2]));
        assert_eq!(partition_of(&image, "f").1.elr, nodes(&[2]));
        let lower = alter(None, vec![set(MIN_INSYNC_KEY, "1")], false);
        commit(&mut controller, &mut image, lower, now).expect("min 1");
        assert_eq!(partition_of(&image, "e").1.elr, nodes(&[]), "eligibility rested on min 2");
        assert_eq!(partition_of(&image, "f").1.elr, nodes(&[2]), "f keeps its own min 2");

        // The leader stops too; 2 returns out of sync. The cluster-wide unclean default leads
        // it for e, not for g, whose own setting says no (f's eligible replica leads it).
        let shutdown = Event::ControlledShutdown { node: NodeId(1), broker_epoch: epochs[0] };
        commit(&mut controller, &mut image, shutdown, now).expect("1 down");
        restarted(&mut controller, &mut image, (2, 2, 1), now);
        assert_eq!(partition_of(&image, "e").1.leader, None);
        let unclean = alter(None, vec![set(UNCLEAN_KEY, "true")], false);
        commit(&mut controller, &mut image, unclean, now).expect("unclean on");
        let e = partition_of(&image, "e").1;
        assert_eq!((e.leader, e.isr), (Some(NodeId(2)), nodes(&[2])));
        assert_eq!(partition_of(&image, "g").1.leader, None, "g's own setting holds");

        // AlterConfigs replaces the resource's whole set; an empty set leaves none.
        let replace = alter(None, vec![set("log.segment.bytes", "65536")], true);
        commit(&mut controller, &mut image, replace, now).expect("replaced");
        let expected: BTreeMap<String, String> =
            [("log.segment.bytes".to_string(), "65536".to_string())].into();
        assert_eq!(settings(&image, None), expected);
        let cleared =
            alter(Some(2), vec![ConfigChange::Delete { key: "log.retention.ms".into() }], false);
        commit(&mut controller, &mut image, cleared, now).expect("cleared");
        assert!(!image.broker_configs.contains_key(&Some(NodeId(2))));
    }

    /// KIP-455: the target replicas join first; once every one is in sync, the others are
    /// removed in one change, the leader moving if it was one of them. A move in progress can
    /// be replaced or cancelled; a cancel with none, a target of unknown brokers, or a cancel
    /// that would drop every in-sync replica, is refused.
    #[test]
    fn partitions_move_to_their_target_replicas_once_those_are_in_sync() {
        let now = Instant::now();
        let (mut controller, mut image, epochs) = cluster(5, now);
        commit(&mut controller, &mut image, assigned("m", &[1, 2, 3], &[]), now).expect("m");
        let reassign = |target: Option<&[i32]>| {
            Event::Reassign(vec![Reassignment {
                topic: "m".into(),
                partition: PartitionId(0),
                target: target.map(nodes),
            }])
        };
        let refused = controller.decide(&image, reassign(None), now);
        assert_eq!(refused, Err(Refusal::NoReassignmentInProgress("m".into(), PartitionId(0))));
        let refused = controller.decide(&image, reassign(Some(&[1, 9])), now);
        assert!(matches!(refused, Err(Refusal::InvalidAssignment(_))), "{refused:?}");
        let refused = controller.decide(&image, reassign(Some(&[1, 1])), now);
        assert!(matches!(refused, Err(Refusal::InvalidAssignment(_))), "{refused:?}");

        // Away from the leader: 1 and 3 go, 4 and 5 come; the leader stays until the end.
        commit(&mut controller, &mut image, reassign(Some(&[4, 2, 5])), now).expect("moving");
        let (id, m) = partition_of(&image, "m");
        assert_eq!(m.replicas, nodes(&[4, 2, 5, 1, 3]));
        assert_eq!((m.adding.clone(), m.removing.clone()), (nodes(&[4, 5]), nodes(&[1, 3])));
        assert_eq!((m.leader, m.isr.clone()), (Some(NodeId(1)), nodes(&[1, 2, 3])));
        // Partitions added meanwhile get the replication factor the move keeps.
        let more = NewPartitions { name: "m".into(), count: 2, assignment: None };
        commit(&mut controller, &mut image, Event::CreatePartitions(more), now).expect("grown");
        let added = &image.topics[&id].partitions[&PartitionId(1)];
        assert_eq!(added.replicas.len(), 3, "{added:?}");
        // 4 catches up: not yet.
        let broker_1 = epochs[0];
        let four = isr_request(&(id, m), NodeId(1), broker_1, &[1, 2, 3, 4]);
        commit(&mut controller, &mut image, four, now).expect("4 in sync");
        let (id, m) = partition_of(&image, "m");
        assert!(m.is_reassigning());
        // 5 too: complete. The leader, moved off, hands over to the first target in sync.
        let five = isr_request(&(id, m.clone()), NodeId(1), broker_1, &[1, 2, 3, 4, 5]);
        commit(&mut controller, &mut image, five, now).expect("5 in sync");
        let done = partition_of(&image, "m").1;
        assert_eq!(
            (done.replicas.clone(), done.isr.clone()),
            (nodes(&[4, 2, 5]), nodes(&[2, 4, 5]))
        );
        assert!(!done.is_reassigning());
        assert_eq!(
            (done.leader, done.leader_epoch),
            (Some(NodeId(4)), LeaderEpoch(m.leader_epoch.0 + 1))
        );

        // A move replaced by another, then cancelled: back where it started.
        commit(&mut controller, &mut image, reassign(Some(&[4, 2, 1])), now).expect("to 1");
        commit(&mut controller, &mut image, reassign(Some(&[4, 2, 3])), now).expect("to 3");
        let m = partition_of(&image, "m").1;
        assert_eq!((m.replicas.clone(), m.adding.clone()), (nodes(&[4, 2, 3, 5]), nodes(&[3])));
        commit(&mut controller, &mut image, reassign(None), now).expect("cancelled");
        let m = partition_of(&image, "m").1;
        assert_eq!((m.replicas.clone(), m.isr.clone()), (done.replicas.clone(), done.isr.clone()));
        assert!(!m.is_reassigning());
        // To a subset of the in-sync replicas: complete at once.
        commit(&mut controller, &mut image, reassign(Some(&[2, 5])), now).expect("smaller");
        let m = partition_of(&image, "m").1;
        assert_eq!((m.replicas.clone(), m.isr.clone()), (nodes(&[2, 5]), nodes(&[2, 5])));
        assert_eq!(m.leader, Some(NodeId(2)));

        // Only the replicas being added are left in sync: cancelling would drop them, refused.
        commit(&mut controller, &mut image, reassign(Some(&[3, 4])), now).expect("to 3, 4");
        let (id, m) = partition_of(&image, "m");
        let three = isr_request(&(id, m), NodeId(2), epochs[1], &[2, 5, 3]);
        commit(&mut controller, &mut image, three, now).expect("3 in sync");
        for n in [2, 5] {
            let shutdown =
                Event::ControlledShutdown { node: NodeId(n), broker_epoch: epochs[n as usize - 1] };
            commit(&mut controller, &mut image, shutdown, now).expect("down");
        }
        let m = partition_of(&image, "m").1;
        assert_eq!((m.leader, m.isr.clone()), (Some(NodeId(3)), nodes(&[3])));
        let refused = controller.decide(&image, reassign(None), now);
        assert!(matches!(refused, Err(Refusal::InvalidAssignment(_))), "{refused:?}");
    }

    fn isr_request(
        (topic, state): &(TopicId, PartitionState),
        node: NodeId,
        broker_epoch: u64,
        isr: &[i32],
    ) -> Event {
        Event::AlterPartition(IsrRequest {
            node,
            broker_epoch,
            topic: *topic,
            partition: PartitionId(0),
            leader_epoch: state.leader_epoch,
            partition_epoch: state.partition_epoch,
            isr: isr.iter().map(|n| NodeId(*n)).collect(),
        })
    }

    #[test]
    fn in_sync_sets_change_at_the_leaders_request_in_its_epochs_with_live_replicas_only() {
        let now = Instant::now();
        let (mut controller, mut image, epochs) = cluster(3, now);
        commit(&mut controller, &mut image, create("r", 1, 3), now).expect("created");
        let before = partition_of(&image, "r");
        let leader = before.1.leader.expect("a leader");
        let epoch_of = |n: NodeId| epochs[n.0 as usize - 1];
        let all: Vec<i32> = before.1.replicas.iter().map(|n| n.0).collect();
        let follower = *before.1.replicas.iter().find(|r| **r != leader).expect("a follower");

        // Created with every live replica in sync. The followers fall behind and the leader asks
        // for itself alone; they catch up and it asks for all three: each change moves the
        // partition epoch.
        assert_eq!(before.1.isr.len(), 3);
        let alone = isr_request(&before, leader, epoch_of(leader), &[leader.0]);
        commit(&mut controller, &mut image, alone, now).expect("shrunk");
        let alone = partition_of(&image, "r");
        assert_eq!(alone.1.isr, vec![leader]);
        let grow = isr_request(&alone, leader, epoch_of(leader), &all);
        commit(&mut controller, &mut image, grow, now).expect("grown");
        let grown = partition_of(&image, "r");
        assert_eq!(grown.1.isr.len(), 3);
        assert_eq!(grown.1.partition_epoch, before.1.partition_epoch + 2);
        assert_eq!(
            (grown.1.leader, grown.1.leader_epoch),
            (before.1.leader, before.1.leader_epoch)
        );

        // The same request again builds on a state that is gone.
        let again = isr_request(&before, leader, epoch_of(leader), &[leader.0]);
        let stale = controller.decide(&image, again, now);
        assert!(matches!(stale, Err(Refusal::StalePartitionEpoch { .. })), "{stale:?}");
        // Only the leader asks, with itself in the set, within the replicas.
        let not_leader = isr_request(&grown, follower, epoch_of(follower), &[follower.0]);
        let refused = controller.decide(&image, not_leader, now);
        assert_eq!(refused, Err(Refusal::NotLeader(follower)));
        let without = isr_request(&grown, leader, epoch_of(leader), &[follower.0]);
        assert!(matches!(controller.decide(&image, without, now), Err(Refusal::InvalidIsr(_))));
        let stranger = isr_request(&grown, leader, epoch_of(leader), &[leader.0, 9]);
        assert!(matches!(controller.decide(&image, stranger, now), Err(Refusal::InvalidIsr(_))));
        let old_process = isr_request(&grown, leader, epoch_of(leader) + 100, &[leader.0]);
        let refused = controller.decide(&image, old_process, now);
        assert!(matches!(refused, Err(Refusal::StaleBrokerEpoch { .. })), "{refused:?}");

        // The follower falls behind and leaves; once its broker is fenced it may not come back.
        let shrink = isr_request(&grown, leader, epoch_of(leader), &[leader.0]);
        commit(&mut controller, &mut image, shrink, now).expect("shrunk");
        let shrunk = partition_of(&image, "r");
        let later = now + TIMEOUT * 2;
        for n in before.1.replicas.iter().filter(|n| **n != follower) {
            let beat = Event::Heartbeat {
                node: *n,
                broker_epoch: epoch_of(*n),
                via: None,
                storage_failing: false,
            };
            commit(&mut controller, &mut image, beat, later).expect("heartbeat");
        }
        commit(&mut controller, &mut image, Event::Tick, later).expect("fenced");
        assert!(image.brokers[&follower].fenced);
        let rejoin = isr_request(&shrunk, leader, epoch_of(leader), &[leader.0, follower.0]);
        let refused = controller.decide(&image, rejoin, later);
        assert_eq!(refused, Err(Refusal::IneligibleReplica(follower)));

        // A leader deposed while it asked (a new leader epoch) is fenced.
        let deposed = (shrunk.0, PartitionState { leader_epoch: LeaderEpoch(-1), ..shrunk.1 });
        let refused = controller.decide(
            &image,
            isr_request(&deposed, leader, epoch_of(leader), &[leader.0]),
            later,
        );
        assert!(matches!(refused, Err(Refusal::FencedLeaderEpoch { .. })), "{refused:?}");
    }

    #[test]
    fn manual_assignments_are_honoured_or_refused_with_the_reason() {
        let now = Instant::now();
        let (mut controller, mut image, _) = cluster(3, now);
        let manual = |name: &str, assignment: Vec<Vec<i32>>| {
            let assignment: Vec<Vec<NodeId>> =
                assignment.into_iter().map(|l| l.into_iter().map(NodeId).collect()).collect();
            let topic = NewTopic {
                name: name.into(),
                partitions: assignment.len() as u32,
                replication_factor: 0,
                assignment: Some(assignment),
                config: vec![("retention.ms".into(), "60000".into())],
            };
            Event::CreateTopic { topic, id: TopicId(name.len() as u128) }
        };
        for refused in [
            vec![vec![1, 1]],          // not distinct
            vec![vec![1], vec![1, 2]], // uneven
            vec![vec![9]],             // never registered
            vec![vec![]],              // empty
        ] {
            let decided = controller.decide(&image, manual("m", refused.clone()), now);
            assert!(matches!(decided, Err(Refusal::InvalidAssignment(_))), "{refused:?}");
        }
        commit(&mut controller, &mut image, manual("m", vec![vec![3, 1], vec![2, 3]]), now)
            .expect("honoured");
        let topic = &image.topics[&image.topic_ids["m"]];
        assert_eq!(topic.config["retention.ms"], "60000");
        let placed: Vec<(Option<NodeId>, Vec<NodeId>)> =
            topic.partitions.values().map(|p| (p.leader, p.replicas.clone())).collect();
        assert_eq!(
            placed,
            [
                (Some(NodeId(3)), vec![NodeId(3), NodeId(1)]),
                (Some(NodeId(2)), vec![NodeId(2), NodeId(3)])
            ]
        );
    }

    #[test]
    fn partitions_are_added_with_the_topics_replication_factor() {
        let now = Instant::now();
        let (mut controller, mut image, _) = cluster(3, now);
        commit(&mut controller, &mut image, create("t", 2, 2), now).expect("created");
        let grow = |count| {
            Event::CreatePartitions(NewPartitions { name: "t".into(), count, assignment: None })
        };
        assert_eq!(controller.decide(&image, grow(2), now), Err(Refusal::InvalidPartitions(2)));
        commit(&mut controller, &mut image, grow(5), now).expect("grown");
        let topic = &image.topics[&image.topic_ids["t"]];
        assert_eq!(topic.partitions.len(), 5);
        assert!(topic.partitions.values().all(|p| p.replicas.len() == 2 && p.leader.is_some()));
        let wrong = Event::CreatePartitions(NewPartitions {
            name: "t".into(),
            count: 6,
            assignment: Some(vec![vec![NodeId(1)]]),
        });
        assert!(matches!(
            controller.decide(&image, wrong, now),
            Err(Refusal::InvalidAssignment(_))
        ));
        let missing =
            Event::CreatePartitions(NewPartitions { name: "u".into(), count: 3, assignment: None });
        assert_eq!(controller.decide(&image, missing, now), Err(Refusal::UnknownTopic("u".into())));
    }

    /// KIP-578: replicas count against each broker's limit; the internal topic is exempt, and
    /// its share is kept free until it exists.
    #[test]
    fn no_broker_is_given_more_partitions_than_its_limit() {
        let now = Instant::now();
        let (_, mut image, _) = cluster(2, now);
        let limits = PartitionLimits { per_broker: 20, ..limits() };
        let mut controller = Controller::new(TIMEOUT, ClusterId(7), limits);
        // 16 offsets partitions over 2 brokers: 8 kept on each; 12 more fit.
        commit(&mut controller, &mut image, create("a", 24, 1), now).expect("12 each");
        let refused = controller.decide(&image, create("b", 2, 1), now);
        assert!(
            matches!(
                refused,
                Err(Refusal::TooManyPartitions { held: 12, reserved: 8, limit: 20, .. })
            ),
            "{refused:?}"
        );
        commit(&mut controller, &mut image, create("__consumer_offsets", 16, 1), now)
            .expect("the internal topic is exempt");
        commit(&mut controller, &mut image, create("b", 2, 1), now)
            .expect_err("now its partitions count");
    }
}
