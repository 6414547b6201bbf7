//! Latency histograms: one set per shard, merged and printed when the broker stops.
//!
//! Each shard records into its own [`Metrics`] without locks or atomics; at shutdown the shards
//! hand their histograms to the main thread, which merges them ([`merge`]), prints a table
//! ([`render_table`]) and optionally writes `.hgrm` percentile distribution files
//! ([`write_hgrm`]) in the format HdrHistogram's plotters read.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Duration;

use hdrhistogram::Histogram;

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

/// One shard's histograms.
pub struct Metrics {
    histograms: RefCell<Vec<Histogram<u64>>>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self { histograms: RefCell::new(Hist::ALL.iter().map(|_| new_histogram()).collect()) }
    }
}

impl Metrics {
    pub fn record(&self, hist: Hist, elapsed: Duration) {
        let ns = u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX).max(1);
        self.histograms.borrow_mut()[hist as usize].saturating_record(ns);
    }

    /// The histograms by name, to send to the main thread.
    pub fn snapshot(&self) -> BTreeMap<String, Histogram<u64>> {
        let histograms = self.histograms.borrow();
        Hist::ALL.iter().map(|h| (h.name().to_string(), histograms[*h as usize].clone())).collect()
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
