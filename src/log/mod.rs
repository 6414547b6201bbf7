//! Partition logs: segment files, their indexes, recovery, retention and the tail cache.
//!
//! A partition is a directory of segments (`segment.rs`), each with a sparse offset and time
//! index (`index.rs`), and a checkpoint of where each leader epoch starts (`epochs.rs`). `partition.rs` owns the write path (offsets, O_DIRECT writes, group
//! commit) and the read path, with `write_plan.rs` laying out the writes it keeps in flight;
//! `scan.rs` validates stored entries on recovery; `retention.rs` decides what to delete and
//! when to roll; `tail_cache.rs` serves caught-up readers from memory; `queued.rs` counts what
//! every partition has yet to write, against the broker-wide limit. Only the shard that owns a
//! partition touches its files, and only through `storage.rs` (files, directories and clocks:
//! glommio's in the broker, a simulated disk in `simulation.rs`, the seeded test of the log).

use rkyv::{Archive, Deserialize, Serialize};

pub mod epochs;
pub mod index;
pub mod partition;
pub mod probe;
pub mod producers;
pub mod queued;
pub mod retention;
pub mod scan;
pub mod segment;
#[cfg(test)]
mod simulation;
pub mod storage;
pub mod tail_cache;
pub mod write_plan;

pub use partition::{LogError, LogLimits, PartitionLog, ReadOutcome, SharedByShard};

/// ListOffsets' special timestamps (Kafka's): the high watermark, and the log start.
pub const OFFSET_LATEST: i64 = -1;
pub const OFFSET_EARLIEST: i64 = -2;

/// `acks` as Kafka defines it: what a produce waits for before it is answered.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Archive, Serialize, Deserialize)]
pub enum Acks {
    /// No response at all.
    None,
    /// After the leader's O_DIRECT write completes.
    Leader,
    /// After fdatasync (and, with replication, every in-sync replica).
    All,
}

/// As Kafka writes it: `0`, `1` or `all`.
impl std::fmt::Display for Acks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Acks::None => "0",
            Acks::Leader => "1",
            Acks::All => "all",
        })
    }
}

impl std::str::FromStr for Acks {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "0" => Ok(Acks::None),
            "1" => Ok(Acks::Leader),
            "all" | "-1" => Ok(Acks::All),
            other => Err(format!("acks must be 0, 1 or all, not {other:?}")),
        }
    }
}
