//! The Rust client library for the native protocol: async, for glommio executors.
//!
//! [`Client`] is one pipelined connection: requests are written as they come and responses are
//! matched to them by request id, so many can be in flight. [`Producer`] batches records per
//! partition on top of it; [`GroupConsumer`] reads as a member of a consumer group. The loadgen, the `spate` console tools and the tests all use this.

pub mod connection;
pub mod group;
pub mod partitioner;
pub mod producer;

pub use connection::{Client, ClientError, Fetched, FetchedBatch, TopicDescription};
pub use group::{Assignor, GroupConfig, GroupConsumer, OffsetReset};
pub use producer::{Producer, ProducerConfig};

/// The address `spate serve` with no arguments listens on, as seen from this machine.
pub fn default_address() -> String {
    format!("127.0.0.1:{}", crate::config::NATIVE_PORT_DEFAULT)
}
