//! Shards: one pinned glommio executor per core, each owning a share of the partitions.
//!
//! `runtime.rs` starts the executors and stops them in order; `state.rs` is what one shard
//! owns (its partitions, its copy of the topic catalog, its metrics) and how it routes an
//! operation to the shard that owns the partition, over the channel mesh (`call.rs` defines
//! the messages); `catalog.rs` is the topic catalog and its files; `listen_check.rs` makes sure
//! no other socket listens on the broker's ports before the shards bind them. Shard 0 also acts
//! as the controller: topic creation and deletion go through it, one at a time, and it
//! broadcasts the change to every shard before answering.

pub mod call;
pub mod catalog;
mod listen_check;
pub mod runtime;
pub mod state;
pub mod turns;

pub use call::BrokerError;
pub use state::Shard;
