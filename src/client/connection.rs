//! One pipelined native connection and the typed requests over it.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::io;
use std::rc::Rc;

use bytes::Bytes;
use futures_channel::oneshot;
use futures_lite::io::{AsyncReadExt, AsyncWriteExt};
use glommio::channels::local_channel::{self, LocalSender};
use glommio::net::TcpStream;
use rkyv::util::AlignedVec;
use zerocopy::IntoBytes;

use crate::native::frame::{Api, FrameHeader, FRAME_HEADER_BYTES};
use crate::native::messages::{
    decode, encode, Acks, AdminResponse, AlterTopicConfigRequest, BrokerConfigRequest,
    BrokerConfigResponse, ClusterId, ClusterStatus, ClusterStatusRequest, ClusterStatusResponse,
    CommitOffsetsRequest, ConfigChange, ControllerRequest, ControllerResponse, CreateTopicRequest,
    DeleteGroupRequest, DeleteOffsetsRequest, DeleteOffsetsResponse, DeleteRecordsRequest,
    DeleteRecordsResponse, DeleteTopicRequest, DescribeGroupRequest, DescribeGroupResponse,
    ErrorBody, ErrorCode, FetchOffsetsRequest, FetchOffsetsResponse, FetchRequest, FetchResponse,
    FindCoordinatorRequest, FindCoordinatorResponse, GroupSummary, HeartbeatRequest,
    JoinGroupRequest, JoinGroupResponse, LeaveGroupRequest, ListGroupsRequest, ListGroupsResponse,
    ListOffsetsRequest, ListOffsetsResponse, LogDirsRequest, LogDirsResponse, MetadataEntries,
    MetadataFetchRequest, MetadataRequest, MetadataResponse, ProduceRequest, ProduceResponse,
    ProducerDescription, ProducersRequest, ProducersResponse, ReassignRequest, Reassignment,
    ResourceSettings, SyncGroupRequest, SyncGroupResponse, TopicMetadata, VoterMessagesRequest,
    WireMessage,
};
use crate::record::batch::{BatchBuilder, NativeBatchView, RecordView};
use crate::record::entry::{entries, Check, StoredEntry};
use crate::record::{BatchMeta, EntryHeader, PayloadFormat};
use crate::transport::SocketReader;
use crate::types::NodeId;

/// Requests a client queues for its writer before `send` waits.
const OUTGOING_QUEUE_MAX: usize = 256;
/// The largest response body the client accepts: a fetch returns up to its maximum after a
/// first entry that may itself be as large as an entry can be, plus its meta.
const RESPONSE_BYTES_MAX: u32 = (crate::shard::FETCH_BYTES_MAX
    + crate::record::entry::ENTRY_PAYLOAD_BYTES_MAX as usize
    + crate::native::frame::META_BYTES_MAX as usize) as u32;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientError {
    Io(String),
    /// The broker sent something this client cannot make sense of.
    Protocol(String),
    /// The broker refused the request.
    Broker {
        code: ErrorCode,
        message: String,
    },
    /// The connection is gone; requests in flight may or may not have been applied.
    Disconnected(String),
}

impl ClientError {
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            Self::Broker { code, .. } => Some(*code),
            _ => None,
        }
    }

    pub(crate) fn from_body(body: &ErrorBody) -> Result<(), Self> {
        match body.code {
            ErrorCode::None => Ok(()),
            code => Err(Self::Broker { code, message: body.message.clone() }),
        }
    }
}

impl std::fmt::Display for ClientError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Io(e) => write!(f, "I/O error: {e}"),
            Self::Protocol(e) => write!(f, "protocol error: {e}"),
            Self::Broker { code, message } => write!(f, "broker error {code}: {message}"),
            Self::Disconnected(why) => write!(f, "disconnected: {why}"),
        }
    }
}

impl std::error::Error for ClientError {}

impl From<io::Error> for ClientError {
    fn from(e: io::Error) -> Self {
        Self::Io(e.to_string())
    }
}

struct ResponseFrame {
    header: FrameHeader,
    body: AlignedVec<16>,
}

impl ResponseFrame {
    fn meta(&self) -> &[u8] {
        &self.body[..self.header.meta_len.get() as usize]
    }
}

struct OutgoingFrame {
    head: Vec<u8>,
    data: Option<Bytes>,
}

type Waiter = oneshot::Sender<Result<ResponseFrame, ClientError>>;

struct Inner {
    next_request_id: Cell<u64>,
    waiting: RefCell<HashMap<u64, Waiter>>,
    outgoing: LocalSender<OutgoingFrame>,
    closed: RefCell<Option<String>>,
}

impl Inner {
    fn close(&self, why: String) {
        self.closed.borrow_mut().get_or_insert(why.clone());
        for (_, waiter) in self.waiting.borrow_mut().drain() {
            let _ = waiter.send(Err(ClientError::Disconnected(why.clone())));
        }
    }
}

/// A native protocol connection. Cheap to clone; clones share the connection.
#[derive(Clone)]
pub struct Client {
    inner: Rc<Inner>,
}

/// A fetch's result: the entries as they were stored, read in place.
pub struct Fetched {
    pub high_watermark: u64,
    pub log_start: u64,
    /// Whole entries, 16-aligned.
    pub data: Bytes,
}

/// One stored entry of a fetch, checked against its checksum.
pub struct FetchedBatch<'a> {
    pub header: EntryHeader,
    view: NativeBatchView<'a>,
}

impl<'a> FetchedBatch<'a> {
    pub fn records(&self) -> impl Iterator<Item = RecordView<'a>> + '_ {
        self.view.records()
    }
}

impl Fetched {
    /// The batches in order; an entry that fails its checksum or validation is an error.
    pub fn batches(&self) -> Result<Vec<FetchedBatch<'_>>, ClientError> {
        let mut batches = Vec::new();
        for entry in entries(&self.data, Check::Checksum) {
            let StoredEntry { header, payload, .. } =
                entry.map_err(|e| ClientError::Protocol(format!("fetched entry: {e}")))?;
            if header.format() != Some(PayloadFormat::Native) {
                let why =
                    format!("entry at offset {} is not in the native format", header.base_offset());
                return Err(ClientError::Protocol(why));
            }
            let view = NativeBatchView::new(&header, payload)
                .map_err(|e| ClientError::Protocol(format!("fetched batch: {e}")))?;
            batches.push(FetchedBatch { header, view });
        }
        Ok(batches)
    }
}

/// A topic as `describe` shows it.
pub type TopicDescription = TopicMetadata;

impl Client {
    pub async fn connect(address: &str) -> Result<Self, ClientError> {
        let stream = TcpStream::connect(address)
            .await
            .map_err(|e| ClientError::Io(format!("connecting to {address}: {e}")))?;
        let _ = stream.set_nodelay(true);
        let (mut reader, writer) = SocketReader::split(stream);
        let (outgoing, queue) = local_channel::new_bounded::<OutgoingFrame>(OUTGOING_QUEUE_MAX);
        let inner = Rc::new(Inner {
            next_request_id: Cell::new(1),
            waiting: RefCell::new(HashMap::new()),
            outgoing,
            closed: RefCell::new(None),
        });
        let writer_inner = Rc::downgrade(&inner);
        glommio::spawn_local(async move {
            let mut writer = writer;
            while let Some(frame) = queue.recv().await {
                let mut written = writer.write_all(&frame.head).await;
                if let (Ok(()), Some(data)) = (&written, &frame.data) {
                    written = writer.write_all(data).await;
                }
                if let Err(e) = written.and(writer.flush().await) {
                    if let Some(inner) = writer_inner.upgrade() {
                        inner.close(format!("write failed: {e}"));
                    }
                    return;
                }
            }
            let _ = writer.close().await;
        })
        .detach();
        let reader_inner = Rc::downgrade(&inner);
        glommio::spawn_local(async move {
            let why = loop {
                let frame = match read_response(&mut reader).await {
                    Ok(frame) => frame,
                    Err(e) => break e,
                };
                let Some(inner) = reader_inner.upgrade() else {
                    return;
                };
                let waiter = inner.waiting.borrow_mut().remove(&frame.header.request_id.get());
                if let Some(waiter) = waiter {
                    let _ = waiter.send(Ok(frame));
                }
            };
            if let Some(inner) = reader_inner.upgrade() {
                inner.close(why);
            }
        })
        .detach();
        Ok(Self { inner })
    }

    /// Sends a request; waits for its response unless `expect_response` is false.
    async fn request(
        &self,
        api: Api,
        meta: &[u8],
        data: Option<Bytes>,
        expect_response: bool,
    ) -> Result<Option<ResponseFrame>, ClientError> {
        if let Some(why) = self.inner.closed.borrow().clone() {
            return Err(ClientError::Disconnected(why));
        }
        let request_id = self.inner.next_request_id.get();
        self.inner.next_request_id.set(request_id + 1);
        let head = request_head(api, request_id, meta, data.as_deref());
        let receiver = expect_response.then(|| {
            let (waiter, receiver) = oneshot::channel();
            self.inner.waiting.borrow_mut().insert(request_id, waiter);
            receiver
        });
        if self.inner.outgoing.send(OutgoingFrame { head, data }).await.is_err() {
            return Err(ClientError::Disconnected("writer stopped".into()));
        }
        let Some(receiver) = receiver else {
            return Ok(None);
        };
        let frame =
            receiver.await.map_err(|_| ClientError::Disconnected("connection closed".into()))??;
        if frame.header.is_error() {
            let body: ErrorBody = decode(frame.meta()).map_err(ClientError::Protocol)?;
            ClientError::from_body(&body)?;
            return Err(ClientError::Protocol("error frame without an error code".into()));
        }
        Ok(Some(frame))
    }

    async fn call<T>(&self, api: Api, meta: &[u8]) -> Result<(T, ResponseFrame), ClientError>
    where
        T: rkyv::Archive,
        T::Archived: for<'a> rkyv::bytecheck::CheckBytes<
                rkyv::api::high::HighValidator<'a, rkyv::rancor::Error>,
            > + rkyv::Deserialize<T, rkyv::api::high::HighDeserializer<rkyv::rancor::Error>>,
    {
        let frame = self
            .request(api, meta, None, true)
            .await?
            .ok_or_else(|| ClientError::Protocol("no response".into()))?;
        let body = decode(frame.meta()).map_err(ClientError::Protocol)?;
        Ok((body, frame))
    }

    /// Sends one archived batch. Returns its base offset, or `None` with acks=0.
    pub async fn produce_encoded(
        &self,
        topic: &str,
        partition: u32,
        acks: Acks,
        batch: BatchMeta,
        payload: Bytes,
    ) -> Result<Option<u64>, ClientError> {
        let request = ProduceRequest { topic: topic.to_string(), partition, acks, batch };
        let expect_response = acks != Acks::None;
        let Some(frame) =
            self.request(Api::Produce, &encode(&request), Some(payload), expect_response).await?
        else {
            return Ok(None);
        };
        let response: ProduceResponse = decode(frame.meta()).map_err(ClientError::Protocol)?;
        ClientError::from_body(&response.error)?;
        Ok(Some(response.base_offset))
    }

    /// Archives and sends the records as one batch.
    pub async fn produce(
        &self,
        topic: &str,
        partition: u32,
        acks: Acks,
        batch: BatchBuilder,
    ) -> Result<Option<u64>, ClientError> {
        let (meta, payload) = batch.build();
        self.produce_encoded(topic, partition, acks, meta, Bytes::from_owner(payload)).await
    }

    /// Reads from `offset`, waiting up to `max_wait_ms` at the end of the log.
    pub async fn fetch(
        &self,
        topic: &str,
        partition: u32,
        offset: u64,
        max_bytes: u32,
        max_wait_ms: u32,
    ) -> Result<Fetched, ClientError> {
        let request =
            FetchRequest { topic: topic.to_string(), partition, offset, max_bytes, max_wait_ms };
        let (response, frame): (FetchResponse, _) =
            self.call(Api::Fetch, &encode(&request)).await?;
        ClientError::from_body(&response.error)?;
        let data_start = frame.header.padded_meta_len();
        let data = Bytes::from_owner(frame.body).slice(data_start..);
        Ok(Fetched { high_watermark: response.high_watermark, log_start: response.log_start, data })
    }

    /// Kafka's ListOffsets: `OFFSET_EARLIEST`, `OFFSET_LATEST`, or the first offset at or after
    /// a timestamp (-1 when there is none).
    pub async fn list_offset(
        &self,
        topic: &str,
        partition: u32,
        timestamp: i64,
    ) -> Result<i64, ClientError> {
        let request = ListOffsetsRequest { topic: topic.to_string(), partition, timestamp };
        let (response, _): (ListOffsetsResponse, _) =
            self.call(Api::ListOffsets, &encode(&request)).await?;
        ClientError::from_body(&response.error)?;
        Ok(response.offset)
    }

    pub async fn metadata(
        &self,
        topics: Option<Vec<String>>,
        with_offsets: bool,
    ) -> Result<MetadataResponse, ClientError> {
        let request = MetadataRequest { topics, with_offsets, allow_auto_create: false };
        let (response, _) = self.call(Api::Metadata, &encode(&request)).await?;
        Ok(response)
    }

    /// The topic's partition count, letting the broker create the topic (with its
    /// `num.partitions`) if it is missing and auto-creation is on: what a producer needs before
    /// it can place a keyed record.
    pub async fn partition_count(&self, topic: &str) -> Result<u32, ClientError> {
        let request = MetadataRequest {
            topics: Some(vec![topic.to_string()]),
            with_offsets: false,
            allow_auto_create: true,
        };
        let (mut response, _): (MetadataResponse, _) =
            self.call(Api::Metadata, &encode(&request)).await?;
        let topic =
            response.topics.pop().ok_or_else(|| ClientError::Protocol("empty metadata".into()))?;
        ClientError::from_body(&topic.error)?;
        Ok(topic.partitions.len() as u32)
    }

    /// The topic's description, or the broker's error for it.
    pub async fn describe_topic(&self, topic: &str) -> Result<TopicDescription, ClientError> {
        let mut response = self.metadata(Some(vec![topic.to_string()]), true).await?;
        let topic =
            response.topics.pop().ok_or_else(|| ClientError::Protocol("empty metadata".into()))?;
        ClientError::from_body(&topic.error)?;
        Ok(topic)
    }

    pub async fn create_topic(
        &self,
        name: &str,
        partitions: u32,
        configs: Vec<(String, String)>,
    ) -> Result<(), ClientError> {
        self.create_replicated_topic(name, partitions, None, configs).await
    }

    /// Creates a topic with `replication_factor` replicas of each partition (`None`: the
    /// broker's default).
    pub async fn create_replicated_topic(
        &self,
        name: &str,
        partitions: u32,
        replication_factor: Option<u16>,
        configs: Vec<(String, String)>,
    ) -> Result<(), ClientError> {
        let name = name.to_string();
        let request = CreateTopicRequest { name, partitions, replication_factor, configs };
        let (response, _): (AdminResponse, _) =
            self.call(Api::CreateTopic, &encode(&request)).await?;
        ClientError::from_body(&response.error)
    }

    pub async fn join_group(
        &self,
        request: &JoinGroupRequest,
    ) -> Result<JoinGroupResponse, ClientError> {
        let (response, _): (JoinGroupResponse, _) =
            self.call(Api::JoinGroup, &encode(request)).await?;
        ClientError::from_body(&response.error)?;
        Ok(response)
    }

    /// Hands in the leader's assignments (or none, from a follower); returns this member's.
    pub async fn sync_group(&self, request: &SyncGroupRequest) -> Result<Vec<u8>, ClientError> {
        let (response, _): (SyncGroupResponse, _) =
            self.call(Api::SyncGroup, &encode(request)).await?;
        ClientError::from_body(&response.error)?;
        Ok(response.assignment)
    }

    pub async fn heartbeat(
        &self,
        group: &str,
        member_id: &str,
        generation: i32,
    ) -> Result<(), ClientError> {
        let request = HeartbeatRequest {
            group: group.to_string(),
            member_id: member_id.to_string(),
            generation,
        };
        let (response, _): (AdminResponse, _) =
            self.call(Api::Heartbeat, &encode(&request)).await?;
        ClientError::from_body(&response.error)
    }

    /// The native address (`host:port`) of the broker coordinating `group`.
    pub async fn find_coordinator(&self, group: &str) -> Result<String, ClientError> {
        let request = FindCoordinatorRequest { group: group.to_string() };
        let (response, _): (FindCoordinatorResponse, _) =
            self.call(Api::FindCoordinator, &encode(&request)).await?;
        ClientError::from_body(&response.error)?;
        Ok(crate::config::host_port(&response.host, response.port))
    }

    pub async fn leave_group(&self, group: &str, member_id: &str) -> Result<(), ClientError> {
        let request =
            LeaveGroupRequest { group: group.to_string(), member_id: member_id.to_string() };
        let (response, _): (AdminResponse, _) =
            self.call(Api::LeaveGroup, &encode(&request)).await?;
        ClientError::from_body(&response.error)
    }

    /// Commits (topic, partition, next offset to read) for a member of `generation` (or, with
    /// an empty member id and generation -1, outside membership).
    pub async fn commit_offsets(
        &self,
        group: &str,
        member_id: &str,
        generation: i32,
        offsets: Vec<(String, u32, u64)>,
    ) -> Result<(), ClientError> {
        let request = CommitOffsetsRequest {
            group: group.to_string(),
            member_id: member_id.to_string(),
            generation,
            offsets,
        };
        let (response, _): (AdminResponse, _) =
            self.call(Api::CommitOffsets, &encode(&request)).await?;
        ClientError::from_body(&response.error)
    }

    /// Committed offsets of `partitions`; -1 where nothing is committed.
    pub async fn fetch_offsets(
        &self,
        group: &str,
        partitions: Vec<(String, u32)>,
    ) -> Result<Vec<(String, u32, i64)>, ClientError> {
        let request = FetchOffsetsRequest { group: group.to_string(), partitions };
        let (response, _): (FetchOffsetsResponse, _) =
            self.call(Api::FetchOffsets, &encode(&request)).await?;
        ClientError::from_body(&response.error)?;
        Ok(response.offsets)
    }

    /// Deletes a group that has no members, with its committed offsets.
    pub async fn delete_group(&self, group: &str) -> Result<(), ClientError> {
        let request = DeleteGroupRequest { group: group.to_string() };
        let (response, _): (AdminResponse, _) =
            self.call(Api::DeleteGroup, &encode(&request)).await?;
        ClientError::from_body(&response.error)
    }

    /// Removes a group's committed offsets of `partitions` (topic, partition), which no member
    /// may consume: each partition's outcome, in the order asked.
    pub async fn delete_offsets(
        &self,
        group: &str,
        partitions: Vec<(String, i32)>,
    ) -> Result<Vec<(String, i32, Result<(), ClientError>)>, ClientError> {
        let request = DeleteOffsetsRequest { group: group.to_string(), partitions };
        let (response, _): (DeleteOffsetsResponse, _) =
            self.call(Api::DeleteOffsets, &encode(&request)).await?;
        ClientError::from_body(&response.error)?;
        let outcomes = response.partitions.into_iter();
        Ok(outcomes.map(|(t, p, error)| (t, p, ClientError::from_body(&error))).collect())
    }

    /// The broker's data directory: its replicas' sizes, and its file system's room.
    pub async fn log_dirs(&self) -> Result<LogDirsResponse, ClientError> {
        let (response, _): (LogDirsResponse, _) =
            self.call(Api::LogDirs, &encode(&LogDirsRequest {})).await?;
        ClientError::from_body(&response.error)?;
        Ok(response)
    }

    /// Deletes a partition's records below `offset` (`None`: its high watermark), at its leader:
    /// its log start moves there. Answers the new log start.
    pub async fn delete_records(
        &self,
        topic: &str,
        partition: u32,
        offset: Option<u64>,
    ) -> Result<u64, ClientError> {
        let request = DeleteRecordsRequest { topic: topic.to_string(), partition, offset };
        let (response, _): (DeleteRecordsResponse, _) =
            self.call(Api::DeleteRecords, &encode(&request)).await?;
        ClientError::from_body(&response.error)?;
        Ok(response.log_start)
    }

    /// The idempotent producers a partition remembers (ask its leader).
    pub async fn producers(
        &self,
        topic: &str,
        partition: u32,
    ) -> Result<Vec<ProducerDescription>, ClientError> {
        let request = ProducersRequest { topic: topic.to_string(), partition };
        let (response, _): (ProducersResponse, _) =
            self.call(Api::Producers, &encode(&request)).await?;
        ClientError::from_body(&response.error)?;
        Ok(response.producers)
    }

    /// Every consumer group the broker coordinates.
    pub async fn list_groups(&self) -> Result<Vec<GroupSummary>, ClientError> {
        let (response, _): (ListGroupsResponse, _) =
            self.call(Api::ListGroups, &encode(&ListGroupsRequest {})).await?;
        ClientError::from_body(&response.error)?;
        Ok(response.groups)
    }

    /// A group's state, members with their assignments, and committed offsets.
    pub async fn describe_group(&self, group: &str) -> Result<DescribeGroupResponse, ClientError> {
        let request = DescribeGroupRequest { group: group.to_string() };
        let (response, _): (DescribeGroupResponse, _) =
            self.call(Api::DescribeGroup, &encode(&request)).await?;
        ClientError::from_body(&response.error)?;
        Ok(response)
    }

    pub async fn delete_topic(&self, name: &str) -> Result<(), ClientError> {
        let request = DeleteTopicRequest { name: name.to_string() };
        let (response, _): (AdminResponse, _) =
            self.call(Api::DeleteTopic, &encode(&request)).await?;
        ClientError::from_body(&response.error)
    }

    /// Moves partitions to other replicas, or cancels moves (`target` `None`); answered once
    /// the moves are begun (KIP-455: each completes once its new replicas are in sync).
    pub async fn reassign(&self, moves: Vec<Reassignment>) -> Result<(), ClientError> {
        let request = ReassignRequest { moves };
        let (response, _): (AdminResponse, _) = self.call(Api::Reassign, &encode(&request)).await?;
        ClientError::from_body(&response.error)
    }

    /// Changes a topic's settings, each change in order (Kafka's IncrementalAlterConfigs);
    /// answered once the broker asked has them. `validate_only`: checked, not made.
    pub async fn alter_topic_config(
        &self,
        name: &str,
        changes: Vec<ConfigChange>,
        validate_only: bool,
    ) -> Result<(), ClientError> {
        let request = AlterTopicConfigRequest { name: name.to_string(), changes, validate_only };
        let meta = encode(&request);
        let (response, _): (AdminResponse, _) = self.call(Api::AlterTopicConfig, &meta).await?;
        ClientError::from_body(&response.error)
    }

    /// Changes dynamic broker settings, each change in order (Kafka's IncrementalAlterConfigs
    /// of a broker resource): broker `node`'s own (this connection must be to that broker), or
    /// with `None` the cluster-wide defaults; no changes only describes them. Answers every
    /// resource's settings once the broker asked has the change. `validate_only`: checked, not
    /// made.
    pub async fn broker_config(
        &self,
        node: Option<NodeId>,
        changes: Vec<ConfigChange>,
        validate_only: bool,
    ) -> Result<Vec<ResourceSettings>, ClientError> {
        let request = BrokerConfigRequest { node, changes, validate_only };
        let (response, _): (BrokerConfigResponse, _) =
            self.call(Api::BrokerConfig, &encode(&request)).await?;
        ClientError::from_body(&response.error)?;
        Ok(response.settings)
    }

    /// Raft messages from controller voter `from` to the voter at the other end.
    pub async fn voter_messages(
        &self,
        from: NodeId,
        cluster_id: Option<ClusterId>,
        messages: &Vec<WireMessage>,
    ) -> Result<(), ClientError> {
        let meta = encode(&VoterMessagesRequest { from, cluster_id });
        let data = Bytes::from_owner(encode(messages));
        let frame = self.request(Api::VoterMessages, &meta, Some(data), true).await?;
        let frame = frame.ok_or_else(|| ClientError::Protocol("no response".into()))?;
        let response: AdminResponse = decode(frame.meta()).map_err(ClientError::Protocol)?;
        ClientError::from_body(&response.error)
    }

    /// A broker's request to the controller; the response as the voter gave it (an error
    /// code with the leader it knows, or the answer).
    pub async fn controller_request(
        &self,
        request: &ControllerRequest,
    ) -> Result<ControllerResponse, ClientError> {
        let (response, _) = self.call(Api::ControllerRequest, &encode(request)).await?;
        Ok(response)
    }

    /// The committed metadata log entries from `from` on, from the controller voter at the
    /// other end.
    pub async fn metadata_entries(&self, from: u64) -> Result<MetadataEntries, ClientError> {
        let request = encode(&MetadataFetchRequest { from });
        let (response, frame): (AdminResponse, _) = self.call(Api::MetadataFetch, &request).await?;
        ClientError::from_body(&response.error)?;
        let data_start = frame.header.padded_meta_len();
        // The data starts 16-aligned in the body, as the archive needs.
        decode(&frame.body[data_start..]).map_err(ClientError::Protocol)
    }

    /// The cluster as the broker at the other end sees it.
    pub async fn cluster_status(&self) -> Result<ClusterStatus, ClientError> {
        let (response, _): (ClusterStatusResponse, _) =
            self.call(Api::ClusterStatus, &encode(&ClusterStatusRequest {})).await?;
        ClientError::from_body(&response.error)?;
        response.status.ok_or_else(|| ClientError::Protocol("a status without a body".into()))
    }
}

/// A request's frame header and meta, padded to where its data (if any) starts.
pub(crate) fn request_head(api: Api, request_id: u64, meta: &[u8], data: Option<&[u8]>) -> Vec<u8> {
    let (data_len, data_crc) = data.map_or((0, 0), |d| (d.len(), crc32fast::hash(d)));
    let header = FrameHeader::new(api as u8, 0, request_id, meta.len(), data_len, data_crc);
    let mut head = Vec::with_capacity(FRAME_HEADER_BYTES + header.padded_meta_len());
    head.extend_from_slice(header.as_bytes());
    head.extend_from_slice(meta);
    head.resize(FRAME_HEADER_BYTES + header.padded_meta_len(), 0);
    head
}

/// Reads a response's frame header, checked.
pub(crate) async fn read_response_header(reader: &mut SocketReader) -> Result<FrameHeader, String> {
    let mut raw = [0u8; FRAME_HEADER_BYTES];
    reader.read_exact(&mut raw).await.map_err(|e| format!("reading a response header: {e}"))?;
    let header = FrameHeader::parse(&raw, RESPONSE_BYTES_MAX).map_err(|e| e.to_string())?;
    if !header.is_response() {
        return Err("the broker sent a frame that is not a response".into());
    }
    Ok(header)
}

async fn read_response(reader: &mut SocketReader) -> Result<ResponseFrame, String> {
    let header = read_response_header(reader).await?;
    let mut body = AlignedVec::<16>::with_capacity(header.body_len());
    reader
        .read_body(&mut body, header.body_len(), None)
        .await
        .map_err(|e| format!("reading a response body: {e}"))?;
    Ok(ResponseFrame { header, body })
}
