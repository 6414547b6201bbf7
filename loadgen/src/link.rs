//! One connection to the broker in the protocol chosen with `--protocol`: the few operations the
//! loadgen needs, the same for both, so every figure compares like with like; and the routes
//! that send each partition's requests to its leader's connections, wherever in the cluster.

use bytes::Bytes;
use spate::client::{Client, ClientError};
use spate::native::messages::{Acks, ErrorCode, OFFSET_EARLIEST, OFFSET_LATEST};
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
    ) -> Result<(), ProduceError> {
        match self {
            Link::Native(client) => client
                .produce_encoded(topic, partition, acks, meta, payload)
                .await
                .map(|_| ())
                .map_err(|e| {
                    let lost = matches!(e, ClientError::Disconnected(_) | ClientError::Io(_));
                    let failover = lost || e.code().is_some_and(|c| NATIVE_FAILOVER.contains(&c));
                    ProduceError { message: e.to_string(), failover }
                }),
            Link::Kafka(link) => link.produce(topic, partition, acks, payload).await,
        }
    }

    /// The address of `partition`'s leader as this broker knows it now (`None`: none yet).
    pub async fn leader_of(&self, topic: &str, partition: u32) -> Result<Option<String>, String> {
        let leaders = match self {
            Link::Native(client) => {
                let metadata = client.metadata(Some(vec![topic.to_string()]), false).await;
                native_leaders(&metadata.map_err(|e| e.to_string())?)?
            }
            Link::Kafka(link) => link.leaders(topic).await?,
        };
        Ok(leaders.get(partition as usize).cloned().flatten())
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

    /// The address of each of `topic`'s first `partitions` partitions' leader, in this link's
    /// protocol, once every one has a leader (asked again for a while, as a new topic's
    /// partitions get theirs).
    pub async fn leaders(&self, topic: &str, partitions: u32) -> Result<Vec<String>, String> {
        let deadline = std::time::Instant::now() + LEADERS_WAIT;
        loop {
            let found: Result<Vec<Option<String>>, String> = match self {
                Link::Native(client) => {
                    match client.metadata(Some(vec![topic.to_string()]), false).await {
                        Ok(metadata) => native_leaders(&metadata),
                        Err(e) => Err(e.to_string()),
                    }
                }
                Link::Kafka(link) => link.leaders(topic).await,
            };
            let why = match found {
                Ok(found) => {
                    let wanted = found.get(..partitions as usize).unwrap_or_default();
                    if wanted.len() == partitions as usize && wanted.iter().all(Option::is_some) {
                        return Ok(wanted.iter().flatten().cloned().collect());
                    }
                    format!("partitions without a leader: {found:?}")
                }
                // The topic may still be reaching the broker asked: asked again, for a while.
                Err(why) => why,
            };
            if std::time::Instant::now() >= deadline {
                return Err(format!("{topic}: {why}"));
            }
            glommio::timer::sleep(std::time::Duration::from_millis(100)).await;
        }
    }

    /// The offset after a partition's last record.
    pub async fn latest(&self, topic: &str, partition: u32) -> Result<u64, String> {
        self.list_offset(topic, partition, OFFSET_LATEST).await
    }

    /// A partition's first offset still held.
    pub async fn earliest(&self, topic: &str, partition: u32) -> Result<u64, String> {
        self.list_offset(topic, partition, OFFSET_EARLIEST).await
    }

    /// [`OFFSET_LATEST`] or [`OFFSET_EARLIEST`] (the same values in both protocols).
    async fn list_offset(&self, topic: &str, partition: u32, which: i64) -> Result<u64, String> {
        match self {
            Link::Native(client) => client
                .list_offset(topic, partition, which)
                .await
                .map(|o| o.max(0) as u64)
                .map_err(|e| e.to_string()),
            Link::Kafka(link) => link.list_offset(topic, partition, which).await,
        }
    }
}

/// Why a produce failed, and whether a leader change may be behind it: then the batch is sent
/// again to the partition's leader, found anew.
#[derive(Debug)]
pub struct ProduceError {
    pub message: String,
    pub failover: bool,
}

/// The native refusals a leader change brings.
const NATIVE_FAILOVER: [ErrorCode; 7] = [
    ErrorCode::NotLeaderOrFollower,
    ErrorCode::NotAvailable,
    ErrorCode::NotEnoughReplicas,
    ErrorCode::NotEnoughReplicasAfterAppend,
    ErrorCode::FencedLeaderEpoch,
    ErrorCode::UnknownLeaderEpoch,
    ErrorCode::RequestTimedOut,
];

/// How long the loadgen waits for every partition of its topic to have a leader.
const LEADERS_WAIT: std::time::Duration = std::time::Duration::from_secs(15);

/// Each partition's leader in a native Metadata answer, by partition index.
fn native_leaders(
    metadata: &spate::native::messages::MetadataResponse,
) -> Result<Vec<Option<String>>, String> {
    let described = metadata.topics.first().ok_or("no metadata for the topic")?;
    if described.error.code != ErrorCode::None {
        return Err(format!("{}: {}", described.error.code, described.error.message));
    }
    let mut leaders = vec![None; described.partitions.len()];
    for partition in &described.partitions {
        if let Some(slot) = leaders.get_mut(partition.partition as usize) {
            *slot = metadata.leader_address(partition);
        }
    }
    Ok(leaders)
}

/// Where each partition's requests go: connections to its leader.
#[derive(Clone)]
pub struct Routes {
    /// Each partition's connections, by partition index.
    pools: std::collections::BTreeMap<u32, Pool>,
}

impl Routes {
    /// `per_broker` connections to each broker that leads one of `partitions` (indexes into
    /// `leaders`), shared by the partitions it leads.
    pub async fn connect(
        protocol: Protocol,
        leaders: &[String],
        partitions: &[u32],
        per_broker: usize,
    ) -> Result<Self, String> {
        let mut by_leader: std::collections::BTreeMap<&String, Pool> = Default::default();
        let mut pools = std::collections::BTreeMap::new();
        for partition in partitions {
            let leader = leaders.get(*partition as usize).ok_or("a partition without a leader")?;
            if !by_leader.contains_key(leader) {
                let mut links = Vec::with_capacity(per_broker.max(1));
                for _ in 0..per_broker.max(1) {
                    links.push(Link::connect(protocol, leader).await?);
                }
                by_leader.insert(leader, Pool { links });
            }
            pools.insert(*partition, by_leader[leader].clone());
        }
        Ok(Self { pools })
    }

    /// A connection of its own to each of `partitions`' leaders (a consumer's long poll on
    /// one partition must not hold up another's data).
    pub async fn connect_each(
        protocol: Protocol,
        leaders: &[String],
        partitions: &[u32],
    ) -> Result<Self, String> {
        let mut pools = std::collections::BTreeMap::new();
        for partition in partitions {
            pools.extend(Self::connect(protocol, leaders, &[*partition], 1).await?.pools);
        }
        Ok(Self { pools })
    }

    /// The connections to `partition`'s leader (one of the partitions it was made for).
    pub fn pool(&self, partition: u32) -> Result<Pool, String> {
        let pool = self.pools.get(&partition).cloned();
        pool.ok_or_else(|| format!("no connection to partition {partition}'s leader"))
    }
}

/// How a sender finds a partition's leader again after a failover: the brokers it knows (the
/// one it was given, every leader it has seen), asked in turn.
pub struct Rediscovery {
    protocol: Protocol,
    known: std::cell::RefCell<Vec<String>>,
}

/// How long connecting to a broker may take while looking for a new leader.
const REDISCOVERY_CONNECT_WAIT: std::time::Duration = std::time::Duration::from_secs(1);

impl Rediscovery {
    pub fn new(protocol: Protocol, bootstrap: String, leaders: &[String]) -> Self {
        let mut known = vec![bootstrap];
        for leader in leaders {
            if !known.contains(leader) {
                known.push(leader.clone());
            }
        }
        Self { protocol, known: std::cell::RefCell::new(known) }
    }

    /// A new connection to `partition`'s leader, as the first known broker that names one
    /// says.
    pub async fn leader_link(&self, topic: &str, partition: u32) -> Result<Link, String> {
        let known = self.known.borrow().clone();
        let mut why = String::from("no broker known");
        for address in known {
            let found = async {
                let link = Link::connect(self.protocol, &address).await?;
                let leader = link.leader_of(topic, partition).await?;
                let leader = leader.ok_or_else(|| format!("{address} names no leader yet"))?;
                let link = Link::connect(self.protocol, &leader).await?;
                Ok::<_, String>((leader, link))
            };
            let late = async {
                glommio::timer::sleep(REDISCOVERY_CONNECT_WAIT * 2).await;
                Err(format!("{address} did not answer in time"))
            };
            match futures_lite::future::or(found, late).await {
                Ok((leader, link)) => {
                    let mut known = self.known.borrow_mut();
                    if !known.contains(&leader) {
                        known.push(leader);
                    }
                    return Ok(link);
                }
                Err(e) => why = e,
            }
        }
        Err(why)
    }
}

/// Connections to one broker; never empty.
#[derive(Clone)]
pub struct Pool {
    links: Vec<Link>,
}

impl Pool {
    /// The `slot`th connection, round the pool.
    pub fn link(&self, slot: usize) -> Link {
        self.links[slot % self.links.len()].clone()
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
