//! Spate: a thread-per-core, io_uring message broker in the Kafka mould.
//!
//! Subsystems, one folder each, lowest layer first (`tests/layers.rs` keeps the order):
//! `error` (the broker's error vocabulary) and `metrics` (latency histograms); `record` (both
//! record formats, checksums, conversion); `config`; `log` (segments, indexes, recovery,
//! retention); `group` (consumer groups and committed offsets); `shard` (routing, the partition
//! registry, the controller role, the cross-shard mesh); `transport` (what both listeners share
//! of a connection); `kafka` and `native` (the two wire protocols); `client` (the Rust client
//! library); `broker` (start and ordered stop); `cli` (the `spate` command).
//! `docs/ARCHITECTURE.md` draws how they fit together.

pub mod broker;
pub mod cli;
pub mod client;
pub mod config;
pub mod error;
pub mod group;
pub mod kafka;
pub mod log;
pub mod metrics;
pub mod native;
pub mod record;
pub mod shard;
#[cfg(test)]
mod testing;
pub mod transport;

/// Milliseconds since the Unix epoch, by the wall clock.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}
