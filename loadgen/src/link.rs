//! One connection to the broker in the protocol chosen with `--protocol`: the few operations the
//! loadgen needs, the same for both, so every figure compares like with like.

use bytes::Bytes;
use spate::client::Client;
use spate::native::messages::{Acks, ErrorCode, OFFSET_LATEST};
use spate::record::{BatchMeta, EntryHeader, PayloadFormat};
use spate::types::{LeaderEpoch, Offset};

use crate::kafka::{KafkaLink, TOPIC_ALREADY_EXISTS};

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Protocol {
    /// Spate's native protocol (the native listener, default port 9192).
    Native,
    /// The Kafka wire protocol (the Kafka listener, default port 9092).
    Kafka,
}

#[derive(Clone)]
pub enum Link {
    Native(Client),
    Kafka(KafkaLink),
}

impl Link {
    pub async fn connect(protocol: Protocol, address: &str) -> Result<Self, String> {
        match protocol {
            Protocol::Native => {
                Client::connect(address).await.map(Link::Native).map_err(|e| e.to_string())
            }
            Protocol::Kafka => KafkaLink::connect(address).await.map(Link::Kafka),
        }
    }

    /// Creates the topic unless it exists.
    pub async fn ensure_topic(&self, topic: &str, partitions: u32) -> Result<(), String> {
        match self {
            Link::Native(client) => match client.create_topic(topic, partitions, vec![]).await {
                Err(e) if e.code() != Some(ErrorCode::TopicAlreadyExists) => Err(e.to_string()),
                _ => Ok(()),
            },
            Link::Kafka(link) => match link.create_topic(topic, partitions).await? {
                0 | TOPIC_ALREADY_EXISTS => Ok(()),
                code => Err(format!("creating {topic}: Kafka error {code}")),
            },
        }
    }

    /// Sends one batch encoded for this link's protocol ([`encode_batch`]).
    pub async fn produce(
        &self,
        topic: &str,
        partition: u32,
        acks: Acks,
        meta: BatchMeta,
        payload: Bytes,
    ) -> Result<(), String> {
        match self {
            Link::Native(client) => client
                .produce_encoded(topic, partition, acks, meta, payload)
                .await
                .map(|_| ())
                .map_err(|e| e.to_string()),
            Link::Kafka(link) => link.produce(topic, partition, acks, payload).await,
        }
    }

    /// Fetches from `offset` and calls `visit(offset, value)` for every record at or after it,
    /// in order. Returns how many records it visited.
    pub async fn fetch(
        &self,
        topic: &str,
        partition: u32,
        offset: u64,
        max_bytes: u32,
        wait_ms: u32,
        mut visit: impl FnMut(u64, &[u8]),
    ) -> Result<u64, String> {
        let mut visited = 0;
        match self {
            Link::Native(client) => {
                let fetched = client
                    .fetch(topic, partition, offset, max_bytes, wait_ms)
                    .await
                    .map_err(|e| e.to_string())?;
                for batch in fetched.batches().map_err(|e| e.to_string())? {
                    for record in batch.records().filter(|r| r.offset >= offset) {
                        visit(record.offset, record.value().unwrap_or_default());
                        visited += 1;
                    }
                }
            }
            Link::Kafka(link) => {
                let (records, _) = link.fetch(topic, partition, offset, max_bytes, wait_ms).await?;
                let mut rest: &[u8] = &records;
                while rest.len() >= 12 {
                    let length = i32::from_be_bytes([rest[8], rest[9], rest[10], rest[11]]);
                    let end = 12 + usize::try_from(length).map_err(|_| "bad batch length")?;
                    // A fetch may end inside a batch; the next fetch starts from it again.
                    let Some(batch) = rest.get(..end) else { break };
                    spate::record::convert::for_each_record(batch, |record| {
                        if record.offset >= offset {
                            visit(record.offset, record.value.unwrap_or_default());
                            visited += 1;
                        }
                    })?;
                    rest = &rest[end..];
                }
            }
        }
        Ok(visited)
    }

    /// The offset after a partition's last record.
    pub async fn latest(&self, topic: &str, partition: u32) -> Result<u64, String> {
        match self {
            Link::Native(client) => client
                .list_offset(topic, partition, OFFSET_LATEST)
                .await
                .map(|o| o.max(0) as u64)
                .map_err(|e| e.to_string()),
            Link::Kafka(link) => link.latest(topic, partition).await,
        }
    }
}

/// A native batch archive as `protocol` sends it: as is, or as a Kafka RecordBatch v2 (built
/// by the broker's own converter, so both protocols carry the same records).
pub fn encode_batch(
    protocol: Protocol,
    meta: &BatchMeta,
    archive: rkyv::util::AlignedVec,
) -> Result<Bytes, String> {
    match protocol {
        Protocol::Native => Ok(Bytes::from_owner(archive)),
        Protocol::Kafka => {
            let crc = crc32fast::hash(&archive);
            // Offset and leader epoch are the broker's to stamp.
            let (unset_offset, unset_epoch) = (Offset(0), LeaderEpoch(0));
            let format = PayloadFormat::Native;
            let header = EntryHeader::new(
                format,
                unset_offset,
                unset_epoch,
                meta,
                archive.len() as u32,
                crc,
            );
            let mut batch = bytes::BytesMut::new();
            spate::record::convert::native_to_kafka(&header, &archive, &mut batch)?;
            Ok(batch.freeze())
        }
    }
}
