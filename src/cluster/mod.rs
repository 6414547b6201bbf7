//! The cluster: membership, the controller's decisions, the Raft metadata log with its
//! snapshots, and (to come) replication.
//!
//! - `metadata.rs`: the records the controller commits, a decision's batch of them to one log
//!   entry, and the image every broker builds by applying the batches in order
//!   (`apply_batch`), whole or not at all, refusing one that would break an invariant.
//! - `decide.rs`: what the active controller decides from an event and the image
//!   (`decide(event, now) -> records`): registration and broker epochs, heartbeats and
//!   fencing, leader election from the in-sync replicas, topic creation and deletion.
//! - `placement.rs`: where a new topic's replicas go (Kafka's rack-aware assignment).
//! - `quorum.rs`: a controller voter's Raft node (raft-rs's `RawNode`, driven without I/O),
//!   which replicates the batches among the voters, versioned and archived
//!   (`metadata::encode_batch`), and snapshots of the image that bound the log;
//!   `raft_storage.rs` is its log in memory, `raft_wire.rs` its messages, entries and snapshots
//!   in Spate's own form, `voter_log.rs` its disk.
//! - `simulation.rs`: two seeded runs. One drives the decisions over brokers registering,
//!   heartbeating, dying, restarting and shutting down, topics created and deleted, and the
//!   controller failing over; the other runs three Raft voters over a lossy network, the leader
//!   deciding and proposing. Both check their invariants after every step.
//!
//! The state machines do no I/O and read no clock; `node.rs` (a voter), `follower.rs` (a broker
//! that follows the log) and `membership.rs` (registration and heartbeats) drive them from the
//! broker, and `voter_log.rs` keeps a voter's log, snapshot and state on disk.

pub mod applied;
pub mod decide;
pub mod follower;
pub mod identity;
pub mod membership;
pub mod metadata;
pub mod node;
mod old_layouts;
pub mod placement;
pub mod quorum;
pub mod raft_storage;
pub mod raft_wire;
#[cfg(test)]
mod simulation;
pub mod voter_log;
