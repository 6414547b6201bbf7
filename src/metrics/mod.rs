//! The broker's instruments: latency histograms, request and connection counters, and what a
//! scrape of `/metrics` reports.
//!
//! Each shard records into its own [`Metrics`] without locks or atomics. Two readers take
//! them:
//! - at shutdown the shards hand their histograms to the main thread, which merges them
//!   ([`merge`]), prints a table ([`render_table`]) and optionally writes `.hgrm` percentile
//!   distribution files ([`write_hgrm`]) in the format HdrHistogram's plotters read;
//! - a scrape asks every shard for a [`stats::ShardStats`] over the mesh, and shard 0 renders
//!   their sum in the Prometheus text format ([`exposition`]), served over HTTP ([`http`]).

pub mod exposition;
pub mod http;
pub mod process;
pub mod stats;

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::time::Duration;

use hdrhistogram::Histogram;

use crate::metrics::stats::{ListenerStats, RequestCounts, TimingStats};

/// What is timed. Request kinds run from a request's arrival to its response being ready.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Hist {
    Produce,
    Fetch,
    ListOffsets,
    Metadata,
    CreateTopic,
    DeleteTopic,
    /// Kafka listener requests, by kind: produce, fetch, and the rest together.
    KafkaProduce,
    KafkaFetch,
    KafkaOther,
    /// Native group listings and descriptions.
    Groups,
    /// One O_DIRECT write of the segment writer.
    LogAppend,
    /// One fdatasync of a segment.
    Fdatasync,
    /// A native fetch that waited for data: from being woken by it to its response written to
    /// the socket (the broker's share of a tailing consumer's end-to-end latency after the
    /// write).
    FetchDelivery,
    /// Requests to the controller (registrations, heartbeats, shutdowns) and Raft messages
    /// between voters, as this broker served them.
    Cluster,
    /// A follower's fetch as its leader served it (long polls included).
    ReplicaFetch,
}

impl Hist {
    pub const ALL: [Hist; 15] = [
        Hist::Produce,
        Hist::Fetch,
        Hist::ListOffsets,
        Hist::Metadata,
        Hist::CreateTopic,
        Hist::DeleteTopic,
        Hist::KafkaProduce,
        Hist::KafkaFetch,
        Hist::KafkaOther,
        Hist::Groups,
        Hist::LogAppend,
        Hist::Fdatasync,
        Hist::FetchDelivery,
        Hist::Cluster,
        Hist::ReplicaFetch,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Hist::Produce => "request.produce",
            Hist::Fetch => "request.fetch",
            Hist::ListOffsets => "request.list_offsets",
            Hist::Metadata => "request.metadata",
            Hist::CreateTopic => "request.create_topic",
            Hist::DeleteTopic => "request.delete_topic",
            Hist::KafkaProduce => "kafka.produce",
            Hist::KafkaFetch => "kafka.fetch",
            Hist::KafkaOther => "kafka.other",
            Hist::Groups => "request.groups",
            Hist::LogAppend => "log.append_write",
            Hist::Fdatasync => "log.fdatasync",
            Hist::FetchDelivery => "fetch.woken_to_sent",
            Hist::Cluster => "request.cluster",
            Hist::ReplicaFetch => "request.replica_fetch",
        }
    }
}

/// Histograms hold nanoseconds from 1 ns to an hour at 3 significant digits.
const HIGHEST_NS: u64 = 3_600_000_000_000;

pub fn new_histogram() -> Histogram<u64> {
    // Bounds are constants that hdrhistogram accepts; failure would be a build-time bug.
    Histogram::new_with_bounds(1, HIGHEST_NS, 3).expect("valid histogram bounds")
}

/// Upper bounds of the buckets `/metrics` reports each latency in, in nanoseconds: 50 µs to
/// 10 s, a 1-2.5-5 ladder (Prometheus histograms need fixed buckets; the HdrHistogram beside
/// them keeps the exact percentiles for the shutdown table).
pub const BUCKET_BOUNDS_NS: [u64; 18] = [
    50_000,
    100_000,
    250_000,
    500_000,
    1_000_000,
    2_500_000,
    5_000_000,
    10_000_000,
    25_000_000,
    50_000_000,
    100_000_000,
    250_000_000,
    500_000_000,
    1_000_000_000,
    2_500_000_000,
    5_000_000_000,
    10_000_000_000,
    u64::MAX,
];

/// Kafka API keys counted one by one (Kafka's run below 100); requests of a higher key, were
/// one ever decoded, count under the last.
pub const KAFKA_API_KEYS: usize = 128;
/// Native API codes counted one by one.
pub const NATIVE_API_CODES: usize = 64;

/// The two client listeners, whose connections are counted apart.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Listener {
    Kafka,
    Native,
}

impl Listener {
    pub const ALL: [Listener; 2] = [Listener::Kafka, Listener::Native];

    pub fn name(self) -> &'static str {
        match self {
            Listener::Kafka => "kafka",
            Listener::Native => "native",
        }
    }
}

/// A topic's client traffic through one shard: record batches producers appended (counted by
/// the shard that owns the partition) and batches sent to consumers (counted by the shard that
/// answered the fetch), in bytes as the wire carries them. Followers' fetches are replication,
/// not traffic.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TopicTraffic {
    pub bytes_in: u64,
    pub records_in: u64,
    pub bytes_out: u64,
}

/// One timed operation: its exact histogram and its Prometheus buckets.
struct Timing {
    histogram: Histogram<u64>,
    /// Counts per bucket of [`BUCKET_BOUNDS_NS`], not cumulative.
    buckets: [u64; BUCKET_BOUNDS_NS.len()],
    sum_ns: u64,
}

#[derive(Default)]
struct ListenerCounts {
    open: Cell<u64>,
    accepted: Cell<u64>,
    refused: Cell<u64>,
}

/// What a scrape reads of one shard's instruments.
pub struct Counts {
    pub timings: Vec<TimingStats>,
    pub requests: RequestCounts,
    pub listeners: Vec<ListenerStats>,
    pub topics: Vec<(String, TopicTraffic)>,
}

/// One shard's instruments.
pub struct Metrics {
    timings: RefCell<Vec<Timing>>,
    kafka_requests: RefCell<[u64; KAFKA_API_KEYS]>,
    /// Errors by (API key, error code): few pairs ever occur.
    kafka_errors: RefCell<HashMap<(i16, i16), u64>>,
    native_requests: RefCell<[u64; NATIVE_API_CODES]>,
    /// Errors by (API code, error name).
    native_errors: RefCell<HashMap<(u8, String), u64>>,
    listeners: [ListenerCounts; 2],
    /// By topic name; a deleted topic's are dropped at the next scrape.
    topics: RefCell<HashMap<String, TopicTraffic>>,
}

impl Default for Metrics {
    fn default() -> Self {
        let timing = |_| Timing {
            histogram: new_histogram(),
            buckets: [0; BUCKET_BOUNDS_NS.len()],
            sum_ns: 0,
        };
        Self {
            timings: RefCell::new(Hist::ALL.iter().map(timing).collect()),
            kafka_requests: RefCell::new([0; KAFKA_API_KEYS]),
            kafka_errors: RefCell::default(),
            native_requests: RefCell::new([0; NATIVE_API_CODES]),
            native_errors: RefCell::default(),
            listeners: Default::default(),
            topics: RefCell::default(),
        }
    }
}

impl Metrics {
    pub fn record(&self, hist: Hist, elapsed: Duration) {
        let ns = u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX).max(1);
        let timing = &mut self.timings.borrow_mut()[hist as usize];
        timing.histogram.saturating_record(ns);
        // The last bound is u64::MAX, so some bucket always takes it.
        let bucket = BUCKET_BOUNDS_NS.partition_point(|bound| *bound < ns);
        timing.buckets[bucket.min(BUCKET_BOUNDS_NS.len() - 1)] += 1;
        timing.sum_ns = timing.sum_ns.saturating_add(ns);
    }

    /// A Kafka request answered, and the error codes other than NONE its response carries.
    pub fn count_kafka_request(&self, api_key: i16, errors: impl IntoIterator<Item = i16>) {
        let slot = usize::try_from(api_key).unwrap_or(0).min(KAFKA_API_KEYS - 1);
        self.kafka_requests.borrow_mut()[slot] += 1;
        // Errors under the same key as the request, so the two always name one API.
        let key = slot as i16;
        let mut counted = self.kafka_errors.borrow_mut();
        for code in errors {
            *counted.entry((key, code)).or_default() += 1;
        }
    }

    /// A native request answered, with its error's name when it failed.
    pub fn count_native_request(&self, api: u8, error: Option<String>) {
        let slot = usize::from(api).min(NATIVE_API_CODES - 1);
        self.native_requests.borrow_mut()[slot] += 1;
        if let Some(name) = error {
            *self.native_errors.borrow_mut().entry((api, name)).or_default() += 1;
        }
    }

    /// A batch of `records` a producer appended to `topic` (not an idempotent retry).
    pub fn produced(&self, topic: &str, bytes: usize, records: u32) {
        self.on_topic(topic, |t| {
            t.bytes_in += bytes as u64;
            t.records_in += u64::from(records);
        });
    }

    /// Record batches of `topic` a fetch response carries to a consumer.
    pub fn consumed(&self, topic: &str, bytes: usize) {
        if bytes > 0 {
            self.on_topic(topic, |t| t.bytes_out += bytes as u64);
        }
    }

    fn on_topic(&self, topic: &str, change: impl FnOnce(&mut TopicTraffic)) {
        let mut topics = self.topics.borrow_mut();
        match topics.get_mut(topic) {
            Some(traffic) => change(traffic),
            // The topic's first batch here: the one allocation of its name.
            None => change(topics.entry(topic.to_string()).or_default()),
        }
    }

    /// Drops the traffic of the topics `keep` says are gone.
    pub fn forget_topics(&self, keep: impl Fn(&str) -> bool) {
        self.topics.borrow_mut().retain(|topic, _| keep(topic));
    }

    pub fn connection_opened(&self, listener: Listener) {
        let counts = &self.listeners[listener as usize];
        counts.open.set(counts.open.get() + 1);
        counts.accepted.set(counts.accepted.get() + 1);
    }

    pub fn connection_closed(&self, listener: Listener) {
        let open = &self.listeners[listener as usize].open;
        open.set(open.get().saturating_sub(1));
    }

    /// A connection closed at once: the listener's share of `max.connections` was in use.
    pub fn connection_refused(&self, listener: Listener) {
        let refused = &self.listeners[listener as usize].refused;
        refused.set(refused.get() + 1);
    }

    /// The histograms by name, to send to the main thread.
    pub fn snapshot(&self) -> BTreeMap<String, Histogram<u64>> {
        let timings = self.timings.borrow();
        Hist::ALL
            .iter()
            .map(|h| (h.name().to_string(), timings[*h as usize].histogram.clone()))
            .collect()
    }

    /// What a scrape reports of this shard's instruments.
    pub fn counts(&self) -> Counts {
        let timings = self.timings.borrow();
        let timing_stats = Hist::ALL
            .iter()
            .map(|h| {
                let timing = &timings[*h as usize];
                TimingStats { hist: *h, buckets: timing.buckets, sum_ns: timing.sum_ns }
            })
            .collect();
        let nonzero = |counts: &[u64]| -> Vec<(usize, u64)> {
            counts.iter().enumerate().filter(|(_, n)| **n > 0).map(|(i, n)| (i, *n)).collect()
        };
        let requests = RequestCounts {
            kafka: nonzero(&self.kafka_requests.borrow()[..])
                .into_iter()
                .map(|(key, n)| (key as i16, n))
                .collect(),
            kafka_errors: self.kafka_errors.borrow().iter().map(|(k, n)| (*k, *n)).collect(),
            native: nonzero(&self.native_requests.borrow()[..])
                .into_iter()
                .map(|(code, n)| (code as u8, n))
                .collect(),
            native_errors: self
                .native_errors
                .borrow()
                .iter()
                .map(|(k, n)| (k.clone(), *n))
                .collect(),
        };
        let listeners = Listener::ALL
            .iter()
            .map(|l| {
                let counts = &self.listeners[*l as usize];
                ListenerStats {
                    listener: *l,
                    open: counts.open.get(),
                    accepted: counts.accepted.get(),
                    refused: counts.refused.get(),
                }
            })
            .collect();
        let topics =
            self.topics.borrow().iter().map(|(t, traffic)| (t.clone(), *traffic)).collect();
        Counts { timings: timing_stats, requests, listeners, topics }
    }
}

/// Adds every shard's histograms together, by name.
pub fn merge(shards: Vec<BTreeMap<String, Histogram<u64>>>) -> BTreeMap<String, Histogram<u64>> {
    let mut merged: BTreeMap<String, Histogram<u64>> = BTreeMap::new();
    for shard in shards {
        for (name, histogram) in shard {
            match merged.get_mut(&name) {
                // Both come from `new_histogram`, so their bounds agree and `add` cannot fail.
                Some(total) => total.add(&histogram).expect("histograms with equal bounds"),
                None => {
                    merged.insert(name, histogram);
                }
            }
        }
    }
    merged
}

const QUANTILES: [(f64, &str); 6] =
    [(0.5, "p50"), (0.9, "p90"), (0.99, "p99"), (0.999, "p99.9"), (0.9999, "p99.99"), (1.0, "max")];

/// A fixed-width table of count and percentiles in microseconds, one row per histogram.
pub fn render_table(histograms: &BTreeMap<String, Histogram<u64>>) -> String {
    let mut out = String::new();
    let _ = write!(out, "{:<22} {:>10}", "latency (µs)", "count");
    for (_, label) in QUANTILES {
        let _ = write!(out, " {label:>10}");
    }
    out.push('\n');
    for (name, h) in histograms {
        let _ = write!(out, "{name:<22} {:>10}", h.len());
        for (q, _) in QUANTILES {
            if h.is_empty() {
                let _ = write!(out, " {:>10}", "-");
            } else {
                let us = h.value_at_quantile(q) as f64 / 1000.0;
                let _ = write!(out, " {us:>10.1}");
            }
        }
        out.push('\n');
    }
    out
}

/// HdrHistogram's percentile distribution text (`.hgrm`), values in microseconds.
pub fn write_hgrm(h: &Histogram<u64>) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:>12} {:>14} {:>10} {:>14}\n",
        "Value", "Percentile", "TotalCount", "1/(1-Percentile)"
    );
    let scale = 1000.0;
    if !h.is_empty() {
        for v in h.iter_quantiles(5) {
            let q = v.quantile_iterated_to();
            let inverse = if q < 1.0 { format!("{:14.2}", 1.0 / (1.0 - q)) } else { String::new() };
            let _ = writeln!(
                out,
                "{:12.3} {:2.12} {:10} {}",
                v.value_iterated_to() as f64 / scale,
                q,
                v.count_since_last_iteration(),
                inverse
            );
        }
    }
    let _ = writeln!(
        out,
        "#[Mean    = {:12.3}, StdDeviation   = {:12.3}]",
        h.mean() / scale,
        h.stdev() / scale
    );
    let _ = writeln!(
        out,
        "#[Max     = {:12.3}, Total count    = {:12}]",
        h.max() as f64 / scale,
        h.len()
    );
    let _ = writeln!(
        out,
        "#[Buckets = {:12}, SubBuckets     = {:12}]",
        h.buckets(),
        h.distinct_values()
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merged_table_counts_every_shard() {
        let a = Metrics::default();
        let b = Metrics::default();
        for i in 1..=100 {
            a.record(Hist::Produce, Duration::from_micros(i));
            b.record(Hist::Produce, Duration::from_micros(i + 100));
        }
        let merged = merge(vec![a.snapshot(), b.snapshot()]);
        assert_eq!(merged["request.produce"].len(), 200);
        let table = render_table(&merged);
        assert!(table.contains("request.produce"));
        assert!(table.contains("p99.99"));
        let hgrm = write_hgrm(&merged["request.produce"]);
        assert!(hgrm.contains("Total count    =          200"));
    }
}
