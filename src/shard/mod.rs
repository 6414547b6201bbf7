//! Shards: one pinned glommio executor per core, each owning a share of the partitions.
//!
//! A shard's jobs, one file each:
//! - `state.rs`: the `Shard` itself, routing (an operation runs in place or crosses the channel
//!   mesh to the shard that owns its partition, as a typed request from `call.rs`, kept in order
//!   per target by `turns.rs`), producer ids, and the stop signal;
//! - `registry.rs`: the partitions this shard owns and the operations run on them in place (the
//!   replica manager of the cluster grows out of it);
//! - `controller.rs`: the controller role shard 0 plays (topic creation, growth, deletion, one at
//!   a time, broadcast to every shard before the answer), which the Raft controller takes over;
//! - `cluster.rs`: shard 0 hosts the controller voter, and what arrives for it on any shard
//!   is forwarded there;
//! - `groups.rs`: which shard coordinates a group and how a group request gets there;
//! - `mesh.rs`: the channels between shards, one per ordered pair;
//! - `catalog.rs`: the topic catalog and its files.
//!
//! Starting and stopping the shards is `broker`'s job.

pub mod call;
pub mod catalog;
mod cluster;
mod controller;
mod groups;
pub mod mesh;
mod registry;
pub mod state;
pub mod turns;

pub use state::Shard;

/// The shard that plays the controller role (`controller.rs`).
pub const CONTROLLER_SHARD: crate::types::ShardId = crate::types::ShardId(0);

/// The most a single fetch returns, in either protocol; a client asking for more gets this much.
pub const FETCH_BYTES_MAX: usize = 64 * 1024 * 1024;
/// The longest a fetch waits for data at the end of the log, in either protocol.
pub const FETCH_WAIT_MS_MAX: u32 = 30_000;
