//! The Kafka wire protocol: the listener real Kafka clients use unchanged.
//!
//! `server.rs` owns a connection (framing, budgets, responses in request order); `codec.rs`
//! decodes requests and encodes responses with the `kafka-protocol` crate; `versions.rs` says
//! which APIs and versions are served; `handlers/` does each request's work through the same
//! shard calls as the native protocol. `batch.rs` validates produced record batches, which are
//! stored as sent; `convert.rs` re-encodes entries for readers of the other protocol.

pub mod batch;
pub mod codec;
pub mod convert;
pub mod handlers;
pub mod server;
pub mod versions;
