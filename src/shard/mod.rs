//! Shards: one pinned glommio executor per core, each owning a share of the partitions.
//!
//! A shard's jobs, one file each:
//! - `state.rs`: the `Shard` itself, routing (an operation runs in place or crosses the channel
//!   mesh to the shard that owns its partition, as a typed request from `call.rs`, kept in order
//!   per target by `turns.rs`), producer ids, and the stop signal;
//! - `registry.rs`: the partitions this shard owns and the operations run on them in place (the
//!   replica manager of the cluster grows out of it);
//! - `controller.rs`: topic creation, growth and deletion as a broker receives them: checked,
//!   then forwarded to the cluster's active controller, answered once published here;
//! - `publish.rs`: shard 0 follows the cluster's metadata with the broker's disk (topic files,
//!   stray topics removed, topics from before the cluster brought in) and hands every shard
//!   each new image (its catalog, the replicas it opens, the partitions it leads);
//! - `cluster.rs`: shard 0 hosts the controller voter (or the metadata follower) and the
//!   broker's membership, and what arrives for them on any shard is forwarded there;
//! - `replicas.rs`: replication's shard side: followers' fetches served where their
//!   partitions live, the partitions this shard follows, and its leaders' in-sync changes;
//! - `groups.rs`: which shard coordinates a group and how a group request gets there;
//! - `stats.rs`: what the shard reports to a scrape of `/metrics`;
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
pub mod publish;
pub mod registry;
pub mod replicas;
pub mod state;
mod stats;
pub mod turns;

pub use call::Produced;
pub use controller::TopicRequest;
pub use state::Shard;

/// The shard that hosts the broker's part in the cluster (`cluster.rs`, `publish.rs`).
pub const CONTROLLER_SHARD: crate::types::ShardId = crate::types::ShardId(0);

/// The most a single fetch returns, in either protocol; a client asking for more gets this much.
pub const FETCH_BYTES_MAX: usize = 64 * 1024 * 1024;
/// The longest a fetch waits for data at the end of the log, in either protocol.
pub const FETCH_WAIT_MS_MAX: u32 = 30_000;
