//! The shard, and how an operation reaches the shard that owns its partition.
//!
//! Every operation on a partition is a typed request ([`crate::shard::call`]) sent through
//! [`Shard::ask`]: executed in place when this shard owns the partition, otherwise sent over the
//! channel mesh, whose answer comes back over the mesh to a oneshot waiting on this shard
//! (Seastar's `submit_to`). Payloads travel as `Bytes` or as the owned receive buffer, never
//! copied per hop.

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, HashMap};
use std::rc::Rc;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use event_listener::Event;
use futures_channel::oneshot;

use crate::cluster::follower::MetadataFollower;
use crate::cluster::membership::Membership;
use crate::cluster::metadata::{ClusterId, MetadataImage};
use crate::cluster::node::ControllerNode;
use crate::config::{BrokerConfig, TopicConfig};
use crate::error::BrokerError;
use crate::error::ErrorKind;
use crate::group::offsets::OFFSETS_TOPIC;
use crate::group::Coordinator;
use crate::log::health::StorageHealth;
use crate::log::producers::ProducerSummary;
use crate::log::queued::QueuedBytes;
use crate::log::read_cache::ReadCache;
use crate::log::segment::OpenFiles;
use crate::log::tail_cache::TailBudget;
use crate::metrics::Metrics;
use crate::partition::{Acks, LogBounds, Partition, ReadOutcome};
use crate::record::PendingEntry;
use crate::shard::call::{
    AskController, AwaitPublished, CommittedMetadata, DeleteRecords, DescribeCluster, EpochEnd,
    Fetch, ForwardToController, Group, HeartbeatsLost, ListOffsets, MeshMessage, NextProducerId,
    Produce, Produced, Producers, Publish, RemoveTopic, ReplicaSizes, Request, ShardAnswer,
    ShardCall, Stats, StepVoter, Watermarks,
};
use crate::shard::catalog::{self, Catalog, DiskTopic, TopicFile, TopicInfo};
use crate::shard::controller::TopicRequest;
use crate::shard::mesh::Peers;
use crate::shard::registry::ReplicaSize;
use crate::shard::replicas::Followed;
use crate::shard::turns::Turns;
use crate::shard::CONTROLLER_SHARD;
use crate::types::{LeaderEpoch, NodeId, Offset, PartitionId, ShardId};

/// How long a request that found its topic just created waits for it to reach this shard.
const TOPIC_WAIT: Duration = Duration::from_secs(5);
/// Appended-but-unwritten bytes per partition beyond which producers wait.
pub(super) const STAGED_BYTES_MAX: usize = 64 * 1024 * 1024;

pub type PartitionKey = (String, PartitionId);

/// The broker's own topics: clients may read them but not create or append to them.
pub fn is_internal_topic(name: &str) -> bool {
    name == OFFSETS_TOPIC
}

pub struct Shard {
    pub id: ShardId,
    /// How many shards the broker runs (ids `0..count`).
    pub count: usize,
    pub config: Arc<BrokerConfig>,
    pub metrics: Rc<Metrics>,
    /// The cluster's topics, as the metadata this shard last published says (before that, the
    /// topics on the broker's disk).
    pub(super) catalog: RefCell<Catalog>,
    /// The cluster's metadata as this shard last published it (`publish.rs`), and the log entry
    /// it ends at.
    pub(super) image: RefCell<Arc<MetadataImage>>,
    /// The defaults of topic settings as this broker resolves topics with them: its static
    /// ones with the cluster-wide dynamic settings of `image` over them, and its own dynamic
    /// ones over those (KIP-226's order).
    pub(super) topic_defaults: RefCell<Rc<TopicConfig>>,
    /// `max.connections` as it stands, dynamic settings included.
    pub(super) max_connections: Cell<u32>,
    pub(super) published: Cell<u64>,
    /// On shard 0: the metadata log entry every shard has taken.
    pub(super) published_everywhere: Cell<u64>,
    pub(super) published_signal: Event,
    /// The broker has joined the cluster and caught up with its metadata: it serves clients.
    pub(super) ready: Cell<bool>,
    /// When the shard started: clients wait for it to be ready at most a while from here.
    pub(super) started: std::time::Instant,
    /// On shard 0: the topics on the broker's disk, as their files say.
    pub(super) disk_topics: RefCell<BTreeMap<String, TopicFile>>,
    pub(super) partitions: RefCell<HashMap<PartitionKey, Rc<Partition>>>,
    /// The partitions of this shard that follow a leader on another broker, as the last
    /// publication says (`replicas.rs`).
    pub(super) followed: RefCell<BTreeMap<PartitionKey, Followed>>,
    pub(super) peers: Option<Peers<MeshMessage>>,
    /// Calls sent to other shards, by id, waiting for their answers.
    pub(super) waiting: RefCell<HashMap<u64, oneshot::Sender<ShardAnswer>>>,
    pub(super) next_call_id: Cell<u64>,
    /// Numbers this shard's connections, for what outlives a request (a broker's heartbeats).
    next_connection_id: Cell<u64>,
    /// One line per target shard: calls enter the mesh in the order they were made even when a
    /// channel is full (otherwise a newer call could slip into a freed slot before an older
    /// one wakes, and two produce requests of one connection could swap offsets).
    pub(super) send_turns: Vec<Turns>,
    pub(super) stopping: Cell<bool>,
    pub(super) stop_event: Event,
    /// The consumer groups this shard coordinates.
    pub groups: Coordinator,
    /// The cluster this broker's data directory belongs to, once known: shared by every shard,
    /// set once (at start, or by the broker's first registration).
    pub cluster_id: Arc<OnceLock<ClusterId>>,
    /// On shard 0 of a controller voter, once it has started: its Raft node (`shard/cluster.rs`).
    pub(super) voter: RefCell<Option<Rc<ControllerNode>>>,
    /// On shard 0 of a broker that is not a voter: its copy of the metadata, followed.
    pub(super) follower: RefCell<Option<Rc<MetadataFollower>>>,
    /// On shard 0, once it has started: the broker's membership of the cluster.
    pub(super) membership: RefCell<Option<Rc<Membership>>>,
    /// What every shard's partitions have yet to write, against `queued.max.request.bytes`.
    pub queued: Arc<QueuedBytes>,
    /// What every shard's writes met, for the broker's heartbeat.
    pub storage_health: Arc<StorageHealth>,
    /// What this shard's partitions keep in their tail caches, against
    /// `log.tail.cache.shard.bytes`.
    pub tail_budget: Rc<TailBudget>,
    /// What this shard's partitions keep of what was read from their segments, against
    /// `log.read.cache.shard.bytes`.
    pub read_cache: Rc<ReadCache>,
    /// This shard's share of `log.segment.files.open.max`.
    pub open_files: Rc<OpenFiles>,
}

/// What the broker's shards share across threads.
pub struct BrokerWide {
    pub queued: Arc<QueuedBytes>,
    pub storage_health: Arc<StorageHealth>,
    /// The cluster the data directory belongs to, once known.
    pub cluster_id: Arc<OnceLock<ClusterId>>,
}

impl Shard {
    pub fn new(
        id: ShardId,
        count: usize,
        config: Arc<BrokerConfig>,
        disk: &BTreeMap<String, DiskTopic>,
        peers: Option<Peers<MeshMessage>>,
        broker_wide: BrokerWide,
    ) -> Self {
        let BrokerWide { queued, storage_health, cluster_id } = broker_wide;
        let topic_defaults = Rc::new(config.topic_defaults.clone());
        let max_connections = config.max_connections;
        Self {
            queued,
            storage_health,
            tail_budget: TailBudget::new(config.tail_cache_shard_bytes),
            read_cache: ReadCache::new(config.read_cache_shard_bytes),
            open_files: OpenFiles::new(config.segment_files_open_max.div_ceil(count).max(1)),
            groups: Coordinator::new(&config),
            voter: RefCell::new(None),
            membership: RefCell::new(None),
            follower: RefCell::new(None),
            cluster_id,
            id,
            count,
            config,
            metrics: Rc::new(Metrics::default()),
            catalog: RefCell::new(Catalog {
                topics: disk.iter().map(|(name, t)| (name.clone(), t.info.clone())).collect(),
            }),
            image: RefCell::new(Arc::default()),
            topic_defaults: RefCell::new(topic_defaults),
            max_connections: Cell::new(max_connections),
            published: Cell::new(0),
            published_everywhere: Cell::new(0),
            published_signal: Event::new(),
            ready: Cell::new(false),
            started: std::time::Instant::now(),
            disk_topics: RefCell::new(match id == CONTROLLER_SHARD {
                true => disk.iter().map(|(name, t)| (name.clone(), t.file.clone())).collect(),
                false => BTreeMap::new(),
            }),
            partitions: RefCell::new(HashMap::new()),
            followed: RefCell::new(BTreeMap::new()),
            peers,
            waiting: RefCell::new(HashMap::new()),
            next_call_id: Cell::new(0),
            next_connection_id: Cell::new(0),
            send_turns: (0..count).map(|_| Turns::default()).collect(),
            stopping: Cell::new(false),
            stop_event: Event::new(),
        }
    }

    pub fn owner(&self, topic: &str, partition: PartitionId) -> ShardId {
        catalog::owner_shard(topic, partition, self.count)
    }

    pub fn topic(&self, name: &str) -> Option<TopicInfo> {
        self.catalog.borrow().topics.get(name).cloned()
    }

    /// The defaults topics resolve their settings against here, dynamic ones included.
    pub fn topic_defaults(&self) -> Rc<TopicConfig> {
        self.topic_defaults.borrow().clone()
    }

    /// `max.connections` as it stands, dynamic settings included: both listeners together, every
    /// shard its share.
    pub fn max_connections(&self) -> u32 {
        self.max_connections.get()
    }

    /// Whether the catalog has topic `name` (without copying its settings as [`Self::topic`]).
    pub fn has_topic(&self, name: &str) -> bool {
        self.catalog.borrow().topics.contains_key(name)
    }

    /// Whether `topic` exists with a partition `partition`.
    pub fn has_partition(&self, topic: &str, partition: PartitionId) -> bool {
        self.catalog.borrow().topics.get(topic).is_some_and(|t| partition.0 < t.partitions)
    }

    pub fn topics(&self) -> Vec<(String, TopicInfo)> {
        self.catalog.borrow().topics.iter().map(|(n, i)| (n.clone(), i.clone())).collect()
    }

    /// Runs `call` on the shard `target`: here, or across the mesh.
    pub async fn call(
        self: &Rc<Self>,
        target: ShardId,
        call: ShardCall,
    ) -> Result<ShardAnswer, BrokerError> {
        if target == self.id {
            return Ok(self.execute(call).await);
        }
        let unavailable = |why: &str| BrokerError::new(ErrorKind::NotAvailable, why.to_string());
        let Some(peers) = &self.peers else {
            return Err(unavailable("no such shard"));
        };
        let call_id = self.next_call_id.get();
        self.next_call_id.set(call_id + 1);
        let (reply, answer) = oneshot::channel();
        self.waiting.borrow_mut().insert(call_id, reply);
        let sent = {
            let turn = self.send_turns[target.0].take();
            turn.wait().await;
            peers.send_to(target, MeshMessage::Call { call_id, call }).await
        };
        if sent.is_err() {
            self.waiting.borrow_mut().remove(&call_id);
            return Err(unavailable("shard is stopping"));
        }
        answer.await.map_err(|_| unavailable("shard dropped the call"))
    }

    /// Handles a message from shard `from`: runs a call (in its own task, so a slow one does
    /// not hold up the rest) and sends the answer back, or hands an answer to its waiting call.
    pub fn deliver(self: &Rc<Self>, from: ShardId, message: MeshMessage) {
        match message {
            MeshMessage::Call { call_id, call } => {
                let shard = self.clone();
                glommio::spawn_local(async move {
                    let answer = shard.execute(call).await;
                    if let Some(peers) = &shard.peers {
                        // Fails only when the caller's shard is gone; nobody waits then.
                        let _ = peers.send_to(from, MeshMessage::Answer { call_id, answer }).await;
                    }
                })
                .detach();
            }
            MeshMessage::Answer { call_id, answer } => {
                // The caller may have gone away (its connection closed); nothing to do then.
                if let Some(waiter) = self.waiting.borrow_mut().remove(&call_id) {
                    let _ = waiter.send(answer);
                }
            }
        }
    }

    /// Executes a call addressed to this shard.
    pub async fn execute(self: &Rc<Self>, call: ShardCall) -> ShardAnswer {
        let on_a_partition = matches!(
            call,
            ShardCall::Produce(_)
                | ShardCall::Fetch(_)
                | ShardCall::ListOffsets(_)
                | ShardCall::EpochEnd(_)
                | ShardCall::Watermarks(_)
                | ShardCall::Producers(_)
                | ShardCall::DeleteRecords(_)
        );
        if on_a_partition {
            // The shard a client reached may have taken the broker's first ready publication
            // before this one (shard 0 publishes to one shard after another, and a partition
            // that comes to be led records its epoch first): a client's request on one of this
            // shard's partitions waits until this shard has taken it too, as it waited on its
            // own shard.
            self.wait_ready().await;
        }
        match call {
            ShardCall::Produce(request) => ShardAnswer::Produce(self.produce_local(request).await),
            ShardCall::Fetch(request) => ShardAnswer::Fetch(self.fetch_local(request).await),
            ShardCall::ListOffsets(request) => {
                ShardAnswer::ListOffsets(self.list_offset_local(request).await)
            }
            ShardCall::EpochEnd(request) => ShardAnswer::EpochEnd(self.epoch_end_local(request)),
            ShardCall::ReplicaFetch(request) => {
                ShardAnswer::ReplicaFetch(self.replica_fetch_local(request).await)
            }
            ShardCall::Watermarks(Watermarks { topic, partition }) => {
                ShardAnswer::Watermarks(self.partition(&topic, partition).map(|p| p.bounds()))
            }
            // From any replica here, as Kafka's (an admin client may ask a follower).
            ShardCall::Producers(Producers { topic, partition }) => {
                let held = self.partition(&topic, partition);
                ShardAnswer::Producers(held.map(|p| p.log().producers()))
            }
            ShardCall::DeleteRecords(DeleteRecords { topic, partition, offset, timeout }) => {
                ShardAnswer::DeleteRecords(
                    self.delete_records_local(&topic, partition, offset, timeout).await,
                )
            }
            ShardCall::ReplicaSizes(ReplicaSizes {}) => {
                ShardAnswer::ReplicaSizes(self.replica_sizes_here())
            }
            ShardCall::Stats(Stats {}) => ShardAnswer::Stats(Box::new(self.stats_here())),
            ShardCall::ForwardToController(ForwardToController { request }) => {
                ShardAnswer::ForwardToController(self.forward_here(request).await)
            }
            ShardCall::Publish(Publish { published }) => {
                let taken = self.take_publication(published).await;
                self.coordinate_led_offsets_partitions();
                ShardAnswer::Publish(taken)
            }
            ShardCall::AwaitPublished(AwaitPublished { index }) => {
                let deadline = std::time::Instant::now() + TOPIC_WAIT;
                self.wait_published_everywhere(index, deadline).await;
                ShardAnswer::AwaitPublished(())
            }
            ShardCall::RemoveTopic(RemoveTopic { name }) => {
                ShardAnswer::RemoveTopic(self.remove_topic_here(name).await)
            }
            ShardCall::Group(Group { call }) => {
                ShardAnswer::Group(Box::new(self.groups.handle(self, call).await))
            }
            ShardCall::StepVoter(StepVoter { from, cluster_id, messages }) => {
                ShardAnswer::StepVoter(self.step_voter(from, cluster_id, messages))
            }
            ShardCall::AskController(AskController { request, via }) => {
                ShardAnswer::AskController(self.ask_controller_here(request, via).await)
            }
            ShardCall::HeartbeatsLost(HeartbeatsLost { node, broker_epoch, via }) => {
                self.heartbeats_lost_here(node, broker_epoch, via).await;
                ShardAnswer::HeartbeatsLost(())
            }
            ShardCall::DescribeCluster(DescribeCluster {}) => {
                ShardAnswer::DescribeCluster(self.describe_cluster_here())
            }
            ShardCall::CommittedMetadata(CommittedMetadata { from }) => {
                ShardAnswer::CommittedMetadata(self.committed_metadata_here(from))
            }
            ShardCall::NextProducerId(NextProducerId {}) => {
                ShardAnswer::NextProducerId(self.next_producer_id_here().await)
            }
        }
    }

    /// A number for a new connection, unique in this process (the shard's id in the high bits).
    pub fn new_connection_id(&self) -> u64 {
        let count = self.next_connection_id.get() + 1;
        self.next_connection_id.set(count);
        (self.id.0 as u64) << 48 | count
    }

    pub fn begin_stop(&self) {
        self.stopping.set(true);
        self.stop_event.notify(usize::MAX);
    }

    /// Resolves once the shard starts stopping.
    pub async fn wait_for_stop(&self) {
        loop {
            let listener = self.stop_event.listen();
            if self.stopping.get() {
                return;
            }
            listener.await;
        }
    }
}

/// Typed front ends of [`Shard::call`] for the protocol handlers.
impl Shard {
    /// Runs `request` on shard `target` and returns its answer, or why `target` could not be
    /// reached (it is stopping): retriable for clients.
    pub async fn ask<R: Request>(
        self: &Rc<Self>,
        target: ShardId,
        request: R,
    ) -> Result<R::Answer, BrokerError> {
        let answer = self.call(target, request.into_call()).await?;
        R::from_answer(answer).ok_or_else(|| {
            BrokerError::new(ErrorKind::NotAvailable, "a shard answered a different request")
        })
    }

    pub async fn produce(
        self: &Rc<Self>,
        topic: &str,
        partition: PartitionId,
        acks: Acks,
        entry: PendingEntry,
    ) -> Result<Produced, BrokerError> {
        if is_internal_topic(topic) {
            // As Kafka: only the broker appends to its internal topics. A client's records there
            // would be replayed as commits (or stop the replay) at the next start.
            let why = format!("cannot append to internal topic {topic}");
            return Err(BrokerError::new(ErrorKind::InvalidTopicName, why));
        }
        let produce = Produce { topic: topic.to_string(), partition, acks, entry };
        self.ask(self.owner(topic, partition), produce).await?
    }

    /// Reads from `offset` (see [`Fetch`]); `epoch` is the leader epoch the client knows, if it
    /// says.
    pub async fn fetch(
        self: &Rc<Self>,
        (topic, partition, epoch): (&str, PartitionId, Option<LeaderEpoch>),
        offset: Offset,
        max_bytes: usize,
        max_wait: Duration,
    ) -> Result<ReadOutcome, BrokerError> {
        let topic = topic.to_string();
        let fetch = Fetch { topic, partition, epoch, offset, max_bytes, max_wait };
        self.ask(self.owner(&fetch.topic, partition), fetch).await?
    }

    /// The offset (and, for a time lookup, the timestamp) of the latest (-1), earliest (-2) or
    /// first record at or after a time; (-1, -1) when no record is that new.
    pub async fn list_offset(
        self: &Rc<Self>,
        (topic, partition, epoch): (&str, PartitionId, Option<LeaderEpoch>),
        timestamp: i64,
    ) -> Result<(i64, i64, i32), BrokerError> {
        let list = ListOffsets { topic: topic.to_string(), partition, epoch, timestamp };
        self.ask(self.owner(topic, partition), list).await?
    }

    /// The idempotent producers partition `partition` of `topic` remembers, at its leader.
    pub async fn producers(
        self: &Rc<Self>,
        topic: &str,
        partition: PartitionId,
    ) -> Result<Vec<ProducerSummary>, BrokerError> {
        let asked = Producers { topic: topic.to_string(), partition };
        self.ask(self.owner(topic, partition), asked).await?
    }

    /// Kafka's DeleteRecords of one partition, at its leader (see [`DeleteRecords`]).
    pub async fn delete_records(
        self: &Rc<Self>,
        topic: &str,
        partition: PartitionId,
        offset: Option<Offset>,
        timeout: std::time::Duration,
    ) -> Result<Offset, BrokerError> {
        let asked = DeleteRecords { topic: topic.to_string(), partition, offset, timeout };
        self.ask(self.owner(topic, partition), asked).await?
    }

    /// Every replica this broker holds, with its size on disk, from every shard.
    pub async fn replica_sizes(self: &Rc<Self>) -> Result<Vec<ReplicaSize>, BrokerError> {
        let mut sizes = Vec::new();
        for shard in (0..self.count).map(ShardId) {
            sizes.extend(self.ask(shard, ReplicaSizes {}).await?);
        }
        sizes.sort_by(|a, b| (&a.topic, a.partition).cmp(&(&b.topic, b.partition)));
        Ok(sizes)
    }

    /// OffsetForLeaderEpoch of one partition (see [`EpochEnd`]).
    pub async fn epoch_end(
        self: &Rc<Self>,
        (topic, partition, epoch): (&str, PartitionId, Option<LeaderEpoch>),
        leader_epoch: LeaderEpoch,
    ) -> Result<(i32, i64), BrokerError> {
        let asked = EpochEnd { topic: topic.to_string(), partition, epoch, leader_epoch };
        self.ask(self.owner(topic, partition), asked).await?
    }

    pub async fn watermarks(
        self: &Rc<Self>,
        topic: &str,
        partition: PartitionId,
    ) -> Result<LogBounds, BrokerError> {
        self.ask(self.owner(topic, partition), Watermarks { topic: topic.to_string(), partition })
            .await?
    }

    /// Creates a topic for a client: any but the broker's internal ones, which it creates itself
    /// with their own settings.
    pub async fn create_topic(
        self: &Rc<Self>,
        topic: TopicRequest,
    ) -> Result<TopicInfo, BrokerError> {
        if is_internal_topic(&topic.name) {
            let why = format!("{} is internal: the broker creates it on first use", topic.name);
            return Err(BrokerError::new(ErrorKind::InvalidTopicName, why));
        }
        self.create_topic_in_cluster(topic).await
    }

    /// The topic's settings, creating it with `num.partitions` when it is missing and
    /// `auto.create.topics.enable` is on (Kafka creates on produce, and on metadata that allows
    /// it). An internal topic is created with its own settings whatever the switch says.
    pub async fn topic_or_create(self: &Rc<Self>, name: &str) -> Result<TopicInfo, BrokerError> {
        if let Some(info) = self.topic(name) {
            return Ok(info);
        }
        // Whether this request's own creation answered: then every shard has the topic already
        // (`forward_here` waits for that).
        let created_here = if is_internal_topic(name) {
            self.ensure_offsets_topic().await?;
            false
        } else if !self.config.auto_create_topics {
            let why = format!("no topic {name} (auto.create.topics.enable is off)");
            return Err(BrokerError::new(ErrorKind::UnknownTopic, why));
        } else {
            let topic = TopicRequest {
                name: name.to_string(),
                partitions: self.config.num_partitions,
                replication_factor: None,
                assignment: None,
                overrides: BTreeMap::new(),
            };
            match self.create_topic(topic).await {
                Err(e) if e.kind != ErrorKind::TopicAlreadyExists => return Err(e),
                Err(_) => false,
                Ok(_) => true,
            }
        };
        // Created by another request at the same moment, perhaps: it reaches this shard with
        // the metadata that holds it, and is used once every shard has that metadata (the
        // partitions are on any of them).
        let deadline = std::time::Instant::now() + TOPIC_WAIT;
        self.wait_for_publication(deadline, || self.has_topic(name)).await;
        let Some(info) = self.topic(name) else {
            let why = format!("topic {name} was created but has not reached this broker yet");
            return Err(BrokerError::new(ErrorKind::UnknownTopic, why));
        };
        if !created_here {
            let index = self.published.get();
            // Boxed: `ask` -> `execute` -> ... -> `topic_or_create` -> `ask` is a cycle.
            let everywhere: std::pin::Pin<Box<dyn std::future::Future<Output = _> + '_>> =
                Box::pin(self.ask(CONTROLLER_SHARD, AwaitPublished { index }));
            let _ = everywhere.await;
        }
        Ok(info)
    }

    /// Raises a topic's partition count through the active controller.
    pub async fn add_partitions(
        self: &Rc<Self>,
        name: &str,
        count: u32,
        assignment: Option<Vec<Vec<NodeId>>>,
    ) -> Result<(), BrokerError> {
        self.add_partitions_in_cluster(name, count, assignment).await
    }

    pub async fn delete_topic(self: &Rc<Self>, name: &str) -> Result<(), BrokerError> {
        self.delete_topic_in_cluster(name).await
    }
}
