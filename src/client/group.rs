//! A consumer-group consumer for the native protocol: joins a group, takes its share of the
//! subscribed topics' partitions, heartbeats, and commits what it has read.
//!
//! The group protocol is Kafka's classic one, run by the group's coordinator: the broker that
//! leads the group's `__consumer_offsets` partition, found from whichever broker the consumer
//! was given and found again when it moves (NOT_COORDINATOR). Records are read from each
//! partition's leader ([`Leaders`]). Subscriptions
//! and assignments are encoded as Kafka's consumer protocol, so native and Kafka consumers show
//! alike in `spate group describe`. The member the coordinator makes leader assigns partitions
//! with the configured [`Assignor`] (Kafka's `range` or `roundrobin`).

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::rc::{Rc, Weak};
use std::time::{Duration, Instant};

use bytes::{BufMut, Bytes, BytesMut};
use kafka_protocol::messages::consumer_protocol_assignment::TopicPartition;
use kafka_protocol::messages::{
    ConsumerProtocolAssignment, ConsumerProtocolSubscription, TopicName,
};
use kafka_protocol::protocol::{Encodable, StrBytes};

use crate::client::{Client, ClientError, Leaders};
use crate::group::consumer_protocol::subscribed_topics;
use crate::native::messages::{
    ErrorCode, JoinGroupRequest, SyncGroupRequest, OFFSET_EARLIEST, OFFSET_LATEST,
};
use crate::record::OwnedRecord;

const PROTOCOL_TYPE: &str = "consumer";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Assignor {
    /// Each topic's partitions split into contiguous ranges, one per member.
    Range,
    /// All partitions dealt out one at a time, member by member.
    RoundRobin,
}

impl Assignor {
    /// Kafka's name for it, which is also the group protocol name.
    pub fn name(self) -> &'static str {
        match self {
            Self::Range => "range",
            Self::RoundRobin => "roundrobin",
        }
    }
}

/// Where a partition with no committed offset starts (`auto.offset.reset`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OffsetReset {
    Earliest,
    Latest,
}

#[derive(Clone, Debug)]
pub struct GroupConfig {
    pub group: String,
    pub topics: Vec<String>,
    pub assignor: Assignor,
    pub session_timeout: Duration,
    pub rebalance_timeout: Duration,
    pub heartbeat_interval: Duration,
    /// Commit read positions this often (and on rebalance and close); `None` for manual
    /// commits only.
    pub auto_commit: Option<Duration>,
    pub offset_reset: OffsetReset,
    /// Bytes asked for per partition per fetch.
    pub fetch_max_bytes: u32,
    pub client_id: String,
}

impl GroupConfig {
    pub fn new(group: &str, topics: &[&str]) -> Self {
        Self {
            group: group.to_string(),
            topics: topics.iter().map(|t| t.to_string()).collect(),
            assignor: Assignor::Range,
            session_timeout: Duration::from_secs(10),
            rebalance_timeout: Duration::from_secs(30),
            heartbeat_interval: Duration::from_secs(1),
            auto_commit: Some(Duration::from_secs(5)),
            offset_reset: OffsetReset::Latest,
            fetch_max_bytes: 1024 * 1024,
            client_id: "spate-client".into(),
        }
    }
}

/// A record as the group consumer hands it out.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConsumedRecord {
    pub topic: String,
    pub partition: u32,
    pub offset: u64,
    pub record: OwnedRecord,
}

type Partition = (String, u32);

/// What the heartbeat task and the consumer share.
#[derive(Default)]
struct Membership {
    member_id: RefCell<String>,
    generation: Cell<i32>,
    /// Set by the heartbeat when the coordinator starts a rebalance; the next poll rejoins.
    rejoin: Cell<bool>,
    joining: Cell<bool>,
    closed: Cell<bool>,
}

pub struct GroupConsumer {
    /// The group's coordinator and the partitions' leaders, found from the broker given.
    cluster: Rc<Leaders>,
    config: GroupConfig,
    membership: Rc<Membership>,
    /// The next offset to read, per assigned partition.
    positions: RefCell<BTreeMap<Partition, u64>>,
    last_commit: Cell<Instant>,
}

impl GroupConsumer {
    /// Joins the group through any broker of the cluster (`client`), and waits for this
    /// member's assignment.
    pub async fn join(client: Client, config: GroupConfig) -> Result<Self, ClientError> {
        let consumer = Self {
            cluster: Rc::new(Leaders::new(client)),
            config,
            membership: Rc::new(Membership::default()),
            positions: RefCell::default(),
            last_commit: Cell::new(Instant::now()),
        };
        consumer.rejoin().await?;
        let heartbeat = heartbeat_loop(
            consumer.cluster.clone(),
            consumer.config.group.clone(),
            consumer.config.heartbeat_interval,
            Rc::downgrade(&consumer.membership),
        );
        glommio::spawn_local(heartbeat).detach();
        Ok(consumer)
    }

    /// The partitions this member reads now.
    pub fn assignment(&self) -> Vec<(String, u32)> {
        self.positions.borrow().keys().cloned().collect()
    }

    pub fn generation(&self) -> i32 {
        self.membership.generation.get()
    }

    async fn rejoin(&self) -> Result<(), ClientError> {
        self.membership.joining.set(true);
        let result = self.rejoin_inner().await;
        self.membership.joining.set(false);
        result
    }

    async fn rejoin_inner(&self) -> Result<(), ClientError> {
        let subscription = encode_subscription(&self.config.topics);
        loop {
            self.membership.rejoin.set(false);
            let request = JoinGroupRequest {
                group: self.config.group.clone(),
                member_id: self.membership.member_id.borrow().clone(),
                client_id: self.config.client_id.clone(),
                session_timeout_ms: millis(self.config.session_timeout),
                rebalance_timeout_ms: millis(self.config.rebalance_timeout),
                protocol_type: PROTOCOL_TYPE.into(),
                protocols: vec![(self.config.assignor.name().into(), subscription.clone())],
            };
            let joined = self.cluster.with_coordinator(&self.config.group, |coordinator| {
                let request = request.clone();
                async move { coordinator.join_group(&request).await }
            });
            let joined = match joined.await {
                Ok(joined) => joined,
                Err(e) if e.code() == Some(ErrorCode::UnknownMember) => {
                    self.membership.member_id.borrow_mut().clear();
                    continue;
                }
                Err(e) => return Err(e),
            };
            *self.membership.member_id.borrow_mut() = joined.member_id.clone();
            self.membership.generation.set(joined.generation);
            let assignments = if joined.leader == joined.member_id {
                self.assign(&joined.members).await?
            } else {
                Vec::new()
            };
            let sync = SyncGroupRequest {
                group: self.config.group.clone(),
                member_id: joined.member_id,
                generation: joined.generation,
                assignments,
            };
            let assignment = self.cluster.with_coordinator(&self.config.group, |coordinator| {
                let sync = sync.clone();
                async move { coordinator.sync_group(&sync).await }
            });
            let assignment = match assignment.await {
                Ok(assignment) => assignment,
                Err(e) if e.code() == Some(ErrorCode::RebalanceInProgress) => continue,
                Err(e) => return Err(e),
            };
            return self.take_assignment(&decode_assignment(&assignment)).await;
        }
    }

    /// The leader's work: every member's share of the partitions of what it subscribed to.
    async fn assign(
        &self,
        members: &[(String, Vec<u8>)],
    ) -> Result<Vec<(String, Vec<u8>)>, ClientError> {
        let subscriptions: Vec<(String, Vec<String>)> = members
            .iter()
            .map(|(id, metadata)| (id.clone(), decode_subscription(metadata)))
            .collect();
        let mut topics: Vec<&String> = subscriptions.iter().flat_map(|(_, t)| t).collect();
        topics.sort();
        topics.dedup();
        let mut partitions = BTreeMap::new();
        for topic in topics {
            let count = self.cluster.bootstrap().partition_count(topic).await?;
            partitions.insert(topic.clone(), count);
        }
        let shares = assign(self.config.assignor, &subscriptions, &partitions);
        Ok(shares.into_iter().map(|(member, share)| (member, encode_assignment(&share))).collect())
    }

    /// Starts each assigned partition at its committed offset, else per `offset_reset`.
    async fn take_assignment(&self, assigned: &[Partition]) -> Result<(), ClientError> {
        let group = &self.config.group;
        let committed = self.cluster.with_coordinator(group, |coordinator| {
            let assigned = assigned.to_vec();
            async move { coordinator.fetch_offsets(group, assigned).await }
        });
        let committed = committed.await?;
        let mut positions = BTreeMap::new();
        for (topic, partition, offset) in committed {
            let start = if offset >= 0 {
                offset as u64
            } else {
                let reset = match self.config.offset_reset {
                    OffsetReset::Earliest => OFFSET_EARLIEST,
                    OffsetReset::Latest => OFFSET_LATEST,
                };
                let name = topic.as_str();
                let end = self.cluster.with_leader(name, partition, |leader| async move {
                    leader.list_offset(name, partition, reset).await
                });
                end.await?.max(0) as u64
            };
            positions.insert((topic, partition), start);
        }
        *self.positions.borrow_mut() = positions;
        Ok(())
    }

    /// Reads what the assigned partitions hold past their positions, waiting up to `max_wait`
    /// when there is nothing; rejoins first if the group is rebalancing, and auto-commits when
    /// due.
    pub async fn poll(&self, max_wait: Duration) -> Result<Vec<ConsumedRecord>, ClientError> {
        if self.membership.rejoin.get() {
            if self.config.auto_commit.is_some() {
                // Committing while the group gathers keeps what this member read; a refusal
                // only means another member may read some of it again (at least once).
                let _ = self.commit().await;
            }
            self.rejoin().await?;
        }
        if let Some(interval) = self.config.auto_commit {
            if self.last_commit.get().elapsed() >= interval {
                self.commit().await?;
            }
        }
        let assigned: Vec<(Partition, u64)> =
            self.positions.borrow().iter().map(|(p, o)| (p.clone(), *o)).collect();
        let mut consumed = Vec::new();
        for ((topic, partition), position) in assigned {
            let max_bytes = self.config.fetch_max_bytes;
            let name = topic.as_str();
            let fetched = self.cluster.with_leader(name, partition, |leader| async move {
                leader.fetch(name, partition, position, max_bytes, 0).await
            });
            let fetched = fetched.await?;
            let mut next = position;
            for batch in fetched.batches()? {
                for record in batch.records().filter(|r| r.offset >= position) {
                    next = record.offset + 1;
                    consumed.push(ConsumedRecord {
                        topic: topic.clone(),
                        partition,
                        offset: record.offset,
                        record: record.to_owned_record(),
                    });
                }
            }
            if let Some(p) = self.positions.borrow_mut().get_mut(&(topic, partition)) {
                *p = next;
            }
        }
        if consumed.is_empty() {
            glommio::timer::sleep(max_wait.min(Duration::from_millis(20))).await;
        }
        Ok(consumed)
    }

    /// Commits the positions of every assigned partition.
    pub async fn commit(&self) -> Result<(), ClientError> {
        let offsets: Vec<(String, u32, u64)> =
            self.positions.borrow().iter().map(|((t, p), o)| (t.clone(), *p, *o)).collect();
        self.last_commit.set(Instant::now());
        if offsets.is_empty() {
            return Ok(());
        }
        let member_id = self.membership.member_id.borrow().clone();
        let generation = self.membership.generation.get();
        let group = &self.config.group;
        let committed = self.cluster.with_coordinator(group, |coordinator| {
            let (member_id, offsets) = (member_id.clone(), offsets.clone());
            async move { coordinator.commit_offsets(group, &member_id, generation, offsets).await }
        });
        let committed = committed.await;
        if let Err(e) = &committed {
            if matches!(
                e.code(),
                Some(
                    ErrorCode::RebalanceInProgress
                        | ErrorCode::IllegalGeneration
                        | ErrorCode::UnknownMember
                )
            ) {
                self.membership.rejoin.set(true);
            }
        }
        committed
    }

    /// Commits (with auto-commit on) and leaves the group, so it rebalances at once.
    pub async fn close(self) -> Result<(), ClientError> {
        self.membership.closed.set(true);
        if self.config.auto_commit.is_some() {
            let _ = self.commit().await;
        }
        let member_id = self.membership.member_id.borrow().clone();
        let group = &self.config.group;
        let left = self.cluster.with_coordinator(group, |coordinator| {
            let member_id = member_id.clone();
            async move { coordinator.leave_group(group, &member_id).await }
        });
        left.await
    }
}

async fn heartbeat_loop(
    cluster: Rc<Leaders>,
    group: String,
    interval: Duration,
    membership: Weak<Membership>,
) {
    loop {
        glommio::timer::sleep(interval).await;
        let Some(membership) = membership.upgrade() else { return };
        if membership.closed.get() {
            return;
        }
        if membership.joining.get() || membership.rejoin.get() {
            continue;
        }
        let (member_id, generation) =
            (membership.member_id.borrow().clone(), membership.generation.get());
        let (name, member) = (group.as_str(), member_id.as_str());
        let beat = cluster.with_coordinator(name, |coordinator| async move {
            coordinator.heartbeat(name, member, generation).await
        });
        if let Err(e) = beat.await {
            if membership.generation.get() == generation && !membership.joining.get() {
                tracing::debug!(%group, "heartbeat: {e}; rejoining");
                membership.rejoin.set(true);
            }
        }
    }
}

fn millis(duration: Duration) -> u32 {
    u32::try_from(duration.as_millis()).unwrap_or(u32::MAX)
}

/// Each member's partitions. `subscriptions` are (member id, topics); `partitions` the count
/// of each topic.
pub fn assign(
    assignor: Assignor,
    subscriptions: &[(String, Vec<String>)],
    partitions: &BTreeMap<String, u32>,
) -> Vec<(String, Vec<Partition>)> {
    let mut members: Vec<&(String, Vec<String>)> = subscriptions.iter().collect();
    members.sort_by(|a, b| a.0.cmp(&b.0));
    let mut shares: BTreeMap<&str, Vec<Partition>> =
        members.iter().map(|(id, _)| (id.as_str(), Vec::new())).collect();
    let subscribed = |topic: &str| -> Vec<&str> {
        members
            .iter()
            .filter(|(_, t)| t.iter().any(|t| t == topic))
            .map(|(id, _)| id.as_str())
            .collect()
    };
    match assignor {
        Assignor::Range => {
            for (topic, &count) in partitions {
                let readers = subscribed(topic);
                if readers.is_empty() {
                    continue;
                }
                let (each, extra) = (count / readers.len() as u32, count % readers.len() as u32);
                let mut next = 0;
                for (i, member) in readers.iter().enumerate() {
                    let take = each + u32::from((i as u32) < extra);
                    let share = shares.entry(member).or_default();
                    share.extend((next..next + take).map(|p| (topic.clone(), p)));
                    next += take;
                }
            }
        }
        Assignor::RoundRobin => {
            let mut turn = 0usize;
            for (topic, &count) in partitions {
                let readers = subscribed(topic);
                for partition in 0..count {
                    if readers.is_empty() {
                        break;
                    }
                    // The next member in the global rotation that reads this topic.
                    let member = (0..members.len())
                        .map(|k| members[(turn + k) % members.len()].0.as_str())
                        .find(|id| readers.contains(id))
                        .unwrap_or(readers[0]);
                    let position = members.iter().position(|(id, _)| id == member).unwrap_or(0);
                    turn = position + 1;
                    shares.entry(member).or_default().push((topic.clone(), partition));
                }
            }
        }
    }
    shares.into_iter().map(|(id, share)| (id.to_string(), share)).collect()
}

fn encode_subscription(topics: &[String]) -> Vec<u8> {
    let mut subscription = ConsumerProtocolSubscription::default();
    subscription.topics = topics.iter().map(|t| StrBytes::from_string(t.clone())).collect();
    let mut buf = BytesMut::new();
    buf.put_i16(0);
    // Encoding owned strings into memory at version 0 cannot fail.
    let _ = subscription.encode(&mut buf, 0);
    buf.to_vec()
}

/// The topics a member's subscription names (the broker's reading of Kafka's consumer
/// protocol, shared).
fn decode_subscription(metadata: &[u8]) -> Vec<String> {
    subscribed_topics(&Bytes::copy_from_slice(metadata)).unwrap_or_default()
}

fn encode_assignment(share: &[Partition]) -> Vec<u8> {
    let mut by_topic: BTreeMap<&str, Vec<i32>> = BTreeMap::new();
    for (topic, partition) in share {
        by_topic.entry(topic).or_default().push(*partition as i32);
    }
    let mut assignment = ConsumerProtocolAssignment::default();
    assignment.assigned_partitions = by_topic
        .into_iter()
        .map(|(topic, partitions)| {
            let mut entry = TopicPartition::default();
            entry.topic = TopicName(StrBytes::from_string(topic.to_string()));
            entry.partitions = partitions;
            entry
        })
        .collect();
    let mut buf = BytesMut::new();
    buf.put_i16(0);
    let _ = assignment.encode(&mut buf, 0);
    buf.to_vec()
}

fn decode_assignment(bytes: &[u8]) -> Vec<Partition> {
    crate::group::consumer_protocol::assigned_partitions(&Bytes::copy_from_slice(bytes))
        .into_iter()
        .flat_map(|(topic, partitions)| {
            partitions
                .into_iter()
                .filter_map(move |p| Some((topic.clone(), u32::try_from(p).ok()?)))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn members(n: usize, topics: &[&str]) -> Vec<(String, Vec<String>)> {
        (0..n).map(|i| (format!("m{i}"), topics.iter().map(|t| t.to_string()).collect())).collect()
    }

    #[test]
    fn range_gives_contiguous_runs_and_the_first_members_the_extra() {
        let partitions = BTreeMap::from([("t".to_string(), 7)]);
        let shares = assign(Assignor::Range, &members(3, &["t"]), &partitions);
        let counts: Vec<Vec<u32>> =
            shares.iter().map(|(_, s)| s.iter().map(|(_, p)| *p).collect()).collect();
        assert_eq!(counts, vec![vec![0, 1, 2], vec![3, 4], vec![5, 6]]);
    }

    #[test]
    fn round_robin_deals_every_partition_once() {
        let partitions = BTreeMap::from([("a".to_string(), 3), ("b".to_string(), 3)]);
        let shares = assign(Assignor::RoundRobin, &members(2, &["a", "b"]), &partitions);
        assert_eq!(shares[0].1, vec![("a".into(), 0), ("a".into(), 2), ("b".into(), 1)]);
        assert_eq!(shares[1].1, vec![("a".into(), 1), ("b".into(), 0), ("b".into(), 2)]);
    }

    #[test]
    fn subscriptions_and_assignments_round_trip_through_the_consumer_protocol() {
        let topics = vec!["orders".to_string(), "audit".to_string()];
        assert_eq!(decode_subscription(&encode_subscription(&topics)), topics);
        let share =
            vec![("orders".to_string(), 1), ("orders".to_string(), 4), ("audit".to_string(), 0)];
        let mut back = decode_assignment(&encode_assignment(&share));
        back.sort();
        let mut expected = share;
        expected.sort();
        assert_eq!(back, expected);
    }
}
