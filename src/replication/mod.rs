//! Replication of partition data (issue 16), as state machines without I/O: what a leader
//! decides from its followers' fetches, and what a follower does when its log has parted from
//! its leader's. The broker drives them (to come: followers fetching from leaders over the
//! native protocol, the high watermark and `acks=all` in the partition layer, in-sync changes
//! through the controller).
//!
//! - `divergence.rs`: where a follower's log stops agreeing with its leader's, from the two
//!   leader-epoch caches (KIP-320's diverging epoch, KIP-101, KIP-279).
//! - `eligible.rs`: which replicas out of the in-sync set may still lead (KIP-966's eligible
//!   leader replicas), as the controller keeps them.
//! - `leader.rs`: a leader's view of its replicas: followers' synced ends, the high watermark,
//!   `min.insync.replicas` for `acks=all`, and which followers leave or rejoin the in-sync set
//!   (`replica.lag.time.max.ms`).
//! - `simulation.rs`: a seeded run of one partition on three brokers with a controller,
//!   crashes with torn unsynced tails, zombie leaders and a lossy network, checking after every
//!   step that no acknowledged record is lost and that replicas agree below their high
//!   watermarks.

pub mod divergence;
pub mod eligible;
pub mod leader;
#[cfg(test)]
mod simulation;
