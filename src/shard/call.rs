//! The requests shards send each other over the mesh, each naming its answer type.
//!
//! A request is a struct ([`Produce`], [`Fetch`], ...) that implements [`Request`]: `Shard::ask`
//! sends it to the shard that must run it and returns that request's own answer, or the
//! [`BrokerError`] saying the shard could not be reached. The mesh carries them as [`ShardCall`]
//! and [`ShardAnswer`], one variant per request, both generated from the one list below, so a
//! call and its answer cannot fall out of step and no caller matches on answers.

use std::sync::Arc;
use std::time::Duration;

use crate::cluster::metadata::ClusterId;
use crate::cluster::node::{
    ClusterStatus, ControllerAnswer, ControllerError, ControllerRequest, MetadataEntries,
};
use crate::cluster::raft_wire::WireMessage;
use crate::error::{BrokerError, ErrorKind};
use crate::group::{GroupAnswer, GroupCall};
use crate::log::producers::ProducerSummary;
use crate::metrics::stats::ShardStats;
use crate::partition::{Acks, LogBounds, ReadOutcome};
use crate::record::PendingEntry;
use crate::shard::publish::Published;
use crate::shard::registry::ReplicaSize;
use crate::shard::replicas::{FetchLimits, FollowerAnswer, FollowerFetch};
use crate::types::{LeaderEpoch, NodeId, Offset, PartitionId};

/// A produced batch as its partition took it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Produced {
    pub base_offset: Offset,
    pub log_start: Offset,
    /// An idempotent producer's retry of a batch the log had: that batch's largest timestamp as
    /// stored (under LogAppendTime, when it was appended, which Kafka answers the retry with).
    pub duplicate_of: Option<i64>,
}

typed_requests! {
    /// A request to one shard, and what it answers.
    trait Request, call ShardCall, answer ShardAnswer;

    /// Appends to a partition this shard owns.
    Produce { topic: String, partition: PartitionId, acks: Acks, entry: PendingEntry }
        -> Result<Produced, BrokerError>;

    /// Reads a partition this shard owns, waiting up to `max_wait` for data at its end; in the
    /// leader epoch the client knows, when it says (KIP-320).
    Fetch { topic: String, partition: PartitionId, epoch: Option<LeaderEpoch>, offset: Offset, max_bytes: usize, max_wait: Duration }
        -> Result<ReadOutcome, BrokerError>;

    /// The offset of the latest (-1), earliest (-2) or first record at or after a time, with
    /// that record's timestamp (-1 for latest and earliest) and the leader epoch it was
    /// appended in (-1 when none is known).
    ListOffsets { topic: String, partition: PartitionId, epoch: Option<LeaderEpoch>, timestamp: i64 }
        -> Result<(i64, i64, i32), BrokerError>;

    /// OffsetForLeaderEpoch: the largest leader epoch of the partition's log at or below
    /// `leader_epoch`, and where it ends; (-1, -1) for one newer than any.
    EpochEnd { topic: String, partition: PartitionId, epoch: Option<LeaderEpoch>, leader_epoch: LeaderEpoch }
        -> Result<(i32, i64), BrokerError>;

    /// A follower's fetch of partitions this shard owns (`replicas.rs`): the answers with news
    /// for the follower, after waiting up to `limits.max_wait` for some.
    ReplicaFetch { follower: NodeId, partitions: Vec<FollowerFetch>, limits: FetchLimits }
        -> Vec<FollowerAnswer>;

    /// Log start, high watermark and log end.
    Watermarks { topic: String, partition: PartitionId } -> Result<LogBounds, BrokerError>;

    /// The idempotent producers a partition this shard leads remembers (DescribeProducers).
    Producers { topic: String, partition: PartitionId } -> Result<Vec<ProducerSummary>, BrokerError>;

    /// DeleteRecords at the leader of a partition this shard owns: the log start moves up to
    /// `offset` (the high watermark for `None`); answers the new log start.
    DeleteRecords { topic: String, partition: PartitionId, offset: Option<Offset>, timeout: Duration }
        -> Result<Offset, BrokerError>;

    /// Every replica this shard holds, with its size on disk (DescribeLogDirs).
    ReplicaSizes {} -> Vec<ReplicaSize>;

    /// This shard's figures for a scrape of `/metrics`. Boxed: far larger than other answers.
    Stats {} -> Box<ShardStats>;

    /// For shard 0, which knows where the active controller is: a request to it.
    ForwardToController { request: ControllerRequest } -> Result<ControllerAnswer, ControllerError>;

    /// From shard 0 to every shard: the cluster's metadata, as the broker has applied it.
    Publish { published: Arc<Published> } -> Result<(), BrokerError>;

    /// For shard 0: answered once every shard has published metadata log entry `index` (or a
    /// few seconds have passed).
    AwaitPublished { index: u64 } -> ();

    /// From shard 0 to every shard: a topic the cluster no longer has here, to close.
    RemoveTopic { name: String } -> Result<(), BrokerError>;

    /// For a group's coordinator (or, for a listing, every shard). Boxed: a join outcome
    /// carries every member's metadata, far larger than other answers.
    Group { call: GroupCall } -> Box<Result<GroupAnswer, ErrorKind>>;

    /// For the controller voter (shard 0): Raft messages from voter `from`.
    StepVoter { from: NodeId, cluster_id: Option<ClusterId>, messages: Vec<WireMessage> }
        -> Result<(), BrokerError>;

    /// For the controller voter (shard 0): a broker's request to the active controller.
    AskController { request: ControllerRequest, via: Option<u64> } -> Result<ControllerAnswer, ControllerError>;

    /// For the controller voter (shard 0): connection `via`, which carried a broker's heartbeats
    /// here, closed.
    HeartbeatsLost { node: NodeId, broker_epoch: u64, via: u64 } -> ();

    /// For the controller voter (shard 0): the cluster as it sees it.
    DescribeCluster {} -> Result<ClusterStatus, BrokerError>;

    /// For the controller voter (shard 0): committed metadata entries from an index on.
    CommittedMetadata { from: u64 } -> Result<MetadataEntries, BrokerError>;

    /// For shard 0, which holds the broker's block of producer ids: one of them.
    NextProducerId {} -> Result<i64, BrokerError>;
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
