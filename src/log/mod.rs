//! Partition logs: segment files, their indexes, recovery, retention and the tail cache.
//!
//! A partition is a directory of segments (`segment.rs`), each with a sparse offset and time
//! index (`index.rs`), and a checkpoint of where each leader epoch starts (`epochs.rs`).
//! `partition.rs` owns the write path (offsets, O_DIRECT writes, group commit) and the read
//! path, with `write_plan.rs` laying out the writes it keeps in flight and `in_place.rs`
//! receiving a follower's entries into the buffers they are written from;
//! `scan.rs` validates stored entries on recovery; `retention.rs` decides what to delete and
//! when to roll; `tail_cache.rs` serves caught-up readers from memory, `read_cache.rs` keeps
//! what was read from the disk for the next reader, and `read_ahead.rs` decides which readers
//! to read ahead of (the read path itself is `partition/reads.rs`); `queued.rs` counts what
//! every partition has yet to write, against the broker-wide limit. Only the shard that owns a
//! partition touches its files, and only through `storage.rs` (files, directories and clocks:
//! glommio's in the broker, a simulated disk in `simulation.rs`, the seeded test of the log).

pub mod epochs;
pub mod health;
pub mod in_place;
pub mod index;
pub mod log_start;
pub mod partition;
pub mod probe;
pub mod producers;
pub mod queued;
pub mod read_ahead;
pub mod read_cache;
pub mod retention;
pub mod scan;
pub mod segment;
#[cfg(test)]
mod simulation;
pub mod storage;
pub mod tail_cache;
pub mod write_plan;

pub use partition::{Appended, LogError, LogLimits, PartitionLog, SharedByShard};
