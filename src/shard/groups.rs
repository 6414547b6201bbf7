//! Group routing: which shard coordinates a group, and how a group request gets there; and the
//! coordinator's view of its shard (`OffsetsLogs`).

use std::collections::BTreeMap;
use std::rc::Rc;

use crate::cluster::metadata::Endpoints;
use crate::error::{BrokerError, ErrorKind};
use crate::group::offsets::{self, OFFSETS_PARTITIONS, OFFSETS_TOPIC};
use crate::group::{GroupRequest, OffsetsLogs};
use crate::partition::Partition;
use crate::shard::call::Group;
use crate::shard::controller::TopicRequest;
use crate::shard::state::Shard;
use crate::types::{NodeId, PartitionId, ShardId};

impl Shard {
    /// The shard coordinating `group`: the owner of its `__consumer_offsets` partition.
    pub fn group_shard(&self, group: &str) -> ShardId {
        self.owner(OFFSETS_TOPIC, offsets::partition_for(group))
    }

    /// Runs a group operation on the group's coordinator shard. NOT_COORDINATOR when another
    /// broker leads the group's `__consumer_offsets` partition: the client finds it again.
    pub async fn group<R: GroupRequest>(
        self: &Rc<Self>,
        group: &str,
        request: R,
    ) -> Result<R::Answer, ErrorKind> {
        let me = self.config.node_id;
        if let Some(leader) = self.partition_leader(OFFSETS_TOPIC, offsets::partition_for(group)) {
            if leader != Some(me) {
                return Err(ErrorKind::NotCoordinator);
            }
        }
        self.group_on(self.group_shard(group), request).await
    }

    /// The broker coordinating `group`: the leader of its `__consumer_offsets` partition,
    /// created on first use (as Kafka creates it on FindCoordinator).
    pub async fn group_coordinator(self: &Rc<Self>, group: &str) -> Result<NodeId, BrokerError> {
        // Whatever kept the topic from being created, the client asks again later.
        self.ensure_offsets_topic().await.map_err(|e| {
            BrokerError::new(ErrorKind::CoordinatorNotAvailable, format!("{OFFSETS_TOPIC}: {e}"))
        })?;
        let partition = offsets::partition_for(group);
        match self.partition_leader(OFFSETS_TOPIC, partition) {
            Some(leader) => leader.ok_or_else(|| {
                let why = format!("{OFFSETS_TOPIC}-{partition} has no leader for the moment");
                BrokerError::new(ErrorKind::CoordinatorNotAvailable, why)
            }),
            None => {
                let why = format!("{OFFSETS_TOPIC} is not in this broker's metadata yet");
                Err(BrokerError::new(ErrorKind::CoordinatorNotAvailable, why))
            }
        }
    }

    /// Where broker `node`, a group's coordinator, is reached, as it registered: refused with
    /// COORDINATOR_NOT_AVAILABLE while it is not live (a fenced broker coordinates nothing).
    pub fn coordinator_endpoints(&self, node: NodeId) -> Result<Endpoints, BrokerError> {
        let image = self.metadata_image();
        let broker = image.brokers.get(&node).filter(|b| !b.fenced).ok_or_else(|| {
            let why = format!("the coordinator, broker {node}, is not live");
            BrokerError::new(ErrorKind::CoordinatorNotAvailable, why)
        })?;
        Ok(broker.endpoints.clone())
    }

    /// Runs a group operation on shard `target` (listing groups asks every shard). Fails with
    /// COORDINATOR_NOT_AVAILABLE when `target` is stopping: retriable for clients.
    pub async fn group_on<R: GroupRequest>(
        self: &Rc<Self>,
        target: ShardId,
        request: R,
    ) -> Result<R::Answer, ErrorKind> {
        // Boxed: `ask` -> `execute` -> coordinator -> `persist` -> topic creation -> `ask`.
        let answer: std::pin::Pin<Box<dyn std::future::Future<Output = _> + '_>> =
            Box::pin(self.ask(target, Group { call: request.into_call() }));
        let answer = answer.await.map_err(|_| ErrorKind::CoordinatorNotAvailable)?;
        R::from_answer(*answer).ok_or(ErrorKind::CoordinatorNotAvailable)
    }

    /// Creates `__consumer_offsets` on first use.
    pub async fn ensure_offsets_topic(self: &Rc<Self>) -> Result<(), BrokerError> {
        if self.has_topic(OFFSETS_TOPIC) {
            return Ok(());
        }
        // Never deleted by age or size: the coordinator compacts it (see `Coordinator::compact`).
        let overrides = BTreeMap::from([
            ("retention.ms".to_string(), "-1".to_string()),
            ("retention.bytes".to_string(), "-1".to_string()),
            ("segment.bytes".to_string(), self.config.offsets_topic_segment_bytes.to_string()),
        ]);
        let topic = TopicRequest {
            name: OFFSETS_TOPIC.to_string(),
            partitions: OFFSETS_PARTITIONS,
            replication_factor: Some(self.config.offsets_topic_replication_factor),
            assignment: None,
            overrides,
        };
        // Boxed: `execute` -> coordinator commit -> here -> creation -> `call` -> `execute`.
        let creating: std::pin::Pin<Box<dyn std::future::Future<Output = _> + '_>> =
            Box::pin(self.create_topic_in_cluster(topic));
        match creating.await {
            Err(e) if e.kind != ErrorKind::TopicAlreadyExists => Err(e),
            _ => Ok(()),
        }
    }
}

/// The coordinator's view of this shard: the `__consumer_offsets` partitions it owns.
impl OffsetsLogs for Rc<Shard> {
    fn owned(&self) -> Vec<(PartitionId, Rc<Partition>)> {
        if !self.has_topic(OFFSETS_TOPIC) {
            return Vec::new();
        }
        (0..OFFSETS_PARTITIONS)
            .map(PartitionId)
            .filter(|&partition| self.owner(OFFSETS_TOPIC, partition) == self.id)
            .filter_map(|partition| {
                Some((partition, self.partition(OFFSETS_TOPIC, partition).ok()?))
            })
            .collect()
    }

    async fn open(&self, partition: PartitionId) -> Result<Rc<Partition>, BrokerError> {
        self.ensure_offsets_topic().await?;
        // A partition led elsewhere: this broker does not coordinate the group (any more).
        self.led_partition(OFFSETS_TOPIC, partition).map_err(|e| match e.kind {
            ErrorKind::NotLeaderOrFollower => {
                BrokerError::new(ErrorKind::NotCoordinator, e.message)
            }
            _ => e,
        })
    }
}
