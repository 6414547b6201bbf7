//! Shards: one pinned glommio executor per core, each owning a share of the partitions.
//!
//! `state.rs` is what one shard owns (its partitions, its copy of the topic catalog, its
//! metrics, the group coordinator it hosts) and how it routes an operation to the shard that
//! owns the partition, over the channel mesh (`call.rs` defines the messages); `catalog.rs` is
//! the topic catalog and its files; `turns.rs` keeps calls to one shard in order. Shard 0 also
//! acts as the controller: topic creation and deletion go through it, one at a time, and it
//! broadcasts the change to every shard before answering. Starting and stopping the shards is
//! `broker`'s job.

pub mod call;
pub mod catalog;
pub mod state;
pub mod turns;

pub use state::Shard;

/// The most a single fetch returns, in either protocol; a client asking for more gets this much.
pub const FETCH_BYTES_MAX: usize = 64 * 1024 * 1024;
/// The longest a fetch waits for data at the end of the log, in either protocol.
pub const FETCH_WAIT_MS_MAX: u32 = 30_000;
