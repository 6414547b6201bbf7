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
use crate::cluster::metadata::ClusterId;
use crate::cluster::node::ControllerNode;
use crate::config::BrokerConfig;
use crate::error::BrokerError;
use crate::error::ErrorKind;
use crate::group::offsets::OFFSETS_TOPIC;
use crate::group::Coordinator;
use crate::log::queued::QueuedBytes;
use crate::log::segment::OpenFiles;
use crate::log::tail_cache::TailBudget;
use crate::metrics::Metrics;
use crate::partition::{Acks, LogBounds, Partition, ReadOutcome};
use crate::record::PendingEntry;
use crate::shard::call::{
    AddPartitions, ApplyTopic, AskController, CommittedMetadata, CreateTopic, DeleteTopic,
    DescribeCluster, Fetch, Group, ListOffsets, MeshMessage, NextProducerId, Produce, Request,
    ShardAnswer, ShardCall, StepVoter, Watermarks,
};
use crate::shard::catalog::{self, Catalog, TopicInfo};
use crate::shard::mesh::Peers;
use crate::shard::turns::Turns;
use crate::shard::CONTROLLER_SHARD;
use crate::types::{Offset, PartitionId, ShardId};

/// Appended-but-unwritten bytes per partition beyond which producers wait.
pub(super) const STAGED_BYTES_MAX: usize = 64 * 1024 * 1024;

pub(super) type PartitionKey = (String, PartitionId);

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
    pub(super) catalog: RefCell<Catalog>,
    pub(super) partitions: RefCell<HashMap<PartitionKey, Rc<Partition>>>,
    pub(super) peers: Option<Peers<MeshMessage>>,
    /// Calls sent to other shards, by id, waiting for their answers.
    pub(super) waiting: RefCell<HashMap<u64, oneshot::Sender<ShardAnswer>>>,
    pub(super) next_call_id: Cell<u64>,
    /// One line per target shard: calls enter the mesh in the order they were made even when a
    /// channel is full (otherwise a newer call could slip into a freed slot before an older
    /// one wakes, and two produce requests of one connection could swap offsets).
    pub(super) send_turns: Vec<Turns>,
    /// Serialises topic changes on the controller shard.
    pub(super) admin_lock: glommio::sync::Semaphore,
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
    /// What this shard's partitions keep in their tail caches, against
    /// `log.tail.cache.shard.bytes`.
    pub tail_budget: Rc<TailBudget>,
    /// This shard's share of `log.segment.files.open.max`.
    pub open_files: Rc<OpenFiles>,
}

impl Shard {
    pub fn new(
        id: ShardId,
        count: usize,
        config: Arc<BrokerConfig>,
        catalog: Catalog,
        peers: Option<Peers<MeshMessage>>,
        queued: Arc<QueuedBytes>,
        cluster_id: Arc<OnceLock<ClusterId>>,
    ) -> Self {
        Self {
            queued,
            tail_budget: TailBudget::new(config.tail_cache_shard_bytes),
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
            catalog: RefCell::new(catalog),
            partitions: RefCell::new(HashMap::new()),
            peers,
            waiting: RefCell::new(HashMap::new()),
            next_call_id: Cell::new(0),
            send_turns: (0..count).map(|_| Turns::default()).collect(),
            admin_lock: glommio::sync::Semaphore::new(1),
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
        match call {
            ShardCall::Produce(request) => ShardAnswer::Produce(self.produce_local(request).await),
            ShardCall::Fetch(request) => ShardAnswer::Fetch(self.fetch_local(request).await),
            ShardCall::ListOffsets(request) => {
                ShardAnswer::ListOffsets(self.list_offset_local(request).await)
            }
            ShardCall::Watermarks(Watermarks { topic, partition }) => {
                ShardAnswer::Watermarks(self.partition(&topic, partition).map(|p| p.bounds()))
            }
            ShardCall::CreateTopic(CreateTopic { name, partitions, overrides }) => {
                ShardAnswer::CreateTopic(
                    self.create_topic_as_controller(name, partitions, overrides).await,
                )
            }
            ShardCall::DeleteTopic(DeleteTopic { name }) => {
                ShardAnswer::DeleteTopic(self.delete_topic_as_controller(name).await)
            }
            ShardCall::AddPartitions(AddPartitions { name, count }) => {
                ShardAnswer::AddPartitions(self.add_partitions_as_controller(name, count).await)
            }
            ShardCall::ApplyTopic(ApplyTopic { name, info }) => {
                ShardAnswer::ApplyTopic(self.apply_topic(name, info).await)
            }
            ShardCall::Group(Group { call }) => {
                ShardAnswer::Group(Box::new(self.groups.handle(self, call).await))
            }
            ShardCall::StepVoter(StepVoter { from, cluster_id, messages }) => {
                ShardAnswer::StepVoter(self.step_voter(from, cluster_id, messages))
            }
            ShardCall::AskController(AskController { request }) => {
                ShardAnswer::AskController(self.ask_controller_here(request).await)
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
    ) -> Result<(Offset, Offset), BrokerError> {
        if is_internal_topic(topic) {
            // As Kafka: only the broker appends to its internal topics. A client's records there
            // would be replayed as commits (or stop the replay) at the next start.
            let why = format!("cannot append to internal topic {topic}");
            return Err(BrokerError::new(ErrorKind::InvalidTopicName, why));
        }
        let produce = Produce { topic: topic.to_string(), partition, acks, entry };
        self.ask(self.owner(topic, partition), produce).await?
    }

    pub async fn fetch(
        self: &Rc<Self>,
        topic: &str,
        partition: PartitionId,
        offset: Offset,
        max_bytes: usize,
        max_wait: Duration,
    ) -> Result<ReadOutcome, BrokerError> {
        let fetch = Fetch { topic: topic.to_string(), partition, offset, max_bytes, max_wait };
        self.ask(self.owner(topic, partition), fetch).await?
    }

    /// The offset (and, for a time lookup, the timestamp) of the latest (-1), earliest (-2) or
    /// first record at or after a time; (-1, -1) when no record is that new.
    pub async fn list_offset(
        self: &Rc<Self>,
        topic: &str,
        partition: PartitionId,
        timestamp: i64,
    ) -> Result<(i64, i64), BrokerError> {
        let list = ListOffsets { topic: topic.to_string(), partition, timestamp };
        self.ask(self.owner(topic, partition), list).await?
    }

    pub async fn watermarks(
        self: &Rc<Self>,
        topic: &str,
        partition: PartitionId,
    ) -> Result<LogBounds, BrokerError> {
        self.ask(self.owner(topic, partition), Watermarks { topic: topic.to_string(), partition })
            .await?
    }

    /// Creates a topic through the controller shard.
    /// Creates a topic for a client: any but the broker's internal ones, which it creates itself
    /// with their own settings.
    pub async fn create_topic(
        self: &Rc<Self>,
        name: &str,
        partitions: u32,
        overrides: BTreeMap<String, String>,
    ) -> Result<(), BrokerError> {
        if is_internal_topic(name) {
            let why = format!("{name} is internal: the broker creates it on first use");
            return Err(BrokerError::new(ErrorKind::InvalidTopicName, why));
        }
        self.create_any_topic(name, partitions, overrides).await
    }

    pub(super) async fn create_any_topic(
        self: &Rc<Self>,
        name: &str,
        partitions: u32,
        overrides: BTreeMap<String, String>,
    ) -> Result<(), BrokerError> {
        self.ask(CONTROLLER_SHARD, CreateTopic { name: name.to_string(), partitions, overrides })
            .await?
    }

    /// The topic's settings, creating it with `num.partitions` when it is missing and
    /// `auto.create.topics.enable` is on (Kafka creates on produce, and on metadata that allows
    /// it). An internal topic is created with its own settings whatever the switch says.
    pub async fn topic_or_create(self: &Rc<Self>, name: &str) -> Result<TopicInfo, BrokerError> {
        if let Some(info) = self.topic(name) {
            return Ok(info);
        }
        if is_internal_topic(name) {
            self.ensure_offsets_topic().await?;
        } else if !self.config.auto_create_topics {
            let why = format!("no topic {name} (auto.create.topics.enable is off)");
            return Err(BrokerError::new(ErrorKind::UnknownTopic, why));
        } else {
            match self.create_topic(name, self.config.num_partitions, BTreeMap::new()).await {
                Err(e) if e.kind != ErrorKind::TopicAlreadyExists => return Err(e),
                _ => {}
            }
        }
        self.topic(name).ok_or_else(|| {
            BrokerError::new(ErrorKind::UnknownTopic, format!("topic {name} vanished"))
        })
    }

    /// Raises a topic's partition count through the controller shard.
    pub async fn add_partitions(
        self: &Rc<Self>,
        name: &str,
        count: u32,
    ) -> Result<(), BrokerError> {
        self.ask(CONTROLLER_SHARD, AddPartitions { name: name.to_string(), count }).await?
    }

    pub async fn delete_topic(self: &Rc<Self>, name: &str) -> Result<(), BrokerError> {
        self.ask(CONTROLLER_SHARD, DeleteTopic { name: name.to_string() }).await?
    }
}
