//! What a phase measured, and how it is printed: a human summary or one JSON object.

use std::cell::{Cell, RefCell};
use std::fmt::Write as _;
use std::time::Duration;

use hdrhistogram::Histogram;
use spate::client::ClientError;

/// Counts and request latencies of one phase.
pub struct Totals {
    pub records: Cell<u64>,
    pub bytes: Cell<u64>,
    pub latency: RefCell<Histogram<u64>>,
    pub elapsed: Cell<Duration>,
    pub error: RefCell<Option<ClientError>>,
}

impl Totals {
    pub fn new() -> Self {
        Self {
            records: Cell::new(0),
            bytes: Cell::new(0),
            latency: RefCell::new(spate::metrics::new_histogram()),
            elapsed: Cell::new(Duration::ZERO),
            error: RefCell::new(None),
        }
    }

    pub fn add(&self, records: u64, bytes: u64, latency: Duration) {
        self.records.set(self.records.get() + records);
        self.bytes.set(self.bytes.get() + bytes);
        let ns = u64::try_from(latency.as_nanos()).unwrap_or(u64::MAX).max(1);
        self.latency.borrow_mut().saturating_record(ns);
    }

    pub fn fail(&self, error: ClientError) {
        self.error.borrow_mut().get_or_insert(error);
    }

    pub fn failed(&self) -> bool {
        self.error.borrow().is_some()
    }

    fn seconds(&self) -> f64 {
        self.elapsed.get().as_secs_f64().max(1e-9)
    }

    fn mib_per_sec(&self) -> f64 {
        self.bytes.get() as f64 / self.seconds() / (1024.0 * 1024.0)
    }

    fn latency_us(&self, quantile: f64) -> f64 {
        self.latency.borrow().value_at_quantile(quantile) as f64 / 1000.0
    }

    /// Two lines for a person.
    pub fn human(&self, phase: &str, record_size: usize) -> String {
        let secs = self.seconds();
        let h = self.latency.borrow();
        format!(
            "{phase}: {} records of {record_size} B in {secs:.2} s = {:.0} records/s, {:.1} MB/s ({:.1} MiB/s)\n\
             {phase}: request latency µs  p50 {:.0}  p90 {:.0}  p99 {:.0}  p99.9 {:.0}  p99.99 {:.0}  max {:.0}  ({} requests)",
            self.records.get(),
            self.records.get() as f64 / secs,
            self.bytes.get() as f64 / secs / 1e6,
            self.mib_per_sec(),
            self.latency_us(0.5),
            self.latency_us(0.9),
            self.latency_us(0.99),
            self.latency_us(0.999),
            self.latency_us(0.9999),
            h.max() as f64 / 1000.0,
            h.len()
        )
    }

    /// One JSON object.
    pub fn json(&self) -> String {
        let mut out = String::new();
        let _ = write!(
            out,
            "{{\"records\":{},\"bytes\":{},\"seconds\":{:.3},\"records_per_sec\":{:.0},\"mib_per_sec\":{:.2},\"requests\":{},\"latency_us\":{{",
            self.records.get(),
            self.bytes.get(),
            self.seconds(),
            self.records.get() as f64 / self.seconds(),
            self.mib_per_sec(),
            self.latency.borrow().len()
        );
        let quantiles = [
            ("p50", 0.5),
            ("p90", 0.9),
            ("p99", 0.99),
            ("p99.9", 0.999),
            ("p99.99", 0.9999),
            ("max", 1.0),
        ];
        for (i, (name, q)) in quantiles.iter().enumerate() {
            let sep = if i == 0 { "" } else { "," };
            let _ = write!(out, "{sep}\"{name}\":{:.1}", self.latency_us(*q));
        }
        out.push_str("}}");
        out
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
        let totals = Totals::new();
        totals.add(10, 10_240, Duration::from_micros(250));
        totals.elapsed.set(Duration::from_secs(1));
        let json = totals.json();
        assert!(json.starts_with("{\"records\":10,\"bytes\":10240"), "{json}");
        assert!(json.contains("\"p99.99\":"));
        assert_eq!(json.matches('{').count(), json.matches('}').count());
    }
}
