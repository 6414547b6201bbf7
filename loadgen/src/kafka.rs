//! A pipelined Kafka connection for `--protocol kafka`: just what the loadgen sends (Produce,
//! Fetch, ListOffsets, CreateTopics), encoded with the same `kafka-protocol` crate the broker
//! decodes with, and responses matched to requests by order as Kafka guarantees.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::rc::Rc;

use bytes::{Bytes, BytesMut};
use futures_channel::oneshot;
use futures_lite::io::{AsyncReadExt, AsyncWriteExt};
use glommio::channels::local_channel::{self, LocalSender};
use glommio::net::TcpStream;
use kafka_protocol::messages::create_topics_request::CreatableTopic;
use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
use kafka_protocol::messages::list_offsets_request::{ListOffsetsPartition, ListOffsetsTopic};
use kafka_protocol::messages::metadata_request::MetadataRequestTopic;
use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
use kafka_protocol::messages::{
    ApiKey, BrokerId, CreateTopicsRequest, CreateTopicsResponse, FetchRequest, FetchResponse,
    ListOffsetsRequest, ListOffsetsResponse, MetadataRequest, MetadataResponse, ProduceRequest,
    ProduceResponse, RequestHeader, ResponseHeader, TopicName,
};
use kafka_protocol::protocol::{Decodable, Encodable, StrBytes};
use spate::native::messages::Acks;

use crate::link::ProduceError;

const PRODUCE_VERSION: i16 = 7;
/// The produce errors a leader change brings (the batch is sent again to the leader found
/// anew): LEADER_NOT_AVAILABLE, NOT_LEADER_OR_FOLLOWER, REQUEST_TIMED_OUT, NOT_ENOUGH_REPLICAS,
/// NOT_ENOUGH_REPLICAS_AFTER_APPEND, FENCED_LEADER_EPOCH, UNKNOWN_LEADER_EPOCH.
const FAILOVER_CODES: [i16; 7] = [5, 6, 7, 19, 20, 74, 75];
const FETCH_VERSION: i16 = 11;
const LIST_OFFSETS_VERSION: i16 = 2;
const CREATE_TOPICS_VERSION: i16 = 4;
const METADATA_VERSION: i16 = 9;
/// Kafka's TOPIC_ALREADY_EXISTS.
pub const TOPIC_ALREADY_EXISTS: i16 = 36;

type Waiter = oneshot::Sender<Result<Bytes, String>>;

struct Outgoing {
    head: Bytes,
    /// Record bytes written after `head` without being copied into it.
    records: Option<Bytes>,
}

struct Inner {
    next_id: Cell<i32>,
    waiting: RefCell<VecDeque<Waiter>>,
    outgoing: LocalSender<Outgoing>,
}

/// A Kafka connection. Cheap to clone; clones share the connection.
#[derive(Clone)]
pub struct KafkaLink {
    inner: Rc<Inner>,
}

impl KafkaLink {
    pub async fn connect(address: &str) -> Result<Self, String> {
        let stream = TcpStream::connect(address)
            .await
            .map_err(|e| format!("connecting to {address}: {e}"))?;
        let _ = stream.set_nodelay(true);
        let (mut reader, mut writer) = futures_lite::io::split(stream);
        let (outgoing, queue) = local_channel::new_bounded::<Outgoing>(256);
        let inner = Rc::new(Inner { next_id: Cell::new(1), waiting: RefCell::default(), outgoing });
        glommio::spawn_local(async move {
            while let Some(frame) = queue.recv().await {
                let mut written = writer.write_all(&frame.head).await;
                if let (Ok(()), Some(records)) = (&written, &frame.records) {
                    written = writer.write_all(records).await;
                }
                if written.and(writer.flush().await).is_err() {
                    return;
                }
            }
        })
        .detach();
        let reader_inner = Rc::downgrade(&inner);
        glommio::spawn_local(async move {
            loop {
                let mut size = [0u8; 4];
                let read = async {
                    reader.read_exact(&mut size).await?;
                    let mut frame = vec![0u8; i32::from_be_bytes(size).max(0) as usize];
                    reader.read_exact(&mut frame).await?;
                    Ok::<_, std::io::Error>(Bytes::from(frame))
                };
                let result = read.await;
                let Some(inner) = reader_inner.upgrade() else { return };
                let failed = result.is_err();
                let waiter = inner.waiting.borrow_mut().pop_front();
                if let Some(waiter) = waiter {
                    let _ = waiter.send(result.map_err(|e| format!("connection lost: {e}")));
                }
                if failed {
                    for waiter in inner.waiting.borrow_mut().drain(..) {
                        let _ = waiter.send(Err("connection lost".into()));
                    }
                    return;
                }
            }
        })
        .detach();
        Ok(Self { inner })
    }

    /// Sends a request; `expect_response` is false only for acks=0 produces.
    async fn send<T: Encodable>(
        &self,
        api: ApiKey,
        version: i16,
        body: &T,
        records: Option<Bytes>,
        expect_response: bool,
    ) -> Result<Option<Bytes>, String> {
        let id = self.inner.next_id.get();
        self.inner.next_id.set(id.wrapping_add(1));
        let mut header = RequestHeader::default();
        header.request_api_key = api as i16;
        header.request_api_version = version;
        header.correlation_id = id;
        header.client_id = Some(StrBytes::from_static_str("spate-loadgen"));
        let mut head = BytesMut::with_capacity(256);
        head.extend_from_slice(&[0; 4]);
        header.encode(&mut head, api.request_header_version(version)).map_err(|e| e.to_string())?;
        body.encode(&mut head, version).map_err(|e| e.to_string())?;
        let records_len = records.as_ref().map_or(0, Bytes::len);
        if let Some(records) = &records {
            // The body was encoded with empty records, its last field: patch their length in
            // and send the bytes after it.
            let at = head.len() - 4;
            head[at..].copy_from_slice(&(records.len() as i32).to_be_bytes());
        }
        let size = (head.len() - 4 + records_len) as i32;
        head[..4].copy_from_slice(&size.to_be_bytes());
        let (waiter, answer) = oneshot::channel();
        if expect_response {
            self.inner.waiting.borrow_mut().push_back(waiter);
        }
        let frame = Outgoing { head: head.freeze(), records };
        self.inner.outgoing.send(frame).await.map_err(|_| "connection closed".to_string())?;
        if !expect_response {
            return Ok(None);
        }
        let mut frame = answer.await.map_err(|_| "connection closed".to_string())??;
        ResponseHeader::decode(&mut frame, api.response_header_version(version))
            .map_err(|e| format!("{api:?} response header: {e}"))?;
        Ok(Some(frame))
    }

    /// Produces one batch to one partition; returns the error code.
    pub async fn produce(
        &self,
        topic: &str,
        partition: u32,
        acks: Acks,
        batch: Bytes,
    ) -> Result<(), ProduceError> {
        let mut data = PartitionProduceData::default();
        data.index = partition as i32;
        data.records = Some(Bytes::new());
        let mut topic_data = TopicProduceData::default();
        topic_data.name = TopicName(StrBytes::from_string(topic.to_string()));
        topic_data.partition_data = vec![data];
        let mut request = ProduceRequest::default();
        request.acks = match acks {
            Acks::None => 0,
            Acks::Leader => 1,
            Acks::All => -1,
        };
        request.timeout_ms = 30_000;
        request.topic_data = vec![topic_data];
        let expect = acks != Acks::None;
        let reply = self.send(ApiKey::Produce, PRODUCE_VERSION, &request, Some(batch), expect);
        // A connection lost may be a leader lost.
        let lost = |message| ProduceError { message, failover: true };
        let Some(mut frame) = reply.await.map_err(lost)? else { return Ok(()) };
        let response = ProduceResponse::decode(&mut frame, PRODUCE_VERSION).map_err(|e| {
            ProduceError { message: format!("produce response: {e}"), failover: false }
        })?;
        let code = response
            .responses
            .first()
            .and_then(|t| t.partition_responses.first())
            .map_or(-1, |p| p.error_code);
        if code != 0 {
            let message = format!("produce to {topic}-{partition}: Kafka error {code}");
            return Err(ProduceError { message, failover: FAILOVER_CODES.contains(&code) });
        }
        Ok(())
    }

    /// Fetches one partition from `offset`: the record batches and the high watermark.
    pub async fn fetch(
        &self,
        topic: &str,
        partition: u32,
        offset: u64,
        max_bytes: u32,
        wait_ms: u32,
    ) -> Result<(Bytes, u64), String> {
        let mut wanted = FetchPartition::default();
        wanted.partition = partition as i32;
        wanted.fetch_offset = offset as i64;
        wanted.partition_max_bytes = max_bytes as i32;
        let mut fetch_topic = FetchTopic::default();
        fetch_topic.topic = TopicName(StrBytes::from_string(topic.to_string()));
        fetch_topic.partitions = vec![wanted];
        let mut request = FetchRequest::default();
        request.replica_id = BrokerId(-1);
        request.max_wait_ms = wait_ms as i32;
        request.min_bytes = 1;
        request.max_bytes = max_bytes as i32;
        request.topics = vec![fetch_topic];
        let mut frame = self
            .send(ApiKey::Fetch, FETCH_VERSION, &request, None, true)
            .await?
            .ok_or("no fetch response")?;
        let response = FetchResponse::decode(&mut frame, FETCH_VERSION)
            .map_err(|e| format!("fetch response: {e}"))?;
        let data = response
            .responses
            .into_iter()
            .next()
            .and_then(|t| t.partitions.into_iter().next())
            .ok_or("a fetch response without the partition")?;
        if data.error_code != 0 {
            return Err(format!("fetch {topic}-{partition}: Kafka error {}", data.error_code));
        }
        Ok((data.records.unwrap_or_default(), data.high_watermark.max(0) as u64))
    }

    /// A partition's offset for a ListOffsets timestamp: -1 the log end, -2 the log start.
    pub async fn list_offset(
        &self,
        topic: &str,
        partition: u32,
        timestamp: i64,
    ) -> Result<u64, String> {
        let mut wanted = ListOffsetsPartition::default();
        wanted.partition_index = partition as i32;
        wanted.timestamp = timestamp;
        let mut list_topic = ListOffsetsTopic::default();
        list_topic.name = TopicName(StrBytes::from_string(topic.to_string()));
        list_topic.partitions = vec![wanted];
        let mut request = ListOffsetsRequest::default();
        request.replica_id = BrokerId(-1);
        request.topics = vec![list_topic];
        let mut frame = self
            .send(ApiKey::ListOffsets, LIST_OFFSETS_VERSION, &request, None, true)
            .await?
            .ok_or("no list offsets response")?;
        let response = ListOffsetsResponse::decode(&mut frame, LIST_OFFSETS_VERSION)
            .map_err(|e| format!("list offsets response: {e}"))?;
        let found = response
            .topics
            .first()
            .and_then(|t| t.partitions.first())
            .ok_or("a list offsets response without the partition")?;
        if found.error_code != 0 {
            return Err(format!(
                "list offsets {topic}-{partition}: Kafka error {}",
                found.error_code
            ));
        }
        Ok(found.offset.max(0) as u64)
    }

    /// Each partition's leader (`host:port` of its Kafka listener), `None` while it has none.
    pub async fn leaders(&self, topic: &str) -> Result<Vec<Option<String>>, String> {
        let mut wanted = MetadataRequestTopic::default();
        wanted.name = Some(TopicName(StrBytes::from_string(topic.to_string())));
        let mut request = MetadataRequest::default();
        request.topics = Some(vec![wanted]);
        let mut frame = self
            .send(ApiKey::Metadata, METADATA_VERSION, &request, None, true)
            .await?
            .ok_or("no metadata response")?;
        let response = MetadataResponse::decode(&mut frame, METADATA_VERSION)
            .map_err(|e| format!("metadata response: {e}"))?;
        let found = response.topics.first().ok_or("a metadata response without the topic")?;
        if found.error_code != 0 {
            return Err(format!("metadata of {topic}: Kafka error {}", found.error_code));
        }
        let address = |leader: BrokerId| {
            let broker = response.brokers.iter().find(|b| b.node_id == leader)?;
            Some(spate::config::host_port(&broker.host, u16::try_from(broker.port).ok()?))
        };
        let mut leaders = vec![None; found.partitions.len()];
        for partition in &found.partitions {
            if let Some(slot) =
                usize::try_from(partition.partition_index).ok().and_then(|i| leaders.get_mut(i))
            {
                *slot = address(partition.leader_id);
            }
        }
        Ok(leaders)
    }

    /// Creates a topic; returns the Kafka error code (0, or 36 when it exists).
    pub async fn create_topic(&self, topic: &str, partitions: u32) -> Result<i16, String> {
        let mut creatable = CreatableTopic::default();
        creatable.name = TopicName(StrBytes::from_string(topic.to_string()));
        creatable.num_partitions = partitions as i32;
        creatable.replication_factor = 1;
        let mut request = CreateTopicsRequest::default();
        request.topics = vec![creatable];
        request.timeout_ms = 30_000;
        let mut frame = self
            .send(ApiKey::CreateTopics, CREATE_TOPICS_VERSION, &request, None, true)
            .await?
            .ok_or("no create topics response")?;
        let response = CreateTopicsResponse::decode(&mut frame, CREATE_TOPICS_VERSION)
            .map_err(|e| format!("create topics response: {e}"))?;
        Ok(response.topics.first().map_or(-1, |t| t.error_code))
    }
}
