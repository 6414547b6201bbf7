//! The Rust client library for the native protocol: async, for glommio executors.
//!
//! [`Client`] is one pipelined connection: requests are written as they come and responses are
//! matched to them by request id, so many can be in flight. [`Leaders`] sends each partition's
//! requests to its leader's connection, in a cluster of any size. [`Producer`] batches records
//! per partition on top of it; [`GroupConsumer`] reads as a member of a consumer group (through
//! the broker it is given). The `spate` console tools and the tests use this.

pub mod connection;
pub mod group;
pub mod leaders;
pub mod partitioner;
pub mod producer;

pub use connection::{Client, ClientError, Fetched, FetchedBatch, TopicDescription};
pub use group::{Assignor, GroupConfig, GroupConsumer, OffsetReset};
pub use leaders::Leaders;
pub use producer::{Producer, ProducerConfig};

/// The address `spate serve` with no arguments listens on, as seen from this machine.
pub fn default_address() -> String {
    format!("127.0.0.1:{}", crate::config::NATIVE_PORT_DEFAULT)
}
