//! The messages shards send each other over the mesh.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::error::BrokerError;
use crate::log::Acks;
use crate::log::ReadOutcome;
use crate::record::PendingEntry;
use crate::shard::catalog::TopicInfo;

/// An operation for the shard that owns the partition (or, for topic changes, for shard 0).
pub enum ShardCall {
    Produce {
        topic: String,
        partition: u32,
        acks: Acks,
        entry: PendingEntry,
    },
    Fetch {
        topic: String,
        partition: u32,
        offset: u64,
        max_bytes: usize,
        max_wait: Duration,
    },
    ListOffsets {
        topic: String,
        partition: u32,
        timestamp: i64,
    },
    Watermarks {
        topic: String,
        partition: u32,
    },
    CreateTopic {
        name: String,
        partitions: u32,
        overrides: BTreeMap<String, String>,
    },
    DeleteTopic {
        name: String,
    },
    AddPartitions {
        name: String,
        count: u32,
    },
    /// For the group's coordinator (or, for a listing, every shard).
    Group(crate::group::GroupCall),
    /// From the controller to every shard: the topic now exists (`Some`) or is gone (`None`).
    ApplyTopic {
        name: String,
        info: Option<TopicInfo>,
    },
}

pub enum ShardAnswer {
    /// Base offset and log start.
    Produced(Result<(u64, u64), BrokerError>),
    Fetched(Result<ReadOutcome, BrokerError>),
    /// Offset and the timestamp of the record found (-1 for latest and earliest).
    Offset(Result<(i64, i64), BrokerError>),
    /// Log start and high watermark.
    Watermarks(Result<(u64, u64), BrokerError>),
    Done(Result<(), BrokerError>),
    /// Boxed: a join outcome carries every member's metadata, far larger than other answers.
    Group(Box<crate::group::GroupAnswer>),
}

/// What shards send each other over the mesh: calls, and the answers to them.
///
/// Answers travel back over the mesh too, to a oneshot on the calling shard's own thread. A
/// oneshot woken straight from the answering shard would touch a glommio task's waker from a
/// foreign thread, and glommio 0.9 can free such a task twice when that races with the task
/// completing (seen here as "double free detected in tcache 2" under cross-shard load).
pub enum MeshMessage {
    Call { call_id: u64, call: ShardCall },
    Answer { call_id: u64, answer: ShardAnswer },
}
