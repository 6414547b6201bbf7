//! The cluster: membership, the controller's decisions, and (to come) the Raft metadata log and
//! replication.
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
//!   (`metadata::encode_batch`).
//! - `simulation.rs`: two seeded runs. One drives the decisions over brokers registering,
//!   heartbeating, dying, restarting and shutting down, topics created and deleted, and the
//!   controller failing over; the other runs three Raft voters over a lossy network, the leader
//!   deciding and proposing. Both check their invariants after every step.
//!
//! None of it does I/O or reads a clock. Issue 15's next steps drive it from the broker: the
//! voters' log made durable, their messages carried by the native protocol, and every broker
//! applying the committed records.

pub mod applied;
pub mod decide;
pub mod follower;
pub mod identity;
pub mod membership;
pub mod metadata;
pub mod node;
pub mod placement;
pub mod quorum;
pub mod raft_wire;
#[cfg(test)]
mod simulation;
pub mod voter_log;
