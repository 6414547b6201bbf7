//! The Kafka wire protocol: the listener real Kafka clients use unchanged.
//!
//! `server.rs` owns a connection (framing, budgets, responses in request order); `codec.rs`
//! decodes requests and encodes responses with the `kafka-protocol` crate; `versions.rs` says
//! which APIs and versions are served; `handlers/` does each request's work through the same
//! shard calls as the native protocol.
//! Produced batches are validated and converted by `record::kafka_batch` and `record::convert`.

pub mod codec;
pub mod handlers;
pub mod server;
pub mod versions;
