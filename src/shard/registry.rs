//! The partition registry: the partitions this shard owns, opened from the catalog at start and
//! as topics change, and the operations run on them in place. The replica manager of the
//! cluster grows out of it.

use std::collections::BTreeMap;
use std::rc::Rc;
use std::time::Instant;

use crate::error::{BrokerError, ErrorKind};
use crate::log::storage::DmaStorage;
use crate::log::{LogLimits, PartitionLog, SharedByShard};
use crate::partition::{
    Acks, Partition, ReadOutcome, OFFSET_EARLIEST, OFFSET_EARLIEST_LOCAL, OFFSET_LATEST,
    OFFSET_LATEST_TIERED, OFFSET_MAX_TIMESTAMP,
};
use crate::shard::call::{EpochEnd, Fetch, ListOffsets, Produce, Produced};
use crate::shard::catalog::{self, DiskTopic, TopicInfo};
use crate::shard::state::{PartitionKey, Shard, STAGED_BYTES_MAX};
use crate::types::{LeaderEpoch, Offset, PartitionId};

/// A replica on this broker's disk and the bytes its segments hold (DescribeLogDirs).
#[derive(Clone, Debug)]
pub struct ReplicaSize {
    pub topic: String,
    pub partition: PartitionId,
    pub size_bytes: u64,
}

impl Shard {
    /// The data directory, absolute, as DescribeLogDirs names it.
    pub fn log_dir(&self) -> String {
        let dir = &self.config.data_dir;
        std::path::absolute(dir).unwrap_or_else(|_| dir.clone()).display().to_string()
    }

    /// The size of the data directory's file system and the bytes free on it, read off the
    /// shard's thread.
    pub async fn disk_space(&self) -> std::io::Result<(u64, u64)> {
        let data_dir = self.config.data_dir.clone();
        glommio::executor().spawn_blocking(move || catalog::disk_space(&data_dir)).await
    }

    /// This shard's replicas and their sizes.
    pub(super) fn replica_sizes_here(&self) -> Vec<ReplicaSize> {
        (self.partitions.borrow().iter())
            .map(|((topic, partition), open)| ReplicaSize {
                topic: topic.clone(),
                partition: *partition,
                size_bytes: open.log().size_bytes(),
            })
            .collect()
    }

    pub(super) fn limits(&self) -> LogLimits {
        LogLimits {
            write_bytes_max: self.config.flush_write_bytes_max,
            tail_cache_bytes: self.config.tail_cache_bytes,
            read_ahead_bytes: self.config.read_ahead_bytes,
            read_chunk_bytes: crate::log::partition::READ_CHUNK_BYTES,
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
            storage_health: self.storage_health.clone(),
            tail_budget: self.tail_budget.clone(),
            read_cache: self.read_cache.clone(),
            open_files: self.open_files.clone(),
        }
    }

    /// Opens every partition this shard owns among those on the broker's disk (at start:
    /// publications open the rest, `publish.rs`).
    pub async fn open_owned_partitions(
        &self,
        disk: &BTreeMap<String, DiskTopic>,
    ) -> std::io::Result<()> {
        for (name, topic) in disk {
            for partition in &topic.held {
                if self.owner(name, *partition) == self.id {
                    self.open_partition(name, *partition, &topic.info).await?;
                }
            }
        }
        Ok(())
    }

    /// Partition `partition` of `topic`, opened (its directory made, if it is new) unless it is
    /// open already.
    pub(super) async fn open_partition(
        &self,
        name: &str,
        partition: PartitionId,
        info: &TopicInfo,
    ) -> std::io::Result<Rc<Partition>> {
        if let Some(open) = self.partitions.borrow().get(&(name.to_string(), partition)) {
            return Ok(open.clone());
        }
        let dir = catalog::partition_dir(&self.config.data_dir, name, partition);
        let log = PartitionLog::open(
            Rc::from(name),
            partition,
            dir,
            info.config.clone(),
            self.limits(),
            self.shared(),
        )
        .await?;
        let opened = Rc::new(Partition::new(log));
        self.partitions.borrow_mut().insert((name.to_string(), partition), opened.clone());
        Ok(opened)
    }

    /// A partition this shard holds a replica of.
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
            Some(info) if partition.0 < info.partitions => Err(self.not_leader(topic, partition)),
            Some(info) => Err(BrokerError::new(
                ErrorKind::UnknownPartition,
                format!(
                    "topic {topic} has {} partitions, no partition {partition}",
                    info.partitions
                ),
            )),
        }
    }

    /// A partition this broker leads: what producers and consumers are served from.
    pub fn led_partition(
        &self,
        topic: &str,
        partition: PartitionId,
    ) -> Result<Rc<Partition>, BrokerError> {
        let found = self.partition(topic, partition)?;
        match found.is_leader() {
            true => Ok(found),
            false => Err(self.not_leader(topic, partition)),
        }
    }

    /// A partition this broker leads, in the leader epoch the client knows when it says
    /// (KIP-320): FENCED_LEADER_EPOCH when the client's is older (its metadata is stale),
    /// UNKNOWN_LEADER_EPOCH when newer (this broker has not caught up yet).
    pub fn led_partition_in(
        &self,
        topic: &str,
        partition: PartitionId,
        epoch: Option<LeaderEpoch>,
    ) -> Result<Rc<Partition>, BrokerError> {
        // Against the epoch of the metadata this shard published, before leadership, as Kafka
        // checks: a client ahead of this broker retries here, one behind refreshes its metadata.
        let Some(asked) = epoch else { return self.led_partition(topic, partition) };
        if let Some(current) = self.partition_leader_epoch(topic, partition) {
            let kind = match asked.cmp(&current) {
                std::cmp::Ordering::Equal => None,
                std::cmp::Ordering::Less => Some(ErrorKind::FencedLeaderEpoch),
                std::cmp::Ordering::Greater => Some(ErrorKind::UnknownLeaderEpoch),
            };
            if let Some(kind) = kind {
                let why = format!("{topic}-{partition} is in leader epoch {current}, not {asked}");
                return Err(BrokerError::new(kind, why));
            }
        }
        self.led_partition(topic, partition)
    }

    /// NOT_LEADER_OR_FOLLOWER, naming the leader this broker knows: the client refreshes its
    /// metadata and goes there.
    fn not_leader(&self, topic: &str, partition: PartitionId) -> BrokerError {
        let image = self.metadata_image();
        let state = image.topic_named(topic).and_then(|(_, t)| t.partitions.get(&partition));
        let leader = state.and_then(|state| state.leader);
        let known = match leader.map(|l| (l, image.brokers.get(&l))) {
            None => "no leader is known".to_string(),
            Some((l, None)) => format!("its leader is broker {l}"),
            Some((l, Some(broker))) => {
                let (kafka, native) = (&broker.endpoints.kafka, &broker.endpoints.native);
                format!(
                    "its leader is broker {l} (Kafka {}, native {})",
                    crate::config::host_port(&kafka.0, kafka.1),
                    crate::config::host_port(&native.0, native.1)
                )
            }
        };
        let why =
            format!("broker {} does not lead {topic}-{partition}: {known}", self.config.node_id);
        BrokerError::new(ErrorKind::NotLeaderOrFollower, why)
    }

    pub(super) async fn produce_local(&self, request: Produce) -> Result<Produced, BrokerError> {
        let Produce { topic, partition, acks, entry } = request;
        let target = self.led_partition(&topic, partition)?;
        if acks == Acks::All {
            target.check_acks_all()?;
        }
        let (bytes, records) = (entry.payload_len(), entry.meta.record_count);
        // Nothing awaits before the append, so requests keep their arrival order.
        let appended = target.append(entry)?;
        if appended.duplicate_of.is_none() {
            self.metrics.produced(&topic, bytes, records);
        }
        target.wait_acked(&appended, acks).await?;
        let (base_offset, duplicate_of) = (appended.base_offset, appended.duplicate_of);
        Ok(Produced { base_offset, log_start: target.log_start(), duplicate_of })
    }

    pub(super) async fn fetch_local(&self, request: Fetch) -> Result<ReadOutcome, BrokerError> {
        let Fetch { topic, partition, epoch, offset, max_bytes, max_wait } = request;
        let target = self.led_partition_in(&topic, partition, epoch)?;
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
    ) -> Result<(i64, i64, i32), BrokerError> {
        let ListOffsets { topic, partition, epoch, timestamp } = request;
        let target = self.led_partition_in(&topic, partition, epoch)?;
        // As Kafka answers: the latest epoch for the latest offset, else the epoch of the entry
        // found (-1 before the first recorded).
        let log = target.log();
        let epoch_at = |offset: Offset| log.epoch_at(offset).map_or(-1, |e| e.0);
        let found = match timestamp {
            OFFSET_LATEST => {
                let latest = log.latest_epoch().map_or(-1, |e| e.0);
                Some((target.high_watermark(), -1, latest))
            }
            // Without tiered storage the local log start is the log start (KIP-405).
            OFFSET_EARLIEST | OFFSET_EARLIEST_LOCAL => {
                let start = target.log_start();
                Some((start, -1, epoch_at(start)))
            }
            OFFSET_MAX_TIMESTAMP => {
                let found = target.max_timestamp_record().await?;
                found.map(|(offset, time)| (offset, time, epoch_at(offset)))
            }
            // Nothing is in remote storage (KIP-1005): no offset, as Kafka answers for a topic
            // without it.
            OFFSET_LATEST_TIERED => None,
            t if t >= 0 => {
                let found = target.offset_for_timestamp(t).await?;
                found.map(|(offset, time)| (offset, time, epoch_at(offset)))
            }
            other => {
                let why = format!("timestamp {other} is none of -1 to -5 nor a time");
                return Err(BrokerError::new(ErrorKind::InvalidRequest, why));
            }
        };
        Ok(found.map_or((-1, -1, -1), |(offset, time, epoch)| (offset.0 as i64, time, epoch)))
    }

    /// DeleteRecords at this broker, the leader (as Kafka's); refused for the broker's own
    /// topics, whose log start the broker moves itself.
    pub(super) async fn delete_records_local(
        &self,
        topic: &str,
        partition: PartitionId,
        offset: Option<Offset>,
        timeout: std::time::Duration,
    ) -> Result<Offset, BrokerError> {
        if crate::shard::state::is_internal_topic(topic) {
            let why = format!("{topic} is internal: the broker moves its log start itself");
            return Err(BrokerError::new(ErrorKind::InvalidTopicName, why));
        }
        let led = self.led_partition(topic, partition)?;
        let start = led.delete_records(offset, timeout).await?;
        tracing::info!(%topic, %partition, log_start = %start, "deleted the records below the new log start");
        Ok(start)
    }

    /// OffsetForLeaderEpoch, answered by the leader from its epoch cache: for its current epoch
    /// the log end (Kafka's answer), else where the next epoch starts.
    pub(super) fn epoch_end_local(&self, request: EpochEnd) -> Result<(i32, i64), BrokerError> {
        let EpochEnd { topic, partition, epoch, leader_epoch } = request;
        let target = self.led_partition_in(&topic, partition, epoch)?;
        let end = target.log().epoch_end_offset(leader_epoch);
        Ok(end.map_or((-1, -1), |(epoch, offset)| (epoch.0, offset.0 as i64)))
    }

    /// Forgets a topic the cluster no longer has here: its partitions are closed and their
    /// files marked deleted (the publisher removes the directory once every shard is done).
    pub(super) async fn remove_topic_here(&self, name: String) -> Result<(), BrokerError> {
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
        Ok(())
    }

    /// Forgets a replica the cluster moved off this broker: closed, its files marked deleted
    /// (reads in flight fail cleanly), then its directory removed.
    pub(super) async fn remove_replica_here(&self, key: &PartitionKey) -> std::io::Result<()> {
        let Some(partition) = self.partitions.borrow_mut().remove(key) else { return Ok(()) };
        partition.stop_leading();
        partition.log().close().await;
        partition.log().mark_deleted();
        let (data_dir, (topic, partition)) = (self.config.data_dir.clone(), key.clone());
        glommio::executor()
            .spawn_blocking(move || catalog::remove_partition(&data_dir, &topic, partition))
            .await?;
        tracing::info!(topic = %key.0, partition = %key.1, "removed a replica moved off this broker");
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
