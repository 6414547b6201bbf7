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
        let answer = self.ask(target, Group { call: request.into_call() }).await;
        let answer = answer.map_err(|_| ErrorKind::CoordinatorNotAvailable)?;
        R::from_answer((*answer)?).ok_or(ErrorKind::CoordinatorNotAvailable)
    }

    /// Has this shard's coordinator follow the broker's leadership of the `__consumer_offsets`
    /// partitions the shard owns, as the last publication left it: a partition newly led is
    /// replayed in the background, one let go forgets its groups.
    pub(super) fn coordinate_led_offsets_partitions(self: &Rc<Self>) {
        let owned = (0..OFFSETS_PARTITIONS)
            .map(PartitionId)
            .filter(|&partition| self.owner(OFFSETS_TOPIC, partition) == self.id);
        for partition in owned {
            let key = (OFFSETS_TOPIC.to_string(), partition);
            let led = self.partitions.borrow().get(&key).and_then(|p| p.leader_epoch());
            if let Some(load) = self.groups.follow_leadership(partition, led) {
                let shard = self.clone();
                glommio::spawn_local(async move { shard.groups.load(&shard, load).await }).detach();
            }
        }
    }

    /// `offsets.topic.replication.factor`, capped by the cluster's size: its voters, or the
    /// brokers registered if more. With fewer live brokers than that the topic is not created
    /// (COORDINATOR_NOT_AVAILABLE, asked again), as in Kafka; a cluster of one gets one.
    fn offsets_topic_replication_factor(&self) -> u16 {
        let voters = self.config.quorum_voters.len().max(1);
        let registered = self.metadata_image().brokers.len();
        let size = u16::try_from(voters.max(registered)).unwrap_or(u16::MAX);
        self.config.offsets_topic_replication_factor.min(size)
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
            replication_factor: Some(self.offsets_topic_replication_factor()),
            assignment: None,
            overrides,
        };
        match self.create_topic_in_cluster(topic).await {
            Err(e) if e.kind != ErrorKind::TopicAlreadyExists => Err(e),
            _ => Ok(()),
        }
    }
}

/// The coordinator's view of this shard: the `__consumer_offsets` partitions it owns.
impl OffsetsLogs for Rc<Shard> {
    fn led(&self, partition: PartitionId) -> Result<Rc<Partition>, BrokerError> {
        // A partition led elsewhere: this broker does not coordinate the group (any more).
        self.led_partition(OFFSETS_TOPIC, partition).map_err(|e| match e.kind {
            ErrorKind::NotLeaderOrFollower | ErrorKind::UnknownTopic => {
                BrokerError::new(ErrorKind::NotCoordinator, e.message)
            }
            _ => e,
        })
    }
}
