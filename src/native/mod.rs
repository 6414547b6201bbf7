//! The native protocol: Spate's own wire format, spoken by the Rust client, the loadgen and
//! replication between nodes.
//!
//! `frame.rs` owns the framing (a fixed header, then an rkyv *meta* body, then raw *data*),
//! `messages.rs` the request and response bodies, `exchange.rs` a request frame as read and the
//! response to it, `server.rs` a connection's read/dispatch/write loop (on `transport`'s
//! accepting, budgets and writer), `handlers.rs`, `groups.rs`, `cluster.rs` and `replication.rs` (a follower's fetch) what each
//! request does. The codec knows nothing of the broker.

pub mod cluster;
pub mod exchange;
pub mod frame;
pub mod groups;
pub mod handlers;
pub mod messages;
pub mod replication;
pub mod server;
