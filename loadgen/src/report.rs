//! What a phase measured, and how it is printed: a human summary or one JSON object.
//!
//! Each loadgen thread counts into its own [`Totals`] (no atomics on the hot path) and mirrors
//! produced bytes into [`SharedCounts`] for the progress line; at the end the threads' totals
//! become [`Snapshot`]s, which are merged.

use std::cell::{Cell, RefCell};
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
/// Counts every thread adds to, read by the progress line.
#[derive(Default)]
pub struct SharedCounts {
    pub records: AtomicU64,
    pub bytes: AtomicU64,
}

/// One thread's counts and request latencies in one phase.
pub struct Totals {
    pub records: Cell<u64>,
    pub bytes: Cell<u64>,
    pub latency: RefCell<Histogram<u64>>,
    pub elapsed: Cell<Duration>,
    pub error: RefCell<Option<String>>,
    /// How long each failover kept a batch from being acknowledged: from its first refusal (or
    /// lost connection) to its acknowledgement by the new leader.
    pub failover_gaps: RefCell<Vec<Duration>>,
    /// Nothing before this counts (the warm-up).
    counting_from: Cell<Option<Instant>>,
    shared: Arc<SharedCounts>,
}

impl Totals {
    pub fn new(shared: Arc<SharedCounts>) -> Self {
        Self {
            records: Cell::new(0),
            bytes: Cell::new(0),
            latency: RefCell::new(spate::metrics::new_histogram()),
            elapsed: Cell::new(Duration::ZERO),
            error: RefCell::new(None),
            failover_gaps: RefCell::new(Vec::new()),
            counting_from: Cell::new(None),
            shared,
        }
    }

    /// Ignores everything added before `instant`.
    pub fn count_from(&self, instant: Instant) {
        self.counting_from.set(Some(instant));
    }

    pub fn counting(&self) -> bool {
        self.counting_from.get().is_none_or(|from| Instant::now() >= from)
    }

    pub fn add(&self, records: u64, bytes: u64, latency: Duration) {
        if !self.counting() {
            return;
        }
        self.records.set(self.records.get() + records);
        self.bytes.set(self.bytes.get() + bytes);
        self.shared.records.fetch_add(records, Ordering::Relaxed);
        self.shared.bytes.fetch_add(bytes, Ordering::Relaxed);
        let ns = u64::try_from(latency.as_nanos()).unwrap_or(u64::MAX).max(1);
        self.latency.borrow_mut().saturating_record(ns);
    }

    pub fn fail(&self, error: String) {
        self.error.borrow_mut().get_or_insert(error);
    }

    pub fn failed(&self) -> bool {
        self.error.borrow().is_some()
    }

    pub fn snapshot(&self) -> Snapshot {
        Snapshot {
            records: self.records.get(),
            bytes: self.bytes.get(),
            elapsed: self.elapsed.get(),
            latency: self.latency.borrow().clone(),
            failover_gaps: self.failover_gaps.borrow().clone(),
        }
    }
}

/// A phase's figures, sendable between threads and mergeable.
#[derive(Clone)]
pub struct Snapshot {
    pub records: u64,
    pub bytes: u64,
    pub elapsed: Duration,
    pub latency: Histogram<u64>,
    pub failover_gaps: Vec<Duration>,
}

impl Snapshot {
    /// Sums counts and histograms; the phase lasted as long as its slowest thread.
    pub fn merge(parts: impl IntoIterator<Item = Snapshot>) -> Option<Snapshot> {
        parts.into_iter().reduce(|mut total, part| {
            total.records += part.records;
            total.bytes += part.bytes;
            total.elapsed = total.elapsed.max(part.elapsed);
            total.failover_gaps.extend(part.failover_gaps);
            // Every histogram comes from `new_histogram`: equal bounds, so `add` cannot fail.
            let _ = total.latency.add(&part.latency);
            total
        })
    }

    fn seconds(&self) -> f64 {
        self.elapsed.as_secs_f64().max(1e-9)
    }

    fn mib_per_sec(&self) -> f64 {
        self.bytes as f64 / self.seconds() / (1024.0 * 1024.0)
    }

    /// Two lines for a person.
    pub fn human(&self, phase: &str, record_size: impl std::fmt::Display) -> String {
        let secs = self.seconds();
        format!(
            "{phase}: {} records of {record_size} B in {secs:.2} s = {:.0} records/s, {:.1} MB/s ({:.1} MiB/s)\n{}",
            self.records,
            self.records as f64 / secs,
            self.bytes as f64 / secs / 1e6,
            self.mib_per_sec(),
            histogram_human(&format!("{phase}: request latency"), &self.latency),
        )
    }

    /// The failovers a phase rode through, each as long as it kept a batch unacknowledged.
    pub fn failovers_human(&self, phase: &str) -> Option<String> {
        let longest = self.failover_gaps.iter().max()?;
        let each: Vec<String> =
            self.failover_gaps.iter().map(|g| format!("{}", g.as_millis())).collect();
        Some(format!(
            "{phase}: {} failover gaps, longest {} ms; each (ms): {}",
            self.failover_gaps.len(),
            longest.as_millis(),
            each.join(" ")
        ))
    }

    /// One JSON object.
    pub fn json(&self) -> String {
        format!(
            "{{\"records\":{},\"bytes\":{},\"seconds\":{:.3},\"records_per_sec\":{:.0},\"mib_per_sec\":{:.2},\"latency_us\":{}}}",
            self.records,
            self.bytes,
            self.seconds(),
            self.records as f64 / self.seconds(),
            self.mib_per_sec(),
            histogram_json(&self.latency),
        )
    }
}

const QUANTILES: [(&str, f64); 6] =
    [("p50", 0.5), ("p90", 0.9), ("p99", 0.99), ("p99.9", 0.999), ("p99.99", 0.9999), ("max", 1.0)];

/// One line of percentiles in µs for a person.
pub fn histogram_human(name: &str, h: &Histogram<u64>) -> String {
    let mut out = format!("{name} µs ");
    for (label, q) in QUANTILES {
        let _ = write!(out, " {label} {:.0}", h.value_at_quantile(q) as f64 / 1000.0);
    }
    let _ = write!(out, "  ({} samples)", h.len());
    out
}

/// Percentiles in µs as a JSON object.
pub fn histogram_json(h: &Histogram<u64>) -> String {
    let mut out = format!("{{\"samples\":{}", h.len());
    for (label, q) in QUANTILES {
        let _ = write!(out, ",\"{label}\":{:.1}", h.value_at_quantile(q) as f64 / 1000.0);
    }
    out.push('}');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_is_well_formed_enough_for_scripts() {
        let totals = Totals::new(Arc::default());
        totals.add(10, 10_240, Duration::from_micros(250));
        totals.elapsed.set(Duration::from_secs(1));
        let json = totals.snapshot().json();
        assert!(json.starts_with("{\"records\":10,\"bytes\":10240"), "{json}");
        assert!(json.contains("\"p99.99\":"));
        assert_eq!(json.matches('{').count(), json.matches('}').count());
    }

    #[test]
    fn snapshots_merge_counts_histograms_and_the_longest_time() {
        let parts: Vec<Snapshot> = (1..=3u64)
            .map(|i| {
                let totals = Totals::new(Arc::default());
                totals.add(i, i * 100, Duration::from_micros(i * 10));
                totals.elapsed.set(Duration::from_secs(i));
                totals.snapshot()
            })
            .collect();
        let merged = Snapshot::merge(parts).unwrap();
        assert_eq!((merged.records, merged.bytes), (6, 600));
        assert_eq!(merged.elapsed, Duration::from_secs(3));
        assert_eq!(merged.latency.len(), 3);
    }
}
