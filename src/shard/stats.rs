//! What a shard reports to a scrape of `/metrics`: its instruments, its replicas and the groups
//! it coordinates, gathered on the shard that serves the scrape from every shard over the mesh.

use std::rc::Rc;

use crate::error::BrokerError;
use crate::metrics::stats::{BrokerFacts, BrokerStats, PartitionStats, ShardStats};
use crate::shard::call::Stats;
use crate::shard::Shard;
use crate::types::ShardId;

impl Shard {
    /// This shard's figures, read in one go (nothing awaits, so they are of one moment).
    pub(super) fn stats_here(&self) -> ShardStats {
        self.metrics.forget_topics(|topic| self.has_topic(topic));
        let counts = self.metrics.counts();
        let partitions = (self.partitions.borrow().iter())
            .map(|((topic, partition), open)| {
                let log = open.log();
                let bounds = open.bounds();
                let (replicas, in_sync, min_insync) = open.replica_counts().unwrap_or_default();
                let count = |n: usize| u32::try_from(n).unwrap_or(u32::MAX);
                PartitionStats {
                    topic: topic.clone(),
                    partition: partition.0,
                    leader: open.is_leader(),
                    log_start: bounds.log_start.0,
                    high_watermark: bounds.high_watermark.0,
                    log_end: bounds.log_end.0,
                    size_bytes: log.size_bytes(),
                    segments: log.sealed_segments() as u64 + 1,
                    replicas: count(replicas),
                    in_sync: count(in_sync),
                    min_insync: count(min_insync),
                }
            })
            .collect();
        let read_cache = self.read_cache.stats();
        ShardStats {
            timings: counts.timings,
            requests: counts.requests,
            listeners: counts.listeners,
            topics: counts.topics,
            partitions,
            groups: self.groups.stats(),
            tail_cache_bytes: self.tail_budget.used_bytes() as u64,
            read_cache_bytes: self.read_cache.held_bytes() as u64,
            read_cache_hits: read_cache.hits,
            read_cache_misses: read_cache.misses,
        }
    }

    /// Every shard's figures added up, with what the broker as a whole knows.
    pub async fn broker_stats(self: &Rc<Self>) -> Result<BrokerStats, BrokerError> {
        let mut shards = Vec::with_capacity(self.count);
        for shard in (0..self.count).map(ShardId) {
            shards.push(*self.ask(shard, Stats {}).await?);
        }
        let image = self.metadata_image();
        let offline = (image.topics.values())
            .flat_map(|topic| topic.partitions.values())
            .filter(|partition| partition.leader.is_none())
            .count();
        let facts = BrokerFacts {
            node_id: self.config.node_id.0,
            shards: self.count,
            queued_bytes: self.queued.current() as u64,
            queued_bytes_max: self.queued.max() as u64,
            offline_partitions: offline as u64,
            partition_series: self.config.metrics_partition_series,
        };
        Ok(BrokerStats::merge(facts, shards))
    }
}
