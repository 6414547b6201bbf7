//! What one scrape gathers: each shard's counts and partitions ([`ShardStats`]), plain data
//! that crosses the mesh, added up into the broker's ([`BrokerStats`]).

use std::collections::{BTreeMap, HashMap};

use crate::metrics::{Hist, Listener, TopicTraffic, BUCKET_BOUNDS_NS};

/// One timed operation's Prometheus buckets (not cumulative) and sum.
#[derive(Clone, Debug)]
pub struct TimingStats {
    pub hist: Hist,
    pub buckets: [u64; BUCKET_BOUNDS_NS.len()],
    pub sum_ns: u64,
}

/// Requests answered, by API, and the errors their responses carried, by API and code.
#[derive(Clone, Debug, Default)]
pub struct RequestCounts {
    pub kafka: Vec<(i16, u64)>,
    pub kafka_errors: Vec<((i16, i16), u64)>,
    pub native: Vec<(u8, u64)>,
    pub native_errors: Vec<((u8, String), u64)>,
}

#[derive(Clone, Copy, Debug)]
pub struct ListenerStats {
    pub listener: Listener,
    pub open: u64,
    pub accepted: u64,
    pub refused: u64,
}

/// One replica this broker holds.
#[derive(Clone, Debug, Default)]
pub struct PartitionStats {
    pub topic: String,
    pub partition: u32,
    /// This broker leads it: the replica counts below are the leader's.
    pub leader: bool,
    pub log_start: u64,
    pub high_watermark: u64,
    pub log_end: u64,
    pub size_bytes: u64,
    pub segments: u64,
    /// At the leader: the replicas, those in sync, and `min.insync.replicas`.
    pub replicas: u32,
    pub in_sync: u32,
    pub min_insync: u32,
}

/// One consumer group this broker coordinates.
#[derive(Clone, Debug, Default)]
pub struct GroupStats {
    pub group: String,
    pub state: &'static str,
    pub members: u32,
    /// (topic, partition, committed offset).
    pub offsets: Vec<(String, i32, i64)>,
}

/// What one shard reports to a scrape.
#[derive(Clone, Debug, Default)]
pub struct ShardStats {
    pub timings: Vec<TimingStats>,
    pub requests: RequestCounts,
    pub listeners: Vec<ListenerStats>,
    pub topics: Vec<(String, TopicTraffic)>,
    pub partitions: Vec<PartitionStats>,
    pub groups: Vec<GroupStats>,
    pub tail_cache_bytes: u64,
    pub read_cache_bytes: u64,
    pub read_cache_hits: u64,
    pub read_cache_misses: u64,
}

/// What only the broker as a whole knows (shard 0 reads it).
#[derive(Clone, Debug, Default)]
pub struct BrokerFacts {
    pub node_id: i32,
    pub shards: usize,
    /// Bytes appended and not yet written, every shard together, and the bound
    /// (`queued.max.request.bytes`).
    pub queued_bytes: u64,
    pub queued_bytes_max: u64,
    /// Partitions without a leader, cluster-wide, as this broker's metadata says.
    pub offline_partitions: u64,
    /// Whether to report each partition's own series (`metrics.partition.series`).
    pub partition_series: bool,
}

/// A consumer group's position in one partition, with its lag where this broker leads the
/// partition (and so knows its high watermark as consumers see it).
#[derive(Clone, Debug)]
pub struct GroupOffset {
    pub group: String,
    pub topic: String,
    pub partition: i32,
    pub committed: i64,
    pub lag: Option<u64>,
}

/// Every shard's stats, added up.
#[derive(Clone, Debug, Default)]
pub struct BrokerStats {
    pub facts: BrokerFacts,
    pub timings: Vec<TimingStats>,
    pub kafka_requests: BTreeMap<i16, u64>,
    pub kafka_errors: BTreeMap<(i16, i16), u64>,
    pub native_requests: BTreeMap<u8, u64>,
    pub native_errors: BTreeMap<(u8, String), u64>,
    pub listeners: Vec<ListenerStats>,
    pub topics: BTreeMap<String, TopicTraffic>,
    /// Sorted by topic and partition.
    pub partitions: Vec<PartitionStats>,
    /// (group, state, members), sorted by group.
    pub groups: Vec<(String, &'static str, u32)>,
    /// Sorted by group, topic and partition.
    pub group_offsets: Vec<GroupOffset>,
    pub tail_cache_bytes: u64,
    pub read_cache_bytes: u64,
    pub read_cache_hits: u64,
    pub read_cache_misses: u64,
}

impl BrokerStats {
    pub fn merge(facts: BrokerFacts, shards: Vec<ShardStats>) -> Self {
        let mut merged = BrokerStats { facts, ..Default::default() };
        let mut listeners: BTreeMap<&'static str, ListenerStats> = BTreeMap::new();
        let mut group_offsets = Vec::new();
        for shard in shards {
            for timing in shard.timings {
                match merged.timings.iter_mut().find(|t| t.hist == timing.hist) {
                    Some(total) => {
                        for (sum, add) in total.buckets.iter_mut().zip(timing.buckets) {
                            *sum += add;
                        }
                        total.sum_ns = total.sum_ns.saturating_add(timing.sum_ns);
                    }
                    None => merged.timings.push(timing),
                }
            }
            let requests = shard.requests;
            add_all(&mut merged.kafka_requests, requests.kafka);
            add_all(&mut merged.kafka_errors, requests.kafka_errors);
            add_all(&mut merged.native_requests, requests.native);
            add_all(&mut merged.native_errors, requests.native_errors);
            for counts in shard.listeners {
                let total = listeners.entry(counts.listener.name()).or_insert(ListenerStats {
                    open: 0,
                    accepted: 0,
                    refused: 0,
                    ..counts
                });
                total.open += counts.open;
                total.accepted += counts.accepted;
                total.refused += counts.refused;
            }
            for (topic, traffic) in shard.topics {
                let total = merged.topics.entry(topic).or_default();
                total.bytes_in += traffic.bytes_in;
                total.records_in += traffic.records_in;
                total.bytes_out += traffic.bytes_out;
            }
            merged.partitions.extend(shard.partitions);
            for group in shard.groups {
                merged.groups.push((group.group.clone(), group.state, group.members));
                group_offsets.push(group);
            }
            merged.tail_cache_bytes += shard.tail_cache_bytes;
            merged.read_cache_bytes += shard.read_cache_bytes;
            merged.read_cache_hits += shard.read_cache_hits;
            merged.read_cache_misses += shard.read_cache_misses;
        }
        merged.listeners = listeners.into_values().collect();
        merged.partitions.sort_by(|a, b| (&a.topic, a.partition).cmp(&(&b.topic, b.partition)));
        merged.groups.sort();
        merged.group_offsets = merged.lags(group_offsets);
        merged
    }

    /// Each committed offset, with the group's lag behind the high watermark where this broker
    /// leads the partition: a follower's high watermark trails the leader's, and a lag from it
    /// would read low. Elsewhere the partition's leader reports its high watermark, and a
    /// dashboard joins the two.
    fn lags(&self, groups: Vec<GroupStats>) -> Vec<GroupOffset> {
        let high_watermarks: HashMap<(&str, u32), u64> = (self.partitions.iter())
            .filter(|p| p.leader)
            .map(|p| ((p.topic.as_str(), p.partition), p.high_watermark))
            .collect();
        let mut offsets = Vec::new();
        for group in groups {
            for (topic, partition, committed) in group.offsets {
                let key = (topic.as_str(), u32::try_from(partition).unwrap_or(u32::MAX));
                // A committed offset below 0 says the group has no position: no lag to give.
                let lag = (high_watermarks.get(&key).zip(u64::try_from(committed).ok()))
                    .map(|(hw, committed)| hw.saturating_sub(committed));
                offsets.push(GroupOffset {
                    group: group.group.clone(),
                    topic,
                    partition,
                    committed,
                    lag,
                });
            }
        }
        offsets.sort_by(|a, b| {
            (&a.group, &a.topic, a.partition).cmp(&(&b.group, &b.topic, b.partition))
        });
        offsets
    }
}

fn add_all<K: Ord>(into: &mut BTreeMap<K, u64>, counts: Vec<(K, u64)>) {
    for (key, count) in counts {
        *into.entry(key).or_default() += count;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::Metrics;
    use std::time::Duration;

    fn partition(topic: &str, partition: u32, leader: bool, high_watermark: u64) -> PartitionStats {
        PartitionStats {
            topic: topic.into(),
            partition,
            leader,
            high_watermark,
            ..Default::default()
        }
    }

    #[test]
    fn shards_add_up_and_lag_is_measured_where_the_partition_is_led() {
        let (a, b) = (Metrics::default(), Metrics::default());
        a.record(Hist::KafkaProduce, Duration::from_micros(70));
        b.record(Hist::KafkaProduce, Duration::from_secs(60));
        a.count_kafka_request(0, [6]);
        b.count_kafka_request(0, [6, 6]);
        b.connection_opened(Listener::Kafka);
        a.produced("t", 100, 2);
        b.produced("t", 50, 1);
        b.consumed("t", 120);
        let shard = |m: &Metrics, partitions, groups| {
            let counts = m.counts();
            let (timings, requests, listeners) =
                (counts.timings, counts.requests, counts.listeners);
            let topics = counts.topics;
            ShardStats {
                timings,
                requests,
                listeners,
                topics,
                partitions,
                groups,
                ..Default::default()
            }
        };
        let group = GroupStats {
            group: "g".into(),
            state: "Stable",
            members: 1,
            offsets: vec![
                ("t".into(), 0, 40),
                ("t".into(), 1, 5),
                ("t".into(), 2, 5),
                ("u".into(), 0, -1),
            ],
        };
        let stats = BrokerStats::merge(
            BrokerFacts::default(),
            vec![
                shard(&a, vec![partition("t", 1, true, 10), partition("t", 2, false, 90)], vec![]),
                shard(&b, vec![partition("t", 0, true, 100)], vec![group]),
            ],
        );
        let produce = stats.timings.iter().find(|t| t.hist == Hist::KafkaProduce).unwrap();
        assert_eq!(produce.buckets[1], 1, "70 µs falls in the 100 µs bucket");
        assert_eq!(produce.buckets[BUCKET_BOUNDS_NS.len() - 1], 1, "a minute is past 10 s");
        assert_eq!(stats.kafka_requests[&0], 2);
        assert_eq!(stats.kafka_errors[&(0, 6)], 3);
        assert_eq!(stats.listeners[0].open + stats.listeners[1].open, 1);
        let lags: Vec<Option<u64>> = stats.group_offsets.iter().map(|o| o.lag).collect();
        assert_eq!(lags, vec![Some(60), Some(5), None, None], "led partitions with a position");
        let t = stats.topics["t"];
        assert_eq!((t.bytes_in, t.records_in, t.bytes_out), (150, 3, 120));
    }
}
