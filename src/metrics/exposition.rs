//! The broker's stats in the Prometheus text format (version 0.0.4), written by the
//! `prometheus-client` crate's encoder: one family per figure, names prefixed `spate_` (the
//! process's own are Prometheus's standard `process_*`), counters suffixed `_total`.
//!
//! What a family with a label per topic, group or partition costs grows with them: the
//! per-partition series (log size, offsets, lag) are left out when
//! `metrics.partition.series` is off; the per-topic and per-group sums stay.

use std::collections::BTreeMap;
use std::fmt;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{
    DescriptorEncoder, EncodeGaugeValue, EncodeLabelSet, MetricEncoder, NoLabelSet,
};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

use crate::metrics::process::ProcessStats;
use crate::metrics::stats::{BrokerStats, GroupOffset, ListenerStats, PartitionStats};
use crate::metrics::{TopicTraffic, BUCKET_BOUNDS_NS};

/// The `Content-Type` of what [`render`] writes.
pub const CONTENT_TYPE: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

/// How request and error codes are named: the protocols know their own names.
#[derive(Clone, Copy, Debug)]
pub struct Names {
    pub kafka_api: fn(i16) -> String,
    pub kafka_error: fn(i16) -> String,
    pub native_api: fn(u8) -> String,
}

/// One scrape's figures.
#[derive(Debug)]
pub struct Report {
    pub stats: BrokerStats,
    /// `None` when `/proc` could not be read (the scrape goes on without it).
    pub process: Option<ProcessStats>,
    pub names: Names,
}

/// The report in the Prometheus text format.
pub fn render(report: Report) -> Result<String, fmt::Error> {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(report));
    let mut out = String::new();
    prometheus_client::encoding::prometheus_text::encode(&mut out, &registry)?;
    Ok(out)
}

/// One figure of a partition's.
type Figure = fn(&PartitionStats) -> u64;
/// The label set of a figure without labels.
type Unlabelled = [(&'static str, &'static str); 0];

/// Writes one family: its description, then a sample per label set. Label sets borrow what
/// they name: a scrape of 10,000 partitions allocates nothing per sample.
fn family<L: EncodeLabelSet, V>(
    encoder: &mut DescriptorEncoder<'_>,
    (name, help, kind): (&str, &str, MetricType),
    samples: impl IntoIterator<Item = (L, V)>,
    mut write: impl FnMut(&mut MetricEncoder<'_>, V) -> fmt::Result,
) -> fmt::Result {
    let mut metric = encoder.encode_descriptor(name, help, None, kind)?;
    for (labels, value) in samples {
        write(&mut metric.encode_family(&labels)?, value)?;
    }
    Ok(())
}

fn counters<L: EncodeLabelSet>(
    encoder: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    samples: impl IntoIterator<Item = (L, u64)>,
) -> fmt::Result {
    family(encoder, (name, help, MetricType::Counter), samples, |m, v| {
        m.encode_counter::<NoLabelSet, _, u64>(&v, None)
    })
}

fn gauges<L: EncodeLabelSet, V: EncodeGaugeValue>(
    encoder: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    samples: impl IntoIterator<Item = (L, V)>,
) -> fmt::Result {
    family(encoder, (name, help, MetricType::Gauge), samples, |m, v| m.encode_gauge(&v))
}

fn one<V>(value: V) -> [(Unlabelled, V); 1] {
    [([], value)]
}

/// A per-partition figure summed by topic.
fn by_topic(stats: &BrokerStats, figure: Figure) -> Vec<([(&str, &str); 1], u64)> {
    let mut sums: BTreeMap<&str, u64> = BTreeMap::new();
    for p in &stats.partitions {
        *sums.entry(&p.topic).or_default() += figure(p);
    }
    sums.into_iter().map(|(topic, sum)| ([("topic", topic)], sum)).collect()
}

/// A topic's traffic figure, by topic.
fn traffic_by_topic(
    stats: &BrokerStats,
    figure: fn(&TopicTraffic) -> u64,
) -> impl Iterator<Item = ([(&str, &str); 1], u64)> {
    stats.topics.iter().map(move |(topic, traffic)| ([("topic", topic.as_str())], figure(traffic)))
}

impl Collector for Report {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> fmt::Result {
        let enc = &mut encoder;
        let facts = &self.stats.facts;
        let broker_help = "The broker: its node id, shards and build.";
        enc.encode_descriptor("spate_broker", broker_help, None, MetricType::Info)?.encode_info(
            &[
                ("node_id", facts.node_id.to_string()),
                ("shards", facts.shards.to_string()),
                ("version", env!("CARGO_PKG_VERSION").to_string()),
            ],
        )?;
        requests(enc, &self.stats, &self.names)?;
        traffic(enc, &self.stats)?;
        partitions(enc, &self.stats)?;
        groups(enc, &self.stats)?;
        memory(enc, &self.stats)?;
        latencies(enc, &self.stats)?;
        if let Some(process) = &self.process {
            process_figures(enc, process)?;
        }
        Ok(())
    }
}

fn requests(enc: &mut DescriptorEncoder<'_>, stats: &BrokerStats, names: &Names) -> fmt::Result {
    let kafka_api = |api: &i16| ("api", (names.kafka_api)(*api));
    let native_api = |api: &u8| ("api", (names.native_api)(*api));
    counters(
        enc,
        "spate_kafka_requests",
        "Kafka requests answered, by API.",
        stats.kafka_requests.iter().map(|(api, n)| ([kafka_api(api)], *n)),
    )?;
    counters(
        enc,
        "spate_kafka_request_errors",
        "Error codes in Kafka responses, by API and error, once per place they appear (as \
         Kafka's errorCounts).",
        stats
            .kafka_errors
            .iter()
            .map(|((api, code), n)| ([kafka_api(api), ("error", (names.kafka_error)(*code))], *n)),
    )?;
    counters(
        enc,
        "spate_native_requests",
        "Native requests answered, by API (other brokers' replication and controller requests \
         included).",
        stats.native_requests.iter().map(|(api, n)| ([native_api(api)], *n)),
    )?;
    counters(
        enc,
        "spate_native_request_errors",
        "Native requests answered with an error, by API and error.",
        (stats.native_errors.iter())
            .map(|((api, error), n)| ([native_api(api), ("error", error.clone())], *n)),
    )?;
    let listener = |l: &ListenerStats| [("listener", l.listener.name())];
    gauges(
        enc,
        "spate_connections",
        "Open connections, by listener (the native one's include other brokers').",
        stats.listeners.iter().map(|l| (listener(l), l.open)),
    )?;
    counters(
        enc,
        "spate_connections_accepted",
        "Connections accepted, by listener.",
        stats.listeners.iter().map(|l| (listener(l), l.accepted)),
    )?;
    counters(
        enc,
        "spate_connections_refused",
        "Connections closed at once: the shard's share of max.connections was in use.",
        stats.listeners.iter().map(|l| (listener(l), l.refused)),
    )
}

fn traffic(enc: &mut DescriptorEncoder<'_>, stats: &BrokerStats) -> fmt::Result {
    counters(
        enc,
        "spate_topic_bytes_in",
        "Bytes of record batches producers appended to the topic's partitions led here.",
        traffic_by_topic(stats, |t| t.bytes_in),
    )?;
    counters(
        enc,
        "spate_topic_records_in",
        "Records producers appended to the topic's partitions led here.",
        traffic_by_topic(stats, |t| t.records_in),
    )?;
    counters(
        enc,
        "spate_topic_bytes_out",
        "Bytes of record batches this broker sent consumers in fetch responses (Kafka batches as \
         stored; native entries with their headers). Followers' fetches are not counted.",
        traffic_by_topic(stats, |t| t.bytes_out),
    )?;
    gauges(
        enc,
        "spate_topic_log_size_bytes",
        "Bytes the segment files of the topic's replicas here hold.",
        by_topic(stats, |p| p.size_bytes),
    )?;
    gauges(
        enc,
        "spate_topic_log_segments",
        "Segment files of the topic's replicas here.",
        by_topic(stats, |p| p.segments),
    )
}

fn partitions(enc: &mut DescriptorEncoder<'_>, stats: &BrokerStats) -> fmt::Result {
    let led = stats.partitions.iter().filter(|p| p.leader);
    let count = |n: usize| one(n as u64);
    gauges(
        enc,
        "spate_partitions",
        "Partition replicas this broker holds.",
        count(stats.partitions.len()),
    )?;
    gauges(
        enc,
        "spate_partitions_led",
        "Partitions this broker leads.",
        count(led.clone().count()),
    )?;
    gauges(
        enc,
        "spate_partitions_under_replicated",
        "Partitions this broker leads with fewer in-sync replicas than replicas.",
        count(led.clone().filter(|p| p.in_sync < p.replicas).count()),
    )?;
    gauges(
        enc,
        "spate_partitions_under_min_isr",
        "Partitions this broker leads with fewer in-sync replicas than min.insync.replicas: \
         acks=all producers are refused.",
        count(led.filter(|p| p.in_sync < p.min_insync).count()),
    )?;
    gauges(
        enc,
        "spate_partitions_offline",
        "Partitions without a leader, cluster-wide, as this broker's metadata says.",
        one(stats.facts.offline_partitions),
    )?;
    if !stats.facts.partition_series {
        return Ok(());
    }
    let each = |figure: Figure| {
        (stats.partitions.iter()).map(move |p| {
            (([("topic", p.topic.as_str())], [("partition", p.partition)]), figure(p))
        })
    };
    let series: [(&str, &str, Figure); 5] = [
        ("spate_partition_log_size_bytes", "Bytes the replica's segment files hold.", |p| {
            p.size_bytes
        }),
        ("spate_partition_log_segments", "The replica's segment files.", |p| p.segments),
        ("spate_partition_log_start_offset", "The replica's log start offset.", |p| p.log_start),
        (
            "spate_partition_high_watermark",
            "The replica's high watermark: consumers read below it.",
            |p| p.high_watermark,
        ),
        ("spate_partition_log_end_offset", "The replica's log end offset.", |p| p.log_end),
    ];
    for (name, help, figure) in series {
        gauges(enc, name, help, each(figure))?;
    }
    Ok(())
}

fn groups(enc: &mut DescriptorEncoder<'_>, stats: &BrokerStats) -> fmt::Result {
    gauges(
        enc,
        "spate_group_members",
        "Members of each consumer group this broker coordinates.",
        stats.groups.iter().map(|(g, _, n)| ([("group", g.as_str())], u64::from(*n))),
    )?;
    gauges(
        enc,
        "spate_group_state",
        "1 for the state each consumer group this broker coordinates is in.",
        (stats.groups.iter())
            .map(|(g, state, _)| ([("group", g.as_str()), ("state", *state)], 1u64)),
    )?;
    let mut topic_lag: BTreeMap<(&str, &str), u64> = BTreeMap::new();
    for o in &stats.group_offsets {
        if let Some(lag) = o.lag {
            *topic_lag.entry((&o.group, &o.topic)).or_default() += lag;
        }
    }
    gauges(
        enc,
        "spate_group_topic_lag",
        "Records each group has yet to consume of a topic: the high watermark less its \
         committed offset, summed over the partitions this broker leads.",
        topic_lag.into_iter().map(|((g, t), lag)| ([("group", g), ("topic", t)], lag)),
    )?;
    if !stats.facts.partition_series {
        return Ok(());
    }
    type GroupPartition<'a> = ([(&'static str, &'a str); 2], [(&'static str, i32); 1]);
    fn partition(o: &GroupOffset) -> GroupPartition<'_> {
        ([("group", o.group.as_str()), ("topic", o.topic.as_str())], [("partition", o.partition)])
    }
    gauges(
        enc,
        "spate_group_committed_offset",
        "Each group's committed offset, by partition.",
        stats.group_offsets.iter().map(|o| (partition(o), o.committed)),
    )?;
    gauges(
        enc,
        "spate_group_lag",
        "Each group's lag by partition, where this broker holds the partition: the high \
         watermark less the committed offset.",
        stats.group_offsets.iter().filter_map(|o| o.lag.map(|lag| (partition(o), lag))),
    )
}

fn memory(enc: &mut DescriptorEncoder<'_>, stats: &BrokerStats) -> fmt::Result {
    let facts = &stats.facts;
    gauges(
        enc,
        "spate_queued_bytes",
        "Bytes appended and not yet written, every shard together.",
        one(facts.queued_bytes),
    )?;
    gauges(
        enc,
        "spate_queued_bytes_max",
        "The bound on queued bytes (queued.max.request.bytes).",
        one(facts.queued_bytes_max),
    )?;
    gauges(
        enc,
        "spate_tail_cache_bytes",
        "Bytes the shards' tail caches hold.",
        one(stats.tail_cache_bytes),
    )?;
    gauges(
        enc,
        "spate_read_cache_bytes",
        "Bytes the shards' read caches hold or have reserved.",
        one(stats.read_cache_bytes),
    )?;
    counters(
        enc,
        "spate_read_cache_hits",
        "Chunks readers were served from the read cache.",
        one(stats.read_cache_hits),
    )?;
    counters(
        enc,
        "spate_read_cache_misses",
        "Chunks readers read from the disk themselves.",
        one(stats.read_cache_misses),
    )
}

fn latencies(enc: &mut DescriptorEncoder<'_>, stats: &BrokerStats) -> fmt::Result {
    let help = "Latencies the broker times, by operation (the table printed at shutdown has the \
                same, with exact percentiles).";
    family(
        enc,
        ("spate_latency_seconds", help, MetricType::Histogram),
        stats.timings.iter().map(|t| ([("operation", t.hist.name())], t)),
        |m, timing| {
            // Counts per bucket: the encoder adds them up into Prometheus's cumulative ones.
            let buckets: Vec<(f64, u64)> = (BUCKET_BOUNDS_NS.iter().zip(timing.buckets))
                .map(|(bound, count)| match *bound {
                    u64::MAX => (f64::INFINITY, count),
                    ns => (ns as f64 / 1e9, count),
                })
                .collect();
            let (sum, count) = (timing.sum_ns as f64 / 1e9, timing.buckets.iter().sum());
            m.encode_histogram::<NoLabelSet>(sum, count, &buckets, None)
        },
    )
}

/// The figures Prometheus's client libraries report of a process, by their names.
fn process_figures(enc: &mut DescriptorEncoder<'_>, process: &ProcessStats) -> fmt::Result {
    let figures = [
        ("process_resident_memory_bytes", "Resident memory size in bytes.", process.resident_bytes),
        ("process_virtual_memory_bytes", "Virtual memory size in bytes.", process.virtual_bytes),
        ("process_open_fds", "Number of open file descriptors.", process.open_fds),
        ("process_max_fds", "Maximum number of open file descriptors.", process.max_fds),
        ("process_threads", "Number of OS threads in the process.", process.threads),
    ];
    for (name, help, value) in figures {
        gauges(enc, name, help, one(value))?;
    }
    gauges(
        enc,
        "process_start_time_seconds",
        "Start time of the process since unix epoch in seconds.",
        one(process.start_time_seconds),
    )?;
    family(
        enc,
        (
            "process_cpu_seconds",
            "Total user and system CPU time spent in seconds.",
            MetricType::Counter,
        ),
        one(process.cpu_seconds),
        |m, v| m.encode_counter::<NoLabelSet, _, f64>(&v, None),
    )
}
