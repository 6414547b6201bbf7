//! Request and response bodies of the native protocol, archived with rkyv.
//!
//! Every response carries an [`ErrorCode`] and a human-readable message; a request that could
//! not be decoded at all is answered with an [`ErrorBody`] and the frame's error flag. Bodies are
//! small; record data travels beside them in the frame's data section.

use rkyv::{Archive, Deserialize, Serialize};

// The cluster's requests and answers travel as the cluster defines them.
pub use crate::cluster::decide::Reassignment;
pub use crate::cluster::metadata::{ClusterId, ResourceSettings};
pub use crate::cluster::node::{
    BrokerStatus, ClusterStatus, ControllerAnswer, ControllerRequest, MetadataEntries,
};
pub use crate::cluster::raft_wire::WireMessage;
pub use crate::config::ConfigChange;
use crate::error::{BrokerError, ErrorKind};
// Produce's durability and ListOffsets' special timestamps are the log's terms, carried as is.
pub use crate::partition::{Acks, OFFSET_EARLIEST, OFFSET_LATEST};
pub use crate::record::archive::{decode, encode};
use crate::record::BatchMeta;
use crate::types::NodeId;

/// Error codes of the native protocol. Values are stable on the wire.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Archive, Serialize, Deserialize)]
#[repr(u16)]
pub enum ErrorCode {
    None = 0,
    UnknownTopic = 1,
    UnknownPartition = 2,
    OffsetOutOfRange = 3,
    MessageTooLarge = 4,
    CorruptMessage = 5,
    InvalidRequest = 6,
    TopicAlreadyExists = 7,
    StorageError = 8,
    InvalidConfig = 9,
    UnsupportedApi = 10,
    NotAvailable = 11,
    InvalidTopicName = 12,
    InvalidPartitions = 13,
    /// A batch a broker must not store (Kafka's INVALID_RECORD).
    InvalidRecord = 14,
    /// An idempotent producer skipped or reordered a sequence number.
    OutOfOrderSequence = 15,
    /// An idempotent producer's epoch was fenced by a newer one.
    InvalidProducerEpoch = 16,
    /// A record format this broker does not store (Kafka message sets v0 and v1).
    UnsupportedForMessageFormat = 17,
    UnknownGroup = 18,
    RebalanceInProgress = 19,
    UnknownMember = 20,
    IllegalGeneration = 21,
    InconsistentGroupProtocol = 22,
    CoordinatorNotAvailable = 23,
    FencedInstance = 24,
    InvalidSessionTimeout = 25,
    NonEmptyGroup = 26,
    /// The request asks for more than the broker's limits allow (partitions, disk).
    PolicyViolation = 27,
    /// A controller request reached a broker that is not the active controller; the answer
    /// names the one it knows, if any.
    NotController = 28,
    /// A broker's registration is over: it must register again.
    StaleBrokerEpoch = 29,
    /// Another live broker process holds the node id.
    DuplicateBrokerRegistration = 30,
    /// More replicas than live brokers, or none.
    InvalidReplicationFactor = 31,
    /// A broker or voter of another cluster.
    InconsistentClusterId = 32,
    /// A manual replica assignment that cannot be honoured.
    InvalidReplicaAssignment = 33,
    /// A partition this broker does not lead: the client asks the metadata for its leader.
    NotLeaderOrFollower = 34,
    /// A group request at a broker that does not coordinate the group.
    NotCoordinator = 35,
    /// A request made in a leader epoch older than the partition's.
    FencedLeaderEpoch = 36,
    /// A partition change made against an older partition epoch.
    InvalidUpdateVersion = 37,
    /// An in-sync set naming a replica that may not join it.
    IneligibleReplica = 38,
    /// A request made in a leader epoch newer than the broker knows.
    UnknownLeaderEpoch = 39,
    /// `acks=all` to a partition with fewer in-sync replicas than `min.insync.replicas`.
    NotEnoughReplicas = 40,
    /// `acks=all` appended, then the in-sync set shrank below `min.insync.replicas`.
    NotEnoughReplicasAfterAppend = 41,
    /// `acks=all` not confirmed by the followers in time.
    RequestTimedOut = 42,
    /// A cancellation of a partition reassignment where none is in progress.
    NoReassignmentInProgress = 43,
    /// Committed offsets of a topic a member of the group consumes (deleting them is refused).
    GroupSubscribedToTopic = 44,
    /// A record's timestamp too far from the broker's clock.
    InvalidTimestamp = 45,
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(self, f)
    }
}

/// The one place broker errors become native codes. The native protocol keeps one code for
/// several group refusals a Kafka client tells apart (an unknown or invalid group id, an unknown
/// member or one that must rejoin with an id).
impl From<ErrorKind> for ErrorCode {
    fn from(kind: ErrorKind) -> Self {
        match kind {
            ErrorKind::UnknownTopic => ErrorCode::UnknownTopic,
            ErrorKind::UnknownPartition => ErrorCode::UnknownPartition,
            ErrorKind::OffsetOutOfRange => ErrorCode::OffsetOutOfRange,
            ErrorKind::MessageTooLarge => ErrorCode::MessageTooLarge,
            ErrorKind::CorruptMessage => ErrorCode::CorruptMessage,
            ErrorKind::InvalidRequest => ErrorCode::InvalidRequest,
            ErrorKind::TopicAlreadyExists => ErrorCode::TopicAlreadyExists,
            ErrorKind::StorageError => ErrorCode::StorageError,
            ErrorKind::InvalidConfig => ErrorCode::InvalidConfig,
            ErrorKind::UnsupportedApi => ErrorCode::UnsupportedApi,
            ErrorKind::NotAvailable => ErrorCode::NotAvailable,
            ErrorKind::InvalidTopicName => ErrorCode::InvalidTopicName,
            ErrorKind::InvalidPartitions => ErrorCode::InvalidPartitions,
            ErrorKind::InvalidRecord => ErrorCode::InvalidRecord,
            ErrorKind::InvalidTimestamp => ErrorCode::InvalidTimestamp,
            // Native readers get every codec converted: only Kafka fetches meet it.
            ErrorKind::UnsupportedCompressionType => ErrorCode::UnsupportedForMessageFormat,
            ErrorKind::OutOfOrderSequence => ErrorCode::OutOfOrderSequence,
            ErrorKind::InvalidProducerEpoch => ErrorCode::InvalidProducerEpoch,
            ErrorKind::UnsupportedForMessageFormat => ErrorCode::UnsupportedForMessageFormat,
            ErrorKind::PolicyViolation => ErrorCode::PolicyViolation,
            // Coarser than Kafka's: both pass, and the client asks again.
            ErrorKind::CoordinatorNotAvailable | ErrorKind::CoordinatorLoadInProgress => {
                ErrorCode::CoordinatorNotAvailable
            }
            ErrorKind::IllegalGeneration => ErrorCode::IllegalGeneration,
            ErrorKind::InconsistentGroupProtocol => ErrorCode::InconsistentGroupProtocol,
            ErrorKind::InvalidGroupId | ErrorKind::GroupIdNotFound => ErrorCode::UnknownGroup,
            ErrorKind::UnknownMemberId | ErrorKind::MemberIdRequired => ErrorCode::UnknownMember,
            ErrorKind::InvalidSessionTimeout => ErrorCode::InvalidSessionTimeout,
            ErrorKind::RebalanceInProgress => ErrorCode::RebalanceInProgress,
            ErrorKind::NonEmptyGroup => ErrorCode::NonEmptyGroup,
            ErrorKind::FencedInstanceId => ErrorCode::FencedInstance,
            ErrorKind::NotController => ErrorCode::NotController,
            ErrorKind::StaleBrokerEpoch => ErrorCode::StaleBrokerEpoch,
            ErrorKind::DuplicateBrokerRegistration => ErrorCode::DuplicateBrokerRegistration,
            ErrorKind::InvalidReplicationFactor => ErrorCode::InvalidReplicationFactor,
            ErrorKind::InconsistentClusterId => ErrorCode::InconsistentClusterId,
            ErrorKind::InvalidReplicaAssignment => ErrorCode::InvalidReplicaAssignment,
            ErrorKind::NotLeaderOrFollower => ErrorCode::NotLeaderOrFollower,
            ErrorKind::NotCoordinator => ErrorCode::NotCoordinator,
            ErrorKind::FencedLeaderEpoch => ErrorCode::FencedLeaderEpoch,
            ErrorKind::InvalidUpdateVersion => ErrorCode::InvalidUpdateVersion,
            ErrorKind::IneligibleReplica => ErrorCode::IneligibleReplica,
            ErrorKind::UnknownLeaderEpoch => ErrorCode::UnknownLeaderEpoch,
            ErrorKind::NotEnoughReplicas => ErrorCode::NotEnoughReplicas,
            ErrorKind::NotEnoughReplicasAfterAppend => ErrorCode::NotEnoughReplicasAfterAppend,
            ErrorKind::RequestTimedOut => ErrorCode::RequestTimedOut,
            ErrorKind::NoReassignmentInProgress => ErrorCode::NoReassignmentInProgress,
            ErrorKind::GroupSubscribedToTopic => ErrorCode::GroupSubscribedToTopic,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Archive, Serialize, Deserialize)]
pub struct ErrorBody {
    pub code: ErrorCode,
    pub message: String,
}

/// What a response body says of its request: the error it answers with, if any (counted by
/// `/metrics`).
pub trait Outcome {
    fn error_code(&self) -> Option<ErrorCode> {
        None
    }
}

/// Bodies whose `error` field says how the request went.
macro_rules! outcome_in_error_field {
    ($($body:ty),* $(,)?) => {$(
        impl Outcome for $body {
            fn error_code(&self) -> Option<ErrorCode> {
                Some(self.error.code).filter(|code| *code != ErrorCode::None)
            }
        }
    )*};
}

outcome_in_error_field!(
    ProduceResponse,
    FetchResponse,
    ReplicaFetchResponse,
    ListOffsetsResponse,
    ControllerResponse,
    AdminResponse,
    ListGroupsResponse,
    DeleteRecordsResponse,
    ProducersResponse,
    DeleteOffsetsResponse,
    DescribeGroupResponse,
    JoinGroupResponse,
    SyncGroupResponse,
    FindCoordinatorResponse,
    FetchOffsetsResponse,
    ClusterStatusResponse,
    LogDirsResponse,
    BrokerConfigResponse,
);

/// A metadata answer names an error per topic: the first one stands for the request.
impl Outcome for MetadataResponse {
    fn error_code(&self) -> Option<ErrorCode> {
        self.topics.iter().map(|t| t.error.code).find(|code| *code != ErrorCode::None)
    }
}

impl Outcome for ErrorBody {
    fn error_code(&self) -> Option<ErrorCode> {
        Some(self.code).filter(|code| *code != ErrorCode::None)
    }
}

impl From<&BrokerError> for ErrorBody {
    fn from(error: &BrokerError) -> Self {
        ErrorBody::new(ErrorCode::from(error.kind), error.message.clone())
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Archive, Serialize, Deserialize)]
pub struct ProduceRequest {
    pub topic: String,
    pub partition: u32,
    pub acks: Acks,
    pub batch: BatchMeta,
}

#[derive(Clone, Debug, PartialEq, Eq, Archive, Serialize, Deserialize)]
pub struct ProduceResponse {
    pub error: ErrorBody,
    pub base_offset: u64,
    pub log_start: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Archive, Serialize, Deserialize)]
pub struct FetchRequest {
    pub topic: String,
    pub partition: u32,
    pub offset: u64,
    pub max_bytes: u32,
    pub max_wait_ms: u32,
}

/// The entries themselves follow in the frame's data section.
#[derive(Clone, Debug, PartialEq, Eq, Archive, Serialize, Deserialize)]
pub struct FetchResponse {
    pub error: ErrorBody,
    pub high_watermark: u64,
    pub log_start: u64,
}

/// A follower's fetch from the leader of its partitions (Kafka's replica fetch, KIP-320's
/// fields): one per follower shard and leader broker, many partitions in each.
#[derive(Clone, Debug, PartialEq, Eq, Archive, Serialize, Deserialize)]
pub struct ReplicaFetchRequest {
    /// The follower's node id.
    pub follower: i32,
    pub max_wait_ms: u32,
    /// For the whole response; each partition is bounded by `partition_max_bytes` too (one
    /// whole entry at least).
    pub max_bytes: u32,
    pub partition_max_bytes: u32,
    pub partitions: Vec<ReplicaFetchPartition>,
}

#[derive(Clone, Debug, PartialEq, Eq, Archive, Serialize, Deserialize)]
pub struct ReplicaFetchPartition {
    pub topic: String,
    pub partition: u32,
    /// The leader epoch the follower follows in: checked as a Kafka client's is.
    pub leader_epoch: i32,
    /// The follower's log end: where it continues.
    pub fetch_offset: u64,
    /// What of its log the follower has synced: counted toward the high watermark.
    pub synced: u64,
    /// The epoch of the follower's last entry, -1 for none: the leader checks the logs agree.
    pub last_fetched_epoch: i32,
    /// The leader's high watermark as the follower last heard it: a fetch with nothing new
    /// waits until it moves.
    pub known_high_watermark: u64,
    /// The follower's log start: a DeleteRecords is answered once every in-sync replica's has
    /// reached it (Kafka's FetchRequest carries it for the same reason, KIP-107).
    pub log_start: u64,
}

/// The answers, one per partition in any order (a partition left out had nothing new); their
/// entries follow in the frame's data, in answer order, `bytes` each.
#[derive(Clone, Debug, PartialEq, Eq, Archive, Serialize, Deserialize)]
pub struct ReplicaFetchResponse {
    pub error: ErrorBody,
    pub partitions: Vec<ReplicaFetchAnswer>,
}

#[derive(Clone, Debug, PartialEq, Eq, Archive, Serialize, Deserialize)]
pub struct ReplicaFetchAnswer {
    pub topic: String,
    pub partition: u32,
    pub error: ErrorBody,
    pub high_watermark: u64,
    pub log_start: u64,
    pub log_end: u64,
    /// The logs part here (KIP-320's diverging epoch): the follower truncates and fetches
    /// again. `diverging_epoch` is -1 when they agree.
    pub diverging_epoch: i32,
    pub diverging_end_offset: u64,
    pub bytes: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Archive, Serialize, Deserialize)]
pub struct ListOffsetsRequest {
    pub topic: String,
    pub partition: u32,
    /// [`OFFSET_LATEST`], [`OFFSET_EARLIEST`], or a timestamp in ms.
    pub timestamp: i64,
}

#[derive(Clone, Debug, PartialEq, Eq, Archive, Serialize, Deserialize)]
pub struct ListOffsetsResponse {
    pub error: ErrorBody,
    /// -1 when no record has a timestamp at or after the one asked for.
    pub offset: i64,
}

#[derive(Clone, Debug, PartialEq, Eq, Archive, Serialize, Deserialize)]
pub struct MetadataRequest {
    /// `None` for every topic.
    pub topics: Option<Vec<String>>,
    /// Also report each partition's log start and high watermark (asks the owning shards).
    pub with_offsets: bool,
    /// Create listed topics that do not exist, as Kafka's `allow_auto_topic_creation` (only
    /// when the broker's `auto.create.topics.enable` is on).
    pub allow_auto_create: bool,
}

#[derive(Clone, Debug, PartialEq, Eq, Archive, Serialize, Deserialize)]
pub struct PartitionMetadata {
    pub partition: u32,
    /// The shard that owns the partition on the broker answering.
    pub shard: u32,
    pub log_start: u64,
    pub high_watermark: u64,
    /// The broker that leads the partition (`None` while none can), its leader epoch, and the
    /// brokers holding replicas, the preferred leader first.
    pub leader: Option<NodeId>,
    pub leader_epoch: i32,
    pub replicas: Vec<NodeId>,
    /// The replicas in sync with the leader (the leader alone until data is replicated).
    pub isr: Vec<NodeId>,
    /// A reassignment in progress: the replicas being added and those to be removed.
    pub adding: Vec<NodeId>,
    pub removing: Vec<NodeId>,
    /// Out of sync, yet eligible to lead (KIP-966).
    pub elr: Vec<NodeId>,
}

/// A live broker of the cluster, at its native address.
#[derive(Clone, Debug, PartialEq, Eq, Archive, Serialize, Deserialize)]
pub struct BrokerMetadata {
    pub node: NodeId,
    pub host: String,
    pub port: u16,
    pub rack: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Archive, Serialize, Deserialize)]
pub struct TopicMetadata {
    pub name: String,
    pub error: ErrorBody,
    pub partitions: Vec<PartitionMetadata>,
    /// Every topic-level setting, resolved against the broker's defaults.
    pub configs: Vec<(String, String)>,
}

#[derive(Clone, Debug, PartialEq, Eq, Archive, Serialize, Deserialize)]
pub struct MetadataResponse {
    pub shards: u32,
    /// The broker answering, and every live broker of the cluster.
    pub node: NodeId,
    pub brokers: Vec<BrokerMetadata>,
    pub topics: Vec<TopicMetadata>,
}

impl MetadataResponse {
    /// The native address (`host:port`) of `partition`'s leader, when it has one the answer
    /// lists.
    pub fn leader_address(&self, partition: &PartitionMetadata) -> Option<String> {
        let broker = self.brokers.iter().find(|b| Some(b.node) == partition.leader)?;
        Some(crate::config::host_port(&broker.host, broker.port))
    }
}

/// Raft messages from voter `from`; the frame's data is the archive of the `Vec<WireMessage>`
/// ([`encode`]), which may exceed what a meta body holds (an append that catches a voter up).
#[derive(Clone, Debug, PartialEq, Eq, Archive, Serialize, Deserialize)]
pub struct VoterMessagesRequest {
    pub from: NodeId,
    /// The sender's cluster, once it knows it: a voter of another cluster is refused.
    pub cluster_id: Option<ClusterId>,
}

/// The answer to a [`ControllerRequest`]: `answer` when `error` is none; with NOT_CONTROLLER,
/// `leader` names the active controller the voter knows, if it knows one.
#[derive(Clone, Debug, PartialEq, Eq, Archive, Serialize, Deserialize)]
pub struct ControllerResponse {
    pub error: ErrorBody,
    pub leader: Option<NodeId>,
    pub answer: Option<ControllerAnswer>,
}

/// The committed metadata entries from `from` on; the answer's data is the archive of the
/// [`MetadataEntries`] ([`encode`]).
#[derive(Clone, Debug, PartialEq, Eq, Archive, Serialize, Deserialize)]
pub struct MetadataFetchRequest {
    pub from: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Archive, Serialize, Deserialize)]
pub struct ClusterStatusRequest {}

#[derive(Clone, Debug, PartialEq, Eq, Archive, Serialize, Deserialize)]
pub struct ClusterStatusResponse {
    pub error: ErrorBody,
    pub status: Option<ClusterStatus>,
}

#[derive(Clone, Debug, PartialEq, Eq, Archive, Serialize, Deserialize)]
pub struct CreateTopicRequest {
    pub name: String,
    pub partitions: u32,
    /// `None`: the broker's `default.replication.factor`.
    pub replication_factor: Option<u16>,
    pub configs: Vec<(String, String)>,
}

#[derive(Clone, Debug, PartialEq, Eq, Archive, Serialize, Deserialize)]
pub struct DeleteTopicRequest {
    pub name: String,
}

/// Partitions to move (answered by an [`AdminResponse`]: all moves begun, or none).
#[derive(Clone, Debug, PartialEq, Eq, Archive, Serialize, Deserialize)]
pub struct ReassignRequest {
    pub moves: Vec<Reassignment>,
}

/// A topic's settings changed, each change in order (answered by an [`AdminResponse`]: all
/// taken, or none). `validate_only`: checked, not made.
#[derive(Clone, Debug, PartialEq, Eq, Archive, Serialize, Deserialize)]
pub struct AlterTopicConfigRequest {
    pub name: String,
    pub changes: Vec<ConfigChange>,
    pub validate_only: bool,
}

/// Dynamic broker settings changed, each change in order (Kafka's IncrementalAlterConfigs of a
/// broker resource): broker `node`'s own (only that broker takes them), or with `None` the
/// cluster-wide defaults. Without changes, only described. `validate_only`: checked, not made.
#[derive(Clone, Debug, PartialEq, Eq, Archive, Serialize, Deserialize)]
pub struct BrokerConfigRequest {
    pub node: Option<NodeId>,
    pub changes: Vec<ConfigChange>,
    pub validate_only: bool,
}

/// Every resource's dynamic broker settings, as the broker asked has them once the change is
/// made: `None` the cluster-wide defaults, then each broker's own, each sorted by name.
#[derive(Clone, Debug, PartialEq, Eq, Archive, Serialize, Deserialize)]
pub struct BrokerConfigResponse {
    pub error: ErrorBody,
    pub settings: Vec<ResourceSettings>,
}

#[derive(Clone, Debug, PartialEq, Eq, Archive, Serialize, Deserialize)]
pub struct AdminResponse {
    pub error: ErrorBody,
}

#[derive(Clone, Debug, PartialEq, Eq, Archive, Serialize, Deserialize)]
pub struct ListGroupsRequest {}

#[derive(Clone, Debug, PartialEq, Eq, Archive, Serialize, Deserialize)]
pub struct GroupSummary {
    pub group: String,
    /// Empty, PreparingRebalance, CompletingRebalance or Stable.
    pub state: String,
    pub protocol_type: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Archive, Serialize, Deserialize)]
pub struct ListGroupsResponse {
    pub error: ErrorBody,
    pub groups: Vec<GroupSummary>,
}

#[derive(Clone, Debug, PartialEq, Eq, Archive, Serialize, Deserialize)]
pub struct DescribeGroupRequest {
    pub group: String,
}

/// The records of a partition below `offset` (`None`: its high watermark) deleted.
#[derive(Clone, Debug, PartialEq, Eq, Archive, Serialize, Deserialize)]
pub struct DeleteRecordsRequest {
    pub topic: String,
    pub partition: u32,
    pub offset: Option<u64>,
}

/// The partition's log start after the deletion.
#[derive(Clone, Debug, PartialEq, Eq, Archive, Serialize, Deserialize)]
pub struct DeleteRecordsResponse {
    pub error: ErrorBody,
    pub log_start: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Archive, Serialize, Deserialize)]
pub struct LogDirsRequest {}

/// The broker's data directory, the bytes of its file system and free on it, and each replica
/// it holds with the bytes its segments take.
#[derive(Clone, Debug, PartialEq, Eq, Archive, Serialize, Deserialize)]
pub struct LogDirsResponse {
    pub error: ErrorBody,
    pub log_dir: String,
    pub total_bytes: u64,
    pub usable_bytes: u64,
    /// (topic, partition, bytes)
    pub replicas: Vec<(String, u32, u64)>,
}

#[derive(Clone, Debug, PartialEq, Eq, Archive, Serialize, Deserialize)]
pub struct ProducersRequest {
    pub topic: String,
    pub partition: u32,
}

/// A partition's idempotent producers, as its leader remembers them.
#[derive(Clone, Debug, PartialEq, Eq, Archive, Serialize, Deserialize)]
pub struct ProducersResponse {
    pub error: ErrorBody,
    pub producers: Vec<ProducerDescription>,
}

#[derive(Clone, Debug, PartialEq, Eq, Archive, Serialize, Deserialize)]
pub struct ProducerDescription {
    pub producer_id: i64,
    pub epoch: i16,
    /// The sequence of its last record in the partition (-1: none remembered).
    pub last_sequence: i32,
    /// Its newest batch's largest timestamp.
    pub last_timestamp: i64,
}

/// Removes a group's committed offsets of partitions no member consumes (Kafka's OffsetDelete).
#[derive(Clone, Debug, PartialEq, Eq, Archive, Serialize, Deserialize)]
pub struct DeleteOffsetsRequest {
    pub group: String,
    /// (topic, partition)
    pub partitions: Vec<(String, i32)>,
}

/// Each partition's outcome (none: removed, or it had no offset); `error` for the whole group.
#[derive(Clone, Debug, PartialEq, Eq, Archive, Serialize, Deserialize)]
pub struct DeleteOffsetsResponse {
    pub error: ErrorBody,
    pub partitions: Vec<(String, i32, ErrorBody)>,
}

/// Deletes a group without members and its committed offsets.
#[derive(Clone, Debug, PartialEq, Eq, Archive, Serialize, Deserialize)]
pub struct DeleteGroupRequest {
    pub group: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Archive, Serialize, Deserialize)]
pub struct GroupMember {
    pub member_id: String,
    pub instance_id: Option<String>,
    pub client_id: String,
    pub client_host: String,
    /// (topic, partitions), decoded from the consumer protocol's assignment; empty when the
    /// group uses another protocol.
    pub assignment: Vec<(String, Vec<i32>)>,
}

#[derive(Clone, Debug, PartialEq, Eq, Archive, Serialize, Deserialize)]
pub struct GroupOffset {
    pub topic: String,
    pub partition: i32,
    pub committed: i64,
    /// -1 when the partition is gone.
    pub high_watermark: i64,
}

#[derive(Clone, Debug, PartialEq, Eq, Archive, Serialize, Deserialize)]
pub struct DescribeGroupResponse {
    pub error: ErrorBody,
    pub state: String,
    pub protocol_type: String,
    pub protocol: String,
    pub members: Vec<GroupMember>,
    pub offsets: Vec<GroupOffset>,
}

/// Joins a group (the broker hands out the member id on a first join). Protocols carry the
/// member's subscription, opaque to the broker; Spate's client uses Kafka's consumer protocol
/// encoding, so `spate group describe` shows native members' assignments too.
#[derive(Clone, Debug, PartialEq, Eq, Archive, Serialize, Deserialize)]
pub struct JoinGroupRequest {
    pub group: String,
    /// Empty on a first join.
    pub member_id: String,
    pub client_id: String,
    pub session_timeout_ms: u32,
    pub rebalance_timeout_ms: u32,
    pub protocol_type: String,
    pub protocols: Vec<(String, Vec<u8>)>,
}

#[derive(Clone, Debug, PartialEq, Eq, Archive, Serialize, Deserialize)]
pub struct JoinGroupResponse {
    pub error: ErrorBody,
    pub generation: i32,
    pub protocol: String,
    pub leader: String,
    pub member_id: String,
    /// Every member's metadata for the chosen protocol; only the leader gets them.
    pub members: Vec<(String, Vec<u8>)>,
}

#[derive(Clone, Debug, PartialEq, Eq, Archive, Serialize, Deserialize)]
pub struct SyncGroupRequest {
    pub group: String,
    pub member_id: String,
    pub generation: i32,
    /// The leader's assignment for every member; empty from followers.
    pub assignments: Vec<(String, Vec<u8>)>,
}

#[derive(Clone, Debug, PartialEq, Eq, Archive, Serialize, Deserialize)]
pub struct SyncGroupResponse {
    pub error: ErrorBody,
    pub assignment: Vec<u8>,
}

#[derive(Clone, Debug, PartialEq, Eq, Archive, Serialize, Deserialize)]
pub struct FindCoordinatorRequest {
    pub group: String,
}

/// The broker coordinating the group, at its native address, when `error` is none.
#[derive(Clone, Debug, PartialEq, Eq, Archive, Serialize, Deserialize)]
pub struct FindCoordinatorResponse {
    pub error: ErrorBody,
    pub node: NodeId,
    pub host: String,
    pub port: u16,
}

#[derive(Clone, Debug, PartialEq, Eq, Archive, Serialize, Deserialize)]
pub struct HeartbeatRequest {
    pub group: String,
    pub member_id: String,
    pub generation: i32,
}

#[derive(Clone, Debug, PartialEq, Eq, Archive, Serialize, Deserialize)]
pub struct LeaveGroupRequest {
    pub group: String,
    pub member_id: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Archive, Serialize, Deserialize)]
pub struct CommitOffsetsRequest {
    pub group: String,
    /// Empty, with generation -1, to commit outside membership.
    pub member_id: String,
    pub generation: i32,
    /// (topic, partition, offset of the next record to read).
    pub offsets: Vec<(String, u32, u64)>,
}

#[derive(Clone, Debug, PartialEq, Eq, Archive, Serialize, Deserialize)]
pub struct FetchOffsetsRequest {
    pub group: String,
    pub partitions: Vec<(String, u32)>,
}

#[derive(Clone, Debug, PartialEq, Eq, Archive, Serialize, Deserialize)]
pub struct FetchOffsetsResponse {
    pub error: ErrorBody,
    /// (topic, partition, committed offset, or -1 for nothing committed).
    pub offsets: Vec<(String, u32, i64)>,
}

impl ErrorBody {
    pub fn none() -> Self {
        Self { code: ErrorCode::None, message: String::new() }
    }

    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self { code, message: message.into() }
    }

    pub fn is_ok(&self) -> bool {
        self.code == ErrorCode::None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_round_trip_and_garbage_is_an_error() {
        let request = FetchRequest {
            topic: "orders".into(),
            partition: 3,
            offset: 12,
            max_bytes: 1 << 20,
            max_wait_ms: 500,
        };
        let bytes = encode(&request);
        assert_eq!(decode::<FetchRequest>(&bytes).unwrap(), request);
        assert!(decode::<FetchRequest>(&bytes[..bytes.len() / 2]).is_err());
        // Random bytes often decode as some valid body (0xFF pads inline strings, so 0xFF
        // everywhere is an empty topic), so break a real one: turn the inline topic into an
        // out-of-line string whose bytes lie far outside the buffer. It stays 16-aligned, so
        // alignment, which depends on where a buffer lands, does not decide the outcome.
        let mut broken = bytes.clone();
        let at = broken.windows(6).position(|w| w == b"orders").expect("the topic is inline");
        broken[at..at + 8].copy_from_slice(&[0x8F, 0xFF, 0xFF, 0x7F, 0xFF, 0xFF, 0xFF, 0x7F]);
        assert!(decode::<FetchRequest>(&broken).is_err());
    }
}
