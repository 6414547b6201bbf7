//! The shard's part in replication (the rest of Kafka's `ReplicaManager`): the replica view a
//! publication hands each replicated partition, the partitions this shard follows and from
//! which leader (for the broker's replica fetchers), followers' fetches served by the shard
//! that owns their partitions, and the in-sync changes its leaders ask the controller for.

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::task::Poll;
use std::time::{Duration, Instant};

use crate::cluster::decide::IsrRequest;
use crate::cluster::metadata::PartitionState;
use crate::cluster::node::{ControllerAnswer, ControllerRequest};
use crate::error::{BrokerError, ErrorKind};
use crate::partition::{Partition, ReplicaFetched, ReplicaView};
use crate::shard::call::ReplicaFetch;
use crate::shard::catalog::TopicInfo;
use crate::shard::state::{PartitionKey, Shard};
use crate::types::{LeaderEpoch, NodeId, Offset, PartitionId, ShardId};

/// How often leaders look for followers to drop from or add to their in-sync sets. Kafka
/// checks for laggards every half `replica.lag.time.max.ms` and adds followers on their
/// fetches; one short interval does both here.
const ISR_CHECK_INTERVAL: Duration = Duration::from_millis(200);
/// Before an in-sync change whose answer was lost is asked again.
const ISR_RETRY_WAIT: Duration = Duration::from_millis(500);

/// A partition this shard follows: its leader, and the leader epoch it follows in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Followed {
    pub leader: NodeId,
    pub epoch: LeaderEpoch,
}

/// One partition of a follower's fetch.
#[derive(Clone, Debug)]
pub struct FollowerFetch {
    pub topic: String,
    pub partition: PartitionId,
    pub epoch: LeaderEpoch,
    pub fetch_offset: Offset,
    pub synced: Offset,
    pub last_fetched_epoch: Option<LeaderEpoch>,
    pub known_high_watermark: Offset,
    pub log_start: Offset,
}

/// A leader's answer for one partition of a follower's fetch.
#[derive(Debug)]
pub struct FollowerAnswer {
    pub topic: String,
    pub partition: PartitionId,
    pub result: Result<ReplicaFetched, BrokerError>,
}

impl FollowerAnswer {
    /// Whether the follower learns anything from it: entries, a divergence, an error, a high
    /// watermark past the one it knew, or a log start it was not told yet.
    fn has_news(&self, known_high_watermark: Offset) -> bool {
        match &self.result {
            Ok(fetched) => {
                !fetched.entries.is_empty()
                    || fetched.diverging.is_some()
                    || fetched.out_of_range
                    || fetched.log_start_moved
                    || fetched.high_watermark > known_high_watermark
            }
            Err(_) => true,
        }
    }
}

/// The limits of one follower's fetch.
#[derive(Clone, Copy, Debug)]
pub struct FetchLimits {
    pub partition_max_bytes: usize,
    pub max_bytes: usize,
    pub max_wait: Duration,
}

impl Shard {
    /// The replicas of a partition as a publication hands them to it.
    pub(super) fn replica_view(&self, state: &PartitionState, info: &TopicInfo) -> ReplicaView {
        ReplicaView {
            me: self.config.node_id,
            replicas: state.replicas.clone(),
            isr: state.isr.clone(),
            partition_epoch: state.partition_epoch,
            min_insync: info.config.min_insync_for(state.settled_replica_count()),
            lag_max: Duration::from_millis(self.config.replica_lag_time_max_ms),
        }
    }

    /// The partitions this shard follows, by leader: what the broker's replica fetchers fetch.
    pub fn followed(&self) -> BTreeMap<NodeId, BTreeMap<PartitionKey, Followed>> {
        let mut by_leader: BTreeMap<NodeId, BTreeMap<PartitionKey, Followed>> = BTreeMap::new();
        for (key, followed) in self.followed.borrow().iter() {
            by_leader.entry(followed.leader).or_default().insert(key.clone(), *followed);
        }
        by_leader
    }

    /// Fires at each publication: the followed partitions may have changed.
    pub fn listen_published(&self) -> event_listener::EventListener {
        self.published_signal.listen()
    }

    /// A follower's fetch of partitions on any shard of this broker: each shard serves its own;
    /// the answer goes out as soon as one of them has news (the others' partitions are left
    /// out: the follower asks again at once), or when every one has waited `max_wait`.
    pub async fn replica_fetch(
        self: &Rc<Self>,
        follower: NodeId,
        partitions: Vec<FollowerFetch>,
        limits: FetchLimits,
    ) -> Vec<FollowerAnswer> {
        let mut by_shard: BTreeMap<ShardId, Vec<FollowerFetch>> = BTreeMap::new();
        for fetch in partitions {
            by_shard.entry(self.owner(&fetch.topic, fetch.partition)).or_default().push(fetch);
        }
        let shards = by_shard.len().max(1);
        let limits = FetchLimits { max_bytes: limits.max_bytes / shards, ..limits };
        let mut asked: Vec<Pin<Box<dyn Future<Output = Vec<FollowerAnswer>>>>> = by_shard
            .into_iter()
            .map(|(shard, partitions)| {
                let this = self.clone();
                let call = ReplicaFetch { follower, partitions, limits };
                Box::pin(async move {
                    match this.ask(shard, call).await {
                        Ok(answers) => answers,
                        Err(e) => {
                            tracing::warn!(%shard, "a follower's fetch on another shard: {e}");
                            Vec::new()
                        }
                    }
                }) as Pin<Box<dyn Future<Output = Vec<FollowerAnswer>>>>
            })
            .collect();
        let mut answers = Vec::new();
        let mut news = false;
        std::future::poll_fn(|cx| {
            let mut index = 0;
            while index < asked.len() {
                match asked[index].as_mut().poll(cx) {
                    Poll::Ready(answered) => {
                        news |= !answered.is_empty();
                        answers.extend(answered);
                        drop(asked.swap_remove(index));
                    }
                    Poll::Pending => index += 1,
                }
            }
            match news || asked.is_empty() {
                true => Poll::Ready(()),
                false => Poll::Pending,
            }
        })
        .await;
        answers
    }

    /// A follower's fetch of partitions this shard owns: answered at once when any has news,
    /// else after waiting up to `max_wait` for one to. Empty when none had any.
    pub(super) async fn replica_fetch_local(&self, request: ReplicaFetch) -> Vec<FollowerAnswer> {
        let ReplicaFetch { follower, partitions, limits } = request;
        let answers = self.serve_followers(follower, &partitions, limits).await;
        let news = answers.iter().zip(&partitions).any(|(a, f)| a.has_news(f.known_high_watermark));
        if news || limits.max_wait.is_zero() || self.stopping.get() {
            let answered = answers.into_iter().zip(&partitions);
            return answered
                .filter(|(a, f)| a.has_news(f.known_high_watermark))
                .map(|(a, _)| a)
                .collect();
        }
        // Wait for any partition's leader to write past where its follower is, or its high
        // watermark to pass what the follower knows.
        let waits: Vec<Pin<Box<dyn Future<Output = ()>>>> = (partitions.iter())
            .filter_map(|fetch| {
                let target = self.partition(&fetch.topic, fetch.partition).ok()?;
                Some(
                    Box::pin(wait_for_news(target, fetch.fetch_offset, fetch.known_high_watermark))
                        as Pin<Box<dyn Future<Output = ()>>>,
                )
            })
            .collect();
        let any = async {
            let mut waits = waits;
            std::future::poll_fn(|cx| {
                match waits.iter_mut().any(|w| w.as_mut().poll(cx).is_ready()) {
                    true => Poll::Ready(()),
                    false => Poll::Pending,
                }
            })
            .await
        };
        let stop = async {
            self.wait_for_stop().await;
        };
        let timeout = async {
            glommio::timer::sleep(limits.max_wait).await;
        };
        futures_lite::future::or(futures_lite::future::or(any, stop), timeout).await;
        let answers = self.serve_followers(follower, &partitions, limits).await;
        let answered = answers.into_iter().zip(&partitions);
        answered.filter(|(a, f)| a.has_news(f.known_high_watermark)).map(|(a, _)| a).collect()
    }

    /// Serves each partition of a follower's fetch once, in order, within the byte limits.
    async fn serve_followers(
        &self,
        follower: NodeId,
        partitions: &[FollowerFetch],
        limits: FetchLimits,
    ) -> Vec<FollowerAnswer> {
        let mut left = limits.max_bytes;
        let mut answers = Vec::with_capacity(partitions.len());
        for fetch in partitions {
            let result = async {
                let target =
                    self.led_partition_in(&fetch.topic, fetch.partition, Some(fetch.epoch))?;
                let max_bytes = limits.partition_max_bytes.min(left);
                target.note_follower_log_start(follower, fetch.log_start);
                target
                    .serve_follower(
                        follower,
                        (fetch.fetch_offset, fetch.synced),
                        fetch.last_fetched_epoch,
                        max_bytes,
                    )
                    .await
            }
            .await;
            if let Ok(fetched) = &result {
                let bytes: usize = fetched.entries.iter().map(|e| e.len()).sum();
                left = left.saturating_sub(bytes);
            }
            let (topic, partition) = (fetch.topic.clone(), fetch.partition);
            answers.push(FollowerAnswer { topic, partition, result });
        }
        answers
    }

    /// Every shard, until the broker stops: its replicated leaders' in-sync changes, asked of
    /// the controller (KIP-497's AlterPartition) one partition at a time each, many at once.
    pub async fn run_isr_changes(self: Rc<Self>) {
        while !self.stopping.get() {
            let stop = async {
                self.wait_for_stop().await;
            };
            futures_lite::future::or(stop, glommio::timer::sleep(ISR_CHECK_INTERVAL)).await;
            let now = Instant::now();
            let image = self.metadata_image();
            let eligible = |node: NodeId| image.is_live(&node);
            // Only the partitions with a change are taken out of the map (most have none).
            let changes: Vec<_> = (self.partitions.borrow().iter())
                .filter(|(_, p)| p.is_leader() && p.is_replicated())
                .filter_map(|(key, p)| {
                    let change = p.isr_change(now, eligible)?;
                    Some((key.clone(), p.clone(), change))
                })
                .collect();
            for ((topic, partition), target, (change, leader_epoch, partition_epoch)) in changes {
                let me = self.config.node_id;
                let (Some(broker), Some(topic_id)) =
                    (image.brokers.get(&me), image.topic_ids.get(&topic).copied())
                else {
                    target.change_refused();
                    continue;
                };
                tracing::info!(%topic, %partition, isr = ?change.isr, %leader_epoch, partition_epoch, "asking for a new in-sync set");
                let request = IsrRequest {
                    node: me,
                    broker_epoch: broker.broker_epoch,
                    topic: topic_id,
                    partition,
                    leader_epoch,
                    partition_epoch,
                    isr: change.isr,
                };
                let this = self.clone();
                let asked = ControllerRequest::AlterPartition(request);
                glommio::spawn_local(async move {
                    this.ask_isr_change(asked, &target, (leader_epoch, partition_epoch)).await;
                })
                .detach();
            }
        }
    }
}

impl Shard {
    /// Sends a leader's in-sync change to the controller until its outcome is known. A change
    /// stays pending (its new members counted toward the high watermark) until the metadata
    /// answers it or the controller refuses it for good; one whose answer was lost is asked
    /// again while it is pending (a second commit of it is refused as another version).
    async fn ask_isr_change(
        self: &Rc<Self>,
        asked: ControllerRequest,
        target: &Partition,
        (leader_epoch, partition_epoch): (LeaderEpoch, u32),
    ) {
        loop {
            match self.forward_to_controller(asked.clone()).await {
                // Published here by now, unless publishing took longer than the forwarding
                // waits: then the publication answers it.
                Ok(ControllerAnswer::MetadataChanged { index }) => {
                    if self.published.get() >= index {
                        target.change_answered(partition_epoch);
                    }
                    return;
                }
                Ok(other) => {
                    tracing::warn!(?asked, "an in-sync change answered {other:?}");
                    target.change_answered(partition_epoch);
                    return;
                }
                // The partition moved on (another change, a new leader): the publication that
                // moved it answers this one too.
                Err(e) if e.error.kind == ErrorKind::InvalidUpdateVersion => return,
                Err(e)
                    if !matches!(
                        e.error.kind,
                        ErrorKind::NotAvailable | ErrorKind::NotController
                    ) =>
                {
                    tracing::warn!(?asked, "an in-sync change refused: {}", e.error);
                    target.change_answered(partition_epoch);
                    return;
                }
                Err(e) => {
                    tracing::debug!(
                        ?asked,
                        "an in-sync change not answered: {}; asking again",
                        e.error
                    );
                    glommio::timer::sleep(ISR_RETRY_WAIT).await;
                    if !target.change_pending(leader_epoch, partition_epoch) || self.stopping.get()
                    {
                        return;
                    }
                }
            }
        }
    }
}

/// Waits until `target`'s log is written past `fetch_offset` or its high watermark passes
/// `known_high_watermark`.
async fn wait_for_news(target: Rc<Partition>, fetch_offset: Offset, known_high_watermark: Offset) {
    let written = async {
        let _ = target.log().wait_written_past(fetch_offset).await;
    };
    let moved = async {
        target.wait_high_watermark_past(known_high_watermark).await;
    };
    futures_lite::future::or(written, moved).await;
}
