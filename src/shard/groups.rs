//! Group routing: which shard coordinates a group, and how a group request gets there; and the
//! coordinator's view of its shard (`OffsetsLogs`).

use std::collections::BTreeMap;
use std::rc::Rc;

use crate::error::{BrokerError, ErrorKind};
use crate::group::offsets::{self, OFFSETS_PARTITIONS, OFFSETS_TOPIC};
use crate::group::{GroupRequest, OffsetsLogs};
use crate::partition::Partition;
use crate::shard::call::Group;
use crate::shard::state::Shard;
use crate::types::{PartitionId, ShardId};

impl Shard {
    /// The shard coordinating `group`: the owner of its `__consumer_offsets` partition.
    pub fn group_shard(&self, group: &str) -> ShardId {
        self.owner(OFFSETS_TOPIC, offsets::partition_for(group))
    }

    /// Runs a group operation on the group's coordinator shard.
    pub async fn group<R: GroupRequest>(
        self: &Rc<Self>,
        group: &str,
        request: R,
    ) -> Result<R::Answer, ErrorKind> {
        self.group_on(self.group_shard(group), request).await
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
        if self.topic(OFFSETS_TOPIC).is_some() {
            return Ok(());
        }
        // Never deleted by age or size: the coordinator compacts it (see `Coordinator::compact`).
        let overrides = BTreeMap::from([
            ("retention.ms".to_string(), "-1".to_string()),
            ("retention.bytes".to_string(), "-1".to_string()),
            ("segment.bytes".to_string(), self.config.offsets_topic_segment_bytes.to_string()),
        ]);
        // Boxed: `execute` -> coordinator commit -> here -> `create_topic` -> `call` -> `execute`.
        let creating: std::pin::Pin<Box<dyn std::future::Future<Output = _> + '_>> =
            Box::pin(self.create_any_topic(OFFSETS_TOPIC, OFFSETS_PARTITIONS, overrides));
        match creating.await {
            Err(e) if e.kind != ErrorKind::TopicAlreadyExists => Err(e),
            _ => Ok(()),
        }
    }
}

/// The coordinator's view of this shard: the `__consumer_offsets` partitions it owns.
impl OffsetsLogs for Rc<Shard> {
    fn owned(&self) -> Vec<(PartitionId, Rc<Partition>)> {
        if self.topic(OFFSETS_TOPIC).is_none() {
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
        self.partition(OFFSETS_TOPIC, partition)
    }
}
