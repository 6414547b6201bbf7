//! What a broker's replicas hold: DescribeLogDirs (each replica's size on disk, and the disk's),
//! DescribeProducers (the idempotent producers a partition's leader remembers, KIP-664) and
//! DeleteRecords (a partition's log start moved up, KIP-107).

use std::collections::{BTreeMap, BTreeSet};
use std::rc::Rc;
use std::time::Duration;

use kafka_protocol::messages::delete_records_response::{
    DeleteRecordsPartitionResult, DeleteRecordsTopicResult,
};
use kafka_protocol::messages::describe_log_dirs_response::{
    DescribeLogDirsPartition, DescribeLogDirsResult, DescribeLogDirsTopic,
};
use kafka_protocol::messages::describe_producers_response::{
    PartitionResponse, ProducerState, TopicResponse,
};
use kafka_protocol::messages::{
    DeleteRecordsRequest, DeleteRecordsResponse, DescribeLogDirsRequest, DescribeLogDirsResponse,
    DescribeProducersRequest, DescribeProducersResponse, ProducerId, TopicName,
};
use kafka_protocol::protocol::StrBytes;

use crate::error::{BrokerError, ErrorKind};
use crate::kafka::codec;
use crate::kafka::handlers::{has_field, kafka_error};
use crate::shard::Shard;
use crate::types::{Offset, PartitionId};

/// The longest a DeleteRecords waits for the in-sync followers, whatever its timeout says.
const DELETE_RECORDS_WAIT_MAX: Duration = Duration::from_secs(300);

/// DescribeLogDirs: the broker's one data directory, with every replica it holds there (or
/// those asked for) and its size; v4 adds the file system's size and free bytes. Kafka's admin
/// client asks each broker for its own.
pub async fn describe_log_dirs(
    shard: &Rc<Shard>,
    version: i16,
    request: DescribeLogDirsRequest,
) -> DescribeLogDirsResponse {
    let mut response = DescribeLogDirsResponse::default();
    let mut result = DescribeLogDirsResult::default();
    result.log_dir = StrBytes::from_string(shard.log_dir());
    // None: every replica; else the (topic, partition) pairs asked for.
    let asked: Option<BTreeSet<(String, i32)>> = request.topics.map(|topics| {
        (topics.into_iter())
            .flat_map(|t| {
                let name = t.topic.0.to_string();
                t.partitions.into_iter().map(move |p| (name.clone(), p))
            })
            .collect()
    });
    let sizes = match shard.replica_sizes().await {
        Ok(sizes) => sizes,
        Err(e) => {
            tracing::warn!("DescribeLogDirs: {e}");
            result.error_code = kafka_error(&e).0;
            response.results.push(result);
            return response;
        }
    };
    let mut by_topic: BTreeMap<String, Vec<DescribeLogDirsPartition>> = BTreeMap::new();
    for replica in sizes {
        let index = i32::try_from(replica.partition.0).unwrap_or(i32::MAX);
        if asked.as_ref().is_some_and(|asked| !asked.contains(&(replica.topic.clone(), index))) {
            continue;
        }
        let mut partition = DescribeLogDirsPartition::default();
        partition.partition_index = index;
        partition.partition_size = i64::try_from(replica.size_bytes).unwrap_or(i64::MAX);
        by_topic.entry(replica.topic).or_default().push(partition);
    }
    result.topics = (by_topic.into_iter())
        .map(|(name, partitions)| {
            let mut topic = DescribeLogDirsTopic::default();
            topic.name = TopicName(StrBytes::from_string(name));
            topic.partitions = partitions;
            topic
        })
        .collect();
    if has_field(version, 4) {
        match shard.disk_space().await {
            Ok((total, usable)) => {
                result.total_bytes = i64::try_from(total).unwrap_or(i64::MAX);
                result.usable_bytes = i64::try_from(usable).unwrap_or(i64::MAX);
            }
            Err(e) => {
                tracing::warn!("DescribeLogDirs: the data directory's file system: {e}");
                (result.total_bytes, result.usable_bytes) = (-1, -1);
            }
        }
    }
    response.results.push(result);
    response
}

/// DescribeProducers (KIP-664), answered by each partition's leader: its idempotent producers,
/// each with its epoch, last sequence and newest batch's timestamp. No transaction is ever open
/// here (transactions are not served), so none has a coordinator epoch or a transaction start.
pub async fn describe_producers(
    shard: &Rc<Shard>,
    request: DescribeProducersRequest,
) -> DescribeProducersResponse {
    let mut response = DescribeProducersResponse::default();
    for topic in request.topics {
        let name = topic.name.0.to_string();
        let mut answered = TopicResponse::default();
        for index in topic.partition_indexes {
            let mut partition = PartitionResponse::default();
            partition.partition_index = index;
            let found = match u32::try_from(index) {
                Ok(p) => shard.producers(&name, PartitionId(p)).await,
                Err(_) => Err(BrokerError::new(
                    ErrorKind::UnknownPartition,
                    format!("no partition {index} of topic {name}"),
                )),
            };
            match found {
                Ok(producers) => {
                    partition.active_producers = (producers.into_iter())
                        .map(|p| {
                            let mut state = ProducerState::default();
                            state.producer_id = ProducerId(p.producer_id);
                            state.producer_epoch = i32::from(p.epoch);
                            state.last_sequence = p.last_sequence;
                            state.last_timestamp = p.last_timestamp;
                            state.coordinator_epoch = -1;
                            state.current_txn_start_offset = -1;
                            state
                        })
                        .collect();
                }
                Err(e) => (partition.error_code, partition.error_message) = kafka_error(&e),
            }
            answered.partitions.push(partition);
        }
        answered.name = topic.name;
        response.topics.push(answered);
    }
    response
}

/// DeleteRecords (KIP-107), answered by each partition's leader once the new log start is
/// durable: every record below `offset` (-1: the high watermark) is out of reach, and the
/// segments wholly below it are deleted. The answer's low watermark is the log start then.
pub async fn delete_records(
    shard: &Rc<Shard>,
    request: DeleteRecordsRequest,
) -> DeleteRecordsResponse {
    let mut response = DeleteRecordsResponse::default();
    // How long the followers have to take the new log start.
    let timeout = Duration::from_millis(u64::try_from(request.timeout_ms).unwrap_or(0))
        .min(DELETE_RECORDS_WAIT_MAX);
    for topic in request.topics {
        let name = topic.name.0.to_string();
        let mut answered = DeleteRecordsTopicResult::default();
        for asked in topic.partitions {
            let mut partition = DeleteRecordsPartitionResult::default();
            partition.partition_index = asked.partition_index;
            let offset = match asked.offset {
                -1 => Ok(None),
                offset => u64::try_from(offset).map(|o| Some(Offset(o))),
            };
            let deleted = match (u32::try_from(asked.partition_index), offset) {
                (Ok(index), Ok(offset)) => {
                    shard.delete_records(&name, PartitionId(index), offset, timeout).await
                }
                (Err(_), _) => Err(BrokerError::new(
                    ErrorKind::UnknownPartition,
                    format!("no partition {} of topic {name}", asked.partition_index),
                )),
                (_, Err(_)) => Err(BrokerError::new(
                    ErrorKind::OffsetOutOfRange,
                    format!("offset {}: an offset, or -1 for the high watermark", asked.offset),
                )),
            };
            match deleted {
                Ok(start) => partition.low_watermark = i64::try_from(start.0).unwrap_or(i64::MAX),
                Err(e) => {
                    tracing::info!(topic = %name, partition = asked.partition_index, "DeleteRecords refused: {e}");
                    partition.error_code = codec::error_code(e.kind);
                    partition.low_watermark = -1;
                }
            }
            answered.partitions.push(partition);
        }
        answered.name = topic.name;
        response.topics.push(answered);
    }
    response
}
