//! The partition registry: the partitions this shard owns, opened from the catalog at start and
//! as topics change, and the operations run on them in place. The replica manager of the
//! cluster grows out of it.

use std::rc::Rc;
use std::time::Instant;

use crate::error::{BrokerError, ErrorKind};
use crate::log::storage::DmaStorage;
use crate::log::{LogLimits, PartitionLog, SharedByShard};
use crate::partition::{Partition, ReadOutcome, OFFSET_EARLIEST, OFFSET_LATEST};
use crate::shard::call::{Fetch, ListOffsets, Produce};
use crate::shard::catalog::{self, TopicInfo};
use crate::shard::state::{PartitionKey, Shard, STAGED_BYTES_MAX};
use crate::types::{Offset, PartitionId};

impl Shard {
    pub(super) fn limits(&self) -> LogLimits {
        LogLimits {
            write_bytes_max: self.config.flush_write_bytes_max,
            tail_cache_bytes: self.config.tail_cache_bytes,
            staged_bytes_max: STAGED_BYTES_MAX,
            producer_expiration_ms: i64::try_from(self.config.producer_id_expiration_ms)
                .unwrap_or(i64::MAX),
            recovery_point_bytes: crate::log::partition::RECOVERY_POINT_BYTES,
        }
    }

    /// What every log this shard opens shares with the others.
    pub(super) fn shared(&self) -> SharedByShard {
        SharedByShard {
            storage: DmaStorage,
            metrics: self.metrics.clone(),
            queued: self.queued.clone(),
            tail_budget: self.tail_budget.clone(),
            open_files: self.open_files.clone(),
        }
    }

    /// Opens every partition this shard owns among the catalog's topics.
    pub async fn open_owned_partitions(&self) -> std::io::Result<()> {
        let topics: Vec<(String, TopicInfo)> =
            self.catalog.borrow().topics.iter().map(|(n, i)| (n.clone(), i.clone())).collect();
        for (name, info) in topics {
            self.open_partitions(&name, &info).await?;
        }
        Ok(())
    }

    async fn open_partitions(&self, name: &str, info: &TopicInfo) -> std::io::Result<()> {
        let topic: Rc<str> = Rc::from(name);
        let owned =
            (0..info.partitions).map(PartitionId).filter(|p| self.owner(name, *p) == self.id);
        for partition in owned {
            // Adding partitions re-applies a topic: the ones already open stay as they are.
            if self.partitions.borrow().contains_key(&(name.to_string(), partition)) {
                continue;
            }
            let dir = catalog::partition_dir(&self.config.data_dir, name, partition);
            let log = PartitionLog::open(
                topic.clone(),
                partition,
                dir,
                info.config.clone(),
                self.limits(),
                self.shared(),
            )
            .await?;
            self.partitions
                .borrow_mut()
                .insert((name.to_string(), partition), Rc::new(Partition::new(log)));
        }
        Ok(())
    }

    /// A partition this shard owns.
    pub fn partition(
        &self,
        topic: &str,
        partition: PartitionId,
    ) -> Result<Rc<Partition>, BrokerError> {
        if let Some(found) = self.partitions.borrow().get(&(topic.to_string(), partition)) {
            return Ok(found.clone());
        }
        match self.catalog.borrow().topics.get(topic) {
            None => Err(BrokerError::new(ErrorKind::UnknownTopic, format!("no topic {topic}"))),
            Some(info) => Err(BrokerError::new(
                ErrorKind::UnknownPartition,
                format!(
                    "topic {topic} has {} partitions, no partition {partition}",
                    info.partitions
                ),
            )),
        }
    }

    pub(super) async fn produce_local(
        &self,
        request: Produce,
    ) -> Result<(Offset, Offset), BrokerError> {
        let Produce { topic, partition, acks, entry } = request;
        let target = self.partition(&topic, partition)?;
        // Nothing awaits before the append, so requests keep their arrival order.
        let appended = target.append(entry)?;
        target.wait_acked(&appended, acks).await?;
        Ok((appended.base_offset, target.log_start()))
    }

    pub(super) async fn fetch_local(&self, request: Fetch) -> Result<ReadOutcome, BrokerError> {
        let Fetch { topic, partition, offset, max_bytes, max_wait } = request;
        let target = self.partition(&topic, partition)?;
        let outcome = target.read(offset, max_bytes).await?;
        if !outcome.entries.is_empty() || max_wait.is_zero() || self.stopping.get() {
            return Ok(outcome);
        }
        let stop = async {
            self.wait_for_stop().await;
            false
        };
        if futures_lite::future::or(target.wait_for_data(offset, max_wait), stop).await {
            let woken_at = Instant::now();
            let outcome = target.read(offset, max_bytes).await?;
            return Ok(ReadOutcome { woken_at: Some(woken_at), ..outcome });
        }
        Ok(outcome)
    }

    pub(super) async fn list_offset_local(
        &self,
        request: ListOffsets,
    ) -> Result<(i64, i64), BrokerError> {
        let ListOffsets { topic, partition, timestamp } = request;
        let target = self.partition(&topic, partition)?;
        let found = match timestamp {
            OFFSET_LATEST => Some((target.high_watermark(), -1)),
            OFFSET_EARLIEST => Some((target.log_start(), -1)),
            t if t >= 0 => target.offset_for_timestamp(t).await?,
            other => {
                let why = format!("timestamp {other} is neither -1, -2 nor a time");
                return Err(BrokerError::new(ErrorKind::InvalidRequest, why));
            }
        };
        Ok(found.map_or((-1, -1), |(offset, time)| (offset.0 as i64, time)))
    }

    pub(super) async fn apply_topic(
        &self,
        name: String,
        info: Option<TopicInfo>,
    ) -> Result<(), BrokerError> {
        match info {
            Some(info) => {
                self.open_partitions(&name, &info).await.map_err(|e| {
                    BrokerError::new(ErrorKind::StorageError, format!("opening topic {name}: {e}"))
                })?;
                // Published last, so nobody sees the topic before its partitions are open.
                self.catalog.borrow_mut().topics.insert(name, info);
            }
            None => {
                self.catalog.borrow_mut().topics.remove(&name);
                let removed: Vec<Rc<Partition>> = {
                    let mut partitions = self.partitions.borrow_mut();
                    let keys: Vec<PartitionKey> =
                        partitions.keys().filter(|(t, _)| *t == name).cloned().collect();
                    keys.iter().filter_map(|k| partitions.remove(k)).collect()
                };
                for partition in removed {
                    partition.log().close().await;
                    partition.log().mark_deleted();
                }
            }
        }
        Ok(())
    }

    /// Applies retention to every partition of this shard, once.
    pub async fn enforce_retention(&self) {
        let owned: Vec<Rc<Partition>> = self.partitions.borrow().values().cloned().collect();
        let now = crate::now_ms();
        for partition in owned {
            if let Err(e) = partition.enforce_retention(now).await {
                let log = partition.log();
                tracing::error!(topic = %log.topic, partition = %log.partition, "retention failed: {e}");
            }
        }
    }

    /// Flushes, syncs and closes every partition of this shard.
    pub async fn close_partitions(&self) {
        let owned: Vec<Rc<Partition>> =
            self.partitions.borrow_mut().drain().map(|(_, p)| p).collect();
        for partition in owned {
            partition.log().close().await;
        }
    }
}
