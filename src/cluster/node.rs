//! The controller in a running broker: a voter's Raft node, its disk and its peers, and the
//! active controller's decisions, driven by glommio on shard 0.
//!
//! This is the thin I/O layer around `quorum.rs` (Raft), `voter_log.rs` (its disk) and
//! `decide.rs` (what the controller decides): one task drives the voter (ticks, drains,
//! persists, applies, sends), and requests from brokers (registration, heartbeats, controlled
//! shutdown) become events the active controller decides one at a time, each answered once its
//! batch has committed and been applied here. Another voter answers NOT_CONTROLLER with the
//! leader it knows. Messages to other voters and requests to the controller travel through
//! [`Links`], which the broker implements over the native protocol.

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use event_listener::Event as Signal;
use futures_channel::oneshot;
use rkyv::{Archive, Deserialize, Serialize};

use super::applied::AppliedMetadata;
use super::decide::{
    Controller, Election, Event, IsrRequest, LeaderBalance, NewPartitions, NewTopic,
    PartitionLimits, Reassignment, Refusal, PRODUCER_ID_BLOCK,
};
use super::metadata::{
    self, ClusterId, Endpoints, MetadataImage, MetadataRecord, Registration, TopicId,
};
use super::quorum::{Committed, Voter};
use super::raft_wire::{StoredSnapshot, WireMessage};
use super::voter_log::VoterLog;
use crate::config::{ConfigChange, TopicConfig};
use crate::error::{BrokerError, ErrorKind};
use crate::log::storage::DmaStorage;
use crate::types::{NodeId, PartitionId};

/// Raft's clock: an election after 10 to 20 ticks without a leader, a leader's heartbeat every 3.
pub const TICK: Duration = Duration::from_millis(100);
/// How long a decision waits for a new controller to apply its log, or for its batch to commit.
pub const DECISION_WAIT: Duration = Duration::from_secs(5);
/// How long a stopping active controller waits for another voter to take over.
const RESIGN_WAIT: Duration = Duration::from_secs(2);
/// The longest between two checks for silent brokers: a tick that fences nobody decides an
/// empty batch and writes nothing.
const FENCING_CHECK_MAX: Duration = Duration::from_millis(250);

/// Raft ids start at 1 (raft-rs takes 0 for none); Kafka node ids at 0.
pub fn raft_id(node: NodeId) -> u64 {
    u64::try_from(node.0).unwrap_or(0) + 1
}

fn node_of(raft_id: u64) -> Option<NodeId> {
    let id = i32::try_from(raft_id.checked_sub(1)?).ok()?;
    Some(NodeId(id))
}

/// What a broker asks the active controller.
#[derive(Clone, Debug, PartialEq, Eq, Archive, Serialize, Deserialize)]
pub enum ControllerRequest {
    /// `cluster_id` is the one the broker's data directory belongs to, if it joined one
    /// before.
    Register {
        registration: Registration,
        cluster_id: Option<ClusterId>,
    },
    /// `storage_failing`: the broker's disk refuses its writes (`log/health.rs`); the controller
    /// fences it meanwhile.
    Heartbeat {
        node: NodeId,
        broker_epoch: u64,
        storage_failing: bool,
    },
    ControlledShutdown {
        node: NodeId,
        broker_epoch: u64,
    },
    /// A block of producer ids for the broker to hand out (KIP-730's AllocateProducerIds).
    AllocateProducerIds {
        node: NodeId,
        broker_epoch: u64,
    },
    /// A client's CreateTopics, forwarded by the broker it reached (KIP-590). `id`: the
    /// topic's id when the broker chose it (a topic from before the cluster, brought in), else
    /// the controller chooses.
    CreateTopic {
        topic: NewTopic,
        id: Option<TopicId>,
    },
    CreatePartitions(NewPartitions),
    DeleteTopic {
        name: String,
    },
    /// A partition leader's new in-sync set (Kafka's AlterPartition, KIP-497).
    AlterPartition(IsrRequest),
    /// A client's ElectLeaders (KIP-460), forwarded: of the partitions named, or of all.
    ElectLeaders {
        election: Election,
        partitions: Option<Vec<(String, PartitionId)>>,
    },
    /// A client's AlterPartitionReassignments (KIP-455), forwarded.
    Reassign(Vec<Reassignment>),
    /// A client's IncrementalAlterConfigs (or, `replace`, AlterConfigs) of a topic, forwarded.
    AlterTopicConfig {
        name: String,
        changes: Vec<ConfigChange>,
        replace: bool,
    },
    /// A client's IncrementalAlterConfigs (or, `replace`, AlterConfigs) of a broker resource,
    /// forwarded: broker `node`'s dynamic settings, or with `None` the cluster-wide defaults.
    AlterBrokerConfig {
        node: Option<NodeId>,
        changes: Vec<ConfigChange>,
        replace: bool,
    },
}

/// What the active controller answers, once the decision has committed.
#[derive(Clone, Debug, PartialEq, Eq, Archive, Serialize, Deserialize)]
pub enum ControllerAnswer {
    Registered {
        broker_epoch: u64,
        cluster_id: ClusterId,
    },
    /// `fenced`: the broker may lead nothing yet (a heartbeat unfences it once its registration
    /// has committed).
    HeartbeatTaken {
        fenced: bool,
    },
    ShutDown,
    /// Producer ids `first .. first + count`, the broker's alone.
    ProducerIds {
        first: i64,
        count: i64,
    },
    /// The change is committed as metadata log entry `index`: the asking broker answers its
    /// client once it has applied that far.
    MetadataChanged {
        index: u64,
    },
}

/// Why a controller request failed, with the leader this voter knows (for NOT_CONTROLLER).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ControllerError {
    pub error: BrokerError,
    pub leader: Option<NodeId>,
    /// The request never reached a voter that could still decide it (no connection, or the
    /// connection broke: the voter stopped or died): another voter may be asked. Otherwise an
    /// unanswered request may still commit.
    pub unsent: bool,
}

impl ControllerError {
    /// A refusal that names no leader.
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Self { error: BrokerError::new(kind, message), leader: None, unsent: false }
    }

    /// NOT_AVAILABLE for a request that could not be sent.
    pub fn unsent(message: impl Into<String>) -> Self {
        Self { unsent: true, ..Self::new(ErrorKind::NotAvailable, message) }
    }
}

impl From<BrokerError> for ControllerError {
    fn from(error: BrokerError) -> Self {
        Self { error, leader: None, unsent: false }
    }
}

/// The cluster as one voter sees it, for `spate cluster status`.
#[derive(Clone, Debug, PartialEq, Eq, Archive, Serialize, Deserialize)]
pub struct ClusterStatus {
    /// The voter answering.
    pub node: NodeId,
    /// `None` until the first controller has formed the cluster.
    pub cluster_id: Option<ClusterId>,
    pub voters: Vec<NodeId>,
    /// The active controller as this voter knows it.
    pub leader: Option<NodeId>,
    pub term: u64,
    /// The last entry of the metadata log applied here.
    pub applied: u64,
    /// The newest snapshot of the metadata log here (the entry it ends at; 0 for none): the
    /// voter's own or its leader's, or the one a following broker last caught up from.
    pub snapshot: u64,
    /// Where a voter's log on disk starts: the entries up to this one are only in its snapshot
    /// (0 on a broker that is not a voter, and until a snapshot frees a segment).
    pub log_start: u64,
    pub brokers: Vec<BrokerStatus>,
    pub topics: u32,
    /// Partitions without a leader.
    pub offline_partitions: u32,
    /// Partitions with fewer replicas in sync than they have (every partition of a replication
    /// factor above 1 until partition data is replicated).
    pub under_replicated_partitions: u32,
}

#[derive(Clone, Debug, PartialEq, Eq, Archive, Serialize, Deserialize)]
pub struct BrokerStatus {
    pub node: NodeId,
    pub endpoints: Endpoints,
    pub rack: Option<String>,
    pub broker_epoch: u64,
    pub protocol_version: u16,
    pub fenced: bool,
    /// Stopped cleanly (a controlled shutdown); fenced until it registers again.
    pub shut_down: bool,
}

/// Committed entries of the metadata log, for a broker that follows it without voting.
#[derive(Clone, Debug, PartialEq, Eq, Archive, Serialize, Deserialize)]
pub struct MetadataEntries {
    /// The active controller, as the answering voter knows it.
    pub leader: Option<NodeId>,
    /// When the entry asked for is only in the voter's snapshot: the snapshot (the entry it
    /// ends at, and the image), which the asker restores and goes on after.
    pub snapshot: Option<(u64, Vec<u8>)>,
    /// Consecutive entries from the one asked for: (index, batch, empty for Raft's own).
    pub entries: Vec<(u64, Vec<u8>)>,
}

/// How a voter reaches the others, and a broker the controller: the broker's native client.
pub trait Links {
    /// Best effort: Raft sends again what is lost. `cluster_id`: the sender's cluster, once
    /// known.
    fn send_voter_messages(
        &self,
        to: NodeId,
        cluster_id: Option<ClusterId>,
        messages: Vec<WireMessage>,
    );

    /// Asks voter `to` for the committed metadata entries from index `from` on.
    fn fetch_metadata(
        &self,
        to: NodeId,
        from: u64,
    ) -> Pin<Box<dyn Future<Output = Result<MetadataEntries, ControllerError>>>>;

    /// Sends a request to voter `to` and waits (bounded) for its answer.
    fn ask_controller(
        &self,
        to: NodeId,
        request: ControllerRequest,
    ) -> Pin<Box<dyn Future<Output = Result<ControllerAnswer, ControllerError>>>>;
}

/// A controller voter on shard 0.
pub struct ControllerNode {
    me: NodeId,
    voters: Vec<NodeId>,
    raft: RefCell<Voter>,
    disk: VoterLog<DmaStorage>,
    /// The image of the committed log, as applied here (shared with the broker, which
    /// publishes it to its shards).
    metadata: Rc<AppliedMetadata>,
    /// Whether the log it restarted with is applied (its first round done).
    started: Cell<bool>,
    /// The active controller and term this voter knew at its last drive, to log changes.
    known_leader: Cell<(u64, u64)>,
    /// The last other voter this one knew as the active controller, and its term: when this
    /// one takes over in the term after (or the one after that, a split vote between), that
    /// one's broker fell silent (`Controller::presume_silent`).
    predecessor: Cell<Option<(NodeId, u64)>>,
    /// Whether its drive loop has ended (the broker stopping, or its log failing).
    stopped: Cell<bool>,
    /// The controller's memory (heartbeat times) while this voter leads, with its term.
    active: RefCell<Option<(u64, Controller)>>,
    /// Proposals waiting for their entry to be applied, by index: the term they were proposed
    /// in (an entry of another term at that index means they were lost), and the waiter.
    pending: RefCell<BTreeMap<u64, (u64, oneshot::Sender<bool>)>>,
    /// Something for the drive loop: messages stepped in, a proposal made.
    work: Signal,
    /// Entries applied.
    applied_signal: Signal,
    /// One decision at a time, each against the image its predecessors left.
    deciding: glommio::sync::Semaphore,
    links: Rc<dyn Links>,
    session_timeout: Duration,
    limits: PartitionLimits,
    /// The settings of topics that do not override them.
    topic_defaults: TopicConfig,
    leader_balance: Option<LeaderBalance>,
    /// The cluster this broker's data directory belongs to, once known (shared by its shards).
    dir_cluster: Arc<OnceLock<ClusterId>>,
    /// Bytes of entries to apply between two snapshots, and those applied since the last.
    snapshot_bytes: u64,
    applied_since_snapshot: Cell<u64>,
}

/// What a voter's active controller decides with, and where the voter keeps what it applied.
pub struct ControllerSettings {
    pub session_timeout: Duration,
    pub limits: PartitionLimits,
    /// The settings of topics that do not override them (this broker's defaults):
    /// `unclean.leader.election.enable` and `min.insync.replicas`.
    pub topic_defaults: TopicConfig,
    /// `auto.leader.rebalance.enable` and its check's settings (`None`: off).
    pub leader_balance: Option<LeaderBalance>,
    /// The cluster this broker's data directory belongs to, once known (shared by its shards).
    pub dir_cluster: Arc<OnceLock<ClusterId>>,
    pub metadata: Rc<AppliedMetadata>,
    /// `metadata.log.max.record.bytes.between.snapshots`.
    pub snapshot_bytes: u64,
}

impl ControllerNode {
    /// Voter `me` of `voters`, from what its disk holds under `disk`.
    pub fn new(
        me: NodeId,
        voters: Vec<NodeId>,
        disk: (VoterLog<DmaStorage>, super::quorum::Durable),
        links: Rc<dyn Links>,
        settings: ControllerSettings,
    ) -> Result<Rc<Self>, String> {
        let ControllerSettings {
            session_timeout,
            limits,
            topic_defaults,
            leader_balance,
            dir_cluster,
            metadata,
            snapshot_bytes,
        } = settings;
        let (disk, durable) = disk;
        if let Some(snapshot) = &durable.snapshot {
            // The log after it is handed out as committed again on the first drive.
            let image = MetadataImage::decode_snapshot(&snapshot.data).map_err(|why| {
                format!("the controller's snapshot at entry {}: {why}", snapshot.index)
            })?;
            metadata.restore(snapshot.index, image)?;
        }
        let ids: Vec<u64> = voters.iter().map(|v| raft_id(*v)).collect();
        let raft = Voter::restore(raft_id(me), &ids, durable).map_err(|e| e.to_string())?;
        Ok(Rc::new(Self {
            me,
            voters,
            raft: RefCell::new(raft),
            disk,
            metadata,
            started: Cell::new(false),
            known_leader: Cell::new((0, 0)),
            predecessor: Cell::new(None),
            stopped: Cell::new(false),
            active: RefCell::new(None),
            pending: RefCell::new(BTreeMap::new()),
            work: Signal::new(),
            applied_signal: Signal::new(),
            deciding: glommio::sync::Semaphore::new(1),
            links,
            session_timeout,
            limits,
            topic_defaults,
            leader_balance,
            dir_cluster,
            snapshot_bytes,
            applied_since_snapshot: Cell::new(0),
        }))
    }

    /// Drives the voter until `stop` completes or the voter fails (its disk, say): a voter that
    /// cannot keep its log must not vote.
    pub async fn run(self: &Rc<Self>, stop: impl Future<Output = ()>) -> Result<(), String> {
        let mut stop = std::pin::pin!(stop);
        let mut next_tick = Instant::now() + TICK;
        loop {
            let work = self.work.listen();
            if let Err(e) = self.drive_once().await {
                self.stop_deciding();
                self.disk.close().await;
                return Err(e);
            }
            // The first round applied the log the voter restarted with.
            self.started.set(true);
            let wait = next_tick.saturating_duration_since(Instant::now());
            let woken = futures_lite::future::or(
                async {
                    futures_lite::future::or(work, glommio::timer::sleep(wait)).await;
                    true
                },
                async {
                    (&mut stop).await;
                    false
                },
            );
            if !woken.await {
                self.stop_deciding();
                self.disk.close().await;
                return Ok(());
            }
            let now = Instant::now();
            if now >= next_tick {
                self.raft.borrow_mut().tick();
                // A shard busy for longer than a tick does not tick in a burst after.
                next_tick = (next_tick + TICK).max(now);
            }
        }
    }

    /// The voter no longer runs: decisions queued or waiting for their commit are answered now
    /// rather than at their deadline, and messages are refused.
    fn stop_deciding(&self) {
        self.stopped.set(true);
        self.deciding.close();
        self.fail_pending();
    }

    /// Answers every proposal still waiting as lost (NOT_CONTROLLER to its asker).
    fn fail_pending(&self) {
        for (_, (_, waiter)) in std::mem::take(&mut *self.pending.borrow_mut()) {
            let _ = waiter.send(false);
        }
    }

    /// One round of what Raft asks: persist, then apply, then send; then, when one is due, a
    /// snapshot (after the sending: the messages must not wait for it).
    async fn drive_once(&self) -> Result<(), String> {
        let drained = self.raft.borrow_mut().drain().map_err(|e| e.to_string())?;
        if !drained.persist.is_empty() {
            self.disk
                .persist(&drained.persist)
                .await
                .map_err(|e| format!("controller voter {}: persisting its log: {e}", self.me))?;
        }
        if let Some(snapshot) = &drained.persist.snapshot {
            self.restore(snapshot)?;
        }
        let applied_some = !drained.committed.is_empty();
        if applied_some {
            self.apply(drained.committed)?;
        }
        let mut by_peer: BTreeMap<NodeId, Vec<WireMessage>> = BTreeMap::new();
        for message in &drained.messages {
            let Some(to) = node_of(message.to) else { continue };
            match WireMessage::from_raft(message) {
                Ok(wire) => by_peer.entry(to).or_default().push(wire),
                Err(why) => tracing::warn!(voter = %self.me, "not sent: {why}"),
            }
        }
        // Its data directory's when its log has none yet: a voter of another cluster must not
        // slip in with an empty log.
        let cluster_id = self.cluster_id();
        for (to, messages) in by_peer {
            self.links.send_voter_messages(to, cluster_id, messages);
        }
        let known = {
            let raft = self.raft.borrow();
            (raft.leader(), raft.term())
        };
        if self.known_leader.replace(known) != known {
            if let Some(other) = node_of(known.0).filter(|leader| *leader != self.me) {
                self.predecessor.set(Some((other, known.1)));
            }
            match node_of(known.0) {
                Some(leader) => {
                    tracing::info!(node = %self.me, %leader, term = known.1, "the active controller")
                }
                None => {
                    tracing::info!(node = %self.me, term = known.1, "no active controller known")
                }
            }
        }
        if !self.raft.borrow().is_leader() {
            self.active.borrow_mut().take();
            // Proposals of a term this voter no longer leads may still commit (a later leader
            // keeps them) or not: their askers hear NOT_CONTROLLER now and ask again, which a
            // registration or heartbeat tolerates.
            self.fail_pending();
        }
        if applied_some {
            self.snapshot_if_due().await?;
        }
        Ok(())
    }

    /// A leader's snapshot replaced the log: its image replaces the one applied here.
    fn restore(&self, snapshot: &StoredSnapshot) -> Result<(), String> {
        let image = MetadataImage::decode_snapshot(&snapshot.data)
            .map_err(|why| format!("the leader's snapshot at entry {}: {why}", snapshot.index))?;
        self.metadata.restore(snapshot.index, image)?;
        self.applied_since_snapshot.set(0);
        // Proposals it covers were this voter's while it led: they are answered as lost.
        self.fail_pending();
        tracing::info!(
            node = %self.me,
            index = snapshot.index,
            bytes = snapshot.data.len(),
            "caught up from the controller's snapshot of the metadata log"
        );
        self.applied_signal.notify(usize::MAX);
        self.metadata.notify();
        Ok(())
    }

    /// Once `metadata.log.max.record.bytes.between.snapshots` of entries were applied since
    /// the last snapshot: snapshots the image, makes it durable, and drops the entries it
    /// covers from memory and (whole segments) from the disk.
    async fn snapshot_if_due(&self) -> Result<(), String> {
        if self.applied_since_snapshot.get() < self.snapshot_bytes {
            return Ok(());
        }
        let index = self.metadata.applied();
        let Some(term) = self.raft.borrow().term_of(index) else { return Ok(()) };
        let started = Instant::now();
        let data = self.metadata.image().encode_snapshot();
        let voters = self.voters.iter().map(|v| raft_id(*v)).collect();
        let snapshot = StoredSnapshot { index, term, voters, data };
        self.disk
            .compact(&snapshot)
            .await
            .map_err(|e| format!("controller voter {}: snapshotting its log: {e}", self.me))?;
        let bytes = snapshot.data.len();
        self.raft.borrow_mut().compact(snapshot).map_err(|e| e.to_string())?;
        self.applied_since_snapshot.set(0);
        tracing::info!(
            node = %self.me,
            index,
            bytes,
            took_ms = started.elapsed().as_millis() as u64,
            log_start = self.disk.log_start(),
            "snapshotted the metadata log"
        );
        Ok(())
    }

    /// Applies committed entries to the image. A log of another cluster than the data
    /// directory's stops the voter: it must not vote in a cluster it does not belong to.
    fn apply(&self, committed: Vec<Committed>) -> Result<(), String> {
        for entry in committed {
            self.metadata.apply(entry.index, &entry.data)?;
            let bytes = self.applied_since_snapshot.get() + entry.data.len() as u64;
            self.applied_since_snapshot.set(bytes);
            let waiting = self.pending.borrow_mut().remove(&entry.index);
            if let Some((term, waiter)) = waiting {
                let _ = waiter.send(term == entry.term);
            }
        }
        self.applied_signal.notify(usize::MAX);
        self.metadata.notify();
        match (self.metadata.image().cluster_id, self.dir_cluster.get()) {
            (Some(log), Some(dir)) if log != *dir => Err(format!(
                "the controller's log is of cluster {log}, but this data directory belongs to \
                 cluster {dir}"
            )),
            _ => Ok(()),
        }
    }

    /// The cluster this voter is of, as its log or its data directory says.
    fn cluster_id(&self) -> Option<ClusterId> {
        self.metadata.image().cluster_id.or_else(|| self.dir_cluster.get().copied())
    }

    /// Raft messages voter `from` sent this one. Refused whole when `from` is not a voter, is
    /// of another cluster, or a message claims another sender or receiver or is not one voters
    /// send; and until this voter has applied the log it restarted with (it may not know its
    /// cluster before).
    pub fn receive(
        &self,
        from: NodeId,
        cluster_id: Option<ClusterId>,
        messages: Vec<WireMessage>,
    ) -> Result<(), String> {
        if !self.voters.contains(&from) {
            return Err(format!("node {from} is not a controller voter"));
        }
        if !self.started.get() {
            return Err(format!("voter {} is still reading its log", self.me));
        }
        if self.stopped.get() {
            return Err(format!("voter {} has stopped", self.me));
        }
        if let (Some(ours), Some(theirs)) = (self.cluster_id(), cluster_id) {
            if ours != theirs {
                return Err(format!("voter {from} is of cluster {theirs}; this is cluster {ours}"));
            }
        }
        if let Some(wrong) =
            messages.iter().find(|m| m.from != raft_id(from) || m.to != raft_id(self.me))
        {
            return Err(format!(
                "a message from voter {from} to {} names sender {} and receiver {}",
                self.me, wrong.from, wrong.to
            ));
        }
        let messages: Vec<_> =
            messages.into_iter().map(WireMessage::into_raft).collect::<Result<_, _>>()?;
        for message in messages.iter().filter(|m| m.has_snapshot()) {
            // Checked before Raft takes it: a snapshot this voter could not read would stop it.
            let snapshot = message.get_snapshot();
            if let Err(why) = MetadataImage::decode_snapshot(&snapshot.data) {
                let index = snapshot.get_metadata().index;
                return Err(format!("voter {from} sent a snapshot at entry {index}: {why}"));
            }
        }
        let mut raft = self.raft.borrow_mut();
        for message in messages {
            if let Err(e) = raft.step(message) {
                // A message of an older term, or one raft-rs could not take: Raft's to refuse,
                // and it sends again what matters.
                tracing::debug!(voter = %self.me, %from, "message refused: {e}");
            }
        }
        drop(raft);
        self.work.notify(1);
        Ok(())
    }

    /// Answers a broker's request, if this voter is the active controller.
    /// `via`: the connection it came over, when it came over one (a heartbeat's is remembered,
    /// for `heartbeats_lost`).
    pub async fn handle(
        &self,
        request: ControllerRequest,
        via: Option<u64>,
    ) -> Result<ControllerAnswer, ControllerError> {
        match request {
            ControllerRequest::Register { registration, cluster_id } => {
                let node = registration.node;
                self.decide(Event::Register { registration, cluster_id }).await?;
                let image = self.metadata.image();
                let (Some(broker), Some(cluster_id)) = (image.brokers.get(&node), image.cluster_id)
                else {
                    let why = "the registration was lost";
                    return Err(ControllerError::new(ErrorKind::NotAvailable, why));
                };
                Ok(ControllerAnswer::Registered { broker_epoch: broker.broker_epoch, cluster_id })
            }
            ControllerRequest::Heartbeat { node, broker_epoch, storage_failing } => {
                self.decide(Event::Heartbeat { node, broker_epoch, via, storage_failing }).await?;
                let image = self.metadata.image();
                let fenced = image.brokers.get(&node).is_none_or(|b| b.fenced);
                Ok(ControllerAnswer::HeartbeatTaken { fenced })
            }
            ControllerRequest::ControlledShutdown { node, broker_epoch } => {
                self.decide(Event::ControlledShutdown { node, broker_epoch }).await?;
                Ok(ControllerAnswer::ShutDown)
            }
            ControllerRequest::CreateTopic { topic, id } => {
                let id = id.unwrap_or_else(|| TopicId(uuid::Uuid::new_v4().as_u128()));
                let (index, _) = self.decide(Event::CreateTopic { topic, id }).await?;
                Ok(ControllerAnswer::MetadataChanged { index })
            }
            ControllerRequest::CreatePartitions(more) => {
                let (index, _) = self.decide(Event::CreatePartitions(more)).await?;
                Ok(ControllerAnswer::MetadataChanged { index })
            }
            ControllerRequest::DeleteTopic { name } => {
                let (index, _) = self.decide(Event::DeleteTopic { name }).await?;
                Ok(ControllerAnswer::MetadataChanged { index })
            }
            ControllerRequest::AlterPartition(request) => {
                let (index, _) = self.decide(Event::AlterPartition(request)).await?;
                Ok(ControllerAnswer::MetadataChanged { index })
            }
            ControllerRequest::ElectLeaders { election, partitions } => {
                let (index, _) = self.decide(Event::ElectLeaders { election, partitions }).await?;
                Ok(ControllerAnswer::MetadataChanged { index })
            }
            ControllerRequest::Reassign(moves) => {
                let (index, _) = self.decide(Event::Reassign(moves)).await?;
                Ok(ControllerAnswer::MetadataChanged { index })
            }
            ControllerRequest::AlterTopicConfig { name, changes, replace } => {
                let event = Event::AlterTopicConfig { name, changes, replace };
                let (index, _) = self.decide(event).await?;
                Ok(ControllerAnswer::MetadataChanged { index })
            }
            ControllerRequest::AlterBrokerConfig { node, changes, replace } => {
                let event = Event::AlterBrokerConfig { node, changes, replace };
                let (index, _) = self.decide(event).await?;
                Ok(ControllerAnswer::MetadataChanged { index })
            }
            ControllerRequest::AllocateProducerIds { node, broker_epoch } => {
                let (_, batch) =
                    self.decide(Event::AllocateProducerIds { node, broker_epoch }).await?;
                let next = batch.iter().find_map(|record| match record {
                    MetadataRecord::ProducerIds { next_producer_id, .. } => Some(*next_producer_id),
                    _ => None,
                });
                let Some(next) = next else {
                    let why = "the allocation was lost";
                    return Err(ControllerError::new(ErrorKind::NotAvailable, why));
                };
                let first = next.saturating_sub(PRODUCER_ID_BLOCK);
                Ok(ControllerAnswer::ProducerIds { first, count: next - first })
            }
        }
    }

    /// Before a clean stop of the active controller's broker: hands the role to another voter
    /// at once rather than leave the cluster without a controller for an election timeout.
    /// Bounded: a stop is not held up by a voter that does not take over.
    pub async fn resign(&self) {
        if self.stopped.get() {
            return;
        }
        let Some(target) = self.raft.borrow_mut().transfer_leadership() else { return };
        self.work.notify(1);
        let deadline = Instant::now() + RESIGN_WAIT;
        while self.raft.borrow().is_leader() && Instant::now() < deadline {
            glommio::timer::sleep(Duration::from_millis(20)).await;
        }
        match (self.raft.borrow().is_leader(), node_of(target)) {
            (false, Some(to)) => tracing::info!(node = %self.me, %to, "handed the controller over"),
            _ => tracing::warn!(node = %self.me, "the controller was not handed over in time"),
        }
    }

    /// Connection `via`, which broker `node`'s heartbeats came over, closed
    /// (`Event::HeartbeatsLost`): fenced at once if this voter is the active controller and last
    /// heard the broker over that connection.
    pub async fn heartbeats_lost(&self, node: NodeId, broker_epoch: u64, via: u64) {
        if !self.raft.borrow().is_leader() {
            return;
        }
        let lost = Event::HeartbeatsLost { node, broker_epoch, via };
        match self.decide(lost).await {
            Ok((_, batch)) if !batch.is_empty() => {
                tracing::info!(%node, broker_epoch, "fenced at once: its heartbeat connection closed");
            }
            Ok(_) => {}
            Err(e) => tracing::debug!(%node, "a lost heartbeat connection: {}", e.error),
        }
    }

    /// Fences brokers silent for a whole session, while this voter leads (every quarter session,
    /// at most every [`FENCING_CHECK_MAX`]: a controller that took over from a silent one fences
    /// its broker at the first). Runs until `stop`.
    pub async fn fence_the_silent(self: &Rc<Self>, stop: impl Future<Output = ()>) {
        let check = async {
            loop {
                glommio::timer::sleep((self.session_timeout / 4).min(FENCING_CHECK_MAX)).await;
                if self.raft.borrow().is_leader() {
                    if let Err(e) = self.decide(Event::Tick).await {
                        tracing::debug!("fencing check: {}", e.error);
                    }
                }
            }
        };
        futures_lite::future::or(check, stop).await;
    }

    fn not_controller(&self) -> ControllerError {
        let leader = node_of(self.raft.borrow().leader());
        let known = leader.map_or("no controller is elected yet".to_string(), |l| {
            format!("the active controller is node {l}")
        });
        ControllerError {
            error: BrokerError::new(
                ErrorKind::NotController,
                format!("node {} is not the active controller: {known}", self.me),
            ),
            leader,
            unsent: false,
        }
    }

    /// Decides `event` as the active controller and waits until its batch is applied here;
    /// answers the batch and the log entry it is (or, for an empty batch, the entry the
    /// decision saw last).
    async fn decide(&self, event: Event) -> Result<(u64, Vec<MetadataRecord>), ControllerError> {
        // From the request's arrival, not its turn: a request queued behind others must not
        // outlast what its asker waits.
        let deadline = Instant::now() + DECISION_WAIT;
        let turn = async { Some(self.deciding.acquire_permit(1).await) };
        let late = async {
            glommio::timer::sleep(DECISION_WAIT).await;
            None
        };
        let _turn = match futures_lite::future::or(turn, late).await {
            Some(Ok(permit)) => permit,
            Some(Err(_)) => {
                return Err(ControllerError::new(ErrorKind::NotAvailable, "the controller stopped"))
            }
            None => {
                let why = "the controller is busy: other decisions came first";
                return Err(ControllerError::new(ErrorKind::NotAvailable, why));
            }
        };
        // A new leader decides only against an image holding its whole log.
        loop {
            let applied_signal = self.applied_signal.listen();
            {
                let raft = self.raft.borrow();
                if !raft.is_leader() {
                    drop(raft);
                    return Err(self.not_controller());
                }
                if self.metadata.applied() >= raft.last_index() {
                    break;
                }
            }
            if !wait_until(applied_signal, deadline).await {
                let why = "the new controller has not applied its log yet";
                return Err(ControllerError::new(ErrorKind::NotAvailable, why));
            }
        }
        let term = self.raft.borrow().term();
        let batch = {
            let mut active = self.active.borrow_mut();
            if active.as_ref().is_none_or(|(t, _)| *t != term) {
                tracing::info!(node = %self.me, term, "this broker is the active controller");
                // A new controller gives every broker a whole session (decide.rs).
                let new_cluster_id = ClusterId(uuid::Uuid::new_v4().as_u128());
                let mut controller =
                    Controller::new(self.session_timeout, new_cluster_id, self.limits.clone())
                        .with_topic_defaults(self.topic_defaults.clone())
                        .with_leader_balance(self.leader_balance);
                // Raft elected this voter because the last active controller fell silent: its
                // broker did too (a crash, a pause, a cut), and is fenced at the first tick
                // unless it beats first, not a whole session later.
                let predecessor = self.predecessor.take();
                if let Some((silent, _)) = predecessor.filter(|(_, led)| term <= led + 2) {
                    controller.presume_silent(silent, Instant::now());
                }
                *active = Some((term, controller));
            }
            let Some((_, controller)) = active.as_mut() else {
                return Err(self.not_controller());
            };
            controller.decide(&self.metadata.image(), event, Instant::now()).map_err(refused)?
        };
        if batch.is_empty() {
            return Ok((self.metadata.applied(), batch));
        }
        let (waiter, committed) = oneshot::channel();
        let index = {
            let mut raft = self.raft.borrow_mut();
            if raft.propose(metadata::encode_batch(&batch)).is_err() {
                drop(raft);
                return Err(self.not_controller());
            }
            self.pending.borrow_mut().insert(raft.last_index(), (term, waiter));
            raft.last_index()
        };
        self.work.notify(1);
        let outcome = futures_lite::future::or(async { committed.await.ok() }, async {
            glommio::timer::sleep(deadline.saturating_duration_since(Instant::now())).await;
            None
        });
        match outcome.await {
            Some(true) => Ok((index, batch)),
            Some(false) => Err(self.not_controller()),
            None => Err(ControllerError::new(
                ErrorKind::NotAvailable,
                "the decision did not commit in time (no quorum of voters reachable?)",
            )),
        }
    }

    /// Committed entries from `from` on, as applied here (about `max_bytes`, at least one when
    /// there are any), for a broker that follows the log without voting.
    /// When entry `from` is only in the snapshot, the answer is the snapshot.
    pub fn committed_since(&self, from: u64, max_bytes: u64) -> Result<MetadataEntries, String> {
        let raft = self.raft.borrow();
        let leader = node_of(raft.leader());
        let applied = self.metadata.applied();
        let nothing = MetadataEntries { leader, snapshot: None, entries: Vec::new() };
        if from == 0 || from > applied {
            return Ok(nothing);
        }
        if from < raft.first_index() {
            let Some((index, data)) = raft.snapshot() else { return Ok(nothing) };
            return Ok(MetadataEntries { snapshot: Some((index, data.to_vec())), ..nothing });
        }
        let entries = raft.entries(from, applied, max_bytes).map_err(|e| e.to_string())?;
        let entries = entries.into_iter().map(|e| (e.index, e.data)).collect();
        Ok(MetadataEntries { entries, ..nothing })
    }

    pub fn status(&self) -> ClusterStatus {
        let (image, applied) = (self.metadata.image(), self.metadata.applied());
        let mut status = status_of(self.me, &self.voters, &image, applied);
        let raft = self.raft.borrow();
        (status.leader, status.term) = (node_of(raft.leader()), raft.term());
        status.snapshot = raft.snapshot().map_or(0, |(index, _)| index);
        status.log_start = self.disk.log_start();
        status
    }
}

/// The cluster as `image` (applied up to entry `applied`) shows it, as broker `node` answers.
pub fn status_of(
    node: NodeId,
    voters: &[NodeId],
    image: &MetadataImage,
    applied: u64,
) -> ClusterStatus {
    let brokers = image
        .brokers
        .iter()
        .map(|(node, b)| BrokerStatus {
            node: *node,
            endpoints: b.endpoints.clone(),
            rack: b.rack.clone(),
            broker_epoch: b.broker_epoch,
            protocol_version: b.protocol_version,
            fenced: b.fenced,
            shut_down: b.shut_down,
        })
        .collect();
    let partitions = || image.topics.values().flat_map(|t| t.partitions.values());
    let offline = partitions().filter(|p| p.leader.is_none()).count();
    // As Kafka counts them: against the replicas a reassignment keeps (its target).
    let under_replicated =
        partitions().filter(|p| p.isr.len() < p.target_replicas().count()).count();
    ClusterStatus {
        node,
        cluster_id: image.cluster_id,
        voters: voters.to_vec(),
        leader: None,
        term: 0,
        applied,
        brokers,
        snapshot: 0,
        log_start: 0,
        topics: u32::try_from(image.topics.len()).unwrap_or(u32::MAX),
        offline_partitions: u32::try_from(offline).unwrap_or(u32::MAX),
        under_replicated_partitions: u32::try_from(under_replicated).unwrap_or(u32::MAX),
    }
}

/// Waits for `signal` until `deadline`; false when the deadline came first.
async fn wait_until(signal: event_listener::EventListener, deadline: Instant) -> bool {
    futures_lite::future::or(
        async {
            signal.await;
            true
        },
        async {
            glommio::timer::sleep(deadline.saturating_duration_since(Instant::now())).await;
            false
        },
    )
    .await
}

fn refused(refusal: Refusal) -> ControllerError {
    let kind = match &refusal {
        Refusal::StaleBrokerEpoch { .. } => ErrorKind::StaleBrokerEpoch,
        Refusal::DuplicateRegistration(_) => ErrorKind::DuplicateBrokerRegistration,
        Refusal::TopicExists(_) => ErrorKind::TopicAlreadyExists,
        Refusal::TopicIdTaken(_) => ErrorKind::NotAvailable,
        Refusal::UnknownTopic(_) => ErrorKind::UnknownTopic,
        Refusal::InvalidReplicationFactor { .. } => ErrorKind::InvalidReplicationFactor,
        Refusal::InvalidPartitions(_) => ErrorKind::InvalidPartitions,
        Refusal::InvalidAssignment(_) => ErrorKind::InvalidReplicaAssignment,
        Refusal::InvalidTopicName(_) => ErrorKind::InvalidTopicName,
        Refusal::TooManyPartitions { .. } => ErrorKind::PolicyViolation,
        Refusal::UnsupportedProtocol { .. } => ErrorKind::UnsupportedApi,
        Refusal::OtherCluster { .. } => ErrorKind::InconsistentClusterId,
        // Not worth asking again.
        Refusal::ProducerIdsExhausted => ErrorKind::PolicyViolation,
        Refusal::UnknownPartition(..) => ErrorKind::UnknownPartition,
        Refusal::NotLeader(_) => ErrorKind::NotLeaderOrFollower,
        Refusal::FencedLeaderEpoch { .. } => ErrorKind::FencedLeaderEpoch,
        Refusal::StalePartitionEpoch { .. } => ErrorKind::InvalidUpdateVersion,
        Refusal::InvalidIsr(_) => ErrorKind::InvalidRequest,
        Refusal::IneligibleReplica(_) => ErrorKind::IneligibleReplica,
        Refusal::NoReassignmentInProgress(..) => ErrorKind::NoReassignmentInProgress,
        Refusal::InvalidConfig(_) => ErrorKind::InvalidConfig,
    };
    ControllerError::new(kind, refusal.to_string())
}
