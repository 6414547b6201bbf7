//! Consumer groups: Kafka's classic group protocol and committed offsets.
//!
//! A group lives on one shard, its coordinator: the owner of the `__consumer_offsets` partition
//! the group id hashes to ([`offsets::partition_for`]). `state.rs` is one group's membership
//! state machine (joins, syncs, heartbeats, leaves, session expiry), stepped by events and
//! answering with actions; `coordinator.rs` holds a shard's groups, carries out their actions,
//! runs their timers, and keeps committed offsets durable in the group's `__consumer_offsets`
//! partition, replayed when its broker comes to lead that partition. `offsets.rs` is that log's record format;
//! `simulation.rs` drives one group through seeded clients on a clock of its own, through the
//! test driver in `driver.rs`. The protocol front ends translate their requests into typed
//! [`GroupRequest`]s.

pub mod consumer_protocol;
pub mod coordinator;
#[cfg(test)]
mod driver;
pub mod offsets;
#[cfg(test)]
mod simulation;
pub mod state;

pub use coordinator::{
    CommitOffsets, Coordinator, DeleteGroup, DeleteOffsets, DescribeGroup, FetchOffsets,
    GroupAnswer, GroupCall, GroupRequest, Heartbeat, JoinGroup, LeaveGroup, ListGroups,
    OffsetsLogs, SyncGroup,
};
