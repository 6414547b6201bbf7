//! Spate: a thread-per-core, io_uring message broker in the Kafka mould.
//!
//! Subsystems, one folder each: `shard` (executors, routing, the cross-shard mesh), `log`
//! (segments, indexes, recovery, retention), `record` (entry header, rkyv records, checksums),
//! `native` (the native wire protocol and its server), `kafka` (the Kafka wire protocol), `group` (consumer groups and committed offsets), `client` (the Rust client library),
//! `metrics` (latency histograms), `cli` (the `spate` command). `docs/ARCHITECTURE.md` draws how
//! they fit together.

pub mod cli;
pub mod client;
pub mod config;
pub mod group;
pub mod kafka;
pub mod log;
pub mod metrics;
pub mod native;
pub mod record;
pub mod shard;
#[cfg(test)]
mod testing;

/// Milliseconds since the Unix epoch, by the wall clock.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}
