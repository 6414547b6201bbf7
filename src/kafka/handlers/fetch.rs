//! Fetch and ListOffsets: reads from the owning shards, with Kafka's long poll.
//!
//! A fetch first reads every partition without waiting. If that finds fewer than `min_bytes`
//! and the client allows a wait, it waits for the first partition to receive data (or for
//! `max_wait_ms`) and answers with what that partition then holds. Entries stored by native
//! producers are converted to Kafka batches one entry at a time; Kafka entries go out as stored,
//! spliced into the response frame as slices of the stored entries ([`codec::encode_spliced`])
//! rather than copied into it.

use std::rc::Rc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use glommio::channels::local_channel;
use kafka_protocol::messages::fetch_response::{FetchableTopicResponse, PartitionData};
use kafka_protocol::messages::list_offsets_response::{
    ListOffsetsPartitionResponse, ListOffsetsTopicResponse,
};
use kafka_protocol::messages::offset_for_leader_epoch_response::{
    EpochEndOffset, OffsetForLeaderTopicResult,
};
use kafka_protocol::messages::{
    FetchRequest, FetchResponse, ListOffsetsRequest, ListOffsetsResponse,
    OffsetForLeaderEpochRequest, OffsetForLeaderEpochResponse, TopicName,
};
use kafka_protocol::protocol::StrBytes;

use crate::error::BrokerError;
use crate::error::ErrorKind;
use crate::kafka::codec;
use crate::kafka::handlers::has_field;
use crate::partition::{LogBounds, ReadOutcome};
use crate::record::codecs;
use crate::record::convert::native_to_kafka;
use crate::record::entry::{entries, Check};
use crate::record::kafka_batch::BatchHeader;
use crate::record::PayloadFormat;
use crate::shard::Shard;
use crate::shard::{FETCH_BYTES_MAX, FETCH_WAIT_MS_MAX};
use crate::types::{LeaderEpoch, Offset, PartitionId};

/// The most a fetch's response may hold: what it asked for, within [1, `FETCH_BYTES_MAX`].
pub fn response_bytes_max(request: &FetchRequest) -> usize {
    usize::try_from(request.max_bytes).unwrap_or(FETCH_BYTES_MAX).clamp(1, FETCH_BYTES_MAX)
}

/// One partition a fetch asks for.
#[derive(Clone)]
struct Wanted {
    topic: Rc<str>,
    partition: i32,
    /// The leader epoch the client knows (Fetch v9+, ListOffsets v4+; -1 or absent: none).
    epoch: Option<LeaderEpoch>,
    offset: i64,
    max_bytes: usize,
}

/// A client's current leader epoch, when it gives one (KIP-320: -1 is none).
fn known_epoch(epoch: i32) -> Option<LeaderEpoch> {
    (epoch >= 0).then_some(LeaderEpoch(epoch))
}

type Read = Result<ReadOutcome, BrokerError>;

/// A fetch response whose partitions' records are [`codec::RECORDS_MARKER`], and the record
/// chunks that replace the markers, in order.
pub struct FetchAnswer {
    pub response: FetchResponse,
    pub records: Vec<Vec<Bytes>>,
}

pub async fn fetch(shard: &Rc<Shard>, version: i16, request: FetchRequest) -> FetchAnswer {
    let max_bytes = response_bytes_max(&request);
    let wanted: Vec<Wanted> = request
        .topics
        .iter()
        .flat_map(|topic| {
            let name: Rc<str> = Rc::from(topic.topic.0.as_str());
            topic.partitions.iter().map(move |p| Wanted {
                topic: name.clone(),
                partition: p.partition,
                epoch: known_epoch(p.current_leader_epoch),
                offset: p.fetch_offset,
                max_bytes: usize::try_from(p.partition_max_bytes).unwrap_or(0).min(max_bytes),
            })
        })
        .collect();
    let mut reads = read_within(shard, &wanted, max_bytes).await;
    let found: usize = reads.iter().map(outcome_bytes).sum();
    let min_bytes = usize::try_from(request.min_bytes).unwrap_or(0).max(1);
    let wait_ms = u64::try_from(request.max_wait_ms).unwrap_or(0).min(u64::from(FETCH_WAIT_MS_MAX));
    if found < min_bytes && wait_ms > 0 && !wanted.is_empty() {
        if let Some((index, read)) =
            first_arrival(shard, &wanted, Duration::from_millis(wait_ms)).await
        {
            reads[index] = read;
        }
    }
    let mut response = FetchResponse::default();
    let mut records = Vec::new();
    let mut limits = ResponseLimits { left: max_bytes, first_batch_may_exceed: true };
    for (want, read) in wanted.iter().zip(reads) {
        let (partition, chunks) = partition_data(version, want, read, &mut limits);
        if !chunks.is_empty() {
            shard.metrics.consumed(&want.topic, chunks.iter().map(Bytes::len).sum());
            records.push(chunks);
        }
        let same_topic = response
            .responses
            .last()
            .is_some_and(|t: &FetchableTopicResponse| t.topic.0.as_str() == &*want.topic);
        if !same_topic {
            let mut topic = FetchableTopicResponse::default();
            topic.topic = TopicName(StrBytes::from_string(want.topic.to_string()));
            response.responses.push(topic);
        }
        if let Some(topic) = response.responses.last_mut() {
            topic.partitions.push(partition);
        }
    }
    FetchAnswer { response, records }
}

fn outcome_bytes(read: &Read) -> usize {
    read.as_ref().map_or(0, ReadOutcome::bytes)
}

/// Reads the wanted partitions in request order, within the response's `max_bytes`: in waves
/// of partitions whose limits fit what is left (read at once, each on its own shard), until
/// the budget is spent. The partitions after that are not read, only checked against their
/// watermarks, as Kafka reads with what is left of the limit: a fetch naming 1,000 lagging
/// partitions reads about `max_bytes` from the disks, not 1,000 times its partition limit.
async fn read_within(shard: &Rc<Shard>, wanted: &[Wanted], max_bytes: usize) -> Vec<Read> {
    let mut reads = Vec::with_capacity(wanted.len());
    let mut left = max_bytes;
    while reads.len() < wanted.len() && left > 0 {
        let start = reads.len();
        let mut end = start + 1;
        let mut planned = wanted[start].max_bytes;
        while end < wanted.len() && planned + wanted[end].max_bytes <= left {
            planned += wanted[end].max_bytes;
            end += 1;
        }
        let tasks: Vec<_> = wanted[start..end]
            .iter()
            .map(|want| {
                let want = Wanted { max_bytes: want.max_bytes.min(left), ..want.clone() };
                glommio::spawn_local(read_one(shard.clone(), want, Duration::ZERO)).detach()
            })
            .collect();
        for task in tasks {
            let read = task.await.unwrap_or_else(|| Err(closing()));
            left = left.saturating_sub(outcome_bytes(&read));
            reads.push(read);
        }
    }
    let rest: Vec<_> = wanted[reads.len()..]
        .iter()
        .map(|want| glommio::spawn_local(watermarks_only(shard.clone(), want.clone())).detach())
        .collect();
    for task in rest {
        reads.push(task.await.unwrap_or_else(|| Err(closing())));
    }
    reads
}

/// A partition the response has no room for: no records, but its watermarks (clients track
/// their lag by them) and the offset checked as a read would check it.
async fn watermarks_only(shard: Rc<Shard>, want: Wanted) -> Read {
    let partition = known_partition(&shard, &want.topic, want.partition)?;
    let bounds = shard.watermarks(&want.topic, partition).await?;
    if !u64::try_from(want.offset).is_ok_and(|o| bounds.contains(Offset(o))) {
        let LogBounds { log_start, log_end, .. } = bounds;
        let why = format!("offset {} is outside the log [{log_start}, {log_end}]", want.offset);
        return Err(BrokerError::new(ErrorKind::OffsetOutOfRange, why));
    }
    let LogBounds { log_start, high_watermark, .. } = bounds;
    Ok(ReadOutcome { entries: Vec::new(), high_watermark, log_start, woken_at: None })
}

/// Long-polls every wanted partition and returns the first to have data, or `None` when the
/// wait ends with none. The other polls are cancelled when this returns.
async fn first_arrival(
    shard: &Rc<Shard>,
    wanted: &[Wanted],
    wait: Duration,
) -> Option<(usize, Read)> {
    let (arrived, arrivals) = local_channel::new_unbounded();
    let arrived = Rc::new(arrived);
    let _polls: Vec<_> = wanted
        .iter()
        .enumerate()
        .map(|(index, want)| {
            let (shard, want, arrived) = (shard.clone(), want.clone(), arrived.clone());
            glommio::spawn_local(async move {
                let read = read_one(shard, want, wait).await;
                let _ = arrived.try_send((index, read));
            })
        })
        .collect();
    drop(arrived);
    for _ in 0..wanted.len() {
        let (index, read) = arrivals.recv().await?;
        if outcome_bytes(&read) > 0 {
            return Some((index, read));
        }
    }
    None
}

async fn read_one(shard: Rc<Shard>, want: Wanted, wait: Duration) -> Read {
    let offset = u64::try_from(want.offset).map_err(|_| {
        BrokerError::new(ErrorKind::OffsetOutOfRange, format!("offset {}", want.offset))
    })?;
    let partition = known_partition(&shard, &want.topic, want.partition)?;
    let asked = (want.topic.as_ref(), partition, want.epoch);
    shard.fetch(asked, Offset(offset), want.max_bytes.max(1), wait).await
}

/// The partition a client names, when this broker knows it (UNKNOWN_TOPIC_OR_PARTITION else).
fn known_partition(shard: &Shard, topic: &str, index: i32) -> Result<PartitionId, BrokerError> {
    let unknown =
        || BrokerError::new(ErrorKind::UnknownTopic, format!("no partition {topic}-{index}"));
    let partition = u32::try_from(index).map_err(|_| unknown()).map(PartitionId)?;
    match shard.has_partition(topic, partition) {
        true => Ok(partition),
        false => Err(unknown()),
    }
}

fn closing() -> BrokerError {
    BrokerError::new(ErrorKind::NotAvailable, "the broker is stopping")
}

/// What is left of a response's size limits as its partitions are filled in.
///
/// KIP-74: the response holds at most `max_bytes` and each partition at most its
/// `partition_max_bytes`, except that the first batch of the first partition with data goes out
/// whole even over both, so a batch larger than the limits cannot stall a consumer. That
/// exception is taken once per response, never once per partition: a client sizes its receive
/// buffer from `fetch.max.bytes` and rejects a larger response (librdkafka then fetches again
/// forever).
struct ResponseLimits {
    left: usize,
    first_batch_may_exceed: bool,
}

/// One partition's part of the response.
fn partition_data(
    version: i16,
    want: &Wanted,
    read: Read,
    limits: &mut ResponseLimits,
) -> (PartitionData, Vec<Bytes>) {
    let mut data = PartitionData::default();
    data.partition_index = want.partition;
    let mut chunks = Vec::new();
    match read.and_then(|outcome| {
        kafka_records(&outcome, version, want.max_bytes, limits).map(|r| (outcome, r))
    }) {
        Ok((outcome, records)) => {
            data.high_watermark = outcome.high_watermark.0 as i64;
            data.last_stable_offset = outcome.high_watermark.0 as i64;
            if has_field(version, 5) {
                data.log_start_offset = outcome.log_start.0 as i64;
            }
            data.records = Some(if records.is_empty() {
                Bytes::new()
            } else {
                Bytes::from_static(&codec::RECORDS_MARKER)
            });
            chunks = records;
        }
        Err(e) => {
            data.error_code = codec::error_code(e.kind);
            data.high_watermark = -1;
            data.last_stable_offset = -1;
            if e.kind != ErrorKind::OffsetOutOfRange {
                tracing::debug!(topic = %want.topic, partition = want.partition, "fetch failed: {e}");
            }
        }
    }
    (data, chunks)
}

/// The read entries as Kafka record batches, within the partition's limit and what is left of
/// the response's: slices of the stored Kafka entries, and native entries converted.
fn kafka_records(
    outcome: &ReadOutcome,
    version: i16,
    partition_bytes_max: usize,
    limits: &mut ResponseLimits,
) -> Result<Vec<Bytes>, BrokerError> {
    let mut out = Vec::new();
    let mut partition_left = partition_bytes_max.min(limits.left);
    for chunk in &outcome.entries {
        for entry in entries(chunk, Check::Header) {
            let entry = entry.map_err(stored)?;
            // A native entry's Kafka form differs in size: it is measured once converted.
            let batch = match entry.header.format() {
                // Fetch v10 came with zstd (KIP-110): older clients cannot read it, and get
                // Kafka's answer for that instead of a batch they would fail on, once they
                // have every batch before it.
                Some(PayloadFormat::Kafka) if version < 10 && is_zstd(entry.payload) => {
                    if !out.is_empty() {
                        return Ok(out);
                    }
                    let why = "zstd batches are served to Fetch v10 and later";
                    return Err(BrokerError::new(ErrorKind::UnsupportedCompressionType, why));
                }
                Some(PayloadFormat::Kafka) => chunk.slice_ref(entry.payload),
                Some(PayloadFormat::Native) => {
                    let mut converted = BytesMut::new();
                    native_to_kafka(&entry.header, entry.payload, &mut converted)
                        .map_err(stored)?;
                    converted.freeze()
                }
                None => return Err(stored("unknown payload format")),
            };
            let fits = batch.len() <= partition_left;
            let may_exceed = out.is_empty() && limits.first_batch_may_exceed;
            if !fits && !may_exceed {
                return Ok(out);
            }
            partition_left = partition_left.saturating_sub(batch.len());
            limits.left = limits.left.saturating_sub(batch.len());
            limits.first_batch_may_exceed = false;
            out.push(batch);
        }
    }
    Ok(out)
}

fn is_zstd(batch: &[u8]) -> bool {
    BatchHeader::read(batch).is_some_and(|header| header.codec() == codecs::ZSTD)
}

fn stored(e: impl std::fmt::Display) -> BrokerError {
    BrokerError::new(ErrorKind::StorageError, format!("stored entry: {e}"))
}

pub async fn list_offsets(
    shard: &Rc<Shard>,
    version: i16,
    request: ListOffsetsRequest,
) -> ListOffsetsResponse {
    let mut response = ListOffsetsResponse::default();
    for topic in request.topics {
        let mut result = ListOffsetsTopicResponse::default();
        for asked in topic.partitions {
            let mut partition = ListOffsetsPartitionResponse::default();
            partition.partition_index = asked.partition_index;
            partition.timestamp = -1;
            let (name, epoch) = (topic.name.0.as_str(), known_epoch(asked.current_leader_epoch));
            let found = match known_partition(shard, name, asked.partition_index) {
                Ok(p) => shard.list_offset((name, p, epoch), asked.timestamp).await,
                Err(e) => Err(e),
            };
            match found {
                Ok((offset, timestamp, epoch)) => {
                    partition.offset = offset;
                    partition.timestamp = timestamp;
                    if has_field(version, 4) {
                        partition.leader_epoch = epoch;
                    }
                }
                Err(e) => {
                    partition.error_code = codec::error_code(e.kind);
                    partition.offset = -1;
                }
            }
            result.partitions.push(partition);
        }
        result.name = topic.name;
        response.topics.push(result);
    }
    response
}

/// OffsetForLeaderEpoch (KIP-101, KIP-320): for each partition, the largest leader epoch of its
/// log at or below the one asked for, and where that epoch ends; a consumer that saw the leader
/// change compares it with its position to find a truncation (librdkafka does).
pub async fn offset_for_leader_epoch(
    shard: &Rc<Shard>,
    request: OffsetForLeaderEpochRequest,
) -> OffsetForLeaderEpochResponse {
    let mut response = OffsetForLeaderEpochResponse::default();
    for topic in request.topics {
        let mut result = OffsetForLeaderTopicResult::default();
        for asked in topic.partitions {
            let mut partition = EpochEndOffset::default();
            partition.partition = asked.partition;
            let (name, epoch) = (topic.topic.0.as_str(), known_epoch(asked.current_leader_epoch));
            let leader_epoch = LeaderEpoch(asked.leader_epoch);
            let found = match known_partition(shard, name, asked.partition) {
                Ok(p) => shard.epoch_end((name, p, epoch), leader_epoch).await,
                Err(e) => Err(e),
            };
            (partition.leader_epoch, partition.end_offset) = match found {
                Ok(end) => end,
                Err(e) => {
                    partition.error_code = codec::error_code(e.kind);
                    (-1, -1)
                }
            };
            result.partitions.push(partition);
        }
        result.topic = topic.topic;
        response.topics.push(result);
    }
    response
}
