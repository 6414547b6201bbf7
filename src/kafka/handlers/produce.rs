//! Produce: validate each partition's batch, hand it to the owning shard, answer with offsets.

use std::rc::Rc;

use kafka_protocol::messages::produce_response::{PartitionProduceResponse, TopicProduceResponse};
use kafka_protocol::messages::{ProduceRequest, ProduceResponse};
use kafka_protocol::protocol::StrBytes;

use crate::error::BrokerError;
use crate::error::ErrorKind;
use crate::kafka::codec;
use crate::kafka::handlers::has_field;
use crate::partition::Acks;
use crate::record::codecs;
use crate::record::conform::conform;
use crate::record::kafka_batch::{validate_produced, BatchError};
use crate::record::PendingEntry;
use crate::shard::{Produced, Shard};
use crate::types::PartitionId;

/// Kafka's INVALID_REQUIRED_ACKS.
const INVALID_REQUIRED_ACKS: i16 = kafka_protocol::ResponseError::InvalidRequiredAcks.code();

/// Appends every partition's batch; `None` for acks=0, which gets no response at all.
pub async fn produce(
    shard: &Rc<Shard>,
    version: i16,
    request: ProduceRequest,
) -> Option<ProduceResponse> {
    let acks = match request.acks {
        0 => Acks::None,
        1 => Acks::Leader,
        -1 => Acks::All,
        other => return Some(refuse_all(request, version, INVALID_REQUIRED_ACKS, other)),
    };
    let transactional = request.transactional_id.is_some();
    // Every append is started before any is awaited, in request order, so batches of one
    // connection reach their partitions in the order they were sent.
    let mut topics = Vec::with_capacity(request.topic_data.len());
    for topic in request.topic_data {
        let name = topic.name.0.to_string();
        let info = shard.topic_or_create(&name).await;
        let mut partitions = Vec::with_capacity(topic.partition_data.len());
        for data in topic.partition_data {
            let index = data.index;
            let started = match &info {
                _ if transactional => Err(BrokerError::new(
                    ErrorKind::InvalidRecord,
                    "transactional producers are not supported",
                )),
                Err(e) => Err(e.clone()),
                Ok(info) => {
                    let records = data.records.as_deref();
                    start_append(shard, (&name, info, index), version, records, acks)
                }
            };
            partitions.push((index, started));
        }
        topics.push((topic.name, partitions));
    }
    let mut response = ProduceResponse::default();
    for (name, partitions) in topics {
        let mut topic = TopicProduceResponse::default();
        topic.name = name.clone();
        for (index, started) in partitions {
            let (result, log_append_time) = match started {
                Ok((task, log_append_time)) => (
                    task.await.unwrap_or_else(|| {
                        Err(BrokerError::new(ErrorKind::NotAvailable, "the broker is stopping"))
                    }),
                    log_append_time,
                ),
                Err(e) => (Err(e), None),
            };
            let mut partition = PartitionProduceResponse::default();
            partition.index = index;
            match result {
                Ok(produced) => {
                    partition.base_offset = produced.base_offset.0 as i64;
                    // -1 (the default) under CreateTime, as Kafka answers; a retried batch
                    // the log had gets the time it was appended at, as Kafka's answer has.
                    let time = log_append_time.map(|now| produced.duplicate_of.unwrap_or(now));
                    if let Some(time) = time.filter(|_| has_field(version, 2)) {
                        partition.log_append_time_ms = time;
                    }
                    if has_field(version, 5) {
                        partition.log_start_offset = produced.log_start.0 as i64;
                    }
                }
                Err(e) => {
                    if acks == Acks::None {
                        tracing::debug!(topic = %name.0, partition = index, "acks=0 produce failed: {e}");
                    }
                    partition.error_code = codec::error_code(e.kind);
                    partition.base_offset = -1;
                    if has_field(version, 8) {
                        partition.error_message = Some(StrBytes::from_string(e.message));
                    }
                }
            }
            topic.partition_responses.push(partition);
        }
        response.responses.push(topic);
    }
    (acks != Acks::None).then_some(response)
}

/// The same error for every partition of the request.
fn refuse_all(request: ProduceRequest, version: i16, code: i16, acks: i16) -> ProduceResponse {
    let mut response = ProduceResponse::default();
    for topic in request.topic_data {
        let mut result = TopicProduceResponse::default();
        result.name = topic.name;
        for data in topic.partition_data {
            let mut partition = PartitionProduceResponse::default();
            partition.index = data.index;
            partition.error_code = code;
            partition.base_offset = -1;
            if has_field(version, 8) {
                let why = format!("acks must be 0, 1 or -1, not {acks}");
                partition.error_message = Some(StrBytes::from_string(why));
            }
            result.partition_responses.push(partition);
        }
        response.responses.push(result);
    }
    response
}

type Appending = glommio::task::JoinHandle<Result<Produced, BrokerError>>;

/// Validates one partition's batch, makes it what its topic stores (`record::conform`) and
/// starts appending it on the owning shard; with the broker time it took under LogAppendTime.
fn start_append(
    shard: &Rc<Shard>,
    (topic, info, partition): (&str, &crate::shard::catalog::TopicInfo, i32),
    version: i16,
    records: Option<&[u8]>,
    acks: Acks,
) -> Result<(Appending, Option<i64>), BrokerError> {
    let partition =
        u32::try_from(partition).ok().filter(|p| *p < info.partitions).ok_or_else(|| {
            let why = format!(
                "topic {topic} has {} partitions, no partition {partition}",
                info.partitions
            );
            BrokerError::new(ErrorKind::UnknownPartition, why)
        })?;
    let records = records.unwrap_or_default();
    let max_bytes = info.config.max_message_bytes;
    let refused = |e: BatchError| e.refusal(topic, partition);
    let header = validate_produced(records, max_bytes).map_err(refused)?;
    // Produce v7 came with zstd (KIP-110): an older client sending it is answered as Kafka does.
    if version < 7 && header.codec() == codecs::ZSTD {
        let why = format!("{topic}-{partition}: zstd batches need Produce v7 or later");
        return Err(BrokerError::new(ErrorKind::UnsupportedCompressionType, why));
    }
    let rules = info.config.batch_rules();
    let now = crate::now_ms();
    let conformed = conform(records, &rules, now).map_err(|e| e.refusal(topic, partition))?;
    let entry = match &conformed {
        None => PendingEntry::kafka(records, header.meta()),
        // Recompressed, it may have outgrown max.message.bytes: checked again, as Kafka does.
        Some(stored) => PendingEntry::kafka(
            stored,
            validate_produced(stored, max_bytes).map_err(refused)?.meta(),
        ),
    }
    .ok_or_else(|| BrokerError::new(ErrorKind::CorruptMessage, "batch too short"))?;
    let (shard, topic) = (shard.clone(), topic.to_string());
    // A task of its own, spawned now: the append takes its turn on the owning shard in request
    // order even though this request awaits the partitions one after another.
    let partition = PartitionId(partition);
    let appending =
        glommio::spawn_local(async move { shard.produce(&topic, partition, acks, entry).await })
            .detach();
    Ok((appending, rules.log_append_time.then_some(now)))
}
