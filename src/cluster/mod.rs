//! The cluster: membership, the controller's decisions, and (to come) the Raft metadata log and
//! replication.
//!
//! - `metadata.rs`: the records the controller commits and the image every broker builds by
//!   applying them in order (`apply(record)`), refusing a record that would break an invariant.
//! - `decide.rs`: what the active controller decides from an event and the image
//!   (`decide(event, now) -> records`): registration and broker epochs, heartbeats and
//!   fencing, leader election from the in-sync replicas, topic creation and deletion.
//! - `placement.rs`: where a new topic's replicas go (Kafka's rack-aware assignment).
//! - `simulation.rs`: a seeded run of brokers registering, heartbeating, dying, restarting and
//!   shutting down, topics created and deleted, and the controller failing over, checking the
//!   invariants after every step.
//!
//! None of it does I/O or reads a clock. Issue 15's next steps drive it: a Raft library
//! replicates the records among the controller voters, and every broker applies them.

pub mod decide;
pub mod metadata;
pub mod placement;
#[cfg(test)]
mod simulation;
