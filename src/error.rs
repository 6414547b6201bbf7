//! The broker's error vocabulary: why an operation failed, in the broker's own terms.
//!
//! Every layer below the protocols speaks [`ErrorKind`] (through [`BrokerError`], which adds a
//! message for the client). Each protocol maps a kind to its wire code in one place:
//! `native::messages::ErrorCode::from` and `kafka::codec::error_code` (which uses the Kafka codec
//! crate's numbering). A new kind therefore changes neither protocol until it is mapped, and the
//! native protocol's codes are free to stay coarser than the broker's kinds.

/// Why an operation was refused or failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorKind {
    UnknownTopic,
    UnknownPartition,
    OffsetOutOfRange,
    MessageTooLarge,
    /// Bytes that fail their checksum or cannot be parsed.
    CorruptMessage,
    InvalidRequest,
    TopicAlreadyExists,
    StorageError,
    InvalidConfig,
    UnsupportedApi,
    /// The partition is closing (a stopping broker): clients refresh metadata and retry.
    NotAvailable,
    InvalidTopicName,
    InvalidPartitions,
    /// A batch a broker must not store (Kafka's INVALID_RECORD).
    InvalidRecord,
    /// A record's timestamp too far from the broker's clock (Kafka's INVALID_TIMESTAMP).
    InvalidTimestamp,
    /// A fetch too old for the codec a batch is stored in (zstd before Fetch v10).
    UnsupportedCompressionType,
    /// An idempotent producer skipped or reordered a sequence number.
    OutOfOrderSequence,
    /// An idempotent producer's epoch was fenced by a newer one.
    InvalidProducerEpoch,
    /// A record format this broker does not store (Kafka message sets v0 and v1).
    UnsupportedForMessageFormat,
    /// The request asks for more than the broker's limits allow (partitions, disk).
    PolicyViolation,
    /// The group's coordinator cannot serve it now (its offsets log is unavailable).
    CoordinatorNotAvailable,
    /// The group's coordinator is replaying its offsets partition, newly led here.
    CoordinatorLoadInProgress,
    IllegalGeneration,
    InconsistentGroupProtocol,
    InvalidGroupId,
    UnknownMemberId,
    InvalidSessionTimeout,
    RebalanceInProgress,
    NonEmptyGroup,
    GroupIdNotFound,
    /// JoinGroup v4+: a first join gets an id and must rejoin with it (KIP-394).
    MemberIdRequired,
    /// Another member holds this static `group.instance.id` (KIP-345).
    FencedInstanceId,
    /// A controller request reached a broker that is not the active controller.
    NotController,
    /// A broker's heartbeat or shutdown under a registration that is over: it must register
    /// again.
    StaleBrokerEpoch,
    /// Another live broker process holds the node id.
    DuplicateBrokerRegistration,
    /// More replicas than live brokers, or none.
    InvalidReplicationFactor,
    /// A manual replica assignment that cannot be honoured.
    InvalidReplicaAssignment,
    /// A partition this broker does not lead (or no longer: its leader moved).
    NotLeaderOrFollower,
    /// A group request at a broker that does not lead the group's offsets partition.
    NotCoordinator,
    /// A broker or voter of another cluster.
    InconsistentClusterId,
    /// A request made in a leader epoch older than the partition's (a deposed leader's, or a
    /// client's stale metadata).
    FencedLeaderEpoch,
    /// A request made in a leader epoch newer than this broker knows: it has not caught up
    /// with the metadata yet.
    UnknownLeaderEpoch,
    /// A change to a partition's state made against an older partition epoch (Kafka's
    /// INVALID_UPDATE_VERSION): another change came first.
    InvalidUpdateVersion,
    /// An in-sync set naming a replica that may not join it: fenced, shutting down, or not a
    /// replica of the partition (KIP-841).
    IneligibleReplica,
    /// An `acks=all` produce to a partition with fewer in-sync replicas than its
    /// `min.insync.replicas`: refused before it is appended.
    NotEnoughReplicas,
    /// An `acks=all` produce appended while the in-sync set was large enough, which then
    /// shrank below `min.insync.replicas` before the produce was acknowledged.
    NotEnoughReplicasAfterAppend,
    /// An `acks=all` produce not acknowledged in time: its followers did not confirm it.
    RequestTimedOut,
    /// A cancellation of a partition reassignment where none is in progress.
    NoReassignmentInProgress,
    /// Committed offsets of a topic a member of the group consumes: they cannot be deleted.
    GroupSubscribedToTopic,
}

impl std::fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(self, f)
    }
}

/// An operation's failure: its kind and a message for the client and the log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BrokerError {
    pub kind: ErrorKind,
    pub message: String,
}

impl BrokerError {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Self { kind, message: message.into() }
    }
}

impl std::fmt::Display for BrokerError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.kind, self.message)
    }
}

impl std::error::Error for BrokerError {}
