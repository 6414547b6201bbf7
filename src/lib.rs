//! Spate: a thread-per-core, io_uring message broker in the Kafka mould.
//!
//! Subsystems, one folder each, lowest layer first (`tests/layers.rs` keeps the order):
//! `error` (the broker's error vocabulary), `types` (offsets, file positions, leader epochs,
//! partition, shard and node ids, as types) and `metrics` (latency histograms); `record` (both
//! record formats, checksums, conversion); `config`; `log` (segments, indexes, recovery,
//! retention); `partition` (the high watermark, acks waiters, what readers may see); `group` (consumer groups and committed offsets); `shard` (routing, the partition
//! registry, topic changes forwarded to the controller, the metadata followed, the cross-shard
//! mesh); `transport` (what both listeners share
//! of a connection); `cluster` (the cluster metadata and the controller's decisions, without
//! I/O); `kafka` and `native` (the two wire protocols); `client` (the Rust client
//! library); `broker` (start and ordered stop); `cli` (the `spate` command).
//! `docs/ARCHITECTURE.md` draws how they fit together.

/// Declares a request trait and request structs that each name their answer type: each struct
/// implements the trait (`into_call`, `from_answer`), and the two enums a channel carries,
/// calls and answers, get one variant per request, named after it. Generated from one list, a
/// call and its answer cannot fall out of step. Used by the shard mesh (`shard::call`) and the
/// group coordinator (`group::coordinator`).
macro_rules! typed_requests {
    (
        $(#[$trait_doc:meta])*
        trait $trait:ident, call $call:ident, answer $answer_enum:ident;
        $(
            $(#[$doc:meta])*
            $name:ident { $($(#[$field_doc:meta])* $field:ident: $ty:ty),* $(,)? } -> $answer:ty;
        )*
    ) => {
        $(#[$trait_doc])*
        pub trait $trait: Sized {
            type Answer;

            fn into_call(self) -> $call;

            /// The answer to this request out of the channel's answer; `None` only if the other
            /// side answered another request, which its dispatch rules out by construction.
            fn from_answer(answer: $answer_enum) -> Option<Self::Answer>;
        }

        $(
            $(#[$doc])*
            pub struct $name { $($(#[$field_doc])* pub $field: $ty),* }

            impl $trait for $name {
                type Answer = $answer;

                fn into_call(self) -> $call {
                    $call::$name(self)
                }

                fn from_answer(answer: $answer_enum) -> Option<$answer> {
                    match answer {
                        $answer_enum::$name(answer) => Some(answer),
                        #[allow(unreachable_patterns)]
                        _ => None,
                    }
                }
            }
        )*

        /// A request as its channel carries it.
        pub enum $call { $($name($name)),* }

        /// An answer as its channel carries it: the variant of the request it answers.
        pub enum $answer_enum { $($name($answer)),* }
    };
}

pub mod broker;
pub mod cli;
pub mod client;
pub mod cluster;
pub mod config;
pub mod error;
pub mod group;
pub mod kafka;
pub mod log;
pub mod metrics;
pub mod native;
pub mod partition;
pub mod record;
pub mod replication;
pub mod shard;
#[cfg(test)]
mod testing;
pub mod transport;
pub mod types;

/// Milliseconds since the Unix epoch, by the wall clock.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}
